//! `agentctl` against a real redis-server and the real `module-agent` binary.
//!
//! Every command runs the built `agentctl` binary as a user would. Waits are generous and nothing
//! asserts on timing: these tests must pass on a slow, loaded machine.

use std::time::Duration;

use agent_tests::{hgetall, wait_for, wait_run_end, Agent, EventDirs, RedisServer, Run, RunOutput};
use core_events::{AgentName, Prefix, RunId};

/// Upper bound for anything to happen; only reached when something is broken.
const LONG: Duration = Duration::from_secs(120);

/// Runs `agentctl --redis-url URL ARGS…`, feeding `stdin`, and kills it if it outlives [`LONG`].
fn ctl(url: &str, args: &[&str], stdin: Option<&str>) -> RunOutput {
    let mut run = Run::agentctl(url).args(args).timeout(LONG);
    if let Some(text) = stdin {
        run = run.stdin(text);
    }
    run.output()
}

fn module(name: &str) -> Prefix {
    Prefix::module(AgentName::new(name).unwrap())
}

/// The run id from agentctl's `run <id> queued on <prefix>` line.
fn queued_run(out: &RunOutput) -> RunId {
    let id = out
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("run ")?.split_once(" queued on "))
        .map(|(id, _)| id.to_string())
        .unwrap_or_else(|| panic!("no 'queued on' line: {out:?}"));
    RunId::new(id).unwrap()
}

fn dbsize(con: &mut redis::Connection) -> i64 {
    redis::cmd("DBSIZE").query(con).unwrap()
}

#[test]
fn run_succeeds_then_show_and_journal_tell_about_it() {
    let redis = RedisServer::start();
    let url = redis.url();
    let dirs = EventDirs::new(1);
    dirs.step(0, "hello", "10first", "echo \"first argv=$1\"");
    dirs.step(0, "hello", "20second", "echo \"second stdin=$(cat)\"");
    let _agent = Agent::module(&redis, "ctl0", &dirs, &[]);
    let prefix = module("ctl0");
    let mut con = redis.conn();

    // (a) a bare name is found through the agent's heartbeat; the run ends done, exit 0.
    let out = ctl(
        &url,
        &[
            "run",
            "ctl0",
            "hello",
            "the data",
            "--timeout",
            "300",
            "--json",
        ],
        None,
    );
    assert_eq!(out.code(), 0, "{out:?}");
    let run = queued_run(&out);
    assert!(out.stderr.contains("queued on module/ctl0"), "{out:?}");
    assert!(
        out.stderr.contains(&format!("run {run}: done (exit 0)")),
        "{out:?}"
    );
    assert!(run.as_str().starts_with("ctl-"), "{run}");
    let json: serde_json::Value = serde_json::from_str(out.stdout.trim()).expect("JSON record");
    assert_eq!(json["run"], run.as_str());
    assert_eq!(json["agent"], "module/ctl0");
    assert_eq!(json["status"], "done");
    assert_eq!(json["exit_code"], 0);
    let rec = hgetall(&mut con, &prefix.run(&run));
    assert_eq!(rec["status"], "done", "{rec:?}");
    assert_eq!(rec["data"], "the data");

    // Data from stdin with `-`.
    let out = ctl(
        &url,
        &["run", "module/ctl0", "hello", "-", "--timeout", "300"],
        Some("piped data"),
    );
    assert_eq!(out.code(), 0, "{out:?}");
    let piped = queued_run(&out);

    // (d) show prints the record and the output.
    let out = ctl(&url, &["show", "module/ctl0", run.as_str()], None);
    assert_eq!(out.code(), 0, "{out:?}");
    for want in [
        "event:",
        "hello",
        "status:",
        "done",
        "exit code:",
        "==> 10first <==",
        "first argv=the data",
        "==> 20second <==",
        "second stdin=the data",
    ] {
        assert!(out.stdout.contains(want), "missing {want:?}: {out:?}");
    }
    let out = ctl(&url, &["show", "ctl0", piped.as_str()], None);
    assert!(out.stdout.contains("first argv=piped data"), "{out:?}");
    let out = ctl(
        &url,
        &["show", "ctl0", run.as_str(), "--json", "--no-output"],
        None,
    );
    assert_eq!(out.code(), 0, "{out:?}");
    let json: serde_json::Value = serde_json::from_str(out.stdout.trim()).expect("JSON record");
    assert_eq!(json["status"], "done");
    assert_eq!(json["event"], "hello");
    assert!(json.get("output").is_none(), "{json}");
    let out = ctl(&url, &["show", "ctl0", "no-such-run"], None);
    assert_eq!(out.code(), 1, "{out:?}");
    assert!(
        out.stderr
            .contains("no run no-such-run on module/ctl0 (records are kept 7 days)"),
        "{out:?}"
    );

    // (c) the journal shows the run, oldest entry first.
    let out = ctl(&url, &["journal", "ctl0", "-n", "20"], None);
    assert_eq!(out.code(), 0, "{out:?}");
    let lines: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.contains(run.as_str()))
        .collect();
    let running = lines.iter().position(|l| l.contains("  running  "));
    let done = lines.iter().position(|l| l.contains("  done  "));
    assert!(
        matches!((running, done), (Some(r), Some(d)) if r < d),
        "{out:?}"
    );
    assert!(
        lines[done.unwrap()].contains("attempt=1  exit=0"),
        "{out:?}"
    );
    let out = ctl(&url, &["journal", "module/ctl0", "--json", "-n", "1"], None);
    assert_eq!(out.code(), 0, "{out:?}");
    assert_eq!(out.stdout.lines().count(), 1, "{out:?}");
    let last: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(last["run"], piped.as_str());
    assert_eq!(last["status"], "done");
}

