//! Unique visitors in the store, for any [`Backend`]: the daily and all-time sketches (the
//! merge is [`crate::unique`]'s).

use std::collections::BTreeMap;

use async_trait::async_trait;
use tally_crdt::{HyperLogLog, SketchKey, SketchTotal, SketchUpdate, Timestamp};

use super::backend::{Backend, Statements};
use super::sql::{Read, query};
use super::{SketchStore, StoreError, corrupt};

/// A sketch's `name` and `day` columns ([`super::day_column`]).
pub type SketchColumns = (String, String);

#[async_trait]
impl<B: Backend> SketchStore for B {
    async fn prune_sketches(&self, before: &str, limit: u32) -> Result<u64, StoreError> {
        query(
            "DELETE FROM sketches WHERE (name, day) IN (\
             SELECT name, day FROM sketches WHERE day <> '' AND day < $1 LIMIT $2)",
        )
        .bind(before)
        .bind(i64::from(limit))
        .execute(&mut *self.acquire().await?)
        .await
    }

    /// The rows are created if missing, then read locked (on Postgres `FOR UPDATE` in key
    /// order, so concurrent mergers neither deadlock nor lose a register; on SQLite the
    /// creation is the write that takes the write lock), so each merge starts from what the
    /// one before it wrote.
    async fn merge_sketches_batch(
        &self,
        syncs: &[&[SketchUpdate]],
        at: Timestamp,
    ) -> Result<Vec<Vec<SketchTotal>>, StoreError> {
        let keys = super::sketch_keys(syncs);
        if keys.is_empty() {
            return Ok(syncs.iter().map(|_| Vec::new()).collect());
        }
        let mut tx = self.begin().await?;
        tx.create_sketches(&keys).await?;
        let rows = tx.sketches_in(&keys, true).await?;
        let merge = crate::unique::merge_sketch_rows(syncs, sketches_of(&rows)?, at)
            .map_err(|e| corrupt("sketches", e.to_string()))?;
        if !merge.writes.is_empty() {
            tx.write_sketches(&merge.writes, at).await?;
        }
        B::commit(tx).await?;
        Ok(merge.totals)
    }

    async fn sketches(&self, keys: &[SketchKey]) -> Result<Vec<SketchTotal>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let asked: Vec<SketchColumns> = keys
            .iter()
            .map(|k| (k.id().to_owned(), super::day_column(k)))
            .collect();
        let mut conn = self.acquire().await?;
        let rows = conn.sketches_in(&asked, false).await?;
        Ok(crate::unique::sketch_answers(keys, sketches_of(&rows)?))
    }
}

/// Sketch rows (`name`, `day`, `sketch`, `updated_at`) by key.
fn sketches_of(
    rows: &[impl Read],
) -> Result<BTreeMap<SketchKey, (HyperLogLog, Option<Timestamp>)>, StoreError> {
    let mut found = BTreeMap::new();
    for row in rows {
        let (key, sketch) =
            super::sketch_of(row.text("name")?, row.text("day")?, row.bytes("sketch")?)?;
        let updated_at = row.opt_int("updated_at")?.map(Timestamp::from_unix_ms);
        found.insert(key, (sketch, updated_at));
    }
    Ok(found)
}
