//! The seccomp floor is Docker's default profile: system calls Docker
//! refuses a container without added capabilities are refused here too,
//! seen from a real program in a real sandbox. (The walk over every system
//! call number against the fixture list runs the compiled filter in a BPF
//! interpreter: `tests/seccomp_walk.rs`.)

mod sandbox_env;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use sandbox_env::env;

/// The static `syscheck` program (tests/fixtures/seccomp/syscheck.c).
fn syscheck() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let bin = env().work.join("syscheck");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/seccomp/syscheck.c");
        let out = Command::new("gcc")
            .args(["-static", "-O1", "-o"])
            .arg(&bin)
            .arg(src)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "gcc: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        bin
    })
}

fn run_syscheck(opts: &[&str]) -> String {
    let bind = format!("{}:/syscheck:ro", syscheck().display());
    let mut all = vec!["--bind", bind.as_str()];
    all.extend_from_slice(opts);
    env().exec(&all, &["/syscheck"]).ok()
}

#[test]
fn io_uring_and_vsock_sockets_are_refused_with_eperm() {
    for network in ["none", "host"] {
        let out = run_syscheck(&["--network", network]);
        for refused in [
            "io_uring_setup",
            "io_uring_enter",
            "io_uring_register",
            "socket_vsock",
        ] {
            assert!(
                out.contains(&format!("{refused}=EPERM\n")),
                "{refused} with network {network}: {out}"
            );
        }
        // Other families still work.
        assert!(out.contains("socket_unix=ok\n"), "{out}");
        assert!(out.contains("socket_inet=ok\n"), "{out}");
    }
}
