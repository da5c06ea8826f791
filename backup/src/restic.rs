//! restic, run with a repository: the address, password and credentials go in its environment
//! (never in argv, which every user of the host can read), inherited `RESTIC_*` variables are
//! dropped so that nothing else reaches it, and its `--json` output is read into typed reports.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::{Error, Repository, Result};

/// The program (`AGENT_RESTIC` overrides it, for tests of a given build).
fn program() -> PathBuf {
    std::env::var_os("AGENT_RESTIC")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("restic"))
}

/// restic's cache (root's, outside any module's home).
pub const CACHE_DIR: &str = "/var/cache/agent/restic";

/// restic's exit code when the repository does not exist (restic ≥ 0.17).
const EXIT_NO_REPOSITORY: i32 = 10;

/// What `restic backup` reports at its end.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct BackupSummary {
    pub snapshot_id: String,
    #[serde(default)]
    pub files_new: u64,
    #[serde(default)]
    pub files_changed: u64,
    #[serde(default)]
    pub files_unmodified: u64,
    #[serde(default)]
    pub data_added: u64,
    #[serde(default)]
    pub total_files_processed: u64,
    #[serde(default)]
    pub total_bytes_processed: u64,
}

/// One snapshot as `restic snapshots --json` lists it.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
pub struct Snapshot {
    pub id: String,
    pub short_id: String,
    pub time: String,
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub paths: Vec<String>,
}

impl Snapshot {
    /// The value of tag `name=…`.
    pub fn tag(&self, name: &str) -> Option<&str> {
        self.tags
            .iter()
            .find_map(|t| t.strip_prefix(name).and_then(|r| r.strip_prefix('=')))
    }
}

/// restic with one repository.
pub struct Restic<'a> {
    repo: &'a Repository,
}

