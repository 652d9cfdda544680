//! The edge <-> merger sync protocol: the wire types, defined once for both sides.
//!
//! An edge replica sends a [`SyncRequest`] holding, for every counter that changed since its
//! last successful sync, the **totals** of its own slot (never increments). The merger merges
//! each total with max, commits, and answers a [`SyncResponse`] that holds, per counter, the
//! global totals and the merger's recorded copy of this replica's slot. Because totals are
//! merged with max, applying a sync twice, or an older sync after a newer one, changes
//! nothing. `docs/protocol.md` has the JSON with examples and the full argument.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::marker::PhantomData;

use serde::{Deserialize, Serialize, de};

use crate::{Error, ReplicaId};

/// The protocol version this crate speaks; a request with another version is refused with
/// [`Error::UnsupportedVersion`].
pub const PROTOCOL_VERSION: u32 = 1;

/// Which CRDT a counter is. A counter id names two independent counters, one of each kind.
///
/// # Examples
///
/// ```
/// use tally_crdt::CounterKind;
///
/// assert_eq!(serde_json::to_string(&CounterKind::Pn).unwrap(), r#""pn""#);
/// assert_eq!(CounterKind::G.to_string(), "g");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum CounterKind {
    /// Increment-only ([`GCounter`](crate::GCounter)): page views, likes. `/{id}/counter`.
    #[serde(rename = "g")]
    G,
    /// Up and down ([`PNCounter`](crate::PNCounter)): viewers now, unread notifications.
    /// `/{id}/gauge`.
    #[serde(rename = "pn")]
    Pn,
}

impl CounterKind {
    /// The wire name: `"g"` or `"pn"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            CounterKind::G => "g",
            CounterKind::Pn => "pn",
        }
    }
}

impl fmt::Display for CounterKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One replica's slot of one counter: its increment total `p` and decrement total `n`
/// (always 0 for an increment-only counter, and then left out of the JSON).
///
/// # Examples
///
/// ```
/// use tally_crdt::SlotTotals;
///
/// let own = SlotTotals { p: 9, n: 2 };
/// assert_eq!(own.value(), 7);
/// assert_eq!(serde_json::to_string(&SlotTotals { p: 9, n: 0 }).unwrap(), r#"{"p":9}"#);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotTotals {
    /// Total of increments.
    pub p: u64,
    /// Total of decrements.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub n: u64,
}

impl SlotTotals {
    /// `p - n`, exact.
    pub fn value(self) -> i128 {
        i128::from(self.p) - i128::from(self.n)
    }
}

/// The sync an edge replica sends: its identity and, for every changed counter, its own
/// slot totals.
///
/// # Examples
///
/// ```
/// use tally_crdt::{CounterKind, ReplicaId, SlotUpdate, SyncRequest, PROTOCOL_VERSION};
///
/// let sync = SyncRequest {
///     version: PROTOCOL_VERSION,
///     replica: ReplicaId::from_u128(0x2a),
///     region: "eu-west".into(),
///     counters: vec![SlotUpdate { id: "home".into(), kind: CounterKind::G, p: 715, n: 0 }],
/// };
/// sync.validate()?;
/// # Ok::<(), tally_crdt::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncRequest {
    /// Protocol version, [`PROTOCOL_VERSION`].
    pub version: u32,
    /// The sending replica incarnation.
    pub replica: ReplicaId,
    /// The region the replica serves (for the merger's per-region breakdown).
    pub region: String,
    /// This replica's totals for each counter that changed; at most
    /// [`MAX_COUNTERS_PER_SYNC`](crate::MAX_COUNTERS_PER_SYNC), each `(id, kind)` once.
    #[serde(deserialize_with = "objects")]
    pub counters: Vec<SlotUpdate>,
}

