//! The Postgres store against a real, throwaway Postgres cluster (one per test, from
//! `tally_e2e::postgres`). `TALLY_NO_POSTGRES=1` skips these tests.

use std::collections::BTreeSet;
use std::time::Duration;

use sqlx::Connection;
use tally_crdt::{Carry, CounterKey, CounterKind, GlobalTotals, ReplicaId, SlotTotals, Timestamp};
use tally_e2e::postgres::PostgresCluster;
use tally_merger::config::Durability;
use tally_merger::store::postgres::PostgresStore;
use tally_merger::store::{
    CarryRow, Changes, CounterStore, HistoryStore, ImportOutcome, ImportRequest, ReplicaRow,
    ResetOutcome, ResetRequest, SlotRow, SnapshotRow, Store,
};
use tokio::sync::{mpsc, watch};

use crate::common::incarnation;
use crate::common::rows::*;

/// How long a watcher may take to report a change: a catch-up round is 1 s, and a test waits
/// at least 5x the longest it took under the test command's load (docs/testing.md).
const WATCH_LIMIT: Duration = Duration::from_secs(20);

async fn cluster(test: &str) -> Option<PostgresCluster> {
    PostgresCluster::start_unless_skipped(test).await
}

async fn open(url: &str) -> PostgresStore {
    PostgresStore::open(url, Durability::Full)
        .await
        .expect("the store opens and migrates")
}

/// 100 ids of 120 bytes starting with `fill`: a commit of them is too large to notify
/// ([`tally_merger::store::postgres::MAX_PAYLOAD`]), so only the catch-up reports it.
fn too_many_to_notify(fill: char) -> Vec<CounterKey> {
    let prefix: String = std::iter::repeat_n(fill, 117).collect();
    (0..100).map(|i| g(&format!("{prefix}{i:03}"))).collect()
}

/// Receives batches until every key of `wanted` was seen; false on timeout or end of stream.
async fn receive_all(
    rx: &mut mpsc::Receiver<Changes>,
    wanted: &[CounterKey],
    limit: Duration,
) -> bool {
    let mut missing: BTreeSet<&CounterKey> = wanted.iter().collect();
    let started = tokio::time::Instant::now();
    let deadline = started + limit;
    while !missing.is_empty() {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(Changes::Counters(batch))) => {
                for key in &batch {
                    missing.remove(key);
                }
            }
            // Nothing here prunes the log: a lost change is a failure.
            Ok(Some(Changes::All) | None) | Err(_) => return false,
        }
    }
    tally_e2e::record_timing(
        "merger: a Postgres watcher reports the changes it waits for",
        started.elapsed(),
        limit,
    );
    true
}

#[tokio::test]
async fn a_stale_slot_changes_nothing() {
    let Some(pg) = cluster("a_stale_slot_changes_nothing").await else {
        return;
    };
    let url = pg.create_database("stale").await;
    let store = open(&url).await;
    let x = key(CounterKind::Pn, "x");
    let r = replica(1);
    store
        .commit(&[registered(r, "eu", 100)], &[slot(&x, r, 10, 5, 100)])
        .await
        .expect("commit");
    let row = "SELECT p, n, updated_at, xmin FROM slots";
    let before = pg.psql(&url, row).await;
    // Smaller, equal, and a later time: nothing grows, so nothing is written.
    for (p, n) in [(9, 5), (10, 5), (0, 0), (10, 4)] {
        store
            .commit(&[], &[slot(&x, r, p, n, 500)])
            .await
            .expect("commit");
    }
    assert_eq!(pg.psql(&url, row).await, before);
    let loaded = store.load(std::slice::from_ref(&x)).await.expect("load");
    assert_eq!(loaded[0].slots[0].totals, SlotTotals { p: 10, n: 5 });
    assert_eq!(loaded[0].slots[0].at, at(100));
    store.close().await;
}

