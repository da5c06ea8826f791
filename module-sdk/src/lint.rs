//! `module-sdk lint DIR|IMAGE`: checks a module before it is published — its source directory
//! (Containerfile and imageroot/), an imageroot, or an image in podman's local storage — against
//! what the node, the engine and Podman's Quadlet generator will do with it. Each finding names
//! the file and, where there is one, the line to fix, and says what to do.
//!
//! Lint applies the rules of the code that acts on a module, not copies of them: the labels are
//! read by `core_events::module_image`, the steps planned by `agent_engine::plan`, Quadlet file
//! names split by `crate::quadlet`, signatures checked by `module_signing`, and the Quadlet
//! files run through the generator itself (`-dryrun`) when it is installed. What lint adds on its
//! own are the things those accept but a module author gets wrong: idempotence of shell steps,
//! a container that never reports healthy, images the node does not copy, units that do not
//! start at boot.
//!
//! Lint only reads the tree: it never runs a step, and never follows a symlink out of the tree
//! (such a file is reported as not checked). Exit codes: 0 nothing fails; 1 an error (with
//! `--strict` also a warning); 2 bad arguments; 66 no such directory, or not a module tree; 69
//! podman or the image is not available.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::exit_code;
use crate::quadlet::{QuadletKind, QuadletName, GENERATOR};
use agent_engine::plan::{is_ignored_name, plan_event, PlanEntry, PlanVerdict};
use core_events::module_image::{self, LabelError};
use core_events::EventName;
use module_signing::{Policy, SignatureStatus, DEFAULT_TRUST_DIR, MANIFEST_FILE, SIGNATURE_FILE};
use serde::Serialize;

/// Findings that fail: an error, or with `--strict` a warning.
pub const FAILED: i32 = 1;
/// No such directory, or a directory that is not a module tree (`EX_NOINPUT`).
pub const NO_INPUT: i32 = 66;

/// The largest text file lint reads (steps, Quadlet files, the Containerfile); a step is checked
/// on its first MiB.
const MAX_TEXT: u64 = 1 << 20;
/// `.timeout` and `.retries` hold one number: anything larger is not read.
const MAX_SETTING: u64 = 4096;
/// How deep lint walks the Quadlet directory.
const MAX_DEPTH: usize = 32;
/// "Near the top" of a shell step: its first commands.
const TOP_COMMANDS: usize = 10;
/// The generator handles a module's few files in milliseconds; a hung one must not hang lint.
const GENERATOR_TIMEOUT: Duration = Duration::from_secs(30);

const EVENTS_DIR: &str = ".config/module-events";
const QUADLET_DIR: &str = ".config/containers/systemd";
const USER_UNITS_DIR: &str = ".config/systemd/user";

pub const LONG_ABOUT: &str = "\
Check a module before it is published: its source directory (Containerfile and
imageroot/), an imageroot (a tree with .config/), or an image in podman's local
storage. Each finding names the file and, where there is one, the line to fix, and
says what to do.

What is checked:
* labels: the module labels as the node reads them (imageroot, images, rootful), the
  OCI title and description, and that every Image= of a Quadlet .container file is
  in the images label (the node copies only those into the module's storage);
* layout: .config/module-events/ and its module.init, event names, each step as the
  engine plans it (a regular executable file with a #! line or an ELF binary), the
  .timeout and .retries settings;
* shell steps: idempotence hints (mkdir without -p, >> appends, ln -s without -f,
  useradd, podman run, systemctl) and set -e near the top;
* Quadlet: the files of .config/containers/systemd/ run through Podman's generator
  (/usr/libexec/podman/quadlet -dryrun -user) when it is installed, and on their own:
  Notify=healthy without HealthCmd=, a .container without Image=, no [Install]
  section, ${NAME} in Exec=/HealthCmd= (systemd expands it); user units around
  `podman run`;
* signature: MANIFEST.sig against the certificates of --trust-dir, and every file
  against MANIFEST.

An image is read with podman: its labels (podman image inspect) and its imageroot,
copied into a temporary directory (podman create, podman cp; the container is removed
again); findings then name REF:/imageroot/... . lint only reads: it never runs a
step, and never follows a symlink out of the tree.";

pub const AFTER_HELP: &str = "\
Examples:
  module-sdk lint examples/modules/hello                 a module's source directory
  module-sdk lint ./imageroot                            an imageroot
  module-sdk lint localhost/hello:latest                 an image in local storage
  module-sdk lint --strict --quiet localhost/hello:latest    warnings fail too
  module-sdk lint --format json examples/modules/hello   the findings as JSON

Output: one line per finding, `SEVERITY: PATH[:LINE]: message`, then `  fix: ...`
when there is advice, sorted by path and line; then `N errors, N warnings, N hints`.

Exit codes: 0 no errors (with --strict no warnings either); 1 findings that fail;
2 bad arguments; 66 no such directory, or not a module tree; 69 podman or the image
is not available.";

/// Arguments of `module-sdk lint`.
#[derive(Debug, clap::Args)]
pub struct LintArgs {
    /// A module's source directory (Containerfile and imageroot/), an imageroot (.config/), or
    /// an image in podman's local storage (localhost/hello:latest).
    #[arg(value_name = "DIR|IMAGE")]
    pub target: String,
    /// Directory of the trusted certificates a signed imageroot is checked against.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_TRUST_DIR)]
    pub trust_dir: PathBuf,
    /// Fail (exit 1) on warnings too.
    #[arg(long)]
    pub strict: bool,
    /// Print only the errors and the summary.
    #[arg(short, long)]
    pub quiet: bool,
    /// text: a line per finding and a summary; json: an array of {severity, path, line,
    /// message, fix}.
    #[arg(long, value_name = "FORMAT", value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The module does not work as published: lint fails.
    Error,
    /// It works, but not as it should (fails with --strict).
    Warning,
    /// A likely problem, for the author to judge (idempotence, better ways).
    Hint,
}

impl Severity {
    fn word(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Hint => "hint",
        }
    }
}

/// One thing to fix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    /// The file, as given on the command line (or `REF:/imageroot/...` for an image).
    pub path: String,
    pub line: Option<usize>,
    pub message: String,
    /// What to do, when there is advice.
    pub fix: Option<String>,
}

impl Finding {
    fn at(&mut self, line: impl Into<Option<usize>>) -> &mut Finding {
        self.line = line.into();
        self
    }

    fn fix(&mut self, fix: impl Into<String>) -> &mut Finding {
        self.fix = Some(fix.into());
        self
    }
}

#[derive(Debug, Default)]
struct Findings(Vec<Finding>);

impl Findings {
    fn push(
        &mut self,
        severity: Severity,
        path: impl Into<String>,
        message: impl Into<String>,
    ) -> &mut Finding {
        self.0.push(Finding {
            severity,
            path: path.into(),
            line: None,
            message: message.into(),
            fix: None,
        });
        let last = self.0.len() - 1;
        &mut self.0[last]
    }

    fn error(&mut self, path: impl Into<String>, message: impl Into<String>) -> &mut Finding {
        self.push(Severity::Error, path, message)
    }

    fn warning(&mut self, path: impl Into<String>, message: impl Into<String>) -> &mut Finding {
        self.push(Severity::Warning, path, message)
    }

    fn hint(&mut self, path: impl Into<String>, message: impl Into<String>) -> &mut Finding {
        self.push(Severity::Hint, path, message)
    }
}

/// What lint needs besides the target.
#[derive(Debug, Clone)]
struct Options {
    trust_dir: PathBuf,
    /// Podman's Quadlet generator ([`GENERATOR`]; a parameter so that tests can do without it).
    generator: PathBuf,
    verbose: bool,
}

/// Why nothing could be linted: the exit code and what to say.
#[derive(Debug)]
struct Failure {
    code: i32,
    message: String,
}

impl Failure {
    fn no_input(message: impl Into<String>) -> Failure {
        Failure {
            code: NO_INPUT,
            message: message.into(),
        }
    }

    fn unavailable(message: impl Into<String>) -> Failure {
        Failure {
            code: exit_code::UNAVAILABLE,
            message: message.into(),
        }
    }
}

/// Runs `module-sdk lint`; returns the exit code.
pub fn run(args: &LintArgs, verbose: bool) -> i32 {
    let options = Options {
        trust_dir: args.trust_dir.clone(),
        generator: PathBuf::from(GENERATOR),
        verbose,
    };
    match lint(&args.target, &options) {
        Ok(findings) => {
            let shown: Vec<&Finding> = findings
                .iter()
                .filter(|f| !args.quiet || f.severity == Severity::Error)
                .collect();
            let report = match args.format {
                Format::Text => text_report(&shown, &findings),
                Format::Json => json_report(&shown),
            };
            // A closed stdout (`| head`) must not turn into a panic; the exit code still tells.
            let mut stdout = std::io::stdout().lock();
            let _ = stdout
                .write_all(report.as_bytes())
                .and_then(|()| stdout.flush());
            exit_code_of(&findings, args.strict)
        }
        Err(failure) => {
            eprintln!("module-sdk: error: {}", failure.message);
            failure.code
        }
    }
}

fn exit_code_of(findings: &[Finding], strict: bool) -> i32 {
    let fails =
        |f: &Finding| f.severity == Severity::Error || (strict && f.severity == Severity::Warning);
    if findings.iter().any(fails) {
        FAILED
    } else {
        0
    }
}

fn text_report(shown: &[&Finding], all: &[Finding]) -> String {
    let mut text = String::new();
    for f in shown {
        let line = f.line.map(|l| format!(":{l}")).unwrap_or_default();
        text.push_str(&format!(
            "{}: {}{line}: {}\n",
            f.severity.word(),
            f.path,
            f.message
        ));
        if let Some(fix) = &f.fix {
            text.push_str(&format!("  fix: {fix}\n"));
        }
    }
    text.push_str(&summary(all));
    text.push('\n');
    text
}

fn json_report(shown: &[&Finding]) -> String {
    // Strings, numbers and nulls: serializing them cannot fail.
    let json = serde_json::to_string_pretty(shown).unwrap_or_else(|_| "[]".into());
    format!("{json}\n")
}

/// `N errors, N warnings, N hints` (singular for one).
fn summary(findings: &[Finding]) -> String {
    let count = |severity: Severity, one: &str, many: &str| {
        let n = findings.iter().filter(|f| f.severity == severity).count();
        format!("{n} {}", if n == 1 { one } else { many })
    };
    format!(
        "{}, {}, {}",
        count(Severity::Error, "error", "errors"),
        count(Severity::Warning, "warning", "warnings"),
        count(Severity::Hint, "hint", "hints")
    )
}

/// Lints `target` (a directory or an image reference); the findings sorted by path and line.
fn lint(target: &str, options: &Options) -> Result<Vec<Finding>, Failure> {
    if target.is_empty() {
        return Err(Failure {
            code: exit_code::USAGE,
            message: "DIR|IMAGE is empty".into(),
        });
    }
    let mut findings = if names_a_path(target) {
        lint_dir(target, options)?
    } else {
        // A mistyped relative directory reads like an image reference: say that it is neither.
        lint_image(target, options).map_err(|mut failure| {
            if failure.code == exit_code::UNAVAILABLE {
                failure
                    .message
                    .push_str(&format!(" (and {target} is no directory)"));
            }
            failure
        })?
    };
    findings
        .0
        .sort_by(|a, b| a.path.cmp(&b.path).then(a.line.cmp(&b.line)));
    Ok(findings.0)
}

/// A path, not an image reference: it exists, or it is spelled like a path (references never
/// start with `/` or `.`), so that a mistyped directory is "no such directory", not "no such image".
fn names_a_path(target: &str) -> bool {
    target.starts_with(['/', '.', '~'])
        || target.ends_with('/')
        || fs::symlink_metadata(target).is_ok()
}

/// A directory argument as findings show it: as given, without a trailing `/`.
fn shown_dir(target: &str) -> String {
    match target.trim_end_matches('/') {
        "" => "/".to_string(),
        trimmed => trimmed.to_string(),
    }
}

fn lint_dir(target: &str, options: &Options) -> Result<Findings, Failure> {
    let dir = Path::new(target);
    let shown = shown_dir(target);
    match fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Failure::no_input(format!("{shown}: no such directory")))
        }
        Err(e) => return Err(Failure::no_input(format!("{shown}: {e}"))),
        Ok(m) if !m.is_dir() => {
            return Err(Failure::no_input(format!(
                "{shown} is not a directory: lint takes a module's source directory, an \
                 imageroot or an image reference"
            )))
        }
        Ok(_) => {}
    }
    let containerfile = ["Containerfile", "Dockerfile"]
        .into_iter()
        .find(|name| dir.join(name).is_file());
    if let Some(name) = containerfile {
        if dir.join("imageroot").is_dir() {
            return lint_source(dir, &shown, name, options);
        }
    }
    if dir.join(".config").is_dir() {
        let tree = Tree::new(dir, shown.clone(), shown)?;
        let mut out = Findings::default();
        lint_imageroot(&tree, None, options, &mut out);
        return Ok(out);
    }
    Err(Failure::no_input(match containerfile {
        Some(name) => format!(
            "{shown} has a {name} but no imageroot/ directory: not a module's source \
             (docs/MODULES.md)"
        ),
        None => format!(
            "{shown} is not a module tree: a module's source directory holds a Containerfile \
             and imageroot/, an imageroot holds .config/ (docs/MODULES.md)"
        ),
    }))
}

/// A module's source directory: the labels of its Containerfile, then its imageroot/.
fn lint_source(
    dir: &Path,
    shown: &str,
    containerfile: &str,
    options: &Options,
) -> Result<Findings, Failure> {
    let tree_shown = format!("{shown}/imageroot");
    let tree = Tree::new(&dir.join("imageroot"), tree_shown.clone(), tree_shown)?;
    let mut out = Findings::default();
    let file_shown = format!("{shown}/{containerfile}");
    // The image's name in label messages: the directory's, as build.sh tags it.
    let name = fs::canonicalize(dir)
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| shown.to_string());
    let images = match read_text(&dir.join(containerfile)) {
        Ok(text) => Some(check_containerfile(&text, &name, &file_shown, &mut out)),
        Err(e) => {
            out.error(
                &file_shown,
                format!("cannot read it ({e}): the labels were not checked"),
            );
            None
        }
    };
    lint_imageroot(&tree, images.as_deref(), options, &mut out);
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Labels

