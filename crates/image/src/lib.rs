//! Flotilla's content-addressed OCI image store.
//!
//! Layout under the store root:
//!
//! ```text
//! blobs/sha256/<hex>     every blob, its sha256 verified while it was written
//! layers/<diff-id hex>/  one directory per layer, unpacked once in overlayfs format and
//!                        shared by every image using it (an overlay lowerdir)
//! images.json            names and ids → manifest, config, layers (written atomically)
//! tmp/                   partial blobs and layers; emptied at open
//! ```
//!
//! Entry points: [`ImageStore::open`], [`ImageStore::pull`] (async, registry v2),
//! [`ImageStore::import_oci_layout`], [`ImageStore::import_oci_archive`],
//! [`ImageStore::import_docker_archive`], [`ImageStore::layer_dirs`], [`ImageStore::commit`],
//! [`ImageStore::remove`], [`ImageStore::gc`]. Everything but `pull` is blocking; call it from
//! `spawn_blocking` in async code.
//!
//! Layers are untrusted input: see [`unpack`] for the rules.

pub mod commit;
pub mod digest;
pub mod import;
pub mod manifest;
pub mod registry;
pub mod store;
mod sys;
pub mod testimage;
#[cfg(feature = "test-support")]
pub mod testregistry;
pub mod unpack;

use std::path::PathBuf;

pub use digest::{Digest, DigestError};
pub use registry::{PullOptions, PullProgress, RegistryAuth, RegistryError};
pub use store::ImageStore;
pub use store::{GcReport, Image, ImageConfig, LayerInfo, RemoveOutcome, StoreOptions};
pub use unpack::{EntryProblem, UnpackError, UnpackLimits};

/// Errors of the image store.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A filesystem operation on the store or an input failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A malformed digest or content that does not match its digest.
    #[error(transparent)]
    Digest(#[from] DigestError),
    /// A layer was refused or could not be unpacked.
    #[error("unpacking layer {layer}")]
    Unpack {
        /// The layer blob's digest.
        layer: Digest,
        /// Why.
        #[source]
        source: UnpackError,
    },
    /// The uncompressed layer does not hash to the diff_id in the image config.
    #[error("layer {layer}: uncompressed content hashes to {actual}, the config's diff_id is {expected}")]
    DiffIdMismatch {
        /// The layer blob's digest.
        layer: Digest,
        /// diff_id from the config.
        expected: Digest,
        /// Hash of the uncompressed stream.
        actual: Digest,
    },
    /// No image by that name or id.
    #[error("no image named {0:?} or with that id")]
    NotFound(String),
    /// An id prefix matching more than one image.
    #[error("image id prefix {0:?} matches several images")]
    Ambiguous(String),
    /// Removing an image a container uses.
    #[error("image {id} is in use")]
    InUse {
        /// The image id.
        id: Digest,
    },
    /// A malformed image reference.
    #[error("invalid image reference {reference:?}")]
    Reference {
        /// The reference as given.
        reference: String,
        /// The parser's complaint.
        #[source]
        source: oci_spec::distribution::ParseError,
    },
    /// Another process holds the store.
    #[error("image store {0} is locked by another process")]
    Locked(PathBuf),
    /// A manifest, index, config or archive that is not acceptable.
    #[error("invalid {what}: {detail}")]
    Invalid {
        /// Which document (digest, reference or archive member).
        what: String,
        /// What is wrong.
        detail: String,
    },
    /// JSON that does not parse.
    #[error("parsing {what}")]
    Json {
        /// Which document.
        what: String,
        /// The parser error.
        #[source]
        source: serde_json::Error,
    },
    /// A registry request failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// The error and its sources joined with `: `, for logs and CLI output.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
