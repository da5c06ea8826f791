//! `node-agent update …`: the steps of the node's `module.update` event (data `ID`), which upgrades
//! one module to the image its module.env's `EVENTS_IMAGE` names, and of its rollback
//! `module.update.rollback` (docs/UPGRADE.md).
//!
//! The flow, one step each: `prepare` (the new image pulled and checked under the node's signature
//! policy, the old image, version, module.env and routes recorded) → `stop` (the module's units, so
//! that nothing is written after the snapshot) → `snapshot` (the module's own `backup` dump, copied
//! by root so that nothing the new version does reaches it) → `install` (the old imageroot's files the new one lacks removed, the new one extracted,
//! its images copied) → `migrate` (the module's own `module.update` event, data `FROM TO`) →
//! `start` (the module's own `module.init` again, idempotent by contract) → `health` (the gate:
//! the module's `health` event succeeds and none of its units failed, within the image's
//! `health-timeout` label) → `commit` (node/NODE/modules says the new image). A failing step has
//! the engine run `revert`, which puts back module.env and routes, the old imageroot and images,
//! the data of the snapshot, starts the old version and checks its health.
//!
//! Crashes: the state file (`core_events::update::STATE_DIR/<id>.json`, root's) says how far an
//! upgrade got, each step records its phase *before* it changes anything (a phase only ever goes
//! forward: a re-run of an earlier step does not take it back), and the engine runs an
//! interrupted event again from its first step: `prepare` then carries on with the recorded
//! upgrade (the snapshot is never taken again over migrated data), or, when the interruption hit
//! a rollback, fails so that the rollback runs again. The module is never left half-upgraded.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use core_events::backup as backup_contract;
use core_events::update::{self as contract, version_of};
use core_events::{module_env, step_env, ModuleId, Prefix, RunId};

use super::backup::{self, ModuleRun};
use module_signing::NodeSigning;

use super::image::{self, ImageMount};
use super::user::ModuleUser;
use super::{env_secs, Ctx, IdArg, Result, ToolError};

#[derive(Debug, clap::Subcommand)]
pub enum UpdateCmd {
    /// module.update/10prepare: the new image (EVENTS_IMAGE) in root's storage and accepted by
    /// the node's signature policy, the old one (node/NODE/modules), their versions and the
    /// module.env to put back recorded in the upgrade's state. Nothing to do when the module runs
    /// that image already; an interrupted upgrade carries on, an interrupted rollback runs again.
    Prepare(IdArg),
    /// module.update/20stop: the module's own units stopped (its agent runs on), so that nothing
    /// is written after the snapshot.
    Stop(IdArg),
    /// module.update/30snapshot: the module's own `backup` event dumps its data, which root copies
    /// into /home/.agent-backup/ID/update (kept from an earlier attempt of the same upgrade).
    Snapshot(IdArg),
    /// module.update/40install: the old imageroot's files that the new one lacks removed, the new
    /// imageroot extracted and its images copied (as module.init's install-image).
    Install(IdArg),
    /// module.update/50migrate: the module's own `module.update` event (data `FROM TO`, the two
    /// versions; also UPDATE_FROM_VERSION, UPDATE_TO_VERSION and UPDATE_FROM_IMAGE in module.env
    /// until the commit), waited for (MODULE_UPDATE_WAIT s, default 3600); none defined: nothing to migrate.
    Migrate(IdArg),
    /// module.update/60start: the module's own `module.init` again, which configures and starts
    /// the new version (MODULE_UPDATE_WAIT s).
    Start(IdArg),
    /// module.update/70health: the health gate: the module's `health` event succeeds and none of
    /// its units failed, tried until the new image's health-timeout label (seconds, default 60).
    Health(IdArg),
    /// module.update/80commit: node/NODE/modules ID says the new image; the snapshot and the
    /// state removed; the image before the previous one removed from root's storage when no
    /// module of the node uses it (the previous one is kept for one more upgrade).
    Commit(IdArg),
    /// module.update.rollback/10revert: module.env, the old imageroot and images, the data of the
    /// snapshot put back, the old version started and its health checked. Nothing to undo when
    /// the upgrade changed nothing yet (module.env's EVENTS_IMAGE is still put back).
    Revert(IdArg),
    /// What an upgrade of module ID to IMAGE (default: its EVENTS_IMAGE) would change, and nothing
    /// changed: images and versions, the signature verdict, the imageroot's files added, changed
    /// and removed, the module's own module.update and health steps. An image that root's storage
    /// does not have is read from a scratch storage, removed afterwards. `agentctl module update
    /// --plan` runs it.
    Plan {
        /// The module id.
        id: String,
        /// The image to upgrade to.
        image: Option<String>,
    },
}

impl UpdateCmd {
    pub fn name(&self) -> &'static str {
        match self {
            UpdateCmd::Prepare(_) => "prepare",
            UpdateCmd::Snapshot(_) => "snapshot",
            UpdateCmd::Stop(_) => "stop",
            UpdateCmd::Install(_) => "install",
            UpdateCmd::Migrate(_) => "migrate",
            UpdateCmd::Start(_) => "start",
            UpdateCmd::Health(_) => "health",
            UpdateCmd::Commit(_) => "commit",
            UpdateCmd::Revert(_) => "revert",
            UpdateCmd::Plan { .. } => "plan",
        }
    }

    fn id(&self) -> &str {
        match self {
            UpdateCmd::Prepare(a)
            | UpdateCmd::Snapshot(a)
            | UpdateCmd::Stop(a)
            | UpdateCmd::Install(a)
            | UpdateCmd::Migrate(a)
            | UpdateCmd::Start(a)
            | UpdateCmd::Health(a)
            | UpdateCmd::Commit(a)
            | UpdateCmd::Revert(a) => &a.id,
            UpdateCmd::Plan { id, .. } => id,
        }
    }
}

