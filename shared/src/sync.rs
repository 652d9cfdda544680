//! The edge <-> merger protocol: the wire types, defined once for both sides.
//!
//! **Sync** (`POST /v1/sync`). An edge replica sends a [`SyncRequest`] holding, for counters
//! that changed since its last successful sync, the **totals** of its own slot (never
//! increments). The merger merges each total with max, commits, and answers a
//! [`SyncResponse`]: per counter, a [`SyncAnswer`] that is either the merged global totals
//! with the merger's recorded copy of this replica's slot, or a per-counter rejection that
//! leaves the other counters of the sync committed. Because totals are merged with max,
//! applying a sync twice, or an older sync after a newer one, changes nothing.
//!
//! **Read** (`POST /v1/read`). An edge replica asks for the global totals of many counters at
//! once ([`ReadRequest`]) and, for its own incarnation, the recorded copy of its slot; the
//! merger answers from memory and writes nothing ([`ReadResponse`]). Unknown counters answer
//! as known-absent: zero totals and no `updated_at`.
//!
//! Answers are matched to requests by [`CounterKey`], never by position.
//! `docs/protocol.md` has the JSON with examples and the full argument.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use core::marker::PhantomData;

use serde::{Deserialize, Serialize, de};

use crate::{CounterKey, Error, ReplicaId, Timestamp};

/// The newest protocol version this crate speaks. Version 2 answers per counter (a rejected
/// counter blocks no other) and adds `POST /v1/read` and `POST /v1/retire`; version 3 adds
/// `visits` to a sync's slots (hits near a milestone that carried a visitor key); version 4
/// adds `carried` to a sync's slots (the sender object's earlier incarnations, see
/// [`SlotUpdate::carried`]) and retires an incarnation into its object's carry; version 5 adds
/// `frame` to a sync's slots (a carry rebased into a later frame, [`Frame`]) and to its
/// answers; version 6 adds `cut` to both (an object's share of its counter's last reset,
/// [`Cut`]).
pub const PROTOCOL_VERSION: u32 = 6;

/// The version before [`PROTOCOL_VERSION`]. An edge sends it for every body whose shape did
/// not change since (reads, presence reports and sketches), so that a merger one release
/// behind still takes them during a rolling deploy; a sync goes in the newest version (its
/// answers tell what only that version carries), and again in the oldest version that carries
/// what is left ([`SyncRequest::downgraded`]) if a merger refuses it. The frozen bodies of
/// `shared/tests/protocol/` hold each version to its shape.
pub const PREVIOUS_VERSION: u32 = 5;

/// The header of a `POST /v1/sync` that tells the age, in milliseconds (a decimal integer),
/// of the sending object's oldest hit not yet acknowledged by a merger when it sent the sync
/// (those in the body included). Not part of the body, so it needs no protocol version: a
/// merger that does not know it ignores it. A merger exports the largest age each region's
/// objects reported recently, so an edge that keeps hits unsynced (stuck) shows apart from
/// one that has none (quiet).
pub const UNSYNCED_AGE_HEADER: &str = "Tally-Unsynced-Age";

/// The oldest version a merger still accepts, so an edge one version behind keeps syncing
/// during a rolling deploy (mergers are deployed first). A version-1 sync is all or nothing.
pub const MIN_PROTOCOL_VERSION: u32 = 1;

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

    /// Whether `self` is at least `other` in both halves.
    pub fn dominates(self, other: SlotTotals) -> bool {
        self.p >= other.p && self.n >= other.n
    }

    /// The larger of each half.
    #[must_use]
    pub fn join(self, other: SlotTotals) -> SlotTotals {
        SlotTotals {
            p: self.p.max(other.p),
            n: self.n.max(other.n),
        }
    }
}

