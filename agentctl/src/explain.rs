//! `agentctl explain`: the plan of an event as the agent would build it, without running anything.
//!
//! The plan comes from `agent_engine::plan::plan_event`, the very function the agents use. The
//! steps table is built from a list of [`Column`]s, each computing its cell from a [`Row`]: a new
//! fact about a step (such as who signed it) is one more column, in text and JSON alike.
//!
//! The PROVENANCE column says where a step's file comes from as far as signatures go: an events
//! directory may carry a signed `MANIFEST` (see docs/SIGNING.md), checked against the
//! certificates of `--trust-dir`.

use std::path::{Path, PathBuf};

use agent_engine::config::defaults;
use agent_engine::default_events_dirs;
use agent_engine::plan::{plan_event, EventPlan, PlanEntry, PlanVerdict};
use anyhow::Result;
use core_events::{exit, AgentKind, EventName};
use module_signing::{FileCheck, SignatureStatus, SignedTree, TrustStore};

use crate::agent::AgentRef;
use crate::fail::{fail, invalid};

#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// The agent: node/NAME, module/NAME or NAME. It only chooses the default event directories:
    /// node — /usr/share/agent/node-events, /usr/local/share/agent/node-events, /var/local/node-events;
    /// module — ~NAME/.config/module-events,
    /// ~NAME/module-events. A bare NAME has the kind the agent name registry (Redis) gives it; when
    /// Redis does not answer within 2 s or has no such name, it is a module when a Unix user NAME
    /// exists, else a node when it is this host's short name.
    agent: String,

    /// The event to explain.
    event: String,

    /// Event directory to search instead of the defaults; repeat in search order (later wins), as
    /// given to the agent.
    #[arg(long = "events-dir", value_name = "DIR")]
    events_dirs: Vec<PathBuf>,

    /// Print the plan as one JSON object.
    #[arg(long)]
    json: bool,

    /// Directory of trusted OpenPGP certificates (*.asc, *.pgp) for checking an events
    /// directory's signed MANIFEST (the PROVENANCE column). Default: the node's, trust_dir of
    /// /etc/agent/signing.conf (/etc/agent/trusted-keys).
    #[arg(long, value_name = "DIR")]
    trust_dir: Option<PathBuf>,
}

/// The node's signature settings as explain reports them: what its module.init applies to
/// module images, or why they cannot be read (then every install is refused).
fn node_signing_text(node: &Result<module_signing::NodeSigning, String>) -> String {
    match node {
        Ok(n) => {
            let store = TrustStore::load(&n.trust_dir);
            format!(
                "\nsignature policy of this node for module images: {} ({}); trusted keys: {} \
                 certificate(s) in {}\n",
                n.policy,
                n.origin(),
                store.fingerprints().len(),
                n.trust_dir.display()
            )
        }
        Err(e) => {
            format!("\nsignature policy of this node: UNREADABLE, every install is refused: {e}\n")
        }
    }
}

fn node_signing_json(node: &Result<module_signing::NodeSigning, String>) -> serde_json::Value {
    match node {
        Ok(n) => serde_json::json!({
            "policy": n.policy.to_string(),
            "trust_dir": n.trust_dir,
            "source": n.source,
            "trusted_keys": TrustStore::load(&n.trust_dir).fingerprints(),
        }),
        Err(e) => serde_json::json!({ "error": e }),
    }
}

