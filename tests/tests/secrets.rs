//! `module-sdk secret …` against a real redis-server: per-module secrets encrypted with age.
//!
//! Build the binaries first: `cargo build --workspace --bins`. Key names are written out literally on
//! purpose: `module/<id>/secrets` and `module/<id>/public_key` are the protocol v1 contract.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use agent_tests::redis;
use agent_tests::{bin, stream, wait_for, wait_run_end, xadd, Agent, EventDirs, RedisServer};

const LONG: Duration = Duration::from_secs(60);
const BEGIN: &str = "-----BEGIN AGE ENCRYPTED FILE-----";

/// Runs module-sdk with exactly `env` (plus PATH), `args` and `stdin`.
fn sdk(env: &[(&str, &str)], args: &[&str], stdin: Option<&[u8]>) -> Output {
    agent_tests::run_clean("module-sdk", env, args, stdin)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn ok(o: Output) -> Output {
    assert!(
        o.status.success(),
        "module-sdk failed ({:?}): {}",
        o.status,
        text(&o.stderr)
    );
    o
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// One module as seen from outside a step: `--module ID --identity FILE`, REDIS_URL in the environment.
struct Module {
    id: String,
    key: PathBuf,
    url: String,
}

impl Module {
    fn new(redis: &RedisServer, dir: &Path, id: &str) -> Self {
        Module {
            id: id.into(),
            key: dir.join(id).join(".config/agent/secret.key"),
            url: redis.url(),
        }
    }

    fn with_key(&self, key: &Path) -> Module {
        Module {
            id: self.id.clone(),
            key: key.to_path_buf(),
            url: self.url.clone(),
        }
    }

    fn run(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let key = self.key.display().to_string();
        let mut all = vec!["secret", "--module", &self.id, "--identity", &key];
        all.extend_from_slice(args);
        sdk(&[("REDIS_URL", &self.url)], &all, stdin)
    }

    fn init(&self) -> String {
        let o = ok(self.run(&["init"], None));
        text(&o.stdout).trim().to_string()
    }

    fn set(&self, name: &str, value: &str) {
        ok(self.run(&["set", name], Some(value.as_bytes())));
    }

    fn get(&self, name: &str) -> Output {
        self.run(&["get", name], None)
    }

    fn value(&self, name: &str) -> String {
        text(&ok(self.get(name)).stdout)
    }
}

fn hget(con: &mut redis::Connection, key: &str, field: &str) -> Option<String> {
    redis::cmd("HGET").arg(key).arg(field).query(con).unwrap()
}

fn get(con: &mut redis::Connection, key: &str) -> Option<String> {
    redis::cmd("GET").arg(key).query(con).unwrap()
}

#[test]
fn set_get_list_rm_round_trip() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let m = Module::new(&redis, dir.path(), "mod0");
    let mut con = redis.conn();

    let pk = m.init();
    assert!(pk.starts_with("age1"), "{pk}");
    assert_eq!(get(&mut con, "module/mod0/public_key"), Some(pk.clone()));
    assert_eq!(mode(&m.key), 0o600, "the key file is private");
    assert_eq!(mode(m.key.parent().unwrap()), 0o700);
    assert_eq!(m.init(), pk, "init is idempotent");

    m.set("DB_PASSWORD", "hunter2-correct-horse\n");
    assert_eq!(m.value("DB_PASSWORD"), "hunter2-correct-horse\n");
    let stored = hget(&mut con, "module/mod0/secrets", "DB_PASSWORD").unwrap();
    assert!(stored.starts_with(BEGIN), "{stored}");
    assert!(!stored.contains("hunter2"));

    // --raw keeps the trailing newline; get --raw prints the bytes only.
    ok(m.run(&["set", "--raw", "CERT"], Some(b"line1\nline2\n")));
    assert_eq!(
        text(&ok(m.run(&["get", "--raw", "CERT"], None)).stdout),
        "line1\nline2\n"
    );
    // Binary values survive.
    ok(m.run(&["set", "--raw", "BIN"], Some(&[0, 159, 146, 150, 255])));
    assert_eq!(
        ok(m.run(&["get", "--raw", "BIN"], None)).stdout,
        vec![0, 159, 146, 150, 255]
    );

    assert_eq!(
        text(&ok(m.run(&["list"], None)).stdout),
        "BIN\nCERT\nDB_PASSWORD\n"
    );
    ok(m.run(&["rm", "CERT"], None));
    ok(m.run(&["rm", "CERT"], None)); // idempotent
    assert_eq!(
        text(&ok(m.run(&["list"], None)).stdout),
        "BIN\nDB_PASSWORD\n"
    );
    let gone = m.get("CERT");
    assert_eq!(code(&gone), 1, "{}", text(&gone.stderr));
    assert!(text(&gone.stderr).contains("has no secret CERT"));

    assert_eq!(text(&ok(m.run(&["public-key"], None)).stdout).trim(), pk);

    // Values come from stdin only, never argv; an empty value is refused.
    let argv = m.run(&["set", "X", "hunter2"], None);
    assert_eq!(code(&argv), 2, "{}", text(&argv.stderr));
    let empty = m.run(&["set", "X"], Some(b"\n"));
    assert_eq!(code(&empty), 2, "{}", text(&empty.stderr));
    assert!(text(&empty.stderr).contains("standard input"));
    let bad = m.run(&["get", "../x"], None);
    assert_eq!(code(&bad), 2);

    // Without an identity: a clear error naming `secret init`.
    let none = m
        .with_key(&dir.path().join("nowhere/secret.key"))
        .get("DB_PASSWORD");
    assert_eq!(code(&none), 78, "{}", text(&none.stderr));
    assert!(
        text(&none.stderr).contains("secret init"),
        "{}",
        text(&none.stderr)
    );
}

#[test]
fn another_modules_key_cannot_decrypt() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mod0 = Module::new(&redis, dir.path(), "mod0");
    let other = Module::new(&redis, dir.path(), "other0");
    mod0.init();
    other.init();
    mod0.set("TOKEN", "only-for-mod0-4711");

    let thief = mod0.with_key(&other.key);
    let o = thief.get("TOKEN");
    assert_eq!(code(&o), 65, "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(
        err.contains("this secret was not encrypted to this module's key"),
        "{err}"
    );
    assert!(o.stdout.is_empty());
    assert!(!err.contains("only-for-mod0"));

    // Writing with the wrong identity is refused too: the published key is not the identity's.
    let o = thief.run(&["set", "X"], Some(b"v"));
    assert_eq!(code(&o), 78, "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("module/mod0/public_key holds"));
}

#[test]
fn tampered_ciphertext_is_reported_as_damaged() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let m = Module::new(&redis, dir.path(), "mod0");
    m.init();
    m.set("DB_PASSWORD", "a-value-worth-protecting");
    let mut con = redis.conn();
    let stored = hget(&mut con, "module/mod0/secrets", "DB_PASSWORD").unwrap();
    // Flip one character of the last body line (the payload) to another base64 character.
    let mut lines: Vec<String> = stored.lines().map(str::to_string).collect();
    let i = lines.len() - 2;
    let mut chars: Vec<char> = lines[i].chars().collect();
    chars[0] = if chars[0] == 'A' { 'B' } else { 'A' };
    lines[i] = chars.into_iter().collect();
    let tampered = lines.join("\n") + "\n";
    assert_ne!(tampered, stored);
    let _: i64 = redis::cmd("HSET")
        .arg("module/mod0/secrets")
        .arg("DB_PASSWORD")
        .arg(&tampered)
        .query(&mut con)
        .unwrap();

    let o = m.get("DB_PASSWORD");
    assert_eq!(code(&o), 65, "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("ciphertext is damaged"),
        "{}",
        text(&o.stderr)
    );
    assert!(o.stdout.is_empty());

    // A plaintext value written by hand is not armored.
    let _: i64 = redis::cmd("HSET")
        .arg("module/mod0/secrets")
        .arg("PLAIN")
        .arg("oops")
        .query(&mut con)
        .unwrap();
    let o = m.get("PLAIN");
    assert_eq!(code(&o), 65);
    assert!(text(&o.stderr).contains("not an age-armored ciphertext"));
}

