//! The NETWORKS section: every interface of `/sys/class/net` with its kind, link facts, IPv6
//! addresses (`/proc/net/if_inet6`), IPv4 addresses (`getifaddrs`, live hosts only: it cannot
//! read a fixture tree), default gateways (`/proc/net/route`, `/proc/net/ipv6_route`) and a
//! best-effort DHCP-or-static guess from lease files and ifupdown configuration.

use super::source::Source;
use estate_proto::v1::{Inventory, IpAddress, Network};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const NET_DIR: &str = "sys/class/net";

/// An IPv4 address of an interface: (interface name, address, prefix length).
pub type Ipv4Entry = (String, Ipv4Addr, u8);

pub fn collect(source: &Source, inventory: &mut Inventory, problems: &mut Vec<String>) {
    let ipv4 = if source.is_live() {
        live_ipv4(problems)
    } else {
        Vec::new()
    };
    collect_with_ipv4(source, inventory, problems, &ipv4);
}

/// The IPv4 addresses of the running host, from `getifaddrs`.
fn live_ipv4(problems: &mut Vec<String>) -> Vec<Ipv4Entry> {
    match if_addrs::get_if_addrs() {
        Ok(interfaces) => interfaces
            .into_iter()
            .filter_map(|interface| match interface.addr {
                if_addrs::IfAddr::V4(address) => {
                    Some((interface.name, address.ip, address.prefixlen))
                }
                if_addrs::IfAddr::V6(_) => None,
            })
            .collect(),
        Err(error) => {
            problems.push(format!("cannot list ipv4 addresses: {error}"));
            Vec::new()
        }
    }
}

/// Fills `inventory.networks` from the tree, taking the IPv4 addresses as given (fixture tests
/// pass them directly; a live host reads them with `getifaddrs`).
pub fn collect_with_ipv4(
    source: &Source,
    inventory: &mut Inventory,
    problems: &mut Vec<String>,
    ipv4: &[Ipv4Entry],
) {
    let names = match source.list_dir(NET_DIR) {
        Ok(names) => names,
        Err(message) => {
            problems.push(message);
            return;
        }
    };
    let ipv6 = source
        .read_text("proc/net/if_inet6")
        .map(|text| parse_if_inet6(&text))
        .unwrap_or_default();
    let mut gateways: BTreeMap<String, Vec<String>> = BTreeMap::new();
    match source.read_text("proc/net/route") {
        Ok(text) => {
            for (interface, gateway) in parse_ipv4_default_routes(&text) {
                gateways
                    .entry(interface)
                    .or_default()
                    .push(gateway.to_string());
            }
        }
        Err(message) => problems.push(message),
    }
    if let Ok(text) = source.read_text("proc/net/ipv6_route") {
        for (interface, gateway) in parse_ipv6_default_routes(&text) {
            gateways
                .entry(interface)
                .or_default()
                .push(gateway.to_string());
        }
    }
    let configured = configured_methods(source);
    let leased = leased_interfaces(source);

    inventory.networks = names
        .iter()
        .map(|name| {
            let dir = format!("{NET_DIR}/{name}");
            let read = |file: &str| -> String {
                source
                    .read_trimmed(&format!("{dir}/{file}"))
                    .unwrap_or_default()
            };
            let kind = interface_kind(
                &read("type"),
                &Markers {
                    wireless: source.exists(&format!("{dir}/wireless"))
                        || source.exists(&format!("{dir}/phy80211")),
                    bridge: source.exists(&format!("{dir}/bridge")),
                    bond: source.exists(&format!("{dir}/bonding")),
                    vlan: source.exists(&format!("proc/net/vlan/{name}")),
                    tun: source.exists(&format!("{dir}/tun_flags")),
                },
            );
            let ifindex = read("ifindex");
            let mut addresses: Vec<IpAddr> = ipv4
                .iter()
                .filter(|(interface, _, _)| interface == name)
                .map(|(_, address, _)| IpAddr::V4(*address))
                .collect();
            addresses.extend(
                ipv6.iter()
                    .filter(|entry| &entry.0 == name)
                    .map(|e| IpAddr::V6(e.1)),
            );
            let prefix_of = |address: &IpAddr| -> u32 {
                match address {
                    IpAddr::V4(v4) => ipv4
                        .iter()
                        .find(|(interface, a, _)| interface == name && a == v4)
                        .map_or(0, |entry| u32::from(entry.2)),
                    IpAddr::V6(v6) => ipv6
                        .iter()
                        .find(|entry| &entry.0 == name && &entry.1 == v6)
                        .map_or(0, |entry| u32::from(entry.2)),
                }
            };
            addresses.sort();
            addresses.dedup();
            let mut ipgateway = gateways.get(name).cloned().unwrap_or_default();
            ipgateway.dedup();
            let ipdhcp = configured
                .get(name.as_str())
                .copied()
                .or_else(|| {
                    (leased.contains(name.as_str()) || leased.contains(ifindex.as_str()))
                        .then_some("dhcp")
                })
                .unwrap_or_default();
            Network {
                description: name.clone(),
                macaddr: mac_address(&read("address")),
                addresses: addresses
                    .iter()
                    .map(|address| IpAddress {
                        address: address.to_string(),
                        prefix_length: prefix_of(address),
                    })
                    .collect(),
                mtu: read("mtu").parse().unwrap_or(0),
                speed_mbps: link_speed(&read("speed")),
                status: operstate(&read("operstate")).to_string(),
                r#type: kind.to_string(),
                virtualdev: !source.exists(&format!("{dir}/device")),
                ipdhcp: ipdhcp.to_string(),
                driver: source
                    .link_name(&format!("{dir}/device/driver"))
                    .unwrap_or_default(),
                ipgateway,
                ..Network::default()
            }
        })
        .collect();
}

