//! The module's Redis side: its ACL user (when this Redis uses ACL users), its secret key, its
//! registration in node/NODE/modules and, on removal, every key under module/ID/.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use agent_redis::{Credentials, ErrorClass};
use core_events::keys::glob_escape;
use core_events::{AgentKind, ModuleId, Prefix};
use redis::Commands;
use redis_acl::{CredentialsStore, PasswordSource};

use super::user::ModuleUser;
use super::{run_ok, with_private_umask, Ctx, Result, ToolError};

fn module_prefix(id: &ModuleId) -> Prefix {
    Prefix::module(id.agent_name().clone())
}

/// Whether this Redis uses ACL users for agents: the node's own connection is not `default`
/// (`agentctl redis setup` was run).
fn uses_acl_users(ctx: &Ctx) -> Result<bool> {
    let me: String = redis::cmd("ACL").arg("WHOAMI").query(&mut ctx.con()?)?;
    Ok(me != "default")
}

/// `~ID/.config/agent/secret.key`: the module's secret identity.
pub fn identity_path(user: &ModuleUser) -> PathBuf {
    PathBuf::from(agent_config(user, "secret.key"))
}

/// The name, in the module's root-only backup directory (`/home/.agent-backup/ID`), of the
/// identity `restore.prepare` staged from a snapshot for module.init's secret-key step.
pub const STAGED_IDENTITY: &str = "identity";

/// `~ID/.config/agent/…`
fn agent_config(user: &ModuleUser, file: &str) -> String {
    user.home
        .join(".config/agent")
        .join(file)
        .to_string_lossy()
        .into_owned()
}

/// A module's credentials file, read and written by the module's own user (`cat`, and
/// `node-agent write-credentials` with the text on stdin), so root never writes through a path in a
/// home the user controls.
struct UserCredentialsFile<'a> {
    user: &'a ModuleUser,
    path: PathBuf,
}

impl UserCredentialsFile<'_> {
    fn failed(&self, action: &'static str, why: impl std::fmt::Display) -> redis_acl::Error {
        redis_acl::Error::Credentials(agent_redis::Error::File {
            action,
            path: self.path.clone(),
            source: std::io::Error::other(why.to_string()),
        })
    }
}

impl CredentialsStore for UserCredentialsFile<'_> {
    fn path(&self) -> &Path {
        &self.path
    }

    fn read(&self) -> redis_acl::Result<Option<Credentials>> {
        // lstat only: whether there is something to read at all.
        if std::fs::symlink_metadata(&self.path).is_err() {
            return Ok(None);
        }
        let mut cat = self.user.command("cat");
        cat.arg("--").arg(&self.path);
        let text = super::stdout_ok(&mut cat)
            .map_err(|e| self.failed("cannot read, as the module's user,", e))?;
        Credentials::parse(&text).map(Some).map_err(|reason| {
            redis_acl::Error::Credentials(agent_redis::Error::CredentialsFormat {
                path: self.path.clone(),
                reason,
            })
        })
    }

    fn write(&self, credentials: &Credentials) -> redis_acl::Result<()> {
        let me = std::env::current_exe().map_err(|e| self.failed("cannot write", e))?;
        let mut write = self.user.command(&me.to_string_lossy());
        write
            .arg(WRITE_CREDENTIALS)
            .arg("--")
            .arg(&self.path)
            .stdin(Stdio::piped())
            .stdout(Stdio::null());
        let mut child = write.spawn().map_err(|e| self.failed("cannot write", e))?;
        let sent = child
            .stdin
            .take()
            .map(|mut stdin| stdin.write_all(credentials.to_text().as_bytes()));
        let status = child.wait().map_err(|e| self.failed("cannot write", e))?;
        match sent {
            Some(Ok(())) if status.success() => Ok(()),
            Some(Err(e)) => Err(self.failed("cannot write, as the module's user,", e)),
            _ => Err(self.failed("cannot write, as the module's user,", status)),
        }
    }
}

/// The hidden command the module's user runs to write its credentials file (see
/// [`write_credentials_as_self`]).
pub const WRITE_CREDENTIALS: &str = "write-credentials";

