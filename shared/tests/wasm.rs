//! The counters and their JavaScript bindings on wasm32, run in Node by
//! `wasm-bindgen-test-runner` (see scripts/test.sh).
#![cfg(all(target_arch = "wasm32", feature = "wasm"))]

use tally_crdt::wasm::{JsCounterState, JsGCounter, JsHyperLogLog, JsPNCounter};
use tally_crdt::{Error, GCounter, HyperLogLog, ReplicaId, SyncRequest};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_test::wasm_bindgen_test;

const A: &str = "000000000000000000000000000000aa";
const B: &str = "000000000000000000000000000000bb";

fn bigint_text(v: JsValue) -> String {
    assert!(v.is_bigint(), "values cross to JavaScript as BigInt");
    String::from(
        js_sys::BigInt::from(v)
            .to_string(10)
            .expect("radix 10 is valid"),
    )
}

fn error_message(e: JsValue) -> String {
    String::from(js_sys::Error::from(e).message())
}

/// An amount as JavaScript passes it.
fn big(v: u64) -> js_sys::BigInt {
    js_sys::BigInt::from(v)
}

/// The `code` property of a thrown error.
fn error_code(e: &JsValue) -> Option<String> {
    js_sys::Reflect::get(e, &JsValue::from_str("code"))
        .ok()
        .and_then(|c| c.as_string())
}

#[wasm_bindgen_test]
fn gcounter_counts_and_merges_on_wasm32() {
    let mut a = JsGCounter::new();
    let mut b = JsGCounter::new();
    assert_eq!(a.increment(A, big(3)).unwrap(), 3);
    assert_eq!(b.increment(B, big(4)).unwrap(), 4);
    a.merge(&b);
    a.merge(&b);
    assert_eq!(a.value_string(), "7");
    assert_eq!(a.get(B).unwrap(), 4);
}

#[wasm_bindgen_test]
fn counters_merge_as_the_counter_state_does() {
    // The same slots in the counters and in the lattice, merged each way: the same values.
    let (mut g, mut other_g) = (JsGCounter::new(), JsGCounter::new());
    let (mut pn, mut other_pn) = (JsPNCounter::new(), JsPNCounter::new());
    let (mut state, mut other_state) = (JsCounterState::new(), JsCounterState::new());
    g.increment(A, big(u64::MAX)).unwrap();
    other_g.increment(A, big(5)).unwrap();
    other_g.increment(B, big(u64::MAX)).unwrap();
    pn.increment(A, big(u64::MAX)).unwrap();
    other_pn.increment(A, big(5)).unwrap();
    other_pn.increment(B, big(u64::MAX)).unwrap();
    other_pn.decrement(B, big(9)).unwrap();
    state.merge_slot(A, "eu", big(u64::MAX), big(0)).unwrap();
    other_state.merge_slot(A, "eu", big(5), big(0)).unwrap();
    other_state
        .merge_slot(B, "us", big(u64::MAX), big(0))
        .unwrap();
    g.merge(&other_g);
    state.join(&other_state);
    assert_eq!(g.value_string(), state.value_string());
    other_state.merge_slot(B, "us", big(0), big(9)).unwrap();
    pn.merge(&other_pn);
    state.join(&other_state);
    assert_eq!(pn.value_string(), state.value_string());
    assert_eq!(
        pn.value_string(),
        (2 * i128::from(u64::MAX) - 9).to_string()
    );
}

#[wasm_bindgen_test]
fn values_above_2_pow_53_stay_exact_as_bigint_and_string() {
    let mut c = JsGCounter::new();
    c.increment(A, big(u64::MAX)).unwrap();
    c.increment(B, big(u64::MAX)).unwrap();
    let exact = (2 * u128::from(u64::MAX)).to_string();
    assert_eq!(c.value_string(), exact);
    assert_eq!(bigint_text(JsValue::from(c.value())), exact);
}

#[wasm_bindgen_test]
fn overflow_and_bad_replica_ids_throw_and_change_nothing() {
    let mut c = JsGCounter::new();
    c.increment(A, big(u64::MAX)).unwrap();
    let before = c.to_json().unwrap();
    let thrown = c.increment(A, big(1)).unwrap_err();
    assert_eq!(error_code(&thrown).as_deref(), Some("slot_overflow"));
    let err = error_message(thrown);
    assert!(err.contains("u64::MAX"), "{err}");
    let thrown = c.increment("nope", big(1)).unwrap_err();
    assert_eq!(error_code(&thrown).as_deref(), Some("invalid_replica_id"));
    let err = error_message(thrown);
    assert!(err.contains("32 hex digits"), "{err}");
    assert_eq!(c.to_json().unwrap(), before);
}