/// The store registers a counter once and then remembers it (issue 27: the registering
/// statement was a tenth of Postgres's time under two mergers), but only once the batch that
/// registered it committed: a counter whose first batch rolled back is registered again.
#[tokio::test]
async fn a_counter_whose_first_batch_rolled_back_is_registered_by_the_next() {
    let Some(pg) =
        cluster("a_counter_whose_first_batch_rolled_back_is_registered_by_the_next").await
    else {
        return;
    };
    let url = pg.create_database("rolled_back").await;
    let store = open(&url).await;
    let x = key(CounterKind::Pn, "x");
    let (known, unknown) = (replica(1), replica(2));
    // A slot of a replica never registered fails the batch after its counters were inserted.
    store
        .commit(&[], &[slot(&x, unknown, 4, 0, 100)])
        .await
        .expect_err("a slot of an unregistered replica fails its batch");
    assert_eq!(pg.psql(&url, "SELECT count(*) FROM counters").await, "0");
    for p in [3, 5] {
        store
            .commit(
                &[registered(known, "eu", 200)],
                &[slot(&x, known, p, 1, 200)],
            )
            .await
            .expect("commit");
    }
    let loaded = store.load(std::slice::from_ref(&x)).await.expect("load");
    assert_eq!(loaded[0].slots[0].totals, SlotTotals { p: 5, n: 1 });
    store.close().await;
}

