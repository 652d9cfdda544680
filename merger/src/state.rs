//! [`Merged`]: the merged counters held in memory, the source of every read.
//!
//! Only the commit task changes it, and only with what the store has already committed, so
//! a read never shows a value that a crash could take back. Readers take a short read lock
//! (a std `RwLock`: nothing is awaited while it is held).

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::Arc;

use tally_crdt::{CounterKind, GlobalTotals, MergedCounter, PNCounter, ReplicaId, SlotTotals};

use crate::store::{Loaded, SlotRow, SnapshotRow};

/// What the merger knows of one replica incarnation.
#[derive(Debug, Clone)]
pub struct Replica {
    /// Region of its first sync; its slots count towards this region.
    pub region: Arc<str>,
    /// First sync, Unix ms.
    pub first_sync: i64,
    /// Latest sync, Unix ms.
    pub last_sync: i64,
}

/// One region's share of a counter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegionShare {
    /// Totals over the slots of this region's replicas.
    pub totals: GlobalTotals,
    /// Latest sync of this counter from this region, Unix ms.
    pub last_sync: i64,
}

/// One merged counter.
#[derive(Debug, Clone, Default)]
pub struct Counter {
    /// Every replica's slot, merged with max (for kind `g` the decrement half stays empty).
    slots: PNCounter,
    /// Sums of the slots, kept up to date on every merge.
    totals: GlobalTotals,
    /// Per-region sums and last syncs.
    regions: BTreeMap<Arc<str>, RegionShare>,
    /// Replicas with a non-zero slot.
    replicas: usize,
    /// Last time a slot grew, Unix ms.
    updated_at: i64,
    /// Totals at the last snapshot written.
    snapshotted: Option<GlobalTotals>,
}

impl Counter {
    /// Global totals (`p - n` is the count).
    pub fn totals(&self) -> GlobalTotals {
        self.totals
    }
    /// Per-region shares.
    pub fn regions(&self) -> &BTreeMap<Arc<str>, RegionShare> {
        &self.regions
    }
    /// Number of replicas with a non-zero slot.
    pub fn replicas(&self) -> usize {
        self.replicas
    }
    /// Last time a slot grew, Unix ms.
    pub fn updated_at(&self) -> i64 {
        self.updated_at
    }
    /// `replica`'s slot.
    pub fn slot(&self, replica: ReplicaId) -> SlotTotals {
        self.slots.get(replica)
    }

    /// Merges one slot (max). Returns whether it grew.
    fn merge_slot(
        &mut self,
        replica: ReplicaId,
        region: &Arc<str>,
        totals: SlotTotals,
        at: i64,
    ) -> bool {
        let share = self.regions.entry(Arc::clone(region)).or_default();
        share.last_sync = share.last_sync.max(at);
        let before = self.slots.get(replica);
        if !self.slots.merge_slot(replica, totals) {
            return false;
        }
        let after = self.slots.get(replica);
        // Slots only grow, so these differences are non-negative; sums of u64 slots fit u128.
        let (dp, dn) = (
            u128::from(after.p - before.p),
            u128::from(after.n - before.n),
        );
        self.totals.p += dp;
        self.totals.n += dn;
        share.totals.p += dp;
        share.totals.n += dn;
        if before == SlotTotals::default() {
            self.replicas += 1;
        }
        self.updated_at = self.updated_at.max(at);
        true
    }
}

/// All merged counters and replicas.
#[derive(Debug, Default)]
pub struct Merged {
    counters: BTreeMap<String, Counter>,
    gauges: BTreeMap<String, Counter>,
    replicas: HashMap<ReplicaId, Replica>,
}

impl Merged {
    /// Rebuilds the state from what the store holds.
    pub fn from_loaded(loaded: Loaded) -> Merged {
        let mut merged = Merged::default();
        for (id, region, first_sync, last_sync) in loaded.replicas {
            merged.replicas.insert(
                id,
                Replica {
                    region: region.into(),
                    first_sync,
                    last_sync,
                },
            );
        }
        for slot in loaded.slots {
            merged.apply_slot(&slot);
        }
        for snap in loaded.latest_snapshots {
            if let Some(c) = merged.namespace_mut(snap.kind).get_mut(&snap.counter) {
                c.snapshotted = Some(snap.totals);
            }
        }
        merged
    }

