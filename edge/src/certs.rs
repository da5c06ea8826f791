//! Certificates as the edge stores and serves them: a PEM chain and its key checked before
//! anything is stored (a chain Caddy cannot load would make every later configuration refused),
//! and which host names a certificate covers.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use core_events::edge::HostName;
use rcgen::PublicKeyData;
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;

use crate::error::{Error, Result};

/// The most of a chain or key read (a chain of a few certificates is ~5 KB).
pub const PEM_MAX: usize = 64 * 1024;

/// What the edge knows of a certificate, from its leaf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The names it covers (DNS subject alternative names; `*.example.org` for a wildcard).
    pub names: Vec<String>,
    pub issuer: String,
    pub serial: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl CertInfo {
    /// The certificate's name in the store: its first name that is a plain host name.
    pub fn store_name(&self) -> Result<HostName> {
        self.names
            .iter()
            .find_map(|n| HostName::parse(n).ok())
            .ok_or_else(|| {
                Error::Certificate(
                    "no plain host name among its names (a wildcard-only certificate is named by none)"
                        .into(),
                )
            })
    }
}

fn bad(why: impl Into<String>) -> Error {
    Error::Certificate(why.into())
}

fn time_of(t: x509_parser::time::ASN1Time) -> SystemTime {
    let secs = t.timestamp();
    if secs < 0 {
        UNIX_EPOCH
    } else {
        UNIX_EPOCH + Duration::from_secs(secs as u64)
    }
}

/// True for a name a certificate may cover: a host name, or `*.` and one.
fn is_cert_name(n: &str) -> bool {
    let plain = n.strip_prefix("*.").unwrap_or(n);
    HostName::parse(plain).is_ok_and(|h| h.as_str() == plain)
}

/// Checks a chain (PEM certificates, leaf first) and its private key (PEM): the chain parses, the
/// leaf has DNS names, the key is the leaf's. Returns what the leaf says.
pub fn inspect(chain_pem: &str, key_pem: &str) -> Result<CertInfo> {
    if chain_pem.len() > PEM_MAX || key_pem.len() > PEM_MAX {
        return Err(bad(format!("more than {PEM_MAX} bytes of PEM")));
    }
    let mut ders = Vec::new();
    for block in Pem::iter_from_buffer(chain_pem.as_bytes()) {
        let block = block.map_err(|e| bad(format!("the chain is not PEM: {e}")))?;
        if block.label != "CERTIFICATE" {
            return Err(bad(format!(
                "the chain holds a {:?} block: only CERTIFICATE blocks belong there",
                block.label
            )));
        }
        ders.push(block);
    }
    let leaf_pem = ders
        .first()
        .ok_or_else(|| bad("the chain has no certificate"))?;
    for (i, block) in ders.iter().enumerate() {
        block
            .parse_x509()
            .map_err(|e| bad(format!("certificate {} of the chain: {e}", i + 1)))?;
    }
    let leaf = leaf_pem
        .parse_x509()
        .map_err(|e| bad(format!("the leaf certificate: {e}")))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = leaf.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                let d = d.to_ascii_lowercase();
                if !is_cert_name(&d) {
                    return Err(bad(format!("its name {d:?} is not a host name")));
                }
                if !names.contains(&d) {
                    names.push(d);
                }
            }
        }
    }
    if names.is_empty() {
        return Err(bad(
            "the leaf certificate names no DNS host (subject alternative names)",
        ));
    }
    let key = rcgen::KeyPair::from_pem(key_pem).map_err(|e| {
        bad(format!(
            "the key is not a PEM private key this proxy can use: {e}"
        ))
    })?;
    if key.subject_public_key_info() != leaf.public_key().raw {
        return Err(bad("the key is not the leaf certificate's key"));
    }
    let validity = leaf.validity();
    Ok(CertInfo {
        names,
        issuer: leaf.issuer().to_string(),
        serial: leaf.raw_serial_as_string().replace(':', ""),
        not_before: time_of(validity.not_before),
        not_after: time_of(validity.not_after),
    })
}

/// Whether a certificate with `names` covers `host` (a wildcard covers one label).
pub fn covers(names: &[String], host: &str) -> bool {
    names.iter().any(|n| match n.strip_prefix("*.") {
        Some(parent) => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
        None => n == host,
    })
}

/// RFC 3339, seconds.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let c = params.self_signed(&key).unwrap();
        (c.pem(), key.serialize_pem())
    }

    #[test]
    fn a_chain_and_its_key_are_checked() {
        let (chain, key) = cert(&["hello.test", "www.hello.test"]);
        let info = inspect(&chain, &key).unwrap();
        assert_eq!(info.names, ["hello.test", "www.hello.test"]);
        assert_eq!(info.store_name().unwrap().as_str(), "hello.test");
        assert!(info.not_after > info.not_before);

        let (_, other_key) = cert(&["hello.test"]);
        let e = inspect(&chain, &other_key).unwrap_err().to_string();
        assert!(e.contains("not the leaf certificate's key"), "{e}");
        let e = inspect("junk", &key).unwrap_err().to_string();
        assert!(e.contains("no certificate"), "{e}");
        let e = inspect(&key, &key).unwrap_err().to_string();
        assert!(e.contains("only CERTIFICATE blocks"), "{e}");
        let e = inspect(&chain, "nope").unwrap_err().to_string();
        assert!(e.contains("not a PEM private key"), "{e}");
        let (bad_name, bad_key) = cert(&["{x}.test"]);
        assert!(inspect(&bad_name, &bad_key).is_err());
    }

    #[test]
    fn wildcards_cover_one_label() {
        let names = vec!["*.example.org".to_string(), "example.org".to_string()];
        assert!(covers(&names, "a.example.org"));
        assert!(covers(&names, "example.org"));
        assert!(!covers(&names, "a.b.example.org"));
        assert!(!covers(&names, "example.com"));
        let (chain, key) = cert(&["*.example.org"]);
        let info = inspect(&chain, &key).unwrap();
        assert!(info.store_name().is_err());
    }
}
