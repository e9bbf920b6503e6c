//! The `service` check: is each named service in the expected state. Linux: systemd units, read
//! with `systemctl show`. Windows: services of the service control manager, read with
//! `sc.exe query` (its state codes are numbers, the same in every display language).
//!
//! ```toml
//! [[checks]]
//! name = "dc-services"
//! kind = "service"
//! # systemd units on Linux (`ssh` or `ssh.service`); service names on Windows (`DNS`, `NTDS`).
//! services = ["DNS", "NTDS", "Netlogon", "W32Time"]
//! expect = "running"   # or "stopped", "absent"
//! ```

use super::{Outcome, TargetResult};
use serde::Deserialize;

/// The kind's name in `kind = "service"`.
pub const KIND: &str = "service";

/// More names than this in one check is a config mistake, not an estate.
const MAX_SERVICES: usize = 64;
/// Longer than any systemd unit name (255) or Windows service name (256).
const MAX_NAME_LENGTH: usize = 256;

/// The `service` check's own fields.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceCheckConfig {
    /// The services: systemd unit names on Linux, service names (not display names) on Windows.
    pub services: Vec<String>,
    /// The state each must be in: `running` (default), `stopped` or `absent`.
    pub expect: Option<String>,
}

/// The state a service is expected to be in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    Running,
    Stopped,
    Absent,
}

impl Expected {
    fn name(self) -> &'static str {
        match self {
            Expected::Running => "running",
            Expected::Stopped => "stopped",
            Expected::Absent => "absent",
        }
    }
}

impl ServiceCheckConfig {
    /// Checks the names (never passed to a shell, but an argument starting with `-` would be
    /// an option to `systemctl`) and the expectation.
    pub fn validate(&self) -> Result<ServiceCheck, String> {
        if self.services.is_empty() {
            return Err("`services` is empty: name at least one service".to_owned());
        }
        if self.services.len() > MAX_SERVICES {
            return Err(format!(
                "`services` names {} services, at most {MAX_SERVICES} per check",
                self.services.len()
            ));
        }
        for name in &self.services {
            if name.is_empty() || name.len() > MAX_NAME_LENGTH {
                return Err(format!(
                    "service name `{name}` must be 1 to {MAX_NAME_LENGTH} characters"
                ));
            }
            if name.starts_with('-') || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(format!(
                    "service name `{name}` must not start with `-` or contain spaces or control \
                     characters"
                ));
            }
        }
        let expect = match self.expect.as_deref() {
            None | Some("running") => Expected::Running,
            Some("stopped") => Expected::Stopped,
            Some("absent") => Expected::Absent,
            Some(other) => {
                return Err(format!(
                    "expect `{other}` is not one of `running`, `stopped`, `absent`"
                ));
            }
        };
        Ok(ServiceCheck {
            services: self.services.clone(),
            expect,
        })
    }
}

/// A ready `service` check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceCheck {
    services: Vec<String>,
    expect: Expected,
}

/// A service's state as read from its manager, reduced to what the expectation compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceState {
    /// Running (systemd `active`, Windows `RUNNING`), with the manager's detail.
    Running(String),
    /// Installed and not running (systemd `inactive`/`failed`, Windows `STOPPED`).
    Stopped(String),
    /// Not installed (systemd `not-found`, Windows error 1060).
    Absent,
    /// Starting, stopping, paused: neither running nor stopped.
    Other(String),
}

impl ServiceCheck {
    /// The services, comma-separated.
    pub fn target(&self) -> String {
        self.services.join(",")
    }

