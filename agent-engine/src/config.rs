//! Engine configuration: what the binaries fill in from flags and environment.

use std::path::{Path, PathBuf};
use std::time::Duration;

use core_events::{AgentKind, AgentName, EventName, Prefix};

use crate::error::{Error, Result};

/// Default of [`EngineConfig::listen_buffer`]: 31 events of the largest payload, or as many small
/// ones as the count bound allows (`max_queue`, at least 1024: by default 10 000, ~1.5 MiB).
pub const DEFAULT_LISTEN_BUFFER: usize = 4 * 1024 * 1024;

/// Everything one agent needs to run. Built by the binaries; defaults are those of SYSTEM.md.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub kind: AgentKind,
    pub name: AgentName,
    /// `redis://[user:pass@]host:port[/db]` or `unix:///path/to/socket`.
    pub redis_url: String,
    /// Credentials that override those in the URL (from the agent's credentials file).
    pub credentials: Option<agent_redis::Credentials>,
    /// The file `credentials` came from. Steps get the credentials read from it afresh at each run,
    /// so a rotated password reaches them without restarting the agent.
    pub credentials_file: Option<PathBuf>,
    /// Event directories, searched in order; a later directory wins by entry name.
    pub events_dirs: Vec<PathBuf>,
    /// How many runs may execute at once. 1 = strictly FIFO.
    pub concurrency: usize,
    /// Timeout of a whole run unless the event sets its own (`.timeout` file).
    pub default_timeout: Duration,
    /// Time between SIGTERM and SIGKILL when a step is cancelled or times out.
    pub kill_grace: Duration,
    /// Largest accepted event payload, in bytes.
    pub max_payload: usize,
    /// Largest number of entries the queue may hold before PUBLISHed events are refused.
    pub max_queue: usize,
    /// Bytes of PUBLISHed events the listener holds, received and not yet queued, before it refuses
    /// more (each counted with its channel and a fixed overhead): what a flood can cost in memory.
    /// Their count is bounded too, by `max_queue` (at least 1024).
    pub listen_buffer: usize,
    /// How many times a run may be started before it is abandoned (interrupted runs are retried).
    pub max_attempts: u32,
    /// How long run records and outputs are kept.
    pub run_ttl: Duration,
    /// Largest captured output of one run, in bytes.
    pub output_cap: usize,
    /// Approximate length the journal stream is trimmed to.
    pub journal_maxlen: usize,
    /// Event queued on the agent's very first start (the module-agent's `module.init`).
    pub startup_event: Option<EventName>,
    /// Event the agent queues for itself each time it starts again on a new leader (a failover
    /// moved it: `Error::LeaderMoved`); the node-agent's `cluster.leader`.
    pub leader_event: Option<EventName>,
    /// Set by the agent's main loop when this run follows a new leader.
    pub leader_moved: bool,
    /// On SIGTERM, how long running steps may go on before they are killed (and re-run on next start).
    pub shutdown_grace: Duration,
    /// Heartbeat key refresh interval; the key lives three intervals.
    pub heartbeat_interval: Duration,
    /// The module's age identity (module agents): every secret it decrypts is scrubbed from output.
    pub secret_key_file: Option<PathBuf>,
}

/// The defaults of the settings, spelled once: the flags (`cli.rs`), [`EngineConfig::new`] and
/// `agentctl explain` read them here.
pub mod defaults {
    /// A run's timeout, in seconds (`--timeout`, an event's `.timeout` overrides it).
    pub const TIMEOUT_SECS: u64 = 3600;
    /// Seconds between SIGTERM and SIGKILL (`--kill-grace`).
    pub const KILL_GRACE_SECS: u64 = 5;
    /// How many times a run may be started (`--max-attempts`, an event's `.retries` + 1 overrides).
    pub const MAX_ATTEMPTS: u32 = 3;
    /// Largest number of queued entries (`--max-queue`).
    pub const MAX_QUEUE: usize = 10_000;
    /// Seconds run records and outputs are kept (`--run-ttl`).
    pub const RUN_TTL_SECS: u64 = 7 * 24 * 3600;
    /// Largest captured output of one run, in bytes (`--output-cap`).
    pub const OUTPUT_CAP: usize = 256 * 1024;
    /// How many runs at once (`--concurrency`).
    pub const CONCURRENCY: usize = 1;
    /// Seconds running steps may go on after SIGTERM (`--shutdown-grace`).
    pub const SHUTDOWN_GRACE_SECS: u64 = 30;
    /// Entries the journal stream keeps (approximately: `XADD MAXLEN ~`).
    pub const JOURNAL_MAXLEN: usize = 10_000;
}

