//! Delivers reports to the collector over gRPC (`estate.v1.Ingest/Report`) and sorts its
//! failures into what the agent does next: retry later, drop, or take a new identity.
//!
//! With several collectors (`collector.urls`), an unreachable one is skipped for a growing
//! while and the report goes to the next; the agent stays with whichever answered, so its host
//! keeps one collector (and one `/metrics`) until that one fails.

use crate::config::CollectorConfig;
use crate::credentials::{AGENT_TOKEN_PREFIX, Bearer, CredentialFiles, check_secret};
use estate_proto::v1::enrollment_client::EnrollmentClient;
use estate_proto::v1::ingest_client::IngestClient;
use estate_proto::v1::{EnrollRequest, ReportRequest, ReportResponse};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tonic::Code;
use tonic::transport::{Channel, Endpoint, Uri};

/// The prefix of a `FAILED_PRECONDITION` message by which the collector says that this agent id
/// belongs to another machine.
pub const IDENTITY_CONFLICT_PREFIX: &str = "identity conflict";

/// Why a report was not acknowledged. The URL is logged as is: validation keeps credentials
/// out of it.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("invalid collector url `{url}`")]
    InvalidUrl {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
    /// The collector does not accept this agent's credentials (none, or another host's). Not
    /// the report's fault: it stays queued until an administrator fixes the credentials.
    #[error(
        "collector `{url}` refused this agent's credentials ({code:?}): {message}; the reports \
         are kept and sent again once the agent's certificate or token is fixed"
    )]
    NotAuthorized {
        url: String,
        code: Code,
        message: String,
    },
    /// The collector refused to exchange the enrollment secret for an agent token.
    #[error(
        "collector `{url}` refused to enroll this agent ({code:?}): {message}; the reports are \
         kept and enrollment is tried again later"
    )]
    EnrollmentRefused {
        url: String,
        code: Code,
        message: String,
    },
    /// The agent token or enrollment secret cannot be read or saved.
    #[error("{message}")]
    Credentials { message: String },
    /// The TLS settings cannot be used (unreadable or bad CA file, no system roots).
    #[error("TLS setup for collector `{url}` failed: {message}")]
    Tls { url: String, message: String },
    /// Not delivered, or delivered without an acknowledgement: send the content again later.
    #[error("collector `{url}` did not acknowledge the report ({code:?}): {message}")]
    Unreachable {
        url: String,
        code: Code,
        message: String,
        /// Whether the report may have been stored all the same ([`Reached`]).
        reached: Reached,
    },
    /// The collector refused this report; sending it again would be refused again.
    #[error("collector `{url}` rejected the report ({code:?}): {message}")]
    Rejected {
        url: String,
        code: Code,
        message: String,
    },
    /// The collector's rate limit (`RESOURCE_EXHAUSTED`): send the same report again shortly.
    #[error("collector `{url}` asks to slow down: {message}")]
    Throttled { url: String, message: String },
    /// The configuration lists no collector (validation prevents it).
    #[error("no collector url is configured")]
    NoCollector,
    /// The collector knows this agent id from another machine (a cloned state directory).
    #[error("collector `{url}` reports an identity conflict: {message}")]
    IdentityConflict { url: String, message: String },
}

/// Whether a delivery that failed may have reached the collector's store: the accounting of
/// reports the agent later drops depends on it (a report stored without an answer, then
/// dropped from the spool, is both stored and counted as dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reached {
    /// No connection was made (refused, connect timeout, TLS handshake failed), or the
    /// collector answered that it did not write the report: certainly not stored.
    No,
    /// The request may have been sent and no answer says what became of it (the connection
    /// broke, the request timed out, the store failed in an unknown state): perhaps stored.
    Maybe,
}

