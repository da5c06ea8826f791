//! Connecting to Redis: the global options, credentials and the kinds of connection agentctl uses.
//!
//! Short commands go through a `ConnectionManager` (bounded response time, reconnects by itself).
//! Blocking reads (`XREAD BLOCK`) get a connection of their own without a response timeout, and the
//! progress subscription a RESP3 connection whose pushes arrive on a channel.

use std::path::PathBuf;
use std::time::Duration;

use agent_engine::RedisCredentials;
use anyhow::{Context, Result};
use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client, PushInfo};
use tokio::sync::mpsc::UnboundedReceiver;

#[derive(Debug, clap::Args)]
pub struct RedisArgs {
    /// Redis server: redis://[user[:password]@]host:port[/db] or unix:///path/to/redis.sock.
    #[arg(
        long,
        global = true,
        env = "REDIS_URL",
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

/// Where and how to connect. Never print `creds` or `url` as they are: use [`Redis::shown_url`].
pub struct Redis {
    url: String,
    creds: Option<RedisCredentials>,
}

impl RedisArgs {
    /// The credentials are, in order: `--redis-credentials`; the URL's own; the admin's file
    /// `/etc/agent/admin.env` when it exists and this user can read it (written by
    /// `agentctl redis setup`); none.
    pub fn load(&self) -> Result<Redis> {
        let creds = match &self.redis_credentials {
            Some(path) => {
                Some(RedisCredentials::from_file(path).with_context(|| {
                    format!("cannot use --redis-credentials {}", path.display())
                })?)
            }
            None if agent_engine::redis_conn::password_of(&self.redis_url, None).is_some() => None,
            None => RedisCredentials::from_file(&default_admin_credentials()).ok(),
        };
        Ok(Redis {
            url: self.redis_url.clone(),
            creds,
        })
    }
}

/// The admin's credentials file written by `agentctl redis setup`.
pub fn default_admin_credentials() -> PathBuf {
    std::path::Path::new("/etc/agent").join(redis_acl::ops::ADMIN_CREDENTIALS_FILE)
}

impl Redis {
    /// The URL with any password replaced by `***`, for messages.
    pub fn shown_url(&self) -> String {
        redacted(&self.url)
    }

    fn client(&self, resp3: bool) -> Result<Client> {
        agent_engine::redis_conn::client(&self.url, self.creds.as_ref(), resp3)
            .with_context(|| format!("bad Redis URL {}", self.shown_url()))
    }

    /// A connection for short commands.
    pub async fn manager(&self) -> Result<ConnectionManager> {
        let client = self.client(false)?;
        agent_engine::redis_conn::manager(&client)
            .await
            .with_context(|| format!("cannot connect to Redis at {}", self.shown_url()))
    }

    /// A connection for blocking reads: no response timeout, the `BLOCK` argument bounds the wait.
    pub async fn blocking(&self) -> Result<MultiplexedConnection> {
        let client = self.client(false)?;
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(None);
        client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await
            .with_context(|| format!("cannot connect to Redis at {}", self.shown_url()))
    }

    /// Subscribes to `channel` on a RESP3 connection; messages arrive on the returned receiver.
    /// The connection must be kept alive as long as messages are wanted.
    pub async fn subscribe(
        &self,
        channel: &str,
    ) -> Result<(MultiplexedConnection, UnboundedReceiver<PushInfo>)> {
        let client = self.client(true)?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(agent_engine::redis_conn::COMMAND_TIMEOUT))
            .set_push_sender(tx);
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await
            .with_context(|| format!("cannot connect to Redis at {}", self.shown_url()))?;
        conn.subscribe(channel)
            .await
            .with_context(|| format!("cannot subscribe to {channel}"))?;
        Ok((conn, rx))
    }
}

/// True for errors that mean "Redis is not reachable right now": worth waiting out while following.
pub fn is_transient(e: &anyhow::Error) -> bool {
    e.chain()
        .find_map(|c| c.downcast_ref::<redis::RedisError>())
        .is_some_and(agent_engine::redis_conn::is_transient)
}

/// Replaces the password of a Redis URL by `***`: in the user-info of `redis://` and `rediss://`
/// URLs, and in the `pass`/`password` query parameters of socket URLs.
pub fn redacted(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let mut out = match base.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = match rest.find('/') {
                Some(i) => rest.split_at(i),
                None => (rest, ""),
            };
            let authority = match authority.rsplit_once('@') {
                Some((userinfo, host)) => match userinfo.split_once(':') {
                    Some((user, _password)) => format!("{user}:***@{host}"),
                    None => format!("{userinfo}@{host}"),
                },
                None => authority.to_string(),
            };
            format!("{scheme}://{authority}{path}")
        }
        None => base.to_string(),
    };
    if let Some(q) = query {
        let params: Vec<String> = q
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((k, _)) if k == "pass" || k == "password" => format!("{k}=***"),
                _ => p.to_string(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(
            redacted("redis://u:s3cret@h:6379/0"),
            "redis://u:***@h:6379/0"
        );
        assert_eq!(redacted("redis://:s3cret@h"), "redis://:***@h");
        assert_eq!(redacted("rediss://u:p@ss@h"), "rediss://u:***@h");
        assert_eq!(redacted("redis://u@h:1"), "redis://u@h:1");
        assert_eq!(redacted("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(
            redacted("unix:///run/r.sock?user=m&pass=s3cret&db=1"),
            "unix:///run/r.sock?user=m&pass=***&db=1"
        );
        assert_eq!(
            redacted("redis+unix:///r.sock?password=x"),
            "redis+unix:///r.sock?password=***"
        );
        for url in ["redis://a:zz9@h", "unix:///s?pass=zz9", "rediss://:zz9@h/2"] {
            assert!(!redacted(url).contains("zz9"), "{url}");
        }
    }
}
