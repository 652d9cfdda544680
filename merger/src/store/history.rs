//! History in the store, for any [`Backend`]: the points of each counter's totals over time.

use std::num::NonZeroU64;

use async_trait::async_trait;
use tally_crdt::{CounterKey, GlobalTotals, Timestamp};

use super::backend::Backend;
use super::sql::{Read, query};
use super::{HistoryStore, SnapshotRow, StoreError, decode};

/// [`HistoryStore::prune_history`] without a bucket: `$1` from, `$2` to, `$3` the limit.
/// `(counter, taken_at)` is the primary key, so the `IN` finds each row by it; the range uses
/// the `taken_at` index.
const PRUNE_ALL: &str = "DELETE FROM history WHERE (counter, taken_at) IN (\
    SELECT h.counter, h.taken_at FROM history h \
    WHERE h.taken_at >= $1 AND h.taken_at < $2 LIMIT $3)";

/// [`HistoryStore::prune_history`] with a bucket of `$4` milliseconds: only points with a later one
/// of the same counter in their bucket.
const PRUNE_BUCKETED: &str = "DELETE FROM history WHERE (counter, taken_at) IN (\
    SELECT h.counter, h.taken_at FROM history h \
    WHERE h.taken_at >= $1 AND h.taken_at < $2 \
    AND EXISTS (SELECT 1 FROM history l WHERE l.counter = h.counter \
        AND l.taken_at > h.taken_at AND l.taken_at < (h.taken_at / $4 + 1) * $4) \
    LIMIT $3)";

#[async_trait]
impl<B: Backend> HistoryStore for B {
    async fn write_history(&self, rows: &[SnapshotRow]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        self.upsert_history(rows).await
    }

    async fn prune_history(
        &self,
        from: Timestamp,
        to: Timestamp,
        bucket: Option<NonZeroU64>,
        limit: u32,
    ) -> Result<u64, StoreError> {
        let statement = query(if bucket.is_some() {
            PRUNE_BUCKETED
        } else {
            PRUNE_ALL
        })
        .bind(from.unix_ms())
        .bind(to.unix_ms())
        .bind(i64::from(limit));
        let statement = match bucket {
            Some(bucket) => statement.bind(i64::try_from(bucket.get()).unwrap_or(i64::MAX)),
            None => statement,
        };
        statement.execute(&mut *self.acquire().await?).await
    }

    async fn history(
        &self,
        key: &CounterKey,
        from: Timestamp,
        to: Timestamp,
        limit: u32,
    ) -> Result<Vec<SnapshotRow>, StoreError> {
        let text = B::DIALECT.text();
        let rows = query(format!(
            "SELECT h.taken_at, h.epoch, h.p{text} AS p, h.n{text} AS n \
             FROM history h JOIN counters c ON c.id = h.counter \
             WHERE c.kind = $1 AND c.name = $2 AND h.taken_at BETWEEN $3 AND $4 \
             ORDER BY h.taken_at LIMIT $5"
        ))
        .bind(key.kind().as_str())
        .bind(key.id())
        .bind(from.unix_ms())
        .bind(to.unix_ms())
        .bind(i64::from(limit))
        .fetch_all(&mut *self.acquire().await?)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(SnapshotRow {
                    key: key.clone(),
                    at: Timestamp::from_unix_ms(row.int("taken_at")?),
                    totals: GlobalTotals {
                        p: decode("history", row.text("p")?)?,
                        n: decode("history", row.text("n")?)?,
                    },
                    epoch: u64::try_from(row.int("epoch")?).unwrap_or_default(),
                })
            })
            .collect()
    }
}
