-- Carries: per counter and edge object, the sums of the final slots of the object's
-- incarnations before a generation (tally_crdt::Carry). An incarnation's id names its object
-- (the first 24 hex digits) and its generation (the last 8), so a slot of a generation below
-- its object's `through` is in the carry: it is deleted, and never written again.
--
-- A retirement folds every live slot of the object up to the retired generation into its
-- carry; a sync (protocol version 4) brings the carry the object keeps of its own retired
-- generations, so a store restored from an old backup gets back what they counted. Each
-- column merges with max (the carry's sums are lower bounds that only grow with `through`),
-- so carries merge in any order, any number of times. Totals are u128 sums as 39 decimal
-- digits, as in `bases`; `region` compares by bytes, as the merger orders regions.
--
-- Bases and `folded` (0004, 0011) hold what was retired before carries: kept and loaded,
-- never written again.

CREATE TABLE carries (
    counter    INTEGER NOT NULL,             -- counters.id
    object     TEXT    NOT NULL CHECK (length(object) = 24),  -- lowercase hex
    region     TEXT    NOT NULL,             -- the object's region of record
    through    INTEGER NOT NULL CHECK (through BETWEEN 0 AND 4294967296),
    p          TEXT    NOT NULL CHECK (length(p) = 39),
    n          TEXT    NOT NULL CHECK (length(n) = 39),
    updated_at INTEGER NOT NULL,             -- the last time it grew (Unix ms)
    PRIMARY KEY (counter, object)
) WITHOUT ROWID;
