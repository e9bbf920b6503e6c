//! An LDAP server's rootDSE entry as the `ldap` check reads it: the BER element decoded by
//! ldap3's parser (as its codec does for every message), then read by our own bounded walker
//! and judged (`isSynchronized`, `isGlobalCatalogReady`, `currentTime` and the clock skew,
//! the reported attributes). The first byte picks the plan, the rest is the element.

#![no_main]

use estate_agent::checks::ldap::{ProbePlan, RootDse, judge_root_dse_entry};
use estate_agent::checks::{Outcome, TargetResult};
use estate_fuzz::assert_reportable;
use ldap3::asn1::parse_tag;
use libfuzzer_sys::fuzz_target;
use std::time::{Duration, SystemTime};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, element)) = data.split_first() else {
        return;
    };
    let Ok((_rest, entry)) = parse_tag(element) else {
        return;
    };
    let plan = ProbePlan {
        tls_verify: true,
        ca_file: None,
        cert_min_days: 14,
        root_dse: if selector & 1 == 0 {
            RootDse::Report
        } else {
            RootDse::Read
        },
        max_skew: (selector & 2 == 0).then_some(Duration::from_secs(300)),
        require_gc_ready: selector & 4 == 0,
        bind: None,
        search: None,
    };
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_323_045);
    let mut measurements = Vec::new();
    let outcome = match judge_root_dse_entry(&plan, &entry, now, &mut measurements) {
        Ok(()) => Outcome::Pass,
        Err(reason) => Outcome::Fail {
            reason: format!("`dc1.corp.example.com:389/ldap`: {reason}"),
        },
    };
    let result = TargetResult {
        target: "dc1.corp.example.com:389/ldap".to_owned(),
        outcome,
        measurements,
    };
    assert_reportable("ldap", &[result]);
});
