//! The two programs as systemd services, with the real binaries: readiness (`READY=1`), the
//! watchdog (`WATCHDOG=1`) and `STOPPING=1` sent to a `NOTIFY_SOCKET` this test binds, and
//! `service install --root` / `uninstall` writing and removing a unit.
#![cfg(target_os = "linux")]

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn binary(name: &str) -> PathBuf {
    let dir = match std::env::var_os("ESTATE_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        // target/<profile>/deps/service-<hash> → target/<profile>
        None => {
            let exe = std::env::current_exe().unwrap();
            exe.parent().and_then(Path::parent).unwrap().to_owned()
        }
    };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "`{}` is missing: run the tests with `cargo test --workspace`",
        path.display()
    );
    path
}

/// A notification socket as systemd provides one, and what arrives on it.
struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
    received: Vec<String>,
}

impl NotifySocket {
    fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        NotifySocket {
            socket,
            path,
            received: Vec::new(),
        }
    }

    /// Receives until `line` has arrived `count` times in all, failing after `limit`.
    fn wait_for(&mut self, child: &mut Child, line: &str, count: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        let mut buffer = [0u8; 4096];
        loop {
            let seen = self
                .received
                .iter()
                .flat_map(|message| message.lines())
                .filter(|l| *l == line)
                .count();
            if seen >= count {
                return;
            }
            if let Some(status) = child.try_wait().unwrap() {
                // What it sent before exiting is still queued on the socket.
                while let Ok(length) = self.socket.recv(&mut buffer) {
                    self.received
                        .push(String::from_utf8_lossy(&buffer[..length]).into_owned());
                }
                let seen = self
                    .received
                    .iter()
                    .flat_map(|message| message.lines())
                    .filter(|l| *l == line)
                    .count();
                if seen >= count {
                    return;
                }
                panic!(
                    "the program exited ({status}) before sending `{line}`; received {:?}",
                    self.received
                );
            }
            assert!(
                Instant::now() < deadline,
                "no `{line}` (×{count}) within {limit:?}; received {:?}",
                self.received
            );
            match self.socket.recv(&mut buffer) {
                Ok(length) => self
                    .received
                    .push(String::from_utf8_lossy(&buffer[..length]).into_owned()),
                Err(error)
                    if matches!(
                        error.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(error) => panic!("receiving on the notify socket: {error}"),
            }
        }
    }
}

/// Starts `command` as systemd would start a `Type=notify` unit with `WatchdogSec=0.4s`.
fn spawn_under_notify(mut command: Command, socket: &NotifySocket) -> Child {
    command
        .env("NOTIFY_SOCKET", &socket.path)
        .env("WATCHDOG_USEC", "400000")
        .env_remove("WATCHDOG_PID")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        // Inherited: a program that fails to start says why in the test's output.
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

fn terminate(child: &mut Child) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
}

