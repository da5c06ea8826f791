//! The life of a module's key: [`init`] (create the identity, publish its public key) and [`rotate`]
//! (a new key; every secret re-encrypted to it).
//!
//! # Rotation and its recovery rule
//!
//! 1. **prepare** — `WATCH` the secrets hash and the public key, read every ciphertext, decrypt each
//!    with the current key and encrypt it to a freshly generated one; write the new key to
//!    `secret.key.new` (fsynced). No Redis key has changed. A secret that does not decrypt stops the
//!    rotation here, naming it.
//! 2. **commit** — one `MULTI`/`EXEC`: replace the hash with the new ciphertexts and `SET` the new public
//!    key. If a watched key changed meanwhile, `EXEC` does nothing and the rotation starts again from 1
//!    (at most [`MAX_ATTEMPTS`] times).
//! 3. **switch** — only after `EXEC` succeeded: link `secret.key` to `secret.key.old`, rename
//!    `secret.key.new` over `secret.key`, remove `secret.key.old` (fsyncing the directory after each).
//!
//! Interrupted **before `EXEC`**: nothing changed in Redis; `secret.key` is still the key of every
//! secret, and a leftover `secret.key.new` is garbage. Interrupted **after `EXEC`** but before the rename:
//! the ciphertexts need `secret.key.new`. Both leave `secret.key.new`, and they are told apart by the
//! published public key: if it is the one of `secret.key.new`, `EXEC` happened. [`rotate`] checks this
//! first: after `EXEC` it finishes the switch (and stops: the module has its new key); before, it
//! removes `secret.key.new` and rotates afresh. A leftover `secret.key.old` alone (interrupted just
//! before its removal) is removed when `secret.key` matches the published key. Until then,
//! [`KeyFile::load`] refuses to use the key ([`Error::RotationPending`]), so no command encrypts to or
//! decrypts with the wrong one.

use core_events::Prefix;
use redis::ConnectionLike;

use crate::crypto::{decrypt, encrypt, Identity, Recipient};
use crate::error::{Error, Result};
use crate::keyfile::{self, KeyFile};
use crate::store::{self, unwrap_aborted, MAX_ATTEMPTS};

/// What [`init`] did.
#[derive(Debug)]
pub struct Init {
    /// The module's public key.
    pub recipient: Recipient,
    /// Whether the identity file was created now.
    pub created: bool,
    /// Whether the public key was written to Redis now (it was missing or, with `force`, different).
    pub published: bool,
}

/// Creates the identity if it is missing and publishes its public key. Idempotent. A different public
/// key already published is an error ([`Error::KeyMismatch`]) unless `force`: the secrets in Redis may
/// be encrypted to it.
pub fn init(
    con: &mut impl ConnectionLike,
    prefix: &Prefix,
    keys: &KeyFile,
    force: bool,
) -> Result<Init> {
    let _lock = keys.lock_exclusive()?;
    let (identity, created) = keys.load_or_create()?;
    let recipient = identity.recipient();
    let published = match store::published_key(con, prefix) {
        Err(Error::BadRecipient { .. }) if force => None,
        other => other?,
    };
    match published {
        Some(p) if p == recipient => Ok(Init {
            recipient,
            created,
            published: false,
        }),
        Some(p) if !force => Err(Error::KeyMismatch {
            key: prefix.public_key(),
            published: p.to_string(),
            local: recipient.to_string(),
            path: keys.path().display().to_string(),
        }),
        _ => {
            store::publish_public_key(con, prefix, &recipient)?;
            Ok(Init {
                recipient,
                created,
                published: true,
            })
        }
    }
}

/// What [`rotate`] did.
#[derive(Debug)]
pub struct Rotation {
    /// The new public key.
    pub recipient: Recipient,
    /// How many secrets are now encrypted to it.
    pub secrets: usize,
    /// True when this call only finished a rotation that an earlier call had committed.
    pub resumed: bool,
}

/// Rotates the module's key (see the module documentation for the phases and the recovery rule).
pub fn rotate(con: &mut impl ConnectionLike, prefix: &Prefix, keys: &KeyFile) -> Result<Rotation> {
    let _lock = keys.lock_exclusive()?;
    if let Some(done) = recover(con, prefix, keys)? {
        return Ok(done);
    }
    for _ in 0..MAX_ATTEMPTS {
        let prepared = prepare(con, prefix, keys)?;
        if commit(con, prefix, &prepared)? {
            keyfile::switch_to_new(keys)?;
            return Ok(Rotation {
                recipient: prepared.identity.recipient(),
                secrets: prepared.entries.len(),
                resumed: false,
            });
        }
        keyfile::discard_new(keys)?;
    }
    Err(Error::Conflict {
        what: "rotating the key".into(),
        key: prefix.secrets(),
        attempts: MAX_ATTEMPTS,
    })
}

