//! The cluster's names on the wire: the VPN record every node publishes, the cluster-wide VPN
//! settings, the leader and the join tokens. Pure like the rest of this crate: the keys, their
//! fields and the checks of what a record holds, so a record read back from Redis (written by
//! another node, or by hand) is refused with a clear reason before any of it reaches WireGuard.

use std::net::{Ipv4Addr, SocketAddr};

use crate::AgentName;

/// Default VPN network of a new cluster.
pub const DEFAULT_NETWORK: &str = "10.5.4.0/24";
/// Default UDP port WireGuard listens on.
pub const DEFAULT_PORT: u16 = 55820;
/// Default name of the node's WireGuard interface.
pub const DEFAULT_INTERFACE: &str = "wg-agent";

/// `node/<name>/vpn`: what the node publishes of its VPN end, a hash of the `vpn_field` fields.
pub fn node_vpn(node: &AgentName) -> String {
    format!("node/{node}/vpn")
}

/// `node/*/vpn`: the pattern of every node's VPN record.
pub fn node_vpn_pattern() -> String {
    "node/*/vpn".to_string()
}

/// The node name of a `node/<name>/vpn` key, when it is one.
pub fn node_of_vpn_key(key: &str) -> Option<&str> {
    key.strip_prefix("node/")?.strip_suffix("/vpn")
}

/// `cluster/vpn`: the cluster-wide VPN settings (`network`, `port`), written by `cluster create`.
pub fn cluster_vpn() -> String {
    "cluster/vpn".to_string()
}

/// `cluster/leader`: the name of the node whose Redis takes the writes.
pub fn leader() -> String {
    "cluster/leader".to_string()
}

/// `cluster/users`: the password of every agent's ACL user (`node-<name>`, `module-<id>`) as Redis
/// keeps it — the SHA-256 of the password, 64 hex digits —, a hash `user → hash`. ACL users are not
/// replicated, and after a failover any node's Redis may lead: every node-agent makes its own
/// Redis's agent users from this key (`node-agent cluster sync-users`, the `users.sync` event), with
/// the rules its own `redis-acl` derives from the user's name. Nothing but a hash comes from here.
pub fn users() -> String {
    "cluster/users".to_string()
}

