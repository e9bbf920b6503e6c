//! The `http` check: does a URL answer with an expected status, within a time, with a body that
//! says what it should, over a certificate that is trusted and not about to expire.
//!
//! ```toml
//! [[checks]]
//! name = "portal"
//! kind = "http"
//! url = "https://portal.example.org/health"   # http:// or https://
//! method = "GET"                             # or "HEAD"
//! expect_status = ["2xx", "3xx"]             # the default; codes (200) or classes ("2xx")
//! follow_redirects = true                    # at most 10, each one reported
//! body_contains = "ok"                       # searched in the first 1 MiB of the body
//! body_regex = "version: \\d+"               # likewise
//! max_latency = "2s"                         # fail when slower (default: the timeout only)
//! headers = { "Accept" = "text/plain" }
//! tls_verify = true                          # https: false only reports the certificate
//! ca_file = "/etc/estate/corp-ca.pem"        # default: the system's trusted roots
//! cert_min_days = 14                         # fail when the certificate expires sooner
//! ```
//!
//! One result, target the URL (as parsed: `https://portal.example.org/health`).
//!
//! # How
//!
//! Each hop is one HTTP/1.1 request on its own connection: TCP, for `https` the TLS handshake
//! of [`certificate::handshake`](super::certificate::handshake), then hyper's client connection
//! over that stream. reqwest was the other candidate, but it does not expose the peer's
//! certificate; a second handshake beside it would measure a different connection (another
//! backend behind a balancer may answer it). Here the certificate reported is the one of the
//! connection that answered the first hop, and a hop to another https host is verified the
//! same way. No proxy is used, no cookies are kept, no body is decompressed; redirects are
//! followed by this module (GET and HEAD keep their method), relative `Location`s included.
//!
//! # Measurements (names are a contract with the collector)
//!
//! `http_status` (of the last response), `latency_seconds` (first connect to the end of the
//! body read), `redirects` (value: hops followed; text: each hop's status and location),
//! `content_length` (the `Content-Length` header, else the bytes read when the whole body was
//! read), and for an https URL `cert_not_after_unix`, `cert_days_left`, `chain_length`,
//! `tls_version` (see [`certificate`](super::certificate)).

use super::certificate::{self, TlsPolicy, TlsVersion};
use super::tls::connect;
use super::{Outcome, TargetResult, measurement};
use estate_proto::v1::Measurement;
use http_body_util::{BodyExt, Empty};
use hyper::body::{Body as _, Bytes, Incoming};
use hyper::header::{HOST, HeaderName, HeaderValue, LOCATION, USER_AGENT};
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use url::Url;

/// The kind's name in `kind = "http"`.
pub const KIND: &str = "http";

/// At most this many redirects are followed; one more fails the check.
pub const MAX_REDIRECTS: usize = 10;
/// At most this much of a body is read and searched.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// The text of the `redirects` measurement is cut to this many characters.
const MAX_HOPS_TEXT_CHARS: usize = 1000;

/// The `http` check's own fields.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpCheckConfig {
    /// `http://` or `https://` URL to request, without credentials.
    pub url: String,
    /// `GET` (the default) or `HEAD`.
    #[serde(default)]
    pub method: HttpMethod,
    /// Statuses that pass: codes (`200`) or classes (`"2xx"`). Default: `2xx` and `3xx`.
    #[serde(default = "default_expect_status")]
    pub expect_status: Vec<StatusPattern>,
    /// Follow up to 10 redirects (3xx with `Location`) and judge the last response.
    #[serde(default = "default_follow_redirects")]
    pub follow_redirects: bool,
    /// Fail unless the first 1 MiB of the body contains this text.
    pub body_contains: Option<String>,
    /// Fail unless the first 1 MiB of the body (as UTF-8, invalid bytes replaced) matches this
    /// regular expression (Rust `regex` syntax).
    pub body_regex: Option<String>,
    /// Fail when the whole exchange takes longer than this. Default: only the check's timeout.
    #[serde(default, deserialize_with = "super::ldap::optional_duration")]
    pub max_latency: Option<Duration>,
    /// Request headers to send, added to `Host` and `User-Agent` (which they may replace).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// https: verify the certificate (chain to a trusted root, name, dates). `false` connects
    /// anyway and only reports the certificate (`cert_min_days` still applies).
    #[serde(default = "certificate::default_tls_verify")]
    pub tls_verify: bool,
    /// https: PEM file of the CA certificates to trust, instead of the system's trusted roots.
    pub ca_file: Option<PathBuf>,
    /// https: fail when the server's certificate expires in fewer days than this.
    #[serde(default = "certificate::default_cert_min_days")]
    pub cert_min_days: u32,
}