/// The sync an edge replica sends: its identity and, for every changed counter, its own
/// slot totals.
///
/// Decoding checks everything that concerns the request as a whole (version, size, replica,
/// region, ids, no counter twice); a version-1 request is also refused whole for a counter
/// that breaks a per-counter rule, where version 2 leaves that to a per-counter answer
/// ([`SyncRequest::counter_error`]).
///
/// # Examples
///
/// ```
/// use tally_crdt::{CounterKey, CounterKind, ReplicaId, SlotTotals, SlotUpdate, SyncRequest, PROTOCOL_VERSION};
///
/// let sync = SyncRequest {
///     version: PROTOCOL_VERSION,
///     replica: ReplicaId::from_u128(0x2a),
///     region: "eu-west".into(),
///     counters: vec![SlotUpdate {
///         key: CounterKey::new(CounterKind::G, "home")?,
///         totals: SlotTotals { p: 715, n: 0 },
///         visits: Vec::new(),
///         carried: SlotTotals::default(),
///         frame: None,
///         cut: None,
///     }],
/// };
/// sync.validate()?;
/// # Ok::<(), tally_crdt::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawSync")]
pub struct SyncRequest {
    /// Protocol version, [`MIN_PROTOCOL_VERSION`] ..= [`PROTOCOL_VERSION`].
    pub version: u32,
    /// The sending replica incarnation.
    pub replica: ReplicaId,
    /// The region the replica serves (for the merger's per-region breakdown).
    pub region: String,
    /// This replica's totals for each counter that changed; at most
    /// [`MAX_COUNTERS_PER_SYNC`](crate::MAX_COUNTERS_PER_SYNC), each counter once.
    pub counters: Vec<SlotUpdate>,
}

/// A sync as decoded, before any rule is checked (so each rule can name its own error).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSync {
    pub(crate) version: u32,
    pub(crate) replica: ReplicaId,
    pub(crate) region: String,
    #[serde(deserialize_with = "objects")]
    pub(crate) counters: Vec<SlotWire>,
}

impl SyncRequest {
    /// The oldest version that carries `counters`: 6 when a slot sends its object's cut, 5
    /// when a slot's carry is rebased into a frame, 4 when a slot carries a carry, 3 when one
    /// carries visits, else 2.
    pub fn version_for(counters: &[SlotUpdate]) -> u32 {
        if counters.iter().any(|c| c.cut.is_some()) {
            6
        } else if counters.iter().any(|c| c.frame.is_some()) {
            5
        } else if counters.iter().any(|c| c.carried != SlotTotals::default()) {
            4
        } else if counters.iter().any(|c| !c.visits.is_empty()) {
            3
        } else {
            2
        }
    }

    /// The same sync one version down, for a merger a release behind (a rolling deploy in the
    /// wrong order): without cuts (they only heal a merger restored from before a reset),
    /// then carries in frame 0 (a rebased carry sends what it reclaimed and what it
    /// carried since as one carry, as before frames: the same sums), then without carries
    /// (they only heal a restored merger), then without visits (a winner's record then names
    /// no visitor). The slots' totals are the same. `None` at version 2.
    #[must_use]
    pub fn downgraded(&self) -> Option<SyncRequest> {
        let mut older = self.clone();
        match self.version {
            6 => older.counters.iter_mut().for_each(|c| c.cut = None),
            5 => older.counters.iter_mut().for_each(|c| {
                if let Some(frame) = c.frame.take() {
                    c.carried = SlotTotals {
                        p: c.carried.p.saturating_add(frame.reclaimed.p),
                        n: c.carried.n.saturating_add(frame.reclaimed.n),
                    };
                }
            }),
            4 => older
                .counters
                .iter_mut()
                .for_each(|c| c.carried = SlotTotals::default()),
            3 => older.counters.iter_mut().for_each(|c| c.visits.clear()),
            _ => return None,
        }
        older.version = SyncRequest::version_for(&older.counters).min(self.version - 1);
        Some(older)
    }
}

impl TryFrom<RawSync> for SyncRequest {
    type Error = Error;
    fn try_from(raw: RawSync) -> Result<SyncRequest, Error> {
        SyncRequest::check_version(u64::from(raw.version))?;
        crate::validate::check_sync_size(raw.counters.len())?;
        let counters = raw
            .counters
            .into_iter()
            .map(SlotUpdate::try_from)
            .collect::<Result<Vec<_>, Error>>()?;
        let request = SyncRequest {
            version: raw.version,
            replica: raw.replica,
            region: raw.region,
            counters,
        };
        request.validate()?;
        Ok(request)
    }
}

