//! The operations on a live Redis: set up the cluster's users, add, remove and rotate an agent's user.
//!
//! Every operation is idempotent: it states the whole wanted state (`ACL SETUSER … reset …`), keeps a
//! password that an agent's credentials file already holds, and can simply be run again after a
//! failure. Each ends with `ACL SAVE` when the server has an aclfile.
//!
//! Connections: pass a plain connection (e.g. a `MultiplexedConnection`), not a
//! `ConnectionManager`: [`setup_cluster`] re-authenticates it as the admin user, which a reconnecting
//! manager would silently undo. Give it a response timeout of seconds, not the redis crate's default
//! 500 ms: `ACL SAVE` writes and fsyncs a file.

use std::path::{Path, PathBuf};

use core_events::{AgentKind, AgentName};
use redis::aio::ConnectionLike;
use redis::{FromRedisValue, Value};

use crate::error::{Error, Result};
use crate::rules::{
    admin_rules, agent_rules, agent_user, default_rules, DefaultPolicy, ADMIN_USER, DEFAULT_USER,
};
use agent_redis::{Credentials, Owner, Password};

/// File name of the admin's credentials in the credentials directory.
pub const ADMIN_CREDENTIALS_FILE: &str = "admin.env";
/// File name of the node user's credentials in the credentials directory: the node-agent's default
/// credentials file is `/etc/agent/redis.env`.
pub const NODE_CREDENTIALS_FILE: &str = "redis.env";

/// Whether the ACL changes were written to the server's aclfile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persistence {
    /// `ACL SAVE` wrote them: they survive a Redis restart.
    Saved,
    /// The server has no aclfile: the users live in memory until Redis restarts.
    NoAclFile,
}

/// Whether a user's password was kept from its credentials file or newly generated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordSource {
    Kept,
    Generated,
}

/// One user created or updated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserOutcome {
    pub user: String,
    pub creds_path: PathBuf,
    pub password: PasswordSource,
}

#[derive(Debug, Clone)]
pub struct SetupOptions {
    /// What connections without credentials may do.
    pub default_policy: DefaultPolicy,
    /// This node's name (its node-agent's name): the node user is `node-<name>`.
    pub node: AgentName,
    /// Where `admin.env` and `redis.env` (the node's) are written, e.g. `/etc/agent`.
    pub creds_dir: PathBuf,
}

impl SetupOptions {
    pub fn admin_creds_path(&self) -> PathBuf {
        self.creds_dir.join(ADMIN_CREDENTIALS_FILE)
    }

    pub fn node_creds_path(&self) -> PathBuf {
        self.creds_dir.join(NODE_CREDENTIALS_FILE)
    }
}

#[derive(Debug, Clone)]
pub struct SetupOutcome {
    pub admin: UserOutcome,
    pub node: UserOutcome,
    pub default_policy: DefaultPolicy,
    pub persistence: Persistence,
}

#[derive(Debug, Clone)]
pub struct AgentOutcome {
    pub user: UserOutcome,
    pub persistence: Persistence,
}

#[derive(Debug, Clone)]
pub struct RemoveOutcome {
    pub user: String,
    /// False when there was no such user (nothing to do).
    pub existed: bool,
    pub persistence: Persistence,
}

#[derive(Debug, Clone)]
pub struct RotateOutcome {
    pub user: String,
    pub creds_path: PathBuf,
    pub persistence: Persistence,
}

/// Sends `cmd`; a failure becomes [`Error::Redis`] with every secret removed from Redis's reply.
async fn query<T: FromRedisValue, C: ConnectionLike + Send>(
    conn: &mut C,
    what: impl Into<String>,
    cmd: &redis::Cmd,
    secrets: &[&str],
) -> Result<T> {
    cmd.query_async(conn)
        .await
        .map_err(|e| Error::redis(what, &e, secrets))
}

