//! Test harness: a real `redis-server` per test, the real agent binaries, and event directories.
//!
//! Integration tests in `tests/tests/` use this to start their own private Redis (TCP on a free
//! loopback port, append-only file on, so a restart keeps the queue) and agents built by
//! `cargo build --workspace`, and to run the other binaries (`agentctl`, `module-sdk`) once with
//! [`Run`]. Everything is cleaned up on drop, also when a test fails.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

pub mod acme;
pub mod edge;
pub mod node;

pub use redis;

/// Path of a workspace binary (`target/<profile>/<name>`). Build them first with
/// `cargo build --workspace` (the project's test command does).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // Test binaries live in target/<profile>/deps/, other binaries in target/<profile>/.
    let dir = exe.parent().expect("exe dir");
    let dir = if dir.ends_with("deps") {
        dir.parent().expect("target dir")
    } else {
        dir
    };
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        p.display()
    );
    p
}

/// The value after `--NAME` on a benchmark binary's command line.
pub fn bench_arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// The `p`-quantile (0.0–1.0) of sorted benchmark samples, nearest rank.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// A duration in milliseconds, for benchmark reports.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The `<monotonic ns> <pid>` lines the `bench-step` binary appended to `path`.
pub fn bench_stamps(path: &Path) -> Vec<(u64, u32)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (t, pid) = l.split_once(' ')?;
            Some((t.parse().ok()?, pid.parse().ok()?))
        })
        .collect()
}

/// A numeric `--NAME N` of a benchmark binary, or `default`.
pub fn bench_num_arg(name: &str, default: usize) -> usize {
    bench_arg(name)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A run of a workspace binary that waits for it to end and captures what it printed.
///
/// The binary inherits the test's environment unless [`Run::clear_env`] is called; stdin is
/// empty (`/dev/null`) unless [`Run::stdin`] gives bytes, which are written from a thread;
/// stdout and stderr are read in threads, so a chatty binary never blocks on a full pipe. With a
/// [`Run::timeout`], a binary still running when it is over is killed and the test panics,
/// showing what it printed; without one, the run waits as long as it takes.
pub struct Run {
    name: String,
    cmd: Command,
    /// The arguments as failure messages show them (redacted ones as `"…"`).
    shown: Vec<String>,
    stdin: Option<Vec<u8>>,
    timeout: Option<Duration>,
}

impl Run {
    /// Workspace binary `name` (see [`bin`]), no arguments yet.
    pub fn new(name: &str) -> Self {
        Run {
            name: name.into(),
            cmd: Command::new(bin(name)),
            shown: Vec::new(),
            stdin: None,
            timeout: None,
        }
    }

    /// `agentctl --redis-url URL`, with `REDIS_URL` and `AGENT_REDIS_CREDENTIALS` removed from
    /// the environment so that only `url` decides where and as whom it connects. The URL (it
    /// may hold a password) is never shown in a failure message.
    pub fn agentctl(url: &str) -> Self {
        Self::new("agentctl")
            .arg("--redis-url")
            .arg_redacted(url)
            .env_remove("REDIS_URL")
            .env_remove("AGENT_REDIS_CREDENTIALS")
    }

    pub fn arg(mut self, arg: &str) -> Self {
        self.cmd.arg(arg);
        self.shown.push(arg.into());
        self
    }

    pub fn args<S: AsRef<str>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        for a in args {
            self = self.arg(a.as_ref());
        }
        self
    }

    /// An argument that failure messages show as `"…"` (a URL with a password, say).
    pub fn arg_redacted(mut self, arg: &str) -> Self {
        self.cmd.arg(arg);
        self.shown.push("…".into());
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.cmd.env(key, value);
        self
    }

    pub fn envs<'a>(mut self, vars: impl IntoIterator<Item = &'a (&'a str, &'a str)>) -> Self {
        self.cmd.envs(vars.into_iter().copied());
        self
    }

    pub fn env_remove(mut self, key: &str) -> Self {
        self.cmd.env_remove(key);
        self
    }

    /// Empties the environment but for the caller's `PATH` (variables set before are gone too).
    pub fn clear_env(mut self) -> Self {
        self.cmd
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default());
        self
    }

    /// Bytes for the binary's stdin, which is closed after them.
    pub fn stdin(mut self, input: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(input.into());
        self
    }

    /// Kill the binary and panic if it runs longer than `timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Runs it to the end; stdout and stderr as text (invalid UTF-8 replaced).
    pub fn output(self) -> RunOutput {
        let out = self.output_bytes();
        RunOutput {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs it to the end; stdout and stderr as the bytes it wrote.
    pub fn output_bytes(mut self) -> Output {
        use std::io::{Read, Write};
        let mut child = self
            .cmd
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{} starts: {e}", self.name));
        if let (Some(input), Some(mut pipe)) = (self.stdin, child.stdin.take()) {
            // A binary that stops reading early is not our failure: the write error is ignored.
            std::thread::spawn(move || {
                let _ = pipe.write_all(&input);
            });
        }
        let reader = |mut pipe: Box<dyn Read + Send>| {
            std::thread::spawn(move || {
                let mut b = Vec::new();
                let _ = pipe.read_to_end(&mut b);
                b
            })
        };
        let stdout = reader(Box::new(child.stdout.take().unwrap()));
        let stderr = reader(Box::new(child.stderr.take().unwrap()));
        let status = match self.timeout {
            None => child.wait().unwrap(),
            Some(timeout) => {
                let end = Instant::now() + timeout;
                loop {
                    if let Some(st) = child.try_wait().unwrap() {
                        break st;
                    }
                    if Instant::now() > end {
                        let _ = child.kill();
                        let _ = child.wait();
                        panic!(
                            "{} {:?} still running after {timeout:?}\n{}{}",
                            self.name,
                            self.shown,
                            String::from_utf8_lossy(&stdout.join().unwrap()),
                            String::from_utf8_lossy(&stderr.join().unwrap())
                        );
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        };
        Output {
            status,
            stdout: stdout.join().unwrap(),
            stderr: stderr.join().unwrap(),
        }
    }
}

/// What a [`Run`] ended with; `{:?}` shows the exit code, stdout and stderr.
pub struct RunOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl RunOutput {
    /// The exit code, -1 when a signal ended the binary.
    pub fn code(&self) -> i32 {
        self.status.code().unwrap_or(-1)
    }

    pub fn success(&self) -> bool {
        self.status.success()
    }
}

impl std::fmt::Debug for RunOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.code(),
            self.stdout,
            self.stderr
        )
    }
}

/// Runs workspace binary `name` with exactly `env` as its environment (plus `PATH`), `args`, and
/// `stdin` (or no stdin), and returns its output; no timeout.
pub fn run_clean(name: &str, env: &[(&str, &str)], args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut run = Run::new(name).clear_env().envs(env).args(args);
    if let Some(input) = stdin {
        run = run.stdin(input);
    }
    run.output_bytes()
}

/// Calls `f` every `every` until it returns `Ok`; after `timeout`, panics with its last `Err` (which
/// says what was awaited and what was seen instead).
pub fn poll<T>(timeout: Duration, every: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let end = Instant::now() + timeout;
    loop {
        match f() {
            Ok(v) => return v,
            Err(why) => assert!(Instant::now() < end, "timed out after {timeout:?}: {why}"),
        }
        std::thread::sleep(every);
    }
}

/// Polls `f` every 20 ms until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    poll(timeout, Duration::from_millis(20), || {
        f().ok_or_else(|| format!("waiting for {what}"))
    })
}

