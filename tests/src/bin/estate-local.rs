//! `estate-local`: estate on this one machine, for a first look. Runs a collector on embedded
//! SQLite and an agent that inventories this host and reports into it, in one process, through
//! the two libraries' `run` functions, until Ctrl-C. Deployments run the two binaries instead.
//!
//! Secure by default like a deployment: on first start it makes a private CA and a certificate
//! for loopback in `--tls-dir` (as `estate-collector tls init` does) and both listeners speak
//! TLS; the agent verifies the collector against that CA.

use anyhow::Context as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use tokio::net::TcpListener;
use tokio::sync::watch;

const USAGE: &str = "usage: estate-local [--grpc-listen ADDR] [--http-listen ADDR] \
                     [--database PATH] [--state-dir DIR] [--tls-dir DIR]";

struct Settings {
    grpc_listen: SocketAddr,
    http_listen: SocketAddr,
    database: PathBuf,
    state_dir: PathBuf,
    tls_dir: PathBuf,
}

fn parse_args() -> anyhow::Result<Settings> {
    let mut settings = Settings {
        grpc_listen: estate_collector::config::default_grpc_listen(),
        http_listen: estate_collector::config::default_http_listen(),
        database: PathBuf::from("estate-local.db"),
        state_dir: PathBuf::from("estate-agent-state"),
        tls_dir: PathBuf::from("estate-local-tls"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .with_context(|| format!("`{flag}` needs a value\n{USAGE}"))
        };
        match flag.as_str() {
            "--grpc-listen" => {
                let text = value()?;
                settings.grpc_listen = text
                    .parse()
                    .with_context(|| format!("`--grpc-listen` `{text}` is not an address"))?;
            }
            "--http-listen" => {
                let text = value()?;
                settings.http_listen = text
                    .parse()
                    .with_context(|| format!("`--http-listen` `{text}` is not an address"))?;
            }
            "--database" => settings.database = PathBuf::from(value()?),
            "--state-dir" => settings.state_dir = PathBuf::from(value()?),
            "--tls-dir" => settings.tls_dir = PathBuf::from(value()?),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => anyhow::bail!("unknown argument `{other}`\n{USAGE}"),
        }
    }
    Ok(settings)
}

/// The agent's config: this machine, reporting every 15 s (faster than a service's default,
/// so the first look is lively), with one check of the collector's own port.
fn agent_config(
    grpc: SocketAddr,
    state_dir: &Path,
    ca_file: &Path,
) -> anyhow::Result<estate_agent::config::AgentConfig> {
    let text = format!(
        r#"
[agent]
state_dir = "{state_dir}"

[collector]
url = "https://{grpc}"
ca_file = "{ca_file}"

[schedule]
heartbeat_interval = "15s"
inventory_interval = "10m"
inventory_jitter = "10s"

[[checks]]
name = "collector-grpc"
kind = "tcp"
address = "{grpc}"
interval = "15s"
"#,
        state_dir = toml_path(state_dir),
        ca_file = toml_path(ca_file),
    );
    let origin = Path::new("<estate-local>");
    Ok(estate_agent::config::ConfigFile::parse(&text, origin)?.validate(Some(origin))?)
}

/// A path inside a TOML basic string.
fn toml_path(path: &Path) -> String {
    path.display().to_string().replace('\\', "\\\\")
}

/// The CA and loopback certificate in `dir`, made on first start and reused after.
fn loopback_certificates(dir: &Path) -> anyhow::Result<estate_collector::tls::TlsFiles> {
    use estate_collector::certs;
    let files = estate_collector::tls::TlsFiles {
        cert_file: dir.join(certs::SERVER_CERT),
        key_file: dir.join(certs::SERVER_KEY),
        client_ca_file: None,
    };
    if !files.cert_file.exists() {
        certs::init(&certs::InitRequest {
            dir: dir.to_owned(),
            hosts: vec!["127.0.0.1".into(), "localhost".into(), "::1".into()],
            clients: Vec::new(),
            valid_for: std::time::Duration::from_secs(825 * 86_400),
        })
        .with_context(|| format!("failed to make certificates in `{}`", dir.display()))?;
    }
    Ok(files)
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ESTATE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let settings = parse_args()?;
    tokio::runtime::Runtime::new()?.block_on(run(settings))
}

async fn run(settings: Settings) -> anyhow::Result<()> {
    let grpc = TcpListener::bind(settings.grpc_listen)
        .await
        .with_context(|| format!("failed to listen on `{}` (gRPC)", settings.grpc_listen))?;
    let http = TcpListener::bind(settings.http_listen)
        .await
        .with_context(|| format!("failed to listen on `{}` (HTTP)", settings.http_listen))?;
    let (grpc_address, http_address) = (grpc.local_addr()?, http.local_addr()?);
    let tls = loopback_certificates(&settings.tls_dir)?;
    let ca_file = settings.tls_dir.join(estate_collector::certs::CA_CERT);
    let agent = agent_config(grpc_address, &settings.state_dir, &ca_file)?;
    let collector = estate_collector::config::CollectorConfig {
        grpc_listen: grpc_address,
        http_listen: http_address,
        database: settings.database.clone(),
        transport: estate_collector::tls::Transport::Tls(tls),
        ..Default::default()
    };

    println!("estate is running on this machine (Ctrl-C stops it)");
    println!("  web UI    https://{http_address}/");
    println!("  API       https://{http_address}/api/v1/hosts");
    println!("  metrics   https://{http_address}/metrics");
    println!("  gRPC      https://{grpc_address} (agents report here)");
    println!(
        "  TLS       certificates signed by estate-local's own CA `{}`: browsers warn until you \
         trust it; curl --cacert {} ...",
        ca_file.display(),
        ca_file.display()
    );
    println!(
        "  database  {}, agent state in {}",
        settings.database.display(),
        settings.state_dir.display()
    );

    let (stop_collector, collector_stopped) = watch::channel(false);
    let (stop_agent, agent_stopped) = watch::channel(false);
    let when_stopped = |mut stopped: watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    };
    let collector_task = tokio::spawn(estate_collector::run(
        collector,
        grpc,
        http,
        when_stopped(collector_stopped),
    ));
    let agent_task = tokio::spawn(estate_agent::schedule::run(
        agent,
        when_stopped(agent_stopped),
    ));

    tokio::signal::ctrl_c().await?;
    println!("stopping");
    // The agent first, while the collector can still take its last report.
    let _ = stop_agent.send(true);
    agent_task.await.context("the agent task failed")??;
    let _ = stop_collector.send(true);
    collector_task
        .await
        .context("the collector task failed")??;
    Ok(())
}
