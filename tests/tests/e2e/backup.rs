//! Backup and restore, end to end, on both stores: hits through the edge under `wrangler dev`,
//! a backup with the real `tally-merger backup` while they commit, more hits after it, the
//! merger stopped and its database restored from the (now older) backup, the merger started
//! again on the same port, and no further hits. Objects rotate their incarnation every second
//! and a half, so between the backup and the restore at least three incarnations are retired
//! and folded into their objects' carries — hits of incarnations that exist nowhere in the
//! backup and are no longer any object's live slot; and a counter and a gauge are reset and a
//! counter deleted (then counted again), which the backup does not hold either: each object
//! learns its share of each reset and re-sends it, so the restored merger takes the resets up
//! instead of counting the old epoch again. The edge's anti-entropy sweep
//! (`ANTI_ENTROPY_MS`) re-sends every row's live slot and carry, and the checker must find every
//! count back at what the acknowledged hits allow: lost 0, double-counted 0
//! (docs/deployment.md, "Backups and restore").
//!
//! The Postgres run needs Postgres (scripts/bootstrap.sh installs it); it is skipped only with
//! `TALLY_NO_POSTGRES=1`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tally_e2e::checker::{Checker, Workload, merger_path};
use tally_e2e::postgres::PostgresCluster;
use tally_e2e::{
    Edge, EdgeOptions, MergerProcess, count_of, free_port, get, merger_backup, metric, serial,
    temp_dir, wait_until,
};

const REGIONS: [&str; 3] = ["eu", "us", "ap"];

/// The edge's sweep period in these tests: each object re-sends every row this often.
const ANTI_ENTROPY_MS: u64 = 2000;

/// How long the restored system gets to settle: a few sweep periods, with room for a loaded
/// 2-core machine.
const REPAIR: Duration = Duration::from_secs(30);

/// An object rotates at its first clean moment this long after its incarnation's first hit.
const ROTATE_MS: u64 = 1500;

/// Incarnations retired between the backup and the restore, at least.
const ROTATIONS: f64 = 3.0;

/// The merger's admin token here (resets and deletes).
const ADMIN: &str = "e2e-admin-token-0123456789";

/// Resets the first counter and the first gauge of `paths` and deletes the second counter,
/// recording what each removed.
async fn reset_some(client: &reqwest::Client, merger: &str, checker: &Checker, paths: &[String]) {
    let (counters, gauges): (Vec<&String>, Vec<&String>) =
        paths.iter().partition(|p| p.ends_with("/counter"));
    for (path, delete) in [
        (counters[0], false),
        (gauges[0], false),
        (counters[1], true),
    ] {
        let target = format!("{merger}{}", merger_path(path));
        let request = if delete {
            client.delete(&target)
        } else {
            client.post(format!("{target}/reset"))
        };
        let answer = request
            .bearer_auth(ADMIN)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .expect("the merger answers");
        assert_eq!(answer.status().as_u16(), 200, "{path}");
        let body: serde_json::Value = answer.json().await.expect("JSON");
        let removed = count_of(&body["removed"]).expect("a removed count");
        assert!(removed != 0, "{path}: the reset removed nothing");
        checker.reset(path, removed);
    }
}

/// Where a test's database lives, and how it is restored.
enum Store {
    /// The SQLite file `tally.db` in this directory.
    Sqlite(tempfile::TempDir),
    /// A database of a throwaway cluster.
    Postgres { pg: PostgresCluster, url: String },
}

impl Store {
    fn url(&self) -> String {
        match self {
            Store::Sqlite(dir) => sqlite_url(dir.path()),
            Store::Postgres { url, .. } => url.clone(),
        }
    }

    /// Restores `backup` over the database, as docs/deployment.md says (the merger stopped).
    async fn restore(&self, backup: &Path) {
        match self {
            Store::Sqlite(dir) => {
                let db = dir.path().join("tally.db");
                for stale in ["tally.db-wal", "tally.db-shm"] {
                    let _ = std::fs::remove_file(dir.path().join(stale));
                }
                std::fs::copy(backup, &db).expect("the backup can be copied over the database");
            }
            Store::Postgres { pg, url } => {
                pg.pg_restore(
                    &[
                        "--clean",
                        "--if-exists",
                        "--single-transaction",
                        "--dbname",
                        url,
                    ],
                    backup,
                )
                .await;
            }
        }
    }

    /// A separate database restored from `backup`, to read what the backup holds.
    async fn copy_of(&self, backup: &Path, scratch: &Path) -> String {
        match self {
            Store::Sqlite(_) => {
                std::fs::copy(backup, scratch.join("tally.db")).unwrap();
                sqlite_url(scratch)
            }
            Store::Postgres { pg, .. } => {
                let url = pg.create_database("backup_copy").await;
                pg.pg_restore(&["--single-transaction", "--dbname", &url], backup)
                    .await;
                url
            }
        }
    }
}

fn sqlite_url(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("tally.db").display())
}

/// What a merger on `database` reads for each path (on a port the edge does not know).
async fn counts(database: &str, paths: &[String]) -> BTreeMap<String, i128> {
    let merger = MergerProcess::start_database(database, 0, &[]).await;
    let client = tally_e2e::http_client();
    let mut out = BTreeMap::new();
    for path in paths {
        let (status, view) = get(&client, &format!("{}{}", merger.url, merger_path(path))).await;
        assert_eq!(status, 200, "{path}: {view}");
        out.insert(path.clone(), count_of(&view["count"]).unwrap_or_default());
    }
    merger.terminate().await;
    out
}