/// One counter in a [`SyncRequest`]: the sender's slot totals for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "SlotWire", into = "SlotWire")]
pub struct SlotUpdate {
    /// Which counter.
    pub key: CounterKey,
    /// The sender's totals; `n` must be 0 for kind `g` (a version-2 sync gets that counter
    /// rejected alone).
    pub totals: SlotTotals,
    /// Hits of this slot that carried a visitor key (kind `g` only, kept by the edge only
    /// while the counter is near a milestone), so that a winner's record can name its
    /// visitor; empty, and left out of the JSON, for every other counter.
    pub visits: Vec<Visit>,
    /// Version 4: the sums of the final slots of every earlier incarnation of the sender's
    /// object ([`ReplicaId::object`]) for this counter — the generations below the sender's
    /// ([`ReplicaId::generation`]). The merger joins it into the object's
    /// [`Carry`](crate::Carry), so a merger restored from an old backup gets back what the
    /// object's rotated-away incarnations counted. Zero, and left out of the JSON, when the
    /// object counted nothing of this counter before.
    pub carried: SlotTotals,
    /// Version 5: the frame `carried` counts in, when the object rebased its carry of this
    /// counter ([`Frame`]); `None`, and left out of the JSON, for frame 0.
    pub frame: Option<Frame>,
    /// Version 6: the sender object's share of the counter's last reset, as a merger told it
    /// ([`Cut`]); `None`, and left out of the JSON, until one did.
    pub cut: Option<Cut>,
}

/// An object's share of its counter's last reset or delete (protocol version 6): the epoch
/// it began, whether it was a delete and when, and what the object — every incarnation of it,
/// its carry — had counted of the counter at that moment. The merger tells it to an object
/// that syncs the counter in that epoch (zero to one that had counted nothing of it); the
/// object keeps it and sends it with the counter's slot from then on. A merger restored
/// from a backup older than the reset learns the reset from the first such slot (it starts
/// that epoch, cutting everything it holds), and from each object's cut exactly what that
/// object had counted before it, so the counter comes back with its count in the new epoch,
/// not with what was reset or deleted.
///
/// # Examples
///
/// ```
/// use tally_crdt::{Cut, GlobalTotals, Timestamp};
///
/// let cut = Cut {
///     epoch: 2,
///     deleted: true,
///     at: Timestamp::from_unix_ms(1_800_000_000_000),
///     totals: GlobalTotals { p: 718, n: 0 },
/// };
/// assert_eq!(
///     serde_json::to_string(&cut).unwrap(),
///     r#"{"epoch":2,"deleted":true,"at":"2027-01-15T08:00:00.000Z","totals":{"p":718}}"#
/// );
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cut {
    /// The epoch the reset began (at least 1).
    pub epoch: u64,
    /// The reset was a delete (left out of the JSON when not).
    #[serde(default, skip_serializing_if = "is_false")]
    pub deleted: bool,
    /// When it happened.
    pub at: Timestamp,
    /// What the object had counted of the counter then (left out of the JSON when zero).
    #[serde(
        default,
        skip_serializing_if = "is_zero_global",
        deserialize_with = "strict_totals"
    )]
    pub totals: GlobalTotals,
}

/// [`GlobalTotals`] as a request carries them: `p`, and `n` (absent: 0), nothing else (an
/// answer's are read leniently, for edges of later releases).
fn strict_totals<'de, D: de::Deserializer<'de>>(d: D) -> Result<GlobalTotals, D::Error> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Strict {
        p: u128,
        #[serde(default)]
        n: u128,
    }
    let Strict { p, n } = Strict::deserialize(d)?;
    Ok(GlobalTotals { p, n })
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero_global(totals: &GlobalTotals) -> bool {
    *totals == GlobalTotals::default()
}

/// A carry rebased into a later frame (protocol version 5). An object that holds a counter
/// nobody counts any more (reset or deleted, nothing counted since) moves what it carried
/// into `reclaimed`, fixed for the frame, and carries from zero again, so that it can forget
/// the counter's row once no restore could need it. The merger counts `reclaimed` and the
/// carry together, as before ([`Carry`](crate::Carry)); a carry of a later frame replaces an
/// earlier one whole, and one of an earlier frame than the merger holds changes nothing.
///
/// # Examples
///
/// ```
/// use tally_crdt::{Frame, SlotTotals};
///
/// let frame = Frame { epoch: 2, reclaimed: SlotTotals { p: 718, n: 0 } };
/// assert_eq!(serde_json::to_string(&frame).unwrap(), r#"{"epoch":2,"reclaimed":{"p":718}}"#);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Frame {
    /// The frame: the counter's epoch when the object rebased (at least 1).
    pub epoch: u64,
    /// What the object carried then: the sums of the final slots of its generations before.
    #[serde(default, skip_serializing_if = "is_zero_totals")]
    pub reclaimed: SlotTotals,
}

