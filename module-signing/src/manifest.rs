//! The MANIFEST of a tree: one line per regular file or symlink, `sha256  path  mode`.
//!
//! ```text
//! # agent-module-manifest v1
//! 5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03  actions/configure/10set  100755
//! 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08  bin/helper  100755
//! 1b4f0e9851971998e732078544c96b36c3d01cedf7caa332359d6f1d83567014  events/ev/30x  120000  /dev/null
//! ```
//!
//! * The first line is the header above; every line ends with `\n`; fields are separated by two
//!   spaces and never contain a space.
//! * `sha256` is the lowercase hex SHA-256 of the file's content; for a symlink, of its target.
//! * `path` is relative to the tree's root, `/`-separated, without `.`/`..`/empty components. Bytes
//!   outside `!`..`~` and `%` itself are written `%XX` (uppercase hex), so a path with spaces or
//!   newlines still fits one line and every path has exactly one spelling.
//! * `mode` is six octal digits: `100` + the permission bits (`100755`, `104755` with setuid) for
//!   a regular file, `120000` for a symlink, which has a fourth field: its target, escaped like a
//!   path. A target may be absolute (`/dev/null` masks a step): it is recorded, not judged.
//! * Lines are sorted by the raw bytes of the path, each path once. Directories are not listed
//!   (an empty directory is not covered); `MANIFEST` and `MANIFEST.sig` at the root are left out.
//!
//! [`Manifest::parse`] accepts exactly what [`Manifest::to_bytes`] writes, nothing else: any other
//! input is an error, never a panic.

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sequoia_openpgp::types::HashAlgorithm;

use crate::Error;

/// The header line (without its newline).
pub const HEADER: &str = "# agent-module-manifest v1";
/// Name of the manifest file at the root of a signed tree.
pub const MANIFEST_FILE: &str = "MANIFEST";
/// Name of the detached signature of [`MANIFEST_FILE`].
pub const SIGNATURE_FILE: &str = "MANIFEST.sig";
/// Longest path or symlink target accepted, in bytes.
pub const MAX_PATH: usize = 4096;
/// Largest MANIFEST read from disk.
pub const MAX_MANIFEST_BYTES: u64 = 64 << 20;

const MODE_SYMLINK: u32 = 0o120000;
const MODE_FILE: u32 = 0o100000;

/// What a manifest line describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file with these permission bits (`mode & 0o7777`).
    File { perm: u32 },
    /// A symlink with this target (raw bytes).
    Symlink { target: Vec<u8> },
}

/// One line of a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative path (raw bytes; validated: no `..`, no absolute path).
    pub path: PathBuf,
    /// SHA-256 of the content (file) or of the target (symlink).
    pub sha256: [u8; 32],
    pub kind: EntryKind,
}

impl Entry {
    /// The mode field: `100` + permission bits, or `120000`.
    pub fn mode(&self) -> u32 {
        match self.kind {
            EntryKind::File { perm } => MODE_FILE | perm,
            EntryKind::Symlink { .. } => MODE_SYMLINK,
        }
    }

    fn describe(&self) -> String {
        match &self.kind {
            EntryKind::File { perm } => format!("a file with mode {:06o}", MODE_FILE | perm),
            EntryKind::Symlink { target } => {
                format!("a symlink to {}", String::from_utf8_lossy(target))
            }
        }
    }
}

/// A parsed or built manifest: entries sorted by path bytes, each path once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    entries: Vec<Entry>,
}

/// A file of the tree that differs from its manifest line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Modified {
    pub path: PathBuf,
    /// What differs, in words.
    pub what: String,
}

/// How a tree differs from its manifest. Paths are relative to the tree's root.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub modified: Vec<Modified>,
    /// Listed in the manifest, absent from the tree.
    pub missing: Vec<PathBuf>,
    /// In the tree (file, symlink or anything else but a directory), not listed.
    pub extra: Vec<PathBuf>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.modified.is_empty() && self.missing.is_empty() && self.extra.is_empty()
    }
}

