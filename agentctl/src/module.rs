//! `agentctl module add|remove` (`update`: `module_update`): install or remove a module on a node (`add NAME[:VERSION]` resolved
//! through the module repositories: `module_repo`).
//!
//! `add` derives the image name from IMAGE, allocates the module id `<name><N>` from the counter
//! `cluster/module_sequence/<name>` (`INCR`: the first module of an image is `<name>1`), writes
//! `module/<id>/module.env` (`EVENTS_IMAGE` = IMAGE, the seed-compatible field, plus `--env` pairs)
//! in the same transaction as the `INCR`, then queues `module.init <id>` on the node and follows it
//! like `agentctl run`. `remove` queues `module.remove <id>`. The node's own steps do the work.

use anyhow::{Context, Result};
use core_events::{keys, AgentKind, AgentName, EventName, Prefix};
use redis::AsyncCommands;

use crate::conn::Redis;
use crate::fail::{fail, invalid};
use crate::run::{queue_and_follow, Follow};

/// The module.env field naming the module's image (seed-compatible name).
pub const IMAGE_FIELD: &str = core_events::module_env::EVENTS_IMAGE;
/// Longest image name a module id is built from (the id adds the sequence number).
pub const MAX_IMAGE_NAME: usize = 25;
/// The node events `add` and `remove` queue.
pub(crate) const INIT_EVENT: &str = "module.init";
pub(crate) const REMOVE_EVENT: &str = "module.remove";
/// How often `add` retries when another `add` of the same image raced it.
const ALLOCATION_TRIES: usize = 20;

#[derive(Debug, clap::Subcommand)]
pub enum ModuleCmd {
    /// Install a module on a node: allocate its id (printed alone on stdout's first line), write
    /// its module.env, queue module.init on the node and follow it (exits with the run's exit code).
    Add(AddArgs),
    /// Remove a module from a node: queue module.remove and follow it (exits with the run's exit
    /// code).
    Remove(RemoveArgs),
    /// Write a module of this node to one file: its backup (the module's own dump and the core's
    /// record, as `agentctl backup run` makes it) as a tar archive. docs/BACKUP.md.
    Export(crate::backup::ExportArgs),
    /// Create a module on this node from a file `export` wrote (as `agentctl backup restore`
    /// does from a snapshot: its image fetched first, module.init, then its restore steps).
    Import(crate::backup::ImportArgs),
    /// Move a module to another node of the cluster, keeping its id, settings and routes: a first
    /// copy while it runs, then its units stopped, a final backup, the module made on NODE from it
    /// and, once it is up there, the old copy removed. Through a backup repository both nodes
    /// reach (--repo, default the cluster's default). A move that fails before the module is up
    /// on NODE brings it back on its old node; an interrupted move is finished by running the same
    /// command again. Prints how long the module was down. docs/BACKUP.md, "Move".
    Move(crate::module_move::MoveArgs),
    /// The module repositories: container registries whose images LOCATION/NAME:VERSION are
    /// modules, cluster-wide, each with a priority (`add NAME LOCATION`, `list`, `rm NAME`).
    #[command(subcommand)]
    Repo(crate::module_repo::RepoCmd),
    /// The modules the repositories offer, their newest release and description (module images
    /// only; a name in several repositories is shown from the one of highest priority).
    Search(crate::module_repo::SearchArgs),
    /// One module of the repositories: its versions, image and digest, labels, the core version it
    /// needs, what it provides, and its signature as this node's policy judges it (the image is
    /// pulled into the node's storage for that).
    Info(crate::module_repo::InfoArgs),
    /// Upgrade a module to a newer image: the newest release of its name in the module
    /// repositories, --to VERSION, or --to IMAGE. The node pulls and checks the image under its
    /// signature policy, snapshots the module's data, stops it, installs the new imageroot, runs
    /// the module's own module.update (migration) and module.init steps, then its health gate;
    /// it commits, or rolls back image, imageroot, module.env and data by itself. --plan says
    /// what would change and changes nothing. docs/UPGRADE.md.
    Update(crate::module_update::UpdateArgs),
}

#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// The module: NAME or NAME:VERSION from the module repositories (`agentctl module repo`;
    /// NAME alone is its newest release), or an image: localhost/hello:latest,
    /// registry.example:5000/org/hello@sha256:…, docker://host/hello:1.2,
    /// oci-archive:/srv/hello.tar, containers-storage:localhost/hello (a bare NAME is an image
    /// too while no repository is configured). The
    /// module id is the image name (last path component without tag, digest or .tar; lowercase
    /// letters and digits only; starting with a letter; at most 25 characters) plus a number.
    image: String,

    /// The node that installs the module (default: this host's short name).
    #[arg(long, value_name = "NODE")]
    node: Option<String>,

    /// Also write K=V to the module's module.env (K: [A-Z_][A-Z0-9_]*). Repeatable.
    #[arg(long = "env", value_name = "K=V")]
    env: Vec<String>,

    /// Queue module.init and exit at once (the module id is still printed).
    #[arg(long)]
    no_wait: bool,
}

