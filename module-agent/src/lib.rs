//! `module-agent`: the event engine configured as a module's rootless agent (a systemd user service of the module's Unix user).

use agent_engine::cli::AgentArgs;
use clap::Parser;
use core_events::AgentKind;

/// Runs the steps of events addressed to this agent through Redis.
///
/// Events arrive as `PUBLISH <name>:<event> <data>` or `XADD <prefix>/queue * event <event> data <data>`
/// and run the executables in `<events-dir>/<event>/` in name order, one run at a time by default.
#[derive(Parser)]
#[command(version, about, long_about = None, after_help = AFTER_HELP)]
struct Cli {
    #[command(flatten)]
    agent: AgentArgs,
}

const AFTER_HELP: &str = "\
Keys live under module/<name>/: queue, run/<id>, run/<id>/output, journal, heartbeat.
Example: redis-cli PUBLISH hello0:configure '{\"page\":\"hi\"}'
Environment of a step: AGENT_NAME, AGENT_KIND, AGENT_KEY_PREFIX, AGENT_EVENT, AGENT_RUN_ID,
AGENT_ATTEMPT, AGENT_STEP, REDIS_URL (the agent's own credentials), and every field of module/<name>/module.env.
Per-event settings: <events-dir>/<event>/.timeout (seconds), .retries (restarts after a crash).
See docs/PROTOCOL.md for every key and channel.";

/// The command line's definition, for its man page and shell completions.
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

/// The `module-agent` binary.
pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    agent_engine::cli::main(AgentKind::Module, cli.agent)?;
    Ok(())
}
