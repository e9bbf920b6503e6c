//! The agent's loop against an in-process fake collector: what each report carries, how the
//! agent answers the collector, and that `run` stops when told to.

use estate_agent::checks::{Check, CheckConfig, ScheduledCheck, tcp::TcpCheckConfig};
use estate_agent::config::{AgentConfig, CollectorConfig, ScheduleConfig, SpoolConfig};
use estate_agent::schedule;
use estate_agent::spool::SpoolLimits;
use estate_proto::v1::ingest_server::{Ingest, IngestServer};
use estate_proto::v1::{Outcome, ReportRequest, ReportResponse};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Response, Status};

/// Records every report and answers from a script, then with a plain acknowledgement.
struct FakeCollector {
    reports: mpsc::UnboundedSender<ReportRequest>,
    answers: Mutex<VecDeque<Result<ReportResponse, Status>>>,
}

#[tonic::async_trait]
impl Ingest for FakeCollector {
    async fn report(
        &self,
        request: Request<ReportRequest>,
    ) -> Result<Response<ReportResponse>, Status> {
        let answer = self
            .answers
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(|| Ok(ReportResponse::default()));
        // The test may have stopped listening; the answer still goes out.
        let _ = self.reports.send(request.into_inner());
        answer.map(Response::new)
    }
}

/// A running fake collector; dropped, it stops and its task is joined by `stop`.
struct RunningCollector {
    address: SocketAddr,
    reports: mpsc::UnboundedReceiver<ReportRequest>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningCollector {
    async fn start(answers: Vec<Result<ReportResponse, Status>>) -> RunningCollector {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (reports_sender, reports) = mpsc::unbounded_channel();
        let service = FakeCollector {
            reports: reports_sender,
            answers: Mutex::new(answers.into()),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(IngestServer::new(service))
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    async {
                        let _ = stopped.await;
                    },
                )
                .await
                .unwrap();
        });
        RunningCollector {
            address,
            reports,
            stop,
            task,
        }
    }

    /// The next report the collector received. The time limit only keeps a broken agent from
    /// hanging the test suite; no assertion depends on timing.
    async fn next_report(&mut self) -> ReportRequest {
        tokio::time::timeout(Duration::from_secs(60), self.reports.recv())
            .await
            .expect("no report within 60s")
            .expect("the fake collector stopped")
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap();
    }
}

/// A config for tests: tiny heartbeat, an empty fixture root, no jitter.
fn config(state_dir: &Path, root: &Path, collector: SocketAddr) -> AgentConfig {
    AgentConfig {
        state_dir: state_dir.to_owned(),
        root: root.to_owned(),
        collector: CollectorConfig {
            urls: vec![format!("http://{collector}")],
            // A fake collector on loopback: plain text is fine here.
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            credentials: estate_agent::credentials::CredentialFiles {
                token_file: state_dir.join("agent-token"),
                enrollment_secret_file: None,
            },
            insecure: true,
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(5),
        },
        schedule: ScheduleConfig {
            inventory_interval: Duration::from_secs(3600),
            inventory_jitter: Duration::ZERO,
            heartbeat_interval: Duration::from_millis(10),
            max_concurrent_checks: 4,
        },
        spool: SpoolConfig {
            limits: SpoolLimits {
                max_bytes: 16 << 20,
                max_age: Duration::from_secs(3600),
            },
            retry_initial_delay: Duration::from_millis(10),
            retry_max_delay: Duration::from_millis(50),
        },
        checks: Vec::new(),
    }
}

/// Runs the agent in a task; returns the shutdown trigger and the task.
fn start_agent(
    config: AgentConfig,
) -> (
    oneshot::Sender<()>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let (shutdown, shutdown_received) = oneshot::channel::<()>();
    let agent = tokio::spawn(schedule::run(config, async {
        let _ = shutdown_received.await;
    }));
    (shutdown, agent)
}

fn agent_id(report: &ReportRequest) -> &str {
    &report.identity.as_ref().unwrap().agent_id
}

