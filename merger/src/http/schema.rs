//! The JSON shapes of the API as OpenAPI schemas ([`super::openapi`]), for what the merger's
//! own types cannot derive: the protocol bodies defined in `tally-crdt` (a `no_std` crate that
//! knows nothing of OpenAPI) and the scalars with rules of their own.
//!
//! The structs here are descriptions, never built: each mirrors the JSON that the
//! `tally-crdt` type of the same name reads or writes (`shared/src/sync.rs`; the rules in
//! `validate.rs`), with the same field names, and `#[serde(deny_unknown_fields)]` where that
//! type refuses unknown fields. They derive `Deserialize` only so that the `serde` attributes
//! shape the schema as they shape the real decoder. `tests/openapi.rs` checks real answers
//! against them.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::json;
use utoipa::openapi::{RefOr, schema::Schema};
use utoipa::{PartialSchema, ToSchema};

/// A schema written as JSON Schema text: exact (an integer bound of 2^64 - 1 stays an
/// integer), and read like the document it ends up in.
fn from_json(schema: serde_json::Value) -> RefOr<Schema> {
    serde_json::from_value(schema).expect("the schemas of this module are valid OpenAPI schemas")
}

/// Declares a scalar schema: a named component whose JSON Schema is written out.
macro_rules! scalar {
    ($(#[$doc:meta])* $name:ident => $schema:tt) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy)]
        pub struct $name;

        impl PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                from_json(json!($schema))
            }
        }

        impl ToSchema for $name {
            fn name() -> Cow<'static, str> {
                Cow::Borrowed(stringify!($name))
            }
        }
    };
}

scalar!(
    /// `tally_crdt::Count`: a JSON integer while `|count| < 2^53`, a decimal string beyond.
    Count => {
        "description": "A count: a JSON integer when |count| < 2^53 (exact in every JSON parser), a decimal string beyond, so no client rounds it silently.",
        "oneOf": [
            {"type": "integer", "minimum": -9_007_199_254_740_991_i64, "maximum": 9_007_199_254_740_991_i64},
            {"type": "string", "pattern": "^-?[0-9]+$"}
        ],
        "examples": [715, "36893488147419103230"]
    }
);

/// The value of an import (`ImportBody::count`): what the merger's decoder takes, exactly. A
/// JSON integer in `-2^63..=2^64-1` (serde_json reads integers as `i64` or `u64`; one beyond
/// is a float, which is refused), or a decimal string with an optional sign and leading zeros
/// whose magnitude is at most `2^64 - 1` (one slot's half). A negative value is for a gauge
/// only (a rule across the path and the body that JSON Schema cannot say: `422
/// invalid_import` names it).
#[derive(Debug, Clone, Copy)]
pub struct ImportCount;

impl PartialSchema for ImportCount {
    fn schema() -> RefOr<Schema> {
        from_json(json!({
            "description": "The value to import: a JSON integer, or a decimal string (optional sign, \
                past 2^53 where JSON parsers round) whose magnitude is at most 2^64 - 1. \
                Negative only into a gauge (422 invalid_import for a counter).",
            "oneOf": [
                {"type": "integer", "minimum": i64::MIN, "maximum": u64::MAX},
                {"type": "string", "pattern": format!("^[+-]?0*{}$", at_most(u64::MAX))}
            ],
            "examples": [1_500_000, "18446744073709551615", -40]
        }))
    }
}

impl ToSchema for ImportCount {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("ImportCount")
    }
}

/// A milestone's N (`NewMilestone::n`): 1 to 2^64 - 1, a JSON integer or a decimal string
/// (optional `+`, leading zeros), exactly what the route takes.
#[derive(Debug, Clone, Copy)]
pub struct MilestoneN;

impl PartialSchema for MilestoneN {
    fn schema() -> RefOr<Schema> {
        let positive = at_most(u64::MAX).replacen("(0|", "(", 1);
        from_json(json!({
            "description": "The ordinal that wins: 1 to 2^64 - 1, a JSON integer or a decimal string (past 2^53, where JSON parsers round).",
            "oneOf": [
                {"type": "integer", "minimum": 1, "maximum": u64::MAX},
                {"type": "string", "pattern": format!("^[+]?0*{positive}$")}
            ],
            "examples": [1_000_000, "100000000000"]
        }))
    }
}

impl ToSchema for MilestoneN {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("MilestoneN")
    }
}

