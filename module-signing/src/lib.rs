//! Signed module images and override bundles.
//!
//! Two things can be signed, both with detached OpenPGP signatures (sequoia-openpgp, nettle
//! backend) checked against the certificates of a *trust directory* (default
//! [`DEFAULT_TRUST_DIR`]):
//!
//! * **A tree** (a module's `imageroot/`, an events directory): its [`Manifest`] lists every file
//!   with its SHA-256 and mode; `MANIFEST` at the root of the tree, `MANIFEST.sig` beside it.
//!   [`sign_tree`] writes both, [`verify`] checks the signature *and* that the files match.
//! * **An archive** (a tar override bundle or exported imageroot): the signature is over the
//!   archive's bytes, in a separate file (`bundle.tar.sig`). [`verify_archive`] checks it without
//!   extracting anything; [`unpack_verified`] checks it and only then extracts, refusing unsafe
//!   entries.
//!
//! A [`Policy`] says what an imperfect result means: `require` turns it into
//! [`Error::Rejected`], `warn` returns it as a [`Verdict`] with a warning, `off` checks nothing.
//! See `docs/SIGNING.md`.

pub mod manifest;
pub mod node;
pub mod pgp;

use std::fmt;
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::str::FromStr;

pub use manifest::{
    build_manifest, Changes, Entry, EntryKind, FileCheck, Manifest, Modified, MANIFEST_FILE,
    SIGNATURE_FILE,
};
pub use node::{NodeSigning, NODE_CONFIG, NODE_DEFAULT_POLICY};
pub use pgp::{
    generate_key, revoked_certificate, sign_bytes, write_new_key, GeneratedKey, TrustStore,
};

/// Where the trusted certificates live unless configured otherwise.
pub const DEFAULT_TRUST_DIR: &str = "/etc/agent/trusted-keys";

/// Everything that can go wrong. Hostile input (a tree, a MANIFEST, a signature, an archive) ends
/// up here or in a [`Verdict`], never in a panic.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{}: {cause}", path.display())]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{}: unsafe path: {reason}", path.display())]
    UnsafePath { path: PathBuf, reason: &'static str },
    #[error("{}: a {kind} cannot be signed: a tree holds only regular files, directories and symlinks", path.display())]
    UnsupportedFileType { path: PathBuf, kind: &'static str },
    #[error("MANIFEST line {line}: {reason}")]
    ManifestSyntax { line: usize, reason: String },
    #[error("{}: larger than {limit} bytes", path.display())]
    TooLarge { path: PathBuf, limit: u64 },
    #[error("signing key {}: {reason}", path.display())]
    SigningKey { path: PathBuf, reason: String },
    #[error("OpenPGP error while {context}: {message}")]
    OpenPgp { context: String, message: String },
    #[error("{}{}: {reason}", path.display(), if *line > 0 { format!(" line {line}") } else { String::new() })]
    Config {
        path: PathBuf,
        /// 1-based; 0 when the file as a whole is wrong.
        line: usize,
        reason: String,
    },
    #[error("unknown signature policy {0:?}: expected require, warn or off")]
    BadPolicy(String),
    /// The policy is `require` and the verdict is not a good signature by a trusted key over
    /// matching content.
    #[error("{0}; refused (signature policy require)")]
    Rejected(Box<Verdict>),
    #[error("archive {}: entry {entry:?}: {reason}; nothing was extracted", path.display())]
    UnsafeArchive {
        path: PathBuf,
        entry: String,
        reason: String,
    },
}

impl Error {
    pub(crate) fn openpgp(context: &str, e: impl fmt::Display) -> Error {
        Error::OpenPgp {
            context: context.into(),
            message: format!("{e:#}"),
        }
    }

    /// The verdict, when the policy refused it.
    pub fn verdict(&self) -> Option<&Verdict> {
        match self {
            Error::Rejected(v) => Some(v),
            _ => None,
        }
    }
}

/// What to do with content that is not signed by a trusted key, or does not match its signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// Only a good signature by a trusted key over matching content is accepted.
    #[default]
    Require,
    /// Anything is accepted; an imperfect verdict carries a warning.
    Warn,
    /// Nothing is checked.
    Off,
}

