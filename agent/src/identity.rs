//! The agent's persisted identity: its id (`<state_dir>/agent-id`) and its report sequence
//! number (`<state_dir>/sequence`), both written atomically (temp file, fsync, rename).
//!
//! A file that cannot be read or parsed is an error naming the file and the fix, never a silent
//! new id: a new id makes the host appear twice in the collector.

use crate::inventory::Fingerprints;
use estate_proto::v1::HostIdentity;
use std::io::Write;
use std::path::{Path, PathBuf};
use uuid::Uuid;

/// The file holding the agent id, inside the state directory.
pub const AGENT_ID_FILE: &str = "agent-id";
/// The file holding the last sequence number used, inside the state directory.
pub const SEQUENCE_FILE: &str = "sequence";

/// Why the identity or the sequence number could not be read or kept.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("failed to create state directory `{}`", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to read `{}`", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to write `{}`", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "`{}` holds `{content}`, not an agent id (a UUID): restore it from a backup to keep this \
         host's history, or delete it to report as a new host",
        path.display()
    )]
    CorruptAgentId { path: PathBuf, content: String },
    #[error(
        "`{}` holds `{content}`, not a sequence number: write a number above the last one the \
         collector received (the current Unix time is safe), or delete it together with `{}` to \
         report as a new host",
        path.display(),
        AGENT_ID_FILE
    )]
    CorruptSequence { path: PathBuf, content: String },
}

/// The agent id, and where it is kept (nowhere for a temporary one).
#[derive(Debug, Clone)]
pub struct AgentIdentity {
    agent_id: Uuid,
    /// `None` for an id that lives only in memory (`once --json` without a usable state dir).
    path: Option<PathBuf>,
}

impl AgentIdentity {
    /// Reads the agent id from `state_dir`, creating the directory and a new id at first start.
    pub fn load_or_create(state_dir: &Path) -> Result<AgentIdentity, IdentityError> {
        let path = state_dir.join(AGENT_ID_FILE);
        if let Some(agent_id) = read_agent_id(&path)? {
            return Ok(AgentIdentity {
                agent_id,
                path: Some(path),
            });
        }
        create_state_dir(state_dir)?;
        let agent_id = Uuid::new_v4();
        write_atomically(&path, &format!("{agent_id}\n"))?;
        tracing::info!(%agent_id, path = %path.display(), "created a new agent id");
        Ok(AgentIdentity {
            agent_id,
            path: Some(path),
        })
    }

    /// For a report that is only shown, never sent: the persisted id when it can be read,
    /// else a temporary one. Never writes; logs why it fell back.
    pub fn load_or_temporary(state_dir: &Path) -> AgentIdentity {
        let path = state_dir.join(AGENT_ID_FILE);
        let agent_id = Uuid::new_v4();
        match read_agent_id(&path) {
            Ok(Some(agent_id)) => {
                return AgentIdentity {
                    agent_id,
                    path: None,
                };
            }
            Ok(None) => tracing::info!(
                path = %path.display(),
                %agent_id,
                "no agent id yet, using a temporary one for this report"
            ),
            Err(error) => tracing::warn!(
                error = %error_chain(&error),
                %agent_id,
                "cannot read the agent id, using a temporary one for this report"
            ),
        }
        AgentIdentity {
            agent_id,
            path: None,
        }
    }

    pub fn agent_id(&self) -> Uuid {
        self.agent_id
    }

    /// Replaces the id with a new one, persisted. Used when the collector says this id belongs
    /// to another machine (a cloned state directory): this host then reports as a new host.
    pub fn regenerate(&mut self) -> Result<Uuid, IdentityError> {
        let previous = self.agent_id;
        let agent_id = Uuid::new_v4();
        if let Some(path) = &self.path {
            write_atomically(path, &format!("{agent_id}\n"))?;
        }
        self.agent_id = agent_id;
        tracing::warn!(%previous, %agent_id, "replaced the agent id");
        Ok(agent_id)
    }

    /// The wire identity: this id plus the host's fingerprints.
    pub fn host_identity(&self, fingerprints: &Fingerprints) -> HostIdentity {
        HostIdentity {
            agent_id: self.agent_id.to_string(),
            hostname: fingerprints.hostname.clone(),
            machine_id: fingerprints.machine_id.clone(),
            smbios_uuid: fingerprints.smbios_uuid.clone(),
            serial_number: fingerprints.serial_number.clone(),
            primary_mac: fingerprints.primary_mac.clone(),
        }
    }
}

