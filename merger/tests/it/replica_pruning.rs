//! Pruning retired replicas (`--retired-replica-days`) in both stores: the row of an
//! incarnation retired into its object's carries goes once it has been retired that long, a
//! late sync of it afterwards changes no count, and the rows that must stay stay — replicas
//! retired into region bases before carries, and any row a slot still names. One contract
//! ([`retired_rows_go_and_late_syncs_count_nothing`]) on a store migrated from the schema
//! before pruning (with legacy retirements in it), run on SQLite and on Postgres; and over
//! HTTP, a late sync of a pruned incarnation is still refused.

use std::path::Path;

use axum::http::StatusCode;
use serde_json::json;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use tally_crdt::{CounterKey, CounterKind, GlobalTotals, ReplicaId, SlotTotals, Timestamp};
use tally_e2e::postgres::PostgresCluster;
use tally_merger::config::Durability;
use tally_merger::store::postgres::PostgresStore;
use tally_merger::store::sqlite::SqliteStore;
use tally_merger::store::{ReplicaRow, SlotRow, Store, sent_carry};

use crate::common::*;

/// Replicas retired into the base of region `us` before carries, as the retirements of the
/// releases before wrote them: `FOLDED` with its `folded` row (0011), `UNLISTED` without
/// (before 0011: the row is all that keeps its late syncs out).
const FOLDED: ReplicaId = ReplicaId::from_u128(0xaaaa_u128 << 64 | 9);
const UNLISTED: ReplicaId = ReplicaId::from_u128(0xbbbb_u128 << 64 | 9);

fn a() -> CounterKey {
    CounterKey::new(CounterKind::G, "a").expect("a valid id")
}

fn v() -> CounterKey {
    CounterKey::new(CounterKind::Pn, "v").expect("a valid id")
}

fn at(ms: i64) -> Timestamp {
    Timestamp::from_unix_ms(ms)
}

/// Commits the slots `(counter, p, n)` of `replica` (region `eu`) at `ms`, carrying
/// `carried` with each. Answers the replicas the store called retired.
async fn sync(
    store: &dyn Store,
    replica: ReplicaId,
    slots: &[(CounterKey, u64, u64)],
    carried: (u64, u64),
    ms: i64,
) -> Vec<ReplicaId> {
    let rows: Vec<SlotRow> = slots
        .iter()
        .map(|(key, p, n)| SlotRow {
            key: key.clone(),
            replica,
            totals: SlotTotals { p: *p, n: *n },
            at: at(ms),
            visits: Vec::new(),
            carry: sent_carry(
                replica,
                SlotTotals {
                    p: carried.0,
                    n: carried.1,
                },
                None,
            ),
        })
        .collect();
    let replicas = [ReplicaRow {
        replica,
        region: "eu".into(),
        at: at(ms),
    }];
    store
        .commit(&replicas, &rows)
        .await
        .expect("commit")
        .retired
}

/// The counts of `a` and `v`.
async fn counts(store: &dyn Store) -> (GlobalTotals, GlobalTotals) {
    let loaded = store.load(&[a(), v()]).await.expect("load");
    let total = |key: CounterKey| {
        loaded
            .iter()
            .find(|c| c.key == key)
            .map(|c| {
                assert_eq!(c.state().value(), c.totals(), "the lattice reads the same");
                c.totals()
            })
            .unwrap_or_default()
    };
    (total(a()), total(v()))
}

/// The live slots of `a`, by replica.
async fn slots_of_a(store: &dyn Store) -> Vec<ReplicaId> {
    let loaded = store.load(&[a()]).await.expect("load");
    let mut replicas: Vec<ReplicaId> = loaded[0].slots.iter().map(|s| s.replica).collect();
    replicas.sort_unstable();
    replicas
}

/// SQL straight to the database, beside the store: for what no store method does (rows as an
/// older release wrote them, a row changed by hand) and for looking at the `replicas` table.
enum Raw<'a> {
    Sqlite(SqlitePool),
    Postgres(&'a PostgresCluster, String),
}

