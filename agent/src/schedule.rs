//! The agent's loop: collects the inventory (at start and on its interval), runs each check on
//! its own interval, and sends a report every heartbeat. Also [`once`], one report on demand.
//!
//! Delivery: every report is written to the disk spool ([`crate::spool`]) when it is built, and
//! sent from there in sequence order, one at a time, while the loop goes on building reports.
//! A report leaves the spool when the collector acknowledges it (or refuses it for good, which
//! counts it as dropped). Failed deliveries are retried with exponential backoff and full
//! jitter, so a fleet does not come back in lockstep; the collector's rate limit is answered
//! with a short pause, not a backoff.

use crate::checks::ScheduledCheck;
use crate::config::{AgentConfig, SpoolConfig};
use crate::identity::{AgentIdentity, SequenceCounter, error_chain};
use crate::inventory;
use crate::report::{CollectedInventory, InventoryPart, ReportChecks, build_report};
use crate::sender::{ReportSender, SendError};
use crate::spool::Spool;
use anyhow::Context;
use estate_proto::v1::{CheckResult, HostVitals, ReportRequest, ReportResponse};
use std::collections::VecDeque;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, error, info, warn};

/// Check results kept between two reports (the spool keeps them once a report is built). At
/// one result per check per minute, 10 000 is far more than a heartbeat gathers.
pub const MAX_PENDING_CHECK_RESULTS: usize = 10_000;

/// The pause before sending again when the collector's rate limit refused a report: about a
/// second (0.5 to 1.5 s), so a replay proceeds at the rate the collector allows.
pub const THROTTLED_RETRY: Duration = Duration::from_secs(1);

/// Runs the agent until `shutdown` resolves: reports at start, then every heartbeat.
///
/// Fails only on what the agent cannot run without (an unusable state directory); the
/// collector being unreachable is logged and retried, never an error.
pub async fn run(config: AgentConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let identity = AgentIdentity::load_or_create(&config.state_dir)?;
    let sequence = SequenceCounter::load(&config.state_dir)?;
    let sender = ReportSender::new(&config.collector)?;
    let spool = Spool::open(&config.state_dir, config.spool.limits, SystemTime::now())?;
    info!(
        agent_id = %identity.agent_id(),
        collector = %sender.url(),
        checks = config.checks.len(),
        spooled_reports = spool.len(),
        spool = %spool.dir().display(),
        "estate agent started"
    );

    let (results_sender, results) = mpsc::channel(64);
    let limit = Arc::new(Semaphore::new(config.schedule.max_concurrent_checks));
    let mut checks = JoinSet::new();
    for check in config.checks.iter().cloned() {
        checks.spawn(run_check_on_interval(
            check,
            Arc::clone(&limit),
            results_sender.clone(),
        ));
    }
    drop(results_sender);
    estate_service::notify::ready("running: collecting the inventory, then reporting");

    let mut agent = Agent {
        root: config.root.clone(),
        identity,
        sequence,
        sender,
        inventory: None,
        inventory_spooled: None,
        pending: VecDeque::new(),
        dropped_results: 0,
        check_names: config.check_names(),
        spool,
        backoff: Backoff::new(&config.spool),
        failed_deliveries: 0,
        identity_conflicts: 0,
    };
    // Dropping the loop at shutdown cancels a report in flight (its sequence number is already
    // persisted, so nothing is reused) and detaches an inventory collection in progress, which
    // cannot be interrupted and ends on its own.
    let outcome = tokio::select! {
        outcome = agent.main_loop(&config, results) => outcome,
        () = shutdown => Ok(()),
    };
    estate_service::notify::stopping();
    checks.shutdown().await;
    info!("estate agent stopped");
    outcome
}

/// What [`once`] produced: the report, and the collector's answer when it was sent.
#[derive(Debug, Clone)]
pub struct OnceReport {
    pub request: ReportRequest,
    pub response: Option<ReportResponse>,
}

