//! CPUS from `Win32_Processor`: one instance per socket, as on Linux.

use super::Snapshot;
use super::values::Props;
use estate_proto::v1::{Cpu, Inventory};

pub fn collect(snapshot: &Snapshot, inventory: &mut Inventory, problems: &mut Vec<String>) {
    let rows = snapshot.rows_or_problem("Win32_Processor", problems);
    let mut cpus: Vec<(String, Cpu)> = rows
        .iter()
        .map(|row| {
            let processor = Props::new("Win32_Processor", row);
            let signature = cpuid_signature(&processor.text("Caption"));
            let cpu = Cpu {
                name: processor
                    .text("Name")
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" "),
                manufacturer: crate::inventory::cpus::x86_vendor(&processor.text("Manufacturer"))
                    .to_string(),
                core: processor.unsigned32("NumberOfCores", problems).unwrap_or(0),
                thread: processor
                    .unsigned32("NumberOfLogicalProcessors", problems)
                    .unwrap_or(0),
                speed_mhz: processor.unsigned32("MaxClockSpeed", problems).unwrap_or(0),
                familynumber: signature.family,
                model: signature.model,
                stepping: signature.stepping,
                arch: processor
                    .unsigned32("Architecture", problems)
                    .map(architecture)
                    .unwrap_or_default()
                    .to_string(),
            };
            (processor.text("DeviceID"), cpu)
        })
        .collect();
    cpus.sort_by(|a, b| a.0.cmp(&b.0));
    inventory.cpus = cpus.into_iter().map(|(_, cpu)| cpu).collect();
}

/// The CPUID family, model and stepping, in decimal as Linux's `/proc/cpuinfo` gives them.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CpuidSignature {
    pub family: String,
    pub model: String,
    pub stepping: String,
}

/// Reads `Intel64 Family 6 Model 85 Stepping 7` (the `Caption`; `Win32_Processor.Family` is
/// a CIM code such as 179, not the CPUID family).
pub fn cpuid_signature(caption: &str) -> CpuidSignature {
    let words: Vec<&str> = caption.split_whitespace().collect();
    let after = |label: &str| {
        words
            .windows(2)
            .find(|pair| pair[0].eq_ignore_ascii_case(label))
            .map(|pair| pair[1].to_string())
            .unwrap_or_default()
    };
    CpuidSignature {
        family: after("Family"),
        model: after("Model"),
        stepping: after("Stepping"),
    }
}

/// `Win32_Processor.Architecture` in the names `uname -m` uses.
pub fn architecture(code: u32) -> &'static str {
    match code {
        0 => "i686",
        5 => "arm",
        6 => "ia64",
        9 => "x86_64",
        12 => "aarch64",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpuid_signature_from_the_caption() {
        assert_eq!(
            cpuid_signature("Intel64 Family 6 Model 85 Stepping 7"),
            CpuidSignature {
                family: "6".into(),
                model: "85".into(),
                stepping: "7".into()
            }
        );
        assert_eq!(
            cpuid_signature("AMD64 Family 25 Model 33 Stepping 0").family,
            "25"
        );
        assert_eq!(cpuid_signature(""), CpuidSignature::default());
    }
}