/// `node-agent write-credentials -- PATH`, run as the module's user: the credentials text on stdin,
/// written atomically with mode 0600 (`agent_redis::Credentials::write`).
pub fn write_credentials_as_self(path: &Path) -> Result<()> {
    let mut text = String::new();
    std::io::stdin()
        .take(64 * 1024)
        .read_to_string(&mut text)
        .map_err(|e| ToolError::Invalid(format!("cannot read the credentials on stdin: {e}")))?;
    let creds = Credentials::parse(&text).map_err(ToolError::Invalid)?;
    creds
        .write(path, None)
        .map_err(|e| ToolError::Failed(shown_error(&e)))
}

/// An error with its causes, each once.
fn shown_error(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let t = s.to_string();
        if !text.contains(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
        source = s.source();
    }
    text
}

/// A redis-acl error as the tool's: Redis unreachable 75, the node's user refused 78, else 1.
pub(super) fn acl_error(e: redis_acl::Error) -> ToolError {
    let text = shown_error(&e);
    match e.redis_class() {
        Some(ErrorClass::Unreachable) => ToolError::TempFailure(text),
        Some(ErrorClass::Denied) => ToolError::Config(format!(
            "{text} (the node's Redis user must be allowed to manage ACL users: agentctl redis setup)"
        )),
        _ => ToolError::Failed(text),
    }
}

/// A connection for redis-acl's operations.
async fn acl_connection(ctx: &Ctx) -> Result<redis::aio::MultiplexedConnection> {
    ctx.target.connection().await.map_err(|e| {
        let text = format!(
            "cannot connect to Redis at {}: {e}",
            ctx.target.masked_url()
        );
        match agent_redis::classify(&e) {
            ErrorClass::Unreachable => ToolError::TempFailure(text),
            ErrorClass::Denied => ToolError::Config(text),
            ErrorClass::Other => ToolError::Failed(text),
        }
    })
}

/// Every Redis that must know the ACL users of this node's agents: the leader's and, on a cluster
/// member, this node's own (a replica, where the agents ask `ROLE` before they follow it to the
/// leader; ACL users are not replicated).
async fn acl_connections(ctx: &Ctx) -> Result<Vec<redis::aio::MultiplexedConnection>> {
    let mut all = vec![acl_connection(ctx).await?];
    let mut here = ctx.target.here().connection().await?;
    if is_replica(&mut here).await? {
        all.push(here);
    }
    Ok(all)
}

/// Whether this server replicates another (`ROLE`).
pub(super) async fn is_replica(conn: &mut redis::aio::MultiplexedConnection) -> Result<bool> {
    let role: redis::Value = redis::cmd("ROLE").query_async(conn).await?;
    Ok(agent_redis::target::leader_of_role(&role).is_some())
}

/// module.init/20redis-user: the module's ACL user module-ID and its credentials file
/// ~ID/.config/agent/redis.env (0600, owned by ID and written by ID; its directories 0700), through
/// `redis-acl`. Idempotent: a password already in the credentials file is kept.
pub fn redis_user(ctx: &Ctx, id: &ModuleId) -> Result<()> {
    if !uses_acl_users(ctx)? {
        println!("Redis has no ACL users for agents (node-agent connects as 'default'): no ACL user for {id}");
        return Ok(());
    }
    let user = ModuleUser::require(id)?;
    // The config dir is made by the user itself (root never writes through paths the user
    // controls), private like every directory it needs.
    let mut mkdir = user.command("mkdir");
    mkdir
        .args(["-p", "-m", "0700", "--"])
        .arg(user.home.join(".config/agent"));
    with_private_umask(|| run_ok(&mut mkdir))?;
    let store = UserCredentialsFile {
        user: &user,
        path: PathBuf::from(agent_config(&user, "redis.env")),
    };
    // The first server makes the password (or keeps the one in the file); the others get the same.
    let outcome = ctx.block_on(async {
        let mut last = None;
        for mut conn in acl_connections(ctx).await? {
            let done =
                redis_acl::add_agent_to(&mut conn, AgentKind::Module, id.agent_name(), &store)
                    .await
                    .map_err(acl_error)?;
            if last.is_none() {
                // On the leader, before this node's own Redis: see `redis_acl::replicate`.
                redis_acl::replicate::publish_user(&mut conn, &done.user.user)
                    .await
                    .map_err(acl_error)?;
            }
            last.get_or_insert(done);
        }
        Ok(last.expect("at least the leader"))
    })?;
    super::cluster::tell_members(ctx, core_events::cluster::USERS_EVENT)?;
    let how = match outcome.user.password {
        PasswordSource::Kept => "password kept",
        PasswordSource::Generated => "new password",
    };
    println!(
        "Redis ACL user {} ({how}), credentials in {}",
        outcome.user.user,
        store.path.display()
    );
    // Checked: directories an older install made 0755 are fixed too.
    user.make_private_paths(&[".config", ".config/agent", ".config/agent/redis.env"])
}

