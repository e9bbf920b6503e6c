//! What the fuzz targets share: the oracle every check's results are held to, and the
//! in-memory peer the dialogue targets talk to.
//!
//! The oracle: whatever a server sends, a check's results must be a report the collector
//! accepts. A reason or a measurement text past the collector's bounds would get the whole
//! report refused, losing every other result in it, so it is a bug as much as a panic is.

use estate_agent::checks::{Check, Outcome, TargetResult};
use estate_agent::config::ConfigFile;
use estate_collector::validate::{Limits, validate_report};
use estate_proto::v1::{self as proto, CheckResult, HostIdentity, ReportRequest};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

/// Panics, naming the field, unless a report carrying `results` passes the collector's
/// validation with its default limits.
pub fn assert_reportable(kind: &str, results: &[TargetResult]) {
    let checks = results
        .iter()
        .map(|result| {
            let (outcome, reason) = match &result.outcome {
                Outcome::Pass => (proto::Outcome::Pass, String::new()),
                Outcome::Fail { reason } => (proto::Outcome::Fail, reason.clone()),
                Outcome::Skipped { reason } => (proto::Outcome::Skipped, reason.clone()),
            };
            CheckResult {
                check: "fuzzed".to_owned(),
                kind: kind.to_owned(),
                target: result.target.clone(),
                outcome: outcome as i32,
                reason,
                started_unix_ms: 1,
                duration_seconds: 0.0,
                measurements: result.measurements.clone(),
            }
        })
        .collect();
    let report = ReportRequest {
        identity: Some(HostIdentity {
            agent_id: "fuzz-agent".to_owned(),
            hostname: "fuzz-host".to_owned(),
            ..Default::default()
        }),
        sequence: 1,
        checks,
        check_names: vec!["fuzzed".to_owned()],
        ..Default::default()
    };
    if let Err(error) = validate_report(report, &Limits::default()) {
        panic!(
            "the collector would refuse the report of a `{kind}` result: {}",
            error.message
        );
    }
}

/// A runtime for one in-memory dialogue: one thread and a paused clock, so the probe's
/// deadlines pass at once when both sides wait (a peer that stops talking costs no real time).
pub fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime builds")
}

/// The server side of an in-memory connection: sends `chunks[0]` at once, then each next
/// chunk after each line the client sends (a command), then closes.
pub async fn scripted_peer(mut server: DuplexStream, chunks: Vec<Vec<u8>>) {
    let mut chunks = chunks.into_iter();
    if let Some(first) = chunks.next()
        && server.write_all(&first).await.is_err()
    {
        return;
    }
    for chunk in chunks {
        if !read_line(&mut server).await {
            return;
        }
        if server.write_all(&chunk).await.is_err() {
            return;
        }
    }
    let _ = server.shutdown().await;
}

/// Reads up to and including the next `\n`; false when the client closed first.
async fn read_line(stream: &mut DuplexStream) -> bool {
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte).await {
            Ok(0) | Err(_) => return false,
            Ok(_) if byte[0] == b'\n' => return true,
            Ok(_) => {}
        }
    }
}

/// Splits fuzz input into the chunks a scripted peer sends: at each `\0\n` marker (a byte
/// pair no well-behaved server sends), at most `max` chunks.
pub fn chunks(data: &[u8], max: usize) -> Vec<Vec<u8>> {
    let mut chunks = Vec::new();
    let mut rest = data;
    while chunks.len() + 1 < max {
        match rest.windows(2).position(|pair| pair == b"\0\n") {
            Some(at) => {
                chunks.push(rest[..at].to_vec());
                rest = &rest[at + 2..];
            }
            None => break,
        }
    }
    chunks.push(rest.to_vec());
    chunks
}

/// The timeout the dialogue targets give a probe (virtual time: it never makes a run slow).
pub const DIALOGUE_TIMEOUT: Duration = Duration::from_secs(10);

/// The ready check of one `[[checks]]` entry (`name`, `kind` and the kind's fields as TOML),
/// built by the agent's own config parsing and validation.
pub fn check_from_toml(entry: &str) -> Check {
    let text = format!("[[checks]]\nname = \"fuzzed\"\n{entry}");
    let file = ConfigFile::parse(&text, "fuzz.toml".as_ref()).expect("the fuzz config parses");
    let mut config = file.validate(None).expect("the fuzz config validates");
    config.checks.remove(0).check
}
