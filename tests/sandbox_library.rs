//! The sandbox library API called from a single-threaded program, as the
//! unprivileged test user: the sandbox process is then a clone of the
//! caller (no exec), in a new user namespace per sandbox or, once the
//! configuration holds one, in that namespace.
//!
//! `harness = false` (Cargo.toml): libtest's threads would make the caller
//! multi-threaded and send it down the launcher-exec path instead. As root
//! this program re-runs itself as the test user, in the role a variable
//! names, and checks from the host what the client leaves behind.

mod sandbox_env;

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Output as ProcessOutput, Stdio};
use std::time::{Duration, Instant};

use compute_worker::sandbox::{Output, RunSpec, Sandbox, SandboxConfig};
use sandbox_env::{env, host_processes, processes_in_user_namespace, user_dir, wait_for_process};

const ROLE: &str = "CW_LIBRARY_TEST_ROLE";

fn main() {
    match std::env::var(ROLE).ok().as_deref() {
        Some("namespaces") => client_namespaces(),
        Some("hang") => client_hang(),
        Some(other) => panic!("unknown role {other}"),
        None => {
            let tests: [(&str, fn()); 2] = [
                (
                    "sandboxes_of_a_held_user_namespace_share_it_and_nothing_else",
                    sandboxes_of_a_held_user_namespace_share_it_and_nothing_else,
                ),
                (
                    "sigkill_of_a_caller_holding_a_user_namespace_leaves_nothing",
                    sigkill_of_a_caller_holding_a_user_namespace_leaves_nothing,
                ),
            ];
            for (name, test) in tests {
                eprint!("test {name} ... ");
                test();
                eprintln!("ok");
            }
        }
    }
}

// ---- the host side (root, or the test user itself) ----

/// This test program, copied where the test user can run it, started as
/// that user in `role` with the rootfs and `state` as arguments.
fn client(role: &str, state: &Path) -> Command {
    let e = env();
    let copy = e.work.join("sandbox_library");
    if !copy.exists() {
        fs::copy(std::env::current_exe().unwrap(), &copy).unwrap();
        if e.as_root {
            std::os::unix::fs::chown(&copy, Some(e.uid), Some(e.gid)).unwrap();
        }
    }
    let mut cmd = e.command_of(
        &copy,
        &[
            e.bin.to_str().unwrap(),
            e.rootfs.to_str().unwrap(),
            state.to_str().unwrap(),
        ],
    );
    cmd.env(ROLE, role).env(
        "CW_SUBUID",
        format!("{} {}", e.subuid_start, e.subuid_count),
    );
    cmd
}

#[track_caller]
fn succeeded(out: &ProcessOutput) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "client failed: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn sandboxes_of_a_held_user_namespace_share_it_and_nothing_else() {
    let state = user_dir("library-state", 0o755);
    let out = client("namespaces", &state).output().unwrap();
    let stdout = succeeded(&out);
    let held = stdout
        .lines()
        .find_map(|l| l.strip_prefix("held "))
        .unwrap_or_else(|| panic!("no held namespace reported: {stdout}"));
    assert!(
        processes_in_user_namespace(held).is_empty(),
        "processes left in the held user namespace: {:?}",
        processes_in_user_namespace(held)
    );
    let runs = fs::read_dir(state.join("runs")).unwrap().count();
    assert_eq!(runs, 0, "run directories left");
}

