//! The tally edge worker: counts hits in Durable Objects, each one a CRDT replica, and syncs
//! them to the merger.
//!
//! - `lib.rs` (this file): the Worker entry point. It parses and checks the public request
//!   ([`api`]), applies the write policy (public deltas, the write key), picks the object that
//!   serves the counter ([`routing`]: consistent hashing over the region's partitions, spread
//!   over several objects for hot counters) and forwards the request to it ([`internal`]),
//!   together with the isolate's other hits for that object, or joined to a read of the same
//!   counter already out ([`combine`]); then it holds the answer to what the client has already
//!   seen ([`session`]) and adds CORS.
//! - The Durable Objects, each a wing of its own on the shell they share ([`object`]: the
//!   loaded state, the one alarm ([`scheduler`]), the `meta` storage): [`counter`] (the
//!   per-counter logic, its storage, the `Replica` object), [`presence`] and [`unique`]; the
//!   merger client ([`client`]) beside them.
//! - [`isolate_cache`]: recent answers in the isolate's memory, so popular counters are read
//!   without a round trip to their object.
//! - [`config`]: vars and secrets, parsed once; [`runtime`]: what the runtime gives every
//!   part (clock, randomness, JSON answers, the configuration, the new-id budget, object
//!   calls), beneath the Worker and the objects alike.

pub mod api;
pub mod client;
pub mod combine;
pub mod config;
pub mod counter;
pub mod internal;
pub mod isolate_cache;
pub mod milestone;
pub mod object;
pub mod presence;
pub mod routing;
pub mod runtime;
pub mod scheduler;
pub mod session;
pub mod unique;

use futures_util::future::join_all;
use tally_crdt::{Count, CounterKey, CounterKind, SlotTotals};
use worker::worker_sys::{Context, web_sys};
use worker::{Env, Headers, Method, Request, Result, console_error};

use crate::api::{
    ApiError, BatchBody, BatchItem, CountBody, HitRequest, MAX_BODY_BYTES, Route, Won, parse_hit,
    parse_ids, parse_path,
};
use crate::config::{AllowedOrigins, Config};
use crate::counter::View;
use crate::internal::{Answer, Hit, Read};
use crate::isolate_cache::IsolateCache;
use crate::milestone::Verdict;
use crate::routing::Region;
use crate::runtime::{
    CORS_HEADERS, Failure, PRESENCE_BINDING, REPLICA_BINDING, RequestContext, admit, cached_config,
    client_address, draw_spread, internal, json_response, json_response_with, now, post_to_object,
    preflight_response, query_of, random_u64, read_body, spend_hit, stub, write_key_presented,
};
use crate::session::{Session, SessionKeys};

/// Where the hit combiner's counts in this isolate are read, with the region override allowed
/// only (`wrangler dev`, tests, benchmarks): `{"hits", "calls", "combined", "alone"}`.
pub const COMBINE_STATS_PATH: &str = "/_tally/combine";
/// Header carrying the region override (when allowed).
pub const REGION_HEADER: &str = "X-Tally-Region";
/// The response header of a counter `PUT` that names the hit (a [`tally_crdt::Receipt`]):
/// look it up at the merger to learn whether it won a milestone.
pub const RECEIPT_HEADER: &str = "Tally-Receipt";
/// The header of a hit's answer from the exact path: `won`, `lost` or `pending`
/// ([`milestone::Verdict`]).
pub const MILESTONE_HEADER: &str = "Tally-Milestone";

/// The Worker's entry point, exported as `#[event(fetch)]` would export it, but with the
/// runtime's own context object, which the hit combiner ([`combine`]) registers its calls
/// with (`waitUntil`).
mod entry {
    use worker::worker_sys::{Context, web_sys};
    use worker::{Env, wasm_bindgen};

