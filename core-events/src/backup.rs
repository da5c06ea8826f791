//! The backup contract: the names of backup repositories and what a repository address may be,
//! the keys of the repositories, the cluster's backup settings and each module's backup status, the
//! node's and the module's `backup` events, the events a backup emits, and the tags of a snapshot.
//! docs/BACKUP.md tells the sysadmin's side, docs/MODULES.md the module author's.

use std::fmt;

/// The node event that backs up one module (data: `ID` or `ID REPOSITORY`), and the module event
/// its first step queues on the module's agent (data: the dump directory).
pub const BACKUP_EVENT: &str = "backup";
/// The node event that restores a snapshot into an installed module (data: `ID SNAPSHOT`, see
/// `ID SNAPSHOT [REPOSITORY]`), and the module event that puts the data back (data: the directory).
pub const RESTORE_EVENT: &str = "restore";
/// The node event that fetches a snapshot before its module is made (data as [`RESTORE_EVENT`]'s):
/// the snapshot's image in root's storage, its dump staged. Then `module.init`, then `restore`.
pub const PREPARE_RESTORE_EVENT: &str = "restore.prepare";
/// The module event a scratch copy runs to check itself after a verification's restore (data:
/// the snapshot id); optional.
pub const VERIFY_EVENT: &str = "backup-verify";
/// The first letters of a scratch module's id (`agentctl backup verify`).
pub const SCRATCH_PREFIX: &str = "verify";
/// Emitted by the node (`event/<node>/backup-failed`) when a module's backup fails; payload JSON
/// with `module`, `repository`, `run`, `error`.
pub const FAILED_EVENT: &str = "backup-failed";
/// Emitted by the node when a module's backup succeeded; payload JSON with the report's figures.
pub const DONE_EVENT: &str = "backup-done";

/// The first letters of the names of the repositories `agentctl module export` and `import` make
/// for themselves while they run (reserved: `agentctl backup repo add` refuses them).
pub const EXPORT_REPOSITORY_PREFIX: &str = "export-";
pub const IMPORT_REPOSITORY_PREFIX: &str = "import-";

/// Whether a repository is one of those: a backup into it is a copy to a file, not the module's
/// backup, and leaves the module's status (and its alerts) alone — else an export would clear a
/// failed status.
pub fn is_transient_repository(name: &str) -> bool {
    [EXPORT_REPOSITORY_PREFIX, IMPORT_REPOSITORY_PREFIX]
        .iter()
        .any(|p| name.starts_with(p))
}

/// `cluster/backup`: the cluster's backup settings (fields in [`settings`]).
pub fn settings_key() -> String {
    "cluster/backup".to_string()
}

/// The fields of [`settings_key`].
pub mod settings {
    /// The age recipient of the cluster's backup identity: repository passwords are encrypted to it.
    pub const RECIPIENT: &str = "recipient";
    /// The repository a backup goes to when none is named.
    pub const DEFAULT_REPOSITORY: &str = "default_repository";
}

/// The node-agent's and agentctl's environment variable naming the cluster's backup identity
/// (default [`DEFAULT_IDENTITY_FILE`]).
pub const IDENTITY_VAR: &str = "AGENT_BACKUP_IDENTITY";
/// Where a node keeps the cluster's backup identity (root's, 0600): it opens the repositories'
/// passwords.
pub const DEFAULT_IDENTITY_FILE: &str = "/etc/agent/backup.key";
/// Where a node keeps what a backup or a restore of a module stages (root's, 0711): per module a
/// directory `<id>/` with the module's `dump/` (its user's) and the core's `core/` (root's). Beside
/// the module homes (useradd's base directory), on their file system: a module can hard-link its
/// data into the dump instead of copying it. Only root can change `/home`, so no module can swap
/// this directory for a symlink.
pub const DEFAULT_STAGING_DIR: &str = "/home/.agent-backup";
/// The node-agent's environment variable overriding [`DEFAULT_STAGING_DIR`] (tests).
pub const STAGING_VAR: &str = "AGENT_BACKUP_STAGING";
/// Within a module's staging directory: what the module's `backup` steps dump.
pub const DUMP_DIR: &str = "dump";
/// Within a module's staging directory: what the core knows of the module ([`CORE_FILE`]).
pub const CORE_DIR: &str = "core";
/// The core's part of a snapshot, JSON ([`CoreRecord`]), in [`CORE_DIR`].
pub const CORE_FILE: &str = "module.json";

