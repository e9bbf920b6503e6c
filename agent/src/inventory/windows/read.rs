//! The Windows reading layer: runs the WMI [`QUERIES`](super::QUERIES), each on its own thread
//! with its own timeout, dumps the registry keys, and reads the vitals through sysinfo.
//!
//! WMI can stall (a broken provider, a busy `winmgmt` after patch reboots). A query that does
//! not answer in [`QUERY_TIMEOUT`] is given up: its class becomes a problem naming the class
//! and the timeout, and the inventory goes on. The thread stays blocked inside COM (it cannot
//! be killed), so no new query starts while [`MAX_STALLED_QUERIES`] are still stuck (see
//! [`BoundedRunner`]): a hung WMI cannot pile up threads.

use super::bounded::BoundedRunner;
use super::values::Row;
use super::{QUERIES, Reading, RegistryDump, RegistryKey, Snapshot, WmiQuery};
use estate_proto::v1::{HostVitals, VolumeUsage};
use serde_json::Value;
use std::collections::HashMap;
use std::time::Duration;
use winreg::types::FromRegValue;
use wmi::{AuthLevel, Variant, WMIConnection};

/// How long one WMI query may take. The slowest healthy ones (`Win32_QuickFixEngineering`
/// on a server with years of updates) take a few seconds.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(20);

/// Query threads that may be alive at once; beyond that WMI is considered hung.
pub const MAX_STALLED_QUERIES: usize = 4;

/// Every WMI query of the process goes through this one runner, so the bound holds across
/// inventory runs.
static RUNNER: BoundedRunner = BoundedRunner::new(MAX_STALLED_QUERIES);

/// Reads everything the Windows inventory needs.
pub fn snapshot() -> Snapshot {
    let wmi = QUERIES
        .iter()
        .map(|query| (query.class.to_string(), run_query(*query, QUERY_TIMEOUT)))
        .collect();
    Snapshot {
        wmi,
        registry: registry(),
    }
}

/// Runs one query on a thread of its own (COM is initialised per thread by `wmi`), waiting at
/// most `timeout` for its rows.
pub fn run_query(query: WmiQuery, timeout: Duration) -> Reading<Vec<Row>> {
    match RUNNER.run(&format!("wmi {}", query.class), timeout, move || {
        query_rows(query)
    }) {
        Ok(rows) => Reading::Read(rows),
        Err(error) => Reading::failed(error),
    }
}

fn query_rows(query: WmiQuery) -> Result<Vec<Row>, String> {
    let connection = WMIConnection::with_namespace_path(query.namespace)
        .map_err(|error| format!("cannot connect to `{}`: {error}", query.namespace))?;
    if query.namespace == super::BITLOCKER_NAMESPACE {
        // BitLocker answers only over an encrypted channel.
        connection
            .set_proxy_blanket(AuthLevel::PktPrivacy)
            .map_err(|error| format!("cannot secure the connection: {error}"))?;
    }
    let rows: Vec<HashMap<String, Variant>> = connection
        .raw_query(query.wql)
        .map_err(|error| error.to_string())?;
    Ok(rows
        .into_iter()
        .map(|row| {
            row.into_iter()
                .map(|(name, value)| (name, json_value(value)))
                .collect()
        })
        .collect())
}

/// A WMI value as the snapshot records it: numbers as numbers, `uint64` (which WMI hands over
/// as text) left as text, arrays as arrays; objects are not used by the inventory.
fn json_value(value: Variant) -> Value {
    match value {
        Variant::Empty | Variant::Null => Value::Null,
        Variant::String(text) => Value::String(text),
        Variant::I1(n) => Value::from(n),
        Variant::I2(n) => Value::from(n),
        Variant::I4(n) => Value::from(n),
        Variant::I8(n) => Value::from(n),
        Variant::UI1(n) => Value::from(n),
        Variant::UI2(n) => Value::from(n),
        Variant::UI4(n) => Value::from(n),
        Variant::UI8(n) => Value::from(n),
        Variant::R4(n) => Value::from(f64::from(n)),
        Variant::R8(n) => Value::from(n),
        Variant::Bool(flag) => Value::Bool(flag),
        Variant::Array(items) => Value::Array(items.into_iter().map(json_value).collect()),
        Variant::Unknown(_) | Variant::Object(_) => Value::Null,
    }
}

