//! Which NVIDIA driver and GPUs the host has.
//!
//! The driver is a boundary we do not own, so it sits behind [`Driver`]:
//! * [`NvmlDriver`] (the default on `/`, in every build): NVML through
//!   nvml-wrapper, which `dlopen`s `libnvidia-ml.so.1` at run time;
//! * [`ProcDriver`]: the kernel module's own files under
//!   `<root>/proc/driver/nvidia` (`version`, `gpus/<bus>/information`).
//!   It is used when NVML cannot be loaded (a binary that cannot dlopen)
//!   and for a driver root other than `/`, where NVML, which always talks
//!   to the running kernel, would describe a different host. Tests point
//!   it at a fake driver root with the same files the kernel module writes.

use std::path::{Path, PathBuf};

use nvml_wrapper::error::NvmlError;
use nvml_wrapper::Nvml;

/// One full GPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpu {
    /// NVML's index (not stable across reboots; only the UUID is).
    pub index: u32,
    pub uuid: String,
    /// `/dev/nvidia<minor>`: not the index.
    pub minor: u32,
    pub name: String,
    /// Total memory, when the driver says.
    pub memory_bytes: Option<u64>,
    pub pci_bus_id: String,
    /// MIG is enabled: the GPU is not usable as a full device.
    pub mig_enabled: bool,
}

impl Gpu {
    /// `NVIDIA A100 (GPU-…, 40 GiB)`: what job logs show.
    pub fn describe(&self) -> String {
        match self.memory_bytes {
            Some(b) => format!("{} ({}, {} MiB)", self.name, self.uuid, b >> 20),
            None => format!("{} ({})", self.name, self.uuid),
        }
    }
}

/// What the driver reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inventory {
    /// e.g. `550.54.14`: the suffix of the driver's library files.
    pub driver_version: String,
    /// e.g. `12.4`, when NVML says.
    pub cuda_version: Option<String>,
    pub gpus: Vec<Gpu>,
    /// Where this came from (`NVML`, or the procfs path).
    pub source: String,
}

/// Why there is no usable inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoGpus {
    /// No NVIDIA driver at all: a CPU-only host, not an error.
    NoDriver(String),
    /// A driver is there but cannot be used; the message says what to do.
    Unusable(String),
}

impl std::fmt::Display for NoGpus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoGpus::NoDriver(m) | NoGpus::Unusable(m) => f.write_str(m),
        }
    }
}

/// A source of the driver's inventory.
pub trait Driver {
    fn inventory(&self) -> Result<Inventory, NoGpus>;
}

/// NVML, loaded at run time.
pub struct NvmlDriver;

impl Driver for NvmlDriver {
    fn inventory(&self) -> Result<Inventory, NoGpus> {
        let nvml = Nvml::init().map_err(nvml_init_error)?;
        let err = |what: &str, e: NvmlError| NoGpus::Unusable(format!("NVML {what}: {e}"));
        let driver_version = nvml
            .sys_driver_version()
            .map_err(|e| err("driver version", e))?;
        let cuda_version = nvml.sys_cuda_driver_version().ok().map(|v| {
            format!(
                "{}.{}",
                nvml_wrapper::cuda_driver_version_major(v),
                nvml_wrapper::cuda_driver_version_minor(v)
            )
        });
        let count = nvml.device_count().map_err(|e| err("device count", e))?;
        let mut gpus = Vec::new();
        for index in 0..count {
            let d = nvml
                .device_by_index(index)
                .map_err(|e| err("device handle", e))?;
            gpus.push(Gpu {
                index,
                uuid: d.uuid().map_err(|e| err("GPU UUID", e))?,
                minor: d.minor_number().map_err(|e| err("minor number", e))?,
                name: d.name().unwrap_or_else(|_| "NVIDIA GPU".into()),
                // Old drivers lack the _v2 symbol: memory is then unknown.
                memory_bytes: d.memory_info().ok().map(|m| m.total),
                pci_bus_id: d.pci_info().map(|p| p.bus_id).unwrap_or_default(),
                mig_enabled: matches!(d.mig_mode(), Ok(m) if m.current == 1),
            });
        }
        Ok(Inventory {
            driver_version,
            cuda_version,
            gpus,
            source: "NVML".into(),
        })
    }
}

/// Why NVML could not be opened, and what to do.
pub(crate) fn nvml_init_error(e: NvmlError) -> NoGpus {
    match e {
        NvmlError::LibloadingError(e) => NoGpus::NoDriver(format!("no NVIDIA driver ({e})")),
        NvmlError::DriverNotLoaded => NoGpus::NoDriver(
            "the NVIDIA libraries are installed but the kernel module is not loaded".into(),
        ),
        NvmlError::NoPermission => NoGpus::Unusable(
            "NVML: insufficient permissions on /dev/nvidiactl: the worker's user must be able \
             to open /dev/nvidia* read-write (add it to their group, e.g. `usermod -aG video USER`)"
                .into(),
        ),
        NvmlError::LibRmVersionMismatch => NoGpus::Unusable(
            "NVML: driver/library version mismatch: the driver was upgraded without a reboot; \
             reboot or reload the nvidia kernel modules"
                .into(),
        ),
        other => NoGpus::Unusable(format!("NVML cannot start: {other}")),
    }
}

