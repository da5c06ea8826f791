//! `agentctl module move` on a real two-node cluster (issue 15): hello moved from the leader to
//! the member through a REST repository (`rclone serve restic` on the leader's lab address) while
//! a request loop on the leader asks both nodes for its page; the node-agents of both nodes
//! killed with SIGKILL during the move (taking the old copy down, and the restore on the target),
//! the move goes on; never two copies answering, the downtime printed; then a move back whose
//! restore fails brings hello back on the node it was on, its agent working; the downtime of a
//! move against a restart; an SFTP repository (`rclone serve sftp`) restored on the other node.
//! Needs root (docs/NODE-HARNESS.md).

use std::time::Duration;

use agent_tests::node::{agentctl, cluster_create, cluster_join, cluster_token, text, Lab, Node};

const BUILD: &str = "/usr/share/agent/examples/modules/build.sh";

/// `module-sdk secret ARGS` as module `id`'s user on `node`, with its own Redis credentials;
/// `input` on stdin. Its stdout.
fn module_secret(node: &Node, id: &str, args: &str, input: &[u8]) -> String {
    let script = format!(
        ". ~/.config/agent/redis.env && REDIS_URL=\"redis://$REDIS_USER:$REDIS_PASSWORD@127.0.0.1:6379\" \
         module-sdk secret --module {id} --identity ~/.config/agent/secret.key {args}"
    );
    let out = node.exec_with_input(&["runuser", "-u", id, "--", "sh", "-c", &script], input);
    assert!(
        out.status.success(),
        "module-sdk secret {args} as {id} on {}: {}",
        node.name,
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Starts a bounded request loop on `node`: every 50 ms, the page of both addresses' port 8080,
/// until [`stop_probe`]; each sample records whether each answered with `page`.
fn start_probe(node: &Node, addresses: [&str; 2], page: &str) {
    let [a1, a2] = addresses;
    node.ok(&["sh", "-c", "rm -f /tmp/probe.log; touch /tmp/probe-on"]);
    let probe = format!(
        "while [ -e /tmp/probe-on ]; do t=$(date +%s.%N); \
         a=$(curl -s -m 1 http://{a1}:8080/ | grep -c '{page}'); \
         b=$(curl -s -m 1 http://{a2}:8080/ | grep -c '{page}'); \
         echo \"$t $a $b\" >> /tmp/probe.log; sleep 0.05; done"
    );
    node.ok(&[
        "systemd-run",
        "--unit",
        "probe",
        "--collect",
        "sh",
        "-c",
        &probe,
    ]);
    node.wait_contains(&["cat", "/tmp/probe.log"], " 1", Duration::from_secs(30));
}

/// Ends the loop: its samples, (time, first address answered, second answered).
fn stop_probe(node: &Node) -> Vec<(f64, bool, bool)> {
    node.ok(&["rm", "/tmp/probe-on"]);
    node.wait_contains(
        &["sh", "-c", "systemctl is-active probe || true"],
        "inactive",
        Duration::from_secs(10),
    );
    node.ok(&["cat", "/tmp/probe.log"])
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.parse().ok()?, w.next()? == "1", w.next()? == "1"))
        })
        .collect()
}

/// The longest time without an answer from either address, after the first answer; checks
/// that the two never answered in one sample (two copies running).
fn downtime(samples: &[(f64, bool, bool)]) -> f64 {
    assert!(
        samples.iter().all(|(_, a, b)| !(*a && *b)),
        "two copies answered"
    );
    let answered: Vec<f64> = samples.iter().filter(|s| s.1 || s.2).map(|s| s.0).collect();
    answered
        .windows(2)
        .map(|w| w[1] - w[0])
        .fold(0.0f64, f64::max)
}

/// `agentctl module move ID TO` on `node`, its output shown: (exit code, stdout, stderr).
fn move_module(node: &Node, id: &str, to: &str) -> (i32, String, String) {
    let (code, out, err) = agentctl(node, &["module", "move", id, to]);
    eprintln!("--- agentctl module move {id} {to} (exit {code}) ---\n{out}\n{err}");
    (code, out, err)
}

