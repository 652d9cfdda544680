//! A rolling deploy in the wrong order, end to end: today's edge (its syncs in the newest
//! protocol version) against a merger a release behind — the fault proxy answers every sync of
//! a later version than 5 with `422 unsupported_version`, as such a merger does, and forwards
//! the rest to the real merger. The edge must send the same totals again one version down
//! (`SyncRequest::downgraded`) and lose nothing; once the merger is upgraded its syncs go in the
//! newest version again.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tally_crdt::PROTOCOL_VERSION;
use tally_e2e::checker::{Checker, Workload};
use tally_e2e::proxy::{Faults, Proxy};
use tally_e2e::{Edge, EdgeOptions, MergerProcess, serial, temp_dir};

const REGIONS: [&str; 3] = ["eu", "us", "ap"];

/// The version the merger of the release before speaks.
const BEHIND: u64 = PROTOCOL_VERSION as u64 - 1;

/// The versions of the syncs the proxy recorded.
fn sync_versions(proxy: &Proxy) -> Vec<u64> {
    proxy
        .recorded()
        .iter()
        .filter(|(path, _)| path == "/v1/sync")
        .filter_map(|(_, body)| serde_json::from_slice::<serde_json::Value>(body).ok())
        .filter_map(|body| body["version"].as_u64())
        .collect()
}

#[tokio::test]
async fn an_edge_a_release_ahead_of_its_merger_syncs_one_version_down_and_loses_nothing() {
    let _serial = serial().await;
    let (db, state) = (temp_dir(), temp_dir());
    let merger = MergerProcess::start(db.path(), &[]).await;
    let proxy = Proxy::start(&merger.url, Faults::none(), 0x7011).await;
    proxy.speak_at_most(Some(BEHIND));
    proxy.record();
    let mut options = EdgeOptions::new(&proxy.url, state.path());
    options.sync_interval_ms = 200;
    options.max_backoff_ms = 1000;
    let edge = Edge::start(&options).await;
    let url = Arc::new(Mutex::new(edge.url.clone()));
    let checker = Checker::new();

    let mut workload = Workload::new("roll", 3, 2, 1);
    workload.hits_per_client = 8;
    checker.run(&url, &workload).await;
    let report = checker
        .settle(&merger.url, &edge.url, &REGIONS, Duration::from_secs(60))
        .await;
    eprintln!("\n== an edge a release ahead of its merger\n{report}");
    assert!(report.ok(), "{report}");
    assert_eq!((report.lost(), report.doubled()), (0, 0), "{report}");
    let refused = proxy.stats().refused_version;
    let versions = sync_versions(&proxy);
    assert!(
        refused > 0,
        "no sync was refused: the edge never spoke {PROTOCOL_VERSION}"
    );
    assert!(
        versions.iter().any(|v| *v <= BEHIND),
        "no sync went one version down: {versions:?}"
    );

    // The merger is upgraded: the syncs go in the newest version again, and are taken.
    proxy.speak_at_most(None);
    proxy.record();
    workload.seed = 2;
    checker.run(&url, &workload).await;
    let report = checker
        .settle(&merger.url, &edge.url, &REGIONS, Duration::from_secs(60))
        .await;
    assert!(report.ok(), "after the upgrade:\n{report}");
    let versions = sync_versions(&proxy);
    assert!(
        versions.contains(&u64::from(PROTOCOL_VERSION)),
        "no sync of version {PROTOCOL_VERSION} after the upgrade: {versions:?}"
    );
    assert_eq!(
        proxy.stats().refused_version,
        refused,
        "refused after the upgrade"
    );
    edge.stop().await;
    merger.terminate().await;
}
