//! The embedded store: one SQLite file in WAL mode, one writer connection committing whole
//! batches (`synchronous = FULL`, so a commit is on disk before any report of it is
//! acknowledged), and a few reader connections for the API.

use super::host_page::{FilterCounts, HostPageReader, read_host_page};
use super::query::{
    self, Dialect, HostPlan, ListQuery, SQLITE_CHECK_COLUMNS, SqlArg, TOKEN_COLUMNS, split_page,
};
use super::{
    ChangePage, ChangeQuery, ChangeRecord, CheckEvent, CheckPage, CheckQuery, CheckState,
    EventPage, EventQuery, ExchangeOutcome, HostCursor, HostDetail, HostPage, HostQuery,
    HostRecord, IncomingReport, NewToken, Store, StoreError, TokenRecord, TokenRefusal,
    WriteOutcome, WritePolicy,
};
use crate::document::{self, ChangeKind};
use estate_proto::v1::{CheckResult, HostIdentity, Inventory, Measurement, ReportRequest};
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, Transaction, params};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, LazyLock, Mutex};
use std::time::Duration;

/// Schema migrations, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE hosts (
    id TEXT PRIMARY KEY,
    hostname TEXT NOT NULL,
    fqdn TEXT NOT NULL DEFAULT '',
    os_name TEXT NOT NULL DEFAULT '',
    os_version TEXT NOT NULL DEFAULT '',
    os_full_name TEXT NOT NULL DEFAULT '',
    kernel_version TEXT NOT NULL DEFAULT '',
    arch TEXT NOT NULL DEFAULT '',
    vmsystem TEXT NOT NULL DEFAULT '',
    manufacturer TEXT NOT NULL DEFAULT '',
    model TEXT NOT NULL DEFAULT '',
    chassis_type TEXT NOT NULL DEFAULT '',
    serial_number TEXT NOT NULL DEFAULT '',
    machine_id TEXT NOT NULL DEFAULT '',
    smbios_uuid TEXT NOT NULL DEFAULT '',
    primary_mac TEXT NOT NULL DEFAULT '',
    agent_version TEXT NOT NULL DEFAULT '',
    memory_bytes INTEGER NOT NULL DEFAULT 0,
    swap_bytes INTEGER NOT NULL DEFAULT 0,
    cpu_threads INTEGER NOT NULL DEFAULT 0,
    first_seen_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    last_sequence INTEGER NOT NULL,
    clock_skew_ms INTEGER NOT NULL DEFAULT 0,
    identity_conflict INTEGER NOT NULL DEFAULT 0,
    identity_conflict_detail TEXT NOT NULL DEFAULT '',
    inventory_hash TEXT NOT NULL DEFAULT '',
    dropped_reports_total INTEGER NOT NULL DEFAULT 0,
    vitals TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX hosts_by_hostname ON hosts (hostname COLLATE NOCASE, id);
CREATE INDEX hosts_by_last_seen ON hosts (last_seen_ms);

CREATE TABLE inventories (
    host_id TEXT PRIMARY KEY REFERENCES hosts (id) ON DELETE CASCADE,
    hash TEXT NOT NULL,
    received_ms INTEGER NOT NULL,
    document TEXT NOT NULL
);

CREATE TABLE inventory_fields (
    host_id TEXT NOT NULL REFERENCES hosts (id) ON DELETE CASCADE,
    field TEXT NOT NULL,
    value TEXT NOT NULL
);
CREATE INDEX inventory_fields_by_value ON inventory_fields (field, value COLLATE NOCASE, host_id);
CREATE INDEX inventory_fields_by_host ON inventory_fields (host_id);

CREATE TABLE inventory_changes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    host_id TEXT NOT NULL REFERENCES hosts (id) ON DELETE CASCADE,
    at_ms INTEGER NOT NULL,
    field TEXT NOT NULL,
    kind TEXT NOT NULL,
    old TEXT NOT NULL,
    new TEXT NOT NULL
);
CREATE INDEX inventory_changes_by_host ON inventory_changes (host_id, id);

CREATE TABLE check_results (
    host_id TEXT NOT NULL REFERENCES hosts (id) ON DELETE CASCADE,
    check_name TEXT NOT NULL,
    target TEXT NOT NULL,
    kind TEXT NOT NULL,
    outcome TEXT NOT NULL,
    reason TEXT NOT NULL,
    since_ms INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    started_ms INTEGER NOT NULL,
    duration_seconds REAL NOT NULL,
    measurements TEXT NOT NULL,
    PRIMARY KEY (host_id, check_name, target)
);
CREATE INDEX check_results_by_outcome ON check_results (outcome, host_id);

CREATE TABLE check_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    host_id TEXT NOT NULL REFERENCES hosts (id) ON DELETE CASCADE,
    check_name TEXT NOT NULL,
    kind TEXT NOT NULL,
    target TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    old_outcome TEXT,
    new_outcome TEXT NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX check_events_by_host ON check_events (host_id, id);
CREATE INDEX check_events_by_time ON check_events (at_ms);
"#,
    r#"
ALTER TABLE hosts ADD COLUMN reports_received_total INTEGER NOT NULL DEFAULT 0;
"#,
    // Agent tokens and enrollment secrets, by the hash of the secret only (`crate::tokens`).
    r#"
CREATE TABLE agent_tokens (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('enrollment', 'agent')),
    hash TEXT NOT NULL UNIQUE,
    host TEXT,
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER,
    revoked_ms INTEGER,
    last_used_ms INTEGER,
    uses_left INTEGER,
    issued_by TEXT
);
"#,
    // A host's fields by name (and value, so the probe reads the index alone): a host list walked
    // in hostname order probes each host's filter in one index search (`HostPlan::Walk`). It
    // also serves the per-host deletes `inventory_fields_by_host` served.
    r#"
CREATE INDEX inventory_fields_by_host_field
    ON inventory_fields (host_id, field, value COLLATE NOCASE);
DROP INDEX inventory_fields_by_host;
"#,
    // The host order carries the columns that copy inventory fields (`query::host_column_of`),
    // so a walk in hostname order tests a filter on them from the index and reads the table
    // row only of the hosts that pass (SQLite defers the row's seek until a column outside
    // the index is needed). Heartbeats leave these columns alone, so they never update it.
    r#"
DROP INDEX hosts_by_hostname;
CREATE INDEX hosts_by_hostname ON hosts (
    hostname COLLATE NOCASE, id,
    manufacturer, model, serial_number, vmsystem, chassis_type,
    os_name, os_version, os_full_name, kernel_version, arch, fqdn
);
"#,
    // A heartbeat renews every check's run (when it started, how long it took, what it
    // measured) but rarely changes an outcome. The runs of a host are kept in one row, so a
    // heartbeat rewrites that row instead of one row per check; `check_results` keeps the
    // outcome of each check and target, rewritten only when it changes.
    r#"
CREATE TABLE check_runs (
    host_id TEXT PRIMARY KEY REFERENCES hosts (id) ON DELETE CASCADE,
    runs TEXT NOT NULL
);
-- Each run as `store::sqlite::StoredRun` reads it.
INSERT INTO check_runs (host_id, runs)
    SELECT host_id, json_group_array(json_array(
        check_name, target, received_ms, started_ms, duration_seconds,
        (SELECT json_group_array(json_array(
             coalesce(json_extract(m.value, '$.name'), ''),
             coalesce(json_extract(m.value, '$.value'), 0.0),
             coalesce(json_extract(m.value, '$.text'), '')))
         FROM json_each(measurements) m)))
    FROM (SELECT * FROM check_results ORDER BY host_id, check_name, target)
    GROUP BY host_id;
ALTER TABLE check_results DROP COLUMN received_ms;
ALTER TABLE check_results DROP COLUMN started_ms;
ALTER TABLE check_results DROP COLUMN duration_seconds;
ALTER TABLE check_results DROP COLUMN measurements;
"#,
];

const READER_CONNECTIONS: usize = 4;
/// Page cache of each reader connection, in KiB (SQLite's default is 2 MiB). A page of 100
/// hosts walked in hostname order touches about 10 MiB of index and table pages; with the
/// default every request read them again through the kernel.
const READER_CACHE_KIB: i64 = 16 * 1024;

/// SQLite implementation of [`Store`].
#[derive(Debug)]
pub struct SqliteStore {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: ReaderPool,
    filter_counts: FilterCounts,
}

/// Settings of a connection that answers the API's queries.
fn configure_reader(reader: &Connection) -> rusqlite::Result<()> {
    reader.busy_timeout(Duration::from_secs(5))?;
    reader.pragma_update(None, "cache_size", -READER_CACHE_KIB)?;
    // One plan per statement text whatever its parameters: otherwise a `LIKE` on a bound
    // pattern makes SQLite prepare the statement again each time it is bound (a tenth of a
    // filtered page's CPU). The index ranges it would have read from the pattern are written
    // out by `query::SqlBuilder::prefix_range`.
    reader.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    Ok(())
}

/// The read-only connections, lent to one query at a time. A query takes whichever connection
/// is idle and waits only when all are busy: handing them out in turn made a query wait
/// behind a slow one on its own connection while others sat idle, the tail of the API's
/// latency under concurrent load.
#[derive(Debug)]
struct ReaderPool {
    idle: Mutex<Vec<Connection>>,
    returned: Condvar,
}

impl ReaderPool {
    fn new(connections: Vec<Connection>) -> Self {
        ReaderPool {
            idle: Mutex::new(connections),
            returned: Condvar::new(),
        }
    }

