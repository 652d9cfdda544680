//! Milestones at the merger: the store decides the N-th hit in the commit that crosses N,
//! once, by the commit order's ordinals (both backends: SQLite on a temp file, Postgres on a
//! throwaway cluster unless `TALLY_NO_POSTGRES=1`); the HTTP routes in-process.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::common::*;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::{Value, json};
use tally_crdt::{CounterKey, CounterKind, Receipt, ReplicaId, SlotTotals, Timestamp};
use tally_e2e::postgres::PostgresCluster;
use tally_merger::config::Durability;
use tally_merger::milestone::{
    AddMilestone, CancelMilestone, Decision, MAX_MILESTONES_PER_COUNTER,
};
use tally_merger::store::{self, ImportRequest, ReplicaRow, SlotRow, Store};

const NOW: i64 = 1_900_000_000_000;

fn at() -> Timestamp {
    Timestamp::from_unix_ms(NOW)
}

fn r(n: u128) -> ReplicaId {
    ReplicaId::from_u128(n)
}

fn g(id: &str) -> CounterKey {
    CounterKey::new(CounterKind::G, id).unwrap()
}

/// Commits `slots` as `(replica, id, p)` of counters (kind g); the decisions it made.
async fn commit(store: &dyn Store, slots: &[(u128, &str, u64)]) -> Vec<(String, Decision)> {
    let replicas: Vec<ReplicaRow> = slots
        .iter()
        .map(|&(n, _, _)| ReplicaRow {
            replica: r(n),
            region: "eu".into(),
            at: at(),
        })
        .collect();
    let rows: Vec<SlotRow> = slots
        .iter()
        .map(|&(n, id, p)| SlotRow {
            key: g(id),
            replica: r(n),
            totals: SlotTotals { p, n: 0 },
            at: at(),
            visits: Vec::new(),
            carry: None,
        })
        .collect();
    store.commit(&replicas, &rows).await.unwrap().decided
}

async fn add(store: &dyn Store, id: &str, n: u64) -> AddMilestone {
    store
        .add_milestone(id, n, Some("a prize"), at())
        .await
        .unwrap()
}

/// `(replica, unit)` of the winner of `n`, if decided.
async fn winner(store: &dyn Store, id: &str, n: u64) -> Option<(ReplicaId, u64)> {
    store
        .milestones(id)
        .await
        .unwrap()
        .into_iter()
        .find(|m| m.n == n)
        .and_then(|m| m.winner)
        .map(|w| (w.replica, w.unit))
}

fn decided(id: &str, n: u64, replica: u128, unit: u64) -> (String, Decision) {
    (
        id.to_owned(),
        Decision {
            n,
            replica: r(replica),
            unit,
            visitor: None,
        },
    )
}

