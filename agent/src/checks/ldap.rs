//! The `ldap` check: does a directory server answer LDAP, over plain LDAP, StartTLS or LDAPS, with
//! a certificate that is valid and not about to expire; optionally, does a service account bind
//! and find what it should. The `ad` check reuses its probe ([`probe_endpoint`]) for every DC.
//!
//! ```toml
//! [[checks]]
//! name = "directory"
//! kind = "ldap"
//! url = "ldaps://ldap.example.com"          # ldap://host[:389] or ldaps://host[:636]
//! starttls = false                          # ldap:// only: upgrade with StartTLS first
//! tls_verify = true                         # false: connect anyway, only report the dates
//! ca_file = "/etc/estate/corp-ca.pem"       # default: the system's trusted roots
//! cert_min_days = 14                        # fail when the certificate expires sooner
//! root_dse = true                           # read the rootDSE (anonymous)
//! max_skew = "5m"                           # fail when currentTime is this far off (default: report only)
//! bind_dn = "CN=svc-estate,OU=Service,DC=example,DC=com"
//! password_file = "/etc/estate/ldap-password"   # or: password_env = "ESTATE_LDAP_PASSWORD"
//! search_base = "OU=Servers,DC=example,DC=com"
//! search_filter = "(objectClass=computer)"  # default (objectClass=*)
//! search_scope = "sub"                      # base, one or sub (the default)
//! min_results = 1                           # the default
//! ```
//!
//! One result with the target `host:port/mode`, mode `ldap`, `starttls` or `ldaps`.
//!
//! # What is checked, in order
//!
//! 1. TCP connect, then StartTLS or the TLS handshake. With `tls_verify` the chain must lead to a
//!    trusted root (the system's, or `ca_file`'s) and name the host; a failure says which
//!    (expired, not yet valid, wrong name, self-signed, unknown issuer). The certificate must
//!    not expire within `cert_min_days`, whether verified or not.
//! 2. The rootDSE (base `""`, scope base), which every server gives anonymously, even AD over
//!    plain LDAP. `isSynchronized: FALSE` fails (an AD DC that has not finished its initial
//!    replication); so does a `currentTime` further than `max_skew` from this host's clock.
//! 3. A simple bind, when `bind_dn` is set. Never over plain LDAP: AD and Samba refuse it
//!    ("Transport encryption required") and it would send the password in clear, so validation
//!    requires `ldaps://` or `starttls`. The password is read when the probe runs, from
//!    `password_file` or `password_env`, and never appears in a reason, measurement or log.
//! 4. A search, when `search_base` is set: at least `min_results` entries. Referrals and
//!    continuation references are not chased or counted; a server-side size limit
//!    (`sizeLimitExceeded`) ends the count without failing it.
//!
//! # Measurements (names are a contract with the collector)
//!
//! `latency_seconds` (connect to the last answer), `cert_not_after_unix`, `cert_days_left`
//! (whole days, negative once expired), `search_results`; from the rootDSE:
//! `current_time_skew_seconds` (`currentTime` minus this host's clock, positive when the server
//! is ahead), `synchronized` and `gc_ready` (1/0 from `isSynchronized`, `isGlobalCatalogReady`),
//! and the text measurements `dns_host_name`, `default_naming_context`, `domain_functionality`,
//! `forest_functionality`, `dc_functionality` (the functionality levels also as their number).
//!
//! # Robustness
//!
//! ldap3 parses results with `expect`, so a peer that sends well-formed BER of the wrong shape
//! makes it panic. Each session therefore runs in its own task: such a panic stays inside it and
//! becomes a failure ("sent a malformed LDAP message"), and the session is aborted when the probe
//! is dropped. Entries are read by our own panic-free walker, bounded in attributes and values.

use super::certificate::{CertificateInspector, TlsPolicy, TlsVersion, format_unix};
use super::{Outcome, TargetResult, measurement};
use estate_proto::v1::Measurement;
use ldap3::asn1::{PL, StructureTag};
use ldap3::{LdapConnAsync, LdapConnSettings, LdapError, Scope, StdStream};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

/// The kind's name in `kind = "ldap"`.
pub const KIND: &str = "ldap";

/// The plain LDAP port, for `ldap://` without a port.
pub const LDAP_PORT: u16 = 389;
/// The LDAPS port, for `ldaps://` without a port.
pub const LDAPS_PORT: u16 = 636;

/// The attributes asked of the rootDSE: all user and operational ones (OpenLDAP needs `+`),
/// and by name those AD and Samba construct only when asked.
const ROOT_DSE_ATTRIBUTES: &[&str] = &[
    "*",
    "+",
    "currentTime",
    "isSynchronized",
    "isGlobalCatalogReady",
    "dnsHostName",
    "defaultNamingContext",
    "domainFunctionality",
    "forestFunctionality",
    "domainControllerFunctionality",
];
/// At most this many attributes, and values per attribute, are read from one entry.
const MAX_ATTRIBUTES: usize = 256;
const MAX_VALUES: usize = 16;
/// A text measurement or a string from the server in a reason is cut to this many characters.
const MAX_TEXT_CHARS: usize = 200;
/// A password shorter than this is not scrubbed from reasons (it would garble them); it is
/// never put in one by this module anyway.
const MIN_SCRUBBED_PASSWORD: usize = 3;

/// The `ldap` check's own fields.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LdapCheckConfig {
    /// `ldap://host[:port]` (port 389 unless given) or `ldaps://host[:port]` (636), without a DN
    /// or other URL parts. IPv6: `ldap://[2001:db8::1]:389`.
    pub url: String,
    /// Upgrade the `ldap://` connection with StartTLS before anything else.
    #[serde(default)]
    pub starttls: bool,
    /// Verify the certificate (chain to a trusted root, name, dates). `false` connects anyway and
    /// only reports the certificate's dates (`cert_min_days` still applies).
    #[serde(default = "default_tls_verify")]
    pub tls_verify: bool,
    /// PEM file of the CA certificates to trust, instead of the system's trusted roots.
    pub ca_file: Option<PathBuf>,
    /// Fail when the server's certificate expires in fewer days than this.
    #[serde(default = "default_cert_min_days")]
    pub cert_min_days: u32,
    /// Read the rootDSE (anonymously) and report what it says.
    #[serde(default = "default_root_dse")]
    pub root_dse: bool,
    /// Fail when the rootDSE's `currentTime` is further than this from this host's clock.
    /// Default: report the skew only.
    #[serde(default, deserialize_with = "optional_duration")]
    pub max_skew: Option<Duration>,
    /// DN (or, for AD, `user@domain`) of the service account for a simple bind.
    pub bind_dn: Option<String>,
    /// File holding the bind password (a trailing newline is ignored), read at each run.
    pub password_file: Option<PathBuf>,
    /// Environment variable holding the bind password, read at each run.
    pub password_env: Option<String>,
    /// Base DN of a search to run after the bind (or anonymously); no search without it.
    pub search_base: Option<String>,
    /// LDAP filter of the search.
    #[serde(default = "default_search_filter")]
    pub search_filter: String,
    /// Scope of the search: `base`, `one` or `sub`.
    #[serde(default)]
    pub search_scope: SearchScope,
    /// Fail when the search finds fewer entries than this.
    #[serde(default = "default_min_results")]
    pub min_results: u64,
}

/// An optional duration written like `"5m"`.
pub fn optional_duration<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    crate::config::duration::deserialize(deserializer).map(Some)
}

pub use super::certificate::{default_cert_min_days, default_tls_verify};

/// The rootDSE is read unless told otherwise: it is what proves the server speaks LDAP.
pub fn default_root_dse() -> bool {
    true
}

/// Every entry matches `(objectClass=*)`.
pub fn default_search_filter() -> String {
    "(objectClass=*)".to_owned()
}

/// A search that finds nothing usually means a wrong base or missing rights.
pub fn default_min_results() -> u64 {
    1
}

/// How deep a search goes below its base.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SearchScope {
    Base,
    One,
    #[default]
    Sub,
}

impl SearchScope {
    fn ldap3(self) -> Scope {
        match self {
            SearchScope::Base => Scope::Base,
            SearchScope::One => Scope::OneLevel,
            SearchScope::Sub => Scope::Subtree,
        }
    }
}

/// How the connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    Plain,
    StartTls,
    Ldaps,
}

