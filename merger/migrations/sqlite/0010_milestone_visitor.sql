-- The visitor key of a milestone's winning hit (docs/milestones.md), when the hit carried
-- one and its counter was near the milestone: written with the winner, in the deciding
-- transaction.
ALTER TABLE milestones ADD COLUMN won_visitor TEXT;
