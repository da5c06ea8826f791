//! The edge crate's one error type.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Caddy refused the configuration; the one it ran before goes on serving.
    #[error("Caddy refused the new configuration (the previous one goes on serving): {0}")]
    Refused(String),
    /// Caddy's admin socket does not answer.
    #[error("Caddy's admin API at {socket} does not answer: {reason} (is the edge proxy running? systemctl status agent-edge)")]
    Unreachable { socket: PathBuf, reason: String },
    /// Caddy answered something unexpected.
    #[error("Caddy: {0}")]
    Caddy(String),
    /// A certificate or its key is not usable.
    #[error("certificate: {0}")]
    Certificate(String),
    /// Issuing a certificate from the ACME server failed.
    #[error("ACME: {0}")]
    Acme(String),
    /// A setting in Redis is not usable.
    #[error("edge setting {key} {field}: {reason}")]
    Setting {
        key: String,
        field: String,
        reason: String,
    },
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

impl Error {
    /// Whether trying again later may succeed (Caddy or Redis not there yet).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Unreachable { .. } => true,
            Error::Redis(e) => agent_redis::is_transient(e),
            _ => false,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
