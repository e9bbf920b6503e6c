//! The BIOS and HARDWARE sections: SMBIOS facts from `/sys/class/dmi/id`, the chassis type in
//! words, and whether the host is a virtual machine (and on which hypervisor).

use super::source::Source;
use estate_proto::v1::{Bios, Hardware, Inventory};

const DMI_DIR: &str = "sys/class/dmi/id";

/// The `sys/class/dmi/id` attributes this area reads, as read (untrimmed values trimmed).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DmiStrings {
    pub sys_vendor: String,
    pub product_name: String,
    pub product_version: String,
    pub product_serial: String,
    pub product_uuid: String,
    pub product_sku: String,
    pub bios_vendor: String,
    pub bios_version: String,
    pub bios_date: String,
    pub board_vendor: String,
    pub board_name: String,
    pub board_serial: String,
    pub chassis_type: String,
    pub chassis_asset_tag: String,
}

/// The other signs of virtualization, besides DMI strings.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HypervisorHints {
    /// `/sys/hypervisor/type` ("xen" on Xen guests).
    pub hypervisor_type: String,
    /// The `hypervisor` flag of `/proc/cpuinfo` (set by every x86 hypervisor).
    pub cpu_flag: bool,
    /// `kvm-clock` among the available clocksources: QEMU with KVM acceleration.
    pub kvm_clock: bool,
}

pub fn collect(source: &Source, inventory: &mut Inventory, problems: &mut Vec<String>) {
    let (dmi, dmi_problems) = read_dmi(source);
    problems.extend(dmi_problems);
    let hints = read_hints(source);
    inventory.bios = Some(bios_from_dmi(&dmi));
    let hardware = inventory.hardware.get_or_insert_with(Hardware::default);
    hardware.chassis_type = chassis_type_words(&dmi.chassis_type).to_string();
    hardware.vmsystem = vmsystem(&dmi, &hints).to_string();
}

fn read_dmi(source: &Source) -> (DmiStrings, Vec<String>) {
    let mut problems = Vec::new();
    if !source.exists(DMI_DIR) {
        problems.push(format!(
            "no smbios data: `{}` is missing",
            source.path(DMI_DIR).display()
        ));
        return (DmiStrings::default(), problems);
    }
    let mut read = |name: &str| -> String {
        // Serial and UUID files are readable by root only: a non-root agent records why
        // they are empty instead of silently sending less.
        match source.read_optional(&format!("{DMI_DIR}/{name}")) {
            Ok(value) => value.unwrap_or_default(),
            Err(message) => {
                problems.push(message);
                String::new()
            }
        }
    };
    let dmi = DmiStrings {
        sys_vendor: read("sys_vendor"),
        product_name: read("product_name"),
        product_version: read("product_version"),
        product_serial: read("product_serial"),
        product_uuid: read("product_uuid"),
        product_sku: read("product_sku"),
        bios_vendor: read("bios_vendor"),
        bios_version: read("bios_version"),
        bios_date: read("bios_date"),
        board_vendor: read("board_vendor"),
        board_name: read("board_name"),
        board_serial: read("board_serial"),
        chassis_type: read("chassis_type"),
        chassis_asset_tag: read("chassis_asset_tag"),
    };
    (dmi, problems)
}

fn read_hints(source: &Source) -> HypervisorHints {
    HypervisorHints {
        hypervisor_type: source
            .read_trimmed("sys/hypervisor/type")
            .unwrap_or_default(),
        cpu_flag: source
            .read_text("proc/cpuinfo")
            .map(|text| super::cpus::has_hypervisor_flag(&text))
            .unwrap_or(false),
        kvm_clock: source
            .read_trimmed("sys/devices/system/clocksource/clocksource0/available_clocksource")
            .is_some_and(|clocks| clocks.split_whitespace().any(|clock| clock == "kvm-clock")),
    }
}

pub fn bios_from_dmi(dmi: &DmiStrings) -> Bios {
    Bios {
        smanufacturer: not_placeholder(&dmi.sys_vendor),
        smodel: not_placeholder(&dmi.product_name),
        ssn: not_placeholder(&dmi.product_serial),
        bmanufacturer: not_placeholder(&dmi.bios_vendor),
        bversion: dmi.bios_version.trim().to_string(),
        bdate: dmi.bios_date.trim().to_string(),
        mmanufacturer: not_placeholder(&dmi.board_vendor),
        mmodel: not_placeholder(&dmi.board_name),
        msn: not_placeholder(&dmi.board_serial),
        skunumber: not_placeholder(&dmi.product_sku),
        assettag: not_placeholder(&dmi.chassis_asset_tag),
        uuid: smbios_uuid(&dmi.product_uuid),
    }
}