pub fn main(args: ExplainArgs, redis: &crate::conn::RedisArgs) -> Result<i32> {
    let mut agent = AgentRef::parse(&args.agent)?;
    let event = EventName::new(args.event.as_str()).map_err(|e| invalid(e.to_string()))?;
    if agent.kind.is_none() && args.events_dirs.is_empty() {
        agent.kind = registered_kind(redis, &agent);
    }
    let (agent, dirs) = if args.events_dirs.is_empty() {
        default_dirs(&agent)?
    } else {
        (agent, args.events_dirs.clone())
    };
    let plan = plan_event(&dirs, &event);
    let rollback = rollback_plan(&dirs, &event);
    let dir_states: Vec<(PathBuf, DirState)> = dirs
        .iter()
        .map(|d| (d.clone(), dir_state(d, &event)))
        .collect();
    let node_signing = module_signing::NodeSigning::load(Path::new(module_signing::NODE_CONFIG))
        .map_err(|e| e.to_string());
    let trust_dir = args
        .trust_dir
        .clone()
        .unwrap_or_else(|| match &node_signing {
            Ok(n) => n.trust_dir.clone(),
            Err(_) => PathBuf::from(module_signing::DEFAULT_TRUST_DIR),
        });
    let signing = Signing::load(&dirs, &trust_dir);
    let label = agent.to_string();
    if args.json {
        let mut json = plan_json(&label, &event, &dir_states, &plan, &signing);
        json["rollback"] = rollback.as_ref().map_or(serde_json::Value::Null, |(e, p)| {
            rollback_json(e, p, &signing)
        });
        json["node_signature_policy"] = node_signing_json(&node_signing);
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        print!(
            "{}",
            plan_text(&label, &event, &dir_states, &plan, &signing)
        );
        if let Some((rb_event, rb_plan)) = &rollback {
            print!("{}", rollback_text(&event, rb_event, rb_plan, &signing));
        }
        print!("{}", node_signing_text(&node_signing));
    }
    if !plan.defined {
        eprintln!(
            "agentctl: no event directory defines {event} (no {event}/ in any directory above)"
        );
        return Ok(exit::NO_SUCH_EVENT);
    }
    Ok(0)
}

/// The plan of `<event>.rollback`, when it has steps that run: the engine runs them when a run of
/// `event` fails or is cancelled.
fn rollback_plan(dirs: &[PathBuf], event: &EventName) -> Option<(EventName, EventPlan)> {
    let rb_event = event.rollback()?;
    let plan = plan_event(dirs, &rb_event);
    let runs = plan.steps().next().is_some();
    runs.then_some((rb_event, plan))
}

/// The rollback part of the text output: its steps and its timeout.
fn rollback_text(
    event: &EventName,
    rb_event: &EventName,
    plan: &EventPlan,
    signing: &Signing,
) -> String {
    let mut out = format!(
        "\nrollback: when a run of {event} fails (a step fails, cannot start or times out) or is \
         cancelled, these steps of {rb_event} run, all of them, before its end is recorded:\n"
    );
    out.push_str(&steps_table(plan, signing));
    match plan.settings.timeout {
        Some(t) => out.push_str(&format!(
            "  rollback timeout: {}s (.timeout)\n",
            t.as_secs()
        )),
        None => out.push_str(&format!(
            "  rollback timeout: the agent's --timeout (default {}s)\n",
            defaults::TIMEOUT_SECS
        )),
    }
    for p in &plan.settings.problems {
        out.push_str(&format!("  problem: {p}\n"));
    }
    out
}

fn rollback_json(rb_event: &EventName, plan: &EventPlan, signing: &Signing) -> serde_json::Value {
    let provenance = signing.for_plan(plan);
    let steps: Vec<_> = rows(plan, &provenance).iter().map(row_json).collect();
    serde_json::json!({
        "event": rb_event,
        "steps": steps,
        "settings": {
            "timeout_secs": plan.settings.timeout.map(|t| t.as_secs()),
            "problems": plan.settings.problems,
        },
    })
}

/// The kind of a bare NAME in the agent name registry, when Redis answers within a moment; `None`
/// (the local rule of [`default_dirs`] decides) when it does not, or has no such name: explain
/// reads directories on this host and must work without Redis.
fn registered_kind(redis: &crate::conn::RedisArgs, agent: &AgentRef) -> Option<AgentKind> {
    let target = redis.load().ok()?;
    crate::runtime().ok()?.block_on(async {
        let lookup = target.registered_kind(&agent.name);
        tokio::time::timeout(std::time::Duration::from_secs(2), lookup)
            .await
            .ok()
            .flatten()
    })
}

