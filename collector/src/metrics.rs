//! Every metric the collector exports, defined in this one module.
//!
//! Host series are rendered at scrape time from the in-memory [`HostStates`], never from the
//! database: liveness (`estate_host_up`) is computed against the clock at each scrape, and a host
//! silent for longer than the expiry simply stops being rendered, so its series disappear
//! without any bookkeeping. The collector's own counters and histograms live in a `prometheus`
//! registry and are appended after the host families.
//!
//! Labels are bounded: `host` (unique per host), `mount`, and a few inventory labels on
//! `estate_host_info`. Serial numbers, MACs and software stay in the API.

use crate::state::{HostEntry, HostStates};
use crate::store::{CheckState, HostRecord};
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry, TextEncoder,
};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::time::Duration;

/// Host metric families: (name, type, help). The golden test pins this list.
pub const HOST_FAMILIES: &[(&str, &str, &str)] = &[
    (
        "estate_host_up",
        "gauge",
        "1 if the host reported within the stale time, else 0.",
    ),
    (
        "estate_host_last_report_timestamp_seconds",
        "gauge",
        "When the collector last received a report from the host (collector clock).",
    ),
    (
        "estate_host_info",
        "gauge",
        "Inventory facts about the host as labels; always 1.",
    ),
    (
        "estate_host_clock_skew_seconds",
        "gauge",
        "Agent clock minus collector clock at the last report, network delay included.",
    ),
    (
        "estate_host_identity_conflict",
        "gauge",
        "1 if a second machine reported with this host's agent id (a cloned agent).",
    ),
    (
        "estate_host_memory_bytes",
        "gauge",
        "Physical memory of the host.",
    ),
    (
        "estate_host_memory_available_bytes",
        "gauge",
        "Memory available for new work at the last report.",
    ),
    ("estate_host_swap_bytes", "gauge", "Swap space of the host."),
    (
        "estate_host_swap_free_bytes",
        "gauge",
        "Free swap space at the last report.",
    ),
    (
        "estate_host_cpu_threads",
        "gauge",
        "Logical processors (hardware threads) of the host.",
    ),
    (
        "estate_host_boot_time_seconds",
        "gauge",
        "When the host last booted, as a Unix timestamp.",
    ),
    (
        "estate_host_volume_size_bytes",
        "gauge",
        "Size of a mounted volume.",
    ),
    (
        "estate_host_volume_free_bytes",
        "gauge",
        "Free space of a mounted volume at the last report.",
    ),
    (
        "estate_host_dropped_reports_total",
        "counter",
        "Reports the agent dropped (spool full or too old) before delivering them.",
    ),
    (
        "estate_hosts",
        "gauge",
        "Hosts known to this collector, by state (up or stale) and operating system.",
    ),
];

/// Check metric families: (name, type, help). Every series has the labels host, check, kind
/// and target.
pub const CHECK_FAMILIES: &[(&str, &str, &str)] = &[
    (
        "estate_check_success",
        "gauge",
        "1 if the check target passed at its last run, 0 if it failed (skipped targets are absent).",
    ),
    (
        "estate_check_duration_seconds",
        "gauge",
        "How long the last run of the check took.",
    ),
    (
        "estate_check_last_result_timestamp_seconds",
        "gauge",
        "When the collector received the target's last result.",
    ),
    (
        "estate_check_outcome_since_timestamp_seconds",
        "gauge",
        "When the target's current outcome began (collector clock).",
    ),
];

