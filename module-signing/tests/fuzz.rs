//! Fuzz-style property tests: hostile bytes fed to the MANIFEST parser and the signature checker
//! must give an error or a verdict, never a panic (a panic fails the test).
//!
//! Every test runs `PROPTEST_CASES` cases (default 256: a few seconds in all). With
//! `FUZZ_SECONDS=N` each test repeats batches of `PROPTEST_CASES` fresh random cases until N
//! seconds have passed. The long run recorded in docs/SIGNING.md:
//!
//!     FUZZ_SECONDS=180 PROPTEST_CASES=20000 cargo test --release -p module-signing \
//!         --test fuzz -- --test-threads 1 --nocapture

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Instant;

use module_signing::{
    build_manifest, sign_bytes, write_new_key, Manifest, SignatureStatus, TrustStore,
};
use proptest::prelude::*;

struct Fixture {
    _dir: tempfile::TempDir,
    trust: TrustStore,
    data: Vec<u8>,
    armored: Vec<u8>,
    binary: Vec<u8>,
    manifest: Vec<u8>,
    tar: Vec<u8>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let trust_dir = dir.path().join("trust");
        std::fs::create_dir(&trust_dir).unwrap();
        let key = dir.path().join("k.tsk");
        write_new_key("Fuzz <fuzz@example.org>", &key, &trust_dir.join("k.asc")).unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("events/ev")).unwrap();
        std::fs::write(tree.join("events/ev/10a"), "#!/bin/sh\n").unwrap();
        std::fs::write(tree.join("a b%c"), "x").unwrap();
        std::os::unix::fs::symlink("/dev/null", tree.join("events/ev/20m")).unwrap();
        let manifest = build_manifest(&tree).unwrap().to_bytes();
        let mut builder = tar::Builder::new(Vec::new());
        builder.follow_symlinks(false);
        builder.append_dir_all(".", &tree).unwrap();
        let tar = builder.into_inner().unwrap();
        let data = manifest.clone();
        let armored = sign_bytes(&data, &key).unwrap().into_bytes();
        let binary = dearmor(&armored);
        let trust = TrustStore::load(&trust_dir);
        assert!(matches!(
            trust.check_bytes(&data, &armored),
            SignatureStatus::Good { .. }
        ));
        assert!(matches!(
            trust.check_bytes(&data, &binary),
            SignatureStatus::Good { .. }
        ));
        Fixture {
            _dir: dir,
            trust,
            data,
            armored,
            binary,
            manifest,
            tar,
        }
    })
}

fn dearmor(armored: &[u8]) -> Vec<u8> {
    use sequoia_openpgp::armor::{Kind, Reader, ReaderMode};
    use std::io::Read;
    let mut r = Reader::from_bytes(armored, ReaderMode::Tolerant(Some(Kind::Signature)));
    let mut out = Vec::new();
    r.read_to_end(&mut out).unwrap();
    out
}

fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                s.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// A byte-level edit of an input.
#[derive(Debug, Clone)]
enum Edit {
    Flip(usize, u8),
    Truncate(usize),
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let edit = prop_oneof![
        (any::<usize>(), 1..=255u8).prop_map(|(i, x)| Edit::Flip(i, x)),
        any::<usize>().prop_map(Edit::Truncate),
        (
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 1..16)
        )
            .prop_map(|(i, v)| Edit::Insert(i, v)),
        (any::<usize>(), 1..32usize).prop_map(|(i, n)| Edit::Remove(i, n)),
    ];
    proptest::collection::vec(edit, 1..6)
}

fn apply(mut v: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let len = v.len().max(1);
        match e {
            Edit::Flip(i, x) => {
                if !v.is_empty() {
                    let i = i % v.len();
                    v[i] ^= x;
                }
            }
            Edit::Truncate(i) => v.truncate(i % len),
            Edit::Insert(i, bytes) => {
                let i = i % (v.len() + 1);
                v.splice(i..i, bytes.iter().copied());
            }
            Edit::Remove(i, n) => {
                if !v.is_empty() {
                    let i = i % v.len();
                    let end = (i + n).min(v.len());
                    v.drain(i..end);
                }
            }
        }
    }
    v
}

