//! The tally edge worker: counts hits in Durable Objects, each one a CRDT replica, and syncs
//! them to the merger.
//!
//! - `lib.rs` (this file): the Worker entry point. It parses and checks the public request
//!   ([`api`]), picks the replica (a Durable Object named `<region>:<shard>`, the shard drawn
//!   at random in `0..SHARDS`, so a hot counter is spread over several slots) and forwards
//!   the request to it; CORS for browsers.
//! - [`replica`]: the Durable Object: storage, alarms, the sync and the read cache.
//! - [`sync`]: the replica's logic as pure functions (hits, dirty state, batches, backoff,
//!   the read formula), tested natively.
//! - [`api`]: routes, bodies, responses and errors, tested natively.
//! - [`config`]: vars and secrets, parsed once.

pub mod api;
pub mod config;
#[allow(
    missing_docs,
    reason = "#[durable_object] generates undocumented wasm-bindgen exports"
)]
pub mod replica;
pub mod sync;

use tally_crdt::check_region;
use worker::{
    Context, Env, Headers, Method, Request, RequestInit, Response, Result, console_error, event,
};

use crate::api::{ApiError, MAX_BODY_BYTES, Target, parse_hit, parse_path};
use crate::config::{Config, ConfigError};

/// Durable Object binding, as in `wrangler.toml`.
pub const REPLICA_BINDING: &str = "REPLICA";
/// Header carrying the region to the replica, and (when allowed) the region override.
pub const REGION_HEADER: &str = "X-Tally-Region";

/// The Worker's entry point.
#[event(fetch)]
async fn fetch(req: Request, env: Env, _ctx: Context) -> Result<Response> {
    let response = match route(req, &env).await {
        Ok(response) => response,
        Err(e) => json_response(&e.body(), e.status())?,
    };
    with_cors(response)
}

async fn route(mut req: Request, env: &Env) -> std::result::Result<Response, ApiError> {
    if req.method() == Method::Options {
        return Response::empty()
            .map(|r| r.with_status(204))
            .map_err(internal);
    }
    let target = parse_path(&req.path())?;
    let config = cached_config(env)?;
    let region = region_of(&req, &config)?;
    let body = match req.method() {
        Method::Get | Method::Head => None,
        Method::Put => {
            let declared = req
                .headers()
                .get("Content-Length")
                .ok()
                .flatten()
                .and_then(|v| v.parse::<usize>().ok());
            if declared.is_some_and(|len| len > MAX_BODY_BYTES) {
                return Err(ApiError::BodyTooLarge);
            }
            let bytes = req
                .bytes()
                .await
                .map_err(|_| ApiError::InvalidBody("unreadable body".into()))?;
            let content_type = req.headers().get("Content-Type").ok().flatten();
            let add = parse_hit(target.kind, content_type.as_deref(), &bytes)?;
            Some(serde_json::to_string(&add).map_err(|_| ApiError::Internal)?)
        }
        _ => return Err(ApiError::MethodNotAllowed),
    };
    forward(env, &config, &target, &region, body)
        .await
        .map_err(internal)
}

/// Sends the request to a replica of its region: `<region>:<random shard>`.
async fn forward(
    env: &Env,
    config: &Config,
    target: &Target,
    region: &str,
    body: Option<String>,
) -> Result<Response> {
    let shard = random_u64() % u64::from(config.shards);
    let stub = env
        .durable_object(REPLICA_BINDING)?
        .id_from_name(&format!("{region}:{shard}"))?
        .get_stub()?;
    let headers = Headers::new();
    headers.set(REGION_HEADER, region)?;
    let mut init = RequestInit::new();
    init.with_headers(headers);
    match body {
        Some(body) => init.with_method(Method::Put).with_body(Some(body.into())),
        None => init.with_method(Method::Get),
    };
    let url = format!("https://replica/{}/{}", target.kind, target.id);
    stub.fetch_with_request(Request::new_with_init(&url, &init)?)
        .await
}

/// The region of a request: the continent Cloudflare reports, or (only when
/// `ALLOW_REGION_OVERRIDE` is set, for `wrangler dev` and tests) the `X-Tally-Region` header.
fn region_of(req: &Request, config: &Config) -> std::result::Result<String, ApiError> {
    if config.allow_region_override
        && let Some(region) = req.headers().get(REGION_HEADER).ok().flatten()
    {
        check_region(&region).map_err(ApiError::InvalidRegion)?;
        return Ok(region);
    }
    let continent = req.cf().and_then(|cf| cf.continent()).unwrap_or_default();
    Ok(if check_region(&continent).is_ok() {
        continent
    } else {
        "unknown".to_owned()
    })
}

/// The Worker's configuration, parsed once per isolate: vars and secrets do not change while
/// an isolate lives (a new deployment or secret starts new isolates).
fn cached_config(env: &Env) -> std::result::Result<Config, ApiError> {
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

/// A JSON response with `Cache-Control: no-store`.
pub fn json_response(body: &str, status: u16) -> Result<Response> {
    let headers = Headers::new();
    headers.set("Content-Type", "application/json")?;
    headers.set("Cache-Control", "no-store")?;
    Ok(Response::ok(body)?
        .with_status(status)
        .with_headers(headers))
}

/// The response with CORS headers. A Durable Object's response has immutable headers, so
/// they are copied into a new response around the same body.
fn with_cors(response: Response) -> Result<Response> {
    let headers = Headers::new();
    for (name, value) in response.headers().entries() {
        headers.set(&name, &value)?;
    }
    headers.set("Access-Control-Allow-Origin", "*")?;
    headers.set("Access-Control-Allow-Methods", "GET, PUT, OPTIONS")?;
    headers.set("Access-Control-Allow-Headers", "Content-Type")?;
    headers.set("Access-Control-Expose-Headers", "Age, Tally-Estimate")?;
    headers.set("Access-Control-Max-Age", "86400")?;
    let status = response.status_code();
    let (_, body) = response.into_parts();
    Ok(Response::from_body(body)?
        .with_status(status)
        .with_headers(headers))
}

/// 64 random bits from the runtime's CSPRNG.
pub fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("crypto.getRandomValues is available in Workers");
    u64::from_le_bytes(bytes)
}

fn internal(e: worker::Error) -> ApiError {
    console_error!("{e}");
    ApiError::Internal
}
