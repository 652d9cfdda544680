//! Hostile input, over the wire: tables of bad requests against the real edge worker (under
//! `wrangler dev`, [`edge`]) and the real merger binary ([`merger`]). Each must get its
//! documented status and a JSON error `{"error":{"code","message"}}` with the documented
//! code, and none may change a count: the counts seeded before a table are read again after
//! it. Requests go out through the harness's raw client ([`tally_e2e::raw`]), byte for byte.
//!
//! [`slow`] holds slow clients against the merger: half a request line, half a head, an idle
//! connection, a head dribbled a byte at a time, and a body that stops halfway.

mod edge;
mod merger;
mod slow;

use std::time::Duration;

use serde_json::{Value, json};
use tally_e2e::*;

/// The merger's limits for these tests: short timeouts so slow clients are cut off within the
/// test's time, and a 64 KiB body limit so an oversized body is cheap to send.
const MERGER_FLAGS: [&str; 6] = [
    "--header-read-timeout",
    "1s",
    "--request-timeout",
    "2s",
    "--max-body-bytes",
    "65536",
];
const MAX_BODY_BYTES: usize = 65_536;
/// The edge's `PUT` body limit (`edge/src/api.rs`, `MAX_BODY_BYTES`).
const EDGE_MAX_BODY: usize = 1024;

/// The replica the seeding sync comes from. The hostile syncs use it too, with larger totals
/// next to their violation, so a sync that was applied in part would show in the counts.
const SEED_REPLICA: &str = "0000000000000000000000000000beef";

/// A sync body from the seeding replica (whose totals the hostile syncs try to raise).
fn sync_body(counters: Value) -> String {
    json!({"version": 1, "replica": SEED_REPLICA, "region": "seed", "counters": counters})
        .to_string()
}

// ---------------------------------------------------------------------------------------------
// Seeding and the state snapshot.

/// What must not change: the merger's views of every seeded counter and its full lists, and
/// the edge's reads of them (when there is an edge).
#[derive(Debug, PartialEq)]
struct Snapshot {
    merger: Vec<(String, u16, Value)>,
    edge: Vec<(String, Option<i128>)>,
}

const MERGER_VIEWS: [&str; 8] = [
    "/v1/counters/seed-a",
    "/v1/counters/seed-m",
    "/v1/gauges/seed-m",
    "/v1/gauges/seed-g",
    // Never counted: reads as zero before and after, whatever the table tried.
    "/v1/counters/never-counted",
    "/v1/gauges/seed-a",
    "/v1/counters?limit=1000",
    "/v1/gauges?limit=1000",
];
/// Edge path, and its count once seeded.
const EDGE_COUNTS: [(&str, i128); 4] = [
    ("/seed-a/counter", 106),
    ("/seed-m/counter", 42),
    ("/seed-m/gauge", 7),
    ("/seed-g/gauge", 3),
];

async fn snapshot(client: &reqwest::Client, merger: &str, edge: Option<&str>) -> Snapshot {
    let mut snap = Snapshot {
        merger: Vec::new(),
        edge: Vec::new(),
    };
    for view in MERGER_VIEWS {
        let (status, body) = get(client, &format!("{merger}{view}")).await;
        snap.merger.push((view.to_owned(), status, body));
    }
    for (path, _) in EDGE_COUNTS.iter().filter(|_| edge.is_some()) {
        let edge = edge.unwrap_or_default();
        let (_, body) = get(client, &format!("{edge}{path}")).await;
        snap.edge
            .push(((*path).to_owned(), count_of(&body["count"])));
    }
    snap
}

/// Counts at the edge (hits from two regions; without an edge, the same totals as a sync
/// from another replica) and at the merger (one sync from [`SEED_REPLICA`]), then waits until
/// the merger holds them all and every edge read agrees.
async fn seed(client: &reqwest::Client, merger: &str, edge: Option<&str>) {
    if let Some(edge) = edge {
        for (path, region, delta) in [
            ("/seed-a/counter", "eu", 1),
            ("/seed-a/counter", "eu", 2),
            ("/seed-a/counter", "us", 3),
            ("/seed-g/gauge", "us", 5),
            ("/seed-g/gauge", "eu", -2),
        ] {
            let (status, body) = hit(client, edge, path, region, delta).await;
            assert_eq!(status, 200, "seeding {path}: {body}");
        }
    } else {
        let as_the_edge = json!({"version": 2, "replica": "0000000000000000000000000000cafe",
        "region": "eu", "counters": [
            {"id": "seed-a", "kind": "g", "p": 6},
            {"id": "seed-g", "kind": "pn", "p": 5, "n": 2},
        ]});
        let seeded = client
            .post(format!("{merger}/v1/sync"))
            .bearer_auth(TOKEN)
            .json(&as_the_edge)
            .send()
            .await
            .expect("the merger answers the seeding sync");
        assert_eq!(seeded.status(), 200, "{:?}", seeded.text().await);
    }
    let seeded = client
        .post(format!("{merger}/v1/sync"))
        .bearer_auth(TOKEN)
        .header("Content-Type", "application/json")
        .body(sync_body(json!([
            {"id": "seed-m", "kind": "g", "p": 42},
            {"id": "seed-m", "kind": "pn", "p": 10, "n": 3},
            {"id": "seed-a", "kind": "g", "p": 100},
        ])))
        .send()
        .await
        .expect("the merger answers the seeding sync");
    assert_eq!(seeded.status(), 200, "{:?}", seeded.text().await);

    wait_until(
        Duration::from_secs(30),
        "the merger holds the seeds",
        || {
            let client = client.clone();
            async move {
                let mut all = true;
                for (path, count) in EDGE_COUNTS {
                    let (id, kind) = path[1..].split_once('/').expect("/{id}/{kind}");
                    let ns = if kind == "counter" {
                        "counters"
                    } else {
                        "gauges"
                    };
                    let (_, view) = get(&client, &format!("{merger}/v1/{ns}/{id}")).await;
                    all &= count_of(&view["count"]) == Some(count);
                }
                all
            }
        },
    )
    .await;
    let Some(edge) = edge else { return };
    // Each read goes to a random shard; eight agreeing reads in a row per counter means the
    // shards' caches caught up.
    wait_until(
        Duration::from_secs(30),
        "edge reads agree with the merger",
        || {
            let client = client.clone();
            async move {
                for (path, count) in EDGE_COUNTS {
                    for _ in 0..8 {
                        let (_, body) = get(&client, &format!("{edge}{path}")).await;
                        if count_of(&body["count"]) != Some(count) {
                            return false;
                        }
                    }
                }
                true
            }
        },
    )
    .await;
}
