//! `agentctl node setup` and `agentctl node status`: a durable, locked-down node from a stock
//! Debian Redis, and the one screen that says whether it is one.
//!
//! Setup never edits Debian's own Redis configuration: it writes a file that includes Debian's and
//! overrides what the product needs (AOF, loopback, protected mode, an aclfile), and a systemd
//! drop-in that starts the server on that file. Everything is compared before it is written, so a
//! second run changes nothing and says so. Whatever can fail without changing anything (the Redis
//! service, the right to administer it) is checked before the first file is written.

use std::fmt::Write as _;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use core_events::{AgentName, Prefix};
use redis::aio::MultiplexedConnection;
use redis_acl::{DefaultPolicy, PasswordSource, Persistence, SetupOptions};
use systemd_client::{Bus, Systemd, UnitName};

use crate::conn::RedisArgs;
use crate::fail::{fail, invalid};
use crate::redis_admin::{connect_admin, short_hostname};

/// The node-agent's unit (systemd/node-agent.service).
const NODE_AGENT_UNIT: &str = "node-agent.service";
/// Marks the files setup owns: they are rewritten by the next run, never edited by hand.
const OWNED_HEADER: &str =
    "# Written by `agentctl node setup`: run it again to change this file, do not edit it.";
/// How long a restarted Redis may take to answer again (it loads its AOF first).
const REDIS_RESTART_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a running Redis may take to answer the first connection (a unit just started).
const REDIS_FIRST_TIMEOUT: Duration = Duration::from_secs(5);

pub const LONG_ABOUT: &str = "\
The node itself: make it durable and locked down (setup), show its state (status).";

pub const SETUP_AFTER_HELP: &str = "\
WHAT SETUP DOES (each only when it is not already so; a second run changes nothing):
  1. Redis durable: /etc/redis/agent.conf includes Debian's /etc/redis/redis.conf
     (left untouched) and sets appendonly yes, appendfsync everysec (or always),
     bind 127.0.0.1 -::1, protected-mode yes and an aclfile; a systemd drop-in
     (redis-server.service.d/50-agent.conf) starts Redis on it. AOF is switched
     on live first (CONFIG SET appendonly yes), so no key is lost by the restart.
  2. The security model: the ACL users of `agentctl redis setup` (agent-admin,
     node-NAME, the default user locked: every client authenticates), credentials
     0600 in /etc/agent. (A read-only default user would lose every transaction of
     the append-only file at each Redis restart: docs/SECURITY.md.)
  3. node-agent enabled and started, restarted onto new credentials.
With --redis valkey the files are /etc/valkey/agent.conf (including Debian's
/etc/valkey/valkey.conf) and valkey-server.service.d/50-agent.conf.
Nothing is written when Redis cannot be reached or refuses administration.

LOSS WINDOW:
  everysec: a Redis crash loses at most the last second of acknowledged writes
  (queued events included); always: none, at the cost of one fsync per write.
  See docs/PROTOCOL.md.

EXIT CODES:
  0   done (or nothing to do)
  1   failed: Redis unreachable or refusing administration, a file or unit
      could not be written or started; what was done is printed, a rerun goes on
  2   bad command line
  65  invalid node name

EXAMPLES:
  agentctl node setup
  agentctl node setup --appendfsync always
  agentctl node setup --redis valkey --node node1";

#[derive(Debug, Subcommand)]
pub enum NodeCmd {
    /// Make this node durable and secure: Redis AOF and loopback through a drop-in, the ACL
    /// users, node-agent enabled on its own credentials. Idempotent: prints what it changed and
    /// what was already in place.
    #[command(after_long_help = SETUP_AFTER_HELP)]
    Setup(SetupArgs),
    /// One screen for a bug report: Redis version and durability, ACL users, agent liveness,
    /// installed modules.
    Status(StatusArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Fsync {
    /// fsync once a second: at most a second of acknowledged writes lost in a crash.
    Everysec,
    /// fsync before every reply: nothing acknowledged is lost; slower writes.
    Always,
}

impl Fsync {
    fn as_str(self) -> &'static str {
        match self {
            Fsync::Everysec => "everysec",
            Fsync::Always => "always",
        }
    }
}

/// The Redis server of the node: Debian's `redis-server` or `valkey-server` package.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Flavour {
    /// Debian's redis-server (the default: see docs/SECURITY.md, "Redis or Valkey").
    Redis,
    /// Debian's valkey-server (protocol-compatible, BSD-licensed).
    Valkey,
}

#[derive(Debug, Args)]
pub struct SetupArgs {
    /// When the append-only file is fsynced. Default: what an earlier setup chose (a package
    /// upgrade reruns setup and keeps it), else everysec.
    #[arg(long, value_enum, value_name = "WHEN")]
    appendfsync: Option<Fsync>,

