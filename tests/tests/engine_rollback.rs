//! Rollback of failed and cancelled runs (`<event>.rollback`), against a real redis-server and the
//! real agent binaries.
//!
//! Waits are generous and nothing asserts on timing beyond "this happened before that": these tests
//! must pass on a slow, loaded machine.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use agent_tests::{
    hgetall, read_or_empty, stream, wait_for, wait_run_end, xadd, Agent, EventDirs, RedisServer,
};
use redis::Commands;

const LONG: Duration = Duration::from_secs(60);

/// The journal entries of one run, oldest first.
fn journal_of(
    con: &mut redis::Connection,
    prefix: &str,
    run: &str,
) -> Vec<HashMap<String, String>> {
    stream(con, &format!("{prefix}/journal"))
        .into_iter()
        .filter(|e| e["run"] == run)
        .collect()
}

fn states(journal: &[HashMap<String, String>]) -> Vec<&str> {
    journal.iter().map(|e| e["status"].as_str()).collect()
}

/// A step body that appends one line to `out` with its name, argv, stdin and rollback environment.
fn recorder(out: &Path, label: &str) -> String {
    format!(
        "echo \"{label} step=$AGENT_STEP event=$AGENT_EVENT run=$AGENT_RUN_ID argv=$1 stdin=$(cat) \
         rollback=${{AGENT_ROLLBACK-unset}} failed=${{AGENT_FAILED_STEP-unset}} \
         status=${{AGENT_RUN_STATUS-unset}} port=$PORT\" >> {}",
        out.display()
    )
}

#[test]
fn rollback_runs_after_a_failing_middle_step_with_the_run_env() {
    let redis = RedisServer::start();
    let dirs = EventDirs::new(1);
    let out = dirs.work().join("out");
    let o = out.display();
    dirs.step(0, "ev", "10create", &format!("echo created >> {o}"));
    dirs.step(0, "ev", "20fail", "echo cannot-configure >&2; exit 3");
    dirs.step(0, "ev", "30never", &format!("echo never >> {o}"));
    dirs.step(0, "ev.rollback", "20undo-b", &recorder(&out, "undo-b"));
    dirs.step(
        0,
        "ev.rollback",
        "10undo-a",
        &format!(
            "{}; echo undoing-a-out; echo undoing-a-err >&2",
            recorder(&out, "undo-a")
        ),
    );
    let mut con = redis.conn();
    let _: () = con.hset("module/rb0/module.env", "PORT", "8080").unwrap();
    let _agent = Agent::module(&redis, "rb0", &dirs, &[]);

    xadd(
        &mut con,
        "module/rb0/queue",
        &[("event", "ev"), ("data", "the data"), ("id", "r1")],
    );
    let rec = wait_run_end(&mut con, "module/rb0/run/r1", LONG);
    assert_eq!(rec["status"], "failed", "{rec:?}");
    assert_eq!(rec["exit_code"], "3");
    assert_eq!(rec["failed_step"], "20fail");
    assert!(
        rec["error"].contains("step 20fail exited with code 3"),
        "{rec:?}"
    );
    assert_eq!(rec["rollback"], "done", "{rec:?}");
    assert!(!rec.contains_key("rollback_failed"), "{rec:?}");
    let common = "event=ev run=r1 argv=the data stdin=the data rollback=1 failed=20fail status=failed port=8080";
    assert_eq!(
        read_or_empty(&out),
        format!("created\nundo-a step=10undo-a {common}\nundo-b step=20undo-b {common}\n"),
        "rollback steps run in order, later steps of ev never"
    );

    let output: String = con.get("module/rb0/run/r1/output").unwrap();
    let expected = "==> 20fail <==\ncannot-configure\n\
                    --- rollback of ev (step 20fail failed) ---\n\
                    ==> 10undo-a <==\nundoing-a-out\nundoing-a-err\n";
    assert!(output.ends_with(expected), "{output}");

    let journal = journal_of(&mut con, "module/rb0", "r1");
    assert_eq!(states(&journal), ["running", "rollback", "failed"]);
    let rb = &journal[1];
    assert_eq!(rb["event"], "ev");
    assert!(
        rb["message"].contains("rollback of ev done (2 steps)"),
        "{rb:?}"
    );
    assert!(!rb.contains_key("step"), "{rb:?}");
    let qlen: i64 = con.xlen("module/rb0/queue").unwrap();
    assert_eq!(qlen, 0, "the run left the queue");
}

