//! Viewers now in the store, for any [`Backend`]: the edge objects' presence reports and their
//! sums (the rules are [`crate::presence`]'s).

use async_trait::async_trait;
use tally_crdt::{PresenceReport, ReplicaId, Timestamp};

use super::backend::{Backend, Statements};
use super::sql::{Read, query};
use super::{PresenceStore, StoreError, decode, replica_of};
use crate::presence::PresenceSum;

#[async_trait]
impl<B: Backend> PresenceStore for B {
    async fn report_presence_batch(
        &self,
        reports: &[PresenceReport],
        received: Timestamp,
    ) -> Result<(), StoreError> {
        let rows = crate::presence::presence_rows(reports, received);
        if rows.is_empty() {
            return Ok(());
        }
        self.upsert_presence(&rows).await
    }

    async fn presence(
        &self,
        ids: &[String],
        reporter: Option<ReplicaId>,
        now: Timestamp,
    ) -> Result<Vec<PresenceSum>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.acquire().await?;
        let rows = conn.presence_in(ids, now).await?;
        let mut fresh = Vec::with_capacity(rows.len());
        for row in rows {
            fresh.push((
                row.text("name")?.to_owned(),
                replica_of("presence", row.text("reporter")?)?,
                decode::<u64>("presence", row.text("count")?)?,
                Timestamp::from_unix_ms(row.int("at")?),
            ));
        }
        Ok(crate::presence::sum_presence(ids, reporter, fresh))
    }

    async fn prune_presence(&self, before: Timestamp, limit: u32) -> Result<u64, StoreError> {
        query(
            "DELETE FROM presence WHERE (name, reporter) IN (\
             SELECT name, reporter FROM presence WHERE expires_at < $1 LIMIT $2)",
        )
        .bind(before.unix_ms())
        .bind(i64::from(limit))
        .execute(&mut *self.acquire().await?)
        .await
    }
}
