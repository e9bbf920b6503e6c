//! The shared store: PostgreSQL, for an organisation that outgrows one collector. Several
//! collectors may use one database; each batch from a collector's writer is one transaction of
//! set-based statements (`UNNEST` of column arrays), and each row of `hosts` records which
//! collector stored the host's last report (`reported_to`), from which the collectors share out
//! `/metrics` (ARCHITECTURE.md, "Several collectors, one database").
//!
//! `postgres` is the synchronous client: the [`Store`] trait is called from blocking threads.
//! TLS to the database is rustls with the ring provider; `sslmode` is read by this module
//! (`disable`, `prefer`, `require`, `verify-ca`, `verify-full`, with `sslrootcert`), since the
//! client library knows only the first three and never verifies a certificate itself.

use super::host_page::{FilterCounts, HostPageReader, read_host_page};
use super::query::{
    self, CHECK_COLUMNS, Dialect, HostPlan, ListQuery, SqlArg, TOKEN_COLUMNS, split_page,
};
use super::sqlite::{apply_identity, apply_inventory, other_machine};
use super::{
    ChangePage, ChangeQuery, ChangeRecord, CheckEvent, CheckPage, CheckQuery, CheckState,
    CollectorView, EventPage, EventQuery, ExchangeOutcome, HostCursor, HostDetail, HostOwner,
    HostPage, HostQuery, HostRecord, IncomingReport, NewToken, Store, StoreError, TokenRecord,
    TokenRefusal, WriteOutcome, WritePolicy,
};
use crate::document::{self, ChangeKind};
use estate_proto::v1::CheckResult;
use postgres::types::ToSql;
use postgres::{Client, GenericClient, IsolationLevel, NoTls, Row, Statement, Transaction};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use tokio_postgres_rustls::MakeRustlsConnect;

/// Schema migrations, applied in order; `schema_version` records how many ran. Key columns
/// use the `C` collation so that keyset pagination orders exactly as SQLite does (bytewise).
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE hosts (
    id TEXT COLLATE "C" PRIMARY KEY,
    hostname TEXT COLLATE "C" NOT NULL,
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
    memory_bytes BIGINT NOT NULL DEFAULT 0,
    swap_bytes BIGINT NOT NULL DEFAULT 0,
    cpu_threads BIGINT NOT NULL DEFAULT 0,
    first_seen_ms BIGINT NOT NULL,
    last_seen_ms BIGINT NOT NULL,
    last_sequence BIGINT NOT NULL,
    clock_skew_ms BIGINT NOT NULL DEFAULT 0,
    identity_conflict BOOLEAN NOT NULL DEFAULT FALSE,
    identity_conflict_detail TEXT NOT NULL DEFAULT '',
    inventory_hash TEXT NOT NULL DEFAULT '',
    dropped_reports_total BIGINT NOT NULL DEFAULT 0,
    vitals TEXT NOT NULL DEFAULT '{}',
    reported_to TEXT NOT NULL DEFAULT ''
);
CREATE INDEX hosts_by_hostname ON hosts ((lower(hostname)), id);
CREATE INDEX hosts_by_last_seen ON hosts (last_seen_ms);

CREATE TABLE inventories (
    host_id TEXT COLLATE "C" PRIMARY KEY REFERENCES hosts (id) ON DELETE CASCADE,
    hash TEXT NOT NULL,
    received_ms BIGINT NOT NULL,
    document TEXT NOT NULL
);

CREATE TABLE inventory_fields (
    host_id TEXT COLLATE "C" NOT NULL REFERENCES hosts (id) ON DELETE CASCADE,
    field TEXT COLLATE "C" NOT NULL,
    value TEXT NOT NULL
);
CREATE INDEX inventory_fields_by_value
    ON inventory_fields (field, (lower(value)) text_pattern_ops, host_id);
CREATE INDEX inventory_fields_by_host ON inventory_fields (host_id);

CREATE TABLE inventory_changes (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    host_id TEXT COLLATE "C" NOT NULL REFERENCES hosts (id) ON DELETE CASCADE,
    at_ms BIGINT NOT NULL,
    field TEXT NOT NULL,
    kind TEXT NOT NULL,
    old TEXT NOT NULL,
    new TEXT NOT NULL
);
CREATE INDEX inventory_changes_by_host ON inventory_changes (host_id, id);

CREATE TABLE check_results (
    host_id TEXT COLLATE "C" NOT NULL REFERENCES hosts (id) ON DELETE CASCADE,
    check_name TEXT COLLATE "C" NOT NULL,
    target TEXT COLLATE "C" NOT NULL,
    kind TEXT NOT NULL,
    outcome TEXT NOT NULL,
    reason TEXT NOT NULL,
    since_ms BIGINT NOT NULL,
    received_ms BIGINT NOT NULL,
    started_ms BIGINT NOT NULL,
    duration_seconds DOUBLE PRECISION NOT NULL,
    measurements TEXT NOT NULL,
    PRIMARY KEY (host_id, check_name, target)
);
CREATE INDEX check_results_by_outcome ON check_results (outcome, host_id);

CREATE TABLE check_events (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    host_id TEXT COLLATE "C" NOT NULL REFERENCES hosts (id) ON DELETE CASCADE,
    check_name TEXT NOT NULL,
    kind TEXT NOT NULL,
    target TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    old_outcome TEXT,
    new_outcome TEXT NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX check_events_by_host ON check_events (host_id, id);
CREATE INDEX check_events_by_time ON check_events (at_ms);

CREATE TABLE collectors (
    id TEXT COLLATE "C" PRIMARY KEY,
    heartbeat_ms BIGINT NOT NULL
);
"#,
    r#"
ALTER TABLE hosts ADD COLUMN reports_received_total BIGINT NOT NULL DEFAULT 0;
"#,
    // Agent tokens and enrollment secrets, by the hash of the secret only (`crate::tokens`).
    r#"
CREATE TABLE agent_tokens (
    id TEXT COLLATE "C" PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('enrollment', 'agent')),
    hash TEXT COLLATE "C" NOT NULL UNIQUE,
    host TEXT,
    created_ms BIGINT NOT NULL,
    expires_ms BIGINT,
    revoked_ms BIGINT,
    last_used_ms BIGINT,
    uses_left BIGINT,
    issued_by TEXT
);
"#,
    // A host's fields by name, so a host list walked in hostname order can probe each host's
    // filter in one index search; it also serves the per-host deletes `inventory_fields_by_host`
    // served.
    r#"
CREATE INDEX inventory_fields_by_host_field
    ON inventory_fields (host_id, field, (lower(value)) text_pattern_ops);
DROP INDEX inventory_fields_by_host;
"#,
];

/// Advisory lock key held while migrating, so collectors starting together migrate once.
const MIGRATION_LOCK: i64 = 0x6573_7461_7465_0001;

/// Reader connections kept open for the API and the ownership refresh.
const READER_CONNECTIONS: usize = 4;
/// Statements a reader connection keeps prepared at most: host pages have a text per shape of
/// query (which filters, collected or probed), so that many shapes are never all prepared.
const READER_STATEMENTS_KEPT: usize = 256;
/// How long an API request waits for a free reader connection.
const READER_WAIT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How the connection to the database is protected, from the URL's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP.
    Disable,
    /// TLS when the server offers it, certificate not verified (libpq's default).
    Prefer,
    /// TLS, certificate not verified.
    Require,
    /// TLS, certificate chain verified against `sslrootcert` (or the system roots).
    VerifyCa,
    /// TLS, chain and server name verified.
    VerifyFull,
}

impl SslMode {
    fn parse(text: &str) -> Result<Self, String> {
        Ok(match text {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(format!(
                    "`sslmode` `{other}` is not one of `disable`, `prefer`, `require`, \
                     `verify-ca`, `verify-full`"
                ));
            }
        })
    }
}

/// A parsed `postgres://` URL: the client's settings plus our TLS settings.
struct Connector {
    config: postgres::Config,
    tls: Option<MakeRustlsConnect>,
    /// The URL with its password hidden, for messages.
    shown: String,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("database", &self.shown)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// Whether `text` names a PostgreSQL database rather than a SQLite file.
pub fn is_postgres_url(text: &str) -> bool {
    text.starts_with("postgres://") || text.starts_with("postgresql://")
}

/// Checks a database URL without connecting: its syntax, `sslmode` and `sslrootcert`.
pub fn check_url(url: &str) -> Result<(), StoreError> {
    Connector::parse(url).map(|_| ())
}

/// The URL with any password replaced, safe to log.
pub fn redact_url(text: &str) -> String {
    match url::Url::parse(text) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            }
            parsed.to_string()
        }
        Err(_) => "<unparsable database URL>".to_owned(),
    }
}

