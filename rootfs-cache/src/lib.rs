//! `rootfs-cache`: pull, verify, unpack and cache OCI images as overlayfs
//! lower directories, with no container engine. See README.md.
#![warn(missing_docs)]

pub mod auth;
mod error;
mod lock;
pub mod manifest;
pub mod progress;
pub mod reference;
mod store;
pub mod unpack;

pub use error::{Error, Result};
pub use manifest::ImageConfig;
pub use progress::{IndicatifProgress, NoProgress, Progress, ProgressEvent, TracingProgress};
pub use reference::{ImageRef, RegistriesConf};
pub use store::{Image, ImageInfo, Lease, PruneReport, Store, StoreOptions, DEFAULT_MAX_BYTES};
pub use unpack::{
    unpack_layer, unpack_layer_from, InProcessUnpacker, LayerUnpacker, Ownership, UnpackOptions,
    UnpackReport,
};
