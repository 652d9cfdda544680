-- Slot updates in place (HOT). An update Postgres can make HOT writes the new row version on
-- the same heap page and no index entry; it cannot when a column the update changes is
-- indexed. Every merge set `slots.changed` (0001), which `slots_changed` indexed, so no slot
-- update was HOT (0 of 760,000 in P13). The catch-up reads the change log (0013) since the
-- release before this one, so `changed` has no reader left: its indexes go, this release no
-- longer writes it (its default keeps filling it on insert), and the columns can go in the
-- next release (a merger of the previous release still writes them during a rolling
-- upgrade). A slot's page keeps 30 % free for its updates' new versions (fillfactor; pages
-- written before keep theirs until rewritten, e.g. by VACUUM FULL).

DROP INDEX slots_changed;
DROP INDEX cuts_changed;
DROP INDEX carries_changed;
ALTER TABLE slots SET (fillfactor = 70);
ALTER TABLE carries SET (fillfactor = 70);
