-- Integer surrogate keys for counters and replicas.
--
-- Every commit walks the slots table's primary key. Keyed by (kind, counter id, 32 hex digits
-- of replica id) a slot's key was up to ~100 bytes of text; keyed by two integers it is a few
-- bytes, so a page holds many more slots and the B-tree is shallower. The text forms live once,
-- in `counters` and `replicas`, behind their unique indexes.
--
-- Totals stay fixed-width decimal text (20 digits for u64 slots, 39 for u128 sums): text
-- order is numeric order, so `max()` in SQL is the CRDT merge, exact up to u64::MAX.
-- Existing data is carried over.

CREATE TABLE counters (
    id   INTEGER PRIMARY KEY,
    kind TEXT    NOT NULL CHECK (kind IN ('g', 'pn')),
    name TEXT    NOT NULL,
    UNIQUE (kind, name)
);

CREATE TABLE replica_ids (
    id         INTEGER PRIMARY KEY,
    replica    TEXT    NOT NULL UNIQUE,       -- 32 lowercase hex digits: one incarnation
    region     TEXT    NOT NULL,              -- region of its first sync
    first_sync INTEGER NOT NULL,
    last_sync  INTEGER NOT NULL
);

CREATE TABLE slot_totals (
    counter    INTEGER NOT NULL,              -- counters.id
    replica    INTEGER NOT NULL,              -- replica_ids.id
    p          TEXT    NOT NULL CHECK (length(p) = 20),
    n          TEXT    NOT NULL CHECK (length(n) = 20),
    updated_at INTEGER NOT NULL,              -- last time this slot grew (Unix ms)
    PRIMARY KEY (counter, replica)
) WITHOUT ROWID;

-- Totals over time.
CREATE TABLE history (
    counter  INTEGER NOT NULL,                -- counters.id
    taken_at INTEGER NOT NULL,                -- Unix ms
    p        TEXT    NOT NULL CHECK (length(p) = 39),
    n        TEXT    NOT NULL CHECK (length(n) = 39),
    PRIMARY KEY (counter, taken_at)
) WITHOUT ROWID;

INSERT INTO replica_ids (replica, region, first_sync, last_sync)
    SELECT replica, region, first_sync, last_sync FROM replicas ORDER BY replica;
INSERT OR IGNORE INTO replica_ids (replica, region, first_sync, last_sync)
    SELECT DISTINCT replica, '', updated_at, updated_at FROM slots;
INSERT INTO counters (kind, name)
    SELECT kind, counter FROM slots UNION SELECT kind, counter FROM snapshots ORDER BY 1, 2;
INSERT INTO slot_totals (counter, replica, p, n, updated_at)
    SELECT c.id, r.id, s.p, s.n, s.updated_at
    FROM slots s
    JOIN counters c ON c.kind = s.kind AND c.name = s.counter
    JOIN replica_ids r ON r.replica = s.replica;
INSERT INTO history (counter, taken_at, p, n)
    SELECT c.id, s.taken_at, s.p, s.n
    FROM snapshots s JOIN counters c ON c.kind = s.kind AND c.name = s.counter;

DROP TABLE slots;
DROP TABLE snapshots;
DROP TABLE replicas;
ALTER TABLE replica_ids RENAME TO replicas;
ALTER TABLE slot_totals RENAME TO slots;
