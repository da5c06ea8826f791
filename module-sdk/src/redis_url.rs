//! `REDIS_URL`: the agent's own credentials, handed to each step. The password must never be shown.

use std::fmt;

use redis::IntoConnectionInfo;

use crate::error::{Error, Result};

use agent_redis::url::mask as mask_url;
pub use agent_redis::url::MASK;

/// A validated Redis URL. `Debug`, `Display` and `Serialize` all show it with the password masked;
/// only [`RedisUrl::expose`] gives the real text, for connecting.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl {
    url: String,
    masked: String,
}

impl RedisUrl {
    /// Validates `url` the way the redis client will read it. `var` names where it came from, for
    /// the error message (which shows the URL masked).
    pub fn parse(var: &'static str, url: &str) -> Result<Self> {
        let masked = mask_url(url);
        url.into_connection_info().map_err(|e| Error::BadVar {
            var,
            reason: format!(
                "{masked:?} is not a usable Redis URL (redis://[user:pass@]host:port[/db] or \
                 unix:///path/to/redis.sock): {}",
                e.to_string().replace(url, &masked)
            ),
        })?;
        Ok(RedisUrl {
            url: url.to_string(),
            masked,
        })
    }

    /// The URL with its password, for connecting only.
    pub fn expose(&self) -> &str {
        &self.url
    }

    /// The URL with the password replaced by `***`.
    pub fn masked(&self) -> &str {
        &self.masked
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked)
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisUrl({:?})", self.masked)
    }
}

impl serde::Serialize for RedisUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.masked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_shows_the_password() {
        let u = RedisUrl::parse("REDIS_URL", "redis://mod0:hunter2@127.0.0.1:6379").unwrap();
        assert_eq!(u.expose(), "redis://mod0:hunter2@127.0.0.1:6379");
        for shown in [
            u.to_string(),
            format!("{u:?}"),
            serde_json::to_string(&u).unwrap(),
        ] {
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(shown.contains(MASK), "{shown}");
        }
    }

    #[test]
    fn refuses_unusable_urls_without_leaking() {
        let e = RedisUrl::parse("REDIS_URL", "http://u:hunter2@h/").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("REDIS_URL") && !msg.contains("hunter2"),
            "{msg}"
        );
        assert!(RedisUrl::parse("REDIS_URL", "unix:///run/redis.sock").is_ok());
    }
}
