//! Unit names as the user types them, checked before anything is sent to systemd or passed to
//! `journalctl`: a name that starts with `-` or holds a `/` could otherwise be read as an option or
//! a path. A name without a unit-type suffix gets `.service`, as `systemctl` does.

use std::fmt;
use std::str::FromStr;

use crate::error::Error;

/// The unit types systemd knows; a name ending in `.<one of these>` keeps its suffix.
const SUFFIXES: &[&str] = &[
    "service",
    "socket",
    "target",
    "device",
    "mount",
    "automount",
    "swap",
    "timer",
    "path",
    "slice",
    "scope",
];

/// Longest unit name systemd accepts.
const MAX_LEN: usize = 255;

/// A valid unit name, with its type suffix (`hello0-httpd.service`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UnitName(String);

impl UnitName {
    /// Checks `name`; adds `.service` when it has no unit-type suffix.
    pub fn new(name: &str) -> Result<Self, Error> {
        let bad = |reason: &'static str| Error::BadName {
            name: name.to_string(),
            reason,
        };
        if name.is_empty() {
            return Err(bad("it is empty"));
        }
        if name.starts_with('-') || name.starts_with('.') {
            return Err(bad("it may not start with '-' or '.'"));
        }
        if let Some(c) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || ":_.\\@-".contains(*c)))
        {
            return Err(if c == '/' {
                bad("it contains '/': give the unit's name, not the path of its file")
            } else {
                bad("only ASCII letters, digits and : _ . \\ @ - may appear in a unit name")
            });
        }
        let has_suffix = name
            .rsplit_once('.')
            .is_some_and(|(stem, suffix)| !stem.is_empty() && SUFFIXES.contains(&suffix));
        let full = if has_suffix {
            name.to_string()
        } else {
            format!("{name}.service")
        };
        if full.len() > MAX_LEN {
            return Err(bad("it is longer than 255 characters"));
        }
        if full.ends_with("@.service") || full.split('.').next().is_some_and(|s| s.ends_with('@')) {
            return Err(bad(
                "it is a template (name@.type): give an instance, e.g. name@instance.service",
            ));
        }
        Ok(UnitName(full))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The unit type (`service`, `socket`, …).
    pub fn kind(&self) -> &str {
        self.0.rsplit_once('.').map_or("service", |(_, s)| s)
    }
}

impl FromStr for UnitName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        UnitName::new(s)
    }
}

impl fmt::Display for UnitName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffix_is_added_when_missing() {
        for (given, full) in [
            ("sleeper", "sleeper.service"),
            ("sleeper.service", "sleeper.service"),
            ("hello0-httpd.socket", "hello0-httpd.socket"),
            ("backup.timer", "backup.timer"),
            ("a.b", "a.b.service"),
            ("getty@tty1", "getty@tty1.service"),
            ("user@1000.service", "user@1000.service"),
            ("x\\x2d.mount", "x\\x2d.mount"),
        ] {
            let n = UnitName::new(given).unwrap();
            assert_eq!(n.as_str(), full, "{given}");
        }
        assert_eq!(UnitName::new("t.timer").unwrap().kind(), "timer");
        assert_eq!(UnitName::new("t").unwrap().kind(), "service");
    }

    #[test]
    fn bad_names_are_refused_with_a_reason() {
        for (bad, why) in [
            ("", "empty"),
            ("-x", "may not start"),
            ("--user", "may not start"),
            (".service", "may not start"),
            ("/etc/systemd/system/x.service", "'/'"),
            ("a b", "only ASCII"),
            ("é", "only ASCII"),
            ("a;b", "only ASCII"),
            ("getty@.service", "template"),
            ("getty@", "template"),
        ] {
            let e = UnitName::new(bad).unwrap_err();
            assert!(e.to_string().contains(why), "{bad:?}: {e}");
            assert!(matches!(e, Error::BadName { .. }));
        }
        assert!(UnitName::new(&"a".repeat(250)).is_err());
        assert!(UnitName::new(&"a".repeat(247)).is_ok());
    }
}
