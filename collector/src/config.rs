//! Collector configuration: an optional TOML file, overridden by command-line flags, validated
//! into a ready [`CollectorConfig`].

use anyhow::Context as _;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The collector's settings, ready to run.
#[derive(Debug, Clone)]
pub struct CollectorConfig {
    pub grpc_listen: SocketAddr,
    pub http_listen: SocketAddr,
    pub database: PathBuf,
    pub stale_after: Duration,
    pub expire_after: Duration,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        CollectorConfig {
            grpc_listen: default_grpc_listen(),
            http_listen: default_http_listen(),
            database: default_database(),
            stale_after: DEFAULT_STALE_AFTER,
            expire_after: DEFAULT_EXPIRE_AFTER,
        }
    }
}

/// Loopback by default: a first try on one machine exposes nothing to the network.
pub fn default_grpc_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9750))
}

pub fn default_http_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9751))
}

/// A database file in the working directory.
pub fn default_database() -> PathBuf {
    PathBuf::from("estate.db")
}

/// Three missed heartbeats at the agent's default 60 s interval, plus slack.
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(300);
/// A host silent for a week is gone from `/metrics` (it stays in the API).
pub const DEFAULT_EXPIRE_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);

/// The configuration file, as written by the user. Every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Address for agents' gRPC reports, e.g. `0.0.0.0:9750`.
    pub grpc_listen: Option<String>,
    /// Address for `/metrics`, `/healthz`, the API and the UI, e.g. `0.0.0.0:9751`.
    pub http_listen: Option<String>,
    /// SQLite database file.
    pub database: Option<PathBuf>,
    /// A host not heard from for this long is reported down (`estate_host_up 0`), e.g. `5m`.
    pub stale_after: Option<String>,
    /// A host not heard from for this long disappears from `/metrics`, e.g. `7d`.
    pub expire_after: Option<String>,
}

impl ConfigFile {
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("failed to read config `{}`", path.display()))?;
        Self::parse(&text).with_context(|| format!("invalid config `{}`", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Self> {
        // toml's message carries the line, column and, for unknown keys, the allowed names.
        toml::from_str(text).map_err(|error| anyhow::anyhow!("{}", error.to_string().trim_end()))
    }

    /// Validates into a ready config; `self` holds the file merged with the flags.
    pub fn into_config(self) -> anyhow::Result<CollectorConfig> {
        let defaults = CollectorConfig::default();
        let config = CollectorConfig {
            grpc_listen: parse_address("grpc_listen", self.grpc_listen, defaults.grpc_listen)?,
            http_listen: parse_address("http_listen", self.http_listen, defaults.http_listen)?,
            database: self.database.unwrap_or(defaults.database),
            stale_after: parse_duration("stale_after", self.stale_after, defaults.stale_after)?,
            expire_after: parse_duration("expire_after", self.expire_after, defaults.expire_after)?,
        };
        if config.stale_after < Duration::from_secs(1) {
            anyhow::bail!(
                "`stale_after` `{}` must be at least 1s",
                humantime::format_duration(config.stale_after)
            );
        }
        if config.expire_after <= config.stale_after {
            anyhow::bail!(
                "`expire_after` `{}` must be longer than `stale_after` `{}`",
                humantime::format_duration(config.expire_after),
                humantime::format_duration(config.stale_after)
            );
        }
        Ok(config)
    }
}

fn parse_address(
    key: &str,
    text: Option<String>,
    default: SocketAddr,
) -> anyhow::Result<SocketAddr> {
    match text {
        None => Ok(default),
        Some(text) => text.parse().map_err(|_| {
            anyhow::anyhow!("`{key}` `{text}` is not an address such as `127.0.0.1:9750`")
        }),
    }
}

fn parse_duration(key: &str, text: Option<String>, default: Duration) -> anyhow::Result<Duration> {
    match text {
        None => Ok(default),
        Some(text) => humantime::parse_duration(&text).map_err(|error| {
            anyhow::anyhow!("`{key}` `{text}` is not a duration such as `5m` or `7d`: {error}")
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expected: &str) {
        let result = ConfigFile::parse(text).and_then(ConfigFile::into_config);
        let got = match result {
            Ok(config) => format!("ok {config:?}"),
            Err(error) => format!("{error:#}"),
        };
        assert!(got.contains(expected), "expected `{expected}` in:\n{got}");
    }

    #[test]
    fn defaults_are_loopback_and_a_local_file() {
        check(
            "",
            "grpc_listen: 127.0.0.1:9750, http_listen: 127.0.0.1:9751, database: \"estate.db\"",
        );
    }

    #[test]
    fn errors_name_the_key_the_value_and_the_line() {
        check(
            "grpc_listen = \"127.0.0.1:1\"\ndatabse = \"x.db\"\n",
            "line 2, column 1",
        );
        check(
            "databse = \"x.db\"\n",
            "unknown field `databse`, expected one of `grpc_listen`, `http_listen`, `database`, `stale_after`, `expire_after`",
        );
        check(
            "http_listen = \"localhost\"\n",
            "`http_listen` `localhost` is not an address such as `127.0.0.1:9750`",
        );
        check(
            "stale_after = \"soon\"\n",
            "`stale_after` `soon` is not a duration such as `5m` or `7d`",
        );
        check(
            "stale_after = \"1h\"\nexpire_after = \"30m\"\n",
            "`expire_after` `30m` must be longer than `stale_after` `1h`",
        );
    }

    #[test]
    fn the_example_config_in_deploy_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/collector.example.toml");
        ConfigFile::read(&path)
            .and_then(ConfigFile::into_config)
            .unwrap();
    }
}