/// The outcome of phase 1: the new key (already in `<path>.new`) and the re-encrypted hash.
pub(crate) struct Prepared {
    pub(crate) identity: Identity,
    pub(crate) entries: Vec<(Vec<u8>, String)>,
}

/// Phase 1: WATCH, read, re-encrypt, write `<path>.new`. Changes no Redis key. Leaves the connection
/// in WATCH state for [`commit`] (UNWATCHed on error).
pub(crate) fn prepare(
    con: &mut impl ConnectionLike,
    prefix: &Prefix,
    keys: &KeyFile,
) -> Result<Prepared> {
    let current = keyfile::read_identity(keys.path())?;
    let (hash, pk) = (prefix.secrets(), prefix.public_key());
    redis::cmd("WATCH")
        .arg(&hash)
        .arg(&pk)
        .exec(con)
        .map_err(|e| Error::redis(format!("watching {hash} and {pk}"), e))?;
    let result = (|| {
        let raw: Vec<(Vec<u8>, Vec<u8>)> = redis::cmd("HGETALL")
            .arg(&hash)
            .query(con)
            .map_err(|e| Error::redis(format!("reading {hash}"), e))?;
        let next = Identity::generate().with_origin(&keys.new_path());
        let to = next.recipient();
        let mut entries = Vec::with_capacity(raw.len());
        for (name, ciphertext) in raw {
            let in_secret = |e: Error| Error::InSecret {
                name: String::from_utf8_lossy(&name).into_owned(),
                cause: Box::new(e),
            };
            let value = decrypt(&ciphertext, &current).map_err(in_secret)?;
            let again = encrypt(value.expose(), &to).map_err(in_secret)?;
            entries.push((name, again));
        }
        keyfile::write_new(&keys.new_path(), &next)?;
        Ok(Prepared {
            identity: next,
            entries,
        })
    })();
    if result.is_err() {
        let _ = redis::cmd("UNWATCH").exec(con);
    }
    result
}

/// Phase 2: one MULTI/EXEC with the new hash and the new public key. `Ok(false)` when a watched key
/// changed since [`prepare`] (nothing was written).
pub(crate) fn commit(
    con: &mut impl ConnectionLike,
    prefix: &Prefix,
    prepared: &Prepared,
) -> Result<bool> {
    let (hash, pk) = (prefix.secrets(), prefix.public_key());
    let mut pipe = redis::pipe();
    pipe.atomic().del(&hash).ignore();
    if !prepared.entries.is_empty() {
        pipe.hset_multiple(&hash, &prepared.entries).ignore();
    }
    pipe.set(&pk, prepared.identity.recipient().to_string())
        .ignore();
    let done: Option<()> = pipe.query(con).map_err(|e| {
        Error::redis(
            format!("writing the re-encrypted {hash} and {pk}"),
            unwrap_aborted(e),
        )
    })?;
    Ok(done.is_some())
}

/// Finishes or undoes what an interrupted rotation left. `Some` when a committed rotation was finished
/// (nothing more to do), `None` when there was nothing to finish (or only garbage, now removed).
pub(crate) fn recover(
    con: &mut impl ConnectionLike,
    prefix: &Prefix,
    keys: &KeyFile,
) -> Result<Option<Rotation>> {
    let new_path = keys.new_path();
    if new_path.exists() {
        let next = keyfile::read_identity(&new_path)?;
        if store::published_key(con, prefix)?.as_ref() == Some(&next.recipient()) {
            // Interrupted after EXEC: the ciphertexts are for the new key.
            keyfile::switch_to_new(keys)?;
            return Ok(Some(Rotation {
                recipient: next.recipient(),
                secrets: count(con, prefix)?,
                resumed: true,
            }));
        }
        // Interrupted before EXEC: nothing changed in Redis.
        keyfile::discard_new(keys)?;
    }
    let old_path = keys.old_path();
    if old_path.exists() {
        let current = keyfile::read_identity(keys.path())?;
        let published = store::published_key(con, prefix)?;
        if published.as_ref() == Some(&current.recipient()) {
            keyfile::switch_to_new(keys)?; // with no .new, this only removes .old
            return Ok(Some(Rotation {
                recipient: current.recipient(),
                secrets: count(con, prefix)?,
                resumed: true,
            }));
        }
        return Err(Error::RotationInconsistent(format!(
            "{} is left from an interrupted rotation, but {} holds {} while {} has the public key {}; \
             both files are kept: find out which key the secrets in {} are encrypted to (`module-sdk \
             secret get NAME --identity FILE`), keep that file as {} and remove the other",
            old_path.display(),
            prefix.public_key(),
            published.map_or_else(|| "nothing".to_string(), |p| p.to_string()),
            keys.path().display(),
            current.recipient(),
            prefix.secrets(),
            keys.path().display(),
        )));
    }
    Ok(None)
}

