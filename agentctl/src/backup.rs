//! `agentctl backup`: the cluster's backup repositories (`repo add|list|rm|default`), a module's
//! backup (`run`: the node's `backup` event, queued on the node that hosts the module and
//! followed), its status (`status`: the last attempt and the last success, `failed` until a later
//! backup succeeds) and its snapshots. The work is the `backup` crate's and the node's steps'.

use std::io::Read;

use anyhow::{Context, Result};
use core_events::backup::{self as contract, status, RepoName, RepoUrl};
use core_events::{keys, AgentKind, AgentName, EventName, ModuleId, Prefix};
use module_secrets::Secret;
use redis::AsyncCommands;

use crate::conn::Redis;
use crate::fail::{fail, invalid};
use crate::run::{queue_and_follow, Follow};

#[derive(Debug, clap::Subcommand)]
pub enum BackupCmd {
    /// The cluster's restic repositories.
    #[command(subcommand)]
    Repo(RepoCmd),
    /// Back up a module now: queues the backup event on the node that hosts it and follows the
    /// run (the module's own backup steps dump its state, then one restic snapshot of it and of
    /// the core's record of the module). Exits with the run's exit code.
    Run(RunArgs),
    /// Every module's backup status, or one module's: the state (ok / failed — failed from a
    /// failed backup until a later backup of the same module succeeds), the last success (when,
    /// snapshot, files, bytes, duration) and the last attempt (when, how it ended, why it failed).
    Status(StatusArgs),
    /// A module's snapshots in a repository (restic snapshots --tag module=ID), oldest first.
    Snapshots(SnapshotsArgs),
    /// Create a module again from a snapshot — the latest of MODULE, or SNAPSHOT — on this node
    /// or another (--node), under its own id or a new one while the original runs (--as): the
    /// node fetches the snapshot and its image first (a missing image is an error before
    /// anything is made: restore.prepare), installs the module with the snapshot's image and
    /// module.env (module.init), then the module's own restore steps put its data back
    /// (restore). --data-only puts the data back into an installed module.
    Restore(RestoreArgs),
    /// Verify a module's backup by restoring it: `restic check` of the repository, then the
    /// module's latest snapshot restored on this node into a scratch module (id verifyNNNNNN,
    /// no routes, module.env fields PORT and *_PORT moved to free ports), the scratch module's
    /// own `backup-verify` steps run if it has any (hello checks its page), and the scratch
    /// module removed. The outcome goes to the module's status (verify_*). Exit 0 when all of
    /// it passed.
    Verify(VerifyArgs),
    /// Backup schedules: `set NAME --calendar CAL --all|--modules "ID …" [--repo R] [--keep-…]`
    /// (systemd's OnCalendar syntax; every node gets a timer, which backs up the modules of that
    /// node the schedule covers; a slot missed while a node was down runs once when it is back),
    /// `list`, `rm NAME`.
    #[command(subcommand)]
    Schedule(ScheduleCmd),
}

#[derive(Debug, clap::Subcommand)]
pub enum ScheduleCmd {
    /// Add or replace a schedule, and queue backup.schedule on every node.
    Set(ScheduleSetArgs),
    /// The schedules.
    List,
    /// Remove a schedule (every node's timer goes); the snapshots stay.
    Rm { name: String },
}

#[derive(Debug, clap::Args)]
pub struct ScheduleSetArgs {
    /// [a-z][a-z0-9-]{0,30}
    name: String,
    /// When: systemd's OnCalendar= syntax (daily, "Mon..Fri 02:30", "*-*-* 00/6:00"); checked
    /// with systemd-analyze calendar.
    #[arg(long, value_name = "CAL")]
    calendar: String,
    /// Every module.
    #[arg(long, conflicts_with = "modules")]
    all: bool,
    /// These modules (ids separated by spaces).
    #[arg(long, value_name = "IDS")]
    modules: Option<String>,
    /// The repository (default: the default repository).
    #[arg(long, value_name = "NAME")]
    repo: Option<String>,
    /// Keep the last N snapshots of each module (restic forget --keep-last).
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_last: u32,
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_daily: u32,
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_weekly: u32,
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_monthly: u32,
    /// Verify the modules' latest snapshots instead of backing them up (`backup verify` of each,
    /// on its node: restic check and a restore into a scratch module); its outcome is in the
    /// status. No --keep-*.
    #[arg(long, conflicts_with_all = ["keep_last", "keep_daily", "keep_weekly", "keep_monthly"])]
    verify: bool,
}

