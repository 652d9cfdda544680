-- The merged state: one row per (kind, counter, replica) slot, merged with max.
--
-- Slot totals are u64; SQLite's INTEGER is i64, so they are stored as TEXT of exactly 20
-- decimal digits, zero-padded: text order is then numeric order, and `max()` in SQL is the
-- CRDT merge, exact up to u64::MAX. Snapshot totals are sums (u128) and use 39 digits.
-- Times are Unix milliseconds (UTC).

CREATE TABLE replicas (
    replica    TEXT    NOT NULL PRIMARY KEY,  -- 32 lowercase hex digits: one incarnation
    region     TEXT    NOT NULL,              -- region of its first sync
    first_sync INTEGER NOT NULL,
    last_sync  INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE slots (
    kind       TEXT    NOT NULL CHECK (kind IN ('g', 'pn')),
    counter    TEXT    NOT NULL,
    replica    TEXT    NOT NULL,
    p          TEXT    NOT NULL CHECK (length(p) = 20),
    n          TEXT    NOT NULL CHECK (length(n) = 20),
    updated_at INTEGER NOT NULL,              -- last time this slot grew
    PRIMARY KEY (kind, counter, replica)
) WITHOUT ROWID;

-- Totals over time: written every snapshot interval for the counters that changed.
CREATE TABLE snapshots (
    kind     TEXT    NOT NULL,
    counter  TEXT    NOT NULL,
    taken_at INTEGER NOT NULL,
    p        TEXT    NOT NULL CHECK (length(p) = 39),
    n        TEXT    NOT NULL CHECK (length(n) = 39),
    PRIMARY KEY (kind, counter, taken_at)
) WITHOUT ROWID;
