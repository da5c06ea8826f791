//! The node's signature settings: the policy its install (and upgrade) steps apply to module
//! images and the trust directory they check against, read from [`NODE_CONFIG`] so that the
//! node-agent's steps and `agentctl explain` read the same thing.
//!
//! The file holds `key = value` lines (`#` starts a comment line):
//!
//! ```text
//! policy = require
//! trust_dir = /etc/agent/trusted-keys
//! ```
//!
//! A missing file means the defaults ([`NODE_DEFAULT_POLICY`], [`crate::DEFAULT_TRUST_DIR`]);
//! a file that is there but wrong is an error, never a silent default: a typo in `policy` must
//! not turn `require` into something weaker.

use std::path::{Path, PathBuf};

use crate::{Error, Policy, DEFAULT_TRUST_DIR};

/// Where a node keeps its signature settings.
pub const NODE_CONFIG: &str = "/etc/agent/signing.conf";

/// The policy of a node without [`NODE_CONFIG`]: `warn`, while module images are not signed
/// (docs/SIGNING.md says when to switch to `require`).
pub const NODE_DEFAULT_POLICY: Policy = Policy::Warn;

/// Largest settings file read.
const MAX_CONFIG_BYTES: u64 = 64 << 10;

/// A node's signature settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSigning {
    pub policy: Policy,
    pub trust_dir: PathBuf,
    /// The file they were read from; `None` when it does not exist (the defaults).
    pub source: Option<PathBuf>,
}

impl NodeSigning {
    /// The defaults, as on a node without a settings file.
    pub fn defaults() -> NodeSigning {
        NodeSigning {
            policy: NODE_DEFAULT_POLICY,
            trust_dir: PathBuf::from(DEFAULT_TRUST_DIR),
            source: None,
        }
    }

    /// Reads the settings at `path`: the defaults when it does not exist, an error when it
    /// cannot be read or has a line that is not a known setting with a valid value.
    pub fn load(path: &Path) -> Result<NodeSigning, Error> {
        let io = |cause| Error::Io {
            path: path.to_path_buf(),
            cause,
        };
        // Absent means the defaults; a symlink is followed (configuration management often links
        // /etc files), and one that leads nowhere is an error, not the defaults.
        match std::fs::symlink_metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::defaults()),
            Err(e) => return Err(io(e)),
            Ok(_) => {}
        }
        let bytes = match std::fs::metadata(path) {
            Err(e) => return Err(io(e)),
            Ok(m) if !m.is_file() => {
                return Err(config(path, 0, "not a regular file".into()));
            }
            Ok(m) if m.len() > MAX_CONFIG_BYTES => {
                return Err(Error::TooLarge {
                    path: path.to_path_buf(),
                    limit: MAX_CONFIG_BYTES,
                })
            }
            Ok(_) => std::fs::read(path).map_err(io)?,
        };
        let text = String::from_utf8(bytes).map_err(|_| config(path, 0, "not UTF-8".into()))?;
        Self::parse(&text, path)
    }

    /// The settings in `text` (the contents of `path`, named in errors).
    pub fn parse(text: &str, path: &Path) -> Result<NodeSigning, Error> {
        let mut out = Self::defaults();
        out.source = Some(path.to_path_buf());
        let (mut policy_seen, mut trust_seen) = (false, false);
        for (n, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(config(
                    path,
                    n + 1,
                    format!("{line:?} is not `key = value`"),
                ));
            };
            let (key, value) = (key.trim(), value.trim());
            match key {
                "policy" if !policy_seen => {
                    out.policy = value
                        .parse()
                        .map_err(|e: Error| config(path, n + 1, e.to_string()))?;
                    policy_seen = true;
                }
                "trust_dir" if !trust_seen => {
                    let dir = PathBuf::from(value);
                    if !dir.is_absolute() || value.split('/').any(|c| c == "..") {
                        return Err(config(
                            path,
                            n + 1,
                            format!("trust_dir {value:?} must be an absolute path without .."),
                        ));
                    }
                    out.trust_dir = dir;
                    trust_seen = true;
                }
                "policy" | "trust_dir" => {
                    return Err(config(path, n + 1, format!("{key} is set twice")));
                }
                _ => {
                    return Err(config(
                        path,
                        n + 1,
                        format!("unknown setting {key:?} (known: policy, trust_dir)"),
                    ))
                }
            }
        }
        Ok(out)
    }

    /// Where the settings come from, in words: the file, or "defaults (no FILE)".
    pub fn origin(&self) -> String {
        match &self.source {
            Some(p) => p.display().to_string(),
            None => format!("defaults, no {NODE_CONFIG}"),
        }
    }
}

fn config(path: &Path, line: usize, reason: String) -> Error {
    Error::Config {
        path: path.to_path_buf(),
        line,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<NodeSigning, String> {
        NodeSigning::parse(text, Path::new("/etc/agent/signing.conf")).map_err(|e| e.to_string())
    }

    #[test]
    fn settings_parse() {
        let s = parse("# the node's\n\npolicy = require\ntrust_dir=/srv/keys\n").unwrap();
        assert_eq!(s.policy, Policy::Require);
        assert_eq!(s.trust_dir, PathBuf::from("/srv/keys"));
        let s = parse("policy = off\n").unwrap();
        assert_eq!(
            (s.policy, s.trust_dir),
            (Policy::Off, PathBuf::from(DEFAULT_TRUST_DIR))
        );
        assert_eq!(parse("").unwrap().policy, NODE_DEFAULT_POLICY);
    }

    #[test]
    fn a_wrong_line_is_an_error_naming_it() {
        for (text, want) in [
            ("policy = requier\n", "line 1"),
            ("\npolicy require\n", "line 2"),
            ("policy = warn\npolicy = off\n", "set twice"),
            ("polcy = require\n", "unknown setting"),
            ("trust_dir = keys\n", "absolute"),
            ("trust_dir = /etc/../tmp\n", "absolute"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(
                e.contains(want) && e.contains("/etc/agent/signing.conf"),
                "{text:?}: {e}"
            );
        }
    }

    #[test]
    fn a_missing_file_is_the_defaults_and_a_directory_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let s = NodeSigning::load(&dir.path().join("none")).unwrap();
        assert_eq!(s, NodeSigning::defaults());
        assert!(s.origin().contains("defaults"));
        assert!(NodeSigning::load(dir.path()).is_err());
        let dangling = dir.path().join("dangling.conf");
        std::os::unix::fs::symlink(dir.path().join("gone"), &dangling).unwrap();
        assert!(
            NodeSigning::load(&dangling).is_err(),
            "a dangling link is no default"
        );
        let f = dir.path().join("signing.conf");
        std::fs::write(&f, "policy = require\n").unwrap();
        let s = NodeSigning::load(&f).unwrap();
        assert_eq!(
            (s.policy, s.origin()),
            (Policy::Require, f.display().to_string())
        );
    }
}
