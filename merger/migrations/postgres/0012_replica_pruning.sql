-- Pruning retired replicas (`--retired-replica-days`, src/presence.rs): the row of an
-- incarnation retired into its object's carries (0011) is deleted once it has been retired
-- that long, so the table holds the live incarnations and those of the last few days, not one
-- row per rotation forever. Without its row a late sync of it still counts nothing: every
-- counter it counted holds its object's carry, whose `through` is past its generation, so
-- its slots are not written (0011); and a commit that meets the id again, unknown now,
-- registers it retired, as it was, since a carry of its object is past its generation
-- (found by `carries_by_object`; src/store/postgres.rs, `commit`).
--
-- `kept` marks the rows retired before this migration, which are never deleted: a replica
-- retired into a region base before carries (0003, 0010) is in no carry, and its row is what
-- keeps its late syncs out. Every retirement since folds into carries (a merger of the
-- release before this one, still running during a rolling upgrade, too).
--
-- A row is deleted only when no slot, folded replica or import names its id (the foreign
-- keys would refuse it anyway); the indexes find those rows by replica, for that check and
-- for the foreign keys' own.

ALTER TABLE replicas ADD COLUMN kept BOOLEAN NOT NULL DEFAULT false;
UPDATE replicas SET kept = true WHERE retired_at IS NOT NULL;

CREATE INDEX replicas_by_retirement ON replicas (retired_at)
    WHERE retired_at IS NOT NULL AND NOT kept;
CREATE INDEX carries_by_object ON carries (object, through);
CREATE INDEX folded_by_replica ON folded (replica);
CREATE INDEX imports_by_replica ON imports (replica);
