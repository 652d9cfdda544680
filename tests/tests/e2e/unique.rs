//! Unique visitors, end to end: the real merger and the real worker under `wrangler dev`,
//! with the fault proxy between them (dropped, duplicated, delayed and so reordered sketch
//! syncs and reads).
//!
//! 100,000 distinct visitors hit one page over 3 regions, half of them again (in other
//! regions too). The merged sketch is the union of every object's, so the merger and every
//! region's edge must answer **the same estimate as a sketch of the same visitors built
//! here** (no register lost or invented by retries), and that estimate must be within 3
//! standard errors of 100,000. The merger's sketch must stay a few KB: an exact set of
//! 100,000 visitors (at least 8 bytes each) could not pass.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tally_crdt::HyperLogLog;
use tally_e2e::proxy::{Faults, Proxy};
use tally_e2e::*;
use tokio::sync::Semaphore;

const REGIONS: [&str; 3] = ["eu", "us", "ap"];
const ID: &str = "landing";
const DISTINCT: usize = 100_000;
/// Visitors per `PUT` (the route's most).
const BATCH: usize = 100;
/// `PUT`s of visitors seen before, 100 each: 50,000 repeat visits.
const REPEAT_BATCHES: usize = 500;

/// One `PUT /{ID}/unique` of `visitors` in `region`; panics unless it is answered 200 with
/// a well-formed body.
async fn visit(client: &reqwest::Client, edge: &str, region: &str, visitors: &[String]) {
    let r = client
        .put(format!("{edge}/{ID}/unique"))
        .header("X-Tally-Region", region)
        .json(&json!({ "visitors": visitors }))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .expect("the edge answers a visit");
    let status = r.status().as_u16();
    let body: Value = r.json().await.expect("a JSON answer");
    assert_eq!(status, 200, "{body}");
    assert!(count_of(&body["count"]).is_some_and(|c| c > 0), "{body}");
    assert_eq!(body["error"], json!(0.01625), "{body}");
}

