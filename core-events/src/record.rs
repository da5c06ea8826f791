//! Run records, journal entries, progress reports and queue entries.
//!
//! Records are Redis hashes and stream entries, so each type converts to and from a list of
//! `(field, value)` string pairs; progress travels as JSON on a channel. Unknown fields are ignored when
//! reading, so older agents can read records written by newer ones.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use crate::name::{EventName, NameError, RunId};

/// The state of one run. Terminal states never change again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Queued,
    Running,
    Done,
    Failed,
    Cancelled,
    Abandoned,
}

impl RunStatus {
    pub const ALL: [RunStatus; 6] = [
        RunStatus::Queued,
        RunStatus::Running,
        RunStatus::Done,
        RunStatus::Failed,
        RunStatus::Cancelled,
        RunStatus::Abandoned,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::Done => "done",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
            RunStatus::Abandoned => "abandoned",
        }
    }

    /// Done, failed, cancelled and abandoned runs are finished for good.
    pub fn is_terminal(self) -> bool {
        !matches!(self, RunStatus::Queued | RunStatus::Running)
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown run status {0:?}")]
pub struct UnknownStatus(pub String);

impl FromStr for RunStatus {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "queued" => RunStatus::Queued,
            "running" => RunStatus::Running,
            "done" => RunStatus::Done,
            "failed" => RunStatus::Failed,
            "cancelled" => RunStatus::Cancelled,
            "abandoned" => RunStatus::Abandoned,
            other => return Err(UnknownStatus(other.to_string())),
        })
    }
}

/// The state of the rollback of a failed or cancelled run (record field `rollback`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RollbackStatus {
    /// The rollback steps are running; the run's status is still `running`.
    Running,
    /// Every rollback step exited 0.
    Done,
    /// Some rollback step failed, could not start, timed out or was cancelled (`rollback_failed`).
    Failed,
}

impl RollbackStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RollbackStatus::Running => "running",
            RollbackStatus::Done => "done",
            RollbackStatus::Failed => "failed",
        }
    }
}

impl fmt::Display for RollbackStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RollbackStatus {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "running" => RollbackStatus::Running,
            "done" => RollbackStatus::Done,
            "failed" => RollbackStatus::Failed,
            other => return Err(UnknownStatus(other.to_string())),
        })
    }
}

/// Record field holding the [`RollbackStatus`].
pub const RECORD_FIELD_ROLLBACK: &str = "rollback";
/// Record fields the engine's begin-run script reads or sets itself (a journal entry's attempt field
/// has the same name).
pub const RECORD_FIELD_STATUS: &str = "status";
pub const RECORD_FIELD_ATTEMPT: &str = "attempt";
pub const RECORD_FIELD_DATA: &str = "data";
pub const RECORD_FIELD_STARTED: &str = "started";
/// Record field listing the rollback steps that failed, comma-separated.
pub const RECORD_FIELD_ROLLBACK_FAILED: &str = "rollback_failed";

/// The hash `<prefix>/run/<run-id>`. Empty optional fields are not written.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RunRecord {
    /// The event name as received (may be invalid when the run was refused).
    pub event: String,
    pub data: String,
    pub status: Option<RunStatus>,
    pub exit_code: Option<i32>,
    pub failed_step: Option<String>,
    /// RFC 3339 UTC timestamps.
    pub queued: Option<String>,
    pub started: Option<String>,
    pub ended: Option<String>,
    pub attempt: u32,
    /// Why the engine ended the run itself (refusal, timeout, cancel…), in words.
    pub error: Option<String>,
    /// Set when a failed or cancelled run had rollback steps (`<event>.rollback`).
    pub rollback: Option<RollbackStatus>,
    /// The rollback steps that failed, comma-separated (only when `rollback` is `failed`).
    pub rollback_failed: Option<String>,
}

