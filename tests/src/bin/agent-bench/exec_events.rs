//! The kernel's own record of when a process called `execve`, from the process-events connector
//! (`NETLINK_CONNECTOR`, `CN_IDX_PROC`): the latency benchmark ends at the step's exec, not at the
//! first instruction of the step binary, whose dynamic loading is not the engine's cost.
//!
//! Needs `CAP_NET_ADMIN` (the benchmark runs as root); [`ExecEvents::start`] says why when it cannot
//! listen. Timestamps are `CLOCK_MONOTONIC` nanoseconds, the clock of `agent_tests::monotonic_ns`.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Exec times by pid, filled by a background thread reading the connector.
pub struct ExecEvents {
    seen: Arc<Mutex<HashMap<u32, u64>>>,
}

const NLMSG_HDRLEN: usize = 16;
const CN_MSG_LEN: usize = 20;

impl ExecEvents {
    pub fn start() -> io::Result<Self> {
        // SAFETY: plain socket(2); the fd is owned right away.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                libc::NETLINK_CONNECTOR,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_nl is plain data; all-zero is a valid value.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        addr.nl_pid = 0;
        addr.nl_groups = libc::CN_IDX_PROC;
        // SAFETY: `addr` is a valid sockaddr_nl of the size given.
        let rc = unsafe {
            libc::bind(
                sock.as_raw_fd(),
                &addr as *const libc::sockaddr_nl as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // nlmsghdr + cn_msg + the operation: "send me process events".
        let total = NLMSG_HDRLEN + CN_MSG_LEN + 4;
        let mut msg = Vec::with_capacity(total);
        msg.extend_from_slice(&(total as u32).to_ne_bytes());
        msg.extend_from_slice(&(libc::NLMSG_DONE as u16).to_ne_bytes());
        msg.extend_from_slice(&0u16.to_ne_bytes()); // flags
        msg.extend_from_slice(&0u32.to_ne_bytes()); // seq
        msg.extend_from_slice(&std::process::id().to_ne_bytes());
        msg.extend_from_slice(&libc::CN_IDX_PROC.to_ne_bytes());
        msg.extend_from_slice(&libc::CN_VAL_PROC.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes()); // seq
        msg.extend_from_slice(&0u32.to_ne_bytes()); // ack
        msg.extend_from_slice(&4u16.to_ne_bytes()); // len of the data
        msg.extend_from_slice(&0u16.to_ne_bytes()); // flags
        msg.extend_from_slice(&libc::PROC_CN_MCAST_LISTEN.to_ne_bytes());
        // SAFETY: `msg` is a valid buffer of its length.
        let sent = unsafe { libc::send(sock.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let seen: Arc<Mutex<HashMap<u32, u64>>> = Default::default();
        let into = seen.clone();
        std::thread::spawn(move || read_events(sock, into));
        Ok(ExecEvents { seen })
    }

    /// The monotonic time at which `pid` called exec, waiting up to `timeout` for the event.
    pub fn exec_time(&self, pid: u32, timeout: Duration) -> Option<u64> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(t) = self.seen.lock().unwrap().remove(&pid) {
                return Some(t);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Forgets the events seen so far (other processes' execs pile up otherwise).
    pub fn clear(&self) {
        self.seen.lock().unwrap().clear();
    }
}

/// Reads process events until the socket fails; keeps exec times (last one per pid).
fn read_events(sock: OwnedFd, into: Arc<Mutex<HashMap<u32, u64>>>) {
    let mut buf = vec![0u8; 8192];
    let u32_at = |b: &[u8], at: usize| u32::from_ne_bytes(b[at..at + 4].try_into().unwrap());
    loop {
        // SAFETY: `buf` is a valid writable buffer of its length.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n <= 0 {
            if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        let msg = &buf[..n as usize];
        // proc_event: what (u32), cpu (u32), timestamp_ns (u64), then for exec: pid, tgid.
        let ev = NLMSG_HDRLEN + CN_MSG_LEN;
        if msg.len() < ev + 24 || u32_at(msg, ev) != libc::PROC_EVENT_EXEC {
            continue;
        }
        let ts = u64::from_ne_bytes(msg[ev + 8..ev + 16].try_into().unwrap());
        let tgid = u32_at(msg, ev + 20);
        into.lock().unwrap().insert(tgid, ts);
    }
}