    /// The `fetch` handler the Worker's module exports.
    #[wasm_bindgen::prelude::wasm_bindgen(
        wasm_bindgen = ::worker::wasm_bindgen,
        wasm_bindgen_futures = ::worker::wasm_bindgen_futures,
        js_sys = ::worker::js_sys
    )]
    pub async fn fetch(
        req: web_sys::Request,
        env: Env,
        ctx: Context,
    ) -> Result<wasm_bindgen::JsValue, wasm_bindgen::JsValue> {
        let response = match super::fetch(req.into(), env, ctx).await {
            Ok(response) => response,
            Err(e) => {
                ::worker::console_error!("{e}");
                ::worker::Response::error("INTERNAL SERVER ERROR", 500)
                    .map_err(|e| wasm_bindgen::JsValue::from(e.to_string()))?
                    .into()
            }
        };
        Ok(response.into())
    }
}

/// What an answer says of CORS (`ALLOWED_ORIGINS`).
enum Cors {
    /// `Access-Control-Allow-Origin: *` (any origin allowed).
    Any,
    /// This allowed origin, the request's own, and `Vary: Origin`.
    Origin(String),
    /// No `Access-Control-Allow-Origin`: a request with no `Origin` (a server), or refused.
    Omit,
}

/// Answers one public request.
async fn fetch(req: Request, env: Env, ctx: Context) -> Result<web_sys::Response> {
    // With a list of allowed origins, a page of another origin is refused before anything is
    // read or counted; the `Origin` header is only read then.
    let mut cors = Cors::Any;
    if let Ok(config) = cached_config(&env)
        && let AllowedOrigins::Only(_) = &config.allowed_origins
    {
        cors = match req.headers().get("Origin").ok().flatten() {
            Some(origin) if config.allowed_origins.allows(&origin) => Cors::Origin(origin),
            Some(_) => {
                let e = ApiError::OriginNotAllowed;
                return with_cors(json_response(&e.body(), e.status())?, &Cors::Omit);
            }
            None => Cors::Omit,
        };
    }
    let response = match route(req, &env, &ctx).await {
        Ok(response) => response,
        Err(Failure::Api(e)) => {
            let body = e.body();
            match e {
                ApiError::TooManyNewIds | ApiError::TooManyHits => {
                    json_response_with(&body, e.status(), &[("Retry-After", "60")])?
                }
                // RFC 9110: a 405 lists the methods the resource has.
                ApiError::MethodNotAllowed(allow) => {
                    json_response_with(&body, e.status(), &[("Allow", allow)])?
                }
                _ => json_response(&body, e.status())?,
            }
        }
        Err(Failure::Object { status, body }) => {
            let extra: &[(&str, &str)] = if status == 429 {
                &[("Retry-After", "60")]
            } else {
                &[]
            };
            json_response_with(&body, status, extra)?
        }
    };
    // A WebSocket upgrade's answer carries the socket: passed as it is.
    if response.status() == 101 {
        return Ok(response);
    }
    with_cors(response, &cors)
}

