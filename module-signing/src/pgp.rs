//! OpenPGP with sequoia: key generation, detached signatures, the trust directory.

use std::io::Write;
use std::path::{Path, PathBuf};

use sequoia_openpgp as openpgp;

use openpgp::armor;
use openpgp::cert::prelude::*;
use openpgp::packet::{key, Key};
use openpgp::parse::stream::{
    DetachedVerifierBuilder, MessageLayer, MessageStructure, VerificationError, VerificationHelper,
};
use openpgp::parse::Parse;
use openpgp::policy::StandardPolicy;
use openpgp::serialize::stream::{Armorer, Message, Signer as StreamSigner};
use openpgp::serialize::SerializeInto;
use openpgp::{Cert, KeyHandle};

use crate::{Error, SignatureStatus, Signer};

/// Largest signature file read.
pub const MAX_SIGNATURE_BYTES: u64 = 1 << 20;
/// Largest key or certificate file read.
pub const MAX_KEY_BYTES: u64 = 16 << 20;

/// A freshly generated signing key.
pub struct GeneratedKey {
    /// The transferable secret key (TSK), ASCII-armored. Unencrypted: keep it `0600`, offline.
    pub tsk_armored: Vec<u8>,
    /// The certificate (public part), ASCII-armored: what goes into trust directories.
    pub cert_armored: Vec<u8>,
    /// The certificate's fingerprint, uppercase hex.
    pub fingerprint: String,
}

/// Generates a Curve25519 certificate with one user ID, a certification-only primary key and a
/// signing subkey, without expiry.
pub fn generate_key(userid: &str) -> Result<GeneratedKey, Error> {
    if userid.trim().is_empty() {
        return Err(Error::SigningKey {
            path: PathBuf::new(),
            reason: "the user ID is empty (use \"Name <mail>\")".into(),
        });
    }
    let (cert, _revocation) = CertBuilder::new()
        .set_cipher_suite(CipherSuite::Cv25519)
        .add_userid(userid)
        .add_signing_subkey()
        .generate()
        .map_err(|e| Error::openpgp("generating a key", e))?;
    let tsk_armored = cert
        .as_tsk()
        .armored()
        .to_vec()
        .map_err(|e| Error::openpgp("serializing the secret key", e))?;
    let cert_armored = cert
        .armored()
        .to_vec()
        .map_err(|e| Error::openpgp("serializing the certificate", e))?;
    Ok(GeneratedKey {
        tsk_armored,
        cert_armored,
        fingerprint: cert.fingerprint().to_hex(),
    })
}

/// The certificate of the secret key in the TSK file at `key_path` with a hard revocation added
/// (reason: key compromised, with `message`), ASCII-armored: what replaces the certificate in the
/// trust directories. A hard revocation makes every signature of the key bad, also the ones made
/// before it; sequoia honours it wherever the revoked certificate is the one loaded.
pub fn revoked_certificate(key_path: &Path, message: &str) -> Result<Vec<u8>, Error> {
    let key_err = |reason: String| Error::SigningKey {
        path: key_path.to_path_buf(),
        reason,
    };
    let bytes = read_limited(key_path, MAX_KEY_BYTES)?;
    let cert = Cert::from_bytes(&bytes).map_err(|e| key_err(format!("not an OpenPGP key: {e}")))?;
    let primary = cert
        .primary_key()
        .key()
        .clone()
        .parts_into_secret()
        .map_err(|_| {
            key_err(
                "holds no secret primary key (is it the certificate, KEY.asc, instead of KEY.tsk?)"
                    .into(),
            )
        })?;
    let mut signer = primary
        .into_keypair()
        .map_err(|e| key_err(format!("cannot use the primary key: {e}")))?;
    let revocation = CertRevocationBuilder::new()
        .set_reason_for_revocation(
            openpgp::types::ReasonForRevocation::KeyCompromised,
            message.as_bytes(),
        )
        .and_then(|b| b.build(&mut signer, &cert, None))
        .map_err(|e| Error::openpgp("revoking the key", e))?;
    let (revoked, _) = cert
        .strip_secret_key_material()
        .insert_packets(revocation)
        .map_err(|e| Error::openpgp("adding the revocation", e))?;
    let armored = revoked
        .armored()
        .to_vec()
        .map_err(|e| Error::openpgp("serializing the certificate", e));
    armored
}

