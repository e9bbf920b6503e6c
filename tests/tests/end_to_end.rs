//! End to end with the real binaries: `estate-collector` and `estate-agent` started as processes
//! on loopback ports, the agent inventorying a fixture tree (a Dell server), then the API and
//! `/metrics` checked over HTTPS. The collector's certificates come from its own
//! `estate-collector tls init`.
//!
//! The binaries are the ones `cargo test --workspace` builds next to this test
//! (`target/<profile>/`); `ESTATE_BIN_DIR` points elsewhere.

use estate_tests::harness::{self, Running, binary, fixture, free_port, http};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// Copies a fixture tree (files, directories and symlinks) so a test can change it.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        let kind = entry.file_type().unwrap();
        if kind.is_symlink() {
            #[cfg(unix)]
            std::os::unix::fs::symlink(std::fs::read_link(entry.path()).unwrap(), &target).unwrap();
        } else if kind.is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

struct Collector {
    process: Option<Running>,
    grpc: String,
    http: String,
    /// The CA of the collector's certificate; `None` with `--insecure`.
    ca_file: Option<PathBuf>,
    /// Client config trusting `ca_file`, for the HTTPS requests.
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// Runs `estate-collector tls init` for a collector on loopback; returns the CA file.
fn tls_init(dir: &Path) -> PathBuf {
    let output = Command::new(binary("estate-collector"))
        .args(["tls", "init", "--dir"])
        .arg(dir)
        .args(["--host", "127.0.0.1", "--host", "localhost"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    dir.join("ca.pem")
}

impl Collector {
    /// A collector with TLS, its database and certificates in `dir`.
    fn start(dir: &Path) -> Self {
        let tls_dir = dir.join("tls");
        let ca_file = tls_init(&tls_dir);
        let mut tls_args = vec!["--tls-cert-file".into(), tls_dir.join("server.pem")];
        tls_args.extend(["--tls-key-file".into(), tls_dir.join("server.key")]);
        Self::start_with(dir, &tls_args, Some(ca_file))
    }

    /// A plain-text collector (`--insecure`).
    fn start_insecure(dir: &Path) -> Self {
        Self::start_with(dir, &["--insecure".into()], None)
    }

    fn start_with(dir: &Path, extra: &[PathBuf], ca_file: Option<PathBuf>) -> Self {
        let (grpc, http) = (
            format!("127.0.0.1:{}", free_port()),
            format!("127.0.0.1:{}", free_port()),
        );
        let child = Command::new(binary("estate-collector"))
            .args(["--grpc-listen", &grpc, "--http-listen", &http, "--database"])
            .arg(dir.join("estate.db"))
            .args(["--stale-after", "1m"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let tls = ca_file.as_deref().map(http::client_config);
        let collector = Collector {
            process: Some(Running(child)),
            grpc,
            http,
            ca_file,
            tls,
        };
        // Readiness: the HTTP side answers once the store is open and both listeners are bound.
        wait_until("the collector answers /healthz", || {
            collector
                .try_get("/healthz")
                .is_some_and(|(status, _)| status == 200)
        });
        collector
    }

    fn url(&self) -> String {
        match self.tls {
            Some(_) => format!("https://{}", self.grpc),
            None => format!("http://{}", self.grpc),
        }
    }

    fn try_get(&self, path: &str) -> Option<(u16, String)> {
        http::get(&self.http, path, self.tls.as_ref())
    }

    fn get(&self, path: &str) -> (u16, String) {
        self.try_get(path)
            .unwrap_or_else(|| panic!("GET {path} failed"))
    }

    fn json(&self, path: &str) -> Value {
        let (status, body) = self.get(path);
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    fn metric(&self, line_prefix: &str) -> Option<f64> {
        let (_, text) = self.get("/metrics");
        text.lines()
            .find(|line| line.starts_with(line_prefix))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|value| value.parse().ok())
    }
}

/// Polls `condition` for up to 20 s: the processes run on their own clocks.
fn wait_until(what: &str, condition: impl FnMut() -> bool) {
    harness::wait_until(what, Duration::from_secs(20), condition);
}

/// An agent config reporting to `collector_url`; an `https://` url is verified against
/// `ca_file`, an `http://` one gets `insecure = true`.
fn agent_config(dir: &Path, root: &Path, collector_url: &str, ca_file: Option<&Path>) -> PathBuf {
    let path = dir.join("agent.toml");
    let transport = match ca_file {
        Some(ca_file) => format!("ca_file = \"{}\"", ca_file.display()),
        None if collector_url.starts_with("http://") => "insecure = true".to_owned(),
        None => String::new(),
    };
    std::fs::write(
        &path,
        format!(
            r#"
[agent]
state_dir = "{state}"
root = "{root}"

[collector]
url = "{collector_url}"
{transport}

[schedule]
inventory_interval = "1s"
inventory_jitter = "0s"
heartbeat_interval = "1s"

[[checks]]
name = "collector-grpc"
kind = "tcp"
address = "{address}"
interval = "1s"
timeout = "1s"
"#,
            state = dir.join("state").display(),
            root = root.display(),
            address = collector_url
                .trim_start_matches("https://")
                .trim_start_matches("http://"),
        ),
    )
    .unwrap();
    path
}

fn agent(config: &Path, args: &[&str]) -> Output {
    Command::new(binary("estate-agent"))
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn agent_reports_into_collector_and_the_api_and_metrics_show_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    copy_tree(&fixture("physical-server"), &root);
    let collector = Collector::start(dir.path());
    let config = agent_config(
        dir.path(),
        &root,
        &collector.url(),
        collector.ca_file.as_deref(),
    );

    // One report, sent by `once`.
    let sent = agent(&config, &["once"]);
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    let list = collector.json("/api/v1/hosts?bios.smanufacturer=Dell*&state=up");
    let hosts = list["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 1, "{list}");
    assert_eq!(hosts[0]["hostname"], "db01");
    let id = hosts[0]["id"].as_str().unwrap().to_owned();
    let detail = collector.json(&format!("/api/v1/hosts/{id}"));
    let packages: Vec<&str> = detail["inventory"]["softwares"]
        .as_array()
        .unwrap()
        .iter()
        .map(|package| package["name"].as_str().unwrap())
        .collect();
    assert!(packages.contains(&"postgresql-15"), "{packages:?}");
    assert_eq!(
        collector.metric("estate_collector_inventories_total "),
        Some(1.0)
    );

    // The service loop: heartbeats carry only the hash while nothing changes.
    let run = Running(
        Command::new(binary("estate-agent"))
            .arg("--config")
            .arg(&config)
            .arg("run")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let stored = |collector: &Collector| {
        collector
            .metric("estate_collector_reports_total{result=\"stored\"}")
            .unwrap_or(0.0)
    };
    // The first report of `run` is a full inventory by design (the agent cannot know what the
    // collector has); everything after it must be heartbeats.
    wait_until("the agent sent heartbeats", || stored(&collector) >= 5.0);
    assert_eq!(
        collector.metric("estate_collector_inventories_total "),
        Some(2.0),
        "unchanged inventories must travel as a hash only"
    );
    let checks = collector.json(&format!("/api/v1/hosts/{id}"))["checks"].clone();
    assert_eq!(checks[0]["check"], "collector-grpc", "{checks}");
    assert_eq!(checks[0]["outcome"], "pass", "{checks}");

    // A package upgrade on the host becomes one change record with old and new versions.
    let status_file = root.join("var/lib/dpkg/status");
    let status = std::fs::read_to_string(&status_file).unwrap();
    let version = status
        .split("\n\n")
        .find(|stanza| stanza.contains("Package: openssh-server"))
        .and_then(|stanza| stanza.lines().find(|line| line.starts_with("Version: ")))
        .map(|line| line.trim_start_matches("Version: ").to_owned())
        .unwrap();
    std::fs::write(
        &status_file,
        status.replace(&format!("Version: {version}"), "Version: 1:99.0-1"),
    )
    .unwrap();
    let changes_path = format!("/api/v1/hosts/{id}/changes");
    wait_until("the upgrade is recorded", || {
        collector.json(&changes_path)["changes"]
            .as_array()
            .is_some_and(|changes| !changes.is_empty())
    });
    let changes = collector.json(&changes_path);
    let change = &changes["changes"][0];
    assert_eq!(
        change["field"], "softwares[openssh-server:amd64].version",
        "{changes}"
    );
    assert_eq!(change["change"], "changed");
    assert_eq!(change["old"], Value::String(version));
    assert_eq!(change["new"], "1:99.0-1");

    // SIGTERM stops the agent cleanly.
    assert!(run.terminate().success());

    // /metrics: the names and label sets are pinned by a golden file.
    let (_, metrics) = collector.get("/metrics");
    assert!(
        metrics.contains("estate_host_up{host=\"db01\"} 1\n"),
        "{metrics}"
    );
    check_golden("metrics.txt", &metric_shapes(&metrics));

    let stopped = collector.process.unwrap().terminate();
    assert!(stopped.success(), "collector exit: {stopped}");
}

/// Each metric line reduced to its name and label names (`estate_host_up{host}`), plus the
/// HELP and TYPE lines: what dashboards depend on, without the values that vary per run.
fn metric_shapes(text: &str) -> String {
    let mut shapes: Vec<String> = text
        .lines()
        .filter(|line| !line.is_empty())
        .map(|line| {
            if line.starts_with('#') {
                return line.to_owned();
            }
            let series = line.rsplit_once(' ').map_or(line, |(series, _)| series);
            match series.split_once('{') {
                None => series.to_owned(),
                Some((name, labels)) => {
                    let keys: Vec<&str> = labels
                        .trim_end_matches('}')
                        .split("\",")
                        .filter_map(|pair| pair.split_once('=').map(|(key, _)| key))
                        .collect();
                    format!("{name}{{{}}}", keys.join(","))
                }
            }
        })
        .collect();
    shapes.dedup();
    shapes.join("\n") + "\n"
}

/// Compares with `tests/golden/<name>`; `ESTATE_BLESS=1` rewrites the file instead.
fn check_golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("golden")
        .join(name);
    if std::env::var_os("ESTATE_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        expected == actual,
        "`{}` differs from this run; if the change is intended, rerun with ESTATE_BLESS=1\n\
         --- expected\n{expected}\n--- actual\n{actual}",
        path.display()
    );
}

/// `estate-collector api-token create`: `(token, the config lines it printed)`.
fn api_token_create(name: &str, scope: &str) -> (String, String) {
    let output = Command::new(binary("estate-collector"))
        .args(["api-token", "create", "--name", name, "--scope", scope])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    let token = text.lines().nth(1).unwrap().to_owned();
    let config: Vec<&str> = text
        .lines()
        .filter(|line| !line.starts_with("estate_api_"))
        .collect();
    (token, config.join("\n") + "\n")
}

/// The README's "API tokens" steps with the real binaries over HTTPS: tokens made by
/// `api-token create`, its config lines appended as printed, then the API, `/metrics` and an
/// admin deletion with and without them.
#[test]
fn api_tokens_made_by_the_cli_guard_the_api_over_https() {
    let dir = tempfile::tempdir().unwrap();
    let (read, read_lines) = api_token_create("prometheus", "read");
    let (admin, admin_lines) = api_token_create("ops", "admin");
    assert!(read.starts_with("estate_api_") && read.len() == "estate_api_".len() + 64);
    assert!(!read_lines.contains(&read) && !admin_lines.contains(&admin));
    let config = dir.path().join("collector.toml");
    std::fs::write(
        &config,
        format!("metrics_auth = true\n{read_lines}{admin_lines}"),
    )
    .unwrap();

    let tls_dir = dir.path().join("tls");
    let ca_file = tls_init(&tls_dir);
    let args: Vec<PathBuf> = vec![
        "--tls-cert-file".into(),
        tls_dir.join("server.pem"),
        "--tls-key-file".into(),
        tls_dir.join("server.key"),
        "--config".into(),
        config,
    ];
    let collector = Collector::start_with(dir.path(), &args, Some(ca_file));
    let root = dir.path().join("root");
    copy_tree(&fixture("physical-server"), &root);
    let agent_config = agent_config(
        dir.path(),
        &root,
        &collector.url(),
        collector.ca_file.as_deref(),
    );
    assert!(agent(&agent_config, &["once"]).status.success());

    let call = |method: &str, path: &str, token: Option<&str>| {
        http::call(&collector.http, method, path, token, collector.tls.as_ref())
            .unwrap_or_else(|| panic!("{method} {path} failed"))
    };
    let (status, head, body) = call("GET", "/api/v1/hosts", None);
    assert_eq!(status, 401, "{body}");
    assert!(
        head.to_ascii_lowercase()
            .contains("www-authenticate: bearer realm=\"estate\""),
        "{head}"
    );
    assert_eq!(call("GET", "/metrics", None).0, 401);
    assert_eq!(call("GET", "/healthz", None).0, 200);
    let (status, _, body) = call("GET", "/api/v1/hosts", Some(&read));
    assert_eq!(status, 200, "{body}");
    let hosts: Value = serde_json::from_str(&body).unwrap();
    let id = hosts["hosts"][0]["id"].as_str().unwrap().to_owned();
    let host = format!("/api/v1/hosts/{id}");
    let (status, _, body) = call("DELETE", &host, Some(&read));
    assert_eq!(status, 403, "{body}");
    let (status, _, body) = call("DELETE", &host, Some(&admin));
    assert_eq!(status, 200, "{body}");
    assert_eq!(call("GET", &host, Some(&read)).0, 404);
    let (status, _, metrics) = call("GET", "/metrics", Some(&read));
    assert_eq!(status, 200);
    assert!(!metrics.contains("estate_host_up{"), "{metrics}");
    assert!(
        metrics.contains("estate_api_requests_rejected_total{reason=\"forbidden\"} 1"),
        "{metrics}"
    );
}

#[test]
fn once_json_prints_the_report_without_sending_it() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens there: `--json` must not try to send.
    let config = agent_config(
        dir.path(),
        &fixture("vmware-guest"),
        "http://127.0.0.1:9",
        None,
    );
    let output = agent(&config, &["once", "--json"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["inventory"]["hardware"]["vmsystem"], "VMware");
    assert_eq!(report["sequence"], 1);
    assert!(
        report["inventory_hash"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    assert!(report["identity"]["agent_id"].as_str().unwrap().len() >= 32);
}

#[test]
fn a_config_error_names_the_file_the_line_and_the_allowed_keys() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        "[agent]\nroot = \"/\"\n\n[colector]\nurl = \"http://x:1\"\n",
    )
    .unwrap();
    let output = agent(&config, &["once", "--json"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&config.display().to_string()), "{stderr}");
    assert!(stderr.contains("line 4"), "{stderr}");
    assert!(stderr.contains("unknown field `colector`"), "{stderr}");
    assert!(stderr.contains("`collector`"), "{stderr}");
}

#[test]
fn a_cloned_agent_is_flagged_and_takes_a_new_id() {
    let dir = tempfile::tempdir().unwrap();
    let collector = Collector::start(dir.path());
    let ca_file = collector.ca_file.as_deref();
    let original = dir.path().join("original");
    let clone = dir.path().join("clone");
    std::fs::create_dir_all(&original).unwrap();
    let original_config = agent_config(
        &original,
        &fixture("physical-server"),
        &collector.url(),
        ca_file,
    );
    let sent = agent(&original_config, &["once"]);
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );

    // The clone: the original's state directory copied onto another machine (another tree,
    // so another machine-id).
    copy_tree(&original.join("state"), &clone.join("state"));
    let clone_config = agent_config(&clone, &fixture("kvm-guest"), &collector.url(), ca_file);
    let sent = agent(&clone_config, &["once"]);
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );

    let hosts = collector.json("/api/v1/hosts")["hosts"].clone();
    assert_eq!(
        hosts.as_array().unwrap().len(),
        2,
        "the clone became its own host: {hosts}"
    );
    let flagged = collector.json("/api/v1/hosts?identity_conflict=true")["hosts"].clone();
    assert_eq!(flagged[0]["hostname"], "db01", "{flagged}");
    let original_id = std::fs::read_to_string(original.join("state/agent-id")).unwrap();
    let clone_id = std::fs::read_to_string(clone.join("state/agent-id")).unwrap();
    assert_ne!(
        original_id.trim(),
        clone_id.trim(),
        "the clone must pick a new id"
    );
    assert_eq!(
        collector.metric("estate_collector_reports_total{result=\"identity_conflict\"}"),
        Some(1.0)
    );
    collector.process.unwrap().terminate();
}

#[test]
fn plain_text_needs_insecure_on_both_programs_and_is_logged() {
    let dir = tempfile::tempdir().unwrap();

    // The collector without TLS files or `--insecure` refuses, saying how to set up TLS.
    let refused = Command::new(binary("estate-collector"))
        .args([
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .arg("--database")
        .arg(dir.path().join("refused.db"))
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    for needed in [
        "`tls_cert_file`",
        "`--tls-cert-file`",
        "estate-collector tls init",
        "Securing a deployment",
        "`--insecure`",
    ] {
        assert!(stderr.contains(needed), "`{needed}` missing from: {stderr}");
    }

    // The agent with an http:// url and no `--insecure` refuses too.
    let config = dir.path().join("plain.toml");
    std::fs::write(&config, "[collector]\nurl = \"http://127.0.0.1:9\"\n").unwrap();
    let refused = agent(&config, &["once"]);
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("collector url `http://127.0.0.1:9` is plain text")
            && stderr.contains("Securing a deployment")
            && stderr.contains("`collector.insecure = true` (`--insecure`)"),
        "{stderr}"
    );

    // Both with `--insecure`: a report goes through, and the agent says it was plain text.
    let collector = Collector::start_insecure(dir.path());
    let state = dir.path().join("state");
    let sent = Command::new(binary("estate-agent"))
        .arg("--config")
        .arg(&config)
        .arg("--state-dir")
        .arg(&state)
        .args(["--insecure", "--collector", &collector.url(), "once"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&sent.stderr);
    assert!(sent.status.success(), "{stderr}");
    assert!(stderr.contains("PLAIN TEXT"), "{stderr}");
    assert_eq!(
        collector.json("/api/v1/hosts")["hosts"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    collector.process.unwrap().terminate();
}

#[test]
fn an_agent_refuses_a_collector_certificate_its_ca_did_not_sign() {
    let dir = tempfile::tempdir().unwrap();
    let collector = Collector::start(dir.path());
    let other_ca = tls_init(&dir.path().join("other-ca"));
    let config = agent_config(
        dir.path(),
        &fixture("vmware-guest"),
        &collector.url(),
        Some(&other_ca),
    );
    let refused = agent(&config, &["once"]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("did not acknowledge") && stderr.contains("invalid peer certificate"),
        "{stderr}"
    );
    // A bad CA file is named.
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "junk").unwrap();
    let config = agent_config(
        dir.path(),
        &fixture("vmware-guest"),
        &collector.url(),
        Some(&junk),
    );
    let refused = agent(&config, &["once"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains(&format!("certificate file `{}` holds no", junk.display())),
        "{stderr}"
    );
    // Over HTTPS the API answers only to a client that trusts the collector's CA.
    let untrusting = http::client_config(&other_ca);
    assert_eq!(
        http::get(&collector.http, "/healthz", Some(&untrusting)),
        None
    );
    collector.process.unwrap().terminate();
}

/// Adds a client certificate from `tls_dir` (made by `tls init --client HOST`) to an agent
/// config.
fn with_client_certificate(config: &Path, tls_dir: &Path, host: &str) {
    let text = std::fs::read_to_string(config).unwrap();
    let keys = format!(
        "[collector]\nclient_cert_file = \"{}\"\nclient_key_file = \"{}\"\n",
        tls_dir.join(format!("client-{host}.pem")).display(),
        tls_dir.join(format!("client-{host}.key")).display()
    );
    std::fs::write(config, text.replacen("[collector]\n", &keys, 1)).unwrap();
}

#[test]
fn with_client_certificates_an_agent_reports_only_as_its_own_host() {
    let dir = tempfile::tempdir().unwrap();
    let tls_dir = dir.path().join("tls");
    let made = Command::new(binary("estate-collector"))
        .args(["tls", "init", "--dir"])
        .arg(&tls_dir)
        .args([
            "--host",
            "127.0.0.1",
            "--client",
            "db01",
            "--client",
            "web02",
        ])
        .output()
        .unwrap();
    assert!(made.status.success());
    let ca_file = tls_dir.join("ca.pem");
    let collector = Collector::start_with(
        dir.path(),
        &[
            "--tls-cert-file".into(),
            tls_dir.join("server.pem"),
            "--tls-key-file".into(),
            tls_dir.join("server.key"),
            "--client-ca-file".into(),
            ca_file.clone(),
        ],
        Some(ca_file.clone()),
    );
    // The fixture's hostname is db01.
    let host = |name: &str| {
        let agent_dir = dir.path().join(name);
        std::fs::create_dir_all(&agent_dir).unwrap();
        agent_config(
            &agent_dir,
            &fixture("physical-server"),
            &collector.url(),
            Some(&ca_file),
        )
    };

    // No certificate: refused, told how to get one.
    let refused = agent(&host("without"), &["once"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("Unauthenticated")
            && stderr.contains("tls init --dir DIR --client")
            && stderr.contains("the reports are kept"),
        "{stderr}"
    );

    // web02's certificate on db01: refused, naming both hosts.
    let impostor = host("impostor");
    with_client_certificate(&impostor, &tls_dir, "web02");
    let refused = agent(&impostor, &["once"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("PermissionDenied")
            && stderr.contains(
                "the client certificate is for host `web02` but the report is \
                                from host `db01`"
            ),
        "{stderr}"
    );

    // db01's own certificate: stored.
    let own = host("own");
    with_client_certificate(&own, &tls_dir, "db01");
    let sent = agent(&own, &["once"]);
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    let hosts = collector.json("/api/v1/hosts")["hosts"].clone();
    assert_eq!(hosts.as_array().map(Vec::len), Some(1), "{hosts}");
    assert_eq!(hosts[0]["hostname"], "db01");
    for (result, count) in [
        ("unauthenticated", 1.0),
        ("permission_denied", 1.0),
        ("stored", 1.0),
    ] {
        assert_eq!(
            collector.metric(&format!(
                "estate_collector_reports_total{{result=\"{result}\"}}"
            )),
            Some(count),
            "{result}"
        );
    }
    collector.process.unwrap().terminate();
}

/// `estate-collector token ARGS --database DATABASE`, asserted to succeed; returns stdout.
fn token_command(database: &Path, args: &[&str]) -> String {
    let output = Command::new(binary("estate-collector"))
        .arg("token")
        .args(args)
        .arg("--database")
        .arg(database)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "token {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn with_agent_tokens_an_agent_enrolls_once_reports_only_as_its_own_host_until_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let tls_dir = dir.path().join("tls");
    let ca_file = tls_init(&tls_dir);
    let database = dir.path().join("estate.db");
    let enrollment_secret = token_command(
        &database,
        &["create", "--enrollment", "--ttl", "1h", "--uses", "2"],
    );
    assert!(
        enrollment_secret.starts_with("estate_enr_"),
        "{enrollment_secret}"
    );
    let web02_token = token_command(&database, &["create", "--host", "web02"]);
    assert!(web02_token.starts_with("estate_agt_"), "{web02_token}");
    let collector = Collector::start_with(
        dir.path(),
        &[
            "--tls-cert-file".into(),
            tls_dir.join("server.pem"),
            "--tls-key-file".into(),
            tls_dir.join("server.key"),
            "--agent-auth".into(),
            "token".into(),
        ],
        Some(ca_file.clone()),
    );
    // The fixture's hostname is db01.
    let host = |name: &str| {
        let agent_dir = dir.path().join(name);
        std::fs::create_dir_all(&agent_dir).unwrap();
        let config = agent_config(
            &agent_dir,
            &fixture("physical-server"),
            &collector.url(),
            Some(&ca_file),
        );
        (agent_dir, config)
    };

    // Neither token nor enrollment secret: refused, told how to enroll.
    let (_, without) = host("without");
    let refused = agent(&without, &["once"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("Unauthenticated")
            && stderr.contains("this collector authenticates agents by token")
            && stderr.contains("the reports are kept"),
        "{stderr}"
    );

    // web02's token on db01: refused, naming both hosts.
    let (impostor_dir, impostor) = host("impostor");
    std::fs::create_dir_all(impostor_dir.join("state")).unwrap();
    std::fs::write(impostor_dir.join("state/agent-token"), &web02_token).unwrap();
    let refused = agent(&impostor, &["once"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("PermissionDenied")
            && stderr.contains("is for host `web02` but the report is from host `db01`"),
        "{stderr}"
    );
    assert!(
        !stderr.contains(web02_token.trim()),
        "the secret is never printed"
    );

    // The enrollment secret: exchanged once for a token of db01's own, saved 0600, reused.
    let (own_dir, own) = host("own");
    let secret_file = own_dir.join("enrollment-secret");
    std::fs::write(&secret_file, &enrollment_secret).unwrap();
    let text = std::fs::read_to_string(&own).unwrap();
    let keyed = format!(
        "[collector]\nenrollment_secret_file = \"{}\"\n",
        secret_file.display()
    );
    std::fs::write(&own, text.replacen("[collector]\n", &keyed, 1)).unwrap();
    for _ in 0..2 {
        let sent = agent(&own, &["once"]);
        assert!(
            sent.status.success(),
            "{}",
            String::from_utf8_lossy(&sent.stderr)
        );
    }
    let token_file = own_dir.join("state/agent-token");
    let saved = std::fs::read_to_string(&token_file).unwrap();
    assert!(saved.starts_with("estate_agt_"), "{saved}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let hosts = collector.json("/api/v1/hosts")["hosts"].clone();
    assert_eq!(hosts.as_array().map(Vec::len), Some(1), "{hosts}");
    assert_eq!(hosts[0]["hostname"], "db01");
    assert_eq!(hosts[0]["agent"]["reports_received_total"], 2, "{hosts}");

    // `token list`: one enrollment (one use left: the second report reused the saved token),
    // web02's token and db01's enrolled one; never a secret.
    let list = token_command(&database, &["list"]);
    assert!(!list.contains(&saved[12..]) && !list.contains(&enrollment_secret[12..]));
    let row = |needle: &str| {
        list.lines()
            .find(|line| line.contains(needle))
            .unwrap_or_else(|| panic!("no `{needle}` in:\n{list}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    let enrollment_row = row("enrollment");
    assert_eq!(
        enrollment_row[enrollment_row.len() - 2..],
        ["1", "valid"],
        "{list}"
    );
    let db01 = row("db01");
    assert_eq!(db01[1], "agent", "{list}");
    // Columns: id, kind, host, created, expires, revoked, last used, uses left, state. The
    // collector records the last use in the background.
    wait_until("the token's last use is recorded", || {
        let list = token_command(&database, &["list"]);
        list.lines()
            .find(|line| line.contains("db01"))
            .is_some_and(|line| line.split_whitespace().nth(6) != Some("-"))
    });

    // Revoked: refused within the collector's cache time (5 s), saying so.
    token_command(&database, &["revoke", db01[0]]);
    let mut last = String::new();
    wait_until("the revoked token is refused", || {
        let refused = agent(&own, &["once"]);
        last = String::from_utf8_lossy(&refused.stderr).into_owned();
        !refused.status.success()
    });
    assert!(
        last.contains("Unauthenticated")
            && last.contains(&format!("the agent token `{}` was revoked at", db01[0])),
        "{last}"
    );

    for (result, at_least) in [
        ("unauthenticated", 2.0),
        ("permission_denied", 1.0),
        ("stored", 2.0),
    ] {
        let count = collector
            .metric(&format!(
                "estate_collector_reports_total{{result=\"{result}\"}}"
            ))
            .unwrap_or_default();
        assert!(count >= at_least, "{result}: {count}");
    }
    assert_eq!(
        collector.metric("estate_collector_enrollments_total{result=\"issued\"}"),
        Some(1.0)
    );
    collector.process.unwrap().terminate();
}

#[test]
fn with_agent_auth_either_a_certificate_or_a_token_will_do() {
    let dir = tempfile::tempdir().unwrap();
    let tls_dir = dir.path().join("tls");
    let made = Command::new(binary("estate-collector"))
        .args(["tls", "init", "--dir"])
        .arg(&tls_dir)
        .args(["--host", "127.0.0.1", "--client", "db01"])
        .output()
        .unwrap();
    assert!(made.status.success());
    let ca_file = tls_dir.join("ca.pem");
    let database = dir.path().join("estate.db");
    let db01_token = token_command(&database, &["create", "--host", "db01"]);
    let tls_args: Vec<PathBuf> = vec![
        "--tls-cert-file".into(),
        tls_dir.join("server.pem"),
        "--tls-key-file".into(),
        tls_dir.join("server.key"),
        "--client-ca-file".into(),
        ca_file.clone(),
    ];
    let mut either = tls_args.clone();
    either.extend(["--agent-auth".into(), "either".into()]);
    let collector = Collector::start_with(dir.path(), &either, Some(ca_file.clone()));
    // The fixture's hostname is db01.
    let host = |name: &str| {
        let agent_dir = dir.path().join(name);
        std::fs::create_dir_all(agent_dir.join("state")).unwrap();
        let config = agent_config(
            &agent_dir,
            &fixture("physical-server"),
            &collector.url(),
            Some(&ca_file),
        );
        (agent_dir, config)
    };
    let (_, by_certificate) = host("by-certificate");
    with_client_certificate(&by_certificate, &tls_dir, "db01");
    let (token_dir, by_token) = host("by-token");
    std::fs::write(token_dir.join("state/agent-token"), &db01_token).unwrap();
    for config in [&by_certificate, &by_token] {
        let sent = agent(config, &["once"]);
        assert!(
            sent.status.success(),
            "{}",
            String::from_utf8_lossy(&sent.stderr)
        );
    }
    let (_, neither) = host("neither");
    let refused = agent(&neither, &["once"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr)
            .contains("authenticates agents by client certificate or by token"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert_eq!(
        collector.metric("estate_collector_reports_total{result=\"stored\"}"),
        Some(2.0)
    );
    collector.process.unwrap().terminate();

    // A collector authenticating by certificate only says so to an agent that tries to enroll.
    let dir2 = tempfile::tempdir().unwrap();
    let collector = Collector::start_with(dir2.path(), &tls_args, Some(ca_file.clone()));
    let agent_dir = dir2.path().join("enrolling");
    std::fs::create_dir_all(&agent_dir).unwrap();
    let config = agent_config(
        &agent_dir,
        &fixture("physical-server"),
        &collector.url(),
        Some(&ca_file),
    );
    let secret_file = agent_dir.join("enrollment-secret");
    std::fs::write(&secret_file, format!("estate_enr_{}\n", "0".repeat(64))).unwrap();
    let text = std::fs::read_to_string(&config).unwrap();
    let keyed = format!(
        "[collector]\nenrollment_secret_file = \"{}\"\n",
        secret_file.display()
    );
    std::fs::write(&config, text.replacen("[collector]\n", &keyed, 1)).unwrap();
    let refused = agent(&config, &["once"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("refused to enroll this agent (FailedPrecondition)")
            && stderr
                .contains("does not authenticate agents by token (`agent_auth = \"certificate\"`)"),
        "{stderr}"
    );
    assert_eq!(
        collector.metric("estate_collector_enrollments_total{result=\"disabled\"}"),
        Some(1.0)
    );
    collector.process.unwrap().terminate();
}