/// Checks the labels of a Containerfile; returns the images its `images` label lists.
fn check_containerfile(text: &str, image: &str, shown: &str, out: &mut Findings) -> Vec<String> {
    let source = SourceLabels::parse(text);
    for (line, problem) in &source.problems {
        out.error(shown, problem.clone())
            .at(*line)
            .fix("LABEL key=\"value\" key2=\"value 2\" (quotes balanced)");
    }
    let locate = |label: &str| (shown.to_string(), source.lines.get(label).copied());
    let images = check_labels(image, &source.labels, &locate, out);
    if let Ok(labels) = module_image::parse_labels(image, &source.labels) {
        let lands_there = |dest: &String| dest.trim_end_matches('/') == labels.imageroot;
        if !source.imageroot_copies.is_empty()
            && !source.imageroot_copies.iter().any(|(_, d)| lands_there(d))
        {
            for (line, dest) in &source.imageroot_copies {
                out.error(
                    shown,
                    format!(
                        "COPY puts imageroot/ at {dest}, but the label {} says {}: the node \
                         would find no imageroot there",
                        module_image::IMAGEROOT,
                        labels.imageroot
                    ),
                )
                .at(*line)
                .fix(format!("COPY imageroot {}", labels.imageroot));
            }
        }
    }
    images
}

/// Checks the module labels as the node reads them, and the OCI labels a published module
/// carries; returns the images the `images` label lists. `locate` says where a label is set.
fn check_labels(
    image: &str,
    labels: &HashMap<String, String>,
    locate: &dyn Fn(&str) -> (String, Option<usize>),
    out: &mut Findings,
) -> Vec<String> {
    if let Err(e) = module_image::parse_labels(image, labels) {
        let (path, line) = locate(e.label());
        let message = e.to_string();
        let message = if message.contains(e.label()) {
            message
        } else {
            format!("label {}: {message}", e.label())
        };
        out.error(path, message).at(line).fix(label_fix(&e));
    }
    for (label, example) in [
        (module_image::TITLE, "hello"),
        (module_image::DESCRIPTION, "what the module does"),
    ] {
        if labels.get(label).is_none_or(|v| v.trim().is_empty()) {
            let (path, line) = locate(label);
            out.warning(
                path,
                format!(
                    "no label {label}: a published module carries it (the node's listings show it)"
                ),
            )
            .at(line)
            .fix(format!("LABEL {label}=\"{example}\""));
        }
    }
    labels
        .get(module_image::IMAGES)
        .map(|v| v.split_whitespace().map(String::from).collect())
        .unwrap_or_default()
}

fn label_fix(e: &LabelError) -> String {
    match e {
        LabelError::NotAModule { .. } => format!(
            "LABEL {}=\"/imageroot\" (where the Containerfile copies imageroot/)",
            module_image::IMAGEROOT
        ),
        LabelError::BadImageroot { .. } => {
            "an absolute path without . or .. components, e.g. /imageroot".into()
        }
        LabelError::Rootful { .. } => format!(
            "leave {} out, or set it to \"false\": modules run rootless",
            module_image::ROOTFUL
        ),
        LabelError::BadRootful { .. } => {
            format!("{}=\"false\" (or leave it out)", module_image::ROOTFUL)
        }
        LabelError::BadImage { .. } => format!(
            "{}=\"REF REF…\": references separated by spaces, each as podman takes it \
             (localhost/agent-busybox:latest)",
            module_image::IMAGES
        ),
    }
}

/// The labels a Containerfile gives its image, with the line of the `LABEL` that sets each.
#[derive(Debug, Default)]
struct SourceLabels {
    labels: HashMap<String, String>,
    lines: HashMap<String, usize>,
    /// `COPY imageroot DEST` of the image's stages: line and DEST.
    imageroot_copies: Vec<(usize, String)>,
    /// `LABEL`s that do not parse: line and why.
    problems: Vec<(usize, String)>,
}

/// One stage of a Containerfile (`FROM` up to the next `FROM`).
#[derive(Debug, Default)]
struct Stage {
    base: String,
    alias: Option<String>,
    labels: Vec<(usize, String, String)>,
    copies: Vec<(usize, String)>,
}

impl SourceLabels {
    /// The labels of the image a build makes: those of its last stage and of the stages that one
    /// is built `FROM` (labels are inherited), later ones winning.
    fn parse(text: &str) -> SourceLabels {
        let mut source = SourceLabels::default();
        let mut stages: Vec<Stage> = Vec::new();
        for ins in instructions(text) {
            match ins.keyword.as_str() {
                "FROM" => stages.push(Stage::from_args(&ins.args)),
                "LABEL" => match (label_pairs(&ins.args), stages.last_mut()) {
                    (Ok(pairs), Some(stage)) => stage
                        .labels
                        .extend(pairs.into_iter().map(|(k, v)| (ins.line, k, v))),
                    (Ok(_), None) => source
                        .problems
                        .push((ins.line, "LABEL before the first FROM".into())),
                    (Err(e), _) => source.problems.push((ins.line, format!("LABEL: {e}"))),
                },
                "COPY" | "ADD" => {
                    if let (Some(dest), Some(stage)) =
                        (imageroot_destination(&ins.args), stages.last_mut())
                    {
                        stage.copies.push((ins.line, dest));
                    }
                }
                _ => {}
            }
        }
        for stage in final_chain(&stages) {
            for (line, key, value) in &stage.labels {
                source.labels.insert(key.clone(), value.clone());
                source.lines.insert(key.clone(), *line);
            }
            source.imageroot_copies.extend(stage.copies.iter().cloned());
        }
        source
    }
}

impl Stage {
    fn from_args(args: &str) -> Stage {
        let words = shlex::split(args)
            .unwrap_or_else(|| args.split_whitespace().map(String::from).collect());
        let words: Vec<&String> = words.iter().filter(|w| !w.starts_with("--")).collect();
        Stage {
            base: words.first().map(|w| w.to_string()).unwrap_or_default(),
            alias: match words.as_slice() {
                [_, as_, alias, ..] if as_.eq_ignore_ascii_case("as") => Some(alias.to_string()),
                _ => None,
            },
            ..Stage::default()
        }
    }
}

/// The last stage and the stages it is built from, first one first.
fn final_chain(stages: &[Stage]) -> Vec<&Stage> {
    let mut chain = Vec::new();
    let Some(mut index) = stages.len().checked_sub(1) else {
        return chain;
    };
    loop {
        let stage = &stages[index];
        chain.push(stage);
        let parent = stages[..index].iter().rposition(|s| {
            s.alias
                .as_deref()
                .is_some_and(|a| a.eq_ignore_ascii_case(&stage.base))
        });
        match parent {
            Some(parent) => index = parent,
            None => break,
        }
    }
    chain.reverse();
    chain
}

/// One instruction of a Containerfile: its first line, keyword (upper case) and arguments with
/// continuation lines joined.
#[derive(Debug)]
struct Instruction {
    line: usize,
    keyword: String,
    args: String,
}

/// Splits a Containerfile into instructions as buildah does: `\` at the end of a line continues
/// it, comment and empty lines are left out (also inside a continued instruction).
fn instructions(text: &str) -> Vec<Instruction> {
    let mut all = Vec::new();
    let mut current: Option<Instruction> = None;
    for (index, raw) in text.split('\n').enumerate() {
        let raw = raw.trim_end_matches('\r');
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let (body, continues) = match raw.trim_end().strip_suffix('\\') {
            Some(body) => (body, true),
            None => (raw, false),
        };
        match current.as_mut() {
            Some(ins) => ins.args.push_str(body),
            None => {
                let body = body.trim_start();
                let (keyword, args) = body.split_once(char::is_whitespace).unwrap_or((body, ""));
                current = Some(Instruction {
                    line: index + 1,
                    keyword: keyword.to_ascii_uppercase(),
                    args: args.to_string(),
                });
            }
        }
        if !continues {
            all.extend(current.take());
        }
    }
    all.extend(current);
    all
}

/// The `key=value` pairs of a `LABEL` (or the old `LABEL key value` form), unquoted as a shell
/// would.
fn label_pairs(args: &str) -> Result<Vec<(String, String)>, String> {
    let words = shlex::split(args).ok_or("unbalanced quotes")?;
    let Some(first) = words.first() else {
        return Err("no key=value".into());
    };
    if !first.contains('=') {
        return Ok(vec![(first.clone(), words[1..].join(" "))]);
    }
    words
        .iter()
        .map(|word| match word.split_once('=') {
            Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
            _ => Err(format!("'{word}' is not key=value")),
        })
        .collect()
}

/// DEST of a `COPY imageroot DEST` (not one `--from` another stage or image).
fn imageroot_destination(args: &str) -> Option<String> {
    let words: Vec<String> = if args.trim_start().starts_with('[') {
        serde_json::from_str(args.trim()).ok()?
    } else {
        shlex::split(args)?
    };
    if words.iter().any(|w| w.starts_with("--from")) {
        return None;
    }
    let words: Vec<&String> = words.iter().filter(|w| !w.starts_with("--")).collect();
    let (dest, sources) = words.split_last()?;
    sources
        .iter()
        .any(|s| s.trim_start_matches("./").trim_end_matches('/') == "imageroot")
        .then(|| dest.to_string())
}

// ---------------------------------------------------------------------------------------------
// Images

/// An image: its labels, then its imageroot, copied out with podman.
fn lint_image(reference: &str, options: &Options) -> Result<Findings, Failure> {
    module_image::check_image_ref(reference).map_err(|e| Failure {
        code: exit_code::USAGE,
        message: format!(
            "{e}: {reference:?} is no directory, and not an image reference podman would take"
        ),
    })?;
    let labels = image_labels(reference)?;
    let mut out = Findings::default();
    let locate = |_: &str| (reference.to_string(), None);
    let images = check_labels(reference, &labels, &locate, &mut out);
    let imageroot = match module_image::parse_labels(reference, &labels) {
        Ok(l) => l.imageroot,
        // The imageroot label is fine, another is not: the tree can still be checked.
        Err(e) if e.label() != module_image::IMAGEROOT => labels
            .get(module_image::IMAGEROOT)
            .map(|v| v.trim().trim_end_matches('/').to_string())
            .unwrap_or_default(),
        Err(_) => return Ok(out),
    };
    let imageroot = if imageroot.is_empty() {
        "/".to_string()
    } else {
        imageroot
    };
    let Some(copy) = copy_imageroot(reference, &imageroot, &mut out)? else {
        return Ok(out);
    };
    let shown = format!("{reference}:{imageroot}");
    // Fixes name the source tree: that is where the author changes things.
    let tree = Tree::new(copy.path(), shown, "imageroot".into())?;
    lint_imageroot(&tree, Some(&images), options, &mut out);
    Ok(out)
}

/// Runs podman; a podman that is not there is exit 69.
fn podman(args: &[&str]) -> Result<Output, Failure> {
    Command::new("podman")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Failure::unavailable(
                    "podman is not installed: linting an image needs it (apt-get install \
                     podman); a module's source directory can be linted without it",
                )
            } else {
                Failure::unavailable(format!("cannot run podman: {e}"))
            }
        })
}

fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).trim().to_string()
}

/// The image's labels (`podman image inspect`), none for an image without any.
fn image_labels(reference: &str) -> Result<HashMap<String, String>, Failure> {
    let output = podman(&[
        "image",
        "inspect",
        "--format",
        "{{json .Labels}}",
        reference,
    ])?;
    if !output.status.success() {
        return Err(Failure::unavailable(format!(
            "image {reference} is not in podman's local storage ({}): build it, or `podman \
             pull {reference}` first",
            stderr_of(&output)
        )));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let labels: Option<HashMap<String, String>> =
        serde_json::from_str(text.trim()).map_err(|e| {
            Failure::unavailable(format!(
                "podman image inspect {reference} printed no labels as JSON ({e}): {}",
                text.trim()
            ))
        })?;
    Ok(labels.unwrap_or_default())
}

/// A container made only to copy files out of its image; removed on drop, also on error.
struct CopyContainer {
    id: String,
}

impl Drop for CopyContainer {
    fn drop(&mut self) {
        let _ = podman(&["rm", "--force", &self.id]);
    }
}

/// The image's imageroot in a temporary directory; `None` (and a finding) when the image has no
/// such directory.
fn copy_imageroot(
    reference: &str,
    imageroot: &str,
    out: &mut Findings,
) -> Result<Option<tempfile::TempDir>, Failure> {
    // `/x`: an image FROM scratch has no command, and create wants one; nothing runs it.
    let created = podman(&["create", "--pull=never", reference, "/x"])?;
    let id = String::from_utf8_lossy(&created.stdout)
        .lines()
        .last()
        .unwrap_or("")
        .trim()
        .to_string();
    if !created.status.success() || id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Failure::unavailable(format!(
            "podman create {reference} failed: {}",
            stderr_of(&created)
        )));
    }
    let container = CopyContainer { id };
    let source = format!("{}:{}/.", container.id, imageroot.trim_end_matches('/'));
    let copied = podman(&["cp", &source, "-"])?;
    if !copied.status.success() {
        let stderr = stderr_of(&copied);
        if stderr.contains("no such file or directory") || stderr.contains("could not be found") {
            out.error(
                reference,
                format!(
                    "the label {} says {imageroot}, but the image has no such directory",
                    module_image::IMAGEROOT
                ),
            )
            .fix(format!("COPY imageroot {imageroot} in the Containerfile"));
            return Ok(None);
        }
        return Err(Failure::unavailable(format!(
            "podman cp {source} failed: {stderr}"
        )));
    }
    drop(container);
    let dir = tempfile::Builder::new()
        .prefix("module-sdk-lint-")
        .tempdir()
        .map_err(|e| Failure::unavailable(format!("cannot make a temporary directory: {e}")))?;
    unpack(&copied.stdout, dir.path(), reference, out)?;
    Ok(Some(dir))
}

/// Extracts what `podman cp` wrote: directories, regular files and symlinks, with their modes
/// (the MANIFEST records them), never outside `dest`.
fn unpack(archive: &[u8], dest: &Path, reference: &str, out: &mut Findings) -> Result<(), Failure> {
    let broken = |e: std::io::Error| {
        Failure::unavailable(format!(
            "podman cp of {reference} gave no readable tar archive: {e}"
        ))
    };
    let mut archive = tar::Archive::new(archive);
    archive.set_preserve_permissions(true);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    for entry in archive.entries().map_err(broken)? {
        let mut entry = entry.map_err(broken)?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            // Made writable (0755) rather than with the archive's mode: a read-only directory
            // would refuse the files that follow, and the MANIFEST does not list directories.
            match safe_relative(&name) {
                Some(rel) => {
                    let _ = fs::create_dir_all(dest.join(rel));
                }
                None => {
                    out.warning(
                        reference,
                        format!("{name}: an unsafe path in the image's imageroot: not extracted"),
                    );
                }
            }
            continue;
        }
        if !(kind.is_file() || kind.is_symlink()) {
            out.error(
                reference,
                format!(
                    "{name}: a {kind:?} entry in the image's imageroot: nodes refuse to install \
                     an imageroot that holds one (only files, directories and symlinks)"
                ),
            )
            .fix("remove it from the imageroot and build the image again");
            continue;
        }
        match entry.unpack_in(dest) {
            Ok(true) => {}
            Ok(false) => {
                out.warning(
                    reference,
                    format!("{name}: an unsafe path in the image's imageroot: not extracted"),
                );
            }
            Err(e) => {
                out.warning(
                    reference,
                    format!("{name}: not extracted ({e}): not checked"),
                );
            }
        }
    }
    Ok(())
}