#[tokio::test]
async fn reports_carry_the_inventory_only_when_the_collector_needs_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let answers = vec![
        Ok(ReportResponse::default()),
        Ok(ReportResponse {
            need_full_inventory: true,
            ..Default::default()
        }),
    ];
    let mut collector = RunningCollector::start(answers).await;
    let (shutdown, agent) = start_agent(config(dir.path(), root.path(), collector.address));

    let first = collector.next_report().await;
    assert!(
        first.inventory.is_some(),
        "the first report carries the inventory"
    );
    assert!(first.inventory_hash.starts_with("sha256:"));
    assert!(first.vitals.is_some());
    assert_eq!(first.agent_version, estate_agent::VERSION);
    assert!(first.agent_time_unix_ms > 0);

    let second = collector.next_report().await;
    assert_eq!(
        second.inventory, None,
        "an unchanged inventory is sent as its hash"
    );
    assert_eq!(second.inventory_hash, first.inventory_hash);

    // The second answer asked for the full inventory: a later report carries it (reports
    // built before the answer arrived may be queued ahead of it), then only the hash again.
    let mut reports = vec![first.clone(), second];
    while reports.len() < 3 || reports.last().unwrap().inventory.is_none() {
        reports.push(collector.next_report().await);
    }
    assert!(
        reports.len() <= 6,
        "the full inventory came late: {}",
        reports.len()
    );
    let after = collector.next_report().await;
    assert_eq!(after.inventory, None);
    reports.push(after);

    let sequences: Vec<u64> = reports.iter().map(|r| r.sequence).collect();
    let expected: Vec<u64> = (1..=reports.len() as u64).collect();
    assert_eq!(
        sequences, expected,
        "sent in order, none lost, none repeated"
    );
    assert!(reports.iter().all(|r| agent_id(r) == agent_id(&first)));
    let last_sequence = reports.len() as u64;

    shutdown.send(()).unwrap();
    agent.await.unwrap().unwrap();
    collector.stop().await;

    // A restart continues the sequence with the same agent id: first what was still spooled
    // (the report in flight at shutdown may come again; the collector calls it a duplicate),
    // then new reports, the first of which carries the inventory again.
    let mut collector = RunningCollector::start(Vec::new()).await;
    let (shutdown, agent) = start_agent(config(dir.path(), root.path(), collector.address));
    let mut after_restart = vec![collector.next_report().await];
    while after_restart.last().unwrap().inventory.is_none() {
        after_restart.push(collector.next_report().await);
        assert!(
            after_restart.len() < 50,
            "no full inventory after the restart"
        );
    }
    shutdown.send(()).unwrap();
    agent.await.unwrap().unwrap();
    collector.stop().await;
    let sequences: Vec<u64> = after_restart.iter().map(|r| r.sequence).collect();
    assert!(sequences[0] >= last_sequence, "{sequences:?}");
    assert!(
        sequences.windows(2).all(|w| w[1] == w[0] + 1),
        "{sequences:?}"
    );
    assert!(
        after_restart
            .iter()
            .all(|r| agent_id(r) == agent_id(&first))
    );
}

#[tokio::test]
async fn an_identity_conflict_makes_the_agent_report_as_a_new_host() {
    let dir = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let answers = vec![
        Ok(ReportResponse::default()),
        Err(Status::failed_precondition(
            "identity conflict: agent id seen with another machine id",
        )),
    ];
    let mut collector = RunningCollector::start(answers).await;
    let (shutdown, agent) = start_agent(config(dir.path(), root.path(), collector.address));

    let first = collector.next_report().await;
    let conflicting = collector.next_report().await;
    assert_eq!(agent_id(&conflicting), agent_id(&first));
    let renewed = collector.next_report().await;
    shutdown.send(()).unwrap();
    agent.await.unwrap().unwrap();
    collector.stop().await;

    assert_ne!(agent_id(&renewed), agent_id(&first));
    assert_eq!(renewed.sequence, 1, "a new agent id starts a new sequence");
    // The refused report itself is sent again under the new id: its results are not lost.
    assert_eq!(renewed.agent_time_unix_ms, conflicting.agent_time_unix_ms);
    assert!(
        renewed.inventory.is_some(),
        "a new host sends its inventory"
    );
    let stored = std::fs::read_to_string(dir.path().join("agent-id")).unwrap();
    assert_eq!(stored.trim(), agent_id(&renewed));
}