impl Reached {
    /// Sorts a failed call: a status the collector sent names its own outcome; one made up by
    /// the client (it carries the transport error as its source) is a non-answer unless the
    /// connection was never made.
    fn of(status: &tonic::Status) -> Reached {
        let Some(source) = std::error::Error::source(status) else {
            // The collector's own answer: these codes say the report was not written, the
            // others (Internal, Unknown, DataLoss, …) may come from a store that failed
            // half way, such as a commit whose acknowledgement the database lost.
            return match status.code() {
                Code::Unavailable | Code::ResourceExhausted => Reached::No,
                _ => Reached::Maybe,
            };
        };
        let mut cause = Some(source);
        while let Some(error) = cause {
            if error.is::<tonic::ConnectError>() {
                return Reached::No;
            }
            // The connect timeout (`collector.connect_timeout`): an `io::Error` of kind
            // `TimedOut` wrapping tokio's `Elapsed`, unlike a timeout on an open connection.
            if let Some(io) = error.downcast_ref::<std::io::Error>()
                && io.kind() == std::io::ErrorKind::TimedOut
                && io
                    .get_ref()
                    .is_some_and(|inner| inner.is::<tokio::time::error::Elapsed>())
            {
                return Reached::No;
            }
            cause = error.source();
        }
        Reached::Maybe
    }
}

impl SendError {
    fn from_status(url: &str, status: tonic::Status) -> SendError {
        let url = url.to_owned();
        let code = status.code();
        let reached = Reached::of(&status);
        // The status message alone is often just "transport error"; the cause says which.
        let mut message = status.message().to_owned();
        let mut source = std::error::Error::source(&status);
        while let Some(cause) = source {
            // Layers often repeat their cause's text ("tcp connect error: tcp connect error").
            let text = cause.to_string();
            if !message.contains(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
            source = cause.source();
        }
        match code {
            Code::FailedPrecondition if status.message().starts_with(IDENTITY_CONFLICT_PREFIX) => {
                SendError::IdentityConflict { url, message }
            }
            Code::PermissionDenied | Code::Unauthenticated => {
                SendError::NotAuthorized { url, code, message }
            }
            // The report is at fault: resending cannot help.
            Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::OutOfRange
            | Code::NotFound
            | Code::AlreadyExists
            | Code::Unimplemented => SendError::Rejected { url, code, message },
            Code::ResourceExhausted => SendError::Throttled { url, message },
            // The network, or the collector's side (store busy or failing): try again later.
            Code::Ok
            | Code::Cancelled
            | Code::Unknown
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss => SendError::Unreachable {
                url,
                code,
                message,
                reached,
            },
        }
    }
}

/// What [`ReportSender::deliver`] did with one report.
#[derive(Debug)]
pub struct DeliveryOutcome {
    /// The collector's answer, or why there is none (the last collector's failure).
    pub result: Result<ReportResponse, SendError>,
    /// Attempts (one per collector tried) that may have reached the collector's store without
    /// an answer ([`Reached::Maybe`]): when not zero, the report may be stored whatever the
    /// result says.
    pub unanswered_attempts: u32,
}

/// How long an unreachable collector is skipped after its first failure; doubled at each
/// further failure up to [`MAX_SKIP`].
const FIRST_SKIP: Duration = Duration::from_secs(1);
const MAX_SKIP: Duration = Duration::from_secs(60);

/// One collector's client and its recent failures.
#[derive(Debug, Clone)]
struct CollectorClient {
    client: IngestClient<Channel>,
    enrollment: EnrollmentClient<Channel>,
    url: String,
    failures: u32,
    skip_until: Option<Instant>,
}

impl CollectorClient {
    /// Prepares the channel (reading the CA file now, so a bad one fails the start). Lazy: a
    /// collector that is down at start-up is not an error. Each (re)connection resolves the
    /// name and tries every address it resolves to, in turn.
    fn new(url: &str, config: &CollectorConfig) -> Result<Self, SendError> {
        let endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|source| SendError::InvalidUrl {
                url: url.to_owned(),
                source,
            })?
            .connect_timeout(config.connect_timeout)
            .timeout(config.timeout);
        let channel = if url.starts_with("https://") {
            let tls = client_tls_config(config).map_err(|message| SendError::Tls {
                url: url.to_owned(),
                message,
            })?;
            endpoint.connect_with_connector_lazy(TlsConnector {
                config: Arc::new(tls),
            })
        } else {
            // Validation let `http://` through only with `collector.insecure = true`.
            tracing::warn!(
                collector = %url,
                "sending reports in PLAIN TEXT (collector.insecure = true / --insecure): \
                 anyone on the network path can read and alter them"
            );
            endpoint.connect_lazy()
        };
        Ok(CollectorClient {
            client: IngestClient::new(channel.clone()),
            enrollment: EnrollmentClient::new(channel),
            url: url.to_owned(),
            failures: 0,
            skip_until: None,
        })
    }

