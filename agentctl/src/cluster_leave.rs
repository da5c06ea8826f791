//! Taking a node out of the cluster: `agentctl cluster remove-node NODE` (on any member, as the
//! admin: the leader forgets the node and every member drops it as a peer) and `agentctl cluster
//! leave` (on the node itself: the same, then this node on its own again).
//!
//! A node that leaves starts over as a fresh node: its Redis stops replicating and drops the copy
//! of the cluster's data it held (it has no modules — that is checked first — so nothing of its
//! own is lost), its VPN goes down and its settings are removed. Its ACL users and credentials
//! stay, so its agents keep logging in.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use core_events::cluster::{self as wire, VPN_ENV};
use core_events::{AgentKind, AgentName, EventName, Prefix};
use redis::AsyncCommands;

use crate::cluster::{admin, node_name, vpn_tool};
use crate::conn::RedisArgs;
use crate::fail::fail;

/// How long `remove-node` waits for the removed node to run its cluster.leave event.
const LEAVE_WAIT: u64 = 60;

#[derive(Debug, Args)]
pub struct RemoveArgs {
    /// The node to remove.
    pub node: String,

    /// Remove the node's modules first (module.remove on that node, each followed to its end);
    /// without it, a node with modules is refused and they are listed.
    #[arg(long)]
    pub remove_modules: bool,
}

#[derive(Debug, Args)]
pub struct LeaveArgs {
    /// Only this node's side (what the node's cluster.leave event runs): VPN down, the replica
    /// stopped, the copy of the cluster's data dropped; the leader is not asked.
    #[arg(long)]
    pub local: bool,

    /// This node's name. Default: the short hostname.
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,
}

/// The modules installed on `node`, from the leader's records.
async fn modules_of(
    con: &mut redis::aio::ConnectionManager,
    node: &AgentName,
) -> Result<Vec<String>> {
    let mut m: Vec<String> = con.hkeys(Prefix::node(node.clone()).modules()).await?;
    m.sort();
    Ok(m)
}

