//! Running one queued event: plan, steps as child processes, record, journal, progress.
//!
//! Each step runs in its own process group with the event data as `argv[1]` and on stdin. The first
//! failing step ends the run. A timeout or a cancel sends SIGTERM to the step's whole group, then
//! SIGKILL after the grace period, so grandchildren that ignore SIGTERM die too. An agent shutting down
//! kills the step but does *not* finish the run: its queue entry stays pending, and the next start runs
//! it again with `attempt` incremented.

use std::sync::{Arc, Mutex};

use core_events::StepMessage;
use core_events::{
    exit, EventName, JournalEntry, Progress, QueueEntry, RollbackStatus, RunId, RunRecord,
    RunStatus,
};
use core_events::{output, step_env, JournalStatus};
use std::os::fd::RawFd;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use std::time::Duration;

use crate::config::EngineConfig;
use crate::context::AgentCtx;
use crate::error::Result;
use crate::plan::{plan_event, EventPlan, PlanEntry, PlanVerdict};
use crate::step_process::{self, Interrupt, Signals, StepEnd, StepSpec};
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
        self.lock().cancel();
    }

    fn token(&self) -> CancellationToken {
        self.lock().clone()
    }

    /// The token; a panic elsewhere while it was held leaves nothing half-done (it is one value).
    fn lock(&self) -> std::sync::MutexGuard<'_, CancellationToken> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A fresh token for the rollback of a cancelled run; later cancels fire it.
    fn renew(&self) -> CancellationToken {
        let mut t = self.lock();
        *t = CancellationToken::new();
        t.clone()
    }
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

pub(crate) async fn execute(ctx: &AgentCtx, env: &StepEnv, req: RunRequest) -> Result<()> {
    let store = &ctx.store;
    let RunRequest {
        stream_id,
        entry,
        cancel,
        kill_now,
    } = req;
    let run = &entry.run;
    let cfg = ctx.cfg.clone();
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
    record.data = ctx.scrubber.scrub_str(&entry.data);
    let finish = |mut record: RunRecord, status: RunStatus, code: i32, error: Option<String>| {
        record.status = Some(status);
        record.exit_code = Some(code);
        record.ended = Some(now_rfc3339());
        record.error = error.map(|e| ctx.scrubber.scrub_str(&e));
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
            publish_end(ctx, run, status);
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

    let env_vars = step_vars(env, &module_env, ctx, &entry, attempt);
    let mut output_left = cfg.output_cap;
    let steps = StepRunner {
        ctx,
        run,
        data: &entry.data,
        env: &env_vars,
        cgroup_fd: processes.cgroup_fd(),
    };
    let limits = Limits::new(&cfg, plan.settings.timeout, cancel.token(), &kill_now);
    let outcome = match run_steps(
        &steps,
        &plan,
        Policy::StopAtFirstFailure,
        &limits,
        None,
        &mut output_left,
    )
    .await?
    {
        StepsEnd::ShutDown { step } => {
            return record_shutdown(store, run, &entry.event, attempt, &step, None).await;
        }
        StepsEnd::Ran { failures, .. } => match failures.into_iter().next() {
            None => RunOutcome::done(),
            Some(f) => RunOutcome::failed(f, limits.timeout),
        },
    };
    record.failed_step = outcome.failed_step.clone();

    // A failed or cancelled run is undone by the steps of `<event>.rollback` before its end is
    // recorded, so whoever waits for the terminal status sees the undo completed.
    let mut rollback_journal = None;
    if let (Some(stop), Some(rb_event)) = (outcome.stop, entry.event.rollback()) {
        let rb_plan = plan_event(&cfg.events_dirs, &rb_event);
        if rb_plan.steps().next().is_some() {
            let failed_step = record.failed_step.clone().unwrap_or_default();
            let cancel_token = match stop {
                Stop::Cancelled => cancel.renew(),
                Stop::Failed | Stop::TimedOut => cancel.token(),
            };
            let rb = Rollback {
                ctx,
                run,
                entry: &entry,
                event: &rb_event,
                plan: &rb_plan,
                stop,
                failed_step: &failed_step,
                steps: StepRunner {
                    env: &env_vars,
                    ..steps
                },
                attempt,
                cancel: cancel_token,
                kill_now: &kill_now,
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
    let RunOutcome {
        status,
        exit_code: code,
        error,
        ..
    } = outcome;
    let (rec, j) = finish(record, status, code, error);
    // Its failure does not matter: the final record carries the data too.
    if let Some(write) = data_written {
        let _ = write.await;
    }
    let journals: Vec<&JournalEntry> = rollback_journal.iter().chain([&j]).collect();
    store.finish_run(run, &stream_id, &rec, &journals).await?;
    tracing::info!(%run, status = %status, exit_code = code, rollback = ?rec.rollback, "run ended");
    publish_end(ctx, run, status);
    Ok(())
}

/// How a run ended, as it is recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RunOutcome {
    status: RunStatus,
    exit_code: i32,
    /// Why it did not succeed.
    error: Option<String>,
    /// The step that failed, timed out or was cancelled.
    failed_step: Option<String>,
    /// What stopped its steps, `None` when they all succeeded: decides its rollback.
    stop: Option<Stop>,
}

impl RunOutcome {
    fn done() -> Self {
        RunOutcome {
            status: RunStatus::Done,
            exit_code: exit::OK,
            error: None,
            failed_step: None,
            stop: None,
        }
    }

    /// The outcome of a run whose step `f` failed; `timeout` is the run's.
    fn failed(f: Failure, timeout: Duration) -> Self {
        let (status, exit_code, stop) = match &f.how {
            Failed::Exited(code) => (RunStatus::Failed, *code, Stop::Failed),
            Failed::NotStarted(_) => (RunStatus::Failed, exit::SPAWN_FAILED, Stop::Failed),
            Failed::TimedOut => (RunStatus::Failed, exit::TIMEOUT, Stop::TimedOut),
            Failed::Cancelled => (RunStatus::Cancelled, exit::CANCELLED, Stop::Cancelled),
        };
        RunOutcome {
            status,
            exit_code,
            error: Some(f.describe(timeout)),
            failed_step: Some(f.step),
            stop: Some(stop),
        }
    }
}

/// How one step failed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Failed {
    Exited(i32),
    NotStarted(String),
    TimedOut,
    Cancelled,
}

/// A step that failed, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Failure {
    step: String,
    how: Failed,
}

impl Failure {
    /// What the record, the journal and the rollback's message say; `timeout` is the steps'.
    fn describe(&self, timeout: Duration) -> String {
        let step = &self.step;
        match &self.how {
            Failed::Exited(code) => format!("step {step} exited with code {code}"),
            Failed::NotStarted(e) => format!("step {step} could not start: {e}"),
            Failed::TimedOut => format!("timed out after {}s in step {step}", timeout.as_secs()),
            Failed::Cancelled => format!("cancelled in step {step}"),
        }
    }

    /// A timeout or a cancel stops the steps whatever the policy.
    fn stops_all(&self) -> bool {
        matches!(self.how, Failed::TimedOut | Failed::Cancelled)
    }
}

/// What a failed step means for the steps after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Policy {
    /// A run: its first failing step ends it.
    StopAtFirstFailure,
    /// A rollback: undoing goes as far as it can; only a timeout or a cancel stops it.
    RunAll,
}