    fn skipped(&self, now: Instant) -> bool {
        self.skip_until.is_some_and(|until| now < until)
    }

    fn failed(&mut self, now: Instant) {
        self.failures = self.failures.saturating_add(1);
        let skip = FIRST_SKIP
            .saturating_mul(1 << (self.failures - 1).min(6))
            .min(MAX_SKIP);
        self.skip_until = Some(now + skip);
    }

    fn answered(&mut self) {
        self.failures = 0;
        self.skip_until = None;
    }
}

/// gRPC clients for the configured collectors, of which one is current.
#[derive(Debug, Clone)]
pub struct ReportSender {
    collectors: Vec<CollectorClient>,
    current: usize,
    credentials: CredentialFiles,
    /// Agent tokens are sent only over TLS (`collector.insecure` is off).
    use_tokens: bool,
    /// The agent token sent with each report, once read or obtained; forgotten when the
    /// collector refuses it, so that a token an administrator replaced (or removed, to enroll
    /// again) is picked up at the next attempt without a restart.
    bearer: Option<Bearer>,
}

impl ReportSender {
    /// Prepares a channel per collector; no connection is attempted until the first report.
    pub fn new(config: &CollectorConfig) -> Result<ReportSender, SendError> {
        let collectors = config
            .urls
            .iter()
            .map(|url| CollectorClient::new(url, config))
            .collect::<Result<Vec<_>, _>>()?;
        if collectors.is_empty() {
            return Err(SendError::NoCollector);
        }
        Ok(ReportSender {
            collectors,
            current: 0,
            credentials: config.credentials.clone(),
            use_tokens: !config.insecure,
            bearer: None,
        })
    }

    /// The current collector's URL, safe to log.
    pub fn url(&self) -> &str {
        &self.collectors[self.current].url
    }

    /// The order in which to try the collectors now: the current one, then the others in
    /// configured order after it, leaving out those skipped after a failure; if every one is
    /// skipped, the one whose skip ends first.
    fn attempt_order(&self, now: Instant) -> Vec<usize> {
        let count = self.collectors.len();
        let order: Vec<usize> = (0..count)
            .map(|offset| (self.current + offset) % count)
            .filter(|&index| !self.collectors[index].skipped(now))
            .collect();
        if !order.is_empty() {
            return order;
        }
        let soonest = (0..count)
            .min_by_key(|&index| self.collectors[index].skip_until)
            .unwrap_or(self.current);
        vec![soonest]
    }

    /// Sends one report and waits for an acknowledgement, moving on to the next collector
    /// while one is unreachable. Any other answer (a refusal, a request to slow down) is
    /// final: the collectors share one database and would answer the same.
    pub async fn send(&mut self, report: ReportRequest) -> Result<ReportResponse, SendError> {
        self.deliver(report).await.result
    }

    /// [`ReportSender::send`], also telling how many attempts ended without an answer (the
    /// spool's accounting of reports dropped later needs it).
    pub async fn deliver(&mut self, report: ReportRequest) -> DeliveryOutcome {
        let mut unanswered_attempts = 0;
        let result = self.try_collectors(report, &mut unanswered_attempts).await;
        DeliveryOutcome {
            result,
            unanswered_attempts,
        }
    }

