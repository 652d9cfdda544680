-- Replica retirement: an edge object that rotates its incarnation retires the old one once
-- every slot of it is acknowledged. Its slots are then final: they are folded into a
-- per-counter, per-region base and deleted, so a counter's slots stay bounded by the
-- incarnations alive now. A retired replica's later syncs are ignored.
--
-- `folds` counts the folds a counter went through: a merger's cache merges two loads of a
-- counter slot by slot only when they saw the same folds (see src/state.rs).

ALTER TABLE replicas ADD COLUMN retired_at BIGINT;  -- Unix ms; NULL while alive
ALTER TABLE counters ADD COLUMN folds BIGINT NOT NULL DEFAULT 0;

CREATE TABLE bases (
    counter BIGINT NOT NULL REFERENCES counters,
    region  TEXT NOT NULL,
    p       NUMERIC(39, 0) NOT NULL CHECK (p >= 0),
    n       NUMERIC(39, 0) NOT NULL CHECK (n >= 0),
    updated_at BIGINT NOT NULL,              -- the last time a slot folded into it grew
    PRIMARY KEY (counter, region)
);

-- A retiring replica's slots, found without walking every slot.
CREATE INDEX slots_by_replica ON slots (replica);
