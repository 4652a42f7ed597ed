//! Lenient manifest, index and config parsing (OCI and Docker schema 2), and
//! the refusal of Docker schema 1.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::reference::validate_digest;

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker schema 2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker schema 1 (signed).
pub const DOCKER_V1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
/// Docker schema 1.
pub const DOCKER_V1: &str = "application/vnd.docker.distribution.manifest.v1+json";

/// The `Accept` list sent for manifests (schema 1 included, to refuse it clearly).
pub const ACCEPT: &[&str] = &[
    OCI_MANIFEST,
    OCI_INDEX,
    DOCKER_MANIFEST,
    DOCKER_LIST,
    DOCKER_V1_SIGNED,
    DOCKER_V1,
];

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    /// Media type.
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Size in bytes.
    #[serde(default)]
    pub size: u64,
    /// Platform (index entries only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<std::collections::BTreeMap<String, String>>,
}

/// Platform of an index entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// e.g. `amd64`.
    pub architecture: String,
    /// e.g. `linux`.
    pub os: String,
    /// e.g. `v8`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Any {
    #[serde(rename = "schemaVersion", default)]
    schema_version: Option<u64>,
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
}

/// A parsed manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Manifest {
    /// One image: config and layers (bottom-most first).
    Image {
        /// Config descriptor.
        config: Descriptor,
        /// Layer descriptors, bottom-most first.
        layers: Vec<Descriptor>,
    },
    /// A manifest list / image index.
    Index(Vec<Descriptor>),
}

fn check_digest(reference: &str, d: &Descriptor) -> Result<()> {
    if validate_digest(&d.digest) {
        Ok(())
    } else {
        Err(Error::UnsupportedManifest {
            reference: reference.to_string(),
            reason: format!(
                "descriptor digest {:?} is not sha256:<64 hex> (only sha256 is supported)",
                d.digest
            ),
        })
    }
}

/// Parse and classify manifest bytes. Refuses Docker schema 1 with a clear message.
pub fn parse_manifest(reference: &str, bytes: &[u8]) -> Result<Manifest> {
    let bad = |reason: String| Error::UnsupportedManifest {
        reference: reference.to_string(),
        reason,
    };
    let a: Any = serde_json::from_slice(bytes)
        .map_err(|e| bad(format!("the manifest is not valid JSON: {e}")))?;
    let mt = a.media_type.as_deref().unwrap_or("");
    if a.schema_version == Some(1) || mt == DOCKER_V1 || mt == DOCKER_V1_SIGNED {
        return Err(bad(
            "this is a Docker schema 1 manifest, which is deprecated and not supported; \
             push the image again with a current docker, podman or skopeo \
             (for example `skopeo copy` converts it to schema 2)"
                .into(),
        ));
    }
    if a.schema_version != Some(2) {
        return Err(bad(format!(
            "unsupported manifest schemaVersion {:?}",
            a.schema_version
        )));
    }
    if let Some(m) = a.manifests {
        if !(mt.is_empty() || mt == OCI_INDEX || mt == DOCKER_LIST) {
            return Err(bad(format!("unsupported index media type {mt}")));
        }
        for d in &m {
            check_digest(reference, d)?;
        }
        return Ok(Manifest::Index(m));
    }
    match (a.config, a.layers) {
        (Some(config), Some(layers)) => {
            if !(mt.is_empty() || mt == OCI_MANIFEST || mt == DOCKER_MANIFEST) {
                return Err(bad(format!("unsupported manifest media type {mt}")));
            }
            check_digest(reference, &config)?;
            for l in &layers {
                check_digest(reference, l)?;
                if !crate::unpack::is_supported_layer_media_type(&l.media_type) {
                    return Err(bad(format!(
                        "layer {} has media type {}, which is not a (tar, gzip or zstd) filesystem layer; \
                         this looks like an artifact, not a container image",
                        l.digest, l.media_type
                    )));
                }
            }
            Ok(Manifest::Image { config, layers })
        }
        _ => Err(bad(format!(
            "not an image manifest or index (media type {mt:?})"
        ))),
    }
}

/// The host platform in OCI terms (`linux/amd64` on x86_64).
pub fn host_platform() -> (String, String) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    };
    ("linux".to_string(), arch.to_string())
}

/// Choose the entry of an index for `os/arch` (first match; entries without
/// a platform are skipped).
pub fn choose_platform<'a>(
    reference: &str,
    entries: &'a [Descriptor],
    os: &str,
    arch: &str,
) -> Result<&'a Descriptor> {
    entries
        .iter()
        .find(|e| {
            e.platform
                .as_ref()
                .is_some_and(|p| p.os == os && p.architecture == arch)
        })
        .ok_or_else(|| Error::NoMatchingPlatform {
            reference: reference.to_string(),
            platform: format!("{os}/{arch}"),
            available: entries
                .iter()
                .filter_map(|e| e.platform.as_ref())
                .map(|p| format!("{}/{}", p.os, p.architecture))
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// The parts of the image config a runtime needs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// `KEY=value` strings.
    #[serde(rename = "Env", default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    /// Entrypoint.
    #[serde(
        rename = "Entrypoint",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub entrypoint: Option<Vec<String>>,
    /// Default command.
    #[serde(rename = "Cmd", default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// Working directory.
    #[serde(
        rename = "WorkingDir",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub working_dir: Option<String>,
    /// `user[:group]`.
    #[serde(rename = "User", default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct ConfigBlob {
    #[serde(default)]
    config: Option<ImageConfig>,
    rootfs: RootFs,
}

/// Parse a config blob: the runtime config and the layers' diff ids.
pub fn parse_config(reference: &str, bytes: &[u8]) -> Result<(ImageConfig, Vec<String>)> {
    let c: ConfigBlob = serde_json::from_slice(bytes).map_err(|e| Error::UnsupportedManifest {
        reference: reference.to_string(),
        reason: format!("the image config is not valid: {e}"),
    })?;
    for d in &c.rootfs.diff_ids {
        if !validate_digest(d) {
            return Err(Error::UnsupportedManifest {
                reference: reference.to_string(),
                reason: format!("diff id {d:?} is not sha256:<64 hex>"),
            });
        }
    }
    Ok((c.config.unwrap_or_default(), c.rootfs.diff_ids))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema1_is_refused_clearly() {
        let m = br#"{"schemaVersion":1,"name":"x","tag":"latest","fsLayers":[]}"#;
        let e = parse_manifest("r", m).unwrap_err().to_string();
        assert!(e.contains("schema 1"), "{e}");
    }

    #[test]
    fn platform_choice() {
        let d = |a: &str, h: char| Descriptor {
            media_type: OCI_MANIFEST.into(),
            digest: format!("sha256:{}", h.to_string().repeat(64)),
            size: 1,
            platform: Some(Platform {
                architecture: a.into(),
                os: "linux".into(),
                variant: None,
            }),
            annotations: None,
        };
        let v = vec![d("arm64", 'a'), d("amd64", 'b')];
        assert!(choose_platform("r", &v, "linux", "amd64")
            .unwrap()
            .digest
            .ends_with('b'));
        let e = choose_platform("r", &v, "linux", "s390x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("linux/arm64, linux/amd64"), "{e}");
    }
}
