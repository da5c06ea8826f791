//! Value-based scrubbing of secrets from anything the engine writes or logs.
//!
//! The engine registers every secret value it knows (its own Redis password today; decrypted module
//! secrets later) and passes all step output and error text through [`Scrubber::scrub`] before it
//! reaches Redis or the logs. Matching is on values, not on key names, so a secret printed by a step
//! under any name is still caught.

use std::sync::{Arc, RwLock};

/// Replacement text for a scrubbed value.
pub const MASK: &str = "***";

/// Values shorter than this are not scrubbed: masking "1" or "ab" everywhere would destroy output
/// and protect nothing.
pub const MIN_SECRET_LEN: usize = 4;

#[derive(Debug, Clone, Default)]
pub struct Scrubber {
    secrets: Arc<RwLock<Vec<Vec<u8>>>>,
}

impl Scrubber {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a value to remove from everything written from now on.
    pub fn add(&self, secret: impl AsRef<[u8]>) {
        let s = secret.as_ref();
        if s.len() < MIN_SECRET_LEN {
            return;
        }
        let mut list = self.secrets.write().expect("scrubber lock");
        if !list.iter().any(|k| k == s) {
            list.push(s.to_vec());
            // Longest first, so a secret that contains another is masked whole.
            list.sort_by_key(|k| std::cmp::Reverse(k.len()));
        }
    }

    /// Returns `input` with every registered value replaced by [`MASK`].
    pub fn scrub(&self, input: &[u8]) -> Vec<u8> {
        let list = self.secrets.read().expect("scrubber lock");
        let mut out = input.to_vec();
        for secret in list.iter() {
            out = replace_all(&out, secret, MASK.as_bytes());
        }
        out
    }

    pub fn scrub_str(&self, input: &str) -> String {
        String::from_utf8_lossy(&self.scrub(input.as_bytes())).into_owned()
    }
}

fn replace_all(haystack: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut i = 0;
    while i < haystack.len() {
        if haystack[i..].starts_with(needle) {
            out.extend_from_slice(with);
            i += needle.len();
        } else {
            out.push(haystack[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrubs_values_anywhere() {
        let s = Scrubber::new();
        s.add("hunter22");
        s.add("hunter22-long");
        s.add("ab"); // too short: ignored
        let out = s.scrub_str("pw=hunter22-long and hunter22, ab");
        assert_eq!(out, "pw=*** and ***, ab");
    }
}