impl Security {
    /// The mode as written in targets: `ldap`, `starttls`, `ldaps`.
    pub fn as_str(self) -> &'static str {
        match self {
            Security::Plain => "ldap",
            Security::StartTls => "starttls",
            Security::Ldaps => "ldaps",
        }
    }
}

/// Where the password of a bind comes from; the password itself is only ever held while a probe
/// runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordSource {
    File(PathBuf),
    Env(String),
}

impl PasswordSource {
    fn read(&self) -> Result<String, String> {
        let password = match self {
            PasswordSource::File(path) => std::fs::read_to_string(path).map_err(|error| {
                format!("cannot read password_file `{}`: {error}", path.display())
            })?,
            PasswordSource::Env(name) => std::env::var(name)
                .map_err(|_| format!("password_env `{name}` is not set or not valid UTF-8"))?,
        };
        let password = password.trim_end_matches(['\r', '\n']).to_owned();
        if password.is_empty() {
            // An empty password is an unauthenticated bind (RFC 4513), which "succeeds" without
            // proving anything.
            return Err(match self {
                PasswordSource::File(path) => {
                    format!("password_file `{}` is empty", path.display())
                }
                PasswordSource::Env(name) => format!("password_env `{name}` is empty"),
            });
        }
        Ok(password)
    }
}

/// A simple bind as a service account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindPlan {
    pub dn: String,
    pub password: PasswordSource,
}

/// A search and how many entries it must find.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchPlan {
    pub base: String,
    pub filter: String,
    pub scope: SearchScope,
    pub min_results: u64,
}

/// What to do with the rootDSE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootDse {
    /// Do not read it.
    Skip,
    /// Read it as proof that LDAP answers; report nothing from it.
    Read,
    /// Read it, report its measurements and judge `isSynchronized` and the skew.
    Report,
}

/// Everything one probe of one endpoint does after connecting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbePlan {
    pub tls_verify: bool,
    pub ca_file: Option<PathBuf>,
    pub cert_min_days: u32,
    pub root_dse: RootDse,
    pub max_skew: Option<Duration>,
    /// Fail unless the rootDSE says `isGlobalCatalogReady: TRUE` (for a GC port).
    pub require_gc_ready: bool,
    pub bind: Option<BindPlan>,
    pub search: Option<SearchPlan>,
}

/// A server to probe: the name used in URLs and for the certificate, and optionally the address
/// to connect to (when the name was resolved elsewhere, as `ad` does with its DNS servers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub security: Security,
    pub address: Option<IpAddr>,
}

impl Endpoint {
    /// `host:port/mode`, with brackets around an IPv6 address.
    pub fn target(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}/{}", self.host, self.port, self.security.as_str())
        } else {
            format!("{}:{}/{}", self.host, self.port, self.security.as_str())
        }
    }
}

impl LdapCheckConfig {
    /// Checks the URL, the TLS options and that bind and search are complete and safe.
    pub fn validate(&self) -> Result<LdapCheck, String> {
        let (scheme, host, port) = parse_url(&self.url)?;
        let security = match (scheme, self.starttls) {
            ("ldap", false) => Security::Plain,
            ("ldap", true) => Security::StartTls,
            ("ldaps", false) => Security::Ldaps,
            _ => {
                return Err(format!(
                    "`starttls` upgrades plain LDAP, it does not apply to url `{}`",
                    self.url
                ));
            }
        };
        if security == Security::Plain && (self.ca_file.is_some() || !self.tls_verify) {
            return Err(format!(
                "`ca_file` and `tls_verify` apply to TLS, use `ldaps://` or `starttls` with url `{}`",
                self.url
            ));
        }
        if let Some(path) = &self.ca_file
            && path.as_os_str().is_empty()
        {
            return Err("`ca_file` is empty".to_owned());
        }
        if self.max_skew.is_some() && !self.root_dse {
            return Err("`max_skew` needs `root_dse = true`: the time comes from it".to_owned());
        }
        let bind = validate_bind(
            self.bind_dn.as_deref(),
            self.password_file.as_ref(),
            self.password_env.as_deref(),
        )?;
        if bind.is_some() && security == Security::Plain {
            return Err(format!(
                "a bind over plain LDAP sends the password in clear (and AD refuses it), use \
                 `ldaps://` or `starttls = true` with url `{}`",
                self.url
            ));
        }
        let search = validate_search(
            self.search_base.as_deref(),
            &self.search_filter,
            self.search_scope,
            self.min_results,
        )?;
        Ok(LdapCheck {
            endpoint: Endpoint {
                host,
                port,
                security,
                address: None,
            },
            plan: ProbePlan {
                tls_verify: self.tls_verify,
                ca_file: self.ca_file.clone(),
                cert_min_days: self.cert_min_days,
                root_dse: if self.root_dse {
                    RootDse::Report
                } else {
                    RootDse::Skip
                },
                max_skew: self.max_skew,
                require_gc_ready: false,
                bind,
                search,
            },
        })
    }
}

/// Checks that a bind names its account and exactly one password source.
pub fn validate_bind(
    bind_dn: Option<&str>,
    password_file: Option<&PathBuf>,
    password_env: Option<&str>,
) -> Result<Option<BindPlan>, String> {
    let password = match (password_file, password_env) {
        (Some(_), Some(_)) => {
            return Err("`password_file` and `password_env` are exclusive, use one".to_owned());
        }
        (Some(path), None) if path.as_os_str().is_empty() => {
            return Err("`password_file` is empty".to_owned());
        }
        (None, Some("")) => return Err("`password_env` is empty".to_owned()),
        (Some(path), None) => Some(PasswordSource::File(path.clone())),
        (None, Some(name)) => Some(PasswordSource::Env(name.to_owned())),
        (None, None) => None,
    };
    match (bind_dn, password) {
        (None, None) => Ok(None),
        (Some(""), _) => Err("`bind_dn` is empty".to_owned()),
        (Some(dn), Some(password)) => Ok(Some(BindPlan {
            dn: dn.to_owned(),
            password,
        })),
        (Some(dn), None) => Err(format!(
            "bind_dn `{dn}` needs `password_file` or `password_env`"
        )),
        (None, Some(_)) => Err("a password without `bind_dn` has no account to bind".to_owned()),
    }
}

/// Checks a search's base and filter (the filter with ldap3's own parser).
pub fn validate_search(
    base: Option<&str>,
    filter: &str,
    scope: SearchScope,
    min_results: u64,
) -> Result<Option<SearchPlan>, String> {
    let Some(base) = base else {
        return Ok(None);
    };
    if base.chars().any(char::is_control) {
        return Err(format!("search_base `{base}` contains control characters"));
    }
    if ldap3::parse_filter(filter).is_err() {
        return Err(format!(
            "search_filter `{filter}` is not a valid LDAP filter"
        ));
    }
    Ok(Some(SearchPlan {
        base: base.to_owned(),
        filter: filter.to_owned(),
        scope,
        min_results,
    }))
}

/// Splits `ldap[s]://host[:port][/]` into scheme, host and port.
fn parse_url(url: &str) -> Result<(&'static str, String, u16), String> {
    let malformed = || format!("url `{url}` is not `ldap://host[:port]` or `ldaps://host[:port]`");
    let (scheme, rest, default_port) = if let Some(rest) = url.strip_prefix("ldap://") {
        ("ldap", rest, LDAP_PORT)
    } else if let Some(rest) = url.strip_prefix("ldaps://") {
        ("ldaps", rest, LDAPS_PORT)
    } else {
        return Err(malformed());
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['/', '?', '@']) {
        return Err(format!(
            "url `{url}` has more than `scheme://host:port`; put the DN in `search_base`"
        ));
    }
    let (host, port) = if let Some(inner) = rest.strip_prefix('[') {
        let (host, after) = inner.split_once(']').ok_or_else(malformed)?;
        match after.strip_prefix(':') {
            Some(port) => (host, Some(port)),
            None if after.is_empty() => (host, None),
            None => return Err(malformed()),
        }
    } else {
        match rest.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        }
    };
    if host.is_empty() {
        return Err(format!("url `{url}` has no host"));
    }
    if host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "url `{url}` has spaces or control characters in its host"
        ));
    }
    let port = match port {
        None => default_port,
        Some(text) => match text.parse::<u16>() {
            Ok(0) | Err(_) => return Err(format!("url `{url}` has an invalid port `{text}`")),
            Ok(port) => port,
        },
    };
    Ok((scheme, host.to_owned(), port))
}

