//! The `ad` check: an Active Directory domain as its clients see it. It discovers the domain
//! controllers from DNS SRV records, then probes every DC the way a domain member uses it: LDAP
//! (rootDSE, clock, replication state), StartTLS and LDAPS certificates, the global catalog,
//! Kerberos over UDP and TCP, and optionally a service account's bind and search.
//!
//! ```toml
//! [[checks]]
//! name = "corp-ad"
//! kind = "ad"
//! domain = "corp.example.com"
//! forest = "example.com"                  # default: the domain
//! servers = ["10.0.0.10", "10.0.0.11"]    # DNS servers to ask; default: the system's
//! max_skew = "5m"                         # the Kerberos limit (the default)
//! cert_min_days = 14                      # the default
//! tls_verify = true                       # false: report certificate dates only
//! ca_file = "/etc/estate/corp-ca.pem"     # default: the system's roots
//! bind_dn = "svc-estate@corp.example.com"
//! password_file = "/etc/estate/ad.password"
//! search_base = "OU=Servers,DC=corp,DC=example,DC=com"
//! search_filter = "(objectClass=computer)"
//! ```
//!
//! # Results (targets)
//!
//! - Discovery, one result per SRV name, target the name: `_ldap._tcp.dc._msdcs.<domain>` (the
//!   DCs; fails when there are none), `_kerberos._tcp.<domain>` (the KDCs),
//!   `_gc._tcp.<forest>` (the global catalogs), `_ldap._tcp.pdc._msdcs.<domain>` (the PDC
//!   emulator: exactly one). Each fails when the name is missing or empty, since a domain member
//!   needs all four. Measures `latency_seconds` and `records`.
//! - Per DC, one result per probe, target `<dc>:<port>/<probe>`:
//!   `:389/ldap` (rootDSE over plain LDAP, anonymous; `current_time_skew_seconds` against
//!   `max_skew`, `isSynchronized`), `:389/starttls` and `:636/ldaps` (certificate chain, name and
//!   days left against `cert_min_days`), `:3268/gc` and `:3269/gc-tls` for DCs in `_gc._tcp`
//!   (`isGlobalCatalogReady`), `:88/kerberos-udp` and `:88/kerberos-tcp` for DCs in
//!   `_kerberos._tcp` (see the `kerberos` kind), and `:636/bind` when `bind_dn` is set (simple
//!   bind over LDAPS, then the search). Ports come from the SRV records; LDAPS and GC-TLS have
//!   no SRV record, so `ldaps_port` and `gc_tls_port` set them.
//!
//! A DC listed in DNS that does not answer fails each of its probes, naming it. With `servers`,
//! DC names are resolved by asking those servers (A and AAAA), as the SRV records came from them.
//!
//! # Time
//!
//! Discovery gets a quarter of the check's timeout; the probes share what is left, all DCs at
//! once, at most [`MAX_CONCURRENT_PROBES`] probes at a time, each with its own deadline, so a
//! silent DC is reported as such and the others still report.

use super::kerberos::{self, KdcTransport};
use super::ldap::{self, Endpoint, ProbePlan, RootDse, SearchScope, Security};
use super::{Outcome, TargetResult, dns, measurement, validate_dns_name};
use hickory_proto::op::Query;
use hickory_proto::rr::{Name, RData, RecordType};
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// The kind's name in `kind = "ad"`.
pub const KIND: &str = "ad";

/// At most this many probes (of all DCs together) run at the same time.
pub const MAX_CONCURRENT_PROBES: usize = 16;
/// At most this many DCs are probed; the rest are counted in the discovery result.
pub const MAX_DCS: usize = 64;

/// The `ad` check's own fields.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdCheckConfig {
    /// DNS name of the AD domain (`corp.example.com`); its upper-case form is the Kerberos realm.
    pub domain: String,
    /// DNS name of the forest root domain, where `_gc._tcp` lives. Default: `domain`.
    pub forest: Option<String>,
    /// DNS servers to ask, `ip` or `ip:port`. Default: the system's (`/etc/resolv.conf`).
    #[serde(default)]
    pub servers: Vec<String>,
    /// Fail a DC whose clock is further than this from this host's (Kerberos refuses 5 minutes).
    #[serde(
        default = "default_max_skew",
        deserialize_with = "crate::config::duration::deserialize"
    )]
    pub max_skew: Duration,
    /// Fail a DC whose LDAPS/StartTLS/GC certificate expires in fewer days than this.
    #[serde(default = "ldap::default_cert_min_days")]
    pub cert_min_days: u32,
    /// Verify the DCs' certificates (chain, name, dates). `false` reports their dates only.
    #[serde(default = "ldap::default_tls_verify")]
    pub tls_verify: bool,
    /// PEM file of the CA certificates to trust (the enterprise CA), instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// The LDAPS port (no SRV record names it).
    #[serde(default = "default_ldaps_port")]
    pub ldaps_port: u16,
    /// The global catalog's TLS port (no SRV record names it).
    #[serde(default = "default_gc_tls_port")]
    pub gc_tls_port: u16,
    /// Service account for a simple bind over LDAPS on every DC (`user@domain` or a DN).
    pub bind_dn: Option<String>,
    /// File holding the bind password, read at each run.
    pub password_file: Option<PathBuf>,
    /// Environment variable holding the bind password, read at each run.
    pub password_env: Option<String>,
    /// Base DN of a search after the bind; no search without it.
    pub search_base: Option<String>,
    /// LDAP filter of the search.
    #[serde(default = "ldap::default_search_filter")]
    pub search_filter: String,
    /// Scope of the search: `base`, `one` or `sub`.
    #[serde(default)]
    pub search_scope: SearchScope,
    /// Fail when the search finds fewer entries than this.
    #[serde(default = "ldap::default_min_results")]
    pub min_results: u64,
}

