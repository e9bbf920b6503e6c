//! Blocking queries with a timeout each, on threads of their own, with a bound on how many
//! stalled ones may pile up. Platform independent so that the Linux tests exercise it; the
//! Windows reading layer runs every WMI query through it.
//!
//! A thread blocked inside COM cannot be killed: on timeout the caller stops waiting and the
//! thread is left to finish (or not). The runner counts live threads and refuses to start a
//! new query while `max_live` are still running, so a hung WMI costs a few threads, never an
//! unbounded number, and never blocks the caller longer than the timeout.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

/// Runs work items on threads of their own, each with a timeout.
#[derive(Debug)]
pub struct BoundedRunner {
    live: AtomicUsize,
    max_live: usize,
}

/// Decrements the live count when the work thread ends, panicking or not.
struct LiveGuard(&'static BoundedRunner);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::SeqCst);
    }
}

impl BoundedRunner {
    /// A runner that allows `max_live` work threads alive at once (running or stalled).
    pub const fn new(max_live: usize) -> BoundedRunner {
        BoundedRunner {
            live: AtomicUsize::new(0),
            max_live,
        }
    }

    /// Work threads alive now.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    /// Runs `work` on a new thread named `name` and waits at most `timeout` for its result.
    /// Errors say what happened: the work's own error, no answer in time, too many stalled
    /// threads (the work is not started then), or a panic in the work.
    pub fn run<T: Send + 'static>(
        &'static self,
        name: &str,
        timeout: Duration,
        work: impl FnOnce() -> Result<T, String> + Send + 'static,
    ) -> Result<T, String> {
        let before = self.live.fetch_add(1, Ordering::SeqCst);
        if before >= self.max_live {
            self.live.fetch_sub(1, Ordering::SeqCst);
            return Err(format!(
                "not queried: {before} earlier queries are still stalled (WMI is not answering)"
            ));
        }
        let (sender, receiver) = mpsc::sync_channel(1);
        let spawned = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                let guard = LiveGuard(self);
                let result = work();
                // Counted out before answering, so the caller's next query sees the slot free.
                drop(guard);
                // The caller may have given up waiting: nobody to tell then.
                let _ = sender.send(result);
            });
        if let Err(error) = spawned {
            self.live.fetch_sub(1, Ordering::SeqCst);
            return Err(format!("cannot start a query thread: {error}"));
        }
        match receiver.recv_timeout(timeout) {
            Ok(result) => result,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                Err(format!("no answer within {timeout:?}; query abandoned"))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                Err("the query thread ended without an answer (panicked)".to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn wait_until_idle(runner: &BoundedRunner) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while runner.live() > 0 {
            assert!(
                Instant::now() < deadline,
                "threads still live: {}",
                runner.live()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn answers_errors_and_panics_come_back() {
        static RUNNER: BoundedRunner = BoundedRunner::new(2);
        let timeout = Duration::from_secs(10);
        assert_eq!(RUNNER.run("ok", timeout, || Ok(7)), Ok(7));
        assert_eq!(
            RUNNER.run::<u8>("fails", timeout, || Err("access denied".into())),
            Err("access denied".to_string())
        );
        let panicked = RUNNER.run::<u8>("panics", timeout, || panic!("provider bug"));
        assert_eq!(
            panicked,
            Err("the query thread ended without an answer (panicked)".to_string())
        );
        wait_until_idle(&RUNNER);
    }

    #[test]
    fn stalled_queries_time_out_and_are_bounded() {
        static RUNNER: BoundedRunner = BoundedRunner::new(2);
        let short = Duration::from_millis(50);
        let mut releases = Vec::new();
        for _ in 0..2 {
            let (release, stalled) = mpsc::channel::<()>();
            releases.push(release);
            let started = Instant::now();
            let result = RUNNER.run::<u8>("stalls", short, move || {
                let _ = stalled.recv();
                Ok(1)
            });
            assert_eq!(
                result,
                Err("no answer within 50ms; query abandoned".to_string())
            );
            assert!(started.elapsed() < Duration::from_secs(5));
        }
        assert_eq!(RUNNER.live(), 2);
        // With two stalled threads the third query does not start at all.
        let refused = RUNNER.run("refused", short, || -> Result<u8, String> {
            unreachable!("must not start")
        });
        assert_eq!(
            refused,
            Err("not queried: 2 earlier queries are still stalled (WMI is not answering)".into())
        );
        assert_eq!(RUNNER.live(), 2);
        // Once WMI answers again the stalled threads end and queries run again.
        drop(releases);
        wait_until_idle(&RUNNER);
        assert_eq!(RUNNER.run("recovered", short * 100, || Ok(3)), Ok(3));
    }
}
