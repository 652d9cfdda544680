//! Replica retirement end to end: edge objects rotate their incarnation every second and a
//! half (when clean) and retire the old one at the merger, under the fault proxy; then every
//! sync the proxy saw is replayed at the merger after the folds. The checker says nothing was
//! lost or counted twice, the replays change no count, and each counter's live slots stay
//! within the objects that can hold it while the incarnations that ever counted are many more.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tally_e2e::checker::{Checker, Workload, merger_path};
use tally_e2e::proxy::{Faults, Proxy};
use tally_e2e::{Edge, EdgeOptions, MergerProcess, TOKEN, count_of, get, metric, serial, temp_dir};

const REGIONS: [&str; 3] = ["eu", "us", "ap"];

#[tokio::test]
async fn incarnations_rotate_and_retire_under_faults_and_replayed_syncs_change_nothing() {
    let _serial = serial().await;
    let (db, state) = (temp_dir(), temp_dir());
    let merger = MergerProcess::start(db.path(), &[]).await;
    let proxy = Proxy::start(&merger.url, Faults::all(), 0x7e71).await;
    proxy.record();
    let mut options = EdgeOptions::new(&proxy.url, state.path());
    options.sync_interval_ms = 200;
    options.max_backoff_ms = 1000;
    options.rotate_ms = Some(1500);
    let edge = Edge::start(&options).await;
    let url = Arc::new(Mutex::new(edge.url.clone()));
    let checker = Checker::new();
    let client = tally_e2e::http_client();

    // Bursts with quiet gaps: an object rotates at its first clean moment past 1.5 s.
    for round in 0..5u64 {
        let mut workload = Workload::new("rot", 3, 2, round);
        workload.hits_per_client = 10;
        checker.run(&url, &workload).await;
        tokio::time::sleep(Duration::from_millis(2500)).await;
    }
    proxy.set_faults(Faults::none());
    let report = checker
        .settle(&merger.url, &edge.url, &REGIONS, Duration::from_secs(60))
        .await
        .with_proxy(proxy.stats());
    eprintln!("\n== rotation and retirement under faults\n{report}");
    assert!(report.ok(), "{report}");

    let retired = metric(&client, &merger.url, "tally_retirements_total").await;
    let live = metric(&client, &merger.url, "tally_replicas").await;
    assert!(retired >= 6.0, "only {retired} retirements in the run");

    // Replay every sync the proxy forwarded, straight at the merger, after the folds.
    let syncs: Vec<_> = proxy
        .recorded()
        .into_iter()
        .filter(|(path, _)| path == "/v1/sync")
        .collect();
    assert!(!syncs.is_empty());
    let before = reads(&client, &merger.url, &report).await;
    for (_, body) in &syncs {
        let answer = client
            .post(format!("{}/v1/sync", merger.url))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .expect("the merger answers");
        // A sync of a retired incarnation is refused (409 replica_retired); the others are
        // answered as duplicates.
        let status = answer.status().as_u16();
        assert!(status == 200 || status == 409, "{status}");
    }
    assert_eq!(
        reads(&client, &merger.url, &report).await,
        before,
        "{} replayed syncs changed a count",
        syncs.len()
    );

    // The slot bound: each counter has at most one live slot per object that can hold it
    // (spread x regions), though far more incarnations counted in it over the run.
    let bound = u64::from(options.spread) * REGIONS.len() as u64;
    for row in &report.rows {
        let (_, view) = get(
            &client,
            &format!("{}{}", merger.url, merger_path(&row.path)),
        )
        .await;
        let replicas = view["replicas"].as_u64().expect("a replica count");
        assert!(
            replicas <= bound,
            "{}: {replicas} live slots > {bound}",
            row.path
        );
    }
    eprintln!(
        "{retired} incarnations retired, {live} alive, {} syncs replayed, at most {bound} live slots per counter",
        syncs.len()
    );
    assert!(retired + live > bound as f64, "rotation outran the bound");
    edge.stop().await;
    merger.terminate().await;
}

/// Every counter of the report as the merger reads it now.
async fn reads(
    client: &reqwest::Client,
    merger: &str,
    report: &tally_e2e::checker::Report,
) -> Vec<Option<i128>> {
    let mut out = Vec::new();
    for row in &report.rows {
        let (_, view) = get(client, &format!("{merger}{}", merger_path(&row.path))).await;
        out.push(count_of(&view["count"]));
    }
    out
}