impl Connector {
    fn parse(text: &str) -> Result<Self, StoreError> {
        let shown = redact_url(text);
        let invalid = |message: String| {
            StoreError::new(
                format!("invalid database URL `{shown}`"),
                std::io::Error::other(message),
            )
        };
        let mut parsed = url::Url::parse(text).map_err(|e| invalid(e.to_string()))?;
        if !is_postgres_url(text) {
            return Err(invalid("the scheme must be `postgres://`".into()));
        }
        let mut mode = SslMode::Prefer;
        let mut root_file: Option<PathBuf> = None;
        let mut kept: Vec<(String, String)> = Vec::new();
        for (key, value) in parsed.query_pairs() {
            match key.as_ref() {
                "sslmode" => mode = SslMode::parse(&value).map_err(invalid)?,
                "sslrootcert" => root_file = Some(PathBuf::from(value.as_ref())),
                _ => kept.push((key.into_owned(), value.into_owned())),
            }
        }
        if kept.is_empty() {
            parsed.set_query(None);
        } else {
            parsed.query_pairs_mut().clear().extend_pairs(kept);
        }
        let mut config: postgres::Config = parsed
            .as_str()
            .parse()
            .map_err(|e: postgres::Error| invalid(e.to_string()))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("estate-collector");
        }
        let tls = match mode {
            SslMode::Disable => {
                config.ssl_mode(postgres::config::SslMode::Disable);
                None
            }
            SslMode::Prefer | SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                config.ssl_mode(if mode == SslMode::Prefer {
                    postgres::config::SslMode::Prefer
                } else {
                    postgres::config::SslMode::Require
                });
                Some(MakeRustlsConnect::new(
                    tls_config(mode, root_file.as_deref()).map_err(invalid)?,
                ))
            }
        };
        Ok(Connector { config, tls, shown })
    }

    fn connect(&self) -> Result<Client, postgres::Error> {
        match &self.tls {
            None => self.config.connect(NoTls),
            Some(tls) => self.config.connect(tls.clone()),
        }
    }
}

fn tls_config(
    mode: SslMode,
    root_file: Option<&std::path::Path>,
) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?;
    let verifier: Arc<dyn ServerCertVerifier> = match mode {
        SslMode::Disable | SslMode::Prefer | SslMode::Require => {
            Arc::new(EncryptionOnly { provider })
        }
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let mut roots = rustls::RootCertStore::empty();
            match root_file {
                Some(path) => {
                    let text = std::fs::read(path).map_err(|e| {
                        format!("cannot read `sslrootcert` `{}`: {e}", path.display())
                    })?;
                    let mut found = 0;
                    for certificate in rustls_pki_types::pem::PemObject::pem_slice_iter(&text) {
                        let certificate: CertificateDer<'static> = certificate.map_err(|e| {
                            format!("`sslrootcert` `{}` is not PEM: {e}", path.display())
                        })?;
                        roots.add(certificate).map_err(|e| {
                            format!(
                                "`sslrootcert` `{}` holds a bad certificate: {e}",
                                path.display()
                            )
                        })?;
                        found += 1;
                    }
                    if found == 0 {
                        return Err(format!(
                            "`sslrootcert` `{}` holds no certificate",
                            path.display()
                        ));
                    }
                }
                None => {
                    for certificate in rustls_native_certs::load_native_certs().certs {
                        let _ = roots.add(certificate);
                    }
                }
            }
            let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| format!("TLS setup failed: {e}"))?;
            if mode == SslMode::VerifyCa {
                Arc::new(ChainOnly { webpki })
            } else {
                webpki
            }
        }
    };
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// `sslmode=require`/`prefer`: the channel is encrypted and the handshake signatures are
/// checked, but whose certificate it is is not (libpq's meaning of these modes).
#[derive(Debug)]
struct EncryptionOnly {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for EncryptionOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `sslmode=verify-ca`: the chain must lead to a trusted root; the name is not compared.
#[derive(Debug)]
struct ChainOnly {
    webpki: Arc<rustls::client::WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// A small pool: up to `max` connections, opened on demand, closed ones replaced.
#[derive(Debug)]
struct Pool {
    idle: Mutex<PoolState>,
    returned: Condvar,
    max: usize,
}

#[derive(Debug, Default)]
struct PoolState {
    idle: Vec<ClientSlot>,
    open: usize,
}

/// A pooled connection and the statements prepared on it, by their text (the write path's:
/// a batch then sends each with one round trip, and the server does not parse it again).
/// Kept with the connection, so that a new connection starts with none.
struct ClientSlot {
    client: Client,
    statements: HashMap<String, Statement>,
}

impl ClientSlot {
    fn new(client: Client) -> Self {
        ClientSlot {
            client,
            statements: HashMap::new(),
        }
    }
}

/// `postgres::Client` is not `Debug`; the pool only needs to hold it.
impl std::fmt::Debug for ClientSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientSlot")
    }
}

impl Pool {
    fn new(max: usize) -> Self {
        Pool {
            idle: Mutex::new(PoolState::default()),
            returned: Condvar::new(),
            max,
        }
    }

    fn run<T>(
        &self,
        connector: &Connector,
        body: impl FnOnce(&mut Client) -> Result<T, postgres::Error>,
    ) -> Result<T, PoolError> {
        self.run_prepared(connector, |client, _| body(client))
    }

    /// Like [`Pool::run`], with the connection's prepared statements.
    fn run_prepared<T>(
        &self,
        connector: &Connector,
        body: impl FnOnce(&mut Client, &mut Prepared<'_>) -> Result<T, postgres::Error>,
    ) -> Result<T, PoolError> {
        let mut slot = {
            let mut state = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if let Some(slot) = state.idle.pop() {
                    break slot;
                }
                if state.open < self.max {
                    state.open += 1;
                    drop(state);
                    match connector.connect() {
                        Ok(client) => break ClientSlot::new(client),
                        Err(error) => {
                            let mut state = self.idle.lock().unwrap_or_else(|p| p.into_inner());
                            state.open -= 1;
                            self.returned.notify_one();
                            return Err(PoolError::Connect(error));
                        }
                    }
                }
                let (next, timeout) = self
                    .returned
                    .wait_timeout(state, READER_WAIT)
                    .unwrap_or_else(|p| p.into_inner());
                state = next;
                if timeout.timed_out() && state.idle.is_empty() && state.open >= self.max {
                    return Err(PoolError::Busy);
                }
            }
        };
        let result = body(&mut slot.client, &mut Prepared(&mut slot.statements));
        if result.is_err() {
            // Whatever state the failure left the connection in, the next use prepares anew.
            slot.statements.clear();
        }
        let mut state = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if slot.client.is_closed() {
            state.open -= 1;
        } else {
            state.idle.push(slot);
        }
        self.returned.notify_one();
        result.map_err(PoolError::Query)
    }
}

impl Drop for Pool {
    /// `postgres::Client` closes its connection by blocking on a runtime of its own, which
    /// panics (and, during shutdown, aborts the process) on a thread that drives a tokio
    /// runtime. The last owner of the store is often an async task at shutdown, so there the
    /// idle connections are closed on a plain thread.
    fn drop(&mut self) {
        let state = self.idle.get_mut().unwrap_or_else(|p| p.into_inner());
        let idle = std::mem::take(&mut state.idle);
        if !idle.is_empty() && tokio::runtime::Handle::try_current().is_ok() {
            let _ = std::thread::spawn(move || drop(idle)).join();
        }
    }
}

/// A connection's prepared statements (see [`ClientSlot`]).
struct Prepared<'a>(&'a mut HashMap<String, Statement>);

impl Prepared<'_> {
    /// The statement for `sql`, prepared on this connection the first time (a named
    /// statement lives as long as the session, past the transaction it was prepared in).
    fn get(&mut self, tx: &mut Transaction<'_>, sql: &str) -> Result<Statement, postgres::Error> {
        if let Some(statement) = self.0.get(sql) {
            return Ok(statement.clone());
        }
        let statement = tx.prepare(sql)?;
        self.0.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }

    fn execute(
        &mut self,
        tx: &mut Transaction<'_>,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, postgres::Error> {
        let statement = self.get(tx, sql)?;
        tx.execute(&statement, params)
    }

    fn query(
        &mut self,
        tx: &mut Transaction<'_>,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, postgres::Error> {
        let statement = self.get(tx, sql)?;
        tx.query(&statement, params)
    }
}

enum PoolError {
    Connect(postgres::Error),
    Query(postgres::Error),
    Busy,
}

/// PostgreSQL implementation of [`Store`].
#[derive(Debug)]
pub struct PostgresStore {
    connector: Connector,
    collector_id: String,
    /// The writer's own connection: batches are serial, and a dedicated connection keeps API
    /// reads from ever queueing behind a commit.
    writer: Pool,
    readers: Pool,
    filter_counts: FilterCounts,
}

impl PostgresStore {
    /// Connects to the database at `url`, applies pending migrations (under an advisory lock,
    /// so collectors starting together migrate once) and records reports as received by
    /// `collector_id`.
    pub fn open(url: &str, collector_id: &str) -> Result<Self, StoreError> {
        let connector = Connector::parse(url)?;
        let shown = connector.shown.clone();
        let mut client = connector
            .connect()
            .map_err(|e| StoreError::new(format!("failed to connect to database `{shown}`"), e))?;
        migrate(&mut client)
            .map_err(|e| StoreError::new(format!("failed to migrate database `{shown}`"), e))?;
        let writer = Pool::new(1);
        writer
            .idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .idle
            .push(ClientSlot::new(client));
        writer.idle.lock().unwrap_or_else(|p| p.into_inner()).open = 1;
        Ok(PostgresStore {
            connector,
            collector_id: collector_id.to_owned(),
            writer,
            readers: Pool::new(READER_CONNECTIONS),
            filter_counts: FilterCounts::default(),
        })
    }

    /// The database URL with its password hidden.
    pub fn shown_url(&self) -> &str {
        &self.connector.shown
    }

    fn error(&self, what: &str, error: PoolError) -> StoreError {
        let shown = &self.connector.shown;
        match error {
            PoolError::Connect(e) => {
                StoreError::new(format!("failed to connect to database `{shown}`"), e)
            }
            PoolError::Query(e) => StoreError::new(format!("failed to {what} in `{shown}`"), e),
            PoolError::Busy => StoreError::new(
                format!("failed to {what} in `{shown}`"),
                std::io::Error::other(format!(
                    "no free connection after {}s",
                    READER_WAIT.as_secs()
                )),
            ),
        }
    }

