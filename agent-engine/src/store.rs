//! The agent's writes to Redis: queue, run records, output, journal, progress, heartbeat.
//!
//! Everything here goes through [`retry`], so an outage delays a write instead of losing it. The end of
//! a run (final record, journal entry, `XACK`, `XDEL`) is one `MULTI`, so a crash can never leave a run
//! recorded as done but still pending in the queue, or acknowledged but not recorded.

use std::sync::Arc;

use core_events::keys::QUEUE_GROUP;
use core_events::{keys, JournalEntry, Prefix, Progress, QueueEntry, RunId, RunRecord, RunStatus};
use redis::aio::ConnectionManager;
use redis::AsyncCommands;
use tokio_util::sync::CancellationToken;

use crate::config::EngineConfig;
use crate::error::{Error, Result};
use crate::scrub::Scrubber;
use crate::secrets::SecretScrubbing;

/// [`agent_redis::retry`] with the engine's error.
async fn retry<T, F, Fut>(what: &str, shutdown: &CancellationToken, op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = redis::RedisResult<T>>,
{
    Ok(agent_redis::retry(what, shutdown, op).await?)
}

/// Appends a PUBLISHed event to the queue unless the queue is full, and journals it as queued, in one
/// round trip. Field names come from the caller (`core_events::record`), so the script spells none.
/// ARGV: max queue length, journal MAXLEN, event field, event, data field, data, journal run field,
/// then the other journal fields as name/value pairs.
/// A queue or journal that is not a stream (anyone who may write the agent's keys can put a string
/// there) is removed first: they are the agent's own, and an error here would stop its listener.
const ENQUEUE_SCRIPT: &str = r#"
for _, key in ipairs(KEYS) do
  local t = redis.call('TYPE', key).ok
  if t ~= 'none' and t ~= 'stream' then redis.call('DEL', key) end
end
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

/// Begins a run in one round trip: reads the run's record to decide its attempt (a record still
/// `running` was interrupted; a terminal one means a duplicate entry), writes the fresh `running`
/// record and its journal entry unless told not to start, and returns what the steps need from Redis
/// (module.env, and the secrets when they changed since the agent last learned them).
///
/// The record is written without the event's data: the data may hold a secret's value the agent has
/// not learned yet, so it goes over the wire only once scrubbed with the secrets returned here. The
/// secrets are compared by a digest of their sorted fields and ciphertexts, computed here, so an
/// unchanged set costs nothing but the digest.
///
/// A retry of the script after a lost reply must not count as a new attempt: a `running` record whose
/// `started` is this begin's own (the caller keeps one value across retries) is taken as begun.
///
/// KEYS: run record, run output, journal, then module.env and secrets (module agents only).
/// ARGV: 1 status field, 2 attempt field, 3 started field, 4 the running status, 5 the terminal
/// statuses (space-separated), 6 `1` to start or `0` to only look, 7 most attempts, 8 record TTL,
/// 9 journal MAXLEN, 10 digest of the secrets known, 11 this begin's `started`, 12 n, then n record
/// field/value arguments, then the journal entry's; the script adds the attempt to both.
/// Returns: outcome (`ended`, `refused` or `started`), attempt, the ended status (or ``), module.env
/// as a flat list, the digest of the secrets, the secrets as a flat list (or nil when unchanged).
///
/// Nothing in these keys can stop the script: a run record or output of the wrong type (anyone who
/// may write the agent's keys can put a string there) is removed, as it is the agent's own and about
/// to be written anew, and so is a journal that is not a stream; a module.env or secrets key of the
/// wrong type is read as empty and reported; an `attempt` that is not a small whole number counts as
/// 0. Each such finding is returned as a warning.
const BEGIN_SCRIPT: &str = r#"
local warn = {}
local function owned(key, want)
  local t = redis.call('TYPE', key).ok
  if t ~= 'none' and t ~= want then
    redis.call('DEL', key)
    warn[#warn + 1] = key .. ' held a ' .. t .. ', not a ' .. want .. ': removed'
  end
end
local function readable(key)
  local t = redis.call('TYPE', key).ok
  if t == 'hash' then return redis.call('HGETALL', key) end
  if t ~= 'none' then warn[#warn + 1] = key .. ' is a ' .. t .. ', not a hash: read as empty' end
  return {}
end
owned(KEYS[1], 'hash')
owned(KEYS[2], 'string')
owned(KEYS[3], 'stream')
local status = redis.call('HGET', KEYS[1], ARGV[1])
local before = tonumber(redis.call('HGET', KEYS[1], ARGV[2])) or 0
if before ~= before or before < 0 or before > 1000000 then before = 0 end
before = math.floor(before)
if status and string.find(' ' .. ARGV[5] .. ' ', ' ' .. status .. ' ', 1, true) then
  return {'ended', before, status, {}, '', false, warn}
end
local env, digest, secrets = {}, '', false
if #KEYS >= 5 then
  env = readable(KEYS[4])
  local flat = readable(KEYS[5])
  local sorted = {}
  for i = 1, #flat, 2 do sorted[#sorted + 1] = {flat[i], flat[i + 1]} end
  table.sort(sorted, function(a, b) return a[1] < b[1] end)
  local parts = {}
  for _, p in ipairs(sorted) do
    parts[#parts + 1] = #p[1] .. ':' .. p[1] .. #p[2] .. ':' .. p[2]
  end
  digest = redis.sha1hex(table.concat(parts))
  if digest ~= ARGV[10] then secrets = flat end
end
local attempt = 1
if status == ARGV[4] then
  if redis.call('HGET', KEYS[1], ARGV[3]) == ARGV[11] then
    return {'started', before, '', env, digest, secrets, warn}
  end
  attempt = before + 1
end
if ARGV[6] ~= '1' or attempt > tonumber(ARGV[7]) then
  return {'refused', attempt, '', env, digest, secrets, warn}
end
redis.call('DEL', KEYS[1], KEYS[2])
local n = tonumber(ARGV[12])
local h = {'HSET', KEYS[1], ARGV[2], attempt}
for i = 13, 12 + n do h[#h + 1] = ARGV[i] end
redis.call(unpack(h))
redis.call('EXPIRE', KEYS[1], ARGV[8])
local j = {'XADD', KEYS[3], 'MAXLEN', '~', ARGV[9], '*'}
for i = 13 + n, #ARGV do j[#j + 1] = ARGV[i] end
j[#j + 1] = ARGV[2]
j[#j + 1] = attempt
redis.call(unpack(j))
return {'started', attempt, '', env, digest, secrets, warn}
"#;

/// The script's reply: outcome, attempt, ended status, module.env, digest of the secrets, the secrets
/// (when they changed), warnings. Byte strings wherever the content is anyone's.
type BeginReply = (
    String,
    u32,
    Vec<u8>,
    Vec<(Vec<u8>, Vec<u8>)>,
    String,
    Option<Vec<(Vec<u8>, Vec<u8>)>>,
    Vec<Vec<u8>>,
);

/// What [`Store::begin_run`] found and did.
pub(crate) enum Begin {
    /// The run ended before (a duplicate queue entry): nothing was written.
    Ended { status: RunStatus, attempt: u32 },
    /// Not started, as asked (`start` false) or because `attempt` is over the limit: nothing written.
    Refused { attempt: u32 },
    /// The `running` record and journal entry are written.
    Started { attempt: u32 },
}

pub(crate) struct Begun {
    pub outcome: Begin,
    /// `module/<id>/module.env`, raw (values need not be UTF-8); empty for a node agent.
    pub module_env: Vec<(Vec<u8>, Vec<u8>)>,
    /// Secrets that could not be decrypted, so cannot be scrubbed (for the journal).
    pub secret_warnings: Vec<String>,
}

/// How a run should begin: see [`Store::begin_run`].
pub(crate) struct BeginRequest<'a> {
    pub run: &'a RunId,
    /// The `running` record; its `data` and `attempt` are left out (see [`BEGIN_SCRIPT`]).
    pub record: &'a RunRecord,
    /// The `running` journal entry (its attempt is set by the script).
    pub journal: &'a JournalEntry,
    /// False: only look at the record (the event has no steps; the run fails without starting).
    pub start: bool,
    pub max_attempts: u32,
}

#[derive(Clone)]
pub(crate) struct Store {
    conn: ConnectionManager,
    pub prefix: Prefix,
    pub cfg: Arc<EngineConfig>,
    pub shutdown: CancellationToken,
    pub scrubber: Scrubber,
    enqueue: Arc<redis::Script>,
    startup: Arc<redis::Script>,
    begin: Arc<redis::Script>,
    /// The terminal run statuses, space-separated, as the begin script takes them.
    terminal_statuses: Arc<str>,
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
            begin: Arc::new(redis::Script::new(BEGIN_SCRIPT)),
            terminal_statuses: RunStatus::ALL
                .iter()
                .filter(|s| s.is_terminal())
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(" ")
                .into(),
            secrets: Arc::new(SecretScrubbing::new(cfg.secret_key_file.clone())),
        }
    }

    fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    fn ttl(&self) -> i64 {
        self.cfg.run_ttl.as_secs().max(1) as i64
    }

    /// Loads the scripts into Redis's cache, so the first event does not pay for a `NOSCRIPT` reply and
    /// a `SCRIPT LOAD` (after a Redis restart, the scripts are loaded again on first use).
    pub async fn load_scripts(&self) -> Result<()> {
        for script in [&self.enqueue, &self.startup, &self.begin] {
            retry("load script", &self.shutdown, || {
                let mut c = self.conn();
                let script = script.clone();
                async move { script.load_async(&mut c).await.map(drop) }
            })
            .await?;
        }
        Ok(())
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

    /// Claims the agent's name in the registry (`keys::agent_registry`) for its kind. `Ok(false)`
    /// when this agent may not write the registry (a module's ACL user: `agentctl module add`
    /// claimed its name). A name registered for the other kind is an error: a node and a module of
    /// one name would share every channel.
    pub async fn claim_name(&self) -> Result<bool> {
        let registry = keys::agent_registry();
        let (name, kind) = (self.cfg.name.as_str(), self.cfg.kind);
        let claimed: redis::RedisResult<(bool, Option<String>)> =
            retry("claim the agent name", &self.shutdown, || {
                let mut c = self.conn();
                let registry = registry.clone();
                async move {
                    redis::pipe()
                        .hset_nx(&registry, name, kind.as_str())
                        .hget(&registry, name)
                        .query_async(&mut c)
                        .await
                }
            })
            .await
            .map(Ok)
            .or_else(|e| match e {
                Error::Redis(e) => Ok(Err(e)),
                other => Err(other),
            })?;
        match claimed {
            Ok((_, Some(owner))) if owner == kind.as_str() => Ok(true),
            Ok((_, owner)) => Err(Error::Config(format!(
                "the name {name} is registered as a {} in {registry}, not as a {}: a node and a \
                 module cannot share a name (their channels would be the same)",
                owner.as_deref().unwrap_or("(nothing)"),
                kind.as_str()
            ))),
            Err(e) if agent_redis::is_denied(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Begins a run in one round trip ([`BEGIN_SCRIPT`]): decides its attempt from the record,
    /// writes the `running` record and journal entry, and reads module.env and the secrets (learned
    /// here, so the caller can scrub the data before [`Store::write_run_data`]).
    pub async fn begin_run(&self, req: &BeginRequest<'_>) -> Result<Begun> {
        use core_events::record::{
            RECORD_FIELD_ATTEMPT, RECORD_FIELD_DATA, RECORD_FIELD_STARTED, RECORD_FIELD_STATUS,
        };
        let (rkey, okey) = (self.prefix.run(req.run), self.prefix.run_output(req.run));
        let module = self.prefix.kind() == core_events::AgentKind::Module;
        let record: Vec<(&str, String)> = req
            .record
            .to_fields()
            .into_iter()
            .filter(|(k, _)| *k != RECORD_FIELD_DATA && *k != RECORD_FIELD_ATTEMPT)
            .collect();
        let mut journal = req.journal.clone();
        journal.message = journal.message.map(|m| self.scrubber.scrub_str(&m));
        let journal: Vec<(&str, String)> = journal
            .to_fields()
            .into_iter()
            .filter(|(k, _)| *k != RECORD_FIELD_ATTEMPT)
            .collect();
        let known = self.secrets.digest();
        let started = req.record.started.clone().unwrap_or_default();
        let reply: BeginReply = retry("begin run", &self.shutdown, || {
            let mut c = self.conn();
            let mut inv = self.begin.prepare_invoke();
            inv.key(&rkey).key(&okey).key(self.prefix.journal());
            if module {
                inv.key(self.prefix.module_env()).key(self.prefix.secrets());
            }
            inv.arg(RECORD_FIELD_STATUS)
                .arg(RECORD_FIELD_ATTEMPT)
                .arg(RECORD_FIELD_STARTED)
                .arg(RunStatus::Running.as_str())
                .arg(&*self.terminal_statuses)
                .arg(if req.start { "1" } else { "0" })
                .arg(req.max_attempts)
                .arg(self.ttl())
                .arg(self.cfg.journal_maxlen)
                .arg(&known)
                .arg(&started)
                .arg(record.len() * 2);
            for (k, v) in record.iter().chain(&journal) {
                inv.arg(*k).arg(v);
            }
            async move { inv.invoke_async(&mut c).await }
        })
        .await?;
        let (outcome, attempt, ended, env, digest, secrets, warnings) = reply;
        let outcome = match outcome.as_str() {
            "ended" => Begin::Ended {
                status: String::from_utf8_lossy(&ended)
                    .parse()
                    .unwrap_or(RunStatus::Done),
                attempt,
            },
            "refused" => Begin::Refused { attempt },
            _ => Begin::Started { attempt },
        };
        let mut secret_warnings: Vec<String> = warnings.iter().map(|w| crate::shown(w)).collect();
        for w in &secret_warnings {
            tracing::warn!(run = %req.run, "{w}");
        }
        if let Some(secrets) = secrets {
            let failed = self.secrets.learn(secrets, &self.scrubber);
            if failed.is_empty() {
                self.secrets.set_digest(digest);
            }
            secret_warnings.extend(failed);
        }
        Ok(Begun {
            outcome,
            module_env: env,
            secret_warnings,
        })
    }

    /// Adds the event's data, scrubbed, to the record of a run that began.
    pub async fn write_run_data(&self, run: &RunId, scrubbed: &str) -> Result<()> {
        let mut pipe = redis::pipe();
        pipe.hset(
            self.prefix.run(run),
            core_events::record::RECORD_FIELD_DATA,
            scrubbed,
        )
        .ignore();
        self.run_pipe("write run data", &pipe).await
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
        match self.run_pipe("journal", &pipe).await {
            // Anyone who may write the agent's keys can put a string where the journal is: it is
            // the agent's own, so it is replaced rather than let stop the agent.
            Err(crate::error::Error::Redis(e)) if agent_redis::is_wrong_type(&e) => {
                let key = self.prefix.journal();
                let kind: String = redis::cmd("TYPE")
                    .arg(&key)
                    .query_async(&mut self.conn())
                    .await?;
                if kind != "stream" {
                    tracing::warn!("{key} held a {kind}, not a stream: removed");
                    redis::cmd("DEL")
                        .arg(&key)
                        .query_async::<()>(&mut self.conn())
                        .await?;
                }
                self.run_pipe("journal", &pipe).await
            }
            other => other,
        }
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

    /// Publishes an event a step emitted through its agent on `event/<agent>/<event>`, with known
    /// secret values removed: from every JSON string (keys too) before it is serialized again, so
    /// a value JSON escaping would hide from a plain text match is caught, then from the text.
    pub async fn publish_emitted(&self, event: &core_events::EventName, data: &str) -> Result<()> {
        let payload = match serde_json::from_str::<serde_json::Value>(data) {
            Ok(v) => self
                .scrubber
                .scrub_str(&scrub_json(&self.scrubber, v).to_string()),
            Err(_) => self.scrubber.scrub_str(data),
        };
        let channel = keys::emitted_event_channel(&self.cfg.name, event);
        retry("publish emitted event", &self.shutdown, || {
            let mut c = self.conn();
            let (channel, payload) = (channel.clone(), payload.clone());
            async move { c.publish::<_, _, ()>(channel, payload).await }
        })
        .await
    }

    /// Queues a PUBLISHed event. `Ok(None)` means the queue is full.
    pub async fn enqueue_published(&self, event: &str, data: &[u8]) -> Result<Option<String>> {
        use core_events::record::{QUEUE_FIELD_DATA, QUEUE_FIELD_EVENT};
        let (queue, journal) = (self.prefix.queue(), self.prefix.journal());
        let entry = JournalEntry::new("", event, RunStatus::Queued, 0, crate::time::now_rfc3339());
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

/// Removes known secret values from every string of a JSON value, keys included.
fn scrub_json(scrubber: &crate::scrub::Scrubber, v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::String(s) => Value::String(scrubber.scrub_str(&s)),
        Value::Array(items) => {
            Value::Array(items.into_iter().map(|i| scrub_json(scrubber, i)).collect())
        }
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (scrubber.scrub_str(&k), scrub_json(scrubber, v)))
                .collect(),
        ),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core_events::{AgentKind, AgentName};

    /// A private redis-server on a unix socket in its own directory, stopped on drop.
    struct Server {
        child: std::process::Child,
        _dir: tempfile::TempDir,
    }

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    async fn store() -> (Store, Server) {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("redis.sock");
        let child = std::process::Command::new("redis-server")
            .args(["--port", "0", "--save", "", "--unixsocket"])
            .arg(&sock)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)");
        let server = Server { child, _dir: dir };
        let url = format!("unix://{}", sock.display());
        let target = agent_redis::Target::new(&url, None).unwrap();
        let mut conn = None;
        for _ in 0..100 {
            if sock.exists() {
                if let Ok(c) = target.manager().await {
                    conn = Some(c);
                    break;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let cfg = EngineConfig::new(AgentKind::Module, AgentName::new("m0").unwrap());
        let store = Store::new(
            conn.expect("redis-server answers"),
            Arc::new(cfg),
            CancellationToken::new(),
            Scrubber::new(),
        );
        (store, server)
    }

    async fn begin(store: &Store, run: &RunId, started: &str) -> Begin {
        let record = RunRecord {
            event: "e".into(),
            status: Some(RunStatus::Running),
            started: Some(started.into()),
            ..Default::default()
        };
        let journal = JournalEntry::new(
            run.as_str(),
            "e",
            RunStatus::Running,
            0,
            started.to_string(),
        );
        let req = BeginRequest {
            run,
            record: &record,
            journal: &journal,
            start: true,
            max_attempts: 3,
        };
        store.begin_run(&req).await.unwrap().outcome
    }

    #[tokio::test]
    async fn begin_counts_attempts_but_not_its_own_retries() {
        let (store, _server) = store().await;
        let run = RunId::new("r1").unwrap();
        let t1 = "2026-11-25T10:00:00.001Z";
        assert!(matches!(
            begin(&store, &run, t1).await,
            Begin::Started { attempt: 1 }
        ));
        // The same begin again (its reply was lost, the call retried): still attempt 1.
        assert!(matches!(
            begin(&store, &run, t1).await,
            Begin::Started { attempt: 1 }
        ));
        // A begin of another agent process (the first died mid-run): attempt 2, then 3, then over.
        let t2 = "2026-11-25T10:00:05.002Z";
        assert!(matches!(
            begin(&store, &run, t2).await,
            Begin::Started { attempt: 2 }
        ));
        assert!(matches!(
            begin(&store, &run, "2026-11-25T10:00:09.003Z").await,
            Begin::Started { attempt: 3 }
        ));
        assert!(matches!(
            begin(&store, &run, "2026-11-25T10:00:12.004Z").await,
            Begin::Refused { attempt: 4 }
        ));
        // A run that ended is a duplicate.
        let mut con = store.conn();
        let _: () = con
            .hset(store.prefix.run(&run), "status", "done")
            .await
            .unwrap();
        assert!(matches!(
            begin(&store, &run, t2).await,
            Begin::Ended {
                status: RunStatus::Done,
                attempt: 3
            }
        ));
    }
}
