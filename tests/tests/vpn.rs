//! `node-agent vpn` on real WireGuard (userspace: these machines have no wireguard kernel module):
//! three simulated nodes, each a network namespace joined to the others by a veth pair into a
//! bridge in a fourth namespace (10.88.0.N/24), one real redis-server reached by all of them on
//! its unix socket. Each node runs `vpn key`, `vpn up` and `vpn sync` as the cluster would; the
//! test checks the mesh carries traffic, that a second sync changes nothing (same wireguard-go),
//! that a removed record removes its peer and only it, that a bad record is skipped, and that the
//! private key is never shown.
//!
//! Needs root, `wireguard-go`, `wireguard-tools`, `iputils-ping` (scripts/test-deps.sh).
//! Interface names carry the test's pid: one host's wireguard-go control sockets
//! (/var/run/wireguard) are shared by every network namespace.

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agent_tests::{bin, RedisServer};
use core_events::cluster::{self, vpn_field};
use core_events::AgentName;

const NODES: usize = 3;

/// What a command printed.
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `cmd` to its end (killed and a panic after `timeout`), capturing its output.
fn run(mut cmd: Command, timeout: Duration) -> Out {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{shown}: {e}"));
    let reader = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = pipe.read_to_string(&mut s);
            s
        })
    };
    let out = reader(Box::new(child.stdout.take().unwrap()));
    let err = reader(Box::new(child.stderr.take().unwrap()));
    let end = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{shown} still running after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Out {
        code: status.code().unwrap_or(-1),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

fn ip(args: &[&str]) {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    let out = run(cmd, Duration::from_secs(10));
    assert_eq!(out.code, 0, "ip {args:?}: {out:?}");
}

/// The running (not zombie) wireguard-go processes serving `iface`.
fn wireguard_go_pids(iface: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_wg = args.len() >= 2
            && args[0].rsplit('/').next() == Some("wireguard-go")
            && args.last().map(String::as_str) == Some(iface);
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('Z')))
            .unwrap_or(true);
        if is_wg && !zombie {
            pids.push(pid);
        }
    }
    pids
}

/// Three nodes in network namespaces, a bridge between them, their state in a temp dir.
/// Everything it made is removed on drop, also when the test fails half-way.
struct Lab {
    tag: String,
    dir: tempfile::TempDir,
    namespaces: Vec<String>,
    redis_url: String,
    creds: PathBuf,
    /// Every output of every node-agent run, to check no private key was ever shown.
    outputs: Vec<String>,
}

impl Lab {
    fn new(redis: &RedisServer, password: &str) -> Lab {
        let tag = format!("vpnt-{}", std::process::id());
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("redis.env");
        std::fs::write(&creds, format!("REDIS_PASSWORD={password}\n")).unwrap();
        let mut lab = Lab {
            tag,
            dir,
            namespaces: Vec::new(),
            redis_url: redis.socket_url(),
            creds,
            outputs: Vec::new(),
        };
        let bridge = lab.ns(0);
        ip(&["netns", "add", &bridge]);
        lab.namespaces.push(bridge.clone());
        ip(&["-n", &bridge, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &bridge, "link", "set", "br0", "up"]);
        for i in 1..=NODES {
            let ns = lab.ns(i);
            ip(&["netns", "add", &ns]);
            lab.namespaces.push(ns.clone());
            let port = format!("p{i}");
            ip(&[
                "-n", &bridge, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ]);
            ip(&["-n", &bridge, "link", "set", &port, "master", "br0", "up"]);
            ip(&[
                "-n",
                &ns,
                "address",
                "add",
                &format!("10.88.0.{i}/24"),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        lab
    }

    fn ns(&self, i: usize) -> String {
        format!("{}-{i}", self.tag)
    }

    fn iface(&self, i: usize) -> String {
        format!("wt{}-{i}", std::process::id())
    }

    fn node(&self, i: usize) -> String {
        format!("n{i}")
    }

    fn key_file(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("n{i}/etc/vpn.key"))
    }

    fn state_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("n{i}/state"))
    }