/// A regular expression (without anchors) matching exactly the decimal numbers `0..=max`
/// written without leading zeros: the shorter ones, then for each digit of `max` those that
/// share its digits before and have a smaller one there, then `max` itself.
fn at_most(max: u64) -> String {
    let digits: Vec<u32> = max
        .to_string()
        .chars()
        .filter_map(|c| c.to_digit(10))
        .collect();
    let len = digits.len();
    let mut branches = vec!["0".to_owned()];
    if len > 1 {
        branches.push(format!("[1-9][0-9]{{0,{}}}", len - 2));
    }
    for (i, &digit) in digits.iter().enumerate() {
        let lowest = u32::from(i == 0);
        if digit > lowest {
            let prefix: String = digits[..i].iter().map(|d| d.to_string()).collect();
            let rest = len - i - 1;
            let tail = if rest > 0 {
                format!("[0-9]{{{rest}}}")
            } else {
                String::new()
            };
            branches.push(format!("{prefix}[{lowest}-{}]{tail}", digit - 1));
        }
    }
    branches.push(max.to_string());
    format!("({})", branches.join("|"))
}

scalar!(
    /// `tally_crdt::Timestamp` as tally writes it: RFC 3339 UTC with milliseconds.
    Timestamp => {
        "description": "A time, RFC 3339 UTC with exactly three fractional digits (Unix milliseconds).",
        "type": "string",
        "format": "date-time",
        "examples": ["2030-10-10T12:11:42.000Z"]
    }
);

scalar!(
    /// A counter id: 1-128 of `A-Z a-z 0-9 - _ . :`, starting with a letter or digit.
    CounterId => {
        "description": "A counter id: 1-128 of A-Z a-z 0-9 - _ . : starting with a letter or digit.",
        "type": "string",
        "minLength": 1,
        "maxLength": 128,
        "pattern": "^[A-Za-z0-9][A-Za-z0-9._:-]*$",
        "examples": ["home"]
    }
);

scalar!(
    /// `tally_crdt::CounterKind` on the wire.
    CounterKind => {
        "description": "The counter's kind: g (increment-only counter, /v1/counters) or pn (up-and-down gauge, /v1/gauges).",
        "type": "string",
        "enum": ["g", "pn"]
    }
);

scalar!(
    /// The namespace of a counter route: `counters` (kind `g`) or `gauges` (kind `pn`).
    Namespace => {
        "description": "counters (increment-only, kind g) or gauges (up and down, kind pn); the same id in each is a different counter. Any other namespace is 404 not_found.",
        "type": "string",
        "enum": ["counters", "gauges"]
    }
);

scalar!(
    /// `tally_crdt::ReplicaId`: 32 hex digits, not all zeros.
    ReplicaId => {
        "description": "A replica incarnation: 32 hex digits (either case), not all zeros.",
        "type": "string",
        "pattern": "^(?!0{32}$)[0-9A-Fa-f]{32}$",
        "examples": ["6f1c0a4e9d2b47a8b3c5d7e9f1a2b3c4"]
    }
);

scalar!(
    /// A region name: 1-64 of `A-Z a-z 0-9 - _`.
    Region => {
        "description": "A region name: 1-64 of A-Z a-z 0-9 - _.",
        "type": "string",
        "minLength": 1,
        "maxLength": 64,
        "pattern": "^[A-Za-z0-9_-]+$",
        "examples": ["eu-west"]
    }
);

scalar!(
    /// A slot total: `0..=2^64-1`.
    Uint64 => {"type": "integer", "minimum": 0, "maximum": 18_446_744_073_709_551_615_u64}
);

scalar!(
    /// A sum of slot totals: `0..=2^128-1`.
    Uint128 => {"type": "integer", "minimum": 0}
);

scalar!(
    /// The protocol versions a sync may speak (`MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION`).
    SyncVersion => {
        "description": "Protocol version: 6 when a counter carries a `cut`, 5 when one carries a `frame`, 4 when one carries `carried`, 3 when one carries `visits`, else 2 (the same shape without them), or 1 from an old edge (all or nothing, see docs/protocol.md). Visits in a sync of version 1 or 2, a carry in one below 4, a frame in one below 5, or a cut in one below 6, refuse it whole (`malformed_body`).",
        "type": "integer",
        "enum": [1, 2, 3, 4, 5, 6]
    }
);

