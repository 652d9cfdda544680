-- Milestones: "the N-th hit of this counter" (docs/milestones.md). One row per counter (kind
-- g, by id) and N; the winner's columns are NULL while it is pending and written once, in
-- the transaction of the commit whose growth takes the count across N: the replica of the
-- winning hit and the unit of its slot that got ordinal N. SQLite has one writer, so that
-- commit and every registration are in one order.
CREATE TABLE milestones (
    name        TEXT    NOT NULL,  -- the counter's id (kind g)
    n           TEXT    NOT NULL CHECK (length(n) = 20),  -- u64, 20 decimal digits
    label       TEXT,
    created_at  INTEGER NOT NULL,  -- Unix ms
    won_replica TEXT,              -- 32 hex digits
    won_unit    TEXT    CHECK (won_unit IS NULL OR length(won_unit) = 20),
    won_at      INTEGER,           -- Unix ms of the deciding commit
    PRIMARY KEY (name, n)
) WITHOUT ROWID;
CREATE INDEX milestones_pending ON milestones (name) WHERE won_at IS NULL;
