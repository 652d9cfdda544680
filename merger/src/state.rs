//! [`Merged`]: the merged counters held in memory, the source of every read.
//!
//! Only the commit task changes it, and only with what the store has already committed, so
//! a read never shows a value that a crash could take back. Readers take a short read lock
//! (a std `RwLock`: nothing is awaited while it is held).

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::Arc;

use tally_crdt::{
    CounterKey, CounterKind, GlobalTotals, MergedCounter, PNCounter, ReadRequest, ReadResponse,
    ReplicaId, SlotTotals, Timestamp,
};

use crate::store::{Loaded, SlotRow, SnapshotRow};

/// What the merger knows of one replica incarnation.
#[derive(Debug, Clone)]
pub struct Replica {
    /// Region of its first sync; its slots count towards this region.
    pub region: Arc<str>,
    /// First sync.
    pub first_sync: Timestamp,
    /// Latest sync.
    pub last_sync: Timestamp,
}

/// One region's share of a counter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegionShare {
    /// Totals over the slots of this region's replicas.
    pub totals: GlobalTotals,
    /// Latest sync of this counter from this region.
    pub last_sync: Timestamp,
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
    /// Last time a slot grew.
    updated_at: Timestamp,
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
    /// Last time a slot grew.
    pub fn updated_at(&self) -> Timestamp {
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
        at: Timestamp,
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
///
/// One map per kind rather than one map over every [`CounterKey`]: listing a kind by id
/// prefix is then one range scan that starts at the prefix, whatever the other kind holds.
#[derive(Debug, Default)]
pub struct Merged {
    counters: BTreeMap<CounterKey, Counter>,
    gauges: BTreeMap<CounterKey, Counter>,
    replicas: HashMap<ReplicaId, Replica>,
}

impl Merged {
    /// Rebuilds the state from what the store holds.
    pub fn from_loaded(loaded: Loaded) -> Merged {
        let mut merged = Merged::default();
        for r in loaded.replicas {
            merged.replicas.insert(
                r.replica,
                Replica {
                    region: r.region.into(),
                    first_sync: r.first_sync,
                    last_sync: r.last_sync,
                },
            );
        }
        for slot in loaded.slots {
            merged.apply_slot(&slot);
        }
        for snap in loaded.latest_snapshots {
            if let Some(c) = merged.namespace_mut(snap.key.kind()).get_mut(&snap.key) {
                c.snapshotted = Some(snap.totals);
            }
        }
        merged
    }

    /// The counter `key`, if any replica ever counted in it.
    pub fn get(&self, key: &CounterKey) -> Option<&Counter> {
        self.namespace(key.kind()).get(key)
    }

    /// Counters of `kind` whose id starts with `prefix`, after `cursor` (exclusive), in id
    /// order, at most `limit`.
    pub fn list<'a>(
        &'a self,
        kind: CounterKind,
        prefix: &'a str,
        cursor: Option<&CounterKey>,
        limit: usize,
    ) -> impl Iterator<Item = (&'a CounterKey, &'a Counter)> + 'a {
        // A non-empty prefix of a valid id is itself a valid id, so a prefix that is no valid
        // id matches nothing (`None`: an empty range).
        let from_prefix = if prefix.is_empty() {
            Some(Bound::Unbounded)
        } else {
            CounterKey::new(kind, prefix).ok().map(Bound::Included)
        };
        let start = match (cursor, from_prefix) {
            (_, None) => None,
            (Some(c), Some(_)) if c.kind() == kind && c.id() >= prefix => {
                Some(Bound::Excluded(c.clone()))
            }
            (_, Some(bound)) => Some(bound),
        };
        start
            .into_iter()
            .flat_map(move |start| self.namespace(kind).range((start, Bound::Unbounded)))
            .take_while(move |(key, _)| key.id().starts_with(prefix))
            .take(limit)
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
    pub fn slot(&self, key: &CounterKey, replica: ReplicaId) -> SlotTotals {
        self.get(key)
            .map_or_else(SlotTotals::default, |c| c.slot(replica))
    }

    /// Records a sync from `replica` at `at`; its region is set by its first sync.
    pub fn touch_replica(&mut self, replica: ReplicaId, region: &str, at: Timestamp) {
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
        let ns = self.namespace_mut(slot.key.kind());
        match ns.get_mut(&slot.key) {
            Some(c) => c.merge_slot(slot.replica, &region, slot.totals, slot.at),
            None if slot.totals == SlotTotals::default() => false,
            None => {
                let mut c = Counter::default();
                let grew = c.merge_slot(slot.replica, &region, slot.totals, slot.at);
                ns.insert(slot.key.clone(), c);
                grew
            }
        }
    }

    /// One counter as the protocol answers it: global totals, `replica`'s recorded slot (zero
    /// without one) and when it last grew. A counter nobody has hit is known-absent: zero
    /// totals and no `updated_at`.
    pub fn merged_counter(&self, key: &CounterKey, replica: Option<ReplicaId>) -> MergedCounter {
        let counter = self.get(key);
        MergedCounter {
            key: key.clone(),
            global: counter.map(Counter::totals).unwrap_or_default(),
            recorded: counter
                .zip(replica)
                .map(|(c, r)| c.slot(r))
                .unwrap_or_default(),
            updated_at: counter.map(Counter::updated_at),
        }
    }

    /// The answer to a batch read, in the request's order. Reads only: it registers nobody
    /// and creates no counter.
    pub fn answer_read(&self, request: &ReadRequest) -> ReadResponse {
        ReadResponse {
            version: request.version,
            counters: request
                .counters
                .iter()
                .map(|key| self.merged_counter(key, request.replica))
                .collect(),
        }
    }

    /// The counters whose totals changed since their last snapshot, as snapshot rows at `at`.
    pub fn pending_snapshots(&self, at: Timestamp) -> Vec<SnapshotRow> {
        self.counters
            .iter()
            .chain(&self.gauges)
            .filter(|(_, c)| c.snapshotted != Some(c.totals))
            .map(|(key, c)| SnapshotRow {
                key: key.clone(),
                at,
                totals: c.totals,
            })
            .collect()
    }

    /// Marks snapshots as written.
    pub fn snapshots_written(&mut self, rows: &[SnapshotRow]) {
        for row in rows {
            if let Some(c) = self.namespace_mut(row.key.kind()).get_mut(&row.key) {
                c.snapshotted = Some(row.totals);
            }
        }
    }

    fn namespace(&self, kind: CounterKind) -> &BTreeMap<CounterKey, Counter> {
        match kind {
            CounterKind::G => &self.counters,
            CounterKind::Pn => &self.gauges,
        }
    }

    fn namespace_mut(&mut self, kind: CounterKind) -> &mut BTreeMap<CounterKey, Counter> {
        match kind {
            CounterKind::G => &mut self.counters,
            CounterKind::Pn => &mut self.gauges,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str) -> CounterKey {
        CounterKey::new(CounterKind::Pn, id).unwrap()
    }

    fn ms(at: i64) -> Timestamp {
        Timestamp::from_unix_ms(at)
    }

    fn slot(id: &str, replica: u128, p: u64, n: u64, at: i64) -> SlotRow {
        SlotRow {
            key: key(id),
            replica: ReplicaId::from_u128(replica),
            totals: SlotTotals { p, n },
            at: ms(at),
        }
    }

    #[test]
    fn totals_and_region_shares_follow_the_max_of_each_slot() {
        let mut m = Merged::default();
        m.touch_replica(ReplicaId::from_u128(1), "eu", ms(1));
        m.touch_replica(ReplicaId::from_u128(2), "us", ms(1));
        assert!(m.apply_slot(&slot("x", 1, 5, 1, 10)));
        assert!(m.apply_slot(&slot("x", 2, 7, 0, 11)));
        assert!(
            !m.apply_slot(&slot("x", 1, 3, 1, 12)),
            "stale totals change nothing"
        );
        assert!(m.apply_slot(&slot("x", 1, 6, 1, 13)));
        let c = m.get(&key("x")).unwrap();
        assert_eq!(c.totals(), GlobalTotals { p: 13, n: 1 });
        assert_eq!(c.regions()["eu"].totals, GlobalTotals { p: 6, n: 1 });
        assert_eq!(c.regions()["eu"].last_sync, ms(13));
        assert_eq!(c.regions()["us"].totals, GlobalTotals { p: 7, n: 0 });
        assert_eq!((c.replicas(), c.updated_at()), (2, ms(13)));
    }

    #[test]
    fn a_replica_keeps_the_region_of_its_first_sync() {
        let mut m = Merged::default();
        m.touch_replica(ReplicaId::from_u128(1), "eu", ms(1));
        m.touch_replica(ReplicaId::from_u128(1), "us", ms(2));
        assert_eq!(m.region_of(ReplicaId::from_u128(1), "us"), "eu");
        assert_eq!(m.region_of(ReplicaId::from_u128(9), "us"), "us");
    }

    #[test]
    fn zero_totals_create_no_counter() {
        let mut m = Merged::default();
        assert!(!m.apply_slot(&slot("x", 1, 0, 0, 1)));
        assert!(m.get(&key("x")).is_none());
    }

    #[test]
    fn list_pages_by_prefix_and_cursor() {
        let mut m = Merged::default();
        for id in ["a", "b1", "b2", "b3", "c"] {
            m.apply_slot(&slot(id, 1, 1, 0, 1));
        }
        let page = |prefix, cursor: Option<&str>, limit| {
            let cursor = cursor.map(key);
            m.list(CounterKind::Pn, prefix, cursor.as_ref(), limit)
                .map(|(key, _)| key.id())
                .collect::<Vec<_>>()
        };
        assert_eq!(page("b", None, 2), ["b1", "b2"]);
        assert_eq!(page("b", Some("b2"), 2), ["b3"]);
        assert_eq!(page("", Some("b3"), 10), ["c"]);
        assert_eq!(page("b", Some("a"), 10), ["b1", "b2", "b3"]);
        assert!(page("z", None, 10).is_empty());
        assert!(
            page("-", None, 10).is_empty(),
            "no id starts with an invalid prefix"
        );
        assert!(
            m.list(CounterKind::G, "", None, 10).next().is_none(),
            "kinds are listed apart"
        );
    }

    #[test]
    fn a_read_answers_unknown_counters_as_absent_and_registers_nobody() {
        let mut m = Merged::default();
        m.touch_replica(ReplicaId::from_u128(1), "eu", ms(1));
        m.apply_slot(&slot("x", 1, 5, 2, 10));
        let read = ReadRequest {
            version: 2,
            replica: Some(ReplicaId::from_u128(1)),
            counters: vec![key("unknown"), key("x")],
        };
        let answer = m.answer_read(&read);
        assert_eq!(answer.counters[0].global, GlobalTotals::default());
        assert_eq!(answer.counters[0].updated_at, None);
        assert_eq!(answer.counters[1].global, GlobalTotals { p: 5, n: 2 });
        assert_eq!(answer.counters[1].recorded, SlotTotals { p: 5, n: 2 });
        assert_eq!(answer.counters[1].updated_at, Some(ms(10)));
        let stranger = ReadRequest {
            replica: Some(ReplicaId::from_u128(9)),
            ..read
        };
        assert_eq!(
            m.answer_read(&stranger).counters[1].recorded,
            SlotTotals::default()
        );
        assert_eq!(m.replica_count(), 1);
        assert!(m.get(&key("unknown")).is_none());
    }

    #[test]
    fn snapshots_are_pending_only_for_changed_counters() {
        let mut m = Merged::default();
        m.apply_slot(&slot("x", 1, 1, 0, 1));
        m.apply_slot(&slot("y", 1, 1, 0, 1));
        let rows = m.pending_snapshots(ms(5));
        assert_eq!(rows.len(), 2);
        m.snapshots_written(&rows);
        assert!(m.pending_snapshots(ms(6)).is_empty());
        m.apply_slot(&slot("y", 1, 2, 0, 7));
        let rows = m.pending_snapshots(ms(8));
        assert_eq!(rows.iter().map(|r| r.key.id()).collect::<Vec<_>>(), ["y"]);
    }
}
