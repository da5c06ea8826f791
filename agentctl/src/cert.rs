//! `agentctl cert …`: the cluster's certificates, stored once for every node's edge proxy
//! (docs/EDGE.md). `upload` checks a chain and its key and stores them (the key encrypted to the
//! cluster's edge recipient), then asks every node for an `edge.sync`; `list` shows what is stored
//! and which nodes serve it; `rm` removes one.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use core_events::edge::{self, acme_order, cert, status, EDGE_SYNC_EVENT};
use core_events::AgentName;
use redis::AsyncCommands;

use crate::conn::Redis;
use ::edge as edge_crate;

/// A certificate is shown as expiring within this many days of its end.
const EXPIRING_DAYS: u64 = 30;

#[derive(Debug, Subcommand)]
pub enum CertCmd {
    /// Store a certificate and its key for every node's proxy: `cert upload --cert fullchain.pem
    /// --key privkey.pem`. Checked first (PEM, the key is the certificate's, DNS names); named by
    /// its first host name, replacing a certificate of that name. Served instead of an ACME
    /// certificate for its names.
    Upload {
        /// The certificate chain, PEM, leaf first.
        #[arg(long, value_name = "FILE")]
        cert: PathBuf,
        /// Its private key, PEM (read here, stored encrypted; never shown).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
    },
    /// The stored certificates: name, names, issuer, expiry, status, the nodes serving it.
    List {
        /// One JSON object per certificate instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove a stored certificate; every node stops serving it at its next edge.sync (queued).
    Rm {
        /// The certificate's name (its first host name).
        name: String,
    },
}

pub async fn main(redis: &Redis, cmd: CertCmd) -> Result<i32> {
    let mut conn = redis.manager().await?;
    match cmd {
        CertCmd::Upload { cert, key } => {
            let read = |p: &PathBuf| {
                let meta = std::fs::metadata(p).with_context(|| format!("{}", p.display()))?;
                if meta.len() > edge_crate::certs::PEM_MAX as u64 {
                    bail!(
                        "{}: more than {} bytes: not a PEM certificate or key",
                        p.display(),
                        edge_crate::certs::PEM_MAX
                    );
                }
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
            };
            let (chain, key_pem) = (read(&cert)?, read(&key)?);
            let now = edge_crate::certs::rfc3339(SystemTime::now());
            let (name, info) = edge_crate::store::upload(
                &mut conn,
                &edge_crate::store::identity_path(),
                &chain,
                &key_pem,
                &now,
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!(
                "certificate {name} stored: {} (issuer {}, until {})",
                info.names.join(", "),
                info.issuer,
                edge_crate::certs::rfc3339(info.not_after)
            );
            sync_every_node(&mut conn, &format!("cert upload {name}")).await?;
            Ok(0)
        }
        CertCmd::Rm { name } => {
            let host = edge::HostName::parse(&name).map_err(|e| anyhow::anyhow!("{e}"))?;
            let n: i64 = conn.del(edge::cert_key(&host)).await?;
            if n == 0 {
                println!("no certificate {host}");
                return Ok(0);
            }
            println!("certificate {host} removed");
            sync_every_node(&mut conn, &format!("cert rm {host}")).await?;
            Ok(0)
        }
        CertCmd::List { json } => list(&mut conn, json).await,
    }
}

/// Queues an edge.sync on every node, so that each serves the change.
async fn sync_every_node(conn: &mut redis::aio::ConnectionManager, why: &str) -> Result<()> {
    let nodes = edge_crate::sync::nodes(conn)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    edge_crate::sync::queue_sync(conn, &nodes, why)
        .await
        .with_context(|| format!("queuing {EDGE_SYNC_EVENT}"))?;
    let shown: Vec<&str> = nodes.iter().map(AgentName::as_str).collect();
    println!("{EDGE_SYNC_EVENT} queued on: {}", shown.join(" "));
    Ok(())
}

/// `valid`, `expiring in N days`, `EXPIRED`, `not yet valid`.
fn state(not_before: &str, not_after: &str) -> String {
    let now = SystemTime::now();
    let (Ok(from), Ok(until)) = (
        humantime::parse_rfc3339(not_before),
        humantime::parse_rfc3339(not_after),
    ) else {
        return "unknown".into();
    };
    if now < from {
        return "not yet valid".into();
    }
    match until.duration_since(now) {
        Err(_) => "EXPIRED".into(),
        Ok(left) if left < Duration::from_secs(EXPIRING_DAYS * 86_400) => {
            format!("expiring in {} days", left.as_secs() / 86_400)
        }
        Ok(_) => "valid".into(),
    }
}

async fn list(conn: &mut redis::aio::ConnectionManager, json: bool) -> Result<i32> {
    let stored = edge_crate::store::list(conn)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    // Which nodes serve what: each node's last applied configuration (name → serial).
    let mut serving: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for node in edge_crate::sync::nodes(conn)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?
    {
        let served: Option<String> = conn
            .hget(edge::status_key(&node), status::CERTIFICATES)
            .await?;
        let served: BTreeMap<String, String> = served
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default();
        for (name, serial) in served {
            serving
                .entry(name)
                .or_default()
                .push((node.to_string(), serial));
        }
    }
    let orders = edge_crate::acme::orders(conn)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut rows = Vec::new();
    for s in &stored {
        // A node still serving an earlier serial (it has not synced since a renewal) is marked.
        let nodes: Vec<String> = serving
            .get(&s.name)
            .map(|v| {
                v.iter()
                    .map(|(node, serial)| {
                        if serial == s.get(cert::SERIAL) {
                            node.clone()
                        } else {
                            format!("{node}(previous)")
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut st = state(s.get(cert::NOT_BEFORE), s.get(cert::NOT_AFTER));
        if let Some(failed) = acme_failure(&orders, &s.name) {
            st = format!("{st}; renewal failed: {failed}");
        }
        if json {
            println!(
                "{}",
                serde_json::json!({
                    "name": s.name,
                    "names": s.names(),
                    "source": s.get(cert::SOURCE),
                    "issuer": s.get(cert::ISSUER),
                    "serial": s.get(cert::SERIAL),
                    "not_before": s.get(cert::NOT_BEFORE),
                    "not_after": s.get(cert::NOT_AFTER),
                    "status": st,
                    "nodes": nodes,
                })
            );
        } else {
            rows.push(vec![
                s.name.clone(),
                s.names().join(","),
                s.get(cert::ISSUER).to_string(),
                s.get(cert::NOT_AFTER).to_string(),
                st,
                s.get(cert::SOURCE).to_string(),
                if nodes.is_empty() {
                    "(none)".into()
                } else {
                    nodes.join(",")
                },
            ]);
        }
    }
    // Names waiting for their first certificate from the ACME server.
    for (name, order) in &orders {
        if stored.iter().any(|s| &s.name == name) {
            continue;
        }
        let st = match acme_failure(&orders, name) {
            Some(failed) => format!("failed: {failed}"),
            None => match order.get(acme_order::STATE).map(String::as_str) {
                Some(acme_order::STATE_ISSUING) => format!(
                    "issuing (by {})",
                    order
                        .get(acme_order::NODE)
                        .map(String::as_str)
                        .unwrap_or("")
                ),
                other => other.unwrap_or("").to_string(),
            },
        };
        if json {
            println!(
                "{}",
                serde_json::json!({"name": name, "names": [name], "source": cert::SOURCE_ACME,
                    "status": st, "nodes": []})
            );
        } else {
            rows.push(vec![
                name.clone(),
                name.clone(),
                "-".into(),
                "-".into(),
                st,
                cert::SOURCE_ACME.into(),
                "(none)".into(),
            ]);
        }
    }
    if !json {
        if rows.is_empty() {
            println!("no certificates (agentctl cert upload --cert FILE --key FILE, or ACME: docs/EDGE.md)");
        } else {
            let header = [
                "NAME", "NAMES", "ISSUER", "EXPIRES", "STATUS", "SOURCE", "NODES",
            ];
            print!("{}", crate::explain::table(&header, &rows));
        }
    }
    Ok(0)
}

/// The error of a name's last ACME attempt, when it failed.
fn acme_failure(orders: &BTreeMap<String, HashMap<String, String>>, name: &str) -> Option<String> {
    let order = orders.get(name)?;
    (order.get(acme_order::STATE).map(String::as_str) == Some(acme_order::STATE_FAILED)).then(
        || {
            format!(
                "{} (next attempt {})",
                order
                    .get(acme_order::ERROR)
                    .map(String::as_str)
                    .unwrap_or(""),
                order
                    .get(acme_order::NEXT_ATTEMPT)
                    .map(String::as_str)
                    .unwrap_or("")
            )
        },
    )
}
