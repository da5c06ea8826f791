//! The agent's writes to Redis: queue, run records, output, journal, progress, heartbeat.
//!
//! Everything here goes through [`retry`], so an outage delays a write instead of losing it. The end of
//! a run (final record, journal entry, `XACK`, `XDEL`) is one `MULTI`, so a crash can never leave a run
//! recorded as done but still pending in the queue, or acknowledged but not recorded.

use std::collections::HashMap;
use std::sync::Arc;

use core_events::keys::QUEUE_GROUP;
use core_events::{keys, JournalEntry, Prefix, Progress, QueueEntry, RunId, RunRecord, RunStatus};
use redis::aio::ConnectionManager;
use redis::AsyncCommands;
use tokio_util::sync::CancellationToken;

use crate::config::EngineConfig;
use crate::error::Result;
use crate::redis_conn::retry;
use crate::scrub::Scrubber;
use crate::secrets::SecretScrubbing;

/// Appends a PUBLISHed event to the queue unless the queue is full, and journals it as queued, in one
/// round trip. Field names come from the caller (`core_events::record`), so the script spells none.
/// ARGV: max queue length, journal MAXLEN, event field, event, data field, data, journal run field,
/// then the other journal fields as name/value pairs.
const ENQUEUE_SCRIPT: &str = r#"
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then return false end
local id = redis.call('XADD', KEYS[1], '*', ARGV[3], ARGV[4], ARGV[5], ARGV[6])
local j = {'XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', ARGV[7], id}
for i = 8, #ARGV do j[#j + 1] = ARGV[i] end
redis.call(unpack(j))
return id
"#;

/// Queues the startup event once in the agent's life: the marker and the entry are set together.
/// ARGV: marker value, then the queue entry's fields as name/value pairs.
const STARTUP_SCRIPT: &str = r#"
if redis.call('SET', KEYS[2], ARGV[1], 'NX') then
  local c = {'XADD', KEYS[1], '*'}
  for i = 2, #ARGV do c[#c + 1] = ARGV[i] end
  return redis.call(unpack(c))
end
return false
"#;

#[derive(Clone)]
pub(crate) struct Store {
    conn: ConnectionManager,
    pub prefix: Prefix,
    pub cfg: Arc<EngineConfig>,
    pub shutdown: CancellationToken,
    pub scrubber: Scrubber,
    enqueue: Arc<redis::Script>,
    startup: Arc<redis::Script>,
    secrets: Arc<SecretScrubbing>,
}

impl Store {
    pub fn new(
        conn: ConnectionManager,
        cfg: Arc<EngineConfig>,
        shutdown: CancellationToken,
        scrubber: Scrubber,
    ) -> Self {
        Store {
            conn,
            prefix: cfg.prefix(),
            cfg: cfg.clone(),
            shutdown,
            scrubber,
            enqueue: Arc::new(redis::Script::new(ENQUEUE_SCRIPT)),
            startup: Arc::new(redis::Script::new(STARTUP_SCRIPT)),
            secrets: Arc::new(SecretScrubbing::new(cfg.secret_key_file.clone())),
        }
    }

    fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    fn ttl(&self) -> i64 {
        self.cfg.run_ttl.as_secs().max(1) as i64
    }

    /// Creates the consumer group (and the stream) if missing. Starting at `0` means entries added
    /// before the agent ever ran are delivered too.
    pub async fn ensure_group(&self) -> Result<()> {
        let queue = self.prefix.queue();
        retry("create queue group", &self.shutdown, || {
            let mut c = self.conn();
            let queue = queue.clone();
            async move {
                let r: redis::RedisResult<()> =
                    c.xgroup_create_mkstream(&queue, QUEUE_GROUP, "0").await;
                match r {
                    Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
                    other => other,
                }
            }
        })
        .await
    }

    pub async fn read_record(&self, run: &RunId) -> Result<Option<RunRecord>> {
        let key = self.prefix.run(run);
        let map: HashMap<String, String> = retry("read run record", &self.shutdown, || {
            let mut c = self.conn();
            let key = key.clone();
            async move { c.hgetall(&key).await }
        })
        .await?;
        Ok((!map.is_empty()).then(|| RunRecord::from_fields(&map)))
    }

    /// Writes a fresh record for a run that starts now (a previous attempt's fields and output are
    /// replaced) and journals it.
    pub async fn start_run(
        &self,
        run: &RunId,
        record: &RunRecord,
        journal: &JournalEntry,
    ) -> Result<()> {
        let (rkey, okey) = (self.prefix.run(run), self.prefix.run_output(run));
        let mut pipe = redis::pipe();
        pipe.atomic()
            .del(&rkey)
            .ignore()
            .del(&okey)
            .ignore()
            .hset_multiple(&rkey, &record.to_fields())
            .ignore()
            .expire(&rkey, self.ttl())
            .ignore();
        self.add_journal(&mut pipe, journal);
        self.run_pipe("start run", &pipe).await
    }

