//! Sync bodies as they arrive off the wire: well-formed ones decode and round-trip, every
//! malformed or out-of-bounds one is refused with its own error variant.
#![cfg(not(target_arch = "wasm32"))]

use serde_json::{Value, json};
use tally_crdt::{
    CounterKey, CounterKind, Error, MAX_COUNTERS_PER_SYNC, MAX_ID_LEN, PROTOCOL_VERSION, ReplicaId,
    SlotTotals, SlotUpdate, SyncRequest,
};

const REPLICA: &str = "0123456789abcdef0123456789abcdef";

fn body(counters: Value) -> Value {
    json!({"version": 2, "replica": REPLICA, "region": "eu-west", "counters": counters})
}

fn decode(v: &Value) -> Result<SyncRequest, Error> {
    SyncRequest::from_json(v.to_string().as_bytes())
}

#[track_caller]
fn assert_malformed(v: &Value) {
    match decode(v) {
        Err(Error::Malformed(msg)) => assert!(!msg.is_empty()),
        other => panic!("{v} should be malformed, got {other:?}"),
    }
}

#[test]
fn a_well_formed_body_decodes_to_the_documented_shape() {
    let v = body(json!([
        {"id": "home", "kind": "g", "p": 715},
        {"id": "viewers", "kind": "pn", "p": 10, "n": 3},
    ]));
    let sync = decode(&v).unwrap();
    assert_eq!(
        sync,
        SyncRequest {
            version: 2,
            replica: REPLICA.parse().unwrap(),
            region: "eu-west".into(),
            counters: vec![
                SlotUpdate {
                    key: CounterKey::new(CounterKind::G, "home").unwrap(),
                    totals: SlotTotals { p: 715, n: 0 },
                    visits: Vec::new(),
                    carried: SlotTotals::default(),
                    frame: None,
                    cut: None,
                },
                SlotUpdate {
                    key: CounterKey::new(CounterKind::Pn, "viewers").unwrap(),
                    totals: SlotTotals { p: 10, n: 3 },
                    visits: Vec::new(),
                    carried: SlotTotals::default(),
                    frame: None,
                    cut: None,
                },
            ],
        }
    );
    assert_eq!(serde_json::to_value(&sync).unwrap(), v);
}

#[test]
fn u64_max_totals_are_exact() {
    let v = body(json!([{"id": "x", "kind": "pn", "p": u64::MAX, "n": u64::MAX}]));
    let sync = decode(&v).unwrap();
    assert_eq!(
        (sync.counters[0].totals.p, sync.counters[0].totals.n),
        (u64::MAX, u64::MAX)
    );
}

#[test]
fn an_empty_sync_is_valid() {
    assert!(decode(&body(json!([]))).unwrap().counters.is_empty());
}

#[test]
fn not_json_or_wrong_shapes_are_malformed() {
    for raw in ["", "{", "null", "[]", "\"sync\"", "{\"version\":1}"] {
        assert!(
            matches!(
                SyncRequest::from_json(raw.as_bytes()),
                Err(Error::Malformed(_))
            ),
            "{raw:?}"
        );
    }
    let mut deep = String::new();
    for _ in 0..10_000 {
        deep.push('[');
    }
    assert!(matches!(
        SyncRequest::from_json(deep.as_bytes()),
        Err(Error::Malformed(_))
    ));
}

