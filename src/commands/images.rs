//! `compute-worker images`: the cached images.

use anyhow::Result;

use crate::cli::ImagesArgs;
use crate::host::{open_store, Starts};
use crate::units::{format_age, human};

pub fn run(args: ImagesArgs) -> Result<i32> {
    let sandbox = args.sandbox.config(None, Starts::One)?;
    let store = open_store(&args.images.store_settings(), &sandbox)?;
    let images = store.images()?;
    if args.json {
        let rows: Vec<serde_json::Value> = images
            .iter()
            .map(|i| {
                serde_json::json!({
                    "name": i.name,
                    "digest": i.manifest_digest,
                    "size": i.size,
                    "entries": i.entries,
                    "last_used": i.last_used.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
                    "in_use": i.in_use,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(0);
    }
    println!(
        "{:<50} {:<20} {:>10} {:>9}  {:<20} IN USE",
        "NAME", "DIGEST", "SIZE", "INODES", "LAST USED"
    );
    for i in images {
        let ago = i.last_used.elapsed().map(|d| d.as_secs()).unwrap_or(0);
        let digest: String = i.manifest_digest.chars().take(19).collect();
        println!(
            "{:<50} {:<20} {:>10} {:>9}  {:<20} {}",
            i.name,
            digest,
            human(i.size),
            i.entries,
            format!("{} ago", format_age(ago)),
            if i.in_use { "yes" } else { "" }
        );
    }
    Ok(0)
}
