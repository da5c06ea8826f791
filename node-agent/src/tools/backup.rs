//! `node-agent backup …`: the node's side of a module's backup, the steps of the node's `backup`
//! event (imageroot/node-events/backup, data `ID [REPOSITORY]`). `dump` names the directory the
//! module dumps its state into and has the module's own `backup` event do it; `snapshot` adds
//! what the core knows of the module and makes one restic snapshot of both, then records the
//! success; `record-failure`, the event's rollback step, records a failure and emits
//! `backup-failed`. The status (`backup::status`) stays failed until a later backup succeeds.
//!
//! Where the dump goes: `/home/.agent-backup/<id>/dump` (`core_events::backup`), outside the
//! module's home but on its file system (so a module can hard-link its data into it). Its parent is root's (0711), so the module's user can write inside `dump` but
//! cannot replace it with a symlink; before restic (root) reads it, the directory itself is given
//! to root (0700), so no process of the module's user can reach into it any more. restic stores
//! symlinks as symlinks and never follows them.

use std::collections::HashMap;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use core_events::backup::{self as contract, CoreRecord, RepoName};
use core_events::record::{QUEUE_FIELD_DATA, QUEUE_FIELD_EVENT, QUEUE_FIELD_ID};
use core_events::{
    exit, keys, module_env, step_env, EventName, ModuleId, Prefix, RunId, RunRecord, RunStatus,
};

use core_events::module_image::check_image_ref as check_image;

use super::user::ModuleUser;
use super::{env_secs, Ctx, Result, ToolError};

#[derive(Debug, clap::Subcommand)]
pub enum BackupCmd {
    /// backup/10dump: records the attempt in cluster/backup/status/ID, empties
    /// /home/.agent-backup/ID/dump (the module's user's), queues the module's own `backup`
    /// event with that directory as its data and waits for it (BACKUP_DUMP_WAIT s, default
    /// 3600). A module that defines no `backup` event has nothing of its own to dump: the
    /// snapshot then holds the core's record only (said in the output).
    Dump(DataArg),
    /// backup/20snapshot: the core's record of the module (module.env, image and its id,
    /// routes) in /home/.agent-backup/ID/core, one restic snapshot of dump/ and core/ tagged
    /// module=ID, image=…, core=VERSION, and the success recorded (`agentctl backup status`).
    Snapshot(DataArg),
    /// backup.rollback/10record-failure: the attempt recorded as failed — the module's backup
    /// stays failed until a later one succeeds — and `backup-failed` emitted.
    RecordFailure(DataArg),
    /// restore.prepare/10fetch (data `ID SNAPSHOT [REPOSITORY]`), before anything of the module
    /// is made: the snapshot's image in root's storage (else pulled; else a clear error naming
    /// it), and the snapshot's dump restored into /home/.agent-backup/ID/restore.tmp (root's).
    Fetch(RestoreArg),
    /// restore/10apply (data `ID SNAPSHOT [REPOSITORY]`), on an installed module: the dump
    /// (fetched now unless restore.prepare staged this snapshot) given to the module's user and
    /// handed to the module's own `restore` event, waited for (BACKUP_DUMP_WAIT s), then removed.
    Apply(RestoreArg),
    /// backup/30forget: the retention of the first schedule (by name) that covers the module
    /// (`restic forget --prune --tag module=ID --keep-…`); nothing when none has one.
    Forget(DataArg),
    /// backup.schedule/10timers: this node's backup timers made those of the schedules
    /// (cluster/backup/schedule/*): one agent-backup-NAME.timer (OnCalendar, Persistent=true: a
    /// slot missed while the node was down runs once when it is back) and its service per
    /// schedule, in AGENT_BACKUP_UNIT_DIR (default /etc/systemd/system); timers of schedules
    /// that are gone stopped and removed.
    Timers,
    /// The service of a schedule's timer: queues a backup (XADD on this node's queue) of every
    /// module of this node the schedule covers; for a verifying schedule, runs `agentctl backup
    /// verify` of each, one after the other (exit 1 when one failed: its status says why).
    QueueSchedule {
        /// The schedule's name.
        name: String,
    },
}

#[derive(Debug, clap::Args)]
pub struct RestoreArg {
    /// The event's data: `ID SNAPSHOT [REPOSITORY]` (SNAPSHOT: a restic snapshot id).
    pub data: String,
}

#[derive(Debug, clap::Args)]
pub struct DataArg {
    /// The event's data: `ID` or `ID REPOSITORY` (default: the cluster's default repository, or
    /// its only one).
    pub data: String,
}

impl BackupCmd {
    pub fn name(&self) -> &'static str {
        match self {
            BackupCmd::Dump(_) => "dump",
            BackupCmd::Snapshot(_) => "snapshot",
            BackupCmd::RecordFailure(_) => "record-failure",
            BackupCmd::Fetch(_) => "fetch",
            BackupCmd::Apply(_) => "apply",
            BackupCmd::Forget(_) => "forget",
            BackupCmd::Timers => "timers",
            BackupCmd::QueueSchedule { .. } => "queue-schedule",
        }
    }
}

/// What a backup run is about.
struct Request {
    id: ModuleId,
    repo: Option<RepoName>,
}

fn parse(data: &str) -> Result<Request> {
    let mut words = data.split_whitespace();
    let (Some(id), repo, None) = (words.next(), words.next(), words.next()) else {
        return Err(ToolError::Invalid(format!(
            "backup data {data:?}: expected `ID` or `ID REPOSITORY`"
        )));
    };
    let id = ModuleId::new(id).map_err(|e| ToolError::Invalid(format!("bad {e}")))?;
    let repo = repo
        .map(RepoName::new)
        .transpose()
        .map_err(|e| ToolError::Invalid(format!("repository: {e}")))?;
    Ok(Request { id, repo })
}

fn backup_error(e: backup::Error) -> ToolError {
    match e {
        backup::Error::Invalid(m) => ToolError::Invalid(m),
        backup::Error::NotFound(m) => ToolError::Unavailable(m),
        backup::Error::Redis(e) => ToolError::Redis(e),
        e => ToolError::Failed(e.to_string()),
    }
}

