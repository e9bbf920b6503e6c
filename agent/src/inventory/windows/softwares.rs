//! SOFTWARES from the Uninstall keys of both registry views (what "Programs and Features"
//! shows), and the hotfixes from `Win32_QuickFixEngineering`.

use super::values::{Props, parse_windows_date};
use super::{Reading, RegistryKey, Snapshot};
use crate::inventory::softwares::sort_softwares;
use estate_proto::v1::{Inventory, Software};
use std::collections::BTreeSet;

const UNINSTALL_64: &str = r"HKLM\SOFTWARE\Microsoft\Windows\CurrentVersion\Uninstall";
const UNINSTALL_32: &str = r"HKLM\SOFTWARE\WOW6432Node\Microsoft\Windows\CurrentVersion\Uninstall";

pub fn collect(snapshot: &Snapshot, inventory: &mut Inventory, problems: &mut Vec<String>) {
    let mut softwares = Vec::new();
    // The 64-bit view first: an entry seen in both views (32-bit Windows, where both views
    // are one key, or an installer that registers twice) is kept once, as 64-bit.
    let mut seen: BTreeSet<(String, String, String)> = BTreeSet::new();
    for (path, arch, reading) in [
        (UNINSTALL_64, "x86_64", &snapshot.registry.uninstall_64),
        (UNINSTALL_32, "i686", &snapshot.registry.uninstall_32),
    ] {
        match reading {
            Reading::Read(keys) => {
                for software in uninstall_entries(path, arch, keys, problems) {
                    let identity = (
                        software.name.to_lowercase(),
                        software.version.clone(),
                        software.publisher.to_lowercase(),
                    );
                    if seen.insert(identity) {
                        softwares.push(software);
                    }
                }
            }
            Reading::Failed { error } => problems.push(format!("cannot read {path}: {error}")),
        }
    }
    softwares.extend(hotfixes(snapshot, problems));
    sort_softwares(&mut softwares);
    inventory.softwares = softwares;
}

/// The entries of one Uninstall key that "Programs and Features" would list: those with a
/// `DisplayName`, minus system components and updates filed under a parent product.
pub fn uninstall_entries(
    path: &str,
    arch: &str,
    keys: &[RegistryKey],
    problems: &mut Vec<String>,
) -> Vec<Software> {
    keys.iter()
        .filter_map(|key| {
            let class = format!(r"{path}\{}", key.key);
            let entry = Props::new(&class, &key.values);
            let name = entry.text("DisplayName");
            if name.is_empty()
                || entry.unsigned("SystemComponent", problems) == Some(1)
                || !entry.text("ParentKeyName").is_empty()
            {
                return None;
            }
            let installdate = match entry.text("InstallDate") {
                text if text.is_empty() => String::new(),
                text => parse_windows_date(&text).unwrap_or_else(|| {
                    problems.push(format!(
                        "`{class}.InstallDate` is not a YYYYMMDD date: {text:?}"
                    ));
                    String::new()
                }),
            };
            Some(Software {
                name,
                version: entry.text("DisplayVersion"),
                arch: arch.to_string(),
                installdate,
                publisher: entry.text("Publisher"),
                from: "registry".to_string(),
                // `EstimatedSize` is in KiB.
                filesize_bytes: entry
                    .unsigned("EstimatedSize", problems)
                    .unwrap_or(0)
                    .saturating_mul(1024),
            })
        })
        .collect()
}

/// Installed updates (`KB5034439`), as GLPI lists them: name = the KB, from = "hotfix".
fn hotfixes(snapshot: &Snapshot, problems: &mut Vec<String>) -> Vec<Software> {
    let class = "Win32_QuickFixEngineering";
    let mut seen = BTreeSet::new();
    snapshot
        .rows_or_problem(class, problems)
        .iter()
        .filter_map(|row| {
            let fix = Props::new(class, row);
            let id = fix.text("HotFixID");
            // Pre-Vista leftovers are called `File 1`: no KB, nothing to report.
            if id.is_empty() || id.starts_with("File ") || !seen.insert(id.clone()) {
                return None;
            }
            let installed_on = fix.text("InstalledOn");
            let installdate = if installed_on.is_empty() {
                String::new()
            } else {
                parse_windows_date(&installed_on).unwrap_or_else(|| {
                    problems.push(format!(
                        "`{class}.InstalledOn` of {id} is not a M/D/YYYY date: {installed_on:?}"
                    ));
                    String::new()
                })
            };
            Some(Software {
                name: id,
                version: String::new(),
                arch: String::new(),
                installdate,
                publisher: "Microsoft Corporation".to_string(),
                from: "hotfix".to_string(),
                filesize_bytes: 0,
            })
        })
        .collect()
}
