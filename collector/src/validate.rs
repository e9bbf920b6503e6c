//! Validation of a report from the network: every string and every list is bounded, and the
//! identity is well formed. A rejected report names the offending field and changes nothing.
//!
//! The walk follows the report's serde form (the shape of its JSON), so a field added to the
//! contract is bounded without touching this file. It runs as a serializer that builds
//! nothing: a heartbeat is checked without allocating, and only an inventory is made into the
//! JSON document the store keeps.

use crate::error::ApiError;
use estate_proto::v1::ReportRequest;
use serde::ser::{self, Serialize};
use serde_json::Value;
use std::cmp::Ordering;

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

/// A report that passed validation, with its inventory's JSON form (the stored document),
/// present exactly when the report carries an inventory.
#[derive(Debug, Clone)]
pub struct ValidReport {
    pub report: ReportRequest,
    pub inventory_document: Option<Value>,
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
    check_bounds(&report, limits)?;
    let inventory_document = report.inventory.as_ref().map(crate::document::to_document);
    Ok(ValidReport {
        report,
        inventory_document,
    })
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

/// Checks every string and list of `report` against `limits`, as they appear in its JSON form.
///
/// When several fields are out of bounds, the one named is the first in the JSON form's order
/// (object keys sorted, list items by index), whatever order the fields serialize in.
fn check_bounds(report: &ReportRequest, limits: &Limits) -> Result<(), Rejection> {
    let mut walk = BoundsWalk {
        limits,
        path: String::new(),
        segments: Vec::new(),
        first: None,
    };
    if let Err(WalkFailed(message)) = report.serialize(&mut walk) {
        return Err(Rejection {
            reason: RejectReason::Identity,
            error: ApiError::internal(&message),
        });
    }
    match walk.first {
        Some(found) => Err(found.rejection),
        None => Ok(()),
    }
}

/// One step of a field path: an object key or a list index.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Segment {
    Key(KeyName),
    Index(usize),
}

/// A key as serialized: struct fields are static, map keys are made at run time.
#[derive(Debug, Clone, PartialEq, Eq)]
enum KeyName {
    Field(&'static str),
    Owned(String),
}

impl KeyName {
    fn as_str(&self) -> &str {
        match self {
            KeyName::Field(name) => name,
            KeyName::Owned(name) => name,
        }
    }
}

impl PartialOrd for KeyName {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for KeyName {
    fn cmp(&self, other: &Self) -> Ordering {
        self.as_str().cmp(other.as_str())
    }
}

/// A field out of bounds, with where it is (to keep the first one in JSON order).
struct Violation {
    segments: Vec<Segment>,
    rejection: Rejection,
}

/// A `Serialize` implementation failed; not the agent's doing.
#[derive(Debug)]
struct WalkFailed(String);

impl std::fmt::Display for WalkFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WalkFailed {}

impl ser::Error for WalkFailed {
    fn custom<T: std::fmt::Display>(message: T) -> Self {
        WalkFailed(message.to_string())
    }
}

/// The serializer that checks bounds. `path` is the field path without list indexes
/// (`inventory.softwares.name`, what the limits are keyed by); `segments` the same path with
/// indexes, from which a violation's shown name (`inventory.softwares[12].name`) is made.
struct BoundsWalk<'a> {
    limits: &'a Limits,
    path: String,
    segments: Vec<Segment>,
    first: Option<Violation>,
}

impl BoundsWalk<'_> {
    fn push_key(&mut self, key: KeyName) -> usize {
        let path_len = self.path.len();
        if !self.path.is_empty() {
            self.path.push('.');
        }
        self.path.push_str(key.as_str());
        self.segments.push(Segment::Key(key));
        path_len
    }

    fn pop_key(&mut self, path_len: usize) {
        self.path.truncate(path_len);
        self.segments.pop();
    }

