//! Delegated cgroups on a real cgroup v2 kernel: the hosts this project is
//! built on have hybrid cgroups, so the checks run in a QEMU guest with a
//! pure cgroup v2 hierarchy (test-support/vm/run-in-vm.sh), booted once for
//! all of them. In it, tests/cgroup_v2/guest.sh sets cgroups up as systemd
//! or an administrator would and runs the real `compute-worker exec` (the
//! sandbox tests' copy of the binary, on their busybox rootfs) as the
//! unprivileged test user; each test here asserts on one of its results.
//!
//! Needs root and qemu-system-x86_64 (scripts/dev-setup.sh installs it and
//! the guest kernel): `#[ignore]`d, so a plain `cargo test` lists them as
//! ignored; `--include-ignored` (as CI runs) runs them, and fails saying
//! why where they cannot run.

mod sandbox_env;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use sandbox_env::env;

const VM_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/test-support/vm/run-in-vm.sh");
const GUEST_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cgroup_v2/guest.sh");

/// One check's result in the guest.
#[derive(Debug, Default)]
struct Case {
    code: i32,
    stdout: String,
    stderr: String,
}

enum Vm {
    Skipped(String),
    /// The guest gave no usable result: its whole output.
    Failed(String),
    Ran {
        cases: HashMap<String, Case>,
        output: String,
    },
}

static VM: OnceLock<Vm> = OnceLock::new();

/// The guest's results. These tests are `#[ignore]`d (they need root and
/// qemu); run with `--include-ignored` where they cannot run, they fail
/// saying why, never pass unseen.
fn guest() -> &'static Vm {
    let vm = VM.get_or_init(boot);
    match vm {
        Vm::Skipped(why) => panic!("the cgroup v2 tests cannot run here: {why}"),
        Vm::Failed(output) => panic!("the cgroup v2 test VM failed:\n{output}"),
        Vm::Ran { .. } => vm,
    }
}

fn boot() -> Vm {
    if !nix::unistd::geteuid().is_root() {
        return Vm::Skipped("needs root (it boots a QEMU guest sharing the host's /)".into());
    }
    let on_path = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("qemu-system-x86_64").is_file()));
    if !on_path {
        return Vm::Skipped(
            "no qemu-system-x86_64: run scripts/dev-setup.sh (apt-get install --no-install-recommends qemu-system-x86)".into(),
        );
    }
    let e = env();
    let command = format!(
        "CW_BIN={} CW_ROOTFS={} CW_USER={} bash {}",
        quote(&e.bin),
        quote(&e.rootfs),
        e.user,
        quote(Path::new(GUEST_SCRIPT))
    );
    // The guest's /tmp stays the host's (through the guest's overlay
    // root): the binary and rootfs are there.
    let out = Command::new("bash")
        .arg(VM_SCRIPT)
        .arg(&command)
        .env("VM_TMPFS", "")
        .output()
        .expect("running test-support/vm/run-in-vm.sh");
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Kept for a look after the fact, and shown with the first failing
    // test that booted it.
    let log = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cgroup_v2-guest.log");
    let _ = std::fs::write(&log, &output);
    eprintln!("the guest's output (also in {}):\n{output}", log.display());
    if !out.status.success() {
        return Vm::Failed(format!("exit status {}:\n{output}", out.status));
    }
    let mut cases = HashMap::new();
    let mut current: Option<&mut Case> = None;
    for line in output.lines() {
        if let Some(rest) = line.strip_prefix("@@case ") {
            let (name, code) = rest.rsplit_once(' ').unwrap_or((rest, "-1"));
            current = Some(cases.entry(name.to_string()).or_insert(Case {
                code: code.parse().unwrap_or(-1),
                ..Case::default()
            }));
        } else if let Some(c) = current.as_deref_mut() {
            if let Some(l) = line.strip_prefix("@@out ").or(line.strip_prefix("@@out")) {
                c.stdout.push_str(l);
                c.stdout.push('\n');
            } else if let Some(l) = line.strip_prefix("@@err ").or(line.strip_prefix("@@err")) {
                c.stderr.push_str(l);
                c.stderr.push('\n');
            }
        }
    }
    Vm::Ran { cases, output }
}

