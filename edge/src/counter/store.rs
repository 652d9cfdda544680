//! The object's storage: SQLite-backed Durable Object storage through the SQL API, every
//! statement of the edge and nothing else.
//!
//! - `counters`: one row per counter (key `g:<id>` / `pn:<id>`), updated in place per hit:
//!   the own slot totals, the acknowledged totals, the last hit time, the sync state and the
//!   generation of the incarnation that wrote them. An index over the dirty rows alone finds
//!   what to sync with a bounded query; nothing is listed whole, so start-up costs the same
//!   with ten counters or a million.
//! - `meta`: the incarnation (id, generation, start, the earlier ones still to retire), the
//!   region, the anti-entropy cursor, the schema version.
//!
//! The schema is a list of numbered steps (`MIGRATIONS`); storage records in `meta` how
//! many it has run and runs the rest when it opens, so storage written by an older edge is
//! brought up to date in place.
//!
//! Totals are `u64`, written as decimal TEXT: the SQL API hands integers to Wasm through
//! JavaScript numbers, exact only to 2^53. Storage calls are synchronous; the runtime's
//! output gate holds every answer until the writes before it are durable, so "stored before
//! answered" needs no await.

use serde::Deserialize;
use tally_crdt::{CounterKey, Frame, SlotTotals, Timestamp};
use worker::{SqlStorage, SqlStorageValue};

use crate::counter::{Row, SyncState};
use crate::object::{StoreError, exec_with_json, get_meta, set_meta};

/// The schema as numbered steps: storage at version `v` (`meta.schema`; absent: 1, the
/// storage of an edge from before versions, whose tables step 1 finds already there) runs
/// steps `v..`, then records the new version. Step 1 is idempotent, so new storage runs them
/// all.
const MIGRATIONS: [Migration; 10] = [
    Migration::Sql(SCHEMA_V1),
    // Rotation: every row names the generation of the incarnation that wrote it. Rows from
    // before belong to generation 0, the incarnation the object has had all along.
    Migration::AddColumn {
        table: "counters",
        column: "gen",
        definition: "gen INTEGER NOT NULL DEFAULT 0",
    },
    // Lineages: every row carries the sums of its counter's final slots in the object's
    // earlier generations (`Row::carried`). Rows from before carry nothing: their
    // generations were retired into the merger's region bases.
    Migration::AddColumn {
        table: "counters",
        column: "cp",
        definition: "cp TEXT NOT NULL DEFAULT '0'",
    },
    Migration::AddColumn {
        table: "counters",
        column: "cn",
        definition: "cn TEXT NOT NULL DEFAULT '0'",
    },
    // Visitor keys of hits on the exact path, stored with their hit (`Row::visits`, JSON;
    // empty: none). Rows from before kept theirs in memory.
    Migration::AddColumn {
        table: "counters",
        column: "vk",
        definition: "vk TEXT NOT NULL DEFAULT ''",
    },
    // Frames: a rebased carry's frame (`Row::frame`: its epoch, 0 for none, and what it
    // reclaimed) and when it rebased. Rows from before are in frame 0.
    Migration::AddColumn {
        table: "counters",
        column: "fe",
        definition: "fe TEXT NOT NULL DEFAULT '0'",
    },
    Migration::AddColumn {
        table: "counters",
        column: "rp",
        definition: "rp TEXT NOT NULL DEFAULT '0'",
    },
    Migration::AddColumn {
        table: "counters",
        column: "rn",
        definition: "rn TEXT NOT NULL DEFAULT '0'",
    },
    Migration::AddColumn {
        table: "counters",
        column: "rat",
        definition: "rat INTEGER NOT NULL DEFAULT 0",
    },
    // Cuts: the object's share of the counter's last reset, as the merger told it
    // (`Row::cut`, JSON; empty: none). Rows from before were never told one.
    Migration::AddColumn {
        table: "counters",
        column: "ct",
        definition: "ct TEXT NOT NULL DEFAULT ''",
    },
];

