//! The packets a `dhcp` probe receives after its DISCOVER, as it reads them: each decoded
//! (dhcproto), matched to the probe (BOOTREPLY, xid, chaddr), read as an offer (server
//! identifier, address, lease, routers, DNS servers), then all judged (rogue servers, range,
//! latency, count). After a byte picking the check, the input is a list of packets, each a
//! byte picking its source and delay, a big-endian `u16` length, then the datagram (cut short
//! at the end of the input).

#![no_main]

use estate_agent::checks::Check;
use estate_fuzz::{assert_reportable, check_from_toml};
use libfuzzer_sys::fuzz_target;
use std::net::SocketAddr;
use std::sync::LazyLock;
use std::time::Duration;

/// The xid and client MAC the seeds' offers answer.
const XID: u32 = 0x1234_5678;
const CLIENT_MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x10, 0x20, 0x30];

static CHECKS: LazyLock<Vec<Check>> = LazyLock::new(|| {
    [
        r#"kind = "dhcp"
mode = "relay"
server = "127.0.0.1"
client_mac = "02:00:5e:10:20:30"
expected_servers = ["10.0.0.2", "10.0.0.3"]
expected_range = "10.0.0.100-10.0.0.200"
min_offers = 2
max_latency = "500ms""#,
        r#"kind = "dhcp"
mode = "broadcast"
interface = "eth0"
client_mac = "02:00:5e:10:20:30"
expected_range = "10.0.0.0/24""#,
    ]
    .iter()
    .map(|entry| check_from_toml(entry))
    .collect()
});

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let Check::Dhcp(check) = &CHECKS[usize::from(selector) % CHECKS.len()] else {
        unreachable!("every fuzzed check is a dhcp check");
    };
    let mut received = Vec::new();
    let mut rest = rest;
    while let [byte, high, low, after @ ..] = rest {
        let length = usize::from(u16::from_be_bytes([*high, *low])).min(after.len());
        let (datagram, next) = after.split_at(length);
        let source = SocketAddr::from(([10, 0, 0, byte % 4], 67));
        received.push((
            datagram,
            source,
            Duration::from_millis(u64::from(*byte) * 5),
        ));
        rest = next;
    }
    let results = check.judge_packets(XID, &CLIENT_MAC, received, Duration::from_secs(2));
    assert_reportable("dhcp", &results);
});
