//! Histograms of what each program used and of each job stage's time.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

/// What one program run used, as plain values (the job layer fills it).
#[derive(Debug, Clone, PartialEq)]
pub struct RunUsage {
    /// `program` or `ingestion`.
    pub program: &'static str,
    pub wall_seconds: f64,
    pub cpu_user_seconds: f64,
    pub cpu_system_seconds: f64,
    pub peak_memory_bytes: Option<u64>,
    pub peak_processes: Option<u64>,
    pub written_bytes: Option<u64>,
    pub oom_killed: bool,
    /// Each GPU it was given: (peak memory in bytes, mean utilisation in %).
    pub gpus: Vec<(u64, f64)>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProgramLabels {
    program: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CpuLabels {
    program: &'static str,
    /// `user` or `system`.
    mode: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    stage: &'static str,
}

type Hist<L> = Family<L, Histogram, fn() -> Histogram>;

fn seconds() -> Histogram {
    super::phase_histogram()
}
/// 1 MiB to 256 GiB, ×4 per bucket.
fn bytes() -> Histogram {
    Histogram::new(exponential_buckets(1048576.0, 4.0, 10))
}
/// 1 to 8192 processes, ×2 per bucket.
fn count() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 14))
}
/// 0 to 100 %, by tenths.
fn percent() -> Histogram {
    Histogram::new((1..=10).map(|i| f64::from(i) * 10.0))
}
/// 0.01 s to about 45 hours, ×4 per bucket.
fn stage_seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 4.0, 12))
}

pub(super) struct ResourceMetrics {
    wall: Hist<ProgramLabels>,
    cpu: Hist<CpuLabels>,
    memory: Hist<ProgramLabels>,
    processes: Hist<ProgramLabels>,
    written: Hist<ProgramLabels>,
    oom_kills: Family<ProgramLabels, Counter>,
    gpu_memory: Hist<ProgramLabels>,
    gpu_utilisation: Hist<ProgramLabels>,
    stages: Hist<StageLabels>,
}

impl ResourceMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let m = ResourceMetrics {
            wall: Family::new_with_constructor(seconds),
            cpu: Family::new_with_constructor(seconds),
            memory: Family::new_with_constructor(bytes),
            processes: Family::new_with_constructor(count),
            written: Family::new_with_constructor(bytes),
            oom_kills: Family::default(),
            gpu_memory: Family::new_with_constructor(bytes),
            gpu_utilisation: Family::new_with_constructor(percent),
            stages: Family::new_with_constructor(stage_seconds),
        };
        registry.register_with_unit(
            "program_wall",
            "Wall time of each program run, by program (program, ingestion)",
            Unit::Seconds,
            m.wall.clone(),
        );
        registry.register_with_unit(
            "program_cpu",
            "CPU time of each program run, by program and mode (user, system)",
            Unit::Seconds,
            m.cpu.clone(),
        );
        registry.register_with_unit(
            "program_peak_memory",
            "Peak memory of each program run (its cgroup's peak; without one, its largest process)",
            Unit::Bytes,
            m.memory.clone(),
        );
        registry.register(
            "program_peak_processes",
            "Peak number of processes of each program run (when a cgroup pids controller counts them)",
            m.processes.clone(),
        );
        registry.register_with_unit(
            "program_written",
            "Bytes each program run added to the disk (its image layer and writable directories)",
            Unit::Bytes,
            m.written.clone(),
        );
        registry.register(
            "program_oom_kills",
            "Program runs the OOM killer acted in",
            m.oom_kills.clone(),
        );
        registry.register_with_unit(
            "program_gpu_peak_memory",
            "Peak memory used on each GPU a program run was given (NVML)",
            Unit::Bytes,
            m.gpu_memory.clone(),
        );
        registry.register(
            "program_gpu_utilisation_percent",
            "Mean utilisation of each GPU a program run was given, in percent (NVML)",
            m.gpu_utilisation.clone(),
        );
        registry.register_with_unit(
            "job_stage",
            "Time per job stage: received, bundles_downloaded, image_ready, sandbox_up, \
             program_done, outputs_uploaded, final_status, cleanup",
            Unit::Seconds,
            m.stages.clone(),
        );
        m
    }

    pub(super) fn run(&self, u: &RunUsage) {
        let program = ProgramLabels { program: u.program };
        self.wall.get_or_create(&program).observe(u.wall_seconds);
        for (mode, s) in [
            ("user", u.cpu_user_seconds),
            ("system", u.cpu_system_seconds),
        ] {
            let labels = CpuLabels {
                program: u.program,
                mode,
            };
            self.cpu.get_or_create(&labels).observe(s);
        }
        if let Some(b) = u.peak_memory_bytes {
            self.memory.get_or_create(&program).observe(b as f64);
        }
        if let Some(n) = u.peak_processes {
            self.processes.get_or_create(&program).observe(n as f64);
        }
        if let Some(b) = u.written_bytes {
            self.written.get_or_create(&program).observe(b as f64);
        }
        if u.oom_killed {
            self.oom_kills.get_or_create(&program).inc();
        }
        for &(peak, utilisation) in &u.gpus {
            self.gpu_memory.get_or_create(&program).observe(peak as f64);
            self.gpu_utilisation
                .get_or_create(&program)
                .observe(utilisation);
        }
    }

    pub(super) fn stage(&self, stage: &'static str, seconds: f64) {
        self.stages
            .get_or_create(&StageLabels { stage })
            .observe(seconds);
    }
}

#[cfg(test)]
mod tests {
    use super::RunUsage;
    use crate::metrics::Metrics;

    #[test]
    fn gpu_figures_go_in_histograms_of_their_own() {
        let m = Metrics::default();
        m.run_usage(&RunUsage {
            program: "program",
            wall_seconds: 1.5,
            cpu_user_seconds: 0.1,
            cpu_system_seconds: 0.1,
            peak_memory_bytes: None,
            peak_processes: None,
            written_bytes: None,
            oom_killed: false,
            gpus: vec![(2345 << 20, 56.0)],
        });
        let text = m.encode();
        for line in [
            r#"compute_worker_program_gpu_peak_memory_bytes_sum{program="program"} 2458910720"#,
            r#"compute_worker_program_gpu_peak_memory_bytes_count{program="program"} 1"#,
            r#"compute_worker_program_gpu_utilisation_percent_sum{program="program"} 56"#,
            r#"compute_worker_program_gpu_utilisation_percent_bucket{le="60.0",program="program"} 1"#,
        ] {
            assert!(text.contains(line), "{line} not in:\n{text}");
        }
    }
}
