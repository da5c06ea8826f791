//! Property tests that feed hostile input to the parsers of secret envelopes: random bytes, real
//! ciphertexts with bytes flipped, cut or inserted, and random public-key strings. None may panic,
//! and no damaged envelope may decrypt to something other than the original value.
//!
//! Longer runs (what docs/SECURITY.md records): `PROPTEST_CASES=20000 cargo test --release -p module-secrets --test fuzz`.

use module_secrets::{decrypt, encrypt, Identity, Recipient};
use proptest::prelude::*;
use std::sync::OnceLock;

fn fixture() -> &'static (Identity, String) {
    static F: OnceLock<(Identity, String)> = OnceLock::new();
    F.get_or_init(|| {
        let id = Identity::generate();
        let ct = encrypt(b"correct horse battery staple", &id.recipient()).unwrap();
        (id, ct)
    })
}

proptest! {
    #[test]
    fn random_bytes_never_decrypt(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let (id, _) = fixture();
        prop_assert!(decrypt(&bytes, id).is_err());
    }

    #[test]
    fn armored_garbage_never_decrypts(body in "[A-Za-z0-9+/=\n]{0,600}") {
        let (id, _) = fixture();
        let text = format!("-----BEGIN AGE ENCRYPTED FILE-----\n{body}\n-----END AGE ENCRYPTED FILE-----\n");
        prop_assert!(decrypt(text.as_bytes(), id).is_err());
    }

    #[test]
    fn damaged_envelopes_fail_or_give_the_original(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let (id, ct) = fixture();
        let mut bytes = ct.as_bytes().to_vec();
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        if let Some(at) = cut {
            bytes.truncate(at.index(bytes.len()));
        }
        if let Ok(plain) = decrypt(&bytes, id) {
            // A flip that only touched armor whitespace or was a no-op may still decrypt.
            prop_assert_eq!(plain.expose(), b"correct horse battery staple");
        }
    }

    #[test]
    fn public_key_parsing_never_panics(s in "\\PC{0,120}", tail in "[a-z0-9]{0,80}") {
        let _ = Recipient::parse(&s);
        let _ = Recipient::parse(&format!("age1{tail}"));
    }
}
