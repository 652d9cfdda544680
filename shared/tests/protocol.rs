//! The frozen bodies of every released protocol version (`tests/protocol/`, the edge ↔ merger
//! wire): each request decodes with today's decoder and encodes back to the same JSON, and
//! each answer an edge of today reads (versions 2 and 3) decodes with today's types and
//! encodes back the same. `merger/tests/it/frozen.rs` replays the requests against today's
//! merger and requires the frozen answers. A field added, renamed or dropped in a body of a
//! released version fails here: change the wire by adding a version and its bodies.
#![cfg(not(target_arch = "wasm32"))]

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tally_crdt::{
    CounterKey, CounterKind, Cut, Frame, GlobalTotals, PROTOCOL_VERSION, PresenceRead,
    PresenceReport, PresenceResponse, ReadRequest, ReadResponse, ReplicaId, RetireRequest,
    RetireResponse, SketchRead, SketchResponse, SketchSync, SlotTotals, SlotUpdate, SyncRequest,
    SyncResponse, Timestamp, Visit,
};

fn frozen(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/protocol")
        .join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .replace("\"<time>\"", "\"2026-12-06T10:00:00.000Z\"");
    serde_json::from_str(&text).expect("frozen JSON")
}

fn requests() -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> =
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/protocol"))
            .expect("tests/protocol/ is readable")
            .map(|e| e.expect("an entry").path())
            .filter(|p| p.to_string_lossy().ends_with(".request.json"))
            .collect();
    paths.sort();
    paths
}

/// Decodes `value` with `decode` and encodes it back: the same JSON.
fn round_trip<T: Serialize>(name: &str, value: &Value, decode: impl Fn(&[u8]) -> T) {
    let bytes = serde_json::to_vec(value).expect("JSON");
    let decoded = decode(&bytes);
    let again = serde_json::to_value(&decoded).expect("encodes");
    assert_eq!(&again, value, "{name} does not encode back as frozen");
}

fn accepted<T>(name: &str, decoded: Result<T, tally_crdt::Error>) -> T {
    decoded.unwrap_or_else(|e| panic!("{name} is refused: {e}"))
}

fn serde<T: DeserializeOwned>(name: &str) -> impl Fn(&[u8]) -> T + '_ {
    move |bytes| {
        serde_json::from_slice(bytes).unwrap_or_else(|e| panic!("{name} does not decode: {e}"))
    }
}

#[test]
fn every_frozen_request_decodes_and_encodes_back_the_same() {
    let paths = requests();
    assert!(paths.len() >= 11, "the frozen bodies are there");
    for path in paths {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let body = frozen(&name);
        let what = name
            .splitn(3, '-')
            .nth(2)
            .unwrap()
            .trim_end_matches(".request.json");
        match what {
            "sync" => round_trip(&name, &body, |b| accepted(&name, SyncRequest::from_json(b))),
            "read" => round_trip(&name, &body, |b| accepted(&name, ReadRequest::from_json(b))),
            "retire" => round_trip(&name, &body, |b| {
                accepted(&name, RetireRequest::from_json(b))
            }),
            "presence" => round_trip(&name, &body, |b| {
                accepted(&name, PresenceReport::from_json(b))
            }),
            "read-presence" => round_trip(&name, &body, |b| {
                accepted(&name, PresenceRead::from_json(b))
            }),
            "unique" => round_trip(&name, &body, |b| accepted(&name, SketchSync::from_json(b))),
            "read-unique" => {
                round_trip(&name, &body, |b| accepted(&name, SketchRead::from_json(b)))
            }
            other => panic!("{name}: unknown body {other:?}"),
        }
    }
}

