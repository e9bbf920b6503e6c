//! The in-memory view of every host: what `/metrics` renders and what liveness is computed
//! from, so a scrape never touches the database.
//!
//! When several collectors share one database, each renders only the hosts it owns
//! ([`Ownership`]); the others' entries are kept up to date by the ownership refresh.

use crate::metrics::{SeriesCache, same_series};
use crate::store::{CheckState, CollectorView, HostRecord};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// One host: its record and its latest check results.
#[derive(Debug, Clone, Default)]
pub struct HostEntry {
    pub record: HostRecord,
    pub checks: Vec<CheckState>,
    /// Not rendered before this instant: the host has just moved here from another live
    /// collector, which stops rendering it at its next ownership refresh.
    pub hold_until_ms: i64,
    /// Another collector stored a newer report than this record: reload it before rendering.
    pub outdated: bool,
    /// The host's `/metrics` lines as last rendered; every change to `record` or `checks`
    /// below invalidates it, or marks its values old when the lines stay the same.
    pub series: SeriesCache,
}

/// Which hosts this collector renders on `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ownership {
    /// `None` when the database is not shared: every host is rendered here.
    pub collector_id: Option<String>,
    /// Collectors alive at the last refresh, sorted; the first adopts orphaned hosts.
    pub live_collectors: Vec<String>,
    /// How long a host moving here from a live collector is held back.
    pub hand_over_ms: i64,
}

impl Ownership {
    /// The rule of ARCHITECTURE.md ("Several collectors, one database"): a host is rendered by
    /// the collector that stored its last report; if that collector is not alive, by the first
    /// live collector in id order.
    pub fn renders(&self, entry: &HostEntry, now_ms: i64) -> bool {
        let Some(me) = &self.collector_id else {
            return true;
        };
        !entry.outdated && now_ms >= entry.hold_until_ms && self.owns(me, &entry.record)
    }

    /// The owner rule alone, without the hand-over hold.
    fn owns(&self, me: &str, record: &HostRecord) -> bool {
        let owner = &record.reported_to;
        if owner == me {
            return true;
        }
        !self.live_collectors.contains(owner)
            && self.live_collectors.first().map(String::as_str) == Some(me)
    }
}

/// All known hosts, by agent id.
#[derive(Debug, Default)]
pub struct HostStates {
    hosts: RwLock<HashMap<String, HostEntry>>,
    ownership: RwLock<Arc<Ownership>>,
}

