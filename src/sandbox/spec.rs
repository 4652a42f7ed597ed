//! The OCI runtime spec (`config.json`) of one sandbox run.
//!
//! The container is created from inside the worker's own user namespace
//! (podman's model), so the spec carries no user namespace and no id maps,
//! and never any device cgroup rule (they break rootless youki on cgroup v1).
//! Nor any seccomp profile: the filter is compiled once and installed by the
//! init process's executor (see `seccomp.rs`).

use std::path::Path;

use serde_json::{json, Value};

use super::types::{Limits, Network, RunSpec};

/// Paths hidden from the sandbox (bind-mounted over with /dev/null or an
/// empty read-only tmpfs), as in Docker's default profile.
const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/devices/virtual/powercap",
    "/sys/firmware",
];

/// Paths the sandbox sees read-only.
const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Where the run's cgroup lives, when the host delegated one to us.
pub struct CgroupSettings<'a> {
    /// Path inside the cgroup hierarchy (e.g. `/compute-worker/<run id>`).
    pub path: &'a Path,
    /// cpuset.mems to pair with a cpuset limit (cgroup v1 needs both).
    pub mems: Option<&'a str>,
    /// The run cgroup has the `pids` controller: the pids limit goes
    /// there (else to `RLIMIT_NPROC`).
    pub pids: bool,
}

/// The keeper's hard rlimits: a sandbox never gets more (hard limits
/// cannot be raised here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HardLimits {
    pub nofile: u64,
    pub nproc: u64,
    pub fsize: u64,
}

impl HardLimits {
    /// This process's hard limits.
    pub fn current() -> HardLimits {
        use nix::sys::resource::{getrlimit, Resource};
        let hard = |r, default| getrlimit(r).map(|(_, hard)| hard).unwrap_or(default);
        HardLimits {
            nofile: hard(Resource::RLIMIT_NOFILE, 1024),
            nproc: hard(Resource::RLIMIT_NPROC, u64::MAX),
            fsize: hard(Resource::RLIMIT_FSIZE, u64::MAX),
        }
    }
}

/// The rlimits of the program: `RLIMIT_NOFILE` at the hard limit, no core
/// dumps, the pids limit as `RLIMIT_NPROC` when no cgroup takes it, and
/// no file larger than the write limit (`RLIMIT_FSIZE` = the limit + 1
/// byte, so that a file stopped there is past the limit when measured).
fn rlimits(run: &RunSpec, pids_in_cgroup: bool, hard: &HardLimits) -> Vec<Value> {
    let mut r = vec![
        json!({"type": "RLIMIT_NOFILE", "soft": hard.nofile, "hard": hard.nofile}),
        json!({"type": "RLIMIT_CORE", "soft": 0, "hard": 0}),
    ];
    if let (Some(max), false) = (run.limits.pids.filter(|p| *p > 0), pids_in_cgroup) {
        let n = (max as u64).min(hard.nproc);
        r.push(json!({"type": "RLIMIT_NPROC", "soft": n, "hard": n}));
    }
    if let Some(cap) = run.limits.write_max.filter(|c| *c > 0) {
        let n = cap.saturating_add(1).min(hard.fsize);
        r.push(json!({"type": "RLIMIT_FSIZE", "soft": n, "hard": n}));
    }
    r
}

