//! The rows the store writes and loads, in the merger's terms: a batch's replicas, slots and
//! carries, history points, and a counter as stored (whose parts make its
//! [`CounterState`]). Below the store ([`crate::store`] re-exports them) and below the
//! modules whose rules it runs ([`crate::milestone`]), so those rules can take these rows.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

pub use tally_crdt::Epoch;
use tally_crdt::{
    Base, Carry, CounterKey, CounterState, Frame, GlobalTotals, ObjectCut, Region, ReplicaId,
    SlotTotals, Timestamp, Visit,
};

/// One replica's metadata to record: its region (kept from the first sync) and when it synced.
#[derive(Debug, Clone)]
pub struct ReplicaRow {
    /// The replica incarnation.
    pub replica: ReplicaId,
    /// Region the sync claims.
    pub region: String,
    /// Time of the sync.
    pub at: Timestamp,
}

/// One slot total to merge (max) into the store.
#[derive(Debug, Clone)]
pub struct SlotRow {
    /// The counter.
    pub key: CounterKey,
    /// Owner of the slot.
    pub replica: ReplicaId,
    /// Its totals.
    pub totals: SlotTotals,
    /// Time of the sync.
    pub at: Timestamp,
    /// Hits of the slot that carried a visitor key (near a milestone only; usually empty):
    /// a winner among them gets its key recorded.
    pub visits: Vec<Visit>,
    /// What the sync carried of the replica's object ([`tally_crdt::SlotUpdate::carried`], in
    /// its [`frame`](tally_crdt::SlotUpdate::frame)): the sums of the final slots of its
    /// generations below the replica's ([`sent_carry`]). `None` for none.
    pub carry: Option<Carry>,
}

/// The carry a sync of `replica` brings (`carried` in `frame`, [`Carry::sent`]), for
/// [`SlotRow::carry`]; `None` when it brings none. Its region is left empty: a row's carry
/// takes the region of record of its replica when it is written.
pub fn sent_carry(replica: ReplicaId, carried: SlotTotals, frame: Option<Frame>) -> Option<Carry> {
    (carried != SlotTotals::default() || frame.is_some())
        .then(|| Carry::sent(replica, Region::from(""), carried, frame))
}

impl SlotRow {
    /// The carry this row brings, with the region of record of its replica (`region`): the
    /// object's generations below the replica's, at the sums the sync carried. `None` when
    /// it carried nothing.
    pub fn carry(&self, region: &Region) -> Option<(ReplicaId, Carry)> {
        self.carry.as_ref().map(|carry| {
            let carry = Carry {
                region: Arc::clone(region),
                ..carry.clone()
            };
            (self.replica.object(), carry)
        })
    }
}

/// One edge object's carry of one counter, as a commit or a retirement writes it: merged
/// into the stored one column by column (max), and the slots it holds deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CarryRow {
    /// The counter.
    pub key: CounterKey,
    /// The object ([`ReplicaId::object`]).
    pub object: ReplicaId,
    /// Its carry.
    pub carry: Carry,
    /// When it was written (a retirement: when the last slot folded into it grew).
    pub at: Timestamp,
}

/// The carries a batch of slots brings (syncs of retired replicas already left out), one per
/// counter and object: the join of the batch's carries of it ([`CounterState::merge_carry`]),
/// each with the region of record of its replica (`region_of`; a replica without one is
/// left out). In (counter, object) order: the lock order of a Postgres commit.
pub fn batch_carries<S: Borrow<SlotRow>>(
    slots: &[S],
    region_of: impl Fn(ReplicaId) -> Option<Region>,
) -> Vec<CarryRow> {
    type Joined = (CounterState, BTreeMap<ReplicaId, Timestamp>);
    let mut joined: BTreeMap<&CounterKey, Joined> = BTreeMap::new();
    for row in slots.iter().map(Borrow::borrow) {
        let Some((object, carry)) = region_of(row.replica).and_then(|region| row.carry(&region))
        else {
            continue;
        };
        let (state, times) = joined.entry(&row.key).or_default();
        state.merge_carry(object, &carry);
        let at = times.entry(object).or_insert(row.at);
        *at = (*at).max(row.at);
    }
    let mut rows = Vec::new();
    for (key, (state, times)) in joined {
        for (object, carry) in state.carries() {
            rows.push(CarryRow {
                key: key.clone(),
                object: *object,
                carry: carry.clone(),
                at: times[object],
            });
        }
    }
    rows
}

