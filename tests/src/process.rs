//! CPU time and memory of a running process, read from Linux's `/proc`.

use anyhow::Context as _;

/// CPU time (user + system) and resident memory of one process at one instant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessSample {
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
}

/// Reads `/proc/<pid>/stat` and `/proc/<pid>/status`.
pub fn sample(pid: u32) -> anyhow::Result<ProcessSample> {
    let stat_path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&stat_path)
        .with_context(|| format!("failed to read `{stat_path}`"))?;
    let status_path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&status_path)
        .with_context(|| format!("failed to read `{status_path}`"))?;
    Ok(ProcessSample {
        cpu_seconds: cpu_ticks(&stat)? as f64 / clock_ticks_per_second(),
        rss_bytes: rss_bytes(&status)?,
    })
}

/// `utime + stime` from the text of `/proc/<pid>/stat`. The command name (field 2) may hold
/// spaces and parentheses, so fields are counted after its closing parenthesis.
pub fn cpu_ticks(stat: &str) -> anyhow::Result<u64> {
    let (_, after_name) = stat
        .rsplit_once(')')
        .with_context(|| format!("`{stat}` is not a /proc stat line"))?;
    // After the name come field 3 (state) onwards; utime and stime are fields 14 and 15.
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |number: usize| -> anyhow::Result<u64> {
        let text = fields
            .get(number - 3)
            .with_context(|| format!("/proc stat line has no field {number}"))?;
        text.parse()
            .with_context(|| format!("/proc stat field {number} `{text}` is not a number"))
    };
    Ok(field(14)? + field(15)?)
}

/// `VmRSS` from the text of `/proc/<pid>/status`, in bytes.
pub fn rss_bytes(status: &str) -> anyhow::Result<u64> {
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .context("/proc status has no VmRSS line")?;
    let kib = line
        .split_whitespace()
        .nth(1)
        .with_context(|| format!("`{line}` has no value"))?;
    Ok(kib
        .parse::<u64>()
        .with_context(|| format!("`{line}`: `{kib}` is not a number"))?
        * 1024)
}

fn clock_ticks_per_second() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100.0, |ticks| ticks as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_name() {
        let stat = "4242 (a (weird) name) S 1 4242 4242 0 -1 4194560 900 0 0 0 150 37 0 0 20 0 \
                    9 0 12345 100000000 2000 18446744073709551615";
        assert_eq!(cpu_ticks(stat).unwrap(), 187);
        assert!(cpu_ticks("garbage").is_err());
    }

    #[test]
    fn rss_is_read_in_kib() {
        let status = "Name:\tx\nVmPeak:\t  100 kB\nVmRSS:\t    2048 kB\nThreads:\t3\n";
        assert_eq!(rss_bytes(status).unwrap(), 2048 * 1024);
        assert!(rss_bytes("Name:\tx\n").is_err());
    }

    #[test]
    fn this_process_can_be_sampled() {
        let me = sample(std::process::id()).unwrap();
        assert!(me.rss_bytes > 0);
        assert!(me.cpu_seconds >= 0.0);
    }
}
