//! The module's Unix user: created with a home and linger (module.init), and taken away with every
//! process, its home and its subordinate ids (module.remove).
//!
//! A module's home is private to it: `0700` (`useradd -K HOME_MODE=0700`, then checked on every
//! run by [`ModuleUser::make_home_private`], so a module installed before this rule is fixed by a
//! re-run of module.init), and what the core puts in it has no permission for group or other
//! ([`ModuleUser::make_private`]). The module isolation of one Unix user per module means nothing
//! if another module's user can list and read the home (docs/SECURITY.md, "Module homes are
//! private").

use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use core_events::ModuleId;

use super::{run_ok, status, Result, ToolError};

/// A module's Unix user as the password database knows it.
#[derive(Debug, Clone)]
pub struct ModuleUser {
    pub name: String,
    pub uid: u32,
    pub home: PathBuf,
}

/// The comment (GECOS field) `create-user` gives a module's user: what tells it from the node's
/// own users, whose names a module id could also spell (`redis`, `daemon`, `messagebus`, …).
pub fn module_comment(id: &ModuleId) -> String {
    format!("module {id}")
}

/// Lowest uid of a module's user: below are the system's users (Debian's `UID_MIN`).
const MODULE_UID_MIN: u32 = 1000;

/// Whether a user with this uid and comment is the user of module `id`.
pub fn is_module_user(id: &ModuleId, uid: u32, comment: &str) -> bool {
    uid >= MODULE_UID_MIN && uid != 65534 && comment == module_comment(id)
}

/// The modules that have a user on this node (made by create-user: uid and comment checked by
/// [`is_module_user`]), in /etc/passwd order: what the package's scripts act on, also for a module
/// whose module.init never finished. `useradd` writes /etc/passwd, so no other NSS source is read.
pub fn installed_modules() -> Result<Vec<ModuleId>> {
    let passwd = std::fs::read_to_string("/etc/passwd")
        .map_err(|e| ToolError::Failed(format!("cannot read /etc/passwd: {e}")))?;
    Ok(modules_in_passwd(&passwd))
}

fn modules_in_passwd(passwd: &str) -> Vec<ModuleId> {
    passwd
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            let (name, uid, comment) = (f.first()?, f.get(2)?.parse().ok()?, f.get(4)?);
            let id = ModuleId::new(*name).ok()?;
            is_module_user(&id, uid, comment).then_some(id)
        })
        .collect()
}

impl ModuleUser {
    /// The user of module `id`, if there is one. A user of that name that is not a module's (a
    /// system user, or one an admin made) is an error: no tool ever changes or removes it.
    pub fn lookup(id: &ModuleId) -> Result<Option<ModuleUser>> {
        let user = nix::unistd::User::from_name(id.as_str())
            .map_err(|e| ToolError::Failed(format!("cannot look up user {id}: {e}")))?;
        let Some(u) = user else { return Ok(None) };
        let comment = u.gecos.to_string_lossy().into_owned();
        if !is_module_user(id, u.uid.as_raw(), &comment) {
            return Err(ToolError::Invalid(format!(
                "user {id} exists and is not a module's user (uid {}, comment '{comment}'): \
                 left alone; choose another module id",
                u.uid
            )));
        }
        Ok(Some(ModuleUser {
            name: u.name,
            uid: u.uid.as_raw(),
            home: u.dir,
        }))
    }

    /// The user named `id`, which a previous step must have created.
    pub fn require(id: &ModuleId) -> Result<ModuleUser> {
        Self::lookup(id)?.ok_or_else(|| {
            ToolError::Unavailable(format!("no user {id} (module.init/10create-user makes it)"))
        })
    }

    /// `runuser -u ID -- env -C HOME HOME=… XDG_RUNTIME_DIR=… DBUS_SESSION_BUS_ADDRESS=… PROG`:
    /// a program run as the module's user, in its home, able to reach its systemd user manager
    /// and rootless Podman.
    pub fn command(&self, program: &str) -> Command {
        let runtime = format!("/run/user/{}", self.uid);
        let mut c = Command::new("runuser");
        c.args(["-u", &self.name, "--", "env", "-C"])
            .arg(&self.home)
            .arg(format!("HOME={}", self.home.display()))
            .arg(format!("XDG_RUNTIME_DIR={runtime}"))
            .arg(format!("DBUS_SESSION_BUS_ADDRESS=unix:path={runtime}/bus"))
            .arg(program);
        c
    }

