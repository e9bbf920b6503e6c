//! The collector in-process over real sockets: gRPC ingest on `127.0.0.1:0`, then the JSON API
//! and `/metrics` over HTTP. Covers what an agent or an API user sees, including bad input.

use estate_collector::auth::{ApiAuth, ApiToken, Scope, digest};
use estate_collector::config::CollectorConfig;
use estate_proto::v1::ingest_client::IngestClient;
use estate_proto::v1::{
    Bios, CheckResult, HostIdentity, HostVitals, Inventory, Measurement, OperatingSystem, Outcome,
    ReportRequest, Software, VolumeUsage,
};
use serde_json::Value;
use std::net::SocketAddr;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A running collector; dropping `stop` shuts it down, `task` is joined by [`Collector::stop`].
struct Collector {
    grpc: SocketAddr,
    http: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

impl Collector {
    async fn start() -> Self {
        Self::start_with(ApiAuth::default()).await
    }

    async fn start_with(api_auth: ApiAuth) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = CollectorConfig {
            database: dir.path().join("estate.db"),
            api_auth,
            ..Default::default()
        };
        let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (grpc_address, http_address) = (grpc.local_addr().unwrap(), http.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(estate_collector::run(config, grpc, http, async move {
            let _ = stopped.await;
        }));
        Collector {
            grpc: grpc_address,
            http: http_address,
            stop: Some(stop),
            task,
            _dir: dir,
        }
    }

    async fn client(&self) -> IngestClient<tonic::transport::Channel> {
        IngestClient::connect(format!("http://{}", self.grpc))
            .await
            .unwrap()
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let response = reqwest::get(format!("http://{}{path}", self.http))
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    }

    async fn get_json(&self, path: &str) -> (u16, Value) {
        let (status, body) = self.get(path).await;
        (
            status,
            serde_json::from_str(&body).unwrap_or(Value::String(body)),
        )
    }

    /// `method path` with `Authorization: Bearer <token>` when a token is given: the status,
    /// the `WWW-Authenticate` header and the body (JSON when it parses).
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
    ) -> (u16, Option<String>, Value) {
        let mut request =
            reqwest::Client::new().request(method, format!("http://{}{path}", self.http));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let challenge = response
            .headers()
            .get("www-authenticate")
            .map(|value| value.to_str().unwrap().to_owned());
        let body = response.text().await.unwrap();
        let body = serde_json::from_str(&body).unwrap_or(Value::String(body));
        (status, challenge, body)
    }

    async fn stop(mut self) {
        drop(self.stop.take());
        self.task.await.unwrap().unwrap();
    }
}