/// Builds one full report (inventory, vitals, one run of every check) and sends it when `send`
/// is true. Without sending, nothing is written: the persisted agent id is used when it can be
/// read (else a temporary one), and no sequence number is taken.
pub async fn once(config: AgentConfig, send: bool) -> anyhow::Result<OnceReport> {
    let (mut identity, mut sequence) = if send {
        (
            AgentIdentity::load_or_create(&config.state_dir)?,
            SequenceCounter::load(&config.state_dir)?,
        )
    } else {
        (
            AgentIdentity::load_or_temporary(&config.state_dir),
            SequenceCounter::load_read_only(&config.state_dir),
        )
    };

    let check_names = config.check_names();
    let limit = Arc::new(Semaphore::new(config.schedule.max_concurrent_checks));
    let mut runs = JoinSet::new();
    for check in config.checks {
        let limit = Arc::clone(&limit);
        runs.spawn(async move { check.run(&limit).await });
    }
    let inventory = collect_inventory(config.root.clone()).await?;
    let vitals = collect_vitals(config.root.clone()).await?;
    let mut checks = Vec::new();
    while let Some(results) = runs.join_next().await {
        checks.extend(results.context("a check task failed")?);
    }
    // Reports list checks in a stable order, whatever order they finished in.
    checks.sort_by(|a, b| (&a.check, &a.target).cmp(&(&b.check, &b.target)));

    let build = |identity: &AgentIdentity, sequence: u64| {
        build_report(
            identity.host_identity(&inventory.fingerprints),
            sequence,
            SystemTime::now(),
            &inventory,
            InventoryPart::Full,
            vitals.clone(),
            ReportChecks {
                results: checks.clone(),
                configured: check_names.clone(),
            },
        )
    };
    let request = build(&identity, sequence.take_next()?);
    if !send {
        return Ok(OnceReport {
            request,
            response: None,
        });
    }

    let mut sender = ReportSender::new(&config.collector)?;
    let (request, response) = match sender.send(request.clone()).await {
        Ok(response) => (request, response),
        Err(SendError::IdentityConflict { message, .. }) => {
            warn!(%message, agent_id = %identity.agent_id(), "identity conflict, reporting as a new host");
            identity.regenerate()?;
            sequence.restart()?;
            let request = build(&identity, sequence.take_next()?);
            let response = sender.send(request.clone()).await?;
            (request, response)
        }
        Err(error) => return Err(error.into()),
    };
    Ok(OnceReport {
        request,
        response: Some(response),
    })
}

/// Runs one check forever on its interval and hands each run's results to the main loop.
async fn run_check_on_interval(
    check: ScheduledCheck,
    limit: Arc<Semaphore>,
    results: mpsc::Sender<Vec<CheckResult>>,
) {
    let mut interval = tokio::time::interval(check.interval);
    // A run that overran is followed by the next one a full interval later, not by a burst.
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let outcome = check.run(&limit).await;
        if results.send(outcome).await.is_err() {
            return; // The main loop is gone: the agent is stopping.
        }
    }
}

/// One delivery attempt: the report's sequence, the inventory hash when it carried the full
/// inventory, and the collector's answer.
#[derive(Debug)]
struct Delivered {
    sequence: u64,
    full_inventory: Option<String>,
    result: Result<ReportResponse, SendError>,
    /// Attempts that ended without an answer: the report may be stored whatever `result`.
    unanswered_attempts: u32,
    /// The sender the delivery used, with what it learnt (which collector answered, which to
    /// skip, the agent token): it replaces the agent's.
    sender: ReportSender,
}

type Delivery = Pin<Box<dyn Future<Output = Delivered> + Send>>;

