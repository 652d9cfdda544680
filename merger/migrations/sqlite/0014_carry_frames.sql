-- Frames (protocol version 5, tally_crdt::Carry): an edge object that holds a counter nobody
-- counts any more (reset or deleted, nothing counted since) may rebase its carry of it into a
-- later frame, the counter's epoch then. What it carried becomes `rp`/`rn` (reclaimed: still
-- counted, no longer re-sent), and its carry starts again from zero, so the object can forget
-- the counter's row. A carry adds `rp + p` and `rn + n` to its region's sums in every frame,
-- so a rebase changes no count. Of two carries of one object, the later frame's replaces the
-- earlier whole; within a frame each column takes the max (src/store/sqlite.rs,
-- UPSERT_CARRIES). Rows from before are frame 0, with nothing reclaimed.

ALTER TABLE carries ADD COLUMN frame INTEGER NOT NULL DEFAULT 0 CHECK (frame >= 0);
ALTER TABLE carries ADD COLUMN rp TEXT NOT NULL
    DEFAULT '000000000000000000000000000000000000000' CHECK (length(rp) = 39);
ALTER TABLE carries ADD COLUMN rn TEXT NOT NULL
    DEFAULT '000000000000000000000000000000000000000' CHECK (length(rn) = 39);
