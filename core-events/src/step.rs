//! What a step sends to its own agent: progress reports and emitted events, over the control socket.
//!
//! A step never publishes these itself. The agent hands every step one end of a Unix datagram
//! socket (fd [`CONTROL_FD`], named in the step's environment by [`CONTROL_FD_ENV`]); `module-sdk
//! progress` and `module-sdk emit` send one datagram per message, and the agent validates it, removes
//! known secret values and publishes it on the agent's own channels. So nothing a step reports
//! leaves unscrubbed, a step cannot report for another run, and reporting needs no Redis write access.
//!
//! A datagram is text: a kind line, an argument line, then the body (the rest of the datagram):
//!
//! ```text
//! progress\n<percent 0-100>\n<message, may be empty>
//! emit\n<event name>\n<JSON data>
//! ```

use crate::name::{EventName, NameError};

/// The environment variable that tells a step the control socket's file descriptor.
pub const CONTROL_FD_ENV: &str = crate::step_env::AGENT_CONTROL_FD;

/// The file descriptor a step finds the control socket on (after stdin, stdout and stderr).
pub const CONTROL_FD: i32 = 3;

/// Longest progress message; a longer one is refused (a progress line is for people to read).
pub const MAX_PROGRESS_MESSAGE: usize = 4096;

/// Largest emitted event's data: the same as an event's payload, so an emitted event can be
/// handed on as another agent's event data.
pub const MAX_EMIT_DATA: usize = crate::record::MAX_PAYLOAD;

/// Largest datagram the agent reads: the largest valid message with room for its two header lines.
pub const MAX_MESSAGE: usize = MAX_EMIT_DATA + 512;

/// One message from a step to its agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepMessage {
    /// How far the current step is.
    Progress {
        percent: u8,
        message: Option<String>,
    },
    /// An event to publish on `event/<agent>/<event>`; `data` is JSON.
    Emit { event: EventName, data: String },
}

/// Why a datagram from a step was refused (the agent journals this as a warning of the run).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepMessageError {
    #[error("message is not UTF-8")]
    NotUtf8,
    #[error("message has a NUL byte")]
    Nul,
    #[error("message is {len} bytes, the limit is {max}")]
    TooLarge { len: usize, max: usize },
    #[error("unknown message kind {0:?} (expected progress or emit)")]
    UnknownKind(String),
    #[error("progress percent {0:?} is not a whole number from 0 to 100")]
    BadPercent(String),
    #[error("progress message is {0} bytes, the limit is {MAX_PROGRESS_MESSAGE}")]
    MessageTooLong(usize),
    #[error("bad event name: {0}")]
    BadEvent(NameError),
    #[error("emitted data is not JSON: {0}")]
    NotJson(String),
    #[error("emitted data is {0} bytes, the limit is {MAX_EMIT_DATA}")]
    DataTooLarge(usize),
}

const KIND_PROGRESS: &str = "progress";
const KIND_EMIT: &str = "emit";

impl StepMessage {
    /// A progress report; `percent` above 100 is refused.
    pub fn progress(percent: u8, message: Option<String>) -> Result<Self, StepMessageError> {
        let m = StepMessage::Progress { percent, message };
        m.check()?;
        Ok(m)
    }

    /// An emitted event; `data` must be JSON.
    pub fn emit(event: EventName, data: String) -> Result<Self, StepMessageError> {
        let m = StepMessage::Emit { event, data };
        m.check()?;
        Ok(m)
    }

