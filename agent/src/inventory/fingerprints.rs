//! The host fingerprints that go into `HostIdentity`: what tells this machine apart from a
//! clone of its agent's state directory.

use super::source::Source;
use estate_proto::v1::Inventory;
use std::net::Ipv4Addr;

/// The host fingerprints that go into `HostIdentity` (everything but the agent id).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fingerprints {
    pub hostname: String,
    pub machine_id: String,
    pub smbios_uuid: String,
    pub serial_number: String,
    pub primary_mac: String,
}

#[cfg_attr(windows, allow(dead_code))] // Windows reads MachineGuid instead
pub fn read(source: &Source, inventory: &Inventory) -> Fingerprints {
    let hostname = inventory
        .operatingsystem
        .as_ref()
        .map(|os| os.hostname.clone())
        .filter(|name| !name.is_empty())
        .or_else(|| super::operatingsystem::hostname(source))
        .unwrap_or_default();
    let bios = inventory.bios.clone().unwrap_or_default();
    Fingerprints {
        hostname,
        machine_id: ["etc/machine-id", "var/lib/dbus/machine-id"]
            .iter()
            .find_map(|path| source.read_trimmed(path))
            .unwrap_or_default(),
        smbios_uuid: bios.uuid,
        serial_number: bios.ssn,
        primary_mac: primary_mac(inventory),
    }
}

/// The MAC of the interface carrying the IPv4 default route, else of the first physical
/// interface that has one. Interfaces are sorted by name, so the choice is stable.
pub fn primary_mac(inventory: &Inventory) -> String {
    let with_mac = || inventory.networks.iter().filter(|n| !n.macaddr.is_empty());
    let routed = with_mac().find(|network| {
        network
            .ipgateway
            .iter()
            .any(|gateway| gateway.parse::<Ipv4Addr>().is_ok())
    });
    routed
        .or_else(|| with_mac().find(|network| !network.virtualdev))
        .map(|network| network.macaddr.clone())
        .unwrap_or_default()
}
