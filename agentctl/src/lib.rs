//! `agentctl`: the sysadmin's command line for the agents.
//!
//! It speaks protocol v1 through `core_events` only: every key and channel comes from its builders,
//! every record field from its record types. `explain` reads event directories and needs no Redis;
//! everything else talks to the Redis server the agents use.

mod agent;
mod backup;
mod cancel;
mod cert;
mod cluster;
mod cluster_join;
mod cluster_leave;
mod conn;
mod explain;
mod fail;
mod journal;
mod module;
mod module_move;
mod module_repo;
mod module_update;
mod node;
mod output;
mod redis_admin;
mod run;
mod sentinel;
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
    /// Install (`add IMAGE` or `add NAME[:VERSION]` from a repository) or remove (`remove ID`) a
    /// module on a node: allocates the module id, writes its module.env, queues module.init /
    /// module.remove on the node and follows the run. Also the module repositories (`repo`,
    /// `search`, `info`), export/import and move.
    #[command(subcommand)]
    Module(module::ModuleCmd),
    /// Redis users of the security model: set up the cluster's users; add, remove or rotate an
    /// agent's user and its credentials file.
    #[command(subcommand, long_about = redis_admin::LONG_ABOUT, after_long_help = redis_admin::AFTER_LONG_HELP)]
    Redis(redis_admin::RedisCmd),
    /// This node: `setup` makes Redis durable and locked down and starts node-agent (the
    /// package runs it; idempotent); `status` shows Redis, ACL users, agents and modules.
    #[command(subcommand, long_about = node::LONG_ABOUT)]
    Node(node::NodeCmd),
    /// The cluster: `create` makes this node the leader of a new one (WireGuard VPN, Redis on
    /// the VPN address), `token` prints a join token, `status` shows nodes and tokens.
    #[command(subcommand, long_about = cluster::LONG_ABOUT)]
    Cluster(cluster::ClusterCmd),
    /// The cluster's certificates for every node's edge proxy: `upload` a certificate and its
    /// key (stored once, the key encrypted), `list` them with expiry and the nodes serving them,
    /// `rm` one. docs/EDGE.md.
    #[command(subcommand)]
    Cert(cert::CertCmd),
    /// Backups of modules with restic: `repo add|list|rm|default` the cluster's repositories,
    /// `run` a module's backup now, `status` (failed until a later backup succeeds),
    /// `snapshots` of a module. docs/BACKUP.md.
    #[command(subcommand)]
    Backup(backup::BackupCmd),
}

const AFTER_SHORT_HELP: &str = "\
AGENT is node/NAME, module/NAME or a bare NAME. Exit codes: see --help.";

const AFTER_HELP: &str = "\
AGENT:
  node/NAME     the root node-agent of node NAME (its short hostname);
                its keys are under node/NAME/
  module/NAME   the rootless agent of module NAME (e.g. module/traefik0);
                its keys are under module/NAME/
  NAME          either: agentctl reads its kind in the agent name registry
                (the Redis hash cluster/agents, which every agent writes when
                it starts and `module add` when it adds a module), and asks
                for node/NAME or module/NAME when the name is not there.
                `explain` also works without Redis: then a module if a Unix
                user NAME exists, else a node if NAME is this host's name.

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

/// The command line's definition, for its man page and shell completions.
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

/// The `agentctl` binary.
pub fn main() {
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
        Cmd::Explain(args) => return explain::main(args, &cli.redis),
        Cmd::Redis(cmd) => return redis_admin::main(&cli.redis, cmd),
        Cmd::Node(cmd) => return node::main(&cli.redis, cmd),
        Cmd::Cluster(cmd) => return cluster::main(&cli.redis, cmd),
        _ => cli.redis.load()?,
    };
    runtime()?.block_on(async move {
        match cli.cmd {
            Cmd::Run(args) => run::main(&redis, args).await,
            Cmd::Journal(args) => journal::main(&redis, args).await,
            Cmd::Show(args) => show::main(&redis, args).await,
            Cmd::Cancel(args) => cancel::main(&redis, args).await,
            Cmd::Module(cmd) => module::main(&redis, cmd).await,
            Cmd::Cert(cmd) => cert::main(&redis, cmd).await,
            Cmd::Backup(cmd) => backup::main(&redis, cmd).await,
            Cmd::Explain(_) => unreachable!("handled without Redis above"),
            Cmd::Redis(_) => unreachable!("handled by redis_admin above"),
            Cmd::Node(_) => unreachable!("handled by node above"),
            Cmd::Cluster(_) => unreachable!("handled by cluster above"),
        }
    })
}