/// How a plan's steps went.
#[derive(Debug)]
enum StepsEnd {
    /// The steps ran (as far as the policy let them): the failures in run order, the steps a
    /// timeout or cancel kept from running.
    Ran {
        failures: Vec<Failure>,
        not_run: Vec<String>,
    },
    /// The agent shut down during `step`: nothing is recorded as the end; the run runs again.
    ShutDown { step: String },
}

/// The time limits of a plan's steps and what can stop them.
struct Limits<'a> {
    timeout: Duration,
    deadline: Instant,
    grace: Duration,
    cancel: CancellationToken,
    kill_now: &'a CancellationToken,
}

impl<'a> Limits<'a> {
    fn new(
        cfg: &EngineConfig,
        timeout: Option<Duration>,
        cancel: CancellationToken,
        kill_now: &'a CancellationToken,
    ) -> Self {
        let timeout = timeout.unwrap_or(cfg.default_timeout);
        Limits {
            timeout,
            deadline: Instant::now() + timeout,
            grace: cfg.kill_grace,
            cancel,
            kill_now,
        }
    }

    fn signals(&self) -> Signals<'_> {
        Signals {
            deadline: self.deadline,
            cancel: &self.cancel,
            kill_now: self.kill_now,
            grace: self.grace,
        }
    }
}