    /// The path with list indexes, as the agent's operator reads it.
    fn shown(&self) -> String {
        let mut shown = String::new();
        for segment in &self.segments {
            match segment {
                Segment::Key(key) => {
                    if !shown.is_empty() {
                        shown.push('.');
                    }
                    shown.push_str(key.as_str());
                }
                Segment::Index(index) => shown.push_str(&format!("[{index}]")),
            }
        }
        shown
    }

    /// Keeps the violation at the current path if it comes before the one already found.
    fn violation(&mut self, reason: RejectReason, message: impl FnOnce(String) -> String) {
        if let Some(first) = &self.first
            && first.segments <= self.segments
        {
            return;
        }
        let shown = self.shown();
        self.first = Some(Violation {
            segments: self.segments.clone(),
            rejection: reject(reason, message(shown)),
        });
    }

    fn check_string(&mut self, length: usize) {
        let limit = if self.limits.long_text_fields.contains(&self.path.as_str()) {
            self.limits.max_long_text_bytes
        } else {
            self.limits.max_string_bytes
        };
        if length > limit {
            self.violation(RejectReason::StringTooLong, |shown| {
                format!("`{shown}` is {length} bytes long, the limit is {limit}")
            });
        }
    }

    /// Returns whether the items should be walked: a list over its limit is reported as such,
    /// not item by item.
    fn check_list(&mut self, items: usize) -> bool {
        let limit = self
            .limits
            .list_limits
            .iter()
            .find(|(name, _)| *name == self.path.as_str())
            .map_or(self.limits.max_list_items, |(_, limit)| *limit);
        if items > limit {
            self.violation(RejectReason::TooManyItems, |shown| {
                format!("`{shown}` has {items} items, the limit is {limit}")
            });
            return false;
        }
        true
    }
}

/// A list being walked; `walk_items` is false for a list already reported as too long.
struct ListWalk<'w, 'a> {
    walk: &'w mut BoundsWalk<'a>,
    next_index: usize,
    /// The length announced up front, or `None` when the serializer did not know it (checked
    /// at the end).
    announced: Option<usize>,
    walk_items: bool,
    /// For a variant's list (`{"Variant": [...]}`): the key to pop at the end.
    variant_key: Option<usize>,
}

impl<'w, 'a> ListWalk<'w, 'a> {
    fn start(walk: &'w mut BoundsWalk<'a>, len: Option<usize>, variant_key: Option<usize>) -> Self {
        let walk_items = len.is_none_or(|len| walk.check_list(len));
        ListWalk {
            walk,
            next_index: 0,
            announced: len,
            walk_items,
            variant_key,
        }
    }

    fn item<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), WalkFailed> {
        let index = self.next_index;
        self.next_index += 1;
        if !self.walk_items {
            return Ok(());
        }
        self.walk.segments.push(Segment::Index(index));
        let result = value.serialize(&mut *self.walk);
        self.walk.segments.pop();
        result
    }

    fn finish(self) -> Result<(), WalkFailed> {
        if self.announced.is_none() {
            self.walk.check_list(self.next_index);
        }
        if let Some(path_len) = self.variant_key {
            self.walk.pop_key(path_len);
        }
        Ok(())
    }
}

/// An object being walked; `variant_key` as for [`ListWalk`].
struct ObjectWalk<'w, 'a> {
    walk: &'w mut BoundsWalk<'a>,
    /// A map's key, turned into text as JSON does, waiting for its value.
    pending_key: Option<String>,
    variant_key: Option<usize>,
}

impl ObjectWalk<'_, '_> {
    fn field<T: ?Sized + Serialize>(&mut self, key: KeyName, value: &T) -> Result<(), WalkFailed> {
        let path_len = self.walk.push_key(key);
        let result = value.serialize(&mut *self.walk);
        self.walk.pop_key(path_len);
        result
    }

    fn finish(self) -> Result<(), WalkFailed> {
        if let Some(path_len) = self.variant_key {
            self.walk.pop_key(path_len);
        }
        Ok(())
    }
}

