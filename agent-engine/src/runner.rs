//! Running one queued event: plan, steps as child processes, record, journal, progress.
//!
//! Each step runs in its own process group with the event data as `argv[1]` and on stdin. The first
//! failing step ends the run. A timeout or a cancel sends SIGTERM to the step's whole group, then
//! SIGKILL after the grace period, so grandchildren that ignore SIGTERM die too. An agent shutting down
//! kills the step but does *not* finish the run: its queue entry stays pending, and the next start runs
//! it again with `attempt` incremented.

use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use core_events::step::{StepMessageError, CONTROL_FD, CONTROL_FD_ENV, MAX_MESSAGE};
use core_events::StepMessage;
use core_events::{
    exit, EventName, JournalEntry, Progress, QueueEntry, RollbackStatus, RunId, RunRecord,
    RunStatus,
};
use core_events::{output, step_env, JournalStatus};
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::{pipe2, Pid};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::Result;
use crate::plan::{plan_event, EventPlan, PlanEntry, PlanVerdict};
use crate::store::{Begin, BeginRequest, Store};
use crate::time::now_rfc3339;

/// What the agent hands to a run task.
pub(crate) struct RunRequest {
    pub stream_id: String,
    pub entry: QueueEntry,
    /// Fired by `PUBLISH cancel/<agent> <run>`.
    pub cancel: CancelHandle,
    /// Fired when the agent's shutdown grace is over: kill the step, leave the entry pending.
    pub kill_now: CancellationToken,
}

/// Cancel requests for one run. A cancelled run still runs its rollback, and a cancel during the
/// rollback must stop it: so the rollback of a cancelled run starts with a fresh token.
#[derive(Clone, Default)]
pub(crate) struct CancelHandle(Arc<Mutex<CancellationToken>>);

impl CancelHandle {
    /// Cancels what the run is doing now (its steps, or its rollback steps).
    pub fn cancel(&self) {
        self.0.lock().expect("cancel lock").cancel();
    }

    fn token(&self) -> CancellationToken {
        self.0.lock().expect("cancel lock").clone()
    }

    /// A fresh token for the rollback of a cancelled run; later cancels fire it.
    fn renew(&self) -> CancellationToken {
        let mut t = self.0.lock().expect("cancel lock");
        *t = CancellationToken::new();
        t.clone()
    }
}

/// Why a step stopped early.
enum Interrupt {
    Timeout,
    Cancel,
    Shutdown,
}

enum StepEnd {
    Exited(i32),
    SpawnFailed(String),
    Interrupted(Interrupt),
}

/// Environment every step gets beside the agent's own: set once per agent.
#[derive(Clone)]
pub(crate) struct StepEnv {
    /// The agent's Redis URL, before credentials are applied.
    pub base_url: String,
    pub credentials_file: Option<std::path::PathBuf>,
    /// The credentials read at start, used when the file cannot be read now.
    pub credentials: Option<agent_redis::Credentials>,
    /// Where run cgroups are made; `None`: runs are tracked by their processes' environment.
    pub cgroups: Option<crate::cgroup::RunCgroups>,
}

impl StepEnv {
    /// `REDIS_URL` for this run's steps, with the credentials file read afresh (a rotated password
    /// reaches steps without an agent restart; the new password is registered with the scrubber).
    fn redis_url(&self, scrubber: &crate::scrub::Scrubber) -> String {
        let fresh = self
            .credentials_file
            .as_deref()
            .and_then(|p| agent_redis::Credentials::from_file(p).ok());
        if let Some(c) = &fresh {
            scrubber.add(c.password.expose());
        }
        agent_redis::url::with_credentials(
            &self.base_url,
            fresh.as_ref().or(self.credentials.as_ref()),
        )
    }
}

