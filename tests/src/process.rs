//! CPU time and memory of a running process, read from Linux's `/proc`, and of a finished
//! child, read from `getrusage`.

use anyhow::{Context as _, bail};
use std::process::{Command, Stdio};

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

/// The CPU time and peak resident memory of one finished command.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChildCost {
    pub cpu_seconds: f64,
    pub peak_rss_bytes: u64,
}

/// The subcommand a benchmark program answers with [`measure_child`]: [`median_cost`] runs the
/// program itself as `<program> measure-child <command…>`, so the measuring process has
/// exactly one child and `RUSAGE_CHILDREN` is that command alone.
pub const MEASURE_CHILD: &str = "measure-child";

/// Runs `command` (program and arguments) as a child, output discarded, waits, and prints
/// `cpu_seconds peak_rss_bytes` of that child.
pub fn measure_child(command: &[String]) -> anyhow::Result<()> {
    let (program, rest) = command
        .split_first()
        .with_context(|| format!("`{MEASURE_CHILD}` needs a command"))?;
    let status = Command::new(program)
        .args(rest)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .with_context(|| format!("failed to run `{program}`"))?;
    if !status.success() {
        bail!("`{program}` failed: {status}");
    }
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)?;
    let seconds =
        |time: nix::sys::time::TimeVal| time.tv_sec() as f64 + time.tv_usec() as f64 / 1e6;
    // Linux reports ru_maxrss in KiB.
    println!(
        "{} {}",
        seconds(usage.user_time()) + seconds(usage.system_time()),
        usage.max_rss() as u64 * 1024
    );
    Ok(())
}

/// The cost of `command` over `runs` runs, each through this program's [`MEASURE_CHILD`]:
/// the median CPU time and the largest peak memory.
pub fn median_cost(command: &[&str], runs: usize) -> anyhow::Result<ChildCost> {
    let me = std::env::current_exe()?;
    let mut costs = Vec::with_capacity(runs.max(1));
    for _ in 0..runs.max(1) {
        let output = Command::new(&me)
            .arg(MEASURE_CHILD)
            .args(command)
            .output()?;
        if !output.status.success() {
            bail!(
                "measuring `{}` failed: {}",
                command.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        costs.push(parse_cost(&String::from_utf8_lossy(&output.stdout))?);
    }
    costs.sort_by(|a, b| a.cpu_seconds.total_cmp(&b.cpu_seconds));
    let mut median = costs[costs.len() / 2];
    median.peak_rss_bytes = costs.iter().map(|c| c.peak_rss_bytes).max().unwrap_or(0);
    Ok(median)
}

/// The subcommand a benchmark program answers with [`inventory_once`], measured through
/// [`median_cost`].
pub const INVENTORY_ONCE: &str = "inventory-once";

/// One full inventory of this machine and its vitals, as the agent takes them, printing the
/// package count and the inventory's hash (so the work cannot be skipped).
pub fn inventory_once() {
    let root = std::path::Path::new("/");
    let inventory = estate_agent::inventory::collect(root);
    let _ = estate_agent::inventory::vitals(root);
    println!(
        "{} packages, {}",
        inventory.softwares.len(),
        estate_agent::inventory::hash(&inventory)
    );
}

/// Reads the `cpu_seconds peak_rss_bytes` line [`measure_child`] prints.
pub fn parse_cost(line: &str) -> anyhow::Result<ChildCost> {
    let mut fields = line.split_whitespace();
    let mut field = |what: &str| {
        fields
            .next()
            .with_context(|| format!("`{}` has no {what} figure", line.trim()))
    };
    let (cpu, rss) = (field("cpu")?, field("memory")?);
    Ok(ChildCost {
        cpu_seconds: cpu
            .parse()
            .with_context(|| format!("cpu figure `{cpu}` is not a number"))?,
        peak_rss_bytes: rss
            .parse()
            .with_context(|| format!("memory figure `{rss}` is not a number"))?,
    })
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
    fn a_measured_cost_is_read_back() {
        let cost = parse_cost("0.125 4194304\n").unwrap();
        assert_eq!(cost.cpu_seconds, 0.125);
        assert_eq!(cost.peak_rss_bytes, 4 << 20);
        let error = parse_cost("0.125").unwrap_err().to_string();
        assert!(error.contains("memory"), "{error}");
        let error = parse_cost("fast 12").unwrap_err().to_string();
        assert!(error.contains("`fast`"), "{error}");
    }

    #[test]
    fn this_process_can_be_sampled() {
        let me = sample(std::process::id()).unwrap();
        assert!(me.rss_bytes > 0);
        assert!(me.cpu_seconds >= 0.0);
    }
}
