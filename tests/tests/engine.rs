//! The event engine against a real redis-server and the real `module-agent`/`node-agent` binaries.

use std::collections::HashMap;
use std::time::Duration;

use agent_tests::{
    hgetall, read_or_empty, stream, wait_for, wait_run_end, xadd, Agent, EventDirs, RedisServer,
};
use redis::Commands;

const LONG: Duration = Duration::from_secs(60);

fn publish(con: &mut redis::Connection, channel: &str, data: &str) -> i64 {
    con.publish(channel, data).unwrap()
}

/// Starts a node-agent whose password comes only from the credentials file `creds` (its URL carries
/// none); the harness watches it through `admin_url`.
fn node_agent_with_credentials(
    redis: &RedisServer,
    admin_url: &str,
    name: &str,
    dirs: &EventDirs,
    creds: &std::path::Path,
) -> Agent {
    Agent::start_with_admin(
        "node-agent",
        &format!("redis://127.0.0.1:{}", redis.port()),
        admin_url,
        name,
        &dirs.dirs(),
        &["--redis-credentials", creds.to_str().unwrap()],
    )
}

/// Changes the server's password; connections already logged in stay logged in.
fn set_requirepass(con: &mut redis::Connection, password: &str) {
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg(password)
        .query(con)
        .unwrap();
}

#[test]
fn steps_run_in_order_with_argv_stdin_and_env() {
    let redis = RedisServer::start();
    let dirs = EventDirs::new(1);
    let out = dirs.work().join("out");
    let o = out.display();
    dirs.step(
        0,
        "hello",
        "20second",
        &format!("echo \"second argv=$1 stdin=$(cat)\" >> {o}"),
    );
    dirs.step(0, "hello", "10first", &format!(
        "echo \"first $AGENT_NAME $AGENT_EVENT $AGENT_RUN_ID $AGENT_STEP $AGENT_ATTEMPT $AGENT_KEY_PREFIX PORT=$PORT\" >> {o}; echo \"redis=${{REDIS_URL%%:*}}\" >> {o}"
    ));
    dirs.step(
        0,
        "hello",
        "30third",
        &format!("echo third >> {o}; echo to-stdout; echo to-stderr >&2"),
    );
    let mut con = redis.conn();
    let _: () = con
        .hset("module/hello0/module.env", "PORT", "8080")
        .unwrap();
    let _agent = Agent::module(&redis, "hello0", &dirs, &[]);

    xadd(
        &mut con,
        "module/hello0/queue",
        &[("event", "hello"), ("data", "the data"), ("id", "r1")],
    );
    let rec = wait_run_end(&mut con, "module/hello0/run/r1", LONG);
    assert_eq!(rec["status"], "done", "{rec:?}");
    assert_eq!(rec["exit_code"], "0");
    assert_eq!(rec["attempt"], "1");
    assert_eq!(rec["data"], "the data");
    assert_eq!(
        read_or_empty(&out),
        "first hello0 hello r1 10first 1 module/hello0 PORT=8080\nredis=redis\nsecond argv=the data stdin=the data\nthird\n"
    );
    let output: String = con.get("module/hello0/run/r1/output").unwrap();
    assert!(output.contains("==> 30third <==\n"), "{output}");
    assert!(
        output.contains("to-stdout") && output.contains("to-stderr"),
        "{output}"
    );
    let journal = stream(&mut con, "module/hello0/journal");
    let states: Vec<&str> = journal
        .iter()
        .filter(|e| e["run"] == "r1")
        .map(|e| e["status"].as_str())
        .collect();
    assert_eq!(states, ["running", "done"]);
    let ttl: i64 = con.ttl("module/hello0/run/r1").unwrap();
    assert!(ttl > 6 * 24 * 3600, "record TTL {ttl}");
    let qlen: i64 = con.xlen("module/hello0/queue").unwrap();
    assert_eq!(qlen, 0, "a finished run leaves the queue");
}

