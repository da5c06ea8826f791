//! `scale-bench`: how far one leader's Redis carries, by simulation on one machine: N real
//! module-agents (plain processes, default 200) against one `redis-server`, every figure beside a
//! baseline taken in the same run — the same Redis with one agent, and a raw round trip.
//!
//! Measured, in order:
//! * Redis's idle CPU (`INFO cpu`, as a share of one core) and command rate (`INFO commandstats`)
//!   with no agent, one, and N, over the same window; and the agents' own idle CPU (`/proc`);
//! * dispatch latency, `PUBLISH <agent>:scale` → the step's first instruction (its own clock
//!   stamp), one event at a time after an idle gap, to one agent and then to random agents of N:
//!   p50 and p99, as ratios to the one-agent figures and to a raw `PING` round trip;
//! * a burst: one `PUBLISH` to each of the N agents at once (pipelined), until every step has run:
//!   p50, p99 and last, with Redis's CPU during the bursts.
//!
//! From these it prints a linear estimate for 1,000 and 10,000 agents (Redis CPU at idle,
//! connections, commands per second); docs/BENCHMARKS.md reads it against Redis's own limits.
//!
//! Run with `scripts/bench-scale.sh [--agents N] [--samples N] [--idle-secs N] [--bursts N]`
//! (release build; no root needed).

use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::{Duration, Instant};

use agent_tests::{
    bench_stamps, bin, monotonic_ns, ms, percentile, wait_for, Agent, EventDirs, RedisServer,
};
use redis::Commands;

/// Idle time before each latency sample, so samples do not queue behind each other.
const GAP: Duration = Duration::from_millis(20);

/// p50, p99 and the largest of `v`.
fn spread(mut v: Vec<Duration>) -> (Duration, Duration, Duration) {
    v.sort();
    (
        percentile(&v, 0.5),
        percentile(&v, 0.99),
        *v.last().expect("samples"),
    )
}

/// The times of the stamps bench-step wrote.
fn stamps(path: &Path) -> Vec<u64> {
    bench_stamps(path).into_iter().map(|(t, _)| t).collect()
}

/// Raises the open-file limit to the hard one: Redis inherits it, and N agents keep ~4N connections
/// (Redis lowers `maxclients` to what its limit allows).
fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit to fill and then to pass back.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    lim.rlim_cur
}

/// Redis's CPU seconds so far (user + system), from `INFO cpu`.
fn redis_cpu(con: &mut redis::Connection) -> f64 {
    let info: String = redis::cmd("INFO").arg("cpu").query(con).unwrap();
    info.lines()
        .filter(|l| l.starts_with("used_cpu_user:") || l.starts_with("used_cpu_sys:"))
        .filter_map(|l| l.split_once(':')?.1.trim().parse::<f64>().ok())
        .sum()
}

/// Calls per command so far, from `INFO commandstats`.
fn command_calls(con: &mut redis::Connection) -> Vec<(String, u64)> {
    let info: String = redis::cmd("INFO").arg("commandstats").query(con).unwrap();
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_string(), calls))
        })
        .collect()
}

fn info_field(con: &mut redis::Connection, section: &str, field: &str) -> String {
    let info: String = redis::cmd("INFO").arg(section).query(con).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or("?")
        .trim()
        .to_string()
}

