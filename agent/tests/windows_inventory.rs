//! The Windows inventory from recorded WMI rows and registry dumps
//! (`tests/fixtures/windows/<machine>`), so that the Windows parsing runs on every platform.

use estate_agent::inventory::{
    self,
    windows::{self, Reading, Snapshot},
};
use estate_proto::v1::Inventory;
use serde_json::json;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

mod support;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/windows")
        .join(name)
}

fn snapshot(name: &str) -> Snapshot {
    Snapshot::load(&fixture(name)).unwrap_or_else(|error| panic!("{name}: {error}"))
}

/// The facts of an inventory as short lines.
fn summary(inventory: &Inventory) -> String {
    let mut out = String::new();
    let os = inventory.operatingsystem.clone().unwrap_or_default();
    let mut line = |text: String| {
        out.push_str(text.trim_end());
        out.push('\n');
    };
    support::hardware_lines(inventory, &mut line);
    for storage in &inventory.storages {
        line(format!(
            "storage: {} {} {} {} {:?} {:?} sn={:?} fw={:?} {:?}",
            storage.name,
            storage.r#type,
            storage.interface,
            storage.disksize_bytes,
            storage.manufacturer,
            storage.model,
            storage.serialnumber,
            storage.firmware,
            storage.description
        ));
    }
    for drive in &inventory.drives {
        line(format!(
            "drive: {:?} {} {} {:?} label={:?} serial={:?} encryption={:?} {:?} {:?}",
            drive.mount,
            drive.filesystem,
            drive.total_bytes,
            drive.volumn,
            drive.label,
            drive.serial,
            drive.encrypt_name,
            drive.encrypt_status,
            drive.encrypt_algo
        ));
    }
    for network in &inventory.networks {
        let addresses: Vec<String> = network
            .addresses
            .iter()
            .map(|a| format!("{}/{}", a.address, a.prefix_length))
            .collect();
        line(format!(
            "network: {:?} {} mac={:?} mtu={} {}Mb/s {} virtual={} dhcp={:?} server={:?} driver={:?} gw={:?} dns={:?} ip={:?}",
            network.description,
            network.r#type,
            network.macaddr,
            network.mtu,
            network.speed_mbps,
            network.status,
            network.virtualdev,
            network.ipdhcp,
            network.dhcp_server,
            network.driver,
            network.ipgateway,
            network.dns_servers,
            addresses
        ));
    }
    line(format!(
        "os: {:?} {:?} build={:?} {:?} {} {} {}",
        os.name, os.version, os.build, os.full_name, os.kernel_name, os.kernel_version, os.arch
    ));
    line(format!(
        "names: host={:?} fqdn={:?} domain={:?} workgroup={:?} role={:?} dns={:?} installed={:?}",
        os.hostname,
        os.fqdn,
        os.dns_domain,
        os.workgroup,
        os.domain_role,
        os.dns_servers,
        os.install_date
    ));
    for software in &inventory.softwares {
        line(format!(
            "software: {:?} {:?} {} {} {:?} {} {}",
            software.name,
            software.version,
            software.arch,
            software.installdate,
            software.publisher,
            software.from,
            software.filesize_bytes
        ));
    }
    for user in &inventory.local_users {
        line(format!("user: {} {} {:?}", user.id, user.login, user.name));
    }
    for problem in &inventory.problems {
        line(format!("problem: {}: {}", problem.area, problem.message));
    }
    out
}

/// Compares a summary with `expect` (indentation and blank lines ignored), line by line.
fn assert_summary(name: &str, actual: &str, expect: &str) {
    let expect = expect
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .fold(String::new(), |mut out, line| {
            let _ = writeln!(out, "{line}");
            out
        });
    if actual != expect {
        let (actual_lines, expect_lines): (Vec<&str>, Vec<&str>) =
            (actual.lines().collect(), expect.lines().collect());
        let mut report = String::new();
        for index in 0..actual_lines.len().max(expect_lines.len()) {
            let (a, e) = (actual_lines.get(index), expect_lines.get(index));
            if a != e {
                let _ = writeln!(report, "line {index}:\n  expected {e:?}\n  actual   {a:?}");
            }
        }
        panic!("{name}: inventory differs\n{report}\nwhole actual summary:\n{actual}");
    }
}

fn check(name: &str, expect: &str) {
    let inventory = windows::inventory_from_snapshot(&snapshot(name));
    assert_summary(name, &summary(&inventory), expect);
}