    /// An idle connection, waiting for one to come back when every one is lent.
    fn take(&self) -> LentReader<'_> {
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        loop {
            if let Some(connection) = idle.pop() {
                return LentReader {
                    pool: self,
                    connection: Some(connection),
                };
            }
            idle = self
                .returned
                .wait(idle)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }
}

/// A connection lent by [`ReaderPool::take`]; it goes back to the pool when dropped, also
/// when the query panicked.
struct LentReader<'pool> {
    pool: &'pool ReaderPool,
    connection: Option<Connection>,
}

impl std::ops::Deref for LentReader<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.connection
            .as_ref()
            .expect("a lent connection is held until dropped")
    }
}

impl Drop for LentReader<'_> {
    fn drop(&mut self) {
        if let Some(connection) = self.connection.take() {
            self.pool
                .idle
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .push(connection);
            self.pool.returned.notify_one();
        }
    }
}

/// The start-up `PRAGMA quick_check`, maybe still running on a connection of its own
/// ([`SqliteStore::open_checking_in_background`]). Nothing may be written to the database
/// before [`IntegrityCheck::wait`] said it is sound.
#[must_use = "the database must not be written before its check passed"]
#[derive(Debug)]
pub struct IntegrityCheck {
    running: Option<std::thread::JoinHandle<Result<(), StoreError>>>,
}

impl IntegrityCheck {
    /// A check that is over (it passed, or the backend has none).
    pub fn passed() -> IntegrityCheck {
        IntegrityCheck { running: None }
    }

    /// Waits for the verdict: the check's error names the file and the recovery steps.
    pub fn wait(self) -> Result<(), StoreError> {
        match self.running {
            None => Ok(()),
            Some(thread) => thread.join().unwrap_or_else(|_| {
                Err(StoreError::new(
                    "the database integrity check failed",
                    "its thread panicked",
                ))
            }),
        }
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, checks it (`PRAGMA quick_check`) and
    /// applies pending migrations.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let (store, check) = Self::open_checking_in_background(path)?;
        check.wait()?;
        Ok(store)
    }

    /// [`SqliteStore::open`], except that on a database already at the current schema the
    /// integrity check runs on a thread of its own, so that the caller can load its state
    /// meanwhile (on a large file each takes seconds). The caller must
    /// [`IntegrityCheck::wait`] before writing anything. A database that needs a migration is
    /// checked first, as a damaged file must never be migrated.
    pub fn open_checking_in_background(path: &Path) -> Result<(Self, IntegrityCheck), StoreError> {
        let shown = path.display().to_string();
        let writer = Connection::open(path)
            .map_err(|e| StoreError::new(format!("failed to open database `{shown}`"), e))?;
        configure(&writer).map_err(|e| {
            StoreError::new(
                format!(
                    "failed to configure database `{shown}`{}",
                    corruption_hint(&e, &shown)
                ),
                e,
            )
        })?;
        writer
            .pragma_update(None, "cache_size", -WRITER_CACHE_KIB)
            .map_err(|e| StoreError::new(format!("failed to configure `{shown}`"), e))?;
        // The write path alone uses about 15 statements (heartbeat, inventory, events, tokens);
        // the default cache of 16 would evict and prepare them again.
        writer.set_prepared_statement_cache_capacity(64);
        let applied: usize = writer
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(|e| {
                StoreError::new(
                    format!(
                        "failed to read the schema version of `{shown}`{}",
                        corruption_hint(&e, &shown)
                    ),
                    e,
                )
            })?;
        let check = if applied < MIGRATIONS.len() {
            check_integrity(&writer, &shown)?;
            IntegrityCheck::passed()
        } else {
            let (path, shown) = (path.to_owned(), shown.clone());
            let running = std::thread::Builder::new()
                .name("sqlite-quick-check".to_owned())
                .spawn(move || {
                    let connection = Connection::open_with_flags(
                        &path,
                        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                    )
                    .map_err(|e| {
                        StoreError::new(format!("failed to open database `{shown}`"), e)
                    })?;
                    check_integrity(&connection, &shown)
                })
                .map_err(|e| StoreError::new("failed to start the database integrity check", e))?;
            IntegrityCheck {
                running: Some(running),
            }
        };
        migrate(&writer)
            .map_err(|e| StoreError::new(format!("failed to migrate database `{shown}`"), e))?;
        let mut readers = Vec::with_capacity(READER_CONNECTIONS);
        for _ in 0..READER_CONNECTIONS {
            let reader = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(|e| StoreError::new(format!("failed to open database `{shown}`"), e))?;
            configure_reader(&reader)
                .map_err(|e| StoreError::new(format!("failed to configure `{shown}`"), e))?;
            readers.push(reader);
        }
        let store = SqliteStore {
            path: path.to_owned(),
            writer: Mutex::new(writer),
            readers: ReaderPool::new(readers),
            filter_counts: FilterCounts::default(),
        };
        Ok((store, check))
    }

    fn read<T>(
        &self,
        what: &str,
        body: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let connection = self.readers.take();
        body(&connection).map_err(|e| {
            StoreError::new(format!("failed to {what} in `{}`", self.path.display()), e)
        })
    }

    /// Runs `body` on the writer connection (token changes are rare and small; they queue
    /// behind a batch commit at worst).
    fn write<T>(
        &self,
        what: &str,
        body: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let mut connection = self
            .writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        body(&mut connection).map_err(|e| {
            StoreError::new(format!("failed to {what} in `{}`", self.path.display()), e)
        })
    }
}

fn insert_token(
    connection: &Connection,
    token: &NewToken,
    issued_by: Option<&str>,
) -> rusqlite::Result<()> {
    connection.execute(
        "INSERT INTO agent_tokens \
         (id, kind, hash, host, created_ms, expires_ms, uses_left, issued_by) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            token.id,
            token.kind.as_str(),
            token.hash,
            token.host,
            token.created_ms,
            token.expires_ms,
            token.uses_left,
            issued_by
        ],
    )?;
    Ok(())
}

fn token_from_row(row: &Row<'_>) -> rusqlite::Result<TokenRecord> {
    let kind: String = row.get(1)?;
    Ok(TokenRecord {
        id: row.get(0)?,
        kind: crate::tokens::TokenKind::parse(&kind).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                1,
                rusqlite::types::Type::Text,
                format!("unknown token kind `{kind}`").into(),
            )
        })?,
        host: row.get(2)?,
        created_ms: row.get(3)?,
        expires_ms: row.get(4)?,
        revoked_ms: row.get(5)?,
        last_used_ms: row.get(6)?,
        uses_left: row.get(7)?,
        issued_by: row.get(8)?,
    })
}

/// What to do about a database SQLite calls damaged, appended to the error.
fn corruption_hint(error: &rusqlite::Error, shown: &str) -> String {
    match error.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase) => {
            recovery_steps(shown)
        }
        _ => String::new(),
    }
}

fn recovery_steps(shown: &str) -> String {
    format!(
        "; the file is damaged: stop the collector, keep a copy of `{shown}` (with its -wal \
         file), list the damage with `sqlite3 {shown} 'PRAGMA integrity_check'` and follow \
         the recovery steps in the README (\"Recovering from a corrupt spool or database\")"
    )
}

/// `PRAGMA quick_check` at start: a damaged file is refused with the recovery steps instead of
/// failing on some later write.
fn check_integrity(connection: &Connection, shown: &str) -> Result<(), StoreError> {
    let problems = integrity_problems(connection, "quick_check").map_err(|e| {
        StoreError::new(
            format!(
                "failed to check database `{shown}`{}",
                corruption_hint(&e, shown)
            ),
            e,
        )
    })?;
    if problems.is_empty() {
        return Ok(());
    }
    Err(StoreError::new(
        format!(
            "database `{shown}` is corrupt (`PRAGMA quick_check` found {} problem(s)){}",
            problems.len(),
            recovery_steps(shown)
        ),
        problems.into_iter().take(3).collect::<Vec<_>>().join("; "),
    ))
}

/// The problems `PRAGMA quick_check` or `integrity_check` reports; empty when the file is sound.
fn integrity_problems(connection: &Connection, pragma: &str) -> rusqlite::Result<Vec<String>> {
    let mut statement = connection.prepare(&format!("PRAGMA {pragma}"))?;
    let lines = statement
        .query_map([], |row| row.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(lines.into_iter().filter(|line| line != "ok").collect())
}

/// A full `PRAGMA integrity_check` of the file at `path`, opened read-only: the problems found
/// (empty when sound).
pub fn check_database(path: &Path) -> Result<Vec<String>, StoreError> {
    let shown = path.display().to_string();
    let connection = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| StoreError::new(format!("failed to open database `{shown}`"), e))?;
    integrity_problems(&connection, "integrity_check").or_else(|e| {
        if corruption_hint(&e, &shown).is_empty() {
            Err(StoreError::new(
                format!("failed to check database `{shown}`"),
                e,
            ))
        } else {
            Ok(vec![e.to_string()])
        }
    })
}

fn configure(connection: &Connection) -> rusqlite::Result<()> {
    connection.busy_timeout(Duration::from_secs(5))?;
    let mode: String = connection.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(mode, "sqlite refused WAL mode; writes will be slower");
    }
    // FULL: the WAL is synced at every commit, so an acknowledged report survives power loss.
    connection.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")?;
    Ok(())
}

/// Page cache of the writer connection, in KiB (SQLite's default is 2 000). Each heartbeat
/// touches a few pages of its host (row, check results, index entries); with the default
/// cache, a batch of a few hundred hosts spills and rereads pages through the kernel.
const WRITER_CACHE_KIB: i64 = 64 * 1024;

