//! The `dhcp` check: do the DHCP servers answer a DHCPDISCOVER with a DHCPOFFER, quickly, with an
//! address from the expected range, and does any server answer that should not (a rogue).
//!
//! ```toml
//! [[checks]]
//! name = "dhcp-lan"
//! kind = "dhcp"
//! mode = "broadcast"                          # or "relay"
//! interface = "eth0"                          # broadcast: the interface to probe
//! expected_servers = ["10.0.0.2", "10.0.0.3"] # any other server identifier is a rogue
//! expected_range = "10.0.0.100-10.0.0.200"    # or a CIDR, "10.0.0.0/24"
//! min_offers = 1
//! max_latency = "500ms"
//! collect_for = "2s"
//!
//! [[checks]]
//! name = "dhcp-server-2"
//! kind = "dhcp"
//! mode = "relay"
//! server = "10.0.0.2"                         # relay: the server to ask
//! relay_address = "10.0.0.10"                 # one of this host's addresses (default: the one
//!                                             # towards the server)
//! ```
//!
//! **No lease is ever taken.** The check sends one DHCPDISCOVER and only listens for
//! DHCPOFFERs; it never sends a DHCPREQUEST, so a server keeps at most a short offer
//! reservation. The client hardware address is locally administered (random, `0x02` bit set, a
//! new one every run unless `client_mac` is set), so a probe never claims the host's own address.
//! A random transaction id ties the offers to the probe: replies with another xid or chaddr, that
//! are not BOOTREPLY, are not DHCPOFFER (a DHCPNAK or DHCPACK) or do not parse are counted in
//! `ignored_packets` and otherwise ignored.
//!
//! Two modes:
//!
//! - **`relay`**: the check acts as a relay agent. `giaddr` is `relay_address`, or the local
//!   address the OS picks for the route to the server; the DISCOVER goes from source port 67 to
//!   `server:67` and the server answers the relay on port 67. Works on Linux and Windows, through
//!   routers, and on hosts whose own DHCP client holds port 68. Servers only answer when `giaddr`
//!   falls in a subnet they serve (dnsmasq: a `dhcp-range` covering it), so a relay probe also
//!   tests the scope for that subnet. Only the named server is asked, so a rogue shows up here
//!   only if it is the server named.
//! - **`broadcast`**: the DISCOVER is broadcast to `255.255.255.255:67` on `interface` from
//!   `0.0.0.0:68`, as a booting client does; every server on the segment (rogues included) and
//!   every relay forwarding it answer.
//!
//! Why a plain UDP socket receives the offers (no packet socket): a DISCOVER without the
//! `broadcast` flag (0x8000) asks the server to unicast the OFFER to the offered address and the
//! client's hardware address. With a random chaddr that frame is addressed to a MAC the interface
//! does not have and an IP it does not own, so the kernel drops it before any socket sees it
//! (which is what a quick try with dnsmasq showed). The check sets the `broadcast` flag, so
//! servers broadcast the OFFER to `255.255.255.255:68`, which a UDP socket bound to `0.0.0.0:68`
//! receives. Verified against dnsmasq 2.90 across a veth pair (the namespace test below, run as
//! root): with the flag the OFFER arrives, without it dnsmasq unicasts it to the random MAC and
//! nothing is received. A second trap in that quick try: dnsmasq pings an address before it
//! first offers it and only answers after the ping times out, about 3 s after the DISCOVER; a
//! shorter wait sees nothing although dnsmasq logs its DHCPOFFER. For dnsmasq servers (unless
//! run with `--no-ping`), set `collect_for = "5s"` and a check `timeout` above it; the 2 s
//! default suits servers without conflict detection (ISC dhcpd and Windows DHCP by default).
//! On Linux the socket is bound to the interface with `SO_BINDTODEVICE` (so the broadcast leaves
//! and is received on that interface only) and `SO_BROADCAST`. On Windows, which has no
//! `SO_BINDTODEVICE`, the socket is bound to the interface's IPv4 address, port 68; this builds
//! but is untested, and it fails while the Windows DHCP Client service holds port 68 on that
//! address: use `relay` there.
//!
//! Privileges: ports 67 and 68 are privileged. On Linux binding needs root or
//! `CAP_NET_BIND_SERVICE`, and `SO_BINDTODEVICE` needs `CAP_NET_RAW` on kernels before 5.7; on
//! Windows, a port held exclusively needs Administrator. A missing privilege, or a port held by
//! another program (a DHCP client or server on this host), is the check's failure reason, named
//! as such. Port 68 is held for one probe only: the socket is closed when the probe ends, also
//! when the runner's timeout cuts it short.
//!
//! Two dhcp checks never probe at the same time on one agent (both would bind the same port):
//! they take turns, and the wait counts against each one's timeout.
//!
//! Results: one per server that offered (target: its server identifier, option 54), and one
//! summary (target: the interface, or the relay server as `address:port`).

use super::{Outcome, TargetResult, measurement};
use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use estate_proto::v1::Measurement;
use serde::{Deserialize, Deserializer};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::time::Instant;

/// The kind's name in `kind = "dhcp"`.
pub const KIND: &str = "dhcp";

/// Held for the whole of a probe: the agent's dhcp checks run one at a time, since each binds
/// the same well-known port.
static DHCP_PORTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The port DHCP servers (and relay agents) listen on.
pub const SERVER_PORT: u16 = 67;
/// The port DHCP clients listen on.
pub const CLIENT_PORT: u16 = 68;

/// How the DISCOVER reaches the servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DhcpMode {
    /// Broadcast on `interface`, as a booting client does.
    Broadcast,
    /// Unicast to `server`, as a relay agent does.
    Relay,
}

/// The `dhcp` check's own fields.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DhcpCheckConfig {
    /// `broadcast` (on `interface`) or `relay` (to `server`).
    pub mode: DhcpMode,
    /// Broadcast mode: the interface to broadcast on (`eth0`; on Windows the name the agent's
    /// network inventory reports).
    pub interface: Option<String>,
    /// Relay mode: the DHCP server to ask, an IPv4 address or a host name.
    pub server: Option<String>,
    /// Relay mode: the server's port. 67 unless a test server listens elsewhere.
    #[serde(default = "default_server_port")]
    pub server_port: u16,
    /// Relay mode: the address put in `giaddr`, from whose subnet the server picks the offered
    /// address and where it sends its answer, so it must be one of this host's addresses (a
    /// router's address would send the offer to the router). Default: this host's address on
    /// the route to the server.
    pub relay_address: Option<Ipv4Addr>,
    /// Relay mode: the local port the DISCOVER is sent from and the offers come back to. 67, the
    /// port servers answer relays on; 0 (any free port) only for test servers that answer the
    /// sender's port.
    #[serde(default = "default_server_port")]
    pub relay_port: u16,
    /// The client hardware address in the DISCOVER (`02:00:5e:10:00:01`). Default: a random,
    /// locally administered address, new at every run.
    pub client_mac: Option<String>,
    /// How long to collect offers after the DISCOVER (`"2s"`). Capped to 90% of the check's
    /// timeout, so the summary is reported instead of a timeout.
    #[serde(default = "default_collect_for", with = "crate::config::duration")]
    pub collect_for: Duration,
    /// The fewest servers that must offer.
    #[serde(default = "default_min_offers")]
    pub min_offers: u32,
    /// Server identifiers (option 54) allowed to offer; any other server is a rogue, which fails
    /// its own result and the summary. Empty: every server is accepted.
    #[serde(default)]
    pub expected_servers: Vec<Ipv4Addr>,
    /// Offered addresses must fall in this range: `"10.0.0.100-10.0.0.200"` or a CIDR
    /// (`"10.0.0.0/24"`). No limit by default.
    pub expected_range: Option<String>,
    /// Fail a server whose offer came later than this after the DISCOVER (`"500ms"`).
    #[serde(default, deserialize_with = "optional_duration")]
    pub max_latency: Option<Duration>,
}

/// DHCP servers listen on port 67.
pub fn default_server_port() -> u16 {
    SERVER_PORT
}