    /// Makes the home exactly `0700` when it is not (see [`private_dir`]); says so when it did.
    pub fn make_home_private(&self) -> Result<()> {
        if let Some(was) = private_dir(&self.home, self.uid)? {
            println!(
                "home {} of {} made private (mode was {was:o}, now 700)",
                self.home.display(),
                self.name
            );
        }
        Ok(())
    }

    /// Takes every permission of group and other away from `paths` — each exactly, not what is
    /// below it — **as the module's user**: `find -files0-from - -maxdepth 0 -uid UID ! -type l
    /// -perm /go=rwx -exec chmod go-rwx -- {} +`, the paths NUL-separated on its stdin, relative
    /// to the home (`./…`, see [`home_relative`]). Each path must exist (the caller has just made
    /// it). Symlinks are left alone (their mode means nothing) and so is what the user does not
    /// own (what a container chowned to a subordinate uid), so nothing outside the user's own
    /// files can be reached; being the user's own doing, a race the user plays with its paths
    /// changes only its own files. Every path changed is printed (`made private: ./x (mode was
    /// 644)`).
    pub fn make_private(&self, paths: &[Vec<u8>]) -> Result<()> {
        if paths.is_empty() {
            return Ok(());
        }
        let mut find = self.command("find");
        find.args(["-files0-from", "-", "-maxdepth", "0"]);
        self.private_pass(find, Some(paths))
    }

    /// [`make_private`](Self::make_private) of paths relative to the home (`.config/agent`).
    pub fn make_private_paths(&self, paths: &[&str]) -> Result<()> {
        let paths: Vec<Vec<u8>> = paths
            .iter()
            .filter_map(|p| home_relative(p.as_bytes()))
            .collect();
        self.make_private(&paths)
    }

    /// [`make_private`](Self::make_private) for everything below the home, recursively. Only for
    /// a home `useradd` has just made: every file in it then is the core's (`/etc/skel`'s copies).
    /// Never on an installed module, whose own files (and container storage) are its business.
    fn make_tree_private(&self) -> Result<()> {
        let mut find = self.command("find");
        find.args([".", "-mindepth", "1"]);
        self.private_pass(find, None)
    }

    fn private_pass(&self, mut find: Command, stdin: Option<&[Vec<u8>]>) -> Result<()> {
        find.args(["-uid", &self.uid.to_string(), "!", "-type", "l"])
            .args([
                "-perm",
                "/go=rwx",
                "-printf",
                "made private: %p (mode was %m)\n",
            ])
            .args(["-exec", "chmod", "go-rwx", "--", "{}", "+"]);
        find.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut child = find
            .spawn()
            .map_err(|e| ToolError::OsError(format!("cannot run runuser: {e}")))?;
        let written = match (stdin, child.stdin.take()) {
            (Some(paths), Some(mut input)) => paths.iter().try_for_each(|p| {
                input.write_all(p)?;
                input.write_all(b"\0")
            }),
            _ => Ok(()),
        };
        let st = child
            .wait()
            .map_err(|e| ToolError::OsError(format!("runuser: {e}")))?;
        if !st.success() || written.is_err() {
            return Err(ToolError::Failed(format!(
                "cannot make the files of {} private ({} failed: {st})",
                self.name,
                super::shown(&find)
            )));
        }
        Ok(())
    }
}

/// Makes directory `dir` exactly mode `0700` if it is not; returns the mode it had then. Done as
/// root on the directory's own inode, never through a path the user controls: `dir` (a home,
/// whose parent `/home` is root's) is opened with `O_NOFOLLOW | O_DIRECTORY` — a symlink or
/// anything but a directory is refused, not followed —, must be owned by `uid`, and is changed
/// with `fchmod` on that descriptor. Nothing is written into the directory.
fn private_dir(dir: &Path, uid: u32) -> Result<Option<u32>> {
    let fail = |what: &str, e: std::io::Error| {
        ToolError::Failed(format!("cannot {what} the home {}: {e}", dir.display()))
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_DIRECTORY)
        .open(dir)
        .map_err(|e| fail("open (not following a symlink)", e))?;
    let meta = file.metadata().map_err(|e| fail("stat", e))?;
    if meta.uid() != uid {
        return Err(ToolError::Failed(format!(
            "the home {} is owned by uid {}, not by the module's user (uid {uid}): left alone",
            dir.display(),
            meta.uid()
        )));
    }
    let mode = meta.mode() & 0o7777;
    if mode == 0o700 {
        return Ok(None);
    }
    file.set_permissions(std::fs::Permissions::from_mode(0o700))
        .map_err(|e| fail("change the mode of", e))?;
    Ok(Some(mode))
}

