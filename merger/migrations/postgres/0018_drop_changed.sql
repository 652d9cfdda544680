-- The `changed` columns go (0001, 0004, 0011). The change log (0013) has been the catch-up's
-- only source since two releases, 0016 dropped their indexes and the release before this one
-- stopped writing them (its inserts leave them to their defaults), so no merger a rolling
-- upgrade can still run reads or names them. Dropping a column rewrites no row: its space is
-- reclaimed as rows are next written.

ALTER TABLE slots DROP COLUMN changed;
ALTER TABLE cuts DROP COLUMN changed;
ALTER TABLE carries DROP COLUMN changed;