#[test]
fn later_dir_overrides_and_dev_null_masks() {
    let redis = RedisServer::start();
    let dirs = EventDirs::new(2);
    let out = dirs.work().join("out");
    let o = out.display();
    dirs.step(0, "ev", "10a", &format!("echo core-a >> {o}"));
    dirs.step(0, "ev", "20b", &format!("echo core-b >> {o}"));
    dirs.step(0, "ev", "30c", &format!("echo core-c >> {o}"));
    dirs.step(1, "ev", "20b", &format!("echo local-b >> {o}"));
    dirs.step(1, "ev", "25local", &format!("echo local-insert >> {o}"));
    std::os::unix::fs::symlink("/dev/null", dirs.dir(1).join("ev/30c")).unwrap();
    dirs.file(1, "ev", "40plain", "#!/bin/sh\necho never\n");
    dirs.step(1, "ev", ".hidden", &format!("echo hidden >> {o}"));
    dirs.step(1, "ev", "50backup~", &format!("echo backup >> {o}"));
    let mut con = redis.conn();
    let _agent = Agent::module(&redis, "m1", &dirs, &[]);
    xadd(&mut con, "module/m1/queue", &[("event", "ev"), ("id", "r")]);
    let rec = wait_run_end(&mut con, "module/m1/run/r", LONG);
    assert_eq!(rec["status"], "done");
    assert_eq!(read_or_empty(&out), "core-a\nlocal-b\nlocal-insert\n");
    let journal = stream(&mut con, "module/m1/journal");
    let warn = journal
        .iter()
        .find(|e| e["status"] == "warning")
        .expect("a warning for the non-executable step");
    assert!(
        warn["message"].contains("40plain") && warn["message"].contains("not executable"),
        "{warn:?}"
    );
}

#[test]
fn failing_step_ends_the_run() {
    let redis = RedisServer::start();
    let dirs = EventDirs::new(1);
    let out = dirs.work().join("out");
    dirs.step(0, "ev", "10ok", "true");
    dirs.step(0, "ev", "20fail", "echo broken-config >&2; exit 3");
    dirs.step(0, "ev", "30never", &format!("touch {}", out.display()));
    let mut con = redis.conn();
    let _agent = Agent::module(&redis, "m2", &dirs, &[]);
    xadd(&mut con, "module/m2/queue", &[("event", "ev"), ("id", "f")]);
    let rec = wait_run_end(&mut con, "module/m2/run/f", LONG);
    assert_eq!(rec["status"], "failed");
    assert_eq!(rec["exit_code"], "3");
    assert_eq!(rec["failed_step"], "20fail");
    assert!(!out.exists(), "steps after the failing one must not run");
    let output: String = con.get("module/m2/run/f/output").unwrap();
    assert!(output.contains("==> 20fail <==\nbroken-config"), "{output}");
    // An event nobody defines fails with its own code.
    xadd(
        &mut con,
        "module/m2/queue",
        &[("event", "nosuch"), ("id", "n")],
    );
    let rec = wait_run_end(&mut con, "module/m2/run/n", LONG);
    assert_eq!(rec["status"], "failed");
    assert_eq!(
        rec["exit_code"],
        core_events::exit::NO_SUCH_EVENT.to_string()
    );
    assert!(
        rec["error"].contains("no event directory defines"),
        "{rec:?}"
    );
}

#[test]
fn publish_reaches_exactly_one_agent_and_queued_events_wait_for_it() {
    let redis = RedisServer::start();
    let dirs = EventDirs::new(1);
    let out = dirs.work().join("out");
    dirs.step(
        0,
        "ping",
        "10",
        &format!("echo \"$1\" >> {}", out.display()),
    );
    let mut con = redis.conn();
    let mut agent = Agent::module(&redis, "pub0", &dirs, &[]);
    // A second agent whose name extends the first must not receive pub0's events.
    let _other = Agent::module(&redis, "pub00", &dirs, &[]);
    assert_eq!(publish(&mut con, "pub0:ping", "one"), 1);
    wait_for("first event to run", LONG, || {
        (read_or_empty(&out) == "one\n").then_some(())
    });

    agent.terminate();
    assert_eq!(
        publish(&mut con, "pub0:ping", "lost"),
        0,
        "nobody listens while the agent is down"
    );
    // Queued durably while the agent is down: runs when it comes back.
    xadd(
        &mut con,
        "module/pub0/queue",
        &[("event", "ping"), ("data", "two"), ("id", "q2")],
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(read_or_empty(&out), "one\n");
    agent.restart();
    wait_run_end(&mut con, "module/pub0/run/q2", LONG);
    assert_eq!(read_or_empty(&out), "one\ntwo\n");
    assert_eq!(publish(&mut con, "pub0:ping", "three"), 1);
    wait_for("third event to run", LONG, || {
        (read_or_empty(&out) == "one\ntwo\nthree\n").then_some(())
    });
}

#[test]
fn kill_9_mid_step_reruns_once_with_attempt_2() {
    let redis = RedisServer::start();
    let dirs = EventDirs::new(1);
    let work = dirs.work();
    let (starts, done) = (work.join("starts"), work.join("done"));
    // The first attempt blocks until the test kills the agent; the second one finishes.
    dirs.step(
        0,
        "slow",
        "10",
        &format!(
            "echo \"$AGENT_ATTEMPT\" >> {s}\nif [ \"$1\" = block ] && [ \"$AGENT_ATTEMPT\" = 1 ]; then sleep 300; fi\necho end >> {d}",
            s = starts.display(),
            d = done.display()
        ),
    );
    let mut con = redis.conn();
    let mut agent = Agent::module(&redis, "k0", &dirs, &[]);
    xadd(
        &mut con,
        "module/k0/queue",
        &[("event", "slow"), ("id", "k"), ("data", "block")],
    );
    xadd(
        &mut con,
        "module/k0/queue",
        &[("event", "slow"), ("id", "after")],
    );
    wait_for("first attempt to start", LONG, || {
        (read_or_empty(&starts) == "1\n").then_some(())
    });
    agent.kill9();
    let rec = hgetall(&mut con, "module/k0/run/k");
    assert_eq!(rec["status"], "running");

    agent.restart();
    let rec = wait_run_end(&mut con, "module/k0/run/k", LONG);
    assert_eq!(rec["status"], "done", "{rec:?}");
    assert_eq!(rec["attempt"], "2");
    let rec = wait_run_end(&mut con, "module/k0/run/after", LONG);
    assert_eq!(
        rec["status"], "done",
        "the event queued behind it is not lost"
    );
    // The orphaned first attempt was killed, so it never wrote "end".
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        read_or_empty(&starts),
        "1\n2\n1\n",
        "k ran twice, `after` once (its own attempt 1)"
    );
    assert_eq!(
        read_or_empty(&done),
        "end\nend\n",
        "attempt 2 of k and `after` finished; attempt 1 never did"
    );
    let qlen: i64 = con.xlen("module/k0/queue").unwrap();
    assert_eq!(qlen, 0);
}

