//! Delivers reports to the collector over gRPC (`estate.v1.Ingest/Report`) and sorts its
//! failures into what the agent does next: retry later, drop, or take a new identity.

use crate::config::CollectorConfig;
use estate_proto::v1::ingest_client::IngestClient;
use estate_proto::v1::{ReportRequest, ReportResponse};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
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
         are kept and sent again once the agent's certificate is fixed"
    )]
    NotAuthorized {
        url: String,
        code: Code,
        message: String,
    },
    /// The TLS settings cannot be used (unreadable or bad CA file, no system roots).
    #[error("TLS setup for collector `{url}` failed: {message}")]
    Tls { url: String, message: String },
    /// Not delivered, or delivered without an acknowledgement: send the content again later.
    #[error("collector `{url}` did not acknowledge the report ({code:?}): {message}")]
    Unreachable {
        url: String,
        code: Code,
        message: String,
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
    /// The collector knows this agent id from another machine (a cloned state directory).
    #[error("collector `{url}` reports an identity conflict: {message}")]
    IdentityConflict { url: String, message: String },
}

impl SendError {
    fn from_status(url: &str, status: tonic::Status) -> SendError {
        let url = url.to_owned();
        let code = status.code();
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
            | Code::DataLoss => SendError::Unreachable { url, code, message },
        }
    }
}

/// A gRPC client for one collector. Connects lazily and reconnects by itself, so a collector
/// that is down at start-up is not an error here.
#[derive(Debug, Clone)]
pub struct ReportSender {
    client: IngestClient<Channel>,
    url: String,
}

impl ReportSender {
    /// Prepares the channel (reading the CA file now, so a bad one fails the start); no
    /// connection is attempted until the first report.
    pub fn new(config: &CollectorConfig) -> Result<ReportSender, SendError> {
        let endpoint = Endpoint::from_shared(config.url.clone())
            .map_err(|source| SendError::InvalidUrl {
                url: config.url.clone(),
                source,
            })?
            .connect_timeout(config.connect_timeout)
            .timeout(config.timeout);
        let channel = if config.url.starts_with("https://") {
            let tls = client_tls_config(config).map_err(|message| SendError::Tls {
                url: config.url.clone(),
                message,
            })?;
            endpoint.connect_with_connector_lazy(TlsConnector {
                config: Arc::new(tls),
            })
        } else {
            // Validation let `http://` through only with `collector.insecure = true`.
            tracing::warn!(
                collector = %config.url,
                "sending reports in PLAIN TEXT (collector.insecure = true / --insecure): \
                 anyone on the network path can read and alter them"
            );
            endpoint.connect_lazy()
        };
        Ok(ReportSender {
            client: IngestClient::new(channel),
            url: config.url.clone(),
        })
    }

    /// The collector's URL, safe to log.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Sends one report and waits for the collector's acknowledgement.
    pub async fn send(&mut self, report: ReportRequest) -> Result<ReportResponse, SendError> {
        match self.client.report(report).await {
            Ok(response) => Ok(response.into_inner()),
            Err(status) => Err(SendError::from_status(&self.url, status)),
        }
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
            SendError::Tls { .. } => "tls",
            SendError::NotAuthorized { .. } => "not authorized",
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
            url: format!("http://127.0.0.1:{port}"),
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            insecure: true,
            connect_timeout: std::time::Duration::from_secs(5),
            timeout: std::time::Duration::from_secs(5),
        };
        let mut sender = ReportSender::new(&config).unwrap();
        let error = sender.send(ReportRequest::default()).await.unwrap_err();
        assert!(
            matches!(
                error,
                SendError::Unreachable {
                    code: Code::Unavailable,
                    ..
                }
            ),
            "{error:?}"
        );
    }
}
