//! `bench startup`: container start-to-exit of a trivial program in
//! compute-worker's sandbox and in every runtime on `$PATH`, interleaved
//! in a random order per round so that load falls on all of them alike.
//!
//! `program.rs` writes the program and its rootfs, `runtimes.rs` finds and
//! tries the runtimes, `stats.rs` summarises, `report.rs` is the JSON
//! document and the table, `plot.rs` the SVG.

pub mod plot;
pub mod program;
pub mod report;
pub mod runtimes;
pub mod stats;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use std::os::unix::fs::DirBuilderExt;

use anyhow::{bail, Context, Result};

use crate::sandbox::phases;
use report::{Host, Leftovers, Load, Measured, Phase, Phases, Report, SCHEMA};
use runtimes::{Runtime, Skipped, Workdir};

/// What to measure.
#[derive(Debug, Clone)]
pub struct Options {
    /// Rounds.
    pub runs: usize,
    /// Starts of one runtime at once in a round.
    pub parallel: usize,
    /// Only these runtimes (all found when empty).
    pub runtimes: Vec<String>,
    /// Extra `compute-worker exec` starts that record their phases.
    pub phase_runs: usize,
    /// Where the benchmark's directory goes (default: the temp directory).
    pub dir: Option<PathBuf>,
}

/// The benchmark's directory, removed when dropped.
struct Scratch(Workdir);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0.dir);
    }
}

