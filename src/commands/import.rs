//! `compute-worker import PATH`: an OCI layout or `docker save` archive into the store.

use anyhow::Result;

use crate::cli::ImportArgs;
use crate::host::{open_store, runtime, Starts};

pub fn run(args: ImportArgs) -> Result<i32> {
    let sandbox = args.sandbox.config(None, Starts::Many)?;
    let settings = args.images.store_settings().filling(args.store.dir.clone());
    let store = open_store(&settings, &sandbox)?;
    let progress = rootfs_cache::progress::auto();
    let images = runtime()?.block_on(store.import(&args.path, args.name.as_deref(), &*progress))?;
    for image in &images {
        println!("{}", crate::units::image_line(image));
    }
    Ok(0)
}
