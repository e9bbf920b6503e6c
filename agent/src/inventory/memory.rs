//! The MEMORIES section and the memory totals: `/proc/meminfo` for totals, and the DIMMs from
//! the raw SMBIOS table (`/sys/firmware/dmi/tables/DMI`, type 17 Memory Device), parsed here
//! with every offset bounds-checked so that a truncated table costs a problem, not a panic.

use super::bios::not_placeholder;
use super::source::Source;
use estate_proto::v1::{Hardware, HostVitals, Inventory, MemoryModule};

const MEMINFO: &str = "proc/meminfo";
const DMI_TABLE: &str = "sys/firmware/dmi/tables/DMI";

pub fn collect(source: &Source, inventory: &mut Inventory, problems: &mut Vec<String>) {
    match source.read_text(MEMINFO) {
        Ok(text) => {
            let hardware = inventory.hardware.get_or_insert_with(Hardware::default);
            hardware.memory_bytes = meminfo_bytes(&text, "MemTotal").unwrap_or(0);
            hardware.swap_bytes = meminfo_bytes(&text, "SwapTotal").unwrap_or(0);
            if hardware.memory_bytes == 0 {
                problems.push(format!(
                    "no `MemTotal` in `{}`",
                    source.path(MEMINFO).display()
                ));
            }
        }
        Err(message) => problems.push(message),
    }
    match source.read_bytes(DMI_TABLE) {
        Ok(table) => {
            let (modules, error) = parse_memory_devices(&table);
            inventory.memories = modules;
            if let Some(error) = error {
                problems.push(format!("{error} in `{}`", source.path(DMI_TABLE).display()));
            }
        }
        Err(message) => problems.push(message),
    }
}

pub fn vitals(source: &Source, vitals: &mut HostVitals) {
    if let Ok(text) = source.read_text(MEMINFO) {
        vitals.memory_available_bytes = meminfo_bytes(&text, "MemAvailable").unwrap_or(0);
        vitals.swap_free_bytes = meminfo_bytes(&text, "SwapFree").unwrap_or(0);
    }
}

/// The value of `key` in `/proc/meminfo` (`MemTotal:  16318412 kB`) in bytes.
pub fn meminfo_bytes(meminfo: &str, key: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        if name.trim() != key {
            return None;
        }
        let mut words = value.split_whitespace();
        let number: u64 = words.next()?.parse().ok()?;
        let multiplier = match words.next() {
            Some("kB") => 1024,
            None => 1,
            Some(_) => return None,
        };
        number.checked_mul(multiplier)
    })
}

/// One SMBIOS structure: its formatted area and its strings (index 1 is `strings[0]`).
#[derive(Debug)]
struct Structure<'a> {
    kind: u8,
    formatted: &'a [u8],
    strings: Vec<&'a [u8]>,
}

