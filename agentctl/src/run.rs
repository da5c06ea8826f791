//! `agentctl run`: queue an event with a run id of our own, then follow the run to its end.
//!
//! Progress reports arrive by pub/sub, which drops messages whenever the subscription is not there,
//! so the run record is also polled: the record decides when the run is over, progress only feeds
//! the progress bar.

use std::io::{IsTerminal, Read, Write};
use std::time::Duration;

use anyhow::{Context, Result};
use core_events::record::{QUEUE_FIELD_DATA, QUEUE_FIELD_EVENT, QUEUE_FIELD_ID};
use core_events::{exit, keys, EventName, Progress, RunId, RunRecord, RunStatus};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use redis::{AsyncCommands, PushInfo, PushKind};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::{Instant, MissedTickBehavior};

use crate::agent::{resolve, AgentRef};
use crate::conn::{is_transient, Redis};
use crate::fail::invalid;
use crate::output::{exit_code_of, read_output, read_record, section_of, summary, RunJson};

/// How often the run record is read while following a run.
const POLL: Duration = Duration::from_millis(300);

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The agent: node/NAME, module/NAME or NAME (see AGENT in `agentctl --help`).
    agent: String,

    /// The event: a directory name under the agent's event dirs ([A-Za-z0-9._-], at most 128 bytes).
    event: String,

    /// Data for the steps: each gets it as argv[1] and on stdin. `-` reads it from stdin.
    #[arg(default_value = "")]
    data: String,

    /// Queue the event and exit at once, printing the run id on stdout.
    #[arg(long)]
    no_wait: bool,

    /// Stop waiting after SECS seconds (exit 124; the run goes on). 0 waits for ever.
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    timeout: u64,

    /// Print the final run record as JSON on stdout (with --no-wait: the queued run).
    #[arg(long)]
    json: bool,
}

pub async fn main(redis: &Redis, args: RunArgs) -> Result<i32> {
    let agent = AgentRef::parse(&args.agent)?;
    let event =
        EventName::new(args.event.as_str()).map_err(|e| invalid(format!("cannot run: {e}")))?;
    let data = read_data(&args.data)?;

    let mut con = redis.manager().await?;
    let prefix = resolve(&mut con, &agent).await?;
    let opts = Follow {
        no_wait: args.no_wait,
        timeout: args.timeout,
        json: args.json,
        run_id_on_stdout: true,
    };
    queue_and_follow(redis, &mut con, &prefix, &event, &data, &opts).await
}

/// How long a queued event waits for a replica's acknowledgement.
const REPLICA_WAIT: Duration = Duration::from_secs(5);

/// In a cluster, waits until a replica has what this connection wrote (`WAIT 1`), so that the
/// queued event survives the leader's loss; says so when none acknowledged in time. A leader
/// without replicas (a lone node, every replica down) is not waited on: `WAIT` would only time
/// out. What this protects and what not: docs/CLUSTER.md, "Writes that survive a failover".
pub(crate) async fn wait_for_a_replica(con: &mut redis::aio::ConnectionManager) {
    let Ok(role) = redis::cmd("ROLE").query_async::<redis::Value>(con).await else {
        return;
    };
    let replicas = match &role {
        redis::Value::Array(v) => match v.get(2) {
            Some(redis::Value::Array(r)) => r.len(),
            _ => 0,
        },
        _ => 0,
    };
    if replicas == 0 {
        return;
    }
    let acked: redis::RedisResult<i64> = redis::cmd("WAIT")
        .arg(1)
        .arg(REPLICA_WAIT.as_millis() as u64)
        .query_async(con)
        .await;
    match acked {
        Ok(n) if n >= 1 => {}
        Ok(_) => eprintln!(
            "warning: no replica acknowledged within {}s: if the leader is lost now, this may be \
             lost with it",
            REPLICA_WAIT.as_secs()
        ),
        Err(e) => eprintln!("warning: cannot wait for a replica: {e}"),
    }
}

/// How [`queue_and_follow`] behaves: the options of `agentctl run`.
pub struct Follow {
    /// Queue and return at once.
    pub no_wait: bool,
    /// Stop waiting after this many seconds (exit 124); 0 waits for ever.
    pub timeout: u64,
    /// Print the final record (or the queued run) as JSON on stdout.
    pub json: bool,
    /// With `no_wait` and without `json`: print the run id on stdout (else on stderr only).
    pub run_id_on_stdout: bool,
}

