//! The merger's dashboard (`GET /`) in a real browser: the merger binary with a read token, a
//! short snapshot interval and a milestone webhook (a loopback receiver that answers 200, so
//! the won milestone shows as announced), seeded through `POST /v1/sync`, and Debian's
//! headless Chromium driven by `tests/browser/dashboard.mjs` (playwright-core from the root
//! `package.json`).
//! This test seeds, computes what the page must show and hands it to the script; the script
//! drives the page, compares, and saves a screenshot to `<target>/dashboard.png`.
//!
//! The browser comes from `scripts/bootstrap.sh` (Debian's `chromium-headless-shell`).
//! Without it the test fails, saying what to do, unless `TALLY_NO_BROWSER=1` is set: then it
//! is skipped, as `TALLY_NO_POSTGRES=1` skips the Postgres tests.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tally_crdt::{HyperLogLog, Timestamp};
use tally_e2e::{
    MergerProcess, REQUEST_TIMEOUT, TOKEN, root, serial, target_dir, temp_dir, wait_until,
};

const READ_TOKEN: &str = "e2e-read-token-0123456789";
const ADMIN_TOKEN: &str = "e2e-admin-token-0123456789";
/// The viewers now the test reports for `home`, as one edge object.
const HOME_VIEWERS: u64 = 37;
/// The page's stale threshold in this test (`?stale=`), in seconds: the region synced once
/// at the start crosses it during the run, the ones the test keeps syncing never do (the
/// page polls every 3 s).
const STALE_AFTER_S: u64 = 5;
/// Where the browser binary may be; `TALLY_CHROMIUM` names another.
const CHROMIUM: [&str; 2] = [
    "/usr/bin/chromium-headless-shell",
    "/usr/lib/chromium/chromium-headless-shell",
];
const MISSING: &str = "headless Chromium is not installed (no /usr/bin/chromium-headless-shell): \
    run scripts/bootstrap.sh (as root it installs Debian's chromium-headless-shell package), \
    set TALLY_CHROMIUM to a Chromium binary, or set TALLY_NO_BROWSER=1 to skip the browser test";

/// False only when `TALLY_NO_BROWSER=1`.
fn browser_wanted() -> bool {
    std::env::var_os("TALLY_NO_BROWSER").is_none_or(|value| value != "1")
}

/// The browser binary for `what` (a browser test, named in the skip message); `None` when the
/// test is to be skipped. Panics when it is missing. The client's browser test uses it too.
pub(crate) fn chromium(what: &str) -> Option<PathBuf> {
    if !browser_wanted() {
        eprintln!("TALLY_NO_BROWSER=1: {what} is skipped");
        return None;
    }
    let named = std::env::var_os("TALLY_CHROMIUM").map(PathBuf::from);
    let found = named
        .into_iter()
        .chain(CHROMIUM.iter().map(PathBuf::from))
        .find(|path| path.is_file());
    let playwright = root().join("node_modules/playwright-core/package.json");
    assert!(
        playwright.is_file(),
        "no {}: run scripts/bootstrap.sh (npm ci installs the pinned playwright-core)",
        playwright.display()
    );
    Some(found.unwrap_or_else(|| panic!("{MISSING}")))
}

/// A webhook receiver on loopback that answers every request `200` (so the merger marks its
/// announcements acknowledged): its URL, and how many requests it took.
async fn webhook_receiver() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let url = format!(
        "http://{}/announce",
        listener.local_addr().expect("an address")
    );
    let taken = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = taken.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                // The head, then as many body bytes as it declares, within 10 s.
                let read = async {
                    let mut buf = Vec::new();
                    let mut chunk = [0_u8; 4096];
                    loop {
                        let n = socket.read(&mut chunk).await.ok()?;
                        if n == 0 {
                            return None;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let text = String::from_utf8_lossy(&buf).to_ascii_lowercase();
                        if let Some(end) = text.find("\r\n\r\n") {
                            let length = text[..end]
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse::<usize>().ok())
                                .unwrap_or(0);
                            if buf.len() >= end + 4 + length {
                                return Some(());
                            }
                        }
                    }
                };
                if tokio::time::timeout(Duration::from_secs(10), read).await == Ok(Some(())) {
                    count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let ok = "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
                    let _ = socket.write_all(ok.as_bytes()).await;
                }
            });
        }
    });
    (url, taken)
}

