//! `module-sdk keygen | sign | revoke | verify`: signed module trees and bundles for module authors.
//!
//! The work is done by the `module_signing` crate; this module holds the command-line arguments,
//! the functions each command runs and the exit codes:
//!
//! * 0: done (`verify`: good signature by a trusted key and every file matches; or policy warn /
//!   off accepted it, with a warning on stderr);
//! * 1: `verify` refused under policy require (the message says why: unsigned, bad signature,
//!   untrusted key, modified / missing / extra files);
//! * 2: bad arguments; 65: invalid input (key file, tree with a fifo, unsafe path, malformed
//!   MANIFEST); 66: a file or directory named on the command line does not exist; 70: OpenPGP
//!   failure; 73: `keygen` or `revoke` would overwrite a file; 74: other I/O error.
//!
//! See docs/SIGNING.md.

use std::io::Write;
use std::path::PathBuf;

use module_signing::{Error, Policy, Verdict, DEFAULT_TRUST_DIR};

/// Arguments of `module-sdk keygen`.
#[derive(Debug, clap::Args)]
pub struct KeygenArgs {
    /// The key's user ID, `"Name <mail>"`.
    #[arg(long, value_name = "USERID")]
    pub userid: String,
    /// Where to write the secret key (created with mode 0600; never overwritten). Keep it off the
    /// nodes.
    #[arg(long, value_name = "KEY.tsk")]
    pub out: PathBuf,
    /// Where to write the certificate (public part) that nodes put into their trust directory.
    #[arg(long, value_name = "KEY.asc")]
    pub cert_out: PathBuf,
}

/// Arguments of `module-sdk sign`.
#[derive(Debug, clap::Args)]
pub struct SignArgs {
    /// The secret key (a TSK file written by `keygen`).
    #[arg(long, value_name = "KEY.tsk")]
    pub key: PathBuf,
    /// A directory (an imageroot or events tree): writes DIR/MANIFEST and DIR/MANIFEST.sig. Or a
    /// file (a tar bundle): writes FILE.sig next to it.
    #[arg(value_name = "DIR|ARCHIVE")]
    pub path: PathBuf,
}

/// Arguments of `module-sdk revoke`.
#[derive(Debug, clap::Args)]
pub struct RevokeArgs {
    /// The secret key to revoke (a TSK file written by `keygen`).
    #[arg(long, value_name = "KEY.tsk")]
    pub key: PathBuf,
    /// Where to write the revoked certificate (never overwritten).
    #[arg(long, value_name = "REVOKED.asc")]
    pub cert_out: PathBuf,
    /// Why, in words (recorded in the revocation).
    #[arg(long, value_name = "TEXT", default_value = "key compromised")]
    pub reason: String,
}

/// Arguments of `module-sdk verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// A signed directory (checks MANIFEST.sig, then every file against MANIFEST), or a tar
    /// bundle (checks ARCHIVE.sig, or --signature, over the archive's bytes; extracts nothing).
    #[arg(value_name = "DIR|ARCHIVE")]
    pub path: PathBuf,
    /// Directory of trusted certificates (*.asc, *.pgp).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_TRUST_DIR)]
    pub trust_dir: PathBuf,
    /// require: anything but a good signature by a trusted key over matching files fails;
    /// warn: report problems on stderr and exit 0; off: check nothing.
    #[arg(long, value_name = "POLICY", default_value = "require", value_parser = policy_arg)]
    pub policy: Policy,
    /// The signature of an ARCHIVE (default ARCHIVE.sig).
    #[arg(long, value_name = "FILE")]
    pub signature: Option<PathBuf>,
}

fn policy_arg(s: &str) -> Result<Policy, String> {
    s.parse().map_err(|e: Error| e.to_string())
}

/// `keygen`: generates the key and writes both files; returns the report for stdout.
pub fn keygen_files(args: &KeygenArgs) -> Result<String, Error> {
    let fpr = module_signing::write_new_key(&args.userid, &args.out, &args.cert_out)?;
    Ok(format!(
        "created key {fpr} for {}\n  secret key:  {} (mode 0600; keep it off the nodes)\n  \
         certificate: {} (copy it into {DEFAULT_TRUST_DIR}/ on the nodes that trust it)\n",
        args.userid,
        args.out.display(),
        args.cert_out.display()
    ))
}

/// `revoke`: writes the revoked certificate; returns the report.
pub fn revoke_key(args: &RevokeArgs) -> Result<String, Error> {
    let signer = module_signing::pgp::key_signer(&args.key)?;
    let revoked = module_signing::revoked_certificate(&args.key, &args.reason)?;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&args.cert_out)
        .map_err(|cause| Error::Io {
            path: args.cert_out.clone(),
            cause,
        })?;
    f.write_all(&revoked).map_err(|cause| Error::Io {
        path: args.cert_out.clone(),
        cause,
    })?;
    Ok(format!(
        "revoked key {signer}: wrote {} (replace the key's certificate with it in the trust \
         directory of every node, {DEFAULT_TRUST_DIR}/ by default)\n",
        args.cert_out.display()
    ))
}