/// True for what `cluster/users` may hold as a password: a SHA-256, lowercase hex.
pub fn is_password_hash(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The event every member gets when an agent's ACL user is added or removed anywhere in the
/// cluster: its Redis's agent users made those of `cluster/users` (imageroot/node-events/users.sync).
pub const USERS_EVENT: &str = "users.sync";

/// The name under which every node's Sentinel monitors the cluster's Redis.
pub const SENTINEL_MASTER: &str = "agent";
/// Sentinel's TCP port (loopback and the VPN address).
pub const SENTINEL_PORT: u16 = 26379;
/// The ACL user the Sentinels log in as on every node's Redis (not an agent's: its rules are
/// `redis_acl::sentinel_rules`). The same password opens the Sentinels themselves.
pub const SENTINEL_USER: &str = "sentinel";
/// The Sentinel credentials of this node (root, 0600): `REDIS_USER=sentinel`, its password.
pub const SENTINEL_CREDENTIALS: &str = "/etc/agent/sentinel.env";
/// How long a leader may not answer before the Sentinels call it down (ms).
pub const SENTINEL_DOWN_AFTER_MS: u32 = 2000;

/// How many Sentinels must agree that the leader is down, among `members` nodes (one Sentinel
/// each): a majority. Sentinel also needs a majority to elect the one that runs the failover, so
/// with 2 nodes nothing fails over by itself (one Sentinel alone is no majority of 2).
pub fn sentinel_quorum(members: usize) -> usize {
    members / 2 + 1
}

/// `min-replicas-to-write` of every node's Redis among `members` nodes: from 3 nodes on, a leader
/// cut off from every replica refuses writes (the side of a partition that may elect a new
/// leader has them); with 1 or 2 nodes nothing fails over by itself, and a leader that refused
/// writes whenever its only member is down would stop the cluster for nothing.
pub fn min_replicas_to_write(members: usize) -> usize {
    usize::from(members >= 3)
}

/// How far behind (s) a replica may be and still count for `min-replicas-to-write`.
pub const MIN_REPLICAS_MAX_LAG: u32 = 10;

/// The event a node-agent queues for itself when it starts again on a new leader after a
/// failover (`AGENT_LEADER_EVENT` in node-agent.service): the node whose Redis now leads records
/// itself in `cluster/leader` (imageroot/node-events/cluster.leader).
pub const LEADER_EVENT: &str = "cluster.leader";

/// The leader's event that admits a node asking to join with a token (published by the token's
/// ACL user, the only channel it may publish on).
pub const ADMIT_EVENT: &str = "cluster.admit";

/// A joining node's own last event, queued on the leader for it once its agent works there:
/// the full mesh of peers (imageroot/node-events/cluster.join).
pub const JOIN_EVENT: &str = "cluster.join";

/// A member's event that takes it out of the cluster (`agentctl cluster remove-node`):
/// imageroot/node-events/cluster.leave.
pub const LEAVE_EVENT: &str = "cluster.leave";

/// The event every member gets when a node joins or leaves: its peers made those in Redis again
/// (imageroot/node-events/vpn.sync).
pub const PEERS_EVENT: &str = "vpn.sync";

/// Fields of `node/<name>/vpn`.
pub mod vpn_field {
    /// WireGuard public key, base64 (44 characters).
    pub const PUBLIC_KEY: &str = "public_key";
    /// `host:port` other nodes send their WireGuard packets to.
    pub const ENDPOINT: &str = "endpoint";
    /// The node's address inside the VPN (IPv4, no prefix length).
    pub const ADDRESS: &str = "address";
    /// `kernel` or `userspace`: which WireGuard implementation the node runs.
    pub const BACKEND: &str = "backend";
}

/// The values of `vpn_field::BACKEND`: which WireGuard implementation runs a node's interface.
pub mod vpn_backend {
    /// The kernel's WireGuard (the `wireguard` module).
    pub const KERNEL: &str = "kernel";
    /// wireguard-go, the userspace implementation (a TUN device and a daemon per interface).
    pub const USERSPACE: &str = "userspace";
    /// Every value a record may hold.
    pub const ALL: [&str; 2] = [KERNEL, USERSPACE];
}

/// Fields of `cluster/vpn`.
pub mod cluster_vpn_field {
    /// The VPN network, `a.b.c.d/len`.
    pub const NETWORK: &str = "network";
    /// The UDP port every node listens on unless its endpoint says otherwise.
    pub const PORT: &str = "port";
}

/// Why a VPN record is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VpnRecordError {
    #[error("field {0} is missing")]
    Missing(&'static str),
    #[error("public_key {0:?} is not a base64 WireGuard key (44 characters)")]
    PublicKey(String),
    #[error("endpoint {0:?} is not an address:port")]
    Endpoint(String),
    #[error("address {0:?} is not an IPv4 address")]
    Address(String),
    #[error("backend {0:?} is neither kernel nor userspace")]
    Backend(String),
}

/// A node's VPN record, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VpnRecord {
    pub public_key: String,
    pub endpoint: SocketAddr,
    pub address: Ipv4Addr,
    pub backend: String,
}

impl VpnRecord {
    /// Checks the fields of a `node/<name>/vpn` hash.
    pub fn parse<'a>(
        mut field: impl FnMut(&str) -> Option<&'a str>,
    ) -> Result<VpnRecord, VpnRecordError> {
        let mut get = |name: &'static str| field(name).ok_or(VpnRecordError::Missing(name));
        let public_key = get(vpn_field::PUBLIC_KEY)?;
        if !is_wireguard_key(public_key) {
            return Err(VpnRecordError::PublicKey(public_key.to_string()));
        }
        let endpoint = get(vpn_field::ENDPOINT)?;
        let endpoint: SocketAddr = endpoint
            .parse()
            .map_err(|_| VpnRecordError::Endpoint(endpoint.to_string()))?;
        let address = get(vpn_field::ADDRESS)?;
        let address: Ipv4Addr = address
            .parse()
            .map_err(|_| VpnRecordError::Address(address.to_string()))?;
        let backend = get(vpn_field::BACKEND)?;
        if !matches!(backend, "kernel" | "userspace") {
            return Err(VpnRecordError::Backend(backend.to_string()));
        }
        Ok(VpnRecord {
            public_key: public_key.to_string(),
            endpoint,
            address,
            backend: backend.to_string(),
        })
    }
}

