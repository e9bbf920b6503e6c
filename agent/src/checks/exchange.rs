//! The `exchange` check: a Microsoft Exchange organisation as its clients see it, without
//! credentials: the Autodiscover chain Outlook walks, the health pages of every protocol on a
//! server, SMTP with STARTTLS, and the certificate of every HTTPS endpoint on the way.
//!
//! ```toml
//! [[checks]]
//! name = "exchange-contoso"
//! kind = "exchange"
//! domain = "contoso.com"
//! server = "mail.contoso.com"              # default: the host that answered Autodiscover
//! servers = ["10.0.0.10"]                  # DNS servers for the SRV step; default: the system's
//! smtp_hosts = ["mail.contoso.com"]        # default: [server] when server is set, else none
//! smtp_port = 25                           # the default
//! tls_verify = true                        # false: report certificates, trust them anyway
//! ca_file = "/etc/estate/corp-ca.pem"      # default: the system's roots
//! cert_min_days = 14                       # the default
//! https_port = 443                         # the default, for the https steps and `server`
//! http_port = 80                           # the default, for the redirect step
//! resolve = { "mail.contoso.com" = "10.0.0.20" }   # connect here instead of resolving the name
//! ```
//!
//! # Results (targets)
//!
//! - `autodiscover/stepN <url>`, one per Autodiscover step tried, in order, stopping at the
//!   first that answers: 1 `https://<domain>/autodiscover/autodiscover.xml`,
//!   2 `https://autodiscover.<domain>/autodiscover/autodiscover.xml`, 3 the redirect variant
//!   `http://autodiscover.<domain>/autodiscover/autodiscover.xml`, 4 the SRV record
//!   `_autodiscover._tcp.<domain>` (its first target `host:port` becomes
//!   `https://host:port/autodiscover/autodiscover.xml`).
//!
//!   **The rule** (no credentials): an https step answers like Autodiscover when a `POST` of a
//!   minimal Autodiscover request gets `401` with a `WWW-Authenticate` header, or `200`, `403`
//!   or `405`, over a certificate that passes the TLS policy. The http step answers when a `GET`
//!   gets a redirect (`301`, `302`, `303`, `307`, `308`) whose `Location` is an https URL; the
//!   redirect is reported (`redirect` text), not followed.
//! - `autodiscover`: which step answered (`answered_step` 1 to 4, text the URL); fails naming
//!   every URL tried when none did.
//! - `https://<server>/<vdir>/healthcheck.htm` for `owa`, `ecp`, `ews`, `mapi`, `rpc`, `oab`,
//!   `Microsoft-Server-ActiveSync` and `autodiscover`: passes on `200` with a body containing
//!   `200 OK`, as Exchange's managed availability answers a healthy protocol.
//! - `<smtp_host>:<smtp_port>`, one per SMTP host: the `smtp` kind's probe with STARTTLS
//!   required (see [`probe_smtp`](super::smtp::probe_smtp)).
//!
//! Every HTTPS result carries `http_status`, `latency_seconds` and the certificate measurements
//! (`cert_not_after_unix`, `cert_days_left`, `chain_length`, `tls_version`); a certificate that
//! is untrusted, for another name, expired or expiring within `cert_min_days` fails its
//! endpoint with the reason.
//!
//! `resolve` pins names to addresses (a split-horizon DNS, a server behind a balancer, or the
//! tests' 127.0.0.1); a pinned name is still the TLS server name. Other names are resolved by
//! the system; `servers` is used for the SRV lookup only.
//!
//! # Time
//!
//! Everything happens within nine tenths of the timeout. The Autodiscover steps run one after
//! the other, each with a quarter of that; SMTP, and the health pages when `server` is set, run
//! beside them, at most [`MAX_CONCURRENT_PROBES`] at a time, each with its own deadline.

use super::certificate::{self, TlsPolicy};
use super::smtp::{self, SmtpOptions};
use super::{Outcome, TargetResult, dns, measurement, validate_dns_name};
use estate_proto::v1::Measurement;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body as _, Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HOST, LOCATION, USER_AGENT, WWW_AUTHENTICATE};
use hyper::{Method, Request};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use url::Url;

/// The kind's name in `kind = "exchange"`.
pub const KIND: &str = "exchange";

/// At most this many probes (health pages and SMTP hosts together) run at the same time.
pub const MAX_CONCURRENT_PROBES: usize = 16;

/// At most this many bytes of a body are read; a health page is a few bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The virtual directories whose `healthcheck.htm` is requested, in the order reported.
pub const PROTOCOLS: &[&str] = &[
    "owa",
    "ecp",
    "ews",
    "mapi",
    "rpc",
    "oab",
    "Microsoft-Server-ActiveSync",
    "autodiscover",
];

/// What a healthy protocol's `healthcheck.htm` body contains.
pub const HEALTHY_BODY: &str = "200 OK";

/// A redirect to a longer URL fails its step: the health pages' targets are made from it, and
/// the collector refuses a report whose targets are longer than 1024 bytes.
pub const MAX_REDIRECT_URL_BYTES: usize = 900;

/// The path of the Autodiscover endpoint on every host.
const AUTODISCOVER_PATH: &str = "/autodiscover/autodiscover.xml";

