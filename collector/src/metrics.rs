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
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError};
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

/// Where a family's lines come from: a closed set, so that rendering a host matches on it
/// rather than on the family's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    HostUp,
    LastReport,
    Info,
    ClockSkew,
    IdentityConflict,
    Memory,
    MemoryAvailable,
    Swap,
    SwapFree,
    CpuThreads,
    BootTime,
    VolumeSize,
    VolumeFree,
    DroppedReports,
    Census,
    CheckSuccess,
    CheckDuration,
    CheckLastResult,
    CheckOutcomeSince,
    /// The measurement of `MEASUREMENT_FAMILIES[index]`.
    Measurement(usize),
}

impl Source {
    /// The source of a host or check family, by name.
    fn of(name: &str) -> Option<Source> {
        Some(match name {
            "estate_host_up" => Source::HostUp,
            "estate_host_last_report_timestamp_seconds" => Source::LastReport,
            "estate_host_info" => Source::Info,
            "estate_host_clock_skew_seconds" => Source::ClockSkew,
            "estate_host_identity_conflict" => Source::IdentityConflict,
            "estate_host_memory_bytes" => Source::Memory,
            "estate_host_memory_available_bytes" => Source::MemoryAvailable,
            "estate_host_swap_bytes" => Source::Swap,
            "estate_host_swap_free_bytes" => Source::SwapFree,
            "estate_host_cpu_threads" => Source::CpuThreads,
            "estate_host_boot_time_seconds" => Source::BootTime,
            "estate_host_volume_size_bytes" => Source::VolumeSize,
            "estate_host_volume_free_bytes" => Source::VolumeFree,
            "estate_host_dropped_reports_total" => Source::DroppedReports,
            "estate_hosts" => Source::Census,
            "estate_check_success" => Source::CheckSuccess,
            "estate_check_duration_seconds" => Source::CheckDuration,
            "estate_check_last_result_timestamp_seconds" => Source::CheckLastResult,
            "estate_check_outcome_since_timestamp_seconds" => Source::CheckOutcomeSince,
            _ => return None,
        })
    }

    /// The value of a check family for one check target; `None`: no line for it.
    fn check_value(self, check: &CheckState, measurements: &Measurements) -> Option<SampleValue> {
        match self {
            Source::CheckSuccess => match check.outcome.as_str() {
                "pass" => Some(SampleValue::Number(1.0)),
                "fail" => Some(SampleValue::Number(0.0)),
                _ => None,
            },
            Source::CheckDuration => Some(SampleValue::Number(check.duration_seconds)),
            Source::CheckLastResult => Some(SampleValue::Millis(check.received_ms)),
            Source::CheckOutcomeSince => Some(SampleValue::Millis(check.since_ms)),
            Source::Measurement(index) => measurements[index].map(SampleValue::Number),
            _ => None,
        }
    }
}

/// One family of the page.
#[derive(Debug)]
struct PageFamily {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    source: Source,
}

/// Every family in page order: the host families, the check families, then the measurement
/// families (all gauges).
static PAGE: LazyLock<Vec<PageFamily>> = LazyLock::new(|| {
    let named = HOST_FAMILIES
        .iter()
        .chain(CHECK_FAMILIES)
        .filter_map(|(name, kind, help)| {
            Source::of(name).map(|source| PageFamily {
                name,
                kind,
                help,
                source,
            })
        });
    let measured = MEASUREMENT_FAMILIES
        .iter()
        .enumerate()
        .map(|(index, (_, name, help))| PageFamily {
            name,
            kind: "gauge",
            help,
            source: Source::Measurement(index),
        });
    named.chain(measured).collect()
});

/// Families on the page.
const PAGE_FAMILIES: usize =
    HOST_FAMILIES.len() + CHECK_FAMILIES.len() + MEASUREMENT_FAMILIES.len();

/// How many families a host's kept series cover: all but the two that follow the clock
/// (`estate_host_up` and `estate_hosts`, computed at every scrape).
const HOST_SECTIONS: usize = PAGE_FAMILIES - 2;

/// The values of one check target's measurements that are metrics, by `MEASUREMENT_FAMILIES`
/// index.
type Measurements = [Option<f64>; MEASUREMENT_FAMILIES.len()];

/// One host's sample lines for every family that does not follow the clock, in page order,
/// rendered with one `host` label.
#[derive(Debug, Clone)]
pub struct HostSeries {
    /// The `host` label value these lines carry (before escaping).
    label: String,
    /// `{host="…"}`, escaped: the label set of the one-series host families.
    selector: String,
    /// Every line, family after family.
    text: String,
    /// Where each family's lines end in `text`.
    ends: [u32; HOST_SECTIONS],
    /// Where each line's value is in `text`, line after line; its name and labels run from
    /// the end of the line before (past its newline) to the value.
    values: Vec<(u32, u32)>,
    /// How many lines the families up to each one hold.
    line_ends: [u32; HOST_SECTIONS],
}

impl HostSeries {
    /// The lines of the `index`th kept family.
    fn section(&self, index: usize) -> &str {
        let start = index
            .checked_sub(1)
            .map_or(0, |previous| self.ends[previous]);
        &self.text[start as usize..self.ends[index] as usize]
    }

    fn bytes(&self) -> usize {
        size_of::<Self>()
            + self.label.capacity()
            + self.selector.capacity()
            + self.text.capacity()
            + self.values.capacity() * size_of::<(u32, u32)>()
    }

    /// Writes `values` (in line order) in place of the old ones, the names and label sets
    /// copied rather than written again; the text is written into `spare`, which gets the
    /// old text's buffer back. Returns `false` (and changes nothing) unless `values` holds
    /// one value per line.
    fn rewrite_values(&mut self, values: &[SampleValue], spare: &mut String) -> bool {
        if values.len() != self.values.len() {
            return false;
        }
        let text = spare;
        text.clear();
        // About the old text's length: new values are about as long as the old ones. Not
        // `reserve`, which would double a buffer a few bytes short; and not a far larger
        // buffer (from a host with many more lines), which this host would keep.
        let needed = self.text.len() + 64;
        if text.capacity() > 2 * needed {
            *text = String::with_capacity(needed);
        } else {
            text.reserve_exact(needed);
        }
        let mut section = 0;
        let mut from = 0;
        for (line, (span, value)) in self.values.iter_mut().zip(values).enumerate() {
            while section < HOST_SECTIONS && self.line_ends[section] as usize == line {
                self.ends[section] = text.len() as u32;
                section += 1;
            }
            // The line's name and labels, after the newline that ends the line before.
            text.push_str(&self.text[from..span.0 as usize]);
            from = span.1 as usize + 1;
            let value_start = text.len() as u32;
            push_sample_value(text, *value);
            *span = (value_start, text.len() as u32);
            text.push('\n');
        }
        self.ends[section..].fill(text.len() as u32);
        std::mem::swap(&mut self.text, text);
        true
    }
}