/// Directory markers in `/sys/class/net/<name>` that say what kind an interface is.
#[derive(Debug, Default, Clone, Copy)]
pub struct Markers {
    pub wireless: bool,
    pub bridge: bool,
    pub bond: bool,
    pub vlan: bool,
    pub tun: bool,
}

/// The interface kind from its ARP hardware type (`/sys/class/net/<name>/type`) and markers.
pub fn interface_kind(arp_type: &str, markers: &Markers) -> &'static str {
    match arp_type.trim() {
        "772" => "loopback",
        "801" | "802" | "803" => "wifi",
        // ipip, sit, ip6tnl, gre, ip6gre, and "none" (wireguard, tun)
        "768" | "769" | "776" | "778" | "823" | "65534" => "tunnel",
        "1" => {
            if markers.wireless {
                "wifi"
            } else if markers.bridge {
                "bridge"
            } else if markers.bond {
                "bond"
            } else if markers.vlan {
                "vlan"
            } else if markers.tun {
                "tunnel"
            } else {
                "ethernet"
            }
        }
        _ => "other",
    }
}

/// `00:00:00:00:00:00` (loopback, tunnels) carries nothing: sent as empty.
pub fn mac_address(address: &str) -> String {
    let address = address.trim().to_ascii_lowercase();
    if address.chars().all(|c| c == '0' || c == ':') {
        String::new()
    } else {
        address
    }
}

/// Link speed in Mb/s; `-1` (no link) and unreadable mean unknown, 0.
pub fn link_speed(speed: &str) -> u64 {
    speed
        .trim()
        .parse::<i64>()
        .ok()
        .filter(|s| *s > 0)
        .map_or(0, |s| s as u64)
}

pub fn operstate(state: &str) -> &'static str {
    match state.trim() {
        "up" => "up",
        "down" | "lowerlayerdown" | "notpresent" => "down",
        _ => "unknown",
    }
}

/// An IPv6 address of `/proc/net/if_inet6`: (interface, address, prefix length).
pub type Ipv6Entry = (String, Ipv6Addr, u8);

/// Parses `/proc/net/if_inet6`: `<32 hex address> <ifindex> <prefix> <scope> <flags> <name>`.
pub fn parse_if_inet6(text: &str) -> Vec<Ipv6Entry> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [address, _index, prefix, _scope, _flags, name] = fields.as_slice() else {
                return None;
            };
            Some((
                name.to_string(),
                parse_ipv6_hex(address)?,
                u8::from_str_radix(prefix, 16).ok()?,
            ))
        })
        .collect()
}

fn parse_ipv6_hex(hex: &str) -> Option<Ipv6Addr> {
    if hex.len() != 32 {
        return None;
    }
    u128::from_str_radix(hex, 16).ok().map(Ipv6Addr::from)
}