    /// The Redis server package. Default: the installed one that runs (or is enabled); with
    /// neither running, redis before valkey.
    #[arg(long = "redis", value_enum, value_name = "SERVER")]
    flavour: Option<Flavour>,

    /// This node's name: its ACL user is node-NAME. Default: the short hostname, like node-agent.
    #[arg(long, value_name = "NAME")]
    node: Option<String>,

    /// Directory of admin.env and redis.env (created 0700).
    #[arg(long, value_name = "DIR", default_value = "/etc/agent")]
    creds_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The node. Default: the short hostname.
    #[arg(long, value_name = "NAME")]
    node: Option<String>,
}

/// The installed Debian package (`agent VERSION`, the version naming the commit that built it), or
/// what the binary says of itself on a hand install.
fn package_version() -> String {
    let dpkg = std::process::Command::new("dpkg-query")
        .args(["-W", "-f", "${Status} ${Version}", "agent"])
        .stderr(std::process::Stdio::null())
        .output();
    match dpkg {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout);
            match text.strip_prefix("install ok installed ") {
                Some(v) => format!("agent {v}"),
                None => format!("agent ({})", text.trim()),
            }
        }
        _ => format!(
            "none (agentctl {} installed by hand)",
            env!("CARGO_PKG_VERSION")
        ),
    }
}

/// The `min-replicas-to-write` of the configuration file, if it has one.
fn chosen_min_replicas(conf: &Path) -> Option<usize> {
    let text = std::fs::read_to_string(conf).ok()?;
    text.lines()
        .find_map(|l| l.trim().strip_prefix("min-replicas-to-write "))
        .and_then(|v| v.trim().parse().ok())
}

/// The appendfsync of the configuration file an earlier setup wrote, if there is one.
fn chosen_fsync(conf: &Path) -> Option<Fsync> {
    let text = std::fs::read_to_string(conf).ok()?;
    text.lines()
        .find_map(|l| l.trim().strip_prefix("appendfsync "))
        .and_then(|v| Fsync::from_str(v.trim(), false).ok())
}

/// Where a Redis flavour's Debian package puts things.
struct Server {
    unit: &'static str,
    conf_dir: &'static str,
    debian_conf: &'static str,
    data_dir: &'static str,
    user: &'static str,
}

impl Server {
    fn of(flavour: Flavour) -> Server {
        match flavour {
            Flavour::Redis => Server {
                unit: "redis-server.service",
                conf_dir: "/etc/redis",
                debian_conf: "/etc/redis/redis.conf",
                data_dir: "/var/lib/redis",
                user: "redis",
            },
            Flavour::Valkey => Server {
                unit: "valkey-server.service",
                conf_dir: "/etc/valkey",
                debian_conf: "/etc/valkey/valkey.conf",
                data_dir: "/var/lib/valkey",
                user: "valkey",
            },
        }
    }

    fn agent_conf(&self) -> PathBuf {
        Path::new(self.conf_dir).join("agent.conf")
    }

    fn aclfile(&self) -> PathBuf {
        Path::new(self.data_dir).join("agent-users.acl")
    }

    fn dropin(&self) -> PathBuf {
        Path::new("/etc/systemd/system")
            .join(format!("{}.d", self.unit))
            .join("50-agent.conf")
    }

    fn vendor_unit(&self) -> Option<PathBuf> {
        ["/usr/lib/systemd/system", "/lib/systemd/system"]
            .iter()
            .map(|d| Path::new(d).join(self.unit))
            .find(|p| p.is_file())
    }
}

/// Runs one `agentctl node` command; returns the exit code.
pub fn main(redis: &RedisArgs, cmd: NodeCmd) -> Result<i32> {
    crate::runtime()?.block_on(async move {
        match cmd {
            NodeCmd::Setup(args) => setup(redis, args).await,
            NodeCmd::Status(args) => status(redis, args).await,
        }
    })
}

/// What setup reports, as it goes: "changed" and "in place" lines, and whether anything changed.
#[derive(Default)]
struct Report {
    any_change: bool,
}

impl Report {
    fn changed(&mut self, what: impl AsRef<str>) {
        println!("changed:  {}", what.as_ref());
        self.any_change = true;
    }

    fn in_place(&mut self, what: impl AsRef<str>) {
        println!("in place: {}", what.as_ref());
    }
}

fn node_name(arg: Option<String>) -> Result<AgentName> {
    let node = match arg {
        Some(n) => n,
        None => short_hostname()?,
    };
    AgentName::new(&node).map_err(|e| invalid(format!("node name {node:?}: {e}")))
}

