//! Inventory collection against fixture trees (`tests/fixtures/inventory/<name>`), a damaged
//! tree, and the machine the tests run on.

use estate_agent::inventory::{self, smbios_table_builder::Dimm};
use estate_proto::v1::Inventory;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

mod support;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/inventory")
        .join(name)
}

/// 2024-03-15T10:00:00Z: the install time given to every dpkg file list of the fixtures, since
/// git does not keep modification times.
const FIXTURE_INSTALL_TIME: u64 = 1_710_496_800;

/// Collects a fixture tree after pinning the file times the inventory reads.
fn collect_fixture(name: &str) -> Inventory {
    let root = fixture(name);
    let info = root.join("var/lib/dpkg/info");
    if let Ok(entries) = std::fs::read_dir(&info) {
        let time = UNIX_EPOCH + Duration::from_secs(FIXTURE_INSTALL_TIME);
        for entry in entries.flatten() {
            let file = std::fs::File::options().append(true).open(entry.path());
            file.and_then(|file| file.set_modified(time))
                .expect("pin the modification time of a dpkg file list");
        }
    }
    inventory::collect(&root)
}

/// The facts of an inventory as short lines, paths shown relative to the tree (`<root>`).
/// Drive sizes are left out: `statvfs` of a fixture mount point measures the test machine.
fn summary(inventory: &Inventory, root: &Path) -> String {
    let mut out = String::new();
    let os = inventory.operatingsystem.clone().unwrap_or_default();
    let mut line = |text: String| {
        out.push_str(text.trim_end());
        out.push('\n');
    };
    support::hardware_lines(inventory, &mut line);
    for storage in &inventory.storages {
        line(format!(
            "storage: {} {} {} {} {:?} {:?} sn={:?} fw={:?} rotational={:?} {:?}",
            storage.name,
            storage.r#type,
            storage.interface,
            storage.disksize_bytes,
            storage.manufacturer,
            storage.model,
            storage.serialnumber,
            storage.firmware,
            storage.rotational,
            storage.description
        ));
    }
    for drive in &inventory.drives {
        line(format!(
            "drive: {:?} {} {:?} label={:?} serial={:?}",
            drive.mount, drive.filesystem, drive.volumn, drive.label, drive.serial
        ));
    }
    for network in &inventory.networks {
        let addresses: Vec<String> = network
            .addresses
            .iter()
            .map(|a| format!("{}/{}", a.address, a.prefix_length))
            .collect();
        line(format!(
            "network: {} {} mac={:?} mtu={} {}Mb/s {} virtual={} dhcp={:?} driver={:?} gw={:?} ip={:?}",
            network.description,
            network.r#type,
            network.macaddr,
            network.mtu,
            network.speed_mbps,
            network.status,
            network.virtualdev,
            network.ipdhcp,
            network.driver,
            network.ipgateway,
            addresses
        ));
    }
    line(format!(
        "os: {:?} {:?} {:?} {} {} {}",
        os.name, os.version, os.full_name, os.kernel_name, os.kernel_version, os.arch
    ));
    line(format!(
        "names: host={:?} fqdn={:?} domain={:?} tz={:?} dns={:?} installed={:?}",
        os.hostname, os.fqdn, os.dns_domain, os.timezone, os.dns_servers, os.install_date
    ));
    for software in &inventory.softwares {
        line(format!(
            "software: {} {} {} {} {:?} {} {}",
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
        line(format!(
            "user: {} {} {:?} {} {}",
            user.id, user.login, user.name, user.home, user.shell
        ));
    }
    for problem in &inventory.problems {
        let message = problem
            .message
            .replace(&root.display().to_string(), "<root>");
        line(format!("problem: {}: {message}", problem.area));
    }
    out
}

/// Collects `name` and compares its summary with `expect`, line by line.
fn check(name: &str, expect: &str) {
    let inventory = collect_fixture(name);
    let actual = summary(&inventory, &fixture(name));
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
    // The root mount of a fixture is the fixture directory itself, so `statvfs` answers.
    let root_drive = inventory.drives.iter().find(|drive| drive.mount == "/");
    assert!(
        root_drive.is_none_or(|drive| drive.total_bytes > 0),
        "{name}: `/` has no size"
    );
}

#[test]
fn physical_server() {
    check("physical-server", PHYSICAL_SERVER);
}

#[test]
fn vmware_guest() {
    check("vmware-guest", VMWARE_GUEST);
}

#[test]
fn kvm_guest() {
    check("kvm-guest", KVM_GUEST);
}

#[test]
fn placeholder_serials() {
    check("placeholder-serials", PLACEHOLDER_SERIALS);
}

const PHYSICAL_SERVER: &str = r#"
    bios: "Dell Inc." "PowerEdge R740" ssn="7XJ2KM3" uuid="4c4c4544-0058-4a10-8032-b7c04f4b4d33" sku="SKU=NotProvided;ModelName=PowerEdge R740" tag=""
    firmware: "Dell Inc." "2.12.2" "07/09/2021" board: "Dell Inc." "06WXJT" msn=".7XJ2KM3.CNFCP0019H00AB."
    hardware: "db01" "Rack Mount Chassis" "Physical" sockets=2 memory=134780338176 swap=8589930496
    cpu: "Intel(R) Xeon(R) Gold 6130 CPU @ 2.10GHz" "Intel" cores=2 threads=4 3700MHz family=6 model=85 stepping=4 x86_64
    cpu: "Intel(R) Xeon(R) Gold 6130 CPU @ 2.10GHz" "Intel" cores=2 threads=4 3700MHz family=6 model=85 stepping=4 x86_64
    memory: "A1" DDR4 34359738368 2666MT/s "DIMM" "Samsung" "M393A4K40CB2-CTD" "35A1B2C3" slots=6
    memory: "A2" DDR4 34359738368 2666MT/s "DIMM" "Samsung" "M393A4K40CB2-CTD" "35A1B2C4" slots=6
    memory: "B1" DDR4 34359738368 2666MT/s "DIMM" "Samsung" "M393A4K40CB2-CTD" "35A1B2C5" slots=6
    memory: "B2" DDR4 34359738368 2666MT/s "DIMM" "Samsung" "M393A4K40CB2-CTD" "35A1B2C6" slots=6
    storage: md0 raid  999997571072 "" "" sn="" fw="" rotational=Some(true) "raid1"
    storage: nvme0n1 disk NVMe 1920383410176 "Samsung" "SAMSUNG MZQLB1T9HAJR-00007" sn="S439NA0M123456" fw="EDA5202Q" rotational=Some(false) ""
    storage: sda disk SATA 480103981056 "Samsung" "Samsung SSD 860" sn="S3Z9NB0K123456A" fw="RVT04B6Q" rotational=Some(false) ""
    storage: sdb disk SATA 4000787030016 "Seagate" "ST4000NM0035-1V4" sn="ZC1A2B3C" fw="TN05" rotational=Some(true) ""
    storage: sdc removable USB 30943995904 "Kingston" "DataTraveler 3.0" sn="" fw="PMAP" rotational=Some(true) ""
    drive: "/" ext4 "/dev/mapper/vg0-root" label="root" serial="2f9c7d4e-1a2b-4c3d-9e8f-0a1b2c3d4e5f"
    drive: "/boot" ext4 "/dev/sda1" label="boot" serial="7d1e2f30-4a5b-4c6d-8e9f-a0b1c2d3e4f5"
    drive: "/boot/efi" vfat "/dev/sda2" label="" serial="4C1A-2B3D"
    drive: "/var/lib/postgresql" xfs "/dev/md0" label="PG-DATA" serial=""
    drive: "/var/lib/postgresql/wal" ext4 "/dev/nvme0n1p1" label="" serial=""
    network: bond0 bond mac="b0:26:28:aa:bb:01" mtu=1500 20000Mb/s up virtual=true dhcp="static" driver="" gw=["10.20.0.1", "fe80::1"] ip=["2001:db8:20::10/64", "fe80::b226:28ff:feaa:bb01/64"]
    network: eno1 ethernet mac="b0:26:28:aa:bb:01" mtu=1500 10000Mb/s up virtual=false dhcp="" driver="tg3" gw=[] ip=[]
    network: eno2 ethernet mac="b0:26:28:aa:bb:01" mtu=1500 10000Mb/s up virtual=false dhcp="" driver="tg3" gw=[] ip=[]
    network: eno3 ethernet mac="b0:26:28:aa:bb:03" mtu=1500 0Mb/s down virtual=false dhcp="dhcp" driver="tg3" gw=[] ip=[]
    network: lo loopback mac="" mtu=65536 0Mb/s unknown virtual=true dhcp="" driver="" gw=[] ip=["::1/128"]
    os: "Debian GNU/Linux" "12.5" "Debian GNU/Linux 12 (bookworm)" Linux 6.1.0-18-amd64 x86_64
    names: host="db01" fqdn="db01.corp.example.com" domain="corp.example.com" tz="Europe/Paris" dns=["10.20.0.53", "10.20.0.54"] installed=""
    software: bash 5.2.15-2+b2 amd64 2024-03-15 "Matthias Klose" dpkg 7335936
    software: openssh-server 1:9.2p1-2+deb12u2 amd64 2024-03-15 "Debian OpenSSH Maintainers" dpkg 2038784
    software: postgresql-15 15.6-0+deb12u1 amd64 2024-03-15 "Debian PostgreSQL Maintainers" dpkg 54272000
    software: tzdata 2024a-0+deb12u1 all 2024-03-15 "GNU Libc Maintainers" dpkg 3465216
    software: zlib1g 1:1.2.13.dfsg-1 amd64 2024-03-15 "Mark Brown" dpkg 172032
    user: 0 root "root" /root /bin/bash
    user: 1000 jdoe "John Doe" /home/jdoe /bin/bash
    user: 1001 asmith "Alice Smith" /home/asmith /usr/bin/zsh
"#;
const VMWARE_GUEST: &str = r#"
    bios: "VMware, Inc." "VMware7,1" ssn="VMware-42 1a 2b 3c 4d 5e 6f 70-81 92 a3 b4 c5 d6 e7 f8" uuid="421a2b3c-4d5e-6f70-8192-a3b4c5d6e7f8" sku="" tag=""
    firmware: "VMware, Inc." "VMW71.00V.21100432.B64.2301110304" "01/11/2023" board: "Intel Corporation" "440BX Desktop Reference Platform" msn=""
    hardware: "app01.corp.example.com" "Other" "VMware" sockets=2 memory=16602497024 swap=4294963200
    cpu: "Intel(R) Xeon(R) Gold 6248R CPU @ 3.00GHz" "Intel" cores=1 threads=1 2993MHz family=6 model=85 stepping=7
    cpu: "Intel(R) Xeon(R) Gold 6248R CPU @ 3.00GHz" "Intel" cores=1 threads=1 2993MHz family=6 model=85 stepping=7
    memory: "RAM slot #0" DRAM 8589934592 0MT/s "DIMM" "VMware Virtual RAM" "VMW-8192MB" "00000001" slots=4
    memory: "RAM slot #1" DRAM 8589934592 0MT/s "DIMM" "VMware Virtual RAM" "VMW-8192MB" "00000002" slots=4
    storage: sda disk SCSI 53687091200 "VMware" "Virtual disk" sn="" fw="2.0" rotational=Some(true) ""
    storage: sr0 cdrom SCSI 1073741312 "NECVMWar" "VMware SATA CD00" sn="" fw="1.00" rotational=Some(true) ""
    drive: "/" xfs "/dev/mapper/rhel-root" label="" serial="9b8a7c6d-5e4f-4a3b-2c1d-0e9f8a7b6c5d"
    drive: "/boot" xfs "/dev/sda1" label="" serial=""
    drive: "/mnt/share" cifs "//files.corp.example.com/share" label="" serial=""
    network: ens192 ethernet mac="00:50:56:9a:1b:2c" mtu=1500 10000Mb/s up virtual=false dhcp="dhcp" driver="vmxnet3" gw=["192.168.10.1"] ip=["fe80::250:56ff:fe9a:1b2c/64"]
    network: lo loopback mac="" mtu=65536 0Mb/s unknown virtual=true dhcp="" driver="" gw=[] ip=["::1/128"]
    os: "Red Hat Enterprise Linux" "8.9" "Red Hat Enterprise Linux 8.9 (Ootpa)" Linux 4.18.0-513.5.1.el8_9.x86_64
    names: host="app01.corp.example.com" fqdn="app01.corp.example.com" domain="corp.example.com" tz="America/New_York" dns=["192.168.10.53"] installed=""
    user: 0 root "root" /root /bin/bash
    user: 1000 admin "Admin" /home/admin /bin/bash
    problem: softwares: no package database found (`<root>/var/lib/dpkg/status`, `<root>/var/lib/rpm`)
"#;
const KVM_GUEST: &str = r#"
    bios: "QEMU" "Standard PC (Q35 + ICH9, 2009)" ssn="" uuid="8a3f4c2e-6b1d-4e5f-9a0b-1c2d3e4f5a6b" sku="" tag=""
    firmware: "SeaBIOS" "1.16.2-debian-1.16.2-1" "04/01/2014" board: "" "" msn=""
    hardware: "web01" "Other" "KVM" sockets=1 memory=4101197824 swap=0
    cpu: "AMD EPYC-Rome Processor" "AMD" cores=4 threads=4 2994MHz family=23 model=49 stepping=0
    memory: "DIMM 0" RAM 4294967296 0MT/s "DIMM" "QEMU" "" "" slots=1
    storage: vda disk virtio 42949672960 "" "" sn="vol-8a3f4c2e" fw="" rotational=Some(true) ""
    drive: "/" ext4 "/dev/vda1" label="cloudimg-rootfs" serial=""
    drive: "/boot/efi" vfat "/dev/vda15" label="UEFI" serial=""
    drive: "/home" nfs4 "nfs01:/export/home" label="" serial=""
    network: docker0 bridge mac="02:42:8a:1b:2c:3d" mtu=1500 0Mb/s down virtual=true dhcp="" driver="" gw=[] ip=[]
    network: enp1s0 ethernet mac="52:54:00:12:34:56" mtu=1500 0Mb/s up virtual=false dhcp="dhcp" driver="virtio_net" gw=["10.0.2.2"] ip=["fe80::5054:ff:fe12:3456/64"]
    network: lo loopback mac="" mtu=65536 0Mb/s unknown virtual=true dhcp="" driver="" gw=[] ip=["::1/128"]
    os: "Ubuntu" "24.04" "Ubuntu 24.04 LTS" Linux 6.8.0-31-generic
    names: host="web01" fqdn="web01.example.internal" domain="example.internal" tz="Etc/UTC" dns=["10.0.2.3"] installed=""
    software: cloud-init 24.1.3-0ubuntu3 all 2024-03-15 "Ubuntu Developers" dpkg 2867200
    software: libc6 2.39-0ubuntu8 amd64 2024-03-15 "Ubuntu Developers" dpkg 13312000
    software: libc6 2.39-0ubuntu8 i386  "Ubuntu Developers" dpkg 12288000
    user: 0 root "root" /root /bin/bash
    user: 1000 ubuntu "Ubuntu" /home/ubuntu /bin/bash
"#;
const PLACEHOLDER_SERIALS: &str = r#"
    bios: "" "" ssn="" uuid="" sku="" tag=""
    firmware: "American Megatrends Inc." "P2.10" "12/21/2018" board: "ASRock" "B450M Pro4" msn=""
    hardware: "whitebox" "Desktop" "Physical" sockets=1 memory=16701440000 swap=2147479552
    cpu: "AMD Ryzen 5 2600 Six-Core Processor" "AMD" cores=6 threads=12 1550MHz family=23 model=8 stepping=2
    network: enp5s0 ethernet mac="70:85:c2:aa:bb:cc" mtu=1500 1000Mb/s up virtual=false dhcp="" driver="r8169" gw=[] ip=[]
    os: "" "" "" Linux 6.1.0-18-amd64
    names: host="whitebox" fqdn="whitebox" domain="" tz="" dns=[] installed=""
    problem: memories: cannot read `<root>/sys/firmware/dmi/tables/DMI`: entity not found
    problem: storages: cannot read `<root>/sys/block`: entity not found
    problem: drives: cannot read `<root>/proc/self/mounts`: entity not found
    problem: operatingsystem: cannot read `<root>/etc/os-release`: entity not found
    problem: softwares: no package database found (`<root>/var/lib/dpkg/status`, `<root>/var/lib/rpm`)
    problem: users: cannot read `<root>/etc/passwd`: entity not found
"#;

/// The memory devices in each fixture's SMBIOS table.
fn fixture_dimms(name: &str) -> Vec<Dimm<'static>> {
    let dimm = |locator, bank, size, extended_mib, memory_type, speed, maker, serial, part| Dimm {
        locator,
        bank,
        size,
        extended_mib,
        memory_type,
        speed,
        manufacturer: maker,
        serial,
        part,
    };
    // 0x7FFF: the size is in `extended_mib` (32 GiB does not fit the 15-bit MB field).
    let rdimm = |locator, bank, serial| {
        dimm(
            locator,
            bank,
            0x7fff,
            32768,
            0x1a,
            2666,
            "Samsung",
            serial,
            "M393A4K40CB2-CTD    ",
        )
    };
    let empty = |locator, bank| {
        dimm(
            locator, bank, 0, 0, 0x02, 0, "NO DIMM", "NO DIMM", "NO DIMM",
        )
    };
    match name {
        "physical-server" => vec![
            rdimm("A1", "Not Specified", "35A1B2C3"),
            rdimm("A2", "Not Specified", "35A1B2C4"),
            empty("A3", "Not Specified"),
            rdimm("B1", "Not Specified", "35A1B2C5"),
            rdimm("B2", "Not Specified", "35A1B2C6"),
            empty("B3", "Not Specified"),
        ],
        "vmware-guest" => vec![
            dimm(
                "RAM slot #0",
                "RAM slot #0",
                8192,
                0,
                0x03,
                0,
                "VMware Virtual RAM",
                "00000001",
                "VMW-8192MB",
            ),
            dimm(
                "RAM slot #1",
                "RAM slot #1",
                8192,
                0,
                0x03,
                0,
                "VMware Virtual RAM",
                "00000002",
                "VMW-8192MB",
            ),
            empty("RAM slot #2", "RAM slot #2"),
            empty("RAM slot #3", "RAM slot #3"),
        ],
        "kvm-guest" => vec![dimm(
            "DIMM 0",
            "",
            4096,
            0,
            0x07,
            0,
            "QEMU",
            "Not Specified",
            "",
        )],
        _ => Vec::new(),
    }
}

/// The binary SMBIOS tables of the fixtures are built by `smbios_table_builder`, never edited by
/// hand: this test fails when they drift and rewrites them with `UPDATE_FIXTURES=1`.
#[test]
fn smbios_fixture_tables_are_fresh() {
    for name in ["physical-server", "vmware-guest", "kvm-guest"] {
        let table = inventory::smbios_table_builder::table(&fixture_dimms(name));
        let path = fixture(name).join("sys/firmware/dmi/tables/DMI");
        if std::env::var_os("UPDATE_FIXTURES").is_some() {
            std::fs::create_dir_all(path.parent().expect("the table has a parent directory"))
                .expect("create the dmi tables directory");
            std::fs::write(&path, &table).expect("write the fixture smbios table");
        }
        let committed = std::fs::read(&path).unwrap_or_default();
        assert!(
            committed == table,
            "`{}` is stale: run the tests with UPDATE_FIXTURES=1",
            path.display()
        );
    }
}

/// A tree where every area is missing: each area says which path it could not read, and
/// nothing panics.
#[test]
fn missing_areas_become_problems_naming_the_paths() {
    let empty = tempfile::tempdir().expect("create a temporary directory");
    let root = empty.path();
    let inventory = inventory::collect(root);
    let problems = summary(&inventory, root);
    for expected in [
        "problem: bios: no smbios data: `<root>/sys/class/dmi/id` is missing",
        "problem: cpus: cannot read `<root>/proc/cpuinfo`: entity not found",
        "problem: memories: cannot read `<root>/proc/meminfo`: entity not found",
        "problem: memories: cannot read `<root>/sys/firmware/dmi/tables/DMI`: entity not found",
        "problem: storages: cannot read `<root>/sys/block`: entity not found",
        "problem: drives: cannot read `<root>/proc/self/mounts`: entity not found",
        "problem: networks: cannot read `<root>/sys/class/net`: entity not found",
        "problem: operatingsystem: cannot read `<root>/etc/os-release`: entity not found",
        "problem: operatingsystem: cannot read `<root>/proc/sys/kernel/osrelease`: entity not found",
        "problem: operatingsystem: no host name in `<root>/proc/sys/kernel/hostname` nor `<root>/etc/hostname`",
        "problem: softwares: no package database found (`<root>/var/lib/dpkg/status`, `<root>/var/lib/rpm`)",
        "problem: users: cannot read `<root>/etc/passwd`: entity not found",
    ] {
        assert!(
            problems.contains(expected),
            "missing {expected:?} in\n{problems}"
        );
    }
    let vitals = inventory::vitals(root);
    assert_eq!(vitals, Default::default());
    let fingerprints = inventory::fingerprints(root, &inventory);
    assert_eq!(fingerprints, Default::default());
}

/// Damaged sources (a truncated SMBIOS table, garbage in every text file) cost problems or
/// empty values, never a panic.
#[test]
fn damaged_sources_do_not_panic() {
    let tree = tempfile::tempdir().expect("create a temporary directory");
    let root = tree.path();
    let write = |relative: &str, bytes: &[u8]| {
        let path = root.join(relative);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("create directories");
        std::fs::write(path, bytes).expect("write a damaged file");
    };
    let table = inventory::smbios_table_builder::table(&fixture_dimms("physical-server"));
    write("sys/firmware/dmi/tables/DMI", &table[..table.len() / 2]);
    let garbage: &[u8] = b"\xff\xfe:::\n\x00\x01 garbage : more\n\n\t\tprocessor : x\n=\"\n";
    for relative in [
        "proc/cpuinfo",
        "proc/meminfo",
        "proc/mounts",
        "proc/net/route",
        "proc/net/ipv6_route",
        "proc/net/if_inet6",
        "proc/stat",
        "proc/loadavg",
        "etc/os-release",
        "etc/passwd",
        "etc/login.defs",
        "etc/hosts",
        "etc/resolv.conf",
        "var/lib/dpkg/status",
        "sys/class/dmi/id/chassis_type",
        "sys/class/dmi/id/product_uuid",
        "sys/block/sda/size",
        "sys/block/sda/device/vpd_pg80",
        "sys/class/net/eth0/type",
        "sys/class/net/eth0/speed",
        "sys/class/net/eth0/mtu",
    ] {
        write(relative, garbage);
    }
    let inventory = inventory::collect(root);
    let problems = summary(&inventory, root);
    assert!(
        problems.contains("problem: memories: unterminated smbios strings at offset"),
        "{problems}"
    );
    assert!(
        problems.contains("problem: cpus: no processor found in `<root>/proc/cpuinfo`"),
        "{problems}"
    );
    assert!(!problems.contains("panicked"), "{problems}");
    let _ = inventory::vitals(root);
    let _ = inventory::fingerprints(root, &inventory);
}

#[test]
fn the_same_tree_gives_the_same_hash() {
    for name in [
        "physical-server",
        "vmware-guest",
        "kvm-guest",
        "placeholder-serials",
    ] {
        let first = inventory::hash(&collect_fixture(name));
        let second = inventory::hash(&collect_fixture(name));
        assert_eq!(first, second, "{name}");
        assert!(
            first.starts_with("sha256:") && first.len() == 7 + 64,
            "{first}"
        );
    }
    let physical = inventory::hash(&collect_fixture("physical-server"));
    let kvm = inventory::hash(&collect_fixture("kvm-guest"));
    assert_ne!(physical, kvm);
}

#[test]
fn vitals_of_a_fixture() {
    let root = fixture("physical-server");
    let vitals = inventory::vitals(&root);
    assert_eq!(vitals.memory_available_bytes, 98_000_000 * 1024);
    assert_eq!(vitals.swap_free_bytes, 8_388_604 * 1024);
    assert_eq!(vitals.boot_time_unix, 1_714_000_000);
    assert_eq!(vitals.load1, 0.72);
    // Only the mount points present in the tree answer `statvfs`: the fixture root itself.
    let mounts: Vec<&str> = vitals.volumes.iter().map(|v| v.mount.as_str()).collect();
    assert_eq!(mounts, ["/"]);
    assert!(vitals.volumes[0].total_bytes >= vitals.volumes[0].free_bytes);
}

#[test]
fn fingerprints_of_the_fixtures() {
    let check = |name: &str, expect: inventory::Fingerprints| {
        let root = fixture(name);
        let actual = inventory::fingerprints(&root, &collect_fixture(name));
        assert_eq!(actual, expect, "{name}");
    };
    let fingerprints = |hostname: &str, machine_id: &str, uuid: &str, serial: &str, mac: &str| {
        inventory::Fingerprints {
            hostname: hostname.into(),
            machine_id: machine_id.into(),
            smbios_uuid: uuid.into(),
            serial_number: serial.into(),
            primary_mac: mac.into(),
        }
    };
    // The default route goes through the bond, whose MAC is its first member's.
    check(
        "physical-server",
        fingerprints(
            "db01",
            "5f3c9a1e2b4d4c6e8f0a1b2c3d4e5f60",
            "4c4c4544-0058-4a10-8032-b7c04f4b4d33",
            "7XJ2KM3",
            "b0:26:28:aa:bb:01",
        ),
    );
    // No /etc/machine-id: the D-Bus copy is used.
    check(
        "vmware-guest",
        fingerprints(
            "app01.corp.example.com",
            "0b5e4f6a1c2d4e3f9a8b7c6d5e4f3a2b",
            "421a2b3c-4d5e-6f70-8192-a3b4c5d6e7f8",
            "VMware-42 1a 2b 3c 4d 5e 6f 70-81 92 a3 b4 c5 d6 e7 f8",
            "00:50:56:9a:1b:2c",
        ),
    );
    // No default route and only placeholders in SMBIOS: the first physical interface's MAC.
    check(
        "placeholder-serials",
        fingerprints(
            "whitebox",
            "c0ffee00c0ffee00c0ffee00c0ffee00",
            "",
            "",
            "70:85:c2:aa:bb:cc",
        ),
    );
}

/// The inventory of the machine running the tests. Asserts only what every Debian host
/// has; prints the rest so a human can judge it.
#[test]
fn live_host() {
    let root = Path::new("/");
    let started = std::time::Instant::now();
    let inventory = inventory::collect(root);
    let elapsed = started.elapsed();
    let vitals = inventory::vitals(root);
    let fingerprints = inventory::fingerprints(root, &inventory);
    let hardware = inventory.hardware.clone().unwrap_or_default();
    let os = inventory.operatingsystem.clone().unwrap_or_default();
    println!(
        "collected in {elapsed:?}, hash {}",
        inventory::hash(&inventory)
    );
    println!(
        "os: {} {} ({}), kernel {}, arch {}, host {} fqdn {}",
        os.name, os.version, os.full_name, os.kernel_version, os.arch, os.hostname, os.fqdn
    );
    println!(
        "hardware: vmsystem {:?}, chassis {:?}, sockets {}, memory {} bytes, swap {} bytes",
        hardware.vmsystem,
        hardware.chassis_type,
        hardware.sockets,
        hardware.memory_bytes,
        hardware.swap_bytes
    );
    for cpu in &inventory.cpus {
        println!(
            "cpu: {} ({}) {} cores {} threads {} MHz",
            cpu.name, cpu.manufacturer, cpu.core, cpu.thread, cpu.speed_mhz
        );
    }
    println!(
        "memories {}, storages {:?}, drives {:?}",
        inventory.memories.len(),
        inventory
            .storages
            .iter()
            .map(|s| format!("{} {} {}", s.name, s.interface, s.disksize_bytes))
            .collect::<Vec<_>>(),
        inventory
            .drives
            .iter()
            .map(|d| format!("{} {}", d.mount, d.filesystem))
            .collect::<Vec<_>>()
    );
    for network in &inventory.networks {
        let addresses: Vec<String> = network
            .addresses
            .iter()
            .map(|a| format!("{}/{}", a.address, a.prefix_length))
            .collect();
        println!(
            "network: {} {} {} {:?} gw {:?} dhcp {:?}",
            network.description,
            network.r#type,
            network.macaddr,
            addresses,
            network.ipgateway,
            network.ipdhcp
        );
    }
    println!(
        "softwares {}, users {:?}",
        inventory.softwares.len(),
        inventory
            .local_users
            .iter()
            .map(|u| &u.login)
            .collect::<Vec<_>>()
    );
    for problem in &inventory.problems {
        println!("problem: {}: {}", problem.area, problem.message);
    }
    println!("vitals: {vitals:?}");
    println!("fingerprints: {fingerprints:?}");

    if Path::new("/proc/cpuinfo").exists() {
        assert!(!inventory.cpus.is_empty(), "no cpu");
    }
    if Path::new("/proc/meminfo").exists() {
        assert!(hardware.memory_bytes > 0, "no memory");
        assert!(vitals.memory_available_bytes > 0, "no available memory");
    }
    if Path::new("/sys/class/net").exists() {
        assert!(
            inventory
                .networks
                .iter()
                .any(|network| !network.macaddr.is_empty()),
            "no network with a mac"
        );
    }
    if Path::new("/var/lib/dpkg/status").exists() {
        assert!(
            inventory
                .softwares
                .iter()
                .any(|software| software.from == "dpkg"),
            "no dpkg package"
        );
    }
    assert!(
        inventory
            .problems
            .iter()
            .all(|p| !p.message.contains("panicked")),
        "an area panicked"
    );
}
