//! The deploy/ kit agrees with what the collector really exports and with itself: every metric
//! named in the Grafana dashboard and the Prometheus alert rules exists in the golden `/metrics`
//! file, the dashboard's data source is a variable, every alert is unit-tested firing and not
//! firing, the compose file refers to files that exist and to ports the services listen on, and
//! the Windows install script documents its parameters.
//!
//! `promtool check config`, `check rules` and `test rules` themselves run in `.ci/run`; this
//! test needs only the Rust toolchain.

use serde_json::Value as Json;
use serde_norway::Value as Yaml;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// The repository root.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(relative: &str) -> String {
    let path = repo().join(relative);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("cannot read `{relative}`: {error}"))
}

fn read_yaml(relative: &str) -> Yaml {
    serde_norway::from_str(&read(relative))
        .unwrap_or_else(|error| panic!("`{relative}` is not valid YAML: {error}"))
}

/// Every metric name in the golden `/metrics` file: the families (`# HELP`) and the series
/// names a histogram adds (`_bucket`, `_sum`, `_count`).
fn exported_metric_names() -> BTreeSet<String> {
    let golden = read("tests/golden/metrics.txt");
    let mut names = BTreeSet::new();
    for line in golden.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            names.insert(rest.split(' ').next().unwrap_or_default().to_owned());
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_owned());
        }
    }
    assert!(
        names.contains("estate_host_up") && names.contains("estate_check_success"),
        "the golden file lost its core families: {names:?}"
    );
    names
}

/// The estate metric names a PromQL expression uses: identifiers starting with `estate_`,
/// outside string literals (label values such as `job="estate_x"` are not metrics).
fn estate_metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut chars = expr.char_indices().peekable();
    while let Some((start, c)) = chars.next() {
        match c {
            '"' | '\'' | '`' => {
                // Skip the literal; `\` escapes the next character except in raw backticks.
                while let Some((_, inner)) = chars.next() {
                    if inner == '\\' && c != '`' {
                        chars.next();
                    } else if inner == c {
                        break;
                    }
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let mut end = start + c.len_utf8();
                while let Some(&(index, next)) = chars.peek() {
                    if next.is_ascii_alphanumeric() || next == '_' || next == ':' {
                        end = index + next.len_utf8();
                        chars.next();
                    } else {
                        break;
                    }
                }
                let word = &expr[start..end];
                if word.starts_with("estate_") {
                    names.push(word.to_owned());
                }
            }
            // Numbers such as `1e3` and durations such as `5m` start with a digit: skip the
            // whole word so its tail is not taken for an identifier.
            c if c.is_ascii_digit() => {
                while chars
                    .peek()
                    .is_some_and(|&(_, next)| next.is_ascii_alphanumeric() || next == '_')
                {
                    chars.next();
                }
            }
            _ => {}
        }
    }
    names
}

