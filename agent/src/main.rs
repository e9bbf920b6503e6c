//! `estate-agent`: parses the command line, sets up logging and calls the library.

use anyhow::Context;
use clap::{Parser, Subcommand};
use estate_agent::config::{ConfigError, ConfigFile};
use estate_agent::{install, schedule};
use estate_service::{Installation, Running, ServiceAction};
use std::future::Future;
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
    /// Install, remove, start, stop or inspect the agent as a system service (systemd unit,
    /// Windows service); `install` takes the config from `--config`
    Service {
        #[command(subcommand)]
        action: ServiceAction,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Under the Windows service manager there is no console: that mode logs to the Event
    // Log and a file, set up by `estate_service::windows::run_service`.
    let under_service_manager = matches!(
        cli.command,
        Command::Service {
            action: ServiceAction::Run
        }
    );
    if !under_service_manager && let Err(error) = init_logging(&cli.log_level) {
        eprintln!("error: {error:#}");
        return ExitCode::from(2);
    }
    match run(cli) {
        Ok(code) => code,
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

/// Flags that override the config file for one run.
#[derive(Debug, Clone)]
struct Overrides {
    config: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    collector: Option<String>,
    ca_file: Option<PathBuf>,
    insecure: bool,
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let overrides = Overrides {
        config: cli.config,
        state_dir: cli.state_dir,
        collector: cli.collector,
        ca_file: cli.ca_file,
        insecure: cli.insecure,
    };
    match cli.command {
        Command::Once { json } => {
            let config = load_config(&overrides)?;
            let runtime = runtime()?;
            runtime.block_on(async {
                let outcome = schedule::once(config, !json).await?;
                let shown = match &outcome.response {
                    Some(response) => serde_json::to_string_pretty(response)?,
                    None => serde_json::to_string_pretty(&outcome.request)?,
                };
                print_stdout(&shown)
            })?;
        }
        Command::Run => run_agent(&overrides, shutdown_signal())?,
        Command::Service { action } => return service(action, overrides, cli.log_level),
    }
    Ok(ExitCode::SUCCESS)
}

fn load_config(overrides: &Overrides) -> anyhow::Result<estate_agent::config::AgentConfig> {
    let (mut file, path) = ConfigFile::load(overrides.config.as_deref())?;
    if let Some(state_dir) = &overrides.state_dir {
        file.agent.state_dir = Some(state_dir.clone());
    }
    if let Some(url) = &overrides.collector {
        file.collector.url = Some(url.clone());
        file.collector.urls.clear();
    }
    if let Some(ca_file) = &overrides.ca_file {
        file.collector.ca_file = Some(ca_file.clone());
    }
    if overrides.insecure {
        file.collector.insecure = true;
    }
    let config = file.validate(path.as_deref())?;
    match &path {
        Some(path) => tracing::debug!(config = %path.display(), "config read"),
        None => tracing::debug!("no config file, using the defaults"),
    }
    Ok(config)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Runtime::new().context("failed to start the async runtime")
}

/// The service loop until `shutdown` resolves: `run`, and the Windows service's body.
fn run_agent(
    overrides: &Overrides,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let config = load_config(overrides)?;
    runtime()?.block_on(schedule::run(config, shutdown))
}

/// `estate-agent service ...`.
fn service(
    action: ServiceAction,
    overrides: Overrides,
    log_level: String,
) -> anyhow::Result<ExitCode> {
    let program = estate_service::AGENT;
    if !matches!(action, ServiceAction::Run)
        && (overrides.state_dir.is_some()
            || overrides.collector.is_some()
            || overrides.ca_file.is_some()
            || overrides.insecure)
    {
        anyhow::bail!(
            "`--state-dir`, `--collector`, `--ca-file` and `--insecure` are not stored in the \
             service: set `agent.state_dir`, `collector.url`, `collector.ca_file` and \
             `collector.insecure` in the config file instead"
        );
    }
    match action {
        ServiceAction::Install { root } => {
            let config = estate_service::resolve_config(&program, overrides.config.as_deref())?;
            let (file, _) = ConfigFile::load(Some(&config))?;
            let validated = file.clone().validate(Some(&config))?;
            let needs = install::service_needs(&file, &validated).map_err(|message| {
                ConfigError::Invalid {
                    path: Some(config.clone()),
                    message,
                }
            })?;
            let installation = Installation {
                program,
                binary: estate_service::current_binary()?,
                config,
                needs,
            };
            estate_service::install(&installation, root.as_deref())?;
        }
        ServiceAction::Uninstall { root } => estate_service::uninstall(&program, root.as_deref())?,
        ServiceAction::Start => estate_service::start(&program)?,
        ServiceAction::Stop => estate_service::stop(&program)?,
        ServiceAction::Status => {
            return Ok(match estate_service::status(&program)? {
                Running::Yes => ExitCode::SUCCESS,
                Running::No => ExitCode::from(3),
            });
        }
        ServiceAction::Run => {
            #[cfg(windows)]
            estate_service::windows::run_service(program, &log_level, move |shutdown| {
                run_agent(&overrides, shutdown)
            })?;
            #[cfg(not(windows))]
            {
                let _ = log_level;
                anyhow::bail!(
                    "`service run` is what the Windows service manager starts; under systemd \
                     the unit runs `estate-agent run`"
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
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