    fn read<T>(
        &self,
        what: &str,
        body: impl FnOnce(&mut Client) -> Result<T, postgres::Error>,
    ) -> Result<T, StoreError> {
        self.readers
            .run(&self.connector, body)
            .map_err(|e| self.error(what, e))
    }
}

fn migrate(client: &mut Client) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL); \
         INSERT INTO schema_version (version) SELECT 0 \
         WHERE NOT EXISTS (SELECT 1 FROM schema_version)",
    )?;
    let applied: i64 = tx
        .query_one("SELECT version FROM schema_version", &[])?
        .get(0);
    let known = MIGRATIONS.len() as i64;
    if applied > known {
        return Err(format!(
            "the schema is at version {applied}, newer than this collector knows ({known}); \
             upgrade the collector"
        )
        .into());
    }
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(applied as usize) {
        tx.batch_execute(migration)?;
        tx.execute(
            "UPDATE schema_version SET version = $1",
            &[&(index as i64 + 1)],
        )?;
    }
    tx.commit()?;
    Ok(())
}

/// PostgreSQL text cannot hold NUL; SQLite can, and agents may send it. Replacing it keeps one
/// odd string from failing a whole batch of other agents' reports.
fn clean(text: &str) -> String {
    if text.contains('\0') {
        text.replace('\0', "\u{FFFD}")
    } else {
        text.to_owned()
    }
}

const HOST_COLUMNS: &str = "id, hostname, fqdn, os_name, os_version, os_full_name, kernel_version, \
    arch, vmsystem, manufacturer, model, chassis_type, serial_number, machine_id, smbios_uuid, \
    primary_mac, agent_version, memory_bytes, swap_bytes, cpu_threads, first_seen_ms, \
    last_seen_ms, last_sequence, clock_skew_ms, identity_conflict, identity_conflict_detail, \
    inventory_hash, dropped_reports_total, vitals, reported_to, reports_received_total";

/// The array type of each column of [`HOST_COLUMNS`], in order, for `UNNEST`.
const HOST_COLUMN_TYPES: &[&str] = &[
    "text", "text", "text", "text", "text", "text", "text", "text", "text", "text", "text", "text",
    "text", "text", "text", "text", "text", "bigint", "bigint", "bigint", "bigint", "bigint",
    "bigint", "bigint", "boolean", "text", "text", "bigint", "text", "text", "bigint",
];

fn host_from_row(row: &Row) -> HostRecord {
    let vitals: String = row.get(28);
    HostRecord {
        id: row.get(0),
        hostname: row.get(1),
        fqdn: row.get(2),
        os_name: row.get(3),
        os_version: row.get(4),
        os_full_name: row.get(5),
        kernel_version: row.get(6),
        arch: row.get(7),
        vmsystem: row.get(8),
        manufacturer: row.get(9),
        model: row.get(10),
        chassis_type: row.get(11),
        serial_number: row.get(12),
        machine_id: row.get(13),
        smbios_uuid: row.get(14),
        primary_mac: row.get(15),
        agent_version: row.get(16),
        memory_bytes: row.get::<_, i64>(17) as u64,
        swap_bytes: row.get::<_, i64>(18) as u64,
        cpu_threads: row.get::<_, i64>(19) as u32,
        first_seen_ms: row.get(20),
        last_seen_ms: row.get(21),
        last_sequence: row.get::<_, i64>(22) as u64,
        clock_skew_ms: row.get(23),
        identity_conflict: row.get(24),
        identity_conflict_detail: row.get(25),
        inventory_hash: row.get(26),
        dropped_reports_total: row.get::<_, i64>(27) as u64,
        // Written by this store from a validated message; unreadable only if edited by hand.
        vitals: serde_json::from_str(&vitals).unwrap_or_default(),
        reported_to: row.get(29),
        reports_received_total: row.get::<_, i64>(30) as u64,
    }
}

fn check_from_row(row: &Row) -> CheckState {
    let measurements: String = row.get(10);
    CheckState {
        host_id: row.get(0),
        check: row.get(1),
        kind: row.get(2),
        target: row.get(3),
        outcome: row.get(4),
        reason: row.get(5),
        since_ms: row.get(6),
        received_ms: row.get(7),
        started_ms: row.get(8),
        duration_seconds: row.get(9),
        measurements: serde_json::from_str(&measurements).unwrap_or_default(),
    }
}

/// Parameters of one statement, in placeholder order.
type Params = Vec<Box<dyn ToSql + Sync + Send>>;

fn param_refs(params: &Params) -> Vec<&(dyn ToSql + Sync)> {
    params
        .iter()
        .map(|param| param.as_ref() as &(dyn ToSql + Sync))
        .collect()
}

/// `INSERT INTO table (columns) SELECT * FROM UNNEST($1::type[], …)`: one statement for any
/// number of rows.
fn unnest_insert(table: &str, columns: &str, types: &[&str]) -> String {
    let arrays: Vec<String> = types
        .iter()
        .enumerate()
        .map(|(index, kind)| format!("${}::{kind}[]", index + 1))
        .collect();
    format!(
        "INSERT INTO {table} ({columns}) SELECT * FROM UNNEST({})",
        arrays.join(", ")
    )
}

/// Everything one batch writes, worked out in memory from what the batch read, then written
/// with one set-based statement per table.
#[derive(Default)]
struct BatchPlan {
    /// Final row of each host the batch touched.
    hosts: BTreeMap<String, HostRecord>,
    /// Latest inventory per host: hash, received, document text.
    inventories: BTreeMap<String, (String, i64, String)>,
    /// The replaced field index of each host that sent an inventory.
    fields: BTreeMap<String, Vec<document::FieldValue>>,
    /// host, at, field, kind, old, new; in the order they happened.
    changes: Vec<(String, i64, String, &'static str, String, String)>,
    events: Vec<CheckEvent>,
    checks: BTreeMap<String, HostChecks>,
    /// (host, check, target) of results handed back whole but read only in part (the columns
    /// that decide their history): a report that did not renew them. Read in full once the
    /// batch is planned (rare: an agent reports every check it runs).
    partial: BTreeSet<(String, String, String)>,
}

/// A host's check results during a batch: as read, as they now are, and which keys changed.
struct HostChecks {
    original: BTreeSet<(String, String)>,
    current: BTreeMap<(String, String), CheckState>,
    dirty: BTreeSet<(String, String)>,
}

/// What the batch read before planning.
struct BatchInput {
    hosts: HashMap<String, HostRecord>,
    documents: HashMap<String, Value>,
    checks: HashMap<String, Vec<CheckState>>,
}

impl BatchPlan {
    fn plan_one(
        &mut self,
        input: &mut BatchInput,
        incoming: &IncomingReport,
        policy: WritePolicy,
        collector_id: &str,
    ) -> WriteOutcome {
        let report = &incoming.report.report;
        let identity = report.identity.clone().unwrap_or_default();
        let now = incoming.received_ms;
        let mut host = match input.hosts.get(&identity.agent_id).cloned() {
            Some(host) if report.sequence <= host.last_sequence => return WriteOutcome::Duplicate,
            Some(mut host) => {
                if let Some(clash) = other_machine(&host, &identity) {
                    let live = now - host.last_seen_ms < policy.stale_after_ms;
                    if live {
                        let message = format!(
                            "identity conflict: agent id `{}` already reports from another \
                             live machine (`{}`); this machine has {clash}. Its agent state \
                             directory was probably cloned: the agent must pick a new id",
                            identity.agent_id, host.hostname
                        );
                        host.identity_conflict = true;
                        host.identity_conflict_detail = format!(
                            "second machine `{}` with {clash} at {}",
                            identity.hostname,
                            humantime::format_rfc3339_seconds(crate::clock::system_time(now))
                        );
                        input.hosts.insert(host.id.clone(), host.clone());
                        self.hosts.insert(host.id.clone(), host.clone());
                        return WriteOutcome::IdentityConflict {
                            message,
                            host: Box::new(host),
                        };
                    }
                    // The old machine is gone: this is the same agent on new hardware.
                    self.record_changes(
                        &host.id,
                        now,
                        &[document::Change {
                            field: "identity".into(),
                            kind: ChangeKind::Changed,
                            old: serde_json::json!({
                                "machine_id": host.machine_id, "smbios_uuid": host.smbios_uuid }),
                            new: serde_json::json!({
                                "machine_id": identity.machine_id,
                                "smbios_uuid": identity.smbios_uuid }),
                        }],
                    );
                }
                host
            }
            None => HostRecord {
                id: identity.agent_id.clone(),
                first_seen_ms: now,
                ..Default::default()
            },
        };

        apply_identity(&mut host, report);
        host.last_seen_ms = now;
        host.last_sequence = report.sequence;
        host.clock_skew_ms = report.agent_time_unix_ms.saturating_sub(now);
        host.dropped_reports_total += report.dropped_reports;
        host.reports_received_total += 1;
        host.vitals = report.vitals.clone().unwrap_or_default();
        host.reported_to = collector_id.to_owned();
        let need_full_inventory = match &report.inventory {
            Some(inventory) => {
                apply_inventory(&mut host, inventory);
                host.inventory_hash.clone_from(&report.inventory_hash);
                false
            }
            None => {
                !report.inventory_hash.is_empty() && report.inventory_hash != host.inventory_hash
            }
        };
        input.hosts.insert(host.id.clone(), host.clone());
        self.hosts.insert(host.id.clone(), host.clone());

        if report.inventory.is_some() {
            let document = incoming
                .report
                .inventory_document
                .clone()
                .unwrap_or(Value::Null);
            if let Some(previous) = input.documents.get(&host.id) {
                let changes = document::diff(previous, &document);
                self.record_changes(&host.id, now, &changes);
            }
            self.fields
                .insert(host.id.clone(), document::flatten(&document));
            self.inventories.insert(
                host.id.clone(),
                (report.inventory_hash.clone(), now, document.to_string()),
            );
            input.documents.insert(host.id.clone(), document);
        }
        let checks = self.plan_checks(input, &host.id, now, incoming);
        WriteOutcome::Stored {
            need_full_inventory,
            host: Box::new(host),
            checks,
        }
    }

