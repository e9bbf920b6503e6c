//! HTTP side of the collector: `/metrics`, `/healthz`, the JSON API under `/api/v1` and the web
//! UI at `/`. Handlers parse and check the query, call the store on a blocking thread, and
//! shape the JSON; errors are `{"code": …, "message": …}` with a matching status. Every route
//! passes through [`crate::auth::authorize`] first (bearer tokens, when configured).

use crate::auth::{ApiAuth, AuthState, Caller};
use crate::clock::{now_ms, parse_rfc3339, rfc3339};
use crate::document::known_fields;
use crate::error::ApiError;
use crate::metrics::{IngestMetrics, Liveness};
use crate::state::HostStates;
use crate::store::{
    ChangeQuery, CheckEvent, CheckQuery, CheckState, EventQuery, FieldFilter, HostCursor,
    HostQuery, HostRecord, Liveness as HostLiveness, Store, ValuePattern,
};
use axum::body::{Body, Bytes};
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use serde_json::{Value, json};
use std::sync::Arc;

/// What every handler needs.
#[derive(Clone)]
pub struct ApiState {
    pub store: Arc<dyn Store>,
    pub states: Arc<HostStates>,
    pub metrics: Arc<IngestMetrics>,
    pub liveness: Liveness,
    /// API tokens; none configured means every route is open.
    pub auth: Arc<ApiAuth>,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState").finish_non_exhaustive()
    }
}

pub const DEFAULT_PAGE_SIZE: usize = 100;
pub const MAX_PAGE_SIZE: usize = 1000;

pub fn router(state: ApiState) -> Router {
    let auth = AuthState {
        auth: Arc::clone(&state.auth),
        metrics: Arc::clone(&state.metrics),
    };
    Router::new()
        .route("/", get(ui))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/v1/hosts", get(list_hosts))
        .route("/api/v1/hosts/{id}", get(host_detail).delete(delete_host))
        .route("/api/v1/hosts/{id}/changes", get(host_changes))
        .route("/api/v1/fields", get(fields))
        .route("/api/v1/checks", get(list_checks))
        .route("/api/v1/events", get(list_events))
        .fallback(|| async {
            ApiError::not_found("no such resource; the API lives under `/api/v1`")
        })
        // After every route and the fallback, so it covers them all (an unknown `/api/…`
        // path answers 401 to a caller without a token, not 404).
        .layer(axum::middleware::from_fn_with_state(
            auth,
            crate::auth::authorize,
        ))
        .with_state(state)
}

async fn ui() -> Html<&'static str> {
    Html(include_str!("ui.html"))
}

async fn healthz(State(state): State<ApiState>) -> Json<Value> {
    Json(json!({ "status": "ok", "version": crate::VERSION, "hosts": state.states.len() }))
}

async fn metrics(State(state): State<ApiState>) -> Response {
    // A page over thousands of hosts takes tens of milliseconds: render it on a blocking
    // thread so that ingest and API requests on this runtime are not held up meanwhile.
    let rendered = tokio::task::spawn_blocking(move || {
        crate::metrics::render(&state.states, &state.metrics, state.liveness, now_ms())
    })
    .await;
    let page = match rendered {
        Ok(page) => page,
        Err(join_error) => {
            return ApiError::internal(&format_args!("rendering /metrics failed: {join_error}"))
                .into_response();
        }
    };
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        // Sent without a copy; its buffer is reused by the next scrape once sent.
        Body::from(Bytes::from_owner(page)),
    )
        .into_response()
}

async fn fields() -> Json<Value> {
    Json(json!({ "fields": known_fields() }))
}

/// Splits a raw query string into decoded `(name, value)` pairs.
fn query_pairs(raw: Option<&str>) -> Result<Vec<(String, String)>, ApiError> {
    Ok(form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
        .into_owned()
        .collect())
}

