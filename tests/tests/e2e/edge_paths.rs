//! The edge's data path at the mission's scale and against hostile clients, end to end with
//! the real merger binary and the real worker under `wrangler dev`:
//!
//! - writes never wait on the merger (a hung merger changes nothing for hits), and a crash of
//!   the runtime right after acknowledged hits loses none of them;
//! - reads never write (reads of ids nobody has hit cost the merger no commit) and many
//!   counters read at once;
//! - every client reads its own writes and never sees a count go back, through the session
//!   token, on counters that several objects serve;
//! - one sync pass per interval under steady traffic; anti-entropy heals a merger restored
//!   from an older backup;
//! - the public write policy and the new-id budget.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use tally_crdt::{CounterKey, CounterKind};
use tally_e2e::*;

/// Ids of kind `kind` that the test edge (4 partitions, spread 2) serves from two different
/// objects: a client's requests on them land on either.
fn served_by_two_objects(prefix: &str, kind: CounterKind, n: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .filter(|id| {
            let key = CounterKey::new(kind, id.as_str()).expect("test ids are valid");
            tally_edge::routing::partition(&key, 0, 4) != tally_edge::routing::partition(&key, 1, 4)
        })
        .take(n)
        .collect()
}

/// An edge whose objects' views of a counter differ for seconds: slow syncs and a long read
/// TTL, and no isolate cache, so every read goes to one of a counter's two objects.
fn diverging(merger_url: &str, state: &std::path::Path) -> EdgeOptions {
    let mut options = EdgeOptions::new(merger_url, state);
    options.sync_interval_ms = 3000;
    options.vars.push("READ_TTL_MS:3000".into());
    options.vars.push("EDGE_CACHE_MS:0".into());
    options
}

/// A `PUT` without the write key, as any web page could send it.
async fn public_put(path: &str, body: Option<&str>, auth: Option<&str>) -> (u16, Value) {
    let mut request = http_client().put(path);
    if let Some(body) = body {
        request = request
            .header("Content-Type", "application/json")
            .body(body.to_owned());
    }
    if let Some(auth) = auth {
        request = request.header("Authorization", auth);
    }
    let response = request.send().await.expect("the edge answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn hits_never_wait_for_the_merger_and_reads_never_write_to_it() {
    let _serial = serial().await;
    let (db, state) = (temp_dir(), temp_dir());
    let merger = MergerProcess::start(db.path(), &[]).await;
    let mut options = EdgeOptions::new(&merger.url, state.path());
    // The edge waits up to a minute for the merger's answer, so that a hit that waited for
    // the hung merger below would take that long, not the harness's 2 s.
    options.sync_timeout_ms = 60_000;
    let edge = Edge::start(&options).await;
    let c = http_client();
    let commits = r#"tally_commits_total{purpose="sync"}"#;
    let syncs = r#"tally_syncs_total{outcome="ok"} "#;

    // Reads of 300 ids nobody has hit: each answers 0 with no update time, the merger agrees,
    // and none of them costs the merger a commit or registers a replica.
    let before = metric(&c, &merger.url, commits).await;
    for i in 0..200 {
        let (status, body) = get(&c, &format!("{}/unseen-{i}/counter", edge.url)).await;
        assert_eq!(
            (status, &body),
            (200, &serde_json::json!({"count": 0, "updated_at": null}))
        );
    }
    for page in 0..10 {
        let ids: Vec<String> = (0..10).map(|i| format!("unseen-b{page}-{i}")).collect();
        let (status, body) = get(&c, &format!("{}/gauge?ids={}", edge.url, ids.join(","))).await;
        assert_eq!(status, 200, "{body}");
        let items = body["items"].as_array().expect("a batch answers items");
        let answered: Vec<&str> = items.iter().map(|i| i["id"].as_str().unwrap()).collect();
        assert_eq!(answered, ids, "in the order asked");
        assert!(
            items
                .iter()
                .all(|i| i["count"] == 0 && i["updated_at"].is_null()),
            "{body}"
        );
    }
    let (_, at_merger) = get(&c, &format!("{}/v1/counters/unseen-3", merger.url)).await;
    assert_eq!(
        (&at_merger["count"], &at_merger["updated_at"]),
        (&Value::from(0), &Value::Null)
    );
    tokio::time::sleep(Duration::from_secs(1)).await; // any sync they caused would be done
    assert_eq!(
        metric(&c, &merger.url, commits).await,
        before,
        "reads caused commits"
    );
    assert_eq!(
        metric(&c, &merger.url, "tally_replicas").await,
        0.0,
        "reads registered a replica"
    );
    // The sync series appears with the first sync; an edge that reads through syncs makes it.
    let text = c
        .get(format!("{}/metrics", merger.url))
        .send()
        .await
        .expect("the merger answers /metrics")
        .text()
        .await
        .expect("metrics are text");
    let synced = text
        .lines()
        .find_map(|l| l.strip_prefix(syncs))
        .map_or(0.0, |v| v.parse::<f64>().expect("a number"));
    assert_eq!(synced, 0.0, "reads caused syncs");

    // A batch read of counters with hits answers each with its own count.
    for (id, hits) in [("b-one", 1), ("b-two", 2)] {
        for _ in 0..hits {
            assert_eq!(
                hit(&c, &edge.url, &format!("/{id}/counter"), "eu", 1)
                    .await
                    .0,
                200
            );
        }
    }
    wait_until(
        Duration::from_secs(20),
        "batch read of counted ids",
        || async {
            let (_, body) = get(&c, &format!("{}/counter?ids=b-two,nobody,b-one", edge.url)).await;
            let counts: Vec<Option<i128>> = body["items"]
                .as_array()
                .map(|items| items.iter().map(|i| count_of(&i["count"])).collect())
                .unwrap_or_default();
            counts == [Some(2), Some(0), Some(1)]
        },
    )
    .await;

    // The merger hangs (SIGSTOP: connections open, nothing answered). Hits on known and new
    // ids answer at once, far within the minute a wait for the merger would take.
    merger.signal("-STOP");
    let mut slowest = Duration::ZERO;
    let mut acked: BTreeMap<String, i128> = BTreeMap::new();
    for i in 0..40 {
        let path = if i % 2 == 0 {
            "/b-one/counter".to_owned()
        } else {
            format!("/fresh-{i}/counter")
        };
        let sent = Instant::now();
        let (status, body) = hit(&c, &edge.url, &path, "eu", 1).await;
        slowest = slowest.max(sent.elapsed());
        assert_eq!(status, 200, "{path}: {body}");
        *acked.entry(path).or_default() += 1;
    }
    assert_within(
        "edge: the slowest of 40 hits with the merger hung",
        slowest,
        Duration::from_secs(10),
    );
    merger.signal("-CONT");

    // Hits acknowledged just before the runtime is killed are in Durable Object storage;
    // the restarted edge syncs them.
    for _ in 0..20 {
        assert_eq!(hit(&c, &edge.url, "/killed/counter", "us", 3).await.0, 200);
    }
    *acked.entry("/killed/counter".into()).or_default() += 60;
    edge.kill_9().await;
    let edge = Edge::start(&options).await;
    *acked.entry("/b-one/counter".into()).or_default() += 1;
    for (path, want) in &acked {
        let url = format!("{}{}", merger.url, tally_e2e::checker::merger_path(path));
        wait_until(
            Duration::from_secs(60),
            &format!("{path} reaches {want}"),
            || async {
                let (_, view) = get(&c, &url).await;
                count_of(&view["count"]) == Some(*want)
            },
        )
        .await;
    }
    edge.stop().await;
    merger.terminate().await;
}

/// What one client has seen of one counter: its count and the session token's halves.
#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    count: i128,
    p: u128,
    n: u128,
}