/// `ACL SETUSER user <rules…> [>password]`: one command, so the rules apply all or nothing.
async fn set_user<C: ConnectionLike + Send>(
    conn: &mut C,
    user: &str,
    rules: &[String],
    password: Option<&Password>,
) -> Result<()> {
    let mut cmd = redis::cmd("ACL");
    cmd.arg("SETUSER").arg(user).arg(rules);
    let pass_rule = password.map(|p| format!(">{}", p.expose()));
    if let Some(r) = &pass_rule {
        cmd.arg(r);
    }
    let secrets: Vec<&str> = password.map(Password::expose).into_iter().collect();
    query::<(), _>(conn, format!("ACL SETUSER {user}"), &cmd, &secrets).await
}

/// Whether the ACL user exists.
pub async fn user_exists<C: ConnectionLike + Send>(conn: &mut C, user: &str) -> Result<bool> {
    let mut cmd = redis::cmd("ACL");
    cmd.arg("GETUSER").arg(user);
    let v: Value = query(conn, format!("ACL GETUSER {user}"), &cmd, &[]).await?;
    Ok(!matches!(v, Value::Nil))
}

/// `ACL SAVE` if the server has an aclfile. A server without one answers with an error that says
/// so; that is [`Persistence::NoAclFile`], not a failure (users configured in `redis.conf` or by
/// hand are a legitimate setup, but the caller should warn).
pub async fn save_acl<C: ConnectionLike + Send>(conn: &mut C) -> Result<Persistence> {
    let mut cmd = redis::cmd("ACL");
    cmd.arg("SAVE");
    match cmd.query_async::<()>(conn).await {
        Ok(()) => Ok(Persistence::Saved),
        Err(e) if e.to_string().contains("not configured to use an ACL file") => {
            Ok(Persistence::NoAclFile)
        }
        Err(e) => Err(Error::redis("ACL SAVE", &e, &[])),
    }
}

fn credentials(user: &str, password: &Password) -> Credentials {
    Credentials {
        username: Some(user.into()),
        password: password.clone(),
    }
}

/// Where an agent's credentials are kept. The operations read it to keep a password that is there,
/// and write it before Redis gets the password. [`CredentialsFile`] is a file this process reads and
/// writes itself; the node's tools keep a module's file through the module's own Unix user, so that
/// root never writes into a module's home.
pub trait CredentialsStore {
    /// The file, for messages.
    fn path(&self) -> &Path;
    /// What the store holds; `None` when there is nothing yet.
    fn read(&self) -> Result<Option<Credentials>>;
    /// Replaces what the store holds (atomically: a reader sees the old or the new credentials).
    fn write(&self, credentials: &Credentials) -> Result<()>;
}

/// A credentials file read and written by this process, given to `owner` (see
/// [`Credentials::write`]).
#[derive(Debug, Clone)]
pub struct CredentialsFile<'a> {
    pub path: &'a Path,
    pub owner: Option<Owner>,
}

impl CredentialsStore for CredentialsFile<'_> {
    fn path(&self) -> &Path {
        self.path
    }

    fn read(&self) -> Result<Option<Credentials>> {
        Ok(Credentials::read_if_exists(self.path)?)
    }

    fn write(&self, credentials: &Credentials) -> Result<()> {
        Ok(credentials.write(self.path, self.owner)?)
    }
}

/// The password for `user` in `store`: the store's, when it holds `user`'s credentials; a new one
/// when it holds nothing. A store holding another user's credentials is refused.
fn password_for(store: &dyn CredentialsStore, user: &str) -> Result<(Password, PasswordSource)> {
    match store.read()? {
        Some(c) if c.username.as_deref() == Some(user) => Ok((c.password, PasswordSource::Kept)),
        Some(c) => Err(Error::OtherUsersFile {
            path: store.path().into(),
            found: c.username.unwrap_or_else(|| "no named user".into()),
            expected: user.into(),
        }),
        None => Ok((Password::generate()?, PasswordSource::Generated)),
    }
}

/// Creates or updates `user` with `rules` and the password of its credentials file (a new one if
/// the file does not exist). The file is written first: a password is never in Redis without being
/// in its file, and running this again after any failure completes the job.
async fn ensure_user<C: ConnectionLike + Send>(
    conn: &mut C,
    user: &str,
    rules: &[String],
    store: &dyn CredentialsStore,
) -> Result<(UserOutcome, Password)> {
    let (password, source) = password_for(store, user)?;
    // Written even when kept, so the mode, owner and format are right again.
    store.write(&credentials(user, &password))?;
    set_user(conn, user, rules, Some(&password)).await?;
    Ok((
        UserOutcome {
            user: user.into(),
            creds_path: store.path().into(),
            password: source,
        },
        password,
    ))
}

