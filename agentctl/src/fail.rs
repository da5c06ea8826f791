//! Errors that carry the exit code agentctl ends with.

use std::fmt;

/// An error with a chosen exit code (see the EXIT CODES section of `--help`). Any other error
/// exits with 1.
#[derive(Debug)]
pub struct Fail {
    pub code: i32,
    pub message: String,
}

impl fmt::Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Fail {}

pub fn fail(code: i32, message: impl Into<String>) -> anyhow::Error {
    Fail {
        code,
        message: message.into(),
    }
    .into()
}

/// Invalid input: exit 65, like a run the agent refuses.
pub fn invalid(message: impl Into<String>) -> anyhow::Error {
    fail(core_events::exit::INVALID, message)
}

/// The exit code for an error: the innermost [`Fail`]'s, else 1.
pub fn code_of(e: &anyhow::Error) -> i32 {
    e.chain()
        .find_map(|c| c.downcast_ref::<Fail>())
        .map(|f| f.code)
        .unwrap_or(1)
}

/// The error and its causes on one line, like `{:#}`. The workspace's errors say each cause once
/// (shown or chained, never both: a test below checks); a foreign error that repeats its cause is
/// shown without the repetition.
pub fn render(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if text.is_empty() || out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn rendering_drops_repeated_causes() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        #[derive(Debug)]
        struct Wrap(std::io::Error);
        impl std::fmt::Display for Wrap {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "redis: {}", self.0)
            }
        }
        impl std::error::Error for Wrap {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let e = anyhow::Error::new(Wrap(io)).context("cannot connect");
        assert_eq!(render(&e), "cannot connect: redis: refused");
        assert_eq!(render(&anyhow::anyhow!("plain")), "plain");
    }

    #[test]
    fn the_workspaces_errors_say_each_cause_once() {
        // Each error type either shows its cause or chains it, never both: rendering the chain
        // then needs no de-duplication, and `{:#}` shows the same.
        let io = || std::io::Error::new(std::io::ErrorKind::PermissionDenied, "denied-xyz");
        let errors: Vec<anyhow::Error> = vec![
            agent_engine::error::Error::Io {
                path: "/x".into(),
                cause: io(),
            }
            .into(),
            module_signing::Error::Io {
                path: "/x".into(),
                cause: io(),
            }
            .into(),
            agent_redis::Error::File {
                action: "cannot read",
                path: "/x".into(),
                source: io(),
            }
            .into(),
            redis_acl::Error::Credentials(agent_redis::Error::File {
                action: "cannot read",
                path: "/x".into(),
                source: io(),
            })
            .into(),
        ];
        for e in errors {
            let e = e.context("outer");
            let shown = render(&e);
            assert_eq!(shown, format!("{e:#}"), "a cause repeated");
            assert_eq!(shown.matches("denied-xyz").count(), 1, "{shown}");
        }
    }

    #[test]
    fn codes() {
        assert_eq!(code_of(&anyhow::anyhow!("x")), 1);
        assert_eq!(code_of(&invalid("bad")), 65);
        let wrapped = Err::<(), _>(fail(69, "none")).context("outer").unwrap_err();
        assert_eq!(code_of(&wrapped), 69);
    }
}