/// `name` as a relative path of plain components (`./` allowed), or `None`.
fn safe_relative(name: &str) -> Option<PathBuf> {
    let mut rel = PathBuf::new();
    for component in Path::new(name).components() {
        match component {
            Component::Normal(part) => rel.push(part),
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some(rel)
}

// ---------------------------------------------------------------------------------------------
// The tree

/// The imageroot being linted.
#[derive(Debug)]
struct Tree {
    /// The directory (as given, or the temporary copy of an image's imageroot).
    root: PathBuf,
    /// `root` with symlinks resolved: what "inside the tree" means.
    canonical: PathBuf,
    /// How findings name `root`: as given, or `REF:/imageroot`.
    shown: String,
    /// How fixes name `root`: a path a command can be run on (`imageroot` for an image).
    source: String,
}

/// Where a path leads.
enum Place {
    /// Into the tree: the real path, safe to read.
    Inside(PathBuf),
    /// Out of it (a symlink): where to.
    Outside(PathBuf),
    /// Nowhere (a dangling symlink, a loop, an unreadable directory).
    Nowhere,
}

impl Tree {
    fn new(root: &Path, shown: String, source: String) -> Result<Tree, Failure> {
        let canonical =
            fs::canonicalize(root).map_err(|e| Failure::no_input(format!("{shown}: {e}")))?;
        Ok(Tree {
            root: root.to_path_buf(),
            canonical,
            shown,
            source,
        })
    }

    fn rel<'a>(&self, path: &'a Path) -> &'a Path {
        path.strip_prefix(&self.root).unwrap_or(path)
    }

    /// `path` as findings name it.
    fn show(&self, path: &Path) -> String {
        join_shown(&self.shown, self.rel(path))
    }

    /// `path` as fixes name it.
    fn source_path(&self, path: &Path) -> String {
        join_shown(&self.source, self.rel(path))
    }

    /// Where `path` leads; only resolves names (stat), never opens anything.
    fn place(&self, path: &Path) -> Place {
        match fs::canonicalize(path) {
            Ok(real) if real.starts_with(&self.canonical) => Place::Inside(real),
            Ok(real) => Place::Outside(real),
            Err(_) => Place::Nowhere,
        }
    }

    /// Where lint may read `path`: itself or, for a symlink, its target when that is inside the
    /// tree. A symlink out of the tree is reported and not followed.
    fn readable(&self, path: &Path, out: &mut Findings) -> Option<PathBuf> {
        match self.place(path) {
            Place::Inside(real) => Some(real),
            Place::Outside(target) => {
                out.warning(
                    self.show(path),
                    format!(
                        "a symlink out of the tree (to {}): lint does not follow it, so it is \
                         not checked; on a node it leads to whatever is there",
                        target.display()
                    ),
                )
                .fix("put the file itself into the tree");
                None
            }
            Place::Nowhere => {
                out.warning(
                    self.show(path),
                    "a symlink to nothing (or a loop): not checked",
                )
                .fix("point it at a file of the tree, or remove it");
                None
            }
        }
    }
}

fn join_shown(base: &str, rel: &Path) -> String {
    if rel.as_os_str().is_empty() {
        base.to_string()
    } else {
        format!("{}/{}", base.trim_end_matches('/'), rel.display())
    }
}

