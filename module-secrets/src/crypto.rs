//! age x25519 identities and recipients, and the two operations on a value: [`encrypt`] to a recipient
//! (ASCII-armored, as the protocol stores it) and [`decrypt`] with an identity. Pure: no I/O.

use std::fmt;
use std::io::Read;
use std::iter;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use age::armor::ArmoredReader;
use age::secrecy::ExposeSecret;
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::secret::Secret;

/// The first line of an armored age ciphertext.
pub const ARMOR_BEGIN: &str = "-----BEGIN AGE ENCRYPTED FILE-----";

/// A module's private key: an age x25519 identity, with the file it was read from. `Debug` shows only
/// its public key.
#[derive(Clone)]
pub struct Identity {
    key: age::x25519::Identity,
    origin: Option<PathBuf>,
}

impl Identity {
    /// A new random identity.
    pub fn generate() -> Self {
        Identity {
            key: age::x25519::Identity::generate(),
            origin: None,
        }
    }

    /// Parses `AGE-SECRET-KEY-1…`. The error never contains the input.
    pub fn parse(s: &str) -> std::result::Result<Self, &'static str> {
        age::x25519::Identity::from_str(s).map(|key| Identity { key, origin: None })
    }

    pub(crate) fn with_origin(mut self, path: &Path) -> Self {
        self.origin = Some(path.to_path_buf());
        self
    }

    /// The file this identity was read from or written to, if any.
    pub fn origin(&self) -> Option<&Path> {
        self.origin.as_deref()
    }

    pub(crate) fn origin_text(&self) -> String {
        match &self.origin {
            Some(p) => p.display().to_string(),
            None => "in use".to_string(),
        }
    }

    /// The public key others encrypt to.
    pub fn recipient(&self) -> Recipient {
        Recipient(self.key.to_public())
    }

    /// The private key as `AGE-SECRET-KEY-1…`, in memory that is zeroed on drop.
    pub fn to_secret_string(&self) -> Zeroizing<String> {
        Zeroizing::new(self.key.to_string().expose_secret().to_string())
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity(public key {})", self.recipient())
    }
}

/// A public key (`age1…`): what secrets are encrypted to.
#[derive(Clone)]
pub struct Recipient(age::x25519::Recipient);

impl Recipient {
    /// Parses `age1…` (surrounding whitespace is ignored).
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        age::x25519::Recipient::from_str(s.trim())
            .map(Recipient)
            .map_err(|e| e.to_string())
    }
}

impl PartialEq for Recipient {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

impl Eq for Recipient {}

impl fmt::Display for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Recipient({self})")
    }
}

/// Encrypts `value` to `to`; returns the ASCII-armored ciphertext (`-----BEGIN AGE ENCRYPTED FILE-----`
/// …), the form stored in `module/<id>/secrets`.
pub fn encrypt(value: &[u8], to: &Recipient) -> Result<String> {
    age::encrypt_and_armor(&to.0, value).map_err(|e| Error::Encrypt(e.to_string()))
}

/// Decrypts an armored ciphertext with `identity`.
///
/// Errors: [`Error::NotArmored`] when the input is not armored age; [`Error::NotForThisKey`] when it
/// was encrypted to another key (age cannot tell a damaged recipient line apart from that);
/// [`Error::Damaged`] for anything else that does not decrypt (changed, truncated, bad armor).
pub fn decrypt(armored: &[u8], identity: &Identity) -> Result<Secret> {
    let start = armored
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(armored.len());
    if !armored[start..].starts_with(ARMOR_BEGIN.as_bytes()) {
        return Err(Error::NotArmored);
    }
    let decryptor =
        age::Decryptor::new_buffered(ArmoredReader::new(&armored[start..])).map_err(from_age)?;
    let mut reader = decryptor
        .decrypt(iter::once(&identity.key as &dyn age::Identity))
        .map_err(from_age)?;
    // The plaintext is shorter than the armored text, so this buffer never reallocates (a
    // reallocation would leave a copy of the value in freed memory).
    let mut plain = Zeroizing::new(Vec::with_capacity(armored.len()));
    reader.read_to_end(&mut plain).map_err(|e| Error::Damaged {
        detail: format!("the payload does not decrypt: {e}"),
    })?;
    Ok(Secret::from_zeroizing(plain))
}

