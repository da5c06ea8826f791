//! The engine's one error type. Binaries add context with `anyhow` at their edge.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    /// The Redis URL or credentials are unusable.
    #[error(transparent)]
    Target(#[from] agent_redis::Error),
    #[error("invalid name: {0}")]
    Name(#[from] core_events::NameError),
    #[error("cannot read {path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{0}")]
    Config(String),
    #[error("shutting down")]
    Shutdown,
    /// The server that takes the writes is another one now (a failover, or this node's Redis
    /// joined or left a cluster): the agent starts again, connected to it (`cli::main`).
    #[error("the leader moved from {from} to {to}")]
    LeaderMoved { from: String, to: String },
    /// A Lua script of the store replied something its header does not document (a reply of another
    /// shape, an unknown outcome word, a status that is not a run status): never read as a default.
    #[error("unexpected reply from the {script} script: {reason}")]
    ScriptReply {
        script: &'static str,
        reason: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<agent_redis::RetryError> for Error {
    fn from(e: agent_redis::RetryError) -> Self {
        match e {
            agent_redis::RetryError::Redis(e) => Error::Redis(e),
            agent_redis::RetryError::Shutdown => Error::Shutdown,
        }
    }
}
