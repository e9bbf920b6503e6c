//! The `dns` check against in-process servers on `127.0.0.1:0`: a hickory-server authoritative
//! server with an in-memory zone (every supported record type), and a hostile UDP responder
//! that answers with garbage, cut packets, wrong ids, oversized datagrams, the TC bit, or
//! nothing at all.

use estate_agent::checks::dns::{SrvTarget, lookup_srv};
use estate_agent::checks::{Check, CheckEntry, Outcome, TargetResult};
use hickory_proto::op::{Message, MessageType, OpCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{LowerName, Name, RData, Record};
use hickory_server::Server;
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;

// ---------------------------------------------------------------------------------------------
// An authoritative server with an in-memory zone.

fn name(text: &str) -> Name {
    Name::from_str(text).unwrap()
}

fn zone(origin: &str, records: Vec<(&str, RData)>) -> InMemoryZoneHandler {
    let mut handler: InMemoryZoneHandler =
        InMemoryZoneHandler::empty(name(origin), ZoneType::Primary, AxfrPolicy::Deny);
    let soa = SOA::new(
        name("ns1.example.test."),
        name("hostmaster.example.test."),
        2024010101,
        3600,
        600,
        86400,
        300,
    );
    assert!(handler.upsert_mut(Record::from_rdata(name(origin), 3600, RData::SOA(soa)), 1));
    for (owner, data) in records {
        let record = Record::from_rdata(name(owner), 300, data);
        assert!(handler.upsert_mut(record, 1), "cannot add {owner}");
    }
    handler
}

fn catalog() -> Catalog {
    let mut forward = vec![
        ("example.test.", RData::NS(NS(name("ns1.example.test.")))),
        (
            "ns1.example.test.",
            RData::A(A(Ipv4Addr::new(192, 0, 2, 53))),
        ),
        (
            "www.example.test.",
            RData::A(A(Ipv4Addr::new(192, 0, 2, 10))),
        ),
        (
            "www.example.test.",
            RData::A(A(Ipv4Addr::new(192, 0, 2, 11))),
        ),
        (
            "www.example.test.",
            RData::AAAA(AAAA(Ipv6Addr::from_str("2001:db8::10").unwrap())),
        ),
        (
            "alias.example.test.",
            RData::CNAME(CNAME(name("www.example.test."))),
        ),
        (
            "dangling.example.test.",
            RData::CNAME(CNAME(name("elsewhere.invalid."))),
        ),
        (
            "example.test.",
            RData::MX(MX::new(10, name("mail.example.test."))),
        ),
        (
            "example.test.",
            RData::TXT(TXT::new(vec!["v=spf1 -all".to_owned()])),
        ),
        (
            "_ldap._tcp.dc._msdcs.example.test.",
            RData::SRV(SRV::new(0, 50, 389, name("dc2.example.test."))),
        ),
        (
            "_ldap._tcp.dc._msdcs.example.test.",
            RData::SRV(SRV::new(0, 100, 389, name("dc1.example.test."))),
        ),
        (
            "_ldap._tcp.dc._msdcs.example.test.",
            RData::SRV(SRV::new(10, 100, 3389, name("dc3.example.test."))),
        ),
        (
            "_ldap._tcp.dc._msdcs.example.test.",
            RData::SRV(SRV::new(20, 0, 389, Name::root())),
        ),
    ];
    // More answers than a UDP reply holds and than the check lists.
    for index in 0..100_u8 {
        forward.push((
            "many.example.test.",
            RData::A(A(Ipv4Addr::new(10, 0, 0, index))),
        ));
    }
    let reverse = vec![(
        "10.2.0.192.in-addr.arpa.",
        RData::PTR(PTR(name("www.example.test."))),
    )];
    let mut catalog = Catalog::new();
    for (origin, records) in [
        ("example.test.", forward),
        ("2.0.192.in-addr.arpa.", reverse),
    ] {
        catalog.upsert(
            LowerName::new(&name(origin)),
            vec![Arc::new(zone(origin, records))],
        );
    }
    catalog
}

/// The authoritative server, on UDP and TCP of one port of 127.0.0.1.
struct ZoneServer {
    address: SocketAddr,
    server: Server<Catalog>,
}

/// A UDP socket and a TCP listener on one port of 127.0.0.1. The port the OS picks for UDP may
/// already be taken for TCP (by another test running at the same time), so pick again, bounded.
async fn udp_and_tcp_on_one_port() -> (UdpSocket, TcpListener) {
    for _ in 0..100 {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        if let Ok(tcp) = TcpListener::bind(udp.local_addr().unwrap()).await {
            return (udp, tcp);
        }
    }
    panic!("no port of 127.0.0.1 was free for both UDP and TCP in 100 tries");
}

impl ZoneServer {
    async fn start() -> Self {
        let (udp, tcp) = udp_and_tcp_on_one_port().await;
        let address = udp.local_addr().unwrap();
        let mut server = Server::new(catalog());
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5), 64 * 1024);
        ZoneServer { address, server }
    }

    /// Serves TCP only, on `tcp` (whose port's UDP side belongs to someone else).
    async fn start_tcp_on(tcp: TcpListener) -> Self {
        let address = tcp.local_addr().unwrap();
        let mut server = Server::new(catalog());
        server.register_listener(tcp, Duration::from_secs(5), 64 * 1024);
        ZoneServer { address, server }
    }

    async fn stop(mut self) {
        self.server.shutdown_gracefully().await.unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// Running the check.

/// The check's timeout, large enough not to cap `query_timeout`.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

async fn probe(config: &str) -> Vec<TargetResult> {
    let text = format!("name = \"t\"\nkind = \"dns\"\n{config}");
    let entry: CheckEntry = toml::from_str(&text).unwrap();
    let Check::Dns(check) = entry.config.validate().unwrap() else {
        panic!("not a dns check");
    };
    check.probe(CHECK_TIMEOUT).await
}

fn one(results: Vec<TargetResult>) -> TargetResult {
    assert_eq!(results.len(), 1, "{results:#?}");
    results.into_iter().next().unwrap()
}

fn assert_pass(result: &TargetResult) {
    assert_eq!(result.outcome, Outcome::Pass, "{result:#?}");
}

fn reason(result: &TargetResult) -> &str {
    match &result.outcome {
        Outcome::Fail { reason } => reason,
        other => panic!("expected a failure, got {other:?}: {result:#?}"),
    }
}

fn value(result: &TargetResult, measurement: &str) -> f64 {
    let found: Vec<_> = result
        .measurements
        .iter()
        .filter(|m| m.name == measurement)
        .collect();
    assert_eq!(found.len(), 1, "measurement `{measurement}`: {result:#?}");
    found[0].value
}

fn answer_texts(result: &TargetResult) -> Vec<String> {
    let mut texts: Vec<_> = result
        .measurements
        .iter()
        .filter(|m| m.name == "answer")
        .map(|m| m.text.clone())
        .collect();
    texts.sort();
    texts
}

fn config(server: SocketAddr, rest: &str) -> String {
    format!("servers = [\"{server}\"]\nquery_timeout = \"2s\"\n{rest}")
}

// ---------------------------------------------------------------------------------------------
// Against the authoritative server.

#[tokio::test]
async fn every_record_type_passes_with_its_answers_as_measurements() {
    let zone = ZoneServer::start().await;
    let server = zone.address;
    let cases: [(&str, &str, &[&str]); 9] = [
        (
            "www.example.test",
            "A",
            &[
                "www.example.test. 300 IN A 192.0.2.10",
                "www.example.test. 300 IN A 192.0.2.11",
            ],
        ),
        (
            "www.example.test",
            "AAAA",
            &["www.example.test. 300 IN AAAA 2001:db8::10"],
        ),
        (
            "alias.example.test",
            "CNAME",
            &["alias.example.test. 300 IN CNAME www.example.test."],
        ),
        (
            "example.test",
            "MX",
            &["example.test. 300 IN MX 10 mail.example.test."],
        ),
        (
            "_ldap._tcp.dc._msdcs.example.test",
            "SRV",
            &[
                "_ldap._tcp.dc._msdcs.example.test. 300 IN SRV 0 100 389 dc1.example.test.",
                "_ldap._tcp.dc._msdcs.example.test. 300 IN SRV 0 50 389 dc2.example.test.",
                "_ldap._tcp.dc._msdcs.example.test. 300 IN SRV 10 100 3389 dc3.example.test.",
                "_ldap._tcp.dc._msdcs.example.test. 300 IN SRV 20 0 389 .",
            ],
        ),
        (
            "example.test",
            "TXT",
            &["example.test. 300 IN TXT v=spf1 -all"],
        ),
        (
            "192.0.2.10",
            "PTR",
            &["10.2.0.192.in-addr.arpa. 300 IN PTR www.example.test."],
        ),
        (
            "example.test",
            "SOA",
            &[
                "example.test. 3600 IN SOA ns1.example.test. hostmaster.example.test. \
                 2024010101 3600 600 86400 300",
            ],
        ),
        (
            "example.test",
            "NS",
            &["example.test. 300 IN NS ns1.example.test."],
        ),
    ];
    for (query, record_type, expected) in cases {
        let result = one(probe(&config(
            server,
            &format!("query = \"{query}\"\ntype = \"{record_type}\""),
        ))
        .await);
        assert_pass(&result);
        assert_eq!(result.target, server.to_string());
        assert_eq!(answer_texts(&result), expected, "{query} {record_type}");
        assert_eq!(value(&result, "answers"), expected.len() as f64);
        assert_eq!(value(&result, "rcode"), 0.0);
        assert_eq!(value(&result, "tcp_fallback"), 0.0);
        assert!(value(&result, "latency_seconds") > 0.0);
    }
    zone.stop().await;
}

#[tokio::test]
async fn nxdomain_passes_when_expected_and_fails_naming_the_server_when_not() {
    let zone = ZoneServer::start().await;
    let server = zone.address;
    let expected = one(probe(&config(
        server,
        "query = \"gone.example.test\"\nexpect_rcode = \"NXDOMAIN\"",
    ))
    .await);
    assert_pass(&expected);
    assert_eq!(value(&expected, "rcode"), 3.0);
    assert_eq!(value(&expected, "answers"), 0.0);

    let unexpected = one(probe(&config(server, "query = \"gone.example.test\"")).await);
    assert_eq!(
        reason(&unexpected),
        format!("server `{server}` answered NXDOMAIN, expected NOERROR")
    );
    assert_eq!(value(&unexpected, "rcode"), 3.0);
    zone.stop().await;
}

#[tokio::test]
async fn too_few_answers_fail_with_the_count() {
    let zone = ZoneServer::start().await;
    let server = zone.address;
    let result = one(probe(&config(
        server,
        "query = \"www.example.test\"\nmin_answers = 3",
    ))
    .await);
    assert_eq!(
        reason(&result),
        format!("server `{server}` returned 2 A records, expected at least 3")
    );
    // A name with no record of the asked type: NOERROR and no answer (NODATA).
    let nodata = one(probe(&config(
        server,
        "query = \"ns1.example.test\"\ntype = \"MX\"",
    ))
    .await);
    assert_eq!(
        reason(&nodata),
        format!("server `{server}` returned 0 MX records, expected at least 1")
    );
    zone.stop().await;
}

#[tokio::test]
async fn a_cname_chain_counts_only_records_of_the_asked_type() {
    let zone = ZoneServer::start().await;
    let server = zone.address;
    let chained = one(probe(&config(
        server,
        "query = \"alias.example.test\"\nmin_answers = 2",
    ))
    .await);
    assert_pass(&chained);
    assert_eq!(value(&chained, "answers"), 2.0);
    assert_eq!(answer_texts(&chained).len(), 3, "{chained:#?}");

    let dangling = one(probe(&config(server, "query = \"dangling.example.test\"")).await);
    assert_eq!(
        reason(&dangling),
        format!("server `{server}` returned 0 A records, expected at least 1")
    );
    assert_eq!(value(&dangling, "answers"), 0.0);
    assert_eq!(
        answer_texts(&dangling),
        ["dangling.example.test. 300 IN CNAME elsewhere.invalid."]
    );
    zone.stop().await;
}

#[tokio::test]
async fn expected_values_match_exactly_or_by_regex() {
    let zone = ZoneServer::start().await;
    let server = zone.address;
    let srv = "query = \"_ldap._tcp.dc._msdcs.example.test\"\ntype = \"SRV\"\n";
    let pass = one(
        probe(&config(
            server,
            &format!(
                "{srv}expect_values = [\"dc1.example.test.\", \"DC2.example.test\", 're:^dc\\d+\\.', \"10 100 3389 dc3.example.test.\"]"
            ),
        ))
        .await,
    );
    assert_pass(&pass);

    let missing = one(probe(&config(
        server,
        &format!("{srv}expect_values = [\"dc1.example.test.\", \"dc9.example.test.\"]"),
    ))
    .await);
    assert_eq!(
        reason(&missing),
        format!("none of the 4 answers from `{server}` matches `dc9.example.test.`")
    );

    let single = one(probe(&config(
        server,
        "query = \"example.test\"\ntype = \"MX\"\nexpect_values = ['re:^backup']",
    ))
    .await);
    assert_eq!(
        reason(&single),
        format!("answer `mail.example.test.` from `{server}` does not match `re:^backup`")
    );

    let txt = one(probe(&config(
        server,
        "query = \"example.test\"\ntype = \"TXT\"\nexpect_values = [\"v=spf1 -all\"]",
    ))
    .await);
    assert_pass(&txt);
    zone.stop().await;
}

#[tokio::test]
async fn tcp_transport_passes() {
    let zone = ZoneServer::start().await;
    let server = zone.address;
    let result = one(probe(&config(
        server,
        "query = \"www.example.test\"\ntransport = \"tcp\"\nexpect_values = [\"192.0.2.11\"]",
    ))
    .await);
    assert_pass(&result);
    assert_eq!(value(&result, "tcp_fallback"), 0.0);
    zone.stop().await;
}

#[tokio::test]
async fn many_answers_are_counted_but_only_32_are_listed() {
    let zone = ZoneServer::start().await;
    let server = zone.address;
    // 100 A records do not fit the 1232 bytes a UDP reply may take: the server truncates, the
    // check retries over TCP.
    let result = one(probe(&config(
        server,
        "query = \"many.example.test\"\nmin_answers = 100",
    ))
    .await);
    assert_pass(&result);
    assert_eq!(value(&result, "answers"), 100.0);
    assert_eq!(value(&result, "tcp_fallback"), 1.0);
    assert_eq!(answer_texts(&result).len(), 32);
    assert_eq!(value(&result, "answers_omitted"), 68.0);
    zone.stop().await;
}

#[tokio::test]
async fn two_servers_give_two_results_and_the_silent_one_fails_by_name() {
    let zone = ZoneServer::start().await;
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let silent_address = silent.local_addr().unwrap();
    let results = probe(&format!(
        "query = \"www.example.test\"\nservers = [\"{}\", \"{silent_address}\"]\nquery_timeout = \"300ms\"",
        zone.address
    ))
    .await;
    assert_eq!(results.len(), 2, "{results:#?}");
    assert_eq!(results[0].target, zone.address.to_string());
    assert_pass(&results[0]);
    assert_eq!(results[1].target, silent_address.to_string());
    assert_eq!(
        reason(&results[1]),
        format!("no answer from `{silent_address}` within 300ms")
    );
    assert!(results[1].measurements.is_empty());
    drop(silent);
    zone.stop().await;
}

#[tokio::test]
async fn max_latency_fails_a_slow_answer() {
    let zone = ZoneServer::start().await;
    let server = zone.address;
    let result = one(probe(&config(
        server,
        "query = \"www.example.test\"\nmax_latency = \"1ns\"",
    ))
    .await);
    let reason = reason(&result);
    let prefix = format!("server `{server}` answered in ");
    assert!(reason.starts_with(&prefix), "{reason}");
    assert!(reason.ends_with(", more than max_latency 1ns"), "{reason}");
    zone.stop().await;
}

#[tokio::test]
async fn lookup_srv_returns_targets_by_priority_then_weight() {
    let zone = ZoneServer::start().await;
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let silent_address = silent.local_addr().unwrap();
    let timeout = Duration::from_millis(300);
    // The silent server is asked first, then the next one answers.
    let targets = lookup_srv(
        &[silent_address, zone.address],
        "_ldap._tcp.dc._msdcs.example.test",
        timeout,
    )
    .await
    .unwrap();
    let target = |priority, weight, port, host: &str| SrvTarget {
        priority,
        weight,
        port,
        host: host.to_owned(),
    };
    assert_eq!(
        targets,
        [
            target(0, 100, 389, "dc1.example.test"),
            target(0, 50, 389, "dc2.example.test"),
            target(10, 100, 3389, "dc3.example.test"),
        ]
    );
    assert_eq!(
        lookup_srv(&[zone.address], "_kerberos._tcp.example.test", timeout).await,
        Err(format!(
            "`_kerberos._tcp.example.test.` does not exist (NXDOMAIN from `{}`)",
            zone.address
        ))
    );
    assert_eq!(
        lookup_srv(&[zone.address], "www.example.test", timeout).await,
        Ok(Vec::new())
    );
    assert_eq!(
        lookup_srv(&[silent_address], "_ldap._tcp.example.test", timeout).await,
        Err(format!("no answer from `{silent_address}` within 300ms"))
    );
    drop(silent);
    zone.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Against a hostile UDP responder.

/// How the hostile responder answers each query.
#[derive(Debug, Clone, Copy)]
enum Misbehaviour {
    /// The query's id followed by bytes that are no DNS message.
    Garbage,
    /// A single byte.
    Crumb,
    /// A valid answer cut in the middle of its answer section.
    Cut,
    /// A valid answer with another id.
    WrongId,
    /// A valid answer with 300 records, far more than the 1232 bytes the query allows.
    Oversized,
    /// A valid but empty answer with the TC bit set.
    Truncated,
    /// A valid answer to another question.
    OtherQuestion,
    /// No answer at all.
    Silence,
}

/// A UDP responder on 127.0.0.1 that misbehaves; the task is aborted when dropped.
struct HostileResponder {
    address: SocketAddr,
    /// The TCP side of the same port, held so a test can serve TCP there.
    tcp: Option<TcpListener>,
    task: JoinHandle<()>,
}

impl Drop for HostileResponder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HostileResponder {
    async fn start(misbehaviour: Misbehaviour) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        Self::serve(misbehaviour, socket, None)
    }

    /// Also holds the TCP side of the port, for a test that serves TCP there.
    async fn start_with_tcp_port(misbehaviour: Misbehaviour) -> Self {
        let (socket, tcp) = udp_and_tcp_on_one_port().await;
        Self::serve(misbehaviour, socket, Some(tcp))
    }

    fn serve(misbehaviour: Misbehaviour, socket: UdpSocket, tcp: Option<TcpListener>) -> Self {
        let address = socket.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut buffer = vec![0_u8; 65535];
            while let Ok((length, peer)) = socket.recv_from(&mut buffer).await {
                let Ok(query) = Message::from_vec(&buffer[..length]) else {
                    continue;
                };
                if let Some(reply) = misbehave(misbehaviour, &query) {
                    let _ = socket.send_to(&reply, peer).await;
                }
            }
        });
        HostileResponder { address, tcp, task }
    }
}