/// A path of an archive's member as [`ModuleUser::make_private`] takes it: relative to the
/// extraction directory, `./` first (so it never looks like an option), without `.` or empty
/// components. `None` for the directory itself (`./`) and for what tar does not extract there
/// (a `..` component).
pub fn home_relative(member: &[u8]) -> Option<Vec<u8>> {
    let mut out = b".".to_vec();
    for part in member.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return None,
            name => {
                out.push(b'/');
                out.extend_from_slice(name);
            }
        }
    }
    (out.len() > 1).then_some(out)
}

/// module.init/10create-user, with a uid no module had before ([`next_module_uid`]) and a
/// private home.
pub fn create_user(id: &ModuleId) -> Result<()> {
    let (user, created) = if let Some(u) = ModuleUser::lookup(id)? {
        println!("user {id} exists (uid {})", u.uid);
        (u, false)
    } else {
        let uid = next_module_uid(Path::new(UID_HIGH_WATER), Path::new("/etc/passwd"))?;
        run_ok(Command::new("useradd").args([
            "--create-home",
            // Private from its first moment (login.defs' default is 0777 & ~UMASK: 0755).
            "--key",
            "HOME_MODE=0700",
            "--shell",
            "/bin/bash",
            "--uid",
            &uid.to_string(),
            "--comment",
            &module_comment(id),
            id.as_str(),
        ]))?;
        let u = ModuleUser::require(id)?;
        record_module_uid(Path::new(UID_HIGH_WATER), u.uid)?;
        println!("created user {id} (uid {})", u.uid);
        (u, true)
    };
    // Checked, not assumed (a useradd that ignores HOME_MODE), and on every run: a module
    // installed before homes were private is fixed by a re-run.
    user.make_home_private()?;
    if created {
        // The copies of /etc/skel (0644): all a new home holds.
        user.make_tree_private()?;
    }
    run_ok(Command::new("loginctl").args(["enable-linger", id.as_str()]))
}

/// The highest uid ever given to a module's user on this node.
const UID_HIGH_WATER: &str = "/var/lib/agent/module-uid-high";

/// Highest uid of a module's user (Debian's `UID_MAX` is 60000).
const MODULE_UID_MAX: u32 = 59_999;

