//! `estate-bench-metrics`: time to render `/metrics` for N hosts, next to the encoding ceiling:
//! the very same series (parsed back from our output) held in the `prometheus` crate's gauges
//! and encoded by its `TextEncoder`, in the same run.
//!
//! Each host is a simulated agent's record (identity, inventory facts, vitals) with 12 check
//! results, as after its first report. Both sides are timed in-process, after a warm-up
//! render, as the median (and minimum) of `--runs` renders. Figures are printed, never
//! asserted.

use anyhow::{Context as _, bail};
use estate_collector::metrics::{IngestMetrics, Liveness, render};
use estate_collector::state::HostStates;
use estate_collector::store::{CheckState, HostRecord};
use estate_tests::{flags, simulation};
use prometheus::{Encoder as _, GaugeVec, Opts, Registry, TextEncoder};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const USAGE: &str = "usage: estate-bench-metrics [--hosts N[,N...]] [--runs N]";

fn main() -> anyhow::Result<()> {
    let mut host_counts = vec![10_000, 100_000];
    let mut runs = 7;
    let args: Vec<String> = std::env::args().skip(1).collect();
    for (flag, text) in flags::pairs(&args, USAGE)? {
        match flag {
            "--hosts" => {
                host_counts = text
                    .split(',')
                    .map(|count| flags::count(flag, count))
                    .collect::<anyhow::Result<_>>()?;
            }
            "--runs" => runs = flags::count(flag, text)?,
            other => bail!("unknown argument `{other}`\n{USAGE}"),
        }
    }
    println!("estate-bench-metrics: hosts {host_counts:?}, {runs} runs each");
    println!(
        "{:>8} {:>9} {:>9} {:>12} {:>12} {:>12} {:>12} {:>7}",
        "hosts", "series", "MiB", "ours ms", "ours min", "ceiling ms", "ceil. min", "ratio"
    );
    for hosts in host_counts {
        compare(hosts, runs)?;
    }
    Ok(())
}

/// Times our renderer and the ceiling for `hosts` hosts and prints one line.
fn compare(hosts: usize, runs: usize) -> anyhow::Result<()> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let states = host_states(hosts, now_ms);
    let ingest = IngestMetrics::new();
    let liveness = Liveness {
        stale_after: Duration::from_secs(300),
        expire_after: Duration::from_secs(7 * 24 * 3600),
    };
    let page = render(&states, &ingest, liveness, now_ms);
    let ours = median_and_min(runs, || {
        let page = render(&states, &ingest, liveness, now_ms);
        std::hint::black_box(page.len());
    });

    let (registry, series) = registry_from(&page)?;
    let encoder = TextEncoder::new();
    let mut encoded = Vec::new();
    encoder.encode(&registry.gather(), &mut encoded)?;
    let encoded_series = sample_lines(std::str::from_utf8(&encoded)?);
    if encoded_series != series {
        bail!("the ceiling encoded {encoded_series} series, ours {series}: not the same work");
    }
    let ceiling = median_and_min(runs, || {
        let mut buffer = Vec::with_capacity(encoded.len());
        let families = registry.gather();
        encoder.encode(&families, &mut buffer).ok();
        std::hint::black_box(buffer.len());
    });
    let ms = |duration: Duration| duration.as_secs_f64() * 1000.0;
    println!(
        "{hosts:>8} {series:>9} {:>9.1} {:>12.1} {:>12.1} {:>12.1} {:>12.1} {:>7.2}",
        page.len() as f64 / 1048576.0,
        ms(ours.0),
        ms(ours.1),
        ms(ceiling.0),
        ms(ceiling.1),
        ours.0.as_secs_f64() / ceiling.0.as_secs_f64()
    );
    Ok(())
}

fn median_and_min(runs: usize, mut body: impl FnMut()) -> (Duration, Duration) {
    body();
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let started = Instant::now();
            body();
            started.elapsed()
        })
        .collect();
    times.sort();
    (times[times.len() / 2], times[0])
}

