//! systemd: the unit written by `service install` (sandboxed, `Type=notify` with a watchdog),
//! installing and removing it (under `/` or a `--root` for packaging and tests), the systemctl
//! calls behind `start`, `stop` and `status`, and the parser of `systemctl show` output that the
//! agent's `service` check uses too.
//!
//! The reference units in `deploy/systemd/` are this module's output for the default paths; a
//! test keeps them equal, so the unit has one source of truth.

use crate::{Installation, Program, Role, ServiceNeeds};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Where `install` writes units, relative to the root.
pub const UNIT_DIRECTORY: &str = "etc/systemd/system";

/// The target whose `.wants` directory enabling links the unit into.
pub const WANTED_BY: &str = "multi-user.target";

/// The agent's watchdog period. Its main loop pings at half of it; its longest legitimate
/// stretch without a ping is a report (three sends bounded by the collector timeouts) or an
/// inventory collection, far below three minutes.
pub const AGENT_WATCHDOG: &str = "3min";

/// The collector's watchdog period; a task on its runtime pings at half of it.
pub const COLLECTOR_WATCHDOG: &str = "1min";

/// The unit's file name: `estate-agent.service`.
pub fn unit_name(program: &Program) -> String {
    format!("{}.service", program.name)
}

/// The unit file for an installation. Fails only on paths systemd cannot take (relative, not
/// UTF-8, or holding a line break).
pub fn render_unit(installation: &Installation) -> Result<String, String> {
    let Installation {
        program,
        binary,
        config,
        needs,
    } = installation;
    let mut exec = vec![unit_path(binary, "binary")?, "--config".to_owned()];
    exec.push(unit_path(config, "config")?);
    exec.extend(program.run_arguments.iter().map(|a| (*a).to_owned()));
    let exec_start = exec
        .iter()
        .map(|a| quote_exec_argument(a))
        .collect::<Vec<_>>()
        .join(" ");

    let mut unit = String::new();
    let w = &mut unit;
    let _ = writeln!(
        w,
        "# {name}.service, written by `{name} service install`.\n\
         # Run that again after changing the config rather than editing this file:\n\
         # capabilities and writable paths follow the config.",
        name = program.name
    );
    let _ = writeln!(w, "[Unit]");
    let _ = writeln!(w, "Description={}", program.description);
    let _ = writeln!(w, "Wants=network-online.target");
    let _ = writeln!(w, "After=network-online.target");
    let _ = writeln!(w);
    let _ = writeln!(w, "[Service]");
    let _ = writeln!(
        w,
        "# READY=1 once start-up is done; WATCHDOG=1 from the main loop at half WatchdogSec,"
    );
    let _ = writeln!(w, "# so a hung loop is killed and restarted.");
    let _ = writeln!(w, "Type=notify");
    let _ = writeln!(w, "NotifyAccess=main");
    let _ = writeln!(w, "ExecStart={exec_start}");
    let _ = writeln!(w, "Restart=on-failure");
    let _ = writeln!(w, "RestartSec=10s");
    let watchdog = match program.role {
        Role::Agent => AGENT_WATCHDOG,
        Role::Collector => COLLECTOR_WATCHDOG,
    };
    let _ = writeln!(w, "WatchdogSec={watchdog}");
    let _ = writeln!(w, "TimeoutStopSec=30s");
    let _ = writeln!(w, "StateDirectory={}", program.name);
    let _ = writeln!(w, "StateDirectoryMode=0700");
    if program.role == Role::Collector {
        // A relative `database` (the default `estate.db`) lands in the state directory.
        let _ = writeln!(w, "WorkingDirectory=/var/lib/{}", program.name);
        // One connection per agent: thousands of agents need more than the default 1024.
        let _ = writeln!(w, "LimitNOFILE=65536");
    }
    let _ = writeln!(w, "UMask=0077");
    let (cpu, memory) = match program.role {
        Role::Agent => ("25%", "256M"),
        Role::Collector => ("200%", "2G"),
    };
    let _ = writeln!(w, "CPUQuota={cpu}");
    let _ = writeln!(w, "MemoryMax={memory}");
    let _ = writeln!(w);
    let _ = writeln!(
        w,
        "# Sandbox: runs as root (it reads root-only files) but with no capability beyond those"
    );
    let _ = writeln!(
        w,
        "# listed, and can write nothing outside its state directory and the paths listed."
    );
    let _ = writeln!(w, "ProtectSystem=strict");
    match program.role {
        // The inventory sizes every mounted filesystem, /home included.
        Role::Agent => {
            let _ = writeln!(w, "ProtectHome=read-only");
        }
        Role::Collector => {
            let _ = writeln!(w, "ProtectHome=yes");
            let _ = writeln!(w, "PrivateDevices=yes");
            let _ = writeln!(w, "ProtectClock=yes");
        }
    }
    for line in [
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "ProtectControlGroups=yes",
        "ProtectHostname=yes",
        "RestrictNamespaces=yes",
        "RestrictRealtime=yes",
        "RestrictSUIDSGID=yes",
        "LockPersonality=yes",
        "MemoryDenyWriteExecute=yes",
        "SystemCallArchitectures=native",
        "SystemCallFilter=@system-service",
        "SystemCallErrorNumber=EPERM",
    ] {
        let _ = writeln!(w, "{line}");
    }
    let families = match program.role {
        // Netlink: the inventory lists interfaces and addresses through it.
        Role::Agent => "AF_UNIX AF_INET AF_INET6 AF_NETLINK",
        Role::Collector => "AF_UNIX AF_INET AF_INET6",
    };
    let _ = writeln!(w, "RestrictAddressFamilies={families}");
    write_needs(w, needs)?;
    let _ = writeln!(w);
    let _ = writeln!(w, "[Install]");
    let _ = writeln!(w, "WantedBy={WANTED_BY}");
    Ok(unit)
}