impl Structure<'_> {
    fn byte(&self, offset: usize) -> Option<u8> {
        self.formatted.get(offset).copied()
    }

    fn word(&self, offset: usize) -> Option<u16> {
        let bytes = self.formatted.get(offset..offset + 2)?;
        Some(u16::from_le_bytes([bytes[0], bytes[1]]))
    }

    fn dword(&self, offset: usize) -> Option<u32> {
        let bytes = self.formatted.get(offset..offset + 4)?;
        Some(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    /// The string whose index is stored at `offset`; `""` for index 0 or a bad index.
    fn string(&self, offset: usize) -> String {
        let index = usize::from(self.byte(offset).unwrap_or(0));
        if index == 0 {
            return String::new();
        }
        self.strings
            .get(index - 1)
            .map(|bytes| String::from_utf8_lossy(bytes).trim().to_string())
            .unwrap_or_default()
    }
}

/// Splits an SMBIOS table into structures, stopping at the end-of-table structure (type 127).
/// Returns what was parsed before any damage, and a description of the damage.
fn smbios_structures(table: &[u8]) -> (Vec<Structure<'_>>, Option<String>) {
    let mut structures = Vec::new();
    let mut offset = 0;
    while offset < table.len() {
        let Some(header) = table.get(offset..offset + 4) else {
            return (
                structures,
                Some(format!(
                    "truncated smbios structure header at offset {offset}"
                )),
            );
        };
        let (kind, length) = (header[0], usize::from(header[1]));
        if length < 4 {
            return (
                structures,
                Some(format!(
                    "smbios structure at offset {offset} has invalid length {length}"
                )),
            );
        }
        let Some(formatted) = table.get(offset..offset + length) else {
            return (
                structures,
                Some(format!("truncated smbios structure at offset {offset}")),
            );
        };
        // The string set follows the formatted area and ends with two NULs (two NULs right
        // away when the structure has no strings).
        let strings_start = offset + length;
        let Some(end) = table
            .get(strings_start..)
            .and_then(|rest| rest.windows(2).position(|pair| pair == [0, 0]))
        else {
            return (
                structures,
                Some(format!(
                    "unterminated smbios strings at offset {strings_start}"
                )),
            );
        };
        let string_area = &table[strings_start..strings_start + end];
        let strings = if string_area.is_empty() {
            Vec::new()
        } else {
            string_area.split(|byte| *byte == 0).collect()
        };
        structures.push(Structure {
            kind,
            formatted,
            strings,
        });
        offset = strings_start + end + 2;
        if kind == 127 {
            return (structures, None);
        }
    }
    (
        structures,
        Some("truncated smbios table: no end-of-table structure".to_string()),
    )
}

/// The populated memory slots of an SMBIOS table (type 17 structures with a size), each with
/// `numslots` = the number of memory device structures (populated or not).
pub fn parse_memory_devices(table: &[u8]) -> (Vec<MemoryModule>, Option<String>) {
    let (structures, error) = smbios_structures(table);
    let devices: Vec<&Structure<'_>> = structures.iter().filter(|s| s.kind == 17).collect();
    let slots = u32::try_from(devices.len()).unwrap_or(u32::MAX);
    let mut modules: Vec<MemoryModule> = devices
        .iter()
        .filter_map(|device| {
            let capacity_bytes = device_size_bytes(device)?;
            let speed = match device.word(0x15) {
                Some(0xffff) => device.dword(0x54).unwrap_or(0),
                Some(speed) => u32::from(speed),
                None => 0,
            };
            Some(MemoryModule {
                caption: device.string(0x10),
                description: form_factor(device.byte(0x0e).unwrap_or(0)).to_string(),
                capacity_bytes,
                manufacturer: not_placeholder(&device.string(0x17)),
                model: not_placeholder(&device.string(0x1a)),
                serialnumber: not_placeholder(&device.string(0x18)),
                speed_mts: speed,
                r#type: memory_type(device.byte(0x12).unwrap_or(0)).to_string(),
                numslots: slots,
            })
        })
        .collect();
    modules.sort_by(|a, b| a.caption.cmp(&b.caption));
    (modules, error)
}

/// The module size in bytes; `None` for an empty slot (0), an unknown size (0xFFFF) or a
/// structure too short to hold the size.
fn device_size_bytes(device: &Structure<'_>) -> Option<u64> {
    const MIB: u64 = 1024 * 1024;
    match device.word(0x0c)? {
        0 | 0xffff => None,
        0x7fff => {
            let extended_mib = device.dword(0x1c)? & 0x7fff_ffff;
            (extended_mib > 0).then(|| u64::from(extended_mib) * MIB)
        }
        size if size & 0x8000 != 0 => Some(u64::from(size & 0x7fff) * 1024),
        size => Some(u64::from(size) * MIB),
    }
}

/// SMBIOS memory type (DSP0134 table 76).
pub fn memory_type(code: u8) -> &'static str {
    match code {
        0x01 => "Other",
        0x03 => "DRAM",
        0x04 => "EDRAM",
        0x05 => "VRAM",
        0x06 => "SRAM",
        0x07 => "RAM",
        0x08 => "ROM",
        0x09 => "Flash",
        0x0a => "EEPROM",
        0x0b => "FEPROM",
        0x0c => "EPROM",
        0x0d => "CDRAM",
        0x0e => "3DRAM",
        0x0f => "SDRAM",
        0x10 => "SGRAM",
        0x11 => "RDRAM",
        0x12 => "DDR",
        0x13 => "DDR2",
        0x14 => "DDR2 FB-DIMM",
        0x18 => "DDR3",
        0x19 => "FBD2",
        0x1a => "DDR4",
        0x1b => "LPDDR",
        0x1c => "LPDDR2",
        0x1d => "LPDDR3",
        0x1e => "LPDDR4",
        0x1f => "Logical non-volatile device",
        0x20 => "HBM",
        0x21 => "HBM2",
        0x22 => "DDR5",
        0x23 => "LPDDR5",
        0x24 => "HBM3",
        _ => "",
    }
}