/// `cluster/backup/repositories`: the set of repository names.
pub fn repositories_key() -> String {
    "cluster/backup/repositories".to_string()
}

/// `cluster/backup/repository/<name>`: one repository (fields in [`repository`]).
pub fn repository_key(name: &RepoName) -> String {
    format!("cluster/backup/repository/{name}")
}

/// The fields of [`repository_key`].
pub mod repository {
    /// The restic repository address ([`super::RepoUrl`]).
    pub const URL: &str = "url";
    /// The restic password, age-armored to the cluster's backup recipient.
    pub const PASSWORD: &str = "password";
    /// Credentials of the repository's server as `NAME=VALUE` lines (`RESTIC_REST_USERNAME`,
    /// `RESTIC_REST_PASSWORD`), age-armored like the password; optional.
    pub const CREDENTIALS: &str = "credentials";
    /// When it was added (RFC 3339).
    pub const CREATED: &str = "created";
}

/// `cluster/backup/status/*`: every module's backup status (the node users write them).
pub fn status_pattern() -> String {
    "cluster/backup/status/*".to_string()
}

/// `cluster/backup/status/<id>`: the module's backup status (fields in [`status`]), written only by
/// the node that backs it up — never by the module, whose user writes `module/<id>/*` only.
pub fn status_key(module: &str) -> String {
    format!("cluster/backup/status/{module}")
}

/// The fields of [`status_key`]. `state` is the one answer to "is this module's backup good?":
/// `failed` from a failed attempt until a later attempt of the same module succeeds — an attempt
/// that starts, an agent restart or a reboot do not clear it.
pub mod status {
    /// [`super::STATE_OK`] or [`super::STATE_FAILED`]; absent before the first attempt ended.
    pub const STATE: &str = "state";
    /// The last attempt: when it started (RFC 3339), its run (node run id), node, repository,
    /// and its outcome: `running`, `done` or `failed`.
    pub const ATTEMPT_STARTED: &str = "attempt_started";
    pub const ATTEMPT_RUN: &str = "attempt_run";
    pub const ATTEMPT_NODE: &str = "attempt_node";
    pub const ATTEMPT_REPOSITORY: &str = "attempt_repository";
    pub const ATTEMPT_STATUS: &str = "attempt_status";
    /// When the last attempt ended, and why it failed (its failed step and output's last lines).
    pub const ATTEMPT_ENDED: &str = "attempt_ended";
    pub const ATTEMPT_ERROR: &str = "attempt_error";
    /// The last success: when it ended, its snapshot id, repository, the files and bytes of the
    /// backup, the bytes it added to the repository, its duration in milliseconds.
    pub const SUCCESS_ENDED: &str = "success_ended";
    pub const SUCCESS_SNAPSHOT: &str = "success_snapshot";
    pub const SUCCESS_REPOSITORY: &str = "success_repository";
    pub const SUCCESS_FILES: &str = "success_files";
    pub const SUCCESS_BYTES: &str = "success_bytes";
    pub const SUCCESS_ADDED: &str = "success_added";
    pub const SUCCESS_DURATION_MS: &str = "success_duration_ms";
    /// The last verification (`agentctl backup verify`): when it ended, `ok` or `failed`, the
    /// snapshot it restored, why it failed.
    pub const VERIFY_ENDED: &str = "verify_ended";
    pub const VERIFY_STATE: &str = "verify_state";
    pub const VERIFY_SNAPSHOT: &str = "verify_snapshot";
    pub const VERIFY_ERROR: &str = "verify_error";
}

/// [`status::STATE`] after a success.
pub const STATE_OK: &str = "ok";
/// [`status::STATE`] after a failure, until the next success.
pub const STATE_FAILED: &str = "failed";
/// [`status::ATTEMPT_STATUS`] while an attempt runs.
pub const ATTEMPT_RUNNING: &str = "running";

/// The tags every snapshot of a module carries (`restic backup --tag`): `module=<id>`,
/// `image=<reference>`, `core=<version>`. restic tags cannot hold a comma.
pub fn snapshot_tags(module: &str, image: &str, core_version: &str) -> [String; 3] {
    [
        module_tag(module),
        format!("image={}", image.replace(',', "%2C")),
        format!("core={core_version}"),
    ]
}

/// The tag that selects a module's snapshots (`restic snapshots --tag`).
pub fn module_tag(module: &str) -> String {
    format!("module={module}")
}