scalar!(
    /// The protocol versions of reads, retirements, presence and sketches, which exist since
    /// version 2 and have the same shape in versions 3 to 6.
    Version2 => {"description": "Protocol version 2, 3, 4, 5 or 6 (the same shape); the answer carries the request's.", "type": "integer", "enum": [2, 3, 4, 5, 6]}
);

scalar!(
    /// A presence report's lease, `1..=MAX_PRESENCE_TTL_MS`.
    PresenceTtl => {
        "description": "How long the counts hold, in milliseconds: 1 to 3600000 (one hour).",
        "type": "integer",
        "minimum": 1,
        "maximum": 3_600_000
    }
);

scalar!(
    /// `tally_crdt::Day`: a UTC day.
    Day => {
        "description": "A UTC day, YYYY-MM-DD.",
        "type": "string",
        "format": "date",
        "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$",
        "examples": ["2026-12-03"]
    }
);

scalar!(
    /// `tally_crdt::HyperLogLog` on the wire: its compact form in URL-safe base64.
    Sketch => {
        "description": "A HyperLogLog sketch (precision 12): its wire form (version, precision, encoding, then 3 bytes per set register while sparse, or 6-bit registers packed once dense) in URL-safe base64 without padding. See docs/protocol.md.",
        "type": "string",
        "pattern": "^[A-Za-z0-9_-]+$",
        "examples": ["AQwA"]
    }
);

/// `tally_crdt::PresenceReport`: an edge object's live-session counts.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PresenceReport {
    /// Protocol version.
    #[schema(value_type = Version2)]
    pub version: u32,
    /// The reporting object (one id per storage lifetime).
    #[schema(value_type = ReplicaId)]
    pub reporter: String,
    /// The region the object serves.
    #[schema(value_type = Region)]
    pub region: String,
    /// Grows with every report of this reporter; a report with a `seq` not above the stored
    /// one changes nothing.
    #[schema(value_type = Uint64)]
    pub seq: u64,
    /// When the counts were taken (a time after the merger's receipt counts as the receipt).
    #[schema(value_type = Timestamp)]
    pub at: String,
    /// The counts hold until `at + ttl_ms`.
    #[schema(value_type = PresenceTtl)]
    pub ttl_ms: u64,
    /// Per presence id, the object's live sessions now: at most 1000 ids, each once.
    #[schema(max_items = 1000)]
    pub counts: Vec<PresenceCount>,
}

/// `tally_crdt::PresenceCount`: one id's live sessions in a report.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PresenceCount {
    /// The presence id.
    #[schema(value_type = CounterId)]
    pub id: String,
    /// Live sessions (0: none any more).
    #[schema(value_type = Uint64)]
    pub count: u64,
}

/// `tally_crdt::PresenceRead`: viewers now of some ids; writes nothing.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PresenceRead {
    /// Protocol version.
    #[schema(value_type = Version2)]
    pub version: u32,
    /// The asking reporter, whose recorded count each answer carries; without it, 0.
    #[serde(default)]
    #[schema(value_type = Option<ReplicaId>)]
    pub reporter: Option<String>,
    /// The presence ids: at most 1000, each once.
    #[schema(max_items = 1000, value_type = Vec<CounterId>)]
    pub ids: Vec<String>,
}

/// `tally_crdt::PresenceResponse`: one total per id, in the request's order.
#[derive(Debug, Deserialize, ToSchema)]
pub struct PresenceResponse {
    /// Protocol version.
    #[schema(value_type = Version2)]
    pub version: u32,
    /// One per id of the request.
    pub presence: Vec<PresenceTotal>,
}

/// `tally_crdt::PresenceTotal`: one id's viewers now.
#[derive(Debug, Deserialize, ToSchema)]
pub struct PresenceTotal {
    /// The presence id.
    #[schema(value_type = CounterId)]
    pub id: String,
    /// The sum of the fresh reports of every reporter.
    #[schema(value_type = Uint64)]
    pub count: u64,
    /// The asking reporter's count among them (0 without a fresh report).
    #[schema(value_type = Uint64)]
    pub recorded: u64,
    /// The newest fresh report's time; `null` when none is fresh.
    #[schema(value_type = Option<Timestamp>, required)]
    pub updated_at: Option<String>,
}

/// `tally_crdt::SketchSync`: the registers of an edge object's sketches that grew.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SketchSync {
    /// Protocol version.
    #[schema(value_type = Version2)]
    pub version: u32,
    /// The syncing object.
    #[schema(value_type = ReplicaId)]
    pub replica: String,
    /// Its region.
    #[schema(value_type = Region)]
    pub region: String,
    /// At most 100 sketches, each key once.
    #[schema(max_items = 100)]
    pub sketches: Vec<SketchUpdate>,
}