/// The main loop's state, owned by one task.
#[derive(Debug)]
struct Agent {
    root: PathBuf,
    identity: AgentIdentity,
    sequence: SequenceCounter,
    sender: ReportSender,
    /// The latest collection; `None` only before the first one.
    inventory: Option<CollectedInventory>,
    /// The hash of the last full inventory put in the spool, and that report's sequence. Later
    /// reports carry only the hash: the spool delivers the full one first. Cleared when the
    /// collector says it does not know the hash.
    inventory_spooled: Option<(String, u64)>,
    /// Check results waiting for the next report, oldest first.
    pending: VecDeque<CheckResult>,
    /// Check results dropped because `pending` was full, since the last log line about it.
    dropped_results: u64,
    /// Every configured check, sent with each report so the collector forgets removed ones.
    check_names: Vec<String>,
    /// Reports built and not yet acknowledged.
    spool: Spool,
    backoff: Backoff,
    /// Delivery failures in a row, for the log line when the collector is back.
    failed_deliveries: u64,
    /// Identity conflicts in a row: a new id answers the first; more means something else.
    identity_conflicts: u32,
}

impl Agent {
    async fn main_loop(
        &mut self,
        config: &AgentConfig,
        mut results: mpsc::Receiver<Vec<CheckResult>>,
    ) -> anyhow::Result<()> {
        let schedule = &config.schedule;
        self.inventory = Some(collect_inventory(self.root.clone()).await?);
        self.enqueue_report().await?;

        let mut heartbeat = tokio::time::interval_at(
            Instant::now() + schedule.heartbeat_interval,
            schedule.heartbeat_interval,
        );
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let next_collection = |now: Instant| {
            now + schedule.inventory_interval + random_up_to(schedule.inventory_jitter)
        };
        let mut collection_due = next_collection(Instant::now());
        let mut checks_running = !config.checks.is_empty();
        // The report being sent, and when the next attempt may start after a failure.
        let mut delivery: Option<Delivery> = None;
        let mut retry_at: Option<Instant> = None;
        // Pinged from this loop, not from a task of its own: a loop stuck in one of its
        // steps stops the pings, and systemd restarts the agent.
        let watchdog_period = estate_service::notify::watchdog_interval();
        let mut watchdog =
            tokio::time::interval(watchdog_period.unwrap_or(Duration::from_secs(3600)));
        watchdog.set_missed_tick_behavior(MissedTickBehavior::Delay);

        loop {
            if delivery.is_none() && retry_at.is_none() {
                match self.next_delivery() {
                    Ok(next) => delivery = next,
                    Err(error) => {
                        error!(error = %error_chain(&error), "cannot read the spool");
                        retry_at = Some(Instant::now() + self.backoff.next_delay());
                    }
                }
            }
            tokio::select! {
                delivered = in_flight(&mut delivery), if delivery.is_some() => {
                    delivery = None;
                    retry_at = self.delivered(delivered).await?;
                }
                () = tokio::time::sleep_until(retry_at.unwrap_or_else(Instant::now)),
                    if retry_at.is_some() => retry_at = None,
                received = results.recv(), if checks_running => match received {
                    Some(results) => self.queue(results),
                    None => checks_running = false,
                },
                _ = heartbeat.tick() => self.enqueue_report().await?,
                _ = watchdog.tick(), if watchdog_period.is_some() => {
                    estate_service::notify::watchdog();
                }
                () = tokio::time::sleep_until(collection_due) => {
                    let collected = collect_inventory(self.root.clone()).await?;
                    let changed = self.inventory.as_ref().map(|i| &i.hash) != Some(&collected.hash);
                    self.inventory = Some(collected);
                    if changed {
                        info!("inventory changed, sending it");
                        self.enqueue_report().await?;
                    }
                    collection_due = next_collection(Instant::now());
                }
            }
        }
    }

    /// Queues check results for the next report, dropping the oldest beyond the bound.
    fn queue(&mut self, results: Vec<CheckResult>) {
        self.pending.extend(results);
        while self.pending.len() > MAX_PENDING_CHECK_RESULTS {
            self.pending.pop_front();
            self.dropped_results += 1;
        }
    }

