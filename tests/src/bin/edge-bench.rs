//! The edge benchmark (issue 14): requests/s and p99 latency through the edge proxy against the
//! same backend straight, in the same run (`wrk`, Debian's), and the time from `module-sdk route
//! add` returning to the route serving, through the real path (route-requested → the node-agent's
//! trigger → edge.sync → Caddy); and the time from `route add` to the route served over HTTPS
//! with a certificate issued by a real ACME server (Debian's pebble on loopback), against route
//! add → served over plain HTTP in the same run. Prints Markdown rows for docs/BENCHMARKS.md.
//!
//! Usage: scripts/bench-edge.sh [--secs N] [--connections N] [--routes N] [--certs N]

use std::process::Command;
use std::time::{Duration, Instant};

use agent_tests::acme::{https_get, use_acme, Pebble};
use agent_tests::edge::{get, Backend, EdgeNode};
use agent_tests::{bench_num_arg, ms, percentile};

const NODE: &str = "bench1";

/// `wrk` against `url` with `host`: (requests/s, p99 latency in ms).
fn wrk(url: &str, host: &str, secs: usize, connections: usize) -> (f64, f64) {
    let out = Command::new("wrk")
        .args(["-t", "2", "-c", &connections.to_string(), "-d"])
        .arg(format!("{secs}s"))
        .args(["--latency", "-H"])
        .arg(format!("Host: {host}"))
        .arg(url)
        .output()
        .expect("wrk (Debian package wrk; scripts/test-deps.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "wrk failed:\n{text}");
    assert!(
        !text.contains("Non-2xx") && !text.contains("Socket errors"),
        "wrk saw errors:\n{text}"
    );
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no Requests/sec in:\n{text}"));
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map(|v| latency_ms(v.trim()))
        .unwrap_or_else(|| panic!("no 99% latency in:\n{text}"));
    (rps, p99)
}

/// wrk's latency (`812.00us`, `1.20ms`, `2.01s`) in ms.
fn latency_ms(v: &str) -> f64 {
    let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len()));
    let n: f64 = num.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        _ => f64::NAN,
    }
}

fn main() {
    let secs = bench_num_arg("secs", 10);
    let connections = bench_num_arg("connections", 16);
    let routes = bench_num_arg("routes", 20);
    let certs = bench_num_arg("certs", 10);
    let migrate = std::fs::read_to_string(edge::sync::MIGRATE_REQ).unwrap_or_default();

    let edge = EdgeNode::start(NODE);
    let backend = Backend::start("hello1");
    let http = edge.http;
    edge.install("hello1");
    let add = |name: &str, host: &str| {
        let port = backend.port.to_string();
        let out = edge.route_add("hello1", &[name, "--host", host, "--port", &port]);
        assert!(out.success(), "{out:?}");
    };
    add("web", "hello.test");
    let wait = |host: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if get(http, host, "/").is_ok_and(|a| a.status == 200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        panic!("{host} never served");
    };
    wait("hello.test");

    // Route add → serving, each a new host name (each a new configuration).
    let mut took = Vec::new();
    for i in 0..routes {
        let host = format!("r{i}.test");
        add(&format!("r{i}"), &host);
        let t = Instant::now();
        wait(&host);
        took.push(t.elapsed());
    }
    took.sort();

    // Route add → HTTPS with a certificate from the ACME server, each a new host name, on an edge
    // of its own (on the first one, ACME would issue for the 21 names above first).
    let acme_edge = EdgeNode::start(NODE);
    acme_edge.install("hello1");
    let pebble = Pebble::start(acme_edge.http, None);
    use_acme(&acme_edge, &pebble);
    let root = pebble.issuing_root();
    let mut issued = Vec::new();
    for i in 0..certs {
        let host = format!("c{i}.test");
        let port = backend.port.to_string();
        let out = acme_edge.route_add(
            "hello1",
            &[&format!("c{i}"), "--host", &host, "--port", &port],
        );
        assert!(out.success(), "{out:?}");
        let t = Instant::now();
        let deadline = t + Duration::from_secs(60);
        while https_get(&root, &host, "127.0.0.1", acme_edge.https, "/").is_err() {
            assert!(
                Instant::now() < deadline,
                "{host} never served over HTTPS:\n{}\n{}",
                acme_edge.agent.log(),
                pebble.log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        issued.push(t.elapsed());
    }
    issued.sort();
    assert_eq!(pebble.issued(), certs, "one issuance per name");

    let direct = format!("http://127.0.0.1:{}/", backend.port);
    let through = format!("http://127.0.0.1:{http}/");
    let (rps_direct, p99_direct) = wrk(&direct, "hello.test", secs, connections);
    let (rps_edge, p99_edge) = wrk(&through, "hello.test", secs, connections);

    println!(
        "edge benchmark: wrk -t2 -c{connections} -d{secs}s, Caddy {}, tcp_migrate_req {}",
        caddy_version(),
        migrate.trim()
    );
    println!("| measure | straight to the backend | through the edge | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| requests/s | {rps_direct:.0} | {rps_edge:.0} | {:.2}× |",
        rps_edge / rps_direct
    );
    println!(
        "| p99 latency | {p99_direct:.2} ms | {p99_edge:.2} ms | {:.2}× |",
        p99_edge / p99_direct
    );
    println!(
        "route add → serving ({routes} routes): median {:.1} ms, p90 {:.1} ms, max {:.1} ms",
        ms(percentile(&took, 0.5)),
        ms(percentile(&took, 0.9)),
        ms(*took.last().unwrap())
    );
    println!(
        "route add → HTTPS with a certificate from pebble ({certs} names): median {:.1} ms, p90 {:.1} ms, max {:.1} ms; {:.1}× route add → plain HTTP",
        ms(percentile(&issued, 0.5)),
        ms(percentile(&issued, 0.9)),
        ms(*issued.last().unwrap()),
        ms(percentile(&issued, 0.5)) / ms(percentile(&took, 0.5))
    );
}

fn caddy_version() -> String {
    Command::new(agent_tests::edge::caddy_binary())
        .arg("version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
