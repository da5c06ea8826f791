//! A real node: `tests/node/node.sh` boots a Debian rootfs with `systemd-nspawn --boot` in its own
//! network namespace, with the project's binaries and `node-agent.service` installed the way a real
//! install does; the test drives it only through what a sysadmin has inside it (`systemctl`,
//! `redis-cli`, files). Needs root, `debootstrap` and `systemd-container` (see docs/NODE-HARNESS.md).
//! The first run builds the cached base rootfs (about a minute); later boots take about a second.

use std::time::Duration;

use agent_tests::node::{repo_root, Node};
use agent_tests::poll;

fn up() -> Node {
    Node::up("t", &[repo_root().join("tests/node/node-events")])
}

#[test]
fn node_agent_runs_a_published_event_in_a_booted_node() {
    let node = up();
    assert_eq!(node.ok(&["hostname"]), node.name);
    assert_eq!(node.ok(&["systemctl", "is-active", "node-agent"]), "active");
    assert_eq!(
        node.ok(&["systemctl", "is-active", "redis-server"]),
        "active"
    );

    // node-agent is Type=notify and signals READY after subscribing: it is a receiver now.
    let channel = format!("{}:hello", node.name);
    assert_eq!(node.admin_redis(&["PUBLISH", &channel, "x"]), "1");

    let content = poll(Duration::from_secs(30), Duration::from_millis(100), || {
        let out = node.exec(&["cat", "/var/lib/agent-test/hello.out"]);
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).trim().to_string());
        }
        Err("waiting for the hello step to write /var/lib/agent-test/hello.out".to_string())
    });
    assert_eq!(
        content,
        format!("data=x agent={} event=hello uid=0", node.name)
    );
}

/// The module side by hand, as module.init will do it: a Unix user with linger, and the module-agent
/// as a systemd *user* service (Type=notify) of that user, named after it, running its startup event.
#[test]
fn module_agent_runs_as_a_lingering_users_systemd_service() {
    let node = up();
    node.ok(&["useradd", "--create-home", "--shell", "/bin/bash", "hello0"]);
    // The node's default user only reads: the agent needs an ACL user of its own, as module.init's
    // redis-user step gives it.
    node.ok(&[
        "agentctl",
        "redis",
        "add-agent",
        "module/hello0",
        "--creds",
        "/home/hello0/.config/agent/redis.env",
    ]);
    node.ok(&["loginctl", "enable-linger", "hello0"]);
    node.wait_output(
        &["systemctl", "--user", "-M", "hello0@", "is-system-running"],
        "running",
        Duration::from_secs(30),
    );
    node.ok(&[
        "sh",
        "-c",
        "d=/home/hello0/.config/module-events/module.init && mkdir -p $d && \
         printf '#!/bin/sh\\necho \"$AGENT_NAME attempt $AGENT_ATTEMPT uid $(id -u)\" > \"$HOME/init.out\"\\n' > $d/10init && \
         chmod +x $d/10init && \
         printf '#!/bin/sh\\ngrep ^0:: /proc/self/cgroup > \"$HOME/init.cgroup\"\\n' > $d/20cgroup && \
         chmod +x $d/20cgroup && chown -R hello0: /home/hello0/.config",
    ]);
    // `start` returns when the agent has sent READY=1 (Type=notify).
    node.user_systemctl("hello0", &["start", "module-agent"]);
    assert_eq!(
        node.user_systemctl("hello0", &["is-active", "module-agent"]),
        "active"
    );
    node.wait_output(
        &agent_tests::node::admin_cli(&["HGET", "module/hello0/run/startup-module.init", "status"]),
        "done",
        Duration::from_secs(30),
    );
    let uid = node.ok(&["id", "-u", "hello0"]);
    assert_eq!(
        node.ok(&["cat", "/home/hello0/init.out"]),
        format!("hello0 attempt 1 uid {uid}")
    );
    // The user unit's Delegate=yes lets the agent give each run a cgroup of its own.
    let cgroup = node.ok(&["cat", "/home/hello0/init.cgroup"]);
    assert!(
        cgroup.contains("/module-agent.service/run-"),
        "a step runs in its run's cgroup: {cgroup}"
    );
    assert_eq!(
        node.admin_redis(&["PUBLISH", "hello0:module.init", "again"]),
        "1"
    );
}
