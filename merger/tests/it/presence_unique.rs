//! Viewers now and unique visitors at the merger: the store's rules, run against both
//! backends (SQLite on a temp file, Postgres on a throwaway cluster unless
//! `TALLY_NO_POSTGRES=1`), and the HTTP routes in-process.
//!
//! Presence: per (id, reporter) the report with the highest `seq` stands, a report counts
//! until `min(at, received) + ttl`, and expired reports are pruned. Sketches: merged
//! register-wise with max, so a retry changes nothing and concurrent merges into one sketch
//! lose no register. Both go through the commit task's queue: reports (and sketch syncs)
//! queued together are written in one transaction, and a failed one fails all of them.

use std::sync::Arc;

use crate::common::*;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::{Value, json};
use tally_crdt::{
    Day, HyperLogLog, PROTOCOL_VERSION, PresenceCount, PresenceReport, ReplicaId, SketchKey,
    SketchUpdate, Timestamp,
};
use tally_e2e::postgres::PostgresCluster;
use tally_merger::config::Durability;
use tally_merger::store::{self, Store};

const NOW: i64 = 1_900_000_000_000;
/// The lease of the presence rules' reports, in ms.
const TTL: i64 = 30_000;

fn at(ms: i64) -> Timestamp {
    Timestamp::from_unix_ms(ms)
}

fn reporter(n: u128) -> ReplicaId {
    ReplicaId::from_u128(n)
}

fn report(from: u128, seq: u64, taken: i64, ttl_ms: u64, counts: &[(&str, u64)]) -> PresenceReport {
    PresenceReport {
        version: PROTOCOL_VERSION,
        reporter: reporter(from),
        region: "eu".into(),
        seq,
        at: at(taken),
        ttl_ms,
        counts: counts
            .iter()
            .map(|(id, count)| PresenceCount {
                id: (*id).into(),
                count: *count,
            })
            .collect(),
    }
}

/// `(count, recorded, reporters)` of `id` at `now`, as `asker` sees it.
async fn viewers(store: &dyn Store, id: &str, asker: Option<u128>, now: i64) -> (u64, u64, u64) {
    let sums = store
        .presence(&[id.to_owned()], asker.map(reporter), at(now))
        .await
        .expect("presence reads");
    assert_eq!(sums.len(), 1);
    (sums[0].count, sums[0].recorded, sums[0].reporters)
}

fn sketch_of(items: impl IntoIterator<Item = u64>) -> HyperLogLog {
    let mut sketch = HyperLogLog::new();
    for item in items {
        sketch.insert(&item.to_le_bytes());
    }
    sketch
}

fn update(id: &str, day: Option<Day>, registers: HyperLogLog) -> SketchUpdate {
    SketchUpdate {
        key: SketchKey::new(id, day).unwrap(),
        registers,
    }
}

/// Every rule of the presence store.
async fn presence_rules(store: &dyn Store) {
    let ttl = TTL.unsigned_abs();
    // One reporter: a late report (lower seq) and a duplicate seq change nothing.
    store
        .report_presence(&report(1, 2, NOW, ttl, &[("home", 5)]), at(NOW))
        .await
        .unwrap();
    store
        .report_presence(&report(1, 1, NOW - 10, ttl, &[("home", 9)]), at(NOW))
        .await
        .unwrap();
    store
        .report_presence(&report(1, 2, NOW, ttl, &[("home", 7)]), at(NOW))
        .await
        .unwrap();
    assert_eq!(viewers(store, "home", Some(1), NOW + 1).await, (5, 5, 1));
    // Another reporter adds; the asker's recorded count is its own.
    store
        .report_presence(
            &report(2, 1, NOW, ttl, &[("home", 3), ("about", 1)]),
            at(NOW),
        )
        .await
        .unwrap();
    assert_eq!(viewers(store, "home", Some(2), NOW + 1).await, (8, 3, 2));
    assert_eq!(viewers(store, "home", None, NOW + 1).await, (8, 0, 2));
    assert_eq!(viewers(store, "about", Some(1), NOW + 1).await, (1, 0, 1));
    // A newer report of 0 counts as a reporter with nobody.
    store
        .report_presence(&report(1, 3, NOW + 5, ttl, &[("home", 0)]), at(NOW + 5))
        .await
        .unwrap();
    assert_eq!(viewers(store, "home", Some(1), NOW + 6).await, (3, 0, 2));
    // Reports drop out at their lease's end, with no message.
    assert_eq!(viewers(store, "home", None, NOW + TTL - 1).await.0, 3);
    assert_eq!(viewers(store, "home", None, NOW + TTL + 5).await, (0, 0, 0));
    // A reporter whose clock runs ahead cannot stretch its lease past the receipt's.
    store
        .report_presence(
            &report(3, 1, NOW + 3_600_000, 1_000, &[("ahead", 4)]),
            at(NOW),
        )
        .await
        .unwrap();
    assert_eq!(viewers(store, "ahead", None, NOW + 999).await.0, 4);
    assert_eq!(viewers(store, "ahead", None, NOW + 1_001).await.0, 0);
    // An id nobody reports reads zero; counts are exact up to u64::MAX.
    assert_eq!(viewers(store, "nobody", None, NOW).await, (0, 0, 0));
    store
        .report_presence(&report(4, 1, NOW, ttl, &[("big", u64::MAX)]), at(NOW))
        .await
        .unwrap();
    store
        .report_presence(&report(5, 1, NOW, ttl, &[("big", 1)]), at(NOW))
        .await
        .unwrap();
    assert_eq!(
        viewers(store, "big", Some(4), NOW).await,
        (u64::MAX, u64::MAX, 2)
    );
    // Pruning deletes what expired before the cut, in chunks, and nothing fresh.
    let cut = at(NOW + TTL + 10);
    let mut pruned = 0;
    loop {
        let done = store.prune_presence(cut, 2).await.unwrap();
        pruned += done;
        if done < 2 {
            break;
        }
    }
    // home x2, about, ahead, big x2.
    assert_eq!(pruned, 6);
    assert_eq!(store.prune_presence(cut, 100).await.unwrap(), 0);
    // After a prune the reporter starts over: a report of it counts again.
    store
        .report_presence(
            &report(1, 1, NOW + 40_000, ttl, &[("home", 2)]),
            at(NOW + 40_000),
        )
        .await
        .unwrap();
    assert_eq!(viewers(store, "home", None, NOW + 40_001).await, (2, 0, 1));
}

