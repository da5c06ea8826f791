//! `agentctl cluster`: make this node the first of a cluster (create), let others join (token),
//! and say where the cluster stands (status).
//!
//! The VPN is the node's WireGuard interface, driven by `node-agent vpn` (the node's tool: key,
//! interface, peers from Redis). What this module adds is the cluster's side: the settings every
//! node shares (`cluster/vpn`), the leader, the node's own VPN settings in `/etc/agent/vpn.env`
//! (read back by `agentctl node setup`, so Redis keeps listening on the VPN address, and by the
//! `agent-vpn` unit at boot), and join tokens. A token is printed once; the leader keeps the public
//! half of its WireGuard key and, as the password of the token's ACL user, the SHA-256 hash Redis
//! keeps of every password — never the secret itself.

use std::net::{Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use core_events::cluster::{self as wire, cluster_vpn_field, join_field, Ipv4Net, JoinToken};
use core_events::{AgentName, EventName};
use redis::aio::MultiplexedConnection;
use redis::AsyncCommands;

use crate::conn::RedisArgs;
use crate::fail::{fail, invalid};
use crate::redis_admin::connect_admin;

use core_events::cluster::{LocalVpn, VPN_ENV};
/// The unit that brings the VPN up at boot, before Redis (systemd/agent-vpn.service).
const VPN_UNIT: &str = "agent-vpn.service";

pub const LONG_ABOUT: &str = "\
The cluster: nodes joined by a WireGuard full mesh, one Redis leader. `create` makes this node
the first (the leader); `token` prints a join token for new nodes; `status` shows the nodes and
tokens. See docs/CLUSTER.md.";

const CREATE_AFTER_HELP: &str = "\
WHAT CREATE DOES (a second run on the leader changes nothing):
  1. the node's WireGuard key (/etc/agent/vpn.key, 0600) and interface, with the
     first address of the network (10.5.4.1 by default), listening on UDP --port;
  2. its settings in /etc/agent/vpn.env; agent-vpn.service enabled (it brings the
     interface up at boot, before Redis);
  3. Redis also listens on the VPN address (live, and in /etc/redis/agent.conf);
  4. in Redis: cluster/vpn (network, port), node/NAME/vpn (key, endpoint, address,
     backend), cluster/leader = NAME.
Then `agentctl cluster token` prints a token for each node to join.

EXIT CODES:
  0   done (or nothing to do)
  1   failed (what was done is printed; a rerun goes on)
  2   bad command line
  65  invalid input (network, endpoint, node name)
  78  this node is already in a cluster led by another node

EXAMPLES:
  agentctl cluster create --endpoint 192.0.2.10
  agentctl cluster create --endpoint node1.example.org:51820 --network 10.20.0.0/24";

const JOIN_AFTER_HELP: &str = "\
PREFLIGHT (changes nothing; --check stops after it): the token is well-formed,
this node is in no cluster and has no modules, its WireGuard port is free, the
leader answers over WireGuard with the token's key, the token is valid (known,
not expired, uses left), the clocks agree within 60 s, the versions match, and
the node's name is free in the cluster.

THE JOIN (each step recorded in /var/lib/agent/cluster/join.json; kill it at any
point and run the same command again: it goes on from where it stopped):
  1. request: the node's key and endpoint to the leader, whose cluster.admit
     event gives it a VPN address and its Redis passwords (encrypted to it);
  2. switch: the node's own interface up, Redis users and credentials set, the
     local Redis a replica of the leader's over the VPN, node-agent restarted
     onto the leader;
  3. the node's cluster.join event (on the leader's queue, in the journal):
     the full mesh of peers.
--abort undoes a join that did not finish, on this node and on the leader.

EXIT CODES:
  0   joined (or already a member)
  1   failed (the message says which step; a rerun goes on)
  2   bad command line
  65  refused: bad, expired or used-up token, name taken, preflight failed
  78  this node is already in another cluster, or has modules

EXAMPLES:
  agentctl cluster join 192.0.2.10 agentjoin1-… --endpoint 192.0.2.11
  agentctl cluster token | ssh node2 agentctl cluster join 192.0.2.10 - --endpoint 192.0.2.11";

