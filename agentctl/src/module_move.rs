//! `agentctl module move ID NODE`: a module taken to another node of the cluster through a backup
//! repository both nodes reach, keeping its id, module.env and routes. A first copy while it runs
//! (a backup, fetched by the target), then the short part: its units stopped, a final backup, its
//! old copy taken down (`module.detach`), the module made on the target from the final snapshot
//! (`restore.prepare`, `module.init`, `restore`: what `backup restore` does), and only then the
//! old copy removed. The phase is kept in `cluster/move/<id>`, so a move interrupted anywhere is
//! finished by running it again; a move that fails before the module is up on the target brings
//! it back on its old node. Either way it runs on exactly one node. docs/BACKUP.md, "Move".

use std::collections::HashMap;
use std::time::Instant;

use anyhow::{Context, Result};
use core_events::backup::{self as contract, moving, MovePhase};
use core_events::{keys, AgentKind, EventName, ModuleId, Prefix, RunId};
use redis::AsyncCommands;

use crate::backup::{event, find_snapshot, module_id, node_of, open_repository};
use crate::conn::Redis;
use crate::fail::fail;
use crate::run::{queue_and_follow, Follow};

#[derive(Debug, clap::Args)]
pub struct MoveArgs {
    /// The module id, e.g. hello1.
    id: String,

    /// The node it goes to (a member of the cluster).
    node: String,

    /// The backup repository the copies go through; both nodes must reach it (an SFTP or REST
    /// repository, or a directory they share). Default: the cluster's default repository.
    #[arg(long, value_name = "NAME")]
    repo: Option<String>,
}

/// One move: where from, where to, through which repository.
struct Move<'a> {
    redis: &'a Redis,
    id: ModuleId,
    key: String,
    from: Prefix,
    to: Prefix,
    repository: backup::Repository,
}

pub async fn move_module(redis: &Redis, args: MoveArgs) -> Result<i32> {
    let id = module_id(&args.id)?;
    let to = crate::module::node_prefix(Some(&args.node))?;
    let mut con = redis.manager().await?;
    let key = contract::move_key(id.as_str());
    let state: HashMap<String, String> = con.hgetall(&key).await?;
    let (from, phase, repo) = if state.is_empty() {
        let from = node_of(&mut con, &id).await?;
        check_new_move(&mut con, &id, &from, &to).await?;
        (from, MovePhase::Copy, args.repo.clone())
    } else {
        resumed(&id, &state, &to, args.repo.as_deref())?
    };
    let repository = open_repository(&mut con, repo.as_deref()).await?;
    let mv = Move {
        redis,
        key,
        from,
        to,
        repository,
        id,
    };
    if state.is_empty() {
        mv.begin(&mut con).await?;
    } else {
        eprintln!(
            "a move of {} from {} to {} was under way (phase {}): going on",
            mv.id,
            mv.from.agent(),
            mv.to.agent(),
            phase.as_str()
        );
    }
    let snapshot = state.get(moving::SNAPSHOT).cloned();
    mv.run(&mut con, phase, snapshot).await
}

/// A new move is possible: the target is another node of the cluster and the module has nothing
/// a move cannot carry.
async fn check_new_move(
    con: &mut redis::aio::ConnectionManager,
    id: &ModuleId,
    from: &Prefix,
    to: &Prefix,
) -> Result<()> {
    if from == to {
        return Err(fail(
            1,
            format!("module {id} is on node {} already", to.agent()),
        ));
    }
    let kind: Option<String> = con
        .hget(keys::agent_registry(), to.agent().as_str())
        .await?;
    if kind.as_deref().and_then(AgentKind::parse) != Some(AgentKind::Node) {
        return Err(fail(
            1,
            format!(
                "{} is not a node of this cluster (the agent registry has no such node): see \
                 `agentctl cluster status`",
                to.agent()
            ),
        ));
    }
    let alive: bool = con.exists(to.heartbeat()).await?;
    if !alive {
        return Err(fail(
            1,
            format!(
                "the node-agent of {} is not running: nothing was done",
                to.agent()
            ),
        ));
    }
    Ok(())
}

