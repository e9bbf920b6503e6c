//! Inventory of the host, in the GLPI vocabulary (see `proto/estate/v1/report.proto`).
//!
//! INTERFACE STUB: the real readers are being written; the signatures below are the contract.

use estate_proto::v1::{HostVitals, Inventory};
use std::path::Path;

/// The host fingerprints that go into `HostIdentity` (everything but the agent id).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fingerprints {
    pub hostname: String,
    pub machine_id: String,
    pub smbios_uuid: String,
    pub serial_number: String,
    pub primary_mac: String,
}

/// Collects the full inventory from the filesystem tree at `root` (`/` on a live host).
/// Never fails: an area that cannot be read becomes an entry in `inventory.problems`.
pub fn collect(_root: &Path) -> Inventory {
    Inventory::default()
}

/// Collects the fast-changing figures sent with every report.
pub fn vitals(_root: &Path) -> HostVitals {
    HostVitals::default()
}

/// Reads the host fingerprints, reusing what `inventory` already holds.
pub fn fingerprints(_root: &Path, _inventory: &Inventory) -> Fingerprints {
    Fingerprints::default()
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
