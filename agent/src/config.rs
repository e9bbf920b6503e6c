//! The agent's TOML config: the file as written ([`ConfigFile`]), its loading with errors that
//! point at a line and column, and the pure validation into a ready [`AgentConfig`].
//!
//! Every key is optional; with no file at all the defaults work. `deploy/agent.example.toml`
//! documents every key and is parsed by a test.

use crate::checks::{CheckEntry, ScheduledCheck};
use serde::Deserialize;
use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the agent looks for its config when `--config` is not given. A missing file there
/// means "use the defaults"; a missing file named by `--config` is an error.
#[cfg(unix)]
pub const DEFAULT_CONFIG_PATH: &str = "/etc/estate/agent.toml";
/// Where the agent looks for its config when `--config` is not given.
#[cfg(windows)]
pub const DEFAULT_CONFIG_PATH: &str = r"C:\ProgramData\estate\agent.toml";

/// The config file as written. Validate it with [`ConfigFile::validate`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Where the agent keeps its state and what it inventories.
    #[serde(default)]
    pub agent: AgentSection,
    /// The collector the agent reports to.
    #[serde(default)]
    pub collector: CollectorSection,
    /// How often the agent collects and reports.
    #[serde(default)]
    pub schedule: ScheduleSection,
    /// The disk spool that keeps reports until the collector acknowledges them.
    #[serde(default)]
    pub spool: SpoolSection,
    /// The checks the agent runs, each on its own interval.
    #[serde(default)]
    pub checks: Vec<CheckEntry>,
}

/// `[agent]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSection {
    /// Directory holding the agent id and the sequence number; created if missing. Default:
    /// `/var/lib/estate-agent` when running as root (`%ProgramData%\estate-agent` on Windows),
    /// else `./estate-agent-state`.
    pub state_dir: Option<PathBuf>,
    /// Root of the filesystem to inventory: `/` on a live host, another tree in tests or when
    /// the agent runs in a container with the host's root mounted somewhere.
    #[serde(default = "default_root")]
    pub root: PathBuf,
}

impl Default for AgentSection {
    fn default() -> Self {
        AgentSection {
            state_dir: None,
            root: default_root(),
        }
    }
}

/// `[collector]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectorSection {
    /// The collector's gRPC endpoint, `https://host:port` (`http://` only with `insecure`).
    /// Default `https://127.0.0.1:9750`; give `urls` instead for several collectors.
    #[serde(default)]
    pub url: Option<String>,
    /// Several collectors sharing one database, tried in order: the agent stays with the one
    /// that answers and moves to the next when it stops answering. A name resolving to several
    /// addresses is tried at each of them in turn.
    #[serde(default)]
    pub urls: Vec<String>,
    /// PEM file of the CA that signed the collector's certificate; without it the system's
    /// trusted roots are used.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate for collectors that authenticate agents by certificate (mTLS);
    /// it must name this host's hostname.
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of `client_cert_file`.
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
    /// File holding the enrollment secret (`estate-collector token create --enrollment`), for
    /// collectors that authenticate agents by token: exchanged once for an agent token kept
    /// in `<state_dir>/agent-token` (mode 0600), which then goes with every report.
    #[serde(default)]
    pub enrollment_secret_file: Option<PathBuf>,
    /// `true` allows an `http://` url: reports travel unencrypted and unauthenticated. An
    /// explicit choice, logged at start.
    #[serde(default)]
    pub insecure: bool,
    /// How long to wait for the TCP and TLS connection to the collector.
    #[serde(default = "default_connect_timeout", with = "duration")]
    pub connect_timeout: Duration,
    /// How long one report may take, from sending it to the collector's acknowledgement.
    #[serde(default = "default_request_timeout", with = "duration")]
    pub timeout: Duration,
}

impl Default for CollectorSection {
    fn default() -> Self {
        CollectorSection {
            url: None,
            urls: Vec::new(),
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            enrollment_secret_file: None,
            insecure: false,
            connect_timeout: default_connect_timeout(),
            timeout: default_request_timeout(),
        }
    }
}

/// `[schedule]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSection {
    /// How often the full inventory is collected again; it is sent only when it changed.
    #[serde(default = "default_inventory_interval", with = "duration")]
    pub inventory_interval: Duration,
    /// Up to this much random extra delay before each collection, so that a fleet started
    /// together does not collect (and report) in lockstep.
    #[serde(default = "default_inventory_jitter", with = "duration")]
    pub inventory_jitter: Duration,
    /// How often a report (vitals, check results, inventory hash) is sent; the collector
    /// considers a host down after a few missed heartbeats.
    #[serde(default = "default_heartbeat_interval", with = "duration")]
    pub heartbeat_interval: Duration,
    /// How many checks may run at the same time.
    #[serde(default = "default_max_concurrent_checks")]
    pub max_concurrent_checks: usize,
}

