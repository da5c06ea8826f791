//! The crate's one error type. Every message names the unit, the bus and what systemd said, and a
//! failed job carries the unit's state and journal, so the message alone tells a sysadmin what to
//! look at. Callers map the variants to exit codes (see `module-sdk unit`).

use std::fmt;

use crate::client::Bus;
use crate::job::{JobResult, Verb};
use crate::journal::{self, Journal};
use crate::name::UnitName;
use crate::status::UnitStatus;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The unit name given is not a valid unit name.
    #[error("{name:?} is not a valid unit name: {reason}")]
    BadName { name: String, reason: &'static str },

    /// The bus or its systemd manager could not be reached (after the retries).
    #[error("cannot reach the systemd {bus} manager at {address} ({attempts} attempts): {cause}; {hint}")]
    Unreachable {
        bus: Bus,
        address: String,
        attempts: u32,
        hint: &'static str,
        cause: zbus::Error,
    },

    /// systemd knows no such unit (or, for enable/disable, no such unit file).
    #[error("unit {unit} not found by the systemd {bus} manager ({detail}); {hint}")]
    NoSuchUnit {
        bus: Bus,
        unit: UnitName,
        detail: String,
        hint: &'static str,
    },

    /// The job ran and did not succeed.
    #[error("{0}")]
    JobFailed(Box<JobFailure>),

    /// systemd refused the request (masked unit, job type not applicable, …).
    #[error("systemd {bus} manager refused to {what} {unit}: {message} ({name})")]
    Refused {
        bus: Bus,
        what: &'static str,
        unit: String,
        name: String,
        message: String,
    },

    /// The caller may not do this on this bus (polkit / access denied).
    #[error("not allowed to {what} {unit} on the systemd {bus} manager: {message} ({name}){}",
        if *bus == Bus::System { "; changing system units needs root" } else { "" })]
    Denied {
        bus: Bus,
        what: &'static str,
        unit: String,
        name: String,
        message: String,
    },

    /// Any other D-Bus failure (connection lost while waiting, unexpected reply, …).
    #[error("D-Bus error while {what}: {cause}")]
    Bus { what: String, cause: zbus::Error },
}

/// Everything known about a failed job.
#[derive(Debug)]
pub struct JobFailure {
    pub bus: Bus,
    pub verb: Verb,
    pub unit: UnitName,
    pub result: JobResult,
    /// The unit's state right after the job ended, if it could be read.
    pub status: Option<UnitStatus>,
    pub journal: Journal,
}

/// `unit X failed to start (result: failed — the unit failed, state: failed/failed, unit result:
/// exit-code); last journal lines: …; more: journalctl --user -u X`
impl fmt::Display for JobFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unit {} failed to {} (result: {}",
            self.unit, self.verb, self.result
        )?;
        if let Some(why) = self.result.explain() {
            write!(f, " — {why}")?;
        }
        if let Some(s) = &self.status {
            write!(f, ", state: {}", s.short())?;
            if let Some(r) = s
                .result
                .as_deref()
                .filter(|r| !r.is_empty() && *r != "success")
            {
                write!(f, ", unit result: {r}")?;
            }
        }
        write!(
            f,
            "); {}\nmore: {}",
            self.journal,
            journal::hint(self.bus, &self.unit)
        )
    }
}

impl Error {
    /// The D-Bus error name of a method error reply, and its message.
    pub(crate) fn method_error(e: &zbus::Error) -> Option<(String, String)> {
        use zbus::DBusError;
        match e {
            zbus::Error::MethodError(name, msg, _) => {
                Some((name.to_string(), msg.clone().unwrap_or_default()))
            }
            zbus::Error::FDO(fdo) => Some((
                fdo.name().to_string(),
                fdo.description().unwrap_or_default().to_string(),
            )),
            _ => None,
        }
    }

    /// Sorts the error reply of a request about `unit` into not found / denied / refused / other.
    pub(crate) fn from_call(bus: Bus, what: &'static str, unit: &UnitName, e: zbus::Error) -> Self {
        let Some((name, message)) = Error::method_error(&e) else {
            return Error::Bus {
                what: format!("asking the {bus} manager to {what} {unit}"),
                cause: e,
            };
        };
        match name.as_str() {
            "org.freedesktop.systemd1.NoSuchUnit"
            | "org.freedesktop.systemd1.LoadFailed"
            | "org.freedesktop.DBus.Error.FileNotFound" => Error::NoSuchUnit {
                bus,
                unit: unit.clone(),
                detail: message,
                hint: no_such_unit_hint(bus),
            },
            "org.freedesktop.DBus.Error.AccessDenied"
            | "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired" => Error::Denied {
                bus,
                what,
                unit: unit.to_string(),
                name,
                message,
            },
            _ => Error::Refused {
                bus,
                what,
                unit: unit.to_string(),
                name,
                message,
            },
        }
    }
}

pub(crate) fn no_such_unit_hint(bus: Bus) -> &'static str {
    match bus {
        Bus::User => {
            "user units live in ~/.config/systemd/user (then `module-sdk unit daemon-reload`); \
             use --system for the node's system units"
        }
        Bus::System => {
            "system units live in /etc/systemd/system (then `module-sdk unit --system \
             daemon-reload`); without --system the user's own manager is asked"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(result: &str, status: Option<UnitStatus>, journal: Journal) -> JobFailure {
        JobFailure {
            bus: Bus::User,
            verb: Verb::Start,
            unit: UnitName::new("hello0-httpd").unwrap(),
            result: JobResult::parse(result),
            status,
            journal,
        }
    }

    #[test]
    fn a_failed_start_names_result_state_and_journal() {
        let status = UnitStatus {
            unit: "hello0-httpd.service".into(),
            load_state: "loaded".into(),
            active_state: "failed".into(),
            sub_state: "failed".into(),
            result: Some("exit-code".into()),
            unit_file_state: None,
            fragment_path: None,
        };
        let f = failure(
            "failed",
            Some(status),
            Journal::Lines(vec![
                "hello0-httpd.service: Main process exited, code=exited, status=1/FAILURE".into(),
                "Failed to start hello0-httpd.service.".into(),
            ]),
        );
        assert_eq!(
            Error::JobFailed(Box::new(f)).to_string(),
            "unit hello0-httpd.service failed to start (result: failed — the unit failed, \
             state: failed/failed, unit result: exit-code); last journal lines:\n    \
             hello0-httpd.service: Main process exited, code=exited, status=1/FAILURE\n    \
             Failed to start hello0-httpd.service.\n\
             more: journalctl --user -u hello0-httpd.service"
        );
    }

    #[test]
    fn a_failure_without_status_or_journal_still_says_what_happened() {
        let f = failure(
            "timeout",
            None,
            Journal::Unavailable("journalctl failed: x".into()),
        );
        assert_eq!(
            f.to_string(),
            "unit hello0-httpd.service failed to start (result: timeout — the job timed out); \
             no journal lines (journalctl failed: x)\nmore: journalctl --user -u hello0-httpd.service"
        );
    }

    #[test]
    fn denied_on_the_system_bus_says_root_is_needed() {
        let e = Error::Denied {
            bus: Bus::System,
            what: "start",
            unit: "x.service".into(),
            name: "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired".into(),
            message: "Interactive authentication required.".into(),
        };
        assert!(e.to_string().ends_with("needs root"), "{e}");
    }
}