    /// Reads every service's state and compares it with the expectation, one result per
    /// service. The runner applies the timeout.
    pub async fn probe(&self) -> Vec<TargetResult> {
        match read_states(&self.services).await {
            Ok(states) => self
                .services
                .iter()
                .zip(states)
                .map(|(service, state)| judge(service, &state, self.expect))
                .collect(),
            Err(Unreadable { reason, skipped }) => self
                .services
                .iter()
                .map(|service| TargetResult {
                    target: service.clone(),
                    outcome: if skipped {
                        Outcome::Skipped {
                            reason: reason.clone(),
                        }
                    } else {
                        Outcome::Fail {
                            reason: reason.clone(),
                        }
                    },
                    measurements: Vec::new(),
                })
                .collect(),
        }
    }
}

/// Compares one service's state with the expectation.
pub fn judge(service: &str, state: &ServiceState, expect: Expected) -> TargetResult {
    let (matches, described) = match state {
        ServiceState::Running(detail) => {
            (expect == Expected::Running, format!("running ({detail})"))
        }
        ServiceState::Stopped(detail) => {
            (expect == Expected::Stopped, format!("stopped ({detail})"))
        }
        ServiceState::Absent => (expect == Expected::Absent, "not installed".to_owned()),
        ServiceState::Other(detail) => (false, detail.clone()),
    };
    TargetResult {
        target: service.to_owned(),
        outcome: if matches {
            Outcome::Pass
        } else {
            Outcome::Fail {
                reason: format!(
                    "service `{service}` is {described}, expected {}",
                    expect.name()
                ),
            }
        },
        measurements: Vec::new(),
    }
}

/// Why no state could be read: `skipped` when this host has no service manager to ask.
#[derive(Debug)]
struct Unreadable {
    reason: String,
    skipped: bool,
}

/// The states of `services`, in order.
#[cfg(not(windows))]
async fn read_states(services: &[String]) -> Result<Vec<ServiceState>, Unreadable> {
    // The directory systemd creates at boot: without it `systemctl` has nothing to ask.
    if !std::path::Path::new("/run/systemd/system").exists() {
        return Err(Unreadable {
            reason: "systemd is not running on this host (no /run/systemd/system): unit states \
                     cannot be read"
                .to_owned(),
            skipped: true,
        });
    }
    let output = tokio::process::Command::new("systemctl")
        .arg("show")
        .arg("--property=Id,LoadState,ActiveState,SubState,UnitFileState")
        .arg("--")
        .args(services)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|error| Unreadable {
            reason: format!("cannot run `systemctl show`: {error}"),
            skipped: false,
        })?;
    if !output.status.success() {
        return Err(Unreadable {
            reason: format!(
                "`systemctl show` failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
            skipped: false,
        });
    }
    systemd_states(&String::from_utf8_lossy(&output.stdout), services.len()).map_err(|reason| {
        Unreadable {
            reason,
            skipped: false,
        }
    })
}

/// The states of `services`, in order.
#[cfg(windows)]
async fn read_states(services: &[String]) -> Result<Vec<ServiceState>, Unreadable> {
    let mut states = Vec::with_capacity(services.len());
    for service in services {
        let output = tokio::process::Command::new("sc.exe")
            .arg("query")
            .arg(service)
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|error| Unreadable {
                reason: format!("cannot run `sc.exe query {service}`: {error}"),
                skipped: false,
            })?;
        let text = String::from_utf8_lossy(&output.stdout);
        states.push(sc_query_state(service, &text).map_err(|reason| Unreadable {
            reason,
            skipped: false,
        })?);
    }
    Ok(states)
}

/// Maps `systemctl show` output (one block per unit, in the order asked) to states.
pub fn systemd_states(text: &str, expected_units: usize) -> Result<Vec<ServiceState>, String> {
    let units = estate_service::systemd::parse_show(text)?;
    if units.len() != expected_units {
        return Err(format!(
            "`systemctl show` described {} units for the {expected_units} asked",
            units.len()
        ));
    }
    Ok(units
        .into_iter()
        .map(|unit| {
            let detail = format!("{}/{}", unit.active_state, unit.sub_state);
            match (unit.load_state.as_str(), unit.active_state.as_str()) {
                ("not-found", _) => ServiceState::Absent,
                (_, "active" | "reloading") => ServiceState::Running(detail),
                (_, "inactive" | "failed") => ServiceState::Stopped(detail),
                _ => ServiceState::Other(format!("in state {detail}")),
            }
        })
        .collect())
}

