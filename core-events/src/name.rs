//! Validated names: agents, events and run ids.
//!
//! Anything that arrives from the wire (a channel suffix, a stream field) must pass through one of these
//! constructors before it is used, because event names become directory names when steps are planned.
//! The rules are deliberately narrow: `[A-Za-z0-9._-]`, bounded length, no leading dot (so `.` and `..`
//! and hidden names are impossible) and no `..` anywhere.

use std::fmt;

/// Longest accepted event name, in bytes.
pub const MAX_EVENT_NAME: usize = 128;
/// Longest accepted agent name (a short hostname or a module id; both must fit a Unix user name).
pub const MAX_AGENT_NAME: usize = 32;
/// Longest accepted run id.
pub const MAX_RUN_ID: usize = 64;

/// Why a name was refused. The message is meant for a sysadmin reading a journal entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{what} is empty")]
    Empty { what: &'static str },
    #[error("{what} is {len} bytes long, the limit is {max}")]
    TooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{what} {shown:?} contains {bad:?}: only A-Z a-z 0-9 . _ - are allowed")]
    BadChar {
        what: &'static str,
        shown: String,
        bad: char,
    },
    #[error("{what} {shown:?} must not start with '.' or contain '..'")]
    Dots { what: &'static str, shown: String },
    #[error("{what} {shown:?} must start with a letter or digit")]
    BadStart { what: &'static str, shown: String },
    #[error("module id {shown:?} must match [a-z][a-z0-9]{{0,30}} (it becomes a Unix user name, a home and a key prefix)")]
    BadModuleId { shown: String },
}

/// Shows at most 64 characters of refused input, with control characters escaped by `{:?}`.
fn shown(input: &str) -> String {
    input.chars().take(64).collect()
}

fn check(input: &str, what: &'static str, max: usize) -> Result<(), NameError> {
    if input.is_empty() {
        return Err(NameError::Empty { what });
    }
    if input.len() > max {
        return Err(NameError::TooLong {
            what,
            len: input.len(),
            max,
        });
    }
    if let Some(bad) = input
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(NameError::BadChar {
            what,
            shown: shown(input),
            bad,
        });
    }
    if input.starts_with('.') || input.contains("..") {
        return Err(NameError::Dots {
            what,
            shown: shown(input),
        });
    }
    Ok(())
}

macro_rules! validated_name {
    ($(#[$doc:meta])* $ty:ident, $what:literal, $max:expr, $extra:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
        #[serde(transparent)]
        pub struct $ty(String);

        impl $ty {
            /// Validates `input`; the error says what was wrong in words a sysadmin can act on.
            pub fn new(input: impl Into<String>) -> Result<Self, NameError> {
                let input = input.into();
                check(&input, $what, $max)?;
                let extra: fn(&str) -> Result<(), NameError> = $extra;
                extra(&input)?;
                Ok(Self(input))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $ty {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

validated_name!(
    /// The name of an event, e.g. `module.init`. It names a directory below each event dir.
    EventName,
    "event name",
    MAX_EVENT_NAME,
    |_| Ok(())
);

/// Suffix of the event that undoes a failed run: the rollback of `module.init` is
/// `module.init.rollback`.
pub const ROLLBACK_SUFFIX: &str = ".rollback";

impl EventName {
    /// True for a rollback event (`….rollback`). A rollback event never gets a rollback of its own.
    pub fn is_rollback(&self) -> bool {
        self.0.ends_with(ROLLBACK_SUFFIX)
    }

    /// The event the engine plans when a run of this one fails or is cancelled: `<self>.rollback`.
    /// `None` for a rollback event itself (no recursion) and for a name too long to take the suffix.
    pub fn rollback(&self) -> Option<EventName> {
        if self.is_rollback() {
            return None;
        }
        EventName::new(format!("{}{ROLLBACK_SUFFIX}", self.0)).ok()
    }
}

validated_name!(
    /// The name of an agent: a node's short hostname or a module id such as `traefik0`.
    /// It must also be usable as a Unix user name, so it starts with a letter or digit.
    AgentName,
    "agent name",
    MAX_AGENT_NAME,
    |s| {
        if s.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            Ok(())
        } else {
            Err(NameError::BadStart { what: "agent name", shown: shown(s) })
        }
    }
);

/// Longest accepted module id: it must fit a Unix user name, and Redis ACL user `module-<id>`.
pub const MAX_MODULE_ID: usize = 31;

/// The id of a module, e.g. `traefik0`: `[a-z][a-z0-9]{0,30}`. Stricter than an [`AgentName`]
/// because it also becomes a Unix user and group name, a home directory (`/home/<id>`), the Redis ACL
/// user `module-<id>` and the key prefix `module/<id>`. Every node tool checks it with this type.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ModuleId(AgentName);

impl ModuleId {
    pub fn new(input: impl Into<String>) -> Result<Self, NameError> {
        let input = input.into();
        let mut chars = input.chars();
        let ok = input.len() <= MAX_MODULE_ID
            && matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
            && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if !ok {
            return Err(NameError::BadModuleId {
                shown: shown(&input),
            });
        }
        Ok(Self(AgentName::new(input)?))
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The module's agent name (its module-agent's name and key prefix name).
    pub fn agent_name(&self) -> &AgentName {
        &self.0
    }
}

impl fmt::Display for ModuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_str())
    }
}

impl std::str::FromStr for ModuleId {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl AsRef<str> for ModuleId {
    fn as_ref(&self) -> &str {
        self.0.as_str()
    }
}

validated_name!(
    /// The id of one run. Defaults to the queue entry's stream id (`1700000000000-0`); a client may choose
    /// its own so it can follow or cancel the run before it starts.
    RunId,
    "run id",
    MAX_RUN_ID,
    |_| Ok(())
);

impl RunId {
    /// The run id of an agent's startup event `event` (`--startup-event`): `startup-<event>`.
    /// Refused (too long) for event names longer than 56 bytes.
    pub fn startup(event: &EventName) -> Result<RunId, NameError> {
        RunId::new(format!("startup-{event}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn module_ids() {
        for ok in ["a", "hello0", "traefik12", &"a".repeat(31)] {
            let id = ModuleId::new(ok).unwrap();
            assert_eq!(id.as_str(), ok);
            assert_eq!(id.agent_name().as_str(), ok);
        }
        for bad in [
            "",
            "0a",
            "Hello",
            "a-b",
            "a.b",
            "a_b",
            "Root;x",
            "../etc",
            "a b",
            "-a",
            "é",
            &"a".repeat(32),
        ] {
            let e = ModuleId::new(bad).unwrap_err();
            assert!(matches!(e, NameError::BadModuleId { .. }), "{bad:?}: {e}");
            assert!(e.to_string().contains("[a-z][a-z0-9]{0,30}"), "{e}");
        }
    }

    #[test]
    fn startup_run_ids() {
        let e = EventName::new("module.init").unwrap();
        assert_eq!(RunId::startup(&e).unwrap().as_str(), "startup-module.init");
        assert!(RunId::startup(&EventName::new("x".repeat(57)).unwrap()).is_err());
    }

    #[test]
    fn accepts_usual_names() {
        for ok in [
            "module.init",
            "backup",
            "configure-module",
            "a_b",
            "x1",
            "1700000000000-0",
        ] {
            EventName::new(ok).unwrap();
            RunId::new(ok).unwrap();
        }
        for ok in ["node1", "traefik0", "nextcloud0", "host-a.b"] {
            AgentName::new(ok).unwrap();
        }
    }

    #[test]
    fn refuses_dangerous_names() {
        let long = "a".repeat(MAX_EVENT_NAME + 1);
        let bad = [
            "",
            ".",
            "..",
            "../etc",
            "a/b",
            "/",
            "a\0b",
            ".hidden",
            "a..b",
            "a b",
            "a*",
            "é",
            "a\n",
            long.as_str(),
            "a:b",
            "x?",
            "[x]",
        ];
        for b in bad {
            assert!(EventName::new(b).is_err(), "{b:?} must be refused");
        }
        assert!(matches!(
            AgentName::new("-x"),
            Err(NameError::BadStart { .. })
        ));
        assert!(matches!(
            AgentName::new("_x"),
            Err(NameError::BadStart { .. })
        ));
    }

    #[test]
    fn error_messages_say_what_is_wrong() {
        let e = EventName::new("a/b").unwrap_err().to_string();
        assert!(e.contains("'/'"), "{e}");
        let e = EventName::new("x".repeat(200)).unwrap_err().to_string();
        assert!(e.contains("200 bytes") && e.contains("128"), "{e}");
    }

    #[test]
    fn rollback_names() {
        let e = EventName::new("module.init").unwrap();
        let r = e.rollback().unwrap();
        assert_eq!(r.as_str(), "module.init.rollback");
        assert!(r.is_rollback() && !e.is_rollback());
        assert_eq!(r.rollback(), None, "a rollback has no rollback");
        assert_eq!(
            EventName::new("rollback")
                .unwrap()
                .rollback()
                .unwrap()
                .as_str(),
            "rollback.rollback"
        );
        let long = EventName::new("x".repeat(MAX_EVENT_NAME - 2)).unwrap();
        assert_eq!(long.rollback(), None);
    }

    #[test]
    fn serde_validates() {
        let ok: EventName = serde_json::from_str("\"backup\"").unwrap();
        assert_eq!(ok.as_str(), "backup");
        assert!(serde_json::from_str::<EventName>("\"../x\"").is_err());
    }

    proptest! {
        #[test]
        fn valid_names_never_escape_a_directory(s in "\\PC{0,150}") {
            if let Ok(n) = EventName::new(s.clone()) {
                let p = std::path::Path::new("/events").join(n.as_str());
                prop_assert_eq!(p.parent(), Some(std::path::Path::new("/events")));
                prop_assert_eq!(p.components().count(), 3);
                prop_assert!(!s.contains('/') && !s.contains('\0') && !s.starts_with('.'));
            }
        }

        #[test]
        fn charset_names_round_trip(s in "[A-Za-z0-9_-][A-Za-z0-9._-]{0,60}") {
            prop_assume!(!s.contains(".."));
            let n = EventName::new(s.clone()).unwrap();
            prop_assert_eq!(n.to_string(), s.clone());
            let j = serde_json::to_string(&n).unwrap();
            prop_assert_eq!(serde_json::from_str::<EventName>(&j).unwrap(), n);
        }
    }
}