/// A ready `ldap` check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LdapCheck {
    endpoint: Endpoint,
    plan: ProbePlan,
}

impl LdapCheck {
    /// `host:port/mode`.
    pub fn target(&self) -> String {
        self.endpoint.target()
    }

    /// Probes the endpoint within nine tenths of `timeout`, so that a slow phase is named in
    /// the reason before the runner's own timeout cuts everything short.
    pub async fn probe(&self, timeout: Duration) -> Vec<TargetResult> {
        let budget = timeout.mul_f64(0.9);
        vec![probe_endpoint(&self.endpoint, &self.plan, budget).await]
    }
}

/// Probes one endpoint as [`ProbePlan`] says, within `timeout`. The target is
/// [`Endpoint::target`]. Never panics (see the module docs), never waits past `timeout`.
pub async fn probe_endpoint(
    endpoint: &Endpoint,
    plan: &ProbePlan,
    timeout: Duration,
) -> TargetResult {
    let target = endpoint.target();
    let session = tokio::spawn(run_session(endpoint.clone(), plan.clone(), timeout));
    let mut session = AbortOnDrop(session);
    // The session keeps its own deadline; this one only guards against a session that ignores it.
    let outer = timeout + Duration::from_millis(250);
    match tokio::time::timeout(outer, &mut session.0).await {
        Ok(Ok(result)) => result,
        Ok(Err(error)) if error.is_panic() => TargetResult {
            target: target.clone(),
            outcome: Outcome::Fail {
                reason: format!(
                    "`{target}` sent a malformed LDAP message (the LDAP client could not parse it)"
                ),
            },
            measurements: Vec::new(),
        },
        Ok(Err(error)) => TargetResult {
            target,
            outcome: Outcome::Fail {
                reason: format!("the probe task ended unexpectedly: {error}"),
            },
            measurements: Vec::new(),
        },
        Err(_elapsed) => TargetResult {
            target,
            outcome: Outcome::Fail {
                reason: format!("no answer within {}", humantime::format_duration(timeout)),
            },
            measurements: Vec::new(),
        },
    }
}

/// A task that is aborted when its owner goes away (a probe cut short by a timeout).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One session's state: the measurements gathered so far, so that a failure late in the probe
/// still reports what was learnt before it.
struct Session {
    target: String,
    measurements: Vec<Measurement>,
    started: Instant,
    deadline: tokio::time::Instant,
    timeout: Duration,
    password: Option<String>,
}

impl Session {
    fn fail(mut self, reason: String) -> TargetResult {
        let reason = match &self.password {
            Some(password) if password.len() >= MIN_SCRUBBED_PASSWORD => {
                reason.replace(password.as_str(), "********")
            }
            _ => reason,
        };
        self.measurements.push(self.latency());
        TargetResult {
            target: self.target,
            outcome: Outcome::Fail { reason },
            measurements: self.measurements,
        }
    }

    fn pass(mut self) -> TargetResult {
        self.measurements.push(self.latency());
        TargetResult {
            target: self.target,
            outcome: Outcome::Pass,
            measurements: self.measurements,
        }
    }

    fn latency(&self) -> Measurement {
        measurement("latency_seconds", self.started.elapsed().as_secs_f64())
    }

    /// Runs one step before the session's deadline; `what` names the step in a timeout reason.
    async fn step<T>(&self, what: &str, future: impl Future<Output = T>) -> Result<T, String> {
        tokio::time::timeout_at(self.deadline, future)
            .await
            .map_err(|_| {
                format!(
                    "no answer to the {what} from `{}` within {}",
                    self.target,
                    humantime::format_duration(self.timeout)
                )
            })
    }
}

async fn run_session(endpoint: Endpoint, plan: ProbePlan, timeout: Duration) -> TargetResult {
    let mut session = Session {
        target: endpoint.target(),
        measurements: Vec::new(),
        started: Instant::now(),
        deadline: tokio::time::Instant::now() + timeout,
        timeout,
        password: None,
    };
    let target = session.target.clone();

    // The password is read first: a missing file fails without touching the network.
    if let Some(bind) = &plan.bind {
        match bind.password.read() {
            Ok(password) => session.password = Some(password),
            Err(reason) => return session.fail(reason),
        }
    }

    let policy = TlsPolicy {
        verify: plan.tls_verify,
        ca_file: plan.ca_file.clone(),
        cert_min_days: plan.cert_min_days,
        min_version: TlsVersion::Tls12,
    };
    let mut inspector = None;
    let mut settings = LdapConnSettings::new();
    if endpoint.security != Security::Plain {
        let tls = match CertificateInspector::new(&policy) {
            Ok(tls) => tls,
            Err(reason) => return session.fail(reason),
        };
        settings = settings
            .set_config(tls.client_config())
            .set_starttls(endpoint.security == Security::StartTls);
        inspector = Some(tls);
    }

    let stream = match session.step("connection", connect(&endpoint)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(reason)) | Err(reason) => return session.fail(reason),
    };
    settings = settings.set_std_stream(StdStream::Tcp(stream));
    let scheme = if endpoint.security == Security::Ldaps {
        "ldaps"
    } else {
        "ldap"
    };
    let url = if endpoint.host.contains(':') {
        format!("{scheme}://[{}]:{}", endpoint.host, endpoint.port)
    } else {
        format!("{scheme}://{}:{}", endpoint.host, endpoint.port)
    };
    let handshake = match endpoint.security {
        Security::Plain => "connection",
        Security::StartTls => "StartTLS request",
        Security::Ldaps => "TLS handshake",
    };
    let connected = session
        .step(handshake, LdapConnAsync::with_settings(settings, &url))
        .await;
    // Whatever happened, a certificate seen during the handshake is reported.
    let verdict = inspector
        .as_ref()
        .and_then(CertificateInspector::take_report);
    let cert = verdict.as_ref().and_then(|seen| seen.certificate.as_ref());
    if let Some(cert) = cert {
        session
            .measurements
            .push(measurement("cert_not_after_unix", cert.not_after as f64));
        session
            .measurements
            .push(measurement("cert_days_left", cert.days_left() as f64));
    }
    let (conn, mut ldap) = match connected {
        Ok(Ok(pair)) => pair,
        Ok(Err(error)) => {
            let reason = match (&verdict, plan.tls_verify) {
                (Some(seen), true) if seen.verdict.is_err() => {
                    seen.untrusted_reason(&endpoint.host)
                }
                _ => match endpoint.security {
                    Security::Plain => describe(&error),
                    Security::StartTls => format!("StartTLS failed: {}", describe(&error)),
                    Security::Ldaps => format!("TLS handshake failed: {}", describe(&error)),
                },
            };
            return session.fail(format!("`{target}`: {reason}"));
        }
        Err(reason) => return session.fail(reason),
    };
    let driver = AbortOnDrop(tokio::spawn(conn.drive()));
    if let Some(cert) = cert {
        let days = cert.days_left();
        if days < i64::from(plan.cert_min_days) {
            let when = format_unix(cert.not_after);
            let reason = if days < 0 {
                format!("certificate of `{target}` expired on {when}")
            } else {
                format!(
                    "certificate of `{target}` expires in {days} days (on {when}), less than \
                     `cert_min_days` {}",
                    plan.cert_min_days
                )
            };
            return session.fail(reason);
        }
    }

    if plan.root_dse != RootDse::Skip {
        let asked = SystemTime::now();
        let read = session
            .step(
                "rootDSE read",
                ldap.search("", Scope::Base, "(objectClass=*)", ROOT_DSE_ATTRIBUTES),
            )
            .await;
        let answered = SystemTime::now();
        let (entries, result) = match read {
            Ok(Ok(search)) => (search.0, search.1),
            Ok(Err(error)) => {
                let reason = format!("rootDSE read failed: {}", op_error(&error, driver).await);
                return session.fail(format!("`{target}`: {reason}"));
            }
            Err(reason) => return session.fail(reason),
        };
        if result.rc != 0 {
            return session.fail(format!(
                "`{target}`: rootDSE read refused: {}",
                result_text(result.rc, &result.text)
            ));
        }
        let Some(entry) = entries.iter().find(|e| !e.is_ref()) else {
            return session.fail(format!("`{target}`: the rootDSE read returned no entry"));
        };
        let midpoint = midpoint(asked, answered);
        if let Err(reason) =
            judge_root_dse_entry(&plan, &entry.0, midpoint, &mut session.measurements)
        {
            return session.fail(format!("`{target}`: {reason}"));
        }
    }

    if let Some(bind) = &plan.bind {
        let password = session.password.clone().unwrap_or_default();
        let bound = session
            .step("bind", ldap.simple_bind(&bind.dn, &password))
            .await;
        match bound {
            Ok(Ok(result)) if result.rc == 0 => {}
            Ok(Ok(result)) => {
                return session.fail(format!(
                    "`{target}`: bind as `{}` refused: {}",
                    bind.dn,
                    result_text(result.rc, &result.text)
                ));
            }
            Ok(Err(error)) => {
                let reason = op_error(&error, driver).await;
                return session.fail(format!(
                    "`{target}`: bind as `{}` failed: {reason}",
                    bind.dn
                ));
            }
            Err(reason) => return session.fail(reason),
        }
    }

    if let Some(search) = &plan.search {
        match count_entries(&session, &mut ldap, search).await {
            Ok(Ok(count)) => {
                session
                    .measurements
                    .push(measurement("search_results", count as f64));
                if count < search.min_results {
                    return session.fail(format!(
                        "`{target}`: search under `{}` for `{}` found {count} entries, fewer \
                         than `min_results` {}",
                        search.base, search.filter, search.min_results
                    ));
                }
            }
            Ok(Err(error)) => {
                let reason = op_error(&error, driver).await;
                return session.fail(format!(
                    "`{target}`: search under `{}` failed: {reason}",
                    search.base
                ));
            }
            Err(reason) => return session.fail(reason),
        }
    }

    // A polite goodbye, not waited for long: the answer is already known.
    let _ = tokio::time::timeout(Duration::from_millis(100), ldap.unbind()).await;
    drop(driver);
    session.pass()
}

