//! The node's built-in tools: `node-agent module <tool> ID`, one per step of the node's
//! `module.init` and `module.remove` events (imageroot/node-events/). Each step is a one-line shell
//! wrapper around one tool, so admins can still insert, override or mask steps between them.
//!
//! Rules every tool follows:
//! * the module id is checked first, once, by [`core_events::ModuleId`] (`[a-z][a-z0-9]{0,30}`);
//! * external programs run with explicit argument vectors ([`std::process::Command`]), never through
//!   a shell: nothing from the wire (ids, image references, labels) is ever interpreted by one;
//! * root never writes into a module's home: what goes there is written by the module's own user
//!   (`runuser -u ID -- …`), so a symlink planted by the user cannot redirect a root write;
//! * a module's home is private to it: `0700`, checked on every run (`user::ModuleUser::
//!   make_home_private`), and what the core makes in it has no permission for group or other —
//!   made under umask 077 ([`with_private_umask`]) and checked afterwards
//!   (`user::ModuleUser::make_private`);
//! * every tool is idempotent (a run is re-run from its first step after a crash);
//! * the `module.remove` tools, run as the rollback of a failed `module.init` (`AGENT_ROLLBACK=1`),
//!   undo nothing of a module that was installed before that run (field in `node/NODE/modules`).

pub mod agent;
pub mod backup;
pub mod cluster;
pub mod edge;
pub mod image;
pub mod keys;
pub mod update;
pub mod user;
pub mod vpn;

use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use core_events::exit::tool as code;
use core_events::{AgentKind, AgentName, ModuleId, Prefix};

/// How a tool failed; each kind has its exit code (core-events `exit::tool`).
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// Bad input (65).
    #[error("{0}")]
    Invalid(String),
    /// Something needed is not there (69).
    #[error("{0}")]
    Unavailable(String),
    /// A program could not be started (71).
    #[error("{0}")]
    OsError(String),
    /// Not ready in time (75).
    #[error("{0}")]
    TempFailure(String),
    /// The node's configuration does not allow it (78).
    #[error("{0}")]
    Config(String),
    /// Anything else (1).
    #[error("{0}")]
    Failed(String),
    /// Redis refused or failed a command (75 when unreachable, else 1).
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
}

impl ToolError {
    pub fn exit_code(&self) -> i32 {
        match self {
            ToolError::Invalid(_) => code::INVALID,
            ToolError::Unavailable(_) => code::UNAVAILABLE,
            ToolError::OsError(_) => code::OS_ERROR,
            ToolError::TempFailure(_) => code::TEMP_FAILURE,
            ToolError::Config(_) => code::CONFIG,
            ToolError::Failed(_) => code::FAILED,
            ToolError::Redis(e) if agent_redis::is_transient(e) => code::TEMP_FAILURE,
            ToolError::Redis(_) => code::FAILED,
        }
    }
}

pub type Result<T> = std::result::Result<T, ToolError>;

/// The module id every tool takes.
#[derive(Debug, clap::Args)]
pub struct IdArg {
    /// The module id, `[a-z][a-z0-9]{0,30}`: its Unix user, home and key prefix `module/ID`.
    pub id: String,
}

