//! Every process a run starts lives in a cgroup of that run, so that none outlives the run.
//!
//! A process group is not enough: a step's child that calls `setsid` (or double-forks, as daemons
//! do) leaves it, and a timeout or cancel that signals the group misses it. A cgroup cannot be left
//! by an unprivileged process, and the kernel kills all of it at once (`cgroup.kill`). So each run
//! gets `<agent's cgroup>/run-<random>-<n>` in the cgroup v2 hierarchy; every step is moved into
//! it between fork and exec (before it can start anything); when the run ends — done, failed, timed
//! out, cancelled, or interrupted by the agent's shutdown — whatever is left in it is killed and the
//! cgroup removed. (An agent killed with SIGKILL leaves its run cgroups: under systemd the unit's stop
//! kills and removes its whole subtree; elsewhere the next attempt of the run kills what is left by
//! environment, as `procs.rs` always did, and an empty directory stays behind.)
//!
//! This needs the agent's own cgroup to be writable: systemd gives that with `Delegate=yes` (both
//! unit files say so), and root has it on a host without systemd. Where it is not (an agent started
//! by hand as a user, no cgroup v2), runs fall back to the process environment: at the end of each
//! run, every process whose environment names this agent and run is killed (`procs.rs`), which a
//! process can escape only by clearing its environment. The agent logs which one it uses at start.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Where run cgroups are made: the agent's own cgroup, when it may create children there.
#[derive(Debug, Clone)]
pub(crate) struct RunCgroups {
    base: Arc<PathBuf>,
    /// Random, chosen at start: agents in different pid namespaces (containers) can share one
    /// cgroup directory, so neither a pid nor a counter alone names a run cgroup uniquely.
    token: Arc<str>,
    next: Arc<AtomicU64>,
}

impl RunCgroups {
    /// The agent's cgroup v2 directory, if it can hold run cgroups (checked by making and removing
    /// one). `Err` says why not, for the start-up log line.
    pub fn detect() -> Result<Self, String> {
        let own = std::fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
        let rel = own
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .ok_or("no cgroup v2 hierarchy")?
            .trim();
        let mount = cgroup2_mount().ok_or("cgroup2 is not mounted")?;
        let base = mount.join(rel.trim_start_matches('/'));
        let mut random = [0u8; 8];
        getrandom::fill(&mut random).map_err(|e| format!("no randomness: {e}"))?;
        let token: String = random.iter().map(|b| format!("{b:02x}")).collect();
        let cgroups = RunCgroups {
            base: Arc::new(base),
            token: token.into(),
            next: Arc::new(AtomicU64::new(0)),
        };
        let probe = cgroups.base.join(format!("run-{}-probe", cgroups.token));
        std::fs::create_dir(&probe)
            .map_err(|e| format!("cannot create a cgroup in {}: {e}", cgroups.base.display()))?;
        let writable = OpenOptions::new()
            .write(true)
            .open(probe.join("cgroup.procs"))
            .map(drop);
        let _ = std::fs::remove_dir(&probe);
        writable.map_err(|e| format!("cannot move processes into a cgroup: {e}"))?;
        Ok(cgroups)
    }

    pub fn base(&self) -> &Path {
        &self.base
    }

    /// A new cgroup for one run.
    pub fn create(&self) -> std::io::Result<RunCgroup> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let dir = self.base.join(format!("run-{}-{n}", self.token));
        std::fs::create_dir(&dir)?;
        let procs = OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.procs"))
            .inspect_err(|_| {
                let _ = std::fs::remove_dir(&dir);
            })?;
        let dir_fd = std::fs::File::open(&dir).inspect_err(|_| {
            let _ = std::fs::remove_dir(&dir);
        })?;
        Ok(RunCgroup {
            dir,
            procs,
            dir_fd,
            ended: false,
        })
    }
}

/// The cgroup of one run. [`RunCgroup::end`] kills what is left in it and removes it; dropping it
/// without `end` (an error path) still kills what is left.
pub(crate) struct RunCgroup {
    dir: PathBuf,
    /// `cgroup.procs`, opened once: a step's process writes to it between fork and exec.
    procs: File,
    /// The directory, for `clone3(CLONE_INTO_CGROUP)`.
    dir_fd: File,
    ended: bool,
}

impl RunCgroup {
    /// The descriptor a forked step writes "0" to, to move itself in.
    pub fn procs_fd(&self) -> RawFd {
        self.procs.as_raw_fd()
    }

    /// The cgroup's directory, open: a step started by `clone3` is born in it.
    pub fn dir_fd(&self) -> RawFd {
        self.dir_fd.as_raw_fd()
    }

    /// Kills every process left in the run's cgroup and removes it; returns how many were left.
    pub async fn end(mut self) -> usize {
        self.ended = true;
        let left = kill_cgroup(&self.dir);
        // The kill is asynchronous in the kernel: the directory can go once the last one is gone.
        for _ in 0..200 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return left;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tracing::warn!(cgroup = %self.dir.display(), "run cgroup not removed: processes still in it");
        left
    }
}

impl Drop for RunCgroup {
    fn drop(&mut self) {
        if !self.ended {
            kill_cgroup(&self.dir);
            // Removed here if the kernel was quick, else when the agent starts again.
            let _ = std::fs::remove_dir(&self.dir);
        }
    }
}

/// SIGKILLs everything in a cgroup (and its children): `cgroup.kill` where the kernel has it
/// (5.14), else each pid of `cgroup.procs` until none is left. Returns how many processes it found.
fn kill_cgroup(dir: &Path) -> usize {
    let pids = |d: &Path| -> Vec<i32> {
        std::fs::read_to_string(d.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    };
    let found = pids(dir).len();
    if found == 0 {
        return 0;
    }
    let killed = OpenOptions::new()
        .write(true)
        .open(dir.join("cgroup.kill"))
        .and_then(|mut f| f.write_all(b"1"));
    if killed.is_err() {
        // Older kernels: a process may fork between the read and the kill, so go round again.
        for _ in 0..20 {
            let left = pids(dir);
            if left.is_empty() {
                break;
            }
            for pid in left {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    found
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup` on a pure v2 system,
/// `/sys/fs/cgroup/unified` on a hybrid one).
fn cgroup2_mount() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        // `… mount-point options - fstype source super-options`
        let (left, right) = l.split_once(" - ")?;
        (right.split_whitespace().next()? == "cgroup2")
            .then(|| left.split_whitespace().nth(4).map(PathBuf::from))
            .flatten()
    })
}

/// Moves the calling process into the cgroup whose `cgroup.procs` is open as `fd`. Called between
/// fork and exec, so it makes one `write(2)` and nothing else (no allocation, no lock).
pub(crate) fn join_in_child(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: the parent keeps the descriptor open until the child has exec'd (it owns the cgroup).
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    match nix::unistd::write(fd, b"0\n") {
        Ok(2) => Ok(()),
        Ok(_) => Err(std::io::Error::other("short write to cgroup.procs")),
        Err(e) => Err(std::io::Error::from(e)),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_a_cgroup2_mount_or_none() {
        // Whatever this machine has, the parse must not panic; on Linux with cgroup2 it finds it.
        if let Some(m) = super::cgroup2_mount() {
            assert!(m.is_absolute());
        }
    }
}
