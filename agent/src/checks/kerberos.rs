//! The `kerberos` check: is a KDC alive and serving our realm. It sends a real AS-REQ (RFC 4120)
//! over UDP and TCP and takes a well-formed KRB-ERROR or AS-REP for the realm as proof of life.
//!
//! ```toml
//! [[checks]]
//! name = "kdc"
//! kind = "kerberos"
//! realm = "CORP.EXAMPLE.COM"
//! kdcs = ["dc1.corp.example.com", "10.0.0.10:88"]   # port 88 unless given
//! transports = ["udp", "tcp"]                      # default: both
//! principal = "estate-probe"                       # client name in the AS-REQ (the default)
//! principal_exists = false                         # true: KDC_ERR_C_PRINCIPAL_UNKNOWN fails
//! reply_timeout = "2s"                             # per KDC and transport (the default)
//! ```
//!
//! One result per KDC × transport, with the target `dc1.corp.example.com:88/udp`. Every pair is
//! probed at the same time, each within `reply_timeout`, so keep that below the check's `timeout`.
//!
//! # What counts as alive
//!
//! The request asks for a TGT (`krbtgt/REALM`) for `principal` without pre-authentication, so a
//! healthy KDC answers `KDC_ERR_PREAUTH_REQUIRED` (25) when the principal exists, or
//! `KDC_ERR_C_PRINCIPAL_UNKNOWN` (6) when it does not; an AS-REP (a principal without
//! pre-authentication) is just as good. A reply passes when it is well formed (pvno 5, the
//! message type its tag promises, every mandatory field present) and names our realm. Realms
//! are compared ignoring ASCII case: Active Directory treats them so and answers in upper case.
//!
//! Some errors prove a KDC is running but not that it serves the realm, and fail, naming the
//! code: `KDC_ERR_BAD_PVNO` (3), `KDC_ERR_S_PRINCIPAL_UNKNOWN` (7: no `krbtgt` for the realm),
//! `KDC_ERR_SVC_UNAVAILABLE` (29), `KRB_AP_ERR_SKEW` (37: this host's clock is too far off to
//! authenticate), `KRB_ERR_GENERIC` (60) and `KDC_ERR_WRONG_REALM` (68: the KDC does not serve the
//! realm, naming the realm it referred to). Every other error code passes: the KDC looked the
//! request up in the realm's database and answered about the client (expired, disabled, policy).
//!
//! `KDC_ERR_C_PRINCIPAL_UNKNOWN` alone proves less than it seems: MIT's KDC (1.20, tried by hand)
//! and Samba's answer it, naming the requested realm, for a realm they do not serve at all. So
//! with `principal_exists = true` (name an account of the realm, e.g. an AD service account)
//! that code fails, and a pass (usually `KDC_ERR_PREAUTH_REQUIRED`) proves the KDC knows the
//! realm's accounts.
//!
//! A KRB-ERROR carries no nonce, and an AS-REP's nonce is inside its encrypted part, which the
//! probe cannot read without the client's key. A reply is matched to the request by transport
//! instead (a connected UDP socket only takes datagrams from the KDC's address; a TCP reply
//! answers the request on its own connection) and by realm; the random nonce keeps every request
//! fresh, as a KDC expects.
//!
//! # Measurements (names are a contract with the collector)
//!
//! - `latency_seconds`: from sending the request to a complete reply (TCP: connect included),
//!   whenever a reply arrived, even one that fails.
//! - `krb_error_code`: the KRB-ERROR's code, when one came back.
//! - `kdc_time_skew_seconds`: the KRB-ERROR's `stime` minus this agent's clock at the midpoint of
//!   the exchange; positive when the KDC's clock is ahead. Kerberos tolerates 5 minutes by default.
//!
//! # The DER layer
//!
//! Hand-written, on purpose: the AS-REQ is a dozen fields and the replies are read field by
//! field, so a fuzzable parser we own (bounded, panic-free, with precise errors) is worth more
//! than an ASN.1 crate and its derive machinery. The reader never recurses: each message's shape
//! is walked by straight-line code, so nesting is bounded by the schema, and [`MAX_DEPTH`] guards
//! that bound anyway. Every length is checked against what remains of its container, replies
//! are read into at most [`MAX_REPLY_BYTES`], strings and lists are bounded. [`parse_kdc_reply`]
//! is pure and `pub` for a fuzz target.

use super::{Outcome, TargetResult, measurement};
use serde::Deserialize;
use std::fmt;
use std::net::{Ipv6Addr, SocketAddr};
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::Instant;

/// The kind's name in `kind = "kerberos"`.
pub const KIND: &str = "kerberos";

/// The Kerberos port, used when a KDC is given without one.
pub const DEFAULT_KDC_PORT: u16 = 88;

/// The client principal named in the AS-REQ unless the config says otherwise. It need not exist:
/// `KDC_ERR_C_PRINCIPAL_UNKNOWN` proves the KDC alive as well as any other answer.
pub const DEFAULT_PRINCIPAL: &str = "estate-probe";

/// The largest reply read, on either transport. A KRB-ERROR is a few hundred bytes and an AS-REP
/// a few kilobytes (more with a large PAC); a TCP length prefix announcing more is refused before
/// anything is allocated.
pub const MAX_REPLY_BYTES: usize = 64 * 1024;

/// How deep the reader may nest. The deepest path the parser walks (AS-REP → ticket → sname →
/// name-string → string) is 12 levels.
pub const MAX_DEPTH: usize = 16;

/// The longest realm or principal component accepted, in bytes.
const MAX_NAME_BYTES: usize = 255;
/// The most components a principal name may have, in config and in replies.
const MAX_NAME_COMPONENTS: usize = 16;
/// The longest string read from a reply (e-text), in bytes.
const MAX_STRING_BYTES: usize = 1024;
/// The most KDCs one check may list.
const MAX_KDCS: usize = 64;
/// How much of a string from the network goes into a reason.
const MAX_REASON_CHARS: usize = 120;

/// Encryption types offered: aes256-cts-hmac-sha1-96, aes128-cts-hmac-sha1-96, rc4-hmac. Offering
/// RC4 last lets an old AD answer too; the probe never uses a key.
pub const OFFERED_ETYPES: [i32; 3] = [18, 17, 23];

/// How long each KDC has to answer on each transport, unless the config says otherwise.
pub fn default_reply_timeout() -> Duration {
    Duration::from_secs(2)
}

fn default_transports() -> Vec<KdcTransport> {
    vec![KdcTransport::Udp, KdcTransport::Tcp]
}

fn default_principal() -> String {
    DEFAULT_PRINCIPAL.to_owned()
}

/// How a request reaches a KDC (RFC 4120 §7.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KdcTransport {
    /// One datagram each way.
    Udp,
    /// A connection per request, each message preceded by its length in 4 big-endian bytes.
    Tcp,
}

impl KdcTransport {
    /// `udp` or `tcp`, as in the config and in targets.
    pub fn as_str(self) -> &'static str {
        match self {
            KdcTransport::Udp => "udp",
            KdcTransport::Tcp => "tcp",
        }
    }
}

impl fmt::Display for KdcTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `kerberos` check's own fields.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KerberosCheckConfig {
    /// The realm to ask for, as its KDCs spell it (`CORP.EXAMPLE.COM`).
    pub realm: String,
    /// The KDCs to probe: `host`, `host:port`, `[v6]:port` or a bare IPv6 address; port 88
    /// unless given.
    pub kdcs: Vec<String>,
    /// The transports to probe each KDC over: `udp`, `tcp` or both (the default).
    #[serde(default = "default_transports")]
    pub transports: Vec<KdcTransport>,
    /// The client principal named in the AS-REQ, without realm (`estate-probe`, `svc/host`). It
    /// need not exist; no password is ever sent.
    #[serde(default = "default_principal")]
    pub principal: String,
    /// Set when `principal` exists in the realm (any AD user or service account): then
    /// `KDC_ERR_C_PRINCIPAL_UNKNOWN` fails, so a pass proves the KDC serves the realm's accounts
    /// and not merely that it answers. Default false.
    #[serde(default)]
    pub principal_exists: bool,
    /// How long each KDC has to answer on each transport (TCP: connect included); resolving its
    /// name may take as long again. Keep twice this below the check's `timeout`, which bounds
    /// the whole check.
    #[serde(default = "default_reply_timeout", with = "crate::config::duration")]
    pub reply_timeout: Duration,
}

impl KerberosCheckConfig {
    /// Checks the realm, principal, KDC addresses and transports. Pure: nothing is resolved.
    pub fn validate(&self) -> Result<KerberosCheck, String> {
        let query = KdcQuery::new(&self.realm, &self.principal, self.principal_exists)?;
        if self.kdcs.is_empty() {
            return Err("`kdcs` is empty, name at least one KDC".to_owned());
        }
        if self.kdcs.len() > MAX_KDCS {
            return Err(format!(
                "`kdcs` lists `{}` KDCs, at most `{MAX_KDCS}` are allowed",
                self.kdcs.len()
            ));
        }
        let mut kdcs: Vec<(String, u16)> = Vec::with_capacity(self.kdcs.len());
        for entry in &self.kdcs {
            let kdc = parse_kdc(entry)?;
            if kdcs.contains(&kdc) {
                return Err(format!("kdc `{entry}` is listed twice"));
            }
            kdcs.push(kdc);
        }
        if self.transports.is_empty() {
            return Err("`transports` is empty, use `udp`, `tcp` or both".to_owned());
        }
        let mut transports = Vec::with_capacity(2);
        for &transport in &self.transports {
            if transports.contains(&transport) {
                return Err(format!("transport `{transport}` is listed twice"));
            }
            transports.push(transport);
        }
        if self.reply_timeout.is_zero() {
            return Err("`reply_timeout` `0s` must be more than zero".to_owned());
        }
        Ok(KerberosCheck {
            query,
            kdcs,
            transports,
            reply_timeout: self.reply_timeout,
        })
    }
}

/// A realm is 1 to 255 bytes without spaces, control characters or `@`.
fn validate_realm(realm: &str) -> Result<(), String> {
    if realm.is_empty() {
        return Err("`realm` is empty".to_owned());
    }
    if realm.len() > MAX_NAME_BYTES {
        return Err(format!(
            "realm `{realm}` is longer than {MAX_NAME_BYTES} bytes"
        ));
    }
    if realm
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '@')
    {
        return Err(format!(
            "realm `{realm}` contains spaces, control characters or `@`"
        ));
    }
    Ok(())
}

/// Splits `name` or `service/host` into components.
fn parse_principal(principal: &str) -> Result<Vec<String>, String> {
    if principal.is_empty() {
        return Err("`principal` is empty".to_owned());
    }
    if principal.contains('@') {
        return Err(format!(
            "principal `{principal}` contains `@`, give the realm in `realm`"
        ));
    }
    if principal
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "principal `{principal}` contains spaces or control characters"
        ));
    }
    let components: Vec<String> = principal.split('/').map(str::to_owned).collect();
    if components.len() > MAX_NAME_COMPONENTS {
        return Err(format!(
            "principal `{principal}` has more than {MAX_NAME_COMPONENTS} components"
        ));
    }
    if components
        .iter()
        .any(|c| c.is_empty() || c.len() > MAX_NAME_BYTES)
    {
        return Err(format!(
            "principal `{principal}` has an empty component or one longer than \
             {MAX_NAME_BYTES} bytes"
        ));
    }
    Ok(components)
}

/// Parses `host`, `host:port`, `[v6]:port`, `[v6]` or a bare IPv6 address.
fn parse_kdc(entry: &str) -> Result<(String, u16), String> {
    let malformed =
        || format!("kdc `{entry}` is not `host`, `host:port` or `[v6]:port` (or a bare IPv6)");
    let (host, port) = if entry.parse::<Ipv6Addr>().is_ok() {
        (entry, None)
    } else if let Some(rest) = entry.strip_prefix('[') {
        match rest.split_once(']') {
            Some((host, "")) => (host, None),
            Some((host, port)) => (host, Some(port.strip_prefix(':').ok_or_else(malformed)?)),
            None => return Err(malformed()),
        }
    } else {
        match entry.rsplit_once(':') {
            Some((host, _)) if host.contains(':') => return Err(malformed()),
            Some((host, port)) => (host, Some(port)),
            None => (entry, None),
        }
    };
    let port = match port {
        None => DEFAULT_KDC_PORT,
        Some(port) => port
            .parse::<u16>()
            .map_err(|_| format!("kdc `{entry}` has an invalid port `{port}`"))?,
    };
    if host.is_empty() {
        return Err(format!("kdc `{entry}` has an empty host"));
    }
    if host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "kdc `{entry}` contains spaces or control characters"
        ));
    }
    if port == 0 {
        return Err(format!("kdc `{entry}`: port `0` is not a port to send to"));
    }
    Ok((host.to_owned(), port))
}