/// The node's module tools. Each is one step of imageroot/node-events/.
#[derive(Debug, clap::Subcommand)]
pub enum Tool {
    /// The image of a module (EVENTS_IMAGE, from root's storage or `podman pull`), its labels and
    /// its imageroot's signature under the node's policy (/etc/agent/signing.conf): exit 0 when
    /// the policy accepts it. 10create-user does the same before it makes the user.
    VerifyImage(IdArg),
    /// module.init/10create-user: the image's signature under the node's policy (require refuses
    /// an image not signed by a trusted key before anything of the module is made), then the
    /// module's Unix user with a private home (0700, checked on every run) and subordinate ids
    /// (`useradd`, kept when it exists), linger on.
    CreateUser(IdArg),
    /// module.init/20redis-user: the module's Redis ACL user (`redis-acl`) and its credentials file
    /// ~ID/.config/agent/redis.env, written by the module's user; skipped without ACL users.
    RedisUser(IdArg),
    /// module.init/30secret-key: the module's age identity, made by the module's user
    /// (`module-sdk secret init`), its public key at module/ID/public_key.
    SecretKey(IdArg),
    /// module.init/40install-image: EVENTS_IMAGE from root's storage or `podman pull`, its labels
    /// checked, its imageroot extracted into the home by the module's user, the images it runs put
    /// into the user's rootless storage.
    InstallImage(IdArg),
    /// module.init/50start-agent: waits for the user's systemd manager (MODULE_MANAGER_WAIT s,
    /// default 60), then, as the user, `module-sdk unit enable --now module-agent.service`.
    StartAgent(IdArg),
    /// module.init/60wait-ready: waits (MODULE_READY_WAIT s, default 120) for the module's
    /// heartbeat and its own startup module.init run; fails with that run's output when it failed.
    WaitReady(IdArg),
    /// module.init/70register: HSET node/NODE/modules ID IMAGE.
    Register(IdArg),
    /// module.remove/10stop-agent: as the user, `module-sdk unit disable --now
    /// module-agent.service` if the user's manager runs.
    StopAgent(IdArg),
    /// module.remove/20disable-linger: linger off.
    DisableLinger(IdArg),
    /// module.remove/30kill-processes: the user's manager stopped, its session terminated, every
    /// process of the user killed (≤ 10 s).
    KillProcesses(IdArg),
    /// module.remove/40delete-user: `userdel --remove` (home, group, subordinate ids).
    DeleteUser(IdArg),
    /// module.remove/50redis-user: the module's Redis ACL user deleted (`agentctl redis
    /// remove-agent`); skipped without ACL users.
    RemoveRedisUser(IdArg),
    /// module.remove/60delete-keys: every module/ID/* key deleted (a rollback keeps module.env).
    DeleteKeys(IdArg),
    /// module.remove/70unregister: HDEL node/NODE/modules ID.
    Unregister(IdArg),
    /// module.stop/10stop-units: the module's own running units stopped (timers, sockets and
    /// paths first), its module-agent left running; nothing disabled.
    StopUnits(IdArg),
}

impl Tool {
    fn id_arg(&self) -> &str {
        match self {
            Tool::VerifyImage(a)
            | Tool::CreateUser(a)
            | Tool::RedisUser(a)
            | Tool::SecretKey(a)
            | Tool::InstallImage(a)
            | Tool::StartAgent(a)
            | Tool::WaitReady(a)
            | Tool::Register(a)
            | Tool::StopAgent(a)
            | Tool::DisableLinger(a)
            | Tool::KillProcesses(a)
            | Tool::DeleteUser(a)
            | Tool::RemoveRedisUser(a)
            | Tool::DeleteKeys(a)
            | Tool::Unregister(a)
            | Tool::StopUnits(a) => &a.id,
        }
    }

    /// The tool's command-line name.
    pub fn name(&self) -> &'static str {
        match self {
            Tool::VerifyImage(_) => "verify-image",
            Tool::CreateUser(_) => "create-user",
            Tool::RedisUser(_) => "redis-user",
            Tool::SecretKey(_) => "secret-key",
            Tool::InstallImage(_) => "install-image",
            Tool::StartAgent(_) => "start-agent",
            Tool::WaitReady(_) => "wait-ready",
            Tool::Register(_) => "register",
            Tool::StopAgent(_) => "stop-agent",
            Tool::DisableLinger(_) => "disable-linger",
            Tool::KillProcesses(_) => "kill-processes",
            Tool::DeleteUser(_) => "delete-user",
            Tool::RemoveRedisUser(_) => "remove-redis-user",
            Tool::DeleteKeys(_) => "delete-keys",
            Tool::Unregister(_) => "unregister",
            Tool::StopUnits(_) => "stop-units",
        }
    }

    /// True for the undoing tools whose work is the cluster's, not the node's: the module's ACL
    /// user and its `module/ID/*` keys. While another node has the module too (a move: the new
    /// copy made, the old one not yet removed, or a failed new copy rolled back), they belong to
    /// that copy as well and are kept.
    pub fn is_cluster_wide(&self) -> bool {
        matches!(self, Tool::RemoveRedisUser(_) | Tool::DeleteKeys(_))
    }

    /// True for the tools that undo a module (module.remove, also run as module.init's rollback).
    pub fn undoes(&self) -> bool {
        matches!(
            self,
            Tool::StopAgent(_)
                | Tool::DisableLinger(_)
                | Tool::KillProcesses(_)
                | Tool::DeleteUser(_)
                | Tool::RemoveRedisUser(_)
                | Tool::DeleteKeys(_)
                | Tool::Unregister(_)
        )
    }
}

