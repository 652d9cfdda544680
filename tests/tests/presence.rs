//! Viewers now, end to end: the real merger and the real worker under `wrangler dev`.
//!
//! 500 viewers join one page over 3 regions, half renewing HTTP leases, half on WebSockets
//! that ping. 200 of them (100 of each kind) reach the edge through a [`StallProxy`] that
//! goes silent without closing anything, as a closed laptop looks to the server. The count
//! must reach 500 at the merger and at every region's edge, then fall to 300 within the
//! lease (TTL) and a sync interval of the silence, with no word from the vanished viewers;
//! the surviving sockets must see the new counts pushed, at most a few per second; and an
//! explicit leave (a `DELETE`, a closed socket) must count at once, not after a lease.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tally_e2e::stall::StallProxy;
use tally_e2e::*;
use tokio::sync::{Mutex, Notify, Semaphore};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const REGIONS: [&str; 3] = ["eu", "us", "ap"];
const ID: &str = "watch-party";
/// `PRESENCE_TTL_MS` of this test's edge.
const TTL_MS: u64 = 6000;
/// How often a viewer renews its lease (HTTP) or pings (WebSocket), in ms: well inside the
/// TTL.
const HEARTBEAT_MS: u64 = 2000;
const HEARTBEAT: Duration = Duration::from_millis(HEARTBEAT_MS);
/// Time the system may take beyond TTL + sync interval (scheduling on 2 busy cores).
const SLACK_MS: u64 = 2500;

/// One count message a socket received, and when.
type Pushes = Arc<Mutex<Vec<(Instant, i128)>>>;

/// A viewer on HTTP leases: joins, then renews every [`HEARTBEAT`] until `stop`.
fn lease_viewer(
    client: reqwest::Client,
    base: String,
    region: &'static str,
    session: String,
    stop: Arc<AtomicBool>,
    joined: Arc<Semaphore>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut first = true;
        while !stop.load(Ordering::SeqCst) {
            let answer = client
                .put(format!("{base}/{ID}/presence"))
                .header("X-Tally-Region", region)
                .header("Authorization", format!("Bearer {WRITE_KEY}"))
                .json(&json!({ "session": session }))
                .timeout(Duration::from_secs(3))
                .send()
                .await;
            // No answer, or a body cut off (the proxy may stall mid-answer): nothing to check.
            if let Ok(r) = answer {
                let status = r.status().as_u16();
                let Ok(body) = r.json::<Value>().await else {
                    continue;
                };
                assert_eq!(status, 200, "a join or renewal is answered: {body}");
                assert_eq!(body["session"], json!(session), "{body}");
                assert_eq!(body["ttl_ms"], json!(TTL_MS), "{body}");
                if first {
                    first = false;
                    joined.add_permits(1);
                }
            }
            tokio::time::sleep(HEARTBEAT).await;
        }
    })
}

