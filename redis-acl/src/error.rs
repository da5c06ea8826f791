//! The one error type of the crate. No variant ever carries a password: Redis replies are scrubbed
//! of every password the failed command sent before they are stored here.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Redis refused or failed a command. `message` is Redis's reply (scrubbed of passwords).
    #[error("{what}: {message}")]
    Redis {
        what: String,
        /// The error code of Redis's reply (`NOPERM`, `WRONGPASS`, `ERR`, …), when it had one.
        code: Option<String>,
        /// Unreachable (worth trying again later), denied, or other.
        class: agent_redis::ErrorClass,
        message: String,
    },

    /// A credentials file could not be read or written, or a password made.
    #[error(transparent)]
    Credentials(#[from] agent_redis::Error),

    /// The credentials file to write already holds another user's credentials.
    #[error(
        "{} holds the credentials of {found}, not of {expected}: choose another file or remove it first",
        path.display()
    )]
    OtherUsersFile {
        path: PathBuf,
        found: String,
        expected: String,
    },

    /// The node's name is another kind of agent's in the agent name registry.
    #[error("{name} is a {kind}'s name in {registry}: a node cannot have it (their channels would be the same)")]
    NameTaken {
        name: String,
        registry: String,
        kind: String,
    },

    /// `rotate` on an agent whose ACL user does not exist.
    #[error("Redis has no ACL user {0}; create it with `agentctl redis add-agent`")]
    NoSuchUser(String),
}

impl Error {
    /// How a Redis error counts (`None`: not a Redis error).
    pub fn redis_class(&self) -> Option<agent_redis::ErrorClass> {
        match self {
            Error::Redis { class, .. } => Some(*class),
            _ => None,
        }
    }

    /// Redis said the connection's user may not run the command (`NOPERM`).
    pub fn is_permission_denied(&self) -> bool {
        matches!(self, Error::Redis { code: Some(c), .. } if c == "NOPERM")
    }

    /// Builds [`Error::Redis`] from a redis error, removing every `secret` from its text.
    pub(crate) fn redis(what: impl Into<String>, e: &redis::RedisError, secrets: &[&str]) -> Self {
        Error::Redis {
            what: what.into(),
            code: e.code().map(str::to_string),
            class: agent_redis::classify(e),
            message: scrub(&e.to_string(), secrets),
        }
    }
}

/// Replaces every occurrence of every non-empty secret by `***`.
pub(crate) fn scrub(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_string();
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        out = out.replace(s, "***");
    }
    out
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_errors_are_scrubbed() {
        let e = redis::RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError),
            "Error in ACL SETUSER modifier",
            "'>deadbeef': whatever".to_string(),
        ));
        let err = Error::redis("creating user x", &e, &["deadbeef", ""]);
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains("deadbeef"), "{shown}");
        assert!(shown.contains("***"), "{shown}");
    }
}