fn write_needs(w: &mut String, needs: &ServiceNeeds) -> Result<(), String> {
    let capabilities = needs.capabilities.join(" ");
    let _ = writeln!(w, "CapabilityBoundingSet={capabilities}");
    let _ = writeln!(w, "AmbientCapabilities={capabilities}");
    for path in &needs.writable_paths {
        // `-`: a path that does not exist yet does not stop the service from starting.
        let path = unit_path(path, "writable path")?;
        let _ = writeln!(w, "ReadWritePaths=-{}", quote_exec_argument(&path));
    }
    Ok(())
}

/// A path as a unit file may hold it: absolute, UTF-8, on one line.
fn unit_path(path: &Path, what: &str) -> Result<String, String> {
    let text = path
        .to_str()
        .ok_or_else(|| format!("{what} `{}` is not valid UTF-8", path.display()))?;
    if !path.is_absolute() {
        return Err(format!("{what} `{text}` is not an absolute path"));
    }
    if text.chars().any(|c| c.is_control()) {
        return Err(format!("{what} `{text}` contains a control character"));
    }
    Ok(text.to_owned())
}

/// Quotes one `ExecStart=` argument: `%` and `$` are doubled (systemd expands them), and an
/// argument with spaces, quotes or backslashes is double-quoted with C escapes.
fn quote_exec_argument(argument: &str) -> String {
    let escaped = argument.replace('%', "%%").replace('$', "$$");
    if escaped.is_empty() || escaped.contains([' ', '\t', '"', '\'', '\\', ';']) {
        let inner = escaped.replace('\\', "\\\\").replace('"', "\\\"");
        format!("\"{inner}\"")
    } else {
        escaped
    }
}

/// Where the unit of `program` lives under `root`.
pub fn unit_path_under(program: &Program, root: &Path) -> PathBuf {
    root.join(UNIT_DIRECTORY).join(unit_name(program))
}

