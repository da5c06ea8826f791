//! ACME HTTP-01: the cluster's certificates for routed host names, issued and renewed **once for
//! the cluster** — by whichever node's `edge.sync` finds a name without a usable certificate
//! first and takes its lock (`cluster/acme/locks/<name>`) — then stored like an uploaded one
//! (`cluster/certs/<name>`, the key age-encrypted) and served by every node.
//!
//! The challenge is answered by every node (`cluster/acme/challenges`, rendered by each node's
//! `edge.sync`): the ACME server may reach any of them through DNS. The issuing node applies it
//! itself, asks the other nodes for an `edge.sync` and waits (bounded) until they answer it too.
//! A failing name is retried with a back-off recorded in `cluster/acme/orders/<name>`, so that a
//! name whose DNS points elsewhere does not ask the ACME server at every sync.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use core_events::edge::{self, acme_account, acme_order, cert, settings, HostName};
use core_events::AgentName;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use module_secrets::Identity;
use redis::aio::ConnectionLike;
use redis::AsyncCommands;

use crate::caddy::Admin;
use crate::certs::{self, rfc3339};
use crate::error::{Error, Result};
use crate::store::{self, Stored};
use crate::sync;

/// How long a node holds a name's lock at most: an order that has not ended by then is abandoned
/// (its lock expires, another node may try).
pub const LOCK_TTL: Duration = Duration::from_secs(300);
/// How long the issuing node waits for the other nodes to answer a challenge.
pub const NODES_WAIT: Duration = Duration::from_secs(15);
/// How long the ACME server has to validate and to issue.
pub const ORDER_TIMEOUT: Duration = Duration::from_secs(90);
/// Renewal starts when less than this is left of a certificate (or a third of its lifetime,
/// whichever is shorter: Let's Encrypt's 90-day certificates renew 30 days before their end).
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 86_400);
/// The back-off after failed attempts: 1 min, doubled at each failure, at most a day.
pub const BACKOFF_FIRST: Duration = Duration::from_secs(60);
pub const BACKOFF_MAX: Duration = Duration::from_secs(86_400);

/// The ACME settings of `cluster/edge`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeSettings {
    pub directory: String,
    pub email: Option<String>,
    /// PEM of the root to trust for the directory's HTTPS.
    pub ca_pem: Option<String>,
}

fn setting(field: &str, reason: impl Into<String>) -> Error {
    Error::Setting {
        key: edge::settings_key(),
        field: field.into(),
        reason: reason.into(),
    }
}

/// Reads the ACME settings from `cluster/edge`'s fields: `None` when no directory is set (no
/// ACME). A malformed setting is an error that names the field.
pub fn settings_of(fields: &HashMap<String, String>) -> Result<Option<AcmeSettings>> {
    let field = |f: &str| {
        fields
            .get(f)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let Some(directory) = field(settings::ACME_DIRECTORY) else {
        return Ok(None);
    };
    let after_scheme = directory.strip_prefix("https://").ok_or_else(|| {
        setting(
            settings::ACME_DIRECTORY,
            format!(
                "{directory:?} is not an https:// URL (an ACME directory is served over HTTPS)"
            ),
        )
    })?;
    if directory.len() > 2048
        || after_scheme.is_empty()
        || directory
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        || directory.parse::<hyper::Uri>().is_err()
    {
        return Err(setting(
            settings::ACME_DIRECTORY,
            format!("{directory:?} is not a URL"),
        ));
    }
    let email = field(settings::ACME_EMAIL);
    if let Some(e) = &email {
        let ok = e.len() <= 254
            && e.split_once('@')
                .is_some_and(|(l, d)| !l.is_empty() && HostName::parse(d).is_ok())
            && e.chars()
                .all(|c| c.is_ascii_graphic() && !",;<>\"".contains(c));
        if !ok {
            return Err(setting(
                settings::ACME_EMAIL,
                format!("{e:?} is not an e-mail address (name@example.org)"),
            ));
        }
    }
    let ca_pem = field(settings::ACME_CA);
    if let Some(pem) = &ca_pem {
        let mut blocks = x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes());
        match blocks.next() {
            Some(Ok(b)) if b.label == "CERTIFICATE" && b.parse_x509().is_ok() => {}
            _ => {
                return Err(setting(
                    settings::ACME_CA,
                    "not a PEM certificate (the root that signs the ACME directory's HTTPS certificate)",
                ))
            }
        }
    }
    Ok(Some(AcmeSettings {
        directory,
        email,
        ca_pem,
    }))
}