/// Counts the entries a search returns, streaming so that memory stays flat. `Ok(Err)` is an
/// LDAP error; the outer `Err` a timeout.
async fn count_entries(
    session: &Session,
    ldap: &mut ldap3::Ldap,
    search: &SearchPlan,
) -> Result<Result<u64, LdapErrorOrResult>, String> {
    session
        .step("search", async {
            let mut stream = ldap
                .streaming_search(
                    &search.base,
                    search.scope.ldap3(),
                    &search.filter,
                    vec!["1.1"],
                )
                .await
                .map_err(LdapErrorOrResult::Error)?;
            let mut count = 0u64;
            loop {
                match stream.next().await {
                    Ok(Some(entry)) if entry.is_ref() => {}
                    Ok(Some(_entry)) => count += 1,
                    Ok(None) => break,
                    Err(error) => return Err(LdapErrorOrResult::Error(error)),
                }
            }
            let result = stream.finish().await;
            // sizeLimitExceeded: the server stopped counting, which is not a failure.
            if result.rc != 0 && result.rc != 4 {
                return Err(LdapErrorOrResult::Result(result.rc, result.text));
            }
            Ok(count)
        })
        .await
}

/// An error of an LDAP operation: the client's, or the server's result code.
#[derive(Debug)]
enum LdapErrorOrResult {
    Error(LdapError),
    Result(u32, String),
}

/// Says what went wrong with an operation. When the connection's driver has ended (the server
/// closed the connection or sent something unreadable), its error is the real reason.
async fn op_error(error: &impl OpError, driver: AbortOnDrop<ldap3::result::Result<()>>) -> String {
    if !error.connection_gone() {
        return error.text();
    }
    let mut driver = driver;
    match tokio::time::timeout(Duration::from_millis(200), &mut driver.0).await {
        Ok(Ok(Ok(()))) => "the server closed the connection".to_owned(),
        Ok(Ok(Err(error))) => describe(&error),
        Ok(Err(join)) if join.is_panic() => {
            "the server sent a malformed LDAP message (the LDAP client could not parse it)"
                .to_owned()
        }
        _ => error.text(),
    }
}

/// What [`op_error`] needs to know of an error.
trait OpError {
    /// The connection's driver has stopped, so the error says nothing about why.
    fn connection_gone(&self) -> bool;
    fn text(&self) -> String;
}

impl OpError for LdapError {
    fn connection_gone(&self) -> bool {
        matches!(
            self,
            LdapError::OpSend { .. } | LdapError::ResultRecv { .. } | LdapError::EndOfStream
        )
    }

    fn text(&self) -> String {
        describe(self)
    }
}

impl OpError for LdapErrorOrResult {
    fn connection_gone(&self) -> bool {
        match self {
            LdapErrorOrResult::Error(error) => error.connection_gone(),
            LdapErrorOrResult::Result(..) => false,
        }
    }

    fn text(&self) -> String {
        match self {
            LdapErrorOrResult::Error(error) => describe(error),
            LdapErrorOrResult::Result(rc, text) => result_text(*rc, text),
        }
    }
}

/// An ldap3 error in words, with the I/O errors its codec gives spelled out.
fn describe(error: &LdapError) -> String {
    match error {
        LdapError::Io { source } => {
            let text = source.to_string();
            if text.contains("decoding error") {
                "the server sent something that is not an LDAP message (invalid BER)".to_owned()
            } else if text.contains("bytes remaining on stream")
                || source.kind() == std::io::ErrorKind::UnexpectedEof
            {
                "the server closed the connection in the middle of a message".to_owned()
            } else {
                format!("i/o error: {text}")
            }
        }
        LdapError::LdapResult { result } => result_text(result.rc, &result.text),
        LdapError::Rustls { source } => format!("tls error: {source}"),
        LdapError::OpSend { .. } | LdapError::ResultRecv { .. } | LdapError::EndOfStream => {
            "the connection closed".to_owned()
        }
        other => other.to_string(),
    }
}

/// `invalidCredentials (49): <server text>`, the text cut to a bounded length.
fn result_text(rc: u32, text: &str) -> String {
    let name = match rc {
        0 => "success",
        1 => "operationsError",
        2 => "protocolError",
        3 => "timeLimitExceeded",
        4 => "sizeLimitExceeded",
        7 => "authMethodNotSupported",
        8 => "strongerAuthRequired",
        10 => "referral",
        11 => "adminLimitExceeded",
        13 => "confidentialityRequired",
        32 => "noSuchObject",
        34 => "invalidDNSyntax",
        48 => "inappropriateAuthentication",
        49 => "invalidCredentials",
        50 => "insufficientAccessRights",
        51 => "busy",
        52 => "unavailable",
        53 => "unwillingToPerform",
        80 => "other",
        _ => "result",
    };
    let text = cut(text.trim());
    if text.is_empty() {
        format!("{name} ({rc})")
    } else {
        format!("{name} ({rc}): {text}")
    }
}

/// Connects to the endpoint's address, or to each address its name resolves to in turn.
async fn connect(endpoint: &Endpoint) -> Result<std::net::TcpStream, String> {
    let addresses: Vec<SocketAddr> = match endpoint.address {
        Some(address) => vec![SocketAddr::new(address, endpoint.port)],
        None => tokio::net::lookup_host((endpoint.host.as_str(), endpoint.port))
            .await
            .map_err(|error| format!("cannot resolve `{}`: {error}", endpoint.host))?
            .collect(),
    };
    if addresses.is_empty() {
        return Err(format!("`{}` resolved to no address", endpoint.host));
    }
    let mut failures = Vec::new();
    for address in addresses {
        match tokio::net::TcpStream::connect(address).await {
            Ok(stream) => {
                return stream
                    .into_std()
                    .map_err(|error| format!("connection to `{address}` unusable: {error}"));
            }
            Err(error) => failures.push(format!(
                "connection to `{address}` ({}) failed: {error}",
                endpoint.target()
            )),
        }
    }
    Err(failures.join("; "))
}

