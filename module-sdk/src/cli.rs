//! `module-sdk`: the command steps call to report progress, read and write the module's env, emit
//! events and queue events for other agents. A thin layer over the `module_sdk` library.

use std::io::Write;
use std::process::ExitCode;

use crate::args::{self, EnvKey, STDIN_ARG};
use crate::context::{process_env, redis_url_from};
use crate::{exit_code, AgentContext, Error, RedisUrl, Session, StepContext, Timeouts};
use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use core_events::{AgentKind, AgentName, EventName, Prefix, RunId, StepMessage};

use crate::control::Emitted;
use crate::{lint, route, sign, unit};

const ABOUT: &str = "Helper for event steps and module authors: progress, module env, events.";

const LONG_ABOUT: &str = "\
Helper for event steps and module authors.

An agent runs the steps of an event with their context in the environment: AGENT_NAME,
AGENT_KIND, AGENT_KEY_PREFIX, AGENT_EVENT, AGENT_RUN_ID, AGENT_STEP, AGENT_ATTEMPT and
REDIS_URL. module-sdk reads it, so inside a step no option is needed. Outside a step, a
missing variable is an error that names it. When a run of event E fails or is cancelled,
the agent runs the steps of E.rollback with the same environment plus AGENT_ROLLBACK=1,
AGENT_FAILED_STEP (the step that failed; empty after a cancel) and AGENT_RUN_STATUS
(failed or cancelled). AGENT_CONTROL_FD names the socket (fd 3) through which progress and
emit reach the agent. Every AGENT_* name and REDIS_URL is the agent's: module.env fields
by those names never reach a step, and `env set` refuses them.";

const AFTER_HELP: &str = "\
Examples (inside a step):
  module-sdk progress 50 dumping the database         report 50 % of this step
  module-sdk env get LE_EMAIL                         print one module.env value
  module-sdk env set LE_EMAIL root@example.org        set one; later runs see $LE_EMAIL
  module-sdk env list --module traefik0               read another module's env
  module-sdk emit backup-done '{\"size\":1024}'         PUBLISH event/<agent>/backup-done
  module-sdk queue module/traefik0 configure '{}'     queue an event for an agent (node steps)
  module-sdk context                                  this step's context as JSON
  module-sdk secret get DB_PASSWORD                   print a secret (see `secret --help`)
  module-sdk unit restart hello0-httpd                restart a user unit, wait (see `unit --help`)
  module-sdk route add web --host w.test --port 8080  publish a port (see `route --help`)
  module-sdk lint examples/modules/hello              check a module before publishing it

