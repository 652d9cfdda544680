//! Milestones in the store, for any [`Backend`]: registering, listing and cancelling them, the
//! winners commits record, and the announcements of the winners.

use async_trait::async_trait;
use tally_crdt::{CounterKey, CounterKind, Timestamp};

use super::backend::{Backend, Statements};
use super::sql::{Read, query};
use super::{MilestoneStore, StoreError, corrupt, decode, encode_u64, replica_of};
use crate::milestone::{AddMilestone, Announcement, CancelMilestone, Decision, Milestone};

#[async_trait]
impl<B: Backend> MilestoneStore for B {
    async fn add_milestone(
        &self,
        id: &str,
        n: u64,
        label: Option<&str>,
        at: Timestamp,
    ) -> Result<AddMilestone, StoreError> {
        let mut tx = self.begin().await?;
        tx.lock_milestones(id).await?;
        let existing = milestones_of::<B>(&mut *tx, id).await?;
        let key =
            CounterKey::new(CounterKind::G, id).map_err(|e| corrupt("counters", e.to_string()))?;
        let count = tx
            .load_in(&[key])
            .await?
            .first()
            .map_or(0, |c| c.totals().p);
        if let Some(refused) = crate::milestone::refuse_milestone(&existing, n, count) {
            return Ok(refused);
        }
        let numeric = B::DIALECT.numeric();
        query(format!(
            "INSERT INTO milestones (name, n, label, created_at) VALUES ($1, $2{numeric}, $3, $4)"
        ))
        .bind(id)
        .bind(encode_u64(n))
        .bind(label)
        .bind(at.unix_ms())
        .execute(&mut *tx)
        .await?;
        B::commit(tx).await?;
        Ok(AddMilestone::Added(Milestone {
            n,
            label: label.map(str::to_owned),
            created_at: at,
            winner: None,
            announced_at: None,
        }))
    }

    async fn milestones(&self, id: &str) -> Result<Vec<Milestone>, StoreError> {
        let mut conn = self.acquire().await?;
        milestones_of::<B>(&mut *conn, id).await
    }