pub(crate) async fn execute(store: &Store, env: &StepEnv, req: RunRequest) -> Result<()> {
    let RunRequest {
        stream_id,
        entry,
        cancel,
        kill_now,
    } = req;
    let run = &entry.run;
    let cfg = store.cfg.clone();
    let journal = |status: JournalStatus, attempt: u32| {
        JournalEntry::new(
            run.as_str(),
            entry.event.as_str(),
            status,
            attempt,
            now_rfc3339(),
        )
    };

    // Everything about the run that needs no Redis is decided first, so it begins in one round trip.
    let plan = plan_event(&cfg.events_dirs, &entry.event);
    let max_attempts = plan
        .settings
        .retries
        .map(|r| r + 1)
        .unwrap_or(cfg.max_attempts);
    let mut record = RunRecord {
        event: entry.event.to_string(),
        status: Some(RunStatus::Running),
        queued: crate::time::rfc3339_of_stream_id(&stream_id),
        started: Some(now_rfc3339()),
        ..Default::default()
    };
    let begun = store
        .begin_run(&BeginRequest {
            run,
            record: &record,
            journal: &journal(RunStatus::Running.into(), 0),
            start: plan.defined,
            max_attempts,
        })
        .await?;
    let (module_env, mut env_warnings) = module_env_vars(begun.module_env);
    env_warnings.extend(begun.secret_warnings);
    record.data = store.scrubber.scrub_str(&entry.data);
    let finish = |mut record: RunRecord, status: RunStatus, code: i32, error: Option<String>| {
        record.status = Some(status);
        record.exit_code = Some(code);
        record.ended = Some(now_rfc3339());
        record.error = error.map(|e| store.scrubber.scrub_str(&e));
        let mut j = journal(status.into(), record.attempt);
        j.exit_code = Some(code);
        j.step = record.failed_step.clone();
        j.message = record.error.clone();
        (record, j)
    };

    if let Begin::Started { attempt } | Begin::Refused { attempt } = begun.outcome {
        if attempt > 1 {
            // An earlier attempt was interrupted (its record still said `running`): whatever its
            // steps left running goes before this one starts, or before it is abandoned.
            let killed = crate::procs::kill_leftovers(cfg.name.as_str(), run.as_str());
            tracing::warn!(%run, attempt, killed, "run was interrupted");
        }
    }
    let attempt = match begun.outcome {
        Begin::Ended { status, attempt } => {
            let mut j = journal(JournalStatus::Skipped, attempt);
            j.message = Some(format!(
                "run {run} already ended as {status}; queue entry {stream_id} dropped"
            ));
            tracing::info!(%run, %status, "duplicate queue entry dropped");
            return store.drop_entry(&stream_id, Some(&j)).await;
        }
        Begin::Refused { attempt } => {
            record.attempt = attempt;
            let (status, code, msg) = if attempt > max_attempts {
                tracing::error!(%run, "run abandoned");
                let msg = format!(
                    "interrupted {} times by agent restarts; giving up",
                    attempt - 1
                );
                (RunStatus::Abandoned, exit::ABANDONED, msg)
            } else {
                let dirs: Vec<_> = cfg
                    .events_dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect();
                let msg = format!(
                    "no event directory defines {:?} (searched {})",
                    entry.event.as_str(),
                    dirs.join(", ")
                );
                (RunStatus::Failed, exit::NO_SUCH_EVENT, msg)
            };
            let (rec, j) = finish(record, status, code, Some(msg));
            store.finish_run(run, &stream_id, &rec, &[&j]).await?;
            publish_end(store, run, status);
            return Ok(());
        }
        Begin::Started { attempt } => attempt,
    };
    record.attempt = attempt;
    let processes = RunProcesses::new(env, cfg.name.as_str(), run);
    // The data joins the record beside the first step rather than before it; the end of the run
    // waits for the write, so the two never land out of order.
    let data_written = (!record.data.is_empty()).then(|| {
        let (store, run, data) = (store.clone(), run.clone(), record.data.clone());
        tokio::spawn(async move { store.write_run_data(&run, &data).await })
    });
    journal_warnings(
        store,
        &plan,
        env_warnings,
        run,
        entry.event.as_str(),
        attempt,
    )
    .await?;
    tracing::info!(%run, event = %entry.event, attempt, "run started");

    let timeout = plan.settings.timeout.unwrap_or(cfg.default_timeout);
    let deadline = Instant::now() + timeout;
    let steps: Vec<&PlanEntry> = plan.steps().collect();
    let total = steps.len() as u32;
    let env_vars = step_vars(env, &module_env, store, &entry, attempt);
    let mut output_left = cfg.output_cap;
    let mut outcome = (RunStatus::Done, exit::OK, None);
    let mut stop = None;
    let cancel_token = cancel.token();

    for (i, step) in steps.iter().enumerate() {
        let signals = Signals {
            deadline,
            cancel: &cancel_token,
            kill_now: &kill_now,
            grace: cfg.kill_grace,
        };
        let position = (i as u32 + 1, total, None);
        let end = run_step_recorded(
            store,
            run,
            step,
            position,
            &entry.data,
            &env_vars,
            signals,
            &mut output_left,
            processes.cgroup_fd(),
        )
        .await?;
        match end {
            StepEnd::Exited(0) => continue,
            StepEnd::Exited(code) => {
                outcome = (
                    RunStatus::Failed,
                    code,
                    Some(format!("step {} exited with code {code}", step.name)),
                );
                stop = Some(Stop::Failed);
            }
            StepEnd::SpawnFailed(e) => {
                outcome = (
                    RunStatus::Failed,
                    exit::SPAWN_FAILED,
                    Some(format!("step {} could not start: {e}", step.name)),
                );
                stop = Some(Stop::Failed);
            }
            StepEnd::Interrupted(Interrupt::Timeout) => {
                let msg = format!(
                    "timed out after {}s in step {}",
                    timeout.as_secs(),
                    step.name
                );
                outcome = (RunStatus::Failed, exit::TIMEOUT, Some(msg));
                stop = Some(Stop::TimedOut);
            }
            StepEnd::Interrupted(Interrupt::Cancel) => {
                outcome = (
                    RunStatus::Cancelled,
                    exit::CANCELLED,
                    Some(format!("cancelled in step {}", step.name)),
                );
                stop = Some(Stop::Cancelled);
            }
            StepEnd::Interrupted(Interrupt::Shutdown) => {
                let mut j = journal(JournalStatus::Interrupted, attempt);
                j.step = Some(step.name.clone());
                j.message = Some("agent shut down; the run starts again on its next start".into());
                store.journal(&j).await?;
                tracing::warn!(%run, step = %step.name, "run interrupted by shutdown");
                return Ok(());
            }
        }
        record.failed_step = Some(step.name.clone());
        break;
    }

    // A failed or cancelled run is undone by the steps of `<event>.rollback` before its end is
    // recorded, so whoever waits for the terminal status sees the undo completed.
    let mut rollback_journal = None;
    if let (Some(stop), Some(rb_event)) = (stop, entry.event.rollback()) {
        let rb_plan = plan_event(&cfg.events_dirs, &rb_event);
        if rb_plan.steps().next().is_some() {
            let failed_step = record.failed_step.clone().unwrap_or_default();
            let cancel_token = match stop {
                Stop::Cancelled => cancel.renew(),
                Stop::Failed | Stop::TimedOut => cancel.token(),
            };
            let rb = Rollback {
                store,
                run,
                entry: &entry,
                event: &rb_event,
                plan: &rb_plan,
                stop,
                failed_step: &failed_step,
                env: &env_vars,
                attempt,
                cancel: &cancel_token,
                kill_now: &kill_now,
                cgroup_fd: processes.cgroup_fd(),
            };
            let Some(result) = rb.run(&mut output_left).await? else {
                return Ok(());
            };
            record.rollback = Some(result.status);
            record.rollback_failed = (!result.failed.is_empty()).then(|| result.failed.join(","));
            let mut j = journal(JournalStatus::Rollback, attempt);
            j.step = record.rollback_failed.clone();
            j.message = Some(result.message);
            rollback_journal = Some(j);
        }
    }

    // Nothing the run started outlives it: what its steps left running (a daemon, a `setsid`
    // grandchild) is killed before its end is recorded.
    let left = processes.end().await;
    if left > 0 {
        let line = output::note(&format!(
            "{left} processes left running by the run's steps were killed"
        ));
        tracing::info!(%run, left, "killed processes the run's steps left running");
        append_line(store, run, &line, &mut output_left).await?;
    }
    let (status, code, error) = outcome;
    let (rec, j) = finish(record, status, code, error);
    // Its failure does not matter: the final record carries the data too.
    if let Some(write) = data_written {
        let _ = write.await;
    }
    let journals: Vec<&JournalEntry> = rollback_journal.iter().chain([&j]).collect();
    store.finish_run(run, &stream_id, &rec, &journals).await?;
    tracing::info!(%run, status = %status, exit_code = code, rollback = ?rec.rollback, "run ended");
    publish_end(store, run, status);
    Ok(())
}

