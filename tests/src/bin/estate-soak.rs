//! `estate-soak`: a bounded soak of the real `estate-collector` on loopback. Starts the
//! collector binary (next to this one) on a temporary database, then runs many simulated agents
//! over real gRPC for a fixed time, each sending a full inventory first and then a heartbeat
//! with check results every interval (with jitter). Prints the collector's resident memory and
//! the acknowledgement latency (p50, p99) over the first and the last window, and the growth.
//!
//! ```text
//! cargo build --release -p estate-collector -p estate-tests
//! target/release/estate-soak --agents 2000 --duration 240 --interval 5
//! ```

#[cfg(target_os = "linux")]
fn main() -> anyhow::Result<()> {
    linux::main()
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("estate-soak reads the collector's memory from /proc: Linux only");
    std::process::exit(2);
}

#[cfg(target_os = "linux")]
mod linux {
    use anyhow::Context as _;
    use estate_proto::v1::ingest_client::IngestClient;
    use estate_proto::v1::{
        CheckResult, HostIdentity, HostVitals, Inventory, OperatingSystem, Outcome, ReportRequest,
        VolumeUsage,
    };
    use std::process::{Child, Command, Stdio};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};
    use tonic::transport::Channel;

    const USAGE: &str = "usage: estate-soak [--agents N] [--duration SECONDS] [--interval \
                         SECONDS] [--connections N] [--window SECONDS]";

    #[derive(Debug, Clone, Copy)]
    struct Settings {
        agents: usize,
        duration: Duration,
        interval: Duration,
        connections: usize,
        window: Duration,
    }

    fn parse() -> anyhow::Result<Settings> {
        let mut settings = Settings {
            agents: 2000,
            duration: Duration::from_secs(240),
            interval: Duration::from_secs(5),
            connections: 64,
            window: Duration::from_secs(30),
        };
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            let mut value = || -> anyhow::Result<u64> {
                let text = args
                    .next()
                    .with_context(|| format!("{flag} needs a value\n{USAGE}"))?;
                text.parse()
                    .with_context(|| format!("{flag} `{text}` is not a number\n{USAGE}"))
            };
            match flag.as_str() {
                "--agents" => settings.agents = value()?.max(1) as usize,
                "--duration" => settings.duration = Duration::from_secs(value()?.clamp(10, 3600)),
                "--interval" => settings.interval = Duration::from_secs(value()?.max(1)),
                "--connections" => settings.connections = value()?.max(1) as usize,
                "--window" => settings.window = Duration::from_secs(value()?.max(1)),
                other => anyhow::bail!("unknown argument `{other}`\n{USAGE}"),
            }
        }
        if settings.window * 2 > settings.duration {
            settings.window = settings.duration / 3;
        }
        Ok(settings)
    }

    /// The collector process, killed when dropped.
    struct Collector(Child);

    impl Drop for Collector {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn rss_bytes(pid: u32) -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|status| {
                status
                    .lines()
                    .find(|line| line.starts_with("VmRSS:"))
                    .and_then(|line| line.split_whitespace().nth(1))
                    .and_then(|kib| kib.parse::<u64>().ok())
            })
            .map_or(0, |kib| kib * 1024)
    }

    fn report(agent: usize, sequence: u64, full: bool) -> ReportRequest {
        let inventory = full.then(|| Inventory {
            operatingsystem: Some(OperatingSystem {
                name: "Debian GNU/Linux".into(),
                version: "12".into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        ReportRequest {
            identity: Some(HostIdentity {
                agent_id: format!("00000000-0000-4000-9000-{agent:012}"),
                hostname: format!("soak-{agent:05}"),
                machine_id: format!("{agent:032x}"),
                ..Default::default()
            }),
            agent_version: estate_agent::VERSION.into(),
            sequence,
            agent_time_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
            inventory_hash: format!("sha256:{agent:064x}"),
            inventory,
            vitals: Some(HostVitals {
                memory_available_bytes: 4 << 30,
                volumes: vec![VolumeUsage {
                    mount: "/".into(),
                    total_bytes: 100 << 30,
                    free_bytes: (40 << 30) + sequence,
                }],
                ..Default::default()
            }),
            checks: (0..5)
                .map(|index| CheckResult {
                    check: format!("check-{index}"),
                    kind: "tcp".into(),
                    target: format!("10.0.0.{index}:443"),
                    // One check flaps now and then, so events are written too.
                    outcome: if index == 0 && sequence.is_multiple_of(10) {
                        Outcome::Fail as i32
                    } else {
                        Outcome::Pass as i32
                    },
                    duration_seconds: 0.002,
                    ..Default::default()
                })
                .collect(),
            dropped_reports: 0,
            check_names: (0..5).map(|index| format!("check-{index}")).collect(),
        }
    }

    /// Acknowledgement latencies in ms, with the time each was taken (since start).
    type Samples = Arc<Mutex<Vec<(Duration, f64)>>>;

    fn percentile(sorted: &[f64], fraction: f64) -> f64 {
        if sorted.is_empty() {
            return f64::NAN;
        }
        let index = ((sorted.len() - 1) as f64 * fraction).round() as usize;
        sorted[index]
    }

    struct Window {
        reports: usize,
        p50_ms: f64,
        p99_ms: f64,
        rss: u64,
    }

    fn window(samples: &[(Duration, f64)], from: Duration, to: Duration, rss: u64) -> Window {
        let mut latencies: Vec<f64> = samples
            .iter()
            .filter(|(at, _)| *at >= from && *at < to)
            .map(|(_, ms)| *ms)
            .collect();
        latencies.sort_by(f64::total_cmp);
        Window {
            reports: latencies.len(),
            p50_ms: percentile(&latencies, 0.5),
            p99_ms: percentile(&latencies, 0.99),
            rss,
        }
    }

    pub fn main() -> anyhow::Result<()> {
        let settings = parse()?;
        let dir = tempfile::tempdir()?;
        let bin_dir = std::env::current_exe()?
            .parent()
            .context("no directory for this program")?
            .to_owned();
        let grpc = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let http = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let child = Command::new(bin_dir.join("estate-collector"))
            .arg("--insecure")
            .args(["--grpc-listen", &grpc.to_string()])
            .args(["--http-listen", &http.to_string()])
            .arg("--database")
            .arg(dir.path().join("soak.db"))
            .args(["--stale-after", "10m"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| {
                format!(
                    "failed to start `{}`: build it first (cargo build --release -p \
                     estate-collector)",
                    bin_dir.join("estate-collector").display()
                )
            })?;
        let collector = Collector(child);
        let pid = collector.0.id();

        let runtime = tokio::runtime::Runtime::new()?;
        runtime.block_on(async move {
            // The collector is ready once its gRPC port accepts connections.
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut channels = Vec::with_capacity(settings.connections);
            while channels.is_empty() {
                match Channel::from_shared(format!("http://{grpc}"))?.connect().await {
                    Ok(channel) => channels.push(channel),
                    Err(error) if Instant::now() > deadline => {
                        anyhow::bail!("the collector did not start: {error}")
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
            for _ in 1..settings.connections {
                channels.push(Channel::from_shared(format!("http://{grpc}"))?.connect().await?);
            }
            println!(
                "estate-soak: {} agents over {} connections, a report every {:?} each, for {:?}; \
                 collector pid {pid}",
                settings.agents, settings.connections, settings.interval, settings.duration
            );
            let rss_at_start = rss_bytes(pid);
            let samples: Samples = Arc::default();
            let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let started = Instant::now();
            let end = started + settings.duration;
            let mut tasks = tokio::task::JoinSet::new();
            for agent in 0..settings.agents {
                let mut client = IngestClient::new(channels[agent % channels.len()].clone());
                let samples = Arc::clone(&samples);
                let errors = Arc::clone(&errors);
                tasks.spawn(async move {
                    // Agents start spread over one interval, as a fleet does.
                    let offset = settings.interval.mul_f64(agent as f64 / settings.agents as f64);
                    tokio::time::sleep(offset).await;
                    let mut sequence = 0;
                    while Instant::now() < end {
                        sequence += 1;
                        let sent = Instant::now();
                        match client.report(report(agent, sequence, sequence == 1)).await {
                            Ok(_) => {
                                let ms = sent.elapsed().as_secs_f64() * 1000.0;
                                samples.lock().unwrap().push((sent - started, ms));
                            }
                            Err(_) => {
                                errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                        }
                        let jitter = rand_fraction(agent, sequence) * 0.2 - 0.1;
                        tokio::time::sleep(settings.interval.mul_f64(1.0 + jitter)).await;
                    }
                });
            }
            // Memory at the end of the first window and at the end.
            tokio::time::sleep(settings.window).await;
            let rss_first = rss_bytes(pid);
            tokio::time::sleep_until((end - Duration::from_millis(200)).into()).await;
            let rss_last = rss_bytes(pid);
            while tasks.join_next().await.is_some() {}

            let samples = samples.lock().unwrap().clone();
            let first = window(&samples, Duration::ZERO, settings.window, rss_first);
            let last = window(
                &samples,
                settings.duration - settings.window,
                settings.duration,
                rss_last,
            );
            let mib = |bytes: u64| bytes as f64 / (1 << 20) as f64;
            println!("collector RSS before load: {:.1} MiB", mib(rss_at_start));
            for (name, figures) in [("first", &first), ("last", &last)] {
                println!(
                    "{name} {:?}: {} reports ({:.0}/s), ack p50 {:.2} ms, p99 {:.2} ms, RSS {:.1} MiB",
                    settings.window,
                    figures.reports,
                    figures.reports as f64 / settings.window.as_secs_f64(),
                    figures.p50_ms,
                    figures.p99_ms,
                    mib(figures.rss)
                );
            }
            println!(
                "growth first → last window: RSS {:+.1} MiB ({:.2}x), p50 {:.2}x, p99 {:.2}x; \
                 {} reports acknowledged, {} errors",
                mib(last.rss) - mib(first.rss),
                last.rss as f64 / first.rss.max(1) as f64,
                last.p50_ms / first.p50_ms,
                last.p99_ms / first.p99_ms,
                samples.len(),
                errors.load(std::sync::atomic::Ordering::Relaxed)
            );
            anyhow::Ok(())
        })?;
        drop(collector);
        Ok(())
    }

    /// A cheap deterministic value in [0, 1) per agent and report, for jitter.
    fn rand_fraction(agent: usize, sequence: u64) -> f64 {
        let mut x = (agent as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ sequence;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}
