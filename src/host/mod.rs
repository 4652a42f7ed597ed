//! Host set-up shared by the commands: the sandbox configuration
//! ([`sandbox`]) and the image store ([`store`]), built from plain values.

pub mod sandbox;
pub mod store;

pub use sandbox::{sandbox_config, Starts};
pub use store::{default_image_dir, get_or_pull, open_store, runtime, StoreSettings};
