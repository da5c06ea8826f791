//! module.init/40install-image: the module's image (docs/MODULES.md).
//!
//! 1. `EVENTS_IMAGE` (module/ID/module.env) is made available in root's storage: used as is when
//!    there (`podman image exists`), else `podman pull` (registry, `oci-archive:PATH`, any transport);
//! 2. its labels say where its imageroot is and which images its containers run;
//! 3. the imageroot tree is extracted into the module's home **by the module's user**: a stopped
//!    container of the image, `podman cp CTR:PATH/. -` (as root) piped into
//!    `runuser -u ID -- tar -x -C HOME` — root never writes through paths the user controls —,
//!    under umask 077, and every member is then checked to be private to the user, the home
//!    itself `0700` ([`extract`] says how);
//! 4. each image the module runs is copied from root's storage into the user's rootless storage
//!    (`podman save` into a file only root can read, handed to `podman load` as the user on
//!    stdin), or pulled by the user when root does not have it.
//!
//! Idempotent: extracting again rewrites the same files; an image the user has (same id) is kept.

use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Write};
use std::process::{Command, Stdio};

use core_events::module_image::{self, check_image_ref, LabelError, ModuleLabels};
use core_events::{ModuleId, Prefix};

use super::user::{home_relative, ModuleUser};
use super::{quiet_stdout_of, shown, stdout_of, stdout_ok, Ctx, Result, ToolError};

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

fn image_id(image: &str) -> Result<String> {
    stdout_ok(podman().args(["image", "inspect", "--format", "{{.Id}}", image]))
}

/// A container removed when dropped, also on an error path.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman()
            .args(["rm", "--force", "--ignore", &self.0])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

pub fn install_image(ctx: &Ctx, id: &ModuleId) -> Result<()> {
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
    let user = ModuleUser::require(id)?;

    // 1. The image in root's storage.
    let image = if root_has(&reference)? {
        let image = image_id(&reference)?;
        println!(
            "image {reference} found in local storage ({})",
            short_id(&image)
        );
        image
    } else {
        println!("pulling {reference}");
        let (st, out) = stdout_of(podman().args(["pull", "--quiet", &reference]))?;
        match out.lines().last().map(str::trim) {
            Some(image) if st.success() && !image.is_empty() => image.to_string(),
            _ => {
                return Err(ToolError::Unavailable(format!(
                    "cannot get the image {reference} of {id} (not in local storage; podman pull failed, see above)"
                )))
            }
        }
    };

    // 2. Its labels.
    let json =
        stdout_ok(podman().args(["image", "inspect", "--format", "{{json .Labels}}", &image]))?;
    let labels = parse_labels(&reference, &labels_from_json(&json)?)?;

    // 3. The imageroot into the home, written by the module's user.
    extract(&user, &image, &labels.imageroot)?;
    println!(
        "extracted {} of {reference} into {}",
        labels.imageroot,
        user.home.display()
    );

    // 4. The images the module runs, into the user's storage.
    for run_image in &labels.images {
        copy_to_user(&user, run_image)?;
    }
    Ok(())
}