/// The kernel module's files under `<root>/proc/driver/nvidia`.
pub struct ProcDriver {
    pub root: PathBuf,
}

impl ProcDriver {
    fn dir(&self) -> PathBuf {
        self.root.join("proc/driver/nvidia")
    }

    /// The driver's procfs directory exists.
    pub fn present(&self) -> bool {
        self.dir().join("version").is_file()
    }
}

impl Driver for ProcDriver {
    fn inventory(&self) -> Result<Inventory, NoGpus> {
        let dir = self.dir();
        let version_file = dir.join("version");
        let text = std::fs::read_to_string(&version_file).map_err(|e| {
            NoGpus::NoDriver(format!(
                "no NVIDIA driver ({}: {e})",
                version_file.display()
            ))
        })?;
        let driver_version = parse_version(&text).ok_or_else(|| {
            NoGpus::Unusable(format!(
                "{}: no `NVRM version` line with a version number",
                version_file.display()
            ))
        })?;
        let mut gpus = Vec::new();
        if let Ok(entries) = std::fs::read_dir(dir.join("gpus")) {
            for e in entries.flatten() {
                let info = e.path().join("information");
                let text = std::fs::read_to_string(&info).unwrap_or_default();
                let gpu = parse_information(&text, &e.file_name().to_string_lossy()).ok_or_else(
                    || {
                        NoGpus::Unusable(format!(
                            "{}: no `GPU UUID` or `Device Minor` line",
                            info.display()
                        ))
                    },
                )?;
                gpus.push(gpu);
            }
        }
        // NVML enumerates in PCI bus order.
        gpus.sort_by(|a, b| a.pci_bus_id.cmp(&b.pci_bus_id));
        for (i, g) in gpus.iter_mut().enumerate() {
            g.index = i as u32;
        }
        Ok(Inventory {
            driver_version,
            cuda_version: None,
            gpus,
            source: dir.display().to_string(),
        })
    }
}

/// `NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.14  Thu Feb ...`
fn parse_version(text: &str) -> Option<String> {
    let line = text.lines().find(|l| l.starts_with("NVRM version:"))?;
    line.split_whitespace()
        .find(|w| w.contains('.') && w.chars().all(|c| c.is_ascii_digit() || c == '.'))
        .map(str::to_string)
}

/// `gpus/<bus>/information`: `Model:`, `GPU UUID:`, `Device Minor:`, `Bus Location:`.
fn parse_information(text: &str, bus: &str) -> Option<Gpu> {
    let field = |key: &str| {
        text.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == key).then(|| v.trim().to_string())
        })
    };
    Some(Gpu {
        index: 0,
        uuid: field("GPU UUID")?,
        minor: field("Device Minor")?.parse().ok()?,
        name: field("Model").unwrap_or_else(|| "NVIDIA GPU".into()),
        memory_bytes: None,
        pci_bus_id: field("Bus Location").unwrap_or_else(|| bus.to_string()),
        mig_enabled: false,
    })
}

/// The inventory of the driver under `root`: NVML on `/` (the procfs files
/// when NVML cannot be loaded), the procfs files of any other root.
pub fn discover(root: &Path) -> Result<Inventory, NoGpus> {
    let procfs = ProcDriver {
        root: root.to_path_buf(),
    };
    if root != Path::new("/") {
        return procfs.inventory();
    }
    match NvmlDriver.inventory() {
        Err(NoGpus::NoDriver(why)) if procfs.present() => {
            tracing::debug!("NVML unavailable ({why}); reading /proc/driver/nvidia");
            procfs.inventory()
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn procfs_files_as_the_kernel_module_writes_them() {
        let v = "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  550.54.14  Release Build  (dvs-builder@U16-I3-B03-4-3)  Thu Feb 22 01:25:25 UTC 2024\nGCC version:  gcc version 12.2.0\n";
        assert_eq!(parse_version(v).as_deref(), Some("550.54.14"));
        let info = "Model: \t\t Tesla T4\nIRQ:   \t\t 36\nGPU UUID: \t GPU-4c1e2b1a-0000-1111-2222-333344445555\nVideo BIOS: \t 90.04.38.00.03\nBus Type: \t PCIe\nDMA Size: \t 47 bits\nBus Location: \t 0000:00:1e.0\nDevice Minor: \t 3\nGPU Excluded:\t No\n";
        let g = parse_information(info, "x").unwrap();
        assert_eq!(g.name, "Tesla T4");
        assert_eq!(g.minor, 3);
        assert_eq!(g.uuid, "GPU-4c1e2b1a-0000-1111-2222-333344445555");
        assert_eq!(g.pci_bus_id, "0000:00:1e.0");
    }

    #[test]
    fn a_host_without_a_driver_has_no_gpus_and_that_is_not_an_error() {
        if Path::new("/proc/driver/nvidia").exists() {
            return; // a GPU host
        }
        match discover(Path::new("/")) {
            Err(NoGpus::NoDriver(why)) => assert!(why.contains("no NVIDIA driver"), "{why}"),
            other => panic!("{other:?}"),
        }
    }
}