/// The enabling symlink of `program` under `root`.
#[cfg(unix)]
fn wants_link_under(program: &Program, root: &Path) -> PathBuf {
    root.join(UNIT_DIRECTORY)
        .join(format!("{WANTED_BY}.wants"))
        .join(unit_name(program))
}

/// Writes the unit and enables it. Under `root`, the enabling symlink is made here (as
/// `systemctl --root enable` would) and no systemctl runs; otherwise systemd reloads its units
/// and enables this one.
#[cfg(unix)]
pub fn install(installation: &Installation, root: Option<&Path>) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let program = &installation.program;
    let text = render_unit(installation).map_err(anyhow::Error::msg)?;
    let base = root.unwrap_or(Path::new("/"));
    let unit = unit_path_under(program, base);
    let existed = unit.exists();
    if let Some(parent) = unit.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("failed to create `{}`", parent.display()))?;
    }
    std::fs::write(&unit, text).with_context(|| {
        format!(
            "failed to write the unit `{}`{}",
            unit.display(),
            if root.is_none() { " (run as root)" } else { "" }
        )
    })?;
    println!(
        "{} {}",
        if existed { "updated" } else { "wrote" },
        unit.display()
    );
    println!("  runs:   {}", installation.binary.display());
    println!("  config: {}", installation.config.display());
    if !installation.needs.capabilities.is_empty() {
        println!(
            "  capabilities: {}",
            installation.needs.capabilities.join(" ")
        );
    }
    let name = unit_name(program);
    match root {
        Some(root) => {
            let link = wants_link_under(program, root);
            if let Some(parent) = link.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("failed to create `{}`", parent.display()))?;
            }
            if link.symlink_metadata().is_ok() {
                std::fs::remove_file(&link)
                    .with_context(|| format!("failed to replace `{}`", link.display()))?;
            }
            let target = Path::new("/").join(UNIT_DIRECTORY).join(&name);
            std::os::unix::fs::symlink(&target, &link)
                .with_context(|| format!("failed to link `{}`", link.display()))?;
            println!("enabled (linked {})", link.display());
            println!("under --root `{}`: no systemctl was run", root.display());
        }
        None => {
            systemctl(&["daemon-reload"])?;
            systemctl(&["enable", &name])?;
            println!("enabled {name} (starts at boot)");
            if existed {
                println!(
                    "restart it to apply: {} service stop && {} service start",
                    program.name, program.name
                );
            } else {
                println!("start it now with: {} service start", program.name);
            }
        }
    }
    Ok(())
}

/// Stops, disables and removes the unit; under `root`, removes the files only.
#[cfg(unix)]
pub fn uninstall(program: &Program, root: Option<&Path>) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let base = root.unwrap_or(Path::new("/"));
    let unit = unit_path_under(program, base);
    let name = unit_name(program);
    anyhow::ensure!(
        unit.exists(),
        "{name} is not installed: there is no unit `{}`",
        unit.display()
    );
    match root {
        Some(_) => {
            let link = wants_link_under(program, base);
            if link.symlink_metadata().is_ok() {
                std::fs::remove_file(&link)
                    .with_context(|| format!("failed to remove `{}`", link.display()))?;
                println!("disabled (removed {})", link.display());
            }
        }
        None => {
            systemctl(&["disable", "--now", &name])?;
            println!("stopped and disabled {name}");
        }
    }
    std::fs::remove_file(&unit)
        .with_context(|| format!("failed to remove the unit `{}`", unit.display()))?;
    println!("removed {}", unit.display());
    if root.is_none() {
        systemctl(&["daemon-reload"])?;
        // A unit that had failed would stay listed as failed until reset.
        let _ = systemctl_output(&["reset-failed", &name]);
    }
    Ok(())
}

/// `systemctl start`.
#[cfg(unix)]
pub fn start(program: &Program) -> anyhow::Result<()> {
    let name = unit_name(program);
    systemctl(&["start", &name])?;
    println!("started {name}");
    Ok(())
}

