//! What the agent's service needs from the sandbox, worked out from its config: capabilities
//! for the check kinds that need them, and write access to a state directory configured
//! outside the service's own. `estate-agent service install` puts these in the unit.

use crate::checks::Check;
use crate::config::{AgentConfig, ConfigFile};
use estate_service::ServiceNeeds;
use std::path::Path;

/// The state directory systemd gives the service (`StateDirectory=estate-agent`), which is
/// also the agent's default when it runs as root.
pub const SERVICE_STATE_DIR: &str = "/var/lib/estate-agent";

/// The needs of the agent configured by `file` (as written: a state directory left out means
/// the service's own) and `config` (the same file, validated).
pub fn service_needs(file: &ConfigFile, config: &AgentConfig) -> Result<ServiceNeeds, String> {
    let mut needs = ServiceNeeds::default();
    for check in &config.checks {
        if let Check::Dhcp(_) = check.check {
            // Ports 67 and 68, and SO_BINDTODEVICE on the probed interface.
            needs.add_capability("CAP_NET_BIND_SERVICE");
            needs.add_capability("CAP_NET_RAW");
        }
    }
    if let Some(state_dir) = &file.agent.state_dir {
        if !state_dir.is_absolute() {
            return Err(format!(
                "agent.state_dir `{}` is relative; a service needs an absolute path",
                state_dir.display()
            ));
        }
        if !state_dir.starts_with(Path::new(SERVICE_STATE_DIR)) {
            needs.writable_paths.push(state_dir.clone());
        }
    }
    Ok(needs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn needs(text: &str) -> Result<ServiceNeeds, String> {
        let path = Path::new("agent.toml");
        let file = ConfigFile::parse(text, path).unwrap();
        let config = file.clone().validate(Some(path)).unwrap();
        service_needs(&file, &config)
    }

    #[test]
    fn checks_without_privileged_ports_need_no_capability() {
        let needs =
            needs("[[checks]]\nname = \"db\"\nkind = \"tcp\"\naddress = \"db:5432\"\n").unwrap();
        assert_eq!(needs, ServiceNeeds::default());
    }

    #[test]
    fn a_dhcp_check_needs_to_bind_ports_67_and_68_and_an_interface() {
        let needs = needs(
            "[[checks]]\nname = \"dhcp\"\nkind = \"dhcp\"\nmode = \"broadcast\"\ninterface = \"eth0\"\n\
             [[checks]]\nname = \"dhcp2\"\nkind = \"dhcp\"\nmode = \"broadcast\"\ninterface = \"eth1\"\n",
        )
        .unwrap();
        assert_eq!(needs.capabilities, ["CAP_NET_BIND_SERVICE", "CAP_NET_RAW"]);
    }

    #[test]
    fn a_state_directory_elsewhere_is_made_writable_and_a_relative_one_refused() {
        let elsewhere = needs("[agent]\nstate_dir = \"/srv/estate\"\n").unwrap();
        assert_eq!(elsewhere.writable_paths, [PathBuf::from("/srv/estate")]);
        let own = needs("[agent]\nstate_dir = \"/var/lib/estate-agent\"\n").unwrap();
        assert!(own.writable_paths.is_empty());
        assert_eq!(
            needs("[agent]\nstate_dir = \"state\"\n").unwrap_err(),
            "agent.state_dir `state` is relative; a service needs an absolute path"
        );
    }
}
