//! Counters in the store, for any [`Backend`]: retirements, imports, lists and the pruning
//! of replicas and carries, and the parts queries every load, list and transaction reads a
//! counter with (a batch's commit and a load are each backend's own: their rows travel as
//! JSON on SQLite and as arrays on Postgres).

use async_trait::async_trait;
use tally_crdt::{CounterKey, CounterKind, Cut, ReplicaId, SlotTotals, Timestamp};

use super::backend::{Backend, Dialect, Statements, kind_id};
use super::sql::{Conn, Query, Read, query};
use super::{
    Committed, CounterStore, IMPORT_REGION, ImportOutcome, ImportRequest, ReplicaRow, ResetOutcome,
    ResetRequest, Retired, SlotRow, StoreError, StoredCounter, corrupt, decode, encode_u64,
    encode_u128, replica_of,
};

#[async_trait]
impl<B: Backend> CounterStore for B {
    async fn commit(
        &self,
        replicas: &[ReplicaRow],
        slots: &[SlotRow],
    ) -> Result<Committed, StoreError> {
        self.commit_batch(replicas, slots).await
    }

    /// Lock order on Postgres: the rows of the object's incarnations up to this one, by id (a
    /// commit of one of them holds its row for its whole transaction, so the two serialize),
    /// then their slots by (counter, replica), then the carries by counter: the phases of a
    /// commit, so a retirement and commits never wait on each other in a cycle. On SQLite the
    /// replica's upsert is the write that takes the write lock.
    async fn retire(&self, replica: ReplicaId, at: Timestamp) -> Result<Retired, StoreError> {
        let mut tx = self.begin().await?;
        let (first, last) = super::generations_through(replica);
        if let Some(lock) = B::DIALECT.lock_generations() {
            query(lock)
                .bind(first.as_str())
                .bind(last.as_str())
                .execute(&mut *tx)
                .await?;
        }
        // A replica never seen is remembered as retired too, so that a sync of it arriving
        // late is ignored.
        let region = query(
            "INSERT INTO replicas AS r (replica, region, first_sync, last_sync, retired_at) \
             VALUES ($1, '', $2, $2, $2) \
             ON CONFLICT (replica) DO UPDATE SET retired_at = COALESCE(r.retired_at, $2) \
             RETURNING region",
        )
        .bind(replica.to_string())
        .bind(at.unix_ms())
        .fetch_one(&mut *tx)
        .await?
        .text("region")?
        .to_owned();
        // The live slots of the object up to this generation, locked (a commit deleting
        // slots its carry holds waits for them), and the object's carries of their counters.
        let (text, lock) = (B::DIALECT.text(), B::DIALECT.for_update_of("s"));
        let rows = query(format!(
            "SELECT c.kind, c.name, r.replica, r.region, s.p{text} AS p, s.n{text} AS n, \
                 s.updated_at \
             FROM replicas r JOIN slots s ON s.replica = r.id JOIN counters c ON c.id = s.counter \
             WHERE r.replica BETWEEN $1 AND $2 \
             ORDER BY s.counter, s.replica{lock}"
        ))
        .bind(first.as_str())
        .bind(last.as_str())
        .fetch_all(&mut *tx)
        .await?;
        let slots = rows
            .iter()
            .map(|row| Ok((super::key_of_row(row)?, super::stored_slot(row)?)))
            .collect::<Result<_, StoreError>>()?;
        let carry = carry_columns(B::DIALECT, "x.");
        let rows = query(format!(
            "SELECT c.kind, c.name, {carry}, x.updated_at \
             FROM carries x JOIN counters c ON c.id = x.counter WHERE x.object = $1 \
             AND x.counter IN (SELECT s.counter FROM replicas r \
                 JOIN slots s ON s.replica = r.id WHERE r.replica BETWEEN $2 AND $3)"
        ))
        .bind(super::object_column(replica.object()))
        .bind(first.as_str())
        .bind(last.as_str())
        .fetch_all(&mut *tx)
        .await?;
        let carries = rows
            .iter()
            .map(super::keyed_carry)
            .collect::<Result<_, _>>()?;
        let (carries, folded) = super::fold_object(replica, slots, carries);
        // Other mergers reload these counters (a missed notice costs nothing: the sum a
        // stale cache shows is the same before and after a fold).
        let changed = tx.merge_carries(&carries).await?;
        self.changed(&mut tx, &changed).await?;
        B::commit(tx).await?;
        Ok(Retired {
            region,
            carries,
            folded,
        })
    }

    async fn reset(
        &self,
        key: &CounterKey,
        request: ResetRequest,
    ) -> Result<ResetOutcome, StoreError> {
        super::epochs::reset(self, key, request).await
    }

