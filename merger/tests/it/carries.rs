//! Carries in both stores: an edge object's carry of its retired incarnations merges column
//! by column with max in SQL, takes the slots it holds out of the store, keeps a late slot
//! of a carried generation out, and heals a store that folded less than the object carries.
//! One contract ([`carries_merge_by_max_and_heal`]), run on SQLite and on Postgres; and over
//! HTTP, a version-4 sync whose carry raises the count answers it.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::json;
use tally_crdt::{CounterKey, CounterKind, GlobalTotals, ReplicaId, SlotTotals, Timestamp};
use tally_e2e::postgres::PostgresCluster;
use tally_merger::config::Durability;
use tally_merger::store::postgres::PostgresStore;
use tally_merger::store::sqlite::SqliteStore;
use tally_merger::store::{Changes, ReplicaRow, SlotRow, Store, StoredCounter, sent_carry};
use tokio::sync::watch;

use crate::common::*;

fn viewers() -> CounterKey {
    CounterKey::new(CounterKind::Pn, "viewers").expect("a valid id")
}

fn at(ms: i64) -> Timestamp {
    Timestamp::from_unix_ms(ms)
}

/// Commits one row of `viewers` from `replica` (region `eu`): its slot, and its carry.
async fn sync(store: &dyn Store, replica: ReplicaId, slot: (u64, u64), carried: (u64, u64)) {
    let rows = [SlotRow {
        key: viewers(),
        replica,
        totals: SlotTotals {
            p: slot.0,
            n: slot.1,
        },
        at: at(10),
        visits: Vec::new(),
        carry: sent_carry(
            replica,
            SlotTotals {
                p: carried.0,
                n: carried.1,
            },
            None,
        ),
    }];
    let replicas = [ReplicaRow {
        replica,
        region: "eu".into(),
        at: at(10),
    }];
    store.commit(&replicas, &rows).await.expect("commit");
}

async fn load(store: &dyn Store) -> StoredCounter {
    let mut loaded = store.load(&[viewers()]).await.expect("load");
    assert_eq!(loaded.len(), 1, "the counter is stored");
    loaded.remove(0)
}

/// The stored carry of object 1 (`through`, `p`, `n`).
fn carry_of_object_1(counter: &StoredCounter) -> (u64, u128, u128) {
    let (_, carry, _) = counter
        .carries
        .iter()
        .find(|(object, _, _)| *object == incarnation(1, 0))
        .expect("object 1 has a carry");
    (carry.through, carry.totals.p, carry.totals.n)
}

fn replicas_stored(counter: &StoredCounter) -> Vec<ReplicaId> {
    counter.slots.iter().map(|s| s.replica).collect()
}

fn count(counter: &StoredCounter) -> GlobalTotals {
    counter.totals()
}

