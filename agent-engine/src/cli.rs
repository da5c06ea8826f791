//! Command line of the agent binaries: the flags and environment both agents share.
//!
//! `node-agent` and `module-agent` are the same engine with different defaults, so their flags are
//! defined once here. These names are a contract used by unit files, docs and outside tests.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use core_events::{step_env, AgentKind, AgentName, EventName};
use tokio_util::sync::CancellationToken;

use crate::config::{defaults, EngineConfig};
use crate::error::{Error, Result};

#[derive(Debug, Parser)]
pub struct AgentArgs {
    /// Agent name. Node default: the short hostname. Module default: the Unix user name.
    #[arg(long, env = step_env::AGENT_NAME)]
    pub name: Option<String>,

    /// Redis server: redis://[user:pass@]host:port[/db] or unix:///path/to/redis.sock.
    #[arg(
        long,
        env = step_env::REDIS_URL,
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true
    )]
    pub redis_url: String,

    /// File with REDIS_USER= and REDIS_PASSWORD= lines; overrides credentials in the URL.
    /// Node default: /etc/agent/redis.env. Module default: $HOME/.config/agent/redis.env.
    /// A default file that does not exist is ignored; a given one must exist.
    #[arg(long, env = "AGENT_REDIS_CREDENTIALS")]
    pub redis_credentials: Option<PathBuf>,

    /// Event directory; repeat the flag (or separate with ':' in the variable) for several. Later
    /// directories override earlier ones by step name; a missing one is skipped. Node default:
    /// /usr/share/agent/node-events:/usr/local/share/agent/node-events:/var/local/node-events.
    /// Module default:
    /// $HOME/.config/module-events:$HOME/module-events.
    #[arg(long = "events-dir", env = "AGENT_EVENTS_DIRS", value_delimiter = ':')]
    pub events_dirs: Vec<PathBuf>,

    /// How many runs may execute at once (1 = one at a time, in queue order).
    #[arg(long, env = "AGENT_CONCURRENCY", default_value_t = defaults::CONCURRENCY)]
    pub concurrency: usize,

    /// Timeout of a run in seconds, unless the event has a `.timeout` file.
    #[arg(long, env = "AGENT_TIMEOUT", default_value_t = defaults::TIMEOUT_SECS)]
    pub timeout: u64,

    /// Seconds between SIGTERM and SIGKILL when a step is cancelled or times out.
    #[arg(long, env = "AGENT_KILL_GRACE", default_value_t = defaults::KILL_GRACE_SECS)]
    pub kill_grace: u64,

    /// Largest accepted event payload in bytes. At most 131071: the data is a step's argv[1], and
    /// Linux refuses longer arguments.
    #[arg(long, env = "AGENT_MAX_PAYLOAD", default_value_t = core_events::record::MAX_PAYLOAD)]
    pub max_payload: usize,

    /// Largest number of queued entries; PUBLISHed events beyond it are refused (journaled).
    #[arg(long, env = "AGENT_MAX_QUEUE", default_value_t = defaults::MAX_QUEUE)]
    pub max_queue: usize,

    /// Bytes of PUBLISHed events received and not yet queued the agent holds (payload, channel and
    /// 128 bytes each) before it refuses more (journaled): its memory under a flood. At least the
    /// max payload + 4096.
    #[arg(long, env = "AGENT_LISTEN_BUFFER", default_value_t = crate::config::DEFAULT_LISTEN_BUFFER)]
    pub listen_buffer: usize,

    /// How many times a run may be started (runs interrupted by an agent crash are started again),
    /// unless the event has a `.retries` file. Beyond it the run is abandoned.
    #[arg(long, env = "AGENT_MAX_ATTEMPTS", default_value_t = defaults::MAX_ATTEMPTS)]
    pub max_attempts: u32,

    /// Seconds run records and outputs are kept.
    #[arg(long, env = "AGENT_RUN_TTL", default_value_t = defaults::RUN_TTL_SECS)]
    pub run_ttl: u64,

    /// Largest captured output of one run, in bytes.
    #[arg(long, env = "AGENT_OUTPUT_CAP", default_value_t = defaults::OUTPUT_CAP)]
    pub output_cap: usize,

    /// Event to queue on the agent's very first start (a module agent's `module.init`).
    #[arg(long, env = "AGENT_STARTUP_EVENT")]
    pub startup_event: Option<String>,

    /// Event to queue for itself each time the agent starts again on a new leader after a
    /// failover (the node-agent's `cluster.leader`, which records the leader's name).
    #[arg(long, env = "AGENT_LEADER_EVENT")]
    pub leader_event: Option<String>,

    /// A module's age identity: the values of the module's secrets it decrypts are scrubbed from run
    /// output, records, journal and logs. Module default: $HOME/.config/agent/secret.key (ignored
    /// while it does not exist). Node agents have none.
    #[arg(long, env = "AGENT_SECRET_KEY_FILE")]
    pub secret_key_file: Option<PathBuf>,

    /// Seconds running steps may go on after SIGTERM before they are killed; killed runs start
    /// again on the next start.
    #[arg(long, env = "AGENT_SHUTDOWN_GRACE", default_value_t = defaults::SHUTDOWN_GRACE_SECS)]
    pub shutdown_grace: u64,
}