Steps must be idempotent: runs are at-least-once. A run interrupted by an agent
restart or crash is started again from its first step (AGENT_ATTEMPT counts the
attempts), so any step may run again after it already did its work. `env set` and
`env rm` are idempotent; give `queue` a fixed --id (e.g. \"$AGENT_RUN_ID-notify\") so
that a repeated run does not queue the event twice. Rollback steps (E.rollback) must
also cope with any state: they run whatever step failed, so each undoes only what
exists.

Exit codes: 0 ok; 1 `env get` of a key that is not set; 2 bad arguments;
69 Redis unreachable; 70 other Redis error; 73 `route add` of a route whose host
and path another route has; 74 standard input/output error; 77 Redis refused the
credentials or the command (ACL); 78 not inside a step (a variable is missing or
invalid). `progress` exits 0 even when Redis fails: a progress report never fails
a step.";

#[derive(Parser)]
#[command(
    name = "module-sdk",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = AFTER_HELP
)]
struct Cli {
    /// Say more on stderr (and `emit` outside a step prints its number of receivers on stdout).
    #[arg(short, long, global = true)]
    verbose: bool,

    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Report how far the step is: `module-sdk progress 50 dumping the database`.
    ///
    /// The step's agent publishes {"run":…, "step":…, "percent":N, "message":…} on
    /// progress/<agent>/<run>, where `agentctl` and other subscribers follow the run. Inside a step
    /// the report goes to the agent (the control socket of AGENT_CONTROL_FD), which removes known
    /// secret values first; outside one it is published directly. Best effort: when it cannot be
    /// sent a warning goes to stderr and the exit code is still 0, so progress never fails a step.
    ///
    /// Example: module-sdk progress 50 dumping the database
    #[command(after_help = "Needs AGENT_NAME, AGENT_KIND, AGENT_EVENT, AGENT_RUN_ID, REDIS_URL.")]
    Progress {
        /// How far the step is, a whole number from 0 to 100.
        #[arg(value_name = "PERCENT", value_parser = percent_arg)]
        percent: u8,
        /// What the step is doing; the words are joined with spaces.
        #[arg(
            value_name = "MESSAGE",
            trailing_var_arg = true,
            allow_hyphen_values = true
        )]
        message: Vec<String>,
    },

    /// Module env: `module-sdk env set LE_EMAIL root@example.org`.
    ///
    /// The hash module/<id>/module.env: each field is exported to every later step of the module
    /// (a run loads it when it starts, so a value set now is seen from the next run on). With
    /// --module ID another module's env can be read (get and list only).
    ///
    /// Example: module-sdk env set LE_EMAIL root@example.org
    Env(EnvArgs),

    /// Emit an event: `module-sdk emit backup-done '{"size":1024}'`.
    ///
    /// JSON (default {}) is published on event/<agent>/<EVENT>; subscribers use
    /// PSUBSCRIBE 'event/<agent>/*'. Inside a step the event goes to the agent (the control socket
    /// of AGENT_CONTROL_FD), which removes known secret values from it and publishes it; outside
    /// one it is published directly (-v then prints the number of receivers). Fire and forget:
    /// nobody listening is not an error. At most 128 KiB of data.
    ///
    /// Example: module-sdk emit backup-done '{"size":1024}'
    Emit {
        /// Event name ([A-Za-z0-9._-]).
        event: EventName,
        /// JSON payload; `-` reads it from standard input. Default: {}.
        json: Option<String>,
    },

    /// Queue an event for an agent: `module-sdk queue module/mod0 configure '{...}'`.
    ///
    /// Adds `event` and `data` (and `id` with --id) to the agent's queue stream <prefix>/queue; the
    /// agent runs it even if it is not running right now. Prints the run id (the stream id unless
    /// --id is given). Follow the run in <prefix>/run/<id>.
    ///
    /// Who may queue where is decided by Redis ACL users: a module's user may write only its own
    /// keys, so from a module's step this queues only for the module itself (exit 77 otherwise); the
    /// node-agent's steps (node user) may queue for the node and its modules.
    ///
    /// Example (in a node step): module-sdk queue module/traefik0 configure '{"email":"a@b.c"}'
    Queue {
        /// The agent: node/NAME or module/NAME.
        #[arg(value_name = "AGENT", value_parser = agent_arg)]
        agent: Prefix,
        /// Event name ([A-Za-z0-9._-]).
        event: EventName,
        /// Event data (argv[1] and stdin of its steps); `-` reads it from standard input.
        /// Default: empty.
        data: Option<String>,
        /// Run id to use instead of the stream id. A repeated run of this step then queues the same
        /// run id again, and the agent drops the duplicate once the first has ended.
        #[arg(long, value_name = "RUN_ID")]
        id: Option<RunId>,
    },

    /// Print the step's context as JSON: `module-sdk context`.
    ///
    /// Agent, kind, key prefix, event, run id, step, attempt, REDIS_URL with its password replaced
    /// by ***, and the keys and channels of this run.
    ///
    /// Example: module-sdk context
    Context,

    /// Secrets, encrypted with age to the module's key: `module-sdk secret get DB_PASSWORD`.
    ///
    /// The hash module/<id>/secrets holds one age-armored ciphertext per name, encrypted to the
    /// module's public key (module/<id>/public_key); the private key stays in the module's home
    /// ($HOME/.config/agent/secret.key, mode 0600). Values are read from standard input only.
    ///
    /// Example: printf %s "$PW" | module-sdk secret set DB_PASSWORD
    Secret(crate::secret::SecretArgs),

    /// Routes through the node's edge proxy: `module-sdk route add web --host H --port 8080`.
    ///
    /// A route publishes one of the module's local ports under a host name and/or a path prefix;
    /// routes are stored in module/<id>/routes and applied by the edge proxy of the module's node.
    #[command(long_about = route::LONG_ABOUT, after_help = route::AFTER_HELP)]
    Route(route::RouteArgs),

    /// Make an OpenPGP signing key: `module-sdk keygen --userid "Name <mail>" --out KEY.tsk
    /// --cert-out KEY.asc`. See docs/SIGNING.md.
    Keygen(sign::KeygenArgs),

    /// Sign a tree (writes DIR/MANIFEST and DIR/MANIFEST.sig) or an archive (writes FILE.sig):
    /// `module-sdk sign --key KEY.tsk DIR`.
    Sign(sign::SignArgs),

    /// Revoke a signing key that is lost or compromised: `module-sdk revoke --key KEY.tsk
    /// --cert-out REVOKED.asc` writes its certificate with a hard revocation, to replace the old
    /// one in the nodes' trust directories; every signature of the key is bad from then on.
    Revoke(sign::RevokeArgs),

    /// Verify a signed tree or archive against the trusted certificates:
    /// `module-sdk verify DIR [--trust-dir D] [--policy require|warn|off]`. Exit 0 when accepted.
    Verify(sign::VerifyArgs),

    /// systemd units: `module-sdk unit [--system] start|stop|restart|reload|enable|disable|status|
    /// daemon-reload [NAME]`; waits for systemd's job, exits 1 with the unit's journal on failure.
    #[command(long_about = unit::LONG_ABOUT, after_help = unit::AFTER_HELP)]
    Unit(unit::UnitArgs),

    /// Check a module before publishing it: `module-sdk lint DIR|IMAGE`.
    #[command(long_about = lint::LONG_ABOUT, after_help = lint::AFTER_HELP)]
    Lint(lint::LintArgs),
}