#[test]
fn wrong_types_and_out_of_range_totals_are_malformed() {
    for counter in [
        json!({"id": "a", "kind": "g", "p": -1}),
        json!({"id": "a", "kind": "g", "p": 1.5}),
        json!({"id": "a", "kind": "g", "p": "1"}),
        json!({"id": "a", "kind": "g"}),
        json!({"id": 7, "kind": "g", "p": 1}),
        json!({"id": "a", "kind": "gauge", "p": 1}),
        json!({"id": "a", "kind": "g", "p": 1, "extra": true}),
    ] {
        assert_malformed(&body(json!([counter])));
    }
    let too_big = body(json!([]))
        .to_string()
        .replace("[]", r#"[{"id":"a","kind":"g","p":18446744073709551616}]"#);
    assert!(matches!(
        SyncRequest::from_json(too_big.as_bytes()),
        Err(Error::Malformed(_))
    ));
    assert_malformed(&json!({"version": 2, "replica": "xyz", "region": "eu", "counters": []}));
    assert_malformed(
        &json!({"version": 2, "replica": REPLICA, "region": "eu", "counters": [], "more": 1}),
    );
}

/// Found by fuzzing (fuzz/regressions/sync_request-array-form-*): serde's derive also reads a
/// struct written as a JSON array; the protocol has one form, objects.
#[test]
fn structs_written_as_arrays_are_malformed() {
    let whole = format!(r#"[1,"{REPLICA}","eu",[]]"#);
    assert!(
        matches!(
            SyncRequest::from_json(whole.as_bytes()),
            Err(Error::Malformed(_))
        ),
        "{whole}"
    );
    let counter = format!(
        r#"{{"version":1,"replica":"{REPLICA}","region":"eu","counters":[["home","g",715]]}}"#
    );
    assert!(
        matches!(
            SyncRequest::from_json(counter.as_bytes()),
            Err(Error::Malformed(_))
        ),
        "{counter}"
    );
}

#[test]
fn another_protocol_version_is_named_even_if_its_shape_differs() {
    for unsupported in [0, u64::from(PROTOCOL_VERSION) + 1] {
        let mut v = body(json!([]));
        v["version"] = json!(unsupported);
        assert_eq!(
            decode(&v),
            Err(Error::UnsupportedVersion {
                got: unsupported,
                supported: PROTOCOL_VERSION
            })
        );
    }
    let other_shape = json!({"version": 99, "batch": []});
    assert_eq!(
        decode(&other_shape),
        Err(Error::UnsupportedVersion {
            got: 99,
            supported: PROTOCOL_VERSION
        })
    );
}

#[test]
fn too_many_counters_is_refused() {
    let counters: Vec<Value> = (0..=MAX_COUNTERS_PER_SYNC)
        .map(|i| json!({"id": format!("c{i}"), "kind": "g", "p": 1}))
        .collect();
    assert_eq!(
        decode(&body(Value::Array(counters.clone()))),
        Err(Error::TooManyCounters {
            got: MAX_COUNTERS_PER_SYNC + 1,
            max: MAX_COUNTERS_PER_SYNC
        })
    );
    assert!(
        decode(&body(Value::Array(
            counters[..MAX_COUNTERS_PER_SYNC].to_vec()
        )))
        .is_ok()
    );
}

#[test]
fn bad_counter_ids_are_refused_with_their_variant() {
    let long = "a".repeat(MAX_ID_LEN + 1);
    for (id, expected) in [
        ("", Error::EmptyId),
        (
            long.as_str(),
            Error::IdTooLong {
                len: MAX_ID_LEN + 1,
                max: MAX_ID_LEN,
            },
        ),
        ("../etc", Error::IdBadChar { at: 0 }),
        ("a b", Error::IdBadChar { at: 1 }),
        ("ünï", Error::IdBadChar { at: 0 }),
    ] {
        assert_eq!(
            decode(&body(json!([{"id": id, "kind": "g", "p": 1}]))),
            Err(expected),
            "{id:?}"
        );
    }
}

#[test]
fn bad_region_and_nil_replica_are_refused() {
    let mut v = body(json!([]));
    v["region"] = json!("eu west");
    assert_eq!(decode(&v), Err(Error::InvalidRegion));
    v["region"] = json!("");
    assert_eq!(decode(&v), Err(Error::InvalidRegion));
    let mut v = body(json!([]));
    v["replica"] = json!(ReplicaId::NIL.to_string());
    assert_eq!(decode(&v), Err(Error::NilReplica));
}

#[test]
fn a_decrement_on_an_increment_only_counter_is_refused_whole_in_v1_alone_in_v2() {
    let mut v1 = body(json!([
        {"id": "views", "kind": "g", "p": 2},
        {"id": "likes", "kind": "g", "p": 5, "n": 1},
    ]));
    v1["version"] = json!(1);
    assert_eq!(
        decode(&v1),
        Err(Error::DecrementOnCounter {
            id: "likes".into(),
            n: 1
        })
    );
    // Version 2 decodes the sync; the merger rejects that one counter and commits the rest.
    let v2 = body(v1["counters"].clone());
    let sync = decode(&v2).unwrap();
    let errors: Vec<Option<Error>> = sync
        .counters
        .iter()
        .map(SyncRequest::counter_error)
        .collect();
    assert_eq!(
        errors,
        [
            None,
            Some(Error::DecrementOnCounter {
                id: "likes".into(),
                n: 1
            })
        ]
    );
    // n = 0 spelled out is fine.
    assert!(decode(&body(json!([{"id": "likes", "kind": "g", "p": 5, "n": 0}]))).is_ok());
}

#[test]
fn a_version_1_sync_still_decodes() {
    let mut v = body(json!([{"id": "home", "kind": "g", "p": 1}]));
    v["version"] = json!(1);
    assert_eq!(decode(&v).unwrap().version, 1);
}

#[test]
fn the_same_counter_twice_is_refused_but_one_id_of_each_kind_is_fine() {
    assert_eq!(
        decode(&body(json!([
            {"id": "a", "kind": "g", "p": 1},
            {"id": "b", "kind": "g", "p": 1},
            {"id": "a", "kind": "g", "p": 2},
        ]))),
        Err(Error::DuplicateCounter {
            id: "a".into(),
            kind: CounterKind::G
        })
    );
    assert!(
        decode(&body(
            json!([{"id": "a", "kind": "g", "p": 1}, {"id": "a", "kind": "pn", "p": 1}])
        ))
        .is_ok()
    );
}

#[test]
fn every_error_has_a_distinct_stable_code() {
    let errors = [
        Error::SlotOverflow {
            replica: ReplicaId::from_u128(1),
            current: 0,
            by: 0,
        },
        Error::ValueOutOfRange,
        Error::InvalidReplicaId,
        Error::NilReplica,
        Error::EmptyId,
        Error::IdTooLong { len: 0, max: 0 },
        Error::IdBadChar { at: 0 },
        Error::InvalidRegion,
        Error::UnsupportedVersion {
            got: 0,
            supported: 1,
        },
        Error::TooManyCounters { got: 0, max: 0 },
        Error::DuplicateCounter {
            id: String::new(),
            kind: CounterKind::G,
        },
        Error::DecrementOnCounter {
            id: String::new(),
            n: 0,
        },
        Error::Malformed(String::new()),
    ];
    let mut codes: Vec<_> = errors.iter().map(Error::code).collect();
    codes.sort_unstable();
    codes.dedup();
    assert_eq!(codes.len(), errors.len());
}

#[test]
fn read_bodies_have_one_form_and_name_the_rule_they_break() {
    use tally_crdt::ReadRequest;
    let ok =
        ReadRequest::from_json(br#"{"version":2,"counters":[{"id":"home","kind":"g"}]}"#).unwrap();
    assert_eq!(ok.counters.len(), 1);
    assert!(matches!(
        ReadRequest::from_json(br#"{"version":2,"counters":[["home","g"]]}"#),
        Err(Error::Malformed(_))
    ));
    assert_eq!(
        ReadRequest::from_json(br#"{"version":2,"counters":[{"id":"a b","kind":"g"}]}"#),
        Err(Error::IdBadChar { at: 1 })
    );
    assert!(matches!(
        ReadRequest::from_json(br#"{"version":1,"counters":[]}"#),
        Err(Error::UnsupportedVersion { got: 1, .. })
    ));
}
