//! The `tcp` check: can this host open a TCP connection to a host and port, and how long does the
//! handshake take.
//!
//! ```toml
//! [[checks]]
//! name = "db"
//! kind = "tcp"
//! host = "db.example.org"
//! port = 5432          # or: address = "db.example.org:5432"
//! ```

use super::{Outcome, TargetResult, measurement};
use serde::Deserialize;
use std::time::Instant;

/// The kind's name in `kind = "tcp"`.
pub const KIND: &str = "tcp";

/// The `tcp` check's own fields: either `host` and `port`, or `address`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpCheckConfig {
    /// Host name or IP address to connect to.
    pub host: Option<String>,
    /// TCP port to connect to, with `host`.
    pub port: Option<u16>,
    /// `host:port` in one string (`[2001:db8::1]:443` for IPv6), instead of `host` and `port`.
    pub address: Option<String>,
}

impl TcpCheckConfig {
    /// Checks that exactly one way of naming the target is used and that it is well formed.
    pub fn validate(&self) -> Result<TcpCheck, String> {
        let (host, port) = match (&self.host, self.port, &self.address) {
            (None, None, Some(address)) => split_address(address)?,
            (Some(host), Some(port), None) => (host.clone(), port),
            (None, None, None) => {
                return Err("needs `host` and `port`, or `address`".to_owned());
            }
            (_, _, Some(address)) => {
                return Err(format!(
                    "`address` `{address}` and `host`/`port` are exclusive, use one or the other"
                ));
            }
            (Some(host), None, None) => return Err(format!("host `{host}` needs a `port`")),
            (None, Some(port), None) => return Err(format!("port `{port}` needs a `host`")),
        };
        if host.is_empty() {
            return Err("`host` is empty".to_owned());
        }
        if host.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "host `{host}` contains spaces or control characters"
            ));
        }
        if port == 0 {
            return Err("port `0` is not a port to connect to".to_owned());
        }
        Ok(TcpCheck { host, port })
    }
}

/// Splits `host:port` or `[v6]:port`.
fn split_address(address: &str) -> Result<(String, u16), String> {
    let malformed = || format!("address `{address}` is not `host:port` (IPv6: `[addr]:port`)");
    let (host, port) = if let Some(rest) = address.strip_prefix('[') {
        let (host, port) = rest.split_once("]:").ok_or_else(malformed)?;
        (host, port)
    } else {
        let (host, port) = address.rsplit_once(':').ok_or_else(malformed)?;
        if host.contains(':') {
            return Err(malformed());
        }
        (host, port)
    };
    let port = port
        .parse::<u16>()
        .map_err(|_| format!("address `{address}` has an invalid port `{port}`"))?;
    Ok((host.to_owned(), port))
}

/// A ready `tcp` check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpCheck {
    host: String,
    port: u16,
}

impl TcpCheck {
    /// The host name or IP address, without brackets.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `host:port`, with brackets around an IPv6 address.
    pub fn target(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Resolves the host and connects to its addresses in turn until one accepts. Passes with
    /// `connect_seconds` (the handshake that succeeded); fails naming every address tried and
    /// the OS error it gave. The runner applies the timeout.
    pub async fn probe(&self) -> Vec<TargetResult> {
        let target = self.target();
        let fail = |reason: String| {
            vec![TargetResult {
                target: target.clone(),
                outcome: Outcome::Fail { reason },
                measurements: Vec::new(),
            }]
        };
        let addresses = match tokio::net::lookup_host((self.host.as_str(), self.port)).await {
            Ok(addresses) => addresses.collect::<Vec<_>>(),
            Err(error) => return fail(format!("cannot resolve `{}`: {error}", self.host)),
        };
        if addresses.is_empty() {
            return fail(format!("`{}` resolved to no address", self.host));
        }
        let mut failures = Vec::new();
        for address in addresses {
            let clock = Instant::now();
            match tokio::net::TcpStream::connect(address).await {
                Ok(_stream) => {
                    return vec![TargetResult {
                        target,
                        outcome: Outcome::Pass,
                        measurements: vec![measurement(
                            "connect_seconds",
                            clock.elapsed().as_secs_f64(),
                        )],
                    }];
                }
                Err(error) => failures.push(format!("connection to `{address}` failed: {error}")),
            }
        }
        fail(failures.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::CheckConfig;
    use crate::checks::test_support::parse_entry;

    fn config(toml_text: &str) -> Result<TcpCheck, String> {
        let CheckConfig::Tcp(config) = parse_entry("tcp", toml_text)? else {
            unreachable!("a tcp entry parses as a tcp config")
        };
        config.validate()
    }

    fn check(toml_text: &str, expected: Result<&str, &str>) {
        let actual = config(toml_text).map(|check| check.target());
        let expected = expected.map(str::to_owned).map_err(str::to_owned);
        assert_eq!(actual, expected, "config: {toml_text}");
    }

    #[test]
    fn target_forms_and_errors() {
        check("host = \"db\"\nport = 5432", Ok("db:5432"));
        check("address = \"db:5432\"", Ok("db:5432"));
        check("address = \"[2001:db8::1]:443\"", Ok("[2001:db8::1]:443"));
        check("host = \"::1\"\nport = 22", Ok("[::1]:22"));
        check("", Err("needs `host` and `port`, or `address`"));
        check("host = \"db\"", Err("host `db` needs a `port`"));
        check("port = 1", Err("port `1` needs a `host`"));
        check(
            "address = \"db:1\"\nhost = \"db\"",
            Err("`address` `db:1` and `host`/`port` are exclusive, use one or the other"),
        );
        check(
            "address = \"db\"",
            Err("address `db` is not `host:port` (IPv6: `[addr]:port`)"),
        );
        check(
            "address = \"2001:db8::1:443\"",
            Err("address `2001:db8::1:443` is not `host:port` (IPv6: `[addr]:port`)"),
        );
        check(
            "address = \"db:http\"",
            Err("address `db:http` has an invalid port `http`"),
        );
        check(
            "host = \"db\"\nport = 0",
            Err("port `0` is not a port to connect to"),
        );
        check("address = \":80\"", Err("`host` is empty"));
        check(
            "host = \"db\"\nport = 1\nports = 2",
            Err("unknown field `ports`, expected one of `host`, `port`, `address`"),
        );
    }

    #[tokio::test]
    async fn passes_against_a_listener_and_measures_the_handshake() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let check = TcpCheck {
            host: "127.0.0.1".into(),
            port,
        };
        let results = check.probe().await;
        assert_eq!(results.len(), 1);
        assert_eq!(results[0].target, format!("127.0.0.1:{port}"));
        assert_eq!(results[0].outcome, Outcome::Pass);
        let names: Vec<_> = results[0].measurements.iter().map(|m| &m.name).collect();
        assert_eq!(names, ["connect_seconds"]);
    }

    #[tokio::test]
    async fn fails_naming_the_address_and_the_os_error_when_refused() {
        // Bind then drop to get a port on which nothing listens.
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let check = TcpCheck {
            host: "127.0.0.1".into(),
            port,
        };
        let results = check.probe().await;
        assert_eq!(results.len(), 1);
        let Outcome::Fail { reason } = &results[0].outcome else {
            panic!("expected a failure, got {:?}", results[0].outcome);
        };
        let prefix = format!("connection to `127.0.0.1:{port}` failed: ");
        assert!(reason.starts_with(&prefix), "reason: {reason}");
        assert!(
            reason.len() > prefix.len(),
            "reason without OS error: {reason}"
        );
    }
}
