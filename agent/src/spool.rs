//! The agent's disk spool: every report is written here before it is sent, and removed only
//! once the collector has acknowledged it. A collector outage or an agent restart therefore
//! loses nothing; reports are sent again in sequence order.
//!
//! One file per report, `<state_dir>/spool/<sequence, 20 digits>.report`, written atomically
//! (temporary file, fsync, rename, fsync of the directory). A file is a 28-byte header and the
//! prost-encoded `ReportRequest`:
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | magic `ESPL` |
//! | 4..6 | format version, little endian (1) |
//! | 6..8 | reserved, zero |
//! | 8..16 | when the report was spooled, Unix milliseconds, little endian |
//! | 16..20 | length of the encoded report, little endian |
//! | 20..28 | the first 8 bytes of SHA-256 over bytes 0..20 and the encoded report |
//!
//! The spool is bounded by total size and by age: beyond either, the oldest reports are
//! dropped. Dropped reports are counted in `<state_dir>/spool/dropped` until the next report
//! carries the count to the collector (`dropped_reports`). A file that fails its checks
//! (truncated, wrong magic, bad checksum, undecodable) is moved to `spool/corrupt/`, logged and
//! counted as dropped: never a reason to stop the agent.
//!
//! A delivery can end without an answer (the collector killed mid-request, a timeout): the
//! report may then be stored although it stays queued. Sent again, the collector acknowledges
//! it as a duplicate; but if the bounds drop it first, it is counted as dropped and may be
//! stored all the same. The spool therefore remembers which report had such an ambiguous
//! delivery, in `spool/attempt` (`<sequence> in_flight` while a delivery is under way,
//! `<sequence> ambiguous` after one ended without an answer; written without fsync, as it must
//! survive a killed agent, not a power cut), and keeps cumulative counts in
//! `spool/deliveries.prom`, in the Prometheus text format ([`DeliveryCounts`]): ambiguous
//! deliveries, and dropped reports split by whether one of their deliveries was ambiguous.
//! Reports are delivered one at a time in sequence order, so only the oldest queued report can
//! have had a delivery at all.

use crate::identity::write_file_atomically;
use estate_proto::v1::ReportRequest;
use prost::Message;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use tracing::{info, warn};

/// The spool's directory, inside the state directory.
pub const SPOOL_DIR: &str = "spool";
/// Where unreadable spool files are moved, inside the spool directory.
pub const CORRUPT_DIR: &str = "corrupt";
/// The file holding the count of dropped reports not yet reported, inside the spool directory.
pub const DROPPED_FILE: &str = "dropped";
/// The file naming the report whose delivery is under way or ended without an answer, inside
/// the spool directory.
pub const ATTEMPT_FILE: &str = "attempt";
/// The cumulative delivery counts ([`DeliveryCounts`]), inside the spool directory.
pub const COUNTS_FILE: &str = "deliveries.prom";
/// Counter of report deliveries that ended without an answer (in [`COUNTS_FILE`]).
pub const AMBIGUOUS_DELIVERIES_METRIC: &str = "estate_agent_report_deliveries_ambiguous_total";
/// Counter of reports dropped unacknowledged, labelled `after_ambiguous_delivery` (in
/// [`COUNTS_FILE`]).
pub const DROPPED_REPORTS_METRIC: &str = "estate_agent_reports_dropped_total";
/// Counter of drop counts carried again because the report carrying them was dropped after an
/// ambiguous delivery (in [`COUNTS_FILE`]).
pub const RECOUNTED_DROPS_METRIC: &str = "estate_agent_dropped_reports_recounted_total";
/// Most files kept in `spool/corrupt/`; beyond that, unreadable files are deleted, so a disk
/// that keeps corrupting files cannot fill up with them.
pub const MAX_CORRUPT_FILES: usize = 100;

const MAGIC: [u8; 4] = *b"ESPL";
const FORMAT_VERSION: u16 = 1;
/// Bytes before the encoded report.
pub const HEADER_BYTES: usize = 28;
const EXTENSION: &str = "report";

/// The spool's bounds, from the agent config's `[spool]` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpoolLimits {
    /// Total size of the spooled files; beyond it the oldest reports are dropped.
    pub max_bytes: u64,
    /// Reports spooled longer ago than this are dropped.
    pub max_age: Duration,
}

/// A failure of the spool's own storage (the disk), as opposed to a corrupt file.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("failed to create spool directory `{}`", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to list spool directory `{}`", path.display())]
    List {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to write spool file `{}`", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to remove spool file `{}`", path.display())]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot renumber spool file `{}` as sequence {sequence}: that file is still queued",
        path.display()
    )]
    Renumber { path: PathBuf, sequence: u64 },
}

/// Why a spool file cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CorruptReason {
    #[error("{0} bytes, shorter than the {HEADER_BYTES}-byte header")]
    TooShort(usize),
    #[error("wrong magic {0:02x?}, expected `ESPL`")]
    Magic([u8; 4]),
    #[error("unknown format version {0}, expected {FORMAT_VERSION}")]
    Version(u16),
    #[error("the header announces {declared} bytes of report, the file holds {actual}")]
    Length { declared: usize, actual: usize },
    #[error("checksum mismatch")]
    Checksum,
    #[error("the content is not a report: {0}")]
    Decode(String),
}

/// Encodes a report with its header, as written to a spool file.
pub fn encode_file(report: &ReportRequest, spooled_ms: u64) -> Vec<u8> {
    let body = report.encode_to_vec();
    let length = u32::try_from(body.len()).unwrap_or(u32::MAX);
    let mut bytes = Vec::with_capacity(HEADER_BYTES + body.len());
    bytes.extend_from_slice(&MAGIC);
    bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    bytes.extend_from_slice(&[0, 0]);
    bytes.extend_from_slice(&spooled_ms.to_le_bytes());
    bytes.extend_from_slice(&length.to_le_bytes());
    let checksum = checksum(&bytes, &body);
    bytes.extend_from_slice(&checksum);
    bytes.extend_from_slice(&body);
    bytes
}

