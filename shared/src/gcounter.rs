//! [`GCounter`]: the grow-only counter, a view of [`CounterState`] with increments only.

use alloc::vec::Vec;
use core::fmt;
use core::hash::{Hash, Hasher};

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

use crate::{CounterState, Error, ReplicaId, SlotTotals};

/// A grow-only counter (G-Counter): one `u64` slot per replica, merged by max per slot.
///
/// Each replica only ever increments its own slot; the value is the sum of all slots.
/// [`merge`](GCounter::merge) is commutative, associative and idempotent, so replicas can
/// exchange their full states (or [deltas](GCounter::delta_since)) in any order, any number
/// of times, and converge.
///
/// It is a view of [`CounterState`], the lattice every part of tally runs: its slots are
/// that state's slots in one region (decrements always zero), a merge is
/// [`CounterState::join`], the value is [`CounterState::value`]'s increments (kept up to
/// date by each change, so reading it is free). The slots are one vector sorted by replica
/// id with no zero slots (an absent slot and a zero slot mean the same, so equal counters
/// compare equal); merging is a linear walk over two sorted vectors; sums are `u128`, which
/// cannot overflow.
///
/// Serialized as a JSON object from replica id to slot total:
/// `{"00000000000000000000000000000001": 3}`.
///
/// # Examples
///
/// ```
/// use tally_crdt::{GCounter, ReplicaId};
///
/// let (a, b) = (ReplicaId::from_u128(1), ReplicaId::from_u128(2));
/// let mut here = GCounter::new();
/// here.increment(a, 3)?;
/// let mut there = GCounter::new();
/// there.increment(b, 4)?;
///
/// here.merge(&there);
/// here.merge(&there); // idempotent: a duplicate changes nothing
/// assert_eq!(here.value(), 7);
/// assert_eq!(here.get(a), 3);
///
/// // Overflow of a slot is an error, never a wrap.
/// assert!(here.increment(a, u64::MAX).is_err());
/// assert_eq!(here.get(a), 3);
/// # Ok::<(), tally_crdt::Error>(())
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct GCounter {
    /// Slots in one region, decrements zero, none zero.
    state: CounterState,
}

impl GCounter {
    /// An empty counter (value 0).
    pub const fn new() -> Self {
        GCounter {
            state: CounterState::new(),
        }
    }

    /// The value: the sum of all slots. A `u128`, so no number of `u64` slots can overflow it.
    pub fn value(&self) -> u128 {
        self.state.value().p
    }

    /// The total of `replica`'s own slot (0 if it has none).
    pub fn get(&self, replica: ReplicaId) -> u64 {
        self.state.slot(replica).p
    }

    /// Adds `by` to `replica`'s slot and returns the new slot total.
    ///
    /// # Errors
    ///
    /// [`Error::SlotOverflow`] if the slot would pass `u64::MAX`; the counter is unchanged.
    pub fn increment(&mut self, replica: ReplicaId, by: u64) -> Result<u64, Error> {
        let current = self.get(replica);
        let total = current.checked_add(by).ok_or(Error::SlotOverflow {
            replica,
            current,
            by,
        })?;
        self.merge_slot(replica, total);
        Ok(total)
    }

    /// Merges one slot total from `replica` (max with the slot held). Returns whether the
    /// slot grew. This is how a sync, which carries one replica's totals, is applied.
    pub fn merge_slot(&mut self, replica: ReplicaId, total: u64) -> bool {
        self.state
            .merge_view_slot(replica, SlotTotals { p: total, n: 0 })
    }

    /// Merges `other` into `self`: every slot becomes the max of the two
    /// ([`CounterState::join`]).
    ///
    /// Commutative, associative and idempotent. Linear in the number of slots: one pass
    /// raises the shared slots in place; slots only `other` has are then inserted.
    pub fn merge(&mut self, other: &GCounter) {
        self.state.join(&other.state);
    }