/// Reads an entry's attributes (names lower-cased), without panicking on any shape.
fn read_entry(tag: &StructureTag) -> Option<BTreeMap<String, Vec<String>>> {
    let PL::C(parts) = &tag.payload else {
        return None;
    };
    let PL::C(attributes) = &parts.get(1)?.payload else {
        return None;
    };
    let mut entry = BTreeMap::new();
    for attribute in attributes.iter().take(MAX_ATTRIBUTES) {
        let PL::C(pair) = &attribute.payload else {
            continue;
        };
        let (Some(name), Some(values)) = (pair.first(), pair.get(1)) else {
            continue;
        };
        let (PL::P(name), PL::C(values)) = (&name.payload, &values.payload) else {
            continue;
        };
        let values = values
            .iter()
            .take(MAX_VALUES)
            .filter_map(|value| match &value.payload {
                PL::P(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
                PL::C(_) => None,
            })
            .collect();
        entry.insert(String::from_utf8_lossy(name).to_ascii_lowercase(), values);
    }
    Some(entry)
}

/// What the probe makes of the rootDSE entry a server returned (`entry` is the
/// `SearchResultEntry` as ldap3 hands it over, any shape): with `root_dse = "report"` or
/// `require_gc_ready`, its measurements are added to `measurements` and `isSynchronized`,
/// `isGlobalCatalogReady` and the clock skew (against `now`, this host's time halfway through
/// the read) are judged; `Err` is the reason without the target. Pure: the fuzz target
/// `ldap_root_dse` feeds it entries decoded from arbitrary bytes.
pub fn judge_root_dse_entry(
    plan: &ProbePlan,
    entry: &StructureTag,
    now: SystemTime,
    measurements: &mut Vec<Measurement>,
) -> Result<(), String> {
    let Some(entry) = read_entry(entry) else {
        return Err("the rootDSE read returned no entry".to_owned());
    };
    if plan.root_dse == RootDse::Report || plan.require_gc_ready {
        judge_root_dse(measurements, plan, &entry, now)?;
    }
    Ok(())
}

/// Reports the rootDSE's measurements and judges `isSynchronized`, `isGlobalCatalogReady` and
/// the clock skew.
fn judge_root_dse(
    measurements: &mut Vec<Measurement>,
    plan: &ProbePlan,
    entry: &BTreeMap<String, Vec<String>>,
    now: SystemTime,
) -> Result<(), String> {
    let first = |name: &str| entry.get(name).and_then(|values| values.first());
    let flag = |name: &str| first(name).map(|value| value.eq_ignore_ascii_case("TRUE"));
    let synchronized = flag("issynchronized");
    let gc_ready = flag("isglobalcatalogready");
    if plan.root_dse == RootDse::Report {
        let mut skew = None;
        if let Some(text) = first("currenttime") {
            match parse_generalized_time(text) {
                Some(server) => {
                    let here = now
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map(|d| d.as_secs_f64())
                        .unwrap_or(0.0);
                    let value = server as f64 - here;
                    measurements.push(measurement("current_time_skew_seconds", value));
                    skew = Some(value);
                }
                None => {
                    return Err(format!("rootDSE currentTime `{}` is not a time", cut(text)));
                }
            }
        }
        if let Some(value) = synchronized {
            measurements.push(measurement("synchronized", f64::from(u8::from(value))));
        }
        if let Some(value) = gc_ready {
            measurements.push(measurement("gc_ready", f64::from(u8::from(value))));
        }
        for (attribute, name) in [
            ("dnshostname", "dns_host_name"),
            ("defaultnamingcontext", "default_naming_context"),
            ("domainfunctionality", "domain_functionality"),
            ("forestfunctionality", "forest_functionality"),
            ("domaincontrollerfunctionality", "dc_functionality"),
        ] {
            if let Some(text) = first(attribute) {
                measurements.push(text_measurement(name, text));
            }
        }
        if synchronized == Some(false) {
            return Err(
                "rootDSE says `isSynchronized: FALSE`: the DC has not finished replicating"
                    .to_owned(),
            );
        }
        match (plan.max_skew, skew) {
            (Some(max), Some(skew)) if skew.abs() > max.as_secs_f64() => {
                return Err(format!(
                    "clock skew `{skew:+.0}s` (rootDSE currentTime minus this host's clock) \
                     exceeds `max_skew` `{}`",
                    humantime::format_duration(max)
                ));
            }
            (Some(_), None) => {
                return Err("rootDSE has no `currentTime` to compare clocks with".to_owned());
            }
            _ => {}
        }
    }
    if plan.require_gc_ready && gc_ready != Some(true) {
        return Err(match gc_ready {
            Some(_) => "rootDSE says `isGlobalCatalogReady: FALSE`".to_owned(),
            None => "rootDSE has no `isGlobalCatalogReady`: not a global catalog".to_owned(),
        });
    }
    Ok(())
}

/// A text measurement; its value is the text's number when it is one (functionality levels).
pub fn text_measurement(name: &str, text: &str) -> Measurement {
    Measurement {
        name: name.to_owned(),
        value: text.trim().parse::<f64>().unwrap_or(0.0),
        text: cut(text),
    }
}

/// The first [`MAX_TEXT_CHARS`] characters, with `…` when cut.
fn cut(text: &str) -> String {
    match text.char_indices().nth(MAX_TEXT_CHARS) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

fn midpoint(a: SystemTime, b: SystemTime) -> SystemTime {
    a + b.duration_since(a).unwrap_or_default() / 2
}

/// Parses LDAP generalized time (`20250102030405.0Z`, `20250102030405Z`,
/// `20250102030405+0100`) into Unix seconds.
pub fn parse_generalized_time(text: &str) -> Option<i64> {
    let text = text.trim();
    let digits = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = text.get(range)?;
        part.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let year = digits(0..4)?;
    let month = digits(4..6)?;
    let day = digits(6..8)?;
    let hour = digits(8..10)?;
    let minute = digits(10..12)?;
    let second = digits(12..14)?;
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut rest = &text[14..];
    if let Some(fraction) = rest.strip_prefix(['.', ',']) {
        let digits_end = fraction
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(fraction.len());
        if digits_end == 0 {
            return None;
        }
        rest = &fraction[digits_end..];
    }
    let offset = match rest {
        "Z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            if rest.len() != 5 || !rest[1..].bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let hours: i64 = rest[1..3].parse().ok()?;
            let minutes: i64 = rest[3..5].parse().ok()?;
            sign * (hours * 3600 + minutes * 60)
        }
    };
    let days = crate::calendar::days_from_civil(year, month, day);
    Some(days * 86_400 + hour * 3600 + minute * 60 + second - offset)
}

/// An in-process LDAP server for the tests of `ldap` and `ad`: a rootDSE with AD-like attributes,
/// one account for simple binds, a search with a configured number of entries, StartTLS and
/// LDAPS with certificates made by rcgen, and hostile behaviours.
#[cfg(test)]
pub(crate) mod test_server {
    use futures_util::{SinkExt, StreamExt};
    use ldap3_proto::LdapCodec;
    use ldap3_proto::proto::{
        LdapBindCred, LdapBindResponse, LdapExtendedResponse, LdapMsg, LdapOp,
        LdapPartialAttribute, LdapResult, LdapResultCode, LdapSearchResultEntry,
    };
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::SystemTime;
    use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::task::JoinSet;
    use tokio_rustls::TlsAcceptor;
    use tokio_util::codec::Framed;

    pub const BIND_DN: &str = "CN=svc-estate,OU=Service,DC=corp,DC=test";
    pub const PASSWORD: &str = "s3cret-Pa55word!";
    const STARTTLS_OID: &str = "1.3.6.1.4.1.1466.20037";

    /// How the server treats a connection.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Behaviour {
        /// A well-behaved directory.
        Directory,
        /// Answers the first request with bytes that are not BER.
        Garbage,
        /// Answers the first request with half a message, then closes.
        CloseMidMessage,
        /// Reads requests and never answers.
        Silent,
        /// Answers the first request with well-formed BER of the wrong shape (an empty
        /// SEQUENCE), on which ldap3 panics.
        WrongShape,
    }

    /// The server's setup.
    #[derive(Debug, Clone)]
    pub struct Directory {
        pub behaviour: Behaviour,
        /// Entries returned by any search other than the rootDSE's.
        pub entries: usize,
        /// Seconds added to this host's clock for `currentTime`.
        pub clock_offset: i64,
        pub synchronized: bool,
        /// `Some`: the whole connection is TLS (LDAPS). StartTLS is always offered when a
        /// certificate is set with `starttls`.
        pub ldaps: Option<Arc<rustls::ServerConfig>>,
        pub starttls: Option<Arc<rustls::ServerConfig>>,
        pub dns_host_name: String,
    }

    impl Default for Directory {
        fn default() -> Self {
            Directory {
                behaviour: Behaviour::Directory,
                entries: 3,
                clock_offset: 0,
                synchronized: true,
                ldaps: None,
                starttls: None,
                dns_host_name: "dc1.corp.test".to_owned(),
            }
        }
    }

    /// A running server; its tasks end when it is dropped.
    #[derive(Debug)]
    pub struct Running {
        pub address: SocketAddr,
        _tasks: JoinSet<()>,
    }

    impl Directory {
        pub async fn start(self) -> Running {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let address = listener.local_addr().unwrap();
            let mut tasks = JoinSet::new();
            let directory = Arc::new(self);
            tasks.spawn(async move {
                let mut connections = JoinSet::new();
                while let Ok((stream, _)) = listener.accept().await {
                    connections.spawn(Arc::clone(&directory).serve(stream));
                }
            });
            Running {
                address,
                _tasks: tasks,
            }
        }

        async fn serve(self: Arc<Self>, stream: TcpStream) {
            if let Some(config) = &self.ldaps {
                let Ok(tls) = TlsAcceptor::from(Arc::clone(config)).accept(stream).await else {
                    return;
                };
                self.session(tls).await;
                return;
            }
            if let Some(plain) = self.session(stream).await
                && let Some(config) = &self.starttls
                && let Ok(tls) = TlsAcceptor::from(Arc::clone(config)).accept(plain).await
            {
                self.session(tls).await;
            }
        }

        /// Serves one connection; returns the stream when the client asked for StartTLS.
        async fn session<S: AsyncRead + AsyncWrite + Unpin>(&self, stream: S) -> Option<S> {
            let mut framed = Framed::new(stream, LdapCodec::default());
            while let Some(Ok(request)) = framed.next().await {
                let reply_to = request.msgid;
                match self.behaviour {
                    Behaviour::Directory => {}
                    Behaviour::Garbage => {
                        let stream = framed.get_mut();
                        let _ = stream.write_all(b"\x01\x02garbage, not BER at all").await;
                        let _ = stream.flush().await;
                        std::future::pending::<()>().await;
                    }
                    Behaviour::CloseMidMessage => {
                        // A SEQUENCE announcing 100 bytes, with only a few of them.
                        let stream = framed.get_mut();
                        let _ = stream.write_all(b"\x30\x64\x02\x01\x01\x61").await;
                        let _ = stream.shutdown().await;
                        return None;
                    }
                    Behaviour::Silent => continue,
                    Behaviour::WrongShape => {
                        let stream = framed.get_mut();
                        let _ = stream.write_all(b"\x30\x00").await;
                        let _ = stream.flush().await;
                        std::future::pending::<()>().await;
                    }
                }
                let replies = match request.op {
                    LdapOp::BindRequest(bind) => {
                        let accepted = matches!(
                            &bind.cred,
                            LdapBindCred::Simple(password)
                                if bind.dn == BIND_DN && password == PASSWORD
                        );
                        let res = if accepted {
                            result(LdapResultCode::Success, "")
                        } else {
                            result(
                                LdapResultCode::InvalidCredentials,
                                "80090308: LdapErr: DSID-0C09044E, comment: \
                                 AcceptSecurityContext error, data 52e, v4563",
                            )
                        };
                        vec![LdapOp::BindResponse(LdapBindResponse {
                            res,
                            saslcreds: None,
                        })]
                    }
                    LdapOp::SearchRequest(search) if search.base.is_empty() => vec![
                        LdapOp::SearchResultEntry(self.root_dse()),
                        LdapOp::SearchResultDone(result(LdapResultCode::Success, "")),
                    ],
                    LdapOp::SearchRequest(search) => {
                        let mut replies: Vec<LdapOp> = (0..self.entries)
                            .map(|n| {
                                LdapOp::SearchResultEntry(LdapSearchResultEntry {
                                    dn: format!("CN=host{n},{}", search.base),
                                    attributes: Vec::new(),
                                })
                            })
                            .collect();
                        replies.push(LdapOp::SearchResultDone(result(
                            LdapResultCode::Success,
                            "",
                        )));
                        replies
                    }
                    LdapOp::ExtendedRequest(extended) if extended.name == STARTTLS_OID => {
                        let code = if self.starttls.is_some() {
                            LdapResultCode::Success
                        } else {
                            LdapResultCode::Unavailable
                        };
                        let reply = LdapMsg::new(
                            reply_to,
                            LdapOp::ExtendedResponse(LdapExtendedResponse {
                                res: result(code, ""),
                                name: Some(STARTTLS_OID.to_owned()),
                                value: None,
                            }),
                        );
                        if framed.send(reply).await.is_err() {
                            return None;
                        }
                        if self.starttls.is_some() {
                            return Some(framed.into_inner());
                        }
                        continue;
                    }
                    LdapOp::UnbindRequest => return None,
                    _ => vec![LdapOp::ExtendedResponse(LdapExtendedResponse {
                        res: result(LdapResultCode::UnwillingToPerform, "not in this test"),
                        name: None,
                        value: None,
                    })],
                };
                for op in replies {
                    if framed.send(LdapMsg::new(reply_to, op)).await.is_err() {
                        return None;
                    }
                }
            }
            None
        }

        fn root_dse(&self) -> LdapSearchResultEntry {
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64
                + self.clock_offset;
            let attribute = |name: &str, value: &str| LdapPartialAttribute {
                atype: name.to_owned(),
                vals: vec![value.as_bytes().to_vec()],
            };
            let flag = |value: bool| if value { "TRUE" } else { "FALSE" };
            LdapSearchResultEntry {
                dn: String::new(),
                attributes: vec![
                    attribute("currentTime", &generalized_time(now)),
                    attribute("isSynchronized", flag(self.synchronized)),
                    attribute("isGlobalCatalogReady", "TRUE"),
                    attribute("dnsHostName", &self.dns_host_name),
                    attribute("defaultNamingContext", "DC=corp,DC=test"),
                    attribute("domainFunctionality", "7"),
                    attribute("forestFunctionality", "7"),
                    attribute("domainControllerFunctionality", "7"),
                    attribute("supportedLDAPVersion", "3"),
                ],
            }
        }
    }

    fn result(code: LdapResultCode, message: &str) -> LdapResult {
        LdapResult {
            code,
            matcheddn: String::new(),
            message: message.to_owned(),
            referral: Vec::new(),
        }
    }

    /// `YYYYMMDDHHMMSS.0Z` of Unix seconds.
    pub fn generalized_time(unix: i64) -> String {
        let seconds = unix.rem_euclid(86_400);
        let (year, month, day) = crate::calendar::civil_from_days(unix.div_euclid(86_400));
        format!(
            "{year:04}{month:02}{day:02}{:02}{:02}{:02}.0Z",
            seconds / 3600,
            seconds % 3600 / 60,
            seconds % 60
        )
    }

    pub use crate::checks::certificate::test_pki::{TestPki, VALID, Validity};
}