#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// A module id (its latest snapshot) or a restic snapshot id.
    source: String,
    /// The repository (default: the default repository, or the only one).
    #[arg(long, value_name = "NAME")]
    repo: Option<String>,
    /// The node that gets the module (default: this host's short name).
    #[arg(long, value_name = "NODE")]
    node: Option<String>,
    /// The new module's id (default: the id it was backed up from).
    #[arg(long = "as", value_name = "ID")]
    as_id: Option<String>,
    /// Change K=V of the snapshot's module.env (a port, when the original still runs).
    /// Repeatable.
    #[arg(long = "env", value_name = "K=V")]
    env: Vec<String>,
    /// Only put the data back, into the installed module (its id: --as, else the snapshot's).
    #[arg(long)]
    data_only: bool,
}

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The module whose latest snapshot is verified.
    module: String,
    #[arg(long, value_name = "NAME")]
    repo: Option<String>,
    /// restic check reads all of the repository's data (default: a random tenth).
    #[arg(long)]
    read_all: bool,
    /// Keep the scratch module (to look at it; remove it with `agentctl module remove`).
    #[arg(long)]
    keep: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum RepoCmd {
    /// Add (or replace) a repository: its password (random unless --password-file) and its
    /// server's credentials are stored encrypted to the cluster's backup key
    /// (/etc/agent/backup.key, made here the first time); the repository is initialised
    /// (restic init) unless it exists. URL: /srv/backup, sftp:USER@HOST:/PATH (root's SSH key
    /// and known_hosts on every node) or rest:http(s)://HOST:PORT/PATH.
    Add(RepoAddArgs),
    /// The repositories: name, address, and which one is the default.
    List,
    /// Forget a repository (its data stays where it is).
    Rm { name: String },
    /// Make a repository the default one (where a backup goes when none is named).
    Default { name: String },
}

#[derive(Debug, clap::Args)]
pub struct RepoAddArgs {
    /// [a-z][a-z0-9-]{0,30}
    name: String,
    url: String,
    /// The repository's restic password, from this file's first line (`-`: stdin). Needed for
    /// an existing repository; a new one gets a random password.
    #[arg(long, value_name = "FILE")]
    password_file: Option<String>,
    /// The REST server's credentials: RESTIC_REST_USERNAME=… and RESTIC_REST_PASSWORD=… lines
    /// from this file (`-`: stdin).
    #[arg(long, value_name = "FILE")]
    credentials_file: Option<String>,
    /// Make it the default repository.
    #[arg(long)]
    default: bool,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The module id, e.g. hello1.
    module: String,
    /// The repository (default: the default repository, or the only one).
    #[arg(long, value_name = "NAME")]
    repo: Option<String>,
    /// Queue the backup and exit at once.
    #[arg(long)]
    no_wait: bool,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// One module (default: every module that was ever backed up, and the installed modules
    /// that never were).
    module: Option<String>,
    /// The fields as JSON (one object per module).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub struct SnapshotsArgs {
    module: String,
    #[arg(long, value_name = "NAME")]
    repo: Option<String>,
    #[arg(long)]
    json: bool,
}

pub async fn main(redis: &Redis, cmd: BackupCmd) -> Result<i32> {
    match cmd {
        BackupCmd::Repo(cmd) => repo(redis, cmd).await,
        BackupCmd::Run(args) => run(redis, args).await,
        BackupCmd::Status(args) => show_status(redis, args).await,
        BackupCmd::Snapshots(args) => snapshots(redis, args).await,
        BackupCmd::Restore(args) => restore(redis, args).await,
        BackupCmd::Verify(args) => verify(redis, args).await,
        BackupCmd::Schedule(cmd) => schedule(redis, cmd).await,
    }
}

pub(crate) fn backup_error(e: backup::Error) -> anyhow::Error {
    match e {
        backup::Error::Invalid(m) => invalid(m),
        backup::Error::NotFound(m) => fail(core_events::exit::NO_SUCH_EVENT, m),
        e => anyhow::Error::new(e),
    }
}

fn repo_name(s: &str) -> Result<RepoName> {
    RepoName::new(s).map_err(|e| invalid(format!("repository {s:?}: {e}")))
}

pub(crate) fn module_id(s: &str) -> Result<ModuleId> {
    ModuleId::new(s).map_err(|e| invalid(format!("module {s:?}: {e}")))
}

/// The text of FILE (`-`: stdin).
fn read_file(path: &str) -> Result<Secret> {
    let mut text = String::new();
    if path == "-" {
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading stdin")?;
    } else {
        text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    }
    Ok(Secret::from(text))
}

