//! `estate-bench`: the benchmark program. Prints, side by side in one run,
//!
//! 1. the CPU time and peak memory of one full agent inventory of this machine, next to a peer
//!    doing a subset of the same work (`dpkg-query --show`, the package listing) and to the cost
//!    of starting this program and doing nothing (the floor);
//! 2. the collector's ingest rate and acknowledgement latency for N simulated agents over real
//!    gRPC on loopback, next to a no-op gRPC server driven by the same client (the transport
//!    ceiling), with SQLite or (`--database postgres://…`, a fresh database created on that
//!    server and dropped after) PostgreSQL, with the CPU time of the whole process per report
//!    in each run;
//! 3. the rows/s of that ingest next to raw batched upserts of the same rows into the same
//!    database (the storage ceiling).
//!
//! Figures are printed, never asserted. Bounded in count; loopback only.

#[cfg(unix)]
fn main() -> anyhow::Result<()> {
    unix::main()
}

/// The figures come from Unix process accounting (`getrusage`, `/proc`).
#[cfg(not(unix))]
fn main() {
    eprintln!("estate-bench measures processes with Unix accounting; it runs on Linux only");
    std::process::exit(1);
}

#[cfg(unix)]
mod unix {
    use anyhow::{Context as _, bail};
    use estate_proto::v1::ingest_client::IngestClient;
    use estate_proto::v1::ingest_server::{Ingest, IngestServer};
    use estate_proto::v1::{
        CheckResult, HostIdentity, HostVitals, Inventory, Measurement, Outcome, ReportRequest,
        ReportResponse, VolumeUsage,
    };
    use estate_tests::flags;
    use estate_tests::process::{self, ChildCost, median_cost};
    use estate_tests::simulation::CHECKS_PER_REPORT;
    use nix::sys::resource::UsageWho;
    use std::path::Path;
    use std::time::{Duration, Instant};
    use tokio::net::TcpListener;

    const USAGE: &str = "usage: estate-bench [--agents N] [--reports N] [--rounds N] [--runs N] [--database postgres://…]";

    #[derive(Debug, Clone)]
    struct Settings {
        /// Simulated agents, each on its own connection.
        agents: usize,
        /// Timed heartbeats per agent, into each server (the collector and the ceiling).
        reports: usize,
        /// The timed heartbeats go in this many rounds, alternating between the ceiling and
        /// the collector, so that the machine's other tenants slow both alike.
        rounds: usize,
        /// Repetitions of each inventory measurement (the median is printed).
        runs: usize,
        /// A PostgreSQL server to ingest into instead of a SQLite file; the benchmark creates
        /// (and drops) a database of its own there.
        postgres: Option<String>,
    }

