-- Milestones: "the N-th hit of this counter" (docs/milestones.md). One row per counter (kind
-- g, by id) and N; the winner's columns are NULL while it is pending and written once, in
-- the transaction of the commit whose growth takes the count across N: the replica of the
-- winning hit and the unit of its slot that got ordinal N.
--
-- Locks: a commit takes `FOR UPDATE` on the pending milestones of its counters before it
-- reads their slots, so commits of one such counter (by any merger) are in one order; a
-- registration takes the table in EXCLUSIVE mode, so it waits for the commits under way and
-- the ones after it see the new milestone.
CREATE TABLE milestones (
    name        TEXT COLLATE "C" NOT NULL,
    n           NUMERIC(20, 0) NOT NULL CHECK (n BETWEEN 1 AND 18446744073709551615),
    label       TEXT,
    created_at  BIGINT NOT NULL,
    won_replica TEXT,
    won_unit    NUMERIC(20, 0),
    won_at      BIGINT,
    PRIMARY KEY (name, n)
);
CREATE INDEX milestones_pending ON milestones (name) WHERE won_at IS NULL;
