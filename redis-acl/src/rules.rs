//! The ACL rule lists of the security model, as pure functions of the agent's name.
//!
//! Each list is the argument list of one `ACL SETUSER <user> …` after the user name, without any
//! password rule (the operations add `>password`). Every list starts with `reset`, so applying it
//! again replaces whatever the user had: the rules are always exactly these, and running an
//! operation twice changes nothing. See `docs/SECURITY.md` for why each rule is there.
//!
//! Key patterns and channel patterns are derived from the `core_events` builders, never spelled
//! here: a renamed key or channel in the protocol moves the ACL with it.

use core_events::keys::{self, glob_escape};
use core_events::{edge, AgentKind, AgentName, EventName, Prefix};

/// The sysadmin's user: every command, key and channel.
pub const ADMIN_USER: &str = keys::ACL_ADMIN_USER;

/// Redis's built-in user of connections that never authenticate.
pub const DEFAULT_USER: &str = "default";

/// What the `default` user (every connection without credentials) may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultPolicy {
    /// Public reads: read every key, subscribe to every channel, no password; no writes, no
    /// PUBLISH, no administration.
    ReadOnly,
    /// Locked: a connection must authenticate before it can run anything. The user itself keeps
    /// every right, behind a password nobody has (a random SHA-256, no preimage): Redis replays
    /// its append-only file as the `default` user and re-checks its rights at every `EXEC`, so
    /// a restricted `default` user silently drops every transaction and multi-write script from
    /// the file at each restart (redis#14541, valkey#3983; not fixed in Debian 13's 8.0 / 8.1).
    Off,
}

/// True when `ACL LIST`'s line for the default user says it is locked as [`DefaultPolicy::Off`]
/// makes it: on, every right, a password (the password itself is random at each setting).
pub fn is_locked_default(acl_list_line: &str) -> bool {
    let words: Vec<&str> = acl_list_line.split_whitespace().collect();
    words.contains(&"on")
        && !words.contains(&"nopass")
        && words.iter().any(|w| w.starts_with('#'))
        && words.contains(&"~*")
        && words.contains(&"&*")
        && words.contains(&"+@all")
        && !words.iter().any(|w| w.starts_with('-'))
}

impl DefaultPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            DefaultPolicy::ReadOnly => "readonly",
            DefaultPolicy::Off => "off",
        }
    }
}

impl std::str::FromStr for DefaultPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "readonly" => Ok(DefaultPolicy::ReadOnly),
            "off" => Ok(DefaultPolicy::Off),
            other => Err(format!("{other:?}: expected readonly or off")),
        }
    }
}

/// The ACL user of an agent (`module-<id>`, `node-<name>`): spelled by `core_events`.
pub use core_events::keys::acl_user as agent_user;

/// Commands taken away from both agent users, beyond the `@admin` and `@dangerous` categories
/// (configuration, ACL, replication, `FLUSHALL`/`FLUSHDB`, `KEYS`, `INFO`, `CLIENT KILL|LIST`, `DEBUG`,
/// `MONITOR`, `SHUTDOWN`, `SORT`, `MIGRATE`/`RESTORE`, …). What is left is every command the engine,
/// `module-sdk` and ordinary steps send: hashes, strings, streams (`XADD`, `XACK`, `XDEL`,
/// `XGROUP CREATE`, `XRANGE`, `XLEN`, …), `EXPIRE`, `APPEND`, `DEL`, `MULTI`/`EXEC`, `EVALSHA`/`EVAL` and
/// `SCRIPT LOAD`, `SUBSCRIBE`/`PSUBSCRIBE`, `PING`, `HELLO`, `AUTH`, `CLIENT SETNAME`, `SELECT`, `SCAN`.
const CONFINED_DENIED: &[&str] = &[
    "-@admin",
    "-@dangerous",
    // Sharded pub/sub is not part of the protocol; with `&*` it would publish anywhere.
    "-spublish",
    // Redis 7 checks XREADGROUP's keys as *read* access, yet it moves entries into the reader's
    // pending list: with `%R~*` a module could take another agent's queue entries so that agent
    // never runs them. A selector gives it back on the agent's own keys only.
    "-xreadgroup",
    // Keyless commands that change state shared by every user: the function libraries, the
    // script cache, a running script (`SCRIPT KILL`), the server's allocator. `SCRIPT DEBUG SYNC`
    // blocks the whole server. Functions are not used by the agents.
    "-function|load",
    "-function|delete",
    "-function|flush",
    "-function|restore",
    "-function|kill",
    "-script|flush",
    "-script|kill",
    "-script|debug",
    "-memory|purge",
    // Server internals, like INFO (which @dangerous already removes).
    "-memory|doctor",
    "-memory|stats",
    "-memory|malloc-stats",
];

