//! Resets, deletes and the cuts objects tell, for any [`Backend`]: the transactions that start
//! a counter's epoch or raise its cuts (the backend locks the counter and writes the cuts its
//! own way).

use tally_crdt::{CounterKey, CounterKind, Cut, ReplicaId, Timestamp};

use super::backend::{Backend, Statements, kind_id};
use super::counters::COUNTED;
use super::sql::{Read, query};
use super::{Epoch, ResetOutcome, ResetRequest, StoreError, StoredCounter, corrupt};

/// [`CounterStore::reset`](super::CounterStore::reset): the counter's lock first, so that two
/// resets of one counter serialize (with `expect_epoch`, exactly one is done); a sync that
/// commits meanwhile is inside the cut (it grew before the sums were read) or above it.
pub async fn reset<B: Backend>(
    store: &B,
    key: &CounterKey,
    request: ResetRequest,
) -> Result<ResetOutcome, StoreError> {
    let mut tx = store.begin().await?;
    let Some((id, current)) = lock_counter::<B>(&mut tx, key, Lock::Reset).await? else {
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
    set_epoch::<B>(&mut tx, id, &epoch).await?;
    // Loaded after the epoch's update: the counter's epoch is the new one, its cuts still
    // the old ones (its totals are those of the epoch that ends).
    let mut counter = super::counters::parts::<B>(&mut tx, id)
        .await?
        .ok_or_else(|| corrupt("counters", format!("counter {key} has no parts")))?;
    let removed = counter.totals();
    super::cut_now(&mut counter);
    write_cuts::<B>(&mut tx, id, &counter).await?;
    if request.delete {
        delete_history::<B>(&mut tx, id).await?;
    }
    store.changed(&mut tx, &[kind_id(key)]).await?;
    B::commit(tx).await?;
    Ok(ResetOutcome::Done {
        counter: Box::new(counter),
        removed,
    })
}

/// [`CounterStore::tell_cut`](super::CounterStore::tell_cut), under the counter's lock as a
/// reset: what the cut makes of the counter is [`told_cut`](super::told_cut)'s.
pub async fn tell_cut<B: Backend>(
    store: &B,
    key: &CounterKey,
    object: ReplicaId,
    region: &str,
    cut: &Cut,
) -> Result<Option<StoredCounter>, StoreError> {
    let mut tx = store.begin().await?;
    let (id, epoch) = lock_counter::<B>(&mut tx, key, Lock::Cut)
        .await?
        .ok_or_else(|| corrupt("counters", format!("counter {key} was not created")))?;
    let counter = match super::counters::parts::<B>(&mut tx, id).await? {
        Some(counter) => counter,
        None => super::no_parts(key, epoch),
    };
    let Some((after, adopted)) = super::told_cut(&counter, object, region, cut) else {
        return Ok(None);
    };
    if adopted {
        set_epoch::<B>(&mut tx, id, &after.epoch).await?;
        if after.epoch.deleted {
            delete_history::<B>(&mut tx, id).await?;
        }
    }
    write_cuts::<B>(&mut tx, id, &after).await?;
    store.changed(&mut tx, &[kind_id(key)]).await?;
    B::commit(tx).await?;
    Ok(Some(after))
}

/// What a transaction locks a counter for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lock {
    /// A reset or a delete: a counter with nothing counted is not locked (there is nothing
    /// to reset).
    Reset,
    /// A cut an object tells: the counter is created if missing.
    Cut,
}

/// Locks `key`'s counter for the rest of the transaction, and for kind `g` its pending
/// milestones (a commit deciding a milestone reads the count a reset moves: one at a time);
/// answers its store id and epoch, `None` when there is none to lock.
async fn lock_counter<B: Backend>(
    conn: &mut B::Conn,
    key: &CounterKey,
    lock: Lock,
) -> Result<Option<(i64, Epoch)>, StoreError> {
    if lock == Lock::Cut {
        super::counters::create_counter::<B>(conn, key).await?;
    }
    let filter = if lock == Lock::Reset { COUNTED } else { "true" };
    let row = query(B::DIALECT.lock_counter(filter))
        .bind(key.kind().as_str())
        .bind(key.id())
        .fetch_optional(&mut *conn)
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    if key.kind() == CounterKind::G {
        conn.lock_pending(&[key.id()]).await?;
    }
    Ok(Some((row.int("id")?, super::epoch_of(&row)?)))
}

/// Sets counter `id`'s epoch.
async fn set_epoch<B: Backend>(
    conn: &mut B::Conn,
    id: i64,
    epoch: &Epoch,
) -> Result<(), StoreError> {
    query("UPDATE counters SET epoch = $2, deleted = $3, reset_at = $4 WHERE id = $1")
        .bind(id)
        .bind(super::epoch_param(epoch.number))
        .bind(epoch.deleted)
        .bind(epoch.at.map(Timestamp::unix_ms))
        .execute(conn)
        .await?;
    Ok(())
}

/// Writes `counter`'s cuts and its objects' shares of them, replacing those held.
async fn write_cuts<B: Backend>(
    conn: &mut B::Conn,
    id: i64,
    counter: &StoredCounter,
) -> Result<(), StoreError> {
    query("DELETE FROM object_cuts WHERE counter = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    conn.write_cuts(id, counter).await
}

/// Deletes counter `id`'s history (a delete).
async fn delete_history<B: Backend>(conn: &mut B::Conn, id: i64) -> Result<(), StoreError> {
    query("DELETE FROM history WHERE counter = $1")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}
