//! The Redis side of each command, over one short-lived synchronous connection.
//!
//! A step's `module-sdk` call lives for milliseconds, so a plain blocking connection with explicit
//! timeouts is the simplest correct choice: no runtime, no multiplexing. Every key and channel comes
//! from `core_events`.

use std::collections::BTreeMap;
use std::time::Duration;

use core_events::keys;
use core_events::record::{QUEUE_FIELD_DATA, QUEUE_FIELD_EVENT, QUEUE_FIELD_ID};
use core_events::{AgentName, EventName, Prefix, Progress, RunId};

use crate::args::EnvKey;
use crate::context::StepContext;
use crate::error::{Error, Result};
use crate::redis_url::RedisUrl;

/// Timeouts for connecting and for each command.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub io: Duration,
}

impl Timeouts {
    /// For commands whose result matters: generous, a busy Redis must not fail a step.
    pub const NORMAL: Timeouts = Timeouts {
        connect: agent_redis::CONNECT_TIMEOUT,
        io: agent_redis::COMMAND_TIMEOUT,
    };
    /// For progress reports, which are best effort and must not hold a step up for long.
    pub const BEST_EFFORT: Timeouts = Timeouts {
        connect: Duration::from_secs(2),
        io: Duration::from_secs(2),
    };
}

/// Writes `bytes` to stdout and flushes (a closed stdout is [`Error::Stdout`], exit 74).
pub fn print_stdout(bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(Error::Stdout)
}

/// One connection to Redis, with errors sorted into unreachable / denied / other.
pub struct Session {
    con: redis::Connection,
    url: String,
}

/// A plain connection with the given timeouts; errors name the URL with its password masked.
pub fn connect(url: &RedisUrl, t: Timeouts) -> Result<redis::Connection> {
    let target = agent_redis::Target::new(url.expose(), None).map_err(|e| Error::BadVar {
        var: crate::context::var::REDIS_URL,
        reason: e.to_string(),
    })?;
    target
        .sync_connection(t.connect, t.io)
        .map_err(|e| Error::from_redis(url.masked(), "connecting", e))
}

impl Session {
    pub fn connect(url: &RedisUrl, t: Timeouts) -> Result<Self> {
        Ok(Session {
            con: connect(url, t)?,
            url: url.masked().to_string(),
        })
    }

    fn query<T: redis::FromRedisValue>(&mut self, what: String, cmd: &redis::Cmd) -> Result<T> {
        cmd.query(&mut self.con)
            .map_err(|e| Error::from_redis(&self.url, what, e))
    }

    /// Publishes a progress report of the running step on `progress/<agent>/<run>`; returns the
    /// number of receivers.
    pub fn publish_progress(&mut self, ctx: &StepContext, progress: &Progress) -> Result<i64> {
        let channel = keys::progress_channel(ctx.agent.name(), &ctx.run);
        let payload = serde_json::to_string(progress).expect("progress serializes");
        self.publish(channel, payload)
    }

    /// Publishes `json` on `event/<agent>/<event>`; returns the number of receivers.
    pub fn emit(&mut self, agent: &AgentName, event: &EventName, json: &str) -> Result<i64> {
        self.publish(keys::emitted_event_channel(agent, event), json.to_string())
    }

    fn publish(&mut self, channel: String, payload: String) -> Result<i64> {
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(&channel).arg(payload);
        self.query(format!("publishing on {channel}"), &cmd)
    }

    /// One field of `<prefix>/module.env`, as stored.
    pub fn env_get(&mut self, prefix: &Prefix, key: &EnvKey) -> Result<Option<Vec<u8>>> {
        let hash = prefix.module_env();
        let mut cmd = redis::cmd("HGET");
        cmd.arg(&hash).arg(key.as_str());
        self.query(format!("reading {key} from {hash}"), &cmd)
    }

    /// Sets one field; returns whether it was new.
    pub fn env_set(&mut self, prefix: &Prefix, key: &EnvKey, value: &str) -> Result<bool> {
        let hash = prefix.module_env();
        let mut cmd = redis::cmd("HSET");
        cmd.arg(&hash).arg(key.as_str()).arg(value);
        let added: i64 = self.query(format!("setting {key} in {hash}"), &cmd)?;
        Ok(added > 0)
    }

    /// Removes one field; returns whether it existed.
    pub fn env_rm(&mut self, prefix: &Prefix, key: &EnvKey) -> Result<bool> {
        let hash = prefix.module_env();
        let mut cmd = redis::cmd("HDEL");
        cmd.arg(&hash).arg(key.as_str());
        let removed: i64 = self.query(format!("removing {key} from {hash}"), &cmd)?;
        Ok(removed > 0)
    }

    /// All fields, sorted; values that are not UTF-8 are shown lossily.
    pub fn env_list(&mut self, prefix: &Prefix) -> Result<BTreeMap<String, String>> {
        let hash = prefix.module_env();
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(&hash);
        let raw: Vec<(Vec<u8>, Vec<u8>)> = self.query(format!("reading {hash}"), &cmd)?;
        Ok(raw
            .into_iter()
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(&k).into_owned(),
                    String::from_utf8_lossy(&v).into_owned(),
                )
            })
            .collect())
    }

    /// `XADD <prefix>/queue * event E data D [id R]`: queues an event for another agent. Returns the
    /// run id: `run` if given, else the new stream id (which the agent then uses as the run id).
    pub fn queue(
        &mut self,
        target: &Prefix,
        event: &EventName,
        data: &str,
        run: Option<&RunId>,
    ) -> Result<RunId> {
        let queue = target.queue();
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&queue)
            .arg("*")
            .arg(QUEUE_FIELD_EVENT)
            .arg(event.as_str())
            .arg(QUEUE_FIELD_DATA)
            .arg(data);
        if let Some(run) = run {
            cmd.arg(QUEUE_FIELD_ID).arg(run.as_str());
        }
        let id: String = self.query(format!("queuing {event} on {queue}"), &cmd)?;
        match run {
            Some(run) => Ok(run.clone()),
            None => RunId::new(id.as_str()).map_err(|e| Error::Redis {
                what: format!("queuing {event} on {queue}"),
                cause: redis::RedisError::from((
                    redis::ErrorKind::UnexpectedReturnType,
                    "the stream id is not a valid run id",
                    format!("{id:?}: {e}"),
                )),
            }),
        }
    }
}