async fn repo(redis: &Redis, cmd: RepoCmd) -> Result<i32> {
    let mut con = redis.manager().await?;
    match cmd {
        RepoCmd::Add(a) => {
            let name = repo_name(&a.name)?;
            if contract::is_transient_repository(name.as_str()) {
                return Err(invalid(format!(
                    "repository names beginning with {} or {} are agentctl's own (module \
                     export|import): choose another",
                    contract::EXPORT_REPOSITORY_PREFIX,
                    contract::IMPORT_REPOSITORY_PREFIX
                )));
            }
            let url = RepoUrl::new(&a.url).map_err(|e| invalid(e.to_string()))?;
            if a.password_file.as_deref() == Some("-") && a.credentials_file.as_deref() == Some("-")
            {
                return Err(invalid(
                    "only one of --password-file and --credentials-file can be stdin",
                ));
            }
            let given = match &a.password_file {
                Some(f) => {
                    let text = read_file(f)?;
                    let first = text
                        .expose_str()
                        .unwrap_or_default()
                        .lines()
                        .next()
                        .unwrap_or_default();
                    if first.is_empty() {
                        return Err(invalid(format!("{f}: no password on its first line")));
                    }
                    Some(Secret::from(first))
                }
                None => None,
            };
            let credentials = match &a.credentials_file {
                Some(f) => {
                    backup::repo::parse_credentials(read_file(f)?.expose_str().unwrap_or_default())
                        .map_err(backup_error)?
                }
                None => Vec::new(),
            };
            let had_password = given.is_some();
            let repository = backup::Repository {
                name: name.clone(),
                url,
                password: given.unwrap_or_else(backup::repo::random_password),
                credentials,
            };
            let restic = backup::restic::Restic::new(&repository);
            if restic.exists().map_err(backup_error)? {
                if !had_password {
                    return Err(invalid(format!(
                        "{} is an existing restic repository: give its password (--password-file)",
                        repository.url
                    )));
                }
                eprintln!(
                    "repository {}: exists, opened with the password given",
                    repository.url
                );
            } else {
                restic.init().map_err(backup_error)?;
                eprintln!("repository {}: initialised", repository.url);
            }
            let identity = backup::repo::ensure_identity(&mut con, &backup::repo::identity_path())
                .await
                .map_err(backup_error)?;
            backup::repo::put(&mut con, &identity, &repository)
                .await
                .map_err(backup_error)?;
            if a.default {
                backup::repo::set_default(&mut con, &name)
                    .await
                    .map_err(backup_error)?;
            }
            println!("{name}");
            Ok(0)
        }
        RepoCmd::List => {
            let default: Option<String> = con
                .hget(
                    contract::settings_key(),
                    contract::settings::DEFAULT_REPOSITORY,
                )
                .await?;
            for n in backup::repo::names(&mut con).await.map_err(backup_error)? {
                let Ok(name) = RepoName::new(&n) else {
                    continue;
                };
                let url = backup::repo::url(&mut con, &name)
                    .await
                    .map(|u| u.to_string())
                    .unwrap_or_else(|e| format!("({e})"));
                let mark = if default.as_deref() == Some(n.as_str()) {
                    "  (default)"
                } else {
                    ""
                };
                println!("{n}\t{url}{mark}");
            }
            Ok(0)
        }
        RepoCmd::Rm { name } => {
            let name = repo_name(&name)?;
            if backup::repo::remove(&mut con, &name)
                .await
                .map_err(backup_error)?
            {
                eprintln!("repository {name} forgotten (its data is where it was)");
                Ok(0)
            } else {
                Err(fail(
                    core_events::exit::NO_SUCH_EVENT,
                    format!("no repository {name}"),
                ))
            }
        }
        RepoCmd::Default { name } => {
            let name = repo_name(&name)?;
            backup::repo::set_default(&mut con, &name)
                .await
                .map_err(backup_error)?;
            Ok(0)
        }
    }
}

/// The nodes of the agent registry, by name.
pub(crate) async fn nodes(con: &mut redis::aio::ConnectionManager) -> Result<Vec<Prefix>> {
    let registry: std::collections::HashMap<String, String> =
        con.hgetall(keys::agent_registry()).await?;
    let mut nodes: Vec<AgentName> = registry
        .iter()
        .filter(|(_, kind)| AgentKind::parse(kind) == Some(AgentKind::Node))
        .filter_map(|(n, _)| AgentName::new(n.as_str()).ok())
        .collect();
    nodes.sort();
    Ok(nodes.into_iter().map(Prefix::node).collect())
}

/// The node whose `node/<name>/modules` has `id`.
pub(crate) async fn node_of(
    con: &mut redis::aio::ConnectionManager,
    id: &ModuleId,
) -> Result<Prefix> {
    for prefix in nodes(con).await? {
        let here: bool = con.hexists(prefix.modules(), id.as_str()).await?;
        if here {
            return Ok(prefix);
        }
    }
    Err(fail(
        core_events::exit::NO_SUCH_EVENT,
        format!("module {id} is installed on no node (no node/*/modules has it)"),
    ))
}

async fn run(redis: &Redis, args: RunArgs) -> Result<i32> {
    let id = module_id(&args.module)?;
    let mut data = id.to_string();
    if let Some(r) = &args.repo {
        data = format!("{data} {}", repo_name(r)?);
    }
    let mut con = redis.manager().await?;
    let node = node_of(&mut con, &id).await?;
    let opts = Follow {
        no_wait: args.no_wait,
        timeout: 0,
        json: false,
        run_id_on_stdout: true,
    };
    let event = EventName::new(contract::BACKUP_EVENT).expect("a valid event name");
    queue_and_follow(redis, &mut con, &node, &event, &data, &opts).await
}

/// The status of an attempt's node run when it ended other than by the backup's own steps
/// (`abandoned`, `cancelled` with no record), else None.
async fn attempt_run_end(
    con: &mut redis::aio::ConnectionManager,
    f: &std::collections::HashMap<String, String>,
) -> Result<Option<String>> {
    let (Some(node), Some(run)) = (f.get(status::ATTEMPT_NODE), f.get(status::ATTEMPT_RUN)) else {
        return Ok(None);
    };
    let (Ok(node), Ok(run)) = (
        AgentName::new(node.as_str()),
        core_events::RunId::new(run.as_str()),
    ) else {
        return Ok(None);
    };
    let st: Option<String> = con
        .hget(
            Prefix::node(node).run(&run),
            core_events::record::RECORD_FIELD_STATUS,
        )
        .await?;
    let st = st.and_then(|s| s.parse::<core_events::RunStatus>().ok());
    Ok(st
        .filter(|s| s.is_terminal() && *s != core_events::RunStatus::Done)
        .map(|s| s.as_str().to_string()))
}

