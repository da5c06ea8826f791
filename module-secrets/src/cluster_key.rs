//! A cluster-wide age identity: one key for the cluster (the edge's certificates, the backup
//! repositories' passwords), its recipient published once in a settings hash, its secret key kept
//! by every node in a root-only file that joining nodes receive. The first node that needs it makes
//! it; a node without the file in a cluster that has one is told where it comes from.

use std::path::Path;

use redis::aio::ConnectionLike;
use redis::AsyncCommands;

use crate::{Error, Identity, KeyFile, Recipient, Result};

/// Where a cluster key's recipient is published, and what the key is called in messages.
pub struct ClusterKey<'a> {
    /// The settings hash (`cluster/edge`, `cluster/backup`).
    pub settings_key: &'a str,
    /// Its field holding the recipient.
    pub field: &'a str,
    /// "edge", "backup": the key is "the cluster's <what> key".
    pub what: &'a str,
}

impl ClusterKey<'_> {
    fn error(&self, message: String) -> Error {
        Error::ClusterKey(message)
    }

    /// The recipient as Redis has it.
    pub async fn recipient<C: ConnectionLike + Send + Sync>(
        &self,
        conn: &mut C,
    ) -> Result<Option<Recipient>> {
        let r: Option<String> = conn
            .hget(self.settings_key, self.field)
            .await
            .map_err(|e| self.error(format!("reading {}: {e}", self.settings_key)))?;
        r.map(|r| {
            Recipient::parse(r.trim()).map_err(|reason| Error::BadRecipient {
                key: format!("{} {}", self.settings_key, self.field),
                value: r.clone(),
                reason,
            })
        })
        .transpose()
    }

    /// The identity from `path`, made (and its recipient published) when the cluster has none yet.
    pub async fn ensure<C: ConnectionLike + Send + Sync>(
        &self,
        conn: &mut C,
        path: &Path,
    ) -> Result<Identity> {
        let what = self.what;
        let file = KeyFile::new(path);
        let published = self.recipient(conn).await?;
        if !file.exists() {
            if let Some(r) = published {
                return Err(self.error(format!(
                    "the cluster's {what} key (recipient {r}) is not on this node: copy {} from the node that has it (0600, root's)",
                    path.display()
                )));
            }
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| self.error(format!("creating {}: {e}", dir.display())))?;
            }
        }
        let (identity, created) = file
            .load_or_create()
            .map_err(|e| self.error(format!("the {what} key {}: {e}", path.display())))?;
        let mine = identity.recipient().to_string();
        match published {
            Some(r) if r.to_string() == mine => {}
            Some(r) => {
                return Err(self.error(format!(
                "{} is not the cluster's {what} key (its recipient is {mine}, the cluster's {r})",
                path.display()
            )))
            }
            None => {
                let set: bool = conn
                    .hset_nx(self.settings_key, self.field, &mine)
                    .await
                    .map_err(|e| self.error(format!("writing {}: {e}", self.settings_key)))?;
                if !set {
                    if created {
                        let _ = std::fs::remove_file(path);
                    }
                    return Err(self.error(format!(
                        "another node published the cluster's {what} key at the same moment: try again"
                    )));
                }
            }
        }
        Ok(identity)
    }

    /// The identity, when this node has its file (`None`: no file).
    pub fn load(&self, path: &Path) -> Result<Option<Identity>> {
        let file = KeyFile::new(path);
        if !file.exists() {
            return Ok(None);
        }
        file.load()
            .map(Some)
            .map_err(|e| self.error(format!("the {} key {}: {e}", self.what, path.display())))
    }
}
