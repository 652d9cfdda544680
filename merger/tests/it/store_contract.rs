//! The contract of the [`Store`] trait, written once and run against both stores: SQLite on a
//! temp file and Postgres on a throwaway cluster (`TALLY_NO_POSTGRES=1` skips the Postgres
//! runs). Each contract is one function over a [`Backend`]; [`contract!`] makes its two tests,
//! `store_contract::<contract>::sqlite` and `…::postgres`. The milestone, presence and sketch
//! parts of the contract run on both stores the same way in `milestones.rs` and
//! `presence_unique.rs`, and the merges, folds and resets in `lattice.rs` (a differential
//! test). What only one store has (Postgres's notifications, catch-up and locking between
//! mergers; SQLite's migration of old files) is tested beside it, in `postgres_store.rs` and
//! `src/store/sqlite.rs`.

use std::sync::Arc;

use sqlx::Connection;
use tally_crdt::{CounterKind, Cut, Frame, GlobalTotals, ReplicaId, SlotTotals};
use tally_e2e::postgres::PostgresCluster;
use tally_merger::config::Durability;
use tally_merger::store::postgres::PostgresStore;
use tally_merger::store::sqlite::SqliteStore;
use tally_merger::store::{ResetRequest, SlotRow, SnapshotRow, Store, StoredCounter, sent_carry};

use crate::common::rows::*;

/// A store under test, and what keeps its database alive.
struct Backend {
    store: Arc<dyn Store>,
    db: Db,
}

enum Db {
    Sqlite {
        _dir: tempfile::TempDir,
        url: String,
    },
    Postgres {
        cluster: PostgresCluster,
        url: String,
    },
}

impl Backend {
    async fn sqlite() -> Backend {
        let dir = tempfile::tempdir().expect("a temp dir can be created");
        let url = format!("sqlite://{}", dir.path().join("tally.db").display());
        let store = SqliteStore::open(&url, Durability::Full)
            .await
            .expect("the store opens and migrates");
        Backend {
            store: Arc::new(store),
            db: Db::Sqlite { _dir: dir, url },
        }
    }

    async fn postgres(test: &str) -> Option<Backend> {
        let cluster = PostgresCluster::start_unless_skipped(test).await?;
        let url = cluster.create_database("contract").await;
        let store = PostgresStore::open(&url, Durability::Full)
            .await
            .expect("the store opens and migrates");
        Some(Backend {
            store: Arc::new(store),
            db: Db::Postgres { cluster, url },
        })
    }

    /// Runs `sql` on the store's database from a connection of the test's; answers the first
    /// column of the first row, as text (empty when there is none).
    async fn sql(&self, sql: &str) -> String {
        match &self.db {
            Db::Sqlite { url, .. } => {
                let mut db = sqlx::SqliteConnection::connect(url)
                    .await
                    .expect("the test database opens");
                let value: Option<String> = sqlx::query_scalar(sql)
                    .fetch_optional(&mut db)
                    .await
                    .expect("the test's SQL runs");
                db.close().await.expect("the test connection closes");
                value.unwrap_or_default()
            }
            Db::Postgres { cluster, url } => cluster.psql(url, sql).await,
        }
    }
}

/// The two tests of a contract: `$name::sqlite` and `$name::postgres`.
macro_rules! contract {
    ($name:ident) => {
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                super::$name(super::Backend::sqlite().await).await;
            }

            #[tokio::test]
            async fn postgres() {
                if let Some(backend) = super::Backend::postgres(stringify!($name)).await {
                    super::$name(backend).await;
                }
            }
        }
    };
}

/// The ids of the counters of a page.
fn ids(counters: &[StoredCounter]) -> Vec<&str> {
    counters.iter().map(|c| c.key.id()).collect()
}

