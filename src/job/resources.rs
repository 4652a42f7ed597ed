//! Each program's resource report: what its sandbox measured
//! ([`Usage`]), said for people (the end of the step's log, which the
//! site receives; `run`'s summary) and for machines (`serve`'s JSON log
//! line, the metrics).

use std::io::Write;
use std::path::Path;

use serde::Serialize;

use super::command::ProgramKind;
use super::drive::Ended;
use super::spec::kind_name;
use super::step::Step;
use crate::gpu::usage::{GpuFigures, GpuUsage};
use crate::metrics::{Metrics, RunUsage};
use crate::sandbox::{Outcome, PidsPeak, Usage, UsageSource};
use crate::units::human as format_bytes;

/// One program's resources, as the job reports them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResourceReport {
    /// `submission`, `scoring program`, `ingestion program`.
    pub program: &'static str,
    /// How it ended: `exit code 0`, `out of memory (limit 64 MiB)`, ...
    pub ended: String,
    /// `cgroup v2`, `cgroup v1` or `getrusage`.
    pub source: &'static str,
    pub wall_seconds: f64,
    pub cpu_user_seconds: f64,
    pub cpu_system_seconds: f64,
    /// Of the whole run (cgroup), or of its largest process (getrusage).
    pub peak_memory_bytes: Option<u64>,
    /// `None`: not watched (no cgroup).
    pub oom_killed: Option<bool>,
    pub peak_processes: Option<u64>,
    /// The peak of processes was sampled (cgroup v1 has no peak counter).
    pub processes_sampled: bool,
    /// Its upper layer and writable directories (the output among them).
    pub written_bytes: Option<u64>,
    /// The GPUs it was given: peak memory and mean utilisation (NVML).
    pub gpus: Vec<GpuFigures>,
    /// Why some (or all) of its GPUs have no figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpus_unavailable: Option<String>,
}

impl ResourceReport {
    pub fn new(
        kind: ProgramKind,
        is_scoring: bool,
        outcome: Outcome,
        usage: &Usage,
        memory_limit: Option<u64>,
    ) -> Self {
        let cgroup = usage.source != UsageSource::Getrusage;
        ResourceReport {
            program: kind_name(kind, is_scoring),
            ended: ended(outcome, memory_limit),
            source: usage.source.as_str(),
            wall_seconds: usage.wall.as_secs_f64(),
            cpu_user_seconds: usage.cpu_user.as_secs_f64(),
            cpu_system_seconds: usage.cpu_system.as_secs_f64(),
            peak_memory_bytes: usage.peak_memory,
            oom_killed: (cgroup || outcome == Outcome::OomKilled)
                .then_some(usage.oom_kills > 0 || outcome == Outcome::OomKilled),
            peak_processes: usage.peak_pids.map(PidsPeak::value),
            processes_sampled: matches!(usage.peak_pids, Some(PidsPeak::Sampled(_))),
            written_bytes: usage.written,
            gpus: Vec::new(),
            gpus_unavailable: None,
        }
    }

    /// With what the GPU sampler found, when it had GPUs.
    pub fn with_gpus(mut self, gpus: Option<&GpuUsage>) -> Self {
        if let Some(g) = gpus {
            self.gpus = g.figures.clone();
            self.gpus_unavailable = g.unavailable.clone();
        }
        self
    }

    /// For the metrics, by program kind.
    fn run_usage(&self, kind: ProgramKind) -> RunUsage {
        RunUsage {
            program: match kind {
                ProgramKind::Program => "program",
                ProgramKind::Ingestion => "ingestion",
            },
            wall_seconds: self.wall_seconds,
            cpu_user_seconds: self.cpu_user_seconds,
            cpu_system_seconds: self.cpu_system_seconds,
            peak_memory_bytes: self.peak_memory_bytes,
            peak_processes: self.peak_processes,
            written_bytes: self.written_bytes,
            oom_killed: self.oom_killed == Some(true),
            gpus: self
                .gpus
                .iter()
                .map(|g| (g.peak_memory_bytes, g.mean_utilisation_percent))
                .collect(),
        }
    }
}

/// How a run ended, in words: an OOM kill names the limit (never `exit
/// 137`).
pub fn ended(outcome: Outcome, memory_limit: Option<u64>) -> String {
    match outcome {
        Outcome::Exited(c) => format!("exit code {c}"),
        Outcome::Signaled(s) => format!("killed by signal {s}"),
        Outcome::OomKilled => match memory_limit {
            Some(m) => format!("out of memory (limit {} MiB)", m >> 20),
            None => "out of memory".to_string(),
        },
        Outcome::TimedOut => "time limit exceeded".to_string(),
        Outcome::Killed => "killed on request".to_string(),
        Outcome::WriteLimitExceeded => "write limit exceeded".to_string(),
    }
}