fn migrate(connection: &Connection) -> rusqlite::Result<()> {
    let applied: usize = connection.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(applied) {
        let tx = connection.unchecked_transaction()?;
        tx.execute_batch(migration)?;
        tx.pragma_update(None, "user_version", index + 1)?;
        tx.commit()?;
    }
    if applied > 0 && applied < MIGRATIONS.len() {
        // A migration that builds an index on a large database leaves the whole index in the
        // WAL; until it is checkpointed every read looks pages up there (measured about 10×
        // slower on 100 000 hosts), so fold it into the database file before serving.
        connection.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    }
    Ok(())
}

const HOST_COLUMNS: &str = "id, hostname, fqdn, os_name, os_version, os_full_name, kernel_version, \
    arch, vmsystem, manufacturer, model, chassis_type, serial_number, machine_id, smbios_uuid, \
    primary_mac, agent_version, memory_bytes, swap_bytes, cpu_threads, first_seen_ms, \
    last_seen_ms, last_sequence, clock_skew_ms, identity_conflict, identity_conflict_detail, \
    inventory_hash, dropped_reports_total, vitals, reports_received_total";

fn upsert_host_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        let columns: Vec<&str> = HOST_COLUMNS.split(',').map(str::trim).collect();
        let placeholders: Vec<String> = (1..=columns.len()).map(|n| format!("?{n}")).collect();
        let updates: Vec<String> = columns
            .iter()
            .skip(1)
            .map(|column| format!("{column} = excluded.{column}"))
            .collect();
        format!(
            "INSERT INTO hosts ({}) VALUES ({}) ON CONFLICT (id) DO UPDATE SET {}",
            columns.join(", "),
            placeholders.join(", "),
            updates.join(", ")
        )
    })
}

fn host_from_row(row: &Row<'_>) -> rusqlite::Result<HostRecord> {
    let vitals: String = row.get(28)?;
    Ok(HostRecord {
        id: row.get(0)?,
        hostname: row.get(1)?,
        fqdn: row.get(2)?,
        os_name: row.get(3)?,
        os_version: row.get(4)?,
        os_full_name: row.get(5)?,
        kernel_version: row.get(6)?,
        arch: row.get(7)?,
        vmsystem: row.get(8)?,
        manufacturer: row.get(9)?,
        model: row.get(10)?,
        chassis_type: row.get(11)?,
        serial_number: row.get(12)?,
        machine_id: row.get(13)?,
        smbios_uuid: row.get(14)?,
        primary_mac: row.get(15)?,
        agent_version: row.get(16)?,
        memory_bytes: row.get::<_, i64>(17)? as u64,
        swap_bytes: row.get::<_, i64>(18)? as u64,
        cpu_threads: row.get(19)?,
        first_seen_ms: row.get(20)?,
        last_seen_ms: row.get(21)?,
        last_sequence: row.get::<_, i64>(22)? as u64,
        clock_skew_ms: row.get(23)?,
        identity_conflict: row.get(24)?,
        identity_conflict_detail: row.get(25)?,
        inventory_hash: row.get(26)?,
        dropped_reports_total: row.get::<_, i64>(27)? as u64,
        reports_received_total: row.get::<_, i64>(29)? as u64,
        // Written by this store from a validated message; unreadable only if edited by hand.
        vitals: serde_json::from_str(&vitals).unwrap_or_default(),
        reported_to: String::new(),
    })
}

/// `SELECT` of one host by id, made once: statements on the write path are looked up in the
/// statement cache by their text, so it is not formatted again per report.
static LOAD_HOST_SQL: LazyLock<String> =
    LazyLock::new(|| format!("SELECT {HOST_COLUMNS} FROM hosts WHERE id = ?1"));

/// `INSERT` of a new check result, made once (as [`LOAD_HOST_SQL`]).
static INSERT_CHECK_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO check_results ({SQLITE_CHECK_COLUMNS}) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
    )
});

fn load_host(tx: &Connection, id: &str) -> rusqlite::Result<Option<HostRecord>> {
    tx.prepare_cached(&LOAD_HOST_SQL)?
        .query_row([id], host_from_row)
        .optional()
}

fn save_host(tx: &Connection, host: &HostRecord) -> rusqlite::Result<()> {
    let vitals = serde_json::to_string(&host.vitals).unwrap_or_else(|_| "{}".into());
    // An upsert, not `INSERT OR REPLACE`: replacing deletes the row first, and the cascade
    // would take the host's inventory, changes and check results with it.
    tx.prepare_cached(upsert_host_sql())?.execute(params![
        host.id,
        host.hostname,
        host.fqdn,
        host.os_name,
        host.os_version,
        host.os_full_name,
        host.kernel_version,
        host.arch,
        host.vmsystem,
        host.manufacturer,
        host.model,
        host.chassis_type,
        host.serial_number,
        host.machine_id,
        host.smbios_uuid,
        host.primary_mac,
        host.agent_version,
        host.memory_bytes as i64,
        host.swap_bytes as i64,
        host.cpu_threads,
        host.first_seen_ms,
        host.last_seen_ms,
        host.last_sequence as i64,
        host.clock_skew_ms,
        host.identity_conflict,
        host.identity_conflict_detail,
        host.inventory_hash,
        host.dropped_reports_total as i64,
        vitals,
        host.reports_received_total as i64,
    ])?;
    Ok(())
}

/// Writes the columns every report changes, for a host whose row is otherwise unchanged.
fn save_liveness(tx: &Connection, host: &HostRecord) -> rusqlite::Result<()> {
    let vitals = serde_json::to_string(&host.vitals).unwrap_or_else(|_| "{}".into());
    tx.prepare_cached(
        "UPDATE hosts SET last_seen_ms = ?2, last_sequence = ?3, clock_skew_ms = ?4, \
         dropped_reports_total = ?5, reports_received_total = ?6, vitals = ?7 WHERE id = ?1",
    )?
    .execute(params![
        host.id,
        host.last_seen_ms,
        host.last_sequence as i64,
        host.clock_skew_ms,
        host.dropped_reports_total as i64,
        host.reports_received_total as i64,
        vitals,
    ])?;
    Ok(())
}

/// Fingerprint parts that two reports of one machine always agree on, when both have them.
pub(super) fn other_machine(host: &HostRecord, identity: &HostIdentity) -> Option<String> {
    let differs = |stored: &str, reported: &str| {
        !stored.is_empty() && !reported.is_empty() && !stored.eq_ignore_ascii_case(reported)
    };
    if differs(&host.machine_id, &identity.machine_id) {
        Some(format!(
            "machine-id `{}` (stored: `{}`)",
            identity.machine_id, host.machine_id
        ))
    } else if differs(&host.smbios_uuid, &identity.smbios_uuid) {
        Some(format!(
            "SMBIOS UUID `{}` (stored: `{}`)",
            identity.smbios_uuid, host.smbios_uuid
        ))
    } else {
        None
    }
}

/// Copies the inventory facts that lists and metrics use into the host record.
pub(super) fn apply_inventory(host: &mut HostRecord, inventory: &Inventory) {
    if let Some(os) = &inventory.operatingsystem {
        host.fqdn.clone_from(&os.fqdn);
        host.os_name.clone_from(&os.name);
        host.os_version.clone_from(&os.version);
        host.os_full_name.clone_from(&os.full_name);
        host.kernel_version.clone_from(&os.kernel_version);
        host.arch.clone_from(&os.arch);
    }
    if let Some(bios) = &inventory.bios {
        host.manufacturer.clone_from(&bios.smanufacturer);
        host.model.clone_from(&bios.smodel);
        host.serial_number.clone_from(&bios.ssn);
    }
    if let Some(hardware) = &inventory.hardware {
        host.vmsystem.clone_from(&hardware.vmsystem);
        host.chassis_type.clone_from(&hardware.chassis_type);
        host.memory_bytes = hardware.memory_bytes;
        host.swap_bytes = hardware.swap_bytes;
    }
    host.cpu_threads = inventory.cpus.iter().map(|cpu| cpu.thread).sum();
}

pub(super) fn apply_identity(host: &mut HostRecord, report: &ReportRequest) {
    let identity = report.identity.clone().unwrap_or_default();
    host.hostname = identity.hostname;
    host.machine_id = identity.machine_id;
    host.smbios_uuid = identity.smbios_uuid;
    host.primary_mac = identity.primary_mac;
    host.agent_version.clone_from(&report.agent_version);
}