#[cfg(test)]
mod tests {
    use super::test_server::{
        BIND_DN, Behaviour, Directory, PASSWORD, Running, TestPki, VALID, Validity,
    };
    use super::*;
    use crate::checks::CheckConfig;
    use crate::checks::test_support::parse_entry;
    use std::io::Write;

    fn config(toml_text: &str) -> Result<LdapCheck, String> {
        let CheckConfig::Ldap(config) = parse_entry("ldap", toml_text)? else {
            unreachable!("a ldap entry parses as a ldap config")
        };
        config.validate()
    }

    #[test]
    fn urls_modes_and_targets() {
        let cases = [
            ("url = \"ldap://dc1.corp.test\"", "dc1.corp.test:389/ldap"),
            ("url = \"ldaps://dc1.corp.test\"", "dc1.corp.test:636/ldaps"),
            (
                "url = \"ldap://dc1.corp.test:3268/\"",
                "dc1.corp.test:3268/ldap",
            ),
            (
                "url = \"ldap://dc1.corp.test\"\nstarttls = true",
                "dc1.corp.test:389/starttls",
            ),
            (
                "url = \"ldaps://[2001:db8::1]:3269\"",
                "[2001:db8::1]:3269/ldaps",
            ),
        ];
        for (toml_text, target) in cases {
            assert_eq!(config(toml_text).map(|c| c.target()), Ok(target.to_owned()));
        }
    }

    #[test]
    fn the_documented_example_validates() {
        let check = config(
            r#"url = "ldaps://ldap.example.com"
starttls = false
tls_verify = true
ca_file = "/etc/estate/corp-ca.pem"
cert_min_days = 14
root_dse = true
max_skew = "5m"
bind_dn = "CN=svc-estate,OU=Service,DC=example,DC=com"
password_file = "/etc/estate/ldap-password"
search_base = "OU=Servers,DC=example,DC=com"
search_filter = "(objectClass=computer)"
search_scope = "sub"
min_results = 1"#,
        )
        .unwrap();
        assert_eq!(check.plan.max_skew, Some(Duration::from_secs(300)));
        assert_eq!(
            check.plan.bind.as_ref().map(|b| &b.password),
            Some(&PasswordSource::File("/etc/estate/ldap-password".into()))
        );
    }

