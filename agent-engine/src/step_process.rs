//! One step's process, supervised: its pipes (stdin fed with the event data, stdout and stderr
//! captured as one stream), its control socket on fd 3, its start (born in the run's cgroup when
//! there is one), its end — an exit, or a timeout, cancel or shutdown that kills its whole process
//! group (SIGTERM, then SIGKILL after the grace period).
//!
//! It knows nothing of runs, Redis or records: the runner gives it a [`StepSpec`] and what to do with
//! the messages the step sends, and gets back how the step ended and what it printed. So it is
//! tested here directly against `/bin/sh`.

use std::ffi::OsStr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use core_events::exit;
use core_events::step::{StepMessageError, CONTROL_FD, CONTROL_FD_ENV, MAX_MESSAGE};
use core_events::StepMessage;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::{pipe2, Pid};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Why a step stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Interrupt {
    Timeout,
    Cancel,
    Shutdown,
}

/// How a step ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StepEnd {
    /// It exited with this code (128 + N for a signal N).
    Exited(i32),
    /// It could not be started (or vanished at once): why.
    SpawnFailed(String),
    /// It was killed.
    Interrupted(Interrupt),
}

/// What to run: the program, its one argument (also written to its stdin), the variables set on top
/// of the agent's own environment (a later entry wins; the control socket's variable is added here)
/// and the run's cgroup (its `cgroup.procs` and its directory).
pub(crate) struct StepSpec<'a> {
    pub program: &'a Path,
    pub data: &'a str,
    pub env: Vec<(&'a OsStr, &'a OsStr)>,
    pub cgroup: Option<(RawFd, RawFd)>,
}

/// When a step must be stopped: its deadline, a cancel (both with `grace` between SIGTERM and
/// SIGKILL), the agent's shutdown grace being over (`kill_now`: SIGKILL at once).
pub(crate) struct Signals<'a> {
    pub deadline: Instant,
    pub cancel: &'a CancellationToken,
    pub kill_now: &'a CancellationToken,
    pub grace: Duration,
}

/// Largest output kept from one step before the run's own cap applies.
pub(crate) const STEP_CAPTURE_CAP: usize = 4 << 20;

/// A message the step sent on its control socket, decoded, or why it was refused.
pub(crate) type Message = std::result::Result<StepMessage, StepMessageError>;

/// Where the messages a step sends go.
pub(crate) trait MessageSink {
    async fn message(&self, msg: Message);
}

