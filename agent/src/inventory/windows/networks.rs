//! NETWORKS from `Win32_NetworkAdapterConfiguration` (adapters with IP enabled: addresses,
//! gateways, DNS servers, DHCP) joined on `Index` with `Win32_NetworkAdapter` (connection
//! name, link state, speed, physical or not).

use super::Snapshot;
use super::values::{Props, Row};
use crate::inventory::networks::mac_address;
use estate_proto::v1::{Inventory, IpAddress, Network};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

/// What `Win32_NetworkAdapter.Speed` says when there is no link (`i64::MAX`).
const NO_LINK_SPEED: u64 = i64::MAX as u64;

pub fn collect(snapshot: &Snapshot, inventory: &mut Inventory, problems: &mut Vec<String>) {
    // The adapter facts are a bonus: without them the configuration still says the most.
    let adapters: BTreeMap<u64, &Row> = match snapshot.rows("Win32_NetworkAdapter") {
        Ok(rows) => rows
            .iter()
            .filter_map(|row| {
                let index = Props::new("Win32_NetworkAdapter", row).unsigned("Index", problems)?;
                Some((index, row))
            })
            .collect(),
        Err(message) => {
            problems.push(message);
            BTreeMap::new()
        }
    };
    let mut networks: Vec<Network> = snapshot
        .rows_or_problem("Win32_NetworkAdapterConfiguration", problems)
        .iter()
        .map(|row| {
            let config = Props::new("Win32_NetworkAdapterConfiguration", row);
            let adapter = config
                .unsigned("Index", problems)
                .and_then(|index| adapters.get(&index))
                .map(|row| Props::new("Win32_NetworkAdapter", row));
            network(&config, adapter.as_ref(), problems)
        })
        .collect();
    networks.sort_by(|a, b| a.description.cmp(&b.description));
    inventory.networks = networks;
}

fn network(config: &Props<'_>, adapter: Option<&Props<'_>>, problems: &mut Vec<String>) -> Network {
    let addresses = config.list("IPAddress", problems);
    let subnets = config.list("IPSubnet", problems);
    let addresses = addresses
        .iter()
        .enumerate()
        .filter_map(|(position, address)| {
            let parsed: IpAddr = match address.parse() {
                Ok(parsed) => parsed,
                Err(_) => {
                    problems.push(format!(
                        "`{}.IPAddress` holds {address:?}, not an IP address",
                        config.class
                    ));
                    return None;
                }
            };
            let subnet = subnets.get(position).map(String::as_str).unwrap_or("");
            Some(IpAddress {
                address: parsed.to_string(),
                prefix_length: prefix_length(subnet).unwrap_or_else(|| {
                    problems.push(format!(
                        "`{}.IPSubnet` holds {subnet:?} for {address}, neither a mask nor a prefix length",
                        config.class
                    ));
                    0
                }),
            })
        })
        .collect();
    let dhcp = config.boolean("DHCPEnabled", problems);
    let dhcp_server = config.text("DHCPServer");
    let description = adapter
        .map(|adapter| adapter.text("NetConnectionID"))
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| config.text("Description"));
    let adapter_name = adapter
        .map(|adapter| adapter.text("Name"))
        .unwrap_or_else(|| config.text("Description"));
    Network {
        macaddr: mac_address(&config.text("MACAddress")),
        addresses,
        mtu: config.unsigned32("MTU", problems).unwrap_or(0),
        speed_mbps: adapter
            .and_then(|adapter| adapter.unsigned("Speed", problems))
            .filter(|speed| *speed != NO_LINK_SPEED)
            .map_or(0, |bits| bits / 1_000_000),
        status: adapter
            .and_then(|adapter| adapter.unsigned("NetConnectionStatus", problems))
            .map_or("unknown", connection_status)
            .to_string(),
        r#type: kind(
            adapter.and_then(|adapter| adapter.unsigned("AdapterTypeID", problems)),
            &adapter_name,
        )
        .to_string(),
        virtualdev: adapter
            .and_then(|adapter| adapter.boolean("PhysicalAdapter", problems))
            .is_some_and(|physical| !physical),
        ipdhcp: match dhcp {
            Some(true) => "dhcp",
            Some(false) => "static",
            None => "",
        }
        .to_string(),
        driver: config.text("ServiceName"),
        ipgateway: config.list("DefaultIPGateway", problems),
        // Windows keeps `255.255.255.255` when no server answered yet.
        dhcp_server: if dhcp == Some(true) && dhcp_server != "255.255.255.255" {
            dhcp_server
        } else {
            String::new()
        },
        dns_servers: config.list("DNSServerSearchOrder", problems),
        description,
    }
}

/// The prefix length of an `IPSubnet` entry: a dotted IPv4 mask (`255.255.255.0`) or, for
/// IPv6 addresses, the length itself (`64`). `None` for anything else (a non-contiguous mask).
pub fn prefix_length(subnet: &str) -> Option<u32> {
    if let Ok(mask) = subnet.parse::<Ipv4Addr>() {
        let bits = u32::from(mask);
        let ones = bits.leading_ones();
        return (bits.checked_shl(ones).unwrap_or(0) == 0).then_some(ones);
    }
    subnet.parse::<u32>().ok().filter(|length| *length <= 128)
}

/// `Win32_NetworkAdapter.NetConnectionStatus` as the Linux operstate words.
fn connection_status(code: u64) -> &'static str {
    match code {
        2 => "up",
        0 | 7 => "down", // disconnected, media disconnected
        _ => "unknown",
    }
}

/// The interface kind in the Linux words, from `AdapterTypeID` and the adapter's name
/// (Wi-Fi adapters often call themselves Ethernet 802.3).
fn kind(adapter_type: Option<u64>, name: &str) -> &'static str {
    let lower = name.to_ascii_lowercase();
    if adapter_type == Some(9)
        || lower.contains("wi-fi")
        || lower.contains("wireless")
        || lower.contains("802.11")
    {
        "wifi"
    } else if lower.contains("loopback") {
        "loopback"
    } else if lower.contains("tunnel") || lower.contains("teredo") || lower.contains("isatap") {
        "tunnel"
    } else if adapter_type == Some(0) {
        "ethernet"
    } else {
        "other"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnet_masks_and_ipv6_lengths() {
        assert_eq!(prefix_length("255.255.255.0"), Some(24));
        assert_eq!(prefix_length("255.255.240.0"), Some(20));
        assert_eq!(prefix_length("0.0.0.0"), Some(0));
        assert_eq!(prefix_length("255.255.255.255"), Some(32));
        assert_eq!(prefix_length("64"), Some(64));
        assert_eq!(prefix_length("255.0.255.0"), None);
        assert_eq!(prefix_length("129"), None);
        assert_eq!(prefix_length("wide"), None);
    }
}