impl std::fmt::Display for Changes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if !self.modified.is_empty() {
            let items: Vec<String> = self
                .modified
                .iter()
                .map(|m| format!("{} ({})", m.path.display(), m.what))
                .collect();
            parts.push(format!("modified: {}", items.join(", ")));
        }
        for (label, list) in [("missing", &self.missing), ("extra", &self.extra)] {
            if !list.is_empty() {
                let items: Vec<String> = list.iter().map(|p| p.display().to_string()).collect();
                parts.push(format!("{label}: {}", items.join(", ")));
            }
        }
        if parts.is_empty() {
            f.write_str("no differences")
        } else {
            f.write_str(&parts.join("; "))
        }
    }
}

/// The result of checking one file against a manifest (used by `agentctl explain`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileCheck {
    /// The manifest has no line for this path.
    NotListed,
    /// Listed, and the file matches its line.
    Matches,
    /// Listed, and the file differs (or is gone); the string says how.
    Differs(String),
}

impl Manifest {
    /// The entries, sorted by path bytes.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The entry for a relative path, if listed.
    pub fn get(&self, rel: &Path) -> Option<&Entry> {
        let key = rel.as_os_str().as_bytes();
        self.entries
            .binary_search_by(|e| e.path.as_os_str().as_bytes().cmp(key))
            .ok()
            .map(|i| &self.entries[i])
    }

    /// Builds a manifest from entries in any order; rejects invalid paths and duplicates.
    pub fn from_entries(mut entries: Vec<Entry>) -> Result<Self, Error> {
        entries.sort_by(|a, b| {
            a.path
                .as_os_str()
                .as_bytes()
                .cmp(b.path.as_os_str().as_bytes())
        });
        let mut set = HashSet::new();
        for e in &entries {
            check_rel_path(e.path.as_os_str().as_bytes()).map_err(|reason| Error::UnsafePath {
                path: e.path.clone(),
                reason,
            })?;
            if !set.insert(e.path.as_os_str().as_bytes()) {
                return Err(Error::UnsafePath {
                    path: e.path.clone(),
                    reason: "listed twice",
                });
            }
        }
        check_no_file_is_a_dir(&entries, &set)
            .map_err(|(path, reason)| Error::UnsafePath { path, reason })?;
        Ok(Manifest { entries })
    }