/// Issue 27: a merge changes no indexed column of a slot (migration 0016), so Postgres makes
/// the update in place (HOT): no new index entries per merge. Before 0016 none was HOT (every
/// merge set the indexed `changed`).
#[tokio::test]
async fn slot_updates_are_made_in_place() {
    let Some(pg) = cluster("slot_updates_are_made_in_place").await else {
        return;
    };
    let url = pg.create_database("hot").await;
    let store = open(&url).await;
    let keys: Vec<CounterKey> = (0..20).map(|i| g(&format!("c{i}"))).collect();
    let r = replica(1);
    for round in 1..=10u64 {
        let ms = i64::try_from(round).expect("small");
        let rows: Vec<_> = keys.iter().map(|k| slot(k, r, round, 0, ms)).collect();
        store
            .commit(&[registered(r, "eu", ms)], &rows)
            .await
            .expect("commit");
    }
    store.close().await;
    // Statistics reach the shared counters when a backend goes idle (at most a second late).
    let stats = "SELECT n_tup_upd || ' ' || n_tup_hot_upd FROM pg_stat_user_tables \
                 WHERE relname = 'slots'";
    let mut seen = String::new();
    for _ in 0..50 {
        seen = pg.psql(&url, stats).await;
        let counts: Vec<u64> = seen
            .split_whitespace()
            .filter_map(|n| n.parse().ok())
            .collect();
        if let [updates, hot] = counts[..]
            && updates >= 180
        {
            assert!(
                hot * 10 >= updates * 9,
                "{hot} of {updates} slot updates were HOT"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the 180 slot updates never reached the statistics: {seen:?}");
}

#[tokio::test]
async fn two_stores_committing_in_opposite_key_orders_never_deadlock_and_end_at_the_max() {
    let Some(pg) = cluster("two_stores_never_deadlock").await else {
        return;
    };
    let url = pg.create_database("contended").await;
    let (a, b) = (open(&url).await, open(&url).await);
    // 50 counters x 4 replicas = 200 slots, every one written by both stores every round;
    // new counters and replicas registered by both at once in the first round.
    let keys: Vec<CounterKey> = (0..50).map(|i| g(&format!("k{i:02}"))).collect();
    let replicas: Vec<ReplicaId> = (1..=4).map(replica).collect();
    const ROUNDS: u64 = 50;
    let batch = |round: u64, forward: bool| {
        let (p, n) = if forward {
            (2 * round, 3 * round)
        } else {
            (2 * round + 1, round)
        };
        let mut rows: Vec<SlotRow> = keys
            .iter()
            .flat_map(|k| replicas.iter().map(move |r| (k, *r)))
            .map(|(k, r)| slot(k, r, p, n, 1000 + i64::try_from(round).expect("small")))
            .collect();
        // Replicas only in the first round: a replica's row, upserted by both, would
        // otherwise serialise the two stores' transactions and hide the slots' lock order.
        let mut regs: Vec<ReplicaRow> = replicas
            .iter()
            .filter(|_| round == 0)
            .map(|r| registered(*r, if forward { "eu" } else { "us" }, 1))
            .collect();
        if !forward {
            rows.reverse();
            regs.reverse();
        }
        (regs, rows)
    };
    let run = |store: PostgresStore, forward: bool| {
        let batches: Vec<_> = (0..ROUNDS).map(|round| batch(round, forward)).collect();
        tokio::spawn(async move {
            for (regs, rows) in batches {
                store.commit(&regs, &rows).await?;
            }
            Ok::<_, tally_merger::store::StoreError>(store)
        })
    };
    let (ta, tb) = (run(a, true), run(b, false));
    let both = async { (ta.await, tb.await) };
    let (ra, rb) = tokio::time::timeout(Duration::from_secs(240), both)
        .await
        .expect("both stores finish");
    let a = ra
        .expect("task a")
        .expect("store a never fails (no deadlock)");
    let b = rb
        .expect("task b")
        .expect("store b never fails (no deadlock)");
    let loaded = a.load(&keys).await.expect("load");
    assert_eq!(loaded.len(), keys.len());
    let want = SlotTotals {
        p: 2 * (ROUNDS - 1) + 1,
        n: 3 * (ROUNDS - 1),
    };
    for counter in &loaded {
        assert_eq!(counter.slots.len(), replicas.len());
        for s in &counter.slots {
            assert_eq!(s.totals, want, "{:?} {:?}", counter.key, s.replica);
        }
    }
    assert_eq!(a.replica_count().await.expect("count"), 4);
    assert_eq!(a.counter_count(CounterKind::G).await.expect("count"), 50);
    assert_eq!(b.counter_count(CounterKind::Pn).await.expect("count"), 0);
    a.close().await;
    b.close().await;
}

/// What only this store's statement has to do (`store_contract.rs` holds the rest): a batch
/// naming one replica twice keeps the earliest sync's region, and the replica's first and last
/// sync times.
#[tokio::test]
async fn the_region_of_a_replicas_first_sync_is_kept() {
    let Some(pg) = cluster("the_region_of_a_replicas_first_sync_is_kept").await else {
        return;
    };
    let url = pg.create_database("regions").await;
    let store = open(&url).await;
    let (r1, r2) = (replica(1), replica(2));
    let x = g("x");
    // In one batch, the earliest sync's region is the first one.
    let first = store
        .commit(
            &[registered(r1, "us", 20), registered(r1, "eu", 10)],
            &[slot(&x, r1, 1, 0, 20)],
        )
        .await
        .expect("commit");
    assert_eq!(first.regions, vec![(r1, "eu".to_owned())]);
    store
        .commit(
            &[registered(r2, "ap", 30), registered(r1, "us", 40)],
            &[slot(&x, r1, 2, 0, 40), slot(&x, r2, 1, 0, 30)],
        )
        .await
        .expect("commit");
    store
        .commit(&[registered(r1, "sa", 35)], &[])
        .await
        .expect("commit");
    // last_sync takes the max; first_sync stays.
    assert_eq!(
        pg.psql(
            &url,
            "SELECT region, first_sync, last_sync FROM replicas ORDER BY replica"
        )
        .await,
        "eu|10|40\nap|30|30"
    );
    store.close().await;
}

#[tokio::test]
async fn watch_delivers_a_key_committed_by_another_store_within_seconds() {
    let Some(pg) = cluster("watch_delivers_a_key_committed_by_another_store").await else {
        return;
    };
    let url = pg.create_database("watched").await;
    let (watcher, writer) = (open(&url).await, open(&url).await);
    let (stop_tx, stop) = watch::channel(false);
    let mut rx = watcher.watch(stop).expect("postgres watches");
    // Let the listener connect: this test is about the notification path being fast.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let x = g("hot:page");
    let started = std::time::Instant::now();
    writer
        .commit(
            &[registered(replica(5), "eu", 1)],
            &[slot(&x, replica(5), 3, 0, 1)],
        )
        .await
        .expect("commit");
    assert!(receive_all(&mut rx, std::slice::from_ref(&x), WATCH_LIMIT).await);
    eprintln!("reported after {:?}", started.elapsed());
    // Stop ends the stream.
    stop_tx.send_replace(true);
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        while rx.recv().await.is_some() {}
    })
    .await;
    assert!(end.is_ok(), "the stream ends after stop");
    watcher.close().await;
    writer.close().await;
}

#[tokio::test]
async fn after_close_the_database_sees_no_connection_of_the_store() {
    let Some(pg) = cluster("after_close_the_database_sees_no_connection_of_the_store").await else {
        return;
    };
    let url = pg.create_database("closed").await;
    let store = open(&url).await;
    let (_stop_tx, stop) = watch::channel(false);
    let _rx = store.watch(stop).expect("postgres watches");
    let mut observer = sqlx::PgConnection::connect(&url).await.expect("connect");
    let theirs = "SELECT count(*) FROM pg_stat_activity \
                  WHERE datname = current_database() AND pid <> pg_backend_pid()";
    // The listener is up: the watcher's connection is one of them.
    let listening = "SELECT count(*) FROM pg_stat_activity \
                     WHERE datname = current_database() AND query ILIKE 'LISTEN%'";
    let started = std::time::Instant::now();
    loop {
        let n: i64 = sqlx::query_scalar(listening)
            .fetch_one(&mut observer)
            .await
            .expect("count");
        if n == 1 {
            break;
        }
        assert!(started.elapsed() < WATCH_LIMIT, "the watcher listens");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    store.close().await;
    // A server process ends a moment after its client hung up (and a query the closing
    // watcher dropped mid-flight hangs up from a task of its own): wait for that, within a
    // bound far above it. A connection the store kept open stays for as long as the store.
    let closed = std::time::Instant::now();
    let limit = Duration::from_secs(5);
    loop {
        let left: i64 = sqlx::query_scalar(theirs)
            .fetch_one(&mut observer)
            .await
            .expect("count");
        if left == 0 {
            break;
        }
        if closed.elapsed() >= limit {
            let rows: Vec<(Option<String>, Option<String>, Option<String>)> = sqlx::query_as(
                "SELECT state, left(query, 60), backend_start::text FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid()",
            )
            .fetch_all(&mut observer)
            .await
            .expect("rows");
            panic!(
                "{left} connection(s) of the store still open {limit:?} after close(): {rows:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tally_e2e::record_timing(
        "merger: a closed Postgres store's connections are gone",
        closed.elapsed(),
        limit,
    );
    drop(store);
}

#[tokio::test]
async fn the_catch_up_finds_changes_no_notification_announced() {
    let Some(pg) = cluster("the_catch_up_finds_changes_no_notification_announced").await else {
        return;
    };
    let url = pg.create_database("caught").await;
    let (watcher, writer) = (open(&url).await, open(&url).await);
    let (_stop_tx, stop) = watch::channel(false);
    let mut rx = watcher.watch(stop).expect("postgres watches");
    let r = replica(3);

    // 1. A commit whose payload is too large to notify.
    let many = too_many_to_notify('x');
    let rows: Vec<SlotRow> = many.iter().map(|k| slot(k, r, 1, 0, 1)).collect();
    writer
        .commit(&[registered(r, "eu", 1)], &rows)
        .await
        .expect("commit");
    assert!(receive_all(&mut rx, &many, WATCH_LIMIT).await);
    // The same slots grown: the upsert's update path, just as silent.
    let grown: Vec<SlotRow> = many.iter().map(|k| slot(k, r, 2, 0, 2)).collect();
    writer.commit(&[], &grown).await.expect("commit");
    assert!(receive_all(&mut rx, &many, WATCH_LIMIT).await);

    // 2. A change written by hand, which sends no notification at all.
    pg.psql(
        &url,
        "INSERT INTO counters (kind, name) VALUES ('pn', 'by-hand'); \
         INSERT INTO slots (counter, replica, p, n, updated_at) \
         SELECT c.id, r.id, 1, 0, 0 FROM counters c, replicas r \
         WHERE c.name = 'by-hand' AND r.replica = '00000000000000000000000000000003'",
    )
    .await;
    let by_hand = key(CounterKind::Pn, "by-hand");
    assert!(receive_all(&mut rx, std::slice::from_ref(&by_hand), WATCH_LIMIT).await);

    // 3. A slow transaction: it writes (taking an xid) before a later commit, stays open
    //    over several catch-up rounds that see the later commit, then commits silently. Its
    //    xid is below what those rounds saw committed; it is still reported.
    let mut slow = sqlx::PgConnection::connect(&url).await.expect("connect");
    let mut tx = slow.begin().await.expect("begin");
    sqlx::query(
        "UPDATE slots SET p = p + 1 \
         WHERE counter = (SELECT id FROM counters WHERE name = 'by-hand')",
    )
    .execute(&mut *tx)
    .await
    .expect("update");
    let later = g("later");
    writer
        .commit(&[], &[slot(&later, r, 1, 0, 2)])
        .await
        .expect("commit");
    assert!(receive_all(&mut rx, std::slice::from_ref(&later), WATCH_LIMIT).await);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    while rx.try_recv().is_ok() {}
    tx.commit().await.expect("commit the slow transaction");
    assert!(receive_all(&mut rx, std::slice::from_ref(&by_hand), WATCH_LIMIT).await);
    assert_eq!(
        loaded_totals(&watcher, &by_hand, r).await,
        SlotTotals { p: 2, n: 0 }
    );
    // close() ends the watchers too.
    watcher.close().await;
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        while rx.recv().await.is_some() {}
    })
    .await;
    assert!(end.is_ok(), "the stream ends after close");
    writer.close().await;
}

/// A store's watcher reports what other writers commit, not what the store committed itself
/// (its cache holds that already): the change log names the writer of each row.
#[tokio::test]
async fn a_watcher_reloads_what_others_commit_not_its_own_commits() {
    let Some(pg) = cluster("a_watcher_reloads_what_others_commit").await else {
        return;
    };
    let url = pg.create_database("own").await;
    let (mine, other) = (open(&url).await, open(&url).await);
    let (_stop_tx, stop) = watch::channel(false);
    let mut rx = mine.watch(stop).expect("postgres watches");
    let r = replica(6);
    // Too large a commit to notify: only the catch-up could report it.
    let own = too_many_to_notify('o');
    let rows: Vec<SlotRow> = own.iter().map(|k| slot(k, r, 1, 0, 1)).collect();
    mine.commit(&[registered(r, "eu", 1)], &rows)
        .await
        .expect("commit");
    let theirs = g("theirs");
    // Several catch-up rounds see the own commit before the other store's.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    other
        .commit(&[registered(r, "eu", 1)], &[slot(&theirs, r, 1, 0, 2)])
        .await
        .expect("commit");
    let mut reported = Vec::new();
    let deadline = tokio::time::Instant::now() + WATCH_LIMIT;
    while !reported.contains(&theirs) {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(Changes::Counters(keys))) => reported.extend(keys),
            other => panic!("the other store's commit was not reported: {other:?}"),
        }
    }
    assert!(
        own.iter().all(|k| !reported.contains(k)),
        "the store's own commit was reported to it"
    );
    // A change by anyone else (here by hand, with no origin) is reported.
    pg.psql(&url, "UPDATE slots SET p = p + 1 WHERE counter = (SELECT id FROM counters WHERE name = 'theirs')")
        .await;
    let by_hand = tokio::time::timeout(WATCH_LIMIT, rx.recv()).await;
    assert_eq!(
        by_hand.ok().flatten(),
        Some(Changes::Counters(vec![theirs]))
    );
    for store in [mine, other] {
        store.close().await;
    }
}