impl<'w, 'a> ser::Serializer for &'w mut BoundsWalk<'a> {
    type Ok = ();
    type Error = WalkFailed;
    type SerializeSeq = ListWalk<'w, 'a>;
    type SerializeTuple = ListWalk<'w, 'a>;
    type SerializeTupleStruct = ListWalk<'w, 'a>;
    type SerializeTupleVariant = ListWalk<'w, 'a>;
    type SerializeMap = ObjectWalk<'w, 'a>;
    type SerializeStruct = ObjectWalk<'w, 'a>;
    type SerializeStructVariant = ObjectWalk<'w, 'a>;

    fn serialize_bool(self, _: bool) -> Result<(), WalkFailed> {
        Ok(())
    }
    fn serialize_i8(self, _: i8) -> Result<(), WalkFailed> {
        Ok(())
    }
    fn serialize_i16(self, _: i16) -> Result<(), WalkFailed> {
        Ok(())
    }
    fn serialize_i32(self, _: i32) -> Result<(), WalkFailed> {
        Ok(())
    }
    fn serialize_i64(self, _: i64) -> Result<(), WalkFailed> {
        Ok(())
    }
    fn serialize_u8(self, _: u8) -> Result<(), WalkFailed> {
        Ok(())
    }
    fn serialize_u16(self, _: u16) -> Result<(), WalkFailed> {
        Ok(())
    }
    fn serialize_u32(self, _: u32) -> Result<(), WalkFailed> {
        Ok(())
    }
    fn serialize_u64(self, _: u64) -> Result<(), WalkFailed> {
        Ok(())
    }
    fn serialize_f32(self, _: f32) -> Result<(), WalkFailed> {
        Ok(())
    }
    fn serialize_f64(self, _: f64) -> Result<(), WalkFailed> {
        Ok(())
    }
    fn serialize_char(self, value: char) -> Result<(), WalkFailed> {
        self.check_string(value.len_utf8());
        Ok(())
    }
    fn serialize_str(self, value: &str) -> Result<(), WalkFailed> {
        self.check_string(value.len());
        Ok(())
    }
    /// JSON writes bytes as a list of numbers.
    fn serialize_bytes(self, value: &[u8]) -> Result<(), WalkFailed> {
        self.check_list(value.len());
        Ok(())
    }
    fn serialize_none(self) -> Result<(), WalkFailed> {
        Ok(())
    }
    fn serialize_some<T: ?Sized + Serialize>(self, value: &T) -> Result<(), WalkFailed> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), WalkFailed> {
        Ok(())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), WalkFailed> {
        Ok(())
    }
    /// JSON writes a unit variant as its name.
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<(), WalkFailed> {
        self.check_string(variant.len());
        Ok(())
    }
    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), WalkFailed> {
        value.serialize(self)
    }
    /// JSON writes `{"Variant": value}`.
    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), WalkFailed> {
        let path_len = self.push_key(KeyName::Field(variant));
        let result = value.serialize(&mut *self);
        self.pop_key(path_len);
        result
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<ListWalk<'w, 'a>, WalkFailed> {
        Ok(ListWalk::start(self, len, None))
    }
    fn serialize_tuple(self, len: usize) -> Result<ListWalk<'w, 'a>, WalkFailed> {
        Ok(ListWalk::start(self, Some(len), None))
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        len: usize,
    ) -> Result<ListWalk<'w, 'a>, WalkFailed> {
        Ok(ListWalk::start(self, Some(len), None))
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<ListWalk<'w, 'a>, WalkFailed> {
        let path_len = self.push_key(KeyName::Field(variant));
        Ok(ListWalk::start(self, Some(len), Some(path_len)))
    }
    fn serialize_map(self, _: Option<usize>) -> Result<ObjectWalk<'w, 'a>, WalkFailed> {
        Ok(ObjectWalk {
            walk: self,
            pending_key: None,
            variant_key: None,
        })
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<ObjectWalk<'w, 'a>, WalkFailed> {
        self.serialize_map(None)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<ObjectWalk<'w, 'a>, WalkFailed> {
        let path_len = self.push_key(KeyName::Field(variant));
        Ok(ObjectWalk {
            walk: self,
            pending_key: None,
            variant_key: Some(path_len),
        })
    }
}

impl ser::SerializeSeq for ListWalk<'_, '_> {
    type Ok = ();
    type Error = WalkFailed;
    fn serialize_element<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), WalkFailed> {
        self.item(value)
    }
    fn end(self) -> Result<(), WalkFailed> {
        self.finish()
    }
}

impl ser::SerializeTuple for ListWalk<'_, '_> {
    type Ok = ();
    type Error = WalkFailed;
    fn serialize_element<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), WalkFailed> {
        self.item(value)
    }
    fn end(self) -> Result<(), WalkFailed> {
        self.finish()
    }
}

impl ser::SerializeTupleStruct for ListWalk<'_, '_> {
    type Ok = ();
    type Error = WalkFailed;
    fn serialize_field<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), WalkFailed> {
        self.item(value)
    }
    fn end(self) -> Result<(), WalkFailed> {
        self.finish()
    }
}

