//! What each of `serve`'s slots owns: its GPUs (pinned by UUID, as the
//! 8-worker compose file of Codabench's GPU fork does with one container
//! per GPU) and an optional cpuset. A job leases a free slot for its
//! duration; the broker never runs more jobs than there are slots.

use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::gpu::{self, Capabilities, GpuError, GpuHost, Request};
use crate::sandbox::RunSpec;

/// One slot's resources.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotResources {
    /// The GPUs its jobs get (`None`: no GPU).
    pub gpus: Option<Vec<Request>>,
    /// cpuset of its programs (overrides `--cpus`).
    pub cpus: Option<String>,
}

/// Every slot's resources, and which are in use.
#[derive(Debug)]
pub struct SlotPlan {
    pub host: Option<GpuHost>,
    pub slots: Vec<SlotResources>,
    free: Mutex<Vec<usize>>,
}

/// The worker's options that decide the plan.
pub struct PlanInput<'a> {
    pub slots: usize,
    /// Codabench's `USE_GPU`.
    pub use_gpu: bool,
    /// Codabench's `GPU_DEVICE` (default: all GPUs).
    pub gpu_device: Option<&'a str>,
    /// `--gpus-per-slot`: 0 means every slot gets all of `GPU_DEVICE`.
    pub gpus_per_slot: usize,
    pub slot_cpus: &'a [String],
    pub gpu_root: &'a Path,
}

impl SlotPlan {
    /// The plan, or `None` when slots own nothing. Requested GPUs that the
    /// host lacks are an error here, before any job is taken.
    pub fn new(input: PlanInput<'_>) -> anyhow::Result<Option<Arc<SlotPlan>>> {
        let n = input.slots.max(1);
        if !input.slot_cpus.is_empty() && input.slot_cpus.len() != n {
            anyhow::bail!(
                "--slot-cpus was given {} times for {n} slots: give one cpuset per slot",
                input.slot_cpus.len()
            );
        }
        let cpus = |i: usize| input.slot_cpus.get(i).cloned();
        if !input.use_gpu {
            if input.gpus_per_slot > 0 {
                anyhow::bail!("--gpus-per-slot needs USE_GPU=true");
            }
            let host = GpuHost::open(input.gpu_root);
            match host.inventory {
                Ok(_) => tracing::info!(
                    "{}; USE_GPU is not true: jobs get no GPU",
                    gpu::summary(&host)
                ),
                Err(_) => tracing::info!("{}", gpu::summary(&host)),
            }
            if input.slot_cpus.is_empty() {
                return Ok(None);
            }
            let slots = (0..n)
                .map(|i| SlotResources {
                    gpus: None,
                    cpus: cpus(i),
                })
                .collect();
            return Ok(Some(Arc::new(SlotPlan::from_slots(None, slots))));
        }
        let host = GpuHost::open(input.gpu_root);
        tracing::info!("{}", gpu::summary(&host));
        let device = input.gpu_device.map(str::trim).filter(|d| !d.is_empty());
        let requests = gpu::select::parse(device.unwrap_or("all"))
            .map_err(|e| anyhow::anyhow!("GPU_DEVICE: {e}"))?;
        let groups = if input.gpus_per_slot == 0 {
            // Checked now so that a worker missing its GPUs does not start.
            host.edits(&requests, &Capabilities::from_env(&[]))
                .map_err(|e| anyhow::anyhow!("USE_GPU=true: {e}"))?;
            vec![requests; n]
        } else {
            let gpus = host
                .select(&requests)
                .map_err(|e| anyhow::anyhow!("USE_GPU=true: {e}"))?;
            gpu::select::per_slot(&gpus, n, input.gpus_per_slot)
                .map_err(|e| anyhow::anyhow!("--gpus-per-slot: {e}"))?
        };
        let slots: Vec<SlotResources> = groups
            .into_iter()
            .enumerate()
            .map(|(i, g)| SlotResources {
                gpus: Some(g),
                cpus: cpus(i),
            })
            .collect();
        for (i, s) in slots.iter().enumerate() {
            let names: Vec<String> = s.gpus.iter().flatten().map(Request::cdi_name).collect();
            tracing::info!(slot = i, gpus = %names.join(","), cpus = s.cpus.as_deref().unwrap_or("any"), "slot resources");
        }
        Ok(Some(Arc::new(SlotPlan::from_slots(Some(host), slots))))
    }