/// `systemctl stop`.
#[cfg(unix)]
pub fn stop(program: &Program) -> anyhow::Result<()> {
    let name = unit_name(program);
    systemctl(&["stop", &name])?;
    println!("stopped {name}");
    Ok(())
}

/// Prints the unit's state in one line, then `systemctl status` (with its last log lines).
#[cfg(unix)]
pub fn status(program: &Program) -> anyhow::Result<crate::Running> {
    let name = unit_name(program);
    let output = systemctl_output(&["show", &format!("--property={SHOW_PROPERTIES}"), &name])?;
    let units = parse_show(&output).map_err(anyhow::Error::msg)?;
    let unit = units
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("systemctl show printed nothing for {name}"))?;
    println!("{}", unit.summary());
    if unit.load_state == "not-found" {
        println!(
            "install it with: {} service install --config {}",
            program.name, program.default_config
        );
        return Ok(crate::Running::No);
    }
    // Its own exit code says the same as the summary; its text adds the recent log lines.
    let status = std::process::Command::new("systemctl")
        .args(["status", "--no-pager", "--lines=10", &name])
        .env_remove("NOTIFY_SOCKET")
        .status();
    if let Err(error) = status {
        println!("(could not run systemctl status: {error})");
    }
    Ok(if unit.active_state == "active" {
        crate::Running::Yes
    } else {
        crate::Running::No
    })
}

/// Runs systemctl, failing with its own message when it fails.
#[cfg(unix)]
fn systemctl(args: &[&str]) -> anyhow::Result<()> {
    systemctl_output(args).map(drop)
}

