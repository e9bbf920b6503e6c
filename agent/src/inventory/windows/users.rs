//! USERS from `Win32_UserAccount WHERE LocalAccount = TRUE`: the accounts of this machine
//! (a domain controller has none of its own; its accounts are the domain's).

use super::Snapshot;
use super::values::Props;
use estate_proto::v1::{Inventory, LocalUser};

pub fn collect(snapshot: &Snapshot, inventory: &mut Inventory, problems: &mut Vec<String>) {
    let mut users: Vec<LocalUser> = snapshot
        .rows_or_problem("Win32_UserAccount", problems)
        .iter()
        .filter_map(|row| {
            let account = Props::new("Win32_UserAccount", row);
            let login = account.text("Name");
            if login.is_empty() {
                return None;
            }
            let sid = account.text("SID");
            // The relative id (500 = Administrator) plays the part of the Unix uid.
            let id = match sid.rsplit('-').next().map(str::parse::<u32>) {
                Some(Ok(rid)) if sid.starts_with("S-1-") => rid,
                _ => {
                    problems.push(format!(
                        "`Win32_UserAccount.SID` of {login} is not a SID: {sid:?}"
                    ));
                    0
                }
            };
            Some(LocalUser {
                login,
                id,
                name: account.text("FullName"),
                home: String::new(),
                shell: String::new(),
            })
        })
        .collect();
    users.sort_by(|a, b| (a.id, &a.login).cmp(&(b.id, &b.login)));
    inventory.local_users = users;
}
