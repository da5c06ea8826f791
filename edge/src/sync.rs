//! One `edge.sync`: read what this node should serve from Redis, render it, apply it through
//! Caddy's admin API, and record the outcome in `node/<name>/edge` — Caddy's refusal included, so
//! that `agentctl node status` shows it while the previous configuration goes on serving.
//!
//! **Which routes a node serves.** Those of the modules installed on it (`node/<name>/modules`),
//! to their ports on 127.0.0.1. Two routes with the same host and path (a race between two
//! `route add`, which each check for conflicts before writing) are arbitrated the same way on
//! every node: the route of the smallest module id (then route name) is served, the other is
//! refused, and its module is told with a `route-changed` event.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

pub use core_events::edge::RouteState;
use core_events::edge::{
    self, cert, certificate_action, check_route_name, settings, status, CertificateChanged, Route,
    RouteChanged, CERTIFICATE_CHANGED, EDGE_SYNC_EVENT, ROUTE_CHANGED, ROUTE_REMOVED,
};
use core_events::record::{QUEUE_FIELD_DATA, QUEUE_FIELD_EVENT};
use core_events::{keys, AgentKind, AgentName, EventName, Prefix};
use redis::aio::ConnectionLike;
use redis::AsyncCommands;

use crate::caddy::Admin;
use crate::error::{Error, Result};
use crate::render::{
    is_challenge_token, is_key_authorization, Challenge, Desired, Listen, ServedCertificate,
    ServedRoute,
};

/// The file the last applied configuration is kept in, inside the state directory: the proxy's
/// unit starts Caddy with it, so a restarted proxy serves at once what it served before.
pub const APPLIED_CONFIG: &str = "caddy.json";

/// What this node should serve, read from Redis.
#[derive(Debug)]
pub struct Gathered {
    pub desired: Desired,
    /// Every route of this node's modules (`module/route`) and what becomes of it.
    pub states: BTreeMap<String, RouteState>,
    /// Certificates left out, in words.
    pub problems: Vec<String>,
    /// The host names of every valid route of the cluster (on any node).
    pub cluster_hosts: BTreeSet<String>,
}

/// The outcome of an applied sync.
#[derive(Debug)]
pub struct Applied {
    pub sha256: String,
    /// What may go wrong although it applied ([`reload_warning`]).
    pub warning: Option<String>,
    pub states: BTreeMap<String, RouteState>,
    /// The routes whose state changed (a `route-changed` was emitted for each).
    pub changed: Vec<String>,
}

fn port_setting(fields: &HashMap<String, String>, field: &str, default: u16) -> Result<u16> {
    match fields.get(field) {
        None => Ok(default),
        Some(v) => match v.trim().parse::<u16>() {
            Ok(p) if p > 0 => Ok(p),
            _ => Err(Error::Setting {
                key: edge::settings_key(),
                field: field.into(),
                reason: format!("{v:?} is not a TCP port (1-65535)"),
            }),
        },
    }
}