fn read_agent_id(path: &Path) -> Result<Option<Uuid>, IdentityError> {
    let Some(text) = read_optional(path)? else {
        return Ok(None);
    };
    match Uuid::parse_str(text.trim()) {
        Ok(id) if !id.is_nil() => Ok(Some(id)),
        _ => Err(IdentityError::CorruptAgentId {
            path: path.to_owned(),
            content: excerpt(&text),
        }),
    }
}

/// The per-agent report sequence number: each report takes the next one, persisted before the
/// report leaves, so that a restart never reuses a number the collector may have stored.
#[derive(Debug)]
pub struct SequenceCounter {
    /// `None` when the counter is not persisted (a report that is only shown).
    path: Option<PathBuf>,
    last: u64,
}

impl SequenceCounter {
    /// Reads the last sequence number used; 0 when the agent has never reported.
    pub fn load(state_dir: &Path) -> Result<SequenceCounter, IdentityError> {
        let path = state_dir.join(SEQUENCE_FILE);
        let last = match read_optional(&path)? {
            None => 0,
            Some(text) => {
                text.trim()
                    .parse::<u64>()
                    .map_err(|_| IdentityError::CorruptSequence {
                        path: path.clone(),
                        content: excerpt(&text),
                    })?
            }
        };
        Ok(SequenceCounter {
            path: Some(path),
            last,
        })
    }

    /// For a report that is only shown: starts from the stored number when readable, and
    /// never writes.
    pub fn load_read_only(state_dir: &Path) -> SequenceCounter {
        let last = SequenceCounter::load(state_dir).map_or(0, |counter| counter.last);
        SequenceCounter { path: None, last }
    }

    /// The last sequence number taken.
    pub fn last(&self) -> u64 {
        self.last
    }

    /// Takes the next sequence number (stored + 1) and persists it before returning it.
    pub fn take_next(&mut self) -> Result<u64, IdentityError> {
        let next = self.last + 1;
        if let Some(path) = &self.path {
            write_atomically(path, &format!("{next}\n"))?;
        }
        self.last = next;
        Ok(next)
    }

    /// Starts again from 1, for a new agent id: sequences are per agent id.
    pub fn restart(&mut self) -> Result<(), IdentityError> {
        if let Some(path) = &self.path {
            write_atomically(path, "0\n")?;
        }
        self.last = 0;
        Ok(())
    }
}

fn create_state_dir(state_dir: &Path) -> Result<(), IdentityError> {
    std::fs::create_dir_all(state_dir).map_err(|source| IdentityError::CreateDir {
        path: state_dir.to_owned(),
        source,
    })
}

