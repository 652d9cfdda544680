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

    /// Counters the merger keeps in memory at most (a cache over the store: a counter not
    /// held is loaded on its first read or sync). About 300 bytes plus 40 per replica slot each.
    #[arg(long, env = "TALLY_CACHE_COUNTERS", default_value_t = 100_000)]
    pub cache_counters: usize,

    /// Syncs that may wait for the commit task; when the queue is full a sync is refused with
    /// 503 and `Retry-After` (the edge backs off and retries).
    #[arg(long, env = "TALLY_COMMIT_QUEUE", default_value_t = 4096)]
    pub commit_queue: usize,

    /// Durability of a commit. SQLite: `full` is `synchronous=FULL`, `normal` is
    /// `synchronous=NORMAL`. Postgres: `full` is `synchronous_commit=on`, `normal` is `off`.
    /// `full`: an acknowledged sync survives power loss; `normal`: it survives a crash of the
    /// process and may be lost on power loss (faster).
    #[arg(long, env = "TALLY_DURABILITY", value_enum, default_value_t = Durability::Full)]
    pub durability: Durability,

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