impl RunRecord {
    /// The fields to `HSET`, in a stable order.
    pub fn to_fields(&self) -> Vec<(&'static str, String)> {
        let mut f = vec![
            ("event", self.event.clone()),
            (RECORD_FIELD_DATA, self.data.clone()),
        ];
        if let Some(s) = self.status {
            f.push((RECORD_FIELD_STATUS, s.as_str().to_string()));
        }
        if let Some(c) = self.exit_code {
            f.push(("exit_code", c.to_string()));
        }
        let opt = [
            ("failed_step", &self.failed_step),
            ("queued", &self.queued),
            (RECORD_FIELD_STARTED, &self.started),
            ("ended", &self.ended),
            ("error", &self.error),
        ];
        for (k, v) in opt {
            if let Some(v) = v {
                f.push((k, v.clone()));
            }
        }
        f.push((RECORD_FIELD_ATTEMPT, self.attempt.to_string()));
        if let Some(r) = self.rollback {
            f.push((RECORD_FIELD_ROLLBACK, r.as_str().to_string()));
        }
        if let Some(v) = &self.rollback_failed {
            f.push((RECORD_FIELD_ROLLBACK_FAILED, v.clone()));
        }
        f
    }

    /// Reads a record from `HGETALL`. Malformed numbers read as absent rather than failing: a record
    /// is an observation, and a half-written one must still be readable.
    pub fn from_fields(fields: &HashMap<String, String>) -> Self {
        let get = |k: &str| fields.get(k).cloned();
        RunRecord {
            event: get("event").unwrap_or_default(),
            data: get("data").unwrap_or_default(),
            status: fields.get("status").and_then(|s| s.parse().ok()),
            exit_code: fields.get("exit_code").and_then(|s| s.parse().ok()),
            failed_step: get("failed_step"),
            queued: get("queued"),
            started: get("started"),
            ended: get("ended"),
            attempt: fields
                .get(RECORD_FIELD_ATTEMPT)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
            error: get("error"),
            rollback: fields
                .get(RECORD_FIELD_ROLLBACK)
                .and_then(|s| s.parse().ok()),
            rollback_failed: get(RECORD_FIELD_ROLLBACK_FAILED),
        }
    }
}

/// One entry of the stream `<prefix>/journal`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct JournalEntry {
    pub run: String,
    pub event: String,
    pub status: JournalStatus,
    pub attempt: u32,
    pub time: String,
    pub exit_code: Option<i32>,
    pub step: Option<String>,
    pub message: Option<String>,
}

/// The status of a journal entry: a run's own state, or what happened to an event that is no run
/// state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JournalStatus {
    /// A run reached this state.
    Run(RunStatus),
    /// A PUBLISHed event was refused before it became a run (bad name, too large, queue full).
    Refused,
    /// Something an admin should look at; the run goes on (skipped step, bad setting, bad env field).
    Warning,
    /// A queue entry was dropped because its run id had already ended or is running now.
    Skipped,
    /// The agent shut down mid-run; the run starts again on the next start.
    Interrupted,
    /// The rollback of a failed or cancelled run ended (one entry per rollback; the message says
    /// how it went, `step` lists the rollback steps that failed).
    Rollback,
    /// A status this version does not know (written by a newer agent, or by hand), kept as read.
    Unknown(String),
}

impl JournalStatus {
    /// The statuses that are no run state, as written.
    const OTHERS: [(JournalStatus, &'static str); 5] = [
        (JournalStatus::Refused, "refused"),
        (JournalStatus::Warning, "warning"),
        (JournalStatus::Skipped, "skipped"),
        (JournalStatus::Interrupted, "interrupted"),
        (JournalStatus::Rollback, "rollback"),
    ];

    pub fn as_str(&self) -> &str {
        match self {
            JournalStatus::Run(s) => s.as_str(),
            JournalStatus::Unknown(s) => s,
            other => Self::OTHERS
                .iter()
                .find(|(s, _)| s == other)
                .map_or("", |(_, name)| name),
        }
    }

    /// Reads a status as written; anything else is [`JournalStatus::Unknown`].
    pub fn parse(s: &str) -> Self {
        if let Ok(r) = s.parse::<RunStatus>() {
            return JournalStatus::Run(r);
        }
        Self::OTHERS
            .into_iter()
            .find(|(_, name)| *name == s)
            .map_or_else(|| JournalStatus::Unknown(s.to_string()), |(st, _)| st)
    }
}

impl From<RunStatus> for JournalStatus {
    fn from(s: RunStatus) -> Self {
        JournalStatus::Run(s)
    }
}

impl fmt::Display for JournalStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for JournalStatus {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl JournalEntry {
    /// An entry with the required fields; add the optional ones with the `with_*` methods.
    pub fn new(
        run: impl Into<String>,
        event: impl Into<String>,
        status: impl Into<JournalStatus>,
        attempt: u32,
        time: String,
    ) -> Self {
        JournalEntry {
            run: run.into(),
            event: event.into(),
            status: status.into(),
            attempt,
            time,
            exit_code: None,
            step: None,
            message: None,
        }
    }

