//! The CPUS section: one entry per socket from `/proc/cpuinfo` (x86 and aarch64 layouts), the
//! maximum frequency from cpufreq, and the machine architecture.

use super::source::Source;
use estate_proto::v1::{Cpu, Hardware, Inventory};
use std::collections::{BTreeMap, BTreeSet};

const MAX_FREQ_KHZ: &str = "sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq";

pub fn collect(source: &Source, inventory: &mut Inventory, problems: &mut Vec<String>) {
    let text = match source.read_text("proc/cpuinfo") {
        Ok(text) => text,
        Err(message) => {
            problems.push(message);
            return;
        }
    };
    let max_mhz = source
        .read_trimmed(MAX_FREQ_KHZ)
        .and_then(|khz| khz.parse::<u64>().ok())
        .map(|khz| u32::try_from(khz / 1000).unwrap_or(u32::MAX));
    let arch = arch(source);
    let mut cpus = parse_cpuinfo(&text, max_mhz, &arch);
    if cpus.is_empty() {
        problems.push(format!(
            "no processor found in `{}`",
            source.path("proc/cpuinfo").display()
        ));
    }
    let hardware = inventory.hardware.get_or_insert_with(Hardware::default);
    hardware.sockets = u32::try_from(cpus.len()).unwrap_or(u32::MAX);
    inventory.cpus.append(&mut cpus);
}

/// The machine architecture: `/proc/sys/kernel/arch` when the kernel has it, else (on a live
/// host only, since a fixture tree may be another machine) the agent's own.
pub fn arch(source: &Source) -> String {
    if let Some(arch) = source.read_trimmed("proc/sys/kernel/arch") {
        return arch;
    }
    if source.is_live() {
        return std::env::consts::ARCH.to_string();
    }
    String::new()
}

/// True when `/proc/cpuinfo` lists the `hypervisor` flag (the CPU runs under a hypervisor).
pub fn has_hypervisor_flag(cpuinfo: &str) -> bool {
    cpuinfo.lines().any(|line| {
        split_field(line).is_some_and(|(key, value)| {
            key == "flags" && value.split_whitespace().any(|flag| flag == "hypervisor")
        })
    })
}

fn split_field(line: &str) -> Option<(&str, &str)> {
    let (key, value) = line.split_once(':')?;
    Some((key.trim(), value.trim()))
}

/// One logical processor as `/proc/cpuinfo` describes it.
#[derive(Debug, Default)]
struct Processor<'a> {
    fields: BTreeMap<&'a str, &'a str>,
}

impl<'a> Processor<'a> {
    fn get(&self, key: &str) -> Option<&'a str> {
        self.fields
            .get(key)
            .copied()
            .filter(|value| !value.is_empty())
    }
}

/// Groups the logical processors of `cpuinfo` by socket (`physical id`, all in socket 0 when
/// the kernel does not say, as on most aarch64 machines).
pub fn parse_cpuinfo(cpuinfo: &str, max_mhz: Option<u32>, arch: &str) -> Vec<Cpu> {
    let mut processors: Vec<Processor<'_>> = Vec::new();
    let mut current = Processor::default();
    // Fields outside processor blocks (aarch64 `Hardware`, s390 headers) apply to all.
    let mut shared: BTreeMap<&str, &str> = BTreeMap::new();
    for line in cpuinfo.lines() {
        if line.trim().is_empty() {
            if !current.fields.is_empty() {
                processors.push(std::mem::take(&mut current));
            }
            continue;
        }
        if let Some((key, value)) = split_field(line) {
            current.fields.insert(key, value);
        }
    }
    if !current.fields.is_empty() {
        processors.push(current);
    }
    // A logical processor block starts with `processor : <number>`; anything else is a header
    // shared by all processors, or garbage.
    processors.retain(|processor| {
        if processor
            .fields
            .get("processor")
            .is_some_and(|number| number.parse::<u32>().is_ok())
        {
            true
        } else {
            shared.extend(processor.fields.iter().map(|(k, v)| (*k, *v)));
            false
        }
    });

    let mut sockets: BTreeMap<u32, Vec<&Processor<'_>>> = BTreeMap::new();
    for processor in &processors {
        let socket = processor
            .get("physical id")
            .and_then(|id| id.parse().ok())
            .unwrap_or(0);
        sockets.entry(socket).or_default().push(processor);
    }

    sockets
        .values()
        .map(|threads| {
            let first = threads[0];
            let field = |key: &str| first.get(key).or_else(|| shared.get(key).copied());
            let thread_count = u32::try_from(threads.len()).unwrap_or(u32::MAX);
            let distinct_cores: BTreeSet<&str> =
                threads.iter().filter_map(|p| p.get("core id")).collect();
            let cores = field("cpu cores")
                .and_then(|cores| cores.parse().ok())
                .or_else(|| (!distinct_cores.is_empty()).then_some(distinct_cores.len() as u32))
                .unwrap_or(thread_count);
            let threads_of_socket = field("siblings")
                .and_then(|siblings| siblings.parse().ok())
                .unwrap_or(thread_count);
            let current_mhz = field("cpu MHz")
                .and_then(|mhz| mhz.parse::<f64>().ok())
                .map(|mhz| mhz.round() as u32);
            let implementer = field("CPU implementer");
            Cpu {
                name: field("model name")
                    .or_else(|| field("Processor"))
                    .or_else(|| field("cpu model"))
                    .or_else(|| field("Hardware"))
                    .map(collapse_spaces)
                    .or_else(|| implementer.map(arm_implementer).map(str::to_string))
                    .unwrap_or_default(),
                manufacturer: field("vendor_id")
                    .map(x86_vendor)
                    .or_else(|| implementer.map(arm_implementer))
                    .unwrap_or_default()
                    .to_string(),
                core: cores,
                thread: threads_of_socket,
                speed_mhz: max_mhz.or(current_mhz).unwrap_or(0),
                familynumber: field("cpu family")
                    .or_else(|| field("CPU architecture"))
                    .unwrap_or_default()
                    .to_string(),
                model: field("model")
                    .or_else(|| field("CPU part"))
                    .unwrap_or_default()
                    .to_string(),
                stepping: field("stepping")
                    .or_else(|| field("CPU revision"))
                    .unwrap_or_default()
                    .to_string(),
                arch: arch.to_string(),
            }
        })
        .collect()
}