async fn route(
    mut req: Request,
    env: &Env,
    ctx: &Context,
) -> std::result::Result<web_sys::Response, Failure> {
    if req.method() == Method::Options {
        return Ok(preflight_response(204).map_err(internal)?);
    }
    let config = cached_config(env)?;
    let path = req.path();
    // The hit combiner's counts in this isolate, for tests and benchmarks: only where the
    // region override is allowed (`wrangler dev`), never in production.
    if config.allow_region_override && path == COMBINE_STATS_PATH {
        return Ok(json_response(&combine::combine_stats(), 200).map_err(internal)?);
    }
    let route = parse_path(&path)?;
    let (region, overridden) = region_of(&req, &config)?;
    let cx = RequestContext {
        env,
        ctx,
        config,
        region,
        started: now(),
    };
    let config = &cx.config;
    let token = req.headers().get(session::HEADER).ok().flatten();
    let keys = session_keys(config);
    let mut session = Session::from_header(token.as_deref(), &keys);
    let allow = route.allow();
    // workers-rs reads any method it has no name for (QUERY, PROPFIND, ...) as GET: only a
    // method whose name comes back unchanged is the method sent.
    let method = req.method();
    if method == Method::Get && req.inner().method() != "GET" {
        return Err(ApiError::MethodNotAllowed(allow).into());
    }
    match (method, route) {
        (Method::Get | Method::Head, Route::One(key)) => {
            if let Some(view) = cached(&cx, &key) {
                return Ok(count_response(
                    config,
                    &keys,
                    &mut session,
                    &key,
                    view,
                    Some(true),
                    None,
                    &[],
                )?);
            }
            let s = draw_spread(config);
            let read = Read {
                keys: vec![key.clone()],
                region: cx.region.clone(),
            };
            let answers = call_read(&cx, &key, s, &read, true).await?;
            let view = answers
                .into_iter()
                .find(|a| a.key == key)
                .and_then(|a| a.view)
                .ok_or(ApiError::Unavailable)?;
            remember(&cx, &key, view);
            Ok(count_response(
                config,
                &keys,
                &mut session,
                &key,
                view,
                Some(false),
                None,
                &[],
            )?)
        }
        (Method::Put, Route::One(key)) => {
            let HitRequest { add, visitor } = read_hit(&mut req, key.kind()).await?;
            let trusted = authorize(&req, config, key.kind(), add)?;
            let client = client_address(&req);
            if !trusted {
                spend_hit(env, &client).await?;
            }
            let hit = Hit {
                key: key.clone(),
                add,
                region: cx.region.clone(),
                client,
                trusted,
                visitor,
            };
            // What this isolate's cache knew before the hit, plus the hit, is a lower bound of
            // the count after it: the view cached and shown to everyone is at least that, even
            // from an object that has not heard of the counter yet.
            let cached_before = cached(&cx, &key);
            let floor = session.floor(&key);
            let s = draw_spread(config);
            // A test's fault: only where a test names the region.
            let drop = overridden && req.headers().has(combine::DROP_HEADER).unwrap_or(false);
            let answer = call_hit(&cx, s, &hit, drop).await?;
            if answer.key != key {
                return Err(ApiError::Internal.into());
            }
            let mut view = answer.view.ok_or(ApiError::Internal)?;
            let receipt = receipt_of(config, &key, add, answer.slot);
            view.raise_after_hit(cached_before.map(|v| v.bound()).unwrap_or_default(), add);
            if view.age_ms.is_none() {
                view.age_ms = cached_before.and_then(|v| v.age_ms);
            }
            remember(&cx, &key, view);
            // What the client's token says it saw, plus its hit, raises its own answer only.
            let mut shown = view;
            shown.raise_after_hit(floor, add);
            // The exact path's verdict: `Tally-Milestone: won | lost | pending`, and for a
            // winner the milestone in the body.
            let won = match &answer.verdict {
                Some(Verdict::Won { n, label }) => Some(Won {
                    n: Count(i128::from(*n)),
                    label: label.clone(),
                }),
                _ => None,
            };
            let mut extra: Vec<(&str, &str)> = Vec::with_capacity(2);
            if let Some(verdict) = &answer.verdict {
                extra.push((MILESTONE_HEADER, verdict.header()));
            }
            if let Some(receipt) = &receipt {
                extra.push((RECEIPT_HEADER, receipt));
            }
            Ok(count_response(
                config,
                &keys,
                &mut session,
                &key,
                shown,
                None,
                won,
                &extra,
            )?)
        }
        (method, Route::Presence(id)) => presence_route(&mut req, &cx, method, &id).await,
        (method, Route::Unique(id)) => unique::route(&mut req, &cx, method, &id).await,
        (Method::Get | Method::Head, Route::Batch(kind)) => {
            let ids = parse_ids(kind, query_of(&req).as_deref())?;
            batch_read(&cx, &keys, &mut session, ids).await
        }
        _ => Err(ApiError::MethodNotAllowed(allow).into()),
    }
}

