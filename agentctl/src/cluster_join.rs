//! `agentctl cluster join`: a node joins a cluster with a token — a preflight that changes nothing,
//! then steps that are each safe to run again, so a join killed at any point completes when the
//! same command is run again, and `--abort` undoes one that will not.
//!
//! Before it is a member the node reaches the leader through a temporary WireGuard interface
//! with the token's own key (the leader has that key as a peer while the token lives) and logs
//! in to the leader's Redis as the token's ACL user, which may only write its request and read
//! the answer. The leader's `cluster.admit` event answers; the passwords in the answer are
//! encrypted to an age identity this node made for the join. Where the join stands is kept in
//! `/var/lib/agent/cluster/join.json` (0600: it holds the token until the join ends).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use agent_redis::{Credentials, Password, Target};
use anyhow::{bail, Context, Result};
use core_events::cluster::{
    self as wire, join_field, join_reply_field, join_request_field, vpn_field, JoinSecrets,
    JoinToken, LocalVpn, VPN_ENV,
};
use core_events::{AgentKind, AgentName, EventName, Prefix};
use redis::aio::MultiplexedConnection;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use crate::cluster::{
    admin, field, node_creds, node_name, now_secs, parse_endpoint, vpn_tool, write_private,
    JoinArgs,
};
use crate::conn::RedisArgs;
use crate::fail::{fail, invalid};

/// Where the join in progress is recorded.
const STATE_DIR: &str = "/var/lib/agent/cluster";
/// The temporary interface that carries the join (the token's key).
const JOIN_INTERFACE: &str = "wg-agent-join";
/// The leader's Redis port over the VPN.
const REDIS_PORT: u16 = 6379;
/// Largest clock difference with the leader that a join accepts (token expiry, TTLs, journals).
const MAX_CLOCK_SKEW: u64 = 60;
/// How long the leader may take to answer the request (its cluster.admit run).
const ADMIT_WAIT: Duration = Duration::from_secs(90);
/// How long a first WireGuard handshake and a Redis answer through it may take.
const TUNNEL_WAIT: Duration = Duration::from_secs(30);
/// Test hook: end the process (SIGKILL-like, no clean-up) right after the named step, to prove a
/// rerun completes. Never set in production.
const CRASH_AFTER_ENV: &str = "AGENT_JOIN_CRASH_AFTER";

/// The steps, in order; the state file names the last one done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Step {
    Started,
    Requested,
    Admitted,
    Switched,
    Joined,
}

impl Step {
    fn name(self) -> &'static str {
        match self {
            Step::Started => "started",
            Step::Requested => "requested",
            Step::Admitted => "admitted",
            Step::Switched => "switched",
            Step::Joined => "joined",
        }
    }
}

/// What the state file holds.
#[derive(Serialize, Deserialize)]
struct State {
    step: Step,
    node: String,
    token: String,
    leader_endpoint: SocketAddr,
    endpoint: SocketAddr,
    port: u16,
    interface: String,
    backend: String,
    /// The join's age identity (`AGE-SECRET-KEY-1…`): the answer is encrypted to it.
    identity: String,
    nonce: String,
    /// The leader's answer, once admitted.
    address: Option<Ipv4Addr>,
    leader: Option<String>,
    secrets: Option<String>,
}

fn state_path() -> PathBuf {
    Path::new(STATE_DIR).join("join.json")
}

fn token_key_path() -> PathBuf {
    Path::new(STATE_DIR).join("join.key")
}