/// Reads the settings, this node's modules and every module's routes.
pub async fn gather<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    node: &AgentName,
    admin: &Admin,
) -> Result<Gathered> {
    let fields: HashMap<String, String> = conn.hgetall(edge::settings_key()).await?;
    let http_port = port_setting(&fields, settings::HTTP_PORT, settings::DEFAULT_HTTP_PORT)?;
    let https_port = port_setting(&fields, settings::HTTPS_PORT, settings::DEFAULT_HTTPS_PORT)?;
    if http_port == https_port {
        return Err(Error::Setting {
            key: edge::settings_key(),
            field: settings::HTTPS_PORT.into(),
            reason: format!("the same port as {} ({http_port})", settings::HTTP_PORT),
        });
    }
    let here: Vec<String> = conn.hkeys(Prefix::node(node.clone()).modules()).await?;

    let mut keys_found: Vec<String> = Vec::new();
    {
        let mut iter = conn.scan_match::<_, String>(edge::routes_pattern()).await?;
        while let Some(k) = iter.next_item().await {
            keys_found.push(k?);
        }
    }
    keys_found.sort();
    keys_found.dedup();

    // Every valid route of the cluster, by what it matches: the conflicts are cluster-wide.
    let mut by_match: BTreeMap<(Option<String>, String), Vec<ServedRoute>> = BTreeMap::new();
    let mut states = BTreeMap::new();
    for key in &keys_found {
        let Some(module) = edge::module_of_routes_key(key) else {
            continue;
        };
        let local = here.iter().any(|m| m == module);
        let hash: HashMap<String, Vec<u8>> = conn.hgetall(key).await?;
        for (name, value) in hash {
            let id = format!("{module}/{name}");
            let parsed = check_route_name(&name)
                .map_err(|e| e.to_string())
                .and_then(|_| {
                    std::str::from_utf8(&value)
                        .map_err(|_| "the route is not UTF-8".to_string())
                        .and_then(|t| Route::from_json(t).map_err(|e| e.to_string()))
                });
            match parsed {
                Ok(route) => {
                    let (host, path) = route.match_key();
                    by_match
                        .entry((host.map(str::to_string), path.to_string()))
                        .or_default()
                        .push(ServedRoute {
                            module: module.to_string(),
                            name: name.clone(),
                            route,
                        });
                }
                Err(why) if local => {
                    states.insert(id, RouteState::Refused(format!("invalid: {why}")));
                }
                Err(_) => {}
            }
        }
    }
    let cluster_hosts: BTreeSet<String> = by_match.keys().filter_map(|(h, _)| h.clone()).collect();
    let mut routes = Vec::new();
    for ((host, path), mut claimants) in by_match {
        claimants.sort_by(|a, b| (&a.module, &a.name).cmp(&(&b.module, &b.name)));
        let winner = claimants.remove(0);
        for loser in claimants {
            if here.contains(&loser.module) {
                let reason = format!(
                    "host {} path {path} is routed to route {:?} of module {} (one host and path go to one module)",
                    host.as_deref().unwrap_or("(any)"),
                    winner.name,
                    winner.module
                );
                states.insert(
                    format!("{}/{}", loser.module, loser.name),
                    RouteState::Refused(reason),
                );
            }
        }
        if here.contains(&winner.module) {
            states.insert(
                format!("{}/{}", winner.module, winner.name),
                RouteState::Serving,
            );
            routes.push(winner);
        }
    }
    let identity = match crate::store::load_identity(&crate::store::identity_path()) {
        Ok(i) => i,
        Err(e) => {
            tracing::warn!("{e}");
            None
        }
    };
    let (certificates, problems) = crate::store::served(conn, identity.as_ref()).await?;
    let challenges = challenges(conn).await?;
    Ok(Gathered {
        problems,
        cluster_hosts,
        desired: Desired {
            listen: Listen {
                http_port,
                https_port,
                bind: bind_address()?,
                admin: admin.caddy_address(),
            },
            routes,
            certificates,
            challenges,
        },
        states,
    })
}

/// The one address to listen on ([`edge::BIND_VAR`]), when set: local configuration.
fn bind_address() -> Result<Option<std::net::IpAddr>> {
    match std::env::var(edge::BIND_VAR) {
        Ok(v) if !v.trim().is_empty() => v.trim().parse().map(Some).map_err(|_| Error::Setting {
            key: "in the environment".into(),
            field: edge::BIND_VAR.into(),
            reason: format!("{v:?} is not an IP address"),
        }),
        _ => Ok(None),
    }
}

/// The pending ACME challenges of the cluster ([`edge::acme_challenges_key`]): those whose token
/// and key authorization are well formed (they become a path and a body in the configuration;
/// anything else in the hash is left out).
async fn challenges<C: ConnectionLike + Send + Sync>(conn: &mut C) -> Result<Vec<Challenge>> {
    let all: HashMap<String, String> = match conn.hgetall(edge::acme_challenges_key()).await {
        Ok(all) => all,
        Err(e) if agent_redis::is_wrong_type(&e) => HashMap::new(),
        Err(e) => return Err(e.into()),
    };
    let mut out: Vec<Challenge> = all
        .into_iter()
        .filter(|(t, k)| is_challenge_token(t) && is_key_authorization(k))
        .map(|(token, key_authorization)| Challenge {
            token,
            key_authorization,
        })
        .collect();
    out.sort();
    Ok(out)
}

/// The nodes of the cluster (the agent registry's nodes).
pub async fn nodes<C: ConnectionLike + Send + Sync>(conn: &mut C) -> Result<Vec<AgentName>> {
    let all: BTreeMap<String, String> = conn.hgetall(keys::agent_registry()).await?;
    Ok(all
        .into_iter()
        .filter(|(_, kind)| AgentKind::parse(kind) == Some(AgentKind::Node))
        .filter_map(|(n, _)| AgentName::new(n).ok())
        .collect())
}

/// Queues an `edge.sync` on each of `nodes` (`why` is its data), so that each serves a change of
/// the cluster's certificates or challenges.
pub async fn queue_sync<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    nodes: &[AgentName],
    why: &str,
) -> Result<()> {
    for node in nodes {
        let _: String = conn
            .xadd(
                Prefix::node(node.clone()).queue(),
                "*",
                &[
                    (QUEUE_FIELD_EVENT, EDGE_SYNC_EVENT),
                    (QUEUE_FIELD_DATA, why),
                ],
            )
            .await?;
    }
    Ok(())
}

