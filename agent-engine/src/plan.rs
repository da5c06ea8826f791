//! Planning: which executables run for an event, in which order, with which settings.
//!
//! The steps of event E are the union of entry names in `<dir>/E/` over all event dirs; for a name
//! found in several dirs the last dir's entry wins. Steps run in byte order of name. A winning entry
//! that is a symlink to `/dev/null` masks the step; hidden files and editor leftovers are ignored; a
//! non-executable file is skipped with a warning. Settings are small dotfiles (`.timeout`, `.retries`)
//! that merge the same way. Planning only reads directories: it never runs anything, so `agentctl
//! explain` shows exactly what a run would do.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use core_events::EventName;

/// What happens to one entry name of the merged plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanVerdict {
    /// Runs, in this position.
    Run,
    /// The winning entry is a symlink to `/dev/null`.
    Masked,
    /// The winning entry is not an executable regular file; the reason says why.
    Skipped(String),
}

/// One entry name of the merged plan, with where it comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanEntry {
    pub name: String,
    /// The winning file.
    pub path: PathBuf,
    /// The event dir the winning file is in.
    pub dir: PathBuf,
    /// Entries of the same name in earlier dirs that this one overrides.
    pub overrides: Vec<PathBuf>,
    pub verdict: PlanVerdict,
}

/// Per-event settings read from dotfiles in the event's directories.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventSettings {
    /// `.timeout`: seconds for the whole run.
    pub timeout: Option<Duration>,
    /// `.retries`: how many times an interrupted run is started again.
    pub retries: Option<u32>,
    /// `.on`: the emitted events (one name per line, `#` comments) that queue this event — from
    /// any agent but this one (see [`triggers`]). An empty `.on` in a later directory turns the
    /// triggers of an earlier one off.
    pub on: Vec<EventName>,
    /// Settings files that could not be read, in words.
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventPlan {
    /// Every entry name, in run order, including masked and skipped ones.
    pub entries: Vec<PlanEntry>,
    pub settings: EventSettings,
    /// Whether any event dir has a directory for this event. An event nobody defines is an error,
    /// an event whose steps are all masked is not.
    pub defined: bool,
}

impl EventPlan {
    /// The entries that will run, in order.
    pub fn steps(&self) -> impl Iterator<Item = &PlanEntry> {
        self.entries
            .iter()
            .filter(|e| e.verdict == PlanVerdict::Run)
    }
}

/// True for names that are never steps: hidden files and editor/package-manager leftovers.
pub fn is_ignored_name(name: &str) -> bool {
    name.starts_with('.')
        || name.ends_with('~')
        || name.starts_with('#')
        || [
            ".swp",
            ".bak",
            ".orig",
            ".rej",
            ".tmp",
            ".dpkg-old",
            ".dpkg-new",
            ".dpkg-dist",
            ".rpmnew",
            ".rpmsave",
        ]
        .iter()
        .any(|s| name.ends_with(s))
}

/// Builds the plan of `event` over `dirs` (later wins).
pub fn plan_event(dirs: &[PathBuf], event: &EventName) -> EventPlan {
    let mut merged: BTreeMap<Vec<u8>, PlanEntry> = BTreeMap::new();
    let mut settings = EventSettings::default();
    let mut defined = false;
    for dir in dirs {
        let event_dir = dir.join(event.as_str());
        let Ok(read) = std::fs::read_dir(&event_dir) else {
            continue;
        };
        defined = true;
        for entry in read.flatten() {
            let file_name = entry.file_name();
            let name = file_name.to_string_lossy().into_owned();
            let path = event_dir.join(&file_name);
            if let Some(setting) = name.strip_prefix('.') {
                read_setting(&mut settings, setting, &path);
                continue;
            }
            if is_ignored_name(&name) {
                continue;
            }
            let key = std::os::unix::ffi::OsStrExt::as_bytes(file_name.as_os_str()).to_vec();
            let mut overrides = Vec::new();
            if let Some(prev) = merged.remove(&key) {
                overrides = prev.overrides;
                overrides.push(prev.path);
            }
            let verdict = verdict_of(&path);
            merged.insert(
                key,
                PlanEntry {
                    name,
                    path,
                    dir: dir.clone(),
                    overrides,
                    verdict,
                },
            );
        }
    }
    EventPlan {
        entries: merged.into_values().collect(),
        settings,
        defined,
    }
}

