//! Fault injection with the real binaries: several agents report every 250 ms while the
//! collector is stopped (SIGTERM), restarted, killed with SIGKILL in the middle of the replay,
//! and restarted again. At the end, for every agent:
//!
//!   reports produced (its sequence counter) = reports stored by the collector
//!     + reports dropped that were certainly not stored
//!     + (reports dropped after an ambiguous delivery − those of them the collector stored)
//!     + reports still in its spool and not stored
//!
//! An ambiguous delivery ended without an answer (the collector stopped or was killed
//! mid-request): the report may be stored. If the spool's age bound then drops it, the agent
//! counts it apart (`estate_agent_reports_dropped_total{after_ambiguous_delivery="true"}` in
//! `spool/deliveries.prom`), so the equation holds with between none and all of those stored,
//! and with none of them it is exact. The agent's drop counts must also equal what the
//! collector was told (`dropped_reports_total`) plus what is still on its way, give or take
//! the counts carried by those same reports (told twice if they were stored). The figures are
//! printed.
//!
//! The binaries are the ones `cargo test --workspace` builds next to this test; `ESTATE_BIN_DIR`
//! points elsewhere.

use estate_agent::spool::{COUNTS_FILE, DeliveryCounts};
use estate_tests::harness::{Running, binary, free_port, http_get, wait_until};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const AGENTS: usize = 6;

/// The collector's addresses stay the same across restarts, as the agents' config names them.
struct Collector {
    database: PathBuf,
    grpc: String,
    http: String,
}

impl Collector {
    fn start(&self) -> Running {
        let child = Command::new(binary("estate-collector"))
            // Plain text on loopback: TLS is tested elsewhere; this test is about delivery.
            .args([
                "--insecure",
                "--grpc-listen",
                &self.grpc,
                "--http-listen",
                &self.http,
            ])
            .arg("--database")
            .arg(&self.database)
            // Agents report every 250 ms here, faster than the default sustained rate.
            .args(["--agent-rate-limit", "100"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let running = Running(child);
        wait_until(
            "the collector answers /healthz",
            Duration::from_secs(20),
            || {
                self.get("/healthz")
                    .is_some_and(|(status, _)| status == 200)
            },
        );
        running
    }

    fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(&format!("http://{}{path}", self.http))
    }

    fn json(&self, path: &str) -> Value {
        let (status, body) = self
            .get(path)
            .unwrap_or_else(|| panic!("GET {path} failed"));
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    fn stored_reports(&self) -> f64 {
        let Some((_, text)) = self.get("/metrics") else {
            return 0.0;
        };
        text.lines()
            .find(|line| line.starts_with("estate_collector_reports_total{result=\"stored\"}"))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|value| value.parse().ok())
            .unwrap_or(0.0)
    }
}

struct Agent {
    state_dir: PathBuf,
    process: Option<Running>,
}

impl Agent {
    fn start(dir: &Path, index: usize, collector: &Collector, spool: &str) -> Agent {
        let state_dir = dir.join(format!("agent-{index}"));
        std::fs::create_dir_all(&state_dir).unwrap();
        let config = state_dir.join("agent.toml");
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../agent/tests/fixtures/inventory/kvm-guest");
        std::fs::write(
            &config,
            format!(
                r#"
[agent]
state_dir = "{state}"
root = "{root}"

[collector]
url = "http://{grpc}"
insecure = true
connect_timeout = "1s"
timeout = "5s"

[schedule]
inventory_interval = "1h"
inventory_jitter = "0s"
heartbeat_interval = "250ms"

[spool]
{spool}
retry_initial_delay = "50ms"
retry_max_delay = "500ms"
"#,
                state = state_dir.display(),
                root = root.display(),
                grpc = collector.grpc,
            ),
        )
        .unwrap();
        let child = Command::new(binary("estate-agent"))
            .arg("--config")
            .arg(&config)
            .arg("run")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Agent {
            state_dir,
            process: Some(Running(child)),
        }
    }

    fn read_number(&self, path: &Path) -> u64 {
        std::fs::read_to_string(path)
            .map(|text| text.trim().parse().unwrap())
            .unwrap_or(0)
    }

    fn produced(&self) -> u64 {
        self.read_number(&self.state_dir.join("sequence"))
    }