    /// The slots of `self` that are ahead of `older`: merging the result into `older` gives
    /// the same counter as merging all of `self`, so a replica can send just what changed.
    pub fn delta_since(&self, older: &GCounter) -> GCounter {
        GCounter {
            state: self.state.view_delta(&older.state),
        }
    }

    /// The slots, in replica id order, zero slots omitted.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (ReplicaId, u64)> + '_ {
        self.slots()
            .iter()
            .map(|&(replica, totals)| (replica, totals.p))
    }

    /// Number of non-zero slots (replicas that counted something).
    pub fn len(&self) -> usize {
        self.slots().len()
    }

    /// Whether no replica has counted anything.
    pub fn is_empty(&self) -> bool {
        self.slots().is_empty()
    }

    /// The state it is a view of.
    pub fn state(&self) -> &CounterState {
        &self.state
    }

    fn slots(&self) -> &[(ReplicaId, SlotTotals)] {
        self.state.slots().only_region()
    }

    /// A counter of these slots (sorted by replica, each once, none zero).
    pub(crate) fn of_sorted(slots: Vec<(ReplicaId, u64)>) -> GCounter {
        let slots = slots
            .into_iter()
            .map(|(replica, p)| (replica, SlotTotals { p, n: 0 }))
            .collect();
        GCounter {
            state: CounterState::from_view_slots(slots),
        }
    }
}

impl Hash for GCounter {
    fn hash<H: Hasher>(&self, state: &mut H) {
        for (replica, total) in self.iter() {
            replica.hash(state);
            total.hash(state);
        }
    }
}

impl FromIterator<(ReplicaId, u64)> for GCounter {
    /// Builds a counter from slot totals; a replica given twice keeps the larger total (the
    /// merge of the two).
    fn from_iter<I: IntoIterator<Item = (ReplicaId, u64)>>(iter: I) -> Self {
        let mut slots: Vec<_> = iter.into_iter().filter(|&(_, v)| v > 0).collect();
        // Sort by id, larger totals first, then keep the first of each id: max per slot.
        slots.sort_unstable_by(|x, y| x.0.cmp(&y.0).then(y.1.cmp(&x.1)));
        slots.dedup_by_key(|s| s.0);
        GCounter::of_sorted(slots)
    }
}