    fn record_changes(&mut self, host_id: &str, now: i64, changes: &[document::Change]) {
        for change in changes {
            self.changes.push((
                host_id.to_owned(),
                now,
                change.field.clone(),
                change.kind.as_str(),
                change.old.to_string(),
                change.new.to_string(),
            ));
        }
    }

    /// The same rules as the SQLite store's `store_checks`: latest result per (check, target),
    /// an event at every change of outcome, checks no longer configured and targets the latest
    /// run no longer reports forgotten.
    fn plan_checks(
        &mut self,
        input: &mut BatchInput,
        host_id: &str,
        now: i64,
        incoming: &IncomingReport,
    ) -> Option<Vec<CheckState>> {
        let report = &incoming.report.report;
        let entry = self.checks.entry(host_id.to_owned()).or_insert_with(|| {
            let current: BTreeMap<(String, String), CheckState> = input
                .checks
                .remove(host_id)
                .unwrap_or_default()
                .into_iter()
                .map(|state| ((state.check.clone(), state.target.clone()), state))
                .collect();
            HostChecks {
                original: current.keys().cloned().collect(),
                current,
                dirty: BTreeSet::new(),
            }
        });
        let configured: HashSet<&str> = report.check_names.iter().map(String::as_str).collect();
        let mut removed: Vec<(String, String)> = entry
            .current
            .keys()
            .filter(|(check, _)| !configured.contains(check.as_str()))
            .cloned()
            .collect();
        if report.checks.is_empty() && removed.is_empty() {
            return None;
        }
        // Oldest first, so that of two runs in one report the later one wins.
        let mut results: Vec<&CheckResult> = report.checks.iter().collect();
        results.sort_by_key(|result| result.started_unix_ms);
        let mut latest_run: HashMap<&str, i64> = HashMap::new();
        for result in &results {
            let started = latest_run.entry(result.check.as_str()).or_insert(i64::MIN);
            *started = (*started).max(result.started_unix_ms);
        }
        for result in results {
            let outcome = estate_proto::outcome_name(result.outcome);
            let key = (result.check.clone(), result.target.clone());
            let previous = entry.current.get(&key);
            let since = match previous {
                Some(state) if state.outcome == outcome => state.since_ms,
                _ => {
                    self.events.push(CheckEvent {
                        id: 0,
                        host_id: host_id.to_owned(),
                        hostname: String::new(),
                        check: result.check.clone(),
                        kind: result.kind.clone(),
                        target: result.target.clone(),
                        at_ms: now,
                        old_outcome: previous.map(|state| state.outcome.clone()),
                        new_outcome: outcome.to_owned(),
                        reason: result.reason.clone(),
                    });
                    now
                }
            };
            let state = CheckState {
                host_id: host_id.to_owned(),
                check: result.check.clone(),
                kind: result.kind.clone(),
                target: result.target.clone(),
                outcome: outcome.to_owned(),
                reason: result.reason.clone(),
                since_ms: since,
                received_ms: now,
                started_ms: result.started_unix_ms,
                duration_seconds: result.duration_seconds,
                measurements: result.measurements.clone(),
            };
            entry.dirty.insert(key.clone());
            entry.current.insert(key, state);
        }
        // Targets the latest run of a reported check no longer has.
        removed.extend(
            entry
                .current
                .iter()
                .filter(|((check, _), state)| {
                    latest_run
                        .get(check.as_str())
                        .is_some_and(|latest| state.started_ms < *latest)
                })
                .map(|(key, _)| key.clone()),
        );
        for key in &removed {
            entry.current.remove(key);
            entry.dirty.remove(key);
        }
        for (check, target) in entry
            .current
            .keys()
            .filter(|key| !entry.dirty.contains(*key))
        {
            self.partial
                .insert((host_id.to_owned(), check.clone(), target.clone()));
        }
        Some(entry.current.values().cloned().collect())
    }

    /// Writes the plan: one statement per table, whatever the number of reports.
    fn execute(
        self,
        tx: &mut Transaction<'_>,
        prepared: &mut Prepared<'_>,
    ) -> Result<(), postgres::Error> {
        if !self.hosts.is_empty() {
            self.write_hosts(tx, prepared)?;
        }
        if !self.inventories.is_empty() {
            let ids: Vec<&String> = self.inventories.keys().collect();
            let hashes: Vec<String> = self.inventories.values().map(|v| clean(&v.0)).collect();
            let received: Vec<i64> = self.inventories.values().map(|v| v.1).collect();
            let documents: Vec<&String> = self.inventories.values().map(|v| &v.2).collect();
            let upsert = prepared.get(
                tx,
                &format!(
                    "{} ON CONFLICT (host_id) DO UPDATE SET hash = excluded.hash, \
                     received_ms = excluded.received_ms, document = excluded.document",
                    unnest_insert(
                        "inventories",
                        "host_id, hash, received_ms, document",
                        &["text", "text", "bigint", "text"]
                    )
                ),
            )?;
            tx.execute(&upsert, &[&ids, &hashes, &received, &documents])?;
        }
        if !self.fields.is_empty() {
            // The field index is derived data, rebuilt from each new document.
            let ids: Vec<&String> = self.fields.keys().collect();
            prepared.execute(
                tx,
                "DELETE FROM inventory_fields WHERE host_id = ANY($1)",
                &[&ids],
            )?;
            let mut hosts = Vec::new();
            let mut names = Vec::new();
            let mut values = Vec::new();
            for (id, pairs) in &self.fields {
                for pair in pairs {
                    hosts.push(id.as_str());
                    names.push(clean(&pair.field));
                    values.push(clean(&pair.value));
                }
            }
            prepared.execute(
                tx,
                &unnest_insert(
                    "inventory_fields",
                    "host_id, field, value",
                    &["text", "text", "text"],
                ),
                &[&hosts, &names, &values],
            )?;
        }
        if !self.changes.is_empty() {
            let mut columns: [Vec<String>; 5] = Default::default();
            let mut at = Vec::with_capacity(self.changes.len());
            for (host, at_ms, field, kind, old, new) in &self.changes {
                columns[0].push(host.clone());
                at.push(*at_ms);
                columns[1].push(clean(field));
                columns[2].push((*kind).to_owned());
                columns[3].push(old.clone());
                columns[4].push(new.clone());
            }
            // WITH ORDINALITY and ORDER BY: ids follow the order the changes happened in.
            prepared.execute(
                tx,
                "INSERT INTO inventory_changes (host_id, at_ms, field, kind, old, new) \
                 SELECT h, a, f, k, o, n FROM UNNEST($1::text[], $2::bigint[], $3::text[], \
                 $4::text[], $5::text[], $6::text[]) WITH ORDINALITY AS t(h, a, f, k, o, n, i) \
                 ORDER BY i",
                &[
                    &columns[0],
                    &at,
                    &columns[1],
                    &columns[2],
                    &columns[3],
                    &columns[4],
                ],
            )?;
        }
        if !self.events.is_empty() {
            let text = |get: fn(&CheckEvent) -> &str| -> Vec<String> {
                self.events.iter().map(|e| clean(get(e))).collect()
            };
            let at: Vec<i64> = self.events.iter().map(|e| e.at_ms).collect();
            let old: Vec<Option<String>> =
                self.events.iter().map(|e| e.old_outcome.clone()).collect();
            prepared.execute(
                tx,
                "INSERT INTO check_events (host_id, check_name, kind, target, at_ms, \
                 old_outcome, new_outcome, reason) \
                 SELECT h, c, k, t, a, o, n, r FROM UNNEST($1::text[], $2::text[], $3::text[], \
                 $4::text[], $5::bigint[], $6::text[], $7::text[], $8::text[]) \
                 WITH ORDINALITY AS e(h, c, k, t, a, o, n, r, i) ORDER BY i",
                &[
                    &text(|e| &e.host_id),
                    &text(|e| &e.check),
                    &text(|e| &e.kind),
                    &text(|e| &e.target),
                    &at,
                    &old,
                    &text(|e| &e.new_outcome),
                    &text(|e| &e.reason),
                ],
            )?;
        }
        self.write_checks(tx, prepared)
    }