#[test]
fn every_frozen_answer_of_version_2_and_later_decodes_and_encodes_back_the_same() {
    for path in requests() {
        let name = path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .replace(".request.json", ".response.json");
        if name.contains("-v1-") {
            // Version 1 answers are for edges of that release (merger/tests/it/versions.rs
            // decodes them with its types).
            continue;
        }
        let body = frozen(&name);
        let what = name
            .splitn(3, '-')
            .nth(2)
            .unwrap()
            .trim_end_matches(".response.json");
        match what {
            "sync" => round_trip(&name, &body, serde::<SyncResponse>(&name)),
            "read" => round_trip(&name, &body, serde::<ReadResponse>(&name)),
            "retire" => round_trip(&name, &body, serde::<RetireResponse>(&name)),
            "presence" | "read-presence" => {
                round_trip(&name, &body, serde::<PresenceResponse>(&name));
            }
            "unique" | "read-unique" => round_trip(&name, &body, serde::<SketchResponse>(&name)),
            other => panic!("{name}: unknown body {other:?}"),
        }
    }
}

/// Every field of today's sync, set: its encoding is the frozen body of the newest version.
/// A field added to the sync's types must be set here (the struct literals name every
/// field), changes this encoding, and so needs a new version and its frozen body.
#[test]
fn a_sync_with_every_field_set_is_the_newest_versions_frozen_body() {
    let key = |kind, id: &str| CounterKey::new(kind, id).expect("a valid id");
    let at: Timestamp = "2026-12-06T10:00:00.000Z".parse().expect("a time");
    let sync = SyncRequest {
        version: PROTOCOL_VERSION,
        replica: ReplicaId::lineage(ReplicaId::from_u128(9 << 32), 3),
        region: "eu".into(),
        counters: vec![
            SlotUpdate {
                key: key(CounterKind::G, "home"),
                totals: SlotTotals { p: 3, n: 0 },
                visits: vec![Visit {
                    end: 3,
                    delta: 1,
                    visitor: "user-44".into(),
                }],
                carried: SlotTotals { p: 2, n: 0 },
                frame: Some(Frame {
                    epoch: 1,
                    reclaimed: SlotTotals { p: 718, n: 0 },
                }),
                cut: Some(Cut {
                    epoch: 1,
                    deleted: false,
                    at,
                    totals: GlobalTotals { p: 724, n: 0 },
                }),
            },
            SlotUpdate {
                key: key(CounterKind::Pn, "viewers"),
                totals: SlotTotals { p: 2, n: 1 },
                visits: Vec::new(),
                carried: SlotTotals { p: 6, n: 3 },
                frame: None,
                cut: Some(Cut {
                    epoch: 2,
                    deleted: true,
                    at,
                    totals: GlobalTotals { p: 6, n: 3 },
                }),
            },
        ],
    };
    let newest = format!("{:02}-v{PROTOCOL_VERSION}-sync.request.json", 16);
    assert_eq!(serde_json::to_value(&sync).unwrap(), frozen(&newest));
    assert_eq!(
        SyncRequest::version_for(&sync.counters),
        PROTOCOL_VERSION,
        "cuts need the newest version"
    );
    // One version down at a time, each the oldest version that carries what is left.
    let mut older = sync.clone();
    for version in [5, 4, 3, 2] {
        older = older.downgraded().expect("a version to go down to");
        assert_eq!(older.version, version);
        assert_eq!(SyncRequest::version_for(&older.counters), older.version);
        assert!(SyncRequest::from_json(&serde_json::to_vec(&older).unwrap()).is_ok());
        assert_eq!(
            older.counters[1].totals, sync.counters[1].totals,
            "the same totals"
        );
    }
    assert!(older.downgraded().is_none());
    // In version 5 without its cut; in version 4 a rebased carry goes as one carry again:
    // what it reclaimed and carried.
    let v5 = sync.downgraded().unwrap();
    assert!(v5.counters.iter().all(|c| c.cut.is_none()));
    assert_eq!(
        v5.downgraded().unwrap().counters[0].carried,
        SlotTotals { p: 720, n: 0 }
    );
    for version in [2, 3, 4, 5] {
        let mut mislabelled = sync.clone();
        mislabelled.version = version;
        assert!(matches!(
            SyncRequest::from_json(&serde_json::to_vec(&mislabelled).unwrap()),
            Err(tally_crdt::Error::Malformed(_))
        ));
    }
}
