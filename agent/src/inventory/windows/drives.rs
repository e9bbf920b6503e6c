//! DRIVES from `Win32_LogicalDisk` (lettered volumes, local and mapped), with their BitLocker
//! state from `Win32_EncryptableVolume`, which only administrators may read.

use super::values::Props;
use super::{BITLOCKER_NAMESPACE, Reading, Snapshot};
use estate_proto::v1::{Drive, Inventory};
use std::collections::BTreeMap;

/// `Win32_LogicalDisk.DriveType` values that hold data: removable, local, network.
/// CD-ROMs (5) and RAM disks (6) are left out, as Linux leaves out iso9660 and tmpfs.
const DATA_DRIVE_TYPES: &[u64] = &[2, 3, 4];

/// BitLocker facts of one volume, keyed by drive letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encryption {
    pub status: &'static str,
    pub algorithm: &'static str,
}

pub fn collect(snapshot: &Snapshot, inventory: &mut Inventory, problems: &mut Vec<String>) {
    let encryption = bitlocker(snapshot, problems);
    let mut drives: Vec<Drive> = snapshot
        .rows_or_problem("Win32_LogicalDisk", problems)
        .iter()
        .filter_map(|row| {
            let disk = Props::new("Win32_LogicalDisk", row);
            let drive_type = disk.unsigned("DriveType", problems)?;
            if !DATA_DRIVE_TYPES.contains(&drive_type) {
                return None;
            }
            let letter = disk.text("DeviceID");
            let provider = disk.text("ProviderName");
            let mut drive = Drive {
                volumn: if provider.is_empty() {
                    letter.clone()
                } else {
                    provider
                },
                filesystem: disk.text("FileSystem"),
                total_bytes: disk.unsigned("Size", problems).unwrap_or(0),
                label: disk.text("VolumeName"),
                serial: disk.text("VolumeSerialNumber"),
                ..Drive::default()
            };
            if let Some(state) = encryption
                .as_ref()
                .and_then(|volumes| volumes.get(&letter.to_ascii_uppercase()))
            {
                drive.encrypt_name = "BitLocker".to_string();
                drive.encrypt_status = state.status.to_string();
                drive.encrypt_algo = state.algorithm.to_string();
            }
            drive.mount = letter;
            Some(drive)
        })
        .collect();
    drives.sort_by(|a, b| a.mount.cmp(&b.mount));
    inventory.drives = drives;
}

/// The BitLocker state per drive letter (`C:`), or `None` with a problem when it cannot be read.
fn bitlocker(
    snapshot: &Snapshot,
    problems: &mut Vec<String>,
) -> Option<BTreeMap<String, Encryption>> {
    let class = "Win32_EncryptableVolume";
    let rows = match snapshot.wmi.get(class) {
        Some(Reading::Read(rows)) => rows,
        Some(Reading::Failed { error }) => {
            problems.push(bitlocker_problem(error));
            return None;
        }
        None => {
            problems.push(format!(
                "BitLocker state not read: WMI `{class}` was not queried"
            ));
            return None;
        }
    };
    let mut volumes = BTreeMap::new();
    for row in rows {
        let volume = Props::new(class, row);
        let letter = volume.text("DriveLetter").to_ascii_uppercase();
        if letter.is_empty() {
            continue; // system and recovery partitions without a letter
        }
        let protection = volume.unsigned("ProtectionStatus", problems);
        let conversion = volume.unsigned("ConversionStatus", problems);
        let method = volume.unsigned("EncryptionMethod", problems);
        let status = match (protection, conversion) {
            // Fully decrypted: not encrypted, whatever the protection says.
            (_, Some(0)) => "No",
            (Some(1), Some(1)) => "Yes",
            // Encrypted with protection suspended, or converting either way.
            (Some(_), Some(1..=5)) => "Partially",
            (Some(1), None) => "Yes",
            (Some(0), None) => "No",
            _ => "",
        };
        volumes.insert(
            letter,
            Encryption {
                status,
                algorithm: method.map(encryption_method).unwrap_or_default(),
            },
        );
    }
    Some(volumes)
}

