//! This node's Redis Sentinel: the cluster's automatic failover, configured by `agentctl cluster
//! create`, `join` and the `vpn.sync` event (`agentctl cluster sentinel`), taken away by `leave`.
//!
//! Every member runs one Sentinel (Debian's `redis-sentinel`), listening on loopback and its VPN
//! address, watching the leader's Redis over the VPN as `SENTINEL_MASTER`. They find each other
//! through the leader (`__sentinel__:hello`), agree the leader is down (a quorum: a majority of
//! the members), elect one of them, which promotes a replica and repoints every other; the old
//! leader is made a replica when it is back. The agents follow by themselves (the engine watches
//! its node's Redis's `ROLE`). Nothing of the failover is ours: it is Sentinel's.
//!
//! Sentinel owns its configuration file once it runs (it writes what it learns into it), so the
//! file is written once, when it does not exist; later changes (the quorum as members come and go)
//! are made through Sentinel's own commands (`SENTINEL SET`, `SENTINEL RESET`).

use std::net::Ipv4Addr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use agent_redis::{Credentials, Password};
use anyhow::{bail, Context, Result};
use core_events::cluster::{self as wire};
use core_events::{AgentKind, AgentName};
use redis::aio::MultiplexedConnection;
use redis::AsyncCommands;

/// Where a Redis flavour's Debian package puts its Sentinel.
pub(crate) struct Flavour {
    unit: &'static str,
    binary: &'static str,
    conf_dir: &'static str,
    data_dir: &'static str,
    user: &'static str,
}

const FLAVOURS: [Flavour; 2] = [
    Flavour {
        unit: "redis-sentinel.service",
        binary: "/usr/bin/redis-sentinel",
        conf_dir: "/etc/redis",
        data_dir: "/var/lib/redis",
        user: "redis",
    },
    Flavour {
        unit: "valkey-sentinel.service",
        binary: "/usr/bin/valkey-sentinel",
        conf_dir: "/etc/valkey",
        data_dir: "/var/lib/valkey",
        user: "valkey",
    },
];

impl Flavour {
    /// The flavour `agentctl node setup` configured (its `agent.conf`).
    fn active() -> Result<&'static Flavour> {
        FLAVOURS
            .iter()
            .find(|f| Path::new(f.conf_dir).join("agent.conf").is_file())
            .context(
                "no /etc/redis/agent.conf or /etc/valkey/agent.conf: run agentctl node setup first",
            )
    }

    fn conf(&self) -> PathBuf {
        Path::new(self.conf_dir).join("agent-sentinel.conf")
    }

    fn dropin(&self) -> PathBuf {
        Path::new("/etc/systemd/system")
            .join(format!("{}.d", self.unit))
            .join("50-agent.conf")
    }
}

/// This node's Sentinel flavour, refused with what to install when its binary is missing.
pub(crate) fn check_installed() -> Result<&'static Flavour> {
    let flavour = Flavour::active()?;
    if !Path::new(flavour.binary).is_file() {
        bail!(
            "{} is not installed: the cluster's automatic failover needs it (apt-get install {}); \
             nothing was changed",
            flavour.binary,
            flavour.unit.trim_end_matches(".service")
        );
    }
    Ok(flavour)
}

/// The Sentinels' password of this node, from `SENTINEL_CREDENTIALS`.
pub(crate) fn stored_password() -> Option<String> {
    Credentials::from_file(Path::new(wire::SENTINEL_CREDENTIALS))
        .ok()
        .map(|c| c.password.expose().to_string())
}

