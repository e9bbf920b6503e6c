//! `estate-bench-dns`: the cost of a DNS check, side by side with blackbox_exporter's DNS probe,
//! against the same local DNS server (dnsmasq on loopback) in one run.
//!
//! Ours: the agent's `dns` check, built from a config entry exactly as the agent builds it, run
//! N times with C at once; CPU time is this process's own (getrusage). Peer: Debian's
//! `prometheus-blackbox-exporter` with a `dns` module, driven with N `/probe` requests, C at
//! once; CPU time is the exporter process's (from `/proc/<pid>/stat`). Both figures are the
//! whole cost a user pays per probe in each system (the exporter's includes serving the probe
//! over HTTP, which is how it is used). Loopback only; bounded in count.

#[cfg(unix)]
fn main() -> anyhow::Result<()> {
    unix::main()
}

/// The figures come from Unix process accounting (`getrusage`, `/proc`).
#[cfg(not(unix))]
fn main() {
    eprintln!("estate-bench-dns measures processes with Unix accounting; it runs on Linux only");
    std::process::exit(1);
}

#[cfg(unix)]
mod unix {
    use anyhow::{Context as _, bail};
    use estate_agent::checks::ScheduledCheck;
    use std::net::{TcpListener, UdpSocket};
    use std::path::Path;
    use std::process::{Child, Command, Stdio};
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    use tokio::sync::Semaphore;

    const USAGE: &str = "usage: estate-bench-dns [--queries N] [--concurrency N]";
    const QUERY_NAME: &str = "bench.estate.test";

    /// A child process killed when dropped.
    struct Running(Child);

    impl Drop for Running {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn free_udp_port() -> anyhow::Result<u16> {
        Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
    }

    fn free_tcp_port() -> anyhow::Result<u16> {
        Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
    }

    /// CPU seconds (user + system) used so far by process `pid`.
    fn process_cpu_seconds(pid: u32) -> anyhow::Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        let rest = stat.rsplit_once(')').context("malformed /proc stat")?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
        Ok(ticks / 100.0)
    }