const TOKEN_AFTER_HELP: &str = "\
The token is printed once, on stdout; keep it like a password until it is used
or expires. The leader keeps only the public half of the token's WireGuard key and
a SHA-256 hash of its secret (the password of the ACL user join-ID, as Redis keeps
every password). An expired or used-up token is refused.

EXAMPLES:
  agentctl cluster token
  agentctl cluster token --uses 3 --expires 2h";

#[derive(Debug, Subcommand)]
pub enum ClusterCmd {
    /// Make this node the first node (the leader) of a new cluster: VPN up, Redis on the VPN
    /// address, the cluster's settings in Redis.
    #[command(after_long_help = CREATE_AFTER_HELP)]
    Create(CreateArgs),
    /// Print a new join token (on the leader).
    #[command(after_long_help = TOKEN_AFTER_HELP)]
    Token(TokenArgs),
    /// Join this node to a cluster with a token from `agentctl cluster token`: preflight, then
    /// the join (resumable: run it again after any failure or interruption).
    #[command(after_long_help = JOIN_AFTER_HELP)]
    Join(JoinArgs),
    /// Take a node out of the cluster (from any member): it leaves (its cluster.leave event),
    /// the leader forgets it, every member drops it as a peer. Refused while it has modules.
    RemoveNode(crate::cluster_leave::RemoveArgs),
    /// Take this node out of the cluster; it goes on alone, as a fresh node.
    Leave(crate::cluster_leave::LeaveArgs),
    /// The cluster as Redis knows it: leader, network, nodes and their VPN ends, join tokens.
    Status(StatusArgs),
    /// (Re)configure this node's Redis Sentinel and its Redis's failover settings for the
    /// cluster as it is now: the quorum (a majority of the members), `min-replicas-to-write` (1
    /// from 3 members on, else 0), Sentinel told to forget nodes that left. Run by the `vpn.sync`
    /// event on every member; `cluster create` and `join` run it too. Idempotent.
    Sentinel(SentinelArgs),
}

#[derive(Debug, Args)]
pub struct SentinelArgs {
    /// Do nothing on a node in no cluster (no /etc/agent/vpn.env).
    #[arg(long)]
    pub from_config: bool,

    /// This node's name. Default: the short hostname.
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,
}

/// Which WireGuard implementation runs the interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// The kernel's, when it has the wireguard module; else wireguard-go.
    Auto,
    /// The kernel's wireguard module.
    Kernel,
    /// wireguard-go (package wireguard-go), for kernels without the module.
    Userspace,
}

impl Backend {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Backend::Auto => "auto",
            Backend::Kernel => "kernel",
            Backend::Userspace => "userspace",
        }
    }
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Where other nodes reach this one: HOST or HOST:PORT (the port defaults to --port). An
    /// address of this host that the other nodes can reach, or a name that resolves to one.
    #[arg(long, value_name = "HOST[:PORT]")]
    endpoint: String,

    /// The VPN network; the leader takes its first address.
    #[arg(long, value_name = "NET/LEN", default_value = wire::DEFAULT_NETWORK)]
    network: String,

    /// UDP port WireGuard listens on.
    #[arg(long, default_value_t = wire::DEFAULT_PORT)]
    port: u16,

    /// Name of the WireGuard interface.
    #[arg(long, value_name = "NAME", default_value = wire::DEFAULT_INTERFACE)]
    interface: String,

    /// WireGuard implementation.
    #[arg(long, value_enum, default_value = "auto")]
    backend: Backend,

    /// This node's name. Default: the short hostname, like node-agent.
    #[arg(long, value_name = "NAME")]
    node: Option<String>,
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// How many nodes may join with it.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    uses: u32,

    /// How long it stays valid (e.g. 30m, 2h, 1day; at most 7 days).
    #[arg(long, default_value = "1h", value_parser = parse_expiry)]
    expires: Duration,

    /// This node's name (the leader). Default: the short hostname.
    #[arg(long, value_name = "NAME")]
    node: Option<String>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {}

#[derive(Debug, Args)]
pub struct JoinArgs {
    /// The leader's endpoint, HOST or HOST:PORT, as `cluster create` printed it.
    #[arg(value_name = "LEADER-ENDPOINT", required_unless_present = "abort")]
    pub leader: Option<String>,

