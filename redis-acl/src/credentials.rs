//! Credentials files: `REDIS_USER=` and `REDIS_PASSWORD=` lines, the format the agents read
//! (`agent_engine::RedisCredentials::from_file`), written with mode 0600 and atomically.
//!
//! A file is written to a temporary name in the same directory (created `O_EXCL`, mode 0600),
//! fsynced, given its owner, then renamed over the old one and the directory fsynced: a reader sees
//! the old file or the new one, never half of one, and never a moment with looser permissions.
//! An existing file is only replaced when it is a credentials file itself, so a mistyped path
//! (`--creds /etc/passwd`) fails instead of destroying something.
//!
//! These are small blocking writes; the async operations call them directly.

use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use agent_engine::RedisCredentials;

use crate::error::{Error, Result};
use crate::password::Password;

/// The Unix owner a credentials file (and any directory created for it) is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

impl Owner {
    /// The Unix user `name` and its primary group.
    pub fn of_user(name: &str) -> Result<Owner> {
        Self::lookup(name)?.ok_or_else(|| Error::NoSuchOwner(name.to_string()))
    }

    /// Like [`Owner::of_user`], `None` when no such user exists.
    pub fn lookup(name: &str) -> Result<Option<Owner>> {
        match nix::unistd::User::from_name(name) {
            Ok(u) => Ok(u.map(|u| Owner {
                uid: u.uid.as_raw(),
                gid: u.gid.as_raw(),
            })),
            Err(e) => Err(Error::File {
                action: "cannot look up the Unix user",
                path: PathBuf::from(name),
                source: e.into(),
            }),
        }
    }

    /// The owner of an existing file, `None` if it does not exist.
    pub fn of_file(path: &Path) -> Result<Option<Owner>> {
        match std::fs::metadata(path) {
            Ok(m) => Ok(Some(Owner {
                uid: m.uid(),
                gid: m.gid(),
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(Error::File {
                action: "cannot read",
                path: path.into(),
                source,
            }),
        }
    }

    /// The effective user and group of this process.
    pub fn current() -> Owner {
        Owner {
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
        }
    }
}

/// What an existing credentials file holds.
#[derive(Debug)]
pub struct StoredCredentials {
    pub user: Option<String>,
    pub password: Password,
}

/// Reads a credentials file; `Ok(None)` when it does not exist. A file that exists but is not a
/// credentials file is an error.
pub fn read_credentials(path: &Path) -> Result<Option<StoredCredentials>> {
    if !path.try_exists().map_err(|source| Error::File {
        action: "cannot read",
        path: path.into(),
        source,
    })? {
        return Ok(None);
    }
    let c = RedisCredentials::from_file(path)?;
    Ok(Some(StoredCredentials {
        user: c.username,
        password: Password::from_existing(c.password),
    }))
}

/// The file's text. Values are written bare: user names are agent names plus a kind, passwords hex.
fn render(user: &str, password: &Password) -> String {
    format!(
        "# Redis credentials of the ACL user {user}, written by `agentctl redis`.\n\
         # Keep this file mode 0600: the password gives this user's access to Redis.\n\
         REDIS_USER={user}\nREDIS_PASSWORD={}\n",
        password.expose()
    )
}

/// Writes `path` atomically with mode 0600, owned by `owner` (default: this process's user).
/// Missing parent directories are created with mode 0700 and the same owner. Changing the owner
/// needs root; as another user, `owner` must be that user.
pub fn write_credentials(
    path: &Path,
    user: &str,
    password: &Password,
    owner: Option<Owner>,
) -> Result<()> {
    let file_err = |action: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |source| Error::File {
            action,
            path: p,
            source,
        }
    };
    let name = path.file_name().ok_or_else(|| Error::File {
        action: "cannot write credentials to",
        path: path.into(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name"),
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if let Some(existing) = std::fs::symlink_metadata(path).ok().filter(|m| !m.is_dir()) {
        // Only ever replace a credentials file (or a symlink, which rename replaces, not follows).
        if existing.is_file() {
            RedisCredentials::from_file(path)?;
        }
    }
    let chown_to = owner.filter(|o| *o != Owner::current());
    create_dirs(&dir, chown_to)?;

    let mut suffix = [0u8; 6];
    getrandom::fill(&mut suffix).map_err(|e| Error::Random(e.to_string()))?;
    let suffix: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{suffix}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(file_err("cannot create", &tmp))?;
        // The umask can only have removed bits; say exactly what we want anyway.
        f.set_permissions(Permissions::from_mode(0o600))
            .map_err(file_err("cannot set the mode of", &tmp))?;
        if let Some(o) = chown_to {
            std::os::unix::fs::fchown(&f, Some(o.uid), Some(o.gid))
                .map_err(file_err("cannot change the owner of", &tmp))?;
        }
        f.write_all(render(user, password).as_bytes())
            .map_err(file_err("cannot write", &tmp))?;
        f.sync_all().map_err(file_err("cannot sync", &tmp))?;
        std::fs::rename(&tmp, path).map_err(file_err("cannot rename into place", path))?;
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(file_err("cannot sync the directory", &dir))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Creates `dir` and its missing ancestors with mode 0700, giving the new ones to `owner`.
fn create_dirs(dir: &Path, owner: Option<Owner>) -> Result<()> {
    let missing: Vec<&Path> = dir.ancestors().take_while(|d| !d.exists()).collect();
    for d in missing.into_iter().rev() {
        DirBuilder::new()
            .mode(0o700)
            .create(d)
            .or_else(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .map_err(|source| Error::File {
                action: "cannot create the directory",
                path: d.into(),
                source,
            })?;
        if let Some(o) = owner {
            std::os::unix::fs::chown(d, Some(o.uid), Some(o.gid)).map_err(|source| {
                Error::File {
                    action: "cannot change the owner of",
                    path: d.into(),
                    source,
                }
            })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_files_are_private_and_readable_by_the_agents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new/sub/redis.env");
        let pw = Password::generate().unwrap();
        write_credentials(&path, "module-a", &pw, None).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let parent = std::fs::metadata(path.parent().unwrap()).unwrap();
        assert_eq!(parent.permissions().mode() & 0o777, 0o700);
        let c = RedisCredentials::from_file(&path).unwrap();
        assert_eq!(c.username.as_deref(), Some("module-a"));
        assert_eq!(c.password, pw.expose());

        // Replaced atomically, no temporary file left behind.
        let pw2 = Password::generate().unwrap();
        write_credentials(&path, "module-a", &pw2, Some(Owner::current())).unwrap();
        let read = read_credentials(&path).unwrap().unwrap();
        assert_eq!(read.password, pw2);
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["redis.env"]);
    }

    #[test]
    fn a_file_that_is_no_credentials_file_is_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwd");
        std::fs::write(&path, "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        let pw = Password::generate().unwrap();
        let err = write_credentials(&path, "module-a", &pw, None).unwrap_err();
        assert!(err.to_string().contains("KEY=VALUE"), "{err}");
        assert!(std::fs::read_to_string(&path).unwrap().starts_with("root:"));
        assert!(read_credentials(&dir.path().join("missing"))
            .unwrap()
            .is_none());
    }

    #[test]
    fn errors_never_show_the_password() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("file"), "").unwrap();
        // A path below a regular file cannot be created.
        let path = dir.path().join("file/redis.env");
        let pw = Password::generate().unwrap();
        let err = write_credentials(&path, "module-a", &pw, None).unwrap_err();
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains(pw.expose()), "{shown}");
    }
}