impl FromStr for Policy {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.trim().to_ascii_lowercase().as_str() {
            "require" => Ok(Policy::Require),
            "warn" => Ok(Policy::Warn),
            "off" => Ok(Policy::Off),
            _ => Err(Error::BadPolicy(s.into())),
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Policy::Require => "require",
            Policy::Warn => "warn",
            Policy::Off => "off",
        })
    }
}

/// Who made a good signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signer {
    /// Fingerprint of the certificate (its primary key), uppercase hex.
    pub fingerprint: String,
    /// Fingerprint of the (sub)key that made the signature.
    pub signing_key: String,
    /// The certificate's primary user ID, if it has a valid one.
    pub user_id: Option<String>,
}

impl Signer {
    /// The last 16 hex digits of the fingerprint (the long key ID of the primary key).
    pub fn short(&self) -> &str {
        let n = self.fingerprint.len();
        &self.fingerprint[n.saturating_sub(16)..]
    }
}

impl fmt::Display for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.user_id {
            Some(uid) => write!(f, "{} ({uid})", self.fingerprint),
            None => write!(f, "{}", self.fingerprint),
        }
    }
}

/// The state of the signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureStatus {
    /// Policy `off`: nothing was looked at.
    NotChecked,
    /// There is no MANIFEST, or no signature file; the reason says which.
    Unsigned { reason: String },
    /// A good signature by a certificate of the trust directory.
    Good { signer: Signer },
    /// Signed, but by no certificate of the trust directory. The issuers are key IDs or
    /// fingerprints as recorded in the signature.
    Untrusted { issuers: Vec<String> },
    /// Not a valid signature over this content (tampered content or signature, malformed
    /// signature, expired or revoked key).
    Bad { reason: String },
}

/// What [`verify`] or [`verify_archive`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The tree or archive checked.
    pub subject: PathBuf,
    pub trust_dir: PathBuf,
    pub policy: Policy,
    pub signature: SignatureStatus,
    /// The signed content is not a valid MANIFEST (trees only).
    pub manifest_problem: Option<String>,
    /// How the files differ from the MANIFEST (trees only; empty when there is no MANIFEST).
    pub changes: Changes,
    /// How many files the MANIFEST lists (trees with a valid MANIFEST only).
    pub files: Option<usize>,
    /// Why the trust directory trusts fewer keys than it might (missing, unreadable files).
    pub trust_problems: Vec<String>,
    /// Set under policy `warn` when the verdict is not good: say it to the user.
    pub warning: Option<String>,
}

impl Verdict {
    fn new(subject: &Path, trust_dir: &Path, policy: Policy) -> Verdict {
        Verdict {
            subject: subject.to_path_buf(),
            trust_dir: trust_dir.to_path_buf(),
            policy,
            signature: SignatureStatus::NotChecked,
            manifest_problem: None,
            changes: Changes::default(),
            files: None,
            trust_problems: Vec::new(),
            warning: None,
        }
    }

    /// A good signature by a trusted key, a valid manifest and every file matching it.
    pub fn is_good(&self) -> bool {
        matches!(self.signature, SignatureStatus::Good { .. })
            && self.manifest_problem.is_none()
            && self.changes.is_empty()
    }

    /// The signer, when the signature is good (even if files differ).
    pub fn signer(&self) -> Option<&Signer> {
        match &self.signature {
            SignatureStatus::Good { signer } => Some(signer),
            _ => None,
        }
    }