#[derive(Debug, clap::Args)]
pub struct RemoveArgs {
    /// The module id, e.g. hello1 ([a-z][a-z0-9]{0,30}).
    id: String,

    /// The node the module is installed on (default: this host's short name).
    #[arg(long, value_name = "NODE")]
    node: Option<String>,

    /// Queue module.remove and exit at once.
    #[arg(long)]
    no_wait: bool,
}

pub async fn main(redis: &Redis, cmd: ModuleCmd) -> Result<i32> {
    match cmd {
        ModuleCmd::Add(args) => add(redis, args).await,
        ModuleCmd::Remove(args) => remove(redis, args).await,
        ModuleCmd::Export(args) => crate::backup::export(redis, args).await,
        ModuleCmd::Import(args) => crate::backup::import(redis, args).await,
        ModuleCmd::Move(args) => crate::module_move::move_module(redis, args).await,
        ModuleCmd::Repo(cmd) => crate::module_repo::repo(redis, cmd).await,
        ModuleCmd::Search(args) => crate::module_repo::search(redis, args).await,
        ModuleCmd::Info(args) => crate::module_repo::info(redis, args).await,
        ModuleCmd::Update(args) => crate::module_update::update(redis, args).await,
    }
}

async fn add(redis: &Redis, args: AddArgs) -> Result<i32> {
    let env = parse_env(&args.env)?;
    let node = node_prefix(args.node.as_deref())?;
    let mut con = redis.manager().await?;
    // NAME[:VERSION] through the module repositories, when there are any.
    let image = crate::module_repo::resolve_for_add(&mut con, &args.image)
        .await?
        .unwrap_or_else(|| args.image.clone());
    let name = image_name(&image).map_err(|e| invalid(format!("image {image:?}: {e}")))?;
    // WATCH needs a connection of our own.
    let mut tx = redis.blocking().await?;
    let id = allocate(&mut tx, &name, &image, &env).await?;
    println!("{id}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let opts = Follow {
        no_wait: args.no_wait,
        timeout: 0,
        json: false,
        run_id_on_stdout: false,
    };
    let event = EventName::new(INIT_EVENT).expect("a valid event name");
    queue_and_follow(redis, &mut con, &node, &event, id.as_str(), &opts).await
}

async fn remove(redis: &Redis, args: RemoveArgs) -> Result<i32> {
    if !is_module_id(&args.id) {
        return Err(invalid(format!(
            "module id {:?}: a module id is a lowercase letter then up to 30 lowercase letters or \
             digits, e.g. hello1",
            args.id
        )));
    }
    let node = node_prefix(args.node.as_deref())?;
    let mut con = redis.manager().await?;
    let opts = Follow {
        no_wait: args.no_wait,
        timeout: 0,
        json: false,
        run_id_on_stdout: true,
    };
    let event = EventName::new(REMOVE_EVENT).expect("a valid event name");
    queue_and_follow(redis, &mut con, &node, &event, &args.id, &opts).await
}

pub(crate) fn node_prefix(node: Option<&str>) -> Result<Prefix> {
    let node = match node {
        Some(n) => n.to_string(),
        None => crate::redis_admin::short_hostname()?,
    };
    let name = AgentName::new(node.as_str()).map_err(|e| invalid(format!("node {node:?}: {e}")))?;
    Ok(Prefix::node(name))
}