fn configuration(
    dir: &str,
    leader: Ipv4Addr,
    address: Ipv4Addr,
    quorum: usize,
    password: &str,
) -> String {
    let m = wire::SENTINEL_MASTER;
    format!(
        "# Written once by agentctl cluster (create, join); from then on Redis Sentinel keeps it,\n\
         # adding what it learns (the other Sentinels, the replicas, the current leader).\n\
         # docs/CLUSTER.md, \"Failover\".\n\
         port {port}\n\
         bind 127.0.0.1 {address}\n\
         # Every client must authenticate (requirepass); the other nodes reach it over the VPN.\n\
         protected-mode no\n\
         dir {dir}\n\
         requirepass {password}\n\
         sentinel sentinel-pass {password}\n\
         sentinel announce-ip {address}\n\
         sentinel resolve-hostnames no\n\
         sentinel monitor {m} {leader} 6379 {quorum}\n\
         sentinel auth-user {m} {user}\n\
         sentinel auth-pass {m} {password}\n\
         sentinel down-after-milliseconds {m} {down}\n\
         sentinel failover-timeout {m} 20000\n\
         sentinel parallel-syncs {m} 1\n",
        port = wire::SENTINEL_PORT,
        user = wire::SENTINEL_USER,
        down = wire::SENTINEL_DOWN_AFTER_MS,
    )
}

fn dropin_text(f: &Flavour) -> String {
    format!(
        "# Written by agentctl cluster: this node's Sentinel watches the cluster (docs/CLUSTER.md).\n\
         [Service]\n\
         ExecStart=\n\
         ExecStart={} {} --supervised systemd --daemonize no\n",
        f.binary,
        f.conf().display()
    )
}

/// The members of the cluster as the records in Redis say (`node/*/vpn`), at least 1.
async fn members(conn: &mut MultiplexedConnection) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut it: redis::AsyncIter<String> = conn.scan_match(wire::node_vpn_pattern()).await?;
    while let Some(k) = it.next_item().await {
        out.extend(wire::node_of_vpn_key(&k?).map(String::from));
    }
    Ok(out)
}

fn systemctl(args: &[&str]) -> Result<()> {
    let st = Command::new("systemctl")
        .args(args)
        .status()
        .context("cannot run systemctl")?;
    if !st.success() {
        bail!("systemctl {} failed ({st})", args.join(" "));
    }
    Ok(())
}

/// A connection to this node's Sentinel, as its clients log in (the password).
async fn sentinel(password: &str) -> Result<MultiplexedConnection> {
    // Sentinel's default user; `here()`: a Sentinel is no Redis to follow.
    let target = agent_redis::Target::new(
        &format!("redis://127.0.0.1:{}", wire::SENTINEL_PORT),
        Some(Credentials {
            username: None,
            password: Password::from_existing(password),
        }),
    )?;
    Ok(target.here().connection().await?)
}

