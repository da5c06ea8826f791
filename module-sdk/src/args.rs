//! Validation of command line arguments: percentages, env keys, target agents, JSON payloads, values
//! read from standard input. Each refusal is an [`Error::Usage`] (exit code 2) that says what is
//! accepted.

use std::fmt;
use std::io::Read;
use std::str::FromStr;

use core_events::{AgentName, Prefix};

use crate::context::{parse_kind, var};
use crate::error::{Error, Result};

/// The argument that means "read the value from standard input".
pub const STDIN_ARG: &str = "-";

/// A progress percentage: a whole number from 0 to 100.
pub fn parse_percent(s: &str) -> Result<u8> {
    match s.trim().parse::<u8>() {
        Ok(n) if n <= 100 => Ok(n),
        _ => Err(Error::Usage(format!(
            "PERCENT must be a whole number from 0 to 100, not {s:?}"
        ))),
    }
}

/// A module.env key: a name a shell can use as a variable, `[A-Za-z_][A-Za-z0-9_]*`. The agent
/// exports only such fields to steps.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EnvKey(String);

impl EnvKey {
    pub fn new(s: &str) -> Result<Self> {
        if var::is_valid_name(s) {
            Ok(EnvKey(s.to_string()))
        } else {
            Err(Error::Usage(format!(
                "KEY {s:?} is not a valid variable name: it must match [A-Za-z_][A-Za-z0-9_]* \
                 (steps get module.env fields as environment variables)"
            )))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the name is the agent's (`REDIS_URL`, every `AGENT_*`), so a module.env value for it
    /// would never be exported to a step.
    pub fn is_reserved(&self) -> bool {
        var::is_reserved(&self.0)
    }

    /// Refuses reserved names, for writes.
    pub fn writable(self) -> Result<Self> {
        if self.is_reserved() {
            return Err(Error::Usage(format!(
                "{} is a name the agent keeps for itself (REDIS_URL and every AGENT_* name); \
                 a module.env value for it would never reach a step",
                self.0
            )));
        }
        Ok(self)
    }
}

impl FromStr for EnvKey {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        EnvKey::new(s)
    }
}

impl fmt::Display for EnvKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An agent given as `node/NAME` or `module/NAME`: its key prefix.
pub fn parse_agent(s: &str) -> Result<Prefix> {
    let usage = |why: String| {
        Error::Usage(format!(
            "AGENT must be node/NAME or module/NAME (e.g. node/node1, module/traefik0), not {s:?}: {why}"
        ))
    };
    let (kind, name) = s
        .split_once('/')
        .ok_or_else(|| usage("there is no '/'".into()))?;
    let kind = parse_kind(kind).ok_or_else(|| usage(format!("unknown kind {kind:?}")))?;
    let name = AgentName::new(name).map_err(|e| usage(e.to_string()))?;
    Ok(Prefix::new(kind, name))
}

/// Checks that `s` is one JSON value; returns it unchanged.
pub fn parse_json(s: &str) -> Result<String> {
    serde_json::from_str::<serde_json::Value>(s)
        .map(|_| s.to_string())
        .map_err(|e| Error::Usage(format!("the payload must be JSON ({e}): {s:?}")))
}

/// Reads a whole value from `input`. It must be UTF-8 (module.env and event data are text) and may not
/// contain NUL (the agent could not pass it in the environment). One trailing newline is dropped, so
/// `echo x | module-sdk env set K -` stores `x`.
pub fn read_value(mut input: impl Read) -> Result<String> {
    let mut bytes = Vec::new();
    input.read_to_end(&mut bytes).map_err(Error::Stdin)?;
    let mut s = String::from_utf8(bytes)
        .map_err(|_| Error::Usage("the value on standard input is not UTF-8 text".into()))?;
    if s.ends_with('\n') {
        s.pop();
        if s.ends_with('\r') {
            s.pop();
        }
    }
    Ok(s)
}

/// Refuses a module.env value the agent could not put in a step's environment.
pub fn check_env_value(key: &EnvKey, value: &str) -> Result<()> {
    if value.contains('\0') {
        return Err(Error::Usage(format!(
            "the value of {key} contains a NUL byte, which an environment variable cannot hold"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::exit_code;

    #[test]
    fn percent() {
        for (s, n) in [("0", 0), ("50", 50), ("100", 100), (" 7 ", 7)] {
            assert_eq!(parse_percent(s).unwrap(), n);
        }
        for s in ["101", "-1", "50%", "33.3", "", "x", "256"] {
            let e = parse_percent(s).unwrap_err();
            assert_eq!(e.exit_code(), exit_code::USAGE, "{s}");
            assert!(e.to_string().contains("0 to 100"), "{e}");
        }
    }

    #[test]
    fn env_keys() {
        for ok in ["FOO", "_x", "LE_EMAIL", "a1", "_"] {
            assert_eq!(EnvKey::new(ok).unwrap().as_str(), ok);
        }
        for bad in ["", "1A", "A-B", "A B", "é", "A=B", "A.B", "$A"] {
            let e = EnvKey::new(bad).unwrap_err();
            assert_eq!(e.exit_code(), exit_code::USAGE);
            assert!(e.to_string().contains("[A-Za-z_]"), "{e}");
        }
        assert!(EnvKey::new("AGENT_RUN_ID").unwrap().writable().is_err());
        assert!(EnvKey::new("REDIS_URL").unwrap().is_reserved());
        // Every AGENT_* name is the agent's, also ones it does not set yet: the engine would not
        // export them.
        assert!(EnvKey::new("AGENT_X").unwrap().writable().is_err());
        assert!(EnvKey::new("APP_X").unwrap().writable().is_ok());
    }

    #[test]
    fn agents() {
        assert_eq!(
            parse_agent("node/node1").unwrap().queue(),
            "node/node1/queue"
        );
        assert_eq!(
            parse_agent("module/traefik0").unwrap().queue(),
            "module/traefik0/queue"
        );
        for bad in [
            "node1",
            "host/node1",
            "module/",
            "module/../x",
            "module/a/b",
            "/x",
        ] {
            let e = parse_agent(bad).unwrap_err();
            assert_eq!(e.exit_code(), exit_code::USAGE);
            assert!(e.to_string().contains("node/NAME or module/NAME"), "{e}");
        }
    }

    #[test]
    fn json() {
        for ok in [
            "{}",
            "[1,2]",
            "\"s\"",
            "3",
            "null",
            " {\"a\": {\"b\": true}} ",
        ] {
            assert_eq!(parse_json(ok).unwrap(), ok);
        }
        for bad in ["", "{", "nope", "{} {}", "{'a':1}"] {
            assert_eq!(parse_json(bad).unwrap_err().exit_code(), exit_code::USAGE);
        }
    }

    #[test]
    fn stdin_values() {
        assert_eq!(read_value(&b"bar\n"[..]).unwrap(), "bar");
        assert_eq!(read_value(&b"bar\r\n"[..]).unwrap(), "bar");
        assert_eq!(read_value(&b"a\nb\n\n"[..]).unwrap(), "a\nb\n");
        assert_eq!(read_value(&b""[..]).unwrap(), "");
        assert!(read_value(&b"\xff"[..]).is_err());
        let k = EnvKey::new("K").unwrap();
        assert!(check_env_value(&k, "a\0b").is_err());
        assert!(check_env_value(&k, "multi\nline").is_ok());
    }
}