    async fn tell_cut(
        &self,
        key: &CounterKey,
        object: ReplicaId,
        region: &str,
        cut: &Cut,
    ) -> Result<Option<StoredCounter>, StoreError> {
        super::epochs::tell_cut(self, key, object, region, cut).await
    }

    /// Two mergers importing the same new id at once each create a replica; the `imports`
    /// row decides which one the import keeps (the other is deleted in the same transaction),
    /// and the slot's primary key decides the value. The counter's insert comes first: on
    /// SQLite it is the write that takes the write lock.
    async fn import(
        &self,
        key: &CounterKey,
        request: &ImportRequest,
    ) -> Result<ImportOutcome, StoreError> {
        let mut tx = self.begin().await?;
        create_counter::<B>(&mut tx, key).await?;
        let counter = query("SELECT id FROM counters WHERE kind = $1 AND name = $2")
            .bind(key.kind().as_str())
            .bind(key.id())
            .fetch_one(&mut *tx)
            .await?
            .int("id")?;
        let replica = replica_of_import::<B>(&mut tx, request).await?;
        // An import is a slot's growth like any sync's: it may cross a milestone.
        let pending = if key.kind() == CounterKind::G {
            tx.lock_pending(&[key.id()])
                .await?
                .remove(key.id())
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let before = if pending.is_empty() {
            None
        } else {
            tx.load_in(std::slice::from_ref(key)).await?.pop()
        };
        let numeric = B::DIALECT.numeric();
        let inserted = query(format!(
            "INSERT INTO slots (counter, replica, p, n, updated_at) \
             VALUES ($1, $2, $3{numeric}, $4{numeric}, $5) \
             ON CONFLICT (counter, replica) DO NOTHING"
        ))
        .bind(counter)
        .bind(replica)
        .bind(encode_u64(request.totals.p))
        .bind(encode_u64(request.totals.n))
        .bind(request.at.unix_ms())
        .execute(&mut *tx)
        .await?
            == 1;
        if inserted && !pending.is_empty() {
            let name = query("SELECT replica FROM replicas WHERE id = $1")
                .bind(replica)
                .fetch_one(&mut *tx)
                .await?;
            let incoming = [(
                replica_of("replicas", name.text("replica")?)?,
                request.totals,
            )];
            let before = before
                .as_ref()
                .map(StoredCounter::state)
                .unwrap_or_default();
            for decision in crate::milestone::decide_commit(&before, incoming, &pending) {
                super::milestones::record_winner::<B>(&mut tx, key.id(), &decision, request.at)
                    .await?;
            }
        }
        if !inserted {
            let text = B::DIALECT.text();
            let row = query(format!(
                "SELECT p{text} AS p, n{text} AS n FROM slots WHERE counter = $1 AND replica = $2"
            ))
            .bind(counter)
            .bind(replica)
            .fetch_one(&mut *tx)
            .await?;
            let existing = SlotTotals {
                p: decode("slots", row.text("p")?)?,
                n: decode("slots", row.text("n")?)?,
            };
            if existing != request.totals {
                return Ok(ImportOutcome::Conflict { existing });
            }
        }
        let stored = parts::<B>(&mut tx, counter)
            .await?
            .ok_or_else(|| corrupt("counters", format!("counter {key} has no parts")))?;
        if inserted {
            self.changed(&mut tx, &[kind_id(key)]).await?;
        }
        B::commit(tx).await?;
        Ok(if inserted {
            ImportOutcome::Imported(stored)
        } else {
            ImportOutcome::Unchanged(stored)
        })
    }

    async fn load(&self, keys: &[CounterKey]) -> Result<Vec<StoredCounter>, StoreError> {
        let mut conn = self.acquire().await?;
        conn.load_in(keys).await
    }

    async fn list(
        &self,
        kind: CounterKind,
        prefix: &str,
        after: Option<&CounterKey>,
        limit: u32,
    ) -> Result<Vec<StoredCounter>, StoreError> {
        // No id holds a character outside the id charset (nor can Postgres text hold NUL):
        // such a prefix matches nothing.
        let id_char = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':');
        if limit == 0 || !prefix.bytes().all(id_char) {
            return Ok(Vec::new());
        }
        // The cursor in `CounterKey` order: one of a later kind is past every counter of
        // this one, one of an earlier kind before them all (every id is past "").
        let after = match after {
            Some(a) if a.kind() > kind => return Ok(Vec::new()),
            Some(a) if a.kind() == kind => a.id(),
            _ => "",
        };
        // Ids are ASCII letters, digits and `-_.:`, all below `~`: the ids that start with
        // `prefix` are exactly [prefix, prefix + "~") in byte order (SQLite's, and that of
        // the "C" collation of Postgres's `name`), a range of the (kind, name) index.
        let parts = parts_of_k(B::DIALECT);
        let rows = query(format!(
            "WITH k AS (SELECT {K_COLUMNS} FROM counters c \
                 WHERE c.kind = $1 AND c.name >= $2 AND c.name < $3 AND c.name > $4 \
                     AND {COUNTED} \
                 ORDER BY c.name LIMIT $5) \
             {parts}"
        ))
        .bind(kind.as_str())
        .bind(prefix)
        .bind(format!("{prefix}~"))
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&mut *self.acquire().await?)
        .await?;
        super::counters_of(&rows)
    }

    async fn replica_count(&self) -> Result<u64, StoreError> {
        let alive = query("SELECT count(*) AS n FROM replicas WHERE retired_at IS NULL");
        count("replicas", alive, &mut *self.acquire().await?).await
    }

    /// `SKIP LOCKED` on Postgres leaves a row a commit or a retirement holds (it waits for
    /// the next pass), so pruning never waits on one, and two mergers pruning at once take
    /// different rows. The first three conditions are the partial index's
    /// (`replicas_by_retirement`), as SQLite wants them to use it.
    async fn prune_replicas(&self, before: Timestamp, limit: u32) -> Result<u64, StoreError> {
        let (no, skip_locked) = (B::DIALECT.no(), B::DIALECT.skip_locked());
        query(format!(
            "DELETE FROM replicas WHERE id IN ( \
                 SELECT r.id FROM replicas r \
                 WHERE r.retired_at IS NOT NULL AND r.kept = {no} AND r.retired_at < $1 \
                     AND NOT EXISTS (SELECT 1 FROM slots s WHERE s.replica = r.id) \
                     AND NOT EXISTS (SELECT 1 FROM folded f WHERE f.replica = r.id) \
                     AND NOT EXISTS (SELECT 1 FROM imports i WHERE i.replica = r.id) \
                 LIMIT $2{skip_locked})"
        ))
        .bind(before.unix_ms())
        .bind(i64::from(limit))
        .execute(&mut *self.acquire().await?)
        .await
    }

    /// One transaction per carry ([`super::reclaim::net`]).
    async fn reclaim_carries(&self, before: Timestamp, limit: u32) -> Result<u64, StoreError> {
        let numeric = B::DIALECT.numeric();
        let candidates = query(format!(
            "SELECT x.counter, x.object FROM carries x \
             JOIN cuts c ON c.counter = x.counter AND c.region = x.region \
             WHERE x.frame > 0 AND (x.rp > $3{numeric} OR x.rn > $3{numeric}) \
                 AND x.updated_at < $1 AND x.rp <= c.p AND x.rn <= c.n \
             ORDER BY x.counter, x.object LIMIT $2"
        ))
        .bind(before.unix_ms())
        .bind(i64::from(limit))
        .bind(encode_u128(0))
        .fetch_all(&mut *self.acquire().await?)
        .await?;
        let mut netted = 0;
        for candidate in candidates {
            let (counter, object) = (candidate.int("counter")?, candidate.text("object")?);
            netted += u64::from(super::reclaim::net(self, counter, object).await?);
        }
        Ok(netted)
    }

    async fn counter_count(&self, kind: CounterKind) -> Result<u64, StoreError> {
        let of_kind =
            query("SELECT count(*) AS n FROM counters WHERE kind = $1").bind(kind.as_str());
        count("counters", of_kind, &mut *self.acquire().await?).await
    }
}

