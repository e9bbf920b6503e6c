//! The `smtp` check: does a mail server accept connections the way a sending MTA sees it: a
//! `220` greeting, `EHLO`, STARTTLS offered and negotiated with a valid certificate, `EHLO`
//! again over TLS, then `QUIT`. The `exchange` kind reuses the dialogue ([`probe_smtp`]).
//!
//! ```toml
//! [[checks]]
//! name = "mx"
//! kind = "smtp"
//! host = "mx1.example.com"
//! port = 25                               # default 25 (465 with implicit_tls); 587 submission
//! implicit_tls = false                    # true: TLS from the first byte (port 465)
//! helo_name = "agent1.example.com"        # default: this host's name
//! require_starttls = true                 # default true on ports 25 and 587
//! expect_banner = "ESMTP"                 # substring, or "re:<regex>", of the greeting
//! server_name = "mx1.example.com"         # name the certificate must carry (default: host)
//! tls_verify = true                       # false: only report the certificate's dates
//! ca_file = "/etc/estate/corp-ca.pem"     # default: the system's trusted roots
//! cert_min_days = 14                      # fail when the certificate expires sooner
//! min_version = "1.2"                     # or "1.3"
//! ```
//!
//! One result with the target `host:port`.
//!
//! # The dialogue
//!
//! Connect; with `implicit_tls`, the TLS handshake first. Read the greeting: it must be `220`
//! (and match `expect_banner`). `EHLO <helo_name>` must be answered `250`; its lines are the
//! extensions. When `STARTTLS` is offered it is negotiated, as an opportunistic sender would
//! (the certificate is judged even when `require_starttls` is off); when it is not offered and
//! required, the check fails naming the extensions that were. After the handshake `EHLO` is sent
//! again, then `QUIT`. The agent never sends `MAIL FROM`, `RCPT TO` or `DATA`: no mail is sent.
//!
//! Every reply is read by a bounded reader: lines of at most 2 KiB, replies of at most 64 lines,
//! every step before the probe's deadline. Data sent by the server after its `220` to STARTTLS,
//! before the handshake, fails the check (it would be read as if it came over TLS: the STARTTLS
//! command injection flaw).
//!
//! # Measurements (names are a contract with the collector)
//!
//! `latency_seconds` (connect to the end of the greeting), `banner` (text: the greeting's first
//! line, at most 256 bytes; value: the reply code), `extensions` (text: the EHLO keywords,
//! comma-separated, at most 512 bytes; value: how many), `starttls` (1 when offered, 0 when not;
//! absent with `implicit_tls`), and from [`certificate::CertificateReport::measurements`]:
//! `cert_not_after_unix`, `cert_days_left` (whole days, negative once expired), `chain_length`
//! and `tls_version` (text `TLSv1.3`, value 1.3).

use super::certificate::{self, TlsPolicy, TlsVersion};
use super::{Outcome, TargetResult, measurement};
use estate_proto::v1::Measurement;
use rustls_pki_types::ServerName;
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The kind's name in `kind = "smtp"`.
pub const KIND: &str = "smtp";
/// Mail transfer between servers.
pub const SMTP_PORT: u16 = 25;
/// Message submission (STARTTLS).
pub const SUBMISSION_PORT: u16 = 587;
/// Message submission over implicit TLS.
pub const SUBMISSIONS_PORT: u16 = 465;

/// A reply line longer than this (terminator included) ends the probe.
pub const MAX_LINE_BYTES: usize = 2048;
/// A reply of more lines than this ends the probe.
pub const MAX_REPLY_LINES: usize = 64;
/// The `banner` measurement is cut to this many bytes.
const MAX_BANNER_BYTES: usize = 256;
/// The `extensions` measurement is cut to this many bytes.
const MAX_EXTENSIONS_BYTES: usize = 512;
/// A server reply quoted in a reason is cut to this many bytes.
const MAX_QUOTED_BYTES: usize = 300;
/// The longest domain name a `helo_name` may be.
const MAX_HELO_NAME: usize = 255;
/// How long `QUIT` may wait for its answer; a server that does not answer it costs nothing.
const QUIT_WAIT: Duration = Duration::from_secs(1);

/// The `smtp` check's own fields.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpCheckConfig {
    /// Host name or IP address of the mail server.
    pub host: String,
    /// TCP port: 25 unless given (465 with `implicit_tls`); 587 for submission.
    pub port: Option<u16>,
    /// TLS from the first byte (SMTPS, port 465) instead of STARTTLS.
    #[serde(default)]
    pub implicit_tls: bool,
    /// The name sent with `EHLO`. Default: this host's name.
    pub helo_name: Option<String>,
    /// Fail when the server does not offer STARTTLS. Default: true on ports 25 and 587 (without
    /// `implicit_tls`), false elsewhere.
    pub require_starttls: Option<bool>,
    /// Text the greeting must contain, or `re:` and a regular expression it must match. The
    /// greeting's lines are matched without their reply codes, joined by newlines.
    pub expect_banner: Option<String>,
    /// The name the certificate must carry. Default: `host`.
    pub server_name: Option<String>,
    /// Verify the certificate (chain to a trusted root, name, dates). `false` negotiates TLS
    /// anyway and only reports the certificate's dates (`cert_min_days` still applies).
    #[serde(default = "certificate::default_tls_verify")]
    pub tls_verify: bool,
    /// PEM file of the CA certificates to trust, instead of the system's trusted roots.
    pub ca_file: Option<PathBuf>,
    /// Fail when the server's certificate expires in fewer days than this.
    #[serde(default = "certificate::default_cert_min_days")]
    pub cert_min_days: u32,
    /// The lowest TLS version accepted: `"1.2"` (the default) or `"1.3"`.
    #[serde(default)]
    pub min_version: TlsVersion,
}

/// What the greeting must contain or match.
#[derive(Debug, Clone)]
pub enum BannerPattern {
    Contains(String),
    Matches(regex::Regex),
}

impl BannerPattern {
    fn accepts(&self, greeting: &str) -> bool {
        match self {
            BannerPattern::Contains(text) => greeting.contains(text.as_str()),
            BannerPattern::Matches(regex) => regex.is_match(greeting),
        }
    }

    fn describe(&self) -> String {
        match self {
            BannerPattern::Contains(text) => format!("does not contain `{text}`"),
            BannerPattern::Matches(regex) => format!("does not match `{}`", regex.as_str()),
        }
    }
}

/// Everything [`probe_smtp`] does once it knows the host and port.
#[derive(Debug, Clone)]
pub struct SmtpOptions {
    /// TLS from the first byte instead of STARTTLS.
    pub implicit_tls: bool,
    /// The name sent with `EHLO`; `None`: this host's name, looked up when the probe runs.
    pub helo_name: Option<String>,
    /// Fail when STARTTLS is not offered.
    pub require_starttls: bool,
    pub expect_banner: Option<BannerPattern>,
    /// The name sent as SNI and verified against the certificate. Default: the host.
    pub server_name: Option<String>,
    /// How the certificate and the session are judged.
    pub tls: TlsPolicy,
    /// Connect to this address instead of resolving the host (which still names the server
    /// for TLS), as a composite kind does with addresses it discovered.
    pub address: Option<IpAddr>,
}