/// What a probe asks a KDC: a TGT for `principal` in `realm`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KdcQuery {
    realm: String,
    principal: Vec<String>,
    principal_exists: bool,
}

impl KdcQuery {
    /// Checks the realm and the principal (`name` or `service/host`, without realm). With
    /// `principal_exists`, `KDC_ERR_C_PRINCIPAL_UNKNOWN` fails instead of passing.
    pub fn new(realm: &str, principal: &str, principal_exists: bool) -> Result<KdcQuery, String> {
        validate_realm(realm)?;
        Ok(KdcQuery {
            realm: realm.to_owned(),
            principal: parse_principal(principal)?,
            principal_exists,
        })
    }

    /// The realm asked for.
    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// `name@REALM`, as in reasons.
    fn principal_at_realm(&self) -> String {
        format!("{}@{}", self.principal.join("/"), self.realm)
    }
}

/// A ready `kerberos` check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KerberosCheck {
    query: KdcQuery,
    kdcs: Vec<(String, u16)>,
    transports: Vec<KdcTransport>,
    reply_timeout: Duration,
}

impl KerberosCheck {
    /// The realm: what a result without a target of its own (the check's timeout) is about.
    pub fn target(&self) -> String {
        self.query.realm.clone()
    }

    /// Probes every KDC over every transport at once; one result per pair, in config order.
    pub async fn probe(&self) -> Vec<TargetResult> {
        let mut probes = tokio::task::JoinSet::new();
        let mut order = Vec::new();
        for (host, port) in &self.kdcs {
            for &transport in &self.transports {
                let index = order.len();
                order.push(kdc_target(host, *port, transport));
                let (host, port) = (host.clone(), *port);
                let query = self.query.clone();
                let reply_timeout = self.reply_timeout;
                probes.spawn(async move {
                    let result =
                        probe_kdc_with(&host, port, &query, transport, reply_timeout).await;
                    (index, result)
                });
            }
        }
        let mut results: Vec<Option<TargetResult>> = vec![None; order.len()];
        while let Some(joined) = probes.join_next().await {
            // A probe never panics; were one to, its slot below says so instead of vanishing.
            if let Ok((index, result)) = joined
                && let Some(slot) = results.get_mut(index)
            {
                *slot = Some(result);
            }
        }
        results
            .into_iter()
            .zip(order)
            .map(|(result, target)| {
                result.unwrap_or_else(|| TargetResult {
                    target,
                    outcome: Outcome::Fail {
                        reason: "the probe stopped unexpectedly".to_owned(),
                    },
                    measurements: Vec::new(),
                })
            })
            .collect()
    }
}

/// `host:port/transport`, with brackets around an IPv6 address.
pub fn kdc_target(host: &str, port: u16, transport: KdcTransport) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}/{transport}")
    } else {
        format!("{host}:{port}/{transport}")
    }
}

/// Probes one KDC over one transport with an AS-REQ for `krbtgt/realm` naming the client
/// [`DEFAULT_PRINCIPAL`], and judges the reply as described in the module docs. An invalid
/// `realm` (empty, spaces, `@`, over 255 bytes) fails without sending anything.
///
/// `host` is a name or an IP address (IPv6 without brackets); it is resolved here, within
/// `reply_timeout`, which then bounds the exchange itself (TCP: connect included). The result's
/// target is `host:port/transport` ([`kdc_target`]); it passes or fails with the measurements
/// `latency_seconds`, `krb_error_code` and `kdc_time_skew_seconds`. Never panics; every failure
/// is an [`Outcome::Fail`] with a reason.
pub async fn probe_kdc(
    host: &str,
    port: u16,
    realm: &str,
    transport: KdcTransport,
    reply_timeout: Duration,
) -> TargetResult {
    match KdcQuery::new(realm, DEFAULT_PRINCIPAL, false) {
        Ok(query) => probe_kdc_with(host, port, &query, transport, reply_timeout).await,
        Err(reason) => TargetResult {
            target: kdc_target(host, port, transport),
            outcome: Outcome::Fail { reason },
            measurements: Vec::new(),
        },
    }
}

/// [`probe_kdc`] with a chosen client principal: for a caller that knows an account of the
/// realm, `KdcQuery::new(realm, "svc-estate", true)` makes a pass prove the KDC serves it.
pub async fn probe_kdc_with(
    host: &str,
    port: u16,
    query: &KdcQuery,
    transport: KdcTransport,
    reply_timeout: Duration,
) -> TargetResult {
    let target = kdc_target(host, port, transport);
    let fail = |reason: String| TargetResult {
        target: target.clone(),
        outcome: Outcome::Fail { reason },
        measurements: Vec::new(),
    };
    let waited = humantime::format_duration(reply_timeout);
    let address =
        match tokio::time::timeout(reply_timeout, tokio::net::lookup_host((host, port))).await {
            Err(_elapsed) => return fail(format!("cannot resolve `{host}` within {waited}")),
            Ok(Err(error)) => return fail(format!("cannot resolve `{host}`: {error}")),
            Ok(Ok(mut addresses)) => match addresses.next() {
                Some(address) => address,
                None => return fail(format!("`{host}` resolved to no address")),
            },
        };

    let started_wall = SystemTime::now();
    let request = encode_as_req(&AsRequest {
        realm: &query.realm,
        principal: &query.principal,
        nonce: random_nonce(),
        till_unix_seconds: unix_seconds(started_wall).saturating_add(24 * 3600),
    });
    let started = Instant::now();
    let deadline = started + reply_timeout;
    let exchanged = match transport {
        KdcTransport::Udp => exchange_udp(address, &request, deadline).await,
        KdcTransport::Tcp => exchange_tcp(address, &request, deadline).await,
    };
    let reply = match exchanged {
        Ok(reply) => reply,
        Err(error) => return fail(error.reason(&target, &waited)),
    };
    let latency = started.elapsed();
    let midpoint = started_wall + latency / 2;
    judge_reply(&target, query, &reply, latency, midpoint)
}

/// A nonce from the OS-seeded generator, masked to 31 bits: some KDCs (old Windows, Java) read
/// the `UInt32` as a signed 32-bit number.
fn random_nonce() -> u32 {
    rand::random::<u32>() & 0x7fff_ffff
}

/// Why an exchange with a KDC produced no reply to parse.
#[derive(Debug)]
enum ExchangeError {
    ConnectTimeout,
    ReplyTimeout,
    Refused,
    Io(&'static str, std::io::Error),
    Closed,
    Truncated { received: usize, announced: usize },
    TooLong { announced: u64 },
}

impl ExchangeError {
    fn reason(&self, target: &str, waited: &impl fmt::Display) -> String {
        match self {
            ExchangeError::ConnectTimeout => {
                format!("could not connect to `{target}` within {waited}")
            }
            ExchangeError::ReplyTimeout => format!("no answer from `{target}` within {waited}"),
            ExchangeError::Refused => format!("connection refused by `{target}`"),
            ExchangeError::Io(stage, error) => format!("{stage} `{target}` failed: {error}"),
            ExchangeError::Closed => {
                format!("`{target}` closed the connection without a reply")
            }
            ExchangeError::Truncated {
                received,
                announced,
            } => {
                format!("truncated reply from `{target}` ({received} bytes, {announced} announced)")
            }
            ExchangeError::TooLong { announced } => format!(
                "reply from `{target}` announces {announced} bytes, more than the \
                 {MAX_REPLY_BYTES} accepted"
            ),
        }
    }

    fn io(stage: &'static str, error: std::io::Error) -> Self {
        if error.kind() == std::io::ErrorKind::ConnectionRefused {
            ExchangeError::Refused
        } else {
            ExchangeError::Io(stage, error)
        }
    }
}

/// Sends the request in one datagram from a socket connected to the KDC (so only its replies are
/// taken) and returns the first datagram back. A refusal (ICMP port unreachable) surfaces as
/// `ConnectionRefused` on a connected socket.
async fn exchange_udp(
    address: SocketAddr,
    request: &[u8],
    deadline: Instant,
) -> Result<Vec<u8>, ExchangeError> {
    let local: SocketAddr = if address.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local)
        .await
        .map_err(|e| ExchangeError::io("opening a UDP socket for", e))?;
    socket
        .connect(address)
        .await
        .map_err(|e| ExchangeError::io("connecting to", e))?;
    socket
        .send(request)
        .await
        .map_err(|e| ExchangeError::io("sending to", e))?;
    // One byte more than accepted, so an oversized datagram is told from a full one.
    let mut buffer = vec![0; MAX_REPLY_BYTES + 1];
    let received = tokio::time::timeout_at(deadline, socket.recv(&mut buffer))
        .await
        .map_err(|_| ExchangeError::ReplyTimeout)?
        .map_err(|e| ExchangeError::io("receiving from", e))?;
    if received > MAX_REPLY_BYTES {
        return Err(ExchangeError::TooLong {
            announced: received as u64,
        });
    }
    buffer.truncate(received);
    Ok(buffer)
}

/// Connects, sends the length-prefixed request and reads one length-prefixed reply, refusing a
/// length above [`MAX_REPLY_BYTES`] before allocating it.
async fn exchange_tcp(
    address: SocketAddr,
    request: &[u8],
    deadline: Instant,
) -> Result<Vec<u8>, ExchangeError> {
    let mut stream = tokio::time::timeout_at(deadline, TcpStream::connect(address))
        .await
        .map_err(|_| ExchangeError::ConnectTimeout)?
        .map_err(|e| ExchangeError::io("connecting to", e))?;
    let exchange = async {
        let length = u32::try_from(request.len()).unwrap_or(u32::MAX);
        let mut framed = Vec::with_capacity(4 + request.len());
        framed.extend_from_slice(&length.to_be_bytes());
        framed.extend_from_slice(request);
        stream
            .write_all(&framed)
            .await
            .map_err(|e| ExchangeError::io("sending to", e))?;
        let mut prefix = [0; 4];
        let received = read_up_to(&mut stream, &mut prefix).await?;
        if received == 0 {
            return Err(ExchangeError::Closed);
        }
        if received < prefix.len() {
            return Err(ExchangeError::Truncated {
                received,
                announced: prefix.len(),
            });
        }
        let announced = u32::from_be_bytes(prefix);
        let length = usize::try_from(announced)
            .ok()
            .filter(|&length| length <= MAX_REPLY_BYTES)
            .ok_or(ExchangeError::TooLong {
                announced: u64::from(announced),
            })?;
        let mut reply = vec![0; length];
        let received = read_up_to(&mut stream, &mut reply).await?;
        if received < length {
            return Err(ExchangeError::Truncated {
                received,
                announced: length,
            });
        }
        Ok(reply)
    };
    tokio::time::timeout_at(deadline, exchange)
        .await
        .map_err(|_| ExchangeError::ReplyTimeout)?
}

/// Fills `buffer` unless the peer closes first; returns how much was read.
async fn read_up_to(stream: &mut TcpStream, buffer: &mut [u8]) -> Result<usize, ExchangeError> {
    let mut filled = 0;
    while filled < buffer.len() {
        let Some(rest) = buffer.get_mut(filled..) else {
            break;
        };
        match stream.read(rest).await {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(error) => return Err(ExchangeError::io("receiving from", error)),
        }
    }
    Ok(filled)
}

/// Turns a reply into the target's result (see the module docs for what passes); `midpoint`
/// is this host's time halfway through the exchange, for the skew. Pure: the fuzz target
/// `kerberos_reply` feeds it arbitrary bytes.
pub fn judge_reply(
    target: &str,
    query: &KdcQuery,
    reply: &[u8],
    latency: Duration,
    midpoint: SystemTime,
) -> TargetResult {
    let realm = query.realm();
    let mut measurements = vec![measurement("latency_seconds", latency.as_secs_f64())];
    let parsed = parse_kdc_reply(reply);
    let outcome = match parsed {
        Err(error) => Outcome::Fail {
            reason: error.reason(target, reply.len()),
        },
        Ok(KdcReply::AsRep(reply)) => {
            if reply.crealm.eq_ignore_ascii_case(realm) {
                Outcome::Pass
            } else {
                Outcome::Fail {
                    reason: format!(
                        "AS-REP from `{target}` names realm `{}`, expected `{realm}`",
                        printable(&reply.crealm)
                    ),
                }
            }
        }
        Ok(KdcReply::Error(error)) => {
            measurements.push(measurement("krb_error_code", f64::from(error.error_code)));
            let kdc_time = error.stime_unix as f64 + f64::from(error.susec) / 1e6;
            let agent_time = unix_seconds_f64(midpoint);
            measurements.push(measurement("kdc_time_skew_seconds", kdc_time - agent_time));
            judge_error(target, query, &error)
        }
    };
    TargetResult {
        target: target.to_owned(),
        outcome,
        measurements,
    }
}

