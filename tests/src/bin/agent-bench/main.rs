//! `agent-bench`: the engine's benchmarks, each reported as a ratio to a floor measured in the same run
//! on the same machine, because these machines are shared and noisy.
//!
//! * latency from `PUBLISH` to the first step's exec (p50, p99), the exec time being the kernel's own
//!   (process-events connector, [`exec_events`]), against the floor of one Redis round trip plus
//!   spawning and reaping `/bin/true`. Latency samples are taken one at a time with an idle gap before
//!   each, so the floors are measured both back to back ("hot") and after the same idle gap
//!   ("paced"): an idle process and an idle core wake up slower, and a ratio is only fair between
//!   figures taken the same way;
//! * events per second through one agent with a 3-step no-op handler, against the bare spawn rate of
//!   three `/bin/true` per event, without arguments and with the step's argv (the data as argv[1]);
//! * idle RSS of one module-agent, and of 50 idle agents together.
//!
//! Run with `scripts/bench.sh` (release build, as root for the exec events). Options: `--events N`
//! (throughput, default 500), `--samples N` (latency, default 200), `--agents N` (RSS, default 50),
//! `--appendfsync always|everysec|no` (Redis's fsync policy, default everysec).

mod exec_events;

use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use agent_tests::{
    bench_stamps, bin, monotonic_ns, ms, percentile, wait_for, Agent, EventDirs, RedisServer,
};
use exec_events::ExecEvents;
use redis::Commands;

/// Idle time before each latency sample and each paced floor sample.
const GAP: Duration = Duration::from_millis(20);

/// p50 and p99 of unsorted samples.
fn p50_p99(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    (percentile(&v, 0.5), percentile(&v, 0.99))
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn since(t0: u64, t1: u64) -> Duration {
    Duration::from_nanos(t1.saturating_sub(t0))
}

/// One round trip, one spawn-and-reap of `/bin/true`, (with exec events) the time from the spawn
/// call to the child's exec, and the time from spawning bench-step to its first instruction.
struct FloorSample {
    rtt: Duration,
    spawn: Duration,
    to_exec: Option<Duration>,
    to_code: Duration,
}

fn floor_sample(
    con: &mut redis::Connection,
    execs: Option<&ExecEvents>,
    stamp_file: &Path,
    gap: bool,
) -> FloorSample {
    if gap {
        std::thread::sleep(GAP);
    }
    let t = Instant::now();
    let _: String = redis::cmd("PING").query(con).unwrap();
    let rtt = t.elapsed();
    if gap {
        std::thread::sleep(GAP);
    }
    let t0 = monotonic_ns();
    let mut child = Command::new("/bin/true").spawn().expect("/bin/true");
    child.wait().expect("/bin/true");
    let spawn = since(t0, monotonic_ns());
    let to_exec = execs
        .and_then(|e| e.exec_time(child.id(), Duration::from_secs(1)))
        .map(|t| since(t0, t));
    if gap {
        std::thread::sleep(GAP);
    }
    let t0 = monotonic_ns();
    Command::new(bin("bench-step"))
        .env("BENCH_STAMP_FILE", stamp_file)
        .status()
        .expect("bench-step");
    let (t_code, _) = *bench_stamps(stamp_file).last().expect("bench-step's stamp");
    FloorSample {
        rtt,
        spawn,
        to_exec,
        to_code: since(t0, t_code),
    }
}

/// p50 and p99, from `n` samples, of the issue's floor (round trip + spawn and reap of `/bin/true`),
/// of the strict one (round trip + spawn call to exec) and of round trip + spawn to the first
/// instruction of bench-step (the step of the latency runs).
struct Floors {
    issue: (Duration, Duration),
    to_exec: Option<(Duration, Duration)>,
    to_code: (Duration, Duration),
    rtt_p50: Duration,
    spawn_p50: Duration,
}

fn floors(con: &mut redis::Connection, execs: Option<&ExecEvents>, n: usize, gap: bool) -> Floors {
    let stamps = tempfile::NamedTempFile::new().unwrap();
    let samples: Vec<FloorSample> = (0..n)
        .map(|_| floor_sample(con, execs, stamps.path(), gap))
        .collect();
    let (rtt50, rtt99) = p50_p99(samples.iter().map(|s| s.rtt).collect());
    let (sp50, sp99) = p50_p99(samples.iter().map(|s| s.spawn).collect());
    let to_exec: Option<Vec<Duration>> = samples.iter().map(|s| s.to_exec).collect();
    let (c50, c99) = p50_p99(samples.iter().map(|s| s.to_code).collect());
    Floors {
        issue: (rtt50 + sp50, rtt99 + sp99),
        to_code: (rtt50 + c50, rtt99 + c99),
        to_exec: to_exec.map(|v| {
            let (e50, e99) = p50_p99(v);
            (rtt50 + e50, rtt99 + e99)
        }),
        rtt_p50: rtt50,
        spawn_p50: sp50,
    }
}

/// Latency samples: PUBLISH to the exec of the step (kernel's time), and to its first instruction.
struct Latencies {
    to_exec: Vec<Duration>,
    to_code: Vec<Duration>,
}

struct LatencyBench<'a> {
    redis: &'a RedisServer,
    execs: Option<&'a ExecEvents>,
    stamp_file: &'a Path,
    samples: usize,
}

