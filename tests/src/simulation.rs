//! Reports of simulated agents, shaped like a real agent's: an inventory of a few KiB (BIOS,
//! hardware, two CPUs, two interfaces, three volumes, 40 packages, a few users), vitals, and
//! a dozen check results. Everything is derived from the agent's number, so a run is
//! reproducible and every host is distinct (hostname, addresses, serial numbers).

use estate_proto::v1::{
    Bios, CheckResult, Cpu, Drive, Hardware, HostIdentity, HostVitals, Inventory, IpAddress,
    LocalUser, Measurement, Network, OperatingSystem, Outcome, ReportRequest, Software,
    VolumeUsage,
};

/// Check results in every heartbeat.
pub const CHECKS_PER_REPORT: usize = 12;
/// Packages in a simulated inventory.
pub const PACKAGES: usize = 40;

const MANUFACTURERS: &[(&str, &str)] = &[
    ("Dell Inc.", "PowerEdge R650"),
    ("HPE", "ProLiant DL360 Gen10"),
    ("Lenovo", "ThinkSystem SR630"),
    ("QEMU", "Standard PC (Q35 + ICH9, 2009)"),
    ("VMware, Inc.", "VMware Virtual Platform"),
];
const SYSTEMS: &[(&str, &str, &str)] = &[
    ("Debian GNU/Linux", "12", "6.1.0-28-amd64"),
    ("Debian GNU/Linux", "11", "5.10.0-33-amd64"),
    ("Ubuntu", "24.04", "6.8.0-49-generic"),
    ("Ubuntu", "22.04", "5.15.0-126-generic"),
    ("Rocky Linux", "9.5", "5.14.0-503.14.1.el9_5.x86_64"),
];

/// The agent id of simulated agent `agent` (a UUID-shaped string).
pub fn agent_id(agent: usize) -> String {
    format!("00000000-0000-4000-8000-{agent:012}")
}

/// The hostname of simulated agent `agent`.
pub fn hostname(agent: usize) -> String {
    format!("sim-{agent:06}")
}

/// The address of simulated agent `agent`'s first interface (unique for up to 16.7 M agents).
pub fn address(agent: usize) -> String {
    format!(
        "10.{}.{}.{}",
        (agent >> 16) & 0xff,
        (agent >> 8) & 0xff,
        agent & 0xff
    )
}

/// The MAC address of simulated agent `agent`'s first interface.
pub fn mac(agent: usize) -> String {
    format!(
        "52:54:00:{:02x}:{:02x}:{:02x}",
        (agent >> 16) & 0xff,
        (agent >> 8) & 0xff,
        agent & 0xff
    )
}

/// The manufacturer recorded for agent `agent` (one of five, in turn).
pub fn manufacturer(agent: usize) -> &'static str {
    MANUFACTURERS[agent % MANUFACTURERS.len()].0
}