    /// Records the final state of a run and removes its entry from the queue, atomically. The
    /// journal entries (the rollback's, if any, then the run's end) are part of the same `MULTI`.
    pub async fn finish_run(
        &self,
        run: &RunId,
        stream_id: &str,
        record: &RunRecord,
        journal: &[&JournalEntry],
    ) -> Result<()> {
        let (rkey, okey) = (self.prefix.run(run), self.prefix.run_output(run));
        let queue = self.prefix.queue();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset_multiple(&rkey, &record.to_fields())
            .ignore()
            .expire(&rkey, self.ttl())
            .ignore()
            .expire(&okey, self.ttl())
            .ignore();
        for j in journal {
            self.add_journal(&mut pipe, j);
        }
        pipe.xack(&queue, QUEUE_GROUP, &[stream_id])
            .ignore()
            .xdel(&queue, &[stream_id])
            .ignore();
        self.run_pipe("finish run", &pipe).await
    }

    /// Marks a run's record as rolling back (`rollback` = `running`); its status stays `running`.
    pub async fn mark_rollback_running(&self, run: &RunId) -> Result<()> {
        use core_events::record::RECORD_FIELD_ROLLBACK;
        let rkey = self.prefix.run(run);
        let mut pipe = redis::pipe();
        pipe.hset(
            &rkey,
            RECORD_FIELD_ROLLBACK,
            core_events::RollbackStatus::Running.as_str(),
        )
        .ignore();
        self.run_pipe("mark rollback", &pipe).await
    }

    /// Removes an entry that needs no run (a duplicate of a finished run).
    pub async fn drop_entry(&self, stream_id: &str, journal: Option<&JournalEntry>) -> Result<()> {
        let queue = self.prefix.queue();
        let mut pipe = redis::pipe();
        pipe.atomic();
        if let Some(j) = journal {
            self.add_journal(&mut pipe, j);
        }
        pipe.xack(&queue, QUEUE_GROUP, &[stream_id])
            .ignore()
            .xdel(&queue, &[stream_id])
            .ignore();
        self.run_pipe("drop queue entry", &pipe).await
    }