impl Default for ScheduleSection {
    fn default() -> Self {
        ScheduleSection {
            inventory_interval: default_inventory_interval(),
            inventory_jitter: default_inventory_jitter(),
            heartbeat_interval: default_heartbeat_interval(),
            max_concurrent_checks: default_max_concurrent_checks(),
        }
    }
}

/// `[spool]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolSection {
    /// Most disk space the spooled reports may take (`"100MiB"`, `"2GB"`, or bytes as a
    /// number); beyond it the oldest reports are dropped and counted.
    #[serde(default = "default_spool_max_size")]
    pub max_size: ByteSize,
    /// Reports waiting longer than this are dropped and counted.
    #[serde(default = "default_spool_max_age", with = "duration")]
    pub max_age: Duration,
    /// The first wait before sending again after a failed delivery; it doubles with each
    /// failure, and every wait is drawn at random below that figure (full jitter).
    #[serde(default = "default_retry_initial_delay", with = "duration")]
    pub retry_initial_delay: Duration,
    /// The longest wait between delivery attempts.
    #[serde(default = "default_retry_max_delay", with = "duration")]
    pub retry_max_delay: Duration,
}

impl Default for SpoolSection {
    fn default() -> Self {
        SpoolSection {
            max_size: default_spool_max_size(),
            max_age: default_spool_max_age(),
            retry_initial_delay: default_retry_initial_delay(),
            retry_max_delay: default_retry_max_delay(),
        }
    }
}

/// A size in bytes, written as a number of bytes or as text with a unit (`"100MiB"`, `"2 GB"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parses `"512"`, `"64KiB"`, `"100 MiB"`, `"2GB"`; units B, KB, MB, GB (powers of 1000)
    /// and KiB, MiB, GiB (powers of 1024), case-insensitive.
    pub fn parse(text: &str) -> Result<ByteSize, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let invalid = || format!("invalid size `{text}`, expected e.g. `100MiB`, `2GB` or `4096`");
        let number: u64 = number.parse().map_err(|_| invalid())?;
        let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kb" => 1000,
            "mb" => 1000 * 1000,
            "gb" => 1000 * 1000 * 1000,
            "kib" => 1 << 10,
            "mib" => 1 << 20,
            "gib" => 1 << 30,
            _ => return Err(invalid()),
        };
        number
            .checked_mul(multiplier)
            .map(ByteSize)
            .ok_or_else(invalid)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            bytes if bytes >= 1 << 20 && bytes % (1 << 20) == 0 => write!(f, "{}MiB", bytes >> 20),
            bytes if bytes >= 1 << 10 && bytes % (1 << 10) == 0 => write!(f, "{}KiB", bytes >> 10),
            bytes => write!(f, "{bytes}B"),
        }
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Bytes(u64),
            Text(String),
        }
        match Written::deserialize(deserializer)? {
            Written::Bytes(bytes) => Ok(ByteSize(bytes)),
            Written::Text(text) => ByteSize::parse(&text).map_err(serde::de::Error::custom),
        }
    }
}

/// Weeks of hash-only reports at one a minute fit in 100 MiB, with room for full inventories.
pub fn default_spool_max_size() -> ByteSize {
    ByteSize(100 << 20)
}

/// A week: as long as the collector keeps a silent host's series.
pub fn default_spool_max_age() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}

/// A collector restart usually takes seconds.
pub fn default_retry_initial_delay() -> Duration {
    Duration::from_secs(1)
}

/// A fleet that lost its collector retries within five minutes of its return, spread out.
pub fn default_retry_max_delay() -> Duration {
    Duration::from_secs(300)
}

/// The live filesystem.
pub fn default_root() -> PathBuf {
    PathBuf::from("/")
}

/// A collector on the same machine, on estate's port, over TLS.
pub fn default_collector_url() -> String {
    "https://127.0.0.1:9750".to_owned()
}

/// A reachable collector accepts a connection in well under five seconds.
pub fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

/// The collector acknowledges only durable reports, so leave room for a busy database.
pub fn default_request_timeout() -> Duration {
    Duration::from_secs(10)
}

/// Hardware and software change rarely; an hour keeps the load low.
pub fn default_inventory_interval() -> Duration {
    Duration::from_secs(3600)
}

/// Spreads a fleet's collections over five minutes.
pub fn default_inventory_jitter() -> Duration {
    Duration::from_secs(300)
}

/// One report a minute gives minute-resolution liveness and vitals.
pub fn default_heartbeat_interval() -> Duration {
    Duration::from_secs(60)
}

/// Enough for a few dozen checks with one-minute intervals, few enough not to disturb the host.
pub fn default_max_concurrent_checks() -> usize {
    8
}

