//! The gRPC ingest service: validate, write through the group-commit writer, then update the
//! in-memory host state and acknowledge.

use crate::clock::now_ms;
use crate::error::ApiError;
use crate::limits::RateLimiter;
use crate::metrics::{IngestMetrics, ReportResult};
use crate::state::HostStates;
use crate::store::{IncomingReport, WriteOutcome};
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
    pub rate_limiter: RateLimiter,
}

#[tonic::async_trait]
impl Ingest for IngestService {
    async fn report(
        &self,
        request: Request<ReportRequest>,
    ) -> Result<Response<ReportResponse>, Status> {
        let started = Instant::now();
        let received_ms = now_ms();
        let report = request.into_inner();
        let had_inventory = report.inventory.is_some();
        let (result, answer) = self.handle(report, received_ms).await;
        self.metrics
            .observe_report(result, started.elapsed(), had_inventory);
        answer.map(Response::new).map_err(Status::from)
    }
}

impl IngestService {
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