/// A batch of reports stores what storing them one after another would: per id and
/// reporter the highest `seq` stands (the earliest of equal ones), and a stored higher `seq`
/// is kept.
async fn presence_batch_rules(store: &dyn Store) {
    let ttl = TTL.unsigned_abs();
    store
        .report_presence(&report(20, 5, NOW, ttl, &[("kept", 50)]), at(NOW))
        .await
        .unwrap();
    let batch = [
        report(21, 1, NOW, ttl, &[("batch", 1), ("other", 7)]),
        report(21, 3, NOW, ttl, &[("batch", 3)]),
        report(21, 2, NOW, ttl, &[("batch", 2)]),
        report(22, 4, NOW, ttl, &[("batch", 40)]),
        report(22, 4, NOW, ttl, &[("batch", 41)]),
        report(20, 4, NOW, ttl, &[("kept", 1), ("batch", 100)]),
        report(23, 1, NOW, ttl, &[]),
    ];
    store.report_presence_batch(&batch, at(NOW)).await.unwrap();
    assert_eq!(
        viewers(store, "batch", Some(21), NOW + 1).await,
        (143, 3, 3)
    );
    assert_eq!(viewers(store, "batch", Some(22), NOW + 1).await.1, 40);
    assert_eq!(viewers(store, "other", Some(21), NOW + 1).await, (7, 7, 1));
    assert_eq!(viewers(store, "kept", Some(20), NOW + 1).await, (50, 50, 1));
    // An empty batch, and a batch of reports without ids, write nothing.
    store.report_presence_batch(&[], at(NOW)).await.unwrap();
    store
        .report_presence_batch(&[report(24, 1, NOW, ttl, &[])], at(NOW))
        .await
        .unwrap();
    assert_eq!(viewers(store, "batch", None, NOW + 1).await.0, 143);
}

/// A batch of sketch syncs merges them all in one transaction; each is answered the merged
/// sketches after the whole batch, in its own order.
async fn sketch_batch_rules(store: &dyn Store) {
    let day: Day = "2030-05-06".parse().unwrap();
    let first = [
        update("both", None, sketch_of(0..300)),
        update("first", Some(day), sketch_of(0..10)),
    ];
    let second = [update("both", None, sketch_of(200..700))];
    let third: [SketchUpdate; 0] = [];
    let answers = store
        .merge_sketches_batch(&[&first, &second, &third], at(NOW + 30))
        .await
        .unwrap();
    assert_eq!(answers.len(), 3);
    assert_eq!(answers[0].len(), 2);
    assert_eq!(answers[0][0].sketch, sketch_of(0..700));
    assert_eq!(answers[0][0].updated_at, Some(at(NOW + 30)));
    assert_eq!(answers[0][1].key.day(), Some(day));
    assert_eq!(answers[0][1].sketch, sketch_of(0..10));
    assert_eq!(answers[1].len(), 1);
    assert_eq!(answers[1][0].sketch, sketch_of(0..700));
    assert!(answers[2].is_empty());
    let read = store
        .sketches(&[SketchKey::new("both", None).unwrap()])
        .await
        .unwrap();
    assert_eq!(read[0].sketch, sketch_of(0..700));
    // A batch that grows nothing changes nothing, not even the time.
    let again = store
        .merge_sketches_batch(&[&second, &first], at(NOW + 40))
        .await
        .unwrap();
    assert_eq!(again[0][0].updated_at, Some(at(NOW + 30)));
    assert_eq!(again[1][0].sketch, sketch_of(0..700));
    assert!(
        store
            .merge_sketches_batch(&[], at(NOW + 40))
            .await
            .unwrap()
            .is_empty()
    );
}