fn count(con: &mut impl ConnectionLike, prefix: &Prefix) -> Result<usize> {
    let hash = prefix.secrets();
    redis::cmd("HLEN")
        .arg(&hash)
        .query(con)
        .map_err(|e| Error::redis(format!("counting {hash}"), e))
}

#[cfg(test)]
mod tests {
    //! Against a real redis-server (the workspace's test harness).

    use super::*;
    use crate::secret::{Secret, SecretName};
    use agent_tests::RedisServer;
    use core_events::AgentName;

    struct Setup {
        redis: RedisServer,
        _dir: tempfile::TempDir,
        keys: KeyFile,
        prefix: Prefix,
    }

    fn setup(secrets: &[(&str, &str)]) -> Setup {
        let redis = RedisServer::start();
        let dir = tempfile::tempdir().unwrap();
        let keys = KeyFile::new(dir.path().join("agent/secret.key"));
        let prefix = Prefix::module(AgentName::new("mod0").unwrap());
        let mut con = redis.conn();
        let init = init(&mut con, &prefix, &keys, false).unwrap();
        assert!(init.created && init.published);
        let id = keys.load().unwrap();
        for (name, value) in secrets {
            let name = SecretName::new(*name).unwrap();
            store::set(&mut con, &prefix, &id, &name, &Secret::from(*value)).unwrap();
        }
        Setup {
            redis,
            _dir: dir,
            keys,
            prefix,
        }
    }

    fn all(s: &Setup) -> Vec<(String, String)> {
        let id = s.keys.load().unwrap();
        let d = store::decrypt_all(&mut s.redis.conn(), &s.prefix, &id).unwrap();
        assert!(d.failed.is_empty(), "{:?}", d.failed);
        d.secrets
            .into_iter()
            .map(|(n, v)| (n, v.expose_str().unwrap().to_string()))
            .collect()
    }

