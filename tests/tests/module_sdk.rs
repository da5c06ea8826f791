//! `module-sdk` against a real redis-server and real module-agents: the command called from steps.
//!
//! Build the binaries first: `cargo build --workspace --bins`. Channel and key names are written out
//! literally here on purpose: they are the protocol v1 contract of SYSTEM.md, which these tests check.

use std::collections::HashMap;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use agent_tests::redis;
use agent_tests::{
    bin, hgetall, stream, wait_for, wait_run_end, xadd, Agent, EventDirs, RedisServer,
};
use core_events::record::{QUEUE_FIELD_DATA, QUEUE_FIELD_EVENT, QUEUE_FIELD_ID};
use core_events::Progress;

/// Generous: a slow 2-core machine runs these tests in parallel.
const LONG: Duration = Duration::from_secs(60);

/// The module-sdk binary, single-quoted for a step script.
fn sdk() -> String {
    let p = bin("module-sdk").display().to_string();
    assert!(!p.contains('\''), "unexpected quote in {p}");
    format!("'{p}'")
}

fn quoted(p: &Path) -> String {
    let s = p.display().to_string();
    assert!(!s.contains('\''), "unexpected quote in {s}");
    format!("'{s}'")
}

/// `XADD <queue> * event E data D id RUN`.
fn queue_event(con: &mut redis::Connection, queue: &str, event: &str, data: &str, run: &str) {
    xadd(
        con,
        queue,
        &[
            (QUEUE_FIELD_EVENT, event),
            (QUEUE_FIELD_DATA, data),
            (QUEUE_FIELD_ID, run),
        ],
    );
}

/// Waits for a run to end and asserts it succeeded, showing its output otherwise.
fn assert_run_done(
    con: &mut redis::Connection,
    prefix: &str,
    run: &str,
) -> HashMap<String, String> {
    let rec = wait_run_end(con, &format!("{prefix}/run/{run}"), LONG);
    let output: Option<String> = redis::cmd("GET")
        .arg(format!("{prefix}/run/{run}/output"))
        .query(con)
        .unwrap();
    assert_eq!(
        rec.get("status").map(String::as_str),
        Some("done"),
        "run {run}: {rec:?}\noutput:\n{}\njournal: {:?}",
        output.unwrap_or_default(),
        stream(con, &format!("{prefix}/journal"))
    );
    rec
}

/// Waits until `channel` (or pattern, with `pattern`) has a subscriber, so nothing published later
/// can be missed.
fn wait_subscribed(redis: &RedisServer, channel: &str, pattern: bool) {
    let mut con = redis.conn();
    wait_for(&format!("subscription to {channel}"), LONG, || {
        if pattern {
            let n: i64 = redis::cmd("PUBSUB").arg("NUMPAT").query(&mut con).ok()?;
            (n >= 1).then_some(())
        } else {
            let v: Vec<(String, i64)> = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(channel)
                .query(&mut con)
                .ok()?;
            (v.first()?.1 >= 1).then_some(())
        }
    });
}

/// Reads pub/sub messages until `pick` accepts one; panics with everything seen after `LONG`.
fn receive<T>(
    ps: &mut redis::PubSub<'_>,
    what: &str,
    mut pick: impl FnMut(&redis::Msg) -> Option<T>,
) -> T {
    ps.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let deadline = Instant::now() + LONG;
    let mut seen = Vec::new();
    loop {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; received: {seen:?}"
        );
        match ps.get_message() {
            Ok(msg) => {
                if let Some(v) = pick(&msg) {
                    return v;
                }
                seen.push((
                    msg.get_channel_name().to_string(),
                    String::from_utf8_lossy(msg.get_payload_bytes()).into_owned(),
                ));
            }
            Err(e) if e.is_timeout() => continue,
            Err(e) => panic!("pub/sub connection failed while waiting for {what}: {e}"),
        }
    }
}

/// Waits until a step has written `path` (non-empty) and returns its content.
fn wait_file(path: &Path) -> String {
    wait_for(&format!("{} to be written", path.display()), LONG, || {
        std::fs::read_to_string(path).ok().filter(|s| !s.is_empty())
    })
}

