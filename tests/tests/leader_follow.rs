//! Agents and agentctl pointed at a replica work on its leader (issue 13): the local Redis of a
//! cluster member is a replica, and `agent_redis::Target` follows `ROLE` to the server that takes
//! the writes. Real redis-server processes: a leader and a replica of it.

use std::time::Duration;

use agent_tests::{wait_for, wait_run_end, xadd, Agent, EventDirs, RedisServer, Run};
use redis::Commands;

const LONG: Duration = Duration::from_secs(60);

/// A replica of `leader`, in sync.
fn replica_of(leader: &RedisServer) -> RedisServer {
    let replica = RedisServer::start();
    let mut con = replica.conn();
    let _: () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(leader.port())
        .query(&mut con)
        .unwrap();
    wait_for("the replica to sync", LONG, || {
        let info: String = redis::cmd("INFO").arg("replication").query(&mut con).ok()?;
        info.contains("master_link_status:up").then_some(())
    });
    replica
}

/// A node-agent given the replica's URL, as on a member node (its local Redis); the harness checks
/// its readiness on `leader`, where its subscription is.
fn node_agent_on(
    replica: &RedisServer,
    leader: &RedisServer,
    name: &str,
    dirs: &EventDirs,
    extra: &[&str],
) -> Agent {
    Agent::start_with_admin(
        "node-agent",
        &replica.url(),
        &leader.url(),
        name,
        &dirs.dirs(),
        extra,
    )
}

#[test]
fn an_agent_pointed_at_a_replica_runs_the_leaders_queue_and_records_there() {
    let leader = RedisServer::start();
    let replica = replica_of(&leader);
    let dirs = EventDirs::new(1);
    dirs.step(0, "hello", "10", "echo hello from the step");
    let _agent = node_agent_on(&replica, &leader, "w1", &dirs, &[]);
    let mut con = leader.conn();
    xadd(
        &mut con,
        "node/w1/queue",
        &[("event", "hello"), ("id", "h1")],
    );
    let rec = wait_run_end(&mut con, "node/w1/run/h1", LONG);
    assert_eq!(rec["status"], "done", "{rec:?}");
    // The replica has it too, replicated: nothing was written there directly (it is read-only).
    let mut rcon = replica.conn();
    wait_for("the record on the replica", LONG, || {
        let s: Option<String> = rcon.hget("node/w1/run/h1", "status").ok()?;
        (s.as_deref() == Some("done")).then_some(())
    });
    let out: String = con.get("node/w1/run/h1/output").unwrap();
    assert!(out.contains("hello from the step"), "{out}");
}

#[test]
fn agentctl_on_a_replica_queues_on_the_leader_and_follows_the_run() {
    let leader = RedisServer::start();
    let replica = replica_of(&leader);
    let dirs = EventDirs::new(1);
    dirs.step(0, "ping", "10", "echo pong");
    let _agent = Agent::start_with_admin(
        "node-agent",
        &leader.url(),
        &leader.url(),
        "w2",
        &dirs.dirs(),
        &[],
    );
    let out = Run::agentctl(&replica.url())
        .args(["run", "node/w2", "ping"])
        .timeout(LONG)
        .output();
    assert!(out.success(), "{out:?}");
    let mut con = leader.conn();
    let runs: Vec<String> = con.keys("node/w2/run/*").unwrap();
    assert!(
        runs.iter().any(|k| !k.ends_with("/output")),
        "no run recorded on the leader: {runs:?}"
    );
}