/// Measurements a check reports that become metrics: (measurement name, metric, help).
/// Other measurements stay in the API. The names are a contract with the agent's check kinds.
pub const MEASUREMENT_FAMILIES: &[(&str, &str, &str)] = &[
    (
        "latency_seconds",
        "estate_check_latency_seconds",
        "Time the target took to answer (DNS query, LDAP read, KDC answer).",
    ),
    (
        "connect_seconds",
        "estate_check_connect_seconds",
        "Time to establish the TCP connection.",
    ),
    (
        "answers",
        "estate_check_dns_answers",
        "Records in the DNS answer section.",
    ),
    ("rcode", "estate_check_dns_rcode", "DNS response code."),
    (
        "tcp_fallback",
        "estate_check_dns_tcp_fallback",
        "1 if the UDP answer was truncated and the query was retried over TCP.",
    ),
    (
        "current_time_skew_seconds",
        "estate_check_clock_skew_seconds",
        "Clock of the target (rootDSE currentTime) minus the agent's clock.",
    ),
    (
        "kdc_time_skew_seconds",
        "estate_check_kdc_clock_skew_seconds",
        "Clock of the KDC (KRB-ERROR stime) minus the agent's clock.",
    ),
    (
        "synchronized",
        "estate_check_ad_synchronized",
        "1 if the domain controller says it is synchronized (rootDSE isSynchronized).",
    ),
    (
        "gc_ready",
        "estate_check_ad_global_catalog_ready",
        "1 if the domain controller's Global Catalog is ready (rootDSE isGlobalCatalogReady).",
    ),
    (
        "cert_not_after_unix",
        "estate_check_certificate_not_after_timestamp_seconds",
        "When the target's TLS certificate expires.",
    ),
    (
        "search_results",
        "estate_check_ldap_search_results",
        "Entries returned by the configured LDAP search.",
    ),
    (
        "krb_error_code",
        "estate_check_kerberos_error_code",
        "Kerberos error code of the KDC's answer to the probe (25: pre-authentication required).",
    ),
    (
        "tls_version",
        "estate_check_tls_version",
        "TLS version negotiated with the target (1.2 or 1.3).",
    ),
    (
        "http_status",
        "estate_check_http_status_code",
        "HTTP status of the final response.",
    ),
    (
        "redirects",
        "estate_check_http_redirects",
        "HTTP redirects followed.",
    ),
    (
        "content_length",
        "estate_check_http_content_length_bytes",
        "Length of the final response's body.",
    ),
    (
        "starttls",
        "estate_check_smtp_starttls_offered",
        "1 if the SMTP server offered STARTTLS.",
    ),
    (
        "offers",
        "estate_check_dhcp_offers",
        "DHCPOFFERs received by the probe.",
    ),
    (
        "rogue_servers",
        "estate_check_dhcp_rogue_servers",
        "DHCP servers that offered although they are not among the expected ones.",
    ),
    (
        "rogue",
        "estate_check_dhcp_rogue",
        "1 if this DHCP server is not among the expected ones.",
    ),
    (
        "lease_seconds",
        "estate_check_dhcp_lease_seconds",
        "Lease time offered by the DHCP server.",
    ),
];

/// When a host counts as stale and when its series disappear.
#[derive(Debug, Clone, Copy)]
pub struct Liveness {
    pub stale_after: Duration,
    pub expire_after: Duration,
}

/// The collector's own ingest and storage metrics.
#[derive(Debug)]
pub struct IngestMetrics {
    registry: Registry,
    reports: IntCounterVec,
    rejected: IntCounterVec,
    api_rejected: IntCounterVec,
    report_duration: Histogram,
    batch_reports: Histogram,
    commit_duration: Histogram,
    commit_failures: IntCounter,
    inventories: IntCounter,
    enrollments: IntCounterVec,
}

/// Outcome label of `estate_collector_enrollments_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnrollResult {
    /// An agent token was stored and returned.
    Issued,
    /// The enrollment secret is unknown, revoked, expired or used up.
    Refused,
    /// Malformed request (secret, hostname).
    Invalid,
    /// The collector does not authenticate agents by token.
    Disabled,
    /// The store failed.
    Error,
}

impl EnrollResult {
    fn label(self) -> &'static str {
        match self {
            EnrollResult::Issued => "issued",
            EnrollResult::Refused => "refused",
            EnrollResult::Invalid => "invalid",
            EnrollResult::Disabled => "disabled",
            EnrollResult::Error => "error",
        }
    }

    const ALL: [EnrollResult; 5] = [
        EnrollResult::Issued,
        EnrollResult::Refused,
        EnrollResult::Invalid,
        EnrollResult::Disabled,
        EnrollResult::Error,
    ];
}

/// Outcome label of `estate_collector_reports_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportResult {
    Stored,
    Duplicate,
    Invalid,
    IdentityConflict,
    /// No client certificate or agent token where one is required, or a token that is
    /// unknown, revoked or expired.
    Unauthenticated,
    /// Authenticated as another host than the report's.
    PermissionDenied,
    RateLimited,
    Error,
}

