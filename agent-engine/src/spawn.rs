//! Starting a step's process born inside its run's cgroup (`clone3` with `CLONE_INTO_CGROUP`).
//!
//! Moving a process into a cgroup (a write to `cgroup.procs`) takes the kernel's cgroup threadgroup
//! lock for writing, which waits for an RCU grace period when the system was idle: measured here,
//! 10–25 ms per step, ten times the whole cost of a step's start (docs/BENCHMARKS.md). A process
//! created *in* the cgroup pays nothing of that (systemd starts its services the same way). The
//! standard library cannot do this, so this module forks with `clone3` itself and, in the child,
//! does what `std::process` would: stdio, the control socket on fd 3, its own process group, default
//! SIGPIPE and an empty signal mask, then `execve`. An exec error comes back through a close-on-exec
//! pipe, as in `std`. The parent waits through the pidfd `clone3` returns.
//!
//! Everything the child needs (paths, argv, environment) is prepared before the clone: between clone
//! and exec the child makes only async-signal-safe system calls.

use std::ffi::{CString, OsStr, OsString};
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;

use nix::libc;
use tokio::io::unix::AsyncFd;

/// `struct clone_args` of `clone3(2)`, up to `cgroup` (`CLONE_ARGS_SIZE_VER2`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_PIDFD: u64 = 0x1000;
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// What a step's process is started with.
pub(crate) struct StepSpawn<'a> {
    pub program: &'a Path,
    pub arg: &'a str,
    /// Set on top of the agent's own environment (a later entry wins).
    pub env: Vec<(&'a OsStr, &'a OsStr)>,
    pub stdin: RawFd,
    pub stdout: RawFd,
    pub stderr: RawFd,
    /// Becomes the child's fd `control_at`.
    pub control: RawFd,
    pub control_at: RawFd,
    /// An open directory descriptor of the cgroup the child is born in.
    pub cgroup: RawFd,
}

/// A step's process started by [`spawn`]; reaped by [`StepProcess::wait`] or `try_wait`.
pub(crate) struct StepProcess {
    pid: i32,
    pidfd: AsyncFd<OwnedFd>,
    status: Option<ExitStatus>,
}

fn cstring(b: &[u8]) -> std::io::Result<CString> {
    CString::new(b).map_err(|_| std::io::Error::other("an argument or variable contains NUL"))
}

/// Starts the step. `Err(ENOSYS/EINVAL/…)` from the kernel is returned as it is: the caller falls
/// back to the standard spawn.
pub(crate) fn spawn(s: &StepSpawn<'_>) -> std::io::Result<StepProcess> {
    let path = cstring(s.program.as_os_str().as_bytes())?;
    let argv_owned = [path.clone(), cstring(s.arg.as_bytes())?];
    let mut argv: Vec<*const libc::c_char> = argv_owned.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut vars: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    for (k, v) in &s.env {
        vars.retain(|(old, _)| old.as_os_str() != *k);
        vars.push((k.to_os_string(), v.to_os_string()));
    }
    let envp_owned: Vec<CString> = vars
        .iter()
        .map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            cstring(&kv)
        })
        .collect::<std::io::Result<_>>()?;
    let mut envp: Vec<*const libc::c_char> = envp_owned.iter().map(|e| e.as_ptr()).collect();
    envp.push(std::ptr::null());
    let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;

    let mut pidfd: libc::c_int = -1;
    let args = CloneArgs {
        flags: CLONE_PIDFD | CLONE_INTO_CGROUP,
        pidfd: &mut pidfd as *mut libc::c_int as u64,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: s.cgroup as u64,
        ..Default::default()
    };
    // SAFETY: clone3 without CLONE_VM is a fork; the child runs only `child` (async-signal-safe
    // system calls on data prepared above) and never returns from it.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: in the child, see above.
        unsafe { child(s, &path, &argv, &envp, err_w.as_raw_fd()) }
    }
    drop(err_w);
    // SAFETY: the kernel wrote a new descriptor into `pidfd` (CLONE_PIDFD), which we now own.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    let mut errno = [0u8; 4];
    let mut from_child = std::fs::File::from(err_r);
    let n = loop {
        match from_child.read(&mut errno) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => break other,
        }
    };
    // SAFETY: `pidfd` is owned by the AsyncFd from here on and closed only when it drops.
    let pidfd = unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) }
        .map_err(std::io::Error::from)?;
    let mut process = StepProcess {
        pid: pid as i32,
        pidfd,
        status: None,
    };
    match n {
        Ok(0) => Ok(process),
        Ok(_) => {
            // The exec failed: the child has exited (127); reap it, report the exec's error.
            let _ = process.reap(0);
            Err(std::io::Error::from_raw_os_error(i32::from_ne_bytes(errno)))
        }
        Err(e) => Err(e),
    }
}

