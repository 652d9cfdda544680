-- The replicas folded into each counter's bases. A counter's state names its retired
-- replicas (tally_crdt::CounterState): a merger merging a load of it with what it holds
-- then never counts a folded slot twice, nor drops a slot born after a retirement, in
-- whatever order loads, commits and retirements reach it. `counters.folds` (0004) is no
-- longer read or written.
--
-- Retirements before this migration have no rows here: their slots left the store then,
-- and no load made since can hold them.

CREATE TABLE folded (
    counter INTEGER NOT NULL,                -- counters.id
    replica INTEGER NOT NULL,                -- replicas.id: retired, its slot in a base
    PRIMARY KEY (counter, replica)
) WITHOUT ROWID;
