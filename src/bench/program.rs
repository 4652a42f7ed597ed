//! The trivial program every runtime starts: `/true`, a static ELF of one
//! `exit_group(0)` written by this module (no busybox, no libc, no loader:
//! what is measured is the runtime, not the program), in a rootfs with the
//! directories a runtime mounts over.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Where the program lives in the rootfs.
pub const PATH_IN_ROOTFS: &str = "/true";

/// Base address of the one loadable segment.
const BASE: u64 = 0x40_0000;
const EHDR: usize = 64;
const PHDR: usize = 56;

/// `exit_group(0)` for this machine's architecture.
fn exit_code() -> io::Result<(u16, &'static [u8])> {
    match std::env::consts::ARCH {
        // xor edi, edi; mov eax, 231; syscall
        "x86_64" => Ok((62, &[0x31, 0xff, 0xb8, 0xe7, 0, 0, 0, 0x0f, 0x05])),
        // mov x0, #0; mov x8, #94; svc #0
        "aarch64" => Ok((
            183,
            &[0, 0, 0x80, 0xd2, 0xc8, 0x0b, 0x80, 0xd2, 0x01, 0, 0, 0xd4],
        )),
        other => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("no built-in /true for {other}"),
        )),
    }
}

/// The ELF image of `/true`.
pub fn elf() -> io::Result<Vec<u8>> {
    let (machine, code) = exit_code()?;
    let size = (EHDR + PHDR + code.len()) as u64;
    let mut f = Vec::with_capacity(size as usize);
    // ELF header: 64-bit, little endian, version 1, System V.
    f.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    f.extend_from_slice(&[0; 8]);
    f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f.extend_from_slice(&machine.to_le_bytes());
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&(BASE + (EHDR + PHDR) as u64).to_le_bytes()); // entry
    f.extend_from_slice(&(EHDR as u64).to_le_bytes()); // program headers
    f.extend_from_slice(&0u64.to_le_bytes()); // no section headers
    f.extend_from_slice(&0u32.to_le_bytes()); // flags
    f.extend_from_slice(&(EHDR as u16).to_le_bytes());
    f.extend_from_slice(&(PHDR as u16).to_le_bytes());
    f.extend_from_slice(&1u16.to_le_bytes());
    f.extend_from_slice(&[0; 6]); // section header size, count, names
                                  // One PT_LOAD, read and execute, of the whole file.
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&5u32.to_le_bytes());
    f.extend_from_slice(&0u64.to_le_bytes());
    f.extend_from_slice(&BASE.to_le_bytes());
    f.extend_from_slice(&BASE.to_le_bytes());
    f.extend_from_slice(&size.to_le_bytes());
    f.extend_from_slice(&size.to_le_bytes());
    f.extend_from_slice(&0x1000u64.to_le_bytes());
    f.extend_from_slice(code);
    debug_assert_eq!(f.len() as u64, size);
    Ok(f)
}

/// Make `dir` a rootfs holding `/true` and the mount points runtimes use.
pub fn make_rootfs(dir: &Path) -> io::Result<()> {
    for d in ["proc", "sys", "dev", "tmp", "etc", "root"] {
        fs::create_dir_all(dir.join(d))?;
    }
    fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/true\n")?;
    fs::write(dir.join("etc/group"), "root:x:0:\n")?;
    let program = dir.join(PATH_IN_ROOTFS.trim_start_matches('/'));
    fs::write(&program, elf()?)?;
    fs::set_permissions(&program, fs::Permissions::from_mode(0o755))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_program_exits_zero_on_this_host() {
        let dir = std::env::temp_dir().join(format!("cw-bench-true-{}", std::process::id()));
        make_rootfs(&dir).unwrap();
        let status = std::process::Command::new(dir.join("true"))
            .status()
            .unwrap();
        fs::remove_dir_all(&dir).unwrap();
        assert!(status.success(), "{status}");
    }
}