fn answer_to(query: &Message, answers: usize) -> Message {
    let mut reply = Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
    reply.add_queries(query.queries.clone());
    for index in 0..answers {
        let owner = query.queries[0].name.clone();
        let address = Ipv4Addr::from(0x0a00_0000 + index as u32);
        reply.add_answer(Record::from_rdata(owner, 60, RData::A(A(address))));
    }
    reply
}

fn misbehave(misbehaviour: Misbehaviour, query: &Message) -> Option<Vec<u8>> {
    let id = query.metadata.id.to_be_bytes();
    Some(match misbehaviour {
        Misbehaviour::Garbage => [&id[..], &[0xff; 40]].concat(),
        Misbehaviour::Crumb => vec![id[0]],
        Misbehaviour::Cut => {
            let bytes = answer_to(query, 4).to_vec().unwrap();
            bytes[..bytes.len() - 10].to_vec()
        }
        Misbehaviour::WrongId => {
            let mut reply = answer_to(query, 1);
            reply.metadata.id = query.metadata.id.wrapping_add(1);
            reply.to_vec().unwrap()
        }
        Misbehaviour::Oversized => answer_to(query, 300).to_vec().unwrap(),
        Misbehaviour::Truncated => {
            let mut reply = answer_to(query, 0);
            reply.metadata.truncation = true;
            reply.to_vec().unwrap()
        }
        Misbehaviour::OtherQuestion => {
            let mut reply = answer_to(query, 1);
            reply.queries[0].name = name("elsewhere.example.test.");
            reply.to_vec().unwrap()
        }
        Misbehaviour::Silence => return None,
    })
}

