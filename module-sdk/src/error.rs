//! The one error type of the crate, and the exit code each error maps to.
//!
//! Messages are written for the sysadmin reading a run's output: they say what was wrong and, where it
//! helps, what to do. They never contain the password of `REDIS_URL`.

/// Exit codes of the `module-sdk` command. They follow `sysexits.h` where one fits, so a step can pass
/// them on and `agentctl` users can tell the causes apart.
pub mod exit_code {
    /// `env get` of a key that is not set.
    pub const NOT_FOUND: i32 = 1;
    /// Bad command line arguments (the same code clap uses for its own usage errors).
    pub const USAGE: i32 = 2;
    /// Redis could not be reached (`EX_UNAVAILABLE`).
    pub const UNAVAILABLE: i32 = 69;
    /// Redis answered with an error we did not expect (`EX_SOFTWARE`).
    pub const SOFTWARE: i32 = 70;
    /// Standard input could not be read (`EX_IOERR`).
    pub const IO: i32 = 74;
    /// Redis refused the credentials or the command (ACL) (`EX_NOPERM`).
    pub const NO_PERMISSION: i32 = 77;
    /// Not inside a step: a variable the agent sets for steps is missing or invalid (`EX_CONFIG`).
    pub const CONFIG: i32 = 78;
    /// A secret does not decrypt: not encrypted to this key, or damaged (`EX_DATAERR`).
    pub const DATA_ERR: i32 = 65;
    /// The key directory is locked, or the keys changed concurrently: try again (`EX_TEMPFAIL`).
    pub const TEMP_FAIL: i32 = 75;
    /// `route add` of a route whose host and path another route has: it cannot be created
    /// (`EX_CANTCREAT`).
    pub const CONFLICT: i32 = 73;
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Variables the agent sets for every step are missing: we are not running inside a step.
    #[error(
        "{} not set: module-sdk reads the environment an agent gives each step; run it from a step \
         (or set the variable by hand to try it out)",
        list_vars(missing)
    )]
    NotInStep { missing: Vec<&'static str> },

    /// A variable is set but its value is not usable.
    #[error("{var} is invalid: {reason}")]
    BadVar { var: &'static str, reason: String },

    /// A command line argument is not valid.
    #[error("{0}")]
    Usage(String),

    /// `env get` of a key that is not set.
    #[error("{key} is not set in {hash}")]
    NotFound { hash: String, key: String },

    /// Redis could not be reached or the connection broke.
    #[error("Redis at {url} is unreachable while {what}: {cause}")]
    Unreachable {
        url: String,
        what: String,
        cause: redis::RedisError,
    },

    /// Redis refused the credentials or the command.
    #[error("Redis at {url} refused {what}: {cause}; {hint}")]
    Denied {
        url: String,
        what: String,
        hint: &'static str,
        cause: redis::RedisError,
    },

    /// Any other error answered by Redis.
    #[error("Redis error while {what}: {cause}")]
    Redis {
        what: String,
        cause: redis::RedisError,
    },

    /// Standard input could not be read (a value given as `-`).
    #[error("cannot read the value from standard input: {0}")]
    Stdin(std::io::Error),

    /// Standard output could not be written.
    #[error("cannot write to standard output: {0}")]
    Stdout(std::io::Error),

    /// A `secret` command failed (Redis errors are sorted into the variants above first).
    #[error("{0}")]
    Secret(module_secrets::Error),

    /// `route add` of a route whose host and path another route has already (the message names
    /// both routes and the owner of the other).
    #[error("{0}")]
    RouteConflict(String),
}

/// The exit code of a `secret` command's error.
fn secret_exit_code(e: &module_secrets::Error) -> i32 {
    use module_secrets::Error as S;
    match e.root() {
        S::BadName { .. } | S::BadValue(_) => exit_code::USAGE,
        S::NotArmored | S::NotForThisKey | S::Damaged { .. } => exit_code::DATA_ERR,
        S::NotFound { .. } | S::NoPublicKey { .. } => exit_code::NOT_FOUND,
        S::Io { .. } | S::Read(_) => exit_code::IO,
        S::Locked { .. } | S::Conflict { .. } => exit_code::TEMP_FAIL,
        S::Redis { .. } if e.is_permission_denied() => exit_code::NO_PERMISSION,
        S::Redis { .. } | S::Encrypt(_) => exit_code::SOFTWARE,
        _ => exit_code::CONFIG,
    }
}

fn list_vars(vars: &[&str]) -> String {
    match vars {
        [one] => format!("{one} is"),
        many => format!("{} are", many.join(", ")),
    }
}

impl Error {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::NotFound { .. } => exit_code::NOT_FOUND,
            Error::Usage(_) => exit_code::USAGE,
            Error::NotInStep { .. } | Error::BadVar { .. } => exit_code::CONFIG,
            Error::Unreachable { .. } => exit_code::UNAVAILABLE,
            Error::Denied { .. } => exit_code::NO_PERMISSION,
            Error::Redis { .. } => exit_code::SOFTWARE,
            Error::Stdin(_) => exit_code::IO,
            Error::Stdout(_) => exit_code::IO,
            Error::Secret(e) => secret_exit_code(e),
            Error::RouteConflict(_) => exit_code::CONFLICT,
        }
    }

    /// Sorts a Redis error into unreachable / denied / other. `url` must already be masked.
    pub(crate) fn from_redis(url: &str, what: impl Into<String>, e: redis::RedisError) -> Self {
        let what = what.into();
        let class = agent_redis::classify(&e);
        if class == agent_redis::ErrorClass::Denied {
            let hint = if e.code() == Some("NOPERM") {
                "an agent's Redis user may write only keys below its own prefix and publish only \
                 on its own channels"
            } else {
                "check the user and password in REDIS_URL (an agent gives each step its own)"
            };
            Error::Denied {
                url: url.to_string(),
                what,
                hint,
                cause: e,
            }
        } else if class == agent_redis::ErrorClass::Unreachable {
            Error::Unreachable {
                url: url.to_string(),
                what,
                cause: e,
            }
        } else {
            Error::Redis { what, cause: e }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_variables_are_all_named() {
        let e = Error::NotInStep {
            missing: vec!["AGENT_NAME", "AGENT_RUN_ID"],
        };
        let msg = e.to_string();
        assert!(
            msg.starts_with("AGENT_NAME, AGENT_RUN_ID are not set"),
            "{msg}"
        );
        assert_eq!(e.exit_code(), exit_code::CONFIG);
        let one = Error::NotInStep {
            missing: vec!["REDIS_URL"],
        };
        assert!(one.to_string().starts_with("REDIS_URL is not set"));
    }

    #[test]
    fn redis_errors_are_sorted() {
        let io =
            redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        let e = Error::from_redis("redis://h:1", "publishing", io);
        assert_eq!(e.exit_code(), exit_code::UNAVAILABLE);
        assert!(e.to_string().contains("redis://h:1"), "{e}");
        let auth = redis::RedisError::from((redis::ErrorKind::AuthenticationFailed, "bad pass"));
        assert_eq!(
            Error::from_redis("u", "x", auth).exit_code(),
            exit_code::NO_PERMISSION
        );
        let other = redis::RedisError::from((redis::ErrorKind::UnexpectedReturnType, "type"));
        assert_eq!(
            Error::from_redis("u", "x", other).exit_code(),
            exit_code::SOFTWARE
        );
    }
}
