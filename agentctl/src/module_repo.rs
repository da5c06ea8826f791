//! `agentctl module repo|search|info` and the name resolution of `agentctl module add NAME[:VERSION]`:
//! the module repositories, container registries listed cluster-wide in Redis
//! (`cluster/module-repository/<name>`), each with a priority.
//!
//! A module of a repository at LOCATION (`host[:port][/namespace]`) is the image
//! `LOCATION/NAME:VERSION` that carries the module labels (docs/MODULES.md); its versions are its
//! semantic-version tags (`1.2.0`, `v1.2.0`, `2.0.0-rc.1`; other tags are ignored). The registry is
//! read with Podman's and skopeo's own clients (`podman search` lists the registry's catalog,
//! `skopeo list-tags` and `skopeo inspect` read tags and labels), so credentials, mirrors and
//! certificates are configured as for Podman (`/etc/containers/`).

use std::collections::HashMap;
use std::process::{Command, Stdio};

use anyhow::{Context, Result};
use core_events::keys::{self, module_repository as field};
use core_events::module_image;
use redis::AsyncCommands;

use crate::conn::Redis;
use crate::fail::{fail, invalid};

/// Priority of a repository added without `--priority`.
pub const DEFAULT_PRIORITY: i64 = 50;

#[derive(Debug, clap::Subcommand)]
pub enum RepoCmd {
    /// Add (or change) a module repository: a container registry location whose images
    /// LOCATION/NAME:VERSION are modules. Checked by listing it before it is stored.
    Add(RepoAddArgs),
    /// The module repositories, highest priority first.
    List,
    /// Remove a module repository (installed modules keep their image).
    Rm {
        /// The repository's name.
        name: String,
    },
}

#[derive(Debug, clap::Args)]
pub struct RepoAddArgs {
    /// The repository's name: [a-z][a-z0-9-]{0,31}.
    name: String,
    /// Where its modules are: host[:port][/namespace], e.g. registry.example.org/modules or
    /// 127.0.0.1:5000/modules (no scheme).
    location: String,
    /// Searched first when higher; a module in several repositories comes from the one of highest
    /// priority.
    #[arg(long, default_value_t = DEFAULT_PRIORITY)]
    priority: i64,
    /// Plain HTTP or an unverified TLS certificate (a registry on loopback, a lab). Never for a
    /// registry across a network you do not control.
    #[arg(long)]
    insecure: bool,
}

#[derive(Debug, clap::Args)]
pub struct SearchArgs {
    /// Only modules whose name, title or description contains TEXT (case-insensitive).
    text: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct InfoArgs {
    /// The module: NAME (its newest release) or NAME:VERSION.
    module: String,
}

/// A module repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repository {
    pub name: String,
    pub location: String,
    pub priority: i64,
    pub insecure: bool,
}

/// A repository's name: `[a-z][a-z0-9-]{0,31}`.
fn check_name(name: &str) -> Result<()> {
    let ok = name.len() <= 32
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "repository name {name:?}: [a-z][a-z0-9-]{{0,31}}"
        )))
    }
}

/// A location: `host[:port][/namespace]`, no scheme, no tag, nothing podman could take for an
/// option.
pub fn check_location(location: &str) -> Result<(), String> {
    if location.contains("://") {
        return Err("write it without a scheme (host[:port][/namespace])".into());
    }
    let (host, path) = location.split_once('/').unwrap_or((location, ""));
    let host_ok = !host.is_empty()
        && !host.starts_with(['-', '.', ':'])
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    if !host_ok {
        return Err(format!("{host:?} is not a registry host[:port]"));
    }
    let path_ok = path.is_empty()
        || path.split('/').all(|c| {
            !c.is_empty()
                && c.starts_with(|x: char| x.is_ascii_lowercase() || x.is_ascii_digit())
                && c.chars().all(|x| {
                    x.is_ascii_lowercase() || x.is_ascii_digit() || matches!(x, '.' | '_' | '-')
                })
        });
    if !path_ok {
        return Err(format!(
            "namespace {path:?}: lowercase path components ([a-z0-9._-], no empty one)"
        ));
    }
    Ok(())
}

