//! Inventory of the host, in the GLPI vocabulary (see `proto/estate/v1/report.proto`).
//!
//! The generated `estate_proto::v1` types are the data model: every area builds them directly.
//! Each area is one module that reads its sources through [`source::Source`] (so a fixture tree
//! can stand in for `/`) and hands the text to pure parsers. An area that cannot be read becomes
//! a `Problem` in the inventory: `collect` never fails and never panics.
//!
//! The inventory holds only what is stable between runs (its hash changes on real change);
//! figures that move all the time (free memory, free space, boot time, load) are in [`vitals`].

/// The list of areas, each filled by the `collect` function of the module of that name where
/// the list is written: the Linux modules here, the Windows ones in `windows`. One list keeps
/// both platforms reporting the same areas under the same names.
macro_rules! every_area {
    () => {
        &[
            Area {
                name: "bios",
                collect: bios::collect,
            },
            Area {
                name: "cpus",
                collect: cpus::collect,
            },
            Area {
                name: "memories",
                collect: memory::collect,
            },
            Area {
                name: "storages",
                collect: storages::collect,
            },
            Area {
                name: "drives",
                collect: drives::collect,
            },
            Area {
                name: "networks",
                collect: networks::collect,
            },
            Area {
                name: "operatingsystem",
                collect: operatingsystem::collect,
            },
            Area {
                name: "softwares",
                collect: softwares::collect,
            },
            Area {
                name: "users",
                collect: users::collect,
            },
        ]
    };
}

mod bios;
mod cpus;
mod drives;
mod fingerprints;
mod memory;
mod networks;
mod operatingsystem;
mod softwares;
pub mod source;
mod storages;
mod users;
pub mod windows;

use estate_proto::v1::{HostVitals, Inventory, Problem};
use source::Source;
use std::path::Path;

pub use fingerprints::Fingerprints;

/// Builds SMBIOS tables for fixtures and tests (not part of the agent's interface).
#[doc(hidden)]
pub use memory::table_builder as smbios_table_builder;

/// One inventory area: its name (the `area` of its problems, the same on every platform) and
/// the function that fills its part of the inventory from a source `S` (the file tree on
/// Linux, a WMI and registry snapshot on Windows), pushing a message for everything it could
/// not read.
struct Area<S> {
    name: &'static str,
    collect: fn(&S, &mut Inventory, &mut Vec<String>),
}

/// Runs every area over `source`. A bug in one area's parser costs that area, not the whole
/// report: a panic becomes a problem of the area.
fn collect_areas<S>(areas: &[Area<S>], source: &S) -> Inventory {
    let mut inventory = Inventory::default();
    for area in areas {
        let mut messages = Vec::new();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            (area.collect)(source, &mut inventory, &mut messages)
        }));
        if outcome.is_err() {
            messages.push(format!("area `{}` panicked; this is a bug", area.name));
        }
        inventory
            .problems
            .extend(messages.into_iter().map(|message| Problem {
                area: area.name.to_string(),
                message,
            }));
    }
    inventory
}

/// Every Linux area, in one place. The order does not matter: each area writes its own fields.
const AREAS: &[Area<Source>] = every_area!();

/// Collects the full inventory from the filesystem tree at `root` (`/` on a live host).
/// Never fails: an area that cannot be read becomes an entry in `inventory.problems`.
/// On Windows the inventory comes from WMI and the registry and `root` is not used.
pub fn collect(root: &Path) -> Inventory {
    #[cfg(windows)]
    {
        let _ = root;
        windows::inventory_from_snapshot(&windows::read::snapshot())
    }
    #[cfg(not(windows))]
    collect_tree(root)
}

/// The Linux inventory of the tree at `root`, area by area.
#[cfg_attr(windows, allow(dead_code))]
fn collect_tree(root: &Path) -> Inventory {
    collect_areas(AREAS, &Source::new(root))
}

/// Collects the fast-changing figures sent with every report. Sources that cannot be read
/// leave their figure at zero: vitals carry no problems (the inventory reports them).
pub fn vitals(root: &Path) -> HostVitals {
    #[cfg(windows)]
    {
        let _ = root;
        windows::read::vitals()
    }
    #[cfg(not(windows))]
    vitals_of_tree(root)
}

#[cfg_attr(windows, allow(dead_code))]
fn vitals_of_tree(root: &Path) -> HostVitals {
    let source = Source::new(root);
    let mut vitals = HostVitals::default();
    memory::vitals(&source, &mut vitals);
    operatingsystem::vitals(&source, &mut vitals);
    drives::vitals(&source, &mut vitals);
    vitals
}

/// Reads the host fingerprints, reusing what `inventory` already holds.
pub fn fingerprints(root: &Path, inventory: &Inventory) -> Fingerprints {
    #[cfg(windows)]
    {
        let _ = root;
        windows::fingerprints(&windows::read::machine_guid(), inventory)
    }
    #[cfg(not(windows))]
    fingerprints::read(&Source::new(root), inventory)
}

/// The inventory's hash as sent on the wire: `sha256:<hex>` of its protobuf encoding.
/// Stable because every list in the inventory is sorted by `collect`.
pub fn hash(inventory: &Inventory) -> String {
    use prost::Message;
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(inventory.encode_to_vec());
    let mut text = String::with_capacity(7 + 64);
    text.push_str("sha256:");
    for byte in digest {
        text.push_str(&format!("{byte:02x}"));
    }
    text
}