#[derive(Args)]
struct EnvArgs {
    /// Read the env of module ID instead of this step's own module (get and list only).
    #[arg(long, value_name = "ID", global = true)]
    module: Option<AgentName>,

    #[command(subcommand)]
    cmd: EnvCmd,
}

#[derive(Subcommand)]
enum EnvCmd {
    /// Print one value: `module-sdk env get LE_EMAIL`. Exit code 1 if it is not set.
    Get {
        #[arg(value_parser = key_arg)]
        key: EnvKey,
    },
    /// Set one value: `module-sdk env set LE_EMAIL root@example.org` (`-` reads it from stdin,
    /// minus one trailing newline: `printf %s "$V" | module-sdk env set K -`).
    Set {
        #[arg(value_parser = key_arg)]
        key: EnvKey,
        #[arg(allow_hyphen_values = true)]
        value: String,
    },
    /// List all values as KEY=VALUE lines, sorted: `module-sdk env list` (--json for a JSON object).
    List {
        /// Print a JSON object instead (unambiguous when values contain newlines).
        #[arg(long)]
        json: bool,
    },
    /// Remove one key: `module-sdk env rm LE_EMAIL`. Removing a key that is not set is not an error.
    Rm {
        #[arg(value_parser = key_arg)]
        key: EnvKey,
    },
}

fn percent_arg(s: &str) -> Result<u8, Error> {
    args::parse_percent(s)
}

fn key_arg(s: &str) -> Result<EnvKey, Error> {
    EnvKey::new(s)
}

fn agent_arg(s: &str) -> Result<Prefix, Error> {
    args::parse_agent(s)
}

/// The command line's definition, for its man page and shell completions.
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