/// True for the text form of a WireGuard key: 32 bytes in standard base64 with padding.
pub fn is_wireguard_key(s: &str) -> bool {
    s.len() == 44
        && s.ends_with('=')
        && s[..43]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
        // The last character before the padding carries 2 spare bits, which must be zero.
        && matches!(s.as_bytes()[42], b'A' | b'E' | b'I' | b'M' | b'Q' | b'U' | b'Y' | b'c' | b'g' | b'k' | b'o' | b's' | b'w' | b'0' | b'4' | b'8')
}

/// An endpoint as typed (`HOST`, `HOST:PORT`, an IP address, `[v6]:PORT`) checked and given
/// `port` when it has none, ready to resolve (`ToSocketAddrs`). Pure: the resolving is the
/// caller's.
pub fn endpoint_with_port(s: &str, port: u16) -> Result<String, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a.to_string());
    }
    if let Ok(ip) = s.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, port).to_string());
    }
    if s.is_empty() || s.starts_with('-') || s.chars().any(|c| c.is_whitespace() || c == '/') {
        return Err(format!("{s:?} is not HOST[:PORT]"));
    }
    Ok(match s.rsplit_once(':') {
        Some((_, p)) if p.parse::<u16>().is_ok() => s.to_string(),
        _ => format!("{s}:{port}"),
    })
}

/// An IPv4 network `a.b.c.d/len`, as the cluster's VPN network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Net {
    pub base: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Net {
    /// Parses `a.b.c.d/len` with `len` in 16..=30 and no host bits set.
    pub fn parse(s: &str) -> Result<Ipv4Net, String> {
        let (a, l) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?}: expected a.b.c.d/len"))?;
        let base: Ipv4Addr = a
            .parse()
            .map_err(|_| format!("{a:?} is not an IPv4 address"))?;
        let prefix: u8 = l
            .parse()
            .ok()
            .filter(|p| (16..=30).contains(p))
            .ok_or_else(|| format!("{l:?}: the prefix length must be 16 to 30"))?;
        let net = Ipv4Net { base, prefix };
        if u32::from(base) & !net.mask() != 0 {
            return Err(format!(
                "{s}: host bits are set (network {})",
                net.network()
            ));
        }
        Ok(net)
    }

    fn mask(&self) -> u32 {
        u32::MAX << (32 - self.prefix)
    }

    fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.base) & self.mask())
    }

    /// True when `a` is a host address of this network (not the network or broadcast address).
    pub fn contains_host(&self, a: Ipv4Addr) -> bool {
        let a = u32::from(a);
        let base = u32::from(self.base);
        a & self.mask() == base && a != base && a != base | !self.mask()
    }

    /// The host addresses in order (the first is the leader's by convention).
    pub fn hosts(&self) -> impl Iterator<Item = Ipv4Addr> {
        let base = u32::from(self.base);
        let last = base | !self.mask();
        (base + 1..last).map(Ipv4Addr::from)
    }
}

impl std::fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

/// `cluster/join/<id>`: a join token's record on the leader, a hash of the `join_field` fields,
/// expiring with the token. The token's secret is not in it: it is the password of the token's
/// ACL user ([`join_acl_user`]), which Redis keeps only as a SHA-256 hash.
pub fn join_token(id: &str) -> String {
    format!("cluster/join/{id}")
}

/// `cluster/join/*`: every join token's record (and the keys under them).
pub fn join_token_pattern() -> String {
    "cluster/join/*".to_string()
}