/// Longest visitor key, in bytes.
pub const MAX_VISITOR_LEN: usize = 64;
/// Most visits one counter of one sync carries.
pub const MAX_VISITS_PER_COUNTER: usize = 32;

/// A hit that carried a visitor key: it holds units `end - delta + 1 ..= end` of the
/// sender's slot (as its `Receipt` says).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Visit {
    /// The slot's increment total right after the hit.
    pub end: u64,
    /// The hit's delta.
    pub delta: u32,
    /// The client's opaque key ([`check_visitor`]).
    pub visitor: String,
}

impl Visit {
    /// Whether the hit holds `unit` of its slot.
    pub fn holds(&self, unit: u64) -> bool {
        unit <= self.end && unit > self.end - u64::from(self.delta)
    }
}

/// Checks a visitor key: 1 to [`MAX_VISITOR_LEN`] bytes of printable ASCII (no control
/// characters), so that it can travel in logs, JSON and webhook bodies as it is.
///
/// # Errors
///
/// [`Error::InvalidVisit`] naming the rule broken.
pub fn check_visitor(visitor: &str) -> Result<(), Error> {
    if visitor.is_empty() || visitor.len() > MAX_VISITOR_LEN {
        return Err(Error::InvalidVisit(
            "a visitor key is 1 to 64 characters".into(),
        ));
    }
    if !visitor.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(Error::InvalidVisit(
            "a visitor key is printable ASCII".into(),
        ));
    }
    Ok(())
}

/// The JSON of a [`SlotUpdate`]: `{"id", "kind", "p", "n"}` (`n` left out when 0).
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SlotWire {
    id: String,
    kind: CounterKind,
    p: u64,
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    n: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    visits: Vec<Visit>,
    #[serde(default, skip_serializing_if = "is_zero_totals")]
    carried: SlotTotals,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    frame: Option<Frame>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cut: Option<Cut>,
}

fn is_zero_totals(totals: &SlotTotals) -> bool {
    *totals == SlotTotals::default()
}

impl TryFrom<SlotWire> for SlotUpdate {
    type Error = Error;
    fn try_from(w: SlotWire) -> Result<SlotUpdate, Error> {
        Ok(SlotUpdate {
            key: CounterKey::new(w.kind, w.id)?,
            totals: SlotTotals { p: w.p, n: w.n },
            visits: w.visits,
            carried: w.carried,
            frame: w.frame,
            cut: w.cut,
        })
    }
}

impl From<SlotUpdate> for SlotWire {
    fn from(u: SlotUpdate) -> SlotWire {
        SlotWire {
            kind: u.key.kind(),
            id: u.key.id().into(),
            p: u.totals.p,
            n: u.totals.n,
            visits: u.visits,
            carried: u.carried,
            frame: u.frame,
            cut: u.cut,
        }
    }
}

/// The merger's answer to a [`SyncRequest`], sent only after the merged state is committed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncResponse {
    /// The version of the request answered.
    pub version: u32,
    /// One answer per counter of the request (match them by key).
    pub counters: Vec<SyncAnswer>,
}

/// The answer for one counter of a sync: merged and committed, or rejected alone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
#[serde(try_from = "AnswerWire")]
pub enum SyncAnswer {
    /// Committed: the merged totals.
    Merged(MergedCounter),
    /// Refused, with nothing of it committed; the sync's other counters are unaffected.
    Rejected(Rejection),
}

/// The JSON of either answer, read in one pass: serde's untagged enums buffer the input in
/// a form that has no `u128`, and global totals may pass `u64::MAX`.
#[derive(Deserialize)]
struct AnswerWire {
    id: String,
    kind: CounterKind,
    global: Option<GlobalTotals>,
    recorded: Option<SlotTotals>,
    #[serde(default)]
    updated_at: Option<Timestamp>,
    #[serde(default)]
    epoch: u64,
    #[serde(default)]
    milestones: Option<MilestoneNews>,
    #[serde(default)]
    frame: Option<Frame>,
    #[serde(default)]
    cut: Option<Cut>,
    error: Option<ErrorBody>,
}

