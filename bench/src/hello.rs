//! `hello`: the baseline for the merger's reads, a hello-world axum server.
//!
//! It runs on the merger's stack (axum 0.8 on hyper 1, tokio's multi-thread runtime, HTTP/1.1
//! keep-alive, `TCP_NODELAY`) and answers `GET /` with a fixed JSON body shaped and sized like
//! the merger's `GET /v1/counters/{id}` of a counter with one region. `wrk` against both gives
//! the ratio of the merger's read throughput to what the stack itself can serve.

use std::net::SocketAddr;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;

use crate::{Error, Verdict};

/// What `GET /` answers: the merger's read of a counter with one region, as it writes it.
const BODY: &str = r#"{"id":"hello","count":715,"epoch":0,"updated_at":"2030-10-10T12:11:42.500Z","regions":{"bench-0":{"count":715,"last_sync":"2030-10-10T12:11:42.500Z"}},"replicas":1}"#;

/// Options of `tally-bench hello`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to listen on (port 0 picks a free one; the address is printed).
    #[arg(
        long,
        env = "TALLY_BENCH_HELLO_LISTEN",
        default_value = "127.0.0.1:8791"
    )]
    listen: SocketAddr,
}

/// Serves until SIGINT or SIGTERM.
pub async fn run(args: Args) -> Result<Verdict, Error> {
    let listener = TcpListener::bind(args.listen).await?;
    // Scripts read this line to find the port, as with the merger.
    println!("listening on http://{}", listener.local_addr()?);
    let listener = listener.tap_io(|tcp| {
        // Best effort, as in the merger: a socket that refuses keeps Nagle.
        let _ = tcp.set_nodelay(true);
    });
    let app = Router::new().route("/", get(hello));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    Ok(Verdict::Pass)
}

async fn hello() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], BODY)
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
