//! `module-sdk unit` against the real systemd managers of a booted node (`tests/node/node.sh`, see
//! tests/tests/node.rs): a lingering user's own manager on the user bus, as a module's steps use
//! it, and the node's system manager with `--system`. Every result is checked with `systemctl`
//! (or the file system), not with module-sdk itself. Needs root (see docs/NODE-HARNESS.md).

use std::process::Output;
use std::time::{Duration, Instant};

use agent_tests::node::{text, Node};

const USER: &str = "units1";

/// A service that runs until stopped; enabled into default.target.
const SLEEPER: &str = "[Unit]\nDescription=sleeper v1\n[Service]\nExecStart=/bin/sleep infinity\n\
                       [Install]\nWantedBy=default.target\n";
/// A start that fails: Type=oneshot, so the start job waits for the process and fails with it.
const BROKEN: &str = "[Service]\nType=oneshot\n\
                      ExecStart=/bin/sh -c 'echo broken-unit-says-goodbye; exit 3'\n";

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

/// A node user with linger and a running user manager; its uid.
fn lingering_user(node: &Node, user: &str) -> String {
    node.ok(&["useradd", "--create-home", "--shell", "/bin/bash", user]);
    node.ok(&["loginctl", "enable-linger", user]);
    let machine = format!("{user}@");
    node.wait_output(
        &["systemctl", "--user", "-M", &machine, "is-system-running"],
        "running",
        Duration::from_secs(30),
    );
    node.ok(&["id", "-u", user])
}

/// `module-sdk unit ARGS` as `user`, with the environment a user service (a module's step) has.
fn sdk(node: &Node, user: &str, uid: &str, args: &[&str]) -> Output {
    let runtime = format!("XDG_RUNTIME_DIR=/run/user/{uid}");
    let bus = format!("DBUS_SESSION_BUS_ADDRESS=unix:path=/run/user/{uid}/bus");
    let mut all = vec![
        "runuser",
        "-u",
        user,
        "--",
        "env",
        &runtime,
        &bus,
        "module-sdk",
        "unit",
    ];
    all.extend_from_slice(args);
    node.exec(&all)
}

