//! The workspace's owner rules, kept by reading its non-test sources:
//! * only core-events spells the wire: outside it no source spells a key, a channel, a status, a
//!   step variable, a module.env field, an ACL user name or the run output's framing as a string
//!   literal;
//! * only agent-redis opens Redis connections (so Sentinel discovery has one place to go).
//!
//! The forbidden spellings are derived from core-events' own builders and constants, so a name
//! added here is guarded at once. Test code is not checked (a test may well spell the wire to
//! check it): a file is read up to its first `#[cfg(test)]`, and the `tests/` crate is skipped.
//! Comments are skipped too. A literal that merely *looks* like the wire (systemd's own `running`
//! state) is listed in [`ALLOWED`] with the reason.

use std::path::{Path, PathBuf};

use core_events::{keys, output, step_env, AgentName, EventName, JournalStatus, Prefix, RunId};
use core_events::{AgentKind, RunStatus};

/// `(file, literal, why)`: a literal that is not the wire although it is spelled like it.
const ALLOWED: &[(&str, &str, &str)] = &[
    (
        "module-sdk/src/lint.rs",
        "\"warning\"",
        "the severity of a lint finding in its report, not a journal status",
    ),
    (
        "node-agent/src/tools/agent.rs",
        "\"running\"",
        "systemd's ActiveState of the module's agent unit, not a run status",
    ),
    (
        "node-agent/src/tools/agent.rs",
        "\"failed\"",
        "systemd's ActiveState of a module's unit (module.stop), not a run status",
    ),
    (
        "systemd-client/src/job.rs",
        "\"done\"",
        "systemd's JobRemoved result, not a run status",
    ),
    (
        "systemd-client/src/job.rs",
        "\"failed\"",
        "systemd's JobRemoved result, not a run status",
    ),
    (
        "systemd-client/src/job.rs",
        "\"skipped\"",
        "systemd's JobRemoved result, not a journal status",
    ),
    (
        "agent-engine/src/store.rs",
        "\"refused\"",
        "a reply word of the begin-run script, which store.rs owns with the script",
    ),
    (
        "agentctl/src/explain.rs",
        "\"rollback\"",
        "a key of `agentctl explain --json`'s own output",
    ),
    (
        "agentctl/src/explain.rs",
        "\"skipped\"",
        "a plan verdict shown by `agentctl explain`, not a journal status",
    ),
    (
        "agentctl/src/output.rs",
        "\"queued\"",
        "a label of `agentctl show`'s record listing (the record's queued time)",
    ),
    (
        "agentctl/src/output.rs",
        "\"rollback\"",
        "a label of `agentctl show`'s record listing",
    ),
];

