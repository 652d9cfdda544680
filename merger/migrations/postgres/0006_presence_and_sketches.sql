-- Viewers now: per presence id and reporting edge object, the object's latest report. A
-- report replaces the stored one only with a higher seq (a late or duplicated report changes
-- nothing), and counts until expires_at = min(its time, the time it was received) + its
-- lease; reads sum the reports not expired, so every merger on this database answers the
-- same sum. Expired rows are deleted by the mergers' presence task a grace period later.
CREATE TABLE presence (
    name       TEXT COLLATE "C" NOT NULL,   -- the presence id
    reporter   TEXT COLLATE "C" NOT NULL,   -- the reporting object, 32 hex digits
    region     TEXT NOT NULL,
    seq        NUMERIC(20) NOT NULL,        -- u64
    count      NUMERIC(20) NOT NULL,        -- u64
    at         BIGINT NOT NULL,             -- Unix ms, the report's time (at most its receipt)
    expires_at BIGINT NOT NULL,             -- Unix ms
    PRIMARY KEY (name, reporter)
);
CREATE INDEX presence_by_expiry ON presence (expires_at);

-- Unique visitors: per unique id and day ('' for the all-time sketch, else YYYY-MM-DD), the
-- merged HyperLogLog sketch in its compact wire form (tally_crdt::HyperLogLog::to_bytes).
-- A sync locks its rows in (name, day) order, merges register-wise with max and writes back.
CREATE TABLE sketches (
    name       TEXT COLLATE "C" NOT NULL,
    day        TEXT COLLATE "C" NOT NULL DEFAULT '',
    sketch     BYTEA NOT NULL,
    updated_at BIGINT,                      -- Unix ms of the last change; NULL while empty
    PRIMARY KEY (name, day)
);