#[test]
fn set_for_from_the_node_is_readable_by_the_module() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let m = Module::new(&redis, dir.path(), "mod0");
    let url = redis.url();
    // Before the module has a key, set-for says so.
    let o = sdk(
        &[("REDIS_URL", &url)],
        &["secret", "set-for", "mod0", "DB_PASSWORD"],
        Some(b"from-the-node-99\n"),
    );
    assert_eq!(code(&o), 1, "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("module/mod0/public_key is not set"));

    m.init();
    // A node step: its own context is a node; set-for needs only REDIS_URL.
    let node_env = [
        ("REDIS_URL", url.as_str()),
        ("AGENT_NAME", "node1"),
        ("AGENT_KIND", "node"),
    ];
    ok(sdk(
        &node_env,
        &["secret", "set-for", "mod0", "DB_PASSWORD"],
        Some(b"from-the-node-99\n"),
    ));
    assert_eq!(m.value("DB_PASSWORD"), "from-the-node-99\n");
    // A node has no secrets of its own.
    let o = sdk(&node_env, &["secret", "list"], None);
    assert_eq!(code(&o), 2, "{}", text(&o.stderr));
}

#[test]
fn set_for_is_refused_by_the_acl_for_a_module_user() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let other = Module::new(&redis, dir.path(), "other0");
    other.init();
    let mut con = redis.conn();
    // The security model's module user: reads everything, writes only its own prefix.
    let _: String = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("mod0")
        .arg("on")
        .arg(">mod0-pass")
        .arg("resetkeys")
        .arg("~module/mod0/*")
        .arg("%R~*")
        .arg("resetchannels")
        .arg("&*")
        .arg("+@all")
        .query(&mut con)
        .unwrap();
    let url = format!("redis://mod0:mod0-pass@127.0.0.1:{}", redis.port());
    let o = sdk(
        &[("REDIS_URL", &url)],
        &["secret", "set-for", "other0", "STOLEN"],
        Some(b"v"),
    );
    assert_eq!(code(&o), 77, "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(err.to_lowercase().contains("no permissions"), "{err}");
    assert!(err.contains("module/other0/secrets"), "{err}");
    assert!(!err.contains("mod0-pass"), "{err}");
    assert_eq!(hget(&mut con, "module/other0/secrets", "STOLEN"), None);

    // Its own secrets work under the same ACL.
    let mine = Module {
        id: "mod0".into(),
        key: dir.path().join("mod0/secret.key"),
        url,
    };
    mine.init();
    mine.set("OWN", "own-value-1");
    assert_eq!(mine.value("OWN"), "own-value-1\n");
}