    /// Appends (already scrubbed) output of a step to the run's output key.
    pub async fn append_output(&self, run: &RunId, bytes: &[u8]) -> Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let okey = self.prefix.run_output(run);
        let mut pipe = redis::pipe();
        pipe.append(&okey, bytes)
            .ignore()
            .expire(&okey, self.ttl())
            .ignore();
        self.run_pipe("append output", &pipe).await
    }

    pub async fn journal(&self, entry: &JournalEntry) -> Result<()> {
        let mut pipe = redis::pipe();
        self.add_journal(&mut pipe, entry);
        self.run_pipe("journal", &pipe).await
    }

    fn add_journal(&self, pipe: &mut redis::Pipeline, entry: &JournalEntry) {
        let mut entry = entry.clone();
        entry.message = entry.message.map(|m| self.scrubber.scrub_str(&m));
        pipe.xadd_maxlen(
            self.prefix.journal(),
            redis::streams::StreamMaxlen::Approx(self.cfg.journal_maxlen),
            "*",
            &entry.to_fields(),
        )
        .ignore();
    }

    async fn run_pipe(&self, what: &str, pipe: &redis::Pipeline) -> Result<()> {
        retry(what, &self.shutdown, || {
            let mut c = self.conn();
            let pipe = pipe.clone();
            async move { pipe.query_async::<()>(&mut c).await }
        })
        .await
    }

    /// `module/<id>/module.env` of a module agent, raw (values need not be UTF-8); empty for a node agent.
    pub async fn module_env(&self) -> Result<HashMap<String, Vec<u8>>> {
        if self.prefix.kind() != core_events::AgentKind::Module {
            return Ok(HashMap::new());
        }
        let key = self.prefix.module_env();
        retry("read module.env", &self.shutdown, || {
            let mut c = self.conn();
            let key = key.clone();
            async move { c.hgetall(&key).await }
        })
        .await
    }

    /// Reads the module's secrets and registers the values it can decrypt with the scrubber, before
    /// anything of the run is written. Returns warnings for secrets it cannot decrypt.
    pub async fn learn_secrets(&self) -> Result<Vec<String>> {
        if self.prefix.kind() != core_events::AgentKind::Module {
            return Ok(Vec::new());
        }
        let key = self.prefix.secrets();
        let raw: Vec<(Vec<u8>, Vec<u8>)> = retry("read secrets", &self.shutdown, || {
            let mut c = self.conn();
            let key = key.clone();
            async move { c.hgetall(&key).await }
        })
        .await?;
        Ok(self.secrets.learn(raw, &self.scrubber))
    }

    /// Progress is best effort: a lost report is not worth delaying a run for.
    pub async fn publish_progress(&self, run: &RunId, progress: &Progress) {
        let channel = keys::progress_channel(&self.cfg.name, run);
        let mut progress = progress.clone();
        progress.message = progress.message.map(|m| self.scrubber.scrub_str(&m));
        let payload = serde_json::to_string(&progress).expect("progress serializes");
        let mut c = self.conn();
        if let Err(e) = c.publish::<_, _, ()>(&channel, payload).await {
            tracing::debug!(error = %e, "progress not published");
        }
    }

    /// Queues a PUBLISHed event. `Ok(None)` means the queue is full.
    pub async fn enqueue_published(&self, event: &str, data: &[u8]) -> Result<Option<String>> {
        use core_events::record::{QUEUE_FIELD_DATA, QUEUE_FIELD_EVENT};
        let (queue, journal) = (self.prefix.queue(), self.prefix.journal());
        let entry = JournalEntry::new(
            "",
            event,
            RunStatus::Queued.as_str(),
            0,
            crate::time::now_rfc3339(),
        );
        // `run` is the first journal field; the script fills it with the new stream id.
        let mut journal_fields = entry.to_fields().into_iter();
        let (run_field, _) = journal_fields
            .next()
            .expect("journal entries start with the run");
        let journal_fields: Vec<(&str, String)> = journal_fields.collect();
        retry("queue published event", &self.shutdown, || {
            let mut c = self.conn();
            let mut inv = self.enqueue.prepare_invoke();
            inv.key(&queue)
                .key(&journal)
                .arg(self.cfg.max_queue)
                .arg(self.cfg.journal_maxlen)
                .arg(QUEUE_FIELD_EVENT)
                .arg(event)
                .arg(QUEUE_FIELD_DATA)
                .arg(data)
                .arg(run_field);
            for (k, v) in &journal_fields {
                inv.arg(*k).arg(v);
            }
            async move { inv.invoke_async::<Option<String>>(&mut c).await }
        })
        .await
    }

    /// Queues the startup event if it was never queued before. Returns whether it was queued now.
    pub async fn enqueue_startup(&self, event: &core_events::EventName) -> Result<bool> {
        let entry = QueueEntry {
            run: RunId::startup(event)?,
            event: event.clone(),
            data: String::new(),
        };
        let (queue, marker) = (self.prefix.queue(), self.prefix.startup_marker());
        let now = crate::time::now_rfc3339();
        let id: Option<String> = retry("queue startup event", &self.shutdown, || {
            let mut c = self.conn();
            let mut inv = self.startup.prepare_invoke();
            inv.key(&queue).key(&marker).arg(&now);
            for (k, v) in entry.to_fields() {
                inv.arg(k).arg(v);
            }
            async move { inv.invoke_async::<Option<String>>(&mut c).await }
        })
        .await?;
        Ok(id.is_some())
    }

    /// Finds a queued (not yet started) entry by run id: its stream id and event.
    pub async fn find_queued(&self, run: &RunId) -> Result<Option<(String, String)>> {
        let queue = self.prefix.queue();
        let reply: redis::streams::StreamRangeReply = retry("scan queue", &self.shutdown, || {
            let mut c = self.conn();
            let queue = queue.clone();
            async move { c.xrange_all(&queue).await }
        })
        .await?;
        for entry in reply.ids {
            let id_field: Option<String> = entry.get(core_events::record::QUEUE_FIELD_ID);
            if entry.id == run.as_str() || id_field.as_deref() == Some(run.as_str()) {
                let event: String = entry
                    .get(core_events::record::QUEUE_FIELD_EVENT)
                    .unwrap_or_default();
                return Ok(Some((entry.id, event)));
            }
        }
        Ok(None)
    }

    /// Marks a queued run as cancelled before it starts: the consumer skips terminal records.
    pub async fn cancel_queued(
        &self,
        run: &RunId,
        record: &RunRecord,
        journal: &JournalEntry,
    ) -> Result<()> {
        let rkey = self.prefix.run(run);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset_multiple(&rkey, &record.to_fields())
            .ignore()
            .expire(&rkey, self.ttl())
            .ignore();
        self.add_journal(&mut pipe, journal);
        self.run_pipe("cancel queued run", &pipe).await
    }

    /// Refreshes the liveness key and re-asserts the connection name (lost on reconnect).
    pub async fn heartbeat(&self, value: &str) -> redis::RedisResult<()> {
        let ttl = (self.cfg.heartbeat_interval.as_secs() * 3).max(3);
        let mut pipe = redis::pipe();
        pipe.cmd("CLIENT")
            .arg("SETNAME")
            .arg(keys::client_name(&self.cfg.name))
            .ignore()
            .set_ex(self.prefix.heartbeat(), value, ttl)
            .ignore();
        let mut c = self.conn();
        pipe.query_async::<()>(&mut c).await
    }
}