/// The move recorded in `cluster/move/<id>`: its old node, phase and repository, if it goes to
/// `to` (a move under way goes nowhere else).
fn resumed(
    id: &ModuleId,
    state: &HashMap<String, String>,
    to: &Prefix,
    repo: Option<&str>,
) -> Result<(Prefix, MovePhase, Option<String>)> {
    let field = |f: &str| state.get(f).map(String::as_str).unwrap_or("");
    let broken = |what: &str| {
        fail(
            1,
            format!(
                "{} is not a move this agentctl can go on with ({what}); look at it and delete it \
                 by hand",
                contract::move_key(id.as_str())
            ),
        )
    };
    let from = crate::module::node_prefix(Some(field(moving::FROM)))
        .map_err(|_| broken("no node it comes from"))?;
    let phase = MovePhase::parse(field(moving::PHASE)).ok_or_else(|| broken("no phase"))?;
    if field(moving::TO) != to.agent().as_str() {
        return Err(fail(
            1,
            format!(
                "a move of {id} from {} to {} is under way: finish it with `agentctl module move \
                 {id} {}`",
                from.agent(),
                field(moving::TO),
                field(moving::TO)
            ),
        ));
    }
    let recorded = field(moving::REPOSITORY);
    if let Some(r) = repo.filter(|r| *r != recorded) {
        return Err(fail(
            1,
            format!("the move of {id} under way goes through repository {recorded}, not {r}"),
        ));
    }
    Ok((from, phase, Some(recorded.to_string())))
}