/// `/{id}/presence`: join or renew (`PUT`), leave (`DELETE ?session=`), read (`GET
/// [?session=]`), or open a socket (`GET` with `Upgrade: websocket`).
async fn presence_route(
    req: &mut Request,
    cx: &RequestContext<'_>,
    method: Method,
    id: &str,
) -> std::result::Result<web_sys::Response, Failure> {
    let RequestContext {
        env,
        config,
        region,
        ..
    } = cx;
    let client = client_address(req);
    let trusted = write_key_presented(req, config)?;
    let upgrade = req.headers().get("Upgrade").ok().flatten();
    let (op, session) = match method {
        Method::Get if upgrade.is_some_and(|u| u.eq_ignore_ascii_case("websocket")) => {
            if !trusted {
                admit(env, &client).await?;
            }
            // A socket is a session of its own: it goes to the object of a fresh session id.
            let session = presence::session_from_random([random_u64(), random_u64()]);
            let partition = routing::presence_partition(id, &session, config.partitions);
            let name = routing::presence_object_name(region, partition);
            let stub = stub(env, PRESENCE_BINDING, &name, region)?;
            let query = form_urlencoded::Serializer::new(String::new())
                .append_pair("id", id)
                .append_pair("region", region)
                .finish();
            let url = format!("https://object{}?{query}", presence::SOCKET_PATH);
            let headers = Headers::new();
            headers.set("Upgrade", "websocket").map_err(internal)?;
            let init = worker::worker_sys::web_sys::RequestInit::new();
            init.set_headers(headers.as_ref());
            let request: Request =
                worker::worker_sys::web_sys::Request::new_with_str_and_init(&url, &init)
                    .map_err(|e| internal(worker::Error::from(e)))?
                    .into();
            let mut response = stub.fetch_with_request(request).await.map_err(internal)?;
            if response.status_code() == 101 {
                return Ok(response.into());
            }
            // The object's refusal (JSON without headers), answered as the Worker's own.
            let status = response.status_code();
            let body = response.text().await.map_err(internal)?;
            return Err(Failure::Object { status, body });
        }
        Method::Get | Method::Head => {
            let session = presence::parse_session_query(query_of(req).as_deref())?;
            (presence::Op::Read, session)
        }
        Method::Put => {
            let bytes = read_body(req, MAX_BODY_BYTES).await?;
            let content_type = req.headers().get("Content-Type").ok().flatten();
            let session = presence::parse_join(content_type.as_deref(), &bytes)?
                .unwrap_or_else(|| presence::session_from_random([random_u64(), random_u64()]));
            (
                presence::Op::Join {
                    session: session.clone(),
                },
                Some(session),
            )
        }
        Method::Delete => {
            let query = query_of(req);
            let session = presence::parse_session_query(query.as_deref())?.ok_or(
                ApiError::SessionRequired(
                    "a leave names its session: DELETE /{id}/presence?session=…",
                ),
            )?;
            (
                presence::Op::Leave {
                    session: session.clone(),
                },
                Some(session),
            )
        }
        _ => return Err(ApiError::MethodNotAllowed(Route::Presence(String::new()).allow()).into()),
    };
    let joined = matches!(op, presence::Op::Join { .. });
    let partition = routing::presence_partition(
        id,
        session.as_deref().unwrap_or_default(),
        config.partitions,
    );
    let name = routing::presence_object_name(region, partition);
    let call = presence::Call {
        id: id.to_owned(),
        region: region.clone(),
        op,
        client,
        trusted,
    };
    let body = serde_json::to_string(&call).map_err(|_| ApiError::Internal)?;
    let text = post_to_object(
        env,
        PRESENCE_BINDING,
        &name,
        region,
        presence::CALL_PATH,
        body,
    )
    .await?;
    let view: presence::View = serde_json::from_str(&text).map_err(|e| {
        console_error!("unreadable presence answer: {e}");
        ApiError::Internal
    })?;
    let body = presence::PresenceBody {
        count: view.count,
        updated_at: view.updated_at,
        session: if joined { session } else { None },
        ttl_ms: joined.then_some(config.presence_ttl_ms),
    };
    let text = serde_json::to_string(&body).map_err(|_| ApiError::Internal)?;
    let extra: &[(&str, &str)] = if view.partial {
        &[("Tally-Estimate", "partial")]
    } else {
        &[]
    };
    Ok(json_response_with(&text, 200, extra).map_err(internal)?)
}

