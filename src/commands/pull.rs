//! `compute-worker pull IMAGE`: pull an image into the store.

use anyhow::Result;

use crate::cli::PullArgs;
use crate::host::{open_store, runtime, Starts};

pub fn run(args: PullArgs) -> Result<i32> {
    let sandbox = args.sandbox.config(None, Starts::Many)?;
    let settings = args.images.store_settings().filling(args.store.dir.clone());
    let store = open_store(&settings, &sandbox)?;
    let progress = rootfs_cache::progress::auto();
    let image = runtime()?.block_on(store.pull(&args.image, &*progress))?;
    println!("{}", crate::units::image_line(&image));
    Ok(0)
}