#[test]
fn rotation_re_encrypts_everything() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let m = Module::new(&redis, dir.path(), "mod0");
    let old_pk = m.init();
    let values = [("A", "alpha-1"), ("B", "beta-22"), ("C", "gamma-333")];
    for (n, v) in values {
        m.set(n, v);
    }
    let old_key = dir.path().join("old.key");
    std::fs::copy(&m.key, &old_key).unwrap();
    let mut con = redis.conn();
    let before = hget(&mut con, "module/mod0/secrets", "A").unwrap();

    let o = ok(m.run(&["rotate"], None));
    let new_pk = text(&o.stdout).trim().to_string();
    assert!(new_pk.starts_with("age1") && new_pk != old_pk, "{new_pk}");
    assert!(
        text(&o.stderr).contains("rotated: 3 secrets"),
        "{}",
        text(&o.stderr)
    );
    assert_eq!(
        get(&mut con, "module/mod0/public_key"),
        Some(new_pk.clone())
    );
    assert_ne!(hget(&mut con, "module/mod0/secrets", "A").unwrap(), before);

    for (n, v) in values {
        assert_eq!(m.value(n), format!("{v}\n"), "the new key opens {n}");
        let o = m.with_key(&old_key).get(n);
        assert_eq!(code(&o), 65, "the old key no longer opens {n}");
    }
    assert_eq!(mode(&m.key), 0o600);
    let leftovers: Vec<String> = std::fs::read_dir(m.key.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(leftovers, vec!["secret.key".to_string()]);
    // Secrets set after the rotation use the new key.
    m.set("D", "delta-4444");
    assert_eq!(m.value("D"), "delta-4444\n");
}

#[test]
fn rotate_finishes_a_rotation_interrupted_after_exec() {
    // The state a rotation leaves when it dies after EXEC, before the rename: Redis holds the
    // ciphertexts for the new key and its public key; the new key is only in secret.key.new.
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let m = Module::new(&redis, dir.path(), "mod0");
    m.init();
    m.set("A", "alpha-1");
    let next = Module::new(&redis, dir.path(), "next0");
    let next_pk = next.init();
    next.set("A", "alpha-1");
    let mut con = redis.conn();
    let c = hget(&mut con, "module/next0/secrets", "A").unwrap();
    let _: () = redis::pipe()
        .atomic()
        .hset("module/mod0/secrets", "A", c)
        .ignore()
        .set("module/mod0/public_key", &next_pk)
        .ignore()
        .query(&mut con)
        .unwrap();
    let new_path = PathBuf::from(format!("{}.new", m.key.display()));
    std::fs::copy(&next.key, &new_path).unwrap();

    let o = m.get("A");
    assert_eq!(code(&o), 78, "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("secret rotate"),
        "{}",
        text(&o.stderr)
    );

    let o = ok(m.run(&["rotate"], None));
    assert_eq!(text(&o.stdout).trim(), next_pk);
    assert!(text(&o.stderr).contains("finished an interrupted rotation"));
    assert!(!new_path.exists());
    assert_eq!(m.value("A"), "alpha-1\n");
}