impl ReportResult {
    fn label(self) -> &'static str {
        match self {
            ReportResult::Stored => "stored",
            ReportResult::Duplicate => "duplicate",
            ReportResult::Invalid => "invalid",
            ReportResult::IdentityConflict => "identity_conflict",
            ReportResult::Unauthenticated => "unauthenticated",
            ReportResult::PermissionDenied => "permission_denied",
            ReportResult::RateLimited => "rate_limited",
            ReportResult::Error => "error",
        }
    }

    const ALL: [ReportResult; 8] = [
        ReportResult::Stored,
        ReportResult::Duplicate,
        ReportResult::Invalid,
        ReportResult::IdentityConflict,
        ReportResult::Unauthenticated,
        ReportResult::PermissionDenied,
        ReportResult::RateLimited,
        ReportResult::Error,
    ];
}

impl Default for IngestMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl IngestMetrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let reports = IntCounterVec::new(
            Opts::new(
                "estate_collector_reports_total",
                "Reports received, by result (stored, duplicate, invalid, identity_conflict, \
                 unauthenticated, permission_denied, rate_limited, error).",
            ),
            &["result"],
        )
        .expect("static metric definition");
        let rejected = IntCounterVec::new(
            Opts::new(
                "estate_ingest_rejected_total",
                "Reports refused before storage, by reason (identity, sequence, inventory_hash, \
                 string_too_long, too_many_items, rate_limited, identity_conflict).",
            ),
            &["reason"],
        )
        .expect("static metric definition");
        let api_rejected = IntCounterVec::new(
            Opts::new(
                "estate_api_requests_rejected_total",
                "HTTP requests refused by API authentication, by reason (missing: no token, \
                 invalid: malformed or unknown token, forbidden: the token's scope is too small).",
            ),
            &["reason"],
        )
        .expect("static metric definition");
        let latency_buckets = vec![
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ];
        let report_duration = Histogram::with_opts(
            HistogramOpts::new(
                "estate_collector_report_duration_seconds",
                "Time from receiving a report to acknowledging it (validation and durable write).",
            )
            .buckets(latency_buckets.clone()),
        )
        .expect("static metric definition");
        let batch_reports = Histogram::with_opts(
            HistogramOpts::new(
                "estate_collector_batch_reports",
                "Reports written per database transaction.",
            )
            .buckets(vec![
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0,
            ]),
        )
        .expect("static metric definition");
        let commit_duration = Histogram::with_opts(
            HistogramOpts::new(
                "estate_collector_commit_duration_seconds",
                "Time to write and durably commit one batch.",
            )
            .buckets(latency_buckets),
        )
        .expect("static metric definition");
        let commit_failures = IntCounter::new(
            "estate_collector_commit_failures_total",
            "Batches whose transaction failed; their reports were refused, not acknowledged.",
        )
        .expect("static metric definition");
        let inventories = IntCounter::new(
            "estate_collector_inventories_total",
            "Full inventories received and stored.",
        )
        .expect("static metric definition");
        let enrollments = IntCounterVec::new(
            Opts::new(
                "estate_collector_enrollments_total",
                "Enrollment exchanges (an enrollment secret for an agent token), by result \
                 (issued, refused, invalid, disabled, error).",
            ),
            &["result"],
        )
        .expect("static metric definition");
        for collector in [
            Box::new(reports.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(enrollments.clone()),
            Box::new(rejected.clone()),
            Box::new(api_rejected.clone()),
            Box::new(report_duration.clone()),
            Box::new(batch_reports.clone()),
            Box::new(commit_duration.clone()),
            Box::new(commit_failures.clone()),
            Box::new(inventories.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        // Every result label exists from the start, so rate() works before the first error.
        for result in ReportResult::ALL {
            reports.with_label_values(&[result.label()]);
        }
        for reason in crate::validate::RejectReason::ALL {
            rejected.with_label_values(&[reason.label()]);
        }
        for rejection in crate::auth::Rejection::ALL {
            api_rejected.with_label_values(&[rejection.label()]);
        }
        for result in EnrollResult::ALL {
            enrollments.with_label_values(&[result.label()]);
        }
        IngestMetrics {
            enrollments,
            registry,
            reports,
            rejected,
            api_rejected,
            report_duration,
            batch_reports,
            commit_duration,
            commit_failures,
            inventories,
        }
    }

    pub fn observe_report(&self, result: ReportResult, elapsed: Duration, had_inventory: bool) {
        self.reports.with_label_values(&[result.label()]).inc();
        self.report_duration.observe(elapsed.as_secs_f64());
        if had_inventory && result == ReportResult::Stored {
            self.inventories.inc();
        }
    }

    pub fn observe_enrollment(&self, result: EnrollResult) {
        self.enrollments.with_label_values(&[result.label()]).inc();
    }

    /// Counts a refused report under `estate_ingest_rejected_total{reason}`.
    pub fn observe_rejection(&self, reason: crate::validate::RejectReason) {
        self.rejected.with_label_values(&[reason.label()]).inc();
    }

    /// Counts an HTTP request refused by API authentication.
    pub fn observe_api_rejection(&self, rejection: crate::auth::Rejection) {
        self.api_rejected
            .with_label_values(&[rejection.label()])
            .inc();
    }

    pub fn observe_batch(&self, size: usize, elapsed: Duration, committed: bool) {
        self.batch_reports.observe(size as f64);
        self.commit_duration.observe(elapsed.as_secs_f64());
        if !committed {
            self.commit_failures.inc();
        }
    }

    fn encode(&self, out: &mut String) {
        let mut buffer = Vec::new();
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .is_ok()
        {
            out.push_str(&String::from_utf8_lossy(&buffer));
        }
    }
}

/// Renders the whole `/metrics` page.
pub fn render(
    states: &HostStates,
    ingest: &IngestMetrics,
    liveness: Liveness,
    now_ms: i64,
) -> String {
    let stale_ms = liveness.stale_after.as_millis() as i64;
    let expire_ms = liveness.expire_after.as_millis() as i64;
    let mut out = String::with_capacity(4096);
    // With several collectors on one database, only the hosts this one owns.
    let ownership = states.ownership();
    states.with_hosts(|hosts| {
        let mut entries: Vec<&HostEntry> = hosts
            .values()
            .filter(|entry| {
                now_ms - entry.record.last_seen_ms < expire_ms && ownership.renders(entry, now_ms)
            })
            .collect();
        entries.sort_by(|a, b| {
            (&a.record.hostname, &a.record.id).cmp(&(&b.record.hostname, &b.record.id))
        });
        let shown: Vec<&HostRecord> = entries.iter().map(|entry| &entry.record).collect();
        let labels = host_labels(&shown);
        let mut writer = FamilyWriter { out: &mut out };
        for (name, kind, help) in HOST_FAMILIES {
            writer.header(name, kind, help);
            if *name == "estate_hosts" {
                let mut counts: BTreeMap<(&str, &str, &str), u64> = BTreeMap::new();
                for host in &shown {
                    let state = if now_ms - host.last_seen_ms < stale_ms {
                        "up"
                    } else {
                        "stale"
                    };
                    *counts
                        .entry((state, &host.os_name, &host.os_version))
                        .or_default() += 1;
                }
                for ((state, os, os_version), count) in counts {
                    writer.sample(
                        name,
                        &[("state", state), ("os", os), ("os_version", os_version)],
                        count as f64,
                    );
                }
                continue;
            }
            for (host, label) in shown.iter().zip(&labels) {
                write_host_family(&mut writer, name, host, label, now_ms, stale_ms);
            }
        }
        write_check_families(&mut writer, &entries, &labels);
    });
    ingest.encode(&mut out);
    out
}

fn write_check_families(writer: &mut FamilyWriter<'_>, entries: &[&HostEntry], labels: &[String]) {
    let series =
        |writer: &mut FamilyWriter<'_>, name: &str, value: &dyn Fn(&CheckState) -> Option<f64>| {
            for (entry, host) in entries.iter().zip(labels) {
                for check in &entry.checks {
                    if let Some(value) = value(check) {
                        writer.sample(
                            name,
                            &[
                                ("host", host),
                                ("check", &check.check),
                                ("kind", &check.kind),
                                ("target", &check.target),
                            ],
                            value,
                        );
                    }
                }
            }
        };
    for (name, kind, help) in CHECK_FAMILIES {
        writer.header(name, kind, help);
        let value: &dyn Fn(&CheckState) -> Option<f64> = match *name {
            "estate_check_success" => &|check| match check.outcome.as_str() {
                "pass" => Some(1.0),
                "fail" => Some(0.0),
                _ => None,
            },
            "estate_check_duration_seconds" => &|check| Some(check.duration_seconds),
            "estate_check_last_result_timestamp_seconds" => {
                &|check| Some(check.received_ms as f64 / 1000.0)
            }
            "estate_check_outcome_since_timestamp_seconds" => {
                &|check| Some(check.since_ms as f64 / 1000.0)
            }
            _ => &|_| None,
        };
        series(writer, name, value);
    }
    for (measurement, name, help) in MEASUREMENT_FAMILIES {
        writer.header(name, "gauge", help);
        series(writer, name, &|check| {
            check
                .measurements
                .iter()
                .find(|m| m.name == *measurement)
                .map(|m| m.value)
        });
    }
}

