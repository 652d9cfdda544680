//! JavaScript bindings (feature `wasm`): the same counters, the counter lattice and the
//! sketch, through wasm-bindgen.
//!
//! A thin layer with no logic of its own: replica ids are 32-hex-digit strings, amounts and
//! slot totals are `BigInt`s (a JS number is exact only up to 2^53), values are `BigInt`s or
//! decimal strings, errors are thrown as `Error` objects carrying the Rust message and its
//! stable `code` (`err.code`, e.g. `"slot_overflow"`, `"malformed_body"`; an amount outside
//! `0..=2^64-1` is a `RangeError` with code `"amount_out_of_range"`, never wrapped), and
//! `toJSON`/`fromJSON` use the same JSON as the Rust side. A `HyperLogLog`'s wire form
//! crosses as a `Uint8Array`.
//!
//! ```js
//! import { GCounter, HyperLogLog } from "tally-crdt";
//! const c = new GCounter();
//! c.increment("0000000000000000000000000000002a", 1n);
//! c.valueString(); // "1"
//! const visitors = new HyperLogLog(); // precision 12
//! visitors.insert("203.0.113.7");
//! visitors.estimate(); // 1n
//! ```

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use wasm_bindgen::prelude::*;

use crate::{Error, ReplicaId};

/// `error` with its stable `code` property, as the HTTP APIs name it.
fn with_code(error: js_sys::Error, code: &str) -> JsValue {
    let error = JsValue::from(error);
    // Setting a property on a fresh Error object cannot fail.
    let _ = js_sys::Reflect::set(&error, &JsValue::from_str("code"), &JsValue::from_str(code));
    error
}

/// A crate error as a thrown `Error` with the message and the code.
fn js_error(e: Error) -> JsValue {
    with_code(js_sys::Error::new(&e.to_string()), e.code())
}

/// A JSON error (`fromJSON`) as the crate's `malformed_body`.
fn json_error(e: serde_json::Error) -> JsValue {
    js_error(Error::Malformed(e.to_string()))
}

/// An amount from JavaScript: a `BigInt` in `0..=2^64-1`, else a `RangeError` (wasm-bindgen's
/// own `u64` argument would wrap it modulo 2^64).
fn amount(by: js_sys::BigInt) -> Result<u64, JsValue> {
    u64::try_from(by).map_err(|_| {
        with_code(
            js_sys::RangeError::new("an amount is a BigInt from 0n to 2n ** 64n - 1n").into(),
            "amount_out_of_range",
        )
    })
}

/// Slot totals from two amounts ([`amount`]).
fn totals(p: js_sys::BigInt, n: js_sys::BigInt) -> Result<crate::SlotTotals, JsValue> {
    Ok(crate::SlotTotals {
        p: amount(p)?,
        n: amount(n)?,
    })
}

fn replica(id: &str) -> Result<ReplicaId, JsValue> {
    id.parse::<ReplicaId>().map_err(js_error)
}

fn js(result: Result<u64, Error>) -> Result<u64, JsValue> {
    result.map_err(js_error)
}

/// A grow-only counter for JavaScript; see [`crate::GCounter`].
#[wasm_bindgen(js_name = GCounter)]
#[derive(Default)]
pub struct JsGCounter(crate::GCounter);

#[wasm_bindgen(js_class = GCounter)]
impl JsGCounter {
    /// An empty counter.
    #[wasm_bindgen(constructor)]
    pub fn new() -> JsGCounter {
        JsGCounter::default()
    }

    /// Adds `by` to the replica's slot; returns the new slot total. Throws on overflow or a
    /// bad replica id, leaving the counter unchanged.
    pub fn increment(&mut self, replica_id: &str, by: js_sys::BigInt) -> Result<u64, JsValue> {
        js(self.0.increment(replica(replica_id)?, amount(by)?))
    }

    /// The replica's own slot total.
    pub fn get(&self, replica_id: &str) -> Result<u64, JsValue> {
        Ok(self.0.get(replica(replica_id)?))
    }

    /// Merges `other` into this counter (max per slot).
    pub fn merge(&mut self, other: &JsGCounter) {
        self.0.merge(&other.0);
    }

    /// The value as a `BigInt`.
    pub fn value(&self) -> u128 {
        self.0.value()
    }

    /// The value as a decimal string.
    #[wasm_bindgen(js_name = valueString)]
    pub fn value_string(&self) -> String {
        self.0.value().to_string()
    }

    /// The state as JSON text (`{"<replica>": total, ...}`).
    #[wasm_bindgen(js_name = toJSON)]
    pub fn to_json(&self) -> Result<String, JsValue> {
        serde_json::to_string(&self.0).map_err(json_error)
    }

    /// A counter from JSON text made by `toJSON` (or the Rust side). Throws on bad JSON.
    #[wasm_bindgen(js_name = fromJSON)]
    pub fn from_json(json: &str) -> Result<JsGCounter, JsValue> {
        serde_json::from_str(json)
            .map(JsGCounter)
            .map_err(json_error)
    }
}