/// What a [`SeriesCache`] holds.
#[derive(Debug, Clone, Default)]
enum Kept {
    #[default]
    Nothing,
    /// The host's series as they are.
    Current(Arc<HostSeries>),
    /// The host's series with the values of an earlier report: the same lines otherwise.
    OldValues(Arc<HostSeries>),
}

/// A host's series as last rendered, kept in its [`HostEntry`] between scrapes so that a
/// scrape renders again only the hosts that changed since the previous one (agents report
/// every minute, Prometheus scrapes every 15 to 30 s). [`HostStates`] empties it whenever the
/// host's record or checks change the host's lines, and marks its values old when a report
/// changes only values (a heartbeat: the next render writes the new values between the kept
/// names and label sets, [`same_series`]); [`render`] fills it lazily (ingest never pays for
/// it), renders again when the host's `host` label changed (a second host with the same
/// hostname appeared or went), and empties it when the host leaves the page (expired, or
/// rendered by another collector). It holds about the host's share of the page.
#[derive(Default)]
pub struct SeriesCache(Mutex<Kept>);

impl SeriesCache {
    /// Forgets the rendered series: the host's lines changed.
    pub fn invalidate(&mut self) {
        *self.0.get_mut().unwrap_or_else(PoisonError::into_inner) = Kept::Nothing;
    }

    /// Marks the values of the kept series old: a report changed values only, the host's
    /// lines (names and label sets) are the same ([`same_series`]).
    pub fn values_changed(&mut self) {
        let kept = self.0.get_mut().unwrap_or_else(PoisonError::into_inner);
        if let Kept::Current(series) = kept {
            *kept = Kept::OldValues(Arc::clone(series));
        }
    }

    /// Bytes held by the kept series (0 when none are kept).
    pub fn bytes(&self) -> usize {
        match &*self.slot() {
            Kept::Nothing => 0,
            Kept::Current(series) | Kept::OldValues(series) => series.bytes(),
        }
    }

    fn slot(&self) -> MutexGuard<'_, Kept> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The kept series if they carry `label`, with the entry's values if they are old, else
    /// freshly rendered ones (then kept).
    fn get_or_render(
        &self,
        entry: &HostEntry,
        label: &str,
        scratch: &mut Scratch,
    ) -> Arc<HostSeries> {
        let mut slot = self.slot();
        let series = match std::mem::take(&mut *slot) {
            Kept::Current(series) if series.label == label => {
                *slot = Kept::Current(Arc::clone(&series));
                return series;
            }
            Kept::OldValues(series) if series.label == label => {
                scratch.values.clear();
                walk_host_lines(entry, &mut scratch.measurements, &mut scratch.values);
                // Not shared once the page that showed it is assembled: its buffers are reused.
                let mut series = Arc::unwrap_or_clone(series);
                if series.rewrite_values(&scratch.values, &mut scratch.text) {
                    series
                } else {
                    render_host_series(entry, label, scratch)
                }
            }
            _ => render_host_series(entry, label, scratch),
        };
        let series = Arc::new(series);
        *slot = Kept::Current(Arc::clone(&series));
        series
    }

    /// Drops the series of a host that is not on the page, so that they hold no memory.
    fn release(&self) {
        let mut slot = self.slot();
        if !matches!(*slot, Kept::Nothing) {
            *slot = Kept::Nothing;
        }
    }
}

impl Clone for SeriesCache {
    fn clone(&self) -> Self {
        SeriesCache(Mutex::new(self.slot().clone()))
    }
}

impl std::fmt::Debug for SeriesCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeriesCache")
            .field("bytes", &self.bytes())
            .finish()
    }
}

/// Whether a host whose record and checks are `old_record` and `old_checks` has the same lines
/// (family names and label sets: everything but the values and the `host` label, which
/// [`render`] checks itself) once `record` and `checks` replace them; `checks` is `None` when
/// they stay as they are. Mirrors what [`walk_host_lines`] and [`render_host_series`] write.
pub fn same_series(
    old_record: &HostRecord,
    old_checks: &[CheckState],
    record: &HostRecord,
    checks: Option<&[CheckState]>,
) -> bool {
    let (old, new) = (old_record, record);
    fn info_labels(host: &HostRecord) -> [&String; 9] {
        [
            &host.id,
            &host.os_name,
            &host.os_version,
            &host.kernel_version,
            &host.arch,
            &host.vmsystem,
            &host.manufacturer,
            &host.model,
            &host.agent_version,
        ]
    }
    fn mounts(host: &HostRecord) -> impl Iterator<Item = &str> {
        host.vitals
            .volumes
            .iter()
            .map(|volume| volume.mount.as_str())
    }
    let same_record = info_labels(old) == info_labels(new)
        && (old.vitals.boot_time_unix == 0) == (new.vitals.boot_time_unix == 0)
        && mounts(old).eq(mounts(new));
    let same_checks = checks.is_none_or(|checks| {
        old_checks.len() == checks.len()
            && old_checks.iter().zip(checks).all(|(old, new)| {
                let succeeded =
                    |check: &CheckState| matches!(check.outcome.as_str(), "pass" | "fail");
                old.check == new.check
                    && old.kind == new.kind
                    && old.target == new.target
                    && succeeded(old) == succeeded(new)
                    && old.measurements.len() == new.measurements.len()
                    && old
                        .measurements
                        .iter()
                        .zip(&new.measurements)
                        .all(|(old, new)| old.name == new.name)
            })
    });
    same_record && same_checks
}

/// A host on the page: its series and whether it is up at this scrape.
struct ShownHost {
    series: Arc<HostSeries>,
    up: bool,
}

/// A run of consecutive hosts of the page, rendered by one thread, and the bytes their lines
/// take in each family of the page.
struct HostRun {
    hosts: Vec<ShownHost>,
    family_bytes: [usize; PAGE_FAMILIES],
}