/// `agentctl cluster remove-node NODE`.
pub async fn remove_node(redis: &RedisArgs, args: RemoveArgs) -> Result<i32> {
    let node = AgentName::new(&args.node)
        .map_err(|e| crate::fail::invalid(format!("node name {:?}: {e}", args.node)))?;
    let shared = redis.load()?;
    let mut con = shared.manager().await?;
    let leader: Option<String> = con.get(wire::leader()).await?;
    let Some(leader) = leader else {
        return Err(fail(78, "no cluster here (cluster/leader is not set)"));
    };
    if leader == node.as_str() {
        return Err(fail(
            78,
            format!("{node} is the leader: it cannot be removed while it leads"),
        ));
    }
    let exists: bool = con.exists(wire::node_vpn(&node)).await?;
    if !exists {
        println!("{node} is no member of this cluster: nothing to do");
        return Ok(0);
    }
    let modules = modules_of(&mut con, &node).await?;
    if !modules.is_empty() {
        if !args.remove_modules {
            return Err(fail(
                78,
                format!(
                    "modules are installed on {node}: {}; remove them first (agentctl module \
                     remove --node {node} ID) or pass --remove-modules",
                    modules.join(", ")
                ),
            ));
        }
        for id in &modules {
            let code = crate::run::queue_and_follow(
                &shared,
                &mut con,
                &Prefix::node(node.clone()),
                &EventName::new(crate::module::REMOVE_EVENT).expect("valid event name"),
                id,
                &crate::run::Follow::to_end(300),
            )
            .await?;
            if code != 0 {
                return Err(fail(
                    1,
                    format!("module.remove {id} on {node} failed: nothing else was changed"),
                ));
            }
        }
    }

    // The node's own side first, while it still reaches the leader: its cluster.leave event.
    // Its run cannot report its end (the step takes the node's VPN down): the node has left when
    // its Redis no longer replicates the leader's.
    let address: Option<String> = con
        .hget(wire::node_vpn(&node), wire::vpn_field::ADDRESS)
        .await?;
    let alive: bool = con.exists(Prefix::node(node.clone()).heartbeat()).await?;
    if alive {
        crate::run::queue_and_follow(
            &shared,
            &mut con,
            &Prefix::node(node.clone()),
            &EventName::new(wire::LEAVE_EVENT).expect("valid event name"),
            "",
            &crate::run::Follow {
                no_wait: true,
                timeout: 0,
                json: false,
                run_id_on_stdout: false,
            },
        )
        .await?;
        let replica = address.map(|a| format!("ip={a},"));
        let deadline = Instant::now() + Duration::from_secs(LEAVE_WAIT);
        loop {
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query_async(&mut con)
                .await?;
            let still = replica.as_deref().is_some_and(|r| info.contains(r));
            if !still {
                println!("left:     {node} replicates the leader no more");
                break;
            }
            if Instant::now() > deadline {
                eprintln!(
                    "warning: {node} did not leave within {LEAVE_WAIT} s (see its journal: \
                     journalctl -u node-agent); the cluster forgets it anyway: on {node}, run \
                     agentctl cluster leave --local"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    } else {
        eprintln!(
            "warning: {node}'s node-agent is not running: the cluster forgets it, but on {node} \
             itself run agentctl cluster leave --local once it is back"
        );
    }
    forget(&mut con, &node, &leader).await?;
    println!("removed: {node} (its record, keys and Redis user; every member drops it as a peer)");
    Ok(0)
}

/// The leader forgets `node`: its keys, its ACL user, its peer on every member.
async fn forget(
    con: &mut redis::aio::ConnectionManager,
    node: &AgentName,
    leader: &str,
) -> Result<()> {
    let prefix = Prefix::node(node.clone());
    let mut keys: Vec<String> = Vec::new();
    {
        let mut it: redis::AsyncIter<String> = con.scan_match(prefix.key_pattern()).await?;
        while let Some(k) = it.next_item().await {
            keys.push(k?);
        }
    }
    keys.push(wire::node_vpn(node));
    let mut pipe = redis::pipe();
    for k in &keys {
        pipe.del(k);
    }
    let _: () = pipe.query_async(con).await?;
    redis_acl::replicate::forget_agent(con, AgentKind::Node, node).await?;
    // Every remaining member (the leader included) makes its peers and its agents' users again.
    let mut members: Vec<String> = Vec::new();
    {
        let mut it: redis::AsyncIter<String> = con.scan_match(wire::node_vpn_pattern()).await?;
        while let Some(k) = it.next_item().await {
            members.extend(wire::node_of_vpn_key(&k?).map(String::from));
        }
    }
    if !members.iter().any(|m| m == leader) {
        members.push(leader.to_string());
    }
    for m in members {
        let Ok(m) = AgentName::new(&m) else { continue };
        for event in [wire::PEERS_EVENT, wire::USERS_EVENT] {
            let _: String = con
                .xadd(
                    Prefix::node(m.clone()).queue(),
                    "*",
                    &[(core_events::record::QUEUE_FIELD_EVENT, event)],
                )
                .await?;
        }
    }
    Ok(())
}

/// `agentctl cluster leave`.
pub async fn leave(redis: &RedisArgs, args: LeaveArgs) -> Result<i32> {
    if !nix::unistd::geteuid().is_root() {
        return Err(fail(
            1,
            "cluster leave configures the network and Redis: run it as root",
        ));
    }
    let node = node_name(args.node)?;
    if crate::cluster::local_vpn().is_none() {
        println!("this node is in no cluster ({VPN_ENV} does not exist): nothing to do");
        return Ok(0);
    }
    if !args.local {
        let shared = redis.load()?;
        let mut con = shared.manager().await?;
        let leader: Option<String> = con.get(wire::leader()).await?;
        let leader = leader.context("no leader known (cluster/leader)")?;
        if leader == node.as_str() {
            return Err(fail(
                78,
                format!("{node} is the leader: it cannot leave while it leads"),
            ));
        }
        let modules = modules_of(&mut con, &node).await?;
        if !modules.is_empty() {
            return Err(fail(
                78,
                format!(
                    "modules are installed on this node: {}; remove them first (agentctl module \
                     remove --node {node} ID)",
                    modules.join(", ")
                ),
            ));
        }
        forget(&mut con, &node, &leader).await?;
        println!("leader:   {leader} forgot {node}");
    }
    on_its_own(redis, &node).await?;
    // Last: node-agent restarts onto this node's own Redis (from a step, without waiting for the
    // restart, which ends the step's run).
    let _ = Command::new("systemctl")
        .args(["--no-block", "restart", "node-agent.service"])
        .status();
    println!("left: this node is on its own again (its Redis starts empty, like a fresh node's)");
    Ok(0)
}

/// This node on its own again: VPN down and its settings gone, Redis a primary again without the
/// copy of the cluster's data, Redis's configuration file without the cluster's lines.
pub(crate) async fn on_its_own(redis: &RedisArgs, node: &AgentName) -> Result<()> {
    // Redis first (what can be refused), the VPN last: a failure leaves a node a rerun can fix.
    let mut local = admin(redis).await?;
    // Sentinel first: it would make this Redis a replica again.
    crate::sentinel::remove(&mut local).await?;
    let role: redis::Value = redis::cmd("ROLE").query_async(&mut local).await?;
    let was_replica = agent_redis::target::leader_of_role(&role).is_some();
    let _: () = redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query_async(&mut local)
        .await?;
    if was_replica {
        // The cluster's data is not this node's any more, nor its agents' users (`users.sync`
        // made them here); this node's own user stays.
        let _: () = redis::cmd("FLUSHALL").query_async(&mut local).await?;
        let own = core_events::keys::acl_user(AgentKind::Node, node);
        for user in redis_acl::replicate::agent_users(&mut local)
            .await?
            .into_keys()
        {
            if user != own {
                let _: i64 = redis::cmd("ACL")
                    .arg("DELUSER")
                    .arg(&user)
                    .query_async(&mut local)
                    .await?;
            }
        }
        let _ = redis_acl::save_acl(&mut local).await;
    }
    for (k, v) in [("masteruser", ""), ("masterauth", "")] {
        let _: redis::RedisResult<()> = redis::cmd("CONFIG")
            .arg("SET")
            .arg(k)
            .arg(v)
            .query_async(&mut local)
            .await;
    }
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("bind")
        .arg("127.0.0.1 -::1")
        .query_async(&mut local)
        .await?;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("protected-mode")
        .arg("yes")
        .query_async(&mut local)
        .await?;
    let _ = Command::new("systemctl")
        .args(["stop", "agent-vpn.service"])
        .status();
    if let Some(v) = crate::cluster::local_vpn() {
        let _ = vpn_tool(&["down", "--interface", &v.interface]);
    }
    let _ = Command::new("systemctl")
        .args(["disable", "--quiet", "agent-vpn.service"])
        .status();
    let _ = std::fs::remove_file(VPN_ENV);
    crate::node::rewrite_conf_for_vpn(None).context("updating Redis's configuration file")?;
    Ok(())
}
