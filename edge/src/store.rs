//! The cluster's certificates in Redis, stored once (`cluster/certs/<name>`): the chain in clear,
//! the key age-encrypted to the cluster's edge recipient (`cluster/edge`, field `recipient`),
//! whose identity every node keeps in `/etc/agent/edge.key` (root's, 0600). Each node's
//! `edge.sync` decrypts them and serves them all.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use core_events::edge::{self, cert, settings, HostName};
use module_secrets::{ClusterKey, Identity};
use redis::aio::ConnectionLike;
use redis::AsyncCommands;

use crate::certs::{self, CertInfo};
use crate::error::{Error, Result};
use crate::render::ServedCertificate;

/// The edge identity's file: [`edge::IDENTITY_VAR`], else [`edge::DEFAULT_IDENTITY_FILE`] (local
/// configuration, never from Redis).
pub fn identity_path() -> PathBuf {
    std::env::var_os(edge::IDENTITY_VAR)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(edge::DEFAULT_IDENTITY_FILE))
}

fn secrets_error(what: &str, e: module_secrets::Error) -> Error {
    Error::Certificate(format!("{what}: {e}"))
}

/// The cluster's edge key: its recipient in `cluster/edge`, field `recipient`.
fn edge_key(settings_key: &str) -> ClusterKey<'_> {
    ClusterKey {
        settings_key,
        field: settings::RECIPIENT,
        what: "edge",
    }
}

fn key_error(e: module_secrets::Error) -> Error {
    match e {
        module_secrets::Error::BadRecipient { value, reason, .. } => Error::Setting {
            key: edge::settings_key(),
            field: settings::RECIPIENT.into(),
            reason: format!("{value:?}: {reason}"),
        },
        e => Error::Certificate(e.to_string()),
    }
}

/// The cluster's edge identity from `path`, made (and its recipient published) when the cluster
/// has none yet. A node without the file in a cluster that has a recipient is an error: the key
/// comes from the node that made it (docs/EDGE.md).
pub async fn ensure_identity<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    path: &Path,
) -> Result<Identity> {
    let key = edge::settings_key();
    edge_key(&key).ensure(conn, path).await.map_err(key_error)
}

/// The identity to open the certificates with, when this node has it (`None`: no file).
pub fn load_identity(path: &Path) -> Result<Option<Identity>> {
    let key = edge::settings_key();
    edge_key(&key).load(path).map_err(key_error)
}

/// Checks and stores an uploaded certificate (chain and key PEM): named by its first host name,
/// replacing one of that name.
pub async fn upload<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    identity_file: &Path,
    chain_pem: &str,
    key_pem: &str,
    now: &str,
) -> Result<(HostName, CertInfo)> {
    let info = certs::inspect(chain_pem, key_pem)?;
    let name = info.store_name()?;
    let identity = ensure_identity(conn, identity_file).await?;
    put(
        conn,
        &identity,
        &name,
        &info,
        chain_pem,
        key_pem,
        cert::SOURCE_UPLOAD,
        now,
    )
    .await?;
    Ok((name, info))
}

/// Stores a checked certificate (what [`certs::inspect`] said of it) as `cluster/certs/<name>`,
/// replacing one of that name, its key encrypted to `identity`'s recipient.
#[allow(clippy::too_many_arguments)]
pub async fn put<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    identity: &Identity,
    name: &HostName,
    info: &CertInfo,
    chain_pem: &str,
    key_pem: &str,
    source: &str,
    now: &str,
) -> Result<()> {
    let sealed = module_secrets::encrypt(key_pem.as_bytes(), &identity.recipient())
        .map_err(|e| secrets_error("encrypting the key", e))?;
    let key = edge::cert_key(name);
    let names = serde_json::to_string(&info.names).expect("names serialize");
    redis::pipe()
        .atomic()
        .del(&key)
        .hset_multiple(
            &key,
            &[
                (cert::NAMES, names.as_str()),
                (cert::CHAIN, chain_pem),
                (cert::KEY, sealed.as_str()),
                (cert::SOURCE, source),
                (cert::ISSUER, info.issuer.as_str()),
                (cert::SERIAL, info.serial.as_str()),
                (cert::NOT_BEFORE, certs::rfc3339(info.not_before).as_str()),
                (cert::NOT_AFTER, certs::rfc3339(info.not_after).as_str()),
                (cert::UPDATED, now),
            ],
        )
        .query_async::<()>(conn)
        .await?;
    Ok(())
}