/// Reads many counters: one internal read per object that serves some of them, all at once.
async fn batch_read(
    cx: &RequestContext<'_>,
    session_keys: &SessionKeys,
    session: &mut Session,
    keys: Vec<CounterKey>,
) -> std::result::Result<web_sys::Response, Failure> {
    let config = &cx.config;
    let s = draw_spread(config);
    let mut views: std::collections::HashMap<CounterKey, std::result::Result<View, ApiError>> =
        Default::default();
    let mut groups: std::collections::BTreeMap<u32, Vec<CounterKey>> = Default::default();
    for key in &keys {
        match cached(cx, key) {
            Some(view) => {
                views.insert(key.clone(), Ok(view));
            }
            None => groups
                .entry(routing::partition(key, s, config.partitions))
                .or_default()
                .push(key.clone()),
        }
    }
    let calls = groups.into_values().map(|group| async move {
        let read = Read {
            keys: group.clone(),
            region: cx.region.clone(),
        };
        let first = group.first().expect("groups are not empty").clone();
        (group, call_read(cx, &first, s, &read, false).await)
    });
    for (group, result) in join_all(calls).await {
        match result {
            Ok(answers) => {
                for a in answers {
                    if let Some(view) = a.view {
                        remember(cx, &a.key, view);
                    }
                    views.insert(a.key, a.view.ok_or(ApiError::Unavailable));
                }
            }
            Err(_) => {
                for key in group {
                    views.insert(key, Err(ApiError::Unavailable));
                }
            }
        }
    }
    let items = keys
        .iter()
        .map(|key| match views.remove(key) {
            Some(Ok(view)) => match session.answer(key, view.bound(), false).value().map(Count) {
                Ok(count) => BatchItem::Count {
                    id: key.id().to_owned(),
                    body: CountBody {
                        count,
                        updated_at: view.updated_at,
                        milestone: None,
                    },
                },
                Err(e) => BatchItem::error(key.id(), &ApiError::Overflow(e)),
            },
            Some(Err(e)) => BatchItem::error(key.id(), &e),
            None => BatchItem::error(key.id(), &ApiError::Unavailable),
        })
        .collect();
    let body = serde_json::to_string(&BatchBody { items }).map_err(|_| ApiError::Internal)?;
    let token = session.token(session_keys);
    Ok(json_response_with(&body, 200, &[(session::HEADER, &token)]).map_err(internal)?)
}

thread_local! {
    /// This isolate's read cache, made with the configuration on first use.
    static CACHE: std::cell::RefCell<Option<IsolateCache>> = const { std::cell::RefCell::new(None) };
}

/// A fresh view of `key` from this isolate's cache.
fn cached(cx: &RequestContext<'_>, key: &CounterKey) -> Option<View> {
    with_cache(&cx.config, |cache| cache.get(&cx.region, key, cx.started))
}

/// Keeps an object's answer in this isolate's cache.
fn remember(cx: &RequestContext<'_>, key: &CounterKey, view: View) {
    // Kept as of the request's start: it expires no later than it would from its answer.
    with_cache(&cx.config, |cache| {
        cache.put(&cx.region, key, view, cx.started)
    });
}

/// Runs `f` on this isolate's cache, made with the configuration on first use.
fn with_cache<T>(config: &Config, f: impl FnOnce(&mut IsolateCache) -> T) -> T {
    CACHE.with(|c| {
        f(c.borrow_mut().get_or_insert_with(|| {
            IsolateCache::new(config.edge_cache_counters, config.edge_cache_ms)
        }))
    })
}