impl TryFrom<AnswerWire> for SyncAnswer {
    type Error = Error;
    fn try_from(w: AnswerWire) -> Result<SyncAnswer, Error> {
        let key = CounterKey::new(w.kind, w.id)?;
        match (w.error, w.global, w.recorded) {
            (Some(error), None, None) => Ok(SyncAnswer::Rejected(Rejection { key, error })),
            (None, Some(global), Some(recorded)) => Ok(SyncAnswer::Merged(MergedCounter {
                key,
                global,
                recorded,
                updated_at: w.updated_at,
                epoch: w.epoch,
                milestones: w.milestones,
                frame: w.frame,
                cut: w.cut,
            })),
            _ => Err(Error::Malformed(
                "an answer has either `error`, or `global` and `recorded`".into(),
            )),
        }
    }
}

impl SyncAnswer {
    /// The counter answered.
    pub fn key(&self) -> &CounterKey {
        match self {
            SyncAnswer::Merged(m) => &m.key,
            SyncAnswer::Rejected(r) => &r.key,
        }
    }
}

/// A counter the merger refused, with why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RejectionWire", into = "RejectionWire")]
pub struct Rejection {
    /// The counter.
    pub key: CounterKey,
    /// Why, in the API's error shape.
    pub error: ErrorBody,
}

#[derive(Clone, Serialize, Deserialize)]
struct RejectionWire {
    id: String,
    kind: CounterKind,
    error: ErrorBody,
}

impl TryFrom<RejectionWire> for Rejection {
    type Error = Error;
    fn try_from(w: RejectionWire) -> Result<Rejection, Error> {
        Ok(Rejection {
            key: CounterKey::new(w.kind, w.id)?,
            error: w.error,
        })
    }
}

impl From<Rejection> for RejectionWire {
    fn from(r: Rejection) -> RejectionWire {
        RejectionWire {
            kind: r.key.kind(),
            id: r.key.id().into(),
            error: r.error,
        }
    }
}

/// An error as every tally API writes it: a stable code and a message for people.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable, machine-readable.
    pub code: String,
    /// For people.
    pub message: String,
}

impl From<&Error> for ErrorBody {
    fn from(e: &Error) -> ErrorBody {
        ErrorBody {
            code: e.code().into(),
            message: e.to_string(),
        }
    }
}

/// One counter as the merger knows it: the global totals, its recorded copy of the asking
/// replica's slot, and when the counter last changed.
///
/// # Examples
///
/// ```
/// use tally_crdt::{CounterKey, CounterKind, GlobalTotals, MergedCounter, SlotTotals};
///
/// // The merger knows 700 hits in all, 20 of them from this replica's slot;
/// // the replica has counted 25 by now, so it reads 705.
/// let merged = MergedCounter {
///     key: CounterKey::new(CounterKind::G, "home")?,
///     global: GlobalTotals { p: 700, n: 0 },
///     recorded: SlotTotals { p: 20, n: 0 },
///     updated_at: None,
///     epoch: 0,
///     milestones: None,
///     frame: None,
///     cut: None,
/// };
/// assert_eq!(merged.estimate(SlotTotals { p: 25, n: 0 })?, 705);
/// # Ok::<(), tally_crdt::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "MergedWire", into = "MergedWire")]
pub struct MergedCounter {
    /// The counter.
    pub key: CounterKey,
    /// The global totals over all replicas' slots.
    pub global: GlobalTotals,
    /// The merger's recorded totals of the asking replica's slot (zero for a read that
    /// names no replica).
    pub recorded: SlotTotals,
    /// The last time the count changed (a slot grew, or a reset); `None` for a counter
    /// nobody has hit.
    pub updated_at: Option<Timestamp>,
    /// How many times the counter was reset or deleted. `global` counts only what came after
    /// the last reset; of two answers about one counter, the one of the higher epoch is the
    /// newer whatever its totals. 0 (left out of the JSON) for a counter never reset.
    pub epoch: u64,
    /// Sync answers only, for a counter with milestones pending or won in the last minute:
    /// what the edge needs for its exact path (left out of the JSON otherwise).
    pub milestones: Option<MilestoneNews>,
    /// Version-5 sync answers only: the frame of the sender object's carry of this counter
    /// at the merger, when later than the one the sync sent (an object that forgot a
    /// rebased row takes it up again), its epoch alone (`reclaimed` zero: what was reclaimed
    /// stays at the merger); left out of the JSON otherwise.
    pub frame: Option<Frame>,
    /// Version-6 sync answers only: the sender object's share of the counter's last reset
    /// ([`Cut`]), when the sync sent none or one of an earlier epoch; left out of the JSON
    /// otherwise.
    pub cut: Option<Cut>,
}