/// One counter in a [`SyncRequest`]: the sender's slot totals for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotUpdate {
    /// Counter id (see [`check_counter_id`](crate::check_counter_id)).
    pub id: String,
    /// Which CRDT it is.
    pub kind: CounterKind,
    /// The sender's total of increments.
    pub p: u64,
    /// The sender's total of decrements; must be 0 (or absent) for kind `g`.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub n: u64,
}

impl SlotUpdate {
    /// The totals carried.
    pub fn totals(&self) -> SlotTotals {
        SlotTotals {
            p: self.p,
            n: self.n,
        }
    }
}

/// The merger's answer to a [`SyncRequest`], sent only after the merged state is committed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncResponse {
    /// Protocol version, [`PROTOCOL_VERSION`].
    pub version: u32,
    /// One entry per counter of the request, in the request's order.
    pub counters: Vec<MergedCounter>,
}

/// One counter in a [`SyncResponse`]: the merged global totals and what the merger holds of
/// the sender's own slot.
///
/// # Examples
///
/// ```
/// use tally_crdt::{CounterKind, GlobalTotals, MergedCounter, SlotTotals};
///
/// // The merger knows 700 hits in all, 20 of them from this replica's slot;
/// // the replica has counted 25 by now, so it reads 705.
/// let merged = MergedCounter {
///     id: "home".into(),
///     kind: CounterKind::G,
///     global: GlobalTotals { p: 700, n: 0 },
///     recorded: SlotTotals { p: 20, n: 0 },
/// };
/// assert_eq!(merged.estimate(SlotTotals { p: 25, n: 0 })?, 705);
/// # Ok::<(), tally_crdt::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergedCounter {
    /// Counter id.
    pub id: String,
    /// Which CRDT it is.
    pub kind: CounterKind,
    /// The global totals over all replicas' slots, after the merge.
    pub global: GlobalTotals,
    /// The merger's recorded totals of the sender's own slot, after the merge.
    pub recorded: SlotTotals,
}

impl MergedCounter {
    /// The read formula of the edge: the global value with this replica's slot brought up to
    /// `own`, its current totals (`global - recorded_own + current_own`, per half).
    ///
    /// Where `own` is behind `recorded` (a response that crossed a newer sync), the merger's
    /// copy wins, as a merge would decide; the estimate never goes below the global value.
    ///
    /// # Errors
    ///
    /// [`Error::ValueOutOfRange`] if a half passes `u128::MAX` (not reachable with fewer
    /// than 2^64 slots).
    pub fn estimate(&self, own: SlotTotals) -> Result<i128, Error> {
        self.global.estimate(self.recorded, own)
    }
}

/// Global totals of one counter: the sums over all slots of each half, as `u128`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GlobalTotals {
    /// Sum of all increment totals.
    pub p: u128,
    /// Sum of all decrement totals (0, and left out of the JSON, for kind `g`).
    #[serde(default, skip_serializing_if = "is_zero_u128")]
    pub n: u128,
}

impl GlobalTotals {
    /// The read formula of the edge, on totals the merger reported: these global totals
    /// with one replica's slot brought from `recorded` (the merger's copy) up to `own` (its
    /// current totals), per half: `global - recorded + max(own, recorded)`.
    /// See [`MergedCounter::estimate`].
    ///
    /// # Errors
    ///
    /// [`Error::ValueOutOfRange`] if a half passes `u128::MAX` or the result does not fit an
    /// `i128` (neither is reachable with fewer than 2^63 slots).
    pub fn estimate(self, recorded: SlotTotals, own: SlotTotals) -> Result<i128, Error> {
        let ahead = |global: u128, recorded: u64, own: u64| {
            global
                .checked_add(u128::from(own.saturating_sub(recorded)))
                .ok_or(Error::ValueOutOfRange)
        };
        GlobalTotals {
            p: ahead(self.p, recorded.p, own.p)?,
            n: ahead(self.n, recorded.n, own.n)?,
        }
        .value()
    }