/// A viewer on a WebSocket: the open socket is its session. It pings every [`HEARTBEAT`]
/// until `stop` (then holds the socket open and silent), records every count pushed to it,
/// and closes the socket when `close` is notified.
async fn socket_viewer(
    addr: &str,
    region: &'static str,
    stop: Arc<AtomicBool>,
    close: Arc<Notify>,
) -> (tokio::task::JoinHandle<()>, Pushes) {
    let mut request = format!("ws://{addr}/{ID}/presence")
        .into_client_request()
        .expect("a WebSocket request");
    let headers = request.headers_mut();
    headers.insert("X-Tally-Region", region.parse().expect("a header value"));
    headers.insert(
        "Authorization",
        format!("Bearer {WRITE_KEY}")
            .parse()
            .expect("a header value"),
    );
    let (socket, response) = tokio::time::timeout(
        Duration::from_secs(20),
        tokio_tungstenite::connect_async(request),
    )
    .await
    .expect("the WebSocket opens within 20 s")
    .expect("the edge accepts the WebSocket");
    assert_eq!(response.status().as_u16(), 101);
    let pushes: Pushes = Arc::default();
    let seen = Arc::clone(&pushes);
    let task = tokio::spawn(async move {
        let (mut tx, mut rx) = socket.split();
        let mut ping = tokio::time::interval(HEARTBEAT);
        let mut opened = false;
        loop {
            tokio::select! {
                () = close.notified() => {
                    let _ = tx.send(Message::Close(None)).await;
                    let _ = tx.flush().await;
                    return;
                }
                _ = ping.tick() => {
                    if stop.load(Ordering::SeqCst) {
                        // Gone silent, socket held open: nothing is sent or closed.
                        std::future::pending::<()>().await;
                    }
                    if tx.send(Message::text("ping")).await.is_err() {
                        return;
                    }
                }
                message = rx.next() => {
                    let Some(Ok(message)) = message else { return };
                    let Message::Text(text) = message else { continue };
                    let value: Value = serde_json::from_str(&text).expect("a JSON message");
                    match value["type"].as_str() {
                        // The first message answers the open (it names the session); the
                        // rest are pushes.
                        Some("count") if !opened => {
                            assert_eq!(value["id"], json!(ID), "{value}");
                            assert!(value["session"].is_string(), "{value}");
                            assert_eq!(value["ttl_ms"], json!(TTL_MS), "{value}");
                            opened = true;
                        }
                        Some("count") => {
                            assert_eq!(value["id"], json!(ID), "{value}");
                            assert!(value.get("session").is_none(), "{value}");
                            let count = count_of(&value["count"]).expect("a count");
                            seen.lock().await.push((Instant::now(), count));
                        }
                        Some("pong") => {}
                        _ => panic!("unexpected socket message {value}"),
                    }
                }
            }
        }
    });
    (task, pushes)
}

/// The viewers of [`ID`] in `region`, as that region's edge answers them.
async fn edge_count(client: &reqwest::Client, edge: &str, region: &str) -> Option<i128> {
    let r = client
        .get(format!("{edge}/{ID}/presence"))
        .header("X-Tally-Region", region)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    (r.status() == 200).then_some(())?;
    let body: Value = r.json().await.ok()?;
    count_of(&body["count"])
}

/// The merger's global viewers of [`ID`].
async fn merger_count(client: &reqwest::Client, merger: &str) -> Option<i128> {
    let (status, body) = get(client, &format!("{merger}/v1/presence/{ID}")).await;
    (status == 200).then(|| count_of(&body["count"])).flatten()
}