/// A uid above every uid in use and every uid a module ever had: a uid is never given twice.
///
/// Files a removed module left outside its home (in `/tmp`, `/dev/shm`) never become a new module's,
/// and a new module never meets the systemd units of an old one with its uid still stopping
/// (`user@UID.service`, `user-UID.slice`: seen racing on test nodes when a failed install was rolled
/// back and installed again at once).
fn next_module_uid(high_water: &Path, passwd: &Path) -> Result<u32> {
    let high = match std::fs::read_to_string(high_water) {
        Ok(text) => text.trim().parse::<u32>().map_err(|_| {
            ToolError::Failed(format!(
                "{} holds {:?}, not a uid",
                high_water.display(),
                text.trim()
            ))
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => {
            return Err(ToolError::OsError(format!(
                "cannot read {}: {e}",
                high_water.display()
            )))
        }
    };
    let passwd = std::fs::read_to_string(passwd)
        .map_err(|e| ToolError::OsError(format!("cannot read {}: {e}", passwd.display())))?;
    let in_use = passwd
        .lines()
        .filter_map(|l| l.split(':').nth(2)?.parse::<u32>().ok())
        .filter(|uid| (MODULE_UID_MIN..=MODULE_UID_MAX).contains(uid))
        .max()
        .unwrap_or(0);
    let mut uid = high.max(in_use).max(MODULE_UID_MIN - 1) + 1;
    // Users known to NSS but not to the file (a directory service) are skipped too.
    while nix::unistd::User::from_uid(uid.into())
        .ok()
        .flatten()
        .is_some()
    {
        uid += 1;
    }
    if uid > MODULE_UID_MAX {
        return Err(ToolError::Failed(format!(
            "no uid left for a module user: the next would be {uid}, above {MODULE_UID_MAX}"
        )));
    }
    Ok(uid)
}

/// Raises the high-water mark to `uid` (written to a temporary file, then renamed).
fn record_module_uid(high_water: &Path, uid: u32) -> Result<()> {
    let os = |what: &str, e: std::io::Error| {
        ToolError::OsError(format!("cannot {what} {}: {e}", high_water.display()))
    };
    let current = std::fs::read_to_string(high_water)
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok())
        .unwrap_or(0);
    if current >= uid {
        return Ok(());
    }
    if let Some(dir) = high_water.parent() {
        std::fs::create_dir_all(dir).map_err(|e| os("create the directory of", e))?;
    }
    let tmp = high_water.with_extension("tmp");
    std::fs::write(&tmp, format!("{uid}\n")).map_err(|e| os("write", e))?;
    std::fs::rename(&tmp, high_water).map_err(|e| os("replace", e))
}

/// module.remove/20disable-linger: linger off, so the user's manager does not come back.
pub fn disable_linger(id: &ModuleId) -> Result<()> {
    if ModuleUser::lookup(id)?.is_some() {
        // A failure (no logind) is fine: the linger file goes below either way.
        let _ = status(Command::new("loginctl").args(["disable-linger", id.as_str()]));
    }
    remove_if_exists(&Path::new("/var/lib/systemd/linger").join(id.as_str()))?;
    println!("linger of {id} off");
    Ok(())
}

/// The real and effective uid of a process, from the text of `/proc/PID/status`.
pub fn status_uids(status: &str) -> Option<(u32, u32)> {
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    let mut ids = line.split_whitespace().map(|s| s.parse::<u32>().ok());
    Some((ids.next()??, ids.next()??))
}

/// The processes whose real or effective uid is `uid`: (pid, command name).
fn processes_of(uid: u32) -> Vec<(i32, String)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let e = e.ok()?;
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let text = std::fs::read_to_string(e.path().join("status")).ok()?;
        let (real, effective) = status_uids(&text)?;
        if real != uid && effective != uid {
            return None;
        }
        let name = text
            .lines()
            .find_map(|l| l.strip_prefix("Name:"))
            .unwrap_or("")
            .trim()
            .to_string();
        Some((pid, name))
    })
    .collect()
}

/// Stops `user@UID.service` — the user's manager and with it every unit it runs (the module-agent,
/// the containers) — on the system manager over D-Bus, waiting for the stop job to end (at most
/// [`MANAGER_STOP_WAIT`]). A failure is only reported: the processes are killed right after anyway.
///
/// There used to be a second way out here: stop waiting once the manager's cgroup said `populated 0`,
/// because on test nodes the unit sometimes stayed `deactivating (final-sigkill)` for two minutes
/// after its last process had gone. That was the test harness, not systemd: every node's container
/// shared one `/payload` cgroup, so a node's `user@1000.service` waited for the other nodes'
/// processes of the same unit. With a cgroup of its own per node (tests/node/node.sh), twelve
/// removals in three full runs of the node tests, with the workaround taken out and nodes running
/// side by side, stopped the manager in 0.14–1.45 s (issue #11), so it is gone.
fn stop_user_manager(uid: u32) {
    let stop = async {
        let unit = systemd_client::UnitName::new(&format!("user@{uid}.service"))?;
        let systemd = systemd_client::Systemd::connect(systemd_client::Bus::System).await?;
        systemd.stop(&unit).await
    };
    let done = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|rt| {
            rt.block_on(async { tokio::time::timeout(MANAGER_STOP_WAIT, stop).await })
                .map_err(|_| format!("not stopped after {}s", MANAGER_STOP_WAIT.as_secs()))
                .and_then(|r| r.map_err(|e| e.to_string()))
        });
    match done {
        Ok(()) => println!("user@{uid}.service stopped"),
        Err(e) => eprintln!("warning: stopping user@{uid}.service: {e} (killing its processes)"),
    }
}

/// How long module.remove waits for systemd to stop a module's user manager before it kills what
/// is left itself.
const MANAGER_STOP_WAIT: Duration = Duration::from_secs(30);