/// The server to set up: the one asked for; else, of the installed ones, the one running (or
/// enabled), else Redis (the default) before Valkey.
async fn pick_server(systemd: &Systemd, arg: Option<Flavour>) -> Result<(Server, PathBuf)> {
    let candidates = match arg {
        Some(f) => vec![f],
        None => vec![Flavour::Redis, Flavour::Valkey],
    };
    let installed: Vec<(Server, PathBuf)> = candidates
        .iter()
        .filter_map(|f| {
            let server = Server::of(*f);
            server.vendor_unit().map(|u| (server, u))
        })
        .collect();
    let mut first = None;
    for (server, vendor) in installed {
        let state = systemd.status(&unit(server.unit)?).await?;
        if state.is_active() || state.unit_file_state.as_deref() == Some("enabled") {
            return Ok((server, vendor));
        }
        first.get_or_insert((server, vendor));
    }
    if let Some(found) = first {
        return Ok(found);
    }
    let wanted = match arg {
        Some(f) => format!("{} ({})", Server::of(f).unit, package_of(f)),
        None => "redis-server.service or valkey-server.service".into(),
    };
    Err(fail(
        1,
        format!(
            "no {wanted} unit is installed: apt-get install redis-server (or valkey-server), \
             then run agentctl node setup again; nothing was changed"
        ),
    ))
}

fn package_of(f: Flavour) -> &'static str {
    match f {
        Flavour::Redis => "apt-get install redis-server",
        Flavour::Valkey => "apt-get install valkey-server",
    }
}

/// The drop-in's `ExecStart=`: the vendor unit's, with Debian's configuration file replaced by
/// ours. Refuses a unit whose command line does not name Debian's file (not Debian's package, or
/// changed by hand): guessing a server command line could start Redis without its own settings.
fn exec_start_for(server: &Server, vendor_unit_text: &str) -> Result<String> {
    let line = vendor_unit_text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("ExecStart=") && l.contains(server.debian_conf));
    match line {
        Some(l) => Ok(l.replacen(
            server.debian_conf,
            &server.agent_conf().to_string_lossy(),
            1,
        )),
        None => bail!(
            "{}: no ExecStart= line names {}; is this Debian's package? Nothing was changed",
            server.unit,
            server.debian_conf
        ),
    }
}

/// The addresses Redis listens on: loopback, and the node's VPN address once it is in a cluster
/// (`agentctl cluster`'s vpn.env), so other nodes reach it over the VPN and nowhere else.
///
/// Protected mode refuses every client that is not on loopback while the `default` user has no
/// password; ours has one, so protected mode changes nothing for it, but a Redis set up before it
/// was locked would refuse the other nodes, replicas included. There the bind keeps Redis off every other network, and only nodes that WireGuard
/// admitted reach the VPN address.
fn bind_line(vpn: Option<std::net::Ipv4Addr>) -> String {
    match vpn {
        None => "# Loopback only until the node joins a cluster.\nbind 127.0.0.1 -::1\nprotected-mode yes"
            .into(),
        Some(a) => format!(
            "# Loopback and the cluster's VPN (agentctl cluster); protected mode would refuse the\n\
             # other nodes (docs/CLUSTER.md).\nbind 127.0.0.1 -::1 {a}\nprotected-mode no"
        ),
    }
}

/// Rewrites the configuration file an earlier setup wrote so that it binds the VPN address of
/// vpn.env too (`agentctl cluster`: the running server was told live). No file, no change.
pub(crate) fn rewrite_conf_for_vpn(min_replicas: Option<usize>) -> Result<()> {
    for flavour in [Flavour::Redis, Flavour::Valkey] {
        let server = Server::of(flavour);
        let conf = server.agent_conf();
        let Some(fsync) = chosen_fsync(&conf) else {
            continue;
        };
        let owner =
            std::fs::metadata(&conf).with_context(|| format!("cannot read {}", conf.display()))?;
        ensure_file(
            &conf,
            &agent_conf_text(&server, fsync, min_replicas),
            0o640,
            Some((owner.uid(), owner.gid())),
        )?;
    }
    Ok(())
}

/// On a node that joined a cluster: its Redis replicates the leader's over the VPN, logged in as
/// the node's own ACL user (the credentials node-agent uses).
///
/// On every member, the first node too: its user and password at whichever node leads (any may
/// become a replica in a failover), and `min-replicas-to-write 1` — a leader cut off from every
/// replica refuses writes (`agentctl cluster sentinel` lowers it to 0 while the cluster has fewer
/// than 3 nodes: docs/CLUSTER.md). Sentinel's `CONFIG REWRITE` may add to this file; a later
/// setup writes it anew from the node's settings, and Sentinel repoints the server again.
fn replica_lines(vpn: Option<&core_events::cluster::LocalVpn>, min_replicas: usize) -> String {
    let Some(vpn) = vpn else {
        return String::new();
    };
    let creds = agent_redis::Credentials::from_file(Path::new("/etc/agent/redis.env")).ok();
    let mut text = format!(
        "# In a cluster: no write without a replica in sync (agentctl cluster).\n\
         min-replicas-to-write {min_replicas}\n\
         min-replicas-max-lag {}\n",
        core_events::cluster::MIN_REPLICAS_MAX_LAG
    );
    if let Some(leader) = vpn.leader {
        let _ = writeln!(
            text,
            "# A replica of the leader's Redis over the VPN (agentctl cluster join).\n\
             replicaof {leader} 6379"
        );
    }
    if let Some(c) = creds {
        if let Some(u) = &c.username {
            let _ = writeln!(text, "masteruser {u}");
        }
        let _ = writeln!(text, "masterauth {}", c.password.expose());
    }
    text
}