/// Values firmware vendors leave in fields they did not fill, compared case-insensitively.
const PLACEHOLDERS: &[&str] = &[
    "default string",
    "to be filled by o.e.m.",
    "to be filled by oem",
    "system serial number",
    "system product name",
    "system manufacturer",
    "system version",
    "base board serial number",
    "chassis serial number",
    "not specified",
    "not available",
    "not applicable",
    "n/a",
    "none",
    "0123456789",
    "123456789",
    "1234567890",
    "invalid",
    "unknown",
    "oem",
    "o.e.m.",
    "default",
    "serial",
    "asset tag",
    "asset-1234567890",
    "no asset tag",
    "no asset information",
    "sku",
    "type1productconfigid",
    "03000200-0400-0500-0006-000700080009",
];

/// True for values that mean "nobody filled this in": the list above, and strings made only
/// of `X`, `0`, `F` (UUID style, with dashes) or spaces.
pub fn is_placeholder(value: &str) -> bool {
    let value = value.trim();
    if value.is_empty() {
        return true;
    }
    let lower = value.to_ascii_lowercase();
    if PLACEHOLDERS.contains(&lower.as_str()) {
        return true;
    }
    let only = |allowed: &[char]| lower.chars().all(|c| allowed.contains(&c));
    only(&['x', ' ']) || only(&['0', ' ', '-']) || (lower.contains('-') && only(&['f', '-']))
}

/// The trimmed value, or `""` when it is a placeholder.
pub fn not_placeholder(value: &str) -> String {
    if is_placeholder(value) {
        String::new()
    } else {
        value.trim().to_string()
    }
}

/// The SMBIOS system UUID in lower case, or `""` when absent or a placeholder.
pub fn smbios_uuid(value: &str) -> String {
    not_placeholder(value).to_ascii_lowercase()
}

/// The SMBIOS chassis type (DMTF DSP0134 table 17) in words. The top bit is the lock flag.
pub fn chassis_type_words(number: &str) -> &'static str {
    let Ok(number) = number.trim().parse::<u8>() else {
        return "";
    };
    match number & 0x7f {
        1 => "Other",
        2 => "Unknown",
        3 => "Desktop",
        4 => "Low Profile Desktop",
        5 => "Pizza Box",
        6 => "Mini Tower",
        7 => "Tower",
        8 => "Portable",
        9 => "Laptop",
        10 => "Notebook",
        11 => "Hand Held",
        12 => "Docking Station",
        13 => "All in One",
        14 => "Sub Notebook",
        15 => "Space-saving",
        16 => "Lunch Box",
        17 => "Main Server Chassis",
        18 => "Expansion Chassis",
        19 => "SubChassis",
        20 => "Bus Expansion Chassis",
        21 => "Peripheral Chassis",
        22 => "RAID Chassis",
        23 => "Rack Mount Chassis",
        24 => "Sealed-case PC",
        25 => "Multi-system chassis",
        26 => "Compact PCI",
        27 => "Advanced TCA",
        28 => "Blade",
        29 => "Blade Enclosure",
        30 => "Tablet",
        31 => "Convertible",
        32 => "Detachable",
        33 => "IoT Gateway",
        34 => "Embedded PC",
        35 => "Mini PC",
        36 => "Stick PC",
        _ => "",
    }
}