/// CPU seconds of a process so far, every thread's (`schedstat`, in nanoseconds: the `stat` ticks
/// are 10 ms, coarser than what an idle agent uses in a second).
fn process_cpu(pid: u32) -> f64 {
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
        .unwrap_or_default();
    threads
        .iter()
        .filter_map(|t| std::fs::read_to_string(t.join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum::<u64>() as f64
        / 1e9
}

/// What Redis and the agents did over an idle window.
struct Idle {
    redis_core: f64,
    agents_core: f64,
    commands_per_s: f64,
    by_command: Vec<(String, f64)>,
}

fn idle_window(con: &mut redis::Connection, agents: &[Agent], secs: u64) -> Idle {
    let agents_cpu = |a: &[Agent]| a.iter().map(|a| process_cpu(a.pid())).sum::<f64>();
    let (c0, a0, k0) = (redis_cpu(con), agents_cpu(agents), command_calls(con));
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let elapsed = t.elapsed().as_secs_f64();
    let (c1, a1, k1) = (redis_cpu(con), agents_cpu(agents), command_calls(con));
    // The INFO calls of this window itself are not the agents' work.
    let mut by_command: Vec<(String, f64)> = k1
        .iter()
        .filter(|(name, _)| name != "info")
        .map(|(name, n)| {
            let before = k0.iter().find(|(m, _)| m == name).map_or(0, |(_, b)| *b);
            (name.clone(), (n - before) as f64 / elapsed)
        })
        .filter(|(_, rate)| *rate > 0.0)
        .collect();
    by_command.sort_by(|a, b| b.1.total_cmp(&a.1));
    Idle {
        redis_core: (c1 - c0) / elapsed,
        agents_core: (a1 - a0) / elapsed,
        commands_per_s: by_command.iter().fold(0.0, |sum, (_, r)| sum + r),
        by_command,
    }
}

fn print_idle(what: &str, i: &Idle) {
    let top: Vec<String> = i
        .by_command
        .iter()
        .take(6)
        .map(|(c, r)| format!("{c} {r:.1}/s"))
        .collect();
    println!(
        "idle, {what}: Redis {:.2}% of a core, {:.1} commands/s ({}); the agents {:.2}% of a core",
        i.redis_core * 100.0,
        i.commands_per_s,
        top.join(", "),
        i.agents_core * 100.0
    );
}

/// Redis `PING` round trips from this process: the floor of any dispatch.
fn round_trips(con: &mut redis::Connection, n: usize) -> Vec<Duration> {
    (0..n)
        .map(|_| {
            std::thread::sleep(GAP);
            let t = Instant::now();
            let _: String = redis::cmd("PING").query(con).unwrap();
            t.elapsed()
        })
        .collect()
}

/// One event at a time, each to the next agent of `names` in a scattered order, after an idle gap: PUBLISH → the
/// step's first instruction.
fn dispatch(
    con: &mut redis::Connection,
    names: &[String],
    stamp: &Path,
    n: usize,
) -> Vec<Duration> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n + 5 {
        std::thread::sleep(GAP);
        // A stride prime to any N the benchmark uses spreads the samples over the agents.
        let name = &names[(i * 7919 + 13) % names.len()];
        let before = stamps(stamp).len();
        let t0 = monotonic_ns();
        let receivers: i64 = con.publish(format!("{name}:scale"), "").unwrap();
        assert_eq!(receivers, 1, "{name} is subscribed");
        let t1 = wait_for("the step's stamp", Duration::from_secs(30), || {
            stamps(stamp).get(before).copied()
        });
        // The first few wake up caches and the agents' runtimes: not counted.
        if i >= 5 {
            out.push(Duration::from_nanos(t1.saturating_sub(t0)));
        }
    }
    out
}

/// One PUBLISH to every agent in one pipeline; the time from sending it to each step's stamp.
fn burst(con: &mut redis::Connection, names: &[String], stamp: &Path) -> Vec<Duration> {
    let before = stamps(stamp).len();
    let mut pipe = redis::pipe();
    for name in names {
        pipe.cmd("PUBLISH")
            .arg(format!("{name}:scale"))
            .arg("")
            .ignore();
    }
    let t0 = monotonic_ns();
    let _: () = pipe.query(con).unwrap();
    let end = Instant::now() + Duration::from_secs(120);
    let all = loop {
        let s = stamps(stamp);
        if s.len() >= before + names.len() {
            break s;
        }
        if Instant::now() > end {
            // What the agents say about the events that did not run.
            for name in names {
                let last: Vec<(String, Vec<(String, String)>)> = redis::cmd("XREVRANGE")
                    .arg(format!("module/{name}/journal"))
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(2)
                    .query(con)
                    .unwrap_or_default();
                eprintln!("{name}: {last:?}");
            }
            panic!("{} of {} steps ran", s.len() - before, names.len());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    all[before..]
        .iter()
        .map(|t| Duration::from_nanos(t.saturating_sub(t0)))
        .collect()
}

/// The floor of a burst on this machine: `n` bench-steps spawned back to back by this process, no
/// agent nor Redis in between; the time from the first spawn to each one's stamp.
fn spawn_burst(stamp: &Path, n: usize) -> Vec<Duration> {
    let before = stamps(stamp).len();
    let t0 = monotonic_ns();
    let children: Vec<std::process::Child> = (0..n)
        .map(|_| {
            std::process::Command::new(bin("bench-step"))
                .env("BENCH_STAMP_FILE", stamp)
                .spawn()
                .expect("bench-step")
        })
        .collect();
    for mut c in children {
        c.wait().expect("bench-step");
    }
    stamps(stamp)[before..]
        .iter()
        .map(|t| Duration::from_nanos(t.saturating_sub(t0)))
        .collect()
}

fn print_latency(what: &str, v: Vec<Duration>, base: Option<(Duration, Duration)>) {
    let n = v.len();
    let (p50, p99, max) = spread(v);
    let vs = base
        .map(|(b50, b99)| {
            format!(
                " = {:.2}x / {:.2}x the one-agent figures",
                p50.as_secs_f64() / b50.as_secs_f64(),
                p99.as_secs_f64() / b99.as_secs_f64()
            )
        })
        .unwrap_or_default();
    println!(
        "{what} ({n} samples): p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms{vs}",
        ms(p50),
        ms(p99),
        ms(max)
    );
}

fn main() {
    let n = agent_tests::bench_num_arg("--agents", 200).max(2);
    let samples = agent_tests::bench_num_arg("--samples", 100).max(10);
    let idle_secs = agent_tests::bench_num_arg("--idle-secs", 10).max(1) as u64;
    let bursts = agent_tests::bench_num_arg("--bursts", 3).max(1);
    let nofile = raise_nofile();
    let redis = RedisServer::start_with(&["--appendfsync", "everysec", "--maxclients", "100000"]);
    let mut con = redis.conn();
    println!(
        "redis-server {} (appendfsync everysec), maxclients {} (open-file limit {nofile}); {} cores",
        info_field(&mut con, "server", "redis_version"),
        redis::cmd("CONFIG")
            .arg("GET")
            .arg("maxclients")
            .query::<Vec<String>>(&mut con)
            .unwrap()
            .get(1)
            .cloned()
            .unwrap_or_default(),
        std::thread::available_parallelism().map_or(0, |p| p.get())
    );

    let dirs = EventDirs::new(1);
    let stamp = dirs.work().join("stamps");
    let step = dirs.dir(0).join("scale");
    std::fs::create_dir_all(&step).unwrap();
    symlink(bin("bench-step"), step.join("10stamp")).unwrap();
    let names: Vec<String> = (0..n).map(|i| format!("scale{i}")).collect();
    for name in &names {
        let _: () = con
            .hset(
                format!("module/{name}/module.env"),
                "BENCH_STAMP_FILE",
                stamp.to_str().unwrap(),
            )
            .unwrap();
    }

    let (rtt50, rtt99, _) = spread(round_trips(&mut con, samples));
    println!(
        "raw round trip (PING from this process): p50 {:.3} ms, p99 {:.3} ms",
        ms(rtt50),
        ms(rtt99)
    );
    let none = idle_window(&mut con, &[], idle_secs);
    print_idle("no agent", &none);

    let mut agents = vec![Agent::module(&redis, &names[0], &dirs, &[])];
    std::thread::sleep(Duration::from_secs(2));
    let one = idle_window(&mut con, &agents, idle_secs);
    print_idle("one agent", &one);
    let single = dispatch(&mut con, &names[..1], &stamp, samples);
    let (one50, one99, _) = spread(single.clone());
    print_latency(
        "dispatch, one agent, PUBLISH -> the step's first instruction",
        single,
        None,
    );

    let t = Instant::now();
    for name in &names[1..] {
        agents.push(Agent::module(&redis, name, &dirs, &[]));
    }
    println!(
        "started {} more agents in {:.1} s; Redis: {} clients, used_memory {}",
        n - 1,
        t.elapsed().as_secs_f64(),
        info_field(&mut con, "clients", "connected_clients"),
        info_field(&mut con, "memory", "used_memory_human")
    );
    std::thread::sleep(Duration::from_secs(3));
    let many = idle_window(&mut con, &agents, idle_secs);
    print_idle(&format!("{n} agents"), &many);
    print_latency(
        &format!("dispatch, {n} agents (a random one each time)"),
        dispatch(&mut con, &names, &stamp, samples),
        Some((one50, one99)),
    );
    println!(
        "    the one-agent figures: p50 {:.2}x, p99 {:.2}x a raw round trip",
        one50.as_secs_f64() / rtt50.as_secs_f64(),
        one99.as_secs_f64() / rtt99.as_secs_f64()
    );

    let cpu0 = redis_cpu(&mut con);
    let t = Instant::now();
    let mut all = Vec::new();
    let mut lasts = Vec::new();
    for _ in 0..bursts {
        std::thread::sleep(Duration::from_secs(2));
        let b = burst(&mut con, &names, &stamp);
        lasts.push(*b.iter().max().expect("stamps"));
        all.extend(b);
    }
    let burst_secs = (redis_cpu(&mut con) - cpu0) - many.redis_core * t.elapsed().as_secs_f64();
    let lasts: Vec<String> = lasts.iter().map(|d| format!("{:.0} ms", ms(*d))).collect();
    let (b50, b99, _) = spread(all.clone());
    print_latency(
        &format!("burst, one PUBLISH to each of {n} agents at once, {bursts} times"),
        all,
        Some((one50, one99)),
    );
    let mut floor = Vec::new();
    let mut floor_lasts = Vec::new();
    for _ in 0..bursts {
        std::thread::sleep(Duration::from_secs(1));
        let f = spawn_burst(&stamp, n);
        floor_lasts.push(*f.iter().max().expect("stamps"));
        floor.extend(f);
    }
    let (f50, f99, _) = spread(floor);
    let floor_lasts: Vec<String> = floor_lasts
        .iter()
        .map(|d| format!("{:.0} ms", ms(*d)))
        .collect();
    println!(
        "    its floor, {n} bench-steps spawned back to back by one process (no agent, no Redis): p50 {:.3} ms, p99 {:.3} ms, all ran after {} -> the burst is p50 {:.2}x, p99 {:.2}x its floor",
        ms(f50),
        ms(f99),
        floor_lasts.join(", "),
        b50.as_secs_f64() / f50.as_secs_f64(),
        b99.as_secs_f64() / f99.as_secs_f64()
    );
    println!(
        "    every step ran after {}; Redis CPU above idle for the bursts: {:.3} s ({:.2} ms per event)",
        lasts.join(", "),
        burst_secs.max(0.0),
        burst_secs.max(0.0) * 1000.0 / (n * bursts) as f64
    );

    // A linear estimate from the idle figures: what each agent adds, times 1,000 and 10,000.
    let per_agent_core = (many.redis_core - none.redis_core) / n as f64;
    let per_agent_cmds = (many.commands_per_s - none.commands_per_s) / n as f64;
    let clients: f64 = info_field(&mut con, "clients", "connected_clients")
        .parse()
        .unwrap_or(0.0);
    let per_agent_clients = (clients - 1.0) / n as f64;
    println!(
        "per idle agent: Redis {:.4}% of a core, {per_agent_cmds:.2} commands/s, {per_agent_clients:.1} connections",
        per_agent_core * 100.0
    );
    for at in [1_000.0, 10_000.0] {
        println!(
            "estimate at {at:.0} agents: idle Redis {:.0}% of a core, {:.0} commands/s, {:.0} connections",
            per_agent_core * at * 100.0,
            per_agent_cmds * at,
            per_agent_clients * at
        );
    }
    drop(agents);
}