/// The request method.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum HttpMethod {
    #[default]
    #[serde(rename = "GET")]
    Get,
    #[serde(rename = "HEAD")]
    Head,
}

impl HttpMethod {
    fn hyper(self) -> Method {
        match self {
            HttpMethod::Get => Method::GET,
            HttpMethod::Head => Method::HEAD,
        }
    }
}

/// One entry of `expect_status`: a code or a class, as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum StatusPattern {
    Code(u16),
    Text(String),
}

/// Any 2xx or 3xx status passes.
pub fn default_expect_status() -> Vec<StatusPattern> {
    vec![
        StatusPattern::Text("2xx".to_owned()),
        StatusPattern::Text("3xx".to_owned()),
    ]
}

/// Redirects are followed unless told otherwise.
pub fn default_follow_redirects() -> bool {
    true
}

/// A validated `expect_status` entry: the statuses from `low` to `high`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StatusRange {
    low: u16,
    high: u16,
}

impl StatusPattern {
    fn validate(&self) -> Result<StatusRange, String> {
        let code = match self {
            StatusPattern::Code(code) => *code,
            StatusPattern::Text(text) => {
                let lower = text.trim().to_ascii_lowercase();
                if let Some(class) = lower.strip_suffix("xx")
                    && let Ok(digit @ 1..=5) = class.parse::<u16>()
                {
                    return Ok(StatusRange {
                        low: digit * 100,
                        high: digit * 100 + 99,
                    });
                }
                lower.parse::<u16>().map_err(|_| {
                    format!(
                        "expect_status `{text}` is neither a status code nor a class like `2xx`"
                    )
                })?
            }
        };
        if !(100..=599).contains(&code) {
            return Err(format!(
                "expect_status `{code}` is not an HTTP status (100 to 599)"
            ));
        }
        Ok(StatusRange {
            low: code,
            high: code,
        })
    }

    fn text(&self) -> String {
        match self {
            StatusPattern::Code(code) => code.to_string(),
            StatusPattern::Text(text) => text.trim().to_owned(),
        }
    }
}

impl HttpCheckConfig {
    /// Checks the URL, the statuses, the regex and the headers. Pure: `ca_file` is read when
    /// the probe runs.
    pub fn validate(&self) -> Result<HttpCheck, String> {
        let url = parse_url(&self.url)?;
        if self.expect_status.is_empty() {
            return Err("`expect_status` is empty, so no response could pass".to_owned());
        }
        let expect_status = self
            .expect_status
            .iter()
            .map(StatusPattern::validate)
            .collect::<Result<Vec<_>, _>>()?;
        let expect_text = self
            .expect_status
            .iter()
            .map(|pattern| format!("`{}`", pattern.text()))
            .collect::<Vec<_>>()
            .join(", ");
        if self.method == HttpMethod::Head
            && (self.body_contains.is_some() || self.body_regex.is_some())
        {
            return Err(
                "`body_contains` and `body_regex` need a body, and `HEAD` has none".to_owned(),
            );
        }
        if self.body_contains.as_deref() == Some("") {
            return Err("`body_contains` is empty".to_owned());
        }
        let body_regex = match &self.body_regex {
            Some(pattern) => Some(
                regex::RegexBuilder::new(pattern)
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|error| {
                        let error = error.to_string().replace('\n', " ");
                        format!("body_regex `{pattern}` is not a valid regex: {error}")
                    })?,
            ),
            None => None,
        };
        if self.max_latency == Some(Duration::ZERO) {
            return Err("max_latency `0s` would fail every run".to_owned());
        }
        let mut headers = Vec::new();
        for (name, value) in &self.headers {
            let name_parsed = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("header name `{name}` is not a valid HTTP header name"))?;
            let value_parsed = HeaderValue::from_str(value)
                .map_err(|_| format!("value of header `{name}` is not a valid header value"))?;
            headers.push((name_parsed, value_parsed));
        }
        Ok(HttpCheck {
            url,
            method: self.method,
            expect_status,
            expect_text,
            follow_redirects: self.follow_redirects,
            body_contains: self.body_contains.clone(),
            body_regex,
            max_latency: self.max_latency,
            headers,
            policy: TlsPolicy {
                verify: self.tls_verify,
                ca_file: self.ca_file.clone(),
                cert_min_days: self.cert_min_days,
                min_version: TlsVersion::Tls12,
            },
        })
    }
}

