//! Real systemd nodes for tests: a thin Rust face of `tests/node/node.sh` (see docs/NODE-HARNESS.md).
//!
//! [`Node::up`] boots a node (systemd-nspawn, own network namespace, the project installed); the node is
//! stopped and removed on drop, also when the test fails, after printing node-agent's journal.
//!
//! Several nodes that talk to each other: a [`Lab`] (a network namespace with a bridge) and
//! [`Node::up_in_lab`], which gives the node an `eth0` with an address on that bridge. A node holds
//! its lab, so the lab goes only after its last node is down, whatever the drop order.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

fn script() -> PathBuf {
    repo_root().join("tests/node/node.sh")
}

/// `b` as text, trimmed: a command's output for comparisons and messages.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim().to_string()
}

/// `agentctl ARGS` in `node`: (exit code, trimmed stdout, trimmed stderr).
pub fn agentctl(node: &Node, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["agentctl"];
    all.extend_from_slice(args);
    let out = node.exec(&all);
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    )
}

/// Runs `tests/node/node.sh ARGS` (no stdin) and returns its output, whatever its exit status.
pub fn node_sh(args: &[&str]) -> Output {
    Command::new(script())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run node.sh")
}

/// `node.sh ARGS`, asserting success.
fn node_sh_ok(args: &[&str]) {
    let out = node_sh(args);
    assert!(
        out.status.success(),
        "node.sh {} failed ({}):\n{}\n{}",
        args.join(" "),
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// A unique name `<prefix><pid>-<n>` for a node or a lab.
fn unique_name(prefix: &str) -> String {
    static COUNT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{prefix}{}-{}",
        std::process::id(),
        COUNT.fetch_add(1, Ordering::SeqCst)
    )
}

/// A lab (`node.sh lab-up`): network namespace `agentlab-NAME` holding a bridge `br0` into which
/// [`Node::up_in_lab`] plugs nodes. Cheap to clone; `node.sh lab-down` when the last clone is
/// dropped — every node in it holds one, so the lab outlives its nodes.
#[derive(Clone)]
pub struct Lab {
    inner: Arc<LabGuard>,
}

struct LabGuard {
    name: String,
}

impl Lab {
    /// Makes a lab named `<prefix><pid>-<n>`.
    pub fn new(prefix: &str) -> Lab {
        let lab = Lab {
            inner: Arc::new(LabGuard {
                name: unique_name(prefix),
            }),
        };
        node_sh_ok(&["lab-up", lab.name()]);
        lab
    }

    /// The lab's name (its network namespace is `agentlab-<name>`).
    pub fn name(&self) -> &str {
        &self.inner.name
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        let out = node_sh(&["lab-down", &self.name]);
        if !out.status.success() {
            eprintln!(
                "node.sh lab-down {} failed: {}",
                self.name,
                text(&out.stderr)
            );
        }
    }
}

/// Builds the project's package from the test binaries (`scripts/package.sh --profile dev
/// --no-build`) with version `version` into `out`; returns its path.
pub fn build_package(version: &str, out: &Path) -> PathBuf {
    let target = crate::bin("node-agent");
    let target_dir = target.parent().and_then(Path::parent).expect("target dir");
    let run = Command::new(repo_root().join("scripts/package.sh"))
        .args([
            "--profile",
            "dev",
            "--no-build",
            "--fast",
            "--version",
            version,
            "--out",
        ])
        .arg(out)
        .env("CARGO_TARGET_DIR", target_dir)
        .stdin(Stdio::null())
        .output()
        .expect("run scripts/package.sh");
    assert!(
        run.status.success(),
        "scripts/package.sh failed ({}):\n{}",
        run.status,
        text(&run.stderr)
    );
    PathBuf::from(text(&run.stdout))
}

/// The argument vector of `redis-cli ARGS` as the admin (`/etc/agent/admin.env`) inside a node,
/// for [`Node::exec`] and [`Node::wait_output`]: after `agentctl node setup` a client without
/// credentials may run nothing (the default user is locked, docs/SECURITY.md).
pub fn admin_cli<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut all = vec![
        "sh",
        "-c",
        ". /etc/agent/admin.env && exec redis-cli --no-auth-warning --user \"$REDIS_USER\" --pass \"$REDIS_PASSWORD\" \"$@\"",
        "sh",
    ];
    all.extend_from_slice(args);
    all
}