/// Runs systemctl and returns its stdout; a failure names the command and carries stderr.
#[cfg(unix)]
pub fn systemctl_output(args: &[&str]) -> anyhow::Result<String> {
    use anyhow::Context as _;
    let output = std::process::Command::new("systemctl")
        .args(args)
        // systemctl talks to systemd itself; it must not mistake our socket for its own.
        .env_remove("NOTIFY_SOCKET")
        .output()
        .with_context(|| format!("cannot run `systemctl {}`", args.join(" ")))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        anyhow::bail!(
            "`systemctl {}` failed ({}): {}",
            args.join(" "),
            output.status,
            stderr.trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The properties `status` and the `service` check ask `systemctl show` for.
pub const SHOW_PROPERTIES: &str = "Id,LoadState,ActiveState,SubState,UnitFileState";

/// One unit as `systemctl show --property=Id,LoadState,ActiveState,SubState,UnitFileState`
/// describes it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UnitState {
    /// `Id`: the unit's full name, `ssh.service`.
    pub id: String,
    /// `LoadState`: `loaded`, `not-found`, `masked`, `error`, `bad-setting`.
    pub load_state: String,
    /// `ActiveState`: `active`, `inactive`, `failed`, `activating`, `deactivating`,
    /// `reloading`, `maintenance`.
    pub active_state: String,
    /// `SubState`: the unit type's own state, `running`, `exited`, `dead`, `auto-restart`.
    pub sub_state: String,
    /// `UnitFileState`: `enabled`, `disabled`, `static`, `masked`, or empty for no unit file.
    pub unit_file_state: String,
}

impl UnitState {
    /// `ssh.service: loaded, active (running), enabled`.
    pub fn summary(&self) -> String {
        let mut text = format!(
            "{}: {}, {} ({})",
            self.id, self.load_state, self.active_state, self.sub_state
        );
        if !self.unit_file_state.is_empty() {
            text.push_str(", ");
            text.push_str(&self.unit_file_state);
        }
        text
    }
}

/// Parses `systemctl show --property=...` output for one or more units: `Key=value` lines, one
/// block per unit, blocks separated by an empty line. Every block must name its unit (`Id`)
/// and its `LoadState` and `ActiveState`; unknown keys are ignored.
pub fn parse_show(text: &str) -> Result<Vec<UnitState>, String> {
    let mut units = Vec::new();
    let mut current: Option<UnitState> = None;
    let finish = |unit: UnitState, units: &mut Vec<UnitState>| -> Result<(), String> {
        let missing = [
            ("Id", &unit.id),
            ("LoadState", &unit.load_state),
            ("ActiveState", &unit.active_state),
        ]
        .into_iter()
        .find(|(_, value)| value.is_empty());
        if let Some((key, _)) = missing {
            let name = if unit.id.is_empty() {
                "a unit"
            } else {
                &unit.id
            };
            return Err(format!("systemctl show gave no `{key}` for {name}"));
        }
        units.push(unit);
        Ok(())
    };
    for (number, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            if let Some(unit) = current.take() {
                finish(unit, &mut units)?;
            }
            continue;
        }
        let (key, value) = line.split_once('=').ok_or_else(|| {
            format!(
                "systemctl show line {} is not `Key=value`: `{}`",
                number + 1,
                line.chars().take(200).collect::<String>()
            )
        })?;
        let unit = current.get_or_insert_with(UnitState::default);
        let field = match key {
            "Id" => &mut unit.id,
            "LoadState" => &mut unit.load_state,
            "ActiveState" => &mut unit.active_state,
            "SubState" => &mut unit.sub_state,
            "UnitFileState" => &mut unit.unit_file_state,
            _ => continue,
        };
        *field = value.to_owned();
    }
    if let Some(unit) = current {
        finish(unit, &mut units)?;
    }
    Ok(units)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AGENT, COLLECTOR};

    fn default_installation(program: Program) -> Installation {
        Installation {
            program,
            binary: PathBuf::from(format!("/usr/local/bin/{}", program.name)),
            config: PathBuf::from(program.default_config),
            needs: ServiceNeeds::default(),
        }
    }

    /// The units in deploy/systemd are this module's output for the default paths.
    /// `ESTATE_BLESS=1` rewrites them.
    #[test]
    fn the_reference_units_are_the_generated_units_for_the_default_paths() {
        let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/systemd");
        for program in [AGENT, COLLECTOR] {
            let generated = render_unit(&default_installation(program)).unwrap();
            let path = deploy.join(unit_name(&program));
            if std::env::var_os("ESTATE_BLESS").is_some() {
                std::fs::create_dir_all(&deploy).unwrap();
                std::fs::write(&path, &generated).unwrap();
            }
            let reference = std::fs::read_to_string(&path).unwrap_or_default();
            assert_eq!(
                reference,
                generated,
                "`{}` differs from the generated unit; rerun with ESTATE_BLESS=1 and review the diff",
                path.display()
            );
        }
    }

    #[test]
    fn the_agent_unit_sandboxes_without_capabilities_unless_needed() {
        let unit = render_unit(&default_installation(AGENT)).unwrap();
        for line in [
            "Type=notify",
            "WatchdogSec=3min",
            "ExecStart=/usr/local/bin/estate-agent --config /etc/estate/agent.toml run",
            "ProtectSystem=strict",
            "NoNewPrivileges=yes",
            "StateDirectory=estate-agent",
            "CapabilityBoundingSet=",
            "CPUQuota=25%",
            "MemoryMax=256M",
        ] {
            assert!(
                unit.lines().any(|l| l == line),
                "missing `{line}` in:\n{unit}"
            );
        }

        let mut installation = default_installation(AGENT);
        installation.needs.add_capability("CAP_NET_RAW");
        installation.needs.add_capability("CAP_NET_BIND_SERVICE");
        installation.needs.add_capability("CAP_NET_RAW");
        installation.needs.writable_paths = vec![PathBuf::from("/srv/estate state")];
        let unit = render_unit(&installation).unwrap();
        assert!(
            unit.contains("\nCapabilityBoundingSet=CAP_NET_BIND_SERVICE CAP_NET_RAW\n"),
            "{unit}"
        );
        assert!(
            unit.contains("\nAmbientCapabilities=CAP_NET_BIND_SERVICE CAP_NET_RAW\n"),
            "{unit}"
        );
        assert!(
            unit.contains("\nReadWritePaths=-\"/srv/estate state\"\n"),
            "{unit}"
        );
    }

    #[test]
    fn exec_arguments_are_quoted_and_escaped_for_systemd() {
        let mut installation = default_installation(COLLECTOR);
        installation.binary = PathBuf::from("/opt/estate 1/bin/estate-collector");
        installation.config = PathBuf::from("/etc/estate/100%$HOME.toml");
        let unit = render_unit(&installation).unwrap();
        assert!(
            unit.contains(
                "\nExecStart=\"/opt/estate 1/bin/estate-collector\" --config /etc/estate/100%%$$HOME.toml\n"
            ),
            "{unit}"
        );
    }

    #[test]
    fn paths_systemd_cannot_take_are_refused_by_name() {
        let mut installation = default_installation(AGENT);
        installation.config = PathBuf::from("etc/agent.toml");
        assert_eq!(
            render_unit(&installation).unwrap_err(),
            "config `etc/agent.toml` is not an absolute path"
        );
        installation.config = PathBuf::from("/etc/agent\n.toml");
        assert_eq!(
            render_unit(&installation).unwrap_err(),
            "config `/etc/agent\n.toml` contains a control character"
        );
    }

    #[cfg(unix)]
    #[test]
    fn install_under_a_root_writes_and_enables_the_unit_and_uninstall_removes_it() {
        let root = tempfile::tempdir().unwrap();
        let installation = default_installation(AGENT);
        install(&installation, Some(root.path())).unwrap();
        let unit = root.path().join("etc/systemd/system/estate-agent.service");
        let link = root
            .path()
            .join("etc/systemd/system/multi-user.target.wants/estate-agent.service");
        assert_eq!(
            std::fs::read_to_string(&unit).unwrap(),
            render_unit(&installation).unwrap()
        );
        assert_eq!(
            std::fs::read_link(&link).unwrap(),
            Path::new("/etc/systemd/system/estate-agent.service")
        );
        // Installing again updates in place.
        install(&installation, Some(root.path())).unwrap();

        uninstall(&AGENT, Some(root.path())).unwrap();
        assert!(!unit.exists());
        assert!(link.symlink_metadata().is_err());
        let error = uninstall(&AGENT, Some(root.path())).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("estate-agent.service is not installed: there is no unit `"),
            "{error}"
        );
    }

    #[test]
    fn show_output_of_several_units_is_parsed_in_order() {
        // systemctl 252 prints the properties in its own order, one block per unit.
        let text = "Id=ssh.service\nLoadState=loaded\nActiveState=active\nSubState=running\nUnitFileState=enabled\n\n\
                    Id=nope.service\nLoadState=not-found\nActiveState=inactive\nSubState=dead\nUnitFileState=\n\n\
                    Id=cron.service\nLoadState=loaded\nActiveState=failed\nSubState=failed\nUnitFileState=enabled\n";
        let units = parse_show(text).unwrap();
        let summaries: Vec<String> = units.iter().map(UnitState::summary).collect();
        assert_eq!(
            summaries,
            [
                "ssh.service: loaded, active (running), enabled",
                "nope.service: not-found, inactive (dead)",
                "cron.service: loaded, failed (failed), enabled",
            ]
        );
    }

    #[test]
    fn malformed_show_output_is_refused_with_the_line() {
        assert_eq!(
            parse_show("Id=a.service\nLoadState=loaded\ngarbage\n").unwrap_err(),
            "systemctl show line 3 is not `Key=value`: `garbage`"
        );
        assert_eq!(
            parse_show("Id=a.service\nLoadState=loaded\n").unwrap_err(),
            "systemctl show gave no `ActiveState` for a.service"
        );
        assert_eq!(parse_show("").unwrap(), []);
    }
}