contract!(u64_extremes_round_trip_exactly_and_merge_by_max);
async fn u64_extremes_round_trip_exactly_and_merge_by_max(b: Backend) {
    let store = &*b.store;
    let x = key(CounterKind::Pn, "x");
    let r = replica(7);
    let two53 = 1u64 << 53;
    store
        .commit(
            &[registered(r, "eu", 1)],
            &[slot(&x, r, u64::MAX - 1, two53, 1)],
        )
        .await
        .expect("commit");
    // Smaller p, larger n (2^53 + 1: not a float): each half keeps its max.
    store
        .commit(&[registered(r, "eu", 2)], &[slot(&x, r, 5, two53 + 1, 2)])
        .await
        .expect("commit");
    store
        .commit(&[registered(r, "eu", 3)], &[slot(&x, r, u64::MAX, 0, 3)])
        .await
        .expect("commit");
    assert_eq!(
        loaded_totals(store, &x, r).await,
        SlotTotals {
            p: u64::MAX,
            n: two53 + 1
        }
    );
    // Two rows for one slot in one batch: the larger of each half.
    let y = g("y");
    store
        .commit(
            &[registered(r, "eu", 4)],
            &[slot(&y, r, two53 + 1, 0, 4), slot(&y, r, 3, 9, 4)],
        )
        .await
        .expect("commit with a repeated slot");
    assert_eq!(
        loaded_totals(store, &y, r).await,
        SlotTotals { p: two53 + 1, n: 9 }
    );
    // A stale slot (smaller, equal or zero) changes nothing, its time included.
    for (p, n) in [(9, 0), (two53 + 1, 9), (0, 0)] {
        store
            .commit(&[registered(r, "eu", 500)], &[slot(&y, r, p, n, 500)])
            .await
            .expect("commit");
    }
    let loaded = store.load(std::slice::from_ref(&y)).await.expect("load");
    assert_eq!(loaded[0].slots[0].totals, SlotTotals { p: two53 + 1, n: 9 });
    assert_eq!(loaded[0].slots[0].at, at(4));
    store.close().await;
}

contract!(a_replica_keeps_the_region_of_its_first_sync);
async fn a_replica_keeps_the_region_of_its_first_sync(b: Backend) {
    let store = &*b.store;
    let (r1, r2) = (replica(1), replica(2));
    let x = g("x");
    let first = store
        .commit(&[registered(r1, "eu", 10)], &[slot(&x, r1, 1, 0, 10)])
        .await
        .expect("commit");
    assert!(first.new_replicas);
    assert_eq!(first.regions, vec![(r1, "eu".to_owned())]);
    let second = store
        .commit(
            &[registered(r1, "us", 40), registered(r2, "ap", 30)],
            &[slot(&x, r1, 2, 0, 40), slot(&x, r2, 1, 0, 30)],
        )
        .await
        .expect("commit");
    assert!(second.new_replicas);
    let mut regions = second.regions.clone();
    regions.sort();
    assert_eq!(regions, vec![(r1, "eu".to_owned()), (r2, "ap".to_owned())]);
    let third = store
        .commit(&[registered(r1, "sa", 35)], &[])
        .await
        .expect("commit");
    assert!(!third.new_replicas);
    assert_eq!(third.regions, vec![(r1, "eu".to_owned())]);
    let loaded = store.load(std::slice::from_ref(&x)).await.expect("load");
    let mut slots: Vec<_> = loaded[0]
        .slots
        .iter()
        .map(|s| (s.replica, s.region.as_str()))
        .collect();
    slots.sort();
    assert_eq!(slots, vec![(r1, "eu"), (r2, "ap")]);
    assert_eq!(store.replica_count().await.expect("count"), 2);
    // A slot of a replica never registered is refused, not dropped.
    let unknown = store.commit(&[], &[slot(&x, replica(99), 1, 0, 50)]).await;
    assert!(unknown.is_err(), "{unknown:?}");
    store.close().await;
}