fn verdict_of(path: &Path) -> PlanVerdict {
    if let Ok(target) = std::fs::read_link(path) {
        if target == Path::new("/dev/null") {
            return PlanVerdict::Masked;
        }
    }
    match std::fs::metadata(path) {
        Err(e) => PlanVerdict::Skipped(format!("cannot stat: {e}")),
        Ok(m) if !m.is_file() => PlanVerdict::Skipped("not a regular file".into()),
        Ok(m) if m.permissions().mode() & 0o111 == 0 => {
            PlanVerdict::Skipped("not executable".into())
        }
        Ok(_) => PlanVerdict::Run,
    }
}

/// The most of a settings file that is read: a number and a newline need far less.
const SETTING_MAX: u64 = 64;
/// The most of an `.on` file: a few event names.
const ON_MAX: u64 = 4096;

/// The text of a settings file: a regular file (after symlinks), at most [`SETTING_MAX`] bytes.
/// Opened without blocking and checked on the open file, so a FIFO (which would wait for a
/// writer) or `/dev/zero` (endless) planted as `.timeout` cannot hang planning, and nothing can
/// swap the file between the check and the read.
fn read_setting_text(path: &Path, max: u64) -> Result<String, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_NOCTTY).bits())
        .open(path)
        .map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.len() > max {
        return Err(format!("{} bytes, more than a setting holds", meta.len()));
    }
    let mut text = String::new();
    file.take(max)
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    Ok(text)
}

fn read_setting(settings: &mut EventSettings, name: &str, path: &Path) {
    let parse = |path: &Path| -> Result<u64, String> {
        let text = read_setting_text(path, SETTING_MAX)?;
        text.trim()
            .parse::<u64>()
            .map_err(|e| format!("{:?}: {e}", text.trim()))
    };
    match name {
        "timeout" => match parse(path) {
            Ok(secs) if secs > 0 => settings.timeout = Some(Duration::from_secs(secs)),
            Ok(_) => settings
                .problems
                .push(format!("{}: timeout must be > 0", path.display())),
            Err(e) => settings.problems.push(format!("{}: {e}", path.display())),
        },
        "retries" => match parse(path) {
            Ok(n) => settings.retries = Some(n.min(100) as u32),
            Err(e) => settings.problems.push(format!("{}: {e}", path.display())),
        },
        "on" => match read_setting_text(path, ON_MAX) {
            Ok(text) => {
                settings.on.clear();
                for line in text.lines().map(str::trim) {
                    if line.is_empty() || line.starts_with('#') {
                        continue;
                    }
                    match EventName::new(line) {
                        Ok(e) if !settings.on.contains(&e) => settings.on.push(e),
                        Ok(_) => {}
                        Err(e) => settings.problems.push(format!("{}: {e}", path.display())),
                    }
                }
            }
            Err(e) => settings.problems.push(format!("{}: {e}", path.display())),
        },
        _ => {}
    }
}

/// Every trigger of the event directories: emitted event → the events of this agent it queues
/// (from the events' `.on` settings, merged like every setting). Read when the agent starts.
/// Rollback events have none (they run only inside their event's run).
pub fn triggers(dirs: &[PathBuf]) -> BTreeMap<EventName, Vec<EventName>> {
    let mut events = std::collections::BTreeSet::new();
    for dir in dirs {
        let Ok(read) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in read.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Ok(event) = EventName::new(&name) {
                if !is_ignored_name(&name) && !name.ends_with(ROLLBACK_SUFFIX) {
                    events.insert(event);
                }
            }
        }
    }
    let mut out: BTreeMap<EventName, Vec<EventName>> = BTreeMap::new();
    for event in events {
        for on in plan_event(dirs, &event).settings.on {
            out.entry(on).or_default().push(event.clone());
        }
    }
    out
}

