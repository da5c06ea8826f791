//! The agents' ACL users made the same on every node's Redis of a cluster.
//!
//! Redis does not replicate ACL users, yet after a failover any node's Redis may lead, and every
//! agent of the cluster must then log in there. So the password of every agent's user is kept in
//! Redis itself, in `cluster/users` (`core_events::cluster::users`: user → the SHA-256 Redis keeps,
//! never a password), which *is* replicated; each node makes its own Redis's agent users from it.
//! Only a hash comes from that key: the rules are derived here, from the user's name, by
//! [`agent_rules`], like everywhere else.
//!
//! Who writes `cluster/users`: whoever creates or removes an agent's user on the leader
//! ([`publish_user`], [`unpublish_user`]), and [`sync_users`] run on the leader, which adds what is
//! missing (users made before this key existed). Nobody deletes from it but a removal.

use std::collections::BTreeMap;

use core_events::cluster::{is_password_hash, users};
use core_events::keys::agent_of_acl_user;
use core_events::AgentName;
use redis::aio::ConnectionLike;
use redis::Value;

use crate::error::{Error, Result};
use crate::ops::{remove_agent, save_acl, RemoveOutcome};
use crate::rules::agent_rules;

async fn query<T: redis::FromRedisValue, C: ConnectionLike + Send>(
    conn: &mut C,
    what: String,
    cmd: &redis::Cmd,
) -> Result<T> {
    cmd.query_async(conn)
        .await
        .map_err(|e| Error::redis(what, &e, &[]))
}

/// The first password hash of `user` on this server (`ACL GETUSER`), `None` when there is no such
/// user or it has no password.
pub async fn password_hash<C: ConnectionLike + Send>(
    conn: &mut C,
    user: &str,
) -> Result<Option<String>> {
    let mut cmd = redis::cmd("ACL");
    cmd.arg("GETUSER").arg(user);
    let v: Value = query(conn, format!("ACL GETUSER {user}"), &cmd).await?;
    Ok(first_password(&v))
}

/// The first entry of the `passwords` field of an `ACL GETUSER` reply (RESP2 array or RESP3 map).
pub fn first_password(v: &Value) -> Option<String> {
    let text = |v: &Value| match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    let passwords = match v {
        Value::Array(items) => items
            .chunks(2)
            .find(|kv| text(&kv[0]).as_deref() == Some("passwords"))
            .and_then(|kv| kv.get(1)),
        Value::Map(pairs) => pairs
            .iter()
            .find(|(k, _)| text(k).as_deref() == Some("passwords"))
            .map(|(_, v)| v),
        _ => None,
    }?;
    match passwords {
        Value::Array(list) => list.first().and_then(text),
        _ => None,
    }
}

/// Every agent's user on this server (`node-…`, `module-…`) with its first password hash.
pub async fn agent_users<C: ConnectionLike + Send>(
    conn: &mut C,
) -> Result<BTreeMap<String, Option<String>>> {
    let mut cmd = redis::cmd("ACL");
    cmd.arg("USERS");
    let names: Vec<String> = query(conn, "ACL USERS".into(), &cmd).await?;
    let mut out = BTreeMap::new();
    for name in names {
        if agent_of_acl_user(&name).is_some() {
            let hash = password_hash(conn, &name).await?;
            out.insert(name, hash);
        }
    }
    Ok(out)
}

/// Writes `user`'s password hash, as this server (the leader) has it, to `cluster/users`.
pub async fn publish_user<C: ConnectionLike + Send>(conn: &mut C, user: &str) -> Result<()> {
    let Some(hash) = password_hash(conn, user).await? else {
        return Err(Error::NoSuchUser(user.into()));
    };
    let mut cmd = redis::cmd("HSET");
    cmd.arg(users()).arg(user).arg(&hash);
    query::<(), _>(conn, format!("HSET {} {user}", users()), &cmd).await
}

/// Removes `user` from `cluster/users` (its removal then reaches every node's Redis).
pub async fn unpublish_user<C: ConnectionLike + Send>(conn: &mut C, user: &str) -> Result<()> {
    let mut cmd = redis::cmd("HDEL");
    cmd.arg(users()).arg(user);
    query::<(), _>(conn, format!("HDEL {} {user}", users()), &cmd).await
}

/// Deletes an agent's user on the leader: first from `cluster/users` (so that no sync made
/// meanwhile creates it again from there), then the user itself ([`remove_agent`]).
pub async fn forget_agent<C: ConnectionLike + Send>(
    conn: &mut C,
    kind: core_events::AgentKind,
    name: &AgentName,
) -> Result<RemoveOutcome> {
    unpublish_user(conn, &crate::rules::agent_user(kind, name)).await?;
    remove_agent(conn, kind, name).await
}