/// The halves the session token holds for `key` (`g:home`, `pn:v`).
fn halves(token: &str, key: &str) -> Option<(u128, u128)> {
    session_entry(token, key).map(|(p, n, _)| (p, n))
}

#[tokio::test]
async fn every_client_reads_its_own_writes_and_its_reads_never_go_back() {
    let _serial = serial().await;
    let (db, state) = (temp_dir(), temp_dir());
    let merger = MergerProcess::start(db.path(), &[]).await;
    let edge = Edge::start(&diverging(&merger.url, state.path())).await;
    let mut paths: Vec<(String, String)> = served_by_two_objects("ryw", CounterKind::G, 2)
        .into_iter()
        .map(|id| (format!("/{id}/counter"), format!("g:{id}")))
        .collect();
    paths.extend(
        served_by_two_objects("ryw-v", CounterKind::Pn, 1)
            .into_iter()
            .map(|id| (format!("/{id}/gauge"), format!("pn:{id}"))),
    );

    let tasks: Vec<_> = (0..12u64)
        .map(|client_no| {
            let (edge, paths) = (edge.url.clone(), paths.clone());
            tokio::spawn(async move {
                let c = http_client();
                let mut token = String::new();
                let mut seen: BTreeMap<String, Seen> = BTreeMap::new();
                let mut violations = Vec::new();
                let mut tokenless_lower = 0;
                for step in 0..30u64 {
                    let (path, key) = &paths[usize::try_from((client_no + step) % 3).unwrap()];
                    let write = step % 3 == 0;
                    let mut request = if write {
                        let delta = if path.ends_with("gauge") && step % 2 == 1 {
                            -1
                        } else {
                            1
                        };
                        c.put(format!("{edge}{path}"))
                            .header("Authorization", format!("Bearer {WRITE_KEY}"))
                            .header("Content-Type", "application/json")
                            .body(format!("{{\"delta\":{delta}}}"))
                    } else {
                        c.get(format!("{edge}{path}"))
                    };
                    request = request.header("X-Tally-Region", "eu");
                    if !token.is_empty() {
                        request = request.header("Tally-Session", &token);
                    }
                    let response = request.send().await.expect("the edge answers");
                    assert_eq!(response.status(), 200);
                    token = response
                        .headers()
                        .get("tally-session")
                        .and_then(|v| v.to_str().ok())
                        .expect("every answer carries the session token")
                        .to_owned();
                    let body: Value = response.json().await.expect("JSON");
                    let count = count_of(&body["count"]).expect("a count");
                    let (p, n) = halves(&token, key).expect("the token holds the counter");
                    assert_eq!(
                        count,
                        i128::try_from(p).unwrap() - i128::try_from(n).unwrap()
                    );
                    let before = seen.get(key).copied().unwrap_or_default();
                    if p < before.p || n < before.n {
                        violations.push(format!(
                            "client {client_no} step {step} {key}: {p}-{n} after {}-{}",
                            before.p, before.n
                        ));
                    }
                    if key.starts_with("g:") && count < before.count {
                        violations.push(format!(
                            "client {client_no} step {step} {key}: read {count} after {}",
                            before.count
                        ));
                    }
                    seen.insert(key.clone(), Seen { count, p, n });
                    // The same read without the token, right after a counter's own write:
                    // does an object that is behind answer it?
                    if write && key.starts_with("g:") {
                        let body: Value = c
                            .get(format!("{edge}{path}"))
                            .header("X-Tally-Region", "eu")
                            .send()
                            .await
                            .expect("the edge answers")
                            .json()
                            .await
                            .expect("JSON");
                        if count_of(&body["count"]).expect("a count") < count {
                            tokenless_lower += 1;
                        }
                    }
                }
                (violations, tokenless_lower)
            })
        })
        .collect();
    let mut violations = Vec::new();
    let mut tokenless_lower = 0;
    for t in tasks {
        let (v, lower) = t.await.expect("a client does not panic");
        violations.extend(v);
        tokenless_lower += lower;
    }
    assert!(
        violations.is_empty(),
        "{} violations:\n{}",
        violations.len(),
        violations.join("\n")
    );

    // Without the token the same reads land on objects that are behind: the guarantee comes
    // from the token, not from luck (this also shows the test can catch a broken token).
    eprintln!("tokenless reads right after a write, below it: {tokenless_lower}");
    assert!(tokenless_lower > 0, "the objects never diverged");
    edge.stop().await;
    merger.terminate().await;
}

/// One request of a client that holds a session token: sends `token` if there is one, and
/// answers the status, the body and the token answered.
async fn with_session(
    request: reqwest::RequestBuilder,
    token: Option<&str>,
) -> (u16, Value, Option<String>) {
    let request = match token {
        Some(token) => request.header("Tally-Session", token),
        None => request,
    };
    let response = request
        .header("X-Tally-Region", "eu")
        .send()
        .await
        .expect("the edge answers");
    let status = response.status().as_u16();
    let token = response
        .headers()
        .get("tally-session")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (status, response.json().await.unwrap_or(Value::Null), token)
}

#[tokio::test]
async fn a_forged_session_token_changes_nothing_anybody_is_shown() {
    let _serial = serial().await;
    let (db, state) = (temp_dir(), temp_dir());
    let merger = MergerProcess::start(db.path(), &[]).await;
    let options = EdgeOptions::one_object(&merger.url, state.path());
    // One object and the isolate cache on (the default 1 s): what a forged token reached
    // before, every client's read.
    let edge = Edge::start(&options).await;
    let c = http_client();
    let url = format!("{}/forged/counter", edge.url);
    let batch = format!("{}/counter?ids=forged", edge.url);
    for _ in 0..3 {
        assert_eq!(hit(&c, &edge.url, "/forged/counter", "eu", 1).await.0, 200);
    }
    wait_until(Duration::from_secs(60), "the hits sync", || async {
        count_of(
            &get(&c, &format!("{}/v1/counters/forged", merger.url))
                .await
                .1["count"],
        ) == Some(3)
    })
    .await;
    // An honest client reads the counter and keeps its token.
    let (status, body, honest) = with_session(c.get(&url), None).await;
    assert_eq!((status, count_of(&body["count"])), (200, Some(3)));
    let mut honest = honest.expect("a token");
    let mut honest_seen = 3;
    // A real token of the forger's, to edit.
    let (_, _, real) = with_session(c.get(&url), None).await;
    let real = real.expect("a token");
    let forgeries = [
        // The token form of d2f0bce, unsigned.
        "g:forged=99999999999".to_owned(),
        "g:forged=0@9999999999999999999".to_owned(),
        // The signed form with its entries edited: the MAC no longer matches.
        forge_session(&real, "g:forged=99999999999;"),
        forge_session(&real, "g:forged=0@9999999999999999999;"),
        forge_session(&real, ";g:forged=99999999999"),
    ];
    let mut hits: i128 = 3;
    let mut shown = Vec::new();
    for forged in &forgeries {
        let (status, body, _) = with_session(c.put(&url), Some(forged)).await;
        assert_eq!(status, 200, "{forged}: {body}");
        hits += 1;
        let forger = count_of(&body["count"]).expect("a count");
        shown.push(format!("forger with {forged}: {forger}"));
        for _ in 0..3 {
            // Clients with no token, the batch read, and the honest client with its own.
            let (_, body, _) = with_session(c.get(&url), None).await;
            let tokenless = count_of(&body["count"]).expect("a count");
            let (_, body, _) = with_session(c.get(&batch), None).await;
            let batched = count_of(&body["items"][0]["count"]).expect("a count");
            let (_, body, token) = with_session(c.get(&url), Some(&honest)).await;
            let own = count_of(&body["count"]).expect("a count");
            honest = token.expect("a token");
            shown.push(format!(
                "tokenless {tokenless}, batch {batched}, honest {own}"
            ));
            for (who, count) in [("tokenless", tokenless), ("batch", batched)] {
                assert!(
                    count <= hits,
                    "{who} read {count} after {hits} hits and {forged}:\n{}",
                    shown.join("\n")
                );
            }
            assert!(
                (honest_seen..=hits).contains(&own),
                "the honest client read {own} after {honest_seen} and {forged}:\n{}",
                shown.join("\n")
            );
            honest_seen = own;
        }
        // Last, as it is the smaller promise: not even its sender is shown a forged value.
        assert!(
            (1..=hits).contains(&forger),
            "a forged token is no session, even for its sender: {forger} after {hits} hits"
        );
    }
    edge.stop().await;
    merger.terminate().await;
}