async fn milestone_rules(store: &dyn Store) {
    assert!(matches!(
        add(store, "home", 5).await,
        AddMilestone::Added(_)
    ));
    assert!(matches!(
        add(store, "home", 5).await,
        AddMilestone::Exists(_)
    ));
    // Count 3, then replica 2 adds 4: ordinals 4-7 are its units 1-4, so 5 is its unit 2.
    assert!(commit(store, &[(1, "home", 3)]).await.is_empty());
    assert_eq!(
        commit(store, &[(2, "home", 4)]).await,
        [decided("home", 5, 2, 2)]
    );
    assert_eq!(winner(store, "home", 5).await, Some((r(2), 2)));
    // A replay, a duplicate, an older total: no unit is added, nothing is decided again.
    assert!(
        commit(store, &[(2, "home", 4), (2, "home", 3)])
            .await
            .is_empty()
    );
    assert_eq!(winner(store, "home", 5).await, Some((r(2), 2)));
    // The count is 7: a milestone at 7 or below has happened.
    assert_eq!(
        add(store, "home", 7).await,
        AddMilestone::Passed { count: 7 }
    );
    // Two replicas in one commit: ordinals in replica order (1 before 3), each slot's units in
    // order. Replica 1 goes 3 -> 5 (ordinals 8, 9), replica 3 0 -> 2 (10, 11).
    for n in [8, 9, 11, 12] {
        add(store, "home", n).await;
    }
    let mut got = commit(store, &[(3, "home", 2), (1, "home", 5)]).await;
    got.sort_by_key(|(_, d)| d.n);
    assert_eq!(
        got,
        [
            decided("home", 8, 1, 4),
            decided("home", 9, 1, 5),
            decided("home", 11, 3, 2)
        ]
    );
    // An import is a slot's growth too: 12 is its first unit.
    add(store, "home", 20).await;
    let key = g("home");
    let request = ImportRequest {
        name: "ga-2025".into(),
        totals: SlotTotals { p: 10, n: 0 },
        at: at(),
    };
    store.import(&key, &request).await.unwrap();
    let imported = store.milestones("home").await.unwrap();
    let w12 = imported[imported.iter().position(|m| m.n == 12).unwrap()]
        .winner
        .clone()
        .expect("the import decided 12");
    assert_eq!(w12.unit, 1);
    let w20 = winner(store, "home", 20).await.expect("and 20");
    assert_eq!(w20, (w12.replica, 9));
    // Re-running the import adds nothing and decides nothing.
    store.import(&key, &request).await.unwrap();
    assert_eq!(winner(store, "home", 20).await, Some(w20));

    // Cancel: a pending one goes, a won one stays, an unknown one is unknown.
    add(store, "home", 1000).await;
    assert!(matches!(
        store.cancel_milestone("home", 1000).await.unwrap(),
        CancelMilestone::Cancelled(_)
    ));
    assert_eq!(
        store.cancel_milestone("home", 1000).await.unwrap(),
        CancelMilestone::Unknown
    );
    assert!(matches!(
        store.cancel_milestone("home", 5).await.unwrap(),
        CancelMilestone::Decided(_)
    ));
    commit(store, &[(1, "home", 2000)]).await;
    assert_eq!(
        winner(store, "home", 1000).await,
        None,
        "cancelled: never decided"
    );

    // A gauge of the same id is another counter: its growth decides nothing.
    add(store, "twin", 1).await;
    let rows = [SlotRow {
        key: CounterKey::new(CounterKind::Pn, "twin").unwrap(),
        replica: r(1),
        totals: SlotTotals { p: 5, n: 0 },
        at: at(),
        visits: Vec::new(),
        carry: None,
    }];
    let replicas = [ReplicaRow {
        replica: r(1),
        region: "eu".into(),
        at: at(),
    }];
    assert!(
        store
            .commit(&replicas, &rows)
            .await
            .unwrap()
            .decided
            .is_empty()
    );

    // Bounded: at most 100 milestones per counter.
    for n in 1..=u64::try_from(MAX_MILESTONES_PER_COUNTER).unwrap() {
        assert!(matches!(
            add(store, "busy", n).await,
            AddMilestone::Added(_)
        ));
    }
    assert_eq!(add(store, "busy", 1000).await, AddMilestone::TooMany);
    // The bound is on pending milestones: once some are won, as many new ones fit.
    commit(store, &[(3, "busy", 10)]).await;
    for n in 1001..=1010 {
        assert!(matches!(
            add(store, "busy", n).await,
            AddMilestone::Added(_)
        ));
    }
    assert_eq!(add(store, "busy", 2000).await, AddMilestone::TooMany);

    // Exact at the top: the last unit a slot can hold.
    add(store, "big", u64::MAX).await;
    commit(store, &[(7, "big", u64::MAX - 1)]).await;
    assert_eq!(winner(store, "big", u64::MAX).await, None);
    assert_eq!(
        commit(store, &[(7, "big", u64::MAX)]).await,
        [decided("big", u64::MAX, 7, u64::MAX)]
    );
}

