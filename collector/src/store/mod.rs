//! The inventory store: one [`Store`] trait, one implementation per database. Only this module
//! and its children know SQL.
//!
//! Writes arrive in batches from the [`crate::writer`] (group commit: many reports, one
//! transaction, one sync); reads serve the API and the start-up load of the host state.

mod host_page;
pub mod postgres;
mod query;
pub mod sqlite;

use crate::document::ChangeKind;
use crate::validate::ValidReport;
use estate_proto::v1::{HostVitals, Measurement};
use serde::Serialize;
use serde_json::Value;

/// A database failure. The message names the database and what was being done, and ends with
/// every cause in the chain: the PostgreSQL driver's own text is only "db error", and the
/// server's message (what a sysadmin needs) is its cause.
#[derive(Debug, thiserror::Error)]
#[error("{context}: {detail}")]
pub struct StoreError {
    pub context: String,
    /// The cause and its causes, joined with `: `.
    pub detail: String,
}

impl StoreError {
    pub fn new(
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        let source = source.into();
        StoreError {
            context: context.into(),
            detail: error_chain(source.as_ref()),
        }
    }
}

/// `error` and its causes as one line; a cause whose text its parent already holds is skipped.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        let inner_text = inner.to_string();
        if !text.contains(&inner_text) {
            text.push_str(": ");
            text.push_str(&inner_text);
        }
        cause = inner.source();
    }
    text
}

/// A validated report with the collector's clock at receipt.
#[derive(Debug, Clone)]
pub struct IncomingReport {
    pub report: ValidReport,
    pub received_ms: i64,
}

/// What the store did with one report of a batch.
#[derive(Debug, Clone)]
pub enum WriteOutcome {
    /// Stored durably. `host` is the host's record after this report; `checks` its complete
    /// set of latest check results when this report changed it.
    Stored {
        need_full_inventory: bool,
        host: Box<HostRecord>,
        checks: Option<Vec<CheckState>>,
    },
    /// This (agent id, sequence) or a later one was already stored; nothing was written.
    Duplicate,
    /// The agent id is in use by another live machine; the host was flagged, the report refused.
    IdentityConflict {
        message: String,
        host: Box<HostRecord>,
    },
}

/// Settings the store needs to decide what a report means.
#[derive(Debug, Clone, Copy)]
pub struct WritePolicy {
    /// A host not heard from for this long is stale: another machine may then take over its
    /// agent id (a replaced motherboard) without being called a clone.
    pub stale_after_ms: i64,
}

/// What the collector keeps about a host besides its inventory document: the identity, the
/// inventory facts that metrics and lists need, liveness and the latest vitals.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct HostRecord {
    pub id: String,
    pub hostname: String,
    pub fqdn: String,
    pub os_name: String,
    pub os_version: String,
    pub os_full_name: String,
    pub kernel_version: String,
    pub arch: String,
    pub vmsystem: String,
    pub manufacturer: String,
    pub model: String,
    pub chassis_type: String,
    pub serial_number: String,
    pub machine_id: String,
    pub smbios_uuid: String,
    pub primary_mac: String,
    pub agent_version: String,
    pub memory_bytes: u64,
    pub swap_bytes: u64,
    pub cpu_threads: u32,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub last_sequence: u64,
    /// Agent clock minus collector clock at receipt, in milliseconds (network delay included).
    pub clock_skew_ms: i64,
    pub identity_conflict: bool,
    pub identity_conflict_detail: String,
    pub inventory_hash: String,
    pub dropped_reports_total: u64,
    /// Reports stored for this host (duplicates not counted): with the agent's sequence and
    /// `dropped_reports_total`, it shows whether every report the agent produced arrived.
    pub reports_received_total: u64,
    pub vitals: HostVitals,
    /// The collector that stored this host's last report, when several collectors share one
    /// database (PostgreSQL); empty with SQLite, where one collector holds every host.
    pub reported_to: String,
}

/// How a filter value is matched: exactly (case-insensitive) or as a `*` glob.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ValuePattern {
    Exact(String),
    Glob(String),
}