/// Runs the steps of `plan` in order under `policy` and `limits`; each step's progress message
/// says `label` (a rollback's).
async fn run_steps(
    runner: &StepRunner<'_>,
    plan: &EventPlan,
    policy: Policy,
    limits: &Limits<'_>,
    label: Option<&str>,
    output_left: &mut usize,
) -> Result<StepsEnd> {
    let steps: Vec<&PlanEntry> = plan.steps().collect();
    let total = steps.len() as u32;
    let mut failures = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        let position = (i as u32 + 1, total, label.map(str::to_string));
        let how = match runner
            .run(step, position, limits.signals(), output_left)
            .await?
        {
            StepEnd::Exited(0) => continue,
            StepEnd::Exited(code) => Failed::Exited(code),
            StepEnd::SpawnFailed(e) => Failed::NotStarted(e),
            StepEnd::Interrupted(Interrupt::Timeout) => Failed::TimedOut,
            StepEnd::Interrupted(Interrupt::Cancel) => Failed::Cancelled,
            StepEnd::Interrupted(Interrupt::Shutdown) => {
                return Ok(StepsEnd::ShutDown {
                    step: step.name.clone(),
                })
            }
        };
        let failure = Failure {
            step: step.name.clone(),
            how,
        };
        let stop = failure.stops_all() || policy == Policy::StopAtFirstFailure;
        failures.push(failure);
        if stop {
            let not_run = steps[i + 1..].iter().map(|s| s.name.clone()).collect();
            return Ok(StepsEnd::Ran { failures, not_run });
        }
    }
    Ok(StepsEnd::Ran {
        failures,
        not_run: Vec::new(),
    })
}

/// Journals that the agent shut down during `step` of a run (or of its rollback: `rollback_of`
/// names the failed event); the run stays pending and starts again on the next start.
async fn record_shutdown(
    store: &Store,
    run: &RunId,
    event: &EventName,
    attempt: u32,
    step: &str,
    rollback_of: Option<&str>,
) -> Result<()> {
    let mut j = JournalEntry::new(
        run.as_str(),
        event.as_str(),
        JournalStatus::Interrupted,
        attempt,
        now_rfc3339(),
    );
    j.step = Some(step.to_string());
    j.message = Some(match rollback_of {
        None => "agent shut down; the run starts again on its next start".into(),
        Some(original) => format!(
            "agent shut down during the rollback of {original}; the run starts again on its next start"
        ),
    });
    store.journal(&j).await?;
    match rollback_of {
        None => tracing::warn!(%run, %step, "run interrupted by shutdown"),
        Some(_) => tracing::warn!(%run, %step, "rollback interrupted by shutdown"),
    }
    Ok(())
}

/// How the steps of a run that needs a rollback ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    ctx: &'a AgentCtx,
    run: &'a RunId,
    entry: &'a QueueEntry,
    event: &'a EventName,
    plan: &'a EventPlan,
    stop: Stop,
    /// The step that failed, timed out or was cancelled.
    failed_step: &'a str,
    /// Runs the steps as the failed run's did (its environment, data, cgroup).
    steps: StepRunner<'a>,
    attempt: u32,
    cancel: CancellationToken,
    kill_now: &'a CancellationToken,
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
        let (store, run, cfg) = (&self.ctx.store, self.run, &self.ctx.cfg);
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

        let mut env = self.steps.env.to_vec();
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
        let steps = StepRunner {
            env: &env,
            ..self.steps
        };
        let limits = Limits::new(
            cfg,
            self.plan.settings.timeout,
            self.cancel.clone(),
            self.kill_now,
        );
        let label = format!("rollback of {original}");
        let ended = run_steps(
            &steps,
            self.plan,
            Policy::RunAll,
            &limits,
            Some(&label),
            output_left,
        )
        .await?;
        let (failures, not_run) = match ended {
            StepsEnd::Ran { failures, not_run } => (failures, not_run),
            StepsEnd::ShutDown { step } => {
                record_shutdown(
                    store,
                    run,
                    &self.entry.event,
                    self.attempt,
                    &step,
                    Some(original),
                )
                .await?;
                return Ok(None);
            }
        };
        let total = self.plan.steps().count();
        let failed: Vec<String> = failures.iter().map(|f| f.step.clone()).collect();
        let mut problems: Vec<String> = failures
            .iter()
            .map(|f| f.describe(limits.timeout))
            .collect();
        if let Some(last) = problems.last_mut() {
            // A timeout or a cancel ends the rollback: the later steps do not run.
            if !not_run.is_empty() {
                last.push_str(&format!("; not run: {}", not_run.join(", ")));
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
fn publish_end(ctx: &AgentCtx, run: &RunId, status: RunStatus) {
    let p = Progress {
        run: run.to_string(),
        step: None,
        step_index: None,
        steps: None,
        percent: None,
        message: None,
        status: Some(status),
    };
    publish_detached(ctx, run, p);
}

/// Progress is best effort: it is published by a task of its own rather than in the run's way.
fn publish_detached(ctx: &AgentCtx, run: &RunId, progress: Progress) {
    let (store, run) = (ctx.store.clone(), run.clone());
    ctx.detach(async move { store.publish_progress(&run, &progress).await });
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
    ctx: &AgentCtx,
    entry: &QueueEntry,
    attempt: u32,
) -> Vec<(String, String)> {
    let mut vars = module_env.to_vec();
    let (cfg, store) = (&ctx.cfg, &ctx.store);
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
        (step_env::REDIS_URL.into(), env.redis_url(&ctx.scrubber)),
    ]);
    vars
}

