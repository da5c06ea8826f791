//! The leader's side of a join: `node-agent cluster admit`, the step of the leader's
//! `cluster.admit` event, which a node asking to join publishes with its token's ACL user.
//!
//! The request (`cluster/join/<id>/<node>/request`) can only have been written by a holder of the
//! token: only the token's ACL user may write under `cluster/join/<id>/`. The tool checks the token
//! (not expired, uses left) and the request, gives the node a VPN address, its record and its ACL
//! user, and answers in `cluster/join/<id>/<node>/reply` — the passwords encrypted to the request's
//! age recipient, since every user may read keys. Admitting the same node (same key) again answers
//! the same way without taking another use of the token: a join that was interrupted is resumed.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{SystemTime, UNIX_EPOCH};

use core_events::cluster::{
    self as wire, cluster_vpn_field, join_field, join_reply_field, join_request_field, vpn_field,
    Ipv4Net, JoinSecrets,
};
use core_events::{AgentKind, AgentName};
use redis::Commands;

use super::vpn::scan;
use super::{Ctx, Result, ToolError};

/// The admin's credentials on this node (written by `agentctl node setup`).
const ADMIN_CREDENTIALS: &str = "/etc/agent/admin.env";

/// `node-agent cluster …`
#[derive(Debug, clap::Subcommand)]
pub enum ClusterTool {
    /// cluster.admit/10admit (on the leader): admit the node named in DATA (`TOKEN-ID NODE`, as
    /// published by `agentctl cluster join`) if its token is valid; the answer is written to
    /// cluster/join/TOKEN-ID/NODE/reply. Exit 65 when the request is refused.
    Admit {
        /// `TOKEN-ID NODE`.
        data: String,
    },
    /// users.sync/10sync (every member; also before node-agent starts): this node's Redis gets
    /// the ACL users of every agent of the cluster, from `cluster/users` (ACL users are not
    /// replicated). On the leader, its own agents' users missing from that key are added to it.
    /// Read from the leader, a user absent there is deleted here; read from this node's replica
    /// (the leader does not answer), users are only added.
    /// cluster.leader/10claim (queued by node-agent for itself after a failover): when this node's
    /// Redis leads, its name goes to cluster/leader, and its VPN peers are made again (the live
    /// join tokens are the leader's peers). Nothing on any other node.
    ClaimLeader,
    SyncUsers {
        /// Do nothing on a node in no cluster (no /etc/agent/vpn.env).
        #[arg(long)]
        from_config: bool,
    },
}

impl ClusterTool {
    /// The tool's command-line name.
    pub fn name(&self) -> &'static str {
        match self {
            ClusterTool::Admit { .. } => "admit",
            ClusterTool::SyncUsers { .. } => "sync-users",
            ClusterTool::ClaimLeader => "claim-leader",
        }
    }
}

pub fn run(tool: &ClusterTool, ctx: &Ctx) -> Result<()> {
    match tool {
        ClusterTool::Admit { data } => admit(ctx, data),
        ClusterTool::ClaimLeader => claim_leader(ctx),
        ClusterTool::SyncUsers { from_config } => {
            if *from_config && !std::path::Path::new(wire::VPN_ENV).exists() {
                println!(
                    "{} does not exist: this node is in no cluster; nothing to do",
                    wire::VPN_ENV
                );
                return Ok(());
            }
            sync_users(ctx)
        }
    }
}

/// `node-agent cluster claim-leader`.
fn claim_leader(ctx: &Ctx) -> Result<()> {
    let leads = ctx.block_on(async {
        let mut here = ctx.target.here().connection().await?;
        Ok(!super::keys::is_replica(&mut here).await?)
    })?;
    if !leads || !std::path::Path::new(wire::VPN_ENV).exists() {
        println!("this node's Redis does not lead a cluster: nothing to record");
        return Ok(());
    }
    let mut con = admin_connection(ctx)?;
    let was: Option<String> = con.get(wire::leader())?;
    if was.as_deref() == Some(ctx.node.as_str()) {
        println!("{} is the leader already", ctx.node);
    } else {
        let _: () = con.set(wire::leader(), ctx.node.as_str())?;
        println!(
            "{} is the leader now (was {})",
            ctx.node,
            was.as_deref().unwrap_or("nobody")
        );
    }
    run_vpn_sync()
}