/// Polls until the merger and every region's edge answer `want`; returns how long it took.
/// Records the lowest count seen meanwhile in `lowest`.
async fn converge(
    client: &reqwest::Client,
    merger: &str,
    edge: &str,
    want: i128,
    within: Duration,
    lowest: &mut i128,
) -> Duration {
    let start = Instant::now();
    loop {
        let mut counts = vec![merger_count(client, merger).await];
        for region in REGIONS {
            counts.push(edge_count(client, edge, region).await);
        }
        for count in counts.iter().flatten() {
            *lowest = (*lowest).min(*count);
        }
        if counts.iter().all(|c| *c == Some(want)) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "merger and edges (eu, us, ap) answer {counts:?}, not {want}, after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// Two worker threads: 250 sockets' receive times are measured, and one thread would delay them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vanished_viewers_drop_out_after_their_lease_and_sockets_see_it_live() {
    let _serial = serial().await;
    let (db, state) = (temp_dir(), temp_dir());
    let merger = MergerProcess::start(db.path(), &[]).await;
    let sync_ms = 300;
    let mut options = EdgeOptions::new(&merger.url, state.path());
    options.sync_interval_ms = sync_ms;
    options.vars = vec![format!("PRESENCE_TTL_MS:{TTL_MS}")];
    let edge = Edge::start(&options).await;
    let edge_addr = edge.url.trim_start_matches("http://").to_owned();
    let proxy = StallProxy::start(&edge_addr).await;
    let direct = reqwest::Client::new();
    let proxied = reqwest::Client::new();
    let proxied_base = format!("http://{}", proxy.addr);

    // 500 viewers, spread over the regions: 150 + 100 on leases, 150 + 100 on sockets.
    // `vanish` silences the 200 behind the proxy; `leave` stops the first lease viewer's
    // renewals (it then leaves with a DELETE); `close` closes the first surviving socket.
    let (alive, vanish, leave) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let close = Arc::new(Notify::new());
    let joined = Arc::new(Semaphore::new(0));
    let mut leases = Vec::new();
    for n in 0..250 {
        let region = REGIONS[n % 3];
        let (client, base, stop) = match n {
            0 => (direct.clone(), edge.url.clone(), Arc::clone(&leave)),
            1..150 => (direct.clone(), edge.url.clone(), Arc::clone(&alive)),
            _ => (proxied.clone(), proxied_base.clone(), Arc::clone(&vanish)),
        };
        leases.push(lease_viewer(
            client,
            base,
            region,
            format!("lease-{n}"),
            stop,
            Arc::clone(&joined),
        ));
    }
    let mut sockets = Vec::new();
    for n in 0..250 {
        let region = REGIONS[n % 3];
        let (addr, stop) = if n < 150 {
            (edge_addr.as_str(), Arc::clone(&alive))
        } else {
            (proxy.addr.as_str(), Arc::clone(&vanish))
        };
        let closer = if n == 0 {
            Arc::clone(&close)
        } else {
            Arc::new(Notify::new())
        };
        sockets.push((n < 150, socket_viewer(addr, region, stop, closer).await));
    }
    tokio::time::timeout(Duration::from_secs(60), joined.acquire_many(250))
        .await
        .expect("every lease viewer joins within 60 s")
        .expect("the semaphore is open")
        .forget();

    let mut lowest = i128::MAX;
    let join_time = converge(
        &direct,
        &merger.url,
        &edge.url,
        500,
        Duration::from_secs(30),
        &mut lowest,
    )
    .await;
    eprintln!("500 viewers counted at the merger and every edge {join_time:?} after the last join");

    // 200 viewers vanish: the proxy goes silent, their heartbeats stop, nothing is closed.
    proxy.stall();
    vanish.store(true, Ordering::SeqCst);
    let stalled = Instant::now();
    let bound = Duration::from_millis(TTL_MS + sync_ms + SLACK_MS);
    let mut lowest = i128::MAX;
    let heal = converge(&direct, &merger.url, &edge.url, 300, bound, &mut lowest).await;
    eprintln!(
        "300 viewers left at the merger and every edge {heal:?} after 200 vanished \
         (TTL {TTL_MS} ms, sync interval {sync_ms} ms, bound {bound:?})"
    );
    assert!(
        heal >= Duration::from_millis(TTL_MS - HEARTBEAT_MS - 500),
        "the vanished viewers counted until their leases ran out ({heal:?} is too soon)"
    );
    // The survivors keep the count at 300 for another lease: nothing of theirs expires.
    tokio::time::sleep(Duration::from_millis(TTL_MS)).await;
    converge(
        &direct,
        &merger.url,
        &edge.url,
        300,
        Duration::from_secs(2),
        &mut lowest,
    )
    .await;
    assert_eq!(lowest, 300, "the survivors' renewals kept them counted");

    // Every surviving socket saw the counts pushed down to 300, a few per second at most.
    // The object pushes at most every PRESENCE_PUSH_MS (250 ms); on 2 busy cores the
    // runtime's delivery jitters by up to a push interval (one late push arrives just before
    // the next), so the check allows one push beyond the nominal 4 per second, over 2 s.
    let mut busiest = (0, 0);
    let mut pushed_total = 0;
    for (survives, (_, pushes)) in &sockets {
        if !*survives {
            continue;
        }
        let pushes = pushes.lock().await;
        let after: Vec<i128> = pushes
            .iter()
            .filter(|(at, _)| *at > stalled)
            .map(|(_, c)| *c)
            .collect();
        assert!(
            pushes.iter().any(|(at, c)| *at < stalled && *c >= 450),
            "a socket saw the joins pushed: {pushes:?}"
        );
        assert!(
            after.len() >= 2 && after.last() == Some(&300),
            "a socket was pushed the falling count down to 300: {after:?}"
        );
        pushed_total += pushes.len();
        let in_window = |i: usize, window: Duration| {
            let start = pushes[i].0;
            pushes[i..]
                .iter()
                .take_while(|(t, _)| t.duration_since(start) < window)
                .count()
        };
        for i in 0..pushes.len() {
            busiest.0 = busiest.0.max(in_window(i, Duration::from_secs(1)));
            busiest.1 = busiest.1.max(in_window(i, Duration::from_secs(2)));
        }
    }
    eprintln!(
        "150 surviving sockets got {pushed_total} pushes; at most {} in one second, {} in two \
         (PRESENCE_PUSH_MS 250)",
        busiest.0, busiest.1
    );
    assert!(
        busiest.1 <= 9,
        "pushes are rate-limited: {} in two seconds",
        busiest.1
    );

    // An explicit leave counts at once: in the leaver's own answer, then at the merger and
    // every edge well before a lease could run out.
    leave.store(true, Ordering::SeqCst);
    let leaver = leases.remove(0);
    tokio::time::timeout(Duration::from_secs(10), leaver)
        .await
        .expect("the leaver's renewals stop")
        .expect("the leaver's renewals all succeeded");
    let r = direct
        .delete(format!("{}/{ID}/presence?session=lease-0", edge.url))
        .header("X-Tally-Region", REGIONS[0])
        .send()
        .await
        .expect("the edge answers a leave");
    assert_eq!(r.status().as_u16(), 200);
    let body: Value = r.json().await.expect("a JSON answer");
    assert_eq!(count_of(&body["count"]), Some(299), "{body}");
    let left = converge(
        &direct,
        &merger.url,
        &edge.url,
        299,
        Duration::from_millis(TTL_MS / 2),
        &mut lowest,
    )
    .await;
    eprintln!("an HTTP leave counted everywhere in {left:?}");

    // A socket its client closes ends its session as promptly.
    close.notify_one();
    let closed = converge(
        &direct,
        &merger.url,
        &edge.url,
        298,
        Duration::from_millis(TTL_MS / 2),
        &mut lowest,
    )
    .await;
    eprintln!("a closed socket counted everywhere in {closed:?}");

    // A join never waits for the merger: stopped, a join of a page this object has heard
    // nothing of is answered at once from the object's own sessions, marked partial (the
    // edge's merger calls time out after 2 s in tests, so waiting would show).
    merger.signal("-STOP");
    let asked = Instant::now();
    let r = direct
        .put(format!("{}/quiet-room/presence", edge.url))
        .header("X-Tally-Region", "eu")
        .header("Authorization", format!("Bearer {WRITE_KEY}"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("the edge answers a join with the merger stopped");
    let waited = asked.elapsed();
    let partial = r.headers().get("Tally-Estimate").cloned();
    let body: Value = r.json().await.expect("a JSON answer");
    merger.signal("-CONT");
    eprintln!("a join with the merger stopped answered in {waited:?}: {body}");
    assert_eq!(count_of(&body["count"]), Some(1), "{body}");
    assert_eq!(
        partial.as_ref().map(|v| v.as_bytes()),
        Some(&b"partial"[..])
    );
    assert!(
        waited < Duration::from_secs(1),
        "the join waited {waited:?}"
    );

    // No viewer saw a wrong answer (a failed assertion ends its task with a panic).
    let tasks = leases
        .into_iter()
        .chain(sockets.into_iter().map(|(_, (task, _))| task));
    for task in tasks {
        if task.is_finished() {
            task.await
                .expect("a viewer's task ends without a failed check");
        } else {
            task.abort();
        }
    }
    drop(proxy);
}