/// The first `limit` bytes of a regular file (never a fifo or device, which could block or never
/// end).
fn read_limited(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    if !fs::metadata(path)?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut bytes = Vec::new();
    fs::File::open(path)?.take(limit).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// A whole text file of at most [`MAX_TEXT`] bytes (bytes that are not UTF-8 shown as U+FFFD).
fn read_text(path: &Path) -> std::io::Result<String> {
    if fs::metadata(path)?.len() > MAX_TEXT {
        return Err(std::io::Error::other(format!(
            "larger than {} KiB",
            MAX_TEXT >> 10
        )));
    }
    read_limited(path, MAX_TEXT).map(|b| String::from_utf8_lossy(&b).into_owned())
}

fn sorted_names(dir: &Path) -> std::io::Result<Vec<OsString>> {
    let mut names: Vec<OsString> = fs::read_dir(dir)?
        .flatten()
        .map(|e| e.file_name())
        .collect();
    names.sort();
    Ok(names)
}

fn lint_imageroot(tree: &Tree, images: Option<&[String]>, options: &Options, out: &mut Findings) {
    check_special_files(tree, out);
    check_events(tree, out);
    check_quadlets(tree, images, options, out);
    check_user_units(tree, out);
    check_signature(tree, &options.trust_dir, out);
}

/// What the node's install refuses anywhere in an imageroot (node-agent's `install-image`): a
/// FIFO, a socket or a device node. Walks the tree without following symlinks, with its own
/// stack, at most [`MAX_DEPTH`] levels.
fn check_special_files(tree: &Tree, out: &mut Findings) {
    use std::os::unix::fs::FileTypeExt;
    let mut pending = vec![(tree.root.clone(), 0usize)];
    while let Some((dir, depth)) = pending.pop() {
        let Ok(names) = sorted_names(&dir) else {
            continue;
        };
        for name in names {
            let path = dir.join(&name);
            let Ok(meta) = fs::symlink_metadata(&path) else {
                continue;
            };
            let kind = meta.file_type();
            if kind.is_dir() {
                if depth < MAX_DEPTH {
                    pending.push((path, depth + 1));
                }
                continue;
            }
            let what = if kind.is_fifo() {
                "a FIFO"
            } else if kind.is_socket() {
                "a socket"
            } else if kind.is_block_device() || kind.is_char_device() {
                "a device node"
            } else {
                continue;
            };
            out.error(
                tree.show(&path),
                format!(
                    "{what}: nodes refuse to install an imageroot that holds one (only files, \
                     directories and symlinks)"
                ),
            )
            .fix(format!("rm {}", tree.source_path(&path)));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Events and steps

fn check_events(tree: &Tree, out: &mut Findings) {
    let dir = tree.root.join(EVENTS_DIR);
    let shown = tree.show(&dir);
    match fs::symlink_metadata(&dir) {
        Err(_) => {
            out.error(
                &shown,
                "missing: the module has no events, so its module-agent has nothing to run at \
                 install",
            )
            .fix(format!(
                "mkdir -p {}/module.init and put the install steps there (docs/MODULES.md)",
                tree.source_path(&dir)
            ));
            return;
        }
        Ok(m) if !m.is_dir() => {
            out.error(
                &shown,
                "not a directory (a symlink or a file): lint does not follow it",
            )
            .fix("make it a directory of the tree");
            return;
        }
        Ok(_) => {}
    }
    let names = match sorted_names(&dir) {
        Ok(names) => names,
        Err(e) => {
            out.warning(
                &shown,
                format!("cannot read it ({e}): the events were not checked"),
            );
            return;
        }
    };
    let mut has_init = false;
    for name in names {
        let path = dir.join(&name);
        // Hidden entries are never an event's directory (event names cannot start with '.').
        if name.as_encoded_bytes().starts_with(b".") {
            continue;
        }
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_symlink() {
            match tree.readable(&path, out) {
                Some(real) if real.is_dir() => {}
                _ => continue,
            }
        } else if !meta.is_dir() {
            // A file beside the events (a README) is nobody's business.
            continue;
        }
        let event = match name.to_str().map(EventName::new) {
            Some(Ok(event)) => event,
            Some(Err(e)) => {
                out.error(tree.show(&path), format!("not an event name: {e}"))
                    .fix("rename it: event names are A-Z a-z 0-9 . _ -, starting with a letter or digit");
                continue;
            }
            None => {
                out.error(tree.show(&path), "not an event name: not UTF-8")
                    .fix(
                    "rename it: event names are A-Z a-z 0-9 . _ -, starting with a letter or digit",
                );
                continue;
            }
        };
        has_init |= event.as_str() == "module.init";
        check_event(tree, &dir, &event, out);
    }
    if !has_init {
        out.warning(
            &shown,
            "no module.init/: the module-agent's startup event, which must start the module's \
             containers at install",
        )
        .fix(format!(
            "add {}/module.init/NNname steps (docs/MODULES.md)",
            tree.source_path(&dir)
        ));
    }
}

fn check_event(tree: &Tree, events_dir: &Path, event: &EventName, out: &mut Findings) {
    let event_dir = events_dir.join(event.as_str());
    // The engine reads the settings files whole and through symlinks: lint plans the event only
    // when they are small regular files.
    for setting in [".timeout", ".retries"] {
        let path = event_dir.join(setting);
        if let Ok(meta) = fs::symlink_metadata(&path) {
            if !meta.is_file() || meta.len() > MAX_SETTING {
                out.error(
                    tree.show(&path),
                    format!(
                        "{setting} must be a small regular file holding a number: lint did not \
                         read it, nor check the rest of the event"
                    ),
                )
                .fix(format!("echo 30 > {}", tree.source_path(&path)));
                return;
            }
        }
    }
    let plan = plan_event(&[events_dir.to_path_buf()], event);
    for problem in &plan.settings.problems {
        let (path, message) = [".timeout", ".retries"]
            .iter()
            .map(|s| event_dir.join(s))
            .find_map(|p| {
                let prefix = format!("{}: ", p.display());
                problem.strip_prefix(&prefix).map(|m| (p, m.to_string()))
            })
            .unwrap_or((event_dir.clone(), problem.clone()));
        out.error(
            tree.show(&path),
            format!("the engine cannot use it: {message}"),
        )
        .fix(".timeout holds whole seconds > 0, .retries a whole number");
    }
    if let Ok(names) = sorted_names(&event_dir) {
        for name in names {
            let name = name.to_string_lossy();
            if !name.starts_with('.') && is_ignored_name(&name) {
                let path = event_dir.join(&*name);
                out.hint(
                    tree.show(&path),
                    "never runs: the engine ignores names like this (editor and package manager \
                     leftovers)",
                )
                .fix("remove it, or name it NNname to make it a step");
            }
        }
    }
    for entry in &plan.entries {
        check_step(tree, entry, out);
    }
}

fn check_step(tree: &Tree, entry: &PlanEntry, out: &mut Findings) {
    let shown = tree.show(&entry.path);
    match &entry.verdict {
        PlanVerdict::Masked => {
            out.hint(&shown, "masked (a symlink to /dev/null): it never runs")
                .fix("remove it: masking is how an admin turns off a step of an installed module");
        }
        PlanVerdict::Skipped(reason) => {
            let fix = if reason == "not executable" {
                format!("chmod +x {}", tree.source_path(&entry.path))
            } else if reason.starts_with("cannot stat") {
                "the symlink leads nowhere: point it at a step of the tree, or remove it".into()
            } else {
                "a step is an executable regular file (a symlink to /dev/null masks one)".into()
            };
            out.error(&shown, format!("the engine skips this step: {reason}"))
                .fix(fix);
        }
        PlanVerdict::Run => check_step_file(tree, &entry.path, out),
    }
}

/// A step the engine runs: it must be exec-able (`#!` or ELF); shell steps get the rules.
fn check_step_file(tree: &Tree, path: &Path, out: &mut Findings) {
    let shown = tree.show(path);
    let Some(real) = tree.readable(path, out) else {
        return;
    };
    let bytes = match read_limited(&real, MAX_TEXT) {
        Ok(bytes) => bytes,
        Err(e) => {
            out.warning(&shown, format!("cannot read it ({e}): not checked"));
            return;
        }
    };
    if bytes.starts_with(b"\x7fELF") {
        return;
    }
    let text = String::from_utf8_lossy(&bytes);
    let first = text.split('\n').next().unwrap_or("");
    let Some(shebang) = Shebang::parse(first) else {
        out.error(
            &shown,
            "no #! line (and not an ELF binary): the engine execs steps directly, and the exec \
             fails",
        )
        .at(1)
        .fix("start it with #!/bin/sh (or the interpreter it needs)");
        return;
    };
    if shebang.crlf {
        out.error(
            &shown,
            "the #! line ends in a carriage return (DOS line endings): exec looks for an \
             interpreter whose name ends in \\r",
        )
        .at(1)
        .fix(format!("sed -i 's/\\r$//' {}", tree.source_path(path)));
    }
    if !shebang.interpreter.starts_with('/') {
        out.error(
            &shown,
            format!(
                "the #! interpreter {:?} is not an absolute path: exec fails",
                shebang.interpreter
            ),
        )
        .at(1)
        .fix("#!/bin/sh, or #!/usr/bin/env NAME");
    }
    if shebang.is_shell() {
        check_shell_step(&text, &shebang, &shown, out);
    }
}

/// The `#!` line of a script.
#[derive(Debug, PartialEq, Eq)]
struct Shebang {
    interpreter: String,
    /// The rest of the line (Linux passes it as one argument).
    argument: Option<String>,
    /// The line ends in `\r`.
    crlf: bool,
}

impl Shebang {
    fn parse(first_line: &str) -> Option<Shebang> {
        let rest = first_line.strip_prefix("#!")?;
        let crlf = rest.ends_with('\r');
        let rest = rest.trim_end_matches('\r').trim();
        let (interpreter, argument) = match rest.split_once([' ', '\t']) {
            Some((i, a)) => (i, Some(a.trim().to_string()).filter(|a| !a.is_empty())),
            None => (rest, None),
        };
        Some(Shebang {
            interpreter: interpreter.to_string(),
            argument,
            crlf,
        })
    }

    /// The program and its options: the interpreter's, or those after `env`.
    fn program(&self) -> (&str, Vec<&str>) {
        let name = basename(&self.interpreter);
        let words: Vec<&str> = self
            .argument
            .as_deref()
            .map(|a| a.split_whitespace().collect())
            .unwrap_or_default();
        if name != "env" {
            return (name, words);
        }
        match words.iter().position(|w| !w.starts_with('-')) {
            Some(at) => (basename(words[at]), words[at + 1..].to_vec()),
            None => ("env", Vec::new()),
        }
    }

    /// A shell script (sh, bash, dash; also through env).
    fn is_shell(&self) -> bool {
        matches!(self.program().0, "sh" | "bash" | "dash")
    }
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn check_shell_step(text: &str, shebang: &Shebang, shown: &str, out: &mut Findings) {
    let mut commands = shell_commands(text);
    // `#!/bin/sh -eu`: the options count like a `set` at the top.
    let (_, options) = shebang.program();
    if !options.is_empty() {
        let mut words = vec!["set".to_string()];
        words.extend(options.iter().map(|o| o.to_string()));
        commands.insert(
            0,
            ShellCommand {
                line: 1,
                words,
                appends: Vec::new(),
            },
        );
    }
    for rule in SHELL_RULES {
        match rule.check {
            RuleCheck::Each(matches) => {
                for command in commands.iter().filter(|c| matches(c)) {
                    out.push(rule.severity, shown, rule.message)
                        .at(command.line)
                        .fix(rule.fix);
                }
            }
            RuleCheck::MissingAtTop(matches) => {
                if !commands.iter().take(TOP_COMMANDS).any(matches) {
                    out.push(rule.severity, shown, rule.message)
                        .at(1)
                        .fix(rule.fix);
                }
            }
        }
    }
}

/// A rule for shell steps, with its advice.
struct ShellRule {
    severity: Severity,
    check: RuleCheck,
    message: &'static str,
    fix: &'static str,
}

enum RuleCheck {
    /// Fires at every command it matches.
    Each(fn(&ShellCommand) -> bool),
    /// Fires once (at line 1) when none of the first [`TOP_COMMANDS`] commands matches.
    MissingAtTop(fn(&ShellCommand) -> bool),
}

/// The rules for shell steps. Steps run again after a crash and `module.init` runs again on an
/// installed module (docs/MODULES.md): what fails or doubles on a second run is a hint.
const SHELL_RULES: &[ShellRule] = &[
    ShellRule {
        severity: Severity::Hint,
        check: RuleCheck::Each(mkdir_without_p),
        message: "`mkdir` without -p fails when the directory exists, as it does when the step \
                  runs again",
        fix: "mkdir -p",
    },
    ShellRule {
        severity: Severity::Hint,
        check: RuleCheck::Each(appends_to_a_file),
        message: "`>>` appends again each time the step runs again: the text ends up in the \
                  file twice",
        fix: "write the whole file to a temporary name and mv it into place (or check first \
              that the text is not there)",
    },
    ShellRule {
        severity: Severity::Hint,
        check: RuleCheck::Each(ln_s_without_f),
        message: "`ln -s` without -f fails when the link exists, as it does when the step runs \
                  again",
        fix: "ln -sf (ln -sfn for a link to a directory)",
    },
    ShellRule {
        severity: Severity::Hint,
        check: RuleCheck::Each(adds_a_user),
        message: "adding a user fails when the user exists (a second run), and a module's steps \
                  run as the module's own user, without root",
        fix: "the node creates the module's user; what else needs a user belongs inside the \
              module's containers",
    },
    ShellRule {
        severity: Severity::Hint,
        check: RuleCheck::Each(podman_run),
        message: "`podman run` in a step starts a container nothing restarts at boot, and a \
                  second run starts another one (or fails on its name)",
        fix: "a Quadlet file imageroot/.config/containers/systemd/NAME.container, started with \
              `module-sdk unit start NAME.container`",
    },
    ShellRule {
        severity: Severity::Hint,
        check: RuleCheck::Each(runs_systemctl),
        message: "`systemctl` in a step: it needs the module user's bus, and a failed start \
                  says only that it failed",
        fix: "module-sdk unit start|restart|status NAME: waits for systemd's job and shows the \
              unit's journal when it fails",
    },
    ShellRule {
        severity: Severity::Warning,
        check: RuleCheck::MissingAtTop(sets_errexit),
        message: "no `set -e` near the top: a command that fails does not stop the step, which \
                  goes on and may exit 0",
        fix: "add `set -eu` right after the #! line",
    },
];

fn mkdir_without_p(c: &ShellCommand) -> bool {
    c.name() == Some("mkdir") && !c.has_option('p', "--parents")
}

fn appends_to_a_file(c: &ShellCommand) -> bool {
    c.appends
        .iter()
        .any(|t| !matches!(t.as_str(), "/dev/null" | "/dev/stdout" | "/dev/stderr"))
}

fn ln_s_without_f(c: &ShellCommand) -> bool {
    c.name() == Some("ln") && c.has_option('s', "--symbolic") && !c.has_option('f', "--force")
}

fn adds_a_user(c: &ShellCommand) -> bool {
    matches!(c.name(), Some("useradd" | "adduser"))
}

fn podman_run(c: &ShellCommand) -> bool {
    if c.name() != Some("podman") {
        return false;
    }
    let mut words = c.args().iter().filter(|w| !w.starts_with('-'));
    match words.next().map(String::as_str) {
        Some("run") => true,
        Some("container") => words.next().is_some_and(|w| w == "run"),
        _ => false,
    }
}

fn runs_systemctl(c: &ShellCommand) -> bool {
    c.name() == Some("systemctl")
}

fn sets_errexit(c: &ShellCommand) -> bool {
    c.name() == Some("set")
        && (c.has_option('e', "--errexit")
            || c.args()
                .windows(2)
                .any(|w| w[0] == "-o" && w[1] == "errexit"))
}

/// One simple command of a shell script, as far as the rules need it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct ShellCommand {
    /// Where its first word is.
    line: usize,
    words: Vec<String>,
    /// The targets of its `>>` redirections.
    appends: Vec<String>,
}

/// Words before the command's name that are not it.
const PREFIX_WORDS: &[&str] = &[
    "!", "{", "}", "if", "then", "else", "elif", "do", "while", "until", "time",
];
/// Commands that run the command after them (and their options).
const WRAPPERS: &[&str] = &["exec", "command", "builtin", "nohup", "sudo", "env", "nice"];

impl ShellCommand {
    /// The command's name and arguments: without leading assignments, reserved words and
    /// wrappers (`exec`, `sudo`, `env`, …).
    fn argv(&self) -> &[String] {
        let mut rest = &self.words[..];
        let mut after_wrapper = false;
        while let Some((first, tail)) = rest.split_first() {
            let word = first.as_str();
            let option_of_wrapper = after_wrapper && word.starts_with('-');
            if !(is_assignment(word)
                || PREFIX_WORDS.contains(&word)
                || WRAPPERS.contains(&word)
                || option_of_wrapper)
            {
                break;
            }
            after_wrapper = WRAPPERS.contains(&word) || option_of_wrapper;
            rest = tail;
        }
        rest
    }

    fn name(&self) -> Option<&str> {
        self.argv().first().map(|w| basename(w))
    }

    fn args(&self) -> &[String] {
        self.argv().get(1..).unwrap_or(&[])
    }

    /// An option given as `-x` (alone or in a cluster like `-xvf`) or as `--long`.
    fn has_option(&self, short: char, long: &str) -> bool {
        self.args().iter().any(|a| {
            a == long
                || (a.len() > 1
                    && a.starts_with('-')
                    && !a.starts_with("--")
                    && a[1..].contains(short))
        })
    }
}

fn is_assignment(word: &str) -> bool {
    word.split_once('=').is_some_and(|(name, _)| {
        !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Redirect {
    Append,
    Heredoc { strip_tabs: bool },
    Other,
}

/// The simple commands of a shell script, with their lines: enough of the shell's grammar for the
/// rules (quotes, comments, `\` continuations, here-documents, `;` `&&` `|` `$(` `)` as
/// separators, redirections). Never fails: what it does not understand becomes words.
fn shell_commands(text: &str) -> Vec<ShellCommand> {
    let mut scanner = ShellScanner {
        chars: text.chars().collect(),
        pos: 0,
        line: 1,
        commands: Vec::new(),
        current: ShellCommand::default(),
        word: None,
        redirect: None,
        heredocs: Vec::new(),
    };
    scanner.scan();
    scanner.commands
}

struct ShellScanner {
    chars: Vec<char>,
    pos: usize,
    line: usize,
    commands: Vec<ShellCommand>,
    current: ShellCommand,
    /// The word being read, if one has started (an empty `""` is a word too).
    word: Option<String>,
    /// The redirection the next word is the target of.
    redirect: Option<Redirect>,
    /// Here-documents whose bodies start after this line: delimiter, `<<-`.
    heredocs: Vec<(String, bool)>,
}

impl ShellScanner {
    fn peek(&self, ahead: usize) -> Option<char> {
        self.chars.get(self.pos + ahead).copied()
    }

    fn scan(&mut self) {
        while let Some(c) = self.peek(0) {
            match c {
                '\n' => {
                    self.end_command();
                    self.pos += 1;
                    self.line += 1;
                    self.skip_heredocs();
                }
                ' ' | '\t' | '\r' => {
                    self.end_word();
                    self.pos += 1;
                }
                '#' if self.word.is_none() => {
                    while self.peek(0).is_some_and(|c| c != '\n') {
                        self.pos += 1;
                    }
                }
                '\'' | '"' => {
                    self.pos += 1;
                    self.quoted(c);
                }
                '\\' => {
                    match self.peek(1) {
                        Some('\n') => self.line += 1,
                        Some(next) => self.push_char(next),
                        None => {}
                    }
                    self.pos += 2;
                }
                ';' | '&' | '|' | '(' | ')' | '`' => {
                    self.end_command();
                    self.pos += 1;
                }
                '$' if self.peek(1) == Some('(') => {
                    self.end_command();
                    self.pos += 2;
                }
                '>' | '<' => self.redirection(c),
                _ => {
                    self.push_char(c);
                    self.pos += 1;
                }
            }
        }
        self.end_command();
    }

    fn start_word(&mut self) {
        if self.word.is_none() {
            self.word = Some(String::new());
            if self.current.line == 0 {
                self.current.line = self.line;
            }
        }
    }

    fn push_char(&mut self, c: char) {
        self.start_word();
        if let Some(word) = self.word.as_mut() {
            word.push(c);
        }
    }

    /// The rest of a quoted string (after its opening quote), into the current word.
    fn quoted(&mut self, quote: char) {
        self.start_word();
        while let Some(c) = self.peek(0) {
            self.pos += 1;
            match c {
                _ if c == quote => return,
                '\\' if quote == '"' => {
                    if let Some(next) = self.peek(0) {
                        self.pos += 1;
                        if next == '\n' {
                            self.line += 1;
                        } else {
                            self.push_char(next);
                        }
                    }
                }
                '\n' => {
                    self.line += 1;
                    self.push_char(c);
                }
                _ => self.push_char(c),
            }
        }
    }

    fn redirection(&mut self, c: char) {
        // `2>>log`: the digits before the operator are its file descriptor, not a word.
        if self
            .word
            .as_deref()
            .is_some_and(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_digit()))
        {
            self.word = None;
        }
        self.end_word();
        if self.current.line == 0 {
            self.current.line = self.line;
        }
        let (kind, len) = match (c, self.peek(1), self.peek(2)) {
            ('>', Some('>'), _) => (Redirect::Append, 2),
            ('>', Some('&' | '|'), _) => (Redirect::Other, 2),
            ('<', Some('<'), Some('<')) => (Redirect::Other, 3),
            ('<', Some('<'), Some('-')) => (Redirect::Heredoc { strip_tabs: true }, 3),
            ('<', Some('<'), _) => (Redirect::Heredoc { strip_tabs: false }, 2),
            ('<', Some('&' | '>'), _) => (Redirect::Other, 2),
            _ => (Redirect::Other, 1),
        };
        self.redirect = Some(kind);
        self.pos += len;
    }

    fn end_word(&mut self) {
        let Some(word) = self.word.take() else {
            return;
        };
        match self.redirect.take() {
            Some(Redirect::Append) => self.current.appends.push(word),
            Some(Redirect::Heredoc { strip_tabs }) => self.heredocs.push((word, strip_tabs)),
            Some(Redirect::Other) => {}
            None => self.current.words.push(word),
        }
    }

    fn end_command(&mut self) {
        self.end_word();
        self.redirect = None;
        let command = std::mem::take(&mut self.current);
        if !command.words.is_empty() || !command.appends.is_empty() {
            self.commands.push(command);
        }
    }

    /// Skips the bodies of the here-documents the line just ended started.
    fn skip_heredocs(&mut self) {
        for (delimiter, strip_tabs) in std::mem::take(&mut self.heredocs) {
            while self.pos < self.chars.len() {
                let start = self.pos;
                while self.peek(0).is_some_and(|c| c != '\n') {
                    self.pos += 1;
                }
                let line: String = self.chars[start..self.pos].iter().collect();
                if self.peek(0) == Some('\n') {
                    self.pos += 1;
                    self.line += 1;
                }
                let line = line.trim_end_matches('\r');
                let line = if strip_tabs {
                    line.trim_start_matches('\t')
                } else {
                    line
                };
                if line == delimiter {
                    break;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Quadlet files and user units

/// A file under the Quadlet directory that lint read (inside the tree, regular, not too large).
#[derive(Debug)]
struct SystemdFile {
    /// Relative to the Quadlet directory (where it goes in the generator's unit directory).
    rel: PathBuf,
    /// Its path in the tree.
    path: PathBuf,
    text: String,
    unit: UnitFile,
}

impl SystemdFile {
    fn file_name(&self) -> String {
        self.rel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    fn quadlet(&self) -> Option<QuadletName> {
        QuadletName::parse(&self.file_name())
    }
}

/// A systemd-style unit file as far as lint needs it: its keys with their sections and lines.
#[derive(Debug, Default)]
struct UnitFile {
    entries: Vec<UnitEntry>,
    sections: Vec<String>,
    /// Lines that are no `[Section]`, `KEY=VALUE` or comment.
    bad_lines: Vec<usize>,
}

#[derive(Debug)]
struct UnitEntry {
    line: usize,
    section: String,
    key: String,
    value: String,
}

impl UnitFile {
    fn parse(text: &str) -> UnitFile {
        let mut unit = UnitFile::default();
        let mut section = String::new();
        // A value that continues on the next line (`\` at the end).
        let mut pending: Option<UnitEntry> = None;
        for (index, raw) in text.split('\n').enumerate() {
            let raw = raw.trim_end_matches('\r');
            if let Some(entry) = pending.as_mut() {
                let (part, more) = continued(raw);
                entry.value.push(' ');
                entry.value.push_str(part.trim());
                if !more {
                    unit.entries.extend(pending.take());
                }
                continue;
            }
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with(['#', ';']) {
                continue;
            }
            if let Some(name) = trimmed.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
                section = name.to_string();
                unit.sections.push(section.clone());
                continue;
            }
            let Some((key, value)) = trimmed.split_once('=') else {
                unit.bad_lines.push(index + 1);
                continue;
            };
            let (value, more) = continued(value);
            let entry = UnitEntry {
                line: index + 1,
                section: section.clone(),
                key: key.trim().to_string(),
                value: value.trim().to_string(),
            };
            if more {
                pending = Some(entry);
            } else {
                unit.entries.push(entry);
            }
        }
        unit.entries.extend(pending);
        unit
    }

    fn find(&self, section: &str, key: &str) -> Option<&UnitEntry> {
        self.entries
            .iter()
            .find(|e| e.section == section && e.key == key)
    }
}

fn continued(value: &str) -> (&str, bool) {
    match value.strip_suffix('\\') {
        Some(part) => (part, true),
        None => (value, false),
    }
}

/// The files of the Quadlet directory, walked without following symlinked directories.
fn systemd_files(tree: &Tree, dir: &Path, out: &mut Findings) -> Vec<SystemdFile> {
    let mut files = Vec::new();
    walk_systemd_dir(tree, dir, Path::new(""), 0, &mut files, out);
    files
}

fn walk_systemd_dir(
    tree: &Tree,
    dir: &Path,
    rel: &Path,
    depth: usize,
    files: &mut Vec<SystemdFile>,
    out: &mut Findings,
) {
    if depth > MAX_DEPTH {
        out.warning(
            tree.show(dir),
            format!("deeper than {MAX_DEPTH} directories: not checked"),
        );
        return;
    }
    let names = match sorted_names(dir) {
        Ok(names) => names,
        Err(e) => {
            out.warning(tree.show(dir), format!("cannot read it ({e}): not checked"));
            return;
        }
    };
    for name in names {
        let path = dir.join(&name);
        let rel = rel.join(&name);
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            walk_systemd_dir(tree, &path, &rel, depth + 1, files, out);
            continue;
        }
        let real = if meta.is_symlink() {
            let Some(real) = tree.readable(&path, out) else {
                continue;
            };
            real
        } else {
            path.clone()
        };
        if !fs::metadata(&real).is_ok_and(|m| m.is_file()) {
            out.warning(
                tree.show(&path),
                "not a regular file (a directory behind a symlink, a fifo, a device): not checked",
            )
            .fix("the Quadlet directory holds unit files and drop-in directories only");
            continue;
        }
        match read_text(&real) {
            Ok(text) => files.push(SystemdFile {
                unit: UnitFile::parse(&text),
                rel,
                path,
                text,
            }),
            Err(e) => {
                out.warning(
                    tree.show(&path),
                    format!("cannot read it ({e}): not checked"),
                );
            }
        }
    }
}

fn check_quadlets(tree: &Tree, images: Option<&[String]>, options: &Options, out: &mut Findings) {
    let dir = tree.root.join(QUADLET_DIR);
    match fs::symlink_metadata(&dir) {
        Err(_) => return,
        Ok(m) if !m.is_dir() => {
            out.warning(
                tree.show(&dir),
                "not a directory (a symlink or a file): not checked",
            )
            .fix("make it a directory of the tree");
            return;
        }
        Ok(_) => {}
    }
    let files = systemd_files(tree, &dir, out);
    let mut without_image = Vec::new();
    for file in &files {
        if let Some(name) = file.quadlet() {
            let dropins = dropins_of(file, &files);
            if !check_quadlet(tree, file, &name, &dropins, images, out) {
                without_image.push(file.rel.clone());
            }
        }
    }
    if files.iter().any(|f| f.quadlet().is_some()) {
        check_with_generator(tree, &dir, &files, &without_image, options, out);
    }
}

/// The drop-ins of a Quadlet file: `NAME.container.d/*.conf` beside it.
fn dropins_of<'a>(file: &SystemdFile, files: &'a [SystemdFile]) -> Vec<&'a SystemdFile> {
    let dir = file.rel.with_file_name(format!("{}.d", file.file_name()));
    files
        .iter()
        .filter(|f| {
            f.rel.parent() == Some(dir.as_path()) && f.rel.extension().is_some_and(|e| e == "conf")
        })
        .collect()
}

/// The checks of one Quadlet file (with its drop-ins); false when a `.container` has no image.
fn check_quadlet(
    tree: &Tree,
    file: &SystemdFile,
    name: &QuadletName,
    dropins: &[&SystemdFile],
    images: Option<&[String]>,
    out: &mut Findings,
) -> bool {
    let shown = tree.show(&file.path);
    let section = name.kind.section();
    let all: Vec<(String, &UnitEntry)> = std::iter::once(file)
        .chain(dropins.iter().copied())
        .flat_map(|f| {
            let shown = tree.show(&f.path);
            f.unit.entries.iter().map(move |e| (shown.clone(), e))
        })
        .filter(|(_, e)| e.section == section)
        .collect();
    let values = |key: &'static str| all.iter().filter(move |(_, e)| e.key == key);
    let mut has_image = true;
    if name.kind == QuadletKind::Container {
        let image_entries: Vec<&(String, &UnitEntry)> = values("Image")
            .filter(|(_, e)| !e.value.is_empty())
            .collect();
        if image_entries.is_empty() && values("Rootfs").next().is_none() {
            has_image = false;
            out.error(
                &shown,
                "no Image= in [Container]: the generator makes no service of it",
            )
            .fix("Image=REF, one of the images the module's images label lists");
        }
        if let Some(images) = images {
            for (path, entry) in image_entries {
                check_image_listed(path, entry, images, out);
            }
        }
        let healthcheck = values("HealthCmd")
            .any(|(_, e)| !e.value.is_empty() && !e.value.eq_ignore_ascii_case("none"));
        for (path, entry) in
            values("Notify").filter(|(_, e)| e.value.eq_ignore_ascii_case("healthy"))
        {
            if !healthcheck {
                out.error(
                    path,
                    "Notify=healthy without HealthCmd=: podman waits for the container to turn \
                     healthy, which without a health check it never does, so its start fails \
                     after TimeoutStartSec",
                )
                .at(entry.line)
                .fix("add HealthCmd= (a command that succeeds once the container serves), or use Notify=true");
            }
        }
    }
    if name.kind == QuadletKind::Container {
        for key in COMMAND_LINE_KEYS {
            for (path, entry) in values(key).filter(|(_, e)| expands_braced_variable(&e.value)) {
                out.warning(
                    path,
                    format!(
                        "{key}= has ${{...}}: it ends up in the generated ExecStart=, where systemd \
                         replaces ${{NAME}} with the value of its own environment (usually empty) \
                         before the container's shell sees it"
                    ),
                )
                .at(entry.line)
                .fix("write $${NAME} for the container's shell, or Environment=NAME=... for a value systemd should put in");
            }
        }
    }
    let in_pod = name.kind == QuadletKind::Container && values("Pod").next().is_some();
    let starts_by_itself = matches!(
        name.kind,
        QuadletKind::Container | QuadletKind::Pod | QuadletKind::Kube
    );
    let has_install = std::iter::once(file)
        .chain(dropins.iter().copied())
        .any(|f| f.unit.sections.iter().any(|s| s == "Install"));
    if starts_by_itself && !in_pod && !has_install {
        out.warning(
            &shown,
            "no [Install] section: the unit does not start at boot (a generated unit cannot be \
             enabled)",
        )
        .fix("add [Install] with WantedBy=default.target");
    }
    has_image
}

/// The [Container] keys whose values become words of the generated `ExecStart=` (podman's command
/// line), where systemd expands `${NAME}` and `$NAME` (systemd.service(5), "Command lines").
const COMMAND_LINE_KEYS: [&str; 5] = [
    "Exec",
    "Entrypoint",
    "HealthCmd",
    "HealthStartupCmd",
    "PodmanArgs",
];

/// Whether `value` has a `${` that systemd would expand (`$$` is its escape for one `$`).
fn expands_braced_variable(value: &str) -> bool {
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c == '$' {
            match chars.next() {
                Some('{') => return true,
                _ => continue,
            }
        }
    }
    false
}

fn check_image_listed(path: &str, entry: &UnitEntry, images: &[String], out: &mut Findings) {
    let image = &entry.value;
    // `Image=base.image` / `Image=app.build` name another Quadlet unit, which makes the image.
    if image.ends_with(".image") || image.ends_with(".build") || images.contains(image) {
        return;
    }
    let listed = if images.is_empty() {
        "which is empty".to_string()
    } else {
        format!("which lists {}", images.join(" "))
    };
    out.error(
        path,
        format!(
            "Image={image} is not in the label {} ({listed}): the node copies only the listed \
             images into the module's storage",
            module_image::IMAGES
        ),
    )
    .at(entry.line)
    .fix(format!(
        "add {image} to the label {} in the Containerfile",
        module_image::IMAGES
    ));
}

/// Runs Podman's generator over a copy of the Quadlet directory (the copy holds only the files
/// lint read, so the generator follows no symlink out of the tree) and turns what it prints into
/// findings.
fn check_with_generator(
    tree: &Tree,
    dir: &Path,
    files: &[SystemdFile],
    without_image: &[PathBuf],
    options: &Options,
    out: &mut Findings,
) {
    let shown_dir = tree.show(dir);
    if !options.generator.is_file() {
        out.warning(
            &shown_dir,
            format!(
                "the Quadlet files were not checked by Podman's generator: {} is not installed \
                 here (Podman 5.4 of Debian 13 has it), so unknown keys and bad values go \
                 unnoticed",
                options.generator.display()
            ),
        )
        .fix("run module-sdk lint where podman is installed (a Debian 13 node)");
        for file in files.iter().filter(|f| f.quadlet().is_some()) {
            for line in &file.unit.bad_lines {
                out.error(
                    tree.show(&file.path),
                    "not a [Section], KEY=VALUE or comment line",
                )
                .at(*line)
                .fix("each line is KEY=VALUE, [Section] or a comment");
            }
        }
        return;
    }
    let not_checked = |out: &mut Findings, why: String| {
        out.warning(
            &shown_dir,
            format!("the Quadlet files were not checked by Podman's generator: {why}"),
        );
    };
    let stage = match stage_files(files) {
        Ok(stage) => stage,
        Err(e) => {
            return not_checked(
                out,
                format!("cannot copy them to a temporary directory: {e}"),
            )
        }
    };
    let mut command = Command::new(&options.generator);
    command
        .args(["-dryrun", "-user"])
        .env("QUADLET_UNIT_DIRS", stage.path());
    if options.verbose {
        eprintln!(
            "module-sdk lint: QUADLET_UNIT_DIRS={} {} -dryrun -user",
            stage.path().display(),
            options.generator.display()
        );
    }
    let output = match run_bounded(&mut command, GENERATOR_TIMEOUT) {
        Ok(Some(output)) => output,
        Ok(None) => {
            return not_checked(
                out,
                format!(
                    "{} did not finish within {GENERATOR_TIMEOUT:?}",
                    options.generator.display()
                ),
            )
        }
        Err(e) => {
            return not_checked(
                out,
                format!("cannot run {}: {e}", options.generator.display()),
            )
        }
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    let generator = GeneratorOutput {
        tree,
        stage: stage.path(),
        files,
    };
    for (severity, message) in generator_messages(&stderr) {
        if severity == Severity::Error && message.contains("no Image or Rootfs key specified") {
            // Already said by lint's own check, with advice.
            if generator
                .file_of(message)
                .is_some_and(|f| without_image.contains(&f.rel))
            {
                continue;
            }
        }
        generator.report(severity, message, &shown_dir, out);
    }
}

/// A temporary copy of the files lint read, in their places.
fn stage_files(files: &[SystemdFile]) -> std::io::Result<tempfile::TempDir> {
    let stage = tempfile::Builder::new()
        .prefix("module-sdk-lint-quadlet-")
        .tempdir()?;
    for file in files {
        let dest = stage.path().join(&file.rel);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(&dest, &file.text)?;
    }
    Ok(stage)
}

/// Runs `command` with its output captured; `None` (and the child killed) when it takes longer
/// than `timeout`.
fn run_bounded(command: &mut Command, timeout: Duration) -> std::io::Result<Option<Output>> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let reader = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = reader(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = reader(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Ok(Some(Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }))
}

/// The generator's messages that are findings, without its `quadlet-generator[PID]: ` prefix.
/// It logs which files it loads; a message of several lines has the prefix on its first only.
fn generator_messages(stderr: &str) -> Vec<(Severity, &str)> {
    const PROGRESS: &[&str] = &[
        "Loading source unit file",
        "Loading source drop-in file",
        "Starting quadlet-generator",
        // Said after load errors, which are reported themselves.
        "No files parsed from",
    ];
    stderr
        .lines()
        .map(|line| {
            line.strip_prefix("quadlet-generator[")
                .and_then(|rest| rest.split_once("]: "))
                .map_or(line, |(_, message)| message)
                .trim()
        })
        .filter(|m| !m.is_empty() && !PROGRESS.iter().any(|p| m.starts_with(p)))
        .map(|m| match m.strip_prefix("Warning: ") {
            Some(warning) => (Severity::Warning, warning),
            None => (Severity::Error, m),
        })
        .collect()
}

/// Maps the generator's messages about the staged copy back to the tree's files and lines.
struct GeneratorOutput<'a> {
    tree: &'a Tree,
    stage: &'a Path,
    files: &'a [SystemdFile],
}

impl GeneratorOutput<'_> {
    /// The file a message is about: by its staged path (the longest that occurs), else by the
    /// file name it names first (`converting "NAME": …`, `NAME specifies …`).
    fn file_of(&self, message: &str) -> Option<&SystemdFile> {
        let by_path = self
            .files
            .iter()
            .filter(|f| message.contains(&*self.stage.join(&f.rel).to_string_lossy()))
            .max_by_key(|f| f.rel.as_os_str().len());
        by_path.or_else(|| {
            let name = message
                .strip_prefix("converting \"")
                .and_then(|rest| rest.split_once('"'))
                .map(|(name, _)| name)
                .or_else(|| message.split_whitespace().next())?;
            self.files.iter().find(|f| f.file_name() == name)
        })
    }

    fn report(&self, severity: Severity, message: &str, shown_dir: &str, out: &mut Findings) {
        let file = self.file_of(message);
        let mut text = message.to_string();
        // The file is the finding's path: the message need not say it again.
        if let Some(rest) = text
            .strip_prefix("converting \"")
            .and_then(|rest| rest.split_once("\": "))
            .map(|(_, rest)| rest.to_string())
        {
            text = rest;
        }
        if let Some(file) = file {
            let staged = self.stage.join(&file.rel).to_string_lossy().into_owned();
            for prefix in [
                format!("error loading {staged:?}, "),
                format!("error loading \"{staged}\", "),
            ] {
                if let Some(rest) = text.strip_prefix(&prefix) {
                    text = rest.to_string();
                }
            }
            if let Some(rest) = text.strip_suffix(&format!(" in {staged}")) {
                text = rest.to_string();
            }
        }
        // Paths of other staged files, as the tree names them.
        for other in self.files {
            let staged = self.stage.join(&other.rel).to_string_lossy().into_owned();
            text = text.replace(&staged, &self.tree.show(&other.path));
        }
        let text = text.replace(&*self.stage.to_string_lossy(), shown_dir);
        let path = file.map_or_else(|| shown_dir.to_string(), |f| self.tree.show(&f.path));
        let line = file.and_then(|f| line_of(f, &text));
        let finding = out.push(severity, path, format!("quadlet generator: {text}"));
        finding.at(line);
        if text.contains("unsupported key") {
            finding.fix(
                "podman-systemd.unit(5) lists the keys Podman's generator supports; options \
                 without a key go into PodmanArgs=",
            );
        } else if text.contains("not a key-value pair") {
            finding.fix("each line is KEY=VALUE, [Section] or a comment");
        }
    }
}

/// The line a generator message is about: the one it names (`line N`), the key it names
/// (`unsupported key 'K' in group 'G'`), or the first `KEY=VALUE` whose value it quotes.
fn line_of(file: &SystemdFile, message: &str) -> Option<usize> {
    if let Some(n) = message.split("line ").skip(1).find_map(|rest| {
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    }) {
        return Some(n);
    }
    if let Some(rest) = message.split("key '").nth(1) {
        let key = rest.split('\'').next().unwrap_or("");
        let group = message
            .split("group '")
            .nth(1)
            .and_then(|g| g.split('\'').next());
        let entry = match group {
            Some(group) => file.unit.find(group, key),
            None => file.unit.entries.iter().find(|e| e.key == key),
        };
        if let Some(entry) = entry {
            return Some(entry.line);
        }
    }
    // A quoted value is what the message is about, however short; a bare word only when it is
    // not a common one.
    let own_name = file.file_name();
    let quoted = message.split('"').skip(1).step_by(2);
    let bare = message
        .split(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | ',' | ':' | '“' | '”'))
        .filter(|w| w.len() >= 3);
    quoted
        .chain(bare)
        .filter(|w| *w != own_name)
        .find_map(|w| file.unit.entries.iter().find(|e| e.value == w))
        .map(|e| e.line)
}

/// Plain user units (the way before Quadlet) whose ExecStart runs `podman run`.
fn check_user_units(tree: &Tree, out: &mut Findings) {
    let dir = tree.root.join(USER_UNITS_DIR);
    if !fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
        return;
    }
    let Ok(names) = sorted_names(&dir) else {
        return;
    };
    for name in names {
        let path = dir.join(&name);
        if !name.to_string_lossy().ends_with(".service") {
            continue;
        }
        let Some(real) = tree.readable(&path, out) else {
            continue;
        };
        let Ok(text) = read_text(&real) else {
            continue;
        };
        let unit = UnitFile::parse(&text);
        for entry in unit
            .entries
            .iter()
            .filter(|e| e.section == "Service" && e.key == "ExecStart" && runs_podman_run(&e.value))
        {
            out.hint(
                tree.show(&path),
                "a user unit around `podman run`: modules run their containers as Quadlet files, \
                 which the generator turns into units like this",
            )
            .at(entry.line)
            .fix("write imageroot/.config/containers/systemd/NAME.container instead (docs/MODULES.md)");
        }
    }
}

fn runs_podman_run(exec: &str) -> bool {
    // ExecStart= prefixes: - @ : + ! change how systemd runs the command, not what it is.
    let command = exec.trim_start_matches(['-', '@', ':', '+', '!']);
    let words = shlex::split(command)
        .unwrap_or_else(|| command.split_whitespace().map(String::from).collect());
    let Some(at) = words.iter().position(|w| basename(w) == "podman") else {
        return false;
    };
    let mut rest = words[at + 1..].iter().filter(|w| !w.starts_with('-'));
    match rest.next().map(String::as_str) {
        Some("run") => true,
        Some("container") => rest.next().is_some_and(|w| w == "run"),
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// Signature

fn check_signature(tree: &Tree, trust_dir: &Path, out: &mut Findings) {
    let sign = format!("module-sdk sign --key KEY.tsk {}", tree.source);
    let sign_again = format!("sign again: {sign}");
    let verdict = match module_signing::verify(&tree.root, trust_dir, Policy::Warn) {
        Ok(verdict) => verdict,
        Err(e) => {
            out.error(
                &tree.shown,
                format!("the signature could not be checked: {e}"),
            );
            return;
        }
    };
    let signature = tree.show(&tree.root.join(SIGNATURE_FILE));
    let manifest = tree.show(&tree.root.join(MANIFEST_FILE));
    match &verdict.signature {
        SignatureStatus::Unsigned { reason } => {
            out.warning(
                &tree.shown,
                format!("not signed ({reason}): nodes that require signed modules refuse it"),
            )
            .fix(&sign);
        }
        SignatureStatus::Bad { reason } => {
            out.error(&signature, format!("bad signature: {reason}"))
                .fix(&sign_again);
        }
        SignatureStatus::Untrusted { issuers } => {
            out.hint(
                &signature,
                format!(
                    "signed by {}, a key with no certificate in {}: a node accepts it once the \
                     certificate is in its trust directory",
                    issuers.join(", "),
                    trust_dir.display()
                ),
            )
            .fix(format!(
                "copy the signer's certificate (KEY.asc) into {} on the nodes, or lint with \
                 --trust-dir DIR",
                trust_dir.display()
            ));
        }
        SignatureStatus::Good { .. } | SignatureStatus::NotChecked => {}
    }
    if let Some(problem) = &verdict.manifest_problem {
        out.error(&manifest, format!("the MANIFEST is invalid: {problem}"))
            .fix(&sign_again);
    }
    for modified in &verdict.changes.modified {
        out.error(
            tree.show(&tree.root.join(&modified.path)),
            format!(
                "differs from MANIFEST ({}): changed after signing",
                modified.what
            ),
        )
        .fix(&sign_again);
    }
    for missing in &verdict.changes.missing {
        out.error(
            tree.show(&tree.root.join(missing)),
            "listed in MANIFEST, but missing: removed after signing",
        )
        .fix(&sign_again);
    }
    for extra in &verdict.changes.extra {
        out.error(
            tree.show(&tree.root.join(extra)),
            "not in MANIFEST: added after signing",
        )
        .fix(&sign_again);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    const HELLO_CONTAINERFILE: &str = "\
FROM scratch
COPY imageroot /imageroot
LABEL org.agent-system.module.imageroot=\"/imageroot\" \\
      org.agent-system.module.images=\"localhost/agent-busybox:latest\" \\
      org.opencontainers.image.title=\"t\" \\
      org.opencontainers.image.description=\"d\"
";
    const GOOD_STEP: &str = "#!/bin/sh\nset -eu\necho hi\n";
    const GOOD_CONTAINER: &str = "[Container]\nImage=localhost/agent-busybox:latest\n\
                                  Exec=sleep infinity\n\n[Install]\nWantedBy=default.target\n";

    /// A module source directory in a temporary directory.
    struct Module {
        dir: tempfile::TempDir,
    }

    impl Module {
        /// A module with nothing to complain about but its missing signature.
        fn good() -> Module {
            let m = Module {
                dir: tempfile::tempdir().unwrap(),
            };
            m.write("Containerfile", HELLO_CONTAINERFILE, 0o644);
            m.write(
                "imageroot/.config/module-events/module.init/10start",
                GOOD_STEP,
                0o755,
            );
            m.write(
                "imageroot/.config/containers/systemd/app.container",
                GOOD_CONTAINER,
                0o644,
            );
            m
        }

        fn path(&self, rel: &str) -> PathBuf {
            self.dir.path().join(rel)
        }

        fn write(&self, rel: &str, content: &str, mode: u32) {
            let path = self.path(rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, content).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        }

        fn shown(&self, rel: &str) -> String {
            format!("{}/{rel}", self.dir.path().display())
        }

        /// Lint findings without the generator (absent on this host or not: the same result).
        fn lint(&self) -> Vec<Finding> {
            lint_with(&self.dir.path().to_string_lossy(), "/nonexistent/quadlet")
        }

        fn lint_dir(&self, rel: &str) -> Vec<Finding> {
            lint_with(&self.path(rel).to_string_lossy(), "/nonexistent/quadlet")
        }
    }

    fn mkfifo(path: &Path) {
        let status = Command::new("mkfifo").arg(path).status().unwrap();
        assert!(status.success(), "mkfifo {}", path.display());
    }

    fn options(generator: &str, trust_dir: &Path) -> Options {
        Options {
            trust_dir: trust_dir.to_path_buf(),
            generator: PathBuf::from(generator),
            verbose: false,
        }
    }

    fn lint_with(target: &str, generator: &str) -> Vec<Finding> {
        lint(target, &options(generator, Path::new("/nonexistent/trust"))).unwrap()
    }

    /// The findings about the tree's content: without the two every unsigned tree linted
    /// without the generator has.
    fn content(findings: &[Finding]) -> Vec<&Finding> {
        findings
            .iter()
            .filter(|f| {
                !f.message.starts_with("not signed")
                    && !f.message.contains("not checked by Podman's generator")
            })
            .collect()
    }

    /// The one finding at `path` whose message contains `words`.
    fn find<'a>(findings: &'a [Finding], path: &str, words: &str) -> &'a Finding {
        let found: Vec<&Finding> = findings
            .iter()
            .filter(|f| f.path == path && f.message.contains(words))
            .collect();
        assert_eq!(found.len(), 1, "{words:?} at {path} in {findings:#?}");
        found[0]
    }

    #[test]
    fn a_good_module_has_only_its_missing_signature_and_generator_to_say() {
        let m = Module::good();
        let findings = m.lint();
        assert!(content(&findings).is_empty(), "{findings:#?}");
        let unsigned = find(&findings, &m.shown("imageroot"), "not signed");
        assert_eq!(unsigned.severity, Severity::Warning);
        assert_eq!(
            unsigned.fix.as_deref(),
            Some(&*format!(
                "module-sdk sign --key KEY.tsk {}",
                m.shown("imageroot")
            ))
        );
        let generator = find(
            &findings,
            &m.shown("imageroot/.config/containers/systemd"),
            "/nonexistent/quadlet is not installed",
        );
        assert_eq!(generator.severity, Severity::Warning);
        assert_eq!(exit_code_of(&findings, false), 0);
        assert_eq!(exit_code_of(&findings, true), FAILED);
        // The imageroot alone lints the same (without the labels).
        assert_eq!(
            content(&m.lint_dir("imageroot")).len(),
            0,
            "{:#?}",
            m.lint_dir("imageroot")
        );
    }

    /// The example modules: no errors, and no warnings but the signature they do not have (and,
    /// on a host without Podman's generator — this one is Debian 12 — the Quadlet files not
    /// checked by it; with the generator, as on a Debian 13 node, they pass it too).
    #[test]
    fn the_example_modules_lint_clean() {
        let have_generator = Path::new(GENERATOR).is_file();
        if !have_generator {
            eprintln!("{GENERATOR} is missing here: the examples are linted without the generator");
        }
        for module in ["hello", "pair"] {
            let dir = format!(
                "{}/../examples/modules/{module}",
                env!("CARGO_MANIFEST_DIR")
            );
            let findings = lint_with(&dir, GENERATOR);
            let unexpected: Vec<&Finding> = findings
                .iter()
                .filter(|f| {
                    !(f.severity == Severity::Warning
                        && (f.message.starts_with("not signed")
                            || (!have_generator
                                && f.message.contains("not checked by Podman's generator"))))
                })
                .collect();
            assert!(unexpected.is_empty(), "{module}: {unexpected:#?}");
            assert!(findings.iter().any(|f| f.message.starts_with("not signed")));
        }
    }

    #[test]
    fn labels_are_checked_where_the_containerfile_sets_them() {
        let m = Module::good();
        m.write(
            "Containerfile",
            "# a comment\n\
             FROM scratch AS base\n\
             LABEL org.opencontainers.image.title=\"from the base stage\"\n\
             FROM base\n\
             COPY imageroot /imageroot\n\
             \n\
             label org.agent-system.module.imageroot='/imageroot' \\\n\
             \x20   # a comment inside the instruction\n\
             \x20   org.agent-system.module.images=\"localhost/agent-busybox:latest docker.io/library/redis:7\"\n\
             LABEL org.agent-system.module.rootful=maybe\n",
            0o644,
        );
        m.write(
            "imageroot/.config/containers/systemd/app.container",
            "[Container]\nImage=localhost/agent-busybox:latest\nImage=docker.io/library/nginx:1\n\
             Image=base.image\n[Install]\nWantedBy=default.target\n",
            0o644,
        );
        let findings = m.lint();
        let containerfile = m.shown("Containerfile");
        let rootful = find(&findings, &containerfile, "org.agent-system.module.rootful");
        assert_eq!(
            (rootful.severity, rootful.line),
            (Severity::Error, Some(10))
        );
        assert!(
            rootful.message.contains("'maybe' (true or false)"),
            "{}",
            rootful.message
        );
        // The title comes from the stage the image is built FROM; the description is missing.
        let description = find(
            &findings,
            &containerfile,
            "org.opencontainers.image.description",
        );
        assert_eq!(
            (description.severity, description.line),
            (Severity::Warning, None)
        );
        assert!(
            !findings.iter().any(|f| f.message.contains("image.title")),
            "{findings:#?}"
        );
        let not_listed = find(
            &findings,
            &m.shown("imageroot/.config/containers/systemd/app.container"),
            "Image=docker.io/library/nginx:1 is not in the label org.agent-system.module.images",
        );
        assert_eq!(
            (not_listed.severity, not_listed.line),
            (Severity::Error, Some(3))
        );
        assert!(not_listed
            .message
            .contains("which lists localhost/agent-busybox:latest docker.io/library/redis:7"));
        assert_eq!(content(&findings).len(), 3, "{findings:#?}");

        let source = SourceLabels::parse(
            "FROM scratch\nLABEL a=\"1\" b='two words' \\\n  c=3\nLABEL old form value\n",
        );
        assert_eq!(source.labels["b"], "two words");
        assert_eq!(source.labels["c"], "3");
        assert_eq!(source.labels["old"], "form value");
        assert_eq!(source.lines["c"], 2);
        assert_eq!(source.lines["old"], 4);
        let source = SourceLabels::parse("FROM scratch\nLABEL a=\"1\nLABEL =x\n");
        assert_eq!(source.problems.len(), 2, "{:?}", source.problems);
        assert_eq!(source.problems[0].0, 2);
        // Labels of a stage the image is not built from do not count.
        let source = SourceLabels::parse("FROM a AS build\nLABEL x=1\nFROM scratch\nLABEL y=2\n");
        assert!(!source.labels.contains_key("x") && source.labels["y"] == "2");
    }

    #[test]
    fn a_containerfile_without_module_labels_or_copying_imageroot_elsewhere() {
        let m = Module::good();
        m.write(
            "Containerfile",
            "FROM scratch\nCOPY imageroot/ /srv/root/\n",
            0o644,
        );
        let findings = m.lint();
        let containerfile = m.shown("Containerfile");
        let missing = find(
            &findings,
            &containerfile,
            "has no label org.agent-system.module.imageroot",
        );
        assert_eq!(missing.severity, Severity::Error);
        assert!(missing
            .fix
            .as_deref()
            .unwrap()
            .contains("org.agent-system.module.imageroot=\"/imageroot\""));
        // Every Image= fails: the images label is empty.
        let app = m.shown("imageroot/.config/containers/systemd/app.container");
        assert!(find(&findings, &app, "is not in the label")
            .message
            .contains("which is empty"));

        m.write(
            "Containerfile",
            "FROM scratch\nCOPY imageroot/ /srv/root/\nLABEL org.agent-system.module.imageroot=/imageroot \
             org.agent-system.module.images=localhost/agent-busybox:latest \
             org.opencontainers.image.title=t org.opencontainers.image.description=d\n",
            0o644,
        );
        let findings = m.lint();
        let copy = find(
            &findings,
            &containerfile,
            "COPY puts imageroot/ at /srv/root/",
        );
        assert_eq!((copy.severity, copy.line), (Severity::Error, Some(2)));
        assert_eq!(copy.fix.as_deref(), Some("COPY imageroot /imageroot"));
        assert_eq!(content(&findings).len(), 1, "{findings:#?}");
    }

    #[test]
    fn the_layout_is_checked_as_the_engine_plans_it() {
        let m = Module::good();
        let events = "imageroot/.config/module-events";
        m.write(&format!("{events}/module.init/20plain"), GOOD_STEP, 0o644);
        m.write(
            &format!("{events}/module.init/30noshebang"),
            "set -eu\necho hi\n",
            0o755,
        );
        m.write(
            &format!("{events}/module.init/40crlf"),
            "#!/bin/sh\r\nset -eu\r\n",
            0o755,
        );
        m.write(
            &format!("{events}/module.init/50relative"),
            "#!sh\nset -eu\n",
            0o755,
        );
        m.write(
            &format!("{events}/module.init/60elf"),
            "\x7fELF\x02\x01\x01\0\0\0",
            0o755,
        );
        m.write(
            &format!("{events}/module.init/70leftover~"),
            GOOD_STEP,
            0o755,
        );
        fs::create_dir(m.path(&format!("{events}/module.init/80dir"))).unwrap();
        symlink(
            "/dev/null",
            m.path(&format!("{events}/module.init/90masked")),
        )
        .unwrap();
        m.write(&format!("{events}/module.init/.timeout"), "0\n", 0o644);
        m.write(&format!("{events}/configure/.retries"), "many\n", 0o644);
        m.write(&format!("{events}/configure/10x"), GOOD_STEP, 0o755);
        m.write(&format!("{events}/bad name/10x"), GOOD_STEP, 0o755);
        m.write(&format!("{events}/README.md"), "not an event\n", 0o644);
        let findings = m.lint();
        let at = |rel: &str| m.shown(&format!("{events}/{rel}"));

        let plain = find(
            &findings,
            &at("module.init/20plain"),
            "the engine skips this step: not executable",
        );
        assert_eq!(plain.severity, Severity::Error);
        assert_eq!(
            plain.fix.as_deref(),
            Some(&*format!("chmod +x {}", at("module.init/20plain")))
        );
        let noshebang = find(&findings, &at("module.init/30noshebang"), "no #! line");
        assert_eq!(
            (noshebang.severity, noshebang.line),
            (Severity::Error, Some(1))
        );
        let crlf = find(&findings, &at("module.init/40crlf"), "carriage return");
        assert_eq!((crlf.severity, crlf.line), (Severity::Error, Some(1)));
        find(
            &findings,
            &at("module.init/50relative"),
            "is not an absolute path",
        );
        assert_eq!(
            find(&findings, &at("module.init/70leftover~"), "never runs").severity,
            Severity::Hint
        );
        find(
            &findings,
            &at("module.init/80dir"),
            "the engine skips this step: not a regular file",
        );
        assert_eq!(
            find(&findings, &at("module.init/90masked"), "masked").severity,
            Severity::Hint
        );
        let timeout = find(
            &findings,
            &at("module.init/.timeout"),
            "timeout must be > 0",
        );
        assert_eq!(timeout.severity, Severity::Error);
        find(&findings, &at("configure/.retries"), "\"many\"");
        let name = find(&findings, &at("bad name"), "not an event name");
        assert_eq!(name.severity, Severity::Error);
        assert_eq!(content(&findings).len(), 10, "{findings:#?}");

        // No module.init: a warning; no module-events at all: an error.
        fs::remove_dir_all(m.path(&format!("{events}/module.init"))).unwrap();
        let findings = m.lint();
        let no_init = find(&findings, &m.shown(events), "no module.init/");
        assert_eq!(no_init.severity, Severity::Warning);
        fs::remove_dir_all(m.path(events)).unwrap();
        let findings = m.lint();
        let missing = find(&findings, &m.shown(events), "missing");
        assert_eq!(missing.severity, Severity::Error);
    }

    #[test]
    fn shell_steps_get_idempotence_hints_with_their_lines() {
        let m = Module::good();
        let step = "imageroot/.config/module-events/module.init/20setup";
        m.write(
            step,
            "#!/usr/bin/env bash\n\
             # mkdir /in/a/comment, podman run in a comment\n\
             mkdir \"$HOME/data\"\n\
             mkdir -p \"$HOME/ok\" && mkdir -pv x\n\
             echo line >> \"$HOME/log\"\n\
             echo quiet >>/dev/null 2>&1; echo err >&2\n\
             ln -s a b; ln -sfn a c; ln --symbolic --force a d\n\
             sudo useradd app\n\
             x=$(podman run --rm img true)\n\
             podman --log-level=info container run img\n\
             echo \"podman run inside quotes; systemctl too\"\n\
             cat <<EOF >\"$HOME/conf\"\n\
             mkdir not-a-command-in-a-heredoc\n\
             EOF\n\
             if true; then systemctl --user restart app; fi\n\
             mkdir \\\n  -p split-over-lines\n",
            0o755,
        );
        let findings = m.lint();
        let shown = m.shown(step);
        let lines_of = |words: &str| -> Vec<Option<usize>> {
            findings
                .iter()
                .filter(|f| f.path == shown && f.message.contains(words))
                .map(|f| f.line)
                .collect()
        };
        assert_eq!(lines_of("`mkdir` without -p"), [Some(3)]);
        assert_eq!(lines_of("`>>` appends"), [Some(5)]);
        assert_eq!(lines_of("`ln -s` without -f"), [Some(7)]);
        assert_eq!(lines_of("adding a user"), [Some(8)]);
        assert_eq!(lines_of("`podman run`"), [Some(9), Some(10)]);
        assert_eq!(lines_of("`systemctl`"), [Some(15)]);
        assert_eq!(lines_of("no `set -e`"), [Some(1)]);
        let set_e = find(&findings, &shown, "no `set -e`");
        assert_eq!(set_e.severity, Severity::Warning);
        assert!(findings
            .iter()
            .filter(|f| f.path == shown && f.severity == Severity::Hint)
            .all(|f| f.fix.is_some()));
        assert_eq!(content(&findings).len(), 8, "{findings:#?}");

        // set -e in the #! line, or as -o errexit, counts; other interpreters are not shell.
        m.write(step, "#!/bin/sh -eu\nmkdir -p x\n", 0o755);
        assert!(content(&m.lint()).is_empty(), "{:#?}", m.lint());
        m.write(step, "#!/bin/bash\nset -o errexit -o nounset\n", 0o755);
        assert!(content(&m.lint()).is_empty(), "{:#?}", m.lint());
        m.write(step, "#!/usr/bin/python3\nmkdir = 1\n", 0o755);
        assert!(content(&m.lint()).is_empty(), "{:#?}", m.lint());
    }

    #[test]
    fn the_shell_scanner_finds_commands_and_lines() {
        let commands = shell_commands(
            "a 'b c' \"d\\\"e\" # f\n\ng 2>>log; h | i && j $(k l)\nm <<-'END'\n\tnot a command\n\tEND\nn\n",
        );
        let words: Vec<(usize, Vec<&str>, Vec<&str>)> = commands
            .iter()
            .map(|c| {
                (
                    c.line,
                    c.words.iter().map(String::as_str).collect(),
                    c.appends.iter().map(String::as_str).collect(),
                )
            })
            .collect();
        assert_eq!(
            words,
            [
                (1, vec!["a", "b c", "d\"e"], vec![]),
                (3, vec!["g"], vec!["log"]),
                (3, vec!["h"], vec![]),
                (3, vec!["i"], vec![]),
                (3, vec!["j"], vec![]),
                (3, vec!["k", "l"], vec![]),
                (4, vec!["m"], vec![]),
                (7, vec!["n"], vec![]),
            ]
        );
        let c = &shell_commands("FOO=1 exec env -i nice mkdir -m 700 d")[0];
        assert_eq!(c.name(), Some("mkdir"));
        assert!(mkdir_without_p(c));
        // Unbalanced quotes, lone operators, binary junk: words, never a panic.
        for junk in [
            "'open",
            "\"open\\",
            "<<",
            ">",
            "$(",
            "\\",
            "\0\u{fffd}\u{7f}",
            "<<E\n",
        ] {
            let _ = shell_commands(junk);
        }
    }

    #[test]
    fn braced_variables_systemd_would_expand() {
        for (value, expands) in [
            ("wget -q http://127.0.0.1:8080/", false),
            ("sh -c 'echo ${HOME}'", true),
            ("sh -c 'echo $${HOME}'", false),
            ("sh -c 'echo $$$${HOME}'", false),
            ("sh -c 'echo $$${HOME}'", true),
            ("i=$((i + 1)); echo $i", false),
            ("trailing $", false),
        ] {
            assert_eq!(expands_braced_variable(value), expands, "{value}");
        }
    }

    #[test]
    fn quadlet_files_are_checked_on_their_own() {
        let m = Module::good();
        let dir = "imageroot/.config/containers/systemd";
        m.write(
            &format!("{dir}/web.container"),
            "[Unit]\nDescription=web\n\n[Container]\nImage=localhost/agent-busybox:latest\nNotify=healthy\n",
            0o644,
        );
        m.write(
            &format!("{dir}/sub/noimage.container"),
            "[Container]\nExec=true\n[Install]\nWantedBy=default.target\n",
            0o644,
        );
        m.write(
            &format!("{dir}/checked.container"),
            "[Container]\nImage=localhost/agent-busybox:latest\nNotify=healthy\n",
            0o644,
        );
        // Its drop-in gives it a health check and an [Install] section.
        m.write(
            &format!("{dir}/checked.container.d/10-health.conf"),
            "[Container]\nHealthCmd=true\nExec=sh -c 'echo $${HOME} ${HOME}'\n[Install]\nWantedBy=default.target\n",
            0o644,
        );
        m.write(
            &format!("{dir}/in-pod.container"),
            "[Container]\nImage=localhost/agent-busybox:latest\nPod=p.pod\n",
            0o644,
        );
        m.write(
            &format!("{dir}/p.pod"),
            "[Pod]\n[Install]\nWantedBy=default.target\n",
            0o644,
        );
        m.write(&format!("{dir}/net.network"), "[Network]\n", 0o644);
        m.write(
            &format!("{dir}/notes.txt"),
            "not a Quadlet file\nNotify=healthy\n",
            0o644,
        );
        m.write(
            "imageroot/.config/systemd/user/old.service",
            "[Service]\nExecStartPre=/bin/true\nExecStart=-/usr/bin/podman run --rm --name old img\n",
            0o644,
        );
        m.write(
            "imageroot/.config/systemd/user/fine.service",
            "[Service]\nExecStart=/usr/bin/podman start x\n",
            0o644,
        );
        let findings = m.lint();
        let at = |rel: &str| m.shown(&format!("{dir}/{rel}"));
        let healthy = find(
            &findings,
            &at("web.container"),
            "Notify=healthy without HealthCmd=",
        );
        assert_eq!((healthy.severity, healthy.line), (Severity::Error, Some(6)));
        let install = find(&findings, &at("web.container"), "no [Install] section");
        assert_eq!((install.severity, install.line), (Severity::Warning, None));
        let noimage = find(&findings, &at("sub/noimage.container"), "no Image=");
        assert_eq!(noimage.severity, Severity::Error);
        let legacy = find(
            &findings,
            &m.shown("imageroot/.config/systemd/user/old.service"),
            "`podman run`",
        );
        assert_eq!((legacy.severity, legacy.line), (Severity::Hint, Some(3)));
        let braced = find(
            &findings,
            &at("checked.container.d/10-health.conf"),
            "Exec= has ${...}",
        );
        assert_eq!((braced.severity, braced.line), (Severity::Warning, Some(3)));
        assert_eq!(content(&findings).len(), 5, "{findings:#?}");

        // Without the generator, lines it would refuse to load are found by lint itself.
        m.write(&format!("{dir}/web.container"), "[Container]\nImage=localhost/agent-busybox:latest\nnot a key\n[Install]\nWantedBy=default.target\n", 0o644);
        let findings = m.lint();
        let bad = find(
            &findings,
            &at("web.container"),
            "not a [Section], KEY=VALUE or comment line",
        );
        assert_eq!(bad.line, Some(3));
    }

    /// What Podman 5.4's generator printed for broken files (Debian 13 node,
    /// `QUADLET_UNIT_DIRS=DIR quadlet -dryrun -user`), mapped back to the files and lines.
    #[test]
    fn the_generators_messages_name_the_file_and_line() {
        let m = Module::good();
        let dir = "imageroot/.config/containers/systemd";
        m.write(
            &format!("{dir}/sub/bad.container"),
            "[Container]\nImage=localhost/agent-busybox:latest\nNoSuchKey=1\n",
            0o644,
        );
        m.write(
            &format!("{dir}/syn.container"),
            "[Container]\nImage=x\nbad line\n",
            0o644,
        );
        m.write(
            &format!("{dir}/pd.container"),
            "[Container]\nImage=localhost/agent-busybox:latest\nPod=nosuch.pod\n",
            0o644,
        );
        let tree = Tree::new(
            &m.path("imageroot"),
            m.shown("imageroot"),
            m.shown("imageroot"),
        )
        .unwrap();
        let mut out = Findings::default();
        let files = systemd_files(&tree, &m.path(dir), &mut out);
        let stage = Path::new("/tmp/stage-x");
        let stderr = "\
quadlet-generator[639]: Loading source unit file /tmp/stage-x/app.container
quadlet-generator[639]: Warning: syn.container specifies the image \"x\" which not a fully qualified image name.
quadlet-generator[644]: error loading \"/tmp/stage-x/syn.container\", file contains line 3: “bad line” which is not a key-value pair, group, or comment
converting \"bad.container\": unsupported key 'NoSuchKey' in group 'Container' in /tmp/stage-x/sub/bad.container
converting \"pd.container\": quadlet pod unit nosuch.pod does not exist
something else entirely
";
        let generator = GeneratorOutput {
            tree: &tree,
            stage,
            files: &files,
        };
        for (severity, message) in generator_messages(stderr) {
            generator.report(severity, message, &m.shown(dir), &mut out);
        }
        let findings = out.0;
        let at = |rel: &str| m.shown(&format!("{dir}/{rel}"));
        let key = find(
            &findings,
            &at("sub/bad.container"),
            "quadlet generator: unsupported key 'NoSuchKey' in group 'Container'",
        );
        assert_eq!((key.severity, key.line), (Severity::Error, Some(3)));
        assert!(!key.message.contains("/tmp/stage-x"), "{}", key.message);
        assert!(key
            .fix
            .as_deref()
            .unwrap()
            .contains("podman-systemd.unit(5)"));
        let syntax = find(&findings, &at("syn.container"), "file contains line 3");
        assert_eq!((syntax.severity, syntax.line), (Severity::Error, Some(3)));
        let warning = find(
            &findings,
            &at("syn.container"),
            "not a fully qualified image name",
        );
        assert_eq!(
            (warning.severity, warning.line),
            (Severity::Warning, Some(2))
        );
        let pod = find(
            &findings,
            &at("pd.container"),
            "quadlet pod unit nosuch.pod does not exist",
        );
        assert_eq!(pod.line, Some(3));
        find(&findings, &m.shown(dir), "something else entirely");
        assert_eq!(findings.len(), 5, "{findings:#?}");
    }

    /// The real generator, where it is installed (a Debian 13 node; not this Debian 12 host, so
    /// there the test only says it skipped).
    #[test]
    fn the_real_generator_reports_an_unknown_key_with_its_line() {
        if !Path::new(GENERATOR).is_file() {
            eprintln!("{GENERATOR} is missing here: skipped (tests/tests/node_lint.rs runs it)");
            return;
        }
        let m = Module::good();
        m.write(
            "imageroot/.config/containers/systemd/bad.container",
            "[Container]\nImage=localhost/agent-busybox:latest\nNoSuchKey=1\n[Install]\nWantedBy=default.target\n",
            0o644,
        );
        let findings = lint_with(&m.dir.path().to_string_lossy(), GENERATOR);
        let key = find(
            &findings,
            &m.shown("imageroot/.config/containers/systemd/bad.container"),
            "unsupported key 'NoSuchKey'",
        );
        assert_eq!((key.severity, key.line), (Severity::Error, Some(3)));
    }

    #[test]
    fn signatures_are_checked_and_their_files_not_flagged_otherwise() {
        let m = Module::good();
        let keys = tempfile::tempdir().unwrap();
        let trust = keys.path().join("trust");
        fs::create_dir(&trust).unwrap();
        let key = keys.path().join("k.tsk");
        module_signing::write_new_key("A <a@example.org>", &key, &trust.join("k.asc")).unwrap();
        module_signing::sign_tree(&m.path("imageroot"), &key).unwrap();
        let target = m.dir.path().to_string_lossy().into_owned();
        let lint_trusting = |trust: &Path| lint(&target, &options("/nonexistent", trust)).unwrap();

        let findings = lint_trusting(&trust);
        let only_generator: Vec<&Finding> = findings
            .iter()
            .filter(|f| !f.message.contains("not checked by Podman's generator"))
            .collect();
        assert!(only_generator.is_empty(), "{findings:#?}");

        let untrusted = lint_trusting(keys.path());
        let hint = find(
            &untrusted,
            &m.shown("imageroot/MANIFEST.sig"),
            "a key with no certificate in",
        );
        assert_eq!(hint.severity, Severity::Hint);

        m.write(
            "imageroot/.config/module-events/module.init/10start",
            "#!/bin/sh\nset -eu\necho changed\n",
            0o755,
        );
        m.write(
            "imageroot/.config/module-events/module.init/20new",
            GOOD_STEP,
            0o755,
        );
        let findings = lint_trusting(&trust);
        let modified = find(
            &findings,
            &m.shown("imageroot/.config/module-events/module.init/10start"),
            "differs from MANIFEST",
        );
        assert_eq!(modified.severity, Severity::Error);
        assert!(modified
            .fix
            .as_deref()
            .unwrap()
            .starts_with("sign again: module-sdk sign --key KEY.tsk"));
        find(
            &findings,
            &m.shown("imageroot/.config/module-events/module.init/20new"),
            "not in MANIFEST",
        );

        m.write(
            "imageroot/MANIFEST.sig",
            "-----BEGIN PGP SIGNATURE-----\nbroken\n",
            0o644,
        );
        let findings = lint_trusting(&trust);
        let bad = find(
            &findings,
            &m.shown("imageroot/MANIFEST.sig"),
            "bad signature",
        );
        assert_eq!(bad.severity, Severity::Error);
        assert!(
            findings
                .iter()
                .filter(|f| f.path.ends_with("MANIFEST") || f.path.ends_with("MANIFEST.sig"))
                .count()
                == 1,
            "{findings:#?}"
        );
    }

    #[test]
    fn hostile_trees_give_findings_not_panics() {
        use std::os::unix::ffi::OsStrExt;
        let m = Module::good();
        let events = m.path("imageroot/.config/module-events");
        let systemd = m.path("imageroot/.config/containers/systemd");
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("secret"), "#!/bin/sh\nmkdir x\n").unwrap();
        fs::set_permissions(
            outside.path().join("secret"),
            fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        // Steps: binary junk with a #!, a fifo, a symlink out of the tree, a dangling one, a loop,
        // a name that is not UTF-8.
        m.write(
            "imageroot/.config/module-events/module.init/20binary",
            "#!/bin/sh\n\0\u{fffd}\x01mkdir x\n",
            0o755,
        );
        mkfifo(&events.join("module.init/30fifo"));
        symlink(
            outside.path().join("secret"),
            events.join("module.init/40outside"),
        )
        .unwrap();
        symlink("nowhere", events.join("module.init/50dangling")).unwrap();
        symlink("60loop", events.join("module.init/60loop")).unwrap();
        let odd = std::ffi::OsStr::from_bytes(b"70\xff\xfe");
        fs::write(events.join("module.init").join(odd), GOOD_STEP).unwrap();
        fs::set_permissions(
            events.join("module.init").join(odd),
            fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        // Settings that must not be read: a symlink to an endless file, a fifo.
        fs::create_dir(events.join("backup")).unwrap();
        symlink("/dev/zero", events.join("backup/.timeout")).unwrap();
        fs::create_dir(events.join("configure")).unwrap();
        mkfifo(&events.join("configure/.retries"));
        // An event directory out of the tree, and one whose name is not UTF-8.
        symlink(outside.path(), events.join("elsewhere")).unwrap();
        fs::create_dir(events.join(std::ffi::OsStr::from_bytes(b"ev\xff"))).unwrap();
        // Quadlet: a fifo, a symlink out of the tree, a symlinked directory, a file name that is
        // not UTF-8, binary content, a symlink to a file of the tree.
        mkfifo(&systemd.join("fifo.container"));
        symlink("/etc/passwd", systemd.join("passwd.container")).unwrap();
        symlink(outside.path(), systemd.join("linked-dir")).unwrap();
        fs::write(
            systemd.join(std::ffi::OsStr::from_bytes(b"\xff.container")),
            b"\xff\xfe[Container]\nImage=\xff\n",
        )
        .unwrap();
        symlink("app.container", systemd.join("alias.container")).unwrap();

        let findings = m.lint();
        let at = |rel: &str| m.shown(&format!("imageroot/.config/{rel}"));
        find(
            &findings,
            &at("module-events/module.init/30fifo"),
            "not a regular file",
        );
        // Anywhere in the tree, what the node's install refuses is an error.
        for fifo in [
            "module-events/module.init/30fifo",
            "containers/systemd/fifo.container",
        ] {
            let refused = find(&findings, &at(fifo), "a FIFO: nodes refuse to install");
            assert_eq!(refused.severity, Severity::Error, "{fifo}");
        }
        let out = find(
            &findings,
            &at("module-events/module.init/40outside"),
            "a symlink out of the tree",
        );
        assert_eq!(out.severity, Severity::Warning);
        find(
            &findings,
            &at("module-events/module.init/50dangling"),
            "the engine skips this step: cannot stat",
        );
        find(
            &findings,
            &at("module-events/module.init/60loop"),
            "the engine skips this step: cannot stat",
        );
        find(
            &findings,
            &at("module-events/backup/.timeout"),
            "must be a small regular file",
        );
        find(
            &findings,
            &at("module-events/configure/.retries"),
            "must be a small regular file",
        );
        find(
            &findings,
            &at("module-events/elsewhere"),
            "a symlink out of the tree",
        );
        find(
            &findings,
            &at("module-events/ev\u{fffd}"),
            "not an event name",
        );
        find(
            &findings,
            &at("containers/systemd/fifo.container"),
            "not a regular file",
        );
        find(
            &findings,
            &at("containers/systemd/passwd.container"),
            "a symlink out of the tree",
        );
        find(
            &findings,
            &at("containers/systemd/linked-dir"),
            "a symlink out of the tree",
        );
        // The secret's `mkdir x` was not read: no hint for it anywhere.
        assert!(
            !findings
                .iter()
                .any(|f| f.message.contains("`mkdir` without -p") && !f.path.contains("20binary")),
            "{findings:#?}"
        );
        // The symlink to a file of the tree is checked like that file (an alias of a good one).
        assert!(
            !findings.iter().any(|f| f.path.ends_with("alias.container")),
            "{findings:#?}"
        );

        // The staged copy for the generator holds only what lint read: no fifo, no symlink.
        let tree = Tree::new(&m.path("imageroot"), "r".into(), "r".into()).unwrap();
        let mut sink = Findings::default();
        let files = systemd_files(&tree, &systemd, &mut sink);
        let stage = stage_files(&files).unwrap();
        for entry in fs::read_dir(stage.path()).unwrap().flatten() {
            let meta = fs::symlink_metadata(entry.path()).unwrap();
            assert!(meta.is_file() || meta.is_dir(), "{:?}", entry.path());
        }
        assert!(!stage.path().join("passwd.container").exists());
        assert!(!stage.path().join("fifo.container").exists());
    }

    #[test]
    fn what_is_not_a_module_tree_is_exit_66() {
        let options = options("/nonexistent", Path::new("/nonexistent"));
        let empty = tempfile::tempdir().unwrap();
        let target = format!("{}/", empty.path().display());
        let e = lint(&target, &options).unwrap_err();
        assert_eq!(e.code, NO_INPUT);
        assert!(e.message.contains("is not a module tree"), "{}", e.message);
        assert!(!e.message.contains("//"), "{}", e.message);
        fs::write(empty.path().join("Containerfile"), "FROM scratch\n").unwrap();
        let e = lint(&target, &options).unwrap_err();
        assert!(
            e.message.contains("has a Containerfile but no imageroot/"),
            "{}",
            e.message
        );
        for missing in ["./no/such/dir", "/no/such/dir", "no-such-dir/"] {
            let e = lint(missing, &options).unwrap_err();
            assert_eq!(
                (e.code, e.message.contains("no such directory")),
                (NO_INPUT, true),
                "{missing}: {}",
                e.message
            );
        }
        let e = lint(
            &empty.path().join("Containerfile").to_string_lossy(),
            &options,
        )
        .unwrap_err();
        assert_eq!(e.code, NO_INPUT);
        assert_eq!(lint("", &options).unwrap_err().code, exit_code::USAGE);
        // What podman could take for an option is refused before podman is asked.
        assert_eq!(lint("-q", &options).unwrap_err().code, exit_code::USAGE);
        assert_eq!(lint("a\tb", &options).unwrap_err().code, exit_code::USAGE);
    }

    #[test]
    fn the_report_is_sorted_and_formatted() {
        let mut out = Findings::default();
        out.hint("b", "third").at(3).fix("do this");
        out.error("b", "second").at(1);
        out.warning("a", "first");
        out.error("b", "without a line");
        let mut findings = out.0;
        findings.sort_by(|a, b| a.path.cmp(&b.path).then(a.line.cmp(&b.line)));
        let all: Vec<&Finding> = findings.iter().collect();
        assert_eq!(
            text_report(&all, &findings),
            "warning: a: first\nerror: b: without a line\nerror: b:1: second\nhint: b:3: third\n  \
             fix: do this\n2 errors, 1 warning, 1 hint\n"
        );
        let errors: Vec<&Finding> = findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
            .collect();
        assert!(
            text_report(&errors, &findings).ends_with("b:1: second\n2 errors, 1 warning, 1 hint\n")
        );
        let json: serde_json::Value = serde_json::from_str(&json_report(&all)).unwrap();
        assert_eq!(
            json[3],
            serde_json::json!({"severity": "hint", "path": "b", "line": 3, "message": "third", "fix": "do this"})
        );
        assert_eq!(json[0]["line"], serde_json::Value::Null);
        assert_eq!(exit_code_of(&findings, false), FAILED);
        assert_eq!(summary(&[]), "0 errors, 0 warnings, 0 hints");
    }
}
