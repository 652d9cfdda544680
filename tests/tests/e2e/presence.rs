//! Viewers now, end to end: the real merger and the real worker under `wrangler dev`.
//!
//! 500 viewers join one page over 3 regions, half renewing HTTP leases, half on WebSockets
//! that ping. 200 of them (100 of each kind) reach the edge through a [`StallProxy`] that
//! goes silent without closing anything, as a closed laptop looks to the server. The count
//! must reach 500 at the merger and at every region's edge, then fall to 300 once the
//! vanished viewers' leases (TTL) have run out, with no word from them; the surviving sockets
//! must see the new counts pushed, at most one push per `PRESENCE_PUSH_MS` by the object's
//! own clock; and an explicit leave (a `DELETE`, a closed socket) must count at once, in the
//! leaver's own answer, and then everywhere as any change does.
//!
//! No bound here is a tuned margin of milliseconds (docs/testing.md): waits are counted in
//! leases, and the push rate is read from the times the object stamps on its pushes.

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
/// `PRESENCE_PUSH_MS` of this test's edge (the default).
const PUSH_MS: i64 = 250;

/// One count message pushed to a socket: when it arrived, the count, and when the object
/// sent it (`sent_at`, Unix ms by the object's clock).
type Pushes = Arc<Mutex<Vec<(Instant, i128, i64)>>>;

/// The latest time a viewer sent a renewal (a lease `PUT`, a ping, the socket's open) that
/// the edge is known to have taken (it answered): the viewer's lease runs at least
/// [`TTL_MS`] from then.
type Renewed = Arc<std::sync::Mutex<Option<Instant>>>;

fn renewed_at(renewed: &Renewed, sent: Instant) {
    let mut latest = renewed.lock().expect("no panic while it is held");
    *latest = Some(latest.map_or(sent, |t| t.max(sent)));
}

/// A viewer on HTTP leases: joins, then renews every [`HEARTBEAT`] until `stop`.
fn lease_viewer(
    client: reqwest::Client,
    base: String,
    region: &'static str,
    session: String,
    stop: Arc<AtomicBool>,
    joined: Arc<Semaphore>,
    renewed: Renewed,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut first = true;
        while !stop.load(Ordering::SeqCst) {
            let sent = Instant::now();
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
                renewed_at(&renewed, sent);
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
    renewed: Renewed,
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
    let opened_at = Instant::now();
    let socket = open_socket(request).await;
    renewed_at(&renewed, opened_at);
    let pushes: Pushes = Arc::default();
    let seen = Arc::clone(&pushes);
    let task = tokio::spawn(async move {
        let (mut tx, mut rx) = socket.split();
        let mut ping = tokio::time::interval(HEARTBEAT);
        // When each ping not answered yet was sent; pongs answer them in order.
        let mut pings = std::collections::VecDeque::new();
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
                    pings.push_back(Instant::now());
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
                            let sent: tally_crdt::Timestamp =
                                serde_json::from_value(value["sent_at"].clone())
                                    .expect("a push says when it was sent");
                            seen.lock().await.push((Instant::now(), count, sent.unix_ms()));
                        }
                        Some("pong") => {
                            if let Some(sent) = pings.pop_front() {
                                renewed_at(&renewed, sent);
                            }
                        }
                        _ => panic!("unexpected socket message {value}"),
                    }
                }
            }
        }
    });
    (task, pushes)
}