    /// The join token; `-` reads it from stdin (keeps it out of the process list).
    #[arg(value_name = "TOKEN", required_unless_present = "abort")]
    pub token: Option<String>,

    /// Where the other nodes reach this one: HOST or HOST:PORT.
    #[arg(long, value_name = "HOST[:PORT]", required_unless_present = "abort")]
    pub endpoint: Option<String>,

    /// UDP port WireGuard listens on (the cluster's is the default).
    #[arg(long, default_value_t = wire::DEFAULT_PORT)]
    pub port: u16,

    /// Name of the WireGuard interface.
    #[arg(long, value_name = "NAME", default_value = wire::DEFAULT_INTERFACE)]
    pub interface: String,

    /// WireGuard implementation.
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: Backend,

    /// This node's name. Default: the short hostname, like node-agent.
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,

    /// Run the preflight only: check everything, change nothing.
    #[arg(long)]
    pub check: bool,

    /// Undo a join that failed or was interrupted, on this node and on the leader.
    #[arg(long, conflicts_with_all = ["check"])]
    pub abort: bool,
}

fn parse_expiry(s: &str) -> std::result::Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_secs(60) || d > Duration::from_secs(7 * 24 * 3600) {
        return Err("between 1 minute and 7 days".into());
    }
    Ok(d)
}

/// Runs one `agentctl cluster` command; returns the exit code.
pub fn main(redis: &RedisArgs, cmd: ClusterCmd) -> Result<i32> {
    crate::runtime()?.block_on(async move {
        match cmd {
            ClusterCmd::Create(args) => create(redis, args).await,
            ClusterCmd::Token(args) => token(redis, args).await,
            ClusterCmd::Status(args) => status(redis, args).await,
            ClusterCmd::Join(args) => crate::cluster_join::join(redis, args).await,
            ClusterCmd::RemoveNode(args) => crate::cluster_leave::remove_node(redis, args).await,
            ClusterCmd::Leave(args) => crate::cluster_leave::leave(redis, args).await,
            ClusterCmd::Sentinel(args) => sentinel(redis, args).await,
        }
    })
}

/// This node's VPN settings, when it is in a cluster (`vpn.env` exists and is readable).
pub fn local_vpn() -> Option<LocalVpn> {
    LocalVpn::parse(&std::fs::read_to_string(VPN_ENV).ok()?)
}

pub(crate) fn node_name(arg: Option<String>) -> Result<AgentName> {
    let node = match arg {
        Some(n) => n,
        None => crate::redis_admin::short_hostname()?,
    };
    AgentName::new(&node).map_err(|e| invalid(format!("node name {node:?}: {e}")))
}

/// `HOST[:PORT]` → a socket address (a name is resolved once, here: WireGuard wants addresses).
pub(crate) fn parse_endpoint(s: &str, default_port: u16) -> Result<SocketAddr> {
    let with_port =
        wire::endpoint_with_port(s, default_port).map_err(|e| invalid(format!("endpoint: {e}")))?;
    let addrs: Vec<SocketAddr> = with_port
        .to_socket_addrs()
        .map_err(|e| invalid(format!("endpoint {s:?}: {e}")))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| invalid(format!("endpoint {s:?} resolves to no address")))
}