/// Whether a KRB-ERROR proves the KDC serves the realm.
fn judge_error(target: &str, query: &KdcQuery, error: &KrbError) -> Outcome {
    let realm = query.realm();
    let code = error.error_code;
    let named = match error_code_name(code) {
        Some(name) => format!("{name} ({code})"),
        None => format!("error {code}"),
    };
    let e_text = match &error.e_text {
        Some(text) if !text.is_empty() => format!(" (e-text `{}`)", printable(text)),
        _ => String::new(),
    };
    let reason = match code {
        KDC_ERR_WRONG_REALM => {
            let referral = match &error.crealm {
                Some(crealm) if !crealm.eq_ignore_ascii_case(realm) => {
                    format!(", it refers the client to realm `{}`", printable(crealm))
                }
                _ => String::new(),
            };
            format!("{named} from `{target}`: it does not serve realm `{realm}`{referral}{e_text}")
        }
        KDC_ERR_BAD_PVNO
        | KDC_ERR_S_PRINCIPAL_UNKNOWN
        | KDC_ERR_SVC_UNAVAILABLE
        | KRB_AP_ERR_SKEW
        | KRB_ERR_GENERIC => {
            format!("{named} from `{target}` for realm `{realm}`{e_text}")
        }
        KDC_ERR_C_PRINCIPAL_UNKNOWN if query.principal_exists => format!(
            "{named} from `{target}`: principal `{}` is unknown, though `principal_exists` \
             says it exists",
            query.principal_at_realm()
        ),
        _ if !error.realm.eq_ignore_ascii_case(realm) => format!(
            "KRB-ERROR from `{target}` names realm `{}`, expected `{realm}`",
            printable(&error.realm)
        ),
        _ => return Outcome::Pass,
    };
    Outcome::Fail { reason }
}

/// A string from the network, fit for a reason: bounded, without control characters or
/// backticks.
fn printable(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(MAX_REASON_CHARS)
        .map(|c| match c {
            '`' => '\'',
            c if c.is_control() => '\u{fffd}',
            c => c,
        })
        .collect();
    if text.chars().nth(MAX_REASON_CHARS).is_some() {
        out.push('…');
    }
    out
}

/// KDC_ERR_BAD_PVNO: the KDC does not speak our protocol version.
pub const KDC_ERR_BAD_PVNO: i32 = 3;
/// KDC_ERR_C_PRINCIPAL_UNKNOWN: the client is not in the realm's database (alive).
pub const KDC_ERR_C_PRINCIPAL_UNKNOWN: i32 = 6;
/// KDC_ERR_S_PRINCIPAL_UNKNOWN: here, the realm has no `krbtgt`.
pub const KDC_ERR_S_PRINCIPAL_UNKNOWN: i32 = 7;
/// KDC_ERR_PREAUTH_REQUIRED: the client exists and must pre-authenticate (alive).
pub const KDC_ERR_PREAUTH_REQUIRED: i32 = 25;
/// KDC_ERR_SVC_UNAVAILABLE: the KDC says it cannot serve now.
pub const KDC_ERR_SVC_UNAVAILABLE: i32 = 29;
/// KRB_AP_ERR_SKEW: the clocks differ by more than the KDC tolerates.
pub const KRB_AP_ERR_SKEW: i32 = 37;
/// KRB_ERR_RESPONSE_TOO_BIG: retry over TCP (alive).
pub const KRB_ERR_RESPONSE_TOO_BIG: i32 = 52;
/// KRB_ERR_GENERIC: an unspecified failure inside the KDC.
pub const KRB_ERR_GENERIC: i32 = 60;
/// KDC_ERR_WRONG_REALM: the KDC does not serve the realm asked for.
pub const KDC_ERR_WRONG_REALM: i32 = 68;

/// The RFC 4120 name of the error codes a probe is likely to meet.
pub fn error_code_name(code: i32) -> Option<&'static str> {
    Some(match code {
        1 => "KDC_ERR_NAME_EXP",
        2 => "KDC_ERR_SERVICE_EXP",
        KDC_ERR_BAD_PVNO => "KDC_ERR_BAD_PVNO",
        KDC_ERR_C_PRINCIPAL_UNKNOWN => "KDC_ERR_C_PRINCIPAL_UNKNOWN",
        KDC_ERR_S_PRINCIPAL_UNKNOWN => "KDC_ERR_S_PRINCIPAL_UNKNOWN",
        12 => "KDC_ERR_POLICY",
        13 => "KDC_ERR_BADOPTION",
        14 => "KDC_ERR_ETYPE_NOSUPP",
        18 => "KDC_ERR_CLIENT_REVOKED",
        23 => "KDC_ERR_KEY_EXPIRED",
        24 => "KDC_ERR_PREAUTH_FAILED",
        KDC_ERR_PREAUTH_REQUIRED => "KDC_ERR_PREAUTH_REQUIRED",
        KDC_ERR_SVC_UNAVAILABLE => "KDC_ERR_SVC_UNAVAILABLE",
        KRB_AP_ERR_SKEW => "KRB_AP_ERR_SKEW",
        KRB_ERR_RESPONSE_TOO_BIG => "KRB_ERR_RESPONSE_TOO_BIG",
        KRB_ERR_GENERIC => "KRB_ERR_GENERIC",
        KDC_ERR_WRONG_REALM => "KDC_ERR_WRONG_REALM",
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------------
// Messages

/// What a KDC answered, as far as it can be read without a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KdcReply {
    /// `KRB-ERROR` (application 30).
    Error(KrbError),
    /// `AS-REP` (application 11).
    AsRep(AsRep),
}

/// A `PrincipalName`: its type and components.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrincipalName {
    pub name_type: i32,
    pub components: Vec<String>,
}

/// A `KRB-ERROR`'s fields (RFC 4120 §5.9.1). Strings are decoded lossily as UTF-8.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KrbError {
    /// `ctime` as Unix seconds, when the KDC echoed one.
    pub ctime_unix: Option<i64>,
    pub cusec: Option<u32>,
    /// The KDC's clock (`stime`) as Unix seconds.
    pub stime_unix: i64,
    /// Microseconds of `stime`.
    pub susec: u32,
    pub error_code: i32,
    pub crealm: Option<String>,
    pub cname: Option<PrincipalName>,
    /// The realm of the server named in `sname`.
    pub realm: String,
    pub sname: PrincipalName,
    pub e_text: Option<String>,
    pub e_data: Option<Vec<u8>>,
}

/// The clear fields of an `AS-REP` (RFC 4120 §5.4.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsRep {
    pub crealm: String,
    pub cname: PrincipalName,
    /// The ticket's realm and server name.
    pub ticket_realm: String,
    pub ticket_sname: PrincipalName,
    /// The encryption type of the reply's encrypted part.
    pub enc_part_etype: i32,
}

/// Why bytes are not a KDC reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyError {
    /// The message ends before its outer length says it does.
    Truncated,
    /// The first byte is not a Kerberos application tag.
    NotKerberos { first_byte: u8 },
    /// A Kerberos message, but neither a KRB-ERROR nor an AS-REP.
    UnexpectedMessage { application_tag: u8 },
    /// Anything else wrong inside: the field and what is wrong with it.
    Malformed(String),
}

impl ReplyError {
    /// The reason of a failed check for a reply of `length` bytes from `target`.
    pub fn reason(&self, target: &str, length: usize) -> String {
        match self {
            ReplyError::Truncated => format!("truncated reply from `{target}` ({length} bytes)"),
            ReplyError::NotKerberos { first_byte } => format!(
                "reply from `{target}` is not a Kerberos message (first byte 0x{first_byte:02x})"
            ),
            ReplyError::UnexpectedMessage { application_tag } => format!(
                "reply from `{target}` is Kerberos message type `{application_tag}`, not a \
                 KRB-ERROR or AS-REP"
            ),
            ReplyError::Malformed(detail) => {
                format!("malformed Kerberos reply from `{target}`: {detail}")
            }
        }
    }
}

impl fmt::Display for ReplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplyError::Truncated => f.write_str("truncated message"),
            ReplyError::NotKerberos { first_byte } => {
                write!(f, "not a Kerberos message (first byte 0x{first_byte:02x})")
            }
            ReplyError::UnexpectedMessage { application_tag } => write!(
                f,
                "Kerberos message type `{application_tag}`, not a KRB-ERROR or AS-REP"
            ),
            ReplyError::Malformed(detail) => f.write_str(detail),
        }
    }
}

impl std::error::Error for ReplyError {}

/// Message types, which are also their application tags.
const MSG_AS_REQ: u8 = 10;
const MSG_AS_REP: u8 = 11;
const MSG_KRB_ERROR: u8 = 30;
const APPLICATION_TICKET: u8 = 1;

/// NT-PRINCIPAL and NT-SRV-INST name types.
pub const NT_PRINCIPAL: i32 = 1;
pub const NT_SRV_INST: i32 = 2;

/// Reads a KDC's reply: a KRB-ERROR or an AS-REP, well formed, with nothing after it. Pure,
/// bounded and panic-free on any input.
pub fn parse_kdc_reply(bytes: &[u8]) -> Result<KdcReply, ReplyError> {
    let Some(&first_byte) = bytes.first() else {
        return Err(ReplyError::Truncated);
    };
    // Kerberos messages are constructed application tags in the low-tag-number form.
    if first_byte & 0xe0 != der::APPLICATION | der::CONSTRUCTED || first_byte & 0x1f == 0x1f {
        return Err(ReplyError::NotKerberos { first_byte });
    }
    let application_tag = first_byte & 0x1f;
    if application_tag != MSG_KRB_ERROR && application_tag != MSG_AS_REP {
        return Err(ReplyError::UnexpectedMessage { application_tag });
    }
    let mut outer = der::Reader::top(bytes);
    let message = outer.read_any("message").map_err(|error| match error {
        der::Error::Overrun(_) => ReplyError::Truncated,
        der::Error::Malformed(detail) => ReplyError::Malformed(detail),
    })?;
    if !outer.is_empty() {
        return Err(ReplyError::Malformed(format!(
            "{} bytes after the message",
            outer.remaining()
        )));
    }
    let body = outer.enter(message.contents);
    let parsed = if application_tag == MSG_KRB_ERROR {
        parse_krb_error(body).map(KdcReply::Error)
    } else {
        parse_as_rep(body).map(KdcReply::AsRep)
    };
    parsed.map_err(|error| ReplyError::Malformed(error.to_string()))
}

fn parse_krb_error(body: der::Reader<'_>) -> Result<KrbError, der::Error> {
    let mut fields = body.sequence("KRB-ERROR")?;
    check_pvno(&mut fields, 0)?;
    check_msg_type(&mut fields, 1, MSG_KRB_ERROR)?;
    let ctime_unix = fields.optional(2)?.map(|f| f.time("ctime")).transpose()?;
    let cusec = fields
        .optional(3)?
        .map(|f| f.microseconds("cusec"))
        .transpose()?;
    let stime_unix = fields.required(4, "stime")?.time("stime")?;
    let susec = fields.required(5, "susec")?.microseconds("susec")?;
    let error_code = fields.required(6, "error-code")?.int32("error-code")?;
    let crealm = fields
        .optional(7)?
        .map(|f| f.string("crealm"))
        .transpose()?;
    let cname = fields
        .optional(8)?
        .map(|f| f.principal_name("cname"))
        .transpose()?;
    let realm = fields.required(9, "realm")?.string("realm")?;
    let sname = fields.required(10, "sname")?.principal_name("sname")?;
    let e_text = fields
        .optional(11)?
        .map(|f| f.string("e-text"))
        .transpose()?;
    let e_data = fields
        .optional(12)?
        .map(|f| f.octet_string("e-data").map(<[u8]>::to_vec))
        .transpose()?;
    Ok(KrbError {
        ctime_unix,
        cusec,
        stime_unix,
        susec,
        error_code,
        crealm,
        cname,
        realm,
        sname,
        e_text,
        e_data,
    })
}

