//! `node-agent`: the event engine configured as a node's root agent (a systemd system service),
//! and the node's built-in tools (`node-agent module <tool> ID`) that its default steps wrap.

use agent_engine::cli::AgentArgs;
use clap::{Parser, Subcommand};
use core_events::{step_env, AgentKind};

mod tools;

/// Runs the steps of events addressed to this agent through Redis.
///
/// Events arrive as `PUBLISH <name>:<event> <data>` or `XADD <prefix>/queue * event <event> data <data>`
/// and run the executables in `<events-dir>/<event>/` in name order, one run at a time by default.
///
/// Without a command, `node-agent [FLAGS]` is the daemon. `node-agent module <TOOL> ID` runs one of
/// the node's module tools, the work of one step of module.init / module.remove.
#[derive(Parser)]
#[command(version, about, after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    #[command(flatten)]
    agent: AgentArgs,
}

#[derive(Subcommand)]
enum Command {
    /// The node's module tools: the work of the module.init / module.remove steps.
    ///
    /// One tool per step of imageroot/node-events/module.init and module.remove (each step is
    /// `exec node-agent module <tool> -- "$1"`). They use the same
    /// --name and Redis flags/environment as the daemon (a step gets REDIS_URL and AGENT_NAME);
    /// AGENT_ROLLBACK=1 makes the module.remove tools keep a module that was installed before the
    /// failed module.init. Exit codes: 65 bad input, 69 unavailable, 71 cannot run a program,
    /// 75 not ready / Redis unreachable, 78 configuration, 1 other failures.
    #[command(after_help = MODULE_AFTER_HELP)]
    Module {
        #[command(subcommand)]
        tool: tools::Tool,
    },
    /// Check a module image's imageroot signature under the node's policy
    /// (/etc/agent/signing.conf) without installing anything: the image is pulled into root's
    /// storage if it is not there. Prints the verdict; exit 0 when the policy accepts the image,
    /// 65 when it refuses it (or it is no module image), 69 when it cannot be had, 78 when the
    /// settings are wrong. `agentctl module info` runs it. Run as root.
    ImageVerify {
        /// The image, e.g. registry.example.org/modules/hello:1.2.0 or localhost/hello:latest.
        reference: String,
    },
    /// The agents of every module of this node, one at a time: list, restart onto the installed
    /// binary, stop. The Debian package's maintainer scripts run it (docs/PACKAGING.md).
    ModuleAgents {
        #[command(subcommand)]
        action: tools::agent::AllAgents,
    },
    /// The node's WireGuard end of the cluster's full mesh: key, interface, peers from Redis.
    ///
    /// `key` makes the private key (once) and prints the public key; `up` brings the interface up
    /// (backend chosen explicitly: kernel or wireguard-go); `sync` publishes node/NODE/vpn and
    /// makes the peers exactly the other nodes' records, without re-creating the interface;
    /// `status` shows it; `down` removes it. Run as root.
    #[command(after_help = tools::vpn::after_help())]
    Vpn {
        #[command(subcommand)]
        cmd: tools::vpn::VpnCmd,
    },
    /// The leader's side of a join (`cluster admit`, the step of cluster.admit). Same --name and
    /// Redis flags/environment as the daemon. Exit codes as for the module tools.
    Cluster {
        #[command(subcommand)]
        tool: tools::cluster::ClusterTool,
    },
    /// The node's edge proxy (Caddy): `apply` is the step of the edge.sync event, which renders
    /// the routes of this node's modules into Caddy's configuration and applies it through its
    /// admin socket; `acme` its second step (certificates from the ACME server); `queue-sync`
    /// queues that event. docs/EDGE.md. Exit codes as for the module
    /// tools.
    Edge {
        #[command(subcommand)]
        cmd: tools::edge::EdgeCmd,
    },
    /// A module's backup, the steps of the backup event (data `ID [REPOSITORY]`): `dump` has the
    /// module dump its state into /home/.agent-backup/ID/dump, `snapshot` makes one restic
    /// snapshot of it and of the core's record of the module, `record-failure` (the rollback
    /// step) records a failed attempt and emits backup-failed. docs/BACKUP.md. Exit codes as for
    /// the module tools.
    Backup {
        #[command(subcommand)]
        cmd: tools::backup::BackupCmd,
    },
    /// A module's upgrade, the steps of the module.update event (data `ID`) and of its rollback:
    /// prepare, snapshot, stop, install, migrate, start, health (the gate), commit; revert (the
    /// rollback step); plan (what an upgrade would change, nothing changed). docs/UPGRADE.md.
    /// Exit codes as for the module tools.
    Update {
        #[command(subcommand)]
        cmd: tools::update::UpdateCmd,
    },
    /// Internal: run by module.init/20redis-user as the module's user, to write its credentials
    /// file (the text on stdin) atomically with mode 0600.
    #[command(name = tools::keys::WRITE_CREDENTIALS, hide = true)]
    WriteCredentials { path: std::path::PathBuf },
}

