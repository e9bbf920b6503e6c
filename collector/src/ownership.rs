//! Several collectors, one database: each collector refreshes, every `ownership_refresh`, which
//! collectors are alive and where hosts last reported, so that each host's series appear on
//! exactly one collector's `/metrics` (the rule is [`crate::state::Ownership::renders`]).
//! Every [`DELETION_CHECK_REFRESHES`] refreshes it also drops the silent hosts that were
//! deleted (`DELETE /api/v1/hosts/{id}`) through another collector.

use crate::clock::now_ms;
use crate::state::HostStates;
use crate::store::{Store, StoreError};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Keeps this collector's view of host ownership fresh.
#[derive(Clone)]
pub struct OwnershipRefresher {
    pub store: Arc<dyn Store>,
    pub states: Arc<HostStates>,
    pub collector_id: String,
    pub interval: Duration,
    /// Hosts silent this long are the ones looked up for deletion by another collector.
    pub stale_after: Duration,
}

/// How many refreshes apart the deletion check runs: a minute at the default 5 s.
pub const DELETION_CHECK_REFRESHES: u32 = 12;

impl std::fmt::Debug for OwnershipRefresher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnershipRefresher")
            .field("collector_id", &self.collector_id)
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

impl OwnershipRefresher {
    /// A collector is alive while its heartbeat (written at every refresh) is this recent:
    /// three missed refreshes, plus slack for a slow query.
    fn live_window_ms(&self) -> i64 {
        3 * self.interval.as_millis() as i64 + 2_000
    }

    /// How far back each refresh looks past the previous one: a report's `last_seen_ms` is
    /// stamped at receipt, before its batch commits, and collectors' clocks differ a little.
    fn overlap_ms(&self) -> i64 {
        2 * self.interval.as_millis() as i64 + 10_000
    }

    /// One refresh: heartbeat, live collectors, hosts that reported since `since_ms`, and the
    /// records of hosts this collector must now render. Returns the instant it started.
    pub async fn refresh(&self, since_ms: i64) -> Result<i64, StoreError> {
        let started = now_ms();
        let (store, id) = (Arc::clone(&self.store), self.collector_id.clone());
        let (live_since, reported_since) = (
            started - self.live_window_ms(),
            since_ms - self.overlap_ms(),
        );
        let view =
            blocking(move || store.refresh_collectors(&id, started, live_since, reported_since))
                .await?;
        let adopted = self.states.apply_view(view);
        if !adopted.is_empty() {
            tracing::info!(
                hosts = adopted.len(),
                "rendering hosts last stored elsewhere"
            );
            let store = Arc::clone(&self.store);
            let (records, checks) = blocking(move || store.load_hosts_by_id(&adopted)).await?;
            self.states.reload(records, checks);
        }
        Ok(started)
    }

    /// Drops from memory the stale hosts that are no longer in the database: deleted through
    /// another collector, which could only drop them from its own memory. Only stale hosts
    /// are looked up: a decommissioned host is silent (that is why it is deleted), and a host
    /// that still reports is made anew by its next report anyway. Returns how many went.
    pub async fn forget_deleted(&self, now_ms: i64) -> Result<usize, StoreError> {
        let silent = self
            .states
            .silent_hosts(now_ms - self.stale_after.as_millis() as i64);
        if silent.is_empty() {
            return Ok(0);
        }
        let store = Arc::clone(&self.store);
        let ids: Vec<String> = silent.iter().map(|(id, _)| id.clone()).collect();
        let (records, _) = blocking(move || store.load_hosts_by_id(&ids)).await?;
        let existing: std::collections::HashSet<String> =
            records.into_iter().map(|record| record.id).collect();
        let mut forgotten = 0;
        for (id, last_seen_ms) in silent {
            if !existing.contains(&id) {
                self.states.forget(&id, last_seen_ms);
                forgotten += 1;
            }
        }
        if forgotten > 0 {
            tracing::info!(
                hosts = forgotten,
                "hosts deleted through another collector are no longer rendered"
            );
        }
        Ok(forgotten)
    }

    /// Refreshes every `interval` until `stop` turns true. A failed refresh keeps the previous
    /// view (logged) and is retried at the next tick.
    pub async fn run(self, mut since_ms: i64, mut stop: watch::Receiver<bool>) {
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        let mut refreshes: u32 = 0;
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = stop.wait_for(|stopping| *stopping) => return,
            }
            match self.refresh(since_ms).await {
                Ok(started) => since_ms = started,
                Err(error) => {
                    tracing::warn!(error = %error, "host ownership refresh failed; keeping the previous view")
                }
            }
            refreshes = refreshes.wrapping_add(1);
            if refreshes.is_multiple_of(DELETION_CHECK_REFRESHES)
                && let Err(error) = self.forget_deleted(now_ms()).await
            {
                tracing::warn!(error = %error, "looking up deleted hosts failed; retried later");
            }
        }
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| StoreError::new("the ownership refresh task failed", e))?
}
