//! Where compute-worker's starts go: extra starts after the rounds with
//! the sandbox's phases recorded (`sandbox::phases`), one median per phase.
//! `exec --phases FILE` reports a process's phases; the in-process runtime
//! records its own.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};

use super::report::{Phase, Phases};
use super::runtimes::Runtime;
use super::stats;
use crate::sandbox::phases;

/// The phases of a start, in the order it goes through them.
const ORDER: [&str; 9] = [
    "process start and exit",
    "configuration",
    "user namespace",
    "keeper",
    "mounts",
    "libcontainer init",
    "program",
    "teardown",
    "other",
];

/// The caller's own spans; the keeper's share is inside `sandbox setup`.
const CALLER: [&str; 5] = [
    "configuration",
    "user namespace",
    "sandbox setup",
    "program",
    "teardown",
];

/// `runs` starts of `exec` (the runtime `rt`) with `--phases`.
pub fn of_exec(rt: &Runtime, dir: &Path, runs: usize) -> Result<Phases> {
    let file = dir.join("phases.json");
    let mut with_phases = rt.clone();
    with_phases
        .argv
        .splice(2..2, ["--phases".to_string(), file.display().to_string()]);
    breakdown(&rt.name, runs, || {
        let wall = with_phases
            .start_once()
            .map_err(|e| anyhow!("compute-worker exec --phases: {e}"))?;
        let text = std::fs::read(&file).context("reading exec's phases")?;
        Ok((wall, serde_json::from_slice(&text)?))
    })
}

/// `runs` starts of the in-process runtime `rt`, recorded here.
pub fn of_in_process(rt: &Runtime, runs: usize) -> Result<Phases> {
    breakdown(&rt.name, runs, || {
        phases::arm();
        let wall = rt.start_once().map_err(|e| anyhow!("{}: {e}", rt.name))?;
        let report = phases::Report {
            phases_us: phases::sums(),
            total_us: phases::micros(wall),
        };
        Ok((wall, report))
    })
}

fn breakdown(
    runtime: &str,
    runs: usize,
    mut one: impl FnMut() -> Result<(Duration, phases::Report)>,
) -> Result<Phases> {
    let mut per_phase: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for _ in 0..runs {
        let (wall, report) = one()?;
        let us = |name: &str| report.phases_us.get(name).copied().unwrap_or(0) as f64;
        let total = report.total_us as f64;
        let caller: f64 = CALLER.iter().map(|n| us(n)).sum();
        for name in ORDER {
            let v = match name {
                "process start and exit" => (wall.as_secs_f64() * 1e6 - total).max(0.0),
                "keeper" => (us("sandbox setup") - us("mounts") - us("libcontainer init")).max(0.0),
                "other" => (total - caller).max(0.0),
                n => us(n),
            };
            per_phase.entry(name).or_default().push(v / 1e3);
        }
    }
    Ok(Phases {
        runtime: runtime.to_string(),
        runs,
        median_ms: ORDER
            .iter()
            .map(|n| Phase {
                name: n.to_string(),
                ms: stats::median(per_phase.get(n).map_or(&[][..], Vec::as_slice)),
            })
            .collect(),
    })
}