    fn apply(mut self) -> Result<Verdict, Error> {
        if self.is_good() || self.policy == Policy::Off {
            return Ok(self);
        }
        match self.policy {
            Policy::Require => Err(Error::Rejected(Box::new(self))),
            _ => {
                self.warning = Some(format!("{self}; accepted anyway (signature policy warn)"));
                Ok(self)
            }
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.subject.display())?;
        match &self.signature {
            SignatureStatus::NotChecked => {
                return f.write_str("signature not checked (signature policy off)")
            }
            SignatureStatus::Unsigned { reason } => write!(f, "unsigned ({reason})")?,
            SignatureStatus::Good { signer } => write!(f, "signed by {signer}")?,
            SignatureStatus::Untrusted { issuers } => {
                write!(
                    f,
                    "signed by a key that is not trusted (issuer {}; no certificate in {} matches",
                    issuers.join(", "),
                    self.trust_dir.display()
                )?;
                if !self.trust_problems.is_empty() {
                    write!(f, "; {}", self.trust_problems.join("; "))?;
                }
                f.write_str(")")?;
            }
            SignatureStatus::Bad { reason } => write!(f, "BAD signature: {reason}")?,
        }
        if let Some(p) = &self.manifest_problem {
            write!(f, "; the signed MANIFEST is invalid: {p}")?;
        }
        if !self.changes.is_empty() {
            write!(f, "; files differ from MANIFEST: {}", self.changes)?;
        } else if let Some(n) = self.files {
            write!(f, "; all {n} files match MANIFEST")?;
        }
        Ok(())
    }
}

/// The signature state and manifest of a tree, without comparing the files (cheap; what
/// `agentctl explain` uses to check single files).
#[derive(Debug, Clone)]
pub struct SignedTree {
    pub root: PathBuf,
    pub signature: SignatureStatus,
    /// The parsed MANIFEST, if there is one and it parses (also when unsigned or badly signed:
    /// look at `signature` before trusting it).
    pub manifest: Option<Manifest>,
    pub manifest_problem: Option<String>,
}

impl SignedTree {
    /// Reads `root/MANIFEST` and `root/MANIFEST.sig` and checks the signature with `trust`.
    /// The signature is checked over the raw MANIFEST bytes before they are parsed.
    pub fn load(root: &Path, trust: &TrustStore) -> Result<SignedTree, Error> {
        let mut tree = SignedTree {
            root: root.to_path_buf(),
            signature: SignatureStatus::Unsigned {
                reason: format!("no {MANIFEST_FILE}"),
            },
            manifest: None,
            manifest_problem: None,
        };
        let manifest_bytes =
            match read_regular(&root.join(MANIFEST_FILE), manifest::MAX_MANIFEST_BYTES)? {
                ReadRegular::Absent => return Ok(tree),
                ReadRegular::NotAFile => {
                    tree.signature = SignatureStatus::Bad {
                        reason: format!("{MANIFEST_FILE} is not a regular file"),
                    };
                    return Ok(tree);
                }
                ReadRegular::Bytes(b) => b,
            };
        tree.signature = match read_regular(&root.join(SIGNATURE_FILE), pgp::MAX_SIGNATURE_BYTES)? {
            ReadRegular::Absent => SignatureStatus::Unsigned {
                reason: format!("{MANIFEST_FILE} has no {SIGNATURE_FILE}"),
            },
            ReadRegular::NotAFile => SignatureStatus::Bad {
                reason: format!("{SIGNATURE_FILE} is not a regular file"),
            },
            ReadRegular::Bytes(sig) => trust.check_bytes(&manifest_bytes, &sig),
        };
        match Manifest::parse(&manifest_bytes) {
            Ok(m) => tree.manifest = Some(m),
            Err(e) => tree.manifest_problem = Some(e.to_string()),
        }
        Ok(tree)
    }
}

enum ReadRegular {
    Absent,
    NotAFile,
    Bytes(Vec<u8>),
}