/// Like `sdk`, asserting exit code `want`; returns stderr.
fn sdk_code(node: &Node, user: &str, uid: &str, args: &[&str], want: i32) -> String {
    let out = sdk(node, user, uid, args);
    assert_eq!(
        code(&out),
        want,
        "module-sdk unit {args:?} as {user}:\nstdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stderr)
}

/// `systemctl --user -M USER@ ARGS` stdout, whatever the exit code (is-active exits 3 when
/// inactive); retries the user bus's "Transport endpoint is not connected" like the harness does.
fn user_ctl(node: &Node, user: &str, args: &[&str]) -> String {
    let machine = format!("{user}@");
    let mut all = vec!["systemctl", "--user", "-M", &machine];
    all.extend_from_slice(args);
    for _ in 0..10 {
        let out = node.exec(&all);
        if !text(&out.stderr).contains("Transport endpoint is not connected") {
            return text(&out.stdout);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("{all:?}: the user bus keeps dropping the connection");
}

/// Writes `content` as `~user/.config/DIR/NAME`, the user's own (`.config` chowned to it).
fn write_config_file(node: &Node, user: &str, dir: &str, name: &str, content: &str) {
    let dir = format!("/home/{user}/.config/{dir}");
    let out = node.exec_with_input(
        &[
            "sh",
            "-c",
            &format!(
                "mkdir -p {dir} && cat > {dir}/{name} && chown -R {user}: /home/{user}/.config"
            ),
        ],
        content.as_bytes(),
    );
    assert!(
        out.status.success(),
        "writing {name}: {}",
        text(&out.stderr)
    );
}

fn write_user_unit(node: &Node, user: &str, name: &str, content: &str) {
    write_config_file(node, user, "systemd/user", name, content);
}

#[test]
fn module_sdk_unit_drives_a_lingering_users_manager() {
    let node = Node::up("units", &[]);
    let uid = lingering_user(&node, USER);
    let (n, u) = (&node, uid.as_str());
    write_user_unit(n, USER, "sleeper.service", SLEEPER);
    write_user_unit(n, USER, "broken.service", BROKEN);

    sdk_code(n, USER, u, &["daemon-reload"], 0);

    // status of a stopped unit: exit 3 and its states.
    let out = sdk(n, USER, u, &["status", "sleeper"]);
    assert_eq!(code(&out), 3, "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("unit:   sleeper.service"), "{stdout}");
    assert!(stdout.contains("active: inactive (dead)"), "{stdout}");

    // start waits for the job: active right when it returns.
    sdk_code(n, USER, u, &["start", "sleeper"], 0);
    assert_eq!(user_ctl(n, USER, &["is-active", "sleeper"]), "active");
    let out = sdk(n, USER, u, &["status", "sleeper.service"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("active: active (running)"),
        "{}",
        text(&out.stdout)
    );

    // daemon-reload: the changed file of a loaded (running) unit is picked up.
    assert_eq!(
        user_ctl(
            n,
            USER,
            &["show", "-p", "Description", "--value", "sleeper"]
        ),
        "sleeper v1"
    );
    write_user_unit(n, USER, "sleeper.service", &SLEEPER.replace("v1", "v2"));
    assert_eq!(
        user_ctl(
            n,
            USER,
            &["show", "-p", "NeedDaemonReload", "--value", "sleeper"]
        ),
        "yes"
    );
    sdk_code(n, USER, u, &["daemon-reload"], 0);
    assert_eq!(
        user_ctl(
            n,
            USER,
            &["show", "-p", "NeedDaemonReload", "--value", "sleeper"]
        ),
        "no"
    );
    assert_eq!(
        user_ctl(
            n,
            USER,
            &["show", "-p", "Description", "--value", "sleeper"]
        ),
        "sleeper v2"
    );

    // restart: a new main process.
    let pid = || user_ctl(n, USER, &["show", "-p", "MainPID", "--value", "sleeper"]);
    let before = pid();
    sdk_code(n, USER, u, &["restart", "sleeper"], 0);
    let after = pid();
    assert_ne!(before, after, "restart kept MainPID {before}");
    assert_ne!(after, "0");
    assert_eq!(user_ctl(n, USER, &["is-active", "sleeper"]), "active");

    // reload of a unit without ExecReload=: systemd refuses, exit 1, the unit stays up.
    let err = sdk_code(n, USER, u, &["reload", "sleeper"], 1);
    assert!(err.contains("sleeper.service"), "{err}");
    assert_eq!(user_ctl(n, USER, &["is-active", "sleeper"]), "active");

    // stop: inactive when it returns; status exits 3.
    sdk_code(n, USER, u, &["stop", "sleeper"], 0);
    assert_eq!(user_ctl(n, USER, &["is-active", "sleeper"]), "inactive");
    assert_eq!(code(&sdk(n, USER, u, &["status", "sleeper"])), 3);

    // enable / disable: the [Install] symlink appears and goes.
    let link = format!("/home/{USER}/.config/systemd/user/default.target.wants/sleeper.service");
    let err = sdk_code(n, USER, u, &["enable", "sleeper"], 0);
    assert!(err.contains("Created symlink"), "{err}");
    n.ok(&["test", "-L", &link]);
    assert_eq!(user_ctl(n, USER, &["is-enabled", "sleeper"]), "enabled");
    assert_eq!(user_ctl(n, USER, &["is-active", "sleeper"]), "inactive");
    sdk_code(n, USER, u, &["disable", "sleeper"], 0);
    assert!(n.fails(&["test", "-e", &link]), "{link} is still there");
    assert_eq!(user_ctl(n, USER, &["is-enabled", "sleeper"]), "disabled");

    // --now starts and stops too.
    sdk_code(n, USER, u, &["enable", "--now", "sleeper"], 0);
    n.ok(&["test", "-L", &link]);
    assert_eq!(user_ctl(n, USER, &["is-active", "sleeper"]), "active");
    sdk_code(n, USER, u, &["disable", "--now", "sleeper"], 0);
    assert!(n.fails(&["test", "-e", &link]));
    assert_eq!(user_ctl(n, USER, &["is-active", "sleeper"]), "inactive");

    // A start that fails: exit 1, and the message says result, state and the journal's lines.
    let err = sdk_code(n, USER, u, &["start", "broken"], 1);
    for want in [
        "unit broken.service failed to start (result: failed",
        "state: failed/failed",
        "unit result: exit-code",
        "last journal lines:",
        // The unit's journal as the manager wrote it. (The unit's own echo is usually there too,
        // but in two CI runs of a clean clone the user's `journalctl --user -u` did not show it
        // within 2 s while it always did on the same machine otherwise: not asserted.)
        "broken.service: Main process exited, code=exited, status=3/NOTIMPLEMENTED",
        "more: journalctl --user -u broken.service",
    ] {
        assert!(err.contains(want), "{want:?} missing in:\n{err}");
    }
    assert_eq!(user_ctl(n, USER, &["is-active", "broken"]), "failed");

    // Unknown units: 69 and a message that says where units live.
    for args in [
        &["start", "nosuch"][..],
        &["status", "nosuch"],
        &["enable", "nosuch"],
    ] {
        let err = sdk_code(n, USER, u, args, 69);
        assert!(
            err.contains("unit nosuch.service not found"),
            "{args:?}: {err}"
        );
        assert!(err.contains("~/.config/systemd/user"), "{err}");
    }
    // A name that is not one: usage error before any bus traffic.
    sdk_code(n, USER, u, &["start", "../x"], 2);

    // The system manager is not the user's to change: 77, named as such.
    let err = sdk_code(n, USER, u, &["--system", "stop", "node-agent"], 77);
    assert!(err.contains("needs root"), "{err}");
    assert_eq!(n.ok(&["systemctl", "is-active", "node-agent"]), "active");
}

/// Right after `loginctl enable-linger` the user's bus does not exist yet: module-sdk waits for
/// it (bounded retries) instead of failing, as a module.init step that starts units needs.
#[test]
fn module_sdk_unit_waits_for_a_user_manager_that_is_starting() {
    let node = Node::up("units", &[]);
    node.ok(&["useradd", "--create-home", "--shell", "/bin/bash", "units2"]);
    let uid = node.ok(&["id", "-u", "units2"]);
    assert!(node.fails(&["test", "-e", &format!("/run/user/{uid}/bus")]));
    node.ok(&["loginctl", "enable-linger", "units2"]);
    let started = Instant::now();
    let out = sdk(&node, "units2", &uid, &["status", "default.target"]);
    eprintln!(
        "first status after enable-linger took {:?}",
        started.elapsed()
    );
    assert_eq!(code(&out), 0, "stderr: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("active: active (active)"),
        "{}",
        text(&out.stdout)
    );
}

/// `--system` talks to the node's PID 1, as root: a node step's view.
#[test]
fn module_sdk_unit_system_drives_the_nodes_manager() {
    let node = Node::up("units", &[]);
    let sdk_root = |args: &[&str], want: i32| {
        let mut all = vec!["module-sdk", "unit", "--system"];
        all.extend_from_slice(args);
        let out = node.exec(&all);
        assert_eq!(
            code(&out),
            want,
            "{all:?}:\nstdout: {}\nstderr: {}",
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    };
    let status = sdk_root(&["status", "node-agent"], 0);
    assert!(status.contains("active: active (running)"), "{status}");
    assert!(
        status.contains("/usr/lib/systemd/system/node-agent.service"),
        "{status}"
    );

    node.ok(&[
        "sh",
        "-c",
        "printf '[Service]\\nType=oneshot\\nRemainAfterExit=yes\\nExecStart=/bin/true\\n' \
         > /etc/systemd/system/units-tick.service",
    ]);
    sdk_root(&["daemon-reload"], 0);
    sdk_root(&["start", "units-tick"], 0);
    assert_eq!(node.ok(&["systemctl", "is-active", "units-tick"]), "active");
    sdk_root(&["stop", "units-tick"], 0);
    assert_eq!(
        text(&node.exec(&["systemctl", "is-active", "units-tick"]).stdout),
        "inactive"
    );
    sdk_root(&["status", "units-tick"], 3);
    let out = node.exec(&["module-sdk", "unit", "--system", "start", "nosuch"]);
    assert_eq!(code(&out), 69);
    assert!(
        text(&out.stderr).contains("/etc/systemd/system"),
        "{}",
        text(&out.stderr)
    );
}

/// Writes `content` as the Quadlet file `name` of `user` (~/.config/containers/systemd).
fn write_quadlet(node: &Node, user: &str, name: &str, content: &str) {
    write_config_file(node, user, "containers/systemd", name, content);
}

/// A Quadlet file's name stands for the unit Podman's generator makes of it: `start` reloads the
/// manager first (a file written just before is what starts), `enable` is refused with the way
/// to start at boot, and a file the generator rejects gets a hint towards its errors.
#[test]
fn module_sdk_unit_starts_quadlet_files_by_their_generated_units() {
    let node = Node::up("quadlet", &[]);
    let n = &node;
    let user = "quad1";
    let uid = lingering_user(n, user);
    // A .volume needs no image: the generator makes data-volume.service, which creates it.
    write_quadlet(n, user, "data.volume", "[Volume]\nVolumeName=agentdata\n");
    sdk_code(n, user, &uid, &["start", "data.volume"], 0);
    assert_eq!(
        user_ctl(n, user, &["is-active", "data-volume.service"]),
        "active"
    );
    assert_eq!(
        user_ctl(n, user, &["is-enabled", "data-volume.service"]),
        "generated"
    );
    let volumes = n.ok(&[
        "runuser",
        "-u",
        user,
        "--",
        "sh",
        "-c",
        "cd ~quad1 && HOME=$PWD XDG_RUNTIME_DIR=/run/user/$(id -u) podman volume ls --format '{{.Name}}'",
    ]);
    assert_eq!(volumes, "agentdata");
    let out = sdk(n, user, &uid, &["status", "data.volume"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("unit:   data-volume.service"),
        "{}",
        text(&out.stdout)
    );

    let err = sdk_code(n, user, &uid, &["enable", "data.volume"], 2);
    assert!(err.contains("data.volume is a Quadlet file"), "{err}");
    assert!(err.contains("WantedBy=default.target"), "{err}");

    // A key the generator does not know: it makes no unit, and the error says where to look.
    write_quadlet(n, user, "bad.volume", "[Volume]\nNoSuchKey=1\n");
    let err = sdk_code(n, user, &uid, &["start", "bad.volume"], 69);
    assert!(err.contains("bad-volume.service not found"), "{err}");
    assert!(err.contains("generated from bad.volume"), "{err}");
    assert!(
        err.contains("/usr/libexec/podman/quadlet -dryrun -user"),
        "{err}"
    );
}