/// What the core keeps of a module in its snapshot ([`CORE_FILE`]): enough to create it again.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CoreRecord {
    /// The module id it was backed up from.
    pub module: String,
    /// The node it ran on.
    pub node: String,
    /// The image reference of its module.env, and the image's id (digest) on the node then.
    pub image: String,
    #[serde(default)]
    pub image_id: Option<String>,
    /// Its module.env (every field, the image's included).
    pub module_env: std::collections::BTreeMap<String, String>,
    /// Its routes as stored (`module/<id>/routes`: name → JSON).
    #[serde(default)]
    pub routes: std::collections::BTreeMap<String, String>,
    /// Its secrets as stored (`module/<id>/secrets`: name → age ciphertext to its identity).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub secrets: std::collections::BTreeMap<String, String>,
    /// Its secret identity (the private key its secrets are encrypted to), age-encrypted to the
    /// cluster's backup key: a restore gives it back to the module, so that its secrets open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// The version of the core that made the snapshot.
    pub core_version: String,
}

/// The node event that makes the node's backup timers those of the schedules (no data): queued on
/// every node by `agentctl backup schedule set|rm`, and at the node-agent's start.
pub const SCHEDULE_EVENT: &str = "backup.schedule";

/// The node event that stops a module's own units on its node, its module-agent left running (data:
/// `ID`): a move's final backup then dumps data nothing writes any more. `module.init` starts them
/// again.
pub const STOP_EVENT: &str = "module.stop";
/// The node event that takes a module down on its node and keeps it down at boot (data: `ID`):
/// its module-agent stopped, linger off, its processes ended. Its user, home and keys stay, so
/// `module.init` brings it back; `module.remove` removes it.
pub const DETACH_EVENT: &str = "module.detach";

/// `cluster/move/<id>`: a move of a module between nodes in progress (fields in [`moving`]),
/// written by `agentctl module move` and deleted when the move ends, either way; a move run again
/// goes on from its phase.
pub fn move_key(module: &str) -> String {
    format!("cluster/move/{module}")
}

/// The fields of [`move_key`].
pub mod moving {
    /// The node the module runs on when the move began, and the node it goes to.
    pub const FROM: &str = "from";
    pub const TO: &str = "to";
    /// The repository the copies go through.
    pub const REPOSITORY: &str = "repository";
    /// Where the move is ([`super::MovePhase`]).
    pub const PHASE: &str = "phase";
    /// The final snapshot (from [`super::MovePhase::Final`] on).
    pub const SNAPSHOT: &str = "snapshot";
    /// When the move began (RFC 3339).
    pub const STARTED: &str = "started";
}

/// The phases of a move, in order. Up to [`MovePhase::Final`] the module can run again on its
/// node; from [`MovePhase::Detached`] on it is down there and the move goes forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum MovePhase {
    /// A first copy while the module runs (a backup, fetched by the target).
    Copy,
    /// The module's units stopped on its node, the final backup under way.
    Stopping,
    /// The final snapshot taken (its id in [`moving::SNAPSHOT`]).
    Final,
    /// The module down on its old node; being made on the target.
    Detached,
    /// The module made on the target, its data restored: the old copy being removed.
    Started,
}

impl MovePhase {
    pub fn as_str(self) -> &'static str {
        match self {
            MovePhase::Copy => "copy",
            MovePhase::Stopping => "stopping",
            MovePhase::Final => "final",
            MovePhase::Detached => "detached",
            MovePhase::Started => "started",
        }
    }

    pub fn parse(s: &str) -> Option<MovePhase> {
        [
            MovePhase::Copy,
            MovePhase::Stopping,
            MovePhase::Final,
            MovePhase::Detached,
            MovePhase::Started,
        ]
        .into_iter()
        .find(|p| p.as_str() == s)
    }
}

/// `cluster/backup/schedules`: the set of schedule names.
pub fn schedules_key() -> String {
    "cluster/backup/schedules".to_string()
}

/// `cluster/backup/schedule/<name>`: one schedule (fields in [`schedule`]).
pub fn schedule_key(name: &RepoName) -> String {
    format!("cluster/backup/schedule/{name}")
}

