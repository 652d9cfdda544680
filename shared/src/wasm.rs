//! JavaScript bindings (feature `wasm`): the same counters, through wasm-bindgen.
//!
//! A thin layer with no logic of its own: replica ids are 32-hex-digit strings, amounts and
//! slot totals are `BigInt`s (a JS number is exact only up to 2^53), values are `BigInt`s or
//! decimal strings, errors are thrown as `Error` objects carrying the Rust message, and
//! `toJSON`/`fromJSON` use the same JSON as the Rust side.
//!
//! ```js
//! import { GCounter } from "tally-crdt";
//! const c = new GCounter();
//! c.increment("0000000000000000000000000000002a", 1n);
//! c.valueString(); // "1"
//! ```

use alloc::string::{String, ToString};

use wasm_bindgen::prelude::*;

use crate::{Error, ReplicaId};

fn js_error(e: impl ToString) -> JsValue {
    js_sys::Error::new(&e.to_string()).into()
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
    pub fn increment(&mut self, replica_id: &str, by: u64) -> Result<u64, JsValue> {
        js(self.0.increment(replica(replica_id)?, by))
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
        serde_json::to_string(&self.0).map_err(js_error)
    }

    /// A counter from JSON text made by `toJSON` (or the Rust side). Throws on bad JSON.
    #[wasm_bindgen(js_name = fromJSON)]
    pub fn from_json(json: &str) -> Result<JsGCounter, JsValue> {
        serde_json::from_str(json).map(JsGCounter).map_err(js_error)
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
    pub fn increment(&mut self, replica_id: &str, by: u64) -> Result<u64, JsValue> {
        js(self.0.increment(replica(replica_id)?, by))
    }

    /// Adds `by` to the replica's decrement total; returns it. Throws on overflow.
    pub fn decrement(&mut self, replica_id: &str, by: u64) -> Result<u64, JsValue> {
        js(self.0.decrement(replica(replica_id)?, by))
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
        serde_json::to_string(&self.0).map_err(js_error)
    }

    /// A counter from JSON text made by `toJSON` (or the Rust side). Throws on bad JSON.
    #[wasm_bindgen(js_name = fromJSON)]
    pub fn from_json(json: &str) -> Result<JsPNCounter, JsValue> {
        serde_json::from_str(json)
            .map(JsPNCounter)
            .map_err(js_error)
    }
}
