//! The `tls` check: does a server complete a TLS handshake with a certificate that is trusted,
//! names it, and does not expire soon.
//!
//! ```toml
//! [[checks]]
//! name = "web-cert"
//! kind = "tls"
//! host = "www.example.org"
//! port = 443                          # or: address = "www.example.org:443"
//! server_name = "www.example.org"     # SNI and the name the certificate must carry; default: host
//! tls_verify = true                   # false: connect anyway, only report the certificate
//! ca_file = "/etc/estate/corp-ca.pem" # default: the system's trusted roots
//! cert_min_days = 14                  # fail when the certificate expires sooner
//! min_version = "1.2"                 # or "1.3": fail when the server cannot speak it
//! ```
//!
//! One result, target `host:port`. The handshake and its judgement are
//! [`certificate::handshake`](super::certificate::handshake)'s; this module connects and
//! reports.
//!
//! # Measurements (names are a contract with the collector)
//!
//! `latency_seconds` (TCP connect plus handshake), `cert_not_after_unix`, `cert_days_left`
//! (whole days, negative once expired), `chain_length`, `tls_version` (text `TLSv1.3`, value
//! 1.3 or 1.2). The certificate's are reported whenever the server showed one, also when it is
//! rejected.

use super::certificate::{self, TlsPolicy, TlsVersion};
use super::tcp::{TcpCheck, TcpCheckConfig};
use super::{Outcome, TargetResult, measurement};
use rustls_pki_types::ServerName;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// The kind's name in `kind = "tls"`.
pub const KIND: &str = "tls";

/// The `tls` check's own fields: the server as `host` and `port` or `address`, then the TLS
/// policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsCheckConfig {
    /// Host name or IP address to connect to.
    pub host: Option<String>,
    /// TCP port to connect to, with `host`.
    pub port: Option<u16>,
    /// `host:port` in one string (`[2001:db8::1]:443` for IPv6), instead of `host` and `port`.
    pub address: Option<String>,
    /// The name sent as SNI and required in the certificate. Default: the host.
    pub server_name: Option<String>,
    /// Verify the certificate (chain to a trusted root, name, dates). `false` connects anyway and
    /// only reports the certificate (`cert_min_days` still applies).
    #[serde(default = "certificate::default_tls_verify")]
    pub tls_verify: bool,
    /// PEM file of the CA certificates to trust, instead of the system's trusted roots.
    pub ca_file: Option<PathBuf>,
    /// Fail when the server's certificate expires in fewer days than this.
    #[serde(default = "certificate::default_cert_min_days")]
    pub cert_min_days: u32,
    /// The lowest TLS version to accept: `"1.2"` (the default) or `"1.3"`.
    #[serde(default)]
    pub min_version: TlsVersion,
}

impl TlsCheckConfig {
    /// Checks the address (as the `tcp` kind does) and the server name. Pure: `ca_file` is
    /// read when the probe runs.
    pub fn validate(&self) -> Result<TlsCheck, String> {
        let server = TcpCheckConfig {
            host: self.host.clone(),
            port: self.port,
            address: self.address.clone(),
        }
        .validate()?;
        let server_name = match &self.server_name {
            Some(name) => name.clone(),
            None => server.host().to_owned(),
        };
        if ServerName::try_from(server_name.as_str()).is_err() {
            return Err(format!(
                "server_name `{server_name}` is neither a DNS name nor an IP address"
            ));
        }
        Ok(TlsCheck {
            server,
            server_name,
            policy: TlsPolicy {
                verify: self.tls_verify,
                ca_file: self.ca_file.clone(),
                cert_min_days: self.cert_min_days,
                min_version: self.min_version,
            },
        })
    }
}

/// A ready `tls` check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsCheck {
    server: TcpCheck,
    server_name: String,
    policy: TlsPolicy,
}

impl TlsCheck {
    /// `host:port`, with brackets around an IPv6 address.
    pub fn target(&self) -> String {
        self.server.target()
    }

