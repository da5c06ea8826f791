//! Reading run records and outputs, and showing them: pure functions shared by `run` and `show`.

use std::collections::HashMap;

use anyhow::{Context, Result};
use core_events::{Prefix, RollbackStatus, RunId, RunRecord, RunStatus};
use redis::aio::ConnectionManager;
use redis::AsyncCommands;

/// The record of a run, `None` when there is none (not started yet, expired, or never existed).
pub async fn read_record(
    con: &mut ConnectionManager,
    prefix: &Prefix,
    run: &RunId,
) -> Result<Option<RunRecord>> {
    let key = prefix.run(run);
    let fields: HashMap<String, String> = con
        .hgetall(&key)
        .await
        .with_context(|| format!("cannot read run record {key}"))?;
    Ok((!fields.is_empty()).then(|| RunRecord::from_fields(&fields)))
}

/// The captured output of a run (steps' stdout and stderr under `==> STEP <==` headers).
pub async fn read_output(
    con: &mut ConnectionManager,
    prefix: &Prefix,
    run: &RunId,
) -> Result<Option<Vec<u8>>> {
    let key = prefix.run_output(run);
    con.get(&key)
        .await
        .with_context(|| format!("cannot read run output {key}"))
}

/// A run record as JSON: which run, which agent, and the record's fields.
#[derive(serde::Serialize)]
pub struct RunJson<'a> {
    pub run: &'a str,
    pub agent: &'a str,
    #[serde(flatten)]
    pub record: &'a RunRecord,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

pub use core_events::output::section_of;

/// The exit code agentctl ends with for a finished run: the recorded one when it fits an exit
/// status, 1 for one that does not, and 0/1 from the status when none was recorded.
pub fn exit_code_of(record: &RunRecord) -> i32 {
    match record.exit_code {
        Some(c) if (0..=255).contains(&c) => c,
        Some(_) => 1,
        None if record.status == Some(RunStatus::Done) => 0,
        None => 1,
    }
}

/// `run <id>: <status> (exit <code>)`, with the failed step and the error when there are any.
pub fn summary(run: &RunId, record: &RunRecord) -> String {
    let status = record.status.map(RunStatus::as_str).unwrap_or("unknown");
    let mut s = format!("run {run}: {status}");
    if let Some(code) = record.exit_code {
        s.push_str(&format!(" (exit {code})"));
    }
    if let Some(step) = &record.failed_step {
        // The engine's error usually names the step already.
        if !record
            .error
            .as_deref()
            .is_some_and(|e| e.contains(step.as_str()))
        {
            s.push_str(&format!(" in step {step}"));
        }
    }
    if let Some(error) = &record.error {
        s.push_str(": ");
        s.push_str(error);
    }
    match (record.rollback, &record.rollback_failed) {
        (Some(RollbackStatus::Done), _) => s.push_str("; rolled back"),
        (Some(RollbackStatus::Failed), Some(steps)) => {
            s.push_str(&format!("; ROLLBACK FAILED in {steps}"))
        }
        (Some(RollbackStatus::Failed), None) => s.push_str("; ROLLBACK FAILED"),
        (Some(RollbackStatus::Running), _) => s.push_str("; rolling back"),
        (None, _) => {}
    }
    s
}

/// The record's fields as `(label, value)` in reading order, absent ones left out.
pub fn record_lines(record: &RunRecord) -> Vec<(&'static str, String)> {
    let mut lines = vec![("event", record.event.clone())];
    let opt = |v: &Option<String>| v.clone();
    let candidates: [(&'static str, Option<String>); 11] = [
        ("status", record.status.map(|s| s.as_str().to_string())),
        ("exit code", record.exit_code.map(|c| c.to_string())),
        ("failed step", opt(&record.failed_step)),
        (
            "attempt",
            (record.attempt > 0).then(|| record.attempt.to_string()),
        ),
        ("queued", opt(&record.queued)),
        ("started", opt(&record.started)),
        ("ended", opt(&record.ended)),
        ("error", opt(&record.error)),
        ("rollback", record.rollback.map(|r| r.as_str().to_string())),
        ("rollback failed", opt(&record.rollback_failed)),
        ("data", Some(record.data.clone())),
    ];
    lines.extend(
        candidates
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v))),
    );
    lines
}

/// Shows the record as aligned `label: value` lines; multi-line values are indented below.
pub fn format_record(record: &RunRecord) -> String {
    let lines = record_lines(record);
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    let mut out = String::new();
    for (k, v) in lines {
        let label = format!("{k}:");
        if v.contains('\n') {
            out.push_str(&format!("{label}\n"));
            for l in v.lines() {
                out.push_str(&format!("    {l}\n"));
            }
        } else if v.is_empty() {
            out.push_str(&format!("{label}\n"));
        } else {
            out.push_str(&format!("{label:width$} {v}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(status: RunStatus, code: Option<i32>) -> RunRecord {
        RunRecord {
            event: "ev".into(),
            status: Some(status),
            exit_code: code,
            ..Default::default()
        }
    }

    #[test]
    fn exit_codes() {
        assert_eq!(exit_code_of(&rec(RunStatus::Done, Some(0))), 0);
        assert_eq!(exit_code_of(&rec(RunStatus::Failed, Some(7))), 7);
        assert_eq!(exit_code_of(&rec(RunStatus::Cancelled, Some(130))), 130);
        assert_eq!(exit_code_of(&rec(RunStatus::Failed, Some(255))), 255);
        assert_eq!(exit_code_of(&rec(RunStatus::Failed, Some(256))), 1);
        assert_eq!(exit_code_of(&rec(RunStatus::Failed, Some(-3))), 1);
        assert_eq!(exit_code_of(&rec(RunStatus::Done, None)), 0);
        assert_eq!(exit_code_of(&rec(RunStatus::Failed, None)), 1);
    }

    #[test]
    fn summaries() {
        let run = RunId::new("r1").unwrap();
        assert_eq!(
            summary(&run, &rec(RunStatus::Done, Some(0))),
            "run r1: done (exit 0)"
        );
        let mut r = rec(RunStatus::Failed, Some(7));
        r.failed_step = Some("20boom".into());
        assert_eq!(summary(&run, &r), "run r1: failed (exit 7) in step 20boom");
        r.error = Some("it broke".into());
        assert_eq!(
            summary(&run, &r),
            "run r1: failed (exit 7) in step 20boom: it broke"
        );
        r.error = Some("step 20boom exited with code 7".into());
        assert_eq!(
            summary(&run, &r),
            "run r1: failed (exit 7): step 20boom exited with code 7"
        );
        r.rollback = Some(RollbackStatus::Done);
        assert!(summary(&run, &r).ends_with("code 7; rolled back"));
        r.rollback = Some(RollbackStatus::Failed);
        r.rollback_failed = Some("10undo,20undo".into());
        assert!(summary(&run, &r).ends_with("; ROLLBACK FAILED in 10undo,20undo"));
    }

    #[test]
    fn record_is_readable() {
        let mut r = rec(RunStatus::Failed, Some(7));
        r.failed_step = Some("20boom".into());
        r.attempt = 1;
        r.data = "{\"a\":1}".into();
        let text = format_record(&r);
        let labels: Vec<&str> = text.lines().map(|l| l.split(':').next().unwrap()).collect();
        assert_eq!(
            labels,
            [
                "event",
                "status",
                "exit code",
                "failed step",
                "attempt",
                "data"
            ]
        );
        assert!(text.contains("exit code:   7\n"), "{text}");
        r.data = "two\nlines".into();
        assert!(format_record(&r).ends_with("data:\n    two\n    lines\n"));
    }
}