    pub fn from_slots(host: Option<GpuHost>, slots: Vec<SlotResources>) -> SlotPlan {
        let free = (0..slots.len()).rev().collect();
        SlotPlan {
            host,
            slots,
            free: Mutex::new(free),
        }
    }

    /// A free slot for one job, returned when the lease drops.
    pub fn lease(self: &Arc<Self>) -> Option<SlotLease> {
        let index = self.free.lock().unwrap_or_else(|p| p.into_inner()).pop()?;
        Some(SlotLease {
            plan: self.clone(),
            index,
        })
    }
}

/// A slot held by one job.
pub struct SlotLease {
    plan: Arc<SlotPlan>,
    pub index: usize,
}

impl Drop for SlotLease {
    fn drop(&mut self) {
        self.plan
            .free
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(self.index);
    }
}

impl SlotLease {
    pub fn resources(&self) -> &SlotResources {
        &self.plan.slots[self.index]
    }

    /// The UUIDs of this slot's GPUs (none when it has none, or the
    /// driver's inventory cannot name them).
    pub fn gpu_uuids(&self) -> Vec<String> {
        let (Some(requests), Some(host)) = (&self.resources().gpus, &self.plan.host) else {
            return Vec::new();
        };
        host.select(requests)
            .map(|gpus| gpus.into_iter().map(|g| g.uuid).collect())
            .unwrap_or_default()
    }

    /// Give `run` this slot's cpuset and GPUs. Returns how the GPUs are
    /// named in logs; a GPU that is gone is an error (the job fails; it
    /// never runs on CPU instead).
    pub fn apply(&self, run: &mut RunSpec) -> Result<Vec<String>, GpuError> {
        let r = self.resources();
        if let Some(cpus) = &r.cpus {
            run.limits.cpus = Some(cpus.clone());
        }
        let (Some(requests), Some(host)) = (&r.gpus, &self.plan.host) else {
            return Ok(Vec::new());
        };
        let edits = host.edits(requests, &Capabilities::from_env(&run.env))?;
        edits.apply(run);
        Ok(edits.described)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_hand_out_each_slot_once() {
        let plan = Arc::new(SlotPlan::from_slots(
            None,
            vec![
                SlotResources {
                    gpus: None,
                    cpus: Some("0-1".into()),
                },
                SlotResources {
                    gpus: None,
                    cpus: Some("2-3".into()),
                },
            ],
        ));
        let a = plan.lease().unwrap();
        let b = plan.lease().unwrap();
        assert_ne!(a.index, b.index);
        assert!(plan.lease().is_none());
        drop(a);
        let c = plan.lease().unwrap();
        let mut run = RunSpec::new("/r", vec!["true".into()]);
        c.apply(&mut run).unwrap();
        assert_eq!(run.limits.cpus.as_deref(), Some(["0-1", "2-3"][c.index]));
    }

    #[test]
    fn a_gpu_gone_at_job_time_fails_the_job() {
        let empty = tempfile::tempdir().unwrap();
        let plan = Arc::new(SlotPlan::from_slots(
            Some(GpuHost::open(empty.path())),
            vec![SlotResources {
                gpus: Some(vec![Request::Uuid("GPU-gone".into())]),
                cpus: None,
            }],
        ));
        let mut run = RunSpec::new("/r", vec!["true".into()]);
        let err = plan.lease().unwrap().apply(&mut run).unwrap_err();
        assert!(err.to_string().contains("GPUs were requested"), "{err}");
    }

    #[test]
    fn use_gpu_on_a_host_without_the_gpu_refuses_to_start() {
        let empty = tempfile::tempdir().unwrap();
        let err = SlotPlan::new(PlanInput {
            slots: 2,
            use_gpu: true,
            gpu_device: Some("nvidia.com/gpu=all"),
            gpus_per_slot: 0,
            slot_cpus: &[],
            gpu_root: empty.path(),
        })
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("USE_GPU=true: GPUs were requested"),
            "{err}"
        );
    }
}
