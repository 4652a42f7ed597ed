//! Errors at the crate edge.

use std::path::PathBuf;

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the cache. Every variant says what failed
/// and, where there is one, what the user can do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The image reference could not be parsed.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference {
        /// What the caller passed.
        reference: String,
        /// Why it was refused.
        reason: String,
    },

    /// A configuration file (registries.conf, auth.json) could not be read.
    #[error("cannot use {path}: {reason}")]
    Config {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },

    /// The registry refused or failed a request.
    #[error("pulling {reference} from {registry} failed: {reason}")]
    Registry {
        /// The fully qualified reference being pulled.
        reference: String,
        /// The registry host.
        registry: String,
        /// What the registry (or the network) said.
        reason: String,
    },

    /// An unqualified name could not be pulled from any search registry.
    #[error("cannot pull {reference}: tried {}", .attempts.join("; "))]
    NoRegistryWorked {
        /// What the caller asked for.
        reference: String,
        /// One message per candidate tried.
        attempts: Vec<String>,
    },

    /// The manifest kind is not supported (for example Docker schema 1).
    #[error("{reference}: {reason}")]
    UnsupportedManifest {
        /// The reference pulled.
        reference: String,
        /// Why, with what to do.
        reason: String,
    },

    /// A manifest list/index had no entry for the wanted platform.
    #[error("{reference}: no image for platform {platform} in the manifest list (available: {available})")]
    NoMatchingPlatform {
        /// The reference pulled.
        reference: String,
        /// The wanted platform, `os/arch`.
        platform: String,
        /// Platforms the index offers.
        available: String,
    },

    /// Content did not hash to its digest; nothing was kept.
    #[error("{what}: digest mismatch, expected {expected}, got {actual}; the download was discarded (the registry or the archive is corrupt or was tampered with)")]
    DigestMismatch {
        /// What was being verified (image + blob).
        what: String,
        /// The digest the manifest promised.
        expected: String,
        /// What the bytes hashed to.
        actual: String,
    },

    /// A layer entry would write outside its layer directory, or is otherwise unsafe.
    #[error("{image}: layer {layer}: refusing entry {entry:?}: {reason}")]
    UnsafeEntry {
        /// The image (or archive) being unpacked.
        image: String,
        /// The layer digest or blob path.
        layer: String,
        /// The tar entry path.
        entry: String,
        /// Why it was refused.
        reason: String,
    },

    /// Unpacking a layer failed.
    #[error("{image}: layer {layer}: entry {entry:?}: {source}")]
    Unpack {
        /// The image (or archive) being unpacked.
        image: String,
        /// The layer digest or blob path.
        layer: String,
        /// The tar entry path (empty when the archive itself is broken).
        entry: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// A file system operation in the store failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path.
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// An archive or layout given to `import` is not usable.
    #[error("cannot import {path}: {reason}")]
    Import {
        /// The archive or directory.
        path: PathBuf,
        /// Why.
        reason: String,
    },

    /// The image is not in the store.
    #[error("image {0} is not in the store; pull or import it first")]
    NotFound(String),

    /// The image is leased by a running job.
    #[error("image {0} is in use by a running job")]
    InUse(String),
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// Attach a context message to an `io::Result`.
pub(crate) trait IoContext<T> {
    fn ctx<F: FnOnce() -> String>(self, f: F) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx<F: FnOnce() -> String>(self, f: F) -> Result<T> {
        self.map_err(|e| Error::io(f(), e))
    }
}