    async fn try_collectors(
        &mut self,
        report: ReportRequest,
        unanswered_attempts: &mut u32,
    ) -> Result<ReportResponse, SendError> {
        if self.use_tokens && self.bearer.is_none() {
            self.bearer = self.obtain_token(&report).await?;
        }
        let order = self.attempt_order(Instant::now());
        let mut last_error = None;
        let mut pending = Some(report);
        for (attempt, &index) in order.iter().enumerate() {
            // The last candidate takes the report itself: no copy of a large inventory.
            let request = if attempt + 1 == order.len() {
                pending.take()
            } else {
                pending.clone()
            };
            let Some(request) = request else { break };
            let mut request = tonic::Request::new(request);
            if let Some(bearer) = &self.bearer {
                request
                    .metadata_mut()
                    .insert("authorization", bearer.value());
            }
            let collector = &mut self.collectors[index];
            match collector.client.report(request).await {
                Ok(response) => {
                    collector.answered();
                    if index != self.current {
                        tracing::info!(
                            from = %self.collectors[self.current].url,
                            to = %self.collectors[index].url,
                            "reporting to another collector"
                        );
                        self.current = index;
                    }
                    return Ok(response.into_inner());
                }
                Err(status) => match SendError::from_status(&collector.url, status) {
                    error @ SendError::Unreachable { reached, .. } => {
                        collector.failed(Instant::now());
                        if reached == Reached::Maybe {
                            *unanswered_attempts += 1;
                        }
                        if order.len() > 1 {
                            tracing::warn!(%error, "collector unreachable; trying the next");
                        }
                        last_error = Some(error);
                    }
                    other => {
                        collector.answered();
                        if matches!(other, SendError::NotAuthorized { .. }) {
                            self.bearer = None;
                        }
                        return Err(other);
                    }
                },
            }
        }
        Err(last_error.unwrap_or(SendError::NoCollector))
    }

    /// The agent token: the saved one, else (with an enrollment secret) a new one from the
    /// first collector that answers, saved for the next start. `None` without either.
    async fn obtain_token(&mut self, report: &ReportRequest) -> Result<Option<Bearer>, SendError> {
        let credentials_error = |message| SendError::Credentials { message };
        if let Some(bearer) = self.credentials.load_token().map_err(credentials_error)? {
            return Ok(Some(bearer));
        }
        let Some(secret) = self
            .credentials
            .enrollment_secret()
            .map_err(credentials_error)?
        else {
            return Ok(None);
        };
        let identity = report.identity.clone().unwrap_or_default();
        let request = EnrollRequest {
            enrollment_secret: secret,
            hostname: identity.hostname.clone(),
            agent_id: identity.agent_id,
        };
        let mut last_error = None;
        for index in self.attempt_order(Instant::now()) {
            let collector = &mut self.collectors[index];
            let status = match collector.enrollment.enroll(request.clone()).await {
                Ok(response) => {
                    collector.answered();
                    let response = response.into_inner();
                    let what = format!("the agent token collector `{}` issued", collector.url);
                    let token = check_secret(&response.agent_token, AGENT_TOKEN_PREFIX, &what)
                        .map_err(credentials_error)?;
                    self.credentials
                        .save_token(token)
                        .map_err(credentials_error)?;
                    tracing::info!(
                        collector = %collector.url,
                        hostname = %identity.hostname,
                        token_id = %response.token_id,
                        token_file = %self.credentials.token_file.display(),
                        "enrolled: agent token saved"
                    );
                    return Bearer::new(token).map(Some).map_err(credentials_error);
                }
                Err(status) => status,
            };
            match SendError::from_status(&collector.url, status) {
                error @ SendError::Unreachable { .. } => {
                    collector.failed(Instant::now());
                    last_error = Some(error);
                }
                error @ SendError::Throttled { .. } => return Err(error),
                SendError::NotAuthorized { url, code, message }
                | SendError::Rejected { url, code, message } => {
                    collector.answered();
                    return Err(SendError::EnrollmentRefused { url, code, message });
                }
                other => {
                    collector.answered();
                    return Err(other);
                }
            }
        }
        Err(last_error.unwrap_or(SendError::NoCollector))
    }
}

