//! `estate-agent`: parses the command line, sets up logging and calls the library.

use anyhow::Context;
use clap::{Parser, Subcommand};
use estate_agent::config::{ConfigError, ConfigFile};
use estate_agent::schedule;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

/// estate agent: reports this host's inventory and check results to an estate collector.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Config file [default: /etc/estate/agent.toml if it exists, else built-in defaults]
    #[arg(long, global = true, env = "ESTATE_AGENT_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,
    /// Log level or filter for the logs on stderr: error, warn, info, debug, trace, or a
    /// tracing filter such as `estate_agent=debug`
    #[arg(
        long,
        global = true,
        env = "ESTATE_LOG",
        default_value = "info",
        value_name = "LEVEL"
    )]
    log_level: String,
    /// Overrides `agent.state_dir` from the config
    #[arg(long, global = true, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Overrides `collector.url` and `collector.urls` from the config, e.g.
    /// `https://collector:9750`
    #[arg(long, global = true, value_name = "URL")]
    collector: Option<String>,
    /// Overrides `collector.ca_file`: the PEM CA that signed the collector's certificate
    #[arg(long, global = true, value_name = "PATH")]
    ca_file: Option<PathBuf>,
    /// Sets `collector.insecure = true`: allows an `http://` collector url (plain text,
    /// logged as a warning)
    #[arg(long, global = true)]
    insecure: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build one report and send it (printing the collector's answer), or print it as JSON
    Once {
        /// Print the report as JSON on stdout instead of sending it
        #[arg(long, conflicts_with = "collector")]
        json: bool,
    },
    /// Run as a service until SIGINT or SIGTERM
    Run,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(error) = init_logging(&cli.log_level) {
        eprintln!("error: {error:#}");
        return ExitCode::from(2);
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            if error.downcast_ref::<ConfigError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn init_logging(filter: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .with_context(|| format!("invalid log level `{filter}`"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let (mut file, path) = ConfigFile::load(cli.config.as_deref())?;
    if let Some(state_dir) = cli.state_dir {
        file.agent.state_dir = Some(state_dir);
    }
    if let Some(url) = cli.collector {
        file.collector.url = Some(url);
        file.collector.urls.clear();
    }
    if let Some(ca_file) = cli.ca_file {
        file.collector.ca_file = Some(ca_file);
    }
    if cli.insecure {
        file.collector.insecure = true;
    }
    let config = file.validate(path.as_deref())?;
    match &path {
        Some(path) => tracing::debug!(config = %path.display(), "config read"),
        None => tracing::debug!("no config file, using the defaults"),
    }

    let runtime = tokio::runtime::Runtime::new().context("failed to start the async runtime")?;
    runtime.block_on(async {
        match cli.command {
            Command::Once { json } => {
                let outcome = schedule::once(config, !json).await?;
                let shown = match &outcome.response {
                    Some(response) => serde_json::to_string_pretty(response)?,
                    None => serde_json::to_string_pretty(&outcome.request)?,
                };
                print_stdout(&shown)
            }
            Command::Run => schedule::run(config, shutdown_signal()).await,
        }
    })
}

/// Prints `text` and a newline; a closed pipe (`| head`) is not an error.
fn print_stdout(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match writeln!(stdout, "{text}").and_then(|()| stdout.flush()) {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(error).context("failed to write to stdout")
        }
        _ => Ok(()),
    }
}

/// Resolves at the first SIGINT (Ctrl-C) or, on unix, SIGTERM (what service managers send).
async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                terminate.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => tracing::info!("interrupted, stopping"),
        () = terminate => tracing::info!("terminated, stopping"),
    }
}
