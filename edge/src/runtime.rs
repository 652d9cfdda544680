//! What the Workers runtime gives every part of the edge, borrowed by the Worker's routes
//! and by each Durable Object alike: the clock and randomness, JSON answers, the
//! configuration, the new-id budget, calls to objects, and what a request tells of its client
//! (address, body, write key).

use subtle::ConstantTimeEq;
use tally_crdt::Timestamp;
use worker::wasm_bindgen::prelude::wasm_bindgen;
use worker::wasm_bindgen::{JsCast, JsValue};
use worker::wasm_bindgen_futures::JsFuture;
use worker::worker_sys::web_sys;
use worker::{Env, Request, Response, ResponseBuilder, Result, console_error};

use crate::api::ApiError;
use crate::config::{Config, ConfigError};
use crate::routing::{self, Region};

/// Durable Object binding, as in `wrangler.toml`.
pub const REPLICA_BINDING: &str = "REPLICA";
/// Durable Object binding of the presence objects, as in `wrangler.toml`.
pub const PRESENCE_BINDING: &str = "PRESENCE";
/// Durable Object binding of the unique-visitor objects, as in `wrangler.toml`.
pub const UNIQUE_BINDING: &str = "UNIQUE";
/// Rate-limiting binding of the new-id budget, as in `wrangler.toml`.
pub const NEW_IDS_BINDING: &str = "NEW_IDS";
/// Rate-limiting binding of the per-client hit budget, as in `wrangler.toml`'s environments.
pub const HITS_BINDING: &str = "HITS";

/// What every step of a public request works with: the Worker's environment, its
/// configuration, and the request's region.
pub struct RequestContext<'a> {
    /// The Worker's environment (bindings, vars, secrets).
    pub env: &'a Env,
    /// The runtime's context of the request (its `waitUntil`).
    pub ctx: &'a worker::worker_sys::Context,
    /// The configuration, parsed once per isolate.
    pub config: Config,
    /// The region the request is served in.
    pub region: Region,
    /// When the Worker began to answer it (one clock read for the request).
    pub started: Timestamp,
}

/// How a request failed: an API error decided here, or an object's error passed through.
pub enum Failure {
    /// An error of the edge's own.
    Api(ApiError),
    /// An object's error answer, passed through.
    Object {
        /// Its status.
        status: u16,
        /// Its body.
        body: String,
    },
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Failure {
        Failure::Api(e)
    }
}

/// The client's address as Cloudflare reports it (`unknown` without one), for the budgets.
pub(crate) fn client_address(req: &Request) -> String {
    req.headers()
        .get("CF-Connecting-IP")
        .ok()
        .flatten()
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Reads a `PUT` body of at most `limit` bytes (else [`ApiError::BodyTooLarge`], checked again
/// by the parsers on the bytes read).
pub(crate) async fn read_body(
    req: &mut Request,
    limit: usize,
) -> std::result::Result<Vec<u8>, ApiError> {
    let declared = req
        .headers()
        .get("Content-Length")
        .ok()
        .flatten()
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(ApiError::BodyTooLarge);
    }
    req.bytes()
        .await
        .map_err(|_| ApiError::InvalidBody("unreadable body".into()))
}

/// The query of a request's URL (after `?`, before `#`; `None` without a `?`), from the URL
/// the runtime serialized: no `url::Url` parsed for it (the `url` crate and its IDNA tables
/// are then left out of the module).
pub fn query_of(req: &Request) -> Option<String> {
    crate::api::url_query(&req.inner().url()).map(str::to_owned)
}

/// Now, from the runtime's clock: one `Date.now()` call, not a Date object and its `getTime`.
pub fn now() -> Timestamp {
    #[allow(
        clippy::cast_possible_truncation,
        reason = "Date.now() is an integral count of ms below 2^53"
    )]
    let ms = worker::js_sys::Date::now() as i64;
    Timestamp::from_unix_ms(ms)
}

/// Whether the request carries the application's write key (`Authorization: Bearer <key>`,
/// compared in constant time). No `Authorization` header: `false`.
///
/// # Errors
///
/// [`ApiError::InvalidWriteKey`] for any other `Authorization` (a wrong key, another scheme,
/// or a key when the worker has none).
pub(crate) fn write_key_presented(
    req: &Request,
    config: &Config,
) -> std::result::Result<bool, ApiError> {
    let Some(value) = req.headers().get("Authorization").ok().flatten() else {
        return Ok(false);
    };
    match (bearer(&value), &config.write_key) {
        (Some(p), Some(key)) if bool::from(p.as_bytes().ct_eq(key.as_bytes())) => Ok(true),
        _ => Err(ApiError::InvalidWriteKey),
    }
}