#[tokio::test]
async fn read_your_writes_survives_a_page_of_batch_reads() {
    let _serial = serial().await;
    let (db, state) = (temp_dir(), temp_dir());
    let merger = MergerProcess::start(db.path(), &[]).await;
    // Only the token keeps a client's like in its reads.
    let edge = Edge::start(&diverging(&merger.url, state.path())).await;
    let c = http_client();
    // A page of the batch limit: 100 other counters.
    let page: Vec<String> = (0..100).map(|i| format!("page-{i}")).collect();
    let page_url = format!("{}/counter?ids={}", edge.url, page.join(","));
    let mut below = Vec::new();
    let mut behind_without_token = 0;
    for liked in served_by_two_objects("liked", CounterKind::G, 4) {
        let url = format!("{}/{liked}/counter", edge.url);
        let (status, body, token) = with_session(c.put(&url), None).await;
        assert_eq!((status, count_of(&body["count"])), (200, Some(1)));
        let (status, body, token) = with_session(c.get(&page_url), token.as_deref()).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["items"].as_array().map(Vec::len), Some(100));
        let mut token = token.expect("a token");
        for read in 0..20 {
            let (status, body, next) = with_session(c.get(&url), Some(&token)).await;
            assert_eq!(status, 200);
            let count = count_of(&body["count"]).expect("a count");
            if count < 1 {
                below.push(format!("{liked}: read {read} answered {count}"));
            }
            token = next.expect("a token");
            // The same read without the token: does it land on an object that is behind?
            let (_, body, _) = with_session(c.get(&url), None).await;
            if count_of(&body["count"]) == Some(0) {
                behind_without_token += 1;
            }
        }
    }
    assert!(
        below.is_empty(),
        "{} reads below the client's own like after a page of 100:\n{}",
        below.len(),
        below.join("\n")
    );
    // Without the token the same reads land on objects that are behind: the guarantee comes
    // from the token, not from luck.
    eprintln!("tokenless reads of a liked counter answering 0: {behind_without_token} of 80");
    assert!(behind_without_token > 0, "the objects never diverged");
    edge.stop().await;
    merger.terminate().await;
}

/// The count one region's edge answers for `id`, with no session token (what any new client
/// is shown).
async fn read_in(c: &reqwest::Client, edge: &str, id: &str, region: &str) -> Option<i128> {
    let response = c
        .get(format!("{edge}/{id}/counter"))
        .header("X-Tally-Region", region)
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .expect("the edge answers");
    assert_eq!(response.status(), 200);
    count_of(&response.json::<Value>().await.expect("JSON")["count"])
}

/// Issue 29: while the merger answers, no read is staler than `READ_TTL_MS` +
/// `SYNC_TIMEOUT_MS` (+ `EDGE_CACHE_MS`), the first read after a quiet spell included. Before,
/// an object answered what it had heard however old, and only then refreshed it: here the
/// read after the quiet spell answered 1 with the merger at 3.
#[tokio::test]
async fn a_read_after_a_quiet_spell_is_no_staler_than_the_bound() {
    let _serial = serial().await;
    let (db, state) = (temp_dir(), temp_dir());
    let merger = MergerProcess::start(db.path(), &[]).await;
    let mut options = EdgeOptions::one_object(&merger.url, state.path());
    options.sync_timeout_ms = 1000;
    options.vars.push("READ_TTL_MS:500".into());
    options.vars.push("EDGE_CACHE_MS:0".into());
    let edge = Edge::start(&options).await;
    let c = http_client();
    let at_merger = |want: i128| {
        let (c, url) = (c.clone(), format!("{}/v1/counters/quiet", merger.url));
        async move {
            wait_until(
                Duration::from_secs(20),
                "the hits reach the merger",
                || async { count_of(&get(&c, &url).await.1["count"]) == Some(want) },
            )
            .await;
        }
    };
    assert_eq!(hit(&c, &edge.url, "/quiet/counter", "eu", 1).await.0, 200);
    at_merger(1).await;
    // The other region's object hears 1, and nobody reads it there for a while.
    assert_eq!(read_in(&c, &edge.url, "quiet", "us").await, Some(1));
    let heard = Instant::now();
    for _ in 0..2 {
        assert_eq!(hit(&c, &edge.url, "/quiet/counter", "eu", 1).await.0, 200);
    }
    at_merger(3).await;
    // Past the bound (1.5 s) since the object heard 1.
    tokio::time::sleep(Duration::from_millis(2500).saturating_sub(heard.elapsed())).await;
    assert_eq!(read_in(&c, &edge.url, "quiet", "us").await, Some(3));
    edge.stop().await;
    merger.terminate().await;
}

