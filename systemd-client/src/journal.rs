//! The last lines of a unit's journal, for the error of a failed job: what a sysadmin would look at
//! first. Read by running `journalctl [--user] -u UNIT -n N --no-pager -o cat` (the journal's file
//! format is not a stable API; journalctl is), bounded in time so a slow journal never hangs an
//! operation that already failed.

use std::fmt;
use std::time::Duration;

use crate::client::Bus;
use crate::name::UnitName;

/// How long journalctl may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// How long to let journald catch up before reading. A unit's own output reaches journald through a
/// stream socket and can land after systemd's "Failed to start" message, i.e. after the job ended;
/// reading at once sometimes showed only systemd's lines. Only failed operations pay this.
const SETTLE: Duration = Duration::from_millis(300);

/// The journal lines of a unit, or why there are none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Journal {
    Lines(Vec<String>),
    /// journalctl could not be run, failed, or printed nothing; the text says which.
    Unavailable(String),
}

/// The journalctl command line (without the program name).
pub(crate) fn args(bus: Bus, unit: &UnitName, lines: usize) -> Vec<String> {
    let mut a = Vec::new();
    if bus == Bus::User {
        a.push("--user".to_string());
    }
    a.extend([
        "-u".to_string(),
        unit.to_string(),
        "-n".to_string(),
        lines.to_string(),
        "--no-pager".to_string(),
        "-o".to_string(),
        "cat".to_string(),
    ]);
    a
}

/// The command a sysadmin can run to see more.
pub(crate) fn hint(bus: Bus, unit: &UnitName) -> String {
    match bus {
        Bus::User => format!("journalctl --user -u {unit}"),
        Bus::System => format!("journalctl -u {unit}"),
    }
}

impl Journal {
    /// Interprets journalctl's outcome.
    pub(crate) fn from_output(status_ok: bool, stdout: &[u8], stderr: &[u8]) -> Journal {
        let out = String::from_utf8_lossy(stdout);
        let lines: Vec<String> = out
            .lines()
            .filter(|l| !l.trim().is_empty() && *l != "-- No entries --")
            .map(str::to_string)
            .collect();
        let err = String::from_utf8_lossy(stderr).trim().to_string();
        if !status_ok {
            Journal::Unavailable(format!("journalctl failed: {err}"))
        } else if lines.is_empty() {
            if err.is_empty() {
                Journal::Unavailable("the journal has no lines for it".into())
            } else {
                Journal::Unavailable(format!("journalctl: {err}"))
            }
        } else {
            Journal::Lines(lines)
        }
    }

    /// Runs journalctl for the last `lines` lines of `unit`, after letting journald settle.
    pub async fn tail(bus: Bus, unit: &UnitName, lines: usize) -> Journal {
        tokio::time::sleep(SETTLE).await;
        let run = tokio::process::Command::new("journalctl")
            .args(args(bus, unit, lines))
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        match tokio::time::timeout(TIMEOUT, run).await {
            Err(_) => Journal::Unavailable(format!("journalctl took more than {TIMEOUT:?}")),
            Ok(Err(e)) => Journal::Unavailable(format!("cannot run journalctl: {e}")),
            Ok(Ok(o)) => Journal::from_output(o.status.success(), &o.stdout, &o.stderr),
        }
    }
}

/// Indented lines (or the reason there are none), for the end of an error message.
impl fmt::Display for Journal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Journal::Lines(lines) => {
                f.write_str("last journal lines:")?;
                for l in lines {
                    write!(f, "\n    {l}")?;
                }
                Ok(())
            }
            Journal::Unavailable(why) => write!(f, "no journal lines ({why})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line() {
        let u = UnitName::new("x").unwrap();
        assert_eq!(
            args(Bus::User, &u, 10).join(" "),
            "--user -u x.service -n 10 --no-pager -o cat"
        );
        assert_eq!(
            args(Bus::System, &u, 3).join(" "),
            "-u x.service -n 3 --no-pager -o cat"
        );
        assert_eq!(hint(Bus::User, &u), "journalctl --user -u x.service");
    }

    #[test]
    fn outcomes() {
        assert_eq!(
            Journal::from_output(true, b"a\n\nb\n", b""),
            Journal::Lines(vec!["a".into(), "b".into()])
        );
        let none = Journal::from_output(true, b"-- No entries --\n", b"");
        assert!(matches!(&none, Journal::Unavailable(w) if w.contains("no lines")));
        let denied = Journal::from_output(
            true,
            b"",
            b"No journal files were opened due to insufficient permissions.",
        );
        assert!(
            denied.to_string().contains("insufficient permissions"),
            "{denied}"
        );
        let failed = Journal::from_output(false, b"", b"boom");
        assert_eq!(
            failed.to_string(),
            "no journal lines (journalctl failed: boom)"
        );
        assert_eq!(
            Journal::Lines(vec!["one".into(), "two".into()]).to_string(),
            "last journal lines:\n    one\n    two"
        );
    }
}