impl Follow {
    /// Follow to the end (at most `timeout` seconds), text output: how agentctl's own commands
    /// (cluster join, remove-node) run the events they queue.
    pub fn to_end(timeout: u64) -> Follow {
        Follow {
            no_wait: false,
            timeout,
            json: false,
            run_id_on_stdout: false,
        }
    }
}

/// Queues `event` with `data` on `prefix`'s queue under a fresh run id and, unless `no_wait`,
/// follows the run to its end with a progress bar. Returns the exit code agentctl ends with: the
/// run's own, or 124/130 when it stopped waiting.
pub async fn queue_and_follow(
    redis: &Redis,
    con: &mut redis::aio::ConnectionManager,
    prefix: &core_events::Prefix,
    event: &EventName,
    data: &str,
    args: &Follow,
) -> Result<i32> {
    let run = new_run_id()?;
    let alive: bool = con
        .exists(prefix.heartbeat())
        .await
        .context("cannot check whether the agent is running")?;
    if !alive {
        eprintln!(
            "warning: agent {prefix} is not running (no {}); the event stays queued until it starts",
            prefix.heartbeat(),
            prefix = prefix.as_str()
        );
    }

    // Subscribe before queuing, so not even the first report can be missed.
    let mut subscription = None;
    if !args.no_wait {
        let channel = keys::progress_channel(prefix.agent(), &run);
        match redis.subscribe(&channel).await {
            Ok(s) => subscription = Some(s),
            Err(e) => eprintln!(
                "warning: no progress reports ({}); following the run record",
                crate::fail::render(&e)
            ),
        }
    }

    let stream_id: String = con
        .xadd(
            prefix.queue(),
            "*",
            &[
                (QUEUE_FIELD_EVENT, event.as_str()),
                (QUEUE_FIELD_DATA, data),
                (QUEUE_FIELD_ID, run.as_str()),
            ],
        )
        .await
        .with_context(|| format!("cannot queue the event on {}", prefix.queue()))?;
    eprintln!("run {run} queued on {}", prefix.as_str());
    wait_for_a_replica(con).await;

    if args.no_wait {
        if args.json {
            let j = serde_json::json!({
                "run": run.as_str(),
                "agent": prefix.as_str(),
                "event": event.as_str(),
                "status": RunStatus::Queued,
                "stream_id": stream_id,
            });
            println!("{j}");
        } else if args.run_id_on_stdout {
            println!("{run}");
        }
        return Ok(0);
    }

    let (_sub_conn, rx) = match subscription {
        Some((c, rx)) => (Some(c), Some(rx)),
        None => (None, None),
    };
    let deadline = (args.timeout > 0).then(|| Instant::now() + Duration::from_secs(args.timeout));
    let bar = Bar::new(event);
    let followed = follow(con, prefix, &run, rx, deadline, &bar).await;
    bar.clear();
    let record = match followed? {
        Followed::Ended(r) => *r,
        Followed::TimedOut => {
            eprintln!(
                "agentctl: stopped waiting after {}s; run {run} goes on (see `agentctl show {} {run}`, \
                 `agentctl cancel {} {run}`)",
                args.timeout,
                prefix.as_str(),
                prefix.as_str()
            );
            return Ok(exit::TIMEOUT);
        }
        Followed::Interrupted => {
            eprintln!(
                "agentctl: interrupted; run {run} goes on (see `agentctl show {0} {run}`, \
                 `agentctl cancel {0} {run}`)",
                prefix.as_str()
            );
            return Ok(exit::CANCELLED);
        }
    };

    eprintln!("{}", summary(&run, &record));
    if record.status == Some(RunStatus::Failed) {
        if let Some(step) = &record.failed_step {
            let output = read_output(con, prefix, &run).await?;
            let output = output
                .map(|o| String::from_utf8_lossy(&o).into_owned())
                .unwrap_or_default();
            match section_of(&output, step) {
                Some(text) => {
                    let mut err = std::io::stderr().lock();
                    let _ = write!(err, "{}", core_events::output::step_header(step));
                    let _ = err.write_all(text.as_bytes());
                    if !text.is_empty() && !text.ends_with('\n') {
                        let _ = writeln!(err);
                    }
                }
                None => eprintln!("(step {step} printed nothing)"),
            }
        }
    }
    if args.json {
        let j = RunJson {
            run: run.as_str(),
            agent: prefix.as_str(),
            record: &record,
            output: None,
        };
        println!("{}", serde_json::to_string(&j)?);
    }
    Ok(exit_code_of(&record))
}

