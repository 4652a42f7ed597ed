//! `rootfs-cache`: pull, verify, unpack and cache OCI images as overlayfs
//! lower directories, with no container engine. See README.md.
#![warn(missing_docs)]

mod archive_blob;
pub mod auth;
mod bounds;
mod error;
pub mod lock;
pub mod manifest;
mod perms;
pub mod progress;
pub mod reference;
mod size;
mod size_cap;
mod store;
mod tree_digest;
pub mod unpack;

pub use bounds::{UnpackBounds, DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_IMAGE_ENTRIES};
pub use error::{is_no_space_errno, is_no_space_error, Error, Result};
pub use manifest::ImageConfig;
pub use progress::{IndicatifProgress, NoProgress, Progress, ProgressEvent, TracingProgress};
pub use reference::{ImageRef, RegistriesConf};
pub use size::human_size;
pub use store::{Image, ImageInfo, Lease, PruneReport, Store, StoreOptions, DEFAULT_MAX_BYTES};
pub use tree_digest::tree_digest;
pub use unpack::{
    unpack_layer, unpack_layer_from, InProcessUnpacker, LayerUnpacker, Ownership, UnpackOptions,
    UnpackReport,
};
