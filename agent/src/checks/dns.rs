//! The `dns` check: does each DNS server answer a query for a name and type with the expected
//! response code, enough answers and the expected values, quickly enough.
//!
//! ```toml
//! [[checks]]
//! name = "dc-srv"
//! kind = "dns"
//! query = "_ldap._tcp.dc._msdcs.corp.example.com"
//! type = "SRV"                              # default A
//! servers = ["10.0.0.53", "10.0.0.54:53"]   # default: the nameservers of /etc/resolv.conf
//! transport = "udp"                         # or "tcp"
//! expect_rcode = "NOERROR"
//! min_answers = 1
//! expect_values = ["dc1.corp.example.com.", "re:^dc\\d+\\."]
//! max_latency = "200ms"
//! query_timeout = "2s"
//! ```
//!
//! Every server is queried directly and reported as its own target (`10.0.0.53:53`), so one
//! broken server among several healthy ones shows up instead of being hidden by fail-over.
//!
//! Why hickory-proto and our own sockets rather than hickory-resolver: a resolver exists to hide
//! individual servers (it fails over, retries, caches and merges errors into one), while this
//! check exists to expose them. Building and parsing messages with hickory-proto and doing the
//! UDP/TCP exchange here gives per-server results, the transaction id, the timeout per attempt,
//! the TC bit and the TCP retry under our control, and a precise reason for every way a reply can
//! be wrong. The same exchange serves [`lookup_srv`], which composite checks (`ad`) use to find
//! their targets.

use super::{Outcome, TargetResult, measurement};
use estate_proto::v1::Measurement;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use regex::Regex;
use serde::{Deserialize, Deserializer};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::Instant;

/// The kind's name in `kind = "dns"`.
pub const KIND: &str = "dns";

/// The record types a check may ask for, as written in `type = "..."`.
pub const RECORD_TYPES: &[&str] = &["A", "AAAA", "CNAME", "MX", "SRV", "TXT", "PTR", "SOA", "NS"];

/// Response codes by their usual mnemonic, as written in `expect_rcode` and in reasons.
const RCODE_NAMES: &[(&str, u16)] = &[
    ("NOERROR", 0),
    ("FORMERR", 1),
    ("SERVFAIL", 2),
    ("NXDOMAIN", 3),
    ("NOTIMP", 4),
    ("REFUSED", 5),
    ("YXDOMAIN", 6),
    ("YXRRSET", 7),
    ("NXRRSET", 8),
    ("NOTAUTH", 9),
    ("NOTZONE", 10),
];

/// At most this many answers are listed as `answer` measurements; the rest are counted in
/// `answers_omitted`.
pub const MAX_ANSWER_MEASUREMENTS: usize = 32;

/// The presentation text of one answer is cut to this many bytes (marker included).
pub const MAX_ANSWER_TEXT_BYTES: usize = 512;

/// The UDP payload size the query advertises (EDNS0), the value recommended since DNS flag
/// day 2020. A larger datagram is a protocol violation and is refused.
pub const UDP_PAYLOAD_BYTES: u16 = 1232;

/// glibc's resolver uses the first three `nameserver` lines; so do we.
pub const MAX_SYSTEM_NAMESERVERS: usize = 3;

/// Where the system resolvers are listed.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";

/// Marker appended to an answer text that was cut.
const TRUNCATED_MARKER: &str = " [truncated]";

/// Which transport carries the query.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// UDP, retried over TCP when the reply has the TC (truncated) bit, as resolvers do.
    #[default]
    Udp,
    /// TCP only.
    Tcp,
}

/// The `dns` check's own fields.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsCheckConfig {
    /// The name to look up. Always absolute (a trailing dot is optional; no search domains are
    /// appended). With `type = "PTR"` an IP address is turned into its reverse name.
    pub query: String,
    /// The record type: one of `A`, `AAAA`, `CNAME`, `MX`, `SRV`, `TXT`, `PTR`, `SOA`, `NS`.
    #[serde(rename = "type", default = "default_record_type")]
    pub record_type: String,
    /// Servers to query, each `ip` (port 53) or `ip:port` (`[v6]:port`); names are refused,
    /// since a DNS check cannot depend on DNS. Empty: the first three `nameserver` lines of
    /// `/etc/resolv.conf`, read at each run. Each server is reported as its own target.
    #[serde(default)]
    pub servers: Vec<String>,
    /// `udp` (retried over TCP when the reply is truncated) or `tcp`.
    #[serde(default)]
    pub transport: Transport,
    /// The response code each server must answer with (`NOERROR`, `NXDOMAIN`, `SERVFAIL`, …).
    #[serde(default = "default_expect_rcode")]
    pub expect_rcode: String,
    /// The fewest answer records of the asked type a server must return (a CNAME alone is not an
    /// answer to an `A` question): default 1 when `expect_rcode` is `NOERROR`, else 0 (answers
    /// only come with `NOERROR`).
    pub min_answers: Option<u32>,
    /// Values that must each match at least one answer: exact (case and a trailing dot ignored)
    /// or a regex with the `re:` prefix. An answer's value is its address (A, AAAA), the name it
    /// points to (CNAME, NS, PTR, MX exchange, SRV target, SOA primary server) or its text
    /// (TXT); its full record data (`10 mail.example.com.`) matches too.
    #[serde(default)]
    pub expect_values: Vec<String>,
    /// Fail a server whose answer took longer than this (`"200ms"`). No limit by default.
    #[serde(default, deserialize_with = "optional_duration")]
    pub max_latency: Option<Duration>,
    /// How long to wait for each server's answer, per attempt (the TCP retry of a truncated reply
    /// is a second attempt). Servers are queried in parallel. Capped so that every attempt fits
    /// in the check's `timeout` (with UDP, two attempts in 90% of it), so a silent server is
    /// reported by name instead of the whole run timing out.
    #[serde(default = "default_query_timeout", with = "crate::config::duration")]
    pub query_timeout: Duration,
}

