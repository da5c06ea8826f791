//! A real node: `tests/node/node.sh` boots a Debian rootfs with `systemd-nspawn --boot` in its own
//! network namespace, with the project's binaries and `node-agent.service` installed the way a real
//! install does; the test drives it only through what a sysadmin has inside it (`systemctl`,
//! `redis-cli`, files). Needs root, `debootstrap` and `systemd-container` (see docs/NODE-HARNESS.md).
//! The first run builds the cached base rootfs (about a minute); later boots take about a second.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

fn script() -> PathBuf {
    repo_root().join("tests/node/node.sh")
}

/// A booted node; `node.sh down` on drop, so a failing test leaves nothing behind.
struct Node {
    name: String,
}

impl Node {
    fn up() -> Node {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "t{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::SeqCst)
        );
        // The guard exists before `up`, so a failed `up` is cleaned up too.
        let node = Node { name };
        let target = agent_tests::bin("node-agent")
            .parent()
            .expect("target dir")
            .to_path_buf();
        let events = repo_root().join("tests/node/node-events");
        let started = Instant::now();
        let out = Command::new(script())
            .args(["up", &node.name, "--events"])
            .arg(&events)
            .env("AGENT_NODE_TARGET", &target)
            .stdin(Stdio::null())
            .output()
            .expect("run node.sh");
        assert!(
            out.status.success(),
            "node.sh up {} failed ({}):\n{}{}",
            node.name,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!(
            "node {} up in {:?}:\n{}",
            node.name,
            started.elapsed(),
            String::from_utf8_lossy(&out.stderr)
        );
        node
    }

    /// Runs `args` inside the node.
    fn exec(&self, args: &[&str]) -> Output {
        Command::new(script())
            .arg("exec")
            .arg(&self.name)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run node.sh exec")
    }

    /// Runs `args` inside the node, asserts success and returns trimmed stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.exec(args);
        assert!(
            out.status.success(),
            "{args:?} in node {} failed ({}):\n{}{}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn journal(&self, unit: &str) -> String {
        let out = self.exec(&["journalctl", "-u", unit, "--no-pager", "-n", "50"]);
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
            Ok(o) => eprintln!(
                "node.sh down {} failed: {}",
                self.name,
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("node.sh down {}: {e}", self.name),
        }
    }
}

#[test]
fn node_agent_runs_a_published_event_in_a_booted_node() {
    let node = Node::up();
    assert_eq!(node.ok(&["hostname"]), node.name);
    assert_eq!(node.ok(&["systemctl", "is-active", "node-agent"]), "active");
    assert_eq!(
        node.ok(&["systemctl", "is-active", "redis-server"]),
        "active"
    );

    // node-agent is Type=notify and signals READY after subscribing: it is a receiver now.
    let channel = format!("{}:hello", node.name);
    assert_eq!(node.ok(&["redis-cli", "PUBLISH", &channel, "x"]), "1");

    let end = Instant::now() + Duration::from_secs(30);
    let content = loop {
        let out = node.exec(&["cat", "/var/lib/agent-test/hello.out"]);
        if out.status.success() {
            break String::from_utf8_lossy(&out.stdout).trim().to_string();
        }
        assert!(Instant::now() < end, "the hello step wrote nothing in 30 s");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        content,
        format!("data=x agent={} event=hello uid=0", node.name)
    );
}

/// Polls `args` inside the node until it succeeds with stdout `want`, for at most 30 s.
fn wait_output(node: &Node, args: &[&str], want: &str) {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let out = node.exec(args);
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.success() && text == want {
            return;
        }
        assert!(
            Instant::now() < end,
            "{args:?} in node {} gave {text:?}, not {want:?}, for 30 s",
            node.name
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The module side by hand, as module.init will do it: a Unix user with linger, and the module-agent
/// as a systemd *user* service (Type=notify) of that user, named after it, running its startup event.
#[test]
fn module_agent_runs_as_a_lingering_users_systemd_service() {
    let node = Node::up();
    node.ok(&["useradd", "--create-home", "--shell", "/bin/bash", "hello0"]);
    node.ok(&["loginctl", "enable-linger", "hello0"]);
    wait_output(
        &node,
        &["systemctl", "--user", "-M", "hello0@", "is-system-running"],
        "running",
    );
    node.ok(&[
        "sh",
        "-c",
        "d=/home/hello0/.config/module-events/module.init && mkdir -p $d && \
         printf '#!/bin/sh\\necho \"$AGENT_NAME attempt $AGENT_ATTEMPT uid $(id -u)\" > \"$HOME/init.out\"\\n' > $d/10init && \
         chmod +x $d/10init && chown -R hello0: /home/hello0/.config",
    ]);
    // `start` returns when the agent has sent READY=1 (Type=notify).
    node.ok(&[
        "systemctl",
        "--user",
        "-M",
        "hello0@",
        "start",
        "module-agent",
    ]);
    assert_eq!(
        node.ok(&[
            "systemctl",
            "--user",
            "-M",
            "hello0@",
            "is-active",
            "module-agent"
        ]),
        "active"
    );
    wait_output(
        &node,
        &[
            "redis-cli",
            "HGET",
            "module/hello0/run/startup-module.init",
            "status",
        ],
        "done",
    );
    let uid = node.ok(&["id", "-u", "hello0"]);
    assert_eq!(
        node.ok(&["cat", "/home/hello0/init.out"]),
        format!("hello0 attempt 1 uid {uid}")
    );
    assert_eq!(
        node.ok(&["redis-cli", "PUBLISH", "hello0:module.init", "again"]),
        "1"
    );
}