fn parse_limit(value: &str) -> Result<usize, ApiError> {
    match value.parse::<usize>() {
        Ok(limit) if (1..=MAX_PAGE_SIZE).contains(&limit) => Ok(limit),
        _ => Err(ApiError::invalid(format!(
            "`limit` `{value}` must be a number from 1 to {MAX_PAGE_SIZE}"
        ))),
    }
}

/// Turns `/api/v1/hosts` query parameters into a [`HostQuery`].
pub fn parse_host_query(
    pairs: &[(String, String)],
    now_ms: i64,
    liveness: Liveness,
) -> Result<HostQuery, ApiError> {
    let mut query = HostQuery {
        limit: DEFAULT_PAGE_SIZE,
        stale_before_ms: now_ms - liveness.stale_after.as_millis() as i64,
        ..Default::default()
    };
    for (name, value) in pairs {
        match name.as_str() {
            "hostname" => query.hostname = Some(value.clone()),
            "os" => query.os = Some(value.clone()),
            "state" => {
                query.liveness = Some(match value.as_str() {
                    "up" => HostLiveness::Up,
                    "stale" => HostLiveness::Stale,
                    other => {
                        return Err(ApiError::invalid(format!(
                            "`state` `{other}` must be `up` or `stale`"
                        )));
                    }
                });
            }
            "identity_conflict" => {
                query.identity_conflict = Some(match value.as_str() {
                    "true" => true,
                    "false" => false,
                    other => {
                        return Err(ApiError::invalid(format!(
                            "`identity_conflict` `{other}` must be `true` or `false`"
                        )));
                    }
                });
            }
            "limit" => query.limit = parse_limit(value)?,
            "cursor" => query.after = Some(decode_cursor(value)?),
            field if field.contains('.') => {
                if !known_fields().contains(field) {
                    return Err(ApiError::invalid(format!(
                        "unknown inventory field `{field}`; `GET /api/v1/fields` lists them"
                    )));
                }
                query.fields.push(FieldFilter {
                    field: field.to_owned(),
                    pattern: ValuePattern::parse(value),
                });
            }
            other => {
                return Err(ApiError::invalid(format!(
                    "unknown query parameter `{other}`; expected `hostname`, `os`, `state`, \
                     `identity_conflict`, `limit`, `cursor` or an inventory field such as \
                     `bios.smanufacturer`"
                )));
            }
        }
    }
    Ok(query)
}

/// Cursors are opaque to clients: `<hex of the hostname>.<host id>`.
fn encode_cursor(cursor: &HostCursor) -> String {
    format!("{}.{}", encode_hex(&cursor.hostname), cursor.id)
}

fn decode_cursor(text: &str) -> Result<HostCursor, ApiError> {
    let invalid = || ApiError::invalid(format!("`cursor` `{text}` is not a cursor from this API"));
    let (hex, id) = text.split_once('.').ok_or_else(invalid)?;
    if id.is_empty() {
        return Err(invalid());
    }
    Ok(HostCursor {
        hostname: decode_hex(hex).ok_or_else(invalid)?,
        id: id.to_owned(),
    })
}

/// The API's view of a host.
pub fn host_json(host: &HostRecord, now_ms: i64, liveness: Liveness) -> Value {
    // Serialising a struct cannot fail: every key is a string.
    serde_json::to_value(HostView::new(host, now_ms, liveness)).unwrap_or(Value::Null)
}

/// The API's view of a host, serialised straight to JSON by lists (no [`Value`] tree per
/// host). Keys are declared in alphabetical order, the order `serde_json` maps keep, so a
/// list's bytes are those of [`host_json`].
#[derive(Serialize)]
struct HostView<'a> {
    agent: AgentView<'a>,
    first_seen: String,
    fqdn: &'a str,
    hardware: HardwareView<'a>,
    hostname: &'a str,
    id: &'a str,
    identity: IdentityView<'a>,
    inventory_hash: &'a str,
    last_seen: String,
    os: OsView<'a>,
    state: &'static str,
    vitals: VitalsView<'a>,
}