/// The kernel setting that makes a reload lose no connection: Caddy binds the new configuration's
/// listeners beside the old ones (SO_REUSEPORT) and then closes the old ones, and Linux resets
/// the connections still waiting in a closed listener's accept queue unless
/// `net.ipv4.tcp_migrate_req` is 1 (Linux ≥ 5.14), which moves them to the new listener.
/// Measured: 50 reloads under a loop of requests reset ~15 requests with it 0, none with it 1
/// (docs/EDGE.md). The package sets it (sysctl.d); a node where it is 0 is warned about.
pub const MIGRATE_REQ: &str = "/proc/sys/net/ipv4/tcp_migrate_req";

/// A warning when reloads on this node can reset connections (see [`MIGRATE_REQ`]).
pub fn reload_warning() -> Option<String> {
    match std::fs::read_to_string(MIGRATE_REQ) {
        Ok(v) if v.trim() == "1" => None,
        Ok(v) => Some(format!(
            "net.ipv4.tcp_migrate_req is {}: a reload can reset connections waiting to be accepted (sysctl -w net.ipv4.tcp_migrate_req=1; the package's /usr/lib/sysctl.d/60-agent-edge.conf sets it at boot)",
            v.trim()
        )),
        Err(e) => Some(format!(
            "{MIGRATE_REQ}: {e}: a reload can reset connections waiting to be accepted (Linux 5.14 or later moves them)"
        )),
    }
}

/// Writes `text` to `path` atomically, readable by the owner of its directory only (it holds
/// certificate keys): the proxy's user, who reads it when the proxy starts again.
fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let io = |what: String| move |source| Error::Io { what, source };
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{APPLIED_CONFIG}.tmp"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(format!("writing {}", tmp.display())))?;
    let owner = std::fs::metadata(dir).map_err(io(format!("reading {}", dir.display())))?;
    std::os::unix::fs::fchown(&f, Some(owner.uid()), Some(owner.gid())).map_err(io(format!(
        "giving {} to the directory's owner",
        tmp.display()
    )))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(io(format!("renaming to {}", path.display())))
}

/// One `edge.sync`. `now` is the time to record; `run` the run that applies (for the record of a
/// refusal). On a refusal the error is recorded in `node/<name>/edge` and returned: the step
/// fails, its run record has Caddy's message, the old configuration serves on.
pub async fn apply<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    node: &AgentName,
    admin: &Admin,
    state_dir: &Path,
    now: &str,
    run: &str,
) -> Result<Applied> {
    let status_key = edge::status_key(node);
    let gathered = match gather(conn, node, admin).await {
        Ok(g) => g,
        Err(e) => {
            record_error(conn, &status_key, &e, now, run).await?;
            return Err(e);
        }
    };
    let rendered = gathered.desired.render();
    if let Err(e) = admin.load(&rendered.json).await {
        record_error(conn, &status_key, &e, now, run).await?;
        return Err(e);
    }
    std::fs::create_dir_all(state_dir).map_err(|source| Error::Io {
        what: format!("creating {}", state_dir.display()),
        source,
    })?;
    write_private(&state_dir.join(APPLIED_CONFIG), &rendered.json)?;

    let before: Option<String> = conn.hget(&status_key, status::ROUTES).await?;
    let before: BTreeMap<String, RouteState> = before
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let states_json = serde_json::to_string(&gathered.states).expect("states serialize");
    let warning: Vec<String> = reload_warning()
        .into_iter()
        .chain(gathered.problems.iter().cloned())
        .collect();
    let warning = (!warning.is_empty()).then(|| warning.join("; "));
    let served: BTreeMap<&str, &str> = gathered
        .desired
        .certificates
        .iter()
        .map(|c| (c.name.as_str(), c.serial.as_str()))
        .collect();
    let certificates = serde_json::to_string(&served).expect("a map serializes");
    let served_before: Option<String> = conn.hget(&status_key, status::CERTIFICATES).await?;
    let served_before: BTreeMap<String, String> = served_before
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let tokens: Vec<&str> = gathered
        .desired
        .challenges
        .iter()
        .map(|c| c.token.as_str())
        .collect();
    let tokens = serde_json::to_string(&tokens).expect("a list serializes");
    redis::pipe()
        .atomic()
        .hset(
            &status_key,
            status::WARNING,
            warning.clone().unwrap_or_default(),
        )
        .hset(&status_key, status::APPLIED, now)
        .hset(&status_key, status::CONFIG_SHA256, &rendered.sha256)
        .hset(&status_key, status::ROUTES, &states_json)
        .hset(&status_key, status::CERTIFICATES, &certificates)
        .hset(&status_key, status::CHALLENGES, &tokens)
        .hdel(
            &status_key,
            &[status::ERROR, status::ERROR_AT, status::ERROR_RUN],
        )
        .query_async::<()>(conn)
        .await?;

    let mut changed = Vec::new();
    let event_name = EventName::new(ROUTE_CHANGED).expect("route-changed is an event name");
    let channel = keys::emitted_event_channel(node, &event_name);
    let gone = before
        .keys()
        .filter(|k| !gathered.states.contains_key(*k))
        .map(|k| (k.clone(), None));
    let now_states = gathered
        .states
        .iter()
        .filter(|(k, v)| before.get(*k) != Some(v))
        .map(|(k, v)| (k.clone(), Some(v.clone())));
    for (id, state) in gone.chain(now_states).collect::<Vec<_>>() {
        let (module, route) = id.split_once('/').unwrap_or((id.as_str(), ""));
        let event = RouteChanged {
            node: node.to_string(),
            module: module.to_string(),
            route: route.to_string(),
            state: state
                .as_ref()
                .map_or(ROUTE_REMOVED, RouteState::word)
                .into(),
            reason: match &state {
                Some(RouteState::Refused(why)) => Some(why.clone()),
                _ => None,
            },
        };
        let payload = serde_json::to_string(&event).expect("an event serializes");
        let _: i64 = conn.publish(&channel, payload).await?;
        changed.push(id);
    }
    certificates_changed(conn, node, &served_before, &gathered.desired.certificates).await?;
    Ok(Applied {
        sha256: rendered.sha256,
        warning,
        states: gathered.states,
        changed,
    })
}

