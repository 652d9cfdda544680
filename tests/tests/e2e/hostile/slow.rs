//! Slow clients against the merger. The header read timeout (1 s) closes half a request line,
//! half a head, an idle connection and a head dribbled a byte at a time, without an answer;
//! the request timeout (2 s) answers a body that stops halfway with `408 request_timeout` and
//! closes it; a wrong token is refused before its body arrives; and meanwhile `/healthz`
//! answers at once.
//!
//! The server's own timeouts are checked from below (nothing is cut off early); from above,
//! each wait is bounded by what it proves (a head dribbled for 12 s must be cut off before
//! it is complete, or it would be answered) or generously, against a hang.

use std::time::{Duration, Instant};

use serde_json::json;
use tally_e2e::raw::{case, check, closed_silently, connect, host_of, read_answer};
use tally_e2e::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::MERGER_FLAGS;

/// `GET /healthz` answers at once: before the slow clients' 1 s header timeout would free
/// a server that waited for them.
async fn assert_healthy(client: &reqwest::Client, merger: &str, while_: &str) {
    let start = Instant::now();
    let (status, body) = get(client, &format!("{merger}/healthz")).await;
    assert_eq!(
        (status, &body),
        (200, &json!({"status": "ok"})),
        "healthz {while_}"
    );
    assert_within(
        &format!("hostile: /healthz {while_}"),
        start.elapsed(),
        Duration::from_millis(500),
    );
}

#[tokio::test]
async fn slow_clients_are_cut_off_and_others_are_served_meanwhile() {
    // No edge here; run alone in its lane all the same, as every end-to-end test.
    let _serial = serial().await;
    let db = temp_dir();
    let merger = MergerProcess::start(db.path(), &MERGER_FLAGS).await;
    let host = host_of(&merger.url).to_owned();
    let client = http_client();
    let start = Instant::now();

    // Every request is the raw client's, sent in part: half a request line, then nothing.
    let healthz = case("", "GET", "/healthz").to_bytes(&host);
    let mut half_line = connect(&host).await;
    half_line.write_all(&healthz[..15]).await.unwrap();
    // A sync with its token and a 100-byte body.
    let sync = case("", "POST", "/v1/sync")
        .header("Authorization", &format!("Bearer {TOKEN}"))
        .json(format!("{{\"version\": 2{}}}", " ".repeat(86)));
    let (sync_bytes, sync_head) = (sync.to_bytes(&host), sync.head_len(&host));
    // Half its head, then nothing.
    let mut half_head = connect(&host).await;
    half_head
        .write_all(&sync_bytes[..sync_head / 2])
        .await
        .unwrap();
    // Connected, and never a byte.
    let mut idle = connect(&host).await;
    // Its whole head and 10 bytes of the body, then nothing.
    let mut half_body = connect(&host).await;
    half_body
        .write_all(&sync_bytes[..sync_head + 10])
        .await
        .unwrap();
    // A head dribbled a byte every 200 ms: over 16 s for the whole head, far past the 1 s
    // allowed.
    let dribbled = case("", "GET", "/healthz")
        .header("X-Slow", &"z".repeat(20))
        .to_bytes(&host);
    let head_len = dribbled.len();
    let (mut dribble_read, mut dribble_write) = connect(&host).await.into_split();
    let dribbled_bytes = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sent = std::sync::Arc::clone(&dribbled_bytes);
    let dribbler = tokio::spawn(async move {
        for byte in dribbled {
            if dribble_write.write_all(&[byte]).await.is_err() {
                return;
            }
            sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    // A wrong token with a body still to come: refused at once, the token is checked before
    // the body is read.
    let wrong = case("", "POST", "/v1/sync")
        .header("Authorization", "Bearer not-the-token-000000")
        .json(vec![b' '; 100]);
    let mut no_body_yet = connect(&host).await;
    no_body_yet
        .write_all(&wrong.to_bytes(&host)[..wrong.head_len(&host)])
        .await
        .unwrap();
    // (Were the body awaited, the answer would be the request timeout's 408, not the 401.)
    let refused = read_answer(&mut no_body_yet, Duration::from_secs(10))
        .await
        .expect("a wrong token is refused before the body arrives");
    let refused_case = case("", "POST", "/v1/sync").expect(401, "invalid_token");
    check(&refused_case, &refused).expect("the early refusal is the documented error");

    // While all of them hang, others are served.
    for _ in 0..4 {
        assert_healthy(&client, &merger.url, "while slow clients hang").await;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }

    // The header read timeout (1 s) closes the unfinished heads, silently.
    for (what, stream) in [
        ("half a request line", &mut half_line),
        ("half a head", &mut half_head),
        ("an idle connection", &mut idle),
    ] {
        closed_silently(stream, Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let at = start.elapsed();
        assert!(
            at >= Duration::from_millis(900),
            "{what} closed after {at:?}, before the 1 s header timeout"
        );
    }
    let mut buf = [0u8; 256];
    // Closed, not answered: a head completed (after 12 s) would have been answered.
    match tokio::time::timeout(Duration::from_secs(20), dribble_read.read(&mut buf)).await {
        Ok(Ok(0) | Err(_)) => {}
        Ok(Ok(n)) => panic!(
            "a dribbled head was answered: {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(_) => panic!("a head dribbled for {:?} is still open", start.elapsed()),
    }
    let sent = dribbled_bytes.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        sent < head_len,
        "the dribbled head was closed only once complete ({sent} of {head_len} bytes)"
    );
    dribbler.abort();

    // The request timeout (2 s) answers the stalled body with the JSON 408, then closes.
    let answer = read_answer(&mut half_body, Duration::from_secs(20))
        .await
        .expect("a stalled body gets an answer");
    let at = start.elapsed();
    let timeout_case = case("", "POST", "/v1/sync").expect(408, "request_timeout");
    check(&timeout_case, &answer).expect("a stalled body gets the documented 408");
    assert!(
        at >= Duration::from_millis(1800),
        "408 after {at:?}, before the 2 s request timeout"
    );
    closed_silently(&mut half_body, Duration::from_secs(10))
        .await
        .expect("the connection of a timed-out request is closed");

    // Afterwards: still serving, and none of it reached the state.
    assert_healthy(&client, &merger.url, "after the slow clients").await;
    let (status, body) = get(&client, &format!("{}/v1/counters", merger.url)).await;
    assert_eq!(
        (status, &body),
        (200, &json!({"items": [], "next_cursor": null}))
    );
    println!("slow clients: 6 held, cut off by {:?}", start.elapsed());
    merger.terminate().await;
}