/// The event directories the agent uses by default, and the agent with its kind decided.
fn default_dirs(agent: &AgentRef) -> Result<(AgentRef, Vec<PathBuf>)> {
    let name = agent.name.as_str();
    let kind = match agent.kind {
        Some(k) => k,
        None if unix_user_home(name).is_some() => AgentKind::Module,
        None if short_hostname().as_deref() == Some(name) => AgentKind::Node,
        None => {
            return Err(fail(
                1,
                format!(
                    "cannot tell whether {name} is a node or a module: there is no Unix user {name} \
                     and this host is not {name}; write node/{name} or module/{name}, or pass --events-dir"
                ),
            ))
        }
    };
    let decided = AgentRef {
        kind: Some(kind),
        name: agent.name.clone(),
    };
    match kind {
        // The node agent's defaults do not depend on who runs it: take them from the engine.
        AgentKind::Node => Ok((
            decided,
            default_events_dirs(AgentKind::Node, Path::new("/")),
        )),
        AgentKind::Module => {
            let home = unix_user_home(name).ok_or_else(|| {
                fail(
                    1,
                    format!(
                        "there is no Unix user {name} on this host, so module {name}'s event \
                         directories are unknown; pass --events-dir"
                    ),
                )
            })?;
            Ok((decided, default_events_dirs(AgentKind::Module, &home)))
        }
    }
}

fn unix_user_home(name: &str) -> Option<PathBuf> {
    nix::unistd::User::from_name(name)
        .ok()
        .flatten()
        .map(|u| u.dir)
}

fn short_hostname() -> Option<String> {
    let host = nix::unistd::gethostname().ok()?;
    let host = host.to_string_lossy();
    host.split('.').next().map(str::to_string)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DirState {
    Missing,
    NoEventDir,
    DefinesEvent,
}

impl DirState {
    fn as_str(self) -> &'static str {
        match self {
            DirState::Missing => "missing",
            DirState::NoEventDir => "no-event-dir",
            DirState::DefinesEvent => "defines-event",
        }
    }
}

fn dir_state(dir: &Path, event: &EventName) -> DirState {
    if !dir.is_dir() {
        DirState::Missing
    } else if dir.join(event.as_str()).is_dir() {
        DirState::DefinesEvent
    } else {
        DirState::NoEventDir
    }
}

/// The signature state of each events directory (`None`: no MANIFEST, no MANIFEST.sig).
pub struct Signing {
    trees: Vec<(PathBuf, Option<Result<SignedTree, String>>)>,
}

impl Signing {
    /// Reads the MANIFEST and MANIFEST.sig of each directory that has one, and checks the
    /// signature against the certificates of `trust_dir` (loaded only if needed).
    pub fn load(dirs: &[PathBuf], trust_dir: &Path) -> Signing {
        let mut trust: Option<TrustStore> = None;
        let trees = dirs
            .iter()
            .map(|dir| {
                let has = [
                    module_signing::MANIFEST_FILE,
                    module_signing::SIGNATURE_FILE,
                ]
                .iter()
                .any(|f| std::fs::symlink_metadata(dir.join(f)).is_ok());
                let tree = has.then(|| {
                    let trust = trust.get_or_insert_with(|| TrustStore::load(trust_dir));
                    SignedTree::load(dir, trust).map_err(|e| e.to_string())
                });
                (dir.clone(), tree)
            })
            .collect();
        Signing { trees }
    }

    fn tree(&self, dir: &Path) -> Option<&Result<SignedTree, String>> {
        self.trees
            .iter()
            .find(|(d, _)| d == dir)
            .and_then(|(_, t)| t.as_ref())
    }