/// Manifest-like text: the header (usually) and lines built from plausible and implausible
/// pieces, so the parser gets past its first checks.
fn manifest_like() -> impl Strategy<Value = Vec<u8>> {
    let sha = prop_oneof![
        Just("a".repeat(64)),
        Just("0123456789abcdef".repeat(4)),
        "[0-9a-fA-F]{60,66}",
        ".{0,70}",
    ];
    let path = prop_oneof![
        "[a-z]{1,8}(/[a-z0-9._-]{1,8}){0,3}",
        "[a-zA-Z0-9%./ -]{0,24}",
        "(\\.\\./|/|\\./|%[0-9A-Fa-f]{0,2}|[a-z]){1,10}",
        Just("MANIFEST".to_string()),
    ];
    let mode = prop_oneof![
        Just("100644".to_string()),
        Just("100755".to_string()),
        Just("120000".to_string()),
        "[0-9]{5,7}",
    ];
    let target = proptest::option::of("[a-zA-Z0-9%./ -]{0,16}");
    let line = (sha, path, mode, target).prop_map(|(s, p, m, t)| match t {
        Some(t) => format!("{s}  {p}  {m}  {t}\n"),
        None => format!("{s}  {p}  {m}\n"),
    });
    (
        any::<bool>(),
        proptest::collection::vec(line, 0..12),
        any::<bool>(),
    )
        .prop_map(|(header, lines, sorted)| {
            let mut lines = lines;
            if sorted {
                lines.sort_by(|a, b| a.split("  ").nth(1).cmp(&b.split("  ").nth(1)));
            }
            let mut s = if header {
                format!("{}\n", module_signing::manifest::HEADER)
            } else {
                String::new()
            };
            s.extend(lines);
            s.into_bytes()
        })
}

/// Prints how long a test ran and how many cases, so long runs leave a record.
struct Timer {
    name: &'static str,
    start: Instant,
    cases: std::sync::atomic::AtomicU64,
    accepted: std::sync::atomic::AtomicU64,
}

