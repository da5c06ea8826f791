//! The event engine shared by `node-agent` and `module-agent`.
//!
//! One engine, configured twice: it takes events from Redis (PUBLISH on `<agent>:*` or XADD on the
//! agent's queue stream), makes every one of them a durable queue entry, plans its steps from the event
//! directories, runs them as child processes and records what happened (run record, output, journal,
//! progress). The binaries only parse arguments and build an [`EngineConfig`].

pub mod agent;
mod cgroup;
pub mod cli;
pub mod config;
mod context;
pub mod error;
mod listener;
pub mod plan;
mod procs;
mod queue;
mod runner;
pub mod scrub;
mod secrets;
mod spawn;
mod step_process;
mod store;
pub mod time;
mod triggers;

pub use agent::{run_agent, start_agent, AgentHandle};
pub use config::{default_events_dirs, EngineConfig};
pub use error::Error;
pub use plan::{plan_event, EventPlan, EventSettings, PlanEntry, PlanVerdict};

/// Shows untrusted input safely in a record or journal entry: lossy UTF-8, at most 200 characters.
pub(crate) fn shown(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).chars().take(200).collect()
}