    /// Connects and shakes hands within nine tenths of `timeout`, so that a slow step is named
    /// before the runner's own timeout cuts everything short.
    pub async fn probe(&self, timeout: Duration) -> Vec<TargetResult> {
        let target = self.target();
        let budget = timeout.mul_f64(0.9);
        let deadline = tokio::time::Instant::now() + budget;
        let started = Instant::now();
        let fail = |reason: String, mut measurements: Vec<_>| {
            measurements.push(measurement(
                "latency_seconds",
                started.elapsed().as_secs_f64(),
            ));
            vec![TargetResult {
                target: target.clone(),
                outcome: Outcome::Fail {
                    reason: format!("`{target}`: {reason}"),
                },
                measurements,
            }]
        };
        let connected =
            tokio::time::timeout_at(deadline, connect(self.server.host(), self.server.port()))
                .await;
        let stream = match connected {
            Ok(Ok(stream)) => stream,
            Ok(Err(reason)) => return fail(reason, Vec::new()),
            Err(_elapsed) => {
                let within = humantime::format_duration(budget);
                return fail(format!("no TCP connection within {within}"), Vec::new());
            }
        };
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        match certificate::handshake(stream, &self.server_name, &self.policy, remaining).await {
            Ok((_stream, report)) => {
                let mut measurements = vec![measurement(
                    "latency_seconds",
                    started.elapsed().as_secs_f64(),
                )];
                measurements.extend(report.measurements());
                vec![TargetResult {
                    target,
                    outcome: Outcome::Pass,
                    measurements,
                }]
            }
            Err(failure) => fail(failure.reason.clone(), failure.measurements()),
        }
    }
}

/// Resolves `host` and connects to its addresses in turn until one accepts; the error names
/// every address tried. Shared with the `http` kind.
pub(crate) async fn connect(host: &str, port: u16) -> Result<TcpStream, String> {
    let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|error| format!("cannot resolve `{host}`: {error}"))?
        .collect();
    if addresses.is_empty() {
        return Err(format!("`{host}` resolved to no address"));
    }
    let mut failures = Vec::new();
    for address in addresses {
        match TcpStream::connect(address).await {
            Ok(stream) => return Ok(stream),
            Err(error) => failures.push(format!("connection to `{address}` failed: {error}")),
        }
    }
    Err(failures.join("; "))
}

/// In-process TLS servers for the tests of `tls` and `http`.
#[cfg(test)]
pub(crate) mod test_server {
    use std::net::SocketAddr;
    use std::sync::Arc;
    use tokio::net::{TcpListener, TcpStream};
    use tokio::task::JoinSet;
    use tokio_rustls::TlsAcceptor;

    /// A running server; its tasks end when it is dropped.
    #[derive(Debug)]
    pub struct Running {
        pub address: SocketAddr,
        _tasks: JoinSet<()>,
    }

    /// Accepts connections on 127.0.0.1 and hands each (after the TLS handshake, when `tls`
    /// is set) to `serve`.
    pub async fn start<F, Fut>(tls: Option<Arc<rustls::ServerConfig>>, serve: F) -> Running
    where
        F: Fn(Box<dyn ServerStream>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let mut tasks = JoinSet::new();
        let serve = Arc::new(serve);
        tasks.spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let tls = tls.clone();
                let serve = Arc::clone(&serve);
                connections.spawn(async move {
                    let stream: Box<dyn ServerStream> = match tls {
                        Some(config) => match TlsAcceptor::from(config).accept(stream).await {
                            Ok(stream) => Box::new(stream),
                            Err(_) => return,
                        },
                        None => Box::new(stream),
                    };
                    serve(stream).await;
                });
            }
        });
        Running {
            address,
            _tasks: tasks,
        }
    }

    /// A server stream, plain or TLS.
    pub trait ServerStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
    impl ServerStream for TcpStream {}
    impl ServerStream for tokio_rustls::server::TlsStream<TcpStream> {}
}

#[cfg(test)]
mod tests {
    use super::test_server::{Running, start};
    use super::*;
    use crate::checks::CheckConfig;
    use crate::checks::certificate::test_pki::{TestPki, VALID, Validity};
    use crate::checks::test_support::{documented_example, parse_entry};
    use std::io::Write;
    use std::sync::Arc;
    use tokio::io::AsyncReadExt;