const AFTER_HELP: &str = "\
Keys live under node/<name>/: queue, run/<id>, run/<id>/output, journal, heartbeat, modules.
Example: redis-cli PUBLISH \"$(hostname -s)\":module.init hello0
Environment of a step: AGENT_NAME, AGENT_KIND, AGENT_KEY_PREFIX, AGENT_EVENT, AGENT_RUN_ID,
AGENT_ATTEMPT, AGENT_STEP, REDIS_URL (the agent's own credentials).
Per-event settings: <events-dir>/<event>/.timeout (seconds), .retries (restarts after a crash).
Module tools: node-agent module --help. The node's VPN: node-agent vpn --help.
See docs/PROTOCOL.md for every key and channel, imageroot/README.md for the module lifecycle.";

const MODULE_AFTER_HELP: &str = "\
module.init:   create-user, redis-user, secret-key, install-image, start-agent, wait-ready, register
               (verify-image: the image's signature under the node's policy, as create-user checks it)
module.remove: stop-agent, disable-linger, kill-processes, delete-user, remove-redis-user,
               delete-keys, unregister
Example: node-agent module install-image hello0";

/// The command line's definition, for its man page and shell completions.
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

/// The `node-agent` binary.
pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        None => {
            agent_engine::cli::main(AgentKind::Node, cli.agent)?;
            Ok(())
        }
        Some(Command::WriteCredentials { path }) => exit_with(
            &format!("node-agent {}", tools::keys::WRITE_CREDENTIALS),
            tools::keys::write_credentials_as_self(&path),
        ),
        Some(Command::ModuleAgents { action }) => {
            exit_with("node-agent module-agents", tools::agent::all_agents(action))
        }
        Some(Command::Vpn { cmd }) => {
            let label = format!("node-agent vpn {}", cmd.name());
            exit_with(&label, tools::vpn::run(cmd, cli.agent, tool_ctx))
        }
        Some(Command::Cluster { tool }) => exit_with(
            &format!("node-agent cluster {}", tool.name()),
            tool_ctx(cli.agent).and_then(|ctx| tools::cluster::run(&tool, &ctx)),
        ),
        Some(Command::Edge { cmd }) => exit_with(
            &format!("node-agent edge {}", cmd.name()),
            tool_ctx(cli.agent).and_then(|ctx| tools::edge::run(&cmd, &ctx)),
        ),
        Some(Command::Backup { cmd }) => exit_with(
            &format!("node-agent backup {}", cmd.name()),
            tool_ctx(cli.agent).and_then(|ctx| tools::backup::run(&cmd, &ctx)),
        ),
        Some(Command::Update { cmd }) => exit_with(
            &format!("node-agent update {}", cmd.name()),
            tool_ctx(cli.agent).and_then(|ctx| tools::update::run(&cmd, &ctx)),
        ),
        Some(Command::ImageVerify { reference }) => exit_with(
            "node-agent image-verify",
            tools::image::verify_any(&reference),
        ),
        Some(Command::Module { tool }) => {
            let label = tools::message_label(&tool, std::env::var(step_env::AGENT_EVENT).ok());
            exit_with(&label, module_tool(&tool, cli.agent))
        }
    }
}

/// Ends a tool: exit 0, or its error after `label` and the exit code of its kind.
fn exit_with(label: &str, result: tools::Result<()>) -> ! {
    let code = match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{label}: {e}");
            e.exit_code()
        }
    };
    std::process::exit(code)
}

fn module_tool(tool: &tools::Tool, agent: AgentArgs) -> tools::Result<()> {
    tools::run(tool, &tool_ctx(agent)?)
}

/// The tools' context from the daemon's flags: the node's name and its Redis.
fn tool_ctx(agent: AgentArgs) -> tools::Result<tools::Ctx> {
    let cfg = agent
        .into_config(AgentKind::Node)
        .map_err(|e| tools::ToolError::Config(e.to_string()))?;
    let target = agent_redis::Target::new(&cfg.redis_url, cfg.credentials.clone())
        .map_err(|e| tools::ToolError::Config(e.to_string()))?;
    let ctx = tools::Ctx {
        node: cfg.name.clone(),
        target,
        redis_url: cfg.redis_url.clone(),
        rollback: tools::is_rollback(std::env::var_os(step_env::AGENT_ROLLBACK).as_deref()),
    };
    Ok(ctx)
}