fn sigkill_of_a_caller_holding_a_user_namespace_leaves_nothing() {
    let state = user_dir("library-hang-state", 0o755);
    let mut child = client("hang", &state)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_process("sleep 4292");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    child.wait().unwrap();
    let t = Instant::now();
    while !host_processes("sleep 429").is_empty()
        || fs::read_dir(state.join("runs")).unwrap().count() > 0
    {
        if t.elapsed() > Duration::from_secs(5) {
            let mut err = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut err);
            panic!(
                "left after the caller's SIGKILL: {:?}, runs {:?}; client stderr: {err}",
                host_processes("sleep 429"),
                fs::read_dir(state.join("runs")).unwrap().count()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---- the client side (the test user, one thread) ----

struct ClientArgs {
    binary: PathBuf,
    rootfs: PathBuf,
    state: PathBuf,
}

fn client_args() -> ClientArgs {
    let a: Vec<String> = std::env::args().collect();
    assert_eq!(
        a.len(),
        4,
        "usage: ROLE=.. sandbox_library BIN ROOTFS STATE"
    );
    ClientArgs {
        binary: a[1].clone().into(),
        rootfs: a[2].clone().into(),
        state: a[3].clone().into(),
    }
}

fn single_threaded() -> bool {
    fs::read_dir("/proc/self/task").unwrap().count() == 1
}

/// Run `script` with `sh -c` in a sandbox of `cfg`; its stdout.
fn sh(cfg: &SandboxConfig, rootfs: &Path, script: &str) -> String {
    let run = RunSpec::new(rootfs, vec!["sh".into(), "-c".into(), script.into()]);
    let mut sb = Sandbox::start(cfg, &run, Output::Pipe, Output::Inherit).expect("start");
    let mut out = String::new();
    sb.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    let outcome = sb.wait(cfg).expect("wait");
    assert!(outcome.success(), "{script}: {outcome:?}");
    out
}

const REPORT: &str = "id -u; for ns in user mnt pid net; do readlink /proc/self/ns/$ns; done; \
                      cat /proc/self/uid_map";

/// What a sandbox reports: uid inside, its namespaces, its uid map lines.
struct Report {
    uid: String,
    user_ns: String,
    other_ns: Vec<String>,
    uid_map: Vec<Vec<String>>,
}

fn parse_report(out: &str) -> Report {
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines.len() >= 7, "{out}");
    Report {
        uid: lines[0].to_string(),
        user_ns: lines[1].to_string(),
        other_ns: lines[2..5].iter().map(|s| s.to_string()).collect(),
        uid_map: lines[5..]
            .iter()
            .map(|l| l.split_whitespace().map(String::from).collect())
            .collect(),
    }
}

/// Reports of two sandboxes alive at the same time (namespace numbers are
/// reused once a namespace is gone, so only live ones compare): the first,
/// of `a`, waits while the second, of `b`, runs.
fn reports_side_by_side(a: &SandboxConfig, b: &SandboxConfig, rootfs: &Path) -> [Report; 2] {
    let script = format!("{REPORT}; echo end; exec sleep 60");
    let run = RunSpec::new(rootfs, vec!["sh".into(), "-c".into(), script]);
    let mut first = Sandbox::start(a, &run, Output::Pipe, Output::Inherit).expect("start");
    let mut lines = BufReader::new(first.stdout.take().unwrap()).lines();
    let mut out = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line == "end" {
            break;
        }
        out.push_str(&line);
        out.push('\n');
    }
    let second = parse_report(&sh(b, rootfs, REPORT));
    first.killer().unwrap().kill();
    let _ = first.wait(a);
    [parse_report(&out), second]
}

fn client_namespaces() {
    let args = client_args();
    let uid = nix::unistd::getuid().to_string();
    let sub: Vec<String> = std::env::var("CW_SUBUID")
        .unwrap()
        .split(' ')
        .map(String::from)
        .collect();
    let mut fresh =
        SandboxConfig::for_current_user(args.state.clone(), None, Default::default()).unwrap();
    fresh.binary = args.binary.clone();
    let mut held = fresh.clone();
    held.hold_user_namespace().unwrap();
    assert!(single_threaded(), "the caller must stay single-threaded");

    let own_ns = fs::read_link("/proc/self/ns/user").unwrap();
    let own_ns = own_ns.to_string_lossy();
    let [f1, f2] = reports_side_by_side(&fresh, &fresh, &args.rootfs);
    let [h1, h2] = reports_side_by_side(&held, &held, &args.rootfs);
    for (name, r) in [("fresh", &f1), ("fresh", &f2), ("held", &h1), ("held", &h2)] {
        assert_eq!(r.uid, "0", "{name}: root inside");
        assert_ne!(r.user_ns, own_ns, "{name}: a user namespace of its own");
        assert!(
            r.uid_map
                .contains(&vec!["0".into(), uid.clone(), "1".into()]),
            "{name}: {:?}",
            r.uid_map
        );
        assert!(
            r.uid_map
                .contains(&vec!["1".into(), sub[0].clone(), sub[1].clone()]),
            "{name}: subordinate ids mapped: {:?}",
            r.uid_map
        );
    }
    assert_ne!(f1.user_ns, f2.user_ns, "a new user namespace per sandbox");
    assert_eq!(h1.user_ns, h2.user_ns, "the held user namespace, shared");
    for (a, b) in h1.other_ns.iter().zip(&h2.other_ns) {
        assert_ne!(a, b, "mount, pid and network namespaces of its own");
    }
    // A one-shot task in the held namespace: removing a tree a sandbox
    // left owned by a subordinate uid.
    let dir = args.state.join("owned-by-subordinate");
    let script = "mkdir -p /out/a/b && touch /out/a/b/f";
    let mut run = RunSpec::new(&args.rootfs, vec!["sh".into(), "-c".into(), script.into()]);
    (run.uid, run.gid) = (1000, 1000);
    fs::create_dir_all(&dir).unwrap();
    fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    run.binds.push(compute_worker::sandbox::Bind {
        source: dir.clone(),
        destination: "/out".into(),
        read_only: false,
    });
    let sb = Sandbox::start(&held, &run, Output::Null, Output::Inherit).unwrap();
    assert!(sb.wait(&held).unwrap().success());
    let errors = held.remove_as_root(vec![dir.join("a")]).unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    assert!(!dir.join("a").exists(), "removed in the held namespace");
    assert!(single_threaded(), "the caller stayed single-threaded");
    println!("held {}", h1.user_ns);
}

/// Start a sandbox in a held user namespace and wait for a SIGKILL.
fn client_hang() {
    let args = client_args();
    let mut cfg =
        SandboxConfig::for_current_user(args.state.clone(), None, Default::default()).unwrap();
    cfg.binary = args.binary.clone();
    cfg.hold_user_namespace().unwrap();
    let run = RunSpec::new(
        &args.rootfs,
        vec![
            "sh".into(),
            "-c".into(),
            "sleep 4291 & exec sleep 4292".into(),
        ],
    );
    let sb = Sandbox::start(&cfg, &run, Output::Null, Output::Null).unwrap();
    let _ = sb.wait(&cfg);
    panic!("the sandbox ended before the SIGKILL");
}