/// The change log keeps its rows a while only: a watcher whose catch-up had not read rows
/// that were pruned is told to reload every counter it holds, once, then reports changes as
/// before; a watcher that started after the prune is not told.
#[tokio::test]
async fn a_watcher_that_lost_pruned_changes_is_told_to_reload_everything() {
    let Some(pg) = cluster("a_watcher_that_lost_pruned_changes").await else {
        return;
    };
    let url = pg.create_database("pruned").await;
    let (behind, writer) = (open(&url).await, open(&url).await);
    let r = replica(4);
    let x = g("before-the-prune");
    writer
        .commit(&[registered(r, "eu", 1)], &[slot(&x, r, 1, 0, 1)])
        .await
        .expect("commit");
    let rows = pg.psql(&url, "SELECT count(*) FROM changes").await;
    assert_ne!(rows, "0", "the commit is in the change log");
    let pruned = writer
        .prune_change_log(Duration::ZERO)
        .await
        .expect("prune");
    assert_eq!(pruned.to_string(), rows);
    assert_eq!(pg.psql(&url, "SELECT count(*) FROM changes").await, "0");

    let (_stop_tx, stop) = watch::channel(false);
    let mut rx = behind.watch(stop.clone()).expect("postgres watches");
    let first = tokio::time::timeout(WATCH_LIMIT, rx.recv()).await;
    assert_eq!(first.ok().flatten(), Some(Changes::All));

    let after = open(&url).await;
    let mut after_rx = after.watch(stop).expect("postgres watches");
    let y = g("after-the-prune");
    writer
        .commit(&[], &[slot(&y, r, 1, 0, 2)])
        .await
        .expect("commit");
    assert!(receive_all(&mut rx, std::slice::from_ref(&y), WATCH_LIMIT).await);
    assert!(receive_all(&mut after_rx, std::slice::from_ref(&y), WATCH_LIMIT).await);
    for store in [behind, after, writer] {
        store.close().await;
    }
}