async fn probe_hostile(address: SocketAddr) -> TargetResult {
    one(probe(&format!(
        "query = \"www.example.test\"\nservers = [\"{address}\"]\nquery_timeout = \"300ms\""
    ))
    .await)
}

#[tokio::test]
async fn every_misbehaviour_fails_with_a_reason_naming_the_server() {
    let cases: [(Misbehaviour, &str); 8] = [
        (
            Misbehaviour::Garbage,
            "reply from `{server}` is not a valid dns message: ",
        ),
        (
            Misbehaviour::Crumb,
            "reply from `{server}` is 1 bytes, too short for a dns message",
        ),
        (
            Misbehaviour::Cut,
            "reply from `{server}` is not a valid dns message: ",
        ),
        (Misbehaviour::WrongId, "reply from `{server}` has id "),
        (
            Misbehaviour::Oversized,
            "reply from `{server}` is 7730 bytes, more than the 1232 the query allowed",
        ),
        (
            Misbehaviour::Truncated,
            "reply over udp from `{server}` was truncated and the retry over tcp failed: tcp \
             connection to `{server}` failed: ",
        ),
        (
            Misbehaviour::OtherQuestion,
            "reply from `{server}` answers `elsewhere.example.test. A`, not \
             `www.example.test. A`",
        ),
        (
            Misbehaviour::Silence,
            "no answer from `{server}` within 300ms",
        ),
    ];
    let mut probes = tokio::task::JoinSet::new();
    for (misbehaviour, expected) in cases {
        probes.spawn(async move {
            let responder = HostileResponder::start(misbehaviour).await;
            let server = responder.address;
            let result = probe_hostile(server).await;
            (misbehaviour, server, expected, result)
        });
    }
    while let Some(joined) = probes.join_next().await {
        let (misbehaviour, server, expected, result) = joined.unwrap();
        assert_eq!(result.target, server.to_string());
        let reason = reason(&result);
        let expected = expected.replace("{server}", &server.to_string());
        assert!(
            reason.starts_with(&expected),
            "{misbehaviour:?}: `{reason}` does not start with `{expected}`"
        );
        // Bad datagrams are set aside while waiting for a good one, as resolvers do.
        let waited = !matches!(
            misbehaviour,
            Misbehaviour::Truncated | Misbehaviour::Silence
        );
        assert_eq!(
            reason.ends_with(", and no valid reply within 300ms"),
            waited,
            "{misbehaviour:?}: {reason}"
        );
        assert!(
            result.measurements.is_empty(),
            "{misbehaviour:?}: {result:#?}"
        );
    }
}

#[tokio::test]
async fn a_wrong_id_names_both_ids() {
    let responder = HostileResponder::start(Misbehaviour::WrongId).await;
    let result = probe_hostile(responder.address).await;
    let reason = reason(&result);
    let ids: Vec<u32> = reason
        .split(|c: char| !c.is_ascii_digit())
        .filter(|word| !word.is_empty())
        .filter_map(|word| word.parse().ok())
        .collect();
    // 127, 0, 0, 1, port, reply id, expected id, 300
    let [.., reply_id, expected_id, _] = ids.as_slice() else {
        panic!("no ids in `{reason}`");
    };
    assert_eq!(*reply_id, (*expected_id + 1) % 65536, "{reason}");
}

#[tokio::test]
async fn a_truncated_udp_reply_is_retried_over_tcp_and_reported() {
    let mut responder = HostileResponder::start_with_tcp_port(Misbehaviour::Truncated).await;
    let tcp = ZoneServer::start_tcp_on(responder.tcp.take().unwrap()).await;
    let result = probe_hostile(responder.address).await;
    assert_pass(&result);
    assert_eq!(value(&result, "tcp_fallback"), 1.0);
    assert_eq!(value(&result, "answers"), 2.0);
    tcp.stop().await;
}