/// A counter's milestones as a sync answer tells them (docs/milestones.md): the next one
/// pending, which an edge object watches for, and those won in the last minute, which an
/// object holding the winning hit tells its client.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MilestoneNews {
    /// The lowest milestone still pending, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<u64>,
    /// Milestones decided in the last minute, by N.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub won: Vec<MilestoneWon>,
}

/// A decided milestone: unit `unit` of `replica`'s slot got ordinal `n`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MilestoneWon {
    /// The milestone.
    pub n: u64,
    /// Its label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// The replica of the winning hit.
    pub replica: ReplicaId,
    /// The unit of its slot.
    pub unit: u64,
}

#[derive(Clone, Serialize, Deserialize)]
struct MergedWire {
    id: String,
    kind: CounterKind,
    global: GlobalTotals,
    recorded: SlotTotals,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    updated_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    epoch: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    milestones: Option<MilestoneNews>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    frame: Option<Frame>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cut: Option<Cut>,
}

impl TryFrom<MergedWire> for MergedCounter {
    type Error = Error;
    fn try_from(w: MergedWire) -> Result<MergedCounter, Error> {
        Ok(MergedCounter {
            key: CounterKey::new(w.kind, w.id)?,
            global: w.global,
            recorded: w.recorded,
            updated_at: w.updated_at,
            epoch: w.epoch,
            milestones: w.milestones,
            frame: w.frame,
            cut: w.cut,
        })
    }
}

impl From<MergedCounter> for MergedWire {
    fn from(m: MergedCounter) -> MergedWire {
        MergedWire {
            kind: m.key.kind(),
            id: m.key.id().into(),
            global: m.global,
            recorded: m.recorded,
            updated_at: m.updated_at,
            epoch: m.epoch,
            milestones: m.milestones,
            frame: m.frame,
            cut: m.cut,
        }
    }
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

/// A batch read an edge replica sends to `POST /v1/read`: the merger answers from memory,
/// writes nothing and registers nobody.
///
/// # Examples
///
/// ```
/// use tally_crdt::{CounterKey, CounterKind, ReadRequest, ReplicaId, PREVIOUS_VERSION};
///
/// let read = ReadRequest {
///     version: PREVIOUS_VERSION,
///     replica: Some(ReplicaId::from_u128(7)),
///     counters: vec![CounterKey::new(CounterKind::G, "home")?],
/// };
/// read.validate()?;
/// assert_eq!(
///     serde_json::to_string(&read).unwrap(),
///     r#"{"version":5,"replica":"00000000000000000000000000000007","counters":[{"id":"home","kind":"g"}]}"#
/// );
/// # Ok::<(), tally_crdt::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawRead")]
pub struct ReadRequest {
    /// 2 to 6 (reads exist since version 2, and keep their shape; an edge sends
    /// [`PREVIOUS_VERSION`]).
    pub version: u32,
    /// The asking replica, whose recorded slot each answer carries; `None` for a plain read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<ReplicaId>,
    /// The counters, each once, at most [`MAX_COUNTERS_PER_SYNC`](crate::MAX_COUNTERS_PER_SYNC).
    pub counters: Vec<CounterKey>,
}

/// A read as decoded, before any rule is checked (so each rule can name its own error).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRead {
    pub(crate) version: u32,
    #[serde(default)]
    pub(crate) replica: Option<ReplicaId>,
    #[serde(deserialize_with = "objects")]
    pub(crate) counters: Vec<crate::key::KeyWire>,
}

