//! The edge proxy against a real Caddy and a real Redis: a node-agent with the product's own
//! `edge.sync` steps (imageroot/node-events) renders its modules' routes into Caddy's
//! configuration; a module's `route-requested` triggers it (`.on`); a configuration Caddy refuses
//! keeps the old one serving, with the refusal in the run record and `node/<n>/edge`; 50 reloads
//! under a loop of requests fail none of them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_tests::edge::{get, signed_cert, Backend, EdgeNode};
use agent_tests::{hgetall, wait_for, Run};
use redis::Commands;

const NODE: &str = "n1";

/// The shared fixture ([`EdgeNode`]) with what these tests ask of it, holding the test's share of
/// [`CPU`] until the node is gone (fields drop in order).
struct Edge(EdgeNode, #[allow(dead_code)] CpuShare);

/// The reload test measures Caddy, not the other tests of this binary: on two shared cores the
/// flood test's 500 runs beside it starve the handshakes that race a listener's close (see
/// docs/EDGE.md, "Reloads"). It takes this lock alone; every other test shares it.
static CPU: std::sync::RwLock<()> = std::sync::RwLock::new(());

enum CpuShare {
    Shared(#[allow(dead_code)] std::sync::RwLockReadGuard<'static, ()>),
    Alone(#[allow(dead_code)] std::sync::RwLockWriteGuard<'static, ()>),
}

impl std::ops::Deref for Edge {
    type Target = EdgeNode;
    fn deref(&self) -> &EdgeNode {
        &self.0
    }
}

impl Edge {
    fn start() -> Edge {
        let share = CpuShare::Shared(CPU.read().unwrap_or_else(|e| e.into_inner()));
        Edge(EdgeNode::start(NODE), share)
    }

    /// An edge no other test of this binary runs beside.
    fn start_alone() -> Edge {
        let alone = CpuShare::Alone(CPU.write().unwrap_or_else(|e| e.into_inner()));
        Edge(EdgeNode::start(NODE), alone)
    }

    fn con(&self) -> redis::Connection {
        self.redis.conn()
    }

    fn route_rm(&self, module: &str, name: &str) -> agent_tests::RunOutput {
        Run::new("module-sdk")
            .args(["route", "rm", name])
            .args(["--module", module, "--redis-url", &self.redis.url()])
            .output()
    }

    fn status(&self) -> HashMap<String, String> {
        hgetall(&mut self.con(), &format!("node/{NODE}/edge"))
    }

    /// The routes of `node/n1/edge`: `module/route` → state.
    fn states(&self) -> HashMap<String, String> {
        let routes = self.status().get("routes").cloned().unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&routes).unwrap_or_default();
        v.as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, s)| (k.clone(), s["state"].as_str().unwrap_or("").to_string()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits until `host` + `path` answers with `status` on the edge's HTTP port.
    fn wait_answer(&self, host: &str, path: &str, status: u16) -> agent_tests::edge::Answer {
        let answer = wait_for(
            &format!("{host}{path} to answer {status}"),
            Duration::from_secs(20),
            || {
                get(self.http, host, path)
                    .ok()
                    .filter(|a| a.status == status)
            },
        );
        // What the status says is recorded by then.
        self.wait_idle(NODE);
        answer
    }

    /// Runs edge.sync once through the agent's queue and returns its run record.
    fn sync(&self, id: &str) -> HashMap<String, String> {
        self.0.sync(NODE, id, Duration::from_secs(30))
    }

    fn output(&self, id: &str) -> String {
        self.con()
            .get(format!("node/{NODE}/run/{id}/output"))
            .unwrap_or_default()
    }
}

#[test]
fn a_route_a_module_asks_for_serves_and_goes_with_the_module() {
    let edge = Edge::start();
    let backend = Backend::start("hello1");
    edge.install("hello1");
    let mut sub = edge.redis.conn();
    let mut pubsub = sub.as_pubsub();
    pubsub.psubscribe("event/*/route-changed").unwrap();
    pubsub
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();

    let port = backend.port.to_string();
    let added = Instant::now();
    let out = edge.route_add(
        "hello1",
        &[
            "web",
            "--host",
            "hello.test",
            "--port",
            &port,
            "--header",
            "X-Frame-Options: DENY",
        ],
    );
    assert!(out.success(), "{out:?}");
    let a = edge.wait_answer("hello.test", "/", 200);
    let serving_after = added.elapsed();
    assert_eq!(a.body, "backend hello1 /\n");
    assert_eq!(a.header("x-frame-options"), Some("DENY"));
    assert_eq!(
        edge.wait_answer("hello.test", "/deep/path?q=1", 200).body,
        "backend hello1 /deep/path?q=1\n"
    );
    // Another name, no route: the edge's own 404, never the backend.
    let other = get(edge.http, "other.test", "/").unwrap();
    assert_eq!((other.status, other.body.as_str()), (404, "no route\n"));
    eprintln!("route add to serving: {serving_after:?}");

    // The module was told, through the node's event.
    let msg = pubsub.get_message().unwrap();
    assert_eq!(
        msg.get_channel_name(),
        format!("event/{NODE}/route-changed")
    );
    let event: serde_json::Value =
        serde_json::from_str(&msg.get_payload::<String>().unwrap()).unwrap();
    assert_eq!(event["module"], "hello1");
    assert_eq!(event["route"], "web");
    assert_eq!(event["state"], "serving");
    assert_eq!(
        edge.states().get("hello1/web").map(String::as_str),
        Some("serving")
    );

    // A path route of a second module beside it, stripped before it reaches the backend.
    let second = Backend::start("wiki1");
    edge.install("wiki1");
    let port2 = second.port.to_string();
    let out = edge.route_add(
        "wiki1",
        &[
            "docs",
            "--host",
            "hello.test",
            "--path",
            "/docs",
            "--strip-prefix",
            "--port",
            &port2,
        ],
    );
    assert!(out.success(), "{out:?}");
    wait_for("the docs route", Duration::from_secs(20), || {
        get(edge.http, "hello.test", "/docs/page")
            .ok()
            .filter(|a| a.body == "backend wiki1 /page\n")
    });
    // Whole segments: /docsx is hello1's.
    assert_eq!(
        get(edge.http, "hello.test", "/docsx").unwrap().body,
        "backend hello1 /docsx\n"
    );

    // The module is removed: its keys go (module.remove's 60delete-keys and 70unregister), then
    // its 80edge-sync queues edge.sync.
    let mut con = edge.con();
    let _: () = con.del("module/hello1/routes").unwrap();
    let _: () = con.hdel(format!("node/{NODE}/modules"), "hello1").unwrap();
    let out = Run::new("node-agent")
        .args([
            "--name",
            NODE,
            "--redis-url",
            &edge.redis.url(),
            "edge",
            "queue-sync",
            "module.remove hello1",
        ])
        .output();
    assert!(out.success(), "{out:?}");
    edge.wait_answer("hello.test", "/", 404);
    assert_eq!(
        get(edge.http, "hello.test", "/docs/x").unwrap().body,
        "backend wiki1 /x\n"
    );
    assert!(!edge.states().contains_key("hello1/web"));

    // And a module removing its route itself.
    assert!(edge.route_rm("wiki1", "docs").success());
    edge.wait_answer("hello.test", "/docs/x", 404);
}

#[test]
fn a_route_asked_for_right_after_ready_or_while_the_node_agent_is_down_is_served() {
    let mut edge = Edge::start();
    let backend = Backend::start("hello1");
    edge.install("hello1");
    let port = backend.port.to_string();
    // Edge::start returned at "agent ready": the trigger subscription is in place by then.
    assert!(edge
        .route_add("hello1", &["web", "--host", "a.test", "--port", &port])
        .success());
    edge.wait_answer("a.test", "/", 200);
    // Asked for while the node-agent is down: the emitted route-requested reaches nobody
    // (pub/sub), and the agent catches up when it subscribes again at its start.
    edge.0.agent.kill9();
    assert!(edge
        .route_add("hello1", &["two", "--host", "b.test", "--port", &port])
        .success());
    edge.0.agent.restart();
    edge.wait_answer("b.test", "/", 200);
}

#[test]
fn a_sync_while_the_proxy_is_down_is_recorded_and_does_not_fail() {
    // At boot the node-agent's start (its triggers catch up) comes before agent-edge's: the
    // sync finds no proxy, says so, and agent-edge queues one when it starts.
    let mut edge = Edge::start();
    edge.0.caddy.stop();
    let run = edge.sync("proxy-down");
    assert_eq!(run["status"], "done", "{}", edge.output("proxy-down"));
    let output = edge.output("proxy-down");
    assert!(output.contains("skipped:"), "{output}");
    assert!(
        edge.status()["error"].contains("does not answer"),
        "{:?}",
        edge.status()
    );
}

#[test]
fn a_configuration_caddy_refuses_keeps_the_old_one_serving_and_says_why() {
    let edge = Edge::start();
    let backend = Backend::start("hello1");
    edge.install("hello1");
    let port = backend.port.to_string();
    assert!(edge
        .route_add("hello1", &["web", "--host", "hello.test", "--port", &port])
        .success());
    edge.wait_answer("hello.test", "/", 200);
    let applied = edge.status()["config_sha256"].clone();

    // The admin moves HTTP to a port something else holds: Caddy cannot bind it.
    let taken = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let _: () = edge
        .con()
        .hset("cluster/edge", "http_port", taken_port)
        .unwrap();
    let run = edge.sync("refused-1");
    assert_eq!(run["status"], "failed", "{run:?}");
    assert_eq!(run["failed_step"], "10apply");
    let output = edge.output("refused-1");
    assert!(output.contains("Caddy refused"), "{output}");
    assert!(output.contains("address already in use"), "{output}");
    // The old configuration serves on, and the node's record says what happened.
    assert_eq!(get(edge.http, "hello.test", "/").unwrap().status, 200);
    let status = edge.status();
    assert!(
        status["error"].contains("address already in use"),
        "{status:?}"
    );
    assert_eq!(status["error_run"], "refused-1");
    assert_eq!(status["config_sha256"], applied);
    let shown = Run::agentctl(&edge.redis.url())
        .args(["node", "status", "--node", NODE])
        .output();
    assert!(shown.stdout.contains("address already in use"), "{shown:?}");

    // A bad setting is refused before Caddy is asked, and said so.
    let _: () = edge
        .con()
        .hset("cluster/edge", "http_port", "eighty")
        .unwrap();
    let run = edge.sync("refused-2");
    assert_eq!(run["status"], "failed");
    assert!(
        edge.output("refused-2")
            .contains("\"eighty\" is not a TCP port"),
        "{}",
        edge.output("refused-2")
    );

    // Put right, the next sync applies and clears the error.
    let _: () = edge
        .con()
        .hset("cluster/edge", "http_port", edge.http)
        .unwrap();
    let run = edge.sync("fixed");
    assert_eq!(run["status"], "done", "{}", edge.output("fixed"));
    assert!(!edge.status().contains_key("error"));
    drop(taken);
    let _ = edge.caddy.log();
}

#[test]
fn routes_that_conflict_or_are_malformed_are_refused_and_the_first_keeps_serving() {
    let edge = Edge::start();
    let (a, b) = (Backend::start("alpha1"), Backend::start("beta1"));
    edge.install("alpha1");
    edge.install("beta1");
    let pa = a.port.to_string();
    assert!(edge
        .route_add("alpha1", &["web", "--host", "app.test", "--port", &pa])
        .success());
    edge.wait_answer("app.test", "/", 200);

    // Refused by module-sdk, naming the owner; nothing changes.
    let pb = b.port.to_string();
    let out = edge.route_add("beta1", &["site", "--host", "app.test", "--port", &pb]);
    assert!(!out.success());
    assert!(out.stderr.contains("alpha1"), "{out:?}");
    assert!(out.stderr.contains("web"), "{out:?}");
    // A malformed host or path: a clear error, nothing written.
    for (args, why) in [
        (vec!["--host", "bad_host.test"], "bad_host.test"),
        (vec!["--host", "{http.request.host}"], "only letters"),
        (vec!["--path", "/a/../b"], ".."),
    ] {
        let mut all = vec!["x"];
        all.extend(args);
        all.extend(["--port", &pb]);
        let out = edge.route_add("beta1", &all);
        assert!(!out.success(), "{all:?}");
        assert!(out.stderr.contains(why), "{all:?}: {out:?}");
    }
    let beta_routes: HashMap<String, String> = edge.con().hgetall("module/beta1/routes").unwrap();
    assert!(beta_routes.is_empty(), "{beta_routes:?}");

    // Two module-sdk runs racing past each other's check write the same host and path: every node
    // serves the smaller module id's, the other is refused, and its module is told.
    let raced = format!(r#"{{"host":"app.test","port":{pb}}}"#);
    let _: () = edge
        .con()
        .hset("module/beta1/routes", "site", &raced)
        .unwrap();
    // A value no module-sdk would write (planted by hand): refused as invalid, the rest served.
    let _: () = edge
        .con()
        .hset(
            "module/beta1/routes",
            "junk",
            r#"{"host":"x.test","port":1,"extra":"{env.X}"}"#,
        )
        .unwrap();
    let run = edge.sync("race");
    assert_eq!(run["status"], "done", "{}", edge.output("race"));
    let states = edge.states();
    assert_eq!(states["alpha1/web"], "serving");
    assert_eq!(states["beta1/site"], "refused");
    assert_eq!(states["beta1/junk"], "refused");
    let routes = edge.status()["routes"].clone();
    assert!(routes.contains("alpha1"), "{routes}");
    assert!(routes.contains("unknown field"), "{routes}");
    assert_eq!(
        get(edge.http, "app.test", "/").unwrap().body,
        "backend alpha1 /\n"
    );
}

#[test]
fn a_flood_of_route_requests_queues_a_bounded_number_of_syncs() {
    let edge = Edge::start();
    edge.install("hello1");
    let backend = Backend::start("hello1");
    let route = format!(r#"{{"host":"hello.test","port":{}}}"#, backend.port);
    let _: () = edge
        .con()
        .hset("module/hello1/routes", "web", &route)
        .unwrap();
    let mut con = edge.con();
    for i in 0..500 {
        let _: i64 = con
            .publish("event/hello1/route-requested", format!(r#"{{"n":{i}}}"#))
            .unwrap();
    }
    edge.wait_answer("hello.test", "/", 200);
    // Let what was queued drain, then count the runs.
    wait_for("the queue to drain", Duration::from_secs(60), || {
        let len: i64 = con.xlen(format!("node/{NODE}/queue")).unwrap();
        (len == 0).then_some(())
    });
    let journal = agent_tests::stream(&mut con, &format!("node/{NODE}/journal"));
    let runs = journal
        .iter()
        .filter(|e| {
            e.get("event").map(String::as_str) == Some("edge.sync") && e["status"] == "done"
        })
        .count();
    assert!(
        (1..=50).contains(&runs),
        "{runs} edge.sync runs for 500 requests"
    );
    eprintln!("500 route-requested → {runs} edge.sync runs");
}

#[test]
fn fifty_reloads_under_a_loop_of_requests_fail_none() {
    // What a node's package sets; without it Linux resets connections at each reload (measured).
    let migrate = std::fs::read_to_string(edge::sync::MIGRATE_REQ).unwrap_or_default();
    assert_eq!(
        migrate.trim(),
        "1",
        "net.ipv4.tcp_migrate_req must be 1 for zero-drop reloads: scripts/test-deps.sh sets it"
    );
    let edge = Edge::start_alone();
    let backend = Backend::start("hello1");
    edge.install("hello1");
    let port = backend.port.to_string();
    assert!(edge
        .route_add("hello1", &["web", "--host", "hello.test", "--port", &port])
        .success());
    edge.wait_answer("hello.test", "/", 200);

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let resets = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let loops: Vec<_> = (0..2)
        .map(|_| {
            let (stop, ok, failed, resets, failures) = (
                stop.clone(),
                ok.clone(),
                failed.clone(),
                resets.clone(),
                failures.clone(),
            );
            let http = edge.http;
            std::thread::spawn(move || {
                // Bounded: at most 100,000 requests, whatever happens to the stop flag.
                for _ in 0..100_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    match get(http, "hello.test", "/") {
                        Ok(a) if a.status == 200 && a.body == "backend hello1 /\n" => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                            resets.fetch_add(1, Ordering::Relaxed);
                            failures.lock().unwrap().push(format!("{e:?}"));
                        }
                        other => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            failures.lock().unwrap().push(format!("{other:?}"));
                        }
                    }
                }
            })
        })
        .collect();

    // 50 configurations, each different (a second route comes and goes), applied by the tool.
    let url = edge.redis.url();
    let mut env: Vec<(String, String)> = edge.caddy.agent_env();
    env.push(("REDIS_URL".into(), url.clone()));
    let mut shas = std::collections::HashSet::new();
    for i in 0..50 {
        let mut con = edge.con();
        if i % 2 == 0 {
            let _: () = con
                .hset(
                    "module/hello1/routes",
                    "extra",
                    format!(r#"{{"host":"extra{i}.test","port":{port}}}"#),
                )
                .unwrap();
        } else {
            let _: () = con.hdel("module/hello1/routes", "extra").unwrap();
        }
        let out = Run::new("node-agent")
            .envs(
                &env.iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect::<Vec<_>>(),
            )
            .args(["--name", NODE, "edge", "apply"])
            .output();
        assert!(out.success(), "reload {i}: {out:?}");
        shas.insert(edge.status()["config_sha256"].clone());
    }
    stop.store(true, Ordering::Relaxed);
    for l in loops {
        l.join().unwrap();
    }
    let (ok, failed, resets) = (
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        resets.load(Ordering::Relaxed),
    );
    eprintln!(
        "50 reloads: {ok} requests served, {failed} failed, {resets} reset, {} configurations",
        shas.len()
    );
    let seen = failures
        .lock()
        .unwrap()
        .iter()
        .take(5)
        .cloned()
        .collect::<Vec<_>>();
    // A wrong answer or any other error is a defect. One reset is the residual EDGE.md documents
    // (a kernel race at a listener's close under CPU contention, ~1 request in 150,000; 2 runs of
    // ~140): tolerated once so that it cannot fail CI, while a regression (13-23 resets a run
    // without tcp_migrate_req, more with a bound address) still fails.
    assert_eq!(failed, 0, "{seen:?}");
    assert!(resets <= 1, "{resets} connections reset: {seen:?}");
    assert!(ok >= 50, "the loop made only {ok} requests");
    assert!(
        shas.len() > 25,
        "the configurations did not change: {shas:?}"
    );
}

#[test]
fn an_uploaded_certificate_is_served_over_https_and_http_redirects_to_it() {
    let edge = Edge::start();
    let backend = Backend::start("hello1");
    edge.install("hello1");
    let port = backend.port.to_string();
    assert!(edge
        .route_add("hello1", &["web", "--host", "hello.test", "--port", &port])
        .success());
    edge.wait_answer("hello.test", "/", 200);

    let dir = tempfile::tempdir().unwrap();
    let (ca, chain, key) = signed_cert(&["hello.test", "www.hello.test"]);
    let (ca_path, chain_path, key_path) = (
        dir.path().join("ca.pem"),
        dir.path().join("chain.pem"),
        dir.path().join("key.pem"),
    );
    std::fs::write(&ca_path, &ca).unwrap();
    std::fs::write(&chain_path, &chain).unwrap();
    std::fs::write(&key_path, &key).unwrap();
    let cert_env: Vec<(String, String)> = edge.caddy.agent_env();
    let cert_env: Vec<(&str, &str)> = cert_env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();

    // A key that is not the certificate's is refused, nothing stored.
    let (_, _, other_key) = signed_cert(&["hello.test"]);
    let other_path = dir.path().join("other.pem");
    std::fs::write(&other_path, &other_key).unwrap();
    let out = Run::agentctl(&edge.redis.url())
        .envs(&cert_env)
        .args([
            "cert",
            "upload",
            "--cert",
            chain_path.to_str().unwrap(),
            "--key",
            other_path.to_str().unwrap(),
        ])
        .output();
    assert!(!out.success(), "{out:?}");
    assert!(
        out.stderr.contains("not the leaf certificate's key"),
        "{out:?}"
    );
    let stored: i64 = edge.con().exists("cluster/certs/hello.test").unwrap();
    assert_eq!(stored, 0);

    let out = Run::agentctl(&edge.redis.url())
        .envs(&cert_env)
        .args([
            "cert",
            "upload",
            "--cert",
            chain_path.to_str().unwrap(),
            "--key",
            key_path.to_str().unwrap(),
        ])
        .output();
    assert!(out.success(), "{out:?}");
    assert!(
        out.stdout.contains("certificate hello.test stored"),
        "{out:?}"
    );
    // Stored once, the key encrypted: no PEM key in Redis.
    let sealed: String = edge.con().hget("cluster/certs/hello.test", "key").unwrap();
    assert!(
        sealed.starts_with("-----BEGIN AGE ENCRYPTED FILE-----"),
        "{sealed}"
    );
    assert!(!sealed.contains("PRIVATE KEY"));

    // HTTPS with the uploaded certificate, verified against its CA only.
    let https = edge.https.to_string();
    let url = format!("https://hello.test:{https}/");
    let resolve = format!("hello.test:{https}:127.0.0.1");
    let page = wait_for("HTTPS to serve hello.test", Duration::from_secs(20), || {
        let out = std::process::Command::new("curl")
            .args([
                "-sS",
                "--fail",
                "--max-time",
                "5",
                "--cacert",
                ca_path.to_str().unwrap(),
                "--resolve",
                &resolve,
                &url,
            ])
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    });
    assert_eq!(page, "backend hello1 /\n");
    // Plain HTTP now redirects to it (the route's default), keeping the path.
    let a = edge.wait_answer("hello.test", "/x?y=1", 308);
    assert_eq!(
        a.header("location"),
        Some(format!("https://hello.test:{https}/x?y=1").as_str())
    );

    let list = Run::agentctl(&edge.redis.url())
        .args(["cert", "list"])
        .output();
    assert!(list.success(), "{list:?}");
    for want in [
        "hello.test",
        "www.hello.test",
        "agent test CA",
        "valid",
        "upload",
        NODE,
    ] {
        assert!(
            list.stdout.contains(want),
            "{want:?} not in:\n{}",
            list.stdout
        );
    }
    let json = Run::agentctl(&edge.redis.url())
        .args(["cert", "list", "--json"])
        .output();
    let v: serde_json::Value = serde_json::from_str(json.stdout.trim()).unwrap();
    assert_eq!(v["nodes"], serde_json::json!([NODE]));
    assert_eq!(v["status"], "valid");
    // The agent's log and the run output never show the key.
    let key_line = key.lines().nth(1).unwrap();
    for text in [edge.agent.log(), edge.caddy.log()] {
        assert!(!text.contains(key_line), "the key leaked");
    }

    // Removed: HTTPS stops, HTTP serves again.
    let out = Run::agentctl(&edge.redis.url())
        .args(["cert", "rm", "hello.test"])
        .output();
    assert!(out.success(), "{out:?}");
    edge.wait_answer("hello.test", "/", 200);
}