async fn show_status(redis: &Redis, args: StatusArgs) -> Result<i32> {
    let mut con = redis.manager().await?;
    let modules = match &args.module {
        Some(m) => vec![module_id(m)?.to_string()],
        None => backup::status::modules(&mut con)
            .await
            .map_err(backup_error)?,
    };
    let mut any_failed = false;
    for m in &modules {
        let mut f = backup::status::read(&mut con, m)
            .await
            .map_err(backup_error)?;
        // An attempt that says `running` whose run has ended without recording it (abandoned
        // after too many agent restarts, so its rollback never ran) is a failure too.
        if f.get(status::ATTEMPT_STATUS).map(String::as_str) == Some(contract::ATTEMPT_RUNNING) {
            if let Some(ended) = attempt_run_end(&mut con, &f).await? {
                f.insert(status::ATTEMPT_STATUS.into(), ended.clone());
                f.insert(status::STATE.into(), contract::STATE_FAILED.into());
                f.insert(
                    status::ATTEMPT_ERROR.into(),
                    format!("its run ended {ended} without recording the backup's end"),
                );
            }
        }
        let get = |k: &str| f.get(k).map(String::as_str).unwrap_or("");
        any_failed |= get(status::STATE) == contract::STATE_FAILED
            || get(status::VERIFY_STATE) == contract::STATE_FAILED;
        if args.json {
            let mut obj: serde_json::Map<String, serde_json::Value> = f
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect();
            obj.insert("module".into(), m.clone().into());
            println!("{}", serde_json::Value::Object(obj));
            continue;
        }
        if f.is_empty() {
            println!("{m}: never backed up");
            continue;
        }
        let state = match get(status::STATE) {
            "" => "no backup ended yet",
            s => s,
        };
        println!("{m}: {state}");
        if !get(status::SUCCESS_ENDED).is_empty() {
            println!(
                "  last success: {}  snapshot {}  in {}  {} files, {} bytes ({} added)  {} ms",
                get(status::SUCCESS_ENDED),
                get(status::SUCCESS_SNAPSHOT)
                    .get(..8)
                    .unwrap_or(get(status::SUCCESS_SNAPSHOT)),
                get(status::SUCCESS_REPOSITORY),
                get(status::SUCCESS_FILES),
                get(status::SUCCESS_BYTES),
                get(status::SUCCESS_ADDED),
                get(status::SUCCESS_DURATION_MS),
            );
        } else {
            println!("  last success: never");
        }
        println!(
            "  last attempt: {}  {}  run {} on {}  repository {}",
            get(status::ATTEMPT_STARTED),
            get(status::ATTEMPT_STATUS),
            get(status::ATTEMPT_RUN),
            get(status::ATTEMPT_NODE),
            get(status::ATTEMPT_REPOSITORY),
        );
        if !get(status::VERIFY_ENDED).is_empty() {
            println!(
                "  last verify:  {}  {}  snapshot {}{}",
                get(status::VERIFY_ENDED),
                get(status::VERIFY_STATE),
                get(status::VERIFY_SNAPSHOT),
                match get(status::VERIFY_ERROR) {
                    "" => String::new(),
                    e => format!("  error: {e}"),
                }
            );
        }
        if !get(status::ATTEMPT_ERROR).is_empty() {
            for (i, line) in get(status::ATTEMPT_ERROR).lines().enumerate() {
                println!("  {}{line}", if i == 0 { "error: " } else { "       " });
            }
        }
    }
    // A failed module makes the command fail, for monitors that only read exit codes.
    Ok(if any_failed { 1 } else { 0 })
}

async fn snapshots(redis: &Redis, args: SnapshotsArgs) -> Result<i32> {
    let id = module_id(&args.module)?;
    let mut con = redis.manager().await?;
    let repository = open_repository(&mut con, args.repo.as_deref()).await?;
    let list = backup::restic::Restic::new(&repository)
        .snapshots(&[contract::module_tag(id.as_str())])
        .map_err(backup_error)?;
    if args.json {
        println!("{}", serde_json::to_string(&list)?);
    } else {
        for s in &list {
            println!(
                "{}  {}  host {}  image {}",
                s.short_id,
                s.time,
                s.hostname,
                s.tag("image").unwrap_or("?")
            );
        }
    }
    Ok(0)
}

/// A repository opened with this node's copy of the cluster's backup key.
pub(crate) async fn open_repository(
    con: &mut redis::aio::ConnectionManager,
    repo: Option<&str>,
) -> Result<backup::Repository> {
    let named = repo.map(repo_name).transpose()?;
    backup::repo::open(con, named.as_ref())
        .await
        .map_err(backup_error)
}

