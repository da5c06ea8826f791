//! Finding and killing processes left behind by an interrupted run.
//!
//! When an agent dies mid-run (`kill -9`, OOM) its step and the step's children live on. Before the run
//! is started again, the restarted agent kills them, so two attempts never run side by side. A process
//! belongs to a run when its environment carries both `AGENT_NAME=<agent>` and `AGENT_RUN_ID=<run>`,
//! which every step inherits; that check is exact, unlike a remembered pid that may have been reused.

use core_events::step_env;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Pids of live processes whose environment names this agent and run.
pub(crate) fn processes_of_run(agent: &str, run: &str) -> Vec<i32> {
    let want_agent = format!("{}={agent}", step_env::AGENT_NAME).into_bytes();
    let want_run = format!("{}={run}", step_env::AGENT_RUN_ID).into_bytes();
    let me = std::process::id() as i32;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
                return false;
            };
            let mut vars = env.split(|b| *b == 0);
            let (mut a, mut r) = (false, false);
            for v in vars.by_ref() {
                a |= v == want_agent.as_slice();
                r |= v == want_run.as_slice();
            }
            a && r
        })
        .collect()
}

/// SIGKILLs every leftover process of a run; returns how many there were.
pub(crate) fn kill_leftovers(agent: &str, run: &str) -> usize {
    let pids = processes_of_run(agent, run);
    for &pid in &pids {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    pids.len()
}
