//! One program of a job (ingestion or the submission/scoring program) in a
//! sandbox, driven from async code: output arrives as chunks on a channel
//! while it runs, the exit comes from a blocking task, and a [`Killer`]
//! stops it from anywhere.

use std::io::{BufRead, BufReader};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::sandbox::{
    Killer, Outcome, Output, RunSpec, Sandbox, SandboxConfig, SandboxError, Usage,
};

/// Which stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Longest chunk forwarded at once: a line, or a slice of a longer one.
const MAX_CHUNK: usize = 64 * 1024;

/// A started program.
pub struct Running {
    pub killer: Killer,
    /// Output chunks (lines where possible), until both streams close.
    pub output: mpsc::Receiver<(Stream, Vec<u8>)>,
    /// How the sandbox ended, and what the run used.
    pub exit: JoinHandle<Result<(Outcome, Usage), SandboxError>>,
}

/// Start `run` in a sandbox. Blocking work (spawning the helper) happens on
/// the blocking pool.
pub async fn start(cfg: Arc<SandboxConfig>, run: RunSpec) -> Result<Running, SandboxError> {
    let starter = cfg.clone();
    let mut sandbox = tokio::task::spawn_blocking(move || {
        Sandbox::start(&starter, &run, Output::Pipe, Output::Pipe)
    })
    .await
    .map_err(|e| SandboxError::Lost(format!("start task: {e}")))??;
    let killer = sandbox.killer()?;
    let (tx, rx) = mpsc::channel(1024);
    let readers: Vec<_> = [
        (sandbox.stdout.take(), Stream::Stdout),
        (sandbox.stderr.take(), Stream::Stderr),
    ]
    .into_iter()
    .filter_map(|(f, s)| f.map(|f| (f, s)))
    .map(|(file, stream)| {
        let tx = tx.clone();
        std::thread::spawn(move || forward(file, stream, tx))
    })
    .collect();
    drop(tx);
    let exit = tokio::task::spawn_blocking(move || {
        let outcome = sandbox.wait_with_usage(&cfg);
        for r in readers {
            let _ = r.join();
        }
        outcome
    });
    Ok(Running {
        killer,
        output: rx,
        exit,
    })
}

/// Read `file` in lines (bounded) and send them until EOF or until the
/// receiver is gone (then keep draining so the program never blocks).
fn forward(file: std::fs::File, stream: Stream, tx: mpsc::Sender<(Stream, Vec<u8>)>) {
    let mut r = BufReader::with_capacity(MAX_CHUNK, file);
    let mut open = true;
    loop {
        let chunk = match r.fill_buf() {
            Ok([]) | Err(_) => return,
            Ok(buf) => {
                let end = buf
                    .iter()
                    .position(|&b| b == b'\n')
                    .map(|i| i + 1)
                    .unwrap_or(buf.len());
                buf[..end].to_vec()
            }
        };
        r.consume(chunk.len());
        if open && tx.blocking_send((stream, chunk)).is_err() {
            open = false;
        }
    }
}