fn collapse_spaces(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

pub fn x86_vendor(vendor_id: &str) -> &str {
    match vendor_id {
        "GenuineIntel" => "Intel",
        "AuthenticAMD" => "AMD",
        "HygonGenuine" => "Hygon",
        "CentaurHauls" | "Shanghai" => "Zhaoxin",
        other => other,
    }
}

/// The ARM `CPU implementer` code (`0x41`) as a company name.
fn arm_implementer(code: &str) -> &str {
    match code.to_ascii_lowercase().as_str() {
        "0x41" => "ARM",
        "0x42" => "Broadcom",
        "0x43" => "Cavium",
        "0x46" => "Fujitsu",
        "0x48" => "HiSilicon",
        "0x4e" => "NVIDIA",
        "0x50" => "Applied Micro",
        "0x51" => "Qualcomm",
        "0x53" => "Samsung",
        "0x56" => "Marvell",
        "0x61" => "Apple",
        "0x69" => "Intel",
        "0xc0" => "Ampere",
        _ => code,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x86_block(processor: u32, physical: u32, core: u32) -> String {
        format!(
            "processor\t: {processor}\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 85\n\
             model name\t: Intel(R) Xeon(R) Gold 6130 CPU @ 2.10GHz\nstepping\t: 4\n\
             cpu MHz\t\t: 2095.078\nphysical id\t: {physical}\nsiblings\t: 4\ncore id\t\t: {core}\n\
             cpu cores\t: 2\nflags\t\t: fpu vme sse2\n\n"
        )
    }

    #[test]
    fn two_sockets_of_two_cores_with_hyperthreading() {
        let mut text = String::new();
        let mut processor = 0;
        for physical in 0..2 {
            for core in 0..2 {
                for _thread in 0..2 {
                    text.push_str(&x86_block(processor, physical, core));
                    processor += 1;
                }
            }
        }
        let cpus = parse_cpuinfo(&text, None, "x86_64");
        assert_eq!(cpus.len(), 2);
        let expected = Cpu {
            name: "Intel(R) Xeon(R) Gold 6130 CPU @ 2.10GHz".into(),
            manufacturer: "Intel".into(),
            core: 2,
            thread: 4,
            speed_mhz: 2095,
            familynumber: "6".into(),
            model: "85".into(),
            stepping: "4".into(),
            arch: "x86_64".into(),
        };
        assert_eq!(cpus[0], expected);
        assert_eq!(cpus[1], expected);
        assert_eq!(
            parse_cpuinfo(&text, Some(3700), "x86_64")[0].speed_mhz,
            3700
        );
        assert!(!has_hypervisor_flag(&text));
    }

    #[test]
    fn aarch64_cpuinfo_without_model_name() {
        let block = |n| {
            format!(
                "processor\t: {n}\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm\n\
                 CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x3\n\
                 CPU part\t: 0xd0c\nCPU revision\t: 1\n\n"
            )
        };
        let text: String = (0..4).map(block).collect();
        let cpus = parse_cpuinfo(&text, None, "aarch64");
        assert_eq!(cpus.len(), 1);
        assert_eq!(cpus[0].name, "ARM");
        assert_eq!(cpus[0].manufacturer, "ARM");
        assert_eq!((cpus[0].core, cpus[0].thread), (4, 4));
        assert_eq!(cpus[0].familynumber, "8");
        assert_eq!(cpus[0].model, "0xd0c");
        assert_eq!(cpus[0].stepping, "1");
        assert_eq!(cpus[0].speed_mhz, 0);
    }

    #[test]
    fn garbage_gives_no_cpu_and_no_panic() {
        assert!(parse_cpuinfo("", None, "").is_empty());
        assert!(parse_cpuinfo("\u{0}\u{1}:::\n\n:\n", None, "").is_empty());
    }

    #[test]
    fn hypervisor_flag() {
        assert!(has_hypervisor_flag("flags\t: fpu hypervisor lahf_lm\n"));
        assert!(!has_hypervisor_flag("flags\t: fpu hypervisorx\n"));
    }
}