impl Default for SmtpOptions {
    /// What a sending MTA does on port 25: plain connection, this host's name, STARTTLS
    /// required and verified against the system's roots.
    fn default() -> Self {
        SmtpOptions {
            implicit_tls: false,
            helo_name: None,
            require_starttls: true,
            expect_banner: None,
            server_name: None,
            tls: TlsPolicy::default(),
            address: None,
        }
    }
}

impl SmtpCheckConfig {
    /// Checks the host, port, names and pattern. Pure: the CA file is read when the probe runs.
    pub fn validate(&self) -> Result<SmtpCheck, String> {
        let host = self.host.trim();
        if host.is_empty() {
            return Err("`host` is empty".to_owned());
        }
        if host.chars().any(|c| c.is_whitespace() || c.is_control()) || host.contains('/') {
            return Err(format!(
                "host `{}` is not a host name or IP address",
                self.host
            ));
        }
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = self.port.unwrap_or(if self.implicit_tls {
            SUBMISSIONS_PORT
        } else {
            SMTP_PORT
        });
        if port == 0 {
            return Err("port `0` is not a port to connect to".to_owned());
        }
        let require_starttls = match (self.require_starttls, self.implicit_tls) {
            (Some(true), true) => {
                return Err(
                    "`require_starttls` and `implicit_tls` are exclusive: with implicit TLS \
                     there is no STARTTLS"
                        .to_owned(),
                );
            }
            (Some(required), _) => required,
            (None, true) => false,
            (None, false) => matches!(port, SMTP_PORT | SUBMISSION_PORT),
        };
        if let Some(name) = &self.helo_name {
            validate_helo_name(name)?;
        }
        let expect_banner = match self.expect_banner.as_deref() {
            None => None,
            Some("") => return Err("`expect_banner` is empty".to_owned()),
            Some(text) => Some(match text.strip_prefix("re:") {
                Some(pattern) => {
                    BannerPattern::Matches(regex::Regex::new(pattern).map_err(|error| {
                        format!("expect_banner `{text}` is not a valid regex: {error}")
                    })?)
                }
                None => BannerPattern::Contains(text.to_owned()),
            }),
        };
        if let Some(name) = &self.server_name
            && ServerName::try_from(name.as_str()).is_err()
        {
            return Err(format!(
                "server_name `{name}` is not a DNS name or IP address"
            ));
        }
        if self.server_name.is_none() && ServerName::try_from(host.as_str()).is_err() {
            return Err(format!(
                "host `{host}` cannot name a TLS server; set `server_name`"
            ));
        }
        Ok(SmtpCheck {
            host,
            port,
            options: SmtpOptions {
                implicit_tls: self.implicit_tls,
                helo_name: self.helo_name.clone(),
                require_starttls,
                expect_banner,
                server_name: self.server_name.clone(),
                tls: TlsPolicy {
                    verify: self.tls_verify,
                    ca_file: self.ca_file.clone(),
                    cert_min_days: self.cert_min_days,
                    min_version: self.min_version,
                },
                address: None,
            },
        })
    }
}

/// A `helo_name` is one domain name (or address literal): no spaces, no control characters.
fn validate_helo_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("`helo_name` is empty".to_owned());
    }
    if name.len() > MAX_HELO_NAME {
        return Err(format!(
            "helo_name `{name}` is longer than {MAX_HELO_NAME} bytes"
        ));
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "helo_name `{name}` contains spaces or control characters"
        ));
    }
    Ok(())
}

/// A ready `smtp` check.
#[derive(Debug, Clone)]
pub struct SmtpCheck {
    host: String,
    port: u16,
    options: SmtpOptions,
}

impl SmtpCheck {
    /// `host:port`, with brackets around an IPv6 address.
    pub fn target(&self) -> String {
        target(&self.host, self.port)
    }

    /// Runs the dialogue within 90% of the check's timeout, so that a silent step is named in
    /// the reason before the runner's own timeout ends the run.
    pub async fn probe(&self, timeout: Duration) -> Vec<TargetResult> {
        vec![probe_smtp(&self.host, self.port, &self.options, timeout.mul_f64(0.9)).await]
    }
}

/// `host:port`, with brackets around an IPv6 address.
fn target(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Holds one SMTP dialogue with `host:port` as a sending MTA would, up to STARTTLS and `EHLO`
/// over TLS, then `QUIT`; never `MAIL FROM`. Every step must finish within `timeout` of the
/// start. The result (target `host:port`) passes when the greeting is `220` (and matches
/// `expect_banner`), `EHLO` is accepted, STARTTLS is offered when required, negotiated when
/// offered with a certificate that passes `options.tls`, and `EHLO` is accepted again over TLS.
/// A failure names the step and quotes the server's reply; the measurements gathered before it
/// are kept. Never panics.
pub async fn probe_smtp(
    host: &str,
    port: u16,
    options: &SmtpOptions,
    timeout: Duration,
) -> TargetResult {
    let target = target(host, port);
    let mut measurements = Vec::new();
    let outcome = match dialogue(host, port, &target, options, timeout, &mut measurements).await {
        Ok(()) => Outcome::Pass,
        Err(reason) => Outcome::Fail { reason },
    };
    TargetResult {
        target,
        outcome,
        measurements,
    }
}

/// [`probe_smtp`] over a connection already open to `host:port`: the same dialogue and
/// judgement from the first byte the server sends, `latency_seconds` counted from this call.
/// The fuzz target `smtp_dialogue` drives it with an in-memory server sending arbitrary bytes.
pub async fn probe_smtp_over<S>(
    stream: S,
    host: &str,
    port: u16,
    options: &SmtpOptions,
    timeout: Duration,
) -> TargetResult
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let target = target(host, port);
    let started = Instant::now();
    let conversation = Conversation {
        reader: ReplyReader::new(Box::new(stream)),
        target: target.clone(),
        deadline: tokio::time::Instant::now() + timeout,
        timeout,
    };
    let mut measurements = Vec::new();
    let outcome = match converse(conversation, host, options, started, &mut measurements).await {
        Ok(()) => Outcome::Pass,
        Err(reason) => Outcome::Fail { reason },
    };
    TargetResult {
        target,
        outcome,
        measurements,
    }
}

/// A byte stream SMTP runs over: plain TCP, or TLS over it.
trait Transport: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Transport for T {}

async fn dialogue(
    host: &str,
    port: u16,
    target: &str,
    options: &SmtpOptions,
    timeout: Duration,
    measurements: &mut Vec<Measurement>,
) -> Result<(), String> {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + timeout;
    let within = |reason: String| move |_| reason;
    let no_connection = format!(
        "could not connect to `{target}` within {}",
        humantime::format_duration(timeout)
    );
    let stream = tokio::time::timeout_at(deadline, connect(host, port, options.address))
        .await
        .map_err(within(no_connection))??;
    let conversation = Conversation {
        reader: ReplyReader::new(Box::new(stream)),
        target: target.to_owned(),
        deadline,
        timeout,
    };
    converse(conversation, host, options, started, measurements).await
}

