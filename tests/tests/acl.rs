//! The Redis ACL of the security model against a real redis-server, the real `agentctl redis`
//! commands and real agents running as their own ACL users.
//!
//! Each test starts Redis with an empty aclfile in a temp dir, so `agentctl redis setup` can save
//! the users and the test can reach the server as the admin with the credentials file setup wrote.
//! Passwords are read from those files and never printed: no assertion message shows one.
//! Build the binaries first: `cargo build --workspace --bins`.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agent_tests::redis;
use agent_tests::{
    bin, hgetall, stream, wait_for, wait_run_end, Agent, EventDirs, RedisServer, Run,
};

/// Generous: a slow 2-core machine runs these tests in parallel.
const LONG: Duration = Duration::from_secs(90);

/// A redis-server whose users live in an (initially empty) aclfile, plus a directory for
/// credentials files.
struct Cluster {
    redis: RedisServer,
    dir: tempfile::TempDir,
}

impl Cluster {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let aclfile = dir.path().join("users.acl");
        std::fs::write(&aclfile, "").unwrap();
        let redis = RedisServer::start_with(&["--aclfile", aclfile.to_str().unwrap()]);
        Cluster { redis, dir }
    }

    fn creds_dir(&self) -> PathBuf {
        self.dir.path().join("etc-agent")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `agentctl redis setup` with the node `n1` and `extra` arguments.
    fn setup(&self, extra: &[&str]) -> String {
        let creds_dir = self.creds_dir();
        let mut args = vec![
            "redis",
            "setup",
            "--node",
            "n1",
            "--creds-dir",
            creds_dir.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        self.ctl_ok(&args)
    }

    fn admin_creds(&self) -> Creds {
        Creds::read(&self.creds_dir().join("admin.env"))
    }

    /// Runs `agentctl --redis-url URL ARGS…` as the admin; fails the test unless it succeeds and
    /// printed no password. Returns stdout + stderr.
    fn ctl_ok(&self, args: &[&str]) -> String {
        let out = agentctl(&self.redis.url(), args);
        assert!(out.ok, "agentctl {args:?} failed:\n{}", out.text);
        for f in std::fs::read_dir(self.dir.path()).unwrap().flatten() {
            for f in [
                f.path(),
                f.path().join("admin.env"),
                f.path().join("redis.env"),
            ] {
                if let Ok(c) = agent_redis::Credentials::from_file(&f) {
                    assert!(
                        !out.text.contains(c.password.expose()),
                        "agentctl {args:?} printed a password"
                    );
                }
            }
        }
        out.text
    }

    /// `agentctl redis add-agent module/ID --creds DIR/ID.env`, as the admin.
    fn add_module(&self, id: &str) -> Creds {
        let creds = self.path(&format!("{id}.env"));
        let admin = self.creds_dir().join("admin.env");
        self.ctl_ok(&[
            "--redis-credentials",
            admin.to_str().unwrap(),
            "redis",
            "add-agent",
            &format!("module/{id}"),
            "--creds",
            creds.to_str().unwrap(),
        ]);
        Creds::read(&creds)
    }

    fn conn_as(&self, c: &Creds) -> redis::Connection {
        self.try_conn_as(c).expect("authenticates")
    }

    fn try_conn_as(&self, c: &Creds) -> redis::RedisResult<redis::Connection> {
        redis::Client::open(c.url(self.redis.port()))?.get_connection()
    }

    fn admin(&self) -> redis::Connection {
        self.conn_as(&self.admin_creds())
    }
}

/// A user and password from a credentials file. No `Debug`: it must never be printed.
struct Creds {
    user: String,
    pass: String,
}

impl Creds {
    /// Read the way the agents read it.
    fn read(path: &Path) -> Self {
        let c = agent_redis::Credentials::from_file(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Creds {
            user: c.username.expect("a named user"),
            pass: c.password.expose().to_string(),
        }
    }

    fn url(&self, port: u16) -> String {
        // Generated passwords are hex and user names plain words: nothing to escape.
        format!("redis://{}:{}@127.0.0.1:{port}", self.user, self.pass)
    }
}

struct CtlOut {
    ok: bool,
    text: String,
}

/// Runs agentctl with a clean environment (no REDIS_URL or credentials from the caller).
fn agentctl(url: &str, args: &[&str]) -> CtlOut {
    let out = Run::agentctl(url).args(args).timeout(LONG).output();
    CtlOut {
        ok: out.success(),
        text: format!("{}{}", out.stdout, out.stderr),
    }
}

fn cmd(args: &[&str]) -> redis::Cmd {
    let mut c = redis::cmd(args[0]);
    for a in &args[1..] {
        c.arg(*a);
    }
    c
}

/// Asserts that `args` is refused for lack of permission (NOPERM, or the script form of it).
fn refused(con: &mut redis::Connection, args: &[&str]) {
    match cmd(args).query::<redis::Value>(con) {
        Ok(v) => panic!("{args:?} was allowed: {v:?}"),
        Err(e) => {
            let text = e.to_string();
            assert!(
                e.code() == Some("NOPERM") || text.contains("The user executing the script can't"),
                "{args:?}: expected a permission error, got {text}"
            );
        }
    }
}

/// `ACL DRYRUN user args…` as the admin: `None` when allowed, else Redis's reason.
fn dryrun(admin: &mut redis::Connection, user: &str, args: &[&str]) -> Option<String> {
    let reply: String = redis::cmd("ACL")
        .arg("DRYRUN")
        .arg(user)
        .arg(args)
        .query(admin)
        .unwrap_or_else(|e| panic!("ACL DRYRUN {user} {args:?}: {e}"));
    (reply != "OK").then_some(reply)
}

fn snapshot(admin: &mut redis::Connection, hashes: &[&str], streams: &[&str]) -> String {
    let mut out = String::new();
    for h in hashes {
        out.push_str(&format!("{h}={:?}\n", sorted(hgetall(admin, h))));
    }
    for s in streams {
        let entries: Vec<_> = stream(admin, s).into_iter().map(sorted).collect();
        let pending: redis::Value = redis::cmd("XPENDING")
            .arg(s)
            .arg("agent")
            .query(admin)
            .unwrap();
        out.push_str(&format!("{s}={entries:?} pending={pending:?}\n"));
    }
    out
}

fn sorted(m: HashMap<String, String>) -> Vec<(String, String)> {
    let mut v: Vec<_> = m.into_iter().collect();
    v.sort();
    v
}

fn quoted(p: &Path) -> String {
    let s = p.display().to_string();
    assert!(!s.contains('\''), "unexpected quote in {s}");
    format!("'{s}'")
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Connections named `agent:<name>` in `CLIENT LIST`, with their user.
fn agent_connection_users(admin: &mut redis::Connection, name: &str) -> Vec<String> {
    let list: String = redis::cmd("CLIENT").arg("LIST").query(admin).unwrap();
    let want = format!("name=agent:{name}");
    list.lines()
        .filter(|l| l.split(' ').any(|f| f == want))
        .map(|l| {
            l.split(' ')
                .find_map(|f| f.strip_prefix("user="))
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

#[test]
fn a_module_user_writes_only_its_own_keys_and_channels() {
    let c = Cluster::start();
    let out = c.setup(&[]);
    assert!(out.contains("ACL saved"), "{out}");
    let a = c.add_module("moda");
    let _b = c.add_module("modb");
    assert_eq!(a.user, "module-moda");
    assert_eq!(mode(&c.path("moda.env")), 0o600);
    let mut admin = c.admin();

    // Another module's data, with a consumer group and one pending entry like a running agent's.
    let _: () = cmd(&["HSET", "module/modb/x", "f", "orig"])
        .query(&mut admin)
        .unwrap();
    let _: () = cmd(&["HSET", "module/modb/module.env", "K", "v"])
        .query(&mut admin)
        .unwrap();
    let _: () = cmd(&[
        "XGROUP",
        "CREATE",
        "module/modb/queue",
        "agent",
        "0",
        "MKSTREAM",
    ])
    .query(&mut admin)
    .unwrap();
    for data in ["one", "two"] {
        let _: String = cmd(&["XADD", "module/modb/queue", "*", "event", "e", "data", data])
            .query(&mut admin)
            .unwrap();
    }
    let _: redis::Value = cmd(&[
        "XREADGROUP",
        "GROUP",
        "agent",
        "modb",
        "COUNT",
        "1",
        "STREAMS",
        "module/modb/queue",
        ">",
    ])
    .query(&mut admin)
    .unwrap();
    let hashes = ["module/modb/x", "module/modb/module.env"];
    let streams = ["module/modb/queue"];
    let before = snapshot(&mut admin, &hashes, &streams);

    let mut ma = c.conn_as(&a);
    for denied in [
        &["HSET", "module/modb/x", "f", "evil"][..],
        &["HSET", "module/modb/module.env", "K", "evil"],
        &["DEL", "module/modb/x"],
        &[
            "XADD",
            "module/modb/queue",
            "*",
            "event",
            "evil",
            "data",
            "x",
        ],
        // Taking another agent's entries into one's own pending list.
        &[
            "XREADGROUP",
            "GROUP",
            "agent",
            "moda",
            "COUNT",
            "10",
            "STREAMS",
            "module/modb/queue",
            ">",
        ],
        &[
            "XREADGROUP",
            "GROUP",
            "agent",
            "modb",
            "STREAMS",
            "module/modb/queue",
            "0",
        ],
        &["XACK", "module/modb/queue", "agent", "0-1"],
        &["XGROUP", "DESTROY", "module/modb/queue", "agent"],
        &["HSET", "node/n1/x", "f", "evil"],
        &["SET", "other", "evil"],
        &[
            "EVAL",
            "return redis.call('HSET', KEYS[1], 'f', 'evil')",
            "1",
            "module/modb/x",
        ],
        &[
            "EVAL",
            "return redis.call('HSET', 'module/modb/x', 'f', 'evil')",
            "0",
        ],
        &["PUBLISH", "progress/modb/r1", "{}"],
        &["PUBLISH", "event/modb/e", "{}"],
        &["PUBLISH", "cancel/modb", "r1"],
        &["PUBLISH", "modb:configure", "x"],
        &["PUBLISH", "anything", "x"],
        &["SPUBLISH", "moda:x", "x"],
        &[
            "EVAL",
            "return redis.call('PUBLISH', 'cancel/modb', 'r1')",
            "0",
        ],
        &["ACL", "SETUSER", "module-moda", "~*"],
        &["ACL", "SETUSER", "module-modb", "off"],
        &["ACL", "DELUSER", "module-modb"],
        &["ACL", "LIST"],
        &["CONFIG", "GET", "*"],
        &["CONFIG", "SET", "maxmemory", "1"],
        &["FLUSHALL"],
        &["FLUSHDB"],
        &["KEYS", "*"],
        &["INFO"],
        &["CLIENT", "LIST"],
        &["FUNCTION", "FLUSH"],
        &["SCRIPT", "FLUSH"],
    ] {
        refused(&mut ma, denied);
    }
    assert_eq!(
        snapshot(&mut admin, &hashes, &streams),
        before,
        "a refused command changed data"
    );

    // What module A may do: its own keys and channels, reading everything, subscribing anywhere.
    let _: () = cmd(&["HSET", "module/moda/x", "f", "mine"])
        .query(&mut ma)
        .unwrap();
    assert_eq!(
        hgetall(&mut ma, "module/modb/x")
            .get("f")
            .map(String::as_str),
        Some("orig")
    );
    for ch in [
        "progress/moda/r1",
        "event/moda/e",
        "cancel/moda",
        "moda:configure",
    ] {
        let n: i64 = cmd(&["PUBLISH", ch, "x"]).query(&mut ma).unwrap();
        assert_eq!(n, 0, "{ch}");
    }
    let mut sub = c.conn_as(&a);
    let mut ps = sub.as_pubsub();
    ps.subscribe("cancel/modb").unwrap();
    ps.psubscribe("*").unwrap();
    drop(ps);

    // Every command the engine and module-sdk send, as ACL DRYRUN sees it for module-moda.
    let user = "module-moda";
    for allowed in [
        &["PING"][..],
        &["HELLO", "3"],
        &["CLIENT", "SETNAME", "agent:moda"],
        &["SELECT", "0"],
        &["MULTI"],
        &["EXEC"],
        &["HGETALL", "module/moda/run/r1"],
        &["HGETALL", "module/modb/module.env"],
        &["HGET", "module/modb/module.env", "K"],
        &["HSET", "module/moda/run/r1", "status", "running"],
        &["HSET", "module/moda/module.env", "K", "v"],
        &["HDEL", "module/moda/module.env", "K"],
        &["DEL", "module/moda/run/r1", "module/moda/run/r1/output"],
        &["EXPIRE", "module/moda/run/r1", "60"],
        &["APPEND", "module/moda/run/r1/output", "x"],
        &["SET", "module/moda/heartbeat", "{}", "EX", "15"],
        &["SET", "module/moda/startup", "x", "NX"],
        &["GET", "module/modb/heartbeat"],
        &[
            "XGROUP",
            "CREATE",
            "module/moda/queue",
            "agent",
            "0",
            "MKSTREAM",
        ],
        &["XADD", "module/moda/queue", "*", "event", "e", "data", "d"],
        &[
            "XADD",
            "module/moda/journal",
            "MAXLEN",
            "~",
            "10000",
            "*",
            "run",
            "r1",
        ],
        &[
            "XREADGROUP",
            "GROUP",
            "agent",
            "moda",
            "COUNT",
            "1",
            "BLOCK",
            "5000",
            "STREAMS",
            "module/moda/queue",
            ">",
        ],
        &["XACK", "module/moda/queue", "agent", "1-0"],
        &["XDEL", "module/moda/queue", "1-0"],
        &["XRANGE", "module/moda/queue", "-", "+"],
        &["XRANGE", "node/n1/journal", "-", "+"],
        &["XLEN", "module/moda/queue"],
        &[
            "EVALSHA",
            "0123456789012345678901234567890123456789",
            "2",
            "module/moda/queue",
            "module/moda/journal",
        ],
        &["EVAL", "return 1", "1", "module/moda/queue"],
        &["SCRIPT", "LOAD", "return 1"],
        &["PUBLISH", "progress/moda/r1", "{}"],
        &["PUBLISH", "event/moda/backup-done", "{}"],
        &["PUBLISH", "cancel/moda", "r1"],
        &["PUBLISH", "moda:configure", "x"],
        &["PSUBSCRIBE", "moda:*"],
        &["PSUBSCRIBE", "event/*/backup-done"],
        &["SUBSCRIBE", "cancel/moda"],
        &["SUBSCRIBE", "progress/modb/r1"],
        &["SCAN", "0"],
    ] {
        assert_eq!(dryrun(&mut admin, user, allowed), None, "{allowed:?}");
    }
    for denied in [
        &["HSET", "module/modb/x", "f", "v"][..],
        &["XADD", "module/modb/queue", "*", "event", "e"],
        &[
            "XREADGROUP",
            "GROUP",
            "agent",
            "moda",
            "STREAMS",
            "module/modb/queue",
            ">",
        ],
        &[
            "EVALSHA",
            "0123456789012345678901234567890123456789",
            "1",
            "module/modb/queue",
        ],
        &["PUBLISH", "progress/modb/r1", "{}"],
        &["PUBLISH", "event/modb/e", "{}"],
        &["PUBLISH", "cancel/modb", "r1"],
        &["PUBLISH", "modb:e", "x"],
        &["PUBLISH", "cancel/moda2", "r1"],
        &["ACL", "SETUSER", "x"],
        &["ACL", "SAVE"],
        &["CONFIG", "GET", "aclfile"],
        &["SHUTDOWN"],
        &["DEBUG", "SLEEP", "0"],
        &["MONITOR"],
        &["SCRIPT", "KILL"],
        &["SCRIPT", "DEBUG", "SYNC"],
        &["FUNCTION", "LOAD", "x"],
        &["MEMORY", "PURGE"],
        &["SWAPDB", "0", "1"],
        &["REPLICAOF", "127.0.0.1", "1"],
    ] {
        assert!(
            dryrun(&mut admin, user, denied).is_some(),
            "{denied:?} is allowed"
        );
    }
}

#[test]
fn the_default_user_reads_but_never_writes_and_can_be_turned_off() {
    let c = Cluster::start();
    c.setup(&["--default", "readonly"]);
    let mut admin = c.admin();
    let _: () = cmd(&["HSET", "module/m/module.env", "K", "v"])
        .query(&mut admin)
        .unwrap();
    let _: String = cmd(&["XADD", "node/n1/queue", "*", "event", "e", "data", "d"])
        .query(&mut admin)
        .unwrap();
    let hashes = ["module/m/module.env"];
    let before = snapshot(&mut admin, &hashes, &[]);
    let queue_before = stream(&mut admin, "node/n1/queue").len();

    // No credentials: the default user.
    let mut anon = c.redis.conn();
    assert_eq!(
        hgetall(&mut anon, "module/m/module.env")
            .get("K")
            .map(String::as_str),
        Some("v")
    );
    assert_eq!(stream(&mut anon, "node/n1/queue").len(), 1);
    let _: redis::Value = cmd(&["XREAD", "COUNT", "1", "STREAMS", "node/n1/queue", "0"])
        .query(&mut anon)
        .unwrap();
    let _: Vec<(String, i64)> = cmd(&["PUBSUB", "NUMSUB", "cancel/n1"])
        .query(&mut anon)
        .unwrap();
    for denied in [
        &["HSET", "module/m/module.env", "K", "evil"][..],
        &["DEL", "module/m/module.env"],
        &["SET", "x", "y"],
        &["XADD", "node/n1/queue", "*", "event", "evil", "data", "x"],
        &["XGROUP", "CREATE", "node/n1/queue", "agent", "0"],
        &[
            "XREADGROUP",
            "GROUP",
            "agent",
            "x",
            "STREAMS",
            "node/n1/queue",
            ">",
        ],
        &["PUBLISH", "n1:module.init", "evil"],
        &["PUBLISH", "cancel/n1", "r1"],
        &["EVAL", "return 1", "0"],
        &["ACL", "SETUSER", "default", "+@all"],
        &["CONFIG", "SET", "aclfile", "/tmp/x"],
        &["FLUSHALL"],
        &["KEYS", "*"],
    ] {
        refused(&mut anon, denied);
    }
    assert_eq!(snapshot(&mut admin, &hashes, &[]), before);
    assert_eq!(stream(&mut admin, "node/n1/queue").len(), queue_before);
    let mut sub = c.redis.conn();
    let mut ps = sub.as_pubsub();
    ps.subscribe("cancel/n1").unwrap();
    ps.psubscribe("progress/*").unwrap();
    drop(ps);

    // Run again with `--default off`: it finds the admin's file in the credentials directory, keeps
    // every password, and now a client must authenticate.
    let admin_before = std::fs::read_to_string(c.creds_dir().join("admin.env")).unwrap();
    let out = c.setup(&["--default", "off"]);
    assert!(
        out.contains("admin user agent-admin: password kept"),
        "{out}"
    );
    assert!(out.contains("node user node-n1: password kept"), "{out}");
    assert!(out.contains("default user: disabled"), "{out}");
    assert_eq!(
        std::fs::read_to_string(c.creds_dir().join("admin.env")).unwrap(),
        admin_before
    );
    assert_eq!(mode(&c.creds_dir().join("admin.env")), 0o600);
    assert_eq!(mode(&c.creds_dir().join("redis.env")), 0o600);
    let mut fresh = redis::Client::open(c.redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let err = cmd(&["GET", "x"])
        .query::<redis::Value>(&mut fresh)
        .unwrap_err();
    assert_eq!(err.code(), Some("NOAUTH"), "{err}");
    let mut admin = c.admin();
    let _: String = cmd(&["PING"]).query(&mut admin).unwrap();

    // The aclfile holds the users and their selectors, so a restarted Redis still knows them.
    c.add_module("moda");
    let mut c = c;
    c.redis.restart();
    let mut admin = c.admin();
    let users: Vec<String> = cmd(&["ACL", "USERS"]).query(&mut admin).unwrap();
    for u in ["agent-admin", "default", "module-moda", "node-n1"] {
        assert!(users.iter().any(|x| x == u), "{u} missing from {users:?}");
    }
    let ok = ["PUBLISH", "progress/moda/r1", "{}"];
    assert_eq!(dryrun(&mut admin, "module-moda", &ok), None);
    let bad = [
        "XREADGROUP",
        "GROUP",
        "agent",
        "moda",
        "STREAMS",
        "node/n1/queue",
        ">",
    ];
    assert!(dryrun(&mut admin, "module-moda", &bad).is_some());
}

/// A credentials directory that outlived its Redis (a reinstalled server): setup connects without
/// the refused admin file and makes the file's password the admin's again.
#[test]
fn setup_on_a_fresh_server_keeps_an_existing_admin_file() {
    let c = Cluster::start();
    std::fs::create_dir_all(c.creds_dir()).unwrap();
    let stale = "REDIS_USER=agent-admin\nREDIS_PASSWORD=0123456789abcdef0123456789abcdef\n";
    std::fs::write(c.creds_dir().join("admin.env"), stale).unwrap();
    let out = c.setup(&[]);
    assert!(out.contains("Redis refused the credentials"), "{out}");
    assert!(
        out.contains("admin user agent-admin: password kept"),
        "{out}"
    );
    let mut admin = c.admin();
    let _: String = cmd(&["PING"]).query(&mut admin).unwrap();
    assert_eq!(mode(&c.creds_dir().join("admin.env")), 0o600);
}

#[test]
fn a_module_agent_runs_end_to_end_as_its_own_user() {
    let c = Cluster::start();
    c.setup(&[]);
    let a = c.add_module("moda");
    let sdk = quoted(&bin("module-sdk"));
    let dirs = EventDirs::new(1);
    dirs.step(
        0,
        "configure",
        "10configure",
        &format!(
            "set -e\n{sdk} env set GREETING \"hello $1\"\n{sdk} progress 50 halfway\necho \"configured $1\""
        ),
    );
    let creds = c.path("moda.env");
    let _agent = Agent::start(
        "module-agent",
        &c.redis.url(),
        "moda",
        &dirs.dirs(),
        &["--redis-credentials", creds.to_str().unwrap()],
    );
    let mut admin = c.admin();
    let users = agent_connection_users(&mut admin, "moda");
    assert!(
        !users.is_empty() && users.iter().all(|u| u == "module-moda"),
        "the agent's connections authenticate as module-moda: {users:?}"
    );

    // Progress is public: the default user subscribes.
    let mut sub = c.redis.conn();
    let mut ps = sub.as_pubsub();
    ps.psubscribe("progress/moda/*").unwrap();
    wait_for("the progress subscription", LONG, || {
        let n: i64 = cmd(&["PUBSUB", "NUMPAT"]).query(&mut admin).ok()?;
        (n >= 1).then_some(())
    });

    // The admin fires the event; so may the module itself, on its own event channel.
    let n: i64 = cmd(&["PUBLISH", "moda:configure", "world"])
        .query(&mut admin)
        .unwrap();
    assert_eq!(n, 1, "the agent listens on moda:*");
    let mut ma = c.conn_as(&a);
    let n: i64 = cmd(&["PUBLISH", "moda:configure", "again"])
        .query(&mut ma)
        .unwrap();
    assert_eq!(n, 1);

    // The step's own progress report arrives (module-sdk progress as module-moda).
    ps.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let end = Instant::now() + LONG;
    let mut runs = Vec::new();
    while runs.len() < 2 {
        assert!(Instant::now() < end, "no step progress: {runs:?}");
        let msg = match ps.get_message() {
            Ok(m) => m,
            Err(e) if e.is_timeout() => continue,
            Err(e) => panic!("subscription failed: {e}"),
        };
        let p: serde_json::Value = serde_json::from_slice(msg.get_payload_bytes()).unwrap();
        if p["percent"] == 50 && p["message"] == "halfway" {
            runs.push(p["run"].as_str().unwrap().to_string());
        }
    }
    for run in &runs {
        let rec = wait_run_end(&mut admin, &format!("module/moda/run/{run}"), LONG);
        let output: Option<String> = cmd(&["GET", &format!("module/moda/run/{run}/output")])
            .query(&mut admin)
            .unwrap();
        assert_eq!(
            rec.get("status").map(String::as_str),
            Some("done"),
            "{rec:?}\n{output:?}"
        );
        assert!(output.unwrap_or_default().contains("configured "));
        let journal = stream(&mut admin, "module/moda/journal");
        let states: Vec<&str> = journal
            .iter()
            .filter(|e| e.get("run") == Some(run))
            .filter_map(|e| e.get("status").map(String::as_str))
            .collect();
        assert!(
            states.contains(&"queued") && states.contains(&"running") && states.contains(&"done"),
            "{states:?}"
        );
    }
    // `module-sdk env set` wrote module.env; both entries left the queue, none is pending.
    let env = hgetall(&mut admin, "module/moda/module.env");
    assert!(
        env.get("GREETING").is_some_and(|g| g.starts_with("hello ")),
        "{env:?}"
    );
    let len: i64 = cmd(&["XLEN", "module/moda/queue"])
        .query(&mut admin)
        .unwrap();
    assert_eq!(len, 0);
    let pending: (i64, redis::Value, redis::Value, redis::Value) =
        cmd(&["XPENDING", "module/moda/queue", "agent"])
            .query(&mut admin)
            .unwrap();
    assert_eq!(pending.0, 0);
    let hb: bool = cmd(&["EXISTS", "module/moda/heartbeat"])
        .query(&mut admin)
        .unwrap();
    assert!(hb, "the heartbeat is written");
}

#[test]
fn rotating_a_password_keeps_queued_work_and_revokes_the_old_one() {
    let c = Cluster::start();
    c.setup(&[]);
    let old = c.add_module("moda");
    let dirs = EventDirs::new(1);
    let work = dirs.work();
    let gate = work.join("gate");
    let done = work.join("done");
    dirs.step(
        0,
        "work",
        "10work",
        &format!(
            "while [ ! -e {} ]; do sleep 0.05; done\necho \"$1\" >> {}",
            quoted(&gate),
            quoted(&done)
        ),
    );
    let creds = c.path("moda.env");
    let _agent = Agent::start(
        "module-agent",
        &c.redis.url(),
        "moda",
        &dirs.dirs(),
        &["--redis-credentials", creds.to_str().unwrap()],
    );
    let mut admin = c.admin();
    let runs: Vec<String> = (1..=5).map(|i| format!("r{i}")).collect();
    for run in &runs {
        let _: String = cmd(&[
            "XADD",
            "module/moda/queue",
            "*",
            "event",
            "work",
            "data",
            run,
            "id",
            run,
        ])
        .query(&mut admin)
        .unwrap();
    }
    // The first run is held at the gate; the others wait in the queue.
    wait_for("run r1 to start", LONG, || {
        let r = hgetall(&mut admin, "module/moda/run/r1");
        (r.get("status").map(String::as_str) == Some("running")).then_some(())
    });

    let out = c.ctl_ok(&[
        "--redis-credentials",
        c.creds_dir().join("admin.env").to_str().unwrap(),
        "redis",
        "rotate",
        "module/moda",
        "--creds",
        creds.to_str().unwrap(),
    ]);
    assert!(out.contains("module-moda: new password"), "{out}");
    let new = Creds::read(&creds);
    assert_eq!(new.user, "module-moda");
    assert!(new.pass != old.pass, "the password changed");
    assert_eq!(mode(&creds), 0o600);
    let len: i64 = cmd(&["XLEN", "module/moda/queue"])
        .query(&mut admin)
        .unwrap();
    assert_eq!(len, 5, "all entries are still queued");

    // The old password is refused, the new one accepted.
    match c.try_conn_as(&old) {
        Ok(_) => panic!("the old password still authenticates"),
        Err(e) => assert!(
            e.code() == Some("WRONGPASS") || e.kind() == redis::ErrorKind::AuthenticationFailed,
            "unexpected error: {e}"
        ),
    }
    let mut ma = c.conn_as(&new);
    let _: () = cmd(&["HSET", "module/moda/x", "f", "v"])
        .query(&mut ma)
        .unwrap();

    // The running agent kept its connections: every queued run completes, and a PUBLISH still
    // reaches it.
    std::fs::write(&gate, "").unwrap();
    for run in &runs {
        let rec = wait_run_end(&mut admin, &format!("module/moda/run/{run}"), LONG);
        assert_eq!(
            rec.get("status").map(String::as_str),
            Some("done"),
            "{run}: {rec:?}"
        );
    }
    let n: i64 = cmd(&["PUBLISH", "moda:work", "published-after-rotation"])
        .query(&mut admin)
        .unwrap();
    assert_eq!(n, 1);
    wait_for("the published run", LONG, || {
        let text = std::fs::read_to_string(&done).ok()?;
        text.contains("published-after-rotation").then_some(())
    });
    let text = std::fs::read_to_string(&done).unwrap();
    for run in &runs {
        assert!(text.lines().any(|l| l == run), "{run} missing:\n{text}");
    }
    let users = agent_connection_users(&mut admin, "moda");
    assert!(
        !users.is_empty() && users.iter().all(|u| u == "module-moda"),
        "{users:?}"
    );
    wait_for("the queue to drain", LONG, || {
        let len: i64 = cmd(&["XLEN", "module/moda/queue"]).query(&mut admin).ok()?;
        (len == 0).then_some(())
    });
}

#[test]
fn a_node_agent_creates_module_users_and_writes_module_keys() {
    let c = Cluster::start();
    c.setup(&[]);
    let node_creds = c.creds_dir().join("redis.env");
    let node = Creds::read(&node_creds);
    assert_eq!(node.user, "node-n1");
    let dirs = EventDirs::new(1);
    let work = dirs.work();
    // What a module.init step does: create the module's user and credentials, then queue its
    // first event (a module key, not the node's own).
    dirs.step(
        0,
        "module.add",
        "10user",
        &format!(
            "set -e\n{} redis add-agent \"module/$1\" --creds {}/\"$1\".env\n\
             {} queue \"module/$1\" configure hello",
            quoted(&bin("agentctl")),
            quoted(&work),
            quoted(&bin("module-sdk")),
        ),
    );
    let _agent = Agent::start(
        "node-agent",
        &c.redis.url(),
        "n1",
        &dirs.dirs(),
        &["--redis-credentials", node_creds.to_str().unwrap()],
    );
    let mut admin = c.admin();
    let _: String = cmd(&[
        "XADD",
        "node/n1/queue",
        "*",
        "event",
        "module.add",
        "data",
        "m1",
        "id",
        "add-1",
    ])
    .query(&mut admin)
    .unwrap();
    let rec = wait_run_end(&mut admin, "node/n1/run/add-1", LONG);
    let output: Option<String> = cmd(&["GET", "node/n1/run/add-1/output"])
        .query(&mut admin)
        .unwrap();
    let output = output.unwrap_or_default();
    assert_eq!(
        rec.get("status").map(String::as_str),
        Some("done"),
        "{rec:?}\n{output}"
    );
    assert!(
        !output.contains(&node.pass),
        "a password reached the run output"
    );

    let users: Vec<String> = cmd(&["ACL", "USERS"]).query(&mut admin).unwrap();
    assert!(users.iter().any(|u| u == "module-m1"), "{users:?}");
    let m1 = Creds::read(&work.join("m1.env"));
    assert_eq!(m1.user, "module-m1");
    assert_eq!(mode(&work.join("m1.env")), 0o600);
    assert_eq!(stream(&mut admin, "module/m1/queue").len(), 1);
    let mut m1con = c.conn_as(&m1);
    let _: () = cmd(&["HSET", "module/m1/module.env", "A", "1"])
        .query(&mut m1con)
        .unwrap();

    // The node user itself: module keys and its own, never another node's.
    let mut n = c.conn_as(&node);
    let _: () = cmd(&["HSET", "module/m1/module.env", "B", "2"])
        .query(&mut n)
        .unwrap();
    let _: () = cmd(&["HSET", "node/n1/x", "f", "v"]).query(&mut n).unwrap();
    refused(&mut n, &["HSET", "node/n2/x", "f", "v"]);
    refused(&mut n, &["XADD", "node/n2/queue", "*", "event", "e"]);
    refused(&mut n, &["FLUSHALL"]);
    refused(&mut n, &["CONFIG", "SET", "aclfile", "/tmp/x"]);
    let n1: i64 = cmd(&["PUBLISH", "cancel/m1", "r"]).query(&mut n).unwrap();
    assert_eq!(n1, 0);
    for allowed in [
        &["ACL", "SETUSER", "module-x", "on"][..],
        &["ACL", "DELUSER", "module-x"],
        &["ACL", "SAVE"],
        &["INFO", "replication"],
        &["XADD", "module/any/queue", "*", "event", "e"],
    ] {
        assert_eq!(dryrun(&mut admin, "node-n1", allowed), None, "{allowed:?}");
    }
}

/// `remove-agent` deletes the user and closes its connections; running it again is harmless.
#[test]
fn removing_an_agent_revokes_it() {
    let c = Cluster::start();
    c.setup(&[]);
    let a = c.add_module("moda");
    // Adding again keeps the password.
    let again = c.add_module("moda");
    assert!(again.pass == a.pass, "add-agent kept the password");
    let mut ma = c.conn_as(&a);
    let _: String = cmd(&["PING"]).query(&mut ma).unwrap();
    let admin_file = c.creds_dir().join("admin.env");
    let admin_file = admin_file.to_str().unwrap();
    let out = c.ctl_ok(&[
        "--redis-credentials",
        admin_file,
        "redis",
        "remove-agent",
        "moda",
    ]);
    assert!(out.contains("removed ACL user module-moda"), "{out}");
    assert!(
        cmd(&["PING"]).query::<String>(&mut ma).is_err(),
        "the removed user's connection was closed"
    );
    assert!(c.try_conn_as(&a).is_err(), "the removed user cannot log in");
    let out = c.ctl_ok(&[
        "--redis-credentials",
        admin_file,
        "redis",
        "remove-agent",
        "module/moda",
    ]);
    assert!(out.contains("nothing to remove"), "{out}");

    // A module user may not manage users.
    let b = c.add_module("modb");
    let out = agentctl(
        &b.url(c.redis.port()),
        &[
            "redis",
            "add-agent",
            "module/evil",
            "--creds",
            c.path("evil.env").to_str().unwrap(),
        ],
    );
    assert!(!out.ok, "a module user created a user");
    assert!(
        out.text.contains("may not manage ACL users"),
        "{}",
        out.text
    );
    assert!(!out.text.contains(&b.pass), "agentctl printed a password");
}