#[test]
fn a_run_interrupted_too_often_is_abandoned() {
    let redis = RedisServer::start();
    let dirs = EventDirs::new(1);
    let starts = dirs.work().join("starts");
    dirs.step(
        0,
        "hang",
        "10",
        &format!("echo x >> {}; sleep 300", starts.display()),
    );
    dirs.file(0, "hang", ".retries", "1\n");
    let mut con = redis.conn();
    let mut agent = Agent::module(&redis, "ab0", &dirs, &[]);
    xadd(
        &mut con,
        "module/ab0/queue",
        &[("event", "hang"), ("id", "h")],
    );
    for n in 1..=2 {
        wait_for("attempt to start", LONG, || {
            (read_or_empty(&starts).lines().count() == n).then_some(())
        });
        agent.kill9();
        agent.restart();
    }
    let rec = wait_run_end(&mut con, "module/ab0/run/h", LONG);
    assert_eq!(rec["status"], "abandoned", "{rec:?}");
    assert_eq!(rec["exit_code"], core_events::exit::ABANDONED.to_string());
    assert_eq!(
        read_or_empty(&starts).lines().count(),
        2,
        ".retries 1 allows two attempts"
    );
}

#[test]
fn redis_restart_with_queued_events_loses_nothing() {
    let mut redis = RedisServer::start();
    let dirs = EventDirs::new(1);
    let out = dirs.work().join("out");
    dirs.step(
        0,
        "tick",
        "10",
        &format!("sleep 0.05; echo \"$1\" >> {}", out.display()),
    );
    let mut con = redis.conn();
    let mut agent = Agent::module(&redis, "r0", &dirs, &[]);
    for i in 0..30 {
        xadd(
            &mut con,
            "module/r0/queue",
            &[
                ("event", "tick"),
                ("data", &i.to_string()),
                ("id", &format!("t{i}")),
            ],
        );
    }
    wait_for("some runs to finish", LONG, || {
        (read_or_empty(&out).lines().count() >= 3).then_some(())
    });
    redis.restart();
    std::thread::sleep(Duration::from_millis(500));
    let mut con = redis.conn();
    for i in 30..40 {
        xadd(
            &mut con,
            "module/r0/queue",
            &[
                ("event", "tick"),
                ("data", &i.to_string()),
                ("id", &format!("t{i}")),
            ],
        );
    }
    for i in 0..40 {
        let rec = wait_run_end(&mut con, &format!("module/r0/run/t{i}"), LONG);
        assert_eq!(rec["status"], "done", "t{i}: {rec:?}");
    }
    let mut seen: Vec<u32> = read_or_empty(&out)
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen, (0..40).collect::<Vec<_>>());
    // The agent also survives Redis being away when it starts.
    agent.kill9();
    redis.kill();
    agent.restart_no_wait();
    std::thread::sleep(Duration::from_millis(800));
    redis.restart();
    agent.wait_ready();
    let mut con = redis.conn();
    assert_eq!(publish(&mut con, "r0:tick", "41"), 1);
    wait_for("event after reconnect", LONG, || {
        read_or_empty(&out).lines().any(|l| l == "41").then_some(())
    });
}