/// Runs one step to its end: `announce` is called once it has started, `sink` gets every
/// message it sends (also those sent just before it exited). Returns how it ended and its output
/// (at most [`STEP_CAPTURE_CAP`] bytes).
pub(crate) async fn run(
    spec: &StepSpec<'_>,
    signals: Signals<'_>,
    announce: impl FnOnce(),
    sink: &impl MessageSink,
) -> (StepEnd, Vec<u8>) {
    let control = match ControlSocket::new() {
        Ok(c) => c,
        Err(e) => {
            return (
                StepEnd::SpawnFailed(format!("cannot create the control socket: {e}")),
                Vec::new(),
            )
        }
    };
    let pipes = match StepPipes::new(spec.data.is_empty()) {
        Ok(p) => p,
        Err(e) => {
            return (
                StepEnd::SpawnFailed(format!("cannot create pipes: {e}")),
                Vec::new(),
            )
        }
    };
    let spawned = start(spec, &pipes, &control);
    // Our copies of the child's pipe ends go now, so EOF can be seen.
    let StepPipes {
        stdin,
        stdin_writer,
        stdout,
        stderr,
        output,
    } = pipes;
    drop((stdin, stdout, stderr));
    let mut control = control.into_agent_end();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => return (StepEnd::SpawnFailed(e.to_string()), Vec::new()),
    };
    let Some(pid) = child.id() else {
        return (
            StepEnd::SpawnFailed("the step's process vanished at once".into()),
            Vec::new(),
        );
    };
    let pgid = Pid::from_raw(pid as i32);
    announce();

    // The writer of what does not fit the pipe at once is this step's: it ends with the step.
    let feeder = stdin_writer.and_then(|writer| feed_stdin(writer, spec.data.as_bytes()));
    // The output is read by this task while it waits for the step (a chatty step must not block on
    // a full pipe), and while a timed-out or cancelled step is being killed.
    let mut output = Capture::new(output);
    // `Ok`: the step exited with this code; `Err`: it must be killed, with this grace period.
    let waited = loop {
        tokio::select! {
            status = child.wait() => break Ok(status.map(exit_code).unwrap_or(exit::SPAWN_FAILED)),
            _ = output.read_some() => {}
            msg = control.recv() => sink.message(msg).await,
            _ = tokio::time::sleep_until(signals.deadline) => break Err((Interrupt::Timeout, signals.grace)),
            _ = signals.cancel.cancelled() => break Err((Interrupt::Cancel, signals.grace)),
            _ = signals.kill_now.cancelled() => break Err((Interrupt::Shutdown, Duration::ZERO)),
        }
    };
    let end = match waited {
        Ok(code) => StepEnd::Exited(code),
        Err((why, grace)) => {
            let killed = terminate(&mut child, pgid, grace);
            tokio::pin!(killed);
            loop {
                tokio::select! {
                    _ = &mut killed => break,
                    _ = output.read_some() => {}
                }
            }
            StepEnd::Interrupted(why)
        }
    };
    // What the step sent just before it exited is handled too.
    while let Some(msg) = control.try_recv() {
        sink.message(msg).await;
    }
    // A background process of the step may keep the pipe open: do not wait for EOF forever.
    let _ = tokio::time::timeout(Duration::from_secs(2), output.drain()).await;
    if let Some(f) = feeder {
        f.abort();
    }
    (end, output.into_bytes())
}

/// The datagram socket a step reports through (core_events::step): the agent keeps one end, the
/// step gets the other as fd [`CONTROL_FD`].
struct ControlSocket {
    agent: std::os::unix::net::UnixDatagram,
    step: std::os::unix::net::UnixDatagram,
}

impl ControlSocket {
    fn new() -> std::io::Result<Self> {
        // `pair` makes both ends close-on-exec: only the step's own fd 3 crosses exec.
        let (agent, step) = std::os::unix::net::UnixDatagram::pair()?;
        agent.set_nonblocking(true)?;
        Ok(ControlSocket { agent, step })
    }

    fn step_fd(&self) -> RawFd {
        self.step.as_raw_fd()
    }

