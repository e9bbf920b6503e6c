//! Checks: the registry of check kinds (a closed set), their shared config shape, and the runner
//! that applies the timeout and the concurrency limit the same way to every kind.
//!
//! Adding a kind: one module beside `tcp.rs` (its config with `deny_unknown_fields`, a pure
//! `validate` into a ready check, the probe, its tests), then one variant in [`CheckConfig`] and
//! one in [`Check`]; the exhaustive matches below point at every other place to touch.
//!
//! Invariant: a check never panics and never returns `Err`. What went wrong is an
//! [`Outcome::Fail`] or [`Outcome::Skipped`] with a reason, reported like any other result.

pub mod ad;
pub mod certificate;
pub mod dhcp;
pub mod dns;
pub mod exchange;
pub mod http;
pub mod kerberos;
pub mod ldap;
pub mod service;
pub mod smtp;
pub mod tcp;
pub mod tls;

use estate_proto::v1::{self as proto, Measurement};
use serde::Deserialize;
use std::future::Future;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::Semaphore;

/// One `[[checks]]` entry of the config file: the fields every kind shares, then the kind and
/// its own fields.
///
/// No `deny_unknown_fields` here: serde does not support it beside `flatten`. Unknown keys are
/// still rejected, by the kind's struct, which receives every key this struct does not take.
#[derive(Debug, Clone, Deserialize)]
pub struct CheckEntry {
    /// Unique name of the check on this agent; it identifies the check's series in reports
    /// and metrics, so renaming it starts new series.
    pub name: String,
    /// How often the check runs.
    #[serde(default = "default_check_interval", with = "crate::config::duration")]
    pub interval: Duration,
    /// How long one run may take before it counts as failed.
    #[serde(default = "default_check_timeout", with = "crate::config::duration")]
    pub timeout: Duration,
    /// The kind (`kind = "tcp"`) and the kind's own fields.
    #[serde(flatten)]
    pub config: CheckConfig,
}

/// A check runs every minute unless told otherwise.
pub fn default_check_interval() -> Duration {
    Duration::from_secs(60)
}

/// A probe that takes longer than five seconds is as good as down for most services.
pub fn default_check_timeout() -> Duration {
    Duration::from_secs(5)
}

/// The kind-specific config of a check, chosen by its `kind` field.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum CheckConfig {
    /// Opens a TCP connection to a host and port.
    Tcp(tcp::TcpCheckConfig),
    /// Queries DNS servers for a name and type and checks the answers.
    Dns(dns::DnsCheckConfig),
    /// Sends an AS-REQ to KDCs over UDP and TCP and expects a KRB-ERROR or AS-REP for the realm.
    Kerberos(kerberos::KerberosCheckConfig),
    /// Reads an LDAP server's rootDSE over LDAP, StartTLS or LDAPS, checks its certificate, and
    /// optionally binds and searches.
    Ldap(ldap::LdapCheckConfig),
    /// Discovers an Active Directory domain's DCs from DNS SRV records and probes each one's
    /// LDAP, StartTLS, LDAPS, global catalog and Kerberos.
    Ad(ad::AdCheckConfig),
    /// Connects over TLS and checks the certificate (trust, name, expiry) and the version.
    Tls(tls::TlsCheckConfig),
    /// Talks SMTP to a mail server as a sending MTA does: greeting, EHLO, STARTTLS and its
    /// certificate, EHLO again, QUIT; never sends mail.
    Smtp(smtp::SmtpCheckConfig),
    /// Requests a URL over HTTP or HTTPS and checks the status, body, latency and certificate.
    Http(http::HttpCheckConfig),
    /// Sends a DHCPDISCOVER (broadcast on an interface, or as a relay to a server) and checks
    /// the DHCPOFFERs, without ever taking a lease.
    Dhcp(dhcp::DhcpCheckConfig),
    /// Walks an Exchange organisation's Autodiscover chain, requests every protocol's health
    /// page, and talks SMTP with STARTTLS, reporting every HTTPS certificate on the way.
    Exchange(exchange::ExchangeCheckConfig),
    /// Reads the state of named services (systemd units, Windows services) and compares it
    /// with the expected one.
    Service(service::ServiceCheckConfig),
}

/// Every kind name, as written in `kind = "..."`. A test keeps it in step with [`CheckConfig`].
pub const CHECK_KINDS: &[&str] = &[
    "tcp", "dns", "kerberos", "ldap", "ad", "tls", "smtp", "http", "dhcp", "exchange", "service",
];

