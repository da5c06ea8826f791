//! `module-sdk`: what step executables and module authors use to talk to the agent system.
//!
//! A step is started by an agent with its context in the environment (`AGENT_NAME`, `AGENT_KIND`,
//! `AGENT_KEY_PREFIX`, `AGENT_EVENT`, `AGENT_RUN_ID`, `AGENT_STEP`, `AGENT_ATTEMPT`, `REDIS_URL`).
//! This library reads and validates that context ([`StepContext`], [`AgentContext`]), validates
//! command arguments ([`args`]) and performs the few Redis operations a step needs ([`Session`]):
//! progress reports, the module's env hash, emitted events and queuing events for other agents.
//! Key and channel names all come from `core_events`.
//!
//! Runs are at-least-once: a run interrupted by an agent restart is started again from its first
//! step. Steps must therefore be idempotent.

pub mod args;
pub mod cli;
pub mod context;
pub mod control;
pub mod error;
mod lint;
pub mod ops;
pub mod quadlet;
pub mod redis_url;
pub mod route;
pub mod secret;
mod sign;
mod unit;

pub use args::EnvKey;
pub use context::{AgentContext, StepContext};
pub use error::{exit_code, Error, Result};
pub use ops::{Session, Timeouts};
pub use redis_url::RedisUrl;