#[test]
fn the_tokenizer_finds_metric_names_and_skips_strings_and_labels() {
    let check = |expr: &str, expect: &[&str]| {
        assert_eq!(estate_metric_names(expr), expect, "expression: {expr}");
    };
    check("estate_host_up == 0", &["estate_host_up"]);
    check(
        r#"sum by (le) (rate(estate_collector_report_duration_seconds_bucket{job="estate_x"}[5m]))"#,
        &["estate_collector_report_duration_seconds_bucket"],
    );
    check(
        "estate_a / on (host) group_left estate_b{mount=~'estate_c\\'d'} > 1e3",
        &["estate_a", "estate_b"],
    );
    check(
        "label_values(estate_host_info, host)",
        &["estate_host_info"],
    );
    check(r#"up{job="estate"} == 0"#, &[]);
    check("time() - `estate_not_a_metric` + 5m_estate", &[]);
}

/// Every string under a key named `key`, anywhere in a JSON document.
fn strings_under(value: &Json, key: &str, found: &mut Vec<String>) {
    match value {
        Json::Object(map) => {
            for (name, inner) in map {
                match inner {
                    Json::String(text) if name == key => found.push(text.clone()),
                    _ => strings_under(inner, key, found),
                }
            }
        }
        Json::Array(items) => items
            .iter()
            .for_each(|item| strings_under(item, key, found)),
        _ => {}
    }
}

fn dashboard() -> Json {
    serde_json::from_str(&read("deploy/grafana/dashboards/estate.json"))
        .expect("the dashboard is valid JSON")
}

/// Every metric the dashboard's queries and variables use exists in the collector's export.
#[test]
fn dashboard_uses_only_exported_metrics() {
    let exported = exported_metric_names();
    let dashboard = dashboard();
    let mut expressions = Vec::new();
    strings_under(&dashboard, "expr", &mut expressions);
    strings_under(&dashboard["templating"], "definition", &mut expressions);
    assert!(
        expressions.len() >= 20,
        "the dashboard has only {} queries",
        expressions.len()
    );
    let mut used = BTreeSet::new();
    for expr in &expressions {
        let names = estate_metric_names(expr);
        assert!(!names.is_empty(), "query `{expr}` uses no estate metric");
        for name in names {
            assert!(
                exported.contains(&name),
                "the dashboard query `{expr}` uses `{name}`, which the collector does not export (tests/golden/metrics.txt)"
            );
            used.insert(name);
        }
    }
    // The three views the dashboard promises: fleet, per host, per service.
    for needed in [
        "estate_hosts",
        "estate_host_info",
        "estate_host_volume_free_bytes",
        "estate_check_success",
        "estate_check_certificate_not_after_timestamp_seconds",
    ] {
        assert!(
            used.contains(needed),
            "the dashboard never shows `{needed}`"
        );
    }
}

/// The data source is chosen through a `datasource` variable; no panel, query or variable
/// names a data source by uid.
#[test]
fn dashboard_datasource_is_a_variable() {
    let dashboard = dashboard();
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("the dashboard has template variables");
    let datasource = variables
        .iter()
        .find(|variable| variable["name"] == "datasource")
        .expect("a variable named `datasource`");
    assert_eq!(datasource["type"], "datasource");
    assert_eq!(datasource["query"], "prometheus");

    let mut uids = Vec::new();
    strings_under(&dashboard, "uid", &mut uids);
    // The dashboard's own uid is the one uid that is not a data source's.
    let dashboard_uid = dashboard["uid"].as_str().expect("the dashboard has a uid");
    let datasource_uids: Vec<_> = uids.iter().filter(|uid| *uid != dashboard_uid).collect();
    assert!(
        datasource_uids.len() >= 20,
        "too few data source references: {datasource_uids:?}"
    );
    for uid in datasource_uids {
        assert!(
            uid == "${datasource}" || uid == "$datasource",
            "a hard-coded data source uid `{uid}`; use the `datasource` variable"
        );
    }
    // Every panel that queries says which data source (the variable), so none falls back to
    // whatever the Grafana instance has as its default.
    for panel in dashboard["panels"].as_array().expect("panels") {
        if panel["targets"].is_array() {
            assert_eq!(
                panel["datasource"]["uid"], "${datasource}",
                "panel `{}` has no data source variable",
                panel["title"]
            );
        }
    }
}

/// Every alert rule: (name, expression).
fn alert_rules() -> Vec<(String, String)> {
    let rules = read_yaml("deploy/prometheus/estate.rules.yml");
    let mut alerts = Vec::new();
    for group in rules["groups"].as_sequence().expect("rule groups") {
        for rule in group["rules"].as_sequence().expect("rules of a group") {
            let name = rule["alert"].as_str().expect("every rule is an alert");
            let expr = rule["expr"].as_str().expect("every rule has an expr");
            alerts.push((name.to_owned(), expr.to_owned()));
        }
    }
    alerts
}

#[test]
fn alert_rules_use_only_exported_metrics() {
    let exported = exported_metric_names();
    for (alert, expr) in alert_rules() {
        for name in estate_metric_names(&expr) {
            assert!(
                exported.contains(&name),
                "alert `{alert}` uses `{name}`, which the collector does not export (tests/golden/metrics.txt)"
            );
        }
    }
}

/// The alerts the kit promises exist, and every alert is unit-tested both firing and not
/// firing in `estate.rules.test.yml`.
#[test]
fn every_alert_is_tested_firing_and_not_firing() {
    let alerts: Vec<String> = alert_rules().into_iter().map(|(name, _)| name).collect();
    for promised in [
        "EstateHostStale",
        "EstateCheckFailing",
        "EstateDcClockSkew",
        "EstateCertificateExpiring",
        "EstateRogueDhcpServer",
        "EstateDiskAlmostFull",
    ] {
        assert!(
            alerts.iter().any(|name| name == promised),
            "no alert `{promised}`"
        );
    }

    let tests = read_yaml("deploy/prometheus/estate.rules.test.yml");
    assert_eq!(
        tests["rule_files"][0].as_str(),
        Some("estate.rules.yml"),
        "the unit tests must load estate.rules.yml"
    );
    // alert name → (tested not firing, tested firing)
    let mut coverage: HashMap<String, (bool, bool)> = HashMap::new();
    for test in tests["tests"].as_sequence().expect("tests") {
        for case in test["alert_rule_test"].as_sequence().into_iter().flatten() {
            let name = case["alertname"].as_str().expect("alertname").to_owned();
            let firing = case["exp_alerts"]
                .as_sequence()
                .is_some_and(|expected| !expected.is_empty());
            let entry = coverage.entry(name).or_default();
            if firing {
                entry.1 = true;
            } else {
                entry.0 = true;
            }
        }
    }
    for alert in &alerts {
        let (quiet, firing) = coverage.get(alert).copied().unwrap_or_default();
        assert!(quiet, "alert `{alert}` is never tested not firing");
        assert!(firing, "alert `{alert}` is never tested firing");
    }
    for tested in coverage.keys() {
        assert!(
            alerts.contains(tested),
            "the unit tests test an alert `{tested}` that does not exist"
        );
    }
}

/// The listen port given to a service as `--flag=host:port` or `--flag host:port`.
fn listen_port(command: &[String], flag: &str) -> Option<u16> {
    let value = flag_value(command, flag)?;
    value.rsplit(':').next()?.parse().ok()
}

/// The value of `--flag=value` or `--flag value` in a command.
fn flag_value(command: &[String], flag: &str) -> Option<String> {
    command.iter().enumerate().find_map(|(index, argument)| {
        if let Some(value) = argument.strip_prefix(&format!("{flag}=")) {
            Some(value.to_owned())
        } else if argument == flag {
            command.get(index + 1).cloned()
        } else {
            None
        }
    })
}

fn strings(value: &Yaml) -> Vec<String> {
    value
        .as_sequence()
        .into_iter()
        .flatten()
        .map(|item| item.as_str().expect("a string").to_owned())
        .collect()
}

/// The container ports a service publishes (`[host_ip:]host_port:container_port`).
fn published_container_ports(service: &Yaml) -> BTreeSet<u16> {
    strings(&service["ports"])
        .iter()
        .map(|mapping| {
            let container = mapping.rsplit(':').next().unwrap_or_default();
            let container = container.split('/').next().unwrap_or_default();
            container
                .parse()
                .unwrap_or_else(|_| panic!("port mapping `{mapping}` has no container port"))
        })
        .collect()
}

#[test]
fn compose_file_refers_to_files_that_exist_and_ports_that_listen() {
    let deploy = repo().join("deploy");
    let compose = read_yaml("deploy/compose.yaml");
    let services = &compose["services"];
    for name in ["collector", "prometheus", "grafana"] {
        assert!(
            services[name].is_mapping(),
            "compose.yaml has no `{name}` service"
        );
    }

    // The collector is built from this repository with a Dockerfile that exists.
    let build = &services["collector"]["build"];
    let context = deploy.join(build["context"].as_str().expect("a build context"));
    let dockerfile = context.join(build["dockerfile"].as_str().expect("a dockerfile"));
    assert!(
        dockerfile.is_file(),
        "no Dockerfile at {}",
        dockerfile.display()
    );
    assert!(
        context.join("Cargo.toml").is_file(),
        "the build context is not the workspace root"
    );
    let dockerfile_text = std::fs::read_to_string(&dockerfile).expect("read the Dockerfile");
    assert!(
        dockerfile_text.contains("-p estate-collector"),
        "the Dockerfile does not build the collector"
    );

    // Every bind-mounted file or folder exists, relative to compose.yaml.
    let mut mounted = HashMap::new();
    for (name, service) in services.as_mapping().expect("services").iter() {
        let name = name.as_str().expect("service name");
        assert!(
            service["image"]
                .as_str()
                .is_some_and(|image| !image.is_empty()),
            "service `{name}` has no image"
        );
        for volume in strings(&service["volumes"]) {
            let mut parts = volume.split(':');
            let source = parts.next().unwrap_or_default();
            let target = parts
                .next()
                .unwrap_or_else(|| panic!("volume `{volume}` has no target"));
            if source.starts_with('.') {
                let path = deploy.join(source);
                assert!(
                    path.exists(),
                    "service `{name}` mounts `{source}`, which does not exist"
                );
                mounted.insert(target.to_owned(), path);
            } else {
                assert!(
                    compose["volumes"][source].is_null()
                        && compose["volumes"]
                            .as_mapping()
                            .is_some_and(|volumes| volumes.contains_key(source)),
                    "service `{name}` uses the volume `{source}`, which compose.yaml does not declare"
                );
            }
        }
    }

    // The collector publishes the ports it listens on.
    let collector_command = strings(&services["collector"]["command"]);
    let grpc =
        listen_port(&collector_command, "--grpc-listen").expect("the collector's --grpc-listen");
    let http =
        listen_port(&collector_command, "--http-listen").expect("the collector's --http-listen");
    let published = published_container_ports(&services["collector"]);
    assert!(
        published.contains(&grpc),
        "the collector's gRPC port {grpc} is not published"
    );
    assert!(
        published.contains(&http),
        "the collector's HTTP port {http} is not published"
    );

    // Prometheus reads the config and the rules this repository ships, and scrapes the
    // collector service at its HTTP port.
    let prometheus_command = strings(&services["prometheus"]["command"]);
    let config_path = prometheus_command
        .iter()
        .find_map(|argument| argument.strip_prefix("--config.file="))
        .expect("prometheus --config.file");
    let config_file = mounted.get(config_path).unwrap_or_else(|| {
        panic!("Prometheus's config `{config_path}` is not mounted from deploy/")
    });
    let config: Yaml = serde_norway::from_str(&std::fs::read_to_string(config_file).expect("read"))
        .expect("the Prometheus config is YAML");
    let config_dir = Path::new(config_path).parent().expect("a directory");
    for rule_file in strings(&config["rule_files"]) {
        let in_container = config_dir.join(&rule_file);
        let in_container = in_container.to_str().expect("utf-8");
        assert!(
            mounted.contains_key(in_container),
            "the rule file `{rule_file}` is not mounted at `{in_container}`"
        );
    }
    let targets: Vec<String> = config["scrape_configs"]
        .as_sequence()
        .expect("scrape_configs")
        .iter()
        .flat_map(|job| job["static_configs"].as_sequence().into_iter().flatten())
        .flat_map(|static_config| strings(&static_config["targets"]))
        .collect();
    assert!(
        targets.contains(&format!("collector:{http}")),
        "Prometheus does not scrape the collector service at collector:{http}: {targets:?}"
    );

    // Prometheus verifies the collector's HTTPS with the CA in the volume the collector reads
    // its certificate from (made by the tls-init service).
    let scheme = config["scrape_configs"][0]["scheme"]
        .as_str()
        .unwrap_or("http");
    let cert = flag_value(&collector_command, "--tls-cert-file");
    match (scheme, cert) {
        ("https", Some(cert)) => {
            let ca_file = config["scrape_configs"][0]["tls_config"]["ca_file"]
                .as_str()
                .expect("an https scrape names its ca_file");
            let volume_at = |service: &str, file: &str| {
                strings(&services[service]["volumes"])
                    .iter()
                    .find_map(|volume| {
                        let mut parts = volume.split(':');
                        let (source, target) = (parts.next()?, parts.next()?);
                        (Path::new(file).parent() == Some(Path::new(target)))
                            .then(|| source.to_owned())
                    })
            };
            let prometheus_volume = volume_at("prometheus", ca_file)
                .unwrap_or_else(|| panic!("no volume holds Prometheus's ca_file `{ca_file}`"));
            let collector_volume = volume_at("collector", &cert)
                .unwrap_or_else(|| panic!("no volume holds the collector's certificate `{cert}`"));
            assert_eq!(
                prometheus_volume, collector_volume,
                "Prometheus's CA and the collector's certificate come from different volumes"
            );
        }
        ("http", None) => {}
        (scheme, cert) => {
            panic!("Prometheus scrapes with `{scheme}` but the collector's certificate is {cert:?}")
        }
    }

    // Grafana's provisioned data source is the Prometheus service, and the dashboards folder
    // it loads from is the one holding estate.json.
    let datasources = read_yaml("deploy/grafana/provisioning/datasources/estate.yml");
    let url = datasources["datasources"][0]["url"]
        .as_str()
        .expect("a data source url");
    let prometheus_port = published_container_ports(&services["prometheus"]);
    assert!(
        prometheus_port
            .iter()
            .any(|port| url == format!("http://prometheus:{port}")),
        "the data source url `{url}` is not the prometheus service"
    );
    let providers = read_yaml("deploy/grafana/provisioning/dashboards/estate.yml");
    let dashboards_path = providers["providers"][0]["options"]["path"]
        .as_str()
        .expect("a path");
    let dashboards = mounted
        .get(dashboards_path)
        .unwrap_or_else(|| panic!("the dashboards folder `{dashboards_path}` is not mounted"));
    assert!(dashboards.join("estate.json").is_file());
    for provisioning in [
        "/etc/grafana/provisioning/datasources",
        "/etc/grafana/provisioning/dashboards",
    ] {
        assert!(
            mounted.contains_key(provisioning),
            "`{provisioning}` is not mounted"
        );
    }
}

/// Every parameter of the Windows install script is documented in its comment-based help, and
/// the script stops at the first error.
#[test]
fn windows_install_script_documents_its_parameters() {
    let script = read("deploy/windows/install.ps1");
    assert!(
        script.contains("Set-StrictMode -Version Latest"),
        "install.ps1 lacks Set-StrictMode"
    );
    assert!(
        script.contains("$ErrorActionPreference = 'Stop'"),
        "install.ps1 does not stop on errors"
    );
    let help_end = script.find("#>").expect("comment-based help");
    let documented: BTreeSet<String> = script[..help_end]
        .lines()
        .filter_map(|line| line.trim().strip_prefix(".PARAMETER "))
        .map(|name| name.trim().to_lowercase())
        .collect();
    let param_start = script.find("param(").expect("a param( block");
    let mut depth = 0;
    let mut param_end = param_start;
    for (offset, c) in script[param_start..].char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    param_end = param_start + offset;
                    break;
                }
            }
            _ => {}
        }
    }
    // A parameter is a `$Name` right after its type constraint (`[string] $Name`); variables
    // in default values (`= $PSScriptRoot`, `$env:ProgramData`) follow `=` or `(`.
    let block = &script[param_start + "param(".len()..param_end];
    let declared: BTreeSet<String> = block
        .match_indices('$')
        .filter(|(index, _)| block[..*index].trim_end().ends_with(']'))
        .map(|(index, _)| {
            block[index + 1..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect::<String>()
                .to_lowercase()
        })
        .collect();
    assert!(
        declared.len() >= 4,
        "too few parameters found: {declared:?}"
    );
    assert_eq!(
        declared, documented,
        "declared parameters vs .PARAMETER help entries"
    );
}
