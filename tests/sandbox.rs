//! The rootless sandbox, driven through `compute-worker exec` as an
//! unprivileged user with real user namespaces, overlayfs and cgroups.

mod sandbox_env;

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use sandbox_env::{env, host_processes, user_dir, wait_for_process};

/// Serializes the tests that use the delegated cgroup subtree, so that
/// `nothing_is_left_after_runs` can check it is empty afterwards.
static CGROUP_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn root_inside_is_the_user_and_ids_map_to_subordinate_range() {
    let e = env();
    let out = e
        .sh("id -u; cat /proc/self/uid_map; cat /proc/self/gid_map")
        .ok();
    let lines: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines[0], ["0"], "{out}");
    let uid = e.uid.to_string();
    let start = e.subuid_start.to_string();
    let count = e.subuid_count.to_string();
    assert!(lines.contains(&vec!["0", uid.as_str(), "1"]), "{out}");
    assert!(
        lines.contains(&vec!["1", start.as_str(), count.as_str()]),
        "{out}"
    );
}

#[test]
fn files_written_as_uid_1000_belong_to_the_subordinate_uid_on_the_host() {
    let e = env();
    let out = user_dir("owner-out", 0o777);
    let bind = format!("{}:/out", out.display());
    e.exec(
        &["--bind", &bind, "--user", "1000:1000"],
        &["sh", "-c", "id -u; echo hi > /out/f"],
    )
    .ok();
    let meta = fs::metadata(out.join("f")).unwrap();
    assert_eq!(meta.uid(), e.subuid_start + 1000 - 1);
    assert_eq!(
        meta.gid(),
        e.subuid_start + 1000 - 1,
        "same ranges in /etc/subgid"
    );
    e.command(&["exec"]).output().unwrap(); // usage error only: nothing to clean
}

#[test]
fn sandbox_is_hardened() {
    let e = env();
    let out = e
        .sh("grep -E '^(CapEff|CapPrm|CapBnd|NoNewPrivs)' /proc/self/status; \
             for f in /proc/kcore /proc/keys /proc/timer_list; do [ -e $f ] && echo $f=$(wc -c < $f); done; \
             echo 1 > /proc/sys/kernel/hostname 2>/dev/null && echo sys=writable || echo sys=readonly; \
             ls /sys/firmware | wc -l | sed 's/^/firmware=/'; \
             echo dev=$(ls /dev | tr '\\n' ' ')")
        .ok();
    assert!(out.contains("CapEff:\t0000000000000000"), "{out}");
    assert!(out.contains("CapPrm:\t0000000000000000"), "{out}");
    assert!(out.contains("CapBnd:\t0000000000000000"), "{out}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert!(
        out.contains("/proc/keys=0"),
        "/proc/keys must be masked: {out}"
    );
    for l in out.lines().filter(|l| l.starts_with("/proc/")) {
        assert!(l.ends_with("=0"), "must be masked: {l}");
    }
    assert!(out.contains("sys=readonly"), "{out}");
    assert!(out.contains("firmware=0"), "{out}");
    let dev_line = out.lines().find(|l| l.starts_with("dev=")).unwrap();
    let devs: Vec<&str> = dev_line["dev=".len()..].split_whitespace().collect();
    let allowed = [
        "null", "zero", "full", "random", "urandom", "tty", "pts", "shm", "mqueue", "ptmx",
        "console", "fd", "stdin", "stdout", "stderr",
    ];
    for d in &devs {
        assert!(allowed.contains(d), "unexpected /dev/{d} in {devs:?}");
    }
    for d in [
        "null", "zero", "full", "random", "urandom", "tty", "pts", "shm",
    ] {
        assert!(devs.contains(&d), "/dev/{d} missing: {devs:?}");
    }
}

