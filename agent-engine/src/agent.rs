//! The agent's main task: connect, recover, listen, dispatch runs, shut down cleanly.
//!
//! Ownership: [`run_agent`] owns every task it starts. The listener and the heartbeat stop on the
//! shutdown token; run tasks are tracked by a `TaskTracker` and get `shutdown_grace` to finish before
//! their steps are killed (their queue entries stay pending and run again on the next start). A
//! `Semaphore` with `concurrency` permits keeps runs in FIFO order when it is 1.

use std::sync::Arc;
use std::time::Duration;

use agent_redis::{is_transient, Backoff, Target};
use core_events::QueueEntry;
use tokio::sync::{oneshot, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::EngineConfig;
use crate::context::AgentCtx;
use crate::error::{Error, Result};
use crate::listener::{listen, Running};
use crate::queue::{InFlight, QueueReader};
use crate::runner::{execute, CancelHandle, RunRequest, StepEnv};
use crate::scrub::Scrubber;
use crate::store::Store;
use crate::time::now_rfc3339;

/// An agent running in this process (tests, embedding): [`start_agent`] starts it on the current
/// tokio runtime, [`AgentHandle::stop`] shuts it down the way SIGTERM does and returns how it ended.
pub struct AgentHandle {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<()>>,
}

/// Starts [`run_agent`] with `cfg` as a task of the current runtime.
pub fn start_agent(cfg: EngineConfig) -> AgentHandle {
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run_agent(cfg, shutdown.clone()));
    AgentHandle { shutdown, task }
}

impl AgentHandle {
    /// Whether the agent has ended by itself (an error no retry fixes).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Shuts the agent down (runs get the shutdown grace, then their steps are killed; their
    /// entries stay pending) and returns how it ended.
    pub async fn stop(self) -> Result<()> {
        self.shutdown.cancel();
        match self.task.await {
            Ok(Err(Error::Shutdown)) => Ok(()),
            Ok(r) => r,
            Err(e) => Err(Error::Config(format!("the agent's task failed: {e}"))),
        }
    }
}