/// Runs module-sdk outside any agent with exactly `env` as its environment (plus PATH).
fn run_sdk(env: &[(&str, &str)], args: &[&str], stdin: Option<&str>) -> Output {
    agent_tests::run_clean("module-sdk", env, args, stdin.map(str::as_bytes))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn progress_from_a_step_reaches_a_subscriber() {
    let redis = RedisServer::start();
    let dirs = EventDirs::new(1);
    dirs.step(
        0,
        "work",
        "10half",
        &format!("{} progress 50 halfway", sdk()),
    );
    let _agent = Agent::module(&redis, "mod0", &dirs, &[]);

    let run = "progress-run-1";
    let channel = format!("progress/mod0/{run}");
    let mut sub = redis.conn();
    let mut ps = sub.as_pubsub();
    ps.subscribe(&channel).unwrap();
    wait_subscribed(&redis, &channel, false);

    let mut con = redis.conn();
    queue_event(&mut con, "module/mod0/queue", "work", "", run);
    let report = receive(&mut ps, "a progress report with percent 50", |msg| {
        let p: Progress = serde_json::from_slice(msg.get_payload_bytes()).ok()?;
        (p.percent == Some(50)).then_some(p)
    });
    assert_eq!(report.run, run);
    assert_eq!(report.message.as_deref(), Some("halfway"));
    assert_eq!(report.step.as_deref(), Some("10half"));
    assert_run_done(&mut con, "module/mod0", run);
}

#[test]
fn env_set_in_a_step_is_seen_by_later_runs() {
    let redis = RedisServer::start();
    let dirs = EventDirs::new(1);
    let work = dirs.work();
    let sdk = sdk();
    dirs.step(0, "setenv", "10set", &format!("{sdk} env set FOO bar"));
    dirs.step(
        0,
        "showenv",
        "10show",
        &format!(
            "printf '%s' \"$FOO\" > {foo}\n\
             {sdk} env get FOO > {got}\n\
             {sdk} env get NOT_SET_ANYWHERE; echo $? > {rc}",
            foo = quoted(&work.join("foo")),
            got = quoted(&work.join("got")),
            rc = quoted(&work.join("rc")),
        ),
    );
    let _agent = Agent::module(&redis, "mod0", &dirs, &[]);
    let mut con = redis.conn();

    queue_event(&mut con, "module/mod0/queue", "setenv", "", "set-1");
    assert_run_done(&mut con, "module/mod0", "set-1");
    let foo: Option<String> = redis::cmd("HGET")
        .arg("module/mod0/module.env")
        .arg("FOO")
        .query(&mut con)
        .unwrap();
    assert_eq!(foo.as_deref(), Some("bar"));

    queue_event(&mut con, "module/mod0/queue", "showenv", "", "show-1");
    assert_run_done(&mut con, "module/mod0", "show-1");
    assert_eq!(std::fs::read_to_string(work.join("foo")).unwrap(), "bar");
    assert_eq!(std::fs::read_to_string(work.join("got")).unwrap(), "bar\n");
    assert_eq!(
        std::fs::read_to_string(work.join("rc")).unwrap().trim(),
        "1"
    );
}

#[test]
fn emit_from_a_step_reaches_a_pattern_subscriber() {
    let redis = RedisServer::start();
    let dirs = EventDirs::new(1);
    let work = dirs.work();
    dirs.step(
        0,
        "backup",
        "90done",
        &format!(
            "{} -v emit backup-done '{{\"size\":1024}}' > {}",
            sdk(),
            quoted(&work.join("receivers"))
        ),
    );
    let _agent = Agent::module(&redis, "mod0", &dirs, &[]);

    let mut sub = redis.conn();
    let mut ps = sub.as_pubsub();
    ps.psubscribe("event/mod0/*").unwrap();
    wait_subscribed(&redis, "event/mod0/*", true);

    let mut con = redis.conn();
    queue_event(&mut con, "module/mod0/queue", "backup", "", "backup-1");
    let (channel, payload) = receive(&mut ps, "the emitted event", |msg| {
        Some((
            msg.get_channel_name().to_string(),
            text(msg.get_payload_bytes()),
        ))
    });
    assert_eq!(channel, "event/mod0/backup-done");
    let json: serde_json::Value = serde_json::from_str(&payload).unwrap();
    assert_eq!(json, serde_json::json!({"size": 1024}));
    assert_run_done(&mut con, "module/mod0", "backup-1");
    // In a step the event is handed to the agent, which publishes it: the step learns no
    // receiver count (that is for `emit` outside a step).
    assert_eq!(std::fs::read_to_string(work.join("receivers")).unwrap(), "");
}

#[test]
fn queue_from_a_step_of_one_agent_runs_on_another() {
    let redis = RedisServer::start();
    let (dirs_a, dirs_b) = (EventDirs::new(1), EventDirs::new(1));
    let work = dirs_a.work();
    let id_file = work.join("id");
    let got_file = work.join("got");
    dirs_a.step(
        0,
        "kick",
        "10queue",
        &format!(
            "{} queue module/modb ping hello > {}",
            sdk(),
            quoted(&id_file)
        ),
    );
    dirs_b.step(
        0,
        "ping",
        "10record",
        &format!(
            "printf '%s|%s|%s' \"$1\" \"$(cat)\" \"$AGENT_NAME\" > {}",
            quoted(&got_file)
        ),
    );
    let _a = Agent::module(&redis, "moda", &dirs_a, &[]);
    let _b = Agent::module(&redis, "modb", &dirs_b, &[]);
    let mut con = redis.conn();

    queue_event(&mut con, "module/moda/queue", "kick", "", "kick-1");
    assert_run_done(&mut con, "module/moda", "kick-1");
    let run = wait_file(&id_file).trim().to_string();
    let rec = assert_run_done(&mut con, "module/modb", &run);
    assert_eq!(rec.get("event").map(String::as_str), Some("ping"));
    assert_eq!(rec.get("data").map(String::as_str), Some("hello"));
    assert_eq!(wait_file(&got_file), "hello|hello|modb");
}

#[test]
fn context_from_a_step_masks_the_redis_password() {
    let redis =
        RedisServer::start_with(&["--user", "mod0", "on", ">s3cret-pw", "~*", "&*", "+@all"]);
    let url = format!("redis://mod0:s3cret-pw@127.0.0.1:{}", redis.port());
    let dirs = EventDirs::new(1);
    let ctx_file = dirs.work().join("ctx.json");
    dirs.step(
        0,
        "show",
        "10ctx",
        &format!("{} context > {}", sdk(), quoted(&ctx_file)),
    );
    let _agent = Agent::start("module-agent", &url, "mod0", &dirs.dirs(), &[]);
    let mut con = redis.conn();

    queue_event(&mut con, "module/mod0/queue", "show", "", "ctx-1");
    assert_run_done(&mut con, "module/mod0", "ctx-1");
    let raw = std::fs::read_to_string(&ctx_file).unwrap();
    assert!(!raw.contains("s3cret-pw"), "password leaked: {raw}");
    let ctx: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(
        ctx["redis_url"],
        format!("redis://mod0:***@127.0.0.1:{}", redis.port())
    );
    assert_eq!(ctx["agent"], "mod0");
    assert_eq!(ctx["kind"], "module");
    assert_eq!(ctx["key_prefix"], "module/mod0");
    assert_eq!(ctx["event"], "show");
    assert_eq!(ctx["run"], "ctx-1");
    assert_eq!(ctx["step"], "10ctx");
    assert_eq!(ctx["attempt"], 1);
    assert_eq!(ctx["keys"]["module_env"], "module/mod0/module.env");
}

#[test]
fn progress_outside_a_step_names_the_missing_variable() {
    let out = run_sdk(&[], &["progress", "10"], None);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(err.contains("AGENT_RUN_ID"), "{err}");
}

#[test]
fn progress_never_fails_when_redis_is_unreachable() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://127.0.0.1:{closed}");
    let env = [
        ("AGENT_NAME", "mod0"),
        ("AGENT_KIND", "module"),
        ("AGENT_EVENT", "work"),
        ("AGENT_RUN_ID", "r1"),
        ("AGENT_STEP", "10x"),
        ("REDIS_URL", url.as_str()),
    ];
    let out = run_sdk(&env, &["progress", "10", "still", "going"], None);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("warning") && err.contains("progress not reported"),
        "{err}"
    );

    let out = run_sdk(&env, &["progress", "101"], None);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let out = run_sdk(&env, &["env", "get", "FOO"], None);
    assert_eq!(out.status.code(), Some(69), "{}", text(&out.stderr));
}

