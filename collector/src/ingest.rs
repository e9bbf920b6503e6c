//! The gRPC ingest service: validate, write through the group-commit writer, then update the
//! in-memory host state and acknowledge.

use crate::agent_auth::{AGENT_TOKEN_HOW_TO, AgentAuth, TokenAuthenticator};
use crate::clock::now_ms;
use crate::error::ApiError;
use crate::limits::RateLimiter;
use crate::metrics::{IngestMetrics, ReportResult};
use crate::state::HostStates;
use crate::store::{IncomingReport, WriteOutcome};
use crate::tls::PeerInfo;
use crate::validate::{Limits, RejectReason, check_report};
use crate::writer::BatchWriter;
use estate_proto::v1::ingest_server::Ingest;
use estate_proto::v1::{ReportRequest, ReportResponse};
use std::sync::Arc;
use std::time::Instant;
use tonic::{Request, Response, Status};

/// Largest encoded report accepted; a full inventory of a large server is a few hundred KiB.
pub const MAX_REPORT_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug)]
pub struct IngestService {
    pub writer: BatchWriter,
    pub states: Arc<HostStates>,
    pub metrics: Arc<IngestMetrics>,
    pub limits: Limits,
    /// The credential a report must carry (a client certificate, an agent token), which
    /// must name the report's host.
    pub agent_auth: AgentAuth,
    pub tokens: TokenAuthenticator,
    pub rate_limiter: RateLimiter,
}

/// What an agent without a client certificate is told.
pub const CLIENT_CERTIFICATE_HOW_TO: &str = "this collector authenticates agents by client \
     certificate: make one for this host with `estate-collector tls init --dir DIR --client \
     HOSTNAME` and set `collector.client_cert_file` and `collector.client_key_file` (README \
     \"Securing a deployment\")";

/// What an agent with neither a client certificate nor a token is told (`agent_auth = "either"`).
pub const EITHER_HOW_TO: &str = "this collector authenticates agents by client certificate or \
     by token: give this host a client certificate (`estate-collector tls init --dir DIR \
     --client HOSTNAME`, then `collector.client_cert_file` and `collector.client_key_file`) or \
     an agent token (`estate-collector token create --enrollment`, then \
     `collector.enrollment_secret_file`); README \"Securing a deployment\"";

/// The names a client certificate vouches for: its SAN DNS names, or, without any, its
/// subject common names.
pub fn certificate_names(der: &[u8]) -> Result<Vec<String>, String> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der)
        .map_err(|error| format!("unreadable client certificate: {error}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = certificate.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                names.push((*dns).to_owned());
            }
        }
    }
    if names.is_empty() {
        names.extend(
            certificate
                .subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok().map(str::to_owned)),
        );
    }
    if names.is_empty() {
        return Err("the client certificate names no host (no SAN DNS name, no CN)".to_owned());
    }
    Ok(names)
}

/// Binds the report to the client certificate: the report's hostname must equal (ignoring
/// case) one of the certificate's names.
pub fn authorize_by_certificate(
    peer: Option<&PeerInfo>,
    report: &ReportRequest,
) -> Result<(), (ReportResult, Status)> {
    let Some(leaf) = peer
        .and_then(|peer| peer.certificates.as_ref())
        .and_then(|chain| chain.first())
    else {
        return Err((
            ReportResult::Unauthenticated,
            Status::unauthenticated(CLIENT_CERTIFICATE_HOW_TO),
        ));
    };
    let names = certificate_names(leaf).map_err(|message| {
        (
            ReportResult::Unauthenticated,
            Status::unauthenticated(message),
        )
    })?;
    let hostname = report
        .identity
        .as_ref()
        .map_or("", |identity| identity.hostname.as_str());
    if names.iter().any(|name| name.eq_ignore_ascii_case(hostname)) {
        return Ok(());
    }
    let names = names
        .iter()
        .map(|name| format!("`{name}`"))
        .collect::<Vec<_>>()
        .join(", ");
    Err((
        ReportResult::PermissionDenied,
        Status::permission_denied(format!(
            "the client certificate is for host {names} but the report is from host \
             `{hostname}`: an agent may report only as its own host"
        )),
    ))
}

