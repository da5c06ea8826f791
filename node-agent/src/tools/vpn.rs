//! `node-agent vpn`: this node's end of the cluster's WireGuard **full mesh**.
//!
//! Every node of a cluster has one WireGuard interface (`wg-agent` by default) with a peer for
//! every other node — no hub, so losing one node cuts no one else off. What a node publishes of
//! its end is its record `node/<name>/vpn` (public key, endpoint, VPN address, backend; the names
//! and the checks are `core_events::cluster`'s). `vpn sync` publishes this node's record and makes
//! the interface's peers exactly the other valid records, so adding or removing a node is one
//! record in Redis and one `sync` on each node.
//!
//! Why it is built this way:
//! * **the interface is never re-created for a peer change**: `sync` adds, updates and removes
//!   peers one by one on the running interface and leaves unchanged peers alone, so no session
//!   (handshake) is lost; `up` run again with the same settings changes nothing (a userspace
//!   interface keeps its wireguard-go process);
//! * **the backend is an explicit choice**: wireguard-control never falls back from the kernel's
//!   WireGuard to wireguard-go. `up` decides (`--backend auto`: the kernel's when it has
//!   WireGuard, else wireguard-go), prints why, and records the choice in a state file that
//!   `sync` (the record's `backend`), `status` and `down` read;
//! * **one bad record never stops the mesh**: a record `VpnRecord::parse` refuses (or of the
//!   wrong type) is skipped with a warning naming its key and the reason; nothing from Redis
//!   reaches WireGuard unchecked. A failure to *read* Redis changes no peer at all (an unreadable
//!   cluster must not look like an empty one);
//! * **the private key stays in its file** (0600, root's, written atomically) and in the
//!   interface: never printed, logged or shown by `Debug`; a key file that is not what `vpn key`
//!   writes (other content, wider mode, a symlink) is refused, never replaced;
//! * programs (`ip`, `wireguard-go`) run with explicit argument vectors, never a shell.
//!
//! Userspace interfaces: wireguard-go daemonizes and lives as long as its TUN device; this tool
//! starts it itself (so its errors are shown and no `LOG_LEVEL` in the environment can keep its
//! output pipe open), and `down` deletes the device and makes sure the process ended. Its control
//! sockets (`/var/run/wireguard/<NAME>.sock`) are per host, not per network namespace: two
//! interfaces of one host need two names.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use agent_engine::cli::AgentArgs;
use core_events::cluster::{self, vpn_backend, vpn_field, Ipv4Net, VpnRecord};
use core_events::AgentName;
use wireguard_control::{
    AllowedIp, Backend, Device, DeviceUpdate, InterfaceName, Key, PeerConfigBuilder, PeerInfo,
};

use super::{quiet_stdout_of, run_ok, shown, Ctx, Result, ToolError};

/// Where `vpn key` keeps the node's private key by default.
pub const DEFAULT_KEY_FILE: &str = "/etc/agent/vpn.key";
/// Where the tool keeps what it must remember between commands by default.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/agent/vpn";
/// Persistent keepalive of every peer, seconds: keeps NAT mappings open and lets a node notice
/// a peer that came back.
pub const KEEPALIVE_SECS: u16 = 25;
/// The userspace implementation started for `--backend userspace` (the variables below override
/// it, as for wg-quick and wireguard-control).
const WIREGUARD_GO: &str = "wireguard-go";
const USERSPACE_VARS: [&str; 2] = [
    "WG_USERSPACE_IMPLEMENTATION",
    "WG_QUICK_USERSPACE_IMPLEMENTATION",
];
/// The directories wireguard-go keeps its control sockets in (the first that exists).
const SOCKET_DIRS: [&str; 2] = ["/var/run/wireguard", "/run/wireguard"];

const VPN_AFTER_HELP: &str = "\
Typical order on a node: `vpn key` (once), `vpn up --address 10.5.4.N/24` (at boot),
`vpn sync --endpoint HOST` (whenever a node joins or leaves; later runs may omit --endpoint).
EXIT CODES (every command):
  0   done, or nothing to do
  1   failed (a program or WireGuard refused; the message says which)
  2   bad command line
  65  invalid input (--address, --endpoint, --interface, --node)
  69  unavailable: no WireGuard backend, or the interface is not up
  71  a program (ip, wireguard-go) could not be started
  75  Redis unreachable (sync)
  78  configuration refused: a key file that is not a private key file, a backend switch";

const KEY_AFTER_HELP: &str = "\
The file holds one line, the base64 private key (as `wg genkey` writes it). It is made with
mode 0600 in a directory made 0700, through a temporary file renamed into place; an existing
file is never replaced. The private key is never printed.
EXIT 78: the file exists but is not a private key file (other content, a symlink, not a regular
file, mode wider than 0600, owned by another user): check it, then fix or remove it.";

const UP_AFTER_HELP: &str = "\
WHAT UP DOES (a second run with the same settings changes nothing and says so):
  1. the key file (made as by `vpn key` when missing);
  2. the backend: the one the interface already runs on; else --backend (auto: the
     kernel's when /sys/module/wireguard exists or a test `ip link add … type wireguard`
     works, else wireguard-go when installed); printed, recorded in STATE_DIR/NAME.backend;
  3. the interface (wireguard-go started for userspace), its private key and UDP port;
  4. --address as its only IPv4 address (`ip address replace`), link up.
Peers are not touched: `vpn sync` sets them.
EXAMPLE: node-agent vpn up --address 10.5.4.2/24";

