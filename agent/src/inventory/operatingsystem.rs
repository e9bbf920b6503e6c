//! The OPERATINGSYSTEM section: distribution (`/etc/os-release`), kernel, host and domain names,
//! DNS servers (`/etc/resolv.conf`), time zone, and the boot time and load (which are vitals).

use super::source::{Source, utc_date};
use estate_proto::v1::{Hardware, HostVitals, Inventory, OperatingSystem};

pub fn collect(source: &Source, inventory: &mut Inventory, problems: &mut Vec<String>) {
    let mut os = OperatingSystem::default();

    match source
        .read_text("etc/os-release")
        .or_else(|first| source.read_text("usr/lib/os-release").map_err(|_| first))
    {
        Ok(text) => {
            let release = parse_os_release(&text);
            let field = |key: &str| {
                release
                    .iter()
                    .find(|(name, _)| name == key)
                    .map(|(_, value)| value.clone())
                    .unwrap_or_default()
            };
            os.name = field("NAME");
            os.version = first_non_empty(&[field("VERSION_ID"), field("VERSION")]);
            // Debian's os-release gives only the major version; the point release is here.
            if field("ID") == "debian"
                && let Some(point) = source.read_trimmed("etc/debian_version")
                && point.starts_with(&format!("{}.", os.version))
            {
                os.version = point;
            }
            os.full_name = first_non_empty(&[
                field("PRETTY_NAME"),
                format!("{} {}", field("NAME"), field("VERSION"))
                    .trim()
                    .to_string(),
            ]);
        }
        Err(message) => problems.push(message),
    }

    os.kernel_name = source
        .read_trimmed("proc/sys/kernel/ostype")
        .unwrap_or_default();
    match source.read_text("proc/sys/kernel/osrelease") {
        Ok(text) => os.kernel_version = text.trim().to_string(),
        Err(message) => problems.push(message),
    }
    os.arch = super::cpus::arch(source);

    os.hostname = hostname(source).unwrap_or_else(|| {
        problems.push(format!(
            "no host name in `{}` nor `{}`",
            source.path("proc/sys/kernel/hostname").display(),
            source.path("etc/hostname").display()
        ));
        String::new()
    });

    let resolv = read_resolv_conf(source);
    os.dns_servers = resolv.nameservers.clone();
    let nis_domain = source
        .read_trimmed("proc/sys/kernel/domainname")
        .filter(|domain| domain != "(none)")
        .unwrap_or_default();
    let hosts = source.read_text("etc/hosts").unwrap_or_default();
    os.fqdn = fqdn(&os.hostname, &hosts, &resolv, &nis_domain);
    os.dns_domain = os
        .fqdn
        .split_once('.')
        .map(|(_, domain)| domain.to_string())
        .unwrap_or_default();
    os.timezone = timezone(source);
    os.install_date = install_date(source);

    inventory
        .hardware
        .get_or_insert_with(Hardware::default)
        .name = os.hostname.clone();
    inventory.operatingsystem = Some(os);
}

pub fn vitals(source: &Source, vitals: &mut HostVitals) {
    if let Ok(text) = source.read_text("proc/stat") {
        vitals.boot_time_unix = boot_time(&text).unwrap_or(0);
    }
    if let Some(text) = source.read_trimmed("proc/loadavg") {
        vitals.load1 = text
            .split_whitespace()
            .next()
            .and_then(|load| load.parse().ok())
            .unwrap_or(0.0);
    }
}

/// The short host name the kernel uses (the UTS name), falling back to `/etc/hostname`.
pub fn hostname(source: &Source) -> Option<String> {
    source
        .read_trimmed("proc/sys/kernel/hostname")
        .or_else(|| source.read_trimmed("etc/hostname"))
        .filter(|name| name != "(none)")
}

fn first_non_empty(values: &[String]) -> String {
    values
        .iter()
        .find(|value| !value.is_empty())
        .cloned()
        .unwrap_or_default()
}

/// `KEY=value` pairs of an os-release file, with shell quoting removed.
pub fn parse_os_release(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .filter_map(|line| {
            let (key, value) = line.split_once('=')?;
            Some((key.trim().to_string(), unquote(value.trim())))
        })
        .collect()
}

fn unquote(value: &str) -> String {
    let quoted =
        |quote: char| value.len() >= 2 && value.starts_with(quote) && value.ends_with(quote);
    if quoted('\'') {
        return value[1..value.len() - 1].to_string();
    }
    let inner = if quoted('"') {
        &value[1..value.len() - 1]
    } else {
        value
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            out.extend(chars.next());
        } else {
            out.push(c);
        }
    }
    out
}

/// What `/etc/resolv.conf` says.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ResolvConf {
    pub nameservers: Vec<String>,
    pub domain: String,
    pub search: Vec<String>,
}

pub fn parse_resolv_conf(text: &str) -> ResolvConf {
    let mut resolv = ResolvConf::default();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or_default();
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => resolv.nameservers.extend(words.next().map(str::to_string)),
            Some("domain") => resolv.domain = words.next().unwrap_or_default().to_string(),
            Some("search") => resolv.search = words.map(str::to_string).collect(),
            _ => {}
        }
    }
    resolv
}

