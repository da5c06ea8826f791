//! Certificates from a real ACME server (Debian's pebble, on loopback) through the real edge: a
//! route's host name gets a certificate by HTTP-01, stored once for the cluster and served over
//! HTTPS by every node; two nodes ask the ACME server once; a certificate near its end is renewed
//! once; a name that cannot be validated is reported, backed off, and fails no sync. The nodes
//! listen on one loopback address each (127.0.0.1, 127.0.0.2), so that two share the ports and
//! pebble's DNS can point a name where nothing listens.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use agent_tests::acme::{https_get, use_acme, Pebble};
use agent_tests::edge::{get, Backend, EdgeNode};
use agent_tests::{hgetall, wait_for, wait_run_end, xadd, Run};
use redis::Commands;

/// Module hello1's route `web`: the whole host name `host` to `backend`.
fn route_host(edge: &EdgeNode, backend: &Backend, host: &str) {
    let port = backend.port.to_string();
    let out = edge.route_add("hello1", &["web", "--host", host, "--port", port.as_str()]);
    assert!(out.success(), "{out:?}");
}

/// Every `certificate-changed` emitted on the cluster, collected from now on.
fn listen_certificate_changed(edge: &EdgeNode) -> Events {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut con = edge.redis.conn();
    let ready = Arc::new(std::sync::Barrier::new(2));
    {
        let (seen, ready) = (seen.clone(), ready.clone());
        std::thread::spawn(move || {
            let mut pubsub = con.as_pubsub();
            pubsub.psubscribe("event/*/certificate-changed").unwrap();
            ready.wait();
            while let Ok(msg) = pubsub.get_message() {
                let payload: String = msg.get_payload().unwrap_or_default();
                let v = serde_json::from_str(&payload).unwrap_or_default();
                seen.lock()
                    .unwrap()
                    .push((msg.get_channel_name().to_string(), v));
            }
        });
    }
    ready.wait();
    seen
}

type Events = Arc<Mutex<Vec<(String, serde_json::Value)>>>;

/// Waits for a `certificate-changed` of `action` for `name` with `serial`: (channel, payload).
fn wait_event(
    events: &Events,
    action: &str,
    name: &str,
    serial: &str,
) -> (String, serde_json::Value) {
    wait_for(
        &format!("certificate-changed {action} {name} {serial}"),
        Duration::from_secs(10),
        || {
            events
                .lock()
                .unwrap()
                .iter()
                .find(|(_, v)| v["action"] == action && v["name"] == name && v["serial"] == serial)
                .cloned()
        },
    )
}

/// Queues edge.sync on `node` as run `id` and waits for its end.
fn sync(edge: &EdgeNode, node: &str, id: &str) -> HashMap<String, String> {
    edge.sync(node, id, Duration::from_secs(120))
}

fn cert_fields(edge: &EdgeNode, name: &str) -> HashMap<String, String> {
    let mut fields = hgetall(&mut edge.redis.conn(), &format!("cluster/certs/{name}"));
    fields.remove("key");
    fields
}

/// The serial `node` serves for `name` after its last sync.
fn served_serial(edge: &EdgeNode, node: &str, name: &str) -> Option<String> {
    let status = hgetall(&mut edge.redis.conn(), &format!("node/{node}/edge"));
    let certs: serde_json::Value =
        serde_json::from_str(status.get("certificates")?).unwrap_or_default();
    certs[name].as_str().map(str::to_string)
}

/// Waits until each of `nodes` serves `serial` for `name`.
fn wait_serving(edge: &EdgeNode, nodes: &[&str], name: &str, serial: &str) {
    for node in nodes {
        wait_for(
            &format!("{node} to serve {name} serial {serial}"),
            Duration::from_secs(30),
            || (served_serial(edge, node, name).as_deref() == Some(serial)).then_some(()),
        );
    }
}