#[derive(Serialize)]
struct AgentView<'a> {
    clock_skew_seconds: f64,
    dropped_reports_total: u64,
    last_sequence: u64,
    reports_received_total: u64,
    version: &'a str,
}

#[derive(Serialize)]
struct HardwareView<'a> {
    chassis_type: &'a str,
    cpu_threads: u32,
    manufacturer: &'a str,
    memory_bytes: u64,
    model: &'a str,
    serial_number: &'a str,
    swap_bytes: u64,
    vmsystem: &'a str,
}

#[derive(Serialize)]
struct IdentityView<'a> {
    conflict: bool,
    conflict_detail: &'a str,
    machine_id: &'a str,
    primary_mac: &'a str,
    smbios_uuid: &'a str,
}

#[derive(Serialize)]
struct OsView<'a> {
    arch: &'a str,
    full_name: &'a str,
    kernel_version: &'a str,
    name: &'a str,
    version: &'a str,
}

/// [`HostVitals`](estate_proto::v1::HostVitals) with its keys in alphabetical order.
#[derive(Serialize)]
struct VitalsView<'a> {
    boot_time_unix: i64,
    load1: f64,
    memory_available_bytes: u64,
    swap_free_bytes: u64,
    volumes: Vec<VolumeView<'a>>,
}

#[derive(Serialize)]
struct VolumeView<'a> {
    free_bytes: u64,
    mount: &'a str,
    total_bytes: u64,
}

impl<'a> HostView<'a> {
    fn new(host: &'a HostRecord, now_ms: i64, liveness: Liveness) -> Self {
        let up = now_ms - host.last_seen_ms < liveness.stale_after.as_millis() as i64;
        let vitals = &host.vitals;
        HostView {
            agent: AgentView {
                clock_skew_seconds: host.clock_skew_ms as f64 / 1000.0,
                dropped_reports_total: host.dropped_reports_total,
                last_sequence: host.last_sequence,
                reports_received_total: host.reports_received_total,
                version: &host.agent_version,
            },
            first_seen: rfc3339(host.first_seen_ms),
            fqdn: &host.fqdn,
            hardware: HardwareView {
                chassis_type: &host.chassis_type,
                cpu_threads: host.cpu_threads,
                manufacturer: &host.manufacturer,
                memory_bytes: host.memory_bytes,
                model: &host.model,
                serial_number: &host.serial_number,
                swap_bytes: host.swap_bytes,
                vmsystem: &host.vmsystem,
            },
            hostname: &host.hostname,
            id: &host.id,
            identity: IdentityView {
                conflict: host.identity_conflict,
                conflict_detail: &host.identity_conflict_detail,
                machine_id: &host.machine_id,
                primary_mac: &host.primary_mac,
                smbios_uuid: &host.smbios_uuid,
            },
            inventory_hash: &host.inventory_hash,
            last_seen: rfc3339(host.last_seen_ms),
            os: OsView {
                arch: &host.arch,
                full_name: &host.os_full_name,
                kernel_version: &host.kernel_version,
                name: &host.os_name,
                version: &host.os_version,
            },
            state: if up { "up" } else { "stale" },
            vitals: VitalsView {
                boot_time_unix: vitals.boot_time_unix,
                load1: vitals.load1,
                memory_available_bytes: vitals.memory_available_bytes,
                swap_free_bytes: vitals.swap_free_bytes,
                volumes: vitals
                    .volumes
                    .iter()
                    .map(|volume| VolumeView {
                        free_bytes: volume.free_bytes,
                        mount: &volume.mount,
                        total_bytes: volume.total_bytes,
                    })
                    .collect(),
            },
        }
    }
}

/// One page of `GET /api/v1/hosts`.
#[derive(Serialize)]
struct HostListView<'a> {
    hosts: Vec<HostView<'a>>,
    next_cursor: Option<String>,
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, crate::store::StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| ApiError::internal(&error))?
        .map_err(|error| ApiError::internal(&error))
}