/// In a forked child, before exec: makes `fd` the child's descriptor `at`, kept across exec (a
/// `dup2`, or clearing close-on-exec when it is there already). Async-signal-safe; returns -1 on
/// failure (errno set), like the calls it makes. Both ways of starting a step use it.
///
/// # Safety
/// Only between fork and exec, with `fd` open.
pub(crate) unsafe fn keep_at(fd: RawFd, at: RawFd) -> libc::c_int {
    if fd == at {
        libc::fcntl(fd, libc::F_SETFD, 0)
    } else {
        libc::dup2(fd, at)
    }
}

/// The child's side, between clone and exec.
unsafe fn child(
    s: &StepSpawn<'_>,
    path: &CString,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    err: RawFd,
) -> ! {
    let fail = || {
        let e = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        libc::write(err, e.to_ne_bytes().as_ptr().cast(), 4);
        libc::_exit(127)
    };
    for (from, to) in [(s.stdin, 0), (s.stdout, 1), (s.stderr, 2)] {
        if libc::dup2(from, to) < 0 {
            fail();
        }
    }
    if keep_at(s.control, s.control_at) < 0 || libc::setpgid(0, 0) < 0 {
        fail();
    }
    // The agent ignores SIGPIPE (Rust does); a step starts with the defaults, as std gives them.
    libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    let mut none: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut none);
    libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
    libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr());
    fail()
}

impl StepProcess {
    pub fn id(&self) -> i32 {
        self.pid
    }

    /// Reaps the process if it has exited (`flags`: 0 waits, `WNOHANG` does not).
    fn reap(&mut self, flags: libc::c_int) -> std::io::Result<Option<ExitStatus>> {
        if let Some(s) = self.status {
            return Ok(Some(s));
        }
        // SAFETY: a zeroed siginfo_t is valid; waitid fills it for this pidfd's process only.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let rc = unsafe {
            libc::waitid(
                libc::P_PIDFD,
                self.pidfd.get_ref().as_raw_fd() as libc::id_t,
                &mut info,
                libc::WEXITED | flags,
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: filled by waitid for a child (SIGCHLD information).
        let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
        if pid == 0 {
            return Ok(None);
        }
        let raw = match info.si_code {
            libc::CLD_EXITED => (status & 0xff) << 8,
            _ => status & 0x7f,
        };
        let s = ExitStatus::from_raw(raw);
        self.status = Some(s);
        Ok(Some(s))
    }

    /// Waits for the process to exit and reaps it. Cancel-safe.
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        loop {
            if let Some(s) = self.reap(libc::WNOHANG)? {
                return Ok(s);
            }
            let mut ready = self.pidfd.readable().await?;
            ready.clear_ready();
        }
    }
}

impl Drop for StepProcess {
    fn drop(&mut self) {
        // Never leave a zombie: the process is killed with its group by the runner before this;
        // reap it if it is gone, else it is reaped by whoever adopts it when the agent exits.
        let _ = self.reap(libc::WNOHANG);
    }
}