/// Every rule of the sketch store.
async fn sketch_rules(store: Arc<dyn Store>) {
    let day: Day = "2030-03-04".parse().unwrap();
    let first = sketch_of(0..3_000);
    let second = sketch_of(2_000..6_000);
    let merged = store
        .merge_sketches(
            &[
                update("home", None, first.clone()),
                update("home", Some(day), second.clone()),
            ],
            at(NOW),
        )
        .await
        .unwrap();
    assert_eq!(merged.len(), 2);
    assert_eq!(merged[0].sketch, first);
    assert_eq!(merged[0].updated_at, Some(at(NOW)));
    assert_eq!(merged[1].key.day(), Some(day));
    // A second replica's registers: the answer is the union.
    let answer = store
        .merge_sketches(&[update("home", None, second.clone())], at(NOW + 1))
        .await
        .unwrap();
    let mut union = first.clone();
    union.merge(&second).unwrap();
    assert_eq!(answer[0].sketch, union);
    assert_eq!(answer[0].updated_at, Some(at(NOW + 1)));
    let estimate = answer[0].sketch.estimate() as f64;
    assert!(
        (estimate - 6_000.0).abs() < 6_000.0 * 3.0 * 0.01625,
        "{estimate}"
    );
    // A retried sync changes nothing, not even the time.
    let again = store
        .merge_sketches(&[update("home", None, first.clone())], at(NOW + 2))
        .await
        .unwrap();
    assert_eq!(again[0].sketch, union);
    assert_eq!(again[0].updated_at, Some(at(NOW + 1)));
    // Reads answer every key asked, in order; one never synced is empty.
    let keys = [
        SketchKey::new("never", None).unwrap(),
        SketchKey::new("home", Some(day)).unwrap(),
        SketchKey::new("home", None).unwrap(),
    ];
    let read = store.sketches(&keys).await.unwrap();
    assert_eq!(read.len(), 3);
    assert!(read[0].sketch.is_empty());
    assert_eq!(read[0].updated_at, None);
    assert_eq!(read[1].sketch, second);
    assert_eq!(read[2].sketch, union);
    // Concurrent merges into one sketch lose no register.
    let mut tasks = Vec::new();
    for part in 0..8_u64 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            for round in 0..4_u64 {
                let base = 100_000 + part * 10_000 + round * 2_500;
                store
                    .merge_sketches(
                        &[
                            update("race", None, sketch_of(base..base + 2_500)),
                            update("race", Some(day), sketch_of(base..base + 100)),
                        ],
                        at(NOW + 10),
                    )
                    .await
                    .expect("a concurrent merge commits");
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let raced = store
        .sketches(&[SketchKey::new("race", None).unwrap()])
        .await
        .unwrap();
    assert_eq!(raced[0].sketch, sketch_of(100_000..180_000));
    // Retention: a day's sketches are kept for `days` UTC days, the all-time ones forever.
    let days_after = |n: u64| day.start().plus_ms(n * 86_400_000);
    let pruned = tally_merger::prune::prune_sketches(&*store, days_after(89), 90)
        .await
        .unwrap();
    assert_eq!(pruned, 0, "the 90th day still keeps it");
    let pruned = tally_merger::prune::prune_sketches(&*store, days_after(90), 90)
        .await
        .unwrap();
    assert_eq!(pruned, 2, "home and race of that day");
    let read = store.sketches(&keys).await.unwrap();
    assert!(read[1].sketch.is_empty(), "the day's sketch is gone");
    assert_eq!(read[2].sketch, union, "the all-time sketch stays");
}

fn sqlite_url(dir: &std::path::Path) -> String {
    format!("sqlite://{}", dir.join("tally.db").display())
}

#[tokio::test]
async fn presence_and_sketches_in_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = store::open(&sqlite_url(dir.path()), Durability::Normal)
        .await
        .unwrap();
    presence_rules(&*store).await;
    sketch_rules(Arc::clone(&store)).await;
    presence_batch_rules(&*store).await;
    sketch_batch_rules(&*store).await;
    store.close().await;
    // Both survive a restart.
    let store = store::open(&sqlite_url(dir.path()), Durability::Normal)
        .await
        .unwrap();
    assert_eq!(viewers(&*store, "home", None, NOW + 40_001).await.0, 2);
    let read = store
        .sketches(&[SketchKey::new("race", None).unwrap()])
        .await
        .unwrap();
    assert_eq!(read[0].sketch, sketch_of(100_000..180_000));
}