#[test]
fn cancel_a_running_and_a_queued_run() {
    let redis = RedisServer::start();
    let dirs = EventDirs::new(1);
    let out = dirs.work().join("out");
    dirs.step(
        0,
        "long",
        "10",
        &format!("echo started >> {}; sleep 300", out.display()),
    );
    let mut con = redis.conn();
    let _agent = Agent::module(&redis, "c0", &dirs, &["--kill-grace", "1"]);
    xadd(
        &mut con,
        "module/c0/queue",
        &[("event", "long"), ("id", "run1")],
    );
    xadd(
        &mut con,
        "module/c0/queue",
        &[("event", "long"), ("id", "run2")],
    );
    wait_for("run1 to start", LONG, || {
        (read_or_empty(&out) == "started\n").then_some(())
    });
    // run2 waits behind run1 (concurrency 1): cancel it before it starts, then run1.
    assert_eq!(publish(&mut con, "cancel/c0", "run2"), 1);
    wait_for("run2 cancelled", LONG, || {
        (hgetall(&mut con, "module/c0/run/run2").get("status")? == "cancelled").then_some(())
    });
    assert_eq!(publish(&mut con, "cancel/c0", "run1"), 1);
    let rec = wait_run_end(&mut con, "module/c0/run/run1", LONG);
    assert_eq!(rec["status"], "cancelled");
    assert_eq!(rec["exit_code"], core_events::exit::CANCELLED.to_string());
    wait_for("queue to drain", LONG, || {
        (con.xlen::<_, i64>("module/c0/queue").ok()? == 0).then_some(())
    });
    assert_eq!(
        read_or_empty(&out),
        "started\n",
        "the cancelled queued run never started"
    );
    let journal = stream(&mut con, "module/c0/journal");
    assert!(journal
        .iter()
        .any(|e| e["run"] == "run2" && e["status"] == "cancelled"));
}

#[test]
fn timeout_kills_the_whole_process_group() {
    let redis = RedisServer::start();
    let dirs = EventDirs::new(1);
    let pidfile = dirs.work().join("grandchild.pid");
    // The grandchild ignores SIGTERM; only SIGKILL of the group ends it.
    dirs.step(
        0,
        "stuck",
        "10",
        &format!(
            "sh -c 'trap \"\" TERM; echo $$ > {}; while :; do sleep 1; done' &\nwait",
            pidfile.display()
        ),
    );
    dirs.file(0, "stuck", ".timeout", "2");
    let mut con = redis.conn();
    let _agent = Agent::module(&redis, "t0", &dirs, &["--kill-grace", "1"]);
    xadd(
        &mut con,
        "module/t0/queue",
        &[("event", "stuck"), ("id", "s")],
    );
    let rec = wait_run_end(&mut con, "module/t0/run/s", LONG);
    assert_eq!(rec["status"], "failed");
    assert_eq!(rec["exit_code"], core_events::exit::TIMEOUT.to_string());
    assert!(rec["error"].contains("timed out after 2s"), "{rec:?}");
    let pid: i32 = read_or_empty(&pidfile).trim().parse().unwrap();
    wait_for("grandchild to be gone", LONG, || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Gone, or a zombie waiting for its reaper.
        (stat.is_empty() || stat.split(' ').nth(2) == Some("Z")).then_some(())
    });
}

