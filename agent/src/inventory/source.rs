//! Reading files of the inventoried tree, always relative to its root, with errors that name
//! the path. Every area reads through [`Source`] so that a fixture tree stands in for `/`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// The filesystem tree being inventoried: `/` on a live host, a fixture directory in tests.
#[derive(Debug, Clone)]
pub struct Source {
    root: PathBuf,
    live: bool,
}

impl Source {
    pub fn new(root: &Path) -> Source {
        Source {
            root: root.to_path_buf(),
            live: root == Path::new("/"),
        }
    }

    /// True when the tree is the running host, so live-only sources (`getifaddrs`, the
    /// agent's own architecture, `rpm`) may be asked.
    pub fn is_live(&self) -> bool {
        self.live
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The absolute path of `relative` (written without a leading `/`) inside the tree.
    pub fn path(&self, relative: &str) -> PathBuf {
        self.root.join(relative.trim_start_matches('/'))
    }

    /// The whole file as text (invalid UTF-8 is replaced, never an error: firmware strings
    /// are not always clean).
    pub fn read_text(&self, relative: &str) -> Result<String, String> {
        let path = self.path(relative);
        fs::read(&path)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .map_err(|error| read_error(&path, &error))
    }

    pub fn read_bytes(&self, relative: &str) -> Result<Vec<u8>, String> {
        let path = self.path(relative);
        fs::read(&path).map_err(|error| read_error(&path, &error))
    }

    /// The file's content without surrounding whitespace, or `None` when it cannot be read or
    /// is empty. For optional single-value files such as `sys/class/dmi/id/product_name`.
    pub fn read_trimmed(&self, relative: &str) -> Option<String> {
        let text = self.read_text(relative).ok()?;
        let trimmed = text.trim();
        (!trimmed.is_empty()).then(|| trimmed.to_string())
    }

    /// Like [`Source::read_trimmed`] but keeps the reason when the file exists and still
    /// cannot be read (permission denied): that is worth a problem, a missing file is not.
    pub fn read_optional(&self, relative: &str) -> Result<Option<String>, String> {
        let path = self.path(relative);
        match fs::read(&path) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                let trimmed = text.trim();
                Ok((!trimmed.is_empty()).then(|| trimmed.to_string()))
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            // sysfs answers EINVAL/ENODEV for attributes a device does not support
            // (`speed` of a down link): that means unknown, not a problem.
            Err(error) if matches!(error.raw_os_error(), Some(19 | 22 | 95)) => Ok(None),
            Err(error) => Err(read_error(&path, &error)),
        }
    }

    /// True when something (file, directory or symlink, even dangling) is at `relative`.
    pub fn exists(&self, relative: &str) -> bool {
        fs::symlink_metadata(self.path(relative)).is_ok()
    }

    pub fn is_dir(&self, relative: &str) -> bool {
        self.path(relative).is_dir()
    }

    /// The names in a directory, sorted so that every list built from them is stable.
    pub fn list_dir(&self, relative: &str) -> Result<Vec<String>, String> {
        let path = self.path(relative);
        let entries = fs::read_dir(&path).map_err(|error| read_error(&path, &error))?;
        let mut names: Vec<String> = entries
            .filter_map(|entry| entry.ok())
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        Ok(names)
    }

    /// The target of the symlink at `relative`, as written (not resolved).
    pub fn link_target(&self, relative: &str) -> Option<String> {
        fs::read_link(self.path(relative))
            .ok()
            .map(|target| target.to_string_lossy().into_owned())
    }

    /// The last component of the symlink target at `relative`: `device/driver` → `e1000e`.
    pub fn link_name(&self, relative: &str) -> Option<String> {
        let target = self.link_target(relative)?;
        let name = target.trim_end_matches('/').rsplit('/').next()?;
        (!name.is_empty()).then(|| name.to_string())
    }

    /// Seconds since the Unix epoch of the file's last modification.
    pub fn modified_unix(&self, relative: &str) -> Option<i64> {
        let modified = fs::metadata(self.path(relative)).ok()?.modified().ok()?;
        unix_seconds(modified)
    }
}

fn unix_seconds(time: SystemTime) -> Option<i64> {
    let seconds = time.duration_since(UNIX_EPOCH).ok()?.as_secs();
    i64::try_from(seconds).ok()
}

/// `cannot read `/sys/class/dmi/id/product_serial`: permission denied`.
pub fn read_error(path: &Path, error: &io::Error) -> String {
    format!("cannot read `{}`: {}", path.display(), error.kind())
}

/// The `YYYY-MM-DD` UTC date of a Unix time, the form every `installdate` takes.
pub fn utc_date(unix_seconds: i64) -> String {
    let (year, month, day) = crate::calendar::civil_from_days(unix_seconds.div_euclid(86_400));
    format!("{year:04}-{month:02}-{day:02}")
}

/// Splits `KEY: value` / `KEY=value` style lines: the key and value trimmed.
pub fn split_key_value(line: &str, separator: char) -> Option<(&str, &str)> {
    let (key, value) = line.split_once(separator)?;
    Some((key.trim(), value.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates_cover_epoch_leap_days_and_negative_times() {
        let check = |seconds: i64, expect: &str| assert_eq!(utc_date(seconds), expect, "{seconds}");
        check(0, "1970-01-01");
        check(86_399, "1970-01-01");
        check(951_782_400, "2000-02-29");
        check(1_709_164_800, "2024-02-29");
        check(1_735_689_599, "2024-12-31");
        check(1_735_689_600, "2025-01-01");
        check(-1, "1969-12-31");
    }

    #[test]
    fn missing_files_are_errors_naming_the_path() {
        let source = Source::new(Path::new("/nonexistent-estate-root"));
        let error = source.read_text("etc/os-release").unwrap_err();
        assert_eq!(
            error,
            "cannot read `/nonexistent-estate-root/etc/os-release`: entity not found"
        );
        assert_eq!(source.read_optional("etc/os-release"), Ok(None));
        assert_eq!(source.read_trimmed("etc/os-release"), None);
    }
}