/// Two seconds: servers answer in milliseconds, but some delay offers on purpose (Windows DHCP
/// split scopes, dnsmasq on a busy host), and it fits the default check timeout of five seconds.
pub fn default_collect_for() -> Duration {
    Duration::from_secs(2)
}

/// One server is enough unless the site runs redundant servers.
pub fn default_min_offers() -> u32 {
    1
}

fn optional_duration<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    crate::config::duration::deserialize(deserializer).map(Some)
}

impl DhcpCheckConfig {
    /// Checks that the mode has what it needs and that addresses, MAC and range are well formed.
    pub fn validate(&self) -> Result<DhcpCheck, String> {
        let target = match self.mode {
            DhcpMode::Broadcast => {
                if self.server.is_some() || self.relay_address.is_some() {
                    return Err(
                        "`server` and `relay_address` are for `mode = \"relay\"`".to_owned()
                    );
                }
                let interface = self
                    .interface
                    .as_deref()
                    .ok_or("`mode = \"broadcast\"` needs an `interface`")?;
                if interface.is_empty()
                    || interface.chars().any(|c| c.is_control())
                    || interface.len() > 255
                {
                    return Err(format!("interface `{interface}` is not an interface name"));
                }
                DhcpTarget::Broadcast {
                    interface: interface.to_owned(),
                }
            }
            DhcpMode::Relay => {
                if self.interface.is_some() {
                    return Err("`interface` is for `mode = \"broadcast\"`".to_owned());
                }
                let server = self
                    .server
                    .as_deref()
                    .ok_or("`mode = \"relay\"` needs a `server`")?;
                if server.is_empty() || server.chars().any(|c| c.is_whitespace() || c.is_control())
                {
                    return Err(format!("server `{server}` is not a host name or address"));
                }
                if self.server_port == 0 {
                    return Err("server_port `0` is not a port to send to".to_owned());
                }
                DhcpTarget::Relay {
                    server: server.to_owned(),
                    server_port: self.server_port,
                    relay_address: self.relay_address,
                    relay_port: self.relay_port,
                }
            }
        };
        let client_mac = match &self.client_mac {
            Some(text) => Some(parse_mac(text)?),
            None => None,
        };
        if self.collect_for.is_zero() {
            return Err("`collect_for` `0s` would never wait for an offer".to_owned());
        }
        if self.max_latency == Some(Duration::ZERO) {
            return Err("`max_latency` `0s` would fail every offer".to_owned());
        }
        let expected_range = match &self.expected_range {
            Some(text) => Some(AddressRange::parse(text)?),
            None => None,
        };
        Ok(DhcpCheck {
            target,
            client_mac,
            collect_for: self.collect_for,
            min_offers: self.min_offers,
            expected_servers: self.expected_servers.clone(),
            expected_range,
            max_latency: self.max_latency,
        })
    }
}

/// Parses `02:00:5e:10:00:01` (or with `-`) into six bytes.
fn parse_mac(text: &str) -> Result<[u8; 6], String> {
    let malformed = || format!("client_mac `{text}` is not six hex bytes like `02:00:5e:10:00:01`");
    let parts: Vec<&str> = text.split([':', '-']).collect();
    if parts.len() != 6 {
        return Err(malformed());
    }
    let mut mac = [0u8; 6];
    for (byte, part) in mac.iter_mut().zip(parts) {
        if part.len() != 2 {
            return Err(malformed());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| malformed())?;
    }
    if mac[0] & 0x01 != 0 {
        return Err(format!(
            "client_mac `{text}` is a multicast address, a client needs a unicast one"
        ));
    }
    Ok(mac)
}

/// A random, locally administered unicast MAC: `0x02` set, `0x01` (multicast) clear.
fn random_local_mac() -> [u8; 6] {
    let mut mac: [u8; 6] = rand::random();
    mac[0] = (mac[0] | 0x02) & !0x01;
    mac
}

/// An inclusive range of IPv4 addresses, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressRange {
    first: Ipv4Addr,
    last: Ipv4Addr,
    text: String,
}

impl AddressRange {
    /// `first-last` or `network/prefix`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let malformed = || {
            format!(
                "expected_range `{text}` is not `first-last` (`10.0.0.100-10.0.0.200`) or a CIDR (`10.0.0.0/24`)"
            )
        };
        let (first, last) = if let Some((first, last)) = text.split_once('-') {
            let first: Ipv4Addr = first.trim().parse().map_err(|_| malformed())?;
            let last: Ipv4Addr = last.trim().parse().map_err(|_| malformed())?;
            if first > last {
                return Err(format!("expected_range `{text}` ends before it starts"));
            }
            (first, last)
        } else if let Some((network, prefix)) = text.split_once('/') {
            let network: Ipv4Addr = network.trim().parse().map_err(|_| malformed())?;
            let prefix: u32 = prefix.trim().parse().map_err(|_| malformed())?;
            if prefix > 32 {
                return Err(malformed());
            }
            let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
            let first = u32::from(network) & mask;
            (Ipv4Addr::from(first), Ipv4Addr::from(first | !mask))
        } else {
            return Err(malformed());
        };
        Ok(Self {
            first,
            last,
            text: text.to_owned(),
        })
    }

    /// Whether `address` is in the range, ends included.
    pub fn contains(&self, address: Ipv4Addr) -> bool {
        self.first <= address && address <= self.last
    }
}

/// Where a ready check sends its DISCOVER.
#[derive(Debug, Clone, PartialEq, Eq)]
enum DhcpTarget {
    Broadcast {
        interface: String,
    },
    Relay {
        server: String,
        server_port: u16,
        relay_address: Option<Ipv4Addr>,
        relay_port: u16,
    },
}

/// A ready `dhcp` check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpCheck {
    target: DhcpTarget,
    client_mac: Option<[u8; 6]>,
    collect_for: Duration,
    min_offers: u32,
    expected_servers: Vec<Ipv4Addr>,
    expected_range: Option<AddressRange>,
    max_latency: Option<Duration>,
}

/// A DHCPOFFER that belongs to this probe.
#[derive(Debug, Clone, PartialEq)]
struct Offer {
    /// Option 54, or the packet's source when a server leaves it out.
    server_identifier: Ipv4Addr,
    /// Where the packet came from.
    source: SocketAddr,
    offered_address: Ipv4Addr,
    lease_seconds: Option<u32>,
    routers: Vec<Ipv4Addr>,
    dns_servers: Vec<Ipv4Addr>,
    latency: Duration,
}

/// The offers of one probe, each server's first only, and how many packets were not offers.
#[derive(Debug, Default)]
struct Collected {
    offers: Vec<Offer>,
    ignored_packets: u32,
}

impl Collected {
    /// Takes one received packet.
    fn receive(
        &mut self,
        bytes: &[u8],
        source: SocketAddr,
        xid: u32,
        client_mac: &[u8; 6],
        latency: Duration,
    ) {
        match parse_offer(bytes, source, xid, client_mac, latency) {
            Ok(offer) => {
                // A server that repeats its offer is counted once.
                if !self
                    .offers
                    .iter()
                    .any(|o| o.server_identifier == offer.server_identifier)
                {
                    self.offers.push(offer);
                }
            }
            Err(_why) => self.ignored_packets = self.ignored_packets.saturating_add(1),
        }
    }
}

/// Why a received packet is not an offer for this probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ignored {
    Malformed,
    NotBootReply,
    WrongXid,
    WrongChaddr,
    NotOffer,
}

impl DhcpCheck {
    /// The summary's target: the interface, or the relay server as `address:port` (so it never
    /// collides with a server's own result, whose target is its bare identifier).
    pub fn target(&self) -> String {
        match &self.target {
            DhcpTarget::Broadcast { interface } => interface.clone(),
            DhcpTarget::Relay {
                server,
                server_port,
                ..
            } => format!("{server}:{server_port}"),
        }
    }

