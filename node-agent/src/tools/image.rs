//! module.init/40install-image: the module's image (docs/MODULES.md), its signature under the
//! node's policy (docs/SIGNING.md, also checked by 10create-user before the user is made), then its
//! install:
//!
//! 1. `EVENTS_IMAGE` (module/ID/module.env) is made available in root's storage: used as is when
//!    there (`podman image inspect`), else `podman pull` (registry, `oci-archive:PATH`, any transport);
//! 2. its labels say where its imageroot is and which images its containers run;
//! 3. the imageroot's signature (MANIFEST, MANIFEST.sig: `module-sdk sign`) is checked under the
//!    node's policy ([`module_signing::NodeSigning`], `/etc/agent/signing.conf`): by 10create-user
//!    before the module's user exists ([`verify_image`]), and again on the mounted tree that
//!    40install-image extracts (a tag can move in between);
//! 4. the imageroot tree is extracted into the module's home **by the module's user**: root
//!    mounts the image read-only (`podman image mount`) and writes the tree as a tar stream into
//!    `runuser -u ID -- tar -x -C HOME` — root never writes through paths the user controls —,
//!    under umask 077, and every member is then checked to be private to the user, the home
//!    itself `0700` ([`extract`] says how);
//! 5. each image the module runs is copied from root's storage into the user's rootless storage
//!    (`podman save` into a file only root can read, handed to `podman load` as the user on
//!    stdin), or pulled by the user when root does not have it.
//!
//! Steps 4 and 5 run at the same time.
//!
//! Idempotent: extracting again rewrites the same files; an image the user has (same id) is kept.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use core_events::module_image::{self, check_image_ref, LabelError, ModuleLabels};
use core_events::{ModuleId, Prefix};

use module_signing::{NodeSigning, Policy};

use super::user::{home_relative, ModuleUser};
use super::{quiet_stdout_of, stdout_of, stdout_ok, Ctx, Result, ToolError};

/// The node's reading of a module image's labels (core_events::module_image): a rootful module
/// is one this node cannot install yet (69), any other refusal is bad input (65).
pub fn parse_labels(reference: &str, labels: &HashMap<String, String>) -> Result<ModuleLabels> {
    module_image::parse_labels(reference, labels).map_err(|e| match e {
        LabelError::Rootful { .. } => ToolError::Unavailable(e.to_string()),
        _ => ToolError::Invalid(e.to_string()),
    })
}

/// The labels of an image, from `podman image inspect --format '{{json .Labels}}'` (`null` when
/// it has none).
pub fn labels_from_json(text: &str) -> Result<HashMap<String, String>> {
    serde_json::from_str::<Option<HashMap<String, String>>>(text)
        .map(Option::unwrap_or_default)
        .map_err(|e| ToolError::Failed(format!("cannot read the labels podman printed: {e}")))
}

/// The 12-character short form of an image id.
pub fn short_id(id: &str) -> &str {
    let id = id.strip_prefix("sha256:").unwrap_or(id);
    id.get(..12).unwrap_or(id)
}

fn podman() -> Command {
    Command::new("podman")
}

/// Whether root's storage has `image`.
fn root_has(image: &str) -> Result<bool> {
    let (st, _) = quiet_stdout_of(podman().args(["image", "exists", image]))?;
    Ok(st.success())
}

/// What root's storage knows of `image`: its id and its labels, or `None` when it does not have
/// it. One podman call in the usual case (each costs ~45 ms on a node); `image exists` only
/// when the inspect failed, to tell "not here" from a real error.
pub(super) fn root_image(image: &str) -> Result<Option<RootImage>> {
    let (st, out) = quiet_stdout_of(podman().args([
        "image",
        "inspect",
        "--format",
        "{{.Id}} {{json .Labels}}",
        image,
    ]))?;
    if st.success() {
        let (id, labels) = out.split_once(' ').unwrap_or((out.as_str(), "null"));
        if !id.is_empty() {
            return Ok(Some(RootImage {
                id: id.to_string(),
                labels: labels_from_json(labels)?,
            }));
        }
    }
    if !root_has(image)? {
        return Ok(None);
    }
    Err(ToolError::Failed(format!(
        "podman image inspect {image} failed ({st}) although the image exists"
    )))
}