/// The rustls (ring) client config: the collector's certificate is verified against
/// `collector.ca_file` alone when set (a private CA should not share trust with the public
/// ones), else against the operating system's trusted roots.
fn client_tls_config(config: &CollectorConfig) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    match &config.ca_file {
        Some(path) => {
            for certificate in read_certificates(path)? {
                roots.add(certificate).map_err(|error| {
                    format!(
                        "CA file `{}` holds an unusable certificate: {error}",
                        path.display()
                    )
                })?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for error in &native.errors {
                tracing::warn!(%error, "a system CA certificate could not be loaded");
            }
            let (added, _ignored) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                return Err("the system has no usable trusted CA certificates: set \
                            `collector.ca_file` to the CA that signed the collector's \
                            certificate"
                    .to_owned());
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("TLS provider: {error}"))?
        .with_root_certificates(roots);
    let mut tls = match (&config.client_cert_file, &config.client_key_file) {
        (Some(cert_file), Some(key_file)) => {
            let chain = read_certificates(cert_file)?;
            let text = std::fs::read(key_file).map_err(|error| {
                format!(
                    "cannot read client key file `{}`: {error}",
                    key_file.display()
                )
            })?;
            let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(&text).map_err(|error| {
                format!(
                    "client key file `{}` holds no usable PEM private key: {error}",
                    key_file.display()
                )
            })?;
            builder.with_client_auth_cert(chain, key).map_err(|error| {
                format!(
                    "client certificate `{}` and key `{}` do not make a usable pair: {error}",
                    cert_file.display(),
                    key_file.display()
                )
            })?
        }
        _ => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![b"h2".to_vec()];
    Ok(tls)
}

/// Every certificate in a PEM file; errors name the file.
fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let text = std::fs::read(path)
        .map_err(|error| format!("cannot read certificate file `{}`: {error}", path.display()))?;
    let certificates = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| {
            format!(
                "certificate file `{}` is not valid PEM: {error}",
                path.display()
            )
        })?;
    if certificates.is_empty() {
        return Err(format!(
            "certificate file `{}` holds no `BEGIN CERTIFICATE` block",
            path.display()
        ));
    }
    Ok(certificates)
}

/// Opens TCP, then TLS with the collector's host name, for tonic's channel.
#[derive(Debug, Clone)]
struct TlsConnector {
    config: Arc<rustls::ClientConfig>,
}

type Connecting<T> = Pin<Box<dyn Future<Output = std::io::Result<T>> + Send>>;