/// The contract, on an empty store.
async fn carries_merge_by_max_and_heal(store: &dyn Store) {
    let [a1, a2, a3] = [1, 2, 3].map(|g| incarnation(1, g));
    sync(store, a1, (5, 1), (0, 0)).await;
    // Generation 2's first sync carries generation 1's final slot: the slot goes, the count
    // stays 4 + what generation 2 counted.
    sync(store, a2, (2, 0), (5, 1)).await;
    let c = load(store).await;
    assert_eq!(
        replicas_stored(&c),
        [a2],
        "generation 1's slot is in the carry"
    );
    assert_eq!(carry_of_object_1(&c), (2, 5, 1));
    assert_eq!(count(&c), GlobalTotals { p: 7, n: 1 });
    assert_eq!(
        c.carries[0].1.region.as_ref(),
        "eu",
        "the sender's region of record"
    );

    // Each column takes its max: a carry lower in `p` and higher in `n` raises `n` only;
    // one of an earlier generation (a late sync of generation 1) lowers no `through`.
    sync(store, a2, (2, 0), (3, 4)).await;
    sync(store, a1, (0, 0), (1, 0)).await;
    let c = load(store).await;
    assert_eq!(carry_of_object_1(&c), (2, 5, 4));
    assert_eq!(count(&c), GlobalTotals { p: 7, n: 4 });

    // A late slot of a carried generation, even higher, is final: not written.
    sync(store, a1, (50, 1), (0, 0)).await;
    let c = load(store).await;
    assert_eq!(replicas_stored(&c), [a2]);
    assert_eq!(count(&c), GlobalTotals { p: 7, n: 4 });

    // Retiring generation 2 folds its slot into the carry, which then covers it.
    let retired = store.retire(a2, at(20)).await.expect("retire");
    assert_eq!((retired.folded, retired.carries.len()), (1, 1));
    let c = load(store).await;
    assert!(c.slots.is_empty());
    assert_eq!(carry_of_object_1(&c), (3, 7, 4));
    assert_eq!(count(&c), GlobalTotals { p: 7, n: 4 });

    // The object knew more than the store folded (say, a restored store that lost part of
    // generation 2): its re-sent carry raises the count, the store's lowers nothing.
    sync(store, a3, (1, 0), (12, 4)).await;
    let c = load(store).await;
    assert_eq!(carry_of_object_1(&c), (3, 12, 4));
    assert_eq!(count(&c), GlobalTotals { p: 13, n: 4 });
    let again = store.retire(a2, at(30)).await.expect("retire again");
    assert_eq!((again.folded, again.carries.len()), (0, 0));
    assert_eq!(count(&load(store).await), GlobalTotals { p: 13, n: 4 });

    // Another object's carry is its own: a sum beside object 1's.
    sync(store, incarnation(2, 4), (0, 0), (6, 0)).await;
    let c = load(store).await;
    assert_eq!(c.carries.len(), 2);
    assert_eq!(count(&c), GlobalTotals { p: 19, n: 4 });
    assert_eq!(c.state().value(), count(&c));
}

#[tokio::test]
async fn sqlite_carries_merge_by_max_and_heal() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let url = format!("sqlite://{}", dir.path().join("tally.db").display());
    let store = SqliteStore::open(&url, Durability::Normal)
        .await
        .expect("the store opens");
    carries_merge_by_max_and_heal(&store).await;
    store.close().await;
}

/// Whether `rx` reports `viewers` within the watch limit of the Postgres tests.
async fn heard(rx: &mut tokio::sync::mpsc::Receiver<Changes>) -> bool {
    let wait = async {
        while let Some(Changes::Counters(batch)) = rx.recv().await {
            if batch.contains(&viewers()) {
                return true;
            }
        }
        false
    };
    tokio::time::timeout(Duration::from_secs(20), wait)
        .await
        .unwrap_or(false)
}

#[tokio::test]
async fn postgres_carries_merge_by_max_and_heal_and_other_mergers_hear_them() {
    let Some(pg) = PostgresCluster::start_unless_skipped("carries in postgres").await else {
        return;
    };
    let url = pg.create_database("carries").await;
    let open = || async {
        PostgresStore::open(&url, Durability::Normal)
            .await
            .expect("the store opens")
    };
    let (store, other) = (open().await, open().await);
    carries_merge_by_max_and_heal(&store).await;

    // Another merger hears of a counter whose carry alone changed: from the notification,
    // and from the catch-up when nobody notifies (a change by hand).
    let (_stop_tx, stop) = watch::channel(false);
    let mut rx = other.watch(stop).expect("postgres watches");
    while rx.try_recv().is_ok() {}
    sync(&store, incarnation(1, 3), (1, 0), (20, 4)).await;
    assert!(heard(&mut rx).await, "a synced carry is announced");
    // Without `changed`: the change log's trigger is what names it.
    pg.psql(&url, "UPDATE carries SET p = p + 1").await;
    assert!(heard(&mut rx).await, "a carry changed by hand is caught up");
    let c = load(&other).await;
    assert_eq!(carry_of_object_1(&c), (3, 21, 4));
    other.close().await;
    store.close().await;
}