/// The `exchange` check's own fields.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExchangeCheckConfig {
    /// The mail domain (`contoso.com`): the Autodiscover chain starts from it.
    pub domain: String,
    /// The Exchange server (or its load-balanced name) whose health pages are requested.
    /// Default: the host that answered Autodiscover.
    pub server: Option<String>,
    /// DNS servers for the SRV step, `ip` or `ip:port`. Default: the system's.
    #[serde(default)]
    pub servers: Vec<String>,
    /// SMTP hosts probed on `smtp_port` with STARTTLS required. Default: `[server]` when
    /// `server` is set, else none.
    pub smtp_hosts: Option<Vec<String>>,
    /// The SMTP port.
    #[serde(default = "default_smtp_port")]
    pub smtp_port: u16,
    /// Enforce the certificate chain and name; `false` still reports and checks the dates.
    #[serde(default = "certificate::default_tls_verify")]
    pub tls_verify: bool,
    /// PEM file of the CA certificates to trust instead of the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Fail an endpoint whose certificate expires in fewer days than this.
    #[serde(default = "certificate::default_cert_min_days")]
    pub cert_min_days: u32,
    /// The port of the https Autodiscover steps 1 and 2 and of `server`'s health pages.
    #[serde(default = "default_https_port")]
    pub https_port: u16,
    /// The port of the http redirect step 3.
    #[serde(default = "default_http_port")]
    pub http_port: u16,
    /// Names connected to at a fixed address instead of resolving them (they remain the TLS
    /// server name and the `Host` header).
    #[serde(default)]
    pub resolve: BTreeMap<String, IpAddr>,
}

/// SMTP between servers.
pub fn default_smtp_port() -> u16 {
    smtp::SMTP_PORT
}

/// HTTPS.
pub fn default_https_port() -> u16 {
    443
}

/// HTTP.
pub fn default_http_port() -> u16 {
    80
}

impl ExchangeCheckConfig {
    /// Checks the names, servers and ports. Pure: the CA file is read when the probe runs.
    pub fn validate(&self) -> Result<ExchangeCheck, String> {
        let domain = validate_dns_name("domain", &self.domain)?;
        let server = match &self.server {
            Some(server) => Some(validate_dns_name("server", server)?),
            None => None,
        };
        let mut servers = Vec::with_capacity(self.servers.len());
        for text in &self.servers {
            let address = dns::parse_server_address(text)?;
            if servers.contains(&address) {
                return Err(format!("server `{text}` is listed twice in `servers`"));
            }
            servers.push(address);
        }
        let smtp_hosts = match (&self.smtp_hosts, &server) {
            (Some(hosts), _) => {
                let mut names = Vec::with_capacity(hosts.len());
                for host in hosts {
                    let name = validate_dns_name("smtp_hosts", host)?;
                    if names.contains(&name) {
                        return Err(format!(
                            "smtp host `{host}` is listed twice in `smtp_hosts`"
                        ));
                    }
                    names.push(name);
                }
                names
            }
            (None, Some(server)) => vec![server.clone()],
            (None, None) => Vec::new(),
        };
        for (field, port) in [
            ("smtp_port", self.smtp_port),
            ("https_port", self.https_port),
            ("http_port", self.http_port),
        ] {
            if port == 0 {
                return Err(format!("{field} `0` is not a port"));
            }
        }
        let mut resolve = BTreeMap::new();
        for (name, address) in &self.resolve {
            resolve.insert(validate_dns_name("resolve", name)?, *address);
        }
        Ok(ExchangeCheck {
            inner: Arc::new(ExchangeSettings {
                domain,
                server,
                servers,
                smtp_hosts,
                smtp_port: self.smtp_port,
                https_port: self.https_port,
                http_port: self.http_port,
                resolve,
                policy: TlsPolicy {
                    verify: self.tls_verify,
                    ca_file: self.ca_file.clone(),
                    cert_min_days: self.cert_min_days,
                    ..TlsPolicy::default()
                },
            }),
        })
    }
}

/// A ready `exchange` check (cheap to clone: its probes share the settings).
#[derive(Debug, Clone)]
pub struct ExchangeCheck {
    inner: Arc<ExchangeSettings>,
}

#[derive(Debug)]
struct ExchangeSettings {
    domain: String,
    server: Option<String>,
    servers: Vec<SocketAddr>,
    smtp_hosts: Vec<String>,
    smtp_port: u16,
    https_port: u16,
    http_port: u16,
    resolve: BTreeMap<String, IpAddr>,
    policy: TlsPolicy,
}

/// What one HTTP request got, or why it got nothing; the certificate either way.
#[derive(Default)]
struct Answer {
    status: Option<u16>,
    www_authenticate: bool,
    location: Option<String>,
    body: Vec<u8>,
    latency: Duration,
    certificate: Vec<Measurement>,
    /// Why no response came (connection, TLS, timeout), without the target.
    error: Option<String>,
}

impl Answer {
    fn measurements(&self) -> Vec<Measurement> {
        let mut measurements = Vec::new();
        if let Some(status) = self.status {
            measurements.push(measurement("http_status", f64::from(status)));
        }
        measurements.push(measurement("latency_seconds", self.latency.as_secs_f64()));
        measurements.extend(self.certificate.iter().cloned());
        measurements
    }
}

/// A task that is aborted when its owner goes away: the connection of one request.
struct ConnectionTask(tokio::task::JoinHandle<()>);

impl Drop for ConnectionTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The minimal Autodiscover (POX) request Outlook sends; the address is never looked up by
/// a server that asks for credentials first.
fn autodiscover_request(domain: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\
         <Autodiscover xmlns=\"http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006\">\
         <Request><EMailAddress>estate-probe@{domain}</EMailAddress>\
         <AcceptableResponseSchema>http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a</AcceptableResponseSchema>\
         </Request></Autodiscover>"
    )
}

/// Whole milliseconds, for reasons.
fn whole(duration: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(Duration::from_millis(
        duration.as_millis().try_into().unwrap_or(u64::MAX),
    ))
}

impl ExchangeCheck {
    /// The mail domain.
    pub fn target(&self) -> String {
        self.inner.domain.clone()
    }