/// `~<prefix>/*`: every key of one agent.
fn own_keys(prefix: &Prefix) -> String {
    format!("~{}", prefix.key_pattern())
}

/// The channel patterns an agent may PUBLISH on: its event channels `<agent>:*` (the very pattern it
/// subscribes to), `cancel/<agent>`, `progress/<agent>/*` and `event/<agent>/*`.
pub fn own_channel_patterns(agent: &AgentName) -> Vec<String> {
    vec![
        keys::event_pattern(agent),
        glob_escape(&keys::cancel_channel(agent)),
        keys::progress_pattern(agent),
        keys::emitted_event_pattern(agent),
    ]
}

/// A Redis 7 selector that allows XREADGROUP on the given key patterns only (see
/// [`CONFINED_DENIED`]).
fn xreadgroup_selector(key_patterns: &[String]) -> String {
    format!("(+xreadgroup {})", key_patterns.join(" "))
}

/// Rules of the module user `module-<id>`: read every key, write only `module/<id>/*`; subscribe to
/// every channel, PUBLISH only on its own channels; no administration.
///
/// The root permissions allow every non-administrative command except PUBLISH on every channel
/// (`&*`, so SUBSCRIBE and PSUBSCRIBE work on anything, whatever their pattern); a selector allows
/// PUBLISH on the module's own channels and nothing else.
pub fn module_rules(id: &AgentName) -> Vec<String> {
    let own = own_keys(&Prefix::module(id.clone()));
    let mut rules: Vec<String> = ["reset", "on", "%R~*"].map(String::from).to_vec();
    rules.push(own.clone());
    rules.extend(["&*", "+@all"].map(String::from));
    rules.extend(CONFINED_DENIED.iter().map(|s| s.to_string()));
    rules.push("-publish".into());
    // Which server leads: a module's agent on a replica node follows it to the leader.
    rules.push("+role".into());
    rules.push(xreadgroup_selector(&[own]));
    let channels: Vec<String> = own_channel_patterns(id)
        .into_iter()
        .map(|p| format!("&{p}"))
        .collect();
    rules.push(format!("(+publish resetchannels {})", channels.join(" ")));
    rules
}

/// Rules of the node user `node-<name>`: read every key, write `node/<name>/*` and every module's keys
/// (`module/*`: the node-agent creates modules and their keys) and the agent name registry (it claims
/// its own name at start, `keys::agent_registry`), PUBLISH on any channel (it drives its
/// modules: events and cancels to them; channel names do not tell nodes and modules apart), and
/// `ACL` (it creates the module users; their password hashes go to `cluster/users`), plus `INFO` (replication health of the node's replica).
///
/// `+acl` lets this user give itself any permission: it is as powerful as the admin user. That
/// matches the design, where the node-agent is root on its node. The other restrictions are a guard
/// against mistakes (a step's `FLUSHALL`), not a security boundary.
pub fn node_rules(name: &AgentName) -> Vec<String> {
    let own = own_keys(&Prefix::node(name.clone()));
    let modules = format!("~{}", keys::kind_key_pattern(AgentKind::Module));
    let mut rules: Vec<String> = ["reset", "on", "%R~*"].map(String::from).to_vec();
    rules.push(own.clone());
    rules.push(modules);
    rules.push(format!("~{}", glob_escape(&keys::agent_registry())));
    // The password hashes of the agents' users, which it publishes when it makes a module's user
    // (`replicate`).
    rules.push(format!("~{}", glob_escape(&core_events::cluster::users())));
    // The edge's cluster-wide state: each node's edge.sync may issue or renew a certificate
    // (stored once, `cluster/certs/*`), hold its ACME lock and challenges (`cluster/acme/*`) and
    // publish the edge recipient when the cluster has none (`cluster/edge`).
    rules.push(format!("~{}", glob_escape(&edge::settings_key())));
    rules.push(format!("~{}", edge::certs_pattern()));
    rules.push(format!("~{}", edge::acme_pattern()));
    // Each module's backup status, written by the node that backs the module up (never by the
    // module: its user writes module/<id>/* only), and the backup recipient, published by the
    // leader when it admits a node and the cluster has none yet (`cluster/backup`). The
    // repositories are the admin's.
    rules.push(format!("~{}", core_events::backup::status_pattern()));
    rules.push(format!(
        "~{}",
        glob_escape(&core_events::backup::settings_key())
    ));
    rules.extend(["&*", "+@all"].map(String::from));
    rules.extend(CONFINED_DENIED.iter().map(|s| s.to_string()));
    // `+psync +replconf`: the node's Redis is a replica of the leader's, logged in as this user
    // (`masteruser`); `+role`: agents ask their local Redis which server leads.
    rules.extend(["+acl", "+info", "+psync", "+replconf", "+role"].map(String::from));
    rules.push(xreadgroup_selector(&[own]));
    rules
}

