//! A KDC's reply as the `kerberos` check reads it: `parse_kdc_reply` (our own bounded DER
//! reader) and the judgement of a KRB-ERROR or AS-REP against the realm and principal asked
//! for. The first byte picks whether the principal must exist, the rest is the reply.

#![no_main]

use estate_agent::checks::kerberos::{KdcQuery, judge_reply};
use estate_fuzz::assert_reportable;
use libfuzzer_sys::fuzz_target;
use std::time::{Duration, SystemTime};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, reply)) = data.split_first() else {
        return;
    };
    let query = KdcQuery::new("CORP.EXAMPLE.COM", "estate-probe", selector & 1 == 1)
        .expect("the fuzzed query is valid");
    let midpoint = SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_323_045);
    let result = judge_reply(
        "kdc.corp.example.com:88/udp",
        &query,
        reply,
        Duration::from_millis(3),
        midpoint,
    );
    assert_reportable("kerberos", &[result]);
});
