//! Backups of modules with restic: the repositories of the cluster (`repo`: their records in Redis,
//! their passwords encrypted to the cluster's backup key), restic run with them (`restic`: the
//! password and credentials by environment, never in argv; its JSON read into typed reports), and
//! each module's backup status (`status`), which says `failed` until a later backup succeeds.
//!
//! Used by the node's backup steps (`node-agent backup …`) and by `agentctl backup`. Key names and
//! fields come from `core_events::backup`.

pub mod error;
pub mod repo;
pub mod restic;
pub mod status;

pub use error::{Error, Result};
pub use repo::Repository;

/// Now, RFC 3339 (seconds), as the status and the records write times.
pub fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}
