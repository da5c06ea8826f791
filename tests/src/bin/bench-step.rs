//! A step for benchmarks: appends `<monotonic ns> <pid>` to the file named by `BENCH_STAMP_FILE`, as
//! its first act. The pid lets the benchmark find the kernel's exec event of this very process; the
//! time is when the step's own code began, after exec and dynamic loading.

use std::io::Write;

fn main() {
    let now = agent_tests::monotonic_ns();
    if let Some(path) = std::env::var_os("BENCH_STAMP_FILE") {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("stamp file");
        // One write(2) of the whole line: with O_APPEND, steps of many agents stamping the same
        // file at once never interleave (`writeln!` on a File writes piece by piece).
        let line = format!("{now} {}\n", std::process::id());
        f.write_all(line.as_bytes()).expect("write stamp");
    }
}