impl Move<'_> {
    /// Records the move; refused when another one began meanwhile.
    async fn begin(&self, con: &mut redis::aio::ConnectionManager) -> Result<()> {
        let fresh: bool = con
            .hset_nx(&self.key, moving::PHASE, MovePhase::Copy.as_str())
            .await?;
        if !fresh {
            return Err(fail(
                1,
                format!(
                    "another move of {} began meanwhile: see {}",
                    self.id, self.key
                ),
            ));
        }
        let started = backup::now();
        let _: () = con
            .hset_multiple(
                &self.key,
                &[
                    (moving::FROM, self.from.agent().as_str()),
                    (moving::TO, self.to.agent().as_str()),
                    (moving::REPOSITORY, self.repository.name.as_str()),
                    (moving::STARTED, started.as_str()),
                ],
            )
            .await?;
        eprintln!(
            "moving {} from {} to {} through repository {}",
            self.id,
            self.from.agent(),
            self.to.agent(),
            self.repository.name
        );
        Ok(())
    }

    async fn set_phase(
        &self,
        con: &mut redis::aio::ConnectionManager,
        phase: MovePhase,
    ) -> Result<()> {
        let _: () = con.hset(&self.key, moving::PHASE, phase.as_str()).await?;
        Ok(())
    }

    /// Queues `name` with `data` on `node` and follows it to its end: whether it exited 0. Interrupted
    /// (Ctrl-C: the run goes on) or cancelled, the move stops here as it is, nothing undone: what
    /// the run did is not known yet, and running the move again goes on from its phase.
    async fn step_ok(
        &self,
        con: &mut redis::aio::ConnectionManager,
        node: &Prefix,
        name: &str,
        data: &str,
    ) -> Result<bool> {
        let code = queue_and_follow(
            self.redis,
            con,
            node,
            &event(name),
            data,
            &Follow::to_end(0),
        )
        .await?;
        if code == core_events::exit::CANCELLED {
            return Err(fail(
                code,
                format!(
                    "the move of {} stopped during its {name} on {}; it is kept in {}: run \
                     `agentctl module move {} {}` again to go on",
                    self.id,
                    node.agent(),
                    self.key,
                    self.id,
                    self.to.agent()
                ),
            ));
        }
        Ok(code == 0)
    }

    fn backup_data(&self) -> String {
        format!("{} {}", self.id, self.repository.name)
    }

    fn snapshot_data(&self, snapshot: &str) -> String {
        format!("{} {snapshot} {}", self.id, self.repository.name)
    }

    /// A backup of the module on its old node, and the id of the snapshot it made.
    async fn backup(&self, con: &mut redis::aio::ConnectionManager) -> Result<Option<String>> {
        if !self
            .step_ok(con, &self.from, contract::BACKUP_EVENT, &self.backup_data())
            .await?
        {
            return Ok(None);
        }
        let restic = backup::restic::Restic::new(&self.repository);
        Ok(Some(find_snapshot(&restic, self.id.as_str())?.id))
    }

    async fn is_on(&self, con: &mut redis::aio::ConnectionManager, node: &Prefix) -> Result<bool> {
        Ok(con.hexists(node.modules(), self.id.as_str()).await?)
    }

    /// What ties the module's cluster-wide keys to the copy that ran before forgotten, so that
    /// `module.init` makes it on a node again: its startup run (the engine runs the startup event
    /// once per agent name: the old record would say it ran) and its published public key (the
    /// node's secret-key step publishes it again from the identity it installs: the snapshot's,
    /// staged by restore.prepare, on the target; its own on the old node — the same key, so its
    /// secrets, which stay in Redis, open on either).
    async fn forget_old_copy(&self, con: &mut redis::aio::ConnectionManager) -> Result<()> {
        let module = Prefix::module(self.id.agent_name().clone());
        let init = EventName::new(crate::module::INIT_EVENT).expect("a valid event name");
        let run = RunId::startup(&init).context("the startup run id")?;
        let _: () = redis::pipe()
            .atomic()
            .del(module.startup_marker())
            .del(module.run(&run))
            .del(module.run_output(&run))
            .del(module.public_key())
            .query_async(con)
            .await
            .context("cannot reset the module's startup run and public key")?;
        Ok(())
    }

    async fn run(
        &self,
        con: &mut redis::aio::ConnectionManager,
        phase: MovePhase,
        mut snapshot: Option<String>,
    ) -> Result<i32> {
        let (id, from, to) = (&self.id, self.from.agent(), self.to.agent());
        if phase <= MovePhase::Copy {
            eprintln!("1/5 a first copy while {id} runs on {from}");
            let Some(first) = self.backup(con).await? else {
                return self.abandon(con, "its first backup failed").await;
            };
            let data = self.snapshot_data(&first);
            if !self
                .step_ok(con, &self.to, contract::PREPARE_RESTORE_EVENT, &data)
                .await?
            {
                return self
                    .abandon(con, &format!("{to} could not fetch the first copy"))
                    .await;
            }
            self.set_phase(con, MovePhase::Stopping).await?;
        }
        let down = Instant::now();
        if phase <= MovePhase::Stopping {
            eprintln!("2/5 {id} stopped on {from}, its final backup");
            if !self
                .step_ok(con, &self.from, contract::STOP_EVENT, id.as_str())
                .await?
            {
                return self
                    .back_to_source(con, "its units could not be stopped")
                    .await;
            }
            let Some(last) = self.backup(con).await? else {
                return self.back_to_source(con, "its final backup failed").await;
            };
            let _: () = redis::pipe()
                .atomic()
                .hset(&self.key, moving::SNAPSHOT, &last)
                .hset(&self.key, moving::PHASE, MovePhase::Final.as_str())
                .query_async(con)
                .await?;
            snapshot = Some(last);
        }
        let Some(snapshot) = snapshot else {
            return Err(fail(
                1,
                format!("{} has no final snapshot: delete it by hand", self.key),
            ));
        };
        if phase <= MovePhase::Final {
            eprintln!("3/5 {id} taken down on {from} (it stays down at boot)");
            if !self
                .step_ok(con, &self.from, contract::DETACH_EVENT, id.as_str())
                .await?
            {
                return self.back_to_source(con, "it could not be taken down").await;
            }
            self.set_phase(con, MovePhase::Detached).await?;
        }
        if phase <= MovePhase::Detached {
            eprintln!("4/5 {id} made on {to} from snapshot {snapshot}");
            let data = self.snapshot_data(&snapshot);
            if !self.is_on(con, &self.to).await? {
                if !self
                    .step_ok(con, &self.to, contract::PREPARE_RESTORE_EVENT, &data)
                    .await?
                {
                    return self
                        .back_to_source(con, &format!("{to} could not fetch the final snapshot"))
                        .await;
                }
                self.forget_old_copy(con).await?;
                if !self
                    .step_ok(con, &self.to, crate::module::INIT_EVENT, id.as_str())
                    .await?
                {
                    return self
                        .back_to_source(con, &format!("module.init failed on {to}"))
                        .await;
                }
            }
            if !self
                .step_ok(con, &self.to, contract::RESTORE_EVENT, &data)
                .await?
            {
                return self
                    .back_to_source(con, &format!("its restore failed on {to}"))
                    .await;
            }
            self.set_phase(con, MovePhase::Started).await?;
            if phase <= MovePhase::Stopping {
                eprintln!(
                    "{id} was down for {:.1} s (stopped on {from} → up on {to})",
                    down.elapsed().as_secs_f64()
                );
            }
        }
        eprintln!("5/5 the old copy of {id} removed from {from}");
        if !self
            .step_ok(con, &self.from, crate::module::REMOVE_EVENT, id.as_str())
            .await?
        {
            eprintln!(
                "agentctl: {id} runs on {to}; its old copy on {from} is down but not removed: run \
                 `agentctl module move {id} {to}` again to remove it"
            );
            return Ok(1);
        }
        let _: () = con.del(&self.key).await?;
        println!("{id} moved from {from} to {to}");
        Ok(0)
    }

    /// Ends a move before anything changed on the old node: nothing to undo.
    async fn abandon(&self, con: &mut redis::aio::ConnectionManager, why: &str) -> Result<i32> {
        let _: () = con.del(&self.key).await?;
        eprintln!(
            "agentctl: {} not moved: {why}; it runs on {} as before",
            self.id,
            self.from.agent()
        );
        Ok(1)
    }

    /// Brings the module back on its old node after a failure: whatever the target made removed
    /// (its cluster-wide keys kept, the old node has it), then the old copy taken down and made
    /// again with `module.init` from its own home (its data never left it).
    async fn back_to_source(
        &self,
        con: &mut redis::aio::ConnectionManager,
        why: &str,
    ) -> Result<i32> {
        let (id, from, to) = (&self.id, self.from.agent(), self.to.agent());
        eprintln!("agentctl: {id} not moved: {why}; bringing it back on {from}");
        let undone = async {
            if self.is_on(con, &self.to).await?
                && !self
                    .step_ok(con, &self.to, crate::module::REMOVE_EVENT, id.as_str())
                    .await?
            {
                return Ok::<_, anyhow::Error>(Some(format!(
                    "its copy on {to} could not be removed"
                )));
            }
            if !self
                .step_ok(con, &self.from, contract::DETACH_EVENT, id.as_str())
                .await?
            {
                return Ok(Some(format!("it could not be taken down on {from}")));
            }
            self.forget_old_copy(con).await?;
            if !self
                .step_ok(con, &self.from, crate::module::INIT_EVENT, id.as_str())
                .await?
            {
                return Ok(Some(format!("module.init failed on {from}")));
            }
            Ok(None)
        }
        .await?;
        if let Some(failed) = undone {
            eprintln!(
                "agentctl: {id} is not running: {failed}; run `agentctl module move {id} {to}` \
                 again once the cause is fixed (the move is kept in {})",
                self.key
            );
            return Ok(1);
        }
        let _: () = con.del(&self.key).await?;
        eprintln!("agentctl: {id} runs on {from} again");
        Ok(1)
    }
}