/// One counter of the seed: namespace, id, and its final count.
type Seeded = BTreeMap<(&'static str, &'static str), i128>;

/// The test's client of the merger: syncs with the sync token, reads with the read token.
struct Client {
    http: reqwest::Client,
    url: String,
}

/// Replica `n`'s id (1 to 15): its hex digit 32 times, so the page's short form tells them
/// apart.
fn replica(n: u64) -> String {
    assert!((1..16).contains(&n));
    format!("{n:x}").repeat(32)
}

fn now_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is past 1970");
    i64::try_from(since.as_millis()).expect("a time in range")
}

/// `visitors` distinct visitors' sketch.
fn sketch_of(visitors: std::ops::Range<u64>) -> HyperLogLog {
    let mut sketch = HyperLogLog::new();
    for visitor in visitors {
        sketch.insert(&visitor.to_le_bytes());
    }
    sketch
}

impl Client {
    /// Sends `body` to `path` with `token`; the answer must be a success.
    async fn post(&self, path: &str, token: &str, body: &Value) -> Value {
        let answer = self
            .http
            .post(format!("{}{path}", self.url))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .expect("the merger answers");
        let status = answer.status();
        let body: Value = answer.json().await.expect("a JSON answer");
        assert!(status.is_success(), "POST {path}: {status} {body}");
        body
    }

    /// Reports `viewers` of `id` as one edge object of eu, report number `seq`.
    async fn report_viewers(&self, id: &str, viewers: u64, seq: u64) {
        let body = json!({
            "version": 2, "reporter": replica(5), "region": "eu", "seq": seq,
            "at": Timestamp::from_unix_ms(now_ms()), "ttl_ms": 10_000,
            "counts": [{"id": id, "count": viewers}],
        });
        self.post("/v1/presence", TOKEN, &body).await;
    }

    /// Syncs `counters` (`(id, kind, p, n)`) as replica `replica` of `region`.
    async fn sync(&self, replica: u64, region: &str, counters: &[(&str, &str, u64, u64)]) {
        let counters: Vec<Value> = counters
            .iter()
            .map(|&(id, kind, p, n)| json!({"id": id, "kind": kind, "p": p, "n": n}))
            .collect();
        let body = json!({"version": 2, "replica": self::replica(replica), "region": region, "counters": counters});
        let answer = self
            .http
            .post(format!("{}/v1/sync", self.url))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .expect("the merger answers a sync");
        assert!(answer.status().is_success(), "sync: {}", answer.status());
    }

    /// Reads `path` with the read token, within `timeout`: its JSON.
    async fn read(&self, path: &str, timeout: Duration) -> Value {
        self.http
            .get(format!("{}{path}", self.url))
            .bearer_auth(READ_TOKEN)
            .timeout(timeout)
            .send()
            .await
            .unwrap_or_else(|e| panic!("the merger answers GET {path}: {e}"))
            .json()
            .await
            .unwrap_or_else(|e| panic!("GET {path} answers JSON: {e}"))
    }

    /// The number of history points of `/v1/{namespace}/{id}`.
    async fn points(&self, namespace: &str, id: &str) -> usize {
        let answer = self
            .read(&format!("/v1/{namespace}/{id}/history"), REQUEST_TIMEOUT)
            .await;
        answer["points"].as_array().map_or(0, Vec::len)
    }

    /// Waits until `/v1/counters/{id}` has `n` history points.
    async fn wait_for_points(&self, id: &str, n: usize) {
        wait_until(
            Duration::from_secs(5),
            &format!("{id} has {n} history points"),
            || async { self.points("counters", id).await >= n },
        )
        .await;
    }
}

/// `n` with thousands separators, as the page writes it.
fn thousands(n: i128) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// Ids of `namespace` containing `query`, largest count first (ties by id).
fn by_count(seeded: &Seeded, namespace: &str, query: &str) -> Vec<&'static str> {
    let mut ids: Vec<(&'static str, i128)> = seeded
        .iter()
        .filter(|((ns, id), _)| *ns == namespace && id.contains(query))
        .map(|((_, id), count)| (*id, *count))
        .collect();
    ids.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    ids.into_iter().map(|(id, _)| id).collect()
}

