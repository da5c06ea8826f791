//! A step for benchmarks: appends the wall-clock time at which it started (ns since the epoch) to the
//! file named by `BENCH_STAMP_FILE`. Being a tiny static-free Rust binary, its own start-up is close to
//! that of `/bin/true`, so what the benchmark measures is the engine's share.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

fn main() {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    if let Some(path) = std::env::var_os("BENCH_STAMP_FILE") {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("stamp file");
        writeln!(f, "{now}").expect("write stamp");
    }
}
