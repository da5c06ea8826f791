//! The Debian package on a real Debian 13 node (issue 12): what it installs and where, a fresh
//! install that is durable and locked down, an upgrade while a module serves and an event waits,
//! `apt remove` that keeps every module, and `apt purge` that refuses while modules are installed.
//! Every node of the harness is installed from this same package (tests/node/node.sh).

use std::time::Duration;

use agent_tests::node::{build_package, Node};
use agent_tests::poll;

const PAGE_URL: &str = "http://127.0.0.1:8080/";
const APT_REMOVE: &[&str] = &[
    "env",
    "DEBIAN_FRONTEND=noninteractive",
    "apt-get",
    "remove",
    "-y",
    "agent",
];
const APT_PURGE: &[&str] = &[
    "env",
    "DEBIAN_FRONTEND=noninteractive",
    "apt-get",
    "purge",
    "-y",
    "agent",
];

/// The `slow` node event: 3 s, then its data and attempt appended to a log.
fn slow_events() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let step = dir.path().join("slow/10sleep");
    std::fs::create_dir_all(step.parent().unwrap()).unwrap();
    std::fs::write(
        &step,
        "#!/bin/sh\nsleep 3\necho \"$1 $AGENT_ATTEMPT\" >>/var/tmp/slow.log\n",
    )
    .unwrap();
    std::fs::set_permissions(&step, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    dir
}

fn served(node: &Node, page: &str) {
    poll(Duration::from_secs(60), Duration::from_millis(200), || {
        let out = node.exec(&["curl", "-sS", PAGE_URL]);
        let got = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (got == page)
            .then_some(())
            .ok_or(format!("page is {got:?}"))
    });
}

/// The main pid of module `id`'s agent and the binary it runs.
fn module_agent(node: &Node, id: &str) -> (String, String) {
    let pid = node.user_systemctl(id, &["show", "-P", "MainPID", "module-agent.service"]);
    let exe = node.ok(&["readlink", &format!("/proc/{pid}/exe")]);
    (pid, exe)
}

fn node_agent(node: &Node) -> (String, String) {
    let pid = node.ok(&["systemctl", "show", "-P", "MainPID", "node-agent"]);
    let exe = node.ok(&["readlink", &format!("/proc/{pid}/exe")]);
    (pid, exe)
}

