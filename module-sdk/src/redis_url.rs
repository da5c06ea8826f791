//! `REDIS_URL`: the agent's own credentials, handed to each step. The password must never be shown.

use std::fmt;

use redis::IntoConnectionInfo;

use crate::error::{Error, Result};

/// What replaces a password when a URL is shown.
pub const MASK: &str = "***";

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

/// Replaces every password a Redis URL can carry by `***`: the `user:password@` part of a TCP URL and
/// the `pass=` / `password=` query parameters (how a unix-socket URL carries credentials). It errs on
/// the side of masking: everything between the first `:` of the user part and the last `@` before the
/// query goes, so an unescaped `@` or `/` inside a password cannot leak its tail.
pub fn mask_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        // Not a URL at all: it might be a bare password pasted by mistake.
        return MASK.to_string();
    };
    let (before_query, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    let mut out = format!("{scheme}://");
    let unix = scheme.ends_with("unix");
    match before_query.rsplit_once('@') {
        Some((userinfo, host)) if !unix => {
            match userinfo.split_once(':') {
                Some((user, _password)) => out.push_str(&format!("{user}:{MASK}@")),
                None => out.push_str(&format!("{userinfo}@")),
            }
            out.push_str(host);
        }
        _ => out.push_str(before_query),
    }
    if let Some(query) = query {
        out.push('?');
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) if matches!(k, "pass" | "password") => format!("{k}={MASK}"),
                _ => pair.to_string(),
            })
            .collect();
        out.push_str(&pairs.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_passwords() {
        let cases = [
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            (
                "redis://mod0:s3cret@127.0.0.1:6379/0",
                "redis://mod0:***@127.0.0.1:6379/0",
            ),
            ("redis://:s3cret@h:1", "redis://:***@h:1"),
            ("rediss://u:p%40ss@h:1", "rediss://u:***@h:1"),
            ("redis://u:p@ss/w@h:1", "redis://u:***@h:1"),
            ("redis://onlyuser@h:1", "redis://onlyuser@h:1"),
            (
                "unix:///run/redis.sock?user=mod0&pass=s3cret",
                "unix:///run/redis.sock?user=mod0&pass=***",
            ),
            (
                "redis+unix:///r.sock?db=2&password=x",
                "redis+unix:///r.sock?db=2&password=***",
            ),
            ("unix:///home/u@1/redis.sock", "unix:///home/u@1/redis.sock"),
            ("s3cret", "***"),
        ];
        for (url, want) in cases {
            assert_eq!(mask_url(url), want, "{url}");
        }
    }

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