/// A booted node; `node.sh down` on drop.
pub struct Node {
    pub name: String,
    /// With [`Node::up_in_lab`]: its lab (kept until the node is down) and `eth0`'s ADDR/PREFIX.
    lab: Option<(Lab, String)>,
}

impl Node {
    /// Boots a node named `<prefix><pid>-<n>` with the extra node-event trees `events`, and
    /// installs the project's package in it (whose postinst runs `agentctl node setup`).
    pub fn up(prefix: &str, events: &[PathBuf]) -> Node {
        Node::up_with(prefix, events, &[])
    }

    /// [`Node::up`] with the package installed but `agentctl node setup` not run
    /// (`AGENT_SETUP=no`): a stock Debian Redis, no ACL users, node-agent not started.
    pub fn up_without_setup(prefix: &str) -> Node {
        Node::up_with(prefix, &[], &[("AGENT_NODE_SETUP", "no")])
    }

    /// [`Node::up`] plugged into `lab`: the node's `eth0` has the IPv4 `address` (`ADDR/PREFIX`,
    /// e.g. `10.77.0.11/24`) on the lab's bridge, where every other node of the lab reaches it.
    pub fn up_in_lab(prefix: &str, lab: &Lab, address: &str, events: &[PathBuf]) -> Node {
        Node::up_full(
            prefix,
            events,
            &[],
            Some((lab.clone(), address.to_string())),
        )
    }

    fn up_with(prefix: &str, events: &[PathBuf], env: &[(&str, &str)]) -> Node {
        Node::up_full(prefix, events, env, None)
    }

    fn up_full(
        prefix: &str,
        events: &[PathBuf],
        env: &[(&str, &str)],
        lab: Option<(Lab, String)>,
    ) -> Node {
        let name = unique_name(prefix);
        // The guard exists before `up`, so a failed `up` is cleaned up too.
        let node = Node { name, lab };
        let target = crate::bin("node-agent")
            .parent()
            .expect("target dir")
            .to_path_buf();
        let started = Instant::now();
        let mut cmd = Command::new(script());
        cmd.args(["up", &node.name]);
        for e in events {
            cmd.arg("--events").arg(e);
        }
        if let Some((lab, address)) = &node.lab {
            cmd.args(["--lab", lab.name(), "--address", address]);
        }
        let out = cmd
            .env("AGENT_NODE_TARGET", &target)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .expect("run node.sh");
        assert!(
            out.status.success(),
            "node.sh up {} failed ({}):\n{}\n{}",
            node.name,
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        );
        eprintln!("node {} up in {:?}", node.name, started.elapsed());
        node
    }

    /// Runs `args` inside the node.
    pub fn exec(&self, args: &[&str]) -> Output {
        self.exec_with_input(args, &[])
    }

    /// Runs `args` inside the node with `input` on its stdin.
    pub fn exec_with_input(&self, args: &[&str], input: &[u8]) -> Output {
        let mut child = Command::new(script())
            .arg("exec")
            .arg(&self.name)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run node.sh exec");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(input).expect("write stdin");
        drop(stdin);
        child.wait_with_output().expect("wait node.sh exec")
    }