#[wasm_bindgen_test]
fn amounts_outside_u64_throw_a_range_error_instead_of_wrapping() {
    let mut c = JsGCounter::new();
    for bad in [
        js_sys::BigInt::from(-1i64),
        js_sys::BigInt::from(u128::from(u64::MAX) + 1),
    ] {
        let thrown = c.increment(A, bad).unwrap_err();
        assert!(thrown.is_instance_of::<js_sys::RangeError>(), "{thrown:?}");
        assert_eq!(error_code(&thrown).as_deref(), Some("amount_out_of_range"));
    }
    assert_eq!(c.value_string(), "0");
    let thrown = JsGCounter::from_json("{").err().expect("bad JSON throws");
    assert_eq!(error_code(&thrown).as_deref(), Some("malformed_body"));
}

#[wasm_bindgen_test]
fn pncounter_goes_negative_exactly() {
    let mut c = JsPNCounter::new();
    c.increment(A, big(2)).unwrap();
    c.decrement(B, big(u64::MAX)).unwrap();
    let exact = (2 - i128::from(u64::MAX)).to_string();
    assert_eq!(c.value_string(), exact);
    assert_eq!(bigint_text(JsValue::from(c.value())), exact);
}

#[wasm_bindgen_test]
fn json_round_trips_and_bad_json_throws() {
    let mut c = JsPNCounter::new();
    c.increment(A, big(u64::MAX)).unwrap();
    c.decrement(A, big(1)).unwrap();
    let json = c.to_json().unwrap();
    let back = JsPNCounter::from_json(&json).unwrap();
    assert_eq!(back.value_string(), c.value_string());
    assert!(JsGCounter::from_json("{\"x\":1}").is_err());
    assert!(JsGCounter::from_json("[").is_err());
}

#[wasm_bindgen_test]
fn the_rust_api_and_sync_decoding_work_on_wasm32() {
    let r = ReplicaId::from_u128(7);
    let mut g = GCounter::new();
    g.increment(r, u64::MAX).unwrap();
    assert!(matches!(g.increment(r, 1), Err(Error::SlotOverflow { .. })));
    let body = br#"{"version":1,"replica":"00000000000000000000000000000007","region":"eu","counters":[{"id":"home","kind":"g","p":18446744073709551615}]}"#;
    assert_eq!(
        SyncRequest::from_json(body).unwrap().counters[0].totals.p,
        u64::MAX
    );
    assert_eq!(
        SyncRequest::from_json(br#"{"version":7}"#),
        Err(Error::UnsupportedVersion {
            got: 7,
            supported: tally_crdt::PROTOCOL_VERSION
        })
    );
}

#[wasm_bindgen_test]
fn hyperloglog_estimates_merges_and_round_trips_on_wasm32() {
    let mut a = JsHyperLogLog::new(None).unwrap();
    let mut b = JsHyperLogLog::new(Some(12)).unwrap();
    assert!(a.is_empty());
    for i in 0..3000u32 {
        a.insert(&format!("visitor-{i}"));
        b.insert_bytes(format!("visitor-{}", i + 1000).as_bytes());
    }
    assert!(!a.insert("visitor-0"), "a repeat changes nothing");
    assert!(a.merge(&b).unwrap());
    assert!(!a.merge(&b).unwrap());
    let estimate = a.estimate() as f64;
    assert!(
        (estimate - 4000.0).abs() <= 3.0 * a.relative_error() * 4000.0,
        "{estimate}"
    );
    assert_eq!(
        bigint_text(JsValue::from(a.estimate())),
        a.estimate().to_string()
    );

    // The same bytes as the Rust side computes natively (same hash on wasm32).
    let mut native = HyperLogLog::new();
    for i in 0..4000u32 {
        native.insert(format!("visitor-{i}").as_bytes());
    }
    assert_eq!(a.to_bytes(), native.to_bytes());

    let back = JsHyperLogLog::from_bytes(&a.to_bytes()).unwrap();
    assert_eq!(back.estimate(), a.estimate());
    let back = JsHyperLogLog::from_json(&a.to_json().unwrap()).unwrap();
    assert_eq!(back.to_bytes(), a.to_bytes());
}

#[wasm_bindgen_test]
fn hyperloglog_errors_throw_and_change_nothing() {
    let err = error_message(JsHyperLogLog::new(Some(3)).unwrap_err());
    assert!(err.contains("precision 3"), "{err}");
    let mut a = JsHyperLogLog::new(None).unwrap();
    a.insert("x");
    let coarse = JsHyperLogLog::new(Some(10)).unwrap();
    let err = error_message(a.merge(&coarse).unwrap_err());
    assert!(err.contains("precisions differ"), "{err}");
    assert_eq!(a.estimate(), 1);
    for bad in [&[][..], &[1, 12], &[2, 12, 0], &[1, 12, 0, 0, 0]] {
        assert!(JsHyperLogLog::from_bytes(bad).is_err(), "{bad:?}");
    }
    assert!(JsHyperLogLog::from_json("\"not base64!\"").is_err());
}