impl ser::SerializeTupleVariant for ListWalk<'_, '_> {
    type Ok = ();
    type Error = WalkFailed;
    fn serialize_field<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), WalkFailed> {
        self.item(value)
    }
    fn end(self) -> Result<(), WalkFailed> {
        self.finish()
    }
}

impl ser::SerializeMap for ObjectWalk<'_, '_> {
    type Ok = ();
    type Error = WalkFailed;
    /// Map keys become JSON object keys: text stays text, numbers and booleans are written out;
    /// anything else cannot be a JSON key.
    fn serialize_key<T: ?Sized + Serialize>(&mut self, key: &T) -> Result<(), WalkFailed> {
        let key = match serde_json::to_value(key) {
            Ok(Value::String(text)) => text,
            Ok(value @ (Value::Number(_) | Value::Bool(_))) => value.to_string(),
            Ok(_) => return Err(WalkFailed("a map key is not text".to_owned())),
            Err(error) => return Err(WalkFailed(error.to_string())),
        };
        self.pending_key = Some(key);
        Ok(())
    }
    fn serialize_value<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), WalkFailed> {
        let key = self
            .pending_key
            .take()
            .ok_or_else(|| WalkFailed("a map value without its key".to_owned()))?;
        self.field(KeyName::Owned(key), value)
    }
    fn end(self) -> Result<(), WalkFailed> {
        self.finish()
    }
}

impl ser::SerializeStruct for ObjectWalk<'_, '_> {
    type Ok = ();
    type Error = WalkFailed;
    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), WalkFailed> {
        self.field(KeyName::Field(key), value)
    }
    fn end(self) -> Result<(), WalkFailed> {
        self.finish()
    }
}

