//! What `bench startup` found: the JSON document (`--json`) and the table
//! printed for a reader.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::runtimes::Skipped;

/// The JSON schema's name and version; a field's meaning never changes
/// under one version.
pub const SCHEMA: &str = "compute-worker/bench-startup/1";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub schema: String,
    /// What every runtime started.
    pub program: String,
    /// Rounds; each starts every runtime `parallel` times, in a random order.
    pub runs: usize,
    pub parallel: usize,
    pub host: Host,
    pub load: Load,
    /// Measured runtimes, in the order of `runtimes::KNOWN`.
    pub runtimes: Vec<Measured>,
    pub skipped: Vec<Skipped>,
    /// compute-worker's starts broken down, from their tracing spans: one
    /// entry per compute-worker runtime measured.
    pub phases: Vec<Phases>,
    /// What compute-worker left behind after every start had ended.
    pub leftovers: Leftovers,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Host {
    pub kernel: String,
    pub cpus: usize,
    pub uid: u32,
}

/// Whether the host's load moved while the rounds ran.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Load {
    /// /proc/loadavg's 1, 5 and 15 minute figures before and after.
    pub before: [f64; 3],
    pub after: [f64; 3],
    /// (p90 - p10) / median of the rounds' total times: how unlike one
    /// another the rounds were.
    pub round_spread: f64,
    /// True when the 1-minute load changed by 0.5 or more, or the rounds
    /// spread by more than half their median: read the figures with care.
    pub moved: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measured {
    pub name: String,
    pub command: Vec<String>,
    pub note: Option<String>,
    /// Wall time of each start, start to exit, in milliseconds.
    pub samples_ms: Vec<f64>,
    /// Starts that failed during the rounds (not in the samples).
    pub failures: usize,
    pub median_ms: f64,
    pub p25_ms: f64,
    pub p75_ms: f64,
    pub p99_ms: f64,
    /// median / runc's median (null without runc).
    pub ratio_of_medians: Option<f64>,
    /// The median over rounds of (this round's time / runc's in the same
    /// round): load that moves between rounds cancels out.
    pub median_round_ratio: Option<f64>,
    /// Starts per second with `parallel` of them at once.
    pub starts_per_second: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Phases {
    pub runtime: String,
    /// Starts measured with their phases recorded (after the rounds, not
    /// in them).
    pub runs: usize,
    /// Median milliseconds per phase, in the order a start goes through them.
    pub median_ms: Vec<Phase>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Phase {
    pub name: String,
    pub ms: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Leftovers {
    /// Run directories left in the benchmark's state directory.
    pub run_dirs: usize,
    /// Processes of the benchmark's compute-worker binary still alive.
    pub processes: usize,
}

fn opt(r: Option<f64>) -> String {
    r.map_or_else(|| "-".to_string(), |r| format!("{r:.2}"))
}

impl Report {
    /// The Markdown a reader sees.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "{} rounds × {} at once of `{}`, interleaved in a random order per round\n",
            self.runs, self.parallel, self.program
        );
        t.push_str("| runtime | median ms | p25 | p75 | p99 | × runc (medians) | × runc (per round) | starts/s | failed |\n");
        t.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        for m in &self.runtimes {
            let _ = writeln!(
                t,
                "| {}{} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} | {:.0} | {} |",
                m.name,
                m.note.as_ref().map_or(String::new(), |n| format!(" ({n})")),
                m.median_ms,
                m.p25_ms,
                m.p75_ms,
                m.p99_ms,
                opt(m.ratio_of_medians),
                opt(m.median_round_ratio),
                m.starts_per_second,
                m.failures,
            );
        }
        for s in &self.skipped {
            let _ = writeln!(t, "\nskipped {}: {}", s.name, s.reason);
        }
        let l = &self.load;
        let _ = writeln!(
            t,
            "\nload average {:.2} {:.2} {:.2} before, {:.2} {:.2} {:.2} after; rounds spread {:.0} % of their median{}",
            l.before[0],
            l.before[1],
            l.before[2],
            l.after[0],
            l.after[1],
            l.after[2],
            l.round_spread * 100.0,
            if l.moved {
                ": the load moved during the run, compare the per-round ratios"
            } else {
                ""
            }
        );
        for p in &self.phases {
            let _ = writeln!(
                t,
                "\n{}, where a start goes (median of {} starts):\n",
                p.runtime, p.runs
            );
            t.push_str("| phase | ms |\n|---|---:|\n");
            for ph in &p.median_ms {
                let _ = writeln!(t, "| {} | {:.2} |", ph.name, ph.ms);
            }
        }
        let lo = &self.leftovers;
        let _ = writeln!(
            t,
            "\nleft behind by compute-worker: {} run directories, {} processes",
            lo.run_dirs, lo.processes
        );
        t
    }
}