/// Rules of the Sentinels' user on every node's Redis (`core_events::cluster::SENTINEL_USER`): what
/// Redis Sentinel documents it needs to watch a server and reconfigure it in a failover, on the
/// Sentinels' own channel only, no key.
pub fn sentinel_rules() -> Vec<String> {
    [
        "reset",
        "on",
        "resetchannels",
        "&__sentinel__:hello",
        "-@all",
        "+multi",
        "+exec",
        "+slaveof",
        "+replicaof",
        "+ping",
        "+subscribe",
        "+publish",
        "+config|rewrite",
        "+config|get",
        "+role",
        "+info",
        "+client|setname",
        "+client|kill",
        "+script|kill",
    ]
    .map(String::from)
    .to_vec()
}

/// Rules of an agent's user, by kind.
pub fn agent_rules(kind: AgentKind, name: &AgentName) -> Vec<String> {
    match kind {
        AgentKind::Module => module_rules(name),
        AgentKind::Node => node_rules(name),
    }
}

/// Rules of a join token's user `join-<id>` (`core_events::cluster::join_acl_user`), whose
/// password is the token's secret: what a node that is not yet a member needs to ask to join —
/// read the VPN settings and records, write its request under `cluster/join/<id>/*` and read the
/// reply there, publish the leader's `cluster.admit` event. Nothing else: no other key, no other
/// channel, no administration.
pub fn join_rules(token_id: &str, leader: &AgentName, admit: &EventName) -> Vec<String> {
    vec![
        "reset".into(),
        "on".into(),
        format!("%R~{}", glob_escape(&core_events::cluster::cluster_vpn())),
        format!("%R~{}", glob_escape(&core_events::cluster::leader())),
        format!("%R~{}", core_events::cluster::node_vpn_pattern()),
        format!("~{}", core_events::cluster::join_token_keys(token_id)),
        format!(
            "%R~{}",
            glob_escape(&core_events::cluster::join_token(token_id))
        ),
        // The leader's version (its heartbeat) and the names taken: checked before asking.
        format!(
            "%R~{}",
            glob_escape(&Prefix::node(leader.clone()).heartbeat())
        ),
        format!("%R~{}", glob_escape(&keys::agent_registry())),
        "resetchannels".into(),
        format!("&{}", glob_escape(&keys::event_channel(leader, admit))),
        "-@all".into(),
        "+@connection".into(),
        "+hset".into(),
        "+hgetall".into(),
        "+hget".into(),
        "+get".into(),
        "+expireat".into(),
        "+time".into(),
        "+publish".into(),
    ]
}

/// Rules of [`ADMIN_USER`]: everything.
pub fn admin_rules() -> Vec<String> {
    ["reset", "on", "~*", "&*", "+@all"]
        .map(String::from)
        .to_vec()
}

