//! Riding out a Redis outage: the one backoff and the one shutdown-aware retry loop.
//!
//! Every operation that must not be lost (a record, a journal entry, an acknowledgement, a
//! subscription) waits for Redis to come back instead of failing; a shutdown ends the wait.

use std::future::Future;
use std::time::Duration;

use redis::RedisError;
use tokio_util::sync::CancellationToken;

use crate::class::is_transient;

/// Why [`retry`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum RetryError {
    /// Redis answered with an error that waiting does not cure.
    #[error(transparent)]
    Redis(#[from] RedisError),
    /// Shutdown was asked for while waiting for Redis.
    #[error("shutting down")]
    Shutdown,
}

/// Backoff between attempts: 50 ms doubling up to 5 s.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    pub const FIRST: Duration = Duration::from_millis(50);
    pub const MAX: Duration = Duration::from_secs(5);

    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        d
    }

    pub fn reset(&mut self) {
        *self = Backoff::default();
    }

    /// Sleeps the next delay; `false` when `shutdown` was cancelled first.
    pub async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(self.next_delay()) => true,
            _ = shutdown.cancelled() => false,
        }
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: Self::FIRST }
    }
}

/// Runs `op` until it succeeds, waiting out transient Redis errors with backoff. A non-transient
/// error is returned at once; shutdown ends the wait with [`RetryError::Shutdown`]. `what` names the
/// operation in the one warning logged per outage.
pub async fn retry<T, F, Fut>(
    what: &str,
    shutdown: &CancellationToken,
    mut op: F,
) -> Result<T, RetryError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, RedisError>>,
{
    let mut backoff = Backoff::default();
    let mut warned = false;
    loop {
        match op().await {
            Ok(v) => {
                if warned {
                    tracing::info!(what, "Redis is back");
                }
                return Ok(v);
            }
            Err(e) if is_transient(&e) => {
                if !warned {
                    tracing::warn!(what, error = %e, "Redis unavailable, retrying");
                    warned = true;
                }
                if !backoff.wait(shutdown).await {
                    return Err(RetryError::Shutdown);
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_caps() {
        let mut b = Backoff::default();
        let d: Vec<_> = (0..10).map(|_| b.next_delay()).collect();
        assert_eq!(d[0], Backoff::FIRST);
        assert_eq!(*d.last().unwrap(), Backoff::MAX);
        b.reset();
        assert_eq!(b.next_delay(), Backoff::FIRST);
    }

    fn refused() -> RedisError {
        RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused))
    }

    #[tokio::test(start_paused = true)]
    async fn retry_waits_out_an_outage_and_stops_at_once_on_other_errors() {
        let shutdown = CancellationToken::new();
        let mut calls = 0;
        let v = retry("test", &shutdown, || {
            calls += 1;
            let n = calls;
            async move {
                if n < 4 {
                    Err(refused())
                } else {
                    Ok(n)
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(v, 4);

        let mut calls = 0;
        let e = retry("test", &shutdown, || {
            calls += 1;
            async {
                Err::<(), _>(RedisError::from((
                    redis::ErrorKind::AuthenticationFailed,
                    "no",
                )))
            }
        })
        .await
        .unwrap_err();
        assert!(matches!(e, RetryError::Redis(_)));
        assert_eq!(calls, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_the_wait() {
        let shutdown = CancellationToken::new();
        let stopper = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            stopper.cancel();
        });
        let e = retry("test", &shutdown, || async { Err::<(), _>(refused()) })
            .await
            .unwrap_err();
        assert!(matches!(e, RetryError::Shutdown));
    }
}
