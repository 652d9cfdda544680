-- The change log: the one source of every merger's catch-up (src/store/postgres.rs, `CATCH_UP`).
--
-- Each statement that changes what a counter counts — a slot, a carry or a cut written or
-- deleted, a counter's epoch moved by a reset or a delete — adds one row naming the
-- transaction (`xid`, as `changed` did: xid8 never wraps) and the counters it touched. Triggers
-- write it, not the merger, so nothing can change a count without a row here: a merger of the
-- release before this one (during a rolling upgrade), an import, a retirement's fold, or an
-- operator's hand-written fix. A catch-up reads the rows of transactions in `[since, xmin)`
-- and reloads only those counters. NOTIFY stays a hint that comes sooner.
--
-- Retention: rows older than the catch-up's `CHANGE_LOG_KEEP` are deleted by the watchers
-- themselves, and `change_log_horizon` keeps the largest `xid` deleted. A watcher whose `since`
-- is at or below it may have lost rows it never read (it could not reach the database for
-- that long): it reloads every counter it holds instead.
--
-- The `changed` columns and their indexes (0001, 0004, 0011) stay for one release: mergers of
-- the release before still write them and catch up from them while a rolling upgrade runs.

CREATE TABLE changes (
    xid      XID8 NOT NULL DEFAULT pg_current_xact_id(),
    at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    counters BIGINT[] NOT NULL
);

CREATE INDEX changes_by_xid ON changes (xid);
CREATE INDEX changes_by_time ON changes (at);

CREATE TABLE change_log_horizon (
    one     BOOLEAN PRIMARY KEY DEFAULT true CHECK (one),
    through XID8 NOT NULL
);

INSERT INTO change_log_horizon (through) VALUES ('0'::xid8);

-- The counters of the statement's rows (`counter` of slots, carries and cuts).
CREATE FUNCTION log_changed_counters() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO changes (counters)
    SELECT array_agg(DISTINCT counter ORDER BY counter) FROM changed_rows HAVING count(*) > 0;
    RETURN NULL;
END
$$;

-- The counters whose row a statement updated (`id` of counters: a reset's new epoch).
CREATE FUNCTION log_changed_epochs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO changes (counters)
    SELECT array_agg(DISTINCT id ORDER BY id) FROM changed_rows HAVING count(*) > 0;
    RETURN NULL;
END
$$;

-- A trigger with a transition table fires on one event, so each table has one per event.
CREATE TRIGGER slots_inserted AFTER INSERT ON slots
    REFERENCING NEW TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION log_changed_counters();
CREATE TRIGGER slots_updated AFTER UPDATE ON slots
    REFERENCING NEW TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION log_changed_counters();
CREATE TRIGGER slots_deleted AFTER DELETE ON slots
    REFERENCING OLD TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION log_changed_counters();
CREATE TRIGGER carries_inserted AFTER INSERT ON carries
    REFERENCING NEW TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION log_changed_counters();
CREATE TRIGGER carries_updated AFTER UPDATE ON carries
    REFERENCING NEW TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION log_changed_counters();
CREATE TRIGGER carries_deleted AFTER DELETE ON carries
    REFERENCING OLD TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION log_changed_counters();
CREATE TRIGGER cuts_inserted AFTER INSERT ON cuts
    REFERENCING NEW TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION log_changed_counters();
CREATE TRIGGER cuts_updated AFTER UPDATE ON cuts
    REFERENCING NEW TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION log_changed_counters();
CREATE TRIGGER cuts_deleted AFTER DELETE ON cuts
    REFERENCING OLD TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION log_changed_counters();
CREATE TRIGGER counters_updated AFTER UPDATE ON counters
    REFERENCING NEW TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION log_changed_epochs();