impl ValuePattern {
    pub fn parse(text: &str) -> Self {
        if text.contains('*') {
            ValuePattern::Glob(text.to_owned())
        } else {
            ValuePattern::Exact(text.to_owned())
        }
    }
}

/// `field=value` on any inventory field, e.g. `bios.smanufacturer=Dell*`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FieldFilter {
    pub field: String,
    pub pattern: ValuePattern,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    Up,
    Stale,
}

/// A page of the host list.
#[derive(Debug, Clone, Default)]
pub struct HostQuery {
    /// Substring of the hostname or FQDN, case-insensitive.
    pub hostname: Option<String>,
    /// Substring of the OS name, version or full name, case-insensitive.
    pub os: Option<String>,
    pub liveness: Option<Liveness>,
    pub fields: Vec<FieldFilter>,
    /// Only hosts flagged for an identity conflict.
    pub identity_conflict: Option<bool>,
    /// Continue after this position (from a previous page's `next_cursor`).
    pub after: Option<HostCursor>,
    pub limit: usize,
    /// Hosts last seen before this instant are stale.
    pub stale_before_ms: i64,
}

/// Keyset position in the host list, which is ordered by hostname then id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCursor {
    pub hostname: String,
    pub id: String,
}

#[derive(Debug, Clone, Default)]
pub struct HostPage {
    pub hosts: Vec<HostRecord>,
    pub next: Option<HostCursor>,
}

/// A host with its full inventory document and latest check results.
#[derive(Debug, Clone)]
pub struct HostDetail {
    pub host: HostRecord,
    pub inventory: Option<Value>,
    pub inventory_received_ms: Option<i64>,
    pub checks: Vec<CheckState>,
}

/// One recorded inventory change.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeRecord {
    pub id: i64,
    pub at_ms: i64,
    pub field: String,
    pub kind: ChangeKind,
    pub old: Value,
    pub new: Value,
}

#[derive(Debug, Clone, Default)]
pub struct ChangeQuery {
    /// Only changes recorded at or after this instant.
    pub since_ms: Option<i64>,
    /// Continue after this change id.
    pub after_id: Option<i64>,
    pub limit: usize,
}

#[derive(Debug, Clone, Default)]
pub struct ChangePage {
    pub changes: Vec<ChangeRecord>,
    pub next_after_id: Option<i64>,
}

/// The latest result of one check target on one host.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct CheckState {
    pub host_id: String,
    pub check: String,
    pub kind: String,
    pub target: String,
    /// `pass`, `fail` or `skipped`.
    pub outcome: String,
    pub reason: String,
    /// When the current outcome began (collector clock).
    pub since_ms: i64,
    /// When this result arrived (collector clock).
    pub received_ms: i64,
    /// When the probe started (agent clock).
    pub started_ms: i64,
    pub duration_seconds: f64,
    pub measurements: Vec<Measurement>,
}

/// A change of outcome of one check target: when it started failing, when it recovered.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckEvent {
    pub id: i64,
    pub host_id: String,
    pub hostname: String,
    pub check: String,
    pub kind: String,
    pub target: String,
    pub at_ms: i64,
    /// `None` for the first result of a target.
    pub old_outcome: Option<String>,
    pub new_outcome: String,
    pub reason: String,
}

/// Filters for the latest check results.
#[derive(Debug, Clone, Default)]
pub struct CheckQuery {
    pub host_id: Option<String>,
    pub kind: Option<String>,
    pub check: Option<String>,
    pub outcome: Option<String>,
    /// Continue after this (host id, check, target).
    pub after: Option<(String, String, String)>,
    pub limit: usize,
}

#[derive(Debug, Clone, Default)]
pub struct CheckPage {
    /// Each state with its host's hostname.
    pub checks: Vec<(String, CheckState)>,
    pub next: Option<(String, String, String)>,
}

/// Filters for outcome changes, newest first.
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    pub host_id: Option<String>,
    pub kind: Option<String>,
    pub check: Option<String>,
    pub since_ms: Option<i64>,
    /// Continue with events older than this id.
    pub before_id: Option<i64>,
    pub limit: usize,
}