pub fn run(cmd: &BackupCmd, ctx: &Ctx) -> Result<()> {
    match cmd {
        BackupCmd::Dump(a) => dump(ctx, &parse(&a.data)?),
        BackupCmd::Snapshot(a) => snapshot(ctx, &parse(&a.data)?),
        BackupCmd::RecordFailure(a) => record_failure(ctx, &parse(&a.data)?),
        BackupCmd::Fetch(a) => fetch(ctx, &parse_restore(&a.data)?).map(|_| ()),
        BackupCmd::Apply(a) => apply(ctx, &parse_restore(&a.data)?),
        BackupCmd::Forget(a) => forget(ctx, &parse(&a.data)?),
        BackupCmd::Timers => timers(ctx),
        BackupCmd::QueueSchedule { name } => queue_schedule(ctx, name),
    }
}

/// `/home/.agent-backup` (or AGENT_BACKUP_STAGING), made root's 0711.
fn staging_root() -> Result<PathBuf> {
    let root = std::env::var_os(contract::STAGING_VAR)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(contract::DEFAULT_STAGING_DIR));
    root_dir(&root, 0o711)?;
    Ok(root)
}

/// Takes the module identity `restore.prepare` staged for `id` (module.init's secret-key step):
/// its text, and the staged file removed. None when nothing is staged.
pub fn take_staged_identity(id: &ModuleId) -> Result<Option<module_secrets::Secret>> {
    let staged = staging_root()?
        .join(id.as_str())
        .join(super::keys::STAGED_IDENTITY);
    match std::fs::symlink_metadata(&staged) {
        Ok(m) if m.is_file() => {}
        Ok(_) => {
            remove_any(&staged)?;
            return Ok(None);
        }
        Err(_) => return Ok(None),
    }
    let text = std::fs::read(&staged)
        .map_err(|e| ToolError::Failed(format!("reading {}: {e}", staged.display())))?;
    remove_any(&staged)?;
    Ok(Some(module_secrets::Secret::new(text)))
}

/// Makes `dir` a directory of root's with `mode`, refusing anything else there (a symlink).
fn root_dir(dir: &Path, mode: u32) -> Result<()> {
    let io =
        |what: &str, e: std::io::Error| ToolError::Failed(format!("{what} {}: {e}", dir.display()));
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(ToolError::Failed(format!(
                "{} is not a directory: move it away",
                dir.display()
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(dir)
            .map_err(|e| io("creating", e))?,
        Err(e) => return Err(io("reading", e)),
    }
    std::os::unix::fs::chown(dir, Some(0), Some(0)).map_err(|e| io("chown", e))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).map_err(|e| io("chmod", e))
}

/// The module's staging directory, root's 0711.
pub(super) fn module_dir(id: &ModuleId) -> Result<PathBuf> {
    let dir = staging_root()?.join(id.as_str());
    root_dir(&dir, 0o711)?;
    Ok(dir)
}

/// The file in the staging directory that tells `snapshot` which repository `dump` resolved.
const REPOSITORY_FILE: &str = "repository";

pub(super) fn env_or(var: &str, default: &str) -> String {
    std::env::var(var)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

fn dump(ctx: &Ctx, req: &Request) -> Result<()> {
    let id = &req.id;
    if !ctx.is_registered(id)? {
        return Err(ToolError::Unavailable(format!(
            "module {id} is not installed on node {} (node/{}/modules)",
            ctx.node, ctx.node
        )));
    }
    let user = ModuleUser::require(id)?;
    let run = env_or(step_env::AGENT_RUN_ID, "manual");
    let attempt = env_or(step_env::AGENT_ATTEMPT, "1");
    let repo = ctx.block_on(async {
        let mut con = ctx.target.connection().await?;
        let resolved = async {
            let name = backup::repo::resolve(&mut con, req.repo.as_ref()).await?;
            backup::repo::url(&mut con, &name).await?;
            Ok::<_, backup::Error>(name)
        }
        .await;
        // Recorded either way: an attempt that fails at once (no repository) is an attempt too.
        let asked = req.repo.as_ref().map_or("", RepoName::as_str);
        let shown = resolved.as_ref().map_or(asked, RepoName::as_str);
        if !contract::is_transient_repository(shown) {
            backup::status::begin(&mut con, id.as_str(), &run, ctx.node.as_str(), shown)
                .await
                .map_err(backup_error)?;
        }
        resolved.map_err(backup_error)
    })?;
    let dir = module_dir(id)?;
    std::fs::write(dir.join(REPOSITORY_FILE), repo.as_str()).map_err(|e| {
        ToolError::Failed(format!(
            "writing {}: {e}",
            dir.join(REPOSITORY_FILE).display()
        ))
    })?;

    let dump = dir.join(contract::DUMP_DIR);
    fresh_user_dir(&dump, &user)?;
    println!(
        "backup of {id} to repository {repo}: the module dumps into {}",
        dump.display()
    );

    // The module's own backup run: one per attempt of this run, so a re-run dumps afresh.
    let module_run = RunId::new(format!("backup-{run}-{attempt}"))
        .map_err(|e| ToolError::Invalid(format!("run id: {e}")))?;
    let outcome = run_module_event(
        ctx,
        id,
        contract::BACKUP_EVENT,
        &module_run,
        &dump.to_string_lossy(),
    )?;
    match outcome {
        ModuleRun::Done => println!("the module's backup steps are done"),
        ModuleRun::NoSuchEvent => println!(
            "warning: module {id} defines no backup event: nothing of its own is dumped, the snapshot holds the core's record only"
        ),
        ModuleRun::Failed(why) => {
            return Err(ToolError::Failed(format!(
                "the module's own backup of {id} failed: nothing of this attempt is kept as good.\n{why}"
            )))
        }
    }
    // From here on the dump is root's: nothing of the module's user changes it under restic.
    let (files, bytes) = seal_dump(&dump, &user)?;
    println!("dump: {files} files, {bytes} bytes");
    Ok(())
}

/// A fresh, empty directory of the module's user's at `dir` (whatever was there removed), for
/// the module to dump into; its parent is root's, so the user cannot replace it.
pub(super) fn fresh_user_dir(dir: &Path, user: &ModuleUser) -> Result<()> {
    remove_any(dir)?;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(|e| ToolError::Failed(format!("creating {}: {e}", dir.display())))?;
    std::os::unix::fs::chown(dir, Some(user.uid), None)
        .map_err(|e| ToolError::Failed(format!("chown {}: {e}", dir.display())))
}

/// A dump the module made, given to root (0700: no process of the module's user reaches into it
/// any more) and checked to hold nothing of another owner ([`foreign_entries`]); its regular
/// files and their bytes.
pub(super) fn seal_dump(dump: &Path, user: &ModuleUser) -> Result<(u64, u64)> {
    std::os::unix::fs::chown(dump, Some(0), Some(0))
        .and_then(|()| std::fs::set_permissions(dump, std::fs::Permissions::from_mode(0o700)))
        .map_err(|e| ToolError::Failed(format!("sealing {}: {e}", dump.display())))?;
    foreign_entries(dump, &module_uids(user))
}

/// The uids a module's files may have: its user's, and its subordinate ranges (`/etc/subuid`: what
/// its rootless containers write as their own users).
fn module_uids(user: &ModuleUser) -> Vec<std::ops::Range<u64>> {
    let own = u64::from(user.uid);
    let mut ranges = Vec::new();
    ranges.push(own..own + 1);
    let subuid = std::fs::read_to_string("/etc/subuid").unwrap_or_default();
    ranges.extend(subuid_ranges(&subuid, &user.name, user.uid));
    ranges
}

fn subuid_ranges(subuid: &str, name: &str, uid: u32) -> Vec<std::ops::Range<u64>> {
    subuid
        .lines()
        .filter_map(|l| {
            let mut f = l.trim().split(':');
            let (who, start, count) = (
                f.next()?,
                f.next()?.parse::<u64>().ok()?,
                f.next()?.parse::<u64>().ok()?,
            );
            (who == name || who == uid.to_string()).then_some(start..start + count)
        })
        .collect()
}

/// Calls `f` on every entry below `dir` (not `dir` itself), a directory before what it holds;
/// symlinks are entries of their own, never followed (`DirEntry::metadata` does not traverse them).
pub(super) fn walk(
    dir: &Path,
    mut f: impl FnMut(&Path, &std::fs::Metadata) -> Result<()>,
) -> Result<()> {
    let failed =
        |p: &Path, e: std::io::Error| ToolError::Failed(format!("reading {}: {e}", p.display()));
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).map_err(|e| failed(&d, e))? {
            let e = e.map_err(|e| failed(&d, e))?;
            let path = e.path();
            let m = e.metadata().map_err(|e| failed(&path, e))?;
            f(&path, &m)?;
            if m.is_dir() {
                stack.push(path);
            }
        }
    }
    Ok(())
}