/// Generates a key and writes the secret key to `tsk_path` (mode 0600) and the certificate to
/// `cert_path` (0644). Refuses to overwrite either file. Returns the fingerprint.
pub fn write_new_key(userid: &str, tsk_path: &Path, cert_path: &Path) -> Result<String, Error> {
    let key = generate_key(userid)?;
    write_new_file(tsk_path, &key.tsk_armored, 0o600)?;
    if let Err(e) = write_new_file(cert_path, &key.cert_armored, 0o644) {
        let _ = std::fs::remove_file(tsk_path);
        return Err(e);
    }
    Ok(key.fingerprint)
}

fn write_new_file(path: &Path, data: &[u8], mode: u32) -> Result<(), Error> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        cause: source,
    };
    let mut f = std::fs::File::options()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    f.write_all(data).map_err(io)?;
    f.sync_all().map_err(io)
}

/// Reads at most `limit` bytes of a file; more is an error.
pub(crate) fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>, Error> {
    use std::io::Read;
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        cause: source,
    };
    let f = std::fs::File::open(path).map_err(io)?;
    let mut buf = Vec::new();
    f.take(limit + 1).read_to_end(&mut buf).map_err(io)?;
    if buf.len() as u64 > limit {
        return Err(Error::TooLarge {
            path: path.to_path_buf(),
            limit,
        });
    }
    Ok(buf)
}

/// Reads a TSK file and finds its signing key: secret, valid now under the standard policy,
/// alive, not revoked, signing-capable, not password-protected.
fn load_signing_key(
    key_path: &Path,
) -> Result<(Cert, Key<key::SecretParts, key::UnspecifiedRole>), Error> {
    let key_err = |reason: String| Error::SigningKey {
        path: key_path.to_path_buf(),
        reason,
    };
    let bytes = read_limited(key_path, MAX_KEY_BYTES)?;
    let cert = Cert::from_bytes(&bytes).map_err(|e| key_err(format!("not an OpenPGP key: {e}")))?;
    if !cert.is_tsk() {
        return Err(key_err(
            "holds no secret key (is it the certificate, KEY.asc, instead of KEY.tsk?)".into(),
        ));
    }
    let policy = StandardPolicy::new();
    let key = {
        let valid = cert
            .with_policy(&policy, None)
            .map_err(|e| key_err(format!("not valid now: {e}")))?;
        let Some(ka) = valid
            .keys()
            .secret()
            .supported()
            .alive()
            .revoked(false)
            .for_signing()
            .next()
        else {
            return Err(key_err(
                "no usable signing key (secret, alive, not revoked, signing-capable)".into(),
            ));
        };
        ka.key().clone().role_into_unspecified()
    };
    if !key.has_unencrypted_secret() {
        return Err(key_err(
            "the signing key is password-protected, which is not supported yet".into(),
        ));
    }
    Ok((cert, key))
}

/// Who signs with the TSK file at `key_path`.
pub fn key_signer(key_path: &Path) -> Result<Signer, Error> {
    let (cert, key) = load_signing_key(key_path)?;
    let policy = StandardPolicy::new();
    let user_id = cert
        .with_policy(&policy, None)
        .ok()
        .and_then(|v| v.primary_userid().ok().map(|u| u.userid().value().to_vec()))
        .map(|v| String::from_utf8_lossy(&v).into_owned());
    Ok(Signer {
        fingerprint: cert.fingerprint().to_hex(),
        signing_key: key.fingerprint().to_hex(),
        user_id,
    })
}

/// Makes an ASCII-armored detached signature of `data` with the signing key in the TSK file at
/// `key_path`.
pub fn sign_bytes(data: &[u8], key_path: &Path) -> Result<String, Error> {
    let (_cert, key) = load_signing_key(key_path)?;
    let keypair = key.into_keypair().map_err(|e| Error::SigningKey {
        path: key_path.to_path_buf(),
        reason: format!("cannot use the signing key: {e}"),
    })?;
    let mut sink = Vec::new();
    {
        let message = Message::new(&mut sink);
        let message = Armorer::new(message)
            .kind(armor::Kind::Signature)
            .build()
            .map_err(|e| Error::openpgp("armoring", e))?;
        let mut signer = StreamSigner::new(message, keypair)
            .map_err(|e| Error::openpgp("signing", e))?
            .detached()
            .build()
            .map_err(|e| Error::openpgp("signing", e))?;
        signer
            .write_all(data)
            .map_err(|e| Error::openpgp("signing", e))?;
        signer
            .finalize()
            .map_err(|e| Error::openpgp("signing", e))?;
    }
    String::from_utf8(sink).map_err(|e| Error::OpenPgp {
        context: "signing".into(),
        message: format!("armored output is not UTF-8: {e}"),
    })
}