impl fmt::Debug for GCounter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl Serialize for GCounter {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.len()))?;
        for (replica, total) in self.iter() {
            map.serialize_entry(&replica, &total)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for GCounter {
    /// Accepts slots in any order; zero slots are dropped; a replica given twice is an error
    /// (a well-formed state never has one, and guessing which to keep would hide a bug).
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SlotsVisitor;
        impl<'de> Visitor<'de> for SlotsVisitor {
            type Value = GCounter;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map from replica id to slot total")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<GCounter, M::Error> {
                let mut slots: Vec<(ReplicaId, u64)> = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    slots.push(entry);
                }
                slots.sort_unstable_by_key(|s| s.0);
                if let Some(w) = slots.windows(2).find(|w| w[0].0 == w[1].0) {
                    return Err(de::Error::custom(format_args!(
                        "replica {} appears twice",
                        w[0].0
                    )));
                }
                slots.retain(|&(_, v)| v > 0);
                Ok(GCounter::of_sorted(slots))
            }
        }
        deserializer.deserialize_map(SlotsVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn r(n: u128) -> ReplicaId {
        ReplicaId::from_u128(n)
    }

    #[test]
    fn increment_keeps_slots_sorted_and_returns_the_new_total() {
        let mut c = GCounter::new();
        assert_eq!(c.increment(r(5), 2), Ok(2));
        assert_eq!(c.increment(r(1), 1), Ok(1));
        assert_eq!(c.increment(r(5), 3), Ok(5));
        assert_eq!(c.iter().collect::<Vec<_>>(), vec![(r(1), 1), (r(5), 5)]);
        assert_eq!(c.value(), 6);
    }

    #[test]
    fn increment_by_zero_adds_no_slot() {
        let mut c = GCounter::new();
        assert_eq!(c.increment(r(1), 0), Ok(0));
        assert!(c.is_empty());
        assert_eq!(c, GCounter::new());
    }

    #[test]
    fn overflow_at_u64_max_is_an_error_and_changes_nothing() {
        let mut c = GCounter::new();
        c.increment(r(1), u64::MAX).unwrap();
        let before = c.clone();
        assert_eq!(
            c.increment(r(1), 1),
            Err(Error::SlotOverflow {
                replica: r(1),
                current: u64::MAX,
                by: 1
            })
        );
        assert_eq!(c, before);
        assert_eq!(c.increment(r(1), 0), Ok(u64::MAX));
    }

    #[test]
    fn many_slots_near_u64_max_sum_exactly() {
        let c: GCounter = (1..=1000).map(|i| (r(i), u64::MAX - 1)).collect();
        assert_eq!(c.value(), 1000 * (u128::from(u64::MAX) - 1));
    }

    #[test]
    fn merge_takes_the_max_of_each_slot_and_adds_missing_ones() {
        let mut a: GCounter = [(r(1), 5), (r(3), 1), (r(7), 9)].into_iter().collect();
        let b: GCounter = [(r(0), 4), (r(3), 6), (r(5), 2), (r(7), 1), (r(9), 8)]
            .into_iter()
            .collect();
        a.merge(&b);
        assert_eq!(
            a.iter().collect::<Vec<_>>(),
            vec![
                (r(0), 4),
                (r(1), 5),
                (r(3), 6),
                (r(5), 2),
                (r(7), 9),
                (r(9), 8)
            ]
        );
    }

    #[test]
    fn merge_slot_only_grows() {
        let mut c = GCounter::new();
        assert!(c.merge_slot(r(2), 10));
        assert!(!c.merge_slot(r(2), 10));
        assert!(!c.merge_slot(r(2), 3));
        assert!(!c.merge_slot(r(4), 0));
        assert_eq!(c.get(r(2)), 10);
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn delta_holds_only_slots_that_moved() {
        let old: GCounter = [(r(1), 5), (r(2), 5)].into_iter().collect();
        let new: GCounter = [(r(1), 5), (r(2), 6), (r(3), 1)].into_iter().collect();
        let delta = new.delta_since(&old);
        assert_eq!(delta.iter().collect::<Vec<_>>(), vec![(r(2), 6), (r(3), 1)]);
        assert!(old.delta_since(&new).is_empty());
    }

    #[test]
    fn from_iter_keeps_the_larger_of_duplicate_slots() {
        let c: GCounter = [(r(1), 2), (r(1), 9), (r(1), 4), (r(2), 0)]
            .into_iter()
            .collect();
        assert_eq!(c.iter().collect::<Vec<_>>(), vec![(r(1), 9)]);
    }

    #[test]
    fn json_is_a_map_from_replica_to_total_and_round_trips_u64_max() {
        let c: GCounter = [(r(2), u64::MAX), (r(1), 1)].into_iter().collect();
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(
            json,
            r#"{"00000000000000000000000000000001":1,"00000000000000000000000000000002":18446744073709551615}"#
        );
        assert_eq!(serde_json::from_str::<GCounter>(&json).unwrap(), c);
    }

    #[test]
    fn json_with_a_replica_twice_is_rejected() {
        let json = r#"{"00000000000000000000000000000001":1,"00000000000000000000000000000001":2}"#;
        let err = serde_json::from_str::<GCounter>(json).unwrap_err();
        assert!(err.to_string().contains("appears twice"), "{err}");
    }

    #[test]
    fn json_with_negative_or_oversized_totals_is_rejected() {
        for bad in [
            r#"{"00000000000000000000000000000001":-1}"#,
            r#"{"00000000000000000000000000000001":18446744073709551616}"#,
            r#"{"00000000000000000000000000000001":1.5}"#,
        ] {
            assert!(serde_json::from_str::<GCounter>(bad).is_err(), "{bad}");
        }
    }
}