fn quote(p: &Path) -> String {
    shlex::try_quote(&p.to_string_lossy())
        .expect("a path without NUL")
        .into_owned()
}

impl Vm {
    #[track_caller]
    fn case(&self, name: &str) -> &Case {
        let Vm::Ran { cases, output } = self else {
            unreachable!()
        };
        cases
            .get(name)
            .unwrap_or_else(|| panic!("no result for {name} in the guest's output:\n{output}"))
    }
}

impl Case {
    #[track_caller]
    fn assert_code(&self, code: i32) {
        assert_eq!(
            self.code, code,
            "exit code; stdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
    }

    /// Subdirectories listed by the guest's `children`.
    fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }
}

// ---- a cgroup systemd delegated to the worker (Delegate=yes), no option

#[test]
#[ignore = "needs root and qemu-system-x86_64 (boots a cgroup v2 guest)"]
fn delegated_a_memory_hog_is_reported_oom() {
    let vm = guest();
    let c = vm.case("delegated.oom");
    c.assert_code(123);
    assert!(c.stderr.contains("out of memory"), "{}", c.stderr);
    assert!(!c.stderr.contains("limits are OFF"), "{}", c.stderr);
}

#[test]
#[ignore = "needs root and qemu-system-x86_64 (boots a cgroup v2 guest)"]
fn delegated_a_pids_limit_stops_a_fork_bomb() {
    let vm = guest();
    let c = vm.case("delegated.forkbomb");
    assert!(c.stdout.contains("survived"), "{c:?}");
    assert!(
        c.stderr.contains("fork"),
        "the bomb must hit the limit: {c:?}"
    );
}

#[test]
#[ignore = "needs root and qemu-system-x86_64 (boots a cgroup v2 guest)"]
fn delegated_a_cpuset_pins_the_program_in_its_own_cgroup_namespace() {
    let vm = guest();
    let c = vm.case("delegated.cpuset");
    c.assert_code(0);
    assert!(
        c.stdout.lines().any(|l| l == "Cpus_allowed_list:\t0"),
        "{c:?}"
    );
    assert!(c.stdout.lines().any(|l| l == "0::/"), "{c:?}");
}

#[test]
#[ignore = "needs root and qemu-system-x86_64 (boots a cgroup v2 guest)"]
fn delegated_the_worker_moves_into_its_leaf_and_leaves_no_run_cgroup() {
    let vm = guest();
    let own = vm.case("delegated.worker-cgroup");
    assert!(
        own.stdout
            .trim()
            .ends_with(".service/app.slice/worker.service/supervisor"),
        "{own:?}"
    );
    assert_eq!(vm.case("delegated.children").lines(), ["supervisor"]);
}

#[test]
#[ignore = "needs root and qemu-system-x86_64 (boots a cgroup v2 guest)"]
fn delegated_the_next_start_removes_the_cgroup_of_a_crashed_run() {
    let vm = guest();
    let left = vm.case("delegated.crash-left").lines();
    assert_eq!(left.len(), 2, "the crashed run's cgroup is there: {left:?}");
    assert!(left.iter().any(|l| l.starts_with("cw-")), "{left:?}");
    vm.case("delegated.crash-next").assert_code(0);
    assert_eq!(vm.case("delegated.crash-cleaned").lines(), ["supervisor"]);
}

#[test]
#[ignore = "needs root and qemu-system-x86_64 (boots a cgroup v2 guest)"]
fn delegated_a_job_runner_with_threads_runs_its_programs_limited() {
    let vm = guest();
    let c = vm.case("delegated.job");
    c.assert_code(0);
    assert!(c.stdout.contains("\"accuracy\": 1.0"), "{c:?}");
    assert!(!c.stderr.contains("limits are OFF"), "{}", c.stderr);
    assert_eq!(vm.case("delegated.job-children").lines(), ["supervisor"]);
}

#[test]
#[ignore = "needs root and qemu-system-x86_64 (boots a cgroup v2 guest)"]
fn delegated_a_run_the_kernel_refuses_to_move_into_its_cgroup_fails() {
    let vm = guest();
    let c = vm.case("refused.run");
    c.assert_code(125);
    assert!(
        c.stderr.contains("did not land in their cgroup"),
        "{}",
        c.stderr
    );
    assert!(c.stderr.contains("limits would not apply"), "{}", c.stderr);
    assert_eq!(c.stdout, "", "the program must not run");
    assert_eq!(vm.case("refused.children").lines(), ["supervisor"]);
}

