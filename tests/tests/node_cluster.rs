//! The cluster on real Debian 13 nodes in one lab network (issue 13): `agentctl cluster create` on
//! the first node, joins with tokens over a real WireGuard full mesh (wireguard-go), the local
//! Redis of each member a replica of the leader's, events crossing nodes; refused joins that leave
//! nothing; a join killed after each of its steps and run again.

use std::path::PathBuf;
use std::time::Duration;

use agent_tests::node::{cluster_create as create, cluster_join as join, cluster_token as token};
use agent_tests::node::{text, Lab, Node};
use agent_tests::poll;
use core_events::cluster::JoinToken;

/// (exit code, stdout, stderr) of a command in the node.
fn run(node: &Node, args: &[&str]) -> (i32, String, String) {
    let out = node.exec(args);
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    )
}

/// A node event `hello.cluster` whose step records where it ran.
fn events() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let ev = dir.path().join("hello.cluster");
    std::fs::create_dir_all(&ev).unwrap();
    let step = ev.join("10where");
    std::fs::write(
        &step,
        "#!/bin/sh\necho \"ran on $(hostname) with $1\"\nhostname > /tmp/hello-cluster-ran\n\
         echo \"$1\" >> /tmp/hello-cluster-data\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&step, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.path().to_path_buf();
    (dir, path)
}

/// The password hash Redis keeps for `user` on `node`'s own Redis (`ACL GETUSER`), if any.
fn user_hash(node: &Node, user: &str) -> Option<String> {
    let out = node.admin_redis(&["ACL", "GETUSER", user]);
    let mut lines = out.lines();
    lines.find(|l| l.trim() == "passwords")?;
    lines
        .next()
        .map(|h| h.trim().to_string())
        .filter(|h| h.len() == 64)
}

/// Waits until every node's Redis has `user` with one and the same password (Some) or none has it.
fn wait_user_everywhere(nodes: &[&Node], user: &str, present: bool) {
    poll(Duration::from_secs(30), Duration::from_millis(500), || {
        let hashes: Vec<Option<String>> = nodes.iter().map(|n| user_hash(n, user)).collect();
        let same = hashes.windows(2).all(|w| w[0] == w[1]);
        if same && hashes[0].is_some() == present {
            Ok(())
        } else {
            Err(format!(
                "{user} on {:?}: {hashes:?}",
                nodes.iter().map(|n| &n.name).collect::<Vec<_>>()
            ))
        }
    });
}

fn ping(from: &Node, to: &str) -> bool {
    from.exec(&["ping", "-c1", "-W2", to]).status.success()
}

fn wait_ping(from: &Node, to: &str) {
    poll(Duration::from_secs(30), Duration::from_millis(500), || {
        if ping(from, to) {
            Ok(())
        } else {
            Err(format!("{} cannot ping {to}", from.name))
        }
    })
}