/// A stored certificate as listed (no key).
#[derive(Debug, Clone)]
pub struct Stored {
    pub name: String,
    pub fields: HashMap<String, String>,
}

impl Stored {
    pub fn get(&self, field: &str) -> &str {
        self.fields.get(field).map(String::as_str).unwrap_or("")
    }

    pub fn names(&self) -> Vec<String> {
        serde_json::from_str(self.get(cert::NAMES)).unwrap_or_default()
    }
}

/// Every stored certificate, by name; the key field left out.
pub async fn list<C: ConnectionLike + Send + Sync>(conn: &mut C) -> Result<Vec<Stored>> {
    let mut keys: Vec<String> = Vec::new();
    {
        let mut iter = conn.scan_match::<_, String>(edge::certs_pattern()).await?;
        while let Some(k) = iter.next_item().await {
            keys.push(k?);
        }
    }
    keys.sort();
    keys.dedup();
    let mut out = Vec::new();
    for key in keys {
        let Some(name) = edge::cert_of_key(&key) else {
            continue;
        };
        let mut fields: HashMap<String, String> = match conn.hgetall(&key).await {
            Ok(f) => f,
            // Not a hash (written by hand): not a certificate.
            Err(e) if agent_redis::is_wrong_type(&e) => continue,
            Err(e) => return Err(e.into()),
        };
        fields.remove(cert::KEY);
        out.push(Stored {
            name: name.to_string(),
            fields,
        });
    }
    Ok(out)
}

/// The certificates this node serves: every stored one whose chain and key check out with
/// `identity`; each one left out is a problem in words (never its key).
pub async fn served<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    identity: Option<&Identity>,
) -> Result<(Vec<ServedCertificate>, Vec<String>)> {
    let stored = list(conn).await?;
    let mut served = Vec::new();
    let mut problems = Vec::new();
    if stored.is_empty() {
        return Ok((served, problems));
    }
    let Some(identity) = identity else {
        problems.push(format!(
            "{} certificates not served: this node has no edge key ({})",
            stored.len(),
            identity_path().display()
        ));
        return Ok((served, problems));
    };
    for s in stored {
        let Some(name) = HostName::parse(&s.name).ok() else {
            continue;
        };
        let sealed: Option<Vec<u8>> = conn.hget(edge::cert_key(&name), cert::KEY).await?;
        let opened = sealed
            .ok_or_else(|| "no key".to_string())
            .and_then(|k| module_secrets::decrypt(&k, identity).map_err(|e| e.to_string()))
            .and_then(|k| {
                k.expose_str()
                    .map(str::to_string)
                    .ok_or_else(|| "the key is not text".to_string())
            });
        let key_pem = match opened {
            Ok(k) => k,
            Err(why) => {
                problems.push(format!("certificate {name} not served: its key: {why}"));
                continue;
            }
        };
        let chain = s.get(cert::CHAIN).to_string();
        match certs::inspect(&chain, &key_pem) {
            Ok(info) => served.push(ServedCertificate {
                name: name.to_string(),
                names: info.names,
                chain_pem: chain,
                key_pem,
                not_after: certs::rfc3339(info.not_after),
                serial: info.serial,
                source: s.get(cert::SOURCE).to_string(),
            }),
            Err(e) => problems.push(format!("certificate {name} not served: {e}")),
        }
    }
    Ok((served, problems))
}