/// The inventory of agent `agent` at `revision`: each revision upgrades one package, as an
/// unattended upgrade would.
pub fn inventory(agent: usize, revision: u64) -> Inventory {
    let (manufacturer, model) = MANUFACTURERS[agent % MANUFACTURERS.len()];
    let (os, version, kernel) = SYSTEMS[(agent / MANUFACTURERS.len()) % SYSTEMS.len()];
    let host = hostname(agent);
    let softwares = (0..PACKAGES)
        .map(|package| {
            let upgrades = revision / PACKAGES as u64
                + u64::from((revision % PACKAGES as u64) > package as u64);
            Software {
                name: format!("package-{package:02}"),
                version: format!("1.{package}.{upgrades}-1"),
                arch: "amd64".into(),
                publisher: "Debian".into(),
                from: "deb".into(),
                filesize_bytes: 1_000_000 + package as u64 * 4096,
                ..Default::default()
            }
        })
        .collect();
    Inventory {
        bios: Some(Bios {
            smanufacturer: manufacturer.into(),
            smodel: model.into(),
            ssn: format!("SN{agent:08}"),
            bmanufacturer: manufacturer.into(),
            bversion: "2.19.1".into(),
            bdate: "04/12/2024".into(),
            uuid: format!("4c4c4544-0000-4000-8000-{agent:012}"),
            ..Default::default()
        }),
        hardware: Some(Hardware {
            name: host.clone(),
            chassis_type: "Rack Mount Chassis".into(),
            vmsystem: "Physical".into(),
            memory_bytes: 64 << 30,
            swap_bytes: 4 << 30,
            sockets: 2,
        }),
        cpus: (0..2)
            .map(|_| Cpu {
                name: "Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz".into(),
                manufacturer: "Intel".into(),
                core: 16,
                thread: 32,
                speed_mhz: 2000,
                familynumber: "6".into(),
                model: "106".into(),
                stepping: "6".into(),
                arch: "x86_64".into(),
            })
            .collect(),
        drives: ["/", "/var", "/srv"]
            .iter()
            .map(|mount| Drive {
                mount: (*mount).into(),
                volumn: format!("/dev/mapper/vg0-{}", mount.trim_matches('/')),
                filesystem: "ext4".into(),
                total_bytes: 100 << 30,
                ..Default::default()
            })
            .collect(),
        networks: vec![
            Network {
                description: "eno1".into(),
                macaddr: mac(agent),
                addresses: vec![IpAddress {
                    address: address(agent),
                    prefix_length: 8,
                }],
                mtu: 1500,
                speed_mbps: 10_000,
                status: "up".into(),
                r#type: "ethernet".into(),
                driver: "ixgbe".into(),
                ipgateway: vec!["10.0.0.1".into()],
                ..Default::default()
            },
            Network {
                description: "lo".into(),
                addresses: vec![IpAddress {
                    address: "127.0.0.1".into(),
                    prefix_length: 8,
                }],
                mtu: 65536,
                status: "up".into(),
                r#type: "loopback".into(),
                virtualdev: true,
                ..Default::default()
            },
        ],
        operatingsystem: Some(OperatingSystem {
            name: os.into(),
            version: version.into(),
            full_name: format!("{os} {version}"),
            kernel_name: "linux".into(),
            kernel_version: kernel.into(),
            arch: "x86_64".into(),
            hostname: host.clone(),
            fqdn: format!("{host}.example.org"),
            dns_domain: "example.org".into(),
            timezone: "Europe/Paris".into(),
            dns_servers: vec!["10.0.0.53".into()],
            ..Default::default()
        }),
        softwares,
        local_users: ["root", "admin", "backup"]
            .iter()
            .enumerate()
            .map(|(id, login)| LocalUser {
                login: (*login).into(),
                id: id as u32 * 1000,
                home: format!("/home/{login}"),
                shell: "/bin/bash".into(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// The inventory hash agent `agent` reports at `revision`.
pub fn inventory_hash(agent: usize, revision: u64) -> String {
    format!("sha256:{agent:032x}{revision:032x}")
}

/// A dozen check results of runs that started at `started_ms`; `round` varies the figures.
pub fn check_results(started_ms: i64, round: u64) -> Vec<CheckResult> {
    (0..CHECKS_PER_REPORT)
        .map(|index| {
            let seconds = 0.001 + ((round as usize + index) % 17) as f64 * 0.0001;
            CheckResult {
                check: format!("check-{index:02}"),
                kind: "tcp".into(),
                target: format!("server-{index:02}.example.org:443"),
                outcome: Outcome::Pass as i32,
                started_unix_ms: started_ms,
                duration_seconds: seconds,
                measurements: vec![Measurement {
                    name: "connect_seconds".into(),
                    value: seconds,
                    text: String::new(),
                }],
                ..Default::default()
            }
        })
        .collect()
}

/// The names of the checks configured on every simulated agent.
pub fn check_names() -> Vec<String> {
    (0..CHECKS_PER_REPORT)
        .map(|index| format!("check-{index:02}"))
        .collect()
}

/// Report `sequence` of agent `agent`, whose inventory is at `revision`; `with_inventory`
/// attaches the full inventory (the first report, or after a change).
pub fn report(
    agent: usize,
    sequence: u64,
    revision: u64,
    with_inventory: bool,
    now_ms: i64,
) -> ReportRequest {
    ReportRequest {
        identity: Some(HostIdentity {
            agent_id: agent_id(agent),
            hostname: hostname(agent),
            machine_id: format!("{agent:032x}"),
            smbios_uuid: format!("4c4c4544-0000-4000-8000-{agent:012}"),
            primary_mac: mac(agent),
            ..Default::default()
        }),
        agent_version: estate_agent::VERSION.into(),
        sequence,
        agent_time_unix_ms: now_ms,
        inventory_hash: inventory_hash(agent, revision),
        inventory: with_inventory.then(|| inventory(agent, revision)),
        vitals: Some(HostVitals {
            memory_available_bytes: (20 << 30) + (sequence % 1024) * 4096,
            swap_free_bytes: 4 << 30,
            boot_time_unix: 1_700_000_000,
            volumes: vec![VolumeUsage {
                mount: "/".into(),
                total_bytes: 100 << 30,
                free_bytes: (40 << 30) - (sequence % 1024) * 4096,
            }],
            ..Default::default()
        }),
        checks: check_results(now_ms, sequence),
        dropped_reports: 0,
        check_names: check_names(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_inventory_is_a_few_kib_and_each_revision_changes_one_version() {
        let first = inventory(7, 0);
        let bytes = prost::Message::encoded_len(&first);
        assert!((2048..8192).contains(&bytes), "{bytes} bytes");
        let second = inventory(7, 1);
        let changed: Vec<_> = first
            .softwares
            .iter()
            .zip(&second.softwares)
            .filter(|(a, b)| a.version != b.version)
            .map(|(a, _)| a.name.clone())
            .collect();
        assert_eq!(changed, ["package-00"]);
        assert_ne!(inventory_hash(7, 0), inventory_hash(7, 1));
        assert_eq!(
            inventory(7, PACKAGES as u64).softwares[5].version,
            "1.5.1-1"
        );
    }

    #[test]
    fn agents_are_distinct() {
        assert_ne!(address(1), address(257));
        assert_eq!(address(0x010203), "10.1.2.3");
        let report = report(3, 5, 0, false, 1_000);
        assert!(report.inventory.is_none());
        assert_eq!(report.checks.len(), CHECKS_PER_REPORT);
        assert_eq!(report.identity.unwrap().agent_id, agent_id(3));
    }
}
