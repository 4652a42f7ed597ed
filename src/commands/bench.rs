//! `compute-worker bench startup`: the startup benchmark (`crate::bench`)
//! for the terminal, JSON and SVG. Nothing imports this module.

use std::path::Path;

use anyhow::{Context, Result};

use crate::bench::{self, plot, Options};
use crate::cli::{BenchArgs, BenchWhat};

pub fn run(args: BenchArgs) -> Result<i32> {
    let BenchWhat::Startup(a) = args.what;
    let opts = Options {
        runs: a.runs,
        parallel: a.parallel,
        runtimes: a.runtimes,
        phase_runs: a.phase_runs,
        dir: a.dir,
    };
    // The in-process runtime: the sandbox as serve's job runner has it.
    let library = |state: &Path| {
        crate::host::sandbox_config(
            Some(state.to_path_buf()),
            None,
            Default::default(),
            None,
            crate::host::Starts::Many,
        )
        .map_err(|e| format!("{e:#}"))
    };
    let report = bench::startup(&opts, library, |what| eprintln!("bench startup: {what}"))?;
    let json_to_stdout = a.json.as_deref() == Some(Path::new("-"));
    match &a.json {
        Some(_) if json_to_stdout => println!("{}", serde_json::to_string_pretty(&report)?),
        Some(file) => std::fs::write(file, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", file.display()))?,
        None => {}
    }
    if let Some(file) = &a.svg {
        plot::svg(&report, file)?;
    }
    if !json_to_stdout {
        print!("{}", report.table());
    }
    Ok(0)
}
