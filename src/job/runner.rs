//! The interface the job lifecycle needs from a sandbox. The sandbox
//! (src/sandbox) implements it; nothing here runs a program.
//!
//! The lifecycle starts the ingestion and program containers in parallel,
//! forwards their output lines to the live log and the upload buffers,
//! and kills both when the wall-clock limit, a revoke or a shutdown hits.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

use super::layout::Mount;

/// Everything needed to start one program.
#[derive(Debug, Clone)]
pub struct ProgramSpec {
    /// Sandbox name, e.g. `ingestion_uPK-7_sID-1234`.
    pub name: String,
    /// Competition image reference (`run_args.docker_image`).
    pub image: String,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub workdir: String,
    pub mounts: Vec<Mount>,
    /// `false` when `COMPETITION_CONTAINER_NETWORK_DISABLED` is true.
    pub network: bool,
    pub gpu: bool,
    /// Per-job scratch directory the sandbox may use.
    pub scratch: PathBuf,
}

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// A boxed future, to keep the trait object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A started program.
pub trait RunningProgram: Send {
    /// The next output chunk (a line, or a bounded chunk of a very long
    /// line), or `None` once both streams are closed.
    fn next_output(&mut self) -> BoxFuture<'_, Option<(Stream, Vec<u8>)>>;
    /// Wait for the exit code (128 + signal when killed).
    fn wait(&mut self) -> BoxFuture<'_, std::io::Result<i32>>;
    /// Kill the whole sandbox (all its processes); idempotent.
    fn kill(&mut self) -> BoxFuture<'_, std::io::Result<()>>;
}

/// Starts programs in sandboxes.
pub trait ProgramRunner: Send + Sync {
    fn start(&self, spec: ProgramSpec) -> BoxFuture<'_, std::io::Result<Box<dyn RunningProgram>>>;
}