pub fn run(cmd: &UpdateCmd, ctx: &Ctx) -> Result<()> {
    let id = ModuleId::new(cmd.id()).map_err(|e| ToolError::Invalid(format!("bad {e}")))?;
    match cmd {
        UpdateCmd::Prepare(_) => prepare(ctx, &id),
        UpdateCmd::Snapshot(_) => snapshot(ctx, &id),
        UpdateCmd::Stop(_) => stop(&id),
        UpdateCmd::Install(_) => install(ctx, &id),
        UpdateCmd::Migrate(_) => migrate(ctx, &id),
        UpdateCmd::Start(_) => start(ctx, &id),
        UpdateCmd::Health(_) => health(ctx, &id),
        UpdateCmd::Commit(_) => commit(ctx, &id),
        UpdateCmd::Revert(_) => revert(ctx, &id),
        UpdateCmd::Plan { image, .. } => plan(ctx, &id, image.as_deref()),
    }
}

// ---- the upgrade's state --------------------------------------------------------------------

/// How far an upgrade got: each step records its phase before it changes anything.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
enum Phase {
    Prepared,
    Stopping,
    Snapshotted,
    Installing,
    Migrating,
    Starting,
    Checking,
    Committing,
    RollingBack,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct State {
    from_image: String,
    from_version: String,
    to_image: String,
    to_version: String,
    /// module.env as it was before the upgrade (its EVENTS_IMAGE the old image).
    module_env: BTreeMap<String, String>,
    /// The module's routes through the edge proxy before the upgrade (module/ID/routes): the new
    /// version's module.init may change them.
    #[serde(default)]
    routes: BTreeMap<String, String>,
    /// Whether the snapshot holds data of the module's own (false: it defines no backup event).
    snapshot_has_data: bool,
    phase: Phase,
    /// How far the upgrade had got when its rollback began (kept through a re-run of the rollback).
    #[serde(default)]
    rolled_back_from: Option<Phase>,
}

fn state_dir() -> PathBuf {
    std::env::var_os("AGENT_UPDATE_STATE_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(contract::STATE_DIR))
}

fn state_path(id: &ModuleId) -> PathBuf {
    state_dir().join(format!("{id}.json"))
}

fn load(id: &ModuleId) -> Result<Option<State>> {
    let path = state_path(id);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            ToolError::Failed(format!(
                "the upgrade state {} cannot be read ({e}): move it away to start over",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ToolError::Failed(format!(
            "reading {}: {e}",
            path.display()
        ))),
    }
}

/// Writes the state atomically (a file beside it, renamed), root's only.
fn save(id: &ModuleId, state: &State) -> Result<()> {
    let dir = state_dir();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| ToolError::Failed(format!("creating {}: {e}", dir.display())))?;
    let path = state_path(id);
    let tmp = dir.join(format!(".{id}.json.tmp"));
    let text = serde_json::to_vec_pretty(state)
        .map_err(|e| ToolError::Failed(format!("encoding the upgrade state: {e}")))?;
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)))
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| ToolError::Failed(format!("writing {}: {e}", path.display())))
}

/// Records that the upgrade reached `phase`; never goes back (a re-run of the steps after a crash
/// passes earlier phases again: the snapshot must still count as taken).
fn set_phase(id: &ModuleId, state: &mut State, phase: Phase) -> Result<()> {
    state.phase = state.phase.max(phase);
    save(id, state)
}

fn forget(id: &ModuleId) -> Result<()> {
    backup::remove_any(&state_path(id))
}

/// Everything the node keeps of a module's upgrades, removed with the module (module.remove's
/// delete-user): the state of one in progress, the previous image's name.
pub fn forget_module(id: &ModuleId) -> Result<()> {
    forget(id)?;
    backup::remove_any(&previous_path(id))
}

/// The state of the upgrade in progress, or `None` (said on stdout) when there is none: the
/// later steps then have nothing to do (prepare found the module at its image already).
fn in_progress(id: &ModuleId) -> Result<Option<State>> {
    let state = load(id)?;
    if state.is_none() {
        println!("no upgrade of {id} is in progress: nothing to do");
    }
    Ok(state)
}

/// The image node/NODE/modules has for `id`: what the module runs.
fn registered_image(ctx: &Ctx, id: &ModuleId) -> Result<Option<String>> {
    let image: Option<String> = redis::cmd("HGET")
        .arg(ctx.node_prefix().modules())
        .arg(id.as_str())
        .query(&mut ctx.con()?)?;
    Ok(image)
}

fn module_prefix(id: &ModuleId) -> Prefix {
    Prefix::module(id.agent_name().clone())
}

fn module_env_key(id: &ModuleId) -> String {
    module_prefix(id).module_env()
}

/// Makes the hash `key` exactly `fields`, in one transaction (none: the key removed).
fn replace_hash(ctx: &Ctx, key: &str, fields: &BTreeMap<String, String>) -> Result<()> {
    let mut pipe = redis::pipe();
    pipe.atomic().cmd("DEL").arg(key).ignore();
    if !fields.is_empty() {
        pipe.cmd("HSET").arg(key);
        for (k, v) in fields {
            pipe.arg(k).arg(v);
        }
        pipe.ignore();
    }
    let () = pipe.query(&mut ctx.con()?)?;
    Ok(())
}