#[test]
fn malformed_events_are_refused_clearly_and_nothing_panics() {
    let redis = RedisServer::start();
    let dirs = EventDirs::new(1);
    let out = dirs.work().join("out");
    dirs.step(0, "ok", "10", &format!("echo ok >> {}", out.display()));
    let mut con = redis.conn();
    let mut agent = Agent::module(&redis, "bad0", &dirs, &["--max-payload", "1024"]);
    let big = "x".repeat(2000);
    let long_name = "e".repeat(200);
    // Ten bad PUBLISHes: each is refused with a journal entry and queues nothing.
    let bad_channels = [
        "bad0:",
        "bad0:..",
        "bad0:../../etc/passwd",
        "bad0:a/b",
        "bad0:.hidden",
        "bad0:a b",
        "bad0:é",
        "bad0:a*",
        "bad0:x\u{0}y",
    ];
    for ch in bad_channels {
        assert_eq!(publish(&mut con, ch, "d"), 1, "{ch:?}");
    }
    assert_eq!(publish(&mut con, &format!("bad0:{long_name}"), "d"), 1);
    assert_eq!(publish(&mut con, "bad0:ok", &big), 1, "oversized payload");
    // Ten bad queue entries: each becomes a failed run record with a reason.
    let q = "module/bad0/queue";
    let mut bad_ids = vec![
        xadd(&mut con, q, &[("data", "no event field")]),
        xadd(&mut con, q, &[("event", "../x")]),
        xadd(&mut con, q, &[("event", "")]),
        xadd(&mut con, q, &[("event", "a/b")]),
        xadd(&mut con, q, &[("event", ".")]),
        xadd(&mut con, q, &[("event", &long_name)]),
        xadd(&mut con, q, &[("event", "ok"), ("data", &big)]),
        xadd(&mut con, q, &[("event", "ok"), ("id", "../../x")]),
        xadd(&mut con, q, &[("event", "x\ny")]),
    ];
    let raw: String = redis::cmd("XADD")
        .arg(q)
        .arg("*")
        .arg("event")
        .arg(&b"\xff\xfe"[..])
        .query(&mut con)
        .unwrap();
    bad_ids.push(raw);
    // A good event after all of that still runs.
    xadd(&mut con, q, &[("event", "ok"), ("id", "good")]);
    wait_run_end(&mut con, "module/bad0/run/good", LONG);
    for id in &bad_ids {
        let rec = hgetall(&mut con, &format!("module/bad0/run/{id}"));
        assert_eq!(
            rec.get("status").map(String::as_str),
            Some("failed"),
            "{id}: {rec:?}"
        );
        assert_eq!(rec["exit_code"], core_events::exit::INVALID.to_string());
        assert!(rec["error"].starts_with("refused: "), "{rec:?}");
    }
    // The listener journals on its own time: the refusals may come after the good run.
    let journal = wait_for("11 refused PUBLISHes in the journal", LONG, || {
        let j = stream(&mut con, "module/bad0/journal");
        (j.iter().filter(|e| e["status"] == "refused").count() >= 11).then_some(j)
    });
    let refused: Vec<&HashMap<String, String>> = journal
        .iter()
        .filter(|e| e["status"] == "refused")
        .collect();
    assert_eq!(refused.len(), 11, "{refused:#?}");
    assert!(refused.iter().any(|e| e["message"].contains("2000 bytes")));
    assert!(refused
        .iter()
        .all(|e| e["message"].starts_with("refused PUBLISH")));
    assert_eq!(read_or_empty(&out), "ok\n", "only the good event ran");
    // The agent is alive and well.
    assert!(agent.log().contains("agent ready"));
    assert!(!agent.log().contains("panicked"));
    assert_eq!(agent.terminate().code(), Some(0));
}

#[test]
fn a_thousand_events_each_end_done_exactly_once() {
    let redis = RedisServer::start();
    let dirs = EventDirs::new(1);
    let out = dirs.work().join("out");
    dirs.step(0, "n", "10", &format!("echo \"$1\" >> {}", out.display()));
    let mut con = redis.conn();
    let _agent = Agent::module(&redis, "thousand", &dirs, &["--concurrency", "2"]);
    let mut pipe = redis::pipe();
    for i in 0..500 {
        pipe.cmd("XADD")
            .arg("module/thousand/queue")
            .arg("*")
            .arg("event")
            .arg("n")
            .arg("data")
            .arg(i)
            .ignore();
    }
    let _: () = pipe.query(&mut con).unwrap();
    for i in 500..1000 {
        // Half of them through PUBLISH.
        assert_eq!(publish(&mut con, "thousand:n", &i.to_string()), 1);
    }
    wait_for("1000 runs", Duration::from_secs(300), || {
        (read_or_empty(&out).lines().count() >= 1000).then_some(())
    });
    std::thread::sleep(Duration::from_millis(300));
    let mut seen: Vec<u32> = read_or_empty(&out)
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        (0..1000).collect::<Vec<_>>(),
        "every event exactly once"
    );
    let journal = stream(&mut con, "module/thousand/journal");
    let done = journal.iter().filter(|e| e["status"] == "done").count();
    assert_eq!(done, 1000);
    let qlen: i64 = con.xlen("module/thousand/queue").unwrap();
    assert_eq!(qlen, 0);
}

#[test]
fn startup_event_runs_on_first_start_only() {
    let redis = RedisServer::start();
    let dirs = EventDirs::new(1);
    let out = dirs.work().join("out");
    dirs.step(
        0,
        "module.init",
        "10",
        &format!("echo init >> {}", out.display()),
    );
    let mut con = redis.conn();
    let mut agent = Agent::module(&redis, "s0", &dirs, &["--startup-event", "module.init"]);
    let rec = wait_run_end(&mut con, "module/s0/run/startup-module.init", LONG);
    assert_eq!(rec["status"], "done");
    agent.terminate();
    agent.restart();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(read_or_empty(&out), "init\n");
}

