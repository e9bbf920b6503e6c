//! The agent's config file: TOML text parsed, then validated into a ready config with every
//! check kind's own validation. Besides not panicking: an error always says what is wrong, and
//! a config that validates has unique check names (reports and metrics are keyed by them).

#![no_main]

use estate_agent::config::{ConfigError, ConfigFile};
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeSet;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("agent.toml");
    let outcome = ConfigFile::parse(text, path).and_then(|file| file.validate(Some(path)));
    match outcome {
        Ok(config) => {
            let names = config.check_names();
            let unique: BTreeSet<&String> = names.iter().collect();
            assert_eq!(
                unique.len(),
                names.len(),
                "duplicate check names: {names:?}"
            );
        }
        Err(ConfigError::Parse { message, .. } | ConfigError::Invalid { message, .. }) => {
            assert!(!message.trim().is_empty(), "an error without a message");
        }
        Err(error @ ConfigError::Read { .. }) => panic!("parsing text read a file: {error}"),
    }
});
