//! `estate-collector`: parses flags, sets up logging and runs the collector library.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use estate_collector::config::ConfigFile;
use estate_service::{Installation, Running, ServiceAction};
use std::future::Future;
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
    /// Bearer tokens for the HTTP API: `api-token create` makes one and prints the config
    /// lines that let the collector accept it
    #[command(subcommand, name = "api-token")]
    ApiToken(ApiTokenCommand),
    /// Agent tokens: `token create --enrollment` (a secret agents exchange for their own
    /// token), `token create --host HOST`, `token list`, `token revoke ID`
    Token {
        #[command(flatten)]
        database: TokenDatabase,
        #[command(subcommand)]
        action: TokenCommand,
    },
    /// Install, remove, start, stop or inspect the collector as a system service (systemd
    /// unit, Windows service) running with the config file given with `--config`
    Service {
        /// The collector's config file, stored absolute in the service [default:
        /// /etc/estate/collector.toml]
        #[arg(long, global = true, value_name = "PATH")]
        config: Option<PathBuf>,
        #[command(subcommand)]
        action: ServiceAction,
    },
}

/// Where the `token` commands find the database: as the collector itself does.
#[derive(Debug, clap::Args)]
struct TokenDatabase {
    /// The collector's TOML config file, for its `database` key
    #[arg(long, value_name = "PATH", global = true)]
    config: Option<PathBuf>,
    /// SQLite database file or PostgreSQL URL; overrides the config's [default: estate.db]
    #[arg(long, value_name = "PATH|URL", global = true)]
    database: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Make a token and print its secret (shown this once; only its hash is stored)
    #[command(group(clap::ArgGroup::new("kind").required(true).args(["enrollment", "host"])))]
    Create {
        /// A shared enrollment secret: each agent exchanges it once for its own token
        #[arg(long)]
        enrollment: bool,
        /// An agent token for this hostname (as the agent reports it), without enrollment
        #[arg(long, value_name = "HOSTNAME")]
        host: Option<String>,
        /// Valid for this long, e.g. `24h` or `30d` [default: until revoked]
        #[arg(long, value_name = "DURATION")]
        ttl: Option<String>,
        /// How many agents may enroll with the secret [default: any number until it expires]
        #[arg(long, value_name = "N", requires = "enrollment")]
        uses: Option<u32>,
    },
    /// List tokens: id, kind, host, times and state; never a secret
    List,
    /// Revoke a token by its id: within seconds the collector refuses it
    Revoke {
        /// The id `token list` shows
        id: String,
    },
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

#[derive(Debug, Subcommand)]
enum ApiTokenCommand {
    /// Make a random token, print it once, and print the `[[api_tokens]]` lines (its SHA-256,
    /// never the token) to add to the collector's config; restart the collector to apply
    Create {
        /// Who will hold the token, e.g. `grafana` (letters, digits, `-`, `_`, `.`); logged
        /// with the calls it makes
        #[arg(long, value_name = "NAME")]
        name: String,
        /// `read`: every GET of the API (and /metrics, /healthz when protected); `admin`:
        /// also calls that change state, such as deleting a host
        #[arg(long, value_name = "read|admin")]
        scope: String,
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
    /// SQLite database file, or a PostgreSQL URL `postgres://user:password@host/db?sslmode=…`
    /// [default: estate.db in the working directory].
    #[arg(long, value_name = "PATH|URL")]
    database: Option<PathBuf>,
    /// This collector's name among those sharing a PostgreSQL database [default: hostname and
    /// gRPC port].
    #[arg(long, value_name = "NAME")]
    collector_id: Option<String>,
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
    /// How agents authenticate: none, certificate, token or either (config `agent_auth`)
    /// [default: certificate with a client CA, else none].
    #[arg(long, value_name = "MODE")]
    agent_auth: Option<String>,
    /// Sustained reports per second accepted from one agent [default: 2].
    #[arg(long, value_name = "RATE")]
    agent_rate_limit: Option<f64>,
    /// Reports one agent may send at once before the rate applies [default: 100].
    #[arg(long, value_name = "COUNT")]
    agent_burst: Option<u32>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Under the Windows service manager there is no console: that mode logs to the Event
    // Log and a file, set up by `estate_service::windows::run_service`.
    let under_service_manager = matches!(
        cli.command,
        Some(Command::Service {
            action: ServiceAction::Run,
            ..
        })
    );
    if !under_service_manager {
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_new(&cli.log)
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
            )
            .with_writer(std::io::stderr)
            // Colours only on a terminal: journald and log files get plain text.
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
    let result = match cli.command {
        None => serve(cli.serve, shutdown_signal()).map(|()| ExitCode::SUCCESS),
        Some(Command::Tls(TlsCommand::Init {
            dir,
            hosts,
            clients,
            days,
        })) => tls_init(dir, hosts, clients, days).map(|()| ExitCode::SUCCESS),
        Some(Command::ApiToken(ApiTokenCommand::Create { name, scope })) => {
            api_token_create(&name, &scope).map(|()| ExitCode::SUCCESS)
        }
        Some(Command::Service { config, action }) => service(action, config, cli.log),
        Some(Command::Token { database, action }) => {
            token(database, action).map(|()| ExitCode::SUCCESS)
        }
    };
    match result {
        Ok(code) => code,
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

/// `estate-collector api-token create`: the output is valid TOML but for the token's own line
/// (the second), so it can be cut apart by line.
fn api_token_create(name: &str, scope: &str) -> anyhow::Result<()> {
    use estate_collector::auth;
    auth::check_name(name).map_err(|error| anyhow::anyhow!("`--name`: {error}"))?;
    let scope = auth::Scope::parse(scope)
        .ok_or_else(|| anyhow::anyhow!("`--scope` `{scope}` must be `read` or `admin`"))?;
    let token = auth::generate_token()?;
    println!(
        "# API token `{name}` (scope {}), shown only now; the collector keeps only its SHA-256:",
        scope.as_str()
    );
    println!("{token}");
    println!("# Add to the collector's config, then restart the collector:");
    print!("{}", auth::config_lines(name, scope, &token));
    Ok(())
}

/// `estate-collector token ...`: opens the database the collector uses and changes its tokens.
fn token(database: TokenDatabase, action: TokenCommand) -> anyhow::Result<()> {
    use estate_collector::tokens::{self, IssueRequest, TokenKind};
    let file = match &database.config {
        Some(path) => ConfigFile::read(path)?,
        None => ConfigFile::default(),
    };
    let path = database
        .database
        .or(file.database)
        .unwrap_or_else(estate_collector::config::default_database);
    let store = tokens::open_store(&path)?;
    let now_ms = estate_collector::clock::now_ms();
    match action {
        TokenCommand::Create {
            enrollment,
            host,
            ttl,
            uses,
        } => {
            let ttl = ttl
                .map(|text| {
                    humantime::parse_duration(&text).map_err(|error| {
                        anyhow::anyhow!("`--ttl` `{text}` is not a duration such as `24h`: {error}")
                    })
                })
                .transpose()?;
            let request = IssueRequest {
                kind: if enrollment {
                    TokenKind::Enrollment
                } else {
                    TokenKind::Agent
                },
                host,
                ttl,
                uses,
            };
            let (secret, stored) = tokens::issue(store.as_ref(), &request, now_ms)?;
            // The secret alone on stdout, so `> file` captures just it; the rest on stderr.
            println!("{}", secret.secret);
            let expires = stored
                .expires_ms
                .map_or("never (until revoked)".to_owned(), |ms| {
                    humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64),
                    )
                    .to_string()
                });
            match secret.kind {
                TokenKind::Enrollment => eprintln!(
                    "enrollment secret `{}` created (expires {expires}, uses {}); this is the \
                     only time it is shown: put it in the agents' `collector.enrollment_secret_file`",
                    secret.id,
                    stored
                        .uses_left
                        .map_or("unlimited".to_owned(), |n| n.to_string()),
                ),
                TokenKind::Agent => eprintln!(
                    "agent token `{}` for host `{}` created (expires {expires}); this is the only \
                     time it is shown: write it to the agent's `<state_dir>/agent-token` (mode 0600)",
                    secret.id,
                    stored.host.as_deref().unwrap_or_default(),
                ),
            }
        }
        TokenCommand::List => print!("{}", tokens::render_list(&store.list_tokens()?, now_ms)),
        TokenCommand::Revoke { id } => {
            tokens::revoke(store.as_ref(), &id, now_ms)?;
            eprintln!("token `{id}` revoked");
        }
    }
    Ok(())
}

/// `estate-collector service ...`: every setting comes from the config file.
fn service(
    action: ServiceAction,
    config: Option<PathBuf>,
    log: String,
) -> anyhow::Result<ExitCode> {
    let program = estate_service::COLLECTOR;
    match action {
        ServiceAction::Install { root } => {
            let path = estate_service::resolve_config(&program, config.as_deref())?;
            let collector = ConfigFile::read(&path)?
                .into_config()
                .with_context(|| format!("invalid config `{}`", path.display()))?;
            let installation = Installation {
                program,
                binary: estate_service::current_binary()?,
                config: path,
                needs: collector.service_needs(),
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
            estate_service::windows::run_service(program, &log, move |shutdown| {
                let args = ServeArgs {
                    config,
                    grpc_listen: None,
                    http_listen: None,
                    database: None,
                    collector_id: None,
                    agent_rate_limit: None,
                    agent_burst: None,
                    stale_after: None,
                    expire_after: None,
                    tls_cert_file: None,
                    tls_key_file: None,
                    client_ca_file: None,
                    insecure: false,
                    agent_auth: None,
                };
                // A relative `database` lands beside the logs in ProgramData, not in System32.
                let home = estate_service::windows::program_data().join(program.name);
                std::fs::create_dir_all(&home)
                    .and_then(|()| std::env::set_current_dir(&home))
                    .with_context(|| format!("cannot work in `{}`", home.display()))?;
                serve(args, shutdown)
            })?;
            #[cfg(not(windows))]
            {
                let _ = (config, log);
                anyhow::bail!(
                    "`service run` is what the Windows service manager starts; under systemd \
                     the unit runs `estate-collector --config PATH`"
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs the collector until `shutdown` resolves.
fn serve(
    cli: ServeArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
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
    file.collector_id = cli.collector_id.or(file.collector_id);
    file.agent_rate_limit = cli.agent_rate_limit.or(file.agent_rate_limit);
    file.agent_burst = cli.agent_burst.or(file.agent_burst);
    file.agent_auth = cli.agent_auth.or(file.agent_auth);
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
        estate_collector::run(config, grpc, http, shutdown).await
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
