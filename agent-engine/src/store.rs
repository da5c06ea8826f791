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

// The Lua scripts, one file each under `scripts/`. A script's header says what its KEYS and ARGV are,
// in order, and what it replies; its `…Args` type (one field per KEY and ARGV, in that order) is the
// only way the store invokes it, and its `…Reply` type refuses any reply the header does not document
// (`Error::ScriptReply`), rather than reading it as something else.

/// Appends a PUBLISHed event to the queue unless the queue is full, and journals it as queued, in one
/// round trip: [`EnqueueArgs`] → [`EnqueueReply`].
const ENQUEUE_SCRIPT: &str = include_str!("scripts/enqueue.lua");
/// How long a delivery marker of `enqueue.lua` lives: far longer than any retry of one enqueue.
const DELIVERY_TTL_SECS: u64 = 3600;
/// Queues the startup event once in the agent's life: [`StartupArgs`] → [`StartupReply`].
const STARTUP_SCRIPT: &str = include_str!("scripts/startup.lua");
/// Begins a run in one round trip (attempt, `running` record and journal entry, module.env and the
/// secrets): [`BeginArgs`] → [`BeginReply`].
const BEGIN_SCRIPT: &str = include_str!("scripts/begin.lua");

/// The outcome words of `begin.lua`'s reply (the script's own protocol, not the wire's): exactly the
/// words the script returns as the first element of its reply.
const BEGIN_ENDED: &str = "ended";
const BEGIN_REFUSED: &str = "refused";
const BEGIN_STARTED: &str = "started";

/// Field/value pairs, pushed as ARGV `name value name value …`.
fn push_pairs(inv: &mut redis::ScriptInvocation<'_>, pairs: &[(&str, String)]) {
    for (k, v) in pairs {
        inv.arg(*k).arg(v);
    }
}

/// The KEYS and ARGV of `scripts/enqueue.lua`, in the order of its header.
struct EnqueueArgs<'a> {
    queue: &'a str,
    journal: &'a str,
    delivery: &'a str,
    delivery_ttl: u64,
    max_queue: usize,
    journal_maxlen: usize,
    event_field: &'a str,
    event: &'a str,
    data_field: &'a str,
    data: &'a [u8],
    journal_run_field: &'a str,
    journal_fields: &'a [(&'a str, String)],
}

impl EnqueueArgs<'_> {
    /// Pushes every KEY and ARGV, in the order `enqueue.lua` documents.
    fn push(&self, inv: &mut redis::ScriptInvocation<'_>) {
        // Destructured, so a field added and not pushed does not compile.
        let EnqueueArgs {
            queue,
            journal,
            delivery,
            delivery_ttl,
            max_queue,
            journal_maxlen,
            event_field,
            event,
            data_field,
            data,
            journal_run_field,
            journal_fields,
        } = self;
        inv.key(*queue).key(*journal).key(*delivery);
        inv.arg(*max_queue)
            .arg(*journal_maxlen)
            .arg(*event_field)
            .arg(*event)
            .arg(*data_field)
            .arg(*data)
            .arg(*delivery_ttl)
            .arg(*journal_run_field);
        push_pairs(inv, journal_fields);
    }
}

/// What `enqueue.lua` replied.
#[derive(Debug, PartialEq)]
enum EnqueueReply {
    /// Queued and journaled: the new queue entry's stream id.
    Queued(String),
    /// The queue is full: nothing was written.
    Full,
}

impl EnqueueReply {
    const SCRIPT: &'static str = "enqueue.lua";

    fn parse(reply: redis::Value) -> Result<Self> {
        Ok(match stream_id_or_nil(Self::SCRIPT, reply)? {
            Some(id) => EnqueueReply::Queued(id),
            None => EnqueueReply::Full,
        })
    }
}

/// The KEYS and ARGV of `scripts/startup.lua`, in the order of its header.
struct StartupArgs<'a> {
    queue: &'a str,
    marker: &'a str,
    marker_value: &'a str,
    entry_fields: &'a [(&'a str, String)],
}

impl StartupArgs<'_> {
    /// Pushes every KEY and ARGV, in the order `startup.lua` documents.
    fn push(&self, inv: &mut redis::ScriptInvocation<'_>) {
        let StartupArgs {
            queue,
            marker,
            marker_value,
            entry_fields,
        } = self;
        inv.key(*queue).key(*marker);
        inv.arg(*marker_value);
        push_pairs(inv, entry_fields);
    }
}

/// What `startup.lua` replied.
#[derive(Debug, PartialEq)]
enum StartupReply {
    /// The startup event was queued now: the new queue entry's stream id.
    Queued(String),
    /// The marker was set before (the event was queued once already): nothing was written.
    QueuedBefore,
}

impl StartupReply {
    const SCRIPT: &'static str = "startup.lua";

    fn parse(reply: redis::Value) -> Result<Self> {
        Ok(match stream_id_or_nil(Self::SCRIPT, reply)? {
            Some(id) => StartupReply::Queued(id),
            None => StartupReply::QueuedBefore,
        })
    }
}

/// The module agent's keys of `scripts/begin.lua` (KEYS 4 and 5; a node agent has neither).
struct BeginModuleKeys<'a> {
    module_env_key: &'a str,
    secrets_key: &'a str,
}