    /// Runs `args` inside the node, asserts success and returns its trimmed stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.exec(args);
        assert!(
            out.status.success(),
            "{args:?} in node {} failed ({}):\n{}\n{}",
            self.name,
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// `redis-cli ARGS` inside the node as the admin (`/etc/agent/admin.env`, written by
    /// `agentctl redis setup` and `agentctl node setup`); asserts success, returns trimmed stdout.
    pub fn admin_redis(&self, args: &[&str]) -> String {
        self.ok(&admin_cli(args))
    }

    /// Runs `systemctl --user -M <user>@ ARGS` in the node and returns its trimmed stdout. The user
    /// manager's bus sometimes drops a fresh connection ("Transport endpoint is not connected"); such
    /// failures are retried (10 times, 0.5 s apart); any other failure fails the test.
    pub fn user_systemctl(&self, user: &str, args: &[&str]) -> String {
        let machine = format!("{user}@");
        let mut all = vec!["systemctl", "--user", "-M", &machine];
        all.extend_from_slice(args);
        for _ in 0..10 {
            let out = self.exec(&all);
            if out.status.success() {
                return text(&out.stdout);
            }
            if !text(&out.stderr).contains("Transport endpoint is not connected") {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        self.ok(&all)
    }

    /// Powers the node off and boots it again (`node.sh reboot`): its root, homes and container
    /// storage are kept, every process starts afresh.
    pub fn reboot(&self) {
        let started = Instant::now();
        let out = Command::new(script())
            .args(["reboot", &self.name])
            .stdin(Stdio::null())
            .output()
            .expect("run node.sh reboot");
        assert!(
            out.status.success(),
            "node.sh reboot {} failed ({}):\n{}",
            self.name,
            out.status,
            text(&out.stderr)
        );
        eprintln!("node {} rebooted in {:?}", self.name, started.elapsed());
    }

    /// A power cut (`node.sh kill`): every process of the node is SIGKILLed at once, no shutdown.
    /// Root, homes, container storage and network stay; [`Node::boot`] starts it again.
    pub fn kill(&self) {
        node_sh_ok(&["kill", &self.name]);
    }

    /// Boots a killed node again (`node.sh boot`): same root, same lab address.
    pub fn boot(&self) {
        let started = Instant::now();
        node_sh_ok(&["boot", &self.name]);
        eprintln!("node {} booted in {:?}", self.name, started.elapsed());
    }

    /// A network partition (`node.sh cut`): the node's port on the lab bridge goes down, so no
    /// other node reaches it (its loopback and Redis go on). Panics for a node in no lab.
    pub fn cut(&self) {
        node_sh_ok(&["cut", &self.name]);
    }

    /// Ends [`Node::cut`] (`node.sh heal`).
    pub fn heal(&self) {
        node_sh_ok(&["heal", &self.name]);
    }

    /// The node's address in its lab without the prefix (`10.77.0.11`), or None in no lab.
    pub fn ip(&self) -> Option<&str> {
        self.lab
            .as_ref()
            .map(|(_, a)| a.split('/').next().unwrap_or(a))
    }

    /// The node's lab, if any.
    pub fn lab(&self) -> Option<&Lab> {
        self.lab.as_ref().map(|(l, _)| l)
    }

    /// Polls `args` inside the node (every 100 ms, for at most `timeout`) until it succeeds with
    /// stdout `want` (trimmed).
    pub fn wait_output(&self, args: &[&str], want: &str, timeout: Duration) {
        crate::poll(timeout, Duration::from_millis(100), || {
            let out = self.exec(args);
            let got = text(&out.stdout);
            if out.status.success() && got == want {
                return Ok(());
            }
            Err(format!(
                "{args:?} in node {} gives {got:?} ({}), not {want:?}",
                self.name, out.status
            ))
        })
    }

    /// Polls `args` inside the node (every 100 ms, for at most `timeout`) until its stdout
    /// contains `want`, whatever its exit status.
    pub fn wait_contains(&self, args: &[&str], want: &str, timeout: Duration) {
        crate::poll(timeout, Duration::from_millis(100), || {
            let got = text(&self.exec(args).stdout);
            if got.contains(want) {
                Ok(())
            } else {
                Err(format!(
                    "{args:?} in {} gives {got:?}, without {want:?}",
                    self.name
                ))
            }
        })
    }

    /// An admin's step in `/var/local/node-events/EVENT/` that, on a run's first attempt only,
    /// marks `/tmp/paused-EVENT` and sleeps 30 s: a moment for the test to kill the node-agent in
    /// ([`Node::kill_agent_in`]).
    pub fn pause_step(&self, event: &str) {
        self.pause_at(event, "05pause");
    }

    /// [`Node::pause_step`] as the step `step` (a name that sorts where the pause must be, ending
    /// in `pause`: `45pause` pauses a run between its steps 40… and 50…).
    pub fn pause_at(&self, event: &str, step: &str) {
        assert!(
            step.ends_with("pause"),
            "{step}: a pause step's name ends in pause"
        );
        let script = format!(
            "mkdir -p /var/local/node-events/{event} && cat > /var/local/node-events/{event}/{step} <<'EOF'\n\
             #!/bin/sh\n\
             if [ \"${{AGENT_ATTEMPT:-1}}\" = 1 ]; then touch /tmp/paused-{event}; sleep 30; fi\n\
             EOF\n\
             chmod 755 /var/local/node-events/{event}/{step}"
        );
        self.ok(&["sh", "-c", &script]);
    }

    /// Waits for the pause of `event` ([`Node::pause_step`]), then kills the node-agent with
    /// SIGKILL (systemd starts it again) and removes the pause step.
    pub fn kill_agent_in(&self, event: &str) {
        self.wait_contains(
            &[
                "sh",
                "-c",
                &format!("ls /tmp/paused-{event} 2>/dev/null || true"),
            ],
            &format!("/tmp/paused-{event}"),
            Duration::from_secs(240),
        );
        let pid = self.ok(&["systemctl", "show", "-P", "MainPID", "node-agent"]);
        self.ok(&["kill", "-9", &pid]);
        self.ok(&[
            "sh",
            "-c",
            &format!("rm /var/local/node-events/{event}/*pause"),
        ]);
        eprintln!("node-agent of {} killed during {event}", self.name);
    }

    /// Whether `args` fails inside the node.
    pub fn fails(&self, args: &[&str]) -> bool {
        !self.exec(args).status.success()
    }

    /// Copies the package `deb` into the node and `apt-get install`s it there (an upgrade when the
    /// node has an older one); returns apt's output, stdout and stderr.
    pub fn install_package(&self, deb: &Path) -> String {
        let bytes = std::fs::read(deb).unwrap_or_else(|e| panic!("read {}: {e}", deb.display()));
        let copied = self.exec_with_input(
            &[
                "sh",
                "-c",
                "mkdir -p /var/cache/agent-test && cat >/var/cache/agent-test/new.deb",
            ],
            &bytes,
        );
        assert!(
            copied.status.success(),
            "copy {} into the node: {copied:?}",
            deb.display()
        );
        let out = self.exec(&[
            "env",
            "DEBIAN_FRONTEND=noninteractive",
            "apt-get",
            "install",
            "-y",
            "/var/cache/agent-test/new.deb",
        ]);
        let all = format!("{}\n{}", text(&out.stdout), text(&out.stderr));
        assert!(
            out.status.success(),
            "apt-get install in node {} failed:\n{all}",
            self.name
        );
        all
    }

    /// The last lines of a system unit's journal in the node.
    pub fn journal(&self, unit: &str) -> String {
        let out = self.exec(&[
            "journalctl",
            "-u",
            unit,
            "--no-pager",
            "-n",
            "80",
            "-o",
            "short-precise",
        ]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- node-agent journal of {} ---\n{}",
                self.name,
                self.journal("node-agent")
            );
        }
        let out = Command::new(script())
            .args(["down", &self.name])
            .stdin(Stdio::null())
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!("node.sh down {} failed: {}", self.name, text(&o.stderr)),
            Err(e) => eprintln!("node.sh down {}: {e}", self.name),
        }
    }
}

/// `agentctl cluster create` on `leader` with the endpoint of `address` (`ADDR[/PREFIX]`) and
/// userspace WireGuard: its stdout (the command must succeed).
pub fn cluster_create(leader: &Node, address: &str) -> String {
    let ip = address.split('/').next().unwrap();
    let out = leader.exec(&[
        "agentctl",
        "cluster",
        "create",
        "--endpoint",
        ip,
        "--backend",
        "userspace",
    ]);
    assert!(
        out.status.success(),
        "create: {}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// `agentctl cluster token ARGS` on `leader`: the token (printed once).
pub fn cluster_token(leader: &Node, args: &[&str]) -> String {
    let mut all = vec!["agentctl", "cluster", "token"];
    all.extend_from_slice(args);
    let out = leader.exec(&all);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "token: {stdout}\n{stderr}");
    assert!(stderr.contains("printed once"), "{stderr}");
    stdout
}

/// `agentctl cluster join LEADER_IP -` on `node` with `token` on stdin, its endpoint `address`,
/// userspace WireGuard, `env` (`K=V`) set: (exit code, stdout, stderr).
pub fn cluster_join(
    node: &Node,
    leader_ip: &str,
    token: &str,
    address: &str,
    env: &[&str],
) -> (i32, String, String) {
    let ip = address.split('/').next().unwrap();
    let mut all: Vec<&str> = vec!["env"];
    all.extend_from_slice(env);
    all.extend([
        "agentctl",
        "cluster",
        "join",
        leader_ip,
        "-",
        "--endpoint",
        ip,
        "--backend",
        "userspace",
    ]);
    let out = node.exec_with_input(&all, token.as_bytes());
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    )
}