contract!(load_list_and_history_behave_as_the_trait_says);
async fn load_list_and_history_behave_as_the_trait_says(b: Backend) {
    let store = &*b.store;
    let (r1, r2) = (replica(1), replica(2));
    let names = ["a_1", "ab", "a_2", "a-3", "a.4", "b", "a:5", "Z", "a_0"];
    let mut rows: Vec<SlotRow> = names.iter().map(|n| slot(&g(n), r1, 1, 0, 1)).collect();
    rows.push(slot(&g("ab"), r2, 4, 0, 2));
    let gauge = key(CounterKind::Pn, "ab");
    rows.push(slot(&gauge, r2, 7, 3, 2));
    store
        .commit(&[registered(r1, "eu", 1), registered(r2, "us", 2)], &rows)
        .await
        .expect("commit");
    // A counter with no slot at all (by hand): never answered.
    b.sql("INSERT INTO counters (kind, name) VALUES ('g', 'a_9')")
        .await;

    // load: the counters asked for that have slots, each once, kinds apart.
    let loaded = store
        .load(&[g("ab"), g("nope"), g("ab"), gauge.clone(), g("a_9")])
        .await
        .expect("load");
    let mut got: Vec<_> = loaded
        .iter()
        .map(|c| {
            let mut slots: Vec<_> = c.slots.iter().map(|s| (s.replica, s.totals)).collect();
            slots.sort_by_key(|(r, _)| *r);
            (c.key.clone(), slots)
        })
        .collect();
    got.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        got,
        vec![
            (
                g("ab"),
                vec![
                    (r1, SlotTotals { p: 1, n: 0 }),
                    (r2, SlotTotals { p: 4, n: 0 })
                ]
            ),
            (gauge.clone(), vec![(r2, SlotTotals { p: 7, n: 3 })]),
        ]
    );
    assert!(store.load(&[]).await.expect("load").is_empty());

    // list: byte order of ids (as CounterKey orders), prefix taken literally ('_' is no
    // wildcard), pages through `after`, one kind.
    let all = store
        .list(CounterKind::G, "", None, 100)
        .await
        .expect("list");
    assert_eq!(
        ids(&all),
        vec!["Z", "a-3", "a.4", "a:5", "a_0", "a_1", "a_2", "ab", "b"]
    );
    let page1 = store
        .list(CounterKind::G, "a_", None, 2)
        .await
        .expect("list");
    assert_eq!(ids(&page1), vec!["a_0", "a_1"]);
    let page2 = store
        .list(CounterKind::G, "a_", Some(&page1[1].key), 2)
        .await
        .expect("list");
    assert_eq!(ids(&page2), vec!["a_2"]);
    assert_eq!(page2[0].slots.len(), 1);
    let ab = store
        .list(CounterKind::G, "ab", None, 10)
        .await
        .expect("list");
    assert_eq!(ids(&ab), vec!["ab"]);
    assert_eq!(ab[0].slots.len(), 2);
    let gauges = store
        .list(CounterKind::Pn, "", None, 10)
        .await
        .expect("list");
    assert_eq!(gauges.len(), 1);
    assert_eq!(gauges[0].key, gauge);
    // A cursor of the other kind: a G cursor is before every gauge, a gauge after every G.
    assert_eq!(
        store
            .list(CounterKind::Pn, "", Some(&g("zzz")), 10)
            .await
            .expect("list")
            .len(),
        1
    );
    assert!(
        store
            .list(CounterKind::G, "", Some(&gauge), 10)
            .await
            .expect("list")
            .is_empty()
    );
    for prefix in ["a%", "a\0", "é", "a b"] {
        assert!(
            store
                .list(CounterKind::G, prefix, None, 10)
                .await
                .expect("list")
                .is_empty(),
            "{prefix:?}"
        );
    }
    assert!(
        store
            .list(CounterKind::G, "", None, 0)
            .await
            .expect("list")
            .is_empty()
    );

    // history: u128 totals, the larger per half for one point, unknown counters ignored,
    // `from..=to` oldest first, at most `limit`.
    let x = g("ab");
    let point = |ms, p, n| SnapshotRow {
        key: x.clone(),
        at: at(ms),
        totals: GlobalTotals { p, n },
        epoch: 0,
    };
    store
        .write_history(&[
            point(30, u128::MAX, 0),
            point(10, 1, 2),
            point(20, 5, 0),
            SnapshotRow {
                key: g("never-synced"),
                at: at(10),
                totals: GlobalTotals { p: 1, n: 0 },
                epoch: 0,
            },
        ])
        .await
        .expect("history");
    // Another merger's snapshot of the same point: each half keeps its max.
    store
        .write_history(&[point(20, 4, 1 << 70), point(10, 1, 2)])
        .await
        .expect("history");
    let history = store.history(&x, at(0), at(30), 10).await.expect("history");
    assert_eq!(
        history,
        vec![
            point(10, 1, 2),
            point(20, 5, 1 << 70),
            point(30, u128::MAX, 0)
        ]
    );
    assert_eq!(
        store.history(&x, at(11), at(30), 1).await.expect("history"),
        vec![point(20, 5, 1 << 70)]
    );
    assert!(
        store
            .history(&g("never-synced"), at(0), at(30), 10)
            .await
            .expect("history")
            .is_empty()
    );
    assert_eq!(b.sql("SELECT count(*) || '' FROM history").await, "3");
    store.ping().await.expect("ping");
    store.close().await;
    assert!(store.ping().await.is_err(), "closed");
}