/// The DATA argument, or stdin for `-`. Queue entries must be UTF-8, so other bytes are refused.
fn read_data(arg: &str) -> Result<String> {
    if arg != "-" {
        return Ok(arg.to_string());
    }
    let mut bytes = Vec::new();
    std::io::stdin()
        .read_to_end(&mut bytes)
        .context("cannot read the event data from stdin")?;
    String::from_utf8(bytes).map_err(|_| invalid("the event data read from stdin is not UTF-8"))
}

/// `ctl-<unix millis>-<8 random hex digits>`: unique without asking Redis, sortable by time.
fn new_run_id() -> Result<RunId> {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("the clock is before 1970")?
        .as_millis();
    let mut random = [0u8; 4];
    getrandom::fill(&mut random).map_err(|e| anyhow::anyhow!("no random numbers: {e}"))?;
    Ok(run_id_from(millis, random))
}

fn run_id_from(millis: u128, random: [u8; 4]) -> RunId {
    let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
    RunId::new(format!("ctl-{millis}-{hex}")).expect("ctl-<digits>-<hex> is a valid run id")
}

enum Followed {
    Ended(Box<RunRecord>),
    TimedOut,
    Interrupted,
}

async fn follow(
    con: &mut redis::aio::ConnectionManager,
    prefix: &core_events::Prefix,
    run: &RunId,
    mut rx: Option<UnboundedReceiver<PushInfo>>,
    deadline: Option<Instant>,
    bar: &Bar,
) -> Result<Followed> {
    let mut sigint = signal(SignalKind::interrupt()).context("cannot catch SIGINT")?;
    let mut poll = tokio::time::interval(POLL);
    poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut warned = false;
    loop {
        tokio::select! {
            push = next_push(&mut rx) => {
                if let Some(p) = progress_of(push) {
                    bar.show(&p);
                    if p.status.is_some_and(RunStatus::is_terminal) {
                        // The record is written before the last report: read it now.
                        poll.reset_immediately();
                    }
                }
            }
            _ = poll.tick() => match read_record(con, prefix, run).await {
                Ok(Some(r)) if r.status.is_some_and(RunStatus::is_terminal) => {
                    return Ok(Followed::Ended(Box::new(r)))
                }
                Ok(Some(r)) => bar.status(r.status),
                Ok(None) => bar.status(Some(RunStatus::Queued)),
                Err(e) if is_transient(&e) => {
                    if !warned {
                        bar.println(&format!(
                            "warning: {}; still trying",
                            crate::fail::render(&e)
                        ));
                        warned = true;
                    }
                }
                Err(e) => return Err(e),
            },
            _ = sleep_until(deadline) => return Ok(Followed::TimedOut),
            _ = sigint.recv() => return Ok(Followed::Interrupted),
        }
    }
}