/// Rootless Podman's default storage, relative to the user's home.
const ROOTLESS_STORAGE: &str = ".local/share/containers/storage";

/// An image in root's storage.
pub struct RootImage {
    pub id: String,
    pub labels: HashMap<String, String>,
}

/// An image mounted read-only by root (`podman image mount`), unmounted when dropped, also on an
/// error path. Reading the tree from the mount costs ~60 ms where `podman create` + `podman cp` +
/// `podman rm` cost ~335 ms (Podman 5.4, docs/BENCHMARKS.md).
pub(super) struct ImageMount {
    image: String,
    pub path: PathBuf,
}

impl ImageMount {
    pub(super) fn new(image: &str) -> Result<ImageMount> {
        let path = stdout_ok(podman().args(["image", "mount", image]))?;
        let path = PathBuf::from(path.trim());
        if !path.is_absolute() {
            return Err(ToolError::Failed(format!(
                "podman image mount {image} printed {path:?}, not a directory"
            )));
        }
        Ok(ImageMount {
            image: image.to_string(),
            path,
        })
    }
}

impl Drop for ImageMount {
    fn drop(&mut self) {
        let _ = podman()
            .args(["image", "unmount", &self.image])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// `reference` from root's storage, else pulled into it; `whose` ("of hello1", "of snapshot …")
/// names what needs it in the error.
pub fn root_image_or_pull(reference: &str, whose: &str) -> Result<RootImage> {
    if let Some(image) = root_image(reference)? {
        println!(
            "image {reference} found in local storage ({})",
            short_id(&image.id)
        );
        return Ok(image);
    }
    println!("pulling {reference}");
    let (st, out) = stdout_of(podman().args(["pull", "--quiet", reference]))?;
    let pulled = match out.lines().last().map(str::trim) {
        Some(image) if st.success() && !image.is_empty() => image.to_string(),
        _ => {
            return Err(ToolError::Unavailable(format!(
                "cannot get the image {reference} {whose} (not in local storage; podman pull failed, see above)"
            )))
        }
    };
    root_image(&pulled)?.ok_or_else(|| {
        ToolError::Failed(format!(
            "podman pulled {reference} as {pulled}, which it then does not know"
        ))
    })
}

/// EVENTS_IMAGE of module `id` (module/ID/module.env), checked to be an image reference.
pub(super) fn events_image(ctx: &Ctx, id: &ModuleId) -> Result<String> {
    let env_key = Prefix::module(id.agent_name().clone()).module_env();
    let reference: Option<String> = redis::cmd("HGET")
        .arg(&env_key)
        .arg(core_events::module_env::EVENTS_IMAGE)
        .query(&mut ctx.con()?)?;
    let reference = reference.unwrap_or_default();
    if reference.is_empty() {
        return Err(ToolError::Invalid(format!(
            "{env_key} has no EVENTS_IMAGE (the module's image): redis-cli HSET {env_key} EVENTS_IMAGE localhost/hello:latest"
        )));
    }
    if check_image_ref(&reference).is_err() {
        return Err(ToolError::Invalid(format!(
            "EVENTS_IMAGE '{reference}' of {id} is not an image reference"
        )));
    }
    Ok(reference)
}

/// The node's signature settings ([`module_signing::NODE_CONFIG`]); a file that is wrong refuses
/// the install (a typo must not weaken `require`).
pub(super) fn node_signing() -> Result<NodeSigning> {
    NodeSigning::load(Path::new(module_signing::NODE_CONFIG)).map_err(|e| {
        ToolError::Config(format!(
            "the node's signature settings: {e}; nothing is installed until it is fixed (docs/SIGNING.md)"
        ))
    })
}

/// The image's imageroot (`tree`, in its read-only mount) checked under the node's policy:
/// refused under `require` unless signed by a trusted key with every file matching; a warning
/// printed under `warn`; nothing read under `off`.
fn check_signature(
    signing: &NodeSigning,
    reference: &str,
    image: &RootImage,
    imageroot: &str,
    tree: &Path,
) -> Result<()> {
    let named = |mut v: module_signing::Verdict| {
        // The mount point means nothing to the reader: the image and its imageroot do.
        v.subject = PathBuf::from(format!("{imageroot} of {reference}"));
        v
    };
    match module_signing::verify(tree, &signing.trust_dir, signing.policy) {
        Ok(v) => {
            let v = named(v);
            match &v.warning {
                Some(_) => println!(
                    "warning: image {reference} ({}): {v}; accepted anyway (signature policy warn, {})",
                    short_id(&image.id),
                    signing.origin()
                ),
                None => println!("image {reference} ({}): {v}", short_id(&image.id)),
            }
            Ok(())
        }
        Err(module_signing::Error::Rejected(v)) => Err(ToolError::Invalid(format!(
            "image {reference} ({}) refused by the node's signature policy require ({}): {}; the module is not installed",
            short_id(&image.id),
            signing.origin(),
            named(*v)
        ))),
        Err(e) => Err(ToolError::Failed(format!(
            "cannot check the signature of {imageroot} of {reference}: {e}"
        ))),
    }
}

/// When the signature is checked: by `node-agent module verify-image` (every problem is an
/// error), or by 10create-user before the module's user is made (only a refused signature is:
/// an image that cannot be read yet is left to 40install-image, which owns that error and checks
/// the signature again on the tree it extracts; under `warn`, which refuses nothing, the early
/// check is skipped and 40install-image alone reports).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Check {
    Strict,
    BeforeInstall,
}

/// The image of module `id` in root's storage (pulled if need be), its labels, and its
/// imageroot's signature under the node's policy.
pub fn verify_image(ctx: &Ctx, id: &ModuleId, when: Check) -> Result<()> {
    let signing = node_signing()?;
    match events_image(ctx, id) {
        Ok(reference) => verify_reference(&signing, &reference, &format!("of {id}"), when),
        Err(e) => deferred(when, e),
    }
}

/// `node-agent image-verify REFERENCE`: [`verify_reference`] of any image, strictly.
pub fn verify_any(reference: &str) -> Result<()> {
    check_image_ref(reference).map_err(|e| ToolError::Invalid(format!("image: {e}")))?;
    verify_reference(&node_signing()?, reference, "to verify", Check::Strict)
}

fn deferred(when: Check, e: ToolError) -> Result<()> {
    if when == Check::Strict {
        return Err(e);
    }
    println!("the image's signature is checked by 40install-image: {e}");
    Ok(())
}

/// `reference` in root's storage (pulled if need be; `whose` names what needs it), its labels,
/// and its imageroot's signature under `signing`.
fn verify_reference(
    signing: &NodeSigning,
    reference: &str,
    whose: &str,
    when: Check,
) -> Result<()> {
    if signing.policy == Policy::Off {
        println!(
            "image {reference}: signature not checked (signature policy off, {})",
            signing.origin()
        );
        return Ok(());
    }
    if signing.policy == Policy::Warn && when == Check::BeforeInstall {
        // Nothing is refused under warn: the early check would only cost an image mount
        // (~170 ms of module.init, docs/BENCHMARKS.md); 40install-image says what it finds.
        return Ok(());
    }
    let read = || -> Result<_> {
        let image = root_image_or_pull(reference, whose)?;
        let labels = parse_labels(reference, &image.labels)?;
        let mount = ImageMount::new(&image.id)?;
        let tree = dir_in_image(&mount.path, &labels.imageroot)?;
        Ok((image, labels, mount, tree))
    };
    match read() {
        Ok((image, labels, _mount, tree)) => {
            check_signature(signing, reference, &image, &labels.imageroot, &tree)
        }
        Err(e) => deferred(when, e),
    }
}

pub fn install_image(ctx: &Ctx, id: &ModuleId) -> Result<()> {
    install(ctx, id, true)
}

/// [`install_image`] of an image the node accepted when it installed it before, without its
/// signature checked again: an upgrade's rollback puts back what ran, even when the node's policy
/// has become stricter since (refusing it would leave the module on the version that failed).
pub fn reinstall_image(ctx: &Ctx, id: &ModuleId) -> Result<()> {
    install(ctx, id, false)
}

fn install(ctx: &Ctx, id: &ModuleId, check_signature_now: bool) -> Result<()> {
    let reference = events_image(ctx, id)?;
    // Settings that cannot be read refuse an install, never the rollback's reinstall.
    let signing = check_signature_now.then(node_signing).transpose()?;
    let user = ModuleUser::require(id)?;

    // 1. The image in root's storage.
    let image = root_image_or_pull(&reference, &format!("of {id}"))?;

    // 2. Its labels.
    let labels = parse_labels(&reference, &image.labels)?;

    // 3. to 5., the signature and the extraction beside the copies, as they are independent and
    // each is mostly waiting on podman, tar or the user's first podman call (~0.2 s of a new
    // module's install, docs/BENCHMARKS.md): the imageroot into the home, written by the module's
    // user, and the images the module runs into the user's storage.
    let (extracted, copied) = std::thread::scope(|scope| {
        let copies = scope.spawn(|| {
            labels
                .images
                .iter()
                .try_for_each(|run_image| copy_to_user(&user, run_image))
        });
        let extracted = extract(&user, &image.id, &labels.imageroot, |tree| match &signing {
            Some(signing) if signing.policy != Policy::Off => {
                check_signature(signing, &reference, &image, &labels.imageroot, tree)
            }
            _ => Ok(()),
        });
        let copied = copies.join().unwrap_or_else(|_| {
            Err(ToolError::Failed(
                "copying the module's images failed unexpectedly".into(),
            ))
        });
        (extracted, copied)
    });
    extracted?;
    println!(
        "extracted {} of {reference} into {}",
        labels.imageroot,
        user.home.display()
    );
    copied
}

/// The imageroot, read by root from the image mounted read-only ([`ImageMount`]) and written as a
/// tar stream into `runuser -u ID -- tar -x -C HOME -f -` (umask 077), then the members made
/// private.
///
/// Reading the image: every component of the imageroot path must be a directory in the image,
/// not a symlink (an absolute symlink would resolve on the node's own file system, outside the
/// image); below it nothing is followed — a symlink is archived as a symlink — and anything but
/// files, directories and symlinks (a FIFO, a device node) refuses the image ([`write_tree`]).
///
/// What the image brings is private to the module however its files are made (world-readable
/// or world-writable files):
/// * the user's `tar` runs with umask 077 ([`super::with_private_umask`]) and
///   `--no-same-permissions` (the default for a user, said anyway): GNU tar gives every member it
///   extracts — a file replaced, an existing directory — the archive's mode minus the umask, so
///   no group or other bit. Not `--no-overwrite-dir`: that would keep the modes of directories an
///   earlier install left (0755 before homes were private), while this way a re-run fixes them;
/// * checked, not assumed: the members' paths (what root wrote; nothing of the home is read) are
///   handed to [`ModuleUser::make_private`], which fixes (and prints) any member that still has a
///   group or other bit — exactly the members, not the rest of the home: what the module made
///   there itself and its container storage (whose layers must keep their modes) are its business;
/// * the stream has no member for the imageroot itself, so the home's own mode is not touched;
///   it is made exactly 0700 again by root on its own inode anyway
///   ([`ModuleUser::make_home_private`]).
///
/// `check` is called on the mounted tree before anything is written: the signature is checked on
/// the very tree that is extracted.
fn extract(
    user: &ModuleUser,
    image: &str,
    imageroot: &str,
    check: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    let mount = ImageMount::new(image)?;
    let source = dir_in_image(&mount.path, imageroot)?;
    check(&source)?;
    let mut tar = Command::new("runuser");
    tar.args(["-u", &user.name, "--", "tar", "-x", "--no-same-owner"])
        .args(["--no-same-permissions", "--delay-directory-restore", "-C"])
        .arg(&user.home)
        .args(["-f", "-"])
        .stdin(Stdio::piped());
    let mut tar_child = super::with_private_umask(|| tar.spawn())
        .map_err(|e| ToolError::OsError(format!("cannot run runuser: {e}")))?;
    let input = tar_child.stdin.take().expect("piped stdin");
    // `input` is closed when write_tree returns: tar sees the end of its input.
    let members = write_tree(&source, std::io::BufWriter::with_capacity(1 << 16, input));
    let tar_status = tar_child
        .wait()
        .map_err(|e| ToolError::OsError(format!("runuser: {e}")))?;
    if !tar_status.success() {
        return Err(ToolError::Failed(format!(
            "extracting {imageroot} of the image as {} failed (tar: {tar_status})",
            user.name
        )));
    }
    let members = members.map_err(|e| match e {
        TreeError::Refused(why) => ToolError::Invalid(format!("{imageroot} of the image: {why}")),
        TreeError::Io(e) => ToolError::Failed(format!("cannot read {imageroot} of the image: {e}")),
    })?;
    drop(mount);
    user.make_private(&members)?;
    user.make_home_private()
}

/// `imageroot` (absolute, without `..`: the labels' rule) below the image's mount point, each
/// component checked to be a real directory of the image.
pub(super) fn dir_in_image(mount: &Path, imageroot: &str) -> Result<PathBuf> {
    let mut path = mount.to_path_buf();
    for part in Path::new(imageroot).components() {
        let std::path::Component::Normal(name) = part else {
            continue;
        };
        path.push(name);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(ToolError::Invalid(format!(
                    "the image's imageroot {imageroot} goes through a symlink ({}): not allowed",
                    path.strip_prefix(mount).unwrap_or(&path).display()
                )))
            }
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(ToolError::Invalid(format!(
                    "the image's imageroot {imageroot} is not a directory"
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ToolError::Invalid(format!(
                    "the image has no {imageroot} (its imageroot label)"
                )))
            }
            Err(e) => {
                return Err(ToolError::Failed(format!(
                    "cannot read {imageroot} in the image: {e}"
                )))
            }
        }
    }
    Ok(path)
}

