//! Reset and delete end to end: the edge counts under the fault proxy (dropped, duplicated,
//! reordered, delayed syncs) while an operator resets and deletes its counters at the merger,
//! in the middle of the traffic. The checker moves each counter's expected value down by
//! exactly what the merger said each reset removed: nothing is lost or counted twice, the edge
//! converges to the new epoch's count, and replaying every sync the proxy saw changes nothing.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tally_e2e::checker::{Checker, Workload, merger_path};
use tally_e2e::proxy::{Faults, Proxy};
use tally_e2e::{Edge, EdgeOptions, MergerProcess, TOKEN, count_of, get, serial, temp_dir};

const REGIONS: [&str; 3] = ["eu", "us", "ap"];
const ADMIN: &str = "e2e-admin-token-0123456789";

#[tokio::test]
async fn resets_and_deletes_under_faults_lose_nothing_and_old_syncs_never_come_back() {
    let _serial = serial().await;
    let (db, state) = (temp_dir(), temp_dir());
    let merger = MergerProcess::start(db.path(), &["--admin-token", ADMIN]).await;
    let proxy = Proxy::start(&merger.url, Faults::all(), 0x5e7).await;
    proxy.record();
    let mut options = EdgeOptions::new(&proxy.url, state.path());
    options.sync_interval_ms = 200;
    options.max_backoff_ms = 1000;
    let edge = Edge::start(&options).await;
    let url = Arc::new(Mutex::new(edge.url.clone()));
    let checker = Checker::new();
    let client = tally_e2e::http_client();

    let mut resets = 0;
    let mut nonzero = 0;
    for round in 0..4u64 {
        let mut workload = Workload::new("rst", 3, 2, round);
        workload.hits_per_client = 12;
        let paths = workload.paths.clone();
        let running = {
            let (checker, url) = (Arc::clone(&checker), Arc::clone(&url));
            tokio::spawn(async move { checker.run(&url, &workload).await })
        };
        // Mid-traffic: hits acknowledged at the edge and not synced yet, syncs in flight.
        tokio::time::sleep(Duration::from_millis(400 + 150 * round)).await;
        for (i, path) in paths.iter().enumerate() {
            let target = format!("{}{}", merger.url, merger_path(path));
            // The last round deletes two of them instead.
            let request = if round == 3 && i < 2 {
                client.delete(&target)
            } else {
                client.post(format!("{target}/reset"))
            };
            let answer = request
                .bearer_auth(ADMIN)
                .send()
                .await
                .expect("the merger answers");
            assert_eq!(answer.status().as_u16(), 200);
            let body: serde_json::Value = answer.json().await.expect("JSON");
            let removed = count_of(&body["removed"]).expect("a removed count");
            checker.reset(path, removed);
            resets += 1;
            nonzero += u32::from(removed != 0);
        }
        running.await.expect("the clients finish");
    }
    assert!(
        nonzero >= 10,
        "only {nonzero} of {resets} resets removed anything"
    );

    proxy.set_faults(Faults::none());
    let report = checker
        .settle(&merger.url, &edge.url, &REGIONS, Duration::from_secs(60))
        .await
        .with_proxy(proxy.stats());
    eprintln!("\n== resets and deletes under faults ({resets} resets)\n{report}");
    assert!(report.ok(), "{report}");
    assert_eq!((report.lost(), report.doubled()), (0, 0));

    // Replay every sync the proxy forwarded, straight at the merger: old totals are inside
    // the cuts, so no count moves.
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
        assert_eq!(answer.status().as_u16(), 200);
    }
    assert_eq!(
        reads(&client, &merger.url, &report).await,
        before,
        "{} replayed syncs changed a count",
        syncs.len()
    );
    eprintln!(
        "{} syncs replayed after {resets} resets: no count moved",
        syncs.len()
    );
    edge.stop().await;
    merger.terminate().await;
}

/// Every counter of the report as the merger reads it now, with its epoch.
async fn reads(
    client: &reqwest::Client,
    merger: &str,
    report: &tally_e2e::checker::Report,
) -> Vec<(Option<i128>, Option<u64>)> {
    let mut out = Vec::new();
    for row in &report.rows {
        let (_, view) = get(client, &format!("{merger}{}", merger_path(&row.path))).await;
        out.push((count_of(&view["count"]), view["epoch"].as_u64()));
    }
    out
}