/// Refuses a dump holding anything not owned by the module's user or its containers' users
/// (below the directory itself, which is root's by now): a hard link to a file of root's or of
/// another module — possible where `fs.protected_hardlinks` is off — would otherwise go into the
/// module's snapshot, and come back to the module on a restore. Returns the regular files and
/// their bytes, counted on the same walk.
fn foreign_entries(dump: &Path, uids: &[std::ops::Range<u64>]) -> Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let (mut files, mut bytes) = (0, 0);
    walk(dump, |path, m| {
        if !uids.iter().any(|r| r.contains(&u64::from(m.uid()))) {
            return Err(ToolError::Failed(format!(
                "the dump holds {}, owned by uid {}, not by the module's user or its containers' users: nothing of this attempt is kept",
                path.display(),
                m.uid()
            )));
        }
        if m.is_file() {
            files += 1;
            bytes += m.len();
        }
        Ok(())
    })?;
    Ok((files, bytes))
}

/// Regular files and their bytes under `dir` (symlinks not followed), for the output: what could
/// not be read is not counted.
fn tree_size(dir: &Path) -> (u64, u64) {
    let (mut files, mut bytes) = (0, 0);
    let _ = walk(dir, |_, m| {
        if m.is_file() {
            files += 1;
            bytes += m.len();
        }
        Ok(())
    });
    (files, bytes)
}

pub(super) enum ModuleRun {
    Done,
    NoSuchEvent,
    Failed(String),
}

/// Queues `event` (data: a directory) on the module's agent as run `run` — unless that run
/// exists already (this step run again) — and waits for its end.
pub(super) fn run_module_event(
    ctx: &Ctx,
    id: &ModuleId,
    event: &str,
    run: &RunId,
    data: &str,
) -> Result<ModuleRun> {
    run_module_event_within(
        ctx,
        id,
        event,
        run,
        data,
        env_secs("BACKUP_DUMP_WAIT", 3600)?,
    )
}