#[test]
fn terminal_status_is_written_only_after_the_rollback_ended() {
    let redis = RedisServer::start();
    let dirs = EventDirs::new(1);
    let work = dirs.work();
    let (started, finished) = (work.join("started"), work.join("finished"));
    dirs.step(0, "ev", "10fail", "exit 1");
    dirs.step(
        0,
        "ev.rollback",
        "10slow",
        &format!(
            "touch {}; sleep 2; touch {}",
            started.display(),
            finished.display()
        ),
    );
    let mut con = redis.conn();
    let _agent = Agent::node(&redis, "rbnode", &dirs, &[]);
    xadd(
        &mut con,
        "node/rbnode/queue",
        &[("event", "ev"), ("id", "slow")],
    );
    wait_for("the rollback step to start", LONG, || {
        started.exists().then_some(())
    });
    let rec = hgetall(&mut con, "node/rbnode/run/slow");
    assert_eq!(rec["status"], "running", "{rec:?}");
    assert_eq!(rec["rollback"], "running", "{rec:?}");
    // Poll like a waiter would: the first terminal status seen must come after the undo finished.
    let rec = wait_for("the run to end", LONG, || {
        let r = hgetall(&mut con, "node/rbnode/run/slow");
        let terminal = r.get("status").is_some_and(|s| s != "running");
        terminal.then(|| (r, finished.exists()))
    });
    let (rec, undone) = rec;
    assert!(
        undone,
        "terminal status {rec:?} seen before the rollback step ended"
    );
    assert_eq!(rec["status"], "failed");
    assert_eq!(rec["exit_code"], "1");
    assert_eq!(rec["rollback"], "done");
}

#[test]
fn a_failing_rollback_step_does_not_stop_the_next() {
    let redis = RedisServer::start();
    let dirs = EventDirs::new(1);
    let out = dirs.work().join("out");
    let o = out.display();
    dirs.step(0, "ev", "10fail", "exit 2");
    dirs.step(0, "ev.rollback", "10a", &format!("echo a >> {o}; exit 4"));
    dirs.step(0, "ev.rollback", "20b", &format!("echo b >> {o}"));
    let bad = dirs.step(0, "ev.rollback", "30c", "");
    std::fs::write(&bad, "#!/nonexistent/interpreter\n").unwrap();
    dirs.step(0, "ev.rollback", "40d", &format!("echo d >> {o}"));
    let mut con = redis.conn();
    let _agent = Agent::module(&redis, "rb1", &dirs, &[]);
    xadd(
        &mut con,
        "module/rb1/queue",
        &[("event", "ev"), ("id", "f")],
    );
    let rec = wait_run_end(&mut con, "module/rb1/run/f", LONG);
    assert_eq!(rec["status"], "failed");
    assert_eq!(rec["exit_code"], "2", "the run keeps the original failure");
    assert_eq!(rec["failed_step"], "10fail");
    assert_eq!(rec["rollback"], "failed");
    assert_eq!(rec["rollback_failed"], "10a,30c");
    assert_eq!(read_or_empty(&out), "a\nb\nd\n", "every rollback step ran");
    let journal = journal_of(&mut con, "module/rb1", "f");
    assert_eq!(states(&journal), ["running", "rollback", "failed"]);
    let rb = &journal[1];
    assert_eq!(rb["step"], "10a,30c");
    assert!(
        rb["message"].contains("step 10a exited with code 4")
            && rb["message"].contains("step 30c could not start"),
        "{rb:?}"
    );
}

