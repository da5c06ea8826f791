//! Where Redis is and who we are to it: a [`Target`] is built once from a URL and optional
//! credentials, and hands out every kind of connection the agents and tools use.
//!
//! Each kind exists for a reason:
//! * [`Target::manager`]: a `ConnectionManager` for short commands (records, journal, acks), bounded
//!   response time, reconnects by itself;
//! * [`Target::blocking`]: a connection of its own for blocking reads (`XREADGROUP BLOCK`), so a read
//!   blocked for seconds never delays a write queued behind it on a multiplexed connection;
//! * [`Target::subscriber`]: a RESP3 connection whose pushes go to a sender, so it can carry
//!   `CLIENT SETNAME` too and tells us when it drops (a `Disconnection` push), which RESP2 pub/sub
//!   never does.
//!
//! Finding the leader belongs here: every caller already connects through this type. After a
//! failover Redis Sentinel repoints every node's Redis, and a `Target` follows what its server
//! replicates (`Target::leader`); the engine watches it to start again on a new leader.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client, IntoConnectionInfo, ProtocolVersion, RedisResult};

use crate::credentials::Credentials;
use crate::error::{Error, Result};

/// How long a short command may take before it counts as a lost connection.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// How long establishing a connection may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A Redis server and the credentials to use there. Its `Debug` shows the masked URL only.
#[derive(Clone)]
pub struct Target {
    masked: String,
    credentials: Option<Credentials>,
    resp2: Client,
    resp3: Client,
    /// Whether connections go to the leader when this server is a replica ([`Target::leader`]).
    follow: bool,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("url", &self.masked)
            .field("user", &self.user())
            .finish()
    }
}

impl Target {
    /// A target from a URL (`redis://`, `rediss://`, `unix://`, `redis+unix://`), with
    /// `credentials`, when given, overriding those in the URL.
    pub fn new(url: &str, credentials: Option<Credentials>) -> Result<Target> {
        let masked = crate::url::mask(url);
        let info = url.into_connection_info().map_err(|e| Error::Url {
            url: masked.clone(),
            reason: e.to_string(),
        })?;
        let mut settings = info.redis_settings().clone();
        if let Some(c) = &credentials {
            if let Some(u) = &c.username {
                settings = settings.set_username(u);
            }
            settings = settings.set_password(c.password.expose());
        }
        let open = |settings: redis::RedisConnectionInfo| {
            Client::open(info.clone().set_redis_settings(settings)).map_err(|e| Error::Url {
                url: masked.clone(),
                reason: e.to_string(),
            })
        };
        let resp2 = open(settings.clone())?;
        let resp3 = open(settings.set_protocol(ProtocolVersion::RESP3))?;
        Ok(Target {
            masked,
            credentials,
            resp2,
            resp3,
            follow: true,
        })
    }

