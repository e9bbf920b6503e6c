//! The STORAGES section: the disks the kernel knows, from `/sys/block`. Loop, RAM, zram,
//! device-mapper and nbd devices are not disks and are skipped; `md` software RAID arrays are
//! kept with type "raid" (an administrator asking "which hosts use software RAID" wants them).

use super::bios::not_placeholder;
use super::source::Source;
use estate_proto::v1::{Inventory, Storage};

const BLOCK_DIR: &str = "sys/block";

pub fn collect(source: &Source, inventory: &mut Inventory, problems: &mut Vec<String>) {
    let names = match source.list_dir(BLOCK_DIR) {
        Ok(names) => names,
        Err(message) => {
            problems.push(message);
            return;
        }
    };
    inventory.storages = names
        .iter()
        .filter(|name| is_disk_name(name))
        .map(|name| read_storage(source, name))
        .collect();
}

/// Kernel block device names that are not disks.
pub fn is_disk_name(name: &str) -> bool {
    const SKIPPED: &[&str] = &["loop", "ram", "zram", "dm-", "nbd", "fd"];
    !SKIPPED.iter().any(|prefix| name.starts_with(prefix))
}

/// What `/sys/block/<name>` says about one disk, as text.
#[derive(Debug, Default, Clone)]
pub struct BlockAttributes {
    pub name: String,
    pub sectors: String,
    pub vendor: String,
    pub model: String,
    pub serial: String,
    /// VPD page 0x80 (unit serial number) of SCSI/SATA disks, raw.
    pub vpd_serial: Vec<u8>,
    pub firmware: String,
    pub rotational: String,
    pub removable: String,
    /// The resolved device path (or the symlink texts): tells USB and SAS apart.
    pub device_path: String,
    pub raid_level: String,
}

fn read_storage(source: &Source, name: &str) -> Storage {
    let dir = format!("{BLOCK_DIR}/{name}");
    let read = |file: &str| {
        source
            .read_trimmed(&format!("{dir}/{file}"))
            .unwrap_or_default()
    };
    // Only the part inside the tree counts: a fixture's own location must not look like USB.
    let root = std::fs::canonicalize(source.root()).unwrap_or_default();
    let device_path = std::fs::canonicalize(source.path(&format!("{dir}/device")))
        .map(|path| {
            let inside = path.strip_prefix(&root).unwrap_or(&path);
            format!("/{}", inside.to_string_lossy())
        })
        .unwrap_or_else(|_| {
            // In a fixture tree the links may point outside the tree: their text still says
            // whether the disk hangs off a USB or SAS host.
            [dir.clone(), format!("{dir}/device")]
                .iter()
                .filter_map(|link| source.link_target(link))
                .collect::<Vec<_>>()
                .join(" ")
        });
    let attributes = BlockAttributes {
        name: name.to_string(),
        sectors: read("size"),
        vendor: read("device/vendor"),
        model: read("device/model"),
        serial: [read("device/serial"), read("serial")]
            .into_iter()
            .find(|serial| !serial.is_empty())
            .unwrap_or_default(),
        vpd_serial: source
            .read_bytes(&format!("{dir}/device/vpd_pg80"))
            .unwrap_or_default(),
        firmware: [read("device/firmware_rev"), read("device/rev")]
            .into_iter()
            .find(|firmware| !firmware.is_empty())
            .unwrap_or_default(),
        rotational: read("queue/rotational"),
        removable: read("removable"),
        device_path,
        raid_level: read("md/level"),
    };
    storage_from_attributes(&attributes)
}

pub fn storage_from_attributes(attributes: &BlockAttributes) -> Storage {
    let name = attributes.name.as_str();
    let kind = if name.starts_with("sr") {
        "cdrom"
    } else if name.starts_with("md") {
        "raid"
    } else if attributes.removable == "1" {
        "removable"
    } else {
        "disk"
    };
    let vendor = attributes.vendor.trim();
    let model = attributes
        .model
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    // libata reports every SATA disk's vendor as "ATA": the real maker is in the model.
    // virtio and some NVMe attributes give a PCI vendor id (`0x1af4`), not a name.
    let manufacturer =
        if vendor.is_empty() || vendor.eq_ignore_ascii_case("ATA") || vendor.starts_with("0x") {
            manufacturer_from_model(&model).to_string()
        } else {
            vendor.to_string()
        };
    let serial = if attributes.serial.is_empty() {
        vpd_unit_serial(&attributes.vpd_serial)
    } else {
        attributes.serial.clone()
    };
    let sectors: u64 = attributes.sectors.parse().unwrap_or(0);
    Storage {
        name: name.to_string(),
        manufacturer: not_placeholder(&manufacturer),
        model,
        description: attributes.raid_level.clone(),
        r#type: kind.to_string(),
        interface: interface(name, vendor, &attributes.device_path).to_string(),
        disksize_bytes: sectors.saturating_mul(512),
        serialnumber: not_placeholder(&serial),
        firmware: attributes.firmware.trim().to_string(),
        rotational: match attributes.rotational.as_str() {
            "0" => Some(false),
            "1" => Some(true),
            _ => None,
        },
    }
}

/// The bus a disk hangs off, from its kernel name, the SCSI vendor and the device path.
pub fn interface(name: &str, vendor: &str, device_path: &str) -> &'static str {
    if name.starts_with("md") {
        return "";
    }
    if device_path.contains("/usb") {
        return "USB";
    }
    if name.starts_with("nvme") {
        return "NVMe";
    }
    if name.starts_with("vd") {
        return "virtio";
    }
    if name.starts_with("xvd") {
        return "Xen";
    }
    if name.starts_with("hd") {
        return "IDE";
    }
    if name.starts_with("mmcblk") {
        return "MMC";
    }
    if device_path.contains("/sas_") || device_path.contains("/end_device-") {
        return "SAS";
    }
    if vendor.trim().eq_ignore_ascii_case("ATA") {
        return "SATA";
    }
    if name.starts_with("sd") || name.starts_with("sr") {
        return "SCSI";
    }
    ""
}