#[test]
fn no_rollback_when_the_run_succeeds_or_defines_none() {
    let redis = RedisServer::start();
    let dirs = EventDirs::new(1);
    let out = dirs.work().join("out");
    dirs.step(0, "ok", "10", "true");
    dirs.step(
        0,
        "ok.rollback",
        "10",
        &format!("echo rolled-back >> {}", out.display()),
    );
    dirs.step(0, "plain", "10", "exit 6");
    // A rollback whose only step is masked is no rollback.
    std::fs::create_dir_all(dirs.dir(0).join("plain.rollback")).unwrap();
    std::os::unix::fs::symlink("/dev/null", dirs.dir(0).join("plain.rollback/10")).unwrap();
    let mut con = redis.conn();
    let _agent = Agent::module(&redis, "rb2", &dirs, &[]);
    xadd(
        &mut con,
        "module/rb2/queue",
        &[("event", "ok"), ("id", "a")],
    );
    xadd(
        &mut con,
        "module/rb2/queue",
        &[("event", "plain"), ("id", "b")],
    );
    let rec = wait_run_end(&mut con, "module/rb2/run/a", LONG);
    assert_eq!(rec["status"], "done");
    assert!(!rec.contains_key("rollback"), "{rec:?}");
    let rec = wait_run_end(&mut con, "module/rb2/run/b", LONG);
    assert_eq!(rec["status"], "failed");
    assert!(!rec.contains_key("rollback"), "{rec:?}");
    assert_eq!(read_or_empty(&out), "");
    for run in ["a", "b"] {
        let journal = journal_of(&mut con, "module/rb2", run);
        assert!(!states(&journal).contains(&"rollback"), "{journal:?}");
    }
    let output: Option<String> = con.get("module/rb2/run/b/output").unwrap();
    assert!(!output.unwrap_or_default().contains("--- rollback"));
}

#[test]
fn a_timeout_triggers_the_rollback_which_has_its_own_timeout() {
    let redis = RedisServer::start();
    let dirs = EventDirs::new(1);
    let out = dirs.work().join("out");
    let o = out.display();
    dirs.step(0, "ev", "10slow", "sleep 60");
    dirs.file(0, "ev", ".timeout", "1");
    dirs.step(0, "ev.rollback", "10undo", &recorder(&out, "undo"));
    dirs.step(
        0,
        "ev.rollback",
        "20stuck",
        &format!("echo stuck >> {o}; sleep 60"),
    );
    dirs.step(0, "ev.rollback", "30after", &format!("echo after >> {o}"));
    dirs.file(0, "ev.rollback", ".timeout", "3");
    let mut con = redis.conn();
    let _agent = Agent::module(&redis, "rb3", &dirs, &["--kill-grace", "1"]);
    xadd(
        &mut con,
        "module/rb3/queue",
        &[("event", "ev"), ("data", "d"), ("id", "t")],
    );
    let rec = wait_run_end(&mut con, "module/rb3/run/t", LONG);
    assert_eq!(rec["status"], "failed", "a timeout counts as failed");
    assert_eq!(rec["exit_code"], core_events::exit::TIMEOUT.to_string());
    assert_eq!(rec["failed_step"], "10slow");
    assert!(rec["error"].contains("timed out after 1s"), "{rec:?}");
    assert_eq!(rec["rollback"], "failed");
    assert_eq!(rec["rollback_failed"], "20stuck");
    assert_eq!(
        read_or_empty(&out),
        "undo step=10undo event=ev run=t argv=d stdin=d rollback=1 failed=10slow status=failed port=\nstuck\n",
        "the rollback got its own 3s (not the run's spent 1s); its timeout stopped it"
    );
    let output: String = con.get("module/rb3/run/t/output").unwrap();
    assert!(
        output.contains("--- rollback of ev (timed out in step 10slow) ---"),
        "{output}"
    );
    let journal = journal_of(&mut con, "module/rb3", "t");
    let rb = journal.iter().find(|e| e["status"] == "rollback").unwrap();
    assert!(
        rb["message"].contains("timed out after 3s in step 20stuck; not run: 30after"),
        "{rb:?}"
    );
}

