//! A fault-injecting HTTP proxy for the edge → merger path.
//!
//! Every request from the edge passes through it to the merger, and on the way it may be
//! dropped (the edge sees a broken connection, the merger never sees the sync), have its
//! response dropped (the merger committed, the edge believes it failed and retries),
//! be duplicated (the merger sees it twice), or be delayed (concurrent syncs reorder); and
//! for a partition window all traffic is cut. The decisions come from one RNG seeded by the
//! caller, so the sequence of faults of a failing run can be replayed from its seed.
//!
//! With several upstreams ([`Proxy::balance`]) it is also the load balancer in front of
//! several mergers: requests go round-robin, and one whose merger refuses the connection
//! (killed) is sent to the next, as a load balancer's retry on connect errors does.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::net::TcpListener;

/// Probabilities of each fault, per request (at most one of drop / drop-response / duplicate
/// applies to a request; a delay can come on top).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Faults {
    /// The request is not forwarded; the connection is closed.
    pub drop_request: f64,
    /// The request is forwarded and answered by the merger; the answer is thrown away and the
    /// connection closed.
    pub drop_response: f64,
    /// The request is forwarded twice (the copy a little later); the first answer is returned.
    pub duplicate: f64,
    /// The request waits up to `max_delay` before it is forwarded.
    pub delay: f64,
    /// Longest delay.
    pub max_delay: Duration,
}

impl Faults {
    /// No faults: a plain proxy.
    pub fn none() -> Faults {
        Faults::default()
    }

    /// Every kind at once.
    pub fn all() -> Faults {
        Faults {
            drop_request: 0.15,
            drop_response: 0.15,
            duplicate: 0.15,
            delay: 0.3,
            max_delay: Duration::from_millis(400),
        }
    }
}

/// What the proxy did, so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests received from the edge.
    pub requests: u64,
    /// Requests dropped before the merger.
    pub dropped: u64,
    /// Answers dropped after the merger handled the request.
    pub responses_dropped: u64,
    /// Requests sent twice.
    pub duplicated: u64,
    /// Requests delayed (and so possibly reordered).
    pub delayed: u64,
    /// Requests cut by a partition.
    pub partitioned: u64,
    /// Syncs refused as a merger of an older protocol refuses them ([`Proxy::speak_at_most`]).
    pub refused_version: u64,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    dropped: AtomicU64,
    responses_dropped: AtomicU64,
    duplicated: AtomicU64,
    delayed: AtomicU64,
    partitioned: AtomicU64,
    refused_version: AtomicU64,
}

struct Shared {
    upstreams: Vec<String>,
    next: AtomicUsize,
    faults: Mutex<Faults>,
    rng: Mutex<StdRng>,
    partitioned: AtomicBool,
    /// The newest sync version the proxy lets through (`u64::MAX`: any).
    max_version: AtomicU64,
    /// Every request body received, by path, while recording (for replays).
    recorded: Mutex<Option<Vec<(String, Bytes)>>>,
    counters: Counters,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// What happens to one request.
enum Fate {
    Drop,
    DropResponse,
    Duplicate(Duration),
    Pass,
}

/// A running proxy on 127.0.0.1.
pub struct Proxy {
    /// `http://127.0.0.1:PORT`: give this to the edge as `MERGER_URL`.
    pub url: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Starts a proxy to `upstream` (`http://127.0.0.1:PORT`) with `faults`, its decisions
    /// drawn from an RNG seeded with `seed`.
    pub async fn start(upstream: &str, faults: Faults, seed: u64) -> Proxy {
        Self::balance(&[upstream], faults, seed).await
    }

    /// Starts a proxy that balances over `upstreams` round-robin, skipping one that refuses
    /// connections.
    pub async fn balance(upstreams: &[&str], faults: Faults, seed: u64) -> Proxy {
        assert!(!upstreams.is_empty(), "a proxy needs an upstream");
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("loopback has free ports");
        let addr: SocketAddr = listener
            .local_addr()
            .expect("a bound socket has an address");
        let shared = Arc::new(Shared {
            upstreams: upstreams
                .iter()
                .map(|u| u.trim_end_matches('/').to_owned())
                .collect(),
            next: AtomicUsize::new(0),
            faults: Mutex::new(faults),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            partitioned: AtomicBool::new(false),
            max_version: AtomicU64::new(u64::MAX),
            recorded: Mutex::new(None),
            counters: Counters::default(),
            client: Client::builder(TokioExecutor::new()).build_http(),
        });
        let task = tokio::spawn(accept(listener, Arc::clone(&shared)));
        Proxy {
            url: format!("http://{addr}"),
            shared,
            task,
        }
    }

    /// Changes the faults from now on.
    pub fn set_faults(&self, faults: Faults) {
        *self
            .shared
            .faults
            .lock()
            .expect("the proxy lock is never poisoned") = faults;
    }

    /// Cuts (true) or restores (false) all traffic.
    pub fn partition(&self, cut: bool) {
        self.shared.partitioned.store(cut, Ordering::SeqCst);
    }

    /// Answers every `POST /v1/sync` of a later version than `version` as a merger of that
    /// release does — `422` with `unsupported_version`, nothing forwarded — as in a rolling
    /// deploy in the wrong order; `None` lets every version through again.
    pub fn speak_at_most(&self, version: Option<u64>) {
        self.shared
            .max_version
            .store(version.unwrap_or(u64::MAX), Ordering::SeqCst);
    }

