//! Group commit: reports from all connections queue here; one task takes everything queued,
//! writes it in one transaction and answers each sender only once that transaction is durable.
//!
//! While one batch is being committed the next one fills up, so the number of syncs per second
//! stays bounded however many agents report at once.

use crate::error::{ApiError, ErrorCode};
use crate::metrics::IngestMetrics;
use crate::store::{IncomingReport, Store, WriteOutcome, WritePolicy};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Most reports written in one transaction.
pub const MAX_BATCH: usize = 512;
/// Reports waiting for the writer before callers are told to retry later.
const QUEUE_CAPACITY: usize = 8192;

struct WriteRequest {
    report: IncomingReport,
    answer: oneshot::Sender<WriteAnswer>,
}

/// The outcome, and the report given back to its sender: freeing a report is a good part of
/// the cost of a heartbeat, and the writer's task is the one every report passes through, so
/// each sender frees its own, in parallel with the next batch.
type WriteAnswer = (Result<WriteOutcome, ApiError>, Option<IncomingReport>);

/// The handle through which ingest submits reports. Cheap to clone.
#[derive(Clone)]
pub struct BatchWriter {
    queue: mpsc::Sender<WriteRequest>,
}

impl std::fmt::Debug for BatchWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchWriter").finish_non_exhaustive()
    }
}

impl BatchWriter {
    /// Starts the writer task. It ends when every `BatchWriter` clone is dropped, after writing
    /// what was queued.
    pub fn start(
        store: Arc<dyn Store>,
        policy: WritePolicy,
        metrics: Arc<IngestMetrics>,
    ) -> (Self, JoinHandle<()>) {
        let (queue, receiver) = mpsc::channel(QUEUE_CAPACITY);
        let task = tokio::spawn(write_loop(store, policy, metrics, receiver));
        (BatchWriter { queue }, task)
    }

    /// Queues a report and waits until it is durable (or refused).
    pub async fn write(&self, report: IncomingReport) -> Result<WriteOutcome, ApiError> {
        let (answer, outcome) = oneshot::channel();
        self.queue
            .try_send(WriteRequest { report, answer })
            .map_err(|error| match error {
                mpsc::error::TrySendError::Full(_) => ApiError::new(
                    ErrorCode::Unavailable,
                    "the collector's write queue is full; retry later",
                ),
                mpsc::error::TrySendError::Closed(_) => {
                    ApiError::new(ErrorCode::Unavailable, "the collector is shutting down")
                }
            })?;
        match outcome.await {
            Ok((outcome, report)) => {
                drop(report);
                outcome
            }
            Err(_) => Err(ApiError::new(
                ErrorCode::Unavailable,
                "the collector stopped before the report was written",
            )),
        }
    }
}

async fn write_loop(
    store: Arc<dyn Store>,
    policy: WritePolicy,
    metrics: Arc<IngestMetrics>,
    mut receiver: mpsc::Receiver<WriteRequest>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while receiver.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let (reports, answers): (Vec<_>, Vec<_>) = batch
            .drain(..)
            .map(|request| (request.report, request.answer))
            .unzip();
        let store = Arc::clone(&store);
        let started = Instant::now();
        let size = reports.len();
        let written = tokio::task::spawn_blocking(move || {
            let result = store.write_batch(&reports, policy);
            (result, reports)
        })
        .await;
        let (result, reports) = match written {
            Ok((result, reports)) => (result, reports.into_iter().map(Some).collect()),
            Err(join_error) => (
                Err(crate::store::StoreError::new(
                    "the store panicked while writing a batch",
                    join_error.to_string(),
                )),
                Vec::new(),
            ),
        };
        metrics.observe_batch(size, started.elapsed(), result.is_ok());
        let reports = reports.into_iter().chain(std::iter::repeat_with(|| None));
        match result {
            Ok(outcomes) => {
                for ((answer, outcome), report) in answers.into_iter().zip(outcomes).zip(reports) {
                    let _ = answer.send((Ok(outcome), report));
                }
            }
            Err(error) => {
                let error = ApiError::internal(&error);
                for (answer, report) in answers.into_iter().zip(reports) {
                    let _ = answer.send((Err(error.clone()), report));
                }
            }
        }
    }
}