/// module.remove/30kill-processes: the user's manager and every process of the user ended
/// (bounded wait), so userdel can remove it.
pub fn kill_processes(id: &ModuleId) -> Result<()> {
    let Some(u) = ModuleUser::lookup(id)? else {
        println!("no user {id}: no processes");
        return Ok(());
    };
    let quiet = |c: &mut Command| {
        c.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let _ = status(c);
    };
    stop_user_manager(u.uid);
    quiet(Command::new("loginctl").args(["terminate-user", id.as_str()]));
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let left = processes_of(u.uid);
        if left.is_empty() {
            break;
        }
        if Instant::now() > end {
            let list: Vec<String> = left.iter().map(|(p, n)| format!("{p} {n}")).collect();
            return Err(ToolError::TempFailure(format!(
                "processes of {id} still alive after 10s: {}",
                list.join(", ")
            )));
        }
        for (pid, _) in left {
            // Gone already (ESRCH) is what we want.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("no processes of {id} left");
    Ok(())
}

/// module.remove/40delete-user: `userdel --remove` (user, group, home, mail spool, subordinate
/// ids); a home left without its user (a half-done removal) goes too.
pub fn delete_user(id: &ModuleId) -> Result<()> {
    if ModuleUser::lookup(id)?.is_some() {
        let out = Command::new("userdel")
            .args(["--remove", id.as_str()])
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| ToolError::OsError(format!("cannot run userdel: {e}")))?;
        // Its exit status is not the answer (a missing mail spool makes it 12): the user's
        // absence is.
        for line in String::from_utf8_lossy(&out.stderr).lines() {
            if !(line.contains("mail spool") && line.contains("not found")) {
                eprintln!("{line}");
            }
        }
        if ModuleUser::lookup(id)?.is_some() {
            return Err(ToolError::Failed(format!(
                "userdel {id} failed ({})",
                out.status
            )));
        }
        println!("deleted user {id}");
    } else {
        println!("no user {id}");
    }
    // What the node kept of the module's upgrades (its state, the image before the last one).
    super::update::forget_module(id)?;
    // The user is gone with all its processes: nobody can swap paths under us now, and
    // remove_dir_all does not follow symlinks.
    remove_if_exists(&Path::new("/home").join(id.as_str()))
}