    /// Runs the Autodiscover chain, the health pages and SMTP within nine tenths of `timeout`.
    pub async fn probe(&self, timeout: Duration) -> Vec<TargetResult> {
        let budget = timeout.mul_f64(0.9);
        let deadline = Instant::now() + budget;
        let limit = Arc::new(Semaphore::new(MAX_CONCURRENT_PROBES));
        let settings = &self.inner;
        let smtp = self.smtp_all(&limit, deadline);
        let (chain, health, smtp) = match &settings.server {
            Some(server) => {
                let base = base_url(server, settings.https_port);
                let health = self.health_all(base, &limit, deadline);
                tokio::join!(self.autodiscover(budget / 4), health, smtp)
            }
            None => {
                let (chain, smtp) = tokio::join!(self.autodiscover(budget / 4), smtp);
                let health = match chain.answered.clone() {
                    Some(base) => self.health_all(Some(base), &limit, deadline).await,
                    None => vec![TargetResult {
                        target: "healthcheck".to_owned(),
                        outcome: Outcome::Skipped {
                            reason: format!(
                                "`{}`: no health page to request: `server` is not set and no \
                                 autodiscover step answered",
                                settings.domain
                            ),
                        },
                        measurements: Vec::new(),
                    }],
                };
                (chain, health, smtp)
            }
        };
        let mut results = chain.results;
        results.extend(health);
        results.extend(smtp);
        results
    }

    /// Walks the Autodiscover steps in order, each within `step_budget`, until one answers.
    async fn autodiscover(&self, step_budget: Duration) -> Chain {
        let settings = &self.inner;
        let domain = &settings.domain;
        let mut results = Vec::new();
        let mut tried = Vec::new();
        let https = |host: &str, port: u16| -> Option<Url> {
            let mut url = base_url(host, port)?;
            url.set_path(AUTODISCOVER_PATH);
            Some(url)
        };
        let steps = [
            https(domain, settings.https_port),
            https(&format!("autodiscover.{domain}"), settings.https_port),
            Url::parse(&format!("http://autodiscover.{domain}{AUTODISCOVER_PATH}"))
                .ok()
                .and_then(|mut url| url.set_port(Some(settings.http_port)).ok().map(|()| url)),
        ];
        for (index, url) in steps.into_iter().enumerate() {
            let step = index + 1;
            let Some(url) = url else {
                continue;
            };
            tried.push(url.to_string());
            let (result, answered) = self.autodiscover_step(step, &url, step_budget).await;
            results.push(result);
            if let Some(base) = answered {
                return Chain::answered(results, step, &url, base);
            }
        }
        // Step 4: the SRV record.
        let srv_name = format!("_autodiscover._tcp.{domain}");
        let started = Instant::now();
        let found = dns::lookup_srv(&settings.servers, &srv_name, step_budget / 2).await;
        let remaining = step_budget.saturating_sub(started.elapsed());
        match found.map(|targets| targets.into_iter().next()) {
            Ok(Some(target)) => {
                let url = https(&target.host, target.port);
                match url {
                    Some(url) => {
                        tried.push(url.to_string());
                        let (result, answered) = self.autodiscover_step(4, &url, remaining).await;
                        results.push(result);
                        if let Some(base) = answered {
                            return Chain::answered(results, 4, &url, base);
                        }
                    }
                    None => {
                        tried.push(srv_name.clone());
                        results.push(fail(
                            format!("autodiscover/step4 {srv_name}"),
                            format!(
                                "`{srv_name}`: target `{}:{}` is not a host name",
                                target.host, target.port
                            ),
                            Vec::new(),
                        ));
                    }
                }
            }
            Ok(None) => {
                tried.push(srv_name.clone());
                results.push(fail(
                    format!("autodiscover/step4 {srv_name}"),
                    format!("`{srv_name}`: no SRV record"),
                    Vec::new(),
                ));
            }
            Err(reason) => {
                tried.push(srv_name.clone());
                results.push(fail(
                    format!("autodiscover/step4 {srv_name}"),
                    format!("`{srv_name}`: {reason}"),
                    Vec::new(),
                ));
            }
        }
        let list = tried
            .iter()
            .map(|url| format!("`{url}`"))
            .collect::<Vec<_>>()
            .join(", ");
        results.push(fail(
            "autodiscover".to_owned(),
            format!("`{domain}`: no autodiscover step answered; tried {list}"),
            Vec::new(),
        ));
        Chain {
            results,
            answered: None,
        }
    }

    /// One step: its result, and when it answered the base URL (`https://host:port/`) of the
    /// server that answered.
    async fn autodiscover_step(
        &self,
        step: usize,
        url: &Url,
        budget: Duration,
    ) -> (TargetResult, Option<Url>) {
        let deadline = Instant::now() + budget;
        let (method, body) = autodiscover_method(url, &self.inner.domain);
        let answer = self.request(method, url, body, deadline).await;
        judge_autodiscover(step, url, &answer)
    }

    /// One health page: `200` and a body with `200 OK`.
    async fn health(&self, url: &Url, deadline: Instant) -> TargetResult {
        let answer = self.request(Method::GET, url, None, deadline).await;
        judge_health(url, &answer)
    }
    /// Every protocol's health page on `base`, concurrently.
    async fn health_all(
        &self,
        base: Option<Url>,
        limit: &Arc<Semaphore>,
        deadline: Instant,
    ) -> Vec<TargetResult> {
        let Some(base) = base else {
            let reason = format!(
                "`{}`: cannot make an https URL of the server",
                self.inner.server.as_deref().unwrap_or_default()
            );
            return vec![fail("healthcheck".to_owned(), reason, Vec::new())];
        };
        let mut tasks = JoinSet::new();
        for (index, protocol) in PROTOCOLS.iter().enumerate() {
            let mut url = base.clone();
            url.set_path(&format!("/{protocol}/healthcheck.htm"));
            let check = self.clone();
            let limit = Arc::clone(limit);
            tasks.spawn(async move {
                let _permit = limit.acquire_owned().await;
                (index, check.health(&url, deadline).await)
            });
        }
        collect(tasks, PROTOCOLS.len()).await
    }