    /// The server that takes the writes: this one, or — when this one is a replica (`ROLE`) — the
    /// leader it replicates, at the address it replicates from, with the same credentials (every
    /// node's Redis has the same users). A user that may not run `ROLE` (ACL users made before
    /// the cluster) and a server that is not a replica keep this target.
    ///
    /// Every connection below is made to this server: agents and tools are pointed at the local
    /// Redis of their node, which tells them where the leader is — and after a failover it is
    /// the local Redis that Sentinel repoints, so a reconnection follows it.
    pub async fn leader(&self) -> RedisResult<Target> {
        if !self.follow {
            return Ok(self.clone());
        }
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT));
        let mut conn = self
            .resp2
            .get_multiplexed_async_connection_with_config(&cfg)
            .await?;
        let role = redis::cmd("ROLE").query_async(&mut conn).await;
        self.follow(role)
    }

    /// [`Target::leader`] for synchronous callers.
    pub fn leader_blocking(&self, connect: Duration, io: Duration) -> RedisResult<Target> {
        if !self.follow {
            return Ok(self.clone());
        }
        let mut con = self.resp2.get_connection_with_timeout(connect)?;
        con.set_read_timeout(Some(io))?;
        con.set_write_timeout(Some(io))?;
        let role = redis::cmd("ROLE").query(&mut con);
        self.follow(role)
    }

    fn follow(&self, role: RedisResult<redis::Value>) -> RedisResult<Target> {
        let role = match role {
            Ok(v) => v,
            Err(e) if crate::class::is_denied(&e) => return Ok(self.clone()),
            Err(e) => return Err(e),
        };
        let Some((host, port)) = leader_of_role(&role) else {
            return Ok(self.clone());
        };
        let at = |c: &Client| {
            c.get_connection_info()
                .clone()
                .set_addr(redis::ConnectionAddr::Tcp(host.clone(), port))
        };
        Ok(Target {
            masked: format!("redis://{host}:{port} (the leader, from {})", self.masked),
            credentials: self.credentials.clone(),
            resp2: Client::open(at(&self.resp2))?,
            resp3: Client::open(at(&self.resp3))?,
            follow: false,
        })
    }

    /// This very server, replica or not: for reads that must work while the leader cannot be
    /// reached (a node's VPN peers at boot come from its local replica).
    pub fn here(&self) -> Target {
        Target {
            follow: false,
            ..self.clone()
        }
    }

    /// Whether connections follow this server's leader when it is a replica.
    pub fn follows(&self) -> bool {
        self.follow
    }

    /// `host:port` (or the socket's path) of this very server: what [`Target::leader`] changes.
    pub fn address(&self) -> String {
        match &self.resp2.get_connection_info().addr() {
            redis::ConnectionAddr::Tcp(h, p)
            | redis::ConnectionAddr::TcpTls {
                host: h, port: p, ..
            } => {
                format!("{h}:{p}")
            }
            redis::ConnectionAddr::Unix(path) => path.display().to_string(),
            other => format!("{other:?}"),
        }
    }

    /// The address of the leader as a `ROLE` reply of this server tells it: the replica's
    /// leader, or this server itself.
    pub fn leader_address_of(&self, role: &redis::Value) -> String {
        match leader_of_role(role) {
            Some((host, port)) => format!("{host}:{port}"),
            None => self.address(),
        }
    }

    /// The URL with every password masked, for messages.
    pub fn masked_url(&self) -> &str {
        &self.masked
    }

    /// The user name the target authenticates as (`None`: Redis's `default` user or the URL's).
    pub fn user(&self) -> Option<&str> {
        match &self.credentials {
            Some(c) => c.username.as_deref(),
            None => self.resp2.get_connection_info().redis_settings().username(),
        }
    }

    /// The password the target authenticates with, if any: a secret to scrub from all output.
    pub fn password(&self) -> Option<&str> {
        match &self.credentials {
            Some(c) => Some(c.password.expose()),
            None => self.resp2.get_connection_info().redis_settings().password(),
        }
    }

    /// A connection for short commands: bounded response time, reconnects by itself.
    pub async fn manager(&self) -> RedisResult<ConnectionManager> {
        let cfg = ConnectionManagerConfig::new()
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(2));
        let leader = self.leader().await?;
        ConnectionManager::new_with_config(leader.resp2, cfg).await
    }

    /// A plain connection for short commands (no reconnection: for a tool's few commands, where a
    /// lost connection is an error to report).
    pub async fn connection(&self) -> RedisResult<MultiplexedConnection> {
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT));
        self.leader()
            .await?
            .resp2
            .get_multiplexed_async_connection_with_config(&cfg)
            .await
    }

    /// A synchronous connection (tools and steps that run a few commands and exit), with its own
    /// connect and read/write timeouts.
    pub fn sync_connection(
        &self,
        connect: Duration,
        io: Duration,
    ) -> RedisResult<redis::Connection> {
        let con = self
            .leader_blocking(connect, io)?
            .resp2
            .get_connection_with_timeout(connect)?;
        con.set_read_timeout(Some(io))?;
        con.set_write_timeout(Some(io))?;
        Ok(con)
    }

    /// A connection for blocking reads. With `Some(block)` its response timeout is longer than any
    /// `BLOCK` of that length; with `None` it has none (the caller bounds the wait).
    pub async fn blocking(&self, block: Option<Duration>) -> RedisResult<MultiplexedConnection> {
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(block.map(|b| b + COMMAND_TIMEOUT));
        self.leader()
            .await?
            .resp2
            .get_multiplexed_async_connection_with_config(&cfg)
            .await
    }

    /// A RESP3 connection whose pushes (messages, `Disconnection`) go to `pushes`.
    pub async fn subscriber(
        &self,
        pushes: impl redis::aio::AsyncPushSender,
    ) -> RedisResult<MultiplexedConnection> {
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_push_sender(pushes);
        self.leader()
            .await?
            .resp3
            .get_multiplexed_async_connection_with_config(&cfg)
            .await
    }
}

/// The leader's address in a `ROLE` reply of a replica (`slave`, host, port, state, offset).
pub fn leader_of_role(role: &redis::Value) -> Option<(String, u16)> {
    use redis::Value;
    let Value::Array(items) = role else {
        return None;
    };
    let text = |v: &Value| match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    if text(items.first()?)?.as_str() != "slave" {
        return None;
    }
    let host = text(items.get(1)?)?;
    let port = match items.get(2)? {
        Value::Int(p) => u16::try_from(*p).ok()?,
        other => text(other)?.parse().ok()?,
    };
    (!host.is_empty() && host != "?").then_some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Password;

    #[test]
    fn the_leader_is_read_from_a_replica_role_only() {
        use redis::Value;
        let b = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let replica = Value::Array(vec![
            b("slave"),
            b("10.5.4.1"),
            Value::Int(6379),
            b("connected"),
            Value::Int(10),
        ]);
        assert_eq!(leader_of_role(&replica), Some(("10.5.4.1".into(), 6379)));
        let master = Value::Array(vec![b("master"), Value::Int(0), Value::Array(vec![])]);
        assert_eq!(leader_of_role(&master), None);
        assert_eq!(leader_of_role(&Value::Nil), None);
    }

    #[test]
    fn credentials_override_the_url_and_nothing_shows_the_password() {
        let t = Target::new("redis://u:inurl9@127.0.0.1:6379/2", None).unwrap();
        assert_eq!(t.password(), Some("inurl9"));
        assert_eq!(t.user(), Some("u"));
        assert_eq!(t.masked_url(), "redis://u:***@127.0.0.1:6379/2");
        assert!(!format!("{t:?}").contains("inurl9"));

        let c = Credentials {
            username: Some("mod0".into()),
            password: Password::from_existing("fromfile9"),
        };
        let t = Target::new("redis://u:inurl9@127.0.0.1:6379/2", Some(c)).unwrap();
        assert_eq!(t.password(), Some("fromfile9"));
        assert_eq!(t.user(), Some("mod0"));
        assert!(!format!("{t:?}").contains("fromfile9"));
        let e = Target::new("http://x:pw12345@h", None).unwrap_err();
        assert!(!e.to_string().contains("pw12345"), "{e}");
    }
}
