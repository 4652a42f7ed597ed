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
}

/// Build `config.json` for `run`, with the merged rootfs at `rootfs`.
///
/// `nofile_hard` is the caller's hard RLIMIT_NOFILE: the sandbox gets it as
/// both soft and hard limit, never more (hard limits cannot be raised here).
pub fn build(
    run: &RunSpec,
    rootfs: &Path,
    cgroup: Option<&CgroupSettings<'_>>,
    nofile_hard: u64,
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
    if let Some(cg) = cgroup {
        linux["cgroupsPath"] = json!(cg.path);
        if !run.limits.is_empty() {
            linux["resources"] = resources(&run.limits, cg.mems);
        }
    }
    json!({
        "ociVersion": "1.0.2",
        "root": {"path": rootfs, "readonly": run.read_only},
        "hostname": run.hostname,
        "mounts": mounts(run),
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
            "rlimits": [
                {"type": "RLIMIT_NOFILE", "soft": nofile_hard, "hard": nofile_hard},
                {"type": "RLIMIT_CORE", "soft": 0, "hard": 0},
            ],
        },
        "linux": linux,
    })
}

fn resources(limits: &Limits, mems: Option<&str>) -> Value {
    let mut r = json!({});
    if let Some(bytes) = limits.memory {
        // Same value for memory+swap: the program cannot swap its way past it.
        r["memory"] = json!({"limit": bytes, "swap": bytes});
    }
    if let Some(max) = limits.pids {
        r["pids"] = json!({"limit": max});
    }
    if let Some(cpus) = &limits.cpus {
        r["cpu"] = json!({"cpus": cpus});
        if let Some(mems) = mems {
            r["cpu"]["mems"] = json!(mems);
        }
    }
    r
}

fn mounts(run: &RunSpec) -> Vec<Value> {
    let mut m = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
               "options": ["nosuid", "noexec", "nodev"]}),
    ];
    m.push(match run.network {
        // A sysfs mount needs the network namespace to be ours.
        Network::None => json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
                                "options": ["nosuid", "noexec", "nodev", "ro"]}),
        Network::Host => json!({"destination": "/sys", "type": "bind", "source": "/sys",
                                "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]}),
    });
    if run.network == Network::Host && Path::new("/etc/resolv.conf").exists() {
        m.push(json!({"destination": "/etc/resolv.conf", "type": "bind",
                      "source": "/etc/resolv.conf",
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
        };
        let v = build(&run, Path::new("/r/rootfs"), Some(&cg), 20000);
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
        let v = build(&run, Path::new("/r"), None, 1024);
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

    #[test]
    fn no_cgroup_means_no_resources() {
        let mut run = RunSpec::new("/img", vec!["true".into()]);
        run.limits.pids = Some(10);
        let v = build(&run, Path::new("/r"), None, 1024);
        assert!(v["linux"].get("resources").is_none());
        assert!(v["linux"].get("cgroupsPath").is_none());
    }
}