/// resolv.conf, looking behind systemd-resolved's stub (127.0.0.53) for the real servers.
fn read_resolv_conf(source: &Source) -> ResolvConf {
    let Ok(text) = source.read_text("etc/resolv.conf") else {
        return ResolvConf::default();
    };
    let resolv = parse_resolv_conf(&text);
    let only_stub = !resolv.nameservers.is_empty()
        && resolv
            .nameservers
            .iter()
            .all(|server| server == "127.0.0.53");
    if only_stub && let Ok(upstream) = source.read_text("run/systemd/resolve/resolv.conf") {
        let upstream = parse_resolv_conf(&upstream);
        return ResolvConf {
            nameservers: upstream.nameservers,
            domain: first_non_empty(&[resolv.domain, upstream.domain]),
            search: if resolv.search.is_empty() {
                upstream.search
            } else {
                resolv.search
            },
        };
    }
    resolv
}

/// The fully qualified name: the host name when it has dots; else the first dotted name on the
/// `/etc/hosts` line that lists the host name; else the host name in resolv.conf's domain (or
/// first search domain, or the kernel's NIS domain as a last resort).
pub fn fqdn(hostname: &str, hosts: &str, resolv: &ResolvConf, nis_domain: &str) -> String {
    if hostname.is_empty() || hostname.contains('.') {
        return hostname.to_string();
    }
    for line in hosts.lines() {
        let line = line.split('#').next().unwrap_or_default();
        let names: Vec<&str> = line.split_whitespace().skip(1).collect();
        if names.iter().any(|name| name.eq_ignore_ascii_case(hostname))
            && let Some(dotted) = names.iter().find(|name| {
                name.contains('.')
                    && name
                        .split('.')
                        .next()
                        .is_some_and(|first| first.eq_ignore_ascii_case(hostname))
            })
        {
            return dotted.to_string();
        }
    }
    let domain = [resolv.domain.as_str()]
        .into_iter()
        .chain(resolv.search.first().map(String::as_str))
        .chain([nis_domain])
        .find(|domain| !domain.is_empty() && *domain != ".");
    match domain {
        Some(domain) => format!("{hostname}.{}", domain.trim_end_matches('.')),
        None => hostname.to_string(),
    }
}

/// The IANA zone: Debian's `/etc/timezone`, or the `/etc/localtime` link target's tail.
fn timezone(source: &Source) -> String {
    if let Some(zone) = source.read_trimmed("etc/timezone") {
        return zone;
    }
    source
        .link_target("etc/localtime")
        .map(|target| zone_from_localtime_target(&target))
        .unwrap_or_default()
}

pub fn zone_from_localtime_target(target: &str) -> String {
    target
        .split_once("zoneinfo/")
        .map(|(_, zone)| zone.trim_start_matches("posix/").to_string())
        .unwrap_or_default()
}

/// The date the system was installed, when an installer left an obvious trace: Debian's
/// installer logs (`/var/log/installer`) or Anaconda's kickstart (`/root/anaconda-ks.cfg`).
/// Otherwise empty rather than a guess.
fn install_date(source: &Source) -> String {
    ["var/log/installer", "root/anaconda-ks.cfg"]
        .iter()
        .find_map(|trace| source.modified_unix(trace))
        .map(utc_date)
        .unwrap_or_default()
}

/// `btime` of `/proc/stat`: the boot time as a Unix time.
pub fn boot_time(stat: &str) -> Option<i64> {
    stat.lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|value| value.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_quoting() {
        let release = parse_os_release(
            "NAME=\"Debian GNU/Linux\"\nVERSION_ID='12'\n# comment\nPRETTY_NAME=\"A \\\"quoted\\\" name\"\nID=debian\n",
        );
        let get = |key: &str| {
            release
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("NAME"), Some("Debian GNU/Linux"));
        assert_eq!(get("VERSION_ID"), Some("12"));
        assert_eq!(get("PRETTY_NAME"), Some("A \"quoted\" name"));
        assert_eq!(get("ID"), Some("debian"));
    }

    #[test]
    fn fqdn_sources_in_order() {
        let resolv =
            parse_resolv_conf("search corp.example.com example.com\nnameserver 10.0.0.53\n");
        let hosts = "127.0.0.1 localhost\n10.0.0.2 web01.corp.example.com web01 # main\n";
        let check = |hostname, hosts, resolv: &ResolvConf, nis, expect| {
            assert_eq!(fqdn(hostname, hosts, resolv, nis), expect, "{hostname}");
        };
        check("web01", hosts, &resolv, "", "web01.corp.example.com");
        check("db01", hosts, &resolv, "", "db01.corp.example.com");
        check(
            "db01",
            "",
            &ResolvConf::default(),
            "nis.example",
            "db01.nis.example",
        );
        check("db01", "", &ResolvConf::default(), "", "db01");
        check("app.example.org", "", &resolv, "", "app.example.org");
        check("", "", &resolv, "", "");
    }

    #[test]
    fn resolv_conf() {
        let resolv = parse_resolv_conf(
            "# generated\nnameserver 10.0.0.53\nnameserver 2001:db8::53 # v6\ndomain corp.example.com\noptions edns0\n",
        );
        assert_eq!(resolv.nameservers, ["10.0.0.53", "2001:db8::53"]);
        assert_eq!(resolv.domain, "corp.example.com");
    }

    #[test]
    fn time_zone_and_boot_time() {
        assert_eq!(
            zone_from_localtime_target("/usr/share/zoneinfo/Europe/Paris"),
            "Europe/Paris"
        );
        assert_eq!(
            zone_from_localtime_target("../usr/share/zoneinfo/posix/UTC"),
            "UTC"
        );
        assert_eq!(zone_from_localtime_target("/etc/elsewhere"), "");
        assert_eq!(
            boot_time("cpu  1 2 3\nbtime 1714000000\nprocesses 5\n"),
            Some(1_714_000_000)
        );
        assert_eq!(boot_time("cpu 1\n"), None);
    }
}