/// `node-agent vpn sync --from-config`, this same binary.
fn run_vpn_sync() -> Result<()> {
    let sync = std::process::Command::new(
        std::env::current_exe().map_err(|e| ToolError::OsError(e.to_string()))?,
    )
    .args(["vpn", "sync", "--from-config"])
    .status()
    .map_err(|e| ToolError::OsError(format!("cannot run node-agent vpn sync: {e}")))?;
    if !sync.success() {
        return Err(ToolError::Failed(format!(
            "node-agent vpn sync failed ({sync})"
        )));
    }
    Ok(())
}

/// `node-agent cluster sync-users`.
fn sync_users(ctx: &Ctx) -> Result<()> {
    use redis_acl::replicate::{sync_users, Source};
    let keep = core_events::keys::acl_user(AgentKind::Node, &ctx.node);
    let outcome = ctx.block_on(async {
        let mut here = ctx.target.here().connection().await?;
        let done = if !super::keys::is_replica(&mut here).await? {
            sync_users(&mut here, Source::Leader, &keep).await
        } else {
            match ctx.target.connection().await {
                Ok(mut leader) => {
                    sync_users(&mut here, Source::FromLeader(&mut leader), &keep).await
                }
                Err(e) => {
                    eprintln!(
                        "warning: the leader does not answer ({e}): users from this node's \
                         replica, none deleted"
                    );
                    sync_users(&mut here, Source::FromReplica, &keep).await
                }
            }
        };
        done.map_err(super::keys::acl_error)
    })?;
    for r in &outcome.refused {
        eprintln!("warning: {} entry refused: {r}", wire::users());
    }
    let list = |v: &[String]| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(" ")
        }
    };
    println!(
        "agent users here: set {}; deleted {}; published {}",
        list(&outcome.set),
        list(&outcome.deleted),
        list(&outcome.published)
    );
    Ok(())
}

/// Queues `event` on every other member's node-agent (`PUBLISH <member>:<event>` on the leader,
/// where they subscribe); a member that is down catches up when its node-agent starts (the
/// syncs run before it). Nothing on a node in no cluster.
pub fn tell_members(ctx: &Ctx, event: &str) -> Result<()> {
    let event = core_events::EventName::new(event)
        .map_err(|e| ToolError::Failed(format!("event {event:?}: {e}")))?;
    let mut con = ctx.con()?;
    for k in scan(&mut con, &wire::node_vpn_pattern())? {
        let Some(member) = wire::node_of_vpn_key(&k).and_then(|n| AgentName::new(n).ok()) else {
            continue;
        };
        if member != ctx.node {
            let _: i64 = con.publish(core_events::keys::event_channel(&member, &event), "")?;
        }
    }
    Ok(())
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn field<'a>(rec: &'a [(String, String)], name: &str) -> Option<&'a str> {
    rec.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// Parses `TOKEN-ID NODE`.
fn parse_data(data: &str) -> Result<(String, AgentName)> {
    let mut words = data.split_whitespace();
    let (Some(id), Some(node), None) = (words.next(), words.next(), words.next()) else {
        return Err(ToolError::Invalid(format!(
            "expected `TOKEN-ID NODE`, got {data:?}"
        )));
    };
    if !wire::is_token_id(id) {
        return Err(ToolError::Invalid(format!("{id:?} is not a token id")));
    }
    let node =
        AgentName::new(node).map_err(|e| ToolError::Invalid(format!("node name {node:?}: {e}")))?;
    Ok((id.to_string(), node))
}

/// A checked join request.
struct Request {
    nonce: String,
    public_key: String,
    endpoint: SocketAddr,
    backend: String,
    recipient: module_secrets::Recipient,
}