// ---- systemd's default delegation to user@.service: no cpuset

#[test]
#[ignore = "needs root and qemu-system-x86_64 (boots a cgroup v2 guest)"]
fn missing_cpuset_controller_fails_a_cpuset_run_naming_the_fix() {
    let vm = guest();
    let c = vm.case("no-cpuset.cpus");
    c.assert_code(125);
    assert!(c.stderr.contains("`cpuset` controller"), "{}", c.stderr);
    assert!(c.stderr.contains("it has: cpu memory pids"), "{}", c.stderr);
    assert!(
        c.stderr
            .contains("/etc/systemd/system/user@.service.d/delegate.conf"),
        "{}",
        c.stderr
    );
    assert!(c.stderr.contains("setup-host --user"), "{}", c.stderr);
}

#[test]
#[ignore = "needs root and qemu-system-x86_64 (boots a cgroup v2 guest)"]
fn missing_cpuset_controller_leaves_other_limits_and_plain_runs_working() {
    let vm = guest();
    for name in ["no-cpuset.memory", "no-cpuset.plain"] {
        let c = vm.case(name);
        c.assert_code(0);
        assert_eq!(c.stdout, "ran\n", "{name}");
        assert!(!c.stderr.contains("limits are OFF"), "{name}: {}", c.stderr);
    }
}

#[test]
#[ignore = "needs root and qemu-system-x86_64 (boots a cgroup v2 guest)"]
fn missing_cpuset_controller_stops_serve_with_a_cpuset_at_start() {
    let vm = guest();
    let c = vm.case("no-cpuset.serve");
    assert_ne!(c.code, 0, "{c:?}");
    assert!(
        c.stderr.contains("the limits cannot be enforced"),
        "{}",
        c.stderr
    );
    assert!(c.stderr.contains("`cpuset` controller"), "{}", c.stderr);
}

#[test]
#[ignore = "needs root and qemu-system-x86_64 (boots a cgroup v2 guest)"]
fn doctor_reports_the_delegated_cgroup_and_its_missing_controller() {
    let vm = guest();
    let c = vm.case("no-cpuset.doctor");
    let rows = doctor_rows(c);
    let (status, detail, fix) = &rows["cgroup"];
    assert_eq!(status, "warn", "{detail}");
    assert!(detail.contains("cgroup v2"), "{detail}");
    assert!(detail.contains("worker.service"), "{detail}");
    assert!(detail.contains("`cpuset`"), "{detail}");
    assert!(fix.contains("delegate.conf"), "{fix}");
    let (status, detail, _) = &rows["systemd delegation"];
    assert_eq!(status, "warn", "{detail}");
    assert!(detail.contains("lacks cpuset"), "{detail}");
}

// ---- an administrator's subtree named with --cgroup-parent

#[test]
#[ignore = "needs root and qemu-system-x86_64 (boots a cgroup v2 guest)"]
fn admin_subtree_with_the_worker_inside_enforces_limits() {
    let vm = guest();
    let c = vm.case("admin.oom");
    c.assert_code(123);
    assert!(c.stderr.contains("out of memory"), "{}", c.stderr);
    // Through the variable this time.
    let cpuset = vm.case("admin.cpuset");
    cpuset.assert_code(0);
    assert_eq!(cpuset.stdout, "Cpus_allowed_list:\t1\n");
    assert_eq!(
        vm.case("admin.worker-cgroup").stdout.trim(),
        "0::/compute-worker/supervisor"
    );
    assert_eq!(vm.case("admin.children").lines(), ["supervisor"]);
}

#[test]
#[ignore = "needs root and qemu-system-x86_64 (boots a cgroup v2 guest)"]
fn admin_subtree_with_the_worker_outside_says_why_and_runs_without_limits() {
    let vm = guest();
    let c = vm.case("outside.admin");
    c.assert_code(0);
    assert_eq!(c.stdout, "ran\n");
    assert!(
        c.stderr
            .contains("this process runs in cgroup /init.scope, outside /compute-worker"),
        "{}",
        c.stderr
    );
    assert!(c.stderr.contains("Delegate=yes"), "{}", c.stderr);
    assert_eq!(
        c.stderr.matches("limits are OFF").count(),
        1,
        "{}",
        c.stderr
    );
}

