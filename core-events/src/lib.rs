//! Protocol v1 of the agent system, as types.
//!
//! This crate is the only place that spells Redis key names, channel names, record fields and exit codes.
//! Every other crate speaks the protocol through it, so a name can never drift between a writer and a
//! reader. It is pure: no tokio, no Redis, no filesystem — only validation, builders and serde types.

pub mod backup;
pub mod cluster;
pub mod edge;
pub mod exit;
pub mod keys;
pub mod module_env;
pub mod module_image;
pub mod name;
pub mod output;
pub mod record;
pub mod step;
pub mod step_env;
pub mod update;

pub use keys::{AgentKind, Prefix};
pub use name::{AgentName, EventName, ModuleId, NameError, RunId};
pub use record::{
    JournalEntry, JournalStatus, Progress, QueueEntry, RollbackStatus, RunRecord, RunStatus,
};
pub use step::StepMessage;
