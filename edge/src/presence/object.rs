//! The presence Durable Object: the leases and sockets of the sessions routed to it, its
//! reports to the merger, and the pushes to its sockets. Glue between the runtime and the
//! pure parts ([`super::Tally`], [`super::store`], [`crate::scheduler`], [`crate::client`]).
//!
//! - A join, renewal or leave is written to its lease row (one SQL statement) and answered
//!   at once from the object's own sessions and the merger's last total: it never waits for
//!   the merger (an id the object has heard nothing of is answered from its own sessions,
//!   marked partial, and read from the merger in the background). Only a read of such an id
//!   waits, for one merger read shared by every read that needs it.
//! - A socket is accepted for hibernation, tagged with its presence id, with its session and
//!   last ping in its attachment; the object may be evicted while sockets stay open, and
//!   wakes for their messages. A client pings (any text message) within its lease; the
//!   server cannot ping a hibernated socket, so a socket whose client went silent is found
//!   by the sweep and closed.
//! - One alarm ([`Scheduler`]): `Report` sweeps (ends the leases and sockets that missed
//!   their lease) and reports every sync interval while the object holds sessions; `Refresh`
//!   reads the merger's totals that reads found stale; `Push` sends changed counts to the
//!   sockets, at most every `PRESENCE_PUSH_MS`.
//!
//! As in every object ([`crate::object`]), state changes only between awaits, through a `RefCell`
//! whose borrows never cross one.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use futures_channel::oneshot;
use futures_util::future::select;
use tally_crdt::{
    MAX_COUNTERS_PER_SYNC, PREVIOUS_VERSION, PresenceRead, PresenceReport, ReplicaId, Timestamp,
};
use worker::{
    Delay, DurableObject, Env, Request, Response, Result, State, WebSocket,
    WebSocketIncomingMessage, WebSocketPair, console_error, console_warn, durable_object,
    wasm_bindgen,
};

use super::store::{LeaseStore, meta};
use super::{CALL_PATH, Call, Op, SOCKET_PATH, ServerMessage, SocketSession, Tally, View};
use crate::api::ApiError;
use crate::client;
use crate::config::Config;
use crate::object::{Loaded, Shell, StoreError, internal, random_id, store_failed, take_first};
use crate::runtime::{config_from_env, internal_response, now, query_of, random_u64};
use crate::scheduler::{Job, Scheduler};

/// Most leases one sweep ends (the rest wait for the next, a sync interval later).
const SWEEP_LIMIT: usize = 10_000;
/// How soon after a join or a leave its report goes out, when the last one is older than a
/// sync interval: joins and leaves arriving meanwhile share it.
const REPORT_DELAY_MS: u64 = 50;

struct Inner {
    config: Config,
    store: LeaseStore,
    reporter: ReplicaId,
    seq: u64,
    region: String,
    tally: Tally,
    scheduler: Scheduler,
    /// When the last report went out.
    last_report: Option<Timestamp>,
    /// When the last push went out.
    last_push: Option<Timestamp>,
    /// Sessions of sockets closed while this instance lives (the runtime may still list them).
    closed: HashSet<String>,
    /// Ids whose total reads found stale.
    refresh: BTreeSet<String>,
    /// Ids being read from the merger, with the reads waiting for them.
    fetching: HashMap<String, Vec<oneshot::Sender<()>>>,
}

impl Loaded for Inner {
    fn scheduler(&mut self) -> &mut Scheduler {
        &mut self.scheduler
    }
}

impl Inner {
    fn want(&mut self, job: Job, at: Timestamp) -> Option<Timestamp> {
        self.scheduler.want(job, at, now())
    }

    /// Own sessions changed: a report soon (at most one per sync interval), and a push.
    fn changed(&mut self, now: Timestamp) -> Option<Timestamp> {
        let soonest = now.plus_ms(REPORT_DELAY_MS);
        let at = self.last_report.map_or(soonest, |t| {
            t.plus_ms(self.config.sync_interval_ms).max(soonest)
        });
        let report = self.want(Job::Report, at);
        self.want_push(now).or(report)
    }

    fn want_push(&mut self, now: Timestamp) -> Option<Timestamp> {
        if !self.tally.push_due() {
            return None;
        }
        let at = self
            .last_push
            .map_or(now, |t| t.plus_ms(self.config.presence_push_ms).max(now));
        self.want(Job::Push, at)
    }

    /// The report's lease: the session lease, and never less than two report intervals.
    fn report_ttl(&self) -> u64 {
        self.config
            .presence_ttl_ms
            .max(self.config.sync_interval_ms.saturating_mul(2))
            .min(tally_crdt::MAX_PRESENCE_TTL_MS)
    }
}