impl Raw<'_> {
    async fn exec(&self, sql: &str) {
        match self {
            Raw::Sqlite(pool) => {
                sqlx::raw_sql(sql)
                    .execute(pool)
                    .await
                    .expect("raw SQL runs");
            }
            Raw::Postgres(pg, url) => {
                pg.psql(url, sql).await;
            }
        }
    }

    /// One integer, or `None` for no row.
    async fn number(&self, sql: &str) -> Option<i64> {
        match self {
            Raw::Sqlite(pool) => sqlx::query_scalar(sql)
                .fetch_optional(pool)
                .await
                .expect("raw SQL runs"),
            Raw::Postgres(pg, url) => {
                let text = pg.psql(url, sql).await;
                (!text.is_empty()).then(|| text.parse().expect("an integer"))
            }
        }
    }

    /// The surrogate id of `replica`'s row, if it has one.
    async fn row_id(&self, replica: ReplicaId) -> Option<i64> {
        self.number(&format!(
            "SELECT id FROM replicas WHERE replica = '{replica}'"
        ))
        .await
    }
}

/// The legacy rows, in the schema before pruning: counter `a` with a base of 4 in `us` (3
/// from [`FOLDED`], 1 from [`UNLISTED`]), both replicas retired at 3.
fn legacy_rows(p: &str, n: &str) -> String {
    format!(
        "INSERT INTO counters (kind, name) VALUES ('g', 'a'); \
         INSERT INTO replicas (replica, region, first_sync, last_sync, retired_at) \
             VALUES ('{FOLDED}', 'us', 1, 2, 3), ('{UNLISTED}', 'us', 1, 2, 3); \
         INSERT INTO bases (counter, region, p, n, updated_at) \
             SELECT id, 'us', {p}, {n}, 2 FROM counters WHERE name = 'a'; \
         INSERT INTO folded (counter, replica) SELECT c.id, r.id FROM counters c, replicas r \
             WHERE c.name = 'a' AND r.replica = '{FOLDED}';"
    )
}

/// A folder holding the migrations of `backend` before `first_excluded`, for a runtime
/// migrator that builds the schema an older release left.
fn migrations_before(backend: &str, first_excluded: &str, into: &Path) -> std::path::PathBuf {
    let from = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(backend);
    let to = into.join(format!("{backend}-before-{first_excluded}"));
    std::fs::create_dir_all(&to).expect("a folder for the migrations");
    for entry in std::fs::read_dir(&from).expect("the migrations folder") {
        let entry = entry.expect("a migration file");
        let name = entry.file_name().into_string().expect("a UTF-8 name");
        if name.as_str() < first_excluded {
            std::fs::copy(entry.path(), to.join(&name)).expect("the migration copies");
        }
    }
    to
}

