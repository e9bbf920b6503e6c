//! Validation of a report from the network: every string and every list is bounded, and the
//! identity is well formed. A rejected report names the offending field and changes nothing.
//!
//! The walk runs over the report's JSON form, so a field added to the contract is bounded
//! without touching this file; the JSON is kept and becomes the stored document.

use crate::error::ApiError;
use estate_proto::v1::ReportRequest;
use serde_json::Value;

/// Bounds applied to every report.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest string accepted in any field, in bytes, unless [`Self::long_text_fields`] says more.
    pub max_string_bytes: usize,
    /// Most items in any list unless [`Self::list_limits`] says otherwise.
    pub max_list_items: usize,
    /// Fields that may hold longer free text (reasons, messages).
    pub long_text_fields: &'static [&'static str],
    pub max_long_text_bytes: usize,
    /// Per-list item limits, by field path without indexes.
    pub list_limits: &'static [(&'static str, usize)],
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_string_bytes: 1024,
            max_list_items: 1024,
            long_text_fields: &[
                "inventory.problems.message",
                "checks.reason",
                "checks.measurements.text",
            ],
            max_long_text_bytes: 8192,
            list_limits: &[
                ("inventory.softwares", 50_000),
                ("inventory.local_users", 10_000),
                ("checks", 2_000),
                ("checks.measurements", 256),
            ],
        }
    }
}

/// A report that passed validation, with its JSON form (`inventory` becomes the stored document).
#[derive(Debug, Clone)]
pub struct ValidReport {
    pub report: ReportRequest,
    pub json: Value,
}

impl ValidReport {
    pub fn agent_id(&self) -> &str {
        self.report
            .identity
            .as_ref()
            .map(|identity| identity.agent_id.as_str())
            .unwrap_or_default()
    }
}

/// Why a report was rejected, the `reason` label of `estate_ingest_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// `identity` missing, or the agent id or hostname malformed.
    Identity,
    /// `sequence` is 0.
    Sequence,
    /// An inventory without its hash.
    InventoryHash,
    /// A string longer than its limit.
    StringTooLong,
    /// A list with more items than its limit.
    TooManyItems,
    /// The agent sends faster than its rate limit (see `crate::limits`).
    RateLimited,
    /// The agent id belongs to another live machine.
    IdentityConflict,
}

impl RejectReason {
    /// Every reason, so each label exists from the start.
    pub const ALL: [RejectReason; 7] = [
        RejectReason::Identity,
        RejectReason::Sequence,
        RejectReason::InventoryHash,
        RejectReason::StringTooLong,
        RejectReason::TooManyItems,
        RejectReason::RateLimited,
        RejectReason::IdentityConflict,
    ];

    pub fn label(self) -> &'static str {
        match self {
            RejectReason::Identity => "identity",
            RejectReason::Sequence => "sequence",
            RejectReason::InventoryHash => "inventory_hash",
            RejectReason::StringTooLong => "string_too_long",
            RejectReason::TooManyItems => "too_many_items",
            RejectReason::RateLimited => "rate_limited",
            RejectReason::IdentityConflict => "identity_conflict",
        }
    }
}

/// A rejected report: the error for the agent and the reason for the metric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: RejectReason,
    pub error: ApiError,
}

fn reject(reason: RejectReason, message: impl Into<String>) -> Rejection {
    Rejection {
        reason,
        error: ApiError::invalid(message),
    }
}

/// Longest accepted agent id; agents send a UUID (36 characters).
pub const MAX_AGENT_ID_BYTES: usize = 64;

/// Checks a report against `limits`; the error names the first offending field.
pub fn validate_report(report: ReportRequest, limits: &Limits) -> Result<ValidReport, ApiError> {
    check_report(report, limits).map_err(|rejection| rejection.error)
}

/// [`validate_report`], with the reason of a rejection for the metrics.
pub fn check_report(report: ReportRequest, limits: &Limits) -> Result<ValidReport, Rejection> {
    let Some(identity) = report.identity.as_ref() else {
        return Err(reject(RejectReason::Identity, "`identity` is required"));
    };
    validate_agent_id(&identity.agent_id)
        .map_err(|error| reject(RejectReason::Identity, error.message))?;
    if identity.hostname.trim().is_empty() {
        return Err(reject(
            RejectReason::Identity,
            "`identity.hostname` must not be empty",
        ));
    }
    if report.sequence == 0 {
        return Err(reject(
            RejectReason::Sequence,
            "`sequence` must start at 1, got `0`",
        ));
    }
    if report.inventory.is_some() && report.inventory_hash.is_empty() {
        return Err(reject(
            RejectReason::InventoryHash,
            "`inventory_hash` is required when `inventory` is sent",
        ));
    }
    let json = serde_json::to_value(&report).map_err(|error| Rejection {
        reason: RejectReason::Identity,
        error: ApiError::internal(&error),
    })?;
    let mut path = String::new();
    check_bounds(&json, &mut path, limits)?;
    Ok(ValidReport { report, json })
}

