//! [`Error`]: every way a counter operation or a sync body can be refused.

use alloc::string::String;

use crate::{CounterKind, ReplicaId};

/// Every way a counter operation or a sync body can be refused.
///
/// Each violation is its own variant, with a stable machine-readable [`Error::code`] that the
/// edge and the merger put in their JSON error bodies (`{"error":{"code","message"}}`), and a
/// message (`Display`) that names the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Adding to a slot would take it past `u64::MAX`; the slot is unchanged.
    #[error("slot of replica {replica} is at {current}; adding {by} would pass u64::MAX")]
    SlotOverflow {
        /// The replica whose slot would overflow.
        replica: ReplicaId,
        /// The slot's value, unchanged.
        current: u64,
        /// The amount that was refused.
        by: u64,
    },
    /// A computed value does not fit in its type (never reached by sums of `u64` slots, which
    /// are `u128`/`i128`; kept so arithmetic on them is checked rather than wrapping).
    #[error("value does not fit in its type")]
    ValueOutOfRange,
    /// A replica id is not 32 hex digits.
    #[error("replica id must be 32 hex digits")]
    InvalidReplicaId,
    /// The sync's replica id is the reserved nil id.
    #[error("replica id is the reserved nil id (all zeros)")]
    NilReplica,
    /// A counter id is empty.
    #[error("counter id is empty")]
    EmptyId,
    /// A counter id is longer than [`MAX_ID_LEN`](crate::MAX_ID_LEN) bytes.
    #[error("counter id is {len} bytes long; the limit is {max}")]
    IdTooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A counter id has a byte outside the allowed set, or does not start with a letter or
    /// digit.
    #[error(
        "counter id has a disallowed character at byte {at}: ids are ASCII letters, digits and \
         `-_.:`, starting with a letter or digit"
    )]
    IdBadChar {
        /// Byte offset of the first offending byte.
        at: usize,
    },
    /// A region name is empty, too long, or has a byte outside `[A-Za-z0-9_-]`.
    #[error(
        "region must be 1 to {max} ASCII letters, digits, `-` or `_`",
        max = crate::MAX_REGION_LEN
    )]
    InvalidRegion,
    /// The sync speaks a protocol version this side does not.
    #[error("protocol version {got} is not supported; this side speaks version {supported}")]
    UnsupportedVersion {
        /// The version in the request.
        got: u64,
        /// The version this side speaks.
        supported: u32,
    },
    /// The sync carries more counters than [`MAX_COUNTERS_PER_SYNC`](crate::MAX_COUNTERS_PER_SYNC).
    #[error("sync carries {got} counters; the limit is {max}")]
    TooManyCounters {
        /// The number in the request.
        got: usize,
        /// The limit.
        max: usize,
    },
    /// The same counter (id and kind) appears twice in one sync.
    #[error("counter {id:?} of kind {kind} appears more than once in the sync")]
    DuplicateCounter {
        /// The counter id.
        id: String,
        /// Its kind.
        kind: CounterKind,
    },
    /// An increment-only counter (kind `g`) carries a decrement total.
    #[error("counter {id:?} is increment-only (kind g) but carries a decrement total n = {n}")]
    DecrementOnCounter {
        /// The counter id.
        id: String,
        /// The refused decrement total.
        n: u64,
    },
    /// A time that is not RFC 3339 (`2030-10-10T12:11:42.000Z`) or outside years 0000-9999.
    #[error("not an RFC 3339 time (e.g. 2030-10-10T12:11:42.000Z) within years 0000-9999")]
    InvalidTime,
    /// A counter key that is not `g:<id>` or `pn:<id>`.
    #[error("not a counter key: expected g:<id> or pn:<id>")]
    InvalidKey,
    /// A day is not `YYYY-MM-DD`, a real date of years 0000-9999.
    #[error("not a UTC day (e.g. 2030-10-10)")]
    InvalidDay,
    /// An id appears twice in a presence report or a sketch sync.
    #[error("id {id:?} appears more than once")]
    DuplicateId {
        /// The id.
        id: String,
    },
    /// A presence report's lease is zero or longer than
    /// [`MAX_PRESENCE_TTL_MS`](crate::MAX_PRESENCE_TTL_MS).
    #[error("presence ttl_ms {got} is out of range: 1..={max}")]
    PresenceTtlOutOfRange {
        /// The ttl received.
        got: u64,
        /// The limit.
        max: u64,
    },
    /// A receipt that is not one the key made for this counter (see
    /// `Receipt`).
    #[error("not a receipt of this counter")]
    InvalidReceipt,
    /// A visitor key, or a sync's visit, that breaks a rule (named in the message).
    #[error("invalid visit: {0}")]
    InvalidVisit(String),
    /// The body is not a well-formed sync request (bad JSON, wrong types, missing or unknown
    /// fields). The message is the decoder's.
    #[error("malformed body: {0}")]
    Malformed(String),
    /// A HyperLogLog precision outside
    /// [`MIN_PRECISION`](crate::HyperLogLog::MIN_PRECISION)`..=`[`MAX_PRECISION`](crate::HyperLogLog::MAX_PRECISION),
    /// or a downsampling target above the sketch's own precision.
    #[error(
        "HyperLogLog precision {got} is not allowed here (precisions are {min}..={max}, and a \
         sketch can only be downsampled to a lower one)",
        min = crate::HyperLogLog::MIN_PRECISION,
        max = crate::HyperLogLog::MAX_PRECISION
    )]
    HllInvalidPrecision {
        /// The refused precision.
        got: u8,
    },
    /// Two HyperLogLog sketches (or a sketch and a register list) of different precisions were
    /// merged. Nothing is changed; [`downsample`](crate::HyperLogLog::downsample) the finer one
    /// first if a coarser union is what is wanted.
    #[error(
        "HyperLogLog precisions differ: this sketch has {ours}, the other {theirs}; downsample \
         the finer one first"
    )]
    HllPrecisionMismatch {
        /// The precision of the sketch merged into.
        ours: u8,
        /// The precision of what was merged.
        theirs: u8,
    },
    /// A HyperLogLog wire form of a version this side does not read.
    #[error("HyperLogLog wire version {got} is not supported; this side reads version {supported}")]
    HllUnsupportedVersion {
        /// The version byte received.
        got: u8,
        /// The version this side reads and writes.
        supported: u8,
    },
    /// A HyperLogLog wire form whose encoding byte is neither sparse (0) nor dense (1).
    #[error("HyperLogLog encoding {got} is unknown: 0 is sparse, 1 is dense")]
    HllUnknownEncoding {
        /// The encoding byte received.
        got: u8,
    },
    /// A HyperLogLog wire form of the wrong length: shorter than its 3-byte header, a sparse
    /// body that is not whole 3-byte entries, or a dense body that is not exactly 3·2^p/4 bytes.
    #[error("HyperLogLog wire form of {got} bytes has the wrong length for its header")]
    HllBadLength {
        /// The length received, header included.
        got: usize,
    },
    /// A HyperLogLog register outside the sketch: an index at or past 2^p, or a rank above
    /// 65 - p (the largest a 64-bit hash can give), or a rank 0 listed as a set register.
    #[error("HyperLogLog register {index} with rank {rank} is out of range for this precision")]
    HllRegisterOutOfRange {
        /// The register index.
        index: u32,
        /// The rank (register value).
        rank: u8,
    },
    /// A sparse HyperLogLog wire form whose register indexes are not strictly increasing
    /// (unsorted, or a register listed twice).
    #[error("sparse HyperLogLog register {index} is out of order or listed twice")]
    HllUnsortedSparse {
        /// The first index that is not greater than the one before it.
        index: u32,
    },
}