/// Threads a render uses by default: one per core, at most [`MAX_RENDER_THREADS`].
pub fn default_render_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(MAX_RENDER_THREADS)
}

/// More threads than this gain nothing: past a few, the copy is bound by memory bandwidth.
const MAX_RENDER_THREADS: usize = 8;

/// Below this many hosts per thread, starting a thread costs more than it saves.
const MIN_HOSTS_PER_THREAD: usize = 512;

/// Renders the whole `/metrics` page with [`default_render_threads`] threads.
pub fn render(
    states: &HostStates,
    ingest: &IngestMetrics,
    liveness: Liveness,
    now_ms: i64,
) -> Page {
    render_with_threads(states, ingest, liveness, now_ms, default_render_threads())
}

/// Renders the whole `/metrics` page on up to `threads` threads (the caller's among them).
///
/// Under the host state's read lock: which hosts are shown, in which order, with which `host`
/// label, each one's series (kept from an earlier scrape unless the host changed since) and
/// the values that follow the clock; each thread takes a run of hosts. The page is assembled
/// after the lock is released, so ingest does not wait for the copy. Since every host's lines
/// are known by then, so is where each family and each run's share of it go in the page:
/// each thread copies its hosts one after the other, every host's text read once from start
/// to end and each of its sections written where its family continues. (Copying family after
/// family instead visits every host once per family, 40 scattered reads per host, and took
/// twice as long.) The text does not depend on the number of threads.
pub fn render_with_threads(
    states: &HostStates,
    ingest: &IngestMetrics,
    liveness: Liveness,
    now_ms: i64,
    threads: usize,
) -> Page {
    let stale_ms = liveness.stale_after.as_millis() as i64;
    let expire_ms = liveness.expire_after.as_millis() as i64;
    // With several collectors on one database, only the hosts this one owns.
    let ownership = states.ownership();
    let (runs, census) = states.with_hosts(|hosts| {
        let mut entries: Vec<&HostEntry> = Vec::with_capacity(hosts.len());
        for entry in hosts.values() {
            if now_ms - entry.record.last_seen_ms < expire_ms && ownership.renders(entry, now_ms) {
                entries.push(entry);
            } else {
                entry.series.release();
            }
        }
        entries.sort_by(|a, b| {
            (&a.record.hostname, &a.record.id).cmp(&(&b.record.hostname, &b.record.id))
        });
        let labels = host_labels(&entries);
        let threads = threads
            .clamp(1, MAX_RENDER_THREADS)
            .min(entries.len() / MIN_HOSTS_PER_THREAD)
            .max(1);
        let per_thread = entries.len().div_ceil(threads).max(1);
        let runs = on_threads(
            entries.chunks(per_thread).zip(labels.chunks(per_thread)),
            |(entries, labels)| show_hosts(entries, labels, now_ms, stale_ms),
        );
        (runs, host_census(&entries, now_ms, stale_ms))
    });

    let mut own_metrics = String::new();
    ingest.encode(&mut own_metrics);
    let headers = &*FAMILY_HEADERS;
    let total = headers.iter().map(String::len).sum::<usize>()
        + census.len()
        + runs
            .iter()
            .flat_map(|run| run.family_bytes.iter())
            .sum::<usize>()
        + own_metrics.len();
    let mut page = Page::buffer(total);
    // Where each run's lines go: one slice of the page per family.
    let mut destinations: Vec<Vec<&mut [u8]>> = runs
        .iter()
        .map(|_| Vec::with_capacity(PAGE_FAMILIES))
        .collect();
    let mut rest: &mut [u8] = &mut page;
    for (index, family) in PAGE.iter().enumerate() {
        rest = put(rest, headers[index].as_bytes());
        if family.source == Source::Census {
            rest = put(rest, census.as_bytes());
        }
        for (run, slices) in runs.iter().zip(&mut destinations) {
            let (slice, after) = rest.split_at_mut(run.family_bytes[index]);
            slices.push(slice);
            rest = after;
        }
    }
    let rest = put(rest, own_metrics.as_bytes());
    debug_assert!(
        rest.is_empty(),
        "{} bytes of the page unwritten",
        rest.len()
    );
    on_threads(runs.iter().zip(destinations), |(run, slices)| {
        copy_hosts(&run.hosts, slices);
    });
    Page { text: page }
}

/// Each host's kept series (rendered now if it has none or they carry another label), and the
/// bytes the hosts' lines take in each family.
fn show_hosts(
    entries: &[&HostEntry],
    labels: &[Cow<'_, str>],
    now_ms: i64,
    stale_ms: i64,
) -> HostRun {
    let mut scratch = Scratch::default();
    let mut family_bytes = [0; PAGE_FAMILIES];
    let hosts = entries
        .iter()
        .zip(labels)
        .map(|(entry, label)| {
            let series = entry.series.get_or_render(entry, label, &mut scratch);
            let mut section = 0;
            for (bytes, family) in family_bytes.iter_mut().zip(PAGE.iter()) {
                *bytes += match family.source {
                    Source::HostUp => HOST_UP_LINE + series.selector.len(),
                    Source::Census => 0,
                    _ => {
                        section += 1;
                        series.section(section - 1).len()
                    }
                };
            }
            ShownHost {
                series,
                up: now_ms - entry.record.last_seen_ms < stale_ms,
            }
        })
        .collect();
    HostRun {
        hosts,
        family_bytes,
    }
}

/// Copies each host's lines into `slices`, one per family (sized by [`show_hosts`]).
fn copy_hosts(hosts: &[ShownHost], mut slices: Vec<&mut [u8]>) {
    for host in hosts {
        let series = &host.series;
        let mut section = 0;
        for (slice, family) in slices.iter_mut().zip(PAGE.iter()) {
            let rest = std::mem::take(slice);
            *slice = match family.source {
                Source::HostUp => {
                    let rest = put(rest, family.name.as_bytes());
                    let rest = put(rest, series.selector.as_bytes());
                    put(rest, if host.up { b" 1\n" } else { b" 0\n" })
                }
                Source::Census => rest,
                _ => {
                    section += 1;
                    put(rest, series.section(section - 1).as_bytes())
                }
            };
        }
    }
}

/// Writes `bytes` at the start of `slice`; returns the rest of it.
fn put<'a>(slice: &'a mut [u8], bytes: &[u8]) -> &'a mut [u8] {
    let (head, rest) = slice.split_at_mut(bytes.len());
    head.copy_from_slice(bytes);
    rest
}

