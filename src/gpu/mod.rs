//! GPUs for rootless sandboxes, with no NVIDIA runtime and no hooks.
//!
//! [`GpuHost::open`] looks at a host root (`/` in production; a fake
//! driver root in tests): the driver's inventory ([`discovery`]) and any
//! CDI specs ([`cdi`]). [`GpuHost::edits`] turns a request (`all`, `0`,
//! `GPU-<uuid>`, ...) into [`Edits`]: device nodes bound read-write, the
//! driver's libraries of exactly its version bound read-only into
//! `/usr/local/nvidia/lib64` under their SONAMEs, tools into
//! `/usr/local/nvidia/bin`, and `LD_LIBRARY_PATH`/`PATH`. A CDI spec for
//! `nvidia.com/gpu`, when the host has one, decides the edits; otherwise
//! they are generated from the inventory and the host's ld.so.cache.

pub mod cdi;
pub mod discovery;
pub mod edits;
pub mod ldcache;
pub mod report;
pub mod select;
pub mod usage;

use std::path::{Path, PathBuf};

use thiserror::Error;

pub use discovery::{Gpu, Inventory, NoGpus};
pub use edits::{Capabilities, Edits};
pub use report::{host_report, HostGpuReport};
pub use select::Request;

#[derive(Debug, Error)]
pub enum GpuError {
    #[error("GPUs were requested, but {0}")]
    NoGpus(NoGpus),
    #[error("GPU {wanted} is not on this host; it has: {}", if have.is_empty() { "none".to_string() } else { have.join(", ") })]
    NotFound { wanted: String, have: Vec<String> },
    #[error("{path} is missing: {fix}")]
    MissingNode { path: PathBuf, fix: String },
    #[error("no libcuda.so.{version} in {cache}: the driver's user-space libraries are not installed (or run `ldconfig` as root)")]
    NoLibcuda { version: String, cache: PathBuf },
    #[error("{name} is not in any CDI spec (offered: {}){}", if offered.is_empty() { "none".to_string() } else { offered.join(", ") }, problems.iter().map(|p| format!("; {p}")).collect::<String>())]
    NotInCdi {
        name: String,
        offered: Vec<String>,
        problems: Vec<String>,
    },
    #[error("CDI spec {spec} names {path}, which does not exist (stale after a driver upgrade?): regenerate it with `nvidia-ctk cdi generate`")]
    StaleCdi { spec: PathBuf, path: PathBuf },
    #[error(transparent)]
    LdCache(#[from] ldcache::LdCacheError),
    #[error("bad GPU request {0}")]
    BadRequest(String),
}

/// A host's GPU driver and CDI specs.
#[derive(Debug)]
pub struct GpuHost {
    pub root: PathBuf,
    pub inventory: Result<Inventory, NoGpus>,
    pub cdi: cdi::Registry,
}

/// The edits for a `--gpus` value on the driver under `root`, with the
/// capabilities `env` (the run's environment) asks for.
pub fn edits_for(root: &Path, spec: &str, env: &[String]) -> Result<Edits, GpuError> {
    let requests = select::parse(spec)?;
    GpuHost::open(root).edits(&requests, &Capabilities::from_env(env))
}

impl GpuHost {
    pub fn open(root: &Path) -> GpuHost {
        GpuHost {
            root: root.to_path_buf(),
            inventory: discovery::discover(root),
            cdi: cdi::Registry::load(root),
        }
    }

    /// The GPUs `requests` select (needs the driver's inventory).
    pub fn select(&self, requests: &[Request]) -> Result<Vec<Gpu>, GpuError> {
        let inv = self
            .inventory
            .as_ref()
            .map_err(|e| GpuError::NoGpus(e.clone()))?;
        select::resolve(inv, requests)
    }

    /// The edits that give a sandbox the GPUs of `requests`, with the
    /// driver capabilities `caps` (from the image's environment).
    pub fn edits(&self, requests: &[Request], caps: &Capabilities) -> Result<Edits, GpuError> {
        if self.cdi.has_kind(select::KIND) {
            let names: Vec<String> = requests.iter().map(Request::cdi_name).collect();
            let mut e = self.cdi.edits(&self.root, select::KIND, &names)?;
            if let Ok(gpus) = self.select(requests) {
                e.described = gpus.iter().map(Gpu::describe).collect();
            }
            return Ok(e);
        }
        let inv = self
            .inventory
            .as_ref()
            .map_err(|e| GpuError::NoGpus(e.clone()))?;
        let gpus = select::resolve(inv, requests)?;
        edits::generate(&self.root, inv, &gpus, caps)
    }
}

/// One line for a worker's start: what it found.
pub fn summary(host: &GpuHost) -> String {
    match &host.inventory {
        Ok(inv) => format!(
            "NVIDIA driver {}{} ({}), {} GPU(s): {}",
            inv.driver_version,
            inv.cuda_version
                .as_deref()
                .map(|c| format!(", CUDA {c}"))
                .unwrap_or_default(),
            inv.source,
            inv.gpus.len(),
            inv.gpus
                .iter()
                .map(|g| format!("{} {}", g.index, g.describe()))
                .collect::<Vec<_>>()
                .join("; ")
        ),
        Err(e) => format!("{e}: CPU only"),
    }
}