/// The token of `Bearer <token>` (scheme case-insensitive, RFC 9110).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// The stub of object `name` of class `binding`, with the location hint of `region`.
pub(crate) fn stub(
    env: &Env,
    binding: &str,
    name: &str,
    region: &str,
) -> std::result::Result<worker::Stub, ApiError> {
    let namespace = env.durable_object(binding).map_err(internal)?;
    let id = namespace.id_from_name(name).map_err(internal)?;
    match routing::location_hint(region) {
        Some(hint) => id.get_stub_with_location_hint(hint),
        None => id.get_stub(),
    }
    .map_err(internal)
}

/// `POST https://object{path}` with `body` to object `name` of class `binding`: the answer's
/// text, or the object's error passed through. On the runtime's own request and response
/// objects: `worker::Request` and `worker::Response` read the method, URL, headers and `cf` of
/// each one made, across the boundary, and nothing here needs them.
pub(crate) async fn post_to_object(
    env: &Env,
    binding: &str,
    name: &str,
    region: &str,
    path: &str,
    body: String,
) -> std::result::Result<String, Failure> {
    let failed = |e: JsValue| -> Failure { internal(worker::Error::from(e)).into() };
    let stub = stub(env, binding, name, region)?;
    let init = web_sys::RequestInit::new();
    init.set_method("POST");
    init.set_body(&JsValue::from(body));
    let request = web_sys::Request::new_with_str_and_init(&format!("https://object{path}"), &init)
        .map_err(failed)?;
    let object: worker::worker_sys::DurableObject = stub.into_rpc();
    let response: web_sys::Response =
        JsFuture::from(object.fetch_with_request(&request).map_err(failed)?)
            .await
            .map_err(failed)?
            .unchecked_into();
    let status = response.status();
    let text = JsFuture::from(response.text().map_err(failed)?)
        .await
        .map_err(failed)?
        .as_string()
        .unwrap_or_default();
    if status != 200 {
        return Err(Failure::Object { status, body: text });
    }
    Ok(text)
}

/// The Worker's configuration, parsed once per isolate: vars and secrets do not change while
/// an isolate lives (a new deployment or secret starts new isolates).
pub(crate) fn cached_config(env: &Env) -> std::result::Result<Config, ApiError> {
    thread_local! {
        static CONFIG: std::cell::OnceCell<Config> = const { std::cell::OnceCell::new() };
    }
    if let Some(config) = CONFIG.with(|c| c.get().cloned()) {
        return Ok(config);
    }
    let config = config_from_env(env).map_err(|e| {
        console_error!("configuration: {e}");
        ApiError::Internal
    })?;
    CONFIG.with(|c| c.get_or_init(|| config.clone()).clone());
    Ok(config)
}

/// The configuration from the Worker's environment (vars and secrets).
pub fn config_from_env(env: &Env) -> std::result::Result<Config, ConfigError> {
    Config::from_lookup(|name| {
        env.secret(name)
            .ok()
            .map(|s| s.to_string())
            .or_else(|| env.var(name).ok().map(|v| v.to_string()))
    })
}

/// An object's answer to the Worker: status and body, no header (the Worker reads its text
/// and status, and no client sees it), so no `Headers` object is made and filled for it. Not
/// for an answer the Worker passes through (a presence socket's upgrade): that one is JSON.
pub fn internal_response(body: impl Into<Vec<u8>>, status: u16) -> Result<Response> {
    Ok(ResponseBuilder::new()
        .with_status(status)
        .fixed(body.into()))
}

/// The CORS headers of every public answer: which origins may read it, and which of its
/// headers a page may read.
pub const CORS_HEADERS: [(&str, &str); 2] = [
    ("Access-Control-Allow-Origin", "*"),
    (
        "Access-Control-Expose-Headers",
        "Age, Tally-Estimate, Tally-Session, Tally-Cache, Tally-Receipt, Tally-Milestone, Retry-After",
    ),
];

/// The CORS headers a preflight's answer adds (browsers read them there only): the methods and
/// request headers a page may use, and how long the browser may keep that.
pub const PREFLIGHT_HEADERS: [(&str, &str); 3] = [
    ("Access-Control-Allow-Methods", "GET, PUT, DELETE, OPTIONS"),
    (
        "Access-Control-Allow-Headers",
        "Content-Type, Authorization, Tally-Session",
    ),
    ("Access-Control-Max-Age", "86400"),
];

#[wasm_bindgen(
    wasm_bindgen = worker::wasm_bindgen,
    inline_js = r#"