/// `sign`: signs a tree (MANIFEST + MANIFEST.sig) or an archive (FILE.sig); returns the report.
pub fn sign_path(args: &SignArgs) -> Result<String, Error> {
    let meta = std::fs::metadata(&args.path).map_err(|source| Error::Io {
        path: args.path.clone(),
        cause: source,
    })?;
    let signer = module_signing::pgp::key_signer(&args.key)?;
    if meta.is_dir() {
        let manifest = module_signing::sign_tree(&args.path, &args.key)?;
        Ok(format!(
            "signed {} files of {} with {signer}: wrote {}, {}\n",
            manifest.entries().len(),
            args.path.display(),
            args.path.join(module_signing::MANIFEST_FILE).display(),
            args.path.join(module_signing::SIGNATURE_FILE).display()
        ))
    } else {
        let sig = module_signing::default_signature_path(&args.path);
        module_signing::sign_file(&args.path, &args.key, &sig)?;
        Ok(format!(
            "signed {} with {signer}: wrote {}\n",
            args.path.display(),
            sig.display()
        ))
    }
}

/// `verify`: the verdict under the policy (`Err(Error::Rejected)` when require refuses it).
pub fn verify_path(args: &VerifyArgs) -> Result<Verdict, Error> {
    if args.path.is_dir() {
        return module_signing::verify(&args.path, &args.trust_dir, args.policy);
    }
    if !args.path.exists() {
        return Err(Error::Io {
            path: args.path.clone(),
            cause: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
        });
    }
    let sig = args
        .signature
        .clone()
        .unwrap_or_else(|| module_signing::default_signature_path(&args.path));
    module_signing::verify_archive(&args.path, &sig, &args.trust_dir, args.policy)
}

/// The exit code for an error (see the module documentation).
pub fn exit_code(e: &Error) -> i32 {
    match e {
        Error::Rejected(_) => 1,
        Error::BadPolicy(_) => 2,
        Error::Io { cause: source, .. } if source.kind() == std::io::ErrorKind::NotFound => 66,
        Error::Io { cause: source, .. } if source.kind() == std::io::ErrorKind::AlreadyExists => 73,
        Error::Io { .. } => 74,
        Error::OpenPgp { .. } => 70,
        Error::UnsafePath { .. }
        | Error::UnsupportedFileType { .. }
        | Error::ManifestSyntax { .. }
        | Error::TooLarge { .. }
        | Error::SigningKey { .. }
        | Error::UnsafeArchive { .. } => 65,
        _ => 70,
    }
}

fn finish(result: Result<String, Error>) -> i32 {
    let code = match result {
        Ok(report) => {
            print!("{report}");
            0
        }
        Err(e) => {
            eprintln!("module-sdk: error: {e}");
            exit_code(&e)
        }
    };
    let _ = std::io::stdout().flush();
    code
}

/// Runs `module-sdk keygen`; returns the exit code.
pub fn keygen(args: &KeygenArgs) -> i32 {
    finish(keygen_files(args))
}

/// Runs `module-sdk revoke`; returns the exit code.
pub fn revoke(args: &RevokeArgs) -> i32 {
    finish(revoke_key(args))
}

/// Runs `module-sdk sign`; returns the exit code.
pub fn sign(args: &SignArgs) -> i32 {
    finish(sign_path(args))
}

/// Runs `module-sdk verify`; returns the exit code. A good verdict is printed on stdout; one
/// accepted with a warning (policy warn) only as that warning, on stderr.
pub fn verify(args: &VerifyArgs) -> i32 {
    finish(verify_path(args).map(|v| match &v.warning {
        Some(w) => {
            eprintln!("module-sdk: warning: {w}");
            String::new()
        }
        None => format!("{v}\n"),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn keygen_sign_verify() {
        let root = std::env::temp_dir().join(format!("module-sdk-sign-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let p = |s: &str| root.join(s);
        std::fs::create_dir_all(p("tree/ev")).unwrap();
        std::fs::create_dir(p("trust")).unwrap();
        std::fs::write(p("tree/ev/10a"), "#!/bin/sh\n").unwrap();
        let kg = KeygenArgs {
            userid: "A <a@example.org>".into(),
            out: p("k.tsk"),
            cert_out: p("trust/k.asc"),
        };
        assert!(keygen_files(&kg).unwrap().contains("created key"));
        assert_eq!(exit_code(&keygen_files(&kg).unwrap_err()), 73);
        let report = sign_path(&SignArgs {
            key: p("k.tsk"),
            path: p("tree"),
        })
        .unwrap();
        assert!(report.contains("signed 1 files"), "{report}");
        let va = |path: &Path, policy: Policy| VerifyArgs {
            path: path.to_path_buf(),
            trust_dir: p("trust"),
            policy,
            signature: None,
        };
        assert!(verify_path(&va(&p("tree"), Policy::Require))
            .unwrap()
            .is_good());
        std::fs::write(p("tree/ev/10a"), "#!/bin/sh\nevil\n").unwrap();
        let e = verify_path(&va(&p("tree"), Policy::Require)).unwrap_err();
        assert_eq!(exit_code(&e), 1);
        assert!(e.to_string().contains("ev/10a (content differs)"), "{e}");
        assert_eq!(
            exit_code(&verify_path(&va(&p("nope"), Policy::Require)).unwrap_err()),
            66
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