fn write_one(
    tx: &Transaction<'_>,
    incoming: &IncomingReport,
    policy: WritePolicy,
) -> rusqlite::Result<WriteOutcome> {
    let report = &incoming.report.report;
    let identity = report.identity.clone().unwrap_or_default();
    let now = incoming.received_ms;
    let existing = load_host(tx, &identity.agent_id)?;
    let existing_row = existing.is_some();

    let mut host = match existing {
        Some(host) if report.sequence <= host.last_sequence => return Ok(WriteOutcome::Duplicate),
        Some(mut host) => {
            if let Some(clash) = other_machine(&host, &identity) {
                let live = now - host.last_seen_ms < policy.stale_after_ms;
                if live {
                    let message = format!(
                        "identity conflict: agent id `{}` already reports from another live \
                         machine (`{}`); this machine has {clash}. Its agent state directory \
                         was probably cloned: the agent must pick a new id",
                        identity.agent_id, host.hostname
                    );
                    host.identity_conflict = true;
                    host.identity_conflict_detail = format!(
                        "second machine `{}` with {clash} at {}",
                        identity.hostname,
                        humantime::format_rfc3339_seconds(crate::clock::system_time(now))
                    );
                    save_host(tx, &host)?;
                    return Ok(WriteOutcome::IdentityConflict {
                        message,
                        host: Box::new(host),
                    });
                }
                // The old machine is gone: this is the same agent on new hardware.
                record_changes(
                    tx,
                    &host.id,
                    now,
                    &[document::Change {
                        field: "identity".into(),
                        kind: ChangeKind::Changed,
                        old: serde_json::json!({
                            "machine_id": host.machine_id, "smbios_uuid": host.smbios_uuid }),
                        new: serde_json::json!({
                            "machine_id": identity.machine_id, "smbios_uuid": identity.smbios_uuid }),
                    }],
                )?;
            }
            host
        }
        None => HostRecord {
            id: identity.agent_id.clone(),
            first_seen_ms: now,
            ..Default::default()
        },
    };

    // A heartbeat of a known host, from the same machine and agent version, changes only the
    // liveness columns; the rest of the row is left as it is.
    let liveness_only = existing_row
        && report.inventory.is_none()
        && host.hostname == identity.hostname
        && host.machine_id == identity.machine_id
        && host.smbios_uuid == identity.smbios_uuid
        && host.primary_mac == identity.primary_mac
        && host.agent_version == report.agent_version;
    apply_identity(&mut host, report);
    host.last_seen_ms = now;
    host.last_sequence = report.sequence;
    host.clock_skew_ms = report.agent_time_unix_ms.saturating_sub(now);
    host.dropped_reports_total += report.dropped_reports;
    host.reports_received_total += 1;
    host.vitals = report.vitals.clone().unwrap_or_default();

    let need_full_inventory = match &report.inventory {
        Some(inventory) => {
            apply_inventory(&mut host, inventory);
            host.inventory_hash.clone_from(&report.inventory_hash);
            false
        }
        None => !report.inventory_hash.is_empty() && report.inventory_hash != host.inventory_hash,
    };
    // The host row first: the inventory tables refer to it.
    if liveness_only {
        save_liveness(tx, &host)?;
    } else {
        save_host(tx, &host)?;
    }
    if report.inventory.is_some() {
        let document = incoming
            .report
            .inventory_document
            .as_ref()
            .unwrap_or(&Value::Null);
        store_inventory(tx, &host.id, now, &report.inventory_hash, document)?;
    }
    let checks = store_checks(tx, &host.id, now, report)?;
    Ok(WriteOutcome::Stored {
        need_full_inventory,
        host: Box::new(host),
        checks,
    })
}

fn store_inventory(
    tx: &Transaction<'_>,
    host_id: &str,
    now: i64,
    hash: &str,
    document: &Value,
) -> rusqlite::Result<()> {
    let previous: Option<String> = tx
        .prepare_cached("SELECT document FROM inventories WHERE host_id = ?1")?
        .query_row([host_id], |row| row.get(0))
        .optional()?;
    if let Some(previous) = previous {
        let previous: Value = serde_json::from_str(&previous).unwrap_or(Value::Null);
        record_changes(tx, host_id, now, &document::diff(&previous, document))?;
    }
    tx.prepare_cached(
        "INSERT OR REPLACE INTO inventories (host_id, hash, received_ms, document) \
         VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![host_id, hash, now, document.to_string()])?;
    tx.prepare_cached("DELETE FROM inventory_fields WHERE host_id = ?1")?
        .execute([host_id])?;
    let mut insert = tx.prepare_cached(
        "INSERT INTO inventory_fields (host_id, field, value) VALUES (?1, ?2, ?3)",
    )?;
    for pair in document::flatten(document) {
        insert.execute(params![host_id, pair.field, pair.value])?;
    }
    Ok(())
}

fn record_changes(
    tx: &Transaction<'_>,
    host_id: &str,
    now: i64,
    changes: &[document::Change],
) -> rusqlite::Result<()> {
    let mut insert = tx.prepare_cached(
        "INSERT INTO inventory_changes (host_id, at_ms, field, kind, old, new) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for change in changes {
        insert.execute(params![
            host_id,
            now,
            change.field,
            change.kind.as_str(),
            change.old.to_string(),
            change.new.to_string()
        ])?;
    }
    Ok(())
}

/// The latest run of one check target, as kept in its host's `check_runs` row.
#[derive(Debug)]
struct CheckRun {
    check: String,
    target: String,
    received_ms: i64,
    started_ms: i64,
    duration_seconds: f64,
    measurements: Vec<Measurement>,
}

/// A run in the row's JSON: `[check, target, received_ms, started_ms, duration_seconds,
/// [[name, value, text], …]]`. Positional, not named, because a heartbeat rewrites the whole
/// row: names would double its size, and so the pages each commit writes.
type StoredRun = (String, String, i64, i64, f64, Vec<(String, f64, String)>);

impl From<StoredRun> for CheckRun {
    fn from(
        (check, target, received_ms, started_ms, duration_seconds, measurements): StoredRun,
    ) -> Self {
        CheckRun {
            check,
            target,
            received_ms,
            started_ms,
            duration_seconds,
            measurements: measurements
                .into_iter()
                .map(|(name, value, text)| Measurement { name, value, text })
                .collect(),
        }
    }
}

/// A check's run written as a [`StoredRun`] from its state, without copying it.
struct RunOf<'a>(&'a CheckState);

impl serde::Serialize for RunOf<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        struct Measurements<'a>(&'a [Measurement]);
        impl serde::Serialize for Measurements<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_seq(
                    self.0
                        .iter()
                        .map(|m| (m.name.as_str(), m.value, m.text.as_str())),
                )
            }
        }
        let state = self.0;
        let mut run = serializer.serialize_tuple(6)?;
        run.serialize_element(&state.check)?;
        run.serialize_element(&state.target)?;
        run.serialize_element(&state.received_ms)?;
        run.serialize_element(&state.started_ms)?;
        run.serialize_element(&state.duration_seconds)?;
        run.serialize_element(&Measurements(&state.measurements))?;
        run.end()
    }
}

/// A host's runs in key order. Written by this store; unreadable only if edited by hand, and
/// then its checks read as never run until the next report rewrites the row.
fn decode_runs(text: &str) -> Vec<CheckRun> {
    let runs: Vec<StoredRun> = serde_json::from_str(text).unwrap_or_default();
    let mut runs: Vec<CheckRun> = runs.into_iter().map(CheckRun::from).collect();
    runs.sort_unstable_by(|a, b| (&a.check, &a.target).cmp(&(&b.check, &b.target)));
    runs
}

fn find_run<'a>(
    runs: &'a mut [CheckRun],
    (check, target): CheckKey<'_>,
) -> Option<&'a mut CheckRun> {
    runs.binary_search_by(|run| (run.check.as_str(), run.target.as_str()).cmp(&(check, target)))
        .ok()
        .map(|index| &mut runs[index])
}

/// Sets a check's run fields from its stored run, whose measurements it takes (a run belongs
/// to one check row); a check without a stored run reads as never run.
fn set_run(state: &mut CheckState, run: Option<&mut CheckRun>) {
    if let Some(run) = run {
        state.received_ms = run.received_ms;
        state.started_ms = run.started_ms;
        state.duration_seconds = run.duration_seconds;
        state.measurements = std::mem::take(&mut run.measurements);
    }
}

fn load_runs(connection: &Connection, host_id: &str) -> rusqlite::Result<Vec<CheckRun>> {
    let text: Option<String> = connection
        .prepare_cached("SELECT runs FROM check_runs WHERE host_id = ?1")?
        .query_row([host_id], |row| row.get(0))
        .optional()?;
    Ok(text.as_deref().map(decode_runs).unwrap_or_default())
}

/// Writes the host's runs: one row, whatever the number of checks.
fn save_runs(tx: &Connection, host_id: &str, checks: &[CheckState]) -> rusqlite::Result<()> {
    if checks.is_empty() {
        tx.prepare_cached("DELETE FROM check_runs WHERE host_id = ?1")?
            .execute([host_id])?;
        return Ok(());
    }
    let runs: Vec<RunOf<'_>> = checks.iter().map(RunOf).collect();
    let text = serde_json::to_string(&runs).unwrap_or_else(|_| "[]".into());
    tx.prepare_cached(
        "INSERT INTO check_runs (host_id, runs) VALUES (?1, ?2) \
         ON CONFLICT (host_id) DO UPDATE SET runs = excluded.runs",
    )?
    .execute(params![host_id, text])?;
    Ok(())
}

/// Reads check rows ([`SQLITE_CHECK_COLUMNS`], then their host's runs) in host order,
/// decoding each host's runs once.
#[derive(Default)]
struct CheckRowReader {
    host_id: String,
    runs: Vec<CheckRun>,
}

impl CheckRowReader {
    /// The column of the host's runs.
    const RUNS: usize = 7;

    fn state(&mut self, row: &Row<'_>) -> rusqlite::Result<CheckState> {
        let host_id: String = row.get(0)?;
        if host_id != self.host_id {
            let text: Option<String> = row.get(Self::RUNS)?;
            self.runs = text.as_deref().map(decode_runs).unwrap_or_default();
            self.host_id.clone_from(&host_id);
        }
        let mut state = CheckState {
            host_id,
            check: row.get(1)?,
            kind: row.get(2)?,
            target: row.get(3)?,
            outcome: row.get(4)?,
            reason: row.get(5)?,
            since_ms: row.get(6)?,
            ..CheckState::default()
        };
        let run = find_run(&mut self.runs, (&state.check, &state.target));
        set_run(&mut state, run);
        Ok(state)
    }
}