#[test]
fn read_only_bind_refuses_writes() {
    let e = env();
    let dir = user_dir("ro-bind", 0o777);
    fs::write(dir.join("data"), "original").unwrap();
    let bind = format!("{}:/data:ro", dir.display());
    let r = e.exec(
        &["--bind", &bind],
        &["sh", "-c", "cat /data/data; echo x > /data/data || echo refused; touch /data/new || echo refused-new"],
    );
    let out = r.ok();
    assert!(
        out.contains("original") && out.contains("refused") && out.contains("refused-new"),
        "{out}"
    );
    assert_eq!(fs::read_to_string(dir.join("data")).unwrap(), "original");
    assert!(!dir.join("new").exists());
}

#[test]
fn network_none_has_only_loopback_up() {
    let e = env();
    let out = e
        .sh("cat /proc/net/dev | tail -n +3 | cut -d: -f1; ip link show lo")
        .ok();
    let ifaces: Vec<&str> = out
        .lines()
        .take_while(|l| !l.contains("<"))
        .map(str::trim)
        .collect();
    assert_eq!(ifaces, ["lo"], "{out}");
    assert!(out.contains("UP"), "lo must be up: {out}");
    let host = e
        .exec(&["--network", "host"], &["cat", "/proc/net/dev"])
        .ok();
    let host_ifaces = fs::read_to_string("/proc/net/dev").unwrap();
    assert_eq!(
        host.lines().count(),
        host_ifaces.lines().count(),
        "host network shares the host's interfaces"
    );
}