/// One counter's global totals at one time, for the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRow {
    /// The counter.
    pub key: CounterKey,
    /// Time taken.
    pub at: Timestamp,
    /// Totals then.
    pub totals: GlobalTotals,
    /// The epoch they belong to: a point of an epoch that has ended is not written.
    pub epoch: u64,
}

/// One slot as stored, with the region of its replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSlot {
    /// Owner of the slot.
    pub replica: ReplicaId,
    /// Region of the replica's first sync.
    pub region: String,
    /// Its totals.
    pub totals: SlotTotals,
    /// Last time it grew.
    pub at: Timestamp,
}

/// One counter as stored: every live slot of it, the carries of its edge objects' retired
/// incarnations, the bases slots were folded into before carries (with the replicas folded),
/// and the cuts of its last reset — the parts of a [`CounterState`], with the times the
/// store keeps beside them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCounter {
    /// The counter.
    pub key: CounterKey,
    /// Its live slots, in any order.
    pub slots: Vec<StoredSlot>,
    /// Per edge object ([`ReplicaId::object`]), the carry of its retired incarnations, and
    /// when it last grew.
    pub carries: Vec<(ReplicaId, Carry, Timestamp)>,
    /// Per region, the sums of the slots of its replicas retired before carries (nothing
    /// writes bases any more), and when the last of them grew.
    pub bases: Vec<(String, GlobalTotals, Timestamp)>,
    /// The retired replicas folded into those bases, with their regions.
    pub folded: Vec<(String, ReplicaId)>,
    /// Where its resets stand.
    pub epoch: Epoch,
    /// Per region, the sums of its slots and bases at its last reset: the count is the sums
    /// minus these (empty for a counter never reset).
    pub cuts: Vec<(String, GlobalTotals)>,
    /// Per edge object, its region of record and its share of those cuts: what it had
    /// counted at that reset ([`tally_crdt::ObjectCut`]; empty for a counter last reset
    /// before objects were told their share).
    pub object_cuts: Vec<(ReplicaId, String, GlobalTotals)>,
}

impl StoredCounter {
    /// The counter's state: the lattice its parts are.
    pub fn state(&self) -> CounterState {
        let mut bases: BTreeMap<&str, Base> = self
            .bases
            .iter()
            .map(|(region, totals, _)| {
                let base = Base {
                    totals: *totals,
                    replicas: BTreeSet::new(),
                };
                (region.as_str(), base)
            })
            .collect();
        for (region, replica) in &self.folded {
            bases
                .entry(region.as_str())
                .or_default()
                .replicas
                .insert(*replica);
        }
        CounterState::from_parts(
            self.slots
                .iter()
                .map(|s| (s.replica, Region::from(s.region.as_str()), s.totals)),
            self.carries
                .iter()
                .map(|(object, carry, _)| (*object, carry.clone())),
            bases
                .into_iter()
                .map(|(region, base)| (Region::from(region), base)),
            self.epoch,
            self.cuts
                .iter()
                .map(|(region, cut)| (Region::from(region.as_str()), *cut)),
        )
        .with_object_cuts(self.object_cuts.iter().map(|(object, region, totals)| {
            let cut = ObjectCut {
                region: Region::from(region.as_str()),
                totals: *totals,
            };
            (*object, cut)
        }))
    }

    /// Its totals in the current epoch ([`CounterState::value`]).
    pub fn totals(&self) -> GlobalTotals {
        self.state().value()
    }

    /// Whether a list shows it: not deleted, or counted again since.
    pub fn listed(&self) -> bool {
        !self.epoch.deleted || self.totals() != GlobalTotals::default()
    }
}