/// Why a tree could not be written as an archive.
#[derive(Debug)]
enum TreeError {
    /// The tree holds something an imageroot may not.
    Refused(String),
    Io(std::io::Error),
}

impl From<std::io::Error> for TreeError {
    fn from(e: std::io::Error) -> Self {
        TreeError::Io(e)
    }
}

/// Writes the tree below `root` (not `root` itself) as a tar stream to `out`, parents before
/// children, names in byte order, nothing followed; returns the members' paths relative to the
/// extraction directory ([`home_relative`]), sorted. Walks with its own stack: a deep tree cannot
/// exhaust the thread's.
fn write_tree(root: &Path, out: impl Write) -> std::result::Result<Vec<Vec<u8>>, TreeError> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::FileTypeExt;
    let mut archive = tar::Builder::new(out);
    archive.follow_symlinks(false);
    let mut members = BTreeSet::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(dir) = pending.pop() {
        let mut names: Vec<_> = std::fs::read_dir(root.join(&dir))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<std::io::Result<_>>()?;
        names.sort();
        // Reversed onto the stack, so that subdirectories come out in name order.
        let mut subdirs = Vec::new();
        for name in names {
            let rel = dir.join(&name);
            let path = root.join(&rel);
            let kind = std::fs::symlink_metadata(&path)?.file_type();
            if kind.is_dir() {
                archive.append_dir(&rel, &path)?;
                subdirs.push(rel.clone());
            } else if kind.is_file() || kind.is_symlink() {
                archive.append_path_with_name(&path, &rel)?;
            } else {
                let what = if kind.is_fifo() {
                    "a FIFO"
                } else if kind.is_socket() {
                    "a socket"
                } else {
                    "a device node"
                };
                return Err(TreeError::Refused(format!(
                    "{} is {what}: an imageroot holds only files, directories and symlinks",
                    rel.display()
                )));
            }
            if let Some(member) = home_relative(rel.as_os_str().as_bytes()) {
                members.insert(member);
            }
        }
        pending.extend(subdirs.into_iter().rev());
    }
    archive.into_inner()?.flush()?;
    Ok(members.into_iter().collect())
}

