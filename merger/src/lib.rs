//! The tally merger: merges edge syncs durably into SQLite or Postgres and serves the global
//! count.
//!
//! Edge replicas `POST /v1/sync` their slot totals; the merger merges them with max per slot
//! (so retries and duplicates change nothing), commits, and only then answers. Reads, the
//! edge's batch `POST /v1/read` and the public `GET`s, are served from a bounded cache of
//! merged counters in memory, filled from the store on a miss, and write nothing. Several
//! mergers may share one Postgres database: each hears the others' commits ([`peers`]).
//!
//! Layout:
//! - [`config`]: every setting, from flags or the environment (`clap`).
//! - [`http`]: the API, one module per resource, assembled by [`http::router`]; errors and
//!   their JSON shape in [`error`].
//! - [`clock`]: the one clock every module reads the time from.
//! - [`commit`]: group commit: one task writes every batch of concurrent syncs in one
//!   transaction, then updates memory and answers.
//! - [`history`]: the history points, written by their own task, off the commit path.
//! - [`peers`]: what other mergers on the same database commit, merged into the cache.
//! - [`presence`]: viewers now, the rules both stores run: which rows reports write, when a
//!   report stops counting, the sums reads answer (viewers now are stored reports, summed at
//!   read time).
//! - [`unique`]: unique visitors, the rules both stores run: sketch syncs merged
//!   register-wise in the store, every sync of a batch answered the whole batch.
//! - [`prune`]: the task that deletes what only grows otherwise: expired presence reports,
//!   daily sketches past `--sketch-days`, rows of retired incarnations.
//! - [`state`]: [`state::Db`], the bounded cache of merged counters, keyed by
//!   [`tally_crdt::CounterKey`], with times as [`tally_crdt::Timestamp`].
//! - [`store`]: the [`store::Store`] traits, written once over a backend, and the SQLite and
//!   Postgres backends; every SQL statement; schemas in `migrations/sqlite` and
//!   `migrations/postgres`. The rows it writes and loads are in [`rows`].
//! - [`milestone`]: "the N-th hit", decided once in the commit that crosses it (the pure
//!   decision; the store runs it under a per-counter lock).
//! - [`metrics`]: the Prometheus registry.
//! - [`announce`]: the task that delivers milestone winners to the webhook, signed, retried
//!   until acknowledged.
//! - [`backup`]: the `backup` subcommand, an online copy of the store (`VACUUM INTO`, `pg_dump`).
//!
//! The binary (`main.rs`) only parses the configuration, binds, and calls [`Merger::serve`];
//! tests drive [`Merger::router`] in-process or the binary over loopback.

pub mod announce;
pub mod backup;
pub mod clock;
pub mod commit;
pub mod config;
pub mod error;
pub mod history;
pub mod http;
pub mod import;
pub mod metrics;
pub mod milestone;
pub mod peers;
pub mod presence;
pub mod prune;
pub mod rows;
pub mod state;
pub mod store;
pub mod unique;
pub mod views;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

pub use config::{Config, Durability};

use crate::commit::Committer;
use crate::error::AppError;
use crate::metrics::Metrics;
use crate::state::Db;
use crate::store::{Store, StoreError};

/// Shortest sync token accepted.
pub const MIN_TOKEN_LEN: usize = 16;

/// Why the merger could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// No sync token was configured.
    #[error("no sync token: set --sync-token / TALLY_SYNC_TOKEN, or pass --dev to generate one")]
    NoToken,
    /// The sync token is too short to be a secret.
    #[error("the sync token must be at least {MIN_TOKEN_LEN} characters")]
    ShortToken,
    /// The read token is too short to be a secret.
    #[error("the read token must be at least {MIN_TOKEN_LEN} characters")]
    ShortReadToken,
    /// The admin token is too short to be a secret.
    #[error("the admin token must be at least {MIN_TOKEN_LEN} characters")]
    ShortAdminToken,
    /// A webhook URL without a secret of at least 16 characters, or one that is not http(s).
    #[error("{0}")]
    Webhook(String),
    /// The store could not be opened or loaded.
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

/// What every handler shares: one `Arc`, so a clone per request is one atomic increment.
#[derive(Debug, Clone)]
pub struct AppState(Arc<Shared>);