/// `SELECT` of check rows with their host's runs; `filter` and `order` complete it.
fn check_rows_sql(filter: &str, order: &str) -> String {
    let columns: Vec<String> = SQLITE_CHECK_COLUMNS
        .split(',')
        .map(|column| format!("c.{}", column.trim()))
        .collect();
    format!(
        "SELECT {}, r.runs FROM check_results c \
         LEFT JOIN check_runs r ON r.host_id = c.host_id {filter} ORDER BY {order}",
        columns.join(", ")
    )
}

fn load_host_checks(connection: &Connection, host_id: &str) -> rusqlite::Result<Vec<CheckState>> {
    static SQL: LazyLock<String> =
        LazyLock::new(|| check_rows_sql("WHERE c.host_id = ?1", "c.check_name, c.target"));
    let mut reader = CheckRowReader::default();
    connection
        .prepare_cached(&SQL)?
        .query_map([host_id], |row| reader.state(row))?
        .collect()
}

/// (check, target), borrowed from a report or a stored row.
type CheckKey<'a> = (&'a str, &'a str);

/// A stored check result the report has no run of: kept (with its stored run) unless removed.
struct UnreportedCheck {
    check: String,
    target: String,
    kind: String,
    outcome: String,
    reason: String,
    since_ms: i64,
}

/// What is stored for a check target, as it compares with the report's first run of it.
struct StoredTarget {
    /// The stored outcome when it differs from that run's (the event's old outcome).
    other_outcome: Option<String>,
    /// Kind and reason are that run's.
    same_kind_and_reason: bool,
    since_ms: i64,
}

/// A check target the report has runs of.
struct ReportedTarget<'r> {
    key: CheckKey<'r>,
    /// Its earliest run in the report, the one compared with what is stored.
    first: &'r CheckResult,
    stored: Option<StoredTarget>,
    /// The latest run applied so far, and since when its outcome holds.
    applied: Option<(&'r CheckResult, i64)>,
}

/// A stored text column, borrowed from the row.
fn text_column<'a>(row: &'a Row<'_>, index: usize) -> rusqlite::Result<&'a str> {
    row.get_ref(index)?.as_str().map_err(|error| {
        rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Text, error.into())
    })
}