/// Checks and decodes a spool file: when it was spooled (Unix ms) and the report.
pub fn decode_file(bytes: &[u8]) -> Result<(u64, ReportRequest), CorruptReason> {
    if bytes.len() < HEADER_BYTES {
        return Err(CorruptReason::TooShort(bytes.len()));
    }
    let (header, body) = bytes.split_at(HEADER_BYTES);
    let magic: [u8; 4] = header[0..4].try_into().unwrap_or_default();
    if magic != MAGIC {
        return Err(CorruptReason::Magic(magic));
    }
    let version = u16::from_le_bytes([header[4], header[5]]);
    if version != FORMAT_VERSION {
        return Err(CorruptReason::Version(version));
    }
    let spooled_ms = u64::from_le_bytes(header[8..16].try_into().unwrap_or_default());
    let declared = u32::from_le_bytes(header[16..20].try_into().unwrap_or_default()) as usize;
    if declared != body.len() {
        return Err(CorruptReason::Length {
            declared,
            actual: body.len(),
        });
    }
    if checksum(&header[..20], body) != header[20..28] {
        return Err(CorruptReason::Checksum);
    }
    let report =
        ReportRequest::decode(body).map_err(|error| CorruptReason::Decode(error.to_string()))?;
    Ok((spooled_ms, report))
}

fn checksum(header: &[u8], body: &[u8]) -> [u8; 8] {
    let digest = Sha256::new()
        .chain_update(header)
        .chain_update(body)
        .finalize();
    let mut checksum = [0; 8];
    checksum.copy_from_slice(&digest[..8]);
    checksum
}

/// What the spool knows of a queued report without reading its file again.
#[derive(Debug, Clone, Copy)]
struct Entry {
    bytes: u64,
    spooled_ms: u64,
    /// The report's own `dropped_reports`: if this report is dropped, that count must not be.
    carried_dropped: u64,
    /// A delivery of this report ended without an answer: the collector may have stored it.
    ambiguous_delivery: bool,
}

/// Cumulative counts of what became of reports that left the spool without an
/// acknowledgement, and of deliveries that ended without an answer; kept across restarts in
/// [`COUNTS_FILE`]. `dropped_not_stored + dropped_maybe_stored` is every report ever counted
/// in `dropped_reports` (which the collector sums per host).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryCounts {
    /// Delivery attempts that may have reached the collector's store and got no answer (the
    /// connection broke, the request timed out, the agent stopped meanwhile).
    pub ambiguous_deliveries: u64,
    /// Reports dropped that the collector certainly did not store: never sent, refused, or
    /// every delivery failed before reaching it.
    pub dropped_not_stored: u64,
    /// Reports dropped after a delivery that ended without an answer: the collector may have
    /// stored them, so they may be counted both as stored and as dropped.
    pub dropped_maybe_stored: u64,
    /// Drop counts that rode in those reports (`dropped_reports`) and were counted again for
    /// the next report: if the collector had stored the report, it has them twice.
    pub recounted_after_ambiguous_delivery: u64,
}

impl DeliveryCounts {
    /// The counts in the Prometheus text format, as written to [`COUNTS_FILE`] (a
    /// node_exporter textfile collector can read a copy of it).
    pub fn to_prometheus_text(&self) -> String {
        format!(
            "# HELP {AMBIGUOUS_DELIVERIES_METRIC} Report deliveries that ended without an answer \
             from the collector (the report may or may not be stored).\n\
             # TYPE {AMBIGUOUS_DELIVERIES_METRIC} counter\n\
             {AMBIGUOUS_DELIVERIES_METRIC} {}\n\
             # HELP {DROPPED_REPORTS_METRIC} Reports dropped from the spool without an \
             acknowledgement; after_ambiguous_delivery=\"true\": the collector may have stored \
             it.\n\
             # TYPE {DROPPED_REPORTS_METRIC} counter\n\
             {DROPPED_REPORTS_METRIC}{{after_ambiguous_delivery=\"false\"}} {}\n\
             {DROPPED_REPORTS_METRIC}{{after_ambiguous_delivery=\"true\"}} {}\n\
             # HELP {RECOUNTED_DROPS_METRIC} Drops carried again because the report carrying \
             them was dropped after an ambiguous delivery (the collector may count them twice).\n\
             # TYPE {RECOUNTED_DROPS_METRIC} counter\n\
             {RECOUNTED_DROPS_METRIC} {}\n",
            self.ambiguous_deliveries,
            self.dropped_not_stored,
            self.dropped_maybe_stored,
            self.recounted_after_ambiguous_delivery
        )
    }

    /// Reads [`DeliveryCounts::to_prometheus_text`] back. Comments are skipped; an unknown
    /// series or a value that is not a count is an error naming the line.
    pub fn parse(text: &str) -> Result<DeliveryCounts, String> {
        let mut counts = DeliveryCounts::default();
        let not_stored = format!("{DROPPED_REPORTS_METRIC}{{after_ambiguous_delivery=\"false\"}}");
        let maybe_stored = format!("{DROPPED_REPORTS_METRIC}{{after_ambiguous_delivery=\"true\"}}");
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let parsed = line
                .rsplit_once(' ')
                .and_then(|(series, value)| Some((series.trim(), value.parse::<u64>().ok()?)));
            let slot = match parsed {
                Some((series, _)) if series == AMBIGUOUS_DELIVERIES_METRIC => {
                    &mut counts.ambiguous_deliveries
                }
                Some((series, _)) if series == not_stored => &mut counts.dropped_not_stored,
                Some((series, _)) if series == maybe_stored => &mut counts.dropped_maybe_stored,
                Some((series, _)) if series == RECOUNTED_DROPS_METRIC => {
                    &mut counts.recounted_after_ambiguous_delivery
                }
                _ => return Err(format!("unexpected line `{line}`")),
            };
            *slot = parsed.map_or(0, |(_, value)| value);
        }
        Ok(counts)
    }
}

/// What `spool/attempt` says of the report it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AttemptState {
    /// A delivery was under way: if the agent stopped meanwhile, it ended without an answer.
    InFlight,
    /// A delivery ended without an answer, already counted.
    Ambiguous,
}

impl AttemptState {
    fn as_str(self) -> &'static str {
        match self {
            AttemptState::InFlight => "in_flight",
            AttemptState::Ambiguous => "ambiguous",
        }
    }
}

