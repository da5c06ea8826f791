//! Connecting to Redis: the global options, credentials and the kinds of connection agentctl uses.
//!
//! Short commands go through a `ConnectionManager` (bounded response time, reconnects by itself).
//! Blocking reads (`XREAD BLOCK`) get a connection of their own without a response timeout, and the
//! progress subscription a RESP3 connection whose pushes arrive on a channel.

use std::path::PathBuf;

use agent_redis::{Credentials, Target};
use anyhow::{Context, Result};
use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::PushInfo;
use tokio::sync::mpsc::UnboundedReceiver;

#[derive(Debug, clap::Args)]
pub struct RedisArgs {
    /// Redis server: redis://[user[:password]@]host:port[/db] or unix:///path/to/redis.sock.
    #[arg(
        long,
        global = true,
        env = core_events::step_env::REDIS_URL,
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub redis_url: String,

    /// File with REDIS_USER= and REDIS_PASSWORD= lines (e.g. an agent's /etc/agent/redis.env);
    /// overrides credentials in the URL. Default: /etc/agent/admin.env when readable and the URL
    /// has no password.
    #[arg(
        long,
        global = true,
        env = "AGENT_REDIS_CREDENTIALS",
        hide_env_values = true,
        value_name = "FILE"
    )]
    pub redis_credentials: Option<PathBuf>,
}

/// Where and how to connect: an `agent_redis::Target`, whose `Debug` and messages show only the
/// masked URL.
pub struct Redis {
    target: Target,
}

impl RedisArgs {
    /// The credentials are, in order: `--redis-credentials`; the URL's own; the admin's file
    /// `/etc/agent/admin.env` when it exists and this user can read it (written by
    /// `agentctl redis setup`); none.
    pub fn load(&self) -> Result<Redis> {
        let creds =
            match &self.redis_credentials {
                Some(path) => Some(Credentials::from_file(path).with_context(|| {
                    format!("cannot use --redis-credentials {}", path.display())
                })?),
                None if agent_redis::url::password_in(&self.redis_url).is_some() => None,
                None => Credentials::from_file(&default_admin_credentials()).ok(),
            };
        Ok(Redis {
            target: Target::new(&self.redis_url, creds)?,
        })
    }
}

/// The admin's credentials file written by `agentctl redis setup`.
pub fn default_admin_credentials() -> PathBuf {
    std::path::Path::new("/etc/agent").join(redis_acl::ops::ADMIN_CREDENTIALS_FILE)
}

impl Redis {
    /// The URL with any password replaced by `***`, for messages.
    pub fn shown_url(&self) -> &str {
        self.target.masked_url()
    }

    /// A connection for short commands.
    pub async fn manager(&self) -> Result<ConnectionManager> {
        self.target
            .manager()
            .await
            .with_context(|| format!("cannot connect to Redis at {}", self.shown_url()))
    }

    /// A connection for blocking reads: no response timeout, the `BLOCK` argument bounds the wait.
    pub async fn blocking(&self) -> Result<MultiplexedConnection> {
        self.target
            .blocking(None)
            .await
            .with_context(|| format!("cannot connect to Redis at {}", self.shown_url()))
    }

    /// Subscribes to `channel` on a RESP3 connection; messages arrive on the returned receiver.
    /// The connection must be kept alive as long as messages are wanted.
    pub async fn subscribe(
        &self,
        channel: &str,
    ) -> Result<(MultiplexedConnection, UnboundedReceiver<PushInfo>)> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut conn = self
            .target
            .subscriber(tx)
            .await
            .with_context(|| format!("cannot connect to Redis at {}", self.shown_url()))?;
        conn.subscribe(channel)
            .await
            .with_context(|| format!("cannot subscribe to {channel}"))?;
        Ok((conn, rx))
    }
}

impl Redis {
    /// The kind the agent name registry has for `name`; `None` when it has none or Redis cannot
    /// be asked.
    pub async fn registered_kind(
        &self,
        name: &core_events::AgentName,
    ) -> Option<core_events::AgentKind> {
        let mut conn = self.target.connection().await.ok()?;
        crate::agent::registered_kind(&mut conn, name)
            .await
            .ok()
            .flatten()
    }
}

/// True for errors that mean "Redis is not reachable right now": worth waiting out while following.
pub fn is_transient(e: &anyhow::Error) -> bool {
    e.chain()
        .find_map(|c| c.downcast_ref::<redis::RedisError>())
        .is_some_and(agent_redis::is_transient)
}
