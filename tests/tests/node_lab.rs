//! Several real nodes on one network: a lab (`node.sh lab-up`, a network namespace with a bridge)
//! and nodes plugged into it with an address each (`node.sh up --lab LAB --address ADDR/PREFIX`);
//! a partition (`cut`/`heal`) and a power cut (`kill`/`boot`). What cluster tests (WireGuard mesh,
//! Redis replication, Sentinel) build on. Needs root, like every node test (docs/NODE-HARNESS.md).

use std::path::Path;
use std::time::{Duration, Instant};

use agent_tests::node::{node_sh, Lab, Node};
use agent_tests::poll;

fn pings(from: &Node, to: &str) -> bool {
    !from.fails(&["ping", "-c1", "-W2", to])
}

fn wait_ping(from: &Node, to: &str) {
    poll(Duration::from_secs(15), Duration::from_millis(200), || {
        if pings(from, to) {
            Ok(())
        } else {
            Err(format!("{} does not reach {to}", from.name))
        }
    })
}

fn status(node: &Node) -> (bool, String) {
    let out = node_sh(&["status", &node.name]);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    )
}

#[test]
fn two_nodes_in_a_lab_reach_each_other_and_survive_a_partition_and_a_power_cut() {
    let started = Instant::now();
    let lab = Lab::new("hlab");
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| Node::up_in_lab("hl", &lab, "10.77.0.11/24", &[]));
        let b = s.spawn(|| Node::up_in_lab("hl", &lab, "10.77.0.12/24", &[]));
        (a.join().expect("up a"), b.join().expect("up b"))
    });
    assert_eq!(a.ip(), Some("10.77.0.11"));
    assert!(
        a.ok(&["ip", "-4", "-o", "addr", "show", "eth0"])
            .contains("inet 10.77.0.11/24"),
        "eth0 of {} has its address",
        a.name
    );
    assert!(pings(&a, "10.77.0.12"), "{} reaches {}", a.name, b.name);
    assert!(pings(&b, "10.77.0.11"), "{} reaches {}", b.name, a.name);
    let (running, st) = status(&b);
    assert!(running, "{st}");
    assert!(
        st.contains(&format!("lab {}, eth0 10.77.0.12/24", lab.name())),
        "{st}"
    );

    // A partition: b's port on the bridge goes down; nobody reaches it, it reaches nobody.
    b.cut();
    assert!(
        !pings(&a, "10.77.0.12"),
        "{} reaches {} after cut",
        a.name,
        b.name
    );
    assert!(
        !pings(&b, "10.77.0.11"),
        "{} reaches {} after cut",
        b.name,
        a.name
    );
    assert!(status(&b).1.contains(", cut"), "{}", status(&b).1);
    b.heal();
    wait_ping(&a, "10.77.0.12");
    wait_ping(&b, "10.77.0.11");

    // A power cut: every process gone at once, the machine answers nothing; then it boots again
    // with what it had on disk and the same address.
    b.ok(&["sh", "-c", "echo before-kill >/var/lib/agent-test-kill.txt"]);
    b.kill();
    let (running, st) = status(&b);
    assert!(!running && st.contains("killed"), "{st}");
    assert!(b.fails(&["true"]), "exec in a killed node fails");
    assert!(!pings(&a, "10.77.0.12"), "a killed node answers ping");
    b.boot();
    wait_ping(&a, "10.77.0.12");
    wait_ping(&b, "10.77.0.11");
    b.wait_output(
        &["systemctl", "is-active", "node-agent"],
        "active",
        Duration::from_secs(30),
    );
    assert_eq!(
        b.ok(&["cat", "/var/lib/agent-test-kill.txt"]),
        "before-kill"
    );
    let (running, st) = status(&b);
    assert!(running && !st.contains("killed"), "{st}");
    eprintln!("lab test body done in {:?}", started.elapsed());
}

#[test]
fn up_refuses_a_bad_lab_address_before_making_anything() {
    let lab = Lab::new("hlab");
    let name = format!("hbad{}", std::process::id());
    let rundir = std::env::var("AGENT_NODE_RUN").unwrap_or_else(|_| "/run/agent-test-nodes".into());
    let cases: &[(&[&str], &str)] = &[
        (
            &["--lab", lab.name(), "--address", "10.77.0.300/24"],
            "bad --address '10.77.0.300/24'",
        ),
        (
            &["--lab", lab.name(), "--address", "foo"],
            "bad --address 'foo'",
        ),
        (
            &["--lab", lab.name(), "--address", "10.77.0.11"],
            "bad --address '10.77.0.11'",
        ),
        (
            &["--lab", lab.name(), "--address", "10.77.0.11/33"],
            "bad --address '10.77.0.11/33'",
        ),
        (&["--lab", lab.name()], "--lab and --address go together"),
        (
            &["--address", "10.77.0.11/24"],
            "--lab and --address go together",
        ),
        (
            &["--lab", "hnosuchlab", "--address", "10.77.0.11/24"],
            "lab hnosuchlab is not up",
        ),
    ];
    for (args, want) in cases {
        let mut all = vec!["up", name.as_str()];
        all.extend_from_slice(args);
        let out = node_sh(&all);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "node.sh {all:?} succeeded");
        assert!(err.contains(want), "node.sh {all:?}: {err}");
        assert!(
            !Path::new(&rundir).join(&name).exists(),
            "node.sh {all:?} left a run dir"
        );
        assert!(
            !Path::new("/run/netns")
                .join(format!("agentnode-{name}"))
                .exists(),
            "node.sh {all:?} left a network namespace"
        );
    }
}