/// `(count, body)` of a unique read, if answered 200.
async fn read(client: &reqwest::Client, url: &str, region: Option<&str>) -> Option<(i128, Value)> {
    let mut request = client.get(url).timeout(Duration::from_secs(10));
    if let Some(region) = region {
        request = request.header("X-Tally-Region", region);
    }
    let r = request.send().await.ok()?;
    (r.status() == 200).then_some(())?;
    let body: Value = r.json().await.ok()?;
    Some((count_of(&body["count"])?, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_visitors_merge_exactly_as_sketches_under_faults() {
    let _serial = serial().await;
    let (db, state) = (temp_dir(), temp_dir());
    let merger = MergerProcess::start(db.path(), &[]).await;
    let seed = std::env::var("TALLY_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x0011_7e55);
    let proxy = Proxy::start(&merger.url, Faults::all(), seed).await;
    // Wrangler logs every failed sync the faults cause: into a file, not the test's output.
    let mut options = EdgeOptions::new(&proxy.url, state.path());
    options.log = Some(state.path().join("wrangler.log"));
    let edge = Edge::start(&options).await;
    let client = http_client();

    // The visits: every distinct visitor once, in batches of 100 to a random region, then
    // 500 batches of visitors already seen, each to a random region.
    let mut rng = StdRng::seed_from_u64(seed);
    let visitors: Vec<String> = (0..DISTINCT).map(|n| format!("visitor-{n:06}")).collect();
    let mut batches: Vec<(&'static str, Vec<String>)> = visitors
        .chunks(BATCH)
        .map(|chunk| (REGIONS[rng.random_range(0..3)], chunk.to_vec()))
        .collect();
    for _ in 0..REPEAT_BATCHES {
        let region = REGIONS[rng.random_range(0..3)];
        let again = visitors.choose_multiple(&mut rng, BATCH).cloned().collect();
        batches.push((region, again));
    }
    batches.shuffle(&mut rng);
    let mut expected = HyperLogLog::new();
    for visitor in &visitors {
        expected.insert(visitor.as_bytes());
    }
    let want = i128::from(expected.estimate());

    let started = Instant::now();
    let lanes = Arc::new(Semaphore::new(16));
    let mut tasks = Vec::new();
    for (region, batch) in batches {
        let permit = Arc::clone(&lanes)
            .acquire_owned()
            .await
            .expect("the semaphore is open");
        let (client, edge) = (client.clone(), edge.url.clone());
        tasks.push(tokio::spawn(async move {
            visit(&client, &edge, region, &batch).await;
            drop(permit);
        }));
    }
    for task in tasks {
        task.await.expect("every visit is answered 200");
    }
    let sent = started.elapsed();
    eprintln!(
        "{} visits ({DISTINCT} distinct) in {} PUTs answered in {sent:?}",
        DISTINCT + REPEAT_BATCHES * BATCH,
        DISTINCT / BATCH + REPEAT_BATCHES
    );

    // Every read converges on the estimate of the exact union: all-time and today's, at the
    // merger and at each region's edge.
    let targets: Vec<(String, Option<&str>)> = [
        (format!("{}/v1/unique/{ID}", merger.url), None),
        (format!("{}/v1/unique/{ID}?day=today", merger.url), None),
    ]
    .into_iter()
    .chain(REGIONS.iter().flat_map(|r| {
        [
            (format!("{}/{ID}/unique", edge.url), Some(*r)),
            (format!("{}/{ID}/unique?day=today", edge.url), Some(*r)),
        ]
    }))
    .collect();
    let settle = Instant::now();
    let answers = loop {
        let mut answers = Vec::new();
        for (url, region) in &targets {
            answers.push(read(&client, url, *region).await);
        }
        if answers
            .iter()
            .all(|a| a.as_ref().is_some_and(|(c, _)| *c == want))
        {
            record_timing(
                "unique: every read answers the union's estimate",
                settle.elapsed(),
                Duration::from_secs(90),
            );
            break answers;
        }
        assert!(
            settle.elapsed() < Duration::from_secs(90),
            "reads answer {:?}, not the union's {want}, after 90 s",
            answers
                .iter()
                .map(|a| a.as_ref().map(|x| x.0))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let stats = proxy.stats();
    eprintln!(
        "merger and every edge answer {want} (the union's estimate) {:?} after the last visit; \
         proxy: {stats:?}",
        settle.elapsed()
    );
    assert!(
        stats.dropped > 0 && stats.responses_dropped > 0 && stats.duplicated > 0,
        "the syncs went through faults: {stats:?}"
    );

    // Within 3 standard errors of the truth (σ = 1.625 % of 100,000).
    let three_sigma = 4875;
    let off = (want - i128::try_from(DISTINCT).expect("small")).abs();
    eprintln!("estimate {want} of {DISTINCT} distinct: off by {off} (3σ = {three_sigma})");
    assert!(off <= three_sigma, "estimate {want} is off by {off}");

    // The merger's sketch is the dense 4,096 six-bit registers plus a header, not a set.
    let (_, merged) = answers[0].clone().expect("the merger answered");
    let bytes = merged["bytes"]
        .as_u64()
        .expect("the merger reports the sketch size");
    eprintln!("the merger's sketch of {DISTINCT} visitors: {bytes} bytes");
    assert!(
        bytes <= 3200,
        "a sketch of 4,096 registers is at most 3,200 bytes, not {bytes}"
    );
    assert_eq!(
        usize::try_from(bytes).expect("small"),
        expected.encoded_len()
    );
    assert_eq!(merged["error"], json!(0.01625), "{merged}");
    assert!(merged["day"].is_null(), "{merged}");
    let (_, daily) = answers[1].clone().expect("the merger answered today's");
    assert!(daily["day"].is_string(), "{daily}");

    // The syncs carried sketches, and a read of an unknown page at the merger is 0.
    let synced = r#"tally_sketch_syncs_total{outcome="ok"}"#;
    assert!(metric(&client, &merger.url, synced).await > 0.0);
    let (status, body) = get(&client, &format!("{}/v1/unique/nobody-here", merger.url)).await;
    assert_eq!((status, count_of(&body["count"])), (200, Some(0)), "{body}");
}
