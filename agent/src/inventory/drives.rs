//! The DRIVES section: mounted real filesystems from `/proc/self/mounts`, their size from
//! `statvfs`, label and UUID from `/dev/disk/by-label` and `/dev/disk/by-uuid`. Free space is a
//! vital (it changes all the time), so it is read by [`vitals`] and never kept in the inventory.

use super::source::Source;
use estate_proto::v1::{Drive, HostVitals, Inventory, VolumeUsage};
use std::collections::BTreeMap;

/// Where the mount table is, in order of preference (fixtures may hold either).
const MOUNT_TABLES: &[&str] = &["proc/self/mounts", "proc/mounts"];

/// Filesystems that hold data. Everything else (proc, sysfs, tmpfs, overlay, squashfs,
/// cgroup, ...) is a pseudo or read-only image filesystem and not a drive.
const REAL_FILESYSTEMS: &[&str] = &[
    "ext2",
    "ext3",
    "ext4",
    "xfs",
    "btrfs",
    "vfat",
    "exfat",
    "ntfs",
    "ntfs3",
    "fuseblk",
    "zfs",
    "f2fs",
    "jfs",
    "reiserfs",
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "ceph",
    "glusterfs",
];

/// One line of the mount table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub device: String,
    pub mount_point: String,
    pub filesystem: String,
    pub options: String,
}

pub fn collect(source: &Source, inventory: &mut Inventory, problems: &mut Vec<String>) {
    let mounts = match read_mounts(source) {
        Ok(mounts) => mounts,
        Err(message) => {
            problems.push(message);
            return;
        }
    };
    let labels = disk_links(source, "dev/disk/by-label");
    let uuids = disk_links(source, "dev/disk/by-uuid");
    inventory.drives = mounts
        .into_iter()
        .map(|mount| {
            let kernel_name = device_kernel_name(source, &mount.device);
            Drive {
                total_bytes: space(source, &mount).map_or(0, |space| space.total),
                label: labels.get(&kernel_name).cloned().unwrap_or_default(),
                serial: uuids.get(&kernel_name).cloned().unwrap_or_default(),
                mount: mount.mount_point,
                volumn: mount.device,
                filesystem: mount.filesystem,
                ..Drive::default()
            }
        })
        .collect();
}

pub fn vitals(source: &Source, vitals: &mut HostVitals) {
    let Ok(mounts) = read_mounts(source) else {
        return;
    };
    vitals.volumes = mounts
        .into_iter()
        .filter_map(|mount| {
            let space = space(source, &mount)?;
            Some(VolumeUsage {
                mount: mount.mount_point,
                total_bytes: space.total,
                free_bytes: space.free,
            })
        })
        .collect();
}

/// The real filesystems of the first mount table found, deduplicated and sorted by mount point.
fn read_mounts(source: &Source) -> Result<Vec<Mount>, String> {
    let mut first_error = None;
    for table in MOUNT_TABLES {
        match source.read_text(table) {
            Ok(text) => return Ok(real_mounts(&parse_mounts(&text))),
            Err(message) => {
                first_error.get_or_insert(message);
            }
        }
    }
    Err(first_error.unwrap_or_default())
}

/// Parses `/proc/mounts` lines (`device mount_point type options dump pass`), decoding the
/// octal escapes the kernel writes for spaces and tabs in paths.
pub fn parse_mounts(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            Some(Mount {
                device: unescape_octal(fields.next()?),
                mount_point: unescape_octal(fields.next()?),
                filesystem: fields.next()?.to_string(),
                options: fields.next().unwrap_or_default().to_string(),
            })
        })
        .collect()
}

/// Keeps the real filesystems and drops bind mounts: the same device (and, for btrfs, the same
/// subvolume) mounted twice is one drive, listed where it was mounted first.
pub fn real_mounts(mounts: &[Mount]) -> Vec<Mount> {
    let mut by_volume: BTreeMap<(String, String), Mount> = BTreeMap::new();
    for mount in mounts {
        if !REAL_FILESYSTEMS.contains(&mount.filesystem.as_str()) {
            continue;
        }
        let subvolume = if mount.filesystem == "btrfs" {
            mount
                .options
                .split(',')
                .find(|option| option.starts_with("subvol="))
                .unwrap_or_default()
                .to_string()
        } else {
            String::new()
        };
        // A filesystem is mounted before it can be bound elsewhere: the first line wins.
        let key = (mount.device.clone(), subvolume);
        by_volume.entry(key).or_insert_with(|| mount.clone());
    }
    let mut kept: Vec<Mount> = by_volume.into_values().collect();
    kept.sort_by(|a, b| a.mount_point.cmp(&b.mount_point));
    kept
}

