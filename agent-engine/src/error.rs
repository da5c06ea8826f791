//! The engine's one error type. Binaries add context with `anyhow` at their edge.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    #[error("invalid Redis URL: {0}")]
    RedisUrl(String),
    #[error("cannot read Redis credentials file {path}: {source}")]
    Credentials {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("Redis credentials file {path}: {reason}")]
    CredentialsFormat { path: PathBuf, reason: String },
    #[error("invalid name: {0}")]
    Name(#[from] core_events::NameError),
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(String),
    #[error("shutting down")]
    Shutdown,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