#[test]
fn node_agent_with_password_over_unix_socket_scrubs_the_password() {
    let redis = RedisServer::start_with(&["--requirepass", "s3cret-pass-word"]);
    let dirs = EventDirs::new(1);
    dirs.step(
        0,
        "leak",
        "10",
        "echo \"url is $REDIS_URL\"; echo s3cret-pass-word >&2; exit 1",
    );
    let creds = dirs.work().join("redis.env");
    std::fs::write(&creds, "REDIS_PASSWORD=s3cret-pass-word\n").unwrap();
    let mut agent = Agent::start_with_admin(
        "node-agent",
        &redis.socket_url(),
        &redis.url(),
        "nodeA",
        &dirs.dirs(),
        &["--redis-credentials", creds.to_str().unwrap()],
    );
    let mut con = redis.conn();
    xadd(
        &mut con,
        "node/nodeA/queue",
        &[("event", "leak"), ("id", "l")],
    );
    let rec = wait_run_end(&mut con, "node/nodeA/run/l", LONG);
    assert_eq!(rec["status"], "failed");
    let output: String = con.get("node/nodeA/run/l/output").unwrap();
    assert!(
        output.contains("url is unix://") && output.contains("***"),
        "{output}"
    );
    assert!(!output.contains("s3cret-pass-word"), "{output}");
    let names: String = redis::cmd("CLIENT").arg("LIST").query(&mut con).unwrap();
    assert!(names.contains("name=agent:nodeA"), "{names}");
    let hb: Option<String> = con.get("node/nodeA/heartbeat").unwrap();
    assert!(hb.is_some());
    assert_eq!(agent.terminate().code(), Some(0));
    assert!(!agent.log().contains("s3cret-pass-word"));
}

#[test]
fn unusable_module_env_fields_are_journaled_and_do_not_block_runs() {
    let redis = RedisServer::start();
    let dirs = EventDirs::new(1);
    let out = dirs.work().join("out");
    dirs.step(
        0,
        "ev",
        "10",
        &format!("echo \"$GOOD|$AGENT_NAME\" >> {}", out.display()),
    );
    let mut con = redis.conn();
    let _: () = redis::cmd("HSET")
        .arg("module/env0/module.env")
        .arg("GOOD")
        .arg("yes")
        .arg("BIN")
        .arg(&b"\xff\xfe"[..])
        .arg("AGENT_NAME")
        .arg("spoofed")
        .arg("bad-name")
        .arg("x")
        .query(&mut con)
        .unwrap();
    let _agent = Agent::module(&redis, "env0", &dirs, &[]);
    xadd(
        &mut con,
        "module/env0/queue",
        &[("event", "ev"), ("id", "e")],
    );
    let rec = wait_run_end(&mut con, "module/env0/run/e", LONG);
    assert_eq!(rec["status"], "done", "{rec:?}");
    assert_eq!(read_or_empty(&out), "yes|env0\n");
    let warnings: Vec<String> = stream(&mut con, "module/env0/journal")
        .into_iter()
        .filter(|e| e["status"] == "warning")
        .map(|e| e["message"].clone())
        .collect();
    assert_eq!(warnings.len(), 3, "{warnings:?}");
    assert!(warnings
        .iter()
        .any(|w| w.contains("BIN") && w.contains("UTF-8")));
    assert!(warnings
        .iter()
        .any(|w| w.contains("AGENT_NAME") && w.contains("sets itself")));
}

#[test]
fn a_full_queue_refuses_published_events() {
    let redis = RedisServer::start();
    let dirs = EventDirs::new(1);
    let (out, go) = (dirs.work().join("out"), dirs.work().join("go"));
    // Each run waits for the test's go-ahead, so the queue stays full meanwhile.
    dirs.step(
        0,
        "ev",
        "10",
        &format!(
            "while [ ! -e {g} ]; do sleep 0.05; done; echo \"$1\" >> {o}",
            g = go.display(),
            o = out.display()
        ),
    );
    let mut con = redis.conn();
    let _agent = Agent::module(&redis, "full0", &dirs, &["--max-queue", "3"]);
    for i in 0..3 {
        xadd(
            &mut con,
            "module/full0/queue",
            &[("event", "ev"), ("data", &format!("q{i}"))],
        );
    }
    assert_eq!(publish(&mut con, "full0:ev", "too-many"), 1);
    let refusal = wait_for("a refusal in the journal", LONG, || {
        stream(&mut con, "module/full0/journal")
            .into_iter()
            .find(|e| e["status"] == "refused")
    });
    assert!(
        refusal["message"].contains("queue holds 3 entries already"),
        "{refusal:?}"
    );
    std::fs::write(&go, "").unwrap();
    wait_for("queue to drain", LONG, || {
        (con.xlen::<_, i64>("module/full0/queue").ok()? == 0).then_some(())
    });
    assert_eq!(
        read_or_empty(&out),
        "q0\nq1\nq2\n",
        "the queued entries ran in order; the refused one did not"
    );
}