/// [`run_module_event`] waiting at most `wait` (the failure then names `wait`).
pub(super) fn run_module_event_within(
    ctx: &Ctx,
    id: &ModuleId,
    event: &str,
    run: &RunId,
    data: &str,
    wait: Duration,
) -> Result<ModuleRun> {
    let prefix = Prefix::module(id.agent_name().clone());
    let event = EventName::new(event).expect("a valid event name");
    let record_key = prefix.run(run);
    let mut con = ctx.con()?;
    let exists: bool = redis::cmd("EXISTS").arg(&record_key).query(&mut con)?;
    if !exists {
        let _: String = redis::cmd("XADD")
            .arg(prefix.queue())
            .arg("*")
            .arg(QUEUE_FIELD_EVENT)
            .arg(event.as_str())
            .arg(QUEUE_FIELD_DATA)
            .arg(data)
            .arg(QUEUE_FIELD_ID)
            .arg(run.as_str())
            .query(&mut con)?;
    }
    let end = Instant::now() + wait;
    let mut silent_since: Option<Instant> = None;
    // Short at first (a dump of a small module ends within milliseconds: a fixed 100 ms would be
    // a good part of its backup), then at most every 100 ms.
    let mut pause = Duration::from_millis(5);
    loop {
        let fields: HashMap<String, String> =
            redis::cmd("HGETALL").arg(&record_key).query(&mut con)?;
        let record = (!fields.is_empty()).then(|| RunRecord::from_fields(&fields));
        match record.as_ref().and_then(|r| r.status) {
            Some(RunStatus::Done) => return Ok(ModuleRun::Done),
            Some(st) if st.is_terminal() => {
                let record = record.unwrap_or_default();
                if st == RunStatus::Failed
                    && record.exit_code == Some(exit::NO_SUCH_EVENT)
                    && record.failed_step.is_none()
                {
                    return Ok(ModuleRun::NoSuchEvent);
                }
                let output: Option<String> = redis::cmd("GET")
                    .arg(prefix.run_output(run))
                    .query(&mut con)?;
                return Ok(ModuleRun::Failed(format!(
                    "run {run} of module/{id} {} at step {} (exit {}); its output:\n{}",
                    st.as_str(),
                    record.failed_step.unwrap_or_default(),
                    record.exit_code.map(|c| c.to_string()).unwrap_or_default(),
                    output.unwrap_or_default().trim_end()
                )));
            }
            _ => {}
        }
        // The module's agent must be alive to do it: a minute without its heartbeat fails.
        let live: bool = redis::cmd("EXISTS")
            .arg(prefix.heartbeat())
            .query(&mut con)?;
        match (live, silent_since) {
            (true, _) => silent_since = None,
            (false, None) => silent_since = Some(Instant::now()),
            (false, Some(t)) if t.elapsed() > Duration::from_secs(60) => {
                return Ok(ModuleRun::Failed(format!(
                    "the agent of module {id} is not running (no {} for a minute): its {event} run {run} stays queued",
                    prefix.heartbeat()
                )))
            }
            _ => {}
        }
        if Instant::now() > end {
            return Ok(ModuleRun::Failed(format!(
                "the module's {event} run {run} did not end within {}s",
                wait.as_secs()
            )));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// The image id root's storage has for `image`, if any.
fn image_id(image: &str) -> Option<String> {
    let out = std::process::Command::new("podman")
        .args(["image", "inspect", "--format", "{{.Id}}", "--", image])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
}

/// The module's secret identity (`~ID/.config/agent/secret.key`, read by its user), encrypted to
/// the cluster's backup key; None when it has none.
fn sealed_identity(id: &ModuleId) -> Result<Option<String>> {
    let user = ModuleUser::require(id)?;
    let path = super::keys::identity_path(&user);
    if std::fs::symlink_metadata(&path).is_err() {
        return Ok(None);
    }
    let mut cat = user.command("cat");
    cat.arg("--").arg(&path);
    let out = cat
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .map_err(|e| ToolError::OsError(format!("reading {}: {e}", path.display())))?;
    let ok = out.status.success();
    let text = module_secrets::Secret::new(out.stdout);
    if !ok {
        return Err(ToolError::Failed(format!("cannot read {}", path.display())));
    }
    let identity =
        module_secrets::keyfile::parse_identity_text(text.expose_str().unwrap_or_default())
            .map_err(|e| ToolError::Invalid(format!("{}: {e}", path.display())))?;
    let backup_key =
        backup::repo::load_identity(&backup::repo::identity_path()).map_err(backup_error)?;
    let sealed = module_secrets::crypto::encrypt(
        identity.to_secret_string().as_bytes(),
        &backup_key.recipient(),
    )
    .map_err(|e| ToolError::Failed(format!("sealing {id}'s identity: {e}")))?;
    Ok(Some(sealed))
}

fn snapshot(ctx: &Ctx, req: &Request) -> Result<()> {
    let id = &req.id;
    let started = Instant::now();
    let dir = module_dir(id)?;
    let dump = dir.join(contract::DUMP_DIR);
    if !dump.is_dir() {
        return Err(ToolError::Unavailable(format!(
            "{} is not there: backup/10dump makes it",
            dump.display()
        )));
    }
    let repo_name = match std::fs::read_to_string(dir.join(REPOSITORY_FILE)) {
        Ok(s) => Some(RepoName::new(s.trim()).map_err(|e| {
            ToolError::Invalid(format!("{}: {e}", dir.join(REPOSITORY_FILE).display()))
        })?),
        Err(_) => req.repo.clone(),
    };
    let module = Prefix::module(id.agent_name().clone());
    let (repo, env, routes, secrets) = ctx.block_on(async {
        let mut con = ctx.target.connection().await?;
        let repo = backup::repo::open(&mut con, repo_name.as_ref())
            .await
            .map_err(backup_error)?;
        let env: std::collections::BTreeMap<String, String> =
            redis::AsyncCommands::hgetall(&mut con, module.module_env()).await?;
        let routes: std::collections::BTreeMap<String, String> =
            redis::AsyncCommands::hgetall(&mut con, module.routes()).await?;
        let secrets: std::collections::BTreeMap<String, String> =
            redis::AsyncCommands::hgetall(&mut con, module.secrets()).await?;
        Ok((repo, env, routes, secrets))
    })?;
    let identity = sealed_identity(id)?;
    let image = env
        .get(module_env::EVENTS_IMAGE)
        .cloned()
        .unwrap_or_default();
    let record = CoreRecord {
        module: id.to_string(),
        node: ctx.node.to_string(),
        image_id: image_id(&image),
        image: image.clone(),
        module_env: env,
        routes,
        secrets,
        identity,
        core_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let core = dir.join(contract::CORE_DIR);
    root_dir(&core, 0o700)?;
    let json = serde_json::to_vec_pretty(&record).map_err(|e| ToolError::Failed(e.to_string()))?;
    std::fs::write(core.join(contract::CORE_FILE), json)
        .map_err(|e| ToolError::Failed(format!("writing {}: {e}", core.display())))?;

    let restic = backup::restic::Restic::new(&repo);
    let tags = contract::snapshot_tags(id.as_str(), &image, env!("CARGO_PKG_VERSION"));
    let summary = restic
        .backup(
            &dir,
            &[contract::DUMP_DIR, contract::CORE_DIR],
            &tags,
            ctx.node.as_str(),
        )
        .map_err(backup_error)?;
    // The dump is in the repository now: the staged copy of the module's data goes.
    remove_any(&dump)?;
    remove_any(&core)?;
    let duration = started.elapsed().as_millis();
    let report = serde_json::json!({
        "module": id.as_str(),
        "repository": repo.name.as_str(),
        "snapshot": summary.snapshot_id,
        "files": summary.total_files_processed,
        "bytes": summary.total_bytes_processed,
        "added": summary.data_added,
        "files_new": summary.files_new,
        "files_changed": summary.files_changed,
        "duration_ms": duration,
    });
    if contract::is_transient_repository(repo.name.as_str()) {
        println!(
            "snapshot {} of {id} in {} (an export: the module's backup status is left as it is)",
            &summary.snapshot_id.get(..8).unwrap_or(&summary.snapshot_id),
            repo.name
        );
        return Ok(());
    }
    ctx.block_on(async {
        let mut con = ctx.target.connection().await?;
        backup::status::succeed(
            &mut con,
            id.as_str(),
            repo.name.as_str(),
            &summary,
            duration,
        )
        .await
        .map_err(backup_error)?;
        emit(&mut con, ctx, contract::DONE_EVENT, &report).await
    })?;
    println!(
        "snapshot {} of {id} in {}: {} files, {} bytes ({} new files, {} changed, {} bytes added) in {} ms",
        &summary.snapshot_id.get(..8).unwrap_or(&summary.snapshot_id),
        repo.name,
        summary.total_files_processed,
        summary.total_bytes_processed,
        summary.files_new,
        summary.files_changed,
        summary.data_added,
        duration
    );
    Ok(())
}

/// Publishes `event/<node>/<event>` with `payload`.
async fn emit(
    con: &mut redis::aio::MultiplexedConnection,
    ctx: &Ctx,
    event: &str,
    payload: &serde_json::Value,
) -> Result<()> {
    let event = EventName::new(event).expect("a valid event name");
    let _: i64 = redis::AsyncCommands::publish(
        con,
        keys::emitted_event_channel(&ctx.node, &event),
        payload.to_string(),
    )
    .await?;
    Ok(())
}

/// The last lines of the failed run's output, for the status (at most ~600 bytes).
fn failure_text(ctx: &Ctx, run: &str) -> String {
    let step = std::env::var(step_env::AGENT_FAILED_STEP).unwrap_or_default();
    let status = env_or(step_env::AGENT_RUN_STATUS, RunStatus::Failed.as_str());
    let output = RunId::new(run).ok().and_then(|run| {
        let key = ctx.node_prefix().run_output(&run);
        ctx.con().ok().and_then(|mut c| {
            redis::cmd("GET")
                .arg(key)
                .query::<Option<String>>(&mut c)
                .ok()
                .flatten()
        })
    });
    // The failed step's own section when there is one, else the whole output; headers left out.
    let output = output.unwrap_or_default();
    let text = core_events::output::section_of(&output, &step).unwrap_or(output);
    let lines: Vec<String> = text
        .lines()
        .filter(|l| {
            !l.trim().is_empty()
                && core_events::output::header_step(l).is_none()
                && !core_events::output::is_rollback_separator(l)
        })
        .map(str::to_string)
        .collect();
    let mut tail = String::new();
    for line in lines.iter().rev() {
        if tail.len() + line.len() > 600 {
            break;
        }
        tail = if tail.is_empty() {
            line.clone()
        } else {
            format!("{line}\n{tail}")
        };
    }
    let what = if step.is_empty() {
        status
    } else {
        format!("{status} at step {step}")
    };
    if tail.is_empty() {
        what
    } else {
        format!("{what}: {tail}")
    }
}

fn record_failure(ctx: &Ctx, req: &Request) -> Result<()> {
    let id = &req.id;
    let run = env_or(step_env::AGENT_RUN_ID, "manual");
    let error = failure_text(ctx, &run);
    let repo = std::fs::read_to_string(staging_root()?.join(id.as_str()).join(REPOSITORY_FILE))
        .ok()
        .map(|s| s.trim().to_string())
        .or_else(|| req.repo.as_ref().map(|r| r.to_string()))
        .unwrap_or_default();
    if contract::is_transient_repository(&repo) {
        println!("export of {id} failed ({error}): the module's backup status is left as it is");
        return Ok(());
    }
    let payload = serde_json::json!({
        "module": id.as_str(),
        "repository": repo,
        "run": run,
        "error": error,
    });
    ctx.block_on(async {
        let mut con = ctx.target.connection().await?;
        backup::status::fail(&mut con, id.as_str(), &error)
            .await
            .map_err(backup_error)?;
        emit(&mut con, ctx, contract::FAILED_EVENT, &payload).await
    })?;
    println!(
        "backup of {id} recorded as failed ({}): {error}",
        contract::FAILED_EVENT
    );
    Ok(())
}

/// What a restore is about.
struct RestoreRequest {
    id: ModuleId,
    snapshot: String,
    repo: Option<RepoName>,
}

fn parse_restore(data: &str) -> Result<RestoreRequest> {
    let mut words = data.split_whitespace();
    let (Some(id), Some(snapshot), repo, None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        return Err(ToolError::Invalid(format!(
            "restore data {data:?}: expected `ID SNAPSHOT [REPOSITORY]`"
        )));
    };
    let id = ModuleId::new(id).map_err(|e| ToolError::Invalid(format!("bad {e}")))?;
    if snapshot == "latest" || !contract::is_snapshot_id(snapshot) {
        return Err(ToolError::Invalid(format!(
            "snapshot {snapshot:?}: a restic snapshot id (8 to 64 lowercase hex digits)"
        )));
    }
    let repo = repo
        .map(RepoName::new)
        .transpose()
        .map_err(|e| ToolError::Invalid(format!("repository: {e}")))?;
    Ok(RestoreRequest {
        id,
        snapshot: snapshot.to_string(),
        repo,
    })
}

/// Where a restore stages the dump (root's 0700 while restic writes it), and the file naming the
/// snapshot it holds.
const RESTORE_STAGING: &str = "restore.tmp";
const RESTORE_SNAPSHOT_FILE: &str = "restore.snapshot";
/// The dump, the module's user's, while the module's restore event reads it.
const RESTORE_DIR: &str = "restore";

/// Opens repository `repo` (else the default, else the only one).
fn open_repository(ctx: &Ctx, repo: Option<&RepoName>) -> Result<backup::Repository> {
    ctx.block_on(async {
        let mut con = ctx.target.connection().await?;
        backup::repo::open(&mut con, repo)
            .await
            .map_err(backup_error)
    })
}

/// The snapshot's image in root's storage and its dump in `restore.tmp`; returns that directory.
fn fetch(ctx: &Ctx, req: &RestoreRequest) -> Result<PathBuf> {
    let repo = open_repository(ctx, req.repo.as_ref())?;
    let restic = backup::restic::Restic::new(&repo);
    let snapshot = restic.snapshot(&req.snapshot).map_err(backup_error)?;
    let record = backup::core_record(&restic, &snapshot).map_err(backup_error)?;
    if record.image.is_empty() || check_image(&record.image).is_err() {
        return Err(ToolError::Invalid(format!(
            "snapshot {} names no usable image ({:?})",
            snapshot.short_id, record.image
        )));
    }
    super::image::root_image_or_pull(
        &record.image,
        &format!(
            "of snapshot {} (module {})",
            snapshot.short_id, record.module
        ),
    )?;
    let dir = module_dir(&req.id)?;
    stage_identity(&dir, record.identity.as_deref())?;
    let staging = dir.join(RESTORE_STAGING);
    // A dump staged before (a move's first copy, or a fetch that was interrupted) is root's
    // directory: restic brings it to this snapshot, writing only what differs. Anything else at
    // the path goes.
    if !std::fs::symlink_metadata(&staging).is_ok_and(|m| m.is_dir()) {
        remove_any(&staging)?;
    }
    let _ = std::fs::remove_file(dir.join(RESTORE_SNAPSHOT_FILE));
    root_dir(&staging, 0o700)?;
    let dump = backup::snapshot_dir(&snapshot, contract::DUMP_DIR).map_err(backup_error)?;
    restic
        .restore_dir(&snapshot.id, &dump, &staging)
        .map_err(backup_error)?;
    std::fs::write(dir.join(RESTORE_SNAPSHOT_FILE), &snapshot.id).map_err(|e| {
        ToolError::Failed(format!(
            "writing {}: {e}",
            dir.join(RESTORE_SNAPSHOT_FILE).display()
        ))
    })?;
    let (files, bytes) = tree_size(&staging);
    println!(
        "snapshot {} of {} ({}, {}): {files} files, {bytes} bytes staged for {}",
        snapshot.short_id, record.module, snapshot.time, record.image, req.id
    );
    Ok(staging)
}

/// The module identity of a snapshot, opened with the cluster's backup key and staged in the
/// module's root-only directory for module.init's secret-key step (which gives it to the new
/// module's user); any identity staged before is removed when the snapshot has none.
fn stage_identity(dir: &Path, sealed: Option<&str>) -> Result<()> {
    let staged = dir.join(super::keys::STAGED_IDENTITY);
    remove_any(&staged)?;
    let Some(sealed) = sealed else {
        return Ok(());
    };
    let backup_key =
        backup::repo::load_identity(&backup::repo::identity_path()).map_err(backup_error)?;
    let identity = module_secrets::crypto::decrypt(sealed.as_bytes(), &backup_key)
        .map_err(|e| ToolError::Failed(format!("the snapshot's module identity: {e}")))?;
    use std::io::Write;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&staged)
        .and_then(|mut f| f.write_all(identity.expose()))
        .map_err(|e| ToolError::Failed(format!("writing {}: {e}", staged.display())))
}

/// Removes whatever is at `path` (nothing followed).
pub(super) fn remove_any(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(_) => Ok(()),
    }
    .map_err(|e| ToolError::Failed(format!("removing {}: {e}", path.display())))
}

/// Gives every file under `dir` (and `dir`) to `uid`, symlinks themselves and not what they
/// point to. Runs while `dir`'s parent is root's only, so nothing moves under it.
pub(super) fn chown_tree(dir: &Path, uid: u32) -> Result<()> {
    let chown = |p: &Path| {
        std::os::unix::fs::lchown(p, Some(uid), None)
            .map_err(|e| ToolError::Failed(format!("chown {}: {e}", p.display())))
    };
    chown(dir)?;
    walk(dir, |path, _| chown(path))
}

fn apply(ctx: &Ctx, req: &RestoreRequest) -> Result<()> {
    let id = &req.id;
    if !ctx.is_registered(id)? {
        return Err(ToolError::Unavailable(format!(
            "module {id} is not installed on node {}: restore.prepare, then module.init, then restore (agentctl backup restore does it)",
            ctx.node
        )));
    }
    let user = ModuleUser::require(id)?;
    let dir = module_dir(id)?;
    let staged = std::fs::read_to_string(dir.join(RESTORE_SNAPSHOT_FILE)).unwrap_or_default();
    let staging = dir.join(RESTORE_STAGING);
    let full_id_matches = staged.trim().starts_with(&req.snapshot) && !staged.trim().is_empty();
    if !(full_id_matches && staging.is_dir()) {
        fetch(ctx, req)?;
        // The module exists: no module.init follows to take the identity fetch staged.
        remove_any(&dir.join(super::keys::STAGED_IDENTITY))?;
    }
    // The staged dump becomes the user's, then is moved where the module reads it.
    let target = dir.join(RESTORE_DIR);
    remove_any(&target)?;
    std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| ToolError::Failed(format!("chmod {}: {e}", staging.display())))?;
    chown_tree(&staging, user.uid)?;
    std::fs::rename(&staging, &target).map_err(|e| {
        ToolError::Failed(format!(
            "moving {} to {}: {e}",
            staging.display(),
            target.display()
        ))
    })?;
    let _ = std::fs::remove_file(dir.join(RESTORE_SNAPSHOT_FILE));

    let run = env_or(step_env::AGENT_RUN_ID, "manual");
    let attempt = env_or(step_env::AGENT_ATTEMPT, "1");
    let module_run = RunId::new(format!("restore-{run}-{attempt}"))
        .map_err(|e| ToolError::Invalid(format!("run id: {e}")))?;
    let outcome = run_module_event(
        ctx,
        id,
        contract::RESTORE_EVENT,
        &module_run,
        &target.to_string_lossy(),
    )?;
    match outcome {
        ModuleRun::Done => {
            remove_any(&target)?;
            println!("module {id} restored from snapshot {}", req.snapshot);
            Ok(())
        }
        ModuleRun::NoSuchEvent => Err(ToolError::Unavailable(format!(
            "module {id} defines no restore event: its data cannot be put back (docs/MODULES.md, \"Backup and restore\")"
        ))),
        ModuleRun::Failed(why) => Err(ToolError::Failed(format!(
            "the module's own restore of {id} failed:\n{why}"
        ))),
    }
}

fn schedules(ctx: &Ctx) -> Result<Vec<backup::schedule::Schedule>> {
    ctx.block_on(async {
        let mut con = ctx.target.connection().await?;
        backup::schedule::all(&mut con).await.map_err(backup_error)
    })
}

fn forget(ctx: &Ctx, req: &Request) -> Result<()> {
    let id = &req.id;
    let all = schedules(ctx)?;
    let Some(schedule) = backup::schedule::retention_of(&all, id.as_str()) else {
        println!("no schedule with a retention covers {id}: every snapshot is kept");
        return Ok(());
    };
    // The repository the backup went to (10dump resolved it).
    let dir = staging_root()?.join(id.as_str());
    let used = std::fs::read_to_string(dir.join(REPOSITORY_FILE))
        .ok()
        .and_then(|s| RepoName::new(s.trim()).ok())
        .or_else(|| req.repo.clone());
    let repo = open_repository(ctx, used.as_ref())?;
    let keep = schedule.keep.forget_args();
    println!(
        "retention of schedule {} for {id} in {}: {}",
        schedule.name,
        repo.name,
        keep.join(" ")
    );
    let out = backup::restic::Restic::new(&repo)
        .forget(&[contract::module_tag(id.as_str())], &keep)
        .map_err(backup_error)?;
    let removed = out.lines().filter(|l| l.starts_with("remove ")).count();
    println!("{}", out.trim_end());
    println!("forget: {removed} snapshot groups had snapshots removed");
    Ok(())
}

/// Where the node's backup timers go.
fn unit_dir() -> PathBuf {
    std::env::var_os("AGENT_BACKUP_UNIT_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/etc/systemd/system"))
}