impl AgentArgs {
    pub fn into_config(self, kind: AgentKind) -> Result<EngineConfig> {
        let name = match self.name {
            Some(n) => AgentName::new(n)?,
            None => default_name(kind)?,
        };
        let mut cfg = EngineConfig::new(kind, name);
        cfg.redis_url = self.redis_url;
        cfg.credentials_file = match self.redis_credentials {
            Some(path) => Some(path),
            // A default file that does not exist is ignored.
            None => Some(default_credentials_path(kind)).filter(|p| p.exists()),
        };
        cfg.credentials = cfg
            .credentials_file
            .as_deref()
            .map(agent_redis::Credentials::from_file)
            .transpose()?;
        if !self.events_dirs.is_empty() {
            cfg.events_dirs = self
                .events_dirs
                .into_iter()
                .filter(|d| !d.as_os_str().is_empty())
                .collect();
        }
        cfg.concurrency = self.concurrency;
        cfg.default_timeout = Duration::from_secs(self.timeout.max(1));
        cfg.kill_grace = Duration::from_secs(self.kill_grace);
        cfg.max_payload = self.max_payload;
        cfg.max_queue = self.max_queue;
        cfg.listen_buffer = self.listen_buffer;
        cfg.max_attempts = self.max_attempts;
        cfg.run_ttl = Duration::from_secs(self.run_ttl.max(1));
        cfg.output_cap = self.output_cap;
        cfg.startup_event = self.startup_event.map(EventName::new).transpose()?;
        cfg.leader_event = self.leader_event.map(EventName::new).transpose()?;
        cfg.shutdown_grace = Duration::from_secs(self.shutdown_grace);
        if self.secret_key_file.is_some() {
            cfg.secret_key_file = self.secret_key_file;
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

fn default_name(kind: AgentKind) -> Result<AgentName> {
    let raw = match kind {
        AgentKind::Node => {
            let host =
                nix::unistd::gethostname().map_err(|e| Error::Config(format!("hostname: {e}")))?;
            let host = host.to_string_lossy().into_owned();
            host.split('.').next().unwrap_or_default().to_string()
        }
        AgentKind::Module => nix::unistd::User::from_uid(nix::unistd::getuid())
            .ok()
            .flatten()
            .map(|u| u.name)
            .ok_or_else(|| {
                Error::Config("cannot find the current user's name; pass --name".into())
            })?,
    };
    Ok(AgentName::new(raw)?)
}

fn default_credentials_path(kind: AgentKind) -> PathBuf {
    match kind {
        AgentKind::Node => PathBuf::from("/etc/agent/redis.env"),
        AgentKind::Module => std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_default()
            .join(".config/agent/redis.env"),
    }
}

/// Logs to the journal when started by systemd with a journal stream, else to stderr.
/// `RUST_LOG` sets the filter: a level, or `target=level` pairs separated by commas (default `info`).
pub fn init_logging() {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::prelude::*;
    let default = || Targets::new().with_default(tracing::Level::INFO);
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => spec.parse().unwrap_or_else(|e| {
            eprintln!("RUST_LOG={spec:?} is not a filter ({e}); logging at info");
            default()
        }),
        _ => default(),
    };
    let registry = tracing_subscriber::registry().with(filter);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        match tracing_journald::layer() {
            Ok(layer) => return registry.with(layer).init(),
            Err(e) => eprintln!("journald logging unavailable ({e}); logging to stderr"),
        }
    }
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal();
    registry
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(ansi),
        )
        .init();
}