/// Parses an `http`/`https` URL with a host and no credentials; the fragment is dropped.
fn parse_url(text: &str) -> Result<Url, String> {
    let mut url = Url::parse(text.trim())
        .map_err(|error| format!("url `{text}` is not a valid URL: {error}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("url `{text}` is not http:// or https://"));
    }
    if url.host().is_none() {
        return Err(format!("url `{text}` has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "url `{text}` carries credentials; send an `Authorization` header with `headers` instead"
        ));
    }
    url.set_fragment(None);
    Ok(url)
}

/// A ready `http` check.
#[derive(Debug, Clone)]
pub struct HttpCheck {
    url: Url,
    method: HttpMethod,
    expect_status: Vec<StatusRange>,
    /// `expect_status` as written, for reasons.
    expect_text: String,
    follow_redirects: bool,
    body_contains: Option<String>,
    body_regex: Option<regex::Regex>,
    max_latency: Option<Duration>,
    headers: Vec<(HeaderName, HeaderValue)>,
    policy: TlsPolicy,
}

/// A task that is aborted when its owner goes away: the connection of one hop.
struct ConnectionTask(tokio::task::JoinHandle<()>);

impl Drop for ConnectionTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One probe's state: what was measured so far, so that a failure still reports it.
struct Exchange {
    target: String,
    started: Instant,
    deadline: tokio::time::Instant,
    budget: Duration,
    certificate: Vec<Measurement>,
    hops: Vec<String>,
    status: Option<StatusCode>,
    content_length: Option<u64>,
}

impl Exchange {
    /// Runs one step before the deadline; `what` names it in a timeout reason.
    async fn step<T>(
        &self,
        url: &Url,
        what: &str,
        future: impl Future<Output = T>,
    ) -> Result<T, String> {
        tokio::time::timeout_at(self.deadline, future)
            .await
            .map_err(|_| {
                format!(
                    "{} within {}",
                    hop_reason(url, &self.target, &format!("no {what}")),
                    humantime::format_duration(self.budget)
                )
            })
    }

    fn finish(self, outcome: Outcome) -> Vec<TargetResult> {
        let mut measurements = Vec::new();
        if let Some(status) = self.status {
            measurements.push(measurement("http_status", f64::from(status.as_u16())));
        }
        measurements.push(measurement(
            "latency_seconds",
            self.started.elapsed().as_secs_f64(),
        ));
        let hops_text = self.hops.join(" → ");
        let hops_text = match hops_text.char_indices().nth(MAX_HOPS_TEXT_CHARS) {
            Some((at, _)) => format!("{}…", &hops_text[..at]),
            None => hops_text,
        };
        measurements.push(Measurement {
            name: "redirects".to_owned(),
            value: self.hops.len() as f64,
            text: hops_text,
        });
        if let Some(length) = self.content_length {
            measurements.push(measurement("content_length", length as f64));
        }
        measurements.extend(self.certificate);
        vec![TargetResult {
            target: self.target,
            outcome,
            measurements,
        }]
    }
}

/// `` `target`: what `` for the first hop; `` `target`: at `hop`: what `` after a redirect.
fn hop_reason(url: &Url, target: &str, what: &str) -> String {
    if url.as_str() == target {
        format!("`{target}`: {what}")
    } else {
        format!("`{target}`: at `{url}`: {what}")
    }
}

impl HttpCheck {
    /// The URL, as parsed.
    pub fn target(&self) -> String {
        self.url.to_string()
    }

    /// Requests the URL (and its redirects) within nine tenths of `timeout`, so that a slow step
    /// is named before the runner's own timeout cuts everything short.
    pub async fn probe(&self, timeout: Duration) -> Vec<TargetResult> {
        let budget = timeout.mul_f64(0.9);
        let mut exchange = Exchange {
            target: self.target(),
            started: Instant::now(),
            deadline: tokio::time::Instant::now() + budget,
            budget,
            certificate: Vec::new(),
            hops: Vec::new(),
            status: None,
            content_length: None,
        };
        match self.run(&mut exchange).await {
            Ok(()) => exchange.finish(Outcome::Pass),
            Err(reason) => exchange.finish(Outcome::Fail { reason }),
        }
    }

    async fn run(&self, exchange: &mut Exchange) -> Result<(), String> {
        let mut url = self.url.clone();
        let (response, _connection) = loop {
            let (response, connection) = self.request(exchange, &url).await?;
            let status = response.status();
            exchange.status = Some(status);
            let location = response
                .headers()
                .get(LOCATION)
                .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
            let Some(location) = location.filter(|_| self.follow_redirects) else {
                break (response, connection);
            };
            if !status.is_redirection() {
                break (response, connection);
            }
            let next = url.join(location.trim()).map_err(|error| {
                hop_reason(
                    &url,
                    &exchange.target,
                    &format!("redirect to `{location}` is not a valid URL: {error}"),
                )
            })?;
            if exchange.hops.len() >= MAX_REDIRECTS {
                return Err(format!(
                    "`{}`: more than {MAX_REDIRECTS} redirects (the next to `{next}`)",
                    exchange.target
                ));
            }
            exchange.hops.push(format!("{} `{next}`", status.as_u16()));
            if !matches!(next.scheme(), "http" | "https") {
                return Err(hop_reason(
                    &url,
                    &exchange.target,
                    &format!("redirect to `{next}`, which is not http:// or https://"),
                ));
            }
            url = next;
        };
        let status = response.status();
        let header_length = response
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse::<u64>().ok());
        exchange.content_length = header_length;
        let body = if self.method == HttpMethod::Head {
            None
        } else {
            let body = exchange
                .step(&url, "complete body", read_body(response.into_body()))
                .await?
                .map_err(|error| hop_reason(&url, &exchange.target, &error))?;
            if header_length.is_none() && !body.truncated {
                exchange.content_length = Some(body.bytes.len() as u64);
            }
            Some(body)
        };
        if !self
            .expect_status
            .iter()
            .any(|range| (range.low..=range.high).contains(&status.as_u16()))
        {
            return Err(hop_reason(
                &url,
                &exchange.target,
                &format!("status `{status}`, expected {}", self.expect_text),
            ));
        }
        if let Some(body) = &body {
            let text = String::from_utf8_lossy(&body.bytes);
            let within = if body.truncated {
                " in its first 1 MiB"
            } else {
                ""
            };
            if let Some(needle) = &self.body_contains
                && !text.contains(needle.as_str())
            {
                return Err(hop_reason(
                    &url,
                    &exchange.target,
                    &format!("body does not contain `{needle}`{within}"),
                ));
            }
            if let Some(regex) = &self.body_regex
                && !regex.is_match(&text)
            {
                return Err(hop_reason(
                    &url,
                    &exchange.target,
                    &format!("body does not match `{}`{within}", regex.as_str()),
                ));
            }
        }
        let elapsed = exchange.started.elapsed();
        if let Some(max) = self.max_latency
            && elapsed > max
        {
            return Err(format!(
                "`{}`: answered in {}, more than `max_latency` {}",
                exchange.target,
                humantime::format_duration(Duration::from_millis(elapsed.as_millis() as u64)),
                humantime::format_duration(max)
            ));
        }
        Ok(())
    }

    /// Connects to `url`'s host (with TLS for https) and sends the request; returns the
    /// response head and the task driving its connection.
    async fn request(
        &self,
        exchange: &mut Exchange,
        url: &Url,
    ) -> Result<(Response<Incoming>, ConnectionTask), String> {
        let target = exchange.target.clone();
        let fail = |what: String| hop_reason(url, &target, &what);
        let host = match url.host() {
            Some(url::Host::Domain(name)) => name.to_owned(),
            Some(url::Host::Ipv4(address)) => address.to_string(),
            Some(url::Host::Ipv6(address)) => address.to_string(),
            None => return Err(fail("the URL has no host".to_owned())),
        };
        let port = url
            .port_or_known_default()
            .ok_or_else(|| fail("the URL has no port".to_owned()))?;
        let stream = exchange
            .step(url, "TCP connection", connect(&host, port))
            .await?
            .map_err(fail)?;
        let mut request = Request::builder()
            .method(self.method.hyper())
            .uri(&url[url::Position::BeforePath..url::Position::AfterQuery]);
        let host_header = match url.port() {
            Some(port) => format!("{}:{port}", url.host_str().unwrap_or(&host)),
            None => url.host_str().unwrap_or(&host).to_owned(),
        };
        if let Some(headers) = request.headers_mut() {
            if let Ok(value) = HeaderValue::from_str(&host_header) {
                headers.insert(HOST, value);
            }
            headers.insert(
                USER_AGENT,
                HeaderValue::from_static(concat!("estate-agent/", env!("CARGO_PKG_VERSION"))),
            );
            for (name, value) in &self.headers {
                headers.insert(name.clone(), value.clone());
            }
        }
        let request = request
            .body(Empty::<Bytes>::new())
            .map_err(|error| fail(format!("cannot build the request: {error}")))?;
        if url.scheme() == "https" {
            let remaining = exchange
                .deadline
                .saturating_duration_since(tokio::time::Instant::now());
            let first_https = exchange.certificate.is_empty() && exchange.hops.is_empty();
            let shaken = certificate::handshake(stream, &host, &self.policy, remaining).await;
            match shaken {
                Ok((stream, report)) => {
                    if first_https {
                        exchange.certificate = report.measurements();
                    }
                    exchange.send(url, stream, request).await
                }
                Err(failure) => {
                    if first_https {
                        exchange.certificate = failure.measurements();
                    }
                    Err(fail(failure.reason))
                }
            }
        } else {
            exchange.send(url, stream, request).await
        }
    }
}

