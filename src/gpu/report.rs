//! What `doctor` shows about GPUs: the driver, its devices, the device
//! nodes the worker's user must open read-write, and the CDI specs.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::discovery::{Inventory, NoGpus};
use super::edits::{under, UVM_FIX};

/// One device node and whether this process's user can use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCheck {
    pub path: PathBuf,
    /// `None` when the node is missing.
    pub mode: Option<u32>,
    pub owner: String,
    /// What is wrong and how to fix it; `None` when usable.
    pub problem: Option<String>,
}

/// The GPU part of a host check.
#[derive(Debug, Clone)]
pub struct HostGpuReport {
    pub root: PathBuf,
    /// The driver's inventory, or why there is none (`NoDriver` is a
    /// CPU-only host, not a problem).
    pub driver: Result<Inventory, NoGpus>,
    pub nodes: Vec<NodeCheck>,
    /// CDI spec files found (`/etc/cdi`, `/var/run/cdi`).
    pub cdi_specs: Vec<PathBuf>,
    /// Everything that keeps GPU jobs from running, with the fix.
    pub problems: Vec<String>,
}

impl HostGpuReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Check the GPU side of the host under `root` for the current user.
pub fn host_report(root: &Path) -> HostGpuReport {
    let driver = super::discovery::discover(root);
    let registry = super::cdi::Registry::load(root);
    let mut problems: Vec<String> = registry.problems.clone();
    let mut nodes = Vec::new();
    match &driver {
        Err(NoGpus::NoDriver(_)) => {}
        Err(e @ NoGpus::Unusable(_)) => problems.push(e.to_string()),
        Ok(inv) => {
            let mut names: Vec<String> = vec!["nvidiactl".into(), "nvidia-uvm".into()];
            names.push("nvidia-uvm-tools".into());
            names.extend(inv.gpus.iter().map(|g| format!("nvidia{}", g.minor)));
            for n in names {
                let c = check_node(&under(root, format!("dev/{n}")));
                if let Some(p) = &c.problem {
                    problems.push(p.clone());
                }
                nodes.push(c);
            }
        }
    }
    HostGpuReport {
        root: root.to_path_buf(),
        driver,
        nodes,
        cdi_specs: registry.specs.iter().map(|(p, _)| p.clone()).collect(),
        problems,
    }
}

fn group_name(gid: u32) -> String {
    nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
        .ok()
        .flatten()
        .map(|g| g.name)
        .unwrap_or_else(|| gid.to_string())
}

fn user_name(uid: u32) -> String {
    crate::sandbox::idmap::user_name(uid).unwrap_or_else(|| uid.to_string())
}

/// Whether the current user can open `path` read-write, by its mode bits
/// (as the kernel decides for an unprivileged user: owner, group, other).
pub fn check_node(path: &Path) -> NodeCheck {
    let Ok(meta) = std::fs::metadata(path) else {
        let is_uvm = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("nvidia-uvm"));
        return NodeCheck {
            path: path.to_path_buf(),
            mode: None,
            owner: String::new(),
            problem: Some(if is_uvm {
                format!("{} is missing: {UVM_FIX}", path.display())
            } else {
                format!(
                    "{} is missing: load the driver and run `nvidia-smi` once as root",
                    path.display()
                )
            }),
        };
    };
    let mode = meta.mode() & 0o7777;
    let owner = format!("{}:{}", user_name(meta.uid()), group_name(meta.gid()));
    let uid = nix::unistd::getuid().as_raw();
    let in_group = meta.gid() == nix::unistd::getgid().as_raw()
        || nix::unistd::getgroups()
            .unwrap_or_default()
            .iter()
            .any(|g| g.as_raw() == meta.gid());
    let rw = |shift: u32| (mode >> shift) & 0o6 == 0o6;
    let usable = if meta.uid() == uid {
        rw(6)
    } else if in_group {
        rw(3)
    } else {
        rw(0)
    };
    let mut problem = None;
    if !usable {
        let group = group_name(meta.gid());
        problem = Some(if rw(3) && !in_group {
            format!(
                "{} is {mode:04o} {owner}: the worker's user {} must be in group `{group}` \
                 (`usermod -aG {group} {}`, then log in again or restart the service)",
                path.display(),
                user_name(uid),
                user_name(uid)
            )
        } else {
            format!(
                "{} is {mode:04o} {owner}: the worker's user {} cannot open it read-write",
                path.display(),
                user_name(uid)
            )
        });
    } else if !meta.file_type().is_char_device() {
        problem = Some(format!("{} is not a character device", path.display()));
    }
    NodeCheck {
        path: path.to_path_buf(),
        mode: Some(mode),
        owner,
        problem,
    }
}