/// Runs an agent until `shutdown` is cancelled. Returns an error only for failures that retrying
/// cannot fix (bad configuration, refused credentials, permission errors).
pub async fn run_agent(cfg: EngineConfig, shutdown: CancellationToken) -> Result<()> {
    cfg.validate()?;
    let cfg = Arc::new(cfg);
    let scrubber = Scrubber::new();
    let target = Target::new(&cfg.redis_url, cfg.credentials.clone())?;
    if let Some(p) = target.password() {
        scrubber.add(p);
    }

    // The leader now: the store's connection stays on it, and the watch below restarts the agent
    // when another server leads.
    let leader = agent_redis::retry("connecting", &shutdown, || target.leader()).await?;
    let fatal = Fatal::default();
    // From the start: a leader that stops leading while the agent sets up (its writes refused,
    // READONLY, and retried) must end this run too.
    let watch = tokio::spawn(watch_leader(
        target.clone(),
        leader.address(),
        shutdown.clone(),
        fatal.clone(),
    ));
    let conn = agent_redis::retry("connecting", &shutdown, || leader.manager()).await?;
    let store = Store::new(conn, cfg.clone(), shutdown.clone(), scrubber.clone());
    let ctx = AgentCtx {
        cfg: cfg.clone(),
        shutdown: shutdown.clone(),
        scrubber,
        store: store.clone(),
        detached: TaskTracker::new(),
    };
    if !store.claim_name().await? {
        tracing::debug!("the agent name registry is not writable by this user; not claimed");
    }
    store.ensure_group().await?;
    store.load_scripts().await?;
    store.heartbeat(&heartbeat_value()).await?;

    let running: Running = Default::default();
    let (ready_tx, ready_rx) = oneshot::channel();
    let mut listener = Some({
        let (ctx, running, fatal) = (ctx.clone(), running.clone(), fatal.clone());
        let target = target.clone();
        tokio::spawn(async move {
            if let Err(e) = listen(target, ctx.clone(), running, ready_tx).await {
                fatal.set(e, &ctx.shutdown);
            }
        })
    });
    tokio::select! {
        ready = ready_rx => {
            if ready.is_err() {
                // The listener ended before it subscribed: wait for its error.
                if let Some(handle) = listener.take() {
                    let _ = handle.await;
                }
            }
        }
        _ = shutdown.cancelled() => {}
    }
    if let Some(e) = fatal.take() {
        return Err(e);
    }
    let mut reader = QueueReader::new(target.clone(), store.prefix.queue(), &cfg.name);
    match reader.connect().await {
        Ok(()) => {}
        // Redis went away since the checks above: the dispatch loop reconnects with a backoff.
        Err(Error::Redis(e)) if is_transient(&e) => reader.reset(),
        Err(e) => return Err(e),
    }
    if let Some(event) = &cfg.startup_event {
        if store.enqueue_startup(event).await? {
            tracing::info!(%event, "startup event queued");
        }
    }
    if let (true, Some(event)) = (cfg.leader_moved, &cfg.leader_event) {
        store.enqueue_published(event.as_str(), b"").await?;
        tracing::info!(%event, "queued on the new leader");
    }
    // Read once, at start: an `.on` added later takes effect when the agent starts again.
    let triggers = crate::plan::triggers(&cfg.events_dirs);
    let (triggers_ready_tx, triggers_ready) = oneshot::channel();
    let triggers = {
        let (ctx, fatal, target) = (ctx.clone(), fatal.clone(), target.clone());
        tokio::spawn(async move {
            if let Err(e) =
                crate::triggers::run(target, ctx.clone(), triggers, triggers_ready_tx).await
            {
                fatal.set(e, &ctx.shutdown);
            }
        })
    };
    // Ready means subscribed: a trigger emitted right after "agent ready" queues its event. A
    // Redis that went away meanwhile: the trigger task retries with a backoff and catches up when
    // it subscribes (it queues each triggered event once), so readiness does not wait for it.
    tokio::select! {
        _ = triggers_ready => {}
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(std::time::Duration::from_secs(10)) => {
            tracing::warn!("trigger subscription not in place after 10 s: ready without it; it catches up when it subscribes");
        }
    }
    if let Some(e) = fatal.take() {
        return Err(e);
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    // Watchdog pings start after READY=1, as systemd expects.
    let heartbeat = tokio::spawn(heartbeat_loop(ctx.clone()));
    tracing::info!(agent = %cfg.name, prefix = %store.prefix.as_str(), "agent ready");

    let cgroups = match crate::cgroup::RunCgroups::detect() {
        Ok(c) => {
            tracing::info!(cgroup = %c.base().display(), "runs tracked by cgroup");
            Some(c)
        }
        Err(why) => {
            tracing::warn!("runs tracked by process environment, not by cgroup: {why}");
            None
        }
    };
    let step_env = StepEnv {
        base_url: cfg.redis_url.clone(),
        credentials_file: cfg.credentials_file.clone(),
        credentials: cfg.credentials.clone(),
        cgroups,
    };
    let tracker = TaskTracker::new();
    let kill_now = CancellationToken::new();
    let result = dispatch_loop(
        &ctx, reader, &step_env, &running, &tracker, &kill_now, &fatal,
    )
    .await;
    if let Err(e) = &result {
        // The queue side met an error no retry fixes (say, refused credentials on reconnection):
        // said the same way as when another task of the agent meets one (`Fatal`).
        tracing::error!(error = %e, "cannot go on; shutting down");
    }

    // Shutdown: stop taking work, let runs finish within the grace period, then kill their steps.
    // No STOPPING=1 here: this run may end only to start again on a new leader, and systemd
    // takes STOPPING=1 for the process's end (it SIGKILLs it TimeoutStopSec later). The binary's
    // signal handler says it (cli.rs).
    tracker.close();
    if tokio::time::timeout(cfg.shutdown_grace, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("runs still going after the shutdown grace period; killing their steps");
        kill_now.cancel();
        tracker.wait().await;
    }
    ctx.wind_down().await;
    shutdown.cancel();
    let _ = heartbeat.await;
    let _ = watch.await;
    let _ = triggers.await;
    if let Some(handle) = listener {
        if let Err(e) = handle.await {
            tracing::error!(error = %e, "listener panicked");
        }
    }
    tracing::info!("agent stopped");
    match fatal.take() {
        Some(e) => Err(e),
        None => result,
    }
}

/// The first error that no retry can fix (refused credentials, missing permissions) from a task of
/// the agent. Recording it shuts the agent down, so it exits non-zero and its supervisor (systemd,
/// `Restart=always`) starts it again, e.g. with a rotated password, instead of going on half-working.
#[derive(Clone, Default)]
struct Fatal(Arc<std::sync::Mutex<Option<Error>>>);

impl Fatal {
    fn set(&self, e: Error, shutdown: &CancellationToken) {
        // A moved leader is no failure: the run ends to start again (the watch said so).
        if !matches!(e, Error::LeaderMoved { .. }) {
            tracing::error!(error = %e, "cannot go on; shutting down");
        }
        self.0.lock().expect("fatal lock").get_or_insert(e);
        shutdown.cancel();
    }

    fn take(&self) -> Option<Error> {
        self.0.lock().expect("fatal lock").take()
    }
}

/// How often an agent asks its node's Redis (`ROLE`) which server leads.
const LEADER_CHECK: Duration = Duration::from_secs(1);

/// Ends the agent with [`Error::LeaderMoved`] as soon as its node's Redis says another server
/// leads than `leader`, the one its connections were made to: after a failover Sentinel repoints
/// every replica (and makes the old leader one when it is back), and a connection to a server that
/// no longer leads would go on failing (a dead host) or be refused (`READONLY`). The agent's main
/// loop starts it again on the new leader; nothing is lost, the queue is in Redis. A server that
/// does not answer is asked again; a user that may not run `ROLE` never follows, so nothing is
/// watched.
async fn watch_leader(target: Target, leader: String, shutdown: CancellationToken, fatal: Fatal) {
    if !target.follows() {
        return;
    }
    let here = target.here();
    let mut conn = None;
    let mut tick = tokio::time::interval(LEADER_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        if conn.is_none() {
            conn = here.connection().await.ok();
        }
        let Some(c) = conn.as_mut() else { continue };
        match redis::cmd("ROLE").query_async::<redis::Value>(c).await {
            Ok(role) => {
                let now = here.leader_address_of(&role);
                if now != leader {
                    tracing::warn!(from = %leader, to = %now, "the leader moved: starting again on it");
                    fatal.set(
                        Error::LeaderMoved {
                            from: leader,
                            to: now,
                        },
                        &shutdown,
                    );
                    return;
                }
            }
            Err(e) if agent_redis::is_denied(&e) => return,
            Err(_) => conn = None,
        }
    }
}

fn heartbeat_value() -> String {
    serde_json::json!({ "pid": std::process::id(), "time": now_rfc3339(), "version": env!("CARGO_PKG_VERSION") })
        .to_string()
}

/// Refreshes the liveness key and pings the systemd watchdog when one is configured.
async fn heartbeat_loop(ctx: AgentCtx) {
    let store = &ctx.store;
    let mut every = ctx.cfg.heartbeat_interval;
    let mut watchdog = false;
    if let Some(wd) = sd_notify::watchdog_enabled() {
        every = every.min(wd / 2);
        watchdog = true;
    }
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = ctx.shutdown.cancelled() => return,
        }
        // Given up at shutdown: a write to a server that stopped answering (an old leader) would
        // hold the agent's stop for a whole command timeout.
        let value = heartbeat_value();
        tokio::select! {
            r = store.heartbeat(&value) => if let Err(e) = r {
                tracing::debug!(error = %e, "heartbeat not written");
            },
            _ = ctx.shutdown.cancelled() => return,
        }
        if watchdog {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
        }
    }
}