    /// In the forked step: the step's end becomes fd [`CONTROL_FD`], kept across exec.
    fn install_in_child(fd: RawFd) -> std::io::Result<()> {
        // SAFETY: called between fork and exec (a `pre_exec` closure); `fd` is open in this process.
        let ok = unsafe { crate::spawn::keep_at(fd, CONTROL_FD) } != -1;
        if ok {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// After the spawn: the step's end is closed here (the step has its copy), the agent's is kept.
    fn into_agent_end(self) -> ControlReceiver {
        drop(self.step);
        ControlReceiver {
            socket: tokio::net::UnixDatagram::from_std(self.agent).ok(),
            buf: Vec::new(),
        }
    }
}

/// The agent's end of a step's control socket.
struct ControlReceiver {
    socket: Option<tokio::net::UnixDatagram>,
    buf: Vec<u8>,
}

impl ControlReceiver {
    /// The next datagram, decoded (or why it was refused). Cancel-safe; never returns once the
    /// socket is unusable.
    async fn recv(&mut self) -> std::result::Result<StepMessage, StepMessageError> {
        let Some(socket) = &self.socket else {
            return std::future::pending().await;
        };
        // The buffer is made when the first message comes: most steps send none, and a buffer
        // of this size per step would be an mmap and munmap each.
        if socket.readable().await.is_err() {
            self.socket = None;
            return std::future::pending().await;
        }
        if self.buf.is_empty() {
            self.buf = vec![0; MAX_MESSAGE + 1];
        }
        match socket.recv(&mut self.buf).await {
            Ok(n) => StepMessage::decode(&self.buf[..n]),
            Err(_) => {
                self.socket = None;
                std::future::pending().await
            }
        }
    }

    /// A datagram already waiting, if any.
    fn try_recv(&mut self) -> Option<std::result::Result<StepMessage, StepMessageError>> {
        let mut probe = [0u8; 1];
        let fd = self.socket.as_ref()?.as_raw_fd();
        // Is anything there at all (MSG_PEEK), before a buffer is made for it.
        // SAFETY: a one-byte read into a local buffer from a socket we own.
        let peeked = unsafe {
            nix::libc::recv(
                fd,
                probe.as_mut_ptr().cast(),
                1,
                nix::libc::MSG_PEEK | nix::libc::MSG_DONTWAIT,
            )
        };
        if peeked < 0 {
            return None;
        }
        if self.buf.is_empty() {
            self.buf = vec![0; MAX_MESSAGE + 1];
        }
        let n = self.socket.as_ref()?.try_recv(&mut self.buf).ok()?;
        Some(StepMessage::decode(&self.buf[..n]))
    }
}

/// The pipes of one step: stdin, and one pipe that stdout and stderr share, so the output keeps the
/// order in which the step wrote its lines (and costs one pipe and one reader instead of two). With
/// no data, stdin is `/dev/null`: the step reads the same (nothing), and a pipe fewer is made.
struct StepPipes {
    /// `None`: `/dev/null`.
    stdin: Option<OwnedFd>,
    stdin_writer: Option<OwnedFd>,
    stdout: OwnedFd,
    stderr: OwnedFd,
    output: OwnedFd,
}

impl StepPipes {
    fn new(no_data: bool) -> std::io::Result<Self> {
        let (stdin, stdin_writer) = if no_data {
            (None, None)
        } else {
            let (stdin_r, stdin_w) = pipe2(OFlag::O_CLOEXEC)?;
            (Some(stdin_r), Some(stdin_w))
        };
        let (out_r, out_w) = pipe2(OFlag::O_CLOEXEC)?;
        let err_w = out_w.try_clone()?;
        Ok(StepPipes {
            stdin,
            stdin_writer,
            stdout: out_w,
            stderr: err_w,
            output: out_r,
        })
    }
}

/// A step's process: started born in its run's cgroup ([`crate::spawn`]) or by the standard spawn.
enum StepChild {
    InCgroup(crate::spawn::StepProcess),
    Std(tokio::process::Child),
}

impl StepChild {
    fn id(&self) -> Option<u32> {
        match self {
            StepChild::InCgroup(p) => Some(p.id() as u32),
            StepChild::Std(c) => c.id(),
        }
    }

    async fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        match self {
            StepChild::InCgroup(p) => p.wait().await,
            StepChild::Std(c) => c.wait().await,
        }
    }
}

/// Starts a step's process: in its run's cgroup from its first instruction when there is one
/// (`clone3`), else — no cgroup, or a kernel without `CLONE_INTO_CGROUP` — with the standard spawn,
/// which then moves it into the cgroup between fork and exec (slower: docs/BENCHMARKS.md).
fn start(
    spec: &StepSpec<'_>,
    pipes: &StepPipes,
    control: &ControlSocket,
) -> std::io::Result<StepChild> {
    let control_fd_value = CONTROL_FD.to_string();
    let mut vars = spec.env.clone();
    vars.push((CONTROL_FD_ENV.as_ref(), control_fd_value.as_ref()));
    let null;
    let stdin_fd = match &pipes.stdin {
        Some(fd) => fd.as_raw_fd(),
        None => {
            null = std::fs::File::open("/dev/null")?;
            null.as_raw_fd()
        }
    };
    if let Some((_, dir)) = spec.cgroup {
        let spawn = crate::spawn::StepSpawn {
            program: spec.program,
            arg: spec.data,
            env: vars.clone(),
            stdin: stdin_fd,
            stdout: pipes.stdout.as_raw_fd(),
            stderr: pipes.stderr.as_raw_fd(),
            control: control.step_fd(),
            control_at: CONTROL_FD,
            cgroup: dir,
        };
        match crate::spawn::spawn(&spawn) {
            Ok(p) => return Ok(StepChild::InCgroup(p)),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(nix::libc::ENOSYS | nix::libc::EINVAL | nix::libc::E2BIG)
                ) => {}
            Err(e) => return Err(e),
        }
    }
    let mut cmd = tokio::process::Command::new(spec.program);
    cmd.arg(spec.data)
        .envs(vars)
        .stdin(match &pipes.stdin {
            Some(fd) => Stdio::from(fd.try_clone()?),
            None => Stdio::null(),
        })
        .stdout(Stdio::from(pipes.stdout.try_clone()?))
        .stderr(Stdio::from(pipes.stderr.try_clone()?))
        .process_group(0);
    let (procs_fd, control_fd) = (spec.cgroup.map(|(procs, _)| procs), control.step_fd());
    // SAFETY: the closure runs between fork and exec and makes only async-signal-safe calls
    // (write, dup2, fcntl) on descriptors this process keeps open until `spawn` returns.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(fd) = procs_fd {
                crate::cgroup::join_in_child(fd)?;
            }
            ControlSocket::install_in_child(control_fd)
        });
    }
    cmd.spawn().map(StepChild::Std)
}

