//! Quadlet files (`NAME.container`, `NAME.pod`, …) and the systemd units Podman's generator makes of
//! them: the one place that knows the naming rule, so that `module-sdk unit start hello.container`
//! and `module-sdk lint` agree with the generator (podman-systemd.unit(5), Podman 5.4).

use std::path::PathBuf;

/// A Quadlet file's kind: its file name's suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuadletKind {
    Container,
    Pod,
    Network,
    Volume,
    Kube,
    Image,
    Build,
}

impl QuadletKind {
    pub const ALL: [QuadletKind; 7] = [
        QuadletKind::Container,
        QuadletKind::Pod,
        QuadletKind::Network,
        QuadletKind::Volume,
        QuadletKind::Kube,
        QuadletKind::Image,
        QuadletKind::Build,
    ];

    /// The file name's suffix, without the dot.
    pub fn suffix(self) -> &'static str {
        match self {
            QuadletKind::Container => "container",
            QuadletKind::Pod => "pod",
            QuadletKind::Network => "network",
            QuadletKind::Volume => "volume",
            QuadletKind::Kube => "kube",
            QuadletKind::Image => "image",
            QuadletKind::Build => "build",
        }
    }

    /// The file's main section (`[Container]`, `[Pod]`, …).
    pub fn section(self) -> &'static str {
        match self {
            QuadletKind::Container => "Container",
            QuadletKind::Pod => "Pod",
            QuadletKind::Network => "Network",
            QuadletKind::Volume => "Volume",
            QuadletKind::Kube => "Kube",
            QuadletKind::Image => "Image",
            QuadletKind::Build => "Build",
        }
    }

    /// What the generator appends to the stem for the service's name: `.container` and `.kube`
    /// give `NAME.service`, the others `NAME-pod.service`, `NAME-network.service`, ….
    fn service_infix(self) -> &'static str {
        match self {
            QuadletKind::Container | QuadletKind::Kube => "",
            QuadletKind::Pod => "-pod",
            QuadletKind::Network => "-network",
            QuadletKind::Volume => "-volume",
            QuadletKind::Image => "-image",
            QuadletKind::Build => "-build",
        }
    }
}

/// A Quadlet file's name, split: `hello-httpd.container` → stem `hello-httpd`, kind Container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuadletName {
    pub stem: String,
    pub kind: QuadletKind,
}

impl QuadletName {
    /// The name if it ends in a Quadlet suffix after a non-empty stem; `None` otherwise (a unit
    /// name, or not a name at all: the caller validates it as a unit name then).
    pub fn parse(name: &str) -> Option<QuadletName> {
        let (stem, suffix) = name.rsplit_once('.')?;
        if stem.is_empty() {
            return None;
        }
        let kind = QuadletKind::ALL
            .into_iter()
            .find(|k| k.suffix() == suffix)?;
        Some(QuadletName {
            stem: stem.to_string(),
            kind,
        })
    }

    /// The file's name (`hello-httpd.container`).
    pub fn file_name(&self) -> String {
        format!("{}.{}", self.stem, self.kind.suffix())
    }

    /// The service the generator makes of it by default (a `.pod` with `ServiceName=` is named
    /// by that key instead: name that service then).
    pub fn service_name(&self) -> String {
        format!("{}{}.service", self.stem, self.kind.service_infix())
    }
}

/// Where rootless Quadlet files of the calling user live: `$XDG_CONFIG_HOME/containers/systemd`,
/// else `~/.config/containers/systemd` (the directory module images ship theirs in).
pub fn user_dir() -> Option<PathBuf> {
    if let Some(config) = std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(config).join("containers/systemd"));
    }
    let home = std::env::var_os("HOME").filter(|v| !v.is_empty())?;
    Some(PathBuf::from(home).join(".config/containers/systemd"))
}

/// Podman's generator, which `module-sdk lint` runs with `-dryrun`.
pub const GENERATOR: &str = "/usr/libexec/podman/quadlet";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_follow_the_generator() {
        for (file, service) in [
            ("hello-httpd.container", "hello-httpd.service"),
            ("pair.pod", "pair-pod.service"),
            ("web.network", "web-network.service"),
            ("data.volume", "data-volume.service"),
            ("app.kube", "app.service"),
            ("base.image", "base-image.service"),
            ("src.build", "src-build.service"),
            ("a.b.container", "a.b.service"),
        ] {
            let name = QuadletName::parse(file).unwrap();
            assert_eq!(name.service_name(), service, "{file}");
            assert_eq!(name.file_name(), file);
        }
    }

    #[test]
    fn other_names_are_not_quadlet_files() {
        for name in [
            "hello.service",
            "hello",
            ".container",
            "x.containers",
            "x.timer",
            "",
        ] {
            assert_eq!(QuadletName::parse(name), None, "{name}");
        }
    }
}