impl HostStates {
    /// Builds the state from what the store holds at start-up.
    pub fn load(records: Vec<HostRecord>, checks: Vec<CheckState>) -> Self {
        let mut hosts: HashMap<String, HostEntry> = records
            .into_iter()
            .map(|record| {
                let entry = HostEntry {
                    record,
                    ..Default::default()
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
            ownership: RwLock::default(),
        }
    }

    pub fn from_records(records: Vec<HostRecord>) -> Self {
        Self::load(records, Vec::new())
    }

    /// Replaces a host's state with what the store just committed; `checks` is `None` when the
    /// report left the host's check results as they were.
    pub fn update(&self, record: HostRecord, checks: Option<Vec<CheckState>>) {
        let ownership = self.ownership();
        let mut hosts = self.hosts.write().unwrap_or_else(|p| p.into_inner());
        let entry = hosts.entry(record.id.clone()).or_default();
        let previous_owner = &entry.record.reported_to;
        if !previous_owner.is_empty()
            && *previous_owner != record.reported_to
            && ownership.live_collectors.contains(previous_owner)
        {
            // Taken over from a live collector: it still renders the host until its next
            // refresh, so wait that long rather than show the host twice.
            entry.hold_until_ms = record.last_seen_ms + ownership.hand_over_ms;
        }
        let same_lines = !entry.outdated
            && same_series(&entry.record, &entry.checks, &record, checks.as_deref());
        entry.record = record;
        entry.outdated = false;
        if let Some(checks) = checks {
            entry.checks = checks;
        }
        if same_lines {
            // A heartbeat: the next render writes the new values into the kept lines.
            entry.series.values_changed();
        } else {
            entry.series.invalidate();
        }
    }

    /// Drops a host deleted from the store, unless a report stored after the deletion (its
    /// agent still runs) has already put it back: `last_seen_ms` is the deleted record's.
    pub fn forget(&self, id: &str, last_seen_ms: i64) {
        let mut hosts = self.hosts.write().unwrap_or_else(|p| p.into_inner());
        if hosts
            .get(id)
            .is_some_and(|entry| entry.record.last_seen_ms <= last_seen_ms)
        {
            hosts.remove(id);
        }
    }

    /// `(id, last_seen_ms)` of every host not heard from since `before_ms`.
    pub fn silent_hosts(&self, before_ms: i64) -> Vec<(String, i64)> {
        self.with_hosts(|hosts| {
            hosts
                .values()
                .filter(|entry| entry.record.last_seen_ms < before_ms)
                .map(|entry| (entry.record.id.clone(), entry.record.last_seen_ms))
                .collect()
        })
    }

    /// The current ownership rule.
    pub fn ownership(&self) -> Arc<Ownership> {
        Arc::clone(&self.ownership.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Makes this collector one of several sharing a database, named `collector_id`.
    pub fn share(&self, collector_id: &str, hand_over_ms: i64) {
        *self.ownership.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(Ownership {
            collector_id: Some(collector_id.to_owned()),
            live_collectors: vec![collector_id.to_owned()],
            hand_over_ms,
        });
    }

    /// Applies an ownership refresh: the live collectors, and where hosts reported since the
    /// previous refresh. Returns the ids of hosts this collector must now render but whose
    /// record here is older than the database's (to load with `Store::load_hosts_by_id`).
    pub fn apply_view(&self, view: CollectorView) -> Vec<String> {
        let ownership = {
            let mut slot = self.ownership.write().unwrap_or_else(|p| p.into_inner());
            let mut next = Ownership::clone(&slot);
            next.live_collectors = view.live_collectors;
            *slot = Arc::new(next);
            Arc::clone(&slot)
        };
        let mut hosts = self.hosts.write().unwrap_or_else(|p| p.into_inner());
        for owner in view.reported {
            let entry = hosts.entry(owner.id.clone()).or_insert_with(|| HostEntry {
                record: HostRecord {
                    id: owner.id.clone(),
                    ..Default::default()
                },
                outdated: true,
                ..Default::default()
            });
            // Our own commits update the entry directly; only a newer report elsewhere counts.
            if owner.last_seen_ms > entry.record.last_seen_ms
                || (owner.last_seen_ms == entry.record.last_seen_ms
                    && owner.reported_to != entry.record.reported_to)
            {
                entry.record.last_seen_ms = owner.last_seen_ms;
                entry.record.reported_to = owner.reported_to;
                entry.outdated = true;
                entry.series.invalidate();
            }
        }
        hosts
            .values()
            .filter(|entry| {
                entry.outdated
                    && ownership
                        .collector_id
                        .as_deref()
                        .is_some_and(|me| ownership.owns(me, &entry.record))
            })
            .map(|entry| entry.record.id.clone())
            .collect()
    }

    /// Replaces hosts' records and checks with what the database holds (hosts adopted from
    /// another collector).
    pub fn reload(&self, records: Vec<HostRecord>, checks: Vec<CheckState>) {
        let mut by_host: HashMap<String, Vec<CheckState>> = HashMap::new();
        for check in checks {
            by_host
                .entry(check.host_id.clone())
                .or_default()
                .push(check);
        }
        let mut hosts = self.hosts.write().unwrap_or_else(|p| p.into_inner());
        for record in records {
            let entry = hosts.entry(record.id.clone()).or_default();
            if record.last_seen_ms < entry.record.last_seen_ms && !entry.outdated {
                continue;
            }
            let mut checks = by_host.remove(&record.id).unwrap_or_default();
            checks.sort_by(|a, b| (&a.check, &a.target).cmp(&(&b.check, &b.target)));
            entry.record = record;
            entry.checks = checks;
            entry.outdated = false;
            entry.series.invalidate();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::HostOwner;

    fn record(id: &str, reported_to: &str, last_seen_ms: i64) -> HostRecord {
        HostRecord {
            id: id.into(),
            hostname: id.into(),
            reported_to: reported_to.into(),
            last_seen_ms,
            ..Default::default()
        }
    }

    /// The ids `me` renders at `now_ms`, sorted.
    fn rendered(states: &HostStates, now_ms: i64) -> Vec<String> {
        let ownership = states.ownership();
        let mut ids: Vec<String> = states.with_hosts(|hosts| {
            hosts
                .values()
                .filter(|entry| ownership.renders(entry, now_ms))
                .map(|entry| entry.record.id.clone())
                .collect()
        });
        ids.sort();
        ids
    }

    fn view(live: &[&str], reported: &[(&str, &str, i64)]) -> CollectorView {
        CollectorView {
            live_collectors: live.iter().map(|c| (*c).to_owned()).collect(),
            reported: reported
                .iter()
                .map(|(id, to, at)| HostOwner {
                    id: (*id).into(),
                    reported_to: (*to).into(),
                    last_seen_ms: *at,
                })
                .collect(),
        }
    }

    #[test]
    fn a_forgotten_host_is_gone_unless_a_newer_report_brought_it_back() {
        let states = HostStates::from_records(vec![record("a", "", 1_000), record("b", "", 1_000)]);
        states.forget("a", 1_000);
        states.update(record("b", "", 2_000), None);
        states.forget("b", 1_000);
        states.forget("unknown", 1_000);
        assert_eq!(rendered(&states, 3_000), vec!["b"]);
        assert_eq!(states.silent_hosts(2_000), vec![]);
        assert_eq!(states.silent_hosts(2_001), vec![("b".to_owned(), 2_000)]);
    }

    #[test]
    fn an_unshared_store_renders_every_host() {
        let states = HostStates::from_records(vec![record("a", "", 1), record("b", "x", 1)]);
        assert_eq!(rendered(&states, 10), vec!["a", "b"]);
    }

    #[test]
    fn each_host_is_rendered_by_its_collector_and_orphans_by_the_first_live_one() {
        let hosts = || {
            vec![
                record("a", "c1", 1_000),
                record("b", "c2", 1_000),
                record("c", "c3", 1_000),
            ]
        };
        let c1 = HostStates::from_records(hosts());
        c1.share("c1", 5_000);
        let c2 = HostStates::from_records(hosts());
        c2.share("c2", 5_000);
        // c3 is dead: its host `c` is adopted by c1, the first live collector.
        assert!(c1.apply_view(view(&["c1", "c2"], &[])).is_empty());
        assert!(c2.apply_view(view(&["c1", "c2"], &[])).is_empty());
        assert_eq!(rendered(&c1, 2_000), vec!["a", "c"]);
        assert_eq!(rendered(&c2, 2_000), vec!["b"]);
    }

    #[test]
    fn a_host_moving_between_live_collectors_is_handed_over_without_overlap() {
        let old = HostStates::from_records(vec![record("a", "c1", 1_000)]);
        old.share("c1", 5_000);
        old.apply_view(view(&["c1", "c2"], &[]));
        let new = HostStates::from_records(vec![record("a", "c1", 1_000)]);
        new.share("c2", 5_000);
        new.apply_view(view(&["c1", "c2"], &[]));

        // The agent fails over to c2 at 10 000; c2 commits and holds the host back.
        new.update(record("a", "c2", 10_000), None);
        assert!(rendered(&new, 10_001).is_empty());
        assert_eq!(rendered(&old, 10_001), vec!["a"]);
        // c1's next refresh (within one interval) sees the move and drops the host.
        let reload = old.apply_view(view(&["c1", "c2"], &[("a", "c2", 10_000)]));
        assert!(reload.is_empty(), "c1 renders nothing new: {reload:?}");
        assert!(rendered(&old, 14_000).is_empty());
        assert_eq!(rendered(&new, 15_000), vec!["a"]);
    }

    #[test]
    fn a_host_of_a_dead_collector_is_reloaded_by_its_adopter() {
        let states = HostStates::from_records(vec![]);
        states.share("c1", 5_000);
        // `z` first reported to c9, which has since died; c1 never had its record.
        let reload = states.apply_view(view(&["c1"], &[("z", "c9", 3_000)]));
        assert_eq!(reload, vec!["z"]);
        assert!(
            rendered(&states, 4_000).is_empty(),
            "not before its record is loaded"
        );
        states.reload(vec![record("z", "c9", 3_000)], vec![]);
        assert_eq!(rendered(&states, 4_000), vec!["z"]);
    }
}
