//! The in-memory view of every host: what `/metrics` renders and what liveness is computed
//! from, so a scrape never touches the database.

use crate::store::{CheckState, HostRecord};
use std::collections::HashMap;
use std::sync::RwLock;

/// One host: its record and its latest check results.
#[derive(Debug, Clone, Default)]
pub struct HostEntry {
    pub record: HostRecord,
    pub checks: Vec<CheckState>,
}

/// All known hosts, by agent id.
#[derive(Debug, Default)]
pub struct HostStates {
    hosts: RwLock<HashMap<String, HostEntry>>,
}

impl HostStates {
    /// Builds the state from what the store holds at start-up.
    pub fn load(records: Vec<HostRecord>, checks: Vec<CheckState>) -> Self {
        let mut hosts: HashMap<String, HostEntry> = records
            .into_iter()
            .map(|record| {
                let entry = HostEntry {
                    record,
                    checks: Vec::new(),
                };
                (entry.record.id.clone(), entry)
            })
            .collect();
        for check in checks {
            if let Some(entry) = hosts.get_mut(&check.host_id) {
                entry.checks.push(check);
            }
        }
        for entry in hosts.values_mut() {
            entry
                .checks
                .sort_by(|a, b| (&a.check, &a.target).cmp(&(&b.check, &b.target)));
        }
        HostStates {
            hosts: RwLock::new(hosts),
        }
    }

    pub fn from_records(records: Vec<HostRecord>) -> Self {
        Self::load(records, Vec::new())
    }

    /// Replaces a host's state with what the store just committed; `checks` is `None` when the
    /// report left the host's check results as they were.
    pub fn update(&self, record: HostRecord, checks: Option<Vec<CheckState>>) {
        let mut hosts = self.hosts.write().unwrap_or_else(|p| p.into_inner());
        let entry = hosts.entry(record.id.clone()).or_default();
        entry.record = record;
        if let Some(checks) = checks {
            entry.checks = checks;
        }
    }

    /// Runs `read` over all hosts under one read lock.
    pub fn with_hosts<T>(&self, read: impl FnOnce(&HashMap<String, HostEntry>) -> T) -> T {
        let hosts = self.hosts.read().unwrap_or_else(|p| p.into_inner());
        read(&hosts)
    }

    pub fn len(&self) -> usize {
        self.with_hosts(HashMap::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
