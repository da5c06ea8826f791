//! `module-sdk lint` on a real Debian 13 node (`tests/node/node.sh`, see tests/tests/node.rs), with
//! the node's Podman 5.4: its Quadlet generator checks the Quadlet files, and images are read from
//! its local storage. The example modules (built in the node by `examples/modules/build.sh`) lint
//! without errors, as source directories and as images; a broken copy of hello made in the node
//! fails with the generator's own error at the file and line, and lint's own findings. Needs
//! root (see docs/NODE-HARNESS.md).

use std::process::Output;

use agent_tests::node::{text, Node};
use serde_json::Value;

const EXAMPLES: &str = "/usr/share/agent/examples/modules";
const GENERATOR: &str = "/usr/libexec/podman/quadlet";

/// A Quadlet file with an unknown key (line 6), `Notify=healthy` without `HealthCmd=` (line 7)
/// and an image the module's images label does not list (line 5).
const BROKEN_CONTAINER: &str = "[Unit]\nDescription=broken\n\n[Container]\n\
                                Image=docker.io/library/nginx:latest\nNoSuchKey=1\nNotify=healthy\n\n\
                                [Install]\nWantedBy=default.target\n";

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

/// `module-sdk lint --format json ARGS` in the node: its exit code and findings.
fn lint_json(node: &Node, args: &[&str]) -> (i32, Vec<Value>) {
    let mut all = vec!["module-sdk", "lint", "--format", "json"];
    all.extend_from_slice(args);
    let out = node.exec(&all);
    let findings: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{all:?}: no JSON array ({e}):\nstdout: {}\nstderr: {}",
            text(&out.stdout),
            text(&out.stderr)
        )
    });
    (code(&out), findings)
}

fn severity<'a>(findings: &'a [Value], want: &str) -> Vec<&'a Value> {
    findings.iter().filter(|f| f["severity"] == want).collect()
}

/// The one finding at `path` whose message contains `words`.
fn find<'a>(findings: &'a [Value], path: &str, words: &str) -> &'a Value {
    let found: Vec<&Value> = findings
        .iter()
        .filter(|f| f["path"] == path && f["message"].as_str().unwrap_or("").contains(words))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "{words:?} at {path} in {}",
        serde_json::to_string_pretty(findings).unwrap()
    );
    found[0]
}

/// A module that lints clean: exit 0, no errors, and the only warning its missing signature
/// (the generator was there, so no "not checked" warning).
fn assert_clean(node: &Node, target: &str, imageroot_shown: &str) {
    let (exit, findings) = lint_json(node, &[target]);
    let shown = serde_json::to_string_pretty(&findings).unwrap();
    assert_eq!(exit, 0, "{target}: {shown}");
    assert!(severity(&findings, "error").is_empty(), "{target}: {shown}");
    let warnings = severity(&findings, "warning");
    assert_eq!(warnings.len(), 1, "{target}: {shown}");
    assert_eq!(warnings[0]["path"], imageroot_shown, "{target}: {shown}");
    assert!(
        warnings[0]["message"]
            .as_str()
            .unwrap_or("")
            .starts_with("not signed"),
        "{target}: {shown}"
    );
}

/// The broken module's findings, wherever its imageroot is shown (`root`): the generator's error
/// at the unknown key's line, and lint's own ones.
fn assert_broken(findings: &[Value], root: &str, source_root: &str) {
    let quadlet = format!("{root}/.config/containers/systemd/broken.container");
    let key = find(
        findings,
        &quadlet,
        "quadlet generator: unsupported key 'NoSuchKey' in group 'Container'",
    );
    assert_eq!(key["severity"], "error");
    assert_eq!(key["line"], 6, "{key}");
    let healthy = find(findings, &quadlet, "Notify=healthy without HealthCmd=");
    assert_eq!(
        (&healthy["severity"], &healthy["line"]),
        (&"error".into(), &7.into())
    );
    let image = find(
        findings,
        &quadlet,
        "Image=docker.io/library/nginx:latest is not in the label org.agent-system.module.images",
    );
    assert_eq!(
        (&image["severity"], &image["line"]),
        (&"error".into(), &5.into())
    );
    let step = format!("{root}/.config/module-events/module.init/20port");
    let skipped = find(
        findings,
        &step,
        "the engine skips this step: not executable",
    );
    assert_eq!(skipped["severity"], "error");
    assert_eq!(
        skipped["fix"],
        format!("chmod +x {source_root}/.config/module-events/module.init/20port")
    );
    assert_eq!(
        severity(findings, "error").len(),
        4,
        "{}",
        serde_json::to_string_pretty(findings).unwrap()
    );
}