    /// The canonical text form.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.entries.len() * 100);
        out.extend_from_slice(HEADER.as_bytes());
        out.push(b'\n');
        for e in &self.entries {
            out.extend_from_slice(hex(&e.sha256).as_bytes());
            out.extend_from_slice(b"  ");
            escape_into(e.path.as_os_str().as_bytes(), &mut out);
            out.extend_from_slice(format!("  {:06o}", e.mode()).as_bytes());
            if let EntryKind::Symlink { target } = &e.kind {
                out.extend_from_slice(b"  ");
                escape_into(target, &mut out);
            }
            out.push(b'\n');
        }
        out
    }

    /// Parses the canonical text form. Anything else is [`Error::ManifestSyntax`].
    pub fn parse(bytes: &[u8]) -> Result<Self, Error> {
        let syntax = |line: usize, reason: String| Error::ManifestSyntax { line, reason };
        if bytes.is_empty() {
            return Err(syntax(1, "empty manifest".into()));
        }
        if bytes.last() != Some(&b'\n') {
            return Err(syntax(
                bytes.split(|&b| b == b'\n').count(),
                "the last line does not end with a newline".into(),
            ));
        }
        let body = &bytes[..bytes.len() - 1];
        let mut lines = body.split(|&b| b == b'\n');
        if lines.next() != Some(HEADER.as_bytes()) {
            return Err(syntax(1, format!("the first line must be {HEADER:?}")));
        }
        let mut entries: Vec<Entry> = Vec::new();
        for (i, line) in lines.enumerate() {
            let n = i + 2;
            let entry = parse_line(line).map_err(|r| syntax(n, r))?;
            if let Some(prev) = entries.last() {
                if prev.path.as_os_str().as_bytes() >= entry.path.as_os_str().as_bytes() {
                    return Err(syntax(
                        n,
                        format!(
                            "{} is not after {} (lines must be sorted by path, each path once)",
                            entry.path.display(),
                            prev.path.display()
                        ),
                    ));
                }
            }
            entries.push(entry);
        }
        let set: HashSet<&[u8]> = entries
            .iter()
            .map(|e| e.path.as_os_str().as_bytes())
            .collect();
        if let Err((path, reason)) = check_no_file_is_a_dir(&entries, &set) {
            let n = entries.iter().position(|e| e.path == path).unwrap_or(0) + 2;
            return Err(syntax(n, format!("{}: {reason}", path.display())));
        }
        let m = Manifest { entries };
        // Every path has one spelling: what we parsed must be what we would write.
        if m.to_bytes() != bytes {
            return Err(syntax(
                0,
                "not in canonical form (escapes must be uppercase %XX and only where needed)"
                    .into(),
            ));
        }
        Ok(m)
    }

    /// Compares the tree at `root` with this manifest.
    pub fn compare(&self, root: &Path) -> Result<Changes, Error> {
        let found = walk(root)?;
        let mut changes = Changes::default();
        let mut listed: BTreeMap<&[u8], &Entry> = self
            .entries
            .iter()
            .map(|e| (e.path.as_os_str().as_bytes(), e))
            .collect();
        for (rel, kind) in &found {
            match listed.remove(rel.as_os_str().as_bytes()) {
                None => changes.extra.push(rel.clone()),
                Some(entry) => {
                    if let Some(what) = differs(root, rel, kind, entry)? {
                        changes.modified.push(Modified {
                            path: rel.clone(),
                            what,
                        });
                    }
                }
            }
        }
        changes.missing = listed.values().map(|e| e.path.clone()).collect();
        Ok(changes)
    }

    /// Checks one file of the tree at `root` against its line, if it has one.
    pub fn check_file(&self, root: &Path, rel: &Path) -> FileCheck {
        let Some(entry) = self.get(rel) else {
            return FileCheck::NotListed;
        };
        let full = root.join(rel);
        let kind = match std::fs::symlink_metadata(&full) {
            Ok(meta) => Found::of(&meta),
            Err(e) => return FileCheck::Differs(format!("cannot stat: {e}")),
        };
        match differs(root, rel, &kind, entry) {
            Ok(None) => FileCheck::Matches,
            Ok(Some(what)) => FileCheck::Differs(what),
            Err(e) => FileCheck::Differs(e.to_string()),
        }
    }
}

/// Builds the manifest of the tree at `root`: every regular file and symlink, recursively, without
/// following symlinks, leaving out `MANIFEST` and `MANIFEST.sig` at the root. Any other file type
/// (fifo, socket, device) is an error.
pub fn build_manifest(root: &Path) -> Result<Manifest, Error> {
    let mut entries = Vec::new();
    for (rel, kind) in walk(root)? {
        let full = root.join(&rel);
        let entry = match kind {
            Found::File { perm, .. } => Entry {
                sha256: hash_file(&full)?,
                path: rel,
                kind: EntryKind::File { perm },
            },
            Found::Symlink => {
                let target = read_link_bytes(&full)?;
                Entry {
                    sha256: sha256(&target)?,
                    path: rel,
                    kind: EntryKind::Symlink { target },
                }
            }
            Found::Other(what) => {
                return Err(Error::UnsupportedFileType {
                    path: full,
                    kind: what,
                })
            }
        };
        entries.push(entry);
    }
    Manifest::from_entries(entries)
}

/// What the walk found at a path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Found {
    File { perm: u32 },
    Symlink,
    Other(&'static str),
}

