//! Backups of a module on a real node with real restic (tests/node/node.sh; restic and rclone are
//! in the node's rootfs): `agentctl backup repo add` (a local directory, and a REST server —
//! `rclone serve restic` on the node's loopback — with credentials), `agentctl backup run`, the
//! status that stays failed from a failed backup until a later one succeeds (across a node-agent
//! restart and a reboot), an admin's step in the backup's rollback, `backup-failed` reaching a
//! subscriber, and the privacy of the dump directory; restores in place, under a new id and of
//! the data alone, one of them through two SIGKILLs of the node-agent. Needs root
//! (docs/NODE-HARNESS.md).

use std::path::Path;
use std::time::Duration;

use agent_tests::node::{admin_cli, agentctl, text, Node};

const BUILD: &str = "/usr/share/agent/examples/modules/build.sh";

/// Waits (30 s at most) until `file` in the node holds `want`.
fn wait_file_holds(node: &Node, file: &str, want: &str) {
    agent_tests::poll(Duration::from_secs(30), Duration::from_millis(100), || {
        let got = text(&node.exec(&["cat", file]).stdout);
        if got.contains(want) {
            Ok(())
        } else {
            Err(format!("{file} holds {got:?}, without {want:?}"))
        }
    })
}

fn status_field(node: &Node, id: &str, field: &str) -> String {
    node.ok(&admin_cli(&[
        "HGET",
        &format!("cluster/backup/status/{id}"),
        field,
    ]))
}

