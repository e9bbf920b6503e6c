//! `estate-bench-metrics`: time to render `/metrics` for N hosts, next to the encoding ceiling:
//! the very same series (parsed back from our output) held in the `prometheus` crate's gauges
//! and encoded by its `TextEncoder`, in the same run.
//!
//! Each host is a simulated agent's record (identity, inventory facts, vitals) with 12 check
//! results, as after its first report. The renderer keeps each host's lines between scrapes,
//! writes only new values into those of hosts that sent a heartbeat since, and renders again
//! hosts whose lines changed, so three figures are printed: the full render (every host's
//! lines written from nothing, as after a start or if every host's inventory changed: a fresh
//! state before each render), the cold render (every host reported since the last scrape, as
//! when agents report every 60 s and Prometheus scrapes every 60 s) and the warm render
//! (`--updated` percent of the hosts reported, a different share before each scrape). The
//! reports are applied through `HostStates::update`, untimed, before each timed render.
//! Each figure is the median (and minimum) of `--runs` renders after a warm-up one, with the
//! process's median CPU time per render (every thread: on a shared machine, the work apart
//! from the waits for a core); the page is rendered on `--threads` threads (default: one per
//! core, as the collector does). The memory the kept series hold is printed too. Figures are
//! printed, never asserted.

use anyhow::{Context as _, bail};
use estate_collector::metrics::{
    IngestMetrics, Liveness, default_render_threads, render_with_threads,
};
use estate_collector::state::HostStates;
use estate_collector::store::{CheckState, HostRecord};
use estate_tests::{flags, simulation};
use prometheus::{Encoder as _, GaugeVec, Opts, Registry, TextEncoder};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const USAGE: &str =
    "usage: estate-bench-metrics [--hosts N[,N...]] [--runs N] [--updated PERCENT] [--threads N]";

fn main() -> anyhow::Result<()> {
    let mut host_counts = vec![10_000, 100_000];
    let mut runs = 7;
    let mut updated_percent = 25.0;
    let mut threads = default_render_threads();
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
            "--threads" => threads = flags::count(flag, text)?,
            "--updated" => {
                updated_percent = flags::number(flag, text)?;
                if updated_percent > 100.0 {
                    bail!("`{flag}` `{text}` must be a percentage from 0 to 100");
                }
            }
            other => bail!("unknown argument `{other}`\n{USAGE}"),
        }
    }
    println!(
        "estate-bench-metrics: hosts {host_counts:?}, {runs} runs each, warm render after \
         {updated_percent}% of the hosts reported, {threads} render threads"
    );
    println!(
        "{:>8} {:>9} {:>7} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10} {:>7}",
        "hosts",
        "series",
        "MiB",
        "render",
        "ours ms",
        "ours min",
        "ours cpu",
        "ceiling ms",
        "ceil. min",
        "ratio"
    );
    for hosts in host_counts {
        compare(hosts, runs, updated_percent, threads)?;
    }
    Ok(())
}