/// `A` unless told otherwise, the usual question.
pub fn default_record_type() -> String {
    "A".to_owned()
}

/// `NOERROR` unless told otherwise: the name is expected to exist.
pub fn default_expect_rcode() -> String {
    "NOERROR".to_owned()
}

/// Two seconds per attempt, so a silent server and a TCP retry both fit in the default check
/// timeout of five seconds.
pub fn default_query_timeout() -> Duration {
    Duration::from_secs(2)
}

fn optional_duration<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    crate::config::duration::deserialize(deserializer).map(Some)
}

impl DnsCheckConfig {
    /// Checks every field and builds the query. Pure: reads no file, resolves no name.
    pub fn validate(&self) -> Result<DnsCheck, String> {
        let record_type = parse_record_type(&self.record_type)?;
        let query = parse_query_name(&self.query, record_type)?;
        let servers = if self.servers.is_empty() {
            NameServers::System
        } else {
            let mut servers = Vec::with_capacity(self.servers.len());
            for text in &self.servers {
                let server = parse_server_address(text)?;
                if servers.contains(&server) {
                    return Err(format!("server `{server}` is listed twice in `servers`"));
                }
                servers.push(server);
            }
            NameServers::Listed(servers)
        };
        let expect_rcode = parse_rcode(&self.expect_rcode)?;
        let answers_possible = expect_rcode == u16::from(ResponseCode::NoError);
        let min_answers = match self.min_answers {
            Some(count) if count > 0 && !answers_possible => {
                return Err(format!(
                    "`min_answers` `{count}` cannot be met with `expect_rcode` `{}`: answers \
                     only come with `NOERROR`",
                    rcode_name(expect_rcode)
                ));
            }
            Some(count) => count,
            None => u32::from(answers_possible),
        };
        if !self.expect_values.is_empty() && !answers_possible {
            return Err(format!(
                "`expect_values` cannot be met with `expect_rcode` `{}`: answers only come with \
                 `NOERROR`",
                rcode_name(expect_rcode)
            ));
        }
        let expect_values = self
            .expect_values
            .iter()
            .map(|text| ExpectedValue::parse(text))
            .collect::<Result<Vec<_>, _>>()?;
        if self.max_latency == Some(Duration::ZERO) {
            return Err("`max_latency` `0s` would fail every answer".to_owned());
        }
        if self.query_timeout < Duration::from_millis(1) {
            return Err(format!(
                "`query_timeout` `{}` must be at least 1ms",
                humantime::format_duration(self.query_timeout)
            ));
        }
        Ok(DnsCheck {
            question: Query::query(query, record_type),
            servers,
            transport: self.transport,
            expect_rcode,
            min_answers,
            expect_values,
            max_latency: self.max_latency,
            query_timeout: self.query_timeout,
        })
    }
}

fn parse_record_type(text: &str) -> Result<RecordType, String> {
    let upper = text.to_ascii_uppercase();
    if !RECORD_TYPES.contains(&upper.as_str()) {
        return Err(format!(
            "type `{text}` is not supported, expected one of {}",
            backticked(RECORD_TYPES.iter().copied())
        ));
    }
    RecordType::from_str(&upper).map_err(|error| format!("type `{text}`: {error}"))
}

fn parse_query_name(text: &str, record_type: RecordType) -> Result<Name, String> {
    if text.trim().is_empty() {
        return Err("`query` is empty".to_owned());
    }
    if record_type == RecordType::PTR
        && let Ok(address) = text.parse::<IpAddr>()
    {
        return Ok(Name::from(address));
    }
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "query `{text}` contains spaces or control characters"
        ));
    }
    let mut name = Name::from_str_relaxed(text)
        .map_err(|error| format!("query `{text}` is not a valid dns name: {error}"))?;
    name.set_fqdn(true);
    Ok(name)
}

fn parse_rcode(text: &str) -> Result<u16, String> {
    let upper = text.to_ascii_uppercase();
    RCODE_NAMES
        .iter()
        .find(|(name, _)| *name == upper)
        .map(|(_, code)| *code)
        .ok_or_else(|| {
            format!(
                "expect_rcode `{text}` is not a response code, expected one of {}",
                backticked(RCODE_NAMES.iter().map(|(name, _)| *name))
            )
        })
}

/// The mnemonic of a response code (`NXDOMAIN`), or `RCODE<n>` for one without a name here.
pub fn rcode_name(code: u16) -> String {
    RCODE_NAMES
        .iter()
        .find(|(_, known)| *known == code)
        .map(|(name, _)| (*name).to_owned())
        .unwrap_or_else(|| format!("RCODE{code}"))
}