/// An admin's step in the backup's rollback (what runs on every failed backup): it keeps the
/// module id and the failed step in a file, as a mail or a monitor call would use them.
fn alert_step(dir: &Path) {
    let event = dir.join("backup.rollback");
    std::fs::create_dir_all(&event).unwrap();
    let step = event.join("20alert");
    std::fs::write(
        &step,
        "#!/bin/sh\nprintf '%s %s\\n' \"$1\" \"$AGENT_FAILED_STEP\" >> /var/lib/backup-alerts\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&step, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Builds the example images in the node and installs hello on port 8080; its id.
fn install_hello(node: &Node) -> String {
    node.ok(&[BUILD]);
    let (code, id, err) = agentctl(
        node,
        &[
            "module",
            "add",
            "--env",
            "PORT=8080",
            "localhost/hello:latest",
        ],
    );
    assert_eq!(code, 0, "module add: {err}");
    id.lines().next().unwrap().to_string()
}

#[test]
fn hello_is_backed_up_reports_a_failure_that_stays_until_a_success_and_uses_a_rest_server() {
    let events = tempfile::tempdir().unwrap();
    alert_step(events.path());
    let node = Node::up("bk", &[events.path().to_path_buf()]);
    let id = install_hello(&node);
    let (code, _, err) = agentctl(
        &node,
        &[
            "run",
            &format!("module/{id}"),
            "configure",
            "backed up page",
        ],
    );
    assert_eq!(code, 0, "configure: {err}");

    // No repository yet: a backup says so and fails loudly.
    let (code, _, err) = agentctl(&node, &["backup", "run", &id]);
    assert_ne!(code, 0);
    assert!(err.contains("no backup repository"), "{err}");
    assert_eq!(status_field(&node, &id, "state"), "failed");

    // A local repository: initialised, its password random and stored encrypted.
    let (code, out, err) = agentctl(
        &node,
        &["backup", "repo", "add", "local", "/srv/backup", "--default"],
    );
    assert_eq!((code, out.as_str()), (0, "local"), "{err}");
    assert!(err.contains("initialised"), "{err}");
    assert!(node.ok(&["test", "-f", "/srv/backup/config"]).is_empty());
    assert_eq!(
        node.ok(&["stat", "-c", "%U %a", "/etc/agent/backup.key"]),
        "root 600"
    );
    let sealed = node.ok(&admin_cli(&[
        "HGET",
        "cluster/backup/repository/local",
        "password",
    ]));
    assert!(
        sealed.starts_with("-----BEGIN AGE ENCRYPTED FILE-----"),
        "{sealed}"
    );
    let (_, list, _) = agentctl(&node, &["backup", "repo", "list"]);
    assert_eq!(list, "local\t/srv/backup  (default)");
    // Bad names and addresses are refused before anything is written.
    for bad in [
        &["backup", "repo", "add", "Bad", "/srv/x"][..],
        &["backup", "repo", "add", "x", "relative/dir"],
        &["backup", "repo", "add", "x", "rest:http://u:p@127.0.0.1/"],
        &["backup", "run", "../etc"],
    ] {
        let (code, _, err) = agentctl(&node, bad);
        assert_eq!(code, 65, "{bad:?}: {err}");
    }

    // The backup: the module's own steps dump, one snapshot, the report.
    let (code, _, err) = agentctl(&node, &["backup", "run", &id]);
    assert_eq!(code, 0, "backup run: {err}");
    let run = err
        .lines()
        .find_map(|l| {
            l.strip_prefix("run ")?
                .split_once(" queued on ")
                .map(|(r, _)| r.to_string())
        })
        .unwrap_or_else(|| panic!("no run id in {err}"));
    let run_key = format!("node/{}/run/{run}", node.name);
    let output = node.ok(&admin_cli(&["GET", &format!("{run_key}/output")]));
    assert!(
        output.contains("the module's backup steps are done"),
        "{output}"
    );
    assert!(output.contains("snapshot "), "{output}");
    assert!(
        !output.to_lowercase().contains("restic_password"),
        "{output}"
    );
    assert_eq!(status_field(&node, &id, "state"), "ok");
    let files: u64 = status_field(&node, &id, "success_files").parse().unwrap();
    assert!(files >= 2, "the page and the core's record: {files}");
    let (code, status, _) = agentctl(&node, &["backup", "status", &id]);
    assert_eq!(code, 0, "{status}");
    assert!(status.starts_with(&format!("{id}: ok")), "{status}");
    // The dump is outside the module's home, in a directory the module cannot replace, and gone
    // once it is in the snapshot (what a later restore gets back is the snapshot's).
    let dir = format!("/home/.agent-backup/{id}");
    assert_eq!(node.ok(&["stat", "-c", "%U %a", &dir]), "root 711");
    assert!(node.fails(&["test", "-e", &format!("{dir}/dump")]));
    assert!(node.fails(&["test", "-e", &format!("{dir}/core")]));
    // The status is the node's to write, never the module's (its ACL user writes module/ID/*).
    let forge = node.exec(&[
        "runuser", "-u", &id, "--", "sh", "-c",
        ". ~/.config/agent/redis.env && redis-cli --no-auth-warning --user \"$REDIS_USER\" --pass \"$REDIS_PASSWORD\" HSET cluster/backup/status/$(id -un) state ok",
    ]);
    assert!(
        text(&forge.stdout).contains("NOPERM"),
        "{}",
        text(&forge.stdout)
    );
    let (code, snaps, err) = agentctl(&node, &["backup", "snapshots", &id]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(snaps.lines().count(), 1, "{snaps}");
    assert!(snaps.contains("image localhost/hello:latest"), "{snaps}");

    // A module step that fails: the backup fails, nothing is snapshotted, the status says why,
    // backup-failed reaches the admin's event, and the failure stays.
    node.ok(&[
        "runuser", "-u", &id, "--", "sh", "-c",
        "mkdir -p ~/module-events/backup && printf '#!/bin/sh\\necho disk full >&2\\nexit 3\\n' > ~/module-events/backup/20fail && chmod 755 ~/module-events/backup/20fail",
    ]);
    // A subscriber of the node's emitted event, as a monitor would be.
    let subscribe = format!(
        ". /etc/agent/admin.env && exec redis-cli --no-auth-warning --user \"$REDIS_USER\" --pass \"$REDIS_PASSWORD\" SUBSCRIBE event/{}/backup-failed > /var/lib/backup-failed-events",
        node.name
    );
    node.ok(&[
        "systemd-run",
        "--unit",
        "backup-watch",
        "sh",
        "-c",
        &subscribe,
    ]);
    wait_file_holds(&node, "/var/lib/backup-failed-events", "subscribe");
    let (code, _, err) = agentctl(&node, &["backup", "run", &id]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(status_field(&node, &id, "state"), "failed");
    assert_eq!(status_field(&node, &id, "attempt_status"), "failed");
    let error = status_field(&node, &id, "attempt_error");
    assert!(error.contains("disk full"), "{error}");
    let (code, status, _) = agentctl(&node, &["backup", "status"]);
    assert_eq!(code, 1, "a failed module makes status fail: {status}");
    assert!(
        status.contains("error: ") && status.contains("disk full"),
        "{status}"
    );
    let alerts = node.ok(&["cat", "/var/lib/backup-alerts"]);
    assert!(alerts.contains(&format!("{id} 10dump")), "{alerts}");
    wait_file_holds(&node, "/var/lib/backup-failed-events", "disk full");
    assert_eq!(
        agentctl(&node, &["backup", "snapshots", &id])
            .1
            .lines()
            .count(),
        1
    );

    // Neither an agent restart nor a reboot clears it.
    node.ok(&["systemctl", "restart", "node-agent"]);
    assert_eq!(status_field(&node, &id, "state"), "failed");
    node.reboot();
    node.wait_output(&admin_cli(&["PING"]), "PONG", Duration::from_secs(60));
    assert_eq!(status_field(&node, &id, "state"), "failed");
    assert!(status_field(&node, &id, "attempt_error").contains("disk full"));

    // Only a success does.
    node.ok(&[
        "runuser",
        "-u",
        &id,
        "--",
        "rm",
        &format!("/home/{id}/module-events/backup/20fail"),
    ]);
    node.wait_output(
        &admin_cli(&["EXISTS", &format!("module/{id}/heartbeat")]),
        "1",
        Duration::from_secs(60),
    );
    let (code, _, err) = agentctl(&node, &["backup", "run", &id]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(status_field(&node, &id, "state"), "ok");
    assert_eq!(status_field(&node, &id, "attempt_error"), "");
    assert_eq!(
        agentctl(&node, &["backup", "snapshots", &id])
            .1
            .lines()
            .count(),
        2
    );

    // A REST server with credentials (rclone serve restic on the node's loopback).
    node.ok(&[
        "systemd-run",
        "--unit",
        "rest-server",
        "rclone",
        "serve",
        "restic",
        "--addr",
        "127.0.0.1:8000",
        "--user",
        "bk",
        "--pass",
        "s3cret-rest",
        "/srv/rest",
    ]);
    node.wait_output(
        &[
            "sh",
            "-c",
            "curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8000/ || true",
        ],
        "401",
        Duration::from_secs(30),
    );
    let add = [
        "agentctl",
        "backup",
        "repo",
        "add",
        "rest",
        "rest:http://127.0.0.1:8000/hello",
        "--credentials-file",
        "-",
    ];
    let out = node.exec_with_input(
        &add,
        b"RESTIC_REST_USERNAME=bk\nRESTIC_REST_PASSWORD=s3cret-rest\n",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let sealed = node.ok(&admin_cli(&["HGETALL", "cluster/backup/repository/rest"]));
    assert!(!sealed.contains("s3cret-rest"), "{sealed}");
    let (code, _, err) = agentctl(&node, &["backup", "run", &id, "--repo", "rest"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(status_field(&node, &id, "success_repository"), "rest");
    assert_eq!(
        agentctl(&node, &["backup", "snapshots", &id, "--repo", "rest"])
            .1
            .lines()
            .count(),
        1
    );
    // A schedule: a timer on the node whose service queues the backup, and a retention.
    let (code, _, err) = agentctl(
        &node,
        &[
            "backup",
            "schedule",
            "set",
            "often",
            "--calendar",
            "*-*-* *:00/5:00",
            "--modules",
            &id,
            "--repo",
            "local",
            "--keep-last",
            "2",
        ],
    );
    assert_eq!(code, 0, "schedule set: {err}");
    for bad in [
        &[
            "backup",
            "schedule",
            "set",
            "x",
            "--calendar",
            "every full moon",
            "--all",
        ][..],
        &[
            "backup",
            "schedule",
            "set",
            "x",
            "--calendar",
            "daily\nExecStart=/bin/sh",
            "--all",
        ],
        &["backup", "schedule", "set", "x", "--calendar", "daily"],
    ] {
        let (code, _, err) = agentctl(&node, bad);
        assert_ne!(code, 0, "{bad:?}: {err}");
    }
    node.wait_output(
        &["systemctl", "is-active", "agent-backup-often.timer"],
        "active",
        Duration::from_secs(60),
    );
    let timer = node.ok(&["cat", "/etc/systemd/system/agent-backup-often.timer"]);
    assert!(
        timer.contains("OnCalendar=*-*-* *:00/5:00") && timer.contains("Persistent=true"),
        "{timer}"
    );
    for _ in 0..3 {
        let before =
            status_field(&node, &id, "success_ended") + &status_field(&node, &id, "attempt_run");
        node.ok(&["systemctl", "start", "agent-backup-often.service"]);
        agent_tests::poll(Duration::from_secs(120), Duration::from_millis(200), || {
            let now = status_field(&node, &id, "success_ended")
                + &status_field(&node, &id, "attempt_run");
            let st = status_field(&node, &id, "attempt_status");
            if now != before && st == "done" {
                Ok(())
            } else {
                Err(format!("waiting for the scheduled backup ({st})"))
            }
        });
    }
    assert_eq!(status_field(&node, &id, "state"), "ok");
    // The status says done at the snapshot step; retention (30forget) is the run's last step and
    // may still be running: wait for it rather than race it.
    agent_tests::poll(Duration::from_secs(60), Duration::from_millis(300), || {
        let n = agentctl(&node, &["backup", "snapshots", &id])
            .1
            .lines()
            .count();
        if n == 2 {
            Ok(())
        } else {
            Err(format!("keep-last 2: {n} snapshots"))
        }
    });
    // A verifying schedule: its service verifies the module (a scratch restore), and the outcome
    // is in the status. A retention is refused on it.
    let (code, _, err) = agentctl(
        &node,
        &[
            "backup",
            "schedule",
            "set",
            "check",
            "--calendar",
            "weekly",
            "--modules",
            &id,
            "--repo",
            "local",
            "--verify",
            "--keep-last",
            "1",
        ],
    );
    assert_ne!(code, 0, "{err}");
    let (code, _, err) = agentctl(
        &node,
        &[
            "backup",
            "schedule",
            "set",
            "check",
            "--calendar",
            "weekly",
            "--modules",
            &id,
            "--repo",
            "local",
            "--verify",
        ],
    );
    assert_eq!(code, 0, "schedule set --verify: {err}");
    let (_, list, _) = agentctl(&node, &["backup", "schedule", "list"]);
    assert!(list.contains("check\tverify\tweekly"), "{list}");
    node.wait_output(
        &["systemctl", "is-active", "agent-backup-check.timer"],
        "active",
        Duration::from_secs(60),
    );
    assert_eq!(status_field(&node, &id, "verify_state"), "");
    let started = node.exec(&["systemctl", "start", "agent-backup-check.service"]);
    assert!(
        started.status.success(),
        "the verifying schedule's service failed; its journal:\n{}\nthe status: {:?}",
        node.journal("agent-backup-check.service"),
        status_field(&node, &id, "verify_error")
    );
    assert_eq!(status_field(&node, &id, "verify_state"), "ok");
    assert!(!status_field(&node, &id, "verify_ended").is_empty());
    let (code, _, err) = agentctl(&node, &["backup", "schedule", "rm", "check"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = agentctl(&node, &["backup", "schedule", "rm", "often"]);
    assert_eq!(code, 0, "{err}");
    agent_tests::poll(Duration::from_secs(60), Duration::from_millis(200), || {
        if node.fails(&["test", "-e", "/etc/systemd/system/agent-backup-often.timer"]) {
            Ok(())
        } else {
            Err("the removed schedule's timer is still there".to_string())
        }
    });

    // Wrong credentials: a clear failure, recorded.
    let out = node.exec_with_input(
        &[
            "agentctl",
            "backup",
            "repo",
            "add",
            "rest2",
            "rest:http://127.0.0.1:8000/other",
            "--credentials-file",
            "-",
        ],
        b"RESTIC_REST_USERNAME=bk\nRESTIC_REST_PASSWORD=wrong\n",
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("restic") && !err.contains("wrong"), "{err}");
}

/// The page hello serves on `port` inside the node (None: nothing answers).
fn page(node: &Node, port: u16) -> Option<String> {
    let url = format!("http://127.0.0.1:{port}/");
    let out = node.exec(&["curl", "-sS", "--fail", "--max-time", "5", &url]);
    out.status.success().then(|| text(&out.stdout))
}

#[test]
fn hello_is_restored_in_place_under_a_new_id_beside_the_original_and_not_without_its_image() {
    let node = Node::up("rs", &[]);
    let id = install_hello(&node);
    let module = format!("module/{id}");
    assert_eq!(
        agentctl(&node, &["run", &module, "configure", "page one"]).0,
        0
    );
    let (code, _, err) = agentctl(&node, &["backup", "repo", "add", "local", "/srv/backup"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = agentctl(&node, &["backup", "run", &id]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        agentctl(&node, &["run", &module, "configure", "page two"]).0,
        0
    );
    assert_eq!(page(&node, 8080).as_deref(), Some("<h1>page two</h1>"));

    // Under a new id, on another port, while the original runs: both served, each its own page.
    let (code, out, err) = agentctl(
        &node,
        &[
            "backup",
            "restore",
            &id,
            "--as",
            "copy1",
            "--env",
            "PORT=8081",
        ],
    );
    assert_eq!(code, 0, "restore --as: {err}");
    assert_eq!(out, "copy1");
    assert_eq!(page(&node, 8081).as_deref(), Some("<h1>page one</h1>"));
    assert_eq!(page(&node, 8080).as_deref(), Some("<h1>page two</h1>"));
    assert_eq!(
        node.ok(&admin_cli(&["HGET", "module/copy1/module.env", "PORT"])),
        "8081"
    );
    // What the restore staged is gone; nothing of it was left to the module's user.
    assert!(node.fails(&["test", "-e", "/home/.agent-backup/copy1/restore"]));
    assert!(node.fails(&["test", "-e", "/home/.agent-backup/copy1/restore.tmp"]));
    // An id that is taken is refused with nothing written.
    let (code, _, err) = agentctl(&node, &["backup", "restore", &id, "--as", "copy1"]);
    assert_ne!(code, 0);
    assert!(err.contains("copy1 is taken"), "{err}");

    // In place: the original removed, then restored from its snapshot — with the node-agent
    // killed (SIGKILL) while it fetches the snapshot and again while the module puts its data
    // back: the engine runs each step again, and the restore ends with one copy serving.
    assert_eq!(agentctl(&node, &["module", "remove", &id]).0, 0);
    assert_eq!(page(&node, 8080), None);
    node.pause_step("restore.prepare");
    node.pause_step("restore");
    let (code, out, err) = std::thread::scope(|s| {
        let restoring = s.spawn(|| agentctl(&node, &["backup", "restore", &id]));
        node.kill_agent_in("restore.prepare");
        node.kill_agent_in("restore");
        restoring.join().unwrap()
    });
    assert_eq!(code, 0, "restore: {err}\n{}", node.journal("node-agent"));
    assert_eq!(out, id);
    assert_eq!(page(&node, 8080).as_deref(), Some("<h1>page one</h1>"));
    let running = node.ok(&[
        "sh",
        "-c",
        &format!("cd / && runuser -u {id} -- env XDG_RUNTIME_DIR=/run/user/$(id -u {id}) podman ps --quiet"),
    ]);
    assert_eq!(
        running.lines().count(),
        1,
        "one container of {id}: {running}"
    );
    // The data alone, into the installed module, from a snapshot named by its id.
    assert_eq!(
        agentctl(&node, &["run", &module, "configure", "page three"]).0,
        0
    );
    let (_, snaps, _) = agentctl(&node, &["backup", "snapshots", &id]);
    let first = snaps
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let (code, _, err) = agentctl(
        &node,
        &["backup", "restore", &first, "--as", &id, "--data-only"],
    );
    assert_eq!(code, 0, "restore --data-only: {err}");
    // Its module identity, fetched with the dump, is not left staged (no module.init takes it).
    assert!(node.fails(&["test", "-e", &format!("/home/.agent-backup/{id}/identity")]));
    assert_eq!(page(&node, 8080).as_deref(), Some("<h1>page one</h1>"));

    // pair: its client's log backed up while the client writes, verified in a scratch copy whose
    // pod answers again, and restored under a new id with the lines it had.
    let (code, pair, err) = agentctl(
        &node,
        &[
            "module",
            "add",
            "--env",
            "PORT=8090",
            "localhost/pair:latest",
        ],
    );
    assert_eq!(code, 0, "pair: {err}");
    let pair = pair.lines().next().unwrap().to_string();
    let log = format!("/home/{pair}/pair/client/log");
    agent_tests::poll(Duration::from_secs(30), Duration::from_millis(500), || {
        let n = node.ok(&["sh", "-c", &format!("grep -c ' ok ' {log} || true")]);
        if n.parse::<u32>().unwrap_or(0) >= 2 {
            Ok(())
        } else {
            Err(format!("{log}: {n} answers"))
        }
    });
    let (code, _, err) = agentctl(&node, &["backup", "run", &pair]);
    assert_eq!(code, 0, "backup of pair: {err}");
    let (code, out, err) = agentctl(&node, &["backup", "verify", &pair]);
    assert_eq!(code, 0, "verify of pair: {out}\n{err}");
    let (code, _, err) = agentctl(
        &node,
        &[
            "backup",
            "restore",
            &pair,
            "--as",
            "pairtwo",
            "--env",
            "PORT=8091",
        ],
    );
    assert_eq!(code, 0, "restore of pair: {err}");
    let restored = node.ok(&["head", "-n", "1", "/home/pairtwo/pair/client/log"]);
    assert_eq!(
        restored,
        node.ok(&["head", "-n", "1", &log]),
        "the restored log starts as the backed-up one"
    );
    assert_eq!(agentctl(&node, &["module", "remove", "pairtwo"]).0, 0);
    assert_eq!(agentctl(&node, &["module", "remove", &pair]).0, 0);

    // A backup is a deployment to a file: export, then import beside the original.
    let before = node.ok(&admin_cli(&[
        "HGETALL",
        &format!("cluster/backup/status/{id}"),
    ]));
    let (code, _, err) = agentctl(&node, &["module", "export", &id, "/var/tmp/hello.export"]);
    assert_eq!(code, 0, "export: {err}");
    // An export is not the module's backup: its status is as it was.
    assert_eq!(
        node.ok(&admin_cli(&[
            "HGETALL",
            &format!("cluster/backup/status/{id}")
        ])),
        before
    );
    let (code, _, err) = agentctl(&node, &["backup", "repo", "add", "export-x", "/srv/x"]);
    assert_ne!(code, 0);
    assert!(err.contains("agentctl's own"), "{err}");
    assert_eq!(
        node.ok(&["stat", "-c", "%a", "/var/tmp/hello.export"]),
        "600"
    );
    let (code, out, err) = agentctl(
        &node,
        &[
            "module",
            "import",
            "/var/tmp/hello.export",
            "--as",
            "copy3",
            "--env",
            "PORT=8083",
        ],
    );
    assert_eq!((code, out.as_str()), (0, "copy3"), "import: {err}");
    assert_eq!(page(&node, 8083).as_deref(), Some("<h1>page one</h1>"));
    node.ok(&["sh", "-c", "echo not an archive > /var/tmp/bad.export"]);
    let (code, _, err) = agentctl(
        &node,
        &["module", "import", "/var/tmp/bad.export", "--as", "copy4"],
    );
    assert_eq!(code, 65, "{err}");
    assert!(err.contains("not an archive"), "{err}");
    assert!(node.fails(&["id", "copy4"]));
    // The scratch repositories of export and import are gone.
    assert_eq!(
        agentctl(&node, &["backup", "repo", "list"]).1,
        "local\t/srv/backup"
    );
    let left = node.ok(&["sh", "-c", "ls -d /var/tmp/agent-* 2>/dev/null || true"]);
    assert_eq!(left, "", "scratch directories left");

    // Verified by restoring it: a scratch copy (another port, no route) checks its page and goes.
    let (code, _, err) = agentctl(&node, &["backup", "verify", &id]);
    assert_eq!(code, 0, "verify: {err}");
    assert!(
        !err.contains("no backup-verify steps"),
        "hello's ran: {err}"
    );
    assert_eq!(status_field(&node, &id, "verify_state"), "ok");
    let users = node.ok(&["sh", "-c", "getent passwd | cut -d: -f1"]);
    assert!(!users.lines().any(|u| u.starts_with("verify")), "{users}");
    let agents = node.ok(&admin_cli(&["HKEYS", "cluster/agents"]));
    assert!(!agents.lines().any(|a| a.starts_with("verify")), "{agents}");
    let keys = node.ok(&admin_cli(&["--scan", "--pattern", "module/verify*"]));
    assert_eq!(keys, "", "the scratch module's keys are left");
    let routes = node.ok(&admin_cli(&["--scan", "--pattern", "module/*/routes"]));
    assert!(!routes.contains("verify"), "{routes}");

    // The snapshot's image gone from the node (and no registry to pull it from): a clear error
    // naming it, before anything is made.
    node.ok(&["podman", "rmi", "--force", "localhost/hello:latest"]);
    let (code, _, err) = agentctl(&node, &["backup", "restore", &id, "--as", "copy2"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("cannot get the image localhost/hello:latest"),
        "{err}"
    );
    assert!(err.contains("nothing of module copy2 was made"), "{err}");
    assert!(node.fails(&["id", "copy2"]));
    assert_eq!(
        node.ok(&admin_cli(&["EXISTS", "module/copy2/module.env"])),
        "0"
    );
    assert_eq!(
        node.ok(&admin_cli(&["HEXISTS", "cluster/agents", "copy2"])),
        "0"
    );

    // A damaged repository (a pack file cut short): verify fails with a clear message, and the
    // status says so.
    node.ok(&[
        "sh",
        "-c",
        "f=$(find /srv/backup/data -type f | head -n 1) && truncate -s 100 \"$f\"",
    ]);
    let (code, _, err) = agentctl(&node, &["backup", "verify", &id]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("the repository is damaged"), "{err}");
    assert_eq!(status_field(&node, &id, "verify_state"), "failed");
    let (code, status, _) = agentctl(&node, &["backup", "status", &id]);
    assert_eq!(code, 1, "{status}");
    assert!(status.contains("damaged"), "{status}");

    // A slot missed while the node is off runs once when it is back (the timer is Persistent):
    // a daily slot 40 s ahead, the node's power cut before it and booted after it.
    let (code, _, err) = agentctl(&node, &["backup", "repo", "add", "boot", "/srv/boot"]);
    assert_eq!(code, 0, "{err}");
    let slot: u64 = node.ok(&["date", "+%s"]).parse::<u64>().unwrap() + 40;
    let at = node.ok(&["date", "-u", "-d", &format!("@{slot}"), "+%H:%M:%S"]);
    let calendar = format!("*-*-* {at} UTC");
    let (code, _, err) = agentctl(
        &node,
        &[
            "backup",
            "schedule",
            "set",
            "missed",
            "--calendar",
            &calendar,
            "--modules",
            &id,
            "--repo",
            "boot",
        ],
    );
    assert_eq!(code, 0, "schedule set: {err}");
    node.wait_output(
        &["systemctl", "is-active", "agent-backup-missed.timer"],
        "active",
        Duration::from_secs(30),
    );
    let cut: u64 = node.ok(&["date", "+%s"]).parse().unwrap();
    assert!(
        cut + 5 < slot,
        "the timer came up too late for the test ({cut}, slot {slot})"
    );
    node.kill();
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    while now() < slot + 3 {
        std::thread::sleep(Duration::from_millis(500));
    }
    node.boot();
    agent_tests::poll(Duration::from_secs(90), Duration::from_millis(500), || {
        let repo = status_field(&node, &id, "success_repository");
        if repo == "boot" {
            Ok(())
        } else {
            Err(format!("no backup to boot yet (last success to {repo:?})"))
        }
    });
    assert_eq!(
        agentctl(&node, &["backup", "snapshots", &id, "--repo", "boot"])
            .1
            .lines()
            .count(),
        1,
        "one backup for the missed slot"
    );
}
