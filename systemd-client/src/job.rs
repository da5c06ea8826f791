//! systemd jobs: the four operations that queue one ([`Verb`]) and what the `JobRemoved` signal
//! says about how it ended ([`JobResult`]). Pure, so the mapping is unit-tested; it follows
//! `systemctl`'s own reading of job results (`done` and `skipped` are success).

use std::fmt;

/// An operation that makes systemd queue a job for a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Start,
    Stop,
    Restart,
    Reload,
}

impl Verb {
    /// The verb as a word: "start", "stop", …
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Start => "start",
            Verb::Stop => "stop",
            Verb::Restart => "restart",
            Verb::Reload => "reload",
        }
    }
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a job ended: the `result` argument of `org.freedesktop.systemd1.Manager.JobRemoved`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobResult {
    /// The job did what it was asked.
    Done,
    /// Nothing to do in the unit's state (e.g. a reload-or-restart of a stopped unit).
    Skipped,
    /// Another job replaced it, or it was cancelled by hand.
    Canceled,
    /// A timeout (`TimeoutStartSec=`, `TimeoutStopSec=`, `JobTimeoutSec=`) hit.
    Timeout,
    /// The unit failed (its process exited non-zero, crashed, …).
    Failed,
    /// A unit this one requires failed.
    Dependency,
    /// The job type does not apply in the unit's state (e.g. reload of an inactive unit).
    Invalid,
    /// An `Assert…=` condition of the unit was not met.
    Assert,
    /// The unit type does not support the operation.
    Unsupported,
    /// The unit was garbage-collected before the job ran.
    Collected,
    /// The unit may be started only once (e.g. a `RefuseManualStart`-style one-shot) and already was.
    Once,
    /// The unit is frozen.
    Frozen,
    /// A result this crate does not know (a newer systemd).
    Other(String),
}

impl JobResult {
    pub fn parse(s: &str) -> Self {
        match s {
            "done" => JobResult::Done,
            "skipped" => JobResult::Skipped,
            "canceled" => JobResult::Canceled,
            "timeout" => JobResult::Timeout,
            "failed" => JobResult::Failed,
            "dependency" => JobResult::Dependency,
            "invalid" => JobResult::Invalid,
            "assert" => JobResult::Assert,
            "unsupported" => JobResult::Unsupported,
            "collected" => JobResult::Collected,
            "once" => JobResult::Once,
            "frozen" => JobResult::Frozen,
            other => JobResult::Other(other.to_string()),
        }
    }

    /// Whether the operation succeeded (`systemctl` exits 0 for exactly these).
    pub fn is_success(&self) -> bool {
        matches!(self, JobResult::Done | JobResult::Skipped)
    }

    /// The word systemd sent.
    pub fn as_str(&self) -> &str {
        match self {
            JobResult::Done => "done",
            JobResult::Skipped => "skipped",
            JobResult::Canceled => "canceled",
            JobResult::Timeout => "timeout",
            JobResult::Failed => "failed",
            JobResult::Dependency => "dependency",
            JobResult::Invalid => "invalid",
            JobResult::Assert => "assert",
            JobResult::Unsupported => "unsupported",
            JobResult::Collected => "collected",
            JobResult::Once => "once",
            JobResult::Frozen => "frozen",
            JobResult::Other(s) => s,
        }
    }

    /// What the result means, in words, for an error message; `None` for success.
    pub fn explain(&self) -> Option<&'static str> {
        Some(match self {
            JobResult::Done | JobResult::Skipped => return None,
            JobResult::Canceled => "the job was canceled, by hand or by a conflicting job",
            JobResult::Timeout => "the job timed out",
            JobResult::Failed => "the unit failed",
            JobResult::Dependency => "a unit it requires failed",
            JobResult::Invalid => "the operation does not apply to the unit in its current state",
            JobResult::Assert => "an Assert…= condition of the unit is not met",
            JobResult::Unsupported => "the unit type does not support this operation",
            JobResult::Collected => "the unit was unloaded before the job ran",
            JobResult::Once => "the unit may be started only once and already was",
            JobResult::Frozen => "the unit is frozen",
            JobResult::Other(_) => "systemd reported an unknown job result",
        })
    }
}

impl fmt::Display for JobResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_round_trip_and_only_done_and_skipped_succeed() {
        let all = [
            "done",
            "skipped",
            "canceled",
            "timeout",
            "failed",
            "dependency",
            "invalid",
            "assert",
            "unsupported",
            "collected",
            "once",
            "frozen",
        ];
        for s in all {
            let r = JobResult::parse(s);
            assert_ne!(r, JobResult::Other(s.into()), "{s} is known");
            assert_eq!(r.as_str(), s);
            assert_eq!(r.is_success(), s == "done" || s == "skipped", "{s}");
            assert_eq!(r.explain().is_none(), r.is_success(), "{s}");
        }
        let new = JobResult::parse("exploded");
        assert_eq!(new, JobResult::Other("exploded".into()));
        assert!(!new.is_success(), "an unknown result is a failure");
        assert_eq!(new.to_string(), "exploded");
    }

    #[test]
    fn verbs() {
        assert_eq!(Verb::Restart.to_string(), "restart");
        assert_eq!(Verb::Reload.as_str(), "reload");
    }
}