/// `tally_crdt::SketchUpdate`: one sketch's grown registers.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SketchUpdate {
    /// The unique id.
    #[schema(value_type = CounterId)]
    pub id: String,
    /// The UTC day of a daily sketch; absent for the all-time one.
    #[serde(default)]
    #[schema(value_type = Option<Day>)]
    pub day: Option<String>,
    /// The registers that grew, as a sketch of precision 12.
    #[schema(value_type = Sketch)]
    pub registers: String,
}

/// `tally_crdt::SketchKey`: which sketch.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SketchKey {
    /// The unique id.
    #[schema(value_type = CounterId)]
    pub id: String,
    /// The UTC day of a daily sketch; absent for the all-time one.
    #[serde(default)]
    #[schema(value_type = Option<Day>)]
    pub day: Option<String>,
}

/// `tally_crdt::SketchRead`: merged sketches; writes nothing.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SketchRead {
    /// Protocol version.
    #[schema(value_type = Version2)]
    pub version: u32,
    /// At most 100 sketches, each once.
    #[schema(max_items = 100)]
    pub sketches: Vec<SketchKey>,
}

/// `tally_crdt::SketchResponse`: one merged sketch per key, in the request's order.
#[derive(Debug, Deserialize, ToSchema)]
pub struct SketchResponse {
    /// Protocol version.
    #[schema(value_type = Version2)]
    pub version: u32,
    /// One per key of the request.
    pub sketches: Vec<SketchTotal>,
}

/// `tally_crdt::SketchTotal`: one merged sketch.
#[derive(Debug, Deserialize, ToSchema)]
pub struct SketchTotal {
    /// The unique id.
    #[schema(value_type = CounterId)]
    pub id: String,
    /// The UTC day of a daily sketch; absent for the all-time one.
    #[serde(default)]
    #[schema(value_type = Option<Day>)]
    pub day: Option<String>,
    /// The merged sketch (empty for a key never synced).
    #[schema(value_type = Sketch)]
    pub sketch: String,
    /// Its last change; `null` for a key never synced.
    #[schema(value_type = Option<Timestamp>, required)]
    pub updated_at: Option<String>,
}

/// Every error the API answers: `{"error": {"code", "message"}}`.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(as = ErrorResponse)]
#[serde(deny_unknown_fields)]
pub struct ErrorResponse {
    /// The error.
    pub error: ErrorBody,
}

/// `tally_crdt::ErrorBody`: a stable code and a message for people.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    /// Stable, machine-readable (`malformed_body`, `missing_token`, ...; docs/protocol.md lists
    /// them all).
    #[schema(examples("malformed_body"))]
    pub code: String,
    /// For people.
    pub message: String,
}

/// `tally_crdt::SyncRequest`: an edge replica's slot totals.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SyncRequest {
    /// Protocol version.
    #[schema(value_type = SyncVersion)]
    pub version: u32,
    /// The sending replica incarnation.
    #[schema(value_type = ReplicaId)]
    pub replica: String,
    /// The region the replica serves.
    #[schema(value_type = Region)]
    pub region: String,
    /// The replica's totals of each counter that changed: at most 1000, each `(id, kind)` once.
    #[schema(max_items = 1000)]
    pub counters: Vec<SlotUpdate>,
}