/// The fields of [`schedule_key`].
pub mod schedule {
    /// When, as systemd's `OnCalendar=` reads it (`daily`, `Mon..Fri 02:30`, `*-*-* 00/6:00`).
    pub const CALENDAR: &str = "calendar";
    /// The modules it backs up: ids separated by spaces, or `*` for every module.
    pub const MODULES: &str = "modules";
    /// The repository (empty: the default).
    pub const REPOSITORY: &str = "repository";
    /// Retention, `restic forget --keep-last/-daily/-weekly/-monthly N` after each backup of a
    /// module it covers (absent or 0: not that rule; none at all: nothing is forgotten).
    pub const KEEP_LAST: &str = "keep_last";
    pub const KEEP_DAILY: &str = "keep_daily";
    pub const KEEP_WEEKLY: &str = "keep_weekly";
    pub const KEEP_MONTHLY: &str = "keep_monthly";
    /// What the schedule does: [`ACTION_BACKUP`] (also when the field is missing) or
    /// [`ACTION_VERIFY`] (`agentctl backup verify` of each module, on its node).
    pub const ACTION: &str = "action";
    pub const ACTION_BACKUP: &str = "backup";
    pub const ACTION_VERIFY: &str = "verify";
}

/// The `modules` value that covers every module.
pub const ALL_MODULES: &str = "*";

/// The systemd timer of schedule `name` on a node (`agent-backup-<name>.timer`, and its service).
pub fn timer_unit(name: &RepoName) -> String {
    format!("{TIMER_PREFIX}{name}.timer")
}

/// The first letters of every backup timer and service the node makes.
pub const TIMER_PREFIX: &str = "agent-backup-";

/// Checks a calendar expression for what may go into a unit file: printable ASCII of systemd's
/// calendar syntax only (no `%` specifier, no `\` continuation, no newline), at most 200 bytes.
/// Whether systemd understands it is for `systemd-analyze calendar` to say.
pub fn check_calendar(s: &str) -> Result<(), BackupNameError> {
    let ok = !s.trim().is_empty()
        && s.len() <= 200
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || " :*,./~+-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(BackupNameError::RepoUrl(format!(
            "calendar {s:?}: systemd's OnCalendar syntax (daily, Mon..Fri 02:30, *-*-* 00/6:00), letters, digits and \" :*,./~+-\" only"
        )))
    }
}

/// Why a repository name or address is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackupNameError {
    #[error(
        "a repository name is a lowercase letter, then up to 30 lowercase letters, digits or '-'"
    )]
    RepoName,
    #[error("{0}")]
    RepoUrl(String),
}

/// A repository's name: `[a-z][a-z0-9-]{0,30}` (it is part of a key).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RepoName(String);

