//! Three collectors on one PostgreSQL database, agents listing all three: every live host's
//! series on exactly one collector's `/metrics`, the same hosts in every collector's API, and,
//! when one collector is killed, its agents failing over with their hosts never shown twice;
//! a host deleted through one collector disappears from every collector's `/metrics`.
//!
//! Needs a PostgreSQL server: `ESTATE_TEST_POSTGRES_URL` (`.ci/postgres-cluster start` prints
//! it; `.ci/run` runs this test with `--ignored`).

use estate_collector::store::postgres::{create_database, drop_database};
use estate_tests::harness::{Running, binary, fixture, free_port, http_get, wait_until};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const AGENTS: usize = 6;
/// The collectors' `ownership_refresh`: the longest a host may be missing during a hand-over.
const REFRESH: Duration = Duration::from_secs(1);

struct Collector {
    id: String,
    process: Option<Running>,
    grpc: String,
    http: String,
}

impl Collector {
    /// Starts collector `id`; `extra` ends its config (default: `stale_after = "1m"`).
    fn start(dir: &Path, id: &str, database_url: &str, extra: &str) -> Self {
        let (grpc, http) = (
            format!("127.0.0.1:{}", free_port()),
            format!("127.0.0.1:{}", free_port()),
        );
        let config = dir.join(format!("{id}.toml"));
        std::fs::write(
            &config,
            format!(
                "grpc_listen = \"{grpc}\"\nhttp_listen = \"{http}\"\ndatabase = \"{database_url}\"\n\
                 collector_id = \"{id}\"\nownership_refresh = \"{}ms\"\ninsecure = true\n{extra}\n",
                REFRESH.as_millis(),
                extra = if extra.is_empty() { "stale_after = \"1m\"" } else { extra },
            ),
        )
        .unwrap();
        let child = Command::new(binary("estate-collector"))
            .arg("--config")
            .arg(&config)
            .env("ESTATE_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let collector = Collector {
            id: id.to_owned(),
            process: Some(Running(child)),
            grpc,
            http,
        };
        wait_until(
            "a collector answers /healthz",
            Duration::from_secs(60),
            || {
                collector
                    .get("/healthz")
                    .is_some_and(|(status, _)| status == 200)
            },
        );
        collector
    }

    fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(&format!("http://{}{path}", self.http))
    }

    /// The host ids whose `estate_host_info` series this collector renders.
    fn rendered_hosts(&self) -> Vec<String> {
        let Some((200, text)) = self.get("/metrics") else {
            return Vec::new();
        };
        text.lines()
            .filter(|line| line.starts_with("estate_host_info{"))
            .filter_map(|line| {
                let start = line.find("host_id=\"")? + "host_id=\"".len();
                let end = start + line[start..].find('"')?;
                Some(line[start..end].to_owned())
            })
            .collect()
    }

    /// `(host id, state)` of every host in the API's list.
    fn api_hosts(&self) -> Vec<(String, String)> {
        let (status, body) = self
            .get("/api/v1/hosts?limit=100")
            .expect("the API answers");
        assert_eq!(status, 200, "{body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        let mut hosts: Vec<(String, String)> = body["hosts"]
            .as_array()
            .expect("a host list")
            .iter()
            .map(|host| {
                (
                    host["id"].as_str().unwrap_or_default().to_owned(),
                    host["state"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        hosts.sort();
        hosts
    }
}

/// How many collectors render each host, over the given collectors' `/metrics`.
fn union(collectors: &[&Collector]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for collector in collectors {
        for host in collector.rendered_hosts() {
            *counts.entry(host).or_insert(0) += 1;
        }
    }
    counts
}

fn per_collector(collectors: &[&Collector]) -> String {
    collectors
        .iter()
        .map(|c| format!("{} {}", c.id, c.rendered_hosts().len()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn start_agent(dir: &Path, index: usize, urls: &[String]) -> Running {
    let home = dir.join(format!("agent-{index}"));
    std::fs::create_dir_all(&home).unwrap();
    let config = home.join("agent.toml");
    let urls: Vec<String> = urls.iter().map(|url| format!("\"{url}\"")).collect();
    std::fs::write(
        &config,
        format!(
            "[agent]\nstate_dir = \"{state}\"\nroot = \"{root}\"\n\n[collector]\nurls = [{urls}]\ninsecure = true\n\
             connect_timeout = \"1s\"\ntimeout = \"5s\"\n\n[schedule]\ninventory_interval = \"1h\"\n\
             inventory_jitter = \"0s\"\nheartbeat_interval = \"1s\"\n",
            state = home.join("state").display(),
            root = fixture("kvm-guest").display(),
            urls = urls.join(", "),
        ),
    )
    .unwrap();
    let child = Command::new(binary("estate-agent"))
        .arg("--config")
        .arg(&config)
        .arg("run")
        .env("ESTATE_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Running(child)
}

/// Drops the test's database when the test ends, however it ends.
struct Database {
    server: String,
    name: String,
}

impl Drop for Database {
    fn drop(&mut self) {
        if let Err(error) = drop_database(&self.server, &self.name) {
            eprintln!("could not drop test database `{}`: {error}", self.name);
        }
    }
}

#[test]
#[ignore = "needs PostgreSQL: .ci/run starts one (ESTATE_TEST_POSTGRES_URL)"]
fn three_collectors_share_hosts_and_agents_fail_over() {
    let server = std::env::var("ESTATE_TEST_POSTGRES_URL").expect(
        "ESTATE_TEST_POSTGRES_URL is not set: start a server with `.ci/postgres-cluster start DIR`",
    );
    let name = format!("estate_multi_collector_{}", std::process::id());
    let database_url = create_database(&server, &name).unwrap();
    let _database = Database { server, name };
    let dir = tempfile::tempdir().unwrap();

    let mut collectors: Vec<Collector> = ["collector-a", "collector-b", "collector-c"]
        .iter()
        .map(|id| Collector::start(dir.path(), id, &database_url, ""))
        .collect();
    let urls: Vec<String> = collectors
        .iter()
        .map(|c| format!("http://{}", c.grpc))
        .collect();
    // Agent i lists collector i % 3 first, so the hosts start spread over all three.
    let _agents: Vec<Running> = (0..AGENTS)
        .map(|index| {
            let mut order = urls.clone();
            order.rotate_left(index % urls.len());
            start_agent(dir.path(), index, &order)
        })
        .collect();

    let settled = wait_until(
        "every host is rendered by exactly one collector",
        Duration::from_secs(60),
        || {
            let counts = union(&collectors.iter().collect::<Vec<_>>());
            counts.len() == AGENTS && counts.values().all(|&n| n == 1)
        },
    );
    println!(
        "{AGENTS} agents on 3 collectors: all hosts rendered once after {:.1}s ({})",
        settled.as_secs_f64(),
        per_collector(&collectors.iter().collect::<Vec<_>>())
    );
    for collector in &collectors {
        let hosts = collector.api_hosts();
        assert_eq!(hosts.len(), AGENTS, "{} API: {hosts:?}", collector.id);
        assert!(
            hosts.iter().all(|(_, state)| state == "up"),
            "{} reports a host another collector owns as not up: {hosts:?}",
            collector.id
        );
    }
    assert_eq!(collectors[0].api_hosts(), collectors[1].api_hosts());
    assert_eq!(collectors[1].api_hosts(), collectors[2].api_hosts());
    let on_killed = collectors[0].rendered_hosts().len();
    assert!(on_killed > 0, "collector-a should hold some hosts");

    // Kill collector-a: its agents move to the next collector in their lists.
    collectors[0].process.take().unwrap().kill();
    let survivors: Vec<&Collector> = collectors[1..].iter().collect();
    let mut doubles = 0;
    let mut longest_missing = Duration::ZERO;
    let mut missing_since: Option<Instant> = None;
    let recovered = wait_until(
        "the surviving collectors render every host once",
        Duration::from_secs(60),
        || {
            let counts = union(&survivors);
            doubles += counts.values().filter(|&&n| n > 1).count();
            let complete = counts.len() == AGENTS;
            match (complete, missing_since) {
                (false, None) => missing_since = Some(Instant::now()),
                (true, Some(since)) => {
                    longest_missing = longest_missing.max(since.elapsed());
                    missing_since = None;
                }
                _ => {}
            }
            complete && counts.values().all(|&n| n == 1)
        },
    );
    // And it stays so: sample for three refresh intervals.
    let steady_until = Instant::now() + 3 * REFRESH;
    let mut samples = 0;
    while Instant::now() < steady_until {
        let counts = union(&survivors);
        assert_eq!(counts.len(), AGENTS, "a host went missing: {counts:?}");
        assert!(
            counts.values().all(|&n| n == 1),
            "a host shown twice: {counts:?}"
        );
        samples += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "collector-a killed with {on_killed} hosts: all {AGENTS} rendered once by the \
         survivors after {:.1}s ({}); longest a host was missing: {:.1}s; hosts seen twice: \
         {doubles}; {samples} steady samples",
        recovered.as_secs_f64(),
        per_collector(&survivors),
        longest_missing.as_secs_f64()
    );
    assert_eq!(
        doubles, 0,
        "a host appeared on two collectors during the fail-over"
    );
    let survivors_api = survivors[0].api_hosts();
    assert_eq!(survivors_api.len(), AGENTS);
    assert!(
        survivors_api.iter().all(|(_, state)| state == "up"),
        "{survivors_api:?}"
    );
}

/// An admin API token and the config that accepts it.
const ADMIN_TOKEN: &str = "estate_api_multi_collector_test_admin_token";

/// `DELETE path` with the admin token: the status.
fn delete(collector: &Collector, path: &str) -> u16 {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        reqwest::Client::new()
            .delete(format!("http://{}{path}", collector.http))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("the API answers")
            .status()
            .as_u16()
    })
}

#[test]
#[ignore = "needs PostgreSQL: .ci/run starts one (ESTATE_TEST_POSTGRES_URL)"]
fn a_host_deleted_through_one_collector_disappears_from_every_collector() {
    let server = std::env::var("ESTATE_TEST_POSTGRES_URL").expect(
        "ESTATE_TEST_POSTGRES_URL is not set: start a server with `.ci/postgres-cluster start DIR`",
    );
    let name = format!("estate_multi_collector_delete_{}", std::process::id());
    let database_url = create_database(&server, &name).unwrap();
    let _database = Database { server, name };
    let dir = tempfile::tempdir().unwrap();
    let tokens = format!(
        "stale_after = \"1s\"\nexpire_after = \"1h\"\n\
         [[api_tokens]]\nname = \"ops\"\nscope = \"admin\"\nsha256 = \"{}\"\n",
        estate_collector::auth::hex(&estate_collector::auth::digest(ADMIN_TOKEN))
    );
    let owner = Collector::start(dir.path(), "collector-a", &database_url, &tokens);
    let other = Collector::start(dir.path(), "collector-b", &database_url, &tokens);

    // One report to `owner`, then silence (a decommissioned server).
    let agent = start_agent(dir.path(), 0, &[format!("http://{}", owner.grpc)]);
    wait_until(
        "the owner renders the host",
        Duration::from_secs(30),
        || owner.rendered_hosts().len() == 1,
    );
    agent.kill();
    let id = owner.rendered_hosts().remove(0);
    std::thread::sleep(Duration::from_secs(2));

    // Deleted through the other collector: gone from the database at once, and from the
    // owner's /metrics at its next deletion check.
    assert_eq!(delete(&other, &format!("/api/v1/hosts/{id}")), 200);
    let started = Instant::now();
    wait_until(
        "the owner stops rendering the deleted host",
        REFRESH * (estate_collector::ownership::DELETION_CHECK_REFRESHES + 5),
        || owner.rendered_hosts().is_empty(),
    );
    println!(
        "deleted through {}, gone from {}'s /metrics after {:.1} s",
        other.id,
        owner.id,
        started.elapsed().as_secs_f64()
    );
    assert!(other.rendered_hosts().is_empty());
    assert_eq!(delete(&owner, &format!("/api/v1/hosts/{id}")), 404);
}
