//! `agentctl`: the sysadmin's command line for the agents.
//!
//! It speaks protocol v1 through `core_events` only: every key and channel comes from its builders,
//! every record field from its record types. `explain` reads event directories and needs no Redis;
//! everything else talks to the Redis server the agents use.

mod agent;
mod cancel;
mod conn;
mod explain;
mod fail;
mod journal;
mod module;
mod output;
mod redis_admin;
mod run;
mod show;

use std::io::Write;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// Drive the node and module agents through Redis: queue events and follow their runs, read the
/// journal and run records, see which steps an event would run, cancel a run.
#[derive(Parser)]
#[command(name = "agentctl", version, after_long_help = AFTER_HELP, after_help = AFTER_SHORT_HELP)]
struct Cli {
    #[command(flatten)]
    redis: conn::RedisArgs,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Queue an event on an agent and follow the run to its end (exits with the run's exit code).
    Run(run::RunArgs),
    /// Show the latest entries of an agent's journal (one per run state change), or follow it.
    Journal(journal::JournalArgs),
    /// Show one run: its record (status, exit code, failed step, times) and its output.
    Show(show::ShowArgs),
    /// Show which steps an event would run, from which files, and what overrides or masks them.
    /// Reads the event directories only: no Redis, nothing runs.
    Explain(explain::ExplainArgs),
    /// Cancel a queued or running run: the agent stops its step (SIGTERM, then SIGKILL).
    Cancel(cancel::CancelArgs),
    /// Install (`add IMAGE`) or remove (`remove ID`) a module on a node: allocates the module id,
    /// writes its module.env, queues module.init / module.remove on the node and follows the run.
    #[command(subcommand)]
    Module(module::ModuleCmd),
    /// Redis users of the security model: set up the cluster's users; add, remove or rotate an
    /// agent's user and its credentials file.
    #[command(subcommand, long_about = redis_admin::LONG_ABOUT, after_long_help = redis_admin::AFTER_LONG_HELP)]
    Redis(redis_admin::RedisCmd),
}

const AFTER_SHORT_HELP: &str = "\
AGENT is node/NAME, module/NAME or a bare NAME. Exit codes: see --help.";

const AFTER_HELP: &str = "\
AGENT:
  node/NAME     the root node-agent of node NAME (its short hostname);
                its keys are under node/NAME/
  module/NAME   the rootless agent of module NAME (e.g. module/traefik0);
                its keys are under module/NAME/
  NAME          either: agentctl takes the kind whose heartbeat key exists
                in Redis (module first), else the kind that has a queue,
                and asks for node/NAME or module/NAME when it cannot tell.
                `explain` decides without Redis: a module if a Unix user
                NAME exists, else a node if NAME is this host's name.

EXIT CODES:
  0      success (`run`: every step succeeded)
  1-125  `run`: the exit code the failed step chose
  1      agentctl failed: Redis unreachable, no such run, agent not
         listening, kind of a bare NAME unknown
  2      bad command line
  65     invalid input: a bad event name, agent name or run id (nothing
         is queued), or a run the agent refused (bad queue entry, payload
         too large)
  69     no event directory defines the event (`explain`, or a run)
  71     a step could not be started
  75     the run was abandoned after too many agent restarts
  124    the run hit its timeout, or `run --timeout` stopped waiting
         (the run goes on)
  130    the run was cancelled, or Ctrl-C stopped `run` from following
         it (the run goes on)
  128+N  a step was killed by signal N

EXAMPLES:
  agentctl run module/traefik0 configure-module '{\"host\":\"a.example\"}'
  echo '{\"path\":\"/srv\"}' | agentctl run nextcloud0 backup -
  agentctl journal -n 50 --follow node/node1
  agentctl show traefik0 ctl-1764064800000-1a2b3c4d
  agentctl explain module/traefik0 configure-module
  agentctl cancel traefik0 ctl-1764064800000-1a2b3c4d
  id=$(agentctl module add --node node1 --env PORT=8080 ghcr.io/org/hello:1.0)
  agentctl module remove --node node1 hello1

Prefer --redis-credentials (or AGENT_REDIS_CREDENTIALS) to a password in
the URL: command lines are visible to every user of the host.";

fn main() {
    let cli = Cli::parse();
    let code = match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("agentctl: {}", fail::render(&e));
            fail::code_of(&e)
        }
    };
    let _ = std::io::stdout().flush();
    std::process::exit(code);
}

fn real_main(cli: Cli) -> anyhow::Result<i32> {
    let redis = match cli.cmd {
        Cmd::Explain(args) => return explain::main(args),
        Cmd::Redis(cmd) => return redis_admin::main(&cli.redis, cmd),
        _ => cli.redis.load()?,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    rt.block_on(async move {
        match cli.cmd {
            Cmd::Run(args) => run::main(&redis, args).await,
            Cmd::Journal(args) => journal::main(&redis, args).await,
            Cmd::Show(args) => show::main(&redis, args).await,
            Cmd::Cancel(args) => cancel::main(&redis, args).await,
            Cmd::Module(cmd) => module::main(&redis, cmd).await,
            Cmd::Explain(_) => unreachable!("handled without Redis above"),
            Cmd::Redis(_) => unreachable!("handled by redis_admin above"),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn help_answers_questions() {
        let help = Cli::command().render_long_help().to_string();
        for want in ["node/NAME", "module/NAME", "65", "69", "75", "124", "130"] {
            assert!(help.contains(want), "--help should mention {want}");
        }
    }
}