/// Kerberos refuses tickets from clocks more than five minutes apart.
pub fn default_max_skew() -> Duration {
    Duration::from_secs(300)
}

/// The LDAPS port.
pub fn default_ldaps_port() -> u16 {
    ldap::LDAPS_PORT
}

/// The global catalog's LDAPS port.
pub fn default_gc_tls_port() -> u16 {
    3269
}

impl AdCheckConfig {
    /// Checks the names, servers, ports and the bind and search settings.
    pub fn validate(&self) -> Result<AdCheck, String> {
        let domain = validate_dns_name("domain", &self.domain)?;
        let forest = match &self.forest {
            Some(forest) => validate_dns_name("forest", forest)?,
            None => domain.clone(),
        };
        let mut servers = Vec::with_capacity(self.servers.len());
        for server in &self.servers {
            let address = dns::parse_server_address(server)?;
            if servers.contains(&address) {
                return Err(format!("server `{server}` is listed twice in `servers`"));
            }
            servers.push(address);
        }
        for (field, port) in [
            ("ldaps_port", self.ldaps_port),
            ("gc_tls_port", self.gc_tls_port),
        ] {
            if port == 0 {
                return Err(format!("`{field}` `0` is not a port to connect to"));
            }
        }
        if self.max_skew.is_zero() {
            return Err("`max_skew` `0s` would fail every DC".to_owned());
        }
        if let Some(path) = &self.ca_file
            && path.as_os_str().is_empty()
        {
            return Err("`ca_file` is empty".to_owned());
        }
        let bind = ldap::validate_bind(
            self.bind_dn.as_deref(),
            self.password_file.as_ref(),
            self.password_env.as_deref(),
        )?;
        let search = ldap::validate_search(
            self.search_base.as_deref(),
            &self.search_filter,
            self.search_scope,
            self.min_results,
        )?;
        if search.is_some() && bind.is_none() {
            return Err(
                "`search_base` needs `bind_dn`: AD does not let anonymous clients search"
                    .to_owned(),
            );
        }
        Ok(AdCheck {
            inner: Arc::new(AdSettings {
                realm: domain.to_ascii_uppercase(),
                domain,
                forest,
                servers,
                max_skew: self.max_skew,
                cert_min_days: self.cert_min_days,
                tls_verify: self.tls_verify,
                ca_file: self.ca_file.clone(),
                ldaps_port: self.ldaps_port,
                gc_tls_port: self.gc_tls_port,
                bind,
                search,
            }),
        })
    }
}

/// A ready `ad` check (cheap to clone: probes of many DCs share its settings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdCheck {
    inner: Arc<AdSettings>,
}

#[derive(Debug, PartialEq, Eq)]
struct AdSettings {
    domain: String,
    forest: String,
    realm: String,
    servers: Vec<SocketAddr>,
    max_skew: Duration,
    cert_min_days: u32,
    tls_verify: bool,
    ca_file: Option<PathBuf>,
    ldaps_port: u16,
    gc_tls_port: u16,
    bind: Option<ldap::BindPlan>,
    search: Option<ldap::SearchPlan>,
}

/// The SRV names a domain member relies on, in the order they are reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Service {
    DomainControllers,
    Kerberos,
    GlobalCatalogs,
    PdcEmulator,
}

impl Service {
    const ALL: [Service; 4] = [
        Service::DomainControllers,
        Service::Kerberos,
        Service::GlobalCatalogs,
        Service::PdcEmulator,
    ];

    fn srv_name(self, settings: &AdSettings) -> String {
        match self {
            Service::DomainControllers => format!("_ldap._tcp.dc._msdcs.{}", settings.domain),
            Service::Kerberos => format!("_kerberos._tcp.{}", settings.domain),
            Service::GlobalCatalogs => format!("_gc._tcp.{}", settings.forest),
            Service::PdcEmulator => format!("_ldap._tcp.pdc._msdcs.{}", settings.domain),
        }
    }

