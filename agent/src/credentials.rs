//! The agent token: read from `<state_dir>/agent-token`, or obtained once by exchanging the
//! enrollment secret (`collector.enrollment_secret_file`) and then kept there (mode 0600), and
//! sent with every report as `authorization: Bearer …`.
//!
//! Secrets never reach a log line: [`Bearer`]'s `Debug` hides its value, and errors name the
//! file, never its content.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use tonic::metadata::{Ascii, MetadataValue};

/// The prefix of agent tokens (`estate-collector token create`).
pub const AGENT_TOKEN_PREFIX: &str = "estate_agt_";
/// The prefix of enrollment secrets (`estate-collector token create --enrollment`).
pub const ENROLLMENT_SECRET_PREFIX: &str = "estate_enr_";
/// The file name of the agent token in the state directory.
pub const AGENT_TOKEN_FILE: &str = "agent-token";

/// An `authorization` metadata value, marked sensitive and hidden from `Debug`.
#[derive(Clone)]
pub struct Bearer(MetadataValue<Ascii>);

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bearer(…)")
    }
}

impl Bearer {
    /// `Bearer <token>` for a token already checked by [`check_secret`].
    pub fn new(token: &str) -> Result<Bearer, String> {
        let mut value = MetadataValue::try_from(format!("Bearer {token}"))
            .map_err(|_| "the agent token holds characters not allowed in metadata".to_owned())?;
        value.set_sensitive(true);
        Ok(Bearer(value))
    }

    pub fn value(&self) -> MetadataValue<Ascii> {
        self.0.clone()
    }
}

/// Checks that `text` (trimmed) starts with `prefix` and is otherwise 64 lowercase hex
/// digits; the error names `what` (e.g. "agent token file `PATH`"), never the content.
pub fn check_secret<'a>(text: &'a str, prefix: &str, what: &str) -> Result<&'a str, String> {
    let text = text.trim();
    let Some(body) = text.strip_prefix(prefix) else {
        let hint = if prefix == AGENT_TOKEN_PREFIX && text.starts_with(ENROLLMENT_SECRET_PREFIX) {
            ": it holds an enrollment secret, which belongs in `collector.enrollment_secret_file`"
        } else if prefix == ENROLLMENT_SECRET_PREFIX && text.starts_with(AGENT_TOKEN_PREFIX) {
            ": it holds an agent token, which belongs in the state directory's `agent-token`"
        } else {
            ""
        };
        return Err(format!("{what} does not start with `{prefix}`{hint}"));
    };
    let hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    if body.len() != 64 || !body.bytes().all(hex) {
        return Err(format!(
            "{what} is damaged: `{prefix}` must be followed by 64 hex digits"
        ));
    }
    Ok(text)
}

/// Where the agent's token and enrollment secret live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialFiles {
    /// `<state_dir>/agent-token`.
    pub token_file: PathBuf,
    /// `collector.enrollment_secret_file`.
    pub enrollment_secret_file: Option<PathBuf>,
}

impl CredentialFiles {
    /// The saved agent token, `None` when the file does not exist.
    pub fn load_token(&self) -> Result<Option<Bearer>, String> {
        let text = match std::fs::read_to_string(&self.token_file) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => {
                return Err(format!(
                    "cannot read the agent token file `{}`: {error}",
                    self.token_file.display()
                ));
            }
        };
        let what = format!("agent token file `{}`", self.token_file.display());
        let token = check_secret(&text, AGENT_TOKEN_PREFIX, &what)?;
        Bearer::new(token).map(Some)
    }

    /// The enrollment secret, when `collector.enrollment_secret_file` is set.
    pub fn enrollment_secret(&self) -> Result<Option<String>, String> {
        let Some(path) = &self.enrollment_secret_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path).map_err(|error| {
            format!(
                "cannot read `collector.enrollment_secret_file` `{}`: {error}",
                path.display()
            )
        })?;
        let what = format!("enrollment secret file `{}`", path.display());
        check_secret(&text, ENROLLMENT_SECRET_PREFIX, &what).map(|secret| Some(secret.to_owned()))
    }

    /// Writes the token atomically (temporary file, fsync, rename), readable by the owner only.
    pub fn save_token(&self, token: &str) -> Result<(), String> {
        let path = &self.token_file;
        let failed = |error: std::io::Error| {
            format!(
                "cannot save the agent token to `{}`: {error}",
                path.display()
            )
        };
        let directory = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(directory).map_err(failed)?;
        let temporary = path.with_extension("tmp");
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&temporary).map_err(failed)?;
        file.write_all(format!("{token}\n").as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(failed)?;
        drop(file);
        std::fs::rename(&temporary, path).map_err(failed)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path, secret: Option<&str>) -> CredentialFiles {
        let enrollment_secret_file = secret.map(|secret| {
            let path = dir.join("enrollment-secret");
            std::fs::write(&path, secret).unwrap();
            path
        });
        CredentialFiles {
            token_file: dir.join("state").join(AGENT_TOKEN_FILE),
            enrollment_secret_file,
        }
    }

    #[test]
    fn a_saved_token_is_private_and_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let files = files(dir.path(), None);
        assert!(files.load_token().unwrap().is_none());
        let token = format!("{AGENT_TOKEN_PREFIX}{}", "0f".repeat(32));
        files.save_token(&token).unwrap();
        let bearer = files.load_token().unwrap().unwrap();
        assert_eq!(bearer.value().to_str().unwrap(), format!("Bearer {token}"));
        assert!(bearer.value().is_sensitive());
        assert_eq!(format!("{bearer:?}"), "Bearer(…)");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&files.token_file)
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn secrets_in_the_wrong_file_are_named_without_their_content() {
        let dir = tempfile::tempdir().unwrap();
        let enrollment = format!("{ENROLLMENT_SECRET_PREFIX}{}", "ab".repeat(32));
        let files = files(dir.path(), Some(&format!("{enrollment}\n")));
        assert_eq!(files.enrollment_secret().unwrap(), Some(enrollment.clone()));

        std::fs::create_dir_all(files.token_file.parent().unwrap()).unwrap();
        std::fs::write(&files.token_file, &enrollment).unwrap();
        let error = files.load_token().unwrap_err();
        assert!(
            error.contains("does not start with `estate_agt_`: it holds an enrollment secret"),
            "{error}"
        );
        assert!(!error.contains(&enrollment), "{error}");

        std::fs::write(&files.token_file, format!("{AGENT_TOKEN_PREFIX}abc")).unwrap();
        let error = files.load_token().unwrap_err();
        assert!(
            error.ends_with("is damaged: `estate_agt_` must be followed by 64 hex digits"),
            "{error}"
        );
        let none = CredentialFiles {
            enrollment_secret_file: None,
            ..files
        };
        assert_eq!(none.enrollment_secret().unwrap(), None);
    }
}