/// Reads the state of one service from `sc.exe query NAME` output: the `STATE : 4 RUNNING`
/// line's number, or error 1060 (`ERROR_SERVICE_DOES_NOT_EXIST`) for a service not installed.
pub fn sc_query_state(service: &str, text: &str) -> Result<ServiceState, String> {
    if let Some(code) = failure_code(text) {
        return match code {
            1060 => Ok(ServiceState::Absent),
            5 => Err(format!(
                "`sc.exe query {service}`: access denied (error 5): the agent's account may not \
                 query this service"
            )),
            code => Err(format!("`sc.exe query {service}` failed with error {code}")),
        };
    }
    let state = text
        .lines()
        .find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key.trim() == "STATE").then(|| value.split_whitespace().next().map(str::to_owned))?
        })
        .ok_or_else(|| format!("`sc.exe query {service}` printed no STATE line"))?;
    let code: u32 = state
        .parse()
        .map_err(|_| format!("`sc.exe query {service}`: STATE `{state}` is not a number"))?;
    Ok(match code {
        1 => ServiceState::Stopped("STOPPED".to_owned()),
        4 => ServiceState::Running("RUNNING".to_owned()),
        2 => ServiceState::Other("starting (START_PENDING)".to_owned()),
        3 => ServiceState::Other("stopping (STOP_PENDING)".to_owned()),
        5 => ServiceState::Other("resuming (CONTINUE_PENDING)".to_owned()),
        6 => ServiceState::Other("pausing (PAUSE_PENDING)".to_owned()),
        7 => ServiceState::Other("paused (PAUSED)".to_owned()),
        other => ServiceState::Other(format!("in unknown state {other}")),
    })
}

