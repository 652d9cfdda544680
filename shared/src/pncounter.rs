//! [`PNCounter`]: the counter that goes up and down, as two grow-only counters.

use serde::{Deserialize, Serialize};

use crate::{Error, GCounter, ReplicaId, SlotTotals};

/// A counter that goes up and down (PN-Counter): two [`GCounter`]s, `p` for increments and
/// `n` for decrements; the value is `p - n`.
///
/// Each replica owns one slot in each half and merging is max per slot in each half, so it
/// has the same laws as a G-Counter. The value is an `i128` and **may be negative**: a gauge
/// of "viewers now" is decremented by a replica that never saw the increment, and the sum
/// settles once replicas have merged. Each half's slots are `u64`, overflow is an error.
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
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PNCounter {
    p: GCounter,
    n: GCounter,
}

impl PNCounter {
    /// An empty counter (value 0).
    pub const fn new() -> Self {
        PNCounter {
            p: GCounter::new(),
            n: GCounter::new(),
        }
    }

    /// The value, `sum(p) - sum(n)`; may be negative.
    pub fn value(&self) -> i128 {
        let p = i128::try_from(self.p.value());
        let n = i128::try_from(self.n.value());
        // A u128 sum of u64 slots exceeds i128::MAX only with 2^63 slots, which cannot exist
        // in memory; both halves are non-negative, so the difference cannot overflow either.
        p.expect("fewer than 2^63 slots fit in memory")
            - n.expect("fewer than 2^63 slots fit in memory")
    }

    /// `replica`'s own slot totals (`p` increments, `n` decrements).
    pub fn get(&self, replica: ReplicaId) -> SlotTotals {
        SlotTotals {
            p: self.p.get(replica),
            n: self.n.get(replica),
        }
    }

    /// Adds `by` to `replica`'s increment total; returns the new total.
    ///
    /// # Errors
    ///
    /// [`Error::SlotOverflow`] if the total would pass `u64::MAX`; the counter is unchanged.
    pub fn increment(&mut self, replica: ReplicaId, by: u64) -> Result<u64, Error> {
        self.p.increment(replica, by)
    }

    /// Adds `by` to `replica`'s decrement total; returns the new total.
    ///
    /// # Errors
    ///
    /// [`Error::SlotOverflow`] if the total would pass `u64::MAX`; the counter is unchanged.
    pub fn decrement(&mut self, replica: ReplicaId, by: u64) -> Result<u64, Error> {
        self.n.increment(replica, by)
    }

    /// Merges one replica's slot totals (max per half). Returns whether either half grew.
    pub fn merge_slot(&mut self, replica: ReplicaId, totals: SlotTotals) -> bool {
        let p = self.p.merge_slot(replica, totals.p);
        let n = self.n.merge_slot(replica, totals.n);
        p | n
    }

    /// Merges `other` into `self`, max per slot in each half.
    pub fn merge(&mut self, other: &PNCounter) {
        self.p.merge(&other.p);
        self.n.merge(&other.n);
    }

    /// The slots of `self` ahead of `older`, in each half; see [`GCounter::delta_since`].
    pub fn delta_since(&self, older: &PNCounter) -> PNCounter {
        PNCounter {
            p: self.p.delta_since(&older.p),
            n: self.n.delta_since(&older.n),
        }
    }

    /// The increment half.
    pub fn increments(&self) -> &GCounter {
        &self.p
    }

    /// The decrement half.
    pub fn decrements(&self) -> &GCounter {
        &self.n
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