    fn want(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    const SECRETS: &[(&str, &str)] = &[("A", "alpha-value"), ("B", "beta-value")];

    #[test]
    fn init_is_idempotent_and_guards_the_published_key() {
        let s = setup(&[]);
        let mut con = s.redis.conn();
        let again = init(&mut con, &s.prefix, &s.keys, false).unwrap();
        assert!(!again.created && !again.published);
        let other = Identity::generate().recipient();
        store::publish_public_key(&mut con, &s.prefix, &other).unwrap();
        let e = init(&mut con, &s.prefix, &s.keys, false).unwrap_err();
        assert!(matches!(e, Error::KeyMismatch { .. }), "{e}");
        let forced = init(&mut con, &s.prefix, &s.keys, true).unwrap();
        assert!(forced.published);
        assert_eq!(
            store::published_key(&mut con, &s.prefix).unwrap(),
            Some(forced.recipient)
        );
    }

    #[test]
    fn rotation_re_encrypts_everything() {
        let s = setup(SECRETS);
        let old = s.keys.load().unwrap();
        let mut con = s.redis.conn();
        let r = rotate(&mut con, &s.prefix, &s.keys).unwrap();
        assert_eq!((r.secrets, r.resumed), (2, false));
        let new = s.keys.load().unwrap();
        assert_eq!(new.recipient(), r.recipient);
        assert_ne!(new.recipient(), old.recipient());
        assert_eq!(all(&s), want(SECRETS));
        let d = store::decrypt_all(&mut con, &s.prefix, &old).unwrap();
        assert!(d.secrets.is_empty() && d.failed.len() == 2);
        assert!(!s.keys.new_path().exists() && !s.keys.old_path().exists());
    }

    #[test]
    fn interrupted_before_exec_changes_nothing_and_is_redone() {
        let s = setup(SECRETS);
        let old = s.keys.load().unwrap();
        let mut con = s.redis.conn();
        let abandoned = prepare(&mut con, &s.prefix, &s.keys).unwrap();
        drop(con); // the process "dies" here: before EXEC
        assert!(s.keys.new_path().exists());
        assert!(matches!(s.keys.load(), Err(Error::RotationPending { .. })));
        let mut con = s.redis.conn();
        assert_eq!(
            store::published_key(&mut con, &s.prefix).unwrap(),
            Some(old.recipient())
        );
        let d = store::decrypt_all(&mut con, &s.prefix, &old).unwrap();
        assert_eq!(d.secrets.len(), 2);

        let r = rotate(&mut con, &s.prefix, &s.keys).unwrap();
        assert!(!r.resumed, "a fresh rotation");
        assert_ne!(r.recipient, abandoned.identity.recipient());
        assert_ne!(r.recipient, old.recipient());
        assert_eq!(all(&s), want(SECRETS));
    }

    #[test]
    fn interrupted_after_exec_is_finished() {
        let s = setup(SECRETS);
        let mut con = s.redis.conn();
        let p = prepare(&mut con, &s.prefix, &s.keys).unwrap();
        assert!(commit(&mut con, &s.prefix, &p).unwrap());
        drop(con); // the process "dies" here: after EXEC, before the rename
        assert!(matches!(s.keys.load(), Err(Error::RotationPending { .. })));
        let mut con = s.redis.conn();
        let r = rotate(&mut con, &s.prefix, &s.keys).unwrap();
        assert!(r.resumed);
        assert_eq!(r.recipient, p.identity.recipient());
        assert_eq!(r.secrets, 2);
        assert_eq!(s.keys.load().unwrap().recipient(), p.identity.recipient());
        assert_eq!(all(&s), want(SECRETS));
        assert!(!s.keys.new_path().exists() && !s.keys.old_path().exists());
    }

    #[test]
    fn interrupted_during_the_switch_is_finished() {
        // After the link to .old, before the rename.
        let s = setup(SECRETS);
        let mut con = s.redis.conn();
        let p = prepare(&mut con, &s.prefix, &s.keys).unwrap();
        assert!(commit(&mut con, &s.prefix, &p).unwrap());
        std::fs::hard_link(s.keys.path(), s.keys.old_path()).unwrap();
        let r = rotate(&mut con, &s.prefix, &s.keys).unwrap();
        assert!(r.resumed);
        assert_eq!(all(&s), want(SECRETS));

        // After the rename, before .old was removed.
        let p = prepare(&mut con, &s.prefix, &s.keys).unwrap();
        assert!(commit(&mut con, &s.prefix, &p).unwrap());
        std::fs::hard_link(s.keys.path(), s.keys.old_path()).unwrap();
        std::fs::rename(s.keys.new_path(), s.keys.path()).unwrap();
        let r = rotate(&mut con, &s.prefix, &s.keys).unwrap();
        assert!(r.resumed);
        assert_eq!(r.recipient, p.identity.recipient());
        assert!(!s.keys.old_path().exists());
        assert_eq!(all(&s), want(SECRETS));
    }

    #[test]
    fn a_concurrent_write_restarts_the_rotation() {
        let s = setup(SECRETS);
        let mut con = s.redis.conn();
        let p = prepare(&mut con, &s.prefix, &s.keys).unwrap();
        // Another writer adds a secret between prepare and commit.
        let mut other = s.redis.conn();
        let id = keyfile::read_identity(s.keys.path()).unwrap();
        let c = encrypt(b"gamma-value", &id.recipient()).unwrap();
        let _: i64 = redis::cmd("HSET")
            .arg(s.prefix.secrets())
            .arg("C")
            .arg(c)
            .query(&mut other)
            .unwrap();
        assert!(!commit(&mut con, &s.prefix, &p).unwrap(), "EXEC must abort");
        keyfile::discard_new(&s.keys).unwrap();
        // Nothing was written: everything still opens with the current key.
        assert_eq!(
            all(&s),
            want(&[
                ("A", "alpha-value"),
                ("B", "beta-value"),
                ("C", "gamma-value")
            ])
        );
        let r = rotate(&mut con, &s.prefix, &s.keys).unwrap();
        assert_eq!(r.secrets, 3);
        assert_eq!(all(&s).len(), 3);
    }

    #[test]
    fn a_secret_that_does_not_decrypt_stops_the_rotation() {
        let s = setup(SECRETS);
        let mut con = s.redis.conn();
        let foreign = encrypt(b"x", &Identity::generate().recipient()).unwrap();
        let _: i64 = redis::cmd("HSET")
            .arg(s.prefix.secrets())
            .arg("FOREIGN")
            .arg(foreign)
            .query(&mut con)
            .unwrap();
        let before = s.keys.load().unwrap().recipient();
        let e = rotate(&mut con, &s.prefix, &s.keys).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("secret FOREIGN: this secret was not encrypted"),
            "{e}"
        );
        assert!(!s.keys.new_path().exists());
        assert_eq!(s.keys.load().unwrap().recipient(), before);
        assert_eq!(
            store::published_key(&mut con, &s.prefix).unwrap(),
            Some(before)
        );
    }
}