/// How the steps of a run that needs a rollback ended.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// A step exited non-zero or could not start.
    Failed,
    /// The run's timeout killed a step (recorded as `failed`, exit 124).
    TimedOut,
    Cancelled,
}

/// The rollback of one failed or cancelled run: the steps of `<event>.rollback`, all of them even
/// when one fails (undoing goes as far as it can), within the rollback's own timeout.
struct Rollback<'a> {
    store: &'a Store,
    run: &'a RunId,
    entry: &'a QueueEntry,
    event: &'a EventName,
    plan: &'a EventPlan,
    stop: Stop,
    /// The step that failed, timed out or was cancelled.
    failed_step: &'a str,
    /// The failed run's step environment.
    env: &'a [(String, String)],
    attempt: u32,
    cancel: &'a CancellationToken,
    kill_now: &'a CancellationToken,
    cgroup_fd: Option<(RawFd, RawFd)>,
}

struct RollbackResult {
    status: RollbackStatus,
    /// Rollback steps that failed, in run order.
    failed: Vec<String>,
    message: String,
}

impl Rollback<'_> {
    /// Runs the rollback steps. `None` when the agent shut down meanwhile (the run stays pending).
    async fn run(&self, output_left: &mut usize) -> Result<Option<RollbackResult>> {
        let (store, run, cfg) = (self.store, self.run, &self.store.cfg);
        let original = self.entry.event.as_str();
        journal_warnings(
            store,
            self.plan,
            Vec::new(),
            run,
            self.event.as_str(),
            self.attempt,
        )
        .await?;
        store.mark_rollback_running(run).await?;
        let step = self.failed_step;
        let (why, run_status) = match self.stop {
            Stop::Failed => (format!("step {step} failed"), RunStatus::Failed),
            Stop::TimedOut => (format!("timed out in step {step}"), RunStatus::Failed),
            Stop::Cancelled => (format!("cancelled in step {step}"), RunStatus::Cancelled),
        };
        tracing::info!(%run, event = %self.event, "rollback started: {why}");
        append_line(
            store,
            run,
            &output::rollback_separator(original, &why),
            output_left,
        )
        .await?;

        let mut env = self.env.to_vec();
        env.extend([
            (
                step_env::AGENT_ROLLBACK.to_string(),
                step_env::ROLLBACK_YES.to_string(),
            ),
            (
                step_env::AGENT_FAILED_STEP.to_string(),
                match self.stop {
                    Stop::Cancelled => String::new(),
                    Stop::Failed | Stop::TimedOut => step.to_string(),
                },
            ),
            (
                step_env::AGENT_RUN_STATUS.to_string(),
                run_status.as_str().to_string(),
            ),
        ]);
        let timeout = self.plan.settings.timeout.unwrap_or(cfg.default_timeout);
        let deadline = Instant::now() + timeout;
        let steps: Vec<&PlanEntry> = self.plan.steps().collect();
        let total = steps.len() as u32;
        let mut failed = Vec::new();
        let mut problems = Vec::new();
        for (i, step) in steps.iter().enumerate() {
            let signals = Signals {
                deadline,
                cancel: self.cancel,
                kill_now: self.kill_now,
                grace: cfg.kill_grace,
            };
            let position = (i as u32 + 1, total, Some(format!("rollback of {original}")));
            let end = run_step_recorded(
                store,
                run,
                step,
                position,
                &self.entry.data,
                &env,
                signals,
                output_left,
                self.cgroup_fd,
            )
            .await?;
            let name = &step.name;
            let stopped = match end {
                StepEnd::Exited(0) => continue,
                StepEnd::Exited(code) => {
                    problems.push(format!("step {name} exited with code {code}"));
                    None
                }
                StepEnd::SpawnFailed(e) => {
                    problems.push(format!("step {name} could not start: {e}"));
                    None
                }
                StepEnd::Interrupted(Interrupt::Timeout) => Some(format!(
                    "timed out after {}s in step {name}",
                    timeout.as_secs()
                )),
                StepEnd::Interrupted(Interrupt::Cancel) => {
                    Some(format!("cancelled in step {name}"))
                }
                StepEnd::Interrupted(Interrupt::Shutdown) => {
                    let mut j = JournalEntry::new(
                        run.as_str(),
                        original,
                        JournalStatus::Interrupted,
                        self.attempt,
                        now_rfc3339(),
                    );
                    j.step = Some(name.clone());
                    j.message = Some(format!(
                        "agent shut down during the rollback of {original}; the run starts again on its next start"
                    ));
                    store.journal(&j).await?;
                    tracing::warn!(%run, step = %name, "rollback interrupted by shutdown");
                    return Ok(None);
                }
            };
            failed.push(name.clone());
            if let Some(mut why) = stopped {
                // A timeout or a cancel ends the rollback: the later steps do not run.
                let rest: Vec<&str> = steps[i + 1..].iter().map(|s| s.name.as_str()).collect();
                if !rest.is_empty() {
                    why.push_str(&format!("; not run: {}", rest.join(", ")));
                }
                problems.push(why);
                break;
            }
        }
        let (status, message) = if failed.is_empty() {
            (
                RollbackStatus::Done,
                format!("rollback of {original} done ({total} steps)"),
            )
        } else {
            (
                RollbackStatus::Failed,
                format!("rollback of {original} failed: {}", problems.join("; ")),
            )
        };
        tracing::info!(%run, status = %status, "rollback ended");
        Ok(Some(RollbackResult {
            status,
            failed,
            message,
        }))
    }
}

