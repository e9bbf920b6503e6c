//! `estate-load`: the load generator. Simulates N agents reporting to a real collector over
//! gRPC on loopback and prints reports/s, acknowledgement latency p50/p99, the collector's CPU
//! time per report and its memory per host.
//!
//! The collector runs as a child process (this program re-executed), so its CPU time and
//! resident memory are read from `/proc/<pid>` apart from the load generator's own.
//!
//! Phases: every agent first registers (one report with its full inventory), then for
//! `--duration` seconds agents send heartbeats (vitals and 12 check results), a share of them
//! (`--change-share`) with a changed inventory. With `--interval S` each agent reports every
//! S seconds (a fixed offered rate of agents / S reports per second, sent open-loop whether or
//! not the collector keeps up); with `--interval 0` agents send back to back (peak throughput).
//! Bounded in count and time; loopback only.

#[cfg(unix)]
fn main() -> anyhow::Result<()> {
    unix::main()
}

/// The figures come from Linux's `/proc`.
#[cfg(not(unix))]
fn main() {
    eprintln!("estate-load reads process figures from /proc; it runs on Linux only");
    std::process::exit(1);
}

#[cfg(unix)]
mod unix {
    use anyhow::{Context as _, bail};
    use estate_proto::v1::ingest_client::IngestClient;
    use estate_tests::process::{self, ProcessSample};
    use estate_tests::{flags, simulation};
    use std::io::{BufRead as _, Read as _, Write as _};
    use std::process::{Command, Stdio};
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};
    use tonic::transport::{Channel, Endpoint};

    const USAGE: &str = "usage: estate-load [--agents N] [--interval SECONDS (0: back to back)] \
        [--duration SECONDS] [--change-share FRACTION] [--connections N] [--concurrency N]";

    #[derive(Debug, Clone, Copy)]
    struct Settings {
        /// Simulated agents.
        agents: usize,
        /// Each agent reports every this often; zero sends back to back (peak throughput).
        interval: Duration,
        /// Length of the heartbeat phase.
        duration: Duration,
        /// Share of heartbeats that carry a changed inventory.
        change_share: f64,
        /// HTTP/2 connections the agents' requests are spread over.
        connections: usize,
        /// Reports in flight at once during registration and in back-to-back mode; in fixed-rate
        /// mode, the most in flight before further reports are counted as not sent.
        concurrency: usize,
    }

    pub fn main() -> anyhow::Result<()> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        if args.first().map(String::as_str) == Some("serve-collector") {
            let dir = args.get(1).context("serve-collector needs a directory")?;
            return serve_collector(std::path::Path::new(dir));
        }
        let mut settings = Settings {
            agents: 1000,
            interval: Duration::ZERO,
            duration: Duration::from_secs(10),
            change_share: 0.01,
            connections: 16,
            concurrency: 256,
        };
        for (flag, text) in flags::pairs(&args[..], USAGE)? {
            let number = || flags::number(flag, text);
            match flag {
                "--agents" => settings.agents = flags::count(flag, text)?,
                "--interval" => settings.interval = Duration::from_secs_f64(number()?),
                "--duration" => settings.duration = Duration::from_secs_f64(number()?),
                "--change-share" => {
                    let share = number()?;
                    if share > 1.0 {
                        bail!("`--change-share` `{text}` must be between 0 and 1");
                    }
                    settings.change_share = share;
                }
                "--connections" => settings.connections = flags::count(flag, text)?,
                "--concurrency" => settings.concurrency = flags::count(flag, text)?,
                other => bail!("unknown argument `{other}`\n{USAGE}"),
            }
        }
        println!("estate-load: {settings:?}");
        tokio::runtime::Runtime::new()?.block_on(run(settings))
    }

    /// The child: a collector with its database in `dir`, printing its gRPC address, stopping
    /// when its standard input closes.
    fn serve_collector(dir: &std::path::Path) -> anyhow::Result<()> {
        let runtime = tokio::runtime::Runtime::new()?;
        runtime.block_on(async {
            let config = estate_collector::config::CollectorConfig {
                database: dir.join("load.db"),
                ..Default::default()
            };
            let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let http = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            println!("{} {}", grpc.local_addr()?, http.local_addr()?);
            std::io::stdout().flush()?;
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            std::thread::spawn(move || {
                let _ = std::io::stdin().read_to_end(&mut Vec::new());
                let _ = stop.send(());
            });
            estate_collector::run(config, grpc, http, async {
                let _ = stopped.await;
            })
            .await
        })
    }

    /// The collector child process and its address.
    struct Collector {
        child: std::process::Child,
        grpc: std::net::SocketAddr,
    }

    impl Collector {
        fn start(dir: &std::path::Path) -> anyhow::Result<Self> {
            let mut child = Command::new(std::env::current_exe()?)
                .arg("serve-collector")
                .arg(dir)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .context("failed to start the collector child")?;
            let stdout = child.stdout.take().context("no stdout")?;
            let mut line = String::new();
            std::io::BufReader::new(stdout).read_line(&mut line)?;
            let grpc = line
                .split_whitespace()
                .next()
                .with_context(|| format!("the collector child printed `{line}`"))?
                .parse()
                .with_context(|| format!("the collector child printed `{line}`"))?;
            Ok(Collector { child, grpc })
        }

        fn sample(&self) -> anyhow::Result<ProcessSample> {
            process::sample(self.child.id())
        }

        /// Closes the child's input (its stop signal) and waits for it.
        fn stop(mut self) -> anyhow::Result<()> {
            drop(self.child.stdin.take());
            let status = self.child.wait()?;
            if !status.success() {
                bail!("the collector child failed: {status}");
            }
            Ok(())
        }
    }

    /// What one phase measured.
    #[derive(Debug, Default)]
    struct PhaseFigures {
        sent: usize,
        /// Acknowledgement latency of each successful report, in microseconds.
        latencies: Vec<u32>,
        errors: usize,
        first_error: Option<String>,
        /// Reports due at the offered rate but not sent because too many were in flight.
        not_sent: usize,
        elapsed: Duration,
    }

    impl PhaseFigures {
        fn percentile_ms(&self, fraction: f64) -> f64 {
            if self.latencies.is_empty() {
                return f64::NAN;
            }
            let index = ((self.latencies.len() as f64 - 1.0) * fraction).round() as usize;
            f64::from(self.latencies[index]) / 1000.0
        }

        fn acknowledged_per_second(&self) -> f64 {
            self.latencies.len() as f64 / self.elapsed.as_secs_f64()
        }
    }

    /// Shared by every sending task.
    struct Load {
        clients: Vec<IngestClient<Channel>>,
        sequences: Vec<AtomicU64>,
        revisions: Vec<AtomicU64>,
        change_share: f64,
        latencies: Mutex<Vec<u32>>,
        errors: AtomicUsize,
        first_error: Mutex<Option<String>>,
        in_flight: AtomicUsize,
    }

    impl Load {
        /// Sends the next report of `agent` and records the outcome.
        async fn send(&self, agent: usize, register: bool) {
            let sequence = self.sequences[agent].fetch_add(1, Ordering::Relaxed) + 1;
            // A deterministic share of heartbeats carries an upgraded package.
            let changed = !register && unit_hash(agent as u64, sequence) < self.change_share;
            let revision = if changed {
                self.revisions[agent].fetch_add(1, Ordering::Relaxed) + 1
            } else {
                self.revisions[agent].load(Ordering::Relaxed)
            };
            let report =
                simulation::report(agent, sequence, revision, register || changed, now_ms());
            let mut client = self.clients[agent % self.clients.len()].clone();
            let sent = Instant::now();
            match client.report(report).await {
                Ok(_) => {
                    let micros = sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                    self.latencies
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(micros);
                }
                Err(status) => {
                    self.errors.fetch_add(1, Ordering::Relaxed);
                    let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
                    if first.is_none() {
                        *first = Some(format!("{:?}: {}", status.code(), status.message()));
                    }
                }
            }
        }

        fn take_figures(&self, sent: usize, not_sent: usize, elapsed: Duration) -> PhaseFigures {
            let mut latencies =
                std::mem::take(&mut *self.latencies.lock().unwrap_or_else(|p| p.into_inner()));
            latencies.sort_unstable();
            PhaseFigures {
                sent,
                latencies,
                errors: self.errors.swap(0, Ordering::Relaxed),
                first_error: self
                    .first_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take(),
                not_sent,
                elapsed,
            }
        }
    }

    /// A number in [0, 1) derived from two integers (splitmix64), for reproducible choices.
    fn unit_hash(a: u64, b: u64) -> f64 {
        let mut z = a
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .wrapping_add(b)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    fn now_ms() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_millis() as i64)
    }

    /// Sends one report for each agent in `agents`, `concurrency` at a time, until `deadline`.
    async fn back_to_back(
        load: &Arc<Load>,
        agents: usize,
        concurrency: usize,
        register: bool,
        deadline: Option<Instant>,
    ) -> usize {
        let next = Arc::new(AtomicUsize::new(0));
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..concurrency.min(agents) {
            let (load, next) = (Arc::clone(load), Arc::clone(&next));
            workers.spawn(async move {
                let mut sent = 0;
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    if register && index >= agents {
                        break;
                    }
                    if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                        break;
                    }
                    load.send(index % agents, register).await;
                    sent += 1;
                }
                sent
            });
        }
        let mut sent = 0;
        while let Some(result) = workers.join_next().await {
            sent += result.unwrap_or(0);
        }
        sent
    }

    /// Sends at `rate` reports per second, open-loop, agents in turn, until `duration` has
    /// passed; returns (sent, not sent because `cap` reports were already in flight).
    async fn fixed_rate(
        load: &Arc<Load>,
        agents: usize,
        rate: f64,
        duration: Duration,
        cap: usize,
    ) -> (usize, usize) {
        let started = Instant::now();
        let (mut due_so_far, mut sent, mut not_sent) = (0usize, 0usize, 0usize);
        let mut tasks = tokio::task::JoinSet::new();
        let mut ticker = tokio::time::interval(Duration::from_millis(1));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        while started.elapsed() < duration {
            ticker.tick().await;
            let due = (started.elapsed().as_secs_f64().min(duration.as_secs_f64()) * rate) as usize;
            while due_so_far < due {
                let agent = due_so_far % agents;
                due_so_far += 1;
                if load.in_flight.load(Ordering::Relaxed) >= cap {
                    not_sent += 1;
                    continue;
                }
                load.in_flight.fetch_add(1, Ordering::Relaxed);
                sent += 1;
                let load = Arc::clone(load);
                tasks.spawn(async move {
                    load.send(agent, false).await;
                    load.in_flight.fetch_sub(1, Ordering::Relaxed);
                });
            }
            while tasks.try_join_next().is_some() {}
        }
        while tasks.join_next().await.is_some() {}
        (sent, not_sent)
    }

    async fn run(settings: Settings) -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let collector = Collector::start(dir.path())?;
        let endpoint = Endpoint::from_shared(format!("http://{}", collector.grpc))?
            .connect_timeout(Duration::from_secs(5));
        let mut clients = Vec::with_capacity(settings.connections);
        for _ in 0..settings.connections {
            clients.push(IngestClient::new(endpoint.connect().await?));
        }
        let load = Arc::new(Load {
            clients,
            sequences: (0..settings.agents).map(|_| AtomicU64::new(0)).collect(),
            revisions: (0..settings.agents).map(|_| AtomicU64::new(0)).collect(),
            change_share: settings.change_share,
            latencies: Mutex::new(Vec::new()),
            errors: AtomicUsize::new(0),
            first_error: Mutex::new(None),
            in_flight: AtomicUsize::new(0),
        });
        let inventory_bytes = prost::Message::encoded_len(&simulation::inventory(0, 0));

        let empty = collector.sample()?;
        let started = Instant::now();
        let sent = back_to_back(&load, settings.agents, settings.concurrency, true, None).await;
        let registration = load.take_figures(sent, 0, started.elapsed());
        let registered = collector.sample()?;

        let started = Instant::now();
        let (sent, not_sent) = if settings.interval.is_zero() {
            let deadline = started + settings.duration;
            let sent = back_to_back(
                &load,
                settings.agents,
                settings.concurrency,
                false,
                Some(deadline),
            )
            .await;
            (sent, 0)
        } else {
            let rate = settings.agents as f64 / settings.interval.as_secs_f64();
            fixed_rate(
                &load,
                settings.agents,
                rate,
                settings.duration,
                settings.concurrency.max(1000),
            )
            .await
        };
        let heartbeats = load.take_figures(sent, not_sent, started.elapsed());
        let after = collector.sample()?;
        collector.stop()?;

        println!(
            "machine: {} cpus; the load generator and the collector share them",
            std::thread::available_parallelism().map_or(0, usize::from)
        );
        println!(
            "reports: inventory {:.1} KiB encoded, {} check results per report, {:.1}% of heartbeats with a changed inventory",
            inventory_bytes as f64 / 1024.0,
            simulation::CHECKS_PER_REPORT,
            settings.change_share * 100.0
        );
        let offered = if settings.interval.is_zero() {
            "back to back (peak)".to_owned()
        } else {
            format!(
                "{:.0} reports/s ({} agents every {:?})",
                settings.agents as f64 / settings.interval.as_secs_f64(),
                settings.agents,
                settings.interval
            )
        };
        println!();
        println!(
            "{:<28} {:>9} {:>9} {:>9} {:>9} {:>7} {:>9} {:>12}",
            "phase", "sent", "acked", "acked/s", "p50 ms", "p99 ms", "errors", "cpu µs/rep"
        );
        for (name, figures, before, after) in [
            ("registration (inventory)", &registration, empty, registered),
            ("heartbeats", &heartbeats, registered, after),
        ] {
            let acked = figures.latencies.len();
            println!(
                "{name:<28} {:>9} {acked:>9} {:>9.0} {:>9.2} {:>7.1} {:>9} {:>12.1}",
                figures.sent,
                figures.acknowledged_per_second(),
                figures.percentile_ms(0.50),
                figures.percentile_ms(0.99),
                figures.errors,
                (after.cpu_seconds - before.cpu_seconds) * 1e6 / acked.max(1) as f64,
            );
            if let Some(error) = &figures.first_error {
                println!("  first error: {error}");
            }
        }
        println!("heartbeat offered rate: {offered}");
        if heartbeats.not_sent > 0 {
            println!(
                "  {} reports due were not sent: too many in flight (the collector fell behind)",
                heartbeats.not_sent
            );
        }
        println!(
            "collector cpu during heartbeats: {:.2} cores",
            (after.cpu_seconds - registered.cpu_seconds) / heartbeats.elapsed.as_secs_f64()
        );
        println!(
            "collector memory: {:.1} MiB empty, {:.1} MiB with {} hosts: {:.1} KiB per host; {:.1} MiB at the end",
            empty.rss_bytes as f64 / 1048576.0,
            registered.rss_bytes as f64 / 1048576.0,
            settings.agents,
            registered.rss_bytes.saturating_sub(empty.rss_bytes) as f64
                / 1024.0
                / settings.agents as f64,
            after.rss_bytes as f64 / 1048576.0
        );
        if !settings.interval.is_zero() {
            let p99 = heartbeats.percentile_ms(0.99);
            let sustained = heartbeats.errors == 0 && heartbeats.not_sent == 0;
            println!(
                "target (every report acknowledged, p99 < 100 ms at the offered rate): {}",
                if sustained && p99 < 100.0 {
                    "met"
                } else {
                    "missed"
                }
            );
        }
        Ok(())
    }
}