impl LatencyBench<'_> {
    /// `samples` events to `lat0` (after 10 warm-up ones), one at a time: after an idle gap each
    /// (`paced`), or each as soon as the previous run's end is published on its progress channel.
    fn run(&self, paced: bool) -> Latencies {
        let mut con = self.redis.conn();
        let mut watch = self.redis.conn();
        let mut progress = watch.as_pubsub();
        progress.psubscribe("progress/lat0/*").unwrap();
        let mut out = Latencies {
            to_exec: Vec::new(),
            to_code: Vec::new(),
        };
        for i in 0..self.samples + 10 {
            if paced {
                std::thread::sleep(GAP);
            }
            let before = bench_stamps(self.stamp_file).len();
            let t0 = monotonic_ns();
            let n: i64 = con.publish("lat0:lat", "x").unwrap();
            assert_eq!(n, 1);
            // The run's last progress message carries its final status.
            loop {
                let msg = progress.get_message().unwrap();
                let body: String = msg.get_payload().unwrap();
                if body.contains("\"status\":\"done\"") {
                    break;
                }
                assert!(!body.contains("\"status\":\"failed\""), "{body}");
            }
            let (t_code, pid) = wait_for("step stamp", Duration::from_secs(30), || {
                bench_stamps(self.stamp_file).get(before).copied()
            });
            let t_exec = self.execs.map(|e| {
                e.exec_time(pid, Duration::from_secs(1))
                    .expect("exec event of the step")
            });
            if i >= 10 {
                out.to_code.push(since(t0, t_code));
                out.to_exec.extend(t_exec.map(|t| since(t0, t)));
            }
        }
        if let Some(e) = self.execs {
            e.clear();
        }
        out
    }
}

fn report(what: &str, v: Vec<Duration>, floors: &[(String, (Duration, Duration))]) {
    let n = v.len();
    let (p50, p99) = p50_p99(v);
    println!(
        "latency PUBLISH -> {what} ({n} samples): p50 {:.3} ms, p99 {:.3} ms",
        ms(p50),
        ms(p99)
    );
    for (name, (f50, f99)) in floors {
        println!(
            "    against {name}: p50 {:.2}x ({:.3} ms), p99 {:.2}x ({:.3} ms)",
            ratio(p50, *f50),
            ms(*f50),
            ratio(p99, *f99),
            ms(*f99)
        );
    }
}

fn main() {
    let samples = agent_tests::bench_num_arg("--samples", 200);
    let events = agent_tests::bench_num_arg("--events", 500);
    let agents = agent_tests::bench_num_arg("--agents", 50);
    let fsync = agent_tests::bench_arg("--appendfsync").unwrap_or_else(|| "everysec".into());
    let redis = RedisServer::start_with(&["--appendfsync", &fsync]);
    let mut con = redis.conn();
    println!("redis-server: appendonly yes, appendfsync {fsync}");
    let execs = match ExecEvents::start() {
        Ok(e) => Some(e),
        Err(e) => {
            println!("no exec events ({e}; needs root): latency ends at the step's first instruction instead");
            None
        }
    };

    // Floors, back to back and paced like the latency samples.
    let hot = floors(&mut con, execs.as_ref(), 300, false);
    let paced = floors(&mut con, execs.as_ref(), samples.min(100), true);
    for (name, f) in [("hot", &hot), ("paced", &paced)] {
        println!(
            "floor ({name}): redis round trip p50 {:.3} ms + spawn and reap /bin/true p50 {:.3} ms = {:.3} ms{}",
            ms(f.rtt_p50),
            ms(f.spawn_p50),
            ms(f.issue.0),
            f.to_exec
                .map(|(p50, _)| format!("; round trip + spawn call to exec {:.3} ms", ms(p50)))
                .unwrap_or_default()
        );
    }

    // Latency: PUBLISH -> first step's exec, one event at a time: paced (an idle gap before each)
    // and back to back (the next PUBLISH as soon as the previous run's end is announced).
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
    let bench = LatencyBench {
        redis: &redis,
        execs: execs.as_ref(),
        stamp_file: &stamp_file,
        samples,
    };
    let paced_lat = bench.run(true);
    let hot_lat = bench.run(false);
    drop(lat_agent);
    let floor_lines = |f: &Floors, kind: &str| {
        let mut v = vec![(
            format!("the {kind} floor (issue's: round trip + spawn and reap /bin/true)"),
            f.issue,
        )];
        if let Some(e) = f.to_exec {
            v.push((
                format!("the {kind} strict floor (round trip + spawn call to exec of /bin/true)"),
                e,
            ));
        }
        v
    };
    for (kind, lat, f) in [("paced", paced_lat, &paced), ("hot", hot_lat, &hot)] {
        let floors = floor_lines(f, kind);
        if !lat.to_exec.is_empty() {
            report(&format!("first step's exec, {kind}"), lat.to_exec, &floors);
        }
        let code_floors = [
            floors[0].clone(),
            (
                format!("the {kind} floor of the same binary (round trip + spawn of bench-step to its first instruction)"),
                f.to_code,
            ),
        ];
        report(
            &format!("first instruction of the step (after exec and dynamic loading), {kind}"),
            lat.to_code,
            &code_floors,
        );
    }

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
    // Two bare rates: the issue's (`/bin/true` without arguments) and one with the argv a step really
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