impl RepoName {
    pub fn new(s: &str) -> Result<Self, BackupNameError> {
        let mut chars = s.chars();
        let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase());
        let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if first_ok && rest_ok && s.len() <= 31 {
            Ok(RepoName(s.to_string()))
        } else {
            Err(BackupNameError::RepoName)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A restic repository address of one of the kinds the product supports: a local directory
/// (`/srv/backup` or `local:/srv/backup`), SFTP (`sftp:user@host:/path`) or a REST server
/// (`rest:http://host:8000/path`, `rest:https://…`). Credentials do not go in the address (they
/// would be shown by `restic` and `agentctl backup repo list`): a REST server's user and password
/// are the repository's credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoUrl(String);

impl RepoUrl {
    pub fn new(s: &str) -> Result<Self, BackupNameError> {
        let bad = |why: &str| Err(BackupNameError::RepoUrl(format!("repository {s:?}: {why}")));
        if s.is_empty() || s.len() > 1024 {
            return bad("empty or longer than 1024 bytes");
        }
        if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return bad("no spaces or control characters");
        }
        if let Some(path) = s.strip_prefix("local:").or(s.starts_with('/').then_some(s)) {
            if !path.starts_with('/') || path.split('/').any(|c| c == "..") {
                return bad("a local repository is an absolute path without '..'");
            }
        } else if let Some(rest) = s.strip_prefix("rest:") {
            let Some(after) = rest
                .strip_prefix("http://")
                .or_else(|| rest.strip_prefix("https://"))
            else {
                return bad("a REST repository is rest:http://HOST[:PORT]/PATH or rest:https://…");
            };
            let authority = after.split('/').next().unwrap_or("");
            if authority.is_empty() {
                return bad("no host");
            }
            if authority.contains('@') {
                return bad("no user or password in the address: give them as the repository's credentials (--credentials-stdin)");
            }
        } else if let Some(rest) = s.strip_prefix("sftp:") {
            let ok = if let Some(url) = rest.strip_prefix("//") {
                !url.is_empty() && !url.starts_with('/')
            } else {
                rest.split_once(':')
                    .is_some_and(|(host, path)| !host.is_empty() && !path.is_empty())
            };
            if !ok || rest.starts_with('-') {
                return bad(
                    "an SFTP repository is sftp:USER@HOST:/PATH or sftp://USER@HOST:PORT//PATH",
                );
            }
        } else {
            return bad(
                "use a local path (/srv/backup), sftp:USER@HOST:/PATH or rest:http(s)://HOST/PATH",
            );
        }
        Ok(RepoUrl(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The local directory of a local repository.
    pub fn local_path(&self) -> Option<&str> {
        self.0
            .strip_prefix("local:")
            .or(self.0.starts_with('/').then_some(self.0.as_str()))
    }
}

impl fmt::Display for RepoUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The names a repository's credentials may set (the environment of `restic`; nothing else can be
/// smuggled into it this way).
pub const CREDENTIAL_NAMES: [&str; 2] = ["RESTIC_REST_USERNAME", "RESTIC_REST_PASSWORD"];

/// A restic snapshot id as restic prints it: 8 to 64 lowercase hex digits, or `latest`.
pub fn is_snapshot_id(s: &str) -> bool {
    s == "latest"
        || ((8..=64).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_names() {
        for ok in ["local", "nas-1", "a", "b2"] {
            assert!(RepoName::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "1a", "A", "a_b", "a/b", "a b", "-a", &"a".repeat(32)] {
            assert!(RepoName::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn repo_urls() {
        for ok in [
            "/srv/backup",
            "local:/srv/backup",
            "rest:http://127.0.0.1:8000/",
            "rest:https://backup.example/repo",
            "sftp:backup@nas:/srv/restic",
            "sftp://backup@nas:2222//srv/restic",
        ] {
            assert!(RepoUrl::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "srv/backup",
            "-o x",
            "--repo=/x",
            "/srv/../etc",
            "local:relative",
            "/srv/back up",
            "/srv/a\nb",
            "rest:ftp://x",
            "rest:http:///x",
            "rest:http://user:pw@host/",
            "sftp:",
            "sftp:host",
            "sftp:-oProxyCommand=x:/p",
            "s3:s3.amazonaws.com/bucket",
        ] {
            assert!(RepoUrl::new(bad).is_err(), "{bad:?}");
        }
        assert_eq!(RepoUrl::new("local:/a").unwrap().local_path(), Some("/a"));
        assert_eq!(RepoUrl::new("/a").unwrap().local_path(), Some("/a"));
        assert_eq!(RepoUrl::new("rest:http://h/").unwrap().local_path(), None);
    }

    #[test]
    fn calendars_fit_in_a_unit_file() {
        for ok in [
            "daily",
            "Mon..Fri 02:30",
            "*-*-* 00/6:00",
            "Sat *-*-1..7 18:00:00",
            "hourly",
        ] {
            assert!(check_calendar(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            " ",
            "daily\nExecStart=/bin/sh",
            "%H",
            "daily\\",
            &"d".repeat(201),
        ] {
            assert!(check_calendar(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn export_and_import_repositories_are_transient() {
        assert!(is_transient_repository("export-0a1b2c3d"));
        assert!(is_transient_repository("import-0a1b2c3d"));
        assert!(!is_transient_repository("exports"));
        assert!(!is_transient_repository("nas"));
    }

    #[test]
    fn move_phases_round_trip_in_order() {
        let all = [
            MovePhase::Copy,
            MovePhase::Stopping,
            MovePhase::Final,
            MovePhase::Detached,
            MovePhase::Started,
        ];
        for p in all {
            assert_eq!(MovePhase::parse(p.as_str()), Some(p));
        }
        assert!(all.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(MovePhase::parse("done"), None);
        assert_eq!(move_key("hello1"), "cluster/move/hello1");
    }

    #[test]
    fn snapshot_ids_and_tags() {
        assert!(is_snapshot_id("latest") && is_snapshot_id("0123abcd"));
        for bad in ["", "0123abc", "0123ABCD", "--all", "0123abcg"] {
            assert!(!is_snapshot_id(bad), "{bad}");
        }
        let tags = snapshot_tags("hello1", "localhost/hello:1,2", "0.1.0");
        assert_eq!(tags[0], "module=hello1");
        assert!(!tags[1].contains(','));
    }
}
