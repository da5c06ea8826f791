//! Redis connections of an agent, and the rule for riding out a Redis outage.
//!
//! An agent holds three kinds of connection, each for a reason:
//! * a [`ConnectionManager`] for short commands (records, journal, acks); it reconnects by itself;
//! * a dedicated connection for the blocking `XREADGROUP`, so a read blocked for seconds never delays
//!   a record write queued behind it on a multiplexed connection;
//! * a RESP3 connection for the subscriptions, so it can carry `CLIENT SETNAME` too and tells us
//!   when it drops (a `Disconnection` push), which pub/sub alone never does.
//!
//! Every operation that must not be lost goes through [`retry`], which waits for Redis to come back.

use std::future::Future;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client, IntoConnectionInfo, ProtocolVersion, RedisError};
use tokio_util::sync::CancellationToken;

use crate::config::RedisCredentials;
use crate::error::{Error, Result};

/// How long a short command may take before it counts as a lost connection.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// Builds a client from a URL, with credentials from a file overriding those in the URL.
pub fn client(url: &str, credentials: Option<&RedisCredentials>, resp3: bool) -> Result<Client> {
    let info = url
        .into_connection_info()
        .map_err(|e| Error::RedisUrl(e.to_string()))?;
    let mut settings = info.redis_settings().clone();
    if let Some(c) = credentials {
        if let Some(u) = &c.username {
            settings = settings.set_username(u);
        }
        settings = settings.set_password(&c.password);
    }
    if resp3 {
        settings = settings.set_protocol(ProtocolVersion::RESP3);
    }
    Ok(Client::open(info.set_redis_settings(settings))?)
}

/// The password the agent authenticates with, if any: it is a secret to scrub from all output.
pub fn password_of(url: &str, credentials: Option<&RedisCredentials>) -> Option<String> {
    if let Some(c) = credentials {
        return Some(c.password.clone());
    }
    let info = url.into_connection_info().ok()?;
    info.redis_settings().password().map(str::to_string)
}

/// A URL for the same server and database with the agent's own credentials, handed to steps as
/// `REDIS_URL`. TCP URLs carry them as `user:pass@`, unix-socket URLs as `?user=…&pass=…`; every other
/// part of the URL (database, other query parameters) is kept.
pub fn url_for_steps(url: &str, credentials: Option<&RedisCredentials>) -> String {
    let Some(c) = credentials else {
        return url.to_string();
    };
    let Ok(mut parsed) = url::Url::parse(url) else {
        return url.to_string();
    };
    // Without a user name the password belongs to Redis's `default` user. Naming it keeps the URL
    // usable by redis-cli too, which sends an empty user name otherwise.
    let user = c.username.as_deref().unwrap_or("default");
    if parsed.has_host() {
        if parsed.set_username(user).is_err() || parsed.set_password(Some(&c.password)).is_err() {
            return url.to_string();
        }
    } else {
        let kept: Vec<(String, String)> = parsed
            .query_pairs()
            .filter(|(k, _)| k != "user" && k != "pass")
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let mut q = parsed.query_pairs_mut();
        q.clear().extend_pairs(kept);
        q.append_pair("user", user);
        q.append_pair("pass", &c.password);
    }
    parsed.to_string()
}

pub async fn manager(client: &Client) -> Result<ConnectionManager> {
    let cfg = ConnectionManagerConfig::new()
        .set_response_timeout(Some(COMMAND_TIMEOUT))
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(2));
    Ok(ConnectionManager::new_with_config(client.clone(), cfg).await?)
}

/// A connection for blocking reads: its response timeout is longer than any `BLOCK` we send.
pub async fn blocking_connection(
    client: &Client,
    block: Duration,
) -> Result<MultiplexedConnection> {
    let cfg = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(block + COMMAND_TIMEOUT));
    Ok(client
        .get_multiplexed_async_connection_with_config(&cfg)
        .await?)
}

/// True when Redis answered `WRONGTYPE` (a key holds another type than the command works on), for
/// a single command or any command of a pipeline: someone put other data where the agent keeps
/// its own.
pub fn is_wrong_type(e: &RedisError) -> bool {
    const WRONGTYPE: &str = "WRONGTYPE";
    e.code() == Some(WRONGTYPE)
        || e.clone()
            .into_server_errors()
            .is_some_and(|errs| errs.iter().any(|(_, s)| s.code() == WRONGTYPE))
}

/// True for errors that mean "Redis is not reachable right now" rather than "this command is wrong".
pub fn is_transient(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_connection_dropped()
        || matches!(
            e.code(),
            Some("LOADING" | "TRYAGAIN" | "BUSY" | "MASTERDOWN")
        )
}

/// Backoff between reconnection attempts: 50 ms doubling up to 5 s.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: Duration::from_millis(50),
        }
    }
}

impl Backoff {
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(Duration::from_secs(5));
        d
    }

    pub fn reset(&mut self) {
        *self = Backoff::default();
    }
}

/// Runs `op` until it succeeds, waiting out transient Redis errors with backoff. A non-transient error
/// is returned at once; shutdown ends the wait with [`Error::Shutdown`].
pub async fn retry<T, F, Fut>(what: &str, shutdown: &CancellationToken, mut op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, RedisError>>,
{
    let mut backoff = Backoff::default();
    let mut warned = false;
    loop {
        match op().await {
            Ok(v) => {
                if warned {
                    tracing::info!(what, "Redis is back");
                }
                return Ok(v);
            }
            Err(e) if is_transient(&e) => {
                if !warned {
                    tracing::warn!(what, error = %e, "Redis unavailable, retrying");
                    warned = true;
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                    _ = shutdown.cancelled() => return Err(Error::Shutdown),
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_url_carries_own_credentials() {
        let c = RedisCredentials {
            username: Some("mod0".into()),
            password: "p@ss word".into(),
        };
        assert_eq!(
            url_for_steps("redis://old:x@127.0.0.1:6379/0", Some(&c)),
            "redis://mod0:p%40ss%20word@127.0.0.1:6379/0"
        );
        assert_eq!(
            url_for_steps("rediss://h:6380/3", Some(&c)),
            "rediss://mod0:p%40ss%20word@h:6380/3"
        );
        let unix = url_for_steps("unix:///run/redis.sock?db=2&pass=old", Some(&c));
        assert_eq!(
            unix,
            "unix:///run/redis.sock?db=2&user=mod0&pass=p%40ss+word"
        );
        let info = unix.into_connection_info().unwrap();
        assert_eq!(info.redis_settings().password(), Some("p@ss word"));
        assert_eq!(info.redis_settings().db(), 2);
        assert_eq!(url_for_steps("redis://h:1", None), "redis://h:1");
        let info = url_for_steps("redis://h:1", Some(&c))
            .into_connection_info()
            .unwrap();
        assert_eq!(info.redis_settings().password(), Some("p@ss word"));
    }

    #[test]
    fn backoff_caps() {
        let mut b = Backoff::default();
        let d: Vec<_> = (0..10).map(|_| b.next_delay()).collect();
        assert_eq!(d[0], Duration::from_millis(50));
        assert_eq!(*d.last().unwrap(), Duration::from_secs(5));
    }
}