    /// Sends one DISCOVER and collects offers for `collect_for` (at most 90% of `timeout`). See
    /// the module documentation for the results and measurements.
    pub async fn probe(&self, timeout: Duration) -> Vec<TargetResult> {
        let started = Instant::now();
        // Two probes cannot both bind port 67 (relay) or 68 (broadcast): the agent's dhcp checks
        // take turns. Waiting counts against this check's own timeout.
        let _turn = DHCP_PORTS.lock().await;
        let collect_for = self
            .collect_for
            .min(timeout.mul_f64(0.9).saturating_sub(started.elapsed()));
        let summary_target = self.target();
        let fail = |reason: String| {
            vec![TargetResult {
                target: summary_target.clone(),
                outcome: Outcome::Fail { reason },
                measurements: Vec::new(),
            }]
        };
        let client_mac = self.client_mac.unwrap_or_else(random_local_mac);
        let xid: u32 = rand::random();
        let (socket, destination, discover) = match &self.target {
            DhcpTarget::Broadcast { interface } => {
                let socket = match open_broadcast_socket(interface) {
                    Ok(socket) => socket,
                    Err(reason) => return fail(reason),
                };
                let destination = SocketAddr::from((Ipv4Addr::BROADCAST, SERVER_PORT));
                let discover = discover_message(xid, &client_mac, None);
                (socket, destination, discover)
            }
            DhcpTarget::Relay {
                server,
                server_port,
                relay_address,
                relay_port,
            } => {
                let destination = match resolve_v4(server, *server_port).await {
                    Ok(address) => address,
                    Err(reason) => return fail(reason),
                };
                let giaddr = match relay_address {
                    Some(address) => *address,
                    None => match local_address_towards(destination).await {
                        Ok(address) => address,
                        Err(reason) => return fail(reason),
                    },
                };
                let socket = match open_relay_socket(*relay_port) {
                    Ok(socket) => socket,
                    Err(reason) => return fail(reason),
                };
                let discover = discover_message(xid, &client_mac, Some(giaddr));
                (socket, destination, discover)
            }
        };
        let mut packet = Vec::with_capacity(300);
        if let Err(error) = discover.encode(&mut Encoder::new(&mut packet)) {
            return fail(format!("cannot encode the DHCPDISCOVER: {error}"));
        }
        let sent = Instant::now();
        if let Err(error) = socket.send_to(&packet, destination).await {
            return fail(format!(
                "cannot send the DHCPDISCOVER to `{destination}`: {error}"
            ));
        }
        let deadline = sent + collect_for;
        let mut collected = Collected::default();
        let mut buffer = vec![0u8; 2048];
        loop {
            let received = tokio::time::timeout_at(deadline, socket.recv_from(&mut buffer)).await;
            let (length, source) = match received {
                Err(_elapsed) => break,
                // An ICMP error from an earlier send, or the like: keep listening.
                Ok(Err(_error)) => continue,
                Ok(Ok(received)) => received,
            };
            let bytes = buffer.get(..length).unwrap_or_default();
            collected.receive(bytes, source, xid, &client_mac, sent.elapsed());
        }
        // Port 68 (or 67) is given back here, whatever happens next.
        drop(socket);
        self.evaluate(&summary_target, collect_for, &collected)
    }

    /// What [`Self::probe`] reports when, after its DISCOVER with `xid` from `client_mac`, it
    /// received `packets` (bytes, source, time since the DISCOVER) within `collect_for`: the
    /// same parsing, counting and judgement, without the network. The fuzz target
    /// `dhcp_offers` feeds it arbitrary packets.
    pub fn judge_packets<'a>(
        &self,
        xid: u32,
        client_mac: &[u8; 6],
        packets: impl IntoIterator<Item = (&'a [u8], SocketAddr, Duration)>,
        collect_for: Duration,
    ) -> Vec<TargetResult> {
        let mut collected = Collected::default();
        for (bytes, source, latency) in packets {
            collected.receive(bytes, source, xid, client_mac, latency);
        }
        self.evaluate(&self.target(), collect_for, &collected)
    }

    /// Turns the collected offers into one result per server plus the summary. Pure.
    fn evaluate(
        &self,
        summary_target: &str,
        collect_for: Duration,
        collected: &Collected,
    ) -> Vec<TargetResult> {
        let Collected {
            offers,
            ignored_packets,
        } = collected;
        let ignored_packets = *ignored_packets;
        let mut results = Vec::new();
        let mut rogues = Vec::new();
        for offer in offers {
            let rogue = !self.expected_servers.is_empty()
                && !self.expected_servers.contains(&offer.server_identifier);
            let mut problems = Vec::new();
            if rogue {
                problems.push(format!(
                    "rogue DHCP server `{}` (offer from `{}`)",
                    offer.server_identifier, offer.source
                ));
                rogues.push(format!(
                    "`{}` (from `{}`)",
                    offer.server_identifier, offer.source
                ));
            }
            if let Some(range) = &self.expected_range
                && !range.contains(offer.offered_address)
            {
                problems.push(format!(
                    "offered address `{}` is outside `{}`",
                    offer.offered_address, range.text
                ));
            }
            if let Some(limit) = self.max_latency
                && offer.latency > limit
            {
                problems.push(format!(
                    "offer took {} (max_latency {})",
                    humantime::format_duration(round_ms(offer.latency)),
                    humantime::format_duration(limit)
                ));
            }
            let outcome = if problems.is_empty() {
                Outcome::Pass
            } else {
                Outcome::Fail {
                    reason: problems.join("; "),
                }
            };
            let mut measurements = vec![
                measurement("latency_seconds", offer.latency.as_secs_f64()),
                measurement("rogue", if rogue { 1.0 } else { 0.0 }),
                text_measurement("offered_address", offer.offered_address.to_string()),
                text_measurement("router", join_addresses(&offer.routers)),
                text_measurement("dns_servers", join_addresses(&offer.dns_servers)),
                text_measurement("server_address", offer.source.ip().to_string()),
            ];
            if let Some(lease) = offer.lease_seconds {
                measurements.insert(1, measurement("lease_seconds", f64::from(lease)));
            }
            results.push(TargetResult {
                target: offer.server_identifier.to_string(),
                outcome,
                measurements,
            });
        }
        let offer_count = u32::try_from(offers.len()).unwrap_or(u32::MAX);
        let place = match &self.target {
            DhcpTarget::Broadcast { interface } => format!("on `{interface}`"),
            DhcpTarget::Relay { .. } => format!("from `{summary_target}`"),
        };
        let window = humantime::format_duration(round_ms(collect_for));
        let mut problems = Vec::new();
        if offer_count == 0 && self.min_offers > 0 {
            problems.push(format!("no DHCPOFFER {place} within {window}"));
        } else if offer_count < self.min_offers {
            problems.push(format!(
                "{offer_count} DHCPOFFER {place} within {window}, `min_offers` is `{}`",
                self.min_offers
            ));
        }
        if !rogues.is_empty() {
            problems.push(format!("rogue DHCP server {}", rogues.join(", ")));
        }
        let outcome = if problems.is_empty() {
            Outcome::Pass
        } else {
            Outcome::Fail {
                reason: problems.join("; "),
            }
        };
        results.push(TargetResult {
            target: summary_target.to_owned(),
            outcome,
            measurements: vec![
                measurement("offers", f64::from(offer_count)),
                measurement("rogue_servers", rogues.len() as f64),
                measurement("ignored_packets", f64::from(ignored_packets)),
            ],
        });
        results
    }
}

fn text_measurement(name: &str, text: String) -> Measurement {
    Measurement {
        name: name.to_owned(),
        value: 0.0,
        text,
    }
}

