//! The runner's fast tests: an agent started in this process (`start_agent`, as mini-redis starts
//! its server in its tests) against a real `redis-server`, with real steps. No agent binary, no
//! process start-up: each test is about a run, not about the daemon around it.
//!
//! Time is not paused: the steps are real processes and Redis a real server, which tokio's paused
//! clock would race (a timeout firing while a step is still starting). Timeouts here are short
//! instead, and nothing asserts how long anything took.

use std::collections::HashMap;
use std::time::Duration;

use agent_engine::{start_agent, EngineConfig};
use agent_tests::{EventDirs, RedisServer};
use core_events::{AgentKind, AgentName};
use redis::Commands;

const LONG: Duration = Duration::from_secs(60);

fn config(redis: &RedisServer, name: &str, dirs: &EventDirs) -> EngineConfig {
    let mut cfg = EngineConfig::new(AgentKind::Module, AgentName::new(name).unwrap());
    cfg.redis_url = redis.url();
    cfg.events_dirs = dirs.dirs();
    cfg.secret_key_file = None;
    cfg.kill_grace = Duration::from_millis(200);
    cfg.shutdown_grace = Duration::from_millis(100);
    cfg
}

/// Queues `event` with `data` under run id `run`.
fn queue(con: &mut redis::Connection, agent: &str, event: &str, data: &str, run: &str) {
    let _: String = con
        .xadd(
            format!("module/{agent}/queue"),
            "*",
            &[("event", event), ("data", data), ("id", run)],
        )
        .unwrap();
}

/// Waits (on a thread of the blocking pool) until the run's record is terminal.
async fn ended(redis: &RedisServer, agent: &str, run: &str) -> HashMap<String, String> {
    let mut con = redis.conn();
    let key = format!("module/{agent}/run/{run}");
    tokio::task::spawn_blocking(move || {
        agent_tests::wait_for(&format!("{key} to end"), LONG, || {
            let rec: HashMap<String, String> = con.hgetall(&key).ok()?;
            let status = rec.get("status")?;
            (status != "running" && status != "queued").then_some(rec)
        })
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn a_run_goes_through_its_steps_and_records_its_end() {
    let redis = RedisServer::start();
    let dirs = EventDirs::new(1);
    dirs.step(0, "hello", "10first", "echo \"first $1\"");
    dirs.step(0, "hello", "20second", "echo \"second $(cat)\"");
    let agent = start_agent(config(&redis, "ip1", &dirs));
    queue(&mut redis.conn(), "ip1", "hello", "d", "r1");
    let rec = ended(&redis, "ip1", "r1").await;
    assert_eq!(rec["status"], "done", "{rec:?}");
    assert_eq!(rec["exit_code"], "0");
    let output: String = redis.conn().get("module/ip1/run/r1/output").unwrap();
    assert_eq!(
        output,
        "==> 10first <==\nfirst d\n==> 20second <==\nsecond d\n"
    );
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn the_first_failing_step_ends_the_run_and_the_rollback_runs_every_step() {
    let redis = RedisServer::start();
    let dirs = EventDirs::new(1);
    let marks = dirs.work().join("marks");
    let m = marks.display();
    dirs.step(0, "ev", "10ok", "true");
    dirs.step(0, "ev", "20fail", "exit 4");
    dirs.step(0, "ev", "30never", &format!("echo never >> {m}"));
    dirs.step(
        0,
        "ev.rollback",
        "10undo",
        &format!("echo \"undo $AGENT_FAILED_STEP\" >> {m}; exit 1"),
    );
    dirs.step(
        0,
        "ev.rollback",
        "20undo",
        &format!("echo \"undo2 $AGENT_RUN_STATUS\" >> {m}"),
    );
    let agent = start_agent(config(&redis, "ip2", &dirs));
    queue(&mut redis.conn(), "ip2", "ev", "", "r1");
    let rec = ended(&redis, "ip2", "r1").await;
    assert_eq!(rec["status"], "failed", "{rec:?}");
    assert_eq!(rec["exit_code"], "4");
    assert_eq!(rec["failed_step"], "20fail");
    assert_eq!(rec["error"], "step 20fail exited with code 4");
    // A failing rollback step does not stop the rollback (Policy::RunAll).
    assert_eq!(rec["rollback"], "failed");
    assert_eq!(rec["rollback_failed"], "10undo");
    assert_eq!(
        std::fs::read_to_string(&marks).unwrap(),
        "undo 20fail\nundo2 failed\n"
    );
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn a_timeout_stops_the_run_and_a_shutdown_leaves_the_entry_pending() {
    let redis = RedisServer::start();
    let dirs = EventDirs::new(1);
    dirs.step(0, "slow", "10sleep", "exec sleep 300");
    dirs.file(0, "slow", ".timeout", "1\n");
    dirs.step(0, "held", "10sleep", "exec sleep 300");
    let agent = start_agent(config(&redis, "ip3", &dirs));
    queue(&mut redis.conn(), "ip3", "slow", "", "r1");
    let rec = ended(&redis, "ip3", "r1").await;
    assert_eq!(rec["status"], "failed", "{rec:?}");
    assert_eq!(rec["exit_code"], "124");
    assert_eq!(rec["error"], "timed out after 1s in step 10sleep");

    queue(&mut redis.conn(), "ip3", "held", "", "r2");
    let mut con = redis.conn();
    tokio::task::spawn_blocking(move || {
        agent_tests::wait_for("r2 to run", LONG, || {
            let status: Option<String> = con.hget("module/ip3/run/r2", "status").ok()?;
            (status.as_deref() == Some("running")).then_some(())
        })
    })
    .await
    .unwrap();
    agent.stop().await.unwrap();
    // Not finished: still running in its record, still pending in the queue, an `interrupted` entry.
    let mut con = redis.conn();
    let status: String = con.hget("module/ip3/run/r2", "status").unwrap();
    assert_eq!(status, "running");
    let pending: redis::streams::StreamPendingReply =
        con.xpending("module/ip3/queue", "agent").unwrap();
    assert_eq!(pending.count(), 1);
    let journal: redis::streams::StreamRangeReply = con.xrange_all("module/ip3/journal").unwrap();
    assert!(journal.ids.iter().any(|e| {
        e.get::<String>("run").as_deref() == Some("r2")
            && e.get::<String>("status").as_deref() == Some("interrupted")
    }));
}