impl Error {
    /// A stable, machine-readable name for this error, for JSON error bodies and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Error::SlotOverflow { .. } => "slot_overflow",
            Error::ValueOutOfRange => "value_out_of_range",
            Error::InvalidReplicaId => "invalid_replica_id",
            Error::NilReplica => "nil_replica",
            Error::EmptyId => "empty_id",
            Error::IdTooLong { .. } => "id_too_long",
            Error::IdBadChar { .. } => "id_bad_char",
            Error::InvalidRegion => "invalid_region",
            Error::UnsupportedVersion { .. } => "unsupported_version",
            Error::TooManyCounters { .. } => "too_many_counters",
            Error::DuplicateCounter { .. } => "duplicate_counter",
            Error::DecrementOnCounter { .. } => "decrement_on_counter",
            Error::InvalidTime => "invalid_time",
            Error::InvalidKey => "invalid_key",
            Error::Malformed(_) => "malformed_body",
            Error::InvalidDay => "invalid_day",
            Error::InvalidReceipt => "invalid_receipt",
            Error::InvalidVisit(_) => "invalid_visit",
            Error::DuplicateId { .. } => "duplicate_id",
            Error::PresenceTtlOutOfRange { .. } => "presence_ttl_out_of_range",
            Error::HllInvalidPrecision { .. } => "hll_invalid_precision",
            Error::HllPrecisionMismatch { .. } => "hll_precision_mismatch",
            Error::HllUnsupportedVersion { .. } => "hll_unsupported_version",
            Error::HllUnknownEncoding { .. } => "hll_unknown_encoding",
            Error::HllBadLength { .. } => "hll_bad_length",
            Error::HllRegisterOutOfRange { .. } => "hll_register_out_of_range",
            Error::HllUnsortedSparse { .. } => "hll_unsorted_sparse",
        }
    }
}
