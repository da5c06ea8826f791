//! Hostile input and escaping processes against the real agent and a real redis-server: no queue
//! entry or payload can stop an agent, bad data is refused where it arrives, and no process a run
//! started outlives the run.

use std::collections::HashMap;
use std::time::Duration;

use agent_tests::{
    hgetall, read_or_empty, stream, wait_for, wait_run_end, xadd, Agent, EventDirs, RedisServer,
};
use redis::Commands;

const LONG: Duration = Duration::from_secs(60);

/// A small deterministic generator: the seed is printed, so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn bytes(&mut self, max: u64) -> Vec<u8> {
        let len = self.below(max + 1);
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// A field value chosen to hit a parser's edges: valid names, NUL, invalid UTF-8, huge, empty.
fn hostile_value(rng: &mut Rng) -> Vec<u8> {
    match rng.below(9) {
        0 => b"ok".to_vec(),
        1 => Vec::new(),
        2 => rng.bytes(64),
        3 => b"a\0b".to_vec(),
        4 => vec![b'x'; 200_000],
        5 => b"\xff\xfe\xc3".to_vec(),
        6 => "é/../ü\n*".as_bytes().to_vec(),
        7 => format!("{}", rng.next()).into_bytes(),
        _ => b"ok".to_vec(),
    }
}

fn pending(con: &mut redis::Connection, queue: &str) -> i64 {
    let reply: redis::Value = redis::cmd("XPENDING")
        .arg(queue)
        .arg("agent")
        .query(con)
        .unwrap();
    match reply {
        redis::Value::Array(items) => items
            .first()
            .and_then(|v| redis::from_redis_value::<i64>(v.clone()).ok())
            .unwrap_or(0),
        _ => 0,
    }
}