#[test]
fn domain_controller_on_hyper_v() {
    // Run from a non-elevated prompt: BitLocker is a problem, the rest is complete. The
    // 32-bit and 64-bit views both list the Update Health Tools: kept once, as 64-bit.
    // System components and the Office update filed under its product are left out.
    check(
        "dc01-server2022-hyperv",
        r#"
        bios: "Microsoft Corporation" "Virtual Machine" ssn="4417-0973-8806-3410-6211-0364-53" uuid="6b2c1a9e-3d4f-4e8a-9b7c-2f1e0d3c4b5a" sku="" tag="7546-0843-6120-8830-1523-6411-99"
        firmware: "Microsoft Corporation" "Hyper-V UEFI Release v4.1" "04/06/2023" board: "Microsoft Corporation" "Virtual Machine" msn="2180-2213-1870-4406-3817-4547-33"
        hardware: "dc01" "Desktop" "Hyper-V" sockets=1 memory=8589398016 swap=1342177280
        cpu: "Intel(R) Xeon(R) Gold 6248R CPU @ 3.00GHz" "Intel" cores=4 threads=4 2993MHz family=6 model=85 stepping=7 x86_64
        memory: "M0001" Other 8589934592 0MT/s "" "Microsoft Corporation" "" "" slots=1
        storage: PHYSICALDRIVE0 disk SCSI 136366917120 "Microsoft" "Msft Virtual Disk" sn="" fw="1.0" "Fixed hard disk media"
        storage: PHYSICALDRIVE1 disk SCSI 53686402560 "Microsoft" "Msft Virtual Disk" sn="" fw="1.0" "Fixed hard disk media"
        drive: "C:" NTFS 135827599360 "C:" label="" serial="A4F1C2D3" encryption="" "" ""
        drive: "E:" NTFS 53684989952 "E:" label="NTDS" serial="5E6F7A8B" encryption="" "" ""
        network: "Ethernet" ethernet mac="00:15:5d:0a:14:0a" mtu=0 10000Mb/s up virtual=false dhcp="static" server="" driver="netvsc" gw=["10.20.0.1"] dns=["10.20.0.11", "127.0.0.1"] ip=["10.20.0.10/24", "fe80::5d4c:2b1a:9e3f:7c61/64"]
        os: "Microsoft Windows Server 2022 Standard" "10.0.20348" build="20348.2227" "Microsoft Windows Server 2022 Standard 21H2" Windows NT 10.0.20348 x86_64
        names: host="dc01" fqdn="dc01.corp.example.com" domain="corp.example.com" workgroup="corp.example.com" role="primary domain controller" dns=["10.20.0.11", "127.0.0.1"] installed="2023-01-15"
        software: "7-Zip 23.01 (x64)" "23.01" x86_64  "Igor Pavlov" registry 5825536
        software: "KB5012170" ""  2022-08-12 "Microsoft Corporation" hotfix 0
        software: "KB5033914" ""   "Microsoft Corporation" hotfix 0
        software: "KB5034129" ""  2024-01-10 "Microsoft Corporation" hotfix 0
        software: "KB5034439" ""  2024-01-10 "Microsoft Corporation" hotfix 0
        software: "Microsoft Edge" "121.0.2277.83" i686 2024-02-02 "Microsoft Corporation" registry 0
        software: "Microsoft Update Health Tools" "5.72.0.0" x86_64 2024-01-10 "Microsoft Corporation" registry 1025024
        software: "Microsoft Visual C++ 2015-2022 Redistributable (x64) - 14.38.33130" "14.38.33130.0" x86_64 2023-12-12 "Microsoft Corporation" registry 21135360
        software: "Microsoft Visual C++ 2015-2022 Redistributable (x86) - 14.38.33130" "14.38.33130.0" i686 2023-12-12 "Microsoft Corporation" registry 18554880
        software: "estate agent" "0.1.0" x86_64 2024-03-01 "estate" registry 0
        problem: drives: BitLocker state unreadable from WMI `ROOT\CIMV2\Security\MicrosoftVolumeEncryption:Win32_EncryptableVolume`: Access denied (0x80041003); reading BitLocker needs administrator rights (run the agent as LocalSystem)
        "#,
    );
}

