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
    }
}

fn backup_error(e: backup::Error) -> anyhow::Error {
    match e {
        backup::Error::Invalid(m) => invalid(m),
        backup::Error::NotFound(m) => fail(core_events::exit::NO_SUCH_EVENT, m),
        e => anyhow::Error::new(e),
    }
}

fn repo_name(s: &str) -> Result<RepoName> {
    RepoName::new(s).map_err(|e| invalid(format!("repository {s:?}: {e}")))
}

fn module_id(s: &str) -> Result<ModuleId> {
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

/// The node whose `node/<name>/modules` has `id`.
async fn node_of(con: &mut redis::aio::ConnectionManager, id: &ModuleId) -> Result<Prefix> {
    let registry: std::collections::HashMap<String, String> =
        con.hgetall(keys::agent_registry()).await?;
    let mut nodes: Vec<&String> = registry
        .iter()
        .filter(|(_, kind)| AgentKind::parse(kind) == Some(AgentKind::Node))
        .map(|(n, _)| n)
        .collect();
    nodes.sort();
    for n in nodes {
        let Ok(name) = AgentName::new(n.as_str()) else {
            continue;
        };
        let prefix = Prefix::node(name);
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
        let f = backup::status::read(&mut con, m)
            .await
            .map_err(backup_error)?;
        let get = |k: &str| f.get(k).map(String::as_str).unwrap_or("");
        any_failed |= get(status::STATE) == contract::STATE_FAILED;
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
    let name = backup::repo::resolve(
        &mut con,
        args.repo.as_deref().map(repo_name).transpose()?.as_ref(),
    )
    .await
    .map_err(backup_error)?;
    let identity =
        backup::repo::load_identity(&backup::repo::identity_path()).map_err(backup_error)?;
    let repository = backup::repo::get(&mut con, &identity, &name)
        .await
        .map_err(backup_error)?;
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