/// Every public answer carries the CORS headers a web page needs, made with the answer (issue
/// 29: copying each response to add them was a fifth of a hit's JS crossings): hits, reads,
/// batch reads, preflights, errors, presence and unique answers; the methods and request
/// headers a page may use in the preflight's answer, the one browsers read them from.
#[tokio::test]
async fn every_public_answer_carries_the_cors_headers() {
    let _serial = serial().await;
    let (db, state) = (temp_dir(), temp_dir());
    let merger = MergerProcess::start(db.path(), &[]).await;
    let edge = Edge::start(&EdgeOptions::new(&merger.url, state.path())).await;
    let c = http_client();
    let e = &edge.url;
    let requests = [
        (
            reqwest::Method::PUT,
            format!("{e}/cors/counter"),
            Some(r#"{"delta":1}"#),
            200,
        ),
        (reqwest::Method::GET, format!("{e}/cors/counter"), None, 200),
        (
            reqwest::Method::GET,
            format!("{e}/counter?ids=cors,other"),
            None,
            200,
        ),
        (
            reqwest::Method::OPTIONS,
            format!("{e}/cors/counter"),
            None,
            204,
        ),
        (
            reqwest::Method::GET,
            format!("{e}/no/such/route"),
            None,
            404,
        ),
        (
            reqwest::Method::PUT,
            format!("{e}/cors/counter"),
            Some("{"),
            400,
        ),
        (
            reqwest::Method::GET,
            format!("{e}/cors/presence"),
            None,
            200,
        ),
        (reqwest::Method::GET, format!("{e}/cors/unique"), None, 200),
    ];
    for (method, url, body, status) in requests {
        let mut request = c
            .request(method.clone(), &url)
            .header("X-Tally-Region", "eu")
            .timeout(Duration::from_secs(20));
        if let Some(body) = body {
            request = request
                .header("Content-Type", "application/json")
                .body(body.to_owned());
        }
        let response = request.send().await.expect("the edge answers");
        assert_eq!(response.status().as_u16(), status, "{method} {url}");
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        assert_eq!(
            header("Access-Control-Allow-Origin").as_deref(),
            Some("*"),
            "{method} {url}"
        );
        let exposed = header("Access-Control-Expose-Headers").unwrap_or_default();
        assert!(
            exposed.contains("Tally-Session"),
            "{method} {url}: {exposed}"
        );
        // What a page may send is said where browsers read it: in the preflight's answer.
        if method == reqwest::Method::OPTIONS {
            let methods = header("Access-Control-Allow-Methods").unwrap_or_default();
            let allowed = header("Access-Control-Allow-Headers").unwrap_or_default();
            assert!(
                methods.contains("PUT") && methods.contains("DELETE"),
                "{methods}"
            );
            assert!(allowed.contains("Tally-Session") && allowed.contains("Authorization"));
        }
    }
    edge.stop().await;
    merger.terminate().await;
}

/// One request with an `Origin` (or none): status, `Access-Control-Allow-Origin`, `Vary`, and
/// the error code of a refusal.
async fn from_origin(
    c: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    origin: Option<&str>,
) -> (u16, Option<String>, Option<String>, String) {
    let mut request = c
        .request(method, url)
        .header("X-Tally-Region", "eu")
        .timeout(Duration::from_secs(20));
    if let Some(origin) = origin {
        request = request.header("Origin", origin);
    }
    let response = request.send().await.expect("the edge answers");
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (allow, vary) = (header("Access-Control-Allow-Origin"), header("Vary"));
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let code = body["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    (status, allow, vary, code)
}

/// Issue 28: `ALLOWED_ORIGINS` as a list. A page of another origin is refused (403
/// `origin_not_allowed`, no CORS header, nothing counted), its preflight too; a listed origin
/// is answered with its own origin and `Vary: Origin`; a server (no `Origin`) is served
/// without `Access-Control-Allow-Origin`. The merger ends holding exactly the hits let in.
#[tokio::test]
async fn allowed_origins_refuse_other_pages_and_name_the_allowed_one() {
    let _serial = serial().await;
    let (db, state) = (temp_dir(), temp_dir());
    let merger = MergerProcess::start(db.path(), &[]).await;
    let mut options = EdgeOptions::new(&merger.url, state.path());
    let listed = "https://likes.example";
    options.vars = vec![format!("ALLOWED_ORIGINS:{listed},http://localhost:8080")];
    let edge = Edge::start(&options).await;
    let c = http_client();
    let url = format!("{}/origins/counter", edge.url);
    use reqwest::Method;
    for method in [Method::PUT, Method::GET, Method::OPTIONS] {
        let (status, allow, _, code) =
            from_origin(&c, method.clone(), &url, Some("https://evil.example")).await;
        assert_eq!(
            (status, code.as_str()),
            (403, "origin_not_allowed"),
            "{method}"
        );
        assert_eq!(
            allow, None,
            "{method}: a refused origin gets no CORS header"
        );
    }
    let presence = format!("{}/origins/presence", edge.url);
    let (status, ..) = from_origin(&c, Method::GET, &presence, Some("https://evil.example")).await;
    assert_eq!(status, 403, "every route");
    for method in [Method::PUT, Method::GET, Method::OPTIONS] {
        let (status, allow, vary, _) = from_origin(&c, method.clone(), &url, Some(listed)).await;
        assert!(status == 200 || status == 204, "{method}: {status}");
        assert_eq!(allow.as_deref(), Some(listed), "{method}");
        assert!(vary.unwrap_or_default().contains("Origin"), "{method}");
    }
    let (status, allow, ..) = from_origin(&c, Method::PUT, &url, None).await;
    assert_eq!(
        (status, allow),
        (200, None),
        "a server: served, no CORS header"
    );
    // Two hits let in (the listed page's and the server's); the refused one counted nothing.
    wait_until(Duration::from_secs(20), "the merger holds 2", || async {
        let (_, view) = get(&c, &format!("{}/v1/counters/origins", merger.url)).await;
        count_of(&view["count"]) == Some(2)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(options.sync_interval_ms * 3)).await;
    let (_, view) = get(&c, &format!("{}/v1/counters/origins", merger.url)).await;
    assert_eq!(count_of(&view["count"]), Some(2), "{view}");
    edge.stop().await;
    merger.terminate().await;
}

/// Issue 28: the per-client hit budget (`HITS`, bound in each environment of wrangler.toml,
/// here 8 per 10 s). Public hits from one address are refused with 429 `too_many_hits` and
/// `Retry-After` once it is spent (within two windows, whatever the clock), nothing counted
/// for them, while the write key's hits still count; the merger holds exactly the hits let in.
#[tokio::test]
async fn a_client_past_its_hit_budget_is_refused_and_nothing_is_counted() {
    let _serial = serial().await;
    let (db, state) = (temp_dir(), temp_dir());
    let merger = MergerProcess::start(db.path(), &[]).await;
    let new_ids = "simple = { limit = 200, period = 60 }\n";
    let budget = "[[ratelimits]]\nname = \"HITS\"\nnamespace_id = \"1002\"\n\
        simple = { limit = 8, period = 10 }\n";
    let config = worker_config_with(
        "wrangler-hit-budget.toml",
        new_ids,
        &format!("{new_ids}\n{budget}"),
        "NEW_IDS rate limit",
    );
    let mut options = EdgeOptions::new(&merger.url, state.path());
    options.config = Some(config);
    let edge = Edge::start(&options).await;
    let c = http_client();
    let url = format!("{}/budget/counter", edge.url);
    let (mut counted, mut refused) = (0_i128, None);
    // Two windows hold at most 16: the 17th public hit at the latest is refused.
    for _ in 0..17 {
        let response = c
            .put(&url)
            .header("X-Tally-Region", "eu")
            .timeout(Duration::from_secs(20))
            .send()
            .await
            .expect("the edge answers");
        let status = response.status().as_u16();
        let retry_after = response.headers().get("Retry-After").cloned();
        let body: Value = response.json().await.expect("JSON");
        if status == 200 {
            counted += 1;
            continue;
        }
        assert_eq!(status, 429, "{body}");
        assert_eq!(body["error"]["code"], "too_many_hits", "{body}");
        assert!(retry_after.is_some(), "a refusal says when to retry");
        refused = Some(body);
        break;
    }
    assert!(refused.is_some(), "17 public hits in a row: one is refused");
    // The write key is not limited.
    for _ in 0..3 {
        let (status, body) = hit(&c, &edge.url, "/budget/counter", "eu", 1).await;
        assert_eq!(status, 200, "{body}");
        counted += 1;
    }
    wait_until(
        Duration::from_secs(20),
        "the merger holds the hits let in",
        || async {
            let (_, view) = get(&c, &format!("{}/v1/counters/budget", merger.url)).await;
            count_of(&view["count"]) == Some(counted)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(options.sync_interval_ms * 3)).await;
    let (_, view) = get(&c, &format!("{}/v1/counters/budget", merger.url)).await;
    assert_eq!(count_of(&view["count"]), Some(counted), "{view}");
    edge.stop().await;
    merger.terminate().await;
}

/// The age of region `region`'s oldest unsynced hit the merger exports, if it has one.
async fn unsynced_age(c: &reqwest::Client, merger: &str, region: &str) -> Option<f64> {
    let text = c
        .get(format!("{merger}/metrics"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let series = format!("tally_edge_unsynced_age_seconds{{region=\"{region}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&series)?.parse().ok())
}

/// Makes the merger's SQLite store in `db_dir` refuse (`on`) or take again a counter named
/// `poison`, as a failing store would refuse a commit.
async fn refuse_poison(db_dir: &std::path::Path, on: bool) {
    use sqlx::Connection;
    let url = format!("sqlite://{}", db_dir.join("tally.db").display());
    let mut db = sqlx::SqliteConnection::connect(&url)
        .await
        .expect("the merger's database opens");
    let sql = if on {
        "CREATE TRIGGER refuse_poison BEFORE INSERT ON counters WHEN NEW.name = 'poison' \
         BEGIN SELECT RAISE(ABORT, 'poison refused by the test'); END"
    } else {
        "DROP TRIGGER refuse_poison"
    };
    sqlx::query(sql)
        .execute(&mut db)
        .await
        .expect("the trigger is made");
}

/// Issue 28: each sync tells the merger how old its object's oldest unsynced hit is
/// (`Tally-Unsynced-Age`); the merger exports, per region, the largest such age among the
/// syncs it could not commit (0 once committed). Healthy, eu shows 0; while the store refuses
/// a counter, the edge keeps that counter's hits and retries, each retry older, and eu's age
/// grows (a stuck region, not a quiet one); once the store takes it, eu is back to 0 and the
/// merger holds every hit.
#[tokio::test]
async fn the_merger_sees_how_old_the_hits_it_could_not_take_are() {
    let _serial = serial().await;
    let (db, state) = (temp_dir(), temp_dir());
    let merger = MergerProcess::start(db.path(), &[]).await;
    let options = EdgeOptions::one_object(&merger.url, state.path());
    let edge = Edge::start(&options).await;
    let c = http_client();
    let (status, body) = hit(&c, &edge.url, "/healthy/counter", "eu", 1).await;
    assert_eq!(status, 200, "{body}");
    wait_until(Duration::from_secs(20), "eu reports 0: synced", || async {
        unsynced_age(&c, &merger.url, "eu").await == Some(0.0)
    })
    .await;
    refuse_poison(db.path(), true).await;
    let (status, body) = hit(&c, &edge.url, "/poison/counter", "eu", 1).await;
    assert_eq!(status, 200, "the edge counts it: {body}");
    let stuck = Instant::now();
    wait_until(
        Duration::from_secs(40),
        "eu's age grows past 3 s",
        || async {
            unsynced_age(&c, &merger.url, "eu")
                .await
                .is_some_and(|age| age > 3.0)
        },
    )
    .await;
    record_timing(
        "the merger sees an edge's refused hits age",
        stuck.elapsed(),
        Duration::from_secs(40),
    );
    refuse_poison(db.path(), false).await;
    wait_until(
        Duration::from_secs(30),
        "eu is back to 0, poison counted",
        || async {
            let (_, view) = get(&c, &format!("{}/v1/counters/poison", merger.url)).await;
            unsynced_age(&c, &merger.url, "eu").await == Some(0.0)
                && count_of(&view["count"]) == Some(1)
        },
    )
    .await;
    edge.stop().await;
    merger.terminate().await;
}

/// An id percent-encoded in the path, as `encodeURIComponent` writes it (`post%3Alikes`), names
/// the same counter as the id itself, for hits, reads and viewers: the edge decodes it as the
/// merger's paths are decoded.
#[tokio::test]
async fn a_percent_encoded_id_names_the_same_counter() {
    let _serial = serial().await;
    let (db, state) = (temp_dir(), temp_dir());
    let merger = MergerProcess::start(db.path(), &[]).await;
    let edge = Edge::start(&EdgeOptions::new(&merger.url, state.path())).await;
    let c = http_client();
    for path in [
        "/post%3Alikes/counter",
        "/post:likes/counter",
        "/post%3alikes/counter",
    ] {
        let (status, body) = hit(&c, &edge.url, path, "eu", 1).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    wait_until(
        Duration::from_secs(20),
        "post:likes is 3 at the merger",
        || async {
            let (_, view) = get(&c, &format!("{}/v1/counters/post:likes", merger.url)).await;
            count_of(&view["count"]) == Some(3)
        },
    )
    .await;
    let (status, body) = get(&c, &format!("{}/post%3Alikes/counter", edge.url)).await;
    assert_eq!((status, count_of(&body["count"])), (200, Some(3)), "{body}");
    let (status, body) = get(&c, &format!("{}/post%3Aviewers/presence", edge.url)).await;
    assert_eq!(status, 200, "viewers of an encoded id: {body}");
    edge.stop().await;
    merger.terminate().await;
}

#[tokio::test]
async fn steady_traffic_syncs_once_per_interval() {
    let _serial = serial().await;
    let (db, state) = (temp_dir(), temp_dir());
    let merger = MergerProcess::start(db.path(), &[]).await;
    let mut options = EdgeOptions::one_object(&merger.url, state.path());
    options.sync_interval_ms = 1000;
    let edge = Edge::start(&options).await;
    let c = http_client();
    let syncs = r#"tally_syncs_total{outcome="ok"}"#;
    assert_eq!(hit(&c, &edge.url, "/steady/counter", "eu", 1).await.0, 200);
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 6 s of hits without a pause on one object: at most one sync per second goes out, and
    // hits that never pause do not hold syncs back. The window is measured around the reads of
    // the merger's count of syncs, so a loaded machine that stretches it gets its due: at most
    // one sync per whole second of it, plus the one in flight at each end.
    let start = Instant::now();
    let before = metric(&c, &merger.url, syncs).await;
    let mut hits = 1;
    while start.elapsed() < Duration::from_secs(6) {
        assert_eq!(hit(&c, &edge.url, "/steady/counter", "eu", 1).await.0, 200);
        hits += 1;
    }
    let during = metric(&c, &merger.url, syncs).await - before;
    let window = start.elapsed().as_secs_f64();
    eprintln!("{hits} hits in {window:.1} s, {during} syncs");
    assert!(
        during <= window.floor() + 2.0,
        "{during} syncs in {window:.1} s at a 1 s interval"
    );
    assert!(during >= 1.0, "no sync in {window:.1} s of steady hits");
    wait_until(Duration::from_secs(20), "every hit arrives", || async {
        let (_, view) = get(&c, &format!("{}/v1/counters/steady", merger.url)).await;
        count_of(&view["count"]) == Some(hits)
    })
    .await;
    edge.stop().await;
    merger.terminate().await;
}

#[tokio::test]
async fn anti_entropy_heals_a_merger_restored_from_an_older_backup() {
    let _serial = serial().await;
    let (db, state, backup) = (temp_dir(), temp_dir(), temp_dir());
    let port = free_port();
    let merger = MergerProcess::start_on(db.path(), port).await;
    let mut options = EdgeOptions::new(&merger.url, state.path());
    options.anti_entropy_ms = 3000;
    let edge = Edge::start(&options).await;
    let c = http_client();
    let merger_url = merger.url.clone();
    let count_at_merger = |id: &'static str| {
        let (c, url) = (c.clone(), format!("{merger_url}/v1/counters/{id}"));
        async move { count_of(&get(&c, &url).await.1["count"]) }
    };

    for _ in 0..10 {
        let (status, body) = hit(&c, &edge.url, "/restored/counter", "eu", 1).await;
        assert_eq!(status, 200, "{body}");
    }
    wait_until(Duration::from_secs(20), "first hits arrive", || async {
        count_at_merger("restored").await == Some(10)
    })
    .await;
    // The backup: the database as it is now, copied while the merger is stopped.
    merger.terminate().await;
    for entry in std::fs::read_dir(db.path()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), backup.path().join(entry.file_name())).unwrap();
    }
    let merger = MergerProcess::start_on(db.path(), port).await;
    for _ in 0..15 {
        assert_eq!(
            hit(&c, &edge.url, "/restored/counter", "eu", 1).await.0,
            200
        );
        assert_eq!(hit(&c, &edge.url, "/later/counter", "us", 2).await.0, 200);
    }
    wait_until(Duration::from_secs(20), "later hits arrive", || async {
        count_at_merger("restored").await == Some(25) && count_at_merger("later").await == Some(30)
    })
    .await;

    // Disaster: the merger comes back from the older backup. No new hit arrives; the edge's
    // sweep re-sends every counter's totals and the merger heals.
    merger.kill_9().await;
    for entry in std::fs::read_dir(db.path()).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }
    for entry in std::fs::read_dir(backup.path()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), db.path().join(entry.file_name())).unwrap();
    }
    let merger = MergerProcess::start_on(db.path(), port).await;
    assert_eq!(
        count_at_merger("restored").await,
        Some(10),
        "the backup is older"
    );
    wait_until(
        Duration::from_secs(60),
        "the sweep heals the restored merger",
        || async {
            count_at_merger("restored").await == Some(25)
                && count_at_merger("later").await == Some(30)
        },
    )
    .await;
    edge.stop().await;
    merger.terminate().await;
}

#[tokio::test]
async fn public_writes_are_limited_and_a_flood_of_new_ids_is_refused() {
    let _serial = serial().await;
    let (db, state) = (temp_dir(), temp_dir());
    let merger = MergerProcess::start(db.path(), &[]).await;
    let edge = Edge::start(&EdgeOptions::new(&merger.url, state.path())).await;
    let url = |path: &str| format!("{}{path}", edge.url);
    let key = format!("Bearer {WRITE_KEY}");
    let code = |body: &Value| {
        body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };

    // Public: +1 on a counter; nothing more, and no gauge writes.
    assert_eq!(public_put(&url("/policy/counter"), None, None).await.0, 200);
    let (status, body) = public_put(&url("/policy/counter"), Some(r#"{"delta":2}"#), None).await;
    assert_eq!((status, code(&body)), (401, "write_key_required".into()));
    let (status, body) = public_put(&url("/policy/gauge"), Some(r#"{"delta":-1}"#), None).await;
    assert_eq!((status, code(&body)), (401, "write_key_required".into()));
    let (status, body) = public_put(
        &url("/policy/counter"),
        None,
        Some("Bearer not-the-key-at-all"),
    )
    .await;
    assert_eq!((status, code(&body)), (401, "invalid_write_key".into()));
    // The application's backend, with the key: any delta, gauges too.
    let (status, _) = public_put(
        &url("/policy/counter"),
        Some(r#"{"delta":500}"#),
        Some(&key),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = public_put(&url("/policy/gauge"), Some(r#"{"delta":-1}"#), Some(&key)).await;
    assert_eq!(status, 200);

    // A flood of random ids from one client: refused with 429 once its budget is spent,
    // while a known id keeps counting. (Known at both its objects: the backend's hits above
    // and these land on each with near certainty, so no object sees it as new.)
    for _ in 0..20 {
        assert_eq!(
            public_put(&url("/policy/counter"), None, Some(&key))
                .await
                .0,
            200
        );
    }
    let mut refused = 0;
    let mut known_acked = 0;
    let flood_started = Instant::now();
    let minute = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs()
            / 60
    };
    let first_window = minute();
    for i in 0..450 {
        let (status, body) = public_put(&url(&format!("/flood-{i}/counter")), None, None).await;
        match status {
            200 => {}
            429 => {
                assert_eq!(code(&body), "too_many_new_ids");
                refused += 1;
            }
            other => panic!("flood hit answered {other}: {body}"),
        }
        if i % 10 == 0 && public_put(&url("/policy/counter"), None, None).await.0 == 200 {
            known_acked += 1;
        }
    }
    let admitted = 450 - refused;
    // The limiter's windows are aligned to the clock's minutes (as Cloudflare's are), so a
    // short flood that crosses a minute boundary has two budgets.
    let windows = minute() - first_window + 1;
    eprintln!(
        "flood: {refused} of 450 new ids refused in {:?}; the known id counted {known_acked} of 45",
        flood_started.elapsed()
    );
    // The budget (wrangler.toml: 200 per minute per client) is spent at the one object a
    // new id reaches; every clock minute the flood touches brings a fresh budget.
    assert!(
        refused > 0 && admitted <= 200 * windows + 1,
        "{admitted} new ids admitted in {windows} budget windows"
    );
    assert_eq!(known_acked, 45, "a known id was refused during the flood");

    // Nothing refused was counted: the merger holds exactly the accepted writes.
    let c = http_client();
    let want = 1 + 500 + 20 + known_acked;
    wait_until(
        Duration::from_secs(20),
        "accepted writes arrive",
        || async {
            let (_, view) = get(&c, &format!("{}/v1/counters/policy", merger.url)).await;
            let (_, gauge) = get(&c, &format!("{}/v1/gauges/policy", merger.url)).await;
            count_of(&view["count"]) == Some(want) && count_of(&gauge["count"]) == Some(-1)
        },
    )
    .await;
    edge.stop().await;
    merger.terminate().await;
}

#[tokio::test]
async fn an_object_with_many_counters_killed_after_acknowledging_them_loses_none() {
    let _serial = serial().await;
    let (db, state) = (temp_dir(), temp_dir());
    let merger = MergerProcess::start(db.path(), &[]).await;
    let mut options = EdgeOptions::one_object(&merger.url, state.path());
    // One object holds every counter; syncs are slow, so most hits are unsynced at the kill.
    options.sync_interval_ms = 5000;
    let edge = Edge::start(&options).await;
    let c = http_client();
    let ids = 1200;
    let tasks: Vec<_> = (0..16)
        .map(|worker| {
            let (c, url) = (c.clone(), edge.url.clone());
            tokio::spawn(async move {
                for i in (worker..ids).step_by(16) {
                    let (status, body) =
                        hit(&c, &url, &format!("/many-{i}/counter"), "eu", 1).await;
                    assert_eq!(status, 200, "{body}");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("a client does not panic");
    }
    edge.kill_9().await;

    // The object starts without reading its counters: its first answer comes at once, and
    // every acknowledged hit reaches the merger.
    let edge = Edge::start(&options).await;
    let (status, body) = get(&c, &format!("{}/many-7/counter", edge.url)).await;
    assert_eq!(status, 200, "{body}");
    wait_until(
        Duration::from_secs(60),
        "every counter reaches the merger",
        || async {
            let mut counted = 0;
            let mut cursor = String::new();
            loop {
                let (_, page) = get(
                    &c,
                    &format!("{}/v1/counters?prefix=many-&limit=1000{cursor}", merger.url),
                )
                .await;
                let Some(items) = page["items"].as_array() else {
                    return false;
                };
                counted += items
                    .iter()
                    .filter(|i| count_of(&i["count"]) == Some(1))
                    .count();
                match page["next_cursor"].as_str() {
                    Some(next) => cursor = format!("&cursor={next}"),
                    None => return counted == ids,
                }
            }
        },
    )
    .await;
    edge.stop().await;
    merger.terminate().await;
}

/// The answer to one public hit: status, count, and its receipt header.
async fn hit_with_receipt(
    c: &reqwest::Client,
    url: &str,
) -> Result<(u16, Option<i128>, Option<String>), String> {
    let response = c
        .put(url)
        .header("X-Tally-Region", "eu")
        .header("Authorization", format!("Bearer {WRITE_KEY}"))
        .header("Content-Type", "application/json")
        .body(r#"{"delta":1}"#)
        .timeout(Duration::from_secs(40))
        .send()
        .await
        .map_err(|e| error_chain(&e))?;
    let status = response.status().as_u16();
    let receipt = response
        .headers()
        .get("Tally-Receipt")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body: Value = response.json().await.map_err(|e| error_chain(&e))?;
    Ok((status, count_of(&body["count"]), receipt))
}

/// `n` public hits at once on counter `id` (`url`), each answered 200: the counts answered and
/// the receipts, decoded (each signed by the edge, for one unit).
async fn hits_at_once(
    c: &reqwest::Client,
    url: &str,
    id: &str,
    n: usize,
) -> (Vec<i128>, Vec<tally_crdt::Receipt>) {
    let answers = futures_util::future::join_all((0..n).map(|_| hit_with_receipt(c, url))).await;
    let (mut counts, mut receipts) = (Vec::new(), Vec::new());
    for answer in &answers {
        let (status, count, receipt) = answer.as_ref().expect("the edge answers");
        assert_eq!(*status, 200, "{answers:?}");
        counts.push(count.expect("a count"));
        let receipt = tally_crdt::Receipt::decode(
            receipt.as_deref().expect("a receipt"),
            TOKEN.as_bytes(),
            id,
        )
        .expect("a receipt the edge signed");
        assert_eq!(receipt.delta, 1);
        receipts.push(receipt);
    }
    (counts, receipts)
}

/// Waits until the merger counts `n` on counter `id`.
async fn merger_counts(c: &reqwest::Client, merger: &str, id: &str, n: i128) {
    let what = format!("the merger counts {n} on {id}");
    wait_until(Duration::from_secs(20), &what, || async {
        let (_, view) = get(c, &format!("{merger}/v1/counters/{id}")).await;
        count_of(&view["count"]) == Some(n)
    })
    .await;
}

/// Issue 29: hits bound for one object while a request to it is in flight go together as one
/// request (`edge/src/combine.rs`), yet each client is answered only after its own hit is
/// stored, with its own count and its own receipt. 48 hits at once on one counter of one
/// object: the counts answered are 1 to 48, each once; the receipts name 48 different units of
/// the one slot; the merger ends at 48, nothing lost or counted twice.
#[tokio::test]
async fn hits_sent_together_are_each_answered_with_their_own_count_and_receipt() {
    let _serial = serial().await;
    let (db, state) = (temp_dir(), temp_dir());
    let merger = MergerProcess::start(db.path(), &[]).await;
    let options = EdgeOptions::one_object(&merger.url, state.path());
    let edge = Edge::start(&options).await;
    let c = http_client();
    let url = format!("{}/together/counter", edge.url);
    let (mut counts, receipts) = hits_at_once(&c, &url, "together", 48).await;
    let replicas: std::collections::BTreeSet<_> = receipts.iter().map(|r| r.replica).collect();
    let units: std::collections::BTreeSet<u64> = receipts.iter().map(|r| r.end).collect();
    counts.sort_unstable();
    assert_eq!(
        counts,
        (1..=48).collect::<Vec<i128>>(),
        "each its own count"
    );
    // They went together: fewer object requests than hits (the combiner's own counts).
    let (status, stats) = get(&c, &format!("{}/_tally/combine", edge.url)).await;
    assert_eq!(status, 200, "{stats}");
    assert_eq!(stats["hits"], 48, "{stats}");
    eprintln!("the combiner, 48 hits at once: {stats}");
    let calls = stats["calls"].as_u64().expect("calls");
    assert!(
        calls < 48 && stats["combined"].as_u64() > Some(0),
        "{stats}"
    );
    assert_eq!(replicas.len(), 1, "one object, one slot");
    assert_eq!(
        units,
        (1..=48).collect(),
        "each hit its own unit of the slot"
    );
    merger_counts(&c, &merger.url, "together", 48).await;
    edge.stop().await;
    merger.terminate().await;
}

/// Issue 29: combined hits when their object dies mid-request. 32 clients hit two counters of
/// one object as fast as they are answered (so hits go together); once 400 are acknowledged
/// the edge is killed (`kill -9`, combined requests in flight), then started again. Every
/// request was answered once or failed on the connection; the merger ends holding every
/// acknowledged hit, each once (the receipts name distinct units), and at most the hits whose
/// fate the clients could not know besides: lost 0, counted twice 0.
#[tokio::test]
async fn combined_hits_of_an_edge_killed_mid_request_are_each_counted_once() {
    let _serial = serial().await;
    let (db, state) = (temp_dir(), temp_dir());
    let merger = MergerProcess::start(db.path(), &[]).await;
    let options = EdgeOptions::one_object(&merger.url, state.path());
    let edge = Edge::start(&options).await;
    let c = http_client();
    let acknowledged = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let clients: Vec<_> = (0..32)
        .map(|client| {
            let (c, acknowledged) = (c.clone(), acknowledged.clone());
            let url = format!("{}/fate-{}/counter", edge.url, client % 2);
            tokio::spawn(async move {
                // Receipts of acknowledged hits, and the hits of unknown fate.
                let (mut receipts, mut unknown) = (Vec::new(), 0);
                for _ in 0..200 {
                    match hit_with_receipt(&c, &url).await {
                        Ok((200, _, Some(receipt))) => {
                            receipts.push((client % 2, receipt));
                            acknowledged.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        // Killed mid-request: an error answer or none; either way the
                        // client cannot know whether its hit was stored.
                        Ok((status, _, _)) => {
                            assert!(status >= 500, "only the kill fails a hit: {status}");
                            unknown += 1;
                            break;
                        }
                        Err(_) => {
                            unknown += 1;
                            break;
                        }
                    }
                }
                (receipts, unknown)
            })
        })
        .collect();
    let started = Instant::now();
    while acknowledged.load(std::sync::atomic::Ordering::Relaxed) < 400 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "400 hits acknowledged within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    edge.kill_9().await;
    let (mut acked, mut unknown) = ([0_i128; 2], [0_i128; 2]);
    let mut units = std::collections::BTreeSet::new();
    for (client, task) in clients.into_iter().enumerate() {
        let (receipts, lost) = task.await.expect("a client does not panic");
        let counter = client % 2;
        for (_, receipt) in receipts {
            let id = format!("fate-{counter}");
            let receipt = tally_crdt::Receipt::decode(&receipt, TOKEN.as_bytes(), &id)
                .expect("a receipt the edge signed");
            assert!(
                units.insert((counter, receipt.replica, receipt.end)),
                "one unit, one hit"
            );
            acked[counter] += 1;
        }
        unknown[counter] += lost;
    }
    let edge = Edge::start(&options).await;
    let counts = || async {
        let mut counts = [0_i128; 2];
        for (counter, count) in counts.iter_mut().enumerate() {
            let url = format!("{}/v1/counters/fate-{counter}", merger.url);
            *count = count_of(&get(&c, &url).await.1["count"]).unwrap_or(0);
        }
        counts
    };
    wait_until(
        Duration::from_secs(60),
        "every acknowledged hit reaches the merger",
        || async {
            counts()
                .await
                .iter()
                .zip(&acked)
                .all(|(count, acked)| count >= acked)
        },
    )
    .await;
    // Then whatever else the object had stored: settled once two syncs change nothing.
    let mut last = counts().await;
    let interval = Duration::from_millis(options.sync_interval_ms);
    let mut settled = false;
    for _ in 0..50 {
        tokio::time::sleep(interval * 2).await;
        let now = counts().await;
        settled = now == last;
        last = now;
        if settled {
            break;
        }
    }
    assert!(settled, "the counts settle: {last:?}");
    eprintln!("acknowledged {acked:?}, unknown {unknown:?}, the merger holds {last:?}");
    for counter in 0..2 {
        assert!(
            (acked[counter]..=acked[counter] + unknown[counter]).contains(&last[counter]),
            "fate-{counter}: {} acknowledged, {} unknown, the merger holds {}",
            acked[counter],
            unknown[counter],
            last[counter]
        );
    }
    edge.stop().await;
    merger.terminate().await;
}

/// Issue 29: reads that miss the isolate cache for the same counter while one of them is out
/// share its object request (`edge/src/combine.rs`), and each is answered. 16 reads at once of
/// a counter the merger holds at 5 and the isolate has not cached: each answers 5, and the
/// isolate asked its objects fewer than 16 times (the combiner's own counts).
#[tokio::test]
async fn reads_that_miss_the_cache_at_once_share_one_object_request() {
    let _serial = serial().await;
    let (db, state) = (temp_dir(), temp_dir());
    let merger = MergerProcess::start(db.path(), &[]).await;
    let options = EdgeOptions::new(&merger.url, state.path());
    let seeder = Edge::start(&options).await;
    let c = http_client();
    for _ in 0..5 {
        let (status, body) = hit(&c, &seeder.url, "/shared/counter", "eu", 1).await;
        assert_eq!(status, 200, "{body}");
    }
    wait_until(Duration::from_secs(20), "the merger holds 5", || async {
        let (_, view) = get(&c, &format!("{}/v1/counters/shared", merger.url)).await;
        count_of(&view["count"]) == Some(5)
    })
    .await;
    seeder.stop().await;
    // A new edge, another region: nothing cached in its isolate, no object knows the counter.
    let reader_state = temp_dir();
    let edge = Edge::start(&EdgeOptions::new(&merger.url, reader_state.path())).await;
    let url = format!("{}/shared/counter", edge.url);
    let reads = (0..16).map(|_| async {
        let response = c
            .get(&url)
            .header("X-Tally-Region", "us")
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .expect("the edge answers");
        let status = response.status().as_u16();
        let body: Value = response.json().await.expect("JSON");
        (status, count_of(&body["count"]))
    });
    let answers = futures_util::future::join_all(reads).await;
    assert!(
        answers.iter().all(|a| *a == (200, Some(5))),
        "each read answers 5: {answers:?}"
    );
    let (status, stats) = get(&c, &format!("{}/_tally/combine", edge.url)).await;
    assert_eq!(status, 200, "{stats}");
    eprintln!("16 reads at once: {stats}");
    assert_eq!(stats["reads"], 16, "{stats}");
    assert!(stats["read_calls"].as_u64() < Some(16), "{stats}");
    edge.stop().await;
    merger.terminate().await;
}

/// Issue 29: the Worker ↔ object messages carry a version (`edge/src/internal/v1.rs`), and
/// objects of this release still serve the JSON form a Worker of the release before sends
/// during a gradual deploy. On one object's storage: 24 hits at once from a Worker sending
/// JSON (`OBJECT_MESSAGES=json`, what the release before sends), a read and a batch read, then
/// the same from one sending the compact form: the counts answered are 1 to 48, each once, the
/// receipts name 48 units, and the merger ends at 48.
#[tokio::test]
async fn objects_serve_the_json_form_of_the_release_before_and_a_switch_loses_nothing() {
    let _serial = serial().await;
    let (db, state) = (temp_dir(), temp_dir());
    let merger = MergerProcess::start(db.path(), &[]).await;
    let c = http_client();
    let (mut counts, mut units) = (Vec::new(), std::collections::BTreeSet::new());
    for (round, form) in ["json", "v1"].into_iter().enumerate() {
        let mut options = EdgeOptions::one_object(&merger.url, state.path());
        options.vars.push(format!("OBJECT_MESSAGES:{form}"));
        let edge = Edge::start(&options).await;
        let url = format!("{}/forms/counter", edge.url);
        let (answered, receipts) = hits_at_once(&c, &url, "forms", 24).await;
        counts.extend(answered);
        for receipt in receipts {
            assert!(
                units.insert((receipt.replica, receipt.end)),
                "one unit, one hit"
            );
        }
        let so_far = 24 * (round as i128 + 1);
        let read = read_in(&c, &edge.url, "forms", "eu").await;
        assert!(
            read >= Some(so_far),
            "{form}: a read answered {read:?} after {so_far} hits"
        );
        // The objects sync what they counted (before this edge stops), and a batch read of
        // the counter, asked of its object, answers all of it.
        merger_counts(&c, &merger.url, "forms", so_far).await;
        let page: Value = c
            .get(format!("{}/counter?ids=other,forms", edge.url))
            .header("X-Tally-Region", "eu")
            .timeout(Duration::from_secs(20))
            .send()
            .await
            .expect("the edge answers")
            .json()
            .await
            .expect("JSON");
        assert_eq!(
            count_of(&page["items"][1]["count"]),
            Some(so_far),
            "{form}: {page}"
        );
        edge.stop().await;
    }
    counts.sort_unstable();
    assert_eq!(
        counts,
        (1..=48).collect::<Vec<i128>>(),
        "each its own count"
    );
    assert_eq!(units.len(), 48);
    merger.terminate().await;
}

/// Issue 29: a combined call whose answer is lost on the way back from the object (the
/// Worker's test fault, `X-Tally-Test-Drop-Answer`, on one hit in eight). 16 clients hit one
/// counter of one object as fast as they are answered: every request is answered once, the
/// ones of a lost answer `500` (their outcome unknown to them); the queue goes on after each
/// loss; the object counted every hit it was sent, so the merger ends at exactly the hits sent
/// (lost 0, counted twice 0), every acknowledged one with its own unit.
#[tokio::test]
async fn a_combined_call_whose_answer_is_lost_leaves_nothing_lost_or_counted_twice() {
    let _serial = serial().await;
    let (db, state) = (temp_dir(), temp_dir());
    let merger = MergerProcess::start(db.path(), &[]).await;
    let options = EdgeOptions::one_object(&merger.url, state.path());
    let edge = Edge::start(&options).await;
    let c = http_client();
    let url = format!("{}/dropped/counter", edge.url);
    let clients: Vec<_> = (0..16)
        .map(|client| {
            let (c, url) = (c.clone(), url.clone());
            tokio::spawn(async move {
                let (mut receipts, mut unknown) = (Vec::new(), 0);
                for i in 0..40 {
                    let mut request = c
                        .put(&url)
                        .header("X-Tally-Region", "eu")
                        .header("Authorization", format!("Bearer {WRITE_KEY}"))
                        .header("Content-Type", "application/json")
                        .body(r#"{"delta":1}"#)
                        .timeout(Duration::from_secs(40));
                    if (client + i) % 8 == 0 {
                        request = request.header("X-Tally-Test-Drop-Answer", "1");
                    }
                    let response = request.send().await.expect("every request is answered");
                    match response.status().as_u16() {
                        200 => receipts.push(
                            response.headers()["Tally-Receipt"]
                                .to_str()
                                .expect("a receipt")
                                .to_owned(),
                        ),
                        500 => unknown += 1,
                        other => panic!("a hit answered {other}"),
                    }
                }
                (receipts, unknown)
            })
        })
        .collect();
    let (mut units, mut unknown) = (std::collections::BTreeSet::new(), 0);
    for task in clients {
        let (receipts, lost) = task.await.expect("a client does not panic");
        for receipt in receipts {
            let receipt = tally_crdt::Receipt::decode(&receipt, TOKEN.as_bytes(), "dropped")
                .expect("a receipt the edge signed");
            assert!(
                units.insert((receipt.replica, receipt.end)),
                "one unit, one hit"
            );
        }
        unknown += lost;
    }
    let (_, stats) = get(&c, &format!("{}/_tally/combine", edge.url)).await;
    eprintln!(
        "{} acknowledged, {unknown} answered 500 (answer lost); the combiner: {stats}",
        units.len()
    );
    assert_eq!(units.len() + unknown, 640, "every request answered once");
    assert!(
        unknown >= 80,
        "each flagged hit's call lost its answer: {unknown}"
    );
    assert!(
        !units.is_empty(),
        "hits of calls whose answer came are acknowledged"
    );
    merger_counts(&c, &merger.url, "dropped", 640).await;
    // And no more: two further sync intervals change nothing.
    tokio::time::sleep(Duration::from_millis(options.sync_interval_ms * 2)).await;
    let (_, view) = get(&c, &format!("{}/v1/counters/dropped", merger.url)).await;
    assert_eq!(count_of(&view["count"]), Some(640), "{view}");
    edge.stop().await;
    merger.terminate().await;
}