/// Writes the event data to the step's stdin and closes it. Usually the data fits the pipe and one
/// non-blocking write does it; the rest, if any, is written by a task as the step reads. A step that
/// does not read stdin closes it early: EPIPE then is expected and harmless.
fn feed_stdin(writer: OwnedFd, data: &[u8]) -> Option<tokio::task::JoinHandle<()>> {
    let flags = fcntl(&writer, FcntlArg::F_GETFL).map(OFlag::from_bits_truncate);
    let nonblocking = flags.and_then(|f| fcntl(&writer, FcntlArg::F_SETFL(f | OFlag::O_NONBLOCK)));
    if nonblocking.is_err() {
        return None;
    }
    let mut file = std::fs::File::from(writer);
    let written = match std::io::Write::write(&mut file, data) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
        Err(_) => return None,
    };
    if written == data.len() {
        return None;
    }
    let rest = data[written..].to_vec();
    let mut tx = pipe::Sender::from_file(file).ok()?;
    Some(tokio::spawn(async move {
        let _ = tx.write_all(&rest).await;
    }))
}

/// A step's output pipe and what was read from it (at most [`STEP_CAPTURE_CAP`] bytes kept; the rest
/// is read and dropped, so the step never blocks on a full pipe).
struct Capture {
    pipe: Option<pipe::Receiver>,
    kept: Vec<u8>,
    buf: Box<[u8; 8192]>,
}

impl Capture {
    fn new(fd: OwnedFd) -> Self {
        Capture {
            pipe: pipe::Receiver::from_owned_fd(fd).ok(),
            kept: Vec::new(),
            buf: Box::new([0; 8192]),
        }
    }

    /// Reads once: returns when some output arrived or the pipe closed; never, once it is closed.
    /// Cancel-safe (a read that loses a `select!` has taken nothing).
    async fn read_some(&mut self) {
        let Some(pipe) = &mut self.pipe else {
            return std::future::pending().await;
        };
        match pipe.read(&mut self.buf[..]).await {
            Ok(0) | Err(_) => self.pipe = None,
            Ok(n) => {
                let room = STEP_CAPTURE_CAP.saturating_sub(self.kept.len());
                self.kept.extend_from_slice(&self.buf[..n.min(room)]);
            }
        }
    }

    /// Reads until every writer has closed the pipe.
    async fn drain(&mut self) {
        while self.pipe.is_some() {
            self.read_some().await;
        }
    }

    fn into_bytes(self) -> Vec<u8> {
        self.kept
    }
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| exit::SIGNAL_BASE + s))
        .unwrap_or(exit::SPAWN_FAILED)
}