/// The viewers of the sessions routed to it.
#[durable_object]
pub struct Presence {
    shell: Shell<Inner>,
}

impl DurableObject for Presence {
    fn new(state: State, env: Env) -> Self {
        Presence {
            shell: Shell::new(state, env),
        }
    }

    /// `POST /presence` ([`Call`]) or a WebSocket upgrade at `/presence/socket?id=&region=`.
    async fn fetch(&self, mut req: Request) -> Result<Response> {
        let path = req.path();
        if path == SOCKET_PATH {
            let query = query_of(&req).unwrap_or_default();
            let mut id = None;
            let mut region = String::new();
            for (name, value) in form_urlencoded::parse(query.as_bytes()) {
                match name.as_ref() {
                    "id" => id = Some(value.into_owned()),
                    "region" => region = value.into_owned(),
                    _ => {}
                }
            }
            let Some(id) = id else {
                return internal_response(ApiError::NotFound.body(), 404);
            };
            // The Worker answers a socket's error to its client in JSON of its own.
            return match self.open_socket(&id, &region).await {
                Ok(response) => Ok(response),
                Err(e) => internal_response(e.body(), e.status()),
            };
        }
        if path != CALL_PATH {
            return internal_response(ApiError::NotFound.body(), 404);
        }
        let body = req.text().await?;
        let answer = match serde_json::from_str::<Call>(&body) {
            Ok(call) => self.call(call).await,
            Err(e) => Err(internal(format!("bad internal presence call: {e}"))),
        };
        match answer {
            Ok(view) => internal_response(
                serde_json::to_string(&view)
                    .map_err(|e| worker::Error::RustError(e.to_string()))?,
                200,
            ),
            Err(e) => internal_response(e.body(), e.status()),
        }
    }

    async fn alarm(&self) -> Result<Response> {
        if let Err(e) = self.load("").await {
            console_error!("presence object cannot load its state: {e}");
            return Response::ok("not loaded");
        }
        let now = now();
        let jobs = self.shell.due(now);
        // The push first, before any pass that awaits the merger: a request served during
        // that wait asks for the next push from `last_push`, and while this pass's push had
        // not gone out, that was the one before it, so the next came due at once and two
        // pushes went out tens of milliseconds apart (tests/tests/e2e/presence.rs saw 25 ms
        // against PRESENCE_PUSH_MS 250).
        if jobs.contains(&Job::Push) {
            self.push_pass();
        }
        for job in jobs {
            let done = match job {
                Job::Report => self.report_pass().await,
                Job::Refresh => self.refresh_pass().await,
                _ => Ok(()),
            };
            if let Err(e) = done {
                console_error!("{job:?} pass failed: {e}");
            }
        }
        self.shell.rearm().await
    }

    /// A client's ping (any message): the socket's session is renewed, and answered.
    async fn websocket_message(
        &self,
        ws: WebSocket,
        _message: WebSocketIncomingMessage,
    ) -> Result<()> {
        if let Err(e) = self.load("").await {
            console_error!("presence object cannot load its state: {e}");
            return Ok(());
        }
        match ws.deserialize_attachment::<SocketSession>() {
            Ok(Some(mut session)) => {
                session.seen_ms = now().unix_ms();
                ws.serialize_attachment(&session)?;
                ws.send(&ServerMessage::Pong)?;
            }
            _ => ws.close(Some(1008), Some("unknown socket"))?,
        }
        Ok(())
    }

    async fn websocket_close(
        &self,
        ws: WebSocket,
        _code: usize,
        _reason: String,
        _was_clean: bool,
    ) -> Result<()> {
        self.socket_ended(&ws).await;
        Ok(())
    }

    async fn websocket_error(&self, ws: WebSocket, _error: worker::Error) -> Result<()> {
        self.socket_ended(&ws).await;
        Ok(())
    }
}

