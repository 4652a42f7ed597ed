//! The default seccomp filter: Docker's default profile as the floor (see
//! `seccomp_profile.rs`, the profile as data). An allow list: the system
//! calls Docker lets a container without added capabilities make, minus a
//! few we refuse as well (io_uring above all); `socket` for every family
//! but AF_VSOCK, `personality` with Docker's personas, `clone` without
//! namespace flags. Everything else fails with EPERM; `clone3` and system
//! calls newer than the profile fail with ENOSYS, so that C libraries fall
//! back. The native, 32-bit and x32 system call tables are all covered (on
//! x86_64).
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

use super::id_mode::IdMode;

/// `struct sock_filter` is 8 bytes: code (u16), jt (u8), jf (u8), k (u32).
const INSN: usize = 8;
/// The kernel refuses longer programs (BPF_MAXINSNS).
const MAX_INSNS: usize = 4096;

#[cfg(feature = "seccomp")]
const EPERM: u16 = 1;
#[cfg(feature = "seccomp")]
const ENOSYS: u16 = 38;

/// A compiled filter: a BPF program (`struct sock_filter` array) as bytes.
pub type Program = Vec<u8>;

/// The default filter, from the cache under `cache_dir` or compiled (and
/// then cached). `Ok(None)` when this build has no seccomp support.
pub fn default_program(cache_dir: &Path) -> Result<Option<Program>, String> {
    program_for(cache_dir, IdMode::Subids)
}

/// The filter of a sandbox in `mode`: in single-id mode, the default one
/// with `seccomp_single_id::NO_EFFECT` answered 0 instead of run.
pub fn program_for(cache_dir: &Path, mode: IdMode) -> Result<Option<Program>, String> {
    #[cfg(feature = "seccomp")]
    {
        compiled::load_or_compile(cache_dir, mode).map(Some)
    }
    #[cfg(not(feature = "seccomp"))]
    {
        let _ = (cache_dir, mode);
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

/// What the container's init process runs last: resets the signal state
/// (see `signals.rs`), installs the filter (when there is one), then execs the program as libcontainer's default does.
/// libcontainer has set no_new_privs and dropped every capability by then.
#[derive(Clone)]
pub struct Executor {
    pub program: Option<Program>,
}

impl RunPayload for Executor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        super::signals::reset_for_exec()
            .map_err(|e| ExecutorError::Other(format!("resetting signal dispositions: {e}")))?;
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

    use super::super::seccomp_profile as profile;
    use super::super::seccomp_single_id::NO_EFFECT;
    use super::{IdMode, Program, ENOSYS, EPERM};

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
    fn cache_file(cache_dir: &Path, mode: IdMode) -> PathBuf {
        let version = ScmpVersion::current()
            .map(|v| format!("{}.{}.{}", v.major, v.minor, v.micro))
            .unwrap_or_default();
        let mut h = Sha256::new();
        h.update(format!(
            "v2 {version} {:?} {:?} {:?} {} {:?} {:x} {:?} {EPERM} {ENOSYS}",
            ScmpArch::native(),
            extra_arches(),
            profile::ALLOWED,
            profile::SOCKET_DENIED_FAMILY,
            profile::PERSONALITY_ALLOWED,
            profile::CLONE_NAMESPACE_MASK,
            profile::ENOSYS,
        ));
        if mode == IdMode::Single {
            h.update(format!("single-id {NO_EFFECT:?}"));
        }
        let key = hex::encode(&h.finalize()[..12]);
        cache_dir.join(format!("seccomp-{key}.bpf"))
    }

    pub fn load_or_compile(cache_dir: &Path, mode: IdMode) -> Result<Program, String> {
        let file = cache_file(cache_dir, mode);
        if let Ok(bytes) = fs::read(&file) {
            if super::well_formed(&bytes) {
                return Ok(bytes);
            }
        }
        let program = compile(mode).map_err(|e| format!("compiling the seccomp filter: {e:#}"))?;
        // A cache that cannot be written only costs the next run the compile.
        let tmp = file.with_extension(format!("tmp{}", std::process::id()));
        if super::super::rundir::create_private_dir(cache_dir).is_ok()
            && fs::write(&tmp, &program).is_ok()
        {
            if fs::rename(&tmp, &file).is_err() {
                let _ = fs::remove_file(&tmp);
            }
            remove_other_programs(cache_dir, &file, mode);
        }
        Ok(program)
    }

    /// Programs cached by other builds (other rules or libseccomp).
    fn remove_other_programs(cache_dir: &Path, keep: &Path, mode: IdMode) {
        // The other mode's program is current too (one state directory may
        // serve workers of both modes).
        let other = match mode {
            IdMode::Subids => cache_file(cache_dir, IdMode::Single),
            IdMode::Single => cache_file(cache_dir, IdMode::Subids),
        };
        let Ok(entries) = fs::read_dir(cache_dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("seccomp-")
                && name.ends_with(".bpf")
                && e.path() != keep
                && e.path() != other
            {
                let _ = fs::remove_file(e.path());
            }
        }
    }

    pub fn compile(mode: IdMode) -> anyhow::Result<Program> {
        let mut ctx = ScmpFilterContext::new(ScmpAction::Errno(EPERM.into()))?;
        for &arch in extra_arches() {
            ctx.add_arch(arch)?;
        }
        // The init process sets no_new_privs itself before installing it.
        ctx.set_ctl_nnp(false)?;
        // A name unknown to this libseccomp (hence to no table the filter
        // covers) has nothing to allow or refuse.
        let known = |name: &str| ScmpSyscall::from_name(name).ok();
        let no_effect = |name: &&str| mode == IdMode::Single && NO_EFFECT.contains(name);
        for sc in profile::ALLOWED
            .iter()
            .filter(|n| !no_effect(n))
            .filter_map(|n| known(n))
        {
            ctx.add_rule(ScmpAction::Allow, sc)?;
        }
        if mode == IdMode::Single {
            for sc in NO_EFFECT.iter().filter_map(|n| known(n)) {
                ctx.add_rule(ScmpAction::Errno(0), sc)?;
            }
        }
        for sc in profile::ENOSYS.iter().filter_map(|n| known(n)) {
            ctx.add_rule(ScmpAction::Errno(ENOSYS.into()), sc)?;
        }
        let arg0 = |op, value| [ScmpArgCompare::new(0, op, value)];
        ctx.add_rule_conditional(
            ScmpAction::Allow,
            ScmpSyscall::from_name("socket")?,
            &arg0(ScmpCompareOp::NotEqual, profile::SOCKET_DENIED_FAMILY),
        )?;
        let personality = ScmpSyscall::from_name("personality")?;
        for &persona in profile::PERSONALITY_ALLOWED {
            ctx.add_rule_conditional(
                ScmpAction::Allow,
                personality,
                &arg0(ScmpCompareOp::Equal, persona),
            )?;
        }
        ctx.add_rule_conditional(
            ScmpAction::Allow,
            ScmpSyscall::from_name("clone")?,
            &arg0(ScmpCompareOp::MaskedEqual(profile::CLONE_NAMESPACE_MASK), 0),
        )?;
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
            let p = super::load_or_compile(dir.path(), super::IdMode::Subids).unwrap();
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
            assert_eq!(
                super::load_or_compile(dir.path(), super::IdMode::Subids).unwrap(),
                p
            );
            assert_eq!(std::fs::read(&file).unwrap(), p);
        }
    }
}