/// The state directory when none is configured: the system location for a service running
/// as root, the working directory otherwise (so trying the agent as a user just works).
pub fn default_state_dir() -> PathBuf {
    #[cfg(unix)]
    {
        if rustix::process::geteuid().is_root() {
            PathBuf::from("/var/lib/estate-agent")
        } else {
            PathBuf::from("estate-agent-state")
        }
    }
    #[cfg(windows)]
    {
        // The service runs as LocalSystem, which can write under ProgramData.
        let base = std::env::var_os("ProgramData").unwrap_or_else(|| r"C:\ProgramData".into());
        PathBuf::from(base).join("estate-agent")
    }
}

/// The validated config: everything the agent needs to run.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Directory for the agent id and the sequence number.
    pub state_dir: PathBuf,
    /// Root of the filesystem to inventory.
    pub root: PathBuf,
    pub collector: CollectorConfig,
    pub schedule: ScheduleConfig,
    pub spool: SpoolConfig,
    pub checks: Vec<ScheduledCheck>,
}

impl AgentConfig {
    /// The names of every configured check, in config order.
    pub fn check_names(&self) -> Vec<String> {
        self.checks.iter().map(|check| check.name.clone()).collect()
    }
}

/// Most collectors one agent may list.
pub const MAX_COLLECTOR_URLS: usize = 16;

/// Where and how to reach the collectors.
#[derive(Debug, Clone)]
pub struct CollectorConfig {
    /// `https://host:port` each (or, with `insecure`, `http://`), without credentials, so they
    /// are safe to log; tried in order (at least one).
    pub urls: Vec<String>,
    /// The CA to verify the collector's certificate with; `None`: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// The client certificate and key (mTLS), both or neither.
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    /// The agent token's file and the enrollment secret's (agent authentication by token).
    pub credentials: crate::credentials::CredentialFiles,
    /// Plain text was chosen explicitly (the url is `http://`).
    pub insecure: bool,
    pub connect_timeout: Duration,
    pub timeout: Duration,
}

/// How often the agent collects and reports.
#[derive(Debug, Clone)]
pub struct ScheduleConfig {
    pub inventory_interval: Duration,
    pub inventory_jitter: Duration,
    pub heartbeat_interval: Duration,
    pub max_concurrent_checks: usize,
}

/// The spool's bounds and the delivery retry policy.
#[derive(Debug, Clone, Copy)]
pub struct SpoolConfig {
    pub limits: crate::spool::SpoolLimits,
    pub retry_initial_delay: Duration,
    pub retry_max_delay: Duration,
}

/// Why the config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("failed to read config `{}`", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to read config `{}`: {location}{message}", path.display())]
    Parse {
        path: PathBuf,
        /// `line L, column C: `, or empty when the parser gave no position.
        location: Location,
        message: String,
    },
    #[error("invalid config{}: {message}", origin(path.as_deref()))]
    Invalid {
        /// The file, or `None` for the built-in defaults.
        path: Option<PathBuf>,
        message: String,
    },
}

fn origin(path: Option<&Path>) -> String {
    match path {
        Some(path) => format!(" `{}`", path.display()),
        None => String::new(),
    }
}

/// A position in the config file, 1-based, counted in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location(Option<(usize, usize)>);

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some((line, column)) => write!(f, "line {line}, column {column}: "),
            None => Ok(()),
        }
    }
}

impl Location {
    /// The line and column of byte `offset` in `text`.
    fn of(text: &str, offset: usize) -> Location {
        let before = &text[..text.floor_char_boundary(offset.min(text.len()))];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        Location(Some((line, column)))
    }
}

impl ConfigFile {
    /// Reads the config named by `--config`, or the default location if it exists, or the
    /// defaults. Returns the file actually read, for the start-up log.
    pub fn load(explicit: Option<&Path>) -> Result<(ConfigFile, Option<PathBuf>), ConfigError> {
        let path = match explicit {
            Some(path) => path.to_owned(),
            None => {
                let path = PathBuf::from(DEFAULT_CONFIG_PATH);
                if !path.exists() {
                    return Ok((ConfigFile::default(), None));
                }
                path
            }
        };
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let file = ConfigFile::parse(&text, &path)?;
        Ok((file, Some(path)))
    }

