//! The stored inventory document: the JSON form of `estate.v1.Inventory`, flattened into
//! searchable `(field, value)` pairs and compared with the previous one to record changes.
//!
//! Everything here is pure: the store calls it inside its write transaction.

use estate_proto::v1::{
    Bios, Cpu, Drive, Hardware, Inventory, IpAddress, LocalUser, MemoryModule, Network,
    OperatingSystem, Problem, Software, Storage,
};
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

/// Renders an inventory as the JSON document the store keeps and the API serves.
pub fn to_document(inventory: &Inventory) -> Value {
    serde_json::to_value(inventory).unwrap_or(Value::Null)
}

/// One searchable value of a host's inventory: `("bios.smanufacturer", "Dell Inc.")`.
/// Lists contribute one pair per item, under the same field name
/// (`networks.addresses.address`), so a filter matches when any item matches.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct FieldValue {
    pub field: String,
    pub value: String,
}

/// Fields that are not indexed for filtering: per-package details would multiply the index by
/// the number of packages for little use (`softwares.name` stays searchable).
const UNINDEXED_FIELDS: &[&str] = &[
    "softwares.version",
    "softwares.arch",
    "softwares.installdate",
    "softwares.publisher",
    "softwares.from",
    "softwares.filesize_bytes",
    "problems.message",
];

/// Flattens a document into searchable pairs, skipping empty values.
pub fn flatten(document: &Value) -> Vec<FieldValue> {
    let mut out = Vec::new();
    visit_leaves(document, &mut String::new(), &mut |field, value| {
        let value = match value {
            Value::String(text) if text.is_empty() => return,
            Value::String(text) => text.clone(),
            Value::Null => return,
            other => other.to_string(),
        };
        if !UNINDEXED_FIELDS.contains(&field) {
            out.push(FieldValue {
                field: field.to_owned(),
                value,
            });
        }
    });
    out.sort();
    out.dedup();
    out
}

/// Calls `visit(field, value)` for every scalar in `value`, with the field path joined by dots;
/// list items are visited under their list's path.
fn visit_leaves(value: &Value, path: &mut String, visit: &mut impl FnMut(&str, &Value)) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
                visit_leaves(child, path, visit);
                path.truncate(len);
            }
        }
        Value::Array(items) => {
            for item in items {
                visit_leaves(item, path, visit);
            }
        }
        scalar => visit(path, scalar),
    }
}

/// Every field name a filter may use, derived from the contract itself so that a field added
/// to the proto is searchable without touching this list.
pub fn known_fields() -> &'static BTreeSet<String> {
    static FIELDS: OnceLock<BTreeSet<String>> = OnceLock::new();
    FIELDS.get_or_init(|| {
        // One item in every list, and a non-default value in every field, so that each field
        // shows up once in the flattened form.
        let inventory = Inventory {
            bios: Some(Bios::default()),
            hardware: Some(Hardware::default()),
            cpus: vec![Cpu::default()],
            memories: vec![MemoryModule::default()],
            storages: vec![Storage {
                rotational: Some(false),
                ..Default::default()
            }],
            drives: vec![Drive::default()],
            networks: vec![Network {
                addresses: vec![IpAddress::default()],
                ipgateway: vec![String::new()],
                dns_servers: vec![String::new()],
                ..Default::default()
            }],
            operatingsystem: Some(OperatingSystem {
                dns_servers: vec![String::new()],
                ..Default::default()
            }),
            softwares: vec![Software::default()],
            local_users: vec![LocalUser::default()],
            problems: vec![Problem::default()],
        };
        let mut fields = BTreeSet::new();
        visit_leaves(
            &to_document(&inventory),
            &mut String::new(),
            &mut |field, _| {
                if !UNINDEXED_FIELDS.contains(&field) {
                    fields.insert(field.to_owned());
                }
            },
        );
        fields
    })
}