// ---- no delegated cgroup at all

#[test]
#[ignore = "needs root and qemu-system-x86_64 (boots a cgroup v2 guest)"]
fn without_a_delegated_cgroup_runs_work_and_say_once_that_limits_are_off() {
    let vm = guest();
    let c = vm.case("outside.none");
    c.assert_code(0);
    assert_eq!(c.stdout, "ran\n");
    assert_eq!(
        c.stderr.matches("limits are OFF").count(),
        1,
        "{}",
        c.stderr
    );
    assert!(
        c.stderr.contains("/init.scope is not delegated"),
        "{}",
        c.stderr
    );
    let plain = vm.case("outside.plain");
    plain.assert_code(0);
    assert_eq!(plain.stderr, "", "no limits asked, nothing to say");
}

#[test]
#[ignore = "needs root and qemu-system-x86_64 (boots a cgroup v2 guest)"]
fn doctor_outside_a_delegated_cgroup_warns_and_names_the_user_service() {
    let vm = guest();
    let rows = doctor_rows(vm.case("outside.doctor"));
    let (status, detail, fix) = &rows["cgroup"];
    assert_eq!(status, "warn", "{detail}");
    assert!(detail.contains("limits are OFF"), "{detail}");
    assert!(fix.contains("install-service"), "{fix}");
}

/// `doctor --json`'s rows by name: (status, detail, fix).
fn doctor_rows(c: &Case) -> HashMap<String, (String, String, String)> {
    let out = std::process::Output {
        status: std::os::unix::process::ExitStatusExt::from_raw(0),
        stdout: c.stdout.clone().into_bytes(),
        stderr: c.stderr.clone().into_bytes(),
    };
    sandbox_env::doctor_rows(&out)
}

/// The resource report of the run `case` (`run`'s summary line).
fn usage_report(case: &Case) -> &str {
    case.stderr
        .lines()
        .find(|l| l.starts_with("[prediction] resources of the submission"))
        .unwrap_or_else(|| panic!("no resource report: {case:?}"))
}

/// Issue 16: on cgroup v2 the report reads the run cgroup's own peaks:
/// at least 300 MiB of memory and 50 processes (counted, not sampled).
#[test]
#[ignore = "needs root and qemu-system-x86_64 (boots a cgroup v2 guest)"]
fn delegated_the_resource_report_reads_the_cgroup_v2_peaks() {
    let c = guest().case("delegated.usage");
    c.assert_code(0);
    let report = usage_report(c);
    assert!(report.contains("(cgroup v2): exit code 0"), "{report}");
    let peak: Vec<&str> = report
        .split("; peak memory ")
        .nth(1)
        .map(|r| r.split([' ', ';']).take(2).collect())
        .unwrap_or_default();
    let mib = match peak[..] {
        [n, "MiB"] => n.parse::<f64>().unwrap(),
        [n, "GiB"] => n.parse::<f64>().unwrap() * 1024.0,
        _ => panic!("{report}"),
    };
    assert!(mib >= 300.0, "{report}");
    let processes = report
        .split("; peak ")
        .find_map(|p| {
            let (n, rest) = p.split_once(' ')?;
            rest.starts_with("processes")
                .then(|| n.parse::<u64>().ok())?
        })
        .unwrap_or_else(|| panic!("{report}"));
    assert!(processes >= 50, "{report}");
    assert!(!report.contains("sampled"), "{report}");
    assert!(report.contains("no OOM kill"), "{report}");
}

/// Issue 16: over its limit, the report says so with the limit.
#[test]
#[ignore = "needs root and qemu-system-x86_64 (boots a cgroup v2 guest)"]
fn delegated_the_resource_report_names_the_memory_limit() {
    let c = guest().case("delegated.usage-oom");
    let report = usage_report(c);
    assert!(report.contains("out of memory (limit 64 MiB)"), "{report}");
    assert!(report.contains("the OOM killer acted"), "{report}");
    assert!(!report.contains("exit code"), "{report}");
}