#[test]
fn the_package_installs_upgrades_removes_and_purges_without_losing_a_module_or_an_event() {
    let events = slow_events();
    let node = Node::up("p", &[events.path().to_path_buf()]);

    // What the package put where (Debian policy: /usr, config in /etc/agent).
    let version = node.ok(&["dpkg-query", "-W", "-f", "${Version}", "agent"]);
    assert!(
        version.contains("+git"),
        "the version names no commit: {version}"
    );
    for f in [
        "/usr/bin/node-agent",
        "/usr/bin/module-agent",
        "/usr/bin/agentctl",
        "/usr/bin/module-sdk",
        "/usr/lib/systemd/system/node-agent.service",
        "/usr/lib/systemd/user/module-agent.service",
        "/usr/share/agent/node-events/module.init/10create-user",
        "/usr/share/agent/node-events/module.remove/10stop-agent",
        "/usr/share/agent/examples/modules/build.sh",
        "/usr/share/doc/agent/README.md",
        "/usr/share/doc/agent/PACKAGING.md",
        "/usr/share/man/man1/agentctl.1.gz",
        "/usr/share/man/man1/agentctl-node-setup.1.gz",
        "/usr/share/man/man1/module-sdk.1.gz",
        "/usr/share/man/man1/node-agent.1.gz",
        "/usr/share/man/man1/module-agent.1.gz",
        "/usr/share/bash-completion/completions/agentctl",
        "/usr/share/zsh/vendor-completions/_module-sdk",
        "/usr/share/fish/vendor_completions.d/node-agent.fish",
        "/etc/agent/signing.conf",
    ] {
        node.ok(&["test", "-s", f]);
    }
    // The node's signature settings are a conffile: an admin's change survives upgrades.
    assert!(
        node.ok(&["cat", "/var/lib/dpkg/info/agent.conffiles"])
            .contains("/etc/agent/signing.conf"),
        "signing.conf is not a conffile"
    );
    assert_eq!(
        node.ok(&[
            "readlink",
            "/usr/share/agent/node-events/module.init.rollback/10stop-agent"
        ]),
        "../module.remove/10stop-agent",
        "the rollback steps stay links to the remove steps"
    );
    let man = node.ok(&[
        "sh",
        "-c",
        "zcat /usr/share/man/man1/agentctl-node-setup.1.gz",
    ]);
    assert!(man.contains(".TH agentctl-node-setup 1"), "{man}");
    assert!(man.contains("appendfsync"), "{man}");
    let bash = node.ok(&["cat", "/usr/share/bash-completion/completions/agentctl"]);
    assert!(bash.contains("complete -F"), "not a bash completion script");
    node.ok(&["test", "!", "-e", "/usr/local/bin/node-agent"]);

    // The fresh install is set up: node-agent active, AOF on, the default user locked.
    assert_eq!(node.ok(&["systemctl", "is-active", "node-agent"]), "active");
    assert_eq!(
        node.ok(&["systemctl", "is-enabled", "node-agent"]),
        "enabled"
    );
    assert_eq!(
        node.admin_redis(&["CONFIG", "GET", "appendonly"]),
        "appendonly\nyes"
    );
    let refused = node.exec(&["redis-cli", "SET", "x", "y"]);
    assert!(
        String::from_utf8_lossy(&refused.stdout).contains("NOAUTH"),
        "{refused:?}"
    );
    let status = node.ok(&["agentctl", "node", "status"]);
    assert!(
        status.contains(&format!("package:     agent {version}")),
        "{status}"
    );
    assert!(
        node.ok(&["agentctl", "node", "setup"])
            .contains("nothing changed"),
        "the postinst's setup left something to do"
    );

    // hello installed the seed's way, through redis-cli (as the admin: the default user only reads).
    node.ok(&["/usr/share/agent/examples/modules/build.sh"]);
    node.admin_redis(&[
        "HSET",
        "module/hello1/module.env",
        "EVENTS_IMAGE",
        "localhost/hello:latest",
        "PORT",
        "8080",
    ]);
    node.admin_redis(&["SET", "before-purge", "kept"]);
    let init = format!("{}:module.init", node.name);
    assert_eq!(node.admin_redis(&["PUBLISH", &init, "hello1"]), "1");
    let page = "<h1>hello from hello1</h1>";
    served(&node, page);

    // The upgrade: requests on loopback throughout, and a long event running with another queued
    // behind it (node-agent runs one at a time).
    let newer = tempfile::tempdir().expect("tempdir");
    let upgrade = build_package(&format!("{version}+up"), newer.path());
    let before_module = module_agent(&node, "hello1");
    let before_node = node_agent(&node);
    node.ok(&[
        "systemd-run",
        "--unit",
        "requests",
        "sh",
        "-c",
        "for i in $(seq 1 150); do curl -sf -o /dev/null --max-time 2 http://127.0.0.1:8080/ \
         && echo ok || echo FAIL; sleep 0.05; done >/var/tmp/requests.log; touch /var/tmp/requests.done",
    ]);
    let slow = format!("{}:slow", node.name);
    assert_eq!(node.admin_redis(&["PUBLISH", &slow, "running"]), "1");
    assert_eq!(node.admin_redis(&["PUBLISH", &slow, "queued"]), "1");
    let apt = node.install_package(&upgrade);
    assert!(
        apt.contains("nothing changed"),
        "the upgrade's setup changed things:\n{apt}"
    );
    let after_node = node_agent(&node);
    assert_ne!(
        after_node.0, before_node.0,
        "node-agent was not restarted:\n{apt}"
    );
    assert_eq!(after_node.1, "/usr/bin/node-agent");
    let after_module = module_agent(&node, "hello1");
    assert_ne!(
        after_module.0, before_module.0,
        "module-agent was not restarted:\n{apt}"
    );
    assert_eq!(after_module.1, "/usr/bin/module-agent");
    poll(Duration::from_secs(60), Duration::from_millis(200), || {
        node.exec(&["test", "-e", "/var/tmp/requests.done"])
            .status
            .success()
            .then_some(())
            .ok_or("waiting for the requests to end".to_string())
    });
    let requests = node.ok(&["cat", "/var/tmp/requests.log"]);
    assert_eq!(
        requests.lines().filter(|l| *l == "ok").count(),
        150,
        "{requests}"
    );
    let slow_log = poll(Duration::from_secs(60), Duration::from_millis(200), || {
        let log = node.ok(&["sh", "-c", "cat /var/tmp/slow.log 2>/dev/null || true"]);
        log.contains("queued")
            .then(|| log.clone())
            .ok_or(format!("the queued event has not run: {log:?}"))
    });
    assert_eq!(
        slow_log
            .lines()
            .filter(|l| l.starts_with("queued "))
            .count(),
        1,
        "{slow_log}"
    );
    assert!(slow_log.contains("running "), "{slow_log}");
    let second = format!("{version}+up");
    assert_eq!(
        node.ok(&["dpkg-query", "-W", "-f", "${Version}", "agent"]),
        second
    );

    // apt remove: the agents stop, the module and its data stay (and keep serving).
    node.ok(APT_REMOVE);
    assert!(node.fails(&["systemctl", "is-active", "node-agent"]));
    assert!(
        node.fails(&["pgrep", "-x", "module-agent"]),
        "a module-agent still runs"
    );
    node.ok(&["id", "hello1"]);
    node.ok(&["test", "-s", "/etc/agent/admin.env"]);
    assert_eq!(
        node.admin_redis(&["HGET", "module/hello1/module.env", "PORT"]),
        "8080"
    );
    served(&node, page);

    // Installed again: everything runs as before.
    node.install_package(&upgrade);
    assert_eq!(node.ok(&["systemctl", "is-active", "node-agent"]), "active");
    assert_eq!(module_agent(&node, "hello1").1, "/usr/bin/module-agent");
    served(&node, page);
    let status = poll(Duration::from_secs(30), Duration::from_millis(300), || {
        let s = node.ok(&["agentctl", "node", "status"]);
        s.contains("hello1           agent alive")
            .then(|| s.clone())
            .ok_or(format!("waiting for hello1's agent:\n{s}"))
    });
    assert!(status.contains("node-agent:  alive"), "{status}");

    // dpkg --purge with a module installed: refused before anything is removed.
    let purge = node.exec(&["dpkg", "--purge", "agent"]);
    assert!(
        !purge.status.success(),
        "dpkg --purge went through: {purge:?}"
    );
    assert!(
        String::from_utf8_lossy(&purge.stderr).contains("refusing to purge"),
        "{purge:?}"
    );
    node.ok(&["test", "-x", "/usr/bin/agentctl"]);
    assert_eq!(node.ok(&["systemctl", "is-active", "node-agent"]), "active");

    // apt purge with a module installed: apt removes first (agents stopped, module kept), then
    // the purge is refused, the configuration kept.
    let purge = node.exec(APT_PURGE);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&purge.stdout),
        String::from_utf8_lossy(&purge.stderr)
    );
    assert!(!purge.status.success(), "purge went through:\n{said}");
    assert!(
        said.contains("refusing to purge") && said.contains("hello1"),
        "{said}"
    );
    node.ok(&["test", "-s", "/etc/agent/admin.env"]);
    node.ok(&["test", "-s", "/etc/redis/agent.conf"]);
    served(&node, page);

    // Reinstalled, the module removed, then the purge goes through and gives Redis back to Debian.
    node.install_package(&upgrade);
    node.ok(&["agentctl", "module", "remove", "hello1"]);
    let purge = node.ok(APT_PURGE);
    assert!(purge.contains("purged"), "{purge}");
    for gone in [
        "/etc/agent",
        "/etc/redis/agent.conf",
        "/etc/systemd/system/redis-server.service.d/50-agent.conf",
        "/usr/bin/agentctl",
    ] {
        node.ok(&["test", "!", "-e", gone]);
    }
    poll(Duration::from_secs(30), Duration::from_millis(200), || {
        let out = node.exec(&["redis-cli", "GET", "before-purge"]);
        let got = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (got == "kept")
            .then_some(())
            .ok_or(format!("before-purge is {got:?}"))
    });
    assert_eq!(
        node.ok(&["redis-cli", "CONFIG", "GET", "appendonly"]),
        "appendonly\nno",
        "Redis is back on Debian's configuration"
    );

    // Installed and purged again and again in quick succession: every install sets the node up
    // (Redis is restarted twice per round, more often than systemd's default start rate allows).
    for round in 1..=3 {
        let apt = node.install_package(&upgrade);
        assert!(!apt.contains("node setup failed"), "round {round}:\n{apt}");
        assert_eq!(
            node.ok(&["systemctl", "is-active", "node-agent"]),
            "active",
            "round {round}:\n{apt}"
        );
        node.ok(APT_PURGE);
        assert_eq!(
            node.ok(&["systemctl", "is-active", "redis-server"]),
            "active",
            "round {round}"
        );
    }
}