impl<'a> Restic<'a> {
    pub fn new(repo: &'a Repository) -> Self {
        Restic { repo }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(program());
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("RESTIC_") {
                cmd.env_remove(&name);
            }
        }
        cmd.env("RESTIC_REPOSITORY", self.repo.url.as_str())
            .env(
                "RESTIC_PASSWORD",
                self.repo.password.expose_str().unwrap_or_default(),
            )
            .env("RESTIC_CACHE_DIR", CACHE_DIR)
            .env("RESTIC_PROGRESS_FPS", "0.2");
        for (name, value) in &self.repo.credentials {
            cmd.env(name, value.expose_str().unwrap_or_default());
        }
        cmd.args(args).stdin(Stdio::null());
        cmd
    }

    fn run(&self, what: &str, mut cmd: Command) -> Result<Output> {
        let out = cmd.output().map_err(|e| Error::Restic {
            what: what.into(),
            detail: format!(
                "cannot run {}: {e} (is the restic package installed?)",
                program().display()
            ),
        })?;
        if out.status.success() {
            Ok(out)
        } else {
            Err(self.failure(what, &out))
        }
    }

    fn failure(&self, what: &str, out: &Output) -> Error {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let mut lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        if lines.len() > 8 {
            lines.drain(..lines.len() - 8);
        }
        let code = out
            .status
            .code()
            .map_or_else(|| "killed by a signal".to_string(), |c| format!("exit {c}"));
        Error::Restic {
            what: format!("{what} ({}, {})", self.repo.name, self.repo.url),
            detail: format!("{code}: {}", lines.join(" / ")),
        }
    }

    /// Whether the repository exists (is initialised).
    pub fn exists(&self) -> Result<bool> {
        let mut cmd = self.command(&["cat", "config", "--no-lock", "-q"]);
        cmd.stdout(Stdio::null());
        let out = cmd.output().map_err(|e| Error::Restic {
            what: "cat config".into(),
            detail: format!("cannot run {}: {e}", program().display()),
        })?;
        match out.status.code() {
            Some(0) => Ok(true),
            Some(EXIT_NO_REPOSITORY) => Ok(false),
            _ => Err(self.failure("opening the repository", &out)),
        }
    }

    /// `restic init`.
    pub fn init(&self) -> Result<()> {
        self.run("init", self.command(&["init", "-q"])).map(|_| ())
    }

    /// `restic backup` of `paths` (relative to `dir`), tagged, under host name `host`; a file
    /// whose size and mtime are those of the last snapshot is taken as unchanged.
    pub fn backup(
        &self,
        dir: &Path,
        paths: &[&str],
        tags: &[String],
        host: &str,
    ) -> Result<BackupSummary> {
        // The dump is made afresh for every backup (new inodes and ctimes, mtimes kept by the
        // module's copy): without these, restic would read every unchanged file again.
        let mut args = vec![
            "backup",
            "--json",
            "--host",
            host,
            "--ignore-inode",
            "--ignore-ctime",
        ];
        for t in tags {
            args.extend(["--tag", t.as_str()]);
        }
        args.push("--");
        args.extend(paths);
        let mut cmd = self.command(&args);
        cmd.current_dir(dir);
        let out = self.run("backup", cmd)?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        stdout
            .lines()
            .rev()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["message_type"] == "summary")
            .and_then(|v| serde_json::from_value(v).ok())
            .ok_or_else(|| Error::Restic {
                what: "backup".into(),
                detail: "it printed no summary".into(),
            })
    }

    /// The snapshots carrying every tag of `tags`, oldest first.
    pub fn snapshots(&self, tags: &[String]) -> Result<Vec<Snapshot>> {
        let joined = tags.join(",");
        let mut args = vec!["snapshots", "--json", "--no-lock"];
        if !tags.is_empty() {
            args.extend(["--tag", joined.as_str()]);
        }
        let out = self.run("snapshots", self.command(&args))?;
        serde_json::from_slice(&out.stdout).map_err(|e| Error::Restic {
            what: "snapshots".into(),
            detail: format!("unexpected output: {e}"),
        })
    }

    /// The snapshot `id` (a full or short id).
    pub fn snapshot(&self, id: &str) -> Result<Snapshot> {
        let out = self.run(
            "snapshots",
            self.command(&["snapshots", "--json", "--no-lock", "--", id]),
        )?;
        let list: Vec<Snapshot> =
            serde_json::from_slice(&out.stdout).map_err(|e| Error::Restic {
                what: "snapshots".into(),
                detail: format!("unexpected output: {e}"),
            })?;
        list.into_iter().next().ok_or_else(|| {
            Error::NotFound(format!(
                "no snapshot {id} in repository {} ({})",
                self.repo.name, self.repo.url
            ))
        })
    }

    /// `restic restore --delete SNAPSHOT:DIR --target TARGET`: `target` made the contents of the
    /// snapshot's directory `dir` (an absolute path of the snapshot). What `target` holds already
    /// (an earlier snapshot of the same data: a move's first copy) is kept where it matches, only
    /// the differences written, and what the snapshot lacks deleted (restic ≥ 0.17).
    pub fn restore_dir(&self, snapshot: &str, dir: &str, target: &Path) -> Result<()> {
        let source = format!("{snapshot}:{dir}");
        let target = target.to_string_lossy();
        self.run(
            "restore",
            self.command(&[
                "restore", "-q", "--delete", "--target", &target, "--", &source,
            ]),
        )
        .map(|_| ())
    }

    /// `restic dump SNAPSHOT PATH`: one file of a snapshot.
    pub fn dump(&self, snapshot: &str, path: &str) -> Result<Vec<u8>> {
        self.run("dump", self.command(&["dump", "--no-lock", snapshot, path]))
            .map(|o| o.stdout)
    }

    /// `restic forget --prune` of the snapshots carrying `tags`, keeping what `keep` (restic's
    /// `--keep-*` options) says; its output.
    pub fn forget(&self, tags: &[String], keep: &[String]) -> Result<String> {
        let joined = tags.join(",");
        let mut args = vec!["forget", "--prune", "--tag", joined.as_str()];
        args.extend(keep.iter().map(String::as_str));
        let out = self.run("forget", self.command(&args))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `restic dump --archive tar SNAPSHOT /` into the file `out`: the whole snapshot as one tar.
    pub fn dump_tar(&self, snapshot: &str, out: &Path) -> Result<()> {
        let file =
            std::fs::File::create(out).map_err(Error::io(format!("creating {}", out.display())))?;
        let mut cmd = self.command(&["dump", "--no-lock", "--archive", "tar", "--", snapshot, "/"]);
        cmd.stdout(file);
        self.run("dump", cmd).map(|_| ())
    }

    /// `restic check`, reading all of the data (`read_all`) or a tenth of it, chosen at random
    /// by restic; its output.
    pub fn check(&self, read_all: bool) -> Result<String> {
        let args: &[&str] = if read_all {
            &["check", "--read-data"]
        } else {
            &["check", "--read-data-subset", "10%"]
        };
        let out = self.run("check", self.command(args))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_tags() {
        let s: Snapshot = serde_json::from_str(
            r#"{"id":"ab","short_id":"ab","time":"t","tags":["module=hello1","image=localhost/hello:latest"]}"#,
        )
        .unwrap();
        assert_eq!(s.tag("module"), Some("hello1"));
        assert_eq!(s.tag("image"), Some("localhost/hello:latest"));
        assert_eq!(s.tag("core"), None);
    }
}