    /// Keeps a copy of every request from now on, to replay later.
    pub fn record(&self) {
        *self
            .shared
            .recorded
            .lock()
            .expect("the proxy lock is never poisoned") = Some(Vec::new());
    }

    /// The requests recorded so far, as (path, body), in arrival order.
    pub fn recorded(&self) -> Vec<(String, Bytes)> {
        self.shared
            .recorded
            .lock()
            .expect("the proxy lock is never poisoned")
            .clone()
            .unwrap_or_default()
    }

    /// What the proxy did so far.
    pub fn stats(&self) -> Stats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::SeqCst);
        Stats {
            requests: get(&c.requests),
            dropped: get(&c.dropped),
            responses_dropped: get(&c.responses_dropped),
            duplicated: get(&c.duplicated),
            delayed: get(&c.delayed),
            partitioned: get(&c.partitioned),
            refused_version: get(&c.refused_version),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(Arc::clone(&shared), req));
            // An error from the service closes the connection without an answer: that is
            // how a request or a response is "dropped".
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Why a request got no answer (closes the connection).
#[derive(Debug)]
struct Cut(&'static str);

impl std::fmt::Display for Cut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for Cut {}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Cut> {
    let c = &shared.counters;
    c.requests.fetch_add(1, Ordering::SeqCst);
    if shared.partitioned.load(Ordering::SeqCst) {
        c.partitioned.fetch_add(1, Ordering::SeqCst);
        return Err(Cut("partitioned"));
    }
    let (fate, delay) = {
        let faults = *shared
            .faults
            .lock()
            .expect("the proxy lock is never poisoned");
        let mut rng = shared.rng.lock().expect("the proxy lock is never poisoned");
        let roll: f64 = rng.random();
        let delay = (rng.random::<f64>() < faults.delay)
            .then(|| faults.max_delay.mul_f64(rng.random::<f64>()));
        let fate = if roll < faults.drop_request {
            Fate::Drop
        } else if roll < faults.drop_request + faults.drop_response {
            Fate::DropResponse
        } else if roll < faults.drop_request + faults.drop_response + faults.duplicate {
            Fate::Duplicate(
                faults
                    .max_delay
                    .mul_f64(rng.random::<f64>())
                    .max(Duration::from_millis(10)),
            )
        } else {
            Fate::Pass
        };
        (fate, delay)
    };
    if let Fate::Drop = fate {
        c.dropped.fetch_add(1, Ordering::SeqCst);
        return Err(Cut("request dropped"));
    }
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|_| Cut("request body unreadable"))?
        .to_bytes();
    if let Some(recorded) = shared
        .recorded
        .lock()
        .expect("the proxy lock is never poisoned")
        .as_mut()
    {
        recorded.push((parts.uri.path().to_owned(), body.clone()));
    }
    let max_version = shared.max_version.load(Ordering::SeqCst);
    if parts.uri.path() == "/v1/sync"
        && serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["version"].as_u64())
            .is_some_and(|v| v > max_version)
    {
        c.refused_version.fetch_add(1, Ordering::SeqCst);
        let answer = format!(
            r#"{{"error":{{"code":"unsupported_version","message":"unsupported protocol version: this merger speaks 1 to {max_version}"}}}}"#
        );
        return Ok(Response::builder()
            .status(422)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(answer)))
            .expect("a fixed answer is valid"));
    }
    if let Some(delay) = delay {
        c.delayed.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(delay).await;
    }
    let forward = |body: Bytes| {
        let shared = Arc::clone(&shared);
        let parts = parts.clone();
        async move {
            let first = shared.next.fetch_add(1, Ordering::Relaxed);
            let count = shared.upstreams.len();
            for attempt in 0..count {
                let upstream = &shared.upstreams[(first + attempt) % count];
                let mut builder = Request::builder().method(parts.method.clone()).uri(format!(
                    "{upstream}{}",
                    parts.uri.path_and_query().map_or("/", |p| p.as_str())
                ));
                for (name, value) in &parts.headers {
                    if name != hyper::header::HOST {
                        builder = builder.header(name, value);
                    }
                }
                let request = builder
                    .body(Full::new(body.clone()))
                    .expect("a copied request is valid");
                let response = match shared.client.request(request).await {
                    Ok(response) => response,
                    // Refused: nothing reached that merger; the next one gets the request.
                    Err(e) if e.is_connect() && attempt + 1 < count => continue,
                    Err(_) => return Err(Cut("merger unreachable")),
                };
                let (parts, body) = response.into_parts();
                let body = body
                    .collect()
                    .await
                    .map_err(|_| Cut("merger answer unreadable"))?
                    .to_bytes();
                return Ok::<_, Cut>(Response::from_parts(parts, Full::new(body)));
            }
            Err(Cut("merger unreachable"))
        }
    };
    if let Fate::Duplicate(after) = fate {
        c.duplicated.fetch_add(1, Ordering::SeqCst);
        let copy = forward(body.clone());
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let _ = copy.await;
        });
    }
    let response = forward(body).await?;
    if let Fate::DropResponse = fate {
        c.responses_dropped.fetch_add(1, Ordering::SeqCst);
        return Err(Cut("response dropped"));
    }
    Ok(response)
}