/// A module name as repositories spell it: `[a-z][a-z0-9-]{0,62}`.
fn is_module_name(name: &str) -> bool {
    name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// A version tag: semantic version, with an optional leading `v`.
pub fn parse_version(tag: &str) -> Option<semver::Version> {
    semver::Version::parse(tag.strip_prefix('v').unwrap_or(tag)).ok()
}

/// Every repository, highest priority first (then by name).
pub async fn all(con: &mut redis::aio::ConnectionManager) -> Result<Vec<Repository>> {
    let pattern = format!("{}*", keys::MODULE_REPOSITORY_PREFIX);
    let mut names: Vec<String> = Vec::new();
    {
        let mut iter: redis::AsyncIter<String> = con.scan_match(&pattern).await?;
        while let Some(k) = iter.next_item().await {
            names.push(k?);
        }
    }
    let mut out = Vec::new();
    for key in names {
        let name = key
            .strip_prefix(keys::MODULE_REPOSITORY_PREFIX)
            .unwrap_or_default()
            .to_string();
        let f: HashMap<String, String> = con.hgetall(&key).await?;
        let location = f.get(field::LOCATION).cloned().unwrap_or_default();
        if check_name(&name).is_err() || check_location(&location).is_err() {
            eprintln!("agentctl: warning: {key} is not a valid module repository: skipped");
            continue;
        }
        out.push(Repository {
            name,
            location,
            priority: f
                .get(field::PRIORITY)
                .and_then(|p| p.parse().ok())
                .unwrap_or(DEFAULT_PRIORITY),
            insecure: f.get(field::INSECURE).map(String::as_str) == Some("true"),
        });
    }
    out.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.name.cmp(&b.name)));
    Ok(out)
}

/// The TLS flag of a client for `repo`: none unless insecure, so that the containers
/// configuration (`registries.conf`: mirrors, `insecure = true`) decides as it does for Podman.
fn tls(repo: &Repository) -> Option<&'static str> {
    repo.insecure.then_some("--tls-verify=false")
}