/// A counter that goes up and down for JavaScript; see [`crate::PNCounter`].
#[wasm_bindgen(js_name = PNCounter)]
#[derive(Default)]
pub struct JsPNCounter(crate::PNCounter);

#[wasm_bindgen(js_class = PNCounter)]
impl JsPNCounter {
    /// An empty counter.
    #[wasm_bindgen(constructor)]
    pub fn new() -> JsPNCounter {
        JsPNCounter::default()
    }

    /// Adds `by` to the replica's increment total; returns it. Throws on overflow.
    pub fn increment(&mut self, replica_id: &str, by: js_sys::BigInt) -> Result<u64, JsValue> {
        js(self.0.increment(replica(replica_id)?, amount(by)?))
    }

    /// Adds `by` to the replica's decrement total; returns it. Throws on overflow.
    pub fn decrement(&mut self, replica_id: &str, by: js_sys::BigInt) -> Result<u64, JsValue> {
        js(self.0.decrement(replica(replica_id)?, amount(by)?))
    }

    /// Merges `other` into this counter (max per slot in each half).
    pub fn merge(&mut self, other: &JsPNCounter) {
        self.0.merge(&other.0);
    }

    /// The value (may be negative) as a `BigInt`.
    pub fn value(&self) -> i128 {
        self.0.value()
    }

    /// The value as a decimal string.
    #[wasm_bindgen(js_name = valueString)]
    pub fn value_string(&self) -> String {
        self.0.value().to_string()
    }

    /// The state as JSON text (`{"p": {..}, "n": {..}}`).
    #[wasm_bindgen(js_name = toJSON)]
    pub fn to_json(&self) -> Result<String, JsValue> {
        serde_json::to_string(&self.0).map_err(json_error)
    }

    /// A counter from JSON text made by `toJSON` (or the Rust side). Throws on bad JSON.
    #[wasm_bindgen(js_name = fromJSON)]
    pub fn from_json(json: &str) -> Result<JsPNCounter, JsValue> {
        serde_json::from_str(json)
            .map(JsPNCounter)
            .map_err(json_error)
    }
}

/// One counter as tally holds it, for JavaScript: live slots, the bases of retired replicas,
/// the epoch and its cuts; see [`crate::CounterState`]. Its `join` is the merge every part of
/// tally runs.
#[wasm_bindgen(js_name = CounterState)]
#[derive(Debug, Default)]
pub struct JsCounterState(crate::CounterState);

#[wasm_bindgen(js_class = CounterState)]
impl JsCounterState {
    /// A counter nobody has counted.
    #[wasm_bindgen(constructor)]
    pub fn new() -> JsCounterState {
        JsCounterState::default()
    }

    /// Merges the slot totals `p`, `n` of `replicaId` (of `region`) by max, as a commit of a
    /// sync does. Returns whether the slot grew; a retired replica's slot never does.
    #[wasm_bindgen(js_name = mergeSlot)]
    pub fn merge_slot(
        &mut self,
        replica_id: &str,
        region: &str,
        p: js_sys::BigInt,
        n: js_sys::BigInt,
    ) -> Result<bool, JsValue> {
        let totals = totals(p, n)?;
        Ok(self
            .0
            .merge_slot(replica(replica_id)?, &crate::Region::from(region), totals))
    }

    /// Retires `replicaId` as the store does: the slots of its object's incarnations up to
    /// it (its low 32 bits are its generation, the rest its object) move into the object's
    /// carry. Returns whether it had a slot here.
    pub fn retire(&mut self, replica_id: &str) -> Result<bool, JsValue> {
        Ok(self.0.retire(replica(replica_id)?).is_some())
    }

    /// Merges the carry an object sends with a sync of `replicaId` (of `region`): `p`, `n`,
    /// the sums of the final slots of its object's incarnations before `replicaId`'s
    /// generation. Merged by max; the slots it holds go. Returns whether anything changed.
    #[wasm_bindgen(js_name = mergeCarry)]
    pub fn merge_carry(
        &mut self,
        replica_id: &str,
        region: &str,
        p: js_sys::BigInt,
        n: js_sys::BigInt,
    ) -> Result<bool, JsValue> {
        let sender = replica(replica_id)?;
        let carry = crate::Carry::sent(sender, crate::Region::from(region), totals(p, n)?, None);
        Ok(self.0.merge_carry(sender, &carry))
    }

