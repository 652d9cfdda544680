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
use tally_e2e::{Edge, EdgeOptions, MergerProcess, hit, http_client, serial, temp_dir, wait_until};

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
    // How long an isolate keeps the version a merger took (no sync fails here, so no backoff
    // waits this long): a few syncs of every object within it.
    options.max_backoff_ms = 5000;
    // One object per counter and region, so that both rounds below reach the same objects.
    options.spread = 1;
    let edge = Edge::start(&options).await;
    let url = Arc::new(Mutex::new(edge.url.clone()));
    let checker = Checker::new();

    let mut workload = Workload::new("roll", 3, 2, 1);
    workload.hits_per_client = 8;
    checker.run(&url, &workload).await;
    // A second round a second later, within the 5 s the version is remembered: the objects
    // sync again.
    tokio::time::sleep(Duration::from_secs(1)).await;
    workload.seed = 3;
    checker.run(&url, &workload).await;
    let report = checker
        .settle(&merger.url, &edge.url, &REGIONS, Duration::from_secs(60))
        .await;
    eprintln!("\n== an edge a release ahead of its merger\n{report}");
    assert!(report.ok(), "{report}");
    assert_eq!((report.lost(), report.doubled()), (0, 0), "{report}");
    let refused = proxy.stats().refused_version;
    let versions = sync_versions(&proxy);
    let down = versions.iter().filter(|v| **v <= BEHIND).count();
    eprintln!("{refused} syncs refused, {down} taken one version down");
    assert!(
        refused > 0,
        "no sync was refused: the edge never spoke {PROTOCOL_VERSION}"
    );
    assert!(down > 0, "no sync went one version down: {versions:?}");
    // The version the merger took is remembered (for MAX_BACKOFF_MS, 5 s here, against syncs
    // every 200 ms): an object's later syncs go down without a refusal first. (Without it every
    // sync is refused once before it goes down: as many refusals as syncs sent down.)
    assert!(
        refused < u64::try_from(down).expect("a count"),
        "{refused} syncs refused for {down} taken one version down: each sync was refused first"
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
    // An object that keeps syncing tries the newest version again once the version it
    // remembered is `MAX_BACKOFF_MS` old (the syncs taken in it meanwhile do not extend that:
    // on 960e41b they did, and steady syncs stayed one version down for good).
    let c = http_client();
    let newest = u64::from(PROTOCOL_VERSION);
    wait_until(
        Duration::from_secs(60),
        "a sync in the newest version after the upgrade",
        || async {
            assert_eq!(hit(&c, &edge.url, "/roll-c0/counter", "eu", 1).await.0, 200);
            sync_versions(&proxy).contains(&newest)
        },
    )
    .await;
    assert_eq!(
        proxy.stats().refused_version,
        refused,
        "refused after the upgrade"
    );
    edge.stop().await;
    merger.terminate().await;
}
