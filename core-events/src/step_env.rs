//! The environment a step gets from its agent: every name, and the one rule for which names are the
//! agent's own.
//!
//! The agent exports the module's module.env fields first and then these, so a step always sees the
//! agent's values. Every `AGENT_*` name and `REDIS_URL` is reserved ([`is_reserved`]): a module.env
//! field with such a name is never exported (the agent journals a warning) and `module-sdk env set`
//! refuses it.

/// The agent's name (`node1`, `traefik0`).
pub const AGENT_NAME: &str = "AGENT_NAME";
/// `node` or `module`.
pub const AGENT_KIND: &str = "AGENT_KIND";
/// The agent's key prefix (`node/node1`, `module/traefik0`).
pub const AGENT_KEY_PREFIX: &str = "AGENT_KEY_PREFIX";
/// The event being run (in a rollback step: the event that failed).
pub const AGENT_EVENT: &str = "AGENT_EVENT";
/// The run's id.
pub const AGENT_RUN_ID: &str = "AGENT_RUN_ID";
/// The step's file name in its event directory.
pub const AGENT_STEP: &str = "AGENT_STEP";
/// How many times this run has started (1 the first time).
pub const AGENT_ATTEMPT: &str = "AGENT_ATTEMPT";
/// The agent's Redis server with the agent's own credentials.
pub const REDIS_URL: &str = "REDIS_URL";
/// Set to [`ROLLBACK_YES`] in the steps of a rollback (`E.rollback`).
pub const AGENT_ROLLBACK: &str = "AGENT_ROLLBACK";
/// In a rollback step: the step of the run that failed, when one did.
pub const AGENT_FAILED_STEP: &str = "AGENT_FAILED_STEP";
/// In a rollback step: the status the run ended with (`failed`, `timeout`, `cancelled`).
pub const AGENT_RUN_STATUS: &str = "AGENT_RUN_STATUS";
/// The file descriptor of the step's control socket (see [`crate::step`]).
pub const AGENT_CONTROL_FD: &str = "AGENT_CONTROL_FD";

/// The value of [`AGENT_ROLLBACK`] in a rollback step.
pub const ROLLBACK_YES: &str = "1";

/// Every name the agent sets (the rollback ones only in rollback steps).
pub const ALL: [&str; 12] = [
    AGENT_NAME,
    AGENT_KIND,
    AGENT_KEY_PREFIX,
    AGENT_EVENT,
    AGENT_RUN_ID,
    AGENT_STEP,
    AGENT_ATTEMPT,
    REDIS_URL,
    AGENT_ROLLBACK,
    AGENT_FAILED_STEP,
    AGENT_RUN_STATUS,
    AGENT_CONTROL_FD,
];

/// The prefix of every name the agent keeps for itself, now or in a later version.
pub const RESERVED_PREFIX: &str = "AGENT_";

/// Whether `name` is the agent's: a module.env field by this name is never exported to steps.
pub fn is_reserved(name: &str) -> bool {
    name == REDIS_URL || name.starts_with(RESERVED_PREFIX)
}

/// Whether `name` can be an environment variable name a shell reads: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Whether `AGENT_ROLLBACK`'s value says this is a rollback step.
pub fn is_rollback(value: Option<&std::ffi::OsStr>) -> bool {
    value.is_some_and(|v| v == ROLLBACK_YES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_the_agent_sets_is_reserved() {
        for name in ALL {
            assert!(is_reserved(name), "{name}");
            assert!(is_valid_name(name), "{name}");
        }
        assert!(is_reserved("AGENT_X"));
        assert!(!is_reserved("DB_HOST"));
        assert!(!is_reserved("agent_name"));
        assert!(!is_valid_name("1X") && !is_valid_name("A-B") && !is_valid_name(""));
    }

    #[test]
    fn rollback_is_exactly_one() {
        assert!(is_rollback(Some("1".as_ref())));
        for v in ["", "0", "true", "yes"] {
            assert!(!is_rollback(Some(v.as_ref())), "{v}");
        }
        assert!(!is_rollback(None));
    }
}
