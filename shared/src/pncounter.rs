//! [`PNCounter`]: the counter that goes up and down, a view of [`CounterState`].

use alloc::vec::Vec;
use core::fmt;
use core::hash::{Hash, Hasher};

use serde::ser::{SerializeMap, SerializeStruct, Serializer};
use serde::{Deserialize, Deserializer, Serialize};

use crate::{CounterState, Error, GCounter, ReplicaId, SlotTotals};

/// A counter that goes up and down (PN-Counter): per replica, a slot of increments (`p`)
/// and one of decrements (`n`); the value is `p - n`.
///
/// Each replica owns its slot and merging is max per half of each slot, so it has the same
/// laws as a G-Counter. It is a view of [`CounterState`], the lattice every part of tally
/// runs (its slots in one region; a merge is [`CounterState::join`]). The value is an
/// `i128` and **may be negative**: a gauge of "viewers now" is decremented by a replica that
/// never saw the increment, and the sum settles once replicas have merged. Each half's
/// slots are `u64`, overflow is an error.
///
/// Serialized as `{"p": {..}, "n": {..}}`, each half as a [`GCounter`].
///
/// # Examples
///
/// ```
/// use tally_crdt::{PNCounter, ReplicaId};
///
/// let (a, b) = (ReplicaId::from_u128(1), ReplicaId::from_u128(2));
/// let mut here = PNCounter::new();
/// here.increment(a, 5)?;
/// let mut there = PNCounter::new();
/// there.decrement(b, 7)?;
///
/// here.merge(&there);
/// assert_eq!(here.value(), -2);
/// assert_eq!(here.get(b).n, 7);
/// # Ok::<(), tally_crdt::Error>(())
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct PNCounter {
    /// Slots in one region, none zero.
    state: CounterState,
}

impl PNCounter {
    /// An empty counter (value 0).
    pub const fn new() -> Self {
        PNCounter {
            state: CounterState::new(),
        }
    }

    /// The value, `sum(p) - sum(n)`; may be negative.
    pub fn value(&self) -> i128 {
        // Sums of u64 slots pass i128::MAX only with 2^63 slots, which cannot exist in
        // memory.
        self.state
            .value()
            .value()
            .expect("fewer than 2^63 slots fit in memory")
    }

    /// `replica`'s own slot totals (`p` increments, `n` decrements).
    pub fn get(&self, replica: ReplicaId) -> SlotTotals {
        self.state.slot(replica)
    }

    /// Adds `by` to `replica`'s increment total; returns the new total.
    ///
    /// # Errors
    ///
    /// [`Error::SlotOverflow`] if the total would pass `u64::MAX`; the counter is unchanged.
    pub fn increment(&mut self, replica: ReplicaId, by: u64) -> Result<u64, Error> {
        let slot = self.get(replica);
        let p = raised(replica, slot.p, by)?;
        self.merge_slot(replica, SlotTotals { p, ..slot });
        Ok(p)
    }

    /// Adds `by` to `replica`'s decrement total; returns the new total.
    ///
    /// # Errors
    ///
    /// [`Error::SlotOverflow`] if the total would pass `u64::MAX`; the counter is unchanged.
    pub fn decrement(&mut self, replica: ReplicaId, by: u64) -> Result<u64, Error> {
        let slot = self.get(replica);
        let n = raised(replica, slot.n, by)?;
        self.merge_slot(replica, SlotTotals { n, ..slot });
        Ok(n)
    }

    /// Merges one replica's slot totals (max per half). Returns whether either half grew.
    pub fn merge_slot(&mut self, replica: ReplicaId, totals: SlotTotals) -> bool {
        self.state.merge_view_slot(replica, totals)
    }

    /// Merges `other` into `self`, max per half of each slot ([`CounterState::join`]).
    pub fn merge(&mut self, other: &PNCounter) {
        self.state.join(&other.state);
    }

    /// The slots of `self` ahead of `older` in either half: merging the result into `older`
    /// gives the same counter as merging all of `self`; see [`GCounter::delta_since`].
    pub fn delta_since(&self, older: &PNCounter) -> PNCounter {
        PNCounter {
            state: self.state.view_delta(&older.state),
        }
    }

    /// The increment half.
    pub fn increments(&self) -> GCounter {
        self.half(|t| t.p)
    }

    /// The decrement half.
    pub fn decrements(&self) -> GCounter {
        self.half(|t| t.n)
    }

    /// The slots, in replica id order, zero slots omitted.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (ReplicaId, SlotTotals)> + '_ {
        self.slots().iter().copied()
    }

    /// The state it is a view of.
    pub fn state(&self) -> &CounterState {
        &self.state
    }

    fn slots(&self) -> &[(ReplicaId, SlotTotals)] {
        self.state.slots().only_region()
    }

    fn half(&self, of: fn(&SlotTotals) -> u64) -> GCounter {
        GCounter::of_sorted(
            self.slots()
                .iter()
                .map(|(replica, totals)| (*replica, of(totals)))
                .filter(|(_, total)| *total > 0)
                .collect(),
        )
    }
}

