//! Manifests and indexes (OCI and Docker schema 2), parsed strictly enough to refuse type
//! confusion: a document's type comes from its `mediaType` (or the transport's content type when
//! the document has none), the two must agree, and a document holding both `layers` and
//! `manifests` is refused.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::digest::Digest;
use crate::ImageError;

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI uncompressed layer.
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// OCI gzip layer.
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// OCI zstd layer.
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// Docker schema 2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker gzip layer.
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// The `Accept` header for manifest requests. Debian's docker-registry answers 404 to a manifest
/// GET whose Accept lacks the OCI types, even when it accepts the Docker ones (platform.md §5.3).
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.docker.distribution.manifest.list.v2+json";

/// Largest manifest or index accepted.
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;
/// Largest image config accepted.
pub const MAX_CONFIG_BYTES: usize = 16 << 20;

/// A content descriptor.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the referenced content.
    pub media_type: String,
    /// Digest (validated when parsed).
    pub digest: Digest,
    /// Size in bytes.
    pub size: u64,
    /// Platform, in indexes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A platform in an index entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Platform {
    /// e.g. `amd64`.
    pub architecture: String,
    /// e.g. `linux`.
    pub os: String,
    /// e.g. `v8`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// An image manifest (OCI or Docker schema 2).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always 2.
    pub schema_version: u32,
    /// Media type, if the document states it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The image config.
    pub config: Descriptor,
    /// Layers, base first.
    pub layers: Vec<Descriptor>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An image index or Docker manifest list.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// Always 2.
    pub schema_version: u32,
    /// Media type, if the document states it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// Entries.
    pub manifests: Vec<Descriptor>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A parsed manifest-or-index document.
#[derive(Debug, Clone)]
pub enum Document {
    /// An image manifest.
    Manifest(Manifest),
    /// An index of manifests.
    Index(Index),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    #[serde(default)]
    schema_version: Option<u32>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    layers: Option<serde_json::Value>,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
    #[serde(default)]
    config: Option<serde_json::Value>,
}

fn invalid(what: &str, detail: impl Into<String>) -> ImageError {
    ImageError::Invalid {
        what: what.to_owned(),
        detail: detail.into(),
    }
}

/// Whether `media_type` names a manifest (`Some(false)`), an index (`Some(true)`), or neither.
fn is_index_type(media_type: &str) -> Option<bool> {
    match media_type {
        OCI_MANIFEST | DOCKER_MANIFEST => Some(false),
        OCI_INDEX | DOCKER_LIST => Some(true),
        _ => None,
    }
}