fn backticked<'a>(items: impl Iterator<Item = &'a str>) -> String {
    items
        .map(|item| format!("`{item}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Parses a server as written in config: `10.0.0.53` (port 53), `10.0.0.53:5353`, `2001:db8::1`
/// or `[2001:db8::1]:53`. Names are refused: a DNS check cannot depend on DNS.
pub fn parse_server_address(text: &str) -> Result<SocketAddr, String> {
    if let Ok(address) = text.parse::<IpAddr>() {
        return Ok(SocketAddr::new(address, 53));
    }
    match text.parse::<SocketAddr>() {
        Ok(address) if address.port() == 0 => Err(format!(
            "server `{text}` has port `0`, which cannot be queried"
        )),
        Ok(address) => Ok(address),
        Err(_) => Err(format!(
            "server `{text}` is not an IP address or `ip:port` (IPv6: `[addr]:port`)"
        )),
    }
}

/// The `nameserver` entries of a resolv.conf text, in order, as written.
pub fn parse_resolv_conf_nameservers(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let line = line.split(['#', ';']).next().unwrap_or_default();
            let mut words = line.split_whitespace();
            match (words.next(), words.next()) {
                (Some("nameserver"), Some(server)) => Some(server.to_owned()),
                _ => None,
            }
        })
        .collect()
}

/// The system resolvers: the first three `nameserver` lines of `/etc/resolv.conf`, port 53.
/// Entries that are not IP addresses (an IPv6 address with `%interface`) are left out.
pub fn system_nameservers() -> Result<Vec<SocketAddr>, String> {
    let text = std::fs::read_to_string(RESOLV_CONF).map_err(|error| {
        format!("cannot read `{RESOLV_CONF}` for the system resolvers: {error}; set `servers`")
    })?;
    let servers: Vec<_> = parse_resolv_conf_nameservers(&text)
        .iter()
        .take(MAX_SYSTEM_NAMESERVERS)
        .filter_map(|server| server.parse::<IpAddr>().ok())
        .map(|address| SocketAddr::new(address, 53))
        .collect();
    if servers.is_empty() {
        return Err(format!(
            "`{RESOLV_CONF}` lists no usable `nameserver`; set `servers`"
        ));
    }
    Ok(servers)
}

/// One entry of `expect_values`, ready to match.
#[derive(Debug, Clone)]
enum ExpectedValue {
    Exact(String),
    Pattern { text: String, regex: Regex },
}

impl ExpectedValue {
    fn parse(text: &str) -> Result<Self, String> {
        match text.strip_prefix("re:") {
            Some(pattern) => {
                let regex = Regex::new(pattern).map_err(|error| {
                    let detail = error.to_string().replace('\n', " ");
                    format!("expect_values `{text}` is not a valid regex: {detail}")
                })?;
                Ok(ExpectedValue::Pattern {
                    text: text.to_owned(),
                    regex,
                })
            }
            None if text.is_empty() => Err("`expect_values` holds an empty value".to_owned()),
            None => Ok(ExpectedValue::Exact(text.to_owned())),
        }
    }

    fn as_written(&self) -> &str {
        match self {
            ExpectedValue::Exact(text) | ExpectedValue::Pattern { text, .. } => text,
        }
    }

    /// Does this expectation match one of the given texts of an answer?
    fn matches(&self, texts: &[String]) -> bool {
        match self {
            ExpectedValue::Exact(expected) => {
                let expected = expected.trim_end_matches('.');
                texts
                    .iter()
                    .any(|text| text.trim_end_matches('.').eq_ignore_ascii_case(expected))
            }
            ExpectedValue::Pattern { regex, .. } => texts.iter().any(|text| regex.is_match(text)),
        }
    }
}

/// Where the servers to query come from.
#[derive(Debug, Clone)]
enum NameServers {
    /// `/etc/resolv.conf`, read at each run.
    System,
    Listed(Vec<SocketAddr>),
}

/// A ready `dns` check.
#[derive(Debug, Clone)]
pub struct DnsCheck {
    question: Query,
    servers: NameServers,
    transport: Transport,
    expect_rcode: u16,
    min_answers: u32,
    expect_values: Vec<ExpectedValue>,
    max_latency: Option<Duration>,
    query_timeout: Duration,
}

impl DnsCheck {
    /// `system`, or the listed servers joined by commas: what a result without a server of its
    /// own (the check's timeout) is reported against.
    pub fn target(&self) -> String {
        match &self.servers {
            NameServers::System => "system".to_owned(),
            NameServers::Listed(servers) => servers
                .iter()
                .map(SocketAddr::to_string)
                .collect::<Vec<_>>()
                .join(","),
        }
    }

    /// Queries every server in parallel and reports each as its own target (`ip:port`), each
    /// attempt waiting `query_timeout`, capped to fit in `check_timeout` (see the field).
    ///
    /// A server passes when it answers with the expected response code, at least `min_answers`
    /// answers, every expected value, and within `max_latency`. Measurements per server:
    /// `latency_seconds`, `rcode` (numeric), `answers` (records of the asked type, the figure
    /// `min_answers` is held to), `tcp_fallback` (1 when a truncated UDP reply was retried over
    /// TCP), one `answer` per record of the answer section, CNAME chain included (value: TTL;
    /// text: the record in presentation format, at most [`MAX_ANSWER_TEXT_BYTES`]), at most
    /// [`MAX_ANSWER_MEASUREMENTS`] of them, and `answers_omitted` when there were more.
    pub async fn probe(&self, check_timeout: Duration) -> Vec<TargetResult> {
        let attempt_timeout = self.attempt_timeout(check_timeout);
        let servers = match &self.servers {
            NameServers::Listed(servers) => servers.clone(),
            NameServers::System => match system_nameservers() {
                Ok(servers) => servers,
                Err(reason) => {
                    return vec![TargetResult {
                        target: "system".to_owned(),
                        outcome: Outcome::Fail { reason },
                        measurements: Vec::new(),
                    }];
                }
            },
        };
        let mut tasks = tokio::task::JoinSet::new();
        for (index, server) in servers.iter().copied().enumerate() {
            let check = self.clone();
            tasks.spawn(async move { (index, check.probe_server(server, attempt_timeout).await) });
        }
        let mut results: Vec<Option<TargetResult>> = vec![None; servers.len()];
        while let Some(joined) = tasks.join_next().await {
            if let Ok((index, result)) = joined
                && let Some(slot) = results.get_mut(index)
            {
                *slot = Some(result);
            }
        }
        // A task that did not finish (it cannot panic, but the runtime may be shutting down)
        // still yields a result for its server.
        results
            .into_iter()
            .zip(servers)
            .map(|(result, server)| {
                result.unwrap_or_else(|| TargetResult {
                    target: server.to_string(),
                    outcome: Outcome::Fail {
                        reason: format!("the query to `{server}` was interrupted"),
                    },
                    measurements: Vec::new(),
                })
            })
            .collect()
    }

    /// `query_timeout`, or less when the attempts would not fit in the check's timeout.
    fn attempt_timeout(&self, check_timeout: Duration) -> Duration {
        let attempts = match self.transport {
            Transport::Udp => 2,
            Transport::Tcp => 1,
        };
        let cap = check_timeout.mul_f64(0.9) / attempts;
        self.query_timeout.min(cap).max(Duration::from_millis(1))
    }

    async fn probe_server(&self, server: SocketAddr, attempt_timeout: Duration) -> TargetResult {
        let reply = exchange(server, &self.question, self.transport, attempt_timeout).await;
        self.server_result(server, reply)
    }

    /// What [`Self::probe`] reports for `bytes` received from `server` in answer to a query
    /// with id `id`, `latency` after sending it: the same decoding (id, response, our question
    /// echoed) and judgement, without the network. The fuzz target `dns_reply` feeds it
    /// arbitrary bytes.
    pub fn judge_reply_bytes(
        &self,
        server: SocketAddr,
        id: u16,
        bytes: &[u8],
        latency: Duration,
    ) -> TargetResult {
        let reply = decode_reply(bytes, id, &self.question, server).map(|message| Reply {
            message,
            latency,
            tcp_fallback: false,
        });
        self.server_result(server, reply)
    }

    /// One server's result from its reply, or from the reason it gave none.
    fn server_result(&self, server: SocketAddr, reply: Result<Reply, String>) -> TargetResult {
        let target = server.to_string();
        match reply {
            Err(reason) => TargetResult {
                target,
                outcome: Outcome::Fail { reason },
                measurements: Vec::new(),
            },
            Ok(reply) => {
                let problems = self.evaluate(server, &reply);
                TargetResult {
                    target,
                    outcome: if problems.is_empty() {
                        Outcome::Pass
                    } else {
                        Outcome::Fail {
                            reason: problems.join("; "),
                        }
                    },
                    measurements: reply_measurements(&reply, self.question.query_type),
                }
            }
        }
    }

    /// Everything wrong with a well-formed reply, empty when it passes.
    fn evaluate(&self, server: SocketAddr, reply: &Reply) -> Vec<String> {
        let mut problems = Vec::new();
        let rcode = u16::from(reply.message.metadata.response_code);
        if rcode != self.expect_rcode {
            problems.push(format!(
                "server `{server}` answered {}, expected {}",
                rcode_name(rcode),
                rcode_name(self.expect_rcode)
            ));
            // Answer counts and values mean nothing under the wrong response code.
            return problems;
        }
        let answers = &reply.message.answers;
        let asked_type = self.question.query_type;
        let of_asked_type = count_of_type(answers, asked_type);
        if of_asked_type < self.min_answers as usize {
            problems.push(format!(
                "server `{server}` returned {}, expected at least {}",
                plural(of_asked_type, &format!("{asked_type} record")),
                self.min_answers
            ));
        }
        let texts: Vec<Vec<String>> = answers.iter().map(answer_match_texts).collect();
        for expected in &self.expect_values {
            if texts.iter().any(|texts| expected.matches(texts)) {
                continue;
            }
            let written = expected.as_written();
            problems.push(match texts.as_slice() {
                [] => format!("no answer from `{server}` to match `{written}`"),
                [only] => format!(
                    "answer `{}` from `{server}` does not match `{written}`",
                    cut(&only[0], 200)
                ),
                all => format!(
                    "none of the {} answers from `{server}` matches `{written}`",
                    all.len()
                ),
            });
        }
        if let Some(limit) = self.max_latency
            && reply.latency > limit
        {
            problems.push(format!(
                "server `{server}` answered in {}, more than max_latency {}",
                format_latency(reply.latency),
                humantime::format_duration(limit)
            ));
        }
        problems
    }
}

/// How many answer records have the asked type: a CNAME that leads nowhere is no answer to an
/// `A` question, though it is in the answer section.
fn count_of_type(answers: &[Record], record_type: RecordType) -> usize {
    answers
        .iter()
        .filter(|record| record.record_type() == record_type)
        .count()
}

fn plural(count: usize, noun: &str) -> String {
    if count == 1 {
        format!("1 {noun}")
    } else {
        format!("{count} {noun}s")
    }
}

/// A latency to the millisecond, for reasons.
fn format_latency(latency: Duration) -> String {
    let millis = Duration::from_millis(u64::try_from(latency.as_millis()).unwrap_or(u64::MAX));
    humantime::format_duration(millis).to_string()
}

/// The texts an expected value is compared with: the answer's value (address, target name, or
/// TXT text) and its full record data in presentation format.
fn answer_match_texts(record: &Record) -> Vec<String> {
    let value = match &record.data {
        RData::A(address) => Some(address.0.to_string()),
        RData::AAAA(address) => Some(address.0.to_string()),
        RData::CNAME(name) => Some(name.0.to_string()),
        RData::NS(name) => Some(name.0.to_string()),
        RData::PTR(name) => Some(name.0.to_string()),
        RData::MX(mx) => Some(mx.exchange.to_string()),
        RData::SRV(srv) => Some(srv.target.to_string()),
        RData::SOA(soa) => Some(soa.mname.to_string()),
        RData::TXT(txt) => Some(
            txt.txt_data
                .iter()
                .map(|part| String::from_utf8_lossy(part))
                .collect::<String>(),
        ),
        _ => None,
    };
    let data = record.data.to_string();
    value.into_iter().chain(std::iter::once(data)).collect()
}

/// Cuts `text` to at most `max_bytes` bytes on a character boundary, marking the cut.
fn cut(text: &str, max_bytes: usize) -> String {
    if text.len() <= max_bytes {
        return text.to_owned();
    }
    let mut end = max_bytes.saturating_sub(TRUNCATED_MARKER.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{TRUNCATED_MARKER}", &text[..end])
}

fn reply_measurements(reply: &Reply, asked_type: RecordType) -> Vec<Measurement> {
    let answers = &reply.message.answers;
    let mut measurements = vec![
        measurement("latency_seconds", reply.latency.as_secs_f64()),
        measurement(
            "rcode",
            f64::from(u16::from(reply.message.metadata.response_code)),
        ),
        measurement("answers", count_of_type(answers, asked_type) as f64),
        measurement("tcp_fallback", f64::from(u8::from(reply.tcp_fallback))),
    ];
    measurements.extend(
        answers
            .iter()
            .take(MAX_ANSWER_MEASUREMENTS)
            .map(|record| Measurement {
                name: "answer".to_owned(),
                value: f64::from(record.ttl),
                text: cut(&record.to_string(), MAX_ANSWER_TEXT_BYTES),
            }),
    );
    if answers.len() > MAX_ANSWER_MEASUREMENTS {
        measurements.push(measurement(
            "answers_omitted",
            (answers.len() - MAX_ANSWER_MEASUREMENTS) as f64,
        ));
    }
    measurements
}

/// A well-formed reply to our question and how it was obtained.
#[derive(Debug, Clone)]
pub struct Reply {
    pub message: Message,
    /// From sending the first query to receiving the accepted reply (both attempts when the
    /// UDP reply was truncated and retried over TCP).
    pub latency: Duration,
    /// The UDP reply had the TC bit and the answer came over TCP.
    pub tcp_fallback: bool,
}

/// Asks one server one question over `transport`, retrying over TCP when a UDP reply is
/// truncated. `Err` is a reason naming the server: no reply, or no acceptable one.
pub async fn exchange(
    server: SocketAddr,
    question: &Query,
    transport: Transport,
    timeout: Duration,
) -> Result<Reply, String> {
    let started = Instant::now();
    let message = match transport {
        Transport::Tcp => query_tcp(server, question, timeout).await?,
        Transport::Udp => query_udp(server, question, timeout).await?,
    };
    if transport == Transport::Udp && message.metadata.truncation {
        let message = query_tcp(server, question, timeout).await.map_err(|error| {
            format!("reply over udp from `{server}` was truncated and the retry over tcp failed: {error}")
        })?;
        return Ok(Reply {
            message,
            latency: started.elapsed(),
            tcp_fallback: true,
        });
    }
    Ok(Reply {
        message,
        latency: started.elapsed(),
        tcp_fallback: false,
    })
}

fn encode_query(question: &Query, id: u16) -> Result<Vec<u8>, String> {
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(question.clone());
    let mut edns = Edns::new();
    edns.set_max_payload(UDP_PAYLOAD_BYTES);
    message.set_edns(edns);
    message
        .to_vec()
        .map_err(|error| format!("cannot encode the query for `{}`: {error}", question.name))
}

/// One query over UDP from a fresh socket connected to the server (so only its datagrams are
/// received). Like a stub resolver, a datagram that is not an acceptable reply (garbage, wrong
/// id, other question, too large) is set aside and the wait goes on until the deadline; if no
/// acceptable reply comes, the reason names the last rejected one.
async fn query_udp(
    server: SocketAddr,
    question: &Query,
    timeout: Duration,
) -> Result<Message, String> {
    let deadline = Instant::now() + timeout;
    let local = match server {
        SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
    };
    let socket = UdpSocket::bind(local)
        .await
        .map_err(|error| format!("cannot open a udp socket to query `{server}`: {error}"))?;
    socket
        .connect(server)
        .await
        .map_err(|error| format!("cannot send to `{server}`: {error}"))?;
    let id = rand::random::<u16>();
    let query = encode_query(question, id)?;
    socket
        .send(&query)
        .await
        .map_err(|error| format!("cannot send to `{server}`: {error}"))?;
    let mut buffer = vec![0_u8; usize::from(u16::MAX)];
    let mut rejected: Option<String> = None;
    loop {
        let length = match tokio::time::timeout_at(deadline, socket.recv(&mut buffer)).await {
            Err(_elapsed) => {
                let within = humantime::format_duration(timeout);
                return Err(match rejected {
                    None => format!("no answer from `{server}` within {within}"),
                    Some(problem) => format!("{problem}, and no valid reply within {within}"),
                });
            }
            Ok(Err(error)) if error.kind() == std::io::ErrorKind::ConnectionRefused => {
                return Err(format!(
                    "server `{server}` refused the query (nothing listens on that port)"
                ));
            }
            Ok(Err(error)) => return Err(format!("cannot receive from `{server}`: {error}")),
            Ok(Ok(length)) => length,
        };
        let datagram = buffer.get(..length).unwrap_or_default();
        if length > usize::from(UDP_PAYLOAD_BYTES) {
            rejected = Some(format!(
                "reply from `{server}` is {length} bytes, more than the {UDP_PAYLOAD_BYTES} the \
                 query allowed"
            ));
            continue;
        }
        match decode_reply(datagram, id, question, server) {
            Ok(message) => return Ok(message),
            Err(problem) => rejected = Some(problem),
        }
    }
}

/// One query over a fresh TCP connection (two-byte length prefix, RFC 1035 4.2.2).
async fn query_tcp(
    server: SocketAddr,
    question: &Query,
    timeout: Duration,
) -> Result<Message, String> {
    let attempt = async {
        let mut stream = TcpStream::connect(server)
            .await
            .map_err(|error| format!("tcp connection to `{server}` failed: {error}"))?;
        let id = rand::random::<u16>();
        let query = encode_query(question, id)?;
        let length = u16::try_from(query.len())
            .map_err(|_| format!("the query for `{}` is too long", question.name))?;
        let mut framed = Vec::with_capacity(query.len() + 2);
        framed.extend_from_slice(&length.to_be_bytes());
        framed.extend_from_slice(&query);
        stream
            .write_all(&framed)
            .await
            .map_err(|error| format!("cannot send to `{server}` over tcp: {error}"))?;
        let mut length = [0_u8; 2];
        stream
            .read_exact(&mut length)
            .await
            .map_err(|error| format!("reply over tcp from `{server}` ended early: {error}"))?;
        let mut reply = vec![0_u8; usize::from(u16::from_be_bytes(length))];
        stream
            .read_exact(&mut reply)
            .await
            .map_err(|error| format!("reply over tcp from `{server}` ended early: {error}"))?;
        decode_reply(&reply, id, question, server)
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_elapsed) => Err(format!(
            "no answer from `{server}` over tcp within {}",
            humantime::format_duration(timeout)
        )),
    }
}

/// Parses a reply and checks that it answers our query: a response, our id, our question.
fn decode_reply(
    bytes: &[u8],
    id: u16,
    question: &Query,
    server: SocketAddr,
) -> Result<Message, String> {
    let Some(header_id) = bytes.get(..2) else {
        return Err(format!(
            "reply from `{server}` is {} bytes, too short for a dns message",
            bytes.len()
        ));
    };
    let reply_id = u16::from_be_bytes([header_id[0], header_id[1]]);
    if reply_id != id {
        return Err(format!(
            "reply from `{server}` has id {reply_id}, expected {id}"
        ));
    }
    let message = Message::from_vec(bytes)
        .map_err(|error| format!("reply from `{server}` is not a valid dns message: {error}"))?;
    if message.metadata.message_type != MessageType::Response {
        return Err(format!("reply from `{server}` is a query, not a response"));
    }
    // A server refusing a query it cannot parse may leave the question out; any other reply
    // must repeat our question.
    let echoes_question = match message.queries.as_slice() {
        [] => message.metadata.response_code != ResponseCode::NoError,
        [asked] => {
            asked.name == question.name
                && asked.query_type == question.query_type
                && asked.query_class == question.query_class
        }
        _ => false,
    };
    if !echoes_question {
        let asked = message
            .queries
            .iter()
            .map(|q| format!("{} {}", q.name, q.query_type))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(format!(
            "reply from `{server}` answers `{}`, not `{} {}`",
            cut(&asked, 200),
            question.name,
            question.query_type
        ));
    }
    Ok(message)
}

/// One SRV record's target, as used to find the servers of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvTarget {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    /// The target host name without the trailing dot (`dc1.corp.example.com`).
    pub host: String,
}

