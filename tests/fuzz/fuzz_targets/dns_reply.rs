//! A DNS server's reply as the `dns` check reads it: decoded (id, response flag, our question
//! echoed), judged (response code, answer count, expected values by text and by regex,
//! latency) and turned into measurements. The first byte picks the check, the rest is the
//! datagram; the query id is taken from the datagram so that the fuzzer reaches the judgement.

#![no_main]

use estate_agent::checks::Check;
use estate_fuzz::{assert_reportable, check_from_toml};
use libfuzzer_sys::fuzz_target;
use std::net::SocketAddr;
use std::sync::LazyLock;
use std::time::Duration;

/// An `A` check with exact and regex values, an `SRV` check and a `TXT` check expecting
/// `NXDOMAIN`.
static CHECKS: LazyLock<Vec<Check>> = LazyLock::new(|| {
    [
        r#"kind = "dns"
query = "www.example.com"
servers = ["127.0.0.1:53"]
expect_values = ["192.0.2.1", "re:^192\\.0\\.2\\."]
max_latency = "1s""#,
        r#"kind = "dns"
query = "_ldap._tcp.dc._msdcs.corp.example.com"
type = "SRV"
servers = ["127.0.0.1:53"]
min_answers = 2"#,
        r#"kind = "dns"
query = "missing.example.com"
type = "TXT"
servers = ["[::1]:5353"]
expect_rcode = "NXDOMAIN""#,
    ]
    .iter()
    .map(|entry| check_from_toml(entry))
    .collect()
});

fuzz_target!(|data: &[u8]| {
    let Some((&selector, reply)) = data.split_first() else {
        return;
    };
    let Check::Dns(check) = &CHECKS[usize::from(selector) % CHECKS.len()] else {
        unreachable!("every fuzzed check is a dns check");
    };
    let id = match reply {
        [high, low, ..] => u16::from_be_bytes([*high, *low]),
        _ => 0,
    };
    let server: SocketAddr = ([127, 0, 0, 1], 53).into();
    let latency = Duration::from_millis(u64::from(selector) * 10);
    let result = check.judge_reply_bytes(server, id, reply, latency);
    assert_reportable("dns", &[result]);
});