    fn write_hosts(
        &self,
        tx: &mut Transaction<'_>,
        prepared: &mut Prepared<'_>,
    ) -> Result<(), postgres::Error> {
        let hosts: Vec<&HostRecord> = self.hosts.values().collect();
        let text = |get: fn(&HostRecord) -> &str| -> Box<dyn ToSql + Sync + Send> {
            Box::new(hosts.iter().map(|h| clean(get(h))).collect::<Vec<String>>())
        };
        let number = |get: fn(&HostRecord) -> i64| -> Box<dyn ToSql + Sync + Send> {
            Box::new(hosts.iter().map(|h| get(h)).collect::<Vec<i64>>())
        };
        let params: Params = vec![
            text(|h| &h.id),
            text(|h| &h.hostname),
            text(|h| &h.fqdn),
            text(|h| &h.os_name),
            text(|h| &h.os_version),
            text(|h| &h.os_full_name),
            text(|h| &h.kernel_version),
            text(|h| &h.arch),
            text(|h| &h.vmsystem),
            text(|h| &h.manufacturer),
            text(|h| &h.model),
            text(|h| &h.chassis_type),
            text(|h| &h.serial_number),
            text(|h| &h.machine_id),
            text(|h| &h.smbios_uuid),
            text(|h| &h.primary_mac),
            text(|h| &h.agent_version),
            number(|h| h.memory_bytes as i64),
            number(|h| h.swap_bytes as i64),
            number(|h| i64::from(h.cpu_threads)),
            number(|h| h.first_seen_ms),
            number(|h| h.last_seen_ms),
            number(|h| h.last_sequence as i64),
            number(|h| h.clock_skew_ms),
            Box::new(
                hosts
                    .iter()
                    .map(|h| h.identity_conflict)
                    .collect::<Vec<bool>>(),
            ),
            text(|h| &h.identity_conflict_detail),
            text(|h| &h.inventory_hash),
            number(|h| h.dropped_reports_total as i64),
            Box::new(
                hosts
                    .iter()
                    .map(|h| {
                        clean(&serde_json::to_string(&h.vitals).unwrap_or_else(|_| "{}".into()))
                    })
                    .collect::<Vec<String>>(),
            ),
            text(|h| &h.reported_to),
            number(|h| h.reports_received_total as i64),
        ];
        // An upsert, never delete-and-insert: deleting the row would cascade to the host's
        // inventory, changes and check results.
        let updates: Vec<String> = HOST_COLUMNS
            .split(',')
            .map(str::trim)
            .skip(1)
            .map(|column| format!("{column} = excluded.{column}"))
            .collect();
        let sql = format!(
            "{} ON CONFLICT (id) DO UPDATE SET {}",
            unnest_insert("hosts", HOST_COLUMNS, HOST_COLUMN_TYPES),
            updates.join(", ")
        );
        prepared.execute(tx, &sql, &param_refs(&params))?;
        Ok(())
    }

    fn write_checks(
        &self,
        tx: &mut Transaction<'_>,
        prepared: &mut Prepared<'_>,
    ) -> Result<(), postgres::Error> {
        let mut gone: [Vec<String>; 3] = Default::default();
        let mut upserts: Vec<&CheckState> = Vec::new();
        for (host_id, checks) in &self.checks {
            for key in checks
                .original
                .difference(&checks.current.keys().cloned().collect())
            {
                gone[0].push(host_id.clone());
                gone[1].push(key.0.clone());
                gone[2].push(key.1.clone());
            }
            upserts.extend(
                checks
                    .dirty
                    .iter()
                    .filter_map(|key| checks.current.get(key)),
            );
        }
        if !gone[0].is_empty() {
            prepared.execute(
                tx,
                "DELETE FROM check_results c USING UNNEST($1::text[], $2::text[], $3::text[]) \
                 AS g(h, n, t) WHERE c.host_id = g.h AND c.check_name = g.n AND c.target = g.t",
                &[&gone[0], &gone[1], &gone[2]],
            )?;
        }
        if upserts.is_empty() {
            return Ok(());
        }
        let text = |get: fn(&CheckState) -> &str| -> Box<dyn ToSql + Sync + Send> {
            Box::new(
                upserts
                    .iter()
                    .map(|c| clean(get(c)))
                    .collect::<Vec<String>>(),
            )
        };
        let number = |get: fn(&CheckState) -> i64| -> Box<dyn ToSql + Sync + Send> {
            Box::new(upserts.iter().map(|c| get(c)).collect::<Vec<i64>>())
        };
        let params: Params = vec![
            text(|c| &c.host_id),
            text(|c| &c.check),
            text(|c| &c.kind),
            text(|c| &c.target),
            text(|c| &c.outcome),
            text(|c| &c.reason),
            number(|c| c.since_ms),
            number(|c| c.received_ms),
            number(|c| c.started_ms),
            Box::new(
                upserts
                    .iter()
                    .map(|c| c.duration_seconds)
                    .collect::<Vec<f64>>(),
            ),
            Box::new(
                upserts
                    .iter()
                    .map(|c| {
                        clean(
                            &serde_json::to_string(&c.measurements).unwrap_or_else(|_| "[]".into()),
                        )
                    })
                    .collect::<Vec<String>>(),
            ),
        ];
        let sql = format!(
            "{} ON CONFLICT (host_id, check_name, target) DO UPDATE SET kind = excluded.kind, \
             outcome = excluded.outcome, reason = excluded.reason, since_ms = excluded.since_ms, \
             received_ms = excluded.received_ms, started_ms = excluded.started_ms, \
             duration_seconds = excluded.duration_seconds, measurements = excluded.measurements",
            unnest_insert(
                "check_results",
                CHECK_COLUMNS,
                &[
                    "text",
                    "text",
                    "text",
                    "text",
                    "text",
                    "text",
                    "bigint",
                    "bigint",
                    "bigint",
                    "double precision",
                    "text"
                ]
            )
        );
        prepared.execute(tx, &sql, &param_refs(&params))?;
        Ok(())
    }
}

/// Reads what a batch needs, for all its hosts at once, after locking them.
fn read_batch_input(
    tx: &mut Transaction<'_>,
    prepared: &mut Prepared<'_>,
    reports: &[IncomingReport],
) -> Result<BatchInput, postgres::Error> {
    let mut ids: Vec<String> = reports
        .iter()
        .map(|r| r.report.agent_id().to_owned())
        .collect();
    ids.sort();
    ids.dedup();
    // Two collectors may receive the same agent during a fail-over: a transaction-scoped lock
    // per agent id (taken in id order, so two batches cannot deadlock) serialises them, new
    // hosts included, which row locks could not.
    prepared.execute(
        tx,
        "SELECT pg_advisory_xact_lock(hashtextextended(id, 0)) \
         FROM UNNEST($1::text[]) WITH ORDINALITY AS t(id, i) ORDER BY i",
        &[&ids],
    )?;
    let hosts = prepared
        .query(
            tx,
            &format!("SELECT {HOST_COLUMNS} FROM hosts WHERE id = ANY($1)"),
            &[&ids],
        )?
        .iter()
        .map(|row| {
            let host = host_from_row(row);
            (host.id.clone(), host)
        })
        .collect();
    let with_inventory: Vec<&str> = reports
        .iter()
        .filter(|r| r.report.report.inventory.is_some())
        .map(|r| r.report.agent_id())
        .collect();
    let mut documents = HashMap::new();
    if !with_inventory.is_empty() {
        for row in prepared.query(
            tx,
            "SELECT host_id, document FROM inventories WHERE host_id = ANY($1)",
            &[&with_inventory],
        )? {
            let text: String = row.get(1);
            documents.insert(
                row.get::<_, String>(0),
                serde_json::from_str(&text).unwrap_or(Value::Null),
            );
        }
    }
    // Only what decides a new result's history; `complete_checks` reads the rest of the few
    // rows handed back without being renewed.
    let mut checks: HashMap<String, Vec<CheckState>> = HashMap::new();
    for row in prepared.query(
        tx,
        "SELECT host_id, check_name, target, outcome, since_ms, started_ms \
         FROM check_results WHERE host_id = ANY($1)",
        &[&ids],
    )? {
        let state = CheckState {
            host_id: row.get(0),
            check: row.get(1),
            target: row.get(2),
            outcome: row.get(3),
            since_ms: row.get(4),
            started_ms: row.get(5),
            ..Default::default()
        };
        checks.entry(state.host_id.clone()).or_default().push(state);
    }
    Ok(BatchInput {
        hosts,
        documents,
        checks,
    })
}

/// Replaces, in the outcomes, the results listed in `partial` (read only in part) by their
/// whole stored rows, which the batch does not change.
fn complete_checks(
    tx: &mut Transaction<'_>,
    prepared: &mut Prepared<'_>,
    partial: &BTreeSet<(String, String, String)>,
    outcomes: &mut [WriteOutcome],
) -> Result<(), postgres::Error> {
    let mut keys: [Vec<&str>; 3] = Default::default();
    for (host, check, target) in partial {
        keys[0].push(host);
        keys[1].push(check);
        keys[2].push(target);
    }
    let mut whole = HashMap::new();
    for row in prepared.query(
        tx,
        &format!(
            "SELECT {CHECK_COLUMNS} FROM check_results \
             JOIN UNNEST($1::text[], $2::text[], $3::text[]) AS k(h, n, t) \
             ON host_id = k.h AND check_name = k.n AND target = k.t"
        ),
        &[&keys[0], &keys[1], &keys[2]],
    )? {
        let state = check_from_row(&row);
        whole.insert(
            (
                state.host_id.clone(),
                state.check.clone(),
                state.target.clone(),
            ),
            state,
        );
    }
    for outcome in outcomes {
        if let WriteOutcome::Stored {
            checks: Some(checks),
            ..
        } = outcome
        {
            for state in checks {
                let key = (
                    state.host_id.clone(),
                    state.check.clone(),
                    state.target.clone(),
                );
                if partial.contains(&key)
                    && let Some(stored) = whole.get(&key)
                {
                    state.clone_from(stored);
                }
            }
        }
    }
    Ok(())
}

fn load_host(
    client: &mut impl GenericClient,
    id: &str,
) -> Result<Option<HostRecord>, postgres::Error> {
    Ok(client
        .query_opt(
            &format!("SELECT {HOST_COLUMNS} FROM hosts WHERE id = $1"),
            &[&id],
        )?
        .map(|row| host_from_row(&row)))
}

/// A read-only transaction running the statements of a host page.
struct PostgresHostReader<'a, 'client, 'prepared> {
    tx: &'a mut Transaction<'client>,
    /// The connection's prepared statements.
    prepared: &'a mut Prepared<'prepared>,
    /// Whether `enable_sort` is on in this transaction (it is when the transaction starts).
    sorts_allowed: bool,
}