/// Run the benchmark; `progress` hears what it is doing.
pub fn startup(opts: &Options, mut progress: impl FnMut(&str)) -> Result<Report> {
    if nix::unistd::geteuid().is_root() {
        bail!(
            "bench startup measures rootless starts: run it as the user that runs the \
             worker, not as root"
        );
    }
    if opts.runs == 0 || opts.parallel == 0 {
        bail!("--runs and --parallel must be at least 1");
    }
    let base = opts.dir.clone().unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("cw-bench-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&base)?;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let work = Scratch(Workdir {
        rootfs: dir.join("rootfs"),
        state: dir.join("state"),
        dir,
    });
    let work = &work.0;
    program::make_rootfs(&work.rootfs).context("writing the benchmark's rootfs")?;
    std::fs::create_dir_all(&work.state)?;
    let self_exe = std::env::current_exe().context("finding this binary")?;
    // Everything else (cgroup, id mode) exec takes from the environment,
    // as when the user runs it.
    let exec_args = ["--state-dir".to_string(), work.state.display().to_string()];

    progress("trying each runtime once");
    let (runtimes, mut skipped) = runtimes::discover(work, &self_exe, &exec_args, &opts.runtimes)?;
    if runtimes.is_empty() {
        bail!("no runtime to measure: {}", describe(&skipped));
    }

    let before = loadavg();
    progress(&format!(
        "{} rounds of {} at once: {}",
        opts.runs,
        opts.parallel,
        runtimes
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let rounds = measure(&runtimes, opts);
    let after = loadavg();

    let phases = if opts.phase_runs > 0 && runtimes.iter().any(|r| r.name == "compute-worker") {
        progress(&format!(
            "{} starts recording their phases",
            opts.phase_runs
        ));
        Some(phase_breakdown(&runtimes, work, opts.phase_runs)?)
    } else {
        None
    };
    let leftovers = leftovers(&work.state);

    let runc = rounds
        .iter()
        .position(|r| r.runtime.name == "runc" && !r.samples.is_empty());
    let mut measured = Vec::new();
    for r in &rounds {
        if r.samples.is_empty() {
            skipped.push(Skipped {
                name: r.runtime.name.clone(),
                reason: format!(
                    "every start failed: {}",
                    r.last_error.as_deref().unwrap_or("no error")
                ),
            });
            continue;
        }
        let s = stats::summary(&r.samples);
        let (ratio_of_medians, median_round_ratio) = match runc {
            Some(j) => {
                let base = &rounds[j];
                let per_round: Vec<f64> = r
                    .per_round
                    .iter()
                    .zip(&base.per_round)
                    .filter_map(|(a, b)| Some(a.as_ref()? / b.as_ref()?))
                    .collect();
                (
                    Some(s.median / stats::median(&base.samples)),
                    (!per_round.is_empty()).then(|| stats::median(&per_round)),
                )
            }
            None => (None, None),
        };
        measured.push(Measured {
            name: r.runtime.name.clone(),
            command: r.runtime.argv.clone(),
            note: r.runtime.note.clone(),
            failures: r.failures,
            median_ms: s.median,
            p25_ms: s.p25,
            p75_ms: s.p75,
            p99_ms: s.p99,
            ratio_of_medians,
            median_round_ratio,
            starts_per_second: r.samples.len() as f64 / r.busy.as_secs_f64(),
            samples_ms: r.samples.clone(),
        });
    }
    let totals: Vec<f64> = (0..opts.runs)
        .map(|i| rounds.iter().filter_map(|r| r.per_round[i]).sum())
        .collect();
    let sorted = stats::sorted(&totals);
    let round_spread = (stats::percentile(&sorted, 90.0) - stats::percentile(&sorted, 10.0))
        / stats::percentile(&sorted, 50.0);
    let moved = (after[0] - before[0]).abs() >= 0.5 || round_spread > 0.5;
    let order = |name: &str| runtimes::KNOWN.iter().position(|k| *k == name);
    skipped.sort_by_key(|s| order(&s.name));
    Ok(Report {
        schema: SCHEMA.into(),
        program: format!(
            "{} (static, exit_group(0), {} bytes)",
            program::PATH_IN_ROOTFS,
            program::elf()?.len()
        ),
        runs: opts.runs,
        parallel: opts.parallel,
        host: Host {
            kernel: nix::sys::utsname::uname()
                .map(|u| u.release().to_string_lossy().into_owned())
                .unwrap_or_default(),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            uid: nix::unistd::getuid().as_raw(),
        },
        load: Load {
            before,
            after,
            round_spread: if round_spread.is_finite() {
                round_spread
            } else {
                0.0
            },
            moved,
        },
        runtimes: measured,
        skipped,
        phases,
        leftovers,
    })
}

fn describe(skipped: &[Skipped]) -> String {
    skipped
        .iter()
        .map(|s| format!("{}: {}", s.name, s.reason))
        .collect::<Vec<_>>()
        .join("; ")
}

/// What the rounds gave one runtime.
struct Rounds<'a> {
    runtime: &'a Runtime,
    /// Milliseconds of every successful start.
    samples: Vec<f64>,
    /// Mean milliseconds of a start in each round (None: all failed).
    per_round: Vec<Option<f64>>,
    failures: usize,
    last_error: Option<String>,
    /// Wall time of its batches, summed.
    busy: Duration,
}

fn measure<'a>(runtimes: &'a [Runtime], opts: &Options) -> Vec<Rounds<'a>> {
    let mut rounds: Vec<Rounds> = runtimes
        .iter()
        .map(|runtime| Rounds {
            runtime,
            samples: Vec::new(),
            per_round: Vec::new(),
            failures: 0,
            last_error: None,
            busy: Duration::ZERO,
        })
        .collect();
    let mut order: Vec<usize> = (0..runtimes.len()).collect();
    for _ in 0..opts.runs {
        fastrand::shuffle(&mut order);
        for &i in &order {
            let r = &mut rounds[i];
            let began = Instant::now();
            let results: Vec<Result<Duration, String>> = if opts.parallel == 1 {
                vec![r.runtime.start_once()]
            } else {
                std::thread::scope(|s| {
                    let handles: Vec<_> = (0..opts.parallel)
                        .map(|_| s.spawn(|| r.runtime.start_once()))
                        .collect();
                    handles
                        .into_iter()
                        .map(|h| h.join().unwrap_or_else(|_| Err("panicked".into())))
                        .collect()
                })
            };
            r.busy += began.elapsed();
            let ok: Vec<f64> = results
                .into_iter()
                .filter_map(|res| match res {
                    Ok(d) => Some(d.as_secs_f64() * 1e3),
                    Err(e) => {
                        r.failures += 1;
                        r.last_error = Some(e);
                        None
                    }
                })
                .collect();
            r.per_round
                .push((!ok.is_empty()).then(|| ok.iter().sum::<f64>() / ok.len() as f64));
            r.samples.extend(ok);
        }
    }
    rounds
}