/// One step of the schema.
enum Migration {
    /// Statements that may run again harmlessly.
    Sql(&'static str),
    /// A column to add, unless a step that ran before its version was recorded added it.
    AddColumn {
        table: &'static str,
        column: &'static str,
        definition: &'static str,
    },
}

const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS counters (
    key TEXT PRIMARY KEY,
    p TEXT NOT NULL,
    n TEXT NOT NULL,
    ap TEXT NOT NULL,
    an TEXT NOT NULL,
    changed_at INTEGER NOT NULL,
    state INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS counters_dirty ON counters (key) WHERE state = 1;
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
";

/// One row as the SQL API returns it.
#[derive(Deserialize)]
struct SqlRow {
    key: String,
    p: String,
    n: String,
    ap: String,
    an: String,
    changed_at: i64,
    state: i64,
    #[serde(rename = "gen")]
    generation: i64,
    cp: String,
    cn: String,
    vk: String,
    fe: String,
    rp: String,
    rn: String,
    rat: i64,
    ct: String,
}

impl SqlRow {
    fn decode(self) -> Result<(CounterKey, Row), StoreError> {
        let damaged = |why| StoreError::Damaged {
            key: self.key.clone(),
            why,
        };
        let key = CounterKey::from_storage_key(&self.key).map_err(|_| damaged("bad key"))?;
        let total = |s: &str| s.parse::<u64>().map_err(|_| damaged("bad total"));
        let row = Row {
            own: SlotTotals {
                p: total(&self.p)?,
                n: total(&self.n)?,
            },
            acked: SlotTotals {
                p: total(&self.ap)?,
                n: total(&self.an)?,
            },
            changed_at: Timestamp::from_unix_ms(self.changed_at),
            state: SyncState::from_code(self.state).ok_or_else(|| damaged("bad state"))?,
            generation: u64::try_from(self.generation).map_err(|_| damaged("bad generation"))?,
            carried: SlotTotals {
                p: total(&self.cp)?,
                n: total(&self.cn)?,
            },
            visits: if self.vk.is_empty() {
                Vec::new()
            } else {
                serde_json::from_str(&self.vk).map_err(|_| damaged("bad visits"))?
            },
            frame: match total(&self.fe)? {
                0 => None,
                epoch => Some(Frame {
                    epoch,
                    reclaimed: SlotTotals {
                        p: total(&self.rp)?,
                        n: total(&self.rn)?,
                    },
                }),
            },
            rebased_at: Timestamp::from_unix_ms(self.rat),
            cut: if self.ct.is_empty() {
                None
            } else {
                Some(serde_json::from_str(&self.ct).map_err(|_| damaged("bad cut"))?)
            },
        };
        Ok((key, row))
    }
}

/// The object's tables.
pub struct Store {
    sql: SqlStorage,
}

/// Meta entries.
pub mod meta {
    /// The current incarnation's id.
    pub const REPLICA: &str = "replica";
    /// The current incarnation's generation (absent: 0).
    pub const GENERATION: &str = "generation";
    /// When the current incarnation counted its first hit (empty or absent: not yet).
    pub const STARTED: &str = "started_at";
    /// Earlier incarnations still to retire at the merger, comma-separated, oldest first.
    pub const RETIRING: &str = "retiring";
    /// The object's lineage: its id and the first generation of it, `:`-separated (absent:
    /// storage from before lineages, which draws one at load).
    pub const LINEAGE: &str = "lineage";
    /// How many steps of the schema the storage has run (absent: 1).
    pub const SCHEMA: &str = "schema";
    /// The region the object serves.
    pub const REGION: &str = "region";
    /// The anti-entropy sweep's position: the last key sent (absent: at the start).
    pub const SWEEP_CURSOR: &str = "sweep_cursor";
    /// When the sweep's next page is due (kept so an evicted object wakes up for it).
    pub const SWEEP_DUE: &str = "sweep_due";
}

const COLUMNS: &str = "key, p, n, ap, an, changed_at, state, gen, cp, cn, vk, fe, rp, rn, rat, ct";

impl Store {
    /// Opens the tables, creating them on first use and bringing older storage up to date
    /// (`MIGRATIONS`).
    ///
    /// # Errors
    ///
    /// A storage failure, or a stored schema version this edge does not know.
    pub fn open(sql: SqlStorage) -> Result<Store, StoreError> {
        sql.exec(SCHEMA_V1, None)?;
        let store = Store { sql };
        let version = match store.meta(meta::SCHEMA)? {
            None => 1,
            Some(text) => text
                .parse::<usize>()
                .ok()
                .filter(|v| (1..=MIGRATIONS.len()).contains(v))
                .ok_or(StoreError::Damaged {
                    key: meta::SCHEMA.to_owned(),
                    why: "unknown schema version",
                })?,
        };
        if version < MIGRATIONS.len() {
            for step in &MIGRATIONS[version..] {
                store.migrate(step)?;
            }
            store.set_meta(meta::SCHEMA, &MIGRATIONS.len().to_string())?;
        }
        Ok(store)
    }

    fn migrate(&self, step: &Migration) -> Result<(), StoreError> {
        match step {
            Migration::Sql(sql) => {
                self.sql.exec(sql, None)?;
            }
            Migration::AddColumn {
                table,
                column,
                definition,
            } => {
                // Probing the column keeps the step safe to run twice (ALTER TABLE would fail
                // on a column that is there), whatever the SQL API allows of PRAGMAs.
                let probe = self
                    .sql
                    .exec(&format!("SELECT {column} FROM {table} LIMIT 0"), None);
                if probe.is_err() {
                    self.sql.exec(
                        &format!("ALTER TABLE {table} ADD COLUMN {definition}"),
                        None,
                    )?;
                }
            }
        }
        Ok(())
    }

    /// A meta entry.
    ///
    /// # Errors
    ///
    /// A storage failure.
    pub fn meta(&self, name: &str) -> Result<Option<String>, StoreError> {
        get_meta(&self.sql, name)
    }

    /// Sets a meta entry.
    ///
    /// # Errors
    ///
    /// A storage failure.
    pub fn set_meta(&self, name: &str, value: &str) -> Result<(), StoreError> {
        set_meta(&self.sql, name, value)
    }

    /// Sets several meta entries in one statement: all of them or none are written.
    ///
    /// # Errors
    ///
    /// A storage failure.
    pub fn set_metas(&self, entries: &[(&str, String)]) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let rows = vec!["(?, ?)"; entries.len()].join(", ");
        let values: Vec<SqlStorageValue> = entries
            .iter()
            .flat_map(|(name, value)| {
                [
                    SqlStorageValue::from(*name),
                    SqlStorageValue::from(value.as_str()),
                ]
            })
            .collect();
        self.sql.exec(
            &format!(
                "INSERT INTO meta (name, value) VALUES {rows} \
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value"
            ),
            values,
        )?;
        Ok(())
    }

    /// Removes a meta entry.
    ///
    /// # Errors
    ///
    /// A storage failure.
    pub fn clear_meta(&self, name: &str) -> Result<(), StoreError> {
        self.sql
            .exec("DELETE FROM meta WHERE name = ?", vec![name.into()])?;
        Ok(())
    }

    /// The row of `key`, if this object ever counted it (in any generation: see
    /// [`Row::in_generation`]).
    ///
    /// # Errors
    ///
    /// A storage failure or a damaged row.
    pub fn row(&self, key: &CounterKey) -> Result<Option<Row>, StoreError> {
        let rows: Vec<SqlRow> = self
            .sql
            .exec(
                &format!("SELECT {COLUMNS} FROM counters WHERE key = ?"),
                vec![key.storage_key().into()],
            )?
            .to_array()?;
        rows.into_iter()
            .next()
            .map(|r| r.decode().map(|(_, row)| row))
            .transpose()
    }

    /// Writes the row of `key` (one statement: insert or update in place), with its
    /// generation.
    ///
    /// # Errors
    ///
    /// A storage failure.
    pub fn put(&self, key: &CounterKey, row: &Row) -> Result<(), StoreError> {
        let visits = if row.visits.is_empty() {
            String::new()
        } else {
            serde_json::to_string(&row.visits).map_err(|_| StoreError::Damaged {
                key: key.storage_key(),
                why: "visits not encodable",
            })?
        };
        let cut = match &row.cut {
            None => String::new(),
            Some(cut) => serde_json::to_string(cut).map_err(|_| StoreError::Damaged {
                key: key.storage_key(),
                why: "cut not encodable",
            })?,
        };
        // Totals as decimal text (exact past 2^53), times and codes as numbers; bound in one
        // call ([`exec_with_json`]).
        let params = serde_json::to_string(&(
            key.storage_key(),
            row.own.p.to_string(),
            row.own.n.to_string(),
            row.acked.p.to_string(),
            row.acked.n.to_string(),
            row.changed_at.unix_ms(),
            row.state.code(),
            generation(row.generation),
            row.carried.p.to_string(),
            row.carried.n.to_string(),
            visits,
            row.frame.map_or(0, |f| f.epoch).to_string(),
            row.frame.map_or(0, |f| f.reclaimed.p).to_string(),
            row.frame.map_or(0, |f| f.reclaimed.n).to_string(),
            row.rebased_at.unix_ms(),
            cut,
        ))
        .map_err(|_| StoreError::Damaged {
            key: key.storage_key(),
            why: "row not encodable",
        })?;
        exec_with_json(
            &self.sql,
            "INSERT INTO counters (key, p, n, ap, an, changed_at, state, gen, cp, cn, vk, fe, rp, \
             rn, rat, ct) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (key) DO UPDATE SET p = excluded.p, n = excluded.n, ap = excluded.ap, \
             an = excluded.an, changed_at = excluded.changed_at, state = excluded.state, \
             gen = excluded.gen, cp = excluded.cp, cn = excluded.cn, vk = excluded.vk, \
             fe = excluded.fe, rp = excluded.rp, rn = excluded.rn, rat = excluded.rat, \
             ct = excluded.ct",
            &params,
        )?;
        Ok(())
    }

    /// Deletes the row of `key` (a rebased row reclaimed: [`Row::reclaim`]).
    ///
    /// # Errors
    ///
    /// A storage failure.
    pub fn delete(&self, key: &CounterKey) -> Result<(), StoreError> {
        self.sql.exec(
            "DELETE FROM counters WHERE key = ?",
            vec![key.storage_key().into()],
        )?;
        Ok(())
    }

    /// Up to `limit` dirty rows after `after` (exclusive), in key order: one page of a sync
    /// pass, found through the index over dirty rows.
    ///
    /// # Errors
    ///
    /// A storage failure or a damaged row.
    pub fn dirty_after(
        &self,
        after: Option<&CounterKey>,
        limit: usize,
    ) -> Result<Vec<(CounterKey, Row)>, StoreError> {
        self.page("WHERE state = 1 AND key > ?", after, limit)
    }

    /// Up to `limit` rows of any state after `after` (exclusive), in key order: one page of
    /// the anti-entropy sweep.
    ///
    /// # Errors
    ///
    /// A storage failure or a damaged row.
    pub fn rows_after(
        &self,
        after: Option<&CounterKey>,
        limit: usize,
    ) -> Result<Vec<(CounterKey, Row)>, StoreError> {
        self.page("WHERE key > ?", after, limit)
    }

    fn page(
        &self,
        filter: &str,
        after: Option<&CounterKey>,
        limit: usize,
    ) -> Result<Vec<(CounterKey, Row)>, StoreError> {
        let after = after.map(CounterKey::storage_key).unwrap_or_default();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows: Vec<SqlRow> = self
            .sql
            .exec(
                &format!("SELECT {COLUMNS} FROM counters {filter} ORDER BY key LIMIT ?"),
                vec![after.into(), limit.into()],
            )?
            .to_array()?;
        rows.into_iter().map(SqlRow::decode).collect()
    }

    /// Whether any row is dirty (one probe of the dirty index).
    ///
    /// # Errors
    ///
    /// A storage failure.
    pub fn any_dirty(&self) -> Result<bool, StoreError> {
        self.any("SELECT 1 AS one FROM counters WHERE state = 1 LIMIT 1")
    }

    /// Whether the object holds any row at all (one probe of the table).
    ///
    /// # Errors
    ///
    /// A storage failure.
    pub fn any_row(&self) -> Result<bool, StoreError> {
        self.any("SELECT 1 AS one FROM counters LIMIT 1")
    }

    fn any(&self, query: &str) -> Result<bool, StoreError> {
        #[derive(Deserialize)]
        struct One {
            #[allow(dead_code, reason = "only its presence matters")]
            one: i64,
        }
        let rows: Vec<One> = self.sql.exec(query, None)?.to_array()?;
        Ok(!rows.is_empty())
    }
}

/// A generation as the SQL API takes it (a JavaScript number: one rotation a second would
/// take 285 million years to pass 2^53).
fn generation(generation: u64) -> i64 {
    i64::try_from(generation).expect("a generation per rotation stays far below 2^63")
}
