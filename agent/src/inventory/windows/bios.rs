//! BIOS and HARDWARE from `Win32_BIOS`, `Win32_ComputerSystem`, `Win32_ComputerSystemProduct`,
//! `Win32_BaseBoard` and `Win32_SystemEnclosure`: the same SMBIOS strings Linux reads from
//! `/sys/class/dmi/id`, so they go through the same placeholder filter and hypervisor rules.

use super::Snapshot;
use super::values::Props;
use crate::inventory::bios::{DmiStrings, HypervisorHints, bios_from_dmi, chassis_type_words};
use estate_proto::v1::{Hardware, Inventory};

pub fn collect(snapshot: &Snapshot, inventory: &mut Inventory, problems: &mut Vec<String>) {
    let mut dmi = DmiStrings::default();
    // Not `HypervisorPresent`: it is also true on physical machines running Hyper-V or
    // virtualization-based security (most Windows 11 laptops). The SMBIOS strings decide.
    let hints = HypervisorHints::default();
    let hardware = inventory.hardware.get_or_insert_with(Hardware::default);

    if let Some(row) = snapshot.single("Win32_BIOS", problems) {
        let bios = Props::new("Win32_BIOS", row);
        dmi.bios_vendor = bios.text("Manufacturer");
        dmi.bios_version = bios.text("SMBIOSBIOSVersion");
        dmi.product_serial = bios.text("SerialNumber");
        // Linux gives the SMBIOS form, MM/DD/YYYY; WMI a CIM datetime of the same day.
        if let Some(unix) = bios.datetime("ReleaseDate", problems) {
            let (year, month, day) = crate::calendar::civil_from_days(unix.div_euclid(86_400));
            dmi.bios_date = format!("{month:02}/{day:02}/{year:04}");
        }
    }
    if let Some(row) = snapshot.single("Win32_ComputerSystem", problems) {
        let system = Props::new("Win32_ComputerSystem", row);
        dmi.sys_vendor = system.text("Manufacturer");
        dmi.product_name = system.text("Model");
        dmi.product_sku = system.text("SystemSKUNumber");
        hardware.memory_bytes = system
            .unsigned("TotalPhysicalMemory", problems)
            .unwrap_or(0);
        hardware.sockets = system
            .unsigned32("NumberOfProcessors", problems)
            .unwrap_or(0);
    }
    if let Some(row) = snapshot.single("Win32_ComputerSystemProduct", problems) {
        let product = Props::new("Win32_ComputerSystemProduct", row);
        dmi.product_uuid = product.text("UUID");
        if crate::inventory::bios::is_placeholder(&dmi.product_serial) {
            dmi.product_serial = product.text("IdentifyingNumber");
        }
    }
    if let Some(row) = snapshot.single("Win32_BaseBoard", problems) {
        let board = Props::new("Win32_BaseBoard", row);
        dmi.board_vendor = board.text("Manufacturer");
        dmi.board_name = board.text("Product");
        dmi.board_serial = board.text("SerialNumber");
    }
    if let Some(row) = snapshot.single("Win32_SystemEnclosure", problems) {
        let enclosure = Props::new("Win32_SystemEnclosure", row);
        dmi.chassis_asset_tag = enclosure.text("SMBIOSAssetTag");
        dmi.chassis_type = enclosure
            .list("ChassisTypes", problems)
            .into_iter()
            .next()
            .unwrap_or_default();
        if crate::inventory::bios::is_placeholder(&dmi.product_serial) {
            dmi.product_serial = enclosure.text("SerialNumber");
        }
    }

    hardware.chassis_type = chassis_type_words(&dmi.chassis_type).to_string();
    hardware.vmsystem = crate::inventory::bios::vmsystem(&dmi, &hints).to_string();
    inventory.bios = Some(bios_from_dmi(&dmi));
}