/// Why a name needs a certificate from the ACME server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// No stored certificate covers it.
    Issue,
    /// Its ACME certificate is due for renewal (or expired).
    Renew,
}

/// Whether a certificate valid from `not_before` to `not_after` is due for renewal at `now`.
pub fn renewal_due(not_before: SystemTime, not_after: SystemTime, now: SystemTime) -> bool {
    let life = not_after
        .duration_since(not_before)
        .unwrap_or(Duration::ZERO);
    let window = RENEW_BEFORE.min(life / 3);
    now + window >= not_after
}

fn time_field(s: &Stored, field: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339(s.get(field)).ok()
}

/// What `hosts` need from the ACME server, given the stored certificates: a name an uploaded
/// certificate covers is never asked for (the upload wins, whatever its expiry: `agentctl cert
/// list` warns); a name with a valid ACME certificate not yet due needs nothing.
pub fn wanted(
    hosts: &BTreeSet<HostName>,
    stored: &[Stored],
    now: SystemTime,
) -> Vec<(HostName, Need)> {
    let mut out = Vec::new();
    for host in hosts {
        let covering: Vec<&Stored> = stored
            .iter()
            .filter(|s| certs::covers(&s.names(), host.as_str()))
            .collect();
        if covering
            .iter()
            .any(|s| s.get(cert::SOURCE) != cert::SOURCE_ACME)
        {
            continue;
        }
        let fresh = covering.iter().any(|s| {
            match (
                time_field(s, cert::NOT_BEFORE),
                time_field(s, cert::NOT_AFTER),
            ) {
                (Some(from), Some(until)) => !renewal_due(from, until, now),
                _ => false,
            }
        });
        if fresh {
            continue;
        }
        let need = if covering.is_empty() {
            Need::Issue
        } else {
            Need::Renew
        };
        out.push((host.clone(), need));
    }
    out
}

/// The back-off after `failures` failed attempts.
pub fn backoff(failures: u32) -> Duration {
    let factor = 1u64 << failures.saturating_sub(1).min(20);
    BACKOFF_FIRST.saturating_mul(factor as u32).min(BACKOFF_MAX)
}

/// What one name's attempt came to.
#[derive(Debug)]
pub enum Outcome {
    /// Stored as `cluster/certs/<name>` (serial, not after).
    Issued {
        name: HostName,
        need: Need,
        serial: String,
        not_after: String,
        took: Duration,
    },
    /// Another node holds the name's lock, or renewed it meanwhile, or its back-off runs.
    Skipped {
        name: HostName,
        why: String,
    },
    Failed {
        name: HostName,
        error: String,
    },
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Issued {
                name,
                need,
                serial,
                not_after,
                took,
            } => write!(
                f,
                "certificate {name} {} by ACME in {} ms: serial {serial}, until {not_after}",
                if *need == Need::Renew {
                    "renewed"
                } else {
                    "issued"
                },
                took.as_millis()
            ),
            Outcome::Skipped { name, why } => write!(f, "certificate {name}: {why}"),
            Outcome::Failed { name, error } => {
                write!(f, "certificate {name} not issued: {error}")
            }
        }
    }
}

/// A name's lock, held by this node while it asks the ACME server.
struct Lock {
    key: String,
    token: String,
}

/// Deletes the lock only when it is still ours (an expired lock may be another node's by now).
const UNLOCK: &str =
    r"if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

impl Lock {
    async fn take<C: ConnectionLike + Send + Sync>(
        conn: &mut C,
        name: &HostName,
        token: String,
    ) -> Result<Option<Lock>> {
        let key = edge::acme_lock_key(name);
        let opts = redis::SetOptions::default()
            .conditional_set(redis::ExistenceCheck::NX)
            .with_expiration(redis::SetExpiry::PX(LOCK_TTL.as_millis() as u64));
        let set: Option<String> = conn.set_options(&key, &token, opts).await?;
        Ok(set.map(|_| Lock { key, token }))
    }