/// Build `config.json` for `run`, with the merged rootfs at `rootfs`.
///
/// `hard` holds the caller's hard limits: the sandbox never gets more.
/// `resolv_conf`, when given, is bound read-only on `/etc/resolv.conf`
/// (the run's own, with pasta's DNS forwarder).
pub fn build(
    run: &RunSpec,
    rootfs: &Path,
    cgroup: Option<&CgroupSettings<'_>>,
    hard: &HardLimits,
    resolv_conf: Option<&Path>,
) -> Value {
    let mut linux = json!({
        "namespaces": [
            {"type": "pid"}, {"type": "ipc"}, {"type": "uts"},
            {"type": "mount"}, {"type": "cgroup"},
        ],
        "maskedPaths": MASKED_PATHS,
        "readonlyPaths": READONLY_PATHS,
        "rootfsPropagation": "private",
    });
    let pids_in_cgroup = cgroup.is_some_and(|cg| cg.pids);
    if let Some(cg) = cgroup {
        linux["cgroupsPath"] = json!(cg.path);
        if !run.limits.is_empty() {
            linux["resources"] = resources(&run.limits, cg);
        }
    }
    json!({
        "ociVersion": "1.0.2",
        "root": {"path": rootfs, "readonly": run.read_only},
        "hostname": run.hostname,
        "mounts": mounts(run, resolv_conf),
        "process": {
            "terminal": false,
            "user": {"uid": run.uid, "gid": run.gid},
            "args": run.args,
            "env": run.env,
            "cwd": run.cwd,
            "capabilities": {
                "bounding": [], "effective": [], "inheritable": [],
                "permitted": [], "ambient": [],
            },
            "noNewPrivileges": true,
            "rlimits": rlimits(run, pids_in_cgroup, hard),
        },
        "linux": linux,
    })
}

fn resources(limits: &Limits, cg: &CgroupSettings<'_>) -> Value {
    let mut r = json!({});
    if let Some(bytes) = limits.memory {
        // Same value for memory+swap: the program cannot swap its way past it.
        r["memory"] = json!({"limit": bytes, "swap": bytes});
    }
    if let (Some(max), true) = (limits.pids.filter(|p| *p > 0), cg.pids) {
        r["pids"] = json!({"limit": max});
    }
    if let Some(cpus) = &limits.cpus {
        r["cpu"] = json!({"cpus": cpus});
        if let Some(mems) = cg.mems {
            r["cpu"]["mems"] = json!(mems);
        }
    }
    r
}