fn agent_conf_text(server: &Server, fsync: Fsync, min_replicas: Option<usize>) -> String {
    let vpn = crate::cluster::local_vpn();
    let bind = bind_line(vpn.as_ref().map(|v| v.address));
    let min_replicas = min_replicas
        .or_else(|| chosen_min_replicas(&server.agent_conf()))
        .unwrap_or(1);
    let replica = replica_lines(vpn.as_ref(), min_replicas);
    format!(
        "{OWNED_HEADER}\n\
         # Debian's own configuration first; what follows overrides it (docs/SECURITY.md).\n\
         include {debian}\n\
         # Durable: every acknowledged write is in the append-only file (loss window: docs/PROTOCOL.md).\n\
         appendonly yes\n\
         appendfsync {fsync}\n\
         {bind}\n\
         # The ACL users of the security model (agentctl redis setup), saved by ACL SAVE.\n\
         aclfile {aclfile}\n\
         {replica}",
        debian = server.debian_conf,
        fsync = fsync.as_str(),
        aclfile = server.aclfile().display(),
    )
}

fn dropin_text(exec_start: &str) -> String {
    format!(
        "{OWNED_HEADER}\n\
         # Starts the server on agentctl's file, which includes Debian's.\n\
         [Service]\n\
         ExecStart=\n\
         {exec_start}\n\
         Restart=always\n\
         RestartSec=1\n"
    )
}