/// `current + by`, or the overflow.
fn raised(replica: ReplicaId, current: u64, by: u64) -> Result<u64, Error> {
    current.checked_add(by).ok_or(Error::SlotOverflow {
        replica,
        current,
        by,
    })
}

impl Hash for PNCounter {
    fn hash<H: Hasher>(&self, state: &mut H) {
        for (replica, totals) in self.iter() {
            replica.hash(state);
            totals.p.hash(state);
            totals.n.hash(state);
        }
    }
}

impl fmt::Debug for PNCounter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PNCounter")
            .field("p", &self.increments())
            .field("n", &self.decrements())
            .finish()
    }
}

/// One half of a PN-Counter's slots, serialized as a G-Counter is.
struct Half<'a>(&'a [(ReplicaId, SlotTotals)], fn(&SlotTotals) -> u64);

impl Serialize for Half<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let Half(slots, of) = *self;
        let nonzero = || slots.iter().filter(|(_, t)| of(t) > 0);
        let mut map = serializer.serialize_map(Some(nonzero().count()))?;
        for (replica, totals) in nonzero() {
            map.serialize_entry(replica, &of(totals))?;
        }
        map.end()
    }
}

impl Serialize for PNCounter {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut halves = serializer.serialize_struct("PNCounter", 2)?;
        halves.serialize_field("p", &Half(self.slots(), |t| t.p))?;
        halves.serialize_field("n", &Half(self.slots(), |t| t.n))?;
        halves.end()
    }
}

impl<'de> Deserialize<'de> for PNCounter {
    /// Both halves, each as a [`GCounter`] (a replica twice in one half is an error).
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Halves {
            p: GCounter,
            n: GCounter,
        }
        let Halves { p, n } = Halves::deserialize(deserializer)?;
        // One slot per replica of either half, in replica order.
        let mut slots: Vec<(ReplicaId, SlotTotals)> = Vec::with_capacity(p.len() + n.len());
        let (mut p, mut n) = (p.iter().peekable(), n.iter().peekable());
        loop {
            let replica = match (p.peek(), n.peek()) {
                (Some(&(a, _)), Some(&(b, _))) => a.min(b),
                (Some(&(a, _)), None) => a,
                (None, Some(&(b, _))) => b,
                (None, None) => break,
            };
            let totals = SlotTotals {
                p: p.next_if(|(r, _)| *r == replica).map_or(0, |(_, v)| v),
                n: n.next_if(|(r, _)| *r == replica).map_or(0, |(_, v)| v),
            };
            slots.push((replica, totals));
        }
        Ok(PNCounter {
            state: CounterState::from_view_slots(slots),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(n: u128) -> ReplicaId {
        ReplicaId::from_u128(n)
    }

    #[test]
    fn value_is_increments_minus_decrements_and_may_go_negative() {
        let mut c = PNCounter::new();
        c.increment(r(1), 3).unwrap();
        c.decrement(r(2), 5).unwrap();
        assert_eq!(c.value(), -2);
        assert_eq!(c.get(r(1)), SlotTotals { p: 3, n: 0 });
        assert_eq!(c.get(r(2)), SlotTotals { p: 0, n: 5 });
    }

    #[test]
    fn extreme_halves_subtract_exactly() {
        let mut c = PNCounter::new();
        for i in 1..=4 {
            c.increment(r(i), u64::MAX).unwrap();
        }
        c.decrement(r(9), u64::MAX).unwrap();
        assert_eq!(c.value(), 3 * i128::from(u64::MAX));
        assert!(matches!(
            c.decrement(r(9), 1),
            Err(Error::SlotOverflow { .. })
        ));
    }

    #[test]
    fn merge_slot_raises_each_half_independently() {
        let mut c = PNCounter::new();
        assert!(c.merge_slot(r(1), SlotTotals { p: 4, n: 1 }));
        assert!(c.merge_slot(r(1), SlotTotals { p: 2, n: 3 }));
        assert!(!c.merge_slot(r(1), SlotTotals { p: 4, n: 3 }));
        assert_eq!(c.get(r(1)), SlotTotals { p: 4, n: 3 });
        assert_eq!(c.value(), 1);
    }

    #[test]
    fn json_has_two_halves() {
        let mut c = PNCounter::new();
        c.increment(r(1), 2).unwrap();
        c.decrement(r(1), 1).unwrap();
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(
            json,
            r#"{"p":{"00000000000000000000000000000001":2},"n":{"00000000000000000000000000000001":1}}"#
        );
        assert_eq!(serde_json::from_str::<PNCounter>(&json).unwrap(), c);
        assert!(serde_json::from_str::<PNCounter>(r#"{"p":{},"n":{},"x":1}"#).is_err());
    }
}
