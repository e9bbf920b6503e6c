//! estate collector: receives agents' reports over gRPC, keeps the inventory in a database,
//! exposes Prometheus metrics from memory and serves a JSON API and a small web UI.
//!
//! Entry point: [`run`]. Only [`store`] knows SQL; `/metrics` never queries the database; a
//! report is acknowledged only once the transaction holding it is durable.

pub mod agent_auth;
pub mod api;
pub mod auth;
pub mod certs;
pub mod clock;
pub mod config;
pub mod document;
pub mod error;
pub mod ingest;
pub mod limits;
pub mod metrics;
pub mod ownership;
pub mod state;
pub mod store;
pub mod tls;
pub mod tokens;
pub mod validate;
pub mod writer;

use crate::config::CollectorConfig;
use crate::ingest::{IngestService, MAX_REPORT_BYTES};
use crate::metrics::IngestMetrics;
use crate::ownership::OwnershipRefresher;
use crate::state::HostStates;
use crate::store::postgres::PostgresStore;
use crate::store::sqlite::{IntegrityCheck, SqliteStore};
use crate::store::{Store, WritePolicy};
use crate::tls::Transport;
use crate::writer::BatchWriter;
use anyhow::Context as _;
use estate_proto::v1::enrollment_server::EnrollmentServer;
use estate_proto::v1::ingest_server::IngestServer;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The collector's version, shown by `/healthz`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Runs the collector on already-bound listeners until `shutdown` resolves, then stops
/// accepting, lets the writer commit what is queued, and returns.
pub async fn run(
    config: CollectorConfig,
    grpc_listener: TcpListener,
    http_listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // Certificates first: a bad PEM file should fail the start before anything else happens.
    let (grpc_tls, http_tls) = match &config.transport {
        Transport::Tls(files) => (
            Some(tokio_rustls::TlsAcceptor::from(tls::server_config(
                files, b"h2",
            )?)),
            Some(tokio_rustls::TlsAcceptor::from(tls::server_config(
                files,
                b"http/1.1",
            )?)),
        ),
        Transport::Insecure => {
            tracing::warn!(
                "serving PLAIN TEXT (--insecure): anyone on the network path can read and \
                 forge reports and API answers; configure TLS (README \"Securing a deployment\")"
            );
            (None, None)
        }
    };
    if config.agent_auth.accepts_tokens() && matches!(config.transport, Transport::Insecure) {
        anyhow::bail!(
            "`agent_auth = \"{}\"` needs TLS: agent tokens and enrollment secrets must not \
             cross the network in plain text",
            config.agent_auth.as_str()
        );
    }
    if config.agent_auth.accepts_certificates()
        && !matches!(&config.transport, Transport::Tls(files) if files.client_ca_file.is_some())
    {
        anyhow::bail!(
            "`agent_auth = \"{}\"` needs `client_ca_file`",
            config.agent_auth.as_str()
        );
    }
    log_api_auth(&config, &http_listener);
    let (store, shown_database, integrity) = open_store(&config).await?;
    let loaded_at = clock::now_ms();
    let loading_started = std::time::Instant::now();
    let loader = Arc::clone(&store);
    // Hosts and check results load on two threads while the integrity check runs on a third:
    // on a large database each takes seconds.
    let loaded = tokio::task::spawn_blocking(move || {
        std::thread::scope(|scope| {
            let checks = scope.spawn(|| loader.load_checks());
            let hosts = loader.load_hosts();
            let checks = checks
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            anyhow::Ok((hosts?, checks?))
        })
    });
    // Nothing is written, and nothing served, before the check passed; its verdict comes first,
    // as a damaged file may fail the loading with a less helpful error.
    tokio::task::spawn_blocking(move || integrity.wait())
        .await
        .context("failed to check the database")??;
    let (records, checks) = loaded.await.context("failed to load hosts")??;
    tracing::info!(
        hosts = records.len(),
        check_results = checks.len(),
        database = %shown_database,
        seconds = loading_started.elapsed().as_secs_f64(),
        "store opened, checked and loaded"
    );
    let states = Arc::new(HostStates::load(records, checks));
    let refresher = if store.is_shared() {
        states.share(
            &config.collector_id,
            config.ownership_refresh.as_millis() as i64,
        );
        let refresher = OwnershipRefresher {
            store: Arc::clone(&store),
            states: Arc::clone(&states),
            collector_id: config.collector_id.clone(),
            interval: config.ownership_refresh,
            stale_after: config.stale_after,
        };
        // Before serving: until it knows the other live collectors, this one would take every
        // host for an orphan and render it twice.
        let since = refresher
            .refresh(loaded_at)
            .await
            .context("failed to read host ownership")?;
        tracing::info!(
            collector_id = %config.collector_id,
            live_collectors = ?states.ownership().live_collectors,
            "sharing the database with other collectors"
        );
        Some((refresher, since))
    } else {
        None
    };
    let metrics = Arc::new(IngestMetrics::new());
    let policy = WritePolicy {
        stale_after_ms: config.stale_after.as_millis() as i64,
    };
    let (writer, writer_task) =
        BatchWriter::start(Arc::clone(&store), policy, Arc::clone(&metrics));

    let (stop_sender, stop) = watch::channel(false);
    let stopped = |mut stop: watch::Receiver<bool>| async move {
        let _ = stop.wait_for(|stopping| *stopping).await;
    };

    let ingest = IngestService {
        writer,
        states: Arc::clone(&states),
        metrics: Arc::clone(&metrics),
        limits: validate::Limits::default(),
        agent_auth: config.agent_auth,
        tokens: agent_auth::TokenAuthenticator::new(Arc::clone(&store)),
        rate_limiter: limits::RateLimiter::new(config.agent_rate_limit),
    };
    let grpc = tonic::transport::Server::builder()
        .max_concurrent_streams(config.max_concurrent_streams)
        .add_service(
            IngestServer::new(ingest)
                .max_decoding_message_size(MAX_REPORT_BYTES)
                .max_encoding_message_size(64 * 1024),
        )
        .add_service(
            EnrollmentServer::new(agent_auth::EnrollmentService {
                store: Arc::clone(&store),
                metrics: Arc::clone(&metrics),
                agent_auth: config.agent_auth,
            })
            .max_decoding_message_size(64 * 1024),
        )
        .serve_with_incoming_shutdown(
            tls::accept(grpc_listener, grpc_tls, stop.clone(), "grpc")?.into_stream(),
            stopped(stop.clone()),
        );

    let app = api::router(api::ApiState {
        store,
        states,
        metrics,
        liveness: metrics::Liveness {
            stale_after: config.stale_after,
            expire_after: config.expire_after,
        },
        auth: Arc::new(config.api_auth.clone()),
    });
    let http = axum::serve(
        tls::accept(http_listener, http_tls, stop.clone(), "http")?,
        app,
    )
    .with_graceful_shutdown(stopped(stop.clone()));

    let refresh_task =
        refresher.map(|(refresher, since)| tokio::spawn(refresher.run(since, stop.clone())));
    let signal = tokio::spawn(async move {
        shutdown.await;
        estate_service::notify::stopping();
        let _ = stop_sender.send(true);
    });
    // The listeners are bound and the store is loaded: agents and scrapes are served now.
    estate_service::notify::ready("serving gRPC ingest, /metrics and the API");
    // A task on the runtime pings systemd's watchdog: a wedged runtime stops the pings.
    let watchdog = estate_service::notify::watchdog_interval().map(|period| {
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(period);
            loop {
                ticks.tick().await;
                estate_service::notify::watchdog();
            }
        })
    });
    let (grpc_result, http_result) = tokio::join!(grpc, http);
    signal.abort();
    if let Some(task) = refresh_task {
        task.abort();
    }
    if let Some(watchdog) = watchdog {
        watchdog.abort();
    }
    // Both servers are down, so every writer handle is dropped: the task drains and ends.
    writer_task.await.context("the store writer failed")?;
    grpc_result.context("gRPC server failed")?;
    http_result.context("HTTP server failed")?;
    tracing::info!("collector stopped");
    Ok(())
}