/// Default routes of `/proc/net/route`: destination and mask 0 with the gateway flag. The kernel
/// prints addresses as a host-order u32 in hex: little-endian bytes on the machines we run on.
pub fn parse_ipv4_default_routes(text: &str) -> Vec<(String, Ipv4Addr)> {
    const RTF_UP: u32 = 0x1;
    const RTF_GATEWAY: u32 = 0x2;
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let interface = *fields.first()?;
            let hex = |index: usize| u32::from_str_radix(fields.get(index)?, 16).ok();
            let (destination, gateway, flags, mask) = (hex(1)?, hex(2)?, hex(3)?, hex(7)?);
            let is_default = destination == 0 && mask == 0;
            let usable = flags & RTF_UP != 0 && flags & RTF_GATEWAY != 0;
            (is_default && usable)
                .then(|| (interface.to_string(), Ipv4Addr::from(gateway.to_le_bytes())))
        })
        .collect()
}

/// Default routes of `/proc/net/ipv6_route` (`::/0` with a next hop).
pub fn parse_ipv6_default_routes(text: &str) -> Vec<(String, Ipv6Addr)> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [
                destination,
                prefix,
                _src,
                _src_prefix,
                next_hop,
                _metric,
                _ref,
                _use,
                _flags,
                interface,
            ] = fields.as_slice()
            else {
                return None;
            };
            let default = parse_ipv6_hex(destination)? == Ipv6Addr::UNSPECIFIED && *prefix == "00";
            let next_hop = parse_ipv6_hex(next_hop)?;
            (default && next_hop != Ipv6Addr::UNSPECIFIED && *interface != "lo")
                .then(|| (interface.to_string(), next_hop))
        })
        .collect()
}

/// `iface <name> inet dhcp|static` of ifupdown's configuration: the administrator's intent,
/// preferred over lease files (a lease may be left over from an earlier configuration).
fn configured_methods(source: &Source) -> BTreeMap<String, &'static str> {
    let mut files = vec!["etc/network/interfaces".to_string()];
    if let Ok(names) = source.list_dir("etc/network/interfaces.d") {
        files.extend(
            names
                .into_iter()
                .map(|name| format!("etc/network/interfaces.d/{name}")),
        );
    }
    let mut methods = BTreeMap::new();
    for file in files {
        if let Ok(text) = source.read_text(&file) {
            methods.extend(parse_ifupdown_methods(&text));
        }
    }
    methods
}

pub fn parse_ifupdown_methods(text: &str) -> BTreeMap<String, &'static str> {
    let mut methods = BTreeMap::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if let ["iface", name, "inet", method, ..] = fields.as_slice() {
            let method = match *method {
                "dhcp" => "dhcp",
                "static" => "static",
                _ => continue,
            };
            methods.insert(name.to_string(), method);
        }
    }
    methods
}

/// Interfaces (by name, or by index for systemd-networkd) that hold a DHCP lease.
fn leased_interfaces(source: &Source) -> BTreeSet<String> {
    let mut leased = BTreeSet::new();
    // systemd-networkd names its lease files after the interface index.
    if let Ok(indexes) = source.list_dir("run/systemd/netif/leases") {
        leased.extend(indexes);
    }
    for directory in ["var/lib/dhcp", "var/lib/dhclient"] {
        let Ok(names) = source.list_dir(directory) else {
            continue;
        };
        for name in names.iter().filter(|name| name.contains(".lease")) {
            if let Ok(text) = source.read_text(&format!("{directory}/{name}")) {
                leased.extend(parse_dhclient_interfaces(&text));
            }
        }
    }
    if let Ok(names) = source.list_dir("var/lib/NetworkManager") {
        leased.extend(
            names
                .iter()
                .filter_map(|name| network_manager_lease_interface(name)),
        );
    }
    leased
}

/// The `interface "eth0";` lines of dhclient lease files.
pub fn parse_dhclient_interfaces(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|line| {
            let rest = line.trim().strip_prefix("interface")?;
            let name = rest.trim().trim_end_matches(';').trim_matches('"');
            (!name.is_empty()).then(|| name.to_string())
        })
        .collect()
}