fn parse_as_rep(body: der::Reader<'_>) -> Result<AsRep, der::Error> {
    let mut fields = body.sequence("AS-REP")?;
    check_pvno(&mut fields, 0)?;
    check_msg_type(&mut fields, 1, MSG_AS_REP)?;
    // padata [2] is optional and not needed: skipped whole.
    let _padata = fields.optional(2)?;
    let crealm = fields.required(3, "crealm")?.string("crealm")?;
    let cname = fields.required(4, "cname")?.principal_name("cname")?;
    let ticket = fields.required(5, "ticket")?;
    let ticket = ticket.application(APPLICATION_TICKET, "ticket")?;
    let mut ticket = ticket.sequence("ticket")?;
    let tkt_vno = ticket.required(0, "tkt-vno")?.integer("tkt-vno")?;
    if tkt_vno != 5 {
        return Err(der::Error::Malformed(format!(
            "`tkt-vno` is `{tkt_vno}`, expected `5`"
        )));
    }
    let ticket_realm = ticket.required(1, "ticket realm")?.string("ticket realm")?;
    let ticket_sname = ticket
        .required(2, "ticket sname")?
        .principal_name("ticket sname")?;
    let mut enc_part = fields.required(6, "enc-part")?.sequence("enc-part")?;
    let enc_part_etype = enc_part.required(0, "etype")?.int32("etype")?;
    let _kvno = enc_part.optional(1)?;
    let _cipher = enc_part.required(2, "cipher")?.octet_string("cipher")?;
    Ok(AsRep {
        crealm,
        cname,
        ticket_realm,
        ticket_sname,
        enc_part_etype,
    })
}

fn check_pvno(fields: &mut der::Fields<'_>, number: u8) -> Result<(), der::Error> {
    let pvno = fields.required(number, "pvno")?.integer("pvno")?;
    if pvno != 5 {
        return Err(der::Error::Malformed(format!(
            "`pvno` is `{pvno}`, expected `5`"
        )));
    }
    Ok(())
}

fn check_msg_type(
    fields: &mut der::Fields<'_>,
    number: u8,
    expected: u8,
) -> Result<(), der::Error> {
    let msg_type = fields.required(number, "msg-type")?.integer("msg-type")?;
    if msg_type != i64::from(expected) {
        return Err(der::Error::Malformed(format!(
            "`msg-type` is `{msg_type}`, expected `{expected}`"
        )));
    }
    Ok(())
}

/// The fields of an AS-REQ the probe sends.
#[derive(Debug, Clone, Copy)]
pub struct AsRequest<'a> {
    /// The realm, also the instance of the requested `krbtgt/REALM`.
    pub realm: &'a str,
    /// The client principal's components (NT-PRINCIPAL).
    pub principal: &'a [String],
    pub nonce: u32,
    /// The requested ticket's end time, Unix seconds.
    pub till_unix_seconds: i64,
}

/// Encodes an AS-REQ (RFC 4120 §5.4.1) for a TGT: pvno 5, msg-type 10, no padata, no KDC
/// options, `cname`, `realm`, `sname` `krbtgt/REALM`, `till`, `nonce` and [`OFFERED_ETYPES`].
pub fn encode_as_req(request: &AsRequest<'_>) -> Vec<u8> {
    use der::encode as e;
    let realm = request.realm.to_owned();
    let body = e::sequence(&[
        // KDCOptions: a 32-bit BIT STRING (no unused bits), no option set.
        e::explicit(0, &e::bit_string_32(0)),
        e::explicit(1, &e::principal_name(NT_PRINCIPAL, request.principal)),
        e::explicit(2, &e::general_string(request.realm)),
        e::explicit(
            3,
            &e::principal_name(NT_SRV_INST, &["krbtgt".to_owned(), realm]),
        ),
        e::explicit(5, &e::kerberos_time(request.till_unix_seconds)),
        e::explicit(7, &e::integer(i64::from(request.nonce))),
        e::explicit(
            8,
            &e::sequence(
                &OFFERED_ETYPES
                    .iter()
                    .map(|&etype| e::integer(i64::from(etype)))
                    .collect::<Vec<_>>(),
            ),
        ),
    ]);
    let request = e::sequence(&[
        e::explicit(1, &e::integer(5)),
        e::explicit(2, &e::integer(i64::from(MSG_AS_REQ))),
        e::explicit(4, &body),
    ]);
    e::application(MSG_AS_REQ, &request)
}

// ---------------------------------------------------------------------------------------------
// Time

/// Seconds since the Unix epoch (negative before 1970).
fn unix_seconds(time: SystemTime) -> i64 {
    match time.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_secs()).map_or(i64::MIN, |s| -s),
    }
}

fn unix_seconds_f64(time: SystemTime) -> f64 {
    match time.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(after) => after.as_secs_f64(),
        Err(before) => -before.duration().as_secs_f64(),
    }
}