/// One image the module runs, into the user's storage: copied from root's, else pulled.
fn copy_to_user(user: &ModuleUser, image: &str) -> Result<()> {
    let id = &user.name;
    let Some(want) = root_image(image)? else {
        let mut pull = user.command("podman");
        pull.args(["pull", "--quiet", image]).stdout(Stdio::null());
        let st = super::status(&mut pull)?;
        if !st.success() {
            return Err(ToolError::Unavailable(format!(
                "{id} cannot pull the image {image} ({st}, see above)"
            )));
        }
        println!("image {image}: pulled by {id}");
        return Ok(());
    };
    // A user without container storage yet (a new module) has no image: asking its podman would
    // only cost the ~150 ms of a user's first podman call, which the load below pays anyway.
    // Only whether the path exists is looked at, never what is in it.
    let has_storage = std::fs::symlink_metadata(user.home.join(ROOTLESS_STORAGE)).is_ok();
    if has_storage {
        let mut inspect = user.command("podman");
        inspect.args(["image", "inspect", "--format", "{{.Id}}", image]);
        let (st, have) = quiet_stdout_of(&mut inspect)?;
        if st.success() && have == want.id {
            println!("image {image}: {id} has it");
            return Ok(());
        }
    }
    // Through a file only root can read (podman save cannot write to a pipe); the user reads it
    // on stdin, opened by root. Removed when dropped.
    let archive = tempfile::Builder::new()
        .prefix(&format!("agent-image-{id}."))
        .tempfile_in("/var/tmp")
        .map_err(|e| ToolError::Failed(format!("cannot make a file in /var/tmp: {e}")))?;
    let path = archive.path().to_string_lossy().into_owned();
    super::run_ok(podman().args([
        "save",
        "--quiet",
        // docker-archive (podman's default) keeps the image's name for `load`, and is the faster
        // of the two on Podman 5.4: save 54 ms and load 283 ms against 83 and 317 for oci-archive.
        "--format",
        "docker-archive",
        "--output",
        &path,
        image,
    ]))?;
    let input = std::fs::File::open(archive.path())
        .map_err(|e| ToolError::Failed(format!("cannot open {path}: {e}")))?;
    let mut load = user.command("podman");
    load.args(["load", "--quiet"])
        .stdin(Stdio::from(input))
        .stdout(Stdio::null());
    let st = load
        .status()
        .map_err(|e| ToolError::OsError(format!("cannot run runuser: {e}")))?;
    if !st.success() {
        return Err(ToolError::Failed(format!(
            "podman load of {image} as {id} failed ({st})"
        )));
    }
    println!("image {image}: copied to {id}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (format!("{}.{k}", module_image::LABEL_PREFIX), v.to_string()))
            .collect()
    }

    #[test]
    fn module_labels() {
        let l = parse_labels(
            "r",
            &labels(&[
                ("imageroot", "/imageroot/"),
                ("images", " localhost/a:1  docker.io/b:2 localhost/a:1 "),
                ("rootful", "false"),
            ]),
        )
        .unwrap();
        assert_eq!(l.imageroot, "/imageroot");
        assert_eq!(l.images, ["localhost/a:1", "docker.io/b:2"]);
        let l = parse_labels("r", &labels(&[("imageroot", "/x")])).unwrap();
        assert!(l.images.is_empty());
    }

    #[test]
    fn refused_labels() {
        let e = parse_labels("busybox", &HashMap::new()).unwrap_err();
        assert_eq!(e.exit_code(), 65);
        assert!(e.to_string().contains("not a module image"), "{e}");
        for bad in ["imageroot", "./imageroot", "/a/../etc"] {
            let e = parse_labels("r", &labels(&[("imageroot", bad)])).unwrap_err();
            assert!(e.to_string().contains("not an absolute path"), "{e}");
        }
        let e =
            parse_labels("r", &labels(&[("imageroot", "/i"), ("rootful", "true")])).unwrap_err();
        assert_eq!(e.exit_code(), 69);
        assert!(e.to_string().contains("rootful"), "{e}");
        let e = parse_labels("r", &labels(&[("imageroot", "/i"), ("rootful", "yes")])).unwrap_err();
        assert_eq!(e.exit_code(), 65);
        let e =
            parse_labels("r", &labels(&[("imageroot", "/i"), ("images", "a --rm")])).unwrap_err();
        assert!(e.to_string().contains("bad entry '--rm'"), "{e}");
    }

    /// The archive's members as (path, kind, link target or content).
    fn members_of(bytes: &[u8]) -> Vec<(String, char, String)> {
        let mut archive = tar::Archive::new(bytes);
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let path = e.path().unwrap().to_string_lossy().into_owned();
                let kind = e.header().entry_type();
                let (kind, detail) = if kind.is_dir() {
                    ('d', String::new())
                } else if kind.is_symlink() {
                    let target = e.link_name().unwrap().unwrap();
                    ('l', target.to_string_lossy().into_owned())
                } else {
                    let mut text = String::new();
                    std::io::Read::read_to_string(&mut e, &mut text).unwrap();
                    ('f', text)
                };
                (path, kind, detail)
            })
            .collect()
    }

    #[test]
    fn the_tree_is_archived_without_following_anything() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join(".config/module-events/module.init")).unwrap();
        std::fs::write(root.join(".config/module-events/module.init/10a"), "step").unwrap();
        std::fs::create_dir(root.join("b")).unwrap();
        std::fs::write(root.join("b/file"), "x").unwrap();
        // Links stay links: one to the node's own /etc must not bring /etc along.
        symlink("/etc", root.join("etc-link")).unwrap();
        symlink("b/file", root.join("rel-link")).unwrap();
        let mut out = Vec::new();
        let members = write_tree(root, &mut out).unwrap();
        let got = members_of(&out);
        let want = [
            (".config", 'd', ""),
            ("b", 'd', ""),
            ("etc-link", 'l', "/etc"),
            ("rel-link", 'l', "b/file"),
            (".config/module-events", 'd', ""),
            (".config/module-events/module.init", 'd', ""),
            (".config/module-events/module.init/10a", 'f', "step"),
            ("b/file", 'f', "x"),
        ];
        let got: Vec<(&str, char, &str)> = got
            .iter()
            .map(|(p, k, d)| (p.trim_end_matches('/'), *k, d.as_str()))
            .collect();
        assert_eq!(got, want);
        let members: Vec<String> = members
            .iter()
            .map(|m| String::from_utf8_lossy(m).into_owned())
            .collect();
        assert_eq!(
            members,
            [
                "./.config",
                "./.config/module-events",
                "./.config/module-events/module.init",
                "./.config/module-events/module.init/10a",
                "./b",
                "./b/file",
                "./etc-link",
                "./rel-link",
            ]
        );
    }

    #[test]
    fn a_tree_with_a_fifo_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        match write_tree(dir.path(), Vec::new()) {
            Err(TreeError::Refused(why)) => assert!(why.contains("pipe is a FIFO"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_imageroot_may_not_go_through_a_symlink() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let mount = dir.path();
        std::fs::create_dir_all(mount.join("srv/imageroot")).unwrap();
        std::fs::write(mount.join("file"), "").unwrap();
        symlink("/etc", mount.join("imageroot")).unwrap();
        symlink("srv", mount.join("via")).unwrap();
        assert_eq!(
            dir_in_image(mount, "/srv/imageroot").unwrap(),
            mount.join("srv/imageroot")
        );
        for (imageroot, says) in [
            ("/imageroot", "goes through a symlink (imageroot)"),
            ("/via/imageroot", "goes through a symlink (via)"),
            ("/file", "is not a directory"),
            ("/nothing", "the image has no /nothing"),
        ] {
            let e = dir_in_image(mount, imageroot).unwrap_err();
            assert_eq!(e.exit_code(), 65, "{e}");
            assert!(e.to_string().contains(says), "{imageroot}: {e}");
        }
    }

    #[test]
    fn labels_json_and_ids() {
        assert!(labels_from_json("null").unwrap().is_empty());
        let l = labels_from_json(r#"{"org.agent-system.module.imageroot":"/imageroot"}"#).unwrap();
        assert_eq!(l[module_image::IMAGEROOT], "/imageroot");
        assert!(labels_from_json("<no value>").is_err());
        assert_eq!(short_id("0123456789abcdef"), "0123456789ab");
        assert_eq!(short_id("sha256:0123456789abcdef"), "0123456789ab");
        assert_eq!(short_id("abc"), "abc");
    }
}