#[test]
fn exit_codes_and_signals_propagate() {
    let e = env();
    assert_eq!(e.sh("exit 7").code(), 7);
    assert_eq!(e.sh("exit 0").code(), 0);
    let missing = e.exec(&[], &["no-such-command"]);
    assert_eq!(missing.code(), 127, "{}", missing.stderr());
    assert!(
        missing.stderr().contains("no-such-command"),
        "{}",
        missing.stderr()
    );

    // The program killed by a signal from outside: 128 + signal.
    let child = e
        .exec_cmd(&[], &["sleep", "31337"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = wait_for_process("sleep 31337");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(128 + 9));
}

#[test]
fn stdin_is_dev_null() {
    let e = env();
    let out = e.sh("cat; readlink /proc/self/fd/0").ok();
    assert_eq!(out.trim(), "/dev/null");
}

#[test]
fn time_limit_kills_the_whole_tree() {
    let e = env();
    let t = Instant::now();
    let r = e.exec(
        &["--timeout", "1"],
        &[
            "sh",
            "-c",
            "(sleep 4242 &); setsid sleep 4243 & nohup sleep 4244 >/dev/null 2>&1 & sleep 4245",
        ],
    );
    let took = t.elapsed();
    assert_eq!(r.code(), 124, "{}", r.stderr());
    assert!(r.stderr().contains("time limit exceeded"), "{}", r.stderr());
    assert!(
        took < Duration::from_secs(4),
        "killed within 1 s of the limit, took {took:?}"
    );
    let left = host_processes("sleep 424");
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn background_children_die_with_the_program() {
    let e = env();
    e.sh("sleep 4250 & setsid sleep 4251 & echo started").ok();
    assert!(host_processes("sleep 425").is_empty());
}

#[test]
fn pids_limit_stops_a_fork_bomb() {
    let _cg = CGROUP_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let e = env();
    let r = e.exec_limited(
        &["--pids", "40", "--timeout", "20"],
        &[
            "sh",
            "-c",
            "bomb() { bomb | bomb & }; bomb; sleep 2; echo survived",
        ],
    );
    assert!(
        r.stdout().contains("survived"),
        "stdout: {} stderr: {}",
        r.stdout(),
        r.stderr()
    );
    assert!(
        r.stderr().contains("fork"),
        "the bomb must hit the limit: {}",
        r.stderr()
    );
    assert!(!r.stderr().contains("limits are OFF"), "{}", r.stderr());
}

#[test]
fn memory_hog_is_reported_as_oom() {
    let _cg = CGROUP_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let e = env();
    let r = e.exec_limited(
        &["--memory", "32m"],
        &[
            "sh",
            "-c",
            "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived",
        ],
    );
    assert_eq!(
        r.code(),
        123,
        "stdout: {} stderr: {}",
        r.stdout(),
        r.stderr()
    );
    assert!(r.stderr().contains("out of memory"), "{}", r.stderr());
    assert!(!r.stdout().contains("survived"));
}

#[test]
fn cpuset_limit_pins_the_program() {
    let _cg = CGROUP_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let e = env();
    let out = e
        .exec_limited(
            &["--cpus", "0"],
            &["grep", "Cpus_allowed_list", "/proc/self/status"],
        )
        .ok();
    assert!(out.trim().ends_with("\t0"), "{out}");
}

#[test]
fn limits_without_delegated_cgroup_run_and_say_so() {
    let e = env();
    let r = e.exec(&["--memory", "64m"], &["true"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert!(r.stderr().contains("limits are OFF"), "{}", r.stderr());
}

#[test]
fn rlimits_stay_within_the_hard_limit() {
    let e = env();
    let out = e.sh("ulimit -Hn; ulimit -n; ulimit -c").ok();
    let hard = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .unwrap()
        .1;
    let v: Vec<&str> = out.lines().collect();
    assert_eq!(v[0], hard.to_string(), "{out}");
    assert_eq!(v[1], hard.to_string(), "{out}");
    assert_eq!(v[2], "0", "no core dumps: {out}");
}

/// Paths → (mode, uid, gid, size, mtime, content or link target).
fn snapshot(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, p: &Path, out: &mut BTreeMap<String, String>) {
        let m = fs::symlink_metadata(p).unwrap();
        let body = if m.file_type().is_symlink() {
            fs::read_link(p).unwrap().display().to_string()
        } else if m.is_file() {
            let bytes = fs::read(p).unwrap();
            format!(
                "{:x}",
                bytes
                    .iter()
                    .fold(0xcbf29ce484222325u64, |h, b| (h ^ *b as u64)
                        .wrapping_mul(0x100000001b3))
            )
        } else {
            String::new()
        };
        let rel = p.strip_prefix(root).unwrap().display().to_string();
        out.insert(
            rel,
            format!(
                "{:o} {} {} {} {} {body}",
                m.mode(),
                m.uid(),
                m.gid(),
                m.size(),
                m.mtime()
            ),
        );
        if m.is_dir() {
            for e in fs::read_dir(p).unwrap() {
                walk(root, &e.unwrap().path(), out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

#[test]
fn rootfs_is_never_modified() {
    let e = env();
    let before = snapshot(&e.rootfs);
    let r = e.sh(
        "for d in / /bin /etc /tmp /root /home /usr/bin; do echo x > $d/new-file; mkdir $d/new-dir; done; \
         echo changed > /etc/passwd; rm -f /bin/ls /etc/group; chmod 000 /bin/cat; chown 1000 /bin/busybox; \
         ln -sf /nowhere /bin/sh2; touch -d 2001-01-01 /bin/busybox; echo done",
    );
    assert!(r.ok().contains("done"));
    assert_eq!(snapshot(&e.rootfs), before);
    assert!(
        e.sh("cat /etc/passwd").ok().contains("root:x:0:0"),
        "the next run sees the original rootfs"
    );
}

#[test]
fn read_only_rootfs_refuses_writes() {
    let e = env();
    let out = e
        .exec(
            &["--read-only"],
            &[
                "sh",
                "-c",
                "touch /x 2>&1 || echo refused; echo ok > /tmp/y 2>&1 || echo tmp-refused",
            ],
        )
        .ok();
    assert!(out.contains("refused"), "{out}");
}

#[test]
fn keep_leaves_the_upper_layer() {
    let e = env();
    let r = e.exec(&["--keep"], &["sh", "-c", "echo kept > /root/result"]);
    r.ok();
    let line = r
        .stderr()
        .lines()
        .find(|l| l.contains("kept in"))
        .unwrap()
        .to_string();
    let dir = line.rsplit(' ').next().unwrap();
    assert_eq!(
        fs::read_to_string(Path::new(dir).join("root/result")).unwrap(),
        "kept\n"
    );
    // A later start does not mistake it for a crashed run.
    e.sh("true").ok();
    assert!(Path::new(dir).join("root/result").exists());
}

#[test]
fn output_streams_live_and_separately() {
    let e = env();
    let mut child = e
        .exec_cmd(
            &[],
            &[
                "sh",
                "-c",
                "echo first; echo to-stderr >&2; sleep 5; echo second",
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "first\n");
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "the first line must arrive while the program runs"
    );
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut eline = String::new();
    stderr.read_line(&mut eline).unwrap();
    assert_eq!(eline, "to-stderr\n");
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "second\n");
    assert!(child.wait().unwrap().success());
}

#[test]
fn hundred_megabytes_of_output_pass_without_growing_memory() {
    let e = env();
    let size: u64 = 100 * 1024 * 1024;
    let script = format!("head -c {size} /dev/zero");
    let cmd = e.exec_cmd(&[], &["sh", "-c", &script]);
    // Measure the peak RSS of everything on our side with GNU time.
    let mut timed = std::process::Command::new("/usr/bin/time");
    timed
        .arg("-f")
        .arg("maxrss=%M")
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => timed.env(k, v),
            None => timed.env_remove(k),
        };
    }
    timed.current_dir(cmd.get_current_dir().unwrap());
    let mut child = timed
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut total = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    let mut out = child.stdout.take().unwrap();
    loop {
        let n = out.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert_eq!(total, size);
    let kb: u64 = err
        .lines()
        .find_map(|l| l.strip_prefix("maxrss="))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(kb < 64 * 1024, "peak RSS {kb} KiB grew with the output");
}

#[test]
fn nothing_is_left_after_runs() {
    let _cg = CGROUP_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let e = env();
    let state = user_dir("leftover-state", 0o755);
    let cg = e.cgroup_opts();
    let opts: Vec<&str> = cg
        .iter()
        .map(String::as_str)
        .chain(["--pids", "100", "--memory", "256m"])
        .collect();
    for script in ["sleep 4260 & echo", "exit 3", "sleep 4261 & exec sleep 30"] {
        let opts = [opts.as_slice(), &["--timeout", "0.5"]].concat();
        let mut cmd = e.exec_cmd(&opts, &["sh", "-c", script]);
        cmd.env("COMPUTE_WORKER_STATE_DIR", &state);
        cmd.output().unwrap();
    }
    assert!(
        host_processes("sleep 426").is_empty(),
        "{:?}",
        host_processes("sleep 426")
    );
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(e.work.to_str().unwrap()),
        "no mount of a run is visible on the host"
    );
    let runs: Vec<_> = fs::read_dir(state.join("runs"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(runs.is_empty(), "run directories left: {runs:?}");
    let rel = e.cgroup_parent.trim_start_matches('/');
    for h in fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let Ok(entries) = fs::read_dir(h.path().join(rel)) else {
            continue;
        };
        let left: Vec<_> = entries
            .flatten()
            .filter(|d| d.file_name().to_string_lossy().starts_with("cw-"))
            .map(|d| d.path())
            .collect();
        assert!(left.is_empty(), "cgroups left: {left:?}");
    }
}

/// Start a sandbox running `sleep <marker>` with its own state directory;
/// returns the `compute-worker exec` child once the sleep runs.
fn sandbox_with_marker(state: &Path, marker: &str) -> std::process::Child {
    let e = env();
    let script = format!("sleep {marker}1 & echo x > /tmp/f; exec sleep {marker}2");
    let mut cmd = e.exec_cmd(&[], &["sh", "-c", &script]);
    cmd.env("COMPUTE_WORKER_STATE_DIR", state)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = cmd.spawn().unwrap();
    wait_for_process(&format!("sleep {marker}2"));
    child
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let t = Instant::now();
    while !done() {
        assert!(t.elapsed() < Duration::from_secs(5), "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Pids of `pid`'s descendants, deepest last.
fn descendants(pid: u32) -> Vec<i32> {
    let mut out = Vec::new();
    let mut todo = vec![pid.to_string()];
    while let Some(p) = todo.pop() {
        for task in fs::read_dir(format!("/proc/{p}/task"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let kids = fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for k in kids.split_whitespace() {
                out.push(k.parse().unwrap());
                todo.push(k.to_string());
            }
        }
    }
    out
}

#[test]
fn sigkill_of_exec_kills_the_sandbox_and_leaves_nothing() {
    let state = user_dir("sigkill-state", 0o755);
    let mut child = sandbox_with_marker(&state, "427");
    // Kill `compute-worker exec` itself (setpriv execs it: same pid).
    nix::sys::signal::kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
    child.wait().unwrap();
    wait_until("the sandbox outlived exec", || {
        host_processes("sleep 427").is_empty()
    });
    let runs = state.join("runs");
    wait_until("the run directory outlived exec", || {
        fs::read_dir(&runs).map(|d| d.count() == 0).unwrap_or(true)
    });
}

#[test]
fn the_next_start_cleans_up_after_a_crash_of_every_worker_process() {
    let e = env();
    let state = user_dir("crash-state", 0o755);
    let mut child = sandbox_with_marker(&state, "428");
    // The worker side dies all at once (exec, helper, keeper): nobody is
    // left to clean up, but the kernel still kills the sandbox.
    // Every process of the binary: its helper and the helper's keeper
    // (forks of `exec`, or `compute-worker __sandbox` and its fork).
    let mut all = descendants(child.id());
    all.retain(|p| {
        let cmd = fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
        let argv0 = cmd.split(|b| *b == 0).next().unwrap_or_default();
        argv0.ends_with(b"compute-worker")
    });
    assert!(!all.is_empty(), "helper processes not found");
    all.push(child.id() as i32);
    for p in all.iter().rev() {
        let _ = nix::sys::signal::kill(Pid::from_raw(*p), Signal::SIGKILL);
    }
    child.wait().unwrap();
    wait_until("the sandbox outlived the worker", || {
        host_processes("sleep 428").is_empty()
    });
    let runs = state.join("runs");
    assert_eq!(
        fs::read_dir(&runs).unwrap().count(),
        1,
        "the crashed run's directory is there"
    );
    let mut next = e.exec_cmd(&[], &["true"]);
    next.env("COMPUTE_WORKER_STATE_DIR", &state);
    assert!(next.output().unwrap().status.success());
    assert_eq!(
        fs::read_dir(&runs).unwrap().count(),
        0,
        "the next start removes it"
    );
}

#[test]
#[ignore = "needs root (runs as a second user)"]
fn missing_subordinate_ids_name_the_file_to_fix() {
    let e = env();
    assert!(e.as_root, "needs root (runs as a second user)");
    let state = std::env::temp_dir().join(format!("cw-nobody-{}", std::process::id()));
    fs::create_dir_all(&state).unwrap();
    fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&e.bin)
        // Subordinate ids required (`auto` would run in single-id mode).
        .args(["exec", "--id-mode", "subids", "--rootfs"])
        .arg(&e.rootfs)
        .args(["--", "true"])
        .env("COMPUTE_WORKER_STATE_DIR", &state)
        .current_dir(&state)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        err.contains("/etc/subuid") && err.contains("usermod"),
        "{err}"
    );
    let _ = fs::remove_dir_all(&state);
}

#[test]
fn a_missing_working_directory_is_created() {
    let e = env();
    let out = e.exec(&["--workdir", "/work/deep"], &["pwd"]).ok();
    assert_eq!(out.trim(), "/work/deep");
}

#[test]
fn seccomp_refuses_new_namespaces_and_keyrings() {
    let e = env();
    // Without the profile an unprivileged program may create a nested user
    // namespace (no capability needed); with it, unshare fails.
    let r = e.sh("unshare -U true && echo unshared || echo refused; unshare -r true 2>/dev/null && echo unshared2 || echo refused2");
    let out = r.ok();
    assert!(
        out.contains("refused") && out.contains("refused2"),
        "{out}\n{}",
        r.stderr()
    );
    assert!(!out.contains("unshared"), "{out}");
    assert!(
        e.sh("grep '^Seccomp:' /proc/self/status")
            .ok()
            .contains("2"),
        "filter mode"
    );
    // Ordinary work still runs: fork, exec, pipes, files.
    assert_eq!(
        e.sh("echo a | tr a b; ls / >/dev/null && echo ok").ok(),
        "b\nok\n"
    );
}

/// `compute-worker run` starts many sandbox processes (two steps and their
/// removals) from a process with threads: it holds one mapped user
/// namespace, which each launcher joins. While each step runs, its user
/// namespace is the one the worker holds a descriptor to; both steps run as
/// root mapped to the subordinate ids, and nothing is left in the namespace
/// afterwards.
#[test]
fn a_local_job_runs_its_steps_in_one_held_user_namespace() {
    let report = "id -u; cat /proc/self/uid_map";
    let e = env();
    let (mut cmd, dir) = sandbox_env::local_run(
        "held-userns-job",
        &format!("{report}\nsleep 1.4293"),
        &format!("{report}\nsleep 1.4294"),
        &[],
    );
    let state = user_dir("held-userns-state", 0o755);
    cmd.env("COMPUTE_WORKER_STATE_DIR", &state);
    let worker = cmd.spawn().unwrap();
    // setpriv execs the worker: the same pid.
    let held_by_worker = |ns: &str| {
        fs::read_dir(format!("/proc/{}/fd", worker.id()))
            .unwrap()
            .flatten()
            .any(|fd| fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy() == ns))
    };
    let mut namespaces = Vec::new();
    for marker in ["sleep 1.4293", "sleep 1.4294"] {
        let pid = wait_for_process(marker);
        let ns = fs::read_link(format!("/proc/{pid}/ns/user")).unwrap();
        let ns = ns.to_string_lossy().into_owned();
        assert!(
            held_by_worker(&ns),
            "{marker}: runs in {ns}, which the worker does not hold"
        );
        namespaces.push(ns);
    }
    sandbox_env::Run(worker.wait_with_output().unwrap()).ok();
    assert_eq!(
        namespaces[0], namespaces[1],
        "one user namespace for the job"
    );
    let host_ns = fs::read_link("/proc/self/ns/user").unwrap();
    assert_ne!(
        namespaces[0].as_str(),
        host_ns.to_string_lossy(),
        "not the host's"
    );
    let uid_line = format!("0 {} 1", e.uid);
    let sub_line = format!("1 {} {}", e.subuid_start, e.subuid_count);
    for log in ["prediction/ingestion_stdout.txt", "scoring/stdout.txt"] {
        let text = fs::read_to_string(dir.join("results").join(log)).unwrap();
        let lines: Vec<String> = text
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        assert_eq!(
            lines.first().map(String::as_str),
            Some("0"),
            "{log}: root inside: {text}"
        );
        assert!(
            lines.contains(&uid_line) && lines.contains(&sub_line),
            "{log}: subordinate ids mapped: {text}"
        );
    }
    let inside = sandbox_env::processes_in_user_namespace(&namespaces[0]);
    assert!(inside.is_empty(), "processes left in it: {inside:?}");
    assert_eq!(fs::read_dir(state.join("runs")).unwrap().count(), 0);
}