/// The queue of reports on disk, oldest (lowest sequence) first. Owned by the agent's main loop.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    limits: SpoolLimits,
    entries: BTreeMap<u64, Entry>,
    total_bytes: u64,
    /// Reports dropped and not yet counted in a spooled report; persisted in [`DROPPED_FILE`].
    dropped_unreported: u64,
    /// Corrupt files found since the agent started, for the logs and tests.
    corrupt_files: u64,
    /// The report handed out by [`Spool::front`] and not yet acknowledged, discarded or
    /// released: the bounds never drop it, or a report the collector then stores would be
    /// counted both as stored and as dropped.
    in_flight: Option<u64>,
    /// Cumulative counts, persisted in [`COUNTS_FILE`].
    counts: DeliveryCounts,
}

impl Spool {
    /// Opens the spool under `state_dir`, creating it if needed. Every queued file is checked;
    /// unreadable ones are moved aside and counted as dropped, leftovers of an interrupted
    /// write are removed, and the bounds are applied.
    pub fn open(
        state_dir: &Path,
        limits: SpoolLimits,
        now: SystemTime,
    ) -> Result<Spool, SpoolError> {
        let dir = state_dir.join(SPOOL_DIR);
        std::fs::create_dir_all(&dir).map_err(|source| SpoolError::CreateDir {
            path: dir.clone(),
            source,
        })?;
        let list_error = |source| SpoolError::List {
            path: dir.clone(),
            source,
        };
        let mut spool = Spool {
            dropped_unreported: read_dropped(&dir.join(DROPPED_FILE)),
            counts: read_counts(&dir.join(COUNTS_FILE)),
            dir: dir.clone(),
            limits,
            entries: BTreeMap::new(),
            total_bytes: 0,
            corrupt_files: 0,
            in_flight: None,
        };
        let attempt = read_attempt(&dir.join(ATTEMPT_FILE));
        let mut found = Vec::new();
        for item in std::fs::read_dir(&dir).map_err(list_error)? {
            let path = item.map_err(list_error)?.path();
            let name = path
                .file_name()
                .and_then(|name| name.to_str())
                .unwrap_or_default();
            if name.ends_with(".tmp") {
                // A write interrupted before its rename: the report was never queued.
                let _ = std::fs::remove_file(&path);
                continue;
            }
            if let Some(sequence) = parse_file_name(name) {
                found.push((sequence, path));
            }
        }
        found.sort();
        let mut restored = 0;
        for (sequence, path) in found {
            let attempted = attempt.map(|(attempted, _)| attempted) == Some(sequence);
            match std::fs::read(&path) {
                Ok(bytes) => match decode_file(&bytes) {
                    Ok((spooled_ms, report)) => {
                        spool.insert(sequence, bytes.len() as u64, spooled_ms, &report);
                        if let (true, Some(entry)) = (attempted, spool.entries.get_mut(&sequence)) {
                            entry.ambiguous_delivery = true;
                        }
                        restored += 1;
                    }
                    Err(reason) => spool.quarantine(&path, &reason, attempted)?,
                },
                Err(error) => {
                    warn!(file = %path.display(), %error, "cannot read a spooled report, dropping it");
                    spool.count_dropped(1, u64::from(attempted), 0, 0)?;
                }
            }
        }
        match attempt {
            Some((sequence, AttemptState::InFlight)) if spool.entries.contains_key(&sequence) => {
                // The agent stopped while this report was being delivered: that delivery ended
                // without an answer. Recorded as such, so a second restart does not count it
                // again.
                info!(
                    sequence,
                    "the agent stopped while delivering this report: the collector may have \
                     stored it, it is sent again"
                );
                spool.write_attempt(sequence, AttemptState::Ambiguous);
                spool.counts.ambiguous_deliveries += 1;
            }
            Some((sequence, _)) if spool.entries.contains_key(&sequence) => {}
            // Acknowledged, or dropped and counted, before the agent stopped.
            Some(_) => spool.clear_attempt(),
            None => {}
        }
        spool.persist_counts()?;
        if restored > 0 {
            info!(
                reports = restored,
                bytes = spool.total_bytes,
                dir = %dir.display(),
                "reports waiting in the spool from before the restart"
            );
        }
        spool.enforce_limits(now)?;
        Ok(spool)
    }

    /// Reports queued.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Total size of the queued files, headers included.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Corrupt files moved aside since the spool was opened.
    pub fn corrupt_files(&self) -> u64 {
        self.corrupt_files
    }

    /// Dropped reports that the next pushed report will carry.
    pub fn dropped_unreported(&self) -> u64 {
        self.dropped_unreported
    }

    /// The cumulative delivery counts.
    pub fn counts(&self) -> DeliveryCounts {
        self.counts
    }

    /// The lowest queued sequence.
    pub fn first_sequence(&self) -> Option<u64> {
        self.entries.keys().next().copied()
    }

    /// Queues a report durably. Its `dropped_reports` is set to the count of reports dropped
    /// since the last pushed one (which resets); then the bounds are applied, dropping the
    /// oldest reports (never this one).
    pub fn push(&mut self, mut report: ReportRequest, now: SystemTime) -> Result<(), SpoolError> {
        report.dropped_reports = report
            .dropped_reports
            .saturating_add(self.dropped_unreported);
        let spooled_ms = unix_ms(now);
        let bytes = encode_file(&report, spooled_ms);
        let path = self.path_of(report.sequence);
        if let Err(source) = write_file_atomically(&path, &bytes) {
            // The report is lost: count it, so the collector still learns of it.
            let _ = self.count_dropped(1, 0, 0, 0);
            return Err(SpoolError::Write { path, source });
        }
        if let Some(previous) = self.entries.remove(&report.sequence) {
            self.total_bytes -= previous.bytes;
        }
        self.insert(report.sequence, bytes.len() as u64, spooled_ms, &report);
        if self.dropped_unreported > 0 {
            self.dropped_unreported = 0;
            self.persist_dropped()?;
        }
        self.enforce_limits(now)
    }

    /// The oldest queued report, read from disk, to be delivered: `spool/attempt` names it as
    /// in flight until it is acknowledged, discarded or released. A file found corrupt is moved
    /// aside (counted as dropped) and the next one is tried.
    pub fn front(&mut self) -> Result<Option<ReportRequest>, SpoolError> {
        while let Some(sequence) = self.first_sequence() {
            let path = self.path_of(sequence);
            let ambiguous = self.had_ambiguous_delivery(sequence);
            match std::fs::read(&path) {
                Ok(bytes) => match decode_file(&bytes) {
                    Ok((_, report)) => {
                        self.in_flight = Some(sequence);
                        self.write_attempt(sequence, AttemptState::InFlight);
                        return Ok(Some(report));
                    }
                    Err(reason) => {
                        self.forget(sequence);
                        self.quarantine(&path, &reason, ambiguous)?;
                    }
                },
                Err(error) => {
                    warn!(file = %path.display(), %error, "cannot read a spooled report, dropping it");
                    self.forget(sequence);
                    self.count_dropped(1, u64::from(ambiguous), 0, 0)?;
                }
            }
        }
        Ok(None)
    }

