//! MEMORIES from `Win32_PhysicalMemory` (populated slots) and `Win32_PhysicalMemoryArray`
//! (how many slots there are); total memory and swap are in HARDWARE (see `bios` and
//! `operatingsystem`).

use super::Snapshot;
use super::values::Props;
use crate::inventory::bios::not_placeholder;
use estate_proto::v1::{Inventory, MemoryModule};

pub fn collect(snapshot: &Snapshot, inventory: &mut Inventory, problems: &mut Vec<String>) {
    let slots: u32 = snapshot
        .rows_or_problem("Win32_PhysicalMemoryArray", problems)
        .iter()
        .filter_map(|row| {
            Props::new("Win32_PhysicalMemoryArray", row).unsigned32("MemoryDevices", problems)
        })
        .sum();
    let mut modules: Vec<MemoryModule> = snapshot
        .rows_or_problem("Win32_PhysicalMemory", problems)
        .iter()
        .map(|row| {
            let module = Props::new("Win32_PhysicalMemory", row);
            // `Speed` is the module's rated speed; `ConfiguredClockSpeed` what it runs at.
            let speed = module
                .unsigned32("ConfiguredClockSpeed", problems)
                .filter(|speed| *speed > 0)
                .or_else(|| module.unsigned32("Speed", problems))
                .unwrap_or(0);
            MemoryModule {
                caption: module.text("DeviceLocator"),
                description: module
                    .unsigned32("FormFactor", problems)
                    .map(form_factor)
                    .unwrap_or_default()
                    .to_string(),
                capacity_bytes: module.unsigned("Capacity", problems).unwrap_or(0),
                manufacturer: not_placeholder(&module.text("Manufacturer")),
                model: not_placeholder(&module.text("PartNumber")),
                serialnumber: not_placeholder(&module.text("SerialNumber")),
                speed_mts: speed,
                r#type: module
                    .unsigned32("SMBIOSMemoryType", problems)
                    .and_then(|code| u8::try_from(code).ok())
                    .map(crate::inventory::memory::memory_type)
                    .unwrap_or_default()
                    .to_string(),
                numslots: slots,
            }
        })
        .collect();
    modules.sort_by(|a, b| a.caption.cmp(&b.caption));
    inventory.memories = modules;
}

/// `Win32_PhysicalMemory.FormFactor` (a CIM code, not the SMBIOS one) in the words Linux uses.
pub fn form_factor(code: u32) -> &'static str {
    match code {
        1 => "Other",
        7 => "SIMM",
        8 => "DIMM",
        11 => "RIMM",
        12 => "SODIMM",
        13 => "SRIMM",
        14 => "SMD",
        15 => "SSMP",
        16 => "QFP",
        17 => "TQFP",
        18 => "SOIC",
        19 => "LCC",
        20 => "PLCC",
        21 => "BGA",
        22 => "FPBGA",
        23 => "LGA",
        _ => "",
    }
}
