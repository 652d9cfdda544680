-- Imports: a starting value brought from another system (a SQL table, Redis, analytics).
-- Each import id gets a replica of its own, region 'import', never retired; the value it
-- imports into a counter is that replica's slot, merged like any other. Re-running an import
-- finds its slot already there and changes nothing; the same id with another value for the
-- same counter is refused (the merger answers 409).
CREATE TABLE imports (
    name    TEXT    NOT NULL PRIMARY KEY,   -- the import id
    replica INTEGER NOT NULL,               -- replicas.id of its slots
    created_at INTEGER NOT NULL             -- Unix ms
) WITHOUT ROWID;
