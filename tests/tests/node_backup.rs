//! Backups of a module on a real node with real restic (tests/node/node.sh; restic and rclone are
//! in the node's rootfs): `agentctl backup repo add` (a local directory, and a REST server —
//! `rclone serve restic` on the node's loopback — with credentials), `agentctl backup run`, the
//! status that stays failed from a failed backup until a later one succeeds (across a node-agent
//! restart and a reboot), an admin's step in the backup's rollback, `backup-failed` reaching a
//! subscriber, and the privacy of the dump directory. Needs root (docs/NODE-HARNESS.md).

use std::path::Path;
use std::time::Duration;

use agent_tests::node::{admin_cli, Node};

const BUILD: &str = "/usr/share/agent/examples/modules/build.sh";

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim().to_string()
}

/// `agentctl ARGS` in the node: (exit code, stdout, stderr).
fn agentctl(node: &Node, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["agentctl"];
    all.extend_from_slice(args);
    let out = node.exec(&all);
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    )
}

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

#[test]
fn hello_is_backed_up_reports_a_failure_that_stays_until_a_success_and_uses_a_rest_server() {
    let events = tempfile::tempdir().unwrap();
    alert_step(events.path());
    let node = Node::up("bk", &[events.path().to_path_buf()]);
    node.ok(&[BUILD]);
    let (code, id, err) = agentctl(
        &node,
        &[
            "module",
            "add",
            "--env",
            "PORT=8080",
            "localhost/hello:latest",
        ],
    );
    assert_eq!(code, 0, "module add: {err}");
    let id = id.lines().next().unwrap().to_string();
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
    // The dump is outside the module's home, in a directory the module cannot replace, and
    // sealed (root's) once dumped.
    let dir = format!("/var/lib/agent/backup/{id}");
    assert_eq!(node.ok(&["stat", "-c", "%U %a", &dir]), "root 711");
    assert_eq!(
        node.ok(&["stat", "-c", "%U %a", &format!("{dir}/dump")]),
        "root 700"
    );
    assert_eq!(
        node.ok(&["cat", &format!("{dir}/dump/www/index.html")]),
        "<h1>backed up page</h1>"
    );
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