/// `CLOCK_MONOTONIC` now, in nanoseconds: the clock the kernel stamps process events with, and one
/// that separate processes (the benchmark and its steps) share.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC)");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A private redis-server on 127.0.0.1, with its data dir in a temp dir.
pub struct RedisServer {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
    extra: Vec<String>,
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts with extra `redis-server` arguments (e.g. `["--aclfile", path]`).
    pub fn start_with(extra: &[&str]) -> Self {
        let mut s = RedisServer {
            child: None,
            dir: tempfile::tempdir().unwrap(),
            port: free_port(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        s.boot();
        s
    }

    fn boot(&mut self) {
        let child = Command::new("redis-server")
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(self.dir.path())
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .args(["--unixsocket", "redis.sock", "--unixsocketperm", "777"])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)");
        self.child = Some(child);
        let url = self.url();
        wait_for(
            "redis-server to answer PING",
            Duration::from_secs(10),
            || {
                let c = redis::Client::open(url.as_str()).ok()?;
                let mut con = c.get_connection().ok()?;
                match redis::cmd("PING").query::<String>(&mut con) {
                    Ok(_) => Some(()),
                    // A server with a password answers too; that is enough to know it is up.
                    Err(e) if e.code() == Some("NOAUTH") => Some(()),
                    Err(_) => None,
                }
            },
        );
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// URL with the `--requirepass` password, if one was given at start.
    pub fn url(&self) -> String {
        let pass = self
            .extra
            .iter()
            .position(|a| a == "--requirepass")
            .and_then(|i| self.extra.get(i + 1));
        match pass {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    pub fn socket_url(&self) -> String {
        format!("unix://{}", self.dir.path().join("redis.sock").display())
    }

    /// The server's process id (to freeze it with SIGSTOP: a server that stops answering, as a
    /// dead host does, rather than one whose connections are refused).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("redis-server running").id()
    }

    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection()
            .unwrap()
    }

    /// Kills the server hard (SIGKILL): what is in the append-only file survives.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port and data dir.
    pub fn restart(&mut self) {
        self.kill();
        self.boot();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Event directories in a temp dir, with helpers to write steps.
pub struct EventDirs {
    root: tempfile::TempDir,
    count: usize,
}

impl EventDirs {
    /// `count` event directories, `root/d0`, `root/d1`, … (later ones win).
    pub fn new(count: usize) -> Self {
        let root = tempfile::tempdir().unwrap();
        for i in 0..count {
            std::fs::create_dir_all(root.path().join(format!("d{i}"))).unwrap();
        }
        EventDirs { root, count }
    }

    pub fn dir(&self, i: usize) -> PathBuf {
        self.root.path().join(format!("d{i}"))
    }

    pub fn dirs(&self) -> Vec<PathBuf> {
        (0..self.count).map(|i| self.dir(i)).collect()
    }

    /// A scratch directory for files that steps write (`root/work`).
    pub fn work(&self) -> PathBuf {
        let p = self.root.path().join("work");
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    /// Writes an executable `/bin/sh` step `dir i / event / name` with `body`.
    pub fn step(&self, i: usize, event: &str, name: &str, body: &str) -> PathBuf {
        let d = self.dir(i).join(event);
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    /// Writes a plain file (settings, non-executable entries).
    pub fn file(&self, i: usize, event: &str, name: &str, content: &str) -> PathBuf {
        let d = self.dir(i).join(event);
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join(name);
        std::fs::write(&p, content).unwrap();
        p
    }
}

/// A running agent binary (`node-agent` or `module-agent`).
pub struct Agent {
    child: Option<Child>,
    binary: String,
    name: String,
    args: Vec<String>,
    /// Used by the harness itself to check readiness (may differ from the agent's own URL).
    admin_url: String,
    /// Extra environment for the agent process.
    env: Vec<(String, String)>,
    log: PathBuf,
    /// How many [`READY_LINE`]s the log held when the agent was last started.
    ready_lines: usize,
    _logdir: tempfile::TempDir,
}

/// What an agent logs once it is ready (agent-engine's `run_agent`).
const READY_LINE: &str = "agent ready";

impl Agent {
    /// Starts a module-agent named `name` on `dirs`, waiting until it is ready ([`Agent::wait_ready`]).
    pub fn module(redis: &RedisServer, name: &str, dirs: &EventDirs, extra: &[&str]) -> Self {
        Self::start("module-agent", &redis.url(), name, &dirs.dirs(), extra)
    }

    pub fn node(redis: &RedisServer, name: &str, dirs: &EventDirs, extra: &[&str]) -> Self {
        Self::start("node-agent", &redis.url(), name, &dirs.dirs(), extra)
    }

    pub fn start(binary: &str, url: &str, name: &str, dirs: &[PathBuf], extra: &[&str]) -> Self {
        Self::start_with_admin(binary, url, url, name, dirs, extra)
    }

    /// Like [`Agent::start`], with extra environment from the first start.
    pub fn start_with_env(
        binary: &str,
        url: &str,
        name: &str,
        dirs: &[PathBuf],
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        Self::start_full(binary, url, url, name, dirs, extra, env)
    }

    /// Like [`Agent::start`], with a separate URL the harness uses to watch the agent.
    pub fn start_with_admin(
        binary: &str,
        url: &str,
        admin_url: &str,
        name: &str,
        dirs: &[PathBuf],
        extra: &[&str],
    ) -> Self {
        Self::start_full(binary, url, admin_url, name, dirs, extra, &[])
    }

    fn start_full(
        binary: &str,
        url: &str,
        admin_url: &str,
        name: &str,
        dirs: &[PathBuf],
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let mut args = vec![
            "--name".to_string(),
            name.to_string(),
            "--redis-url".into(),
            url.into(),
        ];
        for d in dirs {
            args.push("--events-dir".into());
            args.push(d.display().to_string());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let logdir = tempfile::tempdir().unwrap();
        let mut a = Agent {
            child: None,
            binary: binary.into(),
            name: name.into(),
            args,
            admin_url: admin_url.into(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            log: logdir.path().join("agent.log"),
            ready_lines: 0,
            _logdir: logdir,
        };
        a.spawn(true);
        a
    }

    fn spawn(&mut self, wait_ready: bool) {
        // The log is appended across restarts: readiness is one more "agent ready" than now.
        self.ready_lines = self.ready_lines();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(bin(&self.binary))
            .args(&self.args)
            .env(
                "RUST_LOG",
                // Whatever a developer asks for, the ready line stays visible: readiness is read from it.
                std::env::var("AGENT_TEST_LOG")
                    .map(|f| format!("{f},agent_engine::agent=info"))
                    .unwrap_or_else(|_| "info,agent_engine=debug".into()),
            )
            .env_remove("NOTIFY_SOCKET")
            .env_remove("REDIS_URL")
            .env_remove("AGENT_EVENTS_DIRS")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        if wait_ready {
            self.wait_ready();
        }
    }

    fn ready_lines(&self) -> usize {
        self.log().matches(READY_LINE).count()
    }

    /// Waits until the agent is ready as it says so itself: its subscriptions exist (it then
    /// counts as a PUBLISH receiver) and it has logged [`READY_LINE`], which it does once every
    /// connection it keeps is logged in and its startup event is queued. The subscription alone
    /// comes earlier: a test that went on from there raced the agent's queue connection.
    pub fn wait_ready(&mut self) {
        let url = self.admin_url.clone();
        let chan = format!("cancel/{}", self.name);
        let log = self.log.clone();
        wait_for(
            &format!("agent {} to subscribe", self.name),
            Duration::from_secs(20),
            || {
                if let Some(c) = self.child.as_mut() {
                    if let Ok(Some(st)) = c.try_wait() {
                        panic!(
                            "agent exited early ({st}):\n{}",
                            std::fs::read_to_string(&log).unwrap_or_default()
                        );
                    }
                }
                let mut con = redis::Client::open(url.as_str())
                    .ok()?
                    .get_connection()
                    .ok()?;
                let v: Vec<(String, i64)> = redis::cmd("PUBSUB")
                    .arg("NUMSUB")
                    .arg(&chan)
                    .query(&mut con)
                    .ok()?;
                (v.first()?.1 >= 1).then_some(())
            },
        );
        let before = self.ready_lines;
        wait_for(
            &format!("agent {} to log that it is ready", self.name),
            Duration::from_secs(20),
            || {
                if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                    panic!("agent exited before it was ready ({st}):\n{}", self.log());
                }
                (self.ready_lines() > before).then_some(())
            },
        );
    }

    /// Sets an environment variable for the agent's next start (use with [`Agent::restart`]).
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.push((key.into(), value.into()));
    }

    /// Starts the agent again after it was killed or stopped.
    pub fn restart(&mut self) {
        self.spawn(true);
    }

    /// Starts the agent again without waiting for it (Redis may be down).
    pub fn restart_no_wait(&mut self) {
        self.spawn(false);
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("agent running");
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        c.wait().unwrap()
    }

    /// Waits up to `timeout` for the agent to exit by itself; `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + timeout;
        loop {
            let c = self.child.as_mut().expect("agent running");
            if let Ok(Some(st)) = c.try_wait() {
                self.child = None;
                return Some(st);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("agent running").id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("--- log of agent {} ---\n{}", self.name, self.log());
        }
    }
}

/// `XADD key * fields…`: queues an entry directly, as a client that does not PUBLISH would.
pub fn xadd(con: &mut redis::Connection, key: &str, fields: &[(&str, &str)]) -> String {
    redis::cmd("XADD")
        .arg(key)
        .arg("*")
        .arg(fields)
        .query(con)
        .unwrap()
}

/// The text of a file steps append to, empty while no step has written it.
pub fn read_or_empty(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

pub fn hgetall(con: &mut redis::Connection, key: &str) -> HashMap<String, String> {
    redis::cmd("HGETALL").arg(key).query(con).unwrap()
}

/// Waits until the run record at `key` has a terminal status, and returns it.
pub fn wait_run_end(
    con: &mut redis::Connection,
    key: &str,
    timeout: Duration,
) -> HashMap<String, String> {
    wait_for(&format!("run {key} to end"), timeout, || {
        let r = hgetall(con, key);
        matches!(
            r.get("status").map(String::as_str),
            Some("done" | "failed" | "cancelled" | "abandoned")
        )
        .then_some(r)
    })
}

/// All entries of a stream as field maps, oldest first.
pub fn stream(con: &mut redis::Connection, key: &str) -> Vec<HashMap<String, String>> {
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query(con)
        .unwrap();
    reply
        .ids
        .into_iter()
        .map(|e| {
            e.map
                .into_iter()
                .map(|(k, v)| (k, redis::from_redis_value::<String>(v).unwrap_or_default()))
                .collect()
        })
        .collect()
}
