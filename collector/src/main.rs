//! `estate-collector`: parses flags, sets up logging and runs the collector library.

use anyhow::Context as _;
use clap::Parser;
use estate_collector::config::ConfigFile;
use std::path::PathBuf;
use std::process::ExitCode;

/// Receives estate agents' reports, stores the inventory and serves /metrics, the API and a UI.
#[derive(Debug, Parser)]
#[command(name = "estate-collector", version)]
struct Cli {
    /// TOML configuration file; flags override its keys.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Address for agents' gRPC reports [default: 127.0.0.1:9750].
    #[arg(long, value_name = "ADDR")]
    grpc_listen: Option<String>,
    /// Address for /metrics, /healthz, the API and the UI [default: 127.0.0.1:9751].
    #[arg(long, value_name = "ADDR")]
    http_listen: Option<String>,
    /// SQLite database file [default: estate.db in the working directory].
    #[arg(long, value_name = "PATH")]
    database: Option<PathBuf>,
    /// A host silent for this long is reported down [default: 5m].
    #[arg(long, value_name = "DURATION")]
    stale_after: Option<String>,
    /// A host silent for this long disappears from /metrics [default: 7d].
    #[arg(long, value_name = "DURATION")]
    expire_after: Option<String>,
    /// Log filter, e.g. `info` or `estate_collector=debug`.
    #[arg(long, env = "ESTATE_LOG", default_value = "info")]
    log: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: journald and log files get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("estate-collector: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let mut file = match &cli.config {
        Some(path) => ConfigFile::read(path)?,
        None => ConfigFile::default(),
    };
    file.grpc_listen = cli.grpc_listen.or(file.grpc_listen);
    file.http_listen = cli.http_listen.or(file.http_listen);
    file.database = cli.database.or(file.database);
    file.stale_after = cli.stale_after.or(file.stale_after);
    file.expire_after = cli.expire_after.or(file.expire_after);
    let config = file.into_config()?;

    let runtime = tokio::runtime::Runtime::new().context("failed to start the async runtime")?;
    runtime.block_on(async move {
        let grpc = tokio::net::TcpListener::bind(config.grpc_listen)
            .await
            .with_context(|| format!("failed to listen on `{}` (gRPC)", config.grpc_listen))?;
        let http = tokio::net::TcpListener::bind(config.http_listen)
            .await
            .with_context(|| format!("failed to listen on `{}` (HTTP)", config.http_listen))?;
        let http_address = http.local_addr()?;
        tracing::info!(
            grpc = %grpc.local_addr()?,
            metrics = %format!("http://{http_address}/metrics"),
            api = %format!("http://{http_address}/api/v1/hosts"),
            ui = %format!("http://{http_address}/"),
            "estate-collector listening"
        );
        estate_collector::run(config, grpc, http, shutdown_signal()).await
    })
}

/// Resolves on SIGINT (Ctrl-C) or, on Unix, SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
    tracing::info!("shutdown requested");
}