fn report(sequence: u64, with_inventory: bool) -> ReportRequest {
    let inventory = Inventory {
        bios: Some(Bios {
            smanufacturer: "Dell Inc.".into(),
            ..Default::default()
        }),
        operatingsystem: Some(OperatingSystem {
            name: "Debian GNU/Linux".into(),
            version: "12".into(),
            ..Default::default()
        }),
        softwares: vec![Software {
            name: "openssl".into(),
            version: "3.0.1".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    ReportRequest {
        identity: Some(HostIdentity {
            agent_id: "7f2c1d9e-0000-4000-8000-000000000001".into(),
            hostname: "web-01".into(),
            machine_id: "m1".into(),
            ..Default::default()
        }),
        agent_version: "0.1.0".into(),
        sequence,
        inventory_hash: "sha256:aa".into(),
        inventory: with_inventory.then_some(inventory),
        vitals: Some(HostVitals {
            volumes: vec![VolumeUsage {
                mount: "/".into(),
                total_bytes: 1000,
                free_bytes: 50,
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn reports_are_acknowledged_stored_and_served() {
    let collector = Collector::start().await;
    let mut client = collector.client().await;

    let first = client.report(report(1, true)).await.unwrap().into_inner();
    assert!(!first.need_full_inventory && !first.duplicate);
    assert!(first.collector_time_unix_ms > 0);
    let replay = client.report(report(1, true)).await.unwrap().into_inner();
    assert!(replay.duplicate);
    let heartbeat = client.report(report(2, false)).await.unwrap().into_inner();
    assert!(!heartbeat.need_full_inventory);
    let mut unknown = report(3, false);
    unknown.inventory_hash = "sha256:bb".into();
    assert!(
        client
            .report(unknown)
            .await
            .unwrap()
            .into_inner()
            .need_full_inventory
    );

    let (status, list) = collector
        .get_json("/api/v1/hosts?bios.smanufacturer=dell*&state=up")
        .await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["hosts"][0]["hostname"], "web-01");
    assert_eq!(list["hosts"][0]["state"], "up");
    assert_eq!(list["next_cursor"], Value::Null);
    let id = list["hosts"][0]["id"].as_str().unwrap().to_owned();

    let (status, detail) = collector.get_json(&format!("/api/v1/hosts/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(detail["inventory"]["softwares"][0]["name"], "openssl");
    assert_eq!(detail["agent"]["last_sequence"], 3);

    let (status, changes) = collector
        .get_json(&format!("/api/v1/hosts/{id}/changes"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(changes["changes"], Value::Array(vec![]));

    let (status, metrics) = collector.get("/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("estate_host_up{host=\"web-01\"} 1\n"),
        "{metrics}"
    );
    assert!(metrics.contains("estate_host_volume_free_bytes{host=\"web-01\",mount=\"/\"} 50\n"));
    assert!(metrics.contains("estate_collector_reports_total{result=\"duplicate\"} 1\n"));
    assert!(metrics.contains("estate_collector_reports_total{result=\"stored\"} 3\n"));

    let (status, health) = collector.get_json("/healthz").await;
    assert_eq!((status, health["hosts"].clone()), (200, Value::from(1)));
    collector.stop().await;
}

#[tokio::test]
async fn malformed_reports_are_refused_naming_the_field_and_change_nothing() {
    let collector = Collector::start().await;
    let mut client = collector.client().await;
    let cases: Vec<(ReportRequest, &str)> = vec![
        (
            {
                let mut r = report(1, true);
                r.identity.as_mut().unwrap().agent_id.clear();
                r
            },
            "`identity.agent_id` must not be empty",
        ),
        (
            {
                let mut r = report(1, true);
                r.identity.as_mut().unwrap().agent_id = "a".repeat(100);
                r
            },
            "`identity.agent_id` is 100 bytes long, the limit is 64",
        ),
        (
            {
                let mut r = report(1, true);
                r.inventory.as_mut().unwrap().softwares[0].version = "9".repeat(5000);
                r
            },
            "`inventory.softwares[0].version` is 5000 bytes long, the limit is 1024",
        ),
        (
            {
                let mut r = report(1, true);
                r.inventory.as_mut().unwrap().softwares = vec![Software::default(); 50_001];
                r
            },
            "`inventory.softwares` has 50001 items, the limit is 50000",
        ),
    ];
    for (bad, message) in cases {
        let status = client.report(bad).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(status.message(), message);
    }
    let (_, list) = collector.get_json("/api/v1/hosts").await;
    assert_eq!(list["hosts"], Value::Array(vec![]), "nothing was stored");
    let (_, metrics) = collector.get("/metrics").await;
    assert!(metrics.contains("estate_collector_reports_total{result=\"invalid\"} 4\n"));
    // Each rejection is counted under its reason.
    for (reason, count) in [
        ("identity", 2),
        ("string_too_long", 1),
        ("too_many_items", 1),
        ("sequence", 0),
        ("rate_limited", 0),
    ] {
        let line = format!("estate_ingest_rejected_total{{reason=\"{reason}\"}} {count}\n");
        assert!(metrics.contains(&line), "missing `{line}` in {metrics}");
    }
    collector.stop().await;
}

#[tokio::test]
async fn bad_api_requests_get_400_with_code_and_message() {
    let collector = Collector::start().await;
    for (path, status, message) in [
        (
            "/api/v1/hosts?state=down",
            400,
            "`state` `down` must be `up` or `stale`",
        ),
        (
            "/api/v1/hosts?bios.colour=red",
            400,
            "unknown inventory field `bios.colour`; `GET /api/v1/fields` lists them",
        ),
        (
            "/api/v1/hosts?limit=0",
            400,
            "`limit` `0` must be a number from 1 to 1000",
        ),
        (
            "/api/v1/hosts/x/changes?since=yesterday",
            400,
            "`since` `yesterday` is not an RFC 3339 time such as `2026-11-01T00:00:00Z`",
        ),
        ("/api/v1/hosts/nope", 404, "no host with id `nope`"),
    ] {
        let (got, body) = collector.get_json(path).await;
        assert_eq!(got, status, "{path}: {body}");
        assert_eq!(body["message"], message, "{path}");
        assert!(body["code"].is_string());
    }
    collector.stop().await;
}

#[tokio::test]
async fn check_results_are_served_as_latest_outcomes_events_and_metrics() {
    let collector = Collector::start().await;
    let mut client = collector.client().await;
    let result = |outcome: Outcome, reason: &str, started: i64| CheckResult {
        check: "dc1-ldap".into(),
        kind: "tcp".into(),
        target: "dc1:389".into(),
        outcome: outcome as i32,
        reason: reason.into(),
        started_unix_ms: started,
        duration_seconds: 0.01,
        measurements: vec![Measurement {
            name: "connect_seconds".into(),
            value: 0.004,
            text: String::new(),
        }],
    };
    let mut first = report(1, true);
    first.check_names = vec!["dc1-ldap".into()];
    first.checks = vec![result(Outcome::Pass, "", 1)];
    client.report(first).await.unwrap();
    let mut second = report(2, false);
    second.check_names = vec!["dc1-ldap".into()];
    second.checks = vec![result(Outcome::Fail, "connection refused", 2)];
    client.report(second).await.unwrap();

    let (status, failing) = collector.get_json("/api/v1/checks?failing=true").await;
    assert_eq!(status, 200, "{failing}");
    assert_eq!(failing["checks"][0]["reason"], "connection refused");
    assert_eq!(failing["checks"][0]["hostname"], "web-01");
    let (_, passing) = collector.get_json("/api/v1/checks?outcome=pass").await;
    assert_eq!(passing["checks"], Value::Array(vec![]));

    let (status, events) = collector.get_json("/api/v1/events?kind=tcp").await;
    assert_eq!(status, 200);
    assert_eq!(events["events"][0]["old_outcome"], "pass");
    assert_eq!(events["events"][0]["new_outcome"], "fail");
    assert_eq!(events["events"][1]["old_outcome"], Value::Null);

    let (_, metrics) = collector.get("/metrics").await;
    let labels = "{host=\"web-01\",check=\"dc1-ldap\",kind=\"tcp\",target=\"dc1:389\"}";
    assert!(
        metrics.contains(&format!("estate_check_success{labels} 0\n")),
        "{metrics}"
    );
    assert!(metrics.contains(&format!("estate_check_connect_seconds{labels} 0.004\n")));

    for (path, message) in [
        (
            "/api/v1/checks?outcome=broken",
            "`outcome` `broken` must be `pass`, `fail` or `skipped`",
        ),
        (
            "/api/v1/checks?failing=maybe",
            "`failing` `maybe` must be `true` or `false`",
        ),
        (
            "/api/v1/events?since=now",
            "`since` `now` is not an RFC 3339 time such as `2026-11-01T00:00:00Z`",
        ),
        (
            "/api/v1/events?colour=red",
            "unknown query parameter `colour`; expected `host`, `kind`, `check`, `since`, `limit` or `cursor`",
        ),
    ] {
        let (status, body) = collector.get_json(path).await;
        assert_eq!(
            (status, body["message"].as_str()),
            (400, Some(message)),
            "{path}"
        );
    }
    collector.stop().await;
}

const READ_TOKEN: &str =
    "estate_api_0000000000000000000000000000000000000000000000000000000000000001";
const ADMIN_TOKEN: &str =
    "estate_api_0000000000000000000000000000000000000000000000000000000000000002";

fn tokens(protect_metrics: bool, protect_healthz: bool) -> ApiAuth {
    ApiAuth {
        tokens: vec![
            ApiToken {
                name: "grafana".into(),
                scope: Scope::Read,
                sha256: digest(READ_TOKEN),
            },
            ApiToken {
                name: "ops".into(),
                scope: Scope::Admin,
                sha256: digest(ADMIN_TOKEN),
            },
        ],
        protect_metrics,
        protect_healthz,
    }
}

/// The value of an unlabelled-but-one sample line, e.g. `name{reason="missing"}`.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        line.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|value| value.parse().ok())
    })
}

#[tokio::test]
async fn api_tokens_are_required_and_scoped_and_an_admin_deletes_a_host() {
    use reqwest::Method;
    let collector = Collector::start_with(tokens(false, false)).await;
    let mut client = collector.client().await;
    client.report(report(1, true)).await.unwrap();
    let id = "7f2c1d9e-0000-4000-8000-000000000001";
    let host = format!("/api/v1/hosts/{id}");

    // No token, a wrong one, another scheme: 401 with a Bearer challenge, never the token.
    let (status, challenge, body) = collector.call(Method::GET, "/api/v1/hosts", None).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(challenge.as_deref(), Some("Bearer realm=\"estate\""));
    assert_eq!(body["code"], "unauthenticated");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("`Authorization: Bearer <token>`"),
        "{body}"
    );
    let wrong = "estate_api_not-a-configured-token";
    let (status, challenge, body) = collector.call(Method::GET, &host, Some(wrong)).await;
    assert_eq!(status, 401, "{body}");
    assert!(challenge.unwrap().contains("error=\"invalid_token\""));
    assert!(!body.to_string().contains(wrong), "{body}");
    let (status, _, body) = collector.call(Method::GET, "/api/v1/nope", None).await;
    assert_eq!(status, 401, "unknown API paths are not revealed: {body}");

    // A read token reads, and gets 403 on the admin call, which changes nothing.
    let (status, _, body) = collector
        .call(Method::GET, "/api/v1/hosts", Some(READ_TOKEN))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["hosts"][0]["id"], id);
    let (status, challenge, body) = collector
        .call(Method::DELETE, &host, Some(READ_TOKEN))
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        challenge
            .unwrap()
            .contains("error=\"insufficient_scope\", scope=\"admin\"")
    );
    assert_eq!(body["code"], "permission_denied");
    assert_eq!(
        body["message"],
        "token `grafana` has scope `read`; this call needs `admin`"
    );
    let (status, _, _) = collector.call(Method::GET, &host, Some(READ_TOKEN)).await;
    assert_eq!(status, 200);

    // /metrics, /healthz and the UI page stay open by default.
    let (status, metrics) = collector.get("/metrics").await;
    assert_eq!(status, 200);
    assert!(metrics.contains("host=\"web-01\""), "{metrics}");
    assert_eq!(collector.get("/healthz").await.0, 200);
    assert_eq!(collector.get("/").await.0, 200);

    // An admin token deletes the host: gone from the API, /metrics and /healthz.
    let (status, _, body) = collector
        .call(Method::DELETE, &host, Some(ADMIN_TOKEN))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["deleted"]["id"], id);
    assert_eq!(body["deleted"]["hostname"], "web-01");
    let (status, _, body) = collector.call(Method::GET, &host, Some(ADMIN_TOKEN)).await;
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));
    let (_, _, body) = collector
        .call(Method::GET, "/api/v1/hosts", Some(READ_TOKEN))
        .await;
    assert_eq!(body["hosts"], serde_json::json!([]));
    let (_, metrics) = collector.get("/metrics").await;
    assert!(!metrics.contains("host=\"web-01\""), "{metrics}");
    let (_, health) = collector.get_json("/healthz").await;
    assert_eq!(health["hosts"], 0);
    let (status, _, body) = collector
        .call(Method::DELETE, &host, Some(ADMIN_TOKEN))
        .await;
    assert_eq!(
        (status, body["message"].as_str()),
        (404, Some(format!("no host with id `{id}`").as_str()))
    );

    // Every refusal above is counted by reason.
    let rejected = |reason: &str| {
        sample(
            &metrics,
            &format!("estate_api_requests_rejected_total{{reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(
        (
            rejected("missing"),
            rejected("invalid"),
            rejected("forbidden")
        ),
        (Some(2.0), Some(1.0), Some(1.0))
    );

    // The agent still runs: its next report brings the host back.
    client.report(report(2, true)).await.unwrap();
    let (status, _, _) = collector.call(Method::GET, &host, Some(READ_TOKEN)).await;
    assert_eq!(status, 200);
    collector.stop().await;
}

#[tokio::test]
async fn metrics_and_healthz_need_a_read_token_when_protected() {
    use reqwest::Method;
    let collector = Collector::start_with(tokens(true, true)).await;
    for path in ["/metrics", "/healthz"] {
        let (status, challenge, body) = collector.call(Method::GET, path, None).await;
        assert_eq!(status, 401, "{path}: {body}");
        assert!(challenge.unwrap().starts_with("Bearer"));
        for token in [READ_TOKEN, ADMIN_TOKEN] {
            let (status, _, body) = collector.call(Method::GET, path, Some(token)).await;
            assert_eq!(status, 200, "{path}: {body}");
        }
    }
    let (_, _, metrics) = collector
        .call(Method::GET, "/metrics", Some(READ_TOKEN))
        .await;
    let metrics = metrics.as_str().unwrap();
    assert_eq!(
        sample(
            metrics,
            "estate_api_requests_rejected_total{reason=\"missing\"}"
        ),
        Some(2.0)
    );
    // The page holds no data: a browser loads it, then asks for a token.
    let (status, page) = collector.get("/").await;
    assert_eq!(status, 200);
    assert!(page.contains("sessionStorage"));
    collector.stop().await;
}

#[tokio::test]
async fn without_tokens_reads_are_open_and_deleting_is_refused() {
    use reqwest::Method;
    let collector = Collector::start().await;
    let mut client = collector.client().await;
    client.report(report(1, true)).await.unwrap();
    let host = "/api/v1/hosts/7f2c1d9e-0000-4000-8000-000000000001";
    let (status, _, _) = collector.call(Method::GET, host, None).await;
    assert_eq!(status, 200);
    for token in [None, Some(ADMIN_TOKEN)] {
        let (status, _, body) = collector.call(Method::DELETE, host, token).await;
        assert_eq!(status, 403, "{body}");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("the collector has none"),
            "{body}"
        );
    }
    let (status, _, _) = collector.call(Method::GET, host, None).await;
    assert_eq!(status, 200, "still there");
    collector.stop().await;
}
