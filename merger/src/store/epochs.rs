//! Resets, deletes and the cuts objects tell: the transactions that start a counter's epoch or
//! raise its cuts, written once over [`EpochTx`], the few statements each backend writes its
//! own way (its SQL text, its locks, Postgres's notification).

use async_trait::async_trait;
use tally_crdt::{CounterKey, Cut, ReplicaId};

use super::{Epoch, ResetOutcome, ResetRequest, StoreError, StoredCounter, corrupt};

/// One transaction of a backend, as [`reset`] and [`tell_cut`] drive it.
#[async_trait]
pub trait EpochTx: Send {
    /// Locks `key`'s counter for the rest of the transaction (its row; on SQLite the write
    /// lock) and answers its id and epoch: created first if `create`, `None` when it does not
    /// exist or, if `counted`, has no slot, carry or base.
    async fn lock_counter(
        &mut self,
        key: &CounterKey,
        create: bool,
        counted: bool,
    ) -> Result<Option<(i64, Epoch)>, StoreError>;

    /// Every part of counter `id`, as a load reads it; `None` when it has none.
    async fn parts(&mut self, id: i64) -> Result<Option<StoredCounter>, StoreError>;

    /// Sets counter `id`'s epoch.
    async fn set_epoch(&mut self, id: i64, epoch: &Epoch) -> Result<(), StoreError>;

    /// Deletes counter `id`'s history (a delete).
    async fn delete_history(&mut self, id: i64) -> Result<(), StoreError>;

    /// Writes `counter`'s cuts (every region's) and its objects' shares of them, replacing
    /// those held.
    async fn write_cuts(&mut self, id: i64, counter: &StoredCounter) -> Result<(), StoreError>;

    /// Tells the other mergers that `key` changed, when it commits (Postgres; SQLite has no
    /// other mergers).
    async fn changed(&mut self, key: &CounterKey) -> Result<(), StoreError>;

    /// Commits.
    async fn commit(self) -> Result<(), StoreError>;
}

/// [`CounterStore::reset`](super::CounterStore::reset) in `tx`: the counter's lock first, so
/// that two resets of one counter serialize (with `expect_epoch`, exactly one is done); a sync
/// that commits meanwhile is inside the cut (it grew before the sums were read) or above it.
pub async fn reset<T: EpochTx>(
    mut tx: T,
    key: &CounterKey,
    request: ResetRequest,
) -> Result<ResetOutcome, StoreError> {
    let Some((id, current)) = tx.lock_counter(key, false, true).await? else {
        return Ok(ResetOutcome::Unknown);
    };
    if request.expect_epoch.is_some_and(|e| e != current.number) {
        return Ok(ResetOutcome::EpochMismatch {
            current: current.number,
        });
    }
    let epoch = Epoch {
        number: current.number + 1,
        deleted: request.delete,
        at: Some(request.at),
    };
    tx.set_epoch(id, &epoch).await?;
    // Loaded after the epoch's update: the counter's epoch is the new one, its cuts still
    // the old ones (its totals are those of the epoch that ends).
    let mut counter = tx
        .parts(id)
        .await?
        .ok_or_else(|| corrupt("counters", format!("counter {key} has no parts")))?;
    let removed = counter.totals();
    super::cut_now(&mut counter);
    tx.write_cuts(id, &counter).await?;
    if request.delete {
        tx.delete_history(id).await?;
    }
    tx.changed(key).await?;
    tx.commit().await?;
    Ok(ResetOutcome::Done {
        counter: Box::new(counter),
        removed,
    })
}

/// [`CounterStore::tell_cut`](super::CounterStore::tell_cut) in `tx`, under the counter's
/// lock as a reset: what the cut makes of the counter is [`told_cut`](super::told_cut)'s.
pub async fn tell_cut<T: EpochTx>(
    mut tx: T,
    key: &CounterKey,
    object: ReplicaId,
    region: &str,
    cut: &Cut,
) -> Result<Option<StoredCounter>, StoreError> {
    let (id, epoch) = tx
        .lock_counter(key, true, false)
        .await?
        .ok_or_else(|| corrupt("counters", format!("counter {key} was not created")))?;
    let counter = match tx.parts(id).await? {
        Some(counter) => counter,
        None => super::no_parts(key, epoch),
    };
    let Some((after, adopted)) = super::told_cut(&counter, object, region, cut) else {
        return Ok(None);
    };
    if adopted {
        tx.set_epoch(id, &after.epoch).await?;
        if after.epoch.deleted {
            tx.delete_history(id).await?;
        }
    }
    tx.write_cuts(id, &after).await?;
    tx.changed(key).await?;
    tx.commit().await?;
    Ok(Some(after))
}
