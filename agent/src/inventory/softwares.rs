//! The SOFTWARES section: installed packages from dpkg's status file (parsed here) and from the
//! rpm database (through the `rpm` program, whose output is parsed here).

use super::source::{Source, utc_date};
use estate_proto::v1::{Inventory, Software};
use std::path::Path;

const DPKG_STATUS: &str = "var/lib/dpkg/status";
/// Where rpm keeps its database: the classic place, and the one of newer Fedora and SUSE.
const RPM_DATABASES: &[&str] = &["var/lib/rpm", "usr/lib/sysimage/rpm"];
/// The `rpm --queryformat`: one tab-separated line per package.
pub const RPM_QUERY_FORMAT: &str = "%{NAME}\\t%{EPOCHNUM}:%{VERSION}-%{RELEASE}\\t%{ARCH}\\t%{INSTALLTIME}\\t%{VENDOR}\\t%{SIZE}\\n";

pub fn collect(source: &Source, inventory: &mut Inventory, problems: &mut Vec<String>) {
    let mut softwares = Vec::new();
    let mut found_database = false;

    if source.exists(DPKG_STATUS) {
        found_database = true;
        match source.read_text(DPKG_STATUS) {
            Ok(text) => {
                let mut packages = parse_dpkg_status(&text);
                for package in &mut packages {
                    package.installdate = dpkg_install_date(source, &package.name, &package.arch);
                }
                softwares.extend(packages);
            }
            Err(message) => problems.push(message),
        }
    }

    if let Some(database) = RPM_DATABASES.iter().find(|path| source.is_dir(path)) {
        found_database = true;
        match query_rpm(source.root(), std::env::var_os("PATH").as_deref()) {
            Ok(text) => softwares.extend(parse_rpm_query(&text)),
            Err(reason) => problems.push(format!(
                "rpm database `{}` present but {reason}",
                source.path(database).display()
            )),
        }
    }

    if !found_database {
        problems.push(format!(
            "no package database found (`{}`, `{}`)",
            source.path(DPKG_STATUS).display(),
            source.path(RPM_DATABASES[0]).display()
        ));
    }
    sort_softwares(&mut softwares);
    inventory.softwares = softwares;
}

/// Sorted by name, architecture and version (several kernels of one name may be installed),
/// so the inventory's hash does not depend on the database's order.
pub fn sort_softwares(softwares: &mut [Software]) {
    softwares.sort_by(|a, b| {
        (&a.name, &a.arch, &a.version, &a.from).cmp(&(&b.name, &b.arch, &b.version, &b.from))
    });
}