    fn config(toml_text: &str) -> Result<TlsCheck, String> {
        let CheckConfig::Tls(config) = parse_entry("tls", toml_text)? else {
            unreachable!("a tls entry parses as a tls config")
        };
        config.validate()
    }

    #[test]
    fn the_documented_example_validates() {
        let example = documented_example(include_str!("tls.rs"));
        let check = config(&example).unwrap();
        assert_eq!(check.target(), "www.example.org:443");
        assert_eq!(check.server_name, "www.example.org");
        assert_eq!(check.policy.min_version, TlsVersion::Tls12);
    }

    #[test]
    fn validation_errors_name_the_field_and_value() {
        let cases = [
            ("host = \"db\"", "host `db` needs a `port`"),
            (
                "address = \"db:443\"\nserver_name = \"not a name\"",
                "server_name `not a name` is neither a DNS name nor an IP address",
            ),
            (
                "address = \"db:443\"\nmin_version = \"1.1\"",
                "unknown variant `1.1`, expected `1.2` or `1.3`",
            ),
            (
                "address = \"db:443\"\nverify = false",
                "unknown field `verify`",
            ),
        ];
        for (text, expected) in cases {
            let error = config(text).unwrap_err();
            assert!(error.starts_with(expected), "{text}: {error}");
        }
        let check = config("host = \"::1\"\nport = 443").unwrap();
        assert_eq!(check.target(), "[::1]:443");
        assert_eq!(check.server_name, "::1");
        assert_eq!(check.policy, TlsPolicy::default());
    }

    /// A TLS server that reads until the client goes away.
    async fn server(config: Arc<rustls::ServerConfig>) -> Running {
        start(Some(config), |mut stream| async move {
            let mut buffer = [0u8; 64];
            while matches!(stream.read(&mut buffer).await, Ok(n) if n > 0) {}
        })
        .await
    }

    fn check(server: &Running, ca: Option<&tempfile::NamedTempFile>, extra: &str) -> TlsCheck {
        let ca = ca
            .map(|file| format!("ca_file = {:?}\n", file.path().display().to_string()))
            .unwrap_or_default();
        config(&format!(
            "address = \"{}\"\nserver_name = \"app.test\"\n{ca}{extra}",
            server.address
        ))
        .unwrap()
    }