/// The contract, on a store migrated from the schema before pruning with the legacy rows.
async fn retired_rows_go_and_late_syncs_count_nothing(store: &dyn Store, raw: &Raw<'_>) {
    let (g0, g1, g2) = (incarnation(1, 0), incarnation(1, 1), incarnation(1, 2));
    let live = incarnation(2, 0);
    // An object that rotated away for good (its storage deleted): only its carry is left.
    let lone = incarnation(3, 0);
    // A row marked retired by hand with its slot still there.
    let stuck = incarnation(4, 0);
    sync(store, g0, &[(a(), 5, 0), (v(), 3, 1)], (0, 0), 10).await;
    sync(store, live, &[(a(), 7, 0)], (0, 0), 10).await;
    sync(store, lone, &[(a(), 2, 0)], (0, 0), 10).await;
    sync(store, stuck, &[(a(), 1, 0)], (0, 0), 10).await;
    assert_eq!(store.retire(g0, at(20)).await.expect("retire").folded, 2);
    assert_eq!(store.retire(lone, at(20)).await.expect("retire").folded, 1);
    // Generation 1 of object 1 counts on, carrying generation 0's final slot of `a`.
    sync(store, g1, &[(a(), 1, 0)], (5, 0), 25).await;
    raw.exec(&format!(
        "UPDATE replicas SET retired_at = 20 WHERE replica = '{stuck}'"
    ))
    .await;
    let before = counts(store).await;
    assert_eq!(
        before,
        (GlobalTotals { p: 20, n: 0 }, GlobalTotals { p: 3, n: 1 }),
        "a: base 4, carries 5 and 2, slots 7, 1 and 1"
    );
    assert_eq!(store.replica_count().await.expect("count"), 2, "live, g1");

    // Retired at 20: not before 20. Then one row per call at a limit of 1: g0, then lone.
    assert_eq!(store.prune_replicas(at(20), 10).await.expect("prune"), 0);
    assert_eq!(store.prune_replicas(at(21), 1).await.expect("prune"), 1);
    assert_eq!(store.prune_replicas(at(21), 1).await.expect("prune"), 1);
    assert_eq!(store.prune_replicas(at(21), 1).await.expect("prune"), 0);
    assert_eq!(raw.row_id(g0).await, None, "g0's row is gone");
    assert_eq!(raw.row_id(lone).await, None, "lone's row is gone");
    for (replica, why) in [
        (FOLDED, "retired into a base"),
        (UNLISTED, "retired into a base, with no folded row"),
        (stuck, "a slot names it"),
    ] {
        assert!(raw.row_id(replica).await.is_some(), "{why}: kept");
    }
    // A row retired into a base but not `kept` (changed by hand) stays while a folded row
    // names it.
    raw.exec(&format!(
        "UPDATE replicas SET kept = {} WHERE replica = '{FOLDED}'",
        if store.backend() == "sqlite" {
            "0"
        } else {
            "false"
        }
    ))
    .await;
    assert_eq!(
        store.prune_replicas(at(i64::MAX), 10).await.expect("prune"),
        0
    );
    assert!(raw.row_id(FOLDED).await.is_some(), "a folded row names it");
    assert_eq!(counts(store).await, before, "pruning changes no count");

    // Late syncs, with the totals they had and with more: nothing counts. A pruned
    // incarnation that its object's carry holds is registered retired again, and goes again.
    let late = sync(store, g0, &[(a(), 50, 0), (v(), 30, 10)], (0, 0), 40).await;
    assert_eq!(late, [g0], "object 1's carries hold g0");
    let late = sync(store, g0, &[(a(), 5, 0), (v(), 3, 1)], (0, 0), 41).await;
    assert_eq!(late, [g0]);
    assert_eq!(counts(store).await, before, "no late sync of g0 counted");
    assert_eq!(store.prune_replicas(at(41), 10).await.expect("prune"), 1);

    // g1 retires and goes; generation 2 then takes the largest id (SQLite gives the id of a
    // deleted last row again): it counts its own slot only, and a late sync of g1 is refused.
    assert_eq!(store.retire(g1, at(50)).await.expect("retire").folded, 1);
    let g1_id = raw.row_id(g1).await.expect("g1 has a row");
    let last = raw.number("SELECT max(id) FROM replicas").await;
    assert_eq!(store.prune_replicas(at(51), 10).await.expect("prune"), 1);
    assert_eq!(raw.row_id(g1).await, None);
    assert!(sync(store, g2, &[(a(), 2, 0)], (6, 0), 60).await.is_empty());
    if store.backend() == "sqlite" {
        assert_eq!(last, Some(g1_id), "g1's row was the last");
        assert_eq!(raw.row_id(g2).await, Some(g1_id), "g1's id came back");
    }
    let late = sync(store, g1, &[(a(), 9, 0)], (5, 0), 61).await;
    assert_eq!(late, [g1]);
    let expected = (
        GlobalTotals {
            p: before.0.p + 2,
            n: 0,
        },
        before.1,
    );
    assert_eq!(counts(store).await, expected, "g2's slot, nothing twice");

    // An object that rotated away for good: its carry alone keeps its late syncs out.
    let late = sync(store, lone, &[(a(), 9, 0)], (0, 0), 70).await;
    assert_eq!(late, [lone], "its object's carry holds it");
    for legacy in [FOLDED, UNLISTED] {
        let late = sync(store, legacy, &[(a(), 99, 0)], (0, 0), 70).await;
        assert_eq!(late, [legacy], "its row keeps it out");
    }
    assert_eq!(counts(store).await, expected, "no late sync counted");
    assert_eq!(slots_of_a(store).await, [g2, live, stuck]);
    assert_eq!(store.replica_count().await.expect("count"), 2, "live, g2");
}