/// `tally_crdt::SlotUpdate`: the sender's totals of one counter.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SlotUpdate {
    /// The counter's id.
    #[schema(value_type = CounterId)]
    pub id: String,
    /// The counter's kind.
    #[schema(value_type = CounterKind)]
    pub kind: String,
    /// The replica's total of increments.
    #[schema(value_type = Uint64)]
    pub p: u64,
    /// The replica's total of decrements; absent means 0. Must be 0 for kind `g`: a version-2
    /// sync answers that counter alone with `decrement_on_counter`, version 1 refuses the sync.
    #[serde(default)]
    #[schema(value_type = Uint64)]
    pub n: u64,
    /// Hits of this slot that carried a visitor key (kind `g` only, sent while the counter
    /// is near a milestone; protocol version 3); absent otherwise. At most 32: more, or a bad
    /// one, gets the counter answered alone with `invalid_visit` (the sync is accepted, so
    /// neither is a rule of this schema).
    #[serde(default)]
    pub visits: Vec<Visit>,
    /// Protocol version 4: the sums of the final slots of the sender object's earlier
    /// incarnations (the generations below the sender's) for this counter; absent for none.
    /// The merger keeps the largest it is sent per object and counter, so a merger restored
    /// from an old backup gets back what those incarnations counted. `n` must be 0 for kind
    /// `g`.
    #[serde(default)]
    pub carried: SlotTotals,
    /// Protocol version 5: the frame `carried` counts in, when the object rebased its carry
    /// of this counter (a counter nobody counts any more: what it carried is `reclaimed`,
    /// and its carry starts again from zero); absent for frame 0. A rebase changes no count.
    #[serde(default)]
    #[schema(schema_with = optional_frame)]
    pub frame: Option<Frame>,
    /// Protocol version 6: the sender object's share of the counter's last reset, as a
    /// merger told it; absent until one did.
    #[serde(default)]
    #[schema(schema_with = optional_cut)]
    pub cut: Option<Cut>,
}

/// [`SlotUpdate::cut`]'s schema: a [`Cut`] or none, with none as its example (a cut is
/// refused in the versions before 6, and an example sync is of the first version).
fn optional_cut() -> RefOr<Schema> {
    from_json(json!({
        "oneOf": [{"type": "null"}, {"$ref": "#/components/schemas/Cut"}],
        "description": "Protocol version 6: the sender object's share of the counter's last reset or delete, as a merger told it in a sync answer: the epoch it began, whether it was a delete and when, and what the object had counted of the counter then. A merger at an earlier epoch (restored from a backup older than the reset) starts that epoch, cutting everything it holds, and raises the object's share of the cut to `totals`; absent until a merger told one.",
        "examples": [null]
    }))
}

/// `tally_crdt::Cut`: an edge object's share of its counter's last reset.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Cut {
    /// The epoch the reset began (at least 1).
    #[schema(minimum = 1, maximum = 9_223_372_036_854_775_807_u64)]
    pub epoch: u64,
    /// The reset was a delete; absent for a reset.
    #[serde(default)]
    pub deleted: bool,
    /// When it happened: RFC 3339 (a schema of its own, without the `Timestamp` example,
    /// which would make the examples phase build a cut into syncs of every version).
    #[schema(value_type = String, format = DateTime)]
    pub at: String,
    /// What the object had counted of the counter then; absent for nothing. `n` must be 0
    /// for kind `g`.
    #[serde(default)]
    pub totals: GlobalTotals,
}

/// [`SlotUpdate::frame`]'s schema: a [`Frame`] or none, with none as its example (a frame is
/// refused in the versions before 5, and an example sync is of the first version).
fn optional_frame() -> RefOr<Schema> {
    from_json(json!({
        "oneOf": [{"type": "null"}, {"$ref": "#/components/schemas/Frame"}],
        "description": "Protocol version 5: the frame `carried` counts in, when the object rebased its carry of this counter (a counter nobody counts any more: what it carried is `reclaimed`, and its carry starts again from zero); absent for frame 0. A rebase changes no count.",
        "examples": [null]
    }))
}

/// `tally_crdt::Frame`: a carry rebased into a later frame.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Frame {
    /// The frame: the counter's epoch when the object rebased (at least 1).
    #[schema(minimum = 1, maximum = 18_446_744_073_709_551_615_u64)]
    pub epoch: u64,
    /// What the object carried then; absent for none. `n` must be 0 for kind `g`.
    #[serde(default)]
    pub reclaimed: SlotTotals,
}

/// `tally_crdt::Visit`: a hit holding units `end - delta + 1 ..= end` of the slot, and the
/// visitor key it carried. Its rules (`1 <= delta <= end <= p`, a key of 1 to 64 printable
/// ASCII characters) are the counter's: one broken gets that counter answered alone with
/// `invalid_visit` in a sync that is accepted, so this schema states only the shape.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Visit {
    /// The slot's total of increments right after the hit (at most `p`).
    #[schema(value_type = Uint64)]
    pub end: u64,
    /// The hit's delta (1 to `end`).
    #[schema(minimum = 0, maximum = 4_294_967_295_u64)]
    pub delta: u32,
    /// The client's opaque key: 1 to 64 printable ASCII characters.
    pub visitor: String,
}

