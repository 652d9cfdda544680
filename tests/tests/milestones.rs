//! Milestones end to end: the real merger and the real worker under `wrangler dev`, with the
//! fault proxy between them (dropped, duplicated, delayed and reordered syncs).
//!
//! 24 clients over 3 regions and every object of the counter race through 24 milestones,
//! some of them a few hits apart (so one commit crosses several). Every `PUT` answer carries
//! a receipt. At the end, the count is exact, every milestone has exactly one winner, and
//! exactly one acknowledged hit's receipt resolves to each winner: no hit is told it won that
//! did not, none is missed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tally_e2e::proxy::{Faults, Proxy};
use tally_e2e::*;

const ADMIN: &str = "e2e-admin-token-0123456789";
const REGIONS: [&str; 3] = ["eu", "us", "ap"];
const ID: &str = "race";
const CLIENTS: usize = 24;
const HITS_PER_CLIENT: usize = 60;

/// One `PUT /race/counter` of +1 in `region`: the receipt of an acknowledged hit.
async fn hit_with_receipt(client: &reqwest::Client, edge: &str, region: &str) -> String {
    for _ in 0..5 {
        let answer = client
            .put(format!("{edge}/{ID}/counter"))
            .header("X-Tally-Region", region)
            .timeout(Duration::from_secs(20))
            .send()
            .await;
        // Between the client and the edge there are no faults: a failure to connect is the
        // only retry-safe one (the request was not sent).
        let r = match answer {
            Ok(r) => r,
            Err(e) if e.is_connect() => continue,
            Err(e) => panic!("a hit got no answer: {e}"),
        };
        assert_eq!(r.status().as_u16(), 200, "a hit is counted");
        let receipt = r
            .headers()
            .get("Tally-Receipt")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .expect("a counter hit answers a receipt");
        assert_eq!(receipt.len(), 50, "{receipt}");
        return receipt;
    }
    panic!("the edge could not be reached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_milestone_has_exactly_one_winner_under_faults() {
    let _serial = serial().await;
    let (db, state) = (temp_dir(), temp_dir());
    let merger = MergerProcess::start(db.path(), &["--admin-token", ADMIN]).await;
    let seed = std::env::var("TALLY_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x6d11);
    let proxy = Proxy::start(&merger.url, Faults::all(), seed).await;
    let mut options = EdgeOptions::new(&proxy.url, state.path());
    options.log = Some(state.path().join("wrangler.log"));
    let edge = Edge::start(&options).await;
    let client = reqwest::Client::new();

    // 24 milestones: spread out, and three runs of neighbours a commit may cross at once.
    let total = u64::try_from(CLIENTS * HITS_PER_CLIENT).expect("small");
    let mut milestones: BTreeSet<u64> = (1..=15).map(|i| i * 90).collect();
    milestones.extend([1, 2, 3, 500, 501, 502, 1000, 1001, total]);
    for &n in &milestones {
        let r = client
            .post(format!("{}/v1/counters/{ID}/milestones", merger.url))
            .bearer_auth(ADMIN)
            .json(&json!({"n": n, "label": format!("visitor {n}")}))
            .send()
            .await
            .expect("the merger answers");
        assert_eq!(r.status().as_u16(), 201, "{:?}", r.text().await);
    }

    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let (client, edge) = (client.clone(), edge.url.clone());
        tasks.push(tokio::spawn(async move {
            let mut receipts = Vec::with_capacity(HITS_PER_CLIENT);
            for h in 0..HITS_PER_CLIENT {
                let region = REGIONS[(c + h) % 3];
                receipts.push(hit_with_receipt(&client, &edge, region).await);
            }
            receipts
        }));
    }
    let mut receipts = Vec::new();
    for task in tasks {
        receipts.extend(
            task.await
                .expect("every hit is acknowledged with a receipt"),
        );
    }
    eprintln!(
        "{} hits answered in {:?}",
        receipts.len(),
        started.elapsed()
    );
    let distinct: BTreeSet<&String> = receipts.iter().collect();
    assert_eq!(distinct.len(), receipts.len(), "each hit its own receipt");

    // The count is exact, and every milestone is decided.
    let counter = format!("{}/v1/counters/{ID}", merger.url);
    let list = format!("{}/v1/counters/{ID}/milestones", merger.url);
    wait_until(
        Duration::from_secs(60),
        "every hit and milestone",
        || async {
            let count = count_of(&get(&client, &counter).await.1["count"]);
            let (_, listed) = get(&client, &list).await;
            count == Some(i128::from(total))
                && listed["milestones"]
                    .as_array()
                    .is_some_and(|m| m.iter().all(|m| m["status"] == "won"))
        },
    )
    .await;
    let (_, listed) = get(&client, &list).await;
    let decided: Vec<u64> = listed["milestones"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|m| m["n"].as_u64().expect("n"))
        .collect();
    assert_eq!(decided, milestones.iter().copied().collect::<Vec<_>>());

    // Exactly one acknowledged hit per milestone resolves as its winner.
    let lookups = Arc::new(tokio::sync::Semaphore::new(8));
    let mut checks = Vec::new();
    for receipt in receipts {
        let (client, url) = (client.clone(), merger.url.clone());
        let lookups = Arc::clone(&lookups);
        checks.push(tokio::spawn(async move {
            let _permit = lookups.acquire().await.expect("open");
            let (status, body) = get(
                &client,
                &format!("{url}/v1/counters/{ID}/receipts/{receipt}"),
            )
            .await;
            assert_eq!(status, 200, "{body}");
            let won: Vec<u64> = body["won"]
                .as_array()
                .expect("a list")
                .iter()
                .map(|m| m["n"].as_u64().expect("n"))
                .collect();
            assert_eq!(body["winner"], Value::Bool(!won.is_empty()), "{body}");
            (receipt, won)
        }));
    }
    let mut winners: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for check in checks {
        let (receipt, won) = check.await.expect("every receipt resolves");
        assert!(won.len() <= 1, "a hit of +1 is one ordinal: {won:?}");
        for n in won {
            winners.entry(n).or_default().push(receipt.clone());
        }
    }
    for &n in &milestones {
        let found = winners.get(&n).map_or(0, Vec::len);
        assert_eq!(found, 1, "milestone {n} has {found} winning receipts");
    }
    let stats = proxy.stats();
    eprintln!(
        "{} milestones, each won by exactly one of {total} hits; proxy: {stats:?}",
        milestones.len()
    );
    assert!(
        stats.dropped > 0 && stats.duplicated > 0,
        "the syncs went through faults: {stats:?}"
    );
}