/// Takes the next id of image `name`, claims it as a module's in the agent name registry and writes
/// its module.env, in one transaction. Refused, with nothing written, when the id is taken: its
/// module.env exists, or the registry has the name already (a node's, or an earlier module's).
async fn allocate(
    tx: &mut redis::aio::MultiplexedConnection,
    name: &str,
    image: &str,
    env: &[(String, String)],
) -> Result<AgentName> {
    let seq_key = keys::module_sequence(name);
    for _ in 0..ALLOCATION_TRIES {
        let _: () = redis::cmd("WATCH")
            .arg(&seq_key)
            .query_async(tx)
            .await
            .context("cannot allocate a module id")?;
        let current: Option<String> = tx.get(&seq_key).await.context("cannot read the sequence")?;
        let current: u64 = match current {
            None => 0,
            Some(v) => v.trim().parse().map_err(|_| {
                fail(
                    1,
                    format!("{seq_key} holds {v:?}, not a number: fix or delete it"),
                )
            })?,
        };
        let id = AgentName::new(format!("{name}{}", current + 1))
            .map_err(|e| fail(1, format!("cannot build a module id: {e}")))?;
        let module = Prefix::module(id.clone());
        let registry = keys::agent_registry();
        if let Some(why) = watch_taken(tx, &id, true).await? {
            return Err(fail(
                1,
                format!(
                    "module id {id} is taken: {why}; nothing was written. To skip it, run \
                     `redis-cli INCR {seq_key}` and add the module again"
                ),
            ));
        }
        let mut fields: Vec<(&str, &str)> = vec![(IMAGE_FIELD, image)];
        fields.extend(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let done: Option<(u64,)> = redis::pipe()
            .atomic()
            .incr(&seq_key, 1)
            .hset_multiple(module.module_env(), &fields)
            .ignore()
            .hset_nx(&registry, id.as_str(), AgentKind::Module.as_str())
            .ignore()
            .query_async(tx)
            .await
            .context("cannot write the module's id and module.env")?;
        match done {
            Some((n,)) if n == current + 1 => return Ok(id),
            Some((n,)) => {
                return Err(fail(
                    1,
                    format!("{seq_key} moved to {n} during the allocation of {id}"),
                ))
            }
            // Another `add` of the same image came in between: try the next number.
            None => continue,
        }
    }
    Err(fail(
        1,
        format!("cannot allocate a module id: {seq_key} keeps changing"),
    ))
}

/// WATCHes `id`'s module.env and the agent name registry, and says why `id` is taken, if it is
/// (then UNWATCHed): its module.env exists, or the registry has it — as anything when
/// `any_registered`, else as a node's name.
async fn watch_taken(
    tx: &mut redis::aio::MultiplexedConnection,
    id: &AgentName,
    any_registered: bool,
) -> Result<Option<String>> {
    let module = Prefix::module(id.clone());
    let registry = keys::agent_registry();
    let _: () = redis::cmd("WATCH")
        .arg(module.module_env())
        .arg(&registry)
        .query_async(tx)
        .await
        .context("cannot claim a module id")?;
    let (env_exists, registered): (bool, Option<String>) = redis::pipe()
        .exists(module.module_env())
        .hget(&registry, id.as_str())
        .query_async(tx)
        .await
        .context("cannot check whether the module id is free")?;
    let refused = registered
        .as_deref()
        .is_some_and(|k| any_registered || AgentKind::parse(k) != Some(AgentKind::Module));
    if !(env_exists || refused) {
        return Ok(None);
    }
    let _: () = redis::cmd("UNWATCH").query_async(tx).await.unwrap_or(());
    Ok(Some(match registered {
        Some(kind) if !env_exists => format!("{registry} has {id} as a {kind}'s name"),
        _ => format!("{} exists already", module.module_env()),
    }))
}

/// Claims module id `id` (chosen, not allocated: a restore) in the agent name registry and writes
/// its module.env `fields`, in one transaction; refused, with nothing written, when the id is
/// taken (its module.env exists, or the registry has it as a node's name).
pub(crate) async fn claim(
    tx: &mut redis::aio::MultiplexedConnection,
    id: &AgentName,
    fields: &[(String, String)],
) -> Result<()> {
    let module = Prefix::module(id.clone());
    let registry = keys::agent_registry();
    // A module's id stays in the registry after its removal: restoring it under its own id is
    // what a restore in place does. A node's name, or a module that is there, is refused.
    if let Some(why) = watch_taken(tx, id, false).await? {
        return Err(fail(
            1,
            format!(
                "module id {id} is taken: {why}; nothing was written (choose another with --as)"
            ),
        ));
    }
    let done: Option<()> = redis::pipe()
        .atomic()
        .hset_multiple(module.module_env(), fields)
        .ignore()
        .hset_nx(&registry, id.as_str(), AgentKind::Module.as_str())
        .ignore()
        .query_async(tx)
        .await
        .context("cannot write the module's module.env")?;
    done.ok_or_else(|| {
        fail(
            1,
            format!("module id {id} was taken meanwhile; nothing was written"),
        )
    })
}

/// Undoes [`claim`] of a module that was never installed: its module.env and registry entry.
pub(crate) async fn unclaim(con: &mut redis::aio::ConnectionManager, id: &AgentName) -> Result<()> {
    let module = Prefix::module(id.clone());
    redis::pipe()
        .atomic()
        .del(module.module_env())
        .hdel(keys::agent_registry(), id.as_str())
        .query_async::<()>(con)
        .await
        .context("cannot delete the module.env of the module that was not restored")?;
    Ok(())
}

/// The image name of IMAGE: last path component, minus tag, digest and a `.tar` suffix,
/// lowercased, letters and digits only; it must start with a letter and be at most 25 characters.
pub fn image_name(image: &str) -> Result<String, String> {
    const TRANSPORTS: &[&str] = &[
        "docker",
        "docker-archive",
        "docker-daemon",
        "oci",
        "oci-archive",
        "containers-storage",
        "dir",
        "sif",
        "tarball",
    ];
    let mut reference = image.trim();
    if let Some((transport, rest)) = reference.split_once(':') {
        if TRANSPORTS.contains(&transport) {
            reference = rest.trim_start_matches('/');
            // `docker://host/x` keeps its path; `oci-archive:/srv/x.tar` its file name.
            if reference.is_empty() {
                reference = rest;
            }
        }
    }
    let last = reference.rsplit('/').next().unwrap_or_default();
    let last = last.split('@').next().unwrap_or_default();
    let last = last.split(':').next().unwrap_or_default();
    let last = last.strip_suffix(".tar").unwrap_or(last);
    let name: String = last
        .to_ascii_lowercase()
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        .collect();
    if name.is_empty() {
        return Err(
            "no image name in it (the last path component, without tag, digest or .tar, \
                    has no letters or digits)"
                .into(),
        );
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(format!(
            "its name {name:?} does not start with a letter, so it cannot name a module"
        ));
    }
    if name.len() > MAX_IMAGE_NAME {
        return Err(format!(
            "its name {name:?} is {} characters long, the limit is {MAX_IMAGE_NAME}",
            name.len()
        ));
    }
    Ok(name)
}

/// `K=V` pairs of `--env`, in order (a later K wins). K must be `[A-Z_][A-Z0-9_]*` and not a name
/// the agent or `add` sets itself.
pub(crate) fn parse_env(pairs: &[String]) -> Result<Vec<(String, String)>> {
    let mut out: Vec<(String, String)> = Vec::new();
    for pair in pairs {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(invalid(format!("--env {pair:?}: write K=V")));
        };
        let mut chars = k.chars();
        let ok = matches!(chars.next(), Some(c) if c.is_ascii_uppercase() || c == '_')
            && chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
        if !ok {
            return Err(invalid(format!(
                "--env {pair:?}: the name {k:?} must match [A-Z_][A-Z0-9_]*"
            )));
        }
        if k == IMAGE_FIELD || core_events::step_env::is_reserved(k) {
            return Err(invalid(format!(
                "--env {pair:?}: {k} is set by agentctl or the agent itself"
            )));
        }
        out.retain(|(old, _)| old != k);
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

/// A module id as the node's tools accept it: `[a-z][a-z0-9]{0,30}` (`core_events::ModuleId`).
fn is_module_id(id: &str) -> bool {
    core_events::ModuleId::new(id).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_of_every_form() {
        for (image, name) in [
            ("hello", "hello"),
            ("localhost/hello:latest", "hello"),
            ("registry.example:5000/org/hello@sha256:0123abcd", "hello"),
            ("registry.example:5000/org/hello:1.0@sha256:0123", "hello"),
            ("oci-archive:/srv/hello.tar", "hello"),
            ("oci-archive:/srv/hello.tar:latest", "hello"),
            ("docker-archive:/tmp/Hello.tar", "hello"),
            ("docker://host/hello:1.2", "hello"),
            ("docker://docker.io/library/nginx", "nginx"),
            ("containers-storage:localhost/hello", "hello"),
            ("ghcr.io/org/Next-Cloud_2:30", "nextcloud2"),
            ("localhost:5000/web", "web"),
            ("a".repeat(25).as_str(), &"a".repeat(25)),
        ] {
            assert_eq!(image_name(image).as_deref(), Ok(name), "{image}");
        }
    }

    #[test]
    fn bad_image_names_are_refused_clearly() {
        for (image, why) in [
            ("", "no image name"),
            ("org/", "no image name"),
            ("---", "no image name"),
            ("1password", "start with a letter"),
            ("docker://host/9x:1", "start with a letter"),
            (&"a".repeat(26), "limit is 25"),
        ] {
            let e = image_name(image).unwrap_err();
            assert!(e.contains(why), "{image:?}: {e}");
        }
    }

    #[test]
    fn env_pairs() {
        let ok = parse_env(&["PORT=8080".into(), "_X=a=b".into(), "PORT=9".into()]).unwrap();
        assert_eq!(
            ok,
            [("_X".into(), "a=b".into()), ("PORT".into(), "9".into())]
        );
        for bad in [
            "port=1",
            "1A=x",
            "NOEQUALS",
            "A-B=1",
            "AGENT_NAME=x",
            "EVENTS_IMAGE=x",
        ] {
            let e = parse_env(&[bad.into()]).unwrap_err();
            assert_eq!(crate::fail::code_of(&e), 65, "{bad}");
        }
    }

    #[test]
    fn module_ids() {
        assert!(is_module_id("hello1") && is_module_id("a"));
        assert!(!is_module_id("Hello1") && !is_module_id("1a") && !is_module_id(""));
        assert!(!is_module_id("a-b") && !is_module_id(&"a".repeat(32)));
        assert!(is_module_id(&"a".repeat(31)));
    }
}
