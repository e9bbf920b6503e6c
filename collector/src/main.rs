//! `estate-collector`: parses flags, sets up logging and runs the collector library.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use estate_collector::config::ConfigFile;
use std::path::PathBuf;
use std::process::ExitCode;

/// Receives estate agents' reports, stores the inventory and serves /metrics, the API and a UI.
#[derive(Debug, Parser)]
#[command(name = "estate-collector", version)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(flatten)]
    serve: ServeArgs,
    /// Log filter, e.g. `info` or `estate_collector=debug`.
    #[arg(long, env = "ESTATE_LOG", default_value = "info", global = true)]
    log: String,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Certificates for TLS: `tls init` makes a CA, the collector's certificate and client
    /// certificates
    #[command(subcommand)]
    Tls(TlsCommand),
}

#[derive(Debug, Subcommand)]
enum TlsCommand {
    /// Make a private CA (or reuse DIR/ca.pem and DIR/ca.key), a server certificate for the
    /// `--host` names and a client certificate per `--client` host; never overwrites a file
    Init {
        /// Directory for ca.pem, ca.key, server.pem, server.key, client-HOST.pem/.key
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// A name agents use to reach the collector (DNS name or IP address); repeatable
        #[arg(long = "host", value_name = "NAME")]
        hosts: Vec<String>,
        /// An agent host (its hostname) to make a client certificate for (mTLS); repeatable
        #[arg(long = "client", value_name = "HOST")]
        clients: Vec<String>,
        /// Validity of the server and client certificates, in days
        #[arg(long, value_name = "DAYS", default_value_t = 825)]
        days: u64,
    },
}

/// Flags of the collector itself (no subcommand).
#[derive(Debug, clap::Args)]
struct ServeArgs {
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
    /// PEM certificate chain for both listeners (config `tls_cert_file`).
    #[arg(long, value_name = "PATH")]
    tls_cert_file: Option<PathBuf>,
    /// PEM private key of the certificate (config `tls_key_file`).
    #[arg(long, value_name = "PATH")]
    tls_key_file: Option<PathBuf>,
    /// PEM CA whose client certificates authenticate agents (config `client_ca_file`).
    #[arg(long, value_name = "PATH")]
    client_ca_file: Option<PathBuf>,
    /// Serve plain text, without TLS (config `insecure = true`); logged as a warning.
    #[arg(long)]
    insecure: bool,
    /// Sustained reports per second accepted from one agent [default: 2].
    #[arg(long, value_name = "RATE")]
    agent_rate_limit: Option<f64>,
    /// Reports one agent may send at once before the rate applies [default: 100].
    #[arg(long, value_name = "COUNT")]
    agent_burst: Option<u32>,
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
    let result = match cli.command {
        None => serve(cli.serve),
        Some(Command::Tls(TlsCommand::Init {
            dir,
            hosts,
            clients,
            days,
        })) => tls_init(dir, hosts, clients, days),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("estate-collector: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn tls_init(
    dir: PathBuf,
    hosts: Vec<String>,
    clients: Vec<String>,
    days: u64,
) -> anyhow::Result<()> {
    if days == 0 {
        anyhow::bail!("`--days` must be at least 1");
    }
    let written = estate_collector::certs::init(&estate_collector::certs::InitRequest {
        dir,
        hosts,
        clients,
        valid_for: std::time::Duration::from_secs(days.saturating_mul(86_400)),
    })?;
    for path in written {
        println!("wrote {}", path.display());
    }
    Ok(())
}

fn serve(cli: ServeArgs) -> anyhow::Result<()> {
    let mut file = match &cli.config {
        Some(path) => ConfigFile::read(path)?,
        None => ConfigFile::default(),
    };
    file.grpc_listen = cli.grpc_listen.or(file.grpc_listen);
    file.http_listen = cli.http_listen.or(file.http_listen);
    file.database = cli.database.or(file.database);
    file.stale_after = cli.stale_after.or(file.stale_after);
    file.expire_after = cli.expire_after.or(file.expire_after);
    file.tls_cert_file = cli.tls_cert_file.or(file.tls_cert_file);
    file.tls_key_file = cli.tls_key_file.or(file.tls_key_file);
    file.client_ca_file = cli.client_ca_file.or(file.client_ca_file);
    if cli.insecure {
        file.insecure = Some(true);
    }
    file.agent_rate_limit = cli.agent_rate_limit.or(file.agent_rate_limit);
    file.agent_burst = cli.agent_burst.or(file.agent_burst);
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
        let scheme = match config.transport {
            estate_collector::tls::Transport::Tls(_) => "https",
            estate_collector::tls::Transport::Insecure => "http",
        };
        tracing::info!(
            grpc = %format!("{scheme}://{}", grpc.local_addr()?),
            metrics = %format!("{scheme}://{http_address}/metrics"),
            api = %format!("{scheme}://{http_address}/api/v1/hosts"),
            ui = %format!("{scheme}://{http_address}/"),
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