#[tokio::test]
async fn undelivered_reports_stay_spooled_and_are_sent_again_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    // The collector acknowledges nothing at first, as when it is unreachable.
    let unavailable = || Err(Status::unavailable("collector restarting"));
    let mut collector = RunningCollector::start(vec![unavailable(), unavailable()]).await;
    let mut config = config(dir.path(), root.path(), collector.address);
    // A check against the collector's own port: it passes.
    config.checks.push(ScheduledCheck {
        name: "collector-port".into(),
        interval: Duration::from_secs(3600),
        timeout: Duration::from_secs(5),
        check: tcp_check(collector.address),
    });
    let (shutdown, agent) = start_agent(config);

    // The first report is sent three times (two failures, then acknowledged): the spool
    // keeps it, and reports built meanwhile wait behind it carrying only the hash.
    let mut reports = Vec::new();
    for _ in 0..4 {
        reports.push(collector.next_report().await);
    }
    let shape: Vec<(u64, bool)> = reports
        .iter()
        .map(|r| (r.sequence, r.inventory.is_some()))
        .collect();
    assert_eq!(shape, [(1, true), (1, true), (1, true), (2, false)]);
    // The check's result reaches an acknowledged report (all are, from the third on).
    let delivered = |reports: &[ReportRequest]| {
        reports
            .iter()
            .skip(2)
            .position(|r| !r.checks.is_empty())
            .map(|position| position + 2)
    };
    while delivered(&reports).is_none() {
        reports.push(collector.next_report().await);
    }
    let with_result = &reports[delivered(&reports).unwrap()];
    assert_eq!(with_result.checks.len(), 1);
    let result = &with_result.checks[0];
    assert_eq!(result.check, "collector-port");
    assert_eq!(result.kind, "tcp");
    assert_eq!(result.target, collector.address.to_string());
    assert_eq!(
        result.outcome,
        Outcome::Pass as i32,
        "reason: {}",
        result.reason
    );

    shutdown.send(()).unwrap();
    agent.await.unwrap().unwrap();
    collector.stop().await;
}

fn tcp_check(address: SocketAddr) -> Check {
    CheckConfig::Tcp(TcpCheckConfig {
        host: None,
        port: None,
        address: Some(address.to_string()),
    })
    .validate()
    .unwrap()
}

#[tokio::test]
async fn once_builds_a_full_report_without_sending_or_consuming_a_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), root.path(), "127.0.0.1:9".parse().unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    config.checks.push(ScheduledCheck {
        name: "local".into(),
        interval: Duration::from_secs(60),
        timeout: Duration::from_secs(5),
        check: tcp_check(listener.local_addr().unwrap()),
    });
    let shown = schedule::once(config.clone(), false).await.unwrap();
    assert!(shown.response.is_none());
    assert_eq!(shown.request.sequence, 1);
    assert!(shown.request.inventory.is_some());
    assert_eq!(shown.request.checks.len(), 1);
    assert_eq!(shown.request.checks[0].outcome, Outcome::Pass as i32);
    let json = serde_json::to_value(&shown.request).unwrap();
    assert_eq!(json["checks"][0]["outcome"], "pass");
    // Showing a report wrote nothing: no agent id, no sequence number taken.
    assert!(!dir.path().join("agent-id").exists());
    assert!(!dir.path().join("sequence").exists());
    let again = schedule::once(config, false).await.unwrap();
    assert_eq!(again.request.sequence, 1);
}

#[tokio::test]
async fn once_sends_one_report_and_returns_the_answer() {
    let dir = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let answer = ReportResponse {
        collector_time_unix_ms: 42,
        ..Default::default()
    };
    let mut collector = RunningCollector::start(vec![Ok(answer)]).await;
    let config = config(dir.path(), root.path(), collector.address);
    let sent = schedule::once(config.clone(), true).await.unwrap();
    assert_eq!(sent.response.unwrap().collector_time_unix_ms, 42);
    assert_eq!(collector.next_report().await, sent.request);
    let second = schedule::once(config, true).await.unwrap();
    assert_eq!(second.request.sequence, sent.request.sequence + 1);
    collector.stop().await;
}

#[tokio::test]
async fn a_refused_report_is_dropped_and_counted_and_a_throttled_one_is_sent_again() {
    let dir = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let answers = vec![
        Ok(ReportResponse::default()),
        Err(Status::invalid_argument(
            "`identity.hostname` must not be empty",
        )),
        Err(Status::resource_exhausted(
            "agent `x` exceeds the rate limit of 5 reports per second",
        )),
    ];
    let mut collector = RunningCollector::start(answers).await;
    let (shutdown, agent) = start_agent(config(dir.path(), root.path(), collector.address));

    let mut reports = Vec::new();
    // Until the refusal of report 2 has been counted in a later report.
    // (The count may ride in report 3 itself, if it was built after the refusal.)
    while reports.len() < 4
        || reports
            .iter()
            .all(|r: &ReportRequest| r.dropped_reports == 0)
    {
        reports.push(collector.next_report().await);
        assert!(reports.len() < 100, "the refused report was never counted");
    }
    shutdown.send(()).unwrap();
    agent.await.unwrap().unwrap();
    collector.stop().await;

    let sequences: Vec<u64> = reports.iter().map(|r| r.sequence).collect();
    assert_eq!(
        sequences[..4],
        [1, 2, 3, 3],
        "2 refused and not resent, 3 throttled and resent"
    );
    assert!(
        sequences[3..].windows(2).all(|w| w[1] == w[0] + 1),
        "{sequences:?}"
    );
    assert_eq!(reports.last().unwrap().dropped_reports, 1);
}