impl Found {
    fn of(meta: &std::fs::Metadata) -> Found {
        let ft = meta.file_type();
        if ft.is_symlink() {
            Found::Symlink
        } else if ft.is_file() {
            Found::File {
                perm: meta.mode() & 0o7777,
            }
        } else if ft.is_dir() {
            Found::Other("directory")
        } else {
            use std::os::unix::fs::FileTypeExt;
            Found::Other(if ft.is_fifo() {
                "fifo"
            } else if ft.is_socket() {
                "socket"
            } else if ft.is_block_device() {
                "block device"
            } else if ft.is_char_device() {
                "character device"
            } else {
                "unknown file type"
            })
        }
    }

    fn describe(&self) -> String {
        match self {
            Found::File { perm } => format!("a file with mode {:06o}", MODE_FILE | perm),
            Found::Symlink => "a symlink".into(),
            Found::Other(what) => format!("a {what}"),
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        cause: source,
    }
}

/// Every non-directory below `root` (relative paths, sorted by bytes), without following
/// symlinks, except `MANIFEST`/`MANIFEST.sig` at the top. Iterative: a deep tree cannot overflow
/// the stack.
fn walk(root: &Path) -> Result<Vec<(PathBuf, Found)>, Error> {
    let meta = std::fs::symlink_metadata(root).map_err(io_err(root))?;
    if !meta.is_dir() {
        return Err(Error::Io {
            path: root.to_path_buf(),
            cause: std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
        });
    }
    let mut out = Vec::new();
    let mut stack: Vec<PathBuf> = vec![PathBuf::new()];
    while let Some(rel_dir) = stack.pop() {
        let dir = root.join(&rel_dir);
        for item in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
            let item = item.map_err(io_err(&dir))?;
            let name = item.file_name();
            if rel_dir.as_os_str().is_empty()
                && (name == OsStr::new(MANIFEST_FILE) || name == OsStr::new(SIGNATURE_FILE))
            {
                continue;
            }
            let rel = rel_dir.join(&name);
            let full = root.join(&rel);
            let meta = std::fs::symlink_metadata(&full).map_err(io_err(&full))?;
            if meta.is_dir() {
                stack.push(rel);
            } else {
                out.push((rel, Found::of(&meta)));
            }
        }
    }
    out.sort_by(|a, b| a.0.as_os_str().as_bytes().cmp(b.0.as_os_str().as_bytes()));
    Ok(out)
}

/// How the thing found at `rel` differs from `entry`, if it does.
fn differs(root: &Path, rel: &Path, found: &Found, entry: &Entry) -> Result<Option<String>, Error> {
    let full = root.join(rel);
    match (found, &entry.kind) {
        (Found::File { perm }, EntryKind::File { perm: want }) => {
            if hash_file(&full)? != entry.sha256 {
                Ok(Some("content differs".into()))
            } else if perm != want {
                Ok(Some(format!(
                    "mode {:06o}, MANIFEST says {:06o}",
                    MODE_FILE | perm,
                    MODE_FILE | want
                )))
            } else {
                Ok(None)
            }
        }
        (Found::Symlink, EntryKind::Symlink { target: want }) => {
            let target = read_link_bytes(&full)?;
            if &target != want {
                Ok(Some(format!(
                    "symlink to {}, MANIFEST says {}",
                    String::from_utf8_lossy(&target),
                    String::from_utf8_lossy(want)
                )))
            } else {
                Ok(None)
            }
        }
        (found, _) => Ok(Some(format!(
            "is {}, MANIFEST says {}",
            found.describe(),
            entry.describe()
        ))),
    }
}

fn read_link_bytes(path: &Path) -> Result<Vec<u8>, Error> {
    Ok(std::fs::read_link(path)
        .map_err(io_err(path))?
        .into_os_string()
        .into_vec())
}

use std::os::unix::ffi::OsStringExt;

/// SHA-256 of a byte string.
pub fn sha256(data: &[u8]) -> Result<[u8; 32], Error> {
    let mut ctx = HashAlgorithm::SHA256
        .context()
        .map_err(|e| Error::openpgp("SHA-256", e))?
        .for_digest();
    ctx.update(data);
    digest32(ctx)
}