/// Publishes the run's end on its progress channel, beside whatever comes next: progress is best
/// effort, and the record (written before) is what followers trust.
fn publish_end(store: &Store, run: &RunId, status: RunStatus) {
    let p = Progress {
        run: run.to_string(),
        step: None,
        step_index: None,
        steps: None,
        percent: None,
        message: None,
        status: Some(status),
    };
    publish_detached(store, run, p);
}

/// Progress is best effort: it is published by a task of its own rather than in the run's way.
fn publish_detached(store: &Store, run: &RunId, progress: Progress) {
    let (store, run) = (store.clone(), run.clone());
    tokio::spawn(async move { store.publish_progress(&run, &progress).await });
}

/// Skipped steps, bad settings files and unusable module.env entries go to the journal as warnings.
async fn journal_warnings(
    store: &Store,
    plan: &EventPlan,
    env_warnings: Vec<String>,
    run: &RunId,
    event: &str,
    attempt: u32,
) -> Result<()> {
    let mut warnings: Vec<(Option<String>, String)> = Vec::new();
    for e in &plan.entries {
        if let PlanVerdict::Skipped(why) = &e.verdict {
            warnings.push((
                Some(e.name.clone()),
                format!("{} skipped: {why}", e.path.display()),
            ));
        }
    }
    for p in &plan.settings.problems {
        warnings.push((None, format!("setting ignored: {p}")));
    }
    warnings.extend(env_warnings.into_iter().map(|w| (None, w)));
    for (step, message) in warnings {
        tracing::warn!(%run, "{message}");
        let j = JournalEntry::new(
            run.as_str(),
            event,
            JournalStatus::Warning,
            attempt,
            now_rfc3339(),
        )
        .with_step(step)
        .with_message(message);
        store.journal(&j).await?;
    }
    Ok(())
}

/// Splits module.env into the variables steps get (sorted) and a warning for each field left out.
fn module_env_vars(raw: Vec<(Vec<u8>, Vec<u8>)>) -> (Vec<(String, String)>, Vec<String>) {
    let mut vars = Vec::new();
    let mut warnings = Vec::new();
    for (k, v) in raw {
        // A name that is not UTF-8 is not a valid variable name either: shown lossily.
        let k = String::from_utf8(k).unwrap_or_else(|e| crate::shown(e.as_bytes()));
        let why = if !step_env::is_valid_name(&k) {
            Some("is not a valid variable name")
        } else if step_env::is_reserved(&k) {
            Some("is a name the agent sets itself")
        } else if v.contains(&0) {
            Some("has a value containing NUL")
        } else {
            None
        };
        match (why, String::from_utf8(v)) {
            (None, Ok(v)) => vars.push((k, v)),
            (Some(why), _) => warnings.push(format!("module.env field {k:?} {why}; not exported")),
            (None, Err(_)) => warnings.push(format!(
                "module.env field {k:?} is not valid UTF-8; not exported"
            )),
        }
    }
    vars.sort();
    warnings.sort();
    (vars, warnings)
}

fn step_vars(
    env: &StepEnv,
    module_env: &[(String, String)],
    store: &Store,
    entry: &QueueEntry,
    attempt: u32,
) -> Vec<(String, String)> {
    let mut vars = module_env.to_vec();
    let cfg = &store.cfg;
    vars.extend([
        (step_env::AGENT_NAME.into(), cfg.name.to_string()),
        (step_env::AGENT_KIND.into(), cfg.kind.as_str().to_string()),
        (
            step_env::AGENT_KEY_PREFIX.into(),
            store.prefix.as_str().to_string(),
        ),
        (step_env::AGENT_EVENT.into(), entry.event.to_string()),
        (step_env::AGENT_RUN_ID.into(), entry.run.to_string()),
        (step_env::AGENT_ATTEMPT.into(), attempt.to_string()),
        (step_env::REDIS_URL.into(), env.redis_url(&store.scrubber)),
    ]);
    vars
}