/// Puts the module's routes back as they were before the upgrade, and has the edge proxy apply
/// them (an edge.sync queued after this run) when they had changed.
fn put_routes_back(ctx: &Ctx, id: &ModuleId, routes: &BTreeMap<String, String>) -> Result<()> {
    let key = module_prefix(id).routes();
    let now: BTreeMap<String, String> = redis::cmd("HGETALL").arg(&key).query(&mut ctx.con()?)?;
    if &now == routes {
        return Ok(());
    }
    replace_hash(ctx, &key, routes)?;
    println!("the routes of {id} put back as they were before the upgrade");
    super::edge::run(
        &super::edge::EdgeCmd::QueueSync {
            why: format!("{}.rollback {id}", contract::UPDATE_EVENT),
        },
        ctx,
    )
}

/// The version of an image root's storage has (its label, else its tag).
fn version_in_store(reference: &str) -> Result<String> {
    let labels = image::root_image(reference)?.map(|i| i.labels);
    Ok(version_of(
        reference,
        labels
            .as_ref()
            .and_then(|l| l.get(contract::VERSION_LABEL))
            .map(String::as_str),
    ))
}

/// A run id for the module's own event `what` of this step's attempt: a re-run of the step (an
/// interrupted node-agent) runs it afresh.
fn module_run(what: &str) -> Result<RunId> {
    let run = backup::env_or(step_env::AGENT_RUN_ID, "manual");
    let attempt = backup::env_or(step_env::AGENT_ATTEMPT, "1");
    RunId::new(format!("{what}-{run}-{attempt}"))
        .map_err(|e| ToolError::Invalid(format!("run id: {e}")))
}

fn module_wait() -> Result<Duration> {
    env_secs("MODULE_UPDATE_WAIT", 3600)
}

// ---- the steps --------------------------------------------------------------------------------

fn prepare(ctx: &Ctx, id: &ModuleId) -> Result<()> {
    let Some(from) = registered_image(ctx, id)? else {
        return Err(ToolError::Unavailable(format!(
            "module {id} is not installed on node {} (node/{}/modules): nothing to upgrade",
            ctx.node, ctx.node
        )));
    };
    let to = image::events_image(ctx, id)?;
    if let Some(state) = load(id)? {
        if state.phase == Phase::RollingBack {
            return Err(ToolError::Failed(format!(
                "the rollback of the upgrade of {id} from {} to {} was interrupted: it runs again",
                state.from_image, state.to_image
            )));
        }
        if from == state.to_image {
            println!(
                "the upgrade of {id} to {} was committed before this run was interrupted",
                state.to_image
            );
            forget(id)?;
            return Ok(());
        }
        if from == state.from_image && to != state.to_image {
            return Err(ToolError::Failed(format!(
                "an unfinished upgrade of {id} to {} is in the way of this one to {to}: it is rolled back now; then run the upgrade to {to} again",
                state.to_image
            )));
        }
        if from == state.from_image {
            println!(
                "the upgrade of {id} from {} to {} carries on (it was interrupted at {:?})",
                state.from_image, state.to_image, state.phase
            );
            return Ok(());
        }
        println!("a stale upgrade state of {id} removed (it named neither what the module runs)");
        forget(id)?;
    }
    if to == from {
        println!("module {id} runs {from} already: nothing to upgrade");
        return Ok(());
    }
    // The new image, pulled and checked before anything is recorded or changed: under `require`
    // an image the policy refuses stops here (the rollback only puts EVENTS_IMAGE back).
    image::verify_image(ctx, id, image::Check::Strict)?;
    let mut env: BTreeMap<String, String> = redis::cmd("HGETALL")
        .arg(module_env_key(id))
        .query(&mut ctx.con()?)?;
    env.insert(module_env::EVENTS_IMAGE.to_string(), from.clone());
    let routes: BTreeMap<String, String> = redis::cmd("HGETALL")
        .arg(module_prefix(id).routes())
        .query(&mut ctx.con()?)?;
    let state = State {
        routes,
        from_version: version_in_store(&from)?,
        to_version: version_in_store(&to)?,
        from_image: from,
        to_image: to,
        module_env: env,
        snapshot_has_data: false,
        phase: Phase::Prepared,
        rolled_back_from: None,
    };
    save(id, &state)?;
    println!(
        "upgrade of {id}: {} ({}) → {} ({})",
        state.from_image, state.from_version, state.to_image, state.to_version
    );
    Ok(())
}

/// `/home/.agent-backup/ID/update`: the upgrade's snapshot of the module's data.
fn snapshot_dir(id: &ModuleId) -> Result<PathBuf> {
    Ok(backup::module_dir(id)?.join(contract::SNAPSHOT_DIR))
}

/// `cp -a --reflink=auto FROM TO` as root: a copy of its own (new inodes), so that a hard link the
/// module's dump made to its live data does not carry a later change of that data into the copy.
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    backup::remove_any(to)?;
    super::run_ok(
        Command::new("cp")
            .args(["-a", "--reflink=auto", "--"])
            .arg(from)
            .arg(to),
    )
}

