//! [`Config`]: every setting of the merger, from `--flags` or the environment.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// The tally merger: merges edge syncs durably into SQLite and serves the global count.
///
/// Every flag can also be set from the environment variable named in its help.
#[derive(Debug, Clone, Parser)]
#[command(name = "tally-merger", version, about, long_about = None)]
pub struct Config {
    /// Address to listen on (8790 by default, clear of wrangler's 8787).
    #[arg(long, env = "TALLY_LISTEN", default_value = "127.0.0.1:8790")]
    pub listen: SocketAddr,

    /// Database URL: `sqlite://PATH` (one merger; the file and its directory are created on
    /// first start) or `postgres://USER@HOST:PORT/DB` (several mergers may share it).
    #[arg(
        long,
        env = "TALLY_DATABASE_URL",
        default_value = "sqlite://./data/tally.db"
    )]
    pub database_url: String,

    /// Bearer token the edge must present on `POST /v1/sync` and `POST /v1/read` (at least 16
    /// characters).
    /// Required, unless `--dev` generates one.
    #[arg(long, env = "TALLY_SYNC_TOKEN", hide_env_values = true)]
    pub sync_token: Option<String>,

    /// Bearer token that guards what enumerates counters: the lists, the history, `/metrics`
    /// and the dashboard's data (at least 16 characters). Without it they are open to anyone
    /// who can reach the merger.
    #[arg(long, env = "TALLY_READ_TOKEN", hide_env_values = true)]
    pub read_token: Option<String>,

    /// Bearer token of the admin API: resetting and deleting counters (at least 16
    /// characters). Without it the admin routes answer 403 `admin_disabled`.
    #[arg(long, env = "TALLY_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// With `--read-token`: single-counter reads (`GET /v1/{counters,gauges}/{id}`) need it
    /// too. By default they stay public, like the edge's reads.
    #[arg(long, env = "TALLY_PRIVATE_READS", requires = "read_token")]
    pub private_reads: bool,

    /// Development mode: without a sync token, generate a random one and print it.
    #[arg(long, env = "TALLY_DEV")]
    pub dev: bool,

    /// How often the totals of changed counters are written to the history (e.g. `60s`, `5m`).
    #[arg(long, env = "TALLY_SNAPSHOT_INTERVAL", default_value = "60s", value_parser = humantime::parse_duration)]
    pub snapshot_interval: Duration,

    /// How long history points are kept and at what resolution: comma-separated tiers
    /// `RESOLUTION:AGE`, finest first, where RESOLUTION is `raw` (every point) or a duration
    /// (one point, the last, per bucket of that length). The default keeps every point for a
    /// day, one per hour for 90 days, and nothing older.
    #[arg(long, env = "TALLY_HISTORY_RETENTION", default_value = "raw:1d,1h:90d")]
    pub history_retention: Retention,

    /// How often the history is pruned to the retention policy (in small transactions, off
    /// the commit path).
    #[arg(long, env = "TALLY_HISTORY_PRUNE_INTERVAL", default_value = "5m", value_parser = humantime::parse_duration)]
    pub history_prune_interval: Duration,

    /// How often expired presence reports are deleted (reads skip them anyway; this bounds
    /// the table).
    #[arg(long, env = "TALLY_PRESENCE_PRUNE_INTERVAL", default_value = "60s", value_parser = humantime::parse_duration)]
    pub presence_prune_interval: Duration,

    /// Days a daily unique-visitor sketch is kept (about 3 KiB per id and day): the sketches
    /// of UTC days older than this are deleted at the presence prune interval (0 keeps them
    /// forever). The all-time sketch of an id is never deleted.
    #[arg(long, env = "TALLY_SKETCH_DAYS", default_value_t = 90)]
    pub sketch_days: u32,

    /// Days the row of a retired replica incarnation is kept (one per edge object and
    /// rotation, daily by default): rows retired longer ago are deleted at the presence prune
    /// interval (0 keeps them forever). A late sync of a deleted one still counts nothing: its
    /// slots are in its object's carries. Replicas retired before carries keep their row.
    #[arg(long, env = "TALLY_RETIRED_REPLICA_DAYS", default_value_t = 7)]
    pub retired_replica_days: u32,

    /// Days after which what an edge object reclaimed when it rebased its carry of a counter
    /// nobody counts any more is netted against the counter's cuts, and the carry deleted if
    /// it holds nothing else (0: never). Longer than the edge's `RECLAIM_AFTER_MS` (seven
    /// days) plus its `ANTI_ENTROPY_MS`, so that no edge re-sends it any more.
    #[arg(long, env = "TALLY_RECLAIM_DAYS", default_value_t = 14)]
    pub reclaim_days: u32,

    /// Where milestone winners are announced: each winner is POSTed here as JSON, signed
    /// (`Tally-Signature`, HMAC-SHA256 with `--webhook-secret`), retried with backoff until a
    /// 2xx answer (docs/milestones.md). Without it winners are only read from the API.
    #[arg(long, env = "TALLY_WEBHOOK_URL")]
    pub webhook_url: Option<String>,

    /// The secret the webhook's signatures are made with (at least 16 characters; required
    /// with `--webhook-url`).
    #[arg(long, env = "TALLY_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,

    /// Counters the merger keeps in memory at most (a cache over the store: a counter not
    /// held is loaded on its first read or sync). About 1.3 KiB each as measured with one
    /// slot per counter (docs/benchmarks.md, "a million counters").
    #[arg(long, env = "TALLY_CACHE_COUNTERS", default_value_t = 100_000)]
    pub cache_counters: usize,

    /// Syncs, retirements, presence reports and sketch syncs that may wait for the commit task
    /// (one queue); when it is full they are refused with 503 and `Retry-After` (the edge
    /// backs off and retries).
    #[arg(long, env = "TALLY_COMMIT_QUEUE", default_value_t = 4096)]
    pub commit_queue: usize,

    /// Durability of a commit. SQLite: `full` is `synchronous=FULL`, `normal` is
    /// `synchronous=NORMAL`. Postgres: `full` is `synchronous_commit=on`, `normal` is `off`.
    /// `full`: an acknowledged sync survives power loss; `normal`: it survives a crash of the
    /// process and may be lost on power loss (faster).
    #[arg(long, env = "TALLY_DURABILITY", value_enum, default_value_t = Durability::Full)]
    pub durability: Durability,

    /// Open connections served at most; a connection beyond is answered `503 overloaded` with
    /// `Retry-After` and closed, so memory stays bounded whoever connects.
    #[arg(long, env = "TALLY_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,

    /// Largest request body accepted, in bytes (a sync of 1000 counters is about 100 KB).
    #[arg(long, env = "TALLY_MAX_BODY_BYTES", default_value_t = 1 << 20)]
    pub max_body_bytes: usize,

    /// Time allowed for a whole request, body and commit included.
    #[arg(long, env = "TALLY_REQUEST_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,

    /// Time a client gets to send its request headers before the connection is closed.
    #[arg(long, env = "TALLY_HEADER_READ_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,

    /// On SIGINT/SIGTERM: how long open requests may take to finish before the merger stops.
    #[arg(long, env = "TALLY_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,

    /// Log filter, in `tracing-subscriber`'s `EnvFilter` syntax (e.g. `info`, `tally_merger=debug`).
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    pub log: String,
}

