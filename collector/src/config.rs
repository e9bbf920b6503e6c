//! Collector configuration: an optional TOML file, overridden by command-line flags, validated
//! into a ready [`CollectorConfig`].

use crate::auth::{ApiAuth, ApiToken, Scope};
use crate::tls::{TlsFiles, Transport};
use anyhow::Context as _;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The collector's settings, ready to run.
#[derive(Debug, Clone)]
pub struct CollectorConfig {
    pub grpc_listen: SocketAddr,
    pub http_listen: SocketAddr,
    /// A SQLite file, or a `postgres://` URL (see [`CollectorConfig::postgres_url`]).
    pub database: PathBuf,
    pub stale_after: Duration,
    pub expire_after: Duration,
    /// TLS or, chosen explicitly, plain text.
    pub transport: Transport,
    /// This collector's name among those sharing one PostgreSQL database: recorded with each
    /// host it receives, so that exactly one collector renders the host's series.
    pub collector_id: String,
    /// How often a collector on a shared database re-reads which hosts are its own.
    pub ownership_refresh: Duration,
    /// Reports per agent: sustained rate and burst.
    pub agent_rate_limit: crate::limits::RateLimit,
    /// HTTP/2 streams (reports in flight) per agent connection.
    pub max_concurrent_streams: u32,
    /// Bearer tokens of the HTTP API; none configured means the API is open.
    pub api_auth: ApiAuth,
    /// The credential each report must carry: none, a client certificate, an agent token, or
    /// either of the two.
    pub agent_auth: crate::agent_auth::AgentAuth,
}

impl CollectorConfig {
    /// The PostgreSQL URL when `database` is one, `None` for a SQLite file.
    pub fn postgres_url(&self) -> Option<&str> {
        self.database
            .to_str()
            .filter(|text| crate::store::postgres::is_postgres_url(text))
    }
}

/// Plain text: for in-process tests and embedding, which pass already-bound loopback
/// listeners. [`crate::run`] logs a warning whenever it runs without TLS, and the collector
/// program never gets here without TLS files or `--insecure` ([`ConfigFile::into_config`]).
impl Default for CollectorConfig {
    fn default() -> Self {
        CollectorConfig {
            grpc_listen: default_grpc_listen(),
            http_listen: default_http_listen(),
            database: default_database(),
            stale_after: DEFAULT_STALE_AFTER,
            expire_after: DEFAULT_EXPIRE_AFTER,
            transport: Transport::Insecure,
            collector_id: default_collector_id(default_grpc_listen()),
            ownership_refresh: DEFAULT_OWNERSHIP_REFRESH,
            agent_rate_limit: DEFAULT_AGENT_RATE_LIMIT,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            api_auth: ApiAuth::default(),
            agent_auth: crate::agent_auth::AgentAuth::None,
        }
    }
}

/// What the collector says when it has neither TLS files nor `--insecure`.
pub const TLS_HOW_TO: &str = "the collector needs a TLS certificate: set `tls_cert_file` and \
     `tls_key_file` in the config (or `--tls-cert-file` and `--tls-key-file`); \
     `estate-collector tls init --dir /etc/estate/tls --host collector.example.com` makes a CA \
     and a certificate (README section \"Securing a deployment\"). To accept plain text \
     instead, which lets anyone on the network read and forge reports, pass `--insecure` \
     (config `insecure = true`)";
/// `<hostname>:<gRPC port>`: unique per collector process on a machine, and stable across
/// restarts, so a restarted collector takes its hosts back.
pub fn default_collector_id(grpc_listen: SocketAddr) -> String {
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "collector".to_owned());
    format!("{hostname}:{}", grpc_listen.port())
}

/// Short enough that a host moving between collectors is handed over within seconds; each
/// refresh costs one indexed query of the hosts that reported since the previous one.
pub const DEFAULT_OWNERSHIP_REFRESH: Duration = Duration::from_secs(5);
/// An agent sends one report a minute; two a second sustained and a burst of 100 let one that
/// spooled through an outage catch up quickly, while a runaway agent cannot flood the store.
pub const DEFAULT_AGENT_RATE_LIMIT: crate::limits::RateLimit = crate::limits::RateLimit {
    reports_per_second: 2.0,
    burst: 100,
};
/// An agent sends one report at a time; a few streams leave room for a proxy multiplexing
/// several agents on one connection.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 64;

