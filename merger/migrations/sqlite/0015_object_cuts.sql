-- Each edge object's share of its counter's last reset (protocol version 6,
-- tally_crdt::ObjectCut): what the object — its live slots and its carry — had counted when
-- the epoch began, part of its region's cut. A reset writes one row per object that had
-- counted; a sync answer tells the object its share, and the object sends it back with the
-- counter's slot, so a merger restored from a backup older than the reset starts that epoch
-- and raises each object's share (and its region's cut) to what the object was told. The
-- pruning task nets what a rebased carry reclaimed out of its object's share, as out of the
-- region's cut, and deletes a share left at zero. Counters reset before this release have no
-- rows: their objects are told a share of zero.

CREATE TABLE object_cuts (
    counter INTEGER NOT NULL,             -- counters.id
    object  TEXT    NOT NULL CHECK (length(object) = 24),  -- lowercase hex
    region  TEXT    NOT NULL,             -- the object's region of record
    p       TEXT    NOT NULL CHECK (length(p) = 39),
    n       TEXT    NOT NULL CHECK (length(n) = 39),
    PRIMARY KEY (counter, object)
) WITHOUT ROWID;