/// The runtime every command that talks to Redis or systemd runs on: one thread is enough for a
/// command line tool.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    // The help tests read the help clap really renders and check what it tells a user against
    // the code: the exit codes are the ones agentctl exits with, the examples parse, the agent
    // forms and options it names are the real ones.

    /// The rendered `--help`, wide enough that clap wraps no example line (its width would
    /// otherwise follow COLUMNS or the terminal).
    fn long_help() -> String {
        Cli::command()
            .term_width(200)
            .render_long_help()
            .to_string()
    }

    /// The lines of a help section (`NAME:` up to the next blank line), without the title.
    fn section<'a>(help: &'a str, title: &str) -> Vec<&'a str> {
        let mut lines = help.lines().skip_while(|l| l.trim() != title);
        assert!(lines.next().is_some(), "no {title} section in:\n{help}");
        lines.take_while(|l| !l.trim().is_empty()).collect()
    }

    /// Splits a command line as a shell would, for the quoting the examples use.
    fn words(line: &str) -> Vec<String> {
        shlex::split(line).unwrap_or_else(|| panic!("unbalanced quotes in {line}"))
    }

    #[test]
    fn help_lists_the_exit_codes_agentctl_exits_with() {
        use core_events::exit;
        let help = long_help();
        // Entries start at the section's indentation; their continuation lines are deeper.
        let entries: Vec<&str> = section(&help, "EXIT CODES:")
            .into_iter()
            .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        let numbers: std::collections::BTreeSet<i32> =
            entries.iter().filter_map(|e| e.parse().ok()).collect();
        let expected = [
            exit::OK,
            1, // agentctl itself failed: fail::code_of of any other error
            2, // clap's usage error
            exit::INVALID,
            exit::NO_SUCH_EVENT,
            exit::SPAWN_FAILED,
            exit::ABANDONED,
            exit::TIMEOUT,
            exit::CANCELLED,
        ];
        assert_eq!(numbers, expected.into_iter().collect(), "{help}");
        assert!(entries.contains(&"1-125"), "a step's own code: {entries:?}");
        let signal = format!("{}+N", exit::SIGNAL_BASE);
        assert!(entries.contains(&signal.as_str()), "{entries:?}");

        // The codes the help gives for agentctl's own failures are the ones it exits with.
        assert_eq!(fail::code_of(&anyhow::anyhow!("Redis unreachable")), 1);
        assert_eq!(fail::code_of(&fail::invalid("bad run id")), exit::INVALID);
        let usage = Cli::try_parse_from(["agentctl", "no-such-command"])
            .err()
            .expect("refused");
        assert_eq!(usage.exit_code(), 2);
    }

    #[test]
    fn help_examples_parse_with_the_real_command_line() {
        let help = long_help();
        let examples = section(&help, "EXAMPLES:");
        assert!(examples.len() >= 8, "{examples:?}");
        for line in examples {
            // `echo … | agentctl …` and `id=$(agentctl …)`: the agentctl command in them.
            let at = line
                .find("agentctl ")
                .unwrap_or_else(|| panic!("{line:?} runs no agentctl"));
            let mut cmd = &line[at..];
            if line[..at].ends_with("$(") {
                cmd = cmd.strip_suffix(')').expect("closing )");
            }
            let argv = words(cmd);
            if let Err(e) = Cli::try_parse_from(&argv) {
                panic!("example `{cmd}` does not parse: {e}");
            }
            let matches = Cli::command().try_get_matches_from(&argv).unwrap();
            let (name, sub) = matches.subcommand().expect("a command");
            assert_eq!(name, argv[1], "{cmd}");
            // Its AGENT is one of the forms the AGENT section describes.
            if let Ok(Some(agent)) = sub.try_get_one::<String>("agent") {
                assert!(agent::AgentRef::parse(agent).is_ok(), "{cmd}: {agent}");
            }
        }
    }

    #[test]
    fn help_agent_forms_are_the_ones_agentctl_parses() {
        use core_events::AgentKind;
        let help = long_help();
        let forms: Vec<&str> = section(&help, "AGENT:")
            .into_iter()
            .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        assert_eq!(forms, ["node/NAME", "module/NAME", "NAME"], "{help}");
        for (form, kind) in forms
            .iter()
            .zip([Some(AgentKind::Node), Some(AgentKind::Module), None])
        {
            let agent = agent::AgentRef::parse(&form.replace("NAME", "traefik0")).unwrap();
            assert_eq!(agent.kind, kind, "{form}");
        }
        // A kind the help does not describe is refused, as invalid input.
        let e = agent::AgentRef::parse("pod/traefik0").unwrap_err();
        assert_eq!(fail::code_of(&e), core_events::exit::INVALID);
        // The short help says what AGENT is and where the exit codes are.
        let short = Cli::command().render_help().to_string();
        assert!(
            short.contains("node/NAME, module/NAME or a bare NAME") && short.contains("--help"),
            "{short}"
        );
    }

    #[test]
    fn help_credentials_advice_names_the_real_option() {
        let flat = long_help().split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            flat.contains("Prefer --redis-credentials (or AGENT_REDIS_CREDENTIALS)"),
            "{flat}"
        );
        let cmd = Cli::command();
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some("redis-credentials"))
            .expect("--redis-credentials");
        assert_eq!(
            arg.get_env().and_then(|e| e.to_str()),
            Some("AGENT_REDIS_CREDENTIALS")
        );
        // `run --timeout`, which the exit code 124 refers to, exists.
        assert!(Cli::try_parse_from(["agentctl", "run", "--timeout", "5", "node/n1", "e"]).is_ok());
    }
}