fn parse_request(rec: &[(String, String)]) -> std::result::Result<Request, String> {
    let get = |f: &'static str| field(rec, f).ok_or(format!("the request has no {f}"));
    let nonce = get(join_request_field::NONCE)?;
    if nonce.is_empty() || nonce.len() > 64 || !nonce.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err("the request's nonce is malformed".into());
    }
    let public_key = get(join_request_field::PUBLIC_KEY)?;
    if !wire::is_wireguard_key(public_key) {
        return Err(format!("{public_key:?} is not a WireGuard public key"));
    }
    let endpoint = get(join_request_field::ENDPOINT)?;
    let endpoint: SocketAddr = endpoint
        .parse()
        .map_err(|_| format!("endpoint {endpoint:?} is not address:port"))?;
    let backend = get(join_request_field::BACKEND)?;
    if !matches!(backend, "kernel" | "userspace") {
        return Err(format!(
            "backend {backend:?} is neither kernel nor userspace"
        ));
    }
    let recipient = module_secrets::Recipient::parse(get(join_request_field::RECIPIENT)?)
        .map_err(|e| format!("recipient: {e}"))?;
    Ok(Request {
        nonce: nonce.to_string(),
        public_key: public_key.to_string(),
        endpoint,
        backend: backend.to_string(),
        recipient,
    })
}

fn admin_credentials() -> Result<agent_redis::Credentials> {
    agent_redis::Credentials::from_file(std::path::Path::new(ADMIN_CREDENTIALS))
        .map_err(|e| ToolError::Config(format!("the admin's credentials: {e}")))
}

/// A connection to the leader as the admin (root's credentials on this node).
fn admin_connection(ctx: &Ctx) -> Result<redis::Connection> {
    Ok(
        agent_redis::Target::new(&ctx.redis_url, Some(admin_credentials()?))
            .map_err(|e| ToolError::Config(e.to_string()))?
            .sync_connection(agent_redis::CONNECT_TIMEOUT, agent_redis::COMMAND_TIMEOUT)?,
    )
}

/// The cluster's edge identity for a joining node, made here (and its recipient published) when
/// the cluster has none yet, so that every member can open the certificates whichever node
/// stores them. `None`, with a warning, when it cannot be had: the node joins, and serves no
/// certificate until its key is copied (docs/EDGE.md).
fn edge_identity(ctx: &Ctx) -> Option<String> {
    let path = edge::store::identity_path();
    let identity = ctx.block_on(async {
        let mut con = ctx.target.connection().await?;
        edge::store::ensure_identity(&mut con, &path)
            .await
            .map_err(|e| ToolError::Failed(e.to_string()))
    });
    match identity {
        Ok(identity) => Some(identity.to_secret_string().to_string()),
        Err(e) => {
            eprintln!("warning: the joining node gets no edge key: {e}");
            None
        }
    }
}

/// The cluster's backup identity for a joining node, made here when the cluster has none yet
/// (as the edge key): every member can then open the repositories added later, wherever the
/// first `agentctl backup repo add` runs. A warning when it cannot be made or read.
fn backup_identity(ctx: &Ctx) -> Option<String> {
    let path = backup::repo::identity_path();
    let identity = ctx.block_on(async {
        let mut con = ctx.target.connection().await?;
        backup::repo::ensure_identity(&mut con, &path)
            .await
            .map_err(|e| ToolError::Failed(e.to_string()))
    });
    match identity {
        Ok(identity) => Some(identity.to_secret_string().to_string()),
        Err(e) => {
            eprintln!("warning: the joining node gets no backup key: {e}");
            None
        }
    }
}