    /// The counter `id` of `kind`, if any replica ever counted in it.
    pub fn get(&self, kind: CounterKind, id: &str) -> Option<&Counter> {
        self.namespace(kind).get(id)
    }

    /// Counters of `kind` whose id starts with `prefix`, after `cursor` (exclusive), in id
    /// order, at most `limit`.
    pub fn list<'a>(
        &'a self,
        kind: CounterKind,
        prefix: &'a str,
        cursor: Option<&'a str>,
        limit: usize,
    ) -> impl Iterator<Item = (&'a str, &'a Counter)> + 'a {
        let start = match cursor {
            Some(c) if c >= prefix => Bound::Excluded(c),
            _ => Bound::Included(prefix),
        };
        self.namespace(kind)
            .range::<str, _>((start, Bound::Unbounded))
            .take_while(move |(id, _)| id.starts_with(prefix))
            .take(limit)
            .map(|(id, c)| (id.as_str(), c))
    }

    /// Number of counters of `kind`.
    pub fn len(&self, kind: CounterKind) -> usize {
        self.namespace(kind).len()
    }

    /// Number of replicas known.
    pub fn replica_count(&self) -> usize {
        self.replicas.len()
    }

    /// The region a sync from `replica` counts towards: the region of its first sync.
    pub fn region_of<'a>(&'a self, replica: ReplicaId, claimed: &'a str) -> &'a str {
        self.replicas.get(&replica).map_or(claimed, |r| &r.region)
    }

    /// `replica`'s slot of a counter as held now (zero if none).
    pub fn slot(&self, kind: CounterKind, id: &str, replica: ReplicaId) -> SlotTotals {
        self.get(kind, id)
            .map_or_else(SlotTotals::default, |c| c.slot(replica))
    }

    /// Records a sync from `replica` at `at`; its region is set by its first sync.
    pub fn touch_replica(&mut self, replica: ReplicaId, region: &str, at: i64) {
        self.replicas
            .entry(replica)
            .and_modify(|r| r.last_sync = r.last_sync.max(at))
            .or_insert_with(|| Replica {
                region: region.into(),
                first_sync: at,
                last_sync: at,
            });
    }

    /// Merges one committed slot. Returns whether it grew. The replica must be known
    /// ([`touch_replica`](Merged::touch_replica) first); an unknown one counts as region "".
    pub fn apply_slot(&mut self, slot: &SlotRow) -> bool {
        let region: Arc<str> = self
            .replicas
            .get(&slot.replica)
            .map_or_else(|| Arc::from(""), |r| Arc::clone(&r.region));
        let ns = self.namespace_mut(slot.kind);
        match ns.get_mut(slot.counter.as_str()) {
            Some(c) => c.merge_slot(slot.replica, &region, slot.totals, slot.at),
            None if slot.totals == SlotTotals::default() => false,
            None => {
                let mut c = Counter::default();
                let grew = c.merge_slot(slot.replica, &region, slot.totals, slot.at);
                ns.insert(slot.counter.clone(), c);
                grew
            }
        }
    }

    /// The answer for one counter of a sync from `replica`: global totals and its slot.
    pub fn merged_counter(&self, kind: CounterKind, id: &str, replica: ReplicaId) -> MergedCounter {
        let (global, recorded) = self
            .get(kind, id)
            .map_or_else(Default::default, |c| (c.totals, c.slot(replica)));
        MergedCounter {
            id: id.to_owned(),
            kind,
            global,
            recorded,
        }
    }

    /// The counters whose totals changed since their last snapshot, as snapshot rows at `at`.
    pub fn pending_snapshots(&self, at: i64) -> Vec<SnapshotRow> {
        [CounterKind::G, CounterKind::Pn]
            .into_iter()
            .flat_map(|kind| {
                self.namespace(kind)
                    .iter()
                    .filter(|(_, c)| c.snapshotted != Some(c.totals))
                    .map(move |(id, c)| SnapshotRow {
                        kind,
                        counter: id.clone(),
                        at,
                        totals: c.totals,
                    })
            })
            .collect()
    }

    /// Marks snapshots as written.
    pub fn snapshots_written(&mut self, rows: &[SnapshotRow]) {
        for row in rows {
            if let Some(c) = self.namespace_mut(row.kind).get_mut(&row.counter) {
                c.snapshotted = Some(row.totals);
            }
        }
    }

    fn namespace(&self, kind: CounterKind) -> &BTreeMap<String, Counter> {
        match kind {
            CounterKind::G => &self.counters,
            CounterKind::Pn => &self.gauges,
        }
    }

    fn namespace_mut(&mut self, kind: CounterKind) -> &mut BTreeMap<String, Counter> {
        match kind {
            CounterKind::G => &mut self.counters,
            CounterKind::Pn => &mut self.gauges,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(id: &str, replica: u128, p: u64, n: u64, at: i64) -> SlotRow {
        SlotRow {
            kind: CounterKind::Pn,
            counter: id.into(),
            replica: ReplicaId::from_u128(replica),
            totals: SlotTotals { p, n },
            at,
        }
    }

    #[test]
    fn totals_and_region_shares_follow_the_max_of_each_slot() {
        let mut m = Merged::default();
        m.touch_replica(ReplicaId::from_u128(1), "eu", 1);
        m.touch_replica(ReplicaId::from_u128(2), "us", 1);
        assert!(m.apply_slot(&slot("x", 1, 5, 1, 10)));
        assert!(m.apply_slot(&slot("x", 2, 7, 0, 11)));
        assert!(
            !m.apply_slot(&slot("x", 1, 3, 1, 12)),
            "stale totals change nothing"
        );
        assert!(m.apply_slot(&slot("x", 1, 6, 1, 13)));
        let c = m.get(CounterKind::Pn, "x").unwrap();
        assert_eq!(c.totals(), GlobalTotals { p: 13, n: 1 });
        assert_eq!(c.regions()["eu"].totals, GlobalTotals { p: 6, n: 1 });
        assert_eq!(c.regions()["eu"].last_sync, 13);
        assert_eq!(c.regions()["us"].totals, GlobalTotals { p: 7, n: 0 });
        assert_eq!((c.replicas(), c.updated_at()), (2, 13));
    }

    #[test]
    fn a_replica_keeps_the_region_of_its_first_sync() {
        let mut m = Merged::default();
        m.touch_replica(ReplicaId::from_u128(1), "eu", 1);
        m.touch_replica(ReplicaId::from_u128(1), "us", 2);
        assert_eq!(m.region_of(ReplicaId::from_u128(1), "us"), "eu");
        assert_eq!(m.region_of(ReplicaId::from_u128(9), "us"), "us");
    }

    #[test]
    fn zero_totals_create_no_counter() {
        let mut m = Merged::default();
        assert!(!m.apply_slot(&slot("x", 1, 0, 0, 1)));
        assert!(m.get(CounterKind::Pn, "x").is_none());
    }

    #[test]
    fn list_pages_by_prefix_and_cursor() {
        let mut m = Merged::default();
        for id in ["a", "b1", "b2", "b3", "c"] {
            m.apply_slot(&slot(id, 1, 1, 0, 1));
        }
        let page = |prefix, cursor, limit| {
            m.list(CounterKind::Pn, prefix, cursor, limit)
                .map(|(id, _)| id)
                .collect::<Vec<_>>()
        };
        assert_eq!(page("b", None, 2), ["b1", "b2"]);
        assert_eq!(page("b", Some("b2"), 2), ["b3"]);
        assert_eq!(page("", Some("b3"), 10), ["c"]);
        assert_eq!(page("b", Some("a"), 10), ["b1", "b2", "b3"]);
        assert!(page("z", None, 10).is_empty());
    }

    #[test]
    fn snapshots_are_pending_only_for_changed_counters() {
        let mut m = Merged::default();
        m.apply_slot(&slot("x", 1, 1, 0, 1));
        m.apply_slot(&slot("y", 1, 1, 0, 1));
        let rows = m.pending_snapshots(5);
        assert_eq!(rows.len(), 2);
        m.snapshots_written(&rows);
        assert!(m.pending_snapshots(6).is_empty());
        m.apply_slot(&slot("y", 1, 2, 0, 7));
        let rows = m.pending_snapshots(8);
        assert_eq!(
            rows.iter().map(|r| r.counter.as_str()).collect::<Vec<_>>(),
            ["y"]
        );
    }
}