/// The `n` a `count(*)` of `table` answers.
async fn count<C: Conn + ?Sized>(
    table: &'static str,
    count: Query<'_>,
    conn: &mut C,
) -> Result<u64, StoreError> {
    let n = count.fetch_one(conn).await?.int("n")?;
    u64::try_from(n).map_err(|_| corrupt(table, format!("count {n}")))
}

/// Registers `key`'s counter if the store does not have it, in `conn`'s transaction (on
/// SQLite a write, which takes the write lock).
pub async fn create_counter<B: Backend>(
    conn: &mut B::Conn,
    key: &CounterKey,
) -> Result<(), StoreError> {
    query("INSERT INTO counters (kind, name) VALUES ($1, $2) ON CONFLICT DO NOTHING")
        .bind(key.kind().as_str())
        .bind(key.id())
        .execute(conn)
        .await?;
    Ok(())
}

/// The replica of the import `request` names, created on its first use; in `conn`'s
/// transaction.
async fn replica_of_import<B: Backend>(
    conn: &mut B::Conn,
    request: &ImportRequest,
) -> Result<i64, StoreError> {
    let find = || query("SELECT replica FROM imports WHERE name = $1").bind(&request.name);
    if let Some(found) = find().fetch_optional(&mut *conn).await? {
        return found.int("replica");
    }
    let at = request.at.unix_ms();
    let ours = query(
        "INSERT INTO replicas (replica, region, first_sync, last_sync) \
         VALUES ($1, $2, $3, $3) RETURNING id",
    )
    .bind(super::import_replica().to_string())
    .bind(IMPORT_REGION)
    .bind(at)
    .fetch_one(&mut *conn)
    .await?
    .int("id")?;
    query(
        "INSERT INTO imports (name, replica, created_at) VALUES ($1, $2, $3) \
         ON CONFLICT (name) DO NOTHING",
    )
    .bind(&request.name)
    .bind(ours)
    .bind(at)
    .execute(&mut *conn)
    .await?;
    let kept = find().fetch_one(&mut *conn).await?.int("replica")?;
    if kept != ours {
        query("DELETE FROM replicas WHERE id = $1")
            .bind(ours)
            .execute(conn)
            .await?;
    }
    Ok(kept)
}