fn admit(ctx: &Ctx, data: &str) -> Result<()> {
    let (id, node) = parse_data(data)?;
    // The cluster's keys (another node's record, the token's, the answer) are beyond what the
    // node's own ACL user may write: admitting a node is the admin's work, done by root here.
    let admin = admin_credentials()?;
    let mut con = admin_connection(ctx)?;
    let reply_key = wire::join_reply(&id, &node);
    let token: Vec<(String, String)> = con.hgetall(wire::join_token(&id))?;
    let expires: u64 = field(&token, join_field::EXPIRES)
        .and_then(|e| e.parse().ok())
        .unwrap_or(0);
    // Refusals are written where the joining node waits for its answer, and fail the run (65).
    let raw_request: Vec<(String, String)> = con.hgetall(wire::join_request(&id, &node))?;
    let nonce = field(&raw_request, join_request_field::NONCE)
        .unwrap_or_default()
        .to_string();
    let refuse = |con: &mut redis::Connection, why: String| -> Result<()> {
        let _: () = redis::pipe()
            .atomic()
            .del(&reply_key)
            .hset(&reply_key, join_reply_field::REFUSED, &why)
            .hset(&reply_key, join_reply_field::NONCE, &nonce)
            .expire(&reply_key, 3600)
            .query(con)?;
        Err(ToolError::Invalid(format!("node {node} refused: {why}")))
    };
    if token.is_empty() || expires <= now() {
        return refuse(&mut con, format!("token {id} is unknown or expired"));
    }
    let request = match parse_request(&raw_request) {
        Ok(r) => r,
        Err(why) => return refuse(&mut con, why),
    };
    if ctx.node == node {
        return refuse(&mut con, format!("{node} is the leader's own name"));
    }

    // This very request answered already (a late run of an earlier publish): nothing to do, or
    // the node would get a second password after it took the first.
    let answered: Option<String> = con.hget(&reply_key, join_reply_field::NONCE)?;
    if answered.as_deref() == Some(request.nonce.as_str()) {
        println!("node {node}: this request was answered already");
        return Ok(());
    }

    // Already a member? The same key: a resumed join (answer again); another key: refused.
    let existing: Vec<(String, String)> = con.hgetall(wire::node_vpn(&node))?;
    let resumed = match field(&existing, vpn_field::PUBLIC_KEY) {
        Some(k) if k == request.public_key => true,
        Some(_) => {
            return refuse(
                &mut con,
                format!(
                    "a node named {node} is already a member (with another key): remove it first \
                     (agentctl cluster remove-node {node}) or join under another name"
                ),
            )
        }
        None => false,
    };
    let kind: Option<String> = con.hget(core_events::keys::agent_registry(), node.as_str())?;
    if kind
        .as_deref()
        .is_some_and(|k| k != AgentKind::Node.as_str())
    {
        return refuse(&mut con, format!("the name {node} is a module's"));
    }
    if !resumed {
        let left: i64 = con.hincr(wire::join_token(&id), join_field::USES_LEFT, -1)?;
        if left < 0 {
            let _: i64 = con.hincr(wire::join_token(&id), join_field::USES_LEFT, 1)?;
            return refuse(&mut con, format!("token {id} is used up"));
        }
    }

    let address = match field(&existing, vpn_field::ADDRESS).and_then(|a| a.parse().ok()) {
        Some(a) => a,
        None => free_address(&mut con)?,
    };
    let node_password = random_password()?;
    let secrets = JoinSecrets {
        node_password: node_password.clone(),
        admin_password: admin.password.expose().to_string(),
        sentinel_password: agent_redis::Credentials::from_file(std::path::Path::new(
            wire::SENTINEL_CREDENTIALS,
        ))
        .ok()
        .map(|c| c.password.expose().to_string()),
        edge_identity: edge_identity(ctx),
        backup_identity: backup_identity(ctx),
    };
    let json = serde_json::to_vec(&secrets).expect("secrets serialize");
    let sealed = module_secrets::encrypt(&json, &request.recipient)
        .map_err(|e| ToolError::Failed(format!("encrypting the reply: {e}")))?;

    // The node's ACL user here (its password new at every answer: only the reply has it).
    let mut setuser = redis::cmd("ACL");
    setuser
        .arg("SETUSER")
        .arg(core_events::keys::acl_user(AgentKind::Node, &node))
        .arg(redis_acl::agent_rules(AgentKind::Node, &node))
        .arg(format!(">{node_password}"));
    let _: () = setuser.query(&mut con)?;
    let _: () = redis::pipe()
        .atomic()
        .hset(
            wire::node_vpn(&node),
            vpn_field::PUBLIC_KEY,
            &request.public_key,
        )
        .hset(
            wire::node_vpn(&node),
            vpn_field::ENDPOINT,
            request.endpoint.to_string(),
        )
        .hset(
            wire::node_vpn(&node),
            vpn_field::ADDRESS,
            address.to_string(),
        )
        .hset(wire::node_vpn(&node), vpn_field::BACKEND, &request.backend)
        .hset_nx(
            core_events::keys::agent_registry(),
            node.as_str(),
            AgentKind::Node.as_str(),
        )
        .del(&reply_key)
        .hset(&reply_key, join_reply_field::ADDRESS, address.to_string())
        .hset(&reply_key, join_reply_field::LEADER, ctx.node.as_str())
        .hset(&reply_key, join_reply_field::SECRETS, sealed)
        .hset(&reply_key, join_reply_field::NONCE, &request.nonce)
        .expire_at(&reply_key, expires as i64)
        .query(&mut con)?;
    let _: redis::Value = redis::cmd("ACL")
        .arg("SAVE")
        .query(&mut con)
        .unwrap_or(redis::Value::Nil);
    // Its user on every member's Redis too (their users.sync, below): any may lead one day.
    let node_user = core_events::keys::acl_user(AgentKind::Node, &node);
    let getuser: redis::Value = redis::cmd("ACL")
        .arg("GETUSER")
        .arg(&node_user)
        .query(&mut con)?;
    let hash = redis_acl::replicate::first_password(&getuser)
        .ok_or_else(|| ToolError::Failed(format!("{node_user} has no password here")))?;
    let _: () = con.hset(wire::users(), &node_user, hash)?;
    // The leader's own peers now, every other member's through its vpn.sync event.
    run_vpn_sync()?;
    let peers_event = wire::PEERS_EVENT;
    for k in scan(&mut con, &wire::node_vpn_pattern())? {
        let Some(member) = wire::node_of_vpn_key(&k).and_then(|n| AgentName::new(n).ok()) else {
            continue;
        };
        if member == ctx.node || member == node {
            continue;
        }
        for event in [peers_event, wire::USERS_EVENT] {
            let _: String = con.xadd(
                core_events::Prefix::node(member.clone()).queue(),
                "*",
                &[(core_events::record::QUEUE_FIELD_EVENT, event)],
            )?;
        }
    }
    println!(
        "node {node} {} with VPN address {address}, endpoint {}",
        if resumed {
            "admitted again"
        } else {
            "admitted"
        },
        request.endpoint
    );
    Ok(())
}

