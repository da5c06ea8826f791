//! The identity file: a module's private key on disk.
//!
//! Default path: `$HOME/.config/agent/secret.key` ([`default_path`]); a module-agent runs as the
//! module's own Unix user, so this is in the module's home. The file is in the format of `age-keygen`
//! (comment lines, then one `AGE-SECRET-KEY-1…` line), mode 0600, in a directory created 0700.
//!
//! * Created atomically and never overwritten: written to a temporary file (created exclusively, mode
//!   0600), fsynced, then hard-linked to its name — `link(2)` fails if the name exists, so an existing
//!   identity is never replaced, not even by a concurrent `init` — then the directory is fsynced.
//! * Read back only if no other user can access it (like ssh), and only if it holds exactly one key.
//! * Rotation uses two more names beside it: `secret.key.new` (the next key, written before Redis is
//!   changed) and `secret.key.old` (a link to the previous key while the files are switched). See
//!   [`crate::lifecycle`] for the recovery rule.
//! * The directory is `flock`ed: exclusively by `init` and `rotate`, shared by the commands that use the
//!   key, so a command never sees a half-finished rotation.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};
use zeroize::Zeroizing;

use crate::crypto::Identity;
use crate::error::{Error, Result};

/// Where the identity lives, relative to the home directory.
pub const DEFAULT_RELATIVE_PATH: &str = ".config/agent/secret.key";

/// How long a command waits for the key directory lock before giving up.
pub const LOCK_WAIT: Duration = Duration::from_secs(20);

/// `$HOME/.config/agent/secret.key`, from the value of `HOME` the caller looked up.
pub fn default_path(home: Option<&OsStr>) -> Result<PathBuf> {
    match home {
        Some(h) if !h.is_empty() => Ok(Path::new(h).join(DEFAULT_RELATIVE_PATH)),
        _ => Err(Error::NoHome),
    }
}

/// A held lock on the key directory; released on drop.
#[derive(Debug)]
pub struct KeyLock(#[allow(dead_code)] Flock<File>);

/// The identity file of one module and the rotation files beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFile {
    path: PathBuf,
}

impl KeyFile {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        KeyFile { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `<path>.new`: the next key during a rotation.
    pub fn new_path(&self) -> PathBuf {
        with_suffix(&self.path, ".new")
    }

    /// `<path>.old`: the previous key while a rotation switches the files.
    pub fn old_path(&self) -> PathBuf {
        with_suffix(&self.path, ".old")
    }

    fn dir(&self) -> PathBuf {
        match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    pub fn exists(&self) -> bool {
        self.path.exists()
    }

    /// Whether a rotation was interrupted (`<path>.new` exists).
    pub fn rotation_pending(&self) -> bool {
        self.new_path().exists()
    }

    /// Loads the identity for use. Refuses while a rotation is pending: the key that the secrets need
    /// may then be the new one.
    pub fn load(&self) -> Result<Identity> {
        if self.rotation_pending() {
            return Err(Error::RotationPending {
                path: self.new_path(),
            });
        }
        read_identity(&self.path)
    }

    /// Creates a new identity; fails with [`Error::IdentityExists`] if there is one.
    pub fn create(&self) -> Result<Identity> {
        let id = Identity::generate().with_origin(&self.path);
        write_new(&self.path, &id)?;
        Ok(id)
    }

    /// Writes `identity`, made elsewhere (the cluster's edge key a joining node is given), as this
    /// file; fails with [`Error::IdentityExists`] if there is one.
    pub fn store(&self, identity: &Identity) -> Result<()> {
        write_new(&self.path, identity)
    }

    /// Loads the identity, creating it first if there is none. Returns whether it was created.
    pub fn load_or_create(&self) -> Result<(Identity, bool)> {
        if self.rotation_pending() {
            return Err(Error::RotationPending {
                path: self.new_path(),
            });
        }
        match self.create() {
            Ok(id) => Ok((id, true)),
            Err(Error::IdentityExists { .. }) => Ok((read_identity(&self.path)?, false)),
            Err(e) => Err(e),
        }
    }

    /// Takes the directory lock shared (commands that use the key). Fails with
    /// [`Error::NoIdentity`] if the directory does not exist.
    pub fn lock_shared(&self) -> Result<KeyLock> {
        if !self.dir().is_dir() {
            return Err(Error::NoIdentity {
                path: self.path.clone(),
            });
        }
        self.lock(FlockArg::LockSharedNonblock)
    }

    /// Takes the directory lock exclusively (init, rotate), creating the directory (0700) if needed.
    pub fn lock_exclusive(&self) -> Result<KeyLock> {
        create_dir(&self.dir())?;
        self.lock(FlockArg::LockExclusiveNonblock)
    }

    fn lock(&self, how: FlockArg) -> Result<KeyLock> {
        let dir = self.dir();
        let end = Instant::now() + LOCK_WAIT;
        let mut file = File::open(&dir).map_err(|e| Error::io("cannot open", &dir, e))?;
        loop {
            match Flock::lock(file, how) {
                Ok(lock) => return Ok(KeyLock(lock)),
                Err((f, nix::errno::Errno::EWOULDBLOCK)) if Instant::now() < end => {
                    file = f;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                    return Err(Error::Locked { path: dir });
                }
                Err((_, errno)) => {
                    return Err(Error::io(
                        "cannot lock",
                        &dir,
                        std::io::Error::from_raw_os_error(errno as i32),
                    ))
                }
            }
        }
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = OsString::from(path.as_os_str());
    s.push(suffix);
    PathBuf::from(s)
}

fn create_dir(dir: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io("cannot create the directory", dir, e))
}

fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("cannot fsync the directory", dir, e))
}

