//! The crate's one error type. No variant carries a password; a variant either says its cause in
//! its message or hands it on as its `source()`, never both (so a printer of the chain shows each
//! cause once).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Redis URL does not parse. `url` is masked; `reason` is the parser's.
    #[error("invalid Redis URL {url}: {reason}")]
    Url { url: String, reason: String },

    /// A file (a credentials file or its directory) could not be read, written or moved.
    #[error("{action} {}", path.display())]
    File {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A credentials file exists but is not one.
    #[error("Redis credentials file {}: {reason}", path.display())]
    CredentialsFormat { path: PathBuf, reason: String },

    /// `--owner` names no Unix user.
    #[error("no Unix user named {0:?}")]
    NoSuchOwner(String),

    /// The operating system's random source failed.
    #[error("cannot generate random bytes: {0}")]
    Random(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