/// The serial number in a SCSI VPD page 0x80: a 4-byte header, then ASCII.
pub fn vpd_unit_serial(page: &[u8]) -> String {
    let Some(length) = page.get(3) else {
        return String::new();
    };
    let end = (4 + usize::from(*length)).min(page.len());
    let serial = String::from_utf8_lossy(page.get(4..end).unwrap_or_default())
        .trim_matches(|c: char| c.is_whitespace() || c == '\0')
        .to_string();
    // A page that is not what it should be must not put binary noise in the inventory.
    if serial.chars().all(|c| c.is_ascii_graphic() || c == ' ') {
        serial
    } else {
        String::new()
    }
}

/// The maker of a disk whose model string starts with it ("WDC WD40EFRX" → "Western Digital").
pub fn manufacturer_from_model(model: &str) -> &'static str {
    let upper = model.to_ascii_uppercase();
    let starts = |prefix: &str| upper.starts_with(prefix);
    if starts("WDC") || starts("WD ") || starts("WESTERN DIGITAL") {
        "Western Digital"
    } else if starts("SAMSUNG") {
        "Samsung"
    } else if starts("INTEL") {
        "Intel"
    } else if starts("MICRON") || starts("MTFD") {
        "Micron"
    } else if starts("CRUCIAL") || (starts("CT") && upper.contains("SSD")) {
        "Crucial"
    } else if starts("KINGSTON") {
        "Kingston"
    } else if starts("TOSHIBA") || starts("KIOXIA") {
        "Toshiba"
    } else if starts("HGST") || starts("HITACHI") {
        "HGST"
    } else if starts("SEAGATE")
        || (starts("ST") && upper[2..].starts_with(|c: char| c.is_ascii_digit()))
    {
        "Seagate"
    } else if starts("SANDISK") {
        "SanDisk"
    } else if starts("SK HYNIX") || starts("HFS") {
        "SK hynix"
    } else if starts("QEMU") {
        "QEMU"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skipped_block_devices() {
        for name in ["loop0", "ram1", "zram0", "dm-0", "nbd3", "fd0"] {
            assert!(!is_disk_name(name), "{name}");
        }
        for name in ["sda", "nvme0n1", "vda", "md0", "sr0", "xvda", "mmcblk0"] {
            assert!(is_disk_name(name), "{name}");
        }
    }

    #[test]
    fn interfaces() {
        let check = |name, vendor, path, expect| {
            assert_eq!(interface(name, vendor, path), expect, "{name} {path}");
        };
        check(
            "nvme0n1",
            "",
            "/sys/devices/pci0000:00/0000:00:1d.0/0000:3b:00.0/nvme/nvme0",
            "NVMe",
        );
        check(
            "vda",
            "0x1af4",
            "/sys/devices/pci0000:00/0000:00:04.0/virtio1",
            "virtio",
        );
        check(
            "sda",
            "ATA",
            "/sys/devices/pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0",
            "SATA",
        );
        check(
            "sdb",
            "Kingston",
            "/sys/devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6",
            "USB",
        );
        check(
            "sdc",
            "SEAGATE",
            "/sys/devices/pci0000:00/0000:18:00.0/host0/port-0:0/end_device-0:0/target0:0:0",
            "SAS",
        );
        check(
            "sdd",
            "VMware",
            "/sys/devices/pci0000:00/0000:03:00.0/host2/target2:0:0/2:0:0:0",
            "SCSI",
        );
        check("md0", "", "", "");
    }

    #[test]
    fn manufacturers_from_models() {
        let check = |model, expect| assert_eq!(manufacturer_from_model(model), expect, "{model}");
        check("WDC WD40EFRX-68N32N0", "Western Digital");
        check("ST4000NM0035-1V4107", "Seagate");
        check("Samsung SSD 860 EVO 500GB", "Samsung");
        check("INTEL SSDSC2KB480G8", "Intel");
        check("Micron_5300_MTFDDAK480TDS", "Micron");
        check("STANDARD", "");
        check("ST", "");
        check("", "");
    }

    #[test]
    fn vpd_serials() {
        assert_eq!(vpd_unit_serial(b"\x00\x80\x00\x0a  S3Z9NB0K"), "S3Z9NB0K");
        assert_eq!(vpd_unit_serial(b"\x00\x80\x00\xffABC"), "ABC");
        assert_eq!(vpd_unit_serial(b"\x00"), "");
        assert_eq!(vpd_unit_serial(b"\x00\x80\x00\x04\x01\xffAB"), "");
    }

    #[test]
    fn sata_disk_from_attributes() {
        let storage = storage_from_attributes(&BlockAttributes {
            name: "sda".into(),
            sectors: "937703088".into(),
            vendor: "ATA     ".into(),
            model: "Samsung SSD 860   ".into(),
            vpd_serial: b"\x00\x80\x00\x0fS3Z9NB0K123456A".to_vec(),
            firmware: "RVT04B6Q".into(),
            rotational: "0".into(),
            removable: "0".into(),
            ..BlockAttributes::default()
        });
        assert_eq!(storage.manufacturer, "Samsung");
        assert_eq!(storage.model, "Samsung SSD 860");
        assert_eq!(storage.interface, "SATA");
        assert_eq!(storage.disksize_bytes, 937_703_088 * 512);
        assert_eq!(storage.serialnumber, "S3Z9NB0K123456A");
        assert_eq!(storage.rotational, Some(false));
        assert_eq!(storage.r#type, "disk");
    }
}