#[derive(Debug, Clone, Default)]
pub struct EventPage {
    pub events: Vec<CheckEvent>,
    pub next_before_id: Option<i64>,
}

/// Where a host last reported, for sharing `/metrics` between collectors on one database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostOwner {
    pub id: String,
    /// The collector id that stored the host's last report.
    pub reported_to: String,
    pub last_seen_ms: i64,
}

/// What a collector learns at each ownership refresh (see ARCHITECTURE.md, "Several
/// collectors, one database").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CollectorView {
    /// Collectors whose heartbeat is recent, this one included, sorted.
    pub live_collectors: Vec<String>,
    /// Hosts whose last report was stored (by any collector) since the requested instant.
    pub reported: Vec<HostOwner>,
}

/// A token as the store keeps it: never the secret, only its hash (`crate::tokens::hash`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// Short random id, how `token list` and `token revoke` name the token.
    pub id: String,
    pub kind: crate::tokens::TokenKind,
    /// The hostname an agent token vouches for; `None` for an enrollment secret.
    pub host: Option<String>,
    pub created_ms: i64,
    pub expires_ms: Option<i64>,
    pub revoked_ms: Option<i64>,
    /// When a report or an enrollment last presented it (updated at most once a minute).
    pub last_used_ms: Option<i64>,
    /// Enrollments an enrollment secret still allows; `None`: no limit (until it expires).
    pub uses_left: Option<u32>,
    /// The enrollment secret an agent token was exchanged for; `None` when made directly.
    pub issued_by: Option<String>,
}

impl TokenRecord {
    /// Why the token cannot be used at `now_ms`, or `None` when it can.
    pub fn unusable_at(&self, now_ms: i64) -> Option<TokenRefusal> {
        if let Some(at_ms) = self.revoked_ms {
            return Some(TokenRefusal::Revoked { at_ms });
        }
        if let Some(at_ms) = self.expires_ms.filter(|&expires| expires <= now_ms) {
            return Some(TokenRefusal::Expired { at_ms });
        }
        if self.uses_left == Some(0) {
            return Some(TokenRefusal::UsedUp);
        }
        None
    }
}

/// A token to store: made by `crate::tokens::generate`, with its metadata.
#[derive(Debug, Clone)]
pub struct NewToken {
    pub id: String,
    pub kind: crate::tokens::TokenKind,
    pub hash: String,
    pub host: Option<String>,
    pub created_ms: i64,
    pub expires_ms: Option<i64>,
    pub uses_left: Option<u32>,
}

/// Why a token is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRefusal {
    /// No token has this hash (or it is not an enrollment secret, for an exchange).
    Unknown,
    Revoked {
        at_ms: i64,
    },
    Expired {
        at_ms: i64,
    },
    /// An enrollment secret whose `--uses` are spent.
    UsedUp,
}

/// What became of an enrollment exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExchangeOutcome {
    /// The agent token was stored, and the enrollment secret's use counted.
    Issued {
        enrollment_id: String,
    },
    Refused(TokenRefusal),
}