/// Reads a regular file (not through a symlink), at most `limit` bytes.
fn read_regular(path: &Path, limit: u64) -> Result<ReadRegular, Error> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ReadRegular::Absent),
        Err(source) => Err(Error::Io {
            path: path.to_path_buf(),
            cause: source,
        }),
        Ok(m) if !m.is_file() => Ok(ReadRegular::NotAFile),
        Ok(_) => pgp::read_limited(path, limit).map(ReadRegular::Bytes),
    }
}

/// Writes `root/MANIFEST` (built from the tree) and `root/MANIFEST.sig` (a detached signature of
/// it, made with the TSK at `key`). Returns the manifest.
pub fn sign_tree(root: &Path, key: &Path) -> Result<Manifest, Error> {
    let manifest = build_manifest(root)?;
    let bytes = manifest.to_bytes();
    let sig = sign_manifest(&bytes, key)?;
    write_replace(&root.join(MANIFEST_FILE), &bytes)?;
    write_replace(&root.join(SIGNATURE_FILE), sig.as_bytes())?;
    Ok(manifest)
}

/// An ASCII-armored detached signature of MANIFEST bytes, made with the TSK file `key`.
pub fn sign_manifest(manifest_bytes: &[u8], key: &Path) -> Result<String, Error> {
    sign_bytes(manifest_bytes, key)
}

/// Signs a file (an archive): writes an ASCII-armored detached signature to `sig_out`.
pub fn sign_file(path: &Path, key: &Path, sig_out: &Path) -> Result<(), Error> {
    let data = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        cause: source,
    })?;
    let sig = sign_bytes(&data, key)?;
    write_replace(sig_out, sig.as_bytes())
}

/// Writes through a temporary file in the same directory and a rename.
fn write_replace(path: &Path, data: &[u8]) -> Result<(), Error> {
    use std::io::Write;
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        cause: source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    tmp.write_all(data).map_err(io)?;
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(io)?;
    }
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

/// Verifies the tree at `root`: `MANIFEST.sig` must be a good signature of `MANIFEST` by a
/// certificate of `trust_dir`, and every file must match `MANIFEST` (none modified, missing or
/// extra). Under [`Policy::Require`] anything else is [`Error::Rejected`]; under
/// [`Policy::Warn`] it is returned with [`Verdict::warning`] set; [`Policy::Off`] reads nothing.
pub fn verify(root: &Path, trust_dir: &Path, policy: Policy) -> Result<Verdict, Error> {
    let mut v = Verdict::new(root, trust_dir, policy);
    if policy == Policy::Off {
        return Ok(v);
    }
    let meta = std::fs::metadata(root).map_err(|source| Error::Io {
        path: root.to_path_buf(),
        cause: source,
    })?;
    if !meta.is_dir() {
        return Err(Error::Io {
            path: root.to_path_buf(),
            cause: std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
        });
    }
    let trust = TrustStore::load(trust_dir);
    v.trust_problems = trust.problems.clone();
    let tree = SignedTree::load(root, &trust)?;
    v.signature = tree.signature;
    v.manifest_problem = tree.manifest_problem;
    if let Some(m) = &tree.manifest {
        v.changes = m.compare(root)?;
        v.files = Some(m.entries().len());
    }
    v.apply()
}

/// The conventional signature path of an archive: `<archive>.sig`.
pub fn default_signature_path(archive: &Path) -> PathBuf {
    let mut s = archive.as_os_str().to_os_string();
    s.push(".sig");
    PathBuf::from(s)
}

/// Verifies the detached signature `sig` over the bytes of the archive at `archive`, reading
/// nothing out of the archive. Policy as in [`verify`]. Call this (or [`unpack_verified`]) before
/// extracting anything.
pub fn verify_archive(
    archive: &Path,
    sig: &Path,
    trust_dir: &Path,
    policy: Policy,
) -> Result<Verdict, Error> {
    let mut v = Verdict::new(archive, trust_dir, policy);
    if policy == Policy::Off {
        return Ok(v);
    }
    let file = std::fs::File::open(archive).map_err(|source| Error::Io {
        path: archive.to_path_buf(),
        cause: source,
    })?;
    check_archive_signature(&mut v, file, sig)?;
    v.apply()
}