#[test]
fn create_and_two_joins_make_a_full_mesh_and_events_cross_it() {
    let (_keep, ev) = events();
    let lab = Lab::new("cl");
    let n1 = Node::up_in_lab("ca", &lab, "10.77.0.11/24", std::slice::from_ref(&ev));
    let n2 = Node::up_in_lab("cb", &lab, "10.77.0.12/24", std::slice::from_ref(&ev));
    let n3 = Node::up_in_lab("cc", &lab, "10.77.0.13/24", std::slice::from_ref(&ev));

    let out = create(&n1, "10.77.0.11");
    assert!(out.contains("is the leader of a new cluster"), "{out}");
    // A second create changes nothing.
    let again = create(&n1, "10.77.0.11");
    assert!(again.contains("nothing to do"), "{again}");
    let status = n1.ok(&["agentctl", "node", "status"]);
    assert!(
        status.contains("cluster:     the leader; VPN 10.5.4.1"),
        "{status}"
    );
    assert!(status.contains("userspace backend"), "{status}");

    // A token is printed once; the leader keeps a hash of its secret, never the secret.
    let t2 = token(&n1, &[]);
    let parsed = JoinToken::decode(&t2).expect("a join token");
    let secret = parsed.password();
    let dump = n1.admin_redis(&["--scan"]);
    for key in dump.lines() {
        let kind = n1.admin_redis(&["TYPE", key]);
        if kind == "hash" {
            let v = n1.admin_redis(&["HGETALL", key]);
            assert!(!v.contains(&secret), "the token's secret is in {key}");
        }
    }
    let user = n1.admin_redis(&["ACL", "GETUSER", &format!("join-{}", parsed.id)]);
    assert!(
        !user.contains(&secret),
        "ACL GETUSER shows the secret:\n{user}"
    );

    let (code, out, err) = join(&n2, "10.77.0.11", &t2, "10.77.0.12", &[]);
    assert_eq!(
        code,
        0,
        "join n2:\n{out}\n{err}\n{}",
        n1.journal("node-agent")
    );
    assert!(out.contains("joined:"), "{out}");
    let t3 = token(&n1, &[]);
    let (code, out, err) = join(&n3, "10.77.0.11", &t3, "10.77.0.13", &[]);
    assert_eq!(code, 0, "join n3:\n{out}\n{err}");

    // Every node's user on every node's Redis, with the same password: any of them may lead
    // after a failover (ACL users are not replicated; cluster/users is).
    for n in [&n1, &n2, &n3] {
        wait_user_everywhere(&[&n1, &n2, &n3], &format!("node-{}", n.name), true);
    }

    // The full mesh: the two members reach each other directly, not through the leader.
    wait_ping(&n2, "10.5.4.3");
    wait_ping(&n3, "10.5.4.2");
    // Every node has the two others as peers (the leader also the used tokens, until they expire).
    let names = [&n1, &n2, &n3].map(|n| n.name.clone());
    for n in [&n1, &n2, &n3] {
        poll(Duration::from_secs(20), Duration::from_millis(500), || {
            let st = n.ok(&["node-agent", "vpn", "status", "--json"]);
            let v: serde_json::Value = serde_json::from_str(&st).unwrap();
            let mut peers: Vec<String> = v["peers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p["node"].as_str().map(String::from))
                .filter(|p| !p.starts_with("join token"))
                .collect();
            peers.sort();
            let mut want: Vec<String> = names.iter().filter(|m| **m != n.name).cloned().collect();
            want.sort();
            if peers == want {
                Ok(())
            } else {
                Err(format!("peers of {}: {st}", n.name))
            }
        });
    }
    // The cluster's edge key: made by the leader at its first admit and given to every member
    // in the encrypted answer, its recipient in cluster/edge: every node opens the certificates
    // whichever node stores them (docs/EDGE.md).
    let recipient = n1.admin_redis(&["HGET", "cluster/edge", "recipient"]);
    assert!(recipient.trim().starts_with("age1"), "{recipient}");
    for n in [&n1, &n2, &n3] {
        let public = n.ok(&["grep", "^# public key:", "/etc/agent/edge.key"]);
        assert_eq!(
            public.trim(),
            format!("# public key: {}", recipient.trim()),
            "the edge key of {}",
            n.name
        );
        let mode = n.ok(&["stat", "-c", "%a %U", "/etc/agent/edge.key"]);
        assert_eq!(mode.trim(), "600 root", "{}", n.name);
    }
    // The requests and answers (with their encrypted passwords) are gone from the leader.
    let left = n1.admin_redis(&["--scan", "--pattern", "cluster/join/*/*"]);
    assert_eq!(left, "", "join keys left on the leader");
    let st = n1.ok(&["agentctl", "cluster", "status"]);
    for n in [&n1, &n2, &n3] {
        assert!(st.contains(&n.name), "{st}");
    }

    // An event published on the leader runs on node 3; its record is read on node 2's replica.
    let receivers = n1.admin_redis(&["PUBLISH", &format!("{}:hello.cluster", n3.name), "x1"]);
    assert_eq!(receivers, "1", "node 3's agent listens on the leader");
    n3.wait_output(
        &["cat", "/tmp/hello-cluster-ran"],
        &n3.name,
        Duration::from_secs(30),
    );
    let journal = format!("node/{}/journal", n3.name);
    poll(Duration::from_secs(30), Duration::from_millis(300), || {
        let entries = n2.admin_redis(&["XREVRANGE", &journal, "+", "-", "COUNT", "20"]);
        if entries.contains("hello.cluster") && entries.contains("done") {
            Ok(())
        } else {
            Err(format!(
                "node 2's replica has no done hello.cluster run of node 3:\n{entries}"
            ))
        }
    });
    // agentctl works from every node: run on node 3 from node 2, followed to its end.
    let (code, out, err) = run(
        &n2,
        &[
            "agentctl",
            "run",
            &format!("node/{}", n3.name),
            "hello.cluster",
            "x2",
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let status = n2.ok(&["agentctl", "node", "status"]);
    assert!(status.contains("a member (leader"), "{status}");
    // The member's own Redis is a replica of the leader's over the VPN.
    let info = n2.admin_redis(&["INFO", "replication"]);
    assert!(
        info.contains("role:slave") && info.contains("master_host:10.5.4.1"),
        "{info}"
    );

    // A reboot of a member, then of the leader: the VPN, the replica and the agents come back by
    // themselves (agent-vpn.service before Redis, the peers from the local replica, node-agent on
    // the leader through its replica's ROLE). The leader down for its reboot is a failover: the
    // cluster settles with one leader and two replicas in sync.
    n2.reboot();
    n1.reboot();
    wait_ping(&n2, "10.5.4.1");
    wait_ping(&n3, "10.5.4.2");
    wait_settled(&[&n1, &n2, &n3]);
    // From here on, n1 is whichever node leads now, n2 and n3 the two others.
    let (n1, n2, n3) = {
        let all = [&n1, &n2, &n3];
        let leader = leading(&all).expect("a leader once settled");
        let others: Vec<&Node> = all.into_iter().filter(|n| n.name != leader.name).collect();
        (leader, others[0], others[1])
    };
    eprintln!("after the reboots {} leads", n1.name);
    // Both members' agents follow whichever node leads now (the one not rebooted too: its Redis
    // was repointed by Sentinel under a running agent).
    for (member, id) in [(n2, "x3"), (n3, "x4")] {
        let (code, out, err) = run(
            n1,
            &[
                "agentctl",
                "run",
                "--timeout",
                "60",
                &format!("node/{}", member.name),
                "hello.cluster",
                id,
            ],
        );
        assert_eq!(
            code,
            0,
            "after the reboots: {out}\n{err}\n{}",
            member.journal("node-agent")
        );
    }

    // remove-node refuses a node with modules, and names them.
    n1.admin_redis(&["HSET", &format!("node/{}/modules", n2.name), "fake1", "img"]);
    let (code, _, err) = run(n1, &["agentctl", "cluster", "remove-node", &n2.name]);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("fake1"), "{err}");
    n1.admin_redis(&["HDEL", &format!("node/{}/modules", n2.name), "fake1"]);

    // remove-node from a member: node 3 leaves, every trace of it goes.
    let (code, out, err) = run(n2, &["agentctl", "cluster", "remove-node", &n3.name]);
    assert_eq!(code, 0, "{out}\n{err}");
    // The node's own side ends just after the leader saw it stop replicating.
    poll(Duration::from_secs(20), Duration::from_millis(500), || {
        if n3.fails(&["test", "-e", "/etc/agent/vpn.env"])
            && n3.fails(&["ip", "link", "show", "wg-agent"])
        {
            Ok(())
        } else {
            Err("node 3 still has its VPN settings or interface".to_string())
        }
    });
    let info = n3.admin_redis(&["INFO", "replication"]);
    assert!(info.contains("role:master"), "{info}");
    assert_eq!(
        n1.admin_redis(&["--scan", "--pattern", &format!("node/{}/*", n3.name)]),
        ""
    );
    // Every remaining Sentinel forgets it: two nodes, no automatic failover.
    for n in [n1, n2] {
        poll(Duration::from_secs(30), Duration::from_millis(500), || {
            let st = n.ok(&["agentctl", "cluster", "status"]);
            if st.contains("sees 1 other Sentinels; no automatic failover with fewer than 3 nodes")
            {
                Ok(())
            } else {
                Err(format!("{} after the removal: {st}", n.name))
            }
        });
    }
    // Its user goes from every remaining node; on node 3, alone again, only its own is left.
    wait_user_everywhere(&[n1, n2], &format!("node-{}", n3.name), false);
    poll(Duration::from_secs(20), Duration::from_millis(500), || {
        let users = n3.admin_redis(&["ACL", "USERS"]);
        if users.contains(&format!("node-{}", n3.name))
            && !users.contains(&format!("node-{}", n1.name))
            && !users.contains(&format!("node-{}", n2.name))
        {
            Ok(())
        } else {
            Err(format!("node 3's users after it left: {users}"))
        }
    });
    for (n, other) in [(&n1, &n2), (&n2, &n1)] {
        poll(Duration::from_secs(20), Duration::from_millis(500), || {
            let st = n.ok(&["node-agent", "vpn", "status", "--json"]);
            let v: serde_json::Value = serde_json::from_str(&st).unwrap();
            let peers: Vec<&str> = v["peers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p["node"].as_str())
                .filter(|p| !p.starts_with("join token"))
                .collect();
            if peers == [other.name.as_str()] {
                Ok(())
            } else {
                Err(format!("peers of {} after the removal: {st}", n.name))
            }
        });
    }
    // Node 3 goes on alone: its agent works on its own Redis again.
    poll(Duration::from_secs(30), Duration::from_millis(500), || {
        let beat = n3.admin_redis(&["EXISTS", &format!("node/{}/heartbeat", n3.name)]);
        if beat == "1" {
            Ok(())
        } else {
            Err("node 3's agent has no heartbeat on its own Redis".to_string())
        }
    });
}

#[test]
fn bad_expired_and_used_up_tokens_are_refused_and_leave_nothing() {
    let lab = Lab::new("ct");
    let n1 = Node::up_in_lab("ta", &lab, "10.77.1.11/24", &[]);
    let n2 = Node::up_in_lab("tb", &lab, "10.77.1.12/24", &[]);
    let n3 = Node::up_in_lab("tc", &lab, "10.77.1.13/24", &[]);
    create(&n1, "10.77.1.11");

    let nothing_left = |n: &Node| {
        assert!(
            n.fails(&["test", "-e", "/etc/agent/vpn.env"]),
            "vpn.env left on {}",
            n.name
        );
        assert!(
            n.fails(&["ip", "link", "show", "wg-agent-join"]),
            "join interface left"
        );
        assert!(
            n.fails(&["ip", "link", "show", "wg-agent"]),
            "interface left"
        );
        assert!(
            n1.admin_redis(&["EXISTS", &format!("node/{}/vpn", n.name)]) == "0",
            "the leader has a record of {}",
            n.name
        );
    };

    // Not a token at all.
    let (code, _, err) = join(&n2, "10.77.1.11", "hello", "10.77.1.12", &[]);
    assert_eq!(code, 65, "{err}");
    assert!(err.contains("agentjoin1-"), "{err}");
    nothing_left(&n2);

    // A well-formed token with a wrong secret: the leader refuses the login.
    let good = token(&n1, &[]);
    let mut forged = JoinToken::decode(&good).unwrap();
    forged.secret[0] ^= 1;
    let (code, _, err) = join(&n2, "10.77.1.11", &forged.encode(), "10.77.1.12", &[]);
    assert_eq!(code, 65, "{err}");
    assert!(err.contains("refuses the token"), "{err}");
    nothing_left(&n2);

    // The preflight alone passes with the good token and changes nothing.
    let out = n2.exec_with_input(
        &[
            "agentctl",
            "cluster",
            "join",
            "10.77.1.11",
            "-",
            "--endpoint",
            "10.77.1.12",
            "--backend",
            "userspace",
            "--check",
        ],
        good.as_bytes(),
    );
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(text(&out.stdout).contains("nothing was changed"));
    nothing_left(&n2);

    // Used up: one use, taken by node 2; node 3 is refused.
    let (code, out, err) = join(&n2, "10.77.1.11", &good, "10.77.1.12", &[]);
    assert_eq!(code, 0, "{out}\n{err}");
    let (code, _, err) = join(&n3, "10.77.1.11", &good, "10.77.1.13", &[]);
    assert_eq!(code, 65, "{err}");
    assert!(err.contains("used up"), "{err}");
    nothing_left(&n3);

    // A preflight that fails on something else than the token (the name is a member's) changes
    // nothing on either side: no trace of node 3, node 2's record as it was, the token unused
    // (the join stopped after admission below uses it).
    let t = token(&n1, &[]);
    let n2_key = n1.admin_redis(&["HGET", &format!("node/{}/vpn", n2.name), "public_key"]);
    let out = n3.exec_with_input(
        &[
            "agentctl",
            "cluster",
            "join",
            "10.77.1.11",
            "-",
            "--endpoint",
            "10.77.1.13",
            "--backend",
            "userspace",
            "--node",
            &n2.name,
        ],
        t.as_bytes(),
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(65), "{err}");
    assert!(err.contains("already a member"), "{err}");
    nothing_left(&n3);
    assert_eq!(
        n1.admin_redis(&["HGET", &format!("node/{}/vpn", n2.name), "public_key"]),
        n2_key
    );

    // Expired (its record gone, as Redis expires it).
    let expiring = token(&n1, &[]);
    let id = JoinToken::decode(&expiring).unwrap().id;
    n1.admin_redis(&["DEL", &format!("cluster/join/{id}")]);
    let (code, _, err) = join(&n3, "10.77.1.11", &expiring, "10.77.1.13", &[]);
    assert_eq!(code, 65, "{err}");
    assert!(err.contains("expired"), "{err}");
    nothing_left(&n3);

    // A join stopped after the leader admitted the node, then --abort: undone on both sides.
    let (code, out, err) = join(
        &n3,
        "10.77.1.11",
        &t,
        "10.77.1.13",
        &["AGENT_JOIN_CRASH_AFTER=admitted"],
    );
    assert_ne!(code, 0, "{out}\n{err}");
    assert_eq!(
        n1.admin_redis(&["EXISTS", &format!("node/{}/vpn", n3.name)]),
        "1"
    );
    let (code, out, err) = run(&n3, &["agentctl", "cluster", "join", "--abort"]);
    assert_eq!(code, 0, "{out}\n{err}");
    nothing_left(&n3);
    assert!(n3.fails(&["test", "-e", "/var/lib/agent/cluster/join.json"]));
    assert!(!n1
        .admin_redis(&["ACL", "USERS"])
        .contains(&format!("node-{}", n3.name)));
}

#[test]
fn a_join_killed_after_each_of_its_steps_completes_when_run_again() {
    let lab = Lab::new("ck");
    let n1 = Node::up_in_lab("ka", &lab, "10.77.2.11/24", &[]);
    let n2 = Node::up_in_lab("kb", &lab, "10.77.2.12/24", &[]);
    create(&n1, "10.77.2.11");
    let t = token(&n1, &[]);
    for step in ["started", "requested", "admitted", "switched"] {
        let crash = format!("AGENT_JOIN_CRASH_AFTER={step}");
        let (code, out, err) = join(&n2, "10.77.2.11", &t, "10.77.2.12", &[&crash]);
        assert_ne!(code, 0, "the join was to stop after {step}:\n{out}\n{err}");
        assert!(
            out.contains(&format!("step:     {step} done")),
            "{out}\n{err}"
        );
    }
    let (code, out, err) = join(&n2, "10.77.2.11", &t, "10.77.2.12", &[]);
    assert_eq!(code, 0, "{out}\n{err}\n{}", n1.journal("node-agent"));
    assert!(out.contains("joined:"), "{out}");
    // One node, one address, one use of the token however often it was asked.
    wait_ping(&n2, "10.5.4.1");
    let st = n1.ok(&["agentctl", "cluster", "status"]);
    assert!(st.contains(&n2.name) && st.contains("10.5.4.2"), "{st}");
    assert!(!st.contains("10.5.4.3"), "{st}");

    // A module on the member: installed from the member, its agent logs in on the member's own
    // Redis (a replica: the module's ACL user is made there too) and works on the leader.
    n2.ok(&["/usr/share/agent/examples/modules/build.sh"]);
    let out = n2.ok(&[
        "agentctl",
        "module",
        "add",
        "--node",
        &n2.name,
        "--env",
        "PORT=8080",
        "localhost/hello:latest",
    ]);
    let id = out.lines().last().unwrap_or_default().to_string();
    assert_eq!(
        n2.ok(&["curl", "-sS", "http://127.0.0.1:8080/"]),
        format!("<h1>hello from {id}</h1>")
    );
    poll(Duration::from_secs(30), Duration::from_millis(500), || {
        if n1.admin_redis(&["EXISTS", &format!("module/{id}/heartbeat")]) == "1" {
            Ok(())
        } else {
            Err(format!("{id}'s agent has no heartbeat on the leader"))
        }
    });
    wait_user_everywhere(&[&n1, &n2], &format!("module-{id}"), true);
    // A module on the leader: its user reaches the member's Redis by the member's users.sync.
    n1.ok(&["/usr/share/agent/examples/modules/build.sh"]);
    let out = n1.ok(&[
        "agentctl",
        "module",
        "add",
        "--node",
        &n1.name,
        "--env",
        "PORT=8081",
        "localhost/hello:latest",
    ]);
    let on_leader = out.lines().last().unwrap_or_default().to_string();
    wait_user_everywhere(&[&n1, &n2], &format!("module-{on_leader}"), true);
    for (node, module) in [(&n2, &id), (&n1, &on_leader)] {
        let (code, out, err) = run(
            node,
            &["agentctl", "module", "remove", "--node", &node.name, module],
        );
        assert_eq!(code, 0, "{out}\n{err}");
        wait_user_everywhere(&[&n1, &n2], &format!("module-{module}"), false);
    }
}

/// Waits until one node's Redis leads with every other one a replica of it, in sync.
fn wait_settled(nodes: &[&Node]) {
    poll(Duration::from_secs(90), Duration::from_millis(500), || {
        let infos: Vec<String> = nodes
            .iter()
            .map(|n| n.admin_redis(&["INFO", "replication"]))
            .collect();
        let masters = infos.iter().filter(|i| i.contains("role:master")).count();
        let replicas_up = infos
            .iter()
            .filter(|i| i.contains("role:slave") && i.contains("master_link_status:up"))
            .count();
        let served = infos
            .iter()
            .any(|i| i.contains(&format!("connected_slaves:{}", nodes.len() - 1)));
        if masters == 1 && replicas_up == nodes.len() - 1 && served {
            Ok(())
        } else {
            Err(format!(
                "the cluster has not settled:\n{}",
                infos.join("\n---\n")
            ))
        }
    });
}

/// A node's VPN address, from its settings file.
fn vpn_address(node: &Node) -> String {
    let env = node.ok(&["cat", "/etc/agent/vpn.env"]);
    env.lines()
        .find_map(|l| l.strip_prefix("VPN_ADDRESS="))
        .unwrap_or_default()
        .trim_matches('"')
        .to_string()
}

/// The node whose own Redis says it leads (`ROLE`), among `nodes`.
fn leading<'a>(nodes: &[&'a Node]) -> Option<&'a Node> {
    nodes
        .iter()
        .find(|n| {
            let out = n.exec(&agent_tests::node::admin_cli(&["ROLE"]));
            text(&out.stdout).lines().next() == Some("master")
        })
        .copied()
}