impl Timer {
    fn new(name: &'static str) -> Timer {
        Timer {
            name,
            start: Instant::now(),
            cases: 0.into(),
            accepted: 0.into(),
        }
    }
    fn tick(&self) {
        self.cases
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    /// Counts an input the parser accepted (to see that the generator gets past the first checks).
    fn accept(&self) {
        self.accepted
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        eprintln!(
            "fuzz {}: {} inputs ({} accepted) in {:.1?}",
            self.name,
            self.cases.load(std::sync::atomic::Ordering::Relaxed),
            self.accepted.load(std::sync::atomic::Ordering::Relaxed),
            self.start.elapsed()
        );
    }
}

/// Runs `batch` once, or again and again for `FUZZ_SECONDS` seconds. Each batch is a new
/// `proptest!` run with a fresh random seed.
fn run_for(batch: impl Fn()) {
    let budget = std::env::var("FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map(std::time::Duration::from_secs);
    let start = Instant::now();
    loop {
        batch();
        match budget {
            Some(b) if start.elapsed() < b => continue,
            _ => break,
        }
    }
}

fn config() -> ProptestConfig {
    // `ProptestConfig::default()` reads PROPTEST_CASES.
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

#[test]
fn manifest_parser_random_bytes() {
    let t = Timer::new("manifest_parser_random_bytes");
    run_for(|| {
        proptest!(config(), |(bytes in proptest::collection::vec(any::<u8>(), 0..2048))| {
            t.tick();
            let _ = Manifest::parse(&bytes);
        });
    });
}

#[test]
fn manifest_parser_manifest_like() {
    let t = Timer::new("manifest_parser_manifest_like");
    run_for(|| {
        proptest!(config(), |(text in manifest_like(), e in edits(), edit in any::<bool>())| {
            t.tick();
            let text = if edit { apply(text, &e) } else { text };
            if let Ok(m) = Manifest::parse(&text) {
                t.accept();
                // Whatever parses is canonical: it writes back byte for byte.
                prop_assert_eq!(m.to_bytes(), text);
            }
        });
    });
}

#[test]
fn manifest_parser_mutated_real_manifest() {
    let f = fixture();
    let t = Timer::new("manifest_parser_mutated_real_manifest");
    run_for(|| {
        proptest!(config(), |(e in edits())| {
            t.tick();
            let text = apply(f.manifest.clone(), &e);
            if let Ok(m) = Manifest::parse(&text) {
                t.accept();
                prop_assert_eq!(m.to_bytes(), text);
            }
        });
    });
}

#[test]
fn signature_parser_random_bytes() {
    let f = fixture();
    let t = Timer::new("signature_parser_random_bytes");
    run_for(|| {
        proptest!(config(), |(sig in proptest::collection::vec(any::<u8>(), 0..4096), armor in any::<bool>())| {
            t.tick();
            let sig = if armor {
                format!("-----BEGIN PGP SIGNATURE-----\n\n{}\n-----END PGP SIGNATURE-----\n", base64(&sig)).into_bytes()
            } else {
                sig
            };
            let status = f.trust.check_bytes(&f.data, &sig);
            prop_assert!(!matches!(status, SignatureStatus::Good { .. }), "random bytes verified");
        });
    });
}

#[test]
fn signature_parser_mutated_real_signature() {
    let f = fixture();
    let t = Timer::new("signature_parser_mutated_real_signature");
    run_for(|| {
        proptest!(config(), |(e in edits(), armored in any::<bool>(), data_edits in proptest::option::of(edits()))| {
            t.tick();
            let sig = apply(if armored { f.armored.clone() } else { f.binary.clone() }, &e);
            let data = match &data_edits {
                Some(d) => apply(f.data.clone(), d),
                None => f.data.clone(),
            };
            let status = f.trust.check_bytes(&data, &sig);
            // A mutation may leave the signature intact (armor whitespace, trailing bytes); the
            // content must still be the signed content then.
            if matches!(status, SignatureStatus::Good { .. }) {
                t.accept();
                prop_assert_eq!(&data, &f.data);
            }
        });
    });
}

#[test]
fn trust_dir_with_hostile_files() {
    let f = fixture();
    let t = Timer::new("trust_dir_with_hostile_files");
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("x.asc");
    run_for(|| {
        proptest!(config(), |(bytes in proptest::collection::vec(any::<u8>(), 0..2048))| {
            t.tick();
            std::fs::write(&path, &bytes).unwrap();
            let store = TrustStore::load(dir.path());
            let _ = store.check_bytes(&f.data, &f.armored);
        });
    });
}

#[test]
fn archive_scanner_mutated_real_archive() {
    let f = fixture();
    let t = Timer::new("archive_scanner_mutated_real_archive");
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("a.tar");
    let no_sig = dir.path().join("a.tar.sig");
    let dest = dir.path().join("dest");
    run_for(|| {
        proptest!(config(), |(e in edits(), random in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..4096)))| {
            t.tick();
            let bytes = random.unwrap_or_else(|| apply(f.tar.clone(), &e));
            std::fs::write(&archive, &bytes).unwrap();
            // Policy off: the signature is not looked at, so hostile archives reach the scanner
            // and, if it lets them through, the extraction.
            let r = module_signing::unpack_verified(&archive, &no_sig, dir.path(), module_signing::Policy::Off, &dest);
            if r.is_ok() {
                t.accept();
            }
            let _ = std::fs::remove_dir_all(&dest);
            // Nothing landed beside `dest`.
            let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name()).collect();
            prop_assert_eq!(left, vec![std::ffi::OsString::from("a.tar")]);
        });
    });
}