/// Looks up the SRV records of `name` (`_ldap._tcp.dc._msdcs.corp.example.com`) and returns
/// their targets sorted by priority, then by weight (heaviest first).
///
/// `servers` are asked in turn (UDP, retried over TCP when truncated), each given `timeout`, until
/// one answers with `NOERROR` or `NXDOMAIN`; empty `servers` means the system resolvers (the
/// first three `nameserver` lines of `/etc/resolv.conf`). A `NOERROR` answer without SRV
/// records is `Ok(vec![])`; targets of `.` ("service not available here", RFC 2782) are left
/// out. `Err` is a reason fit for a check result: the name does not exist (NXDOMAIN, naming the
/// server), or every server failed (each server's reason, joined by `; `).
pub async fn lookup_srv(
    servers: &[SocketAddr],
    name: &str,
    timeout: Duration,
) -> Result<Vec<SrvTarget>, String> {
    let query = parse_query_name(name, RecordType::SRV)?;
    let question = Query::query(query, RecordType::SRV);
    let servers = if servers.is_empty() {
        system_nameservers()?
    } else {
        servers.to_vec()
    };
    let mut problems = Vec::new();
    for server in servers {
        let reply = match exchange(server, &question, Transport::Udp, timeout).await {
            Ok(reply) => reply,
            Err(problem) => {
                problems.push(problem);
                continue;
            }
        };
        match reply.message.metadata.response_code {
            ResponseCode::NoError => {
                let mut targets: Vec<SrvTarget> = reply
                    .message
                    .answers
                    .iter()
                    .filter_map(|record| match &record.data {
                        RData::SRV(srv) if !srv.target.is_root() => Some(SrvTarget {
                            priority: srv.priority,
                            weight: srv.weight,
                            port: srv.port,
                            host: srv.target.to_string().trim_end_matches('.').to_owned(),
                        }),
                        _ => None,
                    })
                    .collect();
                targets.sort_by(|a, b| {
                    a.priority
                        .cmp(&b.priority)
                        .then(b.weight.cmp(&a.weight))
                        .then(a.host.cmp(&b.host))
                        .then(a.port.cmp(&b.port))
                });
                return Ok(targets);
            }
            ResponseCode::NXDomain => {
                return Err(format!(
                    "`{}` does not exist (NXDOMAIN from `{server}`)",
                    question.name
                ));
            }
            other => problems.push(format!(
                "server `{server}` answered {}",
                rcode_name(u16::from(other))
            )),
        }
    }
    Err(problems.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::CheckConfig;
    use crate::checks::test_support::parse_entry;

    fn config(toml_text: &str) -> Result<DnsCheck, String> {
        let CheckConfig::Dns(config) = parse_entry("dns", toml_text)? else {
            unreachable!("a dns entry parses as a dns config")
        };
        config.validate()
    }

    fn error(toml_text: &str) -> String {
        match config(toml_text) {
            Ok(check) => panic!("expected an error for {toml_text:?}, got {check:?}"),
            Err(error) => error,
        }
    }

    #[test]
    fn defaults_ask_for_a_records_from_the_system_resolvers() {
        let check = config("query = \"example.com\"").unwrap();
        assert_eq!(check.question.query_type, RecordType::A);
        assert_eq!(check.question.name.to_string(), "example.com.");
        assert_eq!(check.target(), "system");
        assert_eq!(check.transport, Transport::Udp);
        assert_eq!(check.expect_rcode, 0);
        assert_eq!(check.min_answers, 1);
        assert_eq!(check.query_timeout, Duration::from_secs(2));
        assert!(check.max_latency.is_none());
    }

    #[test]
    fn the_documented_example_validates() {
        let check = config(
            r#"query = "_ldap._tcp.dc._msdcs.corp.example.com"
type = "srv"
servers = ["10.0.0.53", "10.0.0.54:53", "2001:db8::1", "[2001:db8::2]:5353"]
transport = "tcp"
expect_rcode = "noerror"
min_answers = 2
expect_values = ["dc1.corp.example.com.", 're:^dc\d+\.']
max_latency = "200ms"
query_timeout = "1s""#,
        )
        .unwrap();
        assert_eq!(check.question.query_type, RecordType::SRV);
        assert_eq!(
            check.target(),
            "10.0.0.53:53,10.0.0.54:53,[2001:db8::1]:53,[2001:db8::2]:5353"
        );
        assert_eq!(check.min_answers, 2);
        assert_eq!(check.expect_values.len(), 2);
        assert_eq!(check.max_latency, Some(Duration::from_millis(200)));
    }

    #[test]
    fn min_answers_defaults_to_zero_when_another_rcode_is_expected() {
        let check = config("query = \"nope.example.com\"\nexpect_rcode = \"NXDOMAIN\"").unwrap();
        assert_eq!((check.expect_rcode, check.min_answers), (3, 0));
    }

    #[test]
    fn a_ptr_query_may_be_an_ip_address() {
        let check = config("query = \"10.0.0.53\"\ntype = \"PTR\"").unwrap();
        assert_eq!(check.question.name.to_string(), "53.0.0.10.in-addr.arpa.");
    }

    #[test]
    fn validation_errors_name_the_field_and_value() {
        let cases = [
            ("", "missing field `query`"),
            ("query = \"\"", "`query` is empty"),
            (
                "query = \"a b\"",
                "query `a b` contains spaces or control characters",
            ),
            (
                "query = \"x\"\ntype = \"AXFR\"",
                "type `AXFR` is not supported, expected one of `A`, `AAAA`, `CNAME`, `MX`, \
                 `SRV`, `TXT`, `PTR`, `SOA`, `NS`",
            ),
            (
                "query = \"x\"\nservers = [\"dns1.corp\"]",
                "server `dns1.corp` is not an IP address or `ip:port` (IPv6: `[addr]:port`)",
            ),
            (
                "query = \"x\"\nservers = [\"10.0.0.53:0\"]",
                "server `10.0.0.53:0` has port `0`, which cannot be queried",
            ),
            (
                "query = \"x\"\nservers = [\"10.0.0.53\", \"10.0.0.53:53\"]",
                "server `10.0.0.53:53` is listed twice in `servers`",
            ),
            (
                "query = \"x\"\ntransport = \"quic\"",
                "unknown variant `quic`, expected `udp` or `tcp`",
            ),
            (
                "query = \"x\"\nexpect_rcode = \"GONE\"",
                "expect_rcode `GONE` is not a response code, expected one of `NOERROR`, \
                 `FORMERR`, `SERVFAIL`, `NXDOMAIN`, `NOTIMP`, `REFUSED`, `YXDOMAIN`, `YXRRSET`, \
                 `NXRRSET`, `NOTAUTH`, `NOTZONE`",
            ),
            (
                "query = \"x\"\nexpect_rcode = \"NXDOMAIN\"\nmin_answers = 1",
                "`min_answers` `1` cannot be met with `expect_rcode` `NXDOMAIN`: answers only \
                 come with `NOERROR`",
            ),
            (
                "query = \"x\"\nexpect_rcode = \"SERVFAIL\"\nexpect_values = [\"a\"]",
                "`expect_values` cannot be met with `expect_rcode` `SERVFAIL`: answers only \
                 come with `NOERROR`",
            ),
            (
                "query = \"x\"\nexpect_values = [\"\"]",
                "`expect_values` holds an empty value",
            ),
            (
                "query = \"x\"\nmax_latency = \"0s\"",
                "`max_latency` `0s` would fail every answer",
            ),
            (
                "query = \"x\"\nmax_latency = \"soon\"",
                "invalid duration `soon`: expected number at 0, expected e.g. `30s`, `5m`, `1h`",
            ),
            (
                "query = \"x\"\nquery_timeout = \"0s\"",
                "`query_timeout` `0s` must be at least 1ms",
            ),
            (
                "query = \"x\"\nserver = \"10.0.0.53\"",
                "unknown field `server`, expected one of `query`, `type`, `servers`, \
                 `transport`, `expect_rcode`, `min_answers`, `expect_values`, `max_latency`, \
                 `query_timeout`",
            ),
        ];
        for (toml_text, expected) in cases {
            assert_eq!(error(toml_text), expected, "config: {toml_text}");
        }
    }

    #[test]
    fn a_bad_regex_is_named_with_its_value() {
        let message = error("query = \"x\"\nexpect_values = [\"re:dc(\"]");
        assert!(
            message.starts_with("expect_values `re:dc(` is not a valid regex: "),
            "{message}"
        );
        assert!(!message.contains('\n'), "{message}");
    }

    #[test]
    fn resolv_conf_nameservers_in_order_without_comments() {
        let text = "# generated\nsearch corp.example.com\nnameserver 10.0.0.53 # primary\n\
                    nameserver\tfe80::1%eth0\n;nameserver 10.9.9.9\nnameserver 2001:db8::53\n";
        assert_eq!(
            parse_resolv_conf_nameservers(text),
            ["10.0.0.53", "fe80::1%eth0", "2001:db8::53"]
        );
    }

    #[test]
    fn answer_texts_are_cut_on_a_character_boundary_with_a_marker() {
        assert_eq!(cut("short", 512), "short");
        let long = "é".repeat(400);
        let cut_text = cut(&long, MAX_ANSWER_TEXT_BYTES);
        assert!(cut_text.len() <= MAX_ANSWER_TEXT_BYTES);
        assert!(cut_text.ends_with(TRUNCATED_MARKER));
    }

    #[test]
    fn exact_values_ignore_case_and_the_trailing_dot() {
        let exact = ExpectedValue::parse("DC1.corp.example.com").unwrap();
        assert!(exact.matches(&["dc1.corp.example.com.".to_owned()]));
        assert!(!exact.matches(&["dc2.corp.example.com.".to_owned()]));
        let pattern = ExpectedValue::parse(r"re:^dc\d+\.").unwrap();
        assert!(pattern.matches(&["0 100 389 dc1.x.".to_owned(), "dc1.x.".to_owned()]));
        assert!(!pattern.matches(&["0 100 389 dc1.x.".to_owned()]));
    }

    #[test]
    fn rcode_names_round_trip() {
        for (name, code) in RCODE_NAMES {
            assert_eq!(parse_rcode(name), Ok(*code));
            assert_eq!(rcode_name(*code), *name);
        }
        assert_eq!(rcode_name(23), "RCODE23");
    }
}