    /// Parses config text; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<ConfigFile, ConfigError> {
        toml::from_str(text).map_err(|error| ConfigError::Parse {
            path: path.to_owned(),
            location: error
                .span()
                .map_or(Location(None), |span| Location::of(text, span.start)),
            message: error.message().trim_end().to_owned(),
        })
    }

    /// Validates the file into a ready config. Pure apart from asking whether the agent runs
    /// as root, for the default state directory; `path` only names the file in errors.
    pub fn validate(self, path: Option<&Path>) -> Result<AgentConfig, ConfigError> {
        self.validate_inner()
            .map_err(|message| ConfigError::Invalid {
                path: path.map(Path::to_owned),
                message,
            })
    }

    fn validate_inner(self) -> Result<AgentConfig, String> {
        let ConfigFile {
            agent,
            collector,
            schedule,
            spool,
            checks,
        } = self;

        let state_dir = agent.state_dir.unwrap_or_else(default_state_dir);
        if state_dir.as_os_str().is_empty() {
            return Err("`agent.state_dir` is empty".to_owned());
        }
        if agent.root.as_os_str().is_empty() {
            return Err("`agent.root` is empty".to_owned());
        }

        let urls = collector_urls(collector.url, collector.urls, collector.insecure)?;
        if collector.insecure && collector.ca_file.is_some() {
            return Err(
                "`collector.ca_file` is set but `collector.insecure = true` sends plain text: \
                 remove one"
                    .to_owned(),
            );
        }
        for (key, file) in [
            ("collector.ca_file", &collector.ca_file),
            ("collector.client_cert_file", &collector.client_cert_file),
            ("collector.client_key_file", &collector.client_key_file),
            (
                "collector.enrollment_secret_file",
                &collector.enrollment_secret_file,
            ),
        ] {
            if file
                .as_ref()
                .is_some_and(|file| file.as_os_str().is_empty())
            {
                return Err(format!("`{key}` is empty"));
            }
        }
        match (&collector.client_cert_file, &collector.client_key_file) {
            (Some(_), None) | (None, Some(_)) => {
                return Err(
                    "`collector.client_cert_file` and `collector.client_key_file` go together: \
                     set both or neither"
                        .to_owned(),
                );
            }
            (Some(_), Some(_)) if collector.insecure => {
                return Err(
                    "`collector.client_cert_file` needs TLS but `collector.insecure = true` \
                     sends plain text: remove one"
                        .to_owned(),
                );
            }
            _ => {}
        }
        if collector.insecure && collector.enrollment_secret_file.is_some() {
            return Err(
                "`collector.enrollment_secret_file` needs TLS but `collector.insecure = true` \
                 sends plain text: the secret and the agent token must not cross the network \
                 unencrypted"
                    .to_owned(),
            );
        }
        at_least("collector.connect_timeout", collector.connect_timeout, MS)?;
        at_least("collector.timeout", collector.timeout, MS)?;

        // Sub-second heartbeats are for tests that exercise many reports quickly.
        at_least(
            "schedule.heartbeat_interval",
            schedule.heartbeat_interval,
            100 * MS,
        )?;
        at_least(
            "schedule.inventory_interval",
            schedule.inventory_interval,
            SECOND,
        )?;
        if schedule.max_concurrent_checks == 0 {
            return Err("`schedule.max_concurrent_checks` `0` must be at least 1".to_owned());
        }

        if spool.max_size.0 < MIN_SPOOL_BYTES {
            return Err(format!(
                "`spool.max_size` `{}` must be at least {}",
                spool.max_size,
                ByteSize(MIN_SPOOL_BYTES)
            ));
        }
        at_least("spool.max_age", spool.max_age, SECOND)?;
        at_least("spool.retry_initial_delay", spool.retry_initial_delay, MS)?;
        if spool.retry_max_delay < spool.retry_initial_delay {
            return Err(format!(
                "`spool.retry_max_delay` `{}` must be at least `spool.retry_initial_delay` `{}`",
                humantime::format_duration(spool.retry_max_delay),
                humantime::format_duration(spool.retry_initial_delay),
            ));
        }

        let mut names = BTreeSet::new();
        let mut ready = Vec::with_capacity(checks.len());
        for entry in checks {
            validate_check_name(&entry.name)?;
            if !names.insert(entry.name.clone()) {
                return Err(format!("check name `{}` is used twice", entry.name));
            }
            let field = |key: &str| format!("checks.{}.{key}", entry.name);
            at_least(&field("interval"), entry.interval, SECOND)?;
            at_least(&field("timeout"), entry.timeout, MS)?;
            if entry.timeout > entry.interval {
                return Err(format!(
                    "`{}` `{}` must not exceed the check's interval `{}`",
                    field("timeout"),
                    humantime::format_duration(entry.timeout),
                    humantime::format_duration(entry.interval),
                ));
            }
            let check = entry.config.validate().map_err(|error| {
                format!(
                    "check `{}` (kind `{}`): {error}",
                    entry.name,
                    entry.config.kind()
                )
            })?;
            ready.push(ScheduledCheck {
                name: entry.name,
                interval: entry.interval,
                timeout: entry.timeout,
                check,
            });
        }

        let token_file = state_dir.join(crate::credentials::AGENT_TOKEN_FILE);
        Ok(AgentConfig {
            state_dir,
            root: agent.root,
            collector: CollectorConfig {
                urls,
                ca_file: collector.ca_file,
                client_cert_file: collector.client_cert_file,
                client_key_file: collector.client_key_file,
                credentials: crate::credentials::CredentialFiles {
                    token_file,
                    enrollment_secret_file: collector.enrollment_secret_file,
                },
                insecure: collector.insecure,
                connect_timeout: collector.connect_timeout,
                timeout: collector.timeout,
            },
            schedule: ScheduleConfig {
                inventory_interval: schedule.inventory_interval,
                inventory_jitter: schedule.inventory_jitter,
                heartbeat_interval: schedule.heartbeat_interval,
                max_concurrent_checks: schedule.max_concurrent_checks,
            },
            spool: SpoolConfig {
                limits: crate::spool::SpoolLimits {
                    max_bytes: spool.max_size.0,
                    max_age: spool.max_age,
                },
                retry_initial_delay: spool.retry_initial_delay,
                retry_max_delay: spool.retry_max_delay,
            },
            checks: ready,
        })
    }
}

