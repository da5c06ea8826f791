//! `agent-bench`: the engine's benchmarks, each reported as a ratio to a floor measured in the same run
//! on the same machine, because these machines are shared and noisy.
//!
//! * latency from `PUBLISH` to the first step's exec (p50, p99) against one Redis round trip plus
//!   spawning `/bin/true`, and against one round trip plus spawning the same step binary up to its
//!   first instruction (the stricter floor: it counts the step's own start-up in both);
//! * events per second through one agent with a 3-step no-op handler, against the bare spawn rate of
//!   three `/bin/true` per event, without arguments and with the step's argv (the data as argv[1]);
//! * idle RSS of one module-agent, and of 50 idle agents together.
//!
//! Run with `scripts/bench.sh` (release build). Options: `--events N` (throughput, default 500),
//! `--samples N` (latency, default 200), `--agents N` (RSS, default 50).

use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use agent_tests::{bin, wait_for, Agent, EventDirs, RedisServer};
use redis::Commands;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn spawn_true() -> Duration {
    let t = Instant::now();
    Command::new("/bin/true").status().expect("/bin/true");
    t.elapsed()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn stamps(path: &Path) -> Vec<u128> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect()
}

fn main() {
    let samples = arg("--samples", 200);
    let events = arg("--events", 500);
    let agents = arg("--agents", 50);
    let redis = RedisServer::start();
    let mut con = redis.conn();

    // Floors.
    let mut rtt: Vec<Duration> = (0..1000)
        .map(|_| {
            let t = Instant::now();
            let _: String = redis::cmd("PING").query(&mut con).unwrap();
            t.elapsed()
        })
        .collect();
    rtt.sort();
    let mut spawn: Vec<Duration> = (0..300).map(|_| spawn_true()).collect();
    spawn.sort();
    let floor_p50 = percentile(&rtt, 0.5) + percentile(&spawn, 0.5);
    let floor_p99 = percentile(&rtt, 0.99) + percentile(&spawn, 0.99);
    let stamp_probe = tempfile::NamedTempFile::new().unwrap();
    let mut to_exec: Vec<Duration> = (0..300)
        .map(|_| {
            let t0 = now_ns();
            Command::new(bin("bench-step"))
                .env("BENCH_STAMP_FILE", stamp_probe.path())
                .status()
                .unwrap();
            let t1 = *stamps(stamp_probe.path()).last().unwrap();
            Duration::from_nanos(t1.saturating_sub(t0) as u64)
        })
        .collect();
    to_exec.sort();
    let exec_floor_p50 = percentile(&rtt, 0.5) + percentile(&to_exec, 0.5);
    println!(
        "floors: redis round trip p50 {:.3} ms; spawn+wait /bin/true p50 {:.3} ms; spawn to first instruction of the step binary p50 {:.3} ms",
        ms(percentile(&rtt, 0.5)),
        ms(percentile(&spawn, 0.5)),
        ms(percentile(&to_exec, 0.5))
    );

    // Latency: PUBLISH -> first step exec, one event at a time.
    let dirs = EventDirs::new(1);
    let stamp_file = dirs.work().join("stamps");
    let step = dirs.dir(0).join("lat");
    std::fs::create_dir_all(&step).unwrap();
    symlink(bin("bench-step"), step.join("10stamp")).unwrap();
    let _: () = con
        .hset(
            "module/lat0/module.env",
            "BENCH_STAMP_FILE",
            stamp_file.to_str().unwrap(),
        )
        .unwrap();
    let lat_agent = Agent::module(&redis, "lat0", &dirs, &[]);
    let mut lat = Vec::with_capacity(samples);
    for i in 0..samples + 10 {
        let before = stamps(&stamp_file).len();
        let t0 = now_ns();
        let n: i64 = con.publish("lat0:lat", "x").unwrap();
        assert_eq!(n, 1);
        let t1 = wait_for("step stamp", Duration::from_secs(30), || {
            stamps(&stamp_file).get(before).copied()
        });
        wait_for("queue empty", Duration::from_secs(30), || {
            (con.xlen::<_, i64>("module/lat0/queue").ok()? == 0).then_some(())
        });
        if i >= 10 {
            lat.push(Duration::from_nanos(t1.saturating_sub(t0) as u64));
        }
    }
    drop(lat_agent);
    lat.sort();
    let (p50, p99) = (percentile(&lat, 0.5), percentile(&lat, 0.99));
    println!(
        "latency PUBLISH -> first step exec ({samples} samples): p50 {:.3} ms = {:.2}x floor ({:.3} ms); p99 {:.3} ms = {:.2}x floor p99 ({:.3} ms)",
        ms(p50),
        p50.as_secs_f64() / floor_p50.as_secs_f64(),
        ms(floor_p50),
        ms(p99),
        p99.as_secs_f64() / floor_p99.as_secs_f64(),
        ms(floor_p99)
    );
    println!(
        "latency p50 against round trip + spawn to the step's first instruction ({:.3} ms): {:.2}x",
        ms(exec_floor_p50),
        p50.as_secs_f64() / exec_floor_p50.as_secs_f64()
    );

    // Throughput: 3 no-op steps per event.
    let tdirs = EventDirs::new(1);
    let ev = tdirs.dir(0).join("noop");
    std::fs::create_dir_all(&ev).unwrap();
    for s in ["10a", "20b", "30c"] {
        symlink("/bin/true", ev.join(s)).unwrap();
    }
    let tp_agent = Agent::module(&redis, "tp0", &tdirs, &[]);
    let t = Instant::now();
    let mut pipe = redis::pipe();
    for _ in 0..events {
        pipe.cmd("XADD")
            .arg("module/tp0/queue")
            .arg("*")
            .arg("event")
            .arg("noop")
            .ignore();
    }
    let _: () = pipe.query(&mut con).unwrap();
    wait_for("all events done", Duration::from_secs(600), || {
        let n: i64 = con.xlen("module/tp0/queue").ok()?;
        (n == 0).then_some(())
    });
    let elapsed = t.elapsed();
    drop(tp_agent);
    let rate = events as f64 / elapsed.as_secs_f64();
    // Two bare rates: the (`/bin/true` without arguments) and one with the argv a step really
    // gets (the event data as argv[1], here empty). The difference is not ours: coreutils' `true` given
    // one argument checks it for --help/--version and initialises the locale first.
    let bare_rate = |with_arg: bool| {
        let t = Instant::now();
        for _ in 0..events * 3 {
            let mut c = Command::new("/bin/true");
            if with_arg {
                c.arg("");
            }
            c.status().expect("/bin/true");
        }
        events as f64 / t.elapsed().as_secs_f64()
    };
    let (bare, bare_argv) = (bare_rate(false), bare_rate(true));
    println!(
        "throughput, 3-step no-op handler ({events} events): {rate:.0} events/s = {:.0}% of the bare rate of 3 spawns of /bin/true per event ({bare:.0}/s); {:.0}% of 3 spawns of /bin/true with the step's argv ({bare_argv:.0}/s)",
        rate / bare * 100.0,
        rate / bare_argv * 100.0
    );

    // Idle RSS.
    let idle = EventDirs::new(1);
    let one = Agent::module(&redis, "idle0", &idle, &[]);
    std::thread::sleep(Duration::from_secs(1));
    let one_rss = rss_kib(one.pid());
    drop(one);
    let many: Vec<Agent> = (0..agents)
        .map(|i| Agent::module(&redis, &format!("idle{i}"), &idle, &[]))
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let total: u64 = many.iter().map(|a| rss_kib(a.pid())).sum();
    println!(
        "idle RSS: one module-agent {:.1} MiB; {agents} idle agents together {:.1} MiB ({:.1} MiB each)",
        one_rss as f64 / 1024.0,
        total as f64 / 1024.0,
        total as f64 / 1024.0 / agents as f64
    );
}
