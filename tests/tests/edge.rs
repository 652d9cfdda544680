//! The whole system end to end: the real merger binary and the real edge worker under
//! `wrangler dev`, on loopback. Thousands of hits go to counters and gauges across regions
//! and objects; the merger's global count must equal the acknowledged hits **exactly**, with
//! the per-region breakdown right, through restarts of the edge and an outage of the merger.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use tally_e2e::checker::merger_path;
use tally_e2e::*;

const REGIONS: [&str; 3] = ["eu", "us", "ap"];
const COUNTERS: [&str; 3] = ["/home/counter", "/likes:42/counter", "/home/gauge"];

/// Acknowledged sums per path and region, and the outcome tally.
#[derive(Debug, Default)]
struct Ledger {
    acked: BTreeMap<&'static str, BTreeMap<&'static str, i128>>,
    hits_acked: usize,
    hits_failed: usize,
}

impl Ledger {
    fn total(&self, path: &str) -> i128 {
        self.acked.get(path).map_or(0, |r| r.values().sum())
    }
}

/// Sends `hits` hits from 16 concurrent clients, each to a random counter, region and delta,
/// recording what was acknowledged (2xx).
async fn send_hits(edge: &str, hits: usize, seed: u64, ledger: &Arc<Mutex<Ledger>>) {
    let client = reqwest::Client::new();
    let per_client = hits / 16;
    let tasks: Vec<_> = (0..16u64)
        .map(|c| {
            let (client, edge, ledger) = (client.clone(), edge.to_owned(), Arc::clone(ledger));
            tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed * 100 + c);
                for _ in 0..per_client {
                    let path = COUNTERS[rng.random_range(0..COUNTERS.len())];
                    let region = REGIONS[rng.random_range(0..REGIONS.len())];
                    let delta: i64 = if path.ends_with("gauge") {
                        [-3, -1, 1, 2][rng.random_range(0..4)]
                    } else {
                        rng.random_range(1..=3)
                    };
                    let (status, _) = hit(&client, &edge, path, region, delta).await;
                    let mut l = ledger.lock().unwrap();
                    if (200..300).contains(&status) {
                        *l.acked.entry(path).or_default().entry(region).or_default() +=
                            i128::from(delta);
                        l.hits_acked += 1;
                    } else {
                        l.hits_failed += 1;
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

/// Waits until the merger holds exactly the acknowledged totals, per counter and region.
async fn assert_merger_converges(merger: &str, ledger: &Arc<Mutex<Ledger>>) {
    let client = reqwest::Client::new();
    let expected = ledger.lock().unwrap().acked.clone();
    let mut last = String::new();
    let converged = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let mut all_equal = true;
            last.clear();
            for (path, regions) in &expected {
                let (_, view) = get(&client, &format!("{merger}{}", merger_path(path))).await;
                let total: i128 = regions.values().sum();
                let got = count_of(&view["count"]);
                let region_ok = regions
                    .iter()
                    .all(|(r, c)| count_of(&view["regions"][*r]["count"]) == Some(*c));
                if got != Some(total) || !region_ok {
                    all_equal = false;
                    last.push_str(&format!(
                        "{path}: merger {view}, acknowledged {total} {regions:?}\n"
                    ));
                }
            }
            if all_equal {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .await;
    assert!(
        converged.is_ok(),
        "the merger did not converge to the acknowledged hits:\n{last}"
    );
}

#[tokio::test]
async fn acknowledged_hits_across_regions_and_objects_reach_the_merger_exactly() {
    let _serial = serial().await;
    let (db, state) = (temp_dir(), temp_dir());
    let merger = MergerProcess::start(db.path(), &[]).await;
    let edge = Edge::start(&EdgeOptions::new(&merger.url, state.path())).await;
    let ledger = Arc::new(Mutex::new(Ledger::default()));

    send_hits(&edge.url, 2400, 1, &ledger).await;
    {
        let l = ledger.lock().unwrap();
        assert_eq!(
            l.hits_failed, 0,
            "every hit is acknowledged while all is well"
        );
        assert_eq!(l.hits_acked, 2400);
    }
    assert_merger_converges(&merger.url, &ledger).await;

    // Several regions and objects took part: one replica per object that counted it, and
    // a counter is spread over 2 of its region's partitions.
    let client = reqwest::Client::new();
    let (_, home) = get(&client, &format!("{}/v1/counters/home", merger.url)).await;
    let replicas = home["replicas"].as_u64().unwrap();
    assert!(
        (3..=6).contains(&replicas),
        "3 regions x 2 objects of each, most of them hit: {home}"
    );

    // Reads at the edge catch up with the global count within a sync interval or two.
    let expected = ledger.lock().unwrap().total("/home/counter");
    wait_until(
        Duration::from_secs(20),
        "edge reads reach the global count",
        || async {
            let (status, body) = get(&client, &format!("{}/home/counter", edge.url)).await;
            status == 200 && count_of(&body["count"]) == Some(expected)
        },
    )
    .await;
    let (status, body) = get(&client, &format!("{}/home/gauge", edge.url)).await;
    assert_eq!(status, 200);
    assert!(
        body["updated_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{body}"
    );

    edge.stop().await;
    merger.terminate().await;
}

#[tokio::test]
async fn restarting_the_edge_loses_nothing_and_fresh_storage_means_new_replicas() {
    let _serial = serial().await;
    let (db, state, fresh_state) = (temp_dir(), temp_dir(), temp_dir());
    let merger = MergerProcess::start(db.path(), &[]).await;
    let options = EdgeOptions::new(&merger.url, state.path());
    let ledger = Arc::new(Mutex::new(Ledger::default()));

    // Hits, then the edge stops at once: some are stored but not yet synced.
    let edge = Edge::start(&options).await;
    send_hits(&edge.url, 800, 2, &ledger).await;
    edge.stop().await;

    // Same storage: the replicas come back with their slots and dirty marks.
    let edge = Edge::start(&options).await;
    send_hits(&edge.url, 800, 3, &ledger).await;
    assert_merger_converges(&merger.url, &ledger).await;
    edge.stop().await;

    let client = reqwest::Client::new();
    let (_, before) = get(&client, &format!("{}/v1/counters/home", merger.url)).await;

    // Fresh storage: new incarnations, new slots; the old slots stay counted at the merger.
    let edge = Edge::start(&EdgeOptions::new(&merger.url, fresh_state.path())).await;
    send_hits(&edge.url, 800, 4, &ledger).await;
    assert_merger_converges(&merger.url, &ledger).await;
    let (_, after) = get(&client, &format!("{}/v1/counters/home", merger.url)).await;
    assert!(
        after["replicas"].as_u64() > before["replicas"].as_u64(),
        "fresh storage brings new replica incarnations: before {before}, after {after}"
    );
    assert_eq!(ledger.lock().unwrap().hits_failed, 0);
    edge.stop().await;
    merger.terminate().await;
}

#[tokio::test]
async fn edges_keep_counting_while_the_merger_is_down_and_every_hit_arrives() {
    let _serial = serial().await;
    let (db, state) = (temp_dir(), temp_dir());
    let port = free_port();
    let merger = MergerProcess::start_on(db.path(), port).await;
    let edge = Edge::start(&EdgeOptions::new(&merger.url, state.path())).await;
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let client = reqwest::Client::new();

    send_hits(&edge.url, 400, 5, &ledger).await;
    assert_merger_converges(&merger.url, &ledger).await;

    // The merger dies; for 10 s the edge keeps taking hits.
    merger.kill_9().await;
    let outage = tokio::time::Instant::now();
    let mut round = 6;
    while outage.elapsed() < Duration::from_secs(10) {
        send_hits(&edge.url, 160, round, &ledger).await;
        round += 1;
    }
    assert_eq!(
        ledger.lock().unwrap().hits_failed,
        0,
        "the edge answers 2xx to every hit without the merger"
    );
    // Reads of a known counter still answer, from the stale cache, and say how old it is
    // (every replica of the region has served this counter, so each has a cached value).
    let response = client
        .get(format!("{}/home/counter", edge.url))
        .header("X-Tally-Region", "eu")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers().contains_key("age"),
        "a stale read says its age: {:?}",
        response.headers()
    );

    // The merger comes back on the same database and port: every hit arrives.
    let merger = MergerProcess::start_on(db.path(), port).await;
    assert_merger_converges(&merger.url, &ledger).await;
    edge.stop().await;
    merger.terminate().await;
}