/// The snapshot SOURCE names: the latest of a module, or a snapshot by id.
pub(crate) fn find_snapshot(
    restic: &backup::restic::Restic<'_>,
    source: &str,
) -> Result<backup::restic::Snapshot> {
    if let Ok(id) = ModuleId::new(source) {
        let list = restic
            .snapshots(&[contract::module_tag(id.as_str())])
            .map_err(backup_error)?;
        if let Some(latest) = list.into_iter().max_by(|a, b| a.time.cmp(&b.time)) {
            return Ok(latest);
        }
    }
    if contract::is_snapshot_id(source) && source != "latest" {
        return restic.snapshot(source).map_err(backup_error);
    }
    Err(fail(
        core_events::exit::NO_SUCH_EVENT,
        format!("no snapshot of a module {source:?} and no snapshot of that id in the repository"),
    ))
}

/// Where and as what a snapshot is restored.
struct RestoreTarget<'a> {
    node: Prefix,
    id: ModuleId,
    /// module.env changes (K, V).
    env: Vec<(String, String)>,
    repository: &'a backup::Repository,
    snapshot: &'a backup::restic::Snapshot,
    record: &'a contract::CoreRecord,
    /// Print the module's id on stdout once it is claimed (`restore`, not `verify`).
    print_id: bool,
}

pub(crate) fn event(name: &str) -> EventName {
    EventName::new(name).expect("a valid event name")
}

/// restore.prepare, module.init with the snapshot's module.env, restore: the module made again.
async fn restore_module(
    redis: &Redis,
    con: &mut redis::aio::ConnectionManager,
    t: &RestoreTarget<'_>,
) -> Result<i32> {
    let follow = Follow::to_end(0);
    let target = &t.id;
    let data = format!("{target} {} {}", t.snapshot.id, t.repository.name);
    // 1. The snapshot and its image on the node, before anything of the module is made.
    let code = queue_and_follow(
        redis,
        con,
        &t.node,
        &event(contract::PREPARE_RESTORE_EVENT),
        &data,
        &follow,
    )
    .await?;
    if code != 0 {
        eprintln!("agentctl: nothing of module {target} was made");
        return Ok(code);
    }
    // 2. The module, with the snapshot's module.env (and the changes).
    let mut env = t.record.module_env.clone();
    env.extend(t.env.iter().cloned());
    let fields: Vec<(String, String)> = env.into_iter().collect();
    let name = target.agent_name().clone();
    let mut tx = redis.blocking().await?;
    crate::module::claim(&mut tx, &name, &fields).await?;
    // Its secrets, as they were (encrypted to its identity, which restore.prepare staged for
    // module.init): before module.init, whose steps may need them.
    if !t.record.secrets.is_empty() {
        let secrets: Vec<(&String, &String)> = t.record.secrets.iter().collect();
        let _: () = con
            .hset_multiple(Prefix::module(name.clone()).secrets(), &secrets)
            .await
            .context("cannot write the module's secrets")?;
    }
    if t.print_id {
        println!("{target}");
    }
    let code = queue_and_follow(
        redis,
        con,
        &t.node,
        &event(crate::module::INIT_EVENT),
        target.as_str(),
        &follow,
    )
    .await?;
    if code != 0 {
        // module.init rolled back what it made (and kept module.env, as its rollback does).
        crate::module::unclaim(con, &name).await?;
        eprintln!("agentctl: module {target} could not be installed; nothing of it is left");
        return Ok(code);
    }
    // 3. Its data.
    let code = queue_and_follow(
        redis,
        con,
        &t.node,
        &event(contract::RESTORE_EVENT),
        &data,
        &follow,
    )
    .await?;
    if code != 0 {
        eprintln!(
            "agentctl: module {target} is installed without its data; try again with \
             `agentctl backup restore {} --as {target} --data-only`, or remove it with \
             `agentctl module remove {target}`",
            t.snapshot.short_id
        );
    }
    Ok(code)
}

async fn restore(redis: &Redis, args: RestoreArgs) -> Result<i32> {
    let mut con = redis.manager().await?;
    let repository = open_repository(&mut con, args.repo.as_deref()).await?;
    let restic = backup::restic::Restic::new(&repository);
    let snapshot = find_snapshot(&restic, &args.source)?;
    let record = backup::core_record(&restic, &snapshot).map_err(backup_error)?;
    let id = match &args.as_id {
        Some(id) => module_id(id)?,
        None => module_id(&record.module)?,
    };
    let target = RestoreTarget {
        node: crate::module::node_prefix(args.node.as_deref())?,
        env: crate::module::parse_env(&args.env)?,
        id,
        repository: &repository,
        snapshot: &snapshot,
        record: &record,
        print_id: true,
    };
    eprintln!(
        "snapshot {} of {} ({}, image {}) → module {} on {}",
        snapshot.short_id,
        record.module,
        snapshot.time,
        record.image,
        target.id,
        target.node.agent()
    );
    if args.data_only {
        let data = format!("{} {} {}", target.id, snapshot.id, repository.name);
        return queue_and_follow(
            redis,
            &mut con,
            &target.node,
            &event(contract::RESTORE_EVENT),
            &data,
            &Follow::to_end(0),
        )
        .await;
    }
    restore_module(redis, &mut con, &target).await
}