let JSON_HEADERS = null;
let PREFLIGHT = null;
export function reply_headers(json, preflight) {
  JSON_HEADERS = JSON.parse(json);
  PREFLIGHT = JSON.parse(preflight);
}
export function json_reply(body, status, extra) {
  const headers = JSON_HEADERS.slice();
  if (extra) {
    const parts = extra.split("\n");
    for (let i = 0; i + 1 < parts.length; i += 2) headers.push([parts[i], parts[i + 1]]);
  }
  return new Response(body, { status, headers });
}
export function preflight_reply(status) {
  return new Response(null, { status, headers: PREFLIGHT });
}
"#
)]
extern "C" {
    fn reply_headers(json: &str, preflight: &str);
    #[wasm_bindgen(catch)]
    fn json_reply(
        body: &str,
        status: u16,
        extra: &str,
    ) -> std::result::Result<web_sys::Response, JsValue>;
    #[wasm_bindgen(catch)]
    fn preflight_reply(status: u16) -> std::result::Result<web_sys::Response, JsValue>;
}

/// Hands the snippet above the headers every answer carries, once per isolate.
fn reply_headers_once() {
    thread_local! {
        static SET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    if !SET.with(std::cell::Cell::get) {
        let json: Vec<(&str, &str)> = [
            ("Content-Type", "application/json"),
            ("Cache-Control", "no-store"),
        ]
        .into_iter()
        .chain(CORS_HEADERS)
        .collect();
        let preflight: Vec<(&str, &str)> =
            CORS_HEADERS.into_iter().chain(PREFLIGHT_HEADERS).collect();
        let text = |pairs: &[(&str, &str)]| serde_json::to_string(pairs).unwrap_or_default();
        reply_headers(&text(&json), &text(&preflight));
        SET.with(|s| s.set(true));
    }
}

/// A public JSON answer: `Content-Type`, `Cache-Control: no-store`, the CORS headers and
/// `extra`, made as the runtime's own `Response` in one call and handed to it as it is (a
/// `worker::Response` is read back and made again on its way out, a header set one at a time
/// is a call across the boundary). Header values never hold a line break (HTTP forbids it).
pub fn json_response_with(
    body: &str,
    status: u16,
    extra: &[(&str, &str)],
) -> Result<web_sys::Response> {
    reply_headers_once();
    let mut lines = String::new();
    for (name, value) in extra {
        lines.push_str(name);
        lines.push('\n');
        lines.push_str(value);
        lines.push('\n');
    }
    Ok(json_reply(body, status, &lines)?)
}

/// A public JSON answer ([`json_response_with`] nothing more).
pub fn json_response(body: &str, status: u16) -> Result<web_sys::Response> {
    json_response_with(body, status, &[])
}

/// A preflight's answer, without a body: the CORS headers and [`PREFLIGHT_HEADERS`].
pub fn preflight_response(status: u16) -> Result<web_sys::Response> {
    reply_headers_once();
    Ok(preflight_reply(status)?)
}

/// The new-id budget of a client (the Workers rate-limiting binding `NEW_IDS`, keyed by
/// client address): one unit per counter a client creates at an object, and per presence
/// session it opens. Without the binding everything is admitted.
///
/// # Errors
///
/// [`ApiError::TooManyNewIds`] once the budget is spent.
pub async fn admit(env: &Env, client: &str) -> std::result::Result<(), ApiError> {
    spend(env, NEW_IDS_BINDING, client, ApiError::TooManyNewIds).await
}

/// The hit budget of a client (the Workers rate-limiting binding `HITS`, keyed by client
/// address): one unit per public counter or gauge write. Without the binding (the top level of
/// `wrangler.toml`: `wrangler dev`, tests, benchmarks) there is no budget.
///
/// # Errors
///
/// [`ApiError::TooManyHits`] once the budget is spent.
pub async fn spend_hit(env: &Env, client: &str) -> std::result::Result<(), ApiError> {
    spend(env, HITS_BINDING, client, ApiError::TooManyHits).await
}

/// One unit of `client`'s budget in rate limit `binding`; `refused` once it is spent.
async fn spend(
    env: &Env,
    binding: &str,
    client: &str,
    refused: ApiError,
) -> std::result::Result<(), ApiError> {
    let Ok(limiter) = env.rate_limiter(binding) else {
        return Ok(());
    };
    match limiter.limit(client.to_owned()).await {
        Ok(outcome) if outcome.success => Ok(()),
        Ok(_) => Err(refused),
        Err(e) => {
            // The limiter is down: admit rather than refuse real hits.
            worker::console_warn!("{binding} budget unavailable: {e}");
            Ok(())
        }
    }
}

/// The spread index drawn for one request ([`routing::spread_index`] of fresh randomness).
pub(crate) fn draw_spread(config: &Config) -> u32 {
    // One object per counter: nothing to draw (a call to the runtime's CSPRNG saved).
    if config.spread == 1 {
        return 0;
    }
    routing::spread_index(random_u64(), config.spread)
}

/// 64 random bits from the runtime's CSPRNG.
pub fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("crypto.getRandomValues is available in Workers");
    u64::from_le_bytes(bytes)
}

/// Logs a runtime error; the client gets a plain 500.
pub(crate) fn internal(e: worker::Error) -> ApiError {
    console_error!("{e}");
    ApiError::Internal
}