/// A storage backend. Methods block: callers run them on a blocking thread.
pub trait Store: Send + Sync + 'static {
    /// Writes a batch of reports in one transaction and returns one outcome per report, in
    /// order. Returns only once the transaction is durable.
    fn write_batch(
        &self,
        reports: &[IncomingReport],
        policy: WritePolicy,
    ) -> Result<Vec<WriteOutcome>, StoreError>;

    /// Every host, to rebuild the in-memory state at start-up.
    fn load_hosts(&self) -> Result<Vec<HostRecord>, StoreError>;

    /// Every host's latest check results, to rebuild the in-memory state at start-up.
    fn load_checks(&self) -> Result<Vec<CheckState>, StoreError>;

    fn list_hosts(&self, query: &HostQuery) -> Result<HostPage, StoreError>;

    fn list_checks(&self, query: &CheckQuery) -> Result<CheckPage, StoreError>;

    fn list_events(&self, query: &EventQuery) -> Result<EventPage, StoreError>;

    fn host_detail(&self, id: &str) -> Result<Option<HostDetail>, StoreError>;

    /// `None` when the host does not exist.
    fn host_changes(&self, id: &str, query: &ChangeQuery)
    -> Result<Option<ChangePage>, StoreError>;

    /// Forgets a host (a decommissioned server) and everything recorded about it: inventory,
    /// changes, check results and events, in one transaction. Returns the host's last record,
    /// or `None` when there is no such host. If its agent still runs, its next report makes
    /// the host anew.
    fn delete_host(&self, id: &str) -> Result<Option<HostRecord>, StoreError>;
    /// Stores a new token (enrollment secret or agent token).
    fn create_token(&self, token: &NewToken) -> Result<(), StoreError>;

    /// Every token, oldest first.
    fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError>;

    /// Marks the token revoked at `now_ms`; a token already revoked keeps its first time.
    /// `false` when no token has this id.
    fn revoke_token(&self, id: &str, now_ms: i64) -> Result<bool, StoreError>;

    /// The token whose hash is `hash`, revoked and expired ones included.
    fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>, StoreError>;

    /// Records that the token was presented at `now_ms`.
    fn touch_token(&self, id: &str, now_ms: i64) -> Result<(), StoreError>;

    /// In one transaction: checks that `enrollment_hash` is a usable enrollment secret at
    /// `agent.created_ms`, counts one use of it, records its use and stores the agent token
    /// `agent` as issued by it.
    fn exchange_enrollment(
        &self,
        enrollment_hash: &str,
        agent: &NewToken,
    ) -> Result<ExchangeOutcome, StoreError>;

    /// Whether several collectors may share this database, each rendering the series of the
    /// hosts that report to it. `false` for SQLite: one collector renders every host.
    fn is_shared(&self) -> bool {
        false
    }

    /// Records `collector_id` as alive at `now_ms`, and returns the collectors alive since
    /// `live_since_ms` and the hosts that reported anywhere since `reported_since_ms`. A store
    /// that is not shared has one collector, which owns everything.
    fn refresh_collectors(
        &self,
        collector_id: &str,
        _now_ms: i64,
        _live_since_ms: i64,
        _reported_since_ms: i64,
    ) -> Result<CollectorView, StoreError> {
        Ok(CollectorView {
            live_collectors: vec![collector_id.to_owned()],
            reported: Vec::new(),
        })
    }

    /// The records and latest check results of the given hosts (those this collector must now
    /// render although another collector stored their last report).
    fn load_hosts_by_id(
        &self,
        ids: &[String],
    ) -> Result<(Vec<HostRecord>, Vec<CheckState>), StoreError> {
        let wanted: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
        let mut hosts = self.load_hosts()?;
        hosts.retain(|host| wanted.contains(host.id.as_str()));
        let mut checks = self.load_checks()?;
        checks.retain(|check| wanted.contains(check.host_id.as_str()));
        Ok((hosts, checks))
    }
}

#[cfg(test)]
mod tests {
    use super::StoreError;

    /// Shaped like the PostgreSQL driver's error: a bare text, the server's message as cause.
    #[derive(Debug, thiserror::Error)]
    #[error("db error")]
    struct DriverError(#[source] std::io::Error);

    #[test]
    fn a_store_error_names_every_cause() {
        let cause = std::io::Error::other("ERROR: relation \"hosts\" does not exist");
        let error = StoreError::new("failed to list hosts in `db`", DriverError(cause));
        assert_eq!(
            error.to_string(),
            "failed to list hosts in `db`: db error: ERROR: relation \"hosts\" does not exist"
        );
    }

    #[derive(Debug, thiserror::Error)]
    #[error("cannot open file: {0}")]
    struct Repeating(#[source] std::io::Error);

    #[test]
    fn a_cause_already_in_its_parents_text_is_not_repeated() {
        let error = StoreError::new(
            "failed to open database `x.db`",
            Repeating(std::io::Error::other("permission denied")),
        );
        assert_eq!(
            error.to_string(),
            "failed to open database `x.db`: cannot open file: permission denied"
        );
    }
}