/// The certificates of a trust directory.
#[derive(Clone, Debug, Default)]
pub struct TrustStore {
    dir: PathBuf,
    certs: Vec<Cert>,
    /// Files that could not be read or parsed, in words; they are skipped.
    pub problems: Vec<String>,
}

impl TrustStore {
    /// Loads every certificate of every `*.asc` and `*.pgp` regular file directly in `dir` (a file
    /// may hold several, a keyring). Secret key material is dropped. Never fails: a missing
    /// directory or a bad file is an entry in [`TrustStore::problems`], and an empty store
    /// trusts nobody.
    pub fn load(dir: &Path) -> TrustStore {
        let mut store = TrustStore {
            dir: dir.to_path_buf(),
            ..TrustStore::default()
        };
        let read = match std::fs::read_dir(dir) {
            Ok(r) => r,
            Err(e) => {
                store
                    .problems
                    .push(format!("trust directory {}: {e}", dir.display()));
                return store;
            }
        };
        let mut files: Vec<PathBuf> = read
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("asc") | Some("pgp")
                ) && p.is_file()
            })
            .collect();
        files.sort();
        for path in files {
            let bytes = match read_limited(&path, MAX_KEY_BYTES) {
                Ok(b) => b,
                Err(e) => {
                    store.problems.push(e.to_string());
                    continue;
                }
            };
            let parser = match CertParser::from_bytes(&bytes) {
                Ok(p) => p,
                Err(e) => {
                    store.problems.push(format!("{}: {e}", path.display()));
                    continue;
                }
            };
            for cert in parser {
                match cert {
                    Ok(c) => store.certs.push(c.strip_secret_key_material()),
                    Err(e) => store.problems.push(format!("{}: {e}", path.display())),
                }
            }
        }
        store
    }

    /// A store of the given certificates (secret parts dropped).
    pub fn from_certs(dir: &Path, certs: Vec<Cert>) -> TrustStore {
        TrustStore {
            dir: dir.to_path_buf(),
            certs: certs
                .into_iter()
                .map(Cert::strip_secret_key_material)
                .collect(),
            problems: Vec::new(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The fingerprints of the trusted certificates.
    pub fn fingerprints(&self) -> Vec<String> {
        self.certs
            .iter()
            .map(|c| c.fingerprint().to_hex())
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
    }

    /// Checks a detached signature (`sig`, armored or binary) over the content read from `data`.
    /// Never panics and never fails: every outcome is a [`SignatureStatus`].
    pub fn check<R: std::io::Read + Send + Sync>(&self, data: R, sig: &[u8]) -> SignatureStatus {
        let policy = StandardPolicy::new();
        let helper = Helper {
            store: self,
            outcome: None,
        };
        let verifier = DetachedVerifierBuilder::from_bytes(sig)
            .and_then(|b| b.with_policy(&policy, None, helper));
        let mut verifier = match verifier {
            Ok(v) => v,
            Err(e) => {
                return SignatureStatus::Bad {
                    reason: format!("not a usable OpenPGP signature: {e}"),
                }
            }
        };
        let result = verifier.verify_reader(data);
        let outcome = verifier.into_helper().outcome;
        match (outcome, result) {
            (Some(status), _) => status,
            (None, Err(e)) => SignatureStatus::Bad {
                reason: format!("cannot check the signature: {e}"),
            },
            (None, Ok(())) => SignatureStatus::Bad {
                reason: "no signature found".into(),
            },
        }
    }

    /// [`TrustStore::check`] over bytes in memory.
    pub fn check_bytes(&self, data: &[u8], sig: &[u8]) -> SignatureStatus {
        self.check(data, sig)
    }
}

struct Helper<'a> {
    store: &'a TrustStore,
    outcome: Option<SignatureStatus>,
}

impl VerificationHelper for Helper<'_> {
    fn get_certs(&mut self, _ids: &[KeyHandle]) -> openpgp::Result<Vec<Cert>> {
        Ok(self.store.certs.clone())
    }

    fn check(&mut self, structure: MessageStructure) -> openpgp::Result<()> {
        let mut good: Option<Signer> = None;
        let mut bad: Vec<String> = Vec::new();
        let mut unknown_issuers: Vec<String> = Vec::new();
        let mut count = 0usize;
        for layer in structure.into_iter() {
            let MessageLayer::SignatureGroup { results } = layer else {
                bad.push("unexpected message structure (not a detached signature)".into());
                continue;
            };
            for r in results {
                count += 1;
                match r {
                    Ok(gc) => {
                        if good.is_none() {
                            let user_id =
                                gc.ka.valid_cert().primary_userid().ok().map(|u| {
                                    String::from_utf8_lossy(u.userid().value()).into_owned()
                                });
                            good = Some(Signer {
                                fingerprint: gc.ka.cert().fingerprint().to_hex(),
                                signing_key: gc.ka.key().fingerprint().to_hex(),
                                user_id,
                            });
                        }
                    }
                    Err(VerificationError::MissingKey { sig }) => {
                        // A signature usually names its issuer twice, by fingerprint and
                        // by key ID: keep the fingerprints when there are any.
                        let handles = sig.get_issuers();
                        let fprs: Vec<String> = handles
                            .iter()
                            .filter(|h| matches!(h, KeyHandle::Fingerprint(_)))
                            .map(|h| h.to_hex())
                            .collect();
                        let issuers = if fprs.is_empty() {
                            handles.iter().map(|h| h.to_hex()).collect()
                        } else {
                            fprs
                        };
                        if issuers.is_empty() {
                            unknown_issuers.push("(no issuer recorded)".into());
                        } else {
                            unknown_issuers.extend(issuers);
                        }
                    }
                    Err(e) => bad.push(e.to_string()),
                }
            }
        }
        self.outcome = Some(if !bad.is_empty() {
            SignatureStatus::Bad {
                reason: bad.join("; "),
            }
        } else if let Some(signer) = good {
            SignatureStatus::Good { signer }
        } else if !unknown_issuers.is_empty() {
            unknown_issuers.dedup();
            SignatureStatus::Untrusted {
                issuers: unknown_issuers,
            }
        } else {
            SignatureStatus::Bad {
                reason: if count == 0 {
                    "the signature file holds no signature".into()
                } else {
                    "no valid signature".into()
                },
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_check() {
        let t = tempfile::tempdir().unwrap();
        let (tsk, asc) = (t.path().join("k.tsk"), t.path().join("k.asc"));
        let fpr = write_new_key("Module Signer <signer@example.org>", &tsk, &asc).unwrap();
        assert!(write_new_key("again <a@b>", &tsk, &t.path().join("x.asc")).is_err());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&tsk).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let sig = sign_bytes(b"hello", &tsk).unwrap();
        assert!(sig.starts_with("-----BEGIN PGP SIGNATURE-----"), "{sig}");
        assert!(sign_bytes(b"hello", &asc).is_err());

        let trust_dir = t.path().join("trust");
        std::fs::create_dir(&trust_dir).unwrap();
        let empty = TrustStore::load(&trust_dir);
        assert!(matches!(
            empty.check_bytes(b"hello", sig.as_bytes()),
            SignatureStatus::Untrusted { .. }
        ));
        std::fs::copy(&asc, trust_dir.join("signer.asc")).unwrap();
        std::fs::write(trust_dir.join("junk.pgp"), "garbage").unwrap();
        let store = TrustStore::load(&trust_dir);
        assert_eq!(store.fingerprints(), std::slice::from_ref(&fpr));
        assert_eq!(store.problems.len(), 1, "{:?}", store.problems);
        match store.check_bytes(b"hello", sig.as_bytes()) {
            SignatureStatus::Good { signer } => {
                assert_eq!(signer.fingerprint, fpr);
                assert_eq!(
                    signer.user_id.as_deref(),
                    Some("Module Signer <signer@example.org>")
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            store.check_bytes(b"hellO", sig.as_bytes()),
            SignatureStatus::Bad { .. }
        ));
        assert!(matches!(
            store.check_bytes(b"hello", b"garbage"),
            SignatureStatus::Bad { .. }
        ));
        assert!(matches!(
            store.check_bytes(b"hello", b""),
            SignatureStatus::Bad { .. }
        ));
        let missing = TrustStore::load(&t.path().join("nope"));
        assert!(missing.is_empty() && !missing.problems.is_empty());
    }
}