fn snapshot(ctx: &Ctx, id: &ModuleId) -> Result<()> {
    let Some(mut state) = in_progress(id)? else {
        return Ok(());
    };
    if state.phase >= Phase::Snapshotted {
        println!("the snapshot of {id} taken by an earlier attempt of this upgrade is kept");
        return Ok(());
    }
    let user = ModuleUser::require(id)?;
    let dump = backup::module_dir(id)?.join("update.tmp");
    backup::fresh_user_dir(&dump, &user)?;
    let outcome = backup::run_module_event(
        ctx,
        id,
        backup_contract::BACKUP_EVENT,
        &module_run("update-backup")?,
        &dump.to_string_lossy(),
    )?;
    let has_data = match outcome {
        ModuleRun::Done => true,
        ModuleRun::NoSuchEvent => {
            println!(
                "warning: module {id} defines no backup event: a rollback puts back its image and settings, not its data"
            );
            false
        }
        ModuleRun::Failed(why) => {
            return Err(ToolError::Failed(format!(
                "the module's own backup of {id} failed, so nothing is upgraded:\n{why}"
            )))
        }
    };
    // Root's from here on, checked like a backup's dump, then copied.
    let (files, bytes) = backup::seal_dump(&dump, &user)?;
    let snap = snapshot_dir(id)?;
    copy_tree(&dump, &snap)?;
    backup::remove_any(&dump)?;
    state.snapshot_has_data = has_data;
    set_phase(id, &mut state, Phase::Snapshotted)?;
    println!(
        "snapshot of {id} before its upgrade: {files} files, {bytes} bytes in {}",
        snap.display()
    );
    Ok(())
}

fn stop(id: &ModuleId) -> Result<()> {
    let Some(mut state) = in_progress(id)? else {
        return Ok(());
    };
    set_phase(id, &mut state, Phase::Stopping)?;
    super::agent::stop_units(id)
}

fn install(ctx: &Ctx, id: &ModuleId) -> Result<()> {
    let Some(mut state) = in_progress(id)? else {
        return Ok(());
    };
    set_phase(id, &mut state, Phase::Installing)?;
    let user = ModuleUser::require(id)?;
    remove_stale(&user, &state.from_image, &state.to_image)?;
    image::install_image(ctx, id)
}

fn migrate(ctx: &Ctx, id: &ModuleId) -> Result<()> {
    let Some(mut state) = in_progress(id)? else {
        return Ok(());
    };
    set_phase(id, &mut state, Phase::Migrating)?;
    // The versions in the module's environment for the rest of the upgrade (its module.update,
    // module.init and health runs); the commit removes them, the rollback's module.env has none.
    let _: i64 = redis::cmd("HSET")
        .arg(module_env_key(id))
        .arg(module_env::UPDATE_FROM_VERSION)
        .arg(&state.from_version)
        .arg(module_env::UPDATE_TO_VERSION)
        .arg(&state.to_version)
        .arg(module_env::UPDATE_FROM_IMAGE)
        .arg(&state.from_image)
        .query(&mut ctx.con()?)?;
    let data = format!("{} {}", state.from_version, state.to_version);
    let outcome = backup::run_module_event_within(
        ctx,
        id,
        contract::UPDATE_EVENT,
        &module_run("update")?,
        &data,
        module_wait()?,
    )?;
    match outcome {
        ModuleRun::Done => println!("the module's own module.update steps ({data}) are done"),
        ModuleRun::NoSuchEvent => {
            println!("module {id} defines no module.update event: nothing to migrate")
        }
        ModuleRun::Failed(why) => {
            return Err(ToolError::Failed(format!(
                "the module's own module.update of {id} ({data}) failed:\n{why}"
            )))
        }
    }
    Ok(())
}

/// The module's own module.init, run again: it configures and starts the version now installed.
fn start_module(ctx: &Ctx, id: &ModuleId, what: &str) -> Result<()> {
    let outcome = backup::run_module_event_within(
        ctx,
        id,
        contract::MODULE_INIT_EVENT,
        &module_run(what)?,
        "",
        module_wait()?,
    )?;
    match outcome {
        ModuleRun::Done => {
            println!("the module's own module.init is done");
            Ok(())
        }
        ModuleRun::NoSuchEvent => {
            println!("module {id} defines no module.init event: nothing of its own to start");
            Ok(())
        }
        ModuleRun::Failed(why) => Err(ToolError::Failed(format!(
            "the module's own module.init of {id} failed:\n{why}"
        ))),
    }
}

fn start(ctx: &Ctx, id: &ModuleId) -> Result<()> {
    let Some(mut state) = in_progress(id)? else {
        return Ok(());
    };
    set_phase(id, &mut state, Phase::Starting)?;
    start_module(ctx, id, "update-init")
}

/// The health gate's time: the label of `reference` (seconds), else the default.
fn health_timeout(reference: &str) -> Result<Duration> {
    let labels = image::root_image(reference)?
        .map(|i| i.labels)
        .unwrap_or_default();
    let Some(text) = labels.get(contract::HEALTH_TIMEOUT_LABEL) else {
        return Ok(Duration::from_secs(contract::DEFAULT_HEALTH_TIMEOUT));
    };
    match text.trim().parse::<u64>() {
        Ok(secs) if (1..=3600).contains(&secs) => Ok(Duration::from_secs(secs)),
        _ => Err(ToolError::Invalid(format!(
            "the label {} of {reference} is {text:?}: a number of seconds from 1 to 3600",
            contract::HEALTH_TIMEOUT_LABEL
        ))),
    }
}

