-- Frames (protocol version 5, tally_crdt::Carry): an edge object that holds a counter nobody
-- counts any more (reset or deleted, nothing counted since) may rebase its carry of it into a
-- later frame, the counter's epoch then. What it carried becomes `rp`/`rn` (reclaimed: still
-- counted, no longer re-sent), and its carry starts again from zero, so the object can forget
-- the counter's row. A carry adds `rp + p` and `rn + n` to its region's sums in every frame,
-- so a rebase changes no count. Of two carries of one object, the later frame's replaces the
-- earlier whole; within a frame each column takes the max (src/store/postgres.rs,
-- UPSERT_CARRIES). Rows from before are frame 0, with nothing reclaimed. The defaults are
-- constants: adding the columns rewrites no row.

ALTER TABLE carries
    ADD COLUMN frame BIGINT NOT NULL DEFAULT 0 CHECK (frame >= 0),
    ADD COLUMN rp NUMERIC(39, 0) NOT NULL DEFAULT 0 CHECK (rp >= 0),
    ADD COLUMN rn NUMERIC(39, 0) NOT NULL DEFAULT 0 CHECK (rn >= 0);
