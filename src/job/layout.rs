//! Where things go inside the sandbox: the `/app/...` mount table, the
//! container environment and the time limits.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::command::ProgramKind;
use super::step::Protocol;

/// Working directory of every program.
pub const WORKDIR: &str = "/app/program";

/// One bind mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub source: PathBuf,
    pub destination: &'static str,
    pub read_only: bool,
}

/// Inputs to [`mounts`].
#[derive(Debug, Clone)]
pub struct MountPlan<'a> {
    /// The job's root directory (`program/`, `output/`, `input/`, ...).
    pub root: &'a Path,
    /// Organiser data mounted read-only at `/app/data`, if present.
    pub data_dir: Option<&'a Path>,
    pub is_scoring: bool,
    pub ingestion_only_during_scoring: bool,
    /// Whether an `input_data` bundle was given.
    pub has_input_data: bool,
    pub protocol: Protocol,
}

/// The directory of the job's root that holds `kind`'s program: for
/// [`ProgramKind::Program`], the submission or scoring program (legacy) or
/// the scoring program (current).
pub fn program_dir(kind: ProgramKind, protocol: Protocol) -> &'static str {
    match (kind, protocol) {
        (ProgramKind::Ingestion, _) => "ingestion_program",
        (ProgramKind::Program, Protocol::Legacy) => "program",
        (ProgramKind::Program, Protocol::Current) => "scoring_program",
    }
}

/// The mount table of the Python worker for one program container:
/// codabench-protocol.md §3.7 (legacy), codabench-protocol-v127.md §5.2
/// (current).
pub fn mounts(kind: ProgramKind, plan: &MountPlan<'_>) -> Vec<Mount> {
    let r = plan.root;
    let rw = |source: PathBuf, destination| Mount {
        source,
        destination,
        read_only: false,
    };
    let mut m = vec![
        rw(r.join(program_dir(kind, plan.protocol)), "/app/program"),
        rw(r.join("output"), "/app/output"),
    ];
    if let Some(data) = plan.data_dir {
        m.push(Mount {
            source: data.to_path_buf(),
            destination: "/app/data",
            read_only: true,
        });
    }
    match plan.protocol {
        Protocol::Legacy => {
            if kind == ProgramKind::Ingestion {
                let ingested = if plan.ingestion_only_during_scoring && plan.is_scoring {
                    r.join("input/res")
                } else {
                    r.join("program")
                };
                m.push(rw(ingested, "/app/ingested_program"));
            }
            if plan.is_scoring {
                m.push(rw(r.join("shared"), "/app/shared"));
                m.push(rw(r.join("input"), "/app/input"));
            }
            if plan.has_input_data {
                m.push(rw(r.join("input_data"), "/app/input_data"));
            }
        }
        Protocol::Current => {
            // The submission, in every program, never writable.
            m.push(Mount {
                source: r.join("submission"),
                destination: "/app/ingested_program",
                read_only: true,
            });
            match kind {
                ProgramKind::Ingestion if plan.has_input_data => {
                    m.push(rw(r.join("input_data"), "/app/input_data"));
                }
                ProgramKind::Ingestion => {}
                ProgramKind::Program => {
                    m.push(rw(r.join("shared"), "/app/shared"));
                    m.push(rw(r.join("input"), "/app/input"));
                }
            }
        }
    }
    m
}

/// The program environment: `PYTHONUNBUFFERED=1` and the proxies
/// (`COMPETITION_CONTAINER_HTTP(S)_PROXY`), always present, maybe empty.
pub fn container_env(http_proxy: &str, https_proxy: &str) -> Vec<(String, String)> {
    vec![
        ("PYTHONUNBUFFERED".into(), "1".into()),
        ("http_proxy".into(), http_proxy.into()),
        ("https_proxy".into(), https_proxy.into()),
    ]
}

/// The wall-clock limit over ingestion + program together
/// (`execution_time_limit` seconds; 0 means none).
pub fn execution_limit(execution_time_limit: u64) -> Option<Duration> {
    (execution_time_limit > 0).then(|| Duration::from_secs(execution_time_limit))
}

/// The message the site shows when the limit is hit.
pub fn time_limit_message(execution_time_limit: u64) -> String {
    format!("Execution Time Limit exceeded. Limit was {execution_time_limit} seconds")
}

/// The Celery soft time limit ran out (the site sets it to the execution
/// time limit plus 20 minutes, counted from when the task was received).
pub fn soft_time_limit_message() -> String {
    "Soft time limit exceeded! The job took longer than the site allows for the whole task \
     (downloads and image pull included); it was stopped."
        .into()
}

