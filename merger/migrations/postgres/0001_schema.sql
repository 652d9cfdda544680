-- The merged state, shared by every merger process (see src/store/postgres.rs).
--
-- Why this shape:
-- - Surrogate keys: `counters` and `replicas` give each counter id and each replica
--   incarnation (32 hex digits) a BIGINT; `slots`, which every commit walks, holds two
--   integers per key instead of two strings, and its primary key index stays small.
-- - Slot totals are u64, past BIGINT (i64): NUMERIC(20,0) holds every u64 exactly, and
--   GREATEST() on it is the CRDT merge ("max per slot") in SQL. The merger binds and reads
--   them as decimal text, so no value goes through a float or an i64. History totals are
--   sums of u64 (u128): NUMERIC(39,0).
-- - Names and replica ids use the "C" collation: byte order is the order of the merger's
--   `CounterKey` (pages of `list` and their `after` cursor agree with Rust), whatever the
--   database's default locale, and range scans on a prefix can use the btree index.
-- - `slots.changed` is the id (xid8, 64 bits: never wraps) of the transaction that last
--   changed the row. A merger's catch-up finds every slot changed by transactions that ended
--   since its last look by comparing it with its snapshot's xmin: no clock involved.
-- - Times are Unix milliseconds (UTC), BIGINT.

CREATE TABLE counters (
    id   BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('g', 'pn')),
    name TEXT COLLATE "C" NOT NULL,
    UNIQUE (kind, name)
);

CREATE TABLE replicas (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    replica    TEXT COLLATE "C" NOT NULL UNIQUE,  -- 32 lowercase hex digits: one incarnation
    region     TEXT NOT NULL,                     -- region of its first sync, kept
    first_sync BIGINT NOT NULL,
    last_sync  BIGINT NOT NULL
);

CREATE TABLE slots (
    counter    BIGINT NOT NULL REFERENCES counters,
    replica    BIGINT NOT NULL REFERENCES replicas,
    p          NUMERIC(20, 0) NOT NULL CHECK (p BETWEEN 0 AND 18446744073709551615),
    n          NUMERIC(20, 0) NOT NULL CHECK (n BETWEEN 0 AND 18446744073709551615),
    updated_at BIGINT NOT NULL,                   -- last time this slot grew
    changed    XID8 NOT NULL DEFAULT pg_current_xact_id(),
    PRIMARY KEY (counter, replica)
);

-- The catch-up's range scan: slots changed by transactions in [since, xmin).
CREATE INDEX slots_changed ON slots (changed);

-- Totals over time, written every snapshot interval for the counters that changed; several
-- mergers may write the same point, which keeps the larger totals.
CREATE TABLE history (
    counter  BIGINT NOT NULL REFERENCES counters,
    taken_at BIGINT NOT NULL,
    p        NUMERIC(39, 0) NOT NULL CHECK (p >= 0),
    n        NUMERIC(39, 0) NOT NULL CHECK (n >= 0),
    PRIMARY KEY (counter, taken_at)
);
