//! Readiness and watchdog notifications to systemd (`Type=notify`, `WatchdogSec=`), through the
//! `sd-notify` crate. Outside systemd (no `NOTIFY_SOCKET`) and on other systems every call does
//! nothing, so the programs call them unconditionally.

use std::time::Duration;

/// Tells systemd that start-up is over (`READY=1`), with a status line for `systemctl status`.
pub fn ready(status: &str) {
    #[cfg(target_os = "linux")]
    send(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(status),
    ]);
    #[cfg(not(target_os = "linux"))]
    let _ = status;
}

/// Tells systemd that the program is stopping (`STOPPING=1`).
pub fn stopping() {
    #[cfg(target_os = "linux")]
    send(&[sd_notify::NotifyState::Stopping]);
}

/// How often to call [`watchdog`]: half the `WatchdogSec=` systemd gave this process, or `None`
/// when no watchdog is armed.
pub fn watchdog_interval() -> Option<Duration> {
    #[cfg(target_os = "linux")]
    {
        sd_notify::watchdog_enabled()
            .filter(|timeout| !timeout.is_zero())
            .map(|timeout| timeout / 2)
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// Tells systemd's watchdog that the program's loop is alive (`WATCHDOG=1`).
pub fn watchdog() {
    #[cfg(target_os = "linux")]
    send(&[sd_notify::NotifyState::Watchdog]);
}

#[cfg(target_os = "linux")]
fn send(states: &[sd_notify::NotifyState]) {
    if let Err(error) = sd_notify::notify(states) {
        // systemd restarts a service whose notifications never arrive; say why it may happen.
        tracing::warn!(%error, "cannot notify the service manager (NOTIFY_SOCKET)");
    }
}