/// The KEYS and ARGV of `scripts/begin.lua`, in the order of its header.
struct BeginArgs<'a> {
    record_key: &'a str,
    output_key: &'a str,
    journal_key: &'a str,
    module: Option<BeginModuleKeys<'a>>,
    status_field: &'a str,
    attempt_field: &'a str,
    started_field: &'a str,
    running_status: &'a str,
    terminal_statuses: &'a str,
    start: bool,
    max_attempts: u32,
    record_ttl: i64,
    journal_maxlen: usize,
    known_digest: &'a str,
    started: &'a str,
    /// Pushed after their count (`record_len`, 2 per field).
    record_fields: &'a [(&'a str, String)],
    journal_fields: &'a [(&'a str, String)],
}

impl BeginArgs<'_> {
    /// Pushes every KEY and ARGV, in the order `begin.lua` documents.
    fn push(&self, inv: &mut redis::ScriptInvocation<'_>) {
        // Destructured, so a field added and not pushed does not compile.
        let BeginArgs {
            record_key,
            output_key,
            journal_key,
            module,
            status_field,
            attempt_field,
            started_field,
            running_status,
            terminal_statuses,
            start,
            max_attempts,
            record_ttl,
            journal_maxlen,
            known_digest,
            started,
            record_fields,
            journal_fields,
        } = self;
        inv.key(*record_key).key(*output_key).key(*journal_key);
        if let Some(BeginModuleKeys {
            module_env_key,
            secrets_key,
        }) = module
        {
            inv.key(*module_env_key).key(*secrets_key);
        }
        inv.arg(*status_field)
            .arg(*attempt_field)
            .arg(*started_field)
            .arg(*running_status)
            .arg(*terminal_statuses)
            .arg(if *start { "1" } else { "0" })
            .arg(*max_attempts)
            .arg(*record_ttl)
            .arg(*journal_maxlen)
            .arg(*known_digest)
            .arg(*started)
            .arg(record_fields.len() * 2);
        push_pairs(inv, record_fields);
        push_pairs(inv, journal_fields);
    }
}

/// What `begin.lua` replied, checked against its header: outcome (with attempt and, for a run that
/// ended, its status), module.env, digest of the secrets, the secrets (when they changed), warnings.
/// Byte strings wherever the content is anyone's.
#[derive(Debug, PartialEq)]
struct BeginReply {
    outcome: Begin,
    module_env: Vec<(Vec<u8>, Vec<u8>)>,
    digest: String,
    /// `None`: unchanged since the digest the agent knows (or the run ended, or a node agent).
    secrets: Option<Vec<(Vec<u8>, Vec<u8>)>>,
    warnings: Vec<Vec<u8>>,
}

impl BeginReply {
    const SCRIPT: &'static str = "begin.lua";

    fn parse(reply: redis::Value) -> Result<Self> {
        let bad = |reason: String| script_reply_error(Self::SCRIPT, reason);
        let redis::Value::Array(items) = reply else {
            return Err(bad(format!("expected a table of 7, got {}", shape(&reply))));
        };
        let n = items.len();
        let Ok([outcome, attempt, ended, env, digest, secrets, warnings]) =
            <[redis::Value; 7]>::try_from(items)
        else {
            return Err(bad(format!("expected a table of 7, got a table of {n}")));
        };
        let outcome = bulk(Self::SCRIPT, "the outcome", outcome)?;
        let attempt = match attempt {
            redis::Value::Int(a) => u32::try_from(a)
                .map_err(|_| bad(format!("the attempt {a} is not a small whole number")))?,
            other => return Err(bad(format!("expected the attempt, got {}", shape(&other)))),
        };
        let ended = bulk(Self::SCRIPT, "the ended status", ended)?;
        let module_env = pairs(Self::SCRIPT, "module.env", env)?;
        let digest = String::from_utf8(bulk(Self::SCRIPT, "the digest", digest)?)
            .map_err(|_| bad("the digest is not UTF-8".into()))?;
        let secrets = match secrets {
            redis::Value::Nil => None,
            other => Some(pairs(Self::SCRIPT, "the secrets", other)?),
        };
        let warnings = match warnings {
            redis::Value::Array(w) => w
                .into_iter()
                .map(|w| bulk(Self::SCRIPT, "a warning", w))
                .collect::<Result<Vec<_>>>()?,
            other => return Err(bad(format!("expected the warnings, got {}", shape(&other)))),
        };
        let outcome = if outcome == BEGIN_ENDED.as_bytes() {
            let status = std::str::from_utf8(&ended)
                .ok()
                .and_then(|s| s.parse::<RunStatus>().ok())
                .filter(|s| s.is_terminal())
                .ok_or_else(|| {
                    bad(format!(
                        "{BEGIN_ENDED} with {}, not a terminal run status",
                        quoted(&ended)
                    ))
                })?;
            Begin::Ended { status, attempt }
        } else {
            let begin = if outcome == BEGIN_REFUSED.as_bytes() {
                Begin::Refused { attempt }
            } else if outcome == BEGIN_STARTED.as_bytes() {
                Begin::Started { attempt }
            } else {
                return Err(bad(format!(
                    "unknown outcome {} (expected {BEGIN_ENDED}, {BEGIN_REFUSED} or \
                     {BEGIN_STARTED})",
                    quoted(&outcome)
                )));
            };
            if !ended.is_empty() {
                return Err(bad(format!(
                    "{} with a status ({}): only {BEGIN_ENDED} has one",
                    quoted(&outcome),
                    quoted(&ended)
                )));
            }
            begin
        };
        Ok(BeginReply {
            outcome,
            module_env,
            digest,
            secrets,
            warnings,
        })
    }
}