async fn list_hosts(
    State(state): State<ApiState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let now = now_ms();
    let query = parse_host_query(&query_pairs(raw.as_deref())?, now, state.liveness)?;
    let store = Arc::clone(&state.store);
    let page = blocking(move || store.list_hosts(&query)).await?;
    let view = HostListView {
        hosts: page
            .hosts
            .iter()
            .map(|host| HostView::new(host, now, state.liveness))
            .collect(),
        next_cursor: page.next.as_ref().map(encode_cursor),
    };
    Ok(Json(view).into_response())
}

async fn host_detail(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let store = Arc::clone(&state.store);
    let lookup = id.clone();
    let detail = blocking(move || store.host_detail(&lookup))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no host with id `{id}`")))?;
    let mut body = host_json(&detail.host, now_ms(), state.liveness);
    body["inventory"] = detail.inventory.unwrap_or(Value::Null);
    body["inventory_received"] = detail
        .inventory_received_ms
        .map_or(Value::Null, |at| Value::String(rfc3339(at)));
    body["checks"] = detail
        .checks
        .iter()
        .map(|check| check_json(None, check))
        .collect();
    Ok(Json(body))
}

/// `DELETE /api/v1/hosts/{id}` (admin): forgets a decommissioned host in the store, the API
/// and `/metrics`, and answers with its last record.
async fn delete_host(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let store = Arc::clone(&state.store);
    let lookup = id.clone();
    let deleted = blocking(move || store.delete_host(&lookup))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no host with id `{id}`")))?;
    state.states.forget(&deleted.id, deleted.last_seen_ms);
    tracing::info!(
        host_id = %deleted.id,
        hostname = %deleted.hostname,
        by = %caller,
        "host deleted through the API"
    );
    Ok(Json(json!({
        "deleted": host_json(&deleted, now_ms(), state.liveness),
    })))
}

async fn host_changes(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let mut query = ChangeQuery {
        limit: DEFAULT_PAGE_SIZE,
        ..Default::default()
    };
    for (name, value) in query_pairs(raw.as_deref())? {
        match name.as_str() {
            "since" => query.since_ms = Some(parse_since(&value)?),
            "limit" => query.limit = parse_limit(&value)?,
            "cursor" => {
                query.after_id = Some(value.parse().map_err(|_| {
                    ApiError::invalid(format!("`cursor` `{value}` is not a cursor from this API"))
                })?);
            }
            other => {
                return Err(ApiError::invalid(format!(
                    "unknown query parameter `{other}`; expected `since`, `limit` or `cursor`"
                )));
            }
        }
    }
    let store = Arc::clone(&state.store);
    let lookup = id.clone();
    let page = blocking(move || store.host_changes(&lookup, &query))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no host with id `{id}`")))?;
    let changes: Vec<Value> = page
        .changes
        .iter()
        .map(|change| {
            json!({
                "at": rfc3339(change.at_ms),
                "field": change.field,
                "change": change.kind.as_str(),
                "old": change.old,
                "new": change.new,
            })
        })
        .collect();
    Ok(Json(json!({
        "changes": changes,
        "next_cursor": page.next_after_id.map(|id| id.to_string()),
    })))
}

/// The API's view of one check target's latest result.
pub fn check_json(hostname: Option<&str>, check: &CheckState) -> Value {
    let mut body = json!({
        "host_id": check.host_id,
        "check": check.check,
        "kind": check.kind,
        "target": check.target,
        "outcome": check.outcome,
        "reason": check.reason,
        "since": rfc3339(check.since_ms),
        "received": rfc3339(check.received_ms),
        "started": rfc3339(check.started_ms),
        "duration_seconds": check.duration_seconds,
        "measurements": check.measurements,
    });
    if let Some(hostname) = hostname {
        body["hostname"] = Value::from(hostname);
    }
    body
}