/// The `# HELP` and `# TYPE` lines of each family of the page.
static FAMILY_HEADERS: LazyLock<Vec<String>> = LazyLock::new(|| {
    PAGE.iter()
        .map(|family| {
            let name = family.name;
            format!(
                "# HELP {name} {}\n# TYPE {name} {}\n",
                family.help, family.kind
            )
        })
        .collect()
});

/// Runs `work` on every item, the first on the calling thread and each other one on a thread
/// of its own; returns the results in the items' order. A panic in `work` is raised again here.
fn on_threads<I, T, W>(items: I, work: W) -> Vec<T>
where
    I: IntoIterator,
    I::Item: Send,
    T: Send,
    W: Fn(I::Item) -> T + Sync,
{
    let mut items = items.into_iter();
    let Some(first) = items.next() else {
        return Vec::new();
    };
    let work = &work;
    std::thread::scope(|scope| {
        let others: Vec<_> = items.map(|item| scope.spawn(move || work(item))).collect();
        let mut results = Vec::with_capacity(others.len() + 1);
        results.push(work(first));
        for other in others {
            match other.join() {
                Ok(result) => results.push(result),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        results
    })
}

/// The buffer of the last page dropped, for the next render to write into. A page is tens of
/// MiB, and writing into freshly allocated memory costs a page fault every 4 KiB: a third of a
/// render that finds every host's lines kept. One buffer per process, whatever the number of
/// renderers: it only saves the faults, and it holds the page's size in memory between
/// scrapes.
static SPARE_PAGE: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// A rendered `/metrics` page (UTF-8 text). Dropped (once sent), it hands its buffer back for
/// the next render.
#[derive(PartialEq, Eq)]
pub struct Page {
    text: Vec<u8>,
}

impl Page {
    /// A buffer of exactly `len` bytes, to be overwritten: the spare one, unless it is more
    /// than twice that (hosts went away: its memory goes too). The spare one's bytes are
    /// kept as they are (every byte is written by the render); only what it lacks is zeroed.
    fn buffer(len: usize) -> Vec<u8> {
        let mut spare =
            std::mem::take(&mut *SPARE_PAGE.lock().unwrap_or_else(PoisonError::into_inner));
        if spare.capacity() > 2 * len {
            spare = Vec::new();
        }
        spare.resize(len, 0);
        spare
    }

    /// The page's length in bytes.
    pub fn len(&self) -> usize {
        self.text.len()
    }

    /// Whether the page is empty (it never is: it holds at least the families' headers).
    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    /// The page's text (a copy: for tests and benchmarks).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.text).into_owned()
    }
}

impl std::fmt::Display for Page {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.text))
    }
}

impl std::fmt::Debug for Page {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Page")
            .field("bytes", &self.text.len())
            .finish()
    }
}

impl AsRef<[u8]> for Page {
    fn as_ref(&self) -> &[u8] {
        &self.text
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        let text = std::mem::take(&mut self.text);
        let mut spare = SPARE_PAGE.lock().unwrap_or_else(PoisonError::into_inner);
        if text.capacity() > spare.capacity() {
            *spare = text;
        }
    }
}

/// Bytes of an `estate_host_up` line besides the selector.
const HOST_UP_LINE: usize = "estate_host_up 1\n".len();

/// The `estate_hosts` lines: shown hosts counted by state, operating system and version.
fn host_census(entries: &[&HostEntry], now_ms: i64, stale_ms: i64) -> String {
    let mut counts: BTreeMap<(&str, &str, &str), u64> = BTreeMap::new();
    for entry in entries {
        let host = &entry.record;
        let state = if now_ms - host.last_seen_ms < stale_ms {
            "up"
        } else {
            "stale"
        };
        *counts
            .entry((state, &host.os_name, &host.os_version))
            .or_default() += 1;
    }
    let mut out = String::new();
    for ((state, os, os_version), count) in counts {
        let labels = label_set(&[("state", state), ("os", os), ("os_version", os_version)]);
        push_sample(&mut out, "estate_hosts", &labels, count as f64);
    }
    out
}

/// The `host` label: the hostname, unless two hosts share it, then `hostname~<id prefix>`, so
/// that no two hosts ever produce the same series.
fn host_labels<'a>(hosts: &[&'a HostEntry]) -> Vec<Cow<'a, str>> {
    let mut uses: HashMap<&str, usize> = HashMap::with_capacity(hosts.len());
    for entry in hosts {
        *uses.entry(entry.record.hostname.as_str()).or_default() += 1;
    }
    hosts
        .iter()
        .map(|entry| {
            let host = &entry.record;
            if uses[host.hostname.as_str()] > 1 {
                let prefix: String = host.id.chars().take(8).collect();
                Cow::Owned(format!("{}~{prefix}", host.hostname))
            } else {
                Cow::Borrowed(host.hostname.as_str())
            }
        })
        .collect()
}

/// Buffers reused from one host to the next while rendering, so that rendering a host
/// allocates only what it keeps.
#[derive(Default)]
struct Scratch {
    text: String,
    /// The label sets of the host's check targets, one after the other.
    check_labels: String,
    /// Where each check target's label set ends in `check_labels`.
    check_label_ends: Vec<usize>,
    measurements: Vec<Measurements>,
    values: Vec<SampleValue>,
}

/// Where a line's label set comes from.
#[derive(Debug, Clone, Copy)]
enum LineLabels<'a> {
    /// `{host="…"}`
    Host,
    /// The inventory facts of `estate_host_info`.
    Info,
    /// A volume's: host and mount.
    Volume(&'a str),
    /// The `index`th check target's: host, check, kind and target.
    Check(usize),
}

/// Takes a host's lines one after the other from [`walk_host_lines`].
trait LineSink<'a> {
    fn line(&mut self, name: &'static str, labels: LineLabels<'a>, value: SampleValue);
    /// The lines of a family end (none of it is left out, even without lines).
    fn end_family(&mut self);
}

/// Collects only the values.
impl LineSink<'_> for Vec<SampleValue> {
    fn line(&mut self, _: &'static str, _: LineLabels<'_>, value: SampleValue) {
        self.push(value);
    }

    fn end_family(&mut self) {}
}