#[test]
fn no_plaintext_on_the_wire() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let m = Module::new(&redis, dir.path(), "mod0");
    m.init();

    let log = dir.path().join("monitor.log");
    let mut monitor = Command::new("redis-cli")
        .args(["-p", &redis.port().to_string(), "MONITOR"])
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::null())
        .stdin(Stdio::null())
        .spawn()
        .expect("redis-cli must be installed (apt-get install redis-tools)");
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_for("MONITOR to start", LONG, || {
        read().starts_with("OK").then_some(())
    });

    let plaintext = "wire-check-plaintext-5c1f0e";
    m.set("WIRE", plaintext);
    assert_eq!(m.value("WIRE"), format!("{plaintext}\n"));
    ok(sdk(
        &[("REDIS_URL", &redis.url())],
        &["secret", "set-for", "mod0", "WIRE2"],
        Some(plaintext.as_bytes()),
    ));
    let seen = wait_for("the HSETs in the MONITOR output", LONG, || {
        let s = read();
        (s.matches("\"HSET\"").count() >= 2 && s.contains("\"HGET\"")).then_some(s)
    });
    let _ = monitor.kill();
    let _ = monitor.wait();

    assert!(!seen.contains(plaintext), "plaintext on the wire:\n{seen}");
    let hset = seen
        .lines()
        .find(|l| l.contains("\"HSET\"") && l.contains("\"WIRE\""))
        .unwrap_or_else(|| panic!("no HSET of WIRE in:\n{seen}"));
    assert!(hset.contains("\"module/mod0/secrets\""), "{hset}");
    assert!(hset.contains(BEGIN), "the ciphertext is written: {hset}");
}

#[test]
fn a_step_uses_its_own_modules_secrets() {
    let redis = RedisServer::start();
    let dirs = EventDirs::new(1);
    let work = dirs.work();
    let key = work.join("home/.config/agent/secret.key");
    let sdk = bin("module-sdk").display().to_string();
    let q = |p: &Path| format!("'{}'", p.display());
    dirs.step(
        0,
        "secrets",
        "10use",
        &format!(
            "set -e\n\
             export AGENT_SECRET_KEY_FILE={key}\n\
             '{sdk}' secret init > {pk}\n\
             printf '%s\\n' 'step-secret-31337' | '{sdk}' secret set S1\n\
             '{sdk}' secret get S1 > {got}\n\
             '{sdk}' secret list > {names}",
            key = q(&key),
            pk = q(&work.join("pk")),
            got = q(&work.join("got")),
            names = q(&work.join("names")),
        ),
    );
    let _agent = Agent::module(&redis, "mod0", &dirs, &[]);
    let mut con = redis.conn();
    xadd(
        &mut con,
        "module/mod0/queue",
        &[("event", "secrets"), ("data", ""), ("id", "sec-1")],
    );
    let rec = wait_run_end(&mut con, "module/mod0/run/sec-1", LONG);
    let output: Option<String> = redis::cmd("GET")
        .arg("module/mod0/run/sec-1/output")
        .query(&mut con)
        .unwrap();
    assert_eq!(
        rec.get("status").map(String::as_str),
        Some("done"),
        "{rec:?}\n{}\n{:?}",
        output.unwrap_or_default(),
        stream(&mut con, "module/mod0/journal")
    );
    let read = |n: &str| std::fs::read_to_string(work.join(n)).unwrap();
    assert_eq!(read("got"), "step-secret-31337\n");
    assert_eq!(read("names"), "S1\n");
    assert_eq!(
        get(&mut con, "module/mod0/public_key"),
        Some(read("pk").trim().to_string())
    );
    assert_eq!(mode(&key), 0o600);
    assert!(!output.unwrap_or_default().contains("step-secret-31337"));
}