/// The token id of a `cluster/join/<id>` key, when it is one (and not a key below it).
pub fn token_of_join_key(key: &str) -> Option<&str> {
    let id = key.strip_prefix("cluster/join/")?;
    is_token_id(id).then_some(id)
}

/// The Redis ACL user a joining node logs in as with a token: `join-<id>`. No kind is called
/// `join`, so it cannot collide with an agent's user (`keys::acl_user`).
pub fn join_acl_user(id: &str) -> String {
    format!("join-{id}")
}

/// The key pattern the token's ACL user may write: `cluster/join/<id>/*` (its request, the reply).
pub fn join_token_keys(id: &str) -> String {
    format!("cluster/join/{id}/*")
}

/// `cluster/join/<id>/<node>/request`: what a node asking to join with token `<id>` says of
/// itself (`join_request_field`), written with the token's ACL user.
pub fn join_request(id: &str, node: &AgentName) -> String {
    format!("cluster/join/{id}/{node}/request")
}

/// `cluster/join/<id>/<node>/reply`: the leader's answer (`join_reply_field`); what is secret in
/// it is encrypted to the age recipient of the request.
pub fn join_reply(id: &str, node: &AgentName) -> String {
    format!("cluster/join/{id}/{node}/reply")
}

/// Fields of a join request.
pub mod join_request_field {
    /// The joining node's own WireGuard public key.
    pub const PUBLIC_KEY: &str = "public_key";
    /// Where the other nodes reach it, `address:port`.
    pub const ENDPOINT: &str = "endpoint";
    /// Its WireGuard implementation, `kernel` or `userspace`.
    pub const BACKEND: &str = "backend";
    /// The version of the joining node's agentctl.
    pub const VERSION: &str = "version";
    /// An age recipient (`age1…`) the reply's secrets are encrypted to.
    pub const RECIPIENT: &str = "recipient";
    /// Random text of this attempt, echoed by the reply: an answer to an earlier attempt is not
    /// taken for this one's.
    pub const NONCE: &str = "nonce";
}

/// Fields of a join reply.
pub mod join_reply_field {
    /// The node's VPN address.
    pub const ADDRESS: &str = "address";
    /// The leader's name.
    pub const LEADER: &str = "leader";
    /// age-armored JSON with the node's and the admin's Redis passwords.
    pub const SECRETS: &str = "secrets";
    /// Set instead of the others when the leader refuses: why.
    pub const REFUSED: &str = "refused";
    /// The request's nonce.
    pub const NONCE: &str = "nonce";
}

/// The secrets of a join reply, as JSON before encryption: the Redis passwords the joining node
/// takes for its own ACL user and for the admin (every node's Redis has the same users).
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JoinSecrets {
    pub node_password: String,
    pub admin_password: String,
    /// The password of the Sentinels and of their Redis user ([`SENTINEL_USER`]); absent in the
    /// answer of a leader without Sentinel.
    #[serde(default)]
    pub sentinel_password: Option<String>,
    /// The cluster's edge identity (an age secret key: it opens the certificates' keys,
    /// docs/EDGE.md), which the joining node keeps as its own; absent when the leader has none.
    #[serde(default)]
    pub edge_identity: Option<String>,
    /// The cluster's backup identity (it opens the repositories' passwords, docs/BACKUP.md);
    /// absent when the leader has none (no repository was added yet).
    #[serde(default)]
    pub backup_identity: Option<String>,
}

impl std::fmt::Debug for JoinSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JoinSecrets(..)")
    }
}

/// Fields of `cluster/join/<id>`.
pub mod join_field {
    /// The token's WireGuard public key: the leader's peer for a node that joins with it.
    pub const PUBLIC_KEY: &str = "public_key";
    /// The VPN address a joining node uses until it has its own.
    pub const ADDRESS: &str = "address";
    /// Expiry, seconds since the epoch (the key also expires then).
    pub const EXPIRES: &str = "expires";
    /// How many more nodes may join with it.
    pub const USES_LEFT: &str = "uses_left";
    /// When it was made, seconds since the epoch.
    pub const CREATED: &str = "created";
}