impl Presence {
    /// Loads the state on first use: tables, reporter id (drawn and stored if the storage is
    /// new), region, the live leases and the open sockets, the alarm.
    async fn load(&self, region: &str) -> std::result::Result<(), String> {
        if self.shell.loaded() {
            return Ok(());
        }
        let text = |e: StoreError| e.to_string();
        let config = config_from_env(&self.shell.env).map_err(|e| e.to_string())?;
        let store = LeaseStore::open(self.shell.state.storage().sql()).map_err(text)?;
        let reporter = match store.meta(meta::REPORTER).map_err(text)? {
            Some(hex) => hex.parse::<ReplicaId>().map_err(|e| e.to_string())?,
            None => {
                let id = random_id();
                store
                    .set_meta(meta::REPORTER, &id.to_string())
                    .map_err(text)?;
                id
            }
        };
        let seq = store
            .meta(meta::SEQ)
            .map_err(text)?
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0);
        let region = match store.meta(meta::REGION).map_err(text)? {
            Some(stored) => stored,
            None if !region.is_empty() => {
                store.set_meta(meta::REGION, region).map_err(text)?;
                region.to_owned()
            }
            None => "unknown".to_owned(),
        };
        let armed = self
            .shell
            .state
            .storage()
            .get_alarm()
            .await
            .map_err(|e| e.to_string())?
            .map(Timestamp::from_unix_ms);
        if self.shell.loaded() {
            return Ok(());
        }
        let now = now();
        let mut tally = Tally::new(config.cache_counters);
        tally.set_leases(store.live_counts(now).map_err(text)?, now);
        tally.set_sockets(self.socket_counts(&HashSet::new()), now);
        let mut scheduler = Scheduler::new(armed);
        if tally.has_work() {
            let _ = scheduler.want(Job::Report, now, now);
        }
        let loaded = Inner {
            config,
            store,
            reporter,
            seq,
            region,
            tally,
            scheduler,
            last_report: None,
            last_push: None,
            closed: HashSet::new(),
            refresh: BTreeSet::new(),
            fetching: HashMap::new(),
        };
        self.shell.keep(loaded, now).await;
        Ok(())
    }

    /// Open sockets per id, leaving out the sessions in `closed`.
    fn socket_counts(&self, closed: &HashSet<String>) -> Vec<(String, u64)> {
        let mut counts: HashMap<String, u64> = HashMap::new();
        for ws in self.shell.state.get_websockets() {
            if let Ok(Some(s)) = ws.deserialize_attachment::<SocketSession>()
                && !closed.contains(&s.session)
            {
                *counts.entry(s.id).or_default() += 1;
            }
        }
        counts.into_iter().collect()
    }

    /// A join, a renewal, a leave or a read.
    async fn call(&self, call: Call) -> std::result::Result<View, ApiError> {
        self.load(&call.region).await.map_err(internal)?;
        let id = call.id;
        if let Op::Join { session } = &call.op
            && !call.trusted
            && !self
                .shell
                .with(|i| i.store.is_live(&id, session, now()).map_err(store_failed))?
        {
            crate::runtime::admit(&self.shell.env, &call.client).await?;
        }
        let now = now();
        let next = match &call.op {
            Op::Join { session } => self.shell.with(|i| {
                let live = i.store.is_live(&id, session, now).map_err(store_failed)?;
                if !live
                    && i.tally.sessions()
                        >= u64::try_from(i.config.presence_max_sessions).unwrap_or(u64::MAX)
                {
                    return Err(ApiError::TooManySessions);
                }
                let until = now.plus_ms(i.config.presence_ttl_ms);
                i.store.renew(&id, session, until).map_err(store_failed)?;
                if live {
                    Ok(None)
                } else {
                    i.tally.lease(&id, true, now);
                    Ok(i.changed(now))
                }
            })?,
            Op::Leave { session } => self.shell.with(|i| {
                let live = i.store.leave(&id, session, now).map_err(store_failed)?;
                if live {
                    i.tally.lease(&id, false, now);
                    Ok(i.changed(now))
                } else {
                    Ok(None)
                }
            })?,
            Op::Read => None,
        };
        self.shell.arm(next).await;
        self.known(&id, now, matches!(call.op, Op::Read)).await;
        Ok(self.shell.with(|i| i.tally.view(&id)))
    }

    /// Makes sure the merger's total of `id` is known (read it now, once for every call that
    /// needs it) or being refreshed (when stale). Writes (`wait` false: joins, renewals,
    /// leaves, socket opens) never wait: they are answered from what the object has and a
    /// refresh is scheduled. Only a read of an id nothing is known of waits, for at most one
    /// merger call shared by every read that needs it.
    async fn known(&self, id: &str, now: Timestamp, wait: bool) {
        enum Need {
            Nothing,
            Fetch,
            Wait(oneshot::Receiver<()>),
        }
        let (need, next, timeout_ms) = self.shell.with(|i| {
            let ttl = i.config.read_ttl_ms;
            if !i.tally.is_stale(id, now, ttl) {
                return (Need::Nothing, None, 0);
            }
            if wait && i.tally.view(id).partial {
                let need = match i.fetching.get_mut(id) {
                    Some(queue) => {
                        let (tx, rx) = oneshot::channel();
                        queue.push(tx);
                        Need::Wait(rx)
                    }
                    None => {
                        i.fetching.insert(id.to_owned(), Vec::new());
                        Need::Fetch
                    }
                };
                return (need, None, i.config.sync_timeout_ms);
            }
            let next = (i.refresh.len() < i.config.cache_counters)
                .then(|| {
                    i.refresh.insert(id.to_owned());
                    i.want(Job::Refresh, now.plus_ms(REPORT_DELAY_MS))
                })
                .flatten();
            (Need::Nothing, next, 0)
        });
        self.shell.arm(next).await;
        match need {
            Need::Nothing => {}
            Need::Fetch => {
                let result = self.read_from_merger(vec![id.to_owned()]).await;
                if let Err(e) = result {
                    console_warn!("presence read of {id} failed: {e}");
                }
                self.shell.with(|i| i.fetching.remove(id));
            }
            Need::Wait(rx) => {
                let limit = Box::pin(Delay::from(Duration::from_millis(
                    timeout_ms.saturating_add(1000),
                )));
                let _ = select(rx, limit).await;
            }
        }
    }

    async fn read_from_merger(
        &self,
        ids: Vec<String>,
    ) -> std::result::Result<(), client::MergerError> {
        let (config, read) = self.shell.with(|i| {
            (
                i.config.clone(),
                PresenceRead {
                    version: PREVIOUS_VERSION,
                    reporter: Some(i.reporter),
                    ids,
                },
            )
        });
        let response = client::read_presence(&config, &read).await?;
        let now = now();
        let next = self.shell.with(|i| {
            i.tally.heard_all(response.presence, now);
            i.want_push(now)
        });
        self.shell.arm(next).await;
        Ok(())
    }

    /// A socket at `/{id}/presence`: accepted for hibernation as a new session of `id`, and
    /// shown the count at once.
    async fn open_socket(&self, id: &str, region: &str) -> std::result::Result<Response, ApiError> {
        self.load(region).await.map_err(internal)?;
        let now = now();
        let full = self.shell.with(|i| {
            i.tally.sessions() >= u64::try_from(i.config.presence_max_sessions).unwrap_or(u64::MAX)
        });
        if full {
            return Err(ApiError::TooManySessions);
        }
        let pair = WebSocketPair::new().map_err(|e| internal(e.to_string()))?;
        let session = super::session_from_random([random_u64(), random_u64()]);
        self.shell
            .state
            .accept_websocket_with_tags(&pair.server, &[id]);
        pair.server
            .serialize_attachment(&SocketSession {
                id: id.to_owned(),
                session: session.clone(),
                seen_ms: now.unix_ms(),
            })
            .map_err(|e| internal(e.to_string()))?;
        let next = self.shell.with(|i| {
            i.tally.socket(id, true, now);
            i.changed(now)
        });
        self.shell.arm(next).await;
        // The first message may lack other objects' viewers; the refresh's push brings them.
        self.known(id, now, false).await;
        // The socket is shown the count now; where the id's other sockets were last pushed
        // another, the next push goes to them all (else a change back to what they were
        // shown would leave this one at the count of its first message).
        let (view, ttl, next) = self.shell.with(|i| {
            let view = i.tally.view(id);
            i.tally.shown(id, view.count);
            (view, i.config.presence_ttl_ms, i.want_push(now))
        });
        self.shell.arm(next).await;
        pair.server
            .send(&ServerMessage::Count {
                id,
                count: view.count,
                updated_at: view.updated_at,
                sent_at: self::now(),
                session: Some(&session),
                ttl_ms: Some(ttl),
            })
            .map_err(|e| internal(e.to_string()))?;
        Response::from_websocket(pair.client).map_err(|e| internal(e.to_string()))
    }

    /// A socket closed or failed: its session ends now.
    async fn socket_ended(&self, ws: &WebSocket) {
        if let Err(e) = self.load("").await {
            console_error!("presence object cannot load its state: {e}");
            return;
        }
        let Ok(Some(session)) = ws.deserialize_attachment::<SocketSession>() else {
            return;
        };
        let now = now();
        let next = self.shell.with(|i| {
            if !i.closed.insert(session.session.clone()) {
                return None; // the sweep closed it and counted it already
            }
            i.tally.socket(&session.id, false, now);
            i.changed(now)
        });
        // Completes the closing handshake; the socket may be closed already.
        let _ = ws.close(Some(1000), Some("session ended"));
        self.shell.arm(next).await;
    }

    /// The sweep, then one report of the live-session counts.
    async fn report_pass(&self) -> std::result::Result<(), StoreError> {
        let now = now();
        // Sockets whose client stopped pinging are closed; their sessions end.
        let ttl = self.shell.with(|i| i.config.presence_ttl_ms);
        for ws in self.shell.state.get_websockets() {
            match ws.deserialize_attachment::<SocketSession>() {
                Ok(Some(s)) => {
                    let silent = now.millis_since(Timestamp::from_unix_ms(s.seen_ms)) >= ttl;
                    let closed = self.shell.with(|i| i.closed.contains(&s.session));
                    if silent && !closed {
                        self.shell.with(|i| i.closed.insert(s.session.clone()));
                        let _ = ws.close(Some(4000), Some("lease expired: no ping"));
                    }
                }
                _ => {
                    let _ = ws.close(Some(1008), Some("unknown socket"));
                }
            }
        }
        let closed = self.shell.with(|i| i.closed.clone());
        let sockets = self.socket_counts(&closed);
        let (report, config) = self.shell.with(|i| {
            while i.store.expire(now, SWEEP_LIMIT)? == SWEEP_LIMIT {}
            let leases = i.store.live_counts(now)?;
            i.tally.set_leases(leases, now);
            i.tally.set_sockets(sockets, now);
            let counts = i.tally.report(MAX_COUNTERS_PER_SYNC);
            if counts.is_empty() {
                i.tally.trim();
                return Ok::<_, StoreError>((None, i.config.clone()));
            }
            // The sequence number is stored before the report goes out, so a restarted object
            // never sends a number the merger has seen.
            i.seq += 1;
            i.store.set_meta(meta::SEQ, &i.seq.to_string())?;
            i.last_report = Some(now);
            let report = PresenceReport {
                version: PREVIOUS_VERSION,
                reporter: i.reporter,
                region: i.region.clone(),
                seq: i.seq,
                at: now,
                ttl_ms: i.report_ttl(),
                counts,
            };
            Ok((Some(report), i.config.clone()))
        })?;
        let Some(report) = report else {
            let next = self.shell.with(|i| i.want_push(now));
            self.shell.arm(next).await;
            return Ok(());
        };
        let answer = client::report_presence(&config, &report).await;
        let next = self.shell.with(|i| {
            let at = self::now();
            match answer {
                Ok(response) => {
                    i.scheduler.succeeded();
                    i.tally.reported(&report.counts, response.presence, at);
                    if i.tally.has_work() {
                        let _ = i.want(Job::Report, now.plus_ms(i.config.sync_interval_ms));
                    }
                }
                Err(e) => {
                    let wait = i
                        .scheduler
                        .failed(at, i.config.max_backoff_ms, random_u64());
                    console_warn!("presence report failed ({e}); retrying in {wait} ms");
                    let _ = i.want(Job::Report, at.plus_ms(wait));
                }
            }
            i.tally.trim();
            i.want_push(at)
        });
        self.shell.arm(next).await;
        Ok(())
    }

    /// One `POST /v1/read/presence` for the ids reads found stale.
    async fn refresh_pass(&self) -> std::result::Result<(), StoreError> {
        let ids = self
            .shell
            .with(|i| take_first(&mut i.refresh, MAX_COUNTERS_PER_SYNC));
        if ids.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.read_from_merger(ids.clone()).await {
            self.shell.with(|i| {
                let at = now();
                let wait = i
                    .scheduler
                    .failed(at, i.config.max_backoff_ms, random_u64());
                console_warn!("presence refresh failed ({e}); retrying in {wait} ms");
                i.refresh.extend(ids);
                let _ = i.want(Job::Refresh, at.plus_ms(wait));
            });
        }
        Ok(())
    }

    /// Sends each id's sockets its count, where it changed since the last push.
    fn push_pass(&self) {
        let now = now();
        let pushes = self.shell.with(|i| {
            i.last_push = Some(now);
            i.tally
                .to_push(|id| !self.shell.state.get_websockets_with_tag(id).is_empty())
        });
        for (id, view) in &pushes {
            let message = ServerMessage::Count {
                id,
                count: view.count,
                updated_at: view.updated_at,
                sent_at: now,
                session: None,
                ttl_ms: None,
            };
            for ws in self.shell.state.get_websockets_with_tag(id) {
                // A socket that is closing refuses; its close event ends its session.
                let _ = ws.send(&message);
            }
        }
    }
}