#[tokio::test]
async fn presence_and_sketches_in_postgres_across_two_stores() {
    let Some(cluster) =
        PostgresCluster::start_unless_skipped("presence_and_sketches_in_postgres").await
    else {
        return;
    };
    let url = cluster.url();
    let store = store::open(&url, Durability::Full).await.unwrap();
    presence_rules(&*store).await;
    sketch_rules(Arc::clone(&store)).await;
    presence_batch_rules(&*store).await;
    sketch_batch_rules(&*store).await;
    // A second merger on the same database sees the same viewers and sketches, and merges
    // into them.
    let other = store::open(&url, Durability::Full).await.unwrap();
    assert_eq!(viewers(&*other, "home", None, NOW + 40_001).await.0, 2);
    other
        .merge_sketches(&[update("race", None, sketch_of(0..10))], at(NOW + 20))
        .await
        .unwrap();
    let read = store
        .sketches(&[SketchKey::new("race", None).unwrap()])
        .await
        .unwrap();
    let mut expected = sketch_of(100_000..180_000);
    expected.merge(&sketch_of(0..10)).unwrap();
    assert_eq!(read[0].sketch, expected);
    other.close().await;
    store.close().await;
}

fn edge_request(path: &str, token: Option<&str>, body: &Value) -> Request<Body> {
    post_json(path, token, body.to_string())
}

fn now_ms() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

fn report_body(from: u64, seq: u64, counts: &[(&str, u64)]) -> Value {
    json!({
        "version": 2,
        "reporter": replica(from),
        "region": "eu",
        "seq": seq,
        "at": Timestamp::from_unix_ms(now_ms()),
        "ttl_ms": 30_000,
        "counts": counts.iter().map(|(id, count)| json!({"id": id, "count": count})).collect::<Vec<_>>(),
    })
}

#[tokio::test]
async fn public_presence_and_unique_reads_come_from_memory_and_show_this_mergers_writes_at_once() {
    // Fails on the code before: every public read queried the store (no view cache).
    let t = TestMerger::new().await;
    let report = |from: u64, seq: u64, count: u64| {
        edge_request(
            "/v1/presence",
            Some(TOKEN),
            &report_body(from, seq, &[("live", count)]),
        )
    };
    assert_eq!(t.send(report(1, 1, 3)).await.0, StatusCode::OK);
    for _ in 0..50 {
        assert_eq!(t.get("/v1/presence/live").await.1["count"], 3);
        assert_eq!(t.get("/v1/unique/home").await.1["count"], 0);
    }
    let (hits, misses) = (
        t.metric("tally_view_cache_hits_total").await,
        t.metric("tally_view_cache_misses_total").await,
    );
    // One store query per view and second: the 100 reads take about 70 ms here, so even a
    // machine 10x slower asks the store at most a few times.
    assert!((2.0..=10.0).contains(&misses), "{misses} store queries");
    assert!(
        hits >= 90.0 && (hits + misses - 100.0).abs() < 0.5,
        "{hits} from memory"
    );
    // This merger's own writes show at once.
    assert_eq!(t.send(report(1, 2, 5)).await.0, StatusCode::OK);
    assert_eq!(t.get("/v1/presence/live").await.1["count"], 5);
    let sketch = json!({"version": 2, "replica": replica(1), "region": "eu",
        "sketches": [{"id": "home", "registers": "AQwAAmDB"}]});
    let (status, body) = t
        .send(edge_request("/v1/unique", Some(TOKEN), &sketch))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(t.get("/v1/unique/home").await.1["count"], 1);
}