fn digest32(ctx: sequoia_openpgp::crypto::hash::Context) -> Result<[u8; 32], Error> {
    let d = ctx
        .into_digest()
        .map_err(|e| Error::openpgp("SHA-256", e))?;
    d.as_slice().try_into().map_err(|_| Error::OpenPgp {
        context: "SHA-256".into(),
        message: format!("digest of {} bytes", d.len()),
    })
}

/// SHA-256 of a regular file's content. Opens without following a symlink and without blocking on
/// a fifo that replaced the file after it was looked at.
pub fn hash_file(path: &Path) -> Result<[u8; 32], Error> {
    let mut f = File::options()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(io_err(path))?;
    if !f.metadata().map_err(io_err(path))?.is_file() {
        return Err(Error::Io {
            path: path.to_path_buf(),
            cause: std::io::Error::other("not a regular file"),
        });
    }
    let mut ctx = HashAlgorithm::SHA256
        .context()
        .map_err(|e| Error::openpgp("SHA-256", e))?
        .for_digest();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    digest32(ctx)
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

fn needs_escape(b: u8) -> bool {
    !(0x21..=0x7e).contains(&b) || b == b'%'
}

fn escape_into(raw: &[u8], out: &mut Vec<u8>) {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    for &b in raw {
        if needs_escape(b) {
            out.extend_from_slice(&[b'%', DIGITS[(b >> 4) as usize], DIGITS[(b & 15) as usize]]);
        } else {
            out.push(b);
        }
    }
}

fn unescape(field: &[u8]) -> Result<Vec<u8>, String> {
    let hexval = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let b = field[i];
        if b == b'%' {
            let (Some(&h), Some(&l)) = (field.get(i + 1), field.get(i + 2)) else {
                return Err("truncated %XX escape".into());
            };
            let (Some(h), Some(l)) = (hexval(h), hexval(l)) else {
                return Err("bad %XX escape (two uppercase hex digits expected)".into());
            };
            out.push(h << 4 | l);
            i += 3;
        } else if needs_escape(b) {
            return Err(format!("byte 0x{b:02x} must be escaped as %XX"));
        } else {
            out.push(b);
            i += 1;
        }
    }
    Ok(out)
}

fn parse_line(line: &[u8]) -> Result<Entry, String> {
    let fields: Vec<&[u8]> = split_fields(line);
    if fields.len() != 3 && fields.len() != 4 {
        return Err(format!(
            "expected `sha256  path  mode` (fields separated by two spaces), found {} field(s)",
            fields.len()
        ));
    }
    let sha = parse_sha(fields[0])?;
    let raw_path = unescape(fields[1]).map_err(|e| format!("path: {e}"))?;
    check_rel_path(&raw_path).map_err(|r| format!("path: {r}"))?;
    let mode = parse_mode(fields[2])?;
    let kind = if mode == MODE_SYMLINK {
        let Some(t) = fields.get(3) else {
            return Err("a symlink line (mode 120000) needs its target as a fourth field".into());
        };
        let target = unescape(t).map_err(|e| format!("symlink target: {e}"))?;
        if target.is_empty() || target.len() > MAX_PATH || target.contains(&0) {
            return Err("symlink target: empty, too long or contains NUL".into());
        }
        EntryKind::Symlink { target }
    } else if mode & !0o7777 == MODE_FILE {
        if fields.len() == 4 {
            return Err("only a symlink line (mode 120000) has a fourth field".into());
        }
        EntryKind::File {
            perm: mode & 0o7777,
        }
    } else {
        return Err(format!(
            "mode {mode:06o}: expected 100XXXX for a file or 120000 for a symlink"
        ));
    };
    Ok(Entry {
        path: PathBuf::from(std::ffi::OsString::from_vec(raw_path)),
        sha256: sha,
        kind,
    })
}