    pub fn with_exit_code(mut self, code: i32) -> Self {
        self.exit_code = Some(code);
        self
    }

    pub fn with_step(mut self, step: Option<String>) -> Self {
        self.step = step;
        self
    }

    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = Some(message.into());
        self
    }

    pub fn to_fields(&self) -> Vec<(&'static str, String)> {
        let mut f = vec![
            ("run", self.run.clone()),
            ("event", self.event.clone()),
            ("status", self.status.to_string()),
            (RECORD_FIELD_ATTEMPT, self.attempt.to_string()),
            ("time", self.time.clone()),
        ];
        if let Some(c) = self.exit_code {
            f.push(("exit_code", c.to_string()));
        }
        if let Some(s) = &self.step {
            f.push(("step", s.clone()));
        }
        if let Some(m) = &self.message {
            f.push(("message", m.clone()));
        }
        f
    }

    pub fn from_fields(fields: &HashMap<String, String>) -> Self {
        let get = |k: &str| fields.get(k).cloned();
        JournalEntry {
            run: get("run").unwrap_or_default(),
            event: get("event").unwrap_or_default(),
            status: JournalStatus::parse(&get("status").unwrap_or_default()),
            attempt: fields
                .get(RECORD_FIELD_ATTEMPT)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
            time: get("time").unwrap_or_default(),
            exit_code: fields.get("exit_code").and_then(|s| s.parse().ok()),
            step: get("step"),
            message: get("message"),
        }
    }
}

/// A progress report, published as JSON on `progress/<agent>/<run>`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Progress {
    pub run: String,
    /// The step that reports, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// 1-based index of the current step and the number of steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_index: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<u32>,
    /// 0–100 within the step when a step reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Set on the last report of a run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<RunStatus>,
}

/// Largest event payload a step can receive: the data is its `argv[1]`, and Linux refuses a single
/// argument longer than `MAX_ARG_STRLEN` (32 pages = 128 KiB, counting the terminating NUL).
pub const MAX_PAYLOAD: usize = 128 * 1024 - 1;

/// Field names of a queue entry.
pub const QUEUE_FIELD_EVENT: &str = "event";
pub const QUEUE_FIELD_DATA: &str = "data";
pub const QUEUE_FIELD_ID: &str = "id";

/// A queue entry that passed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueEntry {
    pub run: RunId,
    pub event: EventName,
    pub data: String,
}