/// Rules of the `default` user. For [`DefaultPolicy::Off`] they hold a new random password hash
/// at each call: apply them only when [`is_locked_default`] says the user is not locked yet.
pub fn default_rules(policy: DefaultPolicy) -> Vec<String> {
    if policy == DefaultPolicy::Off {
        let mut b = [0u8; 32];
        // No randomness: a fixed hash is as unguessable (no preimage is known).
        let _ = getrandom::fill(&mut b);
        let hash: String = b.iter().map(|x| format!("{x:02x}")).collect();
        return ["reset", "on", &format!("#{hash}"), "~*", "&*", "+@all"]
            .map(String::from)
            .to_vec();
    }
    let rules: &[&str] = match policy {
        DefaultPolicy::ReadOnly => &[
            "reset",
            "on",
            "nopass",
            "%R~*",
            "&*",
            "-@all",
            "+@read",
            "+@connection",
            "+@transaction",
            "+@pubsub",
            "-publish",
            "-spublish",
            // KEYS, SORT_RO, INFO, CLIENT KILL|LIST, … come back with the categories above.
            "-@dangerous",
        ],
        DefaultPolicy::Off => unreachable!("handled above"),
    };
    rules.iter().map(|s| s.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use core_events::{EventName, RunId};

    fn name(s: &str) -> AgentName {
        AgentName::new(s).unwrap()
    }

    #[test]
    fn user_names() {
        assert_eq!(
            agent_user(AgentKind::Module, &name("traefik0")),
            "module-traefik0"
        );
        assert_eq!(agent_user(AgentKind::Node, &name("node1")), "node-node1");
    }

    #[test]
    fn module_rules_write_own_keys_and_publish_own_channels() {
        let r = module_rules(&name("a.b-1"));
        assert_eq!(&r[..3], ["reset", "on", "%R~*"]);
        assert!(r.contains(&"~module/a.b-1/*".to_string()), "{r:?}");
        assert!(r.contains(&"&*".to_string()));
        assert!(r.contains(&"-publish".to_string()));
        assert!(r.contains(&"-@admin".to_string()) && r.contains(&"-@dangerous".to_string()));
        assert_eq!(r.iter().filter(|x| x.starts_with('~')).count(), 1);
        assert!(r.contains(&"(+xreadgroup ~module/a.b-1/*)".to_string()));
        assert_eq!(
            r.last().unwrap(),
            "(+publish resetchannels &a.b-1:* &cancel/a.b-1 &progress/a.b-1/* &event/a.b-1/*)"
        );
        // Nothing grants all keys for writing.
        assert!(!r.iter().any(|x| x == "~*" || x == "allkeys"));
    }

    #[test]
    fn channel_patterns_follow_the_builders() {
        let a = name("mod0");
        let pats = own_channel_patterns(&a);
        assert_eq!(pats[0], keys::event_pattern(&a));
        assert_eq!(pats[1], keys::cancel_channel(&a));
        let run = RunId::new("1700000000000-0").unwrap();
        let progress = keys::progress_channel(&a, &run);
        assert_eq!(
            format!("{}{}", pats[2].trim_end_matches('*'), run),
            progress
        );
        let ev = EventName::new("backup-done").unwrap();
        assert_eq!(
            format!("{}{}", pats[3].trim_end_matches('*'), ev),
            keys::emitted_event_channel(&a, &ev)
        );
    }

    #[test]
    fn node_rules_write_own_and_module_keys_and_manage_acl() {
        let r = node_rules(&name("node1"));
        assert!(r.contains(&"~node/node1/*".to_string()));
        assert!(r.contains(&"~module/*".to_string()));
        assert!(r.contains(&"~cluster/agents".to_string()));
        assert!(r.contains(&"~cluster/backup/status/*".to_string()));
        assert!(!r.iter().any(|x| x.starts_with("~cluster/backup/repo")));
        for edge_key in ["~cluster/edge", "~cluster/certs/*", "~cluster/acme/*"] {
            assert!(r.contains(&edge_key.to_string()), "{edge_key}: {r:?}");
        }
        assert!(r.contains(&"+acl".to_string()));
        let acl = r.iter().position(|x| x == "+acl").unwrap();
        let admin = r.iter().position(|x| x == "-@admin").unwrap();
        assert!(acl > admin, "+acl must come after -@admin: {r:?}");
        assert!(!r.contains(&"-publish".to_string()));
    }

    #[test]
    fn default_policies() {
        let ro = default_rules(DefaultPolicy::ReadOnly);
        assert!(ro.contains(&"nopass".to_string()) && ro.contains(&"%R~*".to_string()));
        assert!(ro.contains(&"-publish".to_string()));
        assert!(!ro
            .iter()
            .any(|x| x.starts_with('~') || x == "+@write" || x == "+@all"));
        let locked = default_rules(DefaultPolicy::Off);
        assert!(is_locked_default(&format!(
            "user default {}",
            locked[1..].join(" ")
        )));
        assert_ne!(
            locked,
            default_rules(DefaultPolicy::Off),
            "a new password each time"
        );
        assert!(!is_locked_default("user default on nopass ~* &* +@all"));
        assert!(!is_locked_default(&format!(
            "user default {}",
            ro[1..].join(" ")
        )));
        assert_eq!("off".parse(), Ok(DefaultPolicy::Off));
        assert_eq!("readonly".parse(), Ok(DefaultPolicy::ReadOnly));
        assert!("yes".parse::<DefaultPolicy>().is_err());
    }

    #[test]
    fn admin_has_everything() {
        assert_eq!(admin_rules(), ["reset", "on", "~*", "&*", "+@all"]);
    }
}