/// Runs one step of a run (or of its rollback) and records it: a progress message as it starts
/// (`position`: its index from 1, the number of steps, a message), its scrubbed output appended to
/// the run's output.
#[allow(clippy::too_many_arguments)]
async fn run_step_recorded(
    store: &Store,
    run: &RunId,
    step: &PlanEntry,
    position: (u32, u32, Option<String>),
    data: &str,
    env: &[(String, String)],
    signals: Signals<'_>,
    output_left: &mut usize,
    cgroup_fd: Option<(RawFd, RawFd)>,
) -> Result<StepEnd> {
    let (index, total, message) = position;
    let progress = Progress {
        run: run.to_string(),
        step: Some(step.name.clone()),
        step_index: Some(index),
        steps: Some(total),
        percent: None,
        message,
        status: Some(RunStatus::Running),
    };
    let reporter = Reporter {
        store,
        run,
        progress: progress.clone(),
    };
    let spawn = Spawn {
        cgroup: cgroup_fd,
        reporter: &reporter,
    };
    let (end, output) = run_step(step, data, env, signals, spawn, || {
        publish_detached(store, run, progress)
    })
    .await;
    let output = store.scrubber.scrub(&output);
    append_output(store, run, &step.name, &output, output_left).await?;
    Ok(end)
}

/// Appends one step's output under a `==> step <==` header, within the run's output cap.
async fn append_output(
    store: &Store,
    run: &RunId,
    step: &str,
    output: &[u8],
    left: &mut usize,
) -> Result<()> {
    if output.is_empty() || *left == 0 {
        return Ok(());
    }
    let output = output::escape(output);
    let output = output.as_slice();
    let mut chunk = output::step_header(step).into_bytes();
    let room = left.saturating_sub(chunk.len());
    if output.len() > room {
        chunk.extend_from_slice(&output[..room]);
        chunk.extend_from_slice(output::truncated(output.len() - room).as_bytes());
        *left = 0;
    } else {
        chunk.extend_from_slice(output);
        if !output.ends_with(b"\n") {
            chunk.push(b'\n');
        }
        *left -= chunk.len().min(*left);
    }
    store.append_output(run, &chunk).await
}

/// Appends one line of the engine's own (an `output::note`, ending in a newline) to the run's
/// output, within the cap.
async fn append_line(store: &Store, run: &RunId, line: &str, left: &mut usize) -> Result<()> {
    let chunk = line.as_bytes();
    if chunk.len() > *left {
        return Ok(());
    }
    *left -= chunk.len();
    store.append_output(run, chunk).await
}

struct Signals<'a> {
    deadline: Instant,
    cancel: &'a CancellationToken,
    kill_now: &'a CancellationToken,
    grace: Duration,
}

/// Largest output kept from one step before the run's own cap applies.
const STEP_CAPTURE_CAP: usize = 4 << 20;

/// How a step is started and heard from, beside its argument, environment and pipes.
struct Spawn<'a> {
    /// The run's cgroup: its `cgroup.procs` and its directory (see [`start_step`]).
    cgroup: Option<(RawFd, RawFd)>,
    /// Publishes what the step sends on its control socket.
    reporter: &'a Reporter<'a>,
}

async fn run_step(
    step: &PlanEntry,
    data: &str,
    env: &[(String, String)],
    signals: Signals<'_>,
    spawn: Spawn<'_>,
    announce: impl FnOnce(),
) -> (StepEnd, Vec<u8>) {
    let control = match ControlSocket::new() {
        Ok(c) => c,
        Err(e) => {
            return (
                StepEnd::SpawnFailed(format!("cannot create the control socket: {e}")),
                Vec::new(),
            )
        }
    };
    let pipes = match StepPipes::new(data.is_empty()) {
        Ok(p) => p,
        Err(e) => {
            return (
                StepEnd::SpawnFailed(format!("cannot create pipes: {e}")),
                Vec::new(),
            )
        }
    };
    let spawned = start_step(step, data, env, &pipes, &control, spawn.cgroup);
    // Our copies of the child's pipe ends go now, so EOF can be seen.
    let StepPipes {
        stdin,
        stdin_writer,
        stdout,
        stderr,
        output,
    } = pipes;
    drop((stdin, stdout, stderr));
    let mut control = control.into_agent_end();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => return (StepEnd::SpawnFailed(e.to_string()), Vec::new()),
    };
    let Some(pid) = child.id() else {
        return (
            StepEnd::SpawnFailed("the step's process vanished at once".into()),
            Vec::new(),
        );
    };
    let pgid = Pid::from_raw(pid as i32);
    announce();

    if let Some(writer) = stdin_writer {
        feed_stdin(writer, data.as_bytes());
    }
    // The output is read by this task while it waits for the step (a chatty step must not block on
    // a full pipe), and while a timed-out or cancelled step is being killed.
    let mut output = Capture::new(output);
    // `Ok`: the step exited with this code; `Err`: it must be killed, with this grace period.
    let waited = loop {
        tokio::select! {
            status = child.wait() => break Ok(status.map(exit_code).unwrap_or(exit::SPAWN_FAILED)),
            _ = output.read_some() => {}
            msg = control.recv() => spawn.reporter.handle(msg).await,
            _ = tokio::time::sleep_until(signals.deadline) => break Err((Interrupt::Timeout, signals.grace)),
            _ = signals.cancel.cancelled() => break Err((Interrupt::Cancel, signals.grace)),
            _ = signals.kill_now.cancelled() => break Err((Interrupt::Shutdown, Duration::ZERO)),
        }
    };
    let end = match waited {
        Ok(code) => StepEnd::Exited(code),
        Err((why, grace)) => {
            let killed = terminate(&mut child, pgid, grace);
            tokio::pin!(killed);
            loop {
                tokio::select! {
                    _ = &mut killed => break,
                    _ = output.read_some() => {}
                }
            }
            StepEnd::Interrupted(why)
        }
    };
    // What the step sent just before it exited is published too.
    while let Some(msg) = control.try_recv() {
        spawn.reporter.handle(msg).await;
    }
    // A background process of the step may keep the pipe open: do not wait for EOF forever.
    let _ = tokio::time::timeout(Duration::from_secs(2), output.drain()).await;
    (end, output.into_bytes())
}