/// Runs `node-agent vpn ARGS…` (the node's VPN tool); its stdout on success.
pub(crate) fn vpn_tool(args: &[&str]) -> Result<String> {
    let out = Command::new(node_agent_binary())
        .arg("vpn")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .context("cannot run node-agent vpn")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !stderr.trim().is_empty() {
        eprint!("{stderr}");
    }
    if !out.status.success() {
        bail!(
            "node-agent vpn {} failed ({})",
            args.first().unwrap_or(&""),
            out.status
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Makes the running Redis listen on the node's VPN address too, with protected mode off (it
/// would refuse the other nodes: see `node::bind_line`); `true` when it changed anything.
pub(crate) async fn listen_on_vpn(
    conn: &mut MultiplexedConnection,
    address: Ipv4Addr,
) -> Result<bool> {
    let binds: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("bind")
        .query_async(conn)
        .await?;
    let current = binds.get(1).cloned().unwrap_or_default();
    let protected: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("protected-mode")
        .query_async(conn)
        .await?;
    let mut changed = false;
    if !current.split_whitespace().any(|a| a == address.to_string()) {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("bind")
            .arg(format!("{current} {address}").trim())
            .query_async(conn)
            .await
            .context("CONFIG SET bind (Redis on the VPN address)")?;
        changed = true;
    }
    if protected.get(1).map(String::as_str) != Some("no") {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("protected-mode")
            .arg("no")
            .query_async(conn)
            .await
            .context("CONFIG SET protected-mode no")?;
        changed = true;
    }
    Ok(changed)
}

/// Enables and starts agent-vpn.service, which brings the interface up from vpn.env (and again
/// at every boot, before Redis).
pub(crate) fn start_vpn_unit() -> Result<()> {
    for args in [
        ["daemon-reload", ""],
        ["enable", VPN_UNIT],
        ["start", VPN_UNIT],
    ] {
        let mut cmd = Command::new("systemctl");
        cmd.arg(args[0]);
        if !args[1].is_empty() {
            cmd.arg(args[1]);
        }
        let st = cmd.status().context("cannot run systemctl")?;
        if !st.success() {
            bail!(
                "systemctl {} {} failed ({st}): see journalctl -u {VPN_UNIT}",
                args[0],
                args[1]
            );
        }
    }
    Ok(())
}

/// `node-agent vpn sync --from-config` as this node: its record published, its peers made the
/// cluster's; what it printed.
fn sync_peers(node: &AgentName) -> Result<String> {
    vpn_tool(&[
        "sync",
        "--from-config",
        "--node",
        node.as_str(),
        "--redis-credentials",
        &node_creds(),
    ])
}

/// node-agent beside this agentctl (a package or a build tree), else from PATH.
fn node_agent_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("node-agent")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("node-agent"))
}

/// The node's own credentials file: `node-agent vpn sync` writes the node's record as the node.
pub(crate) fn node_creds() -> String {
    redis_acl::SetupOptions {
        default_policy: redis_acl::DefaultPolicy::ReadOnly,
        node: AgentName::new("x").expect("valid"),
        creds_dir: PathBuf::from("/etc/agent"),
    }
    .node_creds_path()
    .to_string_lossy()
    .into_owned()
}

pub(crate) fn write_private(path: &Path, text: &str) -> Result<bool> {
    use std::os::unix::fs::PermissionsExt;
    if std::fs::read_to_string(path).ok().as_deref() == Some(text) {
        return Ok(false);
    }
    let dir = path.parent().context("a file without a directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, text.as_bytes())?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o600))?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(true)
}

pub(crate) async fn admin(redis: &RedisArgs) -> Result<MultiplexedConnection> {
    connect_admin(redis, &crate::conn::default_admin_credentials()).await
}

async fn sentinel(redis: &RedisArgs, args: SentinelArgs) -> Result<i32> {
    let node = node_name(args.node)?;
    let Some(vpn) = local_vpn() else {
        if args.from_config {
            println!("{VPN_ENV} does not exist: this node is in no cluster; nothing to do");
            return Ok(0);
        }
        return Err(fail(
            78,
            format!("{VPN_ENV} does not exist: this node is in no cluster"),
        ));
    };
    if !nix::unistd::geteuid().is_root() {
        return Err(fail(
            1,
            "cluster sentinel configures services: run it as root",
        ));
    }
    let mut local = admin(redis).await?;
    crate::sentinel::configure(&mut local, &node, vpn.address, None).await?;
    Ok(0)
}

async fn create(redis: &RedisArgs, args: CreateArgs) -> Result<i32> {
    let node = node_name(args.node)?;
    let net = Ipv4Net::parse(&args.network).map_err(|e| invalid(format!("--network: {e}")))?;
    let endpoint = parse_endpoint(&args.endpoint, args.port)?;
    if !nix::unistd::geteuid().is_root() {
        return Err(fail(
            1,
            "cluster create configures the network and Redis: run it as root",
        ));
    }
    crate::sentinel::check_installed().map_err(|e| fail(69, format!("{e:#}")))?;
    let mut conn = admin(redis).await?;
    let leader: Option<String> = conn.get(wire::leader()).await?;
    match &leader {
        Some(l) if l != node.as_str() => {
            return Err(fail(
                78,
                format!(
                    "this node's Redis already belongs to a cluster led by {l}: nothing was changed"
                ),
            ))
        }
        _ => {}
    }
    let address = net.hosts().next().expect("a /30 or larger has hosts");
    let vpn = LocalVpn {
        address,
        prefix: net.prefix,
        port: args.port,
        interface: args.interface.clone(),
        backend: args.backend.as_str().to_string(),
        endpoint: endpoint.to_string(),
        leader: None,
    };
    if let Some(existing) = local_vpn() {
        if existing != vpn {
            return Err(fail(
                78,
                format!(
                    "{VPN_ENV} already holds other VPN settings (address {}, port {}, endpoint {}): \
                     this node was set up for a cluster before; nothing was changed",
                    existing.address, existing.port, existing.endpoint
                ),
            ));
        }
    }
    let mut changes = 0;
    // 1. Key, settings, and the interface through its unit (so that wireguard-go, for the
    // userspace backend, belongs to the unit and not to this command's session).
    let public_key = vpn_tool(&["key"])?;
    if write_private(Path::new(VPN_ENV), &vpn.text())? {
        println!("changed:  {VPN_ENV} written");
        changes += 1;
    }
    start_vpn_unit()?;
    let up = vpn_tool(&["up", "--from-config"])?;
    println!("vpn:      {}", up.lines().last().unwrap_or_default());
    // 3. Redis on the VPN address too: live, and in setup's file for its restarts.
    if listen_on_vpn(&mut conn, address).await? {
        println!("changed:  Redis listens on {address} too");
        changes += 1;
    }
    crate::node::rewrite_conf_for_vpn(None).context("updating Redis's configuration file")?;
    // 4. The cluster's records.
    let _: () = redis::pipe()
        .hset(
            wire::cluster_vpn(),
            cluster_vpn_field::NETWORK,
            net.to_string(),
        )
        .hset(wire::cluster_vpn(), cluster_vpn_field::PORT, args.port)
        .query_async(&mut conn)
        .await?;
    let sync = sync_peers(&node)?;
    println!("peers:    {sync}");
    // The users of this node's agents, published for every node that joins (`cluster/users`).
    let published = redis_acl::replicate::sync_users(
        &mut conn,
        redis_acl::replicate::Source::Leader,
        &core_events::keys::acl_user(core_events::AgentKind::Node, &node),
    )
    .await?;
    if !published.published.is_empty() {
        println!("users:    published {}", published.published.join(" "));
    }
    crate::sentinel::configure(&mut conn, &node, address, None).await?;
    if leader.is_none() {
        let _: () = conn.set(wire::leader(), node.as_str()).await?;
        println!("changed:  {node} is the leader of a new cluster (network {net})");
        changes += 1;
    } else {
        println!("in place: {node} is the leader (network {net})");
    }
    println!("public key {public_key}, endpoint {endpoint}, VPN address {address}");
    if changes == 0 {
        println!("nothing to do");
    }
    println!("next: agentctl cluster token, then on the new node: agentctl cluster join {endpoint} TOKEN");
    Ok(0)
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Every join token's id and record (SCAN, not KEYS).
async fn tokens(conn: &mut MultiplexedConnection) -> Result<Vec<(String, Vec<(String, String)>)>> {
    let mut keys: Vec<String> = Vec::new();
    let mut iter: redis::AsyncIter<String> = conn.scan_match(wire::join_token_pattern()).await?;
    while let Some(k) = iter.next_item().await {
        keys.push(k?);
    }
    drop(iter);
    let mut out = Vec::new();
    for k in keys {
        if let Some(id) = wire::token_of_join_key(&k) {
            let rec: Vec<(String, String)> = conn.hgetall(&k).await?;
            out.push((id.to_string(), rec));
        }
    }
    out.sort();
    Ok(out)
}

pub(crate) fn field<'a>(rec: &'a [(String, String)], name: &str) -> Option<&'a str> {
    rec.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// The ACL users of tokens whose record is gone (expired): deleted, so an expired token cannot
/// even log in.
async fn sweep_expired_users(conn: &mut MultiplexedConnection, live: &[String]) -> Result<u32> {
    let users: Vec<String> = redis::cmd("ACL").arg("USERS").query_async(conn).await?;
    let mut swept = 0;
    for u in users {
        let Some(id) = u.strip_prefix("join-") else {
            continue;
        };
        if wire::join_acl_user(id) == u && !live.iter().any(|l| l == id) {
            let _: i64 = redis::cmd("ACL")
                .arg("DELUSER")
                .arg(&u)
                .query_async(conn)
                .await?;
            swept += 1;
        }
    }
    if swept > 0 {
        let _ = redis_acl::save_acl(conn).await;
    }
    Ok(swept)
}

/// The node's VPN record, checked.
async fn vpn_record(conn: &mut MultiplexedConnection, node: &AgentName) -> Result<wire::VpnRecord> {
    let rec: Vec<(String, String)> = conn.hgetall(wire::node_vpn(node)).await?;
    wire::VpnRecord::parse(|f| field(&rec, f))
        .map_err(|e| anyhow::anyhow!("{}: {e}", wire::node_vpn(node)))
}

async fn token(redis: &RedisArgs, args: TokenArgs) -> Result<i32> {
    use base64::Engine as _;
    let node = node_name(args.node)?;
    let mut conn = admin(redis).await?;
    let leader: Option<String> = conn.get(wire::leader()).await?;
    if leader.as_deref() != Some(node.as_str()) {
        return Err(fail(
            78,
            match leader {
                Some(l) => format!("tokens are made on the leader, {l}, not on {node}"),
                None => "no cluster yet: agentctl cluster create first".into(),
            },
        ));
    }
    let me = vpn_record(&mut conn, &node).await?;
    let vpn: Vec<(String, String)> = conn.hgetall(wire::cluster_vpn()).await?;
    let net = field(&vpn, cluster_vpn_field::NETWORK)
        .map(Ipv4Net::parse)
        .transpose()
        .map_err(|e| anyhow::anyhow!("{}: {e}", wire::cluster_vpn()))?
        .context("cluster/vpn has no network: run agentctl cluster create again")?;
    let existing = tokens(&mut conn).await?;
    let live: Vec<String> = existing.iter().map(|(id, _)| id.clone()).collect();
    sweep_expired_users(&mut conn, &live).await?;

    // The token's address: the highest host address no node and no live token uses (nodes take
    // theirs from the bottom).
    let mut used: Vec<Ipv4Addr> = existing
        .iter()
        .filter_map(|(_, r)| field(r, join_field::ADDRESS)?.parse().ok())
        .collect();
    let mut scan: redis::AsyncIter<String> = conn.scan_match(wire::node_vpn_pattern()).await?;
    let mut vpn_keys = Vec::new();
    while let Some(k) = scan.next_item().await {
        vpn_keys.push(k?);
    }
    drop(scan);
    for k in vpn_keys {
        let a: Option<String> = conn.hget(&k, wire::vpn_field::ADDRESS).await?;
        used.extend(a.and_then(|a| a.parse::<Ipv4Addr>().ok()));
    }
    let hosts: Vec<Ipv4Addr> = net.hosts().collect();
    let join_address = hosts
        .iter()
        .rev()
        .find(|a| !used.contains(a))
        .copied()
        .context("no VPN address left for a join token")?;

    let mut raw = [0u8; 4 + 24];
    getrandom::fill(&mut raw).map_err(|e| anyhow::anyhow!("no random numbers: {e}"))?;
    let id = format!(
        "{:08x}",
        u32::from_be_bytes(raw[..4].try_into().expect("4 bytes"))
    );
    let private = wireguard_control::Key::generate_private();
    let public = private.get_public();
    let leader_key = base64::engine::general_purpose::STANDARD
        .decode(&me.public_key)
        .ok()
        .and_then(|k| <[u8; 32]>::try_from(k).ok())
        .context("the leader's public key is not a WireGuard key")?;
    let token = JoinToken {
        id: id.clone(),
        secret: raw[4..].try_into().expect("24 bytes"),
        private_key: private.0,
        leader_public_key: leader_key,
        leader_address: me.address,
        join_address,
        prefix: net.prefix,
    };
    let expires = now_secs() + args.expires.as_secs();
    let admit = EventName::new(wire::ADMIT_EVENT).expect("a valid event name");
    let mut setuser = redis::cmd("ACL");
    setuser
        .arg("SETUSER")
        .arg(wire::join_acl_user(&id))
        .arg(redis_acl::join_rules(&id, &node, &admit))
        .arg(format!(">{}", token.password()));
    let _: () = setuser
        .query_async(&mut conn)
        .await
        .context("creating the token's ACL user")?;
    let key = wire::join_token(&id);
    let _: () = redis::pipe()
        .hset(&key, join_field::PUBLIC_KEY, public.to_base64())
        .hset(&key, join_field::ADDRESS, join_address.to_string())
        .hset(&key, join_field::EXPIRES, expires)
        .hset(&key, join_field::USES_LEFT, args.uses)
        .hset(&key, join_field::CREATED, now_secs())
        .expire_at(&key, expires as i64)
        .query_async(&mut conn)
        .await?;
    if redis_acl::save_acl(&mut conn).await? != redis_acl::Persistence::Saved {
        eprintln!("warning: Redis has no aclfile: the token's user is lost at its next restart");
    }
    // The leader's interface takes the token's key as a peer.
    sync_peers(&node).context("the leader's interface did not take the token's key")?;
    eprintln!(
        "join token {id}: valid for {} node(s) until {} (printed once; the leader keeps only a hash)",
        args.uses,
        humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(expires))
    );
    println!("{}", token.encode());
    Ok(0)
}

async fn status(redis: &RedisArgs, _args: StatusArgs) -> Result<i32> {
    let mut conn = admin(redis).await?;
    let leader: Option<String> = conn.get(wire::leader()).await?;
    let Some(leader) = leader else {
        println!("cluster:  none (agentctl cluster create makes one)");
        return Ok(0);
    };
    let vpn: Vec<(String, String)> = conn.hgetall(wire::cluster_vpn()).await?;
    println!("leader:   {leader}");
    match crate::sentinel::view().await {
        Some(v) => println!("sentinel: {v}"),
        None => println!("sentinel: none answers on this node"),
    }
    println!(
        "network:  {} (UDP port {})",
        field(&vpn, cluster_vpn_field::NETWORK).unwrap_or("?"),
        field(&vpn, cluster_vpn_field::PORT).unwrap_or("?")
    );
    let mut scan: redis::AsyncIter<String> = conn.scan_match(wire::node_vpn_pattern()).await?;
    let mut keys = Vec::new();
    while let Some(k) = scan.next_item().await {
        keys.push(k?);
    }
    drop(scan);
    keys.sort();
    println!("nodes:");
    for k in keys {
        let Some(name) = wire::node_of_vpn_key(&k) else {
            continue;
        };
        let rec: Vec<(String, String)> = conn.hgetall(&k).await?;
        match wire::VpnRecord::parse(|f| field(&rec, f)) {
            Ok(r) => println!(
                "  {name:<16} {:<15} endpoint {} ({}){}",
                r.address,
                r.endpoint,
                r.backend,
                if name == leader { ", leader" } else { "" }
            ),
            Err(e) => println!("  {name:<16} bad record: {e}"),
        }
    }
    let toks = tokens(&mut conn).await?;
    if toks.is_empty() {
        println!("tokens:   none");
    } else {
        println!("tokens:");
        for (id, rec) in toks {
            let expires = field(&rec, join_field::EXPIRES)
                .and_then(|e| e.parse::<u64>().ok())
                .map(|e| {
                    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(e))
                        .to_string()
                })
                .unwrap_or_else(|| "?".into());
            println!(
                "  {id}  {} use(s) left, expires {expires}",
                field(&rec, join_field::USES_LEFT).unwrap_or("?")
            );
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_is_bounded() {
        assert!(parse_expiry("30s").is_err());
        assert!(parse_expiry("8days").is_err());
        assert_eq!(parse_expiry("2h").unwrap(), Duration::from_secs(7200));
    }
}