    /// Every SMTP host, concurrently.
    async fn smtp_all(&self, limit: &Arc<Semaphore>, deadline: Instant) -> Vec<TargetResult> {
        let mut tasks = JoinSet::new();
        for (index, host) in self.inner.smtp_hosts.iter().enumerate() {
            let host = host.clone();
            let settings = Arc::clone(&self.inner);
            let limit = Arc::clone(limit);
            tasks.spawn(async move {
                let _permit = limit.acquire_owned().await;
                let options = SmtpOptions {
                    tls: settings.policy.clone(),
                    address: settings.resolve.get(&host).copied(),
                    ..SmtpOptions::default()
                };
                let remaining = deadline.saturating_duration_since(Instant::now());
                let result = smtp::probe_smtp(&host, settings.smtp_port, &options, remaining).await;
                (index, result)
            });
        }
        collect(tasks, self.inner.smtp_hosts.len()).await
    }

    /// One HTTP/1.1 request on its own connection (TLS for https), before `deadline`; the
    /// body is read up to [`MAX_BODY_BYTES`]. Never fails: what went wrong is in the answer.
    async fn request(
        &self,
        method: Method,
        url: &Url,
        body: Option<String>,
        deadline: Instant,
    ) -> Answer {
        let started = std::time::Instant::now();
        let mut answer = Answer::default();
        let budget = deadline.saturating_duration_since(Instant::now());
        let outcome = tokio::time::timeout_at(
            deadline,
            self.exchange(method, url, body, deadline, &mut answer),
        )
        .await;
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => answer.error = Some(reason),
            Err(_elapsed) => {
                answer.error = Some(format!("no complete answer within {}", whole(budget)));
            }
        }
        answer.latency = started.elapsed();
        answer
    }

    async fn exchange(
        &self,
        method: Method,
        url: &Url,
        body: Option<String>,
        deadline: Instant,
        answer: &mut Answer,
    ) -> Result<(), String> {
        let (request, host) = build_request(method, url, body)?;
        let port = url.port_or_known_default().ok_or("the URL has no port")?;
        let stream = match self.inner.resolve.get(&host) {
            Some(address) => TcpStream::connect((*address, port))
                .await
                .map_err(|error| format!("connection to `{address}:{port}` failed: {error}"))?,
            None => super::tls::connect(&host, port).await?,
        };
        if url.scheme() == "https" {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match certificate::handshake(stream, &host, &self.inner.policy, remaining).await {
                Ok((stream, report)) => {
                    answer.certificate = report.measurements();
                    send(stream, request, answer).await
                }
                Err(failure) => {
                    answer.certificate = failure.measurements();
                    Err(failure.reason)
                }
            }
        } else {
            send(stream, request, answer).await
        }
    }
}

/// The request of an Autodiscover step: a `POST` of the Autodiscover request for `domain` to
/// an https URL, a `GET` of an http one (which must redirect).
fn autodiscover_method(url: &Url, domain: &str) -> (Method, Option<String>) {
    if url.scheme() == "https" {
        (Method::POST, Some(autodiscover_request(domain)))
    } else {
        (Method::GET, None)
    }
}

/// Judges the answer to Autodiscover step `step` at `url`: its result, and when it answered
/// the base URL (`https://host:port/`) of the server that answered.
fn judge_autodiscover(step: usize, url: &Url, answer: &Answer) -> (TargetResult, Option<Url>) {
    let target = format!("autodiscover/step{step} {url}");
    let https = url.scheme() == "https";
    let mut measurements = answer.measurements();
    if let Some(error) = &answer.error {
        let reason = format!("`{url}`: {error}");
        return (fail(target, reason, measurements), None);
    }
    let status = answer.status.unwrap_or(0);
    if https {
        let answers =
            (status == 401 && answer.www_authenticate) || matches!(status, 200 | 403 | 405);
        if answers {
            return (pass(target, measurements), Some(base_of(url)));
        }
        let reason = format!(
            "`{url}`: status `{status}` to an autodiscover POST, expected 401 with \
             WWW-Authenticate, 200, 403 or 405"
        );
        return (fail(target, reason, measurements), None);
    }
    let redirect = answer
        .location
        .as_deref()
        .and_then(|location| url.join(location.trim()).ok());
    match redirect {
        Some(next)
            if matches!(status, 301 | 302 | 303 | 307 | 308)
                && next.as_str().len() > MAX_REDIRECT_URL_BYTES =>
        {
            let reason = format!(
                "`{url}`: redirects to a URL of {} bytes, longer than {MAX_REDIRECT_URL_BYTES}",
                next.as_str().len()
            );
            (fail(target, reason, measurements), None)
        }
        Some(next) if matches!(status, 301 | 302 | 303 | 307 | 308) => {
            measurements.push(Measurement {
                name: "redirect".to_owned(),
                value: f64::from(status),
                text: next.to_string(),
            });
            if next.scheme() == "https" {
                (pass(target, measurements), Some(base_of(&next)))
            } else {
                let reason = format!("`{url}`: redirects to `{next}`, which is not https");
                (fail(target, reason, measurements), None)
            }
        }
        _ => {
            let reason = format!("`{url}`: status `{status}`, expected a redirect to https");
            (fail(target, reason, measurements), None)
        }
    }
}