#[test]
fn sigterm_waits_for_the_grace_period_then_the_run_restarts() {
    let redis = RedisServer::start();
    let dirs = EventDirs::new(1);
    let starts = dirs.work().join("starts");
    dirs.step(
        0,
        "long",
        "10",
        &format!(
            "echo \"$AGENT_ATTEMPT\" >> {}; if [ \"$AGENT_ATTEMPT\" = 1 ]; then sleep 300; fi",
            starts.display()
        ),
    );
    let mut con = redis.conn();
    let mut agent = Agent::module(&redis, "term0", &dirs, &["--shutdown-grace", "1"]);
    xadd(
        &mut con,
        "module/term0/queue",
        &[("event", "long"), ("id", "l")],
    );
    wait_for("attempt 1 to start", LONG, || {
        (read_or_empty(&starts) == "1\n").then_some(())
    });
    let status = agent.terminate();
    assert_eq!(status.code(), Some(0), "clean exit after killing the step");
    let journal = stream(&mut con, "module/term0/journal");
    assert!(
        journal
            .iter()
            .any(|e| e["run"] == "l" && e["status"] == "interrupted"),
        "{journal:#?}"
    );
    agent.restart();
    let rec = wait_run_end(&mut con, "module/term0/run/l", LONG);
    assert_eq!(rec["status"], "done");
    assert_eq!(rec["attempt"], "2");
}

#[test]
fn tells_systemd_it_is_ready_and_pings_the_watchdog() {
    use std::os::unix::net::UnixDatagram;
    let redis = RedisServer::start();
    let dirs = EventDirs::new(1);
    let sock_path = dirs.work().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(LONG)).unwrap();
    let mut agent = Agent::module(&redis, "sd0", &dirs, &[]);
    agent.terminate();
    agent.set_env("NOTIFY_SOCKET", sock_path.to_str().unwrap());
    agent.set_env("WATCHDOG_USEC", "1000000");
    agent.restart();
    let mut buf = [0u8; 512];
    let mut messages = Vec::new();
    while !messages.iter().any(|m: &String| m.contains("WATCHDOG=1")) {
        let n = sock.recv(&mut buf).unwrap();
        messages.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(messages[0].contains("READY=1"), "{messages:?}");
    agent.terminate();
    loop {
        let n = sock.recv(&mut buf).unwrap();
        if String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1") {
            break;
        }
    }
}

#[test]
fn large_stdin_is_delivered_and_output_keeps_its_order() {
    let redis = RedisServer::start();
    let dirs = EventDirs::new(1);
    let out = dirs.work().join("out");
    // 120 kB is more than a pipe holds (64 KiB): the rest is written while the step reads.
    dirs.step(0, "big", "10", &format!("wc -c > {}", out.display()));
    dirs.step(
        0,
        "big",
        "20",
        "echo one; echo two >&2; echo three; echo four >&2",
    );
    let mut con = redis.conn();
    let _agent = Agent::module(&redis, "big0", &dirs, &[]);
    let data = "y".repeat(120_000);
    xadd(
        &mut con,
        "module/big0/queue",
        &[("event", "big"), ("data", &data), ("id", "b")],
    );
    let rec = wait_run_end(&mut con, "module/big0/run/b", LONG);
    assert_eq!(rec["status"], "done", "{:?}", rec.get("error"));
    assert_eq!(read_or_empty(&out).trim(), "120000");
    let output: String = con.get("module/big0/run/b/output").unwrap();
    assert!(
        output.ends_with("==> 20 <==\none\ntwo\nthree\nfour\n"),
        "{output}"
    );
}

#[test]
fn output_beyond_a_pipe_and_the_cap_is_drained_and_truncated() {
    let redis = RedisServer::start();
    let dirs = EventDirs::new(1);
    // 1 MiB: sixteen times what a pipe holds, four times the run's output cap (256 KiB). The step
    // must not block on a full pipe, and the run's output must say what was dropped.
    dirs.step(
        0,
        "loud",
        "10",
        "head -c 1048576 /dev/zero | tr '\\0' x; echo; echo still running >&2",
    );
    dirs.step(0, "loud", "20", "echo second step");
    let mut con = redis.conn();
    let _agent = Agent::module(&redis, "loud0", &dirs, &[]);
    xadd(
        &mut con,
        "module/loud0/queue",
        &[("event", "loud"), ("id", "l")],
    );
    let rec = wait_run_end(&mut con, "module/loud0/run/l", LONG);
    assert_eq!(rec["status"], "done", "{:?}", rec.get("error"));
    let output: Vec<u8> = con.get("module/loud0/run/l/output").unwrap();
    let output = String::from_utf8(output).unwrap();
    assert!(output.len() <= 256 * 1024 + 100, "{} bytes", output.len());
    assert!(output.starts_with("==> 10 <==\nxxxx"), "{}", &output[..40]);
    assert!(output.contains("[output truncated: "), "no truncation note");
}

