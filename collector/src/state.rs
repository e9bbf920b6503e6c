//! The in-memory view of every host: what `/metrics` renders and what liveness is computed
//! from, so a scrape never touches the database.

use crate::store::HostRecord;
use std::collections::HashMap;
use std::sync::RwLock;

/// All known hosts, by agent id.
#[derive(Debug, Default)]
pub struct HostStates {
    hosts: RwLock<HashMap<String, HostRecord>>,
}

impl HostStates {
    pub fn from_records(records: Vec<HostRecord>) -> Self {
        let hosts = records
            .into_iter()
            .map(|record| (record.id.clone(), record))
            .collect();
        HostStates {
            hosts: RwLock::new(hosts),
        }
    }

    /// Replaces a host's state with what the store just committed.
    pub fn update(&self, record: HostRecord) {
        let mut hosts = self.hosts.write().unwrap_or_else(|p| p.into_inner());
        hosts.insert(record.id.clone(), record);
    }

    /// Runs `read` over all hosts under one read lock.
    pub fn with_hosts<T>(&self, read: impl FnOnce(&HashMap<String, HostRecord>) -> T) -> T {
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