/// The one place that says which lines a host has, in page order, for every family that does
/// not follow the clock: what [`render_host_series`] writes, and the values a report brings
/// to kept lines ([`HostSeries::with_values`]).
fn walk_host_lines<'a>(
    entry: &'a HostEntry,
    measurements: &mut Vec<Measurements>,
    sink: &mut impl LineSink<'a>,
) {
    let host = &entry.record;
    let vitals = &host.vitals;
    measurements.clear();
    for check in &entry.checks {
        let mut values: Measurements = [None; MEASUREMENT_FAMILIES.len()];
        for measurement in &check.measurements {
            if let Some(index) = measurement_family(&measurement.name) {
                // The first measurement of a name counts.
                values[index].get_or_insert(measurement.value);
            }
        }
        measurements.push(values);
    }
    for family in PAGE.iter() {
        let name = family.name;
        let mut by_host = |value: SampleValue| sink.line(name, LineLabels::Host, value);
        match family.source {
            Source::HostUp | Source::Census => continue,
            Source::LastReport => by_host(SampleValue::Millis(host.last_seen_ms)),
            Source::ClockSkew => by_host(SampleValue::Millis(host.clock_skew_ms)),
            Source::IdentityConflict => by_host(f64::from(u8::from(host.identity_conflict)).into()),
            Source::Memory => by_host((host.memory_bytes as f64).into()),
            Source::MemoryAvailable => by_host((vitals.memory_available_bytes as f64).into()),
            Source::Swap => by_host((host.swap_bytes as f64).into()),
            Source::SwapFree => by_host((vitals.swap_free_bytes as f64).into()),
            Source::CpuThreads => by_host(f64::from(host.cpu_threads).into()),
            Source::BootTime => {
                if vitals.boot_time_unix != 0 {
                    by_host((vitals.boot_time_unix as f64).into());
                }
            }
            Source::DroppedReports => by_host((host.dropped_reports_total as f64).into()),
            Source::Info => sink.line(name, LineLabels::Info, 1.0.into()),
            Source::VolumeSize | Source::VolumeFree => {
                for volume in &vitals.volumes {
                    let value = if family.source == Source::VolumeSize {
                        volume.total_bytes
                    } else {
                        volume.free_bytes
                    };
                    sink.line(
                        name,
                        LineLabels::Volume(&volume.mount),
                        (value as f64).into(),
                    );
                }
            }
            Source::CheckSuccess
            | Source::CheckDuration
            | Source::CheckLastResult
            | Source::CheckOutcomeSince
            | Source::Measurement(_) => {
                for (index, (check, values)) in entry.checks.iter().zip(&*measurements).enumerate()
                {
                    if let Some(value) = family.source.check_value(check, values) {
                        sink.line(name, LineLabels::Check(index), value);
                    }
                }
            }
        }
        sink.end_family();
    }
}

/// The `MEASUREMENT_FAMILIES` index of a measurement that is a metric. A `match` rather than
/// a search of the table: it runs for every measurement of every check target at each render.
fn measurement_family(name: &str) -> Option<usize> {
    let index = match name {
        "latency_seconds" => 0,
        "connect_seconds" => 1,
        "answers" => 2,
        "rcode" => 3,
        "tcp_fallback" => 4,
        "current_time_skew_seconds" => 5,
        "kdc_time_skew_seconds" => 6,
        "synchronized" => 7,
        "gc_ready" => 8,
        "cert_not_after_unix" => 9,
        "search_results" => 10,
        "krb_error_code" => 11,
        "tls_version" => 12,
        "http_status" => 13,
        "redirects" => 14,
        "content_length" => 15,
        "starttls" => 16,
        "offers" => 17,
        "rogue_servers" => 18,
        "rogue" => 19,
        "lease_seconds" => 20,
        _ => return None,
    };
    Some(index)
}

/// Writes a host's lines into a [`HostSeries`].
struct SeriesWriter<'s> {
    record: &'s HostRecord,
    label: &'s str,
    selector: &'s str,
    text: &'s mut String,
    check_labels: &'s str,
    check_label_ends: &'s [usize],
    values: Vec<(u32, u32)>,
    ends: [u32; HOST_SECTIONS],
    line_ends: [u32; HOST_SECTIONS],
    section: usize,
}

impl<'a> LineSink<'a> for SeriesWriter<'_> {
    fn line(&mut self, name: &'static str, labels: LineLabels<'a>, value: SampleValue) {
        let text = &mut *self.text;
        text.push_str(name);
        match labels {
            LineLabels::Host => text.push_str(self.selector),
            LineLabels::Info => {
                let host = self.record;
                push_label_set(
                    text,
                    &[
                        ("host", self.label),
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
                );
            }
            LineLabels::Volume(mount) => {
                push_label_set(text, &[("host", self.label), ("mount", mount)]);
            }
            LineLabels::Check(index) => {
                let start = index
                    .checked_sub(1)
                    .map_or(0, |previous| self.check_label_ends[previous]);
                text.push_str(&self.check_labels[start..self.check_label_ends[index]]);
            }
        }
        text.push(' ');
        let value_start = text.len() as u32;
        push_sample_value(text, value);
        self.values.push((value_start, text.len() as u32));
        text.push('\n');
    }

    fn end_family(&mut self) {
        self.ends[self.section] = self.text.len() as u32;
        self.line_ends[self.section] = self.values.len() as u32;
        self.section += 1;
    }
}

/// Renders a host's lines for every family that does not follow the clock, in page order.
fn render_host_series(entry: &HostEntry, label: &str, scratch: &mut Scratch) -> HostSeries {
    let Scratch {
        text,
        check_labels,
        check_label_ends,
        measurements,
        values: _,
    } = scratch;
    let selector = label_set(&[("host", label)]);
    check_labels.clear();
    check_label_ends.clear();
    for check in &entry.checks {
        push_label_set(
            check_labels,
            &[
                ("host", label),
                ("check", &check.check),
                ("kind", &check.kind),
                ("target", &check.target),
            ],
        );
        check_label_ends.push(check_labels.len());
    }
    text.clear();
    let mut writer = SeriesWriter {
        record: &entry.record,
        label,
        selector: &selector,
        text,
        check_labels,
        check_label_ends,
        values: Vec::new(),
        ends: [0; HOST_SECTIONS],
        line_ends: [0; HOST_SECTIONS],
        section: 0,
    };
    walk_host_lines(entry, measurements, &mut writer);
    let SeriesWriter {
        values,
        ends,
        line_ends,
        ..
    } = writer;
    HostSeries {
        label: label.to_owned(),
        selector,
        text: text.as_str().to_owned(),
        ends,
        values,
        line_ends,
    }
}