#[test]
fn laptop_with_placeholder_serials() {
    // Every serial and the UUID are firmware placeholders: all empty. The install date is
    // 22:15 at UTC-5, so the next day in UTC. Docker wrote its install date in the wrong form.
    check(
        "laptop-win11-placeholder-serials",
        r#"
        bios: "Notebook" "NH5x_7xRCx,RDx" ssn="" uuid="" sku="" tag=""
        firmware: "INSYDE Corp." "1.07.09TRO1" "11/04/2021" board: "Notebook" "NH5x_7xRCx,RDx" msn=""
        hardware: "LAPTOP-7QK2M9" "Notebook" "Physical" sockets=1 memory=34207612928 swap=5368709120
        cpu: "11th Gen Intel(R) Core(TM) i7-11800H @ 2.30GHz" "Intel" cores=8 threads=16 2304MHz family=6 model=141 stepping=1 x86_64
        memory: "ChannelA-DIMM0" DDR4 17179869184 3200MT/s "SODIMM" "Samsung" "M471A2K43DB1-CWE" "4A7B2C8F" slots=2
        memory: "ChannelB-DIMM0" DDR4 17179869184 3200MT/s "SODIMM" "Samsung" "M471A2K43DB1-CWE" "4A7B2C91" slots=2
        storage: PHYSICALDRIVE0 disk NVMe 1000202273280 "Samsung" "Samsung SSD 980 PRO 1TB" sn="0025_3881_1140_5E2F" fw="5B2QGXA7" "Fixed hard disk media"
        storage: PHYSICALDRIVE1 disk USB 1000169372160 "SanDisk" "SanDisk Extreme 55AE USB Device" sn="32303234303531303132" fw="1012" "External hard disk media"
        drive: "C:" NTFS 999380545536 "C:" label="Windows" serial="7C3A91E2" encryption="BitLocker" "Yes" "XTS-AES 256"
        drive: "E:" exFAT 1000169275392 "E:" label="Backup" serial="64E2-1F0B" encryption="BitLocker" "Partially" "AES 256"
        drive: "Z:" NTFS 3998639460352 "\\\\nas01\\share" label="share" serial="1A2B3C4D" encryption="" "" ""
        network: "Wi-Fi" wifi mac="a4:c3:f0:85:1d:7e" mtu=0 866Mb/s up virtual=false dhcp="dhcp" server="192.168.1.1" driver="Netwtw10" gw=["192.168.1.1", "fe80::1"] dns=["192.168.1.1"] ip=["192.168.1.42/24", "fe80::8d2c:4e1b:a3f0:6d19/64", "2a01:cb00:1234:5600:8d2c:4e1b:a3f0:6d19/64"]
        network: "vEthernet (Default Switch)" ethernet mac="00:15:5d:e2:40:01" mtu=1500 10000Mb/s up virtual=true dhcp="static" server="" driver="VMSMP" gw=[] dns=[] ip=["172.27.80.1/20", "fe80::a1b2:c3d4:e5f6:1/64"]
        os: "Microsoft Windows 11 Pro" "10.0.22631" build="22631.3085" "Microsoft Windows 11 Pro 23H2" Windows NT 10.0.22631 x86_64
        names: host="LAPTOP-7QK2M9" fqdn="LAPTOP-7QK2M9" domain="" workgroup="WORKGROUP" role="standalone workstation" dns=["192.168.1.1"] installed="2024-01-06"
        software: "7-Zip 23.01 (x64 edition)" "23.01.00.0" x86_64 2024-01-06 "Igor Pavlov" registry 5849088
        software: "Docker Desktop" "4.27.1" x86_64  "Docker Inc." registry 0
        software: "KB5027397" ""  2024-01-05 "Microsoft Corporation" hotfix 0
        software: "KB5034204" ""  2024-01-25 "Microsoft Corporation" hotfix 0
        software: "KB5034467" ""  2024-01-25 "Microsoft Corporation" hotfix 0
        software: "Microsoft Edge" "121.0.2277.83" i686 2024-02-02 "Microsoft Corporation" registry 0
        software: "Mozilla Firefox (x64 en-US)" "122.0" x86_64  "Mozilla" registry 249425920
        software: "Steam" "2.10.91.91" i686  "Valve Corporation" registry 0
        user: 500 Administrator ""
        user: 501 Guest ""
        user: 503 DefaultAccount ""
        user: 504 WDAGUtilityAccount ""
        user: 1001 alice "Alice Martin"
        problem: softwares: `HKLM\SOFTWARE\Microsoft\Windows\CurrentVersion\Uninstall\{F6B8A4C2-1D3E-4F5A-9B8C-7D6E5F4A3B2C}.InstallDate` is not a YYYYMMDD date: "2024-01-20"
        "#,
    );
}

/// A row of `class` in `snapshot`, for tests that damage one value.
fn row_mut<'a>(
    snapshot: &'a mut Snapshot,
    class: &str,
    index: usize,
) -> &'a mut std::collections::BTreeMap<String, serde_json::Value> {
    match snapshot.wmi.get_mut(class) {
        Some(Reading::Read(rows)) => &mut rows[index],
        _ => panic!("{class} has no rows"),
    }
}

