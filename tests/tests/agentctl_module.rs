//! `agentctl module add|remove` against a real redis-server and a real `node-agent` whose
//! `module.init` / `module.remove` steps are small examples written by the tests (the real node
//! steps are tested on systemd nodes in `node_modules.rs`).
//!
//! Waits are generous and nothing asserts on timing: these tests must pass on a slow machine.

use std::collections::HashMap;
use std::time::Duration;

use agent_tests::{
    hgetall, read_or_empty, stream, wait_for, wait_run_end, Agent, EventDirs, RedisServer, Run,
    RunOutput,
};
use redis::Commands;

const LONG: Duration = Duration::from_secs(120);

/// Runs `agentctl --redis-url URL ARGS…` and kills it if it outlives [`LONG`].
fn ctl(url: &str, args: &[&str]) -> RunOutput {
    Run::agentctl(url).args(args).timeout(LONG).output()
}

fn keys(con: &mut redis::Connection) -> Vec<String> {
    let mut k: Vec<String> = con.keys("*").unwrap();
    k.sort();
    k
}

/// The runs of `event` in a node's journal that ended, as (data, status) — data from the record.
fn ended_runs(
    con: &mut redis::Connection,
    node: &str,
    event: &str,
) -> Vec<HashMap<String, String>> {
    stream(con, &format!("node/{node}/journal"))
        .into_iter()
        .filter(|e| e["event"] == event && matches!(e["status"].as_str(), "done" | "failed"))
        .map(|e| hgetall(con, &format!("node/{node}/run/{}", e["run"])))
        .collect()
}

#[test]
fn add_allocates_ids_writes_module_env_and_runs_module_init() {
    let redis = RedisServer::start();
    let url = redis.url();
    let dirs = EventDirs::new(1);
    let out = dirs.work().join("init");
    dirs.step(
        0,
        "module.init",
        "10install",
        &format!(
            "echo \"init argv=$1 stdin=$(cat) on=$AGENT_NAME\" >> {}",
            out.display()
        ),
    );
    let _node = Agent::node(&redis, "n1", &dirs, &[]);
    let mut con = redis.conn();

    let add = ctl(
        &url,
        &[
            "module",
            "add",
            "localhost/hello:latest",
            "--node",
            "n1",
            "--env",
            "PORT=8080",
            "--env",
            "TITLE=a b=c",
        ],
    );
    assert_eq!(add.code(), 0, "{add:?}");
    assert_eq!(add.stdout, "hello1\n", "the id alone on stdout: {add:?}");
    assert!(add.stderr.contains("done (exit 0)"), "{add:?}");
    assert_eq!(read_or_empty(&out), "init argv=hello1 stdin=hello1 on=n1\n");
    let env = hgetall(&mut con, "module/hello1/module.env");
    assert_eq!(env["EVENTS_IMAGE"], "localhost/hello:latest");
    assert_eq!(env["PORT"], "8080");
    assert_eq!(env["TITLE"], "a b=c");
    assert_eq!(env.len(), 3, "{env:?}");
    // The id is a module's in the registry, and the node claimed its own name at its start.
    let registry = hgetall(&mut con, "cluster/agents");
    assert_eq!(registry["hello1"], "module", "{registry:?}");
    assert_eq!(registry["n1"], "node", "{registry:?}");

    // Another image form of the same name gets the next id; --no-wait only queues.
    let add = ctl(
        &url,
        &[
            "module",
            "add",
            "docker://host/Hello:1.2",
            "--node",
            "n1",
            "--no-wait",
        ],
    );
    assert_eq!(add.code(), 0, "{add:?}");
    assert_eq!(add.stdout, "hello2\n", "{add:?}");
    wait_for("module.init hello2", LONG, || {
        read_or_empty(&out).contains("argv=hello2").then_some(())
    });
    let seq: i64 = con.get("cluster/module_sequence/hello").unwrap();
    assert_eq!(seq, 2);
    let env = hgetall(&mut con, "module/hello2/module.env");
    assert_eq!(env["EVENTS_IMAGE"], "docker://host/Hello:1.2");
    let runs = wait_for("both runs recorded", LONG, || {
        let r = ended_runs(&mut con, "n1", "module.init");
        (r.len() == 2).then_some(r)
    });
    let data: Vec<&str> = runs.iter().map(|r| r["data"].as_str()).collect();
    assert_eq!(data, ["hello1", "hello2"]);
    assert!(runs.iter().all(|r| r["status"] == "done"), "{runs:?}");

    // Another image name has its own sequence.
    let add = ctl(
        &url,
        &["module", "add", "oci-archive:/srv/web.tar", "--node", "n1"],
    );
    assert_eq!(add.code(), 0, "{add:?}");
    assert_eq!(add.stdout, "web1\n");
}

#[test]
fn a_failing_module_init_passes_its_exit_code_and_is_rolled_back() {
    let redis = RedisServer::start();
    let url = redis.url();
    let dirs = EventDirs::new(1);
    let out = dirs.work().join("log");
    let o = out.display();
    dirs.step(
        0,
        "module.init",
        "10create",
        &format!("echo \"create $1\" >> {o}"),
    );
    dirs.step(0, "module.init", "20start", "echo cannot-start >&2; exit 7");
    dirs.step(
        0,
        "module.init.rollback",
        "10remove",
        &format!("echo \"undo $1 after $AGENT_FAILED_STEP\" >> {o}"),
    );
    let _node = Agent::node(&redis, "n2", &dirs, &[]);
    let add = ctl(&url, &["module", "add", "hello", "--node", "n2"]);
    assert_eq!(add.code(), 7, "the run's exit code: {add:?}");
    assert_eq!(add.stdout, "hello1\n", "{add:?}");
    assert!(
        add.stderr.contains("failed (exit 7)") && add.stderr.contains("rolled back"),
        "{add:?}"
    );
    assert!(add.stderr.contains("cannot-start"), "{add:?}");
    assert_eq!(
        read_or_empty(&out),
        "create hello1\nundo hello1 after 20start\n"
    );
}