impl Exchange {
    /// HTTP/1.1 over `stream`: sends `request` and waits for the response head.
    async fn send<S>(
        &self,
        url: &Url,
        stream: S,
        request: Request<Empty<Bytes>>,
    ) -> Result<(Response<Incoming>, ConnectionTask), String>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let fail = |what: String| hop_reason(url, &self.target, &what);
        let io = hyper_util::rt::TokioIo::new(stream);
        let (mut sender, connection) = self
            .step(
                url,
                "HTTP connection",
                hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(io),
            )
            .await?
            .map_err(|error| fail(describe(&error)))?;
        let connection = ConnectionTask(tokio::spawn(async move {
            let _ = connection.await;
        }));
        let response = self
            .step(url, "response", sender.send_request(request))
            .await?
            .map_err(|error| fail(describe(&error)))?;
        Ok((response, connection))
    }
}

/// The first [`MAX_BODY_BYTES`] of a body, and whether there was more.
#[derive(Debug)]
struct BodyStart {
    bytes: Vec<u8>,
    truncated: bool,
}

/// Reads a body up to [`MAX_BODY_BYTES`]; the rest is never read.
async fn read_body(mut body: Incoming) -> Result<BodyStart, String> {
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|error| {
            format!(
                "the body broke off after {} bytes: {}",
                bytes.len(),
                describe(&error)
            )
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let room = MAX_BODY_BYTES - bytes.len();
        if data.len() > room {
            bytes.extend_from_slice(&data[..room]);
            return Ok(BodyStart {
                bytes,
                truncated: true,
            });
        }
        bytes.extend_from_slice(&data);
        if bytes.len() == MAX_BODY_BYTES && !body.is_end_stream() {
            return Ok(BodyStart {
                bytes,
                truncated: true,
            });
        }
    }
    Ok(BodyStart {
        bytes,
        truncated: false,
    })
}

