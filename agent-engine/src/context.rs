//! What every task of one agent shares: its configuration, its shutdown signal, the secret values
//! it scrubs, its Redis store, and the detached work it started.
//!
//! [`Store`] speaks Redis only (it keeps its own copies of what its writes need: the shutdown that
//! ends a retry, the scrubber every write goes through). Everything else a task needs comes from
//! here, so no task reaches through the store for the agent's configuration.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::EngineConfig;
use crate::scrub::Scrubber;
use crate::store::Store;

/// How long shutdown waits for detached work (progress publications) before it stops.
const DETACHED_GRACE: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub(crate) struct AgentCtx {
    pub cfg: Arc<EngineConfig>,
    pub shutdown: CancellationToken,
    pub scrubber: Scrubber,
    pub store: Store,
    /// Work no caller waits for (best-effort progress publications): tracked, so shutdown can wait
    /// for it briefly instead of cutting it off unseen.
    pub detached: TaskTracker,
}

impl AgentCtx {
    /// Starts `work` without waiting for it; shutdown waits for it (briefly, see [`Self::wind_down`]).
    pub fn detach<F>(&self, work: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.detached.spawn(work);
    }

    /// At shutdown: no more detached work; what is under way gets a moment to end.
    pub async fn wind_down(&self) {
        self.detached.close();
        if tokio::time::timeout(DETACHED_GRACE, self.detached.wait())
            .await
            .is_err()
        {
            tracing::debug!("detached work still going at shutdown; left behind");
        }
    }
}
