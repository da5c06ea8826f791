//! The module's Redis side: its ACL user (when this Redis uses ACL users), its secret key, its
//! registration in node/NODE/modules and, on removal, every key under module/ID/.

use std::process::Command;

use agent_redis::Credentials;
use core_events::keys::glob_escape;
use core_events::{ModuleId, Prefix};
use redis::Commands;

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

/// `~ID/.config/agent/…`
fn agent_config(user: &ModuleUser, file: &str) -> String {
    user.home
        .join(".config/agent")
        .join(file)
        .to_string_lossy()
        .into_owned()
}

/// module.init/20redis-user: the module's ACL user module-ID and its credentials file
/// ~ID/.config/agent/redis.env (0600, owned by ID; its directories 0700). Idempotent: add-agent keeps a password already
/// in the credentials file.
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
    run_ok(Command::new("agentctl").args([
        "redis",
        "add-agent",
        module_prefix(id).as_str(),
        "--creds",
        &agent_config(&user, "redis.env"),
        "--owner",
        id.as_str(),
    ]))?;
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
    run_ok(Command::new("agentctl").args(["redis", "remove-agent", module_prefix(id).as_str()]))
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
