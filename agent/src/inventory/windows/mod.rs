//! The Windows inventory: WMI and the registry, in the same GLPI vocabulary as Linux.
//!
//! Reading and parsing are apart, as on Linux. The reading layer ([`read`], Windows only)
//! runs the [`QUERIES`] and dumps the registry keys into a [`Snapshot`]: WMI rows exactly as
//! WMI returns them (`uint64` as strings, CIM datetimes, arrays) and registry values as JSON.
//! Each area below is a pure function from the snapshot to its part of the inventory, so
//! recorded snapshots under `agent/tests/fixtures/windows/` drive the tests on any platform.
//! A query that failed or timed out is a `Problem` of the areas that needed it, never a crash.

mod bios;
pub mod bounded;
mod cpus;
mod drives;
mod memory;
mod networks;
mod operatingsystem;
#[cfg(windows)]
pub mod read;
mod softwares;
mod storages;
mod users;
pub mod values;

use super::{Area, Fingerprints};
use estate_proto::v1::Inventory;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use values::Row;

/// The WMI namespace of almost every class.
pub const CIMV2: &str = r"ROOT\CIMV2";
/// Where BitLocker publishes `Win32_EncryptableVolume` (administrators only).
pub const BITLOCKER_NAMESPACE: &str = r"ROOT\CIMV2\Security\MicrosoftVolumeEncryption";

/// One WMI query of the inventory. Only the properties the areas use are selected: a
/// `SELECT *` on some classes costs seconds.
#[derive(Debug, Clone, Copy)]
pub struct WmiQuery {
    pub namespace: &'static str,
    pub class: &'static str,
    pub wql: &'static str,
}

const fn cimv2(class: &'static str, wql: &'static str) -> WmiQuery {
    WmiQuery {
        namespace: CIMV2,
        class,
        wql,
    }
}

/// Every WMI query the inventory runs, each with its own timeout (see [`read`]).
pub const QUERIES: &[WmiQuery] = &[
    cimv2(
        "Win32_BIOS",
        "SELECT Manufacturer, SMBIOSBIOSVersion, ReleaseDate, SerialNumber FROM Win32_BIOS",
    ),
    cimv2(
        "Win32_ComputerSystem",
        "SELECT Name, DNSHostName, Domain, DomainRole, PartOfDomain, Workgroup, Manufacturer, \
         Model, SystemSKUNumber, TotalPhysicalMemory, NumberOfProcessors \
         FROM Win32_ComputerSystem",
    ),
    cimv2(
        "Win32_ComputerSystemProduct",
        "SELECT UUID, IdentifyingNumber FROM Win32_ComputerSystemProduct",
    ),
    cimv2(
        "Win32_BaseBoard",
        "SELECT Manufacturer, Product, SerialNumber FROM Win32_BaseBoard",
    ),
    cimv2(
        "Win32_SystemEnclosure",
        "SELECT ChassisTypes, SMBIOSAssetTag, SerialNumber FROM Win32_SystemEnclosure",
    ),
    cimv2(
        "Win32_Processor",
        "SELECT DeviceID, Name, Manufacturer, Caption, NumberOfCores, NumberOfLogicalProcessors, \
         MaxClockSpeed, Architecture FROM Win32_Processor",
    ),
    cimv2(
        "Win32_PhysicalMemory",
        "SELECT DeviceLocator, Capacity, Manufacturer, PartNumber, SerialNumber, Speed, \
         ConfiguredClockSpeed, SMBIOSMemoryType, FormFactor FROM Win32_PhysicalMemory",
    ),
    cimv2(
        "Win32_PhysicalMemoryArray",
        "SELECT MemoryDevices FROM Win32_PhysicalMemoryArray",
    ),
    cimv2(
        "Win32_DiskDrive",
        "SELECT DeviceID, Index, Model, Manufacturer, InterfaceType, MediaType, Size, \
         SerialNumber, FirmwareRevision, PNPDeviceID FROM Win32_DiskDrive",
    ),
    cimv2(
        "Win32_LogicalDisk",
        "SELECT DeviceID, DriveType, FileSystem, Size, VolumeName, VolumeSerialNumber, \
         ProviderName FROM Win32_LogicalDisk",
    ),
    WmiQuery {
        namespace: BITLOCKER_NAMESPACE,
        class: "Win32_EncryptableVolume",
        wql: "SELECT DriveLetter, ProtectionStatus, ConversionStatus, EncryptionMethod \
              FROM Win32_EncryptableVolume",
    },
    cimv2(
        "Win32_NetworkAdapterConfiguration",
        "SELECT Index, Description, MACAddress, IPAddress, IPSubnet, DefaultIPGateway, \
         DNSServerSearchOrder, DHCPEnabled, DHCPServer, MTU, ServiceName \
         FROM Win32_NetworkAdapterConfiguration WHERE IPEnabled = TRUE",
    ),
    cimv2(
        "Win32_NetworkAdapter",
        "SELECT Index, Name, NetConnectionID, NetConnectionStatus, Speed, PhysicalAdapter, \
         AdapterTypeID FROM Win32_NetworkAdapter",
    ),
    cimv2(
        "Win32_OperatingSystem",
        "SELECT Caption, Version, BuildNumber, OSArchitecture, InstallDate, \
         SizeStoredInPagingFiles FROM Win32_OperatingSystem",
    ),
    cimv2(
        "Win32_QuickFixEngineering",
        "SELECT HotFixID, Description, InstalledOn FROM Win32_QuickFixEngineering",
    ),
    // Without `LocalAccount = TRUE` a domain controller enumerates the whole domain.
    cimv2(
        "Win32_UserAccount",
        "SELECT Name, FullName, SID FROM Win32_UserAccount WHERE LocalAccount = TRUE",
    ),
];

