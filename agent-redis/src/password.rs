//! Redis passwords: a [`secrecy::SecretString`] that is zeroed when dropped, has no `Display` and a
//! redacted `Debug`, so it cannot end up in a log line or an error by accident. Only
//! [`Password::expose`] shows it, at the one place that needs it (an `AUTH`, a file, a step's URL).
//!
//! Generated passwords are 32 random bytes written as 64 hex digits: hex needs no quoting in a URL,
//! an env file or a shell, and 256 bits cannot be guessed, so Redis's fast SHA-256 password check is
//! no weakness.

use secrecy::{ExposeSecret, SecretString};

use crate::error::{Error, Result};

/// A secret Redis password.
#[derive(Clone)]
pub struct Password(SecretString);

impl Password {
    /// Number of random bytes in a generated password.
    pub const BYTES: usize = 32;

    /// A fresh password from the operating system's random source.
    pub fn generate() -> Result<Self> {
        let mut raw = [0u8; Self::BYTES];
        getrandom::fill(&mut raw).map_err(|e| Error::Random(e.to_string()))?;
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut text = String::with_capacity(Self::BYTES * 2);
        for b in raw {
            text.push(char::from(HEX[usize::from(b >> 4)]));
            text.push(char::from(HEX[usize::from(b & 0xf)]));
        }
        raw.fill(0);
        Ok(Password(SecretString::from(text)))
    }

    /// Wraps a password that exists already (read from a file or a URL).
    pub fn from_existing(text: impl Into<String>) -> Self {
        Password(SecretString::from(text.into()))
    }

    /// The password itself.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl PartialEq for Password {
    fn eq(&self, other: &Self) -> bool {
        self.expose() == other.expose()
    }
}

impl Eq for Password {}

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
        let p = Password::from_existing("hunter2-secret");
        assert_eq!(format!("{p:?}"), "Password(***)");
        assert!(!format!("{:?}", Some(&p)).contains("hunter2"));
    }
}