/// What [`sync_users`] did to this node's Redis.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SyncOutcome {
    /// Users created or whose password changed here.
    pub set: Vec<String>,
    /// Users deleted here (absent from `cluster/users`).
    pub deleted: Vec<String>,
    /// Users of this server added to `cluster/users` (on the leader only).
    pub published: Vec<String>,
    /// Entries of `cluster/users` refused (not an agent's user, or not a hash), with why.
    pub refused: Vec<String>,
}

/// Where [`sync_users`] reads `cluster/users`.
pub enum Source<'a, C> {
    /// This node's Redis leads: its own users are the truth for the key, and it adds what is
    /// missing.
    Leader,
    /// Read on the leader: complete, so a local agent user absent from it is deleted here.
    FromLeader(&'a mut C),
    /// Read on this node's replica (the leader does not answer): users are added and updated,
    /// never deleted — the copy may be old.
    FromReplica,
}

/// Makes the agent users of `here` (this node's Redis) those of `cluster/users`, except `keep`
/// (this node's own user, which its join set and no stale copy may take away). Then `ACL SAVE`.
///
/// The local users are listed *before* the key is read: a module's user is written to the leader
/// (user and key) before this node's Redis, so a local user that exists when the listing is made is
/// already in the key read after it — a sync never deletes a user that is being created.
pub async fn sync_users<C: ConnectionLike + Send>(
    here: &mut C,
    source: Source<'_, C>,
    keep: &str,
) -> Result<SyncOutcome> {
    let local = agent_users(here).await?;
    let mut read = redis::cmd("HGETALL");
    read.arg(users());
    let (wanted, authoritative, leader): (Vec<(String, String)>, bool, bool) = match source {
        Source::Leader => (
            query(here, format!("HGETALL {}", users()), &read).await?,
            false,
            true,
        ),
        Source::FromLeader(c) => (
            query(c, format!("HGETALL {}", users()), &read).await?,
            true,
            false,
        ),
        Source::FromReplica => (
            query(here, format!("HGETALL {}", users()), &read).await?,
            false,
            false,
        ),
    };
    let mut out = SyncOutcome::default();
    let mut known = BTreeMap::new();
    for (user, hash) in wanted {
        let Some((kind, name)) = agent_of_acl_user(&user) else {
            out.refused.push(format!("{user:?}: not an agent's user"));
            continue;
        };
        if !is_password_hash(&hash) {
            out.refused
                .push(format!("{user}: not a SHA-256 password hash"));
            continue;
        }
        known.insert(user.clone(), hash.clone());
        if local.get(&user).and_then(|h| h.as_deref()) == Some(hash.as_str()) {
            continue;
        }
        if leader && local.contains_key(&user) {
            // The leader's own user is the truth: the key follows it (below), not the other way.
            continue;
        }
        set_hashed_user(here, &user, kind, &name, &hash).await?;
        out.set.push(user);
    }
    for (user, hash) in &local {
        if leader {
            if hash.is_some() && known.get(user) != hash.as_ref() {
                publish_user(here, user).await?;
                out.published.push(user.clone());
            }
        } else if authoritative && !known.contains_key(user) && user != keep {
            let mut del = redis::cmd("ACL");
            del.arg("DELUSER").arg(user);
            query::<(), _>(here, format!("ACL DELUSER {user}"), &del).await?;
            out.deleted.push(user.clone());
        }
    }
    if !(out.set.is_empty() && out.deleted.is_empty()) {
        save_acl(here).await?;
    }
    Ok(out)
}

/// `ACL SETUSER user <rules of its agent> #hash`.
async fn set_hashed_user<C: ConnectionLike + Send>(
    conn: &mut C,
    user: &str,
    kind: core_events::AgentKind,
    name: &AgentName,
    hash: &str,
) -> Result<()> {
    let mut cmd = redis::cmd("ACL");
    cmd.arg("SETUSER")
        .arg(user)
        .arg(agent_rules(kind, name))
        .arg(format!("#{hash}"));
    query(conn, format!("ACL SETUSER {user}"), &cmd).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn the_first_password_of_a_getuser_reply() {
        let resp2 = Value::Array(vec![
            bulk("flags"),
            Value::Array(vec![bulk("on")]),
            bulk("passwords"),
            Value::Array(vec![bulk("ab12"), bulk("cd34")]),
        ]);
        assert_eq!(first_password(&resp2).as_deref(), Some("ab12"));
        let resp3 = Value::Map(vec![(bulk("passwords"), Value::Array(vec![bulk("ef")]))]);
        assert_eq!(first_password(&resp3).as_deref(), Some("ef"));
        let none = Value::Array(vec![bulk("passwords"), Value::Array(vec![])]);
        assert_eq!(first_password(&none), None);
        assert_eq!(first_password(&Value::Nil), None);
    }
}