/// The datagram socket a step reports through (core_events::step): the agent keeps one end, the
/// step gets the other as fd [`CONTROL_FD`].
struct ControlSocket {
    agent: std::os::unix::net::UnixDatagram,
    step: std::os::unix::net::UnixDatagram,
}

impl ControlSocket {
    fn new() -> std::io::Result<Self> {
        // `pair` makes both ends close-on-exec: only the step's own fd 3 crosses exec.
        let (agent, step) = std::os::unix::net::UnixDatagram::pair()?;
        agent.set_nonblocking(true)?;
        Ok(ControlSocket { agent, step })
    }

    fn step_fd(&self) -> RawFd {
        self.step.as_raw_fd()
    }

    /// In the forked step: the step's end becomes fd [`CONTROL_FD`], kept across exec.
    fn install_in_child(fd: RawFd) -> std::io::Result<()> {
        use nix::libc;
        // SAFETY: dup2 and fcntl are async-signal-safe; `fd` is open in this process.
        let ok = unsafe {
            if fd == CONTROL_FD {
                libc::fcntl(fd, libc::F_SETFD, 0) != -1
            } else {
                libc::dup2(fd, CONTROL_FD) != -1
            }
        };
        if ok {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// After the spawn: the step's end is closed here (the step has its copy), the agent's is kept.
    fn into_agent_end(self) -> ControlReceiver {
        drop(self.step);
        ControlReceiver {
            socket: tokio::net::UnixDatagram::from_std(self.agent).ok(),
            buf: Vec::new(),
        }
    }
}

/// The agent's end of a step's control socket.
struct ControlReceiver {
    socket: Option<tokio::net::UnixDatagram>,
    buf: Vec<u8>,
}

impl ControlReceiver {
    /// The next datagram, decoded (or why it was refused). Cancel-safe; never returns once the
    /// socket is unusable.
    async fn recv(&mut self) -> std::result::Result<StepMessage, StepMessageError> {
        let Some(socket) = &self.socket else {
            return std::future::pending().await;
        };
        // The buffer is made when the first message comes: most steps send none, and a buffer
        // of this size per step would be an mmap and munmap each.
        if socket.readable().await.is_err() {
            self.socket = None;
            return std::future::pending().await;
        }
        if self.buf.is_empty() {
            self.buf = vec![0; MAX_MESSAGE + 1];
        }
        match socket.recv(&mut self.buf).await {
            Ok(n) => StepMessage::decode(&self.buf[..n]),
            Err(_) => {
                self.socket = None;
                std::future::pending().await
            }
        }
    }

    /// A datagram already waiting, if any.
    fn try_recv(&mut self) -> Option<std::result::Result<StepMessage, StepMessageError>> {
        let mut probe = [0u8; 1];
        let fd = self.socket.as_ref()?.as_raw_fd();
        // Is anything there at all (MSG_PEEK), before a buffer is made for it.
        // SAFETY: a one-byte read into a local buffer from a socket we own.
        let peeked = unsafe {
            nix::libc::recv(
                fd,
                probe.as_mut_ptr().cast(),
                1,
                nix::libc::MSG_PEEK | nix::libc::MSG_DONTWAIT,
            )
        };
        if peeked < 0 {
            return None;
        }
        if self.buf.is_empty() {
            self.buf = vec![0; MAX_MESSAGE + 1];
        }
        let n = self.socket.as_ref()?.try_recv(&mut self.buf).ok()?;
        Some(StepMessage::decode(&self.buf[..n]))
    }
}

/// Publishes what a step sends through its control socket, as the agent: progress on the run's
/// channel (the run and step are the agent's, whatever the step claims), events on the agent's
/// `event/<agent>/<event>`; secret values are removed by the store on the way.
struct Reporter<'a> {
    store: &'a Store,
    run: &'a RunId,
    /// The step's start report; a progress message updates its percent and message.
    progress: Progress,
}

impl Reporter<'_> {
    async fn handle(&self, msg: std::result::Result<StepMessage, StepMessageError>) {
        let (store, run) = (self.store, self.run);
        match msg {
            Ok(StepMessage::Progress { percent, message }) => {
                let mut p = self.progress.clone();
                p.percent = Some(percent);
                p.message = message;
                store.publish_progress(run, &p).await;
            }
            Ok(StepMessage::Emit { event, data }) => {
                if let Err(e) = store.publish_emitted(&event, &data).await {
                    tracing::warn!(%run, %event, error = %e, "emitted event not published");
                }
            }
            Err(e) => {
                let why = store.scrubber.scrub_str(&e.to_string());
                tracing::warn!(%run, step = ?self.progress.step, "step message refused: {why}");
            }
        }
    }
}

