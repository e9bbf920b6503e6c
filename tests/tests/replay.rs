//! An agent that spooled many reports through an outage replays them into a collector whose
//! per-agent rate limit is far below the replay's pace: the collector refuses the excess with
//! `RESOURCE_EXHAUSTED`, the agent retries shortly, and every report arrives (none dropped).
//! Agent and collector run in this process, on loopback.

use estate_agent::config::ConfigFile;
use estate_agent::spool::{Spool, SpoolLimits};
use estate_proto::v1::{HostIdentity, ReportRequest};
use std::time::{Duration, Instant, SystemTime};
use tokio::net::TcpListener;

const SPOOLED: u64 = 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_replay_is_paced_not_starved() {
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("agent");
    std::fs::create_dir_all(&state_dir).unwrap();
    let agent_id = "6f1d0c1e-57a2-4c55-9d1e-2a0b7d1c9e11";
    std::fs::write(state_dir.join("agent-id"), format!("{agent_id}\n")).unwrap();
    std::fs::write(state_dir.join("sequence"), format!("{SPOOLED}\n")).unwrap();
    // The outage: reports 1 to 30 waiting in the spool.
    let limits = SpoolLimits {
        max_bytes: 16 << 20,
        max_age: Duration::from_secs(3600),
    };
    let mut spool = Spool::open(&state_dir, limits, SystemTime::now()).unwrap();
    for sequence in 1..=SPOOLED {
        let report = ReportRequest {
            identity: Some(HostIdentity {
                agent_id: agent_id.into(),
                hostname: "replayer".into(),
                ..Default::default()
            }),
            sequence,
            agent_time_unix_ms: 1,
            ..Default::default()
        };
        spool.push(report, SystemTime::now()).unwrap();
    }
    drop(spool);

    let collector_config = estate_collector::config::CollectorConfig {
        database: dir.path().join("estate.db"),
        agent_rate_limit: estate_collector::limits::RateLimit {
            reports_per_second: 20.0,
            burst: 5,
        },
        ..Default::default()
    };
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc_address = grpc.local_addr().unwrap();
    let http_address = http.local_addr().unwrap();
    let (stop_collector, collector_stopped) = tokio::sync::oneshot::channel::<()>();
    let collector = tokio::spawn(estate_collector::run(collector_config, grpc, http, async {
        let _ = collector_stopped.await;
    }));

    let text = format!(
        "[agent]\nstate_dir = \"{}\"\nroot = \"{}\"\n[collector]\nurl = \"http://{grpc_address}\"\ninsecure = true\n\
         [schedule]\nheartbeat_interval = \"1h\"\n[spool]\nretry_initial_delay = \"50ms\"\n\
         retry_max_delay = \"200ms\"\n",
        state_dir.display(),
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../agent/tests/fixtures/inventory/kvm-guest")
            .display(),
    );
    let path = dir.path().join("agent.toml");
    let config = ConfigFile::parse(&text, &path)
        .unwrap()
        .validate(Some(&path))
        .unwrap();
    let (stop_agent, agent_stopped) = tokio::sync::oneshot::channel::<()>();
    let started = Instant::now();
    let agent = tokio::spawn(estate_agent::schedule::run(config, async {
        let _ = agent_stopped.await;
    }));

    // Replayed: the 30 spooled reports and the one built at start.
    let spool_dir = state_dir.join("spool");
    let queued = || {
        std::fs::read_dir(&spool_dir)
            .unwrap()
            .filter(|entry| {
                entry
                    .as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".report")
            })
            .count()
    };
    while queued() > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "replay starved: {} reports still spooled",
            queued()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed();
    let _ = stop_agent.send(());
    agent.await.unwrap().unwrap();
    let dropped = std::fs::read_to_string(spool_dir.join("dropped")).unwrap_or_default();
    assert!(
        dropped.trim().is_empty() || dropped.trim() == "0",
        "{dropped}"
    );

    let metrics = tokio::task::spawn_blocking(move || get(http_address, "/metrics"))
        .await
        .unwrap();
    let host = tokio::task::spawn_blocking(move || {
        get(http_address, &format!("/api/v1/hosts/{agent_id}"))
    })
    .await
    .unwrap();
    let _ = stop_collector.send(());
    collector.await.unwrap().unwrap();

    let value = |prefix: &str| -> f64 {
        metrics
            .lines()
            .find(|line| line.starts_with(prefix))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("no `{prefix}` in /metrics"))
    };
    let refused = value("estate_ingest_rejected_total{reason=\"rate_limited\"}");
    let stored = value("estate_collector_reports_total{result=\"stored\"}");
    println!(
        "replayed {} reports in {elapsed:.2?} (limit 20/s, burst 5); {refused} refusals by the \
         rate limit, retried",
        SPOOLED + 1
    );
    assert!(refused > 0.0, "the rate limit never applied");
    assert_eq!(stored, (SPOOLED + 1) as f64);
    assert!(host.contains("\"reports_received_total\":31"), "{host}");
    assert!(host.contains("\"dropped_reports_total\":0"), "{host}");
}

/// A blocking GET of `path`, the body only.
fn get(address: std::net::SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text.split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default()
}