#[test]
fn cancel_triggers_the_rollback_and_a_second_cancel_stops_it() {
    let redis = RedisServer::start();
    let dirs = EventDirs::new(1);
    let work = dirs.work();
    let out = work.join("out");
    let o = out.display();
    dirs.step(0, "ev", "10wait", &format!("echo started >> {o}; sleep 60"));
    dirs.step(0, "ev.rollback", "10undo", &recorder(&out, "undo"));
    dirs.step(
        0,
        "ev.rollback",
        "20slow",
        &format!("echo slow >> {o}; sleep 60"),
    );
    dirs.step(0, "ev.rollback", "30after", &format!("echo after >> {o}"));
    let mut con = redis.conn();
    let _agent = Agent::module(&redis, "rb4", &dirs, &["--kill-grace", "1"]);
    xadd(
        &mut con,
        "module/rb4/queue",
        &[("event", "ev"), ("id", "c")],
    );
    wait_for("the run to start", LONG, || {
        (read_or_empty(&out) == "started\n").then_some(())
    });
    let _: i64 = con.publish("cancel/rb4", "c").unwrap();
    wait_for("the slow rollback step to start", LONG, || {
        read_or_empty(&out).ends_with("slow\n").then_some(())
    });
    let rec = hgetall(&mut con, "module/rb4/run/c");
    assert_eq!(rec["status"], "running", "{rec:?}");
    assert_eq!(rec["rollback"], "running", "{rec:?}");
    let _: i64 = con.publish("cancel/rb4", "c").unwrap();
    let rec = wait_run_end(&mut con, "module/rb4/run/c", LONG);
    assert_eq!(rec["status"], "cancelled");
    assert_eq!(rec["exit_code"], core_events::exit::CANCELLED.to_string());
    assert_eq!(rec["rollback"], "failed");
    assert_eq!(rec["rollback_failed"], "20slow");
    assert_eq!(
        read_or_empty(&out),
        "started\nundo step=10undo event=ev run=c argv= stdin= rollback=1 failed= status=cancelled port=\nslow\n",
        "a cancel during the rollback stops it: 30after never runs"
    );
    let output: String = con.get("module/rb4/run/c/output").unwrap();
    assert!(
        output.contains("--- rollback of ev (cancelled in step 10wait) ---"),
        "{output}"
    );
}

#[test]
fn a_masked_rollback_step_in_a_later_dir_is_not_run() {
    let redis = RedisServer::start();
    let dirs = EventDirs::new(2);
    let out = dirs.work().join("out");
    let o = out.display();
    dirs.step(0, "ev", "10fail", "exit 1");
    dirs.step(0, "ev.rollback", "10core", &format!("echo core >> {o}"));
    dirs.step(0, "ev.rollback", "20masked", &format!("echo masked >> {o}"));
    dirs.step(1, "ev.rollback", "15local", &format!("echo local >> {o}"));
    std::os::unix::fs::symlink("/dev/null", dirs.dir(1).join("ev.rollback/20masked")).unwrap();
    let mut con = redis.conn();
    let _agent = Agent::module(&redis, "rb5", &dirs, &[]);
    xadd(
        &mut con,
        "module/rb5/queue",
        &[("event", "ev"), ("id", "m")],
    );
    let rec = wait_run_end(&mut con, "module/rb5/run/m", LONG);
    assert_eq!(rec["rollback"], "done", "{rec:?}");
    assert_eq!(read_or_empty(&out), "core\nlocal\n");
}

#[test]
fn a_rollback_event_run_directly_gets_no_rollback_of_its_own() {
    let redis = RedisServer::start();
    let dirs = EventDirs::new(1);
    let out = dirs.work().join("out");
    let o = out.display();
    dirs.step(
        0,
        "ev.rollback",
        "10fail",
        &format!("echo \"direct rollback=${{AGENT_ROLLBACK-unset}}\" >> {o}; exit 5"),
    );
    dirs.step(
        0,
        "ev.rollback.rollback",
        "10",
        &format!("echo recursion >> {o}"),
    );
    let mut con = redis.conn();
    let _agent = Agent::module(&redis, "rb6", &dirs, &[]);
    let receivers: i64 = con.publish("rb6:ev.rollback", "x").unwrap();
    assert_eq!(receivers, 1);
    let run = wait_for("the published run to be recorded", LONG, || {
        journal_of_any(&mut con, "module/rb6")
    });
    let rec = wait_run_end(&mut con, &format!("module/rb6/run/{run}"), LONG);
    assert_eq!(rec["status"], "failed");
    assert_eq!(rec["exit_code"], "5");
    assert!(!rec.contains_key("rollback"), "{rec:?}");
    assert_eq!(read_or_empty(&out), "direct rollback=unset\n");
    let journal = journal_of(&mut con, "module/rb6", &run);
    assert!(!states(&journal).contains(&"rollback"), "{journal:?}");
}

/// The run id of the first run journaled as `running` on `prefix`.
fn journal_of_any(con: &mut redis::Connection, prefix: &str) -> Option<String> {
    stream(con, &format!("{prefix}/journal"))
        .into_iter()
        .find(|e| e["status"] == "running")
        .map(|e| e["run"].clone())
}