/// Times our renderer (cold and warm) and the ceiling for `hosts` hosts and prints them.
fn compare(hosts: usize, runs: usize, updated_percent: f64, threads: usize) -> anyhow::Result<()> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let reports = host_reports(hosts, now_ms);
    let states = HostStates::load(
        reports.iter().map(|(record, _)| record.clone()).collect(),
        reports
            .iter()
            .flat_map(|(_, checks)| checks.clone())
            .collect(),
    );
    let ingest = IngestMetrics::new();
    let liveness = Liveness {
        stale_after: Duration::from_secs(300),
        expire_after: Duration::from_secs(7 * 24 * 3600),
    };
    let render = || render_with_threads(&states, &ingest, liveness, now_ms, threads);
    let page = render().text();
    // The hosts that report before a scrape: all of them (cold), or the next share (warm).
    let report = |from: usize, count: usize| {
        for index in from..from + count {
            let (record, checks) = &reports[index % reports.len()];
            states.update(record.clone(), Some(checks.clone()));
        }
    };
    // Every host's lines written from nothing, as after a start or when every host's
    // inventory changed: a fresh state before each render.
    let load = || {
        HostStates::load(
            reports.iter().map(|(record, _)| record.clone()).collect(),
            reports
                .iter()
                .flat_map(|(_, checks)| checks.clone())
                .collect(),
        )
    };
    let fresh = std::cell::RefCell::new(load());
    let full = time_renders(
        runs,
        || *fresh.borrow_mut() = load(),
        || render_with_threads(&fresh.borrow(), &ingest, liveness, now_ms, threads),
    );
    drop(fresh);
    let cold = time_renders(runs, || report(0, hosts), render);
    let updated = (hosts as f64 * updated_percent / 100.0).round() as usize;
    let mut next = 0;
    let warm = time_renders(
        runs,
        || {
            report(next, updated);
            next += updated;
        },
        render,
    );
    if full.page.text() != page || cold.page.text() != page || warm.page.text() != page {
        bail!("a full, cold or warm render differs from the first render of the same hosts");
    }
    let cached_bytes: usize =
        states.with_hosts(|entries| entries.values().map(|entry| entry.series.bytes()).sum());

    let (registry, series) = registry_from(&page)?;
    let encoder = TextEncoder::new();
    let mut encoded = Vec::new();
    encoder.encode(&registry.gather(), &mut encoded)?;
    let encoded_series = sample_lines(std::str::from_utf8(&encoded)?);
    if encoded_series != series {
        bail!("the ceiling encoded {encoded_series} series, ours {series}: not the same work");
    }
    let ceiling = time_renders(
        runs,
        || {},
        || {
            let mut buffer = Vec::with_capacity(encoded.len());
            let families = registry.gather();
            encoder.encode(&families, &mut buffer).ok();
            buffer
        },
    );
    let ms = |duration: Duration| duration.as_secs_f64() * 1000.0;
    let mib = |bytes: usize| bytes as f64 / 1_048_576.0;
    for (render, ours) in [
        ("full".to_owned(), &full),
        ("cold".to_owned(), &cold),
        (format!("warm {updated_percent}%"), &warm),
    ] {
        println!(
            "{hosts:>8} {series:>9} {:>7.1} {render:>9} {:>9.1} {:>9.1} {:>9.1} {:>10.1} {:>10.1} \
             {:>7.3}",
            mib(page.len()),
            ms(ours.median),
            ms(ours.min),
            ms(ours.cpu),
            ms(ceiling.median),
            ms(ceiling.min),
            ours.median.as_secs_f64() / ceiling.median.as_secs_f64()
        );
    }
    println!(
        "{hosts:>8} hosts: kept series {:.1} MiB ({:.1} KiB per host, {:.2}x the page)",
        mib(cached_bytes),
        cached_bytes as f64 / 1024.0 / hosts as f64,
        cached_bytes as f64 / page.len() as f64
    );
    Ok(())
}

/// Timings of one kind of render, and the last page it produced.
struct Timings<T> {
    median: Duration,
    min: Duration,
    /// Median CPU time of the process (every thread) during a render: on a shared machine,
    /// the work done, whatever the waits for a core.
    cpu: Duration,
    page: T,
}

/// CPU time this process has used so far, every thread (`getrusage`).
#[cfg(unix)]
fn process_cpu_time() -> Duration {
    let Ok(usage) = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF) else {
        return Duration::ZERO;
    };
    let time = |value: nix::sys::time::TimeVal| {
        Duration::new(value.tv_sec() as u64, value.tv_usec() as u32 * 1000)
    };
    time(usage.user_time()) + time(usage.system_time())
}

/// Without Unix process accounting the CPU column reads zero; the wall times still hold.
#[cfg(not(unix))]
fn process_cpu_time() -> Duration {
    Duration::ZERO
}

/// Runs `prepare` (untimed) then `body` (timed) `runs` times after one warm-up round.
fn time_renders<T>(
    runs: usize,
    mut prepare: impl FnMut(),
    mut body: impl FnMut() -> T,
) -> Timings<T> {
    prepare();
    let mut page = body();
    let mut times = Vec::with_capacity(runs);
    let mut cpu_times = Vec::with_capacity(runs);
    for _ in 0..runs {
        prepare();
        let cpu_before = process_cpu_time();
        let started = Instant::now();
        page = std::hint::black_box(body());
        times.push(started.elapsed());
        cpu_times.push(process_cpu_time().saturating_sub(cpu_before));
    }
    times.sort();
    cpu_times.sort();
    Timings {
        median: times[times.len() / 2],
        min: times[0],
        cpu: cpu_times[cpu_times.len() / 2],
        page,
    }
}

/// `hosts` simulated hosts (record and check results) as the collector holds them after each
/// one's first report.
fn host_reports(hosts: usize, now_ms: i64) -> Vec<(HostRecord, Vec<CheckState>)> {
    let mut reports = Vec::with_capacity(hosts);
    for agent in 0..hosts {
        let report = simulation::report(agent, 1, 0, true, now_ms);
        let inventory = report.inventory.clone().unwrap_or_default();
        let os = inventory.operatingsystem.clone().unwrap_or_default();
        let bios = inventory.bios.clone().unwrap_or_default();
        let hardware = inventory.hardware.clone().unwrap_or_default();
        let identity = report.identity.clone().unwrap_or_default();
        let id = identity.agent_id.clone();
        let record = HostRecord {
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
        };
        let mut checks: Vec<CheckState> = report
            .checks
            .iter()
            .map(|result| CheckState {
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
            })
            .collect();
        // In the order `HostStates::load` keeps them, so that every render is the same page.
        checks.sort_by(|a, b| (&a.check, &a.target).cmp(&(&b.check, &b.target)));
        reports.push((record, checks));
    }
    reports
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