/// The dialogue once connected; `started` is when connecting began.
async fn converse(
    mut conversation: Conversation,
    host: &str,
    options: &SmtpOptions,
    started: Instant,
    measurements: &mut Vec<Measurement>,
) -> Result<(), String> {
    let server_name = options.server_name.as_deref().unwrap_or(host);
    let target = conversation.target.clone();
    if options.implicit_tls {
        conversation = conversation
            .start_tls(server_name, &options.tls, measurements)
            .await?;
    }

    let greeting = conversation.reply(Step::Greeting).await?;
    measurements.push(measurement(
        "latency_seconds",
        started.elapsed().as_secs_f64(),
    ));
    let first_line = greeting.lines.first().map(String::as_str).unwrap_or("");
    measurements.push(text_measurement(
        "banner",
        f64::from(greeting.code),
        &cut(first_line, MAX_BANNER_BYTES),
    ));
    if greeting.code != 220 {
        // RFC 5321 §3.1: after a refusing greeting (554) the client should still say QUIT.
        let reason = conversation.refused(Step::Greeting, &greeting);
        conversation.quit().await;
        return Err(reason);
    }
    if let Some(pattern) = &options.expect_banner {
        let text = greeting.text();
        if !pattern.accepts(&text) {
            let reason = format!(
                "greeting of `{target}` {} (it is `{}`)",
                pattern.describe(),
                cut(&greeting.quoted(), MAX_QUOTED_BYTES)
            );
            conversation.quit().await;
            return Err(reason);
        }
    }

    let helo_name = match &options.helo_name {
        Some(name) => name.clone(),
        None => this_host_name(),
    };
    let ehlo = format!("EHLO {helo_name}");
    let reply = conversation.command(&ehlo, Step::Ehlo).await?;
    if reply.code != 250 {
        let reason = conversation.refused(Step::Ehlo, &reply);
        conversation.quit().await;
        return Err(reason);
    }
    let extensions = reply.extensions();
    let listed = extensions.join(", ");
    measurements.push(text_measurement(
        "extensions",
        extensions.len() as f64,
        &cut(&listed, MAX_EXTENSIONS_BYTES),
    ));
    if options.implicit_tls {
        conversation.quit().await;
        return Ok(());
    }

    let offered = extensions.iter().any(|keyword| keyword == "STARTTLS");
    measurements.push(measurement("starttls", if offered { 1.0 } else { 0.0 }));
    if !offered {
        conversation.quit().await;
        return if options.require_starttls {
            let listed = if listed.is_empty() {
                "none".to_owned()
            } else {
                cut(&listed, MAX_QUOTED_BYTES)
            };
            Err(format!(
                "STARTTLS not offered by `{target}` (extensions: {listed})"
            ))
        } else {
            Ok(())
        };
    }
    let reply = conversation.command("STARTTLS", Step::StartTls).await?;
    if reply.code != 220 {
        let reason = format!(
            "STARTTLS refused by `{target}`: `{}`",
            cut(&reply.quoted(), MAX_QUOTED_BYTES)
        );
        conversation.quit().await;
        return Err(reason);
    }
    if !conversation.reader.buffer.is_empty() {
        return Err(format!(
            "`{target}` sent data after its `220` to STARTTLS, before the TLS handshake \
             (STARTTLS command injection)"
        ));
    }
    conversation = conversation
        .start_tls(host, &options.tls, measurements)
        .await?;
    let reply = conversation.command(&ehlo, Step::EhloOverTls).await?;
    if reply.code != 250 {
        let reason = conversation.refused(Step::EhloOverTls, &reply);
        conversation.quit().await;
        return Err(reason);
    }
    conversation.quit().await;
    Ok(())
}

/// This host's name, for `EHLO`; `localhost` when it has none.
fn this_host_name() -> String {
    #[cfg(unix)]
    let name = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    #[cfg(windows)]
    let name = std::env::var("COMPUTERNAME").unwrap_or_default();
    #[cfg(not(any(unix, windows)))]
    let name = String::new();
    let name = name.trim().to_owned();
    if validate_helo_name(&name).is_ok() && name != "(none)" {
        name
    } else {
        "localhost".to_owned()
    }
}

/// Connects to `address`, or to each address the host resolves to in turn.
async fn connect(
    host: &str,
    port: u16,
    address: Option<IpAddr>,
) -> Result<tokio::net::TcpStream, String> {
    let target = target(host, port);
    let addresses: Vec<SocketAddr> = match address {
        Some(address) => vec![SocketAddr::new(address, port)],
        None => tokio::net::lookup_host((host, port))
            .await
            .map_err(|error| format!("cannot resolve `{host}`: {error}"))?
            .collect(),
    };
    if addresses.is_empty() {
        return Err(format!("`{host}` resolved to no address"));
    }
    let mut failures = Vec::new();
    for address in addresses {
        match tokio::net::TcpStream::connect(address).await {
            Ok(stream) => return Ok(stream),
            Err(error) => failures.push(format!(
                "connection to `{address}` ({target}) failed: {error}"
            )),
        }
    }
    Err(failures.join("; "))
}

/// The steps of the dialogue, as named in reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Greeting,
    Ehlo,
    StartTls,
    EhloOverTls,
    Quit,
}

impl Step {
    /// What the server was answering, after "to".
    fn answering(self) -> &'static str {
        match self {
            Step::Greeting => "the connection",
            Step::Ehlo => "EHLO",
            Step::StartTls => "STARTTLS",
            Step::EhloOverTls => "EHLO over TLS",
            Step::Quit => "QUIT",
        }
    }
}

/// One reply: its code and its lines as received (code included, line ends removed).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reply {
    code: u16,
    lines: Vec<String>,
}

impl Reply {
    /// The lines as the server sent them, joined by spaces, for a reason.
    fn quoted(&self) -> String {
        self.lines.join(" ")
    }