/// The processes of one run, and how they are found when it ends: its cgroup, or else their
/// environment (`AGENT_NAME` + `AGENT_RUN_ID`, see `procs.rs`). Dropped without [`Self::end`] (the
/// agent shutting down mid-run), it still kills them.
struct RunProcesses {
    cgroup: Option<crate::cgroup::RunCgroup>,
    agent: String,
    run: String,
    ended: bool,
}

impl RunProcesses {
    fn new(env: &StepEnv, agent: &str, run: &RunId) -> Self {
        let cgroup = env.cgroups.as_ref().and_then(|c| {
            c.create()
                .inspect_err(|e| {
                    tracing::warn!(%run, error = %e, "no cgroup for the run; its processes are tracked by environment")
                })
                .ok()
        });
        RunProcesses {
            cgroup,
            agent: agent.to_owned(),
            run: run.to_string(),
            ended: false,
        }
    }

    fn cgroup_fd(&self) -> Option<(RawFd, RawFd)> {
        self.cgroup.as_ref().map(|c| (c.procs_fd(), c.dir_fd()))
    }

    /// Kills whatever of the run is still running; returns how many processes that was.
    async fn end(mut self) -> usize {
        self.ended = true;
        match self.cgroup.take() {
            Some(cg) => cg.end().await,
            None => crate::procs::kill_leftovers(&self.agent, &self.run),
        }
    }
}

impl Drop for RunProcesses {
    fn drop(&mut self) {
        if !self.ended && self.cgroup.is_none() {
            crate::procs::kill_leftovers(&self.agent, &self.run);
        }
        // A cgroup kills what is left in it when it is dropped.
    }
}

/// The pipes of one step: stdin, and one pipe that stdout and stderr share, so the output keeps the
/// order in which the step wrote its lines (and costs one pipe and one reader instead of two). With
/// no data, stdin is `/dev/null`: the step reads the same (nothing), and a pipe fewer is made.
struct StepPipes {
    /// `None`: `/dev/null`.
    stdin: Option<OwnedFd>,
    stdin_writer: Option<OwnedFd>,
    stdout: OwnedFd,
    stderr: OwnedFd,
    output: OwnedFd,
}

impl StepPipes {
    fn new(no_data: bool) -> std::io::Result<Self> {
        let (stdin, stdin_writer) = if no_data {
            (None, None)
        } else {
            let (stdin_r, stdin_w) = pipe2(OFlag::O_CLOEXEC)?;
            (Some(stdin_r), Some(stdin_w))
        };
        let (out_r, out_w) = pipe2(OFlag::O_CLOEXEC)?;
        let err_w = out_w.try_clone()?;
        Ok(StepPipes {
            stdin,
            stdin_writer,
            stdout: out_w,
            stderr: err_w,
            output: out_r,
        })
    }
}

/// A step's process: started born in its run's cgroup ([`crate::spawn`]) or by the standard spawn.
enum StepChild {
    InCgroup(crate::spawn::StepProcess),
    Std(tokio::process::Child),
}

impl StepChild {
    fn id(&self) -> Option<u32> {
        match self {
            StepChild::InCgroup(p) => Some(p.id() as u32),
            StepChild::Std(c) => c.id(),
        }
    }

    async fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        match self {
            StepChild::InCgroup(p) => p.wait().await,
            StepChild::Std(c) => c.wait().await,
        }
    }

    fn try_wait(&mut self) -> std::io::Result<Option<std::process::ExitStatus>> {
        match self {
            StepChild::InCgroup(p) => p.try_wait(),
            StepChild::Std(c) => c.try_wait(),
        }
    }
}

/// Starts a step's process: in its run's cgroup from its first instruction when there is one
/// (`clone3`), else — no cgroup, or a kernel without `CLONE_INTO_CGROUP` — with the standard spawn,
/// which then moves it into the cgroup between fork and exec (slower: docs/BENCHMARKS.md).
fn start_step(
    step: &PlanEntry,
    data: &str,
    env: &[(String, String)],
    pipes: &StepPipes,
    control: &ControlSocket,
    cgroup: Option<(RawFd, RawFd)>,
) -> std::io::Result<StepChild> {
    let control_fd_value = CONTROL_FD.to_string();
    let mut vars: Vec<(&std::ffi::OsStr, &std::ffi::OsStr)> =
        env.iter().map(|(k, v)| (k.as_ref(), v.as_ref())).collect();
    vars.push((step_env::AGENT_STEP.as_ref(), step.name.as_ref()));
    vars.push((CONTROL_FD_ENV.as_ref(), control_fd_value.as_ref()));
    let null;
    let stdin_fd = match &pipes.stdin {
        Some(fd) => fd.as_raw_fd(),
        None => {
            null = std::fs::File::open("/dev/null")?;
            null.as_raw_fd()
        }
    };
    if let Some((_, dir)) = cgroup {
        let spec = crate::spawn::StepSpawn {
            program: &step.path,
            arg: data,
            env: vars.clone(),
            stdin: stdin_fd,
            stdout: pipes.stdout.as_raw_fd(),
            stderr: pipes.stderr.as_raw_fd(),
            control: control.step_fd(),
            control_at: CONTROL_FD,
            cgroup: dir,
        };
        match crate::spawn::spawn(&spec) {
            Ok(p) => return Ok(StepChild::InCgroup(p)),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(nix::libc::ENOSYS | nix::libc::EINVAL | nix::libc::E2BIG)
                ) => {}
            Err(e) => return Err(e),
        }
    }
    let mut cmd = tokio::process::Command::new(&step.path);
    cmd.arg(data)
        .envs(vars)
        .stdin(match &pipes.stdin {
            Some(fd) => Stdio::from(fd.try_clone()?),
            None => Stdio::null(),
        })
        .stdout(Stdio::from(pipes.stdout.try_clone()?))
        .stderr(Stdio::from(pipes.stderr.try_clone()?))
        .process_group(0);
    let (procs_fd, control_fd) = (cgroup.map(|(procs, _)| procs), control.step_fd());
    // SAFETY: the closure runs between fork and exec and makes only async-signal-safe calls
    // (write, dup2, fcntl) on descriptors this process keeps open until `spawn` returns.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(fd) = procs_fd {
                crate::cgroup::join_in_child(fd)?;
            }
            ControlSocket::install_in_child(control_fd)
        });
    }
    cmd.spawn().map(StepChild::Std)
}

