//! Exit codes an agent records for a run and `agentctl` exits with.
//!
//! A failed step's own exit code is recorded as it is (1–125). The engine uses the codes below for the
//! ways a run can end without a step choosing its code; they follow the conventions of `timeout(1)`,
//! the shell and `sysexits.h` so that scripts around `agentctl` can tell them apart.

/// Every step succeeded.
pub const OK: i32 = 0;
/// The event was refused before anything ran: bad name, payload too large, malformed queue entry
/// (`EX_DATAERR`).
pub const INVALID: i32 = 65;
/// No event directory has an entry for this event (`EX_UNAVAILABLE`).
pub const NO_SUCH_EVENT: i32 = 69;
/// The run was interrupted too many times by agent restarts and was given up (`EX_TEMPFAIL`).
pub const ABANDONED: i32 = 75;
/// A step could not be started (exec failure, `EX_OSERR`).
pub const SPAWN_FAILED: i32 = 71;
/// The run hit its timeout (as `timeout(1)`).
pub const TIMEOUT: i32 = 124;
/// The run was cancelled (as a shell reports SIGINT-style interruption).
pub const CANCELLED: i32 = 130;
/// Offset added to a signal number when a step was killed by a signal (as the shell does).
pub const SIGNAL_BASE: i32 = 128;

/// Exit codes of the node's built-in tools (`node-agent module …`), after `sysexits.h`. A step that
/// wraps a tool exits with them, so a run's `exit_code` tells what kind of failure it was.
pub mod tool {
    /// Bad input: a module id, an image reference or label, a setting (`EX_DATAERR`).
    pub const INVALID: i32 = super::INVALID;
    /// Something needed is not there or cannot be had: an image, a user (`EX_UNAVAILABLE`).
    pub const UNAVAILABLE: i32 = 69;
    /// A program the tool runs could not be started (`EX_OSERR`).
    pub const OS_ERROR: i32 = super::SPAWN_FAILED;
    /// Not ready in time, or Redis unreachable: running again may work (`EX_TEMPFAIL`).
    pub const TEMP_FAILURE: i32 = 75;
    /// The node's configuration does not allow it (`EX_CONFIG`).
    pub const CONFIG: i32 = 78;
    /// Anything else that failed.
    pub const FAILED: i32 = 1;
}