pub(crate) fn parent_dir(path: &Path) -> PathBuf {
    KeyFile::new(path).dir()
}

/// Writes `identity` to `path`, atomically, mode 0600, never replacing an existing file.
pub(crate) fn write_new(path: &Path, identity: &Identity) -> Result<()> {
    let dir = parent_dir(path);
    create_dir(&dir)?;
    if path.exists() {
        return Err(Error::IdentityExists {
            path: path.to_path_buf(),
        });
    }
    let name = path.file_name().unwrap_or_else(|| OsStr::new("secret.key"));
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mut tmp_name = OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}-{nanos}", std::process::id()));
    let tmp = dir.join(tmp_name);

    let mut text = Zeroizing::new(String::new());
    text.push_str("# age identity (x25519): the private key of an agent module's secrets.\n");
    text.push_str("# Keep it mode 0600; never copy it anywhere else.\n");
    text.push_str(&format!("# public key: {}\n", identity.recipient()));
    text.push_str(&identity.to_secret_string());
    text.push('\n');

    let written = (|| -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        // The umask can only take bits away; make the mode exactly 0600 anyway.
        f.set_permissions(fs::Permissions::from_mode(0o600))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io("cannot write", &tmp, e));
    }
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => fsync_dir(&dir),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(Error::IdentityExists {
            path: path.to_path_buf(),
        }),
        Err(e) => Err(Error::io("cannot create", path, e)),
    }
}

/// Reads an identity file: it must be accessible to its owner only and hold exactly one
/// `AGE-SECRET-KEY-1…` line (besides blank lines and `#` comments).
pub(crate) fn read_identity(path: &Path) -> Result<Identity> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::NoIdentity {
                path: path.to_path_buf(),
            })
        }
        Err(e) => return Err(Error::io("cannot open", path, e)),
    };
    let meta = f
        .metadata()
        .map_err(|e| Error::io("cannot stat", path, e))?;
    if !meta.is_file() {
        return Err(Error::BadIdentity {
            path: path.to_path_buf(),
            reason: "it is not a regular file".into(),
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(Error::KeyFileMode {
            path: path.to_path_buf(),
            mode,
        });
    }
    let mut text = Zeroizing::new(String::new());
    f.read_to_string(&mut text).map_err(|e| {
        if e.kind() == std::io::ErrorKind::InvalidData {
            Error::BadIdentity {
                path: path.to_path_buf(),
                reason: "it is not text".into(),
            }
        } else {
            Error::io("cannot read", path, e)
        }
    })?;
    parse_identity_text(&text)
        .map(|id| id.with_origin(path))
        .map_err(|reason| Error::BadIdentity {
            path: path.to_path_buf(),
            reason,
        })
}

/// The identity of an identity file's text (one `AGE-SECRET-KEY-1…` line besides blank lines and
/// `#` comments), read by whoever may read the file (the module's user, for a backup). The error
/// says what is wrong without showing any of the text.
pub fn parse_identity_text(text: &str) -> std::result::Result<Identity, String> {
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with("AGE-SECRET-KEY-") {
            keys.push(line);
        } else {
            // The line itself is not shown: it could be key material.
            return Err(format!(
                "line {} is neither a comment nor an AGE-SECRET-KEY-1… line",
                i + 1
            ));
        }
    }
    match keys.as_slice() {
        [one] => Identity::parse(one).map_err(|e| format!("its key does not parse: {e}")),
        [] => Err("it holds no AGE-SECRET-KEY-1… line".into()),
        _ => Err(format!(
            "it holds {} keys; a module has exactly one",
            keys.len()
        )),
    }
}

/// Moves `<path>.new` over `<path>`, keeping `<path>.old` (a hard link to the previous key) until the
/// new key is in place. Every step is idempotent, so an interrupted switch is finished by running it
/// again.
pub(crate) fn switch_to_new(keys: &KeyFile) -> Result<()> {
    let (path, new, old) = (keys.path(), keys.new_path(), keys.old_path());
    let dir = keys.dir();
    if new.exists() {
        if path.exists() {
            match fs::remove_file(&old) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("cannot remove", &old, e)),
            }
            fs::hard_link(path, &old).map_err(|e| Error::io("cannot link", &old, e))?;
            fsync_dir(&dir)?;
        }
        fs::rename(&new, path).map_err(|e| Error::io("cannot rename", &new, e))?;
        fsync_dir(&dir)?;
    }
    match fs::remove_file(&old) {
        Ok(()) => fsync_dir(&dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("cannot remove", &old, e)),
    }
}

