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
        /// Whether trying again may succeed (see [`Error::is_transient`]).
        transient: bool,
    },

    /// An unqualified name could not be pulled from any search registry.
    #[error("cannot pull {reference}: tried {}", .attempts.join("; "))]
    NoRegistryWorked {
        /// What the caller asked for.
        reference: String,
        /// One message per candidate tried.
        attempts: Vec<String>,
        /// Whether any of them failed in a way that may pass.
        transient: bool,
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

    /// The image passes the store's bound on what one image may unpack to.
    #[error("{image}: {reason}")]
    TooLarge {
        /// The image.
        image: String,
        /// Which bound, and the setting that raises it.
        reason: String,
    },

    /// The image's compressed layers, as its manifest lists them, add up
    /// to more than the store's cap ([`crate::StoreOptions::max_image_size`]);
    /// refused before any blob is fetched. Not transient: the same image
    /// stays too large.
    #[error("{image}: the image is {} compressed (the sum of its {layers} layers in the manifest), above this worker's cap of {} (max_image_size, COMPUTE_WORKER_MAX_IMAGE_SIZE); nothing was downloaded", crate::size::exact_size(*.size), crate::size::exact_size(*.cap))]
    OverSizeCap {
        /// The image.
        image: String,
        /// Sum of the compressed layer sizes in the manifest, in bytes.
        size: u64,
        /// How many layers the manifest lists.
        layers: usize,
        /// The cap, in bytes.
        cap: u64,
    },

    /// An image found in a shared (additional, read-only) store cannot be
    /// used: its records do not match its manifest, a layer fails its
    /// digest check, or its owner does not fit this process. Not transient.
    #[error("shared image store {}: {image}: {reason}; the image is refused (this worker only reads that store: its administrator repairs it, see \"Shared image stores\" in the README)", .store.display())]
    SharedStore {
        /// The shared store's directory.
        store: PathBuf,
        /// The image looked up.
        image: String,
        /// What failed.
        reason: String,
    },

    /// An archive or layout given to `import` is not usable.
    #[error("cannot import {path}: {reason}")]
    Import {
        /// The archive or directory.
        path: PathBuf,
        /// Why.
        reason: String,
    },

    /// The store's file system is full (or the user's quota is): the image
    /// did not fit.
    #[error("no space left in the image store {} for {image}: it needs about {} (its layers, unpacked), {} is free: {source}", .store.display(), crate::human_size(*.needed), crate::human_size(*.free))]
    NoSpace {
        /// The image being stored.
        image: String,
        /// The store's directory.
        store: PathBuf,
        /// Bytes the image needs, estimated from its layers' sizes.
        needed: u64,
        /// Bytes free on the store's file system when it failed.
        free: u64,
        /// What failed.
        #[source]
        source: Box<Error>,
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

    /// Whether doing the same again may succeed: the network or the
    /// registry's side failed (a refused, reset or timed-out connection,
    /// HTTP 5xx, 408 or 429, a body cut short), or the store's file system
    /// did, as opposed to an answer that will not change (unknown
    /// manifest, 401/403, a bad reference, a corrupt, unsafe or
    /// unsupported image). Decided from the typed errors of the registry
    /// client, never from messages.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Registry { transient, .. } | Error::NoRegistryWorked { transient, .. } => {
                *transient
            }
            // A full disk stays full: making room is the caller's decision
            // (see [`Error::is_no_space`]), not a reason to try again as is.
            Error::Io { .. } => !self.is_no_space(),
            _ => false,
        }
    }

    /// The operating system's error number behind this error, if any.
    pub fn os_error(&self) -> Option<i32> {
        match self {
            Error::Io { source, .. } | Error::Unpack { source, .. } => io_errno(source),
            Error::NoSpace { source, .. } => source.os_error(),
            _ => None,
        }
    }

    /// Whether the store's file system ran out of space or of quota
    /// (`ENOSPC`, `EDQUOT`): evicting unused images may let the same pull
    /// pass.
    pub fn is_no_space(&self) -> bool {
        self.os_error().is_some_and(is_no_space_errno)
    }
}

