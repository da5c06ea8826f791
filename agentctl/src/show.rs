//! `agentctl show`: one run's record and output; for a run not started yet, its queue entry.

use std::io::Write;

use anyhow::{Context, Result};
use core_events::record::{QUEUE_FIELD_EVENT, QUEUE_FIELD_ID};
use core_events::{Prefix, RunId, RunStatus};
use redis::aio::ConnectionManager;
use redis::streams::StreamRangeReply;
use redis::AsyncCommands;

use crate::agent::{resolve, AgentRef};
use crate::conn::Redis;
use crate::fail::{fail, invalid};
use crate::output::{format_record, read_output, read_record, RunJson};

/// Queue entries read per round trip while looking for a run id.
const PAGE: usize = 500;

#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// The agent: node/NAME, module/NAME or NAME (see AGENT in `agentctl --help`).
    agent: String,

    /// The run id: printed by `agentctl run`, shown by `agentctl journal`, or a queue entry's
    /// stream id (runs queued without an id are named by it).
    run_id: String,

    /// Print the record (and the output, as "output") as one JSON object.
    #[arg(long)]
    json: bool,

    /// Leave the run's output out.
    #[arg(long)]
    no_output: bool,
}

pub async fn main(redis: &Redis, args: ShowArgs) -> Result<i32> {
    let agent = AgentRef::parse(&args.agent)?;
    let run = RunId::new(args.run_id.as_str()).map_err(|e| invalid(e.to_string()))?;
    let mut con = redis.manager().await?;
    let prefix = resolve(&mut con, &agent).await?;

    let Some(record) = read_record(&mut con, &prefix, &run).await? else {
        return match find_queued(&mut con, &prefix, &run).await? {
            Some((stream_id, event)) => {
                if args.json {
                    let j = serde_json::json!({
                        "run": run.as_str(),
                        "agent": prefix.as_str(),
                        "event": event,
                        "status": RunStatus::Queued,
                        "stream_id": stream_id,
                    });
                    println!("{j}");
                } else {
                    println!(
                        "run {run} on {}: queued (not started yet)\nevent:       {event}\nqueue entry: {stream_id}",
                        prefix.as_str()
                    );
                }
                Ok(0)
            }
            None => Err(fail(
                1,
                format!(
                    "no run {run} on {} (records are kept 7 days)",
                    prefix.as_str()
                ),
            )),
        };
    };

    let output = if args.no_output {
        None
    } else {
        read_output(&mut con, &prefix, &run).await?
    };
    if args.json {
        let j = RunJson {
            run: run.as_str(),
            agent: prefix.as_str(),
            record: &record,
            output: output.map(|o| String::from_utf8_lossy(&o).into_owned()),
        };
        println!("{}", serde_json::to_string(&j)?);
        return Ok(0);
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "run {run} on {}", prefix.as_str())?;
    out.write_all(format_record(&record).as_bytes())?;
    if !args.no_output {
        match output {
            Some(o) if !o.is_empty() => {
                writeln!(out, "\noutput:")?;
                out.write_all(&o)?;
                if !o.ends_with(b"\n") {
                    writeln!(out)?;
                }
            }
            _ => writeln!(out, "\noutput: (none)")?,
        }
    }
    out.flush()?;
    Ok(0)
}

/// A queue entry for `run`: its stream id is the run id, or its id field is. Returns the stream id
/// and the event.
async fn find_queued(
    con: &mut ConnectionManager,
    prefix: &Prefix,
    run: &RunId,
) -> Result<Option<(String, String)>> {
    let queue = prefix.queue();
    let mut start = "-".to_string();
    loop {
        let page: StreamRangeReply = con
            .xrange_count(&queue, &start, "+", PAGE)
            .await
            .with_context(|| format!("cannot read {queue}"))?;
        for entry in &page.ids {
            let id_field: Option<String> = entry.get(QUEUE_FIELD_ID);
            if entry.id == run.as_str() || id_field.as_deref() == Some(run.as_str()) {
                let event: String = entry.get(QUEUE_FIELD_EVENT).unwrap_or_default();
                return Ok(Some((entry.id.clone(), event)));
            }
        }
        match page.ids.last() {
            Some(last) if page.ids.len() == PAGE => start = format!("({}", last.id),
            _ => return Ok(None),
        }
    }
}
