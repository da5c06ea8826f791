//! Edge-proxy fixtures: a real Caddy (Debian's `caddy`) with its admin API on a private Unix
//! socket, a plain HTTP backend standing in for a module's container, and a minimal HTTP/1.1
//! client (one connection per request, so a reload that dropped connections would show).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::{bin, wait_for, Agent, RedisServer};

/// A free TCP port on loopback (bound and released: another process may take it in between,
/// which the tests accept, as for Redis).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A CA and a certificate it signed for `names` (host names or IP addresses): (CA PEM, chain PEM,
/// key PEM).
pub fn signed_cert(names: &[&str]) -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "agent test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf =
        rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
    (ca_cert.pem(), leaf.pem(), key.serialize_pem())
}

/// The Caddy the tests run: `AGENT_TEST_CADDY`, else `caddy` on PATH.
pub fn caddy_binary() -> String {
    std::env::var("AGENT_TEST_CADDY").unwrap_or_else(|_| "caddy".into())
}

/// A Caddy started with nothing but its admin endpoint: the edge service gives it everything
/// else. Killed on drop.
pub struct Caddy {
    child: Child,
    dir: tempfile::TempDir,
}

impl Caddy {
    pub fn start() -> Caddy {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("admin.sock");
        let boot = dir.path().join("boot.json");
        let config = serde_json::json!({
            "admin": {"listen": format!("unix/{}", socket.display()), "config": {"persist": false}}
        });
        std::fs::write(&boot, config.to_string()).unwrap();
        let log = std::fs::File::create(dir.path().join("caddy.log")).unwrap();
        let child = Command::new(caddy_binary())
            .arg("run")
            .arg("--config")
            .arg(&boot)
            // Caddy's data and config directories inside the test's own.
            .env("HOME", dir.path())
            .env("XDG_DATA_HOME", dir.path().join("data"))
            .env("XDG_CONFIG_HOME", dir.path().join("config"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("caddy (Debian package caddy; scripts/test-deps.sh installs it)");
        let c = Caddy { child, dir };
        wait_for("caddy's admin socket", Duration::from_secs(20), || {
            UnixStreamProbe::ok(&socket).then_some(())
        });
        c
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("admin.sock")
    }

    /// Where the edge service keeps its applied configuration in this test.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("caddy.log")).unwrap_or_default()
    }

    /// The environment a node-agent (and `agentctl cert`) needs to drive this Caddy: its admin
    /// socket, the edge's state directory, the cluster's edge identity.
    pub fn agent_env(&self) -> Vec<(String, String)> {
        vec![
            (
                "AGENT_EDGE_ADMIN_SOCKET".into(),
                self.socket().display().to_string(),
            ),
            (
                "AGENT_EDGE_STATE_DIR".into(),
                self.state_dir().display().to_string(),
            ),
            ("AGENT_EDGE_IDENTITY".into(), self.identity_file()),
        ]
    }

    /// Where the edge key of the node driving this Caddy is kept.
    pub fn identity_file(&self) -> String {
        self.dir.path().join("edge.key").display().to_string()
    }
}

impl Caddy {
    /// Kills this Caddy (a proxy that crashed or is not started yet).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Caddy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct UnixStreamProbe;

impl UnixStreamProbe {
    fn ok(path: &Path) -> bool {
        std::os::unix::net::UnixStream::connect(path).is_ok()
    }
}

/// A plain HTTP backend on loopback: answers every request `200` with `backend <name> <path>`,
/// one thread per connection, until dropped.
pub struct Backend {
    pub port: u16,
    stop: Arc<AtomicBool>,
    pub served: Arc<AtomicU64>,
}

impl Backend {
    pub fn start(name: &str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let (name, stop2, served2) = (name.to_string(), stop.clone(), served.clone());
        std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let (name, served) = (name.clone(), served2.clone());
                        std::thread::spawn(move || serve_backend(conn, &name, &served));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Backend { port, stop, served }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Serves requests on one connection (keep-alive, as Caddy's upstream connections are).
fn serve_backend(conn: TcpStream, name: &str, served: &AtomicU64) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let mut reader = BufReader::new(match conn.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
    let mut conn = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let mut length = 0usize;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h == "\r\n" || h == "\n" {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let text = format!("backend {name} {path}\n");
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Backend: {name}\r\nContent-Length: {}\r\n\r\n{text}",
            text.len()
        );
        if conn.write_all(resp.as_bytes()).is_err() {
            return;
        }
        served.fetch_add(1, Ordering::Relaxed);
    }
}

/// An HTTP answer: status, headers (lowercased names), body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == &name.to_ascii_lowercase())
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path` with `Host: host` to 127.0.0.1:`port` over plain HTTP on a new connection.
pub fn get(port: u16, host: &str, path: &str) -> std::io::Result<Answer> {
    get_at("127.0.0.1", port, host, path)
}

/// [`get`] to `ip`:`port`.
pub fn get_at(ip: &str, port: u16, host: &str, path: &str) -> std::io::Result<Answer> {
    // Each phase named in the error: a reset at connect, at send or mid-answer are different bugs.
    let named = |what: String| {
        move |e: std::io::Error| std::io::Error::new(e.kind(), format!("{what}: {e}"))
    };
    let mut conn = TcpStream::connect((ip, port)).map_err(named("connect".into()))?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: agent-tests\r\n\r\n"
    )
    .map_err(named("send".into()))?;
    let mut raw = Vec::new();
    if let Err(e) = conn.read_to_end(&mut raw) {
        let local = conn.local_addr().map(|a| a.port()).unwrap_or(0);
        return Err(named(format!(
            "read from local port {local}, after {} bytes",
            raw.len()
        ))(e));
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no HTTP head in {text:?}")))?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status in {head:?}")))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok(Answer {
        status,
        headers,
        body: body.to_string(),
    })
}

/// A node's edge for tests and benchmarks: a Redis, a Caddy listening on every address (as a
/// node's does by default; a specific address makes reloads lose connections, docs/EDGE.md), free
/// HTTP and HTTPS ports in `cluster/edge`, and a node-agent named `node` on the product's own
/// node events (imageroot/node-events), whose steps find the built `node-agent` on PATH. More
/// nodes of the same cluster: [`EdgeNode::peer`].
pub struct EdgeNode {
    pub redis: RedisServer,
    pub caddy: Caddy,
    pub agent: Agent,
    pub node: String,
    pub http: u16,
    pub https: u16,
}

/// Another node of an [`EdgeNode`]'s cluster: its own node-agent and Caddy on the same Redis and
/// ports, listening on another loopback address only (`AGENT_EDGE_BIND`: the kernel gives that
/// address's connections to it, the first node's wildcard listener the rest), with the cluster's
/// edge key (what a joining node is given).
pub struct EdgePeer {
    pub caddy: Caddy,
    pub agent: Agent,
    pub node: String,
    pub ip: String,
}

/// A node-agent on the product's node events, driving `caddy` (listening on `ip` only, or on
/// every address when empty), with the cluster's edge key at `identity`.
fn edge_agent(redis_url: &str, node: &str, caddy: &Caddy, ip: &str, identity: &str) -> Agent {
    let bins = bin("node-agent").parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}",
        bins.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut env: Vec<(String, String)> = caddy
        .agent_env()
        .into_iter()
        .filter(|(k, _)| k != "AGENT_EDGE_IDENTITY")
        .collect();
    env.push(("AGENT_EDGE_IDENTITY".into(), identity.into()));
    env.push(("AGENT_EDGE_BIND".into(), ip.into()));
    env.push(("PATH".into(), path));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let events = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../imageroot/node-events");
    Agent::start_with_env("node-agent", redis_url, node, &[events], &[], &env)
}

impl EdgeNode {
    /// A node whose proxy listens on every address.
    pub fn start(node: &str) -> EdgeNode {
        EdgeNode::start_on(node, "")
    }

    /// A node whose proxy listens on `ip` only (empty: every address), as a cluster of several
    /// [`EdgeNode::peer`]s on one machine needs.
    pub fn start_on(node: &str, ip: &str) -> EdgeNode {
        use redis::Commands;
        let redis = RedisServer::start();
        let caddy = Caddy::start();
        let (http, https) = (free_port(), free_port());
        let _: () = redis
            .conn()
            .hset_multiple(
                "cluster/edge",
                &[("http_port", http), ("https_port", https)],
            )
            .unwrap();
        let agent = edge_agent(&redis.url(), node, &caddy, ip, &caddy.identity_file());
        EdgeNode {
            redis,
            caddy,
            agent,
            node: node.to_string(),
            http,
            https,
        }
    }

    /// A second node of this cluster, on `ip` (another loopback address, `127.0.0.2`).
    pub fn peer(&self, node: &str, ip: &str) -> EdgePeer {
        let caddy = Caddy::start();
        let agent = edge_agent(
            &self.redis.url(),
            node,
            &caddy,
            ip,
            &self.caddy.identity_file(),
        );
        EdgePeer {
            caddy,
            agent,
            node: node.to_string(),
            ip: ip.to_string(),
        }
    }

    /// Queues an `edge.sync` on `node` as run `id` and waits, at most `timeout`, for its end:
    /// its run record.
    pub fn sync(
        &self,
        node: &str,
        id: &str,
        timeout: Duration,
    ) -> std::collections::HashMap<String, String> {
        let mut con = self.redis.conn();
        crate::xadd(
            &mut con,
            &format!("node/{node}/queue"),
            &[("event", "edge.sync"), ("id", id)],
        );
        crate::wait_run_end(&mut con, &format!("node/{node}/run/{id}"), timeout)
    }

    /// Waits until `node`'s queue is empty: every queued run has ended and recorded its outcome
    /// (a run's entry leaves the stream with its final record). Caddy serves a new configuration
    /// a moment before the sync records it in `node/<n>/edge`: a test that saw it served and
    /// reads the status waits for this first.
    pub fn wait_idle(&self, node: &str) {
        use redis::Commands;
        let mut con = self.redis.conn();
        wait_for(
            &format!("{node}'s queue to empty"),
            Duration::from_secs(30),
            || {
                let left: usize = con.xlen(format!("node/{node}/queue")).unwrap_or(1);
                (left == 0).then_some(())
            },
        );
    }

    /// Records `module` as installed on `node` (what module.init's last step records).
    pub fn install_on(&self, node: &str, module: &str) {
        use redis::Commands;
        let _: () = self
            .redis
            .conn()
            .hset(format!("node/{node}/modules"), module, "localhost/hello")
            .unwrap();
    }

    /// A module installed on the node (what module.init's last step records).
    pub fn install(&self, module: &str) {
        self.install_on(&self.node, module);
    }

    /// `module-sdk route add NAME ARGS…` as module `module` would run it outside a step.
    pub fn route_add(&self, module: &str, args: &[&str]) -> crate::RunOutput {
        crate::Run::new("module-sdk")
            .args(["route", "add"])
            .args(args)
            .args(["--module", module, "--redis-url", &self.redis.url()])
            .output()
    }
}