#[test]
fn hello_moves_between_nodes_through_agent_kills_and_a_failed_move_brings_it_back() {
    let lab = Lab::new("mv");
    let (a1, a2) = ("10.77.5.11", "10.77.5.12");
    let n1 = Node::up_in_lab("ma", &lab, &format!("{a1}/24"), &[]);
    let n2 = Node::up_in_lab("mb", &lab, &format!("{a2}/24"), &[]);
    cluster_create(&n1, a1);
    let token = cluster_token(&n1, &[]);
    let (code, out, err) = cluster_join(&n2, a1, &token, a2, &[]);
    assert_eq!(code, 0, "join: {out}\n{err}");
    // The images on both nodes (no registry here: the target takes the snapshot's image from its
    // own storage).
    n1.ok(&[BUILD]);
    n2.ok(&[BUILD]);
    // Every member has the cluster's backup key from its join, though no repository existed then.
    let recipient = n1.admin_redis(&["HGET", "cluster/backup", "recipient"]);
    assert!(recipient.starts_with("age1"), "{recipient}");
    for n in [&n1, &n2] {
        let public = n.ok(&["grep", "^# public key:", "/etc/agent/backup.key"]);
        assert_eq!(public, format!("# public key: {recipient}"), "{}", n.name);
    }

    // A REST repository on the leader's lab address, which both reach.
    n1.ok(&[
        "systemd-run",
        "--unit",
        "rest-server",
        "rclone",
        "serve",
        "restic",
        "--addr",
        &format!("{a1}:8000"),
        "--user",
        "bk",
        "--pass",
        "s3cret-move",
        "/srv/rest",
    ]);
    n2.wait_output(
        &[
            "sh",
            "-c",
            &format!("curl -s -o /dev/null -w '%{{http_code}}' http://{a1}:8000/ || true"),
        ],
        "401",
        Duration::from_secs(30),
    );
    let out = n1.exec_with_input(
        &[
            "agentctl",
            "backup",
            "repo",
            "add",
            "rest",
            &format!("rest:http://{a1}:8000/mv"),
            "--credentials-file",
            "-",
            "--default",
        ],
        b"RESTIC_REST_USERNAME=bk\nRESTIC_REST_PASSWORD=s3cret-move\n",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));

    let (code, id, err) = agentctl(
        &n1,
        &[
            "module",
            "add",
            "--env",
            "PORT=8080",
            "localhost/hello:latest",
        ],
    );
    assert_eq!(code, 0, "module add: {err}");
    let id = id.lines().next().unwrap().to_string();
    let module = format!("module/{id}");
    assert_eq!(
        agentctl(&n1, &["run", &module, "configure", "moving page"]).0,
        0
    );

    // A secret of the module's own: it moves with it (its identity travels in the snapshot,
    // encrypted to the cluster's backup key).
    module_secret(&n1, &id, "set token", b"s3cret-token-value");

    // A bounded request loop on the leader asks both nodes.
    start_probe(&n1, [a1, a2], "moving page");

    // The move, with the old node's agent killed while it takes the old copy down and the
    // target's while it restores.
    n1.pause_step("module.detach");
    n2.pause_step("restore");
    let (code, out, err) = std::thread::scope(|s| {
        let moving = s.spawn(|| move_module(&n1, &id, &n2.name));
        n1.kill_agent_in("module.detach");
        n2.kill_agent_in("restore");
        moving.join().unwrap()
    });
    assert_eq!(code, 0, "move:\n{out}\n{err}\n{}", n2.journal("node-agent"));
    assert!(
        out.contains(&format!("{id} moved from {} to {}", n1.name, n2.name)),
        "{out}"
    );
    assert!(err.contains("was down for"), "{err}");
    // Never two copies answering; the downtime is the longest time without an answer.
    let all = stop_probe(&n1);
    assert!(all.first().is_some_and(|s| s.1), "the leader served first");
    assert!(
        all.last().is_some_and(|s| s.2),
        "the member serves at the end"
    );
    eprintln!(
        "downtime of the move with two node-agent kills: {:.2} s ({} samples)",
        downtime(&all),
        all.len()
    );

    // The module is the member's now, with its id, settings, routes and ACL user; nothing of it
    // is left on the leader.
    assert_eq!(
        n1.admin_redis(&["HEXISTS", &format!("node/{}/modules", n1.name), &id]),
        "0"
    );
    assert_eq!(
        n1.admin_redis(&["HEXISTS", &format!("node/{}/modules", n2.name), &id]),
        "1"
    );
    assert!(n1.fails(&["id", &id]));
    assert_eq!(
        n1.admin_redis(&["HGET", &format!("{module}/module.env"), "PORT"]),
        "8080"
    );
    assert!(n1
        .admin_redis(&["HKEYS", &format!("{module}/routes")])
        .contains("web"));
    assert!(n1
        .admin_redis(&["ACL", "LIST"])
        .contains(&format!("user module-{id} ")));
    assert_eq!(
        n1.admin_redis(&["EXISTS", &format!("cluster/move/{id}")]),
        "0"
    );
    assert_eq!(
        module_secret(&n2, &id, "get token", b""),
        "s3cret-token-value"
    );
    // Its agent on the member takes events (its Redis credentials are the new copy's).
    assert_eq!(
        agentctl(&n1, &["run", &module, "configure", "moved page"]).0,
        0
    );
    n2.wait_contains(
        &["curl", "-s", "http://127.0.0.1:8080/"],
        "moved page",
        Duration::from_secs(10),
    );

    // A move back whose restore fails on the leader: hello comes back on the member, with its
    // page, and takes events there.
    n1.ok(&[
        "sh",
        "-c",
        "mkdir -p /var/local/node-events/restore && printf '#!/bin/sh\\necho broken on purpose >&2\\nexit 1\\n' \
         > /var/local/node-events/restore/07broken && chmod 755 /var/local/node-events/restore/07broken",
    ]);
    let (code, _, err) = move_module(&n2, &id, &n1.name);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("{id} runs on {} again", n2.name)),
        "{err}"
    );
    assert_eq!(
        n1.admin_redis(&["HEXISTS", &format!("node/{}/modules", n1.name), &id]),
        "0"
    );
    assert_eq!(
        n1.admin_redis(&["HEXISTS", &format!("node/{}/modules", n2.name), &id]),
        "1"
    );
    assert!(n1.fails(&["id", &id]));
    assert_eq!(
        n1.admin_redis(&["EXISTS", &format!("cluster/move/{id}")]),
        "0"
    );
    assert_eq!(
        n2.ok(&["curl", "-sS", "--max-time", "5", "http://127.0.0.1:8080/"]),
        "<h1>moved page</h1>"
    );
    assert_eq!(
        agentctl(&n2, &["run", &module, "configure", "back page"]).0,
        0
    );
    n2.wait_contains(
        &["curl", "-s", "http://127.0.0.1:8080/"],
        "back page",
        Duration::from_secs(10),
    );

    // The downtime of a move, and of a restart of hello's container on its node (the floor).
    n1.ok(&["rm", "/var/local/node-events/restore/07broken"]);
    start_probe(&n1, [a1, a2], "back page");
    let (code, _, err) = move_module(&n2, &id, &n1.name);
    assert_eq!(code, 0, "{err}");
    let moved = downtime(&stop_probe(&n1));
    start_probe(&n1, [a1, a2], "back page");
    n1.user_systemctl(&id, &["restart", "hello-httpd.service"]);
    let restarted = downtime(&stop_probe(&n1));
    eprintln!(
        "BENCH move downtime {moved:.2} s; restart downtime {restarted:.2} s; ratio {:.1}",
        moved / restarted.max(0.05)
    );

    // An SFTP repository (OpenSSH's client on both nodes, `rclone serve sftp` on the leader with
    // both nodes' keys): a backup there on the leader, restored on the member under a new id.
    let mut keys = String::new();
    for n in [&n1, &n2] {
        n.ok(&[
            "sh",
            "-c",
            &format!(
                "mkdir -p -m 700 /root/.ssh && ssh-keygen -q -t ed25519 -N '' -f /root/.ssh/id_ed25519 && \
                 printf 'Host backuphost\\n  HostName {a1}\\n  Port 2022\\n  User bk\\n  StrictHostKeyChecking accept-new\\n' \
                 > /root/.ssh/config"
            ),
        ]);
        keys += &n.ok(&["cat", "/root/.ssh/id_ed25519.pub"]);
        keys.push('\n');
    }
    n1.exec_with_input(&["sh", "-c", "cat > /root/sftp-keys"], keys.as_bytes());
    n1.ok(&[
        "systemd-run",
        "--unit",
        "sftp-server",
        "rclone",
        "serve",
        "sftp",
        "--addr",
        &format!("{a1}:2022"),
        "--authorized-keys",
        "/root/sftp-keys",
        "/srv/sftp",
    ]);
    n2.wait_contains(
        &[
            "sh",
            "-c",
            &format!("timeout 2 bash -c '</dev/tcp/{a1}/2022' && echo open || true"),
        ],
        "open",
        Duration::from_secs(30),
    );
    let (code, _, err) = agentctl(
        &n1,
        &["backup", "repo", "add", "sftp", "sftp:backuphost:/mv"],
    );
    assert_eq!(code, 0, "repo add sftp: {err}");
    let (code, _, err) = agentctl(&n1, &["backup", "run", &id, "--repo", "sftp"]);
    assert_eq!(code, 0, "backup to sftp: {err}");
    let (code, out, err) = agentctl(
        &n1,
        &[
            "backup",
            "restore",
            &id,
            "--repo",
            "sftp",
            "--as",
            "hellosftp",
            "--node",
            &n2.name,
            "--env",
            "PORT=8086",
        ],
    );
    assert_eq!(code, 0, "restore from sftp on the member: {err}");
    assert_eq!(out, "hellosftp");
    assert_eq!(
        n2.ok(&["curl", "-sS", "--max-time", "5", "http://127.0.0.1:8086/"]),
        "<h1>back page</h1>"
    );
    assert_eq!(
        module_secret(&n2, "hellosftp", "get token", b""),
        "s3cret-token-value"
    );
    assert_eq!(
        module_secret(&n1, &id, "get token", b""),
        "s3cret-token-value"
    );
    // The secret never reached a journal, nor an identity a file outside the module's home.
    for n in [&n1, &n2] {
        let hits = n.ok(&[
            "sh",
            "-c",
            "journalctl -o cat | grep -c s3cret-token-value || true",
        ]);
        assert_eq!(hits, "0", "{}", n.name);
        let staged = n.ok(&[
            "sh",
            "-c",
            "ls /home/.agent-backup/*/identity 2>/dev/null || true",
        ]);
        assert_eq!(staged, "", "{}", n.name);
    }

    // Refused before anything is done: to the node it is on, to a node that is not one.
    let (code, _, err) = agentctl(&n1, &["module", "move", &id, &n1.name]);
    assert_eq!(code, 1);
    assert!(err.contains("already"), "{err}");
    let (code, _, err) = agentctl(&n1, &["module", "move", &id, "nosuchnode"]);
    assert_eq!(code, 1);
    assert!(err.contains("not a node of this cluster"), "{err}");
}