#[tokio::test]
async fn retention_downsamples_and_deletes_history_in_postgres_too() {
    use tally_merger::history::Pruner;
    let Some(pg) = cluster("retention in postgres").await else {
        return;
    };
    let store = open(&pg.create_database("retention").await).await;
    let k = g("h");
    store
        .commit(
            &[registered(replica(1), "eu", 0)],
            &[slot(&k, replica(1), 1, 0, 0)],
        )
        .await
        .expect("commit");
    let points = |times: std::iter::StepBy<std::ops::RangeInclusive<i64>>| -> Vec<SnapshotRow> {
        times
            .map(|t| SnapshotRow {
                key: k.clone(),
                at: at(t),
                totals: GlobalTotals {
                    p: u128::try_from(t).unwrap(),
                    n: 0,
                },
                epoch: 0,
            })
            .collect()
    };
    store
        .write_history(&points((0..=20_000).step_by(50)))
        .await
        .expect("history");
    let mut pruner = Pruner::new("raw:1s,200ms:5s,1s:10s".parse().unwrap());
    pruner.prune(&store, at(20_000)).await.expect("prune");
    // Every point of the last second, the last of each 200 ms bucket of the 4 s before, the
    // last of each second of the 5 s before that, nothing older.
    let mut want: Vec<i64> = (10_000..15_000).step_by(1000).map(|b| b + 950).collect();
    want.extend((15_000..19_000).step_by(200).map(|b| b + 150));
    want.extend((19_000..=20_000).step_by(50));
    let kept: Vec<i64> = store
        .history(&k, Timestamp::MIN, Timestamp::MAX, 10_000)
        .await
        .expect("history")
        .iter()
        .map(|r| r.at.unix_ms())
        .collect();
    assert_eq!(kept, want);
}

