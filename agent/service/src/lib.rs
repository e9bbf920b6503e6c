//! estate's service-manager integration, shared by `estate-agent` and `estate-collector`:
//! `service install|uninstall|start|stop|status` on Linux (systemd units, [`systemd`]) and on
//! Windows (the service control manager, `windows`), readiness and watchdog notifications
//! ([`notify`]), and the parsing of `systemctl show` that the agent's `service` check shares.
//!
//! The programs stay thin: each describes itself with a [`Program`], works out what its
//! configuration needs from the sandbox ([`ServiceNeeds`]) and calls [`install`] and friends.

pub mod notify;
pub mod systemd;
#[cfg(windows)]
pub mod windows;

use anyhow::Context as _;
use std::path::{Path, PathBuf};

/// The `service` subcommand of both programs.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ServiceAction {
    /// Install the service (systemd unit or Windows service) for this binary and the config
    /// given with `--config`, and enable it at boot; does not start it
    Install {
        /// Write the unit under this directory instead of `/` and call no systemctl (Linux,
        /// for packaging and tests, as `systemctl --root` does)
        #[arg(long, value_name = "DIR")]
        root: Option<PathBuf>,
    },
    /// Stop, disable and remove the installed service
    Uninstall {
        /// Remove the unit from under this directory, calling no systemctl (Linux)
        #[arg(long, value_name = "DIR")]
        root: Option<PathBuf>,
    },
    /// Start the installed service
    Start,
    /// Stop the installed service
    Stop,
    /// Print the installed service's state; exits 0 when it runs, 3 when it does not
    Status,
    /// What the Windows service manager runs: reports to it, then runs the program
    #[command(hide = true)]
    Run,
}

/// Which of the two programs is being installed; each has its own sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Runs as root (it reads root-only inventory sources such as the SMBIOS table), writes
    /// only its state directory, and gets capabilities only for checks that need them.
    Agent,
    /// Runs as a dynamic unprivileged user, writes only its state directory (the database).
    Collector,
}

/// What a program is, as the service managers see it.
#[derive(Debug, Clone, Copy)]
pub struct Program {
    /// Binary, systemd unit and Windows service name: `estate-agent`.
    pub name: &'static str,
    /// Human-readable name: `estate agent`.
    pub display_name: &'static str,
    /// One line for the unit's `Description=` and the Windows service description.
    pub description: &'static str,
    /// Arguments after `--config PATH` that run the program in the foreground (`run`).
    pub run_arguments: &'static [&'static str],
    /// Where the config lives when `--config` is not given.
    pub default_config: &'static str,
    /// The sandbox it gets.
    pub role: Role,
}

/// The agent as a service.
pub const AGENT: Program = Program {
    name: "estate-agent",
    display_name: "estate agent",
    description: "estate agent: host inventory and infrastructure checks, reported to an estate collector",
    run_arguments: &["run"],
    default_config: if cfg!(windows) {
        r"C:\ProgramData\estate\agent.toml"
    } else {
        "/etc/estate/agent.toml"
    },
    role: Role::Agent,
};

/// The collector as a service.
pub const COLLECTOR: Program = Program {
    name: "estate-collector",
    display_name: "estate collector",
    description: "estate collector: inventory store, Prometheus metrics, JSON API and web UI",
    run_arguments: &[],
    default_config: if cfg!(windows) {
        r"C:\ProgramData\estate\collector.toml"
    } else {
        "/etc/estate/collector.toml"
    },
    role: Role::Collector,
};

/// What a program's configuration needs beyond the default sandbox.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceNeeds {
    /// Linux capabilities (`CAP_NET_BIND_SERVICE`), sorted, without duplicates.
    pub capabilities: Vec<&'static str>,
    /// Absolute paths outside the service's state directory that it writes (a state directory
    /// or database configured elsewhere).
    pub writable_paths: Vec<PathBuf>,
}

impl ServiceNeeds {
    /// Adds a capability once, keeping the list sorted so generated units are stable.
    pub fn add_capability(&mut self, capability: &'static str) {
        if let Err(index) = self.capabilities.binary_search(&capability) {
            self.capabilities.insert(index, capability);
        }
    }
}

/// Everything needed to write a service definition.
#[derive(Debug, Clone)]
pub struct Installation {
    pub program: Program,
    /// Absolute path of the binary the service runs.
    pub binary: PathBuf,
    /// Absolute path of its config file.
    pub config: PathBuf,
    pub needs: ServiceNeeds,
}

/// The config path given with `--config` (or the program's default), resolved to an absolute
/// path with symlinks followed, so the service finds it whatever its working directory.
pub fn resolve_config(program: &Program, given: Option<&Path>) -> anyhow::Result<PathBuf> {
    let path = given.unwrap_or(Path::new(program.default_config));
    let resolved = std::fs::canonicalize(path).with_context(|| {
        format!(
            "cannot use config `{}` for the service (give an existing file with --config)",
            path.display()
        )
    })?;
    anyhow::ensure!(
        resolved.is_file(),
        "config `{}` is not a file",
        resolved.display()
    );
    Ok(resolved)
}

/// The running binary's absolute path, which the service will run.
pub fn current_binary() -> anyhow::Result<PathBuf> {
    let binary = std::env::current_exe().context("cannot find the path of this binary")?;
    std::fs::canonicalize(&binary)
        .with_context(|| format!("cannot resolve the binary path `{}`", binary.display()))
}

/// Whether the installed service is running, as `status` found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Running {
    Yes,
    No,
}

/// Installs (or updates) and enables the service; `root` writes under another root (Linux).
pub fn install(installation: &Installation, root: Option<&Path>) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        systemd::install(installation, root)
    }
    #[cfg(windows)]
    {
        anyhow::ensure!(root.is_none(), "`--root` is for systemd units, on Linux");
        windows::install(installation)
    }
}

/// Stops, disables and removes the service; `root` removes it from under another root (Linux).
pub fn uninstall(program: &Program, root: Option<&Path>) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        systemd::uninstall(program, root)
    }
    #[cfg(windows)]
    {
        anyhow::ensure!(root.is_none(), "`--root` is for systemd units, on Linux");
        windows::uninstall(program)
    }
}

/// Starts the installed service.
pub fn start(program: &Program) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        systemd::start(program)
    }
    #[cfg(windows)]
    {
        windows::start(program)
    }
}

/// Stops the installed service.
pub fn stop(program: &Program) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        systemd::stop(program)
    }
    #[cfg(windows)]
    {
        windows::stop(program)
    }
}

/// Prints the installed service's state and says whether it runs.
pub fn status(program: &Program) -> anyhow::Result<Running> {
    #[cfg(unix)]
    {
        systemd::status(program)
    }
    #[cfg(windows)]
    {
        windows::status(program)
    }
}