impl State {
    fn load() -> Result<Option<State>> {
        match std::fs::read(state_path()) {
            Ok(b) => Ok(Some(serde_json::from_slice(&b).with_context(|| {
                format!(
                    "{} is damaged: agentctl cluster join --abort starts over",
                    state_path().display()
                )
            })?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", state_path().display())),
        }
    }

    fn save(&mut self, step: Step) -> Result<()> {
        self.step = step;
        let text = serde_json::to_string_pretty(self).expect("state serializes");
        write_private(&state_path(), &text)?;
        println!(
            "step:     {} done ({:.1} s)",
            step.name(),
            started().elapsed().as_secs_f64()
        );
        if std::env::var(CRASH_AFTER_ENV).as_deref() == Ok(step.name()) {
            eprintln!(
                "{CRASH_AFTER_ENV}={}: stopping here (test hook)",
                step.name()
            );
            std::process::abort();
        }
        Ok(())
    }
}

/// When this command started (the steps print their time since).
fn started() -> Instant {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *START.get_or_init(Instant::now)
}

fn random_hex(n: usize) -> Result<String> {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("no random numbers: {e}"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn read_token(arg: &str) -> Result<JoinToken> {
    let text = if arg == "-" {
        let mut t = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin().take(4096), &mut t)
            .context("cannot read the token from stdin")?;
        t
    } else {
        arg.to_string()
    };
    JoinToken::decode(&text).map_err(|e| invalid(e.to_string()))
}

use std::io::Read as _;

fn b64(key: &[u8; 32]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(key)
}

/// Brings up the temporary interface to the leader with the token's key.
fn join_interface_up(token: &JoinToken, leader: SocketAddr, backend: &str) -> Result<()> {
    let key = wireguard_control::Key(token.private_key);
    write_private(&token_key_path(), &format!("{}\n", key.to_base64()))?;
    vpn_tool(&[
        "up",
        "--interface",
        JOIN_INTERFACE,
        "--address",
        &format!("{}/{}", token.join_address, token.prefix),
        "--port",
        "0",
        "--key-file",
        &token_key_path().to_string_lossy(),
        "--backend",
        backend,
        "--peer",
        &format!(
            "{},{leader},{}/32",
            b64(&token.leader_public_key),
            token.leader_address
        ),
    ])?;
    Ok(())
}

fn join_interface_down() {
    let _ = vpn_tool(&["down", "--interface", JOIN_INTERFACE]);
    let _ = std::fs::remove_file(token_key_path());
}

/// A connection to the leader's Redis over the VPN, retried while the first handshake happens.
async fn leader_redis(address: Ipv4Addr, creds: Credentials) -> Result<MultiplexedConnection> {
    let target = Target::new(&format!("redis://{address}:{REDIS_PORT}"), Some(creds))?;
    let deadline = Instant::now() + TUNNEL_WAIT;
    loop {
        match target.connection().await {
            Ok(c) => return Ok(c),
            Err(e) if agent_redis::class::is_denied(&e) => return Err(fail(
                65,
                "the leader refuses the token (unknown, revoked or expired): ask for a new one \
                     with agentctl cluster token",
            )),
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => {
                return Err(fail(
                    1,
                    format!(
                        "the leader's Redis at {address}:{REDIS_PORT} does not answer through the \
                         VPN ({e}). Either the leader no longer knows the token (it expired more \
                         than a sync ago, or was revoked: ask for a new one with agentctl \
                         cluster token), or its endpoint is unreachable (UDP port open between \
                         the nodes? the leader's Redis running?)"
                    ),
                ))
            }
        }
    }
}

fn join_credentials(token: &JoinToken) -> Credentials {
    Credentials {
        username: Some(wire::join_acl_user(&token.id)),
        password: Password::from_existing(token.password()),
    }
}

/// The leader's version from its heartbeat (`{"version": …}`).
async fn leader_version(
    conn: &mut MultiplexedConnection,
    leader: &AgentName,
) -> Result<Option<String>> {
    let beat: Option<String> = conn.get(Prefix::node(leader.clone()).heartbeat()).await?;
    Ok(beat
        .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
        .and_then(|v| v.get("version")?.as_str().map(String::from)))
}

fn major_minor(v: &str) -> &str {
    match v.match_indices('.').nth(1) {
        Some((i, _)) => &v[..i],
        None => v,
    }
}

/// The checks against the leader, through the join interface (already up).
async fn preflight_leader(
    conn: &mut MultiplexedConnection,
    token: &JoinToken,
    node: &AgentName,
    resuming: bool,
) -> Result<AgentName> {
    let rec: Vec<(String, String)> = conn.hgetall(wire::join_token(&token.id)).await?;
    if rec.is_empty() {
        return Err(fail(65, format!("token {} has expired", token.id)));
    }
    let left: u64 = field(&rec, join_field::USES_LEFT)
        .and_then(|u| u.parse().ok())
        .unwrap_or(0);
    if left == 0 && !resuming {
        return Err(fail(65, format!("token {} is used up", token.id)));
    }
    let (secs, _micros): (u64, u64) = redis::cmd("TIME").query_async(conn).await?;
    let skew = secs.abs_diff(now_secs());
    if skew > MAX_CLOCK_SKEW {
        return Err(fail(
            65,
            format!(
                "this node's clock is {skew} s off the leader's (at most {MAX_CLOCK_SKEW} s): \
                 set it right (systemd-timesyncd, chrony) and run the join again"
            ),
        ));
    }
    let leader: Option<String> = conn.get(wire::leader()).await?;
    let leader = match leader {
        Some(l) => AgentName::new(&l).map_err(|e| anyhow::anyhow!("cluster/leader {l:?}: {e}"))?,
        None => bail!("the leader's Redis names no leader (cluster/leader)"),
    };
    let mine = env!("CARGO_PKG_VERSION");
    match leader_version(conn, &leader).await? {
        Some(v) if major_minor(&v) != major_minor(mine) => {
            return Err(fail(
                65,
                format!("the leader runs version {v}, this node {mine}: upgrade one of them first"),
            ))
        }
        Some(_) => {}
        None => {
            return Err(fail(
                65,
                format!("the leader's node-agent ({leader}) is not running: start it first"),
            ))
        }
    }
    let kind: Option<String> = conn
        .hget(core_events::keys::agent_registry(), node.as_str())
        .await?;
    if kind
        .as_deref()
        .is_some_and(|k| k != AgentKind::Node.as_str())
    {
        return Err(fail(
            65,
            format!(
                "the name {node} is a module's in this cluster: join under another name (--node)"
            ),
        ));
    }
    if node == &leader {
        return Err(fail(
            65,
            format!("{node} is the leader's name: join under another name (--node)"),
        ));
    }
    let existing: Option<String> = conn
        .hget(wire::node_vpn(node), vpn_field::PUBLIC_KEY)
        .await?;
    if let Some(k) = existing {
        let mine = std::fs::read_to_string("/etc/agent/vpn.key").ok();
        let same = mine
            .and_then(|m| wireguard_control::Key::from_base64(m.trim()).ok())
            .is_some_and(|m| m.get_public().to_base64() == k);
        if !same {
            return Err(fail(
                65,
                format!("a node named {node} is already a member: remove it first (agentctl cluster remove-node {node}) or join under another name (--node)"),
            ));
        }
    }
    Ok(leader)
}

/// The local checks: in no cluster, no modules, the port free, Sentinel installed.
async fn preflight_local(
    local: &mut MultiplexedConnection,
    node: &AgentName,
    port: u16,
    interface: &str,
) -> Result<()> {
    crate::sentinel::check_installed().map_err(|e| fail(69, format!("{e:#}")))?;
    if let Some(v) = crate::cluster::local_vpn() {
        return Err(fail(
            78,
            format!(
                "this node is already in a cluster ({VPN_ENV}: VPN address {}): nothing was changed",
                v.address
            ),
        ));
    }
    let leader: Option<String> = local.get(wire::leader()).await?;
    if let Some(l) = leader {
        return Err(fail(
            78,
            format!("this node's Redis belongs to a cluster led by {l}"),
        ));
    }
    let modules: Vec<String> = local.hkeys(Prefix::node(node.clone()).modules()).await?;
    if !modules.is_empty() {
        return Err(fail(
            78,
            format!(
                "modules are installed on this node ({}): a joining node must have none (its Redis \
                 becomes a copy of the leader's); remove them or join another node",
                modules.join(", ")
            ),
        ));
    }
    let iface_exists = Path::new("/sys/class/net").join(interface).exists();
    if !iface_exists {
        if let Err(e) = std::net::UdpSocket::bind(("0.0.0.0", port)) {
            return Err(fail(
                65,
                format!("UDP port {port} is taken on this node ({e}): choose another with --port"),
            ));
        }
    }
    Ok(())
}

pub async fn join(redis: &RedisArgs, args: JoinArgs) -> Result<i32> {
    if !nix::unistd::geteuid().is_root() {
        return Err(fail(
            1,
            "cluster join configures the network and Redis: run it as root",
        ));
    }
    started();
    let node = node_name(args.node.clone())?;
    if args.abort {
        return abort(redis, &node).await;
    }
    let token = read_token(args.token.as_deref().expect("required by clap"))?;
    let leader_endpoint = parse_endpoint(
        args.leader.as_deref().expect("required"),
        wire::DEFAULT_PORT,
    )?;
    let endpoint = parse_endpoint(args.endpoint.as_deref().expect("required"), args.port)?;
    let mut state = match State::load()? {
        Some(s) if JoinToken::decode(&s.token).map(|t| t.id) != Ok(token.id.clone()) => {
            return Err(fail(
                78,
                "another join is under way (another token): run it again with its token, or \
                 agentctl cluster join --abort",
            ))
        }
        Some(s) => {
            println!("resuming the join (last step done: {})", s.step.name());
            s
        }
        None => {
            if let Some(v) = crate::cluster::local_vpn() {
                if v.leader.is_some() {
                    println!("this node is already a member of a cluster (VPN address {}): nothing to do", v.address);
                    return Ok(0);
                }
            }
            State {
                step: Step::Started,
                node: node.to_string(),
                token: token.encode(),
                leader_endpoint,
                endpoint,
                port: args.port,
                interface: args.interface.clone(),
                backend: args.backend.as_str().to_string(),
                identity: module_secrets::Identity::generate()
                    .to_secret_string()
                    .to_string(),
                nonce: random_hex(16)?,
                address: None,
                leader: None,
                secrets: None,
            }
        }
    };
    if state.node != node.as_str() {
        bail!("the join under way is for node {}, not {node}", state.node);
    }

    // Preflight: every run, before anything changes (a resumed join past the request skips what
    // no longer holds once it has started, like "in no cluster").
    if state.step < Step::Admitted {
        let mut local = admin(redis).await?;
        if state.step == Step::Started {
            preflight_local(&mut local, &node, args.port, &args.interface).await?;
        }
        join_interface_up(&token, state.leader_endpoint, &state.backend)?;
        let checked = async {
            let mut conn = leader_redis(token.leader_address, join_credentials(&token)).await?;
            let leader =
                preflight_leader(&mut conn, &token, &node, state.step > Step::Started).await?;
            Ok::<_, anyhow::Error>((conn, leader))
        }
        .await;
        let (mut conn, leader) = match checked {
            Ok(c) => c,
            Err(e) => {
                join_interface_down();
                if state.step == Step::Started {
                    let _ = std::fs::remove_file(state_path());
                }
                return Err(e);
            }
        };
        println!(
            "preflight: token {} valid, leader {leader} answers, clocks and versions agree",
            token.id
        );
        if args.check {
            join_interface_down();
            println!("preflight passed; nothing was changed");
            return Ok(0);
        }

        // 1. The request.
        let public_key = vpn_tool(&["key"])?;
        let identity = module_secrets::Identity::parse(&state.identity)
            .map_err(|e| anyhow::anyhow!("the join's identity: {e}"))?;
        // A nonce of this attempt: an answer to an earlier attempt is not taken for this one's.
        state.nonce = random_hex(16)?;
        state.save(Step::Started)?;
        let request = wire::join_request(&token.id, &node);
        let expires: u64 = {
            let e: Option<String> = conn
                .hget(wire::join_token(&token.id), join_field::EXPIRES)
                .await?;
            e.and_then(|e| e.parse().ok()).unwrap_or(now_secs() + 3600)
        };
        let _: () = redis::pipe()
            .hset(&request, join_request_field::NONCE, &state.nonce)
            .hset(&request, join_request_field::PUBLIC_KEY, &public_key)
            .hset(
                &request,
                join_request_field::ENDPOINT,
                state.endpoint.to_string(),
            )
            .hset(
                &request,
                join_request_field::BACKEND,
                backend_in_use(&state.backend),
            )
            .hset(
                &request,
                join_request_field::VERSION,
                env!("CARGO_PKG_VERSION"),
            )
            .hset(
                &request,
                join_request_field::RECIPIENT,
                identity.recipient().to_string(),
            )
            .expire_at(&request, expires as i64)
            .query_async(&mut conn)
            .await
            .context("writing the join request")?;
        let admit = EventName::new(wire::ADMIT_EVENT).expect("valid event name");
        let receivers: i64 = conn
            .publish(
                core_events::keys::event_channel(&leader, &admit),
                format!("{} {node}", token.id),
            )
            .await
            .context("asking the leader to admit this node")?;
        if receivers == 0 {
            join_interface_down();
            return Err(fail(1, format!("the leader's node-agent ({leader}) is not listening: start it and run the join again")));
        }
        state.save(Step::Requested)?;

        // The answer.
        let reply_key = wire::join_reply(&token.id, &node);
        let deadline = Instant::now() + ADMIT_WAIT;
        let reply = loop {
            let r: Vec<(String, String)> = conn.hgetall(&reply_key).await?;
            if field(&r, join_reply_field::NONCE) == Some(state.nonce.as_str()) {
                break r;
            }
            if Instant::now() > deadline {
                join_interface_down();
                return Err(fail(
                    1,
                    format!(
                        "the leader did not answer in {} s: see its journal (agentctl journal node/{leader}) and run the join again",
                        ADMIT_WAIT.as_secs()
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        if let Some(why) = field(&reply, join_reply_field::REFUSED) {
            join_interface_down();
            let _ = std::fs::remove_file(state_path());
            return Err(fail(65, format!("the leader refused the join: {why}")));
        }
        let address: Ipv4Addr = field(&reply, join_reply_field::ADDRESS)
            .and_then(|a| a.parse().ok())
            .context("the leader's answer has no address")?;
        state.address = Some(address);
        state.leader = Some(leader.to_string());
        state.secrets = field(&reply, join_reply_field::SECRETS).map(String::from);
        state.save(Step::Admitted)?;
    }

    // 2. The switch: this node's own interface, its Redis a replica of the leader's.
    let leader = AgentName::new(state.leader.as_deref().context("no leader in the state")?)?;
    let address = state.address.context("no address in the state")?;
    let identity = module_secrets::Identity::parse(&state.identity)
        .map_err(|e| anyhow::anyhow!("the join's identity: {e}"))?;
    let sealed = state
        .secrets
        .as_deref()
        .context("no secrets in the state")?;
    let secrets: JoinSecrets = {
        let plain = module_secrets::decrypt(sealed.as_bytes(), &identity)
            .map_err(|e| anyhow::anyhow!("cannot decrypt the leader's answer: {e}"))?;
        serde_json::from_slice(plain.expose()).context("the leader's answer is malformed")?
    };
    if let Some(edge_identity) = &secrets.edge_identity {
        keep_cluster_key("edge", edge_identity, &::edge::store::identity_path())?;
    }
    if let Some(backup_identity) = &secrets.backup_identity {
        keep_cluster_key("backup", backup_identity, &::backup::repo::identity_path())?;
    }
    if state.step < Step::Switched {
        join_interface_down();
        let vpn = LocalVpn {
            address,
            prefix: token.prefix,
            port: state.port,
            interface: state.interface.clone(),
            backend: state.backend.clone(),
            endpoint: state.endpoint.to_string(),
            leader: Some(token.leader_address),
        };
        write_private(Path::new(VPN_ENV), &vpn.text())?;
        crate::cluster::start_vpn_unit()?;
        // The leader as the first peer; `vpn sync` makes the rest once Redis has the records.
        vpn_tool(&[
            "up",
            "--from-config",
            "--peer",
            &format!(
                "{},{},{}/32",
                b64(&token.leader_public_key),
                state.leader_endpoint,
                token.leader_address
            ),
        ])?;
        // The leader answers as this node's user over the VPN: its passwords work.
        let node_user = core_events::keys::acl_user(AgentKind::Node, &node);
        let node_creds_value = Credentials {
            username: Some(node_user.clone()),
            password: Password::from_existing(&secrets.node_password),
        };
        let mut at_leader = leader_redis(token.leader_address, node_creds_value.clone()).await?;
        let _: String = redis::cmd("PING").query_async(&mut at_leader).await?;

        // The same users on this node's Redis, with the cluster's passwords.
        let mut local = admin(redis).await?;
        let admin_user = core_events::keys::ACL_ADMIN_USER;
        let mut set_admin = redis::cmd("ACL");
        set_admin
            .arg("SETUSER")
            .arg(admin_user)
            .arg("resetpass")
            .arg(format!(">{}", secrets.admin_password));
        let _: () = set_admin.query_async(&mut local).await?;
        let mut set_node = redis::cmd("ACL");
        set_node
            .arg("SETUSER")
            .arg(&node_user)
            .arg(redis_acl::agent_rules(AgentKind::Node, &node))
            .arg(format!(">{}", secrets.node_password));
        let _: () = set_node.query_async(&mut local).await?;
        let _ = redis_acl::save_acl(&mut local).await;
        Credentials {
            username: Some(admin_user.to_string()),
            password: Password::from_existing(&secrets.admin_password),
        }
        .write(&crate::conn::default_admin_credentials(), None)?;
        node_creds_value.write(Path::new(&node_creds()), None)?;

        // Replica of the leader, over the VPN, as this node's user; live, then in the file.
        crate::cluster::listen_on_vpn(&mut local, address).await?;
        for (k, v) in [
            ("masteruser", node_user.as_str()),
            ("masterauth", secrets.node_password.as_str()),
        ] {
            let _: () = redis::cmd("CONFIG")
                .arg("SET")
                .arg(k)
                .arg(v)
                .query_async(&mut local)
                .await?;
        }
        // node-agent stops while its Redis turns into a replica (its blocked queue read would be
        // cut off); it starts again below, onto the leader.
        let _ = Command::new("systemctl")
            .args(["stop", "node-agent.service"])
            .status();
        let _: () = redis::cmd("REPLICAOF")
            .arg(token.leader_address.to_string())
            .arg(REDIS_PORT)
            .query_async(&mut local)
            .await?;
        crate::node::rewrite_conf_for_vpn(None).context("updating Redis's configuration file")?;
        wait_in_sync(&mut local).await?;
        println!("redis:    a replica of {leader}'s, in sync");
        crate::sentinel::configure(
            &mut local,
            &node,
            address,
            secrets.sentinel_password.as_deref(),
        )
        .await?;
        let restart = Command::new("systemctl")
            .args(["restart", "node-agent.service"])
            .status();
        if !matches!(restart, Ok(s) if s.success()) {
            bail!("cannot restart node-agent onto the leader");
        }
        state.save(Step::Switched)?;
    }

    // 3. The node's own cluster.join event, on the leader: the full mesh.
    let shared = redis.load()?;
    let mut con = shared.manager().await?;
    let event = EventName::new(wire::JOIN_EVENT).expect("valid event name");
    let code = crate::run::queue_and_follow(
        &shared,
        &mut con,
        &Prefix::node(node.clone()),
        &event,
        leader.as_str(),
        &crate::run::Follow::to_end(300),
    )
    .await?;
    if code != 0 {
        return Err(fail(
            1,
            format!(
                "the node's {} event failed: see agentctl journal node/{node}; run the join again",
                wire::JOIN_EVENT
            ),
        ));
    }
    // What the join leaves on the leader: this node's request and answer go. A used-up token
    // stays until it expires, so that another node trying it is told "used up" rather than
    // getting no answer at all (WireGuard does not answer a key it does not know).
    let mut admin_con = shared.manager().await?;
    let _: () = redis::pipe()
        .del(wire::join_request(&token.id, &node))
        .del(wire::join_reply(&token.id, &node))
        .query_async(&mut admin_con)
        .await?;
    let _ = std::fs::remove_file(state_path());
    let _ = std::fs::remove_dir(STATE_DIR);
    println!(
        "joined: {node} is a member of {leader}'s cluster, VPN address {address} ({:.1} s)",
        started().elapsed().as_secs_f64()
    );
    Ok(0)
}

/// What the request says of the backend: the one `auto` would choose here.
fn backend_in_use(asked: &str) -> &'static str {
    match asked {
        "kernel" => "kernel",
        "userspace" => "userspace",
        _ if Path::new("/sys/module/wireguard").exists() => "kernel",
        _ => "userspace",
    }
}

/// Waits until the local replica's link to the leader is up and the first sync is done.
async fn wait_in_sync(local: &mut MultiplexedConnection) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(local)
            .await?;
        let up = info.lines().any(|l| l.trim() == "master_link_status:up");
        let syncing = info
            .lines()
            .any(|l| l.trim() == "master_sync_in_progress:1");
        if up && !syncing {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the local Redis did not get in sync with the leader in 60 s:\n{info}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Undoes a join that did not finish: on the leader what it made for this node (when this node
/// got that far), then here the interfaces, the replica and the settings.
async fn abort(redis: &RedisArgs, node: &AgentName) -> Result<i32> {
    let state = State::load()?;
    if state.is_none() && crate::cluster::local_vpn().is_none() {
        println!("no join under way and no cluster here: nothing to undo");
        return Ok(0);
    }
    if let Some(s) = &state {
        if s.step >= Step::Admitted {
            if let Ok(token) = JoinToken::decode(&s.token) {
                match remove_at_leader(&token, node, s).await {
                    Ok(()) => println!("leader:   {node}'s record and ACL user removed"),
                    Err(e) => eprintln!("warning: cannot clean up on the leader ({e:#}): run agentctl cluster remove-node {node} there"),
                }
            }
        }
    }
    join_interface_down();
    crate::cluster_leave::on_its_own(redis, node).await?;
    let _ = std::fs::remove_file(state_path());
    let _ = std::fs::remove_dir(STATE_DIR);
    let _ = Command::new("systemctl")
        .args(["restart", "node-agent.service"])
        .status();
    println!("aborted: this node is on its own again");
    Ok(0)
}

async fn remove_at_leader(token: &JoinToken, node: &AgentName, s: &State) -> Result<()> {
    let identity =
        module_secrets::Identity::parse(&s.identity).map_err(|e| anyhow::anyhow!("{e}"))?;
    let sealed = s.secrets.as_deref().context("no secrets")?;
    let plain = module_secrets::decrypt(sealed.as_bytes(), &identity)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let secrets: JoinSecrets = serde_json::from_slice(plain.expose())?;
    let admin = Credentials {
        username: Some(core_events::keys::ACL_ADMIN_USER.to_string()),
        password: Password::from_existing(&secrets.admin_password),
    };
    // Through whichever interface is up: the node's own (after the switch) or the join's.
    if crate::cluster::local_vpn().is_none() {
        join_interface_up(token, s.leader_endpoint, &s.backend)?;
    }
    let mut conn = leader_redis(token.leader_address, admin).await?;
    let _: () = redis::pipe()
        .del(wire::node_vpn(node))
        .del(wire::join_request(&token.id, node))
        .del(wire::join_reply(&token.id, node))
        .query_async(&mut conn)
        .await?;
    // Members that made the user already (their users.sync) drop it at their next sync.
    redis_acl::replicate::forget_agent(&mut conn, AgentKind::Node, node).await?;
    Ok(())
}

/// Keeps a cluster key from the leader's answer as this node's (`what`: "edge" →
/// `/etc/agent/edge.key` or AGENT_EDGE_IDENTITY, with which this node opens the certificates the
/// cluster stores; "backup" → `/etc/agent/backup.key` or AGENT_BACKUP_IDENTITY, the repositories'
/// passwords). A different key this node had before (gone with its old Redis data) is kept beside
/// it as `<file>.before-join`. Idempotent (a resumed join).
fn keep_cluster_key(what: &str, text: &str, path: &std::path::Path) -> Result<()> {
    let given = module_secrets::Identity::parse(text)
        .map_err(|e| anyhow::anyhow!("the leader's {what} key: {e}"))?;
    let file = module_secrets::KeyFile::new(path);
    if file.exists() {
        let have = file
            .load()
            .map_err(|e| anyhow::anyhow!("this node's {what} key {}: {e}", path.display()))?;
        if have.recipient().to_string() == given.recipient().to_string() {
            return Ok(());
        }
        let mut aside = path.to_path_buf().into_os_string();
        aside.push(".before-join");
        std::fs::rename(path, &aside)
            .with_context(|| format!("moving {} aside", path.display()))?;
        println!(
            "{:<9} this node's previous {what} key kept as {}",
            format!("{what}:"),
            std::path::Path::new(&aside).display()
        );
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    file.store(&given)
        .map_err(|e| anyhow::anyhow!("writing the {what} key {}: {e}", path.display()))?;
    println!(
        "{:<9} the cluster's {what} key kept in {}",
        format!("{what}:"),
        path.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_by_major_and_minor() {
        assert_eq!(major_minor("0.1.0"), "0.1");
        assert_eq!(major_minor("0.1.7+git3"), "0.1");
        assert_eq!(major_minor("1"), "1");
    }

    #[test]
    fn steps_are_ordered() {
        assert!(Step::Started < Step::Requested && Step::Requested < Step::Admitted);
        assert!(Step::Admitted < Step::Switched && Step::Switched < Step::Joined);
    }
}