fn join_addresses(addresses: &[Ipv4Addr]) -> String {
    addresses
        .iter()
        .map(Ipv4Addr::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn round_ms(duration: Duration) -> Duration {
    Duration::from_millis(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
}

/// The DISCOVER: BOOTREQUEST from `client_mac`, asking for the usual options. A relay's
/// DISCOVER carries `giaddr` and one hop; a broadcast one sets the `broadcast` flag so servers
/// broadcast their OFFER (see the module documentation).
fn discover_message(xid: u32, client_mac: &[u8; 6], giaddr: Option<Ipv4Addr>) -> Message {
    let unspecified = Ipv4Addr::UNSPECIFIED;
    let mut message = Message::new_with_id(
        xid,
        unspecified,
        unspecified,
        unspecified,
        giaddr.unwrap_or(unspecified),
        client_mac,
    );
    match giaddr {
        Some(_) => {
            message.set_hops(1);
        }
        None => {
            message.set_flags(Flags::default().set_broadcast());
        }
    }
    let options = message.opts_mut();
    options.insert(DhcpOption::MessageType(MessageType::Discover));
    let mut client_identifier = vec![1u8];
    client_identifier.extend_from_slice(client_mac);
    options.insert(DhcpOption::ClientIdentifier(client_identifier));
    options.insert(DhcpOption::ParameterRequestList(vec![
        OptionCode::SubnetMask,
        OptionCode::Router,
        OptionCode::DomainNameServer,
        OptionCode::DomainName,
        OptionCode::AddressLeaseTime,
        OptionCode::ServerIdentifier,
    ]));
    options.insert(DhcpOption::MaxMessageSize(1500));
    message
}

/// Options whose decoder in dhcproto asserts a length instead of checking it, or subtracts
/// from it (the first found by the `dhcp_offers` fuzz target), with the lengths it accepts:
/// (code, shortest, longest). 80 Rapid Commit, 81 Client FQDN, 94 Client Network Interface,
/// 151-155 the bulk lease query status code and times.
const CHECKED_LENGTH_OPTIONS: &[(u8, usize, usize)] = &[
    (80, 0, 0),
    (81, 3, 255),
    (94, 3, 3),
    (151, 1, 255),
    (152, 4, 4),
    (153, 4, 4),
    (154, 4, 4),
    (155, 4, 4),
];

/// Whether the options of a BOOTP packet hold one of [`CHECKED_LENGTH_OPTIONS`] with a length
/// outside its bounds: such a packet is malformed and must not reach the decoder.
fn has_misshapen_fixed_length_option(bytes: &[u8]) -> bool {
    // 236 bytes of fixed header, then the 4-byte magic cookie, then code/length/value options.
    let Some(mut options) = bytes.get(240..) else {
        return false;
    };
    while let Some((&code, rest)) = options.split_first() {
        match code {
            0 => options = rest,
            255 => return false,
            _ => {
                let Some((&length, rest)) = rest.split_first() else {
                    return false;
                };
                let length = usize::from(length);
                if CHECKED_LENGTH_OPTIONS
                    .iter()
                    .any(|&(checked, shortest, longest)| {
                        checked == code && !(shortest..=longest).contains(&length)
                    })
                {
                    return true;
                }
                options = rest.get(length..).unwrap_or_default();
            }
        }
    }
    false
}

/// Parses one received packet; an offer for this probe or why it is not one. Never panics,
/// whatever the bytes.
fn parse_offer(
    bytes: &[u8],
    source: SocketAddr,
    xid: u32,
    client_mac: &[u8; 6],
    latency: Duration,
) -> Result<Offer, Ignored> {
    if has_misshapen_fixed_length_option(bytes) {
        return Err(Ignored::Malformed);
    }
    let message = Message::decode(&mut Decoder::new(bytes)).map_err(|_| Ignored::Malformed)?;
    if message.opcode() != Opcode::BootReply {
        return Err(Ignored::NotBootReply);
    }
    if message.xid() != xid {
        return Err(Ignored::WrongXid);
    }
    // `Message::chaddr` slices by `hlen` and would panic on a length over 16: check it first.
    if usize::from(message.hlen()) != client_mac.len() || message.chaddr() != client_mac {
        return Err(Ignored::WrongChaddr);
    }
    if message.opts().msg_type() != Some(MessageType::Offer) {
        return Err(Ignored::NotOffer);
    }
    let options = message.opts();
    let server_identifier = match options.get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(address)) => *address,
        _ => match source {
            SocketAddr::V4(source) => *source.ip(),
            SocketAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
        },
    };
    let lease_seconds = match options.get(OptionCode::AddressLeaseTime) {
        Some(DhcpOption::AddressLeaseTime(seconds)) => Some(*seconds),
        _ => None,
    };
    let routers = match options.get(OptionCode::Router) {
        Some(DhcpOption::Router(routers)) => routers.clone(),
        _ => Vec::new(),
    };
    let dns_servers = match options.get(OptionCode::DomainNameServer) {
        Some(DhcpOption::DomainNameServer(servers)) => servers.clone(),
        _ => Vec::new(),
    };
    Ok(Offer {
        server_identifier,
        source,
        offered_address: message.yiaddr(),
        lease_seconds,
        routers,
        dns_servers,
        latency,
    })
}

/// The first IPv4 address of `host`.
async fn resolve_v4(host: &str, port: u16) -> Result<SocketAddr, String> {
    let addresses = tokio::net::lookup_host((host, port))
        .await
        .map_err(|error| format!("cannot resolve `{host}`: {error}"))?;
    addresses
        .into_iter()
        .find(SocketAddr::is_ipv4)
        .ok_or_else(|| format!("`{host}` has no IPv4 address (DHCP is IPv4)"))
}

/// The local address the OS picks for the route to `destination`: a connected UDP socket's
/// own address (connecting a UDP socket sends nothing).
async fn local_address_towards(destination: SocketAddr) -> Result<Ipv4Addr, String> {
    let no_route = |error: std::io::Error| format!("no route to `{destination}`: {error}");
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .await
        .map_err(no_route)?;
    socket.connect(destination).await.map_err(no_route)?;
    match socket.local_addr().map_err(no_route)? {
        SocketAddr::V4(local) if !local.ip().is_unspecified() => Ok(*local.ip()),
        other => Err(format!(
            "no IPv4 address towards `{destination}` (got `{other}`), set `relay_address`"
        )),
    }
}

/// What binding a privileged port takes, named for this platform.
#[cfg(not(windows))]
fn bind_privilege(port: u16) -> String {
    format!("binding udp port {port} needs root or CAP_NET_BIND_SERVICE")
}

#[cfg(windows)]
fn bind_privilege(port: u16) -> String {
    format!("binding udp port {port} needs Administrator")
}

/// A bind error as a reason: the privilege or the port's holder, never a bare OS error code.
fn bind_error(port: u16, error: &std::io::Error, broadcast: bool) -> String {
    use std::io::ErrorKind;
    match error.kind() {
        ErrorKind::PermissionDenied if broadcast && cfg!(target_os = "linux") => format!(
            "{}; SO_BINDTODEVICE needs CAP_NET_RAW",
            bind_privilege(port)
        ),
        ErrorKind::PermissionDenied => bind_privilege(port),
        ErrorKind::AddrInUse if port == CLIENT_PORT => format!(
            "udp port {port} is in use (a DHCP client on this host?); `mode = \"relay\"` does not need it"
        ),
        ErrorKind::AddrInUse => {
            format!("udp port {port} is in use (a DHCP server or relay on this host?)")
        }
        _ => format!("cannot bind udp port {port}: {error}"),
    }
}

/// A non-blocking IPv4 UDP socket with `SO_BROADCAST`, not yet bound.
fn new_udp_socket() -> Result<socket2::Socket, String> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
        .map_err(|error| format!("cannot open a udp socket: {error}"))?;
    socket
        .set_nonblocking(true)
        .map_err(|error| format!("cannot make the udp socket non-blocking: {error}"))?;
    Ok(socket)
}

fn into_tokio(socket: socket2::Socket) -> Result<UdpSocket, String> {
    UdpSocket::from_std(socket.into())
        .map_err(|error| format!("cannot register the udp socket: {error}"))
}

/// The relay's socket: `0.0.0.0:relay_port`.
fn open_relay_socket(relay_port: u16) -> Result<UdpSocket, String> {
    let socket = new_udp_socket()?;
    let address = SocketAddr::from((Ipv4Addr::UNSPECIFIED, relay_port));
    socket
        .bind(&address.into())
        .map_err(|error| bind_error(relay_port, &error, false))?;
    into_tokio(socket)
}

