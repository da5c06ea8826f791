//! `agentctl module update ID [--to VERSION|IMAGE] [--plan]`: upgrade a module to a newer image
//! (docs/UPGRADE.md). The target is the newest release of the module's name in the module
//! repositories (`module_repo`), a version of it, or an image named outright; `--plan` has the
//! node say what the upgrade would change (`node-agent update plan`), changing nothing; otherwise
//! the module.env's `EVENTS_IMAGE` is set to the target and `module.update ID` is queued on the
//! module's node and followed — the seed style `HSET … EVENTS_IMAGE` + `PUBLISH NODE:module.update
//! ID` does the same. The node's steps snapshot, upgrade, check the module's health and commit, or
//! roll everything back.

use std::process::{Command, Stdio};

use anyhow::{Context, Result};
use core_events::update::{version_of, UPDATE_EVENT};
use core_events::{module_env, EventName, ModuleId, Prefix};
use redis::AsyncCommands;

use crate::conn::Redis;
use crate::fail::{fail, invalid};
use crate::run::{queue_and_follow, Follow};

#[derive(Debug, clap::Args)]
pub struct UpdateArgs {
    /// The module id, e.g. hello1.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    id: Option<String>,

    /// Every module of the cluster installed from a module repository that has a newer release
    /// there, one at a time (node by node, id by id); stops at the first that is not upgraded (rolled back or
    /// refused) unless --keep-going. With --plan: the plan of each module of this node.
    #[arg(long, conflicts_with = "to")]
    all: bool,

    /// With --all: go on with the next module after one that is not upgraded (the exit code is
    /// still that of the first failure).
    #[arg(long, requires = "all")]
    keep_going: bool,

    /// What to upgrade to: a VERSION of the module in the module repositories (default: its
    /// newest release), or an image reference (anything with a `/`:
    /// registry.example.org/modules/hello:2.1.0, oci-archive:/srv/hello-2.tar).
    #[arg(long, value_name = "VERSION|IMAGE")]
    to: Option<String>,

    /// Print what the upgrade would change — images, versions, signature verdict, the imageroot's
    /// files added/changed/removed, the module's own migration and health steps — and change
    /// nothing. Run it on the module's node (it reads both images there).
    #[arg(long)]
    plan: bool,

    /// Queue module.update and exit at once (not with --all, which waits for each upgrade
    /// before it starts the next).
    #[arg(long, conflicts_with = "all")]
    no_wait: bool,
}

pub async fn update(redis: &Redis, args: UpdateArgs) -> Result<i32> {
    if args.all {
        return update_all(redis, &args).await;
    }
    let id = args.id.as_deref().unwrap_or_default();
    let id = ModuleId::new(id).map_err(|e| invalid(format!("bad {e}")))?;
    let mut con = redis.manager().await?;
    let node = crate::backup::node_of(&mut con, &id).await?;
    let current: Option<String> = con.hget(node.modules(), id.as_str()).await?;
    let current = current.unwrap_or_default();
    let Some(target) = target(&mut con, &id, &current, args.to.as_deref()).await? else {
        return Ok(0);
    };
    if args.plan {
        return plan(&node, &id, &target);
    }
    update_one(redis, &mut con, &node, &id, &current, &target, args.no_wait).await
}

/// `--all`: each module with a newer release, one at a time.
async fn update_all(redis: &Redis, args: &UpdateArgs) -> Result<i32> {
    let mut con = redis.manager().await?;
    let here = crate::redis_admin::short_hostname()?;
    let repos = crate::module_repo::all(&mut con).await?;
    let mut first_failure = 0;
    let (mut upgraded, mut current_ones) = (0, 0);
    for node in crate::backup::nodes(&mut con).await? {
        if args.plan && node.agent().as_str() != here {
            continue;
        }
        let installed: std::collections::BTreeMap<String, String> =
            con.hgetall(node.modules()).await?;
        for (id, current) in installed {
            let Ok(id) = ModuleId::new(&id) else {
                continue;
            };
            // Only modules installed from a repository: one installed from an image of its own
            // (localhost/hello:latest) is upgraded by naming what to, never by a name match.
            if !repos
                .iter()
                .any(|r| current.starts_with(&format!("{}/", r.location)))
            {
                eprintln!("{id}: runs {current}, which is from no module repository: skipped (agentctl module update {id} --to …)");
                continue;
            }
            let target = match target(&mut con, &id, &current, None).await {
                Ok(Some(t)) => t,
                Ok(None) => {
                    current_ones += 1;
                    continue;
                }
                // A module no repository has (an image installed by reference) is not upgraded.
                Err(e) => {
                    eprintln!("{id}: not upgraded: {}", crate::fail::render(&e));
                    continue;
                }
            };
            let code = if args.plan {
                plan(&node, &id, &target)?
            } else {
                update_one(redis, &mut con, &node, &id, &current, &target, args.no_wait).await?
            };
            if code == 0 {
                upgraded += 1;
                continue;
            }
            if first_failure == 0 {
                first_failure = code;
            }
            if !args.keep_going {
                eprintln!(
                    "agentctl: stopped after {id}, which was not upgraded (--keep-going goes on)"
                );
                return Ok(first_failure);
            }
        }
    }
    let what = if args.plan { "planned" } else { "upgraded" };
    eprintln!("{upgraded} modules {what}, {current_ones} at their newest release already");
    Ok(first_failure)
}