/// SMBIOS memory form factor (DSP0134 table 75).
fn form_factor(code: u8) -> &'static str {
    match code {
        0x01 => "Other",
        0x03 => "SIMM",
        0x04 => "SIP",
        0x05 => "Chip",
        0x06 => "DIP",
        0x07 => "ZIP",
        0x08 => "Proprietary Card",
        0x09 => "DIMM",
        0x0a => "TSOP",
        0x0b => "Row of chips",
        0x0c => "RIMM",
        0x0d => "SODIMM",
        0x0e => "SRIMM",
        0x0f => "FB-DIMM",
        0x10 => "Die",
        _ => "",
    }
}

/// Builds SMBIOS tables for tests and fixtures, so no opaque blob has to be trusted.
#[doc(hidden)]
pub mod table_builder {
    /// A memory device as the builder writes it.
    #[derive(Debug, Clone)]
    pub struct Dimm<'a> {
        pub locator: &'a str,
        pub bank: &'a str,
        /// The raw 16-bit size field (MB, bit 15 = KB, 0x7FFF = see `extended_mib`).
        pub size: u16,
        pub extended_mib: u32,
        pub memory_type: u8,
        pub speed: u16,
        pub manufacturer: &'a str,
        pub serial: &'a str,
        pub part: &'a str,
    }

    /// One structure: type, formatted area after the 4-byte header, strings.
    pub fn structure(kind: u8, handle: u16, body: &[u8], strings: &[&str]) -> Vec<u8> {
        let mut bytes = vec![kind, (4 + body.len()) as u8];
        bytes.extend_from_slice(&handle.to_le_bytes());
        bytes.extend_from_slice(body);
        if strings.is_empty() {
            bytes.extend_from_slice(&[0, 0]);
        } else {
            for string in strings {
                bytes.extend_from_slice(string.as_bytes());
                bytes.push(0);
            }
            bytes.push(0);
        }
        bytes
    }

    /// A type 17 structure of SMBIOS 2.8 layout (0x28 bytes).
    pub fn memory_device<'a>(handle: u16, dimm: &Dimm<'a>) -> Vec<u8> {
        let mut body = vec![0u8; 0x28 - 4];
        let mut put = |offset: usize, bytes: &[u8]| {
            body[offset - 4..offset - 4 + bytes.len()].copy_from_slice(bytes);
        };
        put(0x04, &0x1000u16.to_le_bytes()); // physical memory array handle
        put(0x06, &0xfffeu16.to_le_bytes()); // no error information
        put(0x08, &72u16.to_le_bytes()); // total width (ECC)
        put(0x0a, &64u16.to_le_bytes()); // data width
        put(0x0c, &dimm.size.to_le_bytes());
        put(0x0e, &[0x09]); // DIMM
        // SMBIOS has no empty strings: an absent one is string index 0.
        let mut strings = Vec::new();
        let mut index_of = |text: &'a str| -> u8 {
            if text.is_empty() {
                return 0;
            }
            strings.push(text);
            strings.len() as u8
        };
        let locators = [index_of(dimm.locator), index_of(dimm.bank)];
        let memory_type = dimm.memory_type;
        let labels = [
            index_of(dimm.manufacturer),
            index_of(dimm.serial),
            0, // asset tag
            index_of(dimm.part),
        ];
        put(0x10, &locators);
        put(0x12, &[memory_type]);
        put(0x15, &dimm.speed.to_le_bytes());
        put(0x17, &labels);
        put(0x1c, &dimm.extended_mib.to_le_bytes());
        put(0x20, &dimm.speed.to_le_bytes()); // configured speed
        structure(17, handle, &body, &strings)
    }

    /// A whole table: a BIOS structure, the given memory devices, and the end marker.
    pub fn table(dimms: &[Dimm<'_>]) -> Vec<u8> {
        let mut table = structure(
            0,
            0,
            &[1, 2, 0, 0xf0, 3, 0xff],
            &["Vendor", "1.0", "01/01/2024"],
        );
        for (index, dimm) in dimms.iter().enumerate() {
            table.extend(memory_device(0x1100 + index as u16, dimm));
        }
        table.extend(structure(127, 0xfeff, &[], &[]));
        table
    }
}

