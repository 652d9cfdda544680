-- Viewers now: per presence id and reporting edge object, the object's latest report. A
-- report replaces the stored one only with a higher seq (a late or duplicated report changes
-- nothing), and counts until expires_at = min(its time, the time it was received) + its
-- lease; reads sum the reports not expired. Expired rows are deleted by the merger's
-- presence task a grace period later (so that a late, older report cannot come back).
CREATE TABLE presence (
    name       TEXT    NOT NULL,   -- the presence id
    reporter   TEXT    NOT NULL,   -- the reporting object, 32 hex digits
    region     TEXT    NOT NULL,
    seq        TEXT    NOT NULL,   -- u64, 20 decimal digits (text order is numeric order)
    count      TEXT    NOT NULL,   -- u64, 20 decimal digits
    at         INTEGER NOT NULL,   -- Unix ms, the report's time (at most its receipt)
    expires_at INTEGER NOT NULL,   -- Unix ms
    PRIMARY KEY (name, reporter)
) WITHOUT ROWID;
CREATE INDEX presence_by_expiry ON presence (expires_at);

-- Unique visitors: per unique id and day ('' for the all-time sketch, else YYYY-MM-DD), the
-- merged HyperLogLog sketch in its compact wire form (tally_crdt::HyperLogLog::to_bytes).
-- Syncs merge into it register-wise with max, so retries and reordering change nothing.
CREATE TABLE sketches (
    name       TEXT    NOT NULL,
    day        TEXT    NOT NULL DEFAULT '',
    sketch     BLOB    NOT NULL,
    updated_at INTEGER,            -- Unix ms of the last change; NULL while empty
    PRIMARY KEY (name, day)
) WITHOUT ROWID;