/// Loopback by default: a first try on one machine exposes nothing to the network.
pub fn default_grpc_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9750))
}

pub fn default_http_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9751))
}

/// A database file in the working directory.
pub fn default_database() -> PathBuf {
    PathBuf::from("estate.db")
}

/// Three missed heartbeats at the agent's default 60 s interval, plus slack.
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(300);
/// A host silent for a week is gone from `/metrics` (it stays in the API).
pub const DEFAULT_EXPIRE_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);

/// The configuration file, as written by the user. Every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Address for agents' gRPC reports, e.g. `0.0.0.0:9750`.
    pub grpc_listen: Option<String>,
    /// Address for `/metrics`, `/healthz`, the API and the UI, e.g. `0.0.0.0:9751`.
    pub http_listen: Option<String>,
    /// SQLite database file, or a PostgreSQL URL (`postgres://user:password@host/db?sslmode=…`).
    pub database: Option<PathBuf>,
    /// A host not heard from for this long is reported down (`estate_host_up 0`), e.g. `5m`.
    pub stale_after: Option<String>,
    /// A host not heard from for this long disappears from `/metrics`, e.g. `7d`.
    pub expire_after: Option<String>,
    /// PEM certificate chain of both listeners (leaf first).
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// PEM CA certificate(s) whose client certificates authenticate agents (mTLS).
    pub client_ca_file: Option<PathBuf>,
    /// `true` serves plain text (no TLS): an explicit choice, logged at every start.
    pub insecure: Option<bool>,
    /// This collector's name when several share one PostgreSQL database, e.g. `collector-a`
    /// (default: hostname and gRPC port).
    pub collector_id: Option<String>,
    /// How often a collector on PostgreSQL re-reads which hosts it renders, e.g. `5s`.
    pub ownership_refresh: Option<String>,
    /// Sustained reports per second accepted from one agent; more are refused with
    /// `RESOURCE_EXHAUSTED` and retried by the agent.
    pub agent_rate_limit: Option<f64>,
    /// Reports one agent may send in a burst (a replay after an outage) before the rate applies.
    pub agent_burst: Option<u32>,
    /// Reports in flight on one agent connection (HTTP/2 streams).
    pub max_concurrent_streams: Option<u32>,
    /// How agents authenticate: `none`, `certificate` (needs `client_ca_file`), `token` (agent
    /// tokens from `estate-collector token create`, needs TLS) or `either` (a client
    /// certificate when presented, else a token). Default: `certificate` when `client_ca_file`
    /// is set, else `none`.
    pub agent_auth: Option<String>,
    /// Bearer tokens of the HTTP API, stored as SHA-256 digests. When any is configured,
    /// every `/api/v1` call needs one (`estate-collector api-token create` makes them).
    #[serde(default)]
    pub api_tokens: Vec<ApiTokenEntry>,
    /// `true`: `/metrics` needs a read token too (Prometheus: `authorization`).
    pub metrics_auth: Option<bool>,
    /// `true`: `/healthz` needs a read token too.
    pub healthz_auth: Option<bool>,
}

/// One `[[api_tokens]]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiTokenEntry {
    /// Who holds the token, e.g. `grafana`: logged with the calls it makes.
    pub name: String,
    /// `read` (every GET) or `admin` (also calls that change state, e.g. deleting a host).
    pub scope: String,
    /// SHA-256 of the token, 64 hex digits; the token itself is never stored.
    pub sha256: String,
}