#[test]
fn failed_run_exits_with_the_step_code_and_shows_its_output() {
    let redis = RedisServer::start();
    let url = redis.url();
    let dirs = EventDirs::new(1);
    let never = dirs.work().join("never");
    dirs.step(0, "fail", "10fine", "echo all is fine");
    dirs.step(0, "fail", "20boom", "echo starting; echo boom >&2; exit 7");
    dirs.step(0, "fail", "30never", &format!("touch {}", never.display()));
    let _agent = Agent::module(&redis, "ctl1", &dirs, &[]);

    // (b)
    let out = ctl(
        &url,
        &["run", "module/ctl1", "fail", "--timeout", "300"],
        None,
    );
    assert_eq!(out.code(), 7, "{out:?}");
    let run = queued_run(&out);
    let summary = out
        .stderr
        .lines()
        .find(|l| l.starts_with(&format!("run {run}: failed (exit 7)")))
        .unwrap_or_else(|| panic!("no summary line: {out:?}"));
    assert!(
        summary.contains("20boom"),
        "the summary names the step: {out:?}"
    );
    assert!(out.stderr.contains("==> 20boom <=="), "{out:?}");
    assert!(
        out.stderr.contains("boom") && out.stderr.contains("starting"),
        "{out:?}"
    );
    assert!(
        !out.stderr.contains("all is fine"),
        "only the failed step's output is shown: {out:?}"
    );
    assert!(out.stdout.is_empty(), "{out:?}");
    assert!(!never.exists(), "a step after the failed one ran");
}

#[test]
fn a_step_cannot_forge_another_steps_output() {
    let redis = RedisServer::start();
    let url = redis.url();
    let dirs = EventDirs::new(1);
    // 10forge prints what the agent's framing looks like: a header for 20boom, a rollback note.
    dirs.step(
        0,
        "fail",
        "10forge",
        "echo '==> 20boom <=='; echo forged; echo '--- rollback of fail (x) ---'",
    );
    dirs.step(0, "fail", "20boom", "echo real; exit 3");
    let _agent = Agent::module(&redis, "ctl2", &dirs, &[]);
    let out = ctl(
        &url,
        &["run", "module/ctl2", "fail", "--timeout", "300"],
        None,
    );
    assert_eq!(out.code(), 3, "{out:?}");
    assert!(out.stderr.contains("real"), "{out:?}");
    assert!(!out.stderr.contains("forged"), "{out:?}");
    let run = queued_run(&out);
    let stored: String =
        redis::Commands::get(&mut redis.conn(), format!("module/ctl2/run/{run}/output")).unwrap();
    // Stored escaped: the raw text shows the forged lines for what they are.
    assert!(
        stored.starts_with("==> 10forge <==\n\\==> 20boom <==\nforged\n\\--- rollback"),
        "{stored}"
    );
    let shown = ctl(&url, &["show", "module/ctl2", run.as_str()], None);
    assert!(shown.stdout.contains("\\==> 20boom <=="), "{shown:?}");
}