/// One recorded difference between two inventories of a host.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    /// Where: `bios.bversion`, `softwares[openssl:amd64].version`, `drives[/srv]`.
    pub field: String,
    pub kind: ChangeKind,
    pub old: Value,
    pub new: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    Added,
    Removed,
    Changed,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Added => "added",
            ChangeKind::Removed => "removed",
            ChangeKind::Changed => "changed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "added" => Some(ChangeKind::Added),
            "removed" => Some(ChangeKind::Removed),
            "changed" => Some(ChangeKind::Changed),
            _ => None,
        }
    }
}

/// How the items of each inventory list are matched between two inventories, so that a
/// package upgrade reads as one changed version rather than a removal and an addition.
fn item_key(section: &str, item: &Value, index: usize) -> String {
    let field = |name: &str| item.get(name).and_then(Value::as_str).unwrap_or_default();
    let key = match section {
        "memories" => field("caption").to_owned(),
        "storages" => field("name").to_owned(),
        "drives" => field("mount").to_owned(),
        "networks" => field("description").to_owned(),
        "softwares" => match field("arch") {
            "" => field("name").to_owned(),
            arch => format!("{}:{arch}", field("name")),
        },
        "local_users" => field("login").to_owned(),
        "problems" => field("area").to_owned(),
        _ => String::new(),
    };
    if key.is_empty() {
        index.to_string()
    } else {
        key
    }
}

/// Differences from `old` to `new`, in document order.
pub fn diff(old: &Value, new: &Value) -> Vec<Change> {
    let mut changes = Vec::new();
    let empty = Map::new();
    let old_map = old.as_object().unwrap_or(&empty);
    let new_map = new.as_object().unwrap_or(&empty);
    let sections: BTreeSet<&String> = old_map.keys().chain(new_map.keys()).collect();
    for section in sections {
        let before = old_map.get(section).unwrap_or(&Value::Null);
        let after = new_map.get(section).unwrap_or(&Value::Null);
        match (before, after) {
            (Value::Array(before), Value::Array(after)) => {
                diff_list(section, before, after, &mut changes);
            }
            (Value::Array(before), Value::Null) => diff_list(section, before, &[], &mut changes),
            (Value::Null, Value::Array(after)) => diff_list(section, &[], after, &mut changes),
            _ => diff_fields(section, before, after, &mut changes),
        }
    }
    changes
}

fn diff_list(section: &str, before: &[Value], after: &[Value], changes: &mut Vec<Change>) {
    let keyed = |items: &[Value]| -> BTreeMap<String, Value> {
        items
            .iter()
            .enumerate()
            .map(|(index, item)| (item_key(section, item, index), item.clone()))
            .collect()
    };
    let before = keyed(before);
    let after = keyed(after);
    for (key, old_item) in &before {
        let path = format!("{section}[{key}]");
        match after.get(key) {
            None => changes.push(Change {
                field: path,
                kind: ChangeKind::Removed,
                old: old_item.clone(),
                new: Value::Null,
            }),
            Some(new_item) => diff_fields(&path, old_item, new_item, changes),
        }
    }
    for (key, new_item) in &after {
        if !before.contains_key(key) {
            changes.push(Change {
                field: format!("{section}[{key}]"),
                kind: ChangeKind::Added,
                old: Value::Null,
                new: new_item.clone(),
            });
        }
    }
}