impl ser::SerializeStructVariant for ObjectWalk<'_, '_> {
    type Ok = ();
    type Error = WalkFailed;
    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), WalkFailed> {
        self.field(KeyName::Field(key), value)
    }
    fn end(self) -> Result<(), WalkFailed> {
        self.finish()
    }
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

    /// The JSON walk this module used before it walked the serde form directly: kept as the
    /// reference the new walk must agree with, message for message.
    fn reference_bounds(report: &ReportRequest, limits: &Limits) -> Result<(), String> {
        fn walk(
            value: &Value,
            path: &mut String,
            shown: &mut String,
            limits: &Limits,
        ) -> Result<(), String> {
            match value {
                Value::String(text) => {
                    let limit = if limits.long_text_fields.contains(&path.as_str()) {
                        limits.max_long_text_bytes
                    } else {
                        limits.max_string_bytes
                    };
                    if text.len() > limit {
                        return Err(format!(
                            "`{shown}` is {} bytes long, the limit is {limit}",
                            text.len()
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
                        return Err(format!(
                            "`{shown}` has {} items, the limit is {limit}",
                            items.len()
                        ));
                    }
                    for (index, item) in items.iter().enumerate() {
                        let shown_len = shown.len();
                        shown.push_str(&format!("[{index}]"));
                        walk(item, path, shown, limits)?;
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
                        walk(child, path, shown, limits)?;
                        path.truncate(path_len);
                        shown.truncate(shown_len);
                    }
                }
                Value::Null | Value::Bool(_) | Value::Number(_) => {}
            }
            Ok(())
        }
        let json = serde_json::to_value(report).expect("a report is JSON");
        walk(&json, &mut String::new(), &mut String::new(), limits)
    }

    /// Every combination of nine out-of-bounds fields, spread so that the fields' declaration
    /// order differs from the JSON form's key order: the walk names the same field, with the
    /// same message, as the reference.
    #[test]
    fn the_field_named_is_the_first_in_json_order_as_before() {
        use estate_proto::v1::{CheckResult, HostVitals, Measurement, VolumeUsage};
        let long = |bytes: usize| "x".repeat(bytes);
        let edits: Vec<fn(&mut ReportRequest)> = vec![
            |r| r.agent_version = "v".repeat(1025),
            |r| r.checks[1].reason = "r".repeat(8193),
            |r| r.checks[0].measurements[2].text = "t".repeat(9000),
            |r| r.check_names[3] = "c".repeat(1100),
            |r| r.inventory.as_mut().unwrap().softwares[1].name = "n".repeat(2000),
            |r| r.inventory.as_mut().unwrap().networks = vec![Default::default(); 1025],
            |r| r.vitals.as_mut().unwrap().volumes[0].mount = "m".repeat(2000),
            |r| r.checks[0].target = "h".repeat(1500),
            |r| r.identity.as_mut().unwrap().smbios_uuid = "u".repeat(1030),
        ];
        let limits = Limits::default();
        for mask in 0u32..(1 << edits.len()) {
            let mut report = report();
            report.inventory_hash = "sha256:00".into();
            report.inventory = Some(Inventory {
                softwares: vec![Software::default(); 3],
                ..Default::default()
            });
            report.vitals = Some(HostVitals {
                volumes: vec![VolumeUsage::default()],
                ..Default::default()
            });
            report.checks = vec![
                CheckResult {
                    measurements: vec![Measurement::default(); 3],
                    reason: long(10),
                    ..Default::default()
                },
                CheckResult::default(),
            ];
            report.check_names = vec![String::new(); 4];
            for (index, edit) in edits.iter().enumerate() {
                if mask & (1 << index) != 0 {
                    edit(&mut report);
                }
            }
            let expected = reference_bounds(&report, &limits);
            let got = check_bounds(&report, &limits).map_err(|rejection| rejection.error.message);
            assert_eq!(got, expected, "edits {mask:#011b}");
            assert_eq!(expected.is_ok(), mask == 0, "edits {mask:#011b}");
        }
    }

    #[test]
    fn only_an_inventory_is_made_into_a_document() {
        let heartbeat = validate_report(report(), &Limits::default()).expect("valid");
        assert!(heartbeat.inventory_document.is_none());
        let mut full = report();
        full.inventory_hash = "sha256:00".into();
        full.inventory = Some(Inventory {
            softwares: vec![Software {
                name: "bash".into(),
                ..Default::default()
            }],
            ..Default::default()
        });
        let valid = validate_report(full, &Limits::default()).expect("valid");
        let document = valid.inventory_document.expect("a document");
        assert_eq!(document["softwares"][0]["name"], "bash");
        assert_eq!(
            document,
            crate::document::to_document(valid.report.inventory.as_ref().unwrap())
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