    /// The lines without their codes, joined by newlines, for `expect_banner`.
    fn text(&self) -> String {
        self.lines
            .iter()
            .map(|line| line.get(4..).unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The EHLO keywords (upper-cased), from every line but the first (the server's name).
    fn extensions(&self) -> Vec<String> {
        self.lines
            .iter()
            .skip(1)
            .filter_map(|line| line.get(4..)?.split_whitespace().next())
            .map(str::to_ascii_uppercase)
            .collect()
    }
}

/// Why no reply could be read.
#[derive(Debug)]
enum ReplyError {
    /// The connection ended; `partial` when part of a reply had come.
    Closed {
        partial: bool,
    },
    LineTooLong,
    TooManyLines,
    /// A line that does not start with a reply code.
    NotSmtp(String),
    Io(std::io::Error),
}

/// Reads replies off a stream, bounded in line length and line count, keeping what it read
/// past the reply (there should be nothing, except with pipelining, which the probe never
/// uses).
struct ReplyReader<S> {
    stream: S,
    buffer: Vec<u8>,
}

impl<S: AsyncRead + Unpin> ReplyReader<S> {
    fn new(stream: S) -> Self {
        ReplyReader {
            stream,
            buffer: Vec::new(),
        }
    }

    /// One line without its `\r\n` (a bare `\n` is accepted), lossily decoded. `None` at a
    /// clean end of the stream.
    async fn line(&mut self) -> Result<Option<String>, ReplyError> {
        loop {
            if let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
                if end + 1 > MAX_LINE_BYTES {
                    return Err(ReplyError::LineTooLong);
                }
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                let line = line.strip_suffix(b"\n").unwrap_or(&line);
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                return Ok(Some(String::from_utf8_lossy(line).into_owned()));
            }
            if self.buffer.len() >= MAX_LINE_BYTES {
                return Err(ReplyError::LineTooLong);
            }
            let mut chunk = [0u8; 1024];
            let read = self.stream.read(&mut chunk).await.map_err(ReplyError::Io)?;
            if read == 0 {
                return if self.buffer.is_empty() {
                    Ok(None)
                } else {
                    Err(ReplyError::Closed { partial: true })
                };
            }
            self.buffer.extend_from_slice(&chunk[..read]);
        }
    }

    /// One whole reply: lines `NNN-text` up to the line `NNN text` (or `NNN` alone).
    async fn reply(&mut self) -> Result<Reply, ReplyError> {
        let mut lines = Vec::new();
        loop {
            let Some(line) = self.line().await? else {
                return Err(ReplyError::Closed {
                    partial: !lines.is_empty(),
                });
            };
            let (code, last) = parse_reply_line(&line).ok_or(ReplyError::NotSmtp(line.clone()))?;
            lines.push(line);
            if last {
                return Ok(Reply { code, lines });
            }
            if lines.len() >= MAX_REPLY_LINES {
                return Err(ReplyError::TooManyLines);
            }
        }
    }
}

/// The code of a reply line and whether it is the reply's last line; `None` when the line is
/// not `NNN`, `NNN text` or `NNN-text` with a code from 200 to 599.
fn parse_reply_line(line: &str) -> Option<(u16, bool)> {
    let bytes = line.as_bytes();
    let code = bytes.get(..3)?;
    if !code.iter().all(u8::is_ascii_digit) || !(b'2'..=b'5').contains(&code[0]) {
        return None;
    }
    let last = match bytes.get(3) {
        None | Some(b' ') => true,
        Some(b'-') => false,
        Some(_) => return None,
    };
    let code = u16::from(code[0] - b'0') * 100
        + u16::from(code[1] - b'0') * 10
        + u16::from(code[2] - b'0');
    Some((code, last))
}

/// The dialogue's connection, its deadline, and the target named in reasons.
struct Conversation {
    reader: ReplyReader<Box<dyn Transport>>,
    target: String,
    deadline: tokio::time::Instant,
    timeout: Duration,
}

impl Conversation {
    /// Reads the reply to `step`, turning every way of not getting one into a reason.
    async fn reply(&mut self, step: Step) -> Result<Reply, String> {
        let target = &self.target;
        let answering = step.answering();
        match tokio::time::timeout_at(self.deadline, self.reader.reply()).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(error)) => Err(match error {
                ReplyError::Closed { partial: false } if step == Step::Greeting => {
                    format!("server `{target}` closed the connection without a greeting")
                }
                ReplyError::Closed { partial: false } => {
                    format!("server `{target}` closed the connection without answering {answering}")
                }
                ReplyError::Closed { partial: true } => format!(
                    "server `{target}` closed the connection in the middle of its reply to \
                     {answering}"
                ),
                ReplyError::LineTooLong => format!(
                    "server `{target}` sent a line longer than {MAX_LINE_BYTES} bytes in its \
                     reply to {answering}"
                ),
                ReplyError::TooManyLines => format!(
                    "server `{target}` sent a reply of more than {MAX_REPLY_LINES} lines to \
                     {answering}"
                ),
                ReplyError::NotSmtp(line) => format!(
                    "server `{target}` sent `{}` instead of an SMTP reply to {answering}",
                    cut(&printable(&line), MAX_QUOTED_BYTES)
                ),
                ReplyError::Io(error) => format!(
                    "connection to `{target}` failed while reading the reply to {answering}: \
                     {error}"
                ),
            }),
            Err(_elapsed) => Err(format!(
                "no answer from `{target}` to {answering} within {}",
                humantime::format_duration(self.timeout)
            )),
        }
    }

    /// Sends one command line.
    async fn send(&mut self, command: &str, step: Step) -> Result<(), String> {
        let line = format!("{command}\r\n");
        let stream = &mut self.reader.stream;
        let sent = async {
            stream.write_all(line.as_bytes()).await?;
            stream.flush().await
        };
        match tokio::time::timeout_at(self.deadline, sent).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(format!(
                "connection to `{}` failed while sending {}: {error}",
                self.target,
                step.answering()
            )),
            Err(_elapsed) => Err(format!(
                "`{}` did not take {} within {}",
                self.target,
                step.answering(),
                humantime::format_duration(self.timeout)
            )),
        }
    }

    async fn command(&mut self, command: &str, step: Step) -> Result<Reply, String> {
        self.send(command, step).await?;
        self.reply(step).await
    }

    /// The reason for a reply with an unexpected code.
    fn refused(&self, step: Step, reply: &Reply) -> String {
        format!(
            "server `{}` answered `{}` to {}",
            self.target,
            cut(&reply.quoted(), MAX_QUOTED_BYTES),
            step.answering()
        )
    }

    /// Says goodbye politely: `QUIT`, then a short wait for its answer, whatever it is.
    async fn quit(mut self) {
        let wait = tokio::time::Instant::now() + QUIT_WAIT;
        self.deadline = self.deadline.min(wait);
        if self.send("QUIT", Step::Quit).await.is_ok() {
            let _ = self.reply(Step::Quit).await;
        }
        let _ = tokio::time::timeout_at(self.deadline, self.reader.stream.shutdown()).await;
    }

    /// Negotiates TLS over the connection as a client of `server_name`, reports the
    /// certificate and the protocol version, and judges them by `policy`.
    async fn start_tls(
        self,
        server_name: &str,
        policy: &TlsPolicy,
        measurements: &mut Vec<Measurement>,
    ) -> Result<Conversation, String> {
        let Conversation {
            reader,
            target,
            deadline,
            timeout,
        } = self;
        // Our own deadline ends the handshake, so its reason names the whole budget: the
        // handshake's own timeout is set later (timers of one tick would race).
        let handshake_timeout = timeout.saturating_add(Duration::from_secs(1));
        let handshake =
            certificate::handshake(reader.stream, server_name, policy, handshake_timeout);
        let handshake = tokio::time::timeout_at(deadline, handshake)
            .await
            .map_err(|_| {
                format!(
                    "no TLS handshake with `{target}` within {}",
                    humantime::format_duration(timeout)
                )
            })?;
        match handshake {
            Ok((stream, report)) => {
                measurements.extend(report.measurements());
                Ok(Conversation {
                    reader: ReplyReader::new(Box::new(stream)),
                    target,
                    deadline,
                    timeout,
                })
            }
            Err(failure) => {
                measurements.extend(failure.measurements());
                Err(format!("`{target}`: {}", failure.reason))
            }
        }
    }
}