    /// Removes an acknowledged report. The directory is not synced: a removal lost in a crash
    /// only makes the report be sent again, which the collector acknowledges as a duplicate.
    /// A file that cannot be removed is still forgotten: sent again after a restart, the
    /// collector acknowledges it as a duplicate. (`spool/attempt` may still name it: a
    /// sequence no longer queued means nothing.)
    pub fn acknowledge(&mut self, sequence: u64) -> Result<(), SpoolError> {
        self.in_flight = None;
        self.forget(sequence);
        self.remove_file(sequence)
    }

    /// Records that `attempts` deliveries of report `sequence` ended without an answer: it may
    /// be stored, and if it is dropped later, it is counted among the reports dropped after an
    /// ambiguous delivery. Call it before acknowledging, discarding or releasing the report.
    pub fn record_ambiguous_delivery(
        &mut self,
        sequence: u64,
        attempts: u32,
    ) -> Result<(), SpoolError> {
        if attempts == 0 {
            return Ok(());
        }
        if let Some(entry) = self.entries.get_mut(&sequence) {
            entry.ambiguous_delivery = true;
            // The mark first: a crash before the count is saved undercounts a delivery, never
            // loses which report may be stored.
            self.write_attempt(sequence, AttemptState::Ambiguous);
        }
        self.counts.ambiguous_deliveries += u64::from(attempts);
        self.persist_counts()
    }

    /// The report from [`Spool::front`] was not delivered (it stays queued): from now on the
    /// bounds may drop it like any other until it is handed out again.
    pub fn release(&mut self) {
        if let Some(sequence) = self.in_flight.take() {
            if self.had_ambiguous_delivery(sequence) {
                self.write_attempt(sequence, AttemptState::Ambiguous);
            } else {
                // Not delivered and never ambiguously: nothing of it can be stored.
                self.clear_attempt();
            }
        }
    }

    /// Removes a report the collector refused for good, counting it as dropped.
    pub fn discard(&mut self, sequence: u64) -> Result<(), SpoolError> {
        self.in_flight = None;
        let entry = self.entries.get(&sequence).copied();
        self.forget(sequence);
        let ambiguous = entry.is_some_and(|entry| entry.ambiguous_delivery);
        let carried = entry.map_or(0, |entry| entry.carried_dropped);
        self.count_dropped(
            1,
            u64::from(ambiguous),
            carried,
            if ambiguous { carried } else { 0 },
        )?;
        self.remove_file(sequence)
    }

    /// Whether a delivery of queued report `sequence` ended without an answer.
    pub fn had_ambiguous_delivery(&self, sequence: u64) -> bool {
        self.entries
            .get(&sequence)
            .is_some_and(|entry| entry.ambiguous_delivery)
    }

    /// Re-stamps every queued report, oldest first, after the collector said this agent id
    /// belongs to another machine: `restamp` gives each its new agent id and sequence number
    /// (restarting at 1) and may change more (the first takes the full inventory). The reports
    /// describe this machine, so they are kept rather than dropped.
    ///
    /// New numbers restart at 1, so each is at most the old one: renaming in ascending order
    /// never overwrites a file still to be renamed (checked all the same).
    pub fn renumber<E>(
        &mut self,
        mut restamp: impl FnMut(&mut ReportRequest) -> Result<(), E>,
    ) -> Result<(), RenumberError<E>> {
        // The collector answered (with the conflict), and sequence numbers restart: the mark
        // would name a report that is not the one it was about.
        self.in_flight = None;
        self.clear_attempt();
        let sequences: Vec<u64> = self.entries.keys().copied().collect();
        for old in sequences {
            let path = self.path_of(old);
            let ambiguous = self.had_ambiguous_delivery(old);
            let bytes = match std::fs::read(&path) {
                Ok(bytes) => bytes,
                Err(error) => {
                    warn!(file = %path.display(), %error, "cannot read a spooled report, dropping it");
                    self.forget(old);
                    self.count_dropped(1, u64::from(ambiguous), 0, 0)?;
                    continue;
                }
            };
            let (spooled_ms, mut report) = match decode_file(&bytes) {
                Ok(decoded) => decoded,
                Err(reason) => {
                    self.forget(old);
                    self.quarantine(&path, &reason, ambiguous)?;
                    continue;
                }
            };
            restamp(&mut report).map_err(RenumberError::Restamp)?;
            let new = report.sequence;
            if new != old
                && self
                    .entries
                    .range(old + 1..)
                    .any(|(queued, _)| *queued == new)
            {
                return Err(SpoolError::Renumber {
                    path,
                    sequence: new,
                }
                .into());
            }
            let bytes = encode_file(&report, spooled_ms);
            let new_path = self.path_of(new);
            write_file_atomically(&new_path, &bytes).map_err(|source| SpoolError::Write {
                path: new_path,
                source,
            })?;
            self.forget(old);
            if new != old {
                remove_if_present(&path)?;
            }
            self.insert(new, bytes.len() as u64, spooled_ms, &report);
        }
        Ok(())
    }

    fn insert(&mut self, sequence: u64, bytes: u64, spooled_ms: u64, report: &ReportRequest) {
        self.total_bytes += bytes;
        self.entries.insert(
            sequence,
            Entry {
                bytes,
                spooled_ms,
                carried_dropped: report.dropped_reports,
                ambiguous_delivery: false,
            },
        );
    }

    fn forget(&mut self, sequence: u64) {
        if let Some(entry) = self.entries.remove(&sequence) {
            self.total_bytes -= entry.bytes;
        }
    }