    /// Starts a new epoch at `atMs` (ms since 1970; a delete if `deleted`): the count starts
    /// again from zero.
    pub fn reset(&mut self, at_ms: f64, deleted: bool) -> Result<(), JsValue> {
        if !(at_ms.is_finite() && at_ms.fract() == 0.0 && at_ms.abs() < 9.0e15) {
            return Err(with_code(
                js_sys::RangeError::new("a time is an integral number of milliseconds").into(),
                "amount_out_of_range",
            ));
        }
        #[allow(clippy::cast_possible_truncation, reason = "integral and below 2^53")]
        self.0
            .reset(crate::Timestamp::from_unix_ms(at_ms as i64), deleted);
        Ok(())
    }

    /// Merges another view of this counter into this one.
    pub fn join(&mut self, other: &JsCounterState) {
        self.0.join(&other.0);
    }

    /// Whether this view holds everything `other` does.
    pub fn dominates(&self, other: &JsCounterState) -> bool {
        self.0.dominates(&other.0)
    }

    /// The count in the current epoch as a `BigInt` (increments minus decrements).
    pub fn value(&self) -> i128 {
        let v = self.0.value();
        // Sums of u64 slots stay below 2^127.
        i128::try_from(v.p).unwrap_or(i128::MAX) - i128::try_from(v.n).unwrap_or(i128::MAX)
    }

    /// The count as a decimal string.
    #[wasm_bindgen(js_name = valueString)]
    pub fn value_string(&self) -> String {
        self.value().to_string()
    }

    /// Its resets so far.
    pub fn epoch(&self) -> u64 {
        self.0.epoch().number
    }
}

/// A HyperLogLog sketch of distinct items for JavaScript; see [`crate::HyperLogLog`].
#[wasm_bindgen(js_name = HyperLogLog)]
#[derive(Debug, Default)]
pub struct JsHyperLogLog(crate::HyperLogLog);

#[wasm_bindgen(js_class = HyperLogLog)]
impl JsHyperLogLog {
    /// An empty sketch of `2^precision` registers (default 12, 1.625 % standard error).
    /// Throws unless the precision is 4 to 18.
    #[wasm_bindgen(constructor)]
    pub fn new(precision: Option<u8>) -> Result<JsHyperLogLog, JsValue> {
        let p = precision.unwrap_or(crate::HyperLogLog::DEFAULT_PRECISION);
        crate::HyperLogLog::with_precision(p)
            .map(JsHyperLogLog)
            .map_err(js_error)
    }

    /// Adds a string (its UTF-8 bytes). Returns whether the sketch changed.
    pub fn insert(&mut self, item: &str) -> bool {
        self.0.insert(item.as_bytes())
    }

    /// Adds a byte string. Returns whether the sketch changed.
    #[wasm_bindgen(js_name = insertBytes)]
    pub fn insert_bytes(&mut self, item: &[u8]) -> bool {
        self.0.insert(item)
    }

    /// Merges `other` into this sketch (max per register); returns whether it changed.
    /// Throws, changing nothing, if the precisions differ.
    pub fn merge(&mut self, other: &JsHyperLogLog) -> Result<bool, JsValue> {
        self.0.merge(&other.0).map_err(js_error)
    }

    /// The estimated number of distinct items, as a `BigInt`.
    pub fn estimate(&self) -> u64 {
        self.0.estimate()
    }

    /// The relative standard error of the estimate, `1.04 / sqrt(2^precision)`.
    #[wasm_bindgen(js_name = relativeError)]
    pub fn relative_error(&self) -> f64 {
        self.0.relative_error()
    }

    /// The precision (the sketch has `2^precision` registers).
    pub fn precision(&self) -> u8 {
        self.0.precision()
    }

    /// Whether nothing was inserted.
    #[wasm_bindgen(js_name = isEmpty)]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Bytes the registers take in memory.
    #[wasm_bindgen(js_name = sizeInBytes)]
    pub fn size_in_bytes(&self) -> usize {
        self.0.size_in_bytes()
    }

    /// The compact wire form, as a `Uint8Array`.
    #[wasm_bindgen(js_name = toBytes)]
    pub fn to_bytes(&self) -> Vec<u8> {
        self.0.to_bytes()
    }

    /// A sketch from its wire form. Throws on any malformed input.
    #[wasm_bindgen(js_name = fromBytes)]
    pub fn from_bytes(bytes: &[u8]) -> Result<JsHyperLogLog, JsValue> {
        crate::HyperLogLog::from_bytes(bytes)
            .map(JsHyperLogLog)
            .map_err(js_error)
    }

    /// The sketch as JSON text: a string of URL-safe base64 of the wire form.
    #[wasm_bindgen(js_name = toJSON)]
    pub fn to_json(&self) -> Result<String, JsValue> {
        serde_json::to_string(&self.0).map_err(json_error)
    }

    /// A sketch from JSON text made by `toJSON` (or the Rust side). Throws on bad JSON.
    #[wasm_bindgen(js_name = fromJSON)]
    pub fn from_json(json: &str) -> Result<JsHyperLogLog, JsValue> {
        serde_json::from_str(json)
            .map(JsHyperLogLog)
            .map_err(json_error)
    }
}
