//! `compute-worker config`: the effective configuration, each value with
//! the layer it came from.

use anyhow::Result;

use crate::cli::ConfigArgs;
use crate::config::{self, Layers};
use crate::sandbox::id_mode;

pub fn run(
    command: &clap::Command,
    layers: &Layers,
    matches: &clap::ArgMatches,
    args: &ConfigArgs,
) -> Result<i32> {
    let code = config::show(command, layers, matches, args.json);
    if !args.json {
        // Which ids `serve` would map, decided as it decides.
        let setting = args.serve.sandbox.id_mode;
        match id_mode::for_current_user(setting) {
            Ok((mode, _)) => println!("id mode:     {} ({})", mode.name(), mode.describe()),
            Err(e) => println!("id mode:     none: {e}"),
        }
    }
    Ok(code)
}
