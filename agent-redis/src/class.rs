//! The one rule that sorts a Redis error: is Redis unreachable right now (wait and try again), did
//! it refuse us (credentials or ACL: trying again will not help), or is the command wrong?

use redis::{ErrorKind, RedisError};

/// What a Redis error means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Redis is not reachable, or not ready (loading, a failover): worth waiting out.
    Unreachable,
    /// Redis refused the credentials (`WRONGPASS`, `NOAUTH`) or the ACL refused the command
    /// (`NOPERM`).
    Denied,
    /// Anything else: the command or the data is wrong.
    Other,
}

/// Sorts `e`.
pub fn classify(e: &RedisError) -> ErrorClass {
    if is_transient(e) {
        ErrorClass::Unreachable
    } else if is_denied(e) {
        ErrorClass::Denied
    } else {
        ErrorClass::Other
    }
}

/// True for errors that mean "Redis is not reachable right now" rather than "this command is wrong".
///
/// In a cluster, `NOREPLICAS` (a leader whose replicas are not in sync yet, or cut off from them)
/// and `READONLY` (a server that was the leader and is a replica now) are such: they last until
/// the replicas catch up or the caller follows the new leader (the engine's leader watch).
pub fn is_transient(e: &RedisError) -> bool {
    const TRANSIENT: [&str; 6] = [
        "LOADING",
        "TRYAGAIN",
        "BUSY",
        "MASTERDOWN",
        "NOREPLICAS",
        "READONLY",
    ];
    e.is_io_error()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.code().is_some_and(|c| TRANSIENT.contains(&c))
        || server_codes(e).any(|c| TRANSIENT.contains(&c.as_str()))
}

/// True when Redis refused the credentials or the ACL refused the command, for a single command or
/// any command of a pipeline.
pub fn is_denied(e: &RedisError) -> bool {
    const DENIED: [&str; 3] = ["NOPERM", "NOAUTH", "WRONGPASS"];
    e.kind() == ErrorKind::AuthenticationFailed
        || e.code().is_some_and(|c| DENIED.contains(&c))
        || server_codes(e).any(|c| DENIED.contains(&c.as_str()))
}

/// True when Redis answered `WRONGTYPE` (a key holds another type than the command works on), for
/// a single command or any command of a pipeline: someone put other data where the caller keeps
/// its own.
pub fn is_wrong_type(e: &RedisError) -> bool {
    const WRONGTYPE: &str = "WRONGTYPE";
    e.code() == Some(WRONGTYPE) || server_codes(e).any(|c| c == WRONGTYPE)
}

/// The codes of the server errors a pipeline's error carries.
fn server_codes(e: &RedisError) -> impl Iterator<Item = String> {
    let codes: Vec<String> = e
        .clone()
        .into_server_errors()
        .map(|errs| errs.iter().map(|(_, s)| s.code().to_string()).collect())
        .unwrap_or_default();
    codes.into_iter()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: &str) -> RedisError {
        redis::RedisError::from((
            ErrorKind::Server(redis::ServerErrorKind::ResponseError),
            "reply",
            format!("{code} something"),
        ))
    }

    #[test]
    fn each_kind_of_error_has_its_class() {
        let io = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(classify(&io), ErrorClass::Unreachable);
        let auth = RedisError::from((ErrorKind::AuthenticationFailed, "no"));
        assert_eq!(classify(&auth), ErrorClass::Denied);
        assert_eq!(classify(&server("ERR")), ErrorClass::Other);
        // As Redis sends them: a server error reply, parsed.
        for code in ["NOREPLICAS", "READONLY", "LOADING"] {
            let reply = format!("-{code} not now\r\n");
            let e = redis::parse_redis_value(reply.as_bytes())
                .and_then(|v| v.extract_error())
                .expect_err("an error reply");
            assert_eq!(classify(&e), ErrorClass::Unreachable, "{code}");
        }
    }
}
