//! The one error type of the crate: each says what is wrong and what to do, never a password.

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input: a name, an address, a record that is not what it must be.
    #[error("{0}")]
    Invalid(String),
    /// Something named is not there (a repository, a snapshot, the key).
    #[error("{0}")]
    NotFound(String),
    /// restic failed: what it was doing, its exit code and the last lines it printed.
    #[error("restic {what}: {detail}")]
    Restic { what: String, detail: String },
    /// The cluster's backup key or a password's ciphertext.
    #[error("{0}")]
    Key(#[from] module_secrets::Error),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

impl Error {
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }
}