/// What every tool may need: the node's name and Redis (the step's `REDIS_URL`, the node's
/// credentials), and whether this is a rollback run.
pub struct Ctx {
    pub node: AgentName,
    /// The node's Redis with the node's credentials.
    pub target: agent_redis::Target,
    /// The step's `REDIS_URL` as given (handed on to programs that run for the module).
    pub redis_url: String,
    /// `AGENT_ROLLBACK=1`: run as the rollback of a failed run.
    pub rollback: bool,
}

impl Ctx {
    pub fn con(&self) -> Result<redis::Connection> {
        Ok(self
            .target
            .sync_connection(agent_redis::CONNECT_TIMEOUT, agent_redis::COMMAND_TIMEOUT)?)
    }

    pub fn node_prefix(&self) -> Prefix {
        Prefix::node(self.node.clone())
    }

    /// Runs an async operation of a library (`redis-acl`) to its end, on a runtime of its own: the
    /// tools are short-lived and otherwise synchronous.
    pub fn block_on<T>(&self, work: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ToolError::OsError(format!("cannot start an async runtime: {e}")))?
            .block_on(work)
    }

    /// Another node whose `node/NODE/modules` has `id`, if any (the node names from the agent
    /// registry).
    pub fn registered_elsewhere(&self, id: &ModuleId) -> Result<Option<AgentName>> {
        let mut con = self.con()?;
        let registry: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
            .arg(core_events::keys::agent_registry())
            .query(&mut con)?;
        let mut nodes: Vec<AgentName> = registry
            .into_iter()
            .filter(|(_, kind)| AgentKind::parse(kind) == Some(AgentKind::Node))
            .filter_map(|(name, _)| AgentName::new(name).ok())
            .filter(|name| *name != self.node)
            .collect();
        nodes.sort();
        for node in nodes {
            let has: bool = redis::cmd("HEXISTS")
                .arg(Prefix::node(node.clone()).modules())
                .arg(id.as_str())
                .query(&mut con)?;
            if has {
                return Ok(Some(node));
            }
        }
        Ok(None)
    }

    /// Whether `id` is in `node/NODE/modules`: installed before this run.
    pub fn is_registered(&self, id: &ModuleId) -> Result<bool> {
        let installed: bool = redis::cmd("HEXISTS")
            .arg(self.node_prefix().modules())
            .arg(id.as_str())
            .query(&mut self.con()?)?;
        Ok(installed)
    }
}

/// `AGENT_ROLLBACK` as the engine sets it for rollback steps: only `1` counts.
pub use core_events::step_env::is_rollback;

/// The rollback guard, the whole decision [`run`] takes: whether `tool` is skipped, keeping the
/// module. Only an undoing tool (`undoes`: [`Tool::undoes`]) run as a rollback (`rollback`:
/// [`Ctx::rollback`]) of a module that was installed before the failed run keeps it, so a failing
/// re-run of module.init never removes a working module; module.remove itself (no rollback) and
/// the module.init tools are never skipped.
///
/// `installed_before` ([`Ctx::is_registered`]) is called only when the answer matters, so Redis is
/// asked only then; its error is returned (the tool fails rather than guess either way).
pub fn rollback_keeps<E>(
    undoes: bool,
    rollback: bool,
    installed_before: impl FnOnce() -> std::result::Result<bool, E>,
) -> std::result::Result<bool, E> {
    if undoes && rollback {
        installed_before()
    } else {
        Ok(false)
    }
}

/// Agent names are one namespace (channels carry the name only): a module id that the agent name
/// registry (`keys::agent_registry`) has as a node's — running or not — would share that node's
/// channels. Refused.
fn refuse_node_name(ctx: &Ctx, id: &ModuleId) -> Result<()> {
    let registry = core_events::keys::agent_registry();
    let kind: Option<String> = redis::cmd("HGET")
        .arg(&registry)
        .arg(id.as_str())
        .query(&mut ctx.con()?)?;
    if kind.as_deref().and_then(AgentKind::parse) == Some(AgentKind::Node) {
        return Err(ToolError::Invalid(format!(
            "{id} is the name of a node ({registry} says so): module ids and node names share \
             the event channels; choose another id"
        )));
    }
    Ok(())
}

