//! Driving the started programs: their output to the live log and the
//! capped log files, the wall-clock deadline, cancellation, and the
//! detailed results watched while they run.

use std::path::Path;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::command::ProgramKind;
use super::program::{self, Stream};
use super::publish::DetailedResults;
use super::results;
use super::step::Reporter;
use crate::sandbox::{Outcome, SandboxError, Usage};
use crate::site::live::LiveKind;

/// Why the programs stopped.
pub enum Stop {
    Done,
    TimedOut,
    Cancelled,
}

/// One program's end: how, after how long, and what it used.
pub struct Ended {
    pub kind: ProgramKind,
    /// `None`: the sandbox failed (or its task did).
    pub outcome: Option<Outcome>,
    pub elapsed: Duration,
    pub usage: Option<Usage>,
}

/// Stream output, enforce the deadline, watch the detailed results, and
/// collect each program's outcome and elapsed time. Logs are written under
/// `root/logs`.
pub async fn drive<R: Reporter>(
    r: &R,
    programs: Vec<(ProgramKind, LiveKind, program::Running)>,
    deadline: Option<Instant>,
    cancel: &CancellationToken,
    log_cap: usize,
    root: &Path,
    mut watcher: Option<(&mut DetailedResults, Duration)>,
) -> (Vec<Ended>, Stop) {
    let started = Instant::now();
    let mut killers = Vec::new();
    let mut runs = Vec::new();
    for (kind, live, p) in programs {
        killers.push(p.killer);
        runs.push(collect(
            r,
            (kind, live),
            p.output,
            p.exit,
            log_cap,
            root,
            started,
        ));
    }
    let all = futures_util::future::join_all(runs);
    tokio::pin!(all);
    let sleep = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d.into()).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(sleep);
    let every = watcher
        .as_ref()
        .map_or(Duration::from_secs(3600), |(_, e)| *e);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let stop = loop {
        tokio::select! {
            res = &mut all => return (res, Stop::Done),
            _ = &mut sleep => break Stop::TimedOut,
            _ = cancel.cancelled() => break Stop::Cancelled,
            _ = tick.tick(), if watcher.is_some() => {
                if let Some((w, _)) = watcher.as_mut() {
                    w.check(r, false).await;
                }
            }
        }
    };
    for k in &killers {
        k.kill();
    }
    (all.await, stop)
}

/// Forward one program's output to the live log and the capped captures,
/// then wait for its end.
async fn collect<R: Reporter>(
    r: &R,
    (kind, live): (ProgramKind, LiveKind),
    mut output: tokio::sync::mpsc::Receiver<(Stream, Vec<u8>)>,
    exit: tokio::task::JoinHandle<Result<(Outcome, Usage), SandboxError>>,
    log_cap: usize,
    root: &Path,
    started: Instant,
) -> Ended {
    let mut out = results::LogCapture::new(log_cap);
    let mut err = results::LogCapture::new(log_cap);
    while let Some((stream, chunk)) = output.recv().await {
        r.live(live, &String::from_utf8_lossy(&chunk));
        match stream {
            Stream::Stdout => out.push(&chunk),
            Stream::Stderr => err.push(&chunk),
        }
    }
    let (outcome, usage) = match exit.await {
        Ok(Ok((o, u))) => (Some(o), Some(u)),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "sandbox failure");
            err.push(format!("\n[compute-worker: the sandbox failed: {e}]\n").as_bytes());
            (None, None)
        }
        Err(e) => {
            tracing::error!(error = %e, "sandbox task failure");
            (None, None)
        }
    };
    let elapsed = started.elapsed();
    let prefix = match kind {
        ProgramKind::Program => "",
        ProgramKind::Ingestion => "ingestion_",
    };
    for (name, cap) in [("stdout", out), ("stderr", err)] {
        let path = root.join("logs").join(format!("{prefix}{name}"));
        if let Err(e) = std::fs::write(&path, cap.finish()) {
            tracing::warn!(error = %e, path = %path.display(), "could not save a log");
        }
    }
    Ended {
        kind,
        outcome,
        elapsed,
        usage,
    }
}