    /// The directory's signature state in words, for the directories list.
    fn dir_note(&self, dir: &Path) -> Option<String> {
        let tree = match self.tree(dir)? {
            Ok(t) => t,
            Err(e) => return Some(format!("MANIFEST unreadable: {e}")),
        };
        Some(match &tree.signature {
            SignatureStatus::Good { signer } if tree.manifest_problem.is_some() => {
                format!("signed by {signer}, but the MANIFEST is invalid")
            }
            SignatureStatus::Good { signer } => format!("signed by {signer}"),
            SignatureStatus::Unsigned { reason } => format!("unsigned: {reason}"),
            SignatureStatus::Untrusted { issuers } => format!(
                "signed by an untrusted key ({}), not in the trust directory",
                issuers.join(", ")
            ),
            SignatureStatus::Bad { reason } => format!("BAD SIGNATURE: {reason}"),
            SignatureStatus::NotChecked => "signature not checked".into(),
        })
    }

    /// The PROVENANCE of one entry. `first` is the first (core) directory of the search list:
    /// an entry from any later directory that no good signature covers is a local override.
    fn provenance(&self, entry: &PlanEntry, first: Option<&Path>) -> String {
        let from_core = first == Some(entry.dir.as_path());
        let uncovered = || {
            if from_core {
                "unsigned".to_string()
            } else {
                "local override".to_string()
            }
        };
        let tree = match self.tree(&entry.dir) {
            None => return uncovered(),
            Some(Err(_)) => return "MANIFEST unreadable".into(),
            Some(Ok(t)) => t,
        };
        let signer = match &tree.signature {
            SignatureStatus::Good { signer } => signer,
            SignatureStatus::Unsigned { .. } | SignatureStatus::NotChecked => return uncovered(),
            SignatureStatus::Untrusted { issuers } => {
                let id = issuers.first().map(|i| short(i)).unwrap_or_default();
                return format!("UNTRUSTED signer {id}");
            }
            SignatureStatus::Bad { .. } => return "BAD SIGNATURE".into(),
        };
        let Some(manifest) = &tree.manifest else {
            return "BAD MANIFEST (signed but invalid)".into();
        };
        let Ok(rel) = entry.path.strip_prefix(&entry.dir) else {
            return uncovered();
        };
        match manifest.check_file(&entry.dir, rel) {
            FileCheck::Matches => format!("signed {}", signer.short()),
            FileCheck::Differs(_) => "MODIFIED (signed content changed)".into(),
            FileCheck::NotListed if from_core => "unsigned (not in signed MANIFEST)".into(),
            FileCheck::NotListed => "local override".into(),
        }
    }

    /// One provenance per plan entry, in plan order.
    fn for_plan(&self, plan: &EventPlan) -> Vec<String> {
        let first = self.trees.first().map(|(d, _)| d.as_path());
        plan.entries
            .iter()
            .map(|e| self.provenance(e, first))
            .collect()
    }
}

/// The last 16 hex digits of a fingerprint or key ID.
fn short(id: &str) -> &str {
    &id[id.len().saturating_sub(16)..]
}

/// One row of the steps table: an entry of the plan, its position in the run (`None` when it
/// does not run) and its provenance.
pub struct Row<'a> {
    pub position: Option<usize>,
    pub entry: &'a PlanEntry,
    pub provenance: &'a str,
}

/// A column of the steps table. The JSON output uses `key`, the text output `header`.
struct Column {
    header: &'static str,
    key: &'static str,
    cell: fn(&Row) -> String,
}

const COLUMNS: &[Column] = &[
    Column {
        header: "#",
        key: "position",
        cell: |r| r.position.map_or("-".into(), |p| p.to_string()),
    },
    Column {
        header: "STEP",
        key: "name",
        cell: |r| r.entry.name.clone(),
    },
    Column {
        header: "VERDICT",
        key: "verdict",
        cell: |r| verdict_text(&r.entry.verdict),
    },
    Column {
        header: "FILE",
        key: "path",
        cell: |r| r.entry.path.display().to_string(),
    },
    Column {
        header: "PROVENANCE",
        key: "provenance",
        cell: |r| r.provenance.to_string(),
    },
    Column {
        header: "OVERRIDES",
        key: "overrides",
        cell: overrides_text,
    },
];

