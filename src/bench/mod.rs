//! `bench startup`: container start-to-exit of a trivial program in
//! compute-worker's sandbox and in every runtime on `$PATH`, interleaved
//! in a random order per round so that load falls on all of them alike.
//!
//! `program.rs` writes the program and its rootfs, `runtimes.rs` finds and
//! tries the runtimes, `breakdown.rs` reads where compute-worker's starts
//! go, `stats.rs` summarises, `report.rs` is the JSON document and the
//! table, `plot.rs` the SVG.

pub mod breakdown;
pub mod plot;
pub mod program;
pub mod report;
pub mod runtimes;
pub mod stats;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use std::os::unix::fs::DirBuilderExt;

use anyhow::{bail, Context, Result};

use crate::sandbox::SandboxConfig;
use report::{Host, Leftovers, Load, Measured, Report, SCHEMA};
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
    /// Extra starts of each compute-worker runtime that record their
    /// phases.
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

/// Run the benchmark; `progress` hears what it is doing. `library` makes
/// the sandbox configuration of the in-process runtime for a state
/// directory (a held user namespace and a fork server, as `serve` has), or
/// says why there is none.
pub fn startup(
    opts: &Options,
    library: impl FnOnce(&Path) -> Result<SandboxConfig, String>,
    mut progress: impl FnMut(&str),
) -> Result<Report> {
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

    // The in-process runtime starts sandboxes as serve's job runner does,
    // from a process with threads (through the fork server), its trial
    // start included: keep one from here on.
    let _thread = std::thread::spawn(|| loop {
        std::thread::park();
    });
    progress("trying each runtime once");
    let (runtimes, mut skipped) = runtimes::discover(
        work,
        &self_exe,
        &exec_args,
        library(&work.state),
        &opts.runtimes,
    )?;
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

    let mut phases = Vec::new();
    if opts.phase_runs > 0 {
        for rt in &runtimes {
            let breakdown = match rt.name.as_str() {
                "compute-worker" => breakdown::of_exec(rt, &work.dir, opts.phase_runs),
                runtimes::SERVE_PATH => breakdown::of_in_process(rt, opts.phase_runs),
                _ => continue,
            };
            progress(&format!(
                "{} starts of {} recording their phases",
                opts.phase_runs, rt.name
            ));
            phases.push(breakdown?);
        }
    }
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