/// Runs `tool`: checks the id, applies the rollback guard, then does the tool's work.
pub fn run(tool: &Tool, ctx: &Ctx) -> Result<()> {
    let id = ModuleId::new(tool.id_arg()).map_err(|e| ToolError::Invalid(format!("bad {e}")))?;
    if rollback_keeps(tool.undoes(), ctx.rollback, || ctx.is_registered(&id))? {
        println!("rollback: {id} was installed before this module.init: kept");
        return Ok(());
    }
    if tool.is_cluster_wide() {
        if let Some(node) = ctx.registered_elsewhere(&id)? {
            println!(
                "module {id} is also installed on node {node} (a move): its Redis ACL user and \
                 module/{id}/* keys are that copy's too, kept"
            );
            return Ok(());
        }
    }
    match tool {
        Tool::VerifyImage(_) => image::verify_image(ctx, &id, image::Check::Strict),
        Tool::CreateUser(_) => {
            refuse_node_name(ctx, &id)?;
            // A user of that name that is not a module's is refused before the image is looked at.
            user::ModuleUser::lookup(&id)?;
            image::verify_image(ctx, &id, image::Check::BeforeInstall)?;
            user::create_user(&id)
        }
        Tool::RedisUser(_) => keys::redis_user(ctx, &id),
        Tool::SecretKey(_) => keys::secret_key(ctx, &id),
        Tool::InstallImage(_) => image::install_image(ctx, &id),
        Tool::StartAgent(_) => agent::start_agent(&id),
        Tool::WaitReady(_) => agent::wait_ready(ctx, &id),
        Tool::Register(_) => keys::register(ctx, &id),
        Tool::StopAgent(_) => agent::stop_agent(&id),
        Tool::DisableLinger(_) => user::disable_linger(&id),
        Tool::KillProcesses(_) => user::kill_processes(&id),
        Tool::DeleteUser(_) => user::delete_user(&id),
        Tool::RemoveRedisUser(_) => keys::remove_redis_user(ctx, &id),
        Tool::DeleteKeys(_) => keys::delete_keys(ctx, &id),
        Tool::Unregister(_) => keys::unregister(ctx, &id),
        Tool::StopUnits(_) => agent::stop_units(&id),
    }
}

/// The label of a tool's error messages: the event the step runs in (`module.init`, …) when run
/// as a step, else the command.
pub fn message_label(tool: &Tool, event: Option<String>) -> String {
    event
        .filter(|e| !e.is_empty())
        .unwrap_or_else(|| format!("node-agent module {}", tool.name()))
}

/// Seconds from an environment variable (a whole number), or `default`.
pub fn env_secs(var: &str, default: u64) -> Result<Duration> {
    match std::env::var(var) {
        Err(_) => Ok(Duration::from_secs(default)),
        Ok(v) => parse_secs(var, &v),
    }
}

fn parse_secs(var: &str, v: &str) -> Result<Duration> {
    v.trim()
        .parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|_| ToolError::Invalid(format!("{var}={v:?} is not a number of seconds")))
}

// ---- running programs -------------------------------------------------------------------------

/// Runs `f`, which starts programs, with this process's umask at 077, then puts the old one back:
/// what those programs create (the module's user's `tar`, `mkdir`, `module-sdk`: a child keeps the
/// umask it was started with) has no permission for group or other unless they set it
/// themselves. Never around `podman`: rootless Podman makes files its containers' other users
/// must read. The tools are single-threaded, so nothing else of this process starts or creates
/// anything meanwhile.
pub fn with_private_umask<T>(f: impl FnOnce() -> T) -> T {
    use nix::sys::stat::{umask, Mode};
    let old = umask(Mode::from_bits_truncate(0o077));
    let out = f();
    umask(old);
    out
}

/// `prog arg…` for messages (arguments quoted as needed, never a secret: secrets go by environment
/// or stdin).
pub fn shown(cmd: &Command) -> String {
    let mut out = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        let a = a.to_string_lossy();
        if !a.is_empty()
            && a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c))
        {
            out.push(' ');
            out.push_str(&a);
        } else {
            out.push_str(&format!(" {a:?}"));
        }
    }
    out
}

fn spawn_error(cmd: &Command, e: std::io::Error) -> ToolError {
    ToolError::OsError(format!(
        "cannot run {}: {e}",
        cmd.get_program().to_string_lossy()
    ))
}

/// Runs `cmd` with the step's stdout/stderr; returns its exit status.
pub fn status(cmd: &mut Command) -> Result<ExitStatus> {
    cmd.stdin(Stdio::null())
        .status()
        .map_err(|e| spawn_error(cmd, e))
}

/// Runs `cmd`; a non-zero exit is an error saying which command failed.
pub fn run_ok(cmd: &mut Command) -> Result<()> {
    let st = status(cmd)?;
    if st.success() {
        Ok(())
    } else {
        Err(ToolError::Failed(format!("{} failed ({st})", shown(cmd))))
    }
}