/// The lowest host address of the cluster's network that no node and no join token uses.
fn free_address(con: &mut redis::Connection) -> Result<Ipv4Addr> {
    let vpn: Vec<(String, String)> = con.hgetall(wire::cluster_vpn())?;
    let net = field(&vpn, cluster_vpn_field::NETWORK)
        .ok_or_else(|| ToolError::Config("cluster/vpn has no network".into()))?;
    let net = Ipv4Net::parse(net).map_err(|e| ToolError::Config(format!("cluster/vpn: {e}")))?;
    let mut used = Vec::new();
    for k in scan(con, &wire::node_vpn_pattern())? {
        let a: Option<String> = con.hget(&k, vpn_field::ADDRESS)?;
        used.extend(a.and_then(|a| a.parse::<Ipv4Addr>().ok()));
    }
    for k in scan(con, &wire::join_token_pattern())? {
        if wire::token_of_join_key(&k).is_some() {
            let a: Option<String> = con.hget(&k, join_field::ADDRESS)?;
            used.extend(a.and_then(|a| a.parse::<Ipv4Addr>().ok()));
        }
    }
    net.hosts()
        .find(|a| !used.contains(a))
        .ok_or_else(|| ToolError::Unavailable(format!("no free address left in {net}")))
}

fn random_password() -> Result<String> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| ToolError::OsError(format!("no random numbers: {e}")))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_is_checked() {
        assert!(parse_data("0a1b2c3d node2").is_ok());
        for bad in [
            "",
            "0a1b2c3d",
            "0A1B2C3D node2",
            "0a1b2c3d ../x",
            "0a1b2c3d n m",
        ] {
            assert!(parse_data(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn requests_are_checked() {
        let id = module_secrets::Identity::generate();
        let ok = vec![
            ("nonce".to_string(), "abc123".to_string()),
            (
                "public_key".to_string(),
                "YK9sKzt+nkV4mtoo1YMbNeuzvoK5jiQbuIr8Yx1YqWE=".to_string(),
            ),
            ("endpoint".into(), "10.77.0.12:55820".into()),
            ("backend".into(), "userspace".into()),
            ("recipient".into(), id.recipient().to_string()),
        ];
        assert!(parse_request(&ok).is_ok());
        for (i, bad) in ["a b", "key", "10.77.0.12", "tun", "age1nope"]
            .iter()
            .enumerate()
        {
            let mut r = ok.clone();
            r[i].1 = bad.to_string();
            assert!(parse_request(&r).is_err(), "{bad}");
        }
    }
}
