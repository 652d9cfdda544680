//! `tally-merger`: parses the configuration, binds, and serves until SIGINT or SIGTERM;
//! `tally-merger backup` writes a backup of the store ([`tally_merger::backup`]) and exits;
//! `tally-merger import` brings starting values into a running merger
//! ([`tally_merger::import`]).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tally_merger::backup::BackupArgs;
use tally_merger::import::ImportArgs;
use tally_merger::{Config, Merger};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

// Without a subcommand the merger serves, configured by the flattened `Config` (whose doc
// comment is the program's `--help` text).
#[derive(Debug, Parser)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: Config,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Writes a consistent backup of the database, online, and exits.
    ///
    /// SQLite: `VACUUM INTO` while the merger runs; Postgres: `pg_dump --format=custom` while
    /// the mergers run. Restoring is in docs/deployment.md, "Backups and restore".
    Backup(BackupArgs),
    /// Imports starting values (CSV or JSON lines) into a running merger, and exits.
    ///
    /// Each line is one counter's value under an import id; re-running a file changes
    /// nothing. Non-zero exit if a line failed or conflicted. Format in docs/protocol.md.
    Import(ImportArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Backup(args)) => backup(&args).await,
        Some(Command::Import(args)) => import(&args).await,
        None => serve(cli.serve).await,
    }
}

/// `tally-merger backup`: one line on success, `error: ...` and a failure status otherwise.
async fn backup(args: &BackupArgs) -> ExitCode {
    match args.run().await {
        Ok(written) => {
            println!("{written}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `tally-merger import`: the lines not imported on standard error, then the summary.
async fn import(args: &ImportArgs) -> ExitCode {
    match args.run().await {
        Ok(summary) => {
            println!("{summary}");
            if summary.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Serves until SIGINT or SIGTERM.
async fn serve(mut config: Config) -> ExitCode {
    let filter = EnvFilter::try_new(&config.log).unwrap_or_else(|e| {
        eprintln!("invalid log filter {:?} ({e}); using info", config.log);
        EnvFilter::new("info")
    });
    tracing_subscriber::fmt().with_env_filter(filter).init();
    // Listening for the signals starts here, before the store opens and the port is bound:
    // a SIGTERM that lands while the store opens, or right after the first ready answer,
    // ends the merger through its graceful close, never through the signal's default action.
    let shutdown = shutdown_signal();

    if config.sync_token.is_none() && config.dev {
        let token = dev_token();
        println!("dev sync token: {token}");
        config.sync_token = Some(token);
    }
    let listener = match TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {}: {e}", config.listen);
            return ExitCode::FAILURE;
        }
    };
    let merger = match Merger::open(config).await {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match listener.local_addr() {
        // Scripts and tests read this line to find the port (with --listen 127.0.0.1:0).
        Ok(addr) => println!("listening on http://{addr}"),
        Err(e) => eprintln!("warning: cannot read the bound address: {e}"),
    }
    merger.serve(listener, shutdown).await;
    ExitCode::SUCCESS
}

/// A random 256-bit token, as 64 hex digits.
fn dev_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random source is available");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Starts listening for SIGINT (Ctrl-C) and SIGTERM now, and answers a future that
/// completes on the first of them (at once if one came before it is polled).
#[cfg(unix)]
fn shutdown_signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let listen = |kind: SignalKind, name: &str| match signal(kind) {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!("cannot listen for {name}: {e}");
            None
        }
    };
    let mut interrupt = listen(SignalKind::interrupt(), "SIGINT");
    let mut terminate = listen(SignalKind::terminate(), "SIGTERM");
    async move {
        tokio::select! {
            () = received(interrupt.as_mut()) => {}
            () = received(terminate.as_mut()) => {}
        }
        tracing::info!("shutdown signal received");
    }
}

/// Completes when `signal` delivers; never if there is none (listening for it failed).
#[cfg(unix)]
async fn received(signal: Option<&mut tokio::signal::unix::Signal>) {
    match signal {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending::<()>().await,
    }
}

/// Completes on Ctrl-C.
#[cfg(not(unix))]
fn shutdown_signal() -> impl Future<Output = ()> {
    async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            eprintln!("cannot listen for Ctrl-C: {e}");
            std::future::pending::<()>().await;
        }
        tracing::info!("shutdown signal received");
    }
}