fn validate_agent_id(agent_id: &str) -> Result<(), ApiError> {
    if agent_id.is_empty() {
        return Err(ApiError::invalid("`identity.agent_id` must not be empty"));
    }
    if agent_id.len() > MAX_AGENT_ID_BYTES {
        return Err(ApiError::invalid(format!(
            "`identity.agent_id` is {} bytes long, the limit is {MAX_AGENT_ID_BYTES}",
            agent_id.len()
        )));
    }
    if let Some(bad) = agent_id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(ApiError::invalid(format!(
            "`identity.agent_id` contains `{}`; only letters, digits, `-`, `_` and `.` are allowed",
            bad.escape_default()
        )));
    }
    Ok(())
}

/// `path` is the field path without list indexes (`inventory.softwares.name`); errors add the
/// index for the reader (`inventory.softwares[12].name`).
fn check_bounds(value: &Value, path: &mut String, limits: &Limits) -> Result<(), Rejection> {
    check_bounds_at(value, path, &mut String::new(), limits)
}

fn check_bounds_at(
    value: &Value,
    path: &mut String,
    shown: &mut String,
    limits: &Limits,
) -> Result<(), Rejection> {
    match value {
        Value::String(text) => {
            let limit = if limits.long_text_fields.contains(&path.as_str()) {
                limits.max_long_text_bytes
            } else {
                limits.max_string_bytes
            };
            if text.len() > limit {
                return Err(reject(
                    RejectReason::StringTooLong,
                    format!(
                        "`{shown}` is {} bytes long, the limit is {limit}",
                        text.len()
                    ),
                ));
            }
        }
        Value::Array(items) => {
            let limit = limits
                .list_limits
                .iter()
                .find(|(name, _)| *name == path.as_str())
                .map_or(limits.max_list_items, |(_, limit)| *limit);
            if items.len() > limit {
                return Err(reject(
                    RejectReason::TooManyItems,
                    format!("`{shown}` has {} items, the limit is {limit}", items.len()),
                ));
            }
            for (index, item) in items.iter().enumerate() {
                let shown_len = shown.len();
                shown.push_str(&format!("[{index}]"));
                check_bounds_at(item, path, shown, limits)?;
                shown.truncate(shown_len);
            }
        }
        Value::Object(map) => {
            for (key, child) in map {
                let (path_len, shown_len) = (path.len(), shown.len());
                if !path.is_empty() {
                    path.push('.');
                    shown.push('.');
                }
                path.push_str(key);
                shown.push_str(key);
                check_bounds_at(child, path, shown, limits)?;
                path.truncate(path_len);
                shown.truncate(shown_len);
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use estate_proto::v1::{HostIdentity, Inventory, Software};

    fn report() -> ReportRequest {
        ReportRequest {
            identity: Some(HostIdentity {
                agent_id: "2b1c7a52-0d7e-4a4e-9a51-3d5e8f7c9b10".into(),
                hostname: "web-01".into(),
                ..Default::default()
            }),
            sequence: 1,
            ..Default::default()
        }
    }

    /// Validates `edit(report())` and compares the error message (or "ok").
    fn check(edit: impl FnOnce(&mut ReportRequest), expected: &str) {
        let mut report = report();
        edit(&mut report);
        let got = match validate_report(report, &Limits::default()) {
            Ok(_) => "ok".to_owned(),
            Err(error) => error.message,
        };
        assert_eq!(got, expected);
    }

    #[test]
    fn a_plain_report_is_valid() {
        check(|_| {}, "ok");
    }

    #[test]
    fn identity_errors_name_the_field() {
        check(|r| r.identity = None, "`identity` is required");
        check(
            |r| r.identity.as_mut().unwrap().agent_id.clear(),
            "`identity.agent_id` must not be empty",
        );
        check(
            |r| r.identity.as_mut().unwrap().agent_id = "x".repeat(65),
            "`identity.agent_id` is 65 bytes long, the limit is 64",
        );
        check(
            |r| r.identity.as_mut().unwrap().agent_id = "a/b".into(),
            "`identity.agent_id` contains `/`; only letters, digits, `-`, `_` and `.` are allowed",
        );
        check(
            |r| r.identity.as_mut().unwrap().hostname = " ".into(),
            "`identity.hostname` must not be empty",
        );
        check(|r| r.sequence = 0, "`sequence` must start at 1, got `0`");
    }

    #[test]
    fn oversized_strings_and_lists_name_the_field_with_its_index() {
        check(
            |r| {
                r.inventory_hash = "sha256:00".into();
                r.inventory = Some(Inventory {
                    softwares: vec![
                        Software::default(),
                        Software {
                            name: "n".repeat(2000),
                            ..Default::default()
                        },
                    ],
                    ..Default::default()
                });
            },
            "`inventory.softwares[1].name` is 2000 bytes long, the limit is 1024",
        );
        check(
            |r| {
                r.inventory_hash = "sha256:00".into();
                r.inventory = Some(Inventory {
                    networks: vec![Default::default(); 1025],
                    ..Default::default()
                });
            },
            "`inventory.networks` has 1025 items, the limit is 1024",
        );
        check(
            |r| r.agent_version = "v".repeat(1025),
            "`agent_version` is 1025 bytes long, the limit is 1024",
        );
    }

    #[test]
    fn an_inventory_needs_its_hash() {
        check(
            |r| r.inventory = Some(Inventory::default()),
            "`inventory_hash` is required when `inventory` is sent",
        );
    }
}