contract!(a_page_of_a_list_skips_counters_with_nothing_counted);
async fn a_page_of_a_list_skips_counters_with_nothing_counted(b: Backend) {
    let store = &*b.store;
    // A milestone registered before the counter's first hit: on SQLite its registration
    // writes the counter's row (the write that takes the lock), with nothing counted.
    store
        .add_milestone("a", 5, None, at(1))
        .await
        .expect("a milestone is registered");
    let r = replica(7);
    store
        .commit(
            &[registered(r, "eu", 2)],
            &[slot(&g("b"), r, 1, 0, 2), slot(&g("c"), r, 1, 0, 2)],
        )
        .await
        .expect("commit");
    let page = store.list(CounterKind::G, "", None, 2).await.expect("list");
    assert_eq!(
        ids(&page),
        ["b", "c"],
        "a full page: a counter with nothing counted takes no place in it"
    );
    store.close().await;
}

contract!(a_rebased_carry_replaces_the_stored_one_and_an_earlier_frame_changes_nothing);
async fn a_rebased_carry_replaces_the_stored_one_and_an_earlier_frame_changes_nothing(b: Backend) {
    let store = &*b.store;
    let x = key(CounterKind::Pn, "x");
    let r = ReplicaId::lineage(ReplicaId::from_u128(5 << 32), 2);
    let totals = |p, n| SlotTotals { p, n };
    let x = &x;
    let commit = |carried: SlotTotals, frame: Option<Frame>, ms: i64| {
        let row = SlotRow {
            carry: sent_carry(r, carried, frame),
            ..slot(x, r, 1, 0, ms)
        };
        async move {
            store
                .commit(&[registered(r, "eu", ms)], &[row])
                .await
                .expect("commit");
            let loaded = store.load(std::slice::from_ref(x)).await.expect("load");
            let (_, carry, _) = loaded[0].carries[0].clone();
            (loaded[0].state().value(), carry)
        }
    };
    let (value, carry) = commit(totals(10, 4), None, 1).await;
    assert_eq!(value, GlobalTotals { p: 11, n: 4 });
    assert_eq!((carry.frame, carry.reclaimed), (0, GlobalTotals::default()));
    // Rebased into frame 3: what it carried is reclaimed, and it carries 2 since.
    let frame = |p, n| {
        Some(Frame {
            epoch: 3,
            reclaimed: totals(p, n),
        })
    };
    let (value, carry) = commit(totals(2, 0), frame(10, 4), 2).await;
    assert_eq!(value, GlobalTotals { p: 13, n: 4 });
    assert_eq!(carry.frame, 3);
    assert_eq!(carry.reclaimed, GlobalTotals { p: 10, n: 4 });
    assert_eq!(carry.totals, GlobalTotals { p: 2, n: 0 });
    // A late carry of frame 0, however large, changes nothing.
    let (value, carry) = commit(totals(50, 50), None, 3).await;
    assert_eq!(value, GlobalTotals { p: 13, n: 4 });
    assert_eq!(carry.frame, 3);
    // Within the frame each part takes its max.
    let (value, carry) = commit(totals(4, 1), frame(9, 4), 4).await;
    assert_eq!(value, GlobalTotals { p: 15, n: 5 });
    assert_eq!(carry.reclaimed, GlobalTotals { p: 10, n: 4 });
    assert_eq!(carry.totals, GlobalTotals { p: 4, n: 1 });
    store.close().await;
}