/// The commands by hand, as a module author trying them out: real Redis, no agent.
#[test]
fn env_emit_and_queue_by_hand() {
    let redis = RedisServer::start();
    let url = redis.url();
    let env = [
        ("AGENT_NAME", "mod0"),
        ("AGENT_KIND", "module"),
        ("REDIS_URL", url.as_str()),
    ];
    let mut con = redis.conn();
    let ok = |out: &Output| {
        assert!(
            out.status.success(),
            "{:?}: {}",
            out.status,
            text(&out.stderr)
        );
        text(&out.stdout)
    };

    ok(&run_sdk(
        &env,
        &["env", "set", "MULTI", "-"],
        Some("line1\nline2\n"),
    ));
    ok(&run_sdk(&env, &["env", "set", "B", "-dashed"], None));
    assert_eq!(
        ok(&run_sdk(&env, &["env", "get", "MULTI"], None)),
        "line1\nline2\n"
    );
    assert_eq!(
        hgetall(&mut con, "module/mod0/module.env"),
        HashMap::from([
            ("MULTI".into(), "line1\nline2".into()),
            ("B".into(), "-dashed".into())
        ])
    );
    let listed: HashMap<String, String> =
        serde_json::from_str(&ok(&run_sdk(&env, &["env", "list", "--json"], None))).unwrap();
    assert_eq!(listed.get("B").map(String::as_str), Some("-dashed"));
    ok(&run_sdk(&env, &["env", "rm", "MULTI"], None));
    ok(&run_sdk(&env, &["env", "rm", "MULTI"], None));
    assert_eq!(ok(&run_sdk(&env, &["env", "list"], None)), "B=-dashed\n");

    let missing = run_sdk(&env, &["env", "get", "MULTI"], None);
    assert_eq!(missing.status.code(), Some(1));
    assert!(text(&missing.stderr).contains("MULTI is not set in module/mod0/module.env"));

    // Another module's env: readable with only REDIS_URL, never writable.
    let _: () = redis::cmd("HSET")
        .arg("module/other0/module.env")
        .arg("X")
        .arg("1")
        .query(&mut con)
        .unwrap();
    let only_url = [("REDIS_URL", url.as_str())];
    assert_eq!(
        ok(&run_sdk(
            &only_url,
            &["env", "get", "X", "--module", "other0"],
            None
        )),
        "1\n"
    );
    let refused = run_sdk(&env, &["env", "--module", "other0", "set", "X", "2"], None);
    assert_eq!(refused.status.code(), Some(2));
    assert!(text(&refused.stderr).contains("read-only"));

    // Usage errors.
    for (args, needle) in [
        (&["env", "set", "BAD-KEY", "x"][..], "valid variable name"),
        (
            &["env", "set", "AGENT_RUN_ID", "x"],
            "the agent keeps for itself",
        ),
        // Not set by the agent today, but exported by no agent either: refused the same way.
        (
            &["env", "set", "AGENT_X", "x"],
            "the agent keeps for itself",
        ),
        (&["emit", "done", "{not json"], "must be JSON"),
        (&["queue", "modb", "ping"], "node/NAME or module/NAME"),
    ] {
        let out = run_sdk(&env, args, None);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            text(&out.stderr).contains(needle),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    let node_env = [
        ("AGENT_NAME", "node1"),
        ("AGENT_KIND", "node"),
        ("REDIS_URL", url.as_str()),
    ];
    let out = run_sdk(&node_env, &["env", "list"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--module"),
        "{}",
        text(&out.stderr)
    );

    // emit with no listener is fine; -v prints 0 receivers.
    assert_eq!(ok(&run_sdk(&env, &["-v", "emit", "done"], None)), "0\n");

    // queue: a stream id by default, the given id with --id; fields as the protocol says.
    let id = ok(&run_sdk(
        &only_url,
        &["queue", "node/node1", "module.update", "-"],
        Some("mod0\n"),
    ));
    let id = id.trim();
    let entries = stream(&mut con, "node/node1/queue");
    assert_eq!(entries.len(), 1);
    assert_eq!(
        entries[0].get("event").map(String::as_str),
        Some("module.update")
    );
    assert_eq!(entries[0].get("data").map(String::as_str), Some("mod0"));
    assert!(!entries[0].contains_key("id"));
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg("node/node1/queue")
        .arg("-")
        .arg("+")
        .query(&mut con)
        .unwrap();
    assert_eq!(reply.ids[0].id, id);
    let given = ok(&run_sdk(
        &only_url,
        &["queue", "--id", "my-run", "module/modb", "ping"],
        None,
    ));
    assert_eq!(given, "my-run\n");
    let entries = stream(&mut con, "module/modb/queue");
    assert_eq!(entries[0].get("id").map(String::as_str), Some("my-run"));
    assert_eq!(entries[0].get("data").map(String::as_str), Some(""));
}

/// Under the security model a module's Redis user may write only its own keys: a refused write is
/// exit code 77 with Redis's reason, and the password never shows.
#[test]
fn refused_writes_say_so() {
    let redis = RedisServer::start_with(&[
        "--user",
        "moda",
        "on",
        ">s3cret-pw",
        "~module/moda/*",
        "&*",
        "+@all",
    ]);
    let url = format!("redis://moda:s3cret-pw@127.0.0.1:{}", redis.port());
    let env = [
        ("AGENT_NAME", "moda"),
        ("AGENT_KIND", "module"),
        ("REDIS_URL", url.as_str()),
    ];
    let own = run_sdk(&env, &["env", "set", "A", "1"], None);
    assert!(own.status.success(), "{}", text(&own.stderr));
    let out = run_sdk(&env, &["queue", "node/node1", "ping"], None);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(77), "{err}");
    assert!(
        err.contains("no permissions") && err.contains("node/node1/queue"),
        "{err}"
    );
    assert!(!err.contains("s3cret-pw"), "{err}");

    let bad_pw = url.replace("s3cret-pw", "wrong-pw");
    let env = [("REDIS_URL", bad_pw.as_str())];
    let out = run_sdk(&env, &["queue", "module/moda", "ping"], None);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(77), "{err}");
    assert!(
        !err.contains("wrong-pw") && err.contains("moda:***@") && err.contains("check the user"),
        "{err}"
    );
}
