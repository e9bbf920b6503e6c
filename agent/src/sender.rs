//! Delivers reports to the collector over gRPC (`estate.v1.Ingest/Report`) and sorts its
//! failures into what the agent does next: retry later, drop, or take a new identity.

use crate::config::CollectorConfig;
use estate_proto::v1::ingest_client::IngestClient;
use estate_proto::v1::{ReportRequest, ReportResponse};
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

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
            // The report is at fault (or the agent's credentials): resending cannot help.
            Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::OutOfRange
            | Code::PermissionDenied
            | Code::Unauthenticated
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
    /// Prepares the channel; no connection is attempted until the first report.
    pub fn new(config: &CollectorConfig) -> Result<ReportSender, SendError> {
        let endpoint = Endpoint::from_shared(config.url.clone())
            .map_err(|source| SendError::InvalidUrl {
                url: config.url.clone(),
                source,
            })?
            .connect_timeout(config.connect_timeout)
            .timeout(config.timeout);
        Ok(ReportSender {
            client: IngestClient::new(endpoint.connect_lazy()),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn classify(code: Code, message: &str) -> String {
        let error = SendError::from_status("http://c:1", tonic::Status::new(code, message));
        let kind = match &error {
            SendError::InvalidUrl { .. } => "invalid url",
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