/// Runs `cmd` with `input` on its stdin (a secret: never in argv); a non-zero exit is an error.
pub fn run_with_input(cmd: &mut Command, input: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .spawn()
        .map_err(|e| spawn_error(cmd, e))?;
    let written = child
        .stdin
        .take()
        .map(|mut stdin| stdin.write_all(input))
        .transpose();
    let st = child.wait().map_err(|e| spawn_error(cmd, e))?;
    if let Err(e) = written {
        return Err(ToolError::Failed(format!(
            "{}: writing its input: {e}",
            shown(cmd)
        )));
    }
    if st.success() {
        Ok(())
    } else {
        Err(ToolError::Failed(format!("{} failed ({st})", shown(cmd))))
    }
}

/// Runs `cmd` with its stderr going to the step's; returns its status and trimmed stdout.
pub fn stdout_of(cmd: &mut Command) -> Result<(ExitStatus, String)> {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| spawn_error(cmd, e))?;
    Ok((
        out.status,
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    ))
}

/// Like [`stdout_of`], but stderr is dropped (for probes whose failure is an answer).
pub fn quiet_stdout_of(cmd: &mut Command) -> Result<(ExitStatus, String)> {
    cmd.stderr(Stdio::null());
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| spawn_error(cmd, e))?;
    Ok((
        out.status,
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    ))
}