    /// What it means when the name has no records.
    fn missing(self) -> &'static str {
        match self {
            Service::DomainControllers => "no domain controller is registered",
            Service::Kerberos => "no KDC is registered",
            Service::GlobalCatalogs => "no global catalog is registered",
            Service::PdcEmulator => "no PDC emulator is registered",
        }
    }
}

/// One probe of one DC.
#[derive(Debug, Clone, PartialEq, Eq)]
enum DcProbe {
    Ldap { port: u16 },
    StartTls { port: u16 },
    Ldaps,
    Gc { port: u16 },
    GcTls,
    Kerberos { port: u16, transport: KdcTransport },
    Bind,
}

/// A DC and what DNS said about it.
#[derive(Debug, Clone, Default)]
struct Dc {
    host: String,
    ldap_port: Option<u16>,
    gc_port: Option<u16>,
    kdc_port: Option<u16>,
}

impl AdCheck {
    /// The domain's DC SRV name, named in a result that has no target of its own.
    pub fn target(&self) -> String {
        Service::DomainControllers.srv_name(&self.inner)
    }

    /// Discovers the DCs and probes each; see the module docs.
    pub async fn probe(&self, timeout: Duration) -> Vec<TargetResult> {
        let started = Instant::now();
        let deadline = started + timeout.mul_f64(0.9);
        let settings = &self.inner;
        let query_timeout = (timeout / 4).max(Duration::from_millis(100));

        let lookups = Service::ALL.map(|service| {
            let name = service.srv_name(settings);
            let servers = settings.servers.clone();
            async move {
                let clock = Instant::now();
                let answer = dns::lookup_srv(&servers, &name, query_timeout).await;
                (service, name, answer, clock.elapsed())
            }
        });
        let [dcs, kdcs, gcs, pdc] = lookups;
        let answers = tokio::join!(dcs, kdcs, gcs, pdc);
        let answers = [answers.0, answers.1, answers.2, answers.3];

        let mut results = Vec::new();
        let mut found: Vec<Dc> = Vec::new();
        for (service, name, answer, latency) in answers {
            let mut measurements = vec![measurement("latency_seconds", latency.as_secs_f64())];
            let outcome = match answer {
                Err(reason) => Outcome::Fail { reason },
                Ok(targets) => {
                    measurements.push(measurement("records", targets.len() as f64));
                    for target in &targets {
                        let dc = match found.iter_mut().position(|dc| dc.host == target.host) {
                            Some(index) => &mut found[index],
                            None => {
                                found.push(Dc {
                                    host: target.host.clone(),
                                    ..Dc::default()
                                });
                                let last = found.len() - 1;
                                &mut found[last]
                            }
                        };
                        match service {
                            Service::DomainControllers => dc.ldap_port = Some(target.port),
                            Service::Kerberos => dc.kdc_port = Some(target.port),
                            Service::GlobalCatalogs => dc.gc_port = Some(target.port),
                            Service::PdcEmulator => {}
                        }
                    }
                    match (service, targets.len()) {
                        (_, 0) => Outcome::Fail {
                            reason: format!("`{name}` has no SRV records: {}", service.missing()),
                        },
                        (Service::PdcEmulator, count) if count > 1 => Outcome::Fail {
                            reason: format!(
                                "`{name}` names {count} PDC emulators, a domain has one: {}",
                                targets
                                    .iter()
                                    .map(|t| format!("`{}`", t.host))
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        },
                        _ => Outcome::Pass,
                    }
                }
            };
            results.push(TargetResult {
                target: name,
                outcome,
                measurements,
            });
        }
        // The PDC emulator is a DC too; only hosts with a probe-able service are kept.
        found.retain(|dc| dc.ldap_port.is_some() || dc.gc_port.is_some() || dc.kdc_port.is_some());
        if found.len() > MAX_DCS {
            tracing::warn!(
                domain = %settings.domain,
                found = found.len(),
                probed = MAX_DCS,
                "more DCs than one ad check probes"
            );
            found.truncate(MAX_DCS);
        }

        results.extend(self.probe_dcs(found, deadline).await);
        results
    }

    /// Probes every DC, bounded in concurrency, each probe before `deadline`.
    async fn probe_dcs(&self, dcs: Vec<Dc>, deadline: Instant) -> Vec<TargetResult> {
        let limit = Arc::new(Semaphore::new(MAX_CONCURRENT_PROBES));
        let mut tasks = JoinSet::new();
        let mut planned = Vec::new();
        for dc in dcs {
            let probes = self.plan_probes(&dc);
            let dc = Arc::new(dc);
            // Resolving once per DC, shared by its probes.
            let address = Arc::new(tokio::sync::OnceCell::new());
            for probe in probes {
                let index = planned.len();
                planned.push(self.target_of(&dc, &probe));
                let (check, dc, address, limit) = (
                    self.clone(),
                    Arc::clone(&dc),
                    Arc::clone(&address),
                    Arc::clone(&limit),
                );
                tasks.spawn(async move {
                    let Ok(_permit) = limit.acquire_owned().await else {
                        return (index, None);
                    };
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    if remaining.is_zero() {
                        return (index, None);
                    }
                    let result = tokio::time::timeout(
                        remaining,
                        check.run_probe(&dc, &probe, &address, remaining),
                    )
                    .await
                    .ok();
                    (index, result)
                });
            }
        }
        let mut results: Vec<Option<TargetResult>> = vec![None; planned.len()];
        while let Some(joined) = tasks.join_next().await {
            if let Ok((index, Some(result))) = joined {
                results[index] = Some(result);
            }
        }
        results
            .into_iter()
            .zip(planned)
            .map(|(result, target)| {
                result.unwrap_or_else(|| TargetResult {
                    outcome: Outcome::Fail {
                        reason: format!("`{target}` did not answer before the check's deadline"),
                    },
                    target,
                    measurements: Vec::new(),
                })
            })
            .collect()
    }

    /// The probes a DC gets from what DNS listed it for.
    fn plan_probes(&self, dc: &Dc) -> Vec<DcProbe> {
        let mut probes = Vec::new();
        if let Some(port) = dc.ldap_port {
            probes.extend([
                DcProbe::Ldap { port },
                DcProbe::StartTls { port },
                DcProbe::Ldaps,
            ]);
            if self.inner.bind.is_some() {
                probes.push(DcProbe::Bind);
            }
        }
        if let Some(port) = dc.gc_port {
            probes.extend([DcProbe::Gc { port }, DcProbe::GcTls]);
        }
        if let Some(port) = dc.kdc_port {
            probes.extend([
                DcProbe::Kerberos {
                    port,
                    transport: KdcTransport::Udp,
                },
                DcProbe::Kerberos {
                    port,
                    transport: KdcTransport::Tcp,
                },
            ]);
        }
        probes
    }

    /// `dc1.corp.example.com:636/ldaps`.
    fn target_of(&self, dc: &Dc, probe: &DcProbe) -> String {
        let (port, label) = match probe {
            DcProbe::Ldap { port } => (*port, "ldap"),
            DcProbe::StartTls { port } => (*port, "starttls"),
            DcProbe::Ldaps => (self.inner.ldaps_port, "ldaps"),
            DcProbe::Gc { port } => (*port, "gc"),
            DcProbe::GcTls => (self.inner.gc_tls_port, "gc-tls"),
            DcProbe::Kerberos {
                port,
                transport: KdcTransport::Udp,
            } => (*port, "kerberos-udp"),
            DcProbe::Kerberos {
                port,
                transport: KdcTransport::Tcp,
            } => (*port, "kerberos-tcp"),
            DcProbe::Bind => (self.inner.ldaps_port, "bind"),
        };
        format!("{}:{port}/{label}", dc.host)
    }

    async fn run_probe(
        &self,
        dc: &Dc,
        probe: &DcProbe,
        address: &tokio::sync::OnceCell<Result<Option<IpAddr>, String>>,
        timeout: Duration,
    ) -> TargetResult {
        let target = self.target_of(dc, probe);
        let address = address
            .get_or_init(|| resolve(&self.inner.servers, &dc.host, timeout / 2))
            .await
            .clone();
        let address = match address {
            Ok(address) => address,
            Err(reason) => {
                return TargetResult {
                    target,
                    outcome: Outcome::Fail { reason },
                    measurements: Vec::new(),
                };
            }
        };
        let settings = &self.inner;
        let plan = |root_dse, max_skew, require_gc_ready, bind: bool| ProbePlan {
            tls_verify: settings.tls_verify,
            ca_file: settings.ca_file.clone(),
            cert_min_days: settings.cert_min_days,
            root_dse,
            max_skew,
            require_gc_ready,
            bind: settings.bind.clone().filter(|_| bind),
            search: settings.search.clone().filter(|_| bind),
        };
        let endpoint = |port, security| Endpoint {
            host: dc.host.clone(),
            port,
            security,
            address,
        };
        let (endpoint, plan) = match probe {
            DcProbe::Ldap { port } => (
                endpoint(*port, Security::Plain),
                plan(RootDse::Report, Some(settings.max_skew), false, false),
            ),
            DcProbe::StartTls { port } => (
                endpoint(*port, Security::StartTls),
                plan(RootDse::Read, None, false, false),
            ),
            DcProbe::Ldaps => (
                endpoint(settings.ldaps_port, Security::Ldaps),
                plan(RootDse::Read, None, false, false),
            ),
            DcProbe::Gc { port } => (
                endpoint(*port, Security::Plain),
                plan(RootDse::Read, None, true, false),
            ),
            DcProbe::GcTls => (
                endpoint(settings.gc_tls_port, Security::Ldaps),
                plan(RootDse::Read, None, true, false),
            ),
            DcProbe::Bind => (
                endpoint(settings.ldaps_port, Security::Ldaps),
                plan(RootDse::Skip, None, false, true),
            ),
            DcProbe::Kerberos { port, transport } => {
                let host = address.map_or_else(|| dc.host.clone(), |ip| ip.to_string());
                let mut result =
                    kerberos::probe_kdc(&host, *port, &settings.realm, *transport, timeout).await;
                if let Outcome::Fail { reason } = &mut result.outcome
                    && address.is_some()
                {
                    *reason = format!("`{target}`: {reason}");
                }
                result.target = target;
                return result;
            }
        };
        let mut result = ldap::probe_endpoint(&endpoint, &plan, timeout).await;
        result.target = target;
        result
    }
}

/// The address to connect to: `None` lets the system resolve the name (no `servers`), else the
/// first A or AAAA record the configured servers give.
async fn resolve(
    servers: &[SocketAddr],
    host: &str,
    timeout: Duration,
) -> Result<Option<IpAddr>, String> {
    if servers.is_empty() {
        return Ok(None);
    }
    if let Ok(address) = IpAddr::from_str(host) {
        return Ok(Some(address));
    }
    let name = Name::from_str(&format!("{host}."))
        .map_err(|error| format!("DC name `{host}` is not a DNS name: {error}"))?;
    let mut problems = Vec::new();
    for record_type in [RecordType::A, RecordType::AAAA] {
        let question = Query::query(name.clone(), record_type);
        for server in servers {
            match dns::exchange(*server, &question, dns::Transport::Udp, timeout).await {
                Ok(reply) => {
                    let address =
                        reply
                            .message
                            .answers
                            .iter()
                            .find_map(|record| match &record.data {
                                RData::A(a) => Some(IpAddr::V4(a.0)),
                                RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
                                _ => None,
                            });
                    if let Some(address) = address {
                        return Ok(Some(address));
                    }
                    break;
                }
                Err(problem) => problems.push(problem),
            }
        }
    }
    if problems.is_empty() {
        Err(format!("DC `{host}` has no A or AAAA record"))
    } else {
        Err(format!(
            "cannot resolve DC `{host}`: {}",
            problems.join("; ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::CheckConfig;
    use crate::checks::ldap::test_server::{BIND_DN, Directory, PASSWORD, Running, TestPki, VALID};
    use crate::checks::test_support::parse_entry;
    use hickory_proto::op::{Message, OpCode, ResponseCode};
    use hickory_proto::rr::Record;
    use hickory_proto::rr::rdata::{A, SRV};
    use std::collections::BTreeMap;
    use std::io::Write;
    use std::net::Ipv4Addr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, UdpSocket};

    fn config(toml_text: &str) -> Result<AdCheck, String> {
        let CheckConfig::Ad(config) = parse_entry("ad", toml_text)? else {
            unreachable!("a ad entry parses as a ad config")
        };
        config.validate()
    }

    #[test]
    fn defaults_follow_the_domain_and_kerberos() {
        let check = config("domain = \"Corp.Example.com.\"").unwrap();
        let settings = &check.inner;
        assert_eq!(settings.domain, "corp.example.com");
        assert_eq!(settings.forest, "corp.example.com");
        assert_eq!(settings.realm, "CORP.EXAMPLE.COM");
        assert_eq!(settings.max_skew, Duration::from_secs(300));
        assert_eq!(settings.cert_min_days, 14);
        assert_eq!((settings.ldaps_port, settings.gc_tls_port), (636, 3269));
        assert!(settings.servers.is_empty() && settings.tls_verify);
        assert_eq!(check.target(), "_ldap._tcp.dc._msdcs.corp.example.com");
    }

    #[test]
    fn validation_errors_name_the_field_and_value() {
        let cases = [
            ("", "missing field `domain`"),
            ("domain = \"\"", "`domain` is empty"),
            (
                "domain = \"corp example\"",
                "domain `corp example` is not a DNS name",
            ),
            (
                "domain = \"corp.test\"\nforest = \"a..b\"",
                "forest `a..b` is not a DNS name",
            ),
            (
                "domain = \"corp.test\"\nservers = [\"dc1\"]",
                "server `dc1` is not an IP address or `ip:port` (IPv6: `[addr]:port`)",
            ),
            (
                "domain = \"corp.test\"\nservers = [\"10.0.0.1\", \"10.0.0.1:53\"]",
                "server `10.0.0.1:53` is listed twice in `servers`",
            ),
            (
                "domain = \"corp.test\"\nmax_skew = \"0s\"",
                "`max_skew` `0s` would fail every DC",
            ),
            (
                "domain = \"corp.test\"\nldaps_port = 0",
                "`ldaps_port` `0` is not a port to connect to",
            ),
            (
                "domain = \"corp.test\"\nbind_dn = \"svc@corp.test\"",
                "bind_dn `svc@corp.test` needs `password_file` or `password_env`",
            ),
            (
                "domain = \"corp.test\"\nsearch_base = \"DC=corp,DC=test\"",
                "`search_base` needs `bind_dn`: AD does not let anonymous clients search",
            ),
            (
                "domain = \"corp.test\"\nrealm = \"CORP.TEST\"",
                "unknown field `realm`, expected one of `domain`, `forest`, `servers`, \
                 `max_skew`, `cert_min_days`, `tls_verify`, `ca_file`, `ldaps_port`, \
                 `gc_tls_port`, `bind_dn`, `password_file`, `password_env`, `search_base`, \
                 `search_filter`, `search_scope`, `min_results`",
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

    /// The Windows domain example in `deploy/` parses and validates, every check in it.
    #[test]
    fn the_windows_domain_example_validates() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/agent.windows-domain.example.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let file = crate::config::ConfigFile::parse(&text, &path).unwrap();
        let config = file.validate(Some(&path)).unwrap();
        let kinds: std::collections::BTreeSet<_> =
            config.checks.iter().map(|c| c.check.kind()).collect();
        for kind in ["ad", "dns", "kerberos", "ldap"] {
            assert!(
                kinds.contains(kind),
                "no `{kind}` check in {}",
                path.display()
            );
        }
    }

    /// A minimal authoritative DNS server over UDP: answers from a fixed table, NXDOMAIN for
    /// names it does not know.
    struct FakeDns {
        address: SocketAddr,
        _task: tokio::task::JoinHandle<()>,
    }

    impl Drop for FakeDns {
        fn drop(&mut self) {
            self._task.abort();
        }
    }

    async fn fake_dns(records: Vec<Record>) -> FakeDns {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let address = socket.local_addr().unwrap();
        let mut table: BTreeMap<(Name, RecordType), Vec<Record>> = BTreeMap::new();
        for record in records {
            table
                .entry((record.name.clone(), record.record_type()))
                .or_default()
                .push(record);
        }
        let task = tokio::spawn(async move {
            let mut buffer = vec![0u8; 4096];
            loop {
                let Ok((length, peer)) = socket.recv_from(&mut buffer).await else {
                    return;
                };
                let Ok(request) = Message::from_vec(&buffer[..length]) else {
                    continue;
                };
                let mut reply = Message::response(request.metadata.id, OpCode::Query);
                reply.metadata.authoritative = true;
                for query in &request.queries {
                    reply.add_query(query.clone());
                    let known = table.keys().any(|(name, _)| name == &query.name);
                    match table.get(&(query.name.clone(), query.query_type)) {
                        Some(answers) => {
                            reply.add_answers(answers.iter().cloned());
                        }
                        None if !known => reply.metadata.response_code = ResponseCode::NXDomain,
                        None => {}
                    }
                }
                let _ = socket.send_to(&reply.to_vec().unwrap(), peer).await;
            }
        });
        FakeDns {
            address,
            _task: task,
        }
    }

    fn name(text: &str) -> Name {
        Name::from_str(&format!("{text}.")).unwrap()
    }

    fn srv(service: &str, host: &str, port: u16) -> Record {
        Record::from_rdata(
            name(service),
            600,
            RData::SRV(SRV::new(0, 100, port, name(host))),
        )
    }

    fn a(host: &str, address: Ipv4Addr) -> Record {
        Record::from_rdata(name(host), 600, RData::A(A(address)))
    }

    /// A KDC on one port number over UDP and TCP, answering every request with
    /// KDC_ERR_PREAUTH_REQUIRED for `realm`, as a healthy AD DC does.
    struct FakeKdc {
        port: u16,
        _tasks: JoinSet<()>,
    }

    async fn fake_kdc(realm: &str) -> FakeKdc {
        let (listener, udp) = loop {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            if let Ok(udp) = UdpSocket::bind(("127.0.0.1", port)).await {
                break (listener, udp);
            }
        };
        let port = listener.local_addr().unwrap().port();
        let reply = krb_error(realm, 25);
        let mut tasks = JoinSet::new();
        let udp_reply = reply.clone();
        tasks.spawn(async move {
            let mut buffer = vec![0u8; 4096];
            while let Ok((_, peer)) = udp.recv_from(&mut buffer).await {
                let _ = udp.send_to(&udp_reply, peer).await;
            }
        });
        tasks.spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let reply = reply.clone();
                tokio::spawn(async move {
                    let Ok(length) = stream.read_u32().await else {
                        return;
                    };
                    let mut request = vec![0u8; length.min(65_536) as usize];
                    if stream.read_exact(&mut request).await.is_err() {
                        return;
                    }
                    let _ = stream.write_u32(reply.len() as u32).await;
                    let _ = stream.write_all(&reply).await;
                });
            }
        });
        FakeKdc {
            port,
            _tasks: tasks,
        }
    }

    /// DER of a KRB-ERROR (RFC 4120 §5.9.1) with the mandatory fields.
    fn krb_error(realm: &str, code: i64) -> Vec<u8> {
        fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
            let mut out = vec![tag];
            let length = content.len();
            if length < 128 {
                out.push(length as u8);
            } else {
                let bytes: Vec<u8> = length
                    .to_be_bytes()
                    .into_iter()
                    .skip_while(|b| *b == 0)
                    .collect();
                out.push(0x80 | bytes.len() as u8);
                out.extend(bytes);
            }
            out.extend_from_slice(content);
            out
        }
        fn integer(value: i64) -> Vec<u8> {
            let bytes = value.to_be_bytes();
            let mut start = 0;
            while start < 7
                && ((bytes[start] == 0 && bytes[start + 1] < 0x80)
                    || (bytes[start] == 0xff && bytes[start + 1] >= 0x80))
            {
                start += 1;
            }
            tlv(0x02, &bytes[start..])
        }
        let explicit = |n: u8, inner: Vec<u8>| tlv(0xa0 | n, &inner);
        let sequence = |items: Vec<Vec<u8>>| tlv(0x30, &items.concat());
        let string = |text: &str| tlv(0x1b, text.as_bytes());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let time = ldap::test_server::generalized_time(now);
        let time = format!("{}Z", &time[..14]);
        let body = sequence(vec![
            explicit(0, integer(5)),
            explicit(1, integer(30)),
            explicit(4, tlv(0x18, time.as_bytes())),
            explicit(5, integer(0)),
            explicit(6, integer(code)),
            explicit(9, string(realm)),
            explicit(
                10,
                sequence(vec![
                    explicit(0, integer(2)),
                    explicit(1, sequence(vec![string("krbtgt"), string(realm)])),
                ]),
            ),
        ]);
        tlv(0x7e, &body)
    }

    /// One healthy DC (LDAP with StartTLS, LDAPS, GC on the same servers, KDC) and, in DNS only,
    /// a second DC at an address where nothing listens.
    struct Domain {
        _dns: FakeDns,
        _ldap: Running,
        _ldaps: Running,
        _kdc: FakeKdc,
        _ca: tempfile::NamedTempFile,
        _password: tempfile::NamedTempFile,
        config: String,
        ldap_port: u16,
        ldaps_port: u16,
        kdc_port: u16,
    }

    async fn domain(clock_offset: i64) -> Domain {
        let pki = TestPki::new();
        let tls = pki.server(&["dc1.corp.test"], VALID, false);
        let ldap = Directory {
            starttls: Some(Arc::clone(&tls)),
            clock_offset,
            ..Directory::default()
        }
        .start()
        .await;
        let ldaps = Directory {
            ldaps: Some(tls),
            clock_offset,
            ..Directory::default()
        }
        .start()
        .await;
        let kdc = fake_kdc("CORP.TEST").await;
        let ldap_port = ldap.address.port();
        let records = vec![
            srv("_ldap._tcp.dc._msdcs.corp.test", "dc1.corp.test", ldap_port),
            srv("_ldap._tcp.dc._msdcs.corp.test", "dc2.corp.test", ldap_port),
            srv("_kerberos._tcp.corp.test", "dc1.corp.test", kdc.port),
            srv("_gc._tcp.corp.test", "dc1.corp.test", ldap_port),
            srv(
                "_ldap._tcp.pdc._msdcs.corp.test",
                "dc1.corp.test",
                ldap_port,
            ),
            a("dc1.corp.test", Ipv4Addr::LOCALHOST),
            // Loopback, but nothing is bound there: a DC in DNS that does not answer.
            a("dc2.corp.test", Ipv4Addr::new(127, 0, 0, 2)),
        ];
        let dns = fake_dns(records).await;
        let mut ca = tempfile::NamedTempFile::new().unwrap();
        ca.write_all(pki.ca_pem.as_bytes()).unwrap();
        let mut password = tempfile::NamedTempFile::new().unwrap();
        writeln!(password, "{PASSWORD}").unwrap();
        let config = format!(
            r#"domain = "corp.test"
servers = ["{}"]
ca_file = "{}"
ldaps_port = {}
gc_tls_port = {}
bind_dn = "{BIND_DN}"
password_file = "{}"
search_base = "OU=Servers,DC=corp,DC=test"
min_results = 3"#,
            dns.address,
            ca.path().display(),
            ldaps.address.port(),
            ldaps.address.port(),
            password.path().display(),
        );
        Domain {
            ldaps_port: ldaps.address.port(),
            kdc_port: kdc.port,
            _dns: dns,
            _ldap: ldap,
            _ldaps: ldaps,
            _kdc: kdc,
            _ca: ca,
            _password: password,
            config,
            ldap_port,
        }
    }

    fn summary(results: &[TargetResult]) -> Vec<(String, String)> {
        results
            .iter()
            .map(|r| {
                let outcome = match &r.outcome {
                    Outcome::Pass => "pass".to_owned(),
                    Outcome::Fail { reason } => format!("fail: {reason}"),
                    Outcome::Skipped { reason } => format!("skipped: {reason}"),
                };
                (r.target.clone(), outcome)
            })
            .collect()
    }

    #[tokio::test]
    async fn discovers_the_dcs_and_reports_every_probe_of_each() {
        let domain = domain(0).await;
        let check = config(&domain.config).unwrap();
        let results = check.probe(Duration::from_secs(4)).await;
        let text = format!("{results:?}");
        assert!(!text.contains(PASSWORD), "the password leaked: {text}");
        let summary = summary(&results);
        let (l, s, k) = (domain.ldap_port, domain.ldaps_port, domain.kdc_port);
        let passing = [
            "_ldap._tcp.dc._msdcs.corp.test".to_owned(),
            "_kerberos._tcp.corp.test".to_owned(),
            "_gc._tcp.corp.test".to_owned(),
            "_ldap._tcp.pdc._msdcs.corp.test".to_owned(),
            format!("dc1.corp.test:{l}/ldap"),
            format!("dc1.corp.test:{l}/starttls"),
            format!("dc1.corp.test:{s}/ldaps"),
            format!("dc1.corp.test:{s}/bind"),
            format!("dc1.corp.test:{l}/gc"),
            format!("dc1.corp.test:{s}/gc-tls"),
            format!("dc1.corp.test:{k}/kerberos-udp"),
            format!("dc1.corp.test:{k}/kerberos-tcp"),
        ];
        let failing = [
            format!("dc2.corp.test:{l}/ldap"),
            format!("dc2.corp.test:{l}/starttls"),
            format!("dc2.corp.test:{s}/ldaps"),
            format!("dc2.corp.test:{s}/bind"),
        ];
        let targets: Vec<_> = summary.iter().map(|(t, _)| t.clone()).collect();
        let expected: Vec<_> = passing.iter().chain(&failing).cloned().collect();
        assert_eq!(targets, expected, "{summary:#?}");
        for (target, outcome) in &summary {
            if passing.contains(target) {
                assert_eq!(outcome, "pass", "{target}");
            } else {
                // The reason names the DC and the address that refused.
                assert!(
                    outcome.starts_with("fail: connection to `127.0.0.2:")
                        && outcome.contains("(dc2.corp.test:"),
                    "{target}: {outcome}"
                );
            }
        }
        let find = |target: &str| results.iter().find(|r| r.target == target).unwrap();
        let names = |target: &str| -> Vec<String> {
            find(target)
                .measurements
                .iter()
                .map(|m| m.name.clone())
                .collect()
        };
        assert!(
            names(&format!("dc1.corp.test:{l}/ldap"))
                .contains(&"current_time_skew_seconds".to_owned())
        );
        assert!(names(&format!("dc1.corp.test:{s}/ldaps")).contains(&"cert_days_left".to_owned()));
        assert!(names(&format!("dc1.corp.test:{s}/bind")).contains(&"search_results".to_owned()));
        assert!(
            names(&format!("dc1.corp.test:{k}/kerberos-udp"))
                .contains(&"krb_error_code".to_owned())
        );
        assert_eq!(
            names("_ldap._tcp.dc._msdcs.corp.test"),
            ["latency_seconds", "records"]
        );
    }

    #[tokio::test]
    async fn a_dc_clock_beyond_max_skew_fails_its_ldap_probe() {
        let domain = domain(-900).await;
        let check = config(&domain.config).unwrap();
        let results = check.probe(Duration::from_secs(4)).await;
        let target = format!("dc1.corp.test:{}/ldap", domain.ldap_port);
        let ldap = results.iter().find(|r| r.target == target).unwrap();
        let Outcome::Fail { reason } = &ldap.outcome else {
            panic!("expected a failure: {ldap:?}");
        };
        assert!(reason.contains("clock skew `-90"), "{reason}");
        assert!(reason.ends_with("exceeds `max_skew` `5m`"), "{reason}");
    }

    #[tokio::test]
    async fn a_domain_without_dcs_in_dns_fails_discovery() {
        let dns = fake_dns(vec![a("dc1.corp.test", Ipv4Addr::LOCALHOST)]).await;
        let check = config(&format!(
            "domain = \"corp.test\"\nservers = [\"{}\"]",
            dns.address
        ))
        .unwrap();
        let results = check.probe(Duration::from_secs(2)).await;
        let summary = summary(&results);
        assert_eq!(summary.len(), 4, "{summary:#?}");
        assert_eq!(summary[0].0, "_ldap._tcp.dc._msdcs.corp.test");
        assert!(
            summary[0]
                .1
                .starts_with("fail: `_ldap._tcp.dc._msdcs.corp.test.` does not exist"),
            "{summary:#?}"
        );
    }
}