const MS: Duration = Duration::from_millis(1);
/// The smallest spool accepted, 64 KiB: a few dozen heartbeats.
const MIN_SPOOL_BYTES: u64 = 64 << 10;
const SECOND: Duration = Duration::from_secs(1);

fn at_least(key: &str, value: Duration, minimum: Duration) -> Result<(), String> {
    if value < minimum {
        return Err(format!(
            "`{key}` `{}` must be at least {}",
            humantime::format_duration(value),
            humantime::format_duration(minimum),
        ));
    }
    Ok(())
}

/// Check names label reports and metrics: keep them short and plain.
fn validate_check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a check has an empty `name`".to_owned());
    }
    if name.len() > 64 {
        return Err(format!("check name `{name}` is longer than 64 characters"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!(
            "check name `{name}` may only contain letters, digits, `-`, `_` and `.`"
        ));
    }
    Ok(())
}

/// How to set up TLS, for messages that refuse plain text.
pub const TLS_HOW_TO: &str = "README section \"Securing a deployment\"";

/// Accepts `https://host[:port][/]`, or `http://…` when `insecure` says plain text was chosen
/// explicitly. Credentials in the URL would end up in logs (the URL is logged when the
/// collector is unreachable), so they are refused.
/// `url` or `urls` (not both), each valid, none twice; the default collector when neither.
fn collector_urls(
    url: Option<String>,
    urls: Vec<String>,
    insecure: bool,
) -> Result<Vec<String>, String> {
    let urls = match (url, urls.is_empty()) {
        (Some(_), false) => {
            return Err("set `collector.url` or `collector.urls`, not both".to_owned());
        }
        (Some(url), true) => vec![url],
        (None, false) => urls,
        (None, true) => vec![default_collector_url()],
    };
    if urls.len() > MAX_COLLECTOR_URLS {
        return Err(format!(
            "`collector.urls` lists {} collectors, the limit is {MAX_COLLECTOR_URLS}",
            urls.len()
        ));
    }
    for (index, url) in urls.iter().enumerate() {
        validate_collector_url(url, insecure)?;
        if urls[..index].contains(url) {
            return Err(format!("`collector.urls` lists `{url}` twice"));
        }
    }
    Ok(urls)
}

