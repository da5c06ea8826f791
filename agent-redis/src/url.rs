//! Redis URLs: the one masker used wherever a URL is shown, the password a URL carries, and the URL
//! handed to a program with the caller's own credentials in it.

use redis::IntoConnectionInfo;

use crate::credentials::Credentials;

/// What a masked password reads as.
pub const MASK: &str = "***";

/// Replaces every password a Redis URL can carry by `***`: the `user:password@` part of a TCP URL and
/// the `pass=` / `password=` query parameters (how a unix-socket URL carries credentials). It errs on
/// the side of masking: everything between the first `:` of the user part and the last `@` before the
/// query goes, so an unescaped `@` or `/` inside a password cannot leak its tail; text that is no URL
/// at all (a password pasted by mistake?) is masked whole.
pub fn mask(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
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

/// The password a URL carries, if it parses and has one.
pub fn password_in(url: &str) -> Option<String> {
    let info = url.into_connection_info().ok()?;
    info.redis_settings().password().map(str::to_string)
}

/// A URL for the same server and database with `credentials` in it, for a program that reads only
/// `REDIS_URL` (a step). TCP URLs carry them as `user:pass@`, unix-socket URLs as `?user=…&pass=…`;
/// every other part of the URL (database, other query parameters) is kept. Without credentials, or
/// when the URL does not parse, the URL is returned as it is.
pub fn with_credentials(url: &str, credentials: Option<&Credentials>) -> String {
    let Some(c) = credentials else {
        return url.to_string();
    };
    let Ok(mut parsed) = url::Url::parse(url) else {
        return url.to_string();
    };
    // Without a user name the password belongs to Redis's `default` user. Naming it keeps the URL
    // usable by redis-cli too, which sends an empty user name otherwise.
    let user = c.username.as_deref().unwrap_or("default");
    let password = c.password.expose();
    if parsed.has_host() {
        if parsed.set_username(user).is_err() || parsed.set_password(Some(password)).is_err() {
            return url.to_string();
        }
    } else {
        let kept: Vec<(String, String)> = parsed
            .query_pairs()
            .filter(|(k, _)| k != "user" && k != "pass" && k != "password")
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let mut q = parsed.query_pairs_mut();
        q.clear().extend_pairs(kept);
        q.append_pair("user", user);
        q.append_pair("pass", password);
    }
    parsed.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Password;

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
            ("rediss://u:p@ss@h", "rediss://u:***@h"),
            ("redis://onlyuser@h:1", "redis://onlyuser@h:1"),
            (
                "unix:///run/redis.sock?user=mod0&pass=s3cret",
                "unix:///run/redis.sock?user=mod0&pass=***",
            ),
            (
                "unix:///run/r.sock?user=m&pass=s3cret&db=1",
                "unix:///run/r.sock?user=m&pass=***&db=1",
            ),
            (
                "redis+unix:///r.sock?db=2&password=x",
                "redis+unix:///r.sock?db=2&password=***",
            ),
            ("unix:///home/u@1/redis.sock", "unix:///home/u@1/redis.sock"),
            ("s3cret", "***"),
        ];
        for (url, want) in cases {
            assert_eq!(mask(url), want, "{url}");
        }
    }

    #[test]
    fn a_masked_url_never_shows_the_password() {
        for url in [
            "redis://a:zz9x@h",
            "unix:///s?pass=zz9x",
            "rediss://:zz9x@h/2",
            "redis://u:zz9x/@h",
            "redis://u:a@zz9x@h:1/0",
            "zz9x",
        ] {
            assert!(!mask(url).contains("zz9x"), "{url}");
        }
    }

    #[test]
    fn a_url_carries_the_given_credentials() {
        let c = Credentials {
            username: Some("mod0".into()),
            password: Password::from_existing("p@ss word"),
        };
        let w = |url| with_credentials(url, Some(&c));
        assert_eq!(
            w("redis://old:x@127.0.0.1:6379/0"),
            "redis://mod0:p%40ss%20word@127.0.0.1:6379/0"
        );
        assert_eq!(
            w("rediss://h:6380/3"),
            "rediss://mod0:p%40ss%20word@h:6380/3"
        );
        let unix = w("unix:///run/redis.sock?db=2&pass=old");
        assert_eq!(
            unix,
            "unix:///run/redis.sock?db=2&user=mod0&pass=p%40ss+word"
        );
        let info = unix.into_connection_info().unwrap();
        assert_eq!(info.redis_settings().password(), Some("p@ss word"));
        assert_eq!(info.redis_settings().db(), 2);
        assert_eq!(with_credentials("redis://h:1", None), "redis://h:1");
        assert_eq!(password_in(&w("redis://h:1")).as_deref(), Some("p@ss word"));
        let default_user = Credentials {
            username: None,
            password: Password::from_existing("pw12"),
        };
        assert_eq!(
            with_credentials("redis://h:1", Some(&default_user)),
            "redis://default:pw12@h:1"
        );
    }
}