/// The broadcast socket on Linux: `0.0.0.0:68`, bound to `interface` with `SO_BINDTODEVICE`.
#[cfg(target_os = "linux")]
fn open_broadcast_socket(interface: &str) -> Result<UdpSocket, String> {
    use std::io::ErrorKind;
    let socket = new_udp_socket()?;
    socket
        .set_broadcast(true)
        .map_err(|error| format!("cannot set SO_BROADCAST: {error}"))?;
    socket
        .bind_device(Some(interface.as_bytes()))
        .map_err(|error| match error.kind() {
            ErrorKind::PermissionDenied => format!(
                "{}; SO_BINDTODEVICE needs CAP_NET_RAW",
                bind_privilege(CLIENT_PORT)
            ),
            ErrorKind::NotFound => format!("no interface `{interface}`"),
            _ if error.raw_os_error() == Some(19) => format!("no interface `{interface}`"),
            _ => format!("cannot bind to interface `{interface}`: {error}"),
        })?;
    let address = SocketAddr::from((Ipv4Addr::UNSPECIFIED, CLIENT_PORT));
    socket
        .bind(&address.into())
        .map_err(|error| bind_error(CLIENT_PORT, &error, true))?;
    into_tokio(socket)
}

/// The broadcast socket elsewhere (Windows): the interface's IPv4 address, port 68.
#[cfg(not(target_os = "linux"))]
fn open_broadcast_socket(interface: &str) -> Result<UdpSocket, String> {
    let interfaces = if_addrs::get_if_addrs()
        .map_err(|error| format!("cannot list the network interfaces: {error}"))?;
    let local = interfaces
        .iter()
        .filter(|candidate| candidate.name == interface)
        .find_map(|candidate| match candidate.ip() {
            std::net::IpAddr::V4(address) => Some(address),
            std::net::IpAddr::V6(_) => None,
        })
        .ok_or_else(|| format!("no interface `{interface}` with an IPv4 address"))?;
    let socket = new_udp_socket()?;
    socket
        .set_broadcast(true)
        .map_err(|error| format!("cannot set SO_BROADCAST: {error}"))?;
    let address = SocketAddr::from((local, CLIENT_PORT));
    socket
        .bind(&address.into())
        .map_err(|error| bind_error(CLIENT_PORT, &error, true))?;
    into_tokio(socket)
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_client_network_interface_option_of_the_wrong_length_is_malformed_not_a_panic() {
        let mut packet = vec![0u8; 240];
        packet[..4].copy_from_slice(&[2, 1, 6, 0]);
        packet[236..240].copy_from_slice(&[99, 130, 83, 99]);
        // Option 53 (OFFER), then option 94 with 2 bytes instead of 3 (found by fuzzing).
        packet.extend_from_slice(&[53, 1, 2, 94, 2, 1, 2, 255]);
        assert!(has_misshapen_fixed_length_option(&packet));
        let source = SocketAddr::from(([127, 0, 0, 1], 67));
        assert!(matches!(
            parse_offer(&packet, source, 0, &[0; 6], Duration::ZERO),
            Err(Ignored::Malformed)
        ));
        // The same option with its 3 bytes is fine.
        let len = packet.len();
        packet[len - 5..].copy_from_slice(&[94, 3, 1, 2, 3]);
        packet.push(255);
        assert!(!has_misshapen_fixed_length_option(&packet));
    }
    use super::*;
    use crate::checks::CheckConfig;
    use crate::checks::test_support::parse_entry;

    /// `aa:bb:cc:dd:ee:ff`.
    fn format_mac(mac: &[u8; 6]) -> String {
        mac.iter()
            .map(|byte| format!("{byte:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    }

    fn config(toml_text: &str) -> Result<DhcpCheck, String> {
        let CheckConfig::Dhcp(config) = parse_entry("dhcp", toml_text)? else {
            unreachable!("a dhcp entry parses as a dhcp config")
        };
        config.validate()
    }

    fn check_config(toml_text: &str, expected: Result<&str, &str>) {
        let actual = config(toml_text).map(|check| check.target());
        let expected = expected.map(str::to_owned).map_err(str::to_owned);
        assert_eq!(actual, expected, "config: {toml_text}");
    }

    #[test]
    fn config_forms_and_errors() {
        check_config("mode = \"broadcast\"\ninterface = \"eth0\"", Ok("eth0"));
        check_config("mode = \"relay\"\nserver = \"10.0.0.2\"", Ok("10.0.0.2:67"));
        check_config(
            "mode = \"relay\"\nserver = \"dhcp1\"\nserver_port = 6767\nrelay_address = \"10.0.5.1\"\nrelay_port = 0",
            Ok("dhcp1:6767"),
        );
        check_config(
            "mode = \"broadcast\"",
            Err("`mode = \"broadcast\"` needs an `interface`"),
        );
        check_config(
            "mode = \"relay\"",
            Err("`mode = \"relay\"` needs a `server`"),
        );
        check_config(
            "mode = \"broadcast\"\ninterface = \"eth0\"\nserver = \"x\"",
            Err("`server` and `relay_address` are for `mode = \"relay\"`"),
        );
        check_config(
            "mode = \"relay\"\nserver = \"x\"\ninterface = \"eth0\"",
            Err("`interface` is for `mode = \"broadcast\"`"),
        );
        check_config(
            "mode = \"relay\"\nserver = \"x\"\nserver_port = 0",
            Err("server_port `0` is not a port to send to"),
        );
        check_config(
            "mode = \"broadcast\"\ninterface = \"eth0\"\nclient_mac = \"02:00:00:00:00\"",
            Err("client_mac `02:00:00:00:00` is not six hex bytes like `02:00:5e:10:00:01`"),
        );
        check_config(
            "mode = \"broadcast\"\ninterface = \"eth0\"\nclient_mac = \"03:00:00:00:00:01\"",
            Err(
                "client_mac `03:00:00:00:00:01` is a multicast address, a client needs a unicast one",
            ),
        );
        check_config(
            "mode = \"broadcast\"\ninterface = \"eth0\"\nexpected_range = \"10.0.0.200-10.0.0.100\"",
            Err("expected_range `10.0.0.200-10.0.0.100` ends before it starts"),
        );
        check_config(
            "mode = \"broadcast\"\ninterface = \"eth0\"\nexpected_range = \"10.0.0.0\"",
            Err(
                "expected_range `10.0.0.0` is not `first-last` (`10.0.0.100-10.0.0.200`) or a CIDR (`10.0.0.0/24`)",
            ),
        );
        check_config(
            "mode = \"broadcast\"\ninterface = \"eth0\"\ncollect_for = \"0s\"",
            Err("`collect_for` `0s` would never wait for an offer"),
        );
        check_config(
            "mode = \"broadcast\"\ninterface = \"eth0\"\nleases = 1",
            Err(
                "unknown field `leases`, expected one of `mode`, `interface`, `server`, `server_port`, `relay_address`, `relay_port`, `client_mac`, `collect_for`, `min_offers`, `expected_servers`, `expected_range`, `max_latency`",
            ),
        );
        check_config(
            "mode = \"multicast\"\ninterface = \"eth0\"",
            Err("unknown variant `multicast`, expected `broadcast` or `relay`"),
        );
    }

    #[test]
    fn ranges_and_macs() {
        let range = AddressRange::parse("10.0.0.100-10.0.0.200").unwrap();
        assert!(range.contains("10.0.0.100".parse().unwrap()));
        assert!(range.contains("10.0.0.200".parse().unwrap()));
        assert!(!range.contains("10.0.0.201".parse().unwrap()));
        let cidr = AddressRange::parse("10.0.0.77/24").unwrap();
        assert!(cidr.contains("10.0.0.0".parse().unwrap()));
        assert!(cidr.contains("10.0.0.255".parse().unwrap()));
        assert!(!cidr.contains("10.0.1.0".parse().unwrap()));
        assert!(
            AddressRange::parse("0.0.0.0/0")
                .unwrap()
                .contains(Ipv4Addr::BROADCAST)
        );
        assert_eq!(
            parse_mac("02-00-5E-10-00-01"),
            Ok([0x02, 0x00, 0x5e, 0x10, 0x00, 0x01])
        );
        for _ in 0..64 {
            let mac = random_local_mac();
            assert_eq!(mac[0] & 0x03, 0x02, "{}", format_mac(&mac));
        }
    }

    #[test]
    fn a_missing_privilege_is_named_not_an_os_error_code() {
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let relay = bind_error(67, &denied, false);
        let broadcast = bind_error(68, &denied, true);
        if cfg!(windows) {
            assert_eq!(relay, "binding udp port 67 needs Administrator");
        } else {
            assert_eq!(
                relay,
                "binding udp port 67 needs root or CAP_NET_BIND_SERVICE"
            );
        }
        if cfg!(target_os = "linux") {
            assert_eq!(
                broadcast,
                "binding udp port 68 needs root or CAP_NET_BIND_SERVICE; SO_BINDTODEVICE needs CAP_NET_RAW"
            );
        }
        let in_use = std::io::Error::from(std::io::ErrorKind::AddrInUse);
        assert_eq!(
            bind_error(68, &in_use, true),
            "udp port 68 is in use (a DHCP client on this host?); `mode = \"relay\"` does not need it"
        );
    }

    #[test]
    fn the_discover_is_a_broadcast_bootrequest_and_never_a_request() {
        let mac = [0x02, 1, 2, 3, 4, 5];
        let message = discover_message(7, &mac, None);
        assert_eq!(message.opcode(), Opcode::BootRequest);
        assert!(message.flags().broadcast());
        assert_eq!(message.opts().msg_type(), Some(MessageType::Discover));
        assert_eq!(message.chaddr(), mac);
        let relayed = discover_message(7, &mac, Some(Ipv4Addr::new(10, 0, 5, 1)));
        assert_eq!(relayed.giaddr(), Ipv4Addr::new(10, 0, 5, 1));
        assert!(!relayed.flags().broadcast());
        assert_eq!(relayed.hops(), 1);
    }

    /// The site example in `deploy/` parses and validates: broadcast on the LAN, relay probes
    /// of each server.
    #[test]
    fn the_site_example_validates() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/agent.dhcp.example.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let file = crate::config::ConfigFile::parse(&text, &path).unwrap();
        let config = file.validate(Some(&path)).unwrap();
        let targets: Vec<_> = config
            .checks
            .iter()
            .map(|c| (c.check.kind(), c.check.target()))
            .collect();
        assert_eq!(
            targets,
            [
                ("dhcp", "eth0".to_owned()),
                ("dhcp", "10.20.0.2:67".to_owned()),
                ("dhcp", "10.20.0.3:67".to_owned()),
            ]
        );
    }

    // ---- a DHCP responder on loopback, for relay mode ----

    /// What the fake server sends back for one DISCOVER.
    #[derive(Debug, Clone)]
    enum Reply {
        /// An OFFER of `address` from server identifier `server`.
        Offer { server: Ipv4Addr, address: Ipv4Addr },
        /// The same OFFER with another xid.
        WrongXid,
        /// A reply of another message type.
        Type(MessageType),
        /// Raw bytes.
        Raw(Vec<u8>),
    }

    fn reply_to(discover: &Message, reply: &Reply) -> Vec<u8> {
        let (server, address, message_type, xid) = match reply {
            Reply::Raw(bytes) => return bytes.clone(),
            Reply::Offer { server, address } => {
                (*server, *address, MessageType::Offer, discover.xid())
            }
            Reply::WrongXid => (
                Ipv4Addr::new(10, 0, 0, 2),
                Ipv4Addr::new(10, 0, 0, 150),
                MessageType::Offer,
                discover.xid().wrapping_add(1),
            ),
            Reply::Type(message_type) => (
                Ipv4Addr::new(10, 0, 0, 2),
                Ipv4Addr::new(10, 0, 0, 150),
                *message_type,
                discover.xid(),
            ),
        };
        let mut message = Message::new_with_id(
            xid,
            Ipv4Addr::UNSPECIFIED,
            address,
            server,
            discover.giaddr(),
            discover.chaddr(),
        );
        message.set_opcode(Opcode::BootReply);
        let options = message.opts_mut();
        options.insert(DhcpOption::MessageType(message_type));
        options.insert(DhcpOption::ServerIdentifier(server));
        options.insert(DhcpOption::AddressLeaseTime(3600));
        options.insert(DhcpOption::Router(vec![Ipv4Addr::new(10, 0, 0, 1)]));
        options.insert(DhcpOption::DomainNameServer(vec![
            Ipv4Addr::new(10, 0, 0, 53),
            Ipv4Addr::new(10, 0, 0, 54),
        ]));
        let mut bytes = Vec::new();
        message.encode(&mut Encoder::new(&mut bytes)).unwrap();
        bytes
    }

    /// A fake server on `127.0.0.1:0` answering each DISCOVER with `replies`, sent to the
    /// DISCOVER's source. Records every request it saw.
    struct Responder {
        port: u16,
        task: tokio::task::JoinHandle<Vec<Message>>,
        stop: tokio::sync::oneshot::Sender<()>,
    }

    impl Responder {
        async fn start(replies: Vec<Reply>) -> Self {
            let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let port = socket.local_addr().unwrap().port();
            let (stop, mut stopped) = tokio::sync::oneshot::channel();
            let task = tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buffer = [0u8; 1500];
                loop {
                    let (length, source) = tokio::select! {
                        _ = &mut stopped => return seen,
                        received = socket.recv_from(&mut buffer) => received.unwrap(),
                    };
                    let request = Message::decode(&mut Decoder::new(&buffer[..length])).unwrap();
                    for reply in &replies {
                        socket
                            .send_to(&reply_to(&request, reply), source)
                            .await
                            .unwrap();
                    }
                    seen.push(request);
                }
            });
            Self { port, task, stop }
        }

        async fn finish(self) -> Vec<Message> {
            let _ = self.stop.send(());
            self.task.await.unwrap()
        }
    }

    fn relay_check(port: u16, extra: &str) -> DhcpCheck {
        config(&format!(
            "mode = \"relay\"\nserver = \"127.0.0.1\"\nserver_port = {port}\nrelay_port = 0\ncollect_for = \"300ms\"\n{extra}"
        ))
        .unwrap()
    }

    fn values(result: &TargetResult) -> Vec<(String, String)> {
        result
            .measurements
            .iter()
            .map(|m| {
                let value = if m.text.is_empty() {
                    m.value.to_string()
                } else {
                    m.text.clone()
                };
                (m.name.clone(), value)
            })
            .filter(|(name, _)| name != "latency_seconds")
            .collect()
    }

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect()
    }

    fn offer(server: [u8; 4], address: [u8; 4]) -> Reply {
        Reply::Offer {
            server: server.into(),
            address: address.into(),
        }
    }

    #[tokio::test]
    async fn relay_mode_collects_an_offer_and_reports_its_options() {
        let responder = Responder::start(vec![offer([10, 0, 0, 2], [10, 0, 0, 150])]).await;
        let check = relay_check(
            responder.port,
            "expected_servers = [\"10.0.0.2\"]\nexpected_range = \"10.0.0.100-10.0.0.200\"\nmax_latency = \"5s\"",
        );
        let results = check.probe(Duration::from_secs(5)).await;
        let requests = responder.finish().await;
        assert_eq!(requests.len(), 1);
        let discover = &requests[0];
        assert_eq!(discover.opts().msg_type(), Some(MessageType::Discover));
        assert_eq!(discover.giaddr(), Ipv4Addr::LOCALHOST);
        assert_eq!(discover.chaddr()[0] & 0x03, 0x02);

        assert_eq!(results.len(), 2, "{results:?}");
        assert_eq!(results[0].target, "10.0.0.2");
        assert_eq!(results[0].outcome, Outcome::Pass);
        assert_eq!(
            values(&results[0]),
            pairs(&[
                ("lease_seconds", "3600"),
                ("rogue", "0"),
                ("offered_address", "10.0.0.150"),
                ("router", "10.0.0.1"),
                ("dns_servers", "10.0.0.53,10.0.0.54"),
                ("server_address", "127.0.0.1"),
            ])
        );
        assert!(results[0].measurements[0].value < 5.0);
        assert_eq!(
            results[1].target,
            format!("127.0.0.1:{}", responder_port(&check))
        );
        assert_eq!(results[1].outcome, Outcome::Pass);
        assert_eq!(
            values(&results[1]),
            pairs(&[
                ("offers", "1"),
                ("rogue_servers", "0"),
                ("ignored_packets", "0")
            ])
        );
    }

    fn responder_port(check: &DhcpCheck) -> u16 {
        match &check.target {
            DhcpTarget::Relay { server_port, .. } => *server_port,
            DhcpTarget::Broadcast { .. } => 0,
        }
    }

    #[tokio::test]
    async fn no_offer_fails_the_summary_after_collect_for() {
        let responder = Responder::start(Vec::new()).await;
        let check = relay_check(responder.port, "");
        let results = check.probe(Duration::from_secs(5)).await;
        responder.finish().await;
        assert_eq!(results.len(), 1);
        assert_eq!(
            results[0].outcome,
            Outcome::Fail {
                reason: format!(
                    "no DHCPOFFER from `127.0.0.1:{}` within 300ms",
                    responder_port(&check)
                )
            }
        );
        assert_eq!(
            values(&results[0]),
            pairs(&[
                ("offers", "0"),
                ("rogue_servers", "0"),
                ("ignored_packets", "0")
            ])
        );
    }

    #[tokio::test]
    async fn a_second_server_not_expected_is_a_rogue() {
        let responder = Responder::start(vec![
            offer([10, 0, 0, 2], [10, 0, 0, 150]),
            offer([192, 168, 1, 1], [192, 168, 1, 50]),
            // A repeat of the first offer counts once.
            offer([10, 0, 0, 2], [10, 0, 0, 150]),
        ])
        .await;
        let check = relay_check(
            responder.port,
            "expected_servers = [\"10.0.0.2\"]\nmin_offers = 2",
        );
        let results = check.probe(Duration::from_secs(5)).await;
        responder.finish().await;
        let outcomes: Vec<_> = results
            .iter()
            .map(|r| (r.target.as_str(), r.outcome.clone()))
            .collect();
        assert_eq!(
            outcomes,
            [
                ("10.0.0.2", Outcome::Pass),
                (
                    "192.168.1.1",
                    Outcome::Fail {
                        reason: "rogue DHCP server `192.168.1.1` (offer from `127.0.0.1:"
                            .to_owned()
                            + &responder_port(&check).to_string()
                            + "`)"
                    }
                ),
                (
                    results[2].target.as_str(),
                    Outcome::Fail {
                        reason: format!(
                            "rogue DHCP server `192.168.1.1` (from `127.0.0.1:{}`)",
                            responder_port(&check)
                        )
                    }
                ),
            ]
        );
        assert_eq!(values(&results[1])[1], ("rogue".to_owned(), "1".to_owned()));
        assert_eq!(
            values(&results[2]),
            pairs(&[
                ("offers", "2"),
                ("rogue_servers", "1"),
                ("ignored_packets", "0")
            ])
        );
    }

    #[tokio::test]
    async fn malformed_foreign_and_non_offer_packets_are_counted_and_ignored() {
        let mut huge_hlen = reply_to(
            &discover_message(1, &[2, 0, 0, 0, 0, 1], Some(Ipv4Addr::LOCALHOST)),
            &offer([10, 0, 0, 2], [10, 0, 0, 150]),
        );
        huge_hlen[2] = 200;
        let responder = Responder::start(vec![
            Reply::Raw(Vec::new()),
            Reply::Raw(vec![2, 1, 6]),
            Reply::Raw(vec![0xff; 600]),
            Reply::Raw(huge_hlen),
            Reply::WrongXid,
            Reply::Type(MessageType::Nak),
            Reply::Type(MessageType::Ack),
            offer([10, 0, 0, 2], [10, 0, 0, 150]),
        ])
        .await;
        let check = relay_check(responder.port, "");
        let results = check.probe(Duration::from_secs(5)).await;
        responder.finish().await;
        assert_eq!(results.len(), 2, "{results:?}");
        assert_eq!(results[0].target, "10.0.0.2");
        assert_eq!(results[1].outcome, Outcome::Pass);
        assert_eq!(
            values(&results[1]),
            pairs(&[
                ("offers", "1"),
                ("rogue_servers", "0"),
                ("ignored_packets", "7")
            ])
        );
    }

    #[tokio::test]
    async fn a_nak_alone_is_no_offer() {
        let responder = Responder::start(vec![Reply::Type(MessageType::Nak)]).await;
        let check = relay_check(responder.port, "");
        let results = check.probe(Duration::from_secs(5)).await;
        responder.finish().await;
        assert_eq!(results.len(), 1);
        assert!(
            matches!(&results[0].outcome, Outcome::Fail { reason } if reason.starts_with("no DHCPOFFER from"))
        );
        assert_eq!(
            values(&results[0])[2],
            ("ignored_packets".to_owned(), "1".to_owned())
        );
    }

    #[tokio::test]
    async fn an_address_outside_the_expected_range_fails_its_server() {
        let responder = Responder::start(vec![offer([10, 0, 0, 2], [10, 0, 1, 7])]).await;
        let check = relay_check(responder.port, "expected_range = \"10.0.0.0/24\"");
        let results = check.probe(Duration::from_secs(5)).await;
        responder.finish().await;
        assert_eq!(
            results[0].outcome,
            Outcome::Fail {
                reason: "offered address `10.0.1.7` is outside `10.0.0.0/24`".to_owned()
            }
        );
        assert_eq!(results[1].outcome, Outcome::Pass);
    }

    #[tokio::test]
    async fn two_checks_on_the_same_port_take_turns() {
        let responder = Responder::start(vec![offer([10, 0, 0, 2], [10, 0, 0, 150])]).await;
        let relay_port = std::net::UdpSocket::bind("0.0.0.0:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let check = config(&format!(
            "mode = \"relay\"\nserver = \"127.0.0.1\"\nserver_port = {}\nrelay_port = {relay_port}\ncollect_for = \"200ms\"",
            responder.port
        ))
        .unwrap();
        let (first, second) = tokio::join!(
            check.probe(Duration::from_secs(5)),
            check.probe(Duration::from_secs(5))
        );
        responder.finish().await;
        for results in [first, second] {
            assert_eq!(results.len(), 2, "{results:?}");
            assert_eq!(results[1].outcome, Outcome::Pass);
        }
    }

    #[tokio::test]
    async fn collecting_stops_within_the_check_timeout() {
        let responder = Responder::start(Vec::new()).await;
        let check = config(&format!(
            "mode = \"relay\"\nserver = \"127.0.0.1\"\nserver_port = {}\nrelay_port = 0\ncollect_for = \"1h\"",
            responder.port
        ))
        .unwrap();
        let clock = std::time::Instant::now();
        let results = check.probe(Duration::from_millis(200)).await;
        assert!(clock.elapsed() < Duration::from_secs(5));
        responder.finish().await;
        assert!(
            matches!(&results[0].outcome, Outcome::Fail { reason } if reason.starts_with("no DHCPOFFER from")),
            "{results:?}"
        );
    }

    #[tokio::test]
    async fn a_bad_interface_is_a_failure_not_a_panic() {
        let check = config("mode = \"broadcast\"\ninterface = \"estate-none0\"").unwrap();
        let results = check.probe(Duration::from_secs(1)).await;
        assert_eq!(results.len(), 1);
        assert_eq!(results[0].target, "estate-none0");
        assert!(
            matches!(results[0].outcome, Outcome::Fail { .. }),
            "{results:?}"
        );
    }

    // ---- broadcast and relay mode against dnsmasq, in network namespaces (root only) ----

    /// Runs the probe configured by `ESTATE_DHCP_PROBE` (the check's own TOML fields) and prints
    /// one `RESULT` line per result. Started inside a namespace by
    /// [`broadcast_and_relay_against_dnsmasq_in_namespaces`]; does nothing on its own.
    #[tokio::test]
    #[ignore = "helper: run inside a network namespace by the dnsmasq namespace test"]
    async fn namespace_probe_helper() {
        let Ok(toml_text) = std::env::var("ESTATE_DHCP_PROBE") else {
            return;
        };
        let check = config(&toml_text).unwrap();
        for result in check.probe(Duration::from_secs(8)).await {
            let outcome = match &result.outcome {
                Outcome::Pass => "pass".to_owned(),
                Outcome::Fail { reason } => format!("fail: {reason}"),
                Outcome::Skipped { reason } => format!("skipped: {reason}"),
            };
            let measurements: Vec<_> = values(&result)
                .into_iter()
                .map(|(name, value)| format!("{name}={value}"))
                .collect();
            let latency = result
                .measurements
                .iter()
                .find(|m| m.name == "latency_seconds")
                .map(|m| format!(" | latency_seconds={:.3}", m.value))
                .unwrap_or_default();
            println!(
                "RESULT {} | {outcome} | {}{latency}",
                result.target,
                measurements.join(" ")
            );
        }
    }

    /// The namespaces, veth pair and dnsmasq of one run; removed on drop, whatever happened.
    #[cfg(target_os = "linux")]
    struct DnsmasqNamespaces {
        server_namespace: String,
        client_namespace: String,
        dnsmasq: Option<std::process::Child>,
        directory: tempfile::TempDir,
    }

    #[cfg(target_os = "linux")]
    impl Drop for DnsmasqNamespaces {
        fn drop(&mut self) {
            if let Some(mut dnsmasq) = self.dnsmasq.take() {
                let _ = dnsmasq.kill();
                let _ = dnsmasq.wait();
            }
            for namespace in [&self.client_namespace, &self.server_namespace] {
                let _ = std::process::Command::new("ip")
                    .args(["netns", "delete", namespace])
                    .status();
            }
        }
    }

    /// Runs `command` with a 20 s bound; its output, or a panic naming it.
    #[cfg(target_os = "linux")]
    fn run(command: &[&str]) -> String {
        let output = std::process::Command::new("timeout")
            .arg("20")
            .args(command)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "`{}` failed: {}",
            command.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    #[cfg(target_os = "linux")]
    fn namespace_probe(setup: &DnsmasqNamespaces, toml_text: &str) -> Vec<String> {
        let helper = std::env::current_exe().unwrap();
        let output = std::process::Command::new("timeout")
            .args(["30", "ip", "netns", "exec", &setup.client_namespace])
            .arg(helper)
            .args([
                "--exact",
                "checks::dhcp::tests::namespace_probe_helper",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("ESTATE_DHCP_PROBE", toml_text)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "helper failed: {stdout}");
        stdout
            .lines()
            // libtest prints `test name ... ` before the helper's output, on the same line.
            .filter_map(|line| line.split_once("RESULT "))
            .map(|(_, result)| result.to_owned())
            .collect()
    }

    /// Broadcast mode for real: dnsmasq in one namespace, the probe in its peer over a veth
    /// pair, the probe's interface configured as on a server (10.232.0.2/24). Then relay mode
    /// from the same namespace (real ports 67, giaddr 10.232.0.2). Runs only as root with `ip`
    /// and `dnsmasq` installed; otherwise says why and passes. Checks that no lease was taken.
    #[test]
    #[cfg(target_os = "linux")]
    fn broadcast_and_relay_against_dnsmasq_in_namespaces() {
        if !rustix::process::geteuid().is_root() {
            println!("not run: creating network namespaces needs root");
            return;
        }
        for tool in ["ip", "dnsmasq", "timeout", "ss"] {
            let found = std::process::Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .is_ok_and(|output| output.status.success());
            if !found {
                println!("not run: `{tool}` is not installed");
                return;
            }
        }
        let id = std::process::id();
        let mut setup = DnsmasqNamespaces {
            server_namespace: format!("estate-dhcp-s{id}"),
            client_namespace: format!("estate-dhcp-c{id}"),
            dnsmasq: None,
            directory: tempfile::tempdir().unwrap(),
        };
        let (server, client) = (
            setup.server_namespace.clone(),
            setup.client_namespace.clone(),
        );
        run(&["ip", "netns", "add", &server]);
        run(&["ip", "netns", "add", &client]);
        run(&[
            "ip", "-n", &server, "link", "add", "dhcps0", "type", "veth", "peer", "name", "dhcpc0",
            "netns", &client,
        ]);
        run(&[
            "ip",
            "-n",
            &server,
            "addr",
            "add",
            "10.232.0.1/24",
            "dev",
            "dhcps0",
        ]);
        run(&[
            "ip",
            "-n",
            &client,
            "addr",
            "add",
            "10.232.0.2/24",
            "dev",
            "dhcpc0",
        ]);
        for (namespace, device) in [(&server, "dhcps0"), (&client, "dhcpc0")] {
            run(&["ip", "-n", namespace, "link", "set", "lo", "up"]);
            run(&["ip", "-n", namespace, "link", "set", device, "up"]);
        }
        let leases = setup.directory.path().join("leases");
        let leases_option = format!("--dhcp-leasefile={}", leases.display());
        let log = std::fs::File::create(setup.directory.path().join("dnsmasq.log")).unwrap();
        setup.dnsmasq = Some(
            std::process::Command::new("ip")
                .args(["netns", "exec", &server, "dnsmasq", "--keep-in-foreground"])
                .args([
                    "--conf-file=/dev/null",
                    "--port=0",
                    "--user=root",
                    "--log-dhcp",
                ])
                .args([
                    "--interface=dhcps0",
                    "--bind-interfaces",
                    "--log-facility=-",
                ])
                .args(["--dhcp-range=10.232.0.100,10.232.0.150,12h", &leases_option])
                .args(["--dhcp-option=option:router,10.232.0.1"])
                .args(["--dhcp-option=option:dns-server,10.232.0.53"])
                .stdout(std::process::Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
        // dnsmasq is ready when it listens on port 67; bounded at 10 s.
        let ready = (0..100).any(|_| {
            let listening = run(&["ip", "netns", "exec", &server, "ss", "-uln"]).contains(":67 ");
            if !listening {
                std::thread::sleep(Duration::from_millis(100));
            }
            listening
        });
        assert!(ready, "dnsmasq did not listen on port 67 within 10s");

        let broadcast = namespace_probe(
            &setup,
            "mode = \"broadcast\"\ninterface = \"dhcpc0\"\nexpected_servers = [\"10.232.0.1\"]\nexpected_range = \"10.232.0.100-10.232.0.150\"\ncollect_for = \"5s\"",
        );
        println!("broadcast: {broadcast:?}");
        assert_eq!(broadcast.len(), 2, "{broadcast:?}");
        assert!(
            broadcast[0].starts_with(
                "10.232.0.1 | pass | lease_seconds=43200 rogue=0 offered_address=10.232.0.1"
            ),
            "{broadcast:?}"
        );
        assert!(
            broadcast[1].starts_with("dhcpc0 | pass | offers=1 rogue_servers=0 ignored_packets=0"),
            "{broadcast:?}"
        );
        assert!(
            broadcast[0]
                .contains("router=10.232.0.1 dns_servers=10.232.0.53 server_address=10.232.0.1"),
            "{broadcast:?}"
        );

        let relay = namespace_probe(
            &setup,
            "mode = \"relay\"\nserver = \"10.232.0.1\"\nexpected_servers = [\"10.232.0.1\"]\nexpected_range = \"10.232.0.100-10.232.0.150\"\ncollect_for = \"5s\"",
        );
        println!("relay: {relay:?}");
        assert_eq!(relay.len(), 2, "{relay:?}");
        assert!(relay[0].starts_with("10.232.0.1 | pass | "), "{relay:?}");
        assert!(
            relay[1].starts_with("10.232.0.1:67 | pass | offers=1 rogue_servers=0"),
            "{relay:?}"
        );

        // An expected server list without dnsmasq makes it a rogue.
        let rogue = namespace_probe(
            &setup,
            "mode = \"broadcast\"\ninterface = \"dhcpc0\"\nexpected_servers = [\"10.232.0.9\"]\ncollect_for = \"5s\"",
        );
        assert!(
            rogue.iter().any(|line| line.starts_with(
                "dhcpc0 | fail: rogue DHCP server `10.232.0.1` (from `10.232.0.1:67`)"
            )),
            "{rogue:?}"
        );

        // Offers only: dnsmasq records a lease on DHCPREQUEST/ACK, never on a DISCOVER.
        let lease_lines = std::fs::read_to_string(&leases).unwrap_or_default();
        assert_eq!(lease_lines.trim(), "", "a lease was taken");
    }
}
