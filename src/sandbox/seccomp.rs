//! The default seccomp profile: allow everything but the system calls an
//! unprivileged program has no business making and that widen the kernel's
//! attack surface (new namespaces, keyrings, BPF, userfaultfd, perf, module
//! and kexec loading, clock and swap changes), as Docker's default profile
//! refuses them to containers without CAP_SYS_ADMIN. Refused calls fail
//! with EPERM; `clone3` fails with ENOSYS so that C libraries fall back to
//! `clone`, whose namespace flags can be inspected.
//!
//! Compiled in with the `seccomp` cargo feature (on by default; it links
//! libseccomp). Without it no profile is emitted.

use serde_json::{json, Value};

const EPERM: u32 = 1;
const ENOSYS: u32 = 38;

/// System calls refused outright.
const DENIED: &[&str] = &[
    "acct",
    "add_key",
    "adjtimex",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "get_kernel_syms",
    "init_module",
    "ioperm",
    "iopl",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mount",
    "mount_setattr",
    "move_mount",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "pivot_root",
    "query_module",
    "quotactl",
    "reboot",
    "request_key",
    "setns",
    "settimeofday",
    "stime",
    "swapoff",
    "swapon",
    "syslog",
    "umount",
    "umount2",
    "unshare",
    "userfaultfd",
    "uselib",
    "vhangup",
];

/// `clone` flags that create namespaces.
const NAMESPACE_FLAGS: &[u64] = &[
    0x0002_0000, // CLONE_NEWNS
    0x0200_0000, // CLONE_NEWCGROUP
    0x0400_0000, // CLONE_NEWUTS
    0x0800_0000, // CLONE_NEWIPC
    0x1000_0000, // CLONE_NEWUSER
    0x2000_0000, // CLONE_NEWPID
    0x4000_0000, // CLONE_NEWNET
];

fn architectures() -> Vec<&'static str> {
    if cfg!(target_arch = "x86_64") {
        vec!["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    } else if cfg!(target_arch = "aarch64") {
        vec!["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    } else {
        vec![]
    }
}

/// `linux.seccomp` of the sandbox's spec.
pub fn default_profile() -> Value {
    let mut syscalls = vec![
        json!({"names": DENIED, "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM}),
        json!({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS}),
    ];
    // One rule per flag: "refuse when (flags & bit) == bit". The flags are
    // the first argument of clone on x86 and arm.
    for bit in NAMESPACE_FLAGS {
        syscalls.push(json!({
            "names": ["clone"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": EPERM,
            "args": [{"index": 0, "value": bit, "valueTwo": bit, "op": "SCMP_CMP_MASKED_EQ"}],
        }));
    }
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": architectures(),
        "syscalls": syscalls,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn profile_is_a_valid_oci_seccomp_section() {
        let s: oci_spec::runtime::LinuxSeccomp =
            serde_json::from_value(super::default_profile()).unwrap();
        let rules = s.syscalls().as_ref().unwrap();
        assert!(rules
            .iter()
            .any(|r| r.names().contains(&"unshare".to_string())));
        assert_eq!(rules.iter().filter(|r| *r.names() == ["clone"]).count(), 7);
    }
}