    pub fn main() -> anyhow::Result<()> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        match args.first().map(String::as_str) {
            // Internal: runs one command and prints its CPU seconds and peak RSS.
            Some(process::MEASURE_CHILD) => return process::measure_child(&args[1..]),
            // Internal: one full inventory, as the agent does it.
            Some(process::INVENTORY_ONCE) => {
                process::inventory_once();
                return Ok(());
            }
            Some("noop") => return Ok(()),
            _ => {}
        }
        let mut settings = Settings {
            agents: 50,
            reports: 100,
            rounds: 5,
            runs: 5,
            postgres: None,
        };
        for (flag, text) in flags::pairs(&args, USAGE)? {
            match flag {
                "--agents" => settings.agents = flags::count(flag, text)?,
                "--reports" => settings.reports = flags::count(flag, text)?,
                "--rounds" => settings.rounds = flags::count(flag, text)?,
                "--runs" => settings.runs = flags::count(flag, text)?,
                "--database" => {
                    estate_collector::store::postgres::check_url(text)?;
                    settings.postgres = Some(text.to_owned());
                }
                other => bail!("unknown argument `{other}`\n{USAGE}"),
            }
        }
        if settings.rounds == 0 || settings.rounds > settings.reports {
            bail!(
                "--rounds {} must be between 1 and --reports ({})\n{USAGE}",
                settings.rounds,
                settings.reports
            );
        }
        println!(
            "estate-bench: {} agents, {} reports each in {} rounds, {} runs, {}",
            settings.agents,
            settings.reports,
            settings.rounds,
            settings.runs,
            settings.postgres.as_deref().map_or_else(
                || "SQLite".to_owned(),
                estate_collector::store::postgres::redact_url
            )
        );
        println!("machine: {}", machine_summary());
        inventory_benchmark(&settings)?;
        // Created and dropped outside the runtime: the PostgreSQL client blocks.
        let scratch = settings
            .postgres
            .as_deref()
            .map(ScratchDatabase::create)
            .transpose()?;
        let url = scratch.as_ref().map(|scratch| scratch.url.clone());
        let result = tokio::runtime::Runtime::new()?.block_on(ingest_benchmark(&settings, url));
        drop(scratch);
        result
    }

    // ---------------------------------------------------------------------------------------------
    // Inventory cost
    // ---------------------------------------------------------------------------------------------

    fn inventory_benchmark(settings: &Settings) -> anyhow::Result<()> {
        let me = std::env::current_exe()?;
        let me = me.to_str().context("the program path is not UTF-8")?;
        let ours = median_cost(&[me, process::INVENTORY_ONCE], settings.runs)?;
        let floor = median_cost(&[me, "noop"], settings.runs)?;
        println!();
        println!(
            "== one full inventory of this machine (median of {} runs)",
            settings.runs
        );
        println!("{:<44} {:>12} {:>14}", "", "cpu ms", "peak rss MiB");
        let row = |name: &str, cost: ChildCost| {
            println!(
                "{name:<44} {:>12.1} {:>14.1}",
                cost.cpu_seconds * 1000.0,
                cost.peak_rss_bytes as f64 / (1024.0 * 1024.0)
            );
        };
        row("estate-agent inventory (all areas)", ours);
        row("floor: start this program, do nothing", floor);
        match median_cost(&["dpkg-query", "--show"], settings.runs) {
            Ok(peer) => {
                row("peer: dpkg-query --show (packages only)", peer);
                println!(
                    "ratio cpu estate/dpkg-query: {:.2} (estate reads every area, dpkg-query only the package database)",
                    ours.cpu_seconds / peer.cpu_seconds.max(1e-6)
                );
            }
            Err(error) => println!("peer: dpkg-query not measured: {error:#}"),
        }
        Ok(())
    }

    // ---------------------------------------------------------------------------------------------
    // Ingest rate
    // ---------------------------------------------------------------------------------------------

    /// A no-op collector: acknowledges at once, stores nothing. The transport ceiling.
    #[derive(Debug)]
    struct NoopIngest;

    #[tonic::async_trait]
    impl Ingest for NoopIngest {
        async fn report(
            &self,
            _request: tonic::Request<ReportRequest>,
        ) -> Result<tonic::Response<ReportResponse>, tonic::Status> {
            Ok(tonic::Response::new(ReportResponse::default()))
        }
    }

    #[derive(Debug, Default)]
    struct IngestFigures {
        reports: usize,
        elapsed: Duration,
        /// CPU time of the whole process during the run.
        cpu: Duration,
        latencies: Vec<Duration>,
    }

    impl IngestFigures {
        fn per_second(&self) -> f64 {
            self.reports as f64 / self.elapsed.as_secs_f64()
        }

        fn percentile(&self, fraction: f64) -> Duration {
            let index = ((self.latencies.len() as f64 - 1.0) * fraction).round() as usize;
            self.latencies[index]
        }

        /// Adds one round's figures to these.
        fn add(&mut self, round: IngestFigures) {
            self.reports += round.reports;
            self.elapsed += round.elapsed;
            self.cpu += round.cpu;
            self.latencies.extend(round.latencies);
        }
    }

    /// A dozen check results, as a typical agent sends with each heartbeat.
    fn check_results() -> Vec<CheckResult> {
        (0..12)
            .map(|index| CheckResult {
                check: format!("check-{index}"),
                kind: "tcp".into(),
                target: format!("server-{index}.example.org:443"),
                outcome: Outcome::Pass as i32,
                started_unix_ms: 1,
                duration_seconds: 0.002,
                measurements: vec![Measurement {
                    name: "connect_seconds".into(),
                    value: 0.002,
                    text: String::new(),
                }],
                ..Default::default()
            })
            .collect()
    }

    fn simulated_report(
        agent: usize,
        sequence: u64,
        inventory: Option<&Inventory>,
    ) -> ReportRequest {
        ReportRequest {
            identity: Some(HostIdentity {
                agent_id: format!("00000000-0000-4000-8000-{agent:012}"),
                hostname: format!("bench-{agent:05}"),
                machine_id: format!("{agent:032x}"),
                ..Default::default()
            }),
            agent_version: estate_agent::VERSION.into(),
            sequence,
            agent_time_unix_ms: 0,
            inventory_hash: format!("sha256:{agent:064x}"),
            inventory: inventory.cloned(),
            vitals: Some(HostVitals {
                memory_available_bytes: 4 << 30,
                volumes: vec![VolumeUsage {
                    mount: "/".into(),
                    total_bytes: 100 << 30,
                    free_bytes: 40 << 30,
                }],
                ..Default::default()
            }),
            checks: check_results(),
            dropped_reports: 0,
            check_names: (0..12).map(|index| format!("check-{index}")).collect(),
        }
    }

    /// Connects `settings.agents` agents to `address`, each on its own connection, and sends
    /// each agent's full inventory (as an agent does when it starts). Untimed: the benchmark
    /// measures the heartbeats that follow.
    async fn connect_agents(
        address: std::net::SocketAddr,
        settings: &Settings,
        inventory: &Inventory,
    ) -> anyhow::Result<Vec<(usize, IngestClient<tonic::transport::Channel>)>> {
        let mut first_reports = tokio::task::JoinSet::new();
        for agent in 0..settings.agents {
            let report = simulated_report(agent, 1, Some(inventory));
            first_reports.spawn(async move {
                let mut client = IngestClient::connect(format!("http://{address}")).await?;
                client.report(report).await?;
                anyhow::Ok((agent, client))
            });
        }
        let mut clients = Vec::with_capacity(settings.agents);
        while let Some(result) = first_reports.join_next().await {
            clients.push(result??);
        }
        Ok(clients)
    }

    type Clients = Vec<(usize, IngestClient<tonic::transport::Channel>)>;

    /// Sends, timed, `reports` heartbeats from each agent (sequences from `first_sequence`), one
    /// after the other: the rate a server sustains in steady state, and the CPU time of this
    /// whole process (client and server) meanwhile. Gives the clients back for the next round.
    async fn drive(
        clients: Clients,
        first_sequence: u64,
        reports: usize,
    ) -> anyhow::Result<(Clients, IngestFigures)> {
        let cpu_before = cpu_time(UsageWho::RUSAGE_SELF)?;
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for (agent, mut client) in clients {
            tasks.spawn(async move {
                let mut latencies = Vec::with_capacity(reports);
                for sequence in first_sequence..first_sequence + reports as u64 {
                    let report = simulated_report(agent, sequence, None);
                    let sent = Instant::now();
                    client.report(report).await?;
                    latencies.push(sent.elapsed());
                }
                anyhow::Ok((agent, client, latencies))
            });
        }
        let mut clients = Vec::with_capacity(tasks.len());
        let mut latencies = Vec::new();
        while let Some(result) = tasks.join_next().await {
            let (agent, client, agent_latencies) = result??;
            clients.push((agent, client));
            latencies.extend(agent_latencies);
        }
        let elapsed = started.elapsed();
        let cpu = cpu_time(UsageWho::RUSAGE_SELF)? - cpu_before;
        Ok((
            clients,
            IngestFigures {
                reports: latencies.len(),
                elapsed,
                cpu,
                latencies,
            },
        ))
    }

    /// The timed heartbeats, in `settings.rounds` rounds, each the ceiling's then the
    /// collector's: both totals, and each round's ratio of rates.
    async fn alternate_rounds(
        mut noop_clients: Clients,
        mut collector_clients: Clients,
        settings: &Settings,
    ) -> anyhow::Result<(IngestFigures, IngestFigures, Vec<f64>)> {
        let (mut ceiling, mut ours) = (IngestFigures::default(), IngestFigures::default());
        let mut ratios = Vec::with_capacity(settings.rounds);
        // Each agent's first report (sequence 1) was its inventory.
        let mut next_sequence = 2;
        for round in 0..settings.rounds {
            let reports = settings.reports * (round + 1) / settings.rounds
                - settings.reports * round / settings.rounds;
            let (clients, noop_round) = drive(noop_clients, next_sequence, reports).await?;
            noop_clients = clients;
            let (clients, collector_round) =
                drive(collector_clients, next_sequence, reports).await?;
            collector_clients = clients;
            next_sequence += reports as u64;
            ratios.push(collector_round.per_second() / noop_round.per_second());
            ceiling.add(noop_round);
            ours.add(collector_round);
        }
        ceiling.latencies.sort();
        ours.latencies.sort();
        Ok((ceiling, ours, ratios))
    }

    fn median(values: &[f64]) -> f64 {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        sorted[sorted.len() / 2]
    }

    /// What the collector's group-commit writer did during a run, from its `/metrics`.
    struct WriterFigures {
        batches: u64,
        reports: f64,
        /// Time spent writing and committing batches.
        seconds: f64,
    }

    impl WriterFigures {
        /// What the writer did after `earlier` was read.
        fn since(&self, earlier: &WriterFigures) -> WriterFigures {
            WriterFigures {
                batches: self.batches - earlier.batches,
                reports: self.reports - earlier.reports,
                seconds: self.seconds - earlier.seconds,
            }
        }
    }

    async fn writer_figures(http: std::net::SocketAddr) -> anyhow::Result<WriterFigures> {
        let page = reqwest::get(format!("http://{http}/metrics"))
            .await?
            .error_for_status()?
            .text()
            .await?;
        let value = |name: &str| -> anyhow::Result<f64> {
            page.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
                .with_context(|| format!("the collector's /metrics has no `{name}`"))?
                .trim()
                .parse::<f64>()
                .with_context(|| format!("`{name}` in the collector's /metrics is not a number"))
        };
        Ok(WriterFigures {
            batches: value("estate_collector_batch_reports_count")? as u64,
            reports: value("estate_collector_batch_reports_sum")?,
            seconds: value("estate_collector_commit_duration_seconds_sum")?,
        })
    }

    /// A database of the benchmark's own on a PostgreSQL server, dropped when done.
    struct ScratchDatabase {
        server: String,
        name: String,
        url: String,
    }

    impl ScratchDatabase {
        fn create(server: &str) -> anyhow::Result<Self> {
            let name = format!("estate_bench_{}", std::process::id());
            let url = estate_collector::store::postgres::create_database(server, &name)?;
            Ok(ScratchDatabase {
                server: server.to_owned(),
                name,
                url,
            })
        }
    }

    impl Drop for ScratchDatabase {
        fn drop(&mut self) {
            if let Err(error) =
                estate_collector::store::postgres::drop_database(&self.server, &self.name)
            {
                eprintln!(
                    "could not drop the benchmark database `{}`: {error}",
                    self.name
                );
            }
        }
    }

    /// Ingest into SQLite, or into the PostgreSQL database at `postgres` when given.
    async fn ingest_benchmark(settings: &Settings, postgres: Option<String>) -> anyhow::Result<()> {
        let inventory =
            tokio::task::spawn_blocking(|| estate_agent::inventory::collect(Path::new("/")))
                .await?;
        let inventory_bytes = prost::Message::encoded_len(&inventory);

        // The ceiling: a no-op server behind the same transport.
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let noop_address = listener.local_addr()?;
        let (stop_noop, noop_stopped) = tokio::sync::oneshot::channel::<()>();
        let noop = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(IngestServer::new(NoopIngest).max_decoding_message_size(16 << 20))
                .serve_with_incoming_shutdown(
                    // As the collector's listener does: each answer goes out at once.
                    tokio_stream::StreamExt::map(
                        tokio_stream::wrappers::TcpListenerStream::new(listener),
                        |accepted| {
                            if let Ok(stream) = &accepted {
                                let _ = stream.set_nodelay(true);
                            }
                            accepted
                        },
                    ),
                    async {
                        let _ = noop_stopped.await;
                    },
                ),
        );
        let noop_clients = connect_agents(noop_address, settings, &inventory).await?;

        // The collector, with its store in a temporary directory or a scratch database.
        let dir = tempfile::tempdir()?;
        let (database, store_name) = match &postgres {
            None => (
                dir.path().join("bench.db"),
                "SQLite, durable acks".to_owned(),
            ),
            Some(url) => {
                let shown = url.clone();
                let fsync = tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
                    let mut client = estate_collector::store::postgres::connect(&shown)?;
                    Ok(client.query_one("SHOW fsync", &[])?.get(0))
                })
                .await??;
                (url.into(), format!("PostgreSQL, fsync {fsync}"))
            }
        };
        // Plain text on loopback on both sides, so the figures compare the store's cost with
        // the no-op server's, not TLS's.
        let config = estate_collector::config::CollectorConfig {
            database: database.clone(),
            transport: estate_collector::tls::Transport::Insecure,
            // Simulated agents send back to back: measure ingest, not the per-agent rate limit.
            agent_rate_limit: estate_collector::limits::RateLimit {
                reports_per_second: 1e9,
                burst: u32::MAX,
            },
            ..Default::default()
        };
        let grpc = TcpListener::bind("127.0.0.1:0").await?;
        let http = TcpListener::bind("127.0.0.1:0").await?;
        let collector_address = grpc.local_addr()?;
        let http_address = http.local_addr()?;
        let (stop_collector, collector_stopped) = tokio::sync::oneshot::channel::<()>();
        let collector = tokio::spawn(estate_collector::run(config, grpc, http, async {
            let _ = collector_stopped.await;
        }));
        let collector_clients = connect_agents(collector_address, settings, &inventory).await?;
        let writer_before = writer_figures(http_address).await?;
        let (ceiling, ours, round_ratios) =
            alternate_rounds(noop_clients, collector_clients, settings).await?;
        let writer = writer_figures(http_address).await?.since(&writer_before);
        let _ = stop_noop.send(());
        noop.await??;
        let _ = stop_collector.send(());
        collector.await??;

        println!();
        println!(
            "== ingest: {} agents x {} heartbeats with 12 check results, timed, in {} rounds alternating between the ceiling and the collector (each agent's first report, a {:.1} KiB inventory, is sent before the clock starts)",
            settings.agents,
            settings.reports,
            settings.rounds,
            inventory_bytes as f64 / 1024.0
        );
        println!(
            "{:<44} {:>12} {:>10} {:>10}",
            "", "reports/s", "p50 ms", "p99 ms"
        );
        for (name, figures) in [
            (format!("estate-collector ({store_name})"), &ours),
            ("ceiling: no-op gRPC server".to_owned(), &ceiling),
        ] {
            println!(
                "{name:<44} {:>12.0} {:>10.2} {:>10.2}",
                figures.per_second(),
                figures.percentile(0.50).as_secs_f64() * 1000.0,
                figures.percentile(0.99).as_secs_f64() * 1000.0
            );
        }
        println!(
            "ratio reports/s collector/ceiling: {:.2} (all rounds; each round: {}; median {:.2})",
            ours.per_second() / ceiling.per_second(),
            round_ratios
                .iter()
                .map(|ratio| format!("{ratio:.2}"))
                .collect::<Vec<_>>()
                .join(" "),
            median(&round_ratios)
        );
        // On a machine whose cores are all busy, the rates follow the CPU each report costs;
        // this ratio is what the rates' ratio would be, less moved by other processes.
        let ours_cpu_per_report = ours.cpu.as_secs_f64() * 1e6 / ours.reports as f64;
        let ceiling_cpu_per_report = ceiling.cpu.as_secs_f64() * 1e6 / ceiling.reports as f64;
        println!(
            "CPU per report, whole process (client and server): collector run {ours_cpu_per_report:.0} µs, \
             ceiling run {ceiling_cpu_per_report:.0} µs; ratio ceiling/collector: {:.2}",
            ceiling_cpu_per_report / ours_cpu_per_report
        );
        println!(
            "writer: {} batches of {:.1} reports on average, {:.2} ms each; busy {:.0} % of the run",
            writer.batches,
            writer.reports / writer.batches.max(1) as f64,
            writer.seconds * 1000.0 / writer.batches.max(1) as f64,
            writer.seconds * 100.0 / ours.elapsed.as_secs_f64()
        );

        // The storage ceiling: the same rows written by plain batched upserts into the same
        // database, one transaction per batch of as many reports as there are agents (the
        // most the collector can group: each agent has one report in flight).
        let batch = settings.agents;
        let reports = settings.agents * settings.reports;
        let postgres_server = postgres.clone();
        let (raw, method) = match postgres {
            None => (
                tokio::task::spawn_blocking({
                    let database = database.clone();
                    move || raw_upserts(&database, batch, reports)
                })
                .await??,
                "prepared upserts",
            ),
            Some(url) => (
                tokio::task::spawn_blocking(move || raw_upserts_postgres(&url, batch, reports))
                    .await??,
                "COPY + upsert",
            ),
        };
        let (rows_per_report, rows) = match &postgres_server {
            None => (
                SQLITE_ROWS_PER_HEARTBEAT,
                "the host and its check runs".to_owned(),
            ),
            Some(_) => (
                1 + CHECKS_PER_REPORT,
                format!("the host and {CHECKS_PER_REPORT} check results"),
            ),
        };
        let ours_rows = ours.per_second() * rows_per_report as f64;
        println!();
        println!("== storage: rows/s ({rows_per_report} rows per heartbeat: {rows})");
        println!(
            "{:<44} {:>12}",
            "estate-collector (whole ingest path)",
            format!("{ours_rows:.0}")
        );
        println!(
            "{:<44} {:>12}",
            format!("ceiling: {method}, {batch} reports/commit"),
            format!("{raw:.0}")
        );
        println!("ratio rows/s collector/raw upserts: {:.2}", ours_rows / raw);

        // The store alone: the writer's share, in CPU time, which the shared machine's noise
        // does not move the way it moves rates.
        let batch = writer.reports / writer.batches.max(1) as f64;
        let batch = (batch.round() as usize).clamp(1, settings.agents);
        let agents = settings.agents;
        let rounds = settings.reports;
        // Into the same database, as hosts of their own.
        let alone = match postgres_server {
            None => {
                tokio::task::spawn_blocking(move || {
                    let store = estate_collector::store::sqlite::SqliteStore::open(&database)?;
                    store_alone(&store, agents, rounds, batch)
                })
                .await??
            }
            Some(url) => {
                tokio::task::spawn_blocking(move || {
                    let store =
                        estate_collector::store::postgres::PostgresStore::open(&url, "bench")?;
                    store_alone(&store, agents, rounds, batch)
                })
                .await??
            }
        };
        println!();
        println!(
            "== store alone: {agents} hosts x {rounds} heartbeats through Store::write_batch, {batch} per batch (the collector's average)"
        );
        println!(
            "{:<44} {:>12.0} reports/s, {:.1} µs writer CPU per report",
            "write_batch", alone.0, alone.1
        );
        Ok(())
    }

    /// User and system CPU time used so far by `who`: this whole process (every thread) or
    /// the calling thread.
    fn cpu_time(who: UsageWho) -> anyhow::Result<Duration> {
        let usage = nix::sys::resource::getrusage(who)?;
        let time = |value: nix::sys::time::TimeVal| {
            Duration::from_secs(value.tv_sec() as u64)
                + Duration::from_micros(value.tv_usec() as u64)
        };
        Ok(time(usage.user_time()) + time(usage.system_time()))
    }

    /// Where the store-alone hosts' numbers start, apart from the collector run's.
    const STORE_ALONE_AGENTS: usize = 1_000_000;

    /// Heartbeats of `agents` hosts written straight through `Store::write_batch`, `batch` per
    /// transaction, after one report per host has created it: reports/s (wall) and the CPU
    /// time of the writing thread per report (the database server's, for PostgreSQL, not
    /// included).
    fn store_alone(
        store: &dyn estate_collector::store::Store,
        agents: usize,
        rounds: usize,
        batch: usize,
    ) -> anyhow::Result<(f64, f64)> {
        use estate_collector::store::{IncomingReport, WritePolicy};
        let policy = WritePolicy {
            stale_after_ms: 300_000,
        };
        let incoming = |agent: usize, sequence: u64| -> anyhow::Result<IncomingReport> {
            Ok(IncomingReport {
                report: estate_collector::validate::validate_report(
                    simulated_report(STORE_ALONE_AGENTS + agent, sequence, None),
                    &estate_collector::validate::Limits::default(),
                )
                .map_err(|error| anyhow::anyhow!("{}", error.message))?,
                received_ms: 1_000 + sequence as i64,
            })
        };
        let mut reports = Vec::with_capacity(agents * rounds);
        for sequence in 1..=rounds as u64 + 1 {
            for agent in 0..agents {
                reports.push(incoming(agent, sequence)?);
            }
        }
        let (first, heartbeats) = reports.split_at(agents);
        store.write_batch(first, policy)?;
        let cpu = || cpu_time(UsageWho::RUSAGE_THREAD);
        let started = Instant::now();
        let cpu_before = cpu()?;
        for chunk in heartbeats.chunks(batch) {
            store.write_batch(chunk, policy)?;
        }
        let cpu_used = cpu()? - cpu_before;
        let elapsed = started.elapsed();
        Ok((
            heartbeats.len() as f64 / elapsed.as_secs_f64(),
            cpu_used.as_secs_f64() * 1e6 / heartbeats.len() as f64,
        ))
    }

    /// The same rows as [`raw_upserts`] into a PostgreSQL database, the fastest plain way:
    /// each batch is copied into temporary tables (`COPY … FROM STDIN`) and upserted from
    /// there with one `INSERT … SELECT … ON CONFLICT` per table, in one transaction.
    fn raw_upserts_postgres(url: &str, batch: usize, reports: usize) -> anyhow::Result<f64> {
        let mut client = estate_collector::store::postgres::connect(url)?;
        let columns: Vec<(String, String)> = client
            .query(
                "SELECT column_name::text, data_type::text FROM information_schema.columns \
                 WHERE table_schema = current_schema() AND table_name = 'hosts' \
                 ORDER BY ordinal_position",
                &[],
            )?
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect();
        if columns.is_empty() {
            bail!("the database has no `hosts` table: the collector did not migrate it");
        }
        let names: Vec<&str> = columns.iter().map(|(name, _)| name.as_str()).collect();
        let upsert_hosts = format!(
            "INSERT INTO hosts SELECT * FROM raw_hosts ON CONFLICT (id) DO UPDATE SET {}",
            names[1..]
                .iter()
                .map(|name| format!("{name} = excluded.{name}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let check_columns = "host_id, check_name, target, kind, outcome, reason, since_ms, \
             received_ms, started_ms, duration_seconds, measurements";
        let upsert_checks = format!(
            "INSERT INTO check_results ({check_columns}) SELECT {check_columns} FROM raw_checks \
             ON CONFLICT (host_id, check_name, target) DO UPDATE SET \
             outcome = excluded.outcome, reason = excluded.reason, \
             received_ms = excluded.received_ms, started_ms = excluded.started_ms, \
             duration_seconds = excluded.duration_seconds, measurements = excluded.measurements"
        );
        let started = Instant::now();
        let mut written = 0;
        let mut sequence = 1_000_000i64;
        while written < reports {
            let count = batch.min(reports - written);
            let (mut hosts, mut checks) = (String::new(), String::new());
            for agent in 0..count {
                sequence += 1;
                let id = format!("raw-{agent:06}");
                let values: Vec<String> = columns
                    .iter()
                    .map(|(name, kind)| match (name.as_str(), kind.as_str()) {
                        ("id", _) => id.clone(),
                        (_, "bigint" | "integer") => sequence.to_string(),
                        (_, "double precision" | "real") => "0.5".into(),
                        (_, "boolean") => "f".into(),
                        ("vitals", _) => "{\"memory_available_bytes\":4294967296}".into(),
                        (name, _) => format!("{name}-{agent}"),
                    })
                    .collect();
                hosts.push_str(&values.join("\t"));
                hosts.push('\n');
                for index in 0..CHECKS_PER_REPORT {
                    checks.push_str(&format!(
                        "{id}\tcheck-{index:02}\tserver-{index:02}.example.org:443\ttcp\tpass\t\t\
                         {sequence}\t{sequence}\t{sequence}\t0.002\t\
                         [{{\"name\":\"connect_seconds\",\"value\":0.002,\"text\":\"\"}}]\n"
                    ));
                }
            }
            let mut tx = client.transaction()?;
            tx.batch_execute(
                "CREATE TEMP TABLE raw_hosts (LIKE hosts) ON COMMIT DROP; \
                 CREATE TEMP TABLE raw_checks (LIKE check_results) ON COMMIT DROP",
            )?;
            for (table, text) in [("raw_hosts", &hosts), ("raw_checks", &checks)] {
                let mut writer = tx.copy_in(&format!("COPY {table} FROM STDIN"))?;
                std::io::Write::write_all(&mut writer, text.as_bytes())?;
                writer.finish()?;
            }
            tx.batch_execute(&format!("{upsert_hosts}; {upsert_checks}"))?;
            tx.commit()?;
            written += count;
        }
        Ok((written * (1 + CHECKS_PER_REPORT)) as f64 / started.elapsed().as_secs_f64())
    }

    /// Writes `reports` heartbeats' rows (a host row with every column, the row of the host's
    /// 12 check runs) as upserts into the collector's own tables, `batch` reports per
    /// transaction, with the collector's settings (WAL, `synchronous = FULL`); returns rows
    /// per second.
    fn raw_upserts(database: &Path, batch: usize, reports: usize) -> anyhow::Result<f64> {
        let mut connection = rusqlite::Connection::open(database)?;
        connection.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;",
        )?;
        // Every column of `hosts` bound from the table's own description, so the row is as
        // wide as the collector's.
        let columns: Vec<(String, String)> = connection
            .prepare("SELECT name, type FROM pragma_table_info('hosts')")?
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let names: Vec<&str> = columns.iter().map(|(name, _)| name.as_str()).collect();
        let host_sql = format!(
            "INSERT INTO hosts ({}) VALUES ({}) ON CONFLICT (id) DO UPDATE SET {}",
            names.join(", "),
            (1..=names.len())
                .map(|n| format!("?{n}"))
                .collect::<Vec<_>>()
                .join(", "),
            names
                .iter()
                .skip(1)
                .map(|name| format!("{name} = excluded.{name}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        // The host's check runs, one row of the size the collector writes per heartbeat.
        let runs_sql = "INSERT INTO check_runs (host_id, runs) VALUES (?1, ?2) \
             ON CONFLICT (host_id) DO UPDATE SET runs = excluded.runs";
        let started = Instant::now();
        let mut written = 0;
        let mut sequence = 1_000_000i64;
        while written < reports {
            let tx = connection.transaction()?;
            {
                let mut host = tx.prepare_cached(&host_sql)?;
                let mut runs = tx.prepare_cached(runs_sql)?;
                for agent in 0..batch.min(reports - written) {
                    sequence += 1;
                    let id = format!("raw-{agent:06}");
                    let values: Vec<rusqlite::types::Value> = columns
                        .iter()
                        .map(|(name, kind)| match (name.as_str(), kind.as_str()) {
                            ("id", _) => id.clone().into(),
                            (_, "INTEGER") => sequence.into(),
                            (_, "REAL") => 0.5.into(),
                            ("vitals", _) => {
                                "{\"memory_available_bytes\":4294967296}".to_owned().into()
                            }
                            (name, _) => format!("{name}-{agent}").into(),
                        })
                        .collect();
                    host.execute(rusqlite::params_from_iter(values))?;
                    // As the store writes a run: [check, target, received_ms, started_ms,
                    // duration_seconds, [[name, value, text]]].
                    let run_list: Vec<String> = (0..CHECKS_PER_REPORT)
                        .map(|index| {
                            format!(
                                "[\"check-{index:02}\",\"server-{index:02}.example.org:443\",\
                                 {sequence},{sequence},0.002,[[\"connect_seconds\",0.002,\"\"]]]"
                            )
                        })
                        .collect();
                    runs.execute(rusqlite::params![id, format!("[{}]", run_list.join(","))])?;
                }
            }
            tx.commit()?;
            written += batch.min(reports - written);
        }
        Ok((written * SQLITE_ROWS_PER_HEARTBEAT) as f64 / started.elapsed().as_secs_f64())
    }

    /// Rows the SQLite store writes per heartbeat whose outcomes do not change: the host's
    /// row and its row of check runs.
    const SQLITE_ROWS_PER_HEARTBEAT: usize = 2;

    fn machine_summary() -> String {
        let cpus = std::thread::available_parallelism().map_or(0, usize::from);
        let model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find(|line| line.starts_with("model name"))
                    .and_then(|line| line.split_once(':'))
                    .map(|(_, model)| model.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown cpu".into());
        let memory = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find(|line| line.starts_with("MemTotal:"))
                    .and_then(|line| line.split_whitespace().nth(1))
                    .and_then(|kib| kib.parse::<u64>().ok())
            })
            .map_or_else(
                || "unknown".into(),
                |kib| format!("{:.0} GiB", kib as f64 / 1048576.0),
            );
        format!("{cpus} cpus ({model}), {memory} memory")
    }
}