impl TryFrom<RawRead> for ReadRequest {
    type Error = Error;
    fn try_from(raw: RawRead) -> Result<ReadRequest, Error> {
        let request = ReadRequest {
            version: raw.version,
            replica: raw.replica,
            counters: raw
                .counters
                .into_iter()
                .map(|k| CounterKey::new(k.kind, k.id))
                .collect::<Result<_, _>>()?,
        };
        request.validate()?;
        Ok(request)
    }
}

/// The answer to a [`ReadRequest`]: one [`MergedCounter`] per counter asked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadResponse {
    /// [`PROTOCOL_VERSION`].
    pub version: u32,
    /// One per counter asked, unknown ones with zero totals and no `updated_at`.
    pub counters: Vec<MergedCounter>,
}
/// A replica incarnation's retirement (`POST /v1/retire`, since version 2).
///
/// An edge object rotates to a new incarnation only when every slot of the old one is
/// acknowledged (nothing dirty, no sync in flight), then sends this: every slot the merger
/// holds for `replica` is final. The merger folds them into each counter's base and from then
/// on ignores any sync of `replica` (a late duplicate or a replay changes nothing), so the
/// slots per counter stay bounded by the incarnations alive now. Retiring twice is harmless.
///
/// ```
/// # #[cfg(feature = "json")] {
/// use tally_crdt::{ReplicaId, RetireRequest};
///
/// let body = br#"{"version": 2, "replica": "0000000000000000000000000000002a"}"#;
/// let retire = RetireRequest::from_json(body)?;
/// assert_eq!(retire.replica, ReplicaId::from_u128(42));
/// # }
/// # Ok::<(), tally_crdt::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetireRequest {
    /// 2 to 6 (retirement exists since version 2 and keeps its shape). A merger of version 4
    /// or later folds the incarnation's slots into its object's [`Carry`](crate::Carry)
    /// whatever the version; an edge sends 4 for an incarnation of a lineage
    /// ([`ReplicaId::lineage`]), so that a merger from before version 4, which would fold it
    /// into a region's base where the object's own carry would count it again, refuses it
    /// until it is upgraded.
    pub version: u32,
    /// The incarnation whose slots are final.
    pub replica: ReplicaId,
}