/// An I/O error with what was being done, keeping the error itself as its
/// source (its system error number included: see [`Error::os_error`]).
#[derive(Debug)]
pub(crate) struct Doing {
    what: String,
    source: std::io::Error,
}

impl Doing {
    /// `what: e`, as an I/O error of `e`'s kind.
    pub(crate) fn wrap(what: impl Into<String>, e: std::io::Error) -> std::io::Error {
        std::io::Error::new(
            e.kind(),
            Doing {
                what: what.into(),
                source: e,
            },
        )
    }
}

impl std::fmt::Display for Doing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.what, self.source)
    }
}

impl std::error::Error for Doing {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// The system error number of `e`, or of the first I/O error it wraps (the
/// tar crate wraps the error of a failed write in one of its own).
fn io_errno(e: &std::io::Error) -> Option<i32> {
    if let Some(n) = e.raw_os_error() {
        return Some(n);
    }
    let mut next: Option<&(dyn std::error::Error + 'static)> = e.get_ref().map(|r| r as _);
    while let Some(err) = next {
        if let Some(n) = err.downcast_ref::<std::io::Error>().and_then(io_errno) {
            return Some(n);
        }
        next = err.source();
    }
    None
}

/// Whether `e`, or an error it wraps, is a full file system or quota
/// (for errors of other crates: a download, an extraction).
pub fn is_no_space_error(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(err) = next {
        if let Some(n) = err.downcast_ref::<std::io::Error>().and_then(io_errno) {
            return is_no_space_errno(n);
        }
        next = err.source();
    }
    false
}

/// Whether `errno` means the file system is full (`ENOSPC`) or the user's
/// quota is (`EDQUOT`).
pub fn is_no_space_errno(errno: i32) -> bool {
    errno == libc::ENOSPC || errno == libc::EDQUOT
}

/// Whether a failed registry request may pass when made again.
pub(crate) fn oci_transient(e: &oci_client::errors::OciDistributionError) -> bool {
    use oci_client::errors::{OciDistributionError as E, OciErrorCode as C};
    match e {
        E::RequestError(re) => {
            re.is_connect()
                || re.is_timeout()
                || re.is_body()
                || re.status().is_some_and(|s| status_transient(s.as_u16()))
                || io_transient_in(re)
        }
        E::ServerError { code, .. } => status_transient(*code),
        E::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .any(|x| matches!(x.code, C::Toomanyrequests)),
        E::IoError(io) => io_kind_transient(io.kind()),
        _ => false,
    }
}

/// HTTP statuses worth a retry: 5xx, 408 (request timeout), 429 (too many
/// requests).
pub(crate) fn status_transient(code: u16) -> bool {
    (500..600).contains(&code) || code == 408 || code == 429
}

/// An I/O error of the network that may pass.
fn io_kind_transient(kind: std::io::ErrorKind) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        kind,
        K::ConnectionRefused
            | K::ConnectionReset
            | K::ConnectionAborted
            | K::NotConnected
            | K::TimedOut
            | K::BrokenPipe
            | K::UnexpectedEof
            | K::Interrupted
            | K::HostUnreachable
            | K::NetworkUnreachable
            | K::NetworkDown
    )
}

/// An I/O error of the network anywhere in `e`'s chain of sources.
fn io_transient_in(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io_kind_transient(io.kind()) {
                return true;
            }
        }
        cur = err.source();
    }
    false
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_io_kinds() {
        assert!(status_transient(503) && status_transient(429) && status_transient(408));
        assert!(!status_transient(404) && !status_transient(401) && !status_transient(403));
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(oci_transient(
            &oci_client::errors::OciDistributionError::IoError(refused)
        ));
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        assert!(!oci_transient(
            &oci_client::errors::OciDistributionError::IoError(denied)
        ));
        assert!(!oci_transient(
            &oci_client::errors::OciDistributionError::ImageManifestNotFoundError("x".into())
        ));
        assert!(oci_transient(
            &oci_client::errors::OciDistributionError::ServerError {
                code: 502,
                url: "u".into(),
                message: "bad gateway".into(),
            }
        ));
    }
}
