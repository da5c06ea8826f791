//! Reading the agent's queue stream through its consumer group.
//!
//! New entries are read with `XREADGROUP … >`. Entries delivered before but never acknowledged — the
//! agent crashed mid-run, or a reply was lost when Redis went away — are read back from the consumer's
//! pending list (`XREADGROUP … 0`) at start and after every reconnection, skipping the ones this
//! process is running right now. Nothing leaves the pending list except through `XACK`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_redis::Target;
use core_events::keys::QUEUE_GROUP;
use redis::aio::MultiplexedConnection;
use redis::Value;

use crate::error::Result;

/// How long one blocking read waits before the loop checks for shutdown again.
const BLOCK: Duration = Duration::from_secs(2);

/// How many entries one read takes. More than one saves a round trip per entry when the queue is
/// long: the rest wait here in order, already in the consumer's pending list (a crash loses none;
/// they are read back from it), and a cancel of one of them still finds it in the stream.
const BATCH: usize = 16;

/// One raw queue entry: its stream id and fields (not yet validated).
pub(crate) type RawEntry = (String, HashMap<String, Vec<u8>>);

/// Stream ids being run by this process right now.
pub(crate) type InFlight = Arc<Mutex<HashSet<String>>>;

pub(crate) struct QueueReader {
    target: Target,
    conn: Option<MultiplexedConnection>,
    queue: String,
    consumer: String,
    client_name: String,
    /// `Some(id)` while re-reading the pending list, from after `id`.
    pending_cursor: Option<String>,
    buffered: VecDeque<RawEntry>,
}

impl QueueReader {
    pub fn new(target: Target, queue: String, agent: &core_events::AgentName) -> Self {
        QueueReader {
            client_name: core_events::keys::client_name(agent),
            consumer: agent.to_string(),
            target,
            conn: None,
            queue,
            pending_cursor: Some("0".into()),
            buffered: VecDeque::new(),
        }
    }

    /// Forgets the connection after an error; pending entries are read again on reconnection.
    pub fn reset(&mut self) {
        self.conn = None;
        self.pending_cursor = Some("0".into());
        self.buffered.clear();
    }

    /// Opens the blocking connection unless it is open. The agent calls it before it says it is
    /// ready, so every connection it needs is logged in by then: a password rotated after "ready"
    /// does not turn the agent's first queue read into a refused login.
    pub async fn connect(&mut self) -> Result<()> {
        if self.conn.is_none() {
            let mut conn = self.target.blocking(Some(BLOCK)).await?;
            redis::cmd("CLIENT")
                .arg("SETNAME")
                .arg(&self.client_name)
                .query_async::<()>(&mut conn)
                .await?;
            self.conn = Some(conn);
        }
        Ok(())
    }

    /// The next entry to run, or `None` when the blocking read timed out.
    pub async fn next(&mut self, in_flight: &InFlight) -> Result<Option<RawEntry>> {
        loop {
            if let Some(e) = self.buffered.pop_front() {
                return Ok(Some(e));
            }
            self.connect().await?;
            let mut cmd = redis::cmd("XREADGROUP");
            cmd.arg("GROUP")
                .arg(QUEUE_GROUP)
                .arg(&self.consumer)
                .arg("COUNT");
            match &self.pending_cursor {
                Some(cursor) => cmd.arg(BATCH).arg("STREAMS").arg(&self.queue).arg(cursor),
                None => cmd
                    .arg(BATCH)
                    .arg("BLOCK")
                    .arg(BLOCK.as_millis() as u64)
                    .arg("STREAMS")
                    .arg(&self.queue)
                    .arg(">"),
            };
            let conn = self.conn.as_mut().expect("connected above");
            let reply: Value = cmd.query_async(conn).await?;
            let entries = parse_read_reply(reply);
            if self.pending_cursor.is_some() {
                if entries.is_empty() {
                    self.pending_cursor = None;
                    continue;
                }
                self.pending_cursor = entries.last().map(|(id, _)| id.clone());
                let busy = in_flight.lock().expect("in-flight lock");
                self.buffered
                    .extend(entries.into_iter().filter(|(id, _)| !busy.contains(id)));
                continue;
            }
            let mut entries = entries.into_iter();
            let first = entries.next();
            self.buffered.extend(entries);
            return Ok(first);
        }
    }
}

/// Parses an `XREADGROUP` reply (RESP2 array or RESP3 map) into raw entries. An entry whose fields are
/// nil (deleted while pending) comes back with no fields, so it is refused and acknowledged.
fn parse_read_reply(reply: Value) -> Vec<RawEntry> {
    let streams: Vec<Value> = match reply {
        Value::Array(items) => items
            .into_iter()
            .filter_map(|s| match s {
                Value::Array(mut kv) if kv.len() == 2 => kv.pop(),
                _ => None,
            })
            .collect(),
        Value::Map(pairs) => pairs.into_iter().map(|(_, v)| v).collect(),
        _ => Vec::new(),
    };
    let mut out = Vec::new();
    for entries in streams {
        let Value::Array(entries) = entries else {
            continue;
        };
        for entry in entries {
            let Value::Array(parts) = entry else { continue };
            let mut parts = parts.into_iter();
            let Some(id) = parts
                .next()
                .and_then(|v| redis::from_redis_value::<String>(v).ok())
            else {
                continue;
            };
            let mut fields = HashMap::new();
            if let Some(Value::Array(kv)) = parts.next() {
                let mut kv = kv.into_iter();
                while let (Some(k), Some(v)) = (kv.next(), kv.next()) {
                    if let (Ok(k), Ok(v)) = (
                        redis::from_redis_value::<String>(k),
                        redis::from_redis_value::<Vec<u8>>(v),
                    ) {
                        fields.insert(k, v);
                    }
                }
            }
            out.push((id, fields));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn parses_resp2_reply() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("q"),
            Value::Array(vec![
                Value::Array(vec![
                    bulk("1-0"),
                    Value::Array(vec![bulk("event"), bulk("e"), bulk("data"), bulk("d")]),
                ]),
                Value::Array(vec![bulk("2-0"), Value::Nil]),
            ]),
        ])]);
        let e = parse_read_reply(reply);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].0, "1-0");
        assert_eq!(e[0].1["event"], b"e");
        assert!(e[1].1.is_empty());
        assert!(parse_read_reply(Value::Nil).is_empty());
    }
}
