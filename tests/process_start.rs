//! Every program starts as it would under runc: default signal
//! dispositions, no blocked signal, no fd beyond 0-2. The Rust runtime of
//! the worker ignores SIGPIPE, and an ignored signal survives exec: without
//! the reset, `yes | head` never ends in a sandbox. Checked for `exec`,
//! `run` and `serve`, each of which starts the sandbox its own way.

mod e2e;
mod sandbox_env;
mod support;

use std::fs;
use std::time::{Duration, Instant};

use e2e::*;
use sandbox_env::{env, user_dir};
use support::amqp::unique_queue;

/// What a program reports of its start, then the pipeline a SIGPIPE
/// ignored from the start never ends (busybox's `yes` loops on EPIPE).
/// The fds are those of a shell started by the program (a shell reading a
/// script keeps it open, close-on-exec, on fd 10): any fd the program
/// inherited without close-on-exec shows there.
const PROBE: &str = "grep -E '^Sig(Ign|Blk)' /proc/self/status; \
    sh -c 'echo shell-fds:; ls /proc/$$/fd; echo :shell-fds'; \
    yes 0123456789abcdefghijklmnopqrstuvwxyz | head -c 20000000 > /dev/null; echo pipeline-done";

/// Check a probe's output: `where` names the path that started it.
#[track_caller]
fn assert_started_clean(out: &str, start: &str) {
    assert!(
        out.contains("SigIgn:\t0000000000000000"),
        "{start}: signals ignored from the start: {out}"
    );
    assert!(
        out.contains("SigBlk:\t0000000000000000"),
        "{start}: signals blocked from the start: {out}"
    );
    let fds: Vec<&str> = out
        .split("shell-fds:")
        .nth(1)
        .and_then(|s| s.split(":shell-fds").next())
        .map(|s| s.split_whitespace().collect())
        .unwrap_or_default();
    assert_eq!(fds, ["0", "1", "2"], "{start}: inherited fds: {out}");
    assert!(
        out.contains("pipeline-done"),
        "{start}: yes | head did not end: {out}"
    );
}

#[test]
fn exec_starts_the_program_with_default_signals_and_only_stdio() {
    let e = env();
    let t = Instant::now();
    let r = e.exec(&["--timeout", "30"], &["sh", "-c", PROBE]);
    assert_started_clean(&format!("{}{}", r.stdout(), r.stderr()), "exec");
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    // The handler of a signal the program installs itself is its own.
    let out = e
        .sh("trap 'echo got' USR1; grep '^SigCgt' /proc/$$/status")
        .ok();
    assert!(!out.contains("SigCgt:\t0000000000000000"), "{out}");
}

#[test]
fn run_starts_both_programs_with_default_signals_and_only_stdio() {
    let (mut cmd, dir) =
        sandbox_env::local_run("proc-start-run", PROBE, PROBE, &["--time-limit", "30"]);
    let r = sandbox_env::Run(cmd.output().unwrap());
    for log in ["prediction/ingestion_stdout.txt", "scoring/stdout.txt"] {
        let text = fs::read_to_string(dir.join("results").join(log)).unwrap_or_default();
        assert_started_clean(&text, &format!("run ({log}; {})", r.stderr()));
    }
    r.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_starts_the_program_with_default_signals_and_only_stdio() {
    let queue = unique_queue("e2e-procstart");
    let serve = Serve::start("serve-procstart", &queue);
    let site = demo_site(531).await;
    let sub = user_dir("procstart-submission", 0o755);
    fs::write(
        sub.join("probe.sh"),
        format!("exec > /app/output/predictions.txt 2>&1\n{PROBE}\n"),
    )
    .unwrap();
    let command = "sh /app/program/probe.sh";
    publish(
        &queue,
        &submission_only_args(&site, "procstart-submission", command, 30),
    );
    wait_for_status(&site, &serve, "Scoring", 60).await;
    let up = site
        .upload("prediction_result.zip")
        .expect("prediction uploaded");
    assert_started_clean(
        &zip_file(&up.body, "predictions.txt"),
        &format!("serve (log:\n{})", serve.log()),
    );
    serve.stop();
}

/// The container's init never runs image code before the program's exec.
/// Without HOME in the run's environment, libcontainer looks it up with
/// glibc's `getpwuid`, in the init, after the pivot into the image and
/// before the seccomp filter: glibc keeps the host's NSS configuration
/// (it does not reload it under a new root) but loads the modules it names
/// (`systemd` on Debian) from the image's library directories (runc reads
/// /etc/passwd itself). HOME still comes from the image's /etc/passwd, as
/// with Docker, and is `/` for a user it lacks.
#[test]
fn an_images_nss_module_never_runs_in_the_container_init() {
    let e = env();
    let dir = user_dir("proc-start-nss", 0o755);
    let rootfs = dir.join("rootfs");
    if !rootfs.exists() {
        test_support::build_busybox_rootfs(&rootfs);
        fs::write(rootfs.join("etc/nsswitch.conf"), "passwd: evil files\n").unwrap();
        let module = dir.join("nss_evil.c");
        fs::write(
            &module,
            "#include <unistd.h>\n\
             __attribute__((constructor)) static void evil(void) {\n\
               static const char m[] = \"the image's NSS module ran\\n\";\n\
               write(2, m, sizeof m - 1);\n\
             }\n",
        )
        .unwrap();
        // Every passwd module the host's glibc may load, and the image's own.
        let host = fs::read_to_string("/etc/nsswitch.conf").unwrap_or_default();
        let mut modules: Vec<String> = host
            .lines()
            .filter_map(|l| l.strip_prefix("passwd:"))
            .flat_map(|l| l.split_whitespace().map(str::to_string))
            .filter(|m| m != "files" && !m.starts_with('['))
            .collect();
        modules.extend(["systemd".to_string(), "evil".to_string()]);
        for lib in [
            "lib",
            "lib64",
            "usr/lib",
            "lib/x86_64-linux-gnu",
            "usr/lib/x86_64-linux-gnu",
        ] {
            let d = rootfs.join(lib);
            fs::create_dir_all(&d).unwrap();
            for m in &modules {
                let status = std::process::Command::new("gcc")
                    .args(["-shared", "-fPIC", "-o"])
                    .arg(d.join(format!("libnss_{m}.so.2")))
                    .arg(&module)
                    .status()
                    .expect("gcc (scripts/dev-setup.sh installs it)");
                assert!(status.success());
            }
        }
        sandbox_env::chown_tree(&dir, e.uid, e.gid);
    }
    let root = rootfs.to_string_lossy().into_owned();
    for (user, home) in [("0", "/root"), ("1000", "/home"), ("4321", "/")] {
        let r = sandbox_env::Run(
            e.command(&[
                "exec",
                "--rootfs",
                &root,
                "--user",
                user,
                "--",
                "sh",
                "-c",
                "echo HOME=$HOME",
            ])
            .output()
            .unwrap(),
        );
        let out = r.ok();
        assert!(
            !r.stderr().contains("NSS module ran"),
            "user {user}: image code ran in the container's init: {}",
            r.stderr()
        );
        assert_eq!(out.trim(), format!("HOME={home}"), "user {user}");
    }
}