impl CheckConfig {
    /// The kind's name as written in the config and reported in results.
    pub fn kind(&self) -> &'static str {
        match self {
            CheckConfig::Tcp(_) => tcp::KIND,
            CheckConfig::Dns(_) => dns::KIND,
            CheckConfig::Kerberos(_) => kerberos::KIND,
            CheckConfig::Ldap(_) => ldap::KIND,
            CheckConfig::Ad(_) => ad::KIND,
            CheckConfig::Tls(_) => tls::KIND,
            CheckConfig::Smtp(_) => smtp::KIND,
            CheckConfig::Http(_) => http::KIND,
            CheckConfig::Dhcp(_) => dhcp::KIND,
            CheckConfig::Exchange(_) => exchange::KIND,
            CheckConfig::Service(_) => service::KIND,
        }
    }

    /// Validates the kind's fields into a ready check. Pure: no I/O, no name resolution.
    pub fn validate(&self) -> Result<Check, String> {
        match self {
            CheckConfig::Tcp(config) => config.validate().map(Check::Tcp),
            CheckConfig::Dns(config) => config.validate().map(Check::Dns),
            CheckConfig::Kerberos(config) => config.validate().map(Check::Kerberos),
            CheckConfig::Ldap(config) => config.validate().map(Check::Ldap),
            CheckConfig::Ad(config) => config.validate().map(Check::Ad),
            CheckConfig::Tls(config) => config.validate().map(Check::Tls),
            CheckConfig::Smtp(config) => config.validate().map(Check::Smtp),
            CheckConfig::Http(config) => config.validate().map(Check::Http),
            CheckConfig::Dhcp(config) => config.validate().map(Check::Dhcp),
            CheckConfig::Exchange(config) => config.validate().map(Check::Exchange),
            CheckConfig::Service(config) => config.validate().map(Check::Service),
        }
    }
}

/// A validated check of any kind, ready to probe.
#[derive(Debug, Clone)]
pub enum Check {
    Tcp(tcp::TcpCheck),
    Dns(dns::DnsCheck),
    Kerberos(kerberos::KerberosCheck),
    Ldap(ldap::LdapCheck),
    Ad(ad::AdCheck),
    Tls(tls::TlsCheck),
    Smtp(smtp::SmtpCheck),
    Http(http::HttpCheck),
    Dhcp(dhcp::DhcpCheck),
    Exchange(exchange::ExchangeCheck),
    Service(service::ServiceCheck),
}

impl Check {
    /// The kind's name, as in [`CheckConfig::kind`].
    pub fn kind(&self) -> &'static str {
        match self {
            Check::Tcp(_) => tcp::KIND,
            Check::Dns(_) => dns::KIND,
            Check::Kerberos(_) => kerberos::KIND,
            Check::Ldap(_) => ldap::KIND,
            Check::Ad(_) => ad::KIND,
            Check::Tls(_) => tls::KIND,
            Check::Smtp(_) => smtp::KIND,
            Check::Http(_) => http::KIND,
            Check::Dhcp(_) => dhcp::KIND,
            Check::Exchange(_) => exchange::KIND,
            Check::Service(_) => service::KIND,
        }
    }

    /// What the check probes, named in a result that has no target of its own (a timeout).
    pub fn target(&self) -> String {
        match self {
            Check::Tcp(check) => check.target(),
            Check::Dns(check) => check.target(),
            Check::Kerberos(check) => check.target(),
            Check::Ldap(check) => check.target(),
            Check::Ad(check) => check.target(),
            Check::Tls(check) => check.target(),
            Check::Smtp(check) => check.target(),
            Check::Http(check) => check.target(),
            Check::Dhcp(check) => check.target(),
            Check::Exchange(check) => check.target(),
            Check::Service(check) => check.target(),
        }
    }

    /// Runs the probe once, without concurrency limit. The runner enforces `timeout`; kinds that
    /// probe in several steps or fan out (`ldap`, `ad`) derive their own deadlines from it, so
    /// a slow step is named in its reason instead of the whole run timing out.
    pub async fn probe(&self, timeout: Duration) -> Vec<TargetResult> {
        match self {
            Check::Tcp(check) => check.probe().await,
            Check::Dns(check) => check.probe(timeout).await,
            Check::Kerberos(check) => check.probe().await,
            Check::Ldap(check) => check.probe(timeout).await,
            Check::Ad(check) => check.probe(timeout).await,
            Check::Tls(check) => check.probe(timeout).await,
            Check::Smtp(check) => check.probe(timeout).await,
            Check::Http(check) => check.probe(timeout).await,
            Check::Dhcp(check) => check.probe(timeout).await,
            Check::Exchange(check) => check.probe(timeout).await,
            Check::Service(check) => check.probe().await,
        }
    }
}

