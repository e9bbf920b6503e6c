//! `estate-bench-api`: latency of `GET /api/v1/hosts` with inventory filters at N hosts under
//! concurrent load, next to a minimal handler (same HTTP server library, same client, same
//! database file) that does one indexed lookup and returns the host ids as JSON: the floor.
//!
//! The database is filled through the collector's own store (`write_batch`, each simulated
//! host's first report with its inventory), then a real collector serves it on loopback. The
//! database is a SQLite file, or a PostgreSQL database with `--database postgres://…` (then
//! the floor's lookup runs on PostgreSQL too). Figures are printed, never asserted. Bounded in
//! count and time.

use anyhow::{Context as _, bail};
use axum::extract::{Query, State};
use axum::routing::get;
use estate_collector::store::postgres::{self, PostgresStore};
use estate_collector::store::sqlite::SqliteStore;
use estate_collector::store::{IncomingReport, Store, WritePolicy};
use estate_collector::validate::{Limits, validate_report};
use estate_tests::{flags, simulation};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

const USAGE: &str = "usage: estate-bench-api [--hosts N] [--concurrency N] [--seconds S] \
     [--database FILE|postgres://...] [--queries NAME,...]\n\
     queries (all by default): floor, address, vendor, vendor-exact, substring, substring-rare, \
     deep, deep-vendor, checks-pass, checks-failing";

/// The query shapes measured, by the name `--queries` selects them with.
const QUERY_NAMES: &[&str] = &[
    "floor",
    "address",
    "vendor",
    "vendor-exact",
    "substring",
    "substring-rare",
    "deep",
    "deep-vendor",
    "checks-pass",
    "checks-failing",
];