/// The suffix of rollback events (`module.init.rollback`).
const ROLLBACK_SUFFIX: &str = ".rollback";

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn exe(path: &Path) {
        std::fs::write(path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn merge_override_mask_skip() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        for d in [&a, &b] {
            std::fs::create_dir_all(d.join("ev")).unwrap();
        }
        exe(&a.join("ev/10first"));
        exe(&a.join("ev/20second"));
        exe(&a.join("ev/30third"));
        exe(&b.join("ev/20second"));
        symlink("/dev/null", b.join("ev/30third")).unwrap();
        std::fs::write(b.join("ev/40plain"), "x").unwrap();
        exe(&b.join("ev/.hidden"));
        exe(&b.join("ev/50x~"));
        exe(&b.join("ev/05y.swp"));
        std::fs::write(b.join("ev/.timeout"), "7\n").unwrap();
        std::fs::write(a.join("ev/.retries"), "2").unwrap();

        let plan = plan_event(&[a.clone(), b.clone()], &EventName::new("ev").unwrap());
        assert!(plan.defined);
        let names: Vec<_> = plan.entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["10first", "20second", "30third", "40plain"]);
        assert_eq!(plan.entries[1].dir, b);
        assert_eq!(plan.entries[1].overrides, vec![a.join("ev/20second")]);
        assert_eq!(plan.entries[2].verdict, PlanVerdict::Masked);
        assert!(matches!(plan.entries[3].verdict, PlanVerdict::Skipped(_)));
        let steps: Vec<_> = plan.steps().map(|e| e.name.as_str()).collect();
        assert_eq!(steps, ["10first", "20second"]);
        assert_eq!(plan.settings.timeout, Some(Duration::from_secs(7)));
        assert_eq!(plan.settings.retries, Some(2));
    }

    #[test]
    fn settings_that_would_block_or_never_end_are_problems_not_hangs() {
        let t = tempfile::tempdir().unwrap();
        let ev = t.path().join("ev");
        std::fs::create_dir_all(&ev).unwrap();
        symlink("/dev/zero", ev.join(".timeout")).unwrap();
        nix::unistd::mkfifo(
            &ev.join(".retries"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        let plan = plan_event(&[t.path().into()], &EventName::new("ev").unwrap());
        assert_eq!(plan.settings.timeout, None);
        assert_eq!(plan.settings.retries, None);
        assert_eq!(
            plan.settings.problems.len(),
            2,
            "{:?}",
            plan.settings.problems
        );
        for p in &plan.settings.problems {
            assert!(p.contains("not a regular file"), "{p}");
        }
        std::fs::remove_file(ev.join(".timeout")).unwrap();
        std::fs::write(ev.join(".timeout"), format!("{}\n", "9".repeat(100))).unwrap();
        let plan = plan_event(&[t.path().into()], &EventName::new("ev").unwrap());
        assert!(
            plan.settings
                .problems
                .iter()
                .any(|p| p.contains("more than a setting holds")),
            "{:?}",
            plan.settings.problems
        );
    }

    #[test]
    fn triggers_merge_like_settings() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        for d in ["a/edge.sync", "a/reload", "b/reload", "a/x.rollback"] {
            std::fs::create_dir_all(t.path().join(d)).unwrap();
        }
        std::fs::write(a.join("edge.sync/.on"), "# routes\nroute-requested\n\n").unwrap();
        std::fs::write(a.join("reload/.on"), "certificate-changed\nroute-changed\n").unwrap();
        // The admin's later directory turns one trigger set off, another has a bad name.
        std::fs::write(b.join("reload/.on"), "").unwrap();
        std::fs::write(a.join("x.rollback/.on"), "route-changed\n").unwrap();
        let found = triggers(&[a.clone(), b.clone()]);
        let shown: Vec<(String, Vec<String>)> = found
            .iter()
            .map(|(k, v)| (k.to_string(), v.iter().map(|e| e.to_string()).collect()))
            .collect();
        assert_eq!(
            shown,
            [("route-requested".to_string(), vec!["edge.sync".to_string()])]
        );
        std::fs::write(b.join("reload/.on"), "bad/name\nroute-changed\n").unwrap();
        let plan = plan_event(&[a, b], &EventName::new("reload").unwrap());
        assert_eq!(plan.settings.on, [EventName::new("route-changed").unwrap()]);
        assert_eq!(
            plan.settings.problems.len(),
            1,
            "{:?}",
            plan.settings.problems
        );
    }

    #[test]
    fn undefined_event() {
        let t = tempfile::tempdir().unwrap();
        let plan = plan_event(&[t.path().into()], &EventName::new("nothing").unwrap());
        assert!(!plan.defined && plan.entries.is_empty());
    }
}