/// Writes `text` to `path` (atomically, `mode`, owned by `owner` when given) unless it already
/// holds exactly that; returns whether it wrote.
fn ensure_file(path: &Path, text: &str, mode: u32, owner: Option<(u32, u32)>) -> Result<bool> {
    let current = std::fs::read(path).ok();
    let meta = std::fs::metadata(path).ok();
    let same_owner = match (&meta, owner) {
        (Some(m), Some((u, g))) => m.uid() == u && m.gid() == g,
        _ => true,
    };
    let same_mode = meta
        .as_ref()
        .is_some_and(|m| m.permissions().mode() & 0o7777 == mode);
    if current.as_deref() == Some(text.as_bytes()) && same_owner && same_mode {
        return Ok(false);
    }
    let dir = path.parent().context("a file without a directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    std::io::Write::write_all(&mut tmp, text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))?;
    if let Some((u, g)) = owner {
        std::os::unix::fs::fchown(tmp.as_file(), Some(u), Some(g))
            .with_context(|| format!("cannot chown {}", path.display()))?;
    }
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(true)
}

fn user_ids(name: &str) -> Result<(u32, u32)> {
    let user = nix::unistd::User::from_name(name)
        .with_context(|| format!("cannot look up user {name}"))?
        .with_context(|| format!("no Unix user {name}: is the server's package installed?"))?;
    Ok((user.uid.as_raw(), user.gid.as_raw()))
}

fn unit(name: &str) -> Result<UnitName> {
    UnitName::new(name).map_err(|e| anyhow::anyhow!("unit {name}: {e}"))
}

async fn setup(redis: &RedisArgs, args: SetupArgs) -> Result<i32> {
    let node = node_name(args.node)?;
    if !nix::unistd::geteuid().is_root() {
        return Err(fail(
            1,
            "node setup configures Redis and systemd units: run it as root",
        ));
    }
    let systemd = Systemd::connect(Bus::System)
        .await
        .context("cannot reach systemd")?;
    let (server, vendor_unit) = pick_server(&systemd, args.flavour).await?;
    let vendor_text = std::fs::read_to_string(&vendor_unit)
        .with_context(|| format!("cannot read {}", vendor_unit.display()))?;
    let exec_start = exec_start_for(&server, &vendor_text)?;
    let redis_owner = user_ids(server.user)?;
    let redis_unit = unit(server.unit)?;
    let mut report = Report::default();

    // 1. A Redis that answers and lets us administer it, before anything is written.
    if !systemd.status(&redis_unit).await?.is_active() {
        // A Redis restarted several times in a few seconds (a purge, then this install) would
        // be refused with start-limit-hit; that counter says nothing about this start.
        systemd.reset_failed(&redis_unit).await?;
        systemd
            .start(&redis_unit)
            .await
            .with_context(|| format!("cannot start {}", server.unit))?;
        report.changed(format!("{} started", server.unit));
    }
    let opts = SetupOptions {
        default_policy: DefaultPolicy::Off,
        node: node.clone(),
        creds_dir: args.creds_dir.clone(),
    };
    let mut conn = wait_for_redis(redis, &opts.admin_creds_path(), REDIS_FIRST_TIMEOUT).await?;
    let appendonly = config_get(&mut conn, "appendonly").await.map_err(|e| {
        if !is_refusal(&e) {
            return e.context("nothing was changed");
        }
        e.context(
            "Redis refuses administration to this connection (were its ACL users changed by \
             hand?): put the agent-admin user's credentials in /etc/agent/admin.env or pass \
             --redis-credentials; nothing was changed",
        )
    })?;

    // 2. AOF on while Redis runs, so the restart onto the new file loads every key from it.
    if appendonly != "yes" {
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("appendonly")
            .arg("yes")
            .query_async::<()>(&mut conn)
            .await
            .context("CONFIG SET appendonly yes")?;
        wait_aof_rewritten(&mut conn).await?;
        report.changed("append-only file switched on (live, every key written to it)");
    }

    // 3. The aclfile: the users Redis has now, so that restarting onto it loses none.
    let aclfile = server.aclfile();
    if aclfile.exists() {
        report.in_place(format!("aclfile {}", aclfile.display()));
    } else {
        let mut text = String::new();
        for u in acl_list(&mut conn).await? {
            let _ = writeln!(text, "{u}");
        }
        ensure_file(&aclfile, &text, 0o640, Some(redis_owner))?;
        report.changed(format!("aclfile {} created", aclfile.display()));
    }

    // 4. Our configuration file and the unit's drop-in; Redis restarted onto them when changed.
    let conf = server.agent_conf();
    let fsync = args
        .appendfsync
        .or_else(|| chosen_fsync(&conf))
        .unwrap_or(Fsync::Everysec);
    let conf_changed = ensure_file(
        &conf,
        &agent_conf_text(&server, fsync, None),
        0o640,
        Some((0, redis_owner.1)),
    )?;
    say_file(
        &mut report,
        conf_changed,
        &conf,
        &format!(
            "appendonly yes, appendfsync {}, loopback, protected mode",
            fsync.as_str()
        ),
    );
    let dropin = server.dropin();
    let dropin_changed = ensure_file(&dropin, &dropin_text(&exec_start), 0o644, None)?;
    say_file(
        &mut report,
        dropin_changed,
        &dropin,
        &format!("{} runs on {}", server.unit, conf.display()),
    );
    if conf_changed || dropin_changed {
        drop(conn);
        systemd.daemon_reload().await?;
        systemd.reset_failed(&redis_unit).await?;
        systemd
            .restart(&redis_unit)
            .await
            .with_context(|| format!("cannot restart {} onto {}", server.unit, conf.display()))?;
        report.changed(format!(
            "{} restarted onto its new configuration",
            server.unit
        ));
        conn = wait_for_redis(redis, &opts.admin_creds_path(), REDIS_RESTART_TIMEOUT).await?;
    } else {
        report.in_place(format!("{} running on {}", server.unit, conf.display()));
    }

    // 5. The ACL users (idempotent: passwords in the credentials files are kept).
    let default_before = default_user_rules(&mut conn).await?;
    let done = redis_acl::setup_cluster(&mut conn, &opts)
        .await
        .context("setting up the ACL users")?;
    let mut new_node_password = false;
    for u in [&done.admin, &done.node] {
        match u.password {
            PasswordSource::Kept => report.in_place(format!(
                "ACL user {} (credentials {})",
                u.user,
                u.creds_path.display()
            )),
            PasswordSource::Generated => {
                new_node_password |= u.user == done.node.user;
                report.changed(format!(
                    "ACL user {} with a new password in {}",
                    u.user,
                    u.creds_path.display()
                ))
            }
        }
    }
    let default_policy =
        "default user locked (every client authenticates; Redis replays its AOF as it: docs/SECURITY.md)";
    if default_user_rules(&mut conn).await? == default_before {
        report.in_place(default_policy);
    } else {
        report.changed(default_policy);
    }
    if done.persistence != Persistence::Saved {
        bail!(
            "Redis did not save the ACL users to {} (ACL SAVE): they would be lost at its next \
             restart",
            aclfile.display()
        );
    }

    // Modules installed while Redis had no ACL users have none: their agents can no longer write.
    let modules: Vec<String> = redis::cmd("HKEYS")
        .arg(Prefix::node(node.clone()).modules())
        .query_async(&mut conn)
        .await
        .context("HKEYS of the node's modules")?;
    for id in modules {
        let Ok(name) = AgentName::new(&id) else {
            continue;
        };
        let user = redis_acl::agent_user(core_events::AgentKind::Module, &name);
        if !redis_acl::user_exists(&mut conn, &user).await? {
            eprintln!(
                "agentctl: warning: module {id} was installed before the ACL users and has no \
                 user {user}: run `agentctl redis add-agent module/{id} --creds \
                 ~{id}/.config/agent/redis.env`, then `systemctl --user -M {id}@ restart \
                 module-agent`"
            );
        }
    }

    // 6. node-agent: enabled, running, on the node user's current credentials.
    let agent_unit = unit(NODE_AGENT_UNIT)?;
    let enabled = systemd
        .enable(&agent_unit)
        .await
        .context("cannot enable node-agent.service")?;
    if enabled.changes.is_empty() {
        report.in_place("node-agent.service enabled");
    } else {
        report.changed("node-agent.service enabled");
    }
    let active = systemd.status(&agent_unit).await?.is_active();
    if !active {
        systemd.start(&agent_unit).await?;
        report.changed("node-agent.service started");
    } else if new_node_password {
        systemd.restart(&agent_unit).await?;
        report.changed("node-agent.service restarted onto its new credentials");
    } else {
        report.in_place("node-agent.service running");
    }
    if report.any_change {
        println!("node {node}: set up");
    } else {
        println!("node {node}: already set up, nothing changed");
    }
    Ok(0)
}

fn say_file(report: &mut Report, changed: bool, path: &Path, what: &str) {
    if changed {
        report.changed(format!("{} written ({what})", path.display()));
    } else {
        report.in_place(format!("{} ({what})", path.display()));
    }
}

/// Connects as the admin (or, on a fresh server, without credentials), retrying while the server
/// starts.
async fn wait_for_redis(
    redis: &RedisArgs,
    admin_creds: &Path,
    timeout: Duration,
) -> Result<MultiplexedConnection> {
    let deadline = Instant::now() + timeout;
    loop {
        let attempt = match connect_admin(redis, admin_creds).await {
            Ok(mut c) => {
                let pong: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut c).await;
                match pong {
                    Ok(_) => return Ok(c),
                    Err(e) if is_loading(&e) && Instant::now() < deadline => Ok(()),
                    Err(e) => Err(anyhow::Error::new(e).context("PING")),
                }
            }
            Err(e) => Err(e),
        };
        match attempt {
            Ok(()) => {}
            Err(e) if is_refusal(&e) => {
                return Err(e.context(
                    "Redis refuses this connection (were its ACL users changed by hand?): put \
                     the agent-admin user's credentials in /etc/agent/admin.env or pass \
                     --redis-credentials; nothing more was changed",
                ))
            }
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!(
                    "Redis did not answer for {} s (is {} the node's Redis?); nothing more was \
                     changed",
                    timeout.as_secs(),
                    mask(&redis.redis_url)
                )))
            }
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Redis answered, and refused the credentials or the command: waiting will not help.
fn is_refusal(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<redis::RedisError>())
        .any(agent_redis::is_denied)
}