/// Sets up the users of a cluster on its Redis: the admin user ([`ADMIN_USER`], everything; its
/// credentials in `<creds_dir>/admin.env`), this node's user (`node-<name>`; `<creds_dir>/redis.env`,
/// where the node-agent looks by default) and the `default` user's policy, then `ACL SAVE`.
///
/// Connect as whoever may run `ACL SETUSER`: on a fresh server the `default` user, later the admin.
/// Right after creating the admin user, the connection authenticates as it (`AUTH`), because the
/// `default` user may lose the right to manage users in the same setup.
pub async fn setup_cluster<C: ConnectionLike + Send>(
    conn: &mut C,
    opts: &SetupOptions,
) -> Result<SetupOutcome> {
    let admin_file = opts.admin_creds_path();
    let admin_file = CredentialsFile {
        path: &admin_file,
        owner: None,
    };
    let (admin, admin_pw) = ensure_user(conn, ADMIN_USER, &admin_rules(), &admin_file).await?;
    let mut auth = redis::cmd("AUTH");
    auth.arg(ADMIN_USER).arg(admin_pw.expose());
    query::<(), _>(
        conn,
        format!("AUTH as {ADMIN_USER}"),
        &auth,
        &[admin_pw.expose()],
    )
    .await?;

    let node_user = agent_user(AgentKind::Node, &opts.node);
    let node_file = opts.node_creds_path();
    let node_file = CredentialsFile {
        path: &node_file,
        owner: None,
    };
    let node_rules = agent_rules(AgentKind::Node, &opts.node);
    let (node, _) = ensure_user(conn, &node_user, &node_rules, &node_file).await?;
    let locked_already = opts.default_policy == DefaultPolicy::Off && {
        let mut list = redis::cmd("ACL");
        list.arg("LIST");
        let lines: Vec<String> = query(conn, "ACL LIST".to_string(), &list, &[]).await?;
        lines
            .iter()
            .any(|l| l.starts_with("user default ") && crate::rules::is_locked_default(l))
    };
    if !locked_already {
        set_user(
            conn,
            DEFAULT_USER,
            &default_rules(opts.default_policy),
            None,
        )
        .await?;
    }
    claim_node_name(conn, &opts.node).await?;
    let persistence = save_acl(conn).await?;
    Ok(SetupOutcome {
        admin,
        node,
        default_policy: opts.default_policy,
        persistence,
    })
}

/// Claims `name` as a node's in the agent name registry (`keys::agent_registry`); a name that is a
/// module's is refused (the node's channels would be the module's).
async fn claim_node_name<C: ConnectionLike + Send>(conn: &mut C, name: &AgentName) -> Result<()> {
    let registry = core_events::keys::agent_registry();
    let mut claim = redis::cmd("HSETNX");
    claim
        .arg(&registry)
        .arg(name.as_str())
        .arg(AgentKind::Node.as_str());
    query::<(), _>(conn, format!("HSETNX {registry} {name}"), &claim, &[]).await?;
    let mut get = redis::cmd("HGET");
    get.arg(&registry).arg(name.as_str());
    let kind: Option<String> = query(conn, format!("HGET {registry} {name}"), &get, &[]).await?;
    match kind.as_deref() {
        Some(k) if k == AgentKind::Node.as_str() => Ok(()),
        other => Err(Error::NameTaken {
            name: name.to_string(),
            registry,
            kind: other.unwrap_or("(nothing)").to_string(),
        }),
    }
}

/// Creates or updates the ACL user of an agent (`module-<id>` or `node-<name>`) and writes its
/// credentials file, owned by `owner` (for a module: its Unix user, so its rootless agent can read
/// it). A password already in the file is kept, so running it again never locks out a running agent.
pub async fn add_agent<C: ConnectionLike + Send>(
    conn: &mut C,
    kind: AgentKind,
    name: &AgentName,
    creds_path: &Path,
    owner: Option<Owner>,
) -> Result<AgentOutcome> {
    let file = CredentialsFile {
        path: creds_path,
        owner,
    };
    add_agent_to(conn, kind, name, &file).await
}

