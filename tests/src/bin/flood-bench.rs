//! `flood-bench`: one module-agent (default limits: `--max-queue` 10 000, `--listen-buffer` 4 MiB,
//! `--max-payload` 131 071) under a burst of PUBLISHes, pipelined from a connection of their own:
//! 100 000 with a 1-byte payload, then (another agent) 100 000 of 100 KiB. Reported for each: the
//! agent's peak RSS (`VmHWM`) as a ratio to its own idle RSS measured in the same run, and what became
//! of every PUBLISH (ran or queued, or refused: counted from the `refused` journal entries, read as
//! they are written since the journal is trimmed to ~10 000 entries), and how many journal entries the
//! refusals took.
//!
//! Run: `cargo build --release --workspace --bins && target/release/flood-bench [--small N]
//! [--big N] [--big-size BYTES]` (no root needed). The step is `/bin/true`.

use std::os::unix::fs::symlink;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_tests::{wait_for, Agent, EventDirs, RedisServer};
use redis::Commands;

/// A `kB` field of `/proc/PID/status`, in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// How many PUBLISHes one `refused` journal entry stands for.
fn refused_count(message: &str) -> u64 {
    if message.starts_with("refused PUBLISH") {
        return 1;
    }
    match message.split_once(' ') {
        Some((n, rest)) if rest.starts_with("published event") => n.parse().unwrap_or(0),
        _ => 0,
    }
}

#[derive(Default, Debug)]
struct Refusals {
    /// PUBLISHes the entries account for.
    refused: u64,
    entries: u64,
    /// Distinct messages of the summaries (the first few).
    summaries: Vec<String>,
}

/// Reads `journal` from its start as it is written (XREAD), counting the `refused` entries of
/// `event` into `seen`, until `stop`.
fn tail_journal(
    redis: &RedisServer,
    journal: String,
    event: &'static str,
    seen: Arc<Mutex<Refusals>>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let mut con = redis.conn();
    std::thread::spawn(move || {
        let mut last = "0".to_string();
        while !stop.load(Ordering::Relaxed) {
            let reply: Option<redis::streams::StreamReadReply> = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(1000)
                .arg("BLOCK")
                .arg(100)
                .arg("STREAMS")
                .arg(&journal)
                .arg(&last)
                .query(&mut con)
                .unwrap();
            let mut seen = seen.lock().unwrap();
            for key in reply.map(|r| r.keys).unwrap_or_default() {
                for e in key.ids {
                    last = e.id.clone();
                    let field = |f: &str| e.get::<String>(f).unwrap_or_default();
                    if field("status") != "refused" || field("event") != event {
                        continue;
                    }
                    let message = field("message");
                    seen.refused += refused_count(&message);
                    seen.entries += 1;
                    if !message.starts_with("refused PUBLISH") {
                        let gist = message
                            .split_once(": ")
                            .map_or(message.as_str(), |(_, g)| g)
                            .to_string();
                        if seen.summaries.len() < 4 && !seen.summaries.contains(&gist) {
                            seen.summaries.push(gist);
                        }
                    }
                }
            }
        }
    })
}

/// Run records of the agent, those of them still running and the queue's length, read at one
/// moment (a script), so that a run beginning or ending in between is not missed or counted twice.
fn records(con: &mut redis::Connection, name: &str) -> (u64, u64, u64) {
    const COUNT: &str = r#"
local recs, running = 0, 0
for _, k in ipairs(redis.call('KEYS', ARGV[1])) do
  if string.sub(k, -7) ~= '/output' then
    recs = recs + 1
    if redis.call('HGET', k, 'status') == 'running' then running = running + 1 end
  end
end
return {recs, running, redis.call('XLEN', KEYS[1])}
"#;
    redis::Script::new(COUNT)
        .key(format!("module/{name}/queue"))
        .arg(format!("module/{name}/run/*"))
        .invoke(con)
        .unwrap()
}