/// Waits until this node's Sentinel answers (after a start), up to 10 s.
async fn wait_sentinel(password: &str) -> Result<MultiplexedConnection> {
    let mut last = None;
    for _ in 0..50 {
        match sentinel(password).await {
            Ok(mut c) => match redis::cmd("PING").query_async::<String>(&mut c).await {
                Ok(_) => return Ok(c),
                Err(e) => last = Some(anyhow::Error::from(e)),
            },
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no answer")))
        .context("this node's Sentinel does not answer on 127.0.0.1:26379")
}

/// Configures this node's Sentinel and the failover settings of its Redis (`local`, as the admin)
/// for the cluster as it is now; idempotent. `given` is the Sentinels' password a join received
/// (the first node makes one). Prints what it did.
pub(crate) async fn configure(
    local: &mut MultiplexedConnection,
    node: &AgentName,
    address: Ipv4Addr,
    given: Option<&str>,
) -> Result<()> {
    let flavour = check_installed()?;
    let stored = stored_password();
    let password = match (given, stored.clone()) {
        (Some(p), _) => p.to_string(),
        (None, Some(p)) => p,
        (None, None) => Password::generate()?.expose().to_string(),
    };
    if stored.as_deref() != Some(password.as_str()) {
        Credentials {
            username: Some(wire::SENTINEL_USER.to_string()),
            password: Password::from_existing(&password),
        }
        .write(Path::new(wire::SENTINEL_CREDENTIALS), None)?;
    }
    // The Sentinels' user on this node's Redis.
    let mut set = redis::cmd("ACL");
    set.arg("SETUSER")
        .arg(wire::SENTINEL_USER)
        .arg(redis_acl::sentinel_rules())
        .arg(format!(">{password}"));
    let _: () = set.query_async(local).await?;
    let _ = redis_acl::save_acl(local).await;

    // Replication settings every node needs to become a replica one day (the first node too):
    // its own user and password at whichever node leads.
    let node_creds = Credentials::from_file(Path::new(&crate::cluster::node_creds()))
        .context("reading this node's Redis credentials")?;
    let node_user = core_events::keys::acl_user(AgentKind::Node, node);
    for (k, v) in [
        ("masteruser", node_user.as_str()),
        ("masterauth", node_creds.password.expose()),
    ] {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg(k)
            .arg(v)
            .query_async(local)
            .await?;
    }
    let members = members(local).await?.len().max(1);
    let min_replicas = wire::min_replicas_to_write(members);
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("min-replicas-to-write")
        .arg(min_replicas)
        .arg("min-replicas-max-lag")
        .arg(wire::MIN_REPLICAS_MAX_LAG)
        .query_async(local)
        .await?;
    crate::node::rewrite_conf_for_vpn(Some(min_replicas))
        .context("updating Redis's configuration file")?;

    // Which server leads now: this one, or the one it replicates.
    let role: redis::Value = redis::cmd("ROLE").query_async(local).await?;
    let leader = match agent_redis::target::leader_of_role(&role) {
        Some((host, _)) => host
            .parse::<Ipv4Addr>()
            .with_context(|| format!("this Redis replicates {host}, not a VPN address"))?,
        None => address,
    };
    let quorum = wire::sentinel_quorum(members);
    let conf = flavour.conf();
    let fresh = !conf.exists();
    if fresh {
        let owner = nix::unistd::User::from_name(flavour.user)?
            .with_context(|| format!("no user {}", flavour.user))?;
        let tmp = conf.with_extension("tmp");
        std::fs::write(
            &tmp,
            configuration(flavour.data_dir, leader, address, quorum, &password),
        )?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o640))?;
        nix::unistd::chown(&tmp, Some(owner.uid), Some(owner.gid))?;
        std::fs::rename(&tmp, &conf)?;
    } else if std::fs::metadata(&conf)?.mode() & 0o007 != 0 {
        std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o640))?;
    }
    let dropin = flavour.dropin();
    let dropin_changed =
        std::fs::read_to_string(&dropin).ok().as_deref() != Some(dropin_text(flavour).as_str());
    if dropin_changed {
        std::fs::create_dir_all(dropin.parent().expect("a directory"))?;
        std::fs::write(&dropin, dropin_text(flavour))?;
        systemctl(&["daemon-reload"])?;
    }
    systemctl(&["enable", "--quiet", flavour.unit])?;
    if fresh || dropin_changed {
        systemctl(&["restart", flavour.unit])?;
    } else {
        systemctl(&["start", flavour.unit])?;
    }
    let mut s = wait_sentinel(&password).await?;
    let _: () = redis::cmd("SENTINEL")
        .arg("SET")
        .arg(wire::SENTINEL_MASTER)
        .arg("quorum")
        .arg(quorum)
        .query_async(&mut s)
        .await?;
    // A Sentinel never forgets the Sentinels and replicas it saw: after a node left, it would
    // count that node's Sentinel in every majority. A reset makes it learn them again (seconds).
    let others: Vec<redis::Value> = redis::cmd("SENTINEL")
        .arg("SENTINELS")
        .arg(wire::SENTINEL_MASTER)
        .query_async(&mut s)
        .await?;
    let replicas: Vec<redis::Value> = redis::cmd("SENTINEL")
        .arg("REPLICAS")
        .arg(wire::SENTINEL_MASTER)
        .query_async(&mut s)
        .await?;
    if others.len() + 1 > members || replicas.len() + 1 > members {
        let _: i64 = redis::cmd("SENTINEL")
            .arg("RESET")
            .arg(wire::SENTINEL_MASTER)
            .query_async(&mut s)
            .await?;
        println!(
            "sentinel: it knew {} other Sentinels and {} replicas for {members} members: reset",
            others.len(),
            replicas.len()
        );
    }
    println!(
        "sentinel: {} watches the leader at {leader} (quorum {quorum} of {members}); \
         min-replicas-to-write {min_replicas}",
        flavour.unit
    );
    Ok(())
}

