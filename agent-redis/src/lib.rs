//! Redis connections of every agent and tool: where the server is, with which credentials, how to
//! connect, how to tell an outage from a refusal, and how to ride out an outage.
//!
//! One crate owns this so each rule is written once: the agents, `agentctl`, `redis-acl`, the node's
//! tools and `module-sdk` connect through [`Target`]; a URL is shown only through [`url::mask`]; a
//! Redis error is sorted only by [`class::classify`]; a wait for Redis to come back is only
//! [`retry::retry`]. Finding the server by asking Sentinel (the cluster) belongs in [`Target`] and
//! nowhere else.
//!
//! **Invariant:** no password is ever displayed. [`Password`] has no `Display`, a redacted `Debug`,
//! and is zeroed when dropped; [`Target`]'s `Debug` shows the masked URL.

pub mod class;
pub mod credentials;
mod error;
pub mod password;
pub mod retry;
pub mod target;
pub mod url;

pub use class::{classify, is_denied, is_transient, is_wrong_type, ErrorClass};
pub use credentials::{Credentials, Owner};
pub use error::{Error, Result};
pub use password::Password;
pub use retry::{retry, Backoff, RetryError};
pub use target::{Target, COMMAND_TIMEOUT, CONNECT_TIMEOUT};
