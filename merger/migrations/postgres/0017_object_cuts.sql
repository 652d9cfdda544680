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
    counter BIGINT NOT NULL REFERENCES counters,
    object  TEXT COLLATE "C" NOT NULL CHECK (object ~ '^[0-9a-f]{24}$'),
    region  TEXT COLLATE "C" NOT NULL,    -- the object's region of record
    p       NUMERIC(39, 0) NOT NULL CHECK (p >= 0),
    n       NUMERIC(39, 0) NOT NULL CHECK (n >= 0),
    PRIMARY KEY (counter, object)
);

-- Into the change log (0013) like the cuts they are part of, so a catch-up reloads a counter
-- whatever writes its shares.
CREATE TRIGGER object_cuts_inserted AFTER INSERT ON object_cuts
    REFERENCING NEW TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION log_changed_counters();
CREATE TRIGGER object_cuts_updated AFTER UPDATE ON object_cuts
    REFERENCING NEW TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION log_changed_counters();
CREATE TRIGGER object_cuts_deleted AFTER DELETE ON object_cuts
    REFERENCING OLD TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION log_changed_counters();