#[tokio::test]
async fn a_retired_incarnation_is_folded_into_its_objects_carry_and_its_late_syncs_are_ignored() {
    let Some(pg) = cluster("retirement in postgres").await else {
        return;
    };
    let url = pg.create_database("retire").await;
    let (a, b) = (open(&url).await, open(&url).await);
    let k = g("r");
    let (a0, b0) = (incarnation(1, 0), incarnation(2, 0));
    a.commit(
        &[registered(a0, "eu", 1), registered(b0, "us", 1)],
        &[slot(&k, a0, 5, 0, 10), slot(&k, b0, 7, 0, 11)],
    )
    .await
    .expect("commit");
    let retired = b.retire(a0, at(20)).await.expect("retire");
    assert_eq!((retired.region.as_str(), retired.folded), ("eu", 1));
    let carry = Carry {
        region: "eu".into(),
        through: 1,
        totals: GlobalTotals { p: 5, n: 0 },
        ..Carry::default()
    };
    assert_eq!(
        retired.carries,
        [CarryRow {
            key: k.clone(),
            object: a0,
            carry: carry.clone(),
            at: at(10),
        }]
    );
    // A late sync of the retired incarnation through the other merger: ignored.
    let late = a
        .commit(&[registered(a0, "eu", 30)], &[slot(&k, a0, 50, 0, 30)])
        .await
        .expect("commit");
    assert_eq!(late.retired, [a0]);
    let loaded = a.load(std::slice::from_ref(&k)).await.expect("load");
    let counter = &loaded[0];
    assert_eq!(counter.totals(), GlobalTotals { p: 12, n: 0 });
    assert_eq!(counter.carries, [(a0, carry, at(10))]);
    assert_eq!(counter.slots.len(), 1, "only object 2 is live");
    assert_eq!(a.replica_count().await.expect("count"), 1);
    let again = b.retire(a0, at(40)).await.expect("again");
    assert_eq!((again.folded, again.carries.len()), (0, 0));
    // Listed with its carries even once every slot of it is folded.
    b.retire(b0, at(50)).await.expect("retire");
    let page = a.list(CounterKind::G, "", None, 10).await.expect("list");
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].totals(), GlobalTotals { p: 12, n: 0 });
    assert!(page[0].slots.is_empty());
}

