//! Netting what rebased carries reclaimed against their counters' cuts
//! ([`CounterStore::reclaim_carries`](super::CounterStore::reclaim_carries)): one carry's
//! transaction, written once over [`NetTx`], the statements each backend writes its own way.

use async_trait::async_trait;
use tally_crdt::{Carry, GlobalTotals};

use super::StoreError;

/// One transaction of a backend, as [`net`] drives it. Counters are named by their store id,
/// objects as their column holds them.
#[async_trait]
pub trait NetTx: Send {
    /// Locks `object`'s carry of `counter` (on Postgres the counter's row first, as a reset
    /// locks it) and answers it; `None` when it is gone.
    async fn carry(&mut self, counter: i64, object: &str) -> Result<Option<Carry>, StoreError>;

    /// `region`'s cut of `counter`, locked; `None` when it has none.
    async fn cut(&mut self, counter: i64, region: &str)
    -> Result<Option<GlobalTotals>, StoreError>;

    /// Sets `region`'s cut of `counter`.
    async fn set_cut(
        &mut self,
        counter: i64,
        region: &str,
        cut: GlobalTotals,
    ) -> Result<(), StoreError>;

    /// Zeroes what `object`'s carry of `counter` reclaimed, or deletes the carry (`delete`).
    async fn drop_reclaimed(
        &mut self,
        counter: i64,
        object: &str,
        delete: bool,
    ) -> Result<(), StoreError>;

    /// `object`'s share of `counter`'s cuts; `None` when it has none.
    async fn share(
        &mut self,
        counter: i64,
        object: &str,
    ) -> Result<Option<GlobalTotals>, StoreError>;

    /// Sets `object`'s share of `counter`'s cuts, or deletes it (`None`).
    async fn set_share(
        &mut self,
        counter: i64,
        object: &str,
        share: Option<GlobalTotals>,
    ) -> Result<(), StoreError>;

    /// Commits.
    async fn commit(self) -> Result<(), StoreError>;
}

/// Nets `object`'s carry of `counter` in `tx`: what it reclaimed leaves it, its region's cut
/// and the object's share of the cut alike ([`net_reclaimed`](super::net_reclaimed)), so no
/// count changes; a carry left holding nothing is deleted, and so is a share left at zero.
/// Returns whether it netted (a carry gone, or not to net any more, is left as it is).
pub async fn net<T: NetTx>(mut tx: T, counter: i64, object: &str) -> Result<bool, StoreError> {
    let Some(carry) = tx.carry(counter, object).await? else {
        return Ok(false);
    };
    let Some(cut) = tx.cut(counter, &carry.region).await? else {
        return Ok(false);
    };
    let Some((left, empty)) = super::net_reclaimed(&carry, cut) else {
        return Ok(false);
    };
    tx.set_cut(counter, &carry.region, left).await?;
    tx.drop_reclaimed(counter, object, empty).await?;
    if let Some(share) = tx.share(counter, object).await? {
        let left = super::minus(share, carry.reclaimed);
        let left = (left != GlobalTotals::default()).then_some(left);
        tx.set_share(counter, object, left).await?;
    }
    tx.commit().await?;
    Ok(true)
}