const CRYPTOGRAPHY: &str = r"SOFTWARE\Microsoft\Cryptography";
const CURRENT_VERSION: &str = r"SOFTWARE\Microsoft\Windows NT\CurrentVersion";
const UNINSTALL: &str = r"SOFTWARE\Microsoft\Windows\CurrentVersion\Uninstall";

fn registry() -> RegistryDump {
    use winreg::enums::{KEY_WOW64_32KEY, KEY_WOW64_64KEY};
    RegistryDump {
        machine_guid: machine_guid(),
        current_version: match open(CURRENT_VERSION, KEY_WOW64_64KEY) {
            Ok(key) => Reading::Read(values(&key)),
            Err(error) => Reading::failed(error),
        },
        uninstall_64: uninstall(KEY_WOW64_64KEY),
        uninstall_32: uninstall(KEY_WOW64_32KEY),
    }
}

/// `MachineGuid`, the Windows counterpart of `/etc/machine-id`.
pub fn machine_guid() -> Reading<String> {
    use winreg::enums::KEY_WOW64_64KEY;
    match open(CRYPTOGRAPHY, KEY_WOW64_64KEY).and_then(|key| {
        key.get_value::<String, _>("MachineGuid")
            .map_err(|e| e.to_string())
    }) {
        Ok(guid) => Reading::Read(guid),
        Err(error) => Reading::failed(error),
    }
}

fn open(path: &str, view: u32) -> Result<winreg::RegKey, String> {
    use winreg::enums::{HKEY_LOCAL_MACHINE, KEY_READ};
    winreg::RegKey::predef(HKEY_LOCAL_MACHINE)
        .open_subkey_with_flags(path, KEY_READ | view)
        .map_err(|error| error.to_string())
}

fn uninstall(view: u32) -> Reading<Vec<RegistryKey>> {
    use winreg::enums::KEY_READ;
    let parent = match open(UNINSTALL, view) {
        Ok(parent) => parent,
        Err(error) => return Reading::failed(error),
    };
    let mut keys = Vec::new();
    for name in parent.enum_keys().filter_map(Result::ok) {
        // A key removed while we list is simply gone.
        if let Ok(key) = parent.open_subkey_with_flags(&name, KEY_READ | view) {
            keys.push(RegistryKey {
                key: name,
                values: values(&key),
            });
        }
    }
    Reading::Read(keys)
}

/// The values of a key: strings as strings, DWORD and QWORD as numbers, multi-strings as
/// arrays; binary values are not used by the inventory.
fn values(key: &winreg::RegKey) -> Row {
    use winreg::enums::RegType;
    let mut row = Row::new();
    for (name, value) in key.enum_values().filter_map(Result::ok) {
        let json = match value.vtype {
            RegType::REG_SZ | RegType::REG_EXPAND_SZ => {
                String::from_reg_value(&value).map(Value::String).ok()
            }
            RegType::REG_MULTI_SZ => <Vec<String>>::from_reg_value(&value)
                .map(|items| Value::Array(items.into_iter().map(Value::String).collect()))
                .ok(),
            RegType::REG_DWORD => u32::from_reg_value(&value).map(Value::from).ok(),
            RegType::REG_QWORD => u64::from_reg_value(&value).map(Value::from).ok(),
            _ => None,
        };
        if let Some(json) = json {
            row.insert(name, json);
        }
    }
    row
}

/// The vitals as far as sysinfo gives them on Windows (no load average there).
pub fn vitals() -> HostVitals {
    let mut vitals = HostVitals::default();
    if let Ok(mut system) = sysinfo::System::new() {
        system.refresh_memory();
        vitals.memory_available_bytes = system.available_memory();
        vitals.swap_free_bytes = system.free_swap();
    }
    vitals.boot_time_unix = sysinfo::System::boot_time()
        .ok()
        .and_then(|seconds| i64::try_from(seconds).ok())
        .unwrap_or(0);
    if let Ok(disks) = sysinfo::Disks::new_with_refreshed_list() {
        let mut volumes: Vec<VolumeUsage> = disks
            .iter()
            .map(|disk| VolumeUsage {
                // `C:\` → `C:`, as the drive's `mount` in the inventory.
                mount: disk
                    .mount_point()
                    .to_string_lossy()
                    .trim_end_matches('\\')
                    .to_string(),
                total_bytes: disk.total_space(),
                free_bytes: disk.available_space(),
            })
            .collect();
        volumes.sort_by(|a, b| a.mount.cmp(&b.mount));
        vitals.volumes = volumes;
    }
    vitals
}