#[tonic::async_trait]
impl Ingest for IngestService {
    async fn report(
        &self,
        request: Request<ReportRequest>,
    ) -> Result<Response<ReportResponse>, Status> {
        let started = Instant::now();
        let received_ms = now_ms();
        let peer = request.extensions().get::<PeerInfo>().cloned();
        let (metadata, _, report) = request.into_parts();
        let had_inventory = report.inventory.is_some();
        if let Err((result, status)) = self.authorize(peer.as_ref(), &metadata, &report).await {
            tracing::warn!(
                remote = ?peer.and_then(|peer| peer.remote_addr),
                error = %status.message(),
                "report refused"
            );
            self.metrics
                .observe_report(result, started.elapsed(), had_inventory);
            return Err(status);
        }
        let (result, answer) = self.handle(report, received_ms).await;
        self.metrics
            .observe_report(result, started.elapsed(), had_inventory);
        answer.map(Response::new).map_err(Status::from)
    }
}

impl IngestService {
    /// Applies `agent_auth`. With `either`, an agent that presents a client certificate is
    /// judged by it, any other by its token.
    async fn authorize(
        &self,
        peer: Option<&PeerInfo>,
        metadata: &tonic::metadata::MetadataMap,
        report: &ReportRequest,
    ) -> Result<(), (ReportResult, Status)> {
        let has_certificate = peer.is_some_and(|peer| peer.certificates.is_some());
        let hostname = report
            .identity
            .as_ref()
            .map_or("", |identity| identity.hostname.as_str());
        match self.agent_auth {
            AgentAuth::None => Ok(()),
            AgentAuth::Certificate => authorize_by_certificate(peer, report),
            AgentAuth::Either if has_certificate => authorize_by_certificate(peer, report),
            AgentAuth::Token => self.tokens.authorize(metadata, hostname).await.map(|_| ()),
            AgentAuth::Either => match self.tokens.authorize(metadata, hostname).await {
                Ok(_) => Ok(()),
                // Neither credential: name both ways in.
                Err((result, status)) if status.message() == AGENT_TOKEN_HOW_TO => {
                    Err((result, Status::unauthenticated(EITHER_HOW_TO)))
                }
                Err(refusal) => Err(refusal),
            },
        }
    }

    async fn handle(
        &self,
        report: ReportRequest,
        received_ms: i64,
    ) -> (ReportResult, Result<ReportResponse, ApiError>) {
        let valid = match check_report(report, &self.limits) {
            Ok(valid) => valid,
            Err(rejection) => {
                tracing::warn!(error = %rejection.error.message, "report rejected");
                self.metrics.observe_rejection(rejection.reason);
                return (ReportResult::Invalid, Err(rejection.error));
            }
        };
        let agent_id = valid.agent_id().to_owned();
        if let Err(wait) = self.rate_limiter.try_acquire(&agent_id, Instant::now()) {
            let limit = self.rate_limiter.limit();
            self.metrics.observe_rejection(RejectReason::RateLimited);
            tracing::debug!(agent_id, "report refused by the rate limit");
            return (
                ReportResult::RateLimited,
                Err(ApiError::new(
                    crate::error::ErrorCode::ResourceExhausted,
                    format!(
                        "agent `{agent_id}` exceeds the rate limit of {} reports per second \
                         (burst {}); retry in {} ms",
                        limit.reports_per_second,
                        limit.burst,
                        wait.as_millis().max(1)
                    ),
                )),
            );
        }
        let outcome = self
            .writer
            .write(IncomingReport {
                report: valid,
                received_ms,
            })
            .await;
        let answer = |need_full_inventory, duplicate| ReportResponse {
            need_full_inventory,
            collector_time_unix_ms: now_ms(),
            duplicate,
        };
        match outcome {
            Ok(WriteOutcome::Stored {
                need_full_inventory,
                host,
                checks,
            }) => {
                self.states.update(*host, checks);
                (ReportResult::Stored, Ok(answer(need_full_inventory, false)))
            }
            Ok(WriteOutcome::Duplicate) => (ReportResult::Duplicate, Ok(answer(false, true))),
            Ok(WriteOutcome::IdentityConflict { message, host }) => {
                tracing::warn!(agent_id, %message, "report refused");
                self.metrics
                    .observe_rejection(RejectReason::IdentityConflict);
                self.states.update(*host, None);
                (
                    ReportResult::IdentityConflict,
                    Err(ApiError::new(
                        crate::error::ErrorCode::FailedPrecondition,
                        message,
                    )),
                )
            }
            Err(error) => (ReportResult::Error, Err(error)),
        }
    }
}