/// The shared parts behind [`AppState`].
#[derive(Debug)]
pub struct Shared {
    db: Arc<Db>,
    committer: Committer,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    token: Arc<str>,
    /// Guards lists, history, metrics (and single reads with `--private-reads`).
    read_token: Option<Arc<str>>,
    /// Guards resets and deletes; without it they are off.
    admin_token: Option<Arc<str>>,
    /// The longest a cache miss waits for the store (the request timeout: the read path has
    /// no timeout layer, so that a read from memory sets no timer).
    load_timeout: std::time::Duration,
    /// The public reads of viewers now, by id, for a second ([`views`]); the commit task
    /// drops those a batch of presence reports changed.
    pub presence_views: Arc<views::ViewCache<http::presence::PresenceView>>,
    /// The public reads of unique visitors, by sketch key, for a second; the commit task
    /// drops those a batch of sketch syncs changed.
    pub unique_views: Arc<views::ViewCache<http::unique::UniqueView>>,
    /// The public milestone lists, by counter id, for a second; registrations and cancels
    /// here drop theirs, and the commit task those of the milestones a sync batch decided.
    pub milestone_views: Arc<views::ViewCache<Vec<milestone::Milestone>>>,
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl Shared {
    /// Runs `f` over the counters `keys` name, loading from the store those the cache does
    /// not hold (one query). `f` may run twice if a concurrent fill evicted one of `keys` in
    /// between; the second attempt loads them all and cannot miss.
    pub async fn read_through<R>(
        &self,
        keys: &[tally_crdt::CounterKey],
        f: impl Fn(state::Held<'_>) -> R,
    ) -> Result<R, StoreError> {
        let missing = match self.db.read(keys, &f) {
            Ok(answer) => return Ok(answer),
            Err(missing) => missing,
        };
        let loaded = self.load(&missing).await?;
        if let Ok(answer) = self.db.fill(keys, &missing, loaded, &f) {
            return Ok(answer);
        }
        let loaded = self.load(keys).await?;
        Ok(self
            .db
            .fill(keys, keys, loaded, &f)
            .expect("a fill of every key asked holds every key asked"))
    }

    /// Imports a value into a counter in the store, then into the cache (other mergers hear
    /// of it through the store's watch).
    pub async fn import(
        &self,
        key: &tally_crdt::CounterKey,
        request: &store::ImportRequest,
    ) -> Result<store::ImportOutcome, StoreError> {
        let outcome = self.store.import(key, request).await?;
        if let store::ImportOutcome::Imported(counter) = &outcome {
            self.db.apply_import(counter.clone());
        }
        Ok(outcome)
    }

    /// Loads counters from the store, within the load timeout.
    async fn load(
        &self,
        keys: &[tally_crdt::CounterKey],
    ) -> Result<Vec<store::StoredCounter>, StoreError> {
        tokio::time::timeout(self.load_timeout, self.store.load(keys))
            .await
            .map_err(|_| StoreError::TimedOut(self.load_timeout))?
    }

    /// Resets or deletes a counter in the store, then in the cache (other mergers hear of
    /// it through the store's watch).
    pub async fn reset(
        &self,
        key: &tally_crdt::CounterKey,
        request: store::ResetRequest,
    ) -> Result<store::ResetOutcome, StoreError> {
        let outcome = self.store.reset(key, request).await?;
        if let store::ResetOutcome::Done { counter, .. } = &outcome {
            self.db.apply_reset(store::StoredCounter::clone(counter));
        }
        Ok(outcome)
    }
}

/// What a connection beyond `--max-connections` hears.
const OVERLOADED: AppError = AppError::Commit(commit::CommitError::Overloaded);

/// Answers a connection the merger has no room for: one `503 overloaded` with `Retry-After`
/// (the edge backs off), written without reading the request, then closed. Bounded in time,
/// so a client that does not read cannot hold the task.
async fn refuse(mut stream: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    let body = format!(
        r#"{{"error":{{"code":"{}","message":"{}"}}}}"#,
        OVERLOADED.code(),
        OVERLOADED
    );
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         retry-after: 1\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let write = async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), write).await;
}

/// A running merger: its state, store and commit task.
#[derive(Debug)]
pub struct Merger {
    state: AppState,
    config: Config,
    stop: watch::Sender<bool>,
    /// Stops the history task, after the commit task has drained the queue.
    stop_history: watch::Sender<bool>,
    commit_task: JoinHandle<()>,
    tasks: Vec<JoinHandle<()>>,
}