/// The columns of a `carries` row (qualified by `table`, e.g. `"x."`) that
/// [`carry_of`](super::carry_of) reads.
pub fn carry_columns(dialect: Dialect, table: &str) -> String {
    let text = dialect.text();
    format!(
        "{table}region, {table}through, {table}p{text} AS p, {table}n{text} AS n, {table}frame, \
         {table}rp{text} AS rp, {table}rn{text} AS rn"
    )
}

/// The columns of `counters` a parts query carries on every row.
pub const K_COLUMNS: &str = "c.id, c.kind, c.name, c.epoch, c.deleted, c.reset_at";

/// Whether counter `c` has anything counted: a slot, a carry or a base.
pub const COUNTED: &str = "(EXISTS (SELECT 1 FROM slots s WHERE s.counter = c.id) \
    OR EXISTS (SELECT 1 FROM carries x WHERE x.counter = c.id) \
    OR EXISTS (SELECT 1 FROM bases b WHERE b.counter = c.id))";

/// Every part of the counters in a CTE `k` ([`K_COLUMNS`]), as [`super::counters_of`] reads
/// them: carries, live slots with their replica's region, bases, cuts, objects' shares of
/// the cuts and folded replicas; sorted by key, then part, then replica. (Carries come first:
/// every column is typed in them, which Postgres takes the union's types from.)
pub fn parts_of_k(dialect: Dialect) -> String {
    let text = dialect.text();
    let k = "k.kind, k.name, k.epoch, k.deleted, k.reset_at";
    format!(
        "SELECT {k}, 'o' AS part, o.object AS replica, o.region, o.p{text} AS p, \
             o.n{text} AS n, o.updated_at, o.through, o.frame, o.rp{text} AS rp, o.rn{text} AS rn \
         FROM k JOIN carries o ON o.counter = k.id \
         UNION ALL \
         SELECT {k}, 's', r.replica, r.region, s.p{text}, s.n{text}, s.updated_at, NULL, NULL, \
             NULL, NULL \
         FROM k JOIN slots s ON s.counter = k.id JOIN replicas r ON r.id = s.replica \
         UNION ALL \
         SELECT {k}, 'b', NULL, b.region, b.p{text}, b.n{text}, b.updated_at, NULL, NULL, NULL, \
             NULL \
         FROM k JOIN bases b ON b.counter = k.id \
         UNION ALL \
         SELECT {k}, 'c', NULL, x.region, x.p{text}, x.n{text}, 0, NULL, NULL, NULL, NULL \
         FROM k JOIN cuts x ON x.counter = k.id \
         UNION ALL \
         SELECT {k}, 'h', h.object, h.region, h.p{text}, h.n{text}, 0, NULL, NULL, NULL, NULL \
         FROM k JOIN object_cuts h ON h.counter = k.id \
         UNION ALL \
         SELECT {k}, 'f', r.replica, r.region, NULL, NULL, 0, NULL, NULL, NULL, NULL \
         FROM k JOIN folded f ON f.counter = k.id JOIN replicas r ON r.id = f.replica \
         ORDER BY 1, 2, 6 DESC, 7"
    )
}

/// Every part of counter `id` (its store id), read on `conn`; `None` when it has none.
pub async fn parts<B: Backend>(
    conn: &mut B::Conn,
    id: i64,
) -> Result<Option<StoredCounter>, StoreError> {
    let parts = parts_of_k(B::DIALECT);
    let rows = query(format!(
        "WITH k AS (SELECT {K_COLUMNS} FROM counters c WHERE c.id = $1) {parts}"
    ))
    .bind(id)
    .fetch_all(conn)
    .await?;
    Ok(super::counters_of(&rows)?.pop())
}
