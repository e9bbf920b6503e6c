//! Builds the `ReportRequest` the agent sends: identity, sequence, clock, inventory (in full or
//! only its hash), vitals and check results. Domain → wire conversion lives here, at the edge.

use crate::inventory::{self, Fingerprints};
use estate_proto::v1::{CheckResult, HostIdentity, HostVitals, Inventory, ReportRequest};
use std::path::Path;
use std::time::SystemTime;

/// One collection of the inventory, with what is derived from it.
#[derive(Debug, Clone)]
pub struct CollectedInventory {
    pub inventory: Inventory,
    /// `sha256:<hex>`, as sent in every report.
    pub hash: String,
    pub fingerprints: Fingerprints,
}

impl CollectedInventory {
    /// Reads the inventory under `root`. Blocking (it reads many files): call it from
    /// `spawn_blocking` in async code. Never fails: unreadable areas are problems inside.
    pub fn collect(root: &Path) -> CollectedInventory {
        let inventory = inventory::collect(root);
        let hash = inventory::hash(&inventory);
        let fingerprints = inventory::fingerprints(root, &inventory);
        CollectedInventory {
            inventory,
            hash,
            fingerprints,
        }
    }
}

/// Whether a report carries the whole inventory or only its hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InventoryPart {
    Full,
    HashOnly,
}

/// Assembles one report. `agent_time` is the agent's clock when the report was built.
/// The check part of a report: results gathered since the last report, and the names of every
/// configured check (so the collector can forget checks removed from the config).
#[derive(Debug, Clone, Default)]
pub struct ReportChecks {
    pub results: Vec<CheckResult>,
    pub configured: Vec<String>,
}

pub fn build_report(
    identity: HostIdentity,
    sequence: u64,
    agent_time: SystemTime,
    inventory: &CollectedInventory,
    part: InventoryPart,
    vitals: HostVitals,
    checks: ReportChecks,
) -> ReportRequest {
    ReportRequest {
        identity: Some(identity),
        agent_version: crate::VERSION.to_owned(),
        sequence,
        agent_time_unix_ms: crate::checks::unix_ms(agent_time),
        inventory_hash: inventory.hash.clone(),
        inventory: match part {
            InventoryPart::Full => Some(inventory.inventory.clone()),
            InventoryPart::HashOnly => None,
        },
        vitals: Some(vitals),
        checks: checks.results,
        // Filled in by the spool (`Spool::push`), which knows how many reports it dropped.
        dropped_reports: 0,
        check_names: checks.configured,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn collected() -> CollectedInventory {
        let inventory = Inventory::default();
        CollectedInventory {
            hash: inventory::hash(&inventory),
            inventory,
            fingerprints: Fingerprints::default(),
        }
    }

    #[test]
    fn a_full_report_carries_the_inventory_and_its_hash() {
        let time = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let identity = HostIdentity {
            agent_id: "id".into(),
            ..Default::default()
        };
        let inventory = collected();
        let report = build_report(
            identity.clone(),
            7,
            time,
            &inventory,
            InventoryPart::Full,
            HostVitals::default(),
            ReportChecks {
                results: vec![CheckResult::default()],
                configured: vec!["dc".to_owned()],
            },
        );
        assert_eq!(report.identity, Some(identity));
        assert_eq!(report.sequence, 7);
        assert_eq!(report.agent_time_unix_ms, 1_700_000_000_123);
        assert_eq!(report.agent_version, crate::VERSION);
        assert_eq!(report.inventory_hash, inventory.hash);
        assert!(report.inventory_hash.starts_with("sha256:"));
        assert!(report.inventory.is_some());
        assert!(report.vitals.is_some());
        assert_eq!(report.checks.len(), 1);
    }

    #[test]
    fn a_heartbeat_carries_only_the_hash() {
        let inventory = collected();
        let report = build_report(
            HostIdentity::default(),
            1,
            SystemTime::now(),
            &inventory,
            InventoryPart::HashOnly,
            HostVitals::default(),
            ReportChecks::default(),
        );
        assert_eq!(report.inventory, None);
        assert_eq!(report.inventory_hash, inventory.hash);
    }
}