impl EngineConfig {
    /// A configuration with the documented defaults.
    pub fn new(kind: AgentKind, name: AgentName) -> Self {
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| "/".into());
        let events_dirs = default_events_dirs(kind, &home);
        EngineConfig {
            kind,
            name,
            redis_url: "redis://127.0.0.1:6379".into(),
            credentials: None,
            credentials_file: None,
            events_dirs,
            concurrency: defaults::CONCURRENCY,
            default_timeout: Duration::from_secs(defaults::TIMEOUT_SECS),
            kill_grace: Duration::from_secs(defaults::KILL_GRACE_SECS),
            max_payload: core_events::record::MAX_PAYLOAD,
            max_queue: defaults::MAX_QUEUE,
            listen_buffer: DEFAULT_LISTEN_BUFFER,
            max_attempts: defaults::MAX_ATTEMPTS,
            run_ttl: Duration::from_secs(defaults::RUN_TTL_SECS),
            output_cap: defaults::OUTPUT_CAP,
            journal_maxlen: defaults::JOURNAL_MAXLEN,
            startup_event: None,
            leader_event: None,
            leader_moved: false,
            shutdown_grace: Duration::from_secs(defaults::SHUTDOWN_GRACE_SECS),
            heartbeat_interval: Duration::from_secs(5),
            secret_key_file: match kind {
                AgentKind::Node => None,
                AgentKind::Module => module_secrets::default_path(Some(home.as_os_str())).ok(),
            },
        }
    }

    pub fn prefix(&self) -> Prefix {
        Prefix::new(self.kind, self.name.clone())
    }

    pub fn validate(&self) -> Result<()> {
        if self.concurrency == 0 {
            return Err(Error::Config("concurrency must be at least 1".into()));
        }
        if self.max_attempts == 0 {
            return Err(Error::Config("max attempts must be at least 1".into()));
        }
        if self.max_payload > core_events::record::MAX_PAYLOAD {
            return Err(Error::Config(format!(
                "max payload {} is above {}, the longest argument Linux passes to a step",
                self.max_payload,
                core_events::record::MAX_PAYLOAD
            )));
        }
        if self.listen_buffer < self.max_payload + 4096 {
            return Err(Error::Config(format!(
                "listen buffer {} is too small for one event of the largest payload (max payload {} + 4096)",
                self.listen_buffer, self.max_payload
            )));
        }
        if self.events_dirs.is_empty() {
            return Err(Error::Config(
                "at least one events directory is needed".into(),
            ));
        }
        Ok(())
    }
}

/// The default event directories of an agent (earlier first; later ones win). A module's are relative to
/// its Unix user's home; a node's are fixed FHS paths: the package's steps, then those of a hand
/// install (`/usr/local`), then the admin's overrides. A directory that does not exist is skipped.
pub fn default_events_dirs(kind: AgentKind, home: &Path) -> Vec<PathBuf> {
    match kind {
        AgentKind::Node => vec![
            PathBuf::from("/usr/share/agent/node-events"),
            PathBuf::from("/usr/local/share/agent/node-events"),
            PathBuf::from("/var/local/node-events"),
        ],
        AgentKind::Module => vec![
            home.join(".config/module-events"),
            home.join("module-events"),
        ],
    }
}