fn unescape_octal(field: &str) -> String {
    if !field.contains('\\') {
        return field.to_string();
    }
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let escape = bytes.get(index + 1..index + 4).filter(|digits| {
            bytes[index] == b'\\' && digits.iter().all(|d| (b'0'..=b'7').contains(d))
        });
        match escape {
            Some(digits) => {
                let value = digits
                    .iter()
                    .fold(0u32, |value, digit| value * 8 + u32::from(digit - b'0'));
                out.push(u8::try_from(value).unwrap_or(b'?'));
                index += 4;
            }
            None => {
                out.push(bytes[index]);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// udev escapes unsafe characters in link names as `\xNN` (`My\x20Disk`).
fn unescape_hex(name: &str) -> String {
    let mut out = Vec::with_capacity(name.len());
    let bytes = name.as_bytes();
    let mut index = 0;
    while index < bytes.len() {
        let hex = bytes
            .get(index..index + 4)
            .filter(|chunk| chunk[0] == b'\\' && chunk[1] == b'x')
            .and_then(|chunk| std::str::from_utf8(&chunk[2..]).ok())
            .and_then(|digits| u8::from_str_radix(digits, 16).ok());
        match hex {
            Some(byte) => {
                out.push(byte);
                index += 4;
            }
            None => {
                out.push(bytes[index]);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The `/dev/disk/by-*` links of the tree: kernel device name (`sda1`) → link name.
fn disk_links(source: &Source, directory: &str) -> BTreeMap<String, String> {
    let Ok(names) = source.list_dir(directory) else {
        return BTreeMap::new();
    };
    names
        .into_iter()
        .filter_map(|name| {
            let device = source.link_name(&format!("{directory}/{name}"))?;
            Some((device, unescape_hex(&name)))
        })
        .collect()
}

/// The kernel name behind a mount's device: `/dev/mapper/vg-root` is a link to `../dm-0`.
fn device_kernel_name(source: &Source, device: &str) -> String {
    let last = |path: &str| path.rsplit('/').next().unwrap_or_default().to_string();
    if !device.starts_with("/dev/") {
        return last(device);
    }
    if let Ok(resolved) = std::fs::canonicalize(source.path(device))
        && resolved.starts_with(source.root().join("dev"))
    {
        return last(&resolved.to_string_lossy());
    }
    source.link_name(device).unwrap_or_else(|| last(device))
}

/// Size and free space of a mounted filesystem, in bytes.
#[derive(Debug, Clone, Copy)]
struct Space {
    total: u64,
    free: u64,
}

/// Network filesystems whose server may not answer: `statvfs` on them runs on its own thread
/// and is given up after [`NETWORK_STATVFS_TIMEOUT`] (the thread stays blocked in the kernel
/// until the server answers; one stuck thread is better than a stuck inventory).
const NETWORK_FILESYSTEMS: &[&str] = &["nfs", "nfs4", "cifs", "smb3", "ceph", "glusterfs"];
const NETWORK_STATVFS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Size and free space of the mounted filesystem; `None` when the mount point is not in the
/// tree (fixture mount points usually are not) or the filesystem does not answer in time.
fn space(source: &Source, mount: &Mount) -> Option<Space> {
    let path = source.path(&mount.mount_point);
    if !NETWORK_FILESYSTEMS.contains(&mount.filesystem.as_str()) {
        return statvfs(&path);
    }
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("estate-statvfs".into())
        .spawn(move || {
            let _ = sender.send(statvfs(&path));
        })
        .ok()?;
    receiver
        .recv_timeout(NETWORK_STATVFS_TIMEOUT)
        .ok()
        .flatten()
}

#[cfg(unix)]
fn statvfs(path: &std::path::Path) -> Option<Space> {
    let stats = rustix::fs::statvfs(path).ok()?;
    Some(Space {
        total: stats.f_blocks.saturating_mul(stats.f_frsize),
        free: stats.f_bavail.saturating_mul(stats.f_frsize),
    })
}

#[cfg(not(unix))]
fn statvfs(_path: &std::path::Path) -> Option<Space> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTS: &str = "\
sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0
/dev/mapper/vg0-root / ext4 rw,relatime,errors=remount-ro 0 0
tmpfs /run tmpfs rw,nosuid,nodev,size=3273548k,mode=755 0 0
/dev/sda1 /var/lib/boot\\040files ext4 rw,relatime 0 0
/dev/sda1 /boot ext4 rw,relatime 0 0
/dev/nvme0n1p1 /srv/My\\040Data xfs rw,relatime 0 0
/dev/sdb2 /home btrfs rw,relatime,subvolid=257,subvol=/@home 0 0
/dev/sdb2 /data btrfs rw,relatime,subvolid=258,subvol=/@data 0 0
/dev/loop0 /snap/core/1 squashfs ro,nodev,relatime 0 0
overlay /var/lib/docker/overlay2/x/merged overlay rw 0 0
fileserver:/export /mnt/nfs nfs4 rw,vers=4.2 0 0
";

    #[test]
    fn real_filesystems_without_bind_mounts() {
        let kept: Vec<(String, String)> = real_mounts(&parse_mounts(MOUNTS))
            .into_iter()
            .map(|mount| (mount.mount_point, mount.device))
            .collect();
        let expect: Vec<(String, String)> = [
            ("/", "/dev/mapper/vg0-root"),
            ("/data", "/dev/sdb2"),
            ("/home", "/dev/sdb2"),
            ("/mnt/nfs", "fileserver:/export"),
            ("/srv/My Data", "/dev/nvme0n1p1"),
            ("/var/lib/boot files", "/dev/sda1"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        assert_eq!(kept, expect);
    }

    #[test]
    fn escapes() {
        assert_eq!(unescape_octal("/a\\040b\\011c\\134d"), "/a b\tc\\d");
        assert_eq!(unescape_octal("/trailing\\04"), "/trailing\\04");
        assert_eq!(unescape_hex("My\\x20Disk"), "My Disk");
        assert_eq!(unescape_hex("bad\\xZZ\\x"), "bad\\xZZ\\x");
    }

    /// udev's escaped link names are decoded; made at test time, since a committed file name
    /// with a backslash is quoted by git and cannot be checked out on Windows.
    #[cfg(unix)]
    #[test]
    fn escaped_label_links_are_decoded() {
        let root = tempfile::tempdir().unwrap();
        let labels = root.path().join("dev/disk/by-label");
        std::fs::create_dir_all(&labels).unwrap();
        std::os::unix::fs::symlink("../../md0", labels.join("PG\\x20DATA")).unwrap();
        let links = disk_links(&Source::new(root.path()), "dev/disk/by-label");
        assert_eq!(links.get("md0").map(String::as_str), Some("PG DATA"));
    }
}
