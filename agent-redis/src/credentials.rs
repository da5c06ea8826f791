//! Credentials files: `REDIS_USER=` and `REDIS_PASSWORD=` lines, read by the agents and tools, written
//! with mode 0600 and atomically.
//!
//! A file is written to a temporary name in the same directory (created `O_EXCL`, mode 0600),
//! fsynced, given its owner, then renamed over the old one and the directory fsynced: a reader sees
//! the old file or the new one, never half of one, and never a moment with looser permissions.
//! An existing file is only replaced when it is a credentials file itself, so a mistyped path
//! (`--creds /etc/passwd`) fails instead of destroying something.
//!
//! These are small blocking file operations; async callers call them directly.

use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::password::Password;

/// Key of the user name line.
pub const USER_KEY: &str = "REDIS_USER";
/// Key of the password line.
pub const PASSWORD_KEY: &str = "REDIS_PASSWORD";

/// A Redis user name (none: Redis's `default` user) and its password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: Option<String>,
    pub password: Password,
}

impl Credentials {
    /// Reads a credentials file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::File {
            action: "cannot read the Redis credentials file",
            path: path.into(),
            source,
        })?;
        Self::parse(&text).map_err(|reason| Error::CredentialsFormat {
            path: path.into(),
            reason,
        })
    }

    /// Reads a credentials file; `Ok(None)` when it does not exist. A file that exists but is not a
    /// credentials file is an error.
    /// A dangling symlink counts as no file ([`Credentials::write`] replaces the link itself).
    pub fn read_if_exists(path: &Path) -> Result<Option<Self>> {
        match path.try_exists() {
            Ok(false) => Ok(None),
            Ok(true) => Self::from_file(path).map(Some),
            Err(source) => Err(Error::File {
                action: "cannot read",
                path: path.into(),
                source,
            }),
        }
    }

    /// Parses the text of a credentials file: `KEY=VALUE` lines, `REDIS_USER` (optional) and
    /// `REDIS_PASSWORD`; blank lines and `#` comments are ignored. The reason of a refusal never
    /// quotes a value.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let mut username = None;
        let mut password = None;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                return Err(format!("line {} is not KEY=VALUE", n + 1));
            };
            match k.trim() {
                USER_KEY => username = Some(v.trim().to_string()),
                PASSWORD_KEY => password = Some(Password::from_existing(v.trim())),
                other => return Err(format!("line {}: unknown key {other:?}", n + 1)),
            }
        }
        let password = password.ok_or(format!("{PASSWORD_KEY} is missing"))?;
        Ok(Credentials { username, password })
    }

    /// The text of the file. Values are written bare: user names are agent names plus a kind, passwords
    /// hex.
    pub fn to_text(&self) -> String {
        let user = self.username.as_deref().unwrap_or("default");
        format!(
            "# Redis credentials of the ACL user {user}.\n\
             # Keep this file mode 0600: the password gives this user's access to Redis.\n\
             {USER_KEY}={user}\n{PASSWORD_KEY}={}\n",
            self.password.expose()
        )
    }

    /// Writes `path` atomically with mode 0600, owned by `owner` (default: this process's user).
    /// Missing parent directories are created with mode 0700 and the same owner. Changing the owner
    /// needs root; as another user, `owner` must be that user.
    pub fn write(&self, path: &Path, owner: Option<Owner>) -> Result<()> {
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
                Credentials::from_file(path)?;
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
            f.write_all(self.to_text().as_bytes())
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
}

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

    fn creds(user: &str) -> Credentials {
        Credentials {
            username: Some(user.into()),
            password: Password::generate().unwrap(),
        }
    }

    #[test]
    fn parse_reads_the_format_and_never_quotes_a_value() {
        let c = Credentials::parse("# x\nREDIS_USER=mod0\nREDIS_PASSWORD=s3cr3t\n").unwrap();
        assert_eq!(c.username.as_deref(), Some("mod0"));
        assert_eq!(c.password.expose(), "s3cr3t");
        assert!(!format!("{c:?}").contains("s3cr3t"));
        assert!(Credentials::parse("REDIS_USER=x").is_err());
        assert!(Credentials::parse("garbage").is_err());
        let e = Credentials::parse("REDIS_PASSWORD=s3cr3t\nS3CR3T").unwrap_err();
        assert!(!e.contains("S3CR3T"), "{e}");
    }

    #[test]
    fn written_files_are_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new/sub/redis.env");
        let c = creds("module-a");
        c.write(&path, None).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let parent = std::fs::metadata(path.parent().unwrap()).unwrap();
        assert_eq!(parent.permissions().mode() & 0o777, 0o700);
        assert_eq!(Credentials::from_file(&path).unwrap(), c);

        // Replaced atomically, no temporary file left behind.
        let c2 = creds("module-a");
        c2.write(&path, Some(Owner::current())).unwrap();
        assert_eq!(Credentials::read_if_exists(&path).unwrap(), Some(c2));
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
        let err = creds("module-a").write(&path, None).unwrap_err();
        assert!(err.to_string().contains("KEY=VALUE"), "{err}");
        assert!(std::fs::read_to_string(&path).unwrap().starts_with("root:"));
        assert!(Credentials::read_if_exists(&dir.path().join("missing"))
            .unwrap()
            .is_none());
        let dangling = dir.path().join("dangling");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).unwrap();
        assert!(Credentials::read_if_exists(&dangling).unwrap().is_none());
    }

    #[test]
    fn errors_never_show_the_password() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("file"), "").unwrap();
        // A path below a regular file cannot be created.
        let path = dir.path().join("file/redis.env");
        let c = creds("module-a");
        let err = c.write(&path, None).unwrap_err();
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains(c.password.expose()), "{shown}");
    }
}