/// The deadline for running programs that starts now: the execution
/// limit, cut short by the Celery soft limit's `deadline` (from receipt)
/// if that comes first.
pub fn run_deadline(
    now: std::time::Instant,
    execution_time_limit: u64,
    soft_deadline: Option<std::time::Instant>,
) -> Option<std::time::Instant> {
    let exec = execution_limit(execution_time_limit).map(|d| now + d);
    match (exec, soft_deadline) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dests(m: &[Mount]) -> Vec<&str> {
        m.iter().map(|m| m.destination).collect()
    }

    #[test]
    fn prediction_and_scoring_mount_tables() {
        let root = Path::new("/w/job");
        let data = Path::new("/srv/data");
        let mut plan = MountPlan {
            root,
            data_dir: Some(data),
            is_scoring: false,
            ingestion_only_during_scoring: false,
            has_input_data: true,
            protocol: Protocol::Legacy,
        };
        let p = mounts(ProgramKind::Program, &plan);
        assert_eq!(
            dests(&p),
            [
                "/app/program",
                "/app/output",
                "/app/data",
                "/app/input_data"
            ]
        );
        assert_eq!(p[0].source, root.join("program"));
        assert!(p[2].read_only && !p[0].read_only);
        let i = mounts(ProgramKind::Ingestion, &plan);
        assert_eq!(i[0].source, root.join("ingestion_program"));
        assert_eq!(
            i[3],
            Mount {
                source: root.join("program"),
                destination: "/app/ingested_program",
                read_only: false
            }
        );

        plan.is_scoring = true;
        plan.has_input_data = false;
        plan.data_dir = None;
        let s = mounts(ProgramKind::Program, &plan);
        assert_eq!(
            dests(&s),
            ["/app/program", "/app/output", "/app/shared", "/app/input"]
        );
        plan.ingestion_only_during_scoring = true;
        let si = mounts(ProgramKind::Ingestion, &plan);
        assert_eq!(si[2].source, root.join("input/res"));
    }

    #[test]
    fn current_mount_tables() {
        let root = Path::new("/w/job");
        let mut plan = MountPlan {
            root,
            data_dir: None,
            is_scoring: false,
            ingestion_only_during_scoring: false,
            has_input_data: true,
            protocol: Protocol::Current,
        };
        let ingested = Mount {
            source: root.join("submission"),
            destination: "/app/ingested_program",
            read_only: true,
        };
        let i = mounts(ProgramKind::Ingestion, &plan);
        assert_eq!(
            dests(&i),
            [
                "/app/program",
                "/app/output",
                "/app/ingested_program",
                "/app/input_data"
            ]
        );
        assert_eq!(i[0].source, root.join("ingestion_program"));
        assert_eq!(i[2], ingested);

        plan.is_scoring = true;
        plan.has_input_data = false;
        let s = mounts(ProgramKind::Program, &plan);
        assert_eq!(
            dests(&s),
            [
                "/app/program",
                "/app/output",
                "/app/ingested_program",
                "/app/shared",
                "/app/input"
            ]
        );
        assert_eq!(s[0].source, root.join("scoring_program"));
        assert_eq!(s[2], ingested);
        // IODS: the ingestion program gets neither /app/shared nor /app/input.
        plan.ingestion_only_during_scoring = true;
        plan.has_input_data = true;
        let si = mounts(ProgramKind::Ingestion, &plan);
        assert_eq!(
            dests(&si),
            [
                "/app/program",
                "/app/output",
                "/app/ingested_program",
                "/app/input_data"
            ]
        );
    }

    #[test]
    fn env_and_limits() {
        let e = container_env("", "http://proxy:3128");
        assert_eq!(e[0], ("PYTHONUNBUFFERED".into(), "1".into()));
        assert_eq!(e[1], ("http_proxy".into(), "".into()));
        assert_eq!(e[2].1, "http://proxy:3128");
        assert_eq!(execution_limit(0), None);
        assert_eq!(execution_limit(600), Some(Duration::from_secs(600)));
        assert_eq!(
            time_limit_message(600),
            "Execution Time Limit exceeded. Limit was 600 seconds"
        );
        let now = std::time::Instant::now();
        let soft = now + Duration::from_secs(100);
        assert_eq!(run_deadline(now, 600, Some(soft)), Some(soft));
        assert_eq!(
            run_deadline(now, 60, Some(soft)),
            Some(now + Duration::from_secs(60))
        );
        assert_eq!(run_deadline(now, 0, None), None);
    }
}
