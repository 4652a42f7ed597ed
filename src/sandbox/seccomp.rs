//! The default seccomp filter: allow everything but the system calls an
//! unprivileged program has no business making and that widen the kernel's
//! attack surface (new namespaces, keyrings, BPF, userfaultfd, perf, module
//! and kexec loading, clock and swap changes), as Docker's default profile
//! refuses them to containers without CAP_SYS_ADMIN. Refused calls fail
//! with EPERM; `clone3` fails with ENOSYS so that C libraries fall back to
//! `clone`, whose namespace flags can be inspected. The native, 32-bit and
//! x32 system call tables are all covered (on x86_64).
//!
//! libseccomp compiles the filter into a BPF program once; the program is
//! cached in the state directory (keyed by the rules and libseccomp's
//! version) and handed to every run, whose container init process installs
//! it as its last step before exec ([`Executor`]). Compiling it in every
//! run, as libcontainer does for a profile in `config.json`, cost about a
//! millisecond of each sandbox start.
//!
//! Compiled in with the `seccomp` cargo feature (on by default; it links
//! libseccomp). Without it the sandbox runs with no filter.

use std::path::Path;

use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{Executor as RunPayload, ExecutorError, ExecutorValidationError};
use oci_spec::runtime::Spec;

/// `struct sock_filter` is 8 bytes: code (u16), jt (u8), jf (u8), k (u32).
const INSN: usize = 8;
/// The kernel refuses longer programs (BPF_MAXINSNS).
const MAX_INSNS: usize = 4096;

#[cfg(feature = "seccomp")]
const EPERM: u16 = 1;
#[cfg(feature = "seccomp")]
const ENOSYS: u16 = 38;

/// System calls refused outright.
pub const DENIED: &[&str] = &[
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

/// `clone` flags that create namespaces: `clone` is refused when its
/// first argument has any of them.
pub const NAMESPACE_FLAGS: &[u64] = &[
    0x0002_0000, // CLONE_NEWNS
    0x0200_0000, // CLONE_NEWCGROUP
    0x0400_0000, // CLONE_NEWUTS
    0x0800_0000, // CLONE_NEWIPC
    0x1000_0000, // CLONE_NEWUSER
    0x2000_0000, // CLONE_NEWPID
    0x4000_0000, // CLONE_NEWNET
];

/// A compiled filter: a BPF program (`struct sock_filter` array) as bytes.
pub type Program = Vec<u8>;

/// The default filter, from the cache under `cache_dir` or compiled (and
/// then cached). `Ok(None)` when this build has no seccomp support.
pub fn default_program(cache_dir: &Path) -> Result<Option<Program>, String> {
    #[cfg(feature = "seccomp")]
    {
        compiled::load_or_compile(cache_dir).map(Some)
    }
    #[cfg(not(feature = "seccomp"))]
    {
        let _ = cache_dir;
        Ok(None)
    }
}

/// True when `bytes` has the shape of a BPF program the kernel takes.
pub fn well_formed(bytes: &[u8]) -> bool {
    !bytes.is_empty() && bytes.len() % INSN == 0 && bytes.len() / INSN <= MAX_INSNS
}

/// Install `program` as this thread's seccomp filter. The caller must have
/// set no_new_privs (or hold CAP_SYS_ADMIN).
pub fn install(program: &[u8]) -> std::io::Result<()> {
    if !well_formed(program) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not a BPF program ({} bytes)", program.len()),
        ));
    }
    // Copy into properly aligned instructions.
    let insns: Vec<libc::sock_filter> = program
        .chunks_exact(INSN)
        .map(|c| libc::sock_filter {
            code: u16::from_ne_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect();
    let prog = libc::sock_fprog {
        len: insns.len() as u16,
        filter: insns.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `prog` points at `insns`, which outlives the call; the kernel
    // copies the program.
    let r = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            &prog as *const libc::sock_fprog as libc::c_ulong,
            0,
            0,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// What the container's init process runs last: installs the filter (when
/// there is one), then execs the program as libcontainer's default does.
/// libcontainer has set no_new_privs and dropped every capability by then.
#[derive(Clone)]
pub struct Executor {
    pub program: Option<Program>,
}

impl RunPayload for Executor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        if let Some(p) = &self.program {
            install(p)
                .map_err(|e| ExecutorError::Other(format!("installing the seccomp filter: {e}")))?;
        }
        DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)
    }
}

#[cfg(feature = "seccomp")]
mod compiled {
    use std::fs;
    use std::io::Read;
    use std::path::{Path, PathBuf};

