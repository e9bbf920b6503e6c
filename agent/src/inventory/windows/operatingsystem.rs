//! OPERATINGSYSTEM from `Win32_OperatingSystem` (edition, version, build, install date, page
//! file size; the boot time moves with every reboot, so it is a vital read through sysinfo), `Win32_ComputerSystem` (host name, domain membership and role) and the
//! `Windows NT\CurrentVersion` registry key (feature update `23H2` and update revision).

use super::values::{Props, Row};
use super::{Reading, Snapshot};
use crate::inventory::source::utc_date;
use estate_proto::v1::{Hardware, Inventory, OperatingSystem};

pub fn collect(snapshot: &Snapshot, inventory: &mut Inventory, problems: &mut Vec<String>) {
    let mut os = OperatingSystem {
        kernel_name: "Windows NT".to_string(),
        ..OperatingSystem::default()
    };
    let current_version: Option<&Row> = match &snapshot.registry.current_version {
        Reading::Read(values) => Some(values),
        Reading::Failed { error } => {
            problems.push(format!(
                r"cannot read HKLM\SOFTWARE\Microsoft\Windows NT\CurrentVersion: {error}"
            ));
            None
        }
    };
    let registry = current_version.map(|row| Props::new(r"Windows NT\CurrentVersion", row));

    if let Some(row) = snapshot.single("Win32_OperatingSystem", problems) {
        let system = Props::new("Win32_OperatingSystem", row);
        os.name = system.text("Caption");
        os.kernel_version = system.text("Version");
        os.version = os.kernel_version.clone();
        let build = system.text("BuildNumber");
        // The update build revision tells a patched build from an unpatched one.
        let revision = registry.and_then(|registry| registry.unsigned("UBR", problems));
        os.build = match revision {
            Some(revision) if !build.is_empty() => format!("{build}.{revision}"),
            _ => build,
        };
        let feature_update = registry
            .map(|registry| {
                let display = registry.text("DisplayVersion");
                if display.is_empty() {
                    registry.text("ReleaseId")
                } else {
                    display
                }
            })
            .unwrap_or_default();
        os.full_name = [os.name.as_str(), feature_update.as_str()]
            .iter()
            .filter(|part| !part.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join(" ");
        os.arch = architecture(&system.text("OSArchitecture")).to_string();
        if let Some(unix) = system.datetime("InstallDate", problems) {
            os.install_date = utc_date(unix);
        }
        if let Some(kib) = system.unsigned("SizeStoredInPagingFiles", problems) {
            inventory
                .hardware
                .get_or_insert_with(Hardware::default)
                .swap_bytes = kib.saturating_mul(1024);
        }
    }

    if let Some(row) = snapshot.single("Win32_ComputerSystem", problems) {
        let system = Props::new("Win32_ComputerSystem", row);
        let dns_name = system.text("DNSHostName");
        os.hostname = if dns_name.is_empty() {
            system.text("Name").to_ascii_lowercase()
        } else {
            dns_name
        };
        let part_of_domain = system.boolean("PartOfDomain", problems).unwrap_or(false);
        let domain = system.text("Domain").to_ascii_lowercase();
        if part_of_domain {
            os.workgroup = domain.clone();
            os.dns_domain = domain;
            os.fqdn = format!("{}.{}", os.hostname, os.dns_domain);
        } else {
            os.workgroup = system.text("Workgroup");
            os.fqdn = os.hostname.clone();
        }
        os.domain_role = system
            .unsigned("DomainRole", problems)
            .map(domain_role)
            .unwrap_or_default()
            .to_string();
    }
    if os.hostname.is_empty() {
        problems.push("no host name: `Win32_ComputerSystem` gave none".to_string());
    }

    // Windows keeps DNS servers per adapter; the host's list is all of them, in adapter order.
    if let Ok(rows) = snapshot.rows("Win32_NetworkAdapterConfiguration") {
        let mut ignored = Vec::new(); // the networks area reports malformed values
        for row in rows {
            for server in Props::new("Win32_NetworkAdapterConfiguration", row)
                .list("DNSServerSearchOrder", &mut ignored)
            {
                if !os.dns_servers.contains(&server) {
                    os.dns_servers.push(server);
                }
            }
        }
    }

    if let Reading::Failed { error } = &snapshot.registry.machine_guid {
        problems.push(format!(
            r"cannot read MachineGuid in HKLM\SOFTWARE\Microsoft\Cryptography: {error}"
        ));
    }

    inventory
        .hardware
        .get_or_insert_with(Hardware::default)
        .name = os.hostname.clone();
    inventory.operatingsystem = Some(os);
}

/// `Win32_ComputerSystem.DomainRole` in words.
pub fn domain_role(code: u64) -> &'static str {
    match code {
        0 => "standalone workstation",
        1 => "member workstation",
        2 => "standalone server",
        3 => "member server",
        4 => "backup domain controller",
        5 => "primary domain controller",
        _ => "",
    }
}

/// `Win32_OperatingSystem.OSArchitecture` (`64-bit`, `ARM 64-bit Processor`, localised on
/// some systems) in the names `uname -m` uses.
pub fn architecture(text: &str) -> &'static str {
    let lower = text.to_ascii_lowercase();
    if lower.contains("arm") {
        if lower.contains("64") {
            "aarch64"
        } else {
            "arm"
        }
    } else if lower.contains("64") {
        "x86_64"
    } else if lower.contains("32") {
        "i686"
    } else {
        ""
    }
}