#[tokio::test]
async fn a_version_4_sync_answers_the_count_its_carry_raised() {
    let t = TestMerger::new().await;
    // Generation 0 counted 5 and retired (a version-4 retirement).
    let (status, answer) = t.sync(&v4_sync(0, 5, 0)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let retire =
        retire_request(json!({"version": 4, "replica": incarnation(1, 0).to_string()}).to_string());
    let (status, answer) = t.send(retire).await;
    assert_eq!(
        (status, &answer["folded"]),
        (StatusCode::OK, &json!(1)),
        "{answer}"
    );
    // Generation 1's sync carries 8: 3 hits of generation 0 never reached this merger.
    let (status, answer) = t.sync(&v4_sync(1, 2, 8)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let merged = &answer["counters"][0];
    assert_eq!(merged["global"]["p"], 10, "{answer}");
    assert_eq!(merged["recorded"]["p"], 2, "{answer}");
    let (_, view) = t.get("/v1/counters/a").await;
    assert_eq!((&view["count"], &view["replicas"]), (&json!(10), &json!(1)));
    assert_eq!(t.metric("tally_carries_merged_total").await, 1.0);
    // The same sync again raises nothing; a late sync of generation 0 is refused.
    t.sync(&v4_sync(1, 2, 8)).await;
    assert_eq!(t.metric("tally_carries_merged_total").await, 1.0);
    let answer = t.sync(&v4_sync(0, 9, 0)).await;
    assert_error(&answer, StatusCode::CONFLICT, "replica_retired");
    // The same after a restart, from the store.
    let t = t.reopen().await;
    let (_, view) = t.get("/v1/counters/a").await;
    assert_eq!(view["count"], 10);
}

#[tokio::test]
async fn a_rebased_carry_keeps_the_count_and_the_merger_answers_its_frame_to_an_object_that_forgot_it()
 {
    let t = admin_merger().await;
    // Generation 0 counted 5, retired; then the counter is deleted.
    t.sync(&v4_sync(0, 5, 0)).await;
    let retire =
        retire_request(json!({"version": 4, "replica": incarnation(1, 0).to_string()}).to_string());
    assert_eq!(t.send(retire).await.0, StatusCode::OK);
    let delete = Request::delete("/v1/counters/a")
        .header("Authorization", format!("Bearer {ADMIN}"))
        .body(Body::empty())
        .unwrap();
    let (status, answer) = t.send(delete).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    // Generation 1 rebases: its carry of 5 is reclaimed in frame 1, and it counts 2.
    let mut rebased = v4_sync(1, 2, 0);
    rebased["version"] = json!(5);
    rebased["counters"][0]["frame"] = json!({"epoch": 1, "reclaimed": {"p": 5}});
    let (status, answer) = t.sync(&rebased).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let merged = &answer["counters"][0];
    assert_eq!(
        merged["global"]["p"], 2,
        "a rebase changes no count: {answer}"
    );
    assert!(
        merged.get("frame").is_none(),
        "it sent the frame held: {answer}"
    );
    // A late copy of a frame-0 carry changes nothing; a version-5 sync of frame 0 is told the
    // frame held; a frame in a version-4 sync is refused whole.
    let (status, answer) = t.sync(&v4_sync(1, 2, 9)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["counters"][0]["global"]["p"], 2, "{answer}");
    assert!(
        answer["counters"][0].get("frame").is_none(),
        "version 4: {answer}"
    );
    let mut forgot = v4_sync(1, 3, 0);
    forgot["version"] = json!(5);
    let (_, answer) = t.sync(&forgot).await;
    assert_eq!(answer["counters"][0]["global"]["p"], 3, "{answer}");
    assert_eq!(
        answer["counters"][0]["frame"],
        json!({"epoch": 1}),
        "{answer}"
    );
    let mut mislabelled = rebased.clone();
    mislabelled["version"] = json!(4);
    let answer = t.sync(&mislabelled).await;
    assert_error(&answer, StatusCode::BAD_REQUEST, "malformed_body");
    // The same after a restart, from the store.
    let t = t.reopen().await;
    let (_, view) = t.get("/v1/counters/a").await;
    assert_eq!(view["count"], 3);
}