    #[test]
    fn validation_errors_name_the_field_and_value() {
        let cases = [
            ("", "missing field `url`"),
            (
                "url = \"http://x\"",
                "url `http://x` is not `ldap://host[:port]` or `ldaps://host[:port]`",
            ),
            (
                "url = \"ldap://x/DC=corp\"",
                "url `ldap://x/DC=corp` has more than `scheme://host:port`; put the DN in \
                 `search_base`",
            ),
            ("url = \"ldap://:389\"", "url `ldap://:389` has no host"),
            (
                "url = \"ldap://x:0\"",
                "url `ldap://x:0` has an invalid port `0`",
            ),
            (
                "url = \"ldaps://x\"\nstarttls = true",
                "`starttls` upgrades plain LDAP, it does not apply to url `ldaps://x`",
            ),
            (
                "url = \"ldap://x\"\ntls_verify = false",
                "`ca_file` and `tls_verify` apply to TLS, use `ldaps://` or `starttls` with \
                 url `ldap://x`",
            ),
            (
                "url = \"ldap://x\"\nbind_dn = \"cn=a\"\npassword_env = \"P\"",
                "a bind over plain LDAP sends the password in clear (and AD refuses it), use \
                 `ldaps://` or `starttls = true` with url `ldap://x`",
            ),
            (
                "url = \"ldaps://x\"\nbind_dn = \"cn=a\"",
                "bind_dn `cn=a` needs `password_file` or `password_env`",
            ),
            (
                "url = \"ldaps://x\"\npassword_env = \"P\"",
                "a password without `bind_dn` has no account to bind",
            ),
            (
                "url = \"ldaps://x\"\nbind_dn = \"cn=a\"\npassword_env = \"P\"\npassword_file = \"f\"",
                "`password_file` and `password_env` are exclusive, use one",
            ),
            (
                "url = \"ldap://x\"\nsearch_base = \"dc=x\"\nsearch_filter = \"objectClass=*)(\"",
                "search_filter `objectClass=*)(` is not a valid LDAP filter",
            ),
            (
                "url = \"ldap://x\"\nsearch_scope = \"deep\"",
                "unknown variant `deep`, expected one of `base`, `one`, `sub`",
            ),
            (
                "url = \"ldap://x\"\nroot_dse = false\nmax_skew = \"5m\"",
                "`max_skew` needs `root_dse = true`: the time comes from it",
            ),
            (
                "url = \"ldap://x\"\npassword = \"hunter2\"",
                "unknown field `password`, expected one of `url`, `starttls`, `tls_verify`, \
                 `ca_file`, `cert_min_days`, `root_dse`, `max_skew`, `bind_dn`, \
                 `password_file`, `password_env`, `search_base`, `search_filter`, \
                 `search_scope`, `min_results`",
            ),
        ];
        for (toml_text, expected) in cases {
            assert_eq!(
                config(toml_text).map(|_| ()),
                Err(expected.to_owned()),
                "{toml_text}"
            );
        }
    }

    #[test]
    fn generalized_times() {
        assert_eq!(parse_generalized_time("19700101000000.0Z"), Some(0));
        assert_eq!(
            parse_generalized_time("20240229123456Z"),
            Some(1_709_210_096)
        );
        assert_eq!(
            parse_generalized_time("20240229133456+0100"),
            Some(1_709_210_096)
        );
        assert_eq!(
            parse_generalized_time("20240229123456.123Z"),
            Some(1_709_210_096)
        );
        for bad in [
            "",
            "2024",
            "20241329000000Z",
            "20240229123456",
            "2024022912345xZ",
            "20240229123456.Z",
        ] {
            assert_eq!(parse_generalized_time(bad), None, "{bad}");
        }
        let now = 1_760_000_000;
        assert_eq!(
            parse_generalized_time(&test_server::generalized_time(now)),
            Some(now)
        );
    }

    fn plan() -> ProbePlan {
        ProbePlan {
            tls_verify: true,
            ca_file: None,
            cert_min_days: 14,
            root_dse: RootDse::Report,
            max_skew: None,
            require_gc_ready: false,
            bind: None,
            search: None,
        }
    }

    async fn probe_with(server: &Running, security: Security, plan: &ProbePlan) -> TargetResult {
        let endpoint = Endpoint {
            host: "dc1.corp.test".into(),
            port: server.address.port(),
            security,
            address: Some(server.address.ip()),
        };
        let result = probe_endpoint(&endpoint, plan, Duration::from_secs(3)).await;
        assert!(
            !format!("{result:?}").contains(PASSWORD),
            "the password leaked: {result:?}"
        );
        result
    }

    fn reason(result: &TargetResult) -> &str {
        match &result.outcome {
            Outcome::Fail { reason } => reason,
            other => panic!("expected a failure, got {other:?} in {result:?}"),
        }
    }