/// The installed packages of a dpkg status file. Only `install ok installed` stanzas count
/// (removed-but-configured packages keep a stanza too). One pass, no allocation per line.
pub fn parse_dpkg_status(text: &str) -> Vec<Software> {
    let mut softwares = Vec::new();
    let mut current = Software::default();
    let mut installed = false;
    // A trailing empty line closes the last stanza even when the file does not end with one.
    for line in text.lines().chain([""]) {
        if line.is_empty() {
            let package = std::mem::take(&mut current);
            if std::mem::take(&mut installed) && !package.name.is_empty() {
                softwares.push(Software {
                    from: "dpkg".to_string(),
                    ..package
                });
            }
            continue;
        }
        // Continuation lines (long descriptions, conffiles) start with a space.
        if line.starts_with([' ', '\t']) {
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key {
            "Package" => current.name = value.to_string(),
            "Status" => installed = value == "install ok installed",
            "Version" => current.version = value.to_string(),
            "Architecture" => current.arch = value.to_string(),
            "Maintainer" => current.publisher = maintainer_name(value).to_string(),
            "Installed-Size" => {
                current.filesize_bytes = value.parse::<u64>().unwrap_or(0).saturating_mul(1024)
            }
            _ => {}
        }
    }
    softwares
}

/// `Debian Perl Group <pkg-perl-maintainers@lists.alioth.debian.org>` → `Debian Perl Group`:
/// the publisher is an organisation; the mailing list address is noise in an inventory.
fn maintainer_name(maintainer: &str) -> &str {
    match maintainer.split_once('<') {
        Some((name, _)) if !name.trim().is_empty() => name.trim(),
        _ => maintainer,
    }
}

/// dpkg keeps no install time; the file list written at installation is the best witness.
/// Multi-arch packages name it `<package>:<arch>.list`.
fn dpkg_install_date(source: &Source, name: &str, arch: &str) -> String {
    [
        format!("var/lib/dpkg/info/{name}.list"),
        format!("var/lib/dpkg/info/{name}:{arch}.list"),
    ]
    .iter()
    .find_map(|list| source.modified_unix(list))
    .map(utc_date)
    .unwrap_or_default()
}

/// Runs `rpm -qa` against the tree and returns its output, or why it could not.
fn query_rpm(root: &Path, path_variable: Option<&std::ffi::OsStr>) -> Result<String, String> {
    let Some(rpm) = find_program("rpm", path_variable) else {
        return Err("no `rpm` program on PATH".to_string());
    };
    let output = std::process::Command::new(&rpm)
        .arg("--root")
        .arg(root)
        .args([
            "-qa",
            "--qf",
            &RPM_QUERY_FORMAT.replace("\\t", "\t").replace("\\n", "\n"),
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|error| format!("`{}` could not run: {error}", rpm.display()))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(format!(
            "`{}` failed with {}: {}",
            rpm.display(),
            output.status,
            stderr.lines().next().unwrap_or_default()
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The first executable file called `name` in the directories of a `PATH` value.
pub fn find_program(
    name: &str,
    path_variable: Option<&std::ffi::OsStr>,
) -> Option<std::path::PathBuf> {
    std::env::split_paths(path_variable?)
        .map(|directory| directory.join(name))
        .find(|candidate| candidate.is_file())
}

/// Parses the output of `rpm -qa --qf RPM_QUERY_FORMAT`.
pub fn parse_rpm_query(text: &str) -> Vec<Software> {
    let none = |value: &str| {
        if value == "(none)" {
            String::new()
        } else {
            value.to_string()
        }
    };
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split('\t').collect();
            let [name, version, arch, install_time, vendor, size] = fields.as_slice() else {
                return None;
            };
            // EPOCHNUM prints 0 when the package has no epoch: `0:` is then noise.
            let version = version.strip_prefix("0:").unwrap_or(version);
            Some(Software {
                name: name.to_string(),
                version: version.to_string(),
                arch: none(arch),
                installdate: install_time
                    .parse::<i64>()
                    .ok()
                    .filter(|time| *time > 0)
                    .map(utc_date)
                    .unwrap_or_default(),
                publisher: none(vendor),
                from: "rpm".to_string(),
                filesize_bytes: size.parse().unwrap_or(0),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "\
Package: zlib1g
Status: install ok installed
Priority: required
Installed-Size: 168
Maintainer: Mark Brown <broonie@debian.org>
Architecture: amd64
Multi-Arch: same
Version: 1:1.2.13.dfsg-1
Description: compression library - runtime
 zlib is a library implementing the deflate compression method found
 in gzip and PKZIP.

Package: old-tool
Status: deinstall ok config-files
Version: 1.0
Architecture: all

Package: bash
Essential: yes
Status: install ok installed
Installed-Size: 7164
Maintainer: Matthias Klose <doko@debian.org>
Architecture: amd64
Version: 5.2.15-2+b2
";

    #[test]
    fn dpkg_status_installed_only() {
        let mut packages = parse_dpkg_status(STATUS);
        sort_softwares(&mut packages);
        assert_eq!(packages.len(), 2);
        assert_eq!(
            packages[1],
            Software {
                name: "zlib1g".into(),
                version: "1:1.2.13.dfsg-1".into(),
                arch: "amd64".into(),
                installdate: String::new(),
                publisher: "Mark Brown".into(),
                from: "dpkg".into(),
                filesize_bytes: 168 * 1024,
            }
        );
        assert_eq!(packages[0].name, "bash");
    }

    #[test]
    fn large_status_files_parse_quickly() {
        let stanza = |n: usize| {
            format!(
                "Package: package-{n}\nStatus: install ok installed\nInstalled-Size: {n}\n\
                 Maintainer: Someone <a@b>\nArchitecture: amd64\nVersion: 1.{n}\n\
                 Description: a package\n line one\n line two\n\n"
            )
        };
        let text: String = (0..3000).map(stanza).collect();
        let started = std::time::Instant::now();
        let packages = parse_dpkg_status(&text);
        assert_eq!(packages.len(), 3000);
        // Not a benchmark: only a guard against accidental quadratic parsing.
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn rpm_query_lines() {
        let text = "bash\t0:5.1.8-9.el9\tx86_64\t1714000000\tRed Hat, Inc.\t7738634\n\
                    gpg-pubkey\t0:fd431d51-4ae0493b\t(none)\t1714000001\t(none)\t0\n\
                    perl-Time-HiRes\t4:1.9764-462.el9\tx86_64\t0\tRed Hat, Inc.\t118000\n\
                    broken line\n";
        let packages = parse_rpm_query(text);
        assert_eq!(packages.len(), 3);
        assert_eq!(packages[0].version, "5.1.8-9.el9");
        assert_eq!(packages[0].installdate, "2024-04-24");
        assert_eq!(packages[0].filesize_bytes, 7_738_634);
        assert_eq!(packages[1].arch, "");
        assert_eq!(packages[1].publisher, "");
        assert_eq!(packages[2].version, "4:1.9764-462.el9");
        assert_eq!(packages[2].installdate, "");
    }

    /// `rpm -qa` output of the `vmware-guest` fixture (RHEL 8, two kernels, multilib glibc).
    #[test]
    fn rpm_fixture_output() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/inventory/vmware-guest.rpm-qa.txt");
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let mut packages = parse_rpm_query(&text);
        sort_softwares(&mut packages);
        let summary: Vec<String> = packages
            .iter()
            .map(|p| {
                format!(
                    "{} {} {} {} {:?}",
                    p.name, p.version, p.arch, p.installdate, p.publisher
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                "bash 4.4.20-4.el8_6 x86_64 2024-04-25 \"Red Hat, Inc.\"",
                "glibc 2.28-236.el8 i686 2024-04-25 \"Red Hat, Inc.\"",
                "glibc 2.28-236.el8 x86_64 2024-04-25 \"Red Hat, Inc.\"",
                "gpg-pubkey fd431d51-4ae0493b  2024-04-25 \"\"",
                "kernel 4.18.0-477.27.1.el8_8 x86_64 2023-11-14 \"Red Hat, Inc.\"",
                "kernel 4.18.0-513.5.1.el8_9 x86_64 2024-04-25 \"Red Hat, Inc.\"",
                "open-vm-tools 12.2.5-3.el8 x86_64 2024-04-25 \"Red Hat, Inc.\"",
                "perl-Time-HiRes 4:1.9758-2.el8 x86_64 2024-04-25 \"Red Hat, Inc.\"",
            ]
        );
        assert!(packages.iter().all(|p| p.from == "rpm"));
        assert_eq!(packages[0].filesize_bytes, 7_050_374);
    }

    #[test]
    fn rpm_database_without_rpm_program_is_a_problem() {
        let empty_path = std::ffi::OsString::from("/nonexistent-estate-bin");
        assert_eq!(find_program("rpm", Some(&empty_path)), None);
        let error = query_rpm(Path::new("/"), Some(&empty_path)).unwrap_err();
        assert_eq!(error, "no `rpm` program on PATH");
        assert_eq!(find_program("rpm", None), None);
    }
}