/// The phases every `compute-worker exec` start goes through, in order.
const PHASE_ORDER: [&str; 7] = [
    "configuration",
    "user namespace",
    "keeper",
    "mounts",
    "libcontainer init",
    "program",
    "teardown",
];

/// `runs` more starts of compute-worker with `--phases`: the median of
/// each phase, with the process's own start and exit (the wall time
/// outside `exec`'s code) first.
fn phase_breakdown(runtimes: &[Runtime], work: &Workdir, runs: usize) -> Result<Phases> {
    let cw = runtimes
        .iter()
        .find(|r| r.name == "compute-worker")
        .context("compute-worker is not measured")?;
    let file = work.dir.join("phases.json");
    let mut argv = cw.argv.clone();
    argv.splice(2..2, ["--phases".to_string(), file.display().to_string()]);
    let with_phases = Runtime {
        name: cw.name.clone(),
        argv,
        note: None,
    };
    let mut per_phase: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for _ in 0..runs {
        let wall = with_phases
            .start_once()
            .map_err(|e| anyhow::anyhow!("compute-worker exec --phases: {e}"))?;
        let text = std::fs::read(&file).context("reading exec's phases")?;
        let report: phases::Report = serde_json::from_slice(&text)?;
        let us = |name: &str| report.phases_us.get(name).copied().unwrap_or(0) as f64;
        let ms = |us: f64| us / 1e3;
        let setup = us("sandbox setup");
        let keeper = (setup - us("mounts") - us("libcontainer init")).max(0.0);
        let caller: f64 = [
            "configuration",
            "user namespace",
            "sandbox setup",
            "program",
            "teardown",
        ]
        .iter()
        .map(|n| us(n))
        .sum();
        let mut add = |name: &'static str, v: f64| per_phase.entry(name).or_default().push(v);
        add(
            "process start and exit",
            (wall.as_secs_f64() * 1e3 - ms(report.total_us as f64)).max(0.0),
        );
        for name in PHASE_ORDER {
            let v = match name {
                "keeper" => keeper,
                n => us(n),
            };
            add(name, ms(v));
        }
        add("other", ms((report.total_us as f64 - caller).max(0.0)));
    }
    let names = ["process start and exit"]
        .into_iter()
        .chain(PHASE_ORDER)
        .chain(["other"]);
    Ok(Phases {
        runs,
        median_ms: names
            .map(|n| Phase {
                name: n.to_string(),
                ms: stats::median(per_phase.get(n).map_or(&[][..], Vec::as_slice)),
            })
            .collect(),
    })
}

/// /proc/loadavg's three figures (zeros where unreadable).
fn loadavg() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut it = text.split_whitespace().map(|f| f.parse().unwrap_or(0.0));
    [(); 3].map(|()| it.next().unwrap_or(0.0))
}

/// Run directories left in `state`, and live processes started for it
/// (every `exec` of the benchmark, and each keeper cloned from one, names
/// `state` on its command line).
fn leftovers(state: &Path) -> Leftovers {
    let run_dirs = std::fs::read_dir(state.join("runs")).map_or(0, |d| d.count());
    let me = std::process::id().to_string();
    let needle = state.as_os_str().as_encoded_bytes();
    let processes = std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    let name = e.file_name();
                    let name = name.to_string_lossy();
                    name.bytes().all(|b| b.is_ascii_digit())
                        && name != me
                        && std::fs::read(e.path().join("cmdline"))
                            .is_ok_and(|c| c.windows(needle.len()).any(|w| w == needle))
                })
                .count()
        })
        .unwrap_or(0);
    Leftovers {
        run_dirs,
        processes,
    }
}