/// The timer and service of `s` (the calendar was checked by [`contract::check_calendar`]:
/// nothing in it can end a line or expand).
fn timer_files(s: &backup::schedule::Schedule, node_agent: &Path) -> (String, String) {
    let key = contract::schedule_key(&s.name);
    let header = format!(
        "# Made by node-agent (the backup.schedule event) from {key}: changed by\n# `agentctl backup schedule set|rm`, not by hand.\n"
    );
    let (what, does) = if s.verify {
        ("Verifications", "Verify the backups")
    } else {
        ("Backups", "Queue the backups")
    };
    let timer = format!(
        "{header}[Unit]\nDescription={what} of schedule {name} (agent)\n\n[Timer]\nOnCalendar={cal}\nPersistent=true\n\n[Install]\nWantedBy=timers.target\n",
        name = s.name,
        cal = s.calendar
    );
    let service = format!(
        "{header}[Unit]\nDescription={does} of schedule {name} (agent)\nAfter=node-agent.service\n\n[Service]\nType=oneshot\nExecStart={exe} backup queue-schedule {name}\n",
        name = s.name,
        exe = node_agent.display()
    );
    (timer, service)
}

fn unit(name: &str) -> Result<systemd_client::UnitName> {
    systemd_client::UnitName::new(name).map_err(|e| ToolError::Invalid(e.to_string()))
}

