-- Replica retirement: an edge object that rotates its incarnation retires the old one once
-- every slot of it is acknowledged. Its slots are then final: they are folded into a
-- per-counter, per-region base and deleted, so a counter's slots stay bounded by the
-- incarnations alive now. A retired replica's later syncs are ignored.
--
-- `folds` counts the folds a counter went through: a merger's cache merges two loads of a
-- counter slot by slot only when they saw the same folds (see src/state.rs).

ALTER TABLE replicas ADD COLUMN retired_at INTEGER;  -- Unix ms; NULL while alive
ALTER TABLE counters ADD COLUMN folds INTEGER NOT NULL DEFAULT 0;

CREATE TABLE bases (
    counter INTEGER NOT NULL,                -- counters.id
    region  TEXT    NOT NULL,                -- the retired replicas' region
    p       TEXT    NOT NULL CHECK (length(p) = 39),
    n       TEXT    NOT NULL CHECK (length(n) = 39),
    updated_at INTEGER NOT NULL,             -- the last time a slot folded into it grew
    PRIMARY KEY (counter, region)
) WITHOUT ROWID;

-- A retiring replica's slots, found without walking every slot.
CREATE INDEX slots_by_replica ON slots (replica);