impl std::fmt::Display for HostGpuReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.driver {
            Ok(inv) => {
                writeln!(
                    f,
                    "NVIDIA driver {}{} ({})",
                    inv.driver_version,
                    inv.cuda_version
                        .as_deref()
                        .map(|c| format!(", CUDA {c}"))
                        .unwrap_or_default(),
                    inv.source
                )?;
                for g in &inv.gpus {
                    writeln!(
                        f,
                        "  GPU {}: {} /dev/nvidia{}{}",
                        g.index,
                        g.describe(),
                        g.minor,
                        if g.mig_enabled { " (MIG enabled)" } else { "" }
                    )?;
                }
            }
            Err(e) => writeln!(f, "{e}")?,
        }
        for n in &self.nodes {
            match n.mode {
                Some(m) => writeln!(f, "  {} {m:04o} {}", n.path.display(), n.owner)?,
                None => writeln!(f, "  {} missing", n.path.display())?,
            }
        }
        for s in &self.cdi_specs {
            writeln!(f, "  CDI spec {}", s.display())?;
        }
        for p in &self.problems {
            writeln!(f, "  problem: {p}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn fake_root(gid: u32, mode: u32) -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::create_dir_all(r.join("proc/driver/nvidia/gpus/0000:01:00.0")).unwrap();
        std::fs::write(
            r.join("proc/driver/nvidia/version"),
            "NVRM version: NVIDIA UNIX x86_64 Kernel Module  999.88.77  Release Build\n",
        )
        .unwrap();
        std::fs::write(
            r.join("proc/driver/nvidia/gpus/0000:01:00.0/information"),
            "Model: \t Fake GPU\nGPU UUID: \t GPU-11111111-2222-3333-4444-555555555555\nBus Location: \t 0000:01:00.0\nDevice Minor: \t 0\n",
        )
        .unwrap();
        std::fs::create_dir_all(r.join("dev")).unwrap();
        for n in ["nvidiactl", "nvidia0"] {
            let p = r.join("dev").join(n);
            std::fs::write(&p, "").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            std::os::unix::fs::chown(&p, Some(gid), Some(gid)).unwrap();
        }
        t
    }

    #[test]
    fn a_missing_uvm_node_is_reported_with_the_command_that_creates_it() {
        let t = fake_root(0, 0o666);
        let r = host_report(t.path());
        let inv = r.driver.as_ref().unwrap();
        assert_eq!(inv.driver_version, "999.88.77");
        assert_eq!(inv.gpus[0].name, "Fake GPU");
        let uvm = r
            .problems
            .iter()
            .find(|p| p.contains("dev/nvidia-uvm is missing"))
            .unwrap_or_else(|| panic!("{:?}", r.problems));
        assert!(uvm.contains("nvidia-modprobe -u -c0"), "{uvm}");
        assert!(r.to_string().contains("GPU 0: Fake GPU"), "{r}");
    }

    #[test]
    fn a_0660_node_of_a_group_the_user_lacks_names_the_group() {
        if !nix::unistd::geteuid().is_root() {
            return; // needs chown to another group
        }
        // A gid no process here has.
        let t = fake_root(54321, 0o660);
        let r = host_report(t.path());
        let p = r
            .problems
            .iter()
            .find(|p| p.contains("nvidia0 is 0660"))
            .unwrap_or_else(|| panic!("{:?}", r.problems));
        assert!(p.contains("must be in group `54321`"), "{p}");
    }

    #[test]
    fn a_cpu_only_host_has_no_problems() {
        let t = tempfile::tempdir().unwrap();
        let r = host_report(t.path());
        assert!(
            matches!(r.driver, Err(NoGpus::NoDriver(_))),
            "{:?}",
            r.driver
        );
        assert!(r.ok(), "{:?}", r.problems);
    }
}