/// One agent, one flood; prints the figures.
fn flood(redis: &RedisServer, name: &str, what: &str, n: usize, payload: &[u8], batch: usize) {
    const EVENT: &str = "ev";
    let dirs = EventDirs::new(1);
    let ev = dirs.dir(0).join(EVENT);
    std::fs::create_dir_all(&ev).unwrap();
    symlink("/bin/true", ev.join("10true")).unwrap();
    let agent = Agent::module(redis, name, &dirs, &[]);
    let pid = agent.pid();
    let mut con = redis.conn();
    let channel = format!("{name}:{EVENT}");

    // The baseline: the agent idle after a few ordinary runs.
    for _ in 0..20 {
        let _: i64 = con.publish(&channel, "warm").unwrap();
    }
    wait_for("warm-up runs", Duration::from_secs(30), || {
        let (recs, _, queued) = records(&mut con, name);
        (recs == 20 && queued == 0).then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    let idle = status_kib(pid, "VmRSS");

    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Refusals::default()));
    let tail = tail_journal(
        redis,
        format!("module/{name}/journal"),
        EVENT,
        seen.clone(),
        stop.clone(),
    );
    let mut publisher = redis.conn();
    let t = Instant::now();
    let (mut delivered, mut left) = (0u64, n);
    while left > 0 {
        let k = left.min(batch);
        let mut pipe = redis::pipe();
        for _ in 0..k {
            pipe.cmd("PUBLISH").arg(&channel).arg(payload);
        }
        let replies: Vec<u64> = pipe.query(&mut publisher).unwrap();
        delivered += replies.iter().sum::<u64>();
        left -= k;
    }
    let published_in = t.elapsed();

    // Every delivered PUBLISH is accounted for once it is a run record (less the warm-up ones), a
    // queue entry not begun yet (the one running has a record already), or counted in a refusal.
    let account = |con: &mut redis::Connection| {
        let (recs, running, queued) = records(con, name);
        let refused = seen.lock().unwrap().refused;
        (recs - 20, queued.saturating_sub(running), refused)
    };
    // Until all are, or nothing has changed for 20 s (some were lost).
    let (mut last, mut changed) = (None, Instant::now());
    let (runs, pending, refused) = loop {
        let now = account(&mut con);
        if now.0 + now.1 + now.2 >= delivered || changed.elapsed() > Duration::from_secs(20) {
            break now;
        }
        if last != Some(now) {
            (last, changed) = (Some(now), Instant::now());
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let settled_in = t.elapsed();
    // Nothing more turns up later (no double count).
    std::thread::sleep(Duration::from_secs(2));
    let again = account(&mut con);
    let late = (again.0 + again.1 + again.2) as i64 - (runs + pending + refused) as i64;
    stop.store(true, Ordering::Relaxed);
    tail.join().unwrap();
    let seen = seen.lock().unwrap();
    let hwm = status_kib(pid, "VmHWM");
    let rss_now = status_kib(pid, "VmRSS");
    let reconnects = agent.log().matches("reconnecting").count();
    let accounted = runs + pending + refused;
    println!(
        "{what}: {n} PUBLISHes of {} bytes, pipelined by {batch}, in {:.2} s; {delivered} delivered (PUBLISH returned 1){}",
        payload.len(),
        published_in.as_secs_f64(),
        if reconnects > 0 {
            format!("; the agent lost its subscription {reconnects} time(s)")
        } else {
            String::new()
        }
    );
    println!(
        "    idle RSS {:.1} MiB; peak RSS (VmHWM) {:.1} MiB = {:.2}x idle; RSS when accounted for {:.1} MiB",
        mib(idle),
        mib(hwm),
        hwm as f64 / idle as f64,
        mib(rss_now)
    );
    println!(
        "    accounted for after {:.1} s: {accounted} of {delivered} = {runs} ran or running + {pending} queued + {refused} refused, in {} journal entries{}{}",
        settled_in.as_secs_f64(),
        seen.entries,
        if accounted == delivered {
            String::new()
        } else {
            format!("; {} NOT accounted for", delivered as i64 - accounted as i64)
        },
        if late != 0 {
            format!("; {late} more turned up later")
        } else {
            String::new()
        }
    );
    for s in &seen.summaries {
        println!("    a summary: \"… {s}\"");
    }
}

fn main() {
    let small = agent_tests::bench_num_arg("--small", 100_000);
    let big = agent_tests::bench_num_arg("--big", 100_000);
    let big_size = agent_tests::bench_num_arg("--big-size", 100 * 1024);
    let redis = RedisServer::start_with(&["--appendfsync", "everysec"]);
    println!("redis-server: appendonly yes, appendfsync everysec; agents with default limits, step /bin/true");
    if small > 0 {
        flood(&redis, "fs0", "small", small, b"x", 1000);
    }
    if big > 0 {
        flood(&redis, "fb0", "100 KiB", big, &vec![b'y'; big_size], 50);
    }
}
