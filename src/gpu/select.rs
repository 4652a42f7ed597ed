//! Which GPUs a sandbox asks for: `--gpus`/`GPU_DEVICE` values
//! (`all`, `0`, `GPU-<uuid>`, `nvidia.com/gpu=...`, comma-separated), and
//! the split of a host's GPUs between worker slots.

use super::discovery::{Gpu, Inventory};
use super::GpuError;

/// The CDI kind of NVIDIA GPUs.
pub const KIND: &str = "nvidia.com/gpu";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    All,
    /// NVML index (as `nvidia-smi` numbers GPUs; not `/dev/nvidiaN`).
    Index(u32),
    /// `GPU-<uuid>` (or `MIG-<uuid>` for a CDI spec).
    Uuid(String),
    /// Any other CDI device name (e.g. `gpu0`, `0:1`).
    Name(String),
}

impl Request {
    /// The CDI device name nvidia-ctk gives this request.
    pub fn cdi_name(&self) -> String {
        match self {
            Request::All => "all".into(),
            Request::Index(i) => i.to_string(),
            Request::Uuid(u) | Request::Name(u) => u.clone(),
        }
    }
}

/// Parse `all`, `0,1`, `GPU-<uuid>`, `nvidia.com/gpu=all`, ...
pub fn parse(spec: &str) -> Result<Vec<Request>, GpuError> {
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let name = match part.split_once('=') {
            Some((kind, name)) if kind == KIND => name,
            Some((kind, _)) => {
                return Err(GpuError::BadRequest(format!(
                    "`{part}`: only {KIND} devices are supported, not {kind}"
                )))
            }
            None => part,
        };
        out.push(if name == "all" {
            Request::All
        } else if let Ok(i) = name.parse::<u32>() {
            Request::Index(i)
        } else if name.starts_with("GPU-") || name.starts_with("MIG-") {
            Request::Uuid(name.to_string())
        } else if !name.is_empty() {
            Request::Name(name.to_string())
        } else {
            return Err(GpuError::BadRequest(format!("`{part}`: empty device name")));
        });
    }
    if out.is_empty() {
        return Err(GpuError::BadRequest(
            "empty GPU list: give `all`, an index or GPU-<uuid>".into(),
        ));
    }
    Ok(out)
}

/// The GPUs of the inventory that `requests` name, in request order,
/// without duplicates. A GPU that is not there is an error, never ignored.
pub fn resolve(inv: &Inventory, requests: &[Request]) -> Result<Vec<Gpu>, GpuError> {
    let have = || {
        inv.gpus
            .iter()
            .map(|g| format!("{} {} ({})", g.index, g.uuid, g.name))
            .collect::<Vec<_>>()
    };
    let mut out: Vec<Gpu> = Vec::new();
    for r in requests {
        let found: Vec<&Gpu> = match r {
            Request::All => inv.gpus.iter().filter(|g| !g.mig_enabled).collect(),
            Request::Index(i) => inv.gpus.iter().filter(|g| g.index == *i).collect(),
            Request::Uuid(u) => inv
                .gpus
                .iter()
                .filter(|g| g.uuid.eq_ignore_ascii_case(u))
                .collect(),
            Request::Name(_) => vec![],
        };
        if found.is_empty() {
            return Err(GpuError::NotFound {
                wanted: r.cdi_name(),
                have: have(),
            });
        }
        for g in found {
            if g.mig_enabled {
                return Err(GpuError::BadRequest(format!(
                    "GPU {} has MIG enabled: it is not usable as a full GPU (use a CDI spec with its MIG devices)",
                    g.uuid
                )));
            }
            if !out.iter().any(|o| o.uuid == g.uuid) {
                out.push(g.clone());
            }
        }
    }
    Ok(out)
}

/// Split `gpus` between `slots` slots, `per_slot` each, pinned by UUID: slot
/// i gets GPUs `i*per_slot ..`. Not enough GPUs is an error.
pub fn per_slot(
    gpus: &[Gpu],
    slots: usize,
    per_slot: usize,
) -> Result<Vec<Vec<Request>>, GpuError> {
    let needed = slots * per_slot;
    if per_slot == 0 || needed > gpus.len() {
        return Err(GpuError::BadRequest(format!(
            "{slots} slots × {per_slot} GPUs per slot need {needed} GPUs; {} selected: {}",
            gpus.len(),
            gpus.iter()
                .map(|g| g.uuid.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(gpus
        .chunks(per_slot)
        .take(slots)
        .map(|c| c.iter().map(|g| Request::Uuid(g.uuid.clone())).collect())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(index: u32, minor: u32) -> Gpu {
        Gpu {
            index,
            uuid: format!("GPU-{index:08}-0000-0000-0000-000000000000"),
            minor,
            name: "Fake".into(),
            memory_bytes: None,
            pci_bus_id: format!("0000:0{index}:00.0"),
            mig_enabled: false,
        }
    }

    fn inv(gpus: Vec<Gpu>) -> Inventory {
        Inventory {
            driver_version: "999.88.77".into(),
            cuda_version: None,
            gpus,
            source: "test".into(),
        }
    }

    #[test]
    fn codabench_gpu_device_values_parse() {
        assert_eq!(parse("all").unwrap(), [Request::All]);
        assert_eq!(parse("nvidia.com/gpu=all").unwrap(), [Request::All]);
        assert_eq!(
            parse("nvidia.com/gpu=GPU-abc, 1").unwrap(),
            [Request::Uuid("GPU-abc".into()), Request::Index(1)]
        );
        assert!(parse("amd.com/gpu=0").is_err());
        assert!(parse("").is_err());
    }

    #[test]
    fn a_missing_gpu_is_an_error_naming_what_the_host_has() {
        let i = inv(vec![gpu(0, 3)]);
        let err = resolve(&i, &[Request::Uuid("GPU-nope".into())])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("GPU-nope") && err.contains("GPU-00000000"),
            "{err}"
        );
        assert!(resolve(&i, &[Request::Index(1)]).is_err());
        assert_eq!(resolve(&i, &[Request::Index(0)]).unwrap()[0].minor, 3);
    }

    #[test]
    fn slots_get_their_own_gpus_by_uuid() {
        let gpus: Vec<Gpu> = (0..4).map(|i| gpu(i, i)).collect();
        let groups = per_slot(&gpus, 2, 2).unwrap();
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[1][0], Request::Uuid(gpus[2].uuid.clone()));
        assert!(per_slot(&gpus, 3, 2).is_err());
    }
}