/// `hosts` simulated hosts as the collector holds them after each one's first report.
fn host_states(hosts: usize, now_ms: i64) -> HostStates {
    let mut records = Vec::with_capacity(hosts);
    let mut checks = Vec::with_capacity(hosts * simulation::CHECKS_PER_REPORT);
    for agent in 0..hosts {
        let report = simulation::report(agent, 1, 0, true, now_ms);
        let inventory = report.inventory.clone().unwrap_or_default();
        let os = inventory.operatingsystem.clone().unwrap_or_default();
        let bios = inventory.bios.clone().unwrap_or_default();
        let hardware = inventory.hardware.clone().unwrap_or_default();
        let identity = report.identity.clone().unwrap_or_default();
        let id = identity.agent_id.clone();
        records.push(HostRecord {
            id: id.clone(),
            hostname: identity.hostname,
            fqdn: os.fqdn,
            os_name: os.name,
            os_version: os.version,
            os_full_name: os.full_name,
            kernel_version: os.kernel_version,
            arch: os.arch,
            vmsystem: hardware.vmsystem,
            manufacturer: bios.smanufacturer,
            model: bios.smodel,
            chassis_type: hardware.chassis_type,
            serial_number: bios.ssn,
            machine_id: identity.machine_id,
            smbios_uuid: identity.smbios_uuid,
            primary_mac: identity.primary_mac,
            agent_version: report.agent_version.clone(),
            memory_bytes: hardware.memory_bytes,
            swap_bytes: hardware.swap_bytes,
            cpu_threads: inventory.cpus.iter().map(|cpu| cpu.thread).sum(),
            first_seen_ms: now_ms,
            last_seen_ms: now_ms - (agent as i64 % 60_000),
            last_sequence: 1,
            inventory_hash: report.inventory_hash.clone(),
            vitals: report.vitals.clone().unwrap_or_default(),
            ..Default::default()
        });
        for result in &report.checks {
            checks.push(CheckState {
                host_id: id.clone(),
                check: result.check.clone(),
                kind: result.kind.clone(),
                target: result.target.clone(),
                outcome: estate_proto::outcome_name(result.outcome).to_owned(),
                reason: result.reason.clone(),
                since_ms: now_ms - 3_600_000,
                received_ms: now_ms,
                started_ms: result.started_unix_ms,
                duration_seconds: result.duration_seconds,
                measurements: result.measurements.clone(),
            });
        }
    }
    HostStates::load(records, checks)
}

fn sample_lines(page: &str) -> usize {
    page.lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .count()
}

/// One sample line of the text format: name, labels, value.
type Sample = (String, Vec<(String, String)>, f64);

/// Parses a sample line as our renderer writes it (label values escaped with `\\`, `\"`, `\n`).
fn parse_sample(line: &str) -> anyhow::Result<Sample> {
    let bad = || format!("cannot parse the sample line `{line}`");
    let (series, value) = line.rsplit_once(' ').with_context(bad)?;
    let value: f64 = value.parse().with_context(bad)?;
    let Some((name, labels)) = series.split_once('{') else {
        return Ok((series.to_owned(), Vec::new(), value));
    };
    let mut pairs = Vec::new();
    let mut chars = labels.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() || chars.next() != Some('"') {
            bail!(bad());
        }
        let mut text = String::new();
        loop {
            match chars.next().with_context(bad)? {
                '\\' => match chars.next().with_context(bad)? {
                    'n' => text.push('\n'),
                    other => text.push(other),
                },
                '"' => break,
                other => text.push(other),
            }
        }
        pairs.push((key, text));
        match chars.next() {
            Some(',') => continue,
            Some('}') => break,
            _ => bail!(bad()),
        }
    }
    Ok((name.to_owned(), pairs, value))
}

/// The host and check series of `page` (every gauge), as `prometheus` gauges; returns the
/// registry and the number of series. The collector's own counters and histograms (a few dozen
/// lines, already encoded by `prometheus`) stay on our side only.
fn registry_from(page: &str) -> anyhow::Result<(Registry, usize)> {
    let mut help: BTreeMap<String, String> = BTreeMap::new();
    let mut samples: BTreeMap<String, Vec<Sample>> = BTreeMap::new();
    let mut kinds: BTreeMap<String, String> = BTreeMap::new();
    for line in page.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            help.insert(name.to_owned(), text.to_owned());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            kinds.insert(name.to_owned(), kind.to_owned());
        } else if !line.is_empty() {
            let sample = parse_sample(line)?;
            samples.entry(sample.0.clone()).or_default().push(sample);
        }
    }
    let registry = Registry::new();
    let mut series = 0;
    for (name, kind) in &kinds {
        if kind != "gauge" {
            continue;
        }
        let Some(family) = samples.get(name) else {
            continue;
        };
        let label_names: Vec<&str> = family[0].1.iter().map(|(k, _)| k.as_str()).collect();
        let gauges = GaugeVec::new(
            Opts::new(name.clone(), help.get(name).cloned().unwrap_or_default()),
            &label_names,
        )?;
        for (_, labels, value) in family {
            let values: Vec<&str> = labels.iter().map(|(_, v)| v.as_str()).collect();
            gauges.with_label_values(&values).set(*value);
            series += 1;
        }
        registry.register(Box::new(gauges))?;
    }
    Ok((registry, series))
}