/// Splits on exactly two spaces; an empty field (three spaces, leading or trailing blanks) makes
/// the line invalid later because it cannot parse.
fn split_fields(line: &[u8]) -> Vec<&[u8]> {
    let mut fields = Vec::new();
    let mut rest = line;
    loop {
        match rest.windows(2).position(|w| w == b"  ") {
            Some(i) => {
                fields.push(&rest[..i]);
                rest = &rest[i + 2..];
            }
            None => {
                fields.push(rest);
                return fields;
            }
        }
        if fields.len() > 4 {
            return fields;
        }
    }
}

fn parse_sha(field: &[u8]) -> Result<[u8; 32], String> {
    let bad = || "sha256: expected 64 lowercase hex digits".to_string();
    if field.len() != 64 {
        return Err(bad());
    }
    let val = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, pair) in field.chunks(2).enumerate() {
        let (Some(h), Some(l)) = (val(pair[0]), val(pair[1])) else {
            return Err(bad());
        };
        out[i] = h << 4 | l;
    }
    Ok(out)
}

fn parse_mode(field: &[u8]) -> Result<u32, String> {
    if field.len() != 6 || !field.iter().all(|c| (b'0'..=b'7').contains(c)) {
        return Err("mode: expected six octal digits (100755, 100644, 120000 …)".into());
    }
    Ok(field
        .iter()
        .fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0')))
}

/// A relative path safe to join to a root: not empty, not absolute, no empty, `.` or `..`
/// component, no NUL, not `MANIFEST`/`MANIFEST.sig` at the top, at most [`MAX_PATH`] bytes.
pub fn check_rel_path(path: &[u8]) -> Result<(), &'static str> {
    if path.is_empty() {
        return Err("empty path");
    }
    if path.len() > MAX_PATH {
        return Err("path too long");
    }
    if path.contains(&0) {
        return Err("NUL byte in path");
    }
    if path[0] == b'/' {
        return Err("absolute path");
    }
    for comp in path.split(|&b| b == b'/') {
        match comp {
            b"" => return Err("empty path component (`//` or a trailing `/`)"),
            b"." => return Err("`.` path component"),
            b".." => return Err("`..` path component"),
            _ => {}
        }
    }
    if path == MANIFEST_FILE.as_bytes() || path == SIGNATURE_FILE.as_bytes() {
        return Err("MANIFEST and MANIFEST.sig cannot list themselves");
    }
    Ok(())
}