/// Keeps the latest result per (check, target), records an event whenever a target's outcome
/// changes, and forgets checks the agent no longer has and targets a check no longer reports
/// (a DC removed from DNS). Returns the host's complete set when anything may have changed.
///
/// A heartbeat reads the host's check rows (outcome, reason, since when) and rewrites only
/// those whose outcome, reason or kind changed; the runs (times, duration, measurements) are
/// rewritten as the host's one `check_runs` row. The stored runs are read only when some
/// stored result is not in this report. The writer is the one thread every report passes
/// through, so a stored row is compared where SQLite holds it, in key order against the
/// report's targets, and copied only when it differs or the report has no run of it.
fn store_checks(
    tx: &Transaction<'_>,
    host_id: &str,
    now: i64,
    report: &ReportRequest,
) -> rusqlite::Result<Option<Vec<CheckState>>> {
    let mut configured: Vec<&str> = report.check_names.iter().map(String::as_str).collect();
    configured.sort_unstable();
    let is_configured = |check: &str| configured.binary_search(&check).is_ok();

    // Oldest first, so that of two runs in one report the later one wins.
    let mut results: Vec<&CheckResult> = report.checks.iter().collect();
    results.sort_by_key(|result| result.started_unix_ms);
    let mut reported: Vec<ReportedTarget<'_>> = results
        .iter()
        .map(|result| ReportedTarget {
            key: (result.check.as_str(), result.target.as_str()),
            first: result,
            stored: None,
            applied: None,
        })
        .collect();
    // Stable: of one target's runs the earliest stays first, and is kept.
    reported.sort_by(|a, b| a.key.cmp(&b.key));
    reported.dedup_by(|later, earlier| later.key == earlier.key);
    let slot = |reported: &[ReportedTarget<'_>], key: CheckKey<'_>| {
        reported
            .binary_search_by(|target| target.key.cmp(&key))
            .ok()
    };

    // The stored rows, in the same key order as `reported`.
    let mut unreported: Vec<UnreportedCheck> = Vec::new();
    let mut unconfigured_stored = false;
    {
        let mut statement = tx.prepare_cached(
            "SELECT check_name, target, kind, outcome, reason, since_ms FROM check_results \
             WHERE host_id = ?1 ORDER BY check_name, target",
        )?;
        let mut rows = statement.query([host_id])?;
        let mut next = 0;
        while let Some(row) = rows.next()? {
            let key = (text_column(row, 0)?, text_column(row, 1)?);
            unconfigured_stored |= !is_configured(key.0);
            while next < reported.len() && reported[next].key < key {
                next += 1;
            }
            let (kind, outcome, reason) = (
                text_column(row, 2)?,
                text_column(row, 3)?,
                text_column(row, 4)?,
            );
            let since_ms: i64 = row.get(5)?;
            match reported.get_mut(next) {
                Some(target) if target.key == key => {
                    let first = target.first;
                    target.stored = Some(StoredTarget {
                        other_outcome: (outcome != estate_proto::outcome_name(first.outcome))
                            .then(|| outcome.to_owned()),
                        same_kind_and_reason: kind == first.kind && reason == first.reason,
                        since_ms,
                    });
                }
                _ => unreported.push(UnreportedCheck {
                    check: key.0.to_owned(),
                    target: key.1.to_owned(),
                    kind: kind.to_owned(),
                    outcome: outcome.to_owned(),
                    reason: reason.to_owned(),
                    since_ms,
                }),
            }
        }
    }
    if report.checks.is_empty() && !unconfigured_stored {
        return Ok(None);
    }

    let mut record_event = tx.prepare_cached(
        "INSERT INTO check_events (host_id, check_name, kind, target, at_ms, old_outcome, \
         new_outcome, reason) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    let mut insert = tx.prepare_cached(&INSERT_CHECK_SQL)?;
    let mut change = tx.prepare_cached(
        "UPDATE check_results SET kind = ?4, outcome = ?5, reason = ?6, since_ms = ?7 \
         WHERE host_id = ?1 AND check_name = ?2 AND target = ?3",
    )?;
    for &result in &results {
        let outcome = estate_proto::outcome_name(result.outcome);
        let key = (result.check.as_str(), result.target.as_str());
        let Some(index) = slot(&reported, key) else {
            continue;
        };
        let target = &mut reported[index];
        // The outcome before this run, whether the row already holds this run's kind, outcome
        // and reason, and since when that outcome holds.
        let previous: Option<(&str, bool, i64)> = match (&target.applied, &target.stored) {
            (Some((earlier, since)), _) => {
                let earlier_outcome = estate_proto::outcome_name(earlier.outcome);
                Some((
                    earlier_outcome,
                    earlier_outcome == outcome
                        && earlier.kind == result.kind
                        && earlier.reason == result.reason,
                    *since,
                ))
            }
            (None, Some(stored)) => Some((
                stored.other_outcome.as_deref().unwrap_or(outcome),
                stored.other_outcome.is_none() && stored.same_kind_and_reason,
                stored.since_ms,
            )),
            (None, None) => None,
        };
        let since = match previous {
            Some((previous, _, since)) if previous == outcome => since,
            _ => {
                record_event.execute(params![
                    host_id,
                    result.check,
                    result.kind,
                    result.target,
                    now,
                    previous.map(|(outcome, _, _)| outcome),
                    outcome,
                    result.reason
                ])?;
                now
            }
        };
        match previous {
            None => {
                insert.execute(params![
                    host_id,
                    result.check,
                    result.kind,
                    result.target,
                    outcome,
                    result.reason,
                    since
                ])?;
            }
            Some((_, false, _)) => {
                change.execute(params![
                    host_id,
                    result.check,
                    result.target,
                    result.kind,
                    outcome,
                    result.reason,
                    since
                ])?;
            }
            Some((_, true, _)) => {}
        }
        target.applied = Some((result, since));
    }

    // The latest run of each reported check: a target whose run is older is no longer one
    // of the check's.
    let mut latest_run: Vec<(&str, i64)> = results
        .iter()
        .map(|result| (result.check.as_str(), result.started_unix_ms))
        .collect();
    latest_run.sort_unstable();
    latest_run.reverse();
    latest_run.dedup_by_key(|(check, _)| *check);
    let outdated = |check: &str, started_ms: i64| {
        latest_run
            .binary_search_by(|(name, _)| check.cmp(name))
            .is_ok_and(|index| started_ms < latest_run[index].1)
    };
    // The runs of stored results this report did not renew, kept as they were.
    let mut stored_runs = if unreported.is_empty() {
        Vec::new()
    } else {
        load_runs(tx, host_id)?
    };
    let mut removed: Vec<CheckKey<'_>> = Vec::new();
    let mut complete = Vec::with_capacity(reported.len() + unreported.len());
    for target in &reported {
        let Some((result, since)) = target.applied else {
            continue;
        };
        if (target.stored.is_some() && !is_configured(target.key.0))
            || outdated(target.key.0, result.started_unix_ms)
        {
            removed.push(target.key);
            continue;
        }
        complete.push(CheckState {
            host_id: host_id.to_owned(),
            check: result.check.clone(),
            kind: result.kind.clone(),
            target: result.target.clone(),
            outcome: estate_proto::outcome_name(result.outcome).to_owned(),
            reason: result.reason.clone(),
            since_ms: since,
            received_ms: now,
            started_ms: result.started_unix_ms,
            duration_seconds: result.duration_seconds,
            measurements: result.measurements.clone(),
        });
    }
    for stored in &unreported {
        let key = (stored.check.as_str(), stored.target.as_str());
        let run = find_run(&mut stored_runs, key);
        let started_ms = run.as_ref().map_or(i64::MIN, |run| run.started_ms);
        if !is_configured(key.0) || outdated(key.0, started_ms) {
            removed.push(key);
            continue;
        }
        let mut state = CheckState {
            host_id: host_id.to_owned(),
            check: stored.check.clone(),
            kind: stored.kind.clone(),
            target: stored.target.clone(),
            outcome: stored.outcome.clone(),
            reason: stored.reason.clone(),
            since_ms: stored.since_ms,
            ..CheckState::default()
        };
        set_run(&mut state, run);
        complete.push(state);
    }
    let mut delete = tx.prepare_cached(
        "DELETE FROM check_results WHERE host_id = ?1 AND check_name = ?2 AND target = ?3",
    )?;
    for (check, target) in &removed {
        delete.execute(params![host_id, check, target])?;
    }
    if !unreported.is_empty() {
        complete.sort_unstable_by(|a, b| (&a.check, &a.target).cmp(&(&b.check, &b.target)));
    }
    save_runs(tx, host_id, &complete)?;
    Ok(Some(complete))
}

impl Store for SqliteStore {
    fn write_batch(
        &self,
        reports: &[IncomingReport],
        policy: WritePolicy,
    ) -> Result<Vec<WriteOutcome>, StoreError> {
        let mut connection = self
            .writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let context = || format!("failed to write a batch to `{}`", self.path.display());
        let tx = connection
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| StoreError::new(context(), e))?;
        let mut outcomes = Vec::with_capacity(reports.len());
        for report in reports {
            outcomes.push(write_one(&tx, report, policy).map_err(|e| {
                StoreError::new(
                    format!(
                        "{} (report of agent `{}`)",
                        context(),
                        report.report.agent_id()
                    ),
                    e,
                )
            })?);
        }
        tx.commit().map_err(|e| StoreError::new(context(), e))?;
        Ok(outcomes)
    }

    fn create_token(&self, token: &NewToken) -> Result<(), StoreError> {
        self.write("store a token", |connection| {
            insert_token(connection, token, None)
        })
    }

    fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.read("list tokens", |connection| {
            let mut statement = connection.prepare(&format!(
                "SELECT {TOKEN_COLUMNS} FROM agent_tokens ORDER BY created_ms, id"
            ))?;
            statement
                .query_map([], token_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
    }

    fn revoke_token(&self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        self.write("revoke a token", |connection| {
            let changed = connection.execute(
                "UPDATE agent_tokens SET revoked_ms = coalesce(revoked_ms, ?2) WHERE id = ?1",
                params![id, now_ms],
            )?;
            Ok(changed > 0)
        })
    }

    fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>, StoreError> {
        self.read("look up a token", |connection| {
            connection
                .query_row(
                    &format!("SELECT {TOKEN_COLUMNS} FROM agent_tokens WHERE hash = ?1"),
                    [hash],
                    token_from_row,
                )
                .optional()
        })
    }

    fn touch_token(&self, id: &str, now_ms: i64) -> Result<(), StoreError> {
        self.write("record a token's use", |connection| {
            connection.execute(
                "UPDATE agent_tokens SET last_used_ms = max(coalesce(last_used_ms, 0), ?2) \
                 WHERE id = ?1",
                params![id, now_ms],
            )?;
            Ok(())
        })
    }

    fn exchange_enrollment(
        &self,
        enrollment_hash: &str,
        agent: &NewToken,
    ) -> Result<ExchangeOutcome, StoreError> {
        self.write("exchange an enrollment secret", |connection| {
            let tx = connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let enrollment = tx
                .query_row(
                    &format!(
                        "SELECT {TOKEN_COLUMNS} FROM agent_tokens \
                         WHERE hash = ?1 AND kind = 'enrollment'"
                    ),
                    [enrollment_hash],
                    token_from_row,
                )
                .optional()?;
            let Some(enrollment) = enrollment else {
                return Ok(ExchangeOutcome::Refused(TokenRefusal::Unknown));
            };
            if let Some(refusal) = enrollment.unusable_at(agent.created_ms) {
                return Ok(ExchangeOutcome::Refused(refusal));
            }
            tx.execute(
                "UPDATE agent_tokens SET uses_left = uses_left - 1, last_used_ms = ?2 WHERE id = ?1",
                params![enrollment.id, agent.created_ms],
            )?;
            insert_token(&tx, agent, Some(&enrollment.id))?;
            tx.commit()?;
            Ok(ExchangeOutcome::Issued {
                enrollment_id: enrollment.id,
            })
        })
    }

    fn load_hosts(&self) -> Result<Vec<HostRecord>, StoreError> {
        self.read("load hosts", |connection| {
            let mut statement = connection.prepare(&format!("SELECT {HOST_COLUMNS} FROM hosts"))?;
            statement
                .query_map([], host_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
    }

    fn load_checks(&self) -> Result<Vec<CheckState>, StoreError> {
        self.read("load check results", |connection| {
            let mut reader = CheckRowReader::default();
            connection
                .prepare(&check_rows_sql("", "c.host_id, c.check_name, c.target"))?
                .query_map([], |row| reader.state(row))?
                .collect()
        })
    }

    fn list_checks(&self, query: &CheckQuery) -> Result<CheckPage, StoreError> {
        let ListQuery { text, args, limit } = query::checks(Dialect::Sqlite, query);
        let mut checks = self.read("list check results", |connection| {
            let mut reader = CheckRowReader::default();
            connection
                .prepare_cached(&text)?
                .query_map(rusqlite::params_from_iter(sqlite_args(args)), |row| {
                    // After the check's columns and its host's runs.
                    let hostname = row.get::<_, String>(CheckRowReader::RUNS + 1)?;
                    Ok((hostname, reader.state(row)?))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()
        })?;
        let next = split_page(&mut checks, limit, |(_, c)| {
            (c.host_id.clone(), c.check.clone(), c.target.clone())
        });
        Ok(CheckPage { checks, next })
    }

    fn list_events(&self, query: &EventQuery) -> Result<EventPage, StoreError> {
        let ListQuery { text, args, limit } = query::events(Dialect::Sqlite, query);
        let mut events = self.read("list check events", |connection| {
            connection
                .prepare_cached(&text)?
                .query_map(rusqlite::params_from_iter(sqlite_args(args)), |row| {
                    Ok(CheckEvent {
                        id: row.get(0)?,
                        host_id: row.get(1)?,
                        hostname: row.get(2)?,
                        check: row.get(3)?,
                        kind: row.get(4)?,
                        target: row.get(5)?,
                        at_ms: row.get(6)?,
                        old_outcome: row.get(7)?,
                        new_outcome: row.get(8)?,
                        reason: row.get(9)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()
        })?;
        let next_before_id = split_page(&mut events, limit, |event| event.id);
        Ok(EventPage {
            events,
            next_before_id,
        })
    }

    fn list_hosts(&self, query: &HostQuery) -> Result<HostPage, StoreError> {
        let limit = query.limit.max(1);
        let (mut hosts, path) = self.read("list hosts", |connection| {
            // One snapshot for the counts and the queries they choose.
            let snapshot = connection.unchecked_transaction()?;
            read_host_page(&mut SqliteHostReader(&snapshot), query, &self.filter_counts)
        })?;
        tracing::debug!(?path, rows = hosts.len(), "host list");
        let next = split_page(&mut hosts, limit, |host| HostCursor {
            hostname: host.hostname.clone(),
            id: host.id.clone(),
        });
        Ok(HostPage { hosts, next })
    }

    fn host_detail(&self, id: &str) -> Result<Option<HostDetail>, StoreError> {
        self.read("read a host", |connection| {
            let Some(host) = load_host(connection, id)? else {
                return Ok(None);
            };
            let inventory: Option<(String, i64)> = connection
                .prepare_cached("SELECT document, received_ms FROM inventories WHERE host_id = ?1")?
                .query_row([id], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()?;
            let checks = load_host_checks(connection, id)?;
            Ok(Some(HostDetail {
                host,
                inventory: inventory
                    .as_ref()
                    .map(|(text, _)| serde_json::from_str(text).unwrap_or(Value::Null)),
                inventory_received_ms: inventory.map(|(_, at)| at),
                checks,
            }))
        })
    }

    fn delete_host(&self, id: &str) -> Result<Option<HostRecord>, StoreError> {
        let connection = self
            .writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // The other tables refer to `hosts` with `ON DELETE CASCADE` (foreign keys are on).
        connection
            .prepare_cached(&format!(
                "DELETE FROM hosts WHERE id = ?1 RETURNING {HOST_COLUMNS}"
            ))
            .and_then(|mut statement| statement.query_row([id], host_from_row).optional())
            .map_err(|e| {
                StoreError::new(
                    format!("failed to delete host `{id}` in `{}`", self.path.display()),
                    e,
                )
            })
    }

    fn host_changes(
        &self,
        id: &str,
        query: &ChangeQuery,
    ) -> Result<Option<ChangePage>, StoreError> {
        self.read("read inventory changes", |connection| {
            if load_host(connection, id)?.is_none() {
                return Ok(None);
            }
            let limit = query.limit.max(1);
            let mut statement = connection.prepare_cached(
                "SELECT id, at_ms, field, kind, old, new FROM inventory_changes \
                 WHERE host_id = ?1 AND id > ?2 AND at_ms >= ?3 ORDER BY id LIMIT ?4",
            )?;
            let mut changes = statement
                .query_map(
                    params![
                        id,
                        query.after_id.unwrap_or(0),
                        query.since_ms.unwrap_or(i64::MIN),
                        (limit + 1) as i64
                    ],
                    |row| {
                        let kind: String = row.get(3)?;
                        let old: String = row.get(4)?;
                        let new: String = row.get(5)?;
                        Ok(ChangeRecord {
                            id: row.get(0)?,
                            at_ms: row.get(1)?,
                            field: row.get(2)?,
                            kind: ChangeKind::parse(&kind).unwrap_or(ChangeKind::Changed),
                            old: serde_json::from_str(&old).unwrap_or(Value::Null),
                            new: serde_json::from_str(&new).unwrap_or(Value::Null),
                        })
                    },
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let next_after_id = if changes.len() > limit {
                changes.truncate(limit);
                changes.last().map(|change| change.id)
            } else {
                None
            };
            Ok(Some(ChangePage {
                changes,
                next_after_id,
            }))
        })
    }
}

/// A reader connection inside its snapshot, running the statements of a host page.
struct SqliteHostReader<'a>(&'a Connection);

impl HostPageReader for SqliteHostReader<'_> {
    type Error = rusqlite::Error;
    const DIALECT: Dialect = Dialect::Sqlite;
    /// The window's end is read from the covering `hosts_by_hostname` alone, a fraction of the
    /// walk's cost, and bounds the walk's range in the index.
    const WALKS_COUNTED_WINDOW: bool = false;

    /// The largest rowid: the number of hosts, or a little more after deletions.
    fn estimated_hosts(&mut self) -> rusqlite::Result<i64> {
        self.0
            .prepare_cached("SELECT coalesce(max(rowid), 0) FROM hosts")?
            .query_row([], |row| row.get(0))
    }

    fn count(&mut self, text: &str, args: Vec<SqlArg>) -> rusqlite::Result<i64> {
        self.0
            .prepare_cached(text)?
            .query_row(rusqlite::params_from_iter(sqlite_args(args)), |row| {
                row.get(0)
            })
    }

    fn window_end(
        &mut self,
        text: &str,
        args: Vec<SqlArg>,
    ) -> rusqlite::Result<Option<HostCursor>> {
        self.0
            .prepare_cached(text)?
            .query_row(rusqlite::params_from_iter(sqlite_args(args)), |row| {
                Ok(HostCursor {
                    hostname: row.get(0)?,
                    id: row.get(1)?,
                })
            })
            .optional()
    }

    fn hosts(&mut self, query: &HostQuery, plan: &HostPlan) -> rusqlite::Result<Vec<HostRecord>> {
        run_host_query(self.0, query, plan)
    }
}

/// The shared list queries' parameters as SQLite values (a flag is an integer).
fn run_host_query(
    connection: &Connection,
    query: &HostQuery,
    plan: &HostPlan,
) -> rusqlite::Result<Vec<HostRecord>> {
    let ListQuery { text, args, .. } = query::hosts(Dialect::Sqlite, HOST_COLUMNS, query, plan);
    connection
        .prepare_cached(&text)?
        .query_map(rusqlite::params_from_iter(sqlite_args(args)), host_from_row)?
        .collect()
}

fn sqlite_args(args: Vec<SqlArg>) -> Vec<rusqlite::types::Value> {
    args.into_iter()
        .map(|arg| match arg {
            SqlArg::Text(text) => text.into(),
            SqlArg::Int(number) => number.into(),
            SqlArg::Bool(flag) => i64::from(flag).into(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::host_page::HostPath;
    use crate::store::host_page::field_query;
    use crate::store::{FieldFilter, ValuePattern};
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn the_reader_pool_lends_every_connection_and_takes_each_back() {
        let pool = ReaderPool::new(vec![
            Connection::open_in_memory().unwrap(),
            Connection::open_in_memory().unwrap(),
        ]);
        // More queries at once than connections: the extra ones wait, none is refused.
        let answered = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    for _ in 0..50 {
                        let connection = pool.take();
                        let one: i64 = connection
                            .query_row("SELECT 1", [], |row| row.get(0))
                            .unwrap();
                        answered.fetch_add(one as usize, Ordering::Relaxed);
                    }
                });
            }
        });
        assert_eq!(answered.load(Ordering::Relaxed), 400);
        // A query that panics still gives its connection back.
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _connection = pool.take();
            panic!("the query failed");
        }));
        assert!(panicked.is_err());
        assert_eq!(pool.idle.lock().unwrap().len(), 2);
    }

    /// A database of `hosts` hosts `h000…` (hostnames `host-000…`), each with the fields
    /// `fields(n)` gives, written straight into the tables (with the host row's copies of
    /// them, as the write path keeps).
    fn database(hosts: usize, fields: impl Fn(usize) -> Vec<(&'static str, String)>) -> Connection {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("estate.db");
        drop(SqliteStore::open(&path).unwrap());
        let mut connection = Connection::open(&path).unwrap();
        configure_reader(&connection).unwrap();
        // The directory may go: the open connection keeps the file.
        std::mem::forget(dir);
        let tx = connection.transaction().unwrap();
        for n in 0..hosts {
            let id = format!("h{n:03}");
            tx.execute(
                "INSERT INTO hosts (id, hostname, first_seen_ms, last_seen_ms, last_sequence) \
                 VALUES (?1, ?2, 0, 0, 1)",
                params![id, format!("host-{n:03}")],
            )
            .unwrap();
            for (field, value) in fields(n) {
                tx.execute(
                    "INSERT INTO inventory_fields (host_id, field, value) VALUES (?1, ?2, ?3)",
                    params![id, field, value],
                )
                .unwrap();
                if let Some(column) = query::host_column_of(field) {
                    tx.execute(
                        &format!("UPDATE hosts SET {column} = ?2 WHERE id = ?1"),
                        params![id, value],
                    )
                    .unwrap();
                }
            }
        }
        tx.commit().unwrap();
        connection
    }

    fn vendor(n: usize) -> Vec<(&'static str, String)> {
        let vendor = match n {
            7 | 150 => "Acme",
            _ if n.is_multiple_of(2) => "Dell Inc.",
            _ => "HPE",
        };
        let serial = format!("SN{n:05}");
        vec![("bios.smanufacturer", vendor.into()), ("bios.ssn", serial)]
    }

    fn page(
        connection: &Connection,
        fields: &[(&str, &str)],
        limit: usize,
    ) -> (Vec<String>, HostPath) {
        let (hosts, path) = read_host_page(
            &mut SqliteHostReader(connection),
            &field_query(fields, limit),
            &FilterCounts::default(),
        )
        .unwrap();
        (hosts.into_iter().map(|host| host.id).collect(), path)
    }

    #[test]
    fn each_query_shape_takes_the_path_that_reads_least() {
        // 200 hosts, pages of 4: the crossover is sqrt(5 * 200) = 32 matches.
        let connection = database(200, vendor);
        let (ids, path) = page(&connection, &[("bios.smanufacturer", "dell*")], 4);
        assert_eq!(
            (ids, path),
            (
                vec!["h000", "h002", "h004", "h006", "h008"]
                    .into_iter()
                    .map(String::from)
                    .collect(),
                HostPath::Walk
            )
        );
        let (ids, path) = page(&connection, &[("bios.smanufacturer", "acme")], 4);
        assert_eq!(
            (ids, path),
            (
                vec!["h007".to_owned(), "h150".to_owned()],
                HostPath::Collect
            )
        );
        // The broad filter does not drive: the selective one collects, the broad one probes.
        let (ids, path) = page(
            &connection,
            &[("bios.smanufacturer", "*"), ("bios.ssn", "SN0019*")],
            4,
        );
        assert_eq!(ids.len(), 5, "{ids:?}");
        assert_eq!(path, HostPath::Collect);
        // Broad alone, empty together: the walk gives up after its window.
        let (ids, path) = page(
            &connection,
            &[("bios.smanufacturer", "Dell*"), ("bios.ssn", "*1")],
            4,
        );
        assert!(ids.is_empty(), "{ids:?}");
        assert_eq!(path, HostPath::WalkThenCollect);
        // A substring cannot be counted: walked, then collected after the window when rare.
        let (ids, path) = page(&connection, &[("bios.smanufacturer", "*cm*")], 4);
        assert_eq!(
            (ids, path),
            (
                vec!["h007".to_owned(), "h150".to_owned()],
                HostPath::WalkThenCollect
            )
        );
        // Half the hosts match: a page of 2 fills within the quarter window of 6 hosts.
        let (ids, path) = page(&connection, &[("bios.smanufacturer", "*p*")], 2);
        assert_eq!((ids.len(), path), (3, HostPath::Walk));
        let (ids, path) = page(&connection, &[], 4);
        assert_eq!((ids.len(), path), (5, HostPath::Unfiltered));
    }

    /// The plan SQLite chooses for `text` with `args` bound, one line per step.
    fn plan(connection: &Connection, text: &str, args: Vec<SqlArg>) -> String {
        let mut statement = connection
            .prepare(&format!("EXPLAIN QUERY PLAN {text}"))
            .unwrap();
        statement
            .query_map(rusqlite::params_from_iter(sqlite_args(args)), |row| {
                row.get::<_, String>(3)
            })
            .unwrap()
            .collect::<rusqlite::Result<Vec<_>>>()
            .unwrap()
            .join("\n")
    }

    #[test]
    fn the_walk_reads_hosts_in_order_and_probes_by_index() {
        let connection = database(10, vendor);
        let query = HostQuery {
            fields: vec![FieldFilter {
                field: "bios.smanufacturer".into(),
                pattern: ValuePattern::Glob("Dell*".into()),
            }],
            after: Some(HostCursor {
                hostname: "host-002".into(),
                id: "h002".into(),
            }),
            limit: 100,
            ..HostQuery::default()
        };
        let until = HostCursor {
            hostname: "host-008".into(),
            id: "h008".into(),
        };
        let ListQuery { text, args, .. } = query::hosts(
            Dialect::Sqlite,
            HOST_COLUMNS,
            &query,
            &HostPlan::Walk { until: Some(until) },
        );
        let walk = plan(&connection, &text, args);
        assert!(
            walk.contains("SEARCH hosts USING INDEX hosts_by_hostname (hostname>? AND hostname<?)"),
            "{walk}"
        );
        assert!(!walk.contains("TEMP B-TREE"), "{walk}");
        // The vendor's column is read from the index alone (the hosts that fail it cost no
        // table seek: SQLite defers it until a column outside the index is needed).
        let ListQuery { text, args, .. } = query::hosts(
            Dialect::Sqlite,
            HOST_COLUMNS,
            &query,
            &HostPlan::Walk { until: None },
        );
        // (opcode, p1, p2, p3) of each instruction.
        let program: Vec<(String, i64, i64, i64)> = connection
            .prepare(&format!("EXPLAIN {text}"))
            .unwrap()
            .query_map(rusqlite::params_from_iter(sqlite_args(args)), |row| {
                Ok((row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?))
            })
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        let table = program
            .iter()
            .find(|(op, ..)| op == "DeferredSeek")
            .unwrap_or_else(|| panic!("no deferred seek: {program:?}"))
            .3;
        let manufacturer: i64 = connection
            .query_row(
                "SELECT cid FROM pragma_table_info('hosts') WHERE name = 'manufacturer'",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert!(
            !program.iter().any(|(op, cursor, column, _)| op == "Column"
                && *cursor == table
                && *column == manufacturer),
            "the vendor is read from the table row: {program:?}"
        );
        assert!(
            walk.contains(
                "USING COVERING INDEX inventory_fields_by_host_field \
                 (host_id=? AND field=? AND value>? AND value<?)"
            ),
            "{walk}"
        );
        let (text, args) =
            query::count_field_matches(Dialect::Sqlite, &query.fields[0], 10).unwrap();
        let count = plan(&connection, &text, args);
        assert!(
            count.contains(
                "USING COVERING INDEX inventory_fields_by_value (field=? AND value>? AND value<?)"
            ),
            "{count}"
        );
        let ListQuery { text, args, .. } = query::hosts(
            Dialect::Sqlite,
            HOST_COLUMNS,
            &query,
            &HostPlan::Collect { driver: 0 },
        );
        let collect = plan(&connection, &text, args);
        assert!(
            collect.contains(
                "USING COVERING INDEX inventory_fields_by_value (field=? AND value>? AND value<?)"
            ),
            "{collect}"
        );
        let (text, args) = query::host_window_end(Dialect::Sqlite, query.after.as_ref(), 5);
        let window = plan(&connection, &text, args);
        assert!(
            window.contains("SEARCH hosts USING COVERING INDEX hosts_by_hostname (hostname>?)"),
            "{window}"
        );
    }

    #[test]
    fn a_filtered_page_is_not_prepared_again_for_each_pattern() {
        let connection = database(10, vendor);
        let query = |vendor: &str| HostQuery {
            os: Some("linux".into()),
            fields: vec![FieldFilter {
                field: "bios.smanufacturer".into(),
                pattern: ValuePattern::Glob(format!("{vendor}*")),
            }],
            limit: 100,
            ..HostQuery::default()
        };
        let walk = HostPlan::Walk { until: None };
        let text = query::hosts(Dialect::Sqlite, HOST_COLUMNS, &query("Dell"), &walk).text;
        let mut statement = connection.prepare_cached(&text).unwrap();
        for vendor in ["Dell", "HP", "Acme", "Dell"] {
            let ListQuery {
                text: again, args, ..
            } = query::hosts(Dialect::Sqlite, HOST_COLUMNS, &query(vendor), &walk);
            assert_eq!(again, text);
            let rows = statement
                .query_map(rusqlite::params_from_iter(sqlite_args(args)), host_from_row)
                .unwrap()
                .count();
            assert!(rows <= 10);
        }
        assert_eq!(
            statement.get_status(rusqlite::StatementStatus::RePrepare),
            0
        );
    }

    #[test]
    fn a_database_from_before_the_host_field_index_gains_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("estate.db");
        {
            let connection = Connection::open(&path).unwrap();
            for migration in &MIGRATIONS[..3] {
                connection.execute_batch(migration).unwrap();
            }
            connection.pragma_update(None, "user_version", 3).unwrap();
            connection
                .execute_batch(
                    "INSERT INTO hosts (id, hostname, first_seen_ms, last_seen_ms, last_sequence) \
                     VALUES ('a', 'host-a', 0, 0, 1); \
                     INSERT INTO inventory_fields VALUES ('a', 'bios.smanufacturer', 'Dell Inc.');",
                )
                .unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        let indexes: Vec<String> = store
            .read("list indexes", |connection| {
                connection
                    .prepare(
                        "SELECT name FROM sqlite_master \
                         WHERE type = 'index' AND tbl_name = 'inventory_fields' ORDER BY name",
                    )?
                    .query_map([], |row| row.get(0))?
                    .collect()
            })
            .unwrap();
        assert_eq!(
            indexes,
            [
                "inventory_fields_by_host_field",
                "inventory_fields_by_value"
            ]
        );
        let page = store
            .list_hosts(&HostQuery {
                fields: vec![FieldFilter {
                    field: "bios.smanufacturer".into(),
                    pattern: ValuePattern::Glob("dell*".into()),
                }],
                limit: 10,
                ..HostQuery::default()
            })
            .unwrap();
        assert_eq!(page.hosts.len(), 1);
        let host_order: Vec<String> = store
            .read("list the host order's columns", |connection| {
                connection
                    .prepare(
                        "SELECT name FROM pragma_index_info('hosts_by_hostname') ORDER BY seqno",
                    )?
                    .query_map([], |row| row.get(0))?
                    .collect()
            })
            .unwrap();
        assert_eq!(host_order[..3], ["hostname", "id", "manufacturer"]);
        // The migration's pages were folded into the database file at open.
        let wal = std::fs::metadata(dir.path().join("estate.db-wal")).map_or(0, |m| m.len());
        assert_eq!(wal, 0, "the WAL still holds the migration ({wal} bytes)");
    }

    /// Check results stored one row per check and target, runs included, keep their runs
    /// when the runs move to one row per host.
    #[test]
    fn a_database_with_runs_in_check_rows_keeps_them_in_the_hosts_run_row() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("estate.db");
        {
            let connection = Connection::open(&path).unwrap();
            for migration in &MIGRATIONS[..5] {
                connection.execute_batch(migration).unwrap();
            }
            connection.pragma_update(None, "user_version", 5).unwrap();
            connection
                .execute_batch(
                    r#"INSERT INTO hosts (id, hostname, first_seen_ms, last_seen_ms, last_sequence)
                       VALUES ('a', 'host-a', 0, 0, 1), ('b', 'host-b', 0, 0, 1);
                       INSERT INTO check_results VALUES
                         ('a', 'web', 'www:443', 'https', 'pass', '', 100, 900, 850, 0.25,
                          '[{"name":"status","value":200.0,"text":"ok"}]'),
                         ('a', 'dns', 'ns1', 'dns', 'fail', 'timed out', 200, 910, 860, 5.0, '[]'),
                         ('b', 'web', 'www:443', 'https', 'pass', '', 300, 920, 870, 0.5, '[]');"#,
                )
                .unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        let summary: Vec<String> = store
            .load_checks()
            .unwrap()
            .into_iter()
            .map(|c| {
                format!(
                    "{} {} {} {} since {} received {} started {} took {} measured {:?}",
                    c.host_id,
                    c.check,
                    c.target,
                    c.outcome,
                    c.since_ms,
                    c.received_ms,
                    c.started_ms,
                    c.duration_seconds,
                    c.measurements
                        .iter()
                        .map(|m| format!("{}={}{}", m.name, m.value, m.text))
                        .collect::<Vec<_>>()
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                "a dns ns1 fail since 200 received 910 started 860 took 5 measured []",
                "a web www:443 pass since 100 received 900 started 850 took 0.25 \
                 measured [\"status=200ok\"]",
                "b web www:443 pass since 300 received 920 started 870 took 0.5 measured []",
            ]
        );
        let columns: Vec<String> = store
            .read("list the check rows' columns", |connection| {
                connection
                    .prepare("SELECT name FROM pragma_table_info('check_results') ORDER BY cid")?
                    .query_map([], |row| row.get(0))?
                    .collect()
            })
            .unwrap();
        assert_eq!(
            columns,
            [
                "host_id",
                "check_name",
                "target",
                "kind",
                "outcome",
                "reason",
                "since_ms"
            ]
        );
    }
}