/// Why BitLocker could not be read, with what to do when it is a matter of rights.
pub fn bitlocker_problem(error: &str) -> String {
    let lower = error.to_ascii_lowercase();
    let hint = if lower.contains("0x80041003") || lower.contains("access") {
        "; reading BitLocker needs administrator rights (run the agent as LocalSystem)"
    } else if lower.contains("0x8004100e") || lower.contains("invalid namespace") {
        "; BitLocker is not available on this edition of Windows"
    } else {
        ""
    };
    format!(
        "BitLocker state unreadable from WMI `{BITLOCKER_NAMESPACE}:Win32_EncryptableVolume`: {error}{hint}"
    )
}

/// `Win32_EncryptableVolume.EncryptionMethod` in words.
pub fn encryption_method(code: u64) -> &'static str {
    match code {
        1 => "AES 128 with Diffuser",
        2 => "AES 256 with Diffuser",
        3 => "AES 128",
        4 => "AES 256",
        5 => "Hardware Encryption",
        6 => "XTS-AES 128",
        7 => "XTS-AES 256",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn snapshot_with(volumes: serde_json::Value) -> Snapshot {
        let mut snapshot = Snapshot::default();
        let disks = json!([
            {"DeviceID": "C:", "DriveType": 3, "FileSystem": "NTFS", "Size": "100"},
            {"DeviceID": "D:", "DriveType": 3, "FileSystem": "NTFS", "Size": "200"},
            {"DeviceID": "E:", "DriveType": 3, "FileSystem": "NTFS", "Size": "300"},
            {"DeviceID": "F:", "DriveType": 5},
        ]);
        snapshot.wmi.insert(
            "Win32_LogicalDisk".into(),
            Reading::Read(serde_json::from_value(disks).unwrap()),
        );
        snapshot.wmi.insert(
            "Win32_EncryptableVolume".into(),
            serde_json::from_value(volumes).unwrap(),
        );
        snapshot
    }

    #[test]
    fn bitlocker_states_in_glpi_words() {
        let snapshot = snapshot_with(json!([
            {"DriveLetter": "c:", "ProtectionStatus": 1, "ConversionStatus": 1, "EncryptionMethod": 6},
            // Encrypted, protection suspended (for a BIOS update).
            {"DriveLetter": "D:", "ProtectionStatus": 0, "ConversionStatus": 1, "EncryptionMethod": 3},
            {"DriveLetter": "E:", "ProtectionStatus": 0, "ConversionStatus": 0, "EncryptionMethod": 0},
        ]));
        let mut inventory = Inventory::default();
        let mut problems = Vec::new();
        collect(&snapshot, &mut inventory, &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        let states: Vec<(&str, &str, &str, &str)> = inventory
            .drives
            .iter()
            .map(|d| {
                (
                    d.mount.as_str(),
                    d.encrypt_name.as_str(),
                    d.encrypt_status.as_str(),
                    d.encrypt_algo.as_str(),
                )
            })
            .collect();
        assert_eq!(
            states,
            [
                ("C:", "BitLocker", "Yes", "XTS-AES 128"),
                ("D:", "BitLocker", "Partially", "AES 128"),
                ("E:", "BitLocker", "No", ""),
            ]
        );
    }

    #[test]
    fn unreadable_bitlocker_says_why_and_keeps_the_drives() {
        for (error, hint) in [
            ("Access denied (0x80041003)", "needs administrator rights"),
            (
                "Invalid namespace (0x8004100E)",
                "not available on this edition",
            ),
        ] {
            let snapshot = snapshot_with(json!({ "error": error }));
            let mut inventory = Inventory::default();
            let mut problems = Vec::new();
            collect(&snapshot, &mut inventory, &mut problems);
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert!(
                problems[0].contains("Win32_EncryptableVolume"),
                "{problems:?}"
            );
            assert!(
                problems[0].contains(error) && problems[0].contains(hint),
                "{problems:?}"
            );
            assert_eq!(inventory.drives.len(), 3);
            assert!(inventory.drives.iter().all(|d| d.encrypt_status.is_empty()));
        }
    }
}