/// [`add_agent`] with the credentials kept in `store`.
pub async fn add_agent_to<C: ConnectionLike + Send>(
    conn: &mut C,
    kind: AgentKind,
    name: &AgentName,
    store: &dyn CredentialsStore,
) -> Result<AgentOutcome> {
    let user = agent_user(kind, name);
    let (outcome, _) = ensure_user(conn, &user, &agent_rules(kind, name), store).await?;
    let persistence = save_acl(conn).await?;
    Ok(AgentOutcome {
        user: outcome,
        persistence,
    })
}

/// Deletes the ACL user of an agent; Redis closes the connections it authenticated. Its credentials
/// file is left alone (it only opens a user that no longer exists).
pub async fn remove_agent<C: ConnectionLike + Send>(
    conn: &mut C,
    kind: AgentKind,
    name: &AgentName,
) -> Result<RemoveOutcome> {
    let user = agent_user(kind, name);
    let mut cmd = redis::cmd("ACL");
    cmd.arg("DELUSER").arg(&user);
    let deleted: i64 = query(conn, format!("ACL DELUSER {user}"), &cmd, &[]).await?;
    let persistence = save_acl(conn).await?;
    Ok(RemoveOutcome {
        user,
        existed: deleted > 0,
        persistence,
    })
}

/// Gives an agent's user a new password without a moment in which neither works:
/// 1. the new password is added beside the old one (`>new`);
/// 2. the credentials file is replaced atomically (same owner as before);
/// 3. every other password is removed (`resetpass >new`, one command, so there is no gap).
///
/// Connections already authenticated stay so: Redis checks a password only at `AUTH`/`HELLO`, so the
/// running agent keeps working and nothing queued is lost. A process that connects afresh must use
/// the new file; see `docs/SECURITY.md` for what that means for running agents.
///
/// Step 3 removes all old passwords rather than only the one in the old file (`<old`): that also
/// revokes a password whose file was lost or copied, and never sends the old password again.
pub async fn rotate_password<C: ConnectionLike + Send>(
    conn: &mut C,
    kind: AgentKind,
    name: &AgentName,
    creds_path: &Path,
) -> Result<RotateOutcome> {
    let user = agent_user(kind, name);
    if !user_exists(conn, &user).await? {
        return Err(Error::NoSuchUser(user));
    }
    // Only our own credentials file may be replaced; keep its owner.
    if let Some(c) = Credentials::read_if_exists(creds_path)? {
        if c.username.as_deref() != Some(user.as_str()) {
            return Err(Error::OtherUsersFile {
                path: creds_path.into(),
                found: c.username.unwrap_or_else(|| "no named user".into()),
                expected: user,
            });
        }
    }
    let owner = Owner::of_file(creds_path)?;
    let new = Password::generate()?;
    let add = format!(">{}", new.expose());
    let mut cmd = redis::cmd("ACL");
    cmd.arg("SETUSER").arg(&user).arg(&add);
    query::<(), _>(
        conn,
        format!("adding a password to {user}"),
        &cmd,
        &[new.expose()],
    )
    .await?;
    if let Err(e) = credentials(&user, &new).write(creds_path, owner) {
        // Take the unused password back; the old one still works and is still in the file.
        let mut undo = redis::cmd("ACL");
        undo.arg("SETUSER")
            .arg(&user)
            .arg(format!("<{}", new.expose()));
        let _ = undo.query_async::<()>(conn).await;
        return Err(e.into());
    }
    let mut cmd = redis::cmd("ACL");
    cmd.arg("SETUSER").arg(&user).arg("resetpass").arg(&add);
    query::<(), _>(
        conn,
        format!("removing the old passwords of {user}"),
        &cmd,
        &[new.expose()],
    )
    .await?;
    let persistence = save_acl(conn).await?;
    Ok(RotateOutcome {
        user,
        creds_path: creds_path.into(),
        persistence,
    })
}