/// How one probe of one target went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Fail { reason: String },
    Skipped { reason: String },
}

/// The result of probing one target, before the runner adds the check's name, kind and times.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetResult {
    pub target: String,
    pub outcome: Outcome,
    pub measurements: Vec<Measurement>,
}

/// A named numeric measurement, the usual case.
pub fn measurement(name: &str, value: f64) -> Measurement {
    Measurement {
        name: name.to_owned(),
        value,
        text: String::new(),
    }
}

/// A configured, validated check with its schedule.
#[derive(Debug, Clone)]
pub struct ScheduledCheck {
    pub name: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub check: Check,
}

impl ScheduledCheck {
    /// Runs the check once under `limit` and its timeout; always yields at least one result.
    pub async fn run(&self, limit: &Semaphore) -> Vec<proto::CheckResult> {
        run_limited(
            &self.name,
            self.check.kind(),
            &self.check.target(),
            self.timeout,
            limit,
            self.check.probe(self.timeout),
        )
        .await
    }
}

/// Applies the concurrency limit and the timeout to one probe and turns its results into wire
/// results. Kept apart from [`ScheduledCheck::run`] so tests can feed it any future.
pub async fn run_limited<F>(
    name: &str,
    kind: &str,
    target: &str,
    timeout: Duration,
    limit: &Semaphore,
    probe: F,
) -> Vec<proto::CheckResult>
where
    F: Future<Output = Vec<TargetResult>>,
{
    let result = |target: &str, outcome: Outcome, measurements, started, duration: Duration| {
        let (outcome, reason) = match outcome {
            Outcome::Pass => (proto::Outcome::Pass, String::new()),
            Outcome::Fail { reason } => (proto::Outcome::Fail, reason),
            Outcome::Skipped { reason } => (proto::Outcome::Skipped, reason),
        };
        proto::CheckResult {
            check: name.to_owned(),
            kind: kind.to_owned(),
            target: target.to_owned(),
            outcome: outcome as i32,
            reason,
            started_unix_ms: started,
            duration_seconds: duration.as_secs_f64(),
            measurements,
        }
    };
    // The permit is held for the whole probe; the timeout starts once the probe may run, so
    // waiting for a permit never counts against the check.
    let _permit = match limit.acquire().await {
        Ok(permit) => permit,
        Err(_closed) => {
            let reason = "the agent is shutting down".to_owned();
            return vec![result(
                target,
                Outcome::Skipped { reason },
                Vec::new(),
                unix_ms(SystemTime::now()),
                Duration::ZERO,
            )];
        }
    };
    let started = unix_ms(SystemTime::now());
    let clock = Instant::now();
    let outcome = tokio::time::timeout(timeout, probe).await;
    let duration = clock.elapsed();
    match outcome {
        Ok(targets) if !targets.is_empty() => targets
            .into_iter()
            .map(|t| result(&t.target, t.outcome, t.measurements, started, duration))
            .collect(),
        Ok(_) => {
            // A kind that found nothing to probe says so instead of vanishing from reports.
            let reason = "the check found no target to probe".to_owned();
            vec![result(
                target,
                Outcome::Skipped { reason },
                Vec::new(),
                started,
                duration,
            )]
        }
        Err(_elapsed) => {
            let reason = format!("timed out after {}", humantime::format_duration(timeout));
            vec![result(
                target,
                Outcome::Fail { reason },
                Vec::new(),
                started,
                duration,
            )]
        }
    }
}

/// A DNS name from the config: letters, digits, `-`, `_` and dots, lower-cased, without the
/// trailing dot. `_` is allowed because service names (`_ldap._tcp`) carry it.
pub(crate) fn validate_dns_name(field: &str, text: &str) -> Result<String, String> {
    let name = text.trim_end_matches('.').to_ascii_lowercase();
    if name.is_empty() {
        return Err(format!("`{field}` is empty"));
    }
    let valid_label = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    if name.len() > 253 || !name.split('.').all(valid_label) {
        return Err(format!("{field} `{text}` is not a DNS name"));
    }
    Ok(name)
}