/// A free TCP port of this host (the kernel's choice), for a scratch module.
fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// A scratch module's id: `verify` and six random digits.
fn scratch_id() -> Result<ModuleId> {
    let mut r = [0u8; 4];
    getrandom::fill(&mut r).map_err(|e| anyhow::anyhow!("no random numbers: {e}"))?;
    let n = u32::from_le_bytes(r) % 1_000_000;
    module_id(&format!("{}{n:06}", contract::SCRATCH_PREFIX))
}

async fn verify(redis: &Redis, args: VerifyArgs) -> Result<i32> {
    let id = module_id(&args.module)?;
    let mut con = redis.manager().await?;
    let repository = open_repository(&mut con, args.repo.as_deref()).await?;
    let restic = backup::restic::Restic::new(&repository);
    let outcome = verify_steps(redis, &mut con, &restic, &repository, &id, &args).await;
    let (snapshot, error) = match &outcome {
        Ok((snapshot, None)) => (snapshot.clone(), None),
        Ok((snapshot, Some(e))) => (snapshot.clone(), Some(e.clone())),
        Err(e) => (String::new(), Some(crate::fail::render(e))),
    };
    backup::status::verified(&mut con, id.as_str(), &snapshot, error.as_deref())
        .await
        .map_err(backup_error)?;
    match error {
        None => {
            eprintln!("verify {id}: ok (snapshot {snapshot} restored and checked)");
            Ok(0)
        }
        Some(e) => {
            eprintln!("verify {id}: FAILED: {e}");
            Ok(1)
        }
    }
}

/// The verification's steps: the snapshot verified and the failure (None: passed), or an error
/// before a snapshot was chosen.
async fn verify_steps(
    redis: &Redis,
    con: &mut redis::aio::ConnectionManager,
    restic: &backup::restic::Restic<'_>,
    repository: &backup::Repository,
    id: &ModuleId,
    args: &VerifyArgs,
) -> Result<(String, Option<String>)> {
    eprintln!(
        "restic check of repository {} ({})",
        repository.name, repository.url
    );
    if let Err(e) = restic.check(args.read_all) {
        return Ok((
            String::new(),
            Some(format!("the repository is damaged: {e}")),
        ));
    }
    let snapshot = find_snapshot(restic, id.as_str())?;
    let record = match backup::core_record(restic, &snapshot) {
        Ok(r) => r,
        Err(e) => return Ok((snapshot.short_id.clone(), Some(e.to_string()))),
    };
    let scratch = scratch_id()?;
    let mut env = vec![(
        core_events::module_env::SCRATCH_MODULE.to_string(),
        "1".to_string(),
    )];
    for (k, v) in &record.module_env {
        if (k == "PORT" || k.ends_with("_PORT")) && v.parse::<u16>().is_ok() {
            env.push((k.clone(), free_port()?.to_string()));
        }
    }
    let target = RestoreTarget {
        node: crate::module::node_prefix(None)?,
        id: scratch.clone(),
        env,
        repository,
        snapshot: &snapshot,
        record: &record,
        print_id: false,
    };
    eprintln!(
        "snapshot {} of {id} → scratch module {scratch}",
        snapshot.short_id
    );
    let mut failure = None;
    let code = restore_module(redis, con, &target).await?;
    if code != 0 {
        failure = Some(format!(
            "restoring snapshot {} into a scratch module failed (exit {code})",
            snapshot.short_id
        ));
    } else {
        let module = Prefix::module(scratch.agent_name().clone());
        let code = queue_and_follow(
            redis,
            con,
            &module,
            &event(contract::VERIFY_EVENT),
            &snapshot.id,
            &Follow::to_end(0),
        )
        .await?;
        match code {
            0 => {}
            c if c == core_events::exit::NO_SUCH_EVENT => {
                eprintln!(
                    "module {id} has no backup-verify steps: restored and started is the check"
                );
            }
            c => {
                failure = Some(format!(
                    "the restored module's backup-verify steps failed (exit {c})"
                ))
            }
        }
    }
    // The scratch module goes, whatever happened (unless kept); module.remove also takes what a
    // failed restore left.
    let installed: bool = con.hexists(target.node.modules(), scratch.as_str()).await?;
    if args.keep {
        eprintln!("scratch module {scratch} kept: agentctl module remove {scratch}");
    } else if installed {
        let code = queue_and_follow(
            redis,
            con,
            &target.node,
            &event(crate::module::REMOVE_EVENT),
            scratch.as_str(),
            &Follow::to_end(0),
        )
        .await?;
        if code == 0 {
            // Its id is never used again: the name registry forgets it.
            crate::module::unclaim(con, scratch.agent_name()).await?;
        } else {
            eprintln!("warning: the scratch module {scratch} could not be removed (exit {code}): agentctl module remove {scratch}");
        }
    }
    Ok((snapshot.short_id.clone(), failure))
}