/// What one read gave: the value, or why there is none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Reading<T> {
    Read(T),
    Failed { error: String },
}

impl<T> Reading<T> {
    pub fn failed(error: impl Into<String>) -> Reading<T> {
        Reading::Failed {
            error: error.into(),
        }
    }
}

/// One subkey of an Uninstall key and its values (`DisplayName`, `DisplayVersion`, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryKey {
    /// The subkey's name: a product code `{...}` or a name.
    pub key: String,
    pub values: Row,
}

/// The registry keys the inventory reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryDump {
    /// `HKLM\SOFTWARE\Microsoft\Cryptography` `MachineGuid`.
    pub machine_guid: Reading<String>,
    /// `HKLM\SOFTWARE\Microsoft\Windows NT\CurrentVersion` (`DisplayVersion`, `UBR`, ...).
    pub current_version: Reading<Row>,
    /// `HKLM\SOFTWARE\Microsoft\Windows\CurrentVersion\Uninstall` in the 64-bit view.
    pub uninstall_64: Reading<Vec<RegistryKey>>,
    /// The same key in the 32-bit view (`WOW6432Node`).
    pub uninstall_32: Reading<Vec<RegistryKey>>,
}

impl Default for RegistryDump {
    fn default() -> Self {
        let not_read = || "not read";
        RegistryDump {
            machine_guid: Reading::failed(not_read()),
            current_version: Reading::failed(not_read()),
            uninstall_64: Reading::failed(not_read()),
            uninstall_32: Reading::failed(not_read()),
        }
    }
}

/// Everything the Windows areas read, as read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Rows per WMI class name, or why the query gave none.
    pub wmi: BTreeMap<String, Reading<Vec<Row>>>,
    pub registry: RegistryDump,
}

impl Snapshot {
    /// The rows of `class`, or a problem saying why there are none.
    pub fn rows(&self, class: &str) -> Result<&[Row], String> {
        match self.wmi.get(class) {
            Some(Reading::Read(rows)) => Ok(rows),
            Some(Reading::Failed { error }) => Err(format!("WMI `{class}`: {error}")),
            None => Err(format!("WMI `{class}` was not queried")),
        }
    }

    /// The rows of `class`, pushing a problem and yielding none when they are missing.
    pub fn rows_or_problem(&self, class: &str, problems: &mut Vec<String>) -> &[Row] {
        self.rows(class).unwrap_or_else(|message| {
            problems.push(message);
            &[]
        })
    }

    /// The first row of a single-instance class (`Win32_OperatingSystem`).
    pub fn single(&self, class: &str, problems: &mut Vec<String>) -> Option<&Row> {
        let rows = self.rows_or_problem(class, problems);
        if rows.is_empty() && self.rows(class).is_ok() {
            problems.push(format!("WMI `{class}` returned no instance"));
        }
        rows.first()
    }

    /// Loads a snapshot recorded as files: `wmi/<Class>.json` (the rows, or
    /// `{"error": "..."}`) and `registry.json` (a [`RegistryDump`]). A class without a file
    /// counts as not queried.
    pub fn load(directory: &Path) -> Result<Snapshot, String> {
        let read = |path: &Path| -> Result<String, String> {
            std::fs::read_to_string(path).map_err(|error| super::source::read_error(path, &error))
        };
        let mut snapshot = Snapshot::default();
        for query in QUERIES {
            let path = directory.join("wmi").join(format!("{}.json", query.class));
            if !path.exists() {
                continue;
            }
            let reading = serde_json::from_str(&read(&path)?)
                .map_err(|error| format!("`{}` is not WMI rows: {error}", path.display()))?;
            snapshot.wmi.insert(query.class.to_string(), reading);
        }
        let path = directory.join("registry.json");
        snapshot.registry = serde_json::from_str(&read(&path)?)
            .map_err(|error| format!("`{}` is not a registry dump: {error}", path.display()))?;
        Ok(snapshot)
    }
}

/// Every Windows area, in one place: the same list as on Linux, filled from the snapshot.
const AREAS: &[Area<Snapshot>] = every_area!();

/// Builds the inventory from a snapshot. Never fails: what is missing or malformed becomes a
/// problem of its area.
pub fn inventory_from_snapshot(snapshot: &Snapshot) -> Inventory {
    super::collect_areas(AREAS, snapshot)
}

/// The host fingerprints of a Windows inventory: `MachineGuid` (lower case) as the machine id.
pub fn fingerprints(machine_guid: &Reading<String>, inventory: &Inventory) -> Fingerprints {
    let bios = inventory.bios.clone().unwrap_or_default();
    Fingerprints {
        hostname: inventory
            .operatingsystem
            .as_ref()
            .map(|os| os.hostname.clone())
            .unwrap_or_default(),
        machine_id: match machine_guid {
            Reading::Read(guid) => guid.trim().to_ascii_lowercase(),
            Reading::Failed { .. } => String::new(),
        },
        smbios_uuid: bios.uuid,
        serial_number: bios.ssn,
        primary_mac: super::fingerprints::primary_mac(inventory),
    }
}