fn event_json(event: &CheckEvent) -> Value {
    json!({
        "id": event.id,
        "at": rfc3339(event.at_ms),
        "host_id": event.host_id,
        "hostname": event.hostname,
        "check": event.check,
        "kind": event.kind,
        "target": event.target,
        "old_outcome": event.old_outcome,
        "new_outcome": event.new_outcome,
        "reason": event.reason,
    })
}

const OUTCOMES: &[&str] = &["pass", "fail", "skipped"];

/// Turns `/api/v1/checks` query parameters into a [`CheckQuery`].
pub fn parse_check_query(pairs: &[(String, String)]) -> Result<CheckQuery, ApiError> {
    let mut query = CheckQuery {
        limit: DEFAULT_PAGE_SIZE,
        ..Default::default()
    };
    for (name, value) in pairs {
        match name.as_str() {
            "host" => query.host_id = Some(value.clone()),
            "kind" => query.kind = Some(value.clone()),
            "check" => query.check = Some(value.clone()),
            "outcome" if OUTCOMES.contains(&value.as_str()) => {
                query.outcome = Some(value.clone());
            }
            "outcome" => {
                return Err(ApiError::invalid(format!(
                    "`outcome` `{value}` must be `pass`, `fail` or `skipped`"
                )));
            }
            "failing" => match value.as_str() {
                "true" => query.outcome = Some("fail".into()),
                "false" => {}
                other => {
                    return Err(ApiError::invalid(format!(
                        "`failing` `{other}` must be `true` or `false`"
                    )));
                }
            },
            "limit" => query.limit = parse_limit(value)?,
            "cursor" => {
                let decoded = decode_hex(value).and_then(|text| {
                    let mut parts = text.splitn(3, '\n');
                    Some((
                        parts.next()?.to_owned(),
                        parts.next()?.to_owned(),
                        parts.next()?.to_owned(),
                    ))
                });
                query.after = Some(decoded.ok_or_else(|| {
                    ApiError::invalid(format!("`cursor` `{value}` is not a cursor from this API"))
                })?);
            }
            other => {
                return Err(ApiError::invalid(format!(
                    "unknown query parameter `{other}`; expected `host`, `kind`, `check`, \
                     `outcome`, `failing`, `limit` or `cursor`"
                )));
            }
        }
    }
    Ok(query)
}

fn encode_hex(text: &str) -> String {
    text.bytes().map(|byte| format!("{byte:02x}")).collect()
}