fn systemd_error(e: systemd_client::Error) -> ToolError {
    ToolError::Failed(e.to_string())
}

fn timers(ctx: &Ctx) -> Result<()> {
    let all = schedules(ctx)?;
    let dir = unit_dir();
    let node_agent = std::env::current_exe()
        .map_err(|e| ToolError::OsError(format!("cannot find node-agent itself: {e}")))?;
    let mut wanted = std::collections::BTreeSet::new();
    let mut changed = Vec::new();
    for s in &all {
        let timer = contract::timer_unit(&s.name);
        let service = timer.replace(".timer", ".service");
        let (timer_text, service_text) = timer_files(s, &node_agent);
        for (file, text) in [(&timer, &timer_text), (&service, &service_text)] {
            let path = dir.join(file);
            if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
                std::fs::write(&path, text)
                    .map_err(|e| ToolError::Failed(format!("writing {}: {e}", path.display())))?;
                if file == &timer {
                    changed.push(timer.clone());
                }
            }
        }
        wanted.insert(timer.clone());
        wanted.insert(service);
    }
    let mut stale = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let ours = name.starts_with(contract::TIMER_PREFIX)
                && (name.ends_with(".timer") || name.ends_with(".service"));
            if ours && !wanted.contains(&name) {
                stale.push(name);
            }
        }
    }
    ctx.block_on(async {
        let systemd = systemd_client::Systemd::connect(systemd_client::Bus::System)
            .await
            .map_err(systemd_error)?;
        for name in stale.iter().filter(|n| n.ends_with(".timer")) {
            let u = unit(name)?;
            let _ = systemd.stop(&u).await;
            let _ = systemd.disable(&u).await;
        }
        for name in &stale {
            let _ = std::fs::remove_file(dir.join(name));
            println!("removed {name}");
        }
        systemd.daemon_reload().await.map_err(systemd_error)?;
        for s in &all {
            let name = contract::timer_unit(&s.name);
            let u = unit(&name)?;
            systemd.enable(&u).await.map_err(systemd_error)?;
            if changed.contains(&name) {
                systemd.restart(&u).await.map_err(systemd_error)?;
            } else {
                systemd.start(&u).await.map_err(systemd_error)?;
            }
            println!(
                "{name}: OnCalendar={} for {}",
                s.calendar,
                s.modules_field()
            );
        }
        Ok(())
    })?;
    if all.is_empty() {
        println!("no backup schedule");
    }
    Ok(())
}