/// The `module-sdk` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Our errors already say what their source said; other errors show their chain.
            let code = if let Some(e) = e.downcast_ref::<Error>() {
                eprintln!("module-sdk: error: {e}");
                e.exit_code()
            } else {
                eprintln!("module-sdk: error: {e:#}");
                if e.downcast_ref::<std::io::Error>().is_some() {
                    exit_code::IO
                } else {
                    exit_code::SOFTWARE
                }
            };
            ExitCode::from(u8::try_from(code).unwrap_or(1))
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let verbose = cli.verbose;
    match cli.cmd {
        Cmd::Progress { percent, message } => progress(percent, message, verbose),
        Cmd::Env(env) => env_cmd(env, verbose),
        Cmd::Emit { event, json } => {
            let json = match json.as_deref() {
                None => "{}".to_string(),
                Some(STDIN_ARG) => args::read_value(std::io::stdin().lock())?,
                Some(j) => j.to_string(),
            };
            let json = args::parse_json(&json)?;
            let emitted = crate::control::emit(&event, json, || {
                AgentContext::from_env().map(|ctx| (ctx.name().clone(), ctx.redis))
            })?;
            match emitted {
                Emitted::ToAgent if verbose => {
                    eprintln!("event {event} handed to the agent, which publishes it")
                }
                Emitted::Published(n) if verbose => out(format!("{n}\n").as_bytes())?,
                _ => {}
            }
            Ok(())
        }
        Cmd::Queue {
            agent,
            event,
            data,
            id,
        } => {
            let data = match data.as_deref() {
                None => String::new(),
                Some(STDIN_ARG) => args::read_value(std::io::stdin().lock())?,
                Some(d) => d.to_string(),
            };
            let url = redis_url_from(process_env)?;
            let run = Session::connect(&url, Timeouts::NORMAL)?.queue(
                &agent,
                &event,
                &data,
                id.as_ref(),
            )?;
            if verbose {
                eprintln!(
                    "queued {event} for {}: follow {}",
                    agent.as_str(),
                    agent.run(&run)
                );
            }
            out(format!("{run}\n").as_bytes())
        }
        Cmd::Secret(secret) => Ok(crate::secret::run(secret, verbose)?),
        Cmd::Route(r) => Ok(route::run(r, verbose)?),
        Cmd::Keygen(a) => std::process::exit(sign::keygen(&a)),
        Cmd::Sign(a) => std::process::exit(sign::sign(&a)),
        Cmd::Revoke(a) => std::process::exit(sign::revoke(&a)),
        Cmd::Verify(a) => std::process::exit(sign::verify(&a)),
        Cmd::Unit(a) => std::process::exit(unit::run(&a, verbose)),
        Cmd::Lint(a) => std::process::exit(lint::run(&a, verbose)),
        Cmd::Context => {
            let ctx = StepContext::from_env()?;
            let text = serde_json::to_string_pretty(&ctx.to_json())?;
            out(format!("{text}\n").as_bytes())
        }
    }
}

fn progress(percent: u8, message: Vec<String>, verbose: bool) -> anyhow::Result<()> {
    let ctx = StepContext::from_env()?;
    let message = (!message.is_empty()).then(|| message.join(" "));
    let msg =
        StepMessage::progress(percent, message.clone()).map_err(|e| Error::Usage(e.to_string()))?;
    match crate::control::send(&msg) {
        Ok(true) => {
            if verbose {
                eprintln!("progress {percent}% of run {} handed to the agent", ctx.run);
            }
            return Ok(());
        }
        Ok(false) => {}
        Err(e) => {
            eprintln!(
                "module-sdk: warning: progress not reported (this does not fail the step): {e}"
            );
            return Ok(());
        }
    }
    // Not in a step: nobody to hand it to, so it is published from here.
    let report = ctx.progress(percent, message);
    let sent = Session::connect(&ctx.agent.redis, Timeouts::BEST_EFFORT)
        .and_then(|mut s| s.publish_progress(&ctx, &report));
    match sent {
        Ok(n) if verbose => eprintln!(
            "progress {percent}% of run {} sent to {n} receivers",
            ctx.run
        ),
        Ok(_) => {}
        Err(e) => eprintln!(
            "module-sdk: warning: progress not reported (this does not fail the step): {e}"
        ),
    }
    Ok(())
}

