//! The collector's config file: TOML text parsed, then validated into a ready config.

#![no_main]

use estate_collector::config::ConfigFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match ConfigFile::parse(text) {
        Ok(file) => {
            if let Err(error) = file.into_config() {
                assert!(!error.to_string().is_empty(), "an empty validation error");
            }
        }
        Err(error) => assert!(!error.to_string().is_empty(), "an empty parse error"),
    }
});