/// The next push message, or never once the subscription is gone (the poll still follows the run).
async fn next_push(rx: &mut Option<UnboundedReceiver<PushInfo>>) -> PushInfo {
    if let Some(r) = rx {
        match r.recv().await {
            Some(p) if p.kind != PushKind::Disconnection => return p,
            _ => *rx = None,
        }
    }
    std::future::pending().await
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// A progress report from a `message` push (`[channel, payload]`); anything else is ignored.
fn progress_of(push: PushInfo) -> Option<Progress> {
    if push.kind != PushKind::Message {
        return None;
    }
    let payload = push.data.into_iter().nth(1)?;
    let bytes: Vec<u8> = redis::from_redis_value(payload).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// What the progress bar shows for one report.
#[derive(Debug, PartialEq, Eq)]
struct BarState {
    /// `(position, length)`: 100 units per step, so a step's percent moves the bar within it.
    position: Option<(u64, u64)>,
    prefix: String,
    message: String,
}

fn bar_state(p: &Progress) -> BarState {
    let position = match (p.step_index, p.steps) {
        (Some(i), Some(n)) if n > 0 => {
            let i = u64::from(i.clamp(1, n));
            let pct = u64::from(p.percent.unwrap_or(0).min(100));
            Some(((i - 1) * 100 + pct, u64::from(n) * 100))
        }
        _ => None,
    };
    let prefix = match (p.step_index, p.steps) {
        (Some(i), Some(n)) => format!("[{i}/{n}]"),
        _ => String::new(),
    };
    let mut message = p.step.clone().unwrap_or_default();
    if let Some(pct) = p.percent {
        message.push_str(&format!(" {pct}%"));
    }
    if let Some(m) = &p.message {
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(m);
    }
    if message.is_empty() {
        if let Some(s) = p.status {
            message = s.to_string();
        }
    }
    BarState {
        position,
        prefix,
        message,
    }
}

/// The progress bar on stderr; hidden when stderr is not a terminal.
struct Bar {
    bar: ProgressBar,
    event: String,
}

impl Bar {
    fn new(event: &EventName) -> Self {
        let target = if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(Some(100), target);
        let style =
            ProgressStyle::with_template("{spinner} {elapsed:>4} {prefix} [{bar:30}] {wide_msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(event.to_string());
        bar.set_message("queued, waiting for the agent");
        bar.enable_steady_tick(Duration::from_millis(120));
        Bar {
            bar,
            event: event.to_string(),
        }
    }

    fn show(&self, p: &Progress) {
        let s = bar_state(p);
        if let Some((pos, len)) = s.position {
            self.bar.set_length(len);
            self.bar.set_position(pos);
        }
        if !s.prefix.is_empty() {
            self.bar.set_prefix(format!("{} {}", self.event, s.prefix));
        }
        if !s.message.is_empty() {
            self.bar.set_message(s.message);
        }
    }

    /// A record read while no report came yet: say whether the run has started.
    fn status(&self, status: Option<RunStatus>) {
        if self.bar.message().starts_with(RunStatus::Queued.as_str())
            && status == Some(RunStatus::Running)
        {
            self.bar.set_message(RunStatus::Running.as_str());
        }
    }

    fn println(&self, line: &str) {
        self.bar.suspend(|| eprintln!("{line}"));
    }

    fn clear(&self) {
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_are_valid_and_distinct() {
        let id = run_id_from(1_764_064_800_000, [0x1a, 0x2b, 0x3c, 0x4d]);
        assert_eq!(id.as_str(), "ctl-1764064800000-1a2b3c4d");
        let (a, b) = (new_run_id().unwrap(), new_run_id().unwrap());
        assert_ne!(a, b);
        assert!(a.as_str().starts_with("ctl-"));
        assert_eq!(a.as_str().rsplit('-').next().unwrap().len(), 8);
    }

    fn progress() -> Progress {
        Progress {
            run: "r".into(),
            step: None,
            step_index: None,
            steps: None,
            percent: None,
            message: None,
            status: None,
        }
    }

    #[test]
    fn bar_follows_steps_and_percent() {
        let p = Progress {
            step: Some("20second".into()),
            step_index: Some(2),
            steps: Some(3),
            percent: Some(40),
            message: Some("copying".into()),
            ..progress()
        };
        let s = bar_state(&p);
        assert_eq!(s.position, Some((140, 300)));
        assert_eq!(s.prefix, "[2/3]");
        assert_eq!(s.message, "20second 40%: copying");

        let start = Progress {
            step: Some("10first".into()),
            step_index: Some(1),
            steps: Some(2),
            status: Some(RunStatus::Running),
            ..progress()
        };
        let s = bar_state(&start);
        assert_eq!(s.position, Some((0, 200)));
        assert_eq!(s.message, "10first");

        let end = Progress {
            status: Some(RunStatus::Done),
            ..progress()
        };
        let s = bar_state(&end);
        assert_eq!(s.position, None);
        assert_eq!(s.message, "done");
    }

    #[test]
    fn bar_survives_odd_reports() {
        let p = Progress {
            step_index: Some(9),
            steps: Some(2),
            percent: Some(250),
            ..progress()
        };
        assert_eq!(bar_state(&p).position, Some((200, 200)));
        let p = Progress {
            step_index: Some(0),
            steps: Some(0),
            ..progress()
        };
        assert_eq!(bar_state(&p).position, None);
    }

    #[test]
    fn progress_from_push() {
        let payload = serde_json::to_vec(&Progress {
            step: Some("10a".into()),
            ..progress()
        })
        .unwrap();
        let push = PushInfo {
            kind: PushKind::Message,
            data: vec![
                redis::Value::BulkString(b"progress/x/r".to_vec()),
                redis::Value::BulkString(payload),
            ],
        };
        assert_eq!(progress_of(push).unwrap().step.as_deref(), Some("10a"));
        let junk = PushInfo {
            kind: PushKind::Message,
            data: vec![
                redis::Value::BulkString(b"c".to_vec()),
                redis::Value::BulkString(b"not json".to_vec()),
            ],
        };
        assert!(progress_of(junk).is_none());
        let other = PushInfo {
            kind: PushKind::Subscribe,
            data: vec![],
        };
        assert!(progress_of(other).is_none());
    }
}
