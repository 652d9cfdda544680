//! CRDT counters and the sync protocol of tally, for the edge (wasm32) and the merger alike.
//!
//! tally counts hits at the edge in many replicas and merges them centrally. Each replica
//! owns one slot per counter; merging is "max per slot", which is commutative, associative
//! and idempotent, so replicas converge whatever order, duplication or delay their states
//! arrive with. This crate holds that algebra and the wire types, once, for both sides:
//!
//! - [`ReplicaId`] (`replica.rs`): one replica incarnation, unique per storage lifetime.
//! - [`CounterState`] (`lattice.rs`): one counter as the system holds it — live slots, the
//!   bases of retired replicas, the epoch and its cuts — with join, value, fold and reset: the
//!   lattice the merger holds and its stores persist, and whose [`Bound`] the edge and its
//!   clients keep.
//! - [`GCounter`] (`gcounter.rs`): grow-only, one `u64` slot per replica, value `u128`; and
//!   [`PNCounter`] (`pncounter.rs`): up and down, value `i128`. Both are views of a
//!   [`CounterState`] with its slots in one region: the same slots, join and value.
//! - [`SyncRequest`], [`SyncResponse`] and their parts (`sync.rs`): what an edge replica sends
//!   (its slot **totals**, so a retried sync changes nothing) and what the merger answers.
//! - [`check_counter_id`], [`SyncRequest::validate`] and the limits (`validate.rs`): the input
//!   rules both sides enforce, failing with one [`Error`] variant per violation (`error.rs`).
//! - [`CounterKey`] (`key.rs`): which counter (kind + id), with its wire, path and storage
//!   forms; [`Timestamp`] (`time.rs`): the one time type, with its one RFC 3339 form.
//! - [`ReadRequest`], [`ReadResponse`] (`sync.rs`): the merger's batch read for the edge.
//! - [`HyperLogLog`] (`hll.rs`): a mergeable sketch of distinct items (register-wise max),
//!   sparse while small, with a compact wire form and register deltas for syncing.
//! - [`PresenceReport`] and its answer (`presence.rs`): viewers now, as per-object counts of
//!   live sessions; [`SketchSync`] and its answer (`unique.rs`): unique visitors, as the grown
//!   registers of each object's sketches.
//! - [`Count`] (`count.rs`): a value as the public HTTP APIs write it (a JSON number below
//!   2^53, a decimal string beyond).
//! - `wasm.rs` (feature `wasm`): JavaScript bindings of the counters and the sketch.
//!
//! `#![no_std]` with `alloc`; it needs only `serde` (and `thiserror` without std), plus three
//! small no_std crates for the sketch: `xxhash-rust` (xxh3), `base64` and `libm` (`sqrt`).
//!
//! # Features
//!
//! - `json`: `SyncRequest::from_json`, decoding and validation in one call (pulls in
//!   `serde_json` without std).
//! - `wasm`: wasm-bindgen bindings `GCounter`, `PNCounter` and `HyperLogLog` for JavaScript
//!   (implies `json`).
//!
//! # Examples
//!
//! Two edge replicas count hits on the same page; the merger merges their syncs, and a
//! duplicated sync changes nothing:
//!
//! ```
//! use tally_crdt::{
//!     CounterKey, CounterKind, GCounter, ReplicaId, SlotTotals, SlotUpdate, SyncRequest,
//!     PROTOCOL_VERSION,
//! };
//!
//! let (paris, tokyo) = (ReplicaId::from_u128(1), ReplicaId::from_u128(2));
//!
//! // Each replica counts in its own slot...
//! let mut at_paris = GCounter::new();
//! at_paris.increment(paris, 3)?;
//! let mut at_tokyo = GCounter::new();
//! at_tokyo.increment(tokyo, 4)?;
//!
//! // ...and syncs its slot total (not the increments since last time).
//! let sync = SyncRequest {
//!     version: PROTOCOL_VERSION,
//!     replica: paris,
//!     region: "eu".into(),
//!     counters: vec![SlotUpdate {
//!         key: CounterKey::new(CounterKind::G, "home")?,
//!         totals: SlotTotals { p: at_paris.get(paris), n: 0 },
//!         visits: Vec::new(),
//!         carried: SlotTotals::default(),
//!         frame: None,
//!         cut: None,
//!     }],
//! };
//! sync.validate()?;
//!
//! // The merger applies syncs by max per slot: a duplicate is harmless.
//! let mut global = GCounter::new();
//! for _ in 0..2 {
//!     for c in &sync.counters {
//!         global.merge_slot(sync.replica, c.totals.p);
//!     }
//! }
//! global.merge(&at_tokyo);
//! assert_eq!(global.value(), 7);
//! # Ok::<(), tally_crdt::Error>(())
//! ```
#![cfg_attr(not(test), no_std)]
#![deny(missing_docs)]

extern crate alloc;

mod count;
mod error;
mod gcounter;
mod hll;
mod key;
mod lattice;
mod pncounter;
mod presence;
#[cfg(feature = "receipt")]
mod receipt;
mod replica;
mod sync;
mod time;
mod unique;
mod validate;
#[cfg(feature = "wasm")]
pub mod wasm;

pub use count::{Count, JSON_SAFE_MAX};
pub use error::Error;
pub use gcounter::GCounter;
pub use hll::HyperLogLog;
pub use key::CounterKey;
pub use lattice::{Base, Bound, Carry, CounterState, Epoch, ObjectCut, Region, Slot, Slots, minus};
pub use pncounter::PNCounter;
pub use presence::{
    MAX_PRESENCE_TTL_MS, PresenceCount, PresenceRead, PresenceReport, PresenceResponse,
    PresenceTotal,
};
#[cfg(feature = "receipt")]
pub use receipt::{RECEIPT_LEN, Receipt};
pub use replica::ReplicaId;
pub use sync::{
    CounterKind, Cut, ErrorBody, Frame, GlobalTotals, MAX_VISITOR_LEN, MAX_VISITS_PER_COUNTER,
    MIN_PROTOCOL_VERSION, MergedCounter, MilestoneNews, MilestoneWon, PREVIOUS_VERSION,
    PROTOCOL_VERSION, ReadRequest, ReadResponse, Rejection, RetireRequest, RetireResponse,
    SlotTotals, SlotUpdate, SyncAnswer, SyncRequest, SyncResponse, UNSYNCED_AGE_HEADER, Visit,
    check_visitor,
};
pub use time::{Day, Timestamp};
pub use unique::{
    MAX_SKETCHES_PER_SYNC, SketchKey, SketchRead, SketchResponse, SketchSync, SketchTotal,
    SketchUpdate,
};
pub use validate::{
    MAX_COUNTERS_PER_SYNC, MAX_ID_LEN, MAX_REGION_LEN, check_counter_id, check_region,
};