/// Waits until the module is healthy: its `health` event succeeds (or it defines none) and none of
/// its own units failed; fails after `timeout` with what the last try said.
fn health_gate(ctx: &Ctx, id: &ModuleId, timeout: Duration, what: &str) -> Result<()> {
    let user = ModuleUser::require(id)?;
    let end = Instant::now() + timeout;
    let mut tries = 0;
    loop {
        tries += 1;
        let failed =
            super::agent::failed(super::agent::own_units_of(id, &user)?.unwrap_or_default());
        let left = end
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(5));
        let run = module_run(&format!("{what}-{tries}"))?;
        let outcome =
            backup::run_module_event_within(ctx, id, contract::HEALTH_EVENT, &run, "", left)?;
        let problem = match (outcome, failed.is_empty()) {
            (ModuleRun::Done, true) => {
                println!("module {id} is healthy (its health steps passed, no unit failed)");
                return Ok(());
            }
            (ModuleRun::NoSuchEvent, true) => {
                println!("module {id} is healthy (no unit failed; it defines no health event)");
                return Ok(());
            }
            (ModuleRun::Failed(why), _) => why,
            (_, false) => format!("its units failed: {}", failed.join(", ")),
        };
        if Instant::now() >= end {
            return Err(ToolError::Failed(format!(
                "module {id} is not healthy after {}s ({tries} tries); the last one said:\n{problem}",
                timeout.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn health(ctx: &Ctx, id: &ModuleId) -> Result<()> {
    let Some(mut state) = in_progress(id)? else {
        return Ok(());
    };
    set_phase(id, &mut state, Phase::Checking)?;
    health_gate(ctx, id, health_timeout(&state.to_image)?, "update-health")
}

/// Where the node remembers the image a module ran before its last upgrade (kept for one more).
fn previous_path(id: &ModuleId) -> PathBuf {
    state_dir().join(format!("{id}.previous"))
}

fn commit(ctx: &Ctx, id: &ModuleId) -> Result<()> {
    let Some(mut state) = in_progress(id)? else {
        return Ok(());
    };
    set_phase(id, &mut state, Phase::Committing)?;
    let _: i64 = redis::cmd("HDEL")
        .arg(module_env_key(id))
        .arg(module_env::UPDATE_FROM_VERSION)
        .arg(module_env::UPDATE_TO_VERSION)
        .arg(module_env::UPDATE_FROM_IMAGE)
        .query(&mut ctx.con()?)?;
    let _: i64 = redis::cmd("HSET")
        .arg(ctx.node_prefix().modules())
        .arg(id.as_str())
        .arg(&state.to_image)
        .query(&mut ctx.con()?)?;
    backup::remove_any(&snapshot_dir(id)?)?;
    let older = std::fs::read_to_string(previous_path(id)).unwrap_or_default();
    std::fs::write(previous_path(id), &state.from_image)
        .map_err(|e| ToolError::Failed(format!("writing {}: {e}", previous_path(id).display())))?;
    forget(id)?;
    println!(
        "module {id} upgraded: {} ({}) → {} ({}); {} kept for one more upgrade",
        state.from_image, state.from_version, state.to_image, state.to_version, state.from_image
    );
    let older = older.trim();
    if !older.is_empty() && older != state.from_image && older != state.to_image {
        remove_unused_image(ctx, older)?;
    }
    Ok(())
}

/// Removes `reference` from root's storage unless a module of this node uses it.
fn remove_unused_image(ctx: &Ctx, reference: &str) -> Result<()> {
    let used: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(ctx.node_prefix().modules())
        .query(&mut ctx.con()?)?;
    if used.values().any(|image| image == reference) {
        return Ok(());
    }
    let st = Command::new("podman")
        .args(["image", "rm", "--", reference])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if matches!(st, Ok(s) if s.success()) {
        println!("image {reference} (two upgrades old) removed from the node's storage");
    }
    Ok(())
}

fn revert(ctx: &Ctx, id: &ModuleId) -> Result<()> {
    let Some(mut state) = load(id)? else {
        // Refused before anything was recorded (a signature, an image that cannot be had): the
        // module runs what it ran, and module.env says so again.
        if let Some(running) = registered_image(ctx, id)? {
            let named: Option<String> = redis::cmd("HGET")
                .arg(module_env_key(id))
                .arg(module_env::EVENTS_IMAGE)
                .query(&mut ctx.con()?)?;
            if named.as_deref() != Some(running.as_str()) {
                let _: i64 = redis::cmd("HSET")
                    .arg(module_env_key(id))
                    .arg(module_env::EVENTS_IMAGE)
                    .arg(&running)
                    .query(&mut ctx.con()?)?;
                println!("nothing of {id} was changed; its module.env names {running} again");
            } else {
                println!("nothing of {id} was changed");
            }
        }
        return Ok(());
    };
    // The module.env as it was, in one transaction.
    let put_env_back = |state: &State| replace_hash(ctx, &module_env_key(id), &state.module_env);
    if state.phase == Phase::Prepared {
        put_env_back(&state)?;
        forget(id)?;
        println!(
            "the upgrade of {id} stopped before it changed anything: {} ({}) runs on",
            state.from_image, state.from_version
        );
        return Ok(());
    }
    // From the stop on, the whole way back (each part is idempotent, and what was not changed yet
    // is put back as it is): the state says so first, so that an interrupted rollback runs again.
    // Without a snapshot taken (the dump failed) there is no data to restore: it was not changed.
    let reached = *state.rolled_back_from.get_or_insert(state.phase);
    set_phase(id, &mut state, Phase::RollingBack)?;
    println!(
        "rolling {id} back from {} ({}) to {} ({})",
        state.to_image, state.to_version, state.from_image, state.from_version
    );
    put_env_back(&state)?;
    put_routes_back(ctx, id, &state.routes)?;
    super::agent::stop_units(id)?;
    let user = ModuleUser::require(id)?;
    if reached >= Phase::Installing {
        remove_stale(&user, &state.to_image, &state.from_image)?;
        image::reinstall_image(ctx, id)?;
    }
    if state.snapshot_has_data {
        restore_snapshot(ctx, id, &user)?;
    }
    start_module(ctx, id, "rollback-init")?;
    health_gate(
        ctx,
        id,
        health_timeout(&state.from_image)?,
        "rollback-health",
    )?;
    backup::remove_any(&snapshot_dir(id)?)?;
    forget(id)?;
    println!(
        "module {id} rolled back: {} ({}) runs again, with the data it had before the upgrade",
        state.from_image, state.from_version
    );
    Ok(())
}

/// The snapshot's data handed to the module's own `restore` event (a copy of the user's: the
/// snapshot stays root's until the rollback is done, so a re-run restores it again).
fn restore_snapshot(ctx: &Ctx, id: &ModuleId, user: &ModuleUser) -> Result<()> {
    let snap = snapshot_dir(id)?;
    let target = backup::module_dir(id)?.join("update.restore");
    copy_tree(&snap, &target)?;
    backup::chown_tree(&target, user.uid)?;
    let outcome = backup::run_module_event(
        ctx,
        id,
        backup_contract::RESTORE_EVENT,
        &module_run("rollback-restore")?,
        &target.to_string_lossy(),
    )?;
    backup::remove_any(&target)?;
    match outcome {
        ModuleRun::Done => {
            println!("the data of {id} from before the upgrade put back");
            Ok(())
        }
        ModuleRun::NoSuchEvent => Err(ToolError::Unavailable(format!(
            "module {id} defines no restore event: its data from before the upgrade cannot be put back (docs/MODULES.md, \"Backup and restore\")"
        ))),
        ModuleRun::Failed(why) => Err(ToolError::Failed(format!(
            "the module's own restore of {id} failed:\n{why}"
        ))),
    }
}

// ---- the imageroots compared ----------------------------------------------------------------

/// An imageroot tree: its entries by path relative to it.
type Index = BTreeMap<PathBuf, Entry>;

/// One entry of an imageroot tree.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Dir,
    File(Vec<u8>),
    Link(PathBuf),
}

/// Every entry below `root` by its path relative to it (nothing followed). Imageroots are small
/// (steps and unit files): contents are held to be compared.
fn tree_index(root: &Path) -> Result<Index> {
    let mut entries = BTreeMap::new();
    backup::walk(root, |path, m| {
        let rel = path.strip_prefix(root).unwrap_or(path).to_path_buf();
        let entry = if m.is_dir() {
            Entry::Dir
        } else if m.file_type().is_symlink() {
            Entry::Link(std::fs::read_link(path).unwrap_or_default())
        } else {
            Entry::File(
                std::fs::read(path)
                    .map_err(|e| ToolError::Failed(format!("reading {}: {e}", path.display())))?,
            )
        };
        entries.insert(rel, entry);
        Ok(())
    })?;
    Ok(entries)
}

/// The imageroot of an image in root's storage, indexed; `None` when root's storage lacks it.
fn imageroot_of(reference: &str) -> Result<Option<Index>> {
    let Some(found) = image::root_image(reference)? else {
        return Ok(None);
    };
    read_imageroot(reference, &found, None).map(|read| Some(read.tree))
}

/// An image's imageroot as a plan reads it.
struct ReadImage {
    tree: Index,
    /// The node's verdict on its signature, when asked for.
    verdict: Option<String>,
    labels: HashMap<String, String>,
    id: String,
}

/// The imageroot of `found` (`reference` in root's storage), indexed; with `signing`, also the
/// node's verdict on its signature, read on the same mount.
fn read_imageroot(
    reference: &str,
    found: &image::RootImage,
    signing: Option<&NodeSigning>,
) -> Result<ReadImage> {
    let labels = image::parse_labels(reference, &found.labels)?;
    let mount = ImageMount::new(&found.id)?;
    let tree = image::dir_in_image(&mount.path, &labels.imageroot)?;
    Ok(ReadImage {
        verdict: signing.map(|s| signature_line(s, reference, &tree)),
        tree: tree_index(&tree)?,
        labels: found.labels.clone(),
        id: found.id.clone(),
    })
}

/// The differences from `old` to `new`: (added, changed, removed).
fn compare(old: &Index, new: &Index) -> (Vec<PathBuf>, Vec<PathBuf>, Vec<PathBuf>) {
    let added = new
        .keys()
        .filter(|p| !old.contains_key(*p))
        .cloned()
        .collect();
    let changed = new
        .iter()
        .filter(|(p, e)| old.get(*p).is_some_and(|o| o != *e))
        .map(|(p, _)| p.clone())
        .collect();
    let removed = old
        .keys()
        .filter(|p| !new.contains_key(*p))
        .cloned()
        .collect();
    (added, changed, removed)
}

/// Removes from the module's home, as its user, what the imageroot of `old` had and that of `new`
/// has not: a step the new version dropped must not run any more. Files and links first, then
/// the directories left empty (deepest first); what the module made itself is not touched.
fn remove_stale(user: &ModuleUser, old: &str, new: &str) -> Result<()> {
    let (Some(old_tree), Some(new_tree)) = (imageroot_of(old)?, imageroot_of(new)?) else {
        println!(
            "the imageroot of {old} or {new} cannot be read: no file of the old one is removed"
        );
        return Ok(());
    };
    let (_, _, stale) = compare(&old_tree, &new_tree);
    if stale.is_empty() {
        return Ok(());
    }
    let (dirs, files): (Vec<&PathBuf>, Vec<&PathBuf>) =
        stale.iter().partition(|p| old_tree[*p] == Entry::Dir);
    if !files.is_empty() {
        let mut rm = user.command("rm");
        rm.args(["-f", "--"])
            .args(files.iter().map(|p| user.home.join(p)));
        super::run_ok(&mut rm)?;
    }
    if !dirs.is_empty() {
        let mut rmdir = user.command("rmdir");
        rmdir
            .args(["--ignore-fail-on-non-empty", "--"])
            .args(dirs.iter().rev().map(|p| user.home.join(p)));
        // A directory the module filled itself stays: not an error.
        let _ = super::status(&mut rmdir);
    }
    println!(
        "{} entries of the old imageroot that the new one lacks removed from {}",
        stale.len(),
        user.home.display()
    );
    Ok(())
}

// ---- the plan -------------------------------------------------------------------------------

/// A scratch image storage (vfs, below /var/tmp) for an image root's storage does not have:
/// reading it for a plan must not change the node's image store. vfs layers are plain directories
/// (nothing stays mounted), so the directory's removal when dropped removes it all; never `podman
/// system reset`, which would also remove the node's own networks.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Result<Scratch> {
        let dir = tempfile::Builder::new()
            .prefix("agent-plan.")
            .tempdir_in("/var/tmp")
            .map_err(|e| ToolError::Failed(format!("cannot make a directory in /var/tmp: {e}")))?;
        Ok(Scratch { dir })
    }

    fn podman(&self) -> Command {
        let mut c = Command::new("podman");
        c.arg("--root")
            .arg(self.dir.path().join("root"))
            .arg("--runroot")
            .arg(self.dir.path().join("run"))
            .args(["--storage-driver", "vfs"]);
        c
    }

    /// The image pulled here, its imageroot indexed, the node's verdict on its signature, its
    /// labels and id.
    fn read(&self, reference: &str, signing: &NodeSigning) -> Result<ReadImage> {
        let (st, out) = super::stdout_of(self.podman().args(["pull", "--quiet", reference]))?;
        let id = out.lines().last().unwrap_or("").trim().to_string();
        if !st.success() || id.is_empty() {
            return Err(ToolError::Unavailable(format!(
                "cannot get the image {reference} (podman pull failed, see above)"
            )));
        }
        let labels = super::stdout_ok(self.podman().args([
            "image",
            "inspect",
            "--format",
            "{{json .Labels}}",
            &id,
        ]))?;
        let labels = image::labels_from_json(labels.trim())?;
        let parsed = image::parse_labels(reference, &labels)?;
        let mount = super::stdout_ok(self.podman().args(["image", "mount", &id]))?;
        let tree = image::dir_in_image(Path::new(mount.trim()), &parsed.imageroot);
        let read = tree.and_then(|tree| {
            Ok(ReadImage {
                verdict: Some(signature_line(signing, reference, &tree)),
                tree: tree_index(&tree)?,
                labels,
                id: id.clone(),
            })
        });
        let _ = self
            .podman()
            .args(["image", "unmount", &id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        read
    }
}

/// The manifest digest a storage (`podman`: its command) has for image `id`, or `unknown`.
fn digest(mut podman: Command, id: &str) -> String {
    podman.args(["image", "inspect", "--format", "{{.Digest}}", id]);
    match super::quiet_stdout_of(&mut podman) {
        Ok((st, out)) if st.success() && out.starts_with("sha256:") => out,
        _ => "unknown".to_string(),
    }
}

/// What a jump from one version to another is, in words.
fn jump(from: &str, to: &str) -> String {
    let parse = |v: &str| semver::Version::parse(v.trim_start_matches('v')).ok();
    match (parse(from), parse(to)) {
        (Some(a), Some(b)) if b < a => "a downgrade".into(),
        (Some(a), Some(b)) if b == a => "the same version".into(),
        (Some(a), Some(b)) if b.major != a.major => {
            "a major upgrade: read its release notes".into()
        }
        (Some(a), Some(b)) if b.minor != a.minor => "a minor upgrade".into(),
        (Some(_), Some(_)) => "a patch upgrade".into(),
        _ => "versions that are not semantic versions".into(),
    }
}

/// The steps of the module's own event `event` in an imageroot index, in name order.
fn own_steps(tree: &Index, event: &str) -> Vec<String> {
    let dir = Path::new(".config/module-events").join(event);
    tree.keys()
        .filter(|p| p.parent() == Some(dir.as_path()))
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .filter(|n| !n.starts_with('.'))
        .collect()
}

fn plan(ctx: &Ctx, id: &ModuleId, to: Option<&str>) -> Result<()> {
    let Some(from) = registered_image(ctx, id)? else {
        return Err(ToolError::Unavailable(format!(
            "module {id} is not installed on node {}: nothing to plan",
            ctx.node
        )));
    };
    let to = match to {
        Some(t) => {
            core_events::module_image::check_image_ref(t)
                .map_err(|e| ToolError::Invalid(format!("image: {e}")))?;
            t.to_string()
        }
        None => image::events_image(ctx, id)?,
    };
    let old = image::root_image(&from)?.ok_or_else(|| {
        ToolError::Unavailable(format!(
            "the image {from} that {id} runs is not in the node's storage: its imageroot cannot be compared"
        ))
    })?;
    let signing = image::node_signing()?;
    let old_tree = read_imageroot(&from, &old, None)?.tree;
    let mut scratch = None;
    let new = match image::root_image(&to)? {
        Some(found) => read_imageroot(&to, &found, Some(&signing))?,
        None => scratch.insert(Scratch::new()?).read(&to, &signing)?,
    };
    let ReadImage {
        tree: new_tree,
        verdict,
        labels: new_labels,
        id: new_id,
    } = new;
    let new_digest = match &scratch {
        Some(s) => digest(s.podman(), &new_id),
        None => digest(Command::new("podman"), &new_id),
    };
    let version = |reference: &str, labels: &HashMap<String, String>| {
        version_of(
            reference,
            labels.get(contract::VERSION_LABEL).map(String::as_str),
        )
    };
    let (from_v, to_v) = (version(&from, &old.labels), version(&to, &new_labels));
    println!(
        "plan: upgrade of {id} on node {} (nothing is changed)",
        ctx.node
    );
    println!(
        "image:     {from} ({}) -> {to} ({})",
        image::short_id(&old.id),
        image::short_id(&new_id)
    );
    println!(
        "digest:    {} -> {new_digest}",
        digest(Command::new("podman"), &old.id)
    );
    println!("version:   {from_v} -> {to_v} ({})", jump(&from_v, &to_v));
    println!("signature: {}", verdict.unwrap_or_default());
    let (added, changed, removed) = compare(&old_tree, &new_tree);
    println!(
        "imageroot: {} added, {} changed, {} removed",
        added.len(),
        changed.len(),
        removed.len()
    );
    for (mark, paths) in [("+", &added), ("~", &changed), ("-", &removed)] {
        for p in paths.iter() {
            println!("  {mark} {}", p.display());
        }
    }
    let steps = |event: &str| {
        let s = own_steps(&new_tree, event);
        if s.is_empty() {
            "none".to_string()
        } else {
            s.join(" ")
        }
    };
    println!(
        "migration: the module's own module.update steps ({from_v} {to_v}): {}",
        steps(contract::UPDATE_EVENT)
    );
    println!(
        "start:     the module's own module.init steps: {}",
        steps(contract::MODULE_INIT_EVENT)
    );
    println!(
        "health:    the module's own health steps: {}; within {}s",
        steps(contract::HEALTH_EVENT),
        new_labels
            .get(contract::HEALTH_TIMEOUT_LABEL)
            .cloned()
            .unwrap_or_else(|| contract::DEFAULT_HEALTH_TIMEOUT.to_string())
    );
    println!(
        "the node's steps: agentctl explain {} module.update (and module.update.rollback)",
        ctx.node
    );
    Ok(())
}

/// The signature verdict on the imageroot `tree` (of `reference`) under the node's policy, said
/// and never refused.
fn signature_line(signing: &NodeSigning, reference: &str, tree: &Path) -> String {
    if signing.policy == module_signing::Policy::Off {
        return format!("not checked (policy off, {})", signing.origin());
    }
    match module_signing::verify(tree, &signing.trust_dir, signing.policy) {
        Ok(mut v) => {
            v.subject = PathBuf::from(reference);
            format!(
                "{v}; accepted (policy {}, {})",
                signing.policy,
                signing.origin()
            )
        }
        Err(module_signing::Error::Rejected(v)) => {
            let mut v = *v;
            v.subject = PathBuf::from(reference);
            format!(
                "{v}; REFUSED (policy require, {}): the upgrade would stop before any change",
                signing.origin()
            )
        }
        Err(e) => format!("cannot be checked: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_are_ordered_as_the_steps_run() {
        assert!(Phase::Prepared < Phase::Stopping);
        assert!(Phase::Stopping < Phase::Snapshotted);
        assert!(Phase::Committing < Phase::RollingBack);
        let text = serde_json::to_string(&Phase::RollingBack).unwrap();
        assert_eq!(text, "\"rolling-back\"");
    }

    #[test]
    fn imageroots_are_compared_by_path_and_content() {
        let tree = |items: &[(&str, Entry)]| {
            items
                .iter()
                .map(|(p, e)| (PathBuf::from(p), e.clone()))
                .collect::<BTreeMap<_, _>>()
        };
        let old = tree(&[
            (".config", Entry::Dir),
            (".config/a", Entry::File(b"1".to_vec())),
            (".config/b", Entry::File(b"2".to_vec())),
            (".config/l", Entry::Link("a".into())),
        ]);
        let new = tree(&[
            (".config", Entry::Dir),
            (".config/a", Entry::File(b"1".to_vec())),
            (".config/b", Entry::File(b"3".to_vec())),
            (".config/c", Entry::File(b"4".to_vec())),
        ]);
        let (added, changed, removed) = compare(&old, &new);
        assert_eq!(added, [PathBuf::from(".config/c")]);
        assert_eq!(changed, [PathBuf::from(".config/b")]);
        assert_eq!(removed, [PathBuf::from(".config/l")]);
        assert_eq!(
            own_steps(
                &tree(&[
                    (".config/module-events/health/10page", Entry::File(vec![])),
                    (".config/module-events/health/.timeout", Entry::File(vec![])),
                    (".config/module-events/healthy/10x", Entry::File(vec![])),
                ]),
                "health"
            ),
            ["10page"]
        );
    }

    #[test]
    fn version_jumps() {
        assert_eq!(
            jump("1.0.0", "2.0.0"),
            "a major upgrade: read its release notes"
        );
        assert_eq!(jump("1.0.0", "1.1.0"), "a minor upgrade");
        assert_eq!(jump("v1.0.0", "1.0.1"), "a patch upgrade");
        assert_eq!(jump("1.0.1", "1.0.0"), "a downgrade");
        assert_eq!(
            jump("latest", "1.0.0"),
            "versions that are not semantic versions"
        );
    }
}