/// Every run output of `node` (the runs the triggers queued have ids of their own).
fn outputs(edge: &EdgeNode, node: &str) -> String {
    let mut con = edge.redis.conn();
    let keys: Vec<String> = con.keys(format!("node/{node}/run/*/output")).unwrap();
    keys.iter()
        .map(|k| con.get::<_, String>(k).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

fn wait_stored(edge: &EdgeNode, name: &str) -> HashMap<String, String> {
    wait_for(
        &format!("a certificate for {name} in cluster/certs"),
        Duration::from_secs(90),
        || {
            let f = cert_fields(edge, name);
            (f.get("source").map(String::as_str) == Some("acme")).then_some(f)
        },
    )
}

#[test]
fn a_route_gets_a_certificate_from_acme_that_a_second_node_serves_without_asking_again() {
    let edge = EdgeNode::start_on("n1", "127.0.0.1");
    let pebble = Pebble::start(edge.http, None);
    use_acme(&edge, &pebble);
    let events = listen_certificate_changed(&edge);
    let backend = Backend::start("hello1");
    edge.install("hello1");
    route_host(&edge, &backend, "hello.test");

    // route-requested → edge.sync → 10apply (the route, plain HTTP) → 20acme (the certificate).
    let stored = wait_stored(&edge, "hello.test");
    assert!(stored["issuer"].contains("Pebble"), "{stored:?}");
    assert_eq!(stored["names"], r#"["hello.test"]"#);
    let sealed: String = edge
        .redis
        .conn()
        .hget("cluster/certs/hello.test", "key")
        .unwrap();
    assert!(sealed.starts_with("-----BEGIN AGE ENCRYPTED FILE-----"));

    // HTTPS, verified against pebble's root only.
    let root = pebble.issuing_root();
    let page = wait_for("HTTPS to serve hello.test", Duration::from_secs(20), || {
        https_get(&root, "hello.test", "127.0.0.1", edge.https, "/").ok()
    });
    assert_eq!(page, "backend hello1 /\n");
    let a = wait_for("HTTP to redirect", Duration::from_secs(20), || {
        get(edge.http, "hello.test", "/x")
            .ok()
            .filter(|a| a.status == 308)
    });
    assert_eq!(
        a.header("location"),
        Some(format!("https://hello.test:{}/x", edge.https).as_str())
    );
    assert_eq!(pebble.issued(), 1, "{}", pebble.log());
    // The challenge is gone from the cluster once answered; the order's record says issued.
    let challenges = hgetall(&mut edge.redis.conn(), "cluster/acme/challenges");
    assert!(challenges.is_empty(), "{challenges:?}");
    let order = hgetall(&mut edge.redis.conn(), "cluster/acme/orders/hello.test");
    assert_eq!(order["state"], "issued", "{order:?}");
    let out = outputs(&edge, "n1");
    assert!(
        out.contains("certificate hello.test issued by ACME"),
        "{out}"
    );
    // certificate-changed, from the node that serves it.
    let issued = wait_event(&events, "issued", "hello.test", &stored["serial"]);
    assert_eq!(issued.0, "event/n1/certificate-changed");
    assert_eq!(issued.1["source"], "acme");

    // A second node hosting the module serves the same certificate, without a second order.
    let peer = edge.peer("n2", "127.0.0.2");
    edge.install_on("n2", "hello1");
    let run = sync(&edge, "n2", "n2-sync");
    assert_eq!(run["status"], "done", "{run:?}\n{}", peer.agent.log());
    let page = wait_for("n2 to serve hello.test", Duration::from_secs(20), || {
        https_get(&root, "hello.test", "127.0.0.2", edge.https, "/").ok()
    });
    assert_eq!(page, "backend hello1 /\n");
    assert_eq!(pebble.issued(), 1, "{}", pebble.log());
    assert_eq!(
        served_serial(&edge, "n2", "hello.test").as_deref(),
        Some(stored["serial"].as_str())
    );

    let list = Run::agentctl(&edge.redis.url())
        .args(["cert", "list", "--json"])
        .output();
    assert!(list.success(), "{list:?}");
    let v: serde_json::Value = serde_json::from_str(list.stdout.trim()).unwrap();
    assert_eq!(v["source"], "acme");
    assert_eq!(v["status"], "valid");
    assert_eq!(v["nodes"], serde_json::json!(["n1", "n2"]));
    // No key in the agents' logs or the runs' output.
    for text in [
        edge.agent.log(),
        peer.agent.log(),
        outputs(&edge, "n1"),
        outputs(&edge, "n2"),
    ] {
        assert!(!text.contains("PRIVATE KEY"), "{text}");
    }
}

#[test]
fn a_certificate_near_its_end_is_renewed_once_by_one_of_two_nodes() {
    let edge = EdgeNode::start_on("n1", "127.0.0.1");
    // 30-second certificates: renewal is due with a third of that left (docs/EDGE.md).
    let pebble = Pebble::start(edge.http, Some(Duration::from_secs(30)));
    use_acme(&edge, &pebble);
    let peer = edge.peer("n2", "127.0.0.2");
    let events = listen_certificate_changed(&edge);
    let backend = Backend::start("hello1");
    edge.install("hello1");
    edge.install_on("n2", "hello1");
    route_host(&edge, &backend, "hello.test");
    // Both nodes' edge.sync ran on the route's request: one order for the two.
    let first = wait_stored(&edge, "hello.test");
    wait_serving(&edge, &["n1", "n2"], "hello.test", &first["serial"]);
    assert_eq!(pebble.issued(), 1, "{}", pebble.log());

    // A sync while it is fresh asks for nothing.
    let run = sync(&edge, "n1", "fresh");
    assert_eq!(run["status"], "done", "{run:?}");
    assert_eq!(pebble.issued(), 1, "{}", pebble.log());

    // Once due, both nodes sync at the same moment: one renews, the other serves it.
    let parse = |f: &HashMap<String, String>, k: &str| humantime::parse_rfc3339(&f[k]).unwrap();
    let (from, until) = (parse(&first, "not_before"), parse(&first, "not_after"));
    let due = until - (until.duration_since(from).unwrap() / 3);
    if let Ok(wait) = due.duration_since(SystemTime::now()) {
        std::thread::sleep(wait + Duration::from_millis(500));
    }
    let mut con = edge.redis.conn();
    for node in ["n1", "n2"] {
        xadd(
            &mut con,
            &format!("node/{node}/queue"),
            &[("event", "edge.sync"), ("id", &format!("{node}-due"))],
        );
    }
    for node in ["n1", "n2"] {
        let run = wait_run_end(
            &mut con,
            &format!("node/{node}/run/{node}-due"),
            Duration::from_secs(120),
        );
        assert_eq!(run["status"], "done", "{run:?}");
    }
    let renewed = cert_fields(&edge, "hello.test");
    assert_ne!(renewed["serial"], first["serial"]);
    assert_eq!(pebble.issued(), 2, "renewed once:\n{}", pebble.log());
    wait_serving(&edge, &["n1", "n2"], "hello.test", &renewed["serial"]);
    let root = pebble.issuing_root();
    for ip in ["127.0.0.1", "127.0.0.2"] {
        https_get(&root, "hello.test", ip, edge.https, "/").unwrap();
    }
    wait_event(&events, "renewed", "hello.test", &renewed["serial"]);
    drop(peer);
}

#[test]
fn a_name_acme_cannot_validate_is_reported_backed_off_and_fails_no_sync() {
    let edge = EdgeNode::start_on("n1", "127.0.0.1");
    let pebble = Pebble::start(edge.http, None);
    use_acme(&edge, &pebble);
    // The ACME server looks for broken.test where nothing listens.
    pebble.dns_a("broken.test", "127.0.0.9");
    let backend = Backend::start("hello1");
    edge.install("hello1");
    route_host(&edge, &backend, "broken.test");
    let order = wait_for("the order to fail", Duration::from_secs(90), || {
        let o = hgetall(&mut edge.redis.conn(), "cluster/acme/orders/broken.test");
        (o.get("state").map(String::as_str) == Some("failed")).then_some(o)
    });
    assert!(order["error"].contains("127.0.0.9"), "{order:?}");
    assert_eq!(order["failures"], "1");
    assert!(!order["next_attempt"].is_empty());
    // The route serves over plain HTTP meanwhile; the runs did not fail.
    let a = get(edge.http, "broken.test", "/").unwrap();
    assert_eq!(a.status, 200, "{a:?}");
    let out = wait_for(
        "the warning in a run's output",
        Duration::from_secs(10),
        || {
            let o = outputs(&edge, "n1");
            o.contains("warning: certificate broken.test not issued")
                .then_some(o)
        },
    );
    assert!(out.contains("127.0.0.9"), "{out}");
    // The next sync, within the back-off, does not ask the ACME server again.
    let orders_before = pebble.log().matches("POST /order-plz").count();
    let run = sync(&edge, "n1", "again");
    assert_eq!(run["status"], "done", "{run:?}");
    let mut con = edge.redis.conn();
    let again: String = con.get("node/n1/run/again/output").unwrap_or_default();
    assert!(again.contains("the next is at"), "{again}");
    assert_eq!(
        pebble.log().matches("POST /order-plz").count(),
        orders_before
    );
    let failures: String = con
        .hget("cluster/acme/orders/broken.test", "failures")
        .unwrap();
    assert_eq!(failures, "1");
    let list = Run::agentctl(&edge.redis.url())
        .args(["cert", "list"])
        .output();
    assert!(list.success(), "{list:?}");
    assert!(
        list.stdout.contains("broken.test") && list.stdout.contains("failed"),
        "{}",
        list.stdout
    );
    assert_eq!(pebble.issued(), 0);

    // The route gone, its failure goes too (cert list does not show it for ever).
    let out = Run::new("module-sdk")
        .args(["route", "rm", "web"])
        .args(["--module", "hello1", "--redis-url", &edge.redis.url()])
        .output();
    assert!(out.success(), "{out:?}");
    let run = sync(&edge, "n1", "after-rm");
    assert_eq!(run["status"], "done", "{run:?}");
    let left: bool = con.exists("cluster/acme/orders/broken.test").unwrap();
    assert!(!left, "the order of a name no route has is dropped");
}

#[test]
fn an_order_whose_node_died_is_taken_back_and_done_again() {
    let edge = EdgeNode::start_on("n1", "127.0.0.1");
    let pebble = Pebble::start(edge.http, None);
    let backend = Backend::start("hello1");
    edge.install("hello1");
    route_host(&edge, &backend, "hello.test");
    // What a node killed in the middle of an order leaves: its record `issuing` with its
    // challenge token, the challenge in the cluster's hash, its lock expired (absent).
    let mut con = edge.redis.conn();
    let _: () = con
        .hset_multiple(
            "cluster/acme/orders/hello.test",
            &[
                ("state", "issuing"),
                ("node", "n9"),
                ("tokens", r#"["deadtoken"]"#),
            ],
        )
        .unwrap();
    let _: () = con
        .hset("cluster/acme/challenges", "deadtoken", "deadtoken.thumb")
        .unwrap();
    use_acme(&edge, &pebble);
    let run = sync(&edge, "n1", "after-crash");
    assert_eq!(run["status"], "done", "{run:?}");
    let stale: bool = con.hexists("cluster/acme/challenges", "deadtoken").unwrap();
    assert!(!stale, "the dead order's challenge is taken back");
    wait_stored(&edge, "hello.test");
    let order = hgetall(&mut con, "cluster/acme/orders/hello.test");
    assert_eq!(order["state"], "issued", "{order:?}");
    assert!(!order.contains_key("tokens"), "{order:?}");
    assert_eq!(pebble.issued(), 1);
}

#[test]
fn an_acme_server_whose_certificate_is_not_trusted_is_refused_saying_why() {
    let edge = EdgeNode::start_on("n1", "127.0.0.1");
    let pebble = Pebble::start(edge.http, None);
    use_acme(&edge, &pebble);
    // Another CA than the one that signed pebble's API: no silent trust.
    let (other_ca, _, _) = agent_tests::edge::signed_cert(&["localhost"]);
    let _: () = edge
        .redis
        .conn()
        .hset("cluster/edge", "acme_ca", other_ca)
        .unwrap();
    let backend = Backend::start("hello1");
    edge.install("hello1");
    route_host(&edge, &backend, "hello.test");
    let order = wait_for("the order to fail", Duration::from_secs(60), || {
        let o = hgetall(&mut edge.redis.conn(), "cluster/acme/orders/hello.test");
        (o.get("state").map(String::as_str) == Some("failed")).then_some(o)
    });
    // The cause is in the words, not only "client error (Connect)".
    assert!(order["error"].contains("certificate"), "{order:?}");
    assert_eq!(pebble.issued(), 0);
    let stored: bool = edge
        .redis
        .conn()
        .exists("cluster/certs/hello.test")
        .unwrap();
    assert!(!stored);
}

#[test]
fn an_uploaded_certificate_is_served_instead_of_acme_for_its_name() {
    let edge = EdgeNode::start_on("n1", "127.0.0.1");
    let pebble = Pebble::start(edge.http, None);
    use_acme(&edge, &pebble);
    // The sysadmin's own certificate for hello.test, uploaded before the route exists.
    let (ca, chain, key) = agent_tests::edge::signed_cert(&["hello.test"]);
    let dir = tempfile::tempdir().unwrap();
    let (chain_path, key_path) = (dir.path().join("chain.pem"), dir.path().join("key.pem"));
    std::fs::write(&chain_path, &chain).unwrap();
    std::fs::write(&key_path, &key).unwrap();
    let env = edge.caddy.agent_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let out = Run::agentctl(&edge.redis.url())
        .envs(&env)
        .args(["cert", "upload", "--cert"])
        .arg(chain_path.to_str().unwrap())
        .arg("--key")
        .arg(key_path.to_str().unwrap())
        .output();
    assert!(out.success(), "{out:?}");
    let backend = Backend::start("hello1");
    edge.install("hello1");
    route_host(&edge, &backend, "hello.test");
    // Served over HTTPS with the uploaded certificate (verified against its own CA only)…
    let page = wait_for("HTTPS with the upload", Duration::from_secs(20), || {
        https_get(&ca, "hello.test", "127.0.0.1", edge.https, "/").ok()
    });
    assert_eq!(page, "backend hello1 /\n");
    // …and the ACME server never asked, however many syncs run.
    let run = sync(&edge, "n1", "again");
    assert_eq!(run["status"], "done", "{run:?}");
    assert_eq!(pebble.issued(), 0, "{}", pebble.log());
    assert_eq!(pebble.log().matches("POST /order-plz").count(), 0);
    assert_eq!(cert_fields(&edge, "hello.test")["source"], "upload");
}