    /// `ip netns exec NS PROG ARGS…` in node `i`'s namespace.
    fn exec(&self, i: usize, prog: &str, args: &[&str]) -> Out {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns(i), prog]).args(args);
        run(cmd, Duration::from_secs(30))
    }

    /// `node-agent vpn CMD ARGS…` in node `i`'s namespace, with its interface and state dir.
    fn vpn(&mut self, i: usize, cmd: &str, args: &[&str]) -> Out {
        let agent = bin("node-agent");
        let iface = self.iface(i);
        let state = self.state_dir(i);
        let mut all: Vec<&str> = vec!["vpn", cmd];
        if cmd != "key" {
            all.extend([
                "--interface",
                &iface,
                "--state-dir",
                state.to_str().unwrap(),
            ]);
        }
        all.extend(args);
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(i)])
            .arg(&agent)
            .args(&all)
            .env_remove("REDIS_URL")
            .env_remove("AGENT_REDIS_CREDENTIALS")
            .env_remove("AGENT_NAME")
            .env_remove("WG_USERSPACE_IMPLEMENTATION")
            .env_remove("WG_QUICK_USERSPACE_IMPLEMENTATION");
        let out = run(c, Duration::from_secs(30));
        self.outputs.push(format!("{}{}", out.stdout, out.stderr));
        out
    }

    fn vpn_ok(&mut self, i: usize, cmd: &str, args: &[&str]) -> Out {
        let out = self.vpn(i, cmd, args);
        assert_eq!(out.code, 0, "node {i}: vpn {cmd} {args:?}: {out:?}");
        out
    }

    fn up(&mut self, i: usize, backend: &str) -> Out {
        let key = self.key_file(i);
        let address = format!("10.5.4.{i}/24");
        self.vpn_ok(
            i,
            "up",
            &[
                "--address",
                &address,
                "--key-file",
                key.to_str().unwrap(),
                "--backend",
                backend,
            ],
        )
    }

    fn sync(&mut self, i: usize) -> Out {
        let node = self.node(i);
        let endpoint = format!("10.88.0.{i}");
        let (url, creds) = (self.redis_url.clone(), self.creds.clone());
        self.vpn_ok(
            i,
            "sync",
            &[
                "--node",
                &node,
                "--endpoint",
                &endpoint,
                "--redis-url",
                &url,
                "--redis-credentials",
                creds.to_str().unwrap(),
            ],
        )
    }

    /// The peers (public keys) `wg show IFACE peers` lists on node `i`.
    fn wg_peers(&self, i: usize) -> Vec<String> {
        let out = self.exec(i, "wg", &["show", &self.iface(i), "peers"]);
        assert_eq!(out.code, 0, "wg show: {out:?}");
        let mut peers: Vec<String> = out.stdout.split_whitespace().map(String::from).collect();
        peers.sort();
        peers
    }

    /// Pings `to` from node `i` until it answers (the first handshake takes a few seconds).
    fn ping(&self, i: usize, to: &str, within: Duration) {
        let end = Instant::now() + within;
        loop {
            let out = self.exec(i, "ping", &["-c1", "-W2", to]);
            if out.code == 0 {
                return;
            }
            assert!(
                Instant::now() < end,
                "node {i} cannot ping {to} through the VPN within {within:?}: {out:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for i in 1..=NODES {
            let _ = self.vpn(i, "down", &[]);
            // Whatever `down` left (it failed, or the test failed before it could run).
            for pid in wireguard_go_pids(&self.iface(i)) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = std::fs::remove_file(format!("/var/run/wireguard/{}.sock", self.iface(i)));
        }
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip")
                .args(["netns", "delete", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn hgetall(con: &mut redis::Connection, key: &str) -> HashMap<String, String> {
    redis::cmd("HGETALL").arg(key).query(con).unwrap()
}

#[test]
fn three_nodes_make_a_full_mesh_and_follow_redis() {
    let started = Instant::now();
    let password = "vpn-test-pw";
    let redis = RedisServer::start_with(&["--requirepass", password]);
    let mut con = redis.conn();
    let mut lab = Lab::new(&redis, password);

    // Keys: made once, 0600 in a 0700 directory, only the public key printed.
    let mut public = Vec::new();
    let mut private = Vec::new();
    for i in 1..=NODES {
        let key = lab.key_file(i);
        let out = lab.vpn_ok(i, "key", &["--key-file", key.to_str().unwrap()]);
        let pk = out.stdout.trim().to_string();
        assert!(cluster::is_wireguard_key(&pk), "{out:?}");
        assert_eq!(
            out.stdout,
            format!("{pk}\n"),
            "only the public key on stdout"
        );
        assert!(out.stderr.contains("made"), "{out:?}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "key file mode");
        let dmode = std::fs::metadata(key.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dmode, 0o700, "key directory mode");
        let again = lab.vpn_ok(i, "key", &["--key-file", key.to_str().unwrap()]);
        assert_eq!(again.stdout.trim(), pk, "the same key the second time");
        assert!(!again.stderr.contains("made"), "{again:?}");
        public.push(pk);
        private.push(std::fs::read_to_string(&key).unwrap().trim().to_string());
    }

    // Interfaces: node 1 lets `auto` choose (userspace here, and it says why).
    let out = lab.up(1, "auto");
    assert!(
        out.stdout
            .contains("backend userspace (auto: the kernel has no WireGuard"),
        "{out:?}"
    );
    assert!(out.stdout.contains("wireguard-go is "), "{out:?}");
    for i in 2..=NODES {
        let out = lab.up(i, "userspace");
        assert!(
            out.stdout.contains("backend userspace (asked for"),
            "{out:?}"
        );
        assert!(out.stdout.contains(&public[i - 1]), "{out:?}");
        assert!(out.stdout.contains("created"), "{out:?}");
    }
    let pids: Vec<Vec<i32>> = (1..=NODES)
        .map(|i| wireguard_go_pids(&lab.iface(i)))
        .collect();
    for (i, p) in pids.iter().enumerate() {
        assert_eq!(p.len(), 1, "one wireguard-go for node {}: {p:?}", i + 1);
    }

    // Sync: each publishes its record and takes the others'; after a second round of the
    // first two, every node has the two others.
    let first = lab.sync(1);
    assert!(first.stdout.contains("published"), "{first:?}");
    assert!(
        first.stdout.contains("peers in sync (0 peer(s))"),
        "{first:?}"
    );
    let second = lab.sync(2);
    assert!(second.stdout.contains("added:   n1"), "{second:?}");
    let third = lab.sync(3);
    assert!(third.stdout.contains("added:   n1") && third.stdout.contains("added:   n2"));
    let again = lab.sync(1);
    assert!(
        again.stdout.contains("added:   n2") && again.stdout.contains("added:   n3"),
        "{again:?}"
    );
    assert!(again.stdout.contains("in place"), "{again:?}");
    let again = lab.sync(2);
    assert!(again.stdout.contains("added:   n3"), "{again:?}");
    let rec = hgetall(&mut con, &cluster::node_vpn(&AgentName::new("n1").unwrap()));
    assert_eq!(rec[vpn_field::PUBLIC_KEY], public[0]);
    assert_eq!(rec[vpn_field::ENDPOINT], "10.88.0.1:55820");
    assert_eq!(rec[vpn_field::ADDRESS], "10.5.4.1");
    assert_eq!(rec[vpn_field::BACKEND], "userspace");
    for i in 1..=NODES {
        let mut want: Vec<String> = (1..=NODES)
            .filter(|j| *j != i)
            .map(|j| public[j - 1].clone())
            .collect();
        want.sort();
        assert_eq!(lab.wg_peers(i), want, "node {i}'s peers");
    }

    // Through the tunnel.
    lab.ping(2, "10.5.4.3", Duration::from_secs(15));
    lab.ping(1, "10.5.4.2", Duration::from_secs(15));

    // A malformed record is skipped with a warning; the others stay in sync, nothing restarts.
    let _: () = redis::cmd("HSET")
        .arg(cluster::node_vpn(&AgentName::new("bad").unwrap()))
        .arg(vpn_field::PUBLIC_KEY)
        .arg("not-a-key")
        .arg(vpn_field::ENDPOINT)
        .arg("10.88.0.9:55820")
        .arg(vpn_field::ADDRESS)
        .arg("10.5.4.9")
        .arg(vpn_field::BACKEND)
        .arg("userspace")
        .query(&mut con)
        .unwrap();
    for i in 1..=NODES {
        let out = lab.sync(i);
        assert!(
            out.stdout.contains("peers in sync (2 peer(s))"),
            "node {i}: {out:?}"
        );
        assert!(out.stdout.contains("in place"), "node {i}: {out:?}");
        assert!(
            out.stderr
                .contains("warning: skipped node/bad/vpn: public_key"),
            "node {i}: {out:?}"
        );
    }
    // `up` again with the same settings: nothing changes, the peers stay.
    let out = lab.up(2, "auto");
    assert!(out.stdout.contains("nothing changed"), "{out:?}");
    assert_eq!(lab.wg_peers(2).len(), 2);
    for i in 1..=NODES {
        assert_eq!(
            wireguard_go_pids(&lab.iface(i)),
            pids[i - 1],
            "node {i}: wireguard-go was not restarted"
        );
    }
    // A backend switch on a running interface is refused (78), not done behind one's back.
    let key = lab.key_file(2);
    let out = lab.vpn(
        2,
        "up",
        &[
            "--address",
            "10.5.4.2/24",
            "--key-file",
            key.to_str().unwrap(),
            "--backend",
            "kernel",
        ],
    );
    assert_eq!(out.code, 78, "{out:?}");

    // Status: names from the last sync, handshakes, bytes.
    let out = lab.vpn_ok(1, "status", &[]);
    assert!(out.stdout.contains("backend:     userspace"), "{out:?}");
    assert!(
        out.stdout.contains("  n2  endpoint 10.88.0.2:55820"),
        "{out:?}"
    );
    let out = lab.vpn_ok(1, "status", &["--json"]);
    let st: serde_json::Value = serde_json::from_str(&out.stdout).expect("status --json");
    assert_eq!(st["address"], "10.5.4.1/24");
    assert_eq!(st["public_key"], public[0].as_str());
    assert_eq!(st["listen_port"], 55820);
    let n2 = st["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["node"] == "n2")
        .unwrap_or_else(|| panic!("{st}"));
    assert!(n2["latest_handshake_secs"].is_u64(), "{st}");
    assert!(n2["rx_bytes"].as_u64().unwrap() > 0, "{st}");

    // Node 3's record goes: nodes 1 and 2 drop that peer, and only it.
    let _: () = redis::cmd("DEL")
        .arg(cluster::node_vpn(&AgentName::new("n3").unwrap()))
        .query(&mut con)
        .unwrap();
    for (i, other) in [(1, 2), (2, 1)] {
        let out = lab.sync(i);
        assert!(out.stdout.contains("removed: n3"), "node {i}: {out:?}");
        assert!(!out.stdout.contains("added"), "node {i}: {out:?}");
        assert_eq!(lab.wg_peers(i), [public[other - 1].clone()], "node {i}");
    }
    lab.ping(1, "10.5.4.2", Duration::from_secs(5));
    lab.ping(2, "10.5.4.1", Duration::from_secs(5));

    // Down: the interface and its wireguard-go go; a second down says so.
    let out = lab.vpn_ok(3, "down", &[]);
    assert!(out.stdout.contains("link deleted"), "{out:?}");
    assert!(
        out.stdout.contains("wireguard-go (pid") && out.stdout.contains("ended with its device"),
        "wireguard-go ends when its device is deleted: {out:?}"
    );
    assert!(wireguard_go_pids(&lab.iface(3)).is_empty());
    assert!(!std::path::Path::new(&format!("/var/run/wireguard/{}.sock", lab.iface(3))).exists());
    let out = lab.vpn_ok(3, "down", &[]);
    assert!(out.stdout.contains("already down"), "{out:?}");
    let out = lab.vpn(3, "status", &[]);
    assert_eq!(out.code, 69, "{out:?}");

    // The private keys were never shown.
    for text in &lab.outputs {
        for k in &private {
            assert!(
                !text.contains(k.as_str()),
                "a private key was printed:\n{text}"
            );
        }
    }
    eprintln!("vpn mesh test: {:?}", started.elapsed());
}

#[test]
fn key_files_that_are_not_key_files_are_refused_not_replaced() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key = |name: &str| dir.path().join(name);
    let run_key = |path: &PathBuf| {
        let mut cmd = Command::new(bin("node-agent"));
        cmd.args(["vpn", "key", "--key-file"]).arg(path);
        run(cmd, Duration::from_secs(10))
    };
    let good = key("vpn.key");
    assert_eq!(run_key(&good).code, 0);

    std::fs::set_permissions(&good, std::fs::Permissions::from_mode(0o640)).unwrap();
    let out = run_key(&good);
    assert_eq!(out.code, 78, "{out:?}");
    assert!(
        out.stderr.contains("mode 0640 is wider than 0600"),
        "{out:?}"
    );
    assert!(out.stdout.is_empty(), "{out:?}");

    let other = key("other");
    std::fs::write(&other, "hello\n").unwrap();
    std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = run_key(&other);
    assert_eq!(out.code, 78, "{out:?}");
    assert!(
        !out.stderr.contains("hello"),
        "content never quoted: {out:?}"
    );
    assert_eq!(
        std::fs::read_to_string(&other).unwrap(),
        "hello\n",
        "not replaced"
    );

    let link = key("link");
    std::os::unix::fs::symlink(&good, &link).unwrap();
    let out = run_key(&link);
    assert_eq!(out.code, 78, "{out:?}");
    assert!(out.stderr.contains("symbolic link"), "{out:?}");
}