fn check_archive_signature(v: &mut Verdict, file: std::fs::File, sig: &Path) -> Result<(), Error> {
    let trust = TrustStore::load(&v.trust_dir);
    v.trust_problems = trust.problems.clone();
    v.signature = match read_regular(sig, pgp::MAX_SIGNATURE_BYTES)? {
        ReadRegular::Absent => SignatureStatus::Unsigned {
            reason: format!("no signature file {}", sig.display()),
        },
        ReadRegular::NotAFile => SignatureStatus::Bad {
            reason: format!("{} is not a regular file", sig.display()),
        },
        ReadRegular::Bytes(sig) => trust.check(std::io::BufReader::new(file), &sig),
    };
    Ok(())
}

/// Verifies and then extracts a tar archive into `dest` (created if missing).
///
/// The archive is first copied to a private unnamed temporary file, and both the signature check
/// and the extraction read that copy, so the archive cannot be swapped between the two. Nothing is
/// extracted unless the policy accepts the verdict and every entry is safe: a relative path
/// without `..`, a regular file, directory or symlink, without setuid/setgid/sticky bits. Hard
/// links, devices and fifos are refused.
pub fn unpack_verified(
    archive: &Path,
    sig: &Path,
    trust_dir: &Path,
    policy: Policy,
    dest: &Path,
) -> Result<Verdict, Error> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io {
            path,
            cause: source,
        }
    };
    let mut src = std::fs::File::open(archive).map_err(io(archive))?;
    let mut copy = tempfile::tempfile().map_err(io(Path::new("temporary file")))?;
    std::io::copy(&mut src, &mut copy).map_err(io(archive))?;
    drop(src);
    copy.seek(SeekFrom::Start(0)).map_err(io(archive))?;
    let mut v = Verdict::new(archive, trust_dir, policy);
    if policy != Policy::Off {
        check_archive_signature(&mut v, copy.try_clone().map_err(io(archive))?, sig)?;
    }
    let v = v.apply()?;

    copy.seek(SeekFrom::Start(0)).map_err(io(archive))?;
    scan_archive(archive, &copy)?;
    copy.seek(SeekFrom::Start(0)).map_err(io(archive))?;
    std::fs::create_dir_all(dest).map_err(io(dest))?;
    let mut ar = tar::Archive::new(&copy);
    ar.set_preserve_permissions(true);
    ar.set_unpack_xattrs(false);
    ar.set_overwrite(true);
    for entry in ar.entries().map_err(io(archive))? {
        let mut entry = entry.map_err(io(archive))?;
        entry.unpack_in(dest).map_err(io(dest))?;
    }
    Ok(v)
}

