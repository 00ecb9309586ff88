//! The keys file (mobility security associations, a Kubernetes Secret in production) and its hot reload.
//!
//! Rules: the file must not be readable by every user (mode `o+r` is refused: mount Secrets with
//! `defaultMode: 0400` or `0440`); its contents are never logged, and error messages never quote a value from it
//! (a parse error about a `key` field says what is wrong without the value). The text read is zeroed when
//! dropped.
//!
//! [`KeysWatcher::poll`] reloads when the file's identity (device, inode), size, modification or change time, or
//! mode differ from the last load (a Kubernetes Secret update swaps a symlink, which changes the inode), or when
//! SIGHUP arrived since the last poll.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use mip::config::{self, ConfigError, KeysFile};
use mip::keystore::KeyStore;
use signal_hook::SigId;
use zeroize::Zeroizing;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    mode: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    Never,
    Missing,
    File(Stamp),
}

fn stamp(path: &Path) -> Seen {
    match std::fs::metadata(path) {
        Ok(m) => Seen::File(Stamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
            mode: m.mode(),
        }),
        Err(_) => Seen::Missing,
    }
}

/// Loads the keys file and notices when it must be loaded again.
#[derive(Debug)]
pub struct KeysWatcher {
    path: PathBuf,
    last: Seen,
    hangup: Arc<AtomicBool>,
    sig: Option<SigId>,
}

impl KeysWatcher {
    /// A watcher of `path` (nothing is read yet). Installs a SIGHUP handler of its own (a flag; it coexists
    /// with [`crate::signals::Signals`]).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let hangup = Arc::new(AtomicBool::new(false));
        let sig = signal_hook::flag::register(libc::SIGHUP, Arc::clone(&hangup)).ok();
        KeysWatcher {
            path: path.into(),
            last: Seen::Never,
            hangup,
            sig,
        }
    }

    /// The watched path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads, checks and parses the file now. Errors are one line per problem, each prefixed with the path.
    pub fn load(&mut self) -> Result<KeyStore, String> {
        self.last = stamp(&self.path);
        load_keys(&self.path)
    }

    /// `Some` with a fresh load when the file changed since the last load (or first poll), or SIGHUP arrived;
    /// `None` otherwise. A file that fails to load is reported once per change, not on every poll.
    pub fn poll(&mut self) -> Option<Result<KeyStore, String>> {
        let hangup = self.hangup.swap(false, Ordering::SeqCst);
        if hangup || stamp(&self.path) != self.last {
            Some(self.load())
        } else {
            None
        }
    }

    /// Makes the next [`poll`](Self::poll) reload, as SIGHUP does.
    pub fn request_reload(&self) {
        self.hangup.store(true, Ordering::SeqCst);
    }
}

impl Drop for KeysWatcher {
    fn drop(&mut self) {
        if let Some(id) = self.sig.take() {
            signal_hook::low_level::unregister(id);
        }
    }
}

/// Reads, checks and parses a keys file (see the module doc for the rules).
pub fn load_keys(path: &Path) -> Result<KeyStore, String> {
    let shown = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|e| format!("{shown}: cannot read the keys file: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{shown}: the keys file is not a regular file"));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o004 != 0 {
        return Err(format!(
            "{shown}: the keys file is readable by every user (mode {mode:04o}); refusing to use it: \
             `chmod o-r` it (Kubernetes: mount the Secret with defaultMode 0400 or 0440)"
        ));
    }
    let text =
        Zeroizing::new(std::fs::read_to_string(path).map_err(|e| format!("{shown}: cannot read the keys file: {e}"))?);
    let file = config::from_yaml::<KeysFile>(&text).map_err(|errs| {
        let errs: Vec<ConfigError> = errs.into_iter().map(redact).collect();
        config::render_errors(&shown, &errs)
    })?;
    file.to_keystore().map_err(|errs| {
        let errs: Vec<ConfigError> = errs.into_iter().map(redact).collect();
        config::render_errors(&shown, &errs)
    })
}