/// The `host` label: the hostname, unless two hosts share it, then `hostname~<id prefix>`, so
/// that no two hosts ever produce the same series.
fn host_labels(hosts: &[&HostRecord]) -> Vec<String> {
    let mut uses: HashMap<&str, usize> = HashMap::new();
    for host in hosts {
        *uses.entry(host.hostname.as_str()).or_default() += 1;
    }
    hosts
        .iter()
        .map(|host| {
            if uses[host.hostname.as_str()] > 1 {
                let prefix: String = host.id.chars().take(8).collect();
                format!("{}~{prefix}", host.hostname)
            } else {
                host.hostname.clone()
            }
        })
        .collect()
}

fn write_host_family(
    writer: &mut FamilyWriter<'_>,
    name: &str,
    host: &HostRecord,
    label: &str,
    now_ms: i64,
    stale_ms: i64,
) {
    let by_host = [("host", label)];
    let vitals = &host.vitals;
    let value = match name {
        "estate_host_up" => f64::from(u8::from(now_ms - host.last_seen_ms < stale_ms)),
        "estate_host_last_report_timestamp_seconds" => host.last_seen_ms as f64 / 1000.0,
        "estate_host_info" => {
            writer.sample(
                name,
                &[
                    ("host", label),
                    ("host_id", &host.id),
                    ("os", &host.os_name),
                    ("os_version", &host.os_version),
                    ("kernel", &host.kernel_version),
                    ("arch", &host.arch),
                    ("vmsystem", &host.vmsystem),
                    ("manufacturer", &host.manufacturer),
                    ("model", &host.model),
                    ("agent_version", &host.agent_version),
                ],
                1.0,
            );
            return;
        }
        "estate_host_clock_skew_seconds" => host.clock_skew_ms as f64 / 1000.0,
        "estate_host_identity_conflict" => f64::from(u8::from(host.identity_conflict)),
        "estate_host_memory_bytes" => host.memory_bytes as f64,
        "estate_host_memory_available_bytes" => vitals.memory_available_bytes as f64,
        "estate_host_swap_bytes" => host.swap_bytes as f64,
        "estate_host_swap_free_bytes" => vitals.swap_free_bytes as f64,
        "estate_host_cpu_threads" => f64::from(host.cpu_threads),
        "estate_host_boot_time_seconds" => {
            if vitals.boot_time_unix == 0 {
                return;
            }
            vitals.boot_time_unix as f64
        }
        "estate_host_volume_size_bytes" | "estate_host_volume_free_bytes" => {
            for volume in &vitals.volumes {
                let value = if name == "estate_host_volume_size_bytes" {
                    volume.total_bytes
                } else {
                    volume.free_bytes
                };
                writer.sample(
                    name,
                    &[("host", label), ("mount", &volume.mount)],
                    value as f64,
                );
            }
            return;
        }
        "estate_host_dropped_reports_total" => host.dropped_reports_total as f64,
        _ => return,
    };
    writer.sample(name, &by_host, value);
}