/// True for a token id: 8 lowercase hexadecimal digits.
pub fn is_token_id(s: &str) -> bool {
    s.len() == 8 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// What a join token carries: enough for a new node to reach the leader over WireGuard (the
/// token's own key pair, the leader's key and VPN address) and to log in to its Redis (the token's
/// id and secret). The leader keeps the public half of the key and a hash of the secret only.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub id: String,
    /// 24 random bytes.
    pub secret: [u8; 24],
    /// The token's WireGuard private key.
    pub private_key: [u8; 32],
    pub leader_public_key: [u8; 32],
    pub leader_address: Ipv4Addr,
    /// The VPN address the joining node uses until it has its own.
    pub join_address: Ipv4Addr,
    /// The VPN network's prefix length.
    pub prefix: u8,
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinToken")
            .field("id", &self.id)
            .field("leader_address", &self.leader_address)
            .finish_non_exhaustive()
    }
}

/// The text a join token starts with; the number is its format's version.
pub const JOIN_TOKEN_PREFIX: &str = "agentjoin1-";

/// Why a join token's text is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinTokenError {
    #[error("a join token starts with {JOIN_TOKEN_PREFIX} (is it the whole token, from `agentctl cluster token`?)")]
    Prefix,
    #[error("the join token is damaged (not base64url, or the wrong length): copy it again")]
    Damaged,
}

const TOKEN_BYTES: usize = 4 + 24 + 32 + 32 + 4 + 4 + 1;

impl JoinToken {
    /// The secret as the token's ACL user's password (hex).
    pub fn password(&self) -> String {
        self.secret.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The text form: [`JOIN_TOKEN_PREFIX`] then base64url of the fields.
    pub fn encode(&self) -> String {
        use base64::Engine as _;
        let mut b = Vec::with_capacity(TOKEN_BYTES);
        let id = u32::from_str_radix(&self.id, 16).unwrap_or(0);
        b.extend_from_slice(&id.to_be_bytes());
        b.extend_from_slice(&self.secret);
        b.extend_from_slice(&self.private_key);
        b.extend_from_slice(&self.leader_public_key);
        b.extend_from_slice(&self.leader_address.octets());
        b.extend_from_slice(&self.join_address.octets());
        b.push(self.prefix);
        format!(
            "{JOIN_TOKEN_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
        )
    }

    /// Parses the text form (surrounding white space ignored).
    pub fn decode(text: &str) -> Result<JoinToken, JoinTokenError> {
        use base64::Engine as _;
        let body = text
            .trim()
            .strip_prefix(JOIN_TOKEN_PREFIX)
            .ok_or(JoinTokenError::Prefix)?;
        let b = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| JoinTokenError::Damaged)?;
        if b.len() != TOKEN_BYTES {
            return Err(JoinTokenError::Damaged);
        }
        let take = |from: usize, n: usize| &b[from..from + n];
        let arr = |from: usize| -> [u8; 32] { take(from, 32).try_into().expect("32 bytes") };
        let ip = |from: usize| Ipv4Addr::new(b[from], b[from + 1], b[from + 2], b[from + 3]);
        let prefix = b[TOKEN_BYTES - 1];
        if !(16..=30).contains(&prefix) {
            return Err(JoinTokenError::Damaged);
        }
        Ok(JoinToken {
            id: format!(
                "{:08x}",
                u32::from_be_bytes(take(0, 4).try_into().expect("4 bytes"))
            ),
            secret: take(4, 24).try_into().expect("24 bytes"),
            private_key: arr(28),
            leader_public_key: arr(60),
            leader_address: ip(92),
            join_address: ip(96),
            prefix,
        })
    }
}

/// The node's VPN settings, written by `agentctl cluster` (create, join): `KEY=VALUE` lines read
/// by the `agent-vpn` unit (`EnvironmentFile=`), by `agentctl node setup` (Redis listens on the VPN
/// address) and by the node's VPN and cluster tools.
pub const VPN_ENV: &str = "/etc/agent/vpn.env";

