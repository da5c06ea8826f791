//! The secrets of a module in Redis, over a synchronous connection:
//!
//! * `module/<id>/public_key` — string, the module's age recipient (`age1…`);
//! * `module/<id>/secrets` — hash, secret name → ASCII-armored age ciphertext to that recipient.
//!
//! Only ciphertext and public keys ever go over the wire: values are encrypted before `HSET` and
//! decrypted after `HGET`. Every writer encrypts to the public key it read under `WATCH`, and writes with
//! `MULTI`/`EXEC`, so a secret is never written to a key that a concurrent rotation just replaced.

use core_events::Prefix;
use redis::ConnectionLike;

use crate::crypto::{decrypt, encrypt, Identity, Recipient};
use crate::error::{Error, Result};
use crate::secret::{Secret, SecretName};

/// How often an optimistic transaction is tried before giving up with [`Error::Conflict`].
pub const MAX_ATTEMPTS: u32 = 5;

/// The module id of a prefix, for messages.
fn module_of(prefix: &Prefix) -> String {
    prefix.agent().to_string()
}

/// A transaction refused at queue time (e.g. `NOPERM` under the ACL) comes back as `EXECABORT` with
/// the real errors inside: take the first one out, so that callers can see its code.
pub(crate) fn unwrap_aborted(e: redis::RedisError) -> redis::RedisError {
    if e.code() != Some("EXECABORT") {
        return e;
    }
    let kept = e.clone();
    match e.into_server_errors() {
        Some(errs) if !errs.is_empty() => redis::RedisError::from(errs[0].1.clone()),
        _ => kept,
    }
}

fn unwatch(con: &mut impl ConnectionLike) {
    let _ = redis::cmd("UNWATCH").exec(con);
}

/// `GET module/<id>/public_key`, parsed. `None` if it is not set.
pub fn published_key(con: &mut impl ConnectionLike, prefix: &Prefix) -> Result<Option<Recipient>> {
    let key = prefix.public_key();
    let raw: Option<String> = redis::cmd("GET")
        .arg(&key)
        .query(con)
        .map_err(|e| Error::redis(format!("reading {key}"), e))?;
    raw.map(|value| {
        Recipient::parse(&value).map_err(|reason| Error::BadRecipient {
            key: key.clone(),
            value,
            reason,
        })
    })
    .transpose()
}

/// `SET module/<id>/public_key <recipient>`.
pub fn publish_public_key(
    con: &mut impl ConnectionLike,
    prefix: &Prefix,
    recipient: &Recipient,
) -> Result<()> {
    let key = prefix.public_key();
    redis::cmd("SET")
        .arg(&key)
        .arg(recipient.to_string())
        .exec(con)
        .map_err(|e| Error::redis(format!("writing {key}"), e))
}

/// Stores a secret of the module whose identity this is: encrypts it to the published public key,
/// which must be `identity`'s (else [`Error::KeyMismatch`], or [`Error::NoPublicKey`] before `init`).
pub fn set(
    con: &mut impl ConnectionLike,
    prefix: &Prefix,
    identity: &Identity,
    name: &SecretName,
    value: &Secret,
) -> Result<()> {
    put(con, prefix, name, value, Some(identity)).map(|_| ())
}

/// Stores a secret for another module: encrypts it to the public key that module published and
/// writes it to that module's hash. Returns the public key used.
///
/// Under the Redis ACL of the security model only the node agent (or an admin) may write another
/// module's keys; a module's own user gets `NOPERM`, returned as [`Error::Redis`]
/// ([`Error::is_permission_denied`]).
pub fn set_for(
    con: &mut impl ConnectionLike,
    target: &Prefix,
    name: &SecretName,
    value: &Secret,
) -> Result<Recipient> {
    put(con, target, name, value, None)
}

fn put(
    con: &mut impl ConnectionLike,
    target: &Prefix,
    name: &SecretName,
    value: &Secret,
    expect: Option<&Identity>,
) -> Result<Recipient> {
    let (pk_key, hash) = (target.public_key(), target.secrets());
    let what = format!("writing {name} to {hash}");
    for _ in 0..MAX_ATTEMPTS {
        redis::cmd("WATCH")
            .arg(&pk_key)
            .exec(con)
            .map_err(|e| Error::redis(format!("watching {pk_key}"), e))?;
        let checked = published_key(con, target).and_then(|published| {
            let published = published.ok_or_else(|| Error::NoPublicKey {
                key: pk_key.clone(),
                module: module_of(target),
            })?;
            if let Some(id) = expect {
                if id.recipient() != published {
                    return Err(Error::KeyMismatch {
                        key: pk_key.clone(),
                        published: published.to_string(),
                        local: id.recipient().to_string(),
                        path: id.origin_text(),
                    });
                }
            }
            let ciphertext = encrypt(value.expose(), &published)?;
            Ok((published, ciphertext))
        });
        let (published, ciphertext) = match checked {
            Ok(v) => v,
            Err(e) => {
                unwatch(con);
                return Err(e);
            }
        };
        let done: Option<()> = redis::pipe()
            .atomic()
            .hset(&hash, name.as_str(), ciphertext)
            .ignore()
            .query(con)
            .map_err(|e| Error::redis(what.clone(), unwrap_aborted(e)))?;
        if done.is_some() {
            return Ok(published);
        }
    }
    Err(Error::Conflict {
        what,
        key: pk_key,
        attempts: MAX_ATTEMPTS,
    })
}