#[test]
fn module_sdk_lint_checks_modules_with_the_nodes_podman() {
    let node = Node::up("lint", &[]);
    node.ok(&[&format!("{EXAMPLES}/build.sh")]);
    node.ok(&["test", "-x", GENERATOR]);

    // The examples: as source directories and as an image.
    let hello = format!("{EXAMPLES}/hello");
    assert_clean(&node, &hello, &format!("{hello}/imageroot"));
    let pair = format!("{EXAMPLES}/pair");
    assert_clean(&node, &pair, &format!("{pair}/imageroot"));
    assert_clean(
        &node,
        "localhost/hello:latest",
        "localhost/hello:latest:/imageroot",
    );
    // The container lint copied the imageroot out of is gone again.
    assert_eq!(node.ok(&["podman", "ps", "--all", "--quiet"]), "");

    // A broken copy of hello: a step made non-executable, a Quadlet file the generator refuses.
    node.ok(&["cp", "-a", &hello, "/tmp/broken"]);
    node.ok(&[
        "chmod",
        "-x",
        "/tmp/broken/imageroot/.config/module-events/module.init/20port",
    ]);
    let out = node.exec_with_input(
        &[
            "sh",
            "-c",
            "cat > /tmp/broken/imageroot/.config/containers/systemd/broken.container",
        ],
        BROKEN_CONTAINER.as_bytes(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    // What the generator itself says about it, for the record.
    let generator = node.exec(&[
        "env",
        "QUADLET_UNIT_DIRS=/tmp/broken/imageroot/.config/containers/systemd",
        GENERATOR,
        "-dryrun",
        "-user",
    ]);
    eprintln!(
        "{GENERATOR} -dryrun -user says:\n{}",
        text(&generator.stderr)
    );
    assert!(
        text(&generator.stderr).contains("unsupported key 'NoSuchKey' in group 'Container' in /tmp/broken/imageroot/.config/containers/systemd/broken.container"),
        "{}",
        text(&generator.stderr)
    );

    let (exit, findings) = lint_json(&node, &["/tmp/broken"]);
    assert_eq!(exit, 1);
    assert_broken(&findings, "/tmp/broken/imageroot", "/tmp/broken/imageroot");

    // The text report says the same, one line per finding, with the file and line.
    let out = node.exec(&["module-sdk", "lint", "/tmp/broken"]);
    assert_eq!(code(&out), 1, "{}", text(&out.stderr));
    let report = text(&out.stdout);
    assert!(
        report.contains(
            "error: /tmp/broken/imageroot/.config/containers/systemd/broken.container:6: \
             quadlet generator: unsupported key 'NoSuchKey' in group 'Container'\n  fix: "
        ),
        "{report}"
    );
    assert!(report.ends_with("4 errors, 1 warning, 0 hints"), "{report}");
    // --quiet: the errors and the summary only.
    let out = node.exec(&["module-sdk", "lint", "--quiet", "/tmp/broken"]);
    let quiet = text(&out.stdout);
    assert!(
        quiet.lines().all(|l| l.starts_with("error: ")
            || l.starts_with("  fix: ")
            || l == "4 errors, 1 warning, 0 hints"),
        "{quiet}"
    );

    // The broken module as an image: the same findings, named inside the image; the step's
    // missing x bit survived podman cp.
    node.ok(&[
        "podman",
        "build",
        "--quiet",
        "--tag",
        "localhost/broken:latest",
        "/tmp/broken",
    ]);
    let (exit, findings) = lint_json(&node, &["localhost/broken:latest"]);
    assert_eq!(exit, 1);
    assert_broken(&findings, "localhost/broken:latest:/imageroot", "imageroot");
    assert_eq!(node.ok(&["podman", "ps", "--all", "--quiet"]), "");

    // An image that is no module, and one that is not there.
    let (exit, findings) = lint_json(&node, &["localhost/agent-busybox:latest"]);
    assert_eq!(exit, 1);
    find(
        &findings,
        "localhost/agent-busybox:latest",
        "has no label org.agent-system.module.imageroot: not a module image",
    );
    let out = node.exec(&["module-sdk", "lint", "localhost/nosuch:latest"]);
    assert_eq!(code(&out), 69, "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("is not in podman's local storage"),
        "{}",
        text(&out.stderr)
    );
}