/// Runs the steps of one run (or of its rollback) and records each: its data, environment and
/// cgroup are the run's.
#[derive(Clone, Copy)]
struct StepRunner<'a> {
    ctx: &'a AgentCtx,
    run: &'a RunId,
    data: &'a str,
    env: &'a [(String, String)],
    /// The run's cgroup: its `cgroup.procs` and its directory.
    cgroup_fd: Option<(RawFd, RawFd)>,
}

impl StepRunner<'_> {
    /// Runs one step: a progress message as it starts (`position`: its index from 1, the number
    /// of steps, a message), its scrubbed output appended to the run's output.
    async fn run(
        &self,
        step: &PlanEntry,
        position: (u32, u32, Option<String>),
        signals: Signals<'_>,
        output_left: &mut usize,
    ) -> Result<StepEnd> {
        let (ctx, run) = (self.ctx, self.run);
        let store = &ctx.store;
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
            ctx,
            run,
            progress: progress.clone(),
        };
        let mut vars: Vec<(&std::ffi::OsStr, &std::ffi::OsStr)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_ref(), v.as_ref()))
            .collect();
        vars.push((step_env::AGENT_STEP.as_ref(), step.name.as_ref()));
        let spec = StepSpec {
            program: &step.path,
            data: self.data,
            env: vars,
            cgroup: self.cgroup_fd,
        };
        let (end, output) = step_process::run(
            &spec,
            signals,
            || publish_detached(ctx, run, progress),
            &reporter,
        )
        .await;
        let output = ctx.scrubber.scrub(&output);
        append_output(store, run, &step.name, &output, output_left).await?;
        Ok(end)
    }
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

/// Publishes what a step sends through its control socket, as the agent: progress on the run's
/// channel (the run and step are the agent's, whatever the step claims), events on the agent's
/// `event/<agent>/<event>`; secret values are removed by the store on the way.
struct Reporter<'a> {
    ctx: &'a AgentCtx,
    run: &'a RunId,
    /// The step's start report; a progress message updates its percent and message.
    progress: Progress,
}

impl step_process::MessageSink for Reporter<'_> {
    async fn message(&self, msg: step_process::Message) {
        let (ctx, run) = (self.ctx, self.run);
        let store = &ctx.store;
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
                let why = ctx.scrubber.scrub_str(&e.to_string());
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

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(how: Failed) -> Failure {
        Failure {
            step: "20x".into(),
            how,
        }
    }

    #[test]
    fn each_failure_has_its_status_code_message_and_rollback() {
        let t = Duration::from_secs(9);
        let cases = [
            (
                Failed::Exited(3),
                RunStatus::Failed,
                3,
                "step 20x exited with code 3",
                Stop::Failed,
            ),
            (
                Failed::NotStarted("ENOEXEC".into()),
                RunStatus::Failed,
                exit::SPAWN_FAILED,
                "step 20x could not start: ENOEXEC",
                Stop::Failed,
            ),
            (
                Failed::TimedOut,
                RunStatus::Failed,
                exit::TIMEOUT,
                "timed out after 9s in step 20x",
                Stop::TimedOut,
            ),
            (
                Failed::Cancelled,
                RunStatus::Cancelled,
                exit::CANCELLED,
                "cancelled in step 20x",
                Stop::Cancelled,
            ),
        ];
        for (how, status, code, message, stop) in cases {
            let stops_all = matches!(how, Failed::TimedOut | Failed::Cancelled);
            let f = failure(how);
            assert_eq!(f.stops_all(), stops_all, "{f:?}");
            let o = RunOutcome::failed(f, t);
            assert_eq!(o.status, status);
            assert_eq!(o.exit_code, code);
            assert_eq!(o.error.as_deref(), Some(message));
            assert_eq!(o.failed_step.as_deref(), Some("20x"));
            assert_eq!(o.stop, Some(stop));
        }
        let done = RunOutcome::done();
        assert_eq!(
            (done.status, done.exit_code, done.stop),
            (RunStatus::Done, 0, None)
        );
    }

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