/// Field-by-field comparison of two objects (or of two plain values under one name).
fn diff_fields(path: &str, before: &Value, after: &Value, changes: &mut Vec<Change>) {
    match (before, after) {
        (Value::Object(before), Value::Object(after)) => {
            let names: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
            for name in names {
                let old = before.get(name).cloned().unwrap_or(Value::Null);
                let new = after.get(name).cloned().unwrap_or(Value::Null);
                if old != new {
                    changes.push(Change {
                        field: format!("{path}.{name}"),
                        kind: ChangeKind::Changed,
                        old,
                        new,
                    });
                }
            }
        }
        _ if before == after => {}
        _ => changes.push(Change {
            field: path.to_owned(),
            kind: match (before, after) {
                (Value::Null, _) => ChangeKind::Added,
                (_, Value::Null) => ChangeKind::Removed,
                _ => ChangeKind::Changed,
            },
            old: before.clone(),
            new: after.clone(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn inventory_with(packages: &[(&str, &str)], bios_version: &str) -> Value {
        let inventory = Inventory {
            bios: Some(Bios {
                bversion: bios_version.into(),
                smanufacturer: "Dell Inc.".into(),
                ..Default::default()
            }),
            softwares: packages
                .iter()
                .map(|(name, version)| Software {
                    name: (*name).into(),
                    version: (*version).into(),
                    arch: "amd64".into(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        to_document(&inventory)
    }

    #[test]
    fn an_unchanged_inventory_has_no_changes() {
        let doc = inventory_with(&[("curl", "7.88")], "2.1");
        assert!(diff(&doc, &doc).is_empty());
    }

    #[test]
    fn changes_name_the_field_and_carry_old_and_new() {
        let old = inventory_with(&[("curl", "7.88"), ("openssl", "3.0.1")], "2.1");
        let new = inventory_with(&[("openssl", "3.0.2"), ("vim", "9.0")], "2.2");
        let changes: Vec<(String, &str, Value, Value)> = diff(&old, &new)
            .into_iter()
            .map(|c| {
                let new = if c.kind == ChangeKind::Added {
                    c.new["version"].clone()
                } else {
                    c.new
                };
                let old = if c.kind == ChangeKind::Removed {
                    c.old["version"].clone()
                } else {
                    c.old
                };
                (c.field, c.kind.as_str(), old, new)
            })
            .collect();
        assert_eq!(
            changes,
            vec![
                (
                    "bios.bversion".into(),
                    "changed",
                    json!("2.1"),
                    json!("2.2")
                ),
                (
                    "softwares[curl:amd64]".into(),
                    "removed",
                    json!("7.88"),
                    Value::Null
                ),
                (
                    "softwares[openssl:amd64].version".into(),
                    "changed",
                    json!("3.0.1"),
                    json!("3.0.2")
                ),
                (
                    "softwares[vim:amd64]".into(),
                    "added",
                    Value::Null,
                    json!("9.0")
                ),
            ]
        );
    }

    #[test]
    fn flatten_indexes_nested_lists_under_one_name_and_skips_empty_values() {
        let inventory = Inventory {
            networks: vec![Network {
                description: "eth0".into(),
                addresses: vec![
                    IpAddress {
                        address: "192.0.2.10".into(),
                        prefix_length: 24,
                    },
                    IpAddress {
                        address: "2001:db8::10".into(),
                        prefix_length: 64,
                    },
                ],
                ..Default::default()
            }],
            softwares: vec![Software {
                name: "curl".into(),
                version: "7.88".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let pairs = flatten(&to_document(&inventory));
        let has = |field: &str, value: &str| {
            pairs.contains(&FieldValue {
                field: field.into(),
                value: value.into(),
            })
        };
        assert!(has("networks.addresses.address", "192.0.2.10"));
        assert!(has("networks.addresses.address", "2001:db8::10"));
        assert!(has("networks.addresses.prefix_length", "24"));
        assert!(has("networks.description", "eth0"));
        assert!(has("softwares.name", "curl"));
        assert!(!pairs.iter().any(|p| p.field == "softwares.version"));
        assert!(!pairs.iter().any(|p| p.field == "networks.macaddr"));
    }

    #[test]
    fn known_fields_come_from_the_contract() {
        let fields = known_fields();
        for field in [
            "bios.smanufacturer",
            "hardware.vmsystem",
            "operatingsystem.name",
            "operatingsystem.dns_servers",
            "networks.addresses.address",
            "drives.filesystem",
            "storages.rotational",
            "softwares.name",
        ] {
            assert!(fields.contains(field), "{field} missing from {fields:?}");
        }
        assert!(!fields.contains("softwares.version"));
    }
}