const SYNC_AFTER_HELP: &str = "\
WHAT SYNC DOES:
  1. publishes this node's record node/NODE/vpn (the interface's public key, --endpoint,
     the interface's IPv4 address, the backend) when it differs from Redis;
  2. reads every node/*/vpn record (SCAN), skips this node's and, with a warning on
     stderr, every record that is not valid;
  3. makes the interface's peers exactly those nodes: public key, endpoint,
     allowed-ips ADDRESS/32, persistent keepalive 25 s. Unchanged peers are not touched,
     the interface is not re-created; peers without a record any more are removed.
Prints each change (added/updated/removed NODE) or `peers in sync`.
Redis: --redis-url / --redis-credentials here or before `vpn`, or REDIS_URL and
AGENT_REDIS_CREDENTIALS, as for the daemon (default credentials /etc/agent/redis.env).
EXAMPLE: node-agent vpn sync --endpoint 192.0.2.10";

/// The node's VPN tool: its WireGuard key, its interface, and the interface's peers from Redis.
#[derive(Debug, clap::Subcommand)]
pub enum VpnCmd {
    /// Make the node's WireGuard private key when it is missing; print its public key (base64).
    ///
    /// Only the public key goes to stdout (what `agentctl cluster` reads); a note that the key
    /// was made goes to stderr.
    #[command(after_help = KEY_AFTER_HELP)]
    Key(KeyArgs),
    /// Bring the WireGuard interface up: key, UDP port, address, link up. Idempotent.
    #[command(after_help = UP_AFTER_HELP)]
    Up(UpArgs),
    /// Publish this node's VPN record and make the interface's peers the other nodes' records.
    #[command(after_help = SYNC_AFTER_HELP)]
    Sync(SyncArgs),
    /// Show the interface: backend, public key, port, address, and each peer (node, endpoint,
    /// latest handshake, bytes). Exit 69 when the interface is not up.
    Status(StatusArgs),
    /// Remove the interface (for userspace: its wireguard-go process ends with it, or is
    /// stopped). Idempotent: says so when it is already down.
    Down(DownArgs),
}

impl VpnCmd {
    /// The command's name, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            VpnCmd::Key(_) => "key",
            VpnCmd::Up(_) => "up",
            VpnCmd::Sync(_) => "sync",
            VpnCmd::Status(_) => "status",
            VpnCmd::Down(_) => "down",
        }
    }
}

/// The text after `node-agent vpn --help`.
pub fn after_help() -> &'static str {
    VPN_AFTER_HELP
}

/// The interface and the tool's state, shared by the commands that act on the interface.
#[derive(Debug, Clone, clap::Args)]
pub struct IfaceArgs {
    /// The WireGuard interface: 1 to 15 letters, digits, `_`, `.` or `-`, starting with a letter
    /// or digit. One host's userspace interfaces share /var/run/wireguard, whatever their network
    /// namespace: give each its own name.
    #[arg(long, value_name = "NAME", default_value = cluster::DEFAULT_INTERFACE)]
    pub interface: String,

    /// Directory of the tool's state: NAME.backend (the backend `up` chose, read by the other
    /// commands) and NAME.peers (node names of the peers, written by `sync`, shown by `status`).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct KeyArgs {
    /// The node's private key file: made (0600, directory 0700) when missing, never replaced.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_KEY_FILE)]
    pub key_file: PathBuf,
}

/// Which WireGuard implementation `up` uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendChoice {
    /// The kernel's when it has WireGuard, else wireguard-go when it is installed.
    Auto,
    /// The kernel's wireguard module (fails when the kernel has none).
    Kernel,
    /// wireguard-go (Debian package wireguard-go), for kernels without the module.
    Userspace,
}

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// The node's VPN address with the VPN network's prefix length (16 to 30), e.g.
    /// 10.5.4.2/24: the interface's only IPv4 address, and the route to the other nodes.
    #[arg(
        long,
        value_name = "A.B.C.D/LEN",
        required_unless_present = "from_config"
    )]
    pub address: Option<String>,

    /// A peer to add or update besides those `sync` sets: `PUBLIC-KEY,ENDPOINT,ADDRESS/32`
    /// (repeatable). A joining node's first peer, the leader, before Redis has the records.
    #[arg(long, value_name = "KEY,HOST:PORT,A.B.C.D/32")]
    pub peer: Vec<String>,

    /// Take --address, --port, --interface and --backend from /etc/agent/vpn.env (written by
    /// `agentctl cluster create|join`; what agent-vpn.service runs at boot). Without that file:
    /// nothing to do (the node is in no cluster), exit 0.
    #[arg(long)]
    pub from_config: bool,

    /// UDP port WireGuard listens on (the port of this node's endpoint).
    #[arg(long, default_value_t = cluster::DEFAULT_PORT)]
    pub port: u16,

    /// The node's private key file (made as by `vpn key` when missing).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_KEY_FILE)]
    pub key_file: PathBuf,

    /// WireGuard implementation. An interface that is up keeps the backend it runs on: to
    /// switch, `vpn down` first (exit 78 otherwise).
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    pub backend: BackendChoice,

    #[command(flatten)]
    pub iface: IfaceArgs,
}

#[derive(Debug, clap::Args)]
pub struct SyncArgs {
    /// This node's name: its record is node/NODE/vpn and it is no peer of itself. Default: the
    /// daemon's --name (AGENT_NAME, else the short hostname).
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,

    /// Where the other nodes send this node's WireGuard packets: ADDRESS[:PORT] or
    /// HOSTNAME[:PORT] (resolved here, IPv4 preferred; the port defaults to the interface's).
    /// Default: the endpoint already published; needed the first time.
    #[arg(long, value_name = "HOST[:PORT]")]
    pub endpoint: Option<String>,

    /// Redis server, as the daemon's --redis-url (overrides it and REDIS_URL).
    #[arg(long, value_name = "URL")]
    pub redis_url: Option<String>,

    /// Credentials file (REDIS_USER=, REDIS_PASSWORD=), as the daemon's --redis-credentials.
    #[arg(long, value_name = "PATH")]
    pub redis_credentials: Option<PathBuf>,

    /// Take --interface and --endpoint from /etc/agent/vpn.env (the node's cluster settings).
    /// Without that file: nothing to do (the node is in no cluster), exit 0.
    #[arg(long)]
    pub from_config: bool,

    #[command(flatten)]
    pub iface: IfaceArgs,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// One JSON object instead of text: interface, backend, public_key, listen_port, address,
    /// link_up, peers [{node, public_key, endpoint, allowed_ips, latest_handshake_secs,
    /// rx_bytes, tx_bytes}] (node and the handshake null when unknown).
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub iface: IfaceArgs,
}

#[derive(Debug, clap::Args)]
pub struct DownArgs {
    /// Take --interface from /etc/agent/vpn.env. Without that file: nothing to do, exit 0.
    #[arg(long)]
    pub from_config: bool,

    #[command(flatten)]
    pub iface: IfaceArgs,
}

/// The node's cluster settings (vpn.env), or `None` (said on stdout) when it is in no cluster.
fn cluster_config() -> Result<Option<cluster::LocalVpn>> {
    let path = Path::new(cluster::VPN_ENV);
    match std::fs::read_to_string(path) {
        Ok(text) => cluster::LocalVpn::parse(&text).map(Some).ok_or_else(|| {
            ToolError::Config(format!(
                "{} is not a complete VPN settings file: run agentctl cluster again",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!(
                "{} does not exist: this node is in no cluster; nothing to do",
                path.display()
            );
            Ok(None)
        }
        Err(e) => Err(ToolError::Config(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

fn backend_choice(s: &str) -> BackendChoice {
    match s {
        vpn_backend::KERNEL => BackendChoice::Kernel,
        vpn_backend::USERSPACE => BackendChoice::Userspace,
        _ => BackendChoice::Auto,
    }
}

/// Runs one `node-agent vpn` command. `agent` holds the daemon's flags (name, Redis), which
/// `sync`'s own flags override; `ctx` turns them into the tools' context (only `sync` needs Redis).
pub fn run(
    cmd: VpnCmd,
    mut agent: AgentArgs,
    ctx: impl FnOnce(AgentArgs) -> Result<Ctx>,
) -> Result<()> {
    match cmd {
        VpnCmd::Key(a) => {
            let (key, made) = load_or_create_key(&a.key_file)?;
            if made {
                eprintln!(
                    "made {}: the node's WireGuard private key (mode 0600)",
                    a.key_file.display()
                );
            }
            println!("{}", key.public().to_base64());
            Ok(())
        }
        VpnCmd::Up(mut a) => {
            if a.from_config {
                let Some(v) = cluster_config()? else {
                    return Ok(());
                };
                a.address = Some(format!("{}/{}", v.address, v.prefix));
                a.port = v.port;
                a.iface.interface = v.interface;
                a.backend = backend_choice(&v.backend);
            }
            up(&a)
        }
        VpnCmd::Sync(mut a) => {
            if a.from_config {
                let Some(v) = cluster_config()? else {
                    return Ok(());
                };
                a.iface.interface = v.interface;
                a.endpoint = Some(v.endpoint);
            }
            if let Some(node) = &a.node {
                agent.name = Some(node.clone());
            }
            if let Some(url) = &a.redis_url {
                agent.redis_url = url.clone();
            }
            if let Some(creds) = &a.redis_credentials {
                agent.redis_credentials = Some(creds.clone());
            }
            // The interface is checked before Redis is: a node without it has nothing to sync.
            let local = Local::read(&a.iface)?;
            sync(&ctx(agent)?, &a, &local)
        }
        VpnCmd::Status(a) => status(&a),
        VpnCmd::Down(mut a) => {
            if a.from_config {
                let Some(v) = cluster_config()? else {
                    return Ok(());
                };
                a.iface.interface = v.interface;
            }
            down(&a.iface)
        }
    }
}

// ---- the private key ----------------------------------------------------------------------------

/// The node's private key. No `Display`, and a `Debug` that shows nothing of it (wireguard-control's
/// own `Key` `Debug` prints the key).
struct PrivateKey(Key);

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PrivateKey(…)")
    }
}

impl PrivateKey {
    fn public(&self) -> Key {
        self.0.get_public()
    }
}

/// Reads the key file, or makes it when it does not exist; `true` when it was made.
fn load_or_create_key(path: &Path) -> Result<(PrivateKey, bool)> {
    if let Some(key) = read_key_file(path)? {
        return Ok((key, false));
    }
    create_key_file(path)
}

fn not_a_key_file(path: &Path, why: impl std::fmt::Display) -> ToolError {
    ToolError::Config(format!(
        "{}: {why}; it is not replaced: check it, then fix or remove it (or pass another --key-file)",
        path.display()
    ))
}

/// The key in `path`, `None` when there is no such file. Anything at `path` that is not a private
/// key file as [`create_key_file`] writes it is an error (78), never `None`.
fn read_key_file(path: &Path) -> Result<Option<PrivateKey>> {
    let open = std::fs::OpenOptions::new()
        .read(true)
        // No symlink followed; a FIFO does not block the open.
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path);
    let file = match open {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => {
            return Err(not_a_key_file(path, "a symbolic link, not a key file"))
        }
        Err(e) => {
            return Err(ToolError::Config(format!(
                "cannot read {}: {e}",
                path.display()
            )))
        }
    };
    let meta = file
        .metadata()
        .map_err(|e| ToolError::Config(format!("cannot read {}: {e}", path.display())))?;
    if !meta.file_type().is_file() {
        return Err(not_a_key_file(path, "not a regular file"));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(not_a_key_file(
            path,
            format!(
                "mode {mode:04o} is wider than 0600 (others may have read the key: if so, \
                 make a new one)"
            ),
        ));
    }
    let euid = nix::unistd::geteuid().as_raw();
    if meta.uid() != 0 && meta.uid() != euid {
        return Err(not_a_key_file(
            path,
            format!("owned by uid {}, not by root", meta.uid()),
        ));
    }
    let mut text = String::new();
    // A key file is one short line: read a little more, to refuse anything longer.
    let read = (&file).take(256).read_to_string(&mut text);
    let key = read
        .ok()
        .map(|_| text.trim())
        .filter(|t| cluster::is_wireguard_key(t))
        .and_then(|t| Key::from_base64(t).ok());
    match key {
        Some(k) => Ok(Some(PrivateKey(k))),
        // The content is never quoted: it may be a key after all.
        None => Err(not_a_key_file(
            path,
            "does not hold a WireGuard private key (one base64 line of 44 characters, as \
             `wg genkey` writes)",
        )),
    }
}

/// Makes a new key file: the directory (0700 for what is made), a temporary file (0600) in it,
/// renamed into place only if `path` still does not exist.
fn create_key_file(path: &Path) -> Result<(PrivateKey, bool)> {
    let dir = parent_dir(path);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| ToolError::Failed(format!("cannot make {}: {e}", dir.display())))?;
    let key = Key::generate_private();
    let fail =
        |e: std::io::Error| ToolError::Failed(format!("cannot write {}: {e}", path.display()));
    let mut tmp = tempfile::Builder::new()
        .prefix(".vpn-key.")
        .tempfile_in(dir)
        .map_err(fail)?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(fail)?;
    tmp.write_all(format!("{}\n", key.to_base64()).as_bytes())
        .map_err(fail)?;
    tmp.as_file().sync_all().map_err(fail)?;
    match tmp.persist_noclobber(path) {
        Ok(_) => {}
        // Made meanwhile by another run: that one is the key.
        Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => {
            return read_key_file(path)?
                .map(|k| (k, false))
                .ok_or_else(|| fail(e.error));
        }
        Err(e) => return Err(fail(e.error)),
    }
    sync_dir(dir);
    Ok((PrivateKey(key), true))
}

fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Makes a rename durable (best effort: the file itself is already synced).
fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

// ---- the tool's state -----------------------------------------------------------------------------

fn backend_name(b: Backend) -> &'static str {
    match b {
        Backend::Kernel => vpn_backend::KERNEL,
        Backend::Userspace => vpn_backend::USERSPACE,
    }
}

fn parse_backend(s: &str) -> Option<Backend> {
    match s {
        vpn_backend::KERNEL => Some(Backend::Kernel),
        vpn_backend::USERSPACE => Some(Backend::Userspace),
        _ => None,
    }
}

impl IfaceArgs {
    fn name(&self) -> Result<InterfaceName> {
        interface_name(&self.interface)
    }

    fn backend_file(&self) -> PathBuf {
        self.state_dir.join(format!("{}.backend", self.interface))
    }

    fn peers_file(&self) -> PathBuf {
        self.state_dir.join(format!("{}.peers", self.interface))
    }

    /// The backend `up` recorded, if any.
    fn recorded_backend(&self) -> Result<Option<Backend>> {
        let path = self.backend_file();
        match std::fs::read_to_string(&path) {
            Ok(text) => parse_backend(text.trim()).map(Some).ok_or_else(|| {
                ToolError::Config(format!(
                    "{} holds neither {} nor {}: remove it and run `vpn up` again",
                    path.display(),
                    vpn_backend::KERNEL,
                    vpn_backend::USERSPACE
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ToolError::Config(format!(
                "cannot read {}: {e}",
                path.display()
            ))),
        }
    }

    /// Node names of the peers by public key, as the last `sync` saw them in Redis.
    fn peer_names(&self) -> BTreeMap<String, String> {
        std::fs::read_to_string(self.peers_file())
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default()
    }

    /// The interface as it runs: on the recorded backend, else on whichever answers for it.
    fn running(&self) -> Result<Option<(Backend, Device)>> {
        let name = self.name()?;
        let recorded = self.recorded_backend()?;
        let mut order = vec![Backend::Userspace, Backend::Kernel];
        if let Some(b) = recorded {
            order.retain(|o| *o != b);
            order.insert(0, b);
        }
        Ok(order
            .into_iter()
            .find_map(|b| Device::get(&name, b).ok().map(|d| (b, d))))
    }
}

/// Writes `text` to `path` through a temporary file and a rename, unless it already holds it;
/// `true` when it wrote.
fn write_state(path: &Path, text: &str) -> Result<bool> {
    if std::fs::read_to_string(path).ok().as_deref() == Some(text) {
        return Ok(false);
    }
    let dir = parent_dir(path);
    let fail =
        |e: std::io::Error| ToolError::Failed(format!("cannot write {}: {e}", path.display()));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(fail)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".vpn-state.")
        .tempfile_in(dir)
        .map_err(fail)?;
    tmp.write_all(text.as_bytes()).map_err(fail)?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))
        .map_err(fail)?;
    tmp.as_file().sync_all().map_err(fail)?;
    tmp.persist(path).map_err(|e| fail(e.error))?;
    sync_dir(dir);
    Ok(true)
}

fn remove_state(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ToolError::Failed(format!(
            "cannot remove {}: {e}",
            path.display()
        ))),
    }
}

// ---- input ------------------------------------------------------------------------------------------

/// An interface name that is safe as a file name and an `ip` argument.
fn interface_name(s: &str) -> Result<InterfaceName> {
    let ok = (1..=15).contains(&s.len())
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !ok {
        return Err(ToolError::Invalid(format!(
            "--interface {s:?}: 1 to 15 letters, digits, '_', '.' or '-', starting with a \
             letter or digit"
        )));
    }
    s.parse()
        .map_err(|e| ToolError::Invalid(format!("--interface {s:?}: {e}")))
}

/// An interface address: a host address and its network's prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct IfAddress {
    addr: Ipv4Addr,
    prefix: u8,
}

impl std::fmt::Display for IfAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// `A.B.C.D/LEN`: a host address (not the network's or the broadcast address) of a network the
/// cluster's rules allow (`Ipv4Net::parse`: prefix 16 to 30).
fn parse_address(s: &str) -> std::result::Result<IfAddress, String> {
    let (a, l) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?}: expected A.B.C.D/LEN, e.g. 10.5.4.2/24"))?;
    let addr: Ipv4Addr = a
        .parse()
        .map_err(|_| format!("{a:?} is not an IPv4 address"))?;
    let prefix: u8 = l
        .parse()
        .ok()
        .filter(|p| *p <= 32)
        .ok_or_else(|| format!("{l:?} is not a prefix length"))?;
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    let network = Ipv4Addr::from(u32::from(addr) & mask);
    let net = Ipv4Net::parse(&format!("{network}/{prefix}"))?;
    if !net.contains_host(addr) {
        return Err(format!(
            "{s}: the network or broadcast address of {net}, not a host address"
        ));
    }
    Ok(IfAddress { addr, prefix })
}

/// `--endpoint`: an address or a name, with or without a port (default `port`).
fn parse_endpoint(s: &str, port: u16) -> std::result::Result<SocketAddr, String> {
    let with_port = cluster::endpoint_with_port(s, port)?;
    let addrs: Vec<SocketAddr> = with_port
        .to_socket_addrs()
        .map_err(|e| format!("{s:?}: {e}"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("{s:?} resolves to no address"))
}

// ---- the link (iproute2) -------------------------------------------------------------------------

/// What `ip` says of a link.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Link {
    up: bool,
    /// `linkinfo.info_kind`: `wireguard` for a kernel interface, `tun` for wireguard-go's.
    kind: Option<String>,
    v4: Vec<IfAddress>,
}

/// The link `iface` of this network namespace, `None` when there is none.
fn link_of(iface: &str) -> Result<Option<Link>> {
    let mut cmd = Command::new("ip");
    cmd.args(["-details", "-json", "address", "show", "dev", iface]);
    let (st, out) = quiet_stdout_of(&mut cmd)?;
    if !st.success() {
        return Ok(None);
    }
    parse_link(&out)
        .map_err(|e| ToolError::Failed(format!("cannot read the output of {}: {e}", shown(&cmd))))
}

fn parse_link(json: &str) -> std::result::Result<Option<Link>, String> {
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let Some(l) = v.as_array().and_then(|a| a.first()) else {
        return Ok(None);
    };
    let up = l["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == "UP"));
    let kind = l["linkinfo"]["info_kind"].as_str().map(str::to_string);
    let v4 = l["addr_info"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["family"] == "inet")
        .filter_map(|a| {
            Some(IfAddress {
                addr: a["local"].as_str()?.parse().ok()?,
                prefix: u8::try_from(a["prefixlen"].as_u64()?).ok()?,
            })
        })
        .collect();
    Ok(Some(Link { up, kind, v4 }))
}

fn ip(args: &[&str]) -> Result<()> {
    run_ok(Command::new("ip").args(args).stdout(Stdio::null()))
}

// ---- backends ----------------------------------------------------------------------------------------

/// Whether the kernel has WireGuard, and how that was found out.
fn kernel_wireguard() -> Result<(bool, String)> {
    if Path::new("/sys/module/wireguard").exists() {
        return Ok((true, "/sys/module/wireguard exists".into()));
    }
    // A modular kernel loads the module on the first link of its kind: make one, remove it.
    let probe = format!("wgprobe{}", std::process::id() % 10_000_000);
    let mut cmd = Command::new("ip");
    cmd.args(["link", "add", "dev", &probe, "type", "wireguard"]);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| ToolError::OsError(format!("cannot run ip: {e}")))?;
    if out.status.success() {
        let _ = ip(&["link", "delete", "dev", &probe]);
        return Ok((true, "a test link of type wireguard could be made".into()));
    }
    let said = String::from_utf8_lossy(&out.stderr).trim().to_string();
    Ok((
        false,
        format!("no /sys/module/wireguard, and `ip link add … type wireguard` says {said:?}"),
    ))
}

/// The userspace implementation: `WG_USERSPACE_IMPLEMENTATION` (or wg-quick's variable) when
/// set, else `wireguard-go`; a bare name is looked up in `PATH`.
fn userspace_binary() -> Option<PathBuf> {
    let name = USERSPACE_VARS
        .iter()
        .find_map(|v| std::env::var_os(v).filter(|s| !s.is_empty()))
        .unwrap_or_else(|| WIREGUARD_GO.into());
    let name = PathBuf::from(name);
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if name.components().count() > 1 {
        return executable(&name).then_some(name);
    }
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join(&name))
        .find(|p| executable(p))
}

const INSTALL_HINT: &str = "apt-get install --no-install-recommends wireguard-go wireguard-tools";

/// The backend for a new interface, and why.
fn choose_backend(choice: BackendChoice) -> Result<(Backend, String)> {
    let no_wireguard_go = || {
        ToolError::Unavailable(format!(
            "wireguard-go is not installed (nor named by WG_USERSPACE_IMPLEMENTATION): {INSTALL_HINT}"
        ))
    };
    match choice {
        BackendChoice::Kernel => {
            let (has, why) = kernel_wireguard()?;
            if has {
                Ok((Backend::Kernel, format!("asked for; {why}")))
            } else {
                Err(ToolError::Unavailable(format!(
                    "--backend kernel: the kernel has no WireGuard ({why}); use --backend \
                     userspace (package wireguard-go) or --backend auto"
                )))
            }
        }
        BackendChoice::Userspace => {
            let bin = userspace_binary().ok_or_else(no_wireguard_go)?;
            Ok((Backend::Userspace, format!("asked for; {}", bin.display())))
        }
        BackendChoice::Auto => {
            let (has, why) = kernel_wireguard()?;
            if has {
                return Ok((Backend::Kernel, format!("auto: {why}")));
            }
            match userspace_binary() {
                Some(bin) => Ok((
                    Backend::Userspace,
                    format!(
                        "auto: the kernel has no WireGuard ({why}); wireguard-go is {}",
                        bin.display()
                    ),
                )),
                None => Err(ToolError::Unavailable(format!(
                    "no WireGuard backend: the kernel has none ({why}) and wireguard-go is not \
                     installed: {INSTALL_HINT} (or boot a kernel with the wireguard module)"
                ))),
            }
        }
    }
}

/// Starts wireguard-go for `iface` and waits until its control socket answers.
fn start_wireguard_go(name: &InterfaceName, iface: &str) -> Result<()> {
    let bin = userspace_binary().ok_or_else(|| {
        ToolError::Unavailable(format!("wireguard-go is not installed: {INSTALL_HINT}"))
    })?;
    let mut cmd = Command::new(&bin);
    cmd.arg(iface);
    // Its daemon would keep our pipe open with LOG_LEVEL set, or stay in the foreground.
    for var in [
        "LOG_LEVEL",
        "WG_PROCESS_FOREGROUND",
        "WG_TUN_FD",
        "WG_UAPI_FD",
    ] {
        cmd.env_remove(var);
    }
    let out = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| ToolError::OsError(format!("cannot run {}: {e}", bin.display())))?;
    if !out.status.success() {
        // Its banner (that the kernel might not need it) is no reason: the last lines are.
        let stderr = String::from_utf8_lossy(&out.stderr);
        let why: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.contains('│') && !l.contains('─'))
            .collect();
        return Err(ToolError::Failed(format!(
            "{} failed ({}): {}",
            shown(&cmd),
            out.status,
            why.join("; ")
        )));
    }
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        match Device::get(name, Backend::Userspace) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > end => {
                return Err(ToolError::Failed(format!(
                    "wireguard-go started for {iface} but its control socket does not answer: {e}"
                )))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// The wireguard-go processes of `iface` (argv `… IFACE`), zombies excluded.
fn wireguard_go_pids(iface: &str) -> Vec<i32> {
    let names: Vec<std::ffi::OsString> = [Some(PathBuf::from(WIREGUARD_GO)), userspace_binary()]
        .into_iter()
        .flatten()
        .filter_map(|p| p.file_name().map(|n| n.to_owned()))
        .collect();
    let me = std::process::id() as i32;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != me && is_wireguard_go_of(*pid, iface, &names))
        .collect()
}

fn is_wireguard_go_of(pid: i32, iface: &str, names: &[std::ffi::OsString]) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .collect();
    let (Some(first), Some(last)) = (args.first(), args.last()) else {
        return false;
    };
    use std::os::unix::ffi::OsStrExt;
    let prog = Path::new(std::ffi::OsStr::from_bytes(first));
    args.len() >= 2
        && *last == iface.as_bytes()
        && prog
            .file_name()
            .is_some_and(|n| names.iter().any(|w| w == n))
}

/// Waits until none of `pids` is a wireguard-go of `iface` any more; the ones left after
/// `timeout`.
fn wait_gone(pids: &[i32], iface: &str, timeout: Duration) -> Vec<i32> {
    let names = [std::ffi::OsString::from(WIREGUARD_GO)]
        .into_iter()
        .chain(userspace_binary().and_then(|p| p.file_name().map(|n| n.to_owned())))
        .collect::<Vec<_>>();
    let end = Instant::now() + timeout;
    loop {
        let left: Vec<i32> = pids
            .iter()
            .copied()
            .filter(|p| is_wireguard_go_of(*p, iface, &names))
            .collect();
        if left.is_empty() || Instant::now() > end {
            return left;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---- up ------------------------------------------------------------------------------------------------

fn up(a: &UpArgs) -> Result<()> {
    let iface = a.iface.interface.as_str();
    let name = a.iface.name()?;
    let address = parse_address(a.address.as_deref().unwrap_or_default())
        .map_err(|e| ToolError::Invalid(format!("--address {e}")))?;
    let static_peers = a
        .peer
        .iter()
        .map(|p| parse_peer(p).map_err(|e| ToolError::Invalid(format!("--peer {p:?}: {e}"))))
        .collect::<Result<Vec<_>>>()?;
    let (key, made) = load_or_create_key(&a.key_file)?;
    if made {
        eprintln!(
            "made {}: the node's WireGuard private key (mode 0600)",
            a.key_file.display()
        );
    }
    let mut changes: Vec<String> = Vec::new();
    let (backend, why, device) = match a.iface.running()? {
        Some((b, d)) => {
            let asked = match a.backend {
                BackendChoice::Auto => None,
                BackendChoice::Kernel => Some(Backend::Kernel),
                BackendChoice::Userspace => Some(Backend::Userspace),
            };
            if asked.is_some_and(|asked| asked != b) {
                return Err(ToolError::Config(format!(
                    "{iface} runs on the {} backend; --backend {} would re-create it: run \
                     `node-agent vpn down --interface {iface}` first",
                    backend_name(b),
                    a.backend_label()
                )));
            }
            (b, "the interface runs on it".to_string(), Some(d))
        }
        None => {
            let (b, why) = choose_backend(a.backend)?;
            if b == Backend::Userspace {
                start_wireguard_go(&name, iface)?;
            }
            changes.push("created".into());
            (b, why, None)
        }
    };
    println!("{iface}: backend {} ({why})", backend_name(backend));

    // Key and port; the peers are left as they are.
    let need_key = device
        .as_ref()
        .is_none_or(|d| d.private_key.as_ref() != Some(&key.0));
    let need_port = device
        .as_ref()
        .is_none_or(|d| d.listen_port != Some(a.port));
    if need_key || need_port {
        let mut update = DeviceUpdate::new();
        if need_key {
            update = update.set_private_key(key.0.clone());
            if device.is_some() {
                changes.push("private key set".into());
            }
        }
        if need_port {
            update = update.set_listen_port(a.port);
            changes.push(format!("UDP port {}", a.port));
        }
        update.apply(&name, backend).map_err(|e| {
            ToolError::Failed(format!(
                "cannot configure {iface} ({}): {e} (is UDP port {} free?)",
                backend_name(backend),
                a.port
            ))
        })?;
    }

    // Static peers (--peer): added or updated, the others left alone.
    if !static_peers.is_empty() {
        let device = Device::get(&name, backend).ok();
        let mut update = DeviceUpdate::new();
        let mut any = false;
        for (key, want) in &static_peers {
            let have = device
                .as_ref()
                .and_then(|d| d.peers.iter().find(|p| p.config.public_key == *key));
            if let Some(change) = peer_change(have, want) {
                update = update.add_peer(peer_config(key, want));
                changes.push(change.trim().to_string());
                any = true;
            }
        }
        if any {
            update
                .apply(&name, backend)
                .map_err(|e| ToolError::Failed(format!("cannot set the peers of {iface}: {e}")))?;
        }
    }

    // Address and link.
    let link = link_of(iface)?.ok_or_else(|| {
        ToolError::Failed(format!(
            "{iface} has no link in this network namespace (was it made in another one?)"
        ))
    })?;
    if !link.v4.contains(&address) {
        ip(&["address", "replace", &address.to_string(), "dev", iface])?;
        changes.push(format!("address {address}"));
    }
    for other in link.v4.iter().filter(|o| **o != address) {
        ip(&["address", "delete", &other.to_string(), "dev", iface])?;
        changes.push(format!("address {other} removed"));
    }
    if !link.up {
        ip(&["link", "set", "dev", iface, "up"])?;
        changes.push("link up".into());
    }
    if write_state(
        &a.iface.backend_file(),
        &format!("{}\n", backend_name(backend)),
    )? && changes.is_empty()
    {
        changes.push(format!(
            "backend recorded in {}",
            a.iface.backend_file().display()
        ));
    }
    let what = if changes.is_empty() {
        "already up: nothing changed".to_string()
    } else {
        format!("changed: {}", changes.join(", "))
    };
    println!(
        "{iface}: {address}, UDP port {}, public key {}: {what}",
        a.port,
        key.public().to_base64()
    );
    Ok(())
}

impl UpArgs {
    fn backend_label(&self) -> &'static str {
        match self.backend {
            BackendChoice::Auto => "auto",
            BackendChoice::Kernel => vpn_backend::KERNEL,
            BackendChoice::Userspace => vpn_backend::USERSPACE,
        }
    }
}

// ---- sync ----------------------------------------------------------------------------------------------

/// The interface as `sync` needs it.
struct Local {
    name: InterfaceName,
    backend: Backend,
    device: Device,
    public_key: Key,
    address: IfAddress,
}

impl Local {
    fn read(iface: &IfaceArgs) -> Result<Local> {
        let name = iface.name()?;
        let not_up = |why: &str| {
            ToolError::Unavailable(format!(
                "{} {why}: run `node-agent vpn up --interface {} --address …` first",
                iface.interface, iface.interface
            ))
        };
        let (backend, device) = iface.running()?.ok_or_else(|| not_up("is not up"))?;
        let public_key = device
            .public_key
            .clone()
            .ok_or_else(|| not_up("has no private key"))?;
        let link = link_of(&iface.interface)?
            .ok_or_else(|| not_up("has no link in this network namespace"))?;
        let address = *link
            .v4
            .first()
            .ok_or_else(|| not_up("has no IPv4 address"))?;
        Ok(Local {
            name,
            backend,
            device,
            public_key,
            address,
        })
    }
}

/// A peer as the records want it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct WantedPeer {
    node: String,
    /// `None` for a join token's key on the leader: the joining node makes the first handshake.
    endpoint: Option<SocketAddr>,
    address: Ipv4Addr,
}

/// `PUBLIC-KEY,ENDPOINT,ADDRESS/32` of `--peer`.
fn parse_peer(s: &str) -> std::result::Result<(Key, WantedPeer), String> {
    let parts: Vec<&str> = s.split(',').collect();
    let [key, endpoint, allowed] = parts[..] else {
        return Err("expected PUBLIC-KEY,HOST:PORT,A.B.C.D/32".into());
    };
    if !cluster::is_wireguard_key(key) {
        return Err(format!("{key:?} is not a WireGuard public key"));
    }
    let key = Key::from_base64(key).map_err(|_| format!("{key:?} does not decode"))?;
    let endpoint: SocketAddr = endpoint
        .parse()
        .map_err(|_| format!("endpoint {endpoint:?} is not address:port"))?;
    let address: Ipv4Addr = allowed
        .strip_suffix("/32")
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("{allowed:?} is not A.B.C.D/32"))?;
    Ok((
        key,
        WantedPeer {
            node: format!("peer {address}"),
            endpoint: Some(endpoint),
            address,
        },
    ))
}

/// What one peer needs, comparing the interface's peer (`None`: absent) with the wanted one.
fn peer_change(have: Option<&PeerInfo>, want: &WantedPeer) -> Option<String> {
    let Some(have) = have else {
        return Some(format!(
            "added:   {} ({}{})",
            want.node,
            want.address,
            want.endpoint
                .map(|e| format!(" at {e}"))
                .unwrap_or_default()
        ));
    };
    let mut what = Vec::new();
    if let Some(e) = want.endpoint {
        if have.config.endpoint != Some(e) {
            what.push(format!("endpoint {e}"));
        }
    }
    let allowed = [AllowedIp {
        address: IpAddr::V4(want.address),
        cidr: 32,
    }];
    if have.config.allowed_ips != allowed {
        what.push(format!("allowed-ips {}/32", want.address));
    }
    if have.config.persistent_keepalive_interval != Some(KEEPALIVE_SECS) {
        what.push(format!("keepalive {KEEPALIVE_SECS} s"));
    }
    (!what.is_empty()).then(|| format!("updated: {} ({})", want.node, what.join(", ")))
}

fn peer_config(key: &Key, want: &WantedPeer) -> PeerConfigBuilder {
    let mut b = PeerConfigBuilder::new(key);
    if let Some(e) = want.endpoint {
        b = b.set_endpoint(e);
    }
    b.replace_allowed_ips()
        .add_allowed_ip(IpAddr::V4(want.address), 32)
        .set_persistent_keepalive_interval(KEEPALIVE_SECS)
}

/// A hash's fields from `HGETALL`'s reply (RESP2 flat array or RESP3 map); fields or values that
/// are not UTF-8 are left out (the record then lacks them, and says so).
fn hash_fields(v: redis::Value) -> HashMap<String, String> {
    use redis::Value;
    let text = |v: Value| match v {
        Value::BulkString(b) => String::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    };
    let pairs: Vec<(Value, Value)> = match v {
        Value::Map(m) => m,
        Value::Array(items) => {
            let mut it = items.into_iter();
            std::iter::from_fn(|| Some((it.next()?, it.next()?))).collect()
        }
        _ => Vec::new(),
    };
    pairs
        .into_iter()
        .filter_map(|(k, v)| Some((text(k)?, text(v)?)))
        .collect()
}

/// Every key matching `pattern`, by `SCAN` (never `KEYS`), sorted, each once.
pub(crate) fn scan(con: &mut redis::Connection, pattern: &str) -> Result<Vec<String>> {
    let mut keys = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(200)
            .query(con)?;
        keys.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    keys.sort();
    keys.dedup();
    Ok(keys)
}

fn sync(ctx: &Ctx, a: &SyncArgs, local: &Local) -> Result<()> {
    let iface = a.iface.interface.as_str();
    let port = local.device.listen_port.unwrap_or(cluster::DEFAULT_PORT);
    let own_key = cluster::node_vpn(&ctx.node);
    // The records are read on the leader when it answers; else (at boot, before the peers are
    // back) on this node's own Redis, a replica. A replica whose link to the leader is down may
    // hold an old copy, or none yet: from it peers are added and updated, never removed — a
    // removed leader peer would keep the link down for good.
    let leader_con = ctx
        .target
        .sync_connection(Duration::from_secs(2), agent_redis::COMMAND_TIMEOUT);
    let (mut con, may_remove) = match leader_con {
        Ok(c) => (c, true),
        Err(e) => {
            let mut here = ctx
                .target
                .here()
                .sync_connection(agent_redis::CONNECT_TIMEOUT, agent_redis::COMMAND_TIMEOUT)?;
            let info: String = redis::cmd("INFO").arg("replication").query(&mut here)?;
            let stale = info.lines().any(|l| l.trim() == "master_link_status:down");
            if stale {
                eprintln!(
                    "warning: the leader does not answer ({e}); peers from this node's replica, \
                     whose link is down: none removed"
                );
            }
            (here, !stale)
        }
    };

    // 1. This node's record.
    let published: HashMap<String, String> = match redis::cmd("HGETALL")
        .arg(&own_key)
        .query::<redis::Value>(&mut con)
    {
        Ok(v) => hash_fields(v),
        Err(e) if agent_redis::is_wrong_type(&e) => {
            eprintln!("warning: {own_key} is not a hash: replaced");
            let _: () = redis::cmd("DEL").arg(&own_key).query(&mut con)?;
            HashMap::new()
        }
        Err(e) => return Err(e.into()),
    };
    let endpoint = match &a.endpoint {
        Some(e) => {
            parse_endpoint(e, port).map_err(|e| ToolError::Invalid(format!("--endpoint {e}")))?
        }
        None => published
            .get(vpn_field::ENDPOINT)
            .and_then(|e| e.parse().ok())
            .ok_or_else(|| {
                ToolError::Invalid(format!(
                    "{own_key} has no endpoint yet: pass --endpoint HOST[:PORT] (where the \
                     other nodes reach this one)"
                ))
            })?,
    };
    let fields = [
        (vpn_field::PUBLIC_KEY, local.public_key.to_base64()),
        (vpn_field::ENDPOINT, endpoint.to_string()),
        (vpn_field::ADDRESS, local.address.addr.to_string()),
        (vpn_field::BACKEND, backend_name(local.backend).to_string()),
    ];
    // What this node publishes passes the check every other node makes of it.
    VpnRecord::parse(|f| {
        fields
            .iter()
            .find(|(k, _)| *k == f)
            .map(|(_, v)| v.as_str())
    })
    .map_err(|e| ToolError::Invalid(format!("this node's own record would be refused: {e}")))?;
    let differ: Vec<&str> = fields
        .iter()
        .filter(|(k, v)| published.get(*k) != Some(v))
        .map(|(k, _)| *k)
        .collect();
    if differ.is_empty() {
        println!("record:  {own_key} in place");
    } else {
        let mut hset = redis::cmd("HSET");
        hset.arg(&own_key);
        for (k, v) in &fields {
            hset.arg(*k).arg(v);
        }
        let _: () = hset.query(&mut ctx.con()?)?;
        println!("record:  {own_key} published ({})", differ.join(", "));
    }

    // 2. The other nodes' records. A read that fails changes nothing: only a record that was
    // read and refused is skipped.
    let mut wanted: BTreeMap<String, (Key, WantedPeer)> = BTreeMap::new();
    let mut taken_addresses: HashMap<Ipv4Addr, String> = HashMap::new();
    taken_addresses.insert(local.address.addr, ctx.node.to_string());
    for key in scan(&mut con, &cluster::node_vpn_pattern())? {
        let Some(node) = cluster::node_of_vpn_key(&key) else {
            continue;
        };
        let node = match AgentName::new(node) {
            Ok(n) => n,
            Err(e) => {
                eprintln!("warning: skipped {key:?}: not a node's record ({e})");
                continue;
            }
        };
        if node == ctx.node {
            continue;
        }
        let record = match redis::cmd("HGETALL")
            .arg(&key)
            .query::<redis::Value>(&mut con)
        {
            Ok(v) => hash_fields(v),
            Err(e) if agent_redis::is_wrong_type(&e) => {
                eprintln!("warning: skipped {key}: not a hash");
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        if record.is_empty() {
            // Removed since the scan.
            continue;
        }
        let rec = match VpnRecord::parse(|f| record.get(f).map(String::as_str)) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("warning: skipped {key}: {e}");
                continue;
            }
        };
        let Ok(peer_key) = Key::from_base64(&rec.public_key) else {
            eprintln!("warning: skipped {key}: its public key does not decode");
            continue;
        };
        if peer_key == local.public_key {
            eprintln!("warning: skipped {key}: it has this node's own public key");
            continue;
        }
        if let Some((_, (_, other))) = wanted.iter().find(|(_, (k, _))| *k == peer_key) {
            eprintln!(
                "warning: skipped {key}: the same public key as node {}",
                other.node
            );
            continue;
        }
        if let Some(other) = taken_addresses.get(&rec.address) {
            eprintln!(
                "warning: skipped {key}: address {} is node {other}'s",
                rec.address
            );
            continue;
        }
        taken_addresses.insert(rec.address, node.to_string());
        wanted.insert(
            rec.public_key.clone(),
            (
                peer_key,
                WantedPeer {
                    node: node.to_string(),
                    endpoint: Some(rec.endpoint),
                    address: rec.address,
                },
            ),
        );
    }

    // On the leader, the keys of live join tokens too: a joining node reaches it with one.
    let leader: Option<String> = redis::cmd("GET").arg(cluster::leader()).query(&mut con)?;
    if leader.as_deref() == Some(ctx.node.as_str()) {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        for key in scan(&mut con, &cluster::join_token_pattern())? {
            let Some(id) = cluster::token_of_join_key(&key) else {
                continue;
            };
            let rec = match redis::cmd("HGETALL")
                .arg(&key)
                .query::<redis::Value>(&mut con)
            {
                Ok(v) => hash_fields(v),
                Err(e) if agent_redis::is_wrong_type(&e) => continue,
                Err(e) => return Err(e.into()),
            };
            let live = rec
                .get(cluster::join_field::EXPIRES)
                .and_then(|e| e.parse::<u64>().ok())
                .is_some_and(|e| e > now);
            let (Some(pk), Some(addr)) = (
                rec.get(cluster::join_field::PUBLIC_KEY),
                rec.get(cluster::join_field::ADDRESS)
                    .and_then(|a| a.parse::<Ipv4Addr>().ok()),
            ) else {
                continue;
            };
            let Ok(peer_key) = Key::from_base64(pk) else {
                continue;
            };
            if !live || taken_addresses.contains_key(&addr) || wanted.contains_key(pk) {
                continue;
            }
            taken_addresses.insert(addr, format!("join token {id}"));
            wanted.insert(
                pk.clone(),
                (
                    peer_key,
                    WantedPeer {
                        node: format!("join token {id}"),
                        endpoint: None,
                        address: addr,
                    },
                ),
            );
        }
    }

    // 3. The peers: one update with what differs, nothing else touched.
    let known = a.iface.peer_names();
    let mut update = DeviceUpdate::new();
    let mut changes: Vec<String> = Vec::new();
    for (key, want) in wanted.values() {
        let have = local
            .device
            .peers
            .iter()
            .find(|p| p.config.public_key == *key);
        if let Some(change) = peer_change(have, want) {
            update = update.add_peer(peer_config(key, want));
            changes.push(change);
        }
    }
    for p in local.device.peers.iter().filter(|_| may_remove) {
        let b64 = p.config.public_key.to_base64();
        if !wanted.contains_key(&b64) {
            update = update.remove_peer_by_key(&p.config.public_key);
            let who = known
                .get(&b64)
                .map(|n| n.to_string())
                .unwrap_or_else(|| format!("peer {b64} (no node known)"));
            changes.push(format!("removed: {who}"));
        }
    }
    if !changes.is_empty() {
        update.apply(&local.name, local.backend).map_err(|e| {
            ToolError::Failed(format!(
                "cannot set the peers of {iface} ({}): {e}",
                backend_name(local.backend)
            ))
        })?;
    }
    let names: BTreeMap<&str, &str> = wanted
        .iter()
        .map(|(k, (_, w))| (k.as_str(), w.node.as_str()))
        .collect();
    let names = serde_json::to_string_pretty(&names).unwrap_or_default() + "\n";
    write_state(&a.iface.peers_file(), &names)?;
    if changes.is_empty() {
        println!("peers in sync ({} peer(s))", wanted.len());
    } else {
        for c in &changes {
            println!("{c}");
        }
    }
    Ok(())
}

// ---- status --------------------------------------------------------------------------------------------

fn ago(t: Option<SystemTime>) -> Option<u64> {
    t.map(|t| {
        SystemTime::now()
            .duration_since(t)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    })
}

fn human_secs(s: u64) -> String {
    match s {
        0..=59 => format!("{s} s ago"),
        60..=3599 => format!("{} min {} s ago", s / 60, s % 60),
        _ => format!("{} h {} min ago", s / 3600, s % 3600 / 60),
    }
}

fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if b < 1024 {
        return format!("{b} B");
    }
    let mut v = b as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

fn status(a: &StatusArgs) -> Result<()> {
    let iface = a.iface.interface.as_str();
    let (backend, device) = a
        .iface
        .running()?
        .ok_or_else(|| ToolError::Unavailable(format!("{iface} is not up (node-agent vpn up)")))?;
    let link = link_of(iface)?;
    let address = link.as_ref().and_then(|l| l.v4.first().copied());
    let names = a.iface.peer_names();
    let public_key = device.public_key.as_ref().map(Key::to_base64);
    let mut peers: Vec<(Option<&String>, &PeerInfo)> = device
        .peers
        .iter()
        .map(|p| (names.get(&p.config.public_key.to_base64()), p))
        .collect();
    peers.sort_by(|x, y| x.0.cmp(&y.0));
    if a.json {
        let peers: Vec<serde_json::Value> = peers
            .iter()
            .map(|(node, p)| {
                serde_json::json!({
                    "node": node,
                    "public_key": p.config.public_key.to_base64(),
                    "endpoint": p.config.endpoint.map(|e| e.to_string()),
                    "allowed_ips": p.config.allowed_ips.iter()
                        .map(|i| format!("{}/{}", i.address, i.cidr)).collect::<Vec<_>>(),
                    "latest_handshake_secs": ago(p.stats.last_handshake_time),
                    "rx_bytes": p.stats.rx_bytes,
                    "tx_bytes": p.stats.tx_bytes,
                })
            })
            .collect();
        let out = serde_json::json!({
            "interface": iface,
            "backend": backend_name(backend),
            "public_key": public_key,
            "listen_port": device.listen_port,
            "address": address.map(|a| a.to_string()),
            "link_up": link.as_ref().is_some_and(|l| l.up),
            "peers": peers,
        });
        println!("{out}");
        return Ok(());
    }
    let or_none = |s: Option<String>| s.unwrap_or_else(|| "(none)".into());
    println!("interface:   {iface}");
    println!("backend:     {}", backend_name(backend));
    println!("public key:  {}", or_none(public_key));
    println!(
        "listen port: {}",
        or_none(device.listen_port.map(|p| p.to_string()))
    );
    let state = match &link {
        None => " (no link in this network namespace)",
        Some(l) if !l.up => " (link down)",
        Some(_) => "",
    };
    println!(
        "address:     {}{state}",
        or_none(address.map(|a| a.to_string()))
    );
    println!("peers:       {}", peers.len());
    for (node, p) in &peers {
        let who = node
            .map(|n| n.to_string())
            .unwrap_or_else(|| p.config.public_key.to_base64());
        let endpoint = or_none(p.config.endpoint.map(|e| e.to_string()));
        let handshake = ago(p.stats.last_handshake_time)
            .map(human_secs)
            .unwrap_or_else(|| "never".into());
        println!(
            "  {who}  endpoint {endpoint}  handshake {handshake}  rx {}  tx {}",
            human_bytes(p.stats.rx_bytes),
            human_bytes(p.stats.tx_bytes)
        );
    }
    Ok(())
}

// ---- down ----------------------------------------------------------------------------------------------

fn down(a: &IfaceArgs) -> Result<()> {
    let iface = a.interface.as_str();
    let running = a.running()?;
    let pids = wireguard_go_pids(iface);
    let link = link_of(iface)?;
    let mut done: Vec<String> = Vec::new();
    if let Some(link) = &link {
        let wireguard =
            running.is_some() || !pids.is_empty() || link.kind.as_deref() == Some("wireguard");
        if !wireguard {
            return Err(ToolError::Config(format!(
                "{iface} is not a WireGuard interface (link kind {}): not removed",
                link.kind.as_deref().unwrap_or("unknown")
            )));
        }
        ip(&["link", "delete", "dev", iface])?;
        done.push("link deleted".into());
    }
    // wireguard-go ends with its TUN device; one that does not (or whose device is in another
    // namespace) is stopped.
    if !pids.is_empty() {
        let mut left = wait_gone(&pids, iface, Duration::from_secs(3));
        let mut how = "with its device";
        for (signal, wait, said) in [
            (
                nix::sys::signal::Signal::SIGTERM,
                Duration::from_secs(3),
                "stopped by SIGTERM",
            ),
            (
                nix::sys::signal::Signal::SIGKILL,
                Duration::from_secs(2),
                "killed",
            ),
        ] {
            if left.is_empty() {
                break;
            }
            how = said;
            for pid in &left {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), signal);
            }
            left = wait_gone(&left, iface, wait);
        }
        if !left.is_empty() {
            return Err(ToolError::Failed(format!(
                "wireguard-go of {iface} (pid {left:?}) does not end"
            )));
        }
        let list: Vec<String> = pids.iter().map(|p| p.to_string()).collect();
        done.push(format!(
            "wireguard-go (pid {}) ended {how}",
            list.join(", ")
        ));
    }
    // A control socket left by a killed wireguard-go (one that no longer answers).
    let name = a.name()?;
    let answers = Device::get(&name, Backend::Userspace).is_ok();
    for dir in SOCKET_DIRS.iter().filter(|_| !answers) {
        for ext in ["sock", "name"] {
            let p = Path::new(dir).join(format!("{iface}.{ext}"));
            if std::fs::symlink_metadata(&p).is_ok() && std::fs::remove_file(&p).is_ok() {
                done.push(format!("{} removed", p.display()));
            }
        }
    }
    remove_state(&a.backend_file())?;
    remove_state(&a.peers_file())?;
    if done.is_empty() {
        println!("{iface}: already down");
    } else {
        println!("{iface}: down ({})", done.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: VpnCmd,
    }

    fn parse(args: &[&str]) -> VpnCmd {
        use clap::Parser;
        Cli::try_parse_from(std::iter::once("vpn").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
            .cmd
    }

    /// The command lines `agentctl cluster` runs, and the defaults a sysadmin relies on.
    #[test]
    fn the_command_lines_parse_with_their_defaults() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let VpnCmd::Key(k) = parse(&["key"]) else {
            panic!()
        };
        assert_eq!(k.key_file, Path::new(DEFAULT_KEY_FILE));
        let VpnCmd::Up(u) = parse(&[
            "up",
            "--address",
            "10.5.4.1/24",
            "--port",
            "55820",
            "--interface",
            "wg-agent",
            "--backend",
            "auto",
        ]) else {
            panic!()
        };
        assert_eq!(u.backend, BackendChoice::Auto);
        assert_eq!(u.iface.state_dir, Path::new(DEFAULT_STATE_DIR));
        let VpnCmd::Sync(s) = parse(&[
            "sync",
            "--node",
            "n1",
            "--interface",
            "wg-agent",
            "--endpoint",
            "192.0.2.1:55820",
            "--redis-credentials",
            "/etc/agent/redis.env",
        ]) else {
            panic!()
        };
        assert_eq!(s.node.as_deref(), Some("n1"));
        assert_eq!(s.iface.interface, cluster::DEFAULT_INTERFACE);
        let VpnCmd::Up(u) = parse(&["up", "--address", "10.5.4.1/24"]) else {
            panic!()
        };
        assert_eq!(u.port, cluster::DEFAULT_PORT);
        assert_eq!(u.iface.interface, cluster::DEFAULT_INTERFACE);
        for (cmd, name) in [
            (parse(&["status", "--json"]), "status"),
            (parse(&["down"]), "down"),
        ] {
            assert_eq!(cmd.name(), name);
        }
    }

    #[test]
    fn addresses_are_host_addresses_of_a_cluster_network() {
        assert_eq!(
            parse_address("10.5.4.2/24").unwrap(),
            IfAddress {
                addr: Ipv4Addr::new(10, 5, 4, 2),
                prefix: 24
            }
        );
        for bad in [
            "10.5.4.0/24",
            "10.5.4.255/24",
            "10.5.4.2",
            "10.5.4.2/8",
            "10.5.4.2/31",
            "10.5.4.2/33",
            "x/24",
            "10.5.4.2/",
        ] {
            assert!(parse_address(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn endpoints_take_the_interface_port_by_default() {
        assert_eq!(
            parse_endpoint("192.0.2.1", 55820).unwrap(),
            "192.0.2.1:55820".parse().unwrap()
        );
        assert_eq!(
            parse_endpoint("192.0.2.1:1234", 55820).unwrap(),
            "192.0.2.1:1234".parse().unwrap()
        );
        assert_eq!(
            parse_endpoint("localhost", 7).unwrap().port(),
            7,
            "a name is resolved"
        );
        for bad in ["", "-x", "a b", "a/b"] {
            assert!(parse_endpoint(bad, 1).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn interface_names_are_safe_file_names() {
        assert!(interface_name("wg-agent").is_ok());
        for bad in ["", "-x", ".x", "a/b", "a b", "sixteen-chars-xx", ".."] {
            assert!(interface_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ip_json_is_read() {
        let json = r#"[{"ifname":"wg0","flags":["POINTOPOINT","UP","LOWER_UP"],
            "linkinfo":{"info_kind":"tun"},
            "addr_info":[{"family":"inet","local":"10.5.4.1","prefixlen":24},
                         {"family":"inet6","local":"fe80::1","prefixlen":64}]}]"#;
        let l = parse_link(json).unwrap().unwrap();
        assert!(l.up);
        assert_eq!(l.kind.as_deref(), Some("tun"));
        assert_eq!(l.v4, [parse_address("10.5.4.1/24").unwrap()]);
        assert_eq!(parse_link("[]").unwrap(), None);
        assert!(parse_link("nope").is_err());
    }

    #[test]
    fn hash_replies_of_both_protocols_are_read() {
        use redis::Value;
        let b = |s: &[u8]| Value::BulkString(s.to_vec());
        let resp2 = Value::Array(vec![b(b"a"), b(b"1"), b(b"bad"), b(b"\xff"), b(b"c")]);
        let m = hash_fields(resp2);
        assert_eq!(m.get("a").map(String::as_str), Some("1"));
        assert!(!m.contains_key("bad"), "not UTF-8: left out");
        assert_eq!(m.len(), 1, "a field without a value is left out");
        let resp3 = Value::Map(vec![(b(b"x"), b(b"y"))]);
        assert_eq!(hash_fields(resp3).get("x").map(String::as_str), Some("y"));
        assert!(hash_fields(Value::Nil).is_empty());
    }

    fn peer(endpoint: &str, allowed: &str, keepalive: Option<u16>) -> PeerInfo {
        let mut p = PeerInfo::from_public_key(Key::generate_private().get_public());
        p.config.endpoint = Some(endpoint.parse().unwrap());
        p.config.allowed_ips = vec![allowed.parse().unwrap()];
        p.config.persistent_keepalive_interval = keepalive;
        p
    }

    #[test]
    fn only_peers_that_differ_change() {
        let want = WantedPeer {
            node: "n2".into(),
            endpoint: Some("192.0.2.2:55820".parse().unwrap()),
            address: Ipv4Addr::new(10, 5, 4, 2),
        };
        assert!(peer_change(None, &want).unwrap().starts_with("added:   n2"));
        let same = peer("192.0.2.2:55820", "10.5.4.2/32", Some(25));
        assert_eq!(peer_change(Some(&same), &want), None);
        let moved = peer("192.0.2.9:55820", "10.5.4.2/32", Some(25));
        assert_eq!(
            peer_change(Some(&moved), &want).unwrap(),
            "updated: n2 (endpoint 192.0.2.2:55820)"
        );
        let wide = peer("192.0.2.2:55820", "10.5.4.0/24", None);
        assert_eq!(
            peer_change(Some(&wide), &want).unwrap(),
            "updated: n2 (allowed-ips 10.5.4.2/32, keepalive 25 s)"
        );
    }

    #[test]
    fn the_private_key_has_no_debug_text() {
        let k = PrivateKey(Key::generate_private());
        let b64 = k.0.to_base64();
        assert!(!format!("{k:?}").contains(&b64));
    }

    #[test]
    fn key_files_are_made_private_and_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/vpn.key");
        let (k1, made) = load_or_create_key(&path).unwrap();
        assert!(made);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        let dmeta = std::fs::metadata(path.parent().unwrap()).unwrap();
        assert_eq!(dmeta.mode() & 0o777, 0o700);
        let (k2, made) = load_or_create_key(&path).unwrap();
        assert!(!made);
        assert_eq!(k1.public(), k2.public());

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_or_create_key(&path).unwrap_err();
        assert_eq!(e.exit_code(), 78, "{e}");
        assert!(e.to_string().contains("0644"), "{e}");

        let bad = dir.path().join("bad.key");
        std::fs::write(&bad, "not a key\n").unwrap();
        std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = load_or_create_key(&bad).unwrap_err();
        assert_eq!(e.exit_code(), 78, "{e}");
        assert!(
            !e.to_string().contains("not a key"),
            "content never quoted: {e}"
        );
        assert_eq!(std::fs::read_to_string(&bad).unwrap(), "not a key\n");

        let link = dir.path().join("link.key");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &link).unwrap();
        assert_eq!(load_or_create_key(&link).unwrap_err().exit_code(), 78);
        assert!(!dir.path().join("nowhere").exists());

        let sub = dir.path().join("adir");
        std::fs::create_dir(&sub).unwrap();
        std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(load_or_create_key(&sub).unwrap_err().exit_code(), 78);
    }

    #[test]
    fn backend_names_are_the_wire_values() {
        for b in [Backend::Kernel, Backend::Userspace] {
            assert_eq!(parse_backend(backend_name(b)), Some(b));
            // wireguard-control spells them the same way.
            assert_eq!(b.to_string(), backend_name(b));
        }
        assert_eq!(parse_backend("tun"), None);
    }

    #[test]
    fn sizes_and_ages_read_well() {
        assert_eq!(human_bytes(10), "10 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024), "3.0 MiB");
        assert_eq!(human_secs(5), "5 s ago");
        assert_eq!(human_secs(125), "2 min 5 s ago");
    }
}