impl<'a, 'client, 'prepared> PostgresHostReader<'a, 'client, 'prepared> {
    /// Sets the transaction `tx` (just begun) up for a host page.
    fn start(
        tx: &'a mut Transaction<'client>,
        prepared: &'a mut Prepared<'prepared>,
    ) -> Result<Self, postgres::Error> {
        // A page reads a few hundred rows, but a walk's estimated cost is that of reading the
        // whole window (the planner does not expect it to stop at the page), past
        // `jit_above_cost`: compiling took 430 ms, running 2 ms. The statements are prepared
        // once per connection, and planned for their values each time (a pattern's index
        // range is read from its value).
        tx.batch_execute("SET LOCAL jit = off; SET LOCAL plan_cache_mode = force_custom_plan")?;
        if prepared.0.len() >= READER_STATEMENTS_KEPT {
            prepared.0.clear();
        }
        Ok(PostgresHostReader {
            tx,
            prepared,
            sorts_allowed: true,
        })
    }
}

impl PostgresHostReader<'_, '_, '_> {
    /// Turns the planner's sorts off for a walk and on again for a collect. A walk must read
    /// `hosts_by_hostname` in order and stop at the page; from its statistics the planner may
    /// judge the filters too selective for that and read the whole window, then sort it.
    /// Without sorts the index is its only way to the order. A collect sorts what it found.
    fn allow_sorts(&mut self, allowed: bool) -> Result<(), postgres::Error> {
        if self.sorts_allowed != allowed {
            self.tx.batch_execute(if allowed {
                "SET LOCAL enable_sort = on"
            } else {
                "SET LOCAL enable_sort = off"
            })?;
            self.sorts_allowed = allowed;
        }
        Ok(())
    }
}

impl PostgresHostReader<'_, '_, '_> {
    /// The one row of `text` (prepared on this connection) with `args`.
    fn query_one(&mut self, text: &str, args: Vec<SqlArg>) -> Result<Row, postgres::Error> {
        let args = postgres_args(args);
        let statement = self.prepared.get(self.tx, text)?;
        self.tx.query_one(&statement, &param_refs(&args))
    }

    /// The statement of `query` with `plan`, with the planner set up to run it.
    fn host_statement(
        &mut self,
        query: &HostQuery,
        plan: &HostPlan,
    ) -> Result<(String, Params), postgres::Error> {
        let walk = matches!(plan, HostPlan::Walk { .. } | HostPlan::WalkWindow { .. });
        self.allow_sorts(!walk)?;
        let ListQuery { text, args, .. } =
            query::hosts(Dialect::Postgres, HOST_COLUMNS, query, plan);
        Ok((text, postgres_args(args)))
    }
}

impl HostPageReader for PostgresHostReader<'_, '_, '_> {
    type Error = postgres::Error;
    const DIALECT: Dialect = Dialect::Postgres;
    const WALKS_COUNTED_WINDOW: bool = true;

    /// The planner's own estimate: the rows per page of the last `ANALYZE` (or vacuum) times
    /// the table's pages now; a count when the table was never analysed.
    fn estimated_hosts(&mut self) -> Result<i64, postgres::Error> {
        let estimate: Option<i64> = self
            .query_one(
                "SELECT CASE WHEN relpages > 0 AND reltuples >= 0 THEN \
                 (reltuples / relpages \
                  * (pg_relation_size(oid) / current_setting('block_size')::bigint))::bigint \
                 END FROM pg_class WHERE oid = 'hosts'::regclass",
                Vec::new(),
            )?
            .get(0);
        match estimate {
            Some(hosts) => Ok(hosts),
            None => Ok(self
                .query_one("SELECT count(*) FROM hosts", Vec::new())?
                .get(0)),
        }
    }

    fn count(&mut self, text: &str, args: Vec<SqlArg>) -> Result<i64, postgres::Error> {
        Ok(self.query_one(text, args)?.get(0))
    }

    fn window_end(
        &mut self,
        text: &str,
        args: Vec<SqlArg>,
    ) -> Result<Option<HostCursor>, postgres::Error> {
        // The window's end is found by walking the host order too.
        self.allow_sorts(false)?;
        let args = postgres_args(args);
        Ok(self
            .tx
            .query_opt(text, &param_refs(&args))?
            .map(|row| HostCursor {
                hostname: row.get(0),
                id: row.get(1),
            }))
    }

    fn hosts(
        &mut self,
        query: &HostQuery,
        plan: &HostPlan,
    ) -> Result<Vec<HostRecord>, postgres::Error> {
        let (text, args) = self.host_statement(query, plan)?;
        Ok(self
            .tx
            .query(&text, &param_refs(&args))?
            .iter()
            .map(host_from_row)
            .collect())
    }
}

/// The shared list queries' parameters as PostgreSQL values.
fn postgres_args(args: Vec<SqlArg>) -> Params {
    args.into_iter()
        .map(|arg| -> Box<dyn ToSql + Sync + Send> {
            match arg {
                SqlArg::Text(text) => Box::new(text),
                SqlArg::Int(number) => Box::new(number),
                SqlArg::Bool(flag) => Box::new(flag),
            }
        })
        .collect()
}

impl Store for PostgresStore {
    fn write_batch(
        &self,
        reports: &[IncomingReport],
        policy: WritePolicy,
    ) -> Result<Vec<WriteOutcome>, StoreError> {
        self.writer
            .run_prepared(&self.connector, |client, prepared| {
                let mut tx = client.transaction()?;
                let mut input = read_batch_input(&mut tx, prepared, reports)?;
                let mut plan = BatchPlan::default();
                let mut outcomes: Vec<WriteOutcome> = reports
                    .iter()
                    .map(|report| plan.plan_one(&mut input, report, policy, &self.collector_id))
                    .collect();
                if !plan.partial.is_empty() {
                    complete_checks(&mut tx, prepared, &plan.partial, &mut outcomes)?;
                }
                plan.execute(&mut tx, prepared)?;
                tx.commit()?;
                Ok(outcomes)
            })
            .map_err(|e| self.error("write a batch", e))
    }

    // Token statements run on the readers' connections: they are rare and small, and must not
    // wait behind a batch on the writer's.
    fn create_token(&self, token: &NewToken) -> Result<(), StoreError> {
        self.read("store a token", |client| insert_token(client, token, None))
    }

    fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.read("list tokens", |client| {
            Ok(client
                .query(
                    &format!("SELECT {TOKEN_COLUMNS} FROM agent_tokens ORDER BY created_ms, id"),
                    &[],
                )?
                .iter()
                .map(token_from_row)
                .collect())
        })
    }

    fn revoke_token(&self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        self.read("revoke a token", |client| {
            let changed = client.execute(
                "UPDATE agent_tokens SET revoked_ms = coalesce(revoked_ms, $2) WHERE id = $1",
                &[&id, &now_ms],
            )?;
            Ok(changed > 0)
        })
    }

    fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>, StoreError> {
        self.read("look up a token", |client| {
            Ok(client
                .query_opt(
                    &format!("SELECT {TOKEN_COLUMNS} FROM agent_tokens WHERE hash = $1"),
                    &[&hash],
                )?
                .as_ref()
                .map(token_from_row))
        })
    }

    fn touch_token(&self, id: &str, now_ms: i64) -> Result<(), StoreError> {
        self.read("record a token's use", |client| {
            client.execute(
                "UPDATE agent_tokens SET last_used_ms = greatest(last_used_ms, $2) WHERE id = $1",
                &[&id, &now_ms],
            )?;
            Ok(())
        })
    }

    fn exchange_enrollment(
        &self,
        enrollment_hash: &str,
        agent: &NewToken,
    ) -> Result<ExchangeOutcome, StoreError> {
        self.read("exchange an enrollment secret", |client| {
            let mut tx = client.transaction()?;
            // FOR UPDATE: collectors enrolling agents at once count the uses one at a time.
            let enrollment = tx
                .query_opt(
                    &format!(
                        "SELECT {TOKEN_COLUMNS} FROM agent_tokens \
                         WHERE hash = $1 AND kind = 'enrollment' FOR UPDATE"
                    ),
                    &[&enrollment_hash],
                )?
                .as_ref()
                .map(token_from_row);
            let Some(enrollment) = enrollment else {
                return Ok(ExchangeOutcome::Refused(TokenRefusal::Unknown));
            };
            if let Some(refusal) = enrollment.unusable_at(agent.created_ms) {
                return Ok(ExchangeOutcome::Refused(refusal));
            }
            tx.execute(
                "UPDATE agent_tokens SET uses_left = uses_left - 1, last_used_ms = $2 WHERE id = $1",
                &[&enrollment.id, &agent.created_ms],
            )?;
            insert_token(&mut tx, agent, Some(&enrollment.id))?;
            tx.commit()?;
            Ok(ExchangeOutcome::Issued {
                enrollment_id: enrollment.id,
            })
        })
    }

    fn load_hosts(&self) -> Result<Vec<HostRecord>, StoreError> {
        self.read("load hosts", |client| {
            Ok(client
                .query(&format!("SELECT {HOST_COLUMNS} FROM hosts"), &[])?
                .iter()
                .map(host_from_row)
                .collect())
        })
    }

    fn load_checks(&self) -> Result<Vec<CheckState>, StoreError> {
        self.read("load check results", |client| {
            Ok(client
                .query(&format!("SELECT {CHECK_COLUMNS} FROM check_results"), &[])?
                .iter()
                .map(check_from_row)
                .collect())
        })
    }

    fn list_hosts(&self, query: &HostQuery) -> Result<HostPage, StoreError> {
        let limit = query.limit.max(1);
        let (mut hosts, path) = self
            .readers
            .run_prepared(&self.connector, |client, prepared| {
                // One snapshot for the counts and the queries they choose.
                let mut tx = client
                    .build_transaction()
                    .isolation_level(IsolationLevel::RepeatableRead)
                    .read_only(true)
                    .start()?;
                let mut reader = PostgresHostReader::start(&mut tx, prepared)?;
                let page = read_host_page(&mut reader, query, &self.filter_counts)?;
                tx.commit()?;
                Ok(page)
            })
            .map_err(|e| self.error("list hosts", e))?;
        tracing::debug!(?path, rows = hosts.len(), "host list");
        let next = split_page(&mut hosts, limit, |host| HostCursor {
            hostname: host.hostname.clone(),
            id: host.id.clone(),
        });
        Ok(HostPage { hosts, next })
    }

    fn list_checks(&self, query: &CheckQuery) -> Result<CheckPage, StoreError> {
        let ListQuery { text, args, limit } = query::checks(Dialect::Postgres, query);
        let args = postgres_args(args);
        let mut checks = self.read("list check results", |client| {
            Ok(client
                .query(&text, &param_refs(&args))?
                .iter()
                .map(|row| (row.get::<_, String>(11), check_from_row(row)))
                .collect::<Vec<_>>())
        })?;
        let next = split_page(&mut checks, limit, |(_, c)| {
            (c.host_id.clone(), c.check.clone(), c.target.clone())
        });
        Ok(CheckPage { checks, next })
    }

    fn list_events(&self, query: &EventQuery) -> Result<EventPage, StoreError> {
        let ListQuery { text, args, limit } = query::events(Dialect::Postgres, query);
        let args = postgres_args(args);
        let mut events = self.read("list check events", |client| {
            Ok(client
                .query(&text, &param_refs(&args))?
                .iter()
                .map(|row| CheckEvent {
                    id: row.get(0),
                    host_id: row.get(1),
                    hostname: row.get(2),
                    check: row.get(3),
                    kind: row.get(4),
                    target: row.get(5),
                    at_ms: row.get(6),
                    old_outcome: row.get(7),
                    new_outcome: row.get(8),
                    reason: row.get(9),
                })
                .collect::<Vec<_>>())
        })?;
        let next_before_id = split_page(&mut events, limit, |event| event.id);
        Ok(EventPage {
            events,
            next_before_id,
        })
    }

    fn host_detail(&self, id: &str) -> Result<Option<HostDetail>, StoreError> {
        self.read("read a host", |client| {
            let Some(host) = load_host(client, id)? else {
                return Ok(None);
            };
            let inventory: Option<(String, i64)> = client
                .query_opt(
                    "SELECT document, received_ms FROM inventories WHERE host_id = $1",
                    &[&id],
                )?
                .map(|row| (row.get(0), row.get(1)));
            let checks = client
                .query(
                    &format!(
                        "SELECT {CHECK_COLUMNS} FROM check_results WHERE host_id = $1 \
                         ORDER BY check_name, target"
                    ),
                    &[&id],
                )?
                .iter()
                .map(check_from_row)
                .collect();
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

    fn host_changes(
        &self,
        id: &str,
        query: &ChangeQuery,
    ) -> Result<Option<ChangePage>, StoreError> {
        self.read("read inventory changes", |client| {
            if load_host(client, id)?.is_none() {
                return Ok(None);
            }
            let limit = query.limit.max(1);
            let mut changes: Vec<ChangeRecord> = client
                .query(
                    "SELECT id, at_ms, field, kind, old, new FROM inventory_changes \
                     WHERE host_id = $1 AND id > $2 AND at_ms >= $3 ORDER BY id LIMIT $4",
                    &[
                        &id,
                        &query.after_id.unwrap_or(0),
                        &query.since_ms.unwrap_or(i64::MIN),
                        &((limit + 1) as i64),
                    ],
                )?
                .iter()
                .map(|row| {
                    let kind: String = row.get(3);
                    let old: String = row.get(4);
                    let new: String = row.get(5);
                    ChangeRecord {
                        id: row.get(0),
                        at_ms: row.get(1),
                        field: row.get(2),
                        kind: ChangeKind::parse(&kind).unwrap_or(ChangeKind::Changed),
                        old: serde_json::from_str(&old).unwrap_or(Value::Null),
                        new: serde_json::from_str(&new).unwrap_or(Value::Null),
                    }
                })
                .collect();
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

    fn delete_host(&self, id: &str) -> Result<Option<HostRecord>, StoreError> {
        // The other tables refer to `hosts` with `ON DELETE CASCADE`.
        self.writer
            .run(&self.connector, |client| {
                client.query_opt(
                    &format!("DELETE FROM hosts WHERE id = $1 RETURNING {HOST_COLUMNS}"),
                    &[&id],
                )
            })
            .map(|row| row.as_ref().map(host_from_row))
            .map_err(|e| self.error(&format!("delete host `{id}`"), e))
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn refresh_collectors(
        &self,
        collector_id: &str,
        now_ms: i64,
        live_since_ms: i64,
        reported_since_ms: i64,
    ) -> Result<CollectorView, StoreError> {
        self.read("refresh host ownership", |client| {
            client.execute(
                "INSERT INTO collectors (id, heartbeat_ms) VALUES ($1, $2) \
                 ON CONFLICT (id) DO UPDATE SET heartbeat_ms = excluded.heartbeat_ms",
                &[&collector_id, &now_ms],
            )?;
            let live_collectors = client
                .query(
                    "SELECT id FROM collectors WHERE heartbeat_ms >= $1 ORDER BY id",
                    &[&live_since_ms],
                )?
                .iter()
                .map(|row| row.get(0))
                .collect();
            let reported = client
                .query(
                    "SELECT id, reported_to, last_seen_ms FROM hosts WHERE last_seen_ms >= $1",
                    &[&reported_since_ms],
                )?
                .iter()
                .map(|row| HostOwner {
                    id: row.get(0),
                    reported_to: row.get(1),
                    last_seen_ms: row.get(2),
                })
                .collect();
            Ok(CollectorView {
                live_collectors,
                reported,
            })
        })
    }

    fn load_hosts_by_id(
        &self,
        ids: &[String],
    ) -> Result<(Vec<HostRecord>, Vec<CheckState>), StoreError> {
        self.read("load hosts", |client| {
            let hosts = client
                .query(
                    &format!("SELECT {HOST_COLUMNS} FROM hosts WHERE id = ANY($1)"),
                    &[&ids],
                )?
                .iter()
                .map(host_from_row)
                .collect();
            let checks = client
                .query(
                    &format!("SELECT {CHECK_COLUMNS} FROM check_results WHERE host_id = ANY($1)"),
                    &[&ids],
                )?
                .iter()
                .map(check_from_row)
                .collect();
            Ok((hosts, checks))
        })
    }
}

fn insert_token(
    client: &mut impl GenericClient,
    token: &NewToken,
    issued_by: Option<&str>,
) -> Result<(), postgres::Error> {
    client.execute(
        "INSERT INTO agent_tokens \
         (id, kind, hash, host, created_ms, expires_ms, uses_left, issued_by) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            &token.id,
            &token.kind.as_str(),
            &token.hash,
            &token.host.as_deref().map(clean),
            &token.created_ms,
            &token.expires_ms,
            &token.uses_left.map(i64::from),
            &issued_by,
        ],
    )?;
    Ok(())
}

fn token_from_row(row: &Row) -> TokenRecord {
    let kind: String = row.get(1);
    let uses_left: Option<i64> = row.get(7);
    TokenRecord {
        id: row.get(0),
        // The table's CHECK allows only the two names; were another to appear, calling it an
        // enrollment secret is the safe reading: such a token cannot authenticate reports.
        kind: crate::tokens::TokenKind::parse(&kind)
            .unwrap_or(crate::tokens::TokenKind::Enrollment),
        host: row.get(2),
        created_ms: row.get(3),
        expires_ms: row.get(4),
        revoked_ms: row.get(5),
        last_used_ms: row.get(6),
        uses_left: uses_left.map(|uses| u32::try_from(uses.max(0)).unwrap_or(u32::MAX)),
        issued_by: row.get(8),
    }
}

/// Creates an empty database `name` on the server of `url` (whose user may create databases)
/// and returns the URL of the new database. For tests and benchmarks, which each want a fresh
/// database.
pub fn create_database(url: &str, name: &str) -> Result<String, StoreError> {
    with_admin_connection(url, |client| {
        client.batch_execute(&format!("CREATE DATABASE {}", quote_identifier(name)))
    })?;
    let mut parsed = url::Url::parse(url)
        .map_err(|e| StoreError::new(format!("invalid database URL `{}`", redact_url(url)), e))?;
    parsed.set_path(&format!("/{name}"));
    Ok(parsed.to_string())
}

/// Drops database `name` on the server of `url`, closing its connections first.
pub fn drop_database(url: &str, name: &str) -> Result<(), StoreError> {
    with_admin_connection(url, |client| {
        client.batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            quote_identifier(name)
        ))
    })
}

/// One connection to the database of `url`, with the store's TLS rules (`sslmode`,
/// `sslrootcert`). For tools beside the store, such as the benchmark's raw-upsert ceiling.
pub fn connect(url: &str) -> Result<Client, StoreError> {
    let connector = Connector::parse(url)?;
    connector.connect().map_err(|e| {
        StoreError::new(
            format!("failed to connect to database `{}`", connector.shown),
            e,
        )
    })
}

fn with_admin_connection(
    url: &str,
    body: impl FnOnce(&mut Client) -> Result<(), postgres::Error>,
) -> Result<(), StoreError> {
    let mut client = connect(url)?;
    body(&mut client).map_err(|e| {
        StoreError::new(
            format!("failed to manage databases on `{}`", redact_url(url)),
            e,
        )
    })
}

fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::host_page::HostPath;
    use crate::store::host_page::field_query;

    /// A database of its own on the server of `ESTATE_TEST_POSTGRES_URL`, dropped at the end.
    struct ScratchDatabase {
        server: String,
        name: String,
        url: String,
    }

    impl ScratchDatabase {
        fn create(purpose: &str) -> Self {
            let server = std::env::var("ESTATE_TEST_POSTGRES_URL").expect(
                "ESTATE_TEST_POSTGRES_URL is not set: start a server with \
                 `.ci/postgres-cluster start DIR` and export the line it prints",
            );
            let name = format!("estate_{purpose}_{}", std::process::id());
            let url = create_database(&server, &name).unwrap();
            ScratchDatabase { server, name, url }
        }
    }

    impl Drop for ScratchDatabase {
        fn drop(&mut self) {
            if let Err(error) = drop_database(&self.server, &self.name) {
                eprintln!("could not drop test database `{}`: {error}", self.name);
            }
        }
    }

    /// 2 000 hosts `h0000…` (hostnames `host-0000…`): even ones by Dell, odd ones by HPE,
    /// but for two by Acme; each with its serial. Written straight into the tables, with the
    /// host row's copy of the vendor as the write path keeps it, then analysed.
    fn fill(client: &mut Client) {
        client
            .batch_execute(
                "INSERT INTO hosts (id, hostname, manufacturer, serial_number, \
                     first_seen_ms, last_seen_ms, last_sequence) \
                 SELECT 'h' || lpad(n::text, 4, '0'), 'host-' || lpad(n::text, 4, '0'), \
                     CASE WHEN n IN (7, 1500) THEN 'Acme' \
                          WHEN n % 2 = 0 THEN 'Dell Inc.' ELSE 'HPE' END, \
                     'SN' || lpad(n::text, 5, '0'), 0, 0, 1 \
                 FROM generate_series(0, 1999) AS n; \
                 INSERT INTO inventory_fields (host_id, field, value) \
                 SELECT id, 'bios.smanufacturer', manufacturer FROM hosts \
                 UNION ALL SELECT id, 'bios.ssn', serial_number FROM hosts; \
                 ANALYZE",
            )
            .unwrap();
    }

    /// The plan PostgreSQL runs `query` with `plan` by, in the reader's settings for it.
    fn explain(
        reader: &mut PostgresHostReader<'_, '_, '_>,
        query: &HostQuery,
        plan: &HostPlan,
    ) -> String {
        let (text, args) = reader.host_statement(query, plan).unwrap();
        explain_statement(reader, &text, &args)
    }

    /// The plan of the statement `text` with `args`, in the reader's settings.
    fn explain_statement(
        reader: &mut PostgresHostReader<'_, '_, '_>,
        text: &str,
        args: &Params,
    ) -> String {
        reader
            .tx
            .query(&format!("EXPLAIN (COSTS OFF) {text}"), &param_refs(args))
            .unwrap()
            .iter()
            .map(|row| row.get::<_, String>(0))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    #[ignore = "needs PostgreSQL: .ci/run starts one (ESTATE_TEST_POSTGRES_URL)"]
    fn postgres_walks_broad_filters_and_collects_selective_ones() {
        let database = ScratchDatabase::create("host_plans");
        // Opening the store migrates the database; dropped before it (declared after it).
        let _store = PostgresStore::open(&database.url, "plans").unwrap();
        let mut client = connect(&database.url).unwrap();
        fill(&mut client);
        let mut tx = client.transaction().unwrap();
        let mut statements = HashMap::new();
        let mut prepared = Prepared(&mut statements);
        let mut reader = PostgresHostReader::start(&mut tx, &mut prepared).unwrap();
        let counts = FilterCounts::default();
        let mut page = |fields: &[(&str, &str)], limit: usize| {
            let (hosts, path) =
                read_host_page(&mut reader, &field_query(fields, limit), &counts).unwrap();
            (
                hosts.into_iter().map(|host| host.id).collect::<Vec<_>>(),
                path,
            )
        };

        // Pages of 10 among 2 000 hosts: the crossover is sqrt(11 * 2 000) = 149 matches.
        let (ids, path) = page(&[("bios.smanufacturer", "dell*")], 10);
        assert_eq!(path, HostPath::Walk);
        let expected: Vec<String> = (0..22).step_by(2).map(|n| format!("h{n:04}")).collect();
        assert_eq!(ids, expected);
        let (ids, path) = page(&[("bios.smanufacturer", "ACME")], 10);
        assert_eq!(
            (ids, path),
            (vec!["h0007".into(), "h1500".into()], HostPath::Collect)
        );
        // The selective filter drives; the broad one is probed.
        let (ids, path) = page(&[("bios.smanufacturer", "*"), ("bios.ssn", "SN001*")], 10);
        assert_eq!(path, HostPath::Collect);
        assert_eq!(ids.len(), 11, "{ids:?}");
        // Broad alone, empty together: the walk gives up after its window.
        let (ids, path) = page(&[("bios.smanufacturer", "Dell*"), ("bios.ssn", "*1")], 10);
        assert_eq!((ids.len(), path), (0, HostPath::WalkThenCollect));
        // A substring cannot be counted: a quarter window, then the rest collected from the
        // host rows' copies of the serial, each candidate probed.
        let (ids, path) = page(&[("bios.ssn", "*0019*")], 10);
        assert_eq!(path, HostPath::WalkThenCollect);
        let mut expected: Vec<String> = (190..200).map(|n| format!("h{n:04}")).collect();
        expected.insert(0, "h0019".into());
        assert_eq!(ids, expected);
        let (ids, path) = page(&[], 10);
        assert_eq!((ids.len(), path), (11, HostPath::Unfiltered));

        // The walk reads the host order and stops at the page, probing each host by index,
        // even where the planner would rather read the window and sort it.
        let dell = field_query(&[("bios.smanufacturer", "Dell*")], 10);
        let until = Some(HostCursor {
            hostname: "host-0148".into(),
            id: "h0148".into(),
        });
        let walk = explain(&mut reader, &dell, &HostPlan::Walk { until });
        assert!(
            walk.contains("Index Scan using hosts_by_hostname"),
            "{walk}"
        );
        assert!(walk.contains("inventory_fields_by_host_field"), "{walk}");
        assert!(!walk.contains("Sort"), "{walk}");
        assert!(!walk.contains("Join"), "{walk}");
        // The same over a counted window (PostgreSQL's walk): the window is read in order
        // in its subquery, and the page in that order.
        let counted = explain(&mut reader, &dell, &HostPlan::WalkWindow { hosts: 149 });
        assert!(
            counted.contains("Index Scan using hosts_by_hostname"),
            "{counted}"
        );
        assert!(
            counted.contains("inventory_fields_by_host_field"),
            "{counted}"
        );
        assert!(!counted.contains("Sort"), "{counted}");
        assert!(!counted.contains("Join"), "{counted}");

        let (text, args) = query::host_window_end(Dialect::Postgres, None, 149);
        let window = explain_statement(&mut reader, &text, &postgres_args(args));
        assert!(window.contains("using hosts_by_hostname"), "{window}");
        assert!(!window.contains("Sort"), "{window}");
        // The collect looks its few matches up by key and sorts them, even where the planner
        // would rather walk (the same statement with the other filter broad).
        let acme = field_query(&[("bios.smanufacturer", "Acme"), ("bios.ssn", "SN*")], 10);
        let collect = explain(&mut reader, &acme, &HostPlan::Collect { driver: 0 });
        assert!(collect.contains("inventory_fields_by_value"), "{collect}");
        assert!(collect.contains("hosts_pkey"), "{collect}");
        assert!(collect.contains("Sort"), "{collect}");
        assert!(!collect.contains("hosts_by_hostname"), "{collect}");
        let serial = field_query(&[("bios.ssn", "*0019*")], 10);
        let collect = explain(&mut reader, &serial, &HostPlan::Collect { driver: 0 });
        assert!(collect.contains("Seq Scan on hosts"), "{collect}");
        assert!(collect.contains("hosts_pkey"), "{collect}");
        assert!(
            collect.contains("inventory_fields_by_host_field"),
            "{collect}"
        );
        assert!(!collect.contains("inventory_fields_by_value"), "{collect}");

        tx.commit().unwrap();
    }
}