contract!(what_rebased_carries_reclaimed_is_netted_against_the_cuts_once_old_enough);
async fn what_rebased_carries_reclaimed_is_netted_against_the_cuts_once_old_enough(b: Backend) {
    let store = &*b.store;
    let object = ReplicaId::from_u128(5 << 32);
    let (r0, r1) = (ReplicaId::lineage(object, 0), ReplicaId::lineage(object, 1));
    let p = |p| SlotTotals { p, n: 0 };
    let value = |key: &tally_crdt::CounterKey| {
        let key = key.clone();
        async move {
            let loaded = store.load(std::slice::from_ref(&key)).await.expect("load");
            let c = loaded.first().expect("the counter is stored");
            (c.state().value().p, c.carries.len(), c.cuts.clone())
        }
    };
    // `gone` counted 5 and `back` 7 in generation 0, retired into the object's carry; both
    // are deleted. At 10 the object rebases both carries into frame 1, and `back` had
    // counted 2 more in a generation since.
    let (gone, back) = (g("gone"), g("back"));
    for (key, n) in [(&gone, 5), (&back, 7)] {
        store
            .commit(&[registered(r0, "eu", 1)], &[slot(key, r0, n, 0, 1)])
            .await
            .expect("commit");
    }
    store.retire(r0, at(2)).await.expect("retire");
    for key in [&gone, &back] {
        let request = ResetRequest {
            delete: true,
            expect_epoch: None,
            at: at(3),
        };
        store.reset(key, request).await.expect("reset");
    }
    let frame = |n| {
        Some(Frame {
            epoch: 1,
            reclaimed: p(n),
        })
    };
    for (key, reclaimed, since) in [(&gone, 5, 0), (&back, 7, 2)] {
        let row = SlotRow {
            carry: sent_carry(r1, p(since), frame(reclaimed)),
            ..slot(key, r1, 0, 0, 10)
        };
        store
            .commit(&[registered(r1, "eu", 10)], &[row])
            .await
            .expect("commit");
    }
    let eu = |n| vec![("eu".to_owned(), GlobalTotals { p: n, n: 0 })];
    assert_eq!(value(&gone).await, (0, 1, eu(5)));
    assert_eq!(value(&back).await, (2, 1, eu(7)));
    let shares = |key: &tally_crdt::CounterKey| {
        let key = key.clone();
        async move {
            let loaded = store.load(std::slice::from_ref(&key)).await.expect("load");
            let mut shares = loaded.first().expect("stored").object_cuts.clone();
            shares.sort_by_key(|(object, _, _)| *object);
            shares
        }
    };
    let share = |n| vec![(object, "eu".to_owned(), GlobalTotals { p: n, n: 0 })];
    assert_eq!(
        shares(&gone).await,
        share(5),
        "the object's share of the cut"
    );
    // Not before they are old enough; then each is netted once, and no count moves.
    assert_eq!(
        store.reclaim_carries(at(10), 100).await.expect("reclaim"),
        0
    );
    assert_eq!(
        store.reclaim_carries(at(11), 100).await.expect("reclaim"),
        2
    );
    assert_eq!(
        store.reclaim_carries(at(11), 100).await.expect("reclaim"),
        0
    );
    assert_eq!(value(&gone).await, (0, 0, eu(0)), "its carry is gone");
    assert_eq!(shares(&gone).await, vec![], "and its share of the cut");
    assert_eq!(
        value(&back).await,
        (2, 1, eu(0)),
        "its carry keeps what it counted since"
    );
    // Counted again: from zero above the netted cut.
    let row = SlotRow {
        carry: sent_carry(
            r1,
            p(0),
            Some(Frame {
                epoch: 1,
                reclaimed: p(0),
            }),
        ),
        ..slot(&gone, r1, 3, 0, 20)
    };
    store
        .commit(&[registered(r1, "eu", 20)], &[row])
        .await
        .expect("commit");
    assert_eq!(value(&gone).await.0, 3);
    // A carry that reclaimed more than its region's cut holds is left alone.
    let never = g("never");
    let row = SlotRow {
        carry: sent_carry(r1, p(0), frame(4)),
        ..slot(&never, r1, 1, 0, 1)
    };
    store
        .commit(&[registered(r1, "eu", 21)], &[row])
        .await
        .expect("commit");
    assert_eq!(
        store.reclaim_carries(at(100), 100).await.expect("reclaim"),
        0
    );
    assert_eq!(value(&never).await.0, 5);
    store.close().await;
}