/// Sets EVENTS_IMAGE to `target`, queues module.update on `node` and follows it.
async fn update_one(
    redis: &Redis,
    con: &mut redis::aio::ConnectionManager,
    node: &Prefix,
    id: &ModuleId,
    current: &str,
    target: &str,
    no_wait: bool,
) -> Result<i32> {
    let env_key = Prefix::module(id.agent_name().clone()).module_env();
    let _: i64 = con
        .hset(&env_key, module_env::EVENTS_IMAGE, target)
        .await
        .with_context(|| format!("cannot write {env_key}"))?;
    eprintln!("upgrading {id} on {}: {current} -> {target}", node.agent());
    let opts = Follow {
        no_wait,
        timeout: 0,
        json: false,
        run_id_on_stdout: false,
    };
    let event = EventName::new(UPDATE_EVENT).expect("a valid event name");
    let code = queue_and_follow(redis, con, node, &event, id.as_str(), &opts).await?;
    if !no_wait {
        let now: Option<String> = con.hget(node.modules(), id.as_str()).await?;
        let now = now.unwrap_or_default();
        if code == 0 && now == target {
            println!("{id} runs {now}");
        } else if now == current {
            println!("{id} runs {now}: not upgraded (the run's output says why; `agentctl show {} RUN` shows it all)", node.agent());
        } else {
            println!("{id} runs {now}");
        }
    }
    Ok(code)
}

/// The image to upgrade to, or `None` (said) when the module runs the newest release already.
async fn target(
    con: &mut redis::aio::ConnectionManager,
    id: &ModuleId,
    current: &str,
    to: Option<&str>,
) -> Result<Option<String>> {
    if let Some(image) = to.filter(|t| t.contains('/')) {
        core_events::module_image::check_image_ref(image)
            .map_err(|e| invalid(format!("--to {image:?}: {e}")))?;
        return Ok(Some(image.to_string()));
    }
    let name = crate::module::image_name(current)
        .map_err(|e| invalid(format!("the image {current:?} of {id}: {e}")))?;
    let Some((reference, found)) = crate::module_repo::resolve(con, &name, to).await? else {
        return Err(fail(
            core_events::exit::tool::UNAVAILABLE,
            format!(
                "no module repository to find {name} in: add one (`agentctl module repo add`), or name the image: --to REGISTRY/PATH:TAG"
            ),
        ));
    };
    let running = version_of(current, None);
    if to.is_none() {
        let newer = crate::module_repo::parse_version(&running).is_none_or(|v| found.version > v);
        if !newer {
            println!(
                "{id} runs {current} (version {running}); the newest release of {name} is {} (repository {}): nothing to upgrade",
                found.version, found.repo.name
            );
            return Ok(None);
        }
    }
    eprintln!(
        "{name} {}: {reference} (repository {}, {})",
        found.version, found.repo.name, found.digest
    );
    Ok(Some(reference))
}

/// `node-agent update plan ID IMAGE` on this host, which must be the module's node.
fn plan(node: &Prefix, id: &ModuleId, target: &str) -> Result<i32> {
    let here = crate::redis_admin::short_hostname()?;
    if node.agent().as_str() != here {
        return Err(fail(
            core_events::exit::tool::UNAVAILABLE,
            format!(
                "module {id} is on node {}: run `agentctl module update {id} --plan` there (the plan reads both images on the module's node)",
                node.agent()
            ),
        ));
    }
    let status = Command::new("node-agent")
        .args(["update", "plan", id.as_str(), target])
        .stdin(Stdio::null())
        .status()
        .context("cannot run node-agent update plan")?;
    Ok(status.code().unwrap_or(1))
}