    async fn claim_announcements(
        &self,
        now: Timestamp,
        lease_ms: u64,
        limit: u32,
    ) -> Result<Vec<Announcement>, StoreError> {
        let mut conn = self.acquire().await?;
        let (columns, skip_locked) = (columns::<B>(), B::DIALECT.skip_locked());
        let rows = query(format!(
            "UPDATE milestones SET next_attempt_at = $2, attempts = attempts + 1 \
             WHERE (name, n) IN (SELECT name, n FROM milestones \
                 WHERE won_at IS NOT NULL AND announced_at IS NULL AND next_attempt_at <= $1 \
                 ORDER BY next_attempt_at LIMIT $3{skip_locked}) \
             RETURNING {columns}"
        ))
        .bind(now.unix_ms())
        .bind(now.plus_ms(lease_ms).unix_ms())
        .bind(i64::from(limit))
        .fetch_all(&mut *conn)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Announcement {
                    id: row.text("name")?.to_owned(),
                    milestone: milestone_of(row)?,
                    attempts: u32::try_from(row.int("attempts")?).unwrap_or(u32::MAX),
                })
            })
            .collect()
    }

    async fn pending_announcements(&self) -> Result<u64, StoreError> {
        let mut conn = self.acquire().await?;
        let row = query(
            "SELECT COUNT(*) AS waiting FROM milestones \
             WHERE won_at IS NOT NULL AND announced_at IS NULL"
                .to_owned(),
        )
        .fetch_one(&mut *conn)
        .await?;
        Ok(u64::try_from(row.int("waiting")?).unwrap_or(0))
    }

    async fn announced(&self, id: &str, n: u64, at: Timestamp) -> Result<(), StoreError> {
        let mut conn = self.acquire().await?;
        let numeric = B::DIALECT.numeric();
        query(format!(
            "UPDATE milestones SET announced_at = $3 WHERE name = $1 AND n = $2{numeric}"
        ))
        .bind(id)
        .bind(encode_u64(n))
        .bind(at.unix_ms())
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    async fn retry_announcement(&self, id: &str, n: u64, at: Timestamp) -> Result<(), StoreError> {
        let mut conn = self.acquire().await?;
        let numeric = B::DIALECT.numeric();
        query(format!(
            "UPDATE milestones SET next_attempt_at = $3 \
             WHERE name = $1 AND n = $2{numeric} AND announced_at IS NULL"
        ))
        .bind(id)
        .bind(encode_u64(n))
        .bind(at.unix_ms())
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    async fn cancel_milestone(&self, id: &str, n: u64) -> Result<CancelMilestone, StoreError> {
        let mut tx = self.begin().await?;
        let numeric = B::DIALECT.numeric();
        let deleted = query(format!(
            "DELETE FROM milestones WHERE name = $1 AND n = $2{numeric} AND won_at IS NULL"
        ))
        .bind(id)
        .bind(encode_u64(n))
        .execute(&mut *tx)
        .await?;
        let found = milestones_of::<B>(&mut *tx, id)
            .await?
            .into_iter()
            .find(|m| m.n == n);
        B::commit(tx).await?;
        Ok(crate::milestone::cancel_outcome(n, deleted, found))
    }
}

/// The columns [`milestone_of`] reads, for a `SELECT` or a `RETURNING`.
fn columns<B: Backend>() -> String {
    let text = B::DIALECT.text();
    format!(
        "name, n{text} AS n, label, created_at, won_replica, won_unit{text} AS won_unit, \
         won_at, won_visitor, announced_at, attempts"
    )
}

/// The milestones of counter `id`, by N, read on `conn`.
pub async fn milestones_of<B: Backend>(
    conn: &mut B::Conn,
    id: &str,
) -> Result<Vec<Milestone>, StoreError> {
    let columns = columns::<B>();
    let rows = query(format!(
        "SELECT {columns} FROM milestones WHERE name = $1 ORDER BY n"
    ))
    .bind(id)
    .fetch_all(conn)
    .await?;
    rows.iter().map(milestone_of).collect()
}

/// Writes the winner of a milestone, once, in the transaction of `conn`.
pub async fn record_winner<B: Backend>(
    conn: &mut B::Conn,
    id: &str,
    decision: &Decision,
    at: Timestamp,
) -> Result<(), StoreError> {
    let numeric = B::DIALECT.numeric();
    query(format!(
        "UPDATE milestones SET won_replica = $3, won_unit = $4{numeric}, won_at = $5, \
         won_visitor = $6 WHERE name = $1 AND n = $2{numeric} AND won_at IS NULL"
    ))
    .bind(id)
    .bind(encode_u64(decision.n))
    .bind(decision.replica.to_string())
    .bind(encode_u64(decision.unit))
    .bind(at.unix_ms())
    .bind(decision.visitor.as_deref())
    .execute(conn)
    .await?;
    Ok(())
}

/// A milestone from a row of [`columns`].
fn milestone_of(row: &impl Read) -> Result<Milestone, StoreError> {
    let winner = match (
        row.opt_text("won_replica")?,
        row.opt_text("won_unit")?,
        row.opt_int("won_at")?,
    ) {
        (Some(replica), Some(unit), Some(at)) => Some(crate::milestone::Winner {
            replica: replica_of("milestones", replica)?,
            unit: decode("milestones", unit)?,
            at: Timestamp::from_unix_ms(at),
            visitor: row.opt_text("won_visitor")?.map(str::to_owned),
        }),
        _ => None,
    };
    Ok(Milestone {
        n: decode("milestones", row.text("n")?)?,
        label: row.opt_text("label")?.map(str::to_owned),
        created_at: Timestamp::from_unix_ms(row.int("created_at")?),
        winner,
        announced_at: row.opt_int("announced_at")?.map(Timestamp::from_unix_ms),
    })
}