    /// Whether `self` is at least `other` in both halves: the merger's totals only grow, so
    /// of two answers about one counter, the one that dominates is the newer.
    pub fn dominates(self, other: GlobalTotals) -> bool {
        self.p >= other.p && self.n >= other.n
    }

    /// `p - n`.
    ///
    /// # Errors
    ///
    /// [`Error::ValueOutOfRange`] if either half exceeds `i128::MAX`.
    pub fn value(self) -> Result<i128, Error> {
        let p = i128::try_from(self.p).map_err(|_| Error::ValueOutOfRange)?;
        let n = i128::try_from(self.n).map_err(|_| Error::ValueOutOfRange)?;
        Ok(p - n)
    }
}

/// Deserializes `T` from a map (a JSON object) only. serde's derive also accepts a struct
/// written as a sequence (`[1, "…", "eu", []]`), a second, undocumented wire form that the
/// fuzzer found; the protocol has one form, so bodies in the other are malformed.
pub(crate) struct MapOnly<T>(pub(crate) T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for MapOnly<T> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> de::Visitor<'de> for ObjectVisitor<T> {
            type Value = T;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map))
            }
        }
        deserializer
            .deserialize_map(ObjectVisitor(PhantomData))
            .map(MapOnly)
    }
}

/// A sequence of objects (each element [`MapOnly`]).
fn objects<'de, D: de::Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Vec<T>, D::Error> {
    Vec::<MapOnly<T>>::deserialize(deserializer).map(|v| v.into_iter().map(|m| m.0).collect())
}

fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

fn is_zero_u128(v: &u128) -> bool {
    *v == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn merged(global: (u128, u128), recorded: (u64, u64)) -> MergedCounter {
        MergedCounter {
            id: "x".into(),
            kind: CounterKind::Pn,
            global: GlobalTotals {
                p: global.0,
                n: global.1,
            },
            recorded: SlotTotals {
                p: recorded.0,
                n: recorded.1,
            },
        }
    }

    #[test]
    fn estimate_adds_own_hits_the_merger_has_not_seen() {
        let m = merged((100, 40), (10, 5));
        assert_eq!(m.estimate(SlotTotals { p: 10, n: 5 }), Ok(60));
        assert_eq!(m.estimate(SlotTotals { p: 13, n: 5 }), Ok(63));
        assert_eq!(m.estimate(SlotTotals { p: 13, n: 9 }), Ok(59));
    }

    #[test]
    fn estimate_never_goes_below_the_merged_value() {
        let m = merged((100, 0), (50, 0));
        assert_eq!(m.estimate(SlotTotals { p: 20, n: 0 }), Ok(100));
    }

    #[test]
    fn estimate_is_exact_at_the_extremes() {
        let m = merged((u128::from(u64::MAX) * 3, 0), (u64::MAX - 1, 0));
        assert_eq!(
            m.estimate(SlotTotals { p: u64::MAX, n: 0 }),
            Ok(i128::from(u64::MAX) * 3 + 1)
        );
        assert_eq!(
            merged((u128::MAX, 0), (0, 0)).estimate(SlotTotals { p: 1, n: 0 }),
            Err(Error::ValueOutOfRange)
        );
    }

    #[test]
    fn response_round_trips_u128_globals() {
        let resp = SyncResponse {
            version: PROTOCOL_VERSION,
            counters: vec![merged((u128::MAX, 1), (u64::MAX, 0))],
        };
        let json = serde_json::to_string(&resp).unwrap();
        assert!(
            json.contains("340282366920938463463374607431768211455"),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<SyncResponse>(&json).unwrap(), resp);
    }

    #[test]
    fn g_slots_leave_n_out_of_the_json() {
        let u = SlotUpdate {
            id: "a".into(),
            kind: CounterKind::G,
            p: 3,
            n: 0,
        };
        assert_eq!(
            serde_json::to_string(&u).unwrap(),
            r#"{"id":"a","kind":"g","p":3}"#
        );
    }
}