/// The answer to a [`RetireRequest`], once the retirement is durable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetireResponse {
    /// [`PROTOCOL_VERSION`].
    pub version: u32,
    /// The incarnation retired.
    pub replica: ReplicaId,
    /// Slots folded into counters' bases by this request (0 when already retired).
    pub folded: u64,
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
        self.with_own(recorded, own)?.value()
    }

    /// The halves of [`estimate`](Self::estimate): these totals with one replica's slot
    /// brought from `recorded` up to `own`, per half.
    ///
    /// # Errors
    ///
    /// [`Error::ValueOutOfRange`] if a half passes `u128::MAX`.
    pub fn with_own(self, recorded: SlotTotals, own: SlotTotals) -> Result<GlobalTotals, Error> {
        let ahead = |global: u128, recorded: u64, own: u64| {
            global
                .checked_add(u128::from(own.saturating_sub(recorded)))
                .ok_or(Error::ValueOutOfRange)
        };
        Ok(GlobalTotals {
            p: ahead(self.p, recorded.p, own.p)?,
            n: ahead(self.n, recorded.n, own.n)?,
        })
    }

    /// Whether `self` is at least `other` in both halves: the merger's totals only grow, so
    /// of two answers about one counter, the one that dominates is the newer.
    pub fn dominates(self, other: GlobalTotals) -> bool {
        self.p >= other.p && self.n >= other.n
    }

    /// The larger of each half: of two lower bounds of one counter's totals, the tighter.
    #[must_use]
    pub fn join(self, other: GlobalTotals) -> GlobalTotals {
        GlobalTotals {
            p: self.p.max(other.p),
            n: self.n.max(other.n),
        }
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
    use crate::CounterKind;
    use alloc::vec;

    fn key(id: &str) -> CounterKey {
        CounterKey::new(CounterKind::Pn, id).unwrap()
    }

    fn merged(global: (u128, u128), recorded: (u64, u64)) -> MergedCounter {
        MergedCounter {
            key: key("x"),
            global: GlobalTotals {
                p: global.0,
                n: global.1,
            },
            recorded: SlotTotals {
                p: recorded.0,
                n: recorded.1,
            },
            updated_at: None,
            epoch: 0,
            milestones: None,
            frame: None,
            cut: None,
        }
    }

    #[test]
    fn an_epoch_travels_only_once_a_counter_was_reset() {
        let never = merged((5, 0), (1, 0));
        let json = serde_json::to_string(&never).unwrap();
        assert!(!json.contains("epoch"), "{json}");
        let reset = MergedCounter { epoch: 3, ..never };
        let json = serde_json::to_string(&reset).unwrap();
        assert!(json.contains(r#""epoch":3"#), "{json}");
        assert_eq!(serde_json::from_str::<MergedCounter>(&json).unwrap(), reset);
        let answer: SyncAnswer = serde_json::from_str(&json).unwrap();
        assert_eq!(answer, SyncAnswer::Merged(reset));
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
    fn response_round_trips_u128_globals_and_rejections() {
        let mut with_time = merged((u128::MAX, 1), (u64::MAX, 0));
        with_time.updated_at = Some(Timestamp::from_unix_ms(1_917_864_702_000));
        let resp = SyncResponse {
            version: PROTOCOL_VERSION,
            counters: vec![
                SyncAnswer::Merged(with_time),
                SyncAnswer::Merged(merged((3, 0), (1, 0))),
                SyncAnswer::Rejected(Rejection {
                    key: key("bad"),
                    error: ErrorBody::from(&Error::ValueOutOfRange),
                }),
            ],
        };
        let json = serde_json::to_string(&resp).unwrap();
        assert!(
            json.contains("340282366920938463463374607431768211455"),
            "{json}"
        );
        assert!(
            json.contains(r#""updated_at":"2030-10-10T12:11:42.000Z""#),
            "{json}"
        );
        assert!(
            json.contains(r#""error":{"code":"value_out_of_range""#),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<SyncResponse>(&json).unwrap(), resp);
    }

    #[test]
    fn a_version_1_answer_still_reads() {
        let v1 = r#"{"version":1,"counters":[{"id":"a","kind":"g","global":{"p":5},"recorded":{"p":2}}]}"#;
        let resp: SyncResponse = serde_json::from_str(v1).unwrap();
        assert!(
            matches!(&resp.counters[0], SyncAnswer::Merged(m) if m.global.p == 5 && m.updated_at.is_none())
        );
    }

    #[test]
    fn g_slots_leave_n_out_of_the_json() {
        let u = SlotUpdate {
            key: CounterKey::new(CounterKind::G, "a").unwrap(),
            totals: SlotTotals { p: 3, n: 0 },
            visits: Vec::new(),
            carried: SlotTotals::default(),
            frame: None,
            cut: None,
        };
        assert_eq!(
            serde_json::to_string(&u).unwrap(),
            r#"{"id":"a","kind":"g","p":3}"#
        );
    }

    #[test]
    fn a_cut_is_read_strictly_and_only_in_version_6() {
        let sync = |version: u32, cut: &str| {
            let body = format!(
                r#"{{"version":{version},"replica":"00000000000000000000000000000007","region":"eu","counters":[{{"id":"a","kind":"pn","p":3,"cut":{cut}}}]}}"#
            );
            SyncRequest::from_json(body.as_bytes())
        };
        let good = r#"{"epoch":1,"at":"2026-12-06T10:00:00.000Z","totals":{"p":2,"n":1}}"#;
        let cut = sync(6, good).expect("a version-6 cut").counters[0].cut;
        assert_eq!(
            cut.map(|c| (c.epoch, c.deleted, c.totals.n)),
            Some((1, false, 1))
        );
        for bad in [
            r#"{"epoch":1,"at":"2026-12-06T10:00:00.000Z","totals":{"p":2,"x":1}}"#,
            r#"{"epoch":1,"at":"2026-12-06T10:00:00.000Z","x":1}"#,
            r#"{"epoch":0,"at":"2026-12-06T10:00:00.000Z"}"#,
            r#"{"epoch":9223372036854775808,"at":"2026-12-06T10:00:00.000Z"}"#,
            r#"{"epoch":1}"#,
        ] {
            assert!(matches!(sync(6, bad), Err(Error::Malformed(_))), "{bad}");
        }
        assert!(matches!(sync(5, good), Err(Error::Malformed(_))));
    }
}
