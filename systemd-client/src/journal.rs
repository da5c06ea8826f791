//! The last lines of a unit's journal, for the error of a failed job: what a sysadmin would look at
//! first. Read by running `journalctl [--user] -u UNIT -n N --no-pager -o json` (the journal's file
//! format is not a stable API; journalctl is), bounded in time so a slow journal never hangs an
//! operation that already failed.
//!
//! A unit's own output reaches journald through a stream socket and is often written after the
//! manager's "Failed to start" lines, i.e. after the job ended; on a busy machine by hundreds of
//! milliseconds. So the journal is read again (for up to [`WAIT_FOR_OWN_LINES`]) until it holds a
//! line that the unit's processes wrote, not only the manager's own lines about the unit. (Seen in CI:
//! the echo of a unit that exits at once sometimes never showed in the user's `journalctl --user -u`;
//! then the manager's lines are what the error shows.)

use std::fmt;
use std::time::Duration;

use crate::client::Bus;
use crate::name::UnitName;

/// How long journalctl may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// How long to wait for lines of the unit's own processes. Only failed operations pay this, and a
/// unit that printed nothing pays all of it.
const WAIT_FOR_OWN_LINES: Duration = Duration::from_secs(2);

/// Pause between two reads of the journal.
const POLL: Duration = Duration::from_millis(200);

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
        "json".to_string(),
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

/// One journal entry as `journalctl -o json` prints it (the fields used here).
#[derive(Debug, Default, PartialEq, Eq)]
struct Entry {
    message: String,
    /// Written by the service manager itself (`systemd`), not by the unit's processes.
    from_manager: bool,
}

impl Entry {
    /// Parses one line of `-o json`; None for a line that is not an entry with a text message
    /// (journald stores binary messages as arrays of bytes: skipped).
    fn parse(line: &str) -> Option<Entry> {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        let message = v.get("MESSAGE")?.as_str()?.to_string();
        let from_manager = v.get("SYSLOG_IDENTIFIER").and_then(|i| i.as_str()) == Some("systemd")
            || v.get("_PID").and_then(|p| p.as_str()) == Some("1");
        Some(Entry {
            message,
            from_manager,
        })
    }
}

/// What one read of the journal gave.
enum Read {
    Entries(Vec<Entry>),
    Unavailable(String),
}

impl Journal {
    /// Interprets one run of journalctl.
    fn read_output(status_ok: bool, stdout: &[u8], stderr: &[u8]) -> Read {
        let err = String::from_utf8_lossy(stderr).trim().to_string();
        if !status_ok {
            return Read::Unavailable(format!("journalctl failed: {err}"));
        }
        let entries: Vec<Entry> = String::from_utf8_lossy(stdout)
            .lines()
            .filter_map(Entry::parse)
            .filter(|e| !e.message.trim().is_empty())
            .collect();
        if entries.is_empty() && !err.is_empty() {
            return Read::Unavailable(format!("journalctl: {err}"));
        }
        Read::Entries(entries)
    }

    /// The final answer from the last read.
    fn from_read(read: Read) -> Journal {
        match read {
            Read::Unavailable(why) => Journal::Unavailable(why),
            Read::Entries(e) if e.is_empty() => {
                Journal::Unavailable("the journal has no lines for it".into())
            }
            Read::Entries(e) => Journal::Lines(e.into_iter().map(|e| e.message).collect()),
        }
    }

    async fn read_once(bus: Bus, unit: &UnitName, lines: usize) -> Read {
        let run = tokio::process::Command::new("journalctl")
            .args(args(bus, unit, lines))
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        match tokio::time::timeout(TIMEOUT, run).await {
            Err(_) => Read::Unavailable(format!("journalctl took more than {TIMEOUT:?}")),
            Ok(Err(e)) => Read::Unavailable(format!("cannot run journalctl: {e}")),
            Ok(Ok(o)) => Journal::read_output(o.status.success(), &o.stdout, &o.stderr),
        }
    }

    /// The last `lines` lines of `unit`, read again until some come from the unit's own processes
    /// (bounded by [`WAIT_FOR_OWN_LINES`]).
    pub async fn tail(bus: Bus, unit: &UnitName, lines: usize) -> Journal {
        let end = tokio::time::Instant::now() + WAIT_FOR_OWN_LINES;
        loop {
            let read = Journal::read_once(bus, unit, lines).await;
            let own = match &read {
                Read::Entries(e) => e.iter().any(|e| !e.from_manager),
                Read::Unavailable(_) => true,
            };
            if own || tokio::time::Instant::now() >= end {
                return Journal::from_read(read);
            }
            tokio::time::sleep(POLL).await;
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
            "--user -u x.service -n 10 --no-pager -o json"
        );
        assert_eq!(
            args(Bus::System, &u, 3).join(" "),
            "-u x.service -n 3 --no-pager -o json"
        );
        assert_eq!(hint(Bus::User, &u), "journalctl --user -u x.service");
    }

    fn read(stdout: &str, stderr: &str, ok: bool) -> Journal {
        Journal::from_read(Journal::read_output(
            ok,
            stdout.as_bytes(),
            stderr.as_bytes(),
        ))
    }

    #[test]
    fn entries() {
        let own = r#"{"MESSAGE":"broken says goodbye","SYSLOG_IDENTIFIER":"sh","_PID":"42"}"#;
        let manager = r#"{"MESSAGE":"Failed to start broken.service.","SYSLOG_IDENTIFIER":"systemd","_PID":"1234"}"#;
        let pid1 = r#"{"MESSAGE":"Starting x...","_PID":"1"}"#;
        assert_eq!(
            Entry::parse(own),
            Some(Entry {
                message: "broken says goodbye".into(),
                from_manager: false
            })
        );
        assert!(Entry::parse(manager).unwrap().from_manager);
        assert!(Entry::parse(pid1).unwrap().from_manager);
        // Binary messages (arrays of bytes) and garbage are skipped.
        assert_eq!(Entry::parse(r#"{"MESSAGE":[104,105]}"#), None);
        assert_eq!(Entry::parse("-- No entries --"), None);
    }

    #[test]
    fn outcomes() {
        let two = "{\"MESSAGE\":\"a\"}\n\n{\"MESSAGE\":\"b\"}\n";
        assert_eq!(
            read(two, "", true),
            Journal::Lines(vec!["a".into(), "b".into()])
        );
        let none = read("-- No entries --\n", "", true);
        assert!(matches!(&none, Journal::Unavailable(w) if w.contains("no lines")));
        let denied = read(
            "",
            "No journal files were opened due to insufficient permissions.",
            true,
        );
        assert!(
            denied.to_string().contains("insufficient permissions"),
            "{denied}"
        );
        let failed = read("", "boom", false);
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
