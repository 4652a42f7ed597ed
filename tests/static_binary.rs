//! The static (musl) build: `scripts/build-static.sh` makes it (cargo
//! rebuilds only what changed), and it must run rootless sandboxes as the
//! unprivileged test user on its own, the binary being its own sandbox
//! helper (`/proc/self/exe __sandbox`), with the seccomp filter on.

mod sandbox_env;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use sandbox_env::{env, Run};

/// The static binary, built once per test run and copied where the test
/// user can execute it.
fn static_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let out = Command::new("bash")
            .arg(root.join("scripts/build-static.sh"))
            .current_dir(root)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "scripts/build-static.sh failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let built = root.join("target/x86_64-unknown-linux-musl/release/compute-worker");
        let e = env();
        let bin = e.work.join("compute-worker-static");
        std::fs::copy(&built, &bin).unwrap();
        if e.as_root {
            std::os::unix::fs::chown(&bin, Some(e.uid), Some(e.gid)).unwrap();
        }
        bin
    })
}

/// `compute-worker exec --rootfs <busybox> -- CMD...` with the static binary.
fn exec(cmd: &[&str]) -> Run {
    let e = env();
    let rootfs = e.rootfs.to_string_lossy().into_owned();
    let mut args = vec!["exec", "--rootfs", &rootfs, "--"];
    args.extend_from_slice(cmd);
    Run(e.command_of(static_bin(), &args).output().unwrap())
}

#[test]
fn file_says_it_is_statically_linked() {
    let out = Command::new("file").arg(static_bin()).output().unwrap();
    let kind = String::from_utf8_lossy(&out.stdout);
    assert!(
        kind.contains("statically linked") || kind.contains("static-pie linked"),
        "{kind}"
    );
    let ldd = Command::new("ldd").arg(static_bin()).output().unwrap();
    let text = String::from_utf8_lossy(&ldd.stdout) + String::from_utf8_lossy(&ldd.stderr);
    assert!(!text.contains("=>"), "shared libraries: {text}");
}

#[test]
fn version_runs_as_the_test_user() {
    let out = Run(env()
        .command_of(static_bin(), &["--version"])
        .output()
        .unwrap())
    .ok();
    assert_eq!(
        out.trim(),
        format!("compute-worker {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn exec_runs_busybox_in_a_rootless_sandbox() {
    exec(&["busybox", "true"]).ok();
    let out = exec(&["sh", "-c", "echo hello from $(id -u); exit 3"]);
    assert_eq!(out.code(), 3, "{}", out.stderr());
    assert_eq!(out.stdout(), "hello from 0\n");
}

#[test]
fn the_seccomp_filter_is_on() {
    // `unshare -U` needs no capability: only the filter refuses it.
    let out = exec(&[
        "sh",
        "-c",
        "unshare -U true && echo unshared || echo refused",
    ])
    .ok();
    assert_eq!(out, "refused\n");
}

/// `doctor` from the static binary passes the sandbox checks for the test
/// user: its overlay probe runs the binary as its own helper too.
#[test]
fn doctor_runs_as_the_test_user() {
    let e = env();
    let cgroup = e.cgroup_opts();
    let mut args = vec!["doctor", "--json"];
    args.extend(cgroup.iter().map(String::as_str));
    let out = e
        .command_of(static_bin(), &args)
        .env("BROKER_URL", "pyamqp://guest:guest@127.0.0.1:5672//")
        .output()
        .unwrap();
    let rows = sandbox_env::doctor_rows(&out);
    for check in [
        "user namespaces",
        "subuid",
        "subgid",
        "newuidmap",
        "overlay in userns",
        "broker",
    ] {
        let (status, detail, fix) = &rows[check];
        assert_eq!(status, "ok", "{check}: {detail} / {fix}");
    }
    assert_eq!(out.status.code(), Some(0), "{rows:?}");
}