    fn value(result: &TargetResult, name: &str) -> Option<f64> {
        result
            .measurements
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.value)
    }

    fn text(result: &TargetResult, name: &str) -> Option<String> {
        result
            .measurements
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.text.clone())
    }

    fn ca_file(pki: &TestPki) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(pki.ca_pem.as_bytes()).unwrap();
        file
    }

    fn password_file(password: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "{password}").unwrap();
        file
    }

    #[tokio::test]
    async fn a_plain_root_dse_read_reports_what_an_ad_dc_says() {
        let server = Directory::default().start().await;
        let result = probe_with(&server, Security::Plain, &plan()).await;
        assert_eq!(result.outcome, Outcome::Pass, "{result:?}");
        assert_eq!(
            result.target,
            format!("dc1.corp.test:{}/ldap", server.address.port())
        );
        let names: Vec<_> = result
            .measurements
            .iter()
            .map(|m| m.name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "current_time_skew_seconds",
                "synchronized",
                "gc_ready",
                "dns_host_name",
                "default_naming_context",
                "domain_functionality",
                "forest_functionality",
                "dc_functionality",
                "latency_seconds"
            ]
        );
        assert!(value(&result, "current_time_skew_seconds").unwrap().abs() < 2.0);
        assert_eq!(value(&result, "synchronized"), Some(1.0));
        assert_eq!(value(&result, "domain_functionality"), Some(7.0));
        assert_eq!(
            text(&result, "dns_host_name").as_deref(),
            Some("dc1.corp.test")
        );
        assert_eq!(
            text(&result, "default_naming_context").as_deref(),
            Some("DC=corp,DC=test")
        );
    }

    #[tokio::test]
    async fn a_clock_beyond_max_skew_fails_and_the_skew_is_measured() {
        let server = Directory {
            clock_offset: 600,
            ..Directory::default()
        }
        .start()
        .await;
        let plan = ProbePlan {
            max_skew: Some(Duration::from_secs(300)),
            ..plan()
        };
        let result = probe_with(&server, Security::Plain, &plan).await;
        let reason = reason(&result);
        assert!(reason.contains("clock skew `+"), "{reason}");
        assert!(reason.ends_with("exceeds `max_skew` `5m`"), "{reason}");
        let skew = value(&result, "current_time_skew_seconds").unwrap();
        assert!((598.0..=601.0).contains(&skew), "{skew}");
    }

    #[tokio::test]
    async fn a_dc_that_is_not_synchronized_fails() {
        let server = Directory {
            synchronized: false,
            ..Directory::default()
        }
        .start()
        .await;
        let result = probe_with(&server, Security::Plain, &plan()).await;
        assert!(
            reason(&result).contains("`isSynchronized: FALSE`"),
            "{result:?}"
        );
        assert_eq!(value(&result, "synchronized"), Some(0.0));
    }

    #[tokio::test]
    async fn ldaps_with_a_trusted_certificate_binds_and_counts_the_search() {
        let pki = TestPki::new();
        let server = Directory {
            ldaps: Some(pki.server(&["dc1.corp.test"], VALID, false)),
            entries: 5,
            ..Directory::default()
        }
        .start()
        .await;
        let ca = ca_file(&pki);
        let password = password_file(PASSWORD);
        let plan = ProbePlan {
            ca_file: Some(ca.path().into()),
            bind: Some(BindPlan {
                dn: BIND_DN.into(),
                password: PasswordSource::File(password.path().into()),
            }),
            search: Some(SearchPlan {
                base: "OU=Servers,DC=corp,DC=test".into(),
                filter: "(objectClass=computer)".into(),
                scope: SearchScope::Sub,
                min_results: 5,
            }),
            ..plan()
        };
        let result = probe_with(&server, Security::Ldaps, &plan).await;
        assert_eq!(result.outcome, Outcome::Pass, "{result:?}");
        assert_eq!(value(&result, "search_results"), Some(5.0));
        let days = value(&result, "cert_days_left").unwrap();
        assert!((363.0..=365.0).contains(&days), "{days}");
        assert!(value(&result, "cert_not_after_unix").unwrap() > 1e9);

        let too_few = ProbePlan {
            search: plan.search.clone().map(|s| SearchPlan {
                min_results: 6,
                ..s
            }),
            ..plan.clone()
        };
        let result = probe_with(&server, Security::Ldaps, &too_few).await;
        assert!(
            reason(&result).ends_with(
                "search under `OU=Servers,DC=corp,DC=test` for `(objectClass=computer)` found 5 \
                 entries, fewer than `min_results` 6"
            ),
            "{result:?}"
        );
        assert_eq!(value(&result, "search_results"), Some(5.0));
    }

    #[tokio::test]
    async fn a_refused_bind_names_the_account_and_never_the_password() {
        let pki = TestPki::new();
        let server = Directory {
            ldaps: Some(pki.server(&["dc1.corp.test"], VALID, false)),
            ..Directory::default()
        }
        .start()
        .await;
        let ca = ca_file(&pki);
        // The server's diagnostic text is reported; the password the agent sent is not, even
        // when it is the right password for another account.
        let password = password_file(PASSWORD);
        let plan = ProbePlan {
            ca_file: Some(ca.path().into()),
            bind: Some(BindPlan {
                dn: "CN=someone-else,DC=corp,DC=test".into(),
                password: PasswordSource::File(password.path().into()),
            }),
            ..plan()
        };
        let result = probe_with(&server, Security::Ldaps, &plan).await;
        let reason = reason(&result);
        assert!(
            reason.contains(
                "bind as `CN=someone-else,DC=corp,DC=test` refused: invalidCredentials (49): \
                 80090308"
            ),
            "{reason}"
        );
    }

    #[tokio::test]
    async fn a_missing_password_file_fails_before_connecting() {
        let plan = ProbePlan {
            bind: Some(BindPlan {
                dn: BIND_DN.into(),
                password: PasswordSource::File("/nonexistent/estate-password".into()),
            }),
            ..plan()
        };
        let endpoint = Endpoint {
            host: "dc1.corp.test".into(),
            port: 1,
            security: Security::Ldaps,
            address: Some("127.0.0.1".parse().unwrap()),
        };
        let result = probe_endpoint(&endpoint, &plan, Duration::from_secs(1)).await;
        assert!(
            reason(&result)
                .starts_with("cannot read password_file `/nonexistent/estate-password`: "),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn starttls_upgrades_and_reports_the_certificate() {
        let pki = TestPki::new();
        let server = Directory {
            starttls: Some(pki.server(&["dc1.corp.test"], VALID, false)),
            ..Directory::default()
        }
        .start()
        .await;
        let ca = ca_file(&pki);
        let plan = ProbePlan {
            ca_file: Some(ca.path().into()),
            ..plan()
        };
        let result = probe_with(&server, Security::StartTls, &plan).await;
        assert_eq!(result.outcome, Outcome::Pass, "{result:?}");
        assert!(result.target.ends_with("/starttls"));
        assert!(value(&result, "cert_days_left").is_some());

        // A server that does not offer StartTLS says so.
        let plain = Directory::default().start().await;
        let result = probe_with(&plain, Security::StartTls, &plan).await;
        assert!(
            reason(&result).contains("StartTLS failed: unavailable (52)"),
            "{result:?}"
        );
    }

    /// Each bad certificate fails with a reason saying what is wrong with it.
    #[tokio::test]
    async fn bad_certificates_say_what_is_wrong() {
        let pki = TestPki::new();
        let expired = Validity {
            from_days: -30,
            until_days: -2,
        };
        let soon = Validity {
            from_days: -30,
            until_days: 5,
        };
        let cases = [
            (
                pki.server(&["dc1.corp.test"], expired, false),
                "certificate expired on `",
            ),
            (
                pki.server(&["other.corp.test"], VALID, false),
                "certificate is not valid for `dc1.corp.test` (it names `other.corp.test`)",
            ),
            (
                pki.server(&["dc1.corp.test"], VALID, true),
                "certificate is self-signed (`CN=dc1.corp.test`) and not trusted",
            ),
            (pki.server(&["dc1.corp.test"], soon, false), "days (on `"),
        ];
        let ca = ca_file(&pki);
        let with_test_ca = ProbePlan {
            ca_file: Some(ca.path().into()),
            ..plan()
        };
        for (config, expected) in cases {
            let server = Directory {
                ldaps: Some(config),
                ..Directory::default()
            }
            .start()
            .await;
            let result = probe_with(&server, Security::Ldaps, &with_test_ca).await;
            assert!(reason(&result).contains(expected), "{expected}: {result:?}");
            assert!(value(&result, "cert_days_left").is_some(), "{result:?}");
        }
        // Against the system roots (the default), the test CA is unknown.
        let server = Directory {
            ldaps: Some(pki.server(&["dc1.corp.test"], VALID, false)),
            ..Directory::default()
        }
        .start()
        .await;
        let result = probe_with(&server, Security::Ldaps, &plan()).await;
        assert!(
            reason(&result).contains(
                "certificate is issued by `CN=estate test CA`, which is not a trusted CA"
            ),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn without_verification_a_self_signed_certificate_is_only_reported() {
        let pki = TestPki::new();
        let server = Directory {
            ldaps: Some(pki.server(&["whatever.test"], VALID, true)),
            ..Directory::default()
        }
        .start()
        .await;
        let plan = ProbePlan {
            tls_verify: false,
            ..plan()
        };
        let result = probe_with(&server, Security::Ldaps, &plan).await;
        assert_eq!(result.outcome, Outcome::Pass, "{result:?}");
        assert!(value(&result, "cert_days_left").unwrap() >= 363.0);
    }

    /// Hostile and broken peers: every one is a failure with a clear reason, none a panic of
    /// the probe.
    #[tokio::test]
    async fn hostile_peers_fail_with_clear_reasons() {
        let cases = [
            (Behaviour::Garbage, "is not an LDAP message (invalid BER)"),
            (
                Behaviour::CloseMidMessage,
                "closed the connection in the middle of a message",
            ),
            (Behaviour::WrongShape, "sent a malformed LDAP message"),
        ];
        for (behaviour, expected) in cases {
            let server = Directory {
                behaviour,
                ..Directory::default()
            }
            .start()
            .await;
            let result = probe_with(&server, Security::Plain, &plan()).await;
            assert!(
                reason(&result).contains(expected),
                "{behaviour:?}: {result:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_server_that_never_answers_times_out_naming_the_step() {
        let server = Directory {
            behaviour: Behaviour::Silent,
            ..Directory::default()
        }
        .start()
        .await;
        let endpoint = Endpoint {
            host: "dc1.corp.test".into(),
            port: server.address.port(),
            security: Security::Plain,
            address: Some(server.address.ip()),
        };
        let result = probe_endpoint(&endpoint, &plan(), Duration::from_millis(300)).await;
        assert_eq!(
            reason(&result),
            format!(
                "no answer to the rootDSE read from `dc1.corp.test:{}/ldap` within 300ms",
                server.address.port()
            )
        );
        assert!(value(&result, "latency_seconds").is_some());
    }

    #[tokio::test]
    async fn a_refused_connection_names_the_address() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let endpoint = Endpoint {
            host: "dc1.corp.test".into(),
            port,
            security: Security::Plain,
            address: Some("127.0.0.1".parse().unwrap()),
        };
        let result = probe_endpoint(&endpoint, &plan(), Duration::from_secs(2)).await;
        let expected =
            format!("connection to `127.0.0.1:{port}` (dc1.corp.test:{port}/ldap) failed: ");
        assert!(reason(&result).starts_with(&expected), "{result:?}");
    }
}
