-- Carries: per counter and edge object, the sums of the final slots of the object's
-- incarnations before a generation (tally_crdt::Carry). An incarnation's id names its object
-- (the first 24 hex digits) and its generation (the last 8), so a slot of a generation below
-- its object's `through` is in the carry: it is deleted, and never written again.
--
-- A retirement folds every live slot of the object up to the retired generation into its
-- carry; a sync (protocol version 4) brings the carry the object keeps of its own retired
-- generations, so a store restored from an old backup gets back what they counted. Each
-- column merges with GREATEST (the carry's sums are lower bounds that only grow with
-- `through`), so mergers writing carries at once need no coordination. `object` and `region`
-- use the "C" collation: byte order, as the merger orders them (and as `replicas.replica`,
-- whose range an object's incarnations are). `changed` is the transaction that last grew the
-- row, for the other mergers' catch-up, as `slots.changed` (0001_schema.sql).
--
-- Bases and `folded` (0003, 0010) hold what was retired before carries: kept and loaded,
-- never written again.

CREATE TABLE carries (
    counter    BIGINT NOT NULL REFERENCES counters,
    object     TEXT COLLATE "C" NOT NULL CHECK (object ~ '^[0-9a-f]{24}$'),
    region     TEXT COLLATE "C" NOT NULL,    -- the object's region of record
    through    BIGINT NOT NULL CHECK (through BETWEEN 0 AND 4294967296),
    p          NUMERIC(39, 0) NOT NULL CHECK (p >= 0),
    n          NUMERIC(39, 0) NOT NULL CHECK (n >= 0),
    updated_at BIGINT NOT NULL,              -- the last time it grew (Unix ms)
    changed    XID8 NOT NULL DEFAULT pg_current_xact_id(),
    PRIMARY KEY (counter, object)
);
CREATE INDEX carries_changed ON carries (changed);