impl std::fmt::Display for ResourceReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "resources of the {} ({}): {}; wall {:.2} s; CPU {:.2} s user, {:.2} s system",
            self.program,
            self.source,
            self.ended,
            self.wall_seconds,
            self.cpu_user_seconds,
            self.cpu_system_seconds
        )?;
        match (self.peak_memory_bytes, self.source) {
            (None, _) => write!(f, "; peak memory unknown")?,
            (Some(b), "getrusage") => {
                write!(f, "; peak memory {} (its largest process)", format_bytes(b))?
            }
            (Some(b), _) => write!(f, "; peak memory {}", format_bytes(b))?,
        }
        match self.oom_killed {
            Some(true) => write!(f, "; the OOM killer acted")?,
            Some(false) => write!(f, "; no OOM kill")?,
            None => {}
        }
        match (self.peak_processes, self.processes_sampled) {
            (None, _) => write!(
                f,
                "; peak processes not counted (no cgroup pids controller)"
            )?,
            (Some(n), false) => write!(f, "; peak {n} processes")?,
            (Some(n), true) => write!(
                f,
                "; peak {n} processes (sampled every {} ms: cgroup v1 keeps no peak)",
                crate::sandbox::usage::PIDS_SAMPLE_EVERY.as_millis()
            )?,
        }
        if let Some(w) = self.written_bytes {
            write!(f, "; wrote {}", format_bytes(w))?;
        }
        for g in &self.gpus {
            write!(
                f,
                "; GPU {}: peak memory {}, utilisation {:.0} %",
                g.uuid,
                format_bytes(g.peak_memory_bytes),
                g.mean_utilisation_percent
            )?;
        }
        if let Some(why) = &self.gpus_unavailable {
            write!(f, "; GPU figures unavailable: {why}")?;
        }
        Ok(())
    }
}

/// The reports of the programs that ran: each appended to its stderr log
/// under `root/logs` (uploaded after this) and counted in the metrics.
/// (Not sent to the live log: its program channels carry the program's
/// own output only.)
pub fn report(
    step: &Step,
    ended: &[Ended],
    memory_limit: Option<u64>,
    gpus: Option<&GpuUsage>,
    root: &Path,
    metrics: &Metrics,
) -> Vec<ResourceReport> {
    let mut reports = Vec::new();
    for e in ended {
        let (Some(outcome), Some(usage)) = (e.outcome, &e.usage) else {
            continue;
        };
        let rep = ResourceReport::new(e.kind, step.is_scoring, outcome, usage, memory_limit)
            .with_gpus(gpus);
        let line = format!("[compute-worker] {rep}\n");
        let log = root.join("logs").join(match e.kind {
            ProgramKind::Program => "stderr",
            ProgramKind::Ingestion => "ingestion_stderr",
        });
        let appended = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&log)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = appended {
            tracing::warn!(error = %e, log = %log.display(), "could not add the resource report");
        }
        metrics.run_usage(&rep.run_usage(e.kind));
        reports.push(rep);
    }
    reports
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn an_oom_kill_names_the_limit_not_an_exit_code() {
        let usage = Usage {
            source: UsageSource::CgroupV1,
            wall: Duration::from_millis(1500),
            peak_memory: Some(64 << 20),
            oom_kills: 1,
            peak_pids: Some(PidsPeak::Sampled(3)),
            written: Some(4096),
            ..Usage::default()
        };
        let rep = ResourceReport::new(
            ProgramKind::Program,
            false,
            Outcome::OomKilled,
            &usage,
            Some(64 << 20),
        );
        let text = rep.to_string();
        assert!(text.contains("out of memory (limit 64 MiB)"), "{text}");
        assert!(!text.contains("137"), "{text}");
        assert!(text.contains("the OOM killer acted"), "{text}");
        assert!(text.contains("(cgroup v1)"), "{text}");
        assert!(text.contains("peak 3 processes (sampled"), "{text}");
    }

    #[test]
    fn getrusage_says_what_it_cannot_tell() {
        let usage = Usage {
            peak_memory: Some(10 << 20),
            ..Usage::default()
        };
        let rep = ResourceReport::new(
            ProgramKind::Ingestion,
            true,
            Outcome::Exited(0),
            &usage,
            None,
        );
        let text = rep.to_string();
        assert!(
            text.contains("ingestion program (getrusage): exit code 0"),
            "{text}"
        );
        assert!(text.contains("(its largest process)"), "{text}");
        assert!(text.contains("not counted"), "{text}");
        assert!(!text.contains("OOM"), "{text}");
        assert!(!text.contains("GPU"), "{text}");
    }

    #[test]
    fn gpu_figures_end_the_line_or_say_why_there_are_none() {
        let usage = Usage::default();
        let gpus = GpuUsage {
            figures: vec![GpuFigures {
                uuid: "GPU-aaaa".into(),
                peak_memory_bytes: 3 << 29,
                mean_utilisation_percent: 55.6,
            }],
            unavailable: Some("GPU-bbbb: Not Found".into()),
        };
        let rep = ResourceReport::new(
            ProgramKind::Program,
            false,
            Outcome::Exited(0),
            &usage,
            None,
        )
        .with_gpus(Some(&gpus));
        let text = rep.to_string();
        assert!(
            text.ends_with(
                "; GPU GPU-aaaa: peak memory 1.5 GiB, utilisation 56 %; \
                 GPU figures unavailable: GPU-bbbb: Not Found"
            ),
            "{text}"
        );
        let json = serde_json::to_value(&rep).unwrap();
        assert_eq!(json["gpus"][0]["peak_memory_bytes"], 3u64 << 29);
        assert_eq!(json["gpus"][0]["mean_utilisation_percent"], 55.6);
        assert_eq!(json["gpus_unavailable"], "GPU-bbbb: Not Found");
    }
}