/// Emits [`CERTIFICATE_CHANGED`] for each certificate this node serves now that it did not serve
/// before (by serial) and each it no longer serves: the node's modules that serve TLS themselves
/// reload on it.
async fn certificates_changed<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    node: &AgentName,
    before: &BTreeMap<String, String>,
    now: &[ServedCertificate],
) -> Result<()> {
    let event_name = EventName::new(CERTIFICATE_CHANGED).expect("an event name");
    let channel = keys::emitted_event_channel(node, &event_name);
    let mut events = Vec::new();
    for c in now {
        let action = match before.get(&c.name) {
            Some(serial) if *serial == c.serial => continue,
            Some(_) if c.source == cert::SOURCE_ACME => certificate_action::RENEWED,
            None if c.source == cert::SOURCE_ACME => certificate_action::ISSUED,
            _ => certificate_action::UPLOADED,
        };
        events.push(CertificateChanged {
            name: c.name.clone(),
            names: c.names.clone(),
            action: action.into(),
            source: Some(c.source.clone()),
            serial: Some(c.serial.clone()),
            not_after: Some(c.not_after.clone()),
        });
    }
    for name in before.keys() {
        if !now.iter().any(|c| &c.name == name) {
            events.push(CertificateChanged {
                name: name.clone(),
                names: Vec::new(),
                action: certificate_action::REMOVED.into(),
                source: None,
                serial: None,
                not_after: None,
            });
        }
    }
    for event in events {
        let payload = serde_json::to_string(&event).expect("an event serializes");
        let _: i64 = conn.publish(&channel, payload).await?;
    }
    Ok(())
}

async fn record_error<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    status_key: &str,
    e: &Error,
    now: &str,
    run: &str,
) -> Result<()> {
    redis::pipe()
        .atomic()
        .hset(status_key, status::ERROR, e.to_string())
        .hset(status_key, status::ERROR_AT, now)
        .hset(status_key, status::ERROR_RUN, run)
        .query_async::<()>(conn)
        .await?;
    Ok(())
}

/// The state directory's default: tmpfs, root's (the applied configuration holds keys, and a
/// reboot re-renders it at the node-agent's start).
pub const DEFAULT_STATE_DIR: &str = "/run/agent/edge";
/// Caddy's admin socket's default, in the state directory.
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/agent/edge/admin.sock";

/// The state directory and admin socket from the environment ([`edge::STATE_DIR_VAR`],
/// [`edge::ADMIN_SOCKET_VAR`]), else the defaults: local configuration of the node, never from
/// Redis (nothing from the wire becomes a path).
pub fn local_paths() -> (PathBuf, PathBuf) {
    let var = |name: &str, default: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(default))
    };
    (
        var(edge::STATE_DIR_VAR, DEFAULT_STATE_DIR),
        var(edge::ADMIN_SOCKET_VAR, DEFAULT_ADMIN_SOCKET),
    )
}
