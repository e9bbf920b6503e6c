//! Shared by the Linux and Windows inventory tests.

use estate_proto::v1::Inventory;

/// Summary lines of the facts both platforms report alike (BIOS, firmware, hardware, CPUs,
/// memory modules), one fact a line, in the form the expected summaries are written in.
pub fn hardware_lines(inventory: &Inventory, mut line: impl FnMut(String)) {
    let bios = inventory.bios.clone().unwrap_or_default();
    let hardware = inventory.hardware.clone().unwrap_or_default();
    line(format!(
        "bios: {:?} {:?} ssn={:?} uuid={:?} sku={:?} tag={:?}",
        bios.smanufacturer, bios.smodel, bios.ssn, bios.uuid, bios.skunumber, bios.assettag
    ));
    line(format!(
        "firmware: {:?} {:?} {:?} board: {:?} {:?} msn={:?}",
        bios.bmanufacturer, bios.bversion, bios.bdate, bios.mmanufacturer, bios.mmodel, bios.msn
    ));
    line(format!(
        "hardware: {:?} {:?} {:?} sockets={} memory={} swap={}",
        hardware.name,
        hardware.chassis_type,
        hardware.vmsystem,
        hardware.sockets,
        hardware.memory_bytes,
        hardware.swap_bytes
    ));
    for cpu in &inventory.cpus {
        line(format!(
            "cpu: {:?} {:?} cores={} threads={} {}MHz family={} model={} stepping={} {}",
            cpu.name,
            cpu.manufacturer,
            cpu.core,
            cpu.thread,
            cpu.speed_mhz,
            cpu.familynumber,
            cpu.model,
            cpu.stepping,
            cpu.arch
        ));
    }
    for memory in &inventory.memories {
        line(format!(
            "memory: {:?} {} {} {}MT/s {:?} {:?} {:?} {:?} slots={}",
            memory.caption,
            memory.r#type,
            memory.capacity_bytes,
            memory.speed_mts,
            memory.description,
            memory.manufacturer,
            memory.model,
            memory.serialnumber,
            memory.numslots
        ));
    }
}