/// `tally_crdt::MilestoneNews`: a counter's milestones as a sync answer tells them.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MilestoneNews {
    /// The lowest milestone still pending; absent when none is.
    #[serde(default)]
    #[schema(value_type = Option<Uint64>)]
    pub next: Option<u64>,
    /// The milestones won in the last minute (or by this commit), by N; absent when none.
    #[serde(default)]
    pub won: Vec<MilestoneWon>,
}

/// `tally_crdt::MilestoneWon`: unit `unit` of replica `replica`'s slot got ordinal `n`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MilestoneWon {
    /// The milestone.
    #[schema(value_type = Uint64)]
    pub n: u64,
    /// Its label; absent without one.
    #[serde(default)]
    pub label: Option<String>,
    /// The replica of the winning hit.
    #[schema(value_type = ReplicaId)]
    pub replica: String,
    /// The unit of its slot.
    #[schema(value_type = Uint64)]
    pub unit: u64,
}

/// `tally_crdt::SyncResponse`: one answer per counter, in the request's order.
#[derive(Debug, Deserialize, ToSchema)]
pub struct SyncResponse {
    /// The version of the request answered.
    #[schema(value_type = SyncVersion)]
    pub version: u32,
    /// One answer per counter of the request (match them by `id` and `kind`).
    pub counters: Vec<SyncAnswer>,
}

/// `tally_crdt::SyncAnswer`: merged and committed, or rejected alone.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum SyncAnswer {
    /// Committed.
    Merged(MergedCounter),
    /// Refused, nothing of it committed; the sync's other counters are unaffected.
    Rejected(Rejection),
}

/// `tally_crdt::MergedCounter`: the global totals and the asking replica's recorded slot.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MergedCounter {
    /// The counter's id.
    #[schema(value_type = CounterId)]
    pub id: String,
    /// The counter's kind.
    #[schema(value_type = CounterKind)]
    pub kind: String,
    /// Sums over every replica's slot (after the last reset).
    pub global: GlobalTotals,
    /// The merger's copy of the asking replica's slot (zero for a read naming no replica).
    pub recorded: SlotTotals,
    /// The last change (a slot grew, or a reset); absent while nobody has hit the counter.
    #[serde(default)]
    #[schema(value_type = Timestamp)]
    pub updated_at: Option<String>,
    /// Resets so far; absent for 0.
    #[serde(default)]
    #[schema(value_type = Uint64)]
    pub epoch: u64,
    /// Sync answers of a counter (kind `g`) with milestones pending or won in the last
    /// minute: what the edge's exact path needs (docs/milestones.md); absent otherwise.
    #[serde(default)]
    pub milestones: Option<MilestoneNews>,
    /// Version-5 sync answers: the frame of the sender object's carry of this counter, when
    /// later than the one the sync sent (its `epoch` alone); absent otherwise.
    #[serde(default)]
    pub frame: Option<Frame>,
    /// Version-6 sync answers: the sender object's share of the counter's last reset, when
    /// the sync sent none or one of an earlier epoch; absent otherwise.
    #[serde(default)]
    pub cut: Option<Cut>,
}

/// `tally_crdt::Rejection`: a counter of a version-2 sync refused alone, with why.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rejection {
    /// The counter's id.
    #[schema(value_type = CounterId)]
    pub id: String,
    /// The counter's kind.
    #[schema(value_type = CounterKind)]
    pub kind: String,
    /// Why (`decrement_on_counter`).
    pub error: ErrorBody,
}

/// `tally_crdt::GlobalTotals`: sums of the halves over all slots.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GlobalTotals {
    /// Sum of the increment totals.
    #[schema(value_type = Uint128)]
    pub p: u128,
    /// Sum of the decrement totals; absent for 0.
    #[serde(default)]
    #[schema(value_type = Uint128)]
    pub n: u128,
}

/// `tally_crdt::SlotTotals`: one replica's slot.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SlotTotals {
    /// Total of increments.
    #[schema(value_type = Uint64)]
    pub p: u64,
    /// Total of decrements; absent for 0.
    #[serde(default)]
    #[schema(value_type = Uint64)]
    pub n: u64,
}

/// `tally_crdt::ReadRequest`: the edge's batch read.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadRequest {
    /// Protocol version.
    #[schema(value_type = Version2)]
    pub version: u32,
    /// The asking replica, whose recorded slot each answer carries; without it (or `null`),
    /// zero.
    #[serde(default)]
    #[schema(value_type = Option<ReplicaId>)]
    pub replica: Option<String>,
    /// The counters: at most 1000, each once.
    #[schema(max_items = 1000)]
    pub counters: Vec<CounterKey>,
}