fn queue_schedule(ctx: &Ctx, name: &str) -> Result<()> {
    let name = RepoName::new(name).map_err(|e| ToolError::Invalid(format!("schedule: {e}")))?;
    let event = EventName::new(contract::BACKUP_EVENT).expect("a valid event name");
    let queued = ctx.block_on(async {
        let mut con = ctx.target.connection().await?;
        let Some(s) = backup::schedule::get(&mut con, &name).await.map_err(backup_error)? else {
            return Err(ToolError::Unavailable(format!(
                "no schedule {name} ({}): its timer is left from before; the next backup.schedule removes it",
                contract::schedule_key(&name)
            )));
        };
        let mut modules: Vec<String> =
            redis::AsyncCommands::hkeys(&mut con, ctx.node_prefix().modules()).await?;
        modules.sort();
        modules.retain(|m| s.covers(m));
        if s.verify {
            return Ok(Err((s.repository.clone(), modules)));
        }
        let mut queued = Vec::new();
        for m in &modules {
            let data = match &s.repository {
                Some(r) => format!("{m} {r}"),
                None => m.clone(),
            };
            let _: String = redis::cmd("XADD")
                .arg(ctx.node_prefix().queue())
                .arg("*")
                .arg(QUEUE_FIELD_EVENT)
                .arg(event.as_str())
                .arg(QUEUE_FIELD_DATA)
                .arg(&data)
                .query_async(&mut con)
                .await?;
            queued.push(m.clone());
        }
        Ok(Ok(queued))
    })?;
    let queued = match queued {
        Ok(queued) => queued,
        Err((repository, modules)) => return verify_modules(&name, repository, &modules),
    };
    println!(
        "schedule {name}: backup queued for {}",
        if queued.is_empty() {
            "no module of this node".to_string()
        } else {
            queued.join(", ")
        }
    );
    Ok(())
}