/// One tier of the history's retention policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tier {
    /// One point per bucket of this length; `None`: every point.
    pub resolution: Option<Duration>,
    /// Points younger than this belong to this tier (or a finer one).
    pub age: Duration,
}

/// The history's retention policy: tiers ordered finest and youngest first; points older
/// than the last tier's age are deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention(pub Vec<Tier>);

impl std::str::FromStr for Retention {
    type Err = String;

    fn from_str(text: &str) -> Result<Retention, String> {
        let mut tiers: Vec<Tier> = Vec::new();
        for part in text.split(',') {
            let (resolution, age) = part
                .trim()
                .split_once(':')
                .ok_or_else(|| format!("{part:?}: expected RESOLUTION:AGE, e.g. 1h:90d"))?;
            let duration = |t: &str| {
                humantime::parse_duration(t.trim())
                    .map_err(|e| format!("{t:?}: {e}"))
                    .and_then(|d| {
                        if d.is_zero() {
                            Err(format!("{t:?}: must be longer than zero"))
                        } else {
                            Ok(d)
                        }
                    })
            };
            let resolution = match resolution.trim() {
                "raw" => None,
                r => Some(duration(r)?),
            };
            let tier = Tier {
                resolution,
                age: duration(age)?,
            };
            if let Some(previous) = tiers.last() {
                if tier.age <= previous.age {
                    return Err(format!("{part:?}: ages must grow from tier to tier"));
                }
                if tier.resolution.is_none()
                    || previous
                        .resolution
                        .zip(tier.resolution)
                        .is_some_and(|(a, b)| b <= a)
                {
                    return Err(format!(
                        "{part:?}: resolutions must coarsen from tier to tier (only the first may be raw)"
                    ));
                }
            }
            tiers.push(tier);
        }
        Ok(Retention(tiers))
    }
}

/// How durable a commit is before the sync is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Durability {
    /// Every commit is flushed to disk before the sync is acknowledged (SQLite
    /// `synchronous=FULL`, Postgres `synchronous_commit=on`).
    Full,
    /// Commits survive a process crash; the last ones may be lost on power loss or an OS
    /// crash (SQLite `synchronous=NORMAL`, Postgres `synchronous_commit=off`).
    Normal,
}

impl Config {
    /// A configuration with every default, for `database_url` and `sync_token` (tests and
    /// embedding).
    pub fn new(database_url: impl Into<String>, sync_token: impl Into<String>) -> Config {
        let mut config = Config::parse_from(["tally-merger"]);
        config.database_url = database_url.into();
        config.sync_token = Some(sync_token.into());
        config
    }
}
