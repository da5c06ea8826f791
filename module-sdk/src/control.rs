//! Reporting to the step's own agent through its control socket (see `core_events::step`).
//!
//! Inside a step, `progress` and `emit` never publish themselves: they hand the message to the agent,
//! which removes known secret values and publishes it on its own channels. A step therefore needs no
//! Redis write access to report, and cannot leak a secret through a report by mistake. Outside a step
//! (no `AGENT_CONTROL_FD`), there is no agent to hand it to, and the caller publishes itself.

use std::os::fd::BorrowedFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixDatagram;

use core_events::step::CONTROL_FD_ENV;
use core_events::{AgentName, EventName, StepMessage};

use crate::error::{Error, Result};
use crate::ops::{Session, Timeouts};
use crate::redis_url::RedisUrl;

/// What became of an emitted event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emitted {
    /// Handed to the step's agent, which removes known secret values and publishes it.
    ToAgent,
    /// Published from here on `event/<agent>/<event>`, to this many receivers.
    Published(i64),
}

/// Emits `event` with the JSON `data` (checked by the caller) as `module-sdk emit` does: inside a
/// step it is handed to the agent; outside one it is published from here, as the agent and on the
/// Redis that `outside` gives (asked only then).
pub fn emit(
    event: &EventName,
    data: String,
    outside: impl FnOnce() -> Result<(AgentName, RedisUrl)>,
) -> Result<Emitted> {
    let msg =
        StepMessage::emit(event.clone(), data.clone()).map_err(|e| Error::Usage(e.to_string()))?;
    if send(&msg)? {
        return Ok(Emitted::ToAgent);
    }
    // Not in a step: nobody to hand it to, so it is published from here.
    let (agent, url) = outside()?;
    let n = Session::connect(&url, Timeouts::NORMAL)?.emit(&agent, event, &data)?;
    Ok(Emitted::Published(n))
}

/// Sends `msg` to the agent. `Ok(false)`: not in a step of an agent that gives a control socket.
pub fn send(msg: &StepMessage) -> Result<bool> {
    let Some(raw) = std::env::var_os(CONTROL_FD_ENV) else {
        return Ok(false);
    };
    let bad = |reason: String| Error::BadVar {
        var: CONTROL_FD_ENV,
        reason,
    };
    let fd: i32 = raw
        .to_str()
        .and_then(|s| s.parse().ok())
        .filter(|fd| *fd > 2)
        .ok_or_else(|| bad(format!("{raw:?} is not a file descriptor number above 2")))?;
    // Only a socket is written to: a wrong number must not write into some file the step has open.
    let is_socket = {
        // SAFETY: borrowed only for the fstat below, while this process has it open (checked by
        // fstat itself, which fails with EBADF otherwise).
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        borrowed
            .try_clone_to_owned()
            .map(std::fs::File::from)
            .and_then(|f| f.metadata())
            .map(|m| m.file_type().is_socket())
    };
    match is_socket {
        Ok(true) => {}
        Ok(false) => return Err(bad(format!("fd {fd} is not the agent's socket"))),
        Err(e) => {
            return Err(bad(format!(
                "fd {fd} is not open: {e} (a parent closed it?)"
            )))
        }
    }
    // SAFETY: fd is an open socket (checked above); the dup made there is closed, this one is ours
    // and is closed when `socket` drops.
    let owned = unsafe { BorrowedFd::borrow_raw(fd) }
        .try_clone_to_owned()
        .map_err(|e| bad(format!("fd {fd}: {e}")))?;
    let socket = UnixDatagram::from(owned);
    let bytes = msg.encode();
    match socket.send(&bytes) {
        Ok(n) if n == bytes.len() => Ok(true),
        Ok(n) => Err(bad(format!("only {n} of {} bytes sent", bytes.len()))),
        Err(e) => Err(bad(format!("cannot send to the agent: {e}"))),
    }
}