/// A label set in the text format, values escaped: `{key="value",…}`.
fn label_set(pairs: &[(&str, &str)]) -> String {
    let mut out = String::new();
    push_label_set(&mut out, pairs);
    out
}

fn push_label_set(out: &mut String, pairs: &[(&str, &str)]) {
    out.push('{');
    for (index, (key, value)) in pairs.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        out.push_str(key);
        out.push_str("=\"");
        escape_label_value(out, value);
        out.push('"');
    }
    out.push('}');
}

/// A sample's value.
#[derive(Debug, Clone, Copy)]
enum SampleValue {
    Number(f64),
    /// A time or a duration in milliseconds, written in seconds.
    Millis(i64),
}

impl From<f64> for SampleValue {
    fn from(value: f64) -> Self {
        SampleValue::Number(value)
    }
}

/// Writes one sample line of the text format (version 0.0.4); `labels` is a [`label_set`].
fn push_sample(out: &mut String, name: &str, labels: &str, value: impl Into<SampleValue>) {
    out.push_str(name);
    out.push_str(labels);
    out.push(' ');
    push_sample_value(out, value.into());
    out.push('\n');
}

/// Writes a sample's value.
fn push_sample_value(out: &mut String, value: SampleValue) {
    match value {
        SampleValue::Number(value) => push_value(out, value),
        SampleValue::Millis(ms) => push_millis_as_seconds(out, ms),
    }
}

/// Writes a sample value as Rust's `{}` writes a finite `f64` (integers without a fraction,
/// never an exponent), through `itoa` and `ryu` where they write the very same text, rather
/// than the `fmt` machinery, which dominated the render; infinities and NaN as the text format
/// spells them (`+Inf`, `-Inf`, `NaN`; `{}` would write `inf`, which Prometheus rejects).
fn push_value(out: &mut String, value: f64) {
    if !value.is_finite() {
        out.push_str(if value.is_nan() {
            "NaN"
        } else if value > 0.0 {
            "+Inf"
        } else {
            "-Inf"
        });
    } else if value.fract() == 0.0
        && value.abs() < 1e16
        && !(value == 0.0 && value.is_sign_negative())
    {
        // An integer below 1e16 is exact in an i64.
        out.push_str(itoa::Buffer::new().format(value as i64));
    } else if (1e-5..1e8).contains(&value.abs()) {
        // Here ryu writes plain decimals with the same shortest digits as `{}`. Above 1e8 the
        // two sometimes pick a different one of two equally short last digits (both read back
        // as the same number): the test below holds them to the same text.
        out.push_str(ryu::Buffer::new().format_finite(value));
    } else {
        let _ = write!(out, "{value}");
    }
}

/// Writes a time in milliseconds as seconds, as `push_value(ms as f64 / 1000.0)` would: the
/// decimal itself is the shortest text of that `f64` while milliseconds are finer than its
/// precision, up to 1e15 ms (31 000 years).
fn push_millis_as_seconds(out: &mut String, ms: i64) {
    if ms.unsigned_abs() >= 1_000_000_000_000_000 {
        push_value(out, ms as f64 / 1000.0);
        return;
    }
    if ms < 0 {
        out.push('-');
    }
    let (seconds, millis) = (ms.unsigned_abs() / 1000, ms.unsigned_abs() % 1000);
    out.push_str(itoa::Buffer::new().format(seconds));
    if millis != 0 {
        // Three digits, less the trailing zeros.
        let digits = [millis / 100, millis / 10 % 10, millis % 10].map(|digit| b'0' + digit as u8);
        let significant = 3 - digits
            .iter()
            .rev()
            .take_while(|digit| **digit == b'0')
            .count();
        out.push('.');
        for digit in &digits[..significant] {
            out.push(char::from(*digit));
        }
    }
}