fn read_optional(path: &Path) -> Result<Option<String>, IdentityError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(IdentityError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// The start of a corrupt file, printable, for the error message.
fn excerpt(text: &str) -> String {
    let text = text.trim();
    let mut shown: String = text
        .chars()
        .take(40)
        .collect::<String>()
        .escape_debug()
        .to_string();
    if text.chars().count() > 40 {
        shown.push_str("...");
    }
    shown
}

/// Writes `content` to a temporary file beside `path`, flushes it to disk and renames it over
/// `path`, so a crash leaves either the old or the new content, never a torn file.
fn write_atomically(path: &Path, content: &str) -> Result<(), IdentityError> {
    write_file_atomically(path, content.as_bytes()).map_err(|source| IdentityError::Write {
        path: path.to_owned(),
        source,
    })
}

/// Writes `content` to `<path>.tmp`, syncs it, renames it over `path` and syncs the directory:
/// after a crash `path` holds the old or the new content, never a torn file.
pub(crate) fn write_file_atomically(path: &Path, content: &[u8]) -> std::io::Result<()> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(content)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temporary, path)?;
    // The rename itself is durable only once the directory is flushed (unix; Windows has no
    // directory handles to flush this way).
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Flushes a directory's entries (created, renamed files) to disk. A no-op off unix.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        std::fs::File::open(dir)?.sync_all()?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// `error: cause: cause`, for one log field.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_start_creates_the_id_and_the_next_start_reuses_it() {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join("state");
        let first = AgentIdentity::load_or_create(&state_dir).unwrap();
        let stored = std::fs::read_to_string(state_dir.join(AGENT_ID_FILE)).unwrap();
        assert_eq!(stored, format!("{}\n", first.agent_id()));
        assert_eq!(first.agent_id().get_version_num(), 4);
        let second = AgentIdentity::load_or_create(&state_dir).unwrap();
        assert_eq!(second.agent_id(), first.agent_id());
        // No temporary file is left behind.
        let mut names: Vec<_> = std::fs::read_dir(&state_dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, [AGENT_ID_FILE]);
    }

    #[test]
    fn a_corrupt_id_is_an_error_naming_the_file_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(AGENT_ID_FILE);
        std::fs::write(&path, "not-a-uuid\n").unwrap();
        let error = AgentIdentity::load_or_create(dir.path()).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "`{}` holds `not-a-uuid`, not an agent id (a UUID): restore it from a backup to \
                 keep this host's history, or delete it to report as a new host",
                path.display()
            )
        );
        // The file is left alone for the administrator to look at.
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "not-a-uuid\n");
    }

    #[test]
    fn regenerate_persists_a_new_id() {
        let dir = tempfile::tempdir().unwrap();
        let mut identity = AgentIdentity::load_or_create(dir.path()).unwrap();
        let old = identity.agent_id();
        let new = identity.regenerate().unwrap();
        assert_ne!(new, old);
        assert_eq!(identity.agent_id(), new);
        assert_eq!(
            AgentIdentity::load_or_create(dir.path())
                .unwrap()
                .agent_id(),
            new
        );
    }

    #[test]
    fn a_preview_uses_the_existing_id_or_a_temporary_one_and_never_writes() {
        let dir = tempfile::tempdir().unwrap();
        let first = AgentIdentity::load_or_temporary(dir.path());
        let second = AgentIdentity::load_or_temporary(dir.path());
        assert_ne!(first.agent_id(), second.agent_id());
        assert!(!dir.path().join(AGENT_ID_FILE).exists());

        let stored = AgentIdentity::load_or_create(dir.path()).unwrap();
        let mut preview = AgentIdentity::load_or_temporary(dir.path());
        assert_eq!(preview.agent_id(), stored.agent_id());
        // Even a regenerated preview id stays in memory.
        preview.regenerate().unwrap();
        assert_eq!(
            AgentIdentity::load_or_create(dir.path())
                .unwrap()
                .agent_id(),
            stored.agent_id()
        );

        std::fs::write(dir.path().join(AGENT_ID_FILE), "garbage").unwrap();
        let fallback = AgentIdentity::load_or_temporary(dir.path());
        assert!(!fallback.agent_id().is_nil());
    }

    #[test]
    fn host_identity_carries_the_id_and_the_fingerprints() {
        let dir = tempfile::tempdir().unwrap();
        let identity = AgentIdentity::load_or_create(dir.path()).unwrap();
        let fingerprints = Fingerprints {
            hostname: "web1".into(),
            machine_id: "m".into(),
            smbios_uuid: "u".into(),
            serial_number: "s".into(),
            primary_mac: "aa:bb:cc:dd:ee:ff".into(),
        };
        let wire = identity.host_identity(&fingerprints);
        assert_eq!(wire.agent_id, identity.agent_id().to_string());
        assert_eq!(wire.hostname, "web1");
        assert_eq!(wire.primary_mac, "aa:bb:cc:dd:ee:ff");
    }

    #[test]
    fn the_sequence_increments_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let mut counter = SequenceCounter::load(dir.path()).unwrap();
        assert_eq!(counter.last(), 0);
        assert_eq!(counter.take_next().unwrap(), 1);
        assert_eq!(counter.take_next().unwrap(), 2);
        drop(counter);
        let mut counter = SequenceCounter::load(dir.path()).unwrap();
        assert_eq!(counter.last(), 2);
        assert_eq!(counter.take_next().unwrap(), 3);
        counter.restart().unwrap();
        assert_eq!(SequenceCounter::load(dir.path()).unwrap().last(), 0);
    }

    #[test]
    fn a_read_only_sequence_never_writes() {
        let dir = tempfile::tempdir().unwrap();
        SequenceCounter::load(dir.path())
            .unwrap()
            .take_next()
            .unwrap();
        let mut preview = SequenceCounter::load_read_only(dir.path());
        assert_eq!(preview.take_next().unwrap(), 2);
        assert_eq!(SequenceCounter::load(dir.path()).unwrap().last(), 1);
    }

    #[test]
    fn a_corrupt_sequence_is_an_error_naming_the_file_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SEQUENCE_FILE);
        std::fs::write(&path, "12x").unwrap();
        let error = SequenceCounter::load(dir.path()).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "`{}` holds `12x`, not a sequence number: write a number above the last one the \
                 collector received (the current Unix time is safe), or delete it together with \
                 `agent-id` to report as a new host",
                path.display()
            )
        );
    }
}
