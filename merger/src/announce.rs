//! Announcing milestone winners: a task that POSTs each won milestone to `--webhook-url`,
//! signed, and retries with backoff until the receiver answers 2xx (docs/milestones.md).
//!
//! The milestone row is the outbox: its winner is written in the transaction that decides
//! it, so an announcement goes out only for a committed winner, and a crash between the
//! commit and the POST only delays it. Delivery is at least once: a receiver may see one
//! event twice (a lost acknowledgement, two mergers), and deduplicates by its id.
//!
//! The request: `POST` with `Content-Type: application/json` and
//! - `Tally-Event-Id`: `milestone:<counter>:<n>`, the same in every attempt (also in the body);
//! - `Tally-Timestamp`: Unix seconds of this attempt;
//! - `Tally-Signature`: `v1=` and the hex HMAC-SHA256, with the webhook secret, of
//!   `<timestamp>.<body>` (a receiver checks it and refuses old timestamps, so a captured
//!   request cannot be replayed later);
//! - `Tally-Delivery-Attempt`: 1, 2, …
//!
//! The body is the same in every attempt: `{"id", "type": "milestone.won", "counter", "n",
//! "label", "winner": {"replica", "unit", "decided_at", "visitor"}}`.

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;
use tally_crdt::Count;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::metrics::{Metrics, Outcome};
use crate::milestone::Announcement;
use crate::store::Store;

/// How often due announcements are looked for.
const POLL: Duration = Duration::from_millis(500);
/// Announcements claimed per look.
const BATCH: u32 = 16;
/// Every how many looks the backlog is counted (every 5 s).
const BACKLOG_EVERY: u32 = 10;
/// How long a claimed announcement is left to its claimant before another may try it.
const LEASE_MS: u64 = 30_000;
/// The longest one attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Backoff between attempts: from 1 s, doubling, at most 5 minutes.
const BACKOFF_BASE_MS: u64 = 1000;
const BACKOFF_MAX_MS: u64 = 300_000;

/// Where announcements go and the secret they are signed with.
#[derive(Clone)]
pub struct Webhook {
    url: String,
    secret: Arc<[u8]>,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Webhook {
    /// The webhook of the configuration: none without a URL.
    ///
    /// # Errors
    ///
    /// A message for a URL that is not `http://` or `https://`, or without a secret of at
    /// least [`crate::MIN_TOKEN_LEN`] characters.
    pub fn from_config(url: Option<&str>, secret: Option<&str>) -> Result<Option<Webhook>, String> {
        let Some(url) = url.filter(|u| !u.is_empty()) else {
            return Ok(None);
        };
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("--webhook-url {url:?}: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(format!("--webhook-url {url:?} is not an http(s) URL"));
        }
        match secret {
            Some(s) if s.len() >= crate::MIN_TOKEN_LEN => Ok(Some(Webhook {
                url: url.to_owned(),
                secret: s.as_bytes().into(),
            })),
            _ => Err(format!(
                "--webhook-url needs --webhook-secret of at least {} characters",
                crate::MIN_TOKEN_LEN
            )),
        }
    }
}

/// The event id of an announcement: the same for every attempt.
pub fn event_id(a: &Announcement) -> String {
    format!("milestone:{}:{}", a.id, a.milestone.n)
}

/// The body of an announcement (the same for every attempt).
pub fn body(a: &Announcement) -> String {
    let winner = a.milestone.winner.as_ref().map(|w| {
        json!({
            "replica": w.replica.to_string(),
            "unit": Count(i128::from(w.unit)),
            "decided_at": w.at,
            "visitor": w.visitor,
        })
    });
    json!({
        "id": event_id(a),
        "type": "milestone.won",
        "counter": a.id,
        "n": Count(i128::from(a.milestone.n)),
        "label": a.milestone.label,
        "winner": winner,
    })
    .to_string()
}

/// `v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
pub fn signature(secret: &[u8], timestamp: i64, body: &str) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("v1={hex}")
}