/// Judges the answer for a health page: `200` and a body with `200 OK`.
fn judge_health(url: &Url, answer: &Answer) -> TargetResult {
    let target = url.to_string();
    let measurements = answer.measurements();
    if let Some(error) = &answer.error {
        return fail(target, format!("`{url}`: {error}"), measurements);
    }
    let status = answer.status.unwrap_or(0);
    if status != 200 {
        let reason = format!("`{url}`: status `{status}`, expected 200");
        return fail(target, reason, measurements);
    }
    if !String::from_utf8_lossy(&answer.body).contains(HEALTHY_BODY) {
        let reason = format!("`{url}`: body does not contain `{HEALTHY_BODY}`");
        return fail(target, reason, measurements);
    }
    pass(target, measurements)
}

/// What the `exchange` kind reports for Autodiscover step `step` at `url` when `stream` is
/// an open connection to the server (no TLS is spoken on it, whatever `url`'s scheme): the
/// request it sends, hyper reading the response, and the same judgement. The fuzz target
/// `exchange_http` drives it with arbitrary responses.
pub async fn autodiscover_step_over<S>(
    stream: S,
    step: usize,
    url: &Url,
    domain: &str,
) -> (TargetResult, Option<Url>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (method, body) = autodiscover_method(url, domain);
    let answer = answer_over(stream, method, url, body).await;
    judge_autodiscover(step, url, &answer)
}

/// [`autodiscover_step_over`] for a health page (`https://server/owa/healthcheck.htm`).
pub async fn health_over<S>(stream: S, url: &Url) -> TargetResult
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let answer = answer_over(stream, Method::GET, url, None).await;
    judge_health(url, &answer)
}

/// One request over `stream` and what came back, without a deadline of its own.
async fn answer_over<S>(stream: S, method: Method, url: &Url, body: Option<String>) -> Answer
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let started = std::time::Instant::now();
    let mut answer = Answer::default();
    let sent = match build_request(method, url, body) {
        Ok((request, _host)) => send(stream, request, &mut answer).await,
        Err(reason) => Err(reason),
    };
    if let Err(reason) = sent {
        answer.error = Some(reason);
    }
    answer.latency = started.elapsed();
    answer
}

/// The HTTP/1.1 request for `url` and the host to connect to (brackets of an IPv6 address
/// removed).
fn build_request(
    method: Method,
    url: &Url,
    body: Option<String>,
) -> Result<(Request<Full<Bytes>>, String), String> {
    let host = url.host_str().ok_or("the URL has no host")?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let host_header = match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.clone(),
    };
    let mut request = Request::builder()
        .method(method)
        .uri(&url[url::Position::BeforePath..url::Position::AfterQuery])
        .header(HOST, host_header)
        .header(
            USER_AGENT,
            concat!("estate-agent/", env!("CARGO_PKG_VERSION")),
        );
    if body.is_some() {
        request = request.header(CONTENT_TYPE, "text/xml; charset=utf-8");
    }
    let request = request
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|error| format!("cannot build the request: {error}"))?;
    Ok((request, host))
}

/// Sends `request` over `stream` and records the response in `answer`.
async fn send<S>(
    stream: S,
    request: Request<Full<Bytes>>,
    answer: &mut Answer,
) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, connection) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(io)
        .await
        .map_err(|error| describe(&error))?;
    let _connection = ConnectionTask(tokio::spawn(async move {
        let _ = connection.await;
    }));
    let response = sender
        .send_request(request)
        .await
        .map_err(|error| describe(&error))?;
    answer.status = Some(response.status().as_u16());
    answer.www_authenticate = response.headers().contains_key(WWW_AUTHENTICATE);
    answer.location = response
        .headers()
        .get(LOCATION)
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
    let mut body: Incoming = response.into_body();
    while answer.body.len() < MAX_BODY_BYTES && !body.is_end_stream() {
        let Some(frame) = body.frame().await else {
            break;
        };
        let frame = frame.map_err(|error| describe(&error))?;
        if let Ok(data) = frame.into_data() {
            let room = MAX_BODY_BYTES - answer.body.len();
            answer.body.extend_from_slice(&data[..data.len().min(room)]);
        }
    }
    Ok(())
}

