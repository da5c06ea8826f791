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

#[test]
fn an_agent_pointed_at_a_replica_runs_the_leaders_queue_and_records_there() {
    let leader = RedisServer::start();
    let replica = replica_of(&leader);
    let dirs = EventDirs::new(1);
    dirs.step(0, "hello", "10", "echo hello from the step");
    // The agent is given the replica's URL, as on a member node (its local Redis).
    let _agent = Agent::start_with_admin(
        "node-agent",
        &replica.url(),
        &leader.url(),
        "w1",
        &dirs.dirs(),
        &[],
    );
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
