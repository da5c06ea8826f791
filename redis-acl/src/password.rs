//! Passwords of ACL users: 32 random bytes from the operating system, written as 64 hex digits.
//!
//! Hex needs no quoting in a URL, an env file or a shell, and 256 bits cannot be guessed, so Redis's
//! fast SHA-256 password check is no weakness. A [`Password`] has no `Display` and a redacted `Debug`,
//! so it cannot end up in a log line or an error by accident: only [`Password::expose`] shows it.

use crate::error::{Error, Result};

/// A secret Redis password.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// Number of random bytes in a generated password.
    pub const BYTES: usize = 32;

    /// A fresh password from the operating system's random source.
    pub fn generate() -> Result<Self> {
        let mut raw = [0u8; Self::BYTES];
        getrandom::fill(&mut raw).map_err(|e| Error::Random(e.to_string()))?;
        let mut text = String::with_capacity(Self::BYTES * 2);
        for b in raw {
            text.push(char::from_digit(u32::from(b >> 4), 16).expect("nibble"));
            text.push(char::from_digit(u32::from(b & 0xf), 16).expect("nibble"));
        }
        Ok(Password(text))
    }

    /// Wraps a password read from a credentials file.
    pub fn from_existing(text: String) -> Self {
        Password(text)
    }

    /// The password itself, for the one place that needs it (a command argument, a file).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_passwords_are_long_hex_and_differ() {
        let a = Password::generate().unwrap();
        let b = Password::generate().unwrap();
        assert_eq!(a.expose().len(), 64);
        assert!(a.expose().bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn debug_hides_the_password() {
        let p = Password::from_existing("hunter2-secret".into());
        assert_eq!(format!("{p:?}"), "Password(***)");
        assert!(!format!("{:?}", Some(&p)).contains("hunter2"));
    }
}
