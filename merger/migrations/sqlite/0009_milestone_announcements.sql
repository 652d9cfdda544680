-- Announcements of milestone winners to the webhook (docs/milestones.md): a won milestone is
-- delivered until the receiver acknowledges it. The row is the outbox: it is written in the
-- transaction that decides the winner, so nothing is announced that was not committed and
-- nothing committed is left unannounced. `next_attempt_at` is when it may be tried again (a
-- claim moves it a lease ahead, so two mergers rarely send one at the same time; a receiver
-- deduplicates by the event id anyway).
ALTER TABLE milestones ADD COLUMN announced_at INTEGER;
ALTER TABLE milestones ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE milestones ADD COLUMN next_attempt_at INTEGER NOT NULL DEFAULT 0;
CREATE INDEX milestones_unannounced ON milestones (next_attempt_at)
    WHERE won_at IS NOT NULL AND announced_at IS NULL;