/// Runs a registry client; its stdout, or an error with its stderr's last lines.
fn client(what: &str, cmd: &mut Command) -> Result<String> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {program} (are podman and skopeo installed?)"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last: Vec<&str> = err
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.contains("level=info"))
            .collect();
        return Err(fail(
            core_events::exit::tool::UNAVAILABLE,
            format!(
                "{what}: {program} failed: {}",
                last[last.len().saturating_sub(3)..].join(" / ")
            ),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The module names a repository's registry lists under its location.
fn names(repo: &Repository) -> Result<Vec<String>> {
    let host = repo.location.split('/').next().unwrap_or_default();
    let out = client(
        &format!("listing repository {} ({})", repo.name, repo.location),
        Command::new("podman").arg("search").args(tls(repo)).args([
            "--limit",
            "10000",
            "--format",
            "{{.Name}}",
            &format!("{host}/"),
        ]),
    )?;
    let prefix = format!("{}/", repo.location);
    let mut names: Vec<String> = out
        .lines()
        .filter_map(|l| l.trim().strip_prefix(&prefix))
        .filter(|n| is_module_name(n))
        .map(str::to_string)
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// The version tags of `name` in `repo`, newest first.
fn versions(repo: &Repository, name: &str) -> Result<Vec<(semver::Version, String)>> {
    let out = client(
        &format!("reading the tags of {}/{name}", repo.location),
        Command::new("skopeo")
            .arg("list-tags")
            .args(tls(repo))
            .arg(format!("docker://{}/{name}", repo.location)),
    )?;
    #[derive(serde::Deserialize)]
    struct Tags {
        #[serde(rename = "Tags", default)]
        tags: Vec<String>,
    }
    let tags: Tags = serde_json::from_str(&out).context("skopeo list-tags printed no tag list")?;
    let mut v: Vec<(semver::Version, String)> = tags
        .tags
        .into_iter()
        .filter_map(|t| parse_version(&t).map(|v| (v, t)))
        .collect();
    v.sort_by(|a, b| b.0.cmp(&a.0));
    Ok(v)
}

/// What the registry says of one version of a module.
#[derive(Debug, Clone)]
pub struct Inspected {
    pub digest: String,
    pub labels: HashMap<String, String>,
}

fn inspect(repo: &Repository, reference: &str) -> Result<Inspected> {
    let out = client(
        &format!("inspecting {reference}"),
        Command::new("skopeo")
            .arg("inspect")
            .args(tls(repo))
            .arg(format!("docker://{reference}")),
    )?;
    #[derive(serde::Deserialize)]
    struct Inspect {
        #[serde(rename = "Digest", default)]
        digest: String,
        #[serde(rename = "Labels", default)]
        labels: Option<HashMap<String, String>>,
    }
    let i: Inspect = serde_json::from_str(&out).context("skopeo inspect printed no image")?;
    Ok(Inspected {
        digest: i.digest,
        labels: i.labels.unwrap_or_default(),
    })
}

/// A module version found in a repository.
#[derive(Debug, Clone)]
pub struct Found {
    pub repo: Repository,
    pub name: String,
    pub version: semver::Version,
    pub tag: String,
    /// Every version of the module in that repository, newest first.
    pub all: Vec<(semver::Version, String)>,
}

impl Found {
    /// The image reference: `LOCATION/NAME:TAG`.
    pub fn reference(&self) -> String {
        format!("{}/{}:{}", self.repo.location, self.name, self.tag)
    }
}

/// `NAME` or `NAME:VERSION`, when `arg` has that form (no registry, path or digest).
pub fn split_module_arg(arg: &str) -> Option<(&str, Option<&str>)> {
    let (name, version) = match arg.split_once(':') {
        Some((n, v)) => (n, Some(v)),
        None => (arg, None),
    };
    (is_module_name(name) && version.is_none_or(|v| !v.is_empty() && !v.contains(['/', '@'])))
        .then_some((name, version))
}

/// `name` (at `version`, else its newest release) in the repository of highest priority that has
/// it (a repository that lists the name without that version or any release is passed over for the
/// next one). `Ok(None)` when no repository lists it.
fn find(repos: &[Repository], name: &str, version: Option<&str>) -> Result<Option<Found>> {
    let mut problems = Vec::new();
    let mut missing: Option<anyhow::Error> = None;
    for repo in repos {
        let listed = match names(repo) {
            Ok(n) => n,
            Err(e) => {
                problems.push(e.to_string());
                continue;
            }
        };
        if !listed.iter().any(|n| n == name) {
            continue;
        }
        let all = versions(repo, name)?;
        let chosen = match version {
            Some(want) => {
                let wanted = parse_version(want);
                all.iter()
                    .find(|(v, t)| t == want || Some(v) == wanted.as_ref())
                    .cloned()
            }
            None => all.iter().find(|(v, _)| v.pre.is_empty()).cloned(),
        };
        let Some((v, tag)) = chosen else {
            let listed: Vec<&str> = all.iter().map(|(_, t)| t.as_str()).collect();
            missing.get_or_insert(invalid(match version {
                Some(want) => format!(
                    "module {name} has no version {want} in repository {} (its versions: {})",
                    repo.name,
                    if listed.is_empty() { "none".to_string() } else { listed.join(", ") }
                ),
                None => format!(
                    "module {name} has no release in repository {} (only: {}): name a version, {name}:VERSION",
                    repo.name,
                    if listed.is_empty() { "no version tags".to_string() } else { listed.join(", ") }
                ),
            }));
            continue;
        };
        return Ok(Some(Found {
            repo: repo.clone(),
            name: name.to_string(),
            version: v,
            tag,
            all,
        }));
    }
    if !problems.is_empty() {
        eprintln!("agentctl: warning: {}", problems.join("; "));
    }
    match missing {
        Some(e) => Err(e),
        None => Ok(None),
    }
}

/// Whether this core satisfies the module's `core-version` label (absent: yes).
pub fn core_requirement(labels: &HashMap<String, String>) -> Result<(), String> {
    let Some(req) = labels.get(module_image::CORE_VERSION).map(|r| r.trim()) else {
        return Ok(());
    };
    let parsed = semver::VersionReq::parse(req).map_err(|e| {
        format!(
            "its label {} {req:?} is not a version requirement: {e}",
            module_image::CORE_VERSION
        )
    })?;
    let core = semver::Version::parse(env!("CARGO_PKG_VERSION")).expect("the crate's version");
    if parsed.matches(&core) {
        Ok(())
    } else {
        Err(format!(
            "it needs core {req} ({}), this core is {core}",
            module_image::CORE_VERSION
        ))
    }
}

/// For `agentctl module add ARG`: when ARG is `NAME[:VERSION]` and module repositories are
/// configured, the image it names (refused when it needs a newer core); `None` when ARG is an
/// image reference or no repository is configured (ARG is then the image, as before).
pub async fn resolve_for_add(
    con: &mut redis::aio::ConnectionManager,
    arg: &str,
) -> Result<Option<String>> {
    let Some((name, version)) = split_module_arg(arg) else {
        return Ok(None);
    };
    let found = resolve(con, name, version).await?;
    if let Some((reference, found)) = &found {
        eprintln!(
            "{arg}: {reference} (version {}, repository {}, {})",
            found.version, found.repo.name, found.digest
        );
    }
    Ok(found.map(|(reference, _)| reference))
}

/// A module version resolved through the repositories: where it was found, and its digest.
pub struct Resolved {
    pub version: semver::Version,
    pub repo: Repository,
    pub digest: String,
}

/// `name` at `version` (else its newest release) through the module repositories, checked to be
/// a module image this core can run (refused when it needs a newer core): its image reference.
/// `None` when no repository is configured.
pub async fn resolve(
    con: &mut redis::aio::ConnectionManager,
    name: &str,
    version: Option<&str>,
) -> Result<Option<(String, Resolved)>> {
    let repos = all(con).await?;
    if repos.is_empty() {
        return Ok(None);
    }
    let Some(found) = find(&repos, name, version)? else {
        return Err(fail(
            core_events::exit::tool::UNAVAILABLE,
            format!(
                "no module repository has {name} ({}): `agentctl module search` lists what there is; an image reference (localhost/{name}:latest, REGISTRY/PATH:TAG) installs an image directly",
                repos.iter().map(|r| r.name.as_str()).collect::<Vec<_>>().join(", ")
            ),
        ));
    };
    let reference = found.reference();
    let inspected = inspect(&found.repo, &reference)?;
    module_image::parse_labels(&reference, &inspected.labels)
        .map_err(|e| invalid(e.to_string()))?;
    core_requirement(&inspected.labels)
        .map_err(|e| invalid(format!("module {name} {}: {e}", found.tag)))?;
    Ok(Some((
        reference,
        Resolved {
            version: found.version,
            repo: found.repo,
            digest: inspected.digest,
        },
    )))
}

fn no_repository() -> anyhow::Error {
    fail(
        core_events::exit::tool::UNAVAILABLE,
        "no module repository: add one with `agentctl module repo add NAME LOCATION`",
    )
}

pub async fn repo(redis: &Redis, cmd: RepoCmd) -> Result<i32> {
    let mut con = redis.manager().await?;
    match cmd {
        RepoCmd::Add(a) => {
            check_name(&a.name)?;
            check_location(&a.location)
                .map_err(|e| invalid(format!("location {:?}: {e}", a.location)))?;
            let repo = Repository {
                name: a.name.clone(),
                location: a.location.trim_end_matches('/').to_string(),
                priority: a.priority,
                insecure: a.insecure,
            };
            let found = names(&repo)?;
            let _: () = con
                .hset_multiple(
                    keys::module_repository(&repo.name),
                    &[
                        (field::LOCATION, repo.location.clone()),
                        (field::PRIORITY, repo.priority.to_string()),
                        (field::INSECURE, repo.insecure.to_string()),
                    ],
                )
                .await?;
            eprintln!(
                "module repository {} stored: {} (priority {}{}), {} image name(s) there",
                repo.name,
                repo.location,
                repo.priority,
                if repo.insecure { ", insecure" } else { "" },
                found.len()
            );
            Ok(0)
        }
        RepoCmd::List => {
            for r in all(&mut con).await? {
                println!(
                    "{}\t{}\tpriority {}{}",
                    r.name,
                    r.location,
                    r.priority,
                    if r.insecure { "\tinsecure" } else { "" }
                );
            }
            Ok(0)
        }
        RepoCmd::Rm { name } => {
            check_name(&name)?;
            let n: i64 = con.del(keys::module_repository(&name)).await?;
            if n == 0 {
                return Err(fail(
                    core_events::exit::tool::UNAVAILABLE,
                    format!("no module repository {name}"),
                ));
            }
            eprintln!("module repository {name} removed");
            Ok(0)
        }
    }
}

pub async fn search(redis: &Redis, args: SearchArgs) -> Result<i32> {
    let mut con = redis.manager().await?;
    let repos = all(&mut con).await?;
    if repos.is_empty() {
        return Err(no_repository());
    }
    let text = args.text.as_deref().map(str::to_lowercase);
    let mut seen = std::collections::HashSet::new();
    let mut failed = false;
    println!("NAME\tVERSION\tREPOSITORY\tDESCRIPTION");
    for repo in &repos {
        let listed = match names(repo) {
            Ok(n) => n,
            Err(e) => {
                eprintln!("agentctl: {e}");
                failed = true;
                continue;
            }
        };
        for name in listed {
            if seen.contains(&name) {
                continue;
            }
            let all = match versions(repo, &name) {
                Ok(all) => all,
                Err(e) => {
                    eprintln!("agentctl: warning: {e}");
                    continue;
                }
            };
            let Some((version, tag)) = all
                .iter()
                .find(|(v, _)| v.pre.is_empty())
                .or_else(|| all.first())
                .cloned()
            else {
                continue;
            };
            let i = match inspect(repo, &format!("{}/{name}:{tag}", repo.location)) {
                Ok(i) => i,
                Err(e) => {
                    eprintln!("agentctl: warning: {e}");
                    continue;
                }
            };
            // Only modules: images without the module labels are not listed.
            if module_image::parse_labels(&name, &i.labels).is_err() {
                continue;
            }
            let description = i
                .labels
                .get(module_image::DESCRIPTION)
                .cloned()
                .unwrap_or_default();
            let title = i
                .labels
                .get(module_image::TITLE)
                .cloned()
                .unwrap_or_default();
            if let Some(t) = &text {
                let hay = format!("{name} {title} {description}").to_lowercase();
                if !hay.contains(t.as_str()) {
                    continue;
                }
            }
            seen.insert(name.clone());
            println!("{name}\t{version}\t{}\t{description}", repo.name);
        }
    }
    Ok(if failed { 1 } else { 0 })
}

pub async fn info(redis: &Redis, args: InfoArgs) -> Result<i32> {
    let (name, version) = split_module_arg(&args.module)
        .ok_or_else(|| invalid(format!("{:?}: write NAME or NAME:VERSION", args.module)))?;
    let mut con = redis.manager().await?;
    let repos = all(&mut con).await?;
    if repos.is_empty() {
        return Err(no_repository());
    }
    let found = find(&repos, name, version)?.ok_or_else(|| {
        fail(
            core_events::exit::tool::UNAVAILABLE,
            format!("no module repository has {name}"),
        )
    })?;
    let reference = found.reference();
    let i = inspect(&found.repo, &reference)?;
    let label = |k: &str| i.labels.get(k).cloned().unwrap_or_default();
    println!("module:      {name}");
    println!("version:     {} (tag {})", found.version, found.tag);
    println!("image:       {reference}");
    println!("digest:      {}", i.digest);
    println!(
        "repository:  {} ({}, priority {})",
        found.repo.name, found.repo.location, found.repo.priority
    );
    println!(
        "versions:    {}",
        found
            .all
            .iter()
            .map(|(_, t)| t.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("title:       {}", label(module_image::TITLE));
    println!("description: {}", label(module_image::DESCRIPTION));
    let provides = label(module_image::PROVIDES);
    println!(
        "provides:    {}",
        if provides.trim().is_empty() {
            "(nothing declared)"
        } else {
            provides.trim()
        }
    );
    let core = match (
        label(module_image::CORE_VERSION),
        core_requirement(&i.labels),
    ) {
        (req, _) if req.is_empty() => "any".to_string(),
        (req, Ok(())) => format!(
            "{req} (this core {} satisfies it)",
            env!("CARGO_PKG_VERSION")
        ),
        (_, Err(e)) => format!("NOT SATISFIED: {e}"),
    };
    println!("core:        {core}");
    match module_image::parse_labels(&reference, &i.labels) {
        Ok(l) => println!(
            "imageroot:   {} (runs: {})",
            l.imageroot,
            if l.images.is_empty() {
                "no other image".to_string()
            } else {
                l.images.join(" ")
            }
        ),
        Err(e) => println!("labels:      NOT A MODULE: {e}"),
    }
    let mut labels: Vec<_> = i.labels.iter().collect();
    labels.sort();
    println!("labels:");
    for (k, v) in labels {
        println!("  {k}={v}");
    }
    // The signature as this node's policy judges it: the node-agent pulls the image into root's
    // storage and checks its imageroot (node-agent image-verify).
    let out = Command::new("node-agent")
        .args(["image-verify", &reference])
        .stdin(Stdio::null())
        .output();
    match out {
        Ok(o) => {
            // Its verdict is the last line it printed: on stdout when accepted, on stderr when not.
            let last = |b: &[u8]| {
                String::from_utf8_lossy(b)
                    .lines()
                    .rfind(|l| !l.trim().is_empty() && !l.contains("level="))
                    .unwrap_or_default()
                    .to_string()
            };
            let (verdict, said) = if o.status.success() {
                ("accepted", last(&o.stdout))
            } else {
                ("REFUSED", last(&o.stderr))
            };
            println!("signature:   {verdict} by this node's policy: {said}");
        }
        Err(e) => println!("signature:   not checked (cannot run node-agent image-verify: {e})"),
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        for ok in [
            "127.0.0.1:5000/modules",
            "registry.example.org",
            "r.example:443/a/b-c",
            "[::1]:5000/m",
        ] {
            assert!(check_location(ok).is_ok(), "{ok}");
        }
        for bad in [
            "https://r.example/m",
            "-r",
            "r.example/Mod",
            "r.example//m",
            "",
            "r example",
            "r.example/m/",
            ".r",
        ] {
            assert!(check_location(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn module_args_and_versions() {
        assert_eq!(split_module_arg("hello"), Some(("hello", None)));
        assert_eq!(
            split_module_arg("hello:1.2.0"),
            Some(("hello", Some("1.2.0")))
        );
        for image in [
            "localhost/hello:latest",
            "hello@sha256:ab",
            "Hello",
            "hello:",
            "docker://x/y",
            "oci-archive:/x.tar",
        ] {
            assert_eq!(split_module_arg(image), None, "{image}");
        }
        assert_eq!(parse_version("v1.2.3"), Some(semver::Version::new(1, 2, 3)));
        assert!(parse_version("latest").is_none());
        assert!(parse_version("2.0.0-rc.1").is_some_and(|v| !v.pre.is_empty()));
    }

    #[test]
    fn core_requirements() {
        let l = |v: &str| HashMap::from([(module_image::CORE_VERSION.to_string(), v.to_string())]);
        assert!(core_requirement(&HashMap::new()).is_ok());
        assert!(core_requirement(&l(">=0.1.0")).is_ok());
        assert!(core_requirement(&l(">=99.0.0"))
            .unwrap_err()
            .contains("this core is"));
        assert!(core_requirement(&l("soon"))
            .unwrap_err()
            .contains("not a version requirement"));
    }
}