    /// Drops the oldest reports while the spool is over its size, and every report older than
    /// its age; the newest report always stays.
    fn enforce_limits(&mut self, now: SystemTime) -> Result<(), SpoolError> {
        let now_ms = unix_ms(now);
        let max_age_ms = u64::try_from(self.limits.max_age.as_millis()).unwrap_or(u64::MAX);
        let mut dropped = 0;
        let mut maybe_stored = 0;
        let mut carried = 0;
        let mut carried_maybe_stored = 0;
        while self.entries.len() > 1 {
            let in_flight = self.in_flight;
            let Some((&sequence, &entry)) = self
                .entries
                .iter()
                .find(|(sequence, _)| Some(**sequence) != in_flight)
            else {
                break;
            };
            // The newest report always stays.
            if self.entries.keys().next_back() == Some(&sequence) {
                break;
            }
            let too_big = self.total_bytes > self.limits.max_bytes;
            let too_old = now_ms.saturating_sub(entry.spooled_ms) > max_age_ms;
            if !too_big && !too_old {
                break;
            }
            self.remove_file(sequence)?;
            self.forget(sequence);
            dropped += 1;
            carried += entry.carried_dropped;
            if entry.ambiguous_delivery {
                maybe_stored += 1;
                carried_maybe_stored += entry.carried_dropped;
                warn!(
                    sequence,
                    "dropping a report whose delivery ended without an answer: the collector \
                     may have stored it, it is counted as dropped all the same"
                );
            }
        }
        if dropped > 0 {
            warn!(
                dropped,
                maybe_stored,
                max_bytes = self.limits.max_bytes,
                max_age = %humantime::format_duration(self.limits.max_age),
                "the spool is full or holds reports that are too old: dropped the oldest"
            );
            self.count_dropped(dropped, maybe_stored, carried, carried_maybe_stored)?;
        }
        Ok(())
    }

    /// Moves a corrupt file to `spool/corrupt/` (or deletes it when that holds enough) and
    /// counts it as a dropped report (`maybe_stored` after an ambiguous delivery).
    fn quarantine(
        &mut self,
        path: &Path,
        reason: &CorruptReason,
        maybe_stored: bool,
    ) -> Result<(), SpoolError> {
        self.corrupt_files += 1;
        let corrupt_dir = self.dir.join(CORRUPT_DIR);
        let kept = std::fs::read_dir(&corrupt_dir).map_or(0, Iterator::count);
        let moved_to = if kept < MAX_CORRUPT_FILES {
            let target = corrupt_dir.join(path.file_name().unwrap_or_default());
            std::fs::create_dir_all(&corrupt_dir)
                .and_then(|()| std::fs::rename(path, &target))
                .ok()
                .map(|()| target)
        } else {
            None
        };
        match &moved_to {
            Some(target) => warn!(
                file = %path.display(),
                moved_to = %target.display(),
                %reason,
                "corrupt spool file moved aside, its report is counted as dropped"
            ),
            None => {
                remove_if_present(path)?;
                warn!(
                    file = %path.display(),
                    %reason,
                    "corrupt spool file deleted (spool/corrupt is full), its report is counted \
                     as dropped"
                );
            }
        }
        self.count_dropped(1, u64::from(maybe_stored), 0, 0)
    }

    /// Counts `reports` that left the spool unacknowledged, `maybe_stored` of them after an
    /// ambiguous delivery; `carried` are drop counts that rode in them, owed to the collector
    /// again (not new drops), `carried_maybe_stored` of them in the `maybe_stored` reports.
    fn count_dropped(
        &mut self,
        reports: u64,
        maybe_stored: u64,
        carried: u64,
        carried_maybe_stored: u64,
    ) -> Result<(), SpoolError> {
        self.dropped_unreported = self
            .dropped_unreported
            .saturating_add(reports)
            .saturating_add(carried);
        self.counts.dropped_maybe_stored += maybe_stored;
        self.counts.recounted_after_ambiguous_delivery += carried_maybe_stored;
        self.counts.dropped_not_stored += reports - maybe_stored;
        self.persist_dropped()?;
        self.persist_counts()
    }

    fn persist_counts(&self) -> Result<(), SpoolError> {
        let path = self.dir.join(COUNTS_FILE);
        write_file_atomically(&path, self.counts.to_prometheus_text().as_bytes())
            .map_err(|source| SpoolError::Write { path, source })
    }

    /// Names report `sequence` in `spool/attempt`. Renamed into place (a killed agent leaves
    /// the old or the new content) but not synced: it is written for every delivery, and a
    /// power cut losing it only makes one dropped report count as certainly not stored.
    /// A failure is logged, never a reason not to deliver.
    fn write_attempt(&self, sequence: u64, state: AttemptState) {
        let path = self.dir.join(ATTEMPT_FILE);
        let temporary = self.dir.join(format!("{ATTEMPT_FILE}.tmp"));
        let written = std::fs::write(&temporary, format!("{sequence} {}\n", state.as_str()))
            .and_then(|()| std::fs::rename(&temporary, &path));
        if let Err(error) = written {
            warn!(file = %path.display(), %error, "cannot record the report being delivered");
        }
    }

    fn clear_attempt(&self) {
        let path = self.dir.join(ATTEMPT_FILE);
        if let Err(error) = remove_if_present(&path) {
            warn!(error = %crate::identity::error_chain(&error), "cannot clear the report being delivered");
        }
    }

    fn persist_dropped(&self) -> Result<(), SpoolError> {
        let path = self.dir.join(DROPPED_FILE);
        write_file_atomically(&path, format!("{}\n", self.dropped_unreported).as_bytes())
            .map_err(|source| SpoolError::Write { path, source })
    }

    fn remove_file(&self, sequence: u64) -> Result<(), SpoolError> {
        remove_if_present(&self.path_of(sequence))
    }

    fn path_of(&self, sequence: u64) -> PathBuf {
        self.dir.join(format!("{sequence:020}.{EXTENSION}"))
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Why renumbering the spool stopped.
#[derive(Debug, thiserror::Error)]
pub enum RenumberError<E> {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("failed to re-stamp a spooled report")]
    Restamp(#[source] E),
}

fn remove_if_present(path: &Path) -> Result<(), SpoolError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(SpoolError::Remove {
            path: path.to_owned(),
            source,
        }),
    }
}

/// `00000000000000000042.report` → 42.
fn parse_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".report")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The persisted delivery counts; an unreadable file counts as none (and says so).
fn read_counts(path: &Path) -> DeliveryCounts {
    match std::fs::read_to_string(path) {
        Ok(text) => DeliveryCounts::parse(&text).unwrap_or_else(|error| {
            warn!(file = %path.display(), %error, "unreadable delivery counts, starting from 0");
            DeliveryCounts::default()
        }),
        Err(_) => DeliveryCounts::default(),
    }
}