/// The node's VPN settings as `vpn.env` holds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalVpn {
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub port: u16,
    pub interface: String,
    pub backend: String,
    pub endpoint: String,
    /// The leader's VPN address, on a node that is not the leader (its Redis replicates it).
    pub leader: Option<Ipv4Addr>,
}

impl LocalVpn {
    /// The file's text.
    pub fn text(&self) -> String {
        format!(
            "# Written by `agentctl cluster`: this node's VPN (read by agent-vpn.service and\n\
             # `agentctl node setup`). Do not edit: run agentctl cluster again.\n\
             VPN_ADDRESS={}\nVPN_PREFIX={}\nVPN_PORT={}\nVPN_INTERFACE={}\nVPN_BACKEND={}\nVPN_ENDPOINT={}\n",
            self.address, self.prefix, self.port, self.interface, self.backend, self.endpoint
        ) + &self
            .leader
            .map(|l| format!("VPN_LEADER={l}\n"))
            .unwrap_or_default()
    }

    /// Parses the file's text; `None` when a setting is missing or malformed.
    pub fn parse(text: &str) -> Option<LocalVpn> {
        let get = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
                .map(str::trim)
        };
        Some(LocalVpn {
            address: get("VPN_ADDRESS")?.parse().ok()?,
            prefix: get("VPN_PREFIX")?.parse().ok()?,
            port: get("VPN_PORT")?.parse().ok()?,
            interface: get("VPN_INTERFACE")?.to_string(),
            backend: get("VPN_BACKEND")?.to_string(),
            endpoint: get("VPN_ENDPOINT")?.to_string(),
            leader: match get("VPN_LEADER") {
                Some(l) => Some(l.parse().ok()?),
                None => None,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked() {
        assert!(is_wireguard_key(
            "YK9sKzt+nkV4mtoo1YMbNeuzvoK5jiQbuIr8Yx1YqWE="
        ));
        assert!(!is_wireguard_key(
            "YK9sKzt+nkV4mtoo1YMbNeuzvoK5jiQbuIr8Yx1YqWF="
        ));
        assert!(!is_wireguard_key("short="));
        assert!(!is_wireguard_key(
            "YK9sKzt+nkV4mtoo1YMbNeuzvoK5jiQbuIr8Yx1Yq\nE="
        ));
    }

    #[test]
    fn records_are_checked() {
        let ok = [
            ("public_key", "YK9sKzt+nkV4mtoo1YMbNeuzvoK5jiQbuIr8Yx1YqWE="),
            ("endpoint", "192.0.2.1:55820"),
            ("address", "10.5.4.1"),
            ("backend", "userspace"),
        ];
        let rec = VpnRecord::parse(|f| ok.iter().find(|(k, _)| *k == f).map(|(_, v)| *v)).unwrap();
        assert_eq!(rec.address, Ipv4Addr::new(10, 5, 4, 1));
        for (field, bad) in [
            ("endpoint", "192.0.2.1"),
            ("address", "10.5.4.1/24"),
            ("backend", "tun"),
        ] {
            let e = VpnRecord::parse(|f| {
                if f == field {
                    Some(bad)
                } else {
                    ok.iter().find(|(k, _)| *k == f).map(|(_, v)| *v)
                }
            });
            assert!(e.is_err(), "{field}={bad}");
        }
        assert_eq!(
            VpnRecord::parse(|_| None),
            Err(VpnRecordError::Missing("public_key"))
        );
    }

    #[test]
    fn the_backend_values_are_what_records_accept() {
        let rec = |backend: &'static str| {
            let fields = [
                (
                    vpn_field::PUBLIC_KEY,
                    "YK9sKzt+nkV4mtoo1YMbNeuzvoK5jiQbuIr8Yx1YqWE=",
                ),
                (vpn_field::ENDPOINT, "192.0.2.1:55820"),
                (vpn_field::ADDRESS, "10.5.4.1"),
                (vpn_field::BACKEND, backend),
            ];
            VpnRecord::parse(move |f| fields.iter().find(|(k, _)| *k == f).map(|(_, v)| *v))
        };
        for b in vpn_backend::ALL {
            assert_eq!(rec(b).unwrap().backend, b);
        }
        assert_eq!(rec("Kernel"), Err(VpnRecordError::Backend("Kernel".into())));
    }

    #[test]
    fn networks_are_checked() {
        let n = Ipv4Net::parse("10.5.4.0/24").unwrap();
        assert_eq!(n.hosts().next(), Some(Ipv4Addr::new(10, 5, 4, 1)));
        assert_eq!(n.hosts().count(), 254);
        assert!(n.contains_host(Ipv4Addr::new(10, 5, 4, 254)));
        assert!(!n.contains_host(Ipv4Addr::new(10, 5, 4, 255)));
        assert!(!n.contains_host(Ipv4Addr::new(10, 5, 5, 1)));
        for bad in [
            "10.5.4.1/24",
            "10.5.4.0",
            "10.5.4.0/8",
            "10.5.4.0/31",
            "x/24",
        ] {
            assert!(Ipv4Net::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn join_tokens_round_trip_and_damage_is_refused() {
        let t = JoinToken {
            id: "0a1b2c3d".into(),
            secret: [7; 24],
            private_key: [1; 32],
            leader_public_key: [2; 32],
            leader_address: Ipv4Addr::new(10, 5, 4, 1),
            join_address: Ipv4Addr::new(10, 5, 4, 254),
            prefix: 24,
        };
        let text = t.encode();
        assert!(text.starts_with(JOIN_TOKEN_PREFIX));
        assert_eq!(JoinToken::decode(&format!(" {text}\n")).unwrap(), t);
        assert!(!format!("{t:?}").contains("secret"));
        assert_eq!(JoinToken::decode("abc"), Err(JoinTokenError::Prefix));
        assert_eq!(
            JoinToken::decode(&text[..text.len() - 2]),
            Err(JoinTokenError::Damaged)
        );
        assert_eq!(
            JoinToken::decode(&format!("{text}!")),
            Err(JoinTokenError::Damaged)
        );
        assert_eq!(t.password().len(), 48);
        assert!(is_token_id(&t.id));
        assert_eq!(token_of_join_key("cluster/join/0a1b2c3d"), Some("0a1b2c3d"));
        assert_eq!(token_of_join_key("cluster/join/0a1b2c3d/request"), None);
    }

    #[test]
    fn vpn_env_round_trips() {
        let v = LocalVpn {
            address: Ipv4Addr::new(10, 5, 4, 1),
            prefix: 24,
            port: 55820,
            interface: "wg-agent".into(),
            backend: "auto".into(),
            endpoint: "192.0.2.1:55820".into(),
            leader: None,
        };
        assert_eq!(LocalVpn::parse(&v.text()), Some(v.clone()));
        let worker = LocalVpn {
            leader: Some(Ipv4Addr::new(10, 5, 4, 1)),
            ..v
        };
        assert_eq!(LocalVpn::parse(&worker.text()), Some(worker));
        assert_eq!(LocalVpn::parse("VPN_ADDRESS=x\n"), None);
    }

    #[test]
    fn endpoints_get_the_default_port() {
        assert_eq!(
            endpoint_with_port("192.0.2.1", 55820).unwrap(),
            "192.0.2.1:55820"
        );
        assert_eq!(
            endpoint_with_port("192.0.2.1:1234", 1).unwrap(),
            "192.0.2.1:1234"
        );
        assert_eq!(
            endpoint_with_port("node1.example", 7).unwrap(),
            "node1.example:7"
        );
        assert_eq!(endpoint_with_port("::1", 7).unwrap(), "[::1]:7");
        for bad in ["", "-x", "a b", "a/b"] {
            assert!(endpoint_with_port(bad, 7).is_err(), "{bad:?}");
        }
    }
}