async fn dispatch_loop(
    ctx: &AgentCtx,
    mut reader: QueueReader,
    step_env: &StepEnv,
    running: &Running,
    tracker: &TaskTracker,
    kill_now: &CancellationToken,
    fatal: &Fatal,
) -> Result<()> {
    let (cfg, shutdown, store) = (&ctx.cfg, &ctx.shutdown, &ctx.store);
    let permits = Arc::new(Semaphore::new(cfg.concurrency));
    let in_flight: InFlight = Default::default();
    let mut backoff = Backoff::default();
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("semaphore never closed"),
            _ = shutdown.cancelled() => return Ok(()),
        };
        let next = tokio::select! {
            n = reader.next(&in_flight) => n,
            _ = shutdown.cancelled() => return Ok(()),
        };
        let (stream_id, fields) = match next {
            Ok(Some(entry)) => {
                backoff.reset();
                entry
            }
            Ok(None) => continue,
            Err(Error::Redis(e)) if e.code() == Some("NOGROUP") => {
                tracing::warn!("queue or consumer group vanished; creating it again");
                reader.reset();
                store.ensure_group().await?;
                continue;
            }
            Err(Error::Redis(e)) if is_transient(&e) => {
                tracing::warn!(error = %e, "queue read failed; reconnecting");
                reader.reset();
                if backoff.wait(shutdown).await {
                    continue;
                }
                return Ok(());
            }
            Err(e) => return Err(e),
        };

        let entry = match QueueEntry::parse(&stream_id, &fields, cfg.max_payload) {
            Ok(e) => e,
            Err((run, err)) => {
                refuse_entry(store, &stream_id, &run, &fields, &err.to_string()).await?;
                continue;
            }
        };
        let cancel = CancelHandle::default();
        let duplicate = {
            let mut map = running.lock().expect("running lock");
            let dup = map.contains_key(entry.run.as_str());
            if !dup {
                map.insert(entry.run.to_string(), cancel.clone());
            }
            dup
        };
        if duplicate {
            // Two entries with the same run id at once (a client reused an id): the second is dropped.
            let journal = core_events::JournalEntry::new(
                entry.run.as_str(),
                entry.event.as_str(),
                core_events::JournalStatus::Skipped,
                0,
                now_rfc3339(),
            )
            .with_message(format!(
                "run {} is running already; queue entry {stream_id} dropped",
                entry.run
            ));
            store.drop_entry(&stream_id, Some(&journal)).await?;
            continue;
        }
        in_flight
            .lock()
            .expect("in-flight lock")
            .insert(stream_id.clone());
        let req = RunRequest {
            stream_id: stream_id.clone(),
            entry,
            cancel,
            kill_now: kill_now.clone(),
        };
        let (ctx, step_env, running, in_flight, fatal) = (
            ctx.clone(),
            step_env.clone(),
            running.clone(),
            in_flight.clone(),
            fatal.clone(),
        );
        tracker.spawn(async move {
            let run = req.entry.run.to_string();
            match execute(&ctx, &step_env, req).await {
                Ok(()) | Err(Error::Shutdown) => {}
                Err(e) => {
                    tracing::error!(%run, "run could not be recorded; it stays queued");
                    fatal.set(e, &ctx.shutdown);
                }
            }
            running.lock().expect("running lock").remove(&run);
            in_flight.lock().expect("in-flight lock").remove(&stream_id);
            drop(permit);
        });
    }
}

/// A malformed queue entry becomes a failed run with a clear error, and leaves the queue.
async fn refuse_entry(
    store: &Store,
    stream_id: &str,
    run: &core_events::RunId,
    fields: &std::collections::HashMap<String, Vec<u8>>,
    why: &str,
) -> Result<()> {
    let event = fields
        .get(core_events::record::QUEUE_FIELD_EVENT)
        .map(|v| crate::shown(v));
    let now = now_rfc3339();
    let record = core_events::RunRecord {
        event: event.unwrap_or_default(),
        status: Some(core_events::RunStatus::Failed),
        exit_code: Some(core_events::exit::INVALID),
        ended: Some(now.clone()),
        error: Some(format!("refused: {why}")),
        ..Default::default()
    };
    let journal = core_events::JournalEntry::new(
        run.as_str(),
        record.event.as_str(),
        core_events::RunStatus::Failed,
        0,
        now,
    )
    .with_exit_code(core_events::exit::INVALID)
    .with_message(format!("refused: {why}"));
    tracing::warn!(%run, "queue entry {stream_id} refused: {why}");
    store.finish_run(run, stream_id, &record, &[&journal]).await
}