fn verdict_text(v: &PlanVerdict) -> String {
    match v {
        PlanVerdict::Run => "run".into(),
        PlanVerdict::Masked => "masked (symlink to /dev/null)".into(),
        PlanVerdict::Skipped(why) => format!("skipped: {why}"),
    }
}

fn overrides_text(r: &Row) -> String {
    if r.entry.overrides.is_empty() {
        return String::new();
    }
    let paths: Vec<String> = r
        .entry
        .overrides
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    format!("overrides {}", paths.join(", "))
}

fn rows<'a>(plan: &'a EventPlan, provenance: &'a [String]) -> Vec<Row<'a>> {
    let mut next = 0;
    plan.entries
        .iter()
        .zip(provenance)
        .map(|(entry, provenance)| {
            let position = (entry.verdict == PlanVerdict::Run).then(|| {
                next += 1;
                next
            });
            Row {
                position,
                entry,
                provenance,
            }
        })
        .collect()
}

/// Lays out cells in columns two spaces apart; trailing blanks are trimmed.
pub(crate) fn table(header: &[&str], body: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in body {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut s = String::from("  ");
        for (cell, w) in cells.zip(&widths) {
            s.push_str(&format!("{cell:w$}  "));
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(&mut header.iter().copied());
    for row in body {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

fn plan_text(
    agent: &str,
    event: &EventName,
    dirs: &[(PathBuf, DirState)],
    plan: &EventPlan,
    signing: &Signing,
) -> String {
    let mut out =
        format!("event {event} of {agent}\n\ndirectories, in search order (later ones win):\n");
    for (i, (dir, state)) in dirs.iter().enumerate() {
        let note = match state {
            DirState::Missing => "  (missing)".to_string(),
            DirState::NoEventDir => format!("  (no {event}/ here)"),
            DirState::DefinesEvent => String::new(),
        };
        let sig = signing
            .dir_note(dir)
            .map(|n| format!("  [{n}]"))
            .unwrap_or_default();
        out.push_str(&format!("  {}  {}{note}{sig}\n", i + 1, dir.display()));
    }
    if !plan.defined {
        out.push_str(&format!(
            "\nno directory defines {event}: a run of it fails with exit 69\n"
        ));
        return out;
    }
    if plan.entries.is_empty() {
        out.push_str("\nno steps: a run does nothing and ends done\n");
    } else {
        out.push_str("\nsteps, in run order:\n");
        out.push_str(&steps_table(plan, signing));
    }
    let s = &plan.settings;
    out.push_str("\nsettings:\n");
    match s.timeout {
        Some(t) => out.push_str(&format!("  timeout: {}s (.timeout)\n", t.as_secs())),
        None => out.push_str(&format!(
            "  timeout: the agent's --timeout (default {}s)\n",
            defaults::TIMEOUT_SECS
        )),
    }
    match s.retries {
        Some(r) => out.push_str(&format!("  retries: {r} (.retries)\n")),
        None => out.push_str(&format!(
            "  retries: the agent's --max-attempts (default {} starts)\n",
            defaults::MAX_ATTEMPTS
        )),
    }
    if !s.on.is_empty() {
        let on: Vec<&str> = s.on.iter().map(|e| e.as_str()).collect();
        out.push_str(&format!(
            "  on: {} (.on: queued when another agent emits it; read at the agent's start)\n",
            on.join(", ")
        ));
    }
    for p in &s.problems {
        out.push_str(&format!("  problem: {p}\n"));
    }
    out
}

/// The steps table of a plan and the count of entries that run.
fn steps_table(plan: &EventPlan, signing: &Signing) -> String {
    let provenance = signing.for_plan(plan);
    let rows = rows(plan, &provenance);
    let header: Vec<&str> = COLUMNS.iter().map(|c| c.header).collect();
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| COLUMNS.iter().map(|c| (c.cell)(r)).collect())
        .collect();
    let mut out = table(&header, &body);
    let running = rows.iter().filter(|r| r.position.is_some()).count();
    out.push_str(&format!("{running} of {} entries run\n", rows.len()));
    out
}

fn plan_json(
    agent: &str,
    event: &EventName,
    dirs: &[(PathBuf, DirState)],
    plan: &EventPlan,
    signing: &Signing,
) -> serde_json::Value {
    let dirs: Vec<_> = dirs
        .iter()
        .map(|(d, s)| {
            serde_json::json!({
                "path": d,
                "state": s.as_str(),
                "signature": signing.dir_note(d),
            })
        })
        .collect();
    let provenance = signing.for_plan(plan);
    let steps: Vec<_> = rows(plan, &provenance).iter().map(row_json).collect();
    serde_json::json!({
        "agent": agent,
        "event": event,
        "defined": plan.defined,
        "dirs": dirs,
        "steps": steps,
        "settings": {
            "timeout_secs": plan.settings.timeout.map(|t| t.as_secs()),
            "retries": plan.settings.retries,
            "on": plan.settings.on,
            "problems": plan.settings.problems,
        },
    })
}

/// A step as JSON: typed values for the plan's own facts, then every other column by its key.
fn row_json(r: &Row) -> serde_json::Value {
    let (verdict, reason) = match &r.entry.verdict {
        PlanVerdict::Run => ("run", None),
        PlanVerdict::Masked => ("masked", None),
        PlanVerdict::Skipped(why) => ("skipped", Some(why.as_str())),
    };
    let mut obj = serde_json::json!({
        "position": r.position,
        "name": r.entry.name,
        "verdict": verdict,
        "reason": reason,
        "path": r.entry.path,
        "dir": r.entry.dir,
        "overrides": r.entry.overrides,
    });
    let map = obj.as_object_mut().expect("an object");
    for c in COLUMNS {
        if !map.contains_key(c.key) {
            map.insert(c.key.into(), (c.cell)(r).into());
        }
    }
    obj
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn exe(path: &Path) {
        std::fs::write(path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn scratch(name: &str) -> PathBuf {
        let p =
            std::env::temp_dir().join(format!("agentctl-explain-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        p
    }

    #[test]
    fn table_shows_every_verdict() {
        let root = scratch("verdicts");
        let (a, b) = (root.join("a"), root.join("b"));
        for d in [&a, &b] {
            std::fs::create_dir_all(d.join("ev")).unwrap();
        }
        exe(&a.join("ev/10first"));
        exe(&a.join("ev/20second"));
        exe(&b.join("ev/20second"));
        symlink("/dev/null", b.join("ev/30masked")).unwrap();
        std::fs::write(b.join("ev/40plain"), "x").unwrap();
        exe(&b.join("ev/50last"));
        std::fs::write(b.join("ev/.timeout"), "9").unwrap();
        let missing = root.join("missing");
        let dirs = vec![a.clone(), b.clone(), missing.clone()];
        let event = EventName::new("ev").unwrap();
        let plan = plan_event(&dirs, &event);
        let states: Vec<_> = dirs
            .iter()
            .map(|d| (d.clone(), dir_state(d, &event)))
            .collect();
        assert_eq!(states[2].1, DirState::Missing);
        let signing = Signing::load(&dirs, &root.join("no-trust"));
        let text = plan_text("module/x", &event, &states, &plan, &signing);
        let line = |step: &str| text.lines().find(|l| l.contains(step)).unwrap().to_string();
        assert!(line("10first").trim_start().starts_with("1 "), "{text}");
        assert!(
            line("20second").contains(&format!("overrides {}", a.join("ev/20second").display()))
        );
        assert!(line("20second").contains(&b.join("ev/20second").display().to_string()));
        assert!(line("30masked").contains("masked (symlink to /dev/null)"));
        assert!(line("30masked").trim_start().starts_with("- "));
        assert!(line("40plain").contains("skipped: not executable"));
        assert!(line("50last").trim_start().starts_with("3 "), "{text}");
        assert!(text.contains("(missing)"));
        assert!(text.contains("timeout: 9s"));
        assert!(text.contains("3 of 5 entries run"));

        let json = plan_json("module/x", &event, &states, &plan, &signing);
        assert_eq!(json["defined"], true);
        assert_eq!(
            json["steps"][1]["overrides"][0],
            a.join("ev/20second").display().to_string()
        );
        assert_eq!(json["steps"][2]["verdict"], "masked");
        assert_eq!(json["steps"][3]["reason"], "not executable");
        assert_eq!(json["steps"][4]["position"], 3);
        assert_eq!(json["dirs"][2]["state"], "missing");
        assert_eq!(json["settings"]["timeout_secs"], 9);
        // No MANIFEST anywhere: the core dir's steps are unsigned, later dirs' local overrides.
        assert_eq!(json["steps"][0]["provenance"], "unsigned");
        assert_eq!(json["steps"][1]["provenance"], "local override");
        assert!(line("10first").contains("unsigned"), "{text}");
        assert!(text.contains("PROVENANCE"), "{text}");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn rollback_plan_is_shown() {
        let root = scratch("rollback");
        let (a, b) = (root.join("a"), root.join("b"));
        std::fs::create_dir_all(a.join("ev")).unwrap();
        std::fs::create_dir_all(a.join("ev.rollback")).unwrap();
        std::fs::create_dir_all(b.join("ev.rollback")).unwrap();
        exe(&a.join("ev/10do"));
        exe(&a.join("ev.rollback/10undo"));
        exe(&a.join("ev.rollback/20masked"));
        symlink("/dev/null", b.join("ev.rollback/20masked")).unwrap();
        std::fs::write(b.join("ev.rollback/.timeout"), "30").unwrap();
        let dirs = vec![a.clone(), b.clone()];
        let event = EventName::new("ev").unwrap();
        let (rb_event, rb_plan) = rollback_plan(&dirs, &event).expect("a rollback plan");
        assert_eq!(rb_event.as_str(), "ev.rollback");
        let signing = Signing::load(&dirs, &root.join("no-trust"));
        let text = rollback_text(&event, &rb_event, &rb_plan, &signing);
        assert!(text.contains("these steps of ev.rollback run"), "{text}");
        assert!(
            text.contains("10undo") && text.contains("1 of 2 entries run"),
            "{text}"
        );
        assert!(text.contains("rollback timeout: 30s"), "{text}");
        let json = rollback_json(&rb_event, &rb_plan, &signing);
        assert_eq!(json["steps"][1]["verdict"], "masked");
        assert_eq!(json["settings"]["timeout_secs"], 30);
        // A rollback event has no rollback; an event without rollback steps shows none.
        assert!(rollback_plan(&dirs, &rb_event).is_none());
        std::fs::remove_file(a.join("ev.rollback/10undo")).unwrap();
        assert!(rollback_plan(&dirs, &event).is_none());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn undefined_event() {
        let root = scratch("undefined");
        std::fs::create_dir_all(&root).unwrap();
        let event = EventName::new("nothing").unwrap();
        let dirs = vec![root.clone()];
        let plan = plan_event(&dirs, &event);
        let states = vec![(root.clone(), dir_state(&root, &event))];
        assert_eq!(states[0].1, DirState::NoEventDir);
        let signing = Signing::load(&dirs, &root);
        let text = plan_text("node/n", &event, &states, &plan, &signing);
        assert!(text.contains("no directory defines nothing"), "{text}");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn provenance_of_signed_modified_and_override_steps() {
        let root = scratch("provenance");
        let (core, local, trust) = (root.join("core"), root.join("local"), root.join("trust"));
        for d in [&core.join("ev"), &local.join("ev"), &trust] {
            std::fs::create_dir_all(d).unwrap();
        }
        let key = root.join("k.tsk");
        let fpr =
            module_signing::write_new_key("Core <core@example.org>", &key, &trust.join("core.asc"))
                .unwrap();
        exe(&core.join("ev/10signed"));
        exe(&core.join("ev/20changed"));
        exe(&core.join("ev/30overridden"));
        module_signing::sign_tree(&core, &key).unwrap();
        std::fs::write(core.join("ev/20changed"), "#!/bin/sh\nevil\n").unwrap();
        exe(&core.join("ev/25added"));
        symlink("/dev/null", local.join("ev/30overridden")).unwrap();
        exe(&local.join("ev/40local"));

        let dirs = vec![core.clone(), local.clone()];
        let event = EventName::new("ev").unwrap();
        let plan = plan_event(&dirs, &event);
        let states: Vec<_> = dirs
            .iter()
            .map(|d| (d.clone(), dir_state(d, &event)))
            .collect();
        let signing = Signing::load(&dirs, &trust);
        let prov = signing.for_plan(&plan);
        let short = &fpr[fpr.len() - 16..];
        assert_eq!(
            prov,
            [
                format!("signed {short}"),
                "MODIFIED (signed content changed)".to_string(),
                "unsigned (not in signed MANIFEST)".to_string(),
                "local override".to_string(),
                "local override".to_string(),
            ]
        );
        let text = plan_text("module/x", &event, &states, &plan, &signing);
        assert!(
            text.contains(&format!("[signed by {fpr} (Core <core@example.org>)]")),
            "{text}"
        );

        // Without the certificate in the trust dir the signature is untrusted.
        let untrusted = Signing::load(&dirs, &root.join("empty-trust"));
        assert!(untrusted.for_plan(&plan)[0].starts_with("UNTRUSTED signer "));
        // A tampered MANIFEST breaks the signature.
        let m = std::fs::read_to_string(core.join("MANIFEST")).unwrap();
        std::fs::write(core.join("MANIFEST"), m.replace("10signed", "10signeD")).unwrap();
        let bad = Signing::load(&dirs, &trust);
        assert_eq!(bad.for_plan(&plan)[0], "BAD SIGNATURE");
        let json = plan_json("module/x", &event, &states, &plan, &bad);
        assert!(json["dirs"][0]["signature"]
            .as_str()
            .unwrap()
            .starts_with("BAD SIGNATURE"));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn table_layout() {
        let t = table(
            &["#", "STEP", "X"],
            &[
                vec!["1".into(), "10a".into(), String::new()],
                vec!["-".into(), "20longer".into(), "o".into()],
            ],
        );
        assert_eq!(t, "  #  STEP      X\n  1  10a\n  -  20longer  o\n");
    }

    #[test]
    fn module_defaults_are_in_the_home() {
        assert_eq!(
            default_events_dirs(AgentKind::Module, Path::new("/home/traefik0")),
            [
                PathBuf::from("/home/traefik0/.config/module-events"),
                PathBuf::from("/home/traefik0/module-events")
            ]
        );
        if let Some(home) = unix_user_home("root") {
            let (agent, dirs) = default_dirs(&AgentRef::parse("root").unwrap()).unwrap();
            assert_eq!(agent.to_string(), "module/root");
            assert_eq!(dirs, default_events_dirs(AgentKind::Module, &home));
        }
        let node = AgentRef::parse("node/n1").unwrap();
        assert_eq!(
            default_dirs(&node).unwrap().1,
            [
                PathBuf::from("/usr/share/agent/node-events"),
                PathBuf::from("/usr/local/share/agent/node-events"),
                PathBuf::from("/var/local/node-events")
            ]
        );
        let nobody = AgentRef::parse("no-such-user-or-host-x9").unwrap();
        let e = default_dirs(&nobody).unwrap_err().to_string();
        assert!(e.contains("node/no-such-user-or-host-x9"), "{e}");
    }
}