fn from_age(e: age::DecryptError) -> Error {
    use age::DecryptError as D;
    let detail = match e {
        D::NoMatchingKeys => return Error::NotForThisKey,
        D::InvalidHeader => "the header is invalid".to_string(),
        D::InvalidMac => "the header's MAC does not match".to_string(),
        D::DecryptionFailed => "the payload does not decrypt".to_string(),
        D::KeyDecryptionFailed => "the file key does not decrypt".to_string(),
        D::UnknownFormat => "not a known age format".to_string(),
        D::Io(e) => format!("unreadable: {e}"),
        other => other.to_string(),
    };
    Error::Damaged { detail }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(s: &str) -> Vec<String> {
        s.lines().map(str::to_string).collect()
    }

    /// Replaces the character at `col` of line `line` by another base64 character.
    fn flip(armored: &str, line: usize, col: usize) -> String {
        let mut l = lines(armored);
        let mut chars: Vec<char> = l[line].chars().collect();
        chars[col] = if chars[col] == 'A' { 'B' } else { 'A' };
        l[line] = chars.into_iter().collect();
        l.join("\n") + "\n"
    }

    #[test]
    fn round_trip() {
        let id = Identity::generate();
        for value in [&b"hunter22"[..], b"", b"\x00\xffbinary\n", &[7u8; 100_000]] {
            let c = encrypt(value, &id.recipient()).unwrap();
            assert!(c.starts_with(ARMOR_BEGIN), "{c}");
            assert_eq!(decrypt(c.as_bytes(), &id).unwrap().expose(), value);
        }
        let c = encrypt(b"pw", &id.recipient()).unwrap();
        assert!(!c.contains("pw\n"));
        assert_eq!(
            decrypt(format!("\n  {c}").as_bytes(), &id)
                .unwrap()
                .expose(),
            b"pw"
        );
    }

    #[test]
    fn identities_and_recipients_parse_back() {
        let id = Identity::generate();
        let text = id.to_secret_string();
        assert!(text.starts_with("AGE-SECRET-KEY-1"));
        let back = Identity::parse(&text).unwrap();
        assert_eq!(back.recipient(), id.recipient());
        let r = id.recipient().to_string();
        assert!(r.starts_with("age1"));
        assert_eq!(
            Recipient::parse(&format!(" {r}\n")).unwrap(),
            id.recipient()
        );
        assert!(Recipient::parse("age1nope").is_err());
        assert!(Identity::parse("AGE-SECRET-KEY-1NOPE").is_err());
        assert!(!format!("{id:?}").contains("AGE-SECRET-KEY"));
        assert_ne!(Identity::generate().recipient(), id.recipient());
    }

    #[test]
    fn another_key_is_refused_clearly() {
        let c = encrypt(b"pw", &Identity::generate().recipient()).unwrap();
        let e = decrypt(c.as_bytes(), &Identity::generate()).unwrap_err();
        assert!(matches!(e, Error::NotForThisKey), "{e}");
    }

    #[test]
    fn not_armored_is_refused() {
        let id = Identity::generate();
        let binary = age::encrypt(&id.recipient().0, b"pw").unwrap();
        for bad in [
            &binary[..],
            b"",
            b"plaintext",
            b"-----BEGIN PGP MESSAGE-----\n",
        ] {
            let e = decrypt(bad, &id).unwrap_err();
            assert!(matches!(e, Error::NotArmored), "{e}");
        }
    }

    #[test]
    fn damage_is_detected() {
        let id = Identity::generate();
        let c = encrypt(b"a secret value of some length", &id.recipient()).unwrap();
        let l = lines(&c);
        let body_last = l.len() - 2; // the line before END
        let damaged = [
            // payload (last body line) changed
            flip(&c, body_last, 0),
            // header start ("age-encryption.org/v1") changed
            flip(&c, 1, 0),
            // truncated: last body line missing
            {
                let mut t = l.clone();
                t.remove(body_last);
                t.join("\n") + "\n"
            },
            // END line missing
            l[..l.len() - 1].join("\n") + "\n",
            // not base64
            c.replacen(&l[1][..4], "!!!!", 1),
        ];
        for (i, d) in damaged.iter().enumerate() {
            let e = decrypt(d.as_bytes(), &id).unwrap_err();
            assert!(matches!(e, Error::Damaged { .. }), "case {i}: {e}\n{d}");
            assert!(e.to_string().starts_with("ciphertext is damaged"), "{e}");
        }
    }
}