/// Answers the first report with a store failure that leaves it unknown whether the report was
/// written (`INTERNAL`), then refuses every report before writing it (`UNAVAILABLE`) until
/// `outage_until`, then acknowledges.
struct FailingCollector {
    reports: mpsc::UnboundedSender<ReportRequest>,
    answered: std::sync::atomic::AtomicUsize,
    outage_until: tokio::time::Instant,
}

#[tonic::async_trait]
impl Ingest for FailingCollector {
    async fn report(
        &self,
        request: Request<ReportRequest>,
    ) -> Result<Response<ReportResponse>, Status> {
        let _ = self.reports.send(request.into_inner());
        if self
            .answered
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            == 0
        {
            return Err(Status::internal("the store failed while committing"));
        }
        if tokio::time::Instant::now() < self.outage_until {
            return Err(Status::unavailable("the collector's write queue is full"));
        }
        Ok(Response::new(ReportResponse::default()))
    }
}

#[tokio::test]
async fn a_report_aged_out_after_an_ambiguous_delivery_is_counted_as_maybe_stored() {
    let dir = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (reports_sender, mut reports) = mpsc::unbounded_channel();
    let outage_until = tokio::time::Instant::now() + Duration::from_secs(1);
    let service = FailingCollector {
        reports: reports_sender,
        answered: Default::default(),
        outage_until,
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(IngestServer::new(service))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = stopped.await;
                },
            ),
    );
    let mut config = config(dir.path(), root.path(), address);
    // Report 1 ages out during the one-second outage, long after its ambiguous delivery.
    config.spool.limits.max_age = Duration::from_millis(200);
    let (shutdown, agent) = start_agent(config);

    // Until, after the outage, a report arrives that carries drop counts: by then report 1 and
    // the reports refused after it have aged out.
    let mut received = Vec::new();
    loop {
        let report = tokio::time::timeout(Duration::from_secs(60), reports.recv())
            .await
            .expect("no report within 60s")
            .unwrap();
        let carries_drops =
            report.dropped_reports > 0 && tokio::time::Instant::now() >= outage_until;
        received.push(report.sequence);
        if carries_drops {
            break;
        }
    }
    shutdown.send(()).unwrap();
    agent.await.unwrap().unwrap();
    let _ = stop.send(());
    server.await.unwrap().unwrap();

    assert_eq!(received[0], 1);
    let text = std::fs::read_to_string(dir.path().join("spool/deliveries.prom")).unwrap();
    let counts = estate_agent::spool::DeliveryCounts::parse(&text).unwrap();
    assert_eq!(
        (counts.ambiguous_deliveries, counts.dropped_maybe_stored),
        (1, 1),
        "report 1 had one delivery without a known outcome, then aged out: {counts:?}"
    );
    assert!(
        counts.dropped_not_stored >= 1,
        "later reports were refused before the write, then aged out: {counts:?}"
    );
}

#[tokio::test]
async fn after_a_failover_the_agent_stays_with_the_collector_that_answered() {
    let dir = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    // The first collector refuses the first report (as while restarting), then would accept.
    let mut first =
        RunningCollector::start(vec![Err(Status::unavailable("collector restarting"))]).await;
    let mut second = RunningCollector::start(Vec::new()).await;
    let mut config = config(dir.path(), root.path(), first.address);
    config
        .collector
        .urls
        .push(format!("http://{}", second.address));
    let (shutdown, agent) = start_agent(config);

    let mut sequences = Vec::new();
    for _ in 0..5 {
        sequences.push(second.next_report().await.sequence);
    }
    shutdown.send(()).unwrap();
    agent.await.unwrap().unwrap();
    assert_eq!(
        sequences,
        [1, 2, 3, 4, 5],
        "every report went to the second"
    );
    // The first collector saw report 1 only: the failover is kept from one report to the next.
    assert_eq!(first.next_report().await.sequence, 1);
    assert!(first.reports.try_recv().is_err());
    first.stop().await;
    second.stop().await;
}
