//! The store conformance suite: every backend must behave the same. The suite is written once in
//! `store_conformance_suite!` and instantiated per backend below.

use estate_collector::store::postgres::{PostgresStore, create_database, drop_database};
use estate_collector::store::sqlite::SqliteStore;
use estate_collector::store::{
    ChangeQuery, CheckQuery, CheckState, EventQuery, ExchangeOutcome, FieldFilter, HostCursor,
    HostOwner, HostQuery, IncomingReport, Liveness, NewToken, Store, TokenRefusal, ValuePattern,
    WriteOutcome, WritePolicy,
};
use estate_collector::tokens::{self, TokenKind};
use estate_collector::validate::{Limits, validate_report};
use estate_proto::v1::{
    Bios, CheckResult, Hardware, HostIdentity, HostVitals, Inventory, Measurement, OperatingSystem,
    Outcome, ReportRequest, Software,
};

const POLICY: WritePolicy = WritePolicy {
    stale_after_ms: 300_000,
};

/// A report from `agent_id` at `sequence`, with a full inventory when `inventory` is given.
fn report(agent_id: &str, sequence: u64, inventory: Option<(&str, Inventory)>) -> ReportRequest {
    ReportRequest {
        identity: Some(HostIdentity {
            agent_id: agent_id.into(),
            hostname: format!("host-{agent_id}"),
            machine_id: format!("machine-{agent_id}"),
            ..Default::default()
        }),
        agent_version: "0.1.0".into(),
        sequence,
        agent_time_unix_ms: 1_000,
        inventory_hash: inventory
            .as_ref()
            .map(|(hash, _)| (*hash).into())
            .unwrap_or_default(),
        inventory: inventory.map(|(_, inventory)| inventory),
        vitals: Some(HostVitals {
            memory_available_bytes: 1 << 30,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn inventory(os: &str, version: &str, manufacturer: &str, packages: &[(&str, &str)]) -> Inventory {
    Inventory {
        bios: Some(Bios {
            smanufacturer: manufacturer.into(),
            ..Default::default()
        }),
        hardware: Some(Hardware {
            memory_bytes: 8 << 30,
            vmsystem: "Physical".into(),
            ..Default::default()
        }),
        operatingsystem: Some(OperatingSystem {
            name: os.into(),
            version: version.into(),
            ..Default::default()
        }),
        softwares: packages
            .iter()
            .map(|(name, version)| Software {
                name: (*name).into(),
                version: (*version).into(),
                arch: "amd64".into(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn write(store: &dyn Store, at_ms: i64, reports: Vec<ReportRequest>) -> Vec<WriteOutcome> {
    let incoming: Vec<IncomingReport> = reports
        .into_iter()
        .map(|report| IncomingReport {
            report: validate_report(report, &Limits::default()).expect("valid report"),
            received_ms: at_ms,
        })
        .collect();
    store.write_batch(&incoming, POLICY).expect("batch written")
}

fn stored(outcome: &WriteOutcome) -> bool {
    matches!(outcome, WriteOutcome::Stored { .. })
}

fn need_full(outcome: &WriteOutcome) -> bool {
    matches!(
        outcome,
        WriteOutcome::Stored {
            need_full_inventory: true,
            ..
        }
    )
}

fn query(now_ms: i64) -> HostQuery {
    HostQuery {
        limit: 100,
        stale_before_ms: now_ms - POLICY.stale_after_ms,
        ..Default::default()
    }
}

/// The ids of every host `query` lists, page after page from its start, checking that no
/// page holds more than the limit. Panics after `max_pages` pages: a cursor that never ends.
fn every_page(store: &dyn Store, query: &HostQuery, max_pages: usize) -> Vec<String> {
    let mut seen = Vec::new();
    let mut after: Option<HostCursor> = None;
    for _ in 0..max_pages {
        let page = store
            .list_hosts(&HostQuery {
                after: after.clone(),
                ..query.clone()
            })
            .unwrap();
        assert!(page.hosts.len() <= query.limit, "query {query:?}");
        seen.extend(page.hosts.into_iter().map(|host| host.id));
        match page.next {
            Some(next) => after = Some(next),
            None => return seen,
        }
    }
    panic!("query {query:?} still had pages after {max_pages}");
}

fn ids(store: &dyn Store, query: &HostQuery) -> Vec<String> {
    store
        .list_hosts(query)
        .unwrap()
        .hosts
        .into_iter()
        .map(|host| host.id)
        .collect()
}

pub fn first_report_creates_the_host(store: &dyn Store) {
    let debian = inventory("Debian GNU/Linux", "12", "Dell Inc.", &[("curl", "7.88")]);
    let outcomes = write(
        store,
        10_000,
        vec![report("a", 1, Some(("sha256:1", debian)))],
    );
    assert!(stored(&outcomes[0]) && !need_full(&outcomes[0]));
    let detail = store.host_detail("a").unwrap().expect("host stored");
    assert_eq!(detail.host.hostname, "host-a");
    assert_eq!(detail.host.os_name, "Debian GNU/Linux");
    assert_eq!(detail.host.memory_bytes, 8 << 30);
    assert_eq!(detail.host.first_seen_ms, 10_000);
    assert_eq!(detail.host.clock_skew_ms, 1_000 - 10_000);
    assert_eq!(detail.host.vitals.memory_available_bytes, 1 << 30);
    let document = detail.inventory.expect("inventory stored");
    assert_eq!(document["softwares"][0]["name"], "curl");
    assert_eq!(detail.inventory_received_ms, Some(10_000));
}

pub fn a_replayed_sequence_is_a_duplicate_and_changes_nothing(store: &dyn Store) {
    let debian = inventory("Debian GNU/Linux", "12", "Dell Inc.", &[]);
    write(
        store,
        10_000,
        vec![report("a", 5, Some(("sha256:1", debian.clone())))],
    );
    let outcomes = write(
        store,
        20_000,
        vec![
            report("a", 5, None),
            report("a", 4, Some(("sha256:2", inventory("Other", "1", "", &[])))),
        ],
    );
    assert!(matches!(outcomes[0], WriteOutcome::Duplicate));
    assert!(matches!(outcomes[1], WriteOutcome::Duplicate));
    let host = store.host_detail("a").unwrap().unwrap().host;
    assert_eq!(host.last_seen_ms, 10_000);
    assert_eq!(host.os_name, "Debian GNU/Linux");
    assert_eq!(host.last_sequence, 5);
    // Neither the replay nor the older report counts as received; the next new one does.
    assert_eq!(host.reports_received_total, 1);
    write(store, 30_000, vec![report("a", 6, None)]);
    let host = store.host_detail("a").unwrap().unwrap().host;
    assert_eq!(host.reports_received_total, 2);
}

pub fn an_unknown_hash_asks_for_the_full_inventory(store: &dyn Store) {
    let debian = inventory("Debian GNU/Linux", "12", "", &[]);
    write(
        store,
        1_000,
        vec![report("a", 1, Some(("sha256:1", debian)))],
    );
    let mut same = report("a", 2, None);
    same.inventory_hash = "sha256:1".into();
    let mut other = report("a", 3, None);
    other.inventory_hash = "sha256:2".into();
    let mut unknown_host = report("b", 1, None);
    unknown_host.inventory_hash = "sha256:9".into();
    let outcomes = write(store, 2_000, vec![same, other, unknown_host]);
    assert!(stored(&outcomes[0]) && !need_full(&outcomes[0]));
    assert!(need_full(&outcomes[1]));
    assert!(need_full(&outcomes[2]));
    // A heartbeat keeps the stored inventory.
    let detail = store.host_detail("a").unwrap().unwrap();
    assert_eq!(detail.host.inventory_hash, "sha256:1");
    assert_eq!(detail.host.last_seen_ms, 2_000);
}

pub fn a_changed_inventory_records_what_changed(store: &dyn Store) {
    let before = inventory("Debian GNU/Linux", "12", "Dell Inc.", &[("curl", "7.88")]);
    let after = inventory(
        "Debian GNU/Linux",
        "13",
        "Dell Inc.",
        &[("curl", "8.1"), ("vim", "9")],
    );
    write(
        store,
        1_000,
        vec![report("a", 1, Some(("sha256:1", before.clone())))],
    );
    write(
        store,
        2_000,
        vec![report("a", 2, Some(("sha256:1", before)))],
    );
    write(
        store,
        3_000,
        vec![report("a", 3, Some(("sha256:2", after)))],
    );
    let page = store
        .host_changes(
            "a",
            &ChangeQuery {
                limit: 100,
                ..Default::default()
            },
        )
        .unwrap()
        .expect("host exists");
    let seen: Vec<(String, i64, String, String)> = page
        .changes
        .iter()
        .map(|c| {
            (
                c.field.clone(),
                c.at_ms,
                c.old.to_string(),
                c.new.to_string(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            (
                "operatingsystem.version".into(),
                3_000,
                "\"12\"".into(),
                "\"13\"".into()
            ),
            (
                "softwares[curl:amd64].version".into(),
                3_000,
                "\"7.88\"".into(),
                "\"8.1\"".into()
            ),
            (
                "softwares[vim:amd64]".into(),
                3_000,
                "null".into(),
                page.changes[2].new.to_string()
            ),
        ]
    );
    assert_eq!(
        store.host_detail("a").unwrap().unwrap().host.os_version,
        "13"
    );

    // Paging and `since`.
    let first = store
        .host_changes(
            "a",
            &ChangeQuery {
                limit: 2,
                ..Default::default()
            },
        )
        .unwrap()
        .unwrap();
    assert_eq!(first.changes.len(), 2);
    let rest = store
        .host_changes(
            "a",
            &ChangeQuery {
                limit: 2,
                after_id: first.next_after_id,
                ..Default::default()
            },
        )
        .unwrap()
        .unwrap();
    assert_eq!(rest.changes.len(), 1);
    assert_eq!(rest.next_after_id, None);
    let later = store
        .host_changes(
            "a",
            &ChangeQuery {
                limit: 10,
                since_ms: Some(3_001),
                ..Default::default()
            },
        )
        .unwrap()
        .unwrap();
    assert!(later.changes.is_empty());
    assert!(
        store
            .host_changes("nobody", &ChangeQuery::default())
            .unwrap()
            .is_none()
    );
}

pub fn a_second_live_machine_with_the_same_id_is_flagged(store: &dyn Store) {
    write(store, 1_000, vec![report("a", 1, None)]);
    let mut clone = report("a", 2, None);
    clone.identity.as_mut().unwrap().machine_id = "machine-other".into();
    clone.identity.as_mut().unwrap().hostname = "clone".into();
    let outcomes = write(store, 2_000, vec![clone.clone()]);
    match &outcomes[0] {
        WriteOutcome::IdentityConflict { message, host } => {
            assert!(
                message.starts_with("identity conflict: agent id `a`"),
                "{message}"
            );
            assert!(message.contains("machine-other"), "{message}");
            assert!(host.identity_conflict);
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    let host = store.host_detail("a").unwrap().unwrap().host;
    assert!(host.identity_conflict);
    assert_eq!(
        host.hostname, "host-a",
        "the clone must not overwrite the record"
    );
    let flagged = HostQuery {
        identity_conflict: Some(true),
        ..query(2_000)
    };
    assert_eq!(ids(store, &flagged), vec!["a"]);

    // Once the first machine is stale, the same id on other hardware is a replacement.
    clone.sequence = 3;
    let outcomes = write(store, 2_000 + POLICY.stale_after_ms + 1, vec![clone]);
    assert!(stored(&outcomes[0]), "{outcomes:?}");
    let changes = store
        .host_changes(
            "a",
            &ChangeQuery {
                limit: 10,
                ..Default::default()
            },
        )
        .unwrap()
        .unwrap();
    assert_eq!(changes.changes[0].field, "identity");
}

pub fn hosts_are_filtered_and_paged(store: &dyn Store) {
    let now = 1_000_000;
    let hosts = [
        ("a", "Debian GNU/Linux", "12", "Dell Inc.", now),
        ("b", "Debian GNU/Linux", "11", "HPE", now),
        (
            "c",
            "Microsoft Windows Server 2012 R2",
            "6.3",
            "Dell Inc.",
            now,
        ),
        ("d", "Rocky Linux", "9", "VMware, Inc.", now - 400_000),
    ];
    for (id, os, version, manufacturer, at) in hosts {
        let inv = inventory(os, version, manufacturer, &[("openssl", "3")]);
        write(store, at, vec![report(id, 1, Some(("sha256:1", inv)))]);
    }
    let filter = |field: &str, pattern: ValuePattern| FieldFilter {
        field: field.into(),
        pattern,
    };
    let cases: Vec<(HostQuery, Vec<&str>)> = vec![
        (query(now), vec!["a", "b", "c", "d"]),
        (
            HostQuery {
                hostname: Some("HOST-C".into()),
                ..query(now)
            },
            vec!["c"],
        ),
        (
            HostQuery {
                os: Some("windows server 2012".into()),
                ..query(now)
            },
            vec!["c"],
        ),
        (
            HostQuery {
                os: Some("Debian GNU/Linux 12".into()),
                ..query(now)
            },
            vec!["a"],
        ),
        (
            HostQuery {
                liveness: Some(Liveness::Stale),
                ..query(now)
            },
            vec!["d"],
        ),
        (
            HostQuery {
                liveness: Some(Liveness::Up),
                ..query(now)
            },
            vec!["a", "b", "c"],
        ),
        (
            HostQuery {
                fields: vec![filter(
                    "bios.smanufacturer",
                    ValuePattern::Exact("dell inc.".into()),
                )],
                ..query(now)
            },
            vec!["a", "c"],
        ),
        (
            HostQuery {
                fields: vec![
                    filter("bios.smanufacturer", ValuePattern::Glob("Dell*".into())),
                    filter("operatingsystem.name", ValuePattern::Glob("*Linux".into())),
                ],
                ..query(now)
            },
            vec!["a"],
        ),
        (
            HostQuery {
                fields: vec![filter(
                    "softwares.name",
                    ValuePattern::Exact("openssl".into()),
                )],
                ..query(now)
            },
            vec!["a", "b", "c", "d"],
        ),
        (
            HostQuery {
                // `%` and `_` are literal, not wildcards.
                fields: vec![filter(
                    "bios.smanufacturer",
                    ValuePattern::Glob("D%".into()),
                )],
                ..query(now)
            },
            vec![],
        ),
    ];
    for (query, expected) in cases {
        assert_eq!(ids(store, &query), expected, "query {query:?}");
    }

    // Paging visits every host once, in hostname order.
    let seen = every_page(
        store,
        &HostQuery {
            limit: 3,
            ..query(now)
        },
        10,
    );
    assert_eq!(seen, vec!["a", "b", "c", "d"]);
}

/// The manufacturer and OS of host `n` in [`host_pages_are_alike_whatever_the_filters_match`]:
/// Dell on half the hosts (a broad filter), HPE on a quarter, "Acme Rare" on three (a selective
/// one); Windows on the odd hosts, and on only two of the Dell ones (selective together).
fn shaped_host(n: usize) -> (&'static str, &'static str) {
    let manufacturer = match n {
        17 | 101 | 233 => "Acme Rare",
        _ if n.is_multiple_of(2) => "Dell Inc.",
        _ if n % 4 == 1 => "HPE",
        _ => "Lenovo",
    };
    let windows = n % 2 == 1 || n == 40 || n == 200;
    let os = if windows {
        "Microsoft Windows Server 2022"
    } else {
        "Debian GNU/Linux"
    };
    (manufacturer, os)
}

/// Whichever way a backend answers a filtered page (collecting a filter's few matches, walking
/// hosts in order, or a walk that falls back to collecting), every query pages through exactly
/// the matching hosts, in hostname order, once each.
pub fn host_pages_are_alike_whatever_the_filters_match(store: &dyn Store) {
    const HOSTS: usize = 240;
    let now = 1_000_000;
    let reports: Vec<ReportRequest> = (0..HOSTS)
        .map(|n| {
            let (manufacturer, os) = shaped_host(n);
            let inv = inventory(os, "1", manufacturer, &[]);
            // Ids run against hostnames (`host-h…`), so id order is not the page order.
            report(
                &format!("h{:03}", (n * 7) % HOSTS),
                1,
                Some(("sha256:1", inv)),
            )
        })
        .collect();
    write(store, now, reports);
    let by_host: Vec<(String, &str, &str)> = (0..HOSTS)
        .map(|n| {
            let (manufacturer, os) = shaped_host(n);
            (format!("h{:03}", (n * 7) % HOSTS), manufacturer, os)
        })
        .collect();
    let filter = |field: &str, pattern: &str| FieldFilter {
        field: field.into(),
        pattern: ValuePattern::parse(pattern),
    };
    fn dell(manufacturer: &str) -> bool {
        manufacturer == "Dell Inc."
    }
    fn windows(os: &str) -> bool {
        os.contains("Windows")
    }
    type Case<'a> = (
        Vec<FieldFilter>,
        Option<&'a str>,
        Box<dyn Fn(&str, &str) -> bool>,
    );
    let cases: Vec<Case> = vec![
        // Broad: a walk fills each page.
        (
            vec![filter("bios.smanufacturer", "dell*")],
            None,
            Box::new(|m, _| dell(m)),
        ),
        (
            vec![filter("bios.smanufacturer", "Dell Inc.")],
            None,
            Box::new(|m, _| dell(m)),
        ),
        (
            vec![filter("bios.smanufacturer", "*ell*")],
            None,
            Box::new(|m, _| dell(m)),
        ),
        // Selective: collected.
        (
            vec![filter("bios.smanufacturer", "ACME*")],
            None,
            Box::new(|m, _| m == "Acme Rare"),
        ),
        (
            vec![
                filter("operatingsystem.name", "*Linux"),
                filter("bios.smanufacturer", "acme rare"),
            ],
            None,
            Box::new(|m, os| m == "Acme Rare" && !windows(os)),
        ),
        // Broad alone, selective together; and a rare substring: walks that fall back.
        (
            vec![
                filter("bios.smanufacturer", "Dell*"),
                filter("operatingsystem.name", "Microsoft*"),
            ],
            None,
            Box::new(|m, os| dell(m) && windows(os)),
        ),
        (
            vec![filter("bios.smanufacturer", "*me Ra*")],
            None,
            Box::new(|m, _| m == "Acme Rare"),
        ),
        (
            vec![filter("bios.smanufacturer", "*nothing*")],
            None,
            Box::new(|_, _| false),
        ),
        // A host-row filter on top of a broad field filter.
        (
            vec![filter("bios.smanufacturer", "HP*")],
            Some("windows"),
            Box::new(|m, os| m == "HPE" && windows(os)),
        ),
    ];
    for (fields, os, matches) in cases {
        let mut expected: Vec<&str> = by_host
            .iter()
            .filter(|(_, m, o)| matches(m, o))
            .map(|(id, _, _)| id.as_str())
            .collect();
        // Hostnames are `host-<id>`, so hostname order is id order.
        expected.sort();
        for limit in [1, 7, 100] {
            let listed = HostQuery {
                fields: fields.clone(),
                os: os.map(str::to_owned),
                limit,
                ..query(now)
            };
            let seen = every_page(store, &listed, HOSTS + 1);
            assert_eq!(
                seen, expected,
                "filters {fields:?}, os {os:?}, limit {limit}"
            );
        }
    }
}

/// The host row keeps a copy of some inventory fields (`bios.smanufacturer` in `manufacturer`),
/// which a backend may test before probing the inventory: the copy must never make a host
/// match that its current inventory does not. It can differ from the inventory: an inventory
/// without `bios` leaves the previous manufacturer in the row, and an empty value is no field.
/// A glob's literal start is matched by a range of values on SQLite (`sqlite_glob_match`): it
/// must match what `LIKE` does, no more and no less, next to the values that sort around it.
pub fn a_prefix_glob_matches_its_prefix_without_regard_to_ascii_case(store: &dyn Store) {
    let now = 1_000_000;
    let manufacturers = [
        ("dell", "Dell"),
        ("dell-inc", "DELL Inc."),
        ("dellz", "dellz"),
        ("dell-max", "Dell\u{10FFFF}"),
        ("dell-accent", "Dellé"),
        ("delm", "Delm"),
        ("del", "Del"),
        ("del-bracket", "Del["),
        ("del-at", "Del@"),
        ("d-percent", "D%ll"),
        ("accent-upper", "ÉCOLE"),
        ("accent-lower", "école"),
    ];
    let reports = manufacturers
        .iter()
        .map(|(id, manufacturer)| {
            let inv = inventory("Debian GNU/Linux", "12", manufacturer, &[]);
            report(id, 1, Some(("sha256:1", inv)))
        })
        .collect();
    write(store, now, reports);
    let matching = |pattern: &str| -> Vec<String> {
        let mut found = ids(
            store,
            &HostQuery {
                fields: vec![FieldFilter {
                    field: "bios.smanufacturer".into(),
                    pattern: ValuePattern::parse(pattern),
                }],
                ..query(now)
            },
        );
        found.sort();
        found
    };
    let sorted = |ids: &[&str]| -> Vec<String> {
        let mut ids: Vec<String> = ids.iter().map(|id| (*id).to_owned()).collect();
        ids.sort();
        ids
    };
    let dell = ["dell", "dell-inc", "dellz", "dell-max", "dell-accent"];
    assert_eq!(matching("Dell*"), sorted(&dell));
    assert_eq!(matching("dELL*"), sorted(&dell));
    let mut del = dell.to_vec();
    del.extend(["delm", "del", "del-bracket", "del-at"]);
    assert_eq!(matching("del*"), sorted(&del));
    assert_eq!(matching("Del@*"), sorted(&["del-at"]));
    assert_eq!(matching("Dell*c*"), sorted(&["dell-inc"]));
    assert_eq!(matching("D%*"), sorted(&["d-percent"]));
    // ASCII case is always folded; other letters' case only by PostgreSQL's `lower()`, as
    // its locale says (SQLite's `LIKE` and `NOCASE` fold ASCII alone).
    assert!(matching("éc*").contains(&"accent-lower".to_owned()));
    assert!(matching("ÉC*").contains(&"accent-upper".to_owned()));
    assert!(matching("Éc*").iter().all(|id| id.starts_with("accent")));
}

pub fn a_host_rows_copy_of_a_field_never_widens_a_filter(store: &dyn Store) {
    let now = 1_000_000;
    // 40 plain Debian hosts, Dell on the even ones, so both filters below match many.
    let mut reports: Vec<ReportRequest> = (0..40)
        .map(|n| {
            let manufacturer = if n % 2 == 0 { "Dell Inc." } else { "HPE" };
            let inv = inventory("Debian GNU/Linux", "12", manufacturer, &[]);
            report(&format!("p{n:02}"), 1, Some(("sha256:1", inv)))
        })
        .collect();
    reports.push(report(
        "was-dell",
        1,
        Some((
            "sha256:1",
            inventory("Debian GNU/Linux", "12", "Dell Inc.", &[]),
        )),
    ));
    reports.push(report(
        "now-hpe",
        1,
        Some((
            "sha256:1",
            inventory("Debian GNU/Linux", "12", "Dell Inc.", &[]),
        )),
    ));
    reports.push(report(
        "blank",
        1,
        Some(("sha256:1", inventory("Debian GNU/Linux", "12", "", &[]))),
    ));
    write(store, now, reports);
    let mut without_bios = inventory("Debian GNU/Linux", "12", "", &[]);
    without_bios.bios = None;
    write(
        store,
        now + 1,
        vec![
            report("was-dell", 2, Some(("sha256:2", without_bios))),
            report(
                "now-hpe",
                2,
                Some(("sha256:2", inventory("Debian GNU/Linux", "12", "HPE", &[]))),
            ),
        ],
    );

    let plain = |parity: usize| -> Vec<String> {
        (0..40)
            .filter(|n| n % 2 == parity)
            .map(|n| format!("p{n:02}"))
            .collect()
    };
    let filter = |field: &str, pattern: &str| FieldFilter {
        field: field.into(),
        pattern: ValuePattern::parse(pattern),
    };
    let debian = filter("operatingsystem.name", "Debian*");
    let mut hpe = plain(1);
    hpe.push("now-hpe".into());
    hpe.sort();
    let mut any_manufacturer: Vec<String> = (0..40).map(|n| format!("p{n:02}")).collect();
    any_manufacturer.push("now-hpe".into());
    any_manufacturer.sort();
    let cases: Vec<(Vec<FieldFilter>, Vec<String>)> = vec![
        (vec![filter("bios.smanufacturer", "*ell*")], plain(0)),
        (
            vec![debian.clone(), filter("bios.smanufacturer", "Dell*")],
            plain(0),
        ),
        (
            vec![debian.clone(), filter("bios.smanufacturer", "dell inc.")],
            plain(0),
        ),
        (
            vec![debian.clone(), filter("bios.smanufacturer", "hp*")],
            hpe,
        ),
        (
            vec![debian.clone(), filter("bios.smanufacturer", "*")],
            any_manufacturer,
        ),
    ];
    for (fields, expected) in cases {
        for limit in [1, 3, 100] {
            let listed = HostQuery {
                fields: fields.clone(),
                limit,
                ..query(now)
            };
            let seen = every_page(store, &listed, expected.len() + 1);
            assert_eq!(seen, expected, "filters {fields:?}, limit {limit}");
        }
    }
}

fn check_result(
    check: &str,
    target: &str,
    outcome: Outcome,
    reason: &str,
    started: i64,
) -> CheckResult {
    CheckResult {
        check: check.into(),
        kind: "tcp".into(),
        target: target.into(),
        outcome: outcome as i32,
        reason: reason.into(),
        started_unix_ms: started,
        ..Default::default()
    }
}

fn heartbeat(sequence: u64, checks: Vec<CheckResult>, names: &[&str]) -> ReportRequest {
    let mut report = report("a", sequence, None);
    report.checks = checks;
    report.check_names = names.iter().map(|name| (*name).to_owned()).collect();
    report
}

fn outcomes(store: &dyn Store) -> Vec<(String, String, String, i64)> {
    store
        .host_detail("a")
        .unwrap()
        .unwrap()
        .checks
        .into_iter()
        .map(|c| (c.check, c.target, c.outcome, c.since_ms))
        .collect()
}

pub fn check_outcomes_are_kept_and_changes_become_events(store: &dyn Store) {
    let names = ["ldap", "web"];
    // Two runs of `ldap` in one report: the later one wins.
    write(
        store,
        1_000,
        vec![heartbeat(
            1,
            vec![
                check_result("ldap", "dc1:389", Outcome::Pass, "", 20),
                check_result("ldap", "dc1:389", Outcome::Fail, "connection refused", 10),
                check_result("web", "www:443", Outcome::Pass, "", 10),
            ],
            &names,
        )],
    );
    assert_eq!(
        outcomes(store),
        vec![
            ("ldap".into(), "dc1:389".into(), "pass".into(), 1_000),
            ("web".into(), "www:443".into(), "pass".into(), 1_000),
        ]
    );
    // Unchanged outcome keeps its `since`; a change moves it and records an event.
    write(
        store,
        2_000,
        vec![heartbeat(
            2,
            vec![
                check_result("ldap", "dc1:389", Outcome::Fail, "timed out after 5s", 30),
                check_result("web", "www:443", Outcome::Pass, "", 30),
            ],
            &names,
        )],
    );
    assert_eq!(
        outcomes(store),
        vec![
            ("ldap".into(), "dc1:389".into(), "fail".into(), 2_000),
            ("web".into(), "www:443".into(), "pass".into(), 1_000),
        ]
    );
    let events = store
        .list_events(&EventQuery {
            limit: 10,
            ..Default::default()
        })
        .unwrap()
        .events;
    let seen: Vec<(String, Option<String>, String, String, i64)> = events
        .iter()
        .map(|e| {
            (
                e.check.clone(),
                e.old_outcome.clone(),
                e.new_outcome.clone(),
                e.reason.clone(),
                e.at_ms,
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            (
                "ldap".into(),
                Some("pass".into()),
                "fail".into(),
                "timed out after 5s".into(),
                2_000
            ),
            (
                "ldap".into(),
                Some("fail".into()),
                "pass".into(),
                "".into(),
                1_000
            ),
            ("web".into(), None, "pass".into(), "".into(), 1_000),
            (
                "ldap".into(),
                None,
                "fail".into(),
                "connection refused".into(),
                1_000
            ),
        ],
        "newest first; results of one report apply oldest run first"
    );
    assert_eq!(events[0].hostname, "host-a");

    // Failing checks, by outcome.
    let failing = || {
        store
            .list_checks(&CheckQuery {
                outcome: Some("fail".into()),
                limit: 10,
                ..Default::default()
            })
            .unwrap()
            .checks
    };
    assert_eq!(failing().len(), 1);
    assert_eq!(failing()[0].0, "host-a");
    assert_eq!(failing()[0].1.reason, "timed out after 5s");

    // A new reason for the same outcome replaces the stored one, without an event.
    write(
        store,
        2_500,
        vec![heartbeat(
            3,
            vec![
                check_result("ldap", "dc1:389", Outcome::Fail, "connection refused", 35),
                check_result("web", "www:443", Outcome::Pass, "", 35),
            ],
            &names,
        )],
    );
    let dc1 = |failing: &[(String, CheckState)]| {
        let state = &failing[0].1;
        (
            state.reason.clone(),
            state.since_ms,
            state.received_ms,
            state.started_ms,
        )
    };
    assert_eq!(
        dc1(&failing()),
        ("connection refused".into(), 2_000, 2_500, 35)
    );
    let events_now = store
        .list_events(&EventQuery {
            limit: 10,
            ..Default::default()
        })
        .unwrap()
        .events
        .len();
    assert_eq!(
        events_now,
        events.len(),
        "no event without a change of outcome"
    );

    // A target this report has no run of stays, with its run, while the check's latest run in
    // the report started before it (a run that finished late).
    write(
        store,
        2_700,
        vec![heartbeat(
            4,
            vec![
                check_result("ldap", "dc0:389", Outcome::Pass, "", 30),
                check_result("web", "www:443", Outcome::Pass, "", 36),
            ],
            &names,
        )],
    );
    assert_eq!(
        outcomes(store),
        vec![
            ("ldap".into(), "dc0:389".into(), "pass".into(), 2_700),
            ("ldap".into(), "dc1:389".into(), "fail".into(), 2_000),
            ("web".into(), "www:443".into(), "pass".into(), 1_000),
        ]
    );
    assert_eq!(
        dc1(&failing()),
        ("connection refused".into(), 2_000, 2_500, 35)
    );

    // A run that no longer reports a target drops it; a check removed from the agent's config
    // disappears.
    let outcome = write(
        store,
        3_000,
        vec![heartbeat(
            5,
            vec![check_result("ldap", "dc2:389", Outcome::Pass, "", 40)],
            &["ldap"],
        )],
    );
    match &outcome[0] {
        WriteOutcome::Stored { checks, .. } => {
            assert_eq!(checks.as_ref().map(Vec::len), Some(1), "{checks:?}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        outcomes(store),
        vec![("ldap".into(), "dc2:389".into(), "pass".into(), 3_000)]
    );
    // A heartbeat without results leaves the state alone.
    let outcome = write(store, 4_000, vec![heartbeat(6, vec![], &["ldap"])]);
    assert!(matches!(
        outcome[0],
        WriteOutcome::Stored { checks: None, .. }
    ));
    assert_eq!(store.load_checks().unwrap().len(), 1);
}

/// What a write answers is what the store then holds: the host's record after a heartbeat, and
/// the host's complete set of results, including one this heartbeat did not renew (a check
/// that runs less often than the agent reports).
pub fn a_heartbeat_answers_with_what_is_stored(store: &dyn Store) {
    let names = ["ldap", "web"];
    let mut first = heartbeat(
        1,
        vec![
            check_result("ldap", "dc1:389", Outcome::Fail, "connection refused", 10),
            check_result("web", "www:443", Outcome::Pass, "", 10),
        ],
        &names,
    );
    first.checks[0].measurements = vec![Measurement {
        name: "connect_seconds".into(),
        value: 0.5,
        text: "slow".into(),
    }];
    first.vitals = Some(HostVitals {
        memory_available_bytes: 1,
        ..Default::default()
    });
    write(store, 1_000, vec![first]);
    let mut second = heartbeat(
        2,
        vec![check_result(
            "web",
            "www:443",
            Outcome::Fail,
            "timed out",
            20,
        )],
        &names,
    );
    second.vitals = Some(HostVitals {
        memory_available_bytes: 2,
        ..Default::default()
    });
    second.dropped_reports = 3;
    second.agent_time_unix_ms = 2_500;
    let outcome = write(store, 2_000, vec![second]);
    let WriteOutcome::Stored {
        host,
        checks: Some(checks),
        ..
    } = &outcome[0]
    else {
        panic!("{outcome:?}");
    };
    let without_owner = |record: &estate_collector::store::HostRecord| {
        let mut record = record.clone();
        record.reported_to.clear();
        record
    };
    let loaded = store.load_hosts().unwrap();
    let loaded = loaded.iter().find(|record| record.id == "a").unwrap();
    assert_eq!(without_owner(loaded), without_owner(host));
    assert_eq!(
        (
            host.last_sequence,
            host.last_seen_ms,
            host.clock_skew_ms,
            host.dropped_reports_total,
            host.reports_received_total,
            host.vitals.memory_available_bytes
        ),
        (2, 2_000, 500, 3, 2, 2)
    );

    let mut stored = store.load_checks().unwrap();
    stored.sort_by(|a, b| (&a.check, &a.target).cmp(&(&b.check, &b.target)));
    assert_eq!(checks, &stored);
    // The API's list and the host's detail read the same states, runs included.
    let listed: Vec<CheckState> = store
        .list_checks(&CheckQuery {
            limit: 10,
            ..Default::default()
        })
        .unwrap()
        .checks
        .into_iter()
        .map(|(_, state)| state)
        .collect();
    assert_eq!(checks, &listed);
    let detail = store.host_detail("a").unwrap().unwrap();
    assert_eq!(checks, &detail.checks);
    let summary: Vec<(&str, &str, &str, i64, i64, usize)> = checks
        .iter()
        .map(|c| {
            (
                c.check.as_str(),
                c.outcome.as_str(),
                c.reason.as_str(),
                c.since_ms,
                c.received_ms,
                c.measurements.len(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("ldap", "fail", "connection refused", 1_000, 1_000, 1),
            ("web", "fail", "timed out", 2_000, 2_000, 0),
        ]
    );
    assert_eq!(checks[0].measurements[0].text, "slow");
}

pub fn hosts_load_back_for_the_in_memory_state(store: &dyn Store) {
    write(
        store,
        1_000,
        vec![report("a", 1, None), report("b", 1, None)],
    );
    let mut loaded: Vec<String> = store
        .load_hosts()
        .unwrap()
        .into_iter()
        .map(|h| h.id)
        .collect();
    loaded.sort();
    assert_eq!(loaded, vec!["a", "b"]);
}

/// Several reports of one host in one batch (a burst after an outage) behave as if written one
/// by one: each sees the one before it.
pub fn reports_of_one_host_in_one_batch_apply_in_order(store: &dyn Store) {
    let mut second = heartbeat(
        2,
        vec![check_result("web", "db:5432", Outcome::Fail, "refused", 10)],
        &["web"],
    );
    second.inventory_hash = "h2".into();
    second.inventory = Some(inventory("Debian", "13", "Dell", &[]));
    let mut third = heartbeat(
        3,
        vec![check_result("web", "db:5432", Outcome::Pass, "", 20)],
        &["web"],
    );
    third.inventory_hash = "h2".into();
    let outcomes = write(
        store,
        1_000,
        vec![
            report("a", 1, Some(("h1", inventory("Debian", "12", "Dell", &[])))),
            second,
            third,
            report("a", 3, None),
        ],
    );
    let kinds: Vec<bool> = outcomes.iter().map(stored).collect();
    assert_eq!(
        kinds,
        vec![true, true, true, false],
        "the replayed 3 is a duplicate"
    );
    let host = store.host_detail("a").unwrap().unwrap();
    assert_eq!(host.host.last_sequence, 3);
    assert_eq!(host.host.os_version, "13");
    let changes = store
        .host_changes(
            "a",
            &ChangeQuery {
                limit: 10,
                ..Default::default()
            },
        )
        .unwrap()
        .unwrap()
        .changes;
    assert_eq!(
        changes.iter().map(|c| c.field.as_str()).collect::<Vec<_>>(),
        vec!["operatingsystem.version"]
    );
    let events = store
        .list_events(&EventQuery {
            limit: 10,
            ..Default::default()
        })
        .unwrap()
        .events;
    let sequence: Vec<(Option<&str>, &str)> = events
        .iter()
        .rev()
        .map(|e| (e.old_outcome.as_deref(), e.new_outcome.as_str()))
        .collect();
    assert_eq!(sequence, vec![(None, "fail"), (Some("fail"), "pass")]);
    assert_eq!(host.checks.len(), 1);
    assert_eq!(
        (host.checks[0].outcome.as_str(), host.checks[0].since_ms),
        ("pass", 1_000)
    );
}

/// Deleting a host removes it with everything recorded about it, and only it; its agent's next
/// report makes it anew.
pub fn a_deleted_host_is_gone_with_everything_recorded_about_it(store: &dyn Store) {
    let mut first = heartbeat(
        1,
        vec![check_result("web", "db:5432", Outcome::Fail, "refused", 10)],
        &["web"],
    );
    first.inventory_hash = "h1".into();
    first.inventory = Some(inventory("Debian", "12", "Dell", &[("curl", "7.88")]));
    let mut second = heartbeat(2, vec![], &["web"]);
    second.inventory_hash = "h2".into();
    second.inventory = Some(inventory("Debian", "13", "Dell", &[("curl", "7.88")]));
    write(
        store,
        1_000,
        vec![
            first,
            second,
            report("b", 1, Some(("hb", inventory("Debian", "12", "Dell", &[])))),
        ],
    );

    let deleted = store.delete_host("a").unwrap().expect("host `a` existed");
    assert_eq!(
        (deleted.id.as_str(), deleted.hostname.as_str()),
        ("a", "host-a")
    );
    assert_eq!((deleted.last_sequence, deleted.last_seen_ms), (2, 1_000));
    assert!(store.host_detail("a").unwrap().is_none());
    let changes = ChangeQuery {
        limit: 10,
        ..Default::default()
    };
    assert!(store.host_changes("a", &changes).unwrap().is_none());
    let checks = store
        .list_checks(&CheckQuery {
            limit: 10,
            ..Default::default()
        })
        .unwrap()
        .checks;
    assert!(checks.is_empty(), "{checks:?}");
    let events = store
        .list_events(&EventQuery {
            limit: 10,
            ..Default::default()
        })
        .unwrap()
        .events;
    assert!(events.is_empty(), "{events:?}");
    assert!(store.load_checks().unwrap().is_empty());
    let loaded: Vec<String> = store
        .load_hosts()
        .unwrap()
        .into_iter()
        .map(|h| h.id)
        .collect();
    assert_eq!(loaded, vec!["b"]);
    // The field index went too: a filter that matched both hosts matches only `b`.
    let mut dell = query(1_000);
    dell.fields.push(FieldFilter {
        field: "bios.smanufacturer".into(),
        pattern: ValuePattern::Exact("Dell".into()),
    });
    assert_eq!(ids(store, &dell), vec!["b"]);
    assert!(store.delete_host("a").unwrap().is_none(), "already gone");
    assert!(store.delete_host("never-seen").unwrap().is_none());

    // The agent still runs: its next report is a new host's first.
    let outcome = write(store, 5_000, vec![report("a", 3, None)]);
    assert!(stored(&outcome[0]));
    let host = store.host_detail("a").unwrap().unwrap().host;
    assert_eq!(
        (host.first_seen_ms, host.reports_received_total),
        (5_000, 1)
    );
}

/// A new token of `kind` as the CLI would store it, with its secret.
fn new_token(
    kind: TokenKind,
    host: Option<&str>,
    created_ms: i64,
    expires_ms: Option<i64>,
    uses_left: Option<u32>,
) -> (NewToken, String) {
    let secret = tokens::generate(kind);
    (
        NewToken {
            id: secret.id.clone(),
            kind,
            hash: secret.hash.clone(),
            host: host.map(str::to_owned),
            created_ms,
            expires_ms,
            uses_left,
        },
        secret.secret,
    )
}

fn tokens_are_stored_by_hash_listed_and_revoked(store: &dyn Store) {
    assert!(store.list_tokens().unwrap().is_empty());
    let (agent, agent_secret) = new_token(TokenKind::Agent, Some("web-01"), 1_000, None, None);
    let (enrollment, _) = new_token(TokenKind::Enrollment, None, 2_000, Some(90_000), Some(3));
    store.create_token(&agent).unwrap();
    store.create_token(&enrollment).unwrap();

    let found = store
        .token_by_hash(&tokens::hash(&agent_secret))
        .unwrap()
        .expect("the agent token is found by the hash of its secret");
    assert_eq!(found.id, agent.id);
    assert_eq!(found.kind, TokenKind::Agent);
    assert_eq!(found.host.as_deref(), Some("web-01"));
    assert_eq!((found.created_ms, found.expires_ms), (1_000, None));
    assert_eq!((found.revoked_ms, found.last_used_ms), (None, None));
    assert_eq!(found.unusable_at(5_000), None);
    assert!(
        store
            .token_by_hash(&tokens::hash("estate_agt_unknown"))
            .unwrap()
            .is_none()
    );

    let listed = store.list_tokens().unwrap();
    assert_eq!(
        listed.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
        vec![agent.id.as_str(), enrollment.id.as_str()]
    );
    assert_eq!(listed[1].kind, TokenKind::Enrollment);
    assert_eq!(
        (listed[1].expires_ms, listed[1].uses_left),
        (Some(90_000), Some(3))
    );
    assert_eq!(
        listed[1].unusable_at(90_000),
        Some(TokenRefusal::Expired { at_ms: 90_000 })
    );

    store.touch_token(&agent.id, 3_000).unwrap();
    store.touch_token(&agent.id, 2_500).unwrap();
    let touched = store.token_by_hash(&agent.hash).unwrap().unwrap();
    assert_eq!(
        touched.last_used_ms,
        Some(3_000),
        "last use never goes back"
    );

    assert!(store.revoke_token(&agent.id, 4_000).unwrap());
    assert!(store.revoke_token(&agent.id, 5_000).unwrap());
    assert!(!store.revoke_token("no-such-id", 5_000).unwrap());
    let revoked = store.token_by_hash(&agent.hash).unwrap().unwrap();
    assert_eq!(
        revoked.revoked_ms,
        Some(4_000),
        "the first revocation time is kept"
    );
    assert_eq!(
        revoked.unusable_at(6_000),
        Some(TokenRefusal::Revoked { at_ms: 4_000 })
    );
    // The same hash cannot be stored twice: the lookup by hash must be unambiguous.
    let mut copy = agent.clone();
    copy.id = "other-id".into();
    assert!(store.create_token(&copy).is_err());
}

fn an_enrollment_secret_is_exchanged_for_an_agent_token(store: &dyn Store) {
    let (enrollment, secret) = new_token(TokenKind::Enrollment, None, 1_000, Some(10_000), Some(2));
    store.create_token(&enrollment).unwrap();
    let hash = tokens::hash(&secret);

    let (first, _) = new_token(TokenKind::Agent, Some("web-01"), 2_000, None, None);
    assert_eq!(
        store.exchange_enrollment(&hash, &first).unwrap(),
        ExchangeOutcome::Issued {
            enrollment_id: enrollment.id.clone()
        }
    );
    let issued = store.token_by_hash(&first.hash).unwrap().unwrap();
    assert_eq!(issued.kind, TokenKind::Agent);
    assert_eq!(issued.host.as_deref(), Some("web-01"));
    assert_eq!(issued.issued_by.as_deref(), Some(enrollment.id.as_str()));
    let after_one = store.token_by_hash(&hash).unwrap().unwrap();
    assert_eq!(
        (after_one.uses_left, after_one.last_used_ms),
        (Some(1), Some(2_000))
    );

    let (second, _) = new_token(TokenKind::Agent, Some("web-02"), 3_000, None, None);
    assert!(matches!(
        store.exchange_enrollment(&hash, &second).unwrap(),
        ExchangeOutcome::Issued { .. }
    ));
    // Spent: the third agent is refused and no token is stored for it.
    let (third, _) = new_token(TokenKind::Agent, Some("web-03"), 4_000, None, None);
    assert_eq!(
        store.exchange_enrollment(&hash, &third).unwrap(),
        ExchangeOutcome::Refused(TokenRefusal::UsedUp)
    );
    assert!(store.token_by_hash(&third.hash).unwrap().is_none());

    // An agent token is no enrollment secret, and unknown secrets are unknown.
    assert_eq!(
        store.exchange_enrollment(&first.hash, &third).unwrap(),
        ExchangeOutcome::Refused(TokenRefusal::Unknown)
    );
    assert_eq!(
        store
            .exchange_enrollment(&tokens::hash("estate_enr_nothing"), &third)
            .unwrap(),
        ExchangeOutcome::Refused(TokenRefusal::Unknown)
    );

    // Unlimited uses, but expired, then revoked.
    let (open, open_secret) = new_token(TokenKind::Enrollment, None, 1_000, Some(5_000), None);
    store.create_token(&open).unwrap();
    let (late, _) = new_token(TokenKind::Agent, Some("web-04"), 5_000, None, None);
    assert_eq!(
        store
            .exchange_enrollment(&tokens::hash(&open_secret), &late)
            .unwrap(),
        ExchangeOutcome::Refused(TokenRefusal::Expired { at_ms: 5_000 })
    );
    let (early, _) = new_token(TokenKind::Agent, Some("web-04"), 4_000, None, None);
    assert!(store.revoke_token(&open.id, 3_500).unwrap());
    assert_eq!(
        store
            .exchange_enrollment(&tokens::hash(&open_secret), &early)
            .unwrap(),
        ExchangeOutcome::Refused(TokenRefusal::Revoked { at_ms: 3_500 })
    );
    assert_eq!(store.list_tokens().unwrap().len(), 4);
}

/// Instantiates every conformance test for one backend. `$open` makes a fresh, empty store and
/// returns it with whatever keeps it alive (a temporary directory).
/// Attributes after `$open` (`#[ignore = …]`) go on every test of the backend.
macro_rules! store_conformance_suite {
    ($backend:ident, $open:expr $(, #[$attribute:meta])*) => {
        mod $backend {
            use super::*;

            fn check(test: fn(&dyn Store)) {
                let (store, _guard) = $open();
                test(&store);
            }

            #[test]
            $(#[$attribute])*
            fn first_report_creates_the_host() {
                check(super::first_report_creates_the_host);
            }
            #[test]
            $(#[$attribute])*
            fn a_replayed_sequence_is_a_duplicate_and_changes_nothing() {
                check(super::a_replayed_sequence_is_a_duplicate_and_changes_nothing);
            }
            #[test]
            $(#[$attribute])*
            fn an_unknown_hash_asks_for_the_full_inventory() {
                check(super::an_unknown_hash_asks_for_the_full_inventory);
            }
            #[test]
            $(#[$attribute])*
            fn a_changed_inventory_records_what_changed() {
                check(super::a_changed_inventory_records_what_changed);
            }
            #[test]
            $(#[$attribute])*
            fn a_second_live_machine_with_the_same_id_is_flagged() {
                check(super::a_second_live_machine_with_the_same_id_is_flagged);
            }
            #[test]
            $(#[$attribute])*
            fn hosts_are_filtered_and_paged() {
                check(super::hosts_are_filtered_and_paged);
            }
            #[test]
            $(#[$attribute])*
            fn host_pages_are_alike_whatever_the_filters_match() {
                check(super::host_pages_are_alike_whatever_the_filters_match);
            }
            #[test]
            $(#[$attribute])*
            fn a_host_rows_copy_of_a_field_never_widens_a_filter() {
                check(super::a_host_rows_copy_of_a_field_never_widens_a_filter);
            }
            #[test]
            $(#[$attribute])*
            fn a_prefix_glob_matches_its_prefix_without_regard_to_ascii_case() {
                check(super::a_prefix_glob_matches_its_prefix_without_regard_to_ascii_case);
            }
            #[test]
            $(#[$attribute])*
            fn check_outcomes_are_kept_and_changes_become_events() {
                check(super::check_outcomes_are_kept_and_changes_become_events);
            }
            #[test]
            $(#[$attribute])*
            fn a_heartbeat_answers_with_what_is_stored() {
                check(super::a_heartbeat_answers_with_what_is_stored);
            }
            #[test]
            $(#[$attribute])*
            fn hosts_load_back_for_the_in_memory_state() {
                check(super::hosts_load_back_for_the_in_memory_state);
            }
            #[test]
            $(#[$attribute])*
            fn reports_of_one_host_in_one_batch_apply_in_order() {
                check(super::reports_of_one_host_in_one_batch_apply_in_order);
            }
            #[test]
            $(#[$attribute])*
            fn a_deleted_host_is_gone_with_everything_recorded_about_it() {
                check(super::a_deleted_host_is_gone_with_everything_recorded_about_it);
            }
            #[test]
            $(#[$attribute])*
            fn tokens_are_stored_by_hash_listed_and_revoked() {
                check(super::tokens_are_stored_by_hash_listed_and_revoked);
            }
            #[test]
            $(#[$attribute])*
            fn an_enrollment_secret_is_exchanged_for_an_agent_token() {
                check(super::an_enrollment_secret_is_exchanged_for_an_agent_token);
            }
        }
    };
}

fn open_sqlite() -> (SqliteStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("estate.db")).unwrap();
    (store, dir)
}

store_conformance_suite!(sqlite, open_sqlite);

/// The server the PostgreSQL suite runs against; `.ci/postgres-cluster start` prints it.
const POSTGRES_URL_VARIABLE: &str = "ESTATE_TEST_POSTGRES_URL";

/// A database of its own for one test, dropped when the test ends.
struct TestDatabase {
    server_url: String,
    name: String,
}

impl TestDatabase {
    fn url(&self) -> String {
        let mut url = url::Url::parse(&self.server_url).unwrap();
        url.set_path(&format!("/{}", self.name));
        url.to_string()
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Err(error) = drop_database(&self.server_url, &self.name) {
            eprintln!("could not drop test database `{}`: {error}", self.name);
        }
    }
}

fn open_postgres() -> (PostgresStore, TestDatabase) {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let server_url = std::env::var(POSTGRES_URL_VARIABLE).unwrap_or_else(|_| {
        panic!(
            "{POSTGRES_URL_VARIABLE} is not set: start a server with \
             `.ci/postgres-cluster start DIR` and export the line it prints"
        )
    });
    let name = format!(
        "estate_conformance_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let url = create_database(&server_url, &name).unwrap();
    let guard = TestDatabase { server_url, name };
    let store = PostgresStore::open(&url, "conformance-collector").unwrap();
    (store, guard)
}

store_conformance_suite!(
    postgres,
    open_postgres,
    #[ignore = "needs PostgreSQL: .ci/run starts one (ESTATE_TEST_POSTGRES_URL)"]
);

#[test]
fn sqlite_keeps_committed_reports_across_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("estate.db");
    {
        let store = SqliteStore::open(&path).unwrap();
        write(&store, 1_000, vec![report("a", 1, None)]);
    }
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.load_hosts().unwrap().len(), 1);
    let outcomes = write(&store, 2_000, vec![report("a", 1, None)]);
    assert!(matches!(outcomes[0], WriteOutcome::Duplicate));
}

/// The outcome history of host `a`: (check, target, old outcome, new outcome, at).
fn history(store: &dyn Store) -> Vec<(String, String, Option<String>, String, i64)> {
    let mut events: Vec<_> = store
        .list_events(&EventQuery {
            host_id: Some("a".into()),
            limit: 100,
            ..Default::default()
        })
        .unwrap()
        .events
        .into_iter()
        .map(|e| (e.check, e.target, e.old_outcome, e.new_outcome, e.at_ms))
        .collect();
    events.reverse();
    events
}

/// A commit to the same file by another connection (another process) is seen by the next
/// batch: a writer that kept rows between batches (docs/BENCHMARKS.md measures one) must read
/// them again.
#[test]
fn sqlite_writer_reads_again_after_another_connection_commits() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("estate.db");
    let store = SqliteStore::open(&path).unwrap();
    let web = |outcome, started| vec![check_result("web", "www:443", outcome, "", started)];
    write(
        &store,
        1_000,
        vec![heartbeat(1, web(Outcome::Pass, 1), &["web"])],
    );

    let other = rusqlite::Connection::open(&path).unwrap();
    other
        .execute_batch(
            "UPDATE hosts SET last_sequence = 5 WHERE id = 'a'; \
             UPDATE check_results SET outcome = 'fail', since_ms = 1500 WHERE host_id = 'a';",
        )
        .unwrap();
    let replayed = write(
        &store,
        2_000,
        vec![heartbeat(3, web(Outcome::Pass, 3), &["web"])],
    );
    assert!(
        matches!(replayed[0], WriteOutcome::Duplicate),
        "sequence 3 is below the stored 5: {replayed:?}"
    );
    write(
        &store,
        3_000,
        vec![heartbeat(6, web(Outcome::Pass, 6), &["web"])],
    );
    assert_eq!(
        outcomes(&store),
        vec![("web".into(), "www:443".into(), "pass".into(), 3_000)]
    );
    assert_eq!(
        history(&store),
        vec![
            ("web".into(), "www:443".into(), None, "pass".into(), 1_000),
            (
                "web".into(),
                "www:443".into(),
                Some("fail".into()),
                "pass".into(),
                3_000
            ),
        ]
    );
}

/// Host `a` reports, then a batch fails (a trigger made by the caller refuses any check result
/// whose target is `boom`), then `a`'s report of that batch is sent again: it must be stored,
/// not taken for a duplicate, with the outcome change it brings.
fn a_failed_batch_is_forgotten(store: &dyn Store) {
    let web = |outcome, started| vec![check_result("web", "www:443", outcome, "", started)];
    write(
        store,
        1_000,
        vec![heartbeat(1, web(Outcome::Pass, 1), &["web"])],
    );

    let mut failing = heartbeat(1, web(Outcome::Pass, 1), &["web"]);
    failing.identity.as_mut().unwrap().agent_id = "b".into();
    failing.checks[0].target = "boom".into();
    let incoming: Vec<IncomingReport> = [heartbeat(2, web(Outcome::Fail, 2), &["web"]), failing]
        .into_iter()
        .map(|report| IncomingReport {
            report: validate_report(report, &Limits::default()).unwrap(),
            received_ms: 2_000,
        })
        .collect();
    let error = store.write_batch(&incoming, POLICY).unwrap_err();
    assert!(
        error.to_string().starts_with("failed to write a batch"),
        "{error}"
    );

    let retried = write(
        store,
        3_000,
        vec![heartbeat(2, web(Outcome::Fail, 2), &["web"])],
    );
    assert!(stored(&retried[0]), "{retried:?}");
    assert_eq!(
        outcomes(store),
        vec![("web".into(), "www:443".into(), "fail".into(), 3_000)]
    );
    assert_eq!(
        history(store),
        vec![
            ("web".into(), "www:443".into(), None, "pass".into(), 1_000),
            (
                "web".into(),
                "www:443".into(),
                Some("pass".into()),
                "fail".into(),
                3_000
            ),
        ]
    );
}

/// A batch that fails is rolled back whole, and the writer must forget it too: otherwise the
/// next try of the same report would be taken for a duplicate.
#[test]
fn sqlite_failed_batch_leaves_the_writer_as_before() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("estate.db");
    SqliteStore::open(&path).unwrap();
    // Made before the store opens, so the writer learns of no other connection's commit.
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch(
            "CREATE TRIGGER refuse_boom BEFORE INSERT ON check_results \
             WHEN NEW.target = 'boom' BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;",
        )
        .unwrap();
    let store = SqliteStore::open(&path).unwrap();
    a_failed_batch_is_forgotten(&store);
}

#[test]
fn sqlite_open_names_the_file_it_cannot_open() {
    let error = SqliteStore::open(std::path::Path::new("/nonexistent-dir/estate.db")).unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("failed to open database `/nonexistent-dir/estate.db`"),
        "{error}"
    );
}

const NEEDS_POSTGRES: &str = "needs PostgreSQL";

#[test]
#[ignore = "needs PostgreSQL: .ci/run starts one (ESTATE_TEST_POSTGRES_URL)"]
fn postgres_collectors_starting_together_migrate_once() {
    let (_first, database) = open_postgres();
    let url = database.url();
    let openers: Vec<_> = (0..4)
        .map(|n| {
            let url = url.clone();
            std::thread::spawn(move || PostgresStore::open(&url, &format!("c{n}")).map(|_| ()))
        })
        .collect();
    for opener in openers {
        opener.join().unwrap().expect(NEEDS_POSTGRES);
    }
}

#[test]
#[ignore = "needs PostgreSQL: .ci/run starts one (ESTATE_TEST_POSTGRES_URL)"]
fn postgres_records_which_collector_stored_each_host() {
    let (first, database) = open_postgres();
    let second = PostgresStore::open(&database.url(), "collector-b").unwrap();
    write(
        &first,
        1_000,
        vec![report("a", 1, None), report("b", 1, None)],
    );
    write(&second, 2_000, vec![report("b", 2, None)]);
    let view = second
        .refresh_collectors("collector-b", 2_500, 0, 1_500)
        .unwrap();
    assert_eq!(view.live_collectors, vec!["collector-b"]);
    assert_eq!(
        view.reported,
        vec![HostOwner {
            id: "b".into(),
            reported_to: "collector-b".into(),
            last_seen_ms: 2_000
        }]
    );
    let view = first
        .refresh_collectors("conformance-collector", 3_000, 2_000, 0)
        .unwrap();
    assert_eq!(
        view.live_collectors,
        vec!["collector-b", "conformance-collector"]
    );
    assert_eq!(view.reported.len(), 2);
    let (hosts, _) = first.load_hosts_by_id(&["a".into()]).unwrap();
    assert_eq!(hosts[0].reported_to, "conformance-collector");
}

#[test]
#[ignore = "needs PostgreSQL: .ci/run starts one (ESTATE_TEST_POSTGRES_URL)"]
fn postgres_store_dropped_by_an_async_task_closes_its_connections() {
    let (store, database) = open_postgres();
    // The writer's and a reader's connection are open and idle in their pools.
    write(&store, 1_000, vec![report("a", 1, None)]);
    assert_eq!(store.load_hosts().unwrap().len(), 1);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // As at the collector's shutdown: the last owner is a task on the runtime.
    runtime
        .block_on(async { tokio::spawn(async move { drop(store) }).await })
        .expect("dropping the store on a runtime thread must not panic");
    // The connections really closed (the server ends a session just after its client leaves).
    let server = std::env::var(POSTGRES_URL_VARIABLE).unwrap();
    let mut admin = estate_collector::store::postgres::connect(&server).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let sessions: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1",
                &[&database.name],
            )
            .unwrap()
            .get(0);
        if sessions == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{sessions} sessions still open"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
#[ignore = "needs PostgreSQL: .ci/run starts one (ESTATE_TEST_POSTGRES_URL)"]
fn postgres_stores_text_with_nul_characters() {
    let (store, _database) = open_postgres();
    let mut odd = report(
        "a",
        1,
        Some(("h1", inventory("Deb\0ian", "12", "Dell", &[]))),
    );
    odd.checks = vec![check_result("web", "x\0y", Outcome::Fail, "bad\0reply", 1)];
    odd.check_names = vec!["web".into()];
    let outcomes = write(&store, 1_000, vec![odd, report("b", 1, None)]);
    assert!(outcomes.iter().all(stored));
    let host = store.host_detail("a").unwrap().unwrap();
    assert_eq!(host.host.os_name, "Deb\u{FFFD}ian");
}

/// The PostgreSQL writer prepares its statements once per connection; a failed batch must not
/// leave it unable to write the next.
#[test]
#[ignore = "needs PostgreSQL: .ci/run starts one (ESTATE_TEST_POSTGRES_URL)"]
fn postgres_failed_batch_leaves_the_writer_as_before() {
    let (store, database) = open_postgres();
    estate_collector::store::postgres::connect(&database.url())
        .unwrap()
        .batch_execute(
            "CREATE FUNCTION refuse_boom() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN IF NEW.target = 'boom' THEN RAISE EXCEPTION 'refused by the test'; END IF; \
             RETURN NEW; END $$; \
             CREATE TRIGGER refuse_boom BEFORE INSERT ON check_results \
             FOR EACH ROW EXECUTE FUNCTION refuse_boom();",
        )
        .unwrap();
    a_failed_batch_is_forgotten(&store);
}

#[test]
#[ignore = "needs PostgreSQL: .ci/run starts one (ESTATE_TEST_POSTGRES_URL)"]
fn postgres_verify_full_refuses_a_server_signed_by_another_ca() {
    let url = std::env::var(POSTGRES_URL_VARIABLE).expect(POSTGRES_URL_VARIABLE);
    let dir = tempfile::tempdir().unwrap();
    let other_ca = dir.path().join("other-ca.crt");
    std::fs::write(&other_ca, OTHER_CA_PEM).unwrap();
    let (base, _) = url.split_once('?').unwrap();
    let wrong = format!(
        "{base}?sslmode=verify-full&sslrootcert={}",
        other_ca.display()
    );
    let error = PostgresStore::open(&wrong, "c").unwrap_err().to_string();
    assert!(
        error.starts_with("failed to connect to database `postgres://estate:***@"),
        "{error}"
    );
    let password = url::Url::parse(&url)
        .unwrap()
        .password()
        .unwrap()
        .to_owned();
    assert!(!error.contains(&password), "password leaked: {error}");
    let bad_mode = format!("{base}?sslmode=verify-everything");
    let error = PostgresStore::open(&bad_mode, "c").unwrap_err().to_string();
    assert!(
        error.contains("`sslmode` `verify-everything` is not one of"),
        "{error}"
    );
}

/// A self-signed CA certificate unrelated to the test server (P-256, made for this test).
const OTHER_CA_PEM: &str = include_str!("fixtures/unrelated-ca.crt");