    async fn release<C: ConnectionLike + Send + Sync>(self, conn: &mut C) -> Result<()> {
        let _: i64 = redis::Script::new(UNLOCK)
            .key(&self.key)
            .arg(&self.token)
            .invoke_async(conn)
            .await?;
        Ok(())
    }
}

/// Where this node is: what it needs to apply a configuration itself.
pub struct Node<'a> {
    pub name: &'a AgentName,
    pub admin: &'a Admin,
    pub state_dir: &'a Path,
    pub identity_file: &'a Path,
    /// The run that asks (recorded with the lock and in a refusal's record).
    pub run: &'a str,
}

fn now_text() -> String {
    rfc3339(SystemTime::now())
}

/// Issues or renews what this node's routes need: for each host name of the routes it serves
/// that needs a certificate ([`wanted`]), whose back-off has passed and whose lock this node
/// takes. Failures are recorded per name and returned, never raised: one name that cannot be
/// validated does not stop the others. `Ok(vec![])` when ACME is not configured.
pub async fn run<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    node: &Node<'_>,
) -> Result<Vec<Outcome>> {
    let fields: HashMap<String, String> = conn.hgetall(edge::settings_key()).await?;
    let Some(acme) = settings_of(&fields)? else {
        return Ok(Vec::new());
    };
    let gathered = sync::gather(conn, node.name, node.admin).await?;
    let hosts: BTreeSet<HostName> = gathered
        .desired
        .routes
        .iter()
        .filter_map(|r| r.route.match_key().0.and_then(|h| HostName::parse(h).ok()))
        .collect();
    tidy(conn, &gathered.cluster_hosts).await?;
    let stored = store::list(conn).await?;
    let wanted = wanted(&hosts, &stored, SystemTime::now());
    if !wanted.is_empty() {
        // A proxy that is not running cannot answer a challenge: no order is spent on it (its
        // unit asks for an edge.sync when it starts).
        node.admin.config().await?;
    }
    let mut outcomes = Vec::new();
    let mut account = None;
    for (name, need) in wanted {
        let order_key = edge::acme_order_key(&name);
        let next: Option<String> = conn.hget(&order_key, acme_order::NEXT_ATTEMPT).await?;
        if let Some(next) = next.and_then(|t| humantime::parse_rfc3339(&t).ok()) {
            if next > SystemTime::now() {
                outcomes.push(Outcome::Skipped {
                    name,
                    why: format!(
                        "the last attempt failed; the next is at {} (cluster/acme/orders/…)",
                        rfc3339(next)
                    ),
                });
                continue;
            }
        }
        let token = format!("{} {}", node.name, node.run);
        let Some(lock) = Lock::take(conn, &name, token).await? else {
            outcomes.push(Outcome::Skipped {
                name,
                why: "another node is asking the ACME server for it".into(),
            });
            continue;
        };
        // Another node may have stored it between our reading and our lock.
        let stored = store::list(conn).await?;
        let hosts_one = BTreeSet::from([name.clone()]);
        if wanted_one(&hosts_one, &stored).is_none() {
            lock.release(conn).await?;
            outcomes.push(Outcome::Skipped {
                name,
                why: "another node stored it meanwhile".into(),
            });
            continue;
        }
        let started = Instant::now();
        let _: () = redis::pipe()
            .hset(&order_key, acme_order::STATE, acme_order::STATE_ISSUING)
            .hset(&order_key, acme_order::ATTEMPTED, now_text())
            .hset(&order_key, acme_order::NODE, node.name.as_str())
            .query_async(conn)
            .await?;
        let result = issue(conn, node, &acme, &mut account, &name).await;
        let outcome = match result {
            Ok((serial, not_after)) => {
                let _: () = redis::pipe()
                    .atomic()
                    .del(&order_key)
                    .hset_multiple(
                        &order_key,
                        &[
                            (acme_order::STATE, acme_order::STATE_ISSUED),
                            (acme_order::ATTEMPTED, now_text().as_str()),
                            (acme_order::NODE, node.name.as_str()),
                        ],
                    )
                    .query_async(conn)
                    .await?;
                Outcome::Issued {
                    name: name.clone(),
                    need,
                    serial,
                    not_after,
                    took: started.elapsed(),
                }
            }
            Err(e) => {
                let failures: Option<u32> = conn
                    .hget(&order_key, acme_order::FAILURES)
                    .await
                    .ok()
                    .flatten();
                let failures = failures.unwrap_or(0).saturating_add(1);
                let next = rfc3339(SystemTime::now() + backoff(failures));
                let _: () = redis::pipe()
                    .hset(&order_key, acme_order::STATE, acme_order::STATE_FAILED)
                    .hset(&order_key, acme_order::ERROR, e.to_string())
                    .hset(&order_key, acme_order::FAILURES, failures)
                    .hset(&order_key, acme_order::NEXT_ATTEMPT, &next)
                    .hdel(&order_key, acme_order::TOKENS)
                    .query_async(conn)
                    .await?;
                Outcome::Failed {
                    name: name.clone(),
                    error: format!("{e} (attempt {failures}; the next after {next})"),
                }
            }
        };
        lock.release(conn).await?;
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

/// Takes back what no order needs any more: the record of a name no route of the cluster has (a
/// removed route's failure is not shown for ever), and the challenges of an order whose node
/// died before it ended (its state `issuing`, its lock expired).
async fn tidy<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    cluster_hosts: &BTreeSet<String>,
) -> Result<()> {
    for (name, order) in orders(conn).await? {
        let Ok(host) = HostName::parse(&name) else {
            continue;
        };
        let key = edge::acme_order_key(&host);
        let issuing =
            order.get(acme_order::STATE).map(String::as_str) == Some(acme_order::STATE_ISSUING);
        if issuing {
            let held: bool = conn.exists(edge::acme_lock_key(&host)).await?;
            if held {
                continue;
            }
            let tokens: Vec<String> = order
                .get(acme_order::TOKENS)
                .and_then(|t| serde_json::from_str(t).ok())
                .unwrap_or_default();
            if !tokens.is_empty() {
                let _: i64 = conn.hdel(edge::acme_challenges_key(), &tokens).await?;
            }
            let _: () = redis::pipe()
                .hset(&key, acme_order::STATE, acme_order::STATE_FAILED)
                .hset(
                    &key,
                    acme_order::ERROR,
                    "interrupted: the node asking the ACME server stopped before the order ended",
                )
                .hdel(&key, acme_order::TOKENS)
                .query_async(conn)
                .await?;
        }
        if !cluster_hosts.contains(&name) {
            let _: i64 = conn.del(&key).await?;
        }
    }
    Ok(())
}

/// Every name's ACME order record ([`edge::acme_order_key`]), by name.
pub async fn orders<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
) -> Result<std::collections::BTreeMap<String, HashMap<String, String>>> {
    let mut keys: Vec<String> = Vec::new();
    {
        let mut iter = conn
            .scan_match::<_, String>(edge::acme_orders_pattern())
            .await?;
        while let Some(k) = iter.next_item().await {
            keys.push(k?);
        }
    }
    let mut out = std::collections::BTreeMap::new();
    for key in keys {
        let Some(name) = edge::acme_order_of_key(&key) else {
            continue;
        };
        match conn.hgetall(&key).await {
            Ok(fields) => {
                out.insert(name.to_string(), fields);
            }
            Err(e) if agent_redis::is_wrong_type(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(out)
}

/// [`wanted`] for one name at this moment.
fn wanted_one(hosts: &BTreeSet<HostName>, stored: &[Stored]) -> Option<Need> {
    wanted(hosts, stored, SystemTime::now())
        .into_iter()
        .next()
        .map(|(_, need)| need)
}

/// An ACME client error in words, with its causes: hyper says "client error (Connect)" and
/// keeps why (a refused connection, a certificate it does not trust) in its sources.
fn acme_error(what: &str) -> impl Fn(instant_acme::Error) -> Error + '_ {
    move |e| {
        let mut text = format!("{what}: {e}");
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            let cause_text = cause.to_string();
            if !text.contains(&cause_text) {
                text.push_str(": ");
                text.push_str(&cause_text);
            }
            source = cause.source();
        }
        Error::Acme(text)
    }
}

/// The cluster's ACME account on `acme.directory`, made and stored (its credentials encrypted)
/// when the cluster has none for that directory.
async fn account<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    node: &Node<'_>,
    acme: &AcmeSettings,
    identity: &Identity,
) -> Result<Account> {
    let builder = || -> Result<instant_acme::AccountBuilder> {
        match &acme.ca_pem {
            None => Account::builder().map_err(acme_error("the HTTPS client")),
            Some(pem) => {
                // instant-acme reads the root from a file: a private one in the state directory.
                let path = node.state_dir.join("acme-ca.pem");
                std::fs::create_dir_all(node.state_dir)
                    .and_then(|()| std::fs::write(&path, pem))
                    .map_err(|source| Error::Io {
                        what: format!("writing {}", path.display()),
                        source,
                    })?;
                Account::builder_with_root(&path)
                    .map_err(acme_error(&format!("the root of {}", settings::ACME_CA)))
            }
        }
    };
    let key = edge::acme_account_key();
    let fields: HashMap<String, Vec<u8>> = conn.hgetall(&key).await?;
    let same_directory =
        fields.get(acme_account::DIRECTORY).map(Vec::as_slice) == Some(acme.directory.as_bytes());
    if let (true, Some(sealed)) = (same_directory, fields.get(acme_account::CREDENTIALS)) {
        let opened = module_secrets::decrypt(sealed, identity)
            .map_err(|e| Error::Acme(format!("opening the stored ACME account: {e}")))?;
        let creds: AccountCredentials = serde_json::from_slice(opened.expose())
            .map_err(|e| Error::Acme(format!("the stored ACME account: {e}")))?;
        return builder()?
            .from_credentials(creds)
            .await
            .map_err(acme_error(&format!(
                "the ACME directory {}",
                acme.directory
            )));
    }
    let contact = acme.email.as_ref().map(|e| format!("mailto:{e}"));
    let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
    let (account, creds) = builder()?
        .create(
            &NewAccount {
                contact: &contacts,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            acme.directory.clone(),
            None,
        )
        .await
        .map_err(acme_error(&format!(
            "creating an account at {}",
            acme.directory
        )))?;
    let json = serde_json::to_vec(&creds).expect("credentials serialize");
    let sealed = module_secrets::encrypt(&json, &identity.recipient())
        .map_err(|e| Error::Acme(format!("encrypting the ACME account: {e}")))?;
    let _: () = redis::pipe()
        .atomic()
        .del(&key)
        .hset(&key, acme_account::DIRECTORY, &acme.directory)
        .hset(&key, acme_account::CREDENTIALS, sealed)
        .hset(&key, acme_account::CREATED, now_text())
        .query_async(conn)
        .await?;
    Ok(account)
}

/// One order for `name`: its challenges answered by every node, validated, finalized with a new
/// key, the certificate stored. Returns its serial and end.
async fn issue<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    node: &Node<'_>,
    acme: &AcmeSettings,
    account_cache: &mut Option<Account>,
    name: &HostName,
) -> Result<(String, String)> {
    let identity = store::ensure_identity(conn, node.identity_file).await?;
    if account_cache.is_none() {
        *account_cache = Some(account(conn, node, acme, &identity).await?);
    }
    let account = account_cache.as_ref().expect("set above");
    let ids = [Identifier::Dns(name.to_string())];
    let mut order = account
        .new_order(&NewOrder::new(&ids))
        .await
        .map_err(acme_error("a new order"))?;

    // The challenges, written where every node's proxy answers them.
    let mut tokens = Vec::new();
    {
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.map_err(acme_error("the order's authorizations"))?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => {
                    return Err(Error::Acme(format!(
                        "an authorization for {name} is {other:?}"
                    )))
                }
            }
            let challenge = authz.challenge(ChallengeType::Http01).ok_or_else(|| {
                Error::Acme(format!(
                    "the ACME server offers no HTTP-01 challenge for {name}"
                ))
            })?;
            let token = challenge.token.clone();
            let key_authorization = challenge.key_authorization().as_str().to_string();
            if !crate::render::is_challenge_token(&token)
                || !crate::render::is_key_authorization(&key_authorization)
            {
                return Err(Error::Acme(format!(
                    "the ACME server sent a malformed challenge token {token:?}"
                )));
            }
            tokens.push(token.clone());
            // The order's record names its tokens, so that a node that dies mid-order leaves
            // nothing that [`tidy`] cannot take back.
            let _: () = redis::pipe()
                .hset(edge::acme_challenges_key(), &token, &key_authorization)
                .hset(
                    edge::acme_order_key(name),
                    acme_order::TOKENS,
                    serde_json::to_string(&tokens).expect("a list serializes"),
                )
                .query_async(conn)
                .await?;
        }
    }
    let result = validate_and_finalize(conn, node, &mut order, &tokens, name).await;
    // The challenges go whatever happened; every node stops answering them at its next sync.
    if !tokens.is_empty() {
        let _: i64 = conn.hdel(edge::acme_challenges_key(), &tokens).await?;
    }
    let (chain, key_pem) = result?;
    let info = certs::inspect(&chain, &key_pem)?;
    let now = now_text();
    store::put(
        conn,
        &identity,
        name,
        &info,
        &chain,
        &key_pem,
        cert::SOURCE_ACME,
        &now,
    )
    .await?;
    // Serve it here at once, and everywhere else at the nodes' next sync. It is stored: a
    // trouble from here on is this node's proxy's, not the order's (the next sync serves it).
    if let Err(e) = sync::apply(conn, node.name, node.admin, node.state_dir, &now, node.run).await {
        tracing::warn!("certificate {name} stored, not served here yet: {e}");
    }
    let others = other_nodes(conn, node.name).await?;
    if let Err(e) = sync::queue_sync(conn, &others, &format!("certificate {name} from ACME")).await
    {
        tracing::warn!(
            "certificate {name} stored; the other nodes serve it at their next sync: {e}"
        );
    }
    Ok((info.serial, rfc3339(info.not_after)))
}

