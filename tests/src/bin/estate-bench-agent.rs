//! `estate-bench-agent`: the agent's footprint next to peers on the same machine, in one run.
//!
//! 1. Steady state: the real `estate-agent run` (a heartbeat and 12 TCP checks every second,
//!    reporting to a collector on loopback) next to Prometheus' node_exporter (Debian's
//!    `prometheus-node-exporter`, its default collectors, scraped once a second): resident
//!    memory (mean and peak of samples) and CPU time per cycle (one report, one scrape).
//! 2. One full inventory: a child doing exactly the agent's inventory next to Debian's
//!    `fusioninventory-agent --local DIR` (its whole local inventory task, written to a file)
//!    and `fusioninventory-inventory` (the same inventory as XML on stdout, without the agent's
//!    start-up): CPU time (with every helper the peer runs) and peak RSS of each child, median
//!    of `--runs`.
//!
//! Needs the release `estate-agent` binary beside this program
//! (`cargo build --release -p estate-agent -p estate-tests`). Figures are printed, never
//! asserted. Bounded in time; loopback only.

#[cfg(unix)]
fn main() -> anyhow::Result<()> {
    unix::main()
}

/// The figures come from Linux's `/proc` and `getrusage`.
#[cfg(not(unix))]
fn main() {
    eprintln!("estate-bench-agent measures processes with Unix accounting; it runs on Linux only");
    std::process::exit(1);
}

#[cfg(unix)]
mod unix {
    use anyhow::{Context as _, bail};
    use estate_tests::flags;
    use estate_tests::harness::{Running, binary, free_port};
    use estate_tests::process::{self, ChildCost, median_cost};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    use tokio::net::TcpListener;

    const USAGE: &str = "usage: estate-bench-agent [--seconds S] [--runs N]";
    const NODE_EXPORTER: &str = "prometheus-node-exporter";
    const FUSIONINVENTORY_AGENT: &str = "fusioninventory-agent";
    const FUSIONINVENTORY_INVENTORY: &str = "fusioninventory-inventory";