/// Many commits at once into one counter with 60 milestones: each is decided once, by a
/// distinct unit that was counted, whatever the interleaving.
async fn concurrent_commits(stores: Vec<Arc<dyn Store>>) {
    let first = Arc::clone(&stores[0]);
    for n in (1..=60u64).map(|i| i * 7) {
        add(&*first, "race", n).await;
    }
    let mut tasks = Vec::new();
    for (i, store) in (0..8u128).zip(stores.iter().cycle()) {
        let store = Arc::clone(store);
        tasks.push(tokio::spawn(async move {
            let mut decided = Vec::new();
            for step in 1..=60u64 {
                // Each task is its own replica, growing by 1 each commit; some commits carry
                // a second replica's total again (a duplicate).
                let mut slots = vec![(100 + i, "race", step)];
                if step % 5 == 0 {
                    slots.push((100 + (i + 1) % 8, "race", step / 2));
                }
                decided.extend(commit(&*store, &slots).await);
            }
            decided
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    // 8 replicas of 60: the count is 480, so the milestones up to 420 are all decided.
    let ns: Vec<u64> = all.iter().map(|(_, d)| d.n).collect();
    let distinct: BTreeSet<u64> = ns.iter().copied().collect();
    assert_eq!(
        ns.len(),
        distinct.len(),
        "no milestone decided twice: {ns:?}"
    );
    assert_eq!(distinct, (1..=60).map(|i| i * 7).collect());
    let units: BTreeSet<(ReplicaId, u64)> = all.iter().map(|(_, d)| (d.replica, d.unit)).collect();
    assert_eq!(units.len(), all.len(), "each winner a different hit");
    for (_, d) in &all {
        assert!((1..=60).contains(&d.unit), "a counted unit: {d:?}");
        assert_eq!(
            winner(&*first, "race", d.n).await,
            Some((d.replica, d.unit))
        );
    }
}

#[tokio::test]
async fn milestones_in_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("tally.db").display());
    let store = store::open(&url, Durability::Normal).await.unwrap();
    milestone_rules(&*store).await;
    concurrent_commits(vec![Arc::clone(&store)]).await;
    store.close().await;
    // Winners are durable.
    let store = store::open(&url, Durability::Normal).await.unwrap();
    assert_eq!(winner(&*store, "home", 5).await, Some((r(2), 2)));
}

#[tokio::test]
async fn milestones_in_postgres_with_two_mergers() {
    let Some(cluster) = PostgresCluster::start_unless_skipped("milestones_in_postgres").await
    else {
        return;
    };
    let url = cluster.url();
    let store = store::open(&url, Durability::Full).await.unwrap();
    milestone_rules(&*store).await;
    let other = store::open(&url, Durability::Full).await.unwrap();
    concurrent_commits(vec![Arc::clone(&store), other]).await;
}

// The HTTP routes.

async fn admin() -> TestMerger {
    TestMerger::with(|c| c.admin_token = Some(ADMIN.into())).await
}

fn post(uri: &str, body: &str, token: Option<&str>) -> Request<Body> {
    let mut r = Request::post(uri).header(header::CONTENT_TYPE, "application/json");
    if let Some(token) = token {
        r = r.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    r.body(Body::from(body.to_owned())).unwrap()
}

fn delete(uri: &str, token: Option<&str>) -> Request<Body> {
    let mut r = Request::delete(uri);
    if let Some(token) = token {
        r = r.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    r.body(Body::empty()).unwrap()
}

async fn register(t: &TestMerger, id: &str, body: Value) -> (StatusCode, Value) {
    t.send(post(
        &format!("/v1/counters/{id}/milestones"),
        &body.to_string(),
        Some(ADMIN),
    ))
    .await
}

#[tokio::test]
async fn milestones_over_http_register_decide_and_resolve_receipts() {
    let t = admin().await;
    t.sync(&sync_body(1, "eu", &[("home", "g", 3, 0)])).await;
    let (status, body) = register(&t, "home", json!({"n": 5, "label": "confetti"})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["n"], 5);
    assert_eq!(body["label"], "confetti");
    assert_eq!(body["status"], "pending");
    assert!(body["winner"].is_null());
    // N as a decimal string, past 2^53.
    let (status, body) = register(&t, "home", json!({"n": "18446744073709551615"})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["n"], "18446744073709551615");

    // Replica 2 takes the count from 3 to 6: its second unit is the 5th hit.
    t.sync(&sync_body(2, "us", &[("home", "g", 3, 0)])).await;
    let (status, list) = t.get("/v1/counters/home/milestones").await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list["count"], 6);
    let won = &list["milestones"][0];
    assert_eq!(won["status"], "won", "{list}");
    assert_eq!(won["winner"]["replica"], replica(2));
    assert_eq!(won["winner"]["unit"], 2);
    assert_timestamp(&won["winner"]["decided_at"]);
    assert_eq!(list["milestones"][1]["status"], "pending");

    // The receipt of the hit that took replica 2 from 1 to 2 won; its neighbours did not.
    let receipt = |end: u64, replica_n: u64| {
        Receipt {
            replica: ReplicaId::from_u128(u128::from(replica_n)),
            end,
            delta: 1,
        }
        .encode(TOKEN.as_bytes(), "home")
    };
    let (status, body) = t
        .get(&format!("/v1/counters/home/receipts/{}", receipt(2, 2)))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["winner"], true, "{body}");
    assert_eq!(body["won"][0]["n"], 5);
    for (end, replica_n) in [(1, 2), (3, 2), (2, 1)] {
        let (status, body) = t
            .get(&format!(
                "/v1/counters/home/receipts/{}",
                receipt(end, replica_n)
            ))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["winner"], false, "{body}");
        assert_eq!(body["won"], json!([]));
    }
    // A receipt made for another counter, with another key, or changed, is refused.
    let other = Receipt {
        replica: ReplicaId::from_u128(2),
        end: 2,
        delta: 1,
    };
    for bad in [
        other.encode(TOKEN.as_bytes(), "about"),
        other.encode(b"not-the-sync-token-0123", "home"),
        "A".repeat(50),
        "short".into(),
    ] {
        assert_error(
            &t.get(&format!("/v1/counters/home/receipts/{bad}")).await,
            StatusCode::BAD_REQUEST,
            "invalid_receipt",
        );
    }

    // Cancel: a won one stays, a pending one goes.
    assert_error(
        &t.send(delete("/v1/counters/home/milestones/5", Some(ADMIN)))
            .await,
        StatusCode::CONFLICT,
        "milestone_decided",
    );
    let (status, body) = t
        .send(delete(
            "/v1/counters/home/milestones/18446744073709551615",
            Some(ADMIN),
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "cancelled");
    assert_error(
        &t.send(delete(
            "/v1/counters/home/milestones/18446744073709551615",
            Some(ADMIN),
        ))
        .await,
        StatusCode::NOT_FOUND,
        "milestone_not_found",
    );
}

#[tokio::test]
async fn public_milestone_lists_come_from_memory_and_show_this_mergers_changes_at_once() {
    // Fails on the code before: every list read queried the store (no view cache).
    let t = admin().await;
    t.sync(&sync_body(1, "eu", &[("home", "g", 3, 0)])).await;
    let (status, body) = register(&t, "home", json!({"n": 5})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let misses_before = t.metric("tally_view_cache_misses_total").await;
    for _ in 0..50 {
        let (status, list) = t.get("/v1/counters/home/milestones").await;
        assert_eq!(status, StatusCode::OK, "{list}");
        assert_eq!(list["milestones"][0]["status"], "pending", "{list}");
    }
    // One store query per second: the 50 reads take a few ms here.
    let misses = t.metric("tally_view_cache_misses_total").await - misses_before;
    assert!((1.0..=5.0).contains(&misses), "{misses} store queries");
    // A commit that decides it, a registration and a cancel through this merger show at once.
    t.sync(&sync_body(2, "us", &[("home", "g", 3, 0)])).await;
    let (_, list) = t.get("/v1/counters/home/milestones").await;
    assert_eq!(list["milestones"][0]["status"], "won", "{list}");
    assert_eq!(list["count"], 6);
    let (status, body) = register(&t, "home", json!({"n": 9})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (_, list) = t.get("/v1/counters/home/milestones").await;
    assert_eq!(list["milestones"][1]["n"], 9, "{list}");
    let (status, _) = t
        .send(delete("/v1/counters/home/milestones/9", Some(ADMIN)))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, list) = t.get("/v1/counters/home/milestones").await;
    assert_eq!(
        list["milestones"].as_array().map(Vec::len),
        Some(1),
        "{list}"
    );
}

/// The edge's exact path hears a counter's milestones in its sync answers: the next pending,
/// those won lately (in every answer for a minute, a repeated sync's too), and a winner's
/// visitor key is kept from the visits its sync carried.
#[tokio::test]
async fn sync_answers_tell_the_exact_path_and_winners_keep_their_visitor() {
    let t = admin().await;
    for n in [5, 8] {
        let (status, body) =
            register(&t, "door", json!({"n": n, "label": format!("prize {n}")})).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    // Visits are part of protocol version 3.
    let sync = |p: u64, visits: Value| {
        let mut body = sync_body(1, "eu", &[("door", "g", p, 0), ("plain", "g", p, 0)]);
        body["version"] = json!(3);
        body["counters"][0]["visits"] = visits;
        body
    };
    // A read tells of a milestone registered here from the start (the board), before any
    // sync of the counter; a counter without milestones reads as before.
    let (status, read) = t
        .read(&read_body(
            Some(1),
            &[("door", "g"), ("plain", "g"), ("door", "pn")],
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{read}");
    assert_eq!(
        read["counters"][0]["milestones"],
        json!({"next": 5}),
        "{read}"
    );
    assert!(read["counters"][1].get("milestones").is_none(), "{read}");
    assert!(
        read["counters"][2].get("milestones").is_none(),
        "a gauge has none: {read}"
    );
    let (status, answer) = t.sync(&sync(3, json!([]))).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(
        answer["counters"][0]["milestones"],
        json!({"next": 5}),
        "{answer}"
    );
    assert!(
        answer["counters"][1].get("milestones").is_none(),
        "a counter without milestones hears nothing of them: {answer}"
    );
    // Units 4-6 of replica 1: unit 5 is the 5th hit, and its visit names "alice".
    let visits = json!([
        {"end": 5, "delta": 2, "visitor": "alice"},
        {"end": 6, "delta": 1, "visitor": "bob"}
    ]);
    let won = json!({
        "next": 8,
        "won": [{"n": 5, "label": "prize 5", "replica": replica(1), "unit": 5}]
    });
    let (status, answer) = t.sync(&sync(6, visits.clone())).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["counters"][0]["milestones"], won, "{answer}");
    // The same sync again (its answer lost, say): nothing new, and the news again.
    let (_, again) = t.sync(&sync(6, visits)).await;
    assert_eq!(again["counters"][0]["milestones"], won, "{again}");
    let (_, list) = t.get("/v1/counters/door/milestones").await;
    assert_eq!(
        list["milestones"][0]["winner"]["visitor"], "alice",
        "{list}"
    );
    assert_eq!(list["milestones"][0]["winner"]["unit"], 5);
    // A winner whose hit carried no visit has none.
    let (_, answer) = t.sync(&sync(9, json!([]))).await;
    assert_eq!(
        answer["counters"][0]["milestones"]["won"][1]["n"], 8,
        "{answer}"
    );
    let (_, list) = t.get("/v1/counters/door/milestones").await;
    assert!(
        list["milestones"][1]["winner"]["visitor"].is_null(),
        "{list}"
    );

    // A visit that is not one of the slot's hits gets its counter refused alone.
    for bad in [
        json!([{"end": 20, "delta": 1, "visitor": "x"}]),
        json!([{"end": 9, "delta": 0, "visitor": "x"}]),
        json!([{"end": 9, "delta": 10, "visitor": "x"}]),
        json!([{"end": 9, "delta": 1, "visitor": ""}]),
        json!([{"end": 9, "delta": 1, "visitor": "v".repeat(65)}]),
        json!([{"end": 9, "delta": 1, "visitor": "tab\t"}]),
    ] {
        let (status, answer) = t.sync(&sync(10, bad.clone())).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(
            answer["counters"][0]["error"]["code"], "invalid_visit",
            "{bad}: {answer}"
        );
        assert_eq!(
            answer["counters"][1]["global"]["p"], 10,
            "the other counter merged"
        );
    }
    let (_, door) = t.get("/v1/counters/door").await;
    assert_eq!(
        door["count"], 9,
        "nothing of a refused counter committed: {door}"
    );
    let mut gauge = sync_body(1, "eu", &[("door", "pn", 3, 0)]);
    gauge["version"] = json!(3);
    gauge["counters"][0]["visits"] = json!([{"end": 1, "delta": 1, "visitor": "x"}]);
    let (_, answer) = t.sync(&gauge).await;
    assert_eq!(
        answer["counters"][0]["error"]["code"], "invalid_visit",
        "{answer}"
    );
}

#[tokio::test]
async fn bad_milestone_registrations_get_their_error_and_change_nothing() {
    let t = admin().await;
    t.sync(&sync_body(1, "eu", &[("home", "g", 10, 0)])).await;
    register(&t, "home", json!({"n": 50})).await;
    let before = t.get("/v1/counters/home/milestones").await;
    let cases: Vec<(Request<Body>, StatusCode, &str)> = vec![
        (
            post("/v1/counters/home/milestones", r#"{"n":60}"#, None),
            StatusCode::UNAUTHORIZED,
            "missing_token",
        ),
        (
            post(
                "/v1/counters/home/milestones",
                r#"{"n":60}"#,
                Some("wrong-token-0123456789"),
            ),
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        ),
        (
            post("/v1/counters/home/milestones", r#"{"n":10}"#, Some(ADMIN)),
            StatusCode::CONFLICT,
            "milestone_passed",
        ),
        (
            post("/v1/counters/home/milestones", r#"{"n":3}"#, Some(ADMIN)),
            StatusCode::CONFLICT,
            "milestone_passed",
        ),
        (
            post("/v1/counters/home/milestones", r#"{"n":50}"#, Some(ADMIN)),
            StatusCode::CONFLICT,
            "milestone_exists",
        ),
        (
            post("/v1/counters/home/milestones", r#"{"n":0}"#, Some(ADMIN)),
            StatusCode::BAD_REQUEST,
            "invalid_milestone",
        ),
        (
            post("/v1/counters/home/milestones", r#"{"n":-4}"#, Some(ADMIN)),
            StatusCode::BAD_REQUEST,
            "invalid_milestone",
        ),
        (
            post(
                "/v1/counters/home/milestones",
                r#"{"n":"18446744073709551616"}"#,
                Some(ADMIN),
            ),
            StatusCode::BAD_REQUEST,
            "invalid_milestone",
        ),
        (
            post("/v1/counters/home/milestones", r#"{"n":60.5}"#, Some(ADMIN)),
            StatusCode::BAD_REQUEST,
            "malformed_body",
        ),
        (
            post(
                "/v1/counters/home/milestones",
                r#"{"n":60,"x":1}"#,
                Some(ADMIN),
            ),
            StatusCode::BAD_REQUEST,
            "malformed_body",
        ),
        (
            post("/v1/counters/home/milestones", r#"{}"#, Some(ADMIN)),
            StatusCode::BAD_REQUEST,
            "malformed_body",
        ),
        (
            post(
                "/v1/counters/home/milestones",
                &json!({"n": 60, "label": "x".repeat(201)}).to_string(),
                Some(ADMIN),
            ),
            StatusCode::BAD_REQUEST,
            "invalid_milestone",
        ),
        (
            post("/v1/gauges/home/milestones", r#"{"n":60}"#, Some(ADMIN)),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            post("/v1/counters/a%20b/milestones", r#"{"n":60}"#, Some(ADMIN)),
            StatusCode::BAD_REQUEST,
            "id_bad_char",
        ),
        (
            delete("/v1/counters/home/milestones/0", Some(ADMIN)),
            StatusCode::BAD_REQUEST,
            "invalid_milestone",
        ),
        (
            delete("/v1/counters/home/milestones/x", Some(ADMIN)),
            StatusCode::BAD_REQUEST,
            "invalid_milestone",
        ),
        (
            delete("/v1/counters/home/milestones/50", None),
            StatusCode::UNAUTHORIZED,
            "missing_token",
        ),
    ];
    for (request, status, code) in cases {
        let what = format!("{} {}", request.method(), request.uri());
        let answer = t.send(request).await;
        assert_eq!(answer.0, status, "{what}: {}", answer.1);
        assert_eq!(answer.1["error"]["code"], code, "{what}: {}", answer.1);
    }
    assert_eq!(t.get("/v1/counters/home/milestones").await, before);
    // Without an admin token the API is off.
    let off = TestMerger::new().await;
    let answer = off
        .send(post(
            "/v1/counters/home/milestones",
            r#"{"n":60}"#,
            Some(ADMIN),
        ))
        .await;
    assert_error(&answer, StatusCode::FORBIDDEN, "admin_disabled");
}

/// What the test's webhook receiver saw: headers and body of each request.
type Seen = Arc<std::sync::Mutex<Vec<(axum::http::HeaderMap, String)>>>;

/// A webhook receiver on a loopback port that answers 500 to the first `fail` requests,
/// then 200; returns its URL and what it saw.
async fn receiver(fail: usize) -> (String, Seen) {
    let seen: Seen = Arc::default();
    let state = Arc::clone(&seen);
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
            let state = Arc::clone(&state);
            async move {
                let mut seen = state.lock().unwrap();
                seen.push((headers, body));
                if seen.len() <= fail {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::OK
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

#[tokio::test]
async fn a_winner_is_announced_signed_and_retried_until_acknowledged() {
    const SECRET: &str = "webhook-secret-0123456789";
    let (url, seen) = receiver(2).await;
    let t = TestMerger::with(|c| {
        c.admin_token = Some(ADMIN.into());
        c.webhook_url = Some(url.clone());
        c.webhook_secret = Some(SECRET.into());
    })
    .await;
    register(&t, "home", json!({"n": 3, "label": "third"})).await;
    register(&t, "home", json!({"n": 100})).await;
    // Nothing is announced before the winner is committed.
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    assert!(seen.lock().unwrap().is_empty());
    t.sync(&sync_body(4, "eu", &[("home", "g", 5, 0)])).await;

    // Two failures, backing off (about 0.5-1 s, then 1-2 s), then acknowledged.
    let start = std::time::Instant::now();
    let bound = std::time::Duration::from_secs(30);
    while seen.lock().unwrap().len() < 3 {
        assert!(
            start.elapsed() < bound,
            "three attempts within {bound:?}: {:?}",
            seen.lock().unwrap().len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    tally_e2e::record_timing(
        "merger: a webhook's three attempts (two failures backed off)",
        start.elapsed(),
        bound,
    );
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "no attempt after the acknowledgement");
    let body: Value = serde_json::from_str(&seen[0].1).unwrap();
    assert_eq!(
        body,
        json!({
            "id": "milestone:home:3",
            "type": "milestone.won",
            "counter": "home",
            "n": 3,
            "label": "third",
            "winner": {
                "replica": replica(4),
                "unit": 3,
                "decided_at": body["winner"]["decided_at"],
                "visitor": null
            },
        })
    );
    for (attempt, (headers, text)) in seen.iter().enumerate() {
        let header = |name: &str| headers.get(name).unwrap().to_str().unwrap().to_owned();
        assert_eq!(text, &seen[0].1, "the same body every attempt");
        assert_eq!(header("tally-event-id"), "milestone:home:3");
        assert_eq!(header("tally-delivery-attempt"), (attempt + 1).to_string());
        let timestamp: i64 = header("tally-timestamp").parse().unwrap();
        let now = i64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
        )
        .unwrap();
        assert!((now - 60..=now).contains(&timestamp), "a fresh timestamp");
        assert_eq!(
            header("tally-signature"),
            tally_merger::announce::signature(SECRET.as_bytes(), timestamp, text),
            "attempt {attempt} is signed"
        );
    }
    let (_, list) = t.get("/v1/counters/home/milestones").await;
    assert_timestamp(&list["milestones"][0]["announced_at"]);
    assert!(list["milestones"][1]["announced_at"].is_null());
    assert_eq!(
        t.metric(r#"tally_announcements_total{outcome="failed"}"#)
            .await,
        2.0
    );
    assert_eq!(
        t.metric(r#"tally_announcements_total{outcome="ok"}"#).await,
        1.0
    );
}

#[tokio::test]
async fn a_webhook_without_a_secret_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = tally_merger::Config::new(database_url(dir.path()), TOKEN);
    config.webhook_url = Some("http://127.0.0.1:9/hook".into());
    assert!(tally_merger::Merger::open(config.clone()).await.is_err());
    config.webhook_secret = Some("short".into());
    assert!(tally_merger::Merger::open(config.clone()).await.is_err());
    config.webhook_url = Some("ftp://example/hook".into());
    config.webhook_secret = Some("webhook-secret-0123456789".into());
    assert!(tally_merger::Merger::open(config).await.is_err());
}