/// Trimmed stdout of `cmd`, which must succeed.
pub fn stdout_ok(cmd: &mut Command) -> Result<String> {
    let (st, out) = stdout_of(cmd)?;
    if st.success() {
        Ok(out)
    } else {
        Err(ToolError::Failed(format!("{} failed ({st})", shown(cmd))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn exit_codes() {
        assert_eq!(ToolError::Invalid("x".into()).exit_code(), 65);
        assert_eq!(ToolError::Unavailable("x".into()).exit_code(), 69);
        assert_eq!(ToolError::OsError("x".into()).exit_code(), 71);
        assert_eq!(ToolError::TempFailure("x".into()).exit_code(), 75);
        assert_eq!(ToolError::Config("x".into()).exit_code(), 78);
        assert_eq!(ToolError::Failed("x".into()).exit_code(), 1);
        let refused =
            redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(ToolError::Redis(refused).exit_code(), 75);
    }

    #[test]
    fn rollback_guard() {
        assert!(is_rollback(Some(OsStr::new("1"))));
        for no in [None, Some(""), Some("0"), Some("true"), Some(" 1")] {
            assert!(!is_rollback(no.map(OsStr::new)), "{no:?}");
        }
    }

    /// The full truth table of the decision `run` takes, and when it asks Redis.
    #[test]
    fn rollback_keeps_only_an_undoing_rollback_of_an_installed_module() {
        for undoes in [false, true] {
            for rollback in [false, true] {
                for installed in [false, true] {
                    let asked = std::cell::Cell::new(0);
                    let keeps = rollback_keeps(undoes, rollback, || {
                        asked.set(asked.get() + 1);
                        Ok::<_, ToolError>(installed)
                    })
                    .unwrap();
                    let case = format!("undoes={undoes} rollback={rollback} installed={installed}");
                    assert_eq!(keeps, undoes && rollback && installed, "{case}");
                    // Redis is asked only when the answer matters, and then once.
                    assert_eq!(asked.get(), usize::from(undoes && rollback), "{case}");
                    if !undoes {
                        assert!(!keeps, "an init tool is never skipped: {case}");
                    }
                    if !rollback {
                        assert!(!keeps, "module.remove (no rollback) always removes: {case}");
                    }
                }
            }
        }
    }

    #[test]
    fn rollback_keeps_passes_on_a_redis_failure_only_when_it_asks() {
        let failing = || Err(ToolError::TempFailure("Redis down".into()));
        let e = rollback_keeps(true, true, failing).unwrap_err();
        assert_eq!(e.exit_code(), 75, "neither kept nor removed: {e}");
        for (undoes, rollback) in [(false, false), (false, true), (true, false)] {
            assert!(!rollback_keeps(undoes, rollback, failing).unwrap());
        }
    }

    /// Every tool clap knows, parsed from its command-line name.
    fn all_tools() -> Vec<(String, String, Tool)> {
        use clap::{CommandFactory, Parser};
        #[derive(clap::Parser)]
        struct Cli {
            #[command(subcommand)]
            tool: Tool,
        }
        Cli::command()
            .get_subcommands()
            .map(|c| {
                let name = c.get_name().to_string();
                let about = c.get_about().map(|a| a.to_string()).unwrap_or_default();
                let tool = Cli::try_parse_from(["module", name.as_str(), "abc"])
                    .unwrap()
                    .tool;
                assert_eq!(tool.name(), name);
                (name, about, tool)
            })
            .collect()
    }

    #[test]
    fn the_undoing_tools_are_the_module_remove_steps() {
        let tools = all_tools();
        assert_eq!(tools.len(), 16);
        for (name, about, tool) in &tools {
            let remove_step = about.starts_with("module.remove/");
            // verify-image is no step of its own: 10create-user and 40install-image run its check.
            assert!(
                remove_step
                    || about.starts_with("module.init/")
                    || about.starts_with("module.stop/")
                    || matches!(tool, Tool::VerifyImage(_)),
                "{name}: {about}"
            );
            // Only removal tools may keep the cluster's part of a module, never an installing one.
            assert!(!tool.is_cluster_wide() || remove_step, "{name}");
            assert_eq!(tool.undoes(), remove_step, "{name}");
            // So the guard never skips a module.init tool, even in a rollback.
            if !remove_step {
                assert!(!rollback_keeps(tool.undoes(), true, || Ok::<_, ToolError>(true)).unwrap());
            }
        }
    }

    /// The real call site: an undoing tool in a rollback asks Redis (here unreachable) before it
    /// does anything, and fails with Redis's exit code rather than removing or keeping blindly.
    #[test]
    fn run_asks_the_guard_before_an_undoing_rollback_step() {
        let ctx = Ctx {
            node: AgentName::new("n1").unwrap(),
            target: agent_redis::Target::new("redis://127.0.0.1:1", None).unwrap(),
            redis_url: "redis://127.0.0.1:1".into(),
            rollback: true,
        };
        for (name, _, tool) in all_tools() {
            if tool.undoes() {
                let e = run(&tool, &ctx).unwrap_err();
                assert!(matches!(e, ToolError::Redis(_)), "{name}: {e}");
                assert_eq!(e.exit_code(), 75, "{name}: {e}");
            }
        }
    }

    #[test]
    fn bad_ids_are_refused_before_anything_runs() {
        let ctx = Ctx {
            node: AgentName::new("n1").unwrap(),
            // Nothing listens there: a tool that reached Redis would fail differently.
            target: agent_redis::Target::new("redis://127.0.0.1:1", None).unwrap(),
            redis_url: "redis://127.0.0.1:1".into(),
            rollback: true,
        };
        for (tool, id) in [
            (
                Tool::CreateUser(IdArg {
                    id: "Root;x".into(),
                }),
                "Root;x",
            ),
            (
                Tool::StopAgent(IdArg {
                    id: "../etc".into(),
                }),
                "../etc",
            ),
            (Tool::DeleteKeys(IdArg { id: "".into() }), ""),
        ] {
            let e = run(&tool, &ctx).unwrap_err();
            assert_eq!(e.exit_code(), 65, "{id}: {e}");
            let msg = e.to_string();
            assert!(msg.starts_with("bad module id"), "{msg}");
            assert!(msg.contains("[a-z][a-z0-9]{0,30}"), "{msg}");
        }
    }

    #[test]
    fn labels_and_settings() {
        let t = Tool::InstallImage(IdArg { id: "a".into() });
        assert_eq!(message_label(&t, Some("module.init".into())), "module.init");
        assert_eq!(message_label(&t, None), "node-agent module install-image");
        assert_eq!(parse_secs("W", " 7").unwrap(), Duration::from_secs(7));
        assert_eq!(parse_secs("W", "x").unwrap_err().exit_code(), 65);
    }

    #[test]
    fn programs_started_under_the_private_umask_have_it() {
        let umask_of_child = || {
            let out = Command::new("sh").args(["-c", "umask"]).output().unwrap();
            String::from_utf8(out.stdout).unwrap().trim().to_string()
        };
        let before = umask_of_child();
        assert_eq!(with_private_umask(umask_of_child), "0077");
        assert_eq!(umask_of_child(), before, "put back");
    }

    #[test]
    fn commands_are_shown_quoted() {
        let mut c = Command::new("podman");
        c.args(["cp", "abc:/imageroot/.", "-", "a b", ""]);
        assert_eq!(shown(&c), r#"podman cp abc:/imageroot/. - "a b" """#);
    }
}
