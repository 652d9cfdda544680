//! The tally merger: merges edge syncs durably into SQLite and serves the global count.
//!
//! Edge replicas `POST /v1/sync` their slot totals; the merger merges them with max per slot
//! (so retries and duplicates change nothing), commits, and only then answers. Reads, the
//! edge's batch `POST /v1/read` and the public `GET`s, are served from the merged state in
//! memory and write nothing.
//!
//! Layout:
//! - [`config`]: every setting, from flags or the environment (`clap`).
//! - [`http`]: the API, one module per resource, assembled by [`http::router`]; errors and
//!   their JSON shape in [`error`].
//! - [`commit`]: group commit: one task writes every batch of concurrent syncs in one
//!   transaction, then updates memory and answers; it also writes the snapshots.
//! - [`state`]: the merged counters in memory, keyed by [`tally_crdt::CounterKey`], with
//!   times as [`tally_crdt::Timestamp`].
//! - [`store`]: every SQL statement (SQLite, WAL), schema in `migrations/`.
//! - [`metrics`]: the Prometheus registry.
//!
//! The binary (`main.rs`) only parses the configuration, binds, and calls [`Merger::serve`];
//! tests drive [`Merger::router`] in-process or the binary over loopback.

pub mod commit;
pub mod config;
pub mod error;
pub mod http;
pub mod metrics;
pub mod state;
pub mod store;

use std::future::Future;
use std::sync::{Arc, RwLock};

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
use crate::metrics::Metrics;
use crate::state::Merged;
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
    merged: Arc<RwLock<Merged>>,
    committer: Committer,
    store: Store,
    metrics: Arc<Metrics>,
    token: Arc<str>,
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// A running merger: its state, store and commit task.
#[derive(Debug)]
pub struct Merger {
    state: AppState,
    config: Config,
    stop: watch::Sender<bool>,
    commit_task: JoinHandle<()>,
}

impl Merger {
    /// Opens the store, loads the merged state from it, and starts the commit task.
    pub async fn open(config: Config) -> Result<Merger, StartError> {
        let token: Arc<str> = match config.sync_token.as_deref() {
            None | Some("") => return Err(StartError::NoToken),
            Some(t) if t.len() < MIN_TOKEN_LEN => return Err(StartError::ShortToken),
            Some(t) => t.into(),
        };
        let store = Store::open(&config.database_url, config.durability).await?;
        let merged = Merged::from_loaded(store.load().await?);
        info!(
            counters = merged.len(tally_crdt::CounterKind::G),
            gauges = merged.len(tally_crdt::CounterKind::Pn),
            replicas = merged.replica_count(),
            "state loaded"
        );
        let merged = Arc::new(RwLock::new(merged));
        let metrics = Arc::new(Metrics::default());
        let (stop, stopped) = watch::channel(false);
        let (committer, commit_task) = commit::spawn(
            store.clone(),
            Arc::clone(&merged),
            Arc::clone(&metrics),
            config.snapshot_interval,
            stopped,
        );
        let state = AppState(Arc::new(Shared {
            merged,
            committer,
            store,
            metrics,
            token,
        }));
        Ok(Merger {
            state,
            config,
            stop,
            commit_task,
        })
    }

    /// The API, for serving or for in-process tests.
    pub fn router(&self) -> Router {
        http::router(
            self.state.clone(),
            http::Limits {
                max_body_bytes: self.config.max_body_bytes,
                request_timeout: self.config.request_timeout,
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
            let service = TowerToHyperService::new(router.clone());
            let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    debug!(%peer, error = %e, "connection ended with an error");
                }
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

    /// Stops the commit task after it has committed every queued sync and written a last
    /// snapshot, then closes the store.
    pub async fn close(self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.commit_task.await {
            warn!(error = %e, "commit task ended abnormally");
        }
        self.state.store.close().await;
        info!("merger stopped");
    }
}