/// Why a queue entry was refused. Each refusal is journaled with this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error("queue entry has no 'event' field")]
    MissingEvent,
    #[error("bad event name: {0}")]
    BadEvent(NameError),
    #[error("bad run id: {0}")]
    BadRunId(NameError),
    #[error("field {0:?} is not valid UTF-8")]
    NotUtf8(&'static str),
    #[error("payload is {len} bytes, the limit is {max}")]
    PayloadTooLarge { len: usize, max: usize },
    /// A step gets the data as `argv[1]`, and no argument can hold a NUL byte.
    #[error("field {0:?} contains a NUL byte (a step's argument cannot hold one)")]
    Nul(&'static str),
}

/// The last millisecond a record's time can say: 9999-12-31T23:59:59.999Z (RFC 3339 years have
/// four digits). A queue entry whose stream id is later still runs (refusing it would refuse every
/// entry `XADD *` adds after it, as Redis numbers them from the highest id): its record has no
/// `queued` time.
pub const MAX_RECORDABLE_MS: u64 = 253_402_300_799_999;

/// Checks an event's data as it arrives, by PUBLISH or in a queue entry: at most `max_payload`
/// bytes, UTF-8, no NUL byte. What passes can be a step's `argv[1]`.
pub fn check_data(data: &[u8], max_payload: usize) -> Result<&str, EntryError> {
    if data.len() > max_payload {
        return Err(EntryError::PayloadTooLarge {
            len: data.len(),
            max: max_payload,
        });
    }
    let text = std::str::from_utf8(data).map_err(|_| EntryError::NotUtf8(QUEUE_FIELD_DATA))?;
    if data.contains(&0) {
        return Err(EntryError::Nul(QUEUE_FIELD_DATA));
    }
    Ok(text)
}

impl QueueEntry {
    /// The fields to `XADD` for this entry (`id` included so the run id is the chosen one).
    pub fn to_fields(&self) -> Vec<(&'static str, String)> {
        vec![
            (QUEUE_FIELD_EVENT, self.event.to_string()),
            (QUEUE_FIELD_DATA, self.data.clone()),
            (QUEUE_FIELD_ID, self.run.to_string()),
        ]
    }

    /// Validates a raw stream entry. `stream_id` names the run when the entry carries no `id` field.
    /// On error the returned run id is still usable for journaling (the stream id is always valid).
    pub fn parse(
        stream_id: &str,
        fields: &HashMap<String, Vec<u8>>,
        max_payload: usize,
    ) -> Result<Self, (RunId, EntryError)> {
        let fallback =
            RunId::new(stream_id).unwrap_or_else(|_| RunId::new("invalid").expect("valid"));
        let text = |k: &'static str| -> Result<Option<String>, EntryError> {
            match fields.get(k) {
                None => Ok(None),
                Some(b) => String::from_utf8(b.clone())
                    .map(Some)
                    .map_err(|_| EntryError::NotUtf8(k)),
            }
        };
        let run = match text(QUEUE_FIELD_ID) {
            Ok(Some(id)) => {
                RunId::new(id).map_err(|e| (fallback.clone(), EntryError::BadRunId(e)))?
            }
            Ok(None) => fallback.clone(),
            Err(e) => return Err((fallback, e)),
        };
        let fail = |e| (run.clone(), e);
        let event = text(QUEUE_FIELD_EVENT)
            .map_err(fail)?
            .ok_or_else(|| fail(EntryError::MissingEvent))?;
        let event = EventName::new(event).map_err(|e| fail(EntryError::BadEvent(e)))?;
        let data = match fields.get(QUEUE_FIELD_DATA) {
            Some(raw) => check_data(raw, max_payload).map_err(fail)?.to_owned(),
            None => String::new(),
        };
        Ok(QueueEntry { run, event, data })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_statuses_read_back_as_written() {
        let mut all: Vec<JournalStatus> = RunStatus::ALL.into_iter().map(Into::into).collect();
        all.extend(JournalStatus::OTHERS.map(|(s, _)| s));
        for s in all {
            assert!(!s.as_str().is_empty());
            assert_eq!(JournalStatus::parse(s.as_str()), s);
        }
        assert_eq!(
            JournalStatus::parse("paused"),
            JournalStatus::Unknown("paused".into())
        );
        assert_eq!(JournalStatus::parse("paused").as_str(), "paused");
    }
    use proptest::prelude::*;

    fn fields(pairs: &[(&str, &[u8])]) -> HashMap<String, Vec<u8>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_vec()))
            .collect()
    }

    #[test]
    fn queue_entry_parses() {
        let e =
            QueueEntry::parse("5-0", &fields(&[("event", b"backup"), ("data", b"x")]), 10).unwrap();
        assert_eq!(e.run.as_str(), "5-0");
        assert_eq!(e.event.as_str(), "backup");
        let e =
            QueueEntry::parse("5-0", &fields(&[("event", b"b"), ("id", b"my-run")]), 10).unwrap();
        assert_eq!(e.run.as_str(), "my-run");
        assert_eq!(e.data, "");
    }

    #[test]
    fn queue_entry_fields_round_trip() {
        let e = QueueEntry {
            run: RunId::new("r").unwrap(),
            event: EventName::new("ev").unwrap(),
            data: "d".into(),
        };
        let map: HashMap<String, Vec<u8>> = e
            .to_fields()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.into_bytes()))
            .collect();
        assert_eq!(QueueEntry::parse("1-0", &map, 10).unwrap(), e);
    }

    #[test]
    fn queue_entry_refusals() {
        let cases: Vec<(HashMap<String, Vec<u8>>, &str)> = vec![
            (fields(&[("data", b"x")]), "no 'event'"),
            (fields(&[("event", b"../x")]), "bad event name"),
            (fields(&[("event", b"\xff")]), "UTF-8"),
            (fields(&[("event", b"a"), ("id", b"a/b")]), "bad run id"),
            (
                fields(&[("event", b"a"), ("data", &[b'x'; 11])]),
                "11 bytes",
            ),
            (fields(&[("event", b"a"), ("data", b"\xc3")]), "UTF-8"),
            (fields(&[("event", b"a"), ("data", b"a\0b")]), "NUL"),
        ];
        for (f, want) in cases {
            let (run, err) = QueueEntry::parse("7-1", &f, 10).unwrap_err();
            assert!(
                err.to_string().contains(want),
                "{err} should mention {want}"
            );
            assert!(!run.as_str().is_empty());
        }
    }

    #[test]
    fn data_checks() {
        assert_eq!(check_data(b"ok", 10), Ok("ok"));
        assert_eq!(check_data(b"a\0", 10), Err(EntryError::Nul("data")));
        assert_eq!(check_data(b"\xff", 10), Err(EntryError::NotUtf8("data")));
        assert!(matches!(
            check_data(&[b'x'; 11], 10),
            Err(EntryError::PayloadTooLarge { len: 11, max: 10 })
        ));
    }

    #[test]
    fn run_record_round_trip() {
        let r = RunRecord {
            event: "backup".into(),
            data: "d".into(),
            status: Some(RunStatus::Failed),
            exit_code: Some(3),
            failed_step: Some("20dump".into()),
            queued: None,
            started: Some("2026-11-25T10:00:00Z".into()),
            ended: Some("2026-11-25T10:00:01Z".into()),
            attempt: 2,
            error: None,
            rollback: Some(RollbackStatus::Failed),
            rollback_failed: Some("10a,20b".into()),
        };
        let map: HashMap<String, String> = r
            .to_fields()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        assert_eq!(RunRecord::from_fields(&map), r);
    }

    #[test]
    fn statuses() {
        for s in [
            "queued",
            "running",
            "done",
            "failed",
            "cancelled",
            "abandoned",
        ] {
            let st: RunStatus = s.parse().unwrap();
            assert_eq!(st.as_str(), s);
        }
        assert!("bogus".parse::<RunStatus>().is_err());
        assert!(RunStatus::Done.is_terminal() && !RunStatus::Running.is_terminal());
    }

    proptest! {
        #[test]
        fn queue_parse_never_panics(
            id in proptest::collection::vec(any::<u8>(), 0..80),
            ev in proptest::collection::vec(any::<u8>(), 0..200),
            data in proptest::collection::vec(any::<u8>(), 0..64),
            sid in "\\PC{0,40}",
        ) {
            let f = fields(&[("id", &id), ("event", &ev), ("data", &data)]);
            match QueueEntry::parse(&sid, &f, 32) {
                Ok(e) => {
                    prop_assert!(e.data.len() <= 32);
                    prop_assert_eq!(e.event.as_str().as_bytes(), &ev[..]);
                }
                Err((run, _)) => prop_assert!(RunId::new(run.as_str()).is_ok()),
            }
        }

        #[test]
        fn journal_round_trip(run in "[a-z0-9-]{1,20}", msg in proptest::option::of("\\PC{0,50}"), code in proptest::option::of(any::<i32>())) {
            let j = JournalEntry { run, event: "e".into(), status: RunStatus::Done.into(), attempt: 1, time: "t".into(), exit_code: code, step: None, message: msg };
            let map: HashMap<String, String> = j.to_fields().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            prop_assert_eq!(JournalEntry::from_fields(&map), j);
        }

        #[test]
        fn progress_json_round_trip(pct in proptest::option::of(0u8..=100), msg in proptest::option::of("\\PC{0,40}")) {
            let p = Progress { run: "r".into(), step: Some("10a".into()), step_index: Some(1), steps: Some(3), percent: pct, message: msg, status: None };
            let j = serde_json::to_string(&p).unwrap();
            prop_assert_eq!(serde_json::from_str::<Progress>(&j).unwrap(), p);
        }
    }
}