/// `tally_crdt::CounterKey`: which counter.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CounterKey {
    /// The counter's id.
    #[schema(value_type = CounterId)]
    pub id: String,
    /// The counter's kind.
    #[schema(value_type = CounterKind)]
    pub kind: String,
}

/// `tally_crdt::ReadResponse`: one answer per counter asked, in the request's order.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ReadResponse {
    /// Protocol version.
    #[schema(value_type = Version2)]
    pub version: u32,
    /// One per counter asked; one nobody has hit has zero totals and no `updated_at`.
    pub counters: Vec<MergedCounter>,
}

/// `tally_crdt::RetireRequest`: an incarnation's slots are final.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetireRequest {
    /// Protocol version.
    #[schema(value_type = Version2)]
    pub version: u32,
    /// The incarnation retired.
    #[schema(value_type = ReplicaId)]
    pub replica: String,
}

/// `tally_crdt::RetireResponse`, once the retirement is durable.
#[derive(Debug, Deserialize, ToSchema)]
pub struct RetireResponse {
    /// Protocol version.
    #[schema(value_type = Version2)]
    pub version: u32,
    /// The incarnation retired.
    #[schema(value_type = ReplicaId)]
    pub replica: String,
    /// Slots folded into their object's carries by this request (0 when already retired).
    #[schema(value_type = Uint64)]
    pub folded: u64,
}

/// What `/healthz` and `/readyz` answer.
#[derive(Debug, Deserialize, ToSchema)]
pub struct Status {
    /// `ok` (alive) or `ready`.
    #[schema(examples("ok"))]
    pub status: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalar_schemas_keep_exact_integer_bounds() {
        let json = serde_json::to_value(Uint64::schema()).unwrap();
        assert_eq!(json["maximum"], json!(18_446_744_073_709_551_615_u64));
        let json = serde_json::to_value(Count::schema()).unwrap();
        assert_eq!(json["oneOf"][1]["pattern"], "^-?[0-9]+$");
        let json = serde_json::to_value(ImportCount::schema()).unwrap();
        assert_eq!(json["oneOf"][0]["minimum"], json!(i64::MIN));
        assert_eq!(json["oneOf"][0]["maximum"], json!(u64::MAX));
    }

    /// Whether the import pattern takes `text`.
    fn pattern_takes(text: &str) -> bool {
        let json = serde_json::to_value(ImportCount::schema()).unwrap();
        let pattern = json["oneOf"][1]["pattern"].as_str().unwrap().to_owned();
        regex::Regex::new(&pattern).unwrap().is_match(text)
    }

    /// What the import handler takes from a string: `Count`'s parse, then a magnitude that
    /// fits a slot.
    fn handler_takes(text: &str) -> bool {
        text.parse::<i128>()
            .is_ok_and(|v| u64::try_from(v.unsigned_abs()).is_ok())
    }

    #[test]
    fn the_import_pattern_takes_exactly_the_magnitudes_one_slot_holds() {
        for text in [
            "0",
            "-0",
            "+7",
            "007",
            "9",
            "10",
            "9007199254740992",
            "9999999999999999999",
            "10000000000000000000",
            "18446744073709551609",
            "18446744073709551614",
            "18446744073709551615",
            "-18446744073709551615",
            "000018446744073709551615",
            "18446744073709551616",
            "18446744073709551620",
            "18446744073709552000",
            "19000000000000000000",
            "99999999999999999999",
            "100000000000000000000",
            "",
            "-",
            "+",
            "1.0",
            "1e3",
            " 1",
            "--1",
            "0x10",
        ] {
            assert_eq!(pattern_takes(text), handler_takes(text), "{text:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn the_import_pattern_agrees_with_the_handler(
            digits in "[+-]?0{0,2}[0-9]{1,21}",
            near in 0_u64..2_000,
        ) {
            proptest::prop_assert_eq!(pattern_takes(&digits), handler_takes(&digits));
            // Around 2^64 - 1, where the branches meet.
            for text in [
                (u128::from(u64::MAX) - u128::from(near)).to_string(),
                (u128::from(u64::MAX) + u128::from(near)).to_string(),
            ] {
                proptest::prop_assert_eq!(pattern_takes(&text), handler_takes(&text));
            }
        }
    }
}