    use libseccomp::{
        ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
        ScmpVersion,
    };
    use sha2::{Digest, Sha256};

    use super::{Program, DENIED, ENOSYS, EPERM, NAMESPACE_FLAGS};

    fn extra_arches() -> &'static [ScmpArch] {
        if cfg!(target_arch = "x86_64") {
            &[ScmpArch::X86, ScmpArch::X32]
        } else if cfg!(target_arch = "aarch64") {
            &[ScmpArch::Arm]
        } else {
            &[]
        }
    }

    /// The cache file: named after everything the program depends on.
    fn cache_file(cache_dir: &Path) -> PathBuf {
        let version = ScmpVersion::current()
            .map(|v| format!("{}.{}.{}", v.major, v.minor, v.micro))
            .unwrap_or_default();
        let mut h = Sha256::new();
        h.update(format!(
            "v1 {version} {:?} {:?} {DENIED:?} {NAMESPACE_FLAGS:?} {EPERM} {ENOSYS}",
            ScmpArch::native(),
            extra_arches()
        ));
        let key = hex::encode(&h.finalize()[..12]);
        cache_dir.join(format!("seccomp-{key}.bpf"))
    }

    pub fn load_or_compile(cache_dir: &Path) -> Result<Program, String> {
        let file = cache_file(cache_dir);
        if let Ok(bytes) = fs::read(&file) {
            if super::well_formed(&bytes) {
                return Ok(bytes);
            }
        }
        let program = compile().map_err(|e| format!("compiling the seccomp filter: {e:#}"))?;
        // A cache that cannot be written only costs the next run the compile.
        let tmp = file.with_extension(format!("tmp{}", std::process::id()));
        if fs::create_dir_all(cache_dir).is_ok() && fs::write(&tmp, &program).is_ok() {
            if fs::rename(&tmp, &file).is_err() {
                let _ = fs::remove_file(&tmp);
            }
            remove_other_programs(cache_dir, &file);
        }
        Ok(program)
    }

    /// Programs cached by other builds (other rules or libseccomp).
    fn remove_other_programs(cache_dir: &Path, keep: &Path) {
        let Ok(entries) = fs::read_dir(cache_dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("seccomp-") && name.ends_with(".bpf") && e.path() != keep {
                let _ = fs::remove_file(e.path());
            }
        }
    }

    pub fn compile() -> anyhow::Result<Program> {
        let mut ctx = ScmpFilterContext::new(ScmpAction::Allow)?;
        for &arch in extra_arches() {
            ctx.add_arch(arch)?;
        }
        // The init process sets no_new_privs itself before installing it.
        ctx.set_ctl_nnp(false)?;
        let eperm = ScmpAction::Errno(EPERM.into());
        for name in DENIED {
            // A name unknown to this libseccomp (hence to no table the
            // filter covers) has nothing to refuse.
            if let Ok(sc) = ScmpSyscall::from_name(name) {
                ctx.add_rule(eperm, sc)?;
            }
        }
        ctx.add_rule(
            ScmpAction::Errno(ENOSYS.into()),
            ScmpSyscall::from_name("clone3")?,
        )?;
        let clone = ScmpSyscall::from_name("clone")?;
        for &bit in NAMESPACE_FLAGS {
            ctx.add_rule_conditional(
                eperm,
                clone,
                &[ScmpArgCompare::new(0, ScmpCompareOp::MaskedEqual(bit), bit)],
            )?;
        }
        // Through a pipe: libseccomp 2.5 exports to a file descriptor only.
        // (The program is at most 32 KiB: it fits in the pipe's buffer.)
        let (r, w) = nix::unistd::pipe()?;
        ctx.export_bpf(&w)?;
        drop(w);
        let mut program = Vec::new();
        fs::File::from(r).read_to_end(&mut program)?;
        Ok(program)
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn compiles_to_a_program_the_kernel_takes_and_caches_it() {
            let dir = tempfile::tempdir().unwrap();
            let p = super::load_or_compile(dir.path()).unwrap();
            assert!(super::super::well_formed(&p), "{} bytes", p.len());
            let cached: Vec<_> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            assert_eq!(cached.len(), 1, "{cached:?}");
            assert!(cached[0].starts_with("seccomp-") && cached[0].ends_with(".bpf"));
            // A damaged cache file is compiled again and replaced.
            let file = dir.path().join(&cached[0]);
            std::fs::write(&file, b"garbage").unwrap();
            assert_eq!(super::load_or_compile(dir.path()).unwrap(), p);
            assert_eq!(std::fs::read(&file).unwrap(), p);
        }
    }
}