fn mounts(run: &RunSpec, resolv_conf: Option<&Path>) -> Vec<Value> {
    // The tty group owns the ptys, when this namespace has it (single-id
    // mode maps gid 0 only: a devpts with gid=5 would not mount).
    let mut devpts = vec![
        "nosuid",
        "noexec",
        "newinstance",
        "ptmxmode=0666",
        "mode=0620",
    ];
    if super::id_mode::gid_mapped_here(5) {
        devpts.push("gid=5");
    }
    let mut m = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": devpts}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
               "options": ["nosuid", "noexec", "nodev"]}),
    ];
    m.push(match run.network {
        // A sysfs mount needs the network namespace to be ours.
        Network::None | Network::Pasta => {
            json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
                                "options": ["nosuid", "noexec", "nodev", "ro"]})
        }
        Network::Host => json!({"destination": "/sys", "type": "bind", "source": "/sys",
                                "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]}),
    });
    let resolv = match run.network {
        Network::Host => Some(Path::new("/etc/resolv.conf")).filter(|p| p.exists()),
        Network::Pasta => resolv_conf,
        Network::None => None,
    };
    if let Some(source) = resolv {
        m.push(json!({"destination": "/etc/resolv.conf", "type": "bind",
                      "source": source,
                      "options": ["bind", "nosuid", "nodev", "noexec", "ro"]}));
    }
    for b in &run.binds {
        m.push(json!({
            "destination": b.destination,
            "type": "bind",
            "source": b.source,
            "options": ["rbind", "rprivate", "nosuid", "nodev", if b.read_only { "ro" } else { "rw" }],
        }));
    }
    // After /dev: a device node keeps working through a bind mount (its
    // superblock is the host's devtmpfs), but not with `nodev`.
    for d in &run.devices {
        m.push(json!({
            "destination": d.destination,
            "type": "bind",
            "source": d.source,
            "options": ["bind", "rprivate", "nosuid", "noexec", "rw"],
        }));
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::types::Bind;

    #[test]
    fn spec_is_a_valid_rootless_oci_spec() {
        let mut run = RunSpec::new("/img", vec!["true".into()]);
        run.binds.push(Bind {
            source: "/data".into(),
            destination: "/app/data".into(),
            read_only: true,
        });
        run.limits.memory = Some(1 << 28);
        let cg = CgroupSettings {
            path: Path::new("/cw/run1"),
            mems: Some("0"),
            pids: true,
        };
        let v = build(&run, Path::new("/r/rootfs"), Some(&cg), &HARD, None);
        let spec: oci_spec::runtime::Spec = serde_json::from_value(v).unwrap();
        let linux = spec.linux().as_ref().unwrap();
        let res = linux.resources().as_ref().unwrap();
        assert!(res.devices().as_ref().is_none_or(|d| d.is_empty()));
        assert_eq!(res.memory().as_ref().unwrap().limit(), Some(1 << 28));
        assert!(linux.uid_mappings().is_none());
        let caps = spec.process().as_ref().unwrap().capabilities().as_ref();
        assert!(caps.unwrap().effective().as_ref().unwrap().is_empty());
        let data = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.destination() == Path::new("/app/data"))
            .unwrap();
        assert!(data.options().as_ref().unwrap().contains(&"ro".to_string()));
    }

    #[test]
    fn device_binds_are_read_write_without_nodev() {
        let mut run = RunSpec::new("/img", vec!["true".into()]);
        run.devices.push(Bind {
            source: "/dev/null".into(),
            destination: "/dev/nvidia0".into(),
            read_only: false,
        });
        let v = build(&run, Path::new("/r"), None, &HARD, None);
        let m = v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/dev/nvidia0")
            .unwrap();
        let opts: Vec<&str> = m["options"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o.as_str().unwrap())
            .collect();
        assert!(opts.contains(&"rw") && !opts.contains(&"nodev"), "{opts:?}");
    }

    const HARD: HardLimits = HardLimits {
        nofile: 1024,
        nproc: 5000,
        fsize: u64::MAX,
    };

    fn rlimit(v: &Value, kind: &str) -> Option<u64> {
        v["process"]["rlimits"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["type"] == kind)
            .map(|r| r["soft"].as_u64().unwrap())
    }

    #[test]
    fn no_cgroup_means_no_resources_and_nproc_bounds_the_pids() {
        let mut run = RunSpec::new("/img", vec!["true".into()]);
        run.limits.pids = Some(10);
        let v = build(&run, Path::new("/r"), None, &HARD, None);
        assert!(v["linux"].get("resources").is_none());
        assert!(v["linux"].get("cgroupsPath").is_none());
        assert_eq!(rlimit(&v, "RLIMIT_NPROC"), Some(10));
        // Never above the hard limit.
        run.limits.pids = Some(9000);
        let v = build(&run, Path::new("/r"), None, &HARD, None);
        assert_eq!(rlimit(&v, "RLIMIT_NPROC"), Some(5000));
    }

    #[test]
    fn a_cgroup_with_pids_takes_the_pids_limit() {
        let mut run = RunSpec::new("/img", vec!["true".into()]);
        run.limits.pids = Some(10);
        run.limits.write_max = Some(100);
        let mut cg = CgroupSettings {
            path: Path::new("/cw/run1"),
            mems: None,
            pids: true,
        };
        let v = build(&run, Path::new("/r"), Some(&cg), &HARD, None);
        assert_eq!(v["linux"]["resources"]["pids"]["limit"], 10);
        assert_eq!(rlimit(&v, "RLIMIT_NPROC"), None);
        assert_eq!(rlimit(&v, "RLIMIT_FSIZE"), Some(101));
        cg.pids = false;
        let v = build(&run, Path::new("/r"), Some(&cg), &HARD, None);
        assert!(v["linux"]["resources"].get("pids").is_none());
        assert_eq!(rlimit(&v, "RLIMIT_NPROC"), Some(10));
    }
}
