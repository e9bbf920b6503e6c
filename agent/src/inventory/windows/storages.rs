//! STORAGES from `Win32_DiskDrive`: physical (or virtual) disks.

use super::Snapshot;
use super::values::Props;
use crate::inventory::bios::not_placeholder;
use crate::inventory::storages::manufacturer_from_model;
use estate_proto::v1::{Inventory, Storage};

pub fn collect(snapshot: &Snapshot, inventory: &mut Inventory, problems: &mut Vec<String>) {
    let mut disks: Vec<(u64, Storage)> = snapshot
        .rows_or_problem("Win32_DiskDrive", problems)
        .iter()
        .map(|row| {
            let disk = Props::new("Win32_DiskDrive", row);
            let model = disk
                .text("Model")
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            let pnp = disk.text("PNPDeviceID").to_ascii_uppercase();
            let storage = Storage {
                // `\\.\PHYSICALDRIVE0` → `PHYSICALDRIVE0`, the name `diskpart` users know.
                name: disk
                    .text("DeviceID")
                    .trim_start_matches(r"\\.\")
                    .to_string(),
                manufacturer: manufacturer(&disk.text("Manufacturer"), &model, &pnp),
                description: disk.text("MediaType"),
                r#type: if disk.text("MediaType").starts_with("Removable") {
                    "removable"
                } else {
                    "disk"
                }
                .to_string(),
                interface: interface(&pnp, &disk.text("InterfaceType")).to_string(),
                disksize_bytes: disk.unsigned("Size", problems).unwrap_or(0),
                // NVMe serials come as `0025_3881_1140_5E2F.` with a trailing dot.
                serialnumber: not_placeholder(disk.text("SerialNumber").trim_end_matches('.')),
                firmware: disk.text("FirmwareRevision"),
                // Win32_DiskDrive does not say; MSFT_PhysicalDisk would, but needs Windows 8+.
                rotational: None,
                model,
            };
            let index = disk.unsigned("Index", problems).unwrap_or(u64::MAX);
            (index, storage)
        })
        .collect();
    disks.sort_by(|a, b| (a.0, &a.1.name).cmp(&(b.0, &b.1.name)));
    inventory.storages = disks.into_iter().map(|(_, storage)| storage).collect();
}

/// The disk's maker: WMI's `Manufacturer` is `(Standard disk drives)` for nearly every disk,
/// so the model string and the PnP vendor (`VEN_MSFT`, `VEN_VMWARE`) say more.
fn manufacturer(wmi_manufacturer: &str, model: &str, pnp: &str) -> String {
    let from_model = manufacturer_from_model(model.trim_start_matches("NVMe "));
    if !from_model.is_empty() {
        return from_model.to_string();
    }
    let vendor = pnp
        .split(['\\', '&'])
        .find_map(|part| part.strip_prefix("VEN_"))
        .unwrap_or_default();
    let known = match vendor {
        "MSFT" => "Microsoft",
        "VMWARE" | "VMWARE_" => "VMware",
        "QEMU" => "QEMU",
        "RED_HAT" => "Red Hat",
        "VBOX" => "VirtualBox",
        _ => "",
    };
    if !known.is_empty() {
        return known.to_string();
    }
    if wmi_manufacturer.starts_with('(') {
        String::new()
    } else {
        not_placeholder(wmi_manufacturer)
    }
}

/// The bus, in the words Linux uses, from the PnP device id (which knows NVMe and USB) and
/// then `InterfaceType` (which calls NVMe and SAS disks `SCSI`).
pub fn interface(pnp: &str, interface_type: &str) -> &'static str {
    if pnp.contains("NVME") {
        return "NVMe";
    }
    if pnp.starts_with("USBSTOR") || pnp.starts_with("UASPSTOR") {
        return "USB";
    }
    if pnp.contains("VEN_RED_HAT") || pnp.contains("VIRTIO") {
        return "virtio";
    }
    if pnp.starts_with("IDE\\") {
        return "SATA";
    }
    match interface_type.to_ascii_uppercase().as_str() {
        "SCSI" => "SCSI",
        "IDE" => "IDE",
        "USB" => "USB",
        "1394" => "IEEE 1394",
        _ => "",
    }
}