    /// The datagram to send.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            StepMessage::Progress { percent, message } => format!(
                "{KIND_PROGRESS}\n{percent}\n{}",
                message.as_deref().unwrap_or("")
            ),
            StepMessage::Emit { event, data } => format!("{KIND_EMIT}\n{event}\n{data}"),
        }
        .into_bytes()
    }

    /// Parses and validates a datagram from a step.
    pub fn decode(raw: &[u8]) -> Result<Self, StepMessageError> {
        if raw.len() > MAX_MESSAGE {
            return Err(StepMessageError::TooLarge {
                len: raw.len(),
                max: MAX_MESSAGE,
            });
        }
        let text = std::str::from_utf8(raw).map_err(|_| StepMessageError::NotUtf8)?;
        if text.contains('\0') {
            return Err(StepMessageError::Nul);
        }
        let mut parts = text.splitn(3, '\n');
        let kind = parts.next().unwrap_or_default();
        let arg = parts.next().unwrap_or_default();
        let body = parts.next().unwrap_or_default();
        let m = match kind {
            KIND_PROGRESS => StepMessage::Progress {
                percent: arg
                    .parse::<u8>()
                    .map_err(|_| StepMessageError::BadPercent(shorten(arg)))?,
                message: (!body.is_empty()).then(|| body.to_owned()),
            },
            KIND_EMIT => StepMessage::Emit {
                event: EventName::new(arg).map_err(StepMessageError::BadEvent)?,
                data: body.to_owned(),
            },
            other => return Err(StepMessageError::UnknownKind(shorten(other))),
        };
        m.check()?;
        Ok(m)
    }

    fn check(&self) -> Result<(), StepMessageError> {
        match self {
            StepMessage::Progress { percent, message } => {
                if *percent > 100 {
                    return Err(StepMessageError::BadPercent(percent.to_string()));
                }
                let len = message.as_deref().map_or(0, str::len);
                if len > MAX_PROGRESS_MESSAGE {
                    return Err(StepMessageError::MessageTooLong(len));
                }
                if message.as_deref().is_some_and(|m| m.contains('\0')) {
                    return Err(StepMessageError::Nul);
                }
            }
            StepMessage::Emit { data, .. } => {
                if data.len() > MAX_EMIT_DATA {
                    return Err(StepMessageError::DataTooLarge(data.len()));
                }
                serde_json::from_str::<serde_json::Value>(data)
                    .map_err(|e| StepMessageError::NotJson(e.to_string()))?;
            }
        }
        Ok(())
    }
}

fn shorten(s: &str) -> String {
    s.chars().take(40).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trips() {
        for m in [
            StepMessage::progress(50, Some("dumping\nthe db".into())).unwrap(),
            StepMessage::progress(0, None).unwrap(),
            StepMessage::emit(EventName::new("backup-done").unwrap(), "{\"a\":1}".into()).unwrap(),
        ] {
            assert_eq!(StepMessage::decode(&m.encode()).unwrap(), m);
        }
    }

    #[test]
    fn refusals() {
        let cases: [(&[u8], &str); 9] = [
            (b"progress\n101\n", "percent"),
            (b"progress\n-1\n", "percent"),
            (b"progress\n5\na\0b", "NUL"),
            (b"emit\n../x\n{}", "bad event"),
            (b"emit\nok\nnot json", "JSON"),
            (b"shout\n1\n", "unknown"),
            (b"\xff", "UTF-8"),
            (b"", "unknown"),
            (b"emit\nok", "JSON"),
        ];
        for (raw, want) in cases {
            let e = StepMessage::decode(raw).unwrap_err().to_string();
            assert!(e.contains(want), "{raw:?}: {e}");
        }
        let long = format!("progress\n1\n{}", "x".repeat(MAX_PROGRESS_MESSAGE + 1));
        assert!(StepMessage::decode(long.as_bytes()).is_err());
        assert!(StepMessage::decode(&vec![b'x'; MAX_MESSAGE + 1]).is_err());
        assert!(StepMessage::progress(101, None).is_err());
    }

    proptest! {
        #[test]
        fn decode_never_panics(raw in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = StepMessage::decode(&raw);
        }

        #[test]
        fn progress_round_trips(p in 0u8..=100, msg in proptest::option::of("\\PC{1,60}")) {
            let m = StepMessage::progress(p, msg).unwrap();
            prop_assert_eq!(StepMessage::decode(&m.encode()).unwrap(), m);
        }
    }
}