/// Removes `<path>.new` (a rotation that did not reach Redis).
pub(crate) fn discard_new(keys: &KeyFile) -> Result<()> {
    let new = keys.new_path();
    match fs::remove_file(&new) {
        Ok(()) => fsync_dir(&keys.dir()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("cannot remove", &new, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn default_path_is_under_home() {
        assert_eq!(
            default_path(Some(OsStr::new("/home/traefik0"))).unwrap(),
            Path::new("/home/traefik0/.config/agent/secret.key")
        );
        assert!(matches!(default_path(None), Err(Error::NoHome)));
        assert!(matches!(
            default_path(Some(OsStr::new(""))),
            Err(Error::NoHome)
        ));
    }

    #[test]
    fn create_then_load() {
        let d = tempfile::tempdir().unwrap();
        let k = KeyFile::new(d.path().join("a/b/secret.key"));
        assert!(matches!(k.load(), Err(Error::NoIdentity { .. })));
        let id = k.create().unwrap();
        assert_eq!(mode(k.path()), 0o600);
        assert_eq!(mode(&d.path().join("a/b")), 0o700);
        assert_eq!(k.load().unwrap().recipient(), id.recipient());
        let text = fs::read_to_string(k.path()).unwrap();
        assert!(text.contains(&format!("# public key: {}", id.recipient())));
        // no temporary file left behind
        let names: Vec<_> = fs::read_dir(d.path().join("a/b"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![OsString::from("secret.key")]);
    }

    #[test]
    fn never_overwrites() {
        let d = tempfile::tempdir().unwrap();
        let k = KeyFile::new(d.path().join("secret.key"));
        let first = k.create().unwrap();
        let e = k.create().unwrap_err();
        assert!(matches!(e, Error::IdentityExists { .. }), "{e}");
        assert_eq!(k.load().unwrap().recipient(), first.recipient());
        let (again, created) = k.load_or_create().unwrap();
        assert!(!created);
        assert_eq!(again.recipient(), first.recipient());
    }

    #[test]
    fn refuses_loose_permissions_and_bad_content() {
        let d = tempfile::tempdir().unwrap();
        let k = KeyFile::new(d.path().join("secret.key"));
        k.create().unwrap();
        fs::set_permissions(k.path(), fs::Permissions::from_mode(0o644)).unwrap();
        let e = k.load().unwrap_err();
        assert!(matches!(e, Error::KeyFileMode { mode: 0o644, .. }), "{e}");
        fs::set_permissions(k.path(), fs::Permissions::from_mode(0o600)).unwrap();

        let write = |content: &str| {
            let p = d.path().join("other.key");
            let _ = fs::remove_file(&p);
            fs::write(&p, content).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
            read_identity(&p)
        };
        let two = format!(
            "{}\n{}\n",
            &*Identity::generate().to_secret_string(),
            &*Identity::generate().to_secret_string()
        );
        for bad in [
            "",
            "# only a comment\n",
            "garbage\n",
            "AGE-SECRET-KEY-1XYZ\n",
            &two,
        ] {
            let e = write(bad).unwrap_err();
            assert!(matches!(e, Error::BadIdentity { .. }), "{bad:?}: {e}");
        }
        // the age-keygen format reads
        let id = Identity::generate();
        let keygen = format!(
            "# created: 2026-01-01T00:00:00Z\n# public key: {}\n{}\n",
            id.recipient(),
            &*id.to_secret_string()
        );
        assert_eq!(write(&keygen).unwrap().recipient(), id.recipient());
    }

    #[test]
    fn switching_is_idempotent() {
        let d = tempfile::tempdir().unwrap();
        let k = KeyFile::new(d.path().join("secret.key"));
        k.create().unwrap();
        let next = Identity::generate();
        write_new(&k.new_path(), &next).unwrap();
        assert!(matches!(k.load(), Err(Error::RotationPending { .. })));
        // interrupted after the link to .old, before the rename
        fs::hard_link(k.path(), k.old_path()).unwrap();
        switch_to_new(&k).unwrap();
        assert_eq!(k.load().unwrap().recipient(), next.recipient());
        assert!(!k.new_path().exists() && !k.old_path().exists());
        switch_to_new(&k).unwrap();
        assert_eq!(k.load().unwrap().recipient(), next.recipient());
        assert_eq!(mode(k.path()), 0o600);
    }

    #[test]
    fn locks_exclude_each_other() {
        let d = tempfile::tempdir().unwrap();
        let k = KeyFile::new(d.path().join("keys/secret.key"));
        assert!(matches!(k.lock_shared(), Err(Error::NoIdentity { .. })));
        let ex = k.lock_exclusive().unwrap();
        // flock locks belong to open file descriptions: a second open conflicts even in-process.
        let t = std::thread::spawn({
            let k = k.clone();
            move || {
                let start = Instant::now();
                let _s = k.lock_shared().unwrap();
                start.elapsed()
            }
        });
        std::thread::sleep(Duration::from_millis(300));
        drop(ex);
        assert!(t.join().unwrap() >= Duration::from_millis(250));
        let _a = k.lock_shared().unwrap();
        let _b = k.lock_shared().unwrap();
    }
}
