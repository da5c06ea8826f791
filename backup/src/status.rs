//! Each module's backup status (`cluster/backup/status/<id>`), written by the node that backs the
//! module up. The rule that keeps it honest: only a success sets `state` to `ok`; a failure sets
//! it to `failed`; the start of an attempt, an agent restart or a reboot touch only the attempt's
//! own fields. So a failed backup stays failed until a later backup of the module succeeds.

use std::collections::HashMap;

use core_events::backup::{self, status};
use core_events::RunStatus;
use redis::aio::ConnectionLike;
use redis::AsyncCommands;

use crate::restic::BackupSummary;
use crate::Result;

/// Records that an attempt started (its run, node and repository). `state` is left as it is.
pub async fn begin<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    module: &str,
    run: &str,
    node: &str,
    repository: &str,
) -> Result<()> {
    let key = backup::status_key(module);
    redis::pipe()
        .atomic()
        .hset_multiple(
            &key,
            &[
                (status::ATTEMPT_STARTED, crate::now().as_str()),
                (status::ATTEMPT_RUN, run),
                (status::ATTEMPT_NODE, node),
                (status::ATTEMPT_REPOSITORY, repository),
                (status::ATTEMPT_STATUS, backup::ATTEMPT_RUNNING),
            ],
        )
        .hdel(&key, &[status::ATTEMPT_ENDED, status::ATTEMPT_ERROR])
        .query_async::<()>(conn)
        .await?;
    Ok(())
}

/// Records the attempt's success: `state` = ok, and the report.
pub async fn succeed<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    module: &str,
    repository: &str,
    summary: &BackupSummary,
    duration_ms: u128,
) -> Result<()> {
    let now = crate::now();
    let key = backup::status_key(module);
    let fields: [(&str, String); 10] = [
        (status::STATE, backup::STATE_OK.into()),
        (status::ATTEMPT_STATUS, RunStatus::Done.as_str().into()),
        (status::ATTEMPT_ENDED, now.clone()),
        (status::SUCCESS_ENDED, now),
        (status::SUCCESS_SNAPSHOT, summary.snapshot_id.clone()),
        (status::SUCCESS_REPOSITORY, repository.into()),
        (
            status::SUCCESS_FILES,
            summary.total_files_processed.to_string(),
        ),
        (
            status::SUCCESS_BYTES,
            summary.total_bytes_processed.to_string(),
        ),
        (status::SUCCESS_ADDED, summary.data_added.to_string()),
        (status::SUCCESS_DURATION_MS, duration_ms.to_string()),
    ];
    redis::pipe()
        .atomic()
        .hset_multiple(&key, &fields)
        .hdel(&key, status::ATTEMPT_ERROR)
        .query_async::<()>(conn)
        .await?;
    Ok(())
}

/// Records the attempt's failure: `state` = failed until a later success.
pub async fn fail<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    module: &str,
    error: &str,
) -> Result<()> {
    let _: () = conn
        .hset_multiple(
            backup::status_key(module),
            &[
                (status::STATE, backup::STATE_FAILED),
                (status::ATTEMPT_STATUS, RunStatus::Failed.as_str()),
                (status::ATTEMPT_ENDED, crate::now().as_str()),
                (status::ATTEMPT_ERROR, error),
            ],
        )
        .await?;
    Ok(())
}

/// Records a verification: its outcome, the snapshot it restored and why it failed.
pub async fn verified<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    module: &str,
    snapshot: &str,
    error: Option<&str>,
) -> Result<()> {
    let key = backup::status_key(module);
    let state = if error.is_some() {
        backup::STATE_FAILED
    } else {
        backup::STATE_OK
    };
    let mut pipe = redis::pipe();
    pipe.atomic().hset_multiple(
        &key,
        &[
            (status::VERIFY_ENDED, crate::now().as_str()),
            (status::VERIFY_STATE, state),
            (status::VERIFY_SNAPSHOT, snapshot),
        ],
    );
    match error {
        Some(e) => pipe.hset(&key, status::VERIFY_ERROR, e),
        None => pipe.hdel(&key, status::VERIFY_ERROR),
    };
    pipe.query_async::<()>(conn).await?;
    Ok(())
}

/// A module's status fields (empty: never backed up).
pub async fn read<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    module: &str,
) -> Result<HashMap<String, String>> {
    Ok(conn.hgetall(backup::status_key(module)).await?)
}

/// Every module that has a status, sorted.
pub async fn modules<C: ConnectionLike + Send + Sync>(conn: &mut C) -> Result<Vec<String>> {
    let prefix = backup::status_key("");
    let mut keys: Vec<String> = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(backup::status_pattern())
            .arg("COUNT")
            .arg(500)
            .query_async(conn)
            .await?;
        keys.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    let mut modules: Vec<String> = keys
        .into_iter()
        .filter_map(|k| k.strip_prefix(&prefix).map(str::to_string))
        .collect();
    modules.sort();
    modules.dedup();
    Ok(modules)
}
