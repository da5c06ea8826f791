//! Backups of modules with restic: the repositories of the cluster (`repo`: their records in Redis,
//! their passwords encrypted to the cluster's backup key), restic run with them (`restic`: the
//! password and credentials by environment, never in argv; its JSON read into typed reports), and
//! each module's backup status (`status`), which says `failed` until a later backup succeeds.
//!
//! Used by the node's backup steps (`node-agent backup …`) and by `agentctl backup`. Key names and
//! fields come from `core_events::backup`.

pub mod error;
pub mod repo;
pub mod restic;
pub mod schedule;
pub mod status;

pub use error::{Error, Result};
pub use repo::Repository;

/// The directory of a snapshot's tree that holds `part` ([`core_events::backup::DUMP_DIR`] or
/// [`core_events::backup::CORE_DIR`]). The node's backup step gives restic the relative paths
/// `dump` and `core` from the module's staging directory: restic lists them in the snapshot's
/// `paths` as absolute (`/home/.agent-backup/<id>/dump`) and keeps them at the top of its tree
/// (`/dump`), which is where a restore or a dump reads them.
pub fn snapshot_dir(snapshot: &restic::Snapshot, part: &str) -> Result<String> {
    let suffix = format!("/{part}");
    if snapshot.paths.iter().any(|p| p.ends_with(&suffix)) {
        Ok(suffix)
    } else {
        Err(Error::Invalid(format!(
            "snapshot {} has no {part}/ directory: it was not made by a module's backup (paths: {})",
            snapshot.short_id,
            snapshot.paths.join(", ")
        )))
    }
}

/// The core's record of the module in `snapshot` (its `core/module.json`).
pub fn core_record(
    restic: &restic::Restic<'_>,
    snapshot: &restic::Snapshot,
) -> Result<core_events::backup::CoreRecord> {
    let dir = snapshot_dir(snapshot, core_events::backup::CORE_DIR)?;
    let path = format!("{dir}/{}", core_events::backup::CORE_FILE);
    let bytes = restic.dump(&snapshot.id, &path)?;
    serde_json::from_slice(&bytes).map_err(|e| {
        Error::Invalid(format!(
            "{path} of snapshot {} is not the core's record: {e}",
            snapshot.short_id
        ))
    })
}

/// Makes hash `key` exactly `fields` and puts `name` in the set `names`, in one transaction.
async fn put_named<C: redis::aio::ConnectionLike + Send + Sync>(
    conn: &mut C,
    key: &str,
    fields: &[(&str, String)],
    names: &str,
    name: &str,
) -> Result<()> {
    redis::pipe()
        .atomic()
        .del(key)
        .hset_multiple(key, fields)
        .sadd(names, name)
        .query_async::<()>(conn)
        .await?;
    Ok(())
}

/// Deletes hash `key` and takes `name` out of the set `names`, in one transaction; false when
/// there was no such hash (a repository, a schedule).
async fn remove_named<C: redis::aio::ConnectionLike + Send + Sync>(
    conn: &mut C,
    key: &str,
    names: &str,
    name: &str,
) -> Result<bool> {
    let (deleted, _): (i64, i64) = redis::pipe()
        .atomic()
        .del(key)
        .srem(names, name)
        .query_async(conn)
        .await?;
    Ok(deleted > 0)
}

/// Now, RFC 3339 (seconds), as the status and the records write times.
pub fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}