async fn other_nodes<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    me: &AgentName,
) -> Result<Vec<AgentName>> {
    Ok(sync::nodes(conn)
        .await?
        .into_iter()
        .filter(|n| n != me)
        .collect())
}

/// Every node answers the challenges (this one at once; the others within [`NODES_WAIT`], or
/// validation goes on with those that do), then the ACME server validates, and the order is
/// finalized with a new key. Returns the chain and the key (PEM).
async fn validate_and_finalize<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    node: &Node<'_>,
    order: &mut instant_acme::Order,
    tokens: &[String],
    name: &HostName,
) -> Result<(String, String)> {
    if !tokens.is_empty() {
        sync::apply(
            conn,
            node.name,
            node.admin,
            node.state_dir,
            &now_text(),
            node.run,
        )
        .await?;
        let others = other_nodes(conn, node.name).await?;
        sync::queue_sync(conn, &others, &format!("ACME challenge for {name}")).await?;
        let deadline = Instant::now() + NODES_WAIT;
        let mut waiting = others;
        while !waiting.is_empty() && Instant::now() < deadline {
            let mut still = Vec::new();
            for n in waiting {
                let served: Option<String> = conn
                    .hget(edge::status_key(&n), edge::status::CHALLENGES)
                    .await?;
                let served: Vec<String> = served
                    .and_then(|t| serde_json::from_str(&t).ok())
                    .unwrap_or_default();
                if !tokens.iter().all(|t| served.contains(t)) {
                    still.push(n);
                }
            }
            waiting = still;
            if !waiting.is_empty() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        if !waiting.is_empty() {
            let late: Vec<&str> = waiting.iter().map(AgentName::as_str).collect();
            tracing::warn!(
                "nodes {} did not answer the challenge for {name} within {} s: validating with the others",
                late.join(", "),
                NODES_WAIT.as_secs()
            );
        }
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.map_err(acme_error("the order's authorizations"))?;
            if authz.status != AuthorizationStatus::Pending {
                continue;
            }
            if let Some(mut challenge) = authz.challenge(ChallengeType::Http01) {
                challenge
                    .set_ready()
                    .await
                    .map_err(acme_error("asking for validation"))?;
            }
        }
    }
    let retries = RetryPolicy::new()
        .initial_delay(Duration::from_millis(100))
        .backoff(1.5)
        .timeout(ORDER_TIMEOUT);
    let status = order
        .poll_ready(&retries)
        .await
        .map_err(acme_error("waiting for validation"))?;
    if status != OrderStatus::Ready {
        return Err(Error::Acme(format!(
            "the ACME server did not validate {name}: {}",
            why_invalid(order).await
        )));
    }
    let key_pem = order.finalize().await.map_err(acme_error("finalizing"))?;
    let chain = order
        .poll_certificate(&retries)
        .await
        .map_err(acme_error("waiting for the certificate"))?;
    Ok((chain, key_pem))
}