#[test]
fn the_leader_killed_fails_over_and_comes_back_as_a_replica() {
    let (_keep, ev) = events();
    let lab = Lab::new("cf");
    let n1 = Node::up_in_lab("fa", &lab, "10.77.3.11/24", std::slice::from_ref(&ev));
    let n2 = Node::up_in_lab("fb", &lab, "10.77.3.12/24", std::slice::from_ref(&ev));
    let n3 = Node::up_in_lab("fc", &lab, "10.77.3.13/24", std::slice::from_ref(&ev));
    create(&n1, "10.77.3.11");
    for (n, ip) in [(&n2, "10.77.3.12"), (&n3, "10.77.3.13")] {
        let t = token(&n1, &[]);
        let (code, out, err) = join(n, "10.77.3.11", &t, ip, &[]);
        assert_eq!(code, 0, "join {}:\n{out}\n{err}", n.name);
    }
    // Three Sentinels that see each other, and agree a failover is possible.
    for n in [&n1, &n2, &n3] {
        poll(Duration::from_secs(40), Duration::from_millis(500), || {
            let st = n.ok(&["agentctl", "cluster", "status"]);
            if st.contains("sees 2 other Sentinels; automatic failover possible") {
                Ok(())
            } else {
                Err(format!("{}: {st}\n{}", n.name, n.journal("redis-sentinel")))
            }
        });
    }
    // A module on a member, serving.
    n2.ok(&["/usr/share/agent/examples/modules/build.sh"]);
    let out = n2.ok(&[
        "agentctl",
        "module",
        "add",
        "--node",
        &n2.name,
        "--env",
        "PORT=8080",
        "localhost/hello:latest",
    ]);
    let id = out.lines().last().unwrap_or_default().to_string();
    let page = format!("<h1>hello from {id}</h1>");
    assert_eq!(n2.ok(&["curl", "-sS", "http://127.0.0.1:8080/"]), page);

    // An event queued with agentctl (acknowledged by a replica: WAIT), then the leader is killed.
    let (code, out, err) = run(
        &n2,
        &[
            "agentctl",
            "run",
            "--no-wait",
            &format!("node/{}", n3.name),
            "hello.cluster",
            "before-kill",
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(!err.contains("no replica acknowledged"), "{err}");
    n1.kill();
    let killed = std::time::Instant::now();
    let new_leader = loop {
        if let Some(n) = leading(&[&n2, &n3]) {
            break n;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "no new leader 30 s after the kill:\n{}",
            n2.journal("redis-sentinel")
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let took = killed.elapsed();
    eprintln!(
        "failover: {} leads {took:?} after the kill",
        new_leader.name
    );
    assert!(
        took <= Duration::from_secs(10),
        "the failover took {took:?}"
    );
    let other = if new_leader.name == n2.name { &n3 } else { &n2 };

    // The module on the member keeps serving; the event queued before the kill runs.
    assert_eq!(n2.ok(&["curl", "-sS", "http://127.0.0.1:8080/"]), page);
    n3.wait_output(
        &["cat", "/tmp/hello-cluster-data"],
        "before-kill",
        Duration::from_secs(60),
    );
    // The agents follow: an event from the other member runs on the new leader's node, and the
    // new leader records itself.
    // The other member's Redis is repointed by Sentinel just after the promotion.
    poll(Duration::from_secs(20), Duration::from_millis(300), || {
        let info = other.admin_redis(&["INFO", "replication"]);
        let want = format!("master_host:{}", vpn_address(new_leader));
        if info.contains(&want) {
            Ok(())
        } else {
            Err(format!(
                "{} after the failover:\n{info}\n{}",
                other.name,
                other.journal("redis-sentinel")
            ))
        }
    });
    eprintln!(
        "failover: {} replicates the new leader {:?} after the kill",
        other.name,
        killed.elapsed()
    );
    let (code, out, err) = run(
        other,
        &[
            "agentctl",
            "run",
            "--timeout",
            "60",
            &format!("node/{}", new_leader.name),
            "hello.cluster",
            "after-kill",
        ],
    );
    assert_eq!(
        code,
        0,
        "after the failover: {out}\n{err}\n{}",
        new_leader.journal("node-agent")
    );
    poll(Duration::from_secs(30), Duration::from_millis(500), || {
        let l = other.admin_redis(&["GET", "cluster/leader"]);
        if l == new_leader.name {
            Ok(())
        } else {
            Err(format!("cluster/leader is {l:?}"))
        }
    });
    assert!(other
        .ok(&["agentctl", "cluster", "status"])
        .contains(&format!("leader:   {}", new_leader.name)));

    // The old leader comes back as a replica of the new one, its agents on the new leader.
    n1.boot();
    let vpn_of_new = vpn_address(new_leader);
    poll(Duration::from_secs(90), Duration::from_millis(500), || {
        let info = n1.admin_redis(&["INFO", "replication"]);
        if info.contains("role:slave")
            && info.contains(&format!("master_host:{vpn_of_new}"))
            && info.contains("master_link_status:up")
        {
            Ok(())
        } else {
            Err(format!("the old leader after its boot:\n{info}"))
        }
    });
    let (code, out, err) = run(
        &n1,
        &[
            "agentctl",
            "run",
            "--timeout",
            "60",
            &format!("node/{}", n1.name),
            "hello.cluster",
            "old-leader",
        ],
    );
    assert_eq!(
        code,
        0,
        "on the old leader: {out}\n{err}\n{}",
        n1.journal("node-agent")
    );
}

#[test]
fn a_partitioned_leader_refuses_writes_and_no_acknowledged_event_is_lost() {
    let (_keep, ev) = events();
    let lab = Lab::new("cp");
    let n1 = Node::up_in_lab("pa", &lab, "10.77.4.11/24", std::slice::from_ref(&ev));
    let n2 = Node::up_in_lab("pb", &lab, "10.77.4.12/24", std::slice::from_ref(&ev));
    let n3 = Node::up_in_lab("pc", &lab, "10.77.4.13/24", std::slice::from_ref(&ev));
    create(&n1, "10.77.4.11");
    for (n, ip) in [(&n2, "10.77.4.12"), (&n3, "10.77.4.13")] {
        let t = token(&n1, &[]);
        let (code, out, err) = join(n, "10.77.4.11", &t, ip, &[]);
        assert_eq!(code, 0, "join {}:\n{out}\n{err}", n.name);
    }
    for n in [&n1, &n2, &n3] {
        poll(Duration::from_secs(40), Duration::from_millis(500), || {
            let st = n.ok(&["agentctl", "cluster", "status"]);
            if st.contains("sees 2 other Sentinels; automatic failover possible") {
                Ok(())
            } else {
                Err(format!("{}: {st}", n.name))
            }
        });
    }

    // The leader cut off from both members.
    n1.cut();
    let cut = std::time::Instant::now();
    // The majority side elects a leader of its own.
    let new_leader = loop {
        if let Some(n) = leading(&[&n2, &n3]) {
            break n;
        }
        assert!(
            cut.elapsed() < Duration::from_secs(40),
            "no leader on the majority side:\n{}",
            n2.journal("redis-sentinel")
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    eprintln!(
        "partition: {} leads {:?} after the cut",
        new_leader.name,
        cut.elapsed()
    );
    let other = if new_leader.name == n2.name { &n3 } else { &n2 };
    // The minority side refuses writes once its replicas are overdue (min-replicas-max-lag).
    poll(Duration::from_secs(30), Duration::from_millis(500), || {
        let (code, out, err) = run(
            &n1,
            &[
                "agentctl",
                "run",
                "--no-wait",
                &format!("node/{}", n1.name),
                "hello.cluster",
                "minority",
            ],
        );
        if code != 0 && format!("{out}{err}").contains("NOREPLICAS") {
            Ok(())
        } else {
            Err(format!("a write on the cut-off leader: {code} {out} {err}"))
        }
    });
    // Events queued on the majority side are acknowledged by its replica and run.
    poll(Duration::from_secs(30), Duration::from_millis(500), || {
        let out = other.admin_redis(&["INFO", "replication"]);
        if out.contains(&format!("master_host:{}", vpn_address(new_leader)))
            && out.contains("master_link_status:up")
        {
            Ok(())
        } else {
            Err(format!("{}: {out}", other.name))
        }
    });
    let (code, out, err) = run(
        other,
        &[
            "agentctl",
            "run",
            "--timeout",
            "60",
            &format!("node/{}", other.name),
            "hello.cluster",
            "majority",
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(!err.contains("no replica acknowledged"), "{err}");
    let run_id = err
        .lines()
        .find_map(|l| l.strip_prefix("run "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_default()
        .to_string();
    assert!(!run_id.is_empty(), "{err}");

    // Healed: the old leader becomes a replica of the new one; the acknowledged run is still there,
    // on the old leader's copy too.
    n1.heal();
    poll(Duration::from_secs(60), Duration::from_millis(500), || {
        let info = n1.admin_redis(&["INFO", "replication"]);
        if info.contains("role:slave")
            && info.contains(&format!("master_host:{}", vpn_address(new_leader)))
            && info.contains("master_link_status:up")
        {
            Ok(())
        } else {
            Err(format!("the old leader after the heal:\n{info}"))
        }
    });
    let journal = format!("node/{}/journal", other.name);
    for n in [&n1, &n2, &n3] {
        poll(Duration::from_secs(20), Duration::from_millis(500), || {
            let entries = n.admin_redis(&["XREVRANGE", &journal, "+", "-", "COUNT", "50"]);
            if entries.contains(&run_id) {
                Ok(())
            } else {
                Err(format!(
                    "{} has no record of run {run_id}:\n{entries}",
                    n.name
                ))
            }
        });
    }
    let (code, out, err) = run(
        &n1,
        &[
            "agentctl",
            "run",
            "--timeout",
            "60",
            &format!("node/{}", n1.name),
            "hello.cluster",
            "healed",
        ],
    );
    assert_eq!(code, 0, "on the old leader after the heal: {out}\n{err}");
}