    /// Builds a report of what was gathered since the last one and puts it in the spool.
    /// Fails only when the sequence number cannot be persisted; a spool that cannot be
    /// written loses this report (counted as dropped) and is logged.
    async fn enqueue_report(&mut self) -> anyhow::Result<()> {
        if self.dropped_results > 0 {
            warn!(
                dropped = self.dropped_results,
                limit = MAX_PENDING_CHECK_RESULTS,
                "too many check results between two reports, dropped the oldest"
            );
            self.dropped_results = 0;
        }
        let Some(inventory) = &self.inventory else {
            return Ok(());
        };
        let vitals = collect_vitals(self.root.clone()).await?;
        let part = match &self.inventory_spooled {
            Some((hash, _)) if *hash == inventory.hash => InventoryPart::HashOnly,
            _ => InventoryPart::Full,
        };
        let checks: Vec<CheckResult> = self.pending.drain(..).collect();
        let sequence = self.sequence.take_next()?;
        let request = build_report(
            self.identity.host_identity(&inventory.fingerprints),
            sequence,
            SystemTime::now(),
            inventory,
            part,
            vitals,
            ReportChecks {
                results: checks,
                configured: self.check_names.clone(),
            },
        );
        match self.spool.push(request, SystemTime::now()) {
            Ok(()) if part == InventoryPart::Full => {
                self.inventory_spooled = Some((inventory.hash.clone(), sequence));
            }
            Ok(()) => {}
            Err(error) => error!(
                error = %error_chain(&error),
                sequence,
                "cannot write the report to the spool; it is lost and counted as dropped"
            ),
        }
        Ok(())
    }

    /// Starts sending the oldest spooled report, if any.
    fn next_delivery(&mut self) -> Result<Option<Delivery>, crate::spool::SpoolError> {
        let Some(report) = self.spool.front()? else {
            return Ok(None);
        };
        let sequence = report.sequence;
        let full_inventory = report
            .inventory
            .is_some()
            .then(|| report.inventory_hash.clone());
        let mut sender = self.sender.clone();
        Ok(Some(Box::pin(async move {
            let outcome = sender.deliver(report).await;
            Delivered {
                sequence,
                full_inventory,
                result: outcome.result,
                unanswered_attempts: outcome.unanswered_attempts,
                sender,
            }
        })))
    }

