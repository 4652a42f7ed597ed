//! `compute-worker prune`: evict least recently used images.

use anyhow::Result;

use crate::cli::PruneArgs;
use crate::host::{open_store, Starts};
use crate::units::human;

pub fn run(args: PruneArgs) -> Result<i32> {
    let sandbox = args.sandbox.config(None, Starts::Many)?;
    let store = open_store(&args.images.store_settings(), &sandbox)?;
    let target = if args.all {
        0
    } else {
        args.keep
            .or(args.images.image_cache_max)
            .unwrap_or(rootfs_cache::DEFAULT_MAX_BYTES)
    };
    let report = store.prune(target)?;
    for name in &report.removed {
        println!("removed {name}");
    }
    for name in &report.kept_in_use {
        println!("kept {name} (in use by a running job)");
    }
    println!("freed {}", human(report.freed_bytes));
    Ok(0)
}