#[cfg(test)]
mod tests {
    use super::table_builder::{self, Dimm, table};
    use super::*;

    fn dimm(locator: &str, size: u16) -> Dimm<'_> {
        Dimm {
            locator,
            bank: "P0_Node0_Channel0_Dimm0",
            size,
            extended_mib: 0,
            memory_type: 0x1a,
            speed: 2666,
            manufacturer: "Samsung",
            serial: "35A1B2C3",
            part: "M393A2K43CB2-CTD    ",
        }
    }

    #[test]
    fn meminfo_values_in_bytes() {
        let text = "MemTotal:       16318412 kB\nMemFree:  100 kB\nSwapTotal:             0 kB\nHugePages_Total:       0\n";
        assert_eq!(meminfo_bytes(text, "MemTotal"), Some(16_318_412 * 1024));
        assert_eq!(meminfo_bytes(text, "SwapTotal"), Some(0));
        assert_eq!(meminfo_bytes(text, "HugePages_Total"), Some(0));
        assert_eq!(meminfo_bytes(text, "MemAvailable"), None);
    }

    #[test]
    fn memory_devices_sizes_types_and_empty_slots() {
        let mut big = dimm("DIMM_B1", 0x7fff);
        big.extended_mib = 64 * 1024;
        big.memory_type = 0x22;
        let mut small = dimm("DIMM_C1", 0x8000 | 512);
        small.memory_type = 0x18;
        small.serial = "Not Specified";
        let (modules, error) = parse_memory_devices(&table(&[
            dimm("DIMM_A1", 16384),
            dimm("DIMM_A2", 0),
            big,
            small,
        ]));
        assert_eq!(error, None);
        let summary: Vec<(&str, u64, &str, u32)> = modules
            .iter()
            .map(|m| {
                (
                    m.caption.as_str(),
                    m.capacity_bytes,
                    m.r#type.as_str(),
                    m.numslots,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("DIMM_A1", 16 << 30, "DDR4", 4),
                ("DIMM_B1", 64 << 30, "DDR5", 4),
                ("DIMM_C1", 512 << 10, "DDR3", 4),
            ]
        );
        assert_eq!(modules[0].model, "M393A2K43CB2-CTD");
        assert_eq!(modules[0].serialnumber, "35A1B2C3");
        assert_eq!(modules[0].manufacturer, "Samsung");
        assert_eq!(modules[0].speed_mts, 2666);
        assert_eq!(modules[0].description, "DIMM");
        assert_eq!(modules[2].serialnumber, "");
    }

    #[test]
    fn every_truncation_gives_an_error_never_a_panic() {
        let whole = table(&[dimm("DIMM_A1", 8192), dimm("DIMM_A2", 8192)]);
        for length in 0..whole.len() {
            let (modules, error) = parse_memory_devices(&whole[..length]);
            assert!(modules.len() <= 2);
            if length > 0 {
                assert!(error.is_some(), "truncated at {length} but no error");
            }
        }
        let (modules, error) = parse_memory_devices(&whole);
        assert_eq!((modules.len(), error), (2, None));
    }

    #[test]
    fn garbage_tables_give_an_error() {
        let (_, error) = parse_memory_devices(&[17, 2, 0, 0, 0, 0]);
        assert_eq!(
            error.as_deref(),
            Some("smbios structure at offset 0 has invalid length 2")
        );
        // A string index past the end of the string set reads as empty.
        let mut device = table_builder::memory_device(1, &dimm("DIMM_A1", 8192));
        device[0x17] = 42;
        device.extend(table_builder::structure(127, 2, &[], &[]));
        let (modules, _) = parse_memory_devices(&device);
        assert_eq!(modules[0].manufacturer, "");
        // Pseudo-random bytes: whatever comes out, nothing panics.
        let mut state: u32 = 0x1234_5678;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                state as u8
            })
            .collect();
        for start in 0..64 {
            let _ = parse_memory_devices(&noise[start..]);
        }
    }
}