/// The answer to a single read or hit: the count held to what the client has seen, with
/// `Age` when the global part is older than the read TTL, `Tally-Estimate: partial` when no
/// global value was heard yet, `Tally-Cache: hit` or `miss` for a read (whether this
/// isolate's cache answered it), and the new session token.
#[allow(
    clippy::too_many_arguments,
    reason = "one answer's parts, each from a different place of the route"
)]
fn count_response(
    config: &Config,
    session_keys: &SessionKeys,
    session: &mut Session,
    key: &CounterKey,
    view: View,
    cache_hit: Option<bool>,
    milestone: Option<Won>,
    extra: &[(&str, &str)],
) -> std::result::Result<web_sys::Response, ApiError> {
    // A hit's answer (no cache flag) is a write of the counter.
    let shown = session.answer(key, view.bound(), cache_hit.is_none());
    let count = shown.value().map(Count).map_err(ApiError::Overflow)?;
    let body = serde_json::to_string(&CountBody {
        count,
        updated_at: view.updated_at,
        milestone,
    })
    .map_err(|_| ApiError::Internal)?;
    let token = session.token(session_keys);
    let age;
    let mut headers: Vec<(&str, &str)> = vec![(session::HEADER, &token)];
    match view.age_ms {
        Some(ms) if ms >= config.read_ttl_ms => {
            age = (ms / 1000).to_string();
            headers.push(("Age", &age));
        }
        Some(_) => {}
        None => headers.push(("Tally-Estimate", "partial")),
    }
    if let Some(hit) = cache_hit {
        headers.push(("Tally-Cache", if hit { "hit" } else { "miss" }));
    }
    headers.extend_from_slice(extra);
    json_response_with(&body, 200, &headers).map_err(internal)
}

/// The receipt of a counter hit (increments only; a gauge has no N-th hit): the units of
/// the replica's slot it added, signed with the sync token, which the merger holds too, so
/// that only the edge can make one (see [`tally_crdt::Receipt`]).
fn receipt_of(
    config: &Config,
    key: &CounterKey,
    add: SlotTotals,
    slot: Option<(tally_crdt::ReplicaId, u64)>,
) -> Option<String> {
    let (replica, end) = slot?;
    let delta = u32::try_from(add.p).ok().filter(|&d| d >= 1)?;
    (key.kind() == CounterKind::G && u64::from(delta) <= end).then(|| {
        tally_crdt::Receipt {
            replica,
            end,
            delta,
        }
        .encode(config.sync_token.as_bytes(), key.id())
    })
}

/// Reads and parses a `PUT` body.
async fn read_hit(
    req: &mut Request,
    kind: CounterKind,
) -> std::result::Result<HitRequest, ApiError> {
    let bytes = read_body(req, MAX_BODY_BYTES).await?;
    let content_type = req.headers().get("Content-Type").ok().flatten();
    parse_hit(kind, content_type.as_deref(), &bytes)
}

/// The write policy: public `PUT`s on counters add at most `PUBLIC_MAX_DELTA`; larger deltas
/// and gauge writes need the write key (unless `PUBLIC_GAUGES`). Returns whether the
/// request carries the write key. A key that is presented but wrong is refused, whatever
/// the delta.
fn authorize(
    req: &Request,
    config: &Config,
    kind: CounterKind,
    add: SlotTotals,
) -> std::result::Result<bool, ApiError> {
    if write_key_presented(req, config)? {
        return Ok(true);
    }
    match kind {
        CounterKind::G if add.p > config.public_max_delta => {
            Err(ApiError::WriteKeyRequired(format!(
                "a public hit adds at most {}; larger deltas need the write key (Authorization: Bearer <key>)",
                config.public_max_delta
            )))
        }
        CounterKind::Pn if !config.public_gauges => Err(ApiError::WriteKeyRequired(
            "gauge writes need the write key (Authorization: Bearer <key>)".into(),
        )),
        _ => Ok(false),
    }
}