/// Parser messages may quote the offending value (`invalid type: integer `1234`…`); for a key that would be key
/// material, so such messages about a `key` field are replaced.
fn redact(e: ConfigError) -> ConfigError {
    let is_key = e.field == "key" || e.field.ends_with(".key");
    if is_key && (e.message.contains('`') || e.message.contains('"') || e.message.contains('\'')) {
        ConfigError::new(
            e.field,
            "invalid value (not shown: key material); expected a quoted hexadecimal string",
        )
    } else {
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    const KEY: &str = "000102030405060708090a0b0c0d0e0f";

    fn keys_text(spi: u32) -> String {
        format!("security_associations:\n  - home_address: 10.10.1.50\n    spi: {spi}\n    key: \"{KEY}\"\n")
    }

    fn write(path: &Path, text: &str, mode: u32) {
        let mut f = std::fs::File::create(path).unwrap();
        f.write_all(text.as_bytes()).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn loads_polls_and_reloads_on_change() {
        let _signals = crate::signal_lock();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.yaml");
        write(&path, &keys_text(256), 0o600);
        let mut w = KeysWatcher::new(&path);
        let ks = w.poll().expect("first poll loads").unwrap();
        assert!(ks.get("10.10.1.50".parse().unwrap(), 256).is_some());
        assert!(w.poll().is_none(), "unchanged");

        write(&path, &keys_text(1000), 0o600);
        let ks = w.poll().expect("changed").unwrap();
        assert!(ks.get("10.10.1.50".parse().unwrap(), 1000).is_some());
        assert!(w.poll().is_none());

        // A Secret update: a new file renamed over the old one (new inode, maybe same size and second).
        let tmp = dir.path().join("keys.new");
        write(&tmp, &keys_text(1001), 0o600);
        std::fs::rename(&tmp, &path).unwrap();
        let ks = w.poll().expect("replaced").unwrap();
        assert!(ks.get("10.10.1.50".parse().unwrap(), 1001).is_some());

        w.request_reload();
        assert!(w.poll().is_some());
        assert!(w.poll().is_none());
    }

    #[test]
    fn sighup_forces_a_reload() {
        let _signals = crate::signal_lock();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.yaml");
        write(&path, &keys_text(256), 0o400);
        let mut w = KeysWatcher::new(&path);
        w.load().unwrap();
        assert!(w.poll().is_none());
        signal_hook::low_level::raise(libc::SIGHUP).unwrap();
        assert!(w.poll().is_some());
    }

    #[test]
    fn world_readable_files_are_refused() {
        let _signals = crate::signal_lock();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.yaml");
        write(&path, &keys_text(256), 0o644);
        let mut w = KeysWatcher::new(&path);
        let e = w.load().unwrap_err();
        assert!(e.contains("readable by every user (mode 0644)"), "{e}");
        assert!(e.starts_with(&path.display().to_string()));
        assert!(w.poll().is_none(), "reported once per change");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(w.poll().expect("mode change is a change").is_ok());
    }

    #[test]
    fn missing_and_broken_files() {
        let _signals = crate::signal_lock();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.yaml");
        let mut w = KeysWatcher::new(&path);
        let e = w.poll().unwrap().unwrap_err();
        assert!(e.contains("cannot read the keys file"), "{e}");
        assert!(w.poll().is_none());
        write(
            &path,
            "security_associations:\n  - home_address: 10.10.1.50\n    spi: 255\n    key: \"0001\"\n",
            0o600,
        );
        let e = w.poll().unwrap().unwrap_err();
        let lines: Vec<&str> = e.lines().collect();
        assert_eq!(lines.len(), 2, "{e}");
        for l in &lines {
            assert!(
                l.starts_with(&format!("{}: field `security_associations[0].", path.display())),
                "{l}"
            );
        }
        assert!(w.load().is_err());
        assert!(load_keys(dir.path()).unwrap_err().contains("not a regular file"));
    }

    #[test]
    fn key_material_never_appears_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.yaml");
        let secret = "99887766554433221100";
        for text in [
            format!("security_associations:\n  - home_address: 10.10.1.50\n    spi: 256\n    key: {secret}\n"),
            format!("security_associations:\n  - home_address: 10.10.1.50\n    spi: 256\n    key: [{secret}]\n"),
            format!("security_associations:\n  - home_address: 10.10.1.50\n    spi: 256\n    key: \"{secret}zz\"\n"),
            format!("security_associations:\n  - home_address: 10.10.1.50\n    spi: 256\n    key: {{k: {secret}}}\n"),
            format!("security_associations: [\n  key: {secret}\n"),
        ] {
            write(&path, &text, 0o600);
            if let Err(e) = load_keys(&path) {
                assert!(!e.contains(secret), "{e}");
                assert!(!e.contains("9988776655"), "{e}");
            }
        }
    }
}
