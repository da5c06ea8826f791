//! The one error type of the crate.
//!
//! Messages are written for a sysadmin or module author reading a step's output: they say what is wrong
//! and what to do. They never contain a secret value or private key material (names of secrets, paths
//! and public keys are not secret).

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong with secrets.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A secret name that does not match `[A-Za-z0-9_.-]{1,64}` (not starting with `-`).
    #[error("secret name {name:?} is invalid: {reason}")]
    BadName { name: String, reason: &'static str },

    /// The stored value is not ASCII-armored age ciphertext.
    #[error(
        "the stored value is not an age-armored ciphertext (it must start with \
         \"-----BEGIN AGE ENCRYPTED FILE-----\"): it was not written by `module-sdk secret set`"
    )]
    NotArmored,

    /// The ciphertext is not for this identity. age cannot tell this apart from a damaged recipient
    /// stanza (the header line that carries the file key for one recipient): both mean that no key of
    /// ours opens it.
    #[error(
        "this secret was not encrypted to this module's key: it is for another public key (or its \
         recipient line is damaged); set it again with `module-sdk secret set`, or check that the \
         identity file is this module's"
    )]
    NotForThisKey,

    /// The ciphertext was for us but does not decrypt: changed, truncated or corrupted.
    #[error("ciphertext is damaged ({detail}): set the secret again")]
    Damaged { detail: String },

    /// age refused to encrypt (it does not with a valid recipient; kept for completeness).
    #[error("cannot encrypt: {0}")]
    Encrypt(String),

    /// A public key in Redis that is not an age x25519 recipient.
    #[error("{key} holds {value:?}, which is not an age public key (age1…): {reason}")]
    BadRecipient {
        key: String,
        value: String,
        reason: String,
    },

    /// The module has published no public key.
    #[error(
        "{key} is not set: module {module} has no public key yet (`module-sdk secret init`, run as \
         that module, creates its identity and publishes it)"
    )]
    NoPublicKey { key: String, module: String },

    /// The published public key is not the one of the identity file.
    #[error(
        "{key} holds {published}, but the identity {path} has the public key {local}: secrets \
         encrypted to one cannot be read with the other. If {path} is the module's real key, publish \
         it with `module-sdk secret init --force`; otherwise give the right file with --identity"
    )]
    KeyMismatch {
        key: String,
        published: String,
        local: String,
        path: String,
    },

    /// A cluster-wide key (`cluster_key`): missing on this node, not the cluster's, or not
    /// readable or publishable.
    #[error("{0}")]
    ClusterKey(String),

    /// `get` of a secret that is not set.
    #[error("{hash} has no secret {name}")]
    NotFound { hash: String, name: String },

    /// There is no identity file.
    #[error("no identity at {}: create it with `module-sdk secret init`", path.display())]
    NoIdentity { path: PathBuf },

    /// Creating an identity where one exists: never overwritten.
    #[error(
        "{} already exists: an identity is never overwritten (every secret encrypted to it would \
         become unreadable); move it away first if you really mean to replace it",
        path.display()
    )]
    IdentityExists { path: PathBuf },

    /// The identity file does not hold exactly one age x25519 secret key.
    #[error("{} is not an age identity file: {reason}", path.display())]
    BadIdentity { path: PathBuf, reason: String },

    /// The identity file can be read or written by other users.
    #[error(
        "{} is accessible to other users (mode {mode:04o}): a private key must be mode 0600; fix it \
         with `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    KeyFileMode { path: PathBuf, mode: u32 },

    /// A file system operation on the key files failed.
    #[error("{what} {}: {cause}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        cause: std::io::Error,
    },

    /// `HOME` is not set, so the default identity path is unknown.
    #[error("HOME is not set: give the identity file explicitly (--identity FILE)")]
    NoHome,

    /// A key rotation was interrupted and must be finished before the key is used.
    #[error(
        "a key rotation was interrupted ({} exists): run `module-sdk secret rotate` to finish or \
         undo it",
        path.display()
    )]
    RotationPending { path: PathBuf },

    /// An interrupted rotation left files that do not match what Redis holds.
    #[error("cannot finish the interrupted rotation: {0}")]
    RotationInconsistent(String),

    /// Another process holds the key directory's lock for too long.
    #[error(
        "the key directory {} is locked by another process (a rotation or init in progress); try \
         again",
        path.display()
    )]
    Locked { path: PathBuf },

    /// Optimistic concurrency gave up: the watched keys kept changing.
    #[error(
        "{what}: {key} changed {attempts} times while this was being done (another writer); nothing \
         was changed, try again"
    )]
    Conflict {
        what: String,
        key: String,
        attempts: u32,
    },

    /// A value too large or otherwise unusable as a secret.
    #[error("{0}")]
    BadValue(String),

    /// The value could not be read (standard input).
    #[error("cannot read the value: {0}")]
    Read(std::io::Error),

    /// One secret of several failed (rotation names the one that stopped it).
    #[error("secret {name}: {cause}")]
    InSecret { name: String, cause: Box<Error> },

    /// An error answered by Redis (or the connection to it).
    #[error("Redis error while {what}: {cause}{}", redis_hint(cause))]
    Redis {
        what: String,
        cause: redis::RedisError,
    },
}

fn redis_hint(e: &redis::RedisError) -> &'static str {
    if e.code() == Some("NOPERM") {
        " (under the Redis ACL a module may write only its own module/<id>/ keys: only the node \
         agent or an admin may write another module's secrets)"
    } else {
        ""
    }
}

impl Error {
    pub(crate) fn redis(what: impl Into<String>, source: redis::RedisError) -> Self {
        Error::Redis {
            what: what.into(),
            cause: source,
        }
    }

    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            what,
            path: path.into(),
            cause: source,
        }
    }

    /// The innermost error: through [`Error::InSecret`] wrappers.
    pub fn root(&self) -> &Error {
        match self {
            Error::InSecret { cause: source, .. } => source.root(),
            other => other,
        }
    }

    /// Whether this is a ciphertext that does not decrypt with the identity (any reason).
    pub fn is_decrypt_failure(&self) -> bool {
        matches!(
            self.root(),
            Error::NotArmored | Error::NotForThisKey | Error::Damaged { .. }
        )
    }

    /// Whether Redis refused the command under its ACL (`NOPERM`) or the credentials.
    pub fn is_permission_denied(&self) -> bool {
        match self.root() {
            Error::Redis { cause: source, .. } => agent_redis::is_denied(source),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_clear() {
        assert!(Error::NotForThisKey
            .to_string()
            .starts_with("this secret was not encrypted to this module's key"));
        let d = Error::Damaged {
            detail: "bad MAC".into(),
        };
        assert!(d.to_string().starts_with("ciphertext is damaged"));
        let wrapped = Error::InSecret {
            name: "DB".into(),
            cause: Box::new(d),
        };
        assert!(wrapped
            .to_string()
            .starts_with("secret DB: ciphertext is damaged"));
        assert!(wrapped.is_decrypt_failure());
        let m = Error::KeyFileMode {
            path: "/k".into(),
            mode: 0o644,
        };
        assert!(m.to_string().contains("mode 0644"), "{m}");
    }
}