/// Every notification the agent has sent to `sock` so far (waits `quiet` for the next one).
fn notifications(sock: &std::os::unix::net::UnixDatagram, quiet: Duration) -> Vec<String> {
    sock.set_read_timeout(Some(quiet)).unwrap();
    let mut buf = [0u8; 512];
    let mut out = Vec::new();
    while let Ok(n) = sock.recv(&mut buf) {
        out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    out
}

#[test]
fn a_promotion_is_followed_in_process_and_systemd_is_never_told_the_agent_stops() {
    use std::os::unix::net::UnixDatagram;
    let old = RedisServer::start();
    let replica = replica_of(&old);
    let dirs = EventDirs::new(1);
    let marks = dirs.work().join("marks");
    for event in ["moved", "hello"] {
        dirs.step(
            0,
            event,
            "10",
            &format!("echo {event} >> {}", marks.display()),
        );
    }
    let sock_path = dirs.work().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let mut agent = node_agent_on(&replica, &old, "f1", &dirs, &["--leader-event", "moved"]);
    agent.terminate();
    agent.set_env("NOTIFY_SOCKET", sock_path.to_str().unwrap());
    agent.restart();
    let pid = agent.pid();
    let before = notifications(&sock, Duration::from_millis(300));
    assert!(before.iter().any(|m| m.contains("READY=1")), "{before:?}");

    // The replica is promoted (what Sentinel does on a failover): the agent follows it.
    let mut rcon = replica.conn();
    let _: () = redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query(&mut rcon)
        .unwrap();
    wait_for("the leader event on the new leader", LONG, || {
        std::fs::read_to_string(&marks)
            .ok()?
            .contains("moved")
            .then_some(())
    });
    xadd(
        &mut rcon,
        "node/f1/queue",
        &[("event", "hello"), ("id", "after")],
    );
    let rec = wait_run_end(&mut rcon, "node/f1/run/after", LONG);
    assert_eq!(rec["status"], "done", "{rec:?}");
    assert_eq!(agent.pid(), pid, "the same process");
    assert!(agent.wait_exit(Duration::ZERO).is_none(), "still running");
    let log = agent.log();
    assert!(log.contains("the leader moved"), "{log}");
    assert!(
        !log.contains("cannot go on"),
        "a move is no failure:\n{log}"
    );

    // systemd takes STOPPING=1 for the end of the process and SIGKILLs it TimeoutStopSec later:
    // a move must never say it. It says where the agent went, and feeds the watchdog.
    let during = notifications(&sock, Duration::from_millis(300));
    assert!(
        !during.iter().any(|m| m.contains("STOPPING=1")),
        "{during:?}"
    );
    let status = format!(
        "STATUS=following the new leader at 127.0.0.1:{}",
        replica.port()
    );
    assert!(during.iter().any(|m| m.contains(&status)), "{during:?}");
    assert!(during.iter().any(|m| m.contains("READY=1")), "{during:?}");

    // A real stop still says it.
    assert_eq!(agent.terminate().code(), Some(0));
    let after = notifications(&sock, Duration::from_millis(300));
    assert!(after.iter().any(|m| m.contains("STOPPING=1")), "{after:?}");
}

/// The time of day, in seconds, of the first log line that contains `what` (the agent's log lines
/// start with an RFC 3339 time, `2026-12-03T05:51:19.545568Z`).
fn logged_at(log: &str, what: &str) -> Option<f64> {
    let line = log.lines().find(|l| l.contains(what))?;
    let (_, time) = line.split_whitespace().next()?.split_once('T')?;
    let mut parts = time.trim_end_matches('Z').split(':');
    let (h, m, s) = (parts.next()?, parts.next()?, parts.next()?);
    Some(h.parse::<f64>().ok()? * 3600.0 + m.parse::<f64>().ok()? * 60.0 + s.parse::<f64>().ok()?)
}

#[test]
fn a_leader_that_stops_answering_does_not_hold_the_move_to_the_new_one() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let old = RedisServer::start();
    let replica = replica_of(&old);
    let dirs = EventDirs::new(1);
    dirs.step(0, "hello", "10", "echo hello");
    let agent = node_agent_on(&replica, &old, "f2", &dirs, &[]);
    // The old leader freezes (a dead host: nothing answers, nothing is refused) long enough for
    // the agent's periodic commands (heartbeat, the subscription's PING: every 5 s) to be waiting
    // on it, each for its 10 s command timeout. Then the replica is promoted.
    let frozen = Pid::from_raw(old.pid() as i32);
    kill(frozen, Signal::SIGSTOP).unwrap();
    std::thread::sleep(Duration::from_millis(5500));
    let mut rcon = replica.conn();
    let _: () = redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query(&mut rcon)
        .unwrap();
    xadd(
        &mut rcon,
        "node/f2/queue",
        &[("event", "hello"), ("id", "on-new")],
    );
    let rec = wait_run_end(&mut rcon, "node/f2/run/on-new", LONG);
    kill(frozen, Signal::SIGCONT).unwrap();
    assert_eq!(rec["status"], "done", "{rec:?}");
    // The run that ends to follow the new leader gives up what waits on the old one: its stop
    // takes milliseconds, not what is left of a command timeout (3.5 s or more here).
    let log = agent.log();
    let moved = logged_at(&log, "the leader moved").expect("the move is logged");
    let stopped = logged_at(&log, "agent stopped").expect("the old run's end is logged");
    assert!(
        stopped - moved < 2.0,
        "the old run took {:.1} s to stop:\n{log}",
        stopped - moved
    );
}