/// A hyper error with its causes.
fn describe(error: &hyper::Error) -> String {
    use std::error::Error as _;
    if error.is_incomplete_message() {
        return "the server closed the connection before a complete response".to_owned();
    }
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// `https://host:port/`, the port left out when it is 443.
fn base_url(host: &str, port: u16) -> Option<Url> {
    let mut url = Url::parse(&format!("https://{host}/")).ok()?;
    url.set_port(Some(port)).ok()?;
    Some(url)
}

/// `scheme://host:port/` of `url`.
fn base_of(url: &Url) -> Url {
    let mut base = url.clone();
    base.set_path("/");
    base.set_query(None);
    base.set_fragment(None);
    base
}

/// The Autodiscover results and the base URL of the server that answered, if any.
struct Chain {
    results: Vec<TargetResult>,
    answered: Option<Url>,
}

impl Chain {
    fn answered(mut results: Vec<TargetResult>, step: usize, url: &Url, base: Url) -> Chain {
        results.push(pass(
            "autodiscover".to_owned(),
            vec![Measurement {
                name: "answered_step".to_owned(),
                value: step as f64,
                text: url.to_string(),
            }],
        ));
        Chain {
            results,
            answered: Some(base),
        }
    }
}

/// The results of `tasks` in the order of their indexes; a task that panicked is a failure.
async fn collect(mut tasks: JoinSet<(usize, TargetResult)>, count: usize) -> Vec<TargetResult> {
    let mut slots: Vec<Option<TargetResult>> = vec![None; count];
    while let Some(joined) = tasks.join_next().await {
        if let Ok((index, result)) = joined
            && let Some(slot) = slots.get_mut(index)
        {
            *slot = Some(result);
        }
    }
    slots
        .into_iter()
        .map(|slot| {
            slot.unwrap_or_else(|| {
                fail(
                    "exchange".to_owned(),
                    "a probe ended without a result".to_owned(),
                    Vec::new(),
                )
            })
        })
        .collect()
}

fn pass(target: String, measurements: Vec<Measurement>) -> TargetResult {
    TargetResult {
        target,
        outcome: Outcome::Pass,
        measurements,
    }
}

fn fail(target: String, reason: String, measurements: Vec<Measurement>) -> TargetResult {
    TargetResult {
        target,
        outcome: Outcome::Fail { reason },
        measurements,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::CheckConfig;
    use crate::checks::certificate::test_pki::{TestPki, VALID, Validity};
    use crate::checks::smtp::test_server::{Responder, TlsOffer};
    use crate::checks::test_support::{documented_example, parse_entry};
    use crate::checks::tls::test_server::{Running, ServerStream, start};
    use hickory_proto::op::{Message, OpCode, ResponseCode};
    use hickory_proto::rr::rdata::SRV;
    use hickory_proto::rr::{Name, RData, Record};
    use std::io::Write;
    use std::str::FromStr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, UdpSocket};

    const NAMES: &[&str] = &[
        "contoso.test",
        "autodiscover.contoso.test",
        "mail.contoso.test",
    ];

    fn config(toml_text: &str) -> Result<ExchangeCheck, String> {
        let CheckConfig::Exchange(config) = parse_entry("exchange", toml_text)? else {
            unreachable!("a exchange entry parses as a exchange config")
        };
        config.validate()
    }

    #[test]
    fn the_documented_example_validates() {
        let example = documented_example(include_str!("exchange.rs"));
        let check = config(&example).unwrap();
        assert_eq!(check.target(), "contoso.com");
        assert_eq!(check.inner.smtp_hosts, ["mail.contoso.com"]);
        assert_eq!(check.inner.resolve.len(), 1);
    }

    #[test]
    fn smtp_hosts_default_to_the_server_and_errors_name_the_value() {
        let check = config("domain = \"contoso.com\"\nserver = \"Mail.Contoso.com\"").unwrap();
        assert_eq!(check.inner.smtp_hosts, ["mail.contoso.com"]);
        let check = config("domain = \"contoso.com\"").unwrap();
        assert!(check.inner.smtp_hosts.is_empty());
        let cases = [
            (
                "domain = \"bad name\"",
                "domain `bad name` is not a DNS name",
            ),
            (
                "domain = \"c.com\"\nhttps_port = 0",
                "https_port `0` is not a port",
            ),
            (
                "domain = \"c.com\"\nsmtp_hosts = [\"a\", \"A\"]",
                "smtp host `A` is listed twice in `smtp_hosts`",
            ),
            (
                "domain = \"c.com\"\nresolve = { \"a\" = \"nope\" }",
                "invalid IP address syntax",
            ),
        ];
        for (toml_text, expected) in cases {
            let error = config(toml_text).unwrap_err();
            assert!(error.contains(expected), "{toml_text}: {error}");
        }
        let error = config("domain = \"c.com\"\nrealm = \"x\"").unwrap_err();
        assert!(error.starts_with("unknown field `realm`"), "{error}");
    }

    /// The exchange example in `deploy/` parses and validates, every check in it.
    #[test]
    fn the_exchange_example_validates() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/agent.exchange.example.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let file = crate::config::ConfigFile::parse(&text, &path).unwrap();
        let config = file.validate(Some(&path)).unwrap();
        let kinds: std::collections::BTreeSet<_> =
            config.checks.iter().map(|c| c.check.kind()).collect();
        for kind in ["exchange", "smtp", "tls", "http"] {
            assert!(
                kinds.contains(kind),
                "no `{kind}` check in {}",
                path.display()
            );
        }
    }

    /// An Exchange front end over HTTPS: Autodiscover asks for credentials; health pages say
    /// `200 OK` except `ecp` (503) and `ews` (404).
    async fn exchange_server(tls: Arc<rustls::ServerConfig>) -> Running {
        start(Some(tls), |stream| serve_http(stream, false)).await
    }

    async fn serve_http(mut stream: Box<dyn ServerStream>, redirect: bool) {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                return;
            }
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let length: usize = head
            .lines()
            .find_map(|line| {
                line.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap_or(0))
            })
            .unwrap_or(0);
        let mut body = vec![0u8; length];
        let _ = stream.read_exact(&mut body).await;
        let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
        let (status, extra, text) = if redirect {
            (
                "302 Found",
                "Location: https://mail.contoso.test/autodiscover/autodiscover.xml\r\n",
                "",
            )
        } else if path == "/autodiscover/autodiscover.xml" && head.starts_with("POST") {
            ("401 Unauthorized", "WWW-Authenticate: Negotiate\r\n", "")
        } else if path == "/ecp/healthcheck.htm" {
            ("503 Service Unavailable", "", "")
        } else if path == "/ews/healthcheck.htm" {
            ("404 Not Found", "", "not here")
        } else if path.ends_with("/healthcheck.htm") {
            ("200 OK", "", "200 OK<br/>mail.contoso.test")
        } else {
            ("404 Not Found", "", "")
        };
        let response = format!(
            "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{text}",
            text.len()
        );
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    }

    /// A port nothing listens on.
    async fn closed_port() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().port()
    }

    /// A DNS server over UDP answering `_autodiscover._tcp.contoso.test` with `srv` (or
    /// NXDOMAIN for every name when `None`).
    async fn fake_dns(srv: Option<(&str, u16)>) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let address = socket.local_addr().unwrap();
        let record = srv.map(|(host, port)| {
            Record::from_rdata(
                Name::from_str("_autodiscover._tcp.contoso.test.").unwrap(),
                600,
                RData::SRV(SRV::new(
                    0,
                    100,
                    port,
                    Name::from_str(&format!("{host}.")).unwrap(),
                )),
            )
        });
        let task = tokio::spawn(async move {
            let mut buffer = vec![0u8; 4096];
            while let Ok((length, peer)) = socket.recv_from(&mut buffer).await {
                let Ok(request) = Message::from_vec(&buffer[..length]) else {
                    continue;
                };
                let mut reply = Message::response(request.metadata.id, OpCode::Query);
                reply.metadata.authoritative = true;
                for query in &request.queries {
                    reply.add_query(query.clone());
                    match &record {
                        Some(record) if record.name == query.name => {
                            reply.add_answer(record.clone());
                        }
                        _ => reply.metadata.response_code = ResponseCode::NXDomain,
                    }
                }
                let _ = socket.send_to(&reply.to_vec().unwrap(), peer).await;
            }
        });
        (address, task)
    }

    fn ca_file(pki: &TestPki) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(pki.ca_pem.as_bytes()).unwrap();
        file
    }

    fn resolve_all() -> String {
        "resolve = { \"contoso.test\" = \"127.0.0.1\", \"autodiscover.contoso.test\" = \
         \"127.0.0.1\", \"mail.contoso.test\" = \"127.0.0.1\" }"
            .to_owned()
    }

    fn outcome<'a>(results: &'a [TargetResult], target: &str) -> &'a TargetResult {
        results
            .iter()
            .find(|r| r.target == target)
            .unwrap_or_else(|| panic!("no result `{target}` in {results:#?}"))
    }

    fn value(result: &TargetResult, name: &str) -> Option<f64> {
        result
            .measurements
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.value)
    }

    fn reason(result: &TargetResult) -> &str {
        match &result.outcome {
            Outcome::Fail { reason } | Outcome::Skipped { reason } => reason,
            Outcome::Pass => "",
        }
    }

    #[tokio::test]
    async fn the_first_step_answers_and_each_protocol_and_smtp_host_is_reported() {
        let pki = TestPki::new();
        let ca = ca_file(&pki);
        let server = exchange_server(pki.server(NAMES, VALID, false)).await;
        let smtp = Responder {
            tls: TlsOffer::StartTls(pki.server(NAMES, VALID, false)),
            ..Responder::default()
        }
        .start()
        .await;
        let port = server.address.port();
        let check = config(&format!(
            "domain = \"contoso.test\"\nserver = \"mail.contoso.test\"\nhttps_port = {port}\n\
             http_port = {}\nsmtp_port = {}\nca_file = \"{}\"\n{}",
            closed_port().await,
            smtp.address.port(),
            ca.path().display(),
            resolve_all()
        ))
        .unwrap();
        let results = check.probe(Duration::from_secs(10)).await;
        let step1 =
            format!("autodiscover/step1 https://contoso.test:{port}/autodiscover/autodiscover.xml");
        assert_eq!(outcome(&results, &step1).outcome, Outcome::Pass);
        assert!(value(outcome(&results, &step1), "cert_days_left").unwrap() > 300.0);
        assert!(
            !results
                .iter()
                .any(|r| r.target.starts_with("autodiscover/step2"))
        );
        let summary = outcome(&results, "autodiscover");
        assert_eq!(summary.outcome, Outcome::Pass);
        assert_eq!(summary.measurements[0].name, "answered_step");
        assert_eq!(summary.measurements[0].value, 1.0);
        let owa = outcome(
            &results,
            &format!("https://mail.contoso.test:{port}/owa/healthcheck.htm"),
        );
        assert_eq!(owa.outcome, Outcome::Pass, "{owa:?}");
        assert_eq!(value(owa, "http_status"), Some(200.0));
        assert!(value(owa, "latency_seconds").is_some());
        assert!(value(owa, "cert_not_after_unix").is_some());
        let ecp_url = format!("https://mail.contoso.test:{port}/ecp/healthcheck.htm");
        let ecp = outcome(&results, &ecp_url);
        assert_eq!(
            reason(ecp),
            format!("`{ecp_url}`: status `503`, expected 200")
        );
        let ews_url = format!("https://mail.contoso.test:{port}/ews/healthcheck.htm");
        assert_eq!(
            reason(outcome(&results, &ews_url)),
            format!("`{ews_url}`: status `404`, expected 200")
        );
        let sync =
            format!("https://mail.contoso.test:{port}/Microsoft-Server-ActiveSync/healthcheck.htm");
        assert_eq!(outcome(&results, &sync).outcome, Outcome::Pass);
        let smtp_target = format!("mail.contoso.test:{}", smtp.address.port());
        let smtp_result = outcome(&results, &smtp_target);
        assert_eq!(smtp_result.outcome, Outcome::Pass, "{smtp_result:?}");
        // 2 autodiscover results, 8 health pages, 1 SMTP host.
        assert_eq!(results.len(), 11, "{results:#?}");
    }

    #[tokio::test]
    async fn only_the_srv_step_answers_and_its_server_is_probed() {
        let pki = TestPki::new();
        let ca = ca_file(&pki);
        let server = exchange_server(pki.server(NAMES, VALID, false)).await;
        let port = server.address.port();
        let (dns, _dns) = fake_dns(Some(("mail.contoso.test", port))).await;
        let closed = closed_port().await;
        let check = config(&format!(
            "domain = \"contoso.test\"\nservers = [\"{dns}\"]\nhttps_port = {closed}\n\
             http_port = {closed}\nca_file = \"{}\"\n{}",
            ca.path().display(),
            resolve_all()
        ))
        .unwrap();
        let results = check.probe(Duration::from_secs(10)).await;
        for step in 1..=3 {
            let result = results
                .iter()
                .find(|r| r.target.starts_with(&format!("autodiscover/step{step} ")))
                .unwrap();
            assert!(
                reason(result).contains("connection to `127.0.0.1:"),
                "{result:?}"
            );
        }
        let step4 = format!(
            "autodiscover/step4 https://mail.contoso.test:{port}/autodiscover/autodiscover.xml"
        );
        assert_eq!(outcome(&results, &step4).outcome, Outcome::Pass);
        let summary = outcome(&results, "autodiscover");
        assert_eq!(summary.measurements[0].value, 4.0);
        let owa = outcome(
            &results,
            &format!("https://mail.contoso.test:{port}/owa/healthcheck.htm"),
        );
        assert_eq!(owa.outcome, Outcome::Pass, "{owa:?}");
        assert!(!results.iter().any(|r| r.target.contains(":25")));
    }

    #[tokio::test]
    async fn when_nothing_answers_the_summary_names_every_url_tried() {
        let (dns, _dns) = fake_dns(None).await;
        let closed = closed_port().await;
        let check = config(&format!(
            "domain = \"contoso.test\"\nservers = [\"{dns}\"]\nhttps_port = {closed}\n\
             http_port = {closed}\n{}",
            resolve_all()
        ))
        .unwrap();
        let results = check.probe(Duration::from_secs(5)).await;
        let summary = outcome(&results, "autodiscover");
        assert_eq!(
            reason(summary),
            format!(
                "`contoso.test`: no autodiscover step answered; tried \
                 `https://contoso.test:{closed}/autodiscover/autodiscover.xml`, \
                 `https://autodiscover.contoso.test:{closed}/autodiscover/autodiscover.xml`, \
                 `http://autodiscover.contoso.test:{closed}/autodiscover/autodiscover.xml`, \
                 `_autodiscover._tcp.contoso.test`"
            )
        );
        let step4 = outcome(
            &results,
            "autodiscover/step4 _autodiscover._tcp.contoso.test",
        );
        assert!(
            reason(step4).starts_with("`_autodiscover._tcp.contoso.test`: "),
            "{step4:?}"
        );
        let skipped = outcome(&results, "healthcheck");
        assert!(matches!(skipped.outcome, Outcome::Skipped { .. }));
    }

    #[test]
    fn a_redirect_to_an_overlong_url_fails_without_an_overlong_result() {
        // Found while writing the `exchange_http` fuzz target's oracle (its seed
        // `redirect-overlong`): a 10 kB `Location` became the `redirect` measurement and the
        // reason, and the collector would refuse the whole report.
        let url =
            Url::parse("http://autodiscover.contoso.test/autodiscover/autodiscover.xml").unwrap();
        let location = format!("https://mail.contoso.test/{}", "a".repeat(10_000));
        let answer = Answer {
            status: Some(302),
            location: Some(location),
            ..Answer::default()
        };
        let (result, answered) = judge_autodiscover(3, &url, &answer);
        assert_eq!(answered, None);
        let Outcome::Fail { reason } = &result.outcome else {
            panic!("expected a failure, got {result:?}");
        };
        assert!(
            reason.ends_with("redirects to a URL of 10026 bytes, longer than 900"),
            "{reason}"
        );
        assert!(result.measurements.iter().all(|m| m.text.len() <= 1024));
    }

    #[tokio::test]
    async fn an_http_redirect_to_https_answers_the_third_step() {
        let redirect = start(None, |stream| serve_http(stream, true)).await;
        let closed = closed_port().await;
        let check = config(&format!(
            "domain = \"contoso.test\"\nhttps_port = {closed}\nhttp_port = {}\n{}",
            redirect.address.port(),
            resolve_all()
        ))
        .unwrap();
        let results = check.probe(Duration::from_secs(5)).await;
        let summary = outcome(&results, "autodiscover");
        assert_eq!(summary.measurements[0].value, 3.0, "{results:#?}");
        let owa = outcome(&results, "https://mail.contoso.test/owa/healthcheck.htm");
        // Nothing of this test answers on 443, where the health page is requested: it fails.
        assert!(
            reason(owa).starts_with("`https://mail.contoso.test/owa/healthcheck.htm`: "),
            "{owa:?}"
        );
    }

    #[tokio::test]
    async fn an_expired_certificate_fails_every_https_endpoint_and_smtp_without_starttls_fails() {
        let pki = TestPki::new();
        let ca = ca_file(&pki);
        let expired = Validity {
            from_days: -30,
            until_days: -1,
        };
        let server = exchange_server(pki.server(NAMES, expired, false)).await;
        let smtp = Responder::default().start().await;
        let port = server.address.port();
        let check = config(&format!(
            "domain = \"contoso.test\"\nserver = \"mail.contoso.test\"\nhttps_port = {port}\n\
             http_port = {}\nsmtp_port = {}\nservers = [\"{}\"]\nca_file = \"{}\"\n{}",
            closed_port().await,
            smtp.address.port(),
            fake_dns(None).await.0,
            ca.path().display(),
            resolve_all()
        ))
        .unwrap();
        let results = check.probe(Duration::from_secs(10)).await;
        let owa_url = format!("https://mail.contoso.test:{port}/owa/healthcheck.htm");
        let owa = outcome(&results, &owa_url);
        assert!(
            reason(owa).starts_with(&format!("`{owa_url}`: ")),
            "{owa:?}"
        );
        assert!(reason(owa).contains("expired"), "{owa:?}");
        assert!(value(owa, "cert_days_left").unwrap() < 0.0);
        let step1 =
            format!("autodiscover/step1 https://contoso.test:{port}/autodiscover/autodiscover.xml");
        assert!(reason(outcome(&results, &step1)).contains("expired"));
        let smtp_result = outcome(
            &results,
            &format!("mail.contoso.test:{}", smtp.address.port()),
        );
        assert!(reason(smtp_result).contains("STARTTLS"), "{smtp_result:?}");
    }
}