#[tokio::test]
async fn a_reset_cuts_the_sums_every_merger_sees_it_and_old_epochs_stay_out() {
    let Some(pg) = cluster("a_reset_cuts_the_sums").await else {
        return;
    };
    let url = pg.create_database("reset").await;
    let (a, b) = (open(&url).await, open(&url).await);
    let (_stop_tx, stop) = watch::channel(false);
    let mut rx = b.watch(stop).expect("postgres watches");
    let x = key(CounterKind::Pn, "x");
    let (r1, r2) = (replica(1), replica(2));
    a.commit(
        &[registered(r1, "eu", 1), registered(r2, "us", 1)],
        &[slot(&x, r1, 5, 1, 1), slot(&x, r2, 3, 0, 1)],
    )
    .await
    .expect("commit");
    assert!(receive_all(&mut rx, std::slice::from_ref(&x), WATCH_LIMIT).await);
    let reset = |delete, expect_epoch, ms| ResetRequest {
        delete,
        expect_epoch,
        at: at(ms),
    };

    let ResetOutcome::Done { counter, removed } =
        a.reset(&x, reset(false, None, 100)).await.expect("reset")
    else {
        panic!("a counter with slots is reset");
    };
    assert_eq!(removed, GlobalTotals { p: 8, n: 1 });
    assert_eq!(counter.totals(), GlobalTotals::default());
    assert_eq!(counter.epoch.number, 1);
    assert_eq!(counter.epoch.at, Some(at(100)));
    // The other merger hears of it (NOTIFY) and loads the new epoch.
    assert!(receive_all(&mut rx, std::slice::from_ref(&x), WATCH_LIMIT).await);
    let seen = b.load(std::slice::from_ref(&x)).await.expect("load");
    assert_eq!(seen[0].epoch.number, 1);
    assert_eq!(seen[0].totals(), GlobalTotals::default());
    // The catch-up finds a cut no notification announced.
    pg.psql(&url, "UPDATE cuts SET p = p").await;
    assert!(receive_all(&mut rx, std::slice::from_ref(&x), WATCH_LIMIT).await);

    // Replays change nothing; growth past the cut counts once.
    for _ in 0..2 {
        b.commit(&[], &[slot(&x, r1, 5, 1, 2), slot(&x, r2, 2, 0, 2)])
            .await
            .expect("replay");
    }
    assert_eq!(
        a.load(std::slice::from_ref(&x)).await.expect("load")[0].totals(),
        GlobalTotals::default()
    );
    b.commit(&[], &[slot(&x, r1, 7, 4, 3)])
        .await
        .expect("commit");
    assert_eq!(
        a.load(std::slice::from_ref(&x)).await.expect("load")[0].totals(),
        GlobalTotals { p: 2, n: 3 }
    );

    // A retry of the reset (epoch 0) is refused; history of the ended epoch is not written.
    assert_eq!(
        b.reset(&x, reset(false, Some(0), 200))
            .await
            .expect("reset"),
        ResetOutcome::EpochMismatch { current: 1 }
    );
    let point = |ms, p, epoch| SnapshotRow {
        key: x.clone(),
        at: at(ms),
        totals: GlobalTotals { p, n: 0 },
        epoch,
    };
    a.write_history(&[point(300, 8, 0), point(301, 2, 1)])
        .await
        .expect("history");
    let history = a.history(&x, at(0), at(1000), 10).await.expect("history");
    assert_eq!(history, vec![point(301, 2, 1)]);

    // Two mergers resetting at once, each for epoch 1: exactly one succeeds.
    let (one, two) = tokio::join!(
        a.reset(&x, reset(false, Some(1), 400)),
        b.reset(&x, reset(false, Some(1), 400))
    );
    let outcomes = [one.expect("reset"), two.expect("reset")];
    let done = outcomes
        .iter()
        .filter(|o| matches!(o, ResetOutcome::Done { .. }))
        .count();
    assert_eq!(done, 1, "{outcomes:?}");
    assert!(outcomes.contains(&ResetOutcome::EpochMismatch { current: 2 }));

    // A delete: history gone, marked deleted; a counter nobody hit has nothing to reset.
    let ResetOutcome::Done { counter, .. } = a
        .reset(&x, reset(true, Some(2), 500))
        .await
        .expect("delete")
    else {
        panic!("deleted");
    };
    assert!(counter.epoch.deleted && !counter.listed());
    assert!(
        a.history(&x, at(0), at(1000), 10)
            .await
            .expect("history")
            .is_empty()
    );
    assert_eq!(
        a.reset(&g("never"), reset(false, None, 600))
            .await
            .expect("reset"),
        ResetOutcome::Unknown
    );
    a.close().await;
    b.close().await;
}