/// Says at start whether the HTTP API needs tokens; an open API on a non-loopback address is
/// worth a warning (anyone who reaches it may read the whole inventory).
fn log_api_auth(config: &CollectorConfig, http_listener: &TcpListener) {
    let auth = &config.api_auth;
    if auth.enabled() {
        tracing::info!(
            tokens = auth.tokens.len(),
            metrics_protected = auth.protect_metrics,
            healthz_protected = auth.protect_healthz,
            "the API needs a bearer token"
        );
    } else if http_listener
        .local_addr()
        .is_ok_and(|address| !address.ip().is_loopback())
    {
        tracing::warn!(
            "the API is open to anyone who reaches the HTTP address: no `[[api_tokens]]` are \
             configured (README \"API tokens\")"
        );
    }
}

/// Opens the store `config.database` names: a `postgres://` URL or a SQLite file. Returns it
/// with a name for logs (a URL's password hidden) and its integrity check, which may still be
/// running (SQLite): nothing may be written before it passed.
async fn open_store(
    config: &CollectorConfig,
) -> anyhow::Result<(Arc<dyn Store>, String, IntegrityCheck)> {
    let opened: (Arc<dyn Store>, String, IntegrityCheck) = match config.postgres_url() {
        Some(url) => {
            let (url, id) = (url.to_owned(), config.collector_id.clone());
            let store = tokio::task::spawn_blocking(move || PostgresStore::open(&url, &id))
                .await
                .context("failed to open the store")??;
            let shown = store.shown_url().to_owned();
            (Arc::new(store), shown, IntegrityCheck::passed())
        }
        None => {
            let database = config.database.clone();
            let (store, check) = tokio::task::spawn_blocking(move || {
                SqliteStore::open_checking_in_background(&database)
            })
            .await
            .context("failed to open the store")??;
            (
                Arc::new(store),
                config.database.display().to_string(),
                check,
            )
        }
    };
    Ok(opened)
}