    /// The sequence numbers of the reports in the spool.
    fn spooled(&self) -> Vec<u64> {
        std::fs::read_dir(self.state_dir.join("spool"))
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter_map(|entry| {
                        let name = entry.file_name().to_string_lossy().into_owned();
                        name.strip_suffix(".report")?.parse().ok()
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn dropped_not_yet_reported(&self) -> u64 {
        self.read_number(&self.state_dir.join("spool/dropped"))
    }

    /// The agent's cumulative delivery counts (`spool/deliveries.prom`).
    fn delivery_counts(&self) -> DeliveryCounts {
        let path = self.state_dir.join("spool").join(COUNTS_FILE);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
        DeliveryCounts::parse(&text).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
    }

    /// Drop counts riding in spooled reports the collector has not stored (sequence above
    /// `last_stored`): counted by the agent, not yet by the collector.
    fn dropped_in_spooled_reports(&self, last_stored: u64) -> u64 {
        self.spooled()
            .into_iter()
            .filter(|sequence| *sequence > last_stored)
            .map(|sequence| {
                let path = self.state_dir.join(format!("spool/{sequence:020}.report"));
                let bytes = std::fs::read(&path).unwrap();
                let (_, report) = estate_agent::spool::decode_file(&bytes)
                    .unwrap_or_else(|reason| panic!("{}: {reason}", path.display()));
                report.dropped_reports
            })
            .sum()
    }

    fn id(&self) -> String {
        std::fs::read_to_string(self.state_dir.join("agent-id"))
            .unwrap()
            .trim()
            .to_owned()
    }
}

/// Figures of one run, summed over the agents.
#[derive(Debug, Default)]
struct Tally {
    produced: u64,
    stored: u64,
    /// Dropped, certainly not stored.
    dropped_not_stored: u64,
    /// Dropped after a delivery that ended without an answer.
    dropped_maybe_stored: u64,
    /// Of those, how many the collector had stored (from the accounting).
    dropped_but_stored: u64,
    left_in_spool: u64,
    /// Deliveries that ended without an answer.
    ambiguous_deliveries: u64,
}

fn run_faults(spool: &str, outage: Duration) -> Tally {
    let dir = tempfile::tempdir().unwrap();
    let collector = Collector {
        database: dir.path().join("estate.db"),
        grpc: format!("127.0.0.1:{}", free_port()),
        http: format!("127.0.0.1:{}", free_port()),
    };
    let started = Instant::now();
    let running = collector.start();
    let mut agents: Vec<Agent> = (0..AGENTS)
        .map(|index| Agent::start(dir.path(), index, &collector, spool))
        .collect();
    wait_until(
        "every agent reported a few times",
        Duration::from_secs(20),
        || collector.stored_reports() >= (AGENTS * 4) as f64,
    );

    // 1. A clean stop: the collector finishes its batch and exits 0; agents spool meanwhile.
    let status = running.terminate();
    assert!(status.success(), "SIGTERM: {status}");
    std::thread::sleep(outage);

    // 2. Back, and killed with SIGKILL while the agents replay what they spooled.
    let running = collector.start();
    let before_kill = collector.stored_reports();
    std::thread::sleep(Duration::from_millis(400));
    let during_replay = collector.stored_reports() - before_kill;
    running.kill();
    std::thread::sleep(Duration::from_secs(1));

    // 3. Back for good: wait until every spool is empty, then stop the agents.
    let running = collector.start();
    wait_until("every spool drained", Duration::from_secs(30), || {
        agents.iter().all(|agent| agent.spooled().len() <= 1)
    });
    // A few more heartbeats, so that drops counted last have travelled in a report.
    std::thread::sleep(Duration::from_secs(1));
    for agent in &mut agents {
        let status = agent.process.take().unwrap().terminate();
        assert!(status.success(), "agent SIGTERM: {status}");
    }

    let mut tally = Tally::default();
    println!(
        "{:<38} {:>9} {:>7} {:>12} {:>14} {:>9} {:>10}",
        "agent", "produced", "stored", "dropped, not", "dropped, maybe", "in spool", "ambiguous"
    );
    for agent in &agents {
        let id = agent.id();
        let host = collector.json(&format!("/api/v1/hosts/{id}"));
        let stored = host["agent"]["reports_received_total"].as_u64().unwrap();
        let produced = agent.produced();
        let counts = agent.delivery_counts();
        // The report in flight at the agent's SIGTERM may be stored without the agent having
        // seen the acknowledgement: still spooled, it will be a duplicate. Count it once.
        let last_stored = host["agent"]["last_sequence"].as_u64().unwrap();
        let told_collector = host["agent"]["dropped_reports_total"].as_u64().unwrap();
        let still_owed =
            agent.dropped_not_yet_reported() + agent.dropped_in_spooled_reports(last_stored);
        // A report dropped after an ambiguous delivery gives the drop count it carried to the
        // next report: if the collector had stored it, the collector has that count twice.
        let dropped = counts.dropped_not_stored + counts.dropped_maybe_stored;
        let told_twice = (told_collector + still_owed).checked_sub(dropped);
        assert!(
            told_twice.is_some_and(|twice| twice <= counts.recounted_after_ambiguous_delivery),
            "agent {id}: its drop counts {counts:?} against told the collector \
             {told_collector} + not yet told {still_owed}"
        );
        let left = agent
            .spooled()
            .into_iter()
            .filter(|sequence| *sequence > last_stored)
            .count() as u64;
        println!(
            "{id:<38} {produced:>9} {stored:>7} {:>12} {:>14} {left:>9} {:>10}",
            counts.dropped_not_stored, counts.dropped_maybe_stored, counts.ambiguous_deliveries
        );
        // Every report is in exactly one place: stored, dropped unstored, or still spooled.
        // Only the reports dropped after an ambiguous delivery can also be stored; the
        // accounting says how many were.
        let counted = stored + counts.dropped_not_stored + counts.dropped_maybe_stored + left;
        assert!(
            counted >= produced,
            "agent {id}: produced {produced} > stored {stored} + dropped {counts:?} + still \
             spooled {left}: reports lost uncounted"
        );
        let dropped_but_stored = counted - produced;
        assert!(
            dropped_but_stored <= counts.dropped_maybe_stored,
            "agent {id}: stored {stored} + dropped {counts:?} + still spooled {left} exceeds \
             produced {produced} by {dropped_but_stored}: more than the reports dropped after \
             an ambiguous delivery, so a stored report was counted as certainly not stored"
        );
        assert_eq!(
            produced,
            stored
                + counts.dropped_not_stored
                + (counts.dropped_maybe_stored - dropped_but_stored)
                + left,
            "agent {id}"
        );
        tally.produced += produced;
        tally.stored += stored;
        tally.dropped_not_stored += counts.dropped_not_stored;
        tally.dropped_maybe_stored += counts.dropped_maybe_stored;
        tally.dropped_but_stored += dropped_but_stored;
        tally.left_in_spool += left;
        tally.ambiguous_deliveries += counts.ambiguous_deliveries;
    }
    println!(
        "total: produced {} = stored {} + dropped, not stored {} + (dropped after an ambiguous \
         delivery {} - of which stored {}) + in spool {}; {} ambiguous deliveries; {} stored \
         in the 400 ms before SIGKILL; {:.1} s",
        tally.produced,
        tally.stored,
        tally.dropped_not_stored,
        tally.dropped_maybe_stored,
        tally.dropped_but_stored,
        tally.left_in_spool,
        tally.ambiguous_deliveries,
        during_replay,
        started.elapsed().as_secs_f64()
    );
    assert!(running.terminate().success());
    tally
}

#[test]
fn with_a_large_spool_nothing_is_lost_through_stop_restart_and_sigkill() {
    let tally = run_faults(
        "max_size = \"100MiB\"\nmax_age = \"1h\"",
        Duration::from_secs(3),
    );
    assert_eq!(
        tally.dropped_not_stored + tally.dropped_maybe_stored,
        0,
        "{tally:?}"
    );
    // Each agent spooled about 12 reports during the outage.
    assert!(tally.produced >= (AGENTS * 15) as u64, "{tally:?}");
}

#[test]
fn with_a_short_spool_age_the_dropped_reports_are_counted() {
    // Reports older than a second are dropped: a 3 s outage loses about 2 s of each agent's.
    let tally = run_faults(
        "max_size = \"64KiB\"\nmax_age = \"1s\"",
        Duration::from_secs(3),
    );
    assert!(
        tally.dropped_not_stored + tally.dropped_maybe_stored > 0,
        "{tally:?}"
    );
}
