//! Learning the values of a module's secrets so the scrubber can remove them from everything written.
//!
//! When a run begins, a module agent gets `module/<id>/secrets` (only when it changed since) and
//! decrypts, with the module's age identity, every ciphertext it has not seen before; each value is
//! registered with the [`Scrubber`].
//! A value stays registered for the life of the agent, so output that mentions a secret removed since
//! is still scrubbed. Decrypting costs a few hundred microseconds per secret, which is why seen
//! ciphertexts are remembered.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Mutex;

use module_secrets::KeyFile;

use crate::scrub::Scrubber;

pub(crate) struct SecretScrubbing {
    key: Option<PathBuf>,
    seen: Mutex<HashSet<Vec<u8>>>,
    /// The digest (computed by Redis, opaque here) of the secrets last learned without a failure:
    /// while the hash is unchanged, Redis does not send it again.
    digest: Mutex<String>,
}

impl SecretScrubbing {
    pub fn new(key: Option<PathBuf>) -> Self {
        SecretScrubbing {
            key,
            seen: Mutex::new(HashSet::new()),
            digest: Mutex::new(String::new()),
        }
    }

    pub fn digest(&self) -> String {
        self.digest.lock().expect("digest lock").clone()
    }

    pub fn set_digest(&self, digest: String) {
        *self.digest.lock().expect("digest lock") = digest;
    }

    /// Registers the values of `entries` (name → ciphertext, as `HGETALL` returns them) with the
    /// scrubber. Returns warnings for the journal: secrets that could not be decrypted, so could not be
    /// scrubbed.
    pub fn learn(&self, entries: Vec<(Vec<u8>, Vec<u8>)>, scrubber: &Scrubber) -> Vec<String> {
        let fresh: Vec<(Vec<u8>, Vec<u8>)> = {
            let seen = self.seen.lock().expect("seen lock");
            entries
                .into_iter()
                .filter(|(_, c)| !seen.contains(c))
                .collect()
        };
        if fresh.is_empty() {
            return Vec::new();
        }
        let Some(path) = &self.key else {
            return vec![format!("{} secrets cannot be decrypted: the agent has no secret key file; their values are not scrubbed from output", fresh.len())];
        };
        let identity = match KeyFile::new(path.clone()).load() {
            Ok(id) => id,
            Err(e) => {
                return vec![format!("{} secrets cannot be decrypted ({e}); their values are not scrubbed from output", fresh.len())];
            }
        };
        let by_name: HashMap<String, Vec<u8>> = fresh
            .iter()
            .map(|(n, c)| (String::from_utf8_lossy(n).into_owned(), c.clone()))
            .collect();
        let decrypted = module_secrets::store::decrypt_entries(fresh, &identity);
        let mut seen = self.seen.lock().expect("seen lock");
        for (name, value) in &decrypted.secrets {
            scrubber.add(value.expose());
            seen.extend(by_name.get(name).cloned());
        }
        // Failures are not remembered: they are reported again on every run until someone fixes them.
        decrypted
            .failed
            .iter()
            .map(|(name, e)| format!("secret {name:?} cannot be decrypted ({e}); its value is not scrubbed from output"))
            .collect()
    }
}