/// Writes the Prometheus text format (version 0.0.4).
struct FamilyWriter<'a> {
    out: &'a mut String,
}

impl FamilyWriter<'_> {
    fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (index, (key, text)) in labels.iter().enumerate() {
                if index > 0 {
                    self.out.push(',');
                }
                self.out.push_str(key);
                self.out.push_str("=\"");
                escape_label_value(self.out, text);
                self.out.push('"');
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

fn escape_label_value(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use estate_proto::v1::{HostVitals, VolumeUsage};

    fn host(id: &str, hostname: &str, last_seen_ms: i64) -> HostRecord {
        HostRecord {
            id: id.into(),
            hostname: hostname.into(),
            os_name: "Debian GNU/Linux".into(),
            os_version: "12".into(),
            last_seen_ms,
            memory_bytes: 8 << 30,
            vitals: HostVitals {
                volumes: vec![VolumeUsage {
                    mount: "/".into(),
                    total_bytes: 100,
                    free_bytes: 40,
                }],
                ..Default::default()
            },
            ..Default::default()
        }
    }

    const LIVENESS: Liveness = Liveness {
        stale_after: Duration::from_secs(300),
        expire_after: Duration::from_secs(3600),
    };

    #[test]
    fn liveness_and_expiry_follow_the_clock() {
        let now = 10_000_000;
        let states = HostStates::from_records(vec![
            host("a", "fresh", now - 1_000),
            host("b", "silent", now - 400_000),
            host("c", "gone", now - 4_000_000),
        ]);
        let text = render(&states, &IngestMetrics::new(), LIVENESS, now);
        assert!(
            text.contains("estate_host_up{host=\"fresh\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("estate_host_up{host=\"silent\"} 0\n"));
        assert!(!text.contains("\"gone\""), "expired host still rendered");
        assert!(
            text.contains(
                "estate_hosts{state=\"up\",os=\"Debian GNU/Linux\",os_version=\"12\"} 1\n"
            )
        );
        assert!(text.contains("estate_host_volume_free_bytes{host=\"fresh\",mount=\"/\"} 40\n"));
        assert!(text.contains("estate_collector_reports_total{result=\"invalid\"} 0\n"));
    }

    #[test]
    fn hosts_sharing_a_hostname_get_distinct_series_and_labels_are_escaped() {
        let now = 1_000;
        let states = HostStates::from_records(vec![
            host("11111111-x", "web", now),
            host("22222222-y", "web", now),
            host("33333333-z", "odd\"name\\", now),
        ]);
        let text = render(&states, &IngestMetrics::new(), LIVENESS, now);
        assert!(text.contains("estate_host_up{host=\"web~11111111\"} 1"));
        assert!(text.contains("estate_host_up{host=\"web~22222222\"} 1"));
        assert!(text.contains("estate_host_up{host=\"odd\\\"name\\\\\"} 1"));
    }

    #[test]
    fn checks_render_success_duration_and_mapped_measurements() {
        use crate::store::CheckState;
        use estate_proto::v1::Measurement;
        let now = 1_000;
        let check = |target: &str, outcome: &str, measurements: Vec<Measurement>| CheckState {
            host_id: "a".into(),
            check: "dc".into(),
            kind: "ad".into(),
            target: target.into(),
            outcome: outcome.into(),
            duration_seconds: 0.25,
            since_ms: 500,
            received_ms: 900,
            measurements,
            ..Default::default()
        };
        let number = |name: &str, value: f64| Measurement {
            name: name.into(),
            value,
            text: String::new(),
        };
        let states = HostStates::load(
            vec![host("a", "web", now)],
            vec![
                check(
                    "dc1:389/ldap",
                    "pass",
                    vec![
                        number("current_time_skew_seconds", -1.5),
                        number("synchronized", 1.0),
                        Measurement {
                            name: "dns_host_name".into(),
                            value: 0.0,
                            text: "dc1.corp".into(),
                        },
                    ],
                ),
                check("dc1:3268/gc", "skipped", vec![]),
                check("dc2:389/ldap", "fail", vec![]),
            ],
        );
        let text = render(&states, &IngestMetrics::new(), LIVENESS, now);
        let labels =
            |target: &str| format!("{{host=\"web\",check=\"dc\",kind=\"ad\",target=\"{target}\"}}");
        for line in [
            format!("estate_check_success{} 1\n", labels("dc1:389/ldap")),
            format!("estate_check_success{} 0\n", labels("dc2:389/ldap")),
            format!(
                "estate_check_duration_seconds{} 0.25\n",
                labels("dc2:389/ldap")
            ),
            format!(
                "estate_check_outcome_since_timestamp_seconds{} 0.5\n",
                labels("dc2:389/ldap")
            ),
            format!(
                "estate_check_clock_skew_seconds{} -1.5\n",
                labels("dc1:389/ldap")
            ),
            format!("estate_check_ad_synchronized{} 1\n", labels("dc1:389/ldap")),
        ] {
            assert!(text.contains(&line), "missing {line} in\n{text}");
        }
        assert!(!text.contains(&format!("estate_check_success{}", labels("dc1:3268/gc"))));
        assert!(
            !text.contains("dns_host_name"),
            "text measurements stay in the API"
        );
    }
}
