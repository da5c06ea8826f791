//! `agentctl redis …`: the Redis users of the security model, over the `redis-acl` crate.
//!
//! These commands connect as someone who may run `ACL SETUSER`: the admin user (its credentials
//! file, `/etc/agent/admin.env`, is used by default when neither `--redis-credentials` nor a
//! password in the URL says otherwise), the node user (a node-agent's steps), or on a fresh server
//! the `default` user. Passwords are only ever written to credentials files, never printed.

use std::path::{Path, PathBuf};

use agent_redis::{Credentials, Target};
use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use core_events::{AgentKind, AgentName};
use redis::aio::MultiplexedConnection;
use redis_acl::{
    agent_user, DefaultPolicy, Owner, PasswordSource, Persistence, SetupOptions, UserOutcome,
};

use crate::agent::AgentRef;
use crate::conn::RedisArgs;
use crate::fail::invalid;

/// Where `setup` writes the admin's and the node's credentials by default.
const DEFAULT_CREDS_DIR: &str = "/etc/agent";

pub const LONG_ABOUT: &str = "\
Redis users of the security model: every agent has its own ACL user and password.

  agent-admin    the sysadmin: everything (credentials: /etc/agent/admin.env)
  node-NAME      a node-agent: writes node/NAME/* and module/*, publishes anywhere,
                 manages ACL users (it creates its modules' users), so it is as
                 powerful as the admin, like root on its node
  module-ID      a module-agent: reads every key, writes only module/ID/*,
                 subscribes to anything, publishes only on ID:*, cancel/ID,
                 progress/ID/* and event/ID/*; no administration
  default        connections without credentials: readonly (public reads; the default
                 here) or off (they must authenticate: what `agentctl node setup`
                 chooses). With the append-only file on, use off: Redis replays the
                 file as the default user, and a read-only one drops every MULTI/EXEC
                 and multi-write script at each restart (docs/SECURITY.md)

Every command is idempotent: run it again after a failure. A password already in a
credentials file is kept. Changes are saved to the server's aclfile (ACL SAVE) when
it has one; agentctl warns when it has not. See docs/SECURITY.md.";

pub const AFTER_LONG_HELP: &str = "\
CONNECTING:
  Without --redis-credentials and without a password in --redis-url, these
  commands use /etc/agent/admin.env (setup: DIR/admin.env) when it exists,
  and fall back to no credentials when Redis refuses it (a fresh server).

EXIT CODES:
  0   done
  1   failed: Redis unreachable, not allowed (connect as the admin), a file
      could not be written; nothing is half done that a rerun does not fix
  2   bad command line
  65  invalid agent name, or a bare NAME where node/NAME or module/NAME is needed

EXAMPLES:
  agentctl redis setup --node node1
  agentctl redis setup --default off --creds-dir /etc/agent
  agentctl redis add-agent module/traefik0 \\
      --creds /home/traefik0/.config/agent/redis.env --owner traefik0
  agentctl redis rotate module/traefik0 --creds /home/traefik0/.config/agent/redis.env
  agentctl redis remove-agent module/traefik0";

#[derive(Debug, Subcommand)]
pub enum RedisCmd {
    /// Create or update the admin user, this node's user and the default user's policy; write
    /// DIR/admin.env and DIR/redis.env (the node-agent's credentials).
    Setup(SetupArgs),
    /// Create or update an agent's ACL user and write its credentials file (mode 0600).
    #[command(name = "add-agent")]
    AddAgent(AddArgs),
    /// Delete an agent's ACL user; Redis closes its connections. Its credentials file stays.
    #[command(name = "remove-agent")]
    RemoveAgent(RemoveArgs),
    /// Give an agent's user a new password: added beside the old one, written to the
    /// credentials file, then the old one removed. Connected agents stay connected; they use the
    /// new file when they reconnect after a restart.
    Rotate(RotateArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum DefaultArg {
    /// Read every key, subscribe to every channel, without a password; no writes, no PUBLISH.
    Readonly,
    /// Disabled: every client must authenticate.
    Off,
}

#[derive(Debug, Args)]
pub struct SetupArgs {
    /// What connections without credentials may do. Default: off when the default user is
    /// locked already (`agentctl node setup` locks it), else readonly.
    #[arg(long = "default", value_enum, value_name = "POLICY")]
    default_policy: Option<DefaultArg>,

    /// This node's name: its user is node-NAME. Default: the short hostname, like the node-agent.
    #[arg(long, value_name = "NAME")]
    node: Option<String>,

    /// Directory for admin.env (the admin's credentials) and redis.env (the node-agent's default
    /// credentials file); created with mode 0700 if missing.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_CREDS_DIR)]
    creds_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct AddArgs {
    /// The agent: module/ID or node/NAME.
    #[arg(value_name = "AGENT")]
    agent: String,

    /// Credentials file to write (REDIS_USER= and REDIS_PASSWORD= lines, mode 0600). A
    /// module-agent reads ~/.config/agent/redis.env by default, a node-agent /etc/agent/redis.env.
    /// An existing file of the same user keeps its password.
    #[arg(long, value_name = "FILE")]
    creds: PathBuf,

    /// Unix user that owns the file (and directories created for it); needs root. Default for
    /// module/ID: the Unix user ID if it exists (the module's rootless agent runs as it), else the
    /// current user.
    #[arg(long, value_name = "USER")]
    owner: Option<String>,
}

#[derive(Debug, Args)]
pub struct RemoveArgs {
    /// The agent: module/ID, node/NAME, or a bare NAME when only one of its users exists.
    #[arg(value_name = "AGENT")]
    agent: String,
}

#[derive(Debug, Args)]
pub struct RotateArgs {
    /// The agent: module/ID, node/NAME, or a bare NAME when only one of its users exists.
    #[arg(value_name = "AGENT")]
    agent: String,

    /// The agent's credentials file, replaced atomically (its owner is kept).
    #[arg(long, value_name = "FILE")]
    creds: PathBuf,
}

/// Runs one `agentctl redis` command; returns the exit code.
pub fn main(redis: &RedisArgs, cmd: RedisCmd) -> Result<i32> {
    crate::runtime()?.block_on(async move {
        match cmd {
            RedisCmd::Setup(args) => setup(redis, args).await,
            RedisCmd::AddAgent(args) => add(redis, args).await,
            RedisCmd::RemoveAgent(args) => remove(redis, args).await,
            RedisCmd::Rotate(args) => rotate(redis, args).await,
        }
    })?;
    Ok(0)
}

async fn setup(redis: &RedisArgs, args: SetupArgs) -> Result<()> {
    let node = match args.node {
        Some(n) => n,
        None => short_hostname()?,
    };
    let node = AgentName::new(&node).map_err(|e| invalid(format!("node name {node:?}: {e}")))?;
    let admin_creds = SetupOptions {
        default_policy: DefaultPolicy::Off,
        node: node.clone(),
        creds_dir: args.creds_dir.clone(),
    }
    .admin_creds_path();
    let mut conn = connect_admin(redis, &admin_creds).await?;
    let default_policy = match args.default_policy {
        Some(DefaultArg::Readonly) => DefaultPolicy::ReadOnly,
        Some(DefaultArg::Off) => DefaultPolicy::Off,
        // Never unlock what a node's setup locked: a read-only default user loses the AOF's
        // transactions at every restart.
        None => {
            let lines: Vec<String> = redis::cmd("ACL")
                .arg("LIST")
                .query_async(&mut conn)
                .await
                .unwrap_or_default();
            if lines
                .iter()
                .any(|l| l.starts_with("user default ") && redis_acl::is_locked_default(l))
            {
                DefaultPolicy::Off
            } else {
                DefaultPolicy::ReadOnly
            }
        }
    };
    let opts = SetupOptions {
        default_policy,
        node,
        creds_dir: args.creds_dir,
    };
    let done = redis_acl::setup_cluster(&mut conn, &opts)
        .await
        .map_err(explain)?;
    say_user("admin user", &done.admin);
    say_user("node user", &done.node);
    match done.default_policy {
        DefaultPolicy::ReadOnly => {
            println!("default user: read-only without a password (public reads, no writes)");
            eprintln!(
                "warning: with appendonly yes, Redis replays its append-only file as the default \
                 user and a read-only one drops every MULTI/EXEC and multi-write script at each \
                 restart (redis#14541): use --default off where the AOF is on"
            );
        }
        DefaultPolicy::Off => println!("default user: disabled; every client must authenticate"),
    }
    say_persistence(done.persistence);
    Ok(())
}

async fn add(redis: &RedisArgs, args: AddArgs) -> Result<()> {
    let agent = AgentRef::parse(&args.agent)?;
    let Some(kind) = agent.kind else {
        return Err(invalid(format!(
            "agent {:?}: write module/{0} or node/{0}",
            agent.name.as_str()
        )));
    };
    let owner = match (&args.owner, kind) {
        (Some(user), _) => Some(Owner::of_user(user)?),
        (None, AgentKind::Module) => Owner::lookup(agent.name.as_str())?,
        (None, AgentKind::Node) => None,
    };
    let mut conn = connect_admin(redis, &default_admin_creds()).await?;
    let done = redis_acl::add_agent(&mut conn, kind, &agent.name, &args.creds, owner)
        .await
        .map_err(explain)?;
    say_user(&format!("{} user", kind.as_str()), &done.user);
    say_persistence(done.persistence);
    Ok(())
}

async fn remove(redis: &RedisArgs, args: RemoveArgs) -> Result<()> {
    let agent = AgentRef::parse(&args.agent)?;
    let mut conn = connect_admin(redis, &default_admin_creds()).await?;
    let Some(kind) = kind_of(&mut conn, &agent).await? else {
        println!(
            "no ACL user {} or {}: nothing to remove",
            agent_user(AgentKind::Module, &agent.name),
            agent_user(AgentKind::Node, &agent.name)
        );
        return Ok(());
    };
    let done = redis_acl::remove_agent(&mut conn, kind, &agent.name)
        .await
        .map_err(explain)?;
    if done.existed {
        println!("removed ACL user {}", done.user);
    } else {
        println!("no ACL user {}: nothing to remove", done.user);
    }
    say_persistence(done.persistence);
    Ok(())
}

async fn rotate(redis: &RedisArgs, args: RotateArgs) -> Result<()> {
    let agent = AgentRef::parse(&args.agent)?;
    let mut conn = connect_admin(redis, &default_admin_creds()).await?;
    let kind = match kind_of(&mut conn, &agent).await? {
        Some(k) => k,
        None => agent.kind.unwrap_or(AgentKind::Module),
    };
    let done = redis_acl::rotate_password(&mut conn, kind, &agent.name, &args.creds)
        .await
        .map_err(explain)?;
    println!(
        "{}: new password in {}; the old one no longer works",
        done.user,
        done.creds_path.display()
    );
    println!(
        "connected agents stay connected; restart the agent so that its next connection \
         (and its steps' REDIS_URL) uses the new password"
    );
    say_persistence(done.persistence);
    Ok(())
}

/// The kind of `agent`: as written, or for a bare name the kind whose ACL user exists. `None`
/// when a bare name has no user at all.
async fn kind_of(conn: &mut MultiplexedConnection, agent: &AgentRef) -> Result<Option<AgentKind>> {
    if let Some(k) = agent.kind {
        return Ok(Some(k));
    }
    let mut found = Vec::new();
    for kind in [AgentKind::Module, AgentKind::Node] {
        if redis_acl::user_exists(conn, &agent_user(kind, &agent.name))
            .await
            .map_err(explain)?
        {
            found.push(kind);
        }
    }
    match found[..] {
        [] => Ok(None),
        [k] => Ok(Some(k)),
        _ => Err(invalid(format!(
            "both module/{0} and node/{0} have ACL users: say which",
            agent.name
        ))),
    }
}

fn say_user(what: &str, u: &UserOutcome) {
    let pw = match u.password {
        PasswordSource::Kept => "password kept",
        PasswordSource::Generated => "new password",
    };
    println!(
        "{what} {}: {pw}; credentials in {}",
        u.user,
        u.creds_path.display()
    );
}

fn say_persistence(p: Persistence) {
    match p {
        Persistence::Saved => println!("ACL saved to the server's aclfile"),
        Persistence::NoAclFile => eprintln!(
            "agentctl: warning: this Redis has no aclfile, so these users are lost when it \
             restarts. Start redis-server with `aclfile /etc/redis/users.acl` (the file must \
             exist; it may be empty) and run `agentctl redis setup` again, or copy the users \
             (ACL LIST) into redis.conf."
        ),
    }
}

/// Adds what to do to a permission error.
fn explain(e: redis_acl::Error) -> anyhow::Error {
    let hint = e.is_permission_denied().then_some(
        "this connection may not manage ACL users: connect as the admin \
         (--redis-credentials /etc/agent/admin.env) or a node user",
    );
    let e = anyhow::Error::new(e);
    match hint {
        Some(h) => e.context(h),
        None => e,
    }
}

fn default_admin_creds() -> PathBuf {
    crate::conn::default_admin_credentials()
}

pub(crate) fn short_hostname() -> Result<String> {
    let host = nix::unistd::gethostname().context("cannot read the hostname; pass --node")?;
    let host = host.to_string_lossy();
    Ok(host.split('.').next().unwrap_or_default().to_string())
}

/// Connects to the node's own Redis (a replica on a cluster member: it is not followed to the
/// leader) with, in order: `--redis-credentials`; the URL's own credentials; `implicit_admin` if
/// that file exists (falling back to no credentials when Redis refuses it: a fresh server).
pub(crate) async fn connect_admin(
    redis: &RedisArgs,
    implicit_admin: &Path,
) -> Result<MultiplexedConnection> {
    let url = &redis.redis_url;
    if let Some(path) = &redis.redis_credentials {
        let creds = Credentials::from_file(path)
            .with_context(|| format!("cannot use --redis-credentials {}", path.display()))?;
        let target = Target::new(url, Some(creds))?;
        return open(&target).await.with_context(|| {
            format!(
                "cannot connect to Redis at {} as {}",
                target.masked_url(),
                target.user().unwrap_or("default")
            )
        });
    }
    let url_has_creds = agent_redis::url::password_in(url).is_some();
    if !url_has_creds && implicit_admin.exists() {
        if let Ok(creds) = Credentials::from_file(implicit_admin) {
            let target = Target::new(url, Some(creds))?;
            match open(&target).await {
                Ok(c) => return Ok(c),
                Err(e) if agent_redis::is_denied(&e) => {
                    eprintln!(
                        "agentctl: Redis refused the credentials in {}; connecting without them",
                        implicit_admin.display()
                    );
                }
                Err(e) => {
                    return Err(anyhow::Error::new(e)).with_context(|| {
                        format!("cannot connect to Redis at {}", target.masked_url())
                    })
                }
            }
        }
    }
    let target = Target::new(url, None)?;
    open(&target)
        .await
        .with_context(|| format!("cannot connect to Redis at {}", target.masked_url()))
}

/// A connection whose commands may take up to `agent_redis::COMMAND_TIMEOUT` (`ACL SAVE` writes and
/// fsyncs a file) — to this very server, replica or not: administration is of the node's own
/// Redis (its ACL users, its configuration, its replication), never silently of the leader's.
async fn open(target: &Target) -> redis::RedisResult<MultiplexedConnection> {
    target.here().connection().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_admin_file_is_under_etc_agent() {
        assert_eq!(default_admin_creds(), Path::new("/etc/agent/admin.env"));
    }
}
