-- Which merger wrote each change log row (0013), so a merger's catch-up reloads only what the
-- others changed: its own commits are in its cache already. Each merger's connections carry
-- its origin (the random name its notifications carry too) in the `tally.origin` setting,
-- set at connect (src/store/postgres.rs); a row written by anyone else — a merger of an
-- earlier release, an operator's fix by hand — has none and is reloaded by every merger.

ALTER TABLE changes ADD COLUMN origin TEXT;

CREATE OR REPLACE FUNCTION log_changed_counters() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO changes (counters, origin)
    SELECT array_agg(DISTINCT counter ORDER BY counter), NULLIF(current_setting('tally.origin', true), '')
    FROM changed_rows HAVING count(*) > 0;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION log_changed_epochs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO changes (counters, origin)
    SELECT array_agg(DISTINCT id ORDER BY id), NULLIF(current_setting('tally.origin', true), '')
    FROM changed_rows HAVING count(*) > 0;
    RETURN NULL;
END
$$;