#[tokio::test]
async fn the_dashboard_shows_exact_counts_sorts_searches_charts_history_and_flags_stale_regions() {
    let Some(chromium) = chromium("the dashboard's browser test") else {
        return;
    };
    let _serial = serial().await;
    let started = Instant::now();
    let db = temp_dir();
    let (webhook, announcements) = webhook_receiver().await;
    let merger = MergerProcess::start(
        db.path(),
        &[
            "--read-token",
            READ_TOKEN,
            "--admin-token",
            ADMIN_TOKEN,
            "--snapshot-interval",
            "200ms",
            "--webhook-url",
            &webhook,
            "--webhook-secret",
            "e2e-webhook-secret-0123456789",
        ],
    )
    .await;
    let client = Client {
        http: tally_e2e::http_client(),
        url: merger.url.clone(),
    };

    // The seed. "ap" syncs once, first: it goes stale while the others keep syncing.
    // events:2025 and events:2026 are 2^53 and 2^53 + 1, one apart: as JavaScript numbers
    // they would be equal (and shown alike), so only exact arithmetic sorts and shows them.
    const TWO_53: u64 = 1 << 53;
    client.sync(3, "ap", &[("signup", "g", 9_874, 0)]).await;
    client
        .sync(
            1,
            "eu",
            &[
                ("home", "g", 6_500_000, 0),
                ("pricing", "g", 300_000, 0),
                ("docs:getting-started", "g", 73_410, 0),
                ("events:2026", "g", TWO_53 + 1, 0),
                ("queue:depth", "pn", 500, 620),
                ("viewers", "pn", 1_000, 0),
            ],
        )
        .await;
    client
        .sync(
            2,
            "us",
            &[
                ("home", "g", 4_345_678, 0),
                ("pricing", "g", 182_113, 0),
                ("events:2025", "g", TWO_53, 0),
                ("inbox:unread", "pn", 42, 0),
            ],
        )
        .await;
    // Two milestones of home, registered at 10,845,678: the steps below cross the first.
    for (n, label) in [
        (11_000_000, "eleven million"),
        (20_000_000, "twenty million"),
    ] {
        let body = json!({"n": n, "label": label});
        client
            .post("/v1/counters/home/milestones", ADMIN_TOKEN, &body)
            .await;
    }
    // Unique visitors of home: 1,500 all-time, 400 of them today (the merger's UTC day).
    let today = Timestamp::from_unix_ms(now_ms()).day();
    let (all_time, of_today) = (sketch_of(0..1_500), sketch_of(0..400));
    let sketches = json!({"version": 2, "replica": replica(5), "region": "eu", "sketches": [
        {"id": "home", "registers": all_time},
        {"id": "home", "day": today, "registers": of_today},
    ]});
    client.post("/v1/unique", TOKEN, &sketches).await;
    client.report_viewers("home", HOME_VIEWERS, 1).await;

    // home grows in steps, one history point each (snapshots every 200 ms).
    client.wait_for_points("home", 1).await;
    let steps = [7_000_000, 7_200_000, 7_600_000, 7_900_000, 8_000_000];
    for (i, total) in steps.into_iter().enumerate() {
        client.sync(1, "eu", &[("home", "g", total, 0)]).await;
        client.wait_for_points("home", i + 2).await;
    }
    let history_points = steps.len() + 1;
    assert_eq!(client.points("counters", "home").await, history_points);

    // What the milestone view must show: the first won by eu's replica (its unit as the
    // merger decided it), the second pending, 7,654,322 hits to go.
    let list = "/v1/counters/home/milestones";
    let milestones = client.read(list, REQUEST_TIMEOUT).await;
    let won = &milestones["milestones"][0];
    assert_eq!(
        (won["status"].as_str(), won["winner"]["replica"].as_str()),
        (Some("won"), Some(replica(1).as_str())),
        "{milestones}"
    );
    let unit = won["winner"]["unit"].as_u64().expect("a unit below 2^53");
    // The webhook took the winner's announcement: the page must say so.
    wait_until(
        Duration::from_secs(30),
        "the webhook acknowledges the winner",
        || async {
            let answer = client.read(list, Duration::from_secs(10)).await;
            answer["milestones"][0]["announced_at"].is_string()
        },
    )
    .await;
    assert!(
        announcements.load(std::sync::atomic::Ordering::Relaxed) >= 1,
        "the receiver got the announcement"
    );
    assert_eq!(
        milestones["milestones"][1]["status"], "pending",
        "{milestones}"
    );

    let seeded: Seeded = [
        (("counters", "home"), 12_345_678),
        (("counters", "pricing"), 482_113),
        (("counters", "docs:getting-started"), 73_410),
        (("counters", "signup"), 9_874),
        (("counters", "events:2025"), i128::from(TWO_53)),
        (("counters", "events:2026"), i128::from(TWO_53) + 1),
        (("gauges", "queue:depth"), -120),
        (("gauges", "inbox:unread"), 42),
    ]
    .into_iter()
    .collect();

    // "viewers" keeps changing in eu and us while the browser looks: the live refresh.
    let heartbeat = {
        let client = Client {
            http: tally_e2e::http_client(),
            url: merger.url.clone(),
        };
        tokio::spawn(async move {
            for beat in 1u64.. {
                // home's viewers stay reported while the page looks (a 10 s lease).
                client.report_viewers("home", HOME_VIEWERS, beat + 1).await;
                client
                    .sync(1, "eu", &[("viewers", "pn", 1_000 + beat, 0)])
                    .await;
                client
                    .sync(2, "us", &[("viewers", "pn", 300 + beat, 200)])
                    .await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };

    let figure = |ns: &'static str, id: &'static str| json!([ns, id, thousands(seeded[&(ns, id)])]);
    let expect = json!({
        "readToken": READ_TOKEN,
        "stale": STALE_AFTER_S,
        "figures": [
            figure("counters", "home"),
            figure("counters", "pricing"),
            figure("counters", "events:2025"),
            figure("counters", "events:2026"),
            figure("gauges", "queue:depth"),
        ],
        "countOrder": by_count(&seeded, "counters", ""),
        "search": {
            "query": "events",
            "counters": by_count(&seeded, "counters", "events"),
            "gauges": by_count(&seeded, "gauges", "events"),
        },
        "history": {
            "namespace": "counters",
            "id": "home",
            "points": history_points,
            "figure": thousands(seeded[&("counters", "home")]),
        },
        "viewers": {
            "now": thousands(i128::from(HOME_VIEWERS)),
            "uniqueAll": format!("≈ {}", thousands(i128::from(all_time.estimate()))),
            "uniqueToday": format!("≈ {}", thousands(i128::from(of_today.estimate()))),
        },
        "milestones": {
            "rows": [["11000000", "won"], ["20000000", "pending"]],
            "winner": format!("replica {}… unit {}", &replica(1)[..8], thousands(i128::from(unit))),
            "next": "20000000",
            "toGo": format!("{} to go", thousands(20_000_000 - seeded[&("counters", "home")])),
        },
        "regions": {"fresh": ["eu", "us"], "stale": ["ap"]},
        "live": {"namespace": "gauges", "id": "viewers", "search": "e"},
    });
    assert_eq!(thousands(i128::from(TWO_53) + 1), "9,007,199,254,740,993");

    let target = target_dir();
    std::fs::create_dir_all(&target).expect("the target dir can be created");
    let screenshot = target.join("dashboard.png");
    let _ = std::fs::remove_file(&screenshot);
    let run = tokio::process::Command::new("node")
        .arg(root().join("tests/browser/dashboard.mjs"))
        .current_dir(root())
        .env("TALLY_URL", &merger.url)
        .env("TALLY_CHROMIUM", &chromium)
        .env("TALLY_EXPECT", expect.to_string())
        .env("TALLY_SCREENSHOT", &screenshot)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the browser script ends within 60 s")
        .expect("node runs (Node.js >= 20 is required)");
    heartbeat.abort();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "the dashboard's browser checks failed ({}):\n{text}",
        output.status
    );
    eprintln!("{text}");
    assert!(
        screenshot.is_file(),
        "no screenshot at {}",
        screenshot.display()
    );
    eprintln!(
        "dashboard browser test: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