#[test]
fn steps_get_a_rotated_password_without_an_agent_restart() {
    let redis = RedisServer::start_with(&["--requirepass", "old-pass-1234"]);
    let dirs = EventDirs::new(1);
    dirs.step(
        0,
        "ping",
        "10",
        "redis-cli --no-auth-warning -u \"$REDIS_URL\" PING; echo \"url=$REDIS_URL\"",
    );
    let creds = dirs.work().join("redis.env");
    std::fs::write(&creds, "REDIS_PASSWORD=old-pass-1234\n").unwrap();
    let mut agent = node_agent_with_credentials(&redis, &redis.url(), "rot0", &dirs, &creds);
    let mut con = redis.conn();
    // Ready means logged in on every connection the agent keeps (commands, events, queue reads):
    // one opened after "ready" would meet the rotated password below and be refused.
    let clients: String = redis::cmd("CLIENT").arg("LIST").query(&mut con).unwrap();
    let named = clients
        .lines()
        .filter(|l| l.split(' ').any(|f| f == "name=agent:rot0"))
        .count();
    assert_eq!(named, 3, "connections of the agent at ready:\n{clients}");
    // Rotate: the server takes only the new password from now on (open connections stay logged in).
    set_requirepass(&mut con, "new-pass-5678");
    std::fs::write(&creds, "REDIS_PASSWORD=new-pass-5678\n").unwrap();
    xadd(
        &mut con,
        "node/rot0/queue",
        &[("event", "ping"), ("id", "p")],
    );
    let rec = wait_run_end(&mut con, "node/rot0/run/p", LONG);
    assert_eq!(rec["status"], "done", "{rec:?}");
    let output: String = con.get("node/rot0/run/p/output").unwrap();
    assert!(
        output.contains("PONG"),
        "the step reached Redis with the new password: {output}"
    );
    assert!(
        output.contains("url=redis://default:***@127.0.0.1"),
        "{output}"
    );
    assert!(
        !output.contains("new-pass-5678") && !output.contains("old-pass-1234"),
        "{output}"
    );
    assert_eq!(agent.terminate().code(), Some(0));
    assert!(!agent.log().contains("new-pass-5678"));
}

#[test]
fn an_agent_whose_password_stops_working_exits_instead_of_running_half_deaf() {
    let redis = RedisServer::start_with(&["--requirepass", "pw-one-1234"]);
    let dirs = EventDirs::new(1);
    let out = dirs.work().join("out");
    dirs.step(0, "ev", "10", &format!("echo ran >> {}", out.display()));
    let creds = dirs.work().join("redis.env");
    std::fs::write(&creds, "REDIS_PASSWORD=pw-one-1234\n").unwrap();
    let mut agent = node_agent_with_credentials(&redis, &redis.url(), "deaf0", &dirs, &creds);
    let mut con = redis.conn();
    // The password changes and every connection of the agent is dropped: it cannot log in again.
    set_requirepass(&mut con, "pw-two-5678");
    for kind in ["normal", "pubsub"] {
        let _: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg(kind)
            .query(&mut con)
            .unwrap();
    }
    let status = agent.wait_exit(LONG).expect("the agent exits");
    assert!(!status.success(), "{status}");
    let log = agent.log();
    assert!(log.contains("cannot go on"), "{log}");
    assert!(!log.contains("pw-two-5678") && !log.contains("pw-one-1234"));

    // Started again (as systemd would) with the new password, it works.
    std::fs::write(&creds, "REDIS_PASSWORD=pw-two-5678\n").unwrap();
    let new_admin = format!("redis://:pw-two-5678@127.0.0.1:{}", redis.port());
    let _agent = node_agent_with_credentials(&redis, &new_admin, "deaf0", &dirs, &creds);
    xadd(
        &mut con,
        "node/deaf0/queue",
        &[("event", "ev"), ("id", "after")],
    );
    let rec = wait_run_end(&mut con, "node/deaf0/run/after", LONG);
    assert_eq!(rec["status"], "done");
    assert_eq!(read_or_empty(&out), "ran\n");
}