    pub fn main() -> anyhow::Result<()> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        match args.first().map(String::as_str) {
            Some(process::MEASURE_CHILD) => return process::measure_child(&args[1..]),
            Some(process::INVENTORY_ONCE) => {
                process::inventory_once();
                return Ok(());
            }
            _ => {}
        }
        let (mut seconds, mut runs) = (20.0_f64, 3_usize);
        for (flag, text) in flags::pairs(&args, USAGE)? {
            match flag {
                "--seconds" => seconds = flags::positive(flag, text)?,
                "--runs" => runs = flags::count(flag, text)?,
                other => bail!("unknown argument `{other}`\n{USAGE}"),
            }
        }
        println!("estate-bench-agent: {seconds} s of steady state each, {runs} inventory runs");
        tokio::runtime::Runtime::new()?.block_on(steady_state(Duration::from_secs_f64(seconds)))?;
        inventory_comparison(runs.max(1))
    }

    // ---------------------------------------------------------------------------------------------
    // Steady state
    // ---------------------------------------------------------------------------------------------

    /// What sampling one process over a window gave.
    #[derive(Debug)]
    struct Footprint {
        mean_rss: f64,
        peak_rss: u64,
        cpu_seconds: f64,
        cycles: u64,
    }

    impl Footprint {
        fn cpu_ms_per_cycle(&self) -> f64 {
            self.cpu_seconds * 1000.0 / self.cycles.max(1) as f64
        }
    }

    /// Samples `pid` every 100 ms for `window`, calling `cycle` once a second; returns its
    /// footprint with `cycles()` read at the end.
    async fn observe(
        pid: u32,
        window: Duration,
        mut cycle: impl AsyncFnMut() -> anyhow::Result<()>,
    ) -> anyhow::Result<(f64, u64, f64)> {
        let before = process::sample(pid)?;
        let started = Instant::now();
        let (mut sum, mut count, mut peak) = (0.0, 0u64, 0u64);
        let mut next_cycle = Instant::now();
        while started.elapsed() < window {
            if Instant::now() >= next_cycle {
                cycle().await?;
                next_cycle += Duration::from_secs(1);
            }
            let sample = process::sample(pid)?;
            sum += sample.rss_bytes as f64;
            count += 1;
            peak = peak.max(sample.rss_bytes);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let after = process::sample(pid)?;
        Ok((
            sum / count.max(1) as f64,
            peak,
            after.cpu_seconds - before.cpu_seconds,
        ))
    }

    /// Reports the collector has stored, read from its `/metrics`.
    async fn stored_reports(client: &reqwest::Client, http: &str) -> anyhow::Result<u64> {
        let page = client
            .get(format!("http://{http}/metrics"))
            .send()
            .await?
            .text()
            .await?;
        let line = page
            .lines()
            .find(|line| line.starts_with("estate_collector_reports_total{result=\"stored\"}"))
            .context("the collector's /metrics has no stored-reports counter")?;
        let value = line.rsplit(' ').next().unwrap_or_default();
        Ok(value
            .parse::<f64>()
            .with_context(|| format!("`{line}` has no number"))? as u64)
    }

    async fn agent_footprint(window: Duration) -> anyhow::Result<Footprint> {
        let agent = binary("estate-agent");
        let dir = tempfile::tempdir()?;
        let grpc = TcpListener::bind("127.0.0.1:0").await?;
        let http = TcpListener::bind("127.0.0.1:0").await?;
        let (grpc_address, http_address) = (grpc.local_addr()?, http.local_addr()?);
        let config = estate_collector::config::CollectorConfig {
            database: dir.path().join("agent-bench.db"),
            ..Default::default()
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let collector = tokio::spawn(estate_collector::run(config, grpc, http, async {
            let _ = stopped.await;
        }));
        let mut text = format!(
            "[agent]\nstate_dir = \"{}\"\nroot = \"/\"\n\n[collector]\nurl = \"http://{grpc_address}\"\ninsecure = true\n\n\
             [schedule]\ninventory_interval = \"1h\"\ninventory_jitter = \"1s\"\nheartbeat_interval = \"1s\"\n",
            dir.path().join("state").display()
        );
        for index in 0..12 {
            text.push_str(&format!(
                "\n[[checks]]\nname = \"tcp-{index:02}\"\nkind = \"tcp\"\ninterval = \"1s\"\n\
                 timeout = \"1s\"\naddress = \"{grpc_address}\"\n"
            ));
        }
        let config_path = dir.path().join("agent.toml");
        std::fs::write(&config_path, text)?;
        let child = Running(
            Command::new(&agent)
                .arg("--config")
                .arg(&config_path)
                .args(["--log-level", "warn", "run"])
                .stdin(Stdio::null())
                .spawn()
                .with_context(|| format!("failed to start `{}`", agent.display()))?,
        );
        let client = reqwest::Client::new();
        // Warm-up: the first inventory and a few heartbeats.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let first = stored_reports(&client, &http_address.to_string()).await?;
        if first == 0 {
            bail!("the agent sent nothing in 3 s");
        }
        let (mean_rss, peak_rss, cpu_seconds) =
            observe(child.0.id(), window, async || Ok(())).await?;
        let last = stored_reports(&client, &http_address.to_string()).await?;
        drop(child);
        let _ = stop.send(());
        collector.await??;
        Ok(Footprint {
            mean_rss,
            peak_rss,
            cpu_seconds,
            cycles: last - first,
        })
    }

    async fn node_exporter_footprint(window: Duration) -> anyhow::Result<Footprint> {
        let address = format!("127.0.0.1:{}", free_port());
        let child = Running(
            Command::new(NODE_EXPORTER)
                .arg(format!("--web.listen-address={address}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .with_context(|| {
                    format!("failed to start `{NODE_EXPORTER}` (apt-get install {NODE_EXPORTER})")
                })?,
        );
        let client = reqwest::Client::new();
        let url = format!("http://{address}/metrics");
        let mut up = false;
        for _ in 0..50 {
            if client.get(&url).send().await.is_ok() {
                up = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if !up {
            bail!("{NODE_EXPORTER} did not answer on {address}");
        }
        let mut scrapes = 0u64;
        let (mean_rss, peak_rss, cpu_seconds) = observe(child.0.id(), window, async || {
            let page = client.get(&url).send().await?.text().await?;
            if page.is_empty() {
                bail!("{NODE_EXPORTER} answered an empty page");
            }
            scrapes += 1;
            Ok(())
        })
        .await?;
        Ok(Footprint {
            mean_rss,
            peak_rss,
            cpu_seconds,
            cycles: scrapes,
        })
    }

    async fn steady_state(window: Duration) -> anyhow::Result<()> {
        let ours = agent_footprint(window).await?;
        let peer = match node_exporter_footprint(window).await {
            Ok(peer) => Some(peer),
            Err(error) => {
                println!("peer not measured: {error:#}");
                None
            }
        };
        println!();
        println!("== steady state over {window:?}, one cycle a second");
        println!(
            "{:<58} {:>10} {:>10} {:>7} {:>13}",
            "", "RSS MiB", "peak MiB", "cycles", "cpu ms/cycle"
        );
        let row = |name: &str, figures: &Footprint| {
            println!(
                "{name:<58} {:>10.1} {:>10.1} {:>7} {:>13.2}",
                figures.mean_rss / 1048576.0,
                figures.peak_rss as f64 / 1048576.0,
                figures.cycles,
                figures.cpu_ms_per_cycle()
            );
        };
        row(
            "estate-agent run (heartbeat + 12 tcp checks per cycle)",
            &ours,
        );
        if let Some(peer) = &peer {
            row(
                "node_exporter (default collectors, one scrape per cycle)",
                peer,
            );
            println!(
                "ratio estate/node_exporter: RSS {:.2}, cpu per cycle {:.2}",
                ours.mean_rss / peer.mean_rss,
                ours.cpu_ms_per_cycle() / peer.cpu_ms_per_cycle().max(1e-9)
            );
        }
        Ok(())
    }

    // ---------------------------------------------------------------------------------------------
    // One inventory
    // ---------------------------------------------------------------------------------------------

    fn inventory_comparison(runs: usize) -> anyhow::Result<()> {
        let me = std::env::current_exe()?;
        let me = me.to_str().context("the program path is not UTF-8")?;
        let ours = median_cost(&[me, process::INVENTORY_ONCE], runs)?;
        println!();
        println!("== one full inventory of this machine (median of {runs} runs)");
        println!("{:<58} {:>10} {:>14}", "", "cpu ms", "peak RSS MiB");
        let row = |name: &str, cost: ChildCost| {
            println!(
                "{name:<58} {:>10.1} {:>14.1}",
                cost.cpu_seconds * 1000.0,
                cost.peak_rss_bytes as f64 / 1048576.0
            );
        };
        row("estate-agent inventory (all areas)", ours);
        let output = tempfile::tempdir()?;
        let output = output
            .path()
            .to_str()
            .context("the temporary path is not UTF-8")?;
        let peers: [(&str, &[&str]); 2] = [
            (
                "fusioninventory-agent --local DIR (the agent's task)",
                &[FUSIONINVENTORY_AGENT, "--local", output],
            ),
            (
                "fusioninventory-inventory (the same inventory, XML)",
                &[FUSIONINVENTORY_INVENTORY],
            ),
        ];
        let mut ratios = Vec::new();
        for (name, command) in peers {
            match median_cost(command, runs) {
                Ok(peer) => {
                    row(name, peer);
                    ratios.push(format!(
                        "{} {:.1}",
                        command[0],
                        peer.cpu_seconds / ours.cpu_seconds.max(1e-9)
                    ));
                }
                Err(error) => println!(
                    "{name}: not measured: {error:#} (apt-get install fusioninventory-agent)"
                ),
            }
        }
        if !ratios.is_empty() {
            println!(
                "ratio cpu peer/estate (estate is that many times cheaper): {}",
                ratios.join(", ")
            );
        }
        Ok(())
    }
}