impl tonic::codegen::Service<Uri> for TlsConnector {
    type Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Connecting<Self::Response>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connector = tokio_rustls::TlsConnector::from(Arc::clone(&self.config));
        Box::pin(async move {
            let invalid =
                |message: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, message);
            let host = uri
                .host()
                .ok_or_else(|| invalid(format!("url `{uri}` has no host")))?;
            // `[::1]` in a URL is `::1` as a name to verify.
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let port = uri.port_u16().unwrap_or(443);
            let name = ServerName::try_from(host.clone())
                .map_err(|error| invalid(format!("`{host}` is not a TLS server name: {error}")))?;
            let stream = TcpStream::connect((host.as_str(), port)).await?;
            let _ = stream.set_nodelay(true);
            let stream = connector.connect(name, stream).await?;
            Ok(hyper_util::rt::TokioIo::new(stream))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify(code: Code, message: &str) -> String {
        let error = SendError::from_status("http://c:1", tonic::Status::new(code, message));
        let kind = match &error {
            SendError::InvalidUrl { .. } => "invalid url",
            SendError::NoCollector => "no collector",
            SendError::Tls { .. } => "tls",
            SendError::NotAuthorized { .. } => "not authorized",
            SendError::EnrollmentRefused { .. } => "enrollment refused",
            SendError::Credentials { .. } => "credentials",
            SendError::Unreachable { .. } => "unreachable",
            SendError::Rejected { .. } => "rejected",
            SendError::IdentityConflict { .. } => "identity conflict",
            SendError::Throttled { .. } => "throttled",
        };
        format!("{kind}: {error}")
    }

    #[test]
    fn statuses_are_sorted_by_what_the_agent_does_next() {
        assert_eq!(
            classify(
                Code::FailedPrecondition,
                "identity conflict: agent id `x` is host `y`"
            ),
            "identity conflict: collector `http://c:1` reports an identity conflict: identity \
             conflict: agent id `x` is host `y`"
        );
        assert_eq!(
            classify(Code::InvalidArgument, "hostname too long"),
            "rejected: collector `http://c:1` rejected the report (InvalidArgument): hostname \
             too long"
        );
        assert_eq!(
            classify(Code::FailedPrecondition, "clock skew"),
            "rejected: collector `http://c:1` rejected the report (FailedPrecondition): clock \
             skew"
        );
        assert_eq!(
            classify(Code::ResourceExhausted, "rate limit"),
            "throttled: collector `http://c:1` asks to slow down: rate limit"
        );
        assert_eq!(
            classify(Code::Unavailable, "store busy"),
            "unreachable: collector `http://c:1` did not acknowledge the report (Unavailable): \
             store busy"
        );
    }

    #[tokio::test]
    async fn a_collector_that_does_not_listen_is_unreachable() {
        // Bind then drop to get a loopback port on which nothing listens.
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let config = CollectorConfig {
            urls: vec![format!("http://127.0.0.1:{port}")],
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            credentials: CredentialFiles {
                token_file: std::path::PathBuf::from("/nonexistent/agent-token"),
                enrollment_secret_file: None,
            },
            insecure: true,
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(5),
        };
        let mut sender = ReportSender::new(&config).unwrap();
        let outcome = sender.deliver(ReportRequest::default()).await;
        let error = outcome.result.unwrap_err();
        assert!(
            matches!(
                error,
                SendError::Unreachable {
                    code: Code::Unavailable,
                    reached: Reached::No,
                    ..
                }
            ),
            "{error:?}"
        );
        assert_eq!(
            outcome.unanswered_attempts, 0,
            "never sent, certainly not stored"
        );
    }

    #[test]
    fn the_collectors_own_failures_say_whether_the_report_may_be_stored() {
        let reached = |code| Reached::of(&tonic::Status::new(code, "from the collector"));
        // Refused before the write: the write queue is full, the collector is stopping.
        assert_eq!(reached(Code::Unavailable), Reached::No);
        assert_eq!(reached(Code::ResourceExhausted), Reached::No);
        // A store that failed may have failed after its commit.
        assert_eq!(reached(Code::Internal), Reached::Maybe);
        assert_eq!(reached(Code::DeadlineExceeded), Reached::Maybe);
    }

    /// A loopback listener that accepts connections and hands each to `handle`.
    async fn raw_listener<F, Fut>(handle: F) -> String
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(handle(stream));
            }
        });
        url
    }

    /// The delivery failed after one attempt that may have reached the collector.
    fn assert_one_unanswered_attempt(outcome: DeliveryOutcome) {
        assert!(
            matches!(
                outcome.result,
                Err(SendError::Unreachable {
                    reached: Reached::Maybe,
                    ..
                })
            ),
            "{:?}",
            outcome.result
        );
        assert_eq!(outcome.unanswered_attempts, 1);
    }

    #[tokio::test]
    async fn a_request_that_times_out_may_have_been_stored() {
        use tokio::io::AsyncReadExt;
        // Reads the request and never answers.
        let url = raw_listener(|mut stream| async move {
            let mut buffer = [0; 4096];
            while stream.read(&mut buffer).await.is_ok_and(|read| read > 0) {}
        })
        .await;
        let mut sender = sender(&[&url]);
        // The request timeout, shortened: `collector.timeout` is at least a second.
        let channel = Endpoint::from_shared(url.clone())
            .unwrap()
            .timeout(Duration::from_millis(300))
            .connect_lazy();
        sender.collectors[0].client = IngestClient::new(channel);
        assert_one_unanswered_attempt(sender.deliver(ReportRequest::default()).await);
    }

    #[tokio::test]
    async fn a_connection_that_breaks_mid_request_may_have_delivered_it() {
        use tokio::io::AsyncReadExt;
        // Reads the start of the request, then closes the connection (a killed collector).
        let url = raw_listener(|mut stream| async move {
            let mut buffer = [0; 64];
            let _ = stream.read(&mut buffer).await;
        })
        .await;
        let mut sender = sender(&[&url]);
        assert_one_unanswered_attempt(sender.deliver(ReportRequest::default()).await);
    }

    /// A collector that answers every report with `answer` and counts what it received.
    #[derive(Clone)]
    struct FakeCollector {
        received: Arc<std::sync::atomic::AtomicUsize>,
        answer: Result<(), (Code, &'static str)>,
    }

    #[tonic::async_trait]
    impl estate_proto::v1::ingest_server::Ingest for FakeCollector {
        async fn report(
            &self,
            _request: tonic::Request<ReportRequest>,
        ) -> Result<tonic::Response<ReportResponse>, tonic::Status> {
            self.received
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            match self.answer {
                Ok(()) => Ok(tonic::Response::new(ReportResponse::default())),
                Err((code, message)) => Err(tonic::Status::new(code, message)),
            }
        }
    }

    impl FakeCollector {
        /// Serves on a loopback port until the test ends; returns its URL.
        async fn serve(answer: Result<(), (Code, &'static str)>) -> (String, Self) {
            let fake = FakeCollector {
                received: Default::default(),
                answer,
            };
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            let service = estate_proto::v1::ingest_server::IngestServer::new(fake.clone());
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(service)
                    .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
            );
            (url, fake)
        }

        fn received(&self) -> usize {
            self.received.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    fn unused_port_url() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    }

    fn sender(urls: &[&str]) -> ReportSender {
        ReportSender::new(&CollectorConfig {
            urls: urls.iter().map(|url| (*url).to_owned()).collect(),
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            credentials: CredentialFiles {
                token_file: std::path::PathBuf::from("/nonexistent/agent-token"),
                enrollment_secret_file: None,
            },
            insecure: true,
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(5),
        })
        .unwrap()
    }

    #[tokio::test]
    async fn an_unreachable_collector_is_skipped_and_the_next_one_kept() {
        let dead = unused_port_url();
        let (live, collector) = FakeCollector::serve(Ok(())).await;
        let mut sender = sender(&[&dead, &live]);
        assert_eq!(sender.url(), dead);
        sender.send(ReportRequest::default()).await.unwrap();
        assert_eq!(sender.url(), live, "failed over");
        // The next report goes straight to the collector that answered.
        sender.send(ReportRequest::default()).await.unwrap();
        assert_eq!(collector.received(), 2);
        assert_eq!(sender.collectors[0].failures, 1);
        assert!(sender.collectors[0].skipped(Instant::now()));
    }

    #[tokio::test]
    async fn when_every_collector_is_down_the_last_error_is_returned() {
        let (first, second) = (unused_port_url(), unused_port_url());
        let mut sender = sender(&[&first, &second]);
        let error = sender.send(ReportRequest::default()).await.unwrap_err();
        assert!(
            matches!(&error, SendError::Unreachable { url, .. } if *url == second),
            "{error:?}"
        );
        // Both are skipped now: the next send tries only the one whose skip ends first.
        assert_eq!(sender.attempt_order(Instant::now()), vec![0]);
        assert_eq!(sender.collectors[0].failures, 1);
    }

    #[tokio::test]
    async fn a_refusal_is_not_retried_at_another_collector() {
        let (refusing, first) =
            FakeCollector::serve(Err((Code::InvalidArgument, "hostname too long"))).await;
        let (other, second) = FakeCollector::serve(Ok(())).await;
        let mut sender = sender(&[&refusing, &other]);
        let error = sender.send(ReportRequest::default()).await.unwrap_err();
        assert!(matches!(error, SendError::Rejected { .. }), "{error:?}");
        assert_eq!((first.received(), second.received()), (1, 0));
    }

    #[tokio::test]
    async fn skips_grow_and_stop_at_a_minute() {
        let mut collector = sender(&["http://127.0.0.1:1"]).collectors.remove(0);
        let now = Instant::now();
        let mut skips = Vec::new();
        for _ in 0..9 {
            collector.failed(now);
            skips.push((collector.skip_until.unwrap() - now).as_secs());
        }
        assert_eq!(skips, vec![1, 2, 4, 8, 16, 32, 60, 60, 60]);
        collector.answered();
        assert!(!collector.skipped(now));
    }
}