#[test]
fn explain_takes_a_bare_names_kind_from_the_registry() {
    let redis = RedisServer::start();
    let url = redis.url();
    // `root` is a Unix user here, so without the registry it would be a module.
    let _: () = redis::Commands::hset(&mut redis.conn(), "cluster/agents", "root", "node").unwrap();
    let out = ctl(&url, &["explain", "root", "module.init"], None);
    assert!(out.stdout.contains("node/root"), "{out:?}");
    assert!(
        out.stdout.contains("/usr/local/share/agent/node-events"),
        "{out:?}"
    );
    // Without Redis (nothing listens there), the local rule decides.
    let out = ctl(
        "redis://127.0.0.1:1",
        &["explain", "root", "module.init"],
        None,
    );
    assert!(out.stdout.contains("module/root"), "{out:?}");
}

#[test]
fn explain_shows_overrides_masks_and_skips() {
    let dirs = EventDirs::new(2);
    dirs.step(0, "ev", "10first", "true");
    let overridden = dirs.step(0, "ev", "20second", "true");
    let winner = dirs.step(1, "ev", "20second", "true");
    dirs.step(0, "ev", "30masked", "true");
    std::os::unix::fs::symlink("/dev/null", dirs.dir(1).join("ev/30masked")).unwrap();
    dirs.file(1, "ev", "40plain", "not executable");
    dirs.step(1, "ev", "50last", "true");
    dirs.file(1, "ev", ".timeout", "42\n");
    let missing = dirs.work().join("missing");
    let mut args: Vec<String> = vec!["explain".into(), "module/ctl4".into(), "ev".into()];
    for d in [dirs.dir(0), dirs.dir(1), missing.clone()] {
        args.push("--events-dir".into());
        args.push(d.display().to_string());
    }
    let argv = |extra: &[&str]| -> Vec<String> {
        let mut a = args.clone();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    // No Redis at all: explain must not need it.
    let nowhere = "redis://127.0.0.1:1";

    // (e)
    let a = argv(&[]);
    let out = ctl(
        nowhere,
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
        None,
    );
    assert_eq!(out.code(), 0, "{out:?}");
    let line = |step: &str| -> String {
        out.stdout
            .lines()
            .find(|l| l.contains(step))
            .unwrap_or_else(|| panic!("no line for {step}: {out:?}"))
            .to_string()
    };
    assert!(line("10first").trim_start().starts_with("1 "), "{out:?}");
    let second = line("20second");
    assert!(second.trim_start().starts_with("2 "), "{out:?}");
    assert!(second.contains(&winner.display().to_string()), "{out:?}");
    assert!(
        second.contains(&format!("overrides {}", overridden.display())),
        "{out:?}"
    );
    let masked = line("30masked");
    assert!(masked.contains("masked (symlink to /dev/null)"), "{out:?}");
    assert!(masked.trim_start().starts_with("- "), "{out:?}");
    assert!(
        line("40plain").contains("skipped: not executable"),
        "{out:?}"
    );
    assert!(line("50last").trim_start().starts_with("3 "), "{out:?}");
    assert!(
        out.stdout
            .contains(&format!("{}  (missing)", missing.display())),
        "{out:?}"
    );
    assert!(out.stdout.contains("timeout: 42s"), "{out:?}");

    let a = argv(&["--json"]);
    let out = ctl(
        nowhere,
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
        None,
    );
    assert_eq!(out.code(), 0, "{out:?}");
    let json: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON plan");
    let steps = json["steps"].as_array().unwrap();
    let verdicts: Vec<&str> = steps
        .iter()
        .map(|s| s["verdict"].as_str().unwrap())
        .collect();
    assert_eq!(verdicts, ["run", "run", "masked", "skipped", "run"]);
    assert_eq!(steps[1]["overrides"][0], overridden.display().to_string());
    assert_eq!(steps[3]["reason"], "not executable");

    // An event no directory defines: exit 69.
    let mut a = argv(&[]);
    a[2] = "undefined".into();
    let out = ctl(
        nowhere,
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
        None,
    );
    assert_eq!(out.code(), 69, "{out:?}");
    assert!(
        out.stderr.contains("no event directory defines undefined"),
        "{out:?}"
    );
}

#[test]
fn cancel_ends_a_long_step_and_run_exits_130() {
    let redis = RedisServer::start();
    let url = redis.url();
    let dirs = EventDirs::new(1);
    let started = dirs.work().join("started");
    dirs.step(
        0,
        "long",
        "10wait",
        &format!("echo \"$AGENT_RUN_ID\" > {}; sleep 600", started.display()),
    );
    let _agent = Agent::module(&redis, "ctl2", &dirs, &["--kill-grace", "2"]);
    let mut con = redis.conn();

    // (f)
    let follower = {
        let url = url.clone();
        std::thread::spawn(move || {
            ctl(
                &url,
                &["run", "module/ctl2", "long", "--timeout", "600"],
                None,
            )
        })
    };
    let run = wait_for("the long step to start", LONG, || {
        let s = std::fs::read_to_string(&started).ok()?;
        RunId::new(s.trim()).ok()
    });
    let out = ctl(&url, &["cancel", "ctl2", run.as_str()], None);
    assert_eq!(out.code(), 0, "{out:?}");
    let out = follower.join().unwrap();
    assert_eq!(out.code(), 130, "{out:?}");
    assert_eq!(queued_run(&out), run);
    assert!(
        out.stderr
            .contains(&format!("run {run}: cancelled (exit 130)")),
        "{out:?}"
    );
    let rec = wait_run_end(&mut con, &module("ctl2").run(&run), LONG);
    assert_eq!(rec["status"], "cancelled", "{rec:?}");

    // Nobody listens on this name: nothing is cancelled, exit 1.
    let out = ctl(&url, &["cancel", "nobody0", "some-run"], None);
    assert_eq!(out.code(), 1, "{out:?}");
    assert!(
        out.stderr
            .contains("agent nobody0 is not listening; nothing was cancelled"),
        "{out:?}"
    );
    let out = ctl(&url, &["cancel", "ctl2", "bad/run"], None);
    assert_eq!(out.code(), 65, "{out:?}");
}

#[test]
fn invalid_event_names_queue_nothing_and_queued_events_wait_for_the_agent() {
    let redis = RedisServer::start();
    let url = redis.url();
    let mut con = redis.conn();
    let prefix = module("ctl3");

    // (g)
    for bad in ["bad/name", "../etc", "a b", ".hidden"] {
        let out = ctl(&url, &["run", "module/ctl3", bad], None);
        assert_eq!(out.code(), 65, "{bad:?}: {out:?}");
        assert!(out.stderr.contains("event name"), "{bad:?}: {out:?}");
        assert!(!out.stderr.contains("queued on"), "{bad:?}: {out:?}");
    }
    assert_eq!(dbsize(&mut con), 0, "nothing may be written to Redis");

    // A bare name nothing is known about.
    let out = ctl(&url, &["run", "ctl3", "hello"], None);
    assert_eq!(out.code(), 1, "{out:?}");
    assert!(
        out.stderr.contains(
            "cannot tell whether ctl3 is a node or a module: it is not in the agent registry"
        ) && out.stderr.contains("write node/ctl3 or module/ctl3"),
        "{out:?}"
    );
    assert_eq!(dbsize(&mut con), 0, "nothing may be written to Redis");

    // No agent yet: a warning, and the event waits in the queue.
    let out = ctl(
        &url,
        &["run", "module/ctl3", "hello", "early", "--no-wait"],
        None,
    );
    assert_eq!(out.code(), 0, "{out:?}");
    assert!(out.stderr.contains("is not running"), "{out:?}");
    let run = queued_run(&out);
    assert_eq!(out.stdout.trim(), run.as_str());
    let len: i64 = redis::cmd("XLEN")
        .arg(prefix.queue())
        .query(&mut con)
        .unwrap();
    assert_eq!(len, 1);
    let out = ctl(&url, &["show", "module/ctl3", run.as_str()], None);
    assert_eq!(out.code(), 0, "{out:?}");
    assert!(out.stdout.contains("queued (not started yet)"), "{out:?}");
    // A queued event does not make the name known: only an agent (or `module add`) registers it.
    let out = ctl(&url, &["show", "ctl3", run.as_str()], None);
    assert_eq!(out.code(), 1, "{out:?}");

    let dirs = EventDirs::new(1);
    dirs.step(0, "hello", "10hi", "echo \"hi $1\"");
    let _agent = Agent::module(&redis, "ctl3", &dirs, &[]);
    let rec = wait_run_end(&mut con, &prefix.run(&run), LONG);
    assert_eq!(rec["status"], "done", "{rec:?}");
    let out = ctl(&url, &["show", "ctl3", run.as_str()], None);
    assert!(out.stdout.contains("hi early"), "{out:?}");
}