#[tokio::test]
async fn imports_of_one_id_from_two_mergers_at_once_keep_one_slot() {
    let Some(pg) = cluster("imports_of_one_id_from_two_mergers").await else {
        return;
    };
    let url = pg.create_database("imports").await;
    let (a, b) = (open(&url).await, open(&url).await);
    let x = g("x");
    let request = |p| ImportRequest {
        name: "ga-2025".into(),
        totals: SlotTotals { p, n: 0 },
        at: at(10),
    };
    let forty = request(40);
    let (one, two) = tokio::join!(a.import(&x, &forty), b.import(&x, &forty));
    let outcomes = [one.expect("import"), two.expect("import")];
    let created = outcomes
        .iter()
        .filter(|o| matches!(o, ImportOutcome::Imported(_)))
        .count();
    assert_eq!(created, 1, "{outcomes:?}");
    for outcome in &outcomes {
        let (ImportOutcome::Imported(c) | ImportOutcome::Unchanged(c)) = outcome else {
            panic!("{outcome:?}");
        };
        assert_eq!(c.totals(), GlobalTotals { p: 40, n: 0 });
    }
    assert_eq!(
        pg.psql(
            &url,
            "SELECT count(*) FROM replicas WHERE region = 'import'"
        )
        .await
        .trim(),
        "1",
        "the losing merger's replica is gone"
    );
    assert_eq!(
        b.import(&x, &request(41)).await.expect("import"),
        ImportOutcome::Conflict {
            existing: SlotTotals { p: 40, n: 0 }
        }
    );
    a.close().await;
    b.close().await;
}

/// Issue 28: a watcher notes each catch-up round it completes (`Store::caught_up_at`, which
/// `tally_peer_catchup_age_seconds` reads): none before the watch starts, one within a round
/// after, and later ones move it forward; a store that is not watched never has one.
#[tokio::test]
async fn a_watcher_notes_each_catch_up_round_it_completes() {
    let Some(pg) = cluster("a_watcher_notes_each_catch_up_round").await else {
        return;
    };
    let url = pg.create_database("caught_up").await;
    let (watched, other) = (open(&url).await, open(&url).await);
    assert_eq!(watched.caught_up_at(), None, "no round before the watch");
    let (_stop_tx, stop) = watch::channel(false);
    let mut rx = watched.watch(stop).expect("postgres watches");
    let started = tokio::time::Instant::now();
    let mut first = None;
    while first.is_none() {
        assert!(
            started.elapsed() < WATCH_LIMIT,
            "a round completes within {WATCH_LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        first = watched.caught_up_at();
    }
    tally_e2e::record_timing(
        "merger: a Postgres watcher completes its first catch-up round",
        started.elapsed(),
        WATCH_LIMIT,
    );
    let first = first.expect("set above");
    let r = replica(7);
    other
        .commit(&[registered(r, "eu", 1)], &[slot(&g("later"), r, 1, 0, 1)])
        .await
        .expect("commit");
    assert!(receive_all(&mut rx, &[g("later")], WATCH_LIMIT).await);
    let later = tokio::time::Instant::now();
    while watched.caught_up_at() == Some(first) {
        assert!(
            later.elapsed() < WATCH_LIMIT,
            "later rounds move it forward"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        other.caught_up_at(),
        None,
        "a store nobody watches has no round"
    );
    for store in [watched, other] {
        store.close().await;
    }
}