/// The wait after the `attempts`-th failed attempt: doubling from 1 s, at most 5 minutes,
/// half of it drawn at random so that many failed deliveries do not retry in step.
pub fn backoff_ms(attempts: u32, random: u64) -> u64 {
    let exp = BACKOFF_BASE_MS
        .saturating_mul(1u64 << attempts.saturating_sub(1).min(20))
        .min(BACKOFF_MAX_MS);
    exp / 2 + random % (exp / 2).max(1)
}

/// Starts the task; it ends when `stop` turns true.
pub fn spawn(
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    webhook: Webhook,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let client = reqwest::Client::builder()
            .timeout(ATTEMPT_TIMEOUT)
            .build()
            .expect("an HTTP client builds");
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut looks: u32 = 0;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    pass(&*store, &metrics, &webhook, &client).await;
                    if looks.is_multiple_of(BACKLOG_EVERY) {
                        backlog(&*store, &metrics).await;
                    }
                    looks = looks.wrapping_add(1);
                }
                changed = stop.changed() => if changed.is_err() || *stop.borrow() {
                    break;
                },
            }
        }
    })
}

/// Sets `tally_announcements_pending` to the won milestones not acknowledged yet.
async fn backlog(store: &dyn Store, metrics: &Metrics) {
    match store.pending_announcements().await {
        Ok(n) => {
            metrics
                .announcements_pending
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        Err(e) => warn!(error = %e, "counting the milestone announcements waiting failed"),
    }
}

/// One look: every due announcement, one attempt each.
async fn pass(store: &dyn Store, metrics: &Metrics, webhook: &Webhook, client: &reqwest::Client) {
    let due = match store
        .claim_announcements(crate::clock::now(), LEASE_MS, BATCH)
        .await
    {
        Ok(due) => due,
        Err(e) => {
            warn!(error = %e, "looking for milestone announcements failed; trying again");
            return;
        }
    };
    for a in due {
        let body = body(&a);
        let now = crate::clock::now();
        let timestamp = now.unix_ms().div_euclid(1000);
        let sent = client
            .post(&webhook.url)
            .header("Content-Type", "application/json")
            .header("Tally-Event-Id", event_id(&a))
            .header("Tally-Timestamp", timestamp.to_string())
            .header(
                "Tally-Signature",
                signature(&webhook.secret, timestamp, &body),
            )
            .header("Tally-Delivery-Attempt", a.attempts.to_string())
            .body(body)
            .send()
            .await;
        let n = a.milestone.n;
        let recorded = match sent {
            Ok(r) if r.status().is_success() => {
                info!(counter = %a.id, n, attempts = a.attempts, "milestone announced");
                metrics
                    .announcements
                    .get_or_create(&Outcome { outcome: "ok" })
                    .inc();
                store.announced(&a.id, n, crate::clock::now()).await
            }
            failed => {
                let why = match failed {
                    Ok(r) => format!("answered {}", r.status()),
                    Err(e) => e.to_string(),
                };
                let wait = backoff_ms(a.attempts, random());
                warn!(counter = %a.id, n, attempts = a.attempts, wait_ms = wait, "milestone announcement failed ({why}); retrying");
                metrics
                    .announcements
                    .get_or_create(&Outcome { outcome: "failed" })
                    .inc();
                store.retry_announcement(&a.id, n, now.plus_ms(wait)).await
            }
        };
        if let Err(e) = recorded {
            warn!(error = %e, counter = %a.id, n, "recording an announcement failed; it will be sent again");
        }
    }
}

fn random() -> u64 {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_or(0, |()| u64::from_le_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_to_five_minutes_with_jitter() {
        assert!((500..1000).contains(&backoff_ms(1, 12345)));
        assert!((1000..2000).contains(&backoff_ms(2, 12345)));
        assert!((150_000..300_000).contains(&backoff_ms(40, u64::MAX)));
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_and_body() {
        // python3 -c 'import hmac, hashlib; print(hmac.new(b"webhook-secret-0123456789",
        //     b"1900000000.{\"a\":1}", hashlib.sha256).hexdigest())'
        assert_eq!(
            signature(b"webhook-secret-0123456789", 1_900_000_000, r#"{"a":1}"#),
            "v1=1b4ab15eac0ca40d697cb122c8cfba4790bf461766d9eda46b62b660a3e96b9f"
        );
    }
}