contract!(a_store_restored_from_before_a_reset_takes_it_up_from_the_objects_cuts);
async fn a_store_restored_from_before_a_reset_takes_it_up_from_the_objects_cuts(b: Backend) {
    let store = &*b.store;
    let (one, two) = (ReplicaId::from_u128(1 << 32), ReplicaId::from_u128(2 << 32));
    let (r1, r2) = (ReplicaId::lineage(one, 0), ReplicaId::lineage(two, 0));
    let p = |p| GlobalTotals { p, n: 0 };
    let load = |key: &tally_crdt::CounterKey| {
        let key = key.clone();
        async move {
            let loaded = store.load(std::slice::from_ref(&key)).await.expect("load");
            loaded.into_iter().next().expect("the counter is stored")
        }
    };
    // The backup: object 1 (eu) had counted 7 of `k`, object 2 (us) 4. Before the reset
    // the store lost, object 1 had counted 10; the reset told it that.
    let k = g("k");
    let rows = [slot(&k, r1, 7, 0, 1), slot(&k, r2, 4, 0, 1)];
    let replicas = [registered(r1, "eu", 1), registered(r2, "us", 1)];
    store.commit(&replicas, &rows).await.expect("commit");
    let cut = Cut {
        epoch: 1,
        deleted: true,
        at: at(5),
        totals: p(10),
    };
    let after = store
        .tell_cut(&k, one, "eu", &cut)
        .await
        .expect("tell")
        .expect("the epoch starts");
    assert_eq!(
        (after.epoch.number, after.epoch.deleted, after.epoch.at),
        (1, true, Some(at(5)))
    );
    assert_eq!(after.totals(), p(0), "everything held is cut");
    let mut cuts = after.cuts.clone();
    cuts.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(cuts, vec![("eu".into(), p(10)), ("us".into(), p(4))]);
    assert_eq!(
        after.object_cuts,
        vec![(one, "eu".into(), p(10)), (two, "us".into(), p(4))]
    );
    assert_eq!(load(&k).await.state(), after.state(), "as stored");
    // Told again, or less, or of an earlier epoch: nothing changes.
    for told in [
        cut,
        Cut {
            totals: p(9),
            ..cut
        },
    ] {
        assert_eq!(
            store.tell_cut(&k, one, "eu", &told).await.expect("tell"),
            None
        );
    }
    // Object 1's slot, sent with its cut, counts what came after the reset.
    store
        .commit(&replicas, &[slot(&k, r1, 13, 0, 6)])
        .await
        .expect("commit");
    assert_eq!(load(&k).await.totals(), p(3));
    // A counter the store never saw starts in the epoch told, cut by what was told.
    let new = g("new");
    let after = store
        .tell_cut(
            &new,
            one,
            "eu",
            &Cut {
                totals: p(6),
                ..cut
            },
        )
        .await
        .expect("tell")
        .expect("created");
    assert_eq!(after.epoch.number, 1);
    store
        .commit(&replicas, &[slot(&new, r1, 8, 0, 6)])
        .await
        .expect("commit");
    assert_eq!(load(&new).await.totals(), p(2));
    // A reset records every object's share, from its carry and its live slots.
    let request = ResetRequest {
        delete: false,
        expect_epoch: Some(1),
        at: at(7),
    };
    store.reset(&k, request).await.expect("reset");
    let mut reset = load(&k).await;
    reset.object_cuts.sort_by_key(|(object, _, _)| *object);
    assert_eq!(reset.epoch.number, 2);
    assert_eq!(
        reset.object_cuts,
        vec![(one, "eu".into(), p(13)), (two, "us".into(), p(4))]
    );
    store.close().await;
}