/// The scenario on `store`: hits, a backup while they commit, more hits, all synced; stop,
/// restore the backup, start on the same port; the anti-entropy sweep must bring every count
/// back with no new hit.
async fn a_restore_from_an_older_backup_is_repaired_by_anti_entropy(store: Store, name: &str) {
    let started = Instant::now();
    let (state, scratch) = (temp_dir(), temp_dir());
    let database = store.url();
    let port = free_port();
    let merger = MergerProcess::start_database(&database, port, &["--admin-token", ADMIN]).await;
    let mut options = EdgeOptions::new(&merger.url, state.path());
    options.sync_interval_ms = 200;
    options.max_backoff_ms = 1000;
    options.anti_entropy_ms = ANTI_ENTROPY_MS;
    options.rotate_ms = Some(ROTATE_MS);
    let edge = Edge::start(&options).await;
    let client = tally_e2e::http_client();
    let url = Arc::new(Mutex::new(edge.url.clone()));
    let checker = Checker::new();

    // Hits, and the backup taken while they are counted and synced.
    let mut before = Workload::new(name, 3, 2, 1);
    before.hits_per_client = 12;
    let load = {
        let (checker, url, before) = (Arc::clone(&checker), Arc::clone(&url), before.clone());
        tokio::spawn(async move { checker.run(&url, &before).await })
    };
    let total = u64::try_from(before.clients * before.hits_per_client).unwrap();
    wait_until(
        Duration::from_secs(60),
        "a third of the hits answered",
        || {
            let checker = Arc::clone(&checker);
            async move {
                checker
                    .tallies()
                    .values()
                    .map(|t| t.hits_acked)
                    .sum::<u64>()
                    >= total / 3
            }
        },
    )
    .await;
    let file = scratch.path().join(format!("{name}.backup"));
    // Retirements the merger committed before the backup started are in it; later ones
    // (counted from here) may not be.
    let retired_before = metric(&client, &merger.url, "tally_retirements_total").await;
    let folded_before = metric(&client, &merger.url, "tally_slots_folded_total").await;
    merger_backup(&database, &file).await;
    eprintln!(
        "backup taken with the hits {}",
        if load.is_finished() {
            "done"
        } else {
            "still running"
        }
    );
    load.await.unwrap();
    // More hits after the backup, in bursts with quiet gaps in which the objects rotate,
    // and everything synced: the live database is complete and the edge has nothing dirty
    // left, so only the sweep can repair what the restore undoes.
    let mut round = 2;
    loop {
        let mut after = Workload::new(name, 3, 2, round);
        after.hits_per_client = 6;
        checker.run(&url, &after).await;
        if round == 2 {
            // Resets and a delete the backup does not hold, counted again in later rounds:
            // the objects learn their share of each and tell the restored merger.
            reset_some(&client, &merger.url, &checker, &after.paths).await;
        }
        tokio::time::sleep(Duration::from_millis(ROTATE_MS + 1000)).await;
        let retired = metric(&client, &merger.url, "tally_retirements_total").await;
        if retired - retired_before >= ROTATIONS || round == 12 {
            break;
        }
        round += 1;
    }
    let report = checker
        .settle(&merger.url, &edge.url, &REGIONS, REPAIR)
        .await;
    assert!(report.ok(), "before the restore:\n{report}");
    let retired = metric(&client, &merger.url, "tally_retirements_total").await - retired_before;
    let folded = metric(&client, &merger.url, "tally_slots_folded_total").await - folded_before;
    eprintln!("{retired} incarnations retired and {folded} slots folded after the backup");
    assert!(
        retired >= ROTATIONS && folded >= 1.0,
        "only {retired} retirements ({folded} slots folded) between the backup and the restore"
    );
    merger.terminate().await;

    // The backup is older: it lacks hits the edge acknowledged.
    let tallies = checker.tallies();
    let paths: Vec<String> = tallies.keys().cloned().collect();
    let copy = store.copy_of(&file, scratch.path()).await;
    let held = counts(&copy, &paths).await;
    let behind: i128 = paths
        .iter()
        .filter(|p| p.ends_with("/counter"))
        .map(|p| tallies[p].acked - held[p])
        .sum();
    eprintln!("the backup is {behind} counter hits behind the acknowledged totals: {held:?}");
    assert!(behind > 0, "hits after the backup are missing from it");

    // Restore with the merger stopped, start it where the edge expects it, and send nothing.
    store.restore(&file).await;
    let merger = MergerProcess::start_database(&database, port, &[]).await;
    let restarted = Instant::now();
    let report = checker
        .settle(&merger.url, &edge.url, &REGIONS, REPAIR)
        .await;
    eprintln!(
        "\n== {name}: restored from a backup {behind} hits behind; settled {:?} after the \
         restart ({:?} in all)\n{report}",
        restarted.elapsed(),
        started.elapsed()
    );
    assert!(report.ok(), "{report}");
    assert_eq!((report.lost(), report.doubled()), (0, 0), "{report}");
    edge.stop().await;
    merger.terminate().await;
    if let Store::Postgres { pg, .. } = store {
        pg.stop();
    }
}

#[tokio::test]
async fn a_sqlite_merger_restored_from_an_older_backup_gets_every_count_back_from_the_edge() {
    let _serial = serial().await;
    a_restore_from_an_older_backup_is_repaired_by_anti_entropy(Store::Sqlite(temp_dir()), "bk-sq")
        .await;
}

#[tokio::test]
async fn a_postgres_database_restored_with_pg_restore_gets_every_count_back_from_the_edge() {
    let _serial = serial().await;
    let Some(pg) = PostgresCluster::start_unless_skipped("backup and restore on Postgres").await
    else {
        return;
    };
    let url = pg.create_database("tally").await;
    a_restore_from_an_older_backup_is_repaired_by_anti_entropy(
        Store::Postgres { pg, url },
        "bk-pg",
    )
    .await;
}