/// Entries with any stream id (up to far past the year 9999) and any fields go through the agent's
/// real read-and-begin path; none may stop it, each ends as a run (done, or refused: failed 65) and
/// leaves the pending list, and entries added after them (`XADD *`) still run.
#[test]
fn hostile_queue_entries_never_stop_the_agent_and_all_leave_the_pending_list() {
    let seed = std::env::var("HOSTILE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| agent_tests::monotonic_ns() | 1);
    eprintln!("HOSTILE_SEED={seed}");
    let mut rng = Rng(seed);
    let redis = RedisServer::start();
    let dirs = EventDirs::new(1);
    let out = dirs.work().join("out");
    dirs.step(0, "ok", "10", &format!("echo ran >> {}", out.display()));
    let mut con = redis.conn();
    let queue = "module/h0/queue";
    let mut agent = Agent::module(&redis, "h0", &dirs, &["--max-payload", "1024"]);

    // Explicit, increasing stream ids: ordinary times, the last recordable millisecond, the first
    // one past it (the id of the original report) and far beyond.
    let mut ms: u64 = 1_000;
    let mut ids = Vec::new();
    for i in 0..150u64 {
        ms = match i {
            50 => 253_402_300_799_999,
            51 => 253_402_300_800_000,
            100 => 1 << 62,
            _ => ms + 1 + rng.below(1 << 20),
        };
        let id = format!("{ms}-{}", rng.below(1000));
        let mut cmd = redis::cmd("XADD");
        cmd.arg(queue).arg(&id);
        let fields = 1 + rng.below(4);
        for _ in 0..fields {
            let key: &[u8] = match rng.below(5) {
                0 | 1 => b"event",
                2 => b"data",
                3 => b"id",
                _ => b"\xffjunk",
            };
            cmd.arg(key).arg(hostile_value(&mut rng));
        }
        let added: redis::RedisResult<String> = cmd.query(&mut con);
        if let Ok(id) = added {
            ids.push(id);
        }
    }
    // After the far-future ids, `XADD *` numbers entries from the highest one: they must run.
    let after = xadd(&mut con, queue, &[("event", "ok"), ("data", "after")]);
    let rec = wait_run_end(&mut con, &format!("module/h0/run/{after}"), LONG);
    assert_eq!(rec["status"], "done", "{rec:?}");
    wait_for("the pending list to empty", LONG, || {
        (pending(&mut con, queue) == 0).then_some(())
    });
    let len: i64 = con.xlen(queue).unwrap();
    assert_eq!(len, 0, "every entry left the queue");
    // Every entry that named no other run id ended with a terminal record of its own.
    let terminal = ["done", "failed"];
    let mut ended = 0;
    for id in &ids {
        let rec = hgetall(&mut con, &format!("module/h0/run/{id}"));
        if let Some(status) = rec.get("status") {
            assert!(terminal.contains(&status.as_str()), "{id}: {rec:?}");
            if status == "failed" {
                assert!(
                    rec["exit_code"] == "65" || rec["exit_code"] == "69",
                    "{rec:?}"
                );
            }
            ended += 1;
        }
    }
    assert!(ended > 0);
    // The run with the id past the year 9999 has no `queued` time, and is otherwise an ordinary run.
    let log = agent.log();
    assert!(!log.contains("panicked"), "{log}");
    assert!(
        agent.wait_exit(Duration::ZERO).is_none(),
        "the agent is still running"
    );
    assert_eq!(agent.terminate().code(), Some(0));
    assert!(!read_or_empty(&out).is_empty());
}

/// Data with a NUL byte cannot be a step's argument: it is refused where it arrives, by PUBLISH and
/// in a queue entry alike, with exit 65 and a journal entry saying why; nothing runs.
#[test]
fn data_with_a_nul_byte_is_refused_on_arrival() {
    let redis = RedisServer::start();
    let dirs = EventDirs::new(1);
    let out = dirs.work().join("out");
    dirs.step(0, "ok", "10", &format!("echo ran >> {}", out.display()));
    let mut con = redis.conn();
    let _agent = Agent::module(&redis, "n0", &dirs, &[]);
    let receivers: i64 = con.publish("n0:ok", "a\0b").unwrap();
    assert_eq!(receivers, 1);
    xadd(
        &mut con,
        "module/n0/queue",
        &[("event", "ok"), ("data", "x\0y"), ("id", "nul1")],
    );
    let rec = wait_run_end(&mut con, "module/n0/run/nul1", LONG);
    assert_eq!(rec["status"], "failed");
    assert_eq!(rec["exit_code"], "65");
    assert!(rec["error"].contains("NUL"), "{rec:?}");
    // The listener and the queue reader are separate: the refusal may be journaled after the run.
    let refused = wait_for("the PUBLISH to be journaled as refused", LONG, || {
        stream(&mut con, "module/n0/journal")
            .into_iter()
            .find(|e| e["status"] == "refused")
    });
    let journal: Vec<HashMap<String, String>> = stream(&mut con, "module/n0/journal");
    assert_eq!(refused["exit_code"], "65");
    assert!(refused["message"].contains("NUL"), "{refused:?}");
    assert!(journal
        .iter()
        .any(|e| e["run"] == "nul1" && e["status"] == "failed" && e["message"].contains("NUL")));
    assert_eq!(read_or_empty(&out), "", "nothing ran");
}

fn gone(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.is_empty() || stat.split(' ').nth(2) == Some("Z")
}

/// A step's grandchild that leaves the process group (`setsid`), forks again and clears its
/// environment is gone when the run ends, however it ends: done, failed, timed out, cancelled.
#[test]
fn no_process_a_run_started_outlives_the_run() {
    let redis = RedisServer::start();
    let dirs = EventDirs::new(1);
    let work = dirs.work();
    // Double fork + setsid + empty environment: neither the process group nor the environment
    // finds it; only the run's cgroup does.
    let escape = |pidfile: &std::path::Path| {
        format!(
            "env -i setsid sh -c 'sh -c \"echo \\$\\$ > {}; trap \\\"\\\" TERM; exec sleep 1000\" &' </dev/null >/dev/null 2>&1\n\
             while [ ! -s {} ]; do sleep 0.05; done",
            pidfile.display(),
            pidfile.display()
        )
    };
    let cases = [
        ("quick", "exit 0"),
        ("failing", "exit 3"),
        ("slow", "sleep 1000"),
        ("stopped", "sleep 1000"),
    ];
    for (event, then) in cases {
        let pidfile = work.join(format!("{event}.pid"));
        dirs.step(0, event, "10", &format!("{}\n{then}", escape(&pidfile)));
    }
    dirs.file(0, "slow", ".timeout", "2");
    let mut con = redis.conn();
    let agent = Agent::module(&redis, "p0", &dirs, &["--kill-grace", "1"]);
    assert!(
        agent.log().contains("runs tracked by cgroup"),
        "{}",
        agent.log()
    );
    let q = "module/p0/queue";
    for (event, _) in cases {
        xadd(&mut con, q, &[("event", event), ("id", event)]);
        if event == "stopped" {
            let pidfile = work.join("stopped.pid");
            wait_for("the step to start its daemon", LONG, || {
                (!read_or_empty(&pidfile).is_empty()).then_some(())
            });
            let _: i64 = con.publish("cancel/p0", "stopped").unwrap();
        }
        let rec = wait_run_end(&mut con, &format!("module/p0/run/{event}"), LONG);
        let want = match event {
            "quick" => "done",
            "failing" | "slow" => "failed",
            _ => "cancelled",
        };
        assert_eq!(rec["status"], want, "{rec:?}");
        let pid: i32 = read_or_empty(&work.join(format!("{event}.pid")))
            .trim()
            .parse()
            .unwrap();
        // The record is written after the kill: the process is gone already, not later.
        assert!(gone(pid), "{event}: pid {pid} outlived its run");
        let output: String = con
            .get(format!("module/p0/run/{event}/output"))
            .unwrap_or_default();
        assert!(
            output.contains("left running by the run's steps were killed"),
            "{event}: {output}"
        );
    }
}

/// Replaces `key` with a string, as anyone who may write the agent's keys can.
fn plant_string(con: &mut redis::Connection, key: &str) {
    let _: () = redis::pipe()
        .del(key)
        .ignore()
        .set(key, "x")
        .ignore()
        .query(con)
        .unwrap();
}

/// What anyone who may write the agent's keys can leave there — a run record, output or journal of
/// the wrong type, an absurd attempt count, a module.env or secrets key that is not a hash, a
/// module.env field name that is not UTF-8 — cannot stop the agent: runs go on, with warnings.
#[test]
fn hostile_record_contents_never_stop_the_agent() {
    let redis = RedisServer::start();
    let dirs = EventDirs::new(1);
    let out = dirs.work().join("out");
    dirs.step(0, "ok", "10", &format!("echo ran >> {}", out.display()));
    let mut con = redis.conn();
    let mut set = |args: &[&[u8]]| {
        let mut cmd = redis::cmd(std::str::from_utf8(args[0]).unwrap());
        for a in &args[1..] {
            cmd.arg(*a);
        }
        let _: () = cmd.query(&mut con).unwrap();
    };
    set(&[b"SET", b"module/r0/run/r1", b"not a hash"]);
    set(&[
        b"HSET",
        b"module/r0/run/r2",
        b"status",
        b"running",
        b"attempt",
        b"99999999999999999999",
    ]);
    set(&[
        b"HSET",
        b"module/r0/run/r3",
        b"status",
        b"running",
        b"attempt",
        b"nan",
    ]);
    set(&[b"LPUSH", b"module/r0/run/r4/output", b"not a string"]);
    set(&[b"SET", b"module/r0/journal", b"not a stream"]);
    set(&[b"SET", b"module/r0/secrets", b"not a hash"]);
    set(&[
        b"HSET",
        b"module/r0/module.env",
        b"\xffBAD",
        b"x",
        b"GOOD",
        b"1",
    ]);
    let agent = Agent::module(&redis, "r0", &dirs, &[]);
    let mut con = redis.conn();
    for run in ["r1", "r2", "r3", "r4"] {
        xadd(&mut con, "module/r0/queue", &[("event", "ok"), ("id", run)]);
        // Until the agent has replaced it, the record may still be the planted string.
        let key = format!("module/r0/run/{run}");
        let status = wait_for(&format!("{run} to end"), LONG, || {
            let rec: HashMap<String, String> =
                redis::cmd("HGETALL").arg(&key).query(&mut con).ok()?;
            let s = rec.get("status")?.clone();
            (s != "running").then_some(s)
        });
        assert_eq!(status, "done", "{run}");
    }
    // A module.env that is not a hash is read as empty, and said so.
    plant_string(&mut con, "module/r0/module.env");
    xadd(
        &mut con,
        "module/r0/queue",
        &[("event", "ok"), ("id", "r5")],
    );
    assert_eq!(
        wait_run_end(&mut con, "module/r0/run/r5", LONG)["status"],
        "done"
    );
    // A PUBLISH while the journal is not a stream still queues.
    plant_string(&mut con, "module/r0/journal");
    let _: i64 = con.publish("r0:ok", "published").unwrap();
    wait_for("the published event to run", LONG, || {
        (read_or_empty(&out).lines().count() == 6).then_some(())
    });
    // A refusal to journal while the journal is not a stream: the agent goes on.
    plant_string(&mut con, "module/r0/journal");
    let _: i64 = con.publish("r0:..", "bad name").unwrap();
    xadd(
        &mut con,
        "module/r0/queue",
        &[("event", "ok"), ("id", "r6")],
    );
    wait_for("the event after the refusal to run", LONG, || {
        (read_or_empty(&out).lines().count() == 7).then_some(())
    });
    let log = agent.log();
    assert!(
        !log.contains("panicked") && !log.contains("cannot go on"),
        "{log}"
    );
    assert!(
        log.contains("not a hash") && log.contains("removed"),
        "the repairs are logged: {log}"
    );
}

#[test]
fn a_registry_of_the_wrong_type_or_of_another_kind_is_handled() {
    let redis = RedisServer::start();
    let mut con = redis.conn();
    let dirs = EventDirs::new(1);
    dirs.step(0, "hello", "10hi", "echo hi");
    // Someone made the registry a string: the agent runs unregistered instead of failing.
    let _: () = con.set("cluster/agents", "not a hash").unwrap();
    let agent = Agent::module(&redis, "reg0", &dirs, &[]);
    xadd(
        &mut con,
        "module/reg0/queue",
        &[("event", "hello"), ("id", "r1")],
    );
    let rec = wait_run_end(&mut con, "module/reg0/run/r1", LONG);
    assert_eq!(rec["status"], "done", "{rec:?}");
    drop(agent);

    // A name registered as a node's: a module agent of that name refuses to start, and says why.
    let _: () = con.del("cluster/agents").unwrap();
    let _: () = con.hset("cluster/agents", "reg1", "node").unwrap();
    let dir = dirs.dir(0).display().to_string();
    let out = agent_tests::Run::new("module-agent")
        .args([
            "--name",
            "reg1",
            "--redis-url",
            &redis.url(),
            "--events-dir",
            &dir,
        ])
        .env_remove("REDIS_URL")
        .timeout(LONG)
        .output();
    assert!(!out.success(), "{out:?}");
    assert!(
        out.stderr
            .contains("registered as a node in cluster/agents"),
        "{out:?}"
    );
}