fn env_cmd(env: EnvArgs, verbose: bool) -> anyhow::Result<()> {
    let writes = matches!(env.cmd, EnvCmd::Set { .. } | EnvCmd::Rm { .. });
    let (prefix, url): (Prefix, RedisUrl) =
        match env.module {
            Some(_) if writes => return Err(Error::Usage(
                "--module is read-only: a step may change only its own module's env (its Redis \
                 user may write only below its own prefix)"
                    .into(),
            )
            .into()),
            Some(id) => (Prefix::module(id), redis_url_from(process_env)?),
            None => {
                let ctx = AgentContext::from_env()?;
                if ctx.kind() != AgentKind::Module {
                    return Err(Error::Usage(format!(
                        "this step belongs to {}, a node agent: only modules have a module.env; \
                     use --module ID to read a module's env",
                        ctx.prefix.as_str()
                    ))
                    .into());
                }
                (ctx.prefix, ctx.redis)
            }
        };
    let mut session = Session::connect(&url, Timeouts::NORMAL)?;
    match env.cmd {
        EnvCmd::Get { key } => match session.env_get(&prefix, &key)? {
            Some(mut value) => {
                value.push(b'\n');
                out(&value)
            }
            None => Err(Error::NotFound {
                hash: prefix.module_env(),
                key: key.to_string(),
            }
            .into()),
        },
        EnvCmd::Set { key, value } => {
            let key = key.writable()?;
            let value = if value == STDIN_ARG {
                args::read_value(std::io::stdin().lock())?
            } else {
                value
            };
            args::check_env_value(&key, &value)?;
            let new = session.env_set(&prefix, &key, &value)?;
            if verbose {
                let what = if new { "added" } else { "updated" };
                eprintln!("{key} {what} in {}", prefix.module_env());
            }
            Ok(())
        }
        EnvCmd::List { json } => {
            let all = session.env_list(&prefix)?;
            let text = if json {
                format!("{}\n", serde_json::to_string_pretty(&all)?)
            } else {
                all.iter().map(|(k, v)| format!("{k}={v}\n")).collect()
            };
            out(text.as_bytes())
        }
        EnvCmd::Rm { key } => {
            let existed = session.env_rm(&prefix, &key)?;
            if verbose {
                let what = if existed {
                    "removed from"
                } else {
                    "was not set in"
                };
                eprintln!("{key} {what} {}", prefix.module_env());
            }
            Ok(())
        }
    }
}