/// Takes this node's Sentinel away (a node that leaves): stopped, disabled, its files and its
/// user gone, its Redis's failover settings back to a lone server's.
pub(crate) async fn remove(local: &mut MultiplexedConnection) -> Result<()> {
    let Ok(flavour) = Flavour::active() else {
        return Ok(());
    };
    let _ = Command::new("systemctl")
        .args(["disable", "--now", "--quiet", flavour.unit])
        .status();
    for f in [
        flavour.conf(),
        flavour.dropin(),
        PathBuf::from(wire::SENTINEL_CREDENTIALS),
    ] {
        match std::fs::remove_file(&f) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", f.display())),
        }
    }
    let _ = systemctl(&["daemon-reload"]);
    let _: i64 = redis::cmd("ACL")
        .arg("DELUSER")
        .arg(wire::SENTINEL_USER)
        .query_async(local)
        .await?;
    let _ = redis_acl::save_acl(local).await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("min-replicas-to-write")
        .arg(0)
        .query_async(local)
        .await?;
    Ok(())
}

/// What this node's Sentinel says of the cluster, for `agentctl cluster status`: the leader's
/// address and how many Sentinels it sees; `None` without a Sentinel.
pub(crate) async fn view() -> Option<String> {
    let password = stored_password()?;
    let mut s = sentinel(&password).await.ok()?;
    let addr: Vec<String> = redis::cmd("SENTINEL")
        .arg("GET-MASTER-ADDR-BY-NAME")
        .arg(wire::SENTINEL_MASTER)
        .query_async(&mut s)
        .await
        .ok()?;
    let others: Vec<redis::Value> = redis::cmd("SENTINEL")
        .arg("SENTINELS")
        .arg(wire::SENTINEL_MASTER)
        .query_async(&mut s)
        .await
        .ok()?;
    let ckquorum: redis::RedisResult<String> = redis::cmd("SENTINEL")
        .arg("CKQUORUM")
        .arg(wire::SENTINEL_MASTER)
        .query_async(&mut s)
        .await;
    let failover = match ckquorum {
        // With 2 Sentinels a failover needs both, and one dies with the leader's node.
        Ok(_) if others.len() + 1 < 3 => {
            "no automatic failover with fewer than 3 nodes (docs/CLUSTER.md: manual)".to_string()
        }
        Ok(_) => "automatic failover possible".to_string(),
        Err(e) => format!("no automatic failover: {}", e.detail().unwrap_or("?")),
    };
    Some(format!(
        "leader at {} for this Sentinel, which sees {} other Sentinels; {failover}",
        addr.first().map(String::as_str).unwrap_or("?"),
        others.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_says_who_leads_and_how_many_must_agree() {
        let text = configuration(
            "/var/lib/redis",
            Ipv4Addr::new(10, 5, 4, 1),
            Ipv4Addr::new(10, 5, 4, 2),
            2,
            "pw",
        );
        assert!(
            text.contains("sentinel monitor agent 10.5.4.1 6379 2\n"),
            "{text}"
        );
        assert!(text.contains("bind 127.0.0.1 10.5.4.2\n"), "{text}");
        assert!(text.contains("sentinel announce-ip 10.5.4.2\n"), "{text}");
        assert!(
            text.contains("sentinel auth-user agent sentinel\n"),
            "{text}"
        );
        assert!(text.contains("requirepass pw\n"), "{text}");
    }
}