/// `podman cp CTR:IMAGEROOT/. -` (root) | `runuser -u ID -- tar -x -C HOME -f -` (umask 077),
/// the stream read by root on its way (the member list), then the members made private.
///
/// What the image brings is private to the module however its files are made (world-readable
/// or world-writable files, a `./` member with the image's mode for the home itself):
/// * the user's `tar` runs with umask 077 ([`super::with_private_umask`]) and
///   `--no-same-permissions` (the default for a user, said anyway): GNU tar gives every member it
///   extracts — a file replaced, an existing directory, the home from a `./` member — the
///   archive's mode minus the umask, so no group or other bit. Not `--no-overwrite-dir`: that would
///   keep the modes of directories an earlier install left (0755 before homes were private),
///   while this way a re-run fixes them;
/// * checked, not assumed: the members' paths, read from the stream as it passes through root
///   ([`Tee`], the `tar` crate; nothing of the home is read), are handed to
///   [`ModuleUser::make_private`], which fixes (and prints) any member that still has a group or
///   other bit — exactly the members, not the rest of the home: what the module made there
///   itself and its container storage (whose layers must keep their modes) are its business;
/// * the home itself, which a `./` member may have changed (to 0500 say), is made exactly 0700
///   again by root on its own inode ([`ModuleUser::make_home_private`]).
fn extract(user: &ModuleUser, image: &str, imageroot: &str) -> Result<()> {
    let name = format!("agent-extract-{}-{}", user.name, std::process::id());
    let ctr = stdout_ok(podman().args([
        "create",
        "--quiet",
        "--name",
        &name,
        image,
        "/imageroot-extract",
    ]))?;
    let ctr = Container(ctr);
    let mut cp = podman();
    cp.args(["cp", &format!("{}:{imageroot}/.", ctr.0), "-"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let mut cp_child = cp
        .spawn()
        .map_err(|e| ToolError::OsError(format!("cannot run podman: {e}")))?;
    let stream = cp_child.stdout.take().expect("piped stdout");
    let mut tar = Command::new("runuser");
    tar.args(["-u", &user.name, "--", "tar", "-x", "--no-same-owner"])
        .args(["--no-same-permissions", "--delay-directory-restore", "-C"])
        .arg(&user.home)
        .args(["-f", "-"])
        .stdin(Stdio::piped());
    let tar_child = super::with_private_umask(|| tar.spawn());
    let mut tar_child = match tar_child {
        Ok(child) => child,
        Err(e) => {
            drop(stream);
            let _ = cp_child.wait();
            return Err(ToolError::OsError(format!("cannot run runuser: {e}")));
        }
    };
    let input = tar_child.stdin.take().expect("piped stdin");
    // Both pipe ends are closed when this returns: tar sees the end of its input, and podman cp
    // EPIPE if tar (or the listing) stopped early.
    let members = member_paths(Tee {
        from: stream,
        to: input,
    });
    let tar_status = tar_child
        .wait()
        .map_err(|e| ToolError::OsError(format!("runuser: {e}")))?;
    let cp_status = cp_child
        .wait()
        .map_err(|e| ToolError::OsError(format!("podman cp: {e}")))?;
    if !tar_status.success() {
        return Err(ToolError::Failed(format!(
            "extracting {imageroot} of the image as {} failed (tar: {tar_status})",
            user.name
        )));
    }
    if !cp_status.success() {
        return Err(ToolError::Failed(format!(
            "{} failed ({cp_status})",
            shown(&cp)
        )));
    }
    let members = members.map_err(|e| {
        ToolError::Failed(format!(
            "cannot read the members of {imageroot} of the image: {e}"
        ))
    })?;
    user.make_private(&members)?;
    user.make_home_private()
}

/// A reader that writes everything read through it to `to`: the imageroot stream, on its way
/// from `podman cp` to the user's `tar`.
struct Tee<R, W> {
    from: R,
    to: W,
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.from.read(buf)?;
        self.to.write_all(&buf[..n])?;
        Ok(n)
    }
}

/// The paths of the members of the tar archive read from `reader`, relative to the extraction
/// directory ([`home_relative`]), sorted, each once; the whole stream is read (what follows the
/// end-of-archive blocks too).
fn member_paths(reader: impl Read) -> std::io::Result<Vec<Vec<u8>>> {
    // Buffered above the tee: bytes buffered but not parsed yet were forwarded already.
    let mut archive = tar::Archive::new(std::io::BufReader::with_capacity(1 << 16, reader));
    let mut paths = BTreeSet::new();
    for entry in archive.entries()? {
        if let Some(path) = home_relative(&entry?.path_bytes()) {
            paths.insert(path);
        }
    }
    // The end-of-archive blocks and any padding. A tar that stopped reading at the end of the
    // archive is no error here; whether its extraction worked is its exit status.
    match std::io::copy(&mut archive.into_inner(), &mut std::io::sink()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e),
        _ => {}
    }
    Ok(paths.into_iter().collect())
}

/// One image the module runs, into the user's storage: copied from root's, else pulled.
fn copy_to_user(user: &ModuleUser, image: &str) -> Result<()> {
    let id = &user.name;
    if !root_has(image)? {
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
    }
    let want = image_id(image)?;
    let mut inspect = user.command("podman");
    inspect.args(["image", "inspect", "--format", "{{.Id}}", image]);
    let (st, have) = quiet_stdout_of(&mut inspect)?;
    if st.success() && have == want {
        println!("image {image}: {id} has it");
        return Ok(());
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
        "--format",
        "oci-archive",
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

    #[test]
    fn the_member_list_is_read_on_the_way_and_everything_is_passed_on() {
        let mut b = tar::Builder::new(Vec::new());
        let mut add = |path: &str, kind: tar::EntryType, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(0o777);
            h.set_size(data.len() as u64);
            // Raw names: "./" and ".." members as an archive may carry them.
            b.append_data(&mut h, path, data)
                .or_else(|_| {
                    h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
                    h.set_cksum();
                    b.append(&h, data)
                })
                .unwrap();
        };
        add("./", tar::EntryType::Directory, b"");
        add("./.config/", tar::EntryType::Directory, b"");
        add(
            ".config/module-events/x",
            tar::EntryType::Regular,
            b"#!/bin/sh\n",
        );
        add("../escape", tar::EntryType::Regular, b"no");
        let long = format!("{}/f", "d".repeat(150));
        add(&long, tar::EntryType::Regular, &[7u8; 3000]);
        add(".config/module-events/x", tar::EntryType::Regular, b"again");
        let archive = b.into_inner().unwrap();
        let raw = tar::Archive::new(&archive[..]).entries().unwrap().count();
        assert_eq!(raw, 6, "the odd members are in the archive");

        let mut passed = Vec::new();
        let paths = member_paths(Tee {
            from: &archive[..],
            to: &mut passed,
        })
        .unwrap();
        assert!(
            passed == archive,
            "every byte reaches tar, the end blocks too"
        );
        let paths: Vec<String> = paths
            .into_iter()
            .map(|p| String::from_utf8(p).unwrap())
            .collect();
        assert_eq!(
            paths,
            [
                "./.config".to_string(),
                "./.config/module-events/x".into(),
                format!("./{long}"),
            ]
        );
        assert!(member_paths(&b"not a tar archive, far too short"[..]).is_err());
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