#[test]
fn bad_images_and_env_are_refused_with_nothing_written() {
    let redis = RedisServer::start();
    let url = redis.url();
    let mut con = redis.conn();
    let long = "x".repeat(26);
    for image in [
        "",
        "registry.example/org/",
        "1password",
        "org/___:1",
        long.as_str(),
    ] {
        let add = ctl(&url, &["module", "add", image, "--node", "n1"]);
        assert_eq!(add.code(), 65, "{image:?}: {add:?}");
        assert!(add.stderr.contains("image"), "{add:?}");
        assert_eq!(add.stdout, "");
    }
    for env in [
        "port=1",
        "1A=x",
        "NOEQUALS",
        "AGENT_NAME=x",
        "EVENTS_IMAGE=y",
    ] {
        let add = ctl(
            &url,
            &["module", "add", "hello", "--node", "n1", "--env", env],
        );
        assert_eq!(add.code(), 65, "{env:?}: {add:?}");
        assert!(add.stderr.contains("--env"), "{add:?}");
    }
    let add = ctl(&url, &["module", "add", "hello", "--node", "bad/node"]);
    assert_eq!(add.code(), 65, "{add:?}");
    assert_eq!(keys(&mut con), Vec::<String>::new(), "nothing written");
}

#[test]
fn a_taken_id_is_refused_with_nothing_written() {
    let redis = RedisServer::start();
    let url = redis.url();
    let mut con = redis.conn();
    // A module installed by hand (seed-style) holds hello1; a node is named web1. The node is
    // down (no heartbeat): its name is taken all the same, by the registry its agent wrote.
    let _: () = con
        .hset("module/hello1/module.env", "EVENTS_IMAGE", "hello")
        .unwrap();
    let _: () = con.hset("cluster/agents", "web1", "node").unwrap();
    let before = keys(&mut con);

    let add = ctl(&url, &["module", "add", "hello", "--node", "n1"]);
    assert_eq!(add.code(), 1, "{add:?}");
    assert!(
        add.stderr
            .contains("module/hello1/module.env exists already")
            && add.stderr.contains("INCR cluster/module_sequence/hello"),
        "{add:?}"
    );
    let add = ctl(&url, &["module", "add", "web", "--node", "n1"]);
    assert_eq!(add.code(), 1, "{add:?}");
    assert!(
        add.stderr
            .contains("cluster/agents has web1 as a node's name"),
        "{add:?}"
    );
    assert_eq!(keys(&mut con), before, "nothing written");
    let env = hgetall(&mut con, "module/hello1/module.env");
    assert_eq!(
        env.len(),
        1,
        "the existing module.env is untouched: {env:?}"
    );

    // Skipping the taken number as the message says gives the next id.
    let _: i64 = con.incr("cluster/module_sequence/hello", 1).unwrap();
    let add = ctl(
        &url,
        &["module", "add", "hello", "--node", "n1", "--no-wait"],
    );
    assert_eq!(add.code(), 0, "{add:?}");
    assert_eq!(add.stdout, "hello2\n");
}

#[test]
fn remove_queues_module_remove_on_this_host_by_default() {
    let host = nix::unistd::gethostname().unwrap();
    let host = host.to_string_lossy();
    let host = host.split('.').next().unwrap().to_string();
    let redis = RedisServer::start();
    let url = redis.url();
    let dirs = EventDirs::new(1);
    let out = dirs.work().join("removed");
    dirs.step(
        0,
        "module.remove",
        "10remove",
        &format!("echo \"remove argv=$1 stdin=$(cat)\" >> {}", out.display()),
    );
    let _node = Agent::node(&redis, &host, &dirs, &[]);
    let mut con = redis.conn();

    let rm = ctl(&url, &["module", "remove", "hello1"]);
    assert_eq!(rm.code(), 0, "{rm:?}");
    assert_eq!(read_or_empty(&out), "remove argv=hello1 stdin=hello1\n");
    let runs = ended_runs(&mut con, &host, "module.remove");
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["data"], "hello1");

    for bad in ["Hello1", "1hello", "hello-1", "a/b"] {
        let rm = ctl(&url, &["module", "remove", bad, "--node", &host]);
        assert_eq!(rm.code(), 65, "{bad:?}: {rm:?}");
    }
    // A failing module.remove passes its exit code through.
    dirs.step(0, "module.remove", "20fail", "exit 3");
    let rm = ctl(&url, &["module", "remove", "hello2", "--node", &host]);
    assert_eq!(rm.code(), 3, "{rm:?}");
    let rec = wait_run_end(
        &mut con,
        &format!(
            "node/{host}/run/{}",
            rm.stderr
                .lines()
                .find_map(|l| l.strip_prefix("run ")?.split_once(" queued on "))
                .unwrap()
                .0
        ),
        LONG,
    );
    assert_eq!(rec["event"], "module.remove");
    assert_eq!(rec["data"], "hello2");
}