/// A text measurement with a value of its own.
fn text_measurement(name: &str, value: f64, text: &str) -> Measurement {
    Measurement {
        name: name.to_owned(),
        value,
        text: text.to_owned(),
    }
}

/// At most `max` bytes of `text`, cut at a character boundary, with `…` when cut.
fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Control characters escaped, so garbage quoted in a reason stays on one line.
fn printable(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

/// An in-process SMTP responder for the tests of `smtp` (and, later, `exchange`): a greeting,
/// EHLO with configurable extensions, STARTTLS accepted (certificates by rcgen) or refused,
/// implicit TLS, and hostile behaviours. It records every command it receives.
#[cfg(test)]
pub(crate) mod test_server {
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;
    use tokio::task::JoinSet;
    use tokio_rustls::TlsAcceptor;

    /// What the responder does about TLS.
    #[derive(Clone)]
    pub enum TlsOffer {
        /// No STARTTLS in the EHLO reply.
        None,
        /// STARTTLS offered and accepted with this certificate.
        StartTls(Arc<rustls::ServerConfig>),
        /// STARTTLS offered, then refused with this reply line.
        Refused(&'static str),
        /// TLS from the first byte.
        Implicit(Arc<rustls::ServerConfig>),
        /// STARTTLS offered and answered `220`, followed at once by these bytes (the STARTTLS
        /// injection flaw); no handshake follows.
        Injected(&'static str),
        /// STARTTLS offered and answered `220`, then silence instead of a handshake.
        NoHandshake,
    }

    /// What the responder does after sending its greeting bytes.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum After {
        /// Answers commands.
        Converse,
        /// Closes the connection.
        Close,
        /// Reads the first command, then closes the connection without answering it.
        CloseAtCommand,
        /// Keeps the connection open and says nothing more.
        Hold,
    }

    #[derive(Clone)]
    pub struct Responder {
        /// Sent as is when a client connects.
        pub greeting: String,
        pub after: After,
        /// EHLO keywords before STARTTLS (added when offered).
        pub extensions: Vec<&'static str>,
        pub tls: TlsOffer,
        /// Sent instead of the EHLO reply, when set.
        pub ehlo_reply: Option<&'static str>,
    }

    impl Default for Responder {
        fn default() -> Self {
            Responder {
                greeting: "220 mx1.mail.test ESMTP ready\r\n".to_owned(),
                after: After::Converse,
                extensions: vec!["PIPELINING", "SIZE 10240000"],
                tls: TlsOffer::None,
                ehlo_reply: None,
            }
        }
    }

    pub struct Running {
        pub address: SocketAddr,
        pub commands: Arc<Mutex<Vec<String>>>,
        _connections: Arc<tokio::sync::Mutex<JoinSet<()>>>,
        accept: tokio::task::JoinHandle<()>,
    }

    impl Drop for Running {
        fn drop(&mut self) {
            self.accept.abort();
        }
    }

    impl Running {
        /// Every command line received so far.
        pub fn commands(&self) -> Vec<String> {
            self.commands.lock().unwrap().clone()
        }
    }

    impl Responder {
        pub async fn start(self) -> Running {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let address = listener.local_addr().unwrap();
            let commands = Arc::new(Mutex::new(Vec::new()));
            let connections = Arc::new(tokio::sync::Mutex::new(JoinSet::new()));
            let responder = Arc::new(self);
            let accept = {
                let commands = Arc::clone(&commands);
                let connections = Arc::clone(&connections);
                tokio::spawn(async move {
                    // The connection tasks live in the JoinSet, which aborts them once the
                    // `Running` handle and this task, its owners, are gone.
                    while let Ok((stream, _)) = listener.accept().await {
                        let responder = Arc::clone(&responder);
                        let commands = Arc::clone(&commands);
                        connections.lock().await.spawn(async move {
                            responder.serve(stream, commands).await;
                        });
                    }
                })
            };
            Running {
                address,
                commands,
                _connections: connections,
                accept,
            }
        }

        async fn serve(&self, stream: tokio::net::TcpStream, commands: Arc<Mutex<Vec<String>>>) {
            if let TlsOffer::Implicit(config) = &self.tls {
                let Ok(tls) = TlsAcceptor::from(Arc::clone(config)).accept(stream).await else {
                    return;
                };
                self.session(tls, &commands, true, false).await;
                return;
            }
            if let Some(plain) = self.session(stream, &commands, true, false).await
                && let TlsOffer::StartTls(config) = &self.tls
                && let Ok(tls) = TlsAcceptor::from(Arc::clone(config)).accept(plain).await
            {
                self.session(tls, &commands, false, true).await;
            }
        }

        /// Converses until QUIT or the end; returns the stream when STARTTLS was accepted.
        async fn session<S: AsyncRead + AsyncWrite + Unpin>(
            &self,
            stream: S,
            commands: &Mutex<Vec<String>>,
            greet: bool,
            secure: bool,
        ) -> Option<S> {
            let mut stream = BufReader::new(stream);
            if greet {
                stream.write_all(self.greeting.as_bytes()).await.ok()?;
                match self.after {
                    After::Converse => {}
                    After::Close => return None,
                    After::CloseAtCommand => {
                        let mut line = String::new();
                        let _ = stream.read_line(&mut line).await;
                        commands.lock().unwrap().push(line.trim_end().to_owned());
                        return None;
                    }
                    After::Hold => {
                        let mut sink = Vec::new();
                        let _ = tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut sink).await;
                        return None;
                    }
                }
            }
            loop {
                let mut line = String::new();
                if stream.read_line(&mut line).await.ok()? == 0 {
                    return None;
                }
                let command = line.trim_end().to_owned();
                commands.lock().unwrap().push(command.clone());
                let verb = command
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .to_ascii_uppercase();
                let reply = match verb.as_str() {
                    "EHLO" if self.ehlo_reply.is_some() => {
                        format!("{}\r\n", self.ehlo_reply.unwrap_or_default())
                    }
                    "EHLO" => {
                        let mut keywords = self.extensions.clone();
                        if !secure && !matches!(self.tls, TlsOffer::None | TlsOffer::Implicit(_)) {
                            keywords.push("STARTTLS");
                        }
                        let mut reply = String::from("250");
                        reply.push(if keywords.is_empty() { ' ' } else { '-' });
                        reply.push_str("mx1.mail.test greets you\r\n");
                        for (index, keyword) in keywords.iter().enumerate() {
                            let separator = if index + 1 == keywords.len() {
                                ' '
                            } else {
                                '-'
                            };
                            reply.push_str(&format!("250{separator}{keyword}\r\n"));
                        }
                        reply
                    }
                    "STARTTLS" if !secure => match &self.tls {
                        TlsOffer::StartTls(_) => {
                            stream
                                .write_all(b"220 2.0.0 ready to start TLS\r\n")
                                .await
                                .ok()?;
                            return Some(stream.into_inner());
                        }
                        TlsOffer::Refused(reply) => format!("{reply}\r\n"),
                        TlsOffer::Injected(extra) => {
                            let reply = format!("220 2.0.0 ready to start TLS\r\n{extra}");
                            stream.write_all(reply.as_bytes()).await.ok()?;
                            let mut sink = Vec::new();
                            let _ =
                                tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut sink).await;
                            return None;
                        }
                        TlsOffer::NoHandshake => {
                            stream
                                .write_all(b"220 2.0.0 ready to start TLS\r\n")
                                .await
                                .ok()?;
                            let mut sink = Vec::new();
                            let _ =
                                tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut sink).await;
                            return None;
                        }
                        _ => "502 5.5.1 not implemented\r\n".to_owned(),
                    },
                    "QUIT" => {
                        let _ = stream.write_all(b"221 2.0.0 bye\r\n").await;
                        return None;
                    }
                    _ => "502 5.5.2 command not recognized\r\n".to_owned(),
                };
                stream.write_all(reply.as_bytes()).await.ok()?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_server::{After, Responder, Running, TlsOffer};
    use super::*;
    use crate::checks::CheckConfig;
    use crate::checks::certificate::test_pki::{TestPki, VALID, Validity};
    use crate::checks::test_support::{documented_example, parse_entry};
    use std::io::Write;

    const MX: &str = "mx1.mail.test";

    fn config(toml_text: &str) -> Result<SmtpCheck, String> {
        let CheckConfig::Smtp(config) = parse_entry("smtp", toml_text)? else {
            unreachable!("a smtp entry parses as a smtp config")
        };
        config.validate()
    }

    fn check_error(toml_text: &str, expected: &str) {
        match config(toml_text) {
            Ok(check) => panic!("{toml_text}: accepted as {check:?}"),
            Err(error) => assert_eq!(error, expected, "config: {toml_text}"),
        }
    }

    #[test]
    fn ports_and_starttls_defaults() {
        let summary = |toml_text: &str| {
            let check = config(toml_text).unwrap();
            (
                check.target(),
                check.options.implicit_tls,
                check.options.require_starttls,
            )
        };
        assert_eq!(summary("host = \"mx\""), ("mx:25".into(), false, true));
        assert_eq!(
            summary("host = \"mx\"\nport = 587"),
            ("mx:587".into(), false, true)
        );
        assert_eq!(
            summary("host = \"mx\"\nport = 2525"),
            ("mx:2525".into(), false, false)
        );
        assert_eq!(
            summary("host = \"mx\"\nport = 25\nrequire_starttls = false"),
            ("mx:25".into(), false, false)
        );
        assert_eq!(
            summary("host = \"mx\"\nimplicit_tls = true"),
            ("mx:465".into(), true, false)
        );
        assert_eq!(
            summary("host = \"::1\"\nserver_name = \"mx\""),
            ("[::1]:25".into(), false, true)
        );
    }

    #[test]
    fn validation_errors_name_the_field_and_value() {
        check_error("host = \"\"", "`host` is empty");
        check_error(
            "host = \"mx 1\"",
            "host `mx 1` is not a host name or IP address",
        );
        check_error(
            "host = \"mx\"\nport = 0",
            "port `0` is not a port to connect to",
        );
        check_error(
            "host = \"mx\"\nimplicit_tls = true\nrequire_starttls = true",
            "`require_starttls` and `implicit_tls` are exclusive: with implicit TLS there is no \
             STARTTLS",
        );
        check_error("host = \"mx\"\nhelo_name = \"\"", "`helo_name` is empty");
        check_error(
            "host = \"mx\"\nhelo_name = \"a b\"",
            "helo_name `a b` contains spaces or control characters",
        );
        check_error(
            "host = \"mx\"\nexpect_banner = \"\"",
            "`expect_banner` is empty",
        );
        let error = config("host = \"mx\"\nexpect_banner = \"re:(\"").unwrap_err();
        assert!(
            error.starts_with("expect_banner `re:(` is not a valid regex: "),
            "{error}"
        );
        check_error(
            "host = \"mx\"\nserver_name = \"not a name\"",
            "server_name `not a name` is not a DNS name or IP address",
        );
        check_error(
            "host = \"mx\"\nstarttls = true",
            "unknown field `starttls`, expected one of `host`, `port`, `implicit_tls`, \
             `helo_name`, `require_starttls`, `expect_banner`, `server_name`, `tls_verify`, \
             `ca_file`, `cert_min_days`, `min_version`",
        );
    }

    #[test]
    fn the_documented_example_validates() {
        let check = config(&documented_example(include_str!("smtp.rs"))).unwrap();
        assert_eq!(check.target(), "mx1.example.com:25");
        assert!(check.options.require_starttls);
    }

    #[test]
    fn reply_lines() {
        assert_eq!(parse_reply_line("220 mx ESMTP"), Some((220, true)));
        assert_eq!(parse_reply_line("250-SIZE"), Some((250, false)));
        assert_eq!(parse_reply_line("250"), Some((250, true)));
        assert_eq!(parse_reply_line("554 5.7.1 no"), Some((554, true)));
        assert_eq!(parse_reply_line("HTTP/1.1 400"), None);
        assert_eq!(parse_reply_line("2200 x"), None);
        assert_eq!(parse_reply_line("120 x"), None);
        assert_eq!(parse_reply_line("22"), None);
        assert_eq!(parse_reply_line(""), None);
        assert_eq!(cut("abcdef", 4), "a…");
        assert_eq!(cut("abc", 4), "abc");
    }

    fn options() -> SmtpOptions {
        SmtpOptions {
            helo_name: Some("agent.test".into()),
            address: Some("127.0.0.1".parse().unwrap()),
            ..SmtpOptions::default()
        }
    }

    fn with_ca(ca: &tempfile::NamedTempFile) -> SmtpOptions {
        let mut options = options();
        options.tls.ca_file = Some(ca.path().into());
        options
    }

    fn ca_file(pki: &TestPki) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(pki.ca_pem.as_bytes()).unwrap();
        file
    }

    /// Probes the responder as `mx1.mail.test` and asserts it was never asked to take mail.
    async fn probe(server: &Running, options: &SmtpOptions, timeout: Duration) -> TargetResult {
        let result = probe_smtp(MX, server.address.port(), options, timeout).await;
        for command in server.commands() {
            let verb = command.to_ascii_uppercase();
            assert!(
                !["MAIL", "RCPT", "DATA"].iter().any(|v| verb.starts_with(v)),
                "the probe sent `{command}`"
            );
        }
        result
    }

    async fn run(responder: Responder, options: &SmtpOptions) -> (TargetResult, Vec<String>) {
        let server = responder.start().await;
        let result = probe(&server, options, Duration::from_secs(5)).await;
        (result, server.commands())
    }

    fn reason(result: &TargetResult) -> String {
        match &result.outcome {
            Outcome::Fail { reason } => reason.clone(),
            other => panic!("expected a failure, got {other:?}: {result:?}"),
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

    #[tokio::test]
    async fn starttls_with_a_trusted_certificate_passes_and_reports_everything() {
        let pki = TestPki::new();
        let ca = ca_file(&pki);
        let responder = Responder {
            greeting: "220-mx1.mail.test ESMTP Postfix\r\n220-no UCE\r\n220 welcome\r\n".into(),
            tls: TlsOffer::StartTls(pki.server(&[MX], VALID, false)),
            ..Responder::default()
        };
        let mut options = with_ca(&ca);
        options.expect_banner = Some(BannerPattern::Contains("no UCE".into()));
        let (result, commands) = run(responder, &options).await;
        assert_eq!(result.outcome, Outcome::Pass, "{result:?}");
        let port = result.target.rsplit_once(':').unwrap().1;
        assert_eq!(result.target, format!("{MX}:{port}"));
        assert_eq!(
            commands,
            ["EHLO agent.test", "STARTTLS", "EHLO agent.test", "QUIT"]
        );
        let names: Vec<_> = result
            .measurements
            .iter()
            .map(|m| m.name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "latency_seconds",
                "banner",
                "extensions",
                "starttls",
                "cert_not_after_unix",
                "cert_days_left",
                "chain_length",
                "tls_version"
            ]
        );
        assert_eq!(
            text(&result, "banner").unwrap(),
            "220-mx1.mail.test ESMTP Postfix"
        );
        assert_eq!(value(&result, "banner"), Some(220.0));
        assert_eq!(
            text(&result, "extensions").unwrap(),
            "PIPELINING, SIZE, STARTTLS"
        );
        assert_eq!(value(&result, "extensions"), Some(3.0));
        assert_eq!(value(&result, "starttls"), Some(1.0));
        assert_eq!(text(&result, "tls_version").unwrap(), "TLSv1.3");
        assert_eq!(value(&result, "tls_version"), Some(1.3));
        assert!(value(&result, "cert_days_left").unwrap() >= 363.0);
    }

    #[tokio::test]
    async fn implicit_tls_negotiates_before_the_greeting() {
        let pki = TestPki::new();
        let ca = ca_file(&pki);
        let responder = Responder {
            tls: TlsOffer::Implicit(pki.server(&[MX], VALID, false)),
            ..Responder::default()
        };
        let mut options = with_ca(&ca);
        options.implicit_tls = true;
        options.require_starttls = false;
        let (result, commands) = run(responder, &options).await;
        assert_eq!(result.outcome, Outcome::Pass, "{result:?}");
        assert_eq!(commands, ["EHLO agent.test", "QUIT"]);
        assert_eq!(value(&result, "tls_version"), Some(1.3));
        assert!(value(&result, "cert_days_left").is_some());
        assert_eq!(value(&result, "starttls"), None);
        assert_eq!(text(&result, "extensions").unwrap(), "PIPELINING, SIZE");
    }

    #[tokio::test]
    async fn the_negotiated_version_is_reported_and_min_version_enforced() {
        let pki = TestPki::new();
        let ca = ca_file(&pki);
        let tls12_only = || {
            TlsOffer::StartTls(pki.server_with_versions(
                &[MX],
                VALID,
                false,
                &[&rustls::version::TLS12],
            ))
        };
        let responder = Responder {
            tls: tls12_only(),
            ..Responder::default()
        };
        let (result, _) = run(responder, &with_ca(&ca)).await;
        assert_eq!(result.outcome, Outcome::Pass, "{result:?}");
        assert_eq!(text(&result, "tls_version").unwrap(), "TLSv1.2");
        assert_eq!(value(&result, "tls_version"), Some(1.2));

        let mut strict = with_ca(&ca);
        strict.tls.min_version = TlsVersion::Tls13;
        let responder = Responder {
            tls: tls12_only(),
            ..Responder::default()
        };
        let (result, _) = run(responder, &strict).await;
        let expected = format!("`{}`: TLS handshake failed: ", result.target);
        assert!(reason(&result).starts_with(&expected), "{result:?}");
    }

    #[tokio::test]
    async fn starttls_not_offered_fails_when_required_and_names_the_extensions() {
        let (result, commands) = run(Responder::default(), &options()).await;
        let port = result.target.rsplit_once(':').unwrap().1.to_owned();
        assert_eq!(
            reason(&result),
            format!("STARTTLS not offered by `{MX}:{port}` (extensions: PIPELINING, SIZE)")
        );
        assert_eq!(value(&result, "starttls"), Some(0.0));
        assert_eq!(commands, ["EHLO agent.test", "QUIT"]);

        let mut optional = options();
        optional.require_starttls = false;
        let (result, _) = run(Responder::default(), &optional).await;
        assert_eq!(result.outcome, Outcome::Pass, "{result:?}");
        assert_eq!(value(&result, "starttls"), Some(0.0));
    }

    #[tokio::test]
    async fn refusals_quote_the_servers_reply() {
        let cases = [
            (
                Responder {
                    greeting: "421 4.3.2 service not available\r\n".into(),
                    after: After::Close,
                    ..Responder::default()
                },
                "server `{target}` answered `421 4.3.2 service not available` to the connection",
            ),
            (
                Responder {
                    greeting: "554-mx1.mail.test no SMTP service here\r\n554 5.3.2 go away\r\n"
                        .into(),
                    ..Responder::default()
                },
                "server `{target}` answered `554-mx1.mail.test no SMTP service here 554 5.3.2 go \
                 away` to the connection",
            ),
            (
                Responder {
                    tls: TlsOffer::Refused("454 4.7.0 TLS not available"),
                    ..Responder::default()
                },
                "STARTTLS refused by `{target}`: `454 4.7.0 TLS not available`",
            ),
        ];
        for (responder, expected) in cases {
            let after = responder.after;
            let (result, commands) = run(responder, &options()).await;
            let expected = expected.replace("{target}", &result.target);
            assert_eq!(reason(&result), expected);
            if after == After::Converse {
                assert_eq!(
                    commands.last().map(String::as_str),
                    Some("QUIT"),
                    "{commands:?}"
                );
            }
        }
    }

    #[tokio::test]
    async fn expect_banner_checks_the_greeting() {
        let mut options = options();
        options.require_starttls = false;
        options.expect_banner = Some(BannerPattern::Matches(
            regex::Regex::new(r"^mx\d\.mail\.test ESMTP").unwrap(),
        ));
        let (result, _) = run(Responder::default(), &options).await;
        assert_eq!(result.outcome, Outcome::Pass, "{result:?}");

        options.expect_banner = Some(BannerPattern::Contains("Exchange".into()));
        let (result, commands) = run(Responder::default(), &options).await;
        assert_eq!(
            reason(&result),
            format!(
                "greeting of `{}` does not contain `Exchange` (it is `220 mx1.mail.test ESMTP \
                 ready`)",
                result.target
            )
        );
        assert_eq!(commands, ["QUIT"]);
    }

    /// Each bad certificate fails with a reason saying what is wrong, and its dates are reported.
    #[tokio::test]
    async fn bad_certificates_say_what_is_wrong() {
        let pki = TestPki::new();
        let ca = ca_file(&pki);
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
                pki.server(&[MX], expired, false),
                "certificate expired on `",
            ),
            (
                pki.server(&["other.mail.test"], VALID, false),
                "certificate is not valid for `mx1.mail.test` (it names `other.mail.test`)",
            ),
            (
                pki.server(&[MX], VALID, true),
                "certificate is self-signed (`CN=mx1.mail.test`) and not trusted",
            ),
            (pki.server(&[MX], soon, false), "days (on `"),
        ];
        for (config, expected) in cases {
            let responder = Responder {
                tls: TlsOffer::StartTls(config),
                ..Responder::default()
            };
            let (result, _) = run(responder, &with_ca(&ca)).await;
            assert!(reason(&result).contains(expected), "{expected}: {result:?}");
            assert!(value(&result, "cert_days_left").is_some(), "{result:?}");
        }
        // Without `ca_file`, the test CA is unknown.
        let responder = Responder {
            tls: TlsOffer::StartTls(pki.server(&[MX], VALID, false)),
            ..Responder::default()
        };
        let (result, _) = run(responder, &options()).await;
        assert!(
            reason(&result).contains(
                "certificate is issued by `CN=estate test CA`, which is not a trusted CA"
            ),
            "{result:?}"
        );
        // Without verification, a self-signed certificate is only reported.
        let responder = Responder {
            tls: TlsOffer::StartTls(pki.server(&["whatever.test"], VALID, true)),
            ..Responder::default()
        };
        let mut unverified = options();
        unverified.tls.verify = false;
        let (result, commands) = run(responder, &unverified).await;
        assert_eq!(result.outcome, Outcome::Pass, "{result:?}");
        assert_eq!(commands.len(), 4, "{commands:?}");
    }

    /// Broken and hostile peers: every one fails with a clear reason, none panics the probe.
    #[tokio::test]
    async fn hostile_peers_fail_with_clear_reasons() {
        let endless = format!("220 {}", "x".repeat(10 * MAX_LINE_BYTES));
        let many_lines = "220-x\r\n".repeat(MAX_REPLY_LINES + 5);
        let cases = [
            (
                "HTTP/1.1 400 Bad Request\r\n\r\n".to_owned(),
                After::Close,
                "server `{target}` sent `HTTP/1.1 400 Bad Request` instead of an SMTP reply to \
                 the connection"
                    .to_owned(),
            ),
            (
                endless,
                After::Hold,
                format!(
                    "server `{{target}}` sent a line longer than {MAX_LINE_BYTES} bytes in its \
                     reply to the connection"
                ),
            ),
            (
                many_lines,
                After::Hold,
                format!(
                    "server `{{target}}` sent a reply of more than {MAX_REPLY_LINES} lines to \
                     the connection"
                ),
            ),
            (
                "220-mx1.mail.test\r\n220-still".to_owned(),
                After::Close,
                "server `{target}` closed the connection in the middle of its reply to the \
                 connection"
                    .to_owned(),
            ),
            (
                String::new(),
                After::Close,
                "server `{target}` closed the connection without a greeting".to_owned(),
            ),
            (
                "\u{1}\u{2}\r\n".to_owned(),
                After::Close,
                "server `{target}` sent `\\u{1}\\u{2}` instead of an SMTP reply to the connection"
                    .to_owned(),
            ),
        ];
        for (greeting, after, expected) in cases {
            let responder = Responder {
                greeting,
                after,
                ..Responder::default()
            };
            let (result, commands) = run(responder, &options()).await;
            assert_eq!(
                reason(&result),
                expected.replace("{target}", &result.target)
            );
            assert!(commands.is_empty(), "{commands:?}");
        }
    }

    /// Failures after the greeting: each names its step, and the server never sees mail.
    #[tokio::test]
    async fn later_steps_fail_naming_the_step() {
        let cases = [
            (
                Responder {
                    ehlo_reply: Some("550 5.7.1 go away"),
                    ..Responder::default()
                },
                "server `{target}` answered `550 5.7.1 go away` to EHLO",
            ),
            (
                Responder {
                    ehlo_reply: Some("250-mx1.mail.test\r\n250-PIPELINING"),
                    after: After::Converse,
                    ..Responder::default()
                },
                // The responder then waits for a command the probe never sends: the deadline.
                "no answer from `{target}` to EHLO within 1s",
            ),
            (
                Responder {
                    tls: TlsOffer::Injected("250 injected\r\n"),
                    ..Responder::default()
                },
                "`{target}` sent data after its `220` to STARTTLS, before the TLS handshake \
                 (STARTTLS command injection)",
            ),
            (
                Responder {
                    tls: TlsOffer::NoHandshake,
                    ..Responder::default()
                },
                "no TLS handshake with `{target}` within 1s",
            ),
        ];
        for (responder, expected) in cases {
            let server = responder.start().await;
            let result = probe(&server, &options(), Duration::from_secs(1)).await;
            assert_eq!(
                reason(&result),
                expected.replace("{target}", &result.target)
            );
        }
    }

    #[tokio::test]
    async fn a_server_that_closes_after_the_greeting_is_named() {
        let responder = Responder {
            after: After::CloseAtCommand,
            ..Responder::default()
        };
        let (result, _) = run(responder, &options()).await;
        assert_eq!(
            reason(&result),
            format!(
                "server `{}` closed the connection without answering EHLO",
                result.target
            )
        );
        assert_eq!(value(&result, "banner"), Some(220.0));
    }

    #[tokio::test]
    async fn a_silent_server_times_out_naming_the_step() {
        let server = Responder {
            greeting: String::new(),
            after: After::Hold,
            ..Responder::default()
        }
        .start()
        .await;
        let result = probe(&server, &options(), Duration::from_millis(300)).await;
        assert_eq!(
            reason(&result),
            format!(
                "no answer from `{MX}:{}` to the connection within 300ms",
                server.address.port()
            )
        );
    }

    #[tokio::test]
    async fn a_refused_connection_names_the_address() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let result = probe_smtp(MX, port, &options(), Duration::from_secs(2)).await;
        let expected = format!("connection to `127.0.0.1:{port}` ({MX}:{port}) failed: ");
        assert!(reason(&result).starts_with(&expected), "{result:?}");
    }

    #[tokio::test]
    async fn the_check_probes_with_its_host_name_as_helo_by_default() {
        let server = Responder::default().start().await;
        let check = config(&format!(
            "host = \"127.0.0.1\"\nport = {}\nrequire_starttls = false",
            server.address.port()
        ))
        .unwrap();
        let results = check.probe(Duration::from_secs(5)).await;
        assert_eq!(results.len(), 1);
        assert_eq!(results[0].outcome, Outcome::Pass, "{results:?}");
        let commands = server.commands();
        assert_eq!(commands[0], format!("EHLO {}", this_host_name()));
    }
}