/// The error number of an `[SC] ... FAILED 1060:` line.
fn failure_code(text: &str) -> Option<u32> {
    let line = text.lines().find(|line| line.contains("FAILED"))?;
    let after = line.split("FAILED").nth(1)?;
    after
        .trim()
        .trim_end_matches(':')
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(toml_text: &str) -> Result<ServiceCheck, String> {
        let config: ServiceCheckConfig = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        config.validate()
    }

    #[test]
    fn bad_configs_are_refused_naming_the_value() {
        assert_eq!(
            check("services = []").unwrap_err(),
            "`services` is empty: name at least one service"
        );
        assert_eq!(
            check("services = [\"ssh\"]\nexpect = \"up\"").unwrap_err(),
            "expect `up` is not one of `running`, `stopped`, `absent`"
        );
        assert!(
            check("services = [\"--all\"]")
                .unwrap_err()
                .contains("`--all` must not start with `-`")
        );
        assert!(
            check("services = [\"a b\"]")
                .unwrap_err()
                .contains("`a b` must not start")
        );
        assert!(check("services = [\"ssh\"]\nunit = 1").is_err());
        let ready = check("services = [\"ssh\", \"cron.service\"]").unwrap();
        assert_eq!(ready.target(), "ssh,cron.service");
        assert_eq!(ready.expect, Expected::Running);
    }

    // Recorded from `systemctl show --property=Id,LoadState,ActiveState,SubState,UnitFileState
    // -- ssh cron nosuch rescue` on a Debian 12 host.
    const SYSTEMCTL_SHOW: &str = "Id=ssh.service\nLoadState=loaded\nActiveState=active\n\
        SubState=running\nUnitFileState=enabled\n\nId=cron.service\nLoadState=loaded\n\
        ActiveState=failed\nSubState=failed\nUnitFileState=enabled\n\nId=nosuch.service\n\
        LoadState=not-found\nActiveState=inactive\nSubState=dead\nUnitFileState=\n\n\
        Id=rescue.service\nLoadState=loaded\nActiveState=activating\nSubState=start\n\
        UnitFileState=static\n";

    #[test]
    fn systemd_states_are_judged_against_the_expectation() {
        let states = systemd_states(SYSTEMCTL_SHOW, 4).unwrap();
        assert_eq!(
            states,
            [
                ServiceState::Running("active/running".to_owned()),
                ServiceState::Stopped("failed/failed".to_owned()),
                ServiceState::Absent,
                ServiceState::Other("in state activating/start".to_owned()),
            ]
        );
        assert_eq!(
            judge("ssh", &states[0], Expected::Running).outcome,
            Outcome::Pass
        );
        assert_eq!(
            judge("cron", &states[1], Expected::Running).outcome,
            Outcome::Fail {
                reason: "service `cron` is stopped (failed/failed), expected running".to_owned()
            }
        );
        assert_eq!(
            judge("nosuch", &states[2], Expected::Absent).outcome,
            Outcome::Pass
        );
        assert_eq!(
            judge("rescue", &states[3], Expected::Stopped).outcome,
            Outcome::Fail {
                reason: "service `rescue` is in state activating/start, expected stopped"
                    .to_owned()
            }
        );
        assert!(
            systemd_states(SYSTEMCTL_SHOW, 3)
                .unwrap_err()
                .contains("described 4 units for the 3 asked")
        );
    }

    #[test]
    fn windows_sc_query_output_is_read_by_its_numbers() {
        let running = "\r\nSERVICE_NAME: DNS \r\n        TYPE               : 10  WIN32_OWN_PROCESS  \r\n        STATE              : 4  RUNNING \r\n                                (STOPPABLE, PAUSABLE, ACCEPTS_SHUTDOWN)\r\n        WIN32_EXIT_CODE    : 0  (0x0)\r\n";
        assert_eq!(
            sc_query_state("DNS", running).unwrap(),
            ServiceState::Running("RUNNING".to_owned())
        );
        // Only the number is read: the words are translated in other display languages.
        let stopped = "SERVICE_NAME: W32Time\r\n        TYPE               : 20  WIN32_SHARE_PROCESS\r\n        STATE              : 1  STOPPED\r\n";
        assert_eq!(
            sc_query_state("W32Time", stopped).unwrap(),
            ServiceState::Stopped("STOPPED".to_owned())
        );
        let absent = "[SC] EnumQueryServicesStatus:OpenService FAILED 1060:\r\n\r\nThe specified service does not exist as an installed service.\r\n";
        assert_eq!(
            sc_query_state("MSExchangeTransport", absent).unwrap(),
            ServiceState::Absent
        );
        assert!(
            sc_query_state(
                "NTDS",
                "[SC] OpenService FAILED 5:\r\n\r\nAccess is denied.\r\n"
            )
            .unwrap_err()
            .contains("access denied (error 5)")
        );
        assert_eq!(
            sc_query_state("DNS", "garbage").unwrap_err(),
            "`sc.exe query DNS` printed no STATE line"
        );
        assert_eq!(
            sc_query_state("DNS", "STATE : x RUNNING").unwrap_err(),
            "`sc.exe query DNS`: STATE `x` is not a number"
        );
    }

    #[tokio::test]
    async fn without_systemd_every_service_is_skipped_with_the_reason() {
        if std::path::Path::new("/run/systemd/system").exists() || cfg!(windows) {
            return; // This host has a service manager: the probe reads real states.
        }
        let results = check("services = [\"ssh\", \"cron\"]")
            .unwrap()
            .probe()
            .await;
        assert_eq!(results.len(), 2);
        for result in results {
            assert!(
                matches!(&result.outcome, Outcome::Skipped { reason } if reason.contains("systemd is not running")),
                "{result:?}"
            );
        }
    }
}
