//! The local users section: root and the human accounts of `/etc/passwd` (uid 0 and uids from
//! `UID_MIN` of `/etc/login.defs`), without `nobody`.

use super::source::Source;
use estate_proto::v1::{Inventory, LocalUser};

const DEFAULT_UID_MIN: u32 = 1000;
const NOBODY_UID: u32 = 65534;

pub fn collect(source: &Source, inventory: &mut Inventory, problems: &mut Vec<String>) {
    let uid_min = source
        .read_text("etc/login.defs")
        .ok()
        .and_then(|text| login_defs_uid_min(&text))
        .unwrap_or(DEFAULT_UID_MIN);
    match source.read_text("etc/passwd") {
        Ok(text) => inventory.local_users = parse_passwd(&text, uid_min),
        Err(message) => problems.push(message),
    }
}

pub fn login_defs_uid_min(text: &str) -> Option<u32> {
    text.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        (words.next()? == "UID_MIN").then(|| words.next()?.parse().ok())?
    })
}

/// The accounts of a passwd file that are people (or root), sorted by uid then login.
pub fn parse_passwd(text: &str, uid_min: u32) -> Vec<LocalUser> {
    let mut users: Vec<LocalUser> = text
        .lines()
        .filter(|line| !line.starts_with('#') && !line.starts_with(['+', '-']))
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            let [login, _password, uid, _gid, gecos, home, shell] = fields.as_slice() else {
                return None;
            };
            let id: u32 = uid.parse().ok()?;
            let wanted = (id == 0 || id >= uid_min) && id != NOBODY_UID && *login != "nobody";
            wanted.then(|| LocalUser {
                login: login.to_string(),
                id,
                name: gecos.split(',').next().unwrap_or_default().to_string(),
                home: home.to_string(),
                shell: shell.to_string(),
            })
        })
        .collect();
    users.sort_by(|a, b| (a.id, &a.login).cmp(&(b.id, &b.login)));
    users
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn people_and_root_only() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n\
                      daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
                      nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n\
                      alice:x:1000:1000:Alice Martin,Room 12,,:/home/alice:/bin/bash\n\
                      svc:x:999:999::/var/lib/svc:/bin/false\n\
                      broken line\n";
        let users = parse_passwd(passwd, 1000);
        let logins: Vec<&str> = users.iter().map(|u| u.login.as_str()).collect();
        assert_eq!(logins, ["root", "alice"]);
        assert_eq!(users[1].name, "Alice Martin");
        assert_eq!(users[1].home, "/home/alice");
        let with_lower_min = parse_passwd(passwd, 500);
        assert_eq!(with_lower_min.len(), 3);
    }

    #[test]
    fn uid_min_from_login_defs() {
        assert_eq!(
            login_defs_uid_min("# UID_MIN 5\nUID_MIN\t\t\t 500\nUID_MAX 60000\n"),
            Some(500)
        );
        assert_eq!(login_defs_uid_min("UID_MAX 60000\n"), None);
    }
}