/// Milliseconds since the Unix epoch; 0 for a clock set before 1970.
pub(crate) fn unix_ms(time: SystemTime) -> i64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Test support shared by the check modules: an entry parsed exactly as the config file parses
/// it, and the example each module documents, so that the docs cannot drift from the parser.
#[cfg(test)]
pub(crate) mod test_support {
    use super::{CheckConfig, CheckEntry};

    /// Parses the kind's own keys of one `[[checks]]` entry, as the config file would.
    pub(crate) fn parse_entry(kind: &str, keys: &str) -> Result<CheckConfig, String> {
        let entry: CheckEntry =
            toml::from_str(&format!("name = \"example\"\nkind = \"{kind}\"\n{keys}"))
                .map_err(|error| error.message().to_owned())?;
        Ok(entry.config)
    }

    /// The kind's own keys from the first ```` ```toml ```` block of a module's doc comment:
    /// without the `[[checks]]` header and the `name` and `kind` keys every entry shares.
    pub(crate) fn documented_example(module_source: &str) -> String {
        module_source
            .lines()
            .skip_while(|line| !line.starts_with("//! ```toml"))
            .skip(1)
            .take_while(|line| !line.starts_with("//! ```"))
            .map(|line| line.trim_start_matches("//!").trim_start())
            .filter(|line| !line.starts_with("[[checks]]"))
            .filter(|line| !line.starts_with("name =") && !line.starts_with("kind ="))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn semaphore() -> Semaphore {
        Semaphore::new(1)
    }

    #[tokio::test]
    async fn a_probe_that_outlives_its_timeout_fails_with_the_timeout_as_reason() {
        let probe = std::future::pending::<Vec<TargetResult>>();
        let results = run_limited(
            "slow",
            "tcp",
            "db:5432",
            Duration::from_millis(20),
            &semaphore(),
            probe,
        )
        .await;
        assert_eq!(results.len(), 1);
        assert_eq!(results[0].check, "slow");
        assert_eq!(results[0].kind, "tcp");
        assert_eq!(results[0].target, "db:5432");
        assert_eq!(results[0].outcome, proto::Outcome::Fail as i32);
        assert_eq!(results[0].reason, "timed out after 20ms");
    }

    #[tokio::test]
    async fn a_probe_that_finds_no_target_is_reported_as_skipped() {
        let results = run_limited(
            "empty",
            "tcp",
            "x:1",
            Duration::from_secs(5),
            &semaphore(),
            async { Vec::new() },
        )
        .await;
        assert_eq!(results.len(), 1);
        assert_eq!(results[0].outcome, proto::Outcome::Skipped as i32);
        assert_eq!(results[0].reason, "the check found no target to probe");
    }

    #[tokio::test]
    async fn every_target_becomes_one_result_with_its_measurements() {
        let probe = async {
            vec![
                TargetResult {
                    target: "a:1".into(),
                    outcome: Outcome::Pass,
                    measurements: vec![measurement("connect_seconds", 0.5)],
                },
                TargetResult {
                    target: "b:1".into(),
                    outcome: Outcome::Fail {
                        reason: "refused".into(),
                    },
                    measurements: Vec::new(),
                },
            ]
        };
        let results = run_limited(
            "two",
            "tcp",
            "",
            Duration::from_secs(5),
            &semaphore(),
            probe,
        )
        .await;
        let summary: Vec<_> = results
            .iter()
            .map(|r| {
                (
                    r.target.as_str(),
                    r.outcome,
                    r.reason.as_str(),
                    r.measurements.len(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("a:1", proto::Outcome::Pass as i32, "", 1),
                ("b:1", proto::Outcome::Fail as i32, "refused", 0)
            ]
        );
    }

    #[test]
    fn every_kind_is_listed_once_and_parses() {
        let mut seen = std::collections::BTreeSet::new();
        for kind in CHECK_KINDS {
            assert!(seen.insert(kind), "kind `{kind}` listed twice");
            // Each kind must at least be recognised by the tag; its own fields are tested in
            // its module and in the example config.
            let text = format!("name = \"x\"\nkind = \"{kind}\"\n");
            match toml::from_str::<CheckEntry>(&text) {
                Ok(entry) => assert_eq!(entry.config.kind(), *kind),
                Err(error) => assert!(
                    !error.message().contains("unknown variant"),
                    "kind `{kind}` is not in `CheckConfig`: {error}"
                ),
            }
        }
    }
}