/// The whole life of an agent binary: parse flags, log, run until SIGTERM/SIGINT.
pub fn main(kind: AgentKind, args: AgentArgs) -> Result<()> {
    init_logging();
    let cfg = args.into_config(kind)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Config(format!("cannot start the runtime: {e}")))?;
    rt.block_on(async move {
        use tokio::signal::unix::{signal, SignalKind};
        // Registered before the agent starts, and a failure is an error: an agent that cannot hear
        // SIGTERM would never shut down gracefully (systemd would SIGKILL it mid-run).
        let registered = |kind, name: &str| {
            signal(kind).map_err(|e| Error::Config(format!("cannot catch {name}: {e}")))
        };
        let mut term = registered(SignalKind::terminate(), "SIGTERM")?;
        let mut int = registered(SignalKind::interrupt(), "SIGINT")?;
        let shutdown = CancellationToken::new();
        let signals = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tracing::info!("signal received, shutting down");
            // Only here, where the process really ends: see run_agent.
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
            signals.cancel();
        });
        let mut cfg = cfg;
        loop {
            // Each run has its own token: an agent that ends to follow a new leader cancels its
            // own, never the signal handler's.
            match crate::run_agent(cfg.clone(), shutdown.child_token()).await {
                // A run's own token cancelled without a signal: its leader watch ended it while it
                // was still setting up (a retried write returns `Shutdown` then).
                Err(e @ (Error::LeaderMoved { .. } | Error::Shutdown))
                    if !shutdown.is_cancelled() =>
                {
                    cfg.leader_moved = true;
                    // systemd sees one service going on: fed, and told why it is busy.
                    let status = match &e {
                        Error::LeaderMoved { to, .. } => {
                            format!("following the new leader at {to}")
                        }
                        _ => "following the new leader".to_string(),
                    };
                    let _ = sd_notify::notify(&[
                        sd_notify::NotifyState::Status(&status),
                        sd_notify::NotifyState::Watchdog,
                    ]);
                    continue;
                }
                Err(Error::Shutdown) | Err(Error::LeaderMoved { .. }) => return Ok(()),
                other => return other,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flags_defaults_are_the_engines() {
        // No flag given (and none of their variables set in a test run of this crate).
        let args = AgentArgs::try_parse_from(["agent", "--name", "n1"]).unwrap();
        let cfg = args.into_config(AgentKind::Node).unwrap();
        let want = EngineConfig::new(AgentKind::Node, AgentName::new("n1").unwrap());
        assert_eq!(cfg.default_timeout, want.default_timeout);
        assert_eq!(cfg.kill_grace, want.kill_grace);
        assert_eq!(cfg.max_attempts, want.max_attempts);
        assert_eq!(cfg.max_queue, want.max_queue);
        assert_eq!(cfg.run_ttl, want.run_ttl);
        assert_eq!(cfg.output_cap, want.output_cap);
        assert_eq!(cfg.concurrency, want.concurrency);
        assert_eq!(cfg.shutdown_grace, want.shutdown_grace);
        assert_eq!(cfg.listen_buffer, want.listen_buffer);
        assert_eq!(cfg.max_payload, want.max_payload);
    }
}