fn out(bytes: &[u8]) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(bytes)
        .and_then(|()| stdout.flush())
        .context("writing to standard output")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn arguments_parse() {
        let cli = Cli::try_parse_from(["module-sdk", "progress", "50", "half", "-way"]).unwrap();
        assert!(
            matches!(cli.cmd, Cmd::Progress { percent: 50, ref message } if message == &["half", "-way"])
        );
        for bad in [
            &["module-sdk", "progress", "101"][..],
            &["module-sdk", "env", "get", "1BAD"],
            &["module-sdk", "emit", "../x"],
            &["module-sdk", "queue", "mod0", "ping"],
        ] {
            let e = Cli::try_parse_from(bad).err().expect("refused");
            assert_eq!(e.exit_code(), exit_code::USAGE, "{bad:?}");
        }
        let cli =
            Cli::try_parse_from(["module-sdk", "env", "list", "--module", "traefik0"]).unwrap();
        assert!(
            matches!(cli.cmd, Cmd::Env(EnvArgs { module: Some(ref m), .. }) if m.as_str() == "traefik0")
        );
    }

    #[test]
    fn unit_arguments_parse() {
        let cli =
            Cli::try_parse_from(["module-sdk", "unit", "enable", "--now", "sleeper"]).unwrap();
        let Cmd::Unit(u) = cli.cmd else {
            panic!("not unit")
        };
        assert!(!u.system);
        assert!(
            matches!(u.cmd, unit::UnitCmd::Enable { ref unit, now: true } if unit.name.unit.as_str() == "sleeper.service")
        );
        let cli = Cli::try_parse_from(["module-sdk", "unit", "status", "node-agent", "--system"])
            .unwrap();
        assert!(matches!(cli.cmd, Cmd::Unit(ref u) if u.system));
        for bad in [
            &["module-sdk", "unit", "start", "-x"][..],
            &["module-sdk", "unit", "start", "a/b.service"],
            &["module-sdk", "unit", "start"],
            &["module-sdk", "unit", "start", "--now", "x"],
            &["module-sdk", "unit", "daemon-reload", "x"],
        ] {
            let e = Cli::try_parse_from(bad).err().expect("refused");
            assert_eq!(e.exit_code(), exit_code::USAGE, "{bad:?}");
        }
    }

    // The help tests read the help clap really renders and check what it tells a user against
    // the code: its examples parse with the real command line, its exit codes are the ones the
    // code uses, the options and variables it names exist.

    /// The rendered long help of `module-sdk` or of its subcommand `sub`, wide enough that clap
    /// wraps no example line (its width would otherwise follow COLUMNS or the terminal).
    fn long_help(sub: Option<&str>) -> String {
        let mut cmd = Cli::command().term_width(200);
        cmd.build();
        match sub {
            None => cmd.render_long_help().to_string(),
            Some(name) => cmd
                .find_subcommand_mut(name)
                .unwrap_or_else(|| panic!("no subcommand {name}"))
                .clone()
                .term_width(200)
                .render_long_help()
                .to_string(),
        }
    }

    /// The example command lines of a help text: every `module-sdk …` that starts a line, follows
    /// "Example…:" or is piped into, up to its comment (two spaces) or a shell `||`.
    fn examples(help: &str) -> Vec<String> {
        help.lines()
            .filter_map(|line| {
                let at = line.find("module-sdk ")?;
                let before = line[..at].trim();
                let example = before.is_empty()
                    || before.ends_with('|')
                    || (before.starts_with("Example") && before.ends_with(':'));
                if !example {
                    return None;
                }
                let mut cmd = &line[at..];
                for end in ["  ", " ||"] {
                    if let Some(i) = cmd.find(end) {
                        cmd = &cmd[..i];
                    }
                }
                Some(cmd.trim().to_string())
            })
            .collect()
    }

    /// Splits a command line as a shell would, for the quoting the examples use.
    fn words(line: &str) -> Vec<String> {
        shlex::split(line).unwrap_or_else(|| panic!("unbalanced quotes in {line}"))
    }

    /// Each example parses with the real command line, as the subcommand it names.
    fn assert_examples_parse(help: &str, min: usize) {
        let examples = examples(help);
        assert!(
            examples.len() >= min,
            "{} examples found, {min} expected in:\n{help}",
            examples.len()
        );
        for example in examples {
            let argv = words(&example);
            if let Err(e) = Cli::try_parse_from(&argv) {
                panic!("example `{example}` does not parse: {e}");
            }
            let matches = Cli::command().try_get_matches_from(&argv).unwrap();
            let named = argv[1..].iter().find(|w| !w.starts_with('-'));
            assert_eq!(
                matches.subcommand_name(),
                named.map(String::as_str),
                "{example}"
            );
        }
    }

    /// The codes of a help's "Exit codes: N what; N what; …" paragraph.
    fn exit_codes(help: &str) -> std::collections::BTreeSet<i32> {
        let at = help
            .find("Exit codes:")
            .unwrap_or_else(|| panic!("no exit codes in:\n{help}"));
        let para = help[at + "Exit codes:".len()..]
            .split("\n\n")
            .next()
            .unwrap();
        let para = para.split_whitespace().collect::<Vec<_>>().join(" ");
        para.split(';')
            .map(|item| {
                let code = item.split_whitespace().next().unwrap_or_default();
                code.parse()
                    .unwrap_or_else(|_| panic!("{item:?} does not start with a code"))
            })
            .collect()
    }

    #[test]
    fn help_examples_parse_with_the_real_command_line() {
        assert_examples_parse(&long_help(None), 9);
        for sub in Cli::command().get_subcommands() {
            let name = sub.get_name();
            if name != "help" {
                assert_examples_parse(&long_help(Some(name)), 0);
            }
        }
        // The subcommands that show one example each in their own help.
        for name in [
            "progress", "env", "emit", "queue", "context", "secret", "unit", "lint", "route",
        ] {
            assert_examples_parse(&long_help(Some(name)), 1);
        }
    }

    #[test]
    fn help_lists_the_exit_codes_the_commands_use() {
        use exit_code::*;
        let general = [
            0,
            NOT_FOUND,
            USAGE,
            UNAVAILABLE,
            SOFTWARE,
            CONFLICT,
            IO,
            NO_PERMISSION,
            CONFIG,
        ];
        assert_eq!(exit_codes(&long_help(None)), general.into_iter().collect());
        let secret = [
            0,
            NOT_FOUND,
            USAGE,
            DATA_ERR,
            UNAVAILABLE,
            SOFTWARE,
            IO,
            TEMP_FAIL,
            NO_PERMISSION,
            CONFIG,
        ];
        assert_eq!(
            exit_codes(&long_help(Some("secret"))),
            secret.into_iter().collect()
        );
        // A usage error exits with the code the help gives for bad arguments.
        let e = Cli::try_parse_from(["module-sdk", "no-such-command"])
            .err()
            .expect("refused");
        assert_eq!(e.exit_code(), USAGE);
    }

    #[test]
    fn help_names_every_variable_a_step_gets() {
        let help = long_help(None);
        for var in crate::context::var::ALL {
            assert!(help.contains(var), "{var} missing in:\n{help}");
        }
    }

    #[test]
    fn help_idempotency_advice_works_with_the_real_command_line() {
        let help = long_help(None);
        let flat = help.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(flat.contains("Steps must be idempotent"), "{help}");
        // "give `queue` a fixed --id (e.g. "$AGENT_RUN_ID-notify")": that id, for a real run id,
        // is accepted by `queue --id` and kept as given.
        let advice = flat
            .split_once("a fixed --id (e.g. \"")
            .and_then(|(_, rest)| rest.split_once('"'))
            .map(|(id, _)| id)
            .unwrap_or_else(|| panic!("no --id advice in:\n{help}"));
        let run_id = advice.replace("$AGENT_RUN_ID", "ctl-1764064800000-1a2b3c4d");
        let cli = Cli::try_parse_from([
            "module-sdk",
            "queue",
            "module/traefik0",
            "configure",
            "{}",
            "--id",
            &run_id,
        ])
        .unwrap();
        assert!(
            matches!(cli.cmd, Cmd::Queue { id: Some(ref id), .. } if id.as_str() == run_id),
            "{run_id}"
        );
        // The commands it calls idempotent exist.
        for argv in [
            &["module-sdk", "env", "set", "K", "v"][..],
            &["module-sdk", "env", "rm", "K"],
        ] {
            assert!(Cli::try_parse_from(argv).is_ok(), "{argv:?}");
        }
    }

    #[test]
    fn unit_help_says_which_bus_and_what_waiting_means() {
        let help = long_help(Some("unit"));
        let flat = help.split_whitespace().collect::<Vec<_>>().join(" ");
        // Which bus: the real --system option says both, and the default is the user manager.
        let unit = Cli::command().find_subcommand("unit").cloned().unwrap();
        let system = unit
            .get_arguments()
            .find(|a| a.get_long() == Some("system"))
            .expect("unit --system");
        let system_help = system.get_help().map(|h| h.to_string()).unwrap_or_default();
        assert!(
            system_help.contains("system bus") && system_help.contains("user bus"),
            "{system_help}"
        );
        assert!(
            flat.contains(&system_help),
            "--system's help is shown:\n{help}"
        );
        assert!(flat.contains("by default your own user manager"), "{help}");
        for (argv, on_system_bus) in [
            (&["module-sdk", "unit", "start", "x"][..], false),
            (&["module-sdk", "unit", "--system", "start", "x"], true),
        ] {
            let Cmd::Unit(u) = Cli::try_parse_from(argv).unwrap().cmd else {
                panic!("not unit")
            };
            assert_eq!(u.system, on_system_bus, "{argv:?}");
        }
        // What waiting means: the commands the help says wait for systemd's job are real, and
        // their own help says they wait.
        assert!(
            flat.contains("start, stop, restart and reload return when systemd's job"),
            "{help}"
        );
        for name in ["start", "stop", "restart", "reload"] {
            let about = unit
                .find_subcommand(name)
                .unwrap_or_else(|| panic!("unit {name}"))
                .get_about()
                .map(|a| a.to_string())
                .unwrap_or_default();
            assert!(about.contains("wait"), "unit {name}: {about}");
        }
        assert!(
            flat.contains("Type=simple"),
            "the start of a simple service: {help}"
        );
        assert_examples_parse(&help, 5);
    }

    #[test]
    fn unit_help_lists_the_exit_codes_it_uses() {
        use exit_code::*;
        let codes = [
            0,
            unit::FAILED,
            USAGE,
            unit::NOT_ACTIVE,
            UNAVAILABLE,
            SOFTWARE,
            NO_PERMISSION,
        ];
        assert_eq!(
            exit_codes(&long_help(Some("unit"))),
            codes.into_iter().collect()
        );
    }

    #[test]
    fn route_help_lists_the_exit_codes_and_parses_its_examples() {
        use exit_code::*;
        let help = long_help(Some("route"));
        let codes = [
            0,
            USAGE,
            UNAVAILABLE,
            SOFTWARE,
            CONFLICT,
            IO,
            NO_PERMISSION,
            CONFIG,
        ];
        assert_eq!(exit_codes(&help), codes.into_iter().collect());
        assert_examples_parse(&help, 7);
        let flat = help.split_whitespace().collect::<Vec<_>>().join(" ");
        for needle in [
            "whole path segments",
            "removed with the module",
            "docs/EDGE.md",
            "Conflicts:",
            core_events::edge::ROUTE_REQUESTED,
        ] {
            assert!(flat.contains(needle), "{needle:?} missing in:\n{help}");
        }
    }

    #[test]
    fn lint_help_lists_the_exit_codes_it_uses() {
        let codes = [
            0,
            lint::FAILED,
            exit_code::USAGE,
            lint::NO_INPUT,
            exit_code::UNAVAILABLE,
        ];
        assert_eq!(
            exit_codes(&long_help(Some("lint"))),
            codes.into_iter().collect()
        );
        assert_examples_parse(&long_help(Some("lint")), 5);
        let cli = Cli::try_parse_from([
            "module-sdk",
            "lint",
            "-q",
            "--strict",
            "--format",
            "json",
            "x",
        ])
        .unwrap();
        assert!(matches!(
            cli.cmd,
            Cmd::Lint(ref a) if a.quiet && a.strict && a.format == lint::Format::Json && a.target == "x"
        ));
        let e = Cli::try_parse_from(["module-sdk", "lint", "--format", "xml", "x"])
            .err()
            .expect("refused");
        assert_eq!(e.exit_code(), exit_code::USAGE);
    }
}