/// module.remove/50redis-user: the module's ACL user deleted (its credentials file went with the
/// home).
pub fn remove_redis_user(ctx: &Ctx, id: &ModuleId) -> Result<()> {
    if !uses_acl_users(ctx)? {
        println!("Redis has no ACL users for agents: no ACL user of {id} to remove");
        return Ok(());
    }
    let outcome = ctx.block_on(async {
        let mut first = None;
        for mut conn in acl_connections(ctx).await? {
            let done = if first.is_none() {
                redis_acl::replicate::forget_agent(&mut conn, AgentKind::Module, id.agent_name())
                    .await
            } else {
                redis_acl::remove_agent(&mut conn, AgentKind::Module, id.agent_name()).await
            }
            .map_err(acl_error)?;
            first.get_or_insert(done);
        }
        Ok(first.expect("at least the leader"))
    })?;
    super::cluster::tell_members(ctx, core_events::cluster::USERS_EVENT)?;
    if outcome.existed {
        println!("Redis ACL user {} deleted", outcome.user);
    } else {
        println!("no Redis ACL user {}: nothing to delete", outcome.user);
    }
    Ok(())
}

/// The URL a module's program gets: the node's server with the module's own credentials.
pub fn module_url(node_url: &str, id: &ModuleId, mut creds: Credentials) -> Result<String> {
    if creds.username.is_none() {
        creds.username = Some(core_events::keys::acl_user(
            core_events::AgentKind::Module,
            id.agent_name(),
        ));
    }
    let url = agent_redis::url::with_credentials(node_url, Some(&creds));
    // with_credentials gives the URL back unchanged when it cannot put credentials in: never hand the
    // node's own credentials to a module.
    if url == node_url || !(url.starts_with("redis") || url.starts_with("unix")) {
        return Err(ToolError::Config(format!(
            "REDIS_URL is not a redis:// or unix:// URL; cannot use {id}'s credentials with it"
        )));
    }
    Ok(url)
}

/// module.init/30secret-key: the module's age identity, made by the module's user in
/// ~ID/.config/agent/secret.key (0600), its public key at module/ID/public_key. With ACL users the
/// module's own credentials are used, never the node's. Idempotent: an existing identity whose key
/// is published is kept (module-sdk).
pub fn secret_key(ctx: &Ctx, id: &ModuleId) -> Result<()> {
    let user = ModuleUser::require(id)?;
    let creds_path = agent_config(&user, "redis.env");
    let url = if std::fs::symlink_metadata(&creds_path).is_ok() {
        // Read by the user: the file is the user's, and root must not follow a link it planted.
        let mut cat = user.command("cat");
        cat.args(["--", &creds_path]);
        let text = super::stdout_ok(&mut cat)?;
        let creds = Credentials::parse(&text)
            .map_err(|e| ToolError::Invalid(format!("{creds_path}: {e}")))?;
        module_url(&ctx.redis_url, id, creds)?
    } else if uses_acl_users(ctx)? {
        return Err(ToolError::Config(format!(
            "Redis uses ACL users but {id} has no credentials ({creds_path}, made by module.init/20redis-user)"
        )));
    } else {
        ctx.redis_url.clone()
    };
    // A restore or a move gives a fresh user the identity of the module it was: its secrets
    // (restored with it) open. Written by the user, through stdin; never over a key it has.
    if let Some(identity) = super::backup::take_staged_identity(id)? {
        let path = identity_path(&user);
        if std::fs::symlink_metadata(&path).is_ok() {
            println!(
                "{} exists: the identity of the snapshot is not put over it",
                path.display()
            );
        } else {
            let mut install = user.command("sh");
            install.args([
                "-c",
                "mkdir -p \"$(dirname \"$1\")\" && cat > \"$1.tmp\" && mv \"$1.tmp\" \"$1\"",
                "sh",
            ]);
            install.arg(&path);
            with_private_umask(|| super::run_with_input(&mut install, identity.expose()))?;
            println!(
                "the identity of the restored module installed in {}",
                path.display()
            );
        }
    }
    // REDIS_URL by environment (runuser keeps it), never in an argument list others can read.
    let mut init = user.command("module-sdk");
    init.env(core_events::step_env::REDIS_URL, url).args([
        "secret",
        "--module",
        id.as_str(),
        "--identity",
        &agent_config(&user, "secret.key"),
        "init",
    ]);
    with_private_umask(|| run_ok(&mut init))?;
    user.make_private_paths(&[".config", ".config/agent", ".config/agent/secret.key"])
}