/// SIGTERM to the step's process group, then SIGKILL to whatever of the group is left after `grace`.
///
/// The wait for the step itself is its exit (pidfd or SIGCHLD), not a poll. Once it has exited, the
/// rest of its group (children it left) has no exit to wait for: the group is probed with signal 0
/// at growing intervals (10 ms doubling to 250 ms) until it is empty or the grace is over.
async fn terminate(child: &mut StepChild, pgid: Pid, grace: Duration) {
    let _ = killpg(pgid, Signal::SIGTERM);
    let until = Instant::now() + grace;
    if tokio::time::timeout_at(until, child.wait()).await.is_ok() {
        let mut probe = Duration::from_millis(10);
        // Signal 0 probes the group: ESRCH once no member is left.
        while killpg(pgid, None).is_ok() && Instant::now() < until {
            tokio::time::sleep(probe.min(until - Instant::now())).await;
            probe = (probe * 2).min(Duration::from_millis(250));
        }
    }
    let _ = killpg(pgid, Signal::SIGKILL);
    let _ = child.wait().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Mutex;

    /// Collects what steps send.
    #[derive(Default)]
    struct Collect(Mutex<Vec<Message>>);

    impl MessageSink for Collect {
        async fn message(&self, msg: Message) {
            self.0.lock().unwrap().push(msg);
        }
    }

    /// A `/bin/sh` script as a step.
    fn script(dir: &tempfile::TempDir, body: &str) -> std::path::PathBuf {
        let path = dir.path().join("step");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    struct Tokens {
        cancel: CancellationToken,
        kill_now: CancellationToken,
    }

    impl Tokens {
        fn new() -> Self {
            Tokens {
                cancel: CancellationToken::new(),
                kill_now: CancellationToken::new(),
            }
        }

        fn signals(&self, timeout: Duration, grace: Duration) -> Signals<'_> {
            Signals {
                deadline: Instant::now() + timeout,
                cancel: &self.cancel,
                kill_now: &self.kill_now,
                grace,
            }
        }
    }

    async fn run_script(
        body: &str,
        data: &str,
        env: &[(&str, &str)],
        signals: Signals<'_>,
    ) -> (StepEnd, String, Vec<Message>) {
        let dir = tempfile::tempdir().unwrap();
        let program = script(&dir, body);
        let spec = StepSpec {
            program: &program,
            data,
            env: env.iter().map(|(k, v)| (k.as_ref(), v.as_ref())).collect(),
            cgroup: None,
        };
        let sink = Collect::default();
        let (end, out) = run(&spec, signals, || {}, &sink).await;
        let msgs = sink.0.into_inner().unwrap();
        (end, String::from_utf8_lossy(&out).into_owned(), msgs)
    }

    const LONG: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn a_step_gets_its_data_and_environment_and_its_output_is_kept_in_order() {
        let t = Tokens::new();
        let (end, out, _) = run_script(
            "echo \"argv=$1\"; echo \"stdin=$(cat)\" >&2; echo \"x=$X fd=$AGENT_CONTROL_FD\"; exit 7",
            "the data",
            &[("X", "1")],
            t.signals(LONG, LONG),
        )
        .await;
        assert_eq!(end, StepEnd::Exited(7));
        assert_eq!(out, "argv=the data\nstdin=the data\nx=1 fd=3\n");
    }

    #[tokio::test]
    async fn without_data_stdin_is_empty_and_a_signal_is_128_plus_n() {
        let t = Tokens::new();
        let (end, out, _) = run_script(
            "echo \"[$(cat)]\"; kill -9 $$",
            "",
            &[],
            t.signals(LONG, LONG),
        )
        .await;
        assert_eq!(end, StepEnd::Exited(exit::SIGNAL_BASE + 9));
        assert_eq!(out, "[]\n");
    }

    #[tokio::test]
    async fn data_larger_than_a_pipe_reaches_stdin_whole() {
        let t = Tokens::new();
        let data = "d".repeat(100 * 1024);
        let (end, out, _) = run_script("cat | wc -c", &data, &[], t.signals(LONG, LONG)).await;
        assert_eq!(end, StepEnd::Exited(0));
        assert_eq!(out.trim(), (100 * 1024).to_string());
    }

    #[tokio::test]
    async fn a_program_that_cannot_start_is_a_spawn_failure() {
        let t = Tokens::new();
        let spec = StepSpec {
            program: Path::new("/nonexistent/step"),
            data: "",
            env: Vec::new(),
            cgroup: None,
        };
        let (end, out) = run(&spec, t.signals(LONG, LONG), || {}, &Collect::default()).await;
        assert!(matches!(end, StepEnd::SpawnFailed(_)), "{end:?}");
        assert!(out.is_empty());
    }

    /// Whether `pid` is still running (not a zombie).
    fn alive(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
    }

    #[tokio::test]
    async fn a_timeout_kills_the_whole_group_also_what_ignores_sigterm() {
        let dir = tempfile::tempdir().unwrap();
        let pids = dir.path().join("pids");
        let t = Tokens::new();
        let started = Instant::now();
        let (end, out, _) = run_script(
            &format!(
                "trap '' TERM; sleep 300 & echo $! > {p}; echo $$ >> {p}; echo ready; sleep 300",
                p = pids.display()
            ),
            "",
            &[],
            t.signals(Duration::from_millis(300), Duration::from_millis(200)),
        )
        .await;
        assert_eq!(end, StepEnd::Interrupted(Interrupt::Timeout));
        assert!(out.starts_with("ready\n"), "{out}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        for pid in std::fs::read_to_string(&pids).unwrap().lines() {
            let pid: i32 = pid.parse().unwrap();
            // SIGKILL was sent to the group; its delivery is asynchronous, so allow a moment.
            let gone = (0..200).any(|_| {
                std::thread::sleep(Duration::from_millis(10));
                !alive(pid)
            });
            assert!(gone, "process {pid} of the step outlived it");
        }
    }

    #[tokio::test]
    async fn a_step_that_ends_on_sigterm_ends_within_the_grace() {
        let t = Tokens::new();
        let cancel = t.cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            cancel.cancel();
        });
        let started = Instant::now();
        let (end, _, _) = run_script("exec sleep 300", "", &[], t.signals(LONG, LONG)).await;
        assert_eq!(end, StepEnd::Interrupted(Interrupt::Cancel));
        // Well within the (60 s) grace: SIGTERM ended it and nothing waited out the grace.
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn shutdown_kills_at_once() {
        let t = Tokens::new();
        t.kill_now.cancel();
        let (end, _, _) =
            run_script("trap '' TERM; sleep 300", "", &[], t.signals(LONG, LONG)).await;
        assert_eq!(end, StepEnd::Interrupted(Interrupt::Shutdown));
    }

    #[tokio::test]
    async fn output_beyond_the_cap_is_read_and_dropped() {
        let t = Tokens::new();
        let (end, out, _) = run_script(
            &format!(
                "head -c {} /dev/zero | tr '\\0' x; echo done >&2",
                STEP_CAPTURE_CAP + 100_000
            ),
            "",
            &[],
            t.signals(LONG, LONG),
        )
        .await;
        assert_eq!(
            end,
            StepEnd::Exited(0),
            "the step did not block on a full pipe"
        );
        assert_eq!(out.len(), STEP_CAPTURE_CAP);
    }

    #[tokio::test]
    async fn messages_on_fd_3_reach_the_sink_also_the_last_ones() {
        let t = Tokens::new();
        let (end, _, msgs) = run_script(
            "printf 'progress\\n50\\nhalf way' >&3; printf 'bogus' >&3; printf 'progress\\n100\\n' >&3",
            "",
            &[],
            t.signals(LONG, LONG),
        )
        .await;
        assert_eq!(end, StepEnd::Exited(0));
        assert_eq!(msgs.len(), 3, "{msgs:?}");
        assert_eq!(
            msgs[0],
            Ok(StepMessage::Progress {
                percent: 50,
                message: Some("half way".into())
            })
        );
        assert!(msgs[1].is_err());
        assert!(matches!(
            msgs[2],
            Ok(StepMessage::Progress { percent: 100, .. })
        ));
    }
}
