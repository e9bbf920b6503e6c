//! A report as the collector receives it: protobuf bytes decoded into `ReportRequest`, then
//! validated; an accepted report's inventory is made into the stored document and flattened
//! into the field index, as the store does.
//!
//! Besides not panicking: a refusal must be `InvalidArgument` (the agent's fault, never an
//! internal error), and an accepted report stays accepted after a round trip through the wire.

#![no_main]

use estate_collector::document::{flatten, to_document};
use estate_collector::error::ErrorCode;
use estate_collector::validate::{Limits, validate_report};
use estate_proto::v1::ReportRequest;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(report) = ReportRequest::decode(data) else {
        return;
    };
    let limits = Limits::default();
    match validate_report(report, &limits) {
        Err(error) => assert_eq!(
            error.code,
            ErrorCode::InvalidArgument,
            "a report was refused as something else than invalid: {}",
            error.message
        ),
        Ok(valid) => {
            if let Some(inventory) = &valid.report.inventory {
                let _fields = flatten(&to_document(inventory));
            }
            let again = ReportRequest::decode(valid.report.encode_to_vec().as_slice())
                .expect("a re-encoded report decodes");
            if let Err(error) = validate_report(again, &limits) {
                panic!(
                    "an accepted report is refused after a round trip: {}",
                    error.message
                );
            }
        }
    }
});