fn script_reply_error(script: &'static str, reason: String) -> Error {
    Error::ScriptReply { script, reason }
}

/// A reply element for an error message: its kind and size, never its content (a reply may carry
/// module.env values or ciphertexts).
fn shape(v: &redis::Value) -> String {
    use redis::Value;
    match v {
        Value::Nil => "nil".into(),
        Value::Int(i) => format!("the integer {i}"),
        Value::BulkString(b) => format!("a string of {} bytes", b.len()),
        Value::Array(a) => format!("a table of {}", a.len()),
        Value::SimpleString(_) | Value::Okay => "a status reply".into(),
        Value::ServerError(_) => "an error reply".into(),
        other => format!("a reply of another kind ({})", shape_kind(other)),
    }
}

fn shape_kind(v: &redis::Value) -> &'static str {
    use redis::Value;
    match v {
        Value::Map(_) => "map",
        Value::Set(_) => "set",
        Value::Double(_) => "double",
        Value::Boolean(_) => "boolean",
        Value::VerbatimString { .. } => "verbatim string",
        Value::BigNumber(_) => "big number",
        Value::Attribute { .. } => "attribute",
        Value::Push { .. } => "push",
        _ => "unknown",
    }
}

/// A short word of a reply for an error message (an outcome, a status), quoted.
fn quoted(word: &[u8]) -> String {
    format!("{:?}", crate::shown(&word[..word.len().min(40)]))
}

/// A string element of a reply (Lua strings come back as bulk strings).
fn bulk(script: &'static str, what: &str, v: redis::Value) -> Result<Vec<u8>> {
    match v {
        redis::Value::BulkString(b) => Ok(b),
        other => Err(script_reply_error(
            script,
            format!("expected {what} as a string, got {}", shape(&other)),
        )),
    }
}

/// A flat list `field value field value …` (as `HGETALL` gives it in a script) as pairs.
fn pairs(script: &'static str, what: &str, v: redis::Value) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let redis::Value::Array(items) = v else {
        return Err(script_reply_error(
            script,
            format!("expected {what} as a flat list, got {}", shape(&v)),
        ));
    };
    if items.len() % 2 != 0 {
        return Err(script_reply_error(
            script,
            format!("{what} is a list of {} items, not of pairs", items.len()),
        ));
    }
    let mut items = items.into_iter();
    let mut out = Vec::with_capacity(items.len() / 2);
    while let (Some(k), Some(v)) = (items.next(), items.next()) {
        out.push((bulk(script, what, k)?, bulk(script, what, v)?));
    }
    Ok(out)
}

/// A stream id (`<ms>-<seq>`, as `XADD` returns it) or nil (Lua false).
fn stream_id_or_nil(script: &'static str, v: redis::Value) -> Result<Option<String>> {
    let is_id = |s: &str| {
        s.split_once('-').is_some_and(|(ms, seq)| {
            [ms, seq]
                .iter()
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        })
    };
    match v {
        redis::Value::Nil => Ok(None),
        redis::Value::BulkString(b) => match String::from_utf8(b) {
            Ok(id) if is_id(&id) => Ok(Some(id)),
            Ok(id) => Err(script_reply_error(
                script,
                format!("{} is not a stream id", quoted(id.as_bytes())),
            )),
            Err(e) => Err(script_reply_error(
                script,
                format!("{} is not a stream id", quoted(e.as_bytes())),
            )),
        },
        other => Err(script_reply_error(
            script,
            format!("expected a stream id or nil, got {}", shape(&other)),
        )),
    }
}