/// The challenges' errors of an invalid order, in the ACME server's words.
async fn why_invalid(order: &mut instant_acme::Order) -> String {
    let mut why = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let Ok(mut authz) = authz else { continue };
        if let Ok(state) = authz.refresh().await {
            for c in &state.challenges {
                if let Some(e) = &c.error {
                    why.push(e.to_string());
                }
            }
        }
    }
    if why.is_empty() {
        "the order is invalid".into()
    } else {
        why.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(name: &str, source: &str, from: SystemTime, until: SystemTime) -> Stored {
        let fields = HashMap::from([
            (cert::NAMES.to_string(), format!("[\"{name}\"]")),
            (cert::SOURCE.to_string(), source.to_string()),
            (cert::NOT_BEFORE.to_string(), rfc3339(from)),
            (cert::NOT_AFTER.to_string(), rfc3339(until)),
        ]);
        Stored {
            name: name.into(),
            fields,
        }
    }

    fn host(h: &str) -> HostName {
        HostName::parse(h).unwrap()
    }

    #[test]
    fn what_is_asked_for() {
        let now = SystemTime::now();
        let day = Duration::from_secs(86_400);
        let hosts: BTreeSet<HostName> = ["a.test", "b.test", "c.test", "d.test", "e.test"]
            .into_iter()
            .map(host)
            .collect();
        let certs = vec![
            // Uploaded, even expired: never asked for.
            stored("a.test", cert::SOURCE_UPLOAD, now - 100 * day, now - day),
            // ACME, 60 days left of 90: nothing.
            stored("b.test", cert::SOURCE_ACME, now - 30 * day, now + 60 * day),
            // ACME, 10 days left of 90: renewed.
            stored("c.test", cert::SOURCE_ACME, now - 80 * day, now + 10 * day),
            // ACME, 2 of 6 days left (a third): renewed.
            stored("d.test", cert::SOURCE_ACME, now - 4 * day, now + 2 * day),
        ];
        let w = wanted(&hosts, &certs, now);
        assert_eq!(
            w,
            vec![
                (host("c.test"), Need::Renew),
                (host("d.test"), Need::Renew),
                (host("e.test"), Need::Issue),
            ]
        );
    }

    #[test]
    fn backoff_doubles_to_a_day() {
        assert_eq!(backoff(1), Duration::from_secs(60));
        assert_eq!(backoff(2), Duration::from_secs(120));
        assert_eq!(backoff(5), Duration::from_secs(960));
        assert_eq!(backoff(40), BACKOFF_MAX);
    }

    #[test]
    fn settings_are_checked() {
        let f = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>()
        };
        assert_eq!(settings_of(&f(&[])).unwrap(), None);
        assert_eq!(settings_of(&f(&[("acme_directory", " ")])).unwrap(), None);
        let ok = settings_of(&f(&[
            ("acme_directory", "https://acme.example.org/dir"),
            ("acme_email", "admin@example.org"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(ok.directory, "https://acme.example.org/dir");
        assert_eq!(ok.email.as_deref(), Some("admin@example.org"));
        for (field, value, says) in [
            ("acme_directory", "http://acme.example.org/dir", "https://"),
            ("acme_directory", "https://", "not a URL"),
            ("acme_directory", "https://a b/", "not a URL"),
            ("acme_email", "nobody", "e-mail"),
            ("acme_email", "a@b@c", "e-mail"),
            ("acme_email", "a@example.org,b@x.org", "e-mail"),
            ("acme_ca", "not pem", "PEM"),
        ] {
            let mut fields = f(&[("acme_directory", "https://acme.example.org/dir")]);
            fields.insert(field.into(), value.into());
            let e = settings_of(&fields).unwrap_err().to_string();
            assert!(
                e.contains(field) && e.contains(says),
                "{field}={value:?}: {e}"
            );
        }
    }
}