#[tokio::test]
async fn sqlite_prunes_retired_replicas_and_late_syncs_count_nothing() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let url = format!("sqlite://{}", dir.path().join("tally.db").display());
    // The schema and rows of the release before pruning.
    let options = SqliteConnectOptions::new()
        .filename(dir.path().join("tally.db"))
        .create_if_missing(true);
    let pool = SqlitePoolOptions::new()
        .connect_with(options.clone())
        .await
        .expect("the database opens");
    let before = migrations_before("sqlite", "0013", dir.path());
    sqlx::migrate::Migrator::new(before.as_path())
        .await
        .expect("the migrations read")
        .run(&pool)
        .await
        .expect("the older schema");
    let (p, n) = (
        tally_merger::store::encode_u128(4),
        tally_merger::store::encode_u128(0),
    );
    sqlx::raw_sql(&legacy_rows(&format!("'{p}'"), &format!("'{n}'")))
        .execute(&pool)
        .await
        .expect("the legacy rows");
    pool.close().await;

    let store = SqliteStore::open(&url, Durability::Normal)
        .await
        .expect("the store opens and migrates");
    let raw = Raw::Sqlite(
        SqlitePoolOptions::new()
            .connect_with(options)
            .await
            .expect("a second connection"),
    );
    retired_rows_go_and_late_syncs_count_nothing(&store, &raw).await;
    store.close().await;
}

#[tokio::test]
async fn postgres_prunes_retired_replicas_and_late_syncs_count_nothing() {
    let Some(pg) = PostgresCluster::start_unless_skipped("replica pruning in postgres").await
    else {
        return;
    };
    let url = pg.create_database("pruning").await;
    let pool = sqlx::PgPool::connect(&url)
        .await
        .expect("the database connects");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let before = migrations_before("postgres", "0012", dir.path());
    sqlx::migrate::Migrator::new(before.as_path())
        .await
        .expect("the migrations read")
        .run(&pool)
        .await
        .expect("the older schema");
    pool.close().await;
    pg.psql(&url, &legacy_rows("4", "0")).await;

    let store = PostgresStore::open(&url, Durability::Normal)
        .await
        .expect("the store opens and migrates");
    retired_rows_go_and_late_syncs_count_nothing(&store, &Raw::Postgres(&pg, url.clone())).await;
    store.close().await;
}

#[tokio::test]
async fn a_late_sync_of_a_pruned_incarnation_is_refused_and_counts_nothing() {
    let t = TestMerger::new().await;
    assert!(
        t.metrics()
            .await
            .contains("\ntally_replicas_pruned_total 0\n"),
        "the metric is there from the start"
    );
    let (status, answer) = t.sync(&v4_sync(0, 5, 0)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let retire =
        retire_request(json!({"version": 4, "replica": incarnation(1, 0).to_string()}).to_string());
    let not_after = tally_merger::clock::now();
    let (status, answer) = t.send(retire).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let retired_by = tally_merger::clock::now();
    let (status, answer) = t.sync(&v4_sync(1, 2, 5)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");

    // The merger's pass, on a second connection to its file, as if days had gone by.
    let store = SqliteStore::open(&database_url(t.dir.path()), Durability::Normal)
        .await
        .expect("a second store on the file");
    let week = 7 * 86_400_000;
    let pruned = tally_merger::prune::prune_replicas(&store, not_after.plus_ms(week), 7)
        .await
        .expect("prune");
    assert_eq!(pruned, 0, "retired 7 days ago at most: kept");
    let pruned = tally_merger::prune::prune_replicas(&store, retired_by.plus_ms(week + 1), 7)
        .await
        .expect("prune");
    assert_eq!(pruned, 1, "retired more than 7 days ago");
    store.close().await;

    for late in [v4_sync(0, 5, 0), v4_sync(0, 50, 0)] {
        let answer = t.sync(&late).await;
        assert_error(&answer, StatusCode::CONFLICT, "replica_retired");
    }
    let (_, view) = t.get("/v1/counters/a").await;
    assert_eq!((&view["count"], &view["replicas"]), (&json!(7), &json!(1)));
    let t = t.reopen().await;
    let (_, view) = t.get("/v1/counters/a").await;
    assert_eq!(view["count"], 7);
}