/// Every spelling that may appear only in core-events, as it would start inside a string literal
/// (each begins with `"`; an open end means "a literal starting like this").
fn forbidden() -> Vec<String> {
    let agent = AgentName::new("x").unwrap();
    let run = RunId::new("1-0").unwrap();
    let event = EventName::new("e").unwrap();
    let quoted = |s: &str| format!("\"{s}\"");
    let head = |built: String, tail: &str| {
        let h = built
            .strip_suffix(tail)
            .expect("built from the sample")
            .to_string();
        format!("\"{h}")
    };
    let mut f = Vec::new();
    // Step variables and module.env fields the core reads.
    f.extend(step_env::ALL.iter().map(|n| quoted(n)));
    f.push(quoted(core_events::module_env::EVENTS_IMAGE));
    // Statuses.
    f.extend(RunStatus::ALL.iter().map(|s| quoted(s.as_str())));
    for s in [
        JournalStatus::Refused,
        JournalStatus::Warning,
        JournalStatus::Skipped,
        JournalStatus::Interrupted,
        JournalStatus::Rollback,
    ] {
        f.push(quoted(s.as_str()));
    }
    // Key prefixes and channels: what each builder puts before the agent's name.
    for kind in [AgentKind::Node, AgentKind::Module] {
        f.push(head(Prefix::new(kind, agent.clone()).as_str().into(), "x"));
        // As a builder would be written by hand: `format!("module-{id}")`.
        f.push(format!("{}{{", head(keys::acl_user(kind, &agent), "x")));
    }
    f.push(head(keys::module_sequence("x"), "x"));
    f.push(head(keys::cancel_channel(&agent), "x"));
    f.push(head(keys::progress_channel(&agent, &run), "x/1-0"));
    f.push(head(keys::emitted_event_channel(&agent, &event), "x/e"));
    f.push(quoted(keys::ACL_ADMIN_USER));
    // The run output's framing.
    let header = output::step_header("s");
    f.push(format!("\"{}", header.split('s').next().unwrap()));
    f.push(format!("\"{}", &output::note("n")[..4]));
    f.sort();
    f.dedup();
    f
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The Rust source files of every crate but `except` and the tests crate.
fn sources(root: &Path, except: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(root).unwrap().flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let dir = entry.path();
        if name == except || name == "tests" || name == "target" || name.starts_with('.') {
            continue;
        }
        if dir.join("Cargo.toml").is_file() && dir.join("src").is_dir() {
            collect(&dir.join("src"), &mut out);
        }
    }
    out.sort();
    out
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path();
        if p.is_dir() {
            collect(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The non-test code of a file: up to its first `#[cfg(test)]`, comment lines left out.
fn code_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .take_while(|(_, l)| l.trim() != "#[cfg(test)]")
        .filter(|(_, l)| !l.trim_start().starts_with("//"))
        .map(|(n, l)| (n + 1, l))
}

#[test]
fn only_core_events_spells_the_wire() {
    let root = workspace_root();
    let files = sources(&root, "core-events");
    assert!(files.len() > 30, "the scan found too few files: {files:?}");
    let forbidden = forbidden();
    let mut found = Vec::new();
    for file in &files {
        let rel = file
            .strip_prefix(&root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in code_lines(&text) {
            for lit in &forbidden {
                if line.contains(lit.as_str())
                    && !ALLOWED.iter().any(|(f, l, _)| *f == rel && l == lit)
                {
                    found.push(format!("{rel}:{n}: {lit}  in  {}", line.trim()));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "wire names spelled outside core-events (use its builders and constants instead):\n{}",
        found.join("\n")
    );
}

/// Calls that open a Redis connection (redis-rs's ways to connect).
const CONNECTING: &[&str] = &[
    "Client::open(",
    ".get_connection(",
    ".get_connection_with_timeout(",
    ".get_multiplexed_async_connection",
    ".get_multiplexed_tokio_connection",
    "ConnectionManager::new",
    "redis::aio::ConnectionManager::new",
];

#[test]
fn only_agent_redis_opens_redis_connections() {
    let root = workspace_root();
    let mut found = Vec::new();
    for file in sources(&root, "agent-redis") {
        let rel = file
            .strip_prefix(&root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in code_lines(&text) {
            if CONNECTING.iter().any(|c| line.contains(c)) {
                found.push(format!("{rel}:{n}: {}", line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "Redis connections opened outside agent-redis (use agent_redis::Target):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_scan_sees_what_it_guards() {
    // Each forbidden spelling must be one core-events itself uses, or the guard guards nothing.
    let f = forbidden();
    for want in [
        "\"AGENT_RUN_ID\"",
        "\"module/",
        "\"progress/",
        "\"done\"",
        "\"==> ",
        "\"module-{",
    ] {
        assert!(f.iter().any(|s| s == want), "{want} missing from {f:?}");
    }
    // The connection patterns are what agent-redis itself calls.
    let target =
        std::fs::read_to_string(workspace_root().join("agent-redis/src/target.rs")).unwrap();
    for kind in [
        ".get_connection_with_timeout(",
        ".get_multiplexed_async_connection",
        "ConnectionManager::new",
    ] {
        assert!(
            target.contains(kind) && CONNECTING.contains(&kind),
            "{kind}"
        );
    }
    let lines: Vec<_> = code_lines("a\n// \"done\"\nb \"x\"\n#[cfg(test)]\n\"done\"\n").collect();
    assert_eq!(lines, [(1, "a"), (3, "b \"x\"")]);
}