/// module.init/70register: HSET node/NODE/modules ID IMAGE. Idempotent.
pub fn register(ctx: &Ctx, id: &ModuleId) -> Result<()> {
    let mut con = ctx.con()?;
    let image: Option<String> = redis::cmd("HGET")
        .arg(module_prefix(id).module_env())
        .arg(core_events::module_env::EVENTS_IMAGE)
        .query(&mut con)?;
    let image = image.unwrap_or_default();
    let _: i64 = redis::cmd("HSET")
        .arg(ctx.node_prefix().modules())
        .arg(id.as_str())
        .arg(&image)
        .query(&mut con)?;
    println!("module {id} ({image}) installed on {}", ctx.node);
    Ok(())
}

/// module.remove/70unregister: HDEL node/NODE/modules ID. Idempotent.
pub fn unregister(ctx: &Ctx, id: &ModuleId) -> Result<()> {
    let _: i64 = redis::cmd("HDEL")
        .arg(ctx.node_prefix().modules())
        .arg(id.as_str())
        .query(&mut ctx.con()?)?;
    println!("module {id} unregistered from {}", ctx.node);
    Ok(())
}

/// The keys to delete among `found`: all but `keep`.
pub fn to_delete(found: Vec<String>, keep: Option<&str>) -> Vec<String> {
    found
        .into_iter()
        .filter(|k| Some(k.as_str()) != keep)
        .collect()
}

/// module.remove/60delete-keys: every module/ID/* key (env, secrets, public key, queue, journal,
/// run records and outputs, heartbeat). A rollback keeps module.env, the admin's settings, to fix
/// and run module.init again. The records of the node's own run stay under node/NODE/.
pub fn delete_keys(ctx: &Ctx, id: &ModuleId) -> Result<()> {
    let prefix = module_prefix(id);
    let keep = ctx.rollback.then(|| prefix.module_env());
    let pattern = format!("{}/*", glob_escape(prefix.as_str()));
    let mut con = ctx.con()?;
    let mut n: i64 = 0;
    // A module-agent still writing (it is stopped by then) could add keys behind the scan: a few
    // passes.
    for _ in 0..3 {
        let found = con
            .scan_match::<_, String>(&pattern)?
            .collect::<std::result::Result<Vec<String>, _>>()?;
        let keys = to_delete(found, keep.as_deref());
        if keys.is_empty() {
            break;
        }
        for chunk in keys.chunks(500) {
            n += redis::cmd("DEL").arg(chunk).query::<i64>(&mut con)?;
        }
    }
    match keep {
        Some(k) => println!("deleted {n} keys of {} (kept {k})", prefix.as_str()),
        None => println!("deleted {n} keys of {}", prefix.as_str()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(user: Option<&str>) -> Credentials {
        Credentials {
            username: user.map(str::to_string),
            password: agent_redis::Password::from_existing("pw"),
        }
    }

    #[test]
    fn module_urls_carry_the_module_credentials() {
        let id = ModuleId::new("hello3").unwrap();
        assert_eq!(
            module_url(
                "redis://node-n1:np@127.0.0.1:6379/0",
                &id,
                creds(Some("module-hello3"))
            )
            .unwrap(),
            "redis://module-hello3:pw@127.0.0.1:6379/0"
        );
        assert_eq!(
            module_url("redis://127.0.0.1:6379", &id, creds(None)).unwrap(),
            "redis://module-hello3:pw@127.0.0.1:6379"
        );
        let unix = module_url("unix:///run/redis.sock", &id, creds(None)).unwrap();
        assert!(
            unix.contains("user=module-hello3") && unix.contains("pass=pw"),
            "{unix}"
        );
        let e = module_url("not a url", &id, creds(None)).unwrap_err();
        assert_eq!(e.exit_code(), 78);
    }

    #[test]
    fn a_rollback_keeps_module_env() {
        let found = vec![
            "module/a/module.env".to_string(),
            "module/a/queue".to_string(),
        ];
        assert_eq!(
            to_delete(found.clone(), Some("module/a/module.env")),
            ["module/a/queue"]
        );
        assert_eq!(to_delete(found.clone(), None), found);
    }
}
