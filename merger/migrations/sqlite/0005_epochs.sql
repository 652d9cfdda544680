-- Reset and delete. A reset starts a new epoch of a counter: the count starts again from
-- zero, and what came before never comes back, whatever syncs, retries or replays arrive.
--
-- Slots stay what they are (each replica's total, merged with max), so a sync of any age
-- still merges the same way. A reset records, per region, the sums of the counter's slots and
-- bases at that moment (`cuts`); the count is then the sums minus the cuts. A replica's
-- total that was already counted before the reset is inside the cut; what it counts later
-- (or what it counted earlier and syncs only now) is above it and counts once.
--
-- `epoch` counts the resets; `deleted` marks a counter deleted (hidden from the lists until
-- it is hit again; its history is gone); `reset_at` is when the last reset happened (Unix
-- ms), the time a count went down.

ALTER TABLE counters ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;
ALTER TABLE counters ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0;
ALTER TABLE counters ADD COLUMN reset_at INTEGER;

CREATE TABLE cuts (
    counter INTEGER NOT NULL,                -- counters.id
    region  TEXT    NOT NULL,
    p       TEXT    NOT NULL CHECK (length(p) = 39),
    n       TEXT    NOT NULL CHECK (length(n) = 39),
    PRIMARY KEY (counter, region)
) WITHOUT ROWID;

-- The epoch a history point's totals belong to; a point of an epoch that has ended by the
-- time it is written is not written (its totals would bring the old count back for a moment).
ALTER TABLE history ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;
