//! A unit's state as systemd reports it (`LoadState`, `ActiveState`, `SubState`, the type's
//! `Result`, `UnitFileState`), and the text `module-sdk unit status` prints. Pure formatting, so
//! it is unit-tested.

use std::fmt;

/// A snapshot of a unit's properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitStatus {
    pub unit: String,
    /// `loaded`, `not-found`, `bad-setting`, `error`, `masked`.
    pub load_state: String,
    /// `active`, `reloading`, `inactive`, `failed`, `activating`, `deactivating`.
    pub active_state: String,
    /// The type-specific state: `running`, `exited`, `dead`, `failed`, …
    pub sub_state: String,
    /// The type-specific `Result` (`success`, `exit-code`, `signal`, `timeout`, …) when the unit
    /// type has one.
    pub result: Option<String>,
    /// `enabled`, `disabled`, `static`, `masked`, … (empty for units without a file).
    pub unit_file_state: Option<String>,
    /// The unit file systemd loaded, if any.
    pub fragment_path: Option<String>,
}

impl UnitStatus {
    /// Active as `systemctl is-active` counts it (exit 0): `active` or `reloading`.
    pub fn is_active(&self) -> bool {
        matches!(self.active_state.as_str(), "active" | "reloading")
    }

    /// Whether systemd knows no such unit.
    pub fn is_not_found(&self) -> bool {
        self.load_state == "not-found"
    }

    /// `active/running`-style short form used in error messages.
    pub fn short(&self) -> String {
        format!("{}/{}", self.active_state, self.sub_state)
    }
}

/// The `status` output: one `name: value` line per property, values systemd's own words.
impl fmt::Display for UnitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "unit:   {}", self.unit)?;
        write!(f, "loaded: {}", self.load_state)?;
        if let Some(path) = self.fragment_path.as_deref().filter(|p| !p.is_empty()) {
            write!(f, " ({path}")?;
            if let Some(state) = self.unit_file_state.as_deref().filter(|s| !s.is_empty()) {
                write!(f, "; {state}")?;
            }
            write!(f, ")")?;
        }
        writeln!(f)?;
        writeln!(f, "active: {} ({})", self.active_state, self.sub_state)?;
        if let Some(r) = self.result.as_deref().filter(|r| !r.is_empty()) {
            writeln!(f, "result: {r}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(active: &str, sub: &str) -> UnitStatus {
        UnitStatus {
            unit: "sleeper.service".into(),
            load_state: "loaded".into(),
            active_state: active.into(),
            sub_state: sub.into(),
            result: Some("success".into()),
            unit_file_state: Some("enabled".into()),
            fragment_path: Some("/home/u/.config/systemd/user/sleeper.service".into()),
        }
    }

    #[test]
    fn active_means_what_systemctl_is_active_means() {
        assert!(status("active", "running").is_active());
        assert!(status("reloading", "reload").is_active());
        for s in ["inactive", "failed", "activating", "deactivating"] {
            assert!(!status(s, "dead").is_active(), "{s}");
        }
    }

    #[test]
    fn display() {
        assert_eq!(
            status("active", "running").to_string(),
            "unit:   sleeper.service\n\
             loaded: loaded (/home/u/.config/systemd/user/sleeper.service; enabled)\n\
             active: active (running)\n\
             result: success\n"
        );
        let mut s = status("failed", "failed");
        s.result = Some("exit-code".into());
        s.fragment_path = None;
        assert_eq!(
            s.to_string(),
            "unit:   sleeper.service\nloaded: loaded\nactive: failed (failed)\nresult: exit-code\n"
        );
        assert_eq!(s.short(), "failed/failed");
    }
}
