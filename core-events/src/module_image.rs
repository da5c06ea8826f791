//! The labels of a module image (docs/MODULES.md): what tells the node where the image's
//! imageroot is and which images its containers run. The node's install step reads them and
//! `module-sdk lint` checks them before a module is published: one spelling, one rule.

use std::collections::HashMap;
use std::path::{Component, Path};

/// Namespace of the module labels.
pub const LABEL_PREFIX: &str = "org.agent-system.module";
/// Absolute path of the imageroot tree inside the image (required).
pub const IMAGEROOT: &str = "org.agent-system.module.imageroot";
/// The images the module's containers run, separated by white space.
pub const IMAGES: &str = "org.agent-system.module.images";
/// `true` for a module that needs rootful mode (not supported yet), `false` or absent otherwise.
pub const ROOTFUL: &str = "org.agent-system.module.rootful";
/// The core version the module needs: a semantic-version requirement (`>=0.1.0`, `^0.2`);
/// `agentctl module add` refuses the module on an older core.
pub const CORE_VERSION: &str = "org.agent-system.module.core-version";
/// What the module provides to others, words separated by white space (`http-route ldap`).
pub const PROVIDES: &str = "org.agent-system.module.provides";
/// The OCI labels a published module should carry too (shown by the node's listings).
pub const TITLE: &str = "org.opencontainers.image.title";
pub const DESCRIPTION: &str = "org.opencontainers.image.description";

/// What the labels of a module image say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleLabels {
    /// Absolute path of the imageroot tree inside the image, without a trailing `/`.
    pub imageroot: String,
    /// Images the module's containers run, each once, in label order.
    pub images: Vec<String>,
}

/// Why a set of labels is not a module this node can install.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    #[error("image {image} has no label {IMAGEROOT}: not a module image (docs/MODULES.md)")]
    NotAModule { image: String },
    #[error("label {IMAGEROOT} of {image} is '{value}', not an absolute path")]
    BadImageroot { image: String, value: String },
    #[error("{image} needs rootful mode, which this node does not support yet")]
    Rootful { image: String },
    #[error("label {ROOTFUL} of {image} is '{value}' (true or false)")]
    BadRootful { image: String, value: String },
    #[error("label {IMAGES} of {image} has a bad entry '{entry}': {reason}")]
    BadImage {
        image: String,
        entry: String,
        reason: String,
    },
}

impl LabelError {
    /// The label the error is about.
    pub fn label(&self) -> &'static str {
        match self {
            LabelError::NotAModule { .. } | LabelError::BadImageroot { .. } => IMAGEROOT,
            LabelError::Rootful { .. } | LabelError::BadRootful { .. } => ROOTFUL,
            LabelError::BadImage { .. } => IMAGES,
        }
    }
}

/// Refuses what podman could take for an option, and white space (`EVENTS_IMAGE` and the entries
/// of the `images` label are handed to podman as single arguments).
pub fn check_image_ref(reference: &str) -> Result<(), String> {
    if reference.is_empty() {
        return Err("an empty image reference".into());
    }
    if reference.starts_with('-') {
        return Err(format!("'{reference}' starts with '-'"));
    }
    if reference
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!("{reference:?} contains white space"));
    }
    Ok(())
}

/// Checks the module labels of image `image` (`labels`: all its labels).
pub fn parse_labels(
    image: &str,
    labels: &HashMap<String, String>,
) -> Result<ModuleLabels, LabelError> {
    let get = |name: &str| labels.get(name).map(|v| v.trim()).unwrap_or("");
    let imageroot = get(IMAGEROOT);
    if imageroot.is_empty() {
        return Err(LabelError::NotAModule {
            image: image.to_string(),
        });
    }
    let path = Path::new(imageroot);
    if !path.is_absolute()
        || path
            .components()
            .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(LabelError::BadImageroot {
            image: image.to_string(),
            value: imageroot.to_string(),
        });
    }
    match get(ROOTFUL) {
        "" | "false" => {}
        "true" => {
            return Err(LabelError::Rootful {
                image: image.to_string(),
            })
        }
        other => {
            return Err(LabelError::BadRootful {
                image: image.to_string(),
                value: other.to_string(),
            })
        }
    }
    let mut images = Vec::new();
    for entry in get(IMAGES).split_whitespace() {
        if let Err(reason) = check_image_ref(entry) {
            return Err(LabelError::BadImage {
                image: image.to_string(),
                entry: entry.to_string(),
                reason,
            });
        }
        if !images.iter().any(|i| i == entry) {
            images.push(entry.to_string());
        }
    }
    Ok(ModuleLabels {
        imageroot: imageroot.trim_end_matches('/').to_string(),
        images,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_names_share_the_prefix() {
        for name in [IMAGEROOT, IMAGES, ROOTFUL] {
            assert!(name.starts_with(&format!("{LABEL_PREFIX}.")), "{name}");
        }
    }

    #[test]
    fn labels_are_checked() {
        let l = parse_labels(
            "r",
            &labels(&[(IMAGEROOT, "/imageroot/"), (IMAGES, " a:1  b  a:1 ")]),
        )
        .unwrap();
        assert_eq!(l.imageroot, "/imageroot");
        assert_eq!(l.images, ["a:1", "b"]);
        assert!(matches!(
            parse_labels("r", &labels(&[])),
            Err(LabelError::NotAModule { .. })
        ));
        for bad in ["imageroot", "./imageroot", "/a/../etc"] {
            let e = parse_labels("r", &labels(&[(IMAGEROOT, bad)])).unwrap_err();
            assert!(e.to_string().contains("not an absolute path"), "{e}");
            assert_eq!(e.label(), IMAGEROOT);
        }
        let e = parse_labels("r", &labels(&[(IMAGEROOT, "/i"), (ROOTFUL, "true")])).unwrap_err();
        assert!(matches!(e, LabelError::Rootful { .. }), "{e}");
        let e = parse_labels("r", &labels(&[(IMAGEROOT, "/i"), (ROOTFUL, "yes")])).unwrap_err();
        assert!(matches!(e, LabelError::BadRootful { .. }), "{e}");
        let e = parse_labels("r", &labels(&[(IMAGEROOT, "/i"), (IMAGES, "a --rm")])).unwrap_err();
        assert!(e.to_string().contains("bad entry '--rm'"), "{e}");
    }

    #[test]
    fn image_references_that_podman_could_misread_are_refused() {
        for ok in [
            "localhost/hello:latest",
            "oci-archive:/tmp/x.tar",
            "a@sha256:00",
        ] {
            check_image_ref(ok).unwrap();
        }
        for bad in ["", "-q", "a b", "a\tb", "a\nb"] {
            assert!(check_image_ref(bad).is_err(), "{bad:?}");
        }
    }
}