/// A verifying schedule's work on this node: `agentctl backup verify` of each module (its status
/// records each outcome), one after the other; fails when one failed.
fn verify_modules(name: &RepoName, repository: Option<RepoName>, modules: &[String]) -> Result<()> {
    if modules.is_empty() {
        println!("schedule {name}: no module of this node to verify");
        return Ok(());
    }
    let mut failed = Vec::new();
    for m in modules {
        let mut cmd = std::process::Command::new("agentctl");
        cmd.args(["backup", "verify", m.as_str()]);
        if let Some(r) = &repository {
            cmd.args(["--repo", r.as_str()]);
        }
        println!("schedule {name}: verifying {m}");
        let st = super::status(&mut cmd)?;
        if !st.success() {
            failed.push(m.as_str());
        }
    }
    if failed.is_empty() {
        println!("schedule {name}: verified {}", modules.join(", "));
        Ok(())
    } else {
        Err(ToolError::Failed(format!(
            "schedule {name}: the verification of {} failed (agentctl backup status says why)",
            failed.join(", ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schedule_becomes_a_persistent_timer_and_a_oneshot_service() {
        let s = backup::schedule::Schedule {
            name: RepoName::new("nightly").unwrap(),
            calendar: "Mon..Fri 02:30".into(),
            modules: None,
            repository: None,
            keep: backup::schedule::Keep::default(),
            verify: false,
        };
        let (timer, service) = timer_files(&s, Path::new("/usr/bin/node-agent"));
        assert!(
            timer.contains("\nOnCalendar=Mon..Fri 02:30\nPersistent=true\n"),
            "{timer}"
        );
        assert!(timer.contains("WantedBy=timers.target"));
        assert!(
            service.contains("\nExecStart=/usr/bin/node-agent backup queue-schedule nightly\n"),
            "{service}"
        );
        assert!(service.contains("Type=oneshot"));
        assert_eq!(contract::timer_unit(&s.name), "agent-backup-nightly.timer");
    }

    #[test]
    fn restore_data_is_an_id_a_snapshot_and_maybe_a_repository() {
        let r = parse_restore("copy1 3f2a9c1d local").unwrap();
        assert_eq!((r.id.as_str(), r.snapshot.as_str()), ("copy1", "3f2a9c1d"));
        assert!(parse_restore("copy1 3f2a9c1d").unwrap().repo.is_none());
        for bad in [
            "copy1",
            "copy1 latest",
            "copy1 --all",
            "copy1 3F2A9C1D",
            "Copy 3f2a9c1d",
            "a 3f2a9c1d r x",
        ] {
            assert!(parse_restore(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_dump_with_a_file_of_another_owner_is_refused() {
        // Needs root (chown), as the node tests and CI do.
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("www");
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(sub.join("index.html"), "x").unwrap();
        std::os::unix::fs::chown(dir.path(), Some(4242), None).unwrap();
        std::os::unix::fs::chown(&sub, Some(4242), None).unwrap();
        std::os::unix::fs::chown(sub.join("index.html"), Some(4242), None).unwrap();
        let mine = subuid_ranges("other:100000:65536\nm1:165536:65536\n", "m1", 4242);
        assert_eq!(
            (mine.len(), mine[0].start, mine[0].end),
            (1, 165536, 231072)
        );
        let mut uids = mine;
        uids.push(4242..4243);
        std::os::unix::fs::chown(sub.join("index.html"), Some(170000), None).unwrap();
        assert_eq!(foreign_entries(dir.path(), &uids).unwrap(), (1, 1));
        // A hard link to a file of root's, as a module could plant without protected_hardlinks.
        std::fs::write(dir.path().join("planted"), "secret").unwrap();
        let e = foreign_entries(dir.path(), &uids).unwrap_err().to_string();
        assert!(e.contains("planted") && e.contains("uid 0"), "{e}");
    }

    #[test]
    fn data_is_an_id_and_maybe_a_repository() {
        let r = parse("hello1").unwrap();
        assert_eq!(r.id.as_str(), "hello1");
        assert!(r.repo.is_none());
        let r = parse(" hello1  nas-1 ").unwrap();
        assert_eq!(r.repo.unwrap().as_str(), "nas-1");
        for bad in [
            "",
            "Hello",
            "../x",
            "hello1 nas 3",
            "hello1 NAS",
            "hello1 ../r",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