/// Removes a file, a symlink (not its target) or a directory tree; absent is fine.
fn remove_if_exists(path: &Path) -> Result<()> {
    let res = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => Err(e),
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
    };
    match res {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ToolError::Failed(format!(
            "cannot remove {}: {e}",
            path.display()
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_modules_of_a_node_are_the_users_create_user_made() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n\
            redis:x:101:102:module redis:/var/lib/redis:/usr/sbin/nologin\n\
            hello0:x:1000:1000:module hello0:/home/hello0:/bin/sh\n\
            admin:x:1001:1001:Admin:/home/admin:/bin/bash\n\
            pair1:x:1002:1002:module hello0:/home/pair1:/bin/sh\n\
            Bad:x:1003:1003:module Bad:/home/Bad:/bin/sh\n\
            short:x:1004\n\
            \n\
            pair2:x:1005:1005:module pair2:/home/pair2:/bin/sh";
        let ids: Vec<String> = modules_in_passwd(passwd)
            .iter()
            .map(|i| i.to_string())
            .collect();
        assert_eq!(ids, ["hello0", "pair2"]);
    }

    #[test]
    fn only_a_user_made_for_the_module_is_the_modules() {
        let id = ModuleId::new("redis").unwrap();
        assert!(is_module_user(&id, 1001, "module redis"));
        // The node's own users: system uids, other comments, nobody.
        assert!(!is_module_user(&id, 105, "module redis"));
        assert!(!is_module_user(&id, 1001, ""));
        assert!(!is_module_user(&id, 1001, "Redis Server"));
        assert!(!is_module_user(&id, 1001, "module redis2"));
        assert!(!is_module_user(&id, 65534, "module redis"));
    }

    #[test]
    fn uids_from_proc_status() {
        let text = "Name:\tsleep\nUmask:\t0022\nState:\tS\nUid:\t1001\t1002\t1002\t1002\nGid:\t0\t0\t0\t0\n";
        assert_eq!(status_uids(text), Some((1001, 1002)));
        assert_eq!(status_uids("Name:\tx\n"), None);
        assert_eq!(status_uids("Uid:\tx\t1\n"), None);
    }

    #[test]
    fn own_processes_are_found() {
        let me = nix::unistd::getuid().as_raw();
        let mine = processes_of(me);
        let pid = std::process::id() as i32;
        assert!(mine.iter().any(|(p, _)| *p == pid), "{mine:?}");
    }

    #[test]
    fn user_commands_have_explicit_arguments() {
        let u = ModuleUser {
            name: "hello0".into(),
            uid: 1001,
            home: "/home/hello0".into(),
        };
        let mut c = u.command("podman");
        c.args(["load", "--quiet"]);
        assert_eq!(
            super::super::shown(&c),
            "runuser -u hello0 -- env -C /home/hello0 HOME=/home/hello0 XDG_RUNTIME_DIR=/run/user/1001 \
             DBUS_SESSION_BUS_ADDRESS=unix:path=/run/user/1001/bus podman load --quiet"
        );
    }

    #[test]
    fn a_module_uid_is_never_given_twice() {
        let dir = tempfile::tempdir().unwrap();
        let (high, passwd) = (dir.path().join("state/high"), dir.path().join("passwd"));
        // Uids far above any this test machine has, so NSS knows none of them.
        std::fs::write(
            &passwd,
            "root:x:0:0::/root:/bin/bash\nnobody:x:65534:65534::/:/bin/false\nm1:x:41000:41000:module m1:/home/m1:/bin/bash\n",
        )
        .unwrap();
        assert_eq!(next_module_uid(&high, &passwd).unwrap(), 41001);
        record_module_uid(&high, 41001).unwrap();
        // m2 (41001) was removed again: its uid is not given to the next module.
        assert_eq!(next_module_uid(&high, &passwd).unwrap(), 41002);
        record_module_uid(&high, 41000).unwrap();
        assert_eq!(
            std::fs::read_to_string(&high).unwrap(),
            "41001\n",
            "never lowered"
        );
        // A fresh node: the first module uid.
        std::fs::write(&passwd, "root:x:0:0::/root:/bin/bash\n").unwrap();
        let fresh = next_module_uid(&dir.path().join("none"), &passwd).unwrap();
        assert!(fresh >= MODULE_UID_MIN, "{fresh}");
        std::fs::write(&high, "not a number").unwrap();
        assert!(next_module_uid(&high, &passwd).is_err());
        std::fs::write(&high, format!("{MODULE_UID_MAX}")).unwrap();
        assert!(next_module_uid(&high, &passwd).is_err());
    }

    #[test]
    fn member_paths_relative_to_the_home() {
        let rel = |m: &str| home_relative(m.as_bytes()).map(|p| String::from_utf8(p).unwrap());
        assert_eq!(rel(".config/agent").as_deref(), Some("./.config/agent"));
        assert_eq!(rel("./a/b/").as_deref(), Some("./a/b"));
        assert_eq!(rel("/abs//x/./y").as_deref(), Some("./abs/x/y"));
        assert_eq!(rel("-rf").as_deref(), Some("./-rf"), "never an option");
        for none in ["", ".", "./", "/", "..", "a/../b", "../etc/passwd"] {
            assert_eq!(rel(none), None, "{none:?}");
        }
    }

    #[test]
    fn a_home_is_made_0700_on_its_own_inode() {
        let dir = tempfile::tempdir().unwrap();
        let me = nix::unistd::getuid().as_raw();
        let home = dir.path().join("home");
        std::fs::create_dir(&home).unwrap();
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o2755)).unwrap();
        assert_eq!(private_dir(&home, me).unwrap(), Some(0o2755));
        let mode = std::fs::metadata(&home).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o700);
        assert_eq!(private_dir(&home, me).unwrap(), None, "already private");

        // A symlink is refused, not followed: its target keeps its mode.
        let target = dir.path().join("target");
        std::fs::create_dir(&target).unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755)).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(private_dir(&link, me).is_err());
        assert_eq!(std::fs::metadata(&target).unwrap().mode() & 0o7777, 0o755);
        // Not a directory; not the user's.
        std::fs::write(dir.path().join("file"), "x").unwrap();
        assert!(private_dir(&dir.path().join("file"), me).is_err());
        let e = private_dir(&target, me.wrapping_add(1)).unwrap_err();
        assert!(e.to_string().contains("left alone"), "{e}");
        assert_eq!(std::fs::metadata(&target).unwrap().mode() & 0o7777, 0o755);
    }

    #[test]
    fn removing_keeps_symlink_targets() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("f"), "x").unwrap();
        let home = dir.path().join("home");
        std::fs::create_dir(&home).unwrap();
        std::os::unix::fs::symlink(&target, home.join("link")).unwrap();
        remove_if_exists(&home).unwrap();
        assert!(!home.exists());
        assert!(target.join("f").exists(), "a symlink's target is kept");
        remove_if_exists(&home).unwrap();
    }
}
