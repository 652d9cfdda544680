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

/// The syncs the proxy forwarded from `from` on, as JSON.
fn syncs_since(proxy: &Proxy, from: usize) -> Vec<serde_json::Value> {
    proxy
        .recorded()
        .into_iter()
        .skip(from)
        .filter(|(path, _)| path == "/v1/sync")
        .map(|(_, body)| serde_json::from_slice(&body).expect("a sync is JSON"))
        .collect()
}

/// The slot a sync sends of counter `id`, if it sends one.
fn slot_of<'a>(sync: &'a serde_json::Value, id: &str) -> Option<&'a serde_json::Value> {
    sync["counters"].as_array()?.iter().find(|c| c["id"] == id)
}

/// A deleted counter's rows at the edge: once nothing was counted since the delete, the
/// object rebases its carry of it into the delete's frame (the merger's count stays 0, and
/// it holds what was reclaimed), and `RECLAIM_AFTER_MS` later deletes the row, so its sweeps
/// stop sending it while another counter's row goes on being swept. A new hit counts from
/// the cut, and the new row takes up the frame the merger holds.
#[tokio::test]
async fn a_deleted_counters_row_is_rebased_then_reclaimed_at_the_edge() {
    let _serial = serial().await;
    let (db, state) = (temp_dir(), temp_dir());
    let merger = MergerProcess::start(db.path(), &["--admin-token", ADMIN]).await;
    let proxy = Proxy::start(&merger.url, Faults::none(), 0x6e1).await;
    proxy.record();
    let mut options = EdgeOptions::new(&proxy.url, state.path());
    (options.partitions, options.spread) = (1, 1);
    options.sync_interval_ms = 200;
    options.max_backoff_ms = 1000;
    options.rotate_ms = Some(1500);
    options.anti_entropy_ms = 1000;
    options.vars.push("RECLAIM_AFTER_MS:3000".into());
    let edge = Edge::start(&options).await;
    let client = tally_e2e::http_client();
    for (path, hits) in [("/gone/counter", 5), ("/kept/counter", 3)] {
        for _ in 0..hits {
            let (status, body) = tally_e2e::hit(&client, &edge.url, path, "eu", 1).await;
            assert_eq!(status, 200, "{body}");
        }
    }
    let count = |id: &'static str| {
        let (client, url) = (client.clone(), merger.url.clone());
        async move {
            let (_, view) = get(&client, &format!("{url}/v1/counters/{id}")).await;
            (count_of(&view["count"]), view["epoch"].as_u64())
        }
    };
    tally_e2e::wait_until(
        Duration::from_secs(30),
        "the merger counts both",
        || async { count("gone").await.0 == Some(5) && count("kept").await.0 == Some(3) },
    )
    .await;
    let answer = client
        .delete(format!("{}/v1/counters/gone", merger.url))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("the merger answers");
    assert_eq!(answer.status().as_u16(), 200);
    let deleted_at = proxy.recorded().len();

    // The object rotates (its slot goes into its carry), a sweep hears the delete, and the
    // carry goes into frame 1 as what was reclaimed.
    let frame = serde_json::json!({"epoch": 1, "reclaimed": {"p": 5}});
    tally_e2e::wait_until(Duration::from_secs(60), "the edge rebases gone", || async {
        syncs_since(&proxy, deleted_at)
            .iter()
            .any(|s| slot_of(s, "gone").is_some_and(|c| c["frame"] == frame))
    })
    .await;
    let rebased_at = proxy.recorded().len();
    assert_eq!(
        count("gone").await,
        (Some(0), Some(1)),
        "a rebase changes no count"
    );
    // Three seconds on, a sweep deletes the row: later sweeps send kept's carry alone.
    tally_e2e::wait_until(
        Duration::from_secs(60),
        "the edge reclaims gone's row",
        || async {
            syncs_since(&proxy, rebased_at)
                .iter()
                .rev()
                .take(2)
                .filter(|s| slot_of(s, "kept").is_some() && slot_of(s, "gone").is_none())
                .count()
                == 2
        },
    )
    .await;
    assert_eq!(count("kept").await, (Some(3), Some(0)));
    assert_eq!(count("gone").await, (Some(0), Some(1)));
    // Counted again: from the cut, at the edge and at the merger.
    let (status, body) = tally_e2e::hit(&client, &edge.url, "/gone/counter", "eu", 1).await;
    assert_eq!((status, count_of(&body["count"])), (200, Some(1)), "{body}");
    tally_e2e::wait_until(
        Duration::from_secs(30),
        "the merger counts the new hit",
        || async { count("gone").await == (Some(1), Some(1)) },
    )
    .await;
    // Once that hit is in the row's carry (the object rotated), the merger tells the row the
    // frame it holds, and the row sends its carry in it: the epoch alone, nothing reclaimed.
    let rehit_at = proxy.recorded().len();
    let taken_up = serde_json::json!({"epoch": 1});
    tally_e2e::wait_until(
        Duration::from_secs(60),
        "the row takes the frame up",
        || async {
            syncs_since(&proxy, rehit_at).iter().any(|s| {
                slot_of(s, "gone").is_some_and(|c| c["frame"] == taken_up && c["carried"]["p"] == 1)
            })
        },
    )
    .await;
    assert_eq!(count("gone").await, (Some(1), Some(1)));
    edge.stop().await;
    merger.terminate().await;
}