/// "Physical", or the hypervisor the host runs on. DMI strings name it most precisely; the
/// Xen type file and the CPU's `hypervisor` flag catch guests whose firmware hides it.
/// A guest whose hypervisor cannot be named is reported as "Virtual".
pub fn vmsystem(dmi: &DmiStrings, hints: &HypervisorHints) -> &'static str {
    let vendor = dmi.sys_vendor.to_ascii_lowercase();
    let product = dmi.product_name.to_ascii_lowercase();
    let bios_vendor = dmi.bios_vendor.to_ascii_lowercase();
    let bios_version = dmi.bios_version.to_ascii_lowercase();
    let board_vendor = dmi.board_vendor.to_ascii_lowercase();
    let any = |needle: &str| {
        [&vendor, &product, &bios_vendor, &board_vendor]
            .iter()
            .any(|field| field.contains(needle))
    };

    if vendor.contains("amazon") || bios_version.contains("amazon") {
        return "Amazon EC2";
    }
    if vendor.contains("google") || product.contains("google compute engine") {
        return "Google Compute Engine";
    }
    if any("vmware") {
        return "VMware";
    }
    if any("innotek") || any("virtualbox") {
        return "VirtualBox";
    }
    if any("parallels") {
        return "Parallels";
    }
    if vendor.contains("microsoft") && product.contains("virtual machine") {
        return "Hyper-V";
    }
    if any("xen") || hints.hypervisor_type.eq_ignore_ascii_case("xen") {
        return "Xen";
    }
    // OpenStack Nova, RHEV and oVirt guests run on KVM; plain QEMU firmware is KVM only
    // when the kvm paravirtual clock is offered.
    if product.contains("kvm")
        || product.contains("openstack")
        || product.contains("rhev")
        || product.contains("ovirt")
        || vendor.contains("red hat")
    {
        return "KVM";
    }
    if any("qemu") {
        return if hints.kvm_clock { "KVM" } else { "QEMU" };
    }
    if any("bochs") {
        return "Bochs";
    }
    if hints.kvm_clock {
        return "KVM";
    }
    if hints.cpu_flag || !hints.hypervisor_type.is_empty() {
        return "Virtual";
    }
    "Physical"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_empty() {
        let check = |value: &str, expect: &str| {
            assert_eq!(not_placeholder(value), expect, "{value:?}");
        };
        for placeholder in [
            "Default string",
            "To Be Filled By O.E.M.",
            "To be filled by O.E.M.",
            "System Serial Number",
            "Not Specified",
            "NOT AVAILABLE",
            "None",
            "0",
            "0123456789",
            "123456789",
            "Chassis Serial Number",
            "INVALID",
            "XXXXXXXX",
            "xxxx",
            "0000000000",
            "   ",
            "",
        ] {
            check(placeholder, "");
        }
        check("CZ21450XYZ", "CZ21450XYZ");
        check("  7XJ2KM3 \n", "7XJ2KM3");
        check("VMware-56 4d 12 34", "VMware-56 4d 12 34");
    }

    #[test]
    fn uuids_are_lower_case_and_placeholders_dropped() {
        let check = |value: &str, expect: &str| assert_eq!(smbios_uuid(value), expect, "{value}");
        check(
            "4C4C4544-0042-3510-8052-B4C04F4D4E32",
            "4c4c4544-0042-3510-8052-b4c04f4d4e32",
        );
        check("00000000-0000-0000-0000-000000000000", "");
        check("FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF", "");
        check("03000200-0400-0500-0006-000700080009", "");
    }

    #[test]
    fn chassis_types_in_words() {
        let check = |number: &str, expect: &str| assert_eq!(chassis_type_words(number), expect);
        check("3", "Desktop");
        check("17", "Main Server Chassis");
        check("23\n", "Rack Mount Chassis");
        check("1", "Other");
        check("10", "Notebook");
        check("151", "Rack Mount Chassis"); // 23 with the lock bit set
        check("", "");
        check("ninety", "");
    }

    #[test]
    fn vmsystem_from_dmi_and_hints() {
        let check = |vendor: &str, product: &str, bios: &str, hints: HypervisorHints, expect| {
            let dmi = DmiStrings {
                sys_vendor: vendor.into(),
                product_name: product.into(),
                bios_version: bios.into(),
                ..DmiStrings::default()
            };
            assert_eq!(vmsystem(&dmi, &hints), expect, "{vendor} / {product}");
        };
        let none = HypervisorHints::default;
        check("Dell Inc.", "PowerEdge R740", "2.12.2", none(), "Physical");
        check("VMware, Inc.", "VMware7,1", "", none(), "VMware");
        check("QEMU", "Standard PC (Q35 + ICH9, 2009)", "", none(), "QEMU");
        let kvm_clock = HypervisorHints {
            kvm_clock: true,
            ..none()
        };
        check(
            "QEMU",
            "Standard PC (i440FX + PIIX, 1996)",
            "",
            kvm_clock,
            "KVM",
        );
        check("OpenStack Foundation", "OpenStack Nova", "", none(), "KVM");
        check(
            "Microsoft Corporation",
            "Virtual Machine",
            "",
            none(),
            "Hyper-V",
        );
        check("Xen", "HVM domU", "4.2.amazon", none(), "Amazon EC2");
        check("Amazon EC2", "m5.large", "1.0", none(), "Amazon EC2");
        check("Xen", "HVM domU", "4.11", none(), "Xen");
        let xen_type = HypervisorHints {
            hypervisor_type: "xen".into(),
            ..none()
        };
        check("", "", "", xen_type, "Xen");
        check("innotek GmbH", "VirtualBox", "", none(), "VirtualBox");
        check(
            "Parallels Software International Inc.",
            "Parallels Virtual Platform",
            "",
            none(),
            "Parallels",
        );
        check("Bochs", "Bochs", "", none(), "Bochs");
        check(
            "Google",
            "Google Compute Engine",
            "",
            none(),
            "Google Compute Engine",
        );
        let flag = HypervisorHints {
            cpu_flag: true,
            ..none()
        };
        check("", "", "", flag, "Virtual");
    }
}
