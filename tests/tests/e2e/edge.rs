//! The whole system end to end: the real merger binary and the real edge worker under
//! `wrangler dev`, on loopback. Thousands of hits go to counters and gauges across regions
//! and objects; the merger's global count must equal the acknowledged hits **exactly**, with
//! the per-region breakdown right, through restarts of the edge and an outage of the merger.
//! The harness's checker ([`tally_e2e::checker`]) records every hit and judges the end state.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tally_e2e::checker::{Checker, Report, Workload};
use tally_e2e::*;

const REGIONS: [&str; 3] = ["eu", "us", "ap"];

/// `hits` hits from 16 clients over two counters and a gauge, in every region.
fn workload(hits: usize, seed: u64) -> Workload {
    Workload {
        paths: vec![
            "/home/counter".into(),
            "/likes:42/counter".into(),
            "/home/gauge".into(),
        ],
        regions: REGIONS.to_vec(),
        clients: 16,
        hits_per_client: hits / 16,
        seed,
    }
}

/// Checks that the edge answered every hit it received with 2xx, then waits until the merger
/// and every region's edge reads equal the acknowledged hits exactly, and the merger's
/// per-region breakdown equals each region's acknowledged hits.
///
/// A hit whose connection closed with no answer at all is an unknown outcome, which the
/// exact check allows either way, as the reliability suite does: once in about fifteen runs
/// of the test command (2026-12-06) the dev runtime dropped 16 in-flight connections of
/// this test at once, with no error of the worker's anywhere (docs/testing.md); the
/// checker prints each with its error. The per-region breakdown is checked when there was
/// none (it compares acknowledged hits only).
async fn assert_exact(checker: &Checker, merger: &str, edge: &str) -> Report {
    assert_eq!(
        checker.refused(),
        0,
        "every hit the edge received is acknowledged: {:?}",
        checker.tallies()
    );
    let report = checker
        .settle(merger, edge, &REGIONS, Duration::from_secs(60))
        .await;
    assert!(report.ok(), "{report}");
    assert_eq!((report.lost(), report.doubled()), (0, 0), "{report}");
    if checker.dropped() == 0
        && let Err(wrong) = checker.check_regions(merger).await
    {
        panic!("the per-region breakdown is wrong:\n{wrong}");
    }
    report
}

#[tokio::test]
async fn acknowledged_hits_across_regions_and_objects_reach_the_merger_exactly() {
    let _serial = serial().await;
    let (db, state) = (temp_dir(), temp_dir());
    let merger = MergerProcess::start(db.path(), &[]).await;
    let edge = Edge::start(&EdgeOptions::new(&merger.url, state.path())).await;
    let url = Arc::new(Mutex::new(edge.url.clone()));
    let checker = Checker::new();

    checker.run(&url, &workload(2400, 1)).await;
    let report = assert_exact(&checker, &merger.url, &edge.url).await;
    let sent: u64 = report
        .rows
        .iter()
        .map(|r| r.tally.hits_acked + r.tally.hits_dropped)
        .sum();
    assert_eq!(sent, 2400, "every hit was sent");

    // Several regions and objects took part: one replica per object that counted it, and
    // a counter is spread over 2 of its region's partitions.
    let client = http_client();
    let (_, home) = get(&client, &format!("{}/v1/counters/home", merger.url)).await;
    let replicas = home["replicas"].as_u64().unwrap();
    assert!(
        (3..=6).contains(&replicas),
        "3 regions x 2 objects of each, most of them hit: {home}"
    );
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
    let checker = Checker::new();

    // Hits, then the edge stops at once: some are stored but not yet synced.
    let edge = Edge::start(&options).await;
    let url = Arc::new(Mutex::new(edge.url.clone()));
    checker.run(&url, &workload(800, 2)).await;
    edge.stop().await;

    // Same storage: the replicas come back with their slots and dirty marks.
    let edge = Edge::start(&options).await;
    *url.lock().unwrap() = edge.url.clone();
    checker.run(&url, &workload(800, 3)).await;
    assert_exact(&checker, &merger.url, &edge.url).await;
    edge.stop().await;

    let client = http_client();
    let (_, before) = get(&client, &format!("{}/v1/counters/home", merger.url)).await;

    // Fresh storage: new incarnations, new slots; the old slots stay counted at the merger.
    let edge = Edge::start(&EdgeOptions::new(&merger.url, fresh_state.path())).await;
    *url.lock().unwrap() = edge.url.clone();
    checker.run(&url, &workload(800, 4)).await;
    assert_exact(&checker, &merger.url, &edge.url).await;
    let (_, after) = get(&client, &format!("{}/v1/counters/home", merger.url)).await;
    assert!(
        after["replicas"].as_u64() > before["replicas"].as_u64(),
        "fresh storage brings new replica incarnations: before {before}, after {after}"
    );
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
    let url = Arc::new(Mutex::new(edge.url.clone()));
    let checker = Checker::new();
    let client = http_client();

    checker.run(&url, &workload(400, 5)).await;
    assert_exact(&checker, &merger.url, &edge.url).await;
    // An object hears the global count from its syncs' answers and from reads; the merger
    // has committed everything once `assert_exact` returns, yet the last answers may still
    // be on their way (on loaded cores, an object's only sync of the phase can be the one in
    // flight, and its answer is lost with the merger). Kill the merger only once the region's
    // objects have heard: 16 reads in a row, spread at random over the counter's objects,
    // none partial (a read of an object that has not heard fetches the global).
    wait_until(
        Duration::from_secs(20),
        "every eu object of home heard",
        || {
            let (client, url) = (client.clone(), edge.url.clone());
            async move {
                for _ in 0..16 {
                    let request = client
                        .get(format!("{url}/home/counter"))
                        .header("X-Tally-Region", "eu");
                    match request.send().await {
                        Ok(r)
                            if r.status() == 200 && !r.headers().contains_key("tally-estimate") => {
                        }
                        _ => return false,
                    }
                }
                true
            }
        },
    )
    .await;

    // The merger dies; for 10 s the edge keeps taking hits.
    merger.kill_9().await;
    let outage = tokio::time::Instant::now();
    let mut round = 6;
    while outage.elapsed() < Duration::from_secs(10) {
        checker.run(&url, &workload(160, round)).await;
        round += 1;
    }
    assert_eq!(
        checker.refused(),
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
    assert_exact(&checker, &merger.url, &edge.url).await;
    edge.stop().await;
    merger.terminate().await;
}