/// What [`Store::begin_run`] found and did (the outcome of [`BeginReply`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    /// The `running` record; its `data` and `attempt` are left out (see `scripts/begin.lua`).
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
    // What the writes need beside Redis; the agent's tasks get these from `AgentCtx`.
    cfg: Arc<EngineConfig>,
    shutdown: CancellationToken,
    scrubber: Scrubber,
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
        let claimed = retry("claim the agent name", &self.shutdown, || {
            let mut c = self.conn();
            let registry = registry.clone();
            async move {
                redis::pipe()
                    .hset_nx(&registry, name, kind.as_str())
                    .hget(&registry, name)
                    .query_async::<(bool, Option<String>)>(&mut c)
                    .await
            }
        })
        .await;
        match claimed {
            Ok((_, Some(owner))) if owner == kind.as_str() => Ok(true),
            Ok((_, owner)) => Err(Error::Config(format!(
                "the name {name} is registered as a {} in {registry}, not as a {}: a node and a \
                 module cannot share a name (their channels would be the same)",
                owner.as_deref().unwrap_or("(nothing)"),
                kind.as_str()
            ))),
            Err(Error::Redis(e)) if agent_redis::is_denied(&e) => Ok(false),
            // Not the agent's key to repair: it runs unregistered and says why.
            Err(Error::Redis(e)) if agent_redis::is_wrong_type(&e) => {
                tracing::warn!("{registry} is not a hash: the agent's name is not registered");
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Begins a run in one round trip (`scripts/begin.lua`): decides its attempt from the record,
    /// writes the `running` record and journal entry, and reads module.env and the secrets (learned
    /// here, so the caller can scrub the data before [`Store::write_run_data`]).
    ///
    /// A reply the script does not document is an [`Error::ScriptReply`]; nothing more is written.
    pub async fn begin_run(&self, req: &BeginRequest<'_>) -> Result<Begun> {
        use core_events::record::{
            RECORD_FIELD_ATTEMPT, RECORD_FIELD_DATA, RECORD_FIELD_STARTED, RECORD_FIELD_STATUS,
        };
        let (rkey, okey) = (self.prefix.run(req.run), self.prefix.run_output(req.run));
        let jkey = self.prefix.journal();
        let module_keys = (self.prefix.kind() == core_events::AgentKind::Module)
            .then(|| (self.prefix.module_env(), self.prefix.secrets()));
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
        let args = BeginArgs {
            record_key: &rkey,
            output_key: &okey,
            journal_key: &jkey,
            module: module_keys.as_ref().map(|(env, secrets)| BeginModuleKeys {
                module_env_key: env,
                secrets_key: secrets,
            }),
            status_field: RECORD_FIELD_STATUS,
            attempt_field: RECORD_FIELD_ATTEMPT,
            started_field: RECORD_FIELD_STARTED,
            running_status: RunStatus::Running.as_str(),
            terminal_statuses: &self.terminal_statuses,
            start: req.start,
            max_attempts: req.max_attempts,
            record_ttl: self.ttl(),
            journal_maxlen: self.cfg.journal_maxlen,
            known_digest: &known,
            started: &started,
            record_fields: &record,
            journal_fields: &journal,
        };
        let reply = retry("begin run", &self.shutdown, || {
            let mut c = self.conn();
            let mut inv = self.begin.prepare_invoke();
            args.push(&mut inv);
            async move { inv.invoke_async::<redis::Value>(&mut c).await }
        })
        .await?;
        let BeginReply {
            outcome,
            module_env,
            digest,
            secrets,
            warnings,
        } = BeginReply::parse(reply)?;
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
            module_env,
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
        // One delivery, one entry: a retry after an ambiguous failure (Redis killed after the
        // script ran and was persisted, before the reply) finds its marker and gets the entry
        // the first try made, instead of queuing the event twice.
        let mut token = [0u8; 16];
        getrandom::fill(&mut token)
            .map_err(|e| Error::Config(format!("no random numbers: {e}")))?;
        let token: String = token.iter().map(|b| format!("{b:02x}")).collect();
        let delivery = self.prefix.delivery(&token);
        let args = EnqueueArgs {
            queue: &queue,
            journal: &journal,
            delivery: &delivery,
            delivery_ttl: DELIVERY_TTL_SECS,
            max_queue: self.cfg.max_queue,
            journal_maxlen: self.cfg.journal_maxlen,
            event_field: QUEUE_FIELD_EVENT,
            event,
            data_field: QUEUE_FIELD_DATA,
            data,
            journal_run_field: run_field,
            journal_fields: &journal_fields,
        };
        let reply = retry("queue published event", &self.shutdown, || {
            let mut c = self.conn();
            let mut inv = self.enqueue.prepare_invoke();
            args.push(&mut inv);
            async move { inv.invoke_async::<redis::Value>(&mut c).await }
        })
        .await?;
        Ok(match EnqueueReply::parse(reply)? {
            EnqueueReply::Queued(id) => Some(id),
            EnqueueReply::Full => None,
        })
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
        let fields = entry.to_fields();
        let args = StartupArgs {
            queue: &queue,
            marker: &marker,
            marker_value: &now,
            entry_fields: &fields,
        };
        let reply = retry("queue startup event", &self.shutdown, || {
            let mut c = self.conn();
            let mut inv = self.startup.prepare_invoke();
            args.push(&mut inv);
            async move { inv.invoke_async::<redis::Value>(&mut c).await }
        })
        .await?;
        Ok(matches!(
            StartupReply::parse(reply)?,
            StartupReply::Queued(_)
        ))
    }

    /// The id of the last queue entry the agent's consumer group has read (`XINFO GROUPS`), if
    /// any: entries after it wait unread.
    pub async fn last_delivered(&self) -> Result<Option<String>> {
        let queue = self.prefix.queue();
        let reply: redis::streams::StreamInfoGroupsReply =
            retry("read the queue's group", &self.shutdown, || {
                let mut c = self.conn();
                let queue = queue.clone();
                async move { c.xinfo_groups(queue).await }
            })
            .await?;
        Ok(reply
            .groups
            .into_iter()
            .find(|g| g.name == keys::QUEUE_GROUP)
            .map(|g| g.last_delivered_id))
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

    // The scripts' interface: KEYS/ARGV as their headers document them, replies parsed strictly.

    use core_events::record::{RECORD_FIELD_ATTEMPT, RECORD_FIELD_STARTED, RECORD_FIELD_STATUS};
    use redis::Value;

    fn b(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }

    fn bulk_v(s: &str) -> Value {
        Value::BulkString(b(s))
    }

    /// The `KEYS[i] name:` and `ARGV[i] name:` lines of a script's header, as `(slot, name)`.
    fn header(script: &str) -> Vec<(String, String)> {
        script
            .lines()
            .take_while(|l| l.starts_with("--"))
            .filter_map(|l| {
                let l = l.trim_start_matches('-').trim();
                if !(l.starts_with("KEYS[") || l.starts_with("ARGV[")) {
                    return None;
                }
                let (slot, rest) = l.split_once(' ')?;
                let (name, _) = rest.split_once(':')?;
                Some((slot.to_string(), name.to_string()))
            })
            .collect()
    }

    /// What a script receives from `push`: its KEYS and ARGV, echoed by a script of our own.
    async fn echo(
        store: &Store,
        push: impl for<'s> FnOnce(&mut redis::ScriptInvocation<'s>),
    ) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let script = redis::Script::new("return {KEYS, ARGV}");
        let mut inv = script.prepare_invoke();
        push(&mut inv);
        inv.invoke_async(&mut store.conn()).await.unwrap()
    }

    /// `layout`, one `(slot, name, values)` per header line, is the header of `script`, and `got`
    /// (KEYS, ARGV as the script received them) is the layout's values, KEYS then ARGV.
    fn assert_layout(
        script: &str,
        layout: &[(&str, &str, Vec<Vec<u8>>)],
        got: (Vec<Vec<u8>>, Vec<Vec<u8>>),
    ) {
        let names: Vec<(String, String)> = layout
            .iter()
            .map(|(slot, name, _)| (slot.to_string(), name.to_string()))
            .collect();
        assert_eq!(header(script), names, "the header documents another layout");
        let values = |which: &str| -> Vec<Vec<u8>> {
            layout
                .iter()
                .filter(|(slot, _, _)| slot.starts_with(which))
                .flat_map(|(_, _, v)| v.clone())
                .collect()
        };
        assert_eq!(got.0, values("KEYS"), "KEYS");
        assert_eq!(got.1, values("ARGV"), "ARGV");
    }

    #[tokio::test]
    async fn a_retried_enqueue_queues_the_event_once() {
        // The reply of the first try lost (Redis killed after it ran and persisted it): the retry
        // of the same delivery must get the same entry, not a second one.
        let (store, _server) = store().await;
        let fields = [("status", "queued".to_string())];
        let args = EnqueueArgs {
            queue: "module/m0/queue",
            journal: "module/m0/journal",
            delivery: "module/m0/delivery/t1",
            delivery_ttl: 60,
            max_queue: 100,
            journal_maxlen: 100,
            event_field: "event",
            event: "ev",
            data_field: "data",
            data: b"x",
            journal_run_field: "run",
            journal_fields: &fields,
        };
        let mut ids = Vec::new();
        for _ in 0..2 {
            let mut inv = store.enqueue.prepare_invoke();
            args.push(&mut inv);
            let v: redis::Value = inv.invoke_async(&mut store.conn()).await.unwrap();
            ids.push(format!("{v:?}"));
        }
        assert_eq!(ids[0], ids[1]);
        let len: usize = redis::cmd("XLEN")
            .arg("module/m0/queue")
            .query_async(&mut store.conn())
            .await
            .unwrap();
        assert_eq!(len, 1);
    }

    #[tokio::test]
    async fn enqueue_args_are_pushed_as_the_header_documents() {
        let (store, _server) = store().await;
        let fields = [("f1", "v1".to_string()), ("f2", "v2".to_string())];
        let args = EnqueueArgs {
            queue: "q",
            journal: "j",
            delivery: "d",
            delivery_ttl: 9,
            max_queue: 7,
            journal_maxlen: 8,
            event_field: "ef",
            event: "ev",
            data_field: "df",
            data: b"\xffdata",
            journal_run_field: "rf",
            journal_fields: &fields,
        };
        let got = echo(&store, |inv| args.push(inv)).await;
        let layout = [
            ("KEYS[1]", "queue", vec![b("q")]),
            ("KEYS[2]", "journal", vec![b("j")]),
            ("KEYS[3]", "delivery", vec![b("d")]),
            ("ARGV[1]", "max_queue", vec![b("7")]),
            ("ARGV[2]", "journal_maxlen", vec![b("8")]),
            ("ARGV[3]", "event_field", vec![b("ef")]),
            ("ARGV[4]", "event", vec![b("ev")]),
            ("ARGV[5]", "data_field", vec![b("df")]),
            ("ARGV[6]", "data", vec![b"\xffdata".to_vec()]),
            ("ARGV[7]", "delivery_ttl", vec![b("9")]),
            ("ARGV[8]", "journal_run_field", vec![b("rf")]),
            (
                "ARGV[9..]",
                "journal_fields",
                vec![b("f1"), b("v1"), b("f2"), b("v2")],
            ),
        ];
        assert_layout(ENQUEUE_SCRIPT, &layout, got);
    }

    #[tokio::test]
    async fn startup_args_are_pushed_as_the_header_documents() {
        let (store, _server) = store().await;
        let fields = [("f1", "v1".to_string()), ("f2", "v2".to_string())];
        let args = StartupArgs {
            queue: "q",
            marker: "m",
            marker_value: "now",
            entry_fields: &fields,
        };
        let got = echo(&store, |inv| args.push(inv)).await;
        let layout = [
            ("KEYS[1]", "queue", vec![b("q")]),
            ("KEYS[2]", "marker", vec![b("m")]),
            ("ARGV[1]", "marker_value", vec![b("now")]),
            (
                "ARGV[2..]",
                "entry_fields",
                vec![b("f1"), b("v1"), b("f2"), b("v2")],
            ),
        ];
        assert_layout(STARTUP_SCRIPT, &layout, got);
    }

    #[tokio::test]
    async fn begin_args_are_pushed_as_the_header_documents() {
        let (store, _server) = store().await;
        let record = [("r1", "a".to_string()), ("r2", "b".to_string())];
        let journal = [("j1", "c".to_string())];
        for module in [true, false] {
            let args = BeginArgs {
                record_key: "rec",
                output_key: "out",
                journal_key: "jou",
                module: module.then_some(BeginModuleKeys {
                    module_env_key: "env",
                    secrets_key: "sec",
                }),
                status_field: "sf",
                attempt_field: "af",
                started_field: "tf",
                running_status: "rs",
                terminal_statuses: "t1 t2",
                start: module,
                max_attempts: 5,
                record_ttl: 60,
                journal_maxlen: 9,
                known_digest: "dg",
                started: "st",
                record_fields: &record,
                journal_fields: &journal,
            };
            let got = echo(&store, |inv| args.push(inv)).await;
            // A node agent has no module keys: KEYS 4 and 5 are left out.
            let only_module = |v: &str| if module { vec![b(v)] } else { vec![] };
            let layout = [
                ("KEYS[1]", "record_key", vec![b("rec")]),
                ("KEYS[2]", "output_key", vec![b("out")]),
                ("KEYS[3]", "journal_key", vec![b("jou")]),
                ("KEYS[4]", "module_env_key", only_module("env")),
                ("KEYS[5]", "secrets_key", only_module("sec")),
                ("ARGV[1]", "status_field", vec![b("sf")]),
                ("ARGV[2]", "attempt_field", vec![b("af")]),
                ("ARGV[3]", "started_field", vec![b("tf")]),
                ("ARGV[4]", "running_status", vec![b("rs")]),
                ("ARGV[5]", "terminal_statuses", vec![b("t1 t2")]),
                ("ARGV[6]", "start", vec![b(if module { "1" } else { "0" })]),
                ("ARGV[7]", "max_attempts", vec![b("5")]),
                ("ARGV[8]", "record_ttl", vec![b("60")]),
                ("ARGV[9]", "journal_maxlen", vec![b("9")]),
                ("ARGV[10]", "known_digest", vec![b("dg")]),
                ("ARGV[11]", "started", vec![b("st")]),
                ("ARGV[12]", "record_len", vec![b("4")]),
                (
                    "ARGV[13..12+n]",
                    "record_fields",
                    vec![b("r1"), b("a"), b("r2"), b("b")],
                ),
                ("ARGV[13+n..]", "journal_fields", vec![b("j1"), b("c")]),
            ];
            assert_layout(BEGIN_SCRIPT, &layout, got);
        }
    }

    #[test]
    fn begin_script_returns_exactly_the_outcome_words() {
        let mut returned: Vec<&str> = BEGIN_SCRIPT
            .split("return {'")
            .skip(1)
            .map(|rest| rest.split('\'').next().unwrap())
            .collect();
        returned.sort();
        returned.dedup();
        let mut words = vec![BEGIN_ENDED, BEGIN_REFUSED, BEGIN_STARTED];
        words.sort();
        assert_eq!(returned, words);
        for w in words {
            assert!(
                BEGIN_SCRIPT.contains(&format!("`{w}`")),
                "the header documents {w}"
            );
        }
    }

    fn is_reply_error(r: Result<impl std::fmt::Debug>, want: &str) -> bool {
        match r {
            Err(Error::ScriptReply { script, reason }) => {
                assert!(!reason.is_empty());
                script == want
            }
            other => panic!("expected a ScriptReply error from {want}, got {other:?}"),
        }
    }

    /// A `begin.lua` reply: outcome, attempt, status, then the rest as the script would send it.
    fn begin_reply(outcome: Value, attempt: Value, status: Value) -> Vec<Value> {
        vec![
            outcome,
            attempt,
            status,
            Value::Array(vec![bulk_v("K"), bulk_v("v")]),
            bulk_v("digest"),
            Value::Nil,
            Value::Array(vec![bulk_v("w")]),
        ]
    }

    #[test]
    fn begin_reply_parses_every_documented_reply() {
        for status in RunStatus::ALL.into_iter().filter(|s| s.is_terminal()) {
            let reply = vec![
                bulk_v(BEGIN_ENDED),
                Value::Int(2),
                bulk_v(status.as_str()),
                Value::Array(vec![]),
                bulk_v(""),
                Value::Nil,
                Value::Array(vec![]),
            ];
            assert_eq!(
                BeginReply::parse(Value::Array(reply)).unwrap(),
                BeginReply {
                    outcome: Begin::Ended { status, attempt: 2 },
                    module_env: vec![],
                    digest: String::new(),
                    secrets: None,
                    warnings: vec![],
                }
            );
        }
        let refused = begin_reply(bulk_v(BEGIN_REFUSED), Value::Int(4), bulk_v(""));
        assert_eq!(
            BeginReply::parse(Value::Array(refused)).unwrap(),
            BeginReply {
                outcome: Begin::Refused { attempt: 4 },
                module_env: vec![(b("K"), b("v"))],
                digest: "digest".into(),
                secrets: None,
                warnings: vec![b("w")],
            }
        );
        let mut started = begin_reply(bulk_v(BEGIN_STARTED), Value::Int(1), bulk_v(""));
        started[5] = Value::Array(vec![bulk_v("S"), Value::BulkString(b"\xff".to_vec())]);
        assert_eq!(
            BeginReply::parse(Value::Array(started)).unwrap(),
            BeginReply {
                outcome: Begin::Started { attempt: 1 },
                module_env: vec![(b("K"), b("v"))],
                digest: "digest".into(),
                secrets: Some(vec![(b("S"), b"\xff".to_vec())]),
                warnings: vec![b("w")],
            }
        );
    }

    #[test]
    fn begin_reply_refuses_the_undocumented() {
        let ok = || begin_reply(bulk_v(BEGIN_STARTED), Value::Int(1), bulk_v(""));
        let with = |i: usize, v: Value| {
            let mut r = ok();
            r[i] = v;
            Value::Array(r)
        };
        let ended =
            |status: Value| Value::Array(begin_reply(bulk_v(BEGIN_ENDED), Value::Int(1), status));
        let mut short = ok();
        short.pop();
        let mut long = ok();
        long.push(Value::Nil);
        let bad = [
            // Not a table of 7.
            Value::Nil,
            Value::Int(1),
            bulk_v(BEGIN_STARTED),
            Value::Array(vec![]),
            Value::Array(short),
            Value::Array(long),
            // Unknown outcome words (the old code read them as `started`).
            with(0, bulk_v("begun")),
            with(0, bulk_v("")),
            with(0, bulk_v("STARTED")),
            with(0, Value::Int(1)),
            with(0, Value::SimpleString(BEGIN_STARTED.into())),
            // Statuses: an `ended` without a terminal run status (the old code read it as
            // `done`), a status with another outcome.
            ended(bulk_v("bogus")),
            ended(bulk_v("")),
            ended(bulk_v("done failed")),
            ended(bulk_v(RunStatus::Running.as_str())),
            ended(bulk_v(RunStatus::Queued.as_str())),
            ended(Value::BulkString(b"\xff".to_vec())),
            ended(Value::Nil),
            with(2, bulk_v(RunStatus::Done.as_str())),
            // Attempts that are not a whole number of u32.
            with(1, Value::Int(-1)),
            with(1, Value::Int(1 << 33)),
            with(1, bulk_v("1")),
            with(1, Value::Nil),
            // module.env, digest, secrets, warnings of another shape.
            with(3, Value::Nil),
            with(3, Value::Array(vec![bulk_v("K")])),
            with(3, Value::Array(vec![bulk_v("K"), Value::Int(1)])),
            with(4, Value::Nil),
            with(4, Value::BulkString(b"\xff".to_vec())),
            with(5, Value::Int(0)),
            with(5, Value::Array(vec![bulk_v("S")])),
            with(6, Value::Nil),
            with(6, Value::Array(vec![Value::Int(1)])),
        ];
        for (i, reply) in bad.into_iter().enumerate() {
            let shown = format!("{reply:?}");
            assert!(
                is_reply_error(BeginReply::parse(reply), BeginReply::SCRIPT),
                "#{i}: {shown}"
            );
        }
    }

    #[test]
    fn queue_replies_are_a_stream_id_or_nil() {
        assert_eq!(EnqueueReply::parse(Value::Nil).unwrap(), EnqueueReply::Full);
        assert_eq!(
            EnqueueReply::parse(bulk_v("1700000000000-12")).unwrap(),
            EnqueueReply::Queued("1700000000000-12".into())
        );
        assert_eq!(
            StartupReply::parse(Value::Nil).unwrap(),
            StartupReply::QueuedBefore
        );
        assert_eq!(
            StartupReply::parse(bulk_v("1-0")).unwrap(),
            StartupReply::Queued("1-0".into())
        );
        let bad = || {
            [
                bulk_v(""),
                bulk_v("x"),
                bulk_v("1-"),
                bulk_v("-1"),
                bulk_v("1-0-0"),
                bulk_v("1-0 "),
                Value::BulkString(b"1-\xff".to_vec()),
                Value::Int(1),
                Value::Okay,
                Value::Boolean(false),
                Value::Array(vec![bulk_v("1-0")]),
            ]
        };
        for reply in bad() {
            let shown = format!("{reply:?}");
            assert!(
                is_reply_error(EnqueueReply::parse(reply), EnqueueReply::SCRIPT),
                "{shown}"
            );
        }
        for reply in bad() {
            let shown = format!("{reply:?}");
            assert!(
                is_reply_error(StartupReply::parse(reply), StartupReply::SCRIPT),
                "{shown}"
            );
        }
    }

    #[tokio::test]
    async fn queue_scripts_reply_as_documented() {
        let (mut store, _server) = store().await;
        let mut cfg = (*store.cfg).clone();
        cfg.max_queue = 1;
        store.cfg = Arc::new(cfg);
        let id = store.enqueue_published("e", b"d").await.unwrap();
        let id = id.expect("queued");
        let mut con = store.conn();
        let journal: redis::streams::StreamRangeReply =
            con.xrange_all(store.prefix.journal()).await.unwrap();
        let run_field =
            JournalEntry::new("", "e", RunStatus::Queued, 0, String::new()).to_fields()[0].0;
        let run: String = journal.ids[0].get(run_field).unwrap();
        assert_eq!(run, id, "the journal entry's run is the queue entry's id");
        assert_eq!(store.enqueue_published("e", b"d").await.unwrap(), None);

        let event = core_events::EventName::new("agent.started").unwrap();
        assert!(store.enqueue_startup(&event).await.unwrap());
        assert!(!store.enqueue_startup(&event).await.unwrap());
    }

    /// Runs `begin.lua` for `run` of the module agent `m0` and parses its reply.
    async fn begin_raw(store: &Store, run: &RunId, known: &str, started: &str) -> BeginReply {
        let record = [
            (RECORD_FIELD_STATUS, RunStatus::Running.as_str().to_string()),
            (RECORD_FIELD_STARTED, started.to_string()),
        ];
        let (rkey, okey) = (store.prefix.run(run), store.prefix.run_output(run));
        let (jkey, ekey, skey) = (
            store.prefix.journal(),
            store.prefix.module_env(),
            store.prefix.secrets(),
        );
        let args = BeginArgs {
            record_key: &rkey,
            output_key: &okey,
            journal_key: &jkey,
            module: Some(BeginModuleKeys {
                module_env_key: &ekey,
                secrets_key: &skey,
            }),
            status_field: RECORD_FIELD_STATUS,
            attempt_field: RECORD_FIELD_ATTEMPT,
            started_field: RECORD_FIELD_STARTED,
            running_status: RunStatus::Running.as_str(),
            terminal_statuses: &store.terminal_statuses,
            start: true,
            max_attempts: 3,
            record_ttl: 60,
            journal_maxlen: 100,
            known_digest: known,
            started,
            record_fields: &record,
            journal_fields: &[],
        };
        let mut inv = store.begin.prepare_invoke();
        args.push(&mut inv);
        BeginReply::parse(inv.invoke_async(&mut store.conn()).await.unwrap()).unwrap()
    }

    #[tokio::test]
    async fn begin_script_replies_as_documented() {
        let (store, _server) = store().await;
        let mut con = store.conn();
        let _: () = con.hset(store.prefix.module_env(), "K", "v").await.unwrap();
        let _: () = con
            .hset(store.prefix.secrets(), "S", "ciphertext")
            .await
            .unwrap();
        let r1 = RunId::new("r1").unwrap();
        let first = begin_raw(&store, &r1, "", "t1").await;
        assert_eq!(first.outcome, Begin::Started { attempt: 1 });
        assert_eq!(first.module_env, vec![(b("K"), b("v"))]);
        assert_eq!(first.secrets, Some(vec![(b("S"), b("ciphertext"))]));
        assert_eq!(first.digest.len(), 40, "a SHA-1 in hex");
        assert!(first.warnings.is_empty());
        // The secrets known: not sent again.
        let again = begin_raw(&store, &r1, &first.digest, "t1").await;
        assert_eq!(again.outcome, Begin::Started { attempt: 1 });
        assert_eq!(again.secrets, None);
        // A record that ended: nothing but the outcome.
        let _: () = con
            .hset(
                store.prefix.run(&r1),
                RECORD_FIELD_STATUS,
                RunStatus::Cancelled.as_str(),
            )
            .await
            .unwrap();
        let ended = begin_raw(&store, &r1, "", "t2").await;
        assert_eq!(
            ended,
            BeginReply {
                outcome: Begin::Ended {
                    status: RunStatus::Cancelled,
                    attempt: 1
                },
                module_env: vec![],
                digest: String::new(),
                secrets: None,
                warnings: vec![],
            }
        );
        // A module.env of the wrong type is read as empty, with a warning.
        let _: () = con.del(store.prefix.module_env()).await.unwrap();
        let _: () = con.set(store.prefix.module_env(), "x").await.unwrap();
        let r2 = RunId::new("r2").unwrap();
        let warned = begin_raw(&store, &r2, &first.digest, "t1").await;
        assert_eq!(warned.outcome, Begin::Started { attempt: 1 });
        assert!(warned.module_env.is_empty());
        assert_eq!(warned.warnings.len(), 1, "{:?}", warned.warnings);
    }

    /// A status that only contains terminal statuses (anyone who may write the agent's keys can put
    /// one there) is not taken as terminal: the run starts afresh, as for any status it does not
    /// know, instead of the script replying `ended` with a status that is none.
    #[tokio::test]
    async fn begin_takes_only_an_exact_terminal_status_as_ended() {
        let (store, _server) = store().await;
        let mut con = store.conn();
        let run = RunId::new("r1").unwrap();
        for status in ["done failed", "done ", " done", "bogus", ""] {
            let _: () = con.del(store.prefix.run(&run)).await.unwrap();
            let _: () = con
                .hset(store.prefix.run(&run), RECORD_FIELD_STATUS, status)
                .await
                .unwrap();
            assert_eq!(
                begin(&store, &run, "2026-11-25T10:00:00.001Z").await,
                Begin::Started { attempt: 1 },
                "{status:?}"
            );
        }
    }
}