impl Merger {
    /// Opens (and migrates) the store and starts the commit, history and peer tasks. Nothing
    /// is loaded: the cache fills on demand.
    pub async fn open(config: Config) -> Result<Merger, StartError> {
        let token: Arc<str> = match config.sync_token.as_deref() {
            None | Some("") => return Err(StartError::NoToken),
            Some(t) if t.len() < MIN_TOKEN_LEN => return Err(StartError::ShortToken),
            Some(t) => t.into(),
        };
        let read_token: Option<Arc<str>> = match config.read_token.as_deref() {
            None | Some("") => None,
            Some(t) if t.len() < MIN_TOKEN_LEN => return Err(StartError::ShortReadToken),
            Some(t) => Some(t.into()),
        };
        let admin_token: Option<Arc<str>> = match config.admin_token.as_deref() {
            None | Some("") => None,
            Some(t) if t.len() < MIN_TOKEN_LEN => return Err(StartError::ShortAdminToken),
            Some(t) => Some(t.into()),
        };
        let webhook = announce::Webhook::from_config(
            config.webhook_url.as_deref(),
            config.webhook_secret.as_deref(),
        )
        .map_err(StartError::Webhook)?;
        let store = store::open(&config.database_url, config.durability).await?;
        let metrics = Arc::new(Metrics::default());
        metrics
            .replicas
            .set(i64::try_from(store.replica_count().await?).unwrap_or(i64::MAX));
        let db = Arc::new(Db::new(config.cache_counters, metrics.cache.clone()));
        info!(
            backend = store.backend(),
            cache_counters = config.cache_counters,
            "store open"
        );
        let presence_views = Arc::new(views::ViewCache::new(
            config.cache_counters,
            views::VIEW_TTL,
            metrics.view_hits.clone(),
            metrics.view_misses.clone(),
        ));
        let unique_views = Arc::new(views::ViewCache::new(
            config.cache_counters,
            views::VIEW_TTL,
            metrics.view_hits.clone(),
            metrics.view_misses.clone(),
        ));
        let milestone_views = Arc::new(views::ViewCache::new(
            config.cache_counters,
            views::VIEW_TTL,
            metrics.view_hits.clone(),
            metrics.view_misses.clone(),
        ));
        let views = commit::Views {
            presence: Arc::clone(&presence_views) as Arc<dyn commit::Invalidate>,
            unique: Arc::clone(&unique_views) as Arc<dyn commit::Invalidate>,
            milestones: Arc::clone(&milestone_views) as Arc<dyn commit::Invalidate>,
        };
        let (stop, stopped) = watch::channel(false);
        let (committer, commit_task) = commit::spawn(
            Arc::clone(&store),
            Arc::clone(&db),
            Arc::clone(&metrics),
            views,
            config.commit_queue,
            stopped.clone(),
        );
        let (stop_history, history_stopped) = watch::channel(false);
        let mut tasks = vec![history::spawn(
            Arc::clone(&store),
            Arc::clone(&db),
            Arc::clone(&metrics),
            config.snapshot_interval,
            history::Pruner::new(config.history_retention.clone()),
            config.history_prune_interval,
            history_stopped,
        )];
        tasks.push(prune::spawn(
            Arc::clone(&store),
            Arc::clone(&metrics),
            config.presence_prune_interval,
            prune::Keep {
                sketch_days: config.sketch_days,
                retired_replica_days: config.retired_replica_days,
                reclaim_days: config.reclaim_days,
            },
            stopped.clone(),
        ));
        if let Some(webhook) = webhook {
            tasks.push(announce::spawn(
                Arc::clone(&store),
                Arc::clone(&metrics),
                webhook,
                stopped.clone(),
            ));
        }
        if let Some(changes) = store.watch(stopped) {
            tasks.push(peers::spawn(
                Arc::clone(&store),
                Arc::clone(&db),
                Arc::clone(&metrics),
                changes,
            ));
        }
        let state = AppState(Arc::new(Shared {
            db,
            committer,
            store,
            metrics,
            token,
            read_token,
            admin_token,
            load_timeout: config.request_timeout,
            presence_views,
            unique_views,
            milestone_views,
        }));
        Ok(Merger {
            state,
            config,
            stop,
            stop_history,
            commit_task,
            tasks,
        })
    }

    /// The API, for serving or for in-process tests.
    pub fn router(&self) -> Router {
        http::router(
            self.state.clone(),
            http::Limits {
                max_body_bytes: self.config.max_body_bytes,
                request_timeout: self.config.request_timeout,
                private_reads: self.config.private_reads,
            },
        )
    }

    /// Serves the API on `listener` until `shutdown` completes; then stops accepting, lets
    /// open requests finish (up to the shutdown timeout), commits every queued sync and
    /// closes the store.
    pub async fn serve(self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let router = self.router();
        let graceful = GracefulShutdown::new();
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(self.config.header_read_timeout);
        tokio::pin!(shutdown);
        let slots = Arc::new(tokio::sync::Semaphore::new(
            self.config.max_connections.max(1),
        ));
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let _ = stream.set_nodelay(true);
            let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                self.state.metrics.error(OVERLOADED.code());
                tokio::spawn(refuse(stream));
                continue;
            };
            let service = TowerToHyperService::new(router.clone());
            let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    debug!(%peer, error = %e, "connection ended with an error");
                }
                drop(slot);
            });
        }
        drop(listener);
        info!("shutting down: finishing open requests");
        tokio::select! {
            () = graceful.shutdown() => {}
            () = tokio::time::sleep(self.config.shutdown_timeout) => {
                warn!(timeout = ?self.config.shutdown_timeout, "requests still open at the shutdown timeout; closing them");
            }
        }
        self.close().await;
    }

    /// Stops the commit task after it has committed every queued sync, the history task
    /// after a last pass, and the peer task; then closes the store.
    pub async fn close(self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.commit_task.await {
            warn!(error = %e, "commit task ended abnormally");
        }
        // The last history pass sees the last commits.
        let _ = self.stop_history.send(true);
        for task in self.tasks {
            if let Err(e) = task.await {
                warn!(error = %e, "a merger task ended abnormally");
            }
        }
        self.state.store.close().await;
        info!("merger stopped");
    }
}
