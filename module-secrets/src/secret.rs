//! Plaintext values ([`Secret`]) and secret names ([`SecretName`]). Pure: no I/O but reading a value
//! from a reader the caller gives.

use std::fmt;
use std::io::Read;
use std::str::FromStr;

use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// What `Debug` and `Display` of a [`Secret`] print instead of the value.
pub const MASK: &str = "***";

/// Longest secret name.
pub const MAX_NAME_LEN: usize = 64;

/// Largest value [`Secret::read_from`] accepts (1 MiB): a secret is a password or a key, not a file
/// store, and every step's environment load decrypts them all.
pub const MAX_VALUE_LEN: usize = 1 << 20;

/// A plaintext secret value. It never shows itself: `Debug` and `Display` print `***`. Its memory is
/// overwritten with zeros when it is dropped. Values are bytes (a secret may be binary); use
/// [`Secret::expose`] where the value is really needed, and nowhere else.
pub struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Secret(Zeroizing::new(bytes.into()))
    }

    pub(crate) fn from_zeroizing(bytes: Zeroizing<Vec<u8>>) -> Self {
        Secret(bytes)
    }

    /// The value. Do not log it, do not put it in an error message.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The value as text, if it is UTF-8.
    pub fn expose_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Reads a whole value from `input`, at most `limit` bytes. The buffer grows by copying into a new
    /// buffer and zeroing the old one, so no copy of the value is left behind in freed memory.
    pub fn read_from(mut input: impl Read, limit: usize) -> Result<Secret> {
        let mut buf = Zeroizing::new(Vec::with_capacity(256));
        let mut chunk = Zeroizing::new([0u8; 4096]);
        loop {
            let n = match input.read(&mut chunk[..]) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::Read(e)),
            };
            if buf.len() + n > limit {
                return Err(Error::BadValue(format!(
                    "the value is larger than {limit} bytes: a secret is a password or a key"
                )));
            }
            if buf.len() + n > buf.capacity() {
                let mut bigger =
                    Zeroizing::new(Vec::with_capacity((buf.len() + n).max(buf.capacity() * 2)));
                bigger.extend_from_slice(&buf);
                buf = bigger; // the old buffer is zeroed as it drops
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok(Secret(buf))
    }

    /// Drops one trailing newline (`\n` or `\r\n`), so `echo "$PW" | … set NAME` stores `$PW`.
    pub fn strip_one_newline(&mut self) {
        if self.0.ends_with(b"\n") {
            self.0.pop();
            if self.0.ends_with(b"\r") {
                self.0.pop();
            }
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({MASK})")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret::new(s.as_bytes())
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret::new(s.into_bytes())
    }
}

/// The name of a secret: a field of `module/<id>/secrets`. 1 to 64 characters of
/// `A-Z a-z 0-9 _ . -`, not starting with `-` (it would read as an option on a command line).
///
/// The core-events name types do not fit: `EventName` allows 128 characters and `RunId` is a run id;
/// borrowing either would tie secret names to rules made for something else.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SecretName(String);

impl SecretName {
    pub fn new(s: impl Into<String>) -> Result<Self> {
        let s = s.into();
        let reason = if s.is_empty() {
            Some("it is empty")
        } else if s.len() > MAX_NAME_LEN {
            Some("it is longer than 64 characters")
        } else if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        {
            Some("only A-Z a-z 0-9 _ . - are allowed")
        } else if s.starts_with('-') {
            Some("it may not start with '-'")
        } else {
            None
        };
        match reason {
            None => Ok(SecretName(s)),
            Some(reason) => Err(Error::BadName { name: s, reason }),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for SecretName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        SecretName::new(s)
    }
}

impl fmt::Display for SecretName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for SecretName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_show_themselves() {
        let s = Secret::from("hunter22");
        assert_eq!(format!("{s}"), "***");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert_eq!(format!("{:?}", vec![("DB", s)]), "[(\"DB\", Secret(***))]");
    }

    #[test]
    fn reading_values() {
        let s = Secret::read_from(&b"pw\n"[..], 100).unwrap();
        assert_eq!(s.expose(), b"pw\n");
        let big = vec![b'x'; 10_000];
        let s = Secret::read_from(&big[..], 20_000).unwrap();
        assert_eq!(s.expose(), &big[..]);
        assert!(Secret::read_from(&big[..], 9_999).is_err());
        let bin = Secret::read_from(&[0u8, 255, 10][..], 10).unwrap();
        assert_eq!(bin.expose(), &[0, 255, 10]);
        assert_eq!(bin.expose_str(), None);
    }

    #[test]
    fn one_newline_is_stripped() {
        for (input, want) in [
            ("pw\n", "pw"),
            ("pw\r\n", "pw"),
            ("pw\n\n", "pw\n"),
            ("pw", "pw"),
            ("", ""),
            ("\n", ""),
        ] {
            let mut s = Secret::from(input);
            s.strip_one_newline();
            assert_eq!(s.expose_str(), Some(want), "{input:?}");
        }
    }

    #[test]
    fn names() {
        for ok in [
            "DB_PASSWORD",
            "a",
            "x.y-z_1",
            "_",
            ".hidden",
            &"a".repeat(64),
        ] {
            assert_eq!(SecretName::new(ok).unwrap().as_str(), ok);
        }
        for bad in [
            "",
            "-x",
            "a b",
            "a/b",
            "é",
            "a:b",
            "a\nb",
            "*",
            &"a".repeat(65),
        ] {
            let e = SecretName::new(bad).unwrap_err();
            assert!(matches!(e, Error::BadName { .. }), "{bad:?}");
            assert!(e.to_string().contains("is invalid"), "{e}");
        }
    }
}