#[derive(Debug, Clone)]
struct Settings {
    hosts: usize,
    concurrency: usize,
    /// Length of each measured load, per query.
    seconds: f64,
    /// Keep (and reuse) the filled database here instead of a temporary directory: a SQLite
    /// file, or a PostgreSQL URL (`postgres://…`).
    database: Option<std::path::PathBuf>,
    /// The query shapes to measure (names from `QUERY_NAMES`), in that order.
    queries: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let mut settings = Settings {
        hosts: 100_000,
        concurrency: 8,
        seconds: 10.0,
        database: None,
        queries: QUERY_NAMES.iter().map(|name| (*name).to_owned()).collect(),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for (flag, text) in flags::pairs(&args, USAGE)? {
        match flag {
            "--hosts" => settings.hosts = flags::count(flag, text)?,
            "--concurrency" => settings.concurrency = flags::count(flag, text)?,
            "--seconds" => settings.seconds = flags::positive(flag, text)?,
            "--database" => settings.database = Some(text.into()),
            "--queries" => {
                settings.queries = text.split(',').map(str::to_owned).collect();
                if let Some(unknown) = settings
                    .queries
                    .iter()
                    .find(|name| !QUERY_NAMES.contains(&name.as_str()))
                {
                    bail!("`--queries` names `{unknown}`, which is not a query shape\n{USAGE}");
                }
            }
            other => bail!("unknown argument `{other}`\n{USAGE}"),
        }
    }
    // A PostgreSQL URL's password is not printed.
    let shown = Settings {
        database: settings
            .database
            .as_ref()
            .map(|database| match postgres_url(database) {
                Some(url) => postgres::redact_url(url).into(),
                None => database.clone(),
            }),
        ..settings.clone()
    };
    println!("estate-bench-api: {shown:?}");
    tokio::runtime::Runtime::new()?.block_on(run(settings))
}

/// The PostgreSQL URL when `database` is one, `None` for a SQLite file.
fn postgres_url(database: &Path) -> Option<&str> {
    database
        .to_str()
        .filter(|text| postgres::is_postgres_url(text))
}

/// Fills `database` with `hosts` simulated hosts through the collector's store, unless it
/// already holds that many (a database kept from an earlier run with `--database`).
fn fill(database: &Path, hosts: usize) -> anyhow::Result<()> {
    let (store, shown): (Box<dyn Store>, String) = match postgres_url(database) {
        Some(url) => {
            let store = PostgresStore::open(url, "estate-bench-api")?;
            let shown = store.shown_url().to_owned();
            (Box::new(store), shown)
        }
        None => (
            Box::new(SqliteStore::open(database)?),
            database.display().to_string(),
        ),
    };
    let present = store.load_hosts()?.len();
    if present == hosts {
        println!("database `{shown}` already holds {hosts} hosts");
        return Ok(());
    }
    if present != 0 {
        bail!("database `{shown}` holds {present} hosts, not {hosts}: remove it or choose another");
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let policy = WritePolicy {
        stale_after_ms: 300_000,
    };
    let started = Instant::now();
    for first in (0..hosts).step_by(512) {
        let batch = (first..(first + 512).min(hosts))
            .map(|agent| {
                let report = simulation::report(agent, 1, 0, true, now);
                Ok(IncomingReport {
                    report: validate_report(report, &Limits::default())
                        .map_err(|error| anyhow::anyhow!(error.message))?,
                    received_ms: now,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        store.write_batch(&batch, policy)?;
    }
    println!(
        "filled `{shown}` with {hosts} hosts through the store in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    if let Some(url) = postgres_url(database) {
        // The statistics and visibility map a running database would have by now through
        // autovacuum, so the planner sees the data it plans for.
        let started = Instant::now();
        postgres::connect(url)?
            .batch_execute("VACUUM ANALYZE")
            .with_context(|| format!("failed to vacuum `{shown}`"))?;
        println!(
            "vacuumed and analysed in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// The floor: one indexed lookup of the address, answered as JSON.
#[derive(Clone)]
struct Minimal {
    connections: Arc<FloorConnections>,
}

/// The floor's own connections to the benchmark's database, one per request slot, as the
/// store has its readers.
enum FloorConnections {
    Sqlite(Vec<Mutex<rusqlite::Connection>>),
    /// Each with the lookup prepared on it.
    Postgres(Vec<Mutex<(::postgres::Client, ::postgres::Statement)>>),
}

/// A PostgreSQL client closes its connection by blocking, which panics on a thread that drives
/// the runtime (and, while a failed run unwinds, aborts it): there the clients go on a thread
/// of their own.
impl Drop for FloorConnections {
    fn drop(&mut self) {
        if let FloorConnections::Postgres(connections) = self {
            let connections = std::mem::take(connections);
            if tokio::runtime::Handle::try_current().is_ok() {
                let _ = std::thread::spawn(move || drop(connections)).join();
            }
        }
    }
}

/// The floor's lookup on PostgreSQL, through `inventory_fields_by_value` as the store's is.
const POSTGRES_LOOKUP: &str = "SELECT host_id FROM inventory_fields \
     WHERE field = 'networks.addresses.address' AND lower(value) = lower($1)";

impl FloorConnections {
    fn open(database: &Path) -> anyhow::Result<Self> {
        if let Some(url) = postgres_url(database) {
            let connections = (0..4)
                .map(|_| {
                    let mut client = postgres::connect(url)?;
                    let lookup = client.prepare(POSTGRES_LOOKUP)?;
                    anyhow::Ok(Mutex::new((client, lookup)))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            return Ok(FloorConnections::Postgres(connections));
        }
        let connections = (0..4)
            .map(|_| {
                rusqlite::Connection::open_with_flags(
                    database,
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                        | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .map(Mutex::new)
            })
            .collect::<rusqlite::Result<Vec<_>>>()
            .with_context(|| format!("failed to open `{}`", database.display()))?;
        Ok(FloorConnections::Sqlite(connections))
    }

    /// The ids of the hosts with `address`, on the connection of slot `slot`.
    fn lookup(&self, slot: usize, address: String) -> anyhow::Result<Vec<String>> {
        match self {
            FloorConnections::Sqlite(connections) => {
                let connection = connections[slot % connections.len()]
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                let mut statement = connection.prepare_cached(
                    "SELECT host_id FROM inventory_fields \
                     WHERE field = 'networks.addresses.address' AND value = ?1 COLLATE NOCASE",
                )?;
                Ok(statement
                    .query_map([address], |row| row.get::<_, String>(0))?
                    .collect::<rusqlite::Result<Vec<_>>>()?)
            }
            FloorConnections::Postgres(connections) => {
                let mut guard = connections[slot % connections.len()]
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                let (client, lookup) = &mut *guard;
                Ok(client
                    .query(&*lookup, &[&address])?
                    .iter()
                    .map(|row| row.get(0))
                    .collect())
            }
        }
    }
}

async fn minimal_lookup(
    State(minimal): State<Minimal>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<axum::Json<serde_json::Value>, (axum::http::StatusCode, String)> {
    let address = query.get("address").cloned().unwrap_or_default();
    let ids = tokio::task::spawn_blocking(move || {
        let slot = address.len();
        minimal.connections.lookup(slot, address)
    })
    .await
    .map_err(|error| {
        (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            error.to_string(),
        )
    })?
    .map_err(|error| {
        (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            error.to_string(),
        )
    })?;
    Ok(axum::Json(serde_json::json!({ "hosts": ids })))
}

/// What the client keeps of an answer: how many hosts or check results it lists. Read without
/// building a JSON tree, so the client (which shares the machine) takes less CPU from the
/// server it measures.
#[derive(serde::Deserialize)]
struct Listed {
    #[serde(default)]
    hosts: Vec<serde::de::IgnoredAny>,
    #[serde(default)]
    checks: Vec<serde::de::IgnoredAny>,
}

#[derive(Debug)]
struct LoadFigures {
    requests: usize,
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Hosts in the last answer (a check that the query matched what it should).
    matched: usize,
}

/// `concurrency` clients each sending requests built by `url` for `seconds`.
async fn load(
    client: &reqwest::Client,
    concurrency: usize,
    seconds: f64,
    url: Arc<dyn Fn(usize) -> String + Send + Sync>,
) -> anyhow::Result<LoadFigures> {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..concurrency {
        let (client, url) = (client.clone(), Arc::clone(&url));
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let mut matched = 0;
            let mut request = worker;
            while Instant::now() < deadline {
                let target = url(request);
                request += concurrency;
                let sent = Instant::now();
                let response = client.get(&target).send().await?;
                let status = response.status();
                let body = response.bytes().await?;
                if !status.is_success() {
                    bail!(
                        "`{target}` answered {status}: {}",
                        String::from_utf8_lossy(&body)
                    );
                }
                let listed: Listed = serde_json::from_slice(&body)
                    .with_context(|| format!("`{target}` answered no JSON list"))?;
                latencies.push(sent.elapsed());
                matched = listed.hosts.len() + listed.checks.len();
            }
            anyhow::Ok((latencies, matched))
        });
    }
    let mut latencies = Vec::new();
    let mut matched = 0;
    while let Some(result) = tasks.join_next().await {
        let (mine, last) = result??;
        latencies.extend(mine);
        matched = last;
    }
    let elapsed = started.elapsed();
    latencies.sort();
    if latencies.is_empty() {
        bail!("no request completed");
    }
    let percentile = |fraction: f64| {
        let index = ((latencies.len() as f64 - 1.0) * fraction).round() as usize;
        latencies[index].as_secs_f64() * 1000.0
    };
    Ok(LoadFigures {
        requests: latencies.len(),
        per_second: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50_ms: percentile(0.50),
        p99_ms: percentile(0.99),
        matched,
    })
}

async fn run(settings: Settings) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let database = settings
        .database
        .clone()
        .unwrap_or_else(|| dir.path().join("api.db"));
    let hosts = settings.hosts;
    let fill_path = database.clone();
    tokio::task::spawn_blocking(move || fill(&fill_path, hosts)).await??;

    let config = estate_collector::config::CollectorConfig {
        database: database.clone(),
        ..Default::default()
    };
    let grpc = TcpListener::bind("127.0.0.1:0").await?;
    let http = TcpListener::bind("127.0.0.1:0").await?;
    let api = http.local_addr()?;
    let (stop_collector, collector_stopped) = tokio::sync::oneshot::channel::<()>();
    let collector = tokio::spawn(estate_collector::run(config, grpc, http, async {
        let _ = collector_stopped.await;
    }));

    let floor_database = database.clone();
    let connections = Arc::new(
        tokio::task::spawn_blocking(move || FloorConnections::open(&floor_database)).await??,
    );
    let minimal = axum::Router::new()
        .route("/lookup", get(minimal_lookup))
        .with_state(Minimal {
            connections: Arc::clone(&connections),
        });
    let minimal_listener = TcpListener::bind("127.0.0.1:0").await?;
    let minimal_address = minimal_listener.local_addr()?;
    let (stop_minimal, minimal_stopped) = tokio::sync::oneshot::channel::<()>();
    let minimal_server = tokio::spawn(async move {
        axum::serve(minimal_listener, minimal)
            .with_graceful_shutdown(async {
                let _ = minimal_stopped.await;
            })
            .await
    });

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(settings.concurrency)
        .build()?;
    // Wait until the collector answers.
    for attempt in 0.. {
        match client.get(format!("http://{api}/healthz")).send().await {
            Ok(response) if response.status().is_success() => break,
            _ if attempt < 100 => tokio::time::sleep(Duration::from_millis(100)).await,
            other => bail!("the collector did not come up: {other:?}"),
        }
    }

    // Hosts are picked across all of them (a multiplicative step), so no cache serves them.
    let pick = move |request: usize| (request.wrapping_mul(7919)) % hosts;
    let vendor = |request: usize| {
        simulation::manufacturer(request)
            .split(' ')
            .next()
            .unwrap_or("Dell")
            .to_owned()
    };
    // A cursor into the second half of the list, as a client paging far in would hold.
    let deep_cursor = move |request: usize| {
        let agent = hosts / 2 + pick(request) / 2;
        let hostname: String = simulation::hostname(agent)
            .bytes()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        format!("{hostname}.{}", simulation::agent_id(agent))
    };
    type Url = Arc<dyn Fn(usize) -> String + Send + Sync>;
    let shape = |name: &str| -> (&'static str, Url) {
        match name {
            "floor" => (
                "floor: minimal handler, one indexed lookup (address)",
                Arc::new(move |request| {
                    format!(
                        "http://{minimal_address}/lookup?address={}",
                        simulation::address(pick(request))
                    )
                }),
            ),
            "address" => (
                "/api/v1/hosts?networks.addresses.address=<one host>",
                Arc::new(move |request| {
                    format!(
                        "http://{api}/api/v1/hosts?networks.addresses.address={}",
                        simulation::address(pick(request))
                    )
                }),
            ),
            "vendor" => (
                "/api/v1/hosts?bios.smanufacturer=<vendor>*&os=Debian&limit=100",
                Arc::new(move |request| {
                    format!(
                        "http://{api}/api/v1/hosts?bios.smanufacturer={}*&os=Debian&limit=100",
                        vendor(request)
                    )
                }),
            ),
            "vendor-exact" => (
                "/api/v1/hosts?bios.smanufacturer=<vendor, exact>&limit=100",
                Arc::new(move |request| {
                    format!(
                        "http://{api}/api/v1/hosts?bios.smanufacturer={}&limit=100",
                        simulation::manufacturer(request)
                    )
                }),
            ),
            "substring" => (
                "/api/v1/hosts?bios.smanufacturer=*<vendor>*&limit=100",
                Arc::new(move |request| {
                    format!(
                        "http://{api}/api/v1/hosts?bios.smanufacturer=*{}*&limit=100",
                        vendor(request).to_lowercase()
                    )
                }),
            ),
            "substring-rare" => (
                "/api/v1/hosts?bios.ssn=*<7 digits>*&limit=100 (~11 hosts)",
                Arc::new(move |request| {
                    // `SN` and 8 digits: 7 of them match the host's own serial and 10 others.
                    let serial = format!("{:08}", pick(request));
                    format!(
                        "http://{api}/api/v1/hosts?bios.ssn=*{}*&limit=100",
                        &serial[..7]
                    )
                }),
            ),
            "deep" => (
                "/api/v1/hosts?limit=100&cursor=<second half>",
                Arc::new(move |request| {
                    format!(
                        "http://{api}/api/v1/hosts?limit=100&cursor={}",
                        deep_cursor(request)
                    )
                }),
            ),
            "deep-vendor" => (
                "/api/v1/hosts?bios.smanufacturer=<vendor>*&limit=100&cursor=<2nd half>",
                Arc::new(move |request| {
                    format!(
                        "http://{api}/api/v1/hosts?bios.smanufacturer={}*&limit=100&cursor={}",
                        vendor(request),
                        deep_cursor(request)
                    )
                }),
            ),
            "checks-pass" => (
                "/api/v1/checks?outcome=pass&limit=100",
                Arc::new(move |_| format!("http://{api}/api/v1/checks?outcome=pass&limit=100")),
            ),
            _ => (
                "/api/v1/checks?failing=true&limit=100 (none fail)",
                Arc::new(move |_| format!("http://{api}/api/v1/checks?failing=true&limit=100")),
            ),
        }
    };

    let (c, s) = (settings.concurrency, settings.seconds);
    let mut measured = Vec::new();
    for name in &settings.queries {
        let (title, url) = shape(name);
        measured.push((name.clone(), title, load(&client, c, s, url).await?));
    }

    let _ = stop_minimal.send(());
    minimal_server.await??;
    drop(connections);

    let _ = stop_collector.send(());
    collector.await??;

    println!();
    println!(
        "== GET at {hosts} hosts, {c} concurrent clients, {s} s each (client and servers share the machine)"
    );
    println!(
        "{:<72} {:>8} {:>9} {:>8} {:>8} {:>8}",
        "", "requests", "req/s", "p50 ms", "p99 ms", "matched"
    );
    for (_, title, figures) in &measured {
        println!(
            "{title:<72} {:>8} {:>9.0} {:>8.2} {:>8.2} {:>8}",
            figures.requests, figures.per_second, figures.p50_ms, figures.p99_ms, figures.matched
        );
    }
    if let Some((_, _, floor)) = measured.iter().find(|(name, _, _)| name == "floor") {
        for (name, _, figures) in measured.iter().filter(|(name, _, _)| name != "floor") {
            println!(
                "ratio p99 {name} / floor: {:.2}",
                figures.p99_ms / floor.p99_ms
            );
        }
    }
    Ok(())
}
