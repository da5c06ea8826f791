//! The engine removes the values of a module's secrets from everything it writes: run output, run
//! record, journal, its own log, progress reports and events its steps emit, and therefore from
//! every command Redis sees (checked with MONITOR) and every message a subscriber gets.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use agent_tests::{bin, stream, wait_for, wait_run_end, xadd, Agent, EventDirs, RedisServer};

const LONG: Duration = Duration::from_secs(60);
const SECRET: &str = "Sup3r-s3cret-DB-passw0rd";

fn sdk(redis: &RedisServer, key: &Path, args: &[&str], stdin: &str) {
    let mut child = Command::new(bin("module-sdk"))
        .args([
            "secret",
            "--module",
            "sec0",
            "--identity",
            key.to_str().unwrap(),
        ])
        .args(args)
        .env("REDIS_URL", redis.url())
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    assert!(
        child.wait().unwrap().success(),
        "module-sdk secret {args:?}"
    );
}

#[test]
fn secret_values_never_reach_redis_or_the_logs() {
    let redis = RedisServer::start();
    let dirs = EventDirs::new(1);
    let work = dirs.work();
    let key = work.join("home/.config/agent/secret.key");
    sdk(&redis, &key, &["init"], "");
    sdk(&redis, &key, &["set", "DBPASS"], SECRET);

    // Every command Redis receives from now on.
    let monitor_log = work.join("monitor.log");
    let mut monitor = Command::new("redis-cli")
        .args(["-p", &redis.port().to_string(), "MONITOR"])
        .stdout(std::fs::File::create(&monitor_log).unwrap())
        .spawn()
        .unwrap();
    wait_for("MONITOR to start", LONG, || {
        (std::fs::read_to_string(&monitor_log).ok()? == "OK\n").then_some(())
    });

    // Every message published from now on, as a subscriber of all channels sees it.
    let sub_log = work.join("subscriber.log");
    let mut subscriber = Command::new("redis-cli")
        .args(["-p", &redis.port().to_string(), "PSUBSCRIBE", "*"])
        .stdout(std::fs::File::create(&sub_log).unwrap())
        .spawn()
        .unwrap();
    wait_for("the subscriber to start", LONG, || {
        std::fs::read_to_string(&sub_log)
            .ok()?
            .contains("psubscribe")
            .then_some(())
    });

    // A failing step that prints the secret on stdout and stderr, reports it as progress, emits
    // it in an event (as a value and as a key) and puts it in its error text.
    let script = r#"v=$("$SDK" secret get DBPASS)
echo "password is $v"
echo "stderr has $v too" >&2
"$SDK" progress 40 "progress has $v"
"$SDK" emit leaked "{\"pw\":\"$v\",\"$v\":1}"
exit 4"#;
    dirs.step(
        0,
        "leak",
        "10leak",
        &format!("SDK='{}'\n{script}", bin("module-sdk").display()),
    );
    let mut agent = Agent::module(
        &redis,
        "sec0",
        &dirs,
        &["--secret-key-file", key.to_str().unwrap()],
    );
    agent.terminate();
    agent.set_env("AGENT_SECRET_KEY_FILE", key.to_str().unwrap());
    agent.restart();
    let mut con = redis.conn();
    // The secret also arrives as event data: it must not be stored in the record either.
    let data = format!("data with {SECRET} inside");
    xadd(
        &mut con,
        "module/sec0/queue",
        &[("event", "leak"), ("data", &data), ("id", "l1")],
    );
    let rec = wait_run_end(&mut con, "module/sec0/run/l1", LONG);
    assert_eq!(rec["status"], "failed");
    assert_eq!(rec["exit_code"], "4");
    assert_eq!(rec["data"], "data with *** inside");
    let output: String = redis::cmd("GET")
        .arg("module/sec0/run/l1/output")
        .query(&mut con)
        .unwrap();
    assert!(output.contains("password is ***\n"), "{output}");
    assert!(output.contains("stderr has *** too\n"), "{output}");
    let journal = format!("{:?}", stream(&mut con, "module/sec0/journal"));
    assert!(!journal.contains(SECRET));

    std::thread::sleep(Duration::from_millis(300));
    let _ = monitor.kill();
    let _ = monitor.wait();
    let _ = subscriber.kill();
    let _ = subscriber.wait();
    let heard = std::fs::read_to_string(&sub_log).unwrap();
    // The reports did arrive, scrubbed.
    assert!(heard.contains("progress has ***"), "{heard}");
    assert!(heard.contains("event/sec0/leaked"), "{heard}");
    assert!(heard.contains("\"pw\":\"***\""), "{heard}");
    assert!(
        !heard.contains(SECRET),
        "plaintext reached a subscriber:\n{heard}"
    );
    let seen = std::fs::read_to_string(&monitor_log).unwrap();
    assert!(
        seen.contains("APPEND") && seen.contains("module/sec0/run/l1/output"),
        "MONITOR saw the run"
    );
    // The XADD of the test itself carries the secret as data; everything after it must not.
    let after_queueing = seen
        .split("\"XADD\" \"module/sec0/queue\"")
        .nth(1)
        .unwrap_or("");
    let after_queueing = after_queueing
        .split_once('\n')
        .map(|(_, rest)| rest)
        .unwrap_or("");
    assert!(
        !after_queueing.contains(SECRET),
        "plaintext reached Redis:\n{after_queueing}"
    );
    agent.terminate();
    assert!(!agent.log().contains(SECRET), "plaintext in the agent log");
}
