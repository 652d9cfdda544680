//! Two mergers on one Postgres, behind the fault proxy as their load balancer: the edge under
//! wrangler dev syncs through the proxy, which drops, duplicates, delays and reorders, and
//! spreads requests over both mergers; one merger is killed with kill -9 under load and
//! restarted. The checker says nothing was lost or counted twice, and while the load runs the
//! two mergers' reads are compared: whatever one merger showed, the other shows too within
//! the visibility bound (docs/deployment.md).
//!
//! Needs Postgres (scripts/bootstrap.sh installs it); skipped only with `TALLY_NO_POSTGRES=1`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tally_e2e::checker::{Checker, Workload, merger_path};
use tally_e2e::postgres::PostgresCluster;
use tally_e2e::proxy::{Faults, Proxy};
use tally_e2e::{Edge, EdgeOptions, MergerProcess, count_of, free_port, get, serial, temp_dir};

const REGIONS: [&str; 3] = ["eu", "us", "ap"];

/// What one merger shows is visible at the other within this (the documented bound is the
/// 1 s catch-up plus a reload; the rest is slack for a loaded 2-core machine).
const VISIBILITY: Duration = Duration::from_secs(4);

/// One merger's reads of every counter, over time.
#[derive(Debug, Default)]
struct Seen {
    reads: Vec<(Instant, BTreeMap<String, i128>)>,
}

/// Reads every increment-only counter at both mergers every 250 ms until `stop`, and
/// returns the violations: a value shown by one merger that the other still had not reached
/// `VISIBILITY` later, or a counter that went down at one merger.
async fn compare(urls: [String; 2], paths: Vec<String>, stop: Arc<Mutex<bool>>) -> Vec<String> {
    let client = tally_e2e::http_client();
    let mut seen = [Seen::default(), Seen::default()];
    let mut violations = Vec::new();
    let mut compared = 0u64;
    while !*stop.lock().unwrap() {
        for (m, url) in urls.iter().enumerate() {
            let mut now = BTreeMap::new();
            for path in &paths {
                let (status, view) = get(&client, &format!("{url}{}", merger_path(path))).await;
                if let Some(v) = count_of(&view["count"]).filter(|_| status == 200) {
                    now.insert(path.clone(), v);
                }
            }
            if now.is_empty() {
                continue; // this merger is down (killed): nothing to compare
            }
            let at = Instant::now();
            // Monotonic at each merger.
            if let Some((_, last)) = seen[m].reads.last() {
                for (path, v) in &now {
                    if last.get(path).is_some_and(|before| v < before) {
                        violations.push(format!("merger {m}: {path} went down to {v}"));
                    }
                }
            }
            // What the other showed VISIBILITY ago or earlier, this one shows now.
            let other = &seen[1 - m];
            if let Some((then, old)) = other
                .reads
                .iter()
                .rev()
                .find(|(t, _)| at.duration_since(*t) >= VISIBILITY)
            {
                for (path, v) in &now {
                    compared += 1;
                    if old.get(path).is_some_and(|shown| v < shown) {
                        violations.push(format!(
                            "merger {m} reads {path} = {v}, {:?} after merger {} read {}",
                            at.duration_since(*then),
                            1 - m,
                            old[path]
                        ));
                    }
                }
            }
            seen[m].reads.push((at, now));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        compared > 0,
        "the run was long enough to compare the two mergers"
    );
    eprintln!("compared {compared} reads across the two mergers during the run");
    violations
}

#[tokio::test]
async fn two_mergers_on_one_postgres_behind_faults_and_a_kill_9_lose_nothing_and_agree() {
    let _serial = serial().await;
    let Some(pg) = PostgresCluster::start_unless_skipped("two mergers on one Postgres").await
    else {
        return;
    };
    let database = pg.create_database("tally").await;
    let ports = [free_port(), free_port()];
    let a = MergerProcess::start_database(&database, ports[0], &[]).await;
    let mut b = Some(MergerProcess::start_database(&database, ports[1], &[]).await);
    let urls = [a.url.clone(), b.as_ref().unwrap().url.clone()];
    let proxy = Proxy::balance(&[&urls[0], &urls[1]], Faults::all(), 0x9057).await;

    let state = temp_dir();
    let mut options = EdgeOptions::new(&proxy.url, state.path());
    options.sync_interval_ms = 200;
    options.max_backoff_ms = 1000;
    let edge = Edge::start(&options).await;
    let url = Arc::new(Mutex::new(edge.url.clone()));
    let checker = Checker::new();

    let rounds = 4u64;
    let paths: Vec<String> = Workload::new("pg", 4, 2, 0).paths;
    let counters: Vec<String> = paths
        .iter()
        .filter(|p| p.ends_with("/counter"))
        .cloned()
        .collect();
    let stop = Arc::new(Mutex::new(false));
    let comparison = tokio::spawn(compare(urls.clone(), counters, Arc::clone(&stop)));
    for round in 0..rounds {
        let workload = Workload::new("pg", 4, 2, round);
        let load = {
            let (checker, url) = (Arc::clone(&checker), Arc::clone(&url));
            tokio::spawn(async move { checker.run(&url, &workload).await })
        };
        if round == 1 {
            // kill -9 of one merger under load, and back on its port a second later.
            tokio::time::sleep(Duration::from_millis(700)).await;
            b.take().unwrap().kill_9().await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            b = Some(MergerProcess::start_database(&database, ports[1], &[]).await);
        }
        load.await.unwrap();
    }
    // Quiet: let the edge's last syncs through, with faults still on.
    tokio::time::sleep(Duration::from_secs(2)).await;
    *stop.lock().unwrap() = true;
    let violations = comparison.await.unwrap();

    proxy.set_faults(Faults::none());
    let report = checker
        .settle(&urls[0], &edge.url, &REGIONS, Duration::from_secs(60))
        .await
        .with_proxy(proxy.stats());
    eprintln!("\n== two mergers on Postgres, faults and a kill -9\n{report}");
    assert!(report.ok(), "{report}");
    assert!(violations.is_empty(), "{violations:#?}");

    // Settled: both mergers read the same, for every counter and gauge.
    let client = tally_e2e::http_client();
    for path in report.rows.iter().map(|r| &r.path) {
        let read = |url: String| {
            let client = client.clone();
            async move { count_of(&get(&client, &url).await.1["count"]) }
        };
        let want = read(format!("{}{}", urls[0], merger_path(path))).await;
        let deadline = Instant::now() + VISIBILITY;
        loop {
            let other = read(format!("{}{}", urls[1], merger_path(path))).await;
            if other == want {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{path}: merger 0 reads {want:?}, merger 1 {other:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    edge.stop().await;
    a.terminate().await;
    b.unwrap().terminate().await;
    pg.stop();
}