fn wait_with_limit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the program did not stop within {limit:?} of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_agent_reports_ready_pings_the_watchdog_from_its_loop_and_says_when_it_stops() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    // No collector listens on port 1: reports fail and are retried, the loop goes on.
    std::fs::write(
        &config,
        format!(
            "[agent]\nstate_dir = \"{}\"\n[collector]\nurl = \"http://127.0.0.1:1\"\ninsecure = true\n",
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let mut socket = NotifySocket::bind(dir.path());
    let mut command = Command::new(binary("estate-agent"));
    command.arg("--config").arg(&config).arg("run");
    let mut child = spawn_under_notify(command, &socket);

    socket.wait_for(&mut child, "READY=1", 1, Duration::from_secs(60));
    // Pings every 200 ms once the loop runs (after the first inventory and report).
    socket.wait_for(&mut child, "WATCHDOG=1", 3, Duration::from_secs(90));
    terminate(&mut child);
    let status = wait_with_limit(&mut child, Duration::from_secs(30));
    assert!(status.success(), "{status}");
    socket.wait_for(&mut child, "STOPPING=1", 1, Duration::from_secs(1));
}

#[test]
fn the_collector_reports_ready_once_listening_and_pings_the_watchdog() {
    let dir = tempfile::tempdir().unwrap();
    let mut socket = NotifySocket::bind(dir.path());
    let mut command = Command::new(binary("estate-collector"));
    command
        .args([
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--insecure",
        ])
        .arg("--database")
        .arg(dir.path().join("estate.db"));
    let mut child = spawn_under_notify(command, &socket);

    socket.wait_for(&mut child, "READY=1", 1, Duration::from_secs(60));
    socket.wait_for(&mut child, "WATCHDOG=1", 2, Duration::from_secs(30));
    terminate(&mut child);
    let status = wait_with_limit(&mut child, Duration::from_secs(30));
    assert!(status.success(), "{status}");
    socket.wait_for(&mut child, "STOPPING=1", 1, Duration::from_secs(1));
}

/// `service install --root` writes the unit for this binary and an absolute config, with the
/// capabilities the config's checks need; `uninstall --root` removes it again.
#[test]
fn service_install_under_a_root_writes_a_unit_that_uninstall_removes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        "[[checks]]\nname = \"site-dhcp\"\nkind = \"dhcp\"\nmode = \"broadcast\"\ninterface = \"eth0\"\n",
    )
    .unwrap();
    let agent = binary("estate-agent");
    // A relative --config is stored absolute.
    let output = Command::new(&agent)
        .current_dir(dir.path())
        .args(["--config", "agent.toml", "service", "install", "--root"])
        .arg(&root)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let unit_path = root.join("etc/systemd/system/estate-agent.service");
    let unit = std::fs::read_to_string(&unit_path).unwrap();
    let config = std::fs::canonicalize(&config).unwrap();
    let exec_start = format!(
        "ExecStart={} --config {} run",
        std::fs::canonicalize(&agent).unwrap().display(),
        config.display()
    );
    assert!(
        unit.lines().any(|l| l == exec_start),
        "no `{exec_start}` in:\n{unit}"
    );
    assert!(
        unit.lines()
            .any(|l| l == "CapabilityBoundingSet=CAP_NET_BIND_SERVICE CAP_NET_RAW"),
        "{unit}"
    );
    let link = root.join("etc/systemd/system/multi-user.target.wants/estate-agent.service");
    assert!(link.symlink_metadata().is_ok());

    // systemd's own verdict on the unit, where systemd-analyze exists (.ci/run installs it).
    match Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit_path)
        .output()
    {
        Ok(verify) => assert!(
            verify.status.success() && verify.stderr.is_empty(),
            "systemd-analyze verify refused the unit: {}",
            String::from_utf8_lossy(&verify.stderr)
        ),
        Err(error) => eprintln!("systemd-analyze not run ({error}); .ci/run verifies the unit"),
    }

    let output = Command::new(&agent)
        .args(["service", "uninstall", "--root"])
        .arg(&root)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert!(!unit_path.exists());
    assert!(link.symlink_metadata().is_err());
}

#[test]
fn service_install_refuses_a_missing_or_invalid_config_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let agent = binary("estate-agent");
    let missing = dir.path().join("missing.toml");
    let output = Command::new(&agent)
        .arg("--config")
        .arg(&missing)
        .args(["service", "install", "--root"])
        .arg(&root)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "cannot use config `{}` for the service",
            missing.display()
        )),
        "{stderr}"
    );

    let invalid = dir.path().join("agent.toml");
    std::fs::write(&invalid, "[agent]\nstate_dr = \"/x\"\n").unwrap();
    let output = Command::new(&agent)
        .arg("--config")
        .arg(&invalid)
        .args(["service", "install", "--root"])
        .arg(&root)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unknown field `state_dr`"), "{stderr}");
    assert!(
        !root
            .join("etc/systemd/system/estate-agent.service")
            .exists()
    );

    let collector = binary("estate-collector");
    let invalid = dir.path().join("collector.toml");
    std::fs::write(&invalid, "grpc_listen = \"nowhere\"\n").unwrap();
    let output = Command::new(&collector)
        .args(["service", "install", "--config"])
        .arg(&invalid)
        .arg("--root")
        .arg(&root)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("`grpc_listen` `nowhere` is not an address"),
        "{stderr}"
    );
}