impl ConfigFile {
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("failed to read config `{}`", path.display()))?;
        Self::parse(&text).with_context(|| format!("invalid config `{}`", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Self> {
        // toml's message carries the line, column and, for unknown keys, the allowed names.
        toml::from_str(text).map_err(|error| anyhow::anyhow!("{}", error.to_string().trim_end()))
    }

    /// Validates into a ready config; `self` holds the file merged with the flags.
    pub fn into_config(self) -> anyhow::Result<CollectorConfig> {
        let defaults = CollectorConfig::default();
        let grpc_listen = parse_address("grpc_listen", self.grpc_listen, defaults.grpc_listen)?;
        let has_client_ca = self.client_ca_file.is_some();
        let insecure = self.insecure.unwrap_or(false);
        let agent_auth = agent_auth(self.agent_auth.as_deref(), has_client_ca, insecure)?;
        let config = CollectorConfig {
            agent_auth,
            grpc_listen,
            http_listen: parse_address("http_listen", self.http_listen, defaults.http_listen)?,
            database: self.database.unwrap_or(defaults.database),
            stale_after: parse_duration("stale_after", self.stale_after, defaults.stale_after)?,
            expire_after: parse_duration("expire_after", self.expire_after, defaults.expire_after)?,
            transport: transport(
                self.tls_cert_file,
                self.tls_key_file,
                self.client_ca_file,
                self.insecure.unwrap_or(false),
            )?,
            collector_id: match self.collector_id {
                None => default_collector_id(grpc_listen),
                Some(id) if id.trim().is_empty() || id.len() > 128 => {
                    anyhow::bail!("`collector_id` `{id}` must be 1 to 128 characters and not blank")
                }
                Some(id) => id,
            },
            ownership_refresh: parse_duration(
                "ownership_refresh",
                self.ownership_refresh,
                defaults.ownership_refresh,
            )?,
            agent_rate_limit: crate::limits::RateLimit {
                reports_per_second: self
                    .agent_rate_limit
                    .unwrap_or(defaults.agent_rate_limit.reports_per_second),
                burst: self.agent_burst.unwrap_or(defaults.agent_rate_limit.burst),
            },
            max_concurrent_streams: self
                .max_concurrent_streams
                .unwrap_or(defaults.max_concurrent_streams),
            api_auth: api_auth(
                &self.api_tokens,
                self.metrics_auth.unwrap_or(false),
                self.healthz_auth.unwrap_or(false),
            )?,
        };
        if let Some(url) = config.postgres_url() {
            crate::store::postgres::check_url(url)?;
        }
        if config.ownership_refresh < Duration::from_millis(100)
            || config.ownership_refresh > Duration::from_secs(300)
        {
            anyhow::bail!(
                "`ownership_refresh` `{}` must be between 100ms and 5m",
                humantime::format_duration(config.ownership_refresh)
            );
        }
        let rate = config.agent_rate_limit.reports_per_second;
        if !(rate.is_finite() && rate > 0.0) {
            anyhow::bail!(
                "`agent_rate_limit` `{rate}` must be a positive number of reports per second"
            );
        }
        if config.agent_rate_limit.burst == 0 {
            anyhow::bail!("`agent_burst` `0` must be at least 1");
        }
        if config.max_concurrent_streams == 0 {
            anyhow::bail!("`max_concurrent_streams` `0` must be at least 1");
        }
        if config.stale_after < Duration::from_secs(1) {
            anyhow::bail!(
                "`stale_after` `{}` must be at least 1s",
                humantime::format_duration(config.stale_after)
            );
        }
        if config.expire_after <= config.stale_after {
            anyhow::bail!(
                "`expire_after` `{}` must be longer than `stale_after` `{}`",
                humantime::format_duration(config.expire_after),
                humantime::format_duration(config.stale_after)
            );
        }
        Ok(config)
    }
}

/// Validates the `[[api_tokens]]` tables: known scopes, well-formed digests, unique names and
/// digests; protecting `/metrics` or `/healthz` needs at least one token.
fn api_auth(
    entries: &[ApiTokenEntry],
    metrics_auth: bool,
    healthz_auth: bool,
) -> anyhow::Result<ApiAuth> {
    let mut tokens: Vec<ApiToken> = Vec::with_capacity(entries.len());
    for (index, entry) in entries.iter().enumerate() {
        let at = format!("api_tokens[{index}]");
        crate::auth::check_name(&entry.name)
            .map_err(|error| anyhow::anyhow!("`{at}.name`: {error}"))?;
        let scope = Scope::parse(&entry.scope).ok_or_else(|| {
            anyhow::anyhow!(
                "`{at}.scope` `{}` (token `{}`) must be `read` or `admin`",
                entry.scope,
                entry.name
            )
        })?;
        let sha256 = crate::auth::parse_digest(&entry.sha256).ok_or_else(|| {
            if entry.sha256.starts_with(crate::auth::TOKEN_PREFIX) {
                // Never echo what looks like the token itself into a log.
                anyhow::anyhow!(
                    "`{at}.sha256` (token `{}`) holds a token, not its digest: the config keeps \
                     only the SHA-256 that `estate-collector api-token create` prints",
                    entry.name
                )
            } else {
                anyhow::anyhow!(
                    "`{at}.sha256` `{}` (token `{}`) is not a SHA-256 digest (64 hex digits, as \
                     printed by `estate-collector api-token create`)",
                    entry.sha256,
                    entry.name
                )
            }
        })?;
        if let Some(first) = tokens.iter().position(|token| token.name == entry.name) {
            anyhow::bail!(
                "`{at}.name` `{}` is already the name of `api_tokens[{first}]`: names must be \
                 unique",
                entry.name
            );
        }
        if let Some(first) = tokens.iter().position(|token| token.sha256 == sha256) {
            anyhow::bail!(
                "`{at}.sha256` of token `{}` is the same as that of `api_tokens[{first}]` (`{}`): \
                 each token must be different",
                entry.name,
                tokens[first].name
            );
        }
        tokens.push(ApiToken {
            name: entry.name.clone(),
            scope,
            sha256,
        });
    }
    for (key, set) in [
        ("metrics_auth", metrics_auth),
        ("healthz_auth", healthz_auth),
    ] {
        if set && tokens.is_empty() {
            anyhow::bail!(
                "`{key} = true` needs at least one `[[api_tokens]]` entry with which to call it"
            );
        }
    }
    Ok(ApiAuth {
        tokens,
        protect_metrics: metrics_auth,
        protect_healthz: healthz_auth,
    })
}

/// `agent_auth`, checked against the other settings it needs.
fn agent_auth(
    text: Option<&str>,
    has_client_ca: bool,
    insecure: bool,
) -> anyhow::Result<crate::agent_auth::AgentAuth> {
    use crate::agent_auth::AgentAuth;
    let Some(text) = text else {
        return Ok(if has_client_ca {
            AgentAuth::Certificate
        } else {
            AgentAuth::None
        });
    };
    let auth = AgentAuth::parse(text).map_err(anyhow::Error::msg)?;
    if auth.accepts_certificates() && !has_client_ca {
        anyhow::bail!(
            "`agent_auth = \"{text}\"` needs `client_ca_file`, the CA of the agents' client \
             certificates"
        );
    }
    if auth == AgentAuth::None && has_client_ca {
        anyhow::bail!(
            "`agent_auth = \"none\"` but `client_ca_file` is set: remove one (with \
             `client_ca_file`, use `certificate` or `either`)"
        );
    }
    if auth.accepts_tokens() && insecure {
        anyhow::bail!(
            "`agent_auth = \"{text}\"` needs TLS but `insecure = true` (`--insecure`) serves plain \
             text: agent tokens and enrollment secrets must not cross the network unencrypted"
        );
    }
    Ok(auth)
}

fn transport(
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    client_ca_file: Option<PathBuf>,
    insecure: bool,
) -> anyhow::Result<Transport> {
    match (cert_file, key_file) {
        (Some(_), Some(_)) if insecure => anyhow::bail!(
            "`insecure = true` (`--insecure`) and TLS files are both set: remove one; \
             `insecure` serves plain text"
        ),
        (None, None) if client_ca_file.is_some() => {
            anyhow::bail!("`client_ca_file` needs TLS: set `tls_cert_file` and `tls_key_file` too")
        }
        (None, None) if insecure => Ok(Transport::Insecure),
        (None, None) => anyhow::bail!("{TLS_HOW_TO}"),
        (Some(cert_file), Some(key_file)) => Ok(Transport::Tls(TlsFiles {
            cert_file,
            key_file,
            client_ca_file,
        })),
        (Some(cert), None) => anyhow::bail!(
            "`tls_cert_file` `{}` is set but `tls_key_file` is not: set both",
            cert.display()
        ),
        (None, Some(key)) => anyhow::bail!(
            "`tls_key_file` `{}` is set but `tls_cert_file` is not: set both",
            key.display()
        ),
    }
}

/// The state directory systemd gives the collector's service (`StateDirectory=`), also its
/// working directory, where a relative `database` lands.
pub const SERVICE_STATE_DIR: &str = "/var/lib/estate-collector";

impl CollectorConfig {
    /// What the collector's service needs beyond the default sandbox: binding a port below
    /// 1024, and writing a database kept outside its state directory (the directory, for
    /// SQLite's `-wal` and `-shm` files beside it).
    pub fn service_needs(&self) -> estate_service::ServiceNeeds {
        let mut needs = estate_service::ServiceNeeds::default();
        if self.grpc_listen.port() < 1024 || self.http_listen.port() < 1024 {
            needs.add_capability("CAP_NET_BIND_SERVICE");
        }
        if self.database.is_absolute()
            && !self.database.starts_with(SERVICE_STATE_DIR)
            && let Some(directory) = self.database.parent()
        {
            needs.writable_paths.push(directory.to_owned());
        }
        needs
    }
}

fn parse_address(
    key: &str,
    text: Option<String>,
    default: SocketAddr,
) -> anyhow::Result<SocketAddr> {
    match text {
        None => Ok(default),
        Some(text) => text.parse().map_err(|_| {
            anyhow::anyhow!("`{key}` `{text}` is not an address such as `127.0.0.1:9750`")
        }),
    }
}

fn parse_duration(key: &str, text: Option<String>, default: Duration) -> anyhow::Result<Duration> {
    match text {
        None => Ok(default),
        Some(text) => humantime::parse_duration(&text).map_err(|error| {
            anyhow::anyhow!("`{key}` `{text}` is not a duration such as `5m` or `7d`: {error}")
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expected: &str) {
        let result = ConfigFile::parse(text).and_then(ConfigFile::into_config);
        let got = match result {
            Ok(config) => format!("ok {config:?}"),
            Err(error) => format!("{error:#}"),
        };
        assert!(got.contains(expected), "expected `{expected}` in:\n{got}");
    }

    #[test]
    fn defaults_are_loopback_and_a_local_file() {
        check(
            "insecure = true",
            "grpc_listen: 127.0.0.1:9750, http_listen: 127.0.0.1:9751, database: \"estate.db\"",
        );
    }

    #[test]
    fn plain_text_is_an_explicit_choice_and_tls_needs_both_files() {
        check(
            "",
            "the collector needs a TLS certificate: set `tls_cert_file`",
        );
        check("", "README section \"Securing a deployment\"");
        check("", "pass `--insecure` (config `insecure = true`)");
        check("insecure = false", "the collector needs a TLS certificate");
        check("insecure = true", "transport: Insecure");
        check(
            "tls_cert_file = \"c.pem\"\ntls_key_file = \"k.pem\"\n",
            "transport: Tls(TlsFiles { cert_file: \"c.pem\", key_file: \"k.pem\", \
             client_ca_file: None })",
        );
        check(
            "tls_cert_file = \"c.pem\"\n",
            "`tls_cert_file` `c.pem` is set but `tls_key_file` is not: set both",
        );
        check(
            "tls_key_file = \"k.pem\"\n",
            "`tls_key_file` `k.pem` is set but `tls_cert_file` is not: set both",
        );
        check(
            "tls_cert_file = \"c.pem\"\ntls_key_file = \"k.pem\"\ninsecure = true\n",
            "`insecure = true` (`--insecure`) and TLS files are both set",
        );
        check(
            "insecure = true\nclient_ca_file = \"ca.pem\"\n",
            "`client_ca_file` needs TLS",
        );
    }

    #[test]
    fn agent_auth_defaults_to_the_client_ca_and_needs_what_it_uses() {
        let tls = "tls_cert_file = \"c.pem\"\ntls_key_file = \"k.pem\"\n";
        let ca = "client_ca_file = \"ca.pem\"\n";
        check(tls, "agent_auth: None");
        check(&format!("{tls}{ca}"), "agent_auth: Certificate");
        check(
            &format!("{tls}agent_auth = \"token\"\n"),
            "agent_auth: Token",
        );
        check(
            &format!("{tls}{ca}agent_auth = \"either\"\n"),
            "agent_auth: Either",
        );
        check(
            &format!("{tls}agent_auth = \"either\"\n"),
            "`agent_auth = \"either\"` needs `client_ca_file`",
        );
        check(
            &format!("{tls}{ca}agent_auth = \"none\"\n"),
            "`agent_auth = \"none\"` but `client_ca_file` is set: remove one",
        );
        check(
            "insecure = true\nagent_auth = \"token\"\n",
            "`agent_auth = \"token\"` needs TLS but `insecure = true` (`--insecure`) serves plain text",
        );
        check(
            &format!("{tls}agent_auth = \"tokens\"\n"),
            "`agent_auth` `tokens` is not one of `none`, `certificate`, `token`, `either`",
        );
    }

    #[test]
    fn errors_name_the_key_the_value_and_the_line() {
        check(
            "grpc_listen = \"127.0.0.1:1\"\ndatabse = \"x.db\"\n",
            "line 2, column 1",
        );
        check(
            "databse = \"x.db\"\n",
            "unknown field `databse`, expected one of `grpc_listen`, `http_listen`, `database`, `stale_after`, `expire_after`, `tls_cert_file`, `tls_key_file`, `client_ca_file`, `insecure`, `collector_id`, `ownership_refresh`",
        );
        check(
            "http_listen = \"localhost\"\ninsecure = true\n",
            "`http_listen` `localhost` is not an address such as `127.0.0.1:9750`",
        );
        check(
            "stale_after = \"soon\"\ninsecure = true\n",
            "`stale_after` `soon` is not a duration such as `5m` or `7d`",
        );
        check(
            "insecure = true\ndatabase = \"postgres://estate@db/estate?sslmode=verify\"\n",
            "invalid database URL `postgres://estate@db/estate?sslmode=verify`: `sslmode` `verify` is not one of",
        );
        check(
            "insecure = true\ndatabase = \"postgres://estate:secret@db/estate?sslmode=verify-full&sslrootcert=/nonexistent/ca.crt\"\n",
            "invalid database URL `postgres://estate:***@db/estate?sslmode=verify-full&sslrootcert=/nonexistent/ca.crt`: cannot read `sslrootcert` `/nonexistent/ca.crt`",
        );
        check(
            "insecure = true\nownership_refresh = \"1h\"\n",
            "`ownership_refresh` `1h` must be between 100ms and 5m",
        );
        check(
            "insecure = true\ncollector_id = \" \"\n",
            "`collector_id` ` ` must be 1 to 128 characters",
        );
        check(
            "stale_after = \"1h\"\nexpire_after = \"30m\"\ninsecure = true\n",
            "`expire_after` `30m` must be longer than `stale_after` `1h`",
        );
    }

    /// A valid token table; `estate_api_x{n}` hashed.
    fn token_table(name: &str, scope: &str, token: &str) -> String {
        format!(
            "[[api_tokens]]\nname = \"{name}\"\nscope = \"{scope}\"\nsha256 = \"{}\"\n",
            crate::auth::hex(&crate::auth::digest(token))
        )
    }

    #[test]
    fn api_tokens_are_validated_naming_the_entry_and_value() {
        let read = token_table("grafana", "read", "estate_api_1");
        let admin = token_table("ops", "admin", "estate_api_2");
        let config = ConfigFile::parse(&format!(
            "insecure = true\nmetrics_auth = true\n{read}{admin}"
        ))
        .and_then(ConfigFile::into_config)
        .unwrap();
        let auth = &config.api_auth;
        assert!(auth.enabled() && auth.protect_metrics && !auth.protect_healthz);
        assert_eq!(
            auth.tokens
                .iter()
                .map(|token| (token.name.as_str(), token.scope, token.sha256))
                .collect::<Vec<_>>(),
            [
                ("grafana", Scope::Read, crate::auth::digest("estate_api_1")),
                ("ops", Scope::Admin, crate::auth::digest("estate_api_2")),
            ]
        );
        assert!(!CollectorConfig::default().api_auth.enabled());

        check(
            &format!(
                "insecure = true\n{read}{}",
                token_table("ci", "write", "estate_api_3")
            ),
            "`api_tokens[1].scope` `write` (token `ci`) must be `read` or `admin`",
        );
        check(
            "insecure = true\n[[api_tokens]]\nname = \"ci\"\nscope = \"read\"\nsha256 = \"abc\"\n",
            "`api_tokens[0].sha256` `abc` (token `ci`) is not a SHA-256 digest (64 hex digits",
        );
        let pasted_token = "insecure = true\n[[api_tokens]]\nname = \"ci\"\nscope = \"read\"\n\
                            sha256 = \"estate_api_00112233\"\n";
        check(
            pasted_token,
            "`api_tokens[0].sha256` (token `ci`) holds a token, not its digest",
        );
        let error = ConfigFile::parse(pasted_token)
            .and_then(ConfigFile::into_config)
            .unwrap_err();
        assert!(!format!("{error:#}").contains("estate_api_00112233"));
        check(
            &format!(
                "insecure = true\n{read}{}",
                token_table("grafana", "admin", "estate_api_3")
            ),
            "`api_tokens[1].name` `grafana` is already the name of `api_tokens[0]`",
        );
        check(
            &format!(
                "insecure = true\n{read}{}",
                token_table("again", "admin", "estate_api_1")
            ),
            "`api_tokens[1].sha256` of token `again` is the same as that of `api_tokens[0]` (`grafana`)",
        );
        check(
            &format!(
                "insecure = true\n{}",
                token_table("two words", "read", "estate_api_1")
            ),
            "`api_tokens[0].name`: token name `two words` must be 1 to 64",
        );
        check(
            "insecure = true\n[[api_tokens]]\nname = \"ci\"\nscope = \"read\"\n",
            "missing field `sha256`",
        );
        check(
            "insecure = true\nmetrics_auth = true\n",
            "`metrics_auth = true` needs at least one `[[api_tokens]]` entry",
        );
        check(
            "insecure = true\nhealthz_auth = true\n",
            "`healthz_auth = true` needs at least one `[[api_tokens]]` entry",
        );
    }

    #[test]
    fn a_postgres_url_selects_postgres_and_hides_its_password() {
        let config = ConfigFile::parse(
            "insecure = true\n\
             database = \"postgres://estate:secret@db.example:5433/estate?sslmode=require\"\n\
             collector_id = \"collector-a\"\n",
        )
        .and_then(ConfigFile::into_config)
        .unwrap();
        assert_eq!(
            config.postgres_url(),
            Some("postgres://estate:secret@db.example:5433/estate?sslmode=require")
        );
        assert_eq!(config.collector_id, "collector-a");
        assert_eq!(CollectorConfig::default().postgres_url(), None);
        assert!(CollectorConfig::default().collector_id.ends_with(":9750"));
    }

    #[test]
    fn the_service_gets_a_low_port_and_a_database_elsewhere_only_when_configured() {
        let needs = |text: &str| {
            ConfigFile::parse(text)
                .and_then(ConfigFile::into_config)
                .unwrap()
                .service_needs()
        };
        assert_eq!(
            needs("insecure = true\n"),
            estate_service::ServiceNeeds::default()
        );
        assert_eq!(
            needs("insecure = true\ndatabase = \"/var/lib/estate-collector/estate.db\"\n"),
            estate_service::ServiceNeeds::default()
        );
        let low = needs(
            "insecure = true\nhttp_listen = \"0.0.0.0:80\"\ndatabase = \"/srv/estate/estate.db\"\n",
        );
        assert_eq!(low.capabilities, ["CAP_NET_BIND_SERVICE"]);
        assert_eq!(low.writable_paths, [PathBuf::from("/srv/estate")]);
    }

    #[test]
    fn the_example_config_in_deploy_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/collector.example.toml");
        ConfigFile::read(&path)
            .and_then(ConfigFile::into_config)
            .unwrap();
    }
}