#[tokio::test]
async fn reports_beyond_the_commit_queue_are_refused_with_503_and_store_nothing() {
    // Fails on the code before: every report went to the store at once, without bound.
    let t = TestMerger::with(|c| c.commit_queue = 2).await;
    let mut reports = tokio::task::JoinSet::new();
    for from in 1..=40u64 {
        let request = edge_request(
            "/v1/presence",
            Some(TOKEN),
            &report_body(from, 1, &[("busy", from)]),
        );
        let app = t.app.clone();
        reports.spawn(async move {
            let response = tower::ServiceExt::oneshot(app, request)
                .await
                .expect("the router is infallible");
            let status = response.status();
            let bytes = http_body_util::BodyExt::collect(response.into_body())
                .await
                .expect("a body")
                .to_bytes();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            (from, status, body)
        });
    }
    let answers = reports.join_all().await;
    let mut stored = 0;
    let mut refused = 0;
    for (from, status, body) in &answers {
        match *status {
            StatusCode::OK => stored += from,
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(body["error"]["code"], "overloaded", "{body}");
                refused += 1;
            }
            other => panic!("report {from}: {other} {body}"),
        }
    }
    eprintln!("40 reports at once with a queue of 2: {refused} refused");
    assert!(
        refused > 0,
        "40 reports at once never exceeded a queue of 2"
    );
    assert_eq!(
        t.get("/v1/presence/busy").await.1["count"],
        stored,
        "exactly the accepted reports are stored"
    );
    // Once the load is gone, the next report is taken.
    let (status, body) = t
        .send(edge_request(
            "/v1/presence",
            Some(TOKEN),
            &report_body(41, 1, &[("busy", 1)]),
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn the_presence_routes_store_sum_and_refuse_bad_reports_unchanged() {
    let t = TestMerger::new().await;
    let (status, body) = t
        .send(edge_request(
            "/v1/presence",
            Some(TOKEN),
            &report_body(1, 1, &[("home", 4), ("about", 1)]),
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["presence"][0]["id"], "home");
    assert_eq!(body["presence"][0]["count"], 4);
    assert_eq!(body["presence"][0]["recorded"], 4);
    t.send(edge_request(
        "/v1/presence",
        Some(TOKEN),
        &report_body(2, 7, &[("home", 2)]),
    ))
    .await;
    let (status, view) = t.get("/v1/presence/home").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(view["count"], 6);
    assert_eq!(view["reporters"], 2);
    assert!(view["updated_at"].is_string());
    let (_, read) = t
        .send(edge_request(
            "/v1/read/presence",
            Some(TOKEN),
            &json!({"version": 2, "reporter": replica(2), "ids": ["home", "nobody"]}),
        ))
        .await;
    assert_eq!(read["presence"][0]["count"], 6);
    assert_eq!(read["presence"][0]["recorded"], 2);
    assert_eq!(read["presence"][1]["count"], 0);
    assert_eq!(read["presence"][1]["updated_at"], Value::Null);
    // Bad reports are refused with their rule named, and change nothing.
    let mut ttl = report_body(1, 9, &[("home", 100)]);
    ttl["ttl_ms"] = json!(0);
    let mut dup = report_body(1, 9, &[("home", 100), ("home", 1)]);
    dup["seq"] = json!(10);
    let mut bad_id = report_body(1, 9, &[("a b", 100)]);
    bad_id["seq"] = json!(11);
    for (body, status, code) in [
        (
            ttl,
            StatusCode::UNPROCESSABLE_ENTITY,
            "presence_ttl_out_of_range",
        ),
        (dup, StatusCode::UNPROCESSABLE_ENTITY, "duplicate_id"),
        (bad_id, StatusCode::UNPROCESSABLE_ENTITY, "id_bad_char"),
        (
            json!({"version": 2}),
            StatusCode::BAD_REQUEST,
            "malformed_body",
        ),
    ] {
        let (got, answer) = t
            .send(edge_request("/v1/presence", Some(TOKEN), &body))
            .await;
        assert_eq!(got, status, "{answer}");
        assert_eq!(answer["error"]["code"], code);
    }
    let (status, _) = t
        .send(edge_request(
            "/v1/presence",
            None,
            &report_body(1, 50, &[("home", 100)]),
        ))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(t.get("/v1/presence/home").await.1["count"], 6);
    let (status, body) = t.get("/v1/presence/a%20b").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "id_bad_char");
    assert_eq!(
        t.metric(r#"tally_presence_reports_total{outcome="ok"}"#)
            .await,
        2.0
    );
    assert_eq!(
        t.metric(r#"tally_presence_reports_total{outcome="missing_token"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn the_unique_routes_merge_sketches_and_answer_estimates() {
    let t = TestMerger::new().await;
    let day = "2030-03-04";
    let body = |replica_n: u64, items: std::ops::Range<u64>, day: Option<&str>| {
        let mut sketch = json!({"id": "home", "registers": sketch_of(items)});
        if let Some(day) = day {
            sketch["day"] = json!(day);
        }
        json!({"version": 2, "replica": replica(replica_n), "region": "eu", "sketches": [sketch]})
    };
    let (status, answer) = t
        .send(edge_request(
            "/v1/unique",
            Some(TOKEN),
            &body(1, 0..500, None),
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["sketches"][0]["id"], "home");
    assert!(answer["sketches"][0].get("day").is_none());
    t.send(edge_request(
        "/v1/unique",
        Some(TOKEN),
        &body(2, 250..1000, None),
    ))
    .await;
    t.send(edge_request(
        "/v1/unique",
        Some(TOKEN),
        &body(2, 0..40, Some(day)),
    ))
    .await;
    let (status, view) = t.get("/v1/unique/home").await;
    assert_eq!(status, StatusCode::OK, "{view}");
    let count = view["count"].as_u64().unwrap() as f64;
    assert!((count - 1000.0).abs() <= 1000.0 * 3.0 * 0.01625, "{view}");
    assert_eq!(view["day"], Value::Null);
    assert_eq!(view["error"], 0.01625);
    assert_eq!(
        view["bytes"].as_u64().unwrap(),
        u64::try_from(sketch_of(0..1000).encoded_len()).unwrap()
    );
    let (_, daily) = t.get(&format!("/v1/unique/home?day={day}")).await;
    assert_eq!(daily["day"], day);
    assert_eq!(daily["count"], 40);
    let (_, today) = t.get("/v1/unique/home?day=today").await;
    assert_eq!(today["count"], 0);
    assert_eq!(today["updated_at"], Value::Null);
    let (_, read) = t
        .send(edge_request(
            "/v1/read/unique",
            Some(TOKEN),
            &json!({"version": 2, "sketches": [{"id": "home", "day": day}, {"id": "home"}]}),
        ))
        .await;
    let merged: HyperLogLog =
        serde_json::from_value(read["sketches"][1]["sketch"].clone()).unwrap();
    assert_eq!(merged, sketch_of(0..1000));
    // Bad syncs are refused and change nothing.
    let mut coarse = body(3, 0..5000, None);
    coarse["sketches"][0]["registers"] = json!(HyperLogLog::with_precision(10).unwrap());
    let mut not_base64 = body(3, 0..5000, None);
    not_base64["sketches"][0]["registers"] = json!("***");
    let mut doubled = body(3, 0..5000, None);
    let again = doubled["sketches"][0].clone();
    doubled["sketches"].as_array_mut().unwrap().push(again);
    for (sync, status, code) in [
        (
            coarse,
            StatusCode::UNPROCESSABLE_ENTITY,
            "hll_precision_mismatch",
        ),
        (not_base64, StatusCode::BAD_REQUEST, "malformed_body"),
        (doubled, StatusCode::UNPROCESSABLE_ENTITY, "duplicate_id"),
    ] {
        let (got, answer) = t.send(edge_request("/v1/unique", Some(TOKEN), &sync)).await;
        assert_eq!(got, status, "{answer}");
        assert_eq!(answer["error"]["code"], code);
    }
    assert_eq!(t.get("/v1/unique/home").await.1["count"], view["count"]);
    for (path, code) in [
        ("/v1/unique/home?day=2030-02-30", "invalid_query"),
        ("/v1/unique/home?days=today", "invalid_query"),
        ("/v1/unique/a%20b", "id_bad_char"),
    ] {
        let (status, body) = t.get(path).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert_eq!(body["error"]["code"], code, "{path}");
    }
    assert_eq!(
        t.metric(r#"tally_sketch_syncs_total{outcome="ok"}"#).await,
        3.0
    );
    assert_eq!(
        t.metric(r#"tally_commits_total{purpose="unique"}"#).await,
        3.0
    );
}

/// Sends `requests` to `t` all at once, each in a task of its own; answers in their order,
/// with each answer's `Retry-After`. (On the test's one-thread runtime every handler queues
/// its work before the commit task runs, so the commit task finds all of it waiting.)
async fn all_at_once(
    t: &TestMerger,
    requests: Vec<Request<Body>>,
) -> Vec<(StatusCode, Option<String>, Value)> {
    let mut tasks = tokio::task::JoinSet::new();
    for (n, request) in requests.into_iter().enumerate() {
        let app = t.app.clone();
        tasks.spawn(async move {
            let response = tower::ServiceExt::oneshot(app, request)
                .await
                .expect("the router is infallible");
            let status = response.status();
            let retry_after = response
                .headers()
                .get(header::RETRY_AFTER)
                .map(|v| v.to_str().unwrap().to_owned());
            let bytes = http_body_util::BodyExt::collect(response.into_body())
                .await
                .expect("a body")
                .to_bytes();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            (n, (status, retry_after, body))
        });
    }
    let mut answers = tasks.join_all().await;
    answers.sort_by_key(|(n, _)| *n);
    answers.into_iter().map(|(_, answer)| answer).collect()
}

/// Reports from `REPORTERS` edge objects at once, each of `crowd` (its number of viewers)
/// and of an id of its own: every one is stored and answered with sums that hold its own
/// write, in fewer transactions than reports; sketch syncs at once likewise.
async fn concurrent_writes_are_batched(t: &TestMerger) {
    const REPORTERS: u64 = 40;
    let requests = (1..=REPORTERS)
        .map(|from| {
            let own = format!("own{from}");
            edge_request(
                "/v1/presence",
                Some(TOKEN),
                &report_body(from, 1, &[("crowd", from), (own.as_str(), 1)]),
            )
        })
        .collect();
    let total: u64 = (1..=REPORTERS).sum();
    for (n, (status, _, body)) in all_at_once(t, requests).await.iter().enumerate() {
        let from = n as u64 + 1;
        assert_eq!(*status, StatusCode::OK, "report {from}: {body}");
        let crowd = &body["presence"][0];
        assert_eq!(crowd["id"], "crowd");
        assert_eq!(crowd["recorded"], from, "{body}");
        let count = crowd["count"].as_u64().unwrap();
        assert!((from..=total).contains(&count), "{body}");
        assert_eq!(body["presence"][1]["id"], format!("own{from}"));
        assert_eq!(body["presence"][1]["count"], 1, "{body}");
        assert_eq!(body["presence"][1]["recorded"], 1, "{body}");
    }
    let (_, view) = t.get("/v1/presence/crowd").await;
    assert_eq!(view["count"], total, "every report is stored");
    assert_eq!(view["reporters"], REPORTERS);
    let commits = t.metric(r#"tally_commits_total{purpose="presence"}"#).await;
    eprintln!("{REPORTERS} reports at once: {commits} transactions");
    assert!(
        (1.0..REPORTERS as f64).contains(&commits),
        "{REPORTERS} reports in {commits} transactions"
    );
    assert_eq!(t.metric("tally_commit_batch_reports_count").await, commits);
    assert_eq!(
        t.metric("tally_commit_batch_reports_sum").await,
        REPORTERS as f64
    );

    const SYNCS: u64 = 20;
    let requests = (0..SYNCS)
        .map(|n| {
            let registers = sketch_of(n * 100..n * 100 + 100);
            let body = json!({"version": 2, "replica": replica(n + 1), "region": "eu",
                "sketches": [{"id": "crowd", "registers": registers}]});
            edge_request("/v1/unique", Some(TOKEN), &body)
        })
        .collect();
    for (n, (status, _, body)) in all_at_once(t, requests).await.iter().enumerate() {
        let n = n as u64;
        assert_eq!(*status, StatusCode::OK, "sketch sync {n}: {body}");
        let mut merged: HyperLogLog =
            serde_json::from_value(body["sketches"][0]["sketch"].clone()).unwrap();
        assert!(
            !merged.merge(&sketch_of(n * 100..n * 100 + 100)).unwrap(),
            "the answer holds the sync's own registers"
        );
    }
    let (_, read) = t
        .send(edge_request(
            "/v1/read/unique",
            Some(TOKEN),
            &json!({"version": 2, "sketches": [{"id": "crowd"}]}),
        ))
        .await;
    let merged: HyperLogLog =
        serde_json::from_value(read["sketches"][0]["sketch"].clone()).unwrap();
    assert_eq!(
        merged,
        sketch_of(0..SYNCS * 100),
        "every register is merged"
    );
    let commits = t.metric(r#"tally_commits_total{purpose="unique"}"#).await;
    eprintln!("{SYNCS} sketch syncs at once: {commits} transactions");
    assert!(
        (1.0..SYNCS as f64).contains(&commits),
        "{SYNCS} sketch syncs in {commits} transactions"
    );
    assert_eq!(
        t.metric("tally_commit_batch_sketch_syncs_count").await,
        commits
    );
    assert_eq!(
        t.metric("tally_commit_batch_sketch_syncs_sum").await,
        SYNCS as f64
    );
}

#[tokio::test]
async fn concurrent_reports_and_sketch_syncs_are_all_stored_in_fewer_transactions_in_sqlite() {
    // Fails on the code before: each report and sketch sync was a transaction of its own.
    let t = TestMerger::new().await;
    concurrent_writes_are_batched(&t).await;
}

#[tokio::test]
async fn concurrent_reports_and_sketch_syncs_are_all_stored_in_fewer_transactions_in_postgres() {
    let Some(cluster) =
        PostgresCluster::start_unless_skipped("concurrent_reports_in_postgres").await
    else {
        return;
    };
    let t = TestMerger::with(|c| c.database_url = cluster.url()).await;
    concurrent_writes_are_batched(&t).await;
    t.merger.close().await;
}

#[tokio::test]
async fn reports_syncs_and_sketch_syncs_queued_together_are_each_answered_from_their_own_batch() {
    // Work of three kinds, interleaved in the queue: each batch holds one kind, in order.
    let t = TestMerger::new().await;
    let sketch = |n: u64| {
        let body = json!({"version": 2, "replica": replica(n), "region": "eu",
            "sketches": [{"id": "mixed", "registers": sketch_of(n * 10..n * 10 + 10)}]});
        edge_request("/v1/unique", Some(TOKEN), &body)
    };
    let presence = |n: u64| {
        edge_request(
            "/v1/presence",
            Some(TOKEN),
            &report_body(n, 1, &[("mixed", n)]),
        )
    };
    let sync = |n: u64| sync_request(sync_body(n, "eu", &[("mixed", "g", n, 0)]).to_string());
    let requests = vec![
        presence(1),
        presence(2),
        sync(1),
        sync(2),
        presence(3),
        sketch(1),
        sketch(2),
        presence(4),
        sync(3),
        sketch(3),
    ];
    let answers = all_at_once(&t, requests).await;
    for (n, (status, _, body)) in answers.iter().enumerate() {
        assert_eq!(*status, StatusCode::OK, "request {n}: {body}");
    }
    assert_eq!(answers[1].2["presence"][0]["recorded"], 2);
    assert_eq!(answers[4].2["presence"][0]["recorded"], 3);
    assert_eq!(answers[3].2["counters"][0]["recorded"], json!({"p": 2}));
    assert_eq!(t.get("/v1/presence/mixed").await.1["count"], 10);
    assert_eq!(t.get("/v1/counters/mixed").await.1["count"], 6);
    assert_eq!(t.get("/v1/unique/mixed").await.1["count"], 30);
    // One transaction per run of one kind, in queue order: a batch ends where work of
    // another kind begins (reports ran three times, syncs twice, sketch syncs twice).
    for (purpose, runs) in [("presence", 3.0), ("sync", 2.0), ("unique", 2.0)] {
        let sample = format!("tally_commits_total{{purpose=\"{purpose}\"}}");
        assert_eq!(t.metric(&sample).await, runs, "{purpose}");
    }
}

#[tokio::test]
async fn a_failed_batch_of_reports_answers_every_report_503_and_stores_none_of_them() {
    let t = TestMerger::new().await;
    refuse_poison(&t, "presence", true).await;
    // Ten reports queued together with one the database refuses: one batch, one statement.
    let requests = (1..=10u64)
        .map(|from| {
            let counts: &[(&str, u64)] = if from == 5 {
                &[("calm", 5), ("poison", 1)]
            } else {
                &[("calm", from)]
            };
            edge_request("/v1/presence", Some(TOKEN), &report_body(from, 1, counts))
        })
        .collect();
    for (n, (status, retry_after, body)) in all_at_once(&t, requests).await.iter().enumerate() {
        assert_eq!(
            *status,
            StatusCode::SERVICE_UNAVAILABLE,
            "report {n}: {body}"
        );
        assert_eq!(body["error"]["code"], "database_unavailable", "{body}");
        assert_eq!(retry_after.as_deref(), Some("1"));
    }
    assert_eq!(t.metric("tally_commit_failures_total").await, 1.0);
    assert_eq!(
        t.metric(r#"tally_commits_total{purpose="presence"}"#).await,
        0.0
    );
    assert_eq!(
        t.get("/v1/presence/calm").await.1["count"],
        0,
        "nothing stored"
    );
    // The edge retries: with the fault gone, the same report is stored.
    refuse_poison(&t, "presence", false).await;
    let (status, body) = t
        .send(edge_request(
            "/v1/presence",
            Some(TOKEN),
            &report_body(5, 1, &[("calm", 5), ("poison", 1)]),
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["presence"][0]["count"], 5);
}

#[tokio::test]
async fn a_failed_batch_of_sketch_syncs_answers_every_sync_503_and_merges_none_of_them() {
    let t = TestMerger::new().await;
    refuse_poison(&t, "sketches", true).await;
    let requests = (1..=6u64)
        .map(|n| {
            let mut sketches =
                vec![json!({"id": "calm", "registers": sketch_of(n * 10..n * 10 + 10)})];
            if n == 3 {
                sketches.push(json!({"id": "poison", "registers": sketch_of(0..1)}));
            }
            let body = json!({"version": 2, "replica": replica(n), "region": "eu",
                "sketches": sketches});
            edge_request("/v1/unique", Some(TOKEN), &body)
        })
        .collect();
    for (n, (status, retry_after, body)) in all_at_once(&t, requests).await.iter().enumerate() {
        assert_eq!(*status, StatusCode::SERVICE_UNAVAILABLE, "sync {n}: {body}");
        assert_eq!(body["error"]["code"], "database_unavailable", "{body}");
        assert_eq!(retry_after.as_deref(), Some("1"));
    }
    assert_eq!(t.metric("tally_commit_failures_total").await, 1.0);
    assert_eq!(
        t.metric(r#"tally_commits_total{purpose="unique"}"#).await,
        0.0
    );
    let (_, view) = t.get("/v1/unique/calm").await;
    assert_eq!(view["count"], 0, "nothing merged: {view}");
    assert_eq!(view["updated_at"], Value::Null);
}
