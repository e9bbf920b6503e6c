//! The agent's loop: collects the inventory (at start and on its interval), runs each check on
//! its own interval, and sends a report every heartbeat. Also [`once`], one report on demand.
//!
//! Delivery today: a report that is not acknowledged is not kept; its check results go back to
//! a bounded in-memory queue and ride with the next report, and the full inventory is sent
//! again until one full report is acknowledged. A disk spool that keeps whole reports across
//! restarts comes in a later issue and replaces that queue.

use crate::checks::ScheduledCheck;
use crate::config::AgentConfig;
use crate::identity::{AgentIdentity, SequenceCounter, error_chain};
use crate::inventory;
use crate::report::{CollectedInventory, InventoryPart, ReportChecks, build_report};
use crate::sender::{ReportSender, SendError};
use anyhow::Context;
use estate_proto::v1::{CheckResult, HostVitals, ReportRequest, ReportResponse};
use std::collections::VecDeque;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{error, info, warn};

/// Check results kept while the collector is unreachable. At one result per check per minute,
/// 10 000 hold about three hours of 50 checks; the oldest are dropped first.
pub const MAX_PENDING_CHECK_RESULTS: usize = 10_000;

/// Runs the agent until `shutdown` resolves: reports at start, then every heartbeat.
///
/// Fails only on what the agent cannot run without (an unusable state directory); the
/// collector being unreachable is logged and retried, never an error.
pub async fn run(config: AgentConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let identity = AgentIdentity::load_or_create(&config.state_dir)?;
    let sequence = SequenceCounter::load(&config.state_dir)?;
    let sender = ReportSender::new(&config.collector)?;
    info!(
        agent_id = %identity.agent_id(),
        collector = %sender.url(),
        checks = config.checks.len(),
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

    let mut agent = Agent {
        root: config.root.clone(),
        identity,
        sequence,
        sender,
        inventory: None,
        acknowledged_hash: None,
        pending: VecDeque::new(),
        dropped_results: 0,
        check_names: config.check_names(),
    };
    // Dropping the loop at shutdown cancels a report in flight (its sequence number is already
    // persisted, so nothing is reused) and detaches an inventory collection in progress, which
    // cannot be interrupted and ends on its own.
    let outcome = tokio::select! {
        outcome = agent.main_loop(&config, results) => outcome,
        () = shutdown => Ok(()),
    };
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

/// The main loop's state, owned by one task.
#[derive(Debug)]
struct Agent {
    root: PathBuf,
    identity: AgentIdentity,
    sequence: SequenceCounter,
    sender: ReportSender,
    /// The latest collection; `None` only before the first one.
    inventory: Option<CollectedInventory>,
    /// The hash of the last full inventory the collector acknowledged (and still knows).
    /// A report carries the full inventory whenever the current hash differs.
    acknowledged_hash: Option<String>,
    /// Check results waiting for the next report, oldest first.
    pending: VecDeque<CheckResult>,
    /// Check results dropped because `pending` was full, since the last log line about it.
    dropped_results: u64,
    /// Every configured check, sent with each report so the collector forgets removed ones.
    check_names: Vec<String>,
}

impl Agent {
    async fn main_loop(
        &mut self,
        config: &AgentConfig,
        mut results: mpsc::Receiver<Vec<CheckResult>>,
    ) -> anyhow::Result<()> {
        let schedule = &config.schedule;
        self.inventory = Some(collect_inventory(self.root.clone()).await?);
        self.report().await?;

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

        loop {
            tokio::select! {
                received = results.recv(), if checks_running => match received {
                    Some(results) => self.queue(results),
                    None => checks_running = false,
                },
                _ = heartbeat.tick() => self.report().await?,
                () = tokio::time::sleep_until(collection_due) => {
                    let collected = collect_inventory(self.root.clone()).await?;
                    let changed = self.inventory.as_ref().map(|i| &i.hash) != Some(&collected.hash);
                    self.inventory = Some(collected);
                    if changed {
                        info!("inventory changed, sending it");
                        self.report().await?;
                    }
                    collection_due = next_collection(Instant::now());
                }
            }
        }
    }

    /// Queues check results for the next report, dropping the oldest beyond the bound.
    fn queue(&mut self, results: Vec<CheckResult>) {
        self.pending.extend(results);
        self.trim_pending();
    }

    fn trim_pending(&mut self) {
        while self.pending.len() > MAX_PENDING_CHECK_RESULTS {
            self.pending.pop_front();
            self.dropped_results += 1;
        }
    }

    /// Sends one report, and right away a second one when the collector asks for the full
    /// inventory or when this host had to take a new identity. Fails only when the state
    /// directory cannot be written; the collector's answers are handled here.
    async fn report(&mut self) -> anyhow::Result<()> {
        if self.dropped_results > 0 {
            warn!(
                dropped = self.dropped_results,
                limit = MAX_PENDING_CHECK_RESULTS,
                "the collector was unreachable for long, dropped the oldest check results"
            );
            self.dropped_results = 0;
        }
        let Some(inventory) = &self.inventory else {
            return Ok(());
        };
        let vitals = collect_vitals(self.root.clone()).await?;
        let checks: Vec<CheckResult> = self.pending.drain(..).collect();
        // At most two attempts: the second answers the first (new identity, full inventory);
        // a collector asking again for what it just got must not make the agent loop.
        for attempt in 0..2 {
            let part = if self.acknowledged_hash.as_ref() == Some(&inventory.hash) {
                InventoryPart::HashOnly
            } else {
                InventoryPart::Full
            };
            let sequence = self.sequence.take_next()?;
            let request = build_report(
                self.identity.host_identity(&inventory.fingerprints),
                sequence,
                SystemTime::now(),
                inventory,
                part,
                vitals.clone(),
                ReportChecks {
                    results: checks.clone(),
                    configured: self.check_names.clone(),
                },
            );
            match self.sender.send(request).await {
                Ok(response) => {
                    if part == InventoryPart::Full {
                        self.acknowledged_hash = Some(inventory.hash.clone());
                    }
                    if !response.need_full_inventory {
                        return Ok(());
                    }
                    info!(sequence, "the collector asked for the full inventory");
                    self.acknowledged_hash = None;
                    if part == InventoryPart::Full || attempt == 1 {
                        return Ok(()); // The next heartbeat carries it.
                    }
                    // The check results were delivered: the second report carries none.
                    return self.resend_full(inventory.clone(), vitals).await;
                }
                Err(SendError::IdentityConflict { message, .. }) => {
                    warn!(
                        %message,
                        agent_id = %self.identity.agent_id(),
                        "this agent id belongs to another machine (cloned state directory?), \
                         taking a new one and reporting as a new host"
                    );
                    self.identity.regenerate()?;
                    self.sequence.restart()?;
                    self.acknowledged_hash = None;
                    if attempt == 1 {
                        self.requeue(checks);
                        return Ok(());
                    }
                }
                Err(error @ SendError::Rejected { .. }) => {
                    // Sending the same results again would be refused again.
                    error!(
                        error = %error_chain(&error),
                        sequence,
                        dropped_check_results = checks.len(),
                        "report rejected by the collector"
                    );
                    return Ok(());
                }
                Err(error) => {
                    warn!(
                        error = %error_chain(&error),
                        url = %self.sender.url(),
                        sequence,
                        "report not delivered, will retry with the next one"
                    );
                    self.requeue(checks);
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// The immediate answer to `need_full_inventory`: the full inventory, no check results.
    async fn resend_full(
        &mut self,
        inventory: CollectedInventory,
        vitals: HostVitals,
    ) -> anyhow::Result<()> {
        let sequence = self.sequence.take_next()?;
        let request = build_report(
            self.identity.host_identity(&inventory.fingerprints),
            sequence,
            SystemTime::now(),
            &inventory,
            InventoryPart::Full,
            vitals,
            ReportChecks {
                results: Vec::new(),
                configured: self.check_names.clone(),
            },
        );
        match self.sender.send(request).await {
            Ok(_) => self.acknowledged_hash = Some(inventory.hash),
            Err(error) => warn!(
                error = %error_chain(&error),
                url = %self.sender.url(),
                sequence,
                "full inventory not delivered, will send it with the next report"
            ),
        }
        Ok(())
    }

    /// Puts undelivered results back in front of any that arrived since.
    fn requeue(&mut self, checks: Vec<CheckResult>) {
        let newer = std::mem::take(&mut self.pending);
        self.pending = checks.into();
        self.pending.extend(newer);
        self.trim_pending();
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