/// `INFO section`: `name:value` lines.
async fn info(conn: &mut MultiplexedConnection, section: &str) -> Result<String> {
    redis::cmd("INFO")
        .arg(section)
        .query_async(conn)
        .await
        .with_context(|| format!("INFO {section}"))
}

/// The value of `name` in an `INFO` reply.
fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

fn is_loading(e: &redis::RedisError) -> bool {
    e.code() == Some("LOADING")
}

async fn config_get(conn: &mut MultiplexedConnection, name: &str) -> Result<String> {
    let pair: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg(name)
        .query_async(conn)
        .await
        .with_context(|| format!("CONFIG GET {name}"))?;
    pair.get(1)
        .cloned()
        .with_context(|| format!("CONFIG GET {name}: no such setting"))
}

/// Waits for the AOF rewrite that `CONFIG SET appendonly yes` starts.
async fn wait_aof_rewritten(conn: &mut MultiplexedConnection) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let info = info(conn, "persistence").await?;
        let field = |name: &str| info_field(&info, name).unwrap_or_default();
        if field("aof_enabled") == "1"
            && field("aof_rewrite_in_progress") == "0"
            && field("aof_rewrite_scheduled") == "0"
        {
            if field("aof_last_bgrewrite_status") != "ok" {
                bail!("Redis could not write its append-only file (INFO persistence: aof_last_bgrewrite_status)");
            }
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("the append-only file was not written after 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn status(redis: &RedisArgs, args: StatusArgs) -> Result<i32> {
    let node = node_name(args.node)?;
    let admin = crate::conn::default_admin_credentials();
    let mut conn = connect_admin(redis, &admin).await?;
    let mut out = String::new();
    let _ = writeln!(out, "node:        {node}");
    let _ = writeln!(out, "package:     {}", package_version());
    let info = info(&mut conn, "server").await?;
    let field = |name: &str| info_field(&info, name);
    let version = match field("valkey_version") {
        Some(v) => format!("valkey {v}"),
        None => format!("redis {}", field("redis_version").unwrap_or_default()),
    };
    let _ = writeln!(out, "redis:       {version} at {}", mask(&redis.redis_url));
    let whoami: redis::RedisResult<String> =
        redis::cmd("ACL").arg("WHOAMI").query_async(&mut conn).await;
    match (
        config_get(&mut conn, "appendonly").await,
        config_get(&mut conn, "appendfsync").await,
    ) {
        (Ok(aof), Ok(fsync)) => {
            let _ = writeln!(out, "durability:  appendonly {aof}, appendfsync {fsync}");
        }
        _ => {
            let _ = writeln!(
                out,
                "durability:  unknown (CONFIG GET refused: run as root, with /etc/agent/admin.env)"
            );
        }
    }
    let users: redis::RedisResult<Vec<String>> =
        redis::cmd("ACL").arg("USERS").query_async(&mut conn).await;
    let default_rules = default_user_rules(&mut conn).await;
    match (users, default_rules) {
        (Ok(users), Ok(default)) => {
            let open =
                default.contains(" on ") && default.contains("nopass") && default.contains("+@all");
            let state = if open {
                "off (the default user may do everything: run agentctl node setup)"
            } else {
                "on"
            };
            let _ = writeln!(out, "acl users:   {state}; users: {}", users.join(" "));
        }
        _ => {
            let _ = writeln!(
                out,
                "acl users:   on (this connection, {}, may not list them)",
                whoami.unwrap_or_else(|_| "default".into())
            );
        }
    }
    let _ = writeln!(out, "cluster:     {}", cluster_line(&mut conn, &node).await);
    let node_alive = alive(&mut conn, Prefix::node(node.clone()).heartbeat()).await?;
    let _ = writeln!(
        out,
        "node-agent:  {}",
        if node_alive {
            "alive (heartbeat)"
        } else {
            "NOT alive: no heartbeat (systemctl status node-agent)"
        }
    );
    for line in edge_lines(&mut conn, &node).await? {
        let _ = writeln!(out, "{line}");
    }
    let modules: std::collections::BTreeMap<String, String> = redis::cmd("HGETALL")
        .arg(Prefix::node(node.clone()).modules())
        .query_async(&mut conn)
        .await
        .context("HGETALL modules")?;
    if modules.is_empty() {
        let _ = writeln!(out, "modules:     none");
    } else {
        let _ = writeln!(out, "modules:     {}", modules.len());
        for (id, image) in &modules {
            let state = match AgentName::new(id) {
                Ok(name) => {
                    if alive(&mut conn, Prefix::module(name).heartbeat()).await? {
                        "agent alive"
                    } else {
                        "agent NOT alive"
                    }
                }
                Err(_) => "invalid id",
            };
            let _ = writeln!(out, "  {id:<16} {state:<16} {image}");
        }
    }
    print!("{out}");
    Ok(0)
}

/// The edge proxy as the node's last `edge.sync` left it (`node/<n>/edge`): what serves, and the
/// last refusal while it stands (the previous configuration serving meanwhile).
async fn edge_lines(conn: &mut MultiplexedConnection, node: &AgentName) -> Result<Vec<String>> {
    use core_events::edge::status as field;
    let key = core_events::edge::status_key(node);
    let status: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
        .arg(&key)
        .query_async(conn)
        .await
        .with_context(|| format!("HGETALL {key}"))?;
    let get = |f: &str| status.get(f).map(String::as_str).unwrap_or("");
    let mut lines = Vec::new();
    if status.is_empty() {
        lines.push("edge:        never applied (no edge.sync ran on this node)".to_string());
        return Ok(lines);
    }
    let routes: std::collections::BTreeMap<String, serde_json::Value> =
        serde_json::from_str(get(field::ROUTES)).unwrap_or_default();
    let serving = routes.values().filter(|v| v["state"] == "serving").count();
    if get(field::APPLIED).is_empty() {
        lines.push("edge:        no configuration applied yet".to_string());
    } else {
        lines.push(format!(
            "edge:        {serving} routes served, applied {} (config {})",
            get(field::APPLIED),
            get(field::CONFIG_SHA256).get(..12).unwrap_or("?")
        ));
    }
    for (route, state) in &routes {
        if state["state"] != "serving" {
            lines.push(format!(
                "  {route}: refused: {}",
                state["reason"].as_str().unwrap_or("")
            ));
        }
    }
    if !get(field::WARNING).is_empty() {
        lines.push(format!("  warning: {}", get(field::WARNING)));
    }
    if !get(field::ERROR).is_empty() {
        lines.push(format!(
            "  LAST SYNC FAILED at {} (run {}): {}",
            get(field::ERROR_AT),
            get(field::ERROR_RUN),
            get(field::ERROR)
        ));
    }
    Ok(lines)
}

/// Where the node stands in a cluster: none, or its role, VPN address and WireGuard backend.
async fn cluster_line(conn: &mut MultiplexedConnection, node: &AgentName) -> String {
    use core_events::cluster as wire;
    let Some(vpn) = crate::cluster::local_vpn() else {
        return "none (agentctl cluster create, or join)".into();
    };
    let leader: Option<String> = redis::cmd("GET")
        .arg(wire::leader())
        .query_async(conn)
        .await
        .unwrap_or(None);
    let backend: Option<String> = redis::cmd("HGET")
        .arg(wire::node_vpn(node))
        .arg(wire::vpn_field::BACKEND)
        .query_async(conn)
        .await
        .unwrap_or(None);
    let role = match leader.as_deref() {
        Some(l) if l == node.as_str() => "the leader".to_string(),
        Some(l) => format!("a member (leader {l})"),
        None => "joining (no leader known yet)".to_string(),
    };
    format!(
        "{role}; VPN {} on {} ({} backend), endpoint {}",
        vpn.address,
        vpn.interface,
        backend.as_deref().unwrap_or("unknown"),
        vpn.endpoint
    )
}

/// `ACL LIST`: one line per user, in the aclfile's format.
async fn acl_list(conn: &mut MultiplexedConnection) -> Result<Vec<String>> {
    redis::cmd("ACL")
        .arg("LIST")
        .query_async(conn)
        .await
        .context("ACL LIST")
}

/// The `default` user's line of `ACL LIST` (its rules: no secret, it has no password).
async fn default_user_rules(conn: &mut MultiplexedConnection) -> Result<String> {
    Ok(acl_list(conn)
        .await?
        .into_iter()
        .find(|l| l.starts_with("user default "))
        .unwrap_or_default())
}

/// Whether the agent's heartbeat key (refreshed with a TTL) exists.
async fn alive(conn: &mut MultiplexedConnection, key: String) -> Result<bool> {
    let n: i64 = redis::cmd("EXISTS")
        .arg(&key)
        .query_async(conn)
        .await
        .with_context(|| format!("EXISTS {key}"))?;
    Ok(n == 1)
}

fn mask(url: &str) -> String {
    agent_redis::Target::new(url, None)
        .map(|t| t.masked_url().to_string())
        .unwrap_or_else(|_| "(bad URL)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rerun_keeps_the_fsync_an_earlier_setup_chose() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("agent.conf");
        assert_eq!(
            chosen_fsync(&conf),
            None,
            "no file yet: the default applies"
        );
        for fsync in [Fsync::Always, Fsync::Everysec] {
            std::fs::write(
                &conf,
                agent_conf_text(&Server::of(Flavour::Valkey), fsync, None),
            )
            .unwrap();
            assert_eq!(chosen_fsync(&conf), Some(fsync));
        }
        std::fs::write(&conf, "appendfsync no\n").unwrap();
        assert_eq!(
            chosen_fsync(&conf),
            None,
            "a value setup never writes is not kept"
        );
    }

    const DEBIAN_UNIT: &str = "[Service]\nType=notify\nExecStart=/usr/bin/redis-server /etc/redis/redis.conf --supervised systemd --daemonize no\nPIDFile=/run/redis/redis-server.pid\n";

    #[test]
    fn the_dropin_starts_debians_command_on_our_file() {
        let s = Server::of(Flavour::Redis);
        let line = exec_start_for(&s, DEBIAN_UNIT).unwrap();
        assert_eq!(
            line,
            "ExecStart=/usr/bin/redis-server /etc/redis/agent.conf --supervised systemd --daemonize no"
        );
        let dropin = dropin_text(&line);
        assert!(
            dropin.contains("ExecStart=\nExecStart=/usr/bin/redis-server /etc/redis/agent.conf")
        );
    }

    #[test]
    fn a_unit_that_does_not_name_debians_file_is_refused() {
        let s = Server::of(Flavour::Valkey);
        let e = exec_start_for(&s, DEBIAN_UNIT).unwrap_err().to_string();
        assert!(e.contains("/etc/valkey/valkey.conf"), "{e}");
        assert!(e.contains("Nothing was changed"), "{e}");
    }

    #[test]
    fn our_file_includes_debians_first_and_overrides_it() {
        let text = agent_conf_text(&Server::of(Flavour::Redis), Fsync::Always, None);
        let include = text.find("include /etc/redis/redis.conf").unwrap();
        for setting in [
            "appendonly yes",
            "appendfsync always",
            "bind 127.0.0.1 -::1",
            "protected-mode yes",
            "aclfile /var/lib/redis/agent-users.acl",
        ] {
            let at = text.find(setting).unwrap_or_else(|| panic!("{setting}"));
            assert!(at > include, "{setting} must come after the include");
        }
    }

    #[test]
    fn ensure_file_writes_only_what_differs() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/f.conf");
        assert!(ensure_file(&p, "a\n", 0o640, None).unwrap());
        assert!(!ensure_file(&p, "a\n", 0o640, None).unwrap());
        assert!(ensure_file(&p, "a\n", 0o644, None).unwrap());
        assert!(ensure_file(&p, "b\n", 0o644, None).unwrap());
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "b\n");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777,
            0o644
        );
    }
}