/// No listed path may be a directory of another listed path (`a` and `a/b`).
fn check_no_file_is_a_dir(
    entries: &[Entry],
    set: &HashSet<&[u8]>,
) -> Result<(), (PathBuf, &'static str)> {
    for e in entries {
        let p = e.path.as_os_str().as_bytes();
        for (i, &b) in p.iter().enumerate() {
            if b == b'/' && set.contains(&p[..i]) {
                return Err((
                    e.path.clone(),
                    "a parent of this path is listed as a file or symlink",
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn tree() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::create_dir_all(r.join("events/ev")).unwrap();
        std::fs::create_dir_all(r.join("empty")).unwrap();
        std::fs::write(r.join("events/ev/10a"), "#!/bin/sh\necho a\n").unwrap();
        std::fs::set_permissions(
            r.join("events/ev/10a"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::fs::write(r.join("name with space%"), "x").unwrap();
        std::fs::write(r.join("nl\nname"), "y").unwrap();
        symlink("/dev/null", r.join("events/ev/20masked")).unwrap();
        std::fs::write(r.join(MANIFEST_FILE), "ignored").unwrap();
        t
    }

    #[test]
    fn build_serialize_parse_round_trip() {
        let t = tree();
        let m = build_manifest(t.path()).unwrap();
        let text = String::from_utf8(m.to_bytes()).unwrap();
        assert!(text.starts_with(HEADER), "{text}");
        assert!(text.contains("  events/ev/10a  100755\n"), "{text}");
        assert!(
            text.contains("  events/ev/20masked  120000  /dev/null\n"),
            "{text}"
        );
        assert!(
            text.contains("  name%20with%20space%25  100644\n"),
            "{text}"
        );
        assert!(text.contains("  nl%0Aname  100644\n"), "{text}");
        assert!(!text.contains("MANIFEST"), "{text}");
        assert_eq!(Manifest::parse(text.as_bytes()).unwrap(), m);
        assert!(m.compare(t.path()).unwrap().is_empty());
        assert_eq!(
            m.check_file(t.path(), Path::new("events/ev/10a")),
            FileCheck::Matches
        );
        assert_eq!(
            m.check_file(t.path(), Path::new("nope")),
            FileCheck::NotListed
        );
    }

    #[test]
    fn compare_lists_changes() {
        let t = tree();
        let r = t.path();
        let m = build_manifest(r).unwrap();
        std::fs::write(r.join("events/ev/10a"), "#!/bin/sh\necho evil\n").unwrap();
        std::fs::set_permissions(
            r.join("name with space%"),
            std::fs::Permissions::from_mode(0o777),
        )
        .unwrap();
        std::fs::remove_file(r.join("nl\nname")).unwrap();
        std::fs::write(r.join("empty/new"), "").unwrap();
        std::fs::remove_file(r.join("events/ev/20masked")).unwrap();
        symlink("/bin/true", r.join("events/ev/20masked")).unwrap();
        let c = m.compare(r).unwrap();
        let modified: Vec<_> = c.modified.iter().map(|m| m.path.clone()).collect();
        assert_eq!(
            modified,
            [
                PathBuf::from("events/ev/10a"),
                "events/ev/20masked".into(),
                "name with space%".into()
            ]
        );
        assert_eq!(c.modified[0].what, "content differs");
        assert!(c.modified[2].what.contains("100777"), "{c}");
        assert_eq!(c.missing, [PathBuf::from("nl\nname")]);
        assert_eq!(c.extra, [PathBuf::from("empty/new")]);
        assert!(matches!(
            m.check_file(r, Path::new("events/ev/10a")),
            FileCheck::Differs(_)
        ));
    }

    #[test]
    fn parse_rejects_non_canonical_and_unsafe() {
        let h = |body: &str| format!("{HEADER}\n{body}");
        let sha = "a".repeat(64);
        let bad = [
            String::new(),
            HEADER.to_string(),
            h(&format!("{sha}  a  100644")),
            h(&format!("{sha}  ../x  100644\n")),
            h(&format!("{sha}  /etc/passwd  100644\n")),
            h(&format!("{sha}  a//b  100644\n")),
            h(&format!("{sha}  ./a  100644\n")),
            h(&format!("{sha}  a%2  100644\n")),
            h(&format!("{sha}  a%2f  100644\n")),
            h(&format!("{sha}  %61  100644\n")),
            h(&format!("{sha}  a  040755\n")),
            h(&format!("{sha}  a  120000\n")),
            h(&format!("{sha}  a  100644  x\n")),
            h(&format!("{sha}  a   100644\n")),
            h(&format!("{sha}  b  100644\n{sha}  a  100644\n")),
            h(&format!("{sha}  a  100644\n{sha}  a  100644\n")),
            h(&format!("{sha}  a  100644\n{sha}  a/b  100644\n")),
            h(&format!("{}  a  100644\n", "A".repeat(64))),
            h(&format!("{sha}  MANIFEST  100644\n")),
            h(&format!("{sha}  a%00b  100644\n")),
            format!("{HEADER}\r\n"),
        ];
        for b in &bad {
            assert!(Manifest::parse(b.as_bytes()).is_err(), "accepted {b:?}");
        }
        let good = h(&format!(
            "{sha}  a  100644\n{sha}  a-b  104755\n{sha}  b/c  120000  ../x%20y\n"
        ));
        let m = Manifest::parse(good.as_bytes()).unwrap();
        assert_eq!(m.entries().len(), 3);
        assert_eq!(m.to_bytes(), good.as_bytes());
    }

    #[test]
    fn fifo_is_unsupported() {
        let t = tempfile::tempdir().unwrap();
        nix::unistd::mkfifo(&t.path().join("p"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let e = build_manifest(t.path()).unwrap_err().to_string();
        assert!(e.contains("fifo"), "{e}");
    }
}