/// Parses a manifest or index. `content_type` is the transport's type (HTTP Content-Type, or
/// the media type of the descriptor that pointed here), if any. `what` names the document in
/// errors (its digest or reference).
pub fn parse_document(
    bytes: &[u8],
    content_type: Option<&str>,
    what: &str,
) -> Result<Document, ImageError> {
    if bytes.len() > MAX_MANIFEST_BYTES {
        return Err(invalid(
            what,
            format!("{} bytes exceeds the manifest cap", bytes.len()),
        ));
    }
    let probe: Probe = serde_json::from_slice(bytes).map_err(|source| ImageError::Json {
        what: what.to_owned(),
        source,
    })?;
    if probe.schema_version != Some(2) {
        return Err(invalid(
            what,
            format!(
                "schemaVersion {:?} is not 2 (schema 1 is not supported)",
                probe.schema_version
            ),
        ));
    }
    if probe.layers.is_some() && probe.manifests.is_some() {
        return Err(invalid(what, "document has both layers and manifests"));
    }
    let content_type = content_type
        .map(|c| c.split(';').next().unwrap_or("").trim())
        .filter(|c| is_index_type(c).is_some());
    let declared = probe.media_type.as_deref();
    let kind = match (declared, content_type) {
        (Some(d), Some(c)) if is_index_type(d) != is_index_type(c) => {
            return Err(invalid(
                what,
                format!("mediaType {d} disagrees with content type {c}"),
            ));
        }
        (Some(d), _) => {
            is_index_type(d).ok_or_else(|| invalid(what, format!("unsupported mediaType {d}")))?
        }
        (None, Some(c)) => is_index_type(c).expect("filtered"),
        // No stated type: allowed for OCI documents when the shape is unambiguous.
        (None, None) => match (
            probe.manifests.is_some(),
            probe.layers.is_some() || probe.config.is_some(),
        ) {
            (true, false) => true,
            (false, true) => false,
            _ => return Err(invalid(what, "no mediaType and an ambiguous shape")),
        },
    };
    if kind {
        let idx: Index = serde_json::from_slice(bytes).map_err(|source| ImageError::Json {
            what: what.to_owned(),
            source,
        })?;
        Ok(Document::Index(idx))
    } else {
        let m: Manifest = serde_json::from_slice(bytes).map_err(|source| ImageError::Json {
            what: what.to_owned(),
            source,
        })?;
        if !matches!(m.config.media_type.as_str(), OCI_CONFIG | DOCKER_CONFIG) {
            return Err(invalid(
                what,
                format!(
                    "config media type {} is not an image config",
                    m.config.media_type
                ),
            ));
        }
        for l in &m.layers {
            if layer_media_type_supported(&l.media_type).is_none() {
                return Err(invalid(
                    what,
                    format!(
                        "layer {} has unsupported media type {}",
                        l.digest, l.media_type
                    ),
                ));
            }
        }
        Ok(Document::Manifest(m))
    }
}

/// `Some(())` for layer media types this store unpacks (compression is detected from the
/// bytes anyway).
pub fn layer_media_type_supported(media_type: &str) -> Option<()> {
    match media_type {
        OCI_LAYER_TAR
        | OCI_LAYER_GZIP
        | OCI_LAYER_ZSTD
        | DOCKER_LAYER_GZIP
        | "application/vnd.oci.image.layer.nondistributable.v1.tar"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Some(()),
        _ => None,
    }
}

/// Picks the entry for `os`/`architecture` from an index.
pub fn select_platform<'a>(
    index: &'a Index,
    os: &str,
    architecture: &str,
    what: &str,
) -> Result<&'a Descriptor, ImageError> {
    index
        .manifests
        .iter()
        .find(|d| {
            is_index_type(&d.media_type) == Some(false)
                && d.platform
                    .as_ref()
                    .is_some_and(|p| p.os == os && p.architecture == architecture)
        })
        .ok_or_else(|| {
            invalid(
                what,
                format!("no manifest for {os}/{architecture} in the index"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(mt: &str) -> String {
        format!(
            r#"{{"mediaType":"{mt}","digest":"sha256:{}","size":1}}"#,
            "a".repeat(64)
        )
    }

    #[test]
    fn type_confusion_is_refused() {
        let both = format!(
            r#"{{"schemaVersion":2,"config":{},"layers":[],"manifests":[]}}"#,
            d(OCI_CONFIG)
        );
        assert!(parse_document(both.as_bytes(), None, "x").is_err());
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{},"layers":[]}}"#,
            d(OCI_CONFIG)
        );
        assert!(parse_document(m.as_bytes(), Some(OCI_INDEX), "x").is_err());
        assert!(matches!(
            parse_document(m.as_bytes(), Some(OCI_MANIFEST), "x"),
            Ok(Document::Manifest(_))
        ));
        let untyped = format!(
            r#"{{"schemaVersion":2,"config":{},"layers":[{}]}}"#,
            d(OCI_CONFIG),
            d(OCI_LAYER_GZIP)
        );
        assert!(matches!(
            parse_document(untyped.as_bytes(), None, "x"),
            Ok(Document::Manifest(_))
        ));
        let bad_digest = r#"{"schemaVersion":2,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:../../x","size":1},"layers":[]}"#;
        let e = parse_document(bad_digest.as_bytes(), None, "x").unwrap_err();
        assert!(
            crate::error_chain(&e).contains("malformed digest"),
            "{}",
            crate::error_chain(&e)
        );
    }
}