/// What `spool/attempt` says: `<sequence> in_flight` or `<sequence> ambiguous`. Anything
/// else is logged and ignored (the report it may have named counts as never delivered).
fn read_attempt(path: &Path) -> Option<(u64, AttemptState)> {
    let text = std::fs::read_to_string(path).ok()?;
    let parsed = text.trim().split_once(' ').and_then(|(sequence, state)| {
        let state = match state {
            "in_flight" => AttemptState::InFlight,
            "ambiguous" => AttemptState::Ambiguous,
            _ => return None,
        };
        Some((sequence.parse().ok()?, state))
    });
    if parsed.is_none() {
        warn!(file = %path.display(), content = %text.trim(), "unreadable delivery attempt record, ignored");
    }
    parsed
}

/// The persisted count of dropped reports; an unreadable file counts as none (and says so).
fn read_dropped(path: &Path) -> u64 {
    match std::fs::read_to_string(path) {
        Ok(text) => text.trim().parse().unwrap_or_else(|_| {
            warn!(file = %path.display(), content = %text.trim(), "unreadable dropped-report count, starting from 0");
            0
        }),
        Err(_) => 0,
    }
}

fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use estate_proto::v1::{CheckResult, HostIdentity};

    const LARGE: SpoolLimits = SpoolLimits {
        max_bytes: 1 << 30,
        max_age: Duration::from_secs(7 * 24 * 3600),
    };

    /// Reports older than a minute are dropped (all but the newest).
    const MINUTE_OLD_AT_MOST: SpoolLimits = SpoolLimits {
        max_age: Duration::from_secs(60),
        ..LARGE
    };

    fn report(sequence: u64) -> ReportRequest {
        ReportRequest {
            identity: Some(HostIdentity {
                agent_id: "a".into(),
                hostname: "web1".into(),
                ..Default::default()
            }),
            sequence,
            checks: vec![CheckResult {
                check: format!("check-{sequence}"),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + seconds)
    }

    fn drain(spool: &mut Spool) -> Vec<u64> {
        let mut sent = Vec::new();
        while let Some(report) = spool.front().unwrap() {
            sent.push(report.sequence);
            spool.acknowledge(report.sequence).unwrap();
        }
        sent
    }

    #[test]
    fn a_file_round_trips_and_every_damage_is_named() {
        let bytes = encode_file(&report(7), 1234);
        assert_eq!(decode_file(&bytes).unwrap(), (1234, report(7)));

        let check = |bytes: &[u8], expected: &str| {
            assert_eq!(decode_file(bytes).unwrap_err().to_string(), expected);
        };
        check(&bytes[..10], "10 bytes, shorter than the 28-byte header");
        check(
            &bytes[..bytes.len() - 1],
            &format!(
                "the header announces {} bytes of report, the file holds {}",
                bytes.len() - HEADER_BYTES,
                bytes.len() - HEADER_BYTES - 1
            ),
        );
        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 1;
        check(&flipped, "checksum mismatch");
        let mut magic = bytes.clone();
        magic[0] = b'X';
        check(&magic, "wrong magic [58, 53, 50, 4c], expected `ESPL`");
        let mut version = bytes.clone();
        version[4] = 9;
        check(&version, "unknown format version 9, expected 1");
    }

    #[test]
    fn reports_survive_a_restart_and_come_back_in_sequence_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), LARGE, at(0)).unwrap();
        for sequence in [3, 1, 2] {
            spool.push(report(sequence), at(sequence)).unwrap();
        }
        // A write interrupted before its rename leaves a temporary file: not a report.
        std::fs::write(
            dir.path().join("spool/00000000000000000009.report.tmp"),
            b"x",
        )
        .unwrap();
        drop(spool);

        let mut spool = Spool::open(dir.path(), LARGE, at(10)).unwrap();
        assert_eq!(spool.len(), 3);
        assert!(
            !dir.path()
                .join("spool/00000000000000000009.report.tmp")
                .exists()
        );
        let first = spool.front().unwrap().unwrap();
        assert_eq!(first, report(1));
        assert_eq!(drain(&mut spool), [1, 2, 3]);
        assert_eq!(spool.total_bytes(), 0);
        assert_eq!(Spool::open(dir.path(), LARGE, at(11)).unwrap().len(), 0);
    }

    #[test]
    fn the_size_bound_drops_the_oldest_and_the_next_report_carries_the_count() {
        let dir = tempfile::tempdir().unwrap();
        let one = encode_file(&report(1), 0).len() as u64;
        // Room for three reports, whatever the few bytes of a carried count.
        let limits = SpoolLimits {
            max_bytes: one * 3 + 10,
            ..LARGE
        };
        let mut spool = Spool::open(dir.path(), limits, at(0)).unwrap();
        for sequence in 1..=4 {
            spool.push(report(sequence), at(sequence)).unwrap();
        }
        assert_eq!(spool.len(), 3);
        assert_eq!(spool.first_sequence(), Some(2));
        assert_eq!(spool.dropped_unreported(), 1);
        drop(spool);
        // The count survives a restart until a report carries it.
        let mut spool = Spool::open(dir.path(), limits, at(5)).unwrap();
        assert_eq!(spool.dropped_unreported(), 1);
        spool.push(report(5), at(5)).unwrap();
        // 5 carries report 1; pushing it dropped report 2, counted for the next push.
        assert_eq!(spool.dropped_unreported(), 1);
        let sent: Vec<(u64, u64)> = std::iter::from_fn(|| {
            let report = spool.front().unwrap()?;
            spool.acknowledge(report.sequence).unwrap();
            Some((report.sequence, report.dropped_reports))
        })
        .collect();
        assert_eq!(sent, [(3, 0), (4, 0), (5, 1)]);
    }

    #[test]
    fn dropping_a_report_that_carried_a_count_keeps_that_count() {
        let dir = tempfile::tempdir().unwrap();
        let one = encode_file(&report(1), 0).len() as u64;
        let limits = SpoolLimits {
            max_bytes: one * 2 + 4,
            ..LARGE
        };
        let mut spool = Spool::open(dir.path(), limits, at(0)).unwrap();
        // Each push beyond the second drops the oldest, which from 4 on carries a count.
        for sequence in 1..=6 {
            spool.push(report(sequence), at(sequence)).unwrap();
        }
        let mut carried = 0;
        while let Some(report) = spool.front().unwrap() {
            spool.acknowledge(report.sequence).unwrap();
            carried += report.dropped_reports;
        }
        assert_eq!(carried + spool.dropped_unreported(), 4, "reports 1 to 4");
    }

    #[test]
    fn the_age_bound_drops_old_reports_but_never_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let limits = MINUTE_OLD_AT_MOST;
        let mut spool = Spool::open(dir.path(), limits, at(0)).unwrap();
        spool.push(report(1), at(0)).unwrap();
        spool.push(report(2), at(30)).unwrap();
        spool.push(report(3), at(100)).unwrap();
        assert_eq!(spool.first_sequence(), Some(3));
        assert_eq!(spool.dropped_unreported(), 2);
        drop(spool);
        let spool = Spool::open(dir.path(), limits, at(1000)).unwrap();
        assert_eq!(spool.len(), 1, "the newest stays even when old");
    }

    #[test]
    fn the_report_being_sent_is_never_dropped_by_the_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let limits = MINUTE_OLD_AT_MOST;
        let mut spool = Spool::open(dir.path(), limits, at(0)).unwrap();
        spool.push(report(1), at(0)).unwrap();
        spool.push(report(2), at(10)).unwrap();
        assert_eq!(spool.front().unwrap().unwrap().sequence, 1);
        // Report 1 is in flight when the age bound passes over it and report 2.
        spool.push(report(3), at(100)).unwrap();
        assert_eq!(
            spool.first_sequence(),
            Some(1),
            "the report in flight stays"
        );
        assert_eq!(spool.len(), 2, "report 2 was dropped instead");
        assert_eq!(spool.dropped_unreported(), 1);
        // Acknowledged, it is removed and never counted as dropped.
        spool.acknowledge(1).unwrap();
        assert_eq!(spool.dropped_unreported(), 1);
        // Released after a failed delivery, the bounds may drop it again.
        spool.push(report(4), at(150)).unwrap();
        assert_eq!(spool.front().unwrap().unwrap().sequence, 3);
        spool.release();
        spool.push(report(5), at(300)).unwrap();
        assert_eq!(spool.first_sequence(), Some(5));
        assert_eq!(spool.dropped_unreported(), 3);
    }

    fn counts(ambiguous_deliveries: u64, not_stored: u64, maybe_stored: u64) -> DeliveryCounts {
        DeliveryCounts {
            ambiguous_deliveries,
            dropped_not_stored: not_stored,
            dropped_maybe_stored: maybe_stored,
            recounted_after_ambiguous_delivery: 0,
        }
    }

    #[test]
    fn a_report_dropped_after_an_ambiguous_delivery_is_counted_apart() {
        let dir = tempfile::tempdir().unwrap();
        let limits = MINUTE_OLD_AT_MOST;
        let mut spool = Spool::open(dir.path(), limits, at(0)).unwrap();
        spool.push(report(1), at(0)).unwrap();
        spool.push(report(2), at(1)).unwrap();
        // Report 1: one delivery refused at connect, then one that got no answer.
        assert_eq!(spool.front().unwrap().unwrap().sequence, 1);
        spool.release();
        assert!(!spool.had_ambiguous_delivery(1));
        assert_eq!(spool.front().unwrap().unwrap().sequence, 1);
        spool.record_ambiguous_delivery(1, 1).unwrap();
        spool.release();
        assert!(spool.had_ambiguous_delivery(1));
        assert_eq!(spool.counts(), counts(1, 0, 0));
        // Both age out: 1 may be stored, 2 was never sent.
        spool.push(report(3), at(100)).unwrap();
        assert_eq!(spool.first_sequence(), Some(3));
        assert_eq!(spool.counts(), counts(1, 1, 1));
        assert_eq!(spool.dropped_unreported(), 2, "the collector hears of both");
        // The counts survive a restart, in the Prometheus text format.
        let text = std::fs::read_to_string(dir.path().join("spool").join(COUNTS_FILE)).unwrap();
        assert!(
            text.contains(
                "estate_agent_reports_dropped_total{after_ambiguous_delivery=\"true\"} 1\n"
            ),
            "{text}"
        );
        drop(spool);
        let spool = Spool::open(dir.path(), limits, at(101)).unwrap();
        assert_eq!(spool.counts(), counts(1, 1, 1));
    }

    #[test]
    fn drop_counts_carried_by_a_report_dropped_after_an_ambiguous_delivery_are_recounted() {
        let dir = tempfile::tempdir().unwrap();
        let limits = MINUTE_OLD_AT_MOST;
        let mut spool = Spool::open(dir.path(), limits, at(0)).unwrap();
        spool.push(report(1), at(0)).unwrap();
        spool.discard(1).unwrap();
        // Report 2 carries the drop of report 1, is perhaps stored, then ages out.
        spool.push(report(2), at(1)).unwrap();
        assert_eq!(spool.front().unwrap().unwrap().dropped_reports, 1);
        spool.record_ambiguous_delivery(2, 1).unwrap();
        spool.release();
        spool.push(report(3), at(100)).unwrap();
        assert_eq!(
            spool.counts(),
            DeliveryCounts {
                recounted_after_ambiguous_delivery: 1,
                ..counts(1, 1, 1)
            }
        );
        assert_eq!(
            spool.dropped_unreported(),
            2,
            "report 2, and report 1 again: the collector may now count report 1 twice"
        );
    }

    #[test]
    fn a_delivery_under_way_when_the_agent_stops_is_ambiguous_once() {
        let dir = tempfile::tempdir().unwrap();
        let limits = MINUTE_OLD_AT_MOST;
        let mut spool = Spool::open(dir.path(), limits, at(0)).unwrap();
        spool.push(report(1), at(0)).unwrap();
        spool.push(report(2), at(1)).unwrap();
        assert_eq!(spool.front().unwrap().unwrap().sequence, 1);
        // The agent stops (or is killed) before the collector answers.
        drop(spool);
        let spool = Spool::open(dir.path(), limits, at(10)).unwrap();
        assert!(spool.had_ambiguous_delivery(1));
        assert!(!spool.had_ambiguous_delivery(2));
        assert_eq!(spool.counts(), counts(1, 0, 0));
        drop(spool);
        // A second restart does not count that delivery again; the age bound drops it as
        // perhaps stored.
        let spool = Spool::open(dir.path(), limits, at(1000)).unwrap();
        assert_eq!(spool.first_sequence(), Some(2));
        assert_eq!(spool.counts(), counts(1, 0, 1));
    }

    #[test]
    fn an_acknowledged_or_released_report_leaves_no_ambiguity_behind() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), LARGE, at(0)).unwrap();
        for sequence in 1..=3 {
            spool.push(report(sequence), at(sequence)).unwrap();
        }
        // 1 is acknowledged after a delivery without an answer (a duplicate the second time).
        assert_eq!(spool.front().unwrap().unwrap().sequence, 1);
        spool.record_ambiguous_delivery(1, 2).unwrap();
        spool.acknowledge(1).unwrap();
        // 2 was refused at connect: certainly not stored.
        assert_eq!(spool.front().unwrap().unwrap().sequence, 2);
        spool.release();
        assert!(!dir.path().join("spool").join(ATTEMPT_FILE).exists());
        drop(spool);
        let mut spool = Spool::open(dir.path(), LARGE, at(10)).unwrap();
        assert!(!spool.had_ambiguous_delivery(2));
        assert_eq!(spool.counts(), counts(2, 0, 0));
        // Refused for good after an ambiguous delivery: counted as perhaps stored.
        assert_eq!(spool.front().unwrap().unwrap().sequence, 2);
        spool.record_ambiguous_delivery(2, 1).unwrap();
        spool.release();
        assert_eq!(spool.front().unwrap().unwrap().sequence, 2);
        spool.discard(2).unwrap();
        assert_eq!(spool.counts(), counts(3, 0, 1));
        // Renumbering forgets the mark: sequence numbers restart and would name another report.
        assert_eq!(spool.front().unwrap().unwrap().sequence, 3);
        spool.record_ambiguous_delivery(3, 1).unwrap();
        spool
            .renumber(|report| {
                report.sequence = 1;
                Ok::<_, std::io::Error>(())
            })
            .unwrap();
        assert!(!spool.had_ambiguous_delivery(1));
        assert!(!dir.path().join("spool").join(ATTEMPT_FILE).exists());
    }

    #[test]
    fn delivery_counts_round_trip_and_bad_lines_are_named() {
        let sample = DeliveryCounts {
            recounted_after_ambiguous_delivery: 3,
            ..counts(7, 5, 2)
        };
        assert_eq!(
            DeliveryCounts::parse(&sample.to_prometheus_text()).unwrap(),
            sample
        );
        assert_eq!(
            DeliveryCounts::parse("estate_agent_report_deliveries_ambiguous_total x\n")
                .unwrap_err(),
            "unexpected line `estate_agent_report_deliveries_ambiguous_total x`"
        );
        // Unreadable files (counts, attempt record) are ignored, never fatal.
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("spool")).unwrap();
        std::fs::write(dir.path().join("spool").join(COUNTS_FILE), "garbage").unwrap();
        std::fs::write(dir.path().join("spool").join(ATTEMPT_FILE), "1 maybe").unwrap();
        let spool = Spool::open(dir.path(), LARGE, at(0)).unwrap();
        assert_eq!(spool.counts(), DeliveryCounts::default());
    }

    #[test]
    fn corrupt_and_truncated_files_are_moved_aside_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), LARGE, at(0)).unwrap();
        for sequence in 1..=4 {
            spool.push(report(sequence), at(sequence)).unwrap();
        }
        drop(spool);
        let file = |sequence: u64| dir.path().join(format!("spool/{sequence:020}.report"));
        // Truncated (a crash without the atomic write would leave this) and bit-flipped.
        let bytes = std::fs::read(file(1)).unwrap();
        std::fs::write(file(1), &bytes[..bytes.len() / 2]).unwrap();
        let mut bytes = std::fs::read(file(3)).unwrap();
        bytes[HEADER_BYTES + 2] ^= 0x40;
        std::fs::write(file(3), &bytes).unwrap();

        let mut spool = Spool::open(dir.path(), LARGE, at(10)).unwrap();
        assert_eq!(spool.corrupt_files(), 2);
        assert_eq!(spool.dropped_unreported(), 2);
        assert!(
            dir.path()
                .join("spool/corrupt/00000000000000000001.report")
                .exists()
        );
        assert!(
            dir.path()
                .join("spool/corrupt/00000000000000000003.report")
                .exists()
        );
        // Damage found while sending is handled the same way.
        std::fs::write(file(2), b"garbage").unwrap();
        assert_eq!(drain(&mut spool), [4]);
        assert_eq!(spool.corrupt_files(), 3);
        assert_eq!(spool.dropped_unreported(), 3);
    }

    #[test]
    fn a_refused_report_is_discarded_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), LARGE, at(0)).unwrap();
        spool.push(report(1), at(0)).unwrap();
        spool.push(report(2), at(0)).unwrap();
        spool.discard(1).unwrap();
        assert_eq!(spool.dropped_unreported(), 1);
        assert_eq!(drain(&mut spool), [2]);
    }

    #[test]
    fn renumbering_keeps_the_order_and_takes_the_new_id() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), LARGE, at(0)).unwrap();
        for sequence in [1, 2, 5, 9] {
            spool.push(report(sequence), at(sequence)).unwrap();
        }
        let mut next = 0;
        spool
            .renumber(|report| {
                next += 1;
                report.sequence = next;
                report.identity.as_mut().unwrap().agent_id = "b".into();
                Ok::<_, std::io::Error>(())
            })
            .unwrap();
        drop(spool);
        let mut spool = Spool::open(dir.path(), LARGE, at(10)).unwrap();
        let mut seen = Vec::new();
        while let Some(report) = spool.front().unwrap() {
            assert_eq!(report.identity.as_ref().unwrap().agent_id, "b");
            seen.push((report.sequence, report.checks[0].check.clone()));
            spool.acknowledge(report.sequence).unwrap();
        }
        assert_eq!(
            seen,
            [
                (1, "check-1".to_owned()),
                (2, "check-2".to_owned()),
                (3, "check-5".to_owned()),
                (4, "check-9".to_owned())
            ]
        );
    }

    #[test]
    fn file_names_are_sequence_numbers() {
        assert_eq!(parse_file_name("00000000000000000042.report"), Some(42));
        assert_eq!(parse_file_name("42.report.tmp"), None);
        assert_eq!(parse_file_name(".report"), None);
        assert_eq!(parse_file_name("dropped"), None);
    }
}
