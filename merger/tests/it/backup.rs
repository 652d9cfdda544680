//! `tally-merger backup`: a copy taken while syncs commit is a consistent database holding
//! every sync acknowledged before it started, a merger restored from it serves exactly what
//! it holds, and an existing target is never touched. SQLite through the real binary; Postgres
//! (`pg_dump` / `pg_restore`) on a throwaway cluster, skipped with `TALLY_NO_POSTGRES=1`.

use std::collections::HashMap;
use std::process::Output;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;
use serde_json::Value;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection};
use tally_e2e::postgres::PostgresCluster;
use tally_merger::{Config, Merger};

/// Replicas syncing during the backup, one client each.
const REPLICAS: u64 = 8;
/// Counters every sync of the load names, all with the same total: one transaction each.
const IDS: usize = 20;

fn ids() -> Vec<String> {
    (0..IDS).map(|i| format!("k{i:02}")).collect()
}

/// Runs the binary's `backup` subcommand with `args`.
async fn backup(args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_tally-merger"))
        .arg("backup")
        .args(args)
        .env_remove("TALLY_DATABASE_URL")
        .env_remove("TALLY_PG_DUMP")
        .output()
        .await
        .expect("the merger binary runs")
}

#[track_caller]
fn assert_succeeded(output: &Output) {
    assert!(
        output.status.success(),
        "backup failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        String::from_utf8_lossy(&output.stdout).starts_with("backup written to "),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
}

async fn post_sync(client: &reqwest::Client, url: &str, body: &Value) -> bool {
    client
        .post(format!("{url}/v1/sync"))
        .bearer_auth(TOKEN)
        .json(body)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// Per replica: (newest total acknowledged, newest total sent).
type Totals = Arc<Mutex<HashMap<u64, (u64, u64)>>>;

/// Syncs with growing totals from every replica, as fast as the merger answers, until `stop`.
struct Load {
    totals: Totals,
    acked: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(url: &str) -> Load {
        let totals: Totals = Arc::default();
        let acked = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let client = tally_e2e::http_client();
        let clients = (1..=REPLICAS)
            .map(|r| {
                let (client, url) = (client.clone(), url.to_owned());
                let (totals, acked, stop) =
                    (Arc::clone(&totals), Arc::clone(&acked), Arc::clone(&stop));
                tokio::spawn(async move {
                    let ids = ids();
                    while !stop.load(Ordering::Relaxed) {
                        let next = {
                            let mut t = totals.lock().unwrap();
                            let entry = t.entry(r).or_default();
                            entry.1 += r;
                            entry.1
                        };
                        let counters: Vec<(&str, &str, u64, u64)> =
                            ids.iter().map(|id| (id.as_str(), "g", next, 0)).collect();
                        if post_sync(&client, &url, &sync_body(r, "eu", &counters)).await {
                            let mut t = totals.lock().unwrap();
                            let entry = t.get_mut(&r).unwrap();
                            entry.0 = entry.0.max(next);
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        Load {
            totals,
            acked,
            stop,
            clients,
        }
    }

    fn totals(&self) -> HashMap<u64, (u64, u64)> {
        self.totals.lock().unwrap().clone()
    }

    async fn stop(self) -> HashMap<u64, (u64, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        for client in self.clients {
            client.await.unwrap();
        }
        self.totals.lock().unwrap().clone()
    }
}

/// Each replica's recorded slot in every counter of [`ids`], as the merger holds them.
async fn recorded(m: &TestMerger) -> HashMap<u64, Vec<u64>> {
    let ids = ids();
    let keys: Vec<(&str, &str)> = ids.iter().map(|id| (id.as_str(), "g")).collect();
    let mut out = HashMap::new();
    for r in 1..=REPLICAS {
        let (status, answer) = m.read(&read_body(Some(r), &keys)).await;
        assert!(status.is_success(), "{answer}");
        let values = answer["counters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["recorded"]["p"].as_u64().unwrap_or(0))
            .collect();
        out.insert(r, values);
    }
    out
}

#[tokio::test]
async fn a_backup_taken_while_syncs_commit_holds_every_acknowledged_sync_whole() {
    let live = tally_e2e::temp_dir();
    let m = start_binary(live.path()).await;
    let client = tally_e2e::http_client();
    // 20,000 counters first, so the copy takes a while and the load runs through it.
    for batch in 0..20 {
        let names: Vec<String> = (0..1000).map(|i| format!("z{batch:02}-{i:04}")).collect();
        let counters: Vec<(&str, &str, u64, u64)> =
            names.iter().map(|id| (id.as_str(), "g", 1, 0)).collect();
        assert!(post_sync(&client, &m.url, &sync_body(100, "us", &counters)).await);
    }
    let load = Load::start(&m.url);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let target = live.path().join("backup.db");
    let database = database_url(live.path());
    let (before, acked_before) = (load.totals(), load.acked.load(Ordering::Relaxed));
    let output = backup(&[
        "--database-url",
        &database,
        "--to",
        target.to_str().unwrap(),
    ])
    .await;
    let (after, acked_after) = (load.totals(), load.acked.load(Ordering::Relaxed));
    assert_succeeded(&output);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let last = load.stop().await;
    m.terminate().await;
    assert!(
        acked_after > acked_before,
        "syncs kept committing during the backup ({acked_before} before, {acked_after} after)"
    );

    // A sound SQLite database on its own: no -wal beside it, integrity check passes.
    let mut conn = SqliteConnectOptions::new()
        .filename(&target)
        .read_only(true)
        .connect()
        .await
        .expect("the backup opens");
    let check: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(check, "ok");
    conn.close().await.unwrap();

    // Restore: the backup as the database file of a merger.
    let restore = tally_e2e::temp_dir();
    std::fs::copy(&target, restore.path().join("tally.db")).unwrap();
    let m = TestMerger::open_in(restore, |_| {}).await;
    let slots = recorded(&m).await;
    let mut newer_exists = false;
    for r in 1..=REPLICAS {
        let values = &slots[&r];
        assert!(
            values.iter().all(|v| *v == values[0]),
            "replica {r}: every sync is in the backup whole or not at all, got {values:?}"
        );
        let (held, acked, sent) = (values[0], before[&r].0, after[&r].1);
        assert!(
            (acked..=sent).contains(&held),
            "replica {r}: acknowledged {acked} before the backup, sent {sent} by its end, the backup holds {held}"
        );
        newer_exists |= last[&r].0 > held;
    }
    assert!(newer_exists, "the live database moved on after the backup");
    for id in ids() {
        let (_, view) = m.get(&format!("/v1/counters/{id}")).await;
        let sum: u64 = slots.values().map(|v| v[0]).sum();
        assert_eq!(view["count"].as_u64(), Some(sum), "{id}: {view}");
    }
    let (_, filler) = m.get("/v1/counters/z19-0999").await;
    assert_eq!(filler["count"], 1, "{filler}");

    // Reopened, the restored merger serves exactly the same.
    let served = m.everything().await;
    let m = m.reopen().await;
    assert_eq!(m.everything().await, served);
    m.merger.close().await;
}

#[tokio::test]
async fn a_backup_to_an_existing_file_fails_clearly_and_leaves_it_untouched() {
    let dir = tally_e2e::temp_dir();
    let m = TestMerger::open_in(tally_e2e::temp_dir(), |_| {}).await;
    let (status, _) = m.sync(&sync_body(1, "eu", &[("home", "g", 715, 0)])).await;
    assert!(status.is_success());
    let database = database_url(m.dir.path());

    let target = dir.path().join("backup.db");
    std::fs::write(&target, b"last week's backup").unwrap();
    let output = backup(&[
        "--database-url",
        &database,
        "--to",
        target.to_str().unwrap(),
    ])
    .await;
    assert!(!output.status.success(), "an existing target is refused");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with("error: ") && stderr.contains("exists already"),
        "{stderr}"
    );
    assert!(stderr.contains(target.to_str().unwrap()), "{stderr}");
    assert_eq!(std::fs::read(&target).unwrap(), b"last week's backup");

    let missing = database_url(&dir.path().join("nowhere"));
    let fresh = dir.path().join("fresh.db");
    let output = backup(&["--database-url", &missing, "--to", fresh.to_str().unwrap()]).await;
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("no SQLite database"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!fresh.exists(), "a failed backup leaves no file");

    // The merger kept running through all of it, and a backup to a new name works.
    let output = backup(&["--database-url", &database, "--to", fresh.to_str().unwrap()]).await;
    assert_succeeded(&output);
    m.merger.close().await;
}

/// An in-process merger on a Postgres database.
async fn open_postgres(url: &str) -> TestMerger {
    let merger = Merger::open(Config::new(url, TOKEN))
        .await
        .expect("the merger opens the Postgres database");
    let app = merger.router();
    TestMerger {
        dir: tally_e2e::temp_dir(),
        merger,
        app,
    }
}

#[tokio::test]
async fn a_pg_dump_backup_restores_with_pg_restore_over_the_database_or_into_a_fresh_one() {
    let Some(pg) = PostgresCluster::start_unless_skipped("backup with pg_dump").await else {
        return;
    };
    let url = pg.create_database("tally").await;
    let live = open_postgres(&url).await;
    for body in [
        sync_body(1, "eu", &[("home", "g", 715, 0), ("now", "pn", 9, 4)]),
        sync_body(2, "us", &[("home", "g", u64::MAX, 0)]),
    ] {
        assert!(live.sync(&body).await.0.is_success());
    }
    let backed_up = live.everything().await;
    let dir = tally_e2e::temp_dir();
    let dump = dir.path().join("tally.dump");
    let output = backup(&["--database-url", &url, "--to", dump.to_str().unwrap()]).await;
    assert_succeeded(&output);
    let output = backup(&["--database-url", &url, "--to", dump.to_str().unwrap()]).await;
    assert!(
        !output.status.success() && String::from_utf8_lossy(&output.stderr).contains("exists"),
        "a second dump to the same file is refused"
    );

    for body in [
        sync_body(1, "eu", &[("home", "g", 800, 0), ("later", "g", 1, 0)]),
        sync_body(3, "ap", &[("now", "pn", 1, 0)]),
    ] {
        assert!(live.sync(&body).await.0.is_success());
    }
    assert_ne!(live.everything().await, backed_up);
    live.merger.close().await;

    // Over the database itself, the mergers stopped.
    pg.pg_restore(
        &[
            "--clean",
            "--if-exists",
            "--single-transaction",
            "--dbname",
            &url,
        ],
        &dump,
    )
    .await;
    let restored = open_postgres(&url).await;
    assert_eq!(restored.everything().await, backed_up);
    let (_, later) = restored.get("/v1/counters/later").await;
    assert_eq!(later["count"], 0, "what came after the backup is gone");
    restored.merger.close().await;

    // Into a fresh database.
    let fresh = pg.create_database("restored").await;
    pg.pg_restore(&["--single-transaction", "--dbname", &fresh], &dump)
        .await;
    let restored = open_postgres(&fresh).await;
    assert_eq!(restored.everything().await, backed_up);
    restored.merger.close().await;
    pg.stop();
}