/// Whether systemd understands calendar `cal` (`systemd-analyze calendar`); its words when not.
fn systemd_calendar(cal: &str) -> Result<()> {
    let out = match std::process::Command::new("systemd-analyze")
        .args(["calendar", "--", cal])
        .output()
    {
        Ok(out) => out,
        // Without systemd-analyze here, the node's systemd judges it when the timer is made.
        Err(_) => return Ok(()),
    };
    if out.status.success() {
        Ok(())
    } else {
        Err(invalid(format!(
            "calendar {cal:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Queues backup.schedule on every node of the registry; how many.
async fn queue_schedule_sync(con: &mut redis::aio::ConnectionManager) -> Result<usize> {
    let registry: std::collections::HashMap<String, String> =
        con.hgetall(keys::agent_registry()).await?;
    let mut n = 0;
    for (name, kind) in registry {
        if AgentKind::parse(&kind) != Some(AgentKind::Node) {
            continue;
        }
        let Ok(name) = AgentName::new(name.as_str()) else {
            continue;
        };
        let _: String = con
            .xadd(
                Prefix::node(name).queue(),
                "*",
                &[
                    (
                        core_events::record::QUEUE_FIELD_EVENT,
                        contract::SCHEDULE_EVENT,
                    ),
                    (core_events::record::QUEUE_FIELD_DATA, ""),
                ],
            )
            .await?;
        n += 1;
    }
    Ok(n)
}

async fn schedule(redis: &Redis, cmd: ScheduleCmd) -> Result<i32> {
    let mut con = redis.manager().await?;
    match cmd {
        ScheduleCmd::Set(a) => {
            let name = repo_name(&a.name)?;
            contract::check_calendar(&a.calendar).map_err(|e| invalid(e.to_string()))?;
            systemd_calendar(&a.calendar)?;
            let modules = match (&a.modules, a.all) {
                (_, true) => None,
                (Some(m), false) => backup::schedule::parse_modules(m).map_err(backup_error)?,
                (None, false) => {
                    return Err(invalid("name the modules (--modules \"ID …\") or --all"))
                }
            };
            let repository = a.repo.as_deref().map(repo_name).transpose()?;
            if let Some(r) = &repository {
                backup::repo::url(&mut con, r).await.map_err(backup_error)?;
            }
            let s = backup::schedule::Schedule {
                name,
                calendar: a.calendar.clone(),
                modules,
                repository,
                keep: backup::schedule::Keep {
                    last: a.keep_last,
                    daily: a.keep_daily,
                    weekly: a.keep_weekly,
                    monthly: a.keep_monthly,
                },
                verify: a.verify,
            };
            backup::schedule::put(&mut con, &s)
                .await
                .map_err(backup_error)?;
            let n = queue_schedule_sync(&mut con).await?;
            eprintln!(
                "schedule {}: stored; {} queued on {n} nodes",
                s.name,
                contract::SCHEDULE_EVENT
            );
            Ok(0)
        }
        ScheduleCmd::List => {
            for s in backup::schedule::all(&mut con)
                .await
                .map_err(backup_error)?
            {
                let keep = s.keep.forget_args().join(" ");
                println!(
                    "{}\t{}\t{}\tmodules {}\trepository {}\t{}",
                    s.name,
                    if s.verify { "verify" } else { "backup" },
                    s.calendar,
                    s.modules_field(),
                    s.repository
                        .as_ref()
                        .map_or("(default)".to_string(), |r| r.to_string()),
                    if keep.is_empty() {
                        "keep all".to_string()
                    } else {
                        keep
                    }
                );
            }
            Ok(0)
        }
        ScheduleCmd::Rm { name } => {
            let name = repo_name(&name)?;
            if !backup::schedule::remove(&mut con, &name)
                .await
                .map_err(backup_error)?
            {
                return Err(fail(
                    core_events::exit::NO_SUCH_EVENT,
                    format!("no schedule {name}"),
                ));
            }
            let n = queue_schedule_sync(&mut con).await?;
            eprintln!(
                "schedule {name}: removed; {} queued on {n} nodes",
                contract::SCHEDULE_EVENT
            );
            Ok(0)
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// The module id (installed on this node).
    module: String,
    /// The file to write (a tar archive; it holds the module's data: keep it private).
    file: std::path::PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// A file `agentctl module export` wrote.
    file: std::path::PathBuf,
    /// The new module's id (default: the id it was exported from).
    #[arg(long = "as", value_name = "ID")]
    as_id: Option<String>,
    /// Change K=V of the exported module.env. Repeatable.
    #[arg(long = "env", value_name = "K=V")]
    env: Vec<String>,
}

/// A repository of its own for one export or import, in a root-only directory of this node,
/// registered for the node's steps while it lasts and forgotten (and deleted) when dropped.
struct ScratchRepository {
    dir: std::path::PathBuf,
    repository: backup::Repository,
}

impl ScratchRepository {
    /// `prefix`: [`contract::EXPORT_REPOSITORY_PREFIX`] or [`contract::IMPORT_REPOSITORY_PREFIX`].
    async fn new(
        con: &mut redis::aio::ConnectionManager,
        prefix: &str,
    ) -> Result<ScratchRepository> {
        let mut r = [0u8; 4];
        getrandom::fill(&mut r).map_err(|e| anyhow::anyhow!("no random numbers: {e}"))?;
        let tag: String = r.iter().map(|b| format!("{b:02x}")).collect();
        let dir = std::path::PathBuf::from(format!("/var/tmp/agent-{prefix}{tag}"));
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .with_context(|| format!("creating {}", dir.display()))?;
        }
        let repository = backup::Repository {
            name: repo_name(&format!("{prefix}{tag}"))?,
            url: RepoUrl::new(&format!("{}/repo", dir.display()))
                .map_err(|e| invalid(e.to_string()))?,
            password: backup::repo::random_password(),
            credentials: Vec::new(),
        };
        let scratch = ScratchRepository { dir, repository };
        backup::restic::Restic::new(&scratch.repository)
            .init()
            .map_err(backup_error)?;
        let identity = backup::repo::ensure_identity(con, &backup::repo::identity_path())
            .await
            .map_err(backup_error)?;
        backup::repo::put(con, &identity, &scratch.repository)
            .await
            .map_err(backup_error)?;
        Ok(scratch)
    }

    async fn forget(self, con: &mut redis::aio::ConnectionManager) {
        if let Err(e) = backup::repo::remove(con, &self.repository.name).await {
            eprintln!("warning: {}: {e}", self.repository.name);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The modules of this node (`node/<this host>/modules`) must have `id`.
async fn this_node_has(con: &mut redis::aio::ConnectionManager, id: &ModuleId) -> Result<Prefix> {
    let here = crate::module::node_prefix(None)?;
    let hosted = node_of(con, id).await?;
    if hosted != here {
        return Err(invalid(format!(
            "module {id} is on {}, not on this node: run it there",
            hosted.agent()
        )));
    }
    Ok(here)
}

pub async fn export(redis: &Redis, args: ExportArgs) -> Result<i32> {
    let id = module_id(&args.module)?;
    let mut con = redis.manager().await?;
    let node = this_node_has(&mut con, &id).await?;
    let scratch = ScratchRepository::new(&mut con, contract::EXPORT_REPOSITORY_PREFIX).await?;
    let result = async {
        let data = format!("{id} {}", scratch.repository.name);
        let code = queue_and_follow(
            redis,
            &mut con,
            &node,
            &event(contract::BACKUP_EVENT),
            &data,
            &Follow::to_end(0),
        )
        .await?;
        if code != 0 {
            return Ok(code);
        }
        let restic = backup::restic::Restic::new(&scratch.repository);
        let snapshot = find_snapshot(&restic, id.as_str())?;
        {
            // Created private: the archive holds the module's data.
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&args.file)
                .with_context(|| format!("creating {}", args.file.display()))?;
        }
        restic
            .dump_tar(&snapshot.id, &args.file)
            .map_err(backup_error)?;
        let size = std::fs::metadata(&args.file).map(|m| m.len()).unwrap_or(0);
        eprintln!(
            "module {id} exported to {} ({size} bytes)",
            args.file.display()
        );
        Ok(0)
    }
    .await;
    scratch.forget(&mut con).await;
    result
}

pub async fn import(redis: &Redis, args: ImportArgs) -> Result<i32> {
    let mut con = redis.manager().await?;
    let scratch = ScratchRepository::new(&mut con, contract::IMPORT_REPOSITORY_PREFIX).await?;
    let result = async {
        // The archive unpacked where only root can reach it; GNU tar refuses members that leave
        // the directory (absolute names are made relative, `..` refused).
        let tree = scratch.dir.join("tree");
        std::fs::create_dir(&tree).with_context(|| format!("creating {}", tree.display()))?;
        let out = std::process::Command::new("tar")
            .arg("-x")
            .arg("--no-same-owner")
            .arg("-f")
            .arg(&args.file)
            .arg("-C")
            .arg(&tree)
            .output()
            .context("running tar")?;
        if !out.status.success() {
            return Err(invalid(format!(
                "{} is not an archive `agentctl module export` wrote: {}",
                args.file.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let core = tree.join(contract::CORE_DIR).join(contract::CORE_FILE);
        let record: contract::CoreRecord = std::fs::read(&core)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| {
                invalid(format!(
                    "{} has no core/{}: not an export",
                    args.file.display(),
                    contract::CORE_FILE
                ))
            })?;
        if !tree.join(contract::DUMP_DIR).is_dir() {
            std::fs::create_dir(tree.join(contract::DUMP_DIR))?;
        }
        let restic = backup::restic::Restic::new(&scratch.repository);
        let tags = contract::snapshot_tags(&record.module, &record.image, &record.core_version);
        let host = crate::redis_admin::short_hostname()?;
        let summary = restic
            .backup(
                &tree,
                &[contract::DUMP_DIR, contract::CORE_DIR],
                &tags,
                &host,
            )
            .map_err(backup_error)?;
        let snapshot = restic
            .snapshot(&summary.snapshot_id)
            .map_err(backup_error)?;
        let id = match &args.as_id {
            Some(id) => module_id(id)?,
            None => module_id(&record.module)?,
        };
        let target = RestoreTarget {
            node: crate::module::node_prefix(None)?,
            env: crate::module::parse_env(&args.env)?,
            id,
            repository: &scratch.repository,
            snapshot: &snapshot,
            record: &record,
            print_id: true,
        };
        eprintln!(
            "{}: module {} (image {}) → module {}",
            args.file.display(),
            record.module,
            record.image,
            target.id
        );
        restore_module(redis, &mut con, &target).await
    }
    .await;
    scratch.forget(&mut con).await;
    result
}