    fn own_cpu_seconds() -> anyhow::Result<f64> {
        let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)?;
        let seconds =
            |time: nix::sys::time::TimeVal| time.tv_sec() as f64 + time.tv_usec() as f64 / 1e6;
        Ok(seconds(usage.user_time()) + seconds(usage.system_time()))
    }

    #[derive(Debug)]
    struct Figures {
        queries: usize,
        elapsed: Duration,
        cpu_seconds: f64,
        failures: usize,
    }

    impl Figures {
        fn print(&self, name: &str) {
            println!(
                "{name:<46} {:>10.0} {:>16.1} {:>9}",
                self.queries as f64 / self.elapsed.as_secs_f64(),
                self.cpu_seconds * 1e6 / self.queries as f64,
                self.failures
            );
        }
    }

    fn dns_check(server: &str) -> anyhow::Result<ScheduledCheck> {
        let text = format!(
            "[[checks]]\nname = \"bench\"\nkind = \"dns\"\nquery = \"{QUERY_NAME}\"\ntype = \"A\"\n\
             servers = [\"{server}\"]\nexpect_values = [\"192.0.2.1\"]\ntimeout = \"2s\"\n"
        );
        let origin = Path::new("<estate-bench-dns>");
        let config =
            estate_agent::config::ConfigFile::parse(&text, origin)?.validate(Some(origin))?;
        config
            .checks
            .into_iter()
            .next()
            .context("the bench config has no check")
    }

    async fn run_ours(
        check: ScheduledCheck,
        queries: usize,
        concurrency: usize,
    ) -> anyhow::Result<Figures> {
        let check = Arc::new(check);
        let limit = Arc::new(Semaphore::new(concurrency));
        let cpu_before = own_cpu_seconds()?;
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..queries {
            let (check, limit) = (Arc::clone(&check), Arc::clone(&limit));
            tasks.spawn(async move { check.run(&limit).await });
        }
        let mut failures = 0;
        while let Some(results) = tasks.join_next().await {
            failures += results?
                .iter()
                .filter(|result| result.outcome != estate_proto::v1::Outcome::Pass as i32)
                .count();
        }
        Ok(Figures {
            queries,
            elapsed: started.elapsed(),
            cpu_seconds: own_cpu_seconds()? - cpu_before,
            failures,
        })
    }

    /// One `GET` over a fresh connection; returns the body.
    async fn http_get(address: &str, path: &str) -> anyhow::Result<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(address).await?;
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok(String::from_utf8_lossy(&response).into_owned())
    }

    async fn run_blackbox(
        exporter: &str,
        pid: u32,
        dns_server: &str,
        queries: usize,
        concurrency: usize,
    ) -> anyhow::Result<Figures> {
        let path = Arc::new(format!("/probe?module=dns_a&target={dns_server}"));
        let exporter = Arc::new(exporter.to_owned());
        let limit = Arc::new(Semaphore::new(concurrency));
        let cpu_before = process_cpu_seconds(pid)?;
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..queries {
            let (exporter, path, limit) =
                (Arc::clone(&exporter), Arc::clone(&path), Arc::clone(&limit));
            tasks.spawn(async move {
                let _permit = limit.acquire().await?;
                let body = http_get(&exporter, &path).await?;
                anyhow::Ok(body.contains("\nprobe_success 1"))
            });
        }
        let mut failures = 0;
        while let Some(result) = tasks.join_next().await {
            if !result?? {
                failures += 1;
            }
        }
        Ok(Figures {
            queries,
            elapsed: started.elapsed(),
            cpu_seconds: process_cpu_seconds(pid)? - cpu_before,
            failures,
        })
    }

    pub fn main() -> anyhow::Result<()> {
        let mut queries = 2000usize;
        let mut concurrency = 8usize;
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            let value: usize = args
                .next()
                .with_context(|| format!("`{flag}` needs a value\n{USAGE}"))?
                .parse()
                .with_context(|| format!("`{flag}` needs a number\n{USAGE}"))?;
            match flag.as_str() {
                "--queries" => queries = value.max(1),
                "--concurrency" => concurrency = value.max(1),
                other => bail!("unknown argument `{other}`\n{USAGE}"),
            }
        }
        let work = tempfile::tempdir()?;

        // The local DNS server both probes ask.
        let dns_port = free_udp_port()?;
        let dns_server = format!("127.0.0.1:{dns_port}");
        let _dnsmasq = Running(
            Command::new("dnsmasq")
                .args([
                    "--keep-in-foreground",
                    "--conf-file=/dev/null",
                    "--no-resolv",
                    "--no-hosts",
                    "--bind-interfaces",
                    "--listen-address=127.0.0.1",
                    "--user=root",
                    "--pid-file=",
                    &format!("--port={dns_port}"),
                    &format!("--address=/{QUERY_NAME}/192.0.2.1"),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("failed to start dnsmasq (Debian package `dnsmasq`)")?,
        );

        // The peer.
        let exporter_port = free_tcp_port()?;
        let exporter_address = format!("127.0.0.1:{exporter_port}");
        let config = work.path().join("blackbox.yml");
        std::fs::write(
            &config,
            format!(
                "modules:\n  dns_a:\n    prober: dns\n    timeout: 2s\n    dns:\n      \
                 query_name: \"{QUERY_NAME}\"\n      query_type: \"A\"\n      \
                 transport_protocol: \"udp\"\n      preferred_ip_protocol: \"ip4\"\n"
            ),
        )?;
        let exporter = Running(
            Command::new("prometheus-blackbox-exporter")
                .arg(format!("--config.file={}", config.display()))
                .arg(format!("--web.listen-address={exporter_address}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("failed to start prometheus-blackbox-exporter (Debian package)")?,
        );
        let exporter_pid = exporter.0.id();

        let runtime = tokio::runtime::Runtime::new()?;
        runtime.block_on(async {
            // Both servers up: poll (bounded) until one probe of each passes.
            let check = dns_check(&dns_server)?;
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let ours = run_ours(check.clone(), 1, 1).await?;
                let theirs = run_blackbox(&exporter_address, exporter_pid, &dns_server, 1, 1).await;
                if ours.failures == 0 && matches!(theirs, Ok(ref f) if f.failures == 0) {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("dnsmasq or blackbox_exporter did not come up within 20s");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            // Warm-up, then the measured runs.
            run_ours(check.clone(), 100, concurrency).await?;
            run_blackbox(&exporter_address, exporter_pid, &dns_server, 100, concurrency).await?;
            let ours = run_ours(check, queries, concurrency).await?;
            let theirs =
                run_blackbox(&exporter_address, exporter_pid, &dns_server, queries, concurrency).await?;

            println!("estate-bench-dns: {queries} A queries for {QUERY_NAME} against dnsmasq on {dns_server}, {concurrency} at once");
            println!("{:<46} {:>10} {:>16} {:>9}", "", "queries/s", "cpu µs/query", "failures");
            ours.print("estate-agent dns check");
            theirs.print("blackbox_exporter dns probe (via /probe)");
            println!(
                "ratio cpu per query estate/blackbox: {:.2}; ratio queries/s estate/blackbox: {:.2}",
                (ours.cpu_seconds / ours.queries as f64) / (theirs.cpu_seconds / theirs.queries as f64).max(1e-9),
                (ours.queries as f64 / ours.elapsed.as_secs_f64())
                    / (theirs.queries as f64 / theirs.elapsed.as_secs_f64())
            );
            anyhow::Ok(())
        })
    }
}
