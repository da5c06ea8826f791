//! The upgrade contract: the node event that upgrades one module, the module events it runs (the
//! module's own migration and health check), the labels that tune it, and where a node keeps an
//! upgrade's state while it runs. docs/UPGRADE.md tells the sysadmin's side, docs/MODULES.md the
//! module author's.

/// The node event that upgrades one module to the image its module.env's `EVENTS_IMAGE` names
/// (data: `ID`), and the module event its migration step queues on the module's agent (data:
/// `FROM TO`, the old and the new version). Its rollback, `module.update.rollback`, puts the old
/// image, imageroot, module.env and data back.
pub const UPDATE_EVENT: &str = "module.update";

/// The module event that tells whether the module works (data: empty); optional. A failing run is
/// an unhealthy module: an upgrade whose health gate it fails is rolled back.
pub const HEALTH_EVENT: &str = "health";

/// The module's own install event, run again by an upgrade after its migration so the new version
/// configures and starts what it runs (its steps are idempotent by contract).
pub const MODULE_INIT_EVENT: &str = "module.init";

/// The label that gives the health gate's time in seconds (default [`DEFAULT_HEALTH_TIMEOUT`]).
pub const HEALTH_TIMEOUT_LABEL: &str = "org.agent-system.module.health-timeout";
/// The health gate's default time, in seconds.
pub const DEFAULT_HEALTH_TIMEOUT: u64 = 60;
/// The OCI label of an image's version; without it, an image's version is its tag.
pub const VERSION_LABEL: &str = "org.opencontainers.image.version";

/// Where a node keeps the state of each module's upgrade in progress (`<id>.json`, root's, 0600):
/// what to put back on a rollback, and how far the upgrade got.
pub const STATE_DIR: &str = "/var/lib/agent/update";
/// The directory, under the module's `/home/.agent-backup/<id>/`, that holds the upgrade's
/// snapshot of the module's data (its own `backup` dump, copied by root).
pub const SNAPSHOT_DIR: &str = "update";

/// The version of an image: its [`VERSION_LABEL`], else its reference's tag (`latest` when it has
/// none), else its digest.
pub fn version_of(reference: &str, version_label: Option<&str>) -> String {
    if let Some(v) = version_label.map(str::trim).filter(|v| !v.is_empty()) {
        return v.to_string();
    }
    let without_digest = reference.split('@').next().unwrap_or(reference);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    match last.split_once(':') {
        Some((_, tag)) if !tag.is_empty() => tag.to_string(),
        _ if reference.contains('@') => reference.rsplit('@').next().unwrap_or("").to_string(),
        _ => "latest".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(version_of("127.0.0.1:5000/m/hello:1.2.0", None), "1.2.0");
        assert_eq!(
            version_of("127.0.0.1:5000/m/hello:1.2.0", Some(" 1.2.1 ")),
            "1.2.1"
        );
        assert_eq!(version_of("127.0.0.1:5000/m/hello", None), "latest");
        assert_eq!(version_of("localhost/hello", Some("")), "latest");
        assert_eq!(version_of("r/hello@sha256:abc", None), "sha256:abc");
        assert_eq!(version_of("r/hello:2@sha256:abc", None), "2");
    }
}