    /// Acts on the collector's answer; returns when to try again if the report stays queued.
    /// Fails only when the state directory cannot be written.
    async fn delivered(&mut self, delivered: Delivered) -> anyhow::Result<Option<Instant>> {
        let Delivered {
            sequence,
            full_inventory,
            result,
            unanswered_attempts,
            sender,
        } = delivered;
        self.sender = sender;
        if let Err(error) = self
            .spool
            .record_ambiguous_delivery(sequence, unanswered_attempts)
        {
            warn!(error = %error_chain(&error), sequence, "cannot save the delivery counts");
        }
        match result {
            Ok(response) => {
                self.backoff.reset();
                self.identity_conflicts = 0;
                if self.failed_deliveries > 0 {
                    info!(
                        failed_attempts = self.failed_deliveries,
                        spooled_reports = self.spool.len(),
                        "the collector acknowledges again, sending the spooled reports"
                    );
                    self.failed_deliveries = 0;
                }
                if let Err(error) = self.spool.acknowledge(sequence) {
                    warn!(error = %error_chain(&error), sequence, "cannot remove an acknowledged report");
                }
                if response.need_full_inventory {
                    self.full_inventory_requested(sequence, full_inventory.is_some())
                        .await?;
                }
                Ok(None)
            }
            Err(SendError::IdentityConflict { message, .. }) => {
                self.spool.release();
                warn!(
                    %message,
                    agent_id = %self.identity.agent_id(),
                    spooled_reports = self.spool.len(),
                    "this agent id belongs to another machine (cloned state directory?), \
                     taking a new one and reporting as a new host"
                );
                self.take_new_identity()?;
                self.identity_conflicts += 1;
                // A fresh id conflicting again is not a clone: do not hammer the collector.
                Ok((self.identity_conflicts > 2)
                    .then(|| Instant::now() + self.backoff.next_delay()))
            }
            Err(error @ SendError::Rejected { .. }) => {
                // Sending it again would be refused again: drop this one, go on with the next.
                error!(
                    error = %error_chain(&error),
                    sequence,
                    "report rejected by the collector, dropped (counted as dropped)"
                );
                if let Err(error) = self.spool.discard(sequence) {
                    warn!(error = %error_chain(&error), sequence, "cannot remove a rejected report");
                }
                Ok(None)
            }
            Err(
                error @ (SendError::NotAuthorized { .. }
                | SendError::EnrollmentRefused { .. }
                | SendError::Credentials { .. }),
            ) => {
                // Not the report's fault and not the network's: an administrator must act
                // (a revoked or wrong token, a missing certificate). Said loudly, retried on
                // the backoff, reports kept.
                self.spool.release();
                self.failed_deliveries += 1;
                let delay = self.backoff.next_delay();
                error!(
                    error = %error_chain(&error),
                    url = %self.sender.url(),
                    spooled_reports = self.spool.len(),
                    retry_in = %humantime::format_duration(delay),
                    "the collector does not accept this agent's credentials; reports stay in \
                     the spool (README \"Securing a deployment\")"
                );
                Ok(Some(Instant::now() + delay))
            }
            Err(SendError::Throttled { message, .. }) => {
                self.spool.release();
                let delay = THROTTLED_RETRY / 2 + random_up_to(THROTTLED_RETRY);
                debug!(%message, sequence, retry_in = ?delay, "rate limited by the collector");
                Ok(Some(Instant::now() + delay))
            }
            Err(error) => {
                self.spool.release();
                self.failed_deliveries += 1;
                let delay = self.backoff.next_delay();
                warn!(
                    error = %error_chain(&error),
                    url = %self.sender.url(),
                    sequence,
                    maybe_stored = unanswered_attempts > 0,
                    spooled_reports = self.spool.len(),
                    retry_in = %humantime::format_duration(delay),
                    "report not delivered, it stays in the spool"
                );
                Ok(Some(Instant::now() + delay))
            }
        }
    }

    /// The collector does not know the inventory hash of report `sequence`. A full inventory
    /// already queued behind it answers that; otherwise the next report carries it, sent at
    /// once when nothing else is queued. A collector asking again right after a full inventory
    /// gets it with the next heartbeat, so the agent cannot loop.
    async fn full_inventory_requested(
        &mut self,
        sequence: u64,
        was_full: bool,
    ) -> anyhow::Result<()> {
        if self
            .inventory_spooled
            .as_ref()
            .is_some_and(|(_, full)| *full > sequence)
        {
            return Ok(());
        }
        info!(sequence, "the collector asked for the full inventory");
        self.inventory_spooled = None;
        if !was_full && self.spool.is_empty() {
            self.enqueue_report().await?;
        }
        Ok(())
    }

    /// A new agent id and sequence; the spooled reports are renumbered under it, since they
    /// describe this machine, and the first of them carries the full inventory: the collector
    /// has never seen this host.
    fn take_new_identity(&mut self) -> anyhow::Result<()> {
        self.identity.regenerate()?;
        self.sequence.restart()?;
        self.inventory_spooled = None;
        let agent_id = self.identity.agent_id().to_string();
        let sequence = &mut self.sequence;
        let inventory = self.inventory.as_ref();
        let mut full_sent = None;
        self.spool
            .renumber(|report| {
                report.sequence = sequence.take_next()?;
                if let Some(identity) = report.identity.as_mut() {
                    identity.agent_id.clone_from(&agent_id);
                }
                if let (None, Some(inventory)) = (&full_sent, inventory) {
                    report.inventory = Some(inventory.inventory.clone());
                    report.inventory_hash.clone_from(&inventory.hash);
                    full_sent = Some((inventory.hash.clone(), report.sequence));
                }
                Ok::<_, crate::identity::IdentityError>(())
            })
            .context("failed to renumber the spooled reports under the new agent id")?;
        self.inventory_spooled = full_sent;
        Ok(())
    }
}