/// Escapes a label value (`\`, `"` and newline); the runs between them are copied whole.
fn escape_label_value(out: &mut String, text: &str) {
    let mut start = 0;
    for (at, byte) in text.bytes().enumerate() {
        let escaped = match byte {
            b'\\' => "\\\\",
            b'"' => "\\\"",
            b'\n' => "\\n",
            _ => continue,
        };
        // ASCII bytes: `at` is a character boundary.
        out.push_str(&text[start..at]);
        out.push_str(escaped);
        start = at + 1;
    }
    out.push_str(&text[start..]);
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
        let text = render(&states, &IngestMetrics::new(), LIVENESS, now).text();
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
        let text = render(&states, &IngestMetrics::new(), LIVENESS, now).text();
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
        let text = render(&states, &IngestMetrics::new(), LIVENESS, now).text();
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

    #[test]
    fn every_measurement_family_is_found_by_its_name() {
        for (index, (name, _, _)) in MEASUREMENT_FAMILIES.iter().enumerate() {
            assert_eq!(measurement_family(name), Some(index), "`{name}`");
        }
        assert_eq!(measurement_family("dns_host_name"), None);
    }

    #[test]
    fn every_family_has_a_source_and_all_but_two_are_kept_per_host() {
        for (name, _, _) in HOST_FAMILIES.iter().chain(CHECK_FAMILIES) {
            assert!(Source::of(name).is_some(), "no source for `{name}`");
        }
        assert_eq!(
            PAGE.len(),
            HOST_FAMILIES.len() + CHECK_FAMILIES.len() + MEASUREMENT_FAMILIES.len()
        );
        let kept = PAGE
            .iter()
            .filter(|family| !matches!(family.source, Source::HostUp | Source::Census))
            .count();
        assert_eq!(kept, HOST_SECTIONS);
    }

    #[test]
    fn values_are_written_as_display_writes_them() {
        let check = |value: f64| {
            let mut out = String::new();
            push_value(&mut out, value);
            assert_eq!(out, format!("{value}"), "bits {:#x}", value.to_bits());
        };
        for value in [
            0.0,
            -0.0,
            1.0,
            -1.0,
            0.25,
            -1.5,
            0.1,
            1e-5,
            9.99e-6,
            1e-7,
            123.456,
            1e15,
            1e16,
            -1e16,
            9_007_199_254_740_993.0,
            1e21,
            1e300,
            5e-324,
            f64::MAX,
            f64::MIN_POSITIVE,
            1_732_435_200.123,
            8_589_934_592.0,
            0.000_123,
            99_999_999_999_999.9,
        ] {
            check(value);
        }
        // Timestamps in milliseconds as seconds, and arbitrary bit patterns.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..200_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            check((state % 4_000_000_000_000) as f64 / 1000.0);
            let value = f64::from_bits(state);
            if value.is_finite() {
                check(value);
            }
            // A random mantissa between 2^-17 and 2^27, around where ryu takes over.
            let exponent = 1023 - 17 + (state >> 52) % 44;
            check(f64::from_bits(exponent << 52 | state & ((1 << 52) - 1)));
        }
        let mut out = String::new();
        for value in [f64::INFINITY, f64::NEG_INFINITY, f64::NAN] {
            push_value(&mut out, value);
            out.push(' ');
        }
        assert_eq!(out, "+Inf -Inf NaN ");
    }

    #[test]
    fn milliseconds_are_written_as_their_value_in_seconds_would_be() {
        let check = |ms: i64| {
            let mut out = String::new();
            push_millis_as_seconds(&mut out, ms);
            assert_eq!(out, format!("{}", ms as f64 / 1000.0), "{ms} ms");
        };
        for ms in [
            0,
            1,
            -1,
            10,
            100,
            999,
            1_000,
            -1_500,
            1_732_435_200_123,
            1_732_435_200_120,
            1_732_435_200_100,
            999_999_999_999_999,
            1_000_000_000_000_000,
            i64::MAX,
            i64::MIN,
        ] {
            check(ms);
        }
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..200_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            check((state % 2_000_000_000_000_000) as i64 - 1_000_000_000_000_000);
            check((state % 4_000_000_000_000) as i64);
        }
    }

    #[test]
    fn label_values_are_escaped() {
        for (text, escaped) in [
            ("plain", "plain"),
            ("", ""),
            ("a\"b", "a\\\"b"),
            ("back\\slash\n", "back\\\\slash\\n"),
            ("\"\"\\", "\\\"\\\"\\\\"),
            ("é\"ü", "é\\\"ü"),
        ] {
            let mut out = String::new();
            escape_label_value(&mut out, text);
            assert_eq!(out, escaped, "{text:?}");
        }
    }

    /// The page `states` would show if nothing were kept from earlier scrapes.
    fn fresh_page(states: &HostStates, now: i64) -> String {
        let (records, checks) = states.with_hosts(|hosts| {
            let records: Vec<HostRecord> = hosts.values().map(|e| e.record.clone()).collect();
            let checks: Vec<CheckState> = hosts.values().flat_map(|e| e.checks.clone()).collect();
            (records, checks)
        });
        render(
            &HostStates::load(records, checks),
            &IngestMetrics::new(),
            LIVENESS,
            now,
        )
        .text()
    }

    #[test]
    fn a_page_rendered_on_several_threads_is_the_page_rendered_on_one() {
        use crate::store::CheckState;
        let now = 10_000_000;
        // Enough hosts for four threads, some sharing a hostname, some stale, with checks.
        let records: Vec<HostRecord> = (0..4 * MIN_HOSTS_PER_THREAD + 7)
            .map(|index| {
                let hostname = format!("host{:05}", index % (3 * MIN_HOSTS_PER_THREAD));
                host(
                    &format!("{index:08}-id"),
                    &hostname,
                    now - index as i64 * 1_000,
                )
            })
            .collect();
        let checks: Vec<CheckState> = records
            .iter()
            .step_by(3)
            .map(|record| CheckState {
                host_id: record.id.clone(),
                check: "dns".into(),
                kind: "dns".into(),
                target: "ns1".into(),
                outcome: "pass".into(),
                duration_seconds: 0.125,
                ..Default::default()
            })
            .collect();
        let ingest = IngestMetrics::new();
        let one = render_with_threads(
            &HostStates::load(records.clone(), checks.clone()),
            &ingest,
            LIVENESS,
            now,
            1,
        )
        .text();
        assert!(one.contains("estate_host_up{host=\"host00001~00000001\"} 1\n"));
        assert!(one.contains("estate_host_up{host=\"host01000\"} 0\n"));
        assert!(one.contains("# TYPE estate_collector_reports_total counter\n"));
        for threads in [2, 3, 4] {
            // Cold (every host rendered on the threads), then warm (every host's lines kept).
            let states = HostStates::load(records.clone(), checks.clone());
            let cold = render_with_threads(&states, &ingest, LIVENESS, now, threads);
            assert_eq!(cold.len(), one.len());
            assert!(cold.text() == one, "{threads} threads, cold");
            let warm = render_with_threads(&states, &ingest, LIVENESS, now, threads).text();
            assert!(warm == one, "{threads} threads, warm");
        }
    }

    #[test]
    fn a_report_changing_only_values_rewrites_them_into_the_kept_lines() {
        use estate_proto::v1::Measurement;
        let now = 10_000_000;
        let ingest = IngestMetrics::new();
        let number = |name: &str, value: f64| Measurement {
            name: name.into(),
            value,
            text: String::new(),
        };
        let check = |target: &str, outcome: &str, latency: f64| CheckState {
            host_id: "11111111-a".into(),
            check: "dns".into(),
            kind: "dns".into(),
            target: target.into(),
            outcome: outcome.into(),
            duration_seconds: latency * 2.0,
            since_ms: now - 60_000,
            received_ms: now,
            measurements: vec![number("latency_seconds", latency), number("answers", 2.0)],
            ..Default::default()
        };
        let first = host("11111111-a", "web", now);
        let checks = vec![check("ns1", "pass", 0.01), check("ns2", "fail", 0.02)];
        let states = HostStates::load(vec![first.clone()], checks.clone());
        render(&states, &ingest, LIVENESS, now);
        let kept = |states: &HostStates| {
            states.with_hosts(|hosts| match &*hosts["11111111-a"].series.slot() {
                Kept::Nothing => "nothing",
                Kept::Current(_) => "current",
                Kept::OldValues(_) => "old values",
            })
        };
        assert_eq!(kept(&states), "current");

        // Each report, whether it keeps the lines, and the page must be the page rendered
        // from nothing.
        let mut record = first.clone();
        let mut reports: Vec<(HostRecord, Option<Vec<CheckState>>, bool)> = Vec::new();
        record.last_seen_ms = now + 61_000;
        record.memory_bytes = 123_456_789;
        record.vitals.volumes[0].free_bytes = 7;
        record.vitals.memory_available_bytes = 1 << 20;
        reports.push((record.clone(), None, true));
        let mut heartbeat = vec![
            check("ns1", "fail", 1.5e-7),
            check("ns2", "pass", 12345.678),
        ];
        heartbeat[0].measurements[1].value = -0.0;
        reports.push((record.clone(), Some(heartbeat), true));
        record.vitals.boot_time_unix = 1_700_000_000;
        reports.push((record.clone(), None, false));
        record.vitals.boot_time_unix = 1_700_000_123;
        reports.push((record.clone(), None, true));
        reports.push((
            record.clone(),
            Some(vec![
                check("ns1", "skipped", 0.01),
                check("ns2", "pass", 0.0),
            ]),
            false,
        ));
        let mut renamed = vec![check("ns1", "skipped", 0.5), check("ns2", "pass", 0.25)];
        renamed[1].measurements[1].name = "rcode".into();
        reports.push((record.clone(), Some(renamed), false));
        record.vitals.volumes[0].mount = "/srv".into();
        reports.push((record.clone(), None, false));
        record.kernel_version = "6.1.0-\"odd\"".into();
        reports.push((record.clone(), None, false));
        record.last_seen_ms += 61_000;
        reports.push((record.clone(), Some(checks.clone()), false));
        record.clock_skew_ms = -1_250;
        reports.push((record.clone(), Some(checks.clone()), true));

        for (index, (record, checks, keeps_lines)) in reports.into_iter().enumerate() {
            let same = states.with_hosts(|hosts| {
                let entry = &hosts["11111111-a"];
                same_series(&entry.record, &entry.checks, &record, checks.as_deref())
            });
            assert_eq!(same, keeps_lines, "report {index}");
            states.update(record, checks);
            let expected = if keeps_lines { "old values" } else { "nothing" };
            assert_eq!(kept(&states), expected, "report {index}");
            let later = now + 200_000;
            let page = render(&states, &ingest, LIVENESS, later).text();
            assert_eq!(page, fresh_page(&states, later), "report {index}");
            assert_eq!(kept(&states), "current", "report {index}");
        }
    }

    #[test]
    fn kept_series_follow_updates_label_changes_and_expiry() {
        let now = 10_000_000;
        let ingest = IngestMetrics::new();
        let states = HostStates::from_records(vec![
            host("11111111-a", "web", now - 1_000),
            host("22222222-b", "db", now - 2_000),
        ]);
        let page = render(&states, &ingest, LIVENESS, now).text();
        assert!(page.contains("estate_host_memory_bytes{host=\"web\"} 8589934592\n"));
        assert_eq!(
            page,
            render(&states, &ingest, LIVENESS, now).text(),
            "a warm render"
        );

        // A report changes a value and adds a check.
        let mut changed = host("11111111-a", "web", now);
        changed.memory_bytes = 16 << 30;
        let check = CheckState {
            host_id: "11111111-a".into(),
            check: "dns".into(),
            kind: "dns".into(),
            target: "ns1".into(),
            outcome: "fail".into(),
            ..Default::default()
        };
        states.update(changed, Some(vec![check]));
        let page = render(&states, &ingest, LIVENESS, now).text();
        assert!(page.contains("estate_host_memory_bytes{host=\"web\"} 17179869184\n"));
        assert!(page.contains(
            "estate_check_success{host=\"web\",check=\"dns\",kind=\"dns\",target=\"ns1\"} 0\n"
        ));
        assert_eq!(page, fresh_page(&states, now));

        // A second `web` appears: both hosts' series change label, the unchanged one too.
        states.update(host("33333333-c", "web", now - 5_000), None);
        let page = render(&states, &ingest, LIVENESS, now).text();
        assert!(!page.contains("{host=\"web\""), "{page}");
        assert!(page.contains("estate_host_memory_bytes{host=\"web~11111111\"} 17179869184\n"));
        assert!(page.contains("estate_host_memory_bytes{host=\"web~33333333\"} 8589934592\n"));
        assert!(page.contains("estate_host_up{host=\"web~33333333\"} 1\n"));
        assert!(page.contains("estate_check_success{host=\"web~11111111\",check=\"dns\""));
        assert_eq!(page, fresh_page(&states, now));

        // It expires (and `db` too): the first one is plain `web` again.
        let later = now + LIVENESS.expire_after.as_millis() as i64 - 1_000;
        let page = render(&states, &ingest, LIVENESS, later).text();
        assert!(!page.contains("\"db\""), "expired host still rendered");
        assert!(!page.contains("~"), "{page}");
        assert!(page.contains("estate_host_memory_bytes{host=\"web\"} 17179869184\n"));
        assert!(page.contains("estate_host_up{host=\"web\"} 0\n"));
        assert_eq!(page, fresh_page(&states, later));
        let kept = |id: &str| states.with_hosts(|hosts| hosts[id].series.bytes());
        assert_eq!(
            kept("22222222-b"),
            0,
            "an expired host's series are not kept"
        );
        assert!(kept("11111111-a") > 0);
    }

    #[test]
    fn a_host_reloaded_or_moved_by_the_ownership_refresh_is_rendered_again() {
        use crate::store::{CollectorView, HostOwner};
        let now = 10_000;
        let mut record = host("a", "web", now);
        record.reported_to = "c1".into();
        let states = HostStates::from_records(vec![record.clone()]);
        states.share("c1", 0);
        let ingest = IngestMetrics::new();
        let page = render(&states, &ingest, LIVENESS, now).text();
        assert!(page.contains("estate_host_memory_bytes{host=\"web\"} 8589934592\n"));
        // Another collector stores a newer report: not shown here until reloaded.
        states.apply_view(CollectorView {
            live_collectors: vec!["c1".into()],
            reported: vec![HostOwner {
                id: "a".into(),
                reported_to: "c1".into(),
                last_seen_ms: now + 1,
            }],
        });
        assert!(
            !render(&states, &ingest, LIVENESS, now + 2)
                .text()
                .contains("\"web\"")
        );
        record.last_seen_ms = now + 1;
        record.memory_bytes = 1 << 30;
        states.reload(vec![record], vec![]);
        let page = render(&states, &ingest, LIVENESS, now + 2).text();
        assert!(page.contains("estate_host_memory_bytes{host=\"web\"} 1073741824\n"));
        assert!(page.contains("estate_host_last_report_timestamp_seconds{host=\"web\"} 10.001\n"));
    }
}