fn problems(inventory: &Inventory) -> Vec<String> {
    inventory
        .problems
        .iter()
        .map(|problem| format!("{}: {}", problem.area, problem.message))
        .collect()
}

#[test]
fn malformed_values_are_problems_naming_class_property_and_value() {
    let mut snapshot = snapshot("laptop-win11-placeholder-serials");
    row_mut(&mut snapshot, "Win32_DiskDrive", 0).insert("Size".into(), json!("1 TB"));
    row_mut(&mut snapshot, "Win32_OperatingSystem", 0)
        .insert("InstallDate".into(), json!("2024-01-05T22:15:00"));
    row_mut(&mut snapshot, "Win32_NetworkAdapterConfiguration", 0)
        .insert("IPAddress".into(), json!(["192.168.1.42", "192.168.1.300"]));
    row_mut(&mut snapshot, "Win32_ComputerSystem", 0).insert("PartOfDomain".into(), json!(1));
    row_mut(&mut snapshot, "Win32_UserAccount", 1).insert("SID".into(), json!("alice"));
    row_mut(&mut snapshot, "Win32_QuickFixEngineering", 0)
        .insert("InstalledOn".into(), json!("01d9a6b4c5e3f000"));
    let inventory = windows::inventory_from_snapshot(&snapshot);
    let problems = problems(&inventory);
    for expected in [
        "storages: `Win32_DiskDrive.Size` is not an unsigned integer: \"1 TB\"",
        "operatingsystem: `Win32_OperatingSystem.InstallDate` is not a CIM datetime: \"2024-01-05T22:15:00\"",
        "networks: `Win32_NetworkAdapterConfiguration.IPAddress` holds \"192.168.1.300\", not an IP address",
        "operatingsystem: `Win32_ComputerSystem.PartOfDomain` is not a boolean: 1",
        "users: `Win32_UserAccount.SID` of alice is not a SID: \"alice\"",
        "softwares: `Win32_QuickFixEngineering.InstalledOn` of KB5034467 is not a M/D/YYYY date: \"01d9a6b4c5e3f000\"",
    ] {
        assert!(
            problems.iter().any(|problem| problem == expected),
            "missing {expected:?} in {problems:#?}"
        );
    }
    // The rest of each area is still there.
    assert_eq!(inventory.storages.len(), 2);
    assert_eq!(inventory.storages[0].disksize_bytes, 0);
    assert_eq!(inventory.storages[1].disksize_bytes, 1_000_169_372_160);
    assert_eq!(inventory.networks[0].addresses.len(), 1);
    let os = inventory.operatingsystem.unwrap();
    assert_eq!(os.install_date, "");
    assert_eq!(os.version, "10.0.22631");
}

#[test]
fn failed_and_timed_out_queries_are_problems_naming_the_class() {
    let mut snapshot = snapshot("dc01-server2022-hyperv");
    snapshot.wmi.insert(
        "Win32_QuickFixEngineering".into(),
        Reading::failed("no answer within 20s; query abandoned"),
    );
    snapshot.wmi.remove("Win32_PhysicalMemory");
    snapshot.registry.uninstall_32 = Reading::failed("Access is denied. (os error 5)");
    let inventory = windows::inventory_from_snapshot(&snapshot);
    let problems = problems(&inventory);
    for expected in [
        "softwares: WMI `Win32_QuickFixEngineering`: no answer within 20s; query abandoned",
        "memories: WMI `Win32_PhysicalMemory` was not queried",
        r"softwares: cannot read HKLM\SOFTWARE\WOW6432Node\Microsoft\Windows\CurrentVersion\Uninstall: Access is denied. (os error 5)",
    ] {
        assert!(
            problems.iter().any(|problem| problem == expected),
            "missing {expected:?} in {problems:#?}"
        );
    }
    // What could be read is still there.
    assert!(
        inventory
            .softwares
            .iter()
            .any(|s| s.name == "7-Zip 23.01 (x64)")
    );
    assert!(!inventory.softwares.iter().any(|s| s.from == "hotfix"));
    assert!(inventory.memories.is_empty());
    assert_eq!(inventory.cpus.len(), 1);
}

#[test]
fn nothing_read_is_a_problem_per_area_and_no_panic() {
    let inventory = windows::inventory_from_snapshot(&Snapshot::default());
    let areas: std::collections::BTreeSet<&str> = inventory
        .problems
        .iter()
        .map(|problem| problem.area.as_str())
        .collect();
    let expected = [
        "bios",
        "cpus",
        "drives",
        "memories",
        "networks",
        "operatingsystem",
        "softwares",
        "storages",
        "users",
    ];
    assert_eq!(areas, expected.into_iter().collect());
    assert!(
        problems(&inventory)
            .iter()
            .any(|p| p == "operatingsystem: cannot read MachineGuid in HKLM\\SOFTWARE\\Microsoft\\Cryptography: not read")
    );
}