/// Writes the event data to the step's stdin and closes it. Usually the data fits the pipe and one
/// non-blocking write does it; the rest, if any, is written by a task as the step reads. A step that
/// does not read stdin closes it early: EPIPE then is expected and harmless.
fn feed_stdin(writer: OwnedFd, data: &[u8]) {
    let flags = fcntl(&writer, FcntlArg::F_GETFL).map(OFlag::from_bits_truncate);
    let nonblocking = flags.and_then(|f| fcntl(&writer, FcntlArg::F_SETFL(f | OFlag::O_NONBLOCK)));
    if nonblocking.is_err() {
        return;
    }
    let mut file = std::fs::File::from(writer);
    let written = match std::io::Write::write(&mut file, data) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
        Err(_) => return,
    };
    if written == data.len() {
        return;
    }
    let rest = data[written..].to_vec();
    if let Ok(mut tx) = pipe::Sender::from_file(file) {
        tokio::spawn(async move {
            let _ = tx.write_all(&rest).await;
        });
    }
}

/// A step's output pipe and what was read from it (at most [`STEP_CAPTURE_CAP`] bytes kept; the rest
/// is read and dropped, so the step never blocks on a full pipe).
struct Capture {
    pipe: Option<pipe::Receiver>,
    kept: Vec<u8>,
    buf: Box<[u8; 8192]>,
}

impl Capture {
    fn new(fd: OwnedFd) -> Self {
        Capture {
            pipe: pipe::Receiver::from_owned_fd(fd).ok(),
            kept: Vec::new(),
            buf: Box::new([0; 8192]),
        }
    }

    /// Reads once: returns when some output arrived or the pipe closed; never, once it is closed.
    /// Cancel-safe (a read that loses a `select!` has taken nothing).
    async fn read_some(&mut self) {
        let Some(pipe) = &mut self.pipe else {
            return std::future::pending().await;
        };
        match pipe.read(&mut self.buf[..]).await {
            Ok(0) | Err(_) => self.pipe = None,
            Ok(n) => {
                let room = STEP_CAPTURE_CAP.saturating_sub(self.kept.len());
                self.kept.extend_from_slice(&self.buf[..n.min(room)]);
            }
        }
    }

    /// Reads until every writer has closed the pipe.
    async fn drain(&mut self) {
        while self.pipe.is_some() {
            self.read_some().await;
        }
    }

    fn into_bytes(self) -> Vec<u8> {
        self.kept
    }
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| exit::SIGNAL_BASE + s))
        .unwrap_or(exit::SPAWN_FAILED)
}

/// SIGTERM to the step's process group, then SIGKILL to whatever of the group is left after `grace`.
async fn terminate(child: &mut StepChild, pgid: Pid, grace: Duration) {
    let _ = killpg(pgid, Signal::SIGTERM);
    let until = Instant::now() + grace;
    let mut reaped = false;
    loop {
        reaped = reaped || matches!(child.try_wait(), Ok(Some(_)));
        // Signal 0 probes the group: ESRCH once no member is left (the leader reaped above).
        let group_alive = killpg(pgid, None).is_ok();
        if (reaped && !group_alive) || Instant::now() >= until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = killpg(pgid, Signal::SIGKILL);
    let _ = child.wait().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_env_filtering() {
        let raw: Vec<(Vec<u8>, Vec<u8>)> = [
            (&b"PORT"[..], &b"8080"[..]),
            (b"\xffNAME", b"x"),
            (b"bad-name", b"x"),
            (b"REDIS_URL", b"redis://evil"),
            (b"AGENT_NAME", b"other"),
            (b"BIN", b"\xff"),
            (b"NUL", b"a\0b"),
            (b"_OK", b""),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_vec(), v.to_vec()))
        .collect();
        let (vars, warnings) = module_env_vars(raw);
        assert_eq!(
            vars,
            vec![
                ("PORT".into(), "8080".into()),
                ("_OK".into(), String::new())
            ]
        );
        assert_eq!(warnings.len(), 6, "{warnings:?}");
        assert!(warnings
            .iter()
            .any(|w| w.contains("REDIS_URL") && w.contains("sets itself")));
        assert!(warnings
            .iter()
            .any(|w| w.contains("BIN") && w.contains("UTF-8")));
    }
}