/// A client's WebSocket to the edge.
type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A presence WebSocket opened by `request`, within 20 s, answered `101`.
async fn open_socket(request: impl IntoClientRequest + Unpin) -> Socket {
    let (socket, response) = tokio::time::timeout(
        Duration::from_secs(20),
        tokio_tungstenite::connect_async(request),
    )
    .await
    .expect("the WebSocket opens within 20 s")
    .expect("the edge accepts the WebSocket");
    assert_eq!(response.status().as_u16(), 101);
    socket
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
    // Long enough that anything waiting for a stopped merger shows (the last check).
    options.sync_timeout_ms = 60_000;
    let edge = Edge::start(&options).await;
    let edge_addr = edge.url.trim_start_matches("http://").to_owned();
    let proxy = StallProxy::start(&edge_addr).await;
    let direct = http_client();
    let proxied = http_client();
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
    // The last renewal of the viewers that will vanish (the others' go nowhere).
    let (vanished_renewed, others_renewed) = (Renewed::default(), Renewed::default());
    let mut leases = Vec::new();
    for n in 0..250 {
        let region = REGIONS[n % 3];
        let (client, base, stop, renewed) = match n {
            0 => (direct.clone(), edge.url.clone(), &leave, &others_renewed),
            1..150 => (direct.clone(), edge.url.clone(), &alive, &others_renewed),
            _ => (
                proxied.clone(),
                proxied_base.clone(),
                &vanish,
                &vanished_renewed,
            ),
        };
        leases.push(lease_viewer(
            client,
            base,
            region,
            format!("lease-{n}"),
            Arc::clone(stop),
            Arc::clone(&joined),
            Arc::clone(renewed),
        ));
    }
    let mut sockets = Vec::new();
    for n in 0..250 {
        let region = REGIONS[n % 3];
        let (addr, stop, renewed) = if n < 150 {
            (edge_addr.as_str(), &alive, &others_renewed)
        } else {
            (proxy.addr.as_str(), &vanish, &vanished_renewed)
        };
        let closer = if n == 0 {
            Arc::clone(&close)
        } else {
            Arc::new(Notify::new())
        };
        let viewer = socket_viewer(addr, region, Arc::clone(stop), closer, Arc::clone(renewed));
        sockets.push((n < 150, viewer.await));
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
    record_timing(
        "presence: 500 viewers counted everywhere after the last join",
        join_time,
        Duration::from_secs(30),
    );
    // The reads above can see 500 before every socket has been pushed it (a push per
    // PRESENCE_PUSH_MS, and on loaded cores a socket's last one lags the reads): the stall
    // starts once each socket has seen the joins, so that "before" and "after" below are
    // what they say.
    wait_until(
        Duration::from_secs(15),
        "every socket was pushed the joins",
        || {
            let sockets = &sockets;
            async move {
                for (_, (_, pushes)) in sockets {
                    if !pushes.lock().await.iter().any(|(_, c, _)| *c >= 450) {
                        return false;
                    }
                }
                true
            }
        },
    )
    .await;

    // 200 viewers vanish: the proxy goes silent, their heartbeats stop, nothing is closed.
    proxy.stall();
    vanish.store(true, Ordering::SeqCst);
    let stalled = Instant::now();
    // Their leases end within a lease of the silence; the count has healed everywhere
    // before three more have passed (measured: within a sync interval or two of the lease).
    let lease = Duration::from_millis(TTL_MS);
    let mut lowest = i128::MAX;
    let heal = converge(&direct, &merger.url, &edge.url, 300, 4 * lease, &mut lowest).await;
    let healed = stalled + heal;
    record_timing(
        "presence: 200 vanished viewers dropped out everywhere, past their lease",
        heal.saturating_sub(lease),
        3 * lease,
    );
    eprintln!(
        "300 viewers left at the merger and every edge {heal:?} after 200 vanished \
         (TTL {TTL_MS} ms, sync interval {sync_ms} ms)"
    );
    // Not before the lease of the last renewal the edge took from one of them ran out.
    let last_renewal = vanished_renewed
        .lock()
        .expect("no panic while it is held")
        .expect("the vanishing viewers renewed");
    assert!(
        healed >= last_renewal + lease,
        "the vanished viewers counted until their leases ran out: healed {:?} after their \
         last renewal, within its lease",
        healed - last_renewal
    );
    // The survivors keep the count at 300 for another lease: nothing of theirs expires.
    tokio::time::sleep(Duration::from_millis(TTL_MS)).await;
    converge(
        &direct,
        &merger.url,
        &edge.url,
        300,
        Duration::from_millis(TTL_MS),
        &mut lowest,
    )
    .await;
    assert_eq!(lowest, 300, "the survivors' renewals kept them counted");

    // Every surviving socket saw the counts pushed down to 300, and no two pushes to a socket
    // closer together than PRESENCE_PUSH_MS by the object's clock (`sent_at`). The times
    // they arrived would not tell: delivery on busy cores bunches them up.
    let mut closest = i64::MAX;
    let mut pushed_total = 0;
    for (survives, (_, pushes)) in &sockets {
        if !*survives {
            continue;
        }
        let pushes = pushes.lock().await;
        let after: Vec<i128> = pushes
            .iter()
            .filter(|(at, _, _)| *at > stalled)
            .map(|(_, c, _)| *c)
            .collect();
        assert!(
            pushes.iter().any(|(at, c, _)| *at < stalled && *c >= 450),
            "a socket saw the joins pushed: {pushes:?}"
        );
        assert!(
            after.len() >= 2 && after.last() == Some(&300),
            "a socket was pushed the falling count down to 300: {after:?}"
        );
        pushed_total += pushes.len();
        for pair in pushes.windows(2) {
            closest = closest.min(pair[1].2 - pair[0].2);
        }
    }
    eprintln!(
        "150 surviving sockets got {pushed_total} pushes; the closest two to one socket were \
         sent {closest} ms apart (PRESENCE_PUSH_MS {PUSH_MS})"
    );
    assert!(
        closest >= PUSH_MS,
        "pushes to a socket are at least PRESENCE_PUSH_MS apart: two were sent {closest} ms apart"
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
    // The leaver's own answer shows the leave took at once. From its object it travels to the
    // merger and every region as any change does: within two leases, counted generously (20
    // runs under the test command's load took 0.1-1.7 s).
    let left = converge(&direct, &merger.url, &edge.url, 299, 2 * lease, &mut lowest).await;
    record_timing(
        "presence: an HTTP leave counted everywhere",
        left,
        2 * lease,
    );

    // A socket its client closes ends its session as promptly.
    close.notify_one();
    let closed = converge(&direct, &merger.url, &edge.url, 298, 2 * lease, &mut lowest).await;
    record_timing(
        "presence: a closed socket counted everywhere",
        closed,
        2 * lease,
    );

    // A join never waits for the merger: stopped, a join of a page this object has heard
    // nothing of is answered at once from the object's own sessions, marked partial. This
    // edge waits up to SYNC_TIMEOUT_MS (60 s) for the merger: a join that waited for it would
    // outlast the request's 10 s timeout.
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
    assert_within(
        "presence: a join with the merger stopped",
        waited,
        Duration::from_secs(10),
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

/// The next count message on `socket` (the first one names the session), within `within`;
/// `None` if none came or the socket ended.
async fn next_count(socket: &mut Socket, within: Duration) -> Option<Value> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = tokio::time::timeout(left, socket.next()).await.ok()??;
        let Ok(Message::Text(text)) = message else {
            continue;
        };
        let value: Value = serde_json::from_str(&text).expect("a JSON message");
        if value["type"] == json!("count") {
            return Some(value);
        }
    }
}

/// A socket shown a count in its first message that differs from the count last pushed to
/// the id's other sockets must be pushed the next change even when that change goes back to
/// the count last pushed. Seen in the example page's browser test under load: the first
/// viewer's old socket closed (1 pushed), its reloaded page opened (its first message: 2), the
/// second viewer left within `PRESENCE_PUSH_MS` (1 again, as last pushed): the reloaded page
/// was never pushed 1, and showed 2 viewers until the next change. A long `PRESENCE_PUSH_MS`
/// holds the window open here; the wait for the push is a multiple of it.
#[tokio::test]
async fn a_socket_whose_first_count_differs_from_the_last_push_is_pushed_the_next_change() {
    const PUSH_MS: u64 = 4000;
    let _serial = serial().await;
    let (db, state) = (temp_dir(), temp_dir());
    let merger = MergerProcess::start(db.path(), &[]).await;
    let mut options = EdgeOptions::one_object(&merger.url, state.path());
    options.vars = vec![format!("PRESENCE_PUSH_MS:{PUSH_MS}")];
    let edge = Edge::start(&options).await;
    let id = "reloaded-page";
    let url = format!("{}/{id}/presence", edge.url.replace("http://", "ws://"));
    let open = || open_socket(url.as_str());
    let within = Duration::from_secs(20);

    // One viewer; whatever push its open brings has gone out a second later.
    let mut first = open().await;
    let shown = next_count(&mut first, within).await.expect("a first count");
    assert_eq!(count_of(&shown["count"]), Some(1), "{shown}");
    tokio::time::sleep(Duration::from_secs(1)).await;

    // A second socket is shown 2 as it opens; the first leaves at once: 1, as last pushed.
    let mut second = open().await;
    let shown = next_count(&mut second, within)
        .await
        .expect("a first count");
    assert_eq!(count_of(&shown["count"]), Some(2), "{shown}");
    first
        .send(Message::Close(None))
        .await
        .expect("the close goes out");
    drop(first);

    // The second socket is pushed 1 within a few push intervals.
    let deadline = Instant::now() + Duration::from_millis(5 * PUSH_MS);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(pushed) = next_count(&mut second, left).await else {
            panic!(
                "the second socket was not pushed 1 within {} ms (pushes: {seen:?})",
                5 * PUSH_MS
            );
        };
        let count = count_of(&pushed["count"]);
        seen.push(count);
        if count == Some(1) {
            break;
        }
    }
    let _ = second.send(Message::Close(None)).await;
    edge.stop().await;
    merger.terminate().await;
}
