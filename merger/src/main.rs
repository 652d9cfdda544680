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
    merger.serve(listener, shutdown_signal()).await;
    ExitCode::SUCCESS
}

/// A random 256-bit token, as 64 hex digits.
fn dev_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random source is available");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            eprintln!("cannot listen for Ctrl-C: {e}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                eprintln!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutdown signal received");
}