#[test]
fn both_registry_views_being_one_key_lists_each_program_once() {
    // On 32-bit Windows both views open the same key.
    let mut snapshot = snapshot("dc01-server2022-hyperv");
    snapshot.registry.uninstall_32 = snapshot.registry.uninstall_64.clone();
    let inventory = windows::inventory_from_snapshot(&snapshot);
    let registry: Vec<(&str, &str)> = inventory
        .softwares
        .iter()
        .filter(|software| software.from == "registry")
        .map(|software| (software.name.as_str(), software.arch.as_str()))
        .collect();
    assert_eq!(
        registry,
        [
            ("7-Zip 23.01 (x64)", "x86_64"),
            ("Microsoft Update Health Tools", "x86_64"),
            (
                "Microsoft Visual C++ 2015-2022 Redistributable (x64) - 14.38.33130",
                "x86_64"
            ),
            ("estate agent", "x86_64"),
        ]
    );
}

#[test]
fn fingerprints_use_machine_guid_and_skip_placeholders() {
    let laptop = snapshot("laptop-win11-placeholder-serials");
    let inventory = windows::inventory_from_snapshot(&laptop);
    let fingerprints = windows::fingerprints(&laptop.registry.machine_guid, &inventory);
    assert_eq!(
        fingerprints.machine_id,
        "e3b0c442-98fc-4c14-9afb-f4c8996fb924"
    );
    assert_eq!(fingerprints.hostname, "LAPTOP-7QK2M9");
    assert_eq!(fingerprints.serial_number, "");
    assert_eq!(fingerprints.smbios_uuid, "");
    // The Wi-Fi adapter carries the default route.
    assert_eq!(fingerprints.primary_mac, "a4:c3:f0:85:1d:7e");

    let dc = snapshot("dc01-server2022-hyperv");
    let inventory = windows::inventory_from_snapshot(&dc);
    let fingerprints = windows::fingerprints(&Reading::failed("denied"), &inventory);
    assert_eq!(fingerprints.machine_id, "");
    assert_eq!(
        fingerprints.serial_number,
        "4417-0973-8806-3410-6211-0364-53"
    );
    assert_eq!(
        fingerprints.smbios_uuid,
        "6b2c1a9e-3d4f-4e8a-9b7c-2f1e0d3c4b5a"
    );
}

#[test]
fn the_same_snapshot_gives_the_same_hash() {
    let first = windows::inventory_from_snapshot(&snapshot("dc01-server2022-hyperv"));
    let second = windows::inventory_from_snapshot(&snapshot("dc01-server2022-hyperv"));
    assert_eq!(inventory::hash(&first), inventory::hash(&second));
    let other = windows::inventory_from_snapshot(&snapshot("laptop-win11-placeholder-serials"));
    assert_ne!(inventory::hash(&first), inventory::hash(&other));
}

#[test]
fn fixtures_hold_only_queried_classes_and_every_query_names_its_class() {
    let known: Vec<&str> = windows::QUERIES.iter().map(|query| query.class).collect();
    for query in windows::QUERIES {
        assert!(
            query.wql.contains(&format!("FROM {}", query.class)),
            "{}: {}",
            query.class,
            query.wql
        );
    }
    for machine in ["dc01-server2022-hyperv", "laptop-win11-placeholder-serials"] {
        let mut classes = Vec::new();
        for entry in std::fs::read_dir(fixture(machine).join("wmi")).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            let class = name
                .strip_suffix(".json")
                .expect("only .json files")
                .to_string();
            assert!(
                known.contains(&class.as_str()),
                "{machine}: {class} is not queried"
            );
            classes.push(class);
        }
        // Every query has its recorded answer.
        assert_eq!(classes.len(), known.len(), "{machine}: {classes:?}");
    }
}

#[test]
fn a_damaged_recording_is_an_error_naming_the_file() {
    let directory = tempfile::tempdir().unwrap();
    std::fs::create_dir(directory.path().join("wmi")).unwrap();
    std::fs::write(
        directory.path().join("wmi/Win32_BIOS.json"),
        "{\"rows\": 1}",
    )
    .unwrap();
    let error = Snapshot::load(directory.path()).unwrap_err();
    assert!(
        error.contains("Win32_BIOS.json` is not WMI rows"),
        "{error}"
    );
}