fn decode_hex(text: &str) -> Option<String> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    let bytes = (0..text.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(text.get(at..at + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

async fn list_checks(
    State(state): State<ApiState>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let query = parse_check_query(&query_pairs(raw.as_deref())?)?;
    let store = Arc::clone(&state.store);
    let page = blocking(move || store.list_checks(&query)).await?;
    let checks: Vec<Value> = page
        .checks
        .iter()
        .map(|(hostname, check)| check_json(Some(hostname), check))
        .collect();
    Ok(Json(json!({
        "checks": checks,
        "next_cursor": page
            .next
            .map(|(host, check, target)| encode_hex(&format!("{host}\n{check}\n{target}"))),
    })))
}

/// Turns `/api/v1/events` query parameters into an [`EventQuery`].
pub fn parse_event_query(pairs: &[(String, String)]) -> Result<EventQuery, ApiError> {
    let mut query = EventQuery {
        limit: DEFAULT_PAGE_SIZE,
        ..Default::default()
    };
    for (name, value) in pairs {
        match name.as_str() {
            "host" => query.host_id = Some(value.clone()),
            "kind" => query.kind = Some(value.clone()),
            "check" => query.check = Some(value.clone()),
            "since" => query.since_ms = Some(parse_since(value)?),
            "limit" => query.limit = parse_limit(value)?,
            "cursor" => {
                query.before_id = Some(value.parse().map_err(|_| {
                    ApiError::invalid(format!("`cursor` `{value}` is not a cursor from this API"))
                })?);
            }
            other => {
                return Err(ApiError::invalid(format!(
                    "unknown query parameter `{other}`; expected `host`, `kind`, `check`, \
                     `since`, `limit` or `cursor`"
                )));
            }
        }
    }
    Ok(query)
}

fn parse_since(value: &str) -> Result<i64, ApiError> {
    parse_rfc3339(value).ok_or_else(|| {
        ApiError::invalid(format!(
            "`since` `{value}` is not an RFC 3339 time such as `2026-11-01T00:00:00Z`"
        ))
    })
}

async fn list_events(
    State(state): State<ApiState>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let query = parse_event_query(&query_pairs(raw.as_deref())?)?;
    let store = Arc::clone(&state.store);
    let page = blocking(move || store.list_events(&query)).await?;
    let events: Vec<Value> = page.events.iter().map(event_json).collect();
    Ok(Json(json!({
        "events": events,
        "next_cursor": page.next_before_id.map(|id| id.to_string()),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const LIVENESS: Liveness = Liveness {
        stale_after: Duration::from_secs(300),
        expire_after: Duration::from_secs(3600),
    };

    /// Parses `raw` as a host query and renders the result (or the error message).
    fn check(raw: &str, expected: &str) {
        let got = match query_pairs(Some(raw))
            .and_then(|pairs| parse_host_query(&pairs, 1_000_000, LIVENESS))
        {
            Ok(query) => format!("{query:?}"),
            Err(error) => error.message,
        };
        assert!(got.contains(expected), "expected `{expected}` in:\n{got}");
    }

    /// The host list as it was built before it was serialised straight from [`HostView`]: a
    /// `json!` tree per host.
    fn host_list_as_a_value_tree(hosts: &[HostRecord], now_ms: i64, next: Option<&str>) -> Value {
        let hosts: Vec<Value> = hosts
            .iter()
            .map(|host| {
                let up = now_ms - host.last_seen_ms < LIVENESS.stale_after.as_millis() as i64;
                json!({
                    "id": host.id,
                    "hostname": host.hostname,
                    "fqdn": host.fqdn,
                    "state": if up { "up" } else { "stale" },
                    "first_seen": rfc3339(host.first_seen_ms),
                    "last_seen": rfc3339(host.last_seen_ms),
                    "os": {
                        "name": host.os_name,
                        "version": host.os_version,
                        "full_name": host.os_full_name,
                        "kernel_version": host.kernel_version,
                        "arch": host.arch,
                    },
                    "hardware": {
                        "manufacturer": host.manufacturer,
                        "model": host.model,
                        "serial_number": host.serial_number,
                        "chassis_type": host.chassis_type,
                        "vmsystem": host.vmsystem,
                        "memory_bytes": host.memory_bytes,
                        "swap_bytes": host.swap_bytes,
                        "cpu_threads": host.cpu_threads,
                    },
                    "identity": {
                        "machine_id": host.machine_id,
                        "smbios_uuid": host.smbios_uuid,
                        "primary_mac": host.primary_mac,
                        "conflict": host.identity_conflict,
                        "conflict_detail": host.identity_conflict_detail,
                    },
                    "agent": {
                        "version": host.agent_version,
                        "last_sequence": host.last_sequence,
                        "clock_skew_seconds": host.clock_skew_ms as f64 / 1000.0,
                        "dropped_reports_total": host.dropped_reports_total,
                        "reports_received_total": host.reports_received_total,
                    },
                    "inventory_hash": host.inventory_hash,
                    "vitals": host.vitals,
                })
            })
            .collect();
        json!({ "hosts": hosts, "next_cursor": next })
    }

    #[test]
    fn a_host_list_has_the_bytes_of_its_value_tree() {
        use estate_proto::v1::{HostVitals, VolumeUsage};
        let now = 1_800_000_000_000;
        let full = HostRecord {
            id: "00000000-0000-4000-8000-000000000001".into(),
            hostname: "web-\"01\"".into(),
            fqdn: "web-01.example.org".into(),
            os_name: "Debian GNU/Linux".into(),
            os_version: "12".into(),
            os_full_name: "Debian GNU/Linux 12 (bookworm)".into(),
            kernel_version: "6.1.0-28-amd64".into(),
            arch: "x86_64".into(),
            vmsystem: "Physical".into(),
            manufacturer: "Dell Inc.".into(),
            model: "PowerEdge R650".into(),
            chassis_type: "Rack Mount Chassis".into(),
            serial_number: "SN0001".into(),
            machine_id: "m1".into(),
            smbios_uuid: "u1".into(),
            primary_mac: "52:54:00:00:00:01".into(),
            agent_version: "0.1.0".into(),
            memory_bytes: u64::MAX,
            swap_bytes: 4 << 30,
            cpu_threads: 16,
            first_seen_ms: now - 86_400_123,
            last_seen_ms: now - 1_000,
            last_sequence: 42,
            clock_skew_ms: -1_234,
            identity_conflict: true,
            identity_conflict_detail: "two machines ✓".into(),
            inventory_hash: "sha256:ab".into(),
            dropped_reports_total: 3,
            reports_received_total: 40,
            vitals: HostVitals {
                memory_available_bytes: 1 << 30,
                swap_free_bytes: 7,
                boot_time_unix: 1_700_000_000,
                volumes: vec![VolumeUsage {
                    mount: "/".into(),
                    total_bytes: 100,
                    free_bytes: 40,
                }],
                load1: 0.37,
            },
            reported_to: "collector-a".into(),
        };
        let stale = HostRecord {
            id: "h2".into(),
            last_seen_ms: now - 600_000,
            vitals: HostVitals {
                load1: f64::NAN,
                ..HostVitals::default()
            },
            ..HostRecord::default()
        };
        let hosts = [full, stale];
        for next in [None, Some("7765622d3032.h2")] {
            let view = HostListView {
                hosts: hosts
                    .iter()
                    .map(|host| HostView::new(host, now, LIVENESS))
                    .collect(),
                next_cursor: next.map(str::to_owned),
            };
            assert_eq!(
                serde_json::to_string(&view).unwrap(),
                serde_json::to_string(&host_list_as_a_value_tree(&hosts, now, next)).unwrap()
            );
        }
        assert_eq!(
            host_json(&hosts[0], now, LIVENESS),
            host_list_as_a_value_tree(&hosts[..1], now, None)["hosts"][0]
        );
    }

    #[test]
    fn host_queries_parse_filters() {
        check("hostname=web&state=up", "hostname: Some(\"web\")");
        check("state=stale", "liveness: Some(Stale)");
        check("state=up", "stale_before_ms: 700000");
        check(
            "bios.smanufacturer=Dell*",
            "FieldFilter { field: \"bios.smanufacturer\", pattern: Glob(\"Dell*\") }",
        );
        check(
            "operatingsystem.name=Debian+GNU%2FLinux",
            "Exact(\"Debian GNU/Linux\")",
        );
        check("limit=5", "limit: 5");
    }

    #[test]
    fn bad_host_queries_name_the_parameter() {
        check("state=down", "`state` `down` must be `up` or `stale`");
        check("limit=0", "`limit` `0` must be a number from 1 to 1000");
        check(
            "limit=many",
            "`limit` `many` must be a number from 1 to 1000",
        );
        check(
            "bios.colour=red",
            "unknown inventory field `bios.colour`; `GET /api/v1/fields` lists them",
        );
        check("colour=red", "unknown query parameter `colour`");
        check("cursor=zz", "`cursor` `zz` is not a cursor from this API");
    }

    #[test]
    fn cursors_round_trip() {
        let cursor = HostCursor {
            hostname: "web.example/1".into(),
            id: "abc-1".into(),
        };
        assert_eq!(decode_cursor(&encode_cursor(&cursor)).unwrap(), cursor);
    }
}
