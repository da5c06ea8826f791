//! `agentctl journal`: the last entries of an agent's journal stream, oldest first, and `--follow`.

use std::collections::HashMap;
use std::time::Duration;

use agent_redis::Backoff;
use anyhow::{Context, Result};
use core_events::JournalEntry;
use redis::streams::{StreamId, StreamRangeReply, StreamReadReply};
use redis::AsyncCommands;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::agent::{resolve, AgentRef};
use crate::conn::{is_transient, Redis};

/// How long one `XREAD BLOCK` waits before it is sent again (keeps a dead connection noticed).
const BLOCK: Duration = Duration::from_secs(5);
/// Most entries read at once while following.
const BATCH: usize = 200;

#[derive(Debug, clap::Args)]
pub struct JournalArgs {
    /// The agent: node/NAME, module/NAME or NAME (see AGENT in `agentctl --help`).
    agent: String,

    /// How many of the latest entries to show.
    #[arg(short = 'n', long = "lines", value_name = "N", default_value_t = 20)]
    lines: usize,

    /// Keep printing new entries as they come, until Ctrl-C.
    #[arg(short, long)]
    follow: bool,

    /// One JSON object per entry and line, with its stream id.
    #[arg(long)]
    json: bool,
}

pub async fn main(redis: &Redis, args: JournalArgs) -> Result<i32> {
    let agent = AgentRef::parse(&args.agent)?;
    let mut con = redis.manager().await?;
    let prefix = resolve(&mut con, &agent).await?;
    let key = prefix.journal();
    // At least one entry is read even for `-n 0`: its id is where following starts.
    let reply: StreamRangeReply = con
        .xrevrange_count(&key, "+", "-", args.lines.max(1))
        .await
        .with_context(|| format!("cannot read {key}"))?;
    let mut last = reply
        .ids
        .first()
        .map(|e| e.id.clone())
        .unwrap_or_else(|| "0-0".into());
    for entry in reply.ids.iter().take(args.lines).rev() {
        print_entry(entry, args.json)?;
    }
    if !args.follow {
        return Ok(0);
    }

    // Ctrl-C ends the follow, also while waiting for Redis to come back.
    let mut sigint = signal(SignalKind::interrupt()).context("cannot catch SIGINT")?;
    let stop = CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            sigint.recv().await;
            stop.cancel();
        }
    });
    let mut blocking = None;
    let mut warned = false;
    let mut backoff = Backoff::default();
    loop {
        if blocking.is_none() {
            let c = tokio::select! {
                c = redis.blocking() => c,
                _ = stop.cancelled() => return Ok(0),
            };
            match c {
                Ok(c) => blocking = Some(c),
                Err(e) if is_transient(&e) => {
                    warn_once(&mut warned, &e);
                    if backoff.wait(&stop).await {
                        continue;
                    }
                    return Ok(0);
                }
                Err(e) => return Err(e),
            }
        }
        let conn = blocking.as_mut().expect("connected above");
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(BATCH)
            .arg("BLOCK")
            .arg(BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(&key)
            .arg(&last);
        let read = tokio::select! {
            r = cmd.query_async::<Option<StreamReadReply>>(conn) => r,
            _ = stop.cancelled() => return Ok(0),
        };
        match read {
            Ok(reply) => {
                backoff.reset();
                if warned {
                    eprintln!("agentctl: connected again");
                    warned = false;
                }
                for entry in reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids) {
                    print_entry(&entry, args.json)?;
                    last = entry.id;
                }
            }
            Err(e) => {
                let e = anyhow::Error::new(e).context(format!("cannot read {key}"));
                if !is_transient(&e) {
                    return Err(e);
                }
                warn_once(&mut warned, &e);
                blocking = None;
                if !backoff.wait(&stop).await {
                    return Ok(0);
                }
            }
        }
    }
}

fn warn_once(warned: &mut bool, e: &anyhow::Error) {
    if !*warned {
        eprintln!("agentctl: {}; still trying", crate::fail::render(e));
        *warned = true;
    }
}

fn entry_of(raw: &StreamId) -> JournalEntry {
    let fields: HashMap<String, String> = raw
        .map
        .iter()
        .map(|(k, v)| {
            let bytes: Vec<u8> = redis::from_redis_value(v.clone()).unwrap_or_default();
            (k.clone(), String::from_utf8_lossy(&bytes).into_owned())
        })
        .collect();
    JournalEntry::from_fields(&fields)
}

fn print_entry(raw: &StreamId, json: bool) -> Result<()> {
    let entry = entry_of(raw);
    if json {
        #[derive(serde::Serialize)]
        struct Line<'a> {
            id: &'a str,
            #[serde(flatten)]
            entry: &'a JournalEntry,
        }
        let line = Line {
            id: &raw.id,
            entry: &entry,
        };
        println!("{}", serde_json::to_string(&line)?);
    } else {
        println!("{}", format_entry(&entry));
    }
    Ok(())
}

/// Control characters would break the one-line-per-entry layout: show them escaped.
fn one_line(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

/// `TIME  RUN  EVENT  STATUS  attempt=A [exit=C] [step=S] [MESSAGE]`; a missing time, run or event
/// shows as `-`.
pub fn format_entry(e: &JournalEntry) -> String {
    let or_dash = |s: &str| {
        if s.is_empty() {
            "-".to_string()
        } else {
            one_line(s)
        }
    };
    let mut parts = vec![
        or_dash(&e.time),
        or_dash(&e.run),
        or_dash(&e.event),
        or_dash(e.status.as_str()),
        format!("attempt={}", e.attempt),
    ];
    if let Some(c) = e.exit_code {
        parts.push(format!("exit={c}"));
    }
    if let Some(s) = &e.step {
        parts.push(format!("step={}", one_line(s)));
    }
    if let Some(m) = &e.message {
        parts.push(one_line(m));
    }
    parts.join("  ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use core_events::RunStatus;

    fn entry() -> JournalEntry {
        JournalEntry {
            run: "ctl-1-abcd0123".into(),
            event: "backup".into(),
            status: RunStatus::Failed.into(),
            attempt: 1,
            time: "2026-11-25T10:00:00.000Z".into(),
            exit_code: Some(7),
            step: Some("20dump".into()),
            message: Some("line1\nline2".into()),
        }
    }

    #[test]
    fn lines() {
        assert_eq!(
            format_entry(&entry()),
            "2026-11-25T10:00:00.000Z  ctl-1-abcd0123  backup  failed  attempt=1  exit=7  step=20dump  line1\\nline2"
        );
        let e = JournalEntry {
            run: String::new(),
            exit_code: None,
            step: None,
            message: None,
            status: RunStatus::Running.into(),
            ..entry()
        };
        assert_eq!(
            format_entry(&e),
            "2026-11-25T10:00:00.000Z  -  backup  running  attempt=1"
        );
    }

    #[test]
    fn entries_from_stream() {
        let raw = StreamId {
            id: "5-0".into(),
            map: [
                ("run", "r1"),
                ("event", "ev"),
                ("status", "done"),
                ("attempt", "2"),
                ("time", "t"),
                ("exit_code", "0"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), redis::Value::BulkString(v.into())))
            .collect(),
            ..Default::default()
        };
        let e = entry_of(&raw);
        assert_eq!((e.run.as_str(), e.attempt, e.exit_code), ("r1", 2, Some(0)));
    }
}