/// Reads and decrypts one secret. [`Error::NotFound`] if it is not set.
pub fn get(
    con: &mut impl ConnectionLike,
    prefix: &Prefix,
    identity: &Identity,
    name: &SecretName,
) -> Result<Secret> {
    let hash = prefix.secrets();
    let raw: Option<Vec<u8>> = redis::cmd("HGET")
        .arg(&hash)
        .arg(name.as_str())
        .query(con)
        .map_err(|e| Error::redis(format!("reading {name} from {hash}"), e))?;
    let raw = raw.ok_or_else(|| Error::NotFound {
        hash: hash.clone(),
        name: name.to_string(),
    })?;
    decrypt(&raw, identity)
}

/// The names of the module's secrets, sorted (`HKEYS`).
pub fn list(con: &mut impl ConnectionLike, prefix: &Prefix) -> Result<Vec<String>> {
    let hash = prefix.secrets();
    let raw: Vec<Vec<u8>> = redis::cmd("HKEYS")
        .arg(&hash)
        .query(con)
        .map_err(|e| Error::redis(format!("reading {hash}"), e))?;
    let mut names: Vec<String> = raw
        .into_iter()
        .map(|n| String::from_utf8_lossy(&n).into_owned())
        .collect();
    names.sort();
    Ok(names)
}

/// Removes one secret (`HDEL`); returns whether it existed.
pub fn remove(con: &mut impl ConnectionLike, prefix: &Prefix, name: &SecretName) -> Result<bool> {
    let hash = prefix.secrets();
    let n: i64 = redis::cmd("HDEL")
        .arg(&hash)
        .arg(name.as_str())
        .query(con)
        .map_err(|e| Error::redis(format!("removing {name} from {hash}"), e))?;
    Ok(n > 0)
}

/// The result of decrypting every secret of a module.
#[derive(Debug, Default)]
pub struct Decrypted {
    /// Name and value of each secret that decrypted, sorted by name.
    pub secrets: Vec<(String, Secret)>,
    /// Name and error of each one that did not (damaged, not for this key, …).
    pub failed: Vec<(String, Error)>,
}

/// Decrypts hash entries (name → armored ciphertext) as read by `HGETALL`. Pure: for a caller that
/// reads the hash itself (e.g. over an async connection).
pub fn decrypt_entries(
    entries: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>,
    identity: &Identity,
) -> Decrypted {
    let mut out = Decrypted::default();
    for (name, ciphertext) in entries {
        let name = String::from_utf8_lossy(&name).into_owned();
        match decrypt(&ciphertext, identity) {
            Ok(value) => out.secrets.push((name, value)),
            Err(e) => out.failed.push((name, e)),
        }
    }
    out.secrets.sort_by(|a, b| a.0.cmp(&b.0));
    out.failed.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Reads `module/<id>/secrets` (`HGETALL`) and decrypts every entry with `identity`. A secret that does
/// not decrypt does not fail the call: it is listed in [`Decrypted::failed`]. Meant for the engine,
/// which registers every value with its scrubber before a run's output is written.
pub fn decrypt_all(
    con: &mut impl ConnectionLike,
    prefix: &Prefix,
    identity: &Identity,
) -> Result<Decrypted> {
    let hash = prefix.secrets();
    let raw: Vec<(Vec<u8>, Vec<u8>)> = redis::cmd("HGETALL")
        .arg(&hash)
        .query(con)
        .map_err(|e| Error::redis(format!("reading {hash}"), e))?;
    Ok(decrypt_entries(raw, identity))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_decrypt_or_fail_one_by_one() {
        let id = Identity::generate();
        let other = Identity::generate();
        let good = encrypt(b"v1", &id.recipient()).unwrap();
        let foreign = encrypt(b"v2", &other.recipient()).unwrap();
        let d = decrypt_entries(
            vec![
                (b"B".to_vec(), good.into_bytes()),
                (b"A".to_vec(), foreign.into_bytes()),
                (b"C".to_vec(), b"plain".to_vec()),
            ],
            &id,
        );
        assert_eq!(d.secrets.len(), 1);
        assert_eq!(d.secrets[0].0, "B");
        assert_eq!(d.secrets[0].1.expose(), b"v1");
        let failed: Vec<_> = d.failed.iter().map(|(n, e)| (n.as_str(), e)).collect();
        assert!(matches!(failed[0], ("A", Error::NotForThisKey)));
        assert!(matches!(failed[1], ("C", Error::NotArmored)));
        assert!(!format!("{d:?}").contains("v1"));
    }
}