pub fn validate_collector_url(url: &str, insecure: bool) -> Result<(), String> {
    let uri: tonic::transport::Uri = url
        .parse()
        .map_err(|error| format!("collector url `{url}` is not a valid url: {error}"))?;
    if uri
        .authority()
        .is_some_and(|authority| authority.as_str().contains('@'))
    {
        // Do not echo the URL: it holds the credentials.
        return Err("collector url must not contain credentials".to_owned());
    }
    match uri.scheme_str() {
        Some("https") if insecure => {
            return Err(format!(
                "collector url `{url}` is https but `collector.insecure = true` (`--insecure`) \
                 is set: remove `insecure` (it only allows `http://`; certificates are always \
                 verified)"
            ));
        }
        Some("https") => {}
        Some("http") if insecure => {}
        Some("http") => {
            let secure = url.replacen("http://", "https://", 1);
            return Err(format!(
                "collector url `{url}` is plain text: use `{secure}` with the collector's TLS \
                 certificate (`collector.ca_file`, {TLS_HOW_TO}), or set \
                 `collector.insecure = true` (`--insecure`) to send reports unencrypted"
            ));
        }
        Some(other) => {
            return Err(format!(
                "collector url `{url}` has scheme `{other}`, expected `https`"
            ));
        }
        None => {
            return Err(format!(
                "collector url `{url}` has no scheme, expected `https://{url}`"
            ));
        }
    }
    let Some(authority) = uri.authority() else {
        return Err(format!("collector url `{url}` has no host"));
    };
    if authority.as_str().contains('@') {
        // Do not echo the URL: it holds the credentials.
        return Err("collector url must not contain credentials".to_owned());
    }
    if authority.host().is_empty() {
        return Err(format!("collector url `{url}` has no host"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!(
            "collector url `{url}` must not have a path or query, expected `https://host:port`"
        ));
    }
    Ok(())
}

/// Serde glue for humantime durations (`"30s"`, `"5m"`, `"1h 30m"`).
pub mod duration {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(&text).map_err(|error| {
            serde::de::Error::custom(format!(
                "invalid duration `{text}`: {error}, expected e.g. `30s`, `5m`, `1h`"
            ))
        })
    }

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&humantime::format_duration(*value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATH: &str = "/etc/estate/agent.toml";

    fn load(text: &str) -> Result<AgentConfig, ConfigError> {
        let path = Path::new(PATH);
        ConfigFile::parse(text, path)?.validate(Some(path))
    }

    /// Parses and validates `text`; `expected` is the error message, or "" for success.
    fn check(text: &str, expected: &str) {
        let actual = match load(text) {
            Ok(_) => String::new(),
            Err(error) => error.to_string(),
        };
        assert_eq!(actual, expected, "config:\n{text}");
    }

    #[test]
    fn syntax_and_unknown_keys_point_at_line_and_column() {
        check(
            "[agent]\nroot = \"/\"\n[colector]\nurl = \"http://x:1\"\n",
            "failed to read config `/etc/estate/agent.toml`: line 3, column 2: unknown field \
             `colector`, expected one of `agent`, `collector`, `schedule`, `spool`, `checks`",
        );
        check(
            "[schedule]\nheartbeat = \"1m\"\n",
            "failed to read config `/etc/estate/agent.toml`: line 2, column 1: unknown field \
             `heartbeat`, expected one of `inventory_interval`, `inventory_jitter`, \
             `heartbeat_interval`, `max_concurrent_checks`",
        );
        check(
            "[collector]\nurl = http://x\n",
            "failed to read config `/etc/estate/agent.toml`: line 2, column 7: string values \
             must be quoted, expected literal string",
        );
        check(
            "[schedule]\nheartbeat_interval = \"5 lunes\"\n",
            "failed to read config `/etc/estate/agent.toml`: line 2, column 22: invalid duration \
             `5 lunes`: unknown time unit \"lunes\", supported units: ns, us/µs, ms, sec, min, \
             hours, days, weeks, months, years (and few variations), expected e.g. `30s`, `5m`, `1h`",
        );
        check(
            "[schedule]\nmax_concurrent_checks = -1\n",
            "failed to read config `/etc/estate/agent.toml`: line 2, column 25: invalid value: \
             integer `-1`, expected usize",
        );
    }

    #[test]
    fn checks_errors_name_the_kind_and_the_field() {
        // serde lists the kinds in declaration order, which `CHECK_KINDS` follows.
        let kinds: Vec<String> = crate::checks::CHECK_KINDS
            .iter()
            .map(|kind| format!("`{kind}`"))
            .collect();
        let expected = match kinds.as_slice() {
            [one] => one.clone(),
            [first, second] => format!("{first} or {second}"),
            many => format!("one of {}", many.join(", ")),
        };
        check(
            "[[checks]]\nname = \"dc\"\nkind = \"gopher\"\n",
            &format!(
                "failed to read config `/etc/estate/agent.toml`: line 1, column 1: unknown \
                 variant `gopher`, expected {expected}"
            ),
        );
        check(
            "[[checks]]\nname = \"db\"\nkind = \"tcp\"\naddress = \"db:1\"\nretries = 3\n",
            "failed to read config `/etc/estate/agent.toml`: line 1, column 1: unknown field \
             `retries`, expected one of `host`, `port`, `address`",
        );
        // A misspelt shared key reaches the kind's fields, which reject it (see `CheckEntry`).
        check(
            "[[checks]]\nname = \"db\"\nkind = \"tcp\"\naddress = \"db:1\"\nintervall = \"5m\"\n",
            "failed to read config `/etc/estate/agent.toml`: line 1, column 1: unknown field \
             `intervall`, expected one of `host`, `port`, `address`",
        );
        check(
            "[[checks]]\nname = \"db\"\naddress = \"db:1\"\n",
            "failed to read config `/etc/estate/agent.toml`: line 1, column 1: missing field `kind`",
        );
        check(
            "[[checks]]\nname = \"db\"\nkind = \"tcp\"\nhost = \"db\"\n",
            "invalid config `/etc/estate/agent.toml`: check `db` (kind `tcp`): host `db` needs \
             a `port`",
        );
        let db = "kind = \"tcp\"\naddress = \"db:5432\"\n";
        check(
            &format!("[[checks]]\nname = \"db\"\n{db}[[checks]]\nname = \"db\"\n{db}"),
            "invalid config `/etc/estate/agent.toml`: check name `db` is used twice",
        );
        check(
            &format!("[[checks]]\nname = \"my db\"\n{db}"),
            "invalid config `/etc/estate/agent.toml`: check name `my db` may only contain \
             letters, digits, `-`, `_` and `.`",
        );
        check(
            &format!("[[checks]]\nname = \"\"\n{db}"),
            "invalid config `/etc/estate/agent.toml`: a check has an empty `name`",
        );
        check(
            &format!("[[checks]]\nname = \"db\"\ninterval = \"10s\"\ntimeout = \"30s\"\n{db}"),
            "invalid config `/etc/estate/agent.toml`: `checks.db.timeout` `30s` must not exceed \
             the check's interval `10s`",
        );
        check(
            &format!("[[checks]]\nname = \"db\"\ninterval = \"0s\"\n{db}"),
            "invalid config `/etc/estate/agent.toml`: `checks.db.interval` `0s` must be at \
             least 1s",
        );
    }

    #[test]
    fn several_collectors_are_listed_with_urls() {
        let config = load(
            "[collector]\nurls = [\"https://collector-a:9750\", \"https://collectors.example:9750\"]\n",
        )
        .unwrap();
        assert_eq!(
            config.collector.urls,
            vec![
                "https://collector-a:9750",
                "https://collectors.example:9750"
            ]
        );
        check(
            "[collector]\nurl = \"https://a:1\"\nurls = [\"https://b:1\"]\n",
            "invalid config `/etc/estate/agent.toml`: set `collector.url` or `collector.urls`, \
             not both",
        );
        check(
            "[collector]\nurls = [\"https://a:1\", \"https://a:1\"]\n",
            "invalid config `/etc/estate/agent.toml`: `collector.urls` lists `https://a:1` twice",
        );
        check(
            "[collector]\nurls = [\"https://a:1\", \"a:2\"]\n",
            "invalid config `/etc/estate/agent.toml`: collector url `a:2` has no scheme, \
             expected `https://a:2`",
        );
    }

    #[test]
    fn values_are_validated_and_named() {
        check("", "");
        check(
            "[schedule]\nheartbeat_interval = \"0s\"\n",
            "invalid config `/etc/estate/agent.toml`: `schedule.heartbeat_interval` `0s` must be \
             at least 100ms",
        );
        check(
            "[schedule]\nmax_concurrent_checks = 0\n",
            "invalid config `/etc/estate/agent.toml`: `schedule.max_concurrent_checks` `0` must \
             be at least 1",
        );
        check(
            "[collector]\nurl = \"127.0.0.1:9750\"\n",
            "invalid config `/etc/estate/agent.toml`: collector url `127.0.0.1:9750` has no \
             scheme, expected `https://127.0.0.1:9750`",
        );
        check(
            "[collector]\nurl = \"http://collector:9750\"\n",
            "invalid config `/etc/estate/agent.toml`: collector url `http://collector:9750` is \
             plain text: use `https://collector:9750` with the collector's TLS certificate \
             (`collector.ca_file`, README section \"Securing a deployment\"), or set \
             `collector.insecure = true` (`--insecure`) to send reports unencrypted",
        );
        check(
            "[collector]\nurl = \"http://collector:9750\"\ninsecure = true\n",
            "",
        );
        check(
            "[collector]\nurl = \"https://collector:9750\"\ninsecure = true\n",
            "invalid config `/etc/estate/agent.toml`: collector url `https://collector:9750` is \
             https but `collector.insecure = true` (`--insecure`) is set: remove `insecure` (it \
             only allows `http://`; certificates are always verified)",
        );
        check(
            "[collector]\nurl = \"http://c:1\"\ninsecure = true\nca_file = \"ca.pem\"\n",
            "invalid config `/etc/estate/agent.toml`: `collector.ca_file` is set but \
             `collector.insecure = true` sends plain text: remove one",
        );
        check(
            "[collector]\nurl = \"https://collector:9750\"\nca_file = \"/etc/estate/ca.pem\"\n",
            "",
        );
        check(
            "[collector]\nclient_cert_file = \"c.pem\"\n",
            "invalid config `/etc/estate/agent.toml`: `collector.client_cert_file` and \
             `collector.client_key_file` go together: set both or neither",
        );
        check(
            "[collector]\nclient_cert_file = \"c.pem\"\nclient_key_file = \"k.pem\"\n",
            "",
        );
        check(
            "[collector]\nurl = \"ftp://collector\"\n",
            "invalid config `/etc/estate/agent.toml`: collector url `ftp://collector` has scheme \
             `ftp`, expected `https`",
        );
        check(
            "[collector]\nurl = \"http://agent:secret@collector:9750\"\n",
            "invalid config `/etc/estate/agent.toml`: collector url must not contain credentials",
        );
        check(
            "[collector]\nurl = \"https://collector:9750/ingest\"\n",
            "invalid config `/etc/estate/agent.toml`: collector url \
             `https://collector:9750/ingest` must not have a path or query, expected \
             `https://host:port`",
        );
        check(
            "[collector]\nurl = \"https://\"\n",
            "invalid config `/etc/estate/agent.toml`: collector url `https://` is not a valid \
             url: empty string",
        );
        check(
            "[agent]\nstate_dir = \"\"\n",
            "invalid config `/etc/estate/agent.toml`: `agent.state_dir` is empty",
        );
    }

    #[test]
    fn no_file_means_working_defaults() {
        let config = ConfigFile::default().validate(None).unwrap();
        assert_eq!(config.collector.urls, vec!["https://127.0.0.1:9750"]);
        assert_eq!(config.collector.ca_file, None);
        assert!(!config.collector.insecure);
        assert_eq!(config.schedule.heartbeat_interval, Duration::from_secs(60));
        assert_eq!(
            config.schedule.inventory_interval,
            Duration::from_secs(3600)
        );
        assert_eq!(config.root, Path::new("/"));
        assert!(config.checks.is_empty());
        assert!(!config.state_dir.as_os_str().is_empty());
    }

    #[test]
    fn errors_without_a_file_say_so() {
        let mut file = ConfigFile::default();
        file.collector.url = Some("ftp://x:1".into());
        assert_eq!(
            file.validate(None).unwrap_err().to_string(),
            "invalid config: collector url `ftp://x:1` has scheme `ftp`, expected `https`"
        );
    }

    #[test]
    fn spool_settings_are_parsed_and_validated() {
        let config =
            load("[spool]\nmax_size = \"2 MiB\"\nmax_age = \"1h\"\nretry_max_delay = \"30s\"\n")
                .unwrap();
        assert_eq!(config.spool.limits.max_bytes, 2 << 20);
        assert_eq!(config.spool.limits.max_age, Duration::from_secs(3600));
        assert_eq!(config.spool.retry_initial_delay, Duration::from_secs(1));
        assert_eq!(config.spool.retry_max_delay, Duration::from_secs(30));
        assert_eq!(
            load("[spool]\nmax_size = 70000\n")
                .unwrap()
                .spool
                .limits
                .max_bytes,
            70_000
        );
        assert_eq!(ByteSize::parse("3GB"), Ok(ByteSize(3_000_000_000)));
        assert_eq!(ByteSize::parse("64kib"), Ok(ByteSize(65_536)));

        let check = |text: &str, expected: &str| {
            assert_eq!(
                load(text).unwrap_err().to_string(),
                expected,
                "config:\n{text}"
            );
        };
        check(
            "[spool]\nmax_size = \"1KiB\"\n",
            "invalid config `/etc/estate/agent.toml`: `spool.max_size` `1KiB` must be at least \
             64KiB",
        );
        check(
            "[spool]\nmax_size = \"10 parsecs\"\n",
            "failed to read config `/etc/estate/agent.toml`: line 2, column 12: invalid size \
             `10 parsecs`, expected e.g. `100MiB`, `2GB` or `4096`",
        );
        check(
            "[spool]\nretry_initial_delay = \"10s\"\nretry_max_delay = \"1s\"\n",
            "invalid config `/etc/estate/agent.toml`: `spool.retry_max_delay` `1s` must be at \
             least `spool.retry_initial_delay` `10s`",
        );
        check(
            "[spool]\nmax_age = \"0s\"\n",
            "invalid config `/etc/estate/agent.toml`: `spool.max_age` `0s` must be at least 1s",
        );
    }

    #[test]
    fn location_counts_lines_and_characters() {
        assert_eq!(Location::of("ab\ncd", 4), Location(Some((2, 2))));
        assert_eq!(Location::of("é=1\nx", 2), Location(Some((1, 2))));
        assert_eq!(Location::of("x", 99), Location(Some((1, 2))));
    }

    #[test]
    fn the_example_config_documents_every_key_and_validates() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/agent.example.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let file = ConfigFile::parse(&text, &path).unwrap();
        let config = file.validate(Some(&path)).unwrap();
        // Every kind has an example, so every kind's config shape is exercised here.
        let kinds: BTreeSet<_> = config.checks.iter().map(|c| c.check.kind()).collect();
        let all: BTreeSet<_> = crate::checks::CHECK_KINDS.iter().copied().collect();
        assert_eq!(
            kinds,
            all,
            "every check kind needs an example in {}",
            path.display()
        );
        // Every key appears, uncommented, so the example stays complete.
        for key in [
            "state_dir",
            "root",
            "url",
            "ca_file",
            "client_cert_file",
            "client_key_file",
            "insecure",
            "connect_timeout",
            "timeout",
            "inventory_interval",
            "inventory_jitter",
            "heartbeat_interval",
            "max_concurrent_checks",
            "max_size",
            "max_age",
            "retry_initial_delay",
            "retry_max_delay",
            "name",
            "kind",
            "interval",
        ] {
            assert!(
                text.lines()
                    .any(|line| line.starts_with(&format!("{key} ="))),
                "key `{key}` is missing from {}",
                path.display()
            );
        }
    }
}