/// Reads `read` from the object that serves `key` (spread index `s`), or joins a read of it
/// already out from this isolate ([`combine::read`]) when it is `shared`: concurrent reads of
/// one counter that miss the isolate cache share one object request.
async fn call_read(
    cx: &RequestContext<'_>,
    key: &CounterKey,
    s: u32,
    read: &Read,
    shared: bool,
) -> std::result::Result<Vec<Answer>, Failure> {
    let (name, hint) = replica_of(cx, key, s);
    let flight = if shared {
        format!("{}/{key}", &*cx.region)
    } else {
        String::new()
    };
    let target = (REPLICA_BINDING, name.as_str(), hint);
    let form = cx.config.object_messages;
    combine::read(cx.env, cx.ctx, target, form, &flight, read).await
}

/// The name and location hint of the counter object that serves `key` (spread index `s`) in
/// the request's region.
fn replica_of(cx: &RequestContext<'_>, key: &CounterKey, s: u32) -> (String, Option<&'static str>) {
    let partition = routing::partition(key, s, cx.config.partitions);
    (
        routing::object_name(&cx.region, partition),
        routing::location_hint(&cx.region),
    )
}

/// Sends `hit` to the object that serves its counter (spread index `s`), combined with the
/// isolate's other hits for that object ([`combine`]); `drop`: see [`combine::DROP_HEADER`].
async fn call_hit(
    cx: &RequestContext<'_>,
    s: u32,
    hit: &Hit,
    drop: bool,
) -> std::result::Result<Answer, Failure> {
    let (name, hint) = replica_of(cx, &hit.key, s);
    let target = (REPLICA_BINDING, name.as_str(), hint);
    combine::hit(
        cx.env,
        cx.ctx,
        target,
        cx.config.object_messages,
        (hit, drop),
    )
    .await
}

/// The region of a request: the continent Cloudflare reports, or (only when
/// `ALLOW_REGION_OVERRIDE` is set, for `wrangler dev` and tests) the `X-Tally-Region` header;
/// and whether it was that header.
fn region_of(req: &Request, config: &Config) -> std::result::Result<(Region, bool), ApiError> {
    if config.allow_region_override
        && let Some(region) = req.headers().get(REGION_HEADER).ok().flatten()
    {
        return Ok((
            Region::try_from(region).map_err(ApiError::InvalidRegion)?,
            true,
        ));
    }
    let continent = req.cf().and_then(|cf| cf.continent()).unwrap_or_default();
    Ok((
        Region::try_from(continent).unwrap_or_else(|_| Region::unknown()),
        false,
    ))
}

/// The keys of session tokens, made from the configuration on first use in this isolate and
/// shared after that: a request holds the isolate's keys (an `Rc`: an isolate runs on one
/// thread), not a copy of their HMAC states.
fn session_keys(config: &Config) -> std::rc::Rc<SessionKeys> {
    thread_local! {
        static KEYS: std::cell::OnceCell<std::rc::Rc<SessionKeys>> =
            const { std::cell::OnceCell::new() };
    }
    KEYS.with(|k| {
        std::rc::Rc::clone(k.get_or_init(|| {
            std::rc::Rc::new(SessionKeys::new(
                &config.session_key,
                config.session_key_previous.as_deref(),
            ))
        }))
    })
}

/// The response with CORS headers as `cors` says: every answer of the Worker's own has them
/// for any origin ([`runtime::json_response_with`], [`runtime::preflight_response`]); for one
/// allowed origin, or none, they are changed in place.
fn with_cors(response: web_sys::Response, cors: &Cors) -> Result<web_sys::Response> {
    let allow = CORS_HEADERS[0].0;
    match cors {
        Cors::Any => {}
        Cors::Origin(origin) => {
            let headers = response.headers();
            headers.set(allow, origin)?;
            headers.append("Vary", "Origin")?;
        }
        Cors::Omit => response.headers().delete(allow)?,
    }
    Ok(response)
}