/// NetworkManager lease files are `<client>-<connection uuid>-<interface>.lease`.
pub fn network_manager_lease_interface(file_name: &str) -> Option<String> {
    let stem = file_name.strip_suffix(".lease")?;
    let interface = stem.rsplit('-').next()?;
    (!interface.is_empty() && interface != stem).then(|| interface.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        let none = Markers::default();
        assert_eq!(interface_kind("772", &none), "loopback");
        assert_eq!(interface_kind("1", &none), "ethernet");
        assert_eq!(
            interface_kind(
                "1",
                &Markers {
                    wireless: true,
                    ..none
                }
            ),
            "wifi"
        );
        assert_eq!(
            interface_kind(
                "1",
                &Markers {
                    bridge: true,
                    ..none
                }
            ),
            "bridge"
        );
        assert_eq!(interface_kind("1", &Markers { bond: true, ..none }), "bond");
        assert_eq!(interface_kind("1", &Markers { vlan: true, ..none }), "vlan");
        assert_eq!(interface_kind("65534", &none), "tunnel");
        assert_eq!(interface_kind("", &none), "other");
    }

    #[test]
    fn ipv4_default_route_is_little_endian_hex() {
        let text = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                    eth0\t00000000\t0102A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
                    eth0\t0002A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0\n";
        assert_eq!(
            parse_ipv4_default_routes(text),
            [("eth0".to_string(), Ipv4Addr::new(192, 168, 2, 1))]
        );
        assert!(parse_ipv4_default_routes("garbage\nx y z\n").is_empty());
    }

    #[test]
    fn ipv6_default_route_and_addresses() {
        let routes = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00450003 eth0\n\
                      fe800000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001 eth0\n";
        assert_eq!(
            parse_ipv6_default_routes(routes),
            [(
                "eth0".to_string(),
                "fe80::1"
                    .parse::<Ipv6Addr>()
                    .unwrap_or(Ipv6Addr::UNSPECIFIED)
            )]
        );
        let addresses = "20010db8000000000000000000000010 02 40 00 80     eth0\n\
                         00000000000000000000000000000001 01 80 10 80       lo\n";
        let parsed = parse_if_inet6(addresses);
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0].1.to_string(), "2001:db8::10");
        assert_eq!(parsed[0].2, 64);
        assert_eq!(parsed[1].0, "lo");
    }

    #[test]
    fn dhcp_evidence() {
        let methods = parse_ifupdown_methods(
            "auto lo\niface lo inet loopback\nauto eno1\niface eno1 inet static\n  address 10.0.0.2/24\niface eno2 inet dhcp\niface eno1 inet6 auto\n",
        );
        assert_eq!(methods.get("eno1"), Some(&"static"));
        assert_eq!(methods.get("eno2"), Some(&"dhcp"));
        assert_eq!(methods.get("lo"), None);
        let leases = "lease {\n  interface \"ens3\";\n  fixed-address 10.0.0.5;\n}\n";
        assert!(parse_dhclient_interfaces(leases).contains("ens3"));
        assert_eq!(
            network_manager_lease_interface(
                "internal-7f3c1a2e-1b2c-4d5e-8f90-123456789abc-enp1s0.lease"
            ),
            Some("enp1s0".to_string())
        );
        assert_eq!(network_manager_lease_interface("timestamps"), None);
    }

    /// IPv4 addresses cannot come from a fixture tree (they come from `getifaddrs`): the test
    /// hands them to the area directly.
    #[test]
    fn fixture_tree_with_given_ipv4_addresses() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/inventory/physical-server");
        let ipv4 = [
            ("bond0".to_string(), Ipv4Addr::new(10, 20, 0, 10), 24),
            ("lo".to_string(), Ipv4Addr::LOCALHOST, 8),
            ("absent0".to_string(), Ipv4Addr::new(192, 0, 2, 1), 24),
        ];
        let mut inventory = Inventory::default();
        let mut problems = Vec::new();
        collect_with_ipv4(&Source::new(&root), &mut inventory, &mut problems, &ipv4);
        assert_eq!(problems, Vec::<String>::new());
        let addresses = |name: &str| -> Vec<String> {
            inventory
                .networks
                .iter()
                .find(|network| network.description == name)
                .map(|network| {
                    network
                        .addresses
                        .iter()
                        .map(|a| format!("{}/{}", a.address, a.prefix_length))
                        .collect()
                })
                .unwrap_or_default()
        };
        assert_eq!(
            addresses("bond0"),
            [
                "10.20.0.10/24",
                "2001:db8:20::10/64",
                "fe80::b226:28ff:feaa:bb01/64"
            ]
        );
        assert_eq!(addresses("lo"), ["127.0.0.1/8", "::1/128"]);
        assert_eq!(addresses("eno1"), Vec::<String>::new());
    }

    #[test]
    fn link_facts() {
        assert_eq!(link_speed("-1"), 0);
        assert_eq!(link_speed("10000\n"), 10_000);
        assert_eq!(link_speed(""), 0);
        assert_eq!(mac_address("00:00:00:00:00:00"), "");
        assert_eq!(mac_address("AA:bb:cc:dd:ee:ff\n"), "aa:bb:cc:dd:ee:ff");
        assert_eq!(operstate("dormant"), "unknown");
    }
}