/// A hyper error in words an administrator acts on.
fn describe(error: &hyper::Error) -> String {
    use std::error::Error as _;
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    if error.is_incomplete_message() {
        "the server closed the connection before a complete response".to_owned()
    } else if error.is_parse_too_large() {
        format!("the response head is too large ({text})")
    } else if error.is_parse() || error.is_parse_status() {
        format!("the answer is not HTTP ({text})")
    } else if error.is_canceled() || error.is_closed() {
        format!("the connection closed ({text})")
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::CheckConfig;
    use crate::checks::certificate::test_pki::{TestPki, VALID, Validity};
    use crate::checks::test_support::{documented_example, parse_entry};
    use crate::checks::tls::test_server::{Running, ServerStream, start};
    use std::io::Write;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn config(toml_text: &str) -> Result<HttpCheck, String> {
        let CheckConfig::Http(config) = parse_entry("http", toml_text)? else {
            unreachable!("a http entry parses as a http config")
        };
        config.validate()
    }

    #[test]
    fn the_documented_example_validates() {
        let example = documented_example(include_str!("http.rs"));
        let check = config(&example).unwrap();
        assert_eq!(check.target(), "https://portal.example.org/health");
        assert_eq!(check.expect_text, "`2xx`, `3xx`");
        assert_eq!(check.headers.len(), 1);
        assert!(check.body_regex.unwrap().is_match("version: 12"));
    }

    #[test]
    fn validation_errors_name_the_field_and_value() {
        let cases = [
            (
                "url = \"ftp://x/\"",
                "url `ftp://x/` is not http:// or https://",
            ),
            ("url = \"http//x\"", "url `http//x` is not a valid URL: "),
            (
                "url = \"http://u:p@x/\"",
                "url `http://u:p@x/` carries credentials",
            ),
            (
                "url = \"http://x/\"\nexpect_status = [\"2x\"]",
                "expect_status `2x` is neither a status code nor a class like `2xx`",
            ),
            (
                "url = \"http://x/\"\nexpect_status = [700]",
                "expect_status `700` is not an HTTP status (100 to 599)",
            ),
            (
                "url = \"http://x/\"\nexpect_status = []",
                "`expect_status` is empty",
            ),
            (
                "url = \"http://x/\"\nmethod = \"HEAD\"\nbody_contains = \"ok\"",
                "`body_contains` and `body_regex` need a body, and `HEAD` has none",
            ),
            (
                "url = \"http://x/\"\nmethod = \"POST\"",
                "unknown variant `POST`, expected `GET` or `HEAD`",
            ),
            (
                "url = \"http://x/\"\nbody_regex = \"(\"",
                "body_regex `(` is not a valid regex: ",
            ),
            (
                "url = \"http://x/\"\nheaders = { \"bad name\" = \"x\" }",
                "header name `bad name` is not a valid HTTP header name",
            ),
            (
                "url = \"http://x/\"\nheaders = { \"X-A\" = \"a\\nb\" }",
                "value of header `X-A` is not a valid header value",
            ),
            (
                "url = \"http://x/\"\nfollow = true",
                "unknown field `follow`",
            ),
        ];
        for (text, expected) in cases {
            let error = config(text).unwrap_err();
            assert!(error.starts_with(expected), "{text}: {error}");
        }
        let check = config("url = \"http://x#frag\"\nexpect_status = [204, \"3XX\"]").unwrap();
        assert_eq!(check.target(), "http://x/");
        assert_eq!(
            check.expect_status,
            [
                StatusRange {
                    low: 204,
                    high: 204
                },
                StatusRange {
                    low: 300,
                    high: 399
                }
            ]
        );
    }

    /// What the test server does with a request, chosen by its path.
    type Route = fn(&str) -> Answer;

    enum Answer {
        /// These bytes, then close.
        Bytes(Vec<u8>),
        /// Wait, then these bytes.
        Slow(Duration, Vec<u8>),
        /// Never answer.
        Silent,
    }

    fn response(status: &str, headers: &str, body: &[u8]) -> Answer {
        let mut bytes = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{headers}\r\n",
            body.len()
        )
        .into_bytes();
        bytes.extend_from_slice(body);
        Answer::Bytes(bytes)
    }

    async fn server(tls: Option<Arc<rustls::ServerConfig>>, route: Route) -> Running {
        start(tls, move |mut stream: Box<dyn ServerStream>| async move {
            let mut head = Vec::new();
            let mut buffer = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buffer).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buffer[..n]),
                }
            }
            let head = String::from_utf8_lossy(&head).into_owned();
            let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
            let bytes = match route(&path) {
                Answer::Bytes(bytes) => bytes,
                Answer::Slow(delay, bytes) => {
                    tokio::time::sleep(delay).await;
                    bytes
                }
                Answer::Silent => {
                    std::future::pending::<()>().await;
                    return;
                }
            };
            let _ = stream.write_all(&bytes).await;
            let _ = stream.shutdown().await;
        })
        .await
    }

    fn routes(path: &str) -> Answer {
        match path {
            "/ok" => response("200 OK", "", b"status: ok, version: 42"),
            "/missing" => response("404 Not Found", "", b"no"),
            "/moved" => response("301 Moved Permanently", "Location: /hop2\r\n", b""),
            "/hop2" => response("302 Found", "Location: hop3?x=1\r\n", b""),
            "/hop3?x=1" => response("307 Temporary Redirect", "Location: /ok\r\n", b""),
            "/loop" => response("302 Found", "Location: /loop\r\n", b""),
            "/huge" => {
                let mut body = vec![b'a'; 5 * MAX_BODY_BYTES];
                body.extend_from_slice(b"needle");
                response("200 OK", "", &body)
            }
            "/chunked" => Answer::Bytes(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                    .to_vec(),
            ),
            "/slow" => Answer::Slow(Duration::from_millis(300), response_bytes("200 OK")),
            "/silent" => Answer::Silent,
            "/garbage" => Answer::Bytes(b"\x00\x01garbage that is not http\r\n\r\n".to_vec()),
            "/cut" => Answer::Bytes(b"HTTP/1.1 200 OK\r\nContent-Ty".to_vec()),
            "/short-body" => {
                Answer::Bytes(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this".to_vec())
            }
            _ => response("500 Internal Server Error", "", b""),
        }
    }

    fn response_bytes(status: &str) -> Vec<u8> {
        match response(status, "", b"late but fine") {
            Answer::Bytes(bytes) => bytes,
            _ => Vec::new(),
        }
    }

    fn url(server: &Running, scheme: &str, path: &str) -> String {
        format!("{scheme}://127.0.0.1:{}{path}", server.address.port())
    }

    async fn probe(toml_text: &str, timeout: Duration) -> TargetResult {
        let results = config(toml_text).unwrap().probe(timeout).await;
        assert_eq!(results.len(), 1);
        results.into_iter().next().unwrap()
    }

    fn reason(result: &TargetResult) -> &str {
        match &result.outcome {
            Outcome::Fail { reason } => reason,
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    fn value(result: &TargetResult, name: &str) -> Option<f64> {
        result
            .measurements
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.value)
    }

    const SECONDS: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn status_expectations() {
        let server = server(None, routes).await;
        let ok = url(&server, "http", "/ok");
        let result = probe(&format!("url = \"{ok}\""), SECONDS).await;
        assert_eq!(result.outcome, Outcome::Pass, "{result:?}");
        assert_eq!(result.target, ok);
        let names: Vec<_> = result
            .measurements
            .iter()
            .map(|m| m.name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "http_status",
                "latency_seconds",
                "redirects",
                "content_length"
            ]
        );
        assert_eq!(value(&result, "http_status"), Some(200.0));
        assert_eq!(value(&result, "content_length"), Some(23.0));

        let missing = url(&server, "http", "/missing");
        let result = probe(&format!("url = \"{missing}\""), SECONDS).await;
        assert_eq!(
            reason(&result),
            format!("`{missing}`: status `404 Not Found`, expected `2xx`, `3xx`")
        );
        assert_eq!(value(&result, "http_status"), Some(404.0));
        let result = probe(
            &format!("url = \"{missing}\"\nexpect_status = [404]"),
            SECONDS,
        )
        .await;
        assert_eq!(result.outcome, Outcome::Pass, "{result:?}");
        let result = probe(
            &format!("url = \"{ok}\"\nexpect_status = [204]\nmethod = \"HEAD\""),
            SECONDS,
        )
        .await;
        assert_eq!(
            reason(&result),
            format!("`{ok}`: status `200 OK`, expected `204`")
        );
        // A chunked body without Content-Length is measured by what was read.
        let chunked = url(&server, "http", "/chunked");
        let result = probe(&format!("url = \"{chunked}\""), SECONDS).await;
        assert_eq!(value(&result, "content_length"), Some(5.0));
    }

    #[tokio::test]
    async fn redirects_are_followed_reported_and_bounded() {
        let server = server(None, routes).await;
        let moved = url(&server, "http", "/moved");
        let result = probe(
            &format!("url = \"{moved}\"\nbody_contains = \"ok\""),
            SECONDS,
        )
        .await;
        assert_eq!(result.outcome, Outcome::Pass, "{result:?}");
        let redirects = result
            .measurements
            .iter()
            .find(|m| m.name == "redirects")
            .unwrap();
        assert_eq!(redirects.value, 3.0);
        let base = url(&server, "http", "");
        assert_eq!(
            redirects.text,
            format!("301 `{base}/hop2` → 302 `{base}/hop3?x=1` → 307 `{base}/ok`")
        );
        // Not followed: the 301 itself is judged.
        let result = probe(
            &format!("url = \"{moved}\"\nfollow_redirects = false\nexpect_status = [\"2xx\"]"),
            SECONDS,
        )
        .await;
        assert_eq!(
            reason(&result),
            format!("`{moved}`: status `301 Moved Permanently`, expected `2xx`")
        );
        // A loop fails once ten redirects have been followed.
        let looping = url(&server, "http", "/loop");
        let result = probe(&format!("url = \"{looping}\""), SECONDS).await;
        assert_eq!(
            reason(&result),
            format!("`{looping}`: more than 10 redirects (the next to `{looping}`)")
        );
        assert_eq!(value(&result, "redirects"), Some(10.0));
    }

    #[tokio::test]
    async fn body_substring_and_regex_within_a_bounded_read() {
        let server = server(None, routes).await;
        let ok = url(&server, "http", "/ok");
        let result = probe(
            &format!("url = \"{ok}\"\nbody_contains = \"ok\"\nbody_regex = 'version: \\d+'"),
            SECONDS,
        )
        .await;
        assert_eq!(result.outcome, Outcome::Pass, "{result:?}");
        let result = probe(
            &format!("url = \"{ok}\"\nbody_contains = \"healthy\""),
            SECONDS,
        )
        .await;
        assert_eq!(
            reason(&result),
            format!("`{ok}`: body does not contain `healthy`")
        );
        let result = probe(&format!("url = \"{ok}\"\nbody_regex = '^version'"), SECONDS).await;
        assert_eq!(
            reason(&result),
            format!("`{ok}`: body does not match `^version`")
        );
        // The needle sits after 5 MiB: only the first 1 MiB is read, so it is not found.
        let huge = url(&server, "http", "/huge");
        let result = probe(
            &format!("url = \"{huge}\"\nbody_contains = \"needle\""),
            SECONDS,
        )
        .await;
        assert_eq!(
            reason(&result),
            format!("`{huge}`: body does not contain `needle` in its first 1 MiB")
        );
        assert_eq!(
            value(&result, "content_length"),
            Some((5 * MAX_BODY_BYTES + 6) as f64)
        );
        let result = probe(
            &format!("url = \"{huge}\"\nbody_contains = \"aaa\""),
            SECONDS,
        )
        .await;
        assert_eq!(result.outcome, Outcome::Pass, "{result:?}");
    }

    #[tokio::test]
    async fn slow_and_silent_servers() {
        let server = server(None, routes).await;
        let slow = url(&server, "http", "/slow");
        let result = probe(
            &format!("url = \"{slow}\"\nmax_latency = \"100ms\""),
            SECONDS,
        )
        .await;
        let reason_text = reason(&result);
        assert!(
            reason_text.starts_with(&format!("`{slow}`: answered in ")),
            "{reason_text}"
        );
        assert!(
            reason_text.ends_with("more than `max_latency` 100ms"),
            "{reason_text}"
        );
        assert!(value(&result, "latency_seconds").unwrap() >= 0.3);
        let silent = url(&server, "http", "/silent");
        let result = probe(&format!("url = \"{silent}\""), Duration::from_millis(400)).await;
        assert_eq!(
            reason(&result),
            format!("`{silent}`: no response within 360ms")
        );
    }

    #[tokio::test]
    async fn broken_servers_fail_with_clear_reasons() {
        let server = server(None, routes).await;
        let garbage = url(&server, "http", "/garbage");
        let result = probe(&format!("url = \"{garbage}\""), SECONDS).await;
        assert!(
            reason(&result).starts_with(&format!("`{garbage}`: the answer is not HTTP (")),
            "{result:?}"
        );
        let cut = url(&server, "http", "/cut");
        let result = probe(&format!("url = \"{cut}\""), SECONDS).await;
        assert_eq!(
            reason(&result),
            format!("`{cut}`: the server closed the connection before a complete response")
        );
        let short = url(&server, "http", "/short-body");
        let result = probe(&format!("url = \"{short}\""), SECONDS).await;
        assert!(
            reason(&result).starts_with(&format!("`{short}`: the body broke off after 9 bytes: ")),
            "{result:?}"
        );
        // Nothing listens.
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let closed = format!("http://127.0.0.1:{port}/");
        let result = probe(&format!("url = \"{closed}\""), SECONDS).await;
        assert!(
            reason(&result).starts_with(&format!(
                "`{closed}`: connection to `127.0.0.1:{port}` failed: "
            )),
            "{result:?}"
        );
        // An HTTPS URL against a plain HTTP server, which waits for a request head that the
        // ClientHello never completes.
        let plain = url(&server, "https", "/ok");
        let result = probe(&format!("url = \"{plain}\""), Duration::from_millis(500)).await;
        assert!(
            reason(&result).starts_with(&format!("`{plain}`: no TLS handshake within ")),
            "{result:?}"
        );
    }

    fn ca_file(pki: &TestPki) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(pki.ca_pem.as_bytes()).unwrap();
        file
    }

    #[tokio::test]
    async fn https_reports_the_certificate_and_judges_it() {
        let pki = TestPki::new();
        let ca = ca_file(&pki);
        let ca_line = format!("ca_file = {:?}", ca.path().display().to_string());
        let valid = server(Some(pki.server(&["127.0.0.1"], VALID, false)), routes).await;
        let ok = url(&valid, "https", "/ok");
        let result = probe(
            &format!("url = \"{ok}\"\n{ca_line}\nbody_contains = \"ok\""),
            SECONDS,
        )
        .await;
        assert_eq!(result.outcome, Outcome::Pass, "{result:?}");
        let names: Vec<_> = result
            .measurements
            .iter()
            .map(|m| m.name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "http_status",
                "latency_seconds",
                "redirects",
                "content_length",
                "cert_not_after_unix",
                "cert_days_left",
                "chain_length",
                "tls_version"
            ]
        );
        let expired = Validity {
            from_days: -30,
            until_days: -2,
        };
        let not_yet = Validity {
            from_days: 2,
            until_days: 30,
        };
        let cases = [
            (
                pki.server(&["127.0.0.1"], expired, false),
                "certificate expired on `",
            ),
            (
                pki.server(&["127.0.0.1"], not_yet, false),
                "certificate is not valid before `",
            ),
            (
                pki.server(&["www.example.org"], VALID, false),
                "certificate is not valid for `127.0.0.1` (it names `www.example.org`)",
            ),
            (
                pki.server(&["127.0.0.1"], VALID, true),
                "certificate is self-signed (`CN=127.0.0.1`) and not trusted",
            ),
        ];
        for (config, expected) in cases {
            let server = server(Some(config), routes).await;
            let ok = url(&server, "https", "/ok");
            let result = probe(&format!("url = \"{ok}\"\n{ca_line}"), SECONDS).await;
            let reason = reason(&result);
            assert!(reason.starts_with(&format!("`{ok}`: ")), "{reason}");
            assert!(reason.contains(expected), "{expected}: {reason}");
            assert!(value(&result, "cert_days_left").is_some(), "{result:?}");
            assert_eq!(value(&result, "http_status"), None);
        }
        // Without verification a self-signed certificate is only reported.
        let self_signed = server(Some(pki.server(&["127.0.0.1"], VALID, true)), routes).await;
        let ok = url(&self_signed, "https", "/ok");
        let result = probe(&format!("url = \"{ok}\"\ntls_verify = false"), SECONDS).await;
        assert_eq!(result.outcome, Outcome::Pass, "{result:?}");
        assert!(value(&result, "cert_days_left").unwrap() >= 363.0);
    }
}