/// `YYYYMMDDHHMMSSZ`, the only form of KerberosTime; clamped to years 1970 to 9999.
fn format_kerberos_time(unix_seconds: i64) -> String {
    const LAST: i64 = 253_402_300_799; // 9999-12-31T23:59:59Z
    let seconds = unix_seconds.clamp(0, LAST);
    let (year, month, day) = crate::calendar::civil_from_days(seconds.div_euclid(86_400));
    let of_day = seconds.rem_euclid(86_400);
    format!(
        "{year:04}{month:02}{day:02}{:02}{:02}{:02}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

/// Reads `YYYYMMDDHHMMSSZ` into Unix seconds, checking every field's range.
fn parse_kerberos_time(text: &[u8]) -> Option<i64> {
    let [
        y0,
        y1,
        y2,
        y3,
        mo0,
        mo1,
        d0,
        d1,
        h0,
        h1,
        mi0,
        mi1,
        s0,
        s1,
        b'Z',
    ] = *text
    else {
        return None;
    };
    let digits = |bytes: &[u8]| -> Option<i64> {
        bytes.iter().try_fold(0_i64, |value, &byte| {
            byte.is_ascii_digit()
                .then(|| value * 10 + i64::from(byte - b'0'))
        })
    };
    let year = digits(&[y0, y1, y2, y3])?;
    let month = digits(&[mo0, mo1])?;
    let day = digits(&[d0, d1])?;
    let hour = digits(&[h0, h1])?;
    let minute = digits(&[mi0, mi1])?;
    let second = digits(&[s0, s1])?;
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if day < 1 || day > month_days || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    Some(
        crate::calendar::days_from_civil(year, month, day) * 86_400
            + hour * 3600
            + minute * 60
            + second,
    )
}

// ---------------------------------------------------------------------------------------------
// DER

/// The little DER the probe needs: an encoder for the AS-REQ and a bounded reader for replies.
mod der {
    use super::{MAX_DEPTH, MAX_NAME_COMPONENTS, MAX_STRING_BYTES, PrincipalName};
    use std::fmt;

    pub const CONSTRUCTED: u8 = 0x20;
    pub const APPLICATION: u8 = 0x40;
    pub const CONTEXT: u8 = 0x80;
    pub const INTEGER: u8 = 0x02;
    pub const BIT_STRING: u8 = 0x03;
    pub const OCTET_STRING: u8 = 0x04;
    pub const SEQUENCE: u8 = 0x30;
    pub const GENERALIZED_TIME: u8 = 0x18;
    pub const GENERAL_STRING: u8 = 0x1b;

    /// What went wrong reading DER.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Error {
        /// An element's length runs past its container (at the top: the message is truncated).
        Overrun(String),
        /// Anything else, with the field.
        Malformed(String),
    }

    impl fmt::Display for Error {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self {
                Error::Overrun(detail) | Error::Malformed(detail) => f.write_str(detail),
            }
        }
    }

    fn malformed<T>(detail: String) -> Result<T, Error> {
        Err(Error::Malformed(detail))
    }

    /// One element: its identifier octet and contents.
    #[derive(Debug, Clone, Copy)]
    pub struct Element<'a> {
        pub tag: u8,
        pub contents: &'a [u8],
    }

    /// A cursor over the elements of one container, at a known nesting depth.
    #[derive(Debug, Clone, Copy)]
    pub struct Reader<'a> {
        input: &'a [u8],
        depth: usize,
    }

    impl<'a> Reader<'a> {
        /// A reader over a whole message.
        pub fn top(input: &'a [u8]) -> Self {
            Reader { input, depth: 0 }
        }

        /// A reader over an element's contents, one level deeper. The depth is checked when
        /// reading, so entering never fails.
        pub fn enter(&self, contents: &'a [u8]) -> Reader<'a> {
            Reader {
                input: contents,
                depth: self.depth.saturating_add(1),
            }
        }

        pub fn is_empty(&self) -> bool {
            self.input.is_empty()
        }

        pub fn remaining(&self) -> usize {
            self.input.len()
        }

        pub fn peek_tag(&self) -> Option<u8> {
            self.input.first().copied()
        }

        /// Reads the next element, whatever its tag: low-tag-number form, definite length of at
        /// most 4 length octets, within what remains.
        pub fn read_any(&mut self, what: &str) -> Result<Element<'a>, Error> {
            if self.depth > MAX_DEPTH {
                return malformed(format!("`{what}` is nested deeper than {MAX_DEPTH} levels"));
            }
            let Some((&tag, rest)) = self.input.split_first() else {
                return Err(Error::Overrun(format!("`{what}` is missing")));
            };
            if tag & 0x1f == 0x1f {
                return malformed(format!("`{what}` uses a multi-byte tag (0x{tag:02x})"));
            }
            let Some((&first, rest)) = rest.split_first() else {
                return Err(Error::Overrun(format!("`{what}` has no length")));
            };
            let (length, rest) = match first {
                0..=0x7f => (usize::from(first), rest),
                0x80 => return malformed(format!("`{what}` has an indefinite length")),
                _ => {
                    let count = usize::from(first & 0x7f);
                    if count > 4 {
                        return malformed(format!(
                            "`{what}` has a length of {count} octets, at most 4 are read"
                        ));
                    }
                    let Some((octets, rest)) = rest.split_at_checked(count) else {
                        return Err(Error::Overrun(format!("`{what}` has a truncated length")));
                    };
                    let length = octets
                        .iter()
                        .fold(0_u64, |value, &octet| (value << 8) | u64::from(octet));
                    let length = usize::try_from(length).unwrap_or(usize::MAX);
                    (length, rest)
                }
            };
            let Some((contents, rest)) = rest.split_at_checked(length) else {
                return Err(Error::Overrun(format!(
                    "`{what}` claims {length} bytes, {} remain",
                    rest.len()
                )));
            };
            self.input = rest;
            Ok(Element { tag, contents })
        }

        /// Reads the next element, which must carry `tag`.
        pub fn read(&mut self, tag: u8, what: &str) -> Result<&'a [u8], Error> {
            let element = self.read_any(what)?;
            if element.tag != tag {
                return malformed(format!(
                    "`{what}` has tag 0x{:02x}, expected 0x{tag:02x}",
                    element.tag
                ));
            }
            Ok(element.contents)
        }

        /// Reads the only element of this container, which must carry `tag`.
        pub fn only(mut self, tag: u8, what: &str) -> Result<&'a [u8], Error> {
            let contents = self.read(tag, what)?;
            if !self.is_empty() {
                return malformed(format!(
                    "`{what}` is followed by {} bytes",
                    self.remaining()
                ));
            }
            Ok(contents)
        }

        /// The only element is a SEQUENCE of context-tagged fields.
        pub fn sequence(self, what: &str) -> Result<Fields<'a>, Error> {
            let contents = self.only(SEQUENCE, what)?;
            Ok(Fields {
                reader: self.enter(contents),
            })
        }

        /// The only element is `[APPLICATION number]`; returns a reader over its contents.
        pub fn application(self, number: u8, what: &str) -> Result<Reader<'a>, Error> {
            let contents = self.only(APPLICATION | CONSTRUCTED | number, what)?;
            Ok(self.enter(contents))
        }

        /// The only element is an INTEGER of at most 8 bytes.
        pub fn integer(self, what: &str) -> Result<i64, Error> {
            let contents = self.only(INTEGER, what)?;
            if contents.is_empty() || contents.len() > 8 {
                return malformed(format!(
                    "`{what}` is an integer of {} bytes, expected 1 to 8",
                    contents.len()
                ));
            }
            // Sign-extend from the first octet.
            let start = if contents.first().is_some_and(|&b| b & 0x80 != 0) {
                -1_i64
            } else {
                0
            };
            Ok(contents
                .iter()
                .fold(start, |value, &octet| (value << 8) | i64::from(octet)))
        }

        /// An `Int32`.
        pub fn int32(self, what: &str) -> Result<i32, Error> {
            let value = self.integer(what)?;
            i32::try_from(value)
                .or_else(|_| malformed(format!("`{what}` `{value}` is out of the Int32 range")))
        }

        /// `Microseconds`: 0 to 999999.
        pub fn microseconds(self, what: &str) -> Result<u32, Error> {
            let value = self.integer(what)?;
            match u32::try_from(value) {
                Ok(value) if value <= 999_999 => Ok(value),
                _ => malformed(format!(
                    "`{what}` `{value}` is not 0 to 999999 microseconds"
                )),
            }
        }

        /// A `KerberosString` (GeneralString), bounded, decoded lossily as UTF-8.
        pub fn string(self, what: &str) -> Result<String, Error> {
            let contents = self.only(GENERAL_STRING, what)?;
            string_of(contents, what)
        }

        pub fn octet_string(self, what: &str) -> Result<&'a [u8], Error> {
            self.only(OCTET_STRING, what)
        }

        /// A `KerberosTime` as Unix seconds.
        pub fn time(self, what: &str) -> Result<i64, Error> {
            let contents = self.only(GENERALIZED_TIME, what)?;
            super::parse_kerberos_time(contents).map_or_else(
                || {
                    malformed(format!(
                        "`{what}` `{}` is not a time `YYYYMMDDHHMMSSZ`",
                        super::printable(&String::from_utf8_lossy(contents))
                    ))
                },
                Ok,
            )
        }

        /// A `PrincipalName`: name-type and at most 16 components.
        pub fn principal_name(self, what: &str) -> Result<PrincipalName, Error> {
            let mut fields = self.sequence(what)?;
            let name_type = fields.required(0, "name-type")?.int32("name-type")?;
            let strings = fields.required(1, "name-string")?;
            let contents = strings.only(SEQUENCE, "name-string")?;
            let mut strings = strings.enter(contents);
            let mut components = Vec::new();
            while !strings.is_empty() {
                if components.len() == MAX_NAME_COMPONENTS {
                    return malformed(format!(
                        "`{what}` has more than {MAX_NAME_COMPONENTS} components"
                    ));
                }
                let component = strings.read(GENERAL_STRING, "name-string")?;
                components.push(string_of(component, what)?);
            }
            Ok(PrincipalName {
                name_type,
                components,
            })
        }
    }

    fn string_of(contents: &[u8], what: &str) -> Result<String, Error> {
        if contents.len() > MAX_STRING_BYTES {
            return malformed(format!(
                "`{what}` is a string of {} bytes, at most {MAX_STRING_BYTES} are read",
                contents.len()
            ));
        }
        Ok(String::from_utf8_lossy(contents).into_owned())
    }

    /// The fields of a SEQUENCE whose elements are `[n] EXPLICIT`, read in order of `n`. Fields
    /// not asked for (extensions, skipped optionals) are passed over.
    #[derive(Debug, Clone, Copy)]
    pub struct Fields<'a> {
        reader: Reader<'a>,
    }

    impl<'a> Fields<'a> {
        /// Field `[number]` if it comes next (after passing over lower-numbered fields), as a
        /// reader over its contents.
        pub fn optional(&mut self, number: u8) -> Result<Option<Reader<'a>>, Error> {
            let wanted = CONTEXT | CONSTRUCTED | number;
            while let Some(tag) = self.reader.peek_tag() {
                if tag & 0xe0 != CONTEXT | CONSTRUCTED {
                    return malformed(format!(
                        "a field has tag 0x{tag:02x}, expected a context tag"
                    ));
                }
                if tag > wanted {
                    return Ok(None);
                }
                let element = self.reader.read_any("field")?;
                if tag == wanted {
                    return Ok(Some(self.reader.enter(element.contents)));
                }
            }
            Ok(None)
        }

        /// Field `[number]`, which must be present.
        pub fn required(&mut self, number: u8, what: &str) -> Result<Reader<'a>, Error> {
            self.optional(number)?
                .map_or_else(|| malformed(format!("`{what}` is missing")), Ok)
        }
    }

    /// DER encoding of the few types an AS-REQ uses. Lengths are definite and minimal.
    pub mod encode {
        use super::*;

        /// One element: tag, length, contents.
        pub fn element(tag: u8, contents: &[u8]) -> Vec<u8> {
            let mut out = Vec::with_capacity(contents.len() + 6);
            out.push(tag);
            if let Ok(short) = u8::try_from(contents.len())
                && short < 0x80
            {
                out.push(short);
            } else {
                let length = (contents.len() as u64).to_be_bytes();
                let skip = length.iter().take_while(|&&b| b == 0).count();
                let octets = length.get(skip..).unwrap_or_default();
                out.push(0x80 | octets.len() as u8);
                out.extend_from_slice(octets);
            }
            out.extend_from_slice(contents);
            out
        }

        pub fn explicit(number: u8, inner: &[u8]) -> Vec<u8> {
            element(CONTEXT | CONSTRUCTED | number, inner)
        }

        pub fn application(number: u8, inner: &[u8]) -> Vec<u8> {
            element(APPLICATION | CONSTRUCTED | number, inner)
        }

        pub fn sequence(items: &[Vec<u8>]) -> Vec<u8> {
            element(SEQUENCE, &items.concat())
        }

        /// The shortest two's-complement form.
        pub fn integer(value: i64) -> Vec<u8> {
            let bytes = value.to_be_bytes();
            let mut start = 0;
            while let (Some(&this), Some(&next)) = (bytes.get(start), bytes.get(start + 1)) {
                let redundant =
                    (this == 0x00 && next & 0x80 == 0) || (this == 0xff && next & 0x80 != 0);
                if !redundant {
                    break;
                }
                start += 1;
            }
            element(INTEGER, bytes.get(start..).unwrap_or_default())
        }

        /// A BIT STRING of 32 bits (KDCOptions, TicketFlags).
        pub fn bit_string_32(bits: u32) -> Vec<u8> {
            let mut contents = vec![0]; // no unused bits
            contents.extend_from_slice(&bits.to_be_bytes());
            element(BIT_STRING, &contents)
        }

        pub fn general_string(text: &str) -> Vec<u8> {
            element(GENERAL_STRING, text.as_bytes())
        }

        #[cfg(test)]
        pub fn octet_string(bytes: &[u8]) -> Vec<u8> {
            element(OCTET_STRING, bytes)
        }

        pub fn kerberos_time(unix_seconds: i64) -> Vec<u8> {
            element(
                GENERALIZED_TIME,
                super::super::format_kerberos_time(unix_seconds).as_bytes(),
            )
        }

        pub fn principal_name(name_type: i32, components: &[String]) -> Vec<u8> {
            let strings: Vec<Vec<u8>> = components.iter().map(|c| general_string(c)).collect();
            sequence(&[
                explicit(0, &integer(i64::from(name_type))),
                explicit(1, &sequence(&strings)),
            ])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::der::encode as e;
    use super::*;
    use crate::checks::CheckConfig;
    use crate::checks::test_support::parse_entry;
    use std::sync::Arc;
    use tokio::net::TcpListener;
    use tokio::task::JoinHandle;

    const REALM: &str = "CORP.EXAMPLE.COM";

    // -----------------------------------------------------------------------------------------
    // Config

    fn config(toml_text: &str) -> Result<KerberosCheck, String> {
        let CheckConfig::Kerberos(config) = parse_entry("kerberos", toml_text)? else {
            unreachable!("a kerberos entry parses as a kerberos config")
        };
        config.validate()
    }

    /// Checks the targets a config probes, or its error.
    fn check_config(toml_text: &str, expected: Result<&[&str], &str>) {
        let actual = config(toml_text).map(|check| {
            check
                .kdcs
                .iter()
                .flat_map(|(host, port)| {
                    check
                        .transports
                        .iter()
                        .map(move |&transport| kdc_target(host, *port, transport))
                })
                .collect::<Vec<_>>()
        });
        let expected = expected
            .map(|targets| targets.iter().map(|t| t.to_string()).collect::<Vec<_>>())
            .map_err(str::to_owned);
        assert_eq!(actual, expected, "config: {toml_text}");
    }

    #[test]
    fn config_forms_and_errors() {
        let realm = "realm = \"CORP.EXAMPLE.COM\"\n";
        check_config(
            &format!("{realm}kdcs = [\"dc1\", \"10.0.0.10:8888\"]"),
            Ok(&[
                "dc1:88/udp",
                "dc1:88/tcp",
                "10.0.0.10:8888/udp",
                "10.0.0.10:8888/tcp",
            ]),
        );
        check_config(
            &format!(
                "{realm}kdcs = [\"2001:db8::1\", \"[::1]:750\", \"[::2]\"]\ntransports = [\"tcp\"]"
            ),
            Ok(&["[2001:db8::1]:88/tcp", "[::1]:750/tcp", "[::2]:88/tcp"]),
        );
        check_config(
            &format!(
                "{realm}kdcs = [\"dc1\"]\ntransports = [\"udp\"]\nprincipal = \"svc/probe\"\nreply_timeout = \"500ms\""
            ),
            Ok(&["dc1:88/udp"]),
        );
        check_config("kdcs = [\"dc1\"]", Err("missing field `realm`"));
        check_config(
            &format!("{realm}kdcs = []"),
            Err("`kdcs` is empty, name at least one KDC"),
        );
        check_config(
            &format!("{realm}kdcs = [\"dc1\", \"dc1:88\"]"),
            Err("kdc `dc1:88` is listed twice"),
        );
        check_config(
            &format!("{realm}kdcs = [\"dc1:kerberos\"]"),
            Err("kdc `dc1:kerberos` has an invalid port `kerberos`"),
        );
        check_config(
            &format!("{realm}kdcs = [\"dc1:0\"]"),
            Err("kdc `dc1:0`: port `0` is not a port to send to"),
        );
        check_config(
            &format!("{realm}kdcs = [\":88\"]"),
            Err("kdc `:88` has an empty host"),
        );
        check_config(
            &format!("{realm}kdcs = [\"[::1]88\"]"),
            Err("kdc `[::1]88` is not `host`, `host:port` or `[v6]:port` (or a bare IPv6)"),
        );
        check_config(
            &format!("{realm}kdcs = [\"dc 1\"]"),
            Err("kdc `dc 1` contains spaces or control characters"),
        );
        check_config(
            &format!("{realm}kdcs = [\"dc1\"]\ntransports = []"),
            Err("`transports` is empty, use `udp`, `tcp` or both"),
        );
        check_config(
            &format!("{realm}kdcs = [\"dc1\"]\ntransports = [\"udp\", \"udp\"]"),
            Err("transport `udp` is listed twice"),
        );
        check_config(
            &format!("{realm}kdcs = [\"dc1\"]\ntransports = [\"sctp\"]"),
            Err("unknown variant `sctp`, expected `udp` or `tcp`"),
        );
        check_config("realm = \"\"\nkdcs = [\"dc1\"]", Err("`realm` is empty"));
        check_config(
            "realm = \"CORP EXAMPLE\"\nkdcs = [\"dc1\"]",
            Err("realm `CORP EXAMPLE` contains spaces, control characters or `@`"),
        );
        check_config(
            &format!("{realm}kdcs = [\"dc1\"]\nprincipal = \"probe@CORP\""),
            Err("principal `probe@CORP` contains `@`, give the realm in `realm`"),
        );
        check_config(
            &format!("{realm}kdcs = [\"dc1\"]\nprincipal = \"svc//x\""),
            Err("principal `svc//x` has an empty component or one longer than 255 bytes"),
        );
        check_config(
            &format!("{realm}kdcs = [\"dc1\"]\nreply_timeout = \"0s\""),
            Err("`reply_timeout` `0s` must be more than zero"),
        );
        check_config(
            &format!("{realm}kdcs = [\"dc1\"]\nport = 88"),
            Err(
                "unknown field `port`, expected one of `realm`, `kdcs`, `transports`, `principal`, `principal_exists`, `reply_timeout`",
            ),
        );
    }

    #[test]
    fn defaults_are_both_transports_the_probe_principal_and_two_seconds() {
        let check = config("realm = \"R\"\nkdcs = [\"dc1\"]").unwrap();
        assert_eq!(check.transports, [KdcTransport::Udp, KdcTransport::Tcp]);
        assert_eq!(check.query.principal, ["estate-probe"]);
        assert!(!check.query.principal_exists);
        assert_eq!(check.reply_timeout, Duration::from_secs(2));
        assert_eq!(check.target(), "R");
    }

    // -----------------------------------------------------------------------------------------
    // Encoding helpers for replies, and a decoder for requests (what a KDC would do)

    /// The fields of a KRB-ERROR a fake KDC sends.
    #[derive(Debug, Clone)]
    struct ErrorReply {
        code: i32,
        realm: String,
        crealm: Option<String>,
        stime_unix: i64,
        susec: u32,
        e_text: Option<String>,
        e_data: Option<Vec<u8>>,
    }

    impl ErrorReply {
        fn new(code: i32, realm: &str, stime_unix: i64) -> Self {
            ErrorReply {
                code,
                realm: realm.to_owned(),
                crealm: None,
                stime_unix,
                susec: 0,
                e_text: None,
                e_data: None,
            }
        }

        fn encode(&self) -> Vec<u8> {
            let krbtgt = ["krbtgt".to_owned(), self.realm.clone()];
            let mut fields = vec![
                e::explicit(0, &e::integer(5)),
                e::explicit(1, &e::integer(30)),
                e::explicit(4, &e::kerberos_time(self.stime_unix)),
                e::explicit(5, &e::integer(i64::from(self.susec))),
                e::explicit(6, &e::integer(i64::from(self.code))),
            ];
            if let Some(crealm) = &self.crealm {
                fields.push(e::explicit(7, &e::general_string(crealm)));
            }
            fields.push(e::explicit(
                8,
                &e::principal_name(NT_PRINCIPAL, &["estate-probe".to_owned()]),
            ));
            fields.push(e::explicit(9, &e::general_string(&self.realm)));
            fields.push(e::explicit(10, &e::principal_name(NT_SRV_INST, &krbtgt)));
            if let Some(text) = &self.e_text {
                fields.push(e::explicit(11, &e::general_string(text)));
            }
            if let Some(data) = &self.e_data {
                fields.push(e::explicit(12, &e::octet_string(data)));
            }
            e::application(MSG_KRB_ERROR, &e::sequence(&fields))
        }
    }

    /// An AS-REP for `realm` with an opaque ticket and encrypted part.
    fn encode_as_rep(realm: &str) -> Vec<u8> {
        let krbtgt = ["krbtgt".to_owned(), realm.to_owned()];
        let encrypted = |etype: i64| {
            e::sequence(&[
                e::explicit(0, &e::integer(etype)),
                e::explicit(1, &e::integer(2)),
                e::explicit(2, &e::octet_string(&[0x5a; 48])),
            ])
        };
        let ticket = e::application(
            APPLICATION_TICKET,
            &e::sequence(&[
                e::explicit(0, &e::integer(5)),
                e::explicit(1, &e::general_string(realm)),
                e::explicit(2, &e::principal_name(NT_SRV_INST, &krbtgt)),
                e::explicit(3, &encrypted(18)),
            ]),
        );
        let padata = e::sequence(&[e::sequence(&[
            e::explicit(1, &e::integer(19)),
            e::explicit(2, &e::octet_string(&[0x30, 0x00])),
        ])]);
        e::application(
            MSG_AS_REP,
            &e::sequence(&[
                e::explicit(0, &e::integer(5)),
                e::explicit(1, &e::integer(11)),
                e::explicit(2, &padata),
                e::explicit(3, &e::general_string(realm)),
                e::explicit(
                    4,
                    &e::principal_name(NT_PRINCIPAL, &["estate-probe".to_owned()]),
                ),
                e::explicit(5, &ticket),
                e::explicit(6, &encrypted(18)),
            ]),
        )
    }

    /// What a fake KDC read from an AS-REQ.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct SeenRequest {
        realm: String,
        cname: PrincipalName,
        sname: PrincipalName,
        till_unix: i64,
        nonce: i64,
        etypes: Vec<i64>,
    }

    fn parse_as_req(bytes: &[u8]) -> Result<SeenRequest, der::Error> {
        let mut top = der::Reader::top(bytes);
        let request = top.read(0x6a, "AS-REQ")?;
        assert!(top.is_empty(), "bytes after the AS-REQ");
        let mut fields = top.enter(request).sequence("KDC-REQ")?;
        assert_eq!(fields.required(1, "pvno")?.integer("pvno")?, 5);
        assert_eq!(fields.required(2, "msg-type")?.integer("msg-type")?, 10);
        assert!(fields.optional(3)?.is_none(), "padata sent");
        let mut body = fields.required(4, "req-body")?.sequence("req-body")?;
        let options = body.required(0, "kdc-options")?.only(0x03, "kdc-options")?;
        assert_eq!(options, [0, 0, 0, 0, 0]);
        let cname = body.required(1, "cname")?.principal_name("cname")?;
        let realm = body.required(2, "realm")?.string("realm")?;
        let sname = body.required(3, "sname")?.principal_name("sname")?;
        let till_unix = body.required(5, "till")?.time("till")?;
        let nonce = body.required(7, "nonce")?.integer("nonce")?;
        let etype = body.required(8, "etype")?;
        let mut etypes_reader = etype.enter(etype.only(0x30, "etype")?);
        let mut etypes = Vec::new();
        while !etypes_reader.is_empty() {
            let element = etypes_reader.read_any("etype")?;
            let single = e::element(element.tag, element.contents);
            etypes.push(der::Reader::top(&single).integer("etype")?);
        }
        Ok(SeenRequest {
            realm,
            cname,
            sname,
            till_unix,
            nonce,
            etypes,
        })
    }

    // -----------------------------------------------------------------------------------------
    // Golden bytes

    fn fixture(name: &str) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/kerberos")
            .join(name);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
        let hex: String = text
            .lines()
            .filter(|line| !line.starts_with('#'))
            .flat_map(|line| line.chars())
            .filter(|c| !c.is_whitespace())
            .collect();
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    }

    fn to_hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn the_as_req_for_a_fixed_nonce_and_time_matches_the_golden_bytes() {
        let request = encode_as_req(&AsRequest {
            realm: REALM,
            principal: &["estate-probe".to_owned()],
            nonce: 0x1234_5678,
            till_unix_seconds: 1_767_323_045, // 2026-01-02T03:04:05Z
        });
        assert_eq!(to_hex(&request), to_hex(&fixture("as-req.hex")));
        let seen = parse_as_req(&request).unwrap();
        assert_eq!(
            seen,
            SeenRequest {
                realm: REALM.to_owned(),
                cname: PrincipalName {
                    name_type: 1,
                    components: vec!["estate-probe".to_owned()],
                },
                sname: PrincipalName {
                    name_type: 2,
                    components: vec!["krbtgt".to_owned(), REALM.to_owned()],
                },
                till_unix: 1_767_323_045,
                nonce: 0x1234_5678,
                etypes: vec![18, 17, 23],
            }
        );
    }

    #[test]
    fn a_captured_style_krb_error_parses_to_its_fields() {
        let parsed = parse_kdc_reply(&fixture("krb-error-preauth-required.hex")).unwrap();
        let KdcReply::Error(error) = parsed else {
            panic!("expected a KRB-ERROR, got {parsed:?}");
        };
        assert_eq!(error.error_code, KDC_ERR_PREAUTH_REQUIRED);
        assert_eq!(error.stime_unix, 1_767_323_045);
        assert_eq!(error.susec, 123_456);
        assert_eq!(error.realm, REALM);
        assert_eq!(error.crealm.as_deref(), Some(REALM));
        assert_eq!(
            error.sname.components,
            ["krbtgt".to_owned(), REALM.to_owned()]
        );
        assert_eq!(error.sname.name_type, NT_SRV_INST);
        assert_eq!(
            error.cname.map(|name| name.components),
            Some(vec!["estate-probe".to_owned()])
        );
        assert_eq!(error.e_text, None);
        assert_eq!(error.e_data.map(|data| data.len()), Some(13));
    }

    #[test]
    fn a_krb_error_captured_from_mit_krb5kdc_parses_to_its_fields() {
        let parsed = parse_kdc_reply(&fixture("krb-error-mit-preauth-required.hex")).unwrap();
        let KdcReply::Error(error) = parsed else {
            panic!("expected a KRB-ERROR, got {parsed:?}");
        };
        assert_eq!(error.error_code, KDC_ERR_PREAUTH_REQUIRED);
        assert_eq!(error.stime_unix, 1_795_478_169); // 2026-11-23T23:56:09Z
        assert_eq!(error.susec, 35_979);
        assert_eq!((error.ctime_unix, error.cusec), (None, None));
        assert_eq!(error.realm, REALM);
        assert_eq!(error.crealm.as_deref(), Some(REALM));
        assert_eq!(error.sname.components, ["krbtgt", REALM]);
        assert_eq!(
            error.cname.map(|name| name.components),
            Some(vec!["estate-probe".to_owned()])
        );
        assert_eq!(error.e_text.as_deref(), Some("NEEDED_PREAUTH"));
        assert_eq!(error.e_data.map(|data| data.len()), Some(92));
    }

    #[test]
    fn replies_built_by_the_test_encoder_round_trip() {
        let mut reply = ErrorReply::new(KDC_ERR_WRONG_REALM, "OTHER", 0);
        reply.crealm = Some("OTHER".into());
        reply.susec = 999_999;
        reply.e_text = Some("wrong realm".into());
        let KdcReply::Error(error) = parse_kdc_reply(&reply.encode()).unwrap() else {
            panic!("not a KRB-ERROR");
        };
        assert_eq!(
            (
                error.error_code,
                error.realm.as_str(),
                error.susec,
                error.e_text.as_deref()
            ),
            (68, "OTHER", 999_999, Some("wrong realm"))
        );
        let KdcReply::AsRep(as_rep) = parse_kdc_reply(&encode_as_rep(REALM)).unwrap() else {
            panic!("not an AS-REP");
        };
        assert_eq!(as_rep.crealm, REALM);
        assert_eq!(as_rep.ticket_realm, REALM);
        assert_eq!(as_rep.enc_part_etype, 18);
    }

    #[test]
    fn kerberos_time_round_trips_and_refuses_nonsense() {
        for (text, unix) in [
            ("19700101000000Z", 0),
            ("20260102030405Z", 1_767_323_045),
            ("20000229235959Z", 951_868_799),
            ("99991231235959Z", 253_402_300_799),
        ] {
            assert_eq!(parse_kerberos_time(text.as_bytes()), Some(unix), "{text}");
            assert_eq!(format_kerberos_time(unix), text);
        }
        for text in [
            "20260102030405",
            "2026010203040Z",
            "20260230000000Z",
            "21000229000000Z",
            "20261301000000Z",
            "20260101240000Z",
            "2026010103x405Z",
            "20260102030405.5Z",
            "",
        ] {
            assert_eq!(parse_kerberos_time(text.as_bytes()), None, "{text}");
        }
        assert_eq!(format_kerberos_time(-5), "19700101000000Z");
        assert_eq!(format_kerberos_time(i64::MAX), "99991231235959Z");
    }

    /// Data-driven: bytes in, the reason (or pass) out.
    fn judged(reply: &[u8]) -> Outcome {
        judge_reply(
            "kdc:88/udp",
            &KdcQuery::new(REALM, DEFAULT_PRINCIPAL, false).unwrap(),
            reply,
            Duration::from_millis(1),
            SystemTime::now(),
        )
        .outcome
    }

    fn fail(reason: &str) -> Outcome {
        Outcome::Fail {
            reason: reason.to_owned(),
        }
    }

    #[test]
    fn replies_are_judged_by_code_and_realm() {
        let now = unix_seconds(SystemTime::now());
        let error = |code| ErrorReply::new(code, REALM, now);
        assert_eq!(judged(&error(25).encode()), Outcome::Pass);
        assert_eq!(judged(&error(6).encode()), Outcome::Pass);
        assert_eq!(judged(&error(52).encode()), Outcome::Pass);
        assert_eq!(
            judged(&ErrorReply::new(25, "corp.example.com", now).encode()),
            Outcome::Pass
        );
        assert_eq!(judged(&encode_as_rep(REALM)), Outcome::Pass);
        assert_eq!(
            judged(&encode_as_rep("OTHER")),
            fail("AS-REP from `kdc:88/udp` names realm `OTHER`, expected `CORP.EXAMPLE.COM`")
        );
        assert_eq!(
            judged(&ErrorReply::new(6, "OTHER.REALM", now).encode()),
            fail(
                "KRB-ERROR from `kdc:88/udp` names realm `OTHER.REALM`, expected \
                 `CORP.EXAMPLE.COM`"
            )
        );
        let mut wrong_realm = ErrorReply::new(68, "OTHER.REALM", now);
        wrong_realm.crealm = Some("OTHER.REALM".into());
        assert_eq!(
            judged(&wrong_realm.encode()),
            fail(
                "KDC_ERR_WRONG_REALM (68) from `kdc:88/udp`: it does not serve realm \
                 `CORP.EXAMPLE.COM`, it refers the client to realm `OTHER.REALM`"
            )
        );
        let mut generic = error(60);
        generic.e_text = Some("database `locked`\n".into());
        assert_eq!(
            judged(&generic.encode()),
            fail(
                "KRB_ERR_GENERIC (60) from `kdc:88/udp` for realm `CORP.EXAMPLE.COM` \
                 (e-text `database 'locked'\u{fffd}`)"
            )
        );
        assert_eq!(
            judged(&error(7).encode()),
            fail("KDC_ERR_S_PRINCIPAL_UNKNOWN (7) from `kdc:88/udp` for realm `CORP.EXAMPLE.COM`")
        );
        assert_eq!(
            judged(b"AB\x00\x01"),
            fail("reply from `kdc:88/udp` is not a Kerberos message (first byte 0x41)")
        );
        assert_eq!(
            judged(&error(25).encode()[..12]),
            fail("truncated reply from `kdc:88/udp` (12 bytes)")
        );
        assert_eq!(
            judged(b""),
            fail("truncated reply from `kdc:88/udp` (0 bytes)")
        );
        assert_eq!(
            judged(&[0x6a, 0x00]),
            fail(
                "reply from `kdc:88/udp` is Kerberos message type `10`, not a KRB-ERROR or AS-REP"
            )
        );
        let mut trailing = error(25).encode();
        trailing.push(0);
        assert_eq!(
            judged(&trailing),
            fail("malformed Kerberos reply from `kdc:88/udp`: 1 bytes after the message")
        );
    }

    #[test]
    fn with_principal_exists_an_unknown_principal_fails() {
        let query = KdcQuery::new(REALM, "svc-estate", true).unwrap();
        let judge = |code| {
            let reply = ErrorReply::new(code, REALM, now_unix()).encode();
            judge_reply(
                "kdc:88/tcp",
                &query,
                &reply,
                Duration::ZERO,
                SystemTime::now(),
            )
            .outcome
        };
        assert_eq!(
            judge(KDC_ERR_C_PRINCIPAL_UNKNOWN),
            fail(
                "KDC_ERR_C_PRINCIPAL_UNKNOWN (6) from `kdc:88/tcp`: principal \
                 `svc-estate@CORP.EXAMPLE.COM` is unknown, though `principal_exists` says it exists"
            )
        );
        assert_eq!(judge(KDC_ERR_PREAUTH_REQUIRED), Outcome::Pass);
        assert_eq!(judge(18), Outcome::Pass);
        let check = config(
            "realm = \"R\"\nkdcs = [\"dc1\"]\nprincipal = \"svc-estate\"\nprincipal_exists = true",
        )
        .unwrap();
        assert!(check.query.principal_exists);
    }

    #[test]
    fn malformed_replies_name_the_field() {
        let check = |bytes: Vec<u8>, detail: &str| {
            assert_eq!(
                parse_kdc_reply(&bytes),
                Err(ReplyError::Malformed(detail.to_owned())),
                "{}",
                to_hex(&bytes)
            );
        };
        let krb_error = |fields: &[Vec<u8>]| e::application(30, &e::sequence(fields));
        let pvno = e::explicit(0, &e::integer(5));
        let msg_type = e::explicit(1, &e::integer(30));
        let stime = e::explicit(4, &e::kerberos_time(0));
        check(
            krb_error(&[e::explicit(0, &e::integer(4))]),
            "`pvno` is `4`, expected `5`",
        );
        check(
            krb_error(&[pvno.clone(), e::explicit(1, &e::integer(11))]),
            "`msg-type` is `11`, expected `30`",
        );
        check(
            krb_error(&[pvno.clone(), msg_type.clone()]),
            "`stime` is missing",
        );
        check(
            krb_error(&[
                pvno.clone(),
                msg_type.clone(),
                e::explicit(4, &e::element(0x18, b"2026")),
            ]),
            "`stime` `2026` is not a time `YYYYMMDDHHMMSSZ`",
        );
        check(
            krb_error(&[
                pvno.clone(),
                msg_type.clone(),
                stime.clone(),
                e::explicit(5, &e::integer(1_000_000)),
            ]),
            "`susec` `1000000` is not 0 to 999999 microseconds",
        );
        check(
            krb_error(&[
                pvno.clone(),
                msg_type.clone(),
                stime.clone(),
                e::explicit(5, &e::integer(0)),
                e::explicit(6, &e::integer(1 << 40)),
            ]),
            "`error-code` `1099511627776` is out of the Int32 range",
        );
        check(
            krb_error(&[pvno.clone(), e::explicit(1, &e::element(0x02, &[0; 9]))]),
            "`msg-type` is an integer of 9 bytes, expected 1 to 8",
        );
        check(
            krb_error(&[pvno.clone(), e::explicit(1, &[0x02, 0x05, 0x01])]),
            "`msg-type` claims 5 bytes, 1 remain",
        );
        check(
            krb_error(&[pvno.clone(), e::explicit(1, &[0x02, 0x80])]),
            "`msg-type` has an indefinite length",
        );
        check(
            krb_error(&[pvno.clone(), e::explicit(1, &[0x02, 0x85, 1, 1, 1, 1, 1])]),
            "`msg-type` has a length of 5 octets, at most 4 are read",
        );
        check(
            krb_error(&[pvno.clone(), e::element(0x02, &[1])]),
            "a field has tag 0x02, expected a context tag",
        );
        check(
            krb_error(&[pvno, e::explicit(1, &e::general_string("30"))]),
            "`msg-type` has tag 0x1b, expected 0x02",
        );
        // Long-form lengths are read too, and a 4-byte length beyond the input is a truncation.
        assert_eq!(
            parse_kdc_reply(&[0x7e, 0x84, 0xff, 0xff, 0xff, 0xff, 0x30]),
            Err(ReplyError::Truncated)
        );
        assert_eq!(
            parse_kdc_reply(&[0x7f, 0x1e, 0x00]),
            Err(ReplyError::NotKerberos { first_byte: 0x7f })
        );
    }

    // -----------------------------------------------------------------------------------------
    // The parser on arbitrary input

    /// xorshift64*: deterministic, so a failing input can be reproduced from the seed.
    struct Noise(u64);

    impl Noise {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, bound: usize) -> usize {
            (self.next() % bound.max(1) as u64) as usize
        }
    }

    #[test]
    fn the_parser_never_panics_on_random_or_mutated_input() {
        let mut reply = ErrorReply::new(25, REALM, 1_767_323_045);
        reply.crealm = Some(REALM.into());
        reply.e_text = Some("needs pre-authentication".into());
        reply.e_data = Some(vec![0x30, 0x03, 0x02, 0x01, 0x13]);
        let seeds = [
            reply.encode(),
            encode_as_rep(REALM),
            fixture("krb-error-preauth-required.hex"),
            fixture("krb-error-mit-preauth-required.hex"),
        ];
        // Every prefix of a valid reply is refused, never read past.
        for seed in &seeds {
            for end in 0..seed.len() {
                assert!(
                    parse_kdc_reply(&seed[..end]).is_err(),
                    "prefix of {end} bytes"
                );
            }
            assert!(parse_kdc_reply(seed).is_ok());
        }
        let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
        let mut accepted = 0;
        for round in 0..20_000 {
            let mut bytes = if round % 4 == 0 {
                // Random bytes behind a plausible first byte.
                let length = noise.below(300);
                let mut bytes: Vec<u8> = (0..length).map(|_| noise.next() as u8).collect();
                if let Some(first) = bytes.first_mut() {
                    *first = [0x7e, 0x6b, 0x30][noise.below(3)];
                }
                bytes
            } else {
                seeds[noise.below(seeds.len())].clone()
            };
            for _ in 0..=noise.below(4) {
                if bytes.is_empty() {
                    break;
                }
                let at = noise.below(bytes.len());
                match noise.below(6) {
                    0 => bytes[at] = noise.next() as u8,
                    1 => bytes[at] ^= 1 << noise.below(8),
                    2 => bytes.truncate(at),
                    3 => bytes.insert(at, noise.next() as u8),
                    4 => {
                        bytes.remove(at);
                    }
                    _ => bytes[at] = [0x00, 0x7f, 0x80, 0x81, 0x84, 0xff][noise.below(6)],
                }
            }
            if parse_kdc_reply(&bytes).is_ok() {
                accepted += 1;
            }
            // Judging must not panic either (skew arithmetic on odd times).
            let _ = judged(&bytes);
        }
        // Mutations that keep a message valid exist (a byte inside a string), but most break it.
        assert!(
            accepted < 15_000,
            "accepted {accepted} of 20000 mutated inputs"
        );
    }

    // -----------------------------------------------------------------------------------------
    // Against an in-process KDC

    /// What the fake KDC does with a request.
    #[derive(Debug, Clone)]
    enum Answer {
        /// A message (framed with its length over TCP).
        Message(Vec<u8>),
        /// Bytes sent as they are, on either transport (TCP: no length prefix is added).
        Raw(Vec<u8>),
        /// Nothing; over TCP the connection stays open until the client gives up.
        Silence,
    }

    type Answering = Arc<dyn Fn(&SeenRequest) -> Answer + Send + Sync>;

    /// A KDC on one port of 127.0.0.1, UDP and TCP, that answers one request per transport.
    struct FakeKdc {
        port: u16,
        tasks: Vec<JoinHandle<SeenRequest>>,
    }

    impl FakeKdc {
        async fn start(transports: &[KdcTransport], answering: Answering) -> FakeKdc {
            // The same port on both transports, as a KDC has.
            let (tcp, udp) = loop {
                let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
                let port = tcp.local_addr().unwrap().port();
                if let Ok(udp) = UdpSocket::bind(("127.0.0.1", port)).await {
                    break (tcp, udp);
                }
            };
            let port = tcp.local_addr().unwrap().port();
            let mut tasks = Vec::new();
            if transports.contains(&KdcTransport::Udp) {
                let answering = answering.clone();
                tasks.push(tokio::spawn(async move {
                    let mut buffer = vec![0; 65536];
                    let (length, peer) = udp.recv_from(&mut buffer).await.unwrap();
                    let seen = parse_as_req(&buffer[..length]).unwrap();
                    match answering(&seen) {
                        Answer::Message(bytes) | Answer::Raw(bytes) => {
                            udp.send_to(&bytes, peer).await.unwrap();
                        }
                        Answer::Silence => {}
                    }
                    seen
                }));
            }
            if transports.contains(&KdcTransport::Tcp) {
                tasks.push(tokio::spawn(async move {
                    let (mut stream, _) = tcp.accept().await.unwrap();
                    let mut prefix = [0; 4];
                    stream.read_exact(&mut prefix).await.unwrap();
                    let mut request = vec![0; u32::from_be_bytes(prefix) as usize];
                    stream.read_exact(&mut request).await.unwrap();
                    let seen = parse_as_req(&request).unwrap();
                    match answering(&seen) {
                        Answer::Message(bytes) => {
                            let length = u32::try_from(bytes.len()).unwrap();
                            stream.write_all(&length.to_be_bytes()).await.unwrap();
                            stream.write_all(&bytes).await.unwrap();
                        }
                        Answer::Raw(bytes) => stream.write_all(&bytes).await.unwrap(),
                        Answer::Silence => {
                            // Until the client closes its end.
                            let _ = stream.read(&mut [0; 1]).await;
                        }
                    }
                    seen
                }));
            }
            FakeKdc { port, tasks }
        }

        /// Waits for every request the KDC expected; returns what it read.
        async fn requests(self) -> Vec<SeenRequest> {
            let mut seen = Vec::new();
            for task in self.tasks {
                seen.push(task.await.unwrap());
            }
            seen
        }
    }

    fn now_unix() -> i64 {
        unix_seconds(SystemTime::now())
    }

    /// A KDC for `REALM` whose clock runs 30 s ahead: KDC_ERR_PREAUTH_REQUIRED for a request
    /// that asks for `krbtgt/REALM` in `REALM` with a 31-bit nonce, KRB_ERR_GENERIC otherwise.
    fn healthy_kdc() -> Answering {
        Arc::new(|seen: &SeenRequest| {
            let asks_for_the_realm = seen.realm == REALM
                && seen.sname.name_type == NT_SRV_INST
                && seen.sname.components == ["krbtgt", REALM]
                && (0..=0x7fff_ffff).contains(&seen.nonce);
            let code = if asks_for_the_realm { 25 } else { 60 };
            let mut reply = ErrorReply::new(code, REALM, now_unix() + 30);
            reply.crealm = Some(REALM.to_owned());
            Answer::Message(reply.encode())
        })
    }

    fn answer_always(answer: Answer) -> Answering {
        Arc::new(move |_: &SeenRequest| answer.clone())
    }

    fn kerberos_check(
        port: u16,
        transports: &[KdcTransport],
        reply_timeout: Duration,
    ) -> KerberosCheck {
        KerberosCheck {
            query: KdcQuery::new(REALM, DEFAULT_PRINCIPAL, false).unwrap(),
            kdcs: vec![("127.0.0.1".to_owned(), port)],
            transports: transports.to_vec(),
            reply_timeout,
        }
    }

    fn reasons(results: &[TargetResult]) -> Vec<(String, String)> {
        results
            .iter()
            .map(|r| {
                let reason = match &r.outcome {
                    Outcome::Pass => "pass".to_owned(),
                    Outcome::Fail { reason } | Outcome::Skipped { reason } => reason.clone(),
                };
                (r.target.clone(), reason)
            })
            .collect()
    }

    const BOTH: [KdcTransport; 2] = [KdcTransport::Udp, KdcTransport::Tcp];

    /// Probes a fake KDC answering `answer` over both transports; returns each transport's
    /// reason with `{}` for the target.
    async fn probe_both(answering: Answering) -> Vec<(String, String)> {
        let kdc = FakeKdc::start(&BOTH, answering).await;
        let port = kdc.port;
        let results = kerberos_check(port, &BOTH, Duration::from_secs(5))
            .probe()
            .await;
        kdc.requests().await;
        reasons(&results)
            .into_iter()
            .map(|(target, reason)| {
                let generic = reason.replace(&target, "{}");
                (target.replace(&port.to_string(), "P"), generic)
            })
            .collect()
    }

    #[tokio::test]
    async fn passes_over_udp_and_tcp_with_latency_error_code_and_skew() {
        let kdc = FakeKdc::start(&BOTH, healthy_kdc()).await;
        let port = kdc.port;
        let results = kerberos_check(port, &BOTH, Duration::from_secs(5))
            .probe()
            .await;
        let seen = kdc.requests().await;
        assert_eq!(
            reasons(&results),
            [
                (format!("127.0.0.1:{port}/udp"), "pass".to_owned()),
                (format!("127.0.0.1:{port}/tcp"), "pass".to_owned()),
            ]
        );
        for result in &results {
            let names: Vec<_> = result
                .measurements
                .iter()
                .map(|m| m.name.as_str())
                .collect();
            assert_eq!(
                names,
                ["latency_seconds", "krb_error_code", "kdc_time_skew_seconds"]
            );
            let value = |i: usize| result.measurements[i].value;
            assert!((0.0..5.0).contains(&value(0)), "latency {}", value(0));
            assert_eq!(value(1), 25.0);
            // stime has whole seconds: the skew is 30 s minus up to 1 s.
            assert!((28.5..=30.5).contains(&value(2)), "skew {}", value(2));
        }
        // Both requests asked for our realm's TGT, as our principal, with fresh nonces.
        assert_eq!(seen.len(), 2);
        for request in &seen {
            assert_eq!(request.realm, REALM);
            assert_eq!(request.cname.components, ["estate-probe"]);
            assert_eq!(request.etypes, [18, 17, 23]);
            assert!((request.till_unix - now_unix() - 86_400).abs() < 60);
        }
        assert_ne!(seen[0].nonce, seen[1].nonce);
    }

    #[tokio::test]
    async fn an_as_rep_passes_with_latency_only() {
        let kdc = FakeKdc::start(
            &[KdcTransport::Tcp],
            answer_always(Answer::Message(encode_as_rep(REALM))),
        )
        .await;
        let result = probe_kdc(
            "127.0.0.1",
            kdc.port,
            REALM,
            KdcTransport::Tcp,
            Duration::from_secs(5),
        )
        .await;
        kdc.requests().await;
        assert_eq!(result.outcome, Outcome::Pass);
        let names: Vec<_> = result
            .measurements
            .iter()
            .map(|m| m.name.as_str())
            .collect();
        assert_eq!(names, ["latency_seconds"]);
    }

    #[tokio::test]
    async fn another_realm_fails_naming_it_with_the_measurements() {
        let answer = ErrorReply::new(6, "OTHER.REALM", now_unix()).encode();
        assert_eq!(
            probe_both(answer_always(Answer::Message(answer))).await,
            [
                (
                    "127.0.0.1:P/udp".to_owned(),
                    "KRB-ERROR from `{}` names realm `OTHER.REALM`, expected `CORP.EXAMPLE.COM`"
                        .to_owned()
                ),
                (
                    "127.0.0.1:P/tcp".to_owned(),
                    "KRB-ERROR from `{}` names realm `OTHER.REALM`, expected `CORP.EXAMPLE.COM`"
                        .to_owned()
                ),
            ]
        );
    }

    /// Both transports gave the same reason (with `{}` for the target); returns it.
    async fn same_reason_on_both(answering: Answering) -> String {
        let results = probe_both(answering).await;
        assert_eq!(results.len(), 2);
        assert_eq!(results[0].1, results[1].1, "{results:?}");
        results[0].1.clone()
    }

    #[tokio::test]
    async fn wrong_realm_fails_naming_the_realm_and_the_referral() {
        let mut reply = ErrorReply::new(68, REALM, now_unix());
        reply.crealm = Some("EXAMPLE.COM".into());
        let kdc = FakeKdc::start(
            &[KdcTransport::Udp],
            answer_always(Answer::Message(reply.encode())),
        )
        .await;
        let result = probe_kdc(
            "127.0.0.1",
            kdc.port,
            REALM,
            KdcTransport::Udp,
            Duration::from_secs(5),
        )
        .await;
        kdc.requests().await;
        assert_eq!(
            result.outcome,
            fail(&format!(
                "KDC_ERR_WRONG_REALM (68) from `127.0.0.1:{}/udp`: it does not serve realm \
                 `CORP.EXAMPLE.COM`, it refers the client to realm `EXAMPLE.COM`",
                kdc_port(&result)
            ))
        );
        // Alive, so the code and skew are still measured.
        assert_eq!(result.measurements.len(), 3);
        assert_eq!(result.measurements[1].value, 68.0);
    }

    fn kdc_port(result: &TargetResult) -> &str {
        let (_, rest) = result.target.split_once(':').unwrap();
        rest.split_once('/').unwrap().0
    }

    #[tokio::test]
    async fn garbage_fails_naming_the_first_byte() {
        let reason =
            same_reason_on_both(answer_always(Answer::Message(b"AB\x00\x00".to_vec()))).await;
        assert_eq!(
            reason,
            "reply from `{}` is not a Kerberos message (first byte 0x41)"
        );
    }

    #[tokio::test]
    async fn a_truncated_reply_fails_with_its_length() {
        let whole = ErrorReply::new(25, REALM, now_unix()).encode();
        let reason =
            same_reason_on_both(answer_always(Answer::Message(whole[..12].to_vec()))).await;
        assert_eq!(reason, "truncated reply from `{}` (12 bytes)");

        // Over TCP, a connection closed before the announced length arrived.
        let mut framed = 100_u32.to_be_bytes().to_vec();
        framed.extend_from_slice(&whole[..12]);
        let kdc = FakeKdc::start(&[KdcTransport::Tcp], answer_always(Answer::Raw(framed))).await;
        let result = probe_kdc(
            "127.0.0.1",
            kdc.port,
            REALM,
            KdcTransport::Tcp,
            Duration::from_secs(5),
        )
        .await;
        kdc.requests().await;
        assert_eq!(
            result.outcome,
            fail(&format!(
                "truncated reply from `127.0.0.1:{}/tcp` (12 bytes, 100 announced)",
                kdc_port(&result)
            ))
        );
        assert!(result.measurements.is_empty());
    }

    #[tokio::test]
    async fn a_tcp_length_prefix_of_4_gib_is_refused_without_allocating_it() {
        let kdc = FakeKdc::start(
            &[KdcTransport::Tcp],
            answer_always(Answer::Raw(vec![0xff, 0xff, 0xff, 0xff, 0x7e, 0x00])),
        )
        .await;
        let result = probe_kdc(
            "127.0.0.1",
            kdc.port,
            REALM,
            KdcTransport::Tcp,
            Duration::from_secs(5),
        )
        .await;
        kdc.requests().await;
        assert_eq!(
            result.outcome,
            fail(&format!(
                "reply from `127.0.0.1:{}/tcp` announces 4294967295 bytes, more than the 65536 \
                 accepted",
                kdc_port(&result)
            ))
        );
    }

    #[tokio::test]
    async fn a_connection_closed_without_a_reply_says_so() {
        let kdc =
            FakeKdc::start(&[KdcTransport::Tcp], answer_always(Answer::Raw(Vec::new()))).await;
        let result = probe_kdc(
            "127.0.0.1",
            kdc.port,
            REALM,
            KdcTransport::Tcp,
            Duration::from_secs(5),
        )
        .await;
        kdc.requests().await;
        assert_eq!(
            result.outcome,
            fail(&format!(
                "`127.0.0.1:{}/tcp` closed the connection without a reply",
                kdc_port(&result)
            ))
        );
    }

    #[tokio::test]
    async fn silence_fails_after_the_reply_timeout() {
        let kdc = FakeKdc::start(&BOTH, answer_always(Answer::Silence)).await;
        let port = kdc.port;
        let results = kerberos_check(port, &BOTH, Duration::from_millis(200))
            .probe()
            .await;
        kdc.requests().await;
        assert_eq!(
            reasons(&results),
            [
                (
                    format!("127.0.0.1:{port}/udp"),
                    format!("no answer from `127.0.0.1:{port}/udp` within 200ms")
                ),
                (
                    format!("127.0.0.1:{port}/tcp"),
                    format!("no answer from `127.0.0.1:{port}/tcp` within 200ms")
                ),
            ]
        );
        assert!(results.iter().all(|r| r.measurements.is_empty()));
    }

    #[tokio::test]
    async fn a_closed_port_is_refused_on_tcp_and_udp() {
        // Bind then drop to get ports on which nothing listens.
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let tcp = probe_kdc(
            "127.0.0.1",
            port,
            REALM,
            KdcTransport::Tcp,
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(
            tcp.outcome,
            fail(&format!("connection refused by `127.0.0.1:{port}/tcp`"))
        );
        let port = {
            let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            socket.local_addr().unwrap().port()
        };
        // On loopback the ICMP port unreachable comes back at once (Linux reports it on the
        // connected socket); elsewhere the probe simply times out.
        let udp = probe_kdc(
            "127.0.0.1",
            port,
            REALM,
            KdcTransport::Udp,
            Duration::from_secs(1),
        )
        .await;
        let expected = [
            fail(&format!("connection refused by `127.0.0.1:{port}/udp`")),
            fail(&format!("no answer from `127.0.0.1:{port}/udp` within 1s")),
        ];
        assert!(expected.contains(&udp.outcome), "{:?}", udp.outcome);
    }

    #[tokio::test]
    async fn an_unresolvable_host_or_invalid_realm_fails_without_sending() {
        let result = probe_kdc(
            "kdc.invalid",
            88,
            REALM,
            KdcTransport::Udp,
            Duration::from_secs(2),
        )
        .await;
        let Outcome::Fail { reason } = &result.outcome else {
            panic!("expected a failure, got {:?}", result.outcome);
        };
        assert!(
            reason.starts_with("cannot resolve `kdc.invalid`"),
            "{reason}"
        );
        assert_eq!(result.target, "kdc.invalid:88/udp");
        let result = probe_kdc("::1", 88, "", KdcTransport::Tcp, Duration::from_secs(2)).await;
        assert_eq!(result.target, "[::1]:88/tcp");
        assert_eq!(result.outcome, fail("`realm` is empty"));
    }
}
