//! [`GCounter`]: the grow-only counter, one `u64` slot per replica.

use alloc::vec::Vec;
use core::cmp::Ordering;
use core::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

use crate::{Error, ReplicaId};

/// A grow-only counter (G-Counter): one `u64` slot per replica, merged by max per slot.
///
/// Each replica only ever increments its own slot; the value is the sum of all slots.
/// [`merge`](GCounter::merge) is commutative, associative and idempotent, so replicas can
/// exchange their full states (or [deltas](GCounter::delta_since)) in any order, any number
/// of times, and converge.
///
/// Slots are kept in a vector sorted by replica id, with no zero slots (an absent slot and a
/// zero slot mean the same, so equal counters compare equal). Merging is a linear walk over
/// two sorted vectors; reads sum in `u128`, which cannot overflow.
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
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct GCounter {
    /// Sorted by replica id, ids unique, values non-zero.
    slots: Vec<(ReplicaId, u64)>,
}

impl GCounter {
    /// An empty counter (value 0).
    pub const fn new() -> Self {
        GCounter { slots: Vec::new() }
    }

    /// The value: the sum of all slots. A `u128`, so no number of `u64` slots can overflow it.
    pub fn value(&self) -> u128 {
        self.slots.iter().map(|&(_, v)| u128::from(v)).sum()
    }

    /// The total of `replica`'s own slot (0 if it has none).
    pub fn get(&self, replica: ReplicaId) -> u64 {
        match self.find(replica) {
            Ok(i) => self.slots[i].1,
            Err(_) => 0,
        }
    }

    /// Adds `by` to `replica`'s slot and returns the new slot total.
    ///
    /// # Errors
    ///
    /// [`Error::SlotOverflow`] if the slot would pass `u64::MAX`; the counter is unchanged.
    pub fn increment(&mut self, replica: ReplicaId, by: u64) -> Result<u64, Error> {
        match self.find(replica) {
            Ok(i) => {
                let slot = &mut self.slots[i].1;
                *slot = slot.checked_add(by).ok_or(Error::SlotOverflow {
                    replica,
                    current: *slot,
                    by,
                })?;
                Ok(*slot)
            }
            Err(_) if by == 0 => Ok(0),
            Err(i) => {
                self.slots.insert(i, (replica, by));
                Ok(by)
            }
        }
    }

    /// Merges one slot total from `replica` (max with the slot held). Returns whether the
    /// slot grew. This is how a sync, which carries one replica's totals, is applied.
    pub fn merge_slot(&mut self, replica: ReplicaId, total: u64) -> bool {
        match self.find(replica) {
            Ok(i) if total > self.slots[i].1 => {
                self.slots[i].1 = total;
                true
            }
            Ok(_) => false,
            Err(_) if total == 0 => false,
            Err(i) => {
                self.slots.insert(i, (replica, total));
                true
            }
        }
    }

    /// Merges `other` into `self`: every slot becomes the max of the two.
    ///
    /// Commutative, associative and idempotent. Linear in the number of slots: one pass
    /// raises the shared slots in place; slots only `other` has are then merged in from the
    /// back, without a second allocation beyond growing `self`.
    pub fn merge(&mut self, other: &GCounter) {
        let (a, b) = (&mut self.slots, &other.slots);
        let (mut i, mut j, mut missing) = (0, 0, 0);
        while i < a.len() && j < b.len() {
            match a[i].0.cmp(&b[j].0) {
                Ordering::Less => i += 1,
                Ordering::Greater => {
                    missing += 1;
                    j += 1;
                }
                Ordering::Equal => {
                    if b[j].1 > a[i].1 {
                        a[i].1 = b[j].1;
                    }
                    i += 1;
                    j += 1;
                }
            }
        }
        missing += b.len() - j;
        if missing == 0 {
            return;
        }
        // Merge the slots only `other` has, from the back, so nothing is moved twice.
        let old_len = a.len();
        a.resize(old_len + missing, (ReplicaId::NIL, 0));
        let (mut i, mut j, mut w) = (old_len, b.len(), a.len());
        while j > 0 {
            w -= 1;
            if i > 0 && a[i - 1].0 >= b[j - 1].0 {
                if a[i - 1].0 == b[j - 1].0 {
                    j -= 1; // shared slot: already maxed in place above
                }
                a[w] = a[i - 1];
                i -= 1;
            } else {
                a[w] = b[j - 1];
                j -= 1;
            }
        }
        debug_assert_eq!(w, i, "the merged slots meet the untouched prefix");
    }

    /// The slots of `self` that are ahead of `older`: merging the result into `older` gives
    /// the same counter as merging all of `self`, so a replica can send just what changed.
    pub fn delta_since(&self, older: &GCounter) -> GCounter {
        let mut slots = Vec::new();
        let mut old = older.slots.iter().peekable();
        for &(replica, total) in &self.slots {
            while old.next_if(|(r, _)| *r < replica).is_some() {}
            let before = old.next_if(|(r, _)| *r == replica).map_or(0, |&(_, v)| v);
            if total > before {
                slots.push((replica, total));
            }
        }
        GCounter { slots }
    }

    /// The slots, in replica id order, zero slots omitted.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (ReplicaId, u64)> + '_ {
        self.slots.iter().copied()
    }

    /// Number of non-zero slots (replicas that counted something).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether no replica has counted anything.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    fn find(&self, replica: ReplicaId) -> Result<usize, usize> {
        self.slots.binary_search_by(|(r, _)| r.cmp(&replica))
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
        GCounter { slots }
    }
}

impl fmt::Debug for GCounter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.slots.iter().map(|(r, v)| (r, v)))
            .finish()
    }
}

impl Serialize for GCounter {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.slots.len()))?;
        for (replica, total) in &self.slots {
            map.serialize_entry(replica, total)?;
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
                Ok(GCounter { slots })
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