    fn ca_file(pki: &TestPki) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(pki.ca_pem.as_bytes()).unwrap();
        file
    }

    fn reason(result: &TargetResult) -> &str {
        match &result.outcome {
            Outcome::Fail { reason } => reason,
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    fn value(result: &TargetResult, name: &str) -> Option<f64> {
        result
            .measurements
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.value)
    }

    #[tokio::test]
    async fn a_trusted_certificate_passes_with_every_measurement() {
        let pki = TestPki::new();
        let ca = ca_file(&pki);
        let server = server(pki.server(&["app.test"], VALID, false)).await;
        let results = check(&server, Some(&ca), "")
            .probe(Duration::from_secs(5))
            .await;
        assert_eq!(results.len(), 1);
        let result = &results[0];
        assert_eq!(result.outcome, Outcome::Pass, "{result:?}");
        assert_eq!(result.target, server.address.to_string());
        let names: Vec<_> = result
            .measurements
            .iter()
            .map(|m| m.name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "latency_seconds",
                "cert_not_after_unix",
                "cert_days_left",
                "chain_length",
                "tls_version"
            ]
        );
        assert_eq!(value(result, "chain_length"), Some(2.0));
        assert_eq!(value(result, "tls_version"), Some(1.3));
        assert!(value(result, "cert_days_left").unwrap() >= 363.0);
    }

    /// Each bad certificate fails with a reason naming the target and the problem, and its
    /// dates are still reported.
    #[tokio::test]
    async fn bad_certificates_say_what_is_wrong() {
        let pki = TestPki::new();
        let ca = ca_file(&pki);
        let expired = Validity {
            from_days: -30,
            until_days: -2,
        };
        let not_yet = Validity {
            from_days: 2,
            until_days: 30,
        };
        let soon = Validity {
            from_days: -30,
            until_days: 5,
        };
        let cases = [
            (
                pki.server(&["app.test"], expired, false),
                "certificate expired on `",
            ),
            (
                pki.server(&["app.test"], not_yet, false),
                "certificate is not valid before `",
            ),
            (
                pki.server(&["other.test"], VALID, false),
                "certificate is not valid for `app.test` (it names `other.test`)",
            ),
            (
                pki.server(&["app.test"], VALID, true),
                "certificate is self-signed (`CN=app.test`) and not trusted",
            ),
            (
                pki.server(&["app.test"], soon, false),
                "less than `cert_min_days` 14",
            ),
        ];
        for (config, expected) in cases {
            let server = server(config).await;
            let result = &check(&server, Some(&ca), "")
                .probe(Duration::from_secs(5))
                .await[0];
            let reason = reason(result);
            assert!(
                reason.starts_with(&format!("`{}`: ", server.address)),
                "{reason}"
            );
            assert!(reason.contains(expected), "{expected}: {reason}");
            assert!(value(result, "cert_days_left").is_some(), "{result:?}");
        }
        // Against the system roots (the default), the test CA is unknown.
        let server = server(pki.server(&["app.test"], VALID, false)).await;
        let result = &check(&server, None, "").probe(Duration::from_secs(5)).await[0];
        assert!(
            reason(result).contains(
                "certificate is issued by `CN=estate test CA`, which is not a trusted CA"
            ),
            "{result:?}"
        );
        // Without verification the same server passes and is measured.
        let result = &check(&server, None, "tls_verify = false")
            .probe(Duration::from_secs(5))
            .await[0];
        assert_eq!(result.outcome, Outcome::Pass, "{result:?}");
    }

    #[tokio::test]
    async fn a_server_without_the_minimum_version_fails_naming_it() {
        let pki = TestPki::new();
        let ca = ca_file(&pki);
        let tls12_only =
            pki.server_with_versions(&["app.test"], VALID, false, &[&rustls::version::TLS12]);
        let server = server(tls12_only).await;
        let result = &check(&server, Some(&ca), "")
            .probe(Duration::from_secs(5))
            .await[0];
        assert_eq!(result.outcome, Outcome::Pass, "{result:?}");
        assert_eq!(value(result, "tls_version"), Some(1.2));
        let result = &check(&server, Some(&ca), "min_version = \"1.3\"")
            .probe(Duration::from_secs(5))
            .await[0];
        let reason = reason(result);
        assert!(
            reason.starts_with(&format!("`{}`: TLS handshake failed: ", server.address)),
            "{reason}"
        );
        assert!(reason.contains("`min_version` `1.3`"), "{reason}");
    }

    #[tokio::test]
    async fn peers_that_do_not_speak_tls_fail_with_clear_reasons() {
        // Answers with plain text, as an HTTP server on the wrong port would.
        let garbage = start(None, |mut stream| async move {
            use tokio::io::AsyncWriteExt;
            let _ = stream.write_all(b"HTTP/1.0 400 Bad Request\r\n\r\n").await;
        })
        .await;
        let result = &check(&garbage, None, "")
            .probe(Duration::from_secs(5))
            .await[0];
        assert!(
            reason(result).starts_with(&format!("`{}`: TLS handshake failed: ", garbage.address)),
            "{result:?}"
        );
        // Accepts and never answers: the handshake times out, named.
        let silent = start(None, |stream| async move {
            let _stream = stream;
            std::future::pending::<()>().await;
        })
        .await;
        let result = &check(&silent, None, "")
            .probe(Duration::from_millis(300))
            .await[0];
        assert!(
            reason(result).starts_with(&format!("`{}`: no TLS handshake within ", silent.address)),
            "{result:?}"
        );
        // Nothing listens.
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let result = &config(&format!("address = \"127.0.0.1:{port}\""))
            .unwrap()
            .probe(Duration::from_secs(5))
            .await[0];
        assert!(
            reason(result).starts_with(&format!(
                "`127.0.0.1:{port}`: connection to `127.0.0.1:{port}` failed: "
            )),
            "{result:?}"
        );
    }
}