/// Waits for the delivery in flight; only polled when there is one.
async fn in_flight(delivery: &mut Option<Delivery>) -> Delivered {
    match delivery {
        Some(delivery) => delivery.await,
        None => std::future::pending().await,
    }
}

/// Exponential backoff with full jitter: the n-th wait in a row is drawn uniformly from
/// `[0, min(max, initial × 2ⁿ)]`, so agents that lost the collector together spread out.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(config: &SpoolConfig) -> Backoff {
        Backoff {
            initial: config.retry_initial_delay,
            max: config.retry_max_delay,
            failures: 0,
        }
    }

    /// The upper bound of the next wait.
    pub fn ceiling(&self) -> Duration {
        self.initial
            .checked_mul(1 << self.failures.min(30))
            .map_or(self.max, |delay| delay.min(self.max))
    }

    /// The next wait, and one more failure counted.
    pub fn next_delay(&mut self) -> Duration {
        let delay = random_up_to(self.ceiling());
        self.failures = self.failures.saturating_add(1);
        delay
    }

    /// After a success: the next failure waits at most `initial` again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// Collects the inventory off the async threads: it reads many files.
async fn collect_inventory(root: PathBuf) -> anyhow::Result<CollectedInventory> {
    tokio::task::spawn_blocking(move || CollectedInventory::collect(&root))
        .await
        .context("inventory collection failed")
}

/// Collects the vitals off the async threads.
async fn collect_vitals(root: PathBuf) -> anyhow::Result<HostVitals> {
    tokio::task::spawn_blocking(move || inventory::vitals(Path::new(&root)))
        .await
        .context("vitals collection failed")
}

/// A uniformly random delay in `[0, maximum]`, at millisecond resolution.
fn random_up_to(maximum: Duration) -> Duration {
    let millis = u64::try_from(maximum.as_millis()).unwrap_or(u64::MAX);
    if millis == 0 {
        return Duration::ZERO;
    }
    Duration::from_millis(rand::random_range(0..=millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_and_jitters_below_it() {
        let mut backoff = Backoff::new(&SpoolConfig {
            limits: crate::spool::SpoolLimits {
                max_bytes: 1 << 20,
                max_age: Duration::from_secs(60),
            },
            retry_initial_delay: Duration::from_secs(1),
            retry_max_delay: Duration::from_secs(60),
        });
        let mut ceilings = Vec::new();
        let mut delays = Vec::new();
        for _ in 0..10 {
            ceilings.push(backoff.ceiling().as_secs());
            delays.push(backoff.next_delay());
        }
        assert_eq!(ceilings, [1, 2, 4, 8, 16, 32, 60, 60, 60, 60]);
        for (delay, ceiling) in delays.iter().zip(&ceilings) {
            assert!(
                delay.as_secs_f64() <= *ceiling as f64,
                "{delay:?} > {ceiling}"
            );
        }
        // Full jitter: the waits are spread, not all at the cap.
        let mut capped = Backoff {
            failures: 20,
            ..backoff.clone()
        };
        let spread: Vec<Duration> = (0..50).map(|_| capped.next_delay()).collect();
        assert!(
            spread.iter().any(|d| *d < Duration::from_secs(30)),
            "{spread:?}"
        );
        assert!(
            spread.iter().any(|d| *d > Duration::from_secs(30)),
            "{spread:?}"
        );
        backoff.reset();
        assert_eq!(backoff.ceiling(), Duration::from_secs(1));
    }
}