/// Refuses archives with unsafe entries, before anything is extracted.
fn scan_archive(archive: &Path, file: &std::fs::File) -> Result<(), Error> {
    let unsafe_entry = |entry: String, reason: String| Error::UnsafeArchive {
        path: archive.to_path_buf(),
        entry,
        reason,
    };
    let mut ar = tar::Archive::new(file);
    let entries = ar
        .entries()
        .map_err(|e| unsafe_entry(String::new(), format!("not a tar archive: {e}")))?;
    for entry in entries {
        let entry =
            entry.map_err(|e| unsafe_entry(String::new(), format!("unreadable entry: {e}")))?;
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        // `tar -C dir -cf x .` writes `./` and `./a/b`: a leading `./` is harmless.
        let mut rel: &[u8] = &raw;
        while let Some(r) = rel.strip_prefix(b"./") {
            rel = r;
        }
        let rel = rel.strip_suffix(b"/").unwrap_or(rel);
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            // Metadata for the whole archive; extraction ignores it.
            continue;
        }
        if rel.is_empty() || rel == b"." {
            if kind.is_dir() {
                continue;
            }
            return Err(unsafe_entry(name, "empty path".into()));
        }
        manifest::check_rel_path(rel).map_err(|r| unsafe_entry(name.clone(), r.to_string()))?;
        let ok_kind = kind.is_file() || kind.is_dir() || kind.is_symlink();
        if !ok_kind {
            return Err(unsafe_entry(
                name,
                format!(
                    "entry type {:?} is not allowed (only files, directories, symlinks)",
                    kind
                ),
            ));
        }
        let mode = entry
            .header()
            .mode()
            .map_err(|e| unsafe_entry(name.clone(), format!("bad mode: {e}")))?;
        if mode & 0o7000 != 0 {
            return Err(unsafe_entry(
                name,
                format!("mode {mode:o} has setuid/setgid/sticky bits"),
            ));
        }
        if kind.is_symlink() {
            let target = entry
                .link_name_bytes()
                .ok_or_else(|| unsafe_entry(name.clone(), "symlink without target".into()))?;
            if target.is_empty() || target.contains(&0) {
                return Err(unsafe_entry(name, "bad symlink target".into()));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_parses() {
        assert_eq!("require".parse::<Policy>().unwrap(), Policy::Require);
        assert_eq!(" WARN ".parse::<Policy>().unwrap(), Policy::Warn);
        assert_eq!("off".parse::<Policy>().unwrap(), Policy::Off);
        let e = "maybe".parse::<Policy>().unwrap_err().to_string();
        assert!(e.contains("require, warn or off"), "{e}");
        assert_eq!(Policy::default(), Policy::Require);
        assert_eq!(Policy::Warn.to_string(), "warn");
    }

    #[test]
    fn verdict_messages() {
        let mut v = Verdict::new(Path::new("/x"), Path::new("/t"), Policy::Require);
        v.signature = SignatureStatus::Unsigned {
            reason: "no MANIFEST".into(),
        };
        let e = v.clone().apply().unwrap_err().to_string();
        assert_eq!(
            e,
            "/x: unsigned (no MANIFEST); refused (signature policy require)"
        );
        v.policy = Policy::Warn;
        let w = v.apply().unwrap();
        assert!(w.warning.unwrap().contains("accepted anyway"));
    }

    #[test]
    fn a_revoked_certificate_makes_its_signatures_bad() {
        let dir = tempfile::tempdir().unwrap();
        let (key, cert) = (dir.path().join("k.tsk"), dir.path().join("k.asc"));
        let fpr = write_new_key("Test <t@example.org>", &key, &cert).unwrap();
        let sig = sign_bytes(b"content", &key).unwrap();
        let trusted = dir.path().join("trusted");
        std::fs::create_dir(&trusted).unwrap();
        std::fs::copy(&cert, trusted.join("k.asc")).unwrap();
        let status = TrustStore::load(&trusted).check_bytes(b"content", sig.as_bytes());
        assert!(matches!(status, SignatureStatus::Good { .. }), "{status:?}");

        let revoked = revoked_certificate(&key, "lost").unwrap();
        assert!(!String::from_utf8_lossy(&revoked).contains("PRIVATE KEY"));
        std::fs::write(trusted.join("k.asc"), &revoked).unwrap();
        let status = TrustStore::load(&trusted).check_bytes(b"content", sig.as_bytes());
        let SignatureStatus::Bad { reason } = status else {
            panic!("a revoked key's signature: {status:?}");
        };
        assert!(
            reason.contains(&fpr[fpr.len() - 16..]) || reason.to_lowercase().contains("revoked"),
            "{reason}"
        );
        // The certificate is no signing key.
        assert!(revoked_certificate(&trusted.join("k.asc"), "x").is_err());
    }

    #[test]
    fn off_reads_nothing() {
        let v = verify(Path::new("/no/such/dir"), Path::new("/t"), Policy::Off).unwrap();
        assert_eq!(v.signature, SignatureStatus::NotChecked);
        assert!(verify(Path::new("/no/such/dir"), Path::new("/t"), Policy::Warn).is_err());
    }
}
