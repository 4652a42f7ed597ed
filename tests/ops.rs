//! The operator commands: `doctor` (as the unprivileged test user, as root,
//! as a user with no subordinate ids; against the real RabbitMQ),
//! `setup-host` (on copies of the host's files under `--root`, and one real
//! run on a fresh user) and `install-service` (into a temporary
//! XDG_CONFIG_HOME, checked with `systemd-analyze verify` when it runs).

mod sandbox_env;
mod support;

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use sandbox_env::{env, Run};
use support::amqp::broker_url;

const BIN: &str = env!("CARGO_BIN_EXE_compute-worker");

use sandbox_env::doctor_rows as rows;

/// `doctor --json` as the user `uid`:`gid` in its home, with the test
/// broker and the defaults of a fresh account.
fn doctor_as(uid: u32, gid: u32, home: &str) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .arg("--init-groups")
        .arg(&env().bin)
        .args(["doctor", "--json"])
        .current_dir(home)
        .env("HOME", home)
        .env("BROKER_URL", broker_url())
        .env_remove("COMPUTE_WORKER_STATE_DIR")
        .env_remove("COMPUTE_WORKER_IMAGE_DIR")
        .env_remove("COMPUTE_WORKER_CGROUP_PARENT");
    cmd
}

/// The state and image directories are usable: `ok`, or a warning about
/// this machine's free space (below 10 GiB), never a failure.
#[track_caller]
fn assert_writable_dirs(rows: &HashMap<String, (String, String, String)>) {
    for name in ["state dir", "image dir"] {
        let (status, detail, _) = &rows[name];
        let low_space = status == "warn" && detail.contains("GiB free");
        assert!(status == "ok" || low_space, "`{name}`: {status} {detail}");
    }
}

#[track_caller]
fn assert_status(rows: &HashMap<String, (String, String, String)>, name: &str, want: &str) {
    let row = rows
        .get(name)
        .unwrap_or_else(|| panic!("no `{name}` row: {rows:#?}"));
    assert_eq!(row.0, want, "`{name}`: {row:?}");
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// `compute-worker doctor ARGS` as the sandbox test user, with its
/// delegated cgroup and the local RabbitMQ at `broker`.
fn doctor_as_test_user(broker: &str, args: &[&str]) -> Run {
    let e = env();
    let mut all = vec!["doctor"];
    all.extend_from_slice(args);
    let mut cmd = e.command(&all);
    cmd.env("COMPUTE_WORKER_CGROUP_PARENT", &e.cgroup_parent)
        .env("BROKER_URL", broker)
        .env_remove("BROKER_USE_SSL");
    Run(cmd.output().unwrap())
}

#[test]
fn doctor_passes_the_sandbox_checks_for_the_test_user() {
    let run = doctor_as_test_user(&broker_url(), &["--json"]);
    let r = rows(&run.0);
    for name in [
        "user",
        "user namespaces",
        "subuid",
        "subgid",
        "newuidmap",
        "newgidmap",
        "overlay in userns",
        "cgroup",
        "broker",
    ] {
        assert_status(&r, name, "ok");
    }
    assert_writable_dirs(&r);
    assert!(
        r["cgroup"].1.contains(&env().cgroup_parent),
        "{:?}",
        r["cgroup"]
    );
    // The registry may be out of reach here (no internet): a warning, never a failure.
    assert!(["ok", "warn"].contains(&r["registry"].0.as_str()));
    assert_eq!(run.code(), 0, "{}", run.stdout());

    // The same checks as a table, with a summary line.
    let table = doctor_as_test_user(&broker_url(), &[]);
    let out = table.ok();
    let overlay = out
        .lines()
        .find(|l| l.starts_with("overlay in userns"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(overlay.contains(" ok "), "{overlay}");
    assert!(
        out.contains("the worker can run") || out.contains("all checks passed"),
        "{out}"
    );
}

#[test]
fn doctor_fails_on_a_wrong_broker_password_and_says_what_to_fix() {
    let url = broker_url().replacen(":guest@", ":not-the-password@", 1);
    assert_ne!(url, broker_url(), "BROKER_URL must carry guest's password");
    let run = doctor_as_test_user(&url, &["--json"]);
    let r = rows(&run.0);
    assert_status(&r, "broker", "fail");
    let (_, detail, fix) = &r["broker"];
    assert!(detail.contains("ACCESS_REFUSED"), "{detail}");
    assert!(fix.contains("password in BROKER_URL"), "{fix}");
    assert!(
        !detail.contains("not-the-password"),
        "the password is never printed"
    );
    assert_eq!(run.code(), 1);

    let table = doctor_as_test_user(&url, &[]);
    assert_eq!(table.code(), 1);
    assert!(
        table
            .stdout()
            .contains("fix: the user `guest` or its password"),
        "{}",
        table.stdout()
    );
    assert!(table.stdout().contains("cannot run"), "{}", table.stdout());
}

#[test]
fn doctor_without_broker_url_fails_naming_it() {
    let e = env();
    let mut cmd = e.command(&["doctor", "--json"]);
    cmd.env_remove("BROKER_URL");
    let run = Run(cmd.output().unwrap());
    let r = rows(&run.0);
    assert_status(&r, "broker", "fail");
    assert!(
        r["broker"].2.contains("BROKER_URL=pyamqp://"),
        "{:?}",
        r["broker"]
    );
    assert_status(&r, "cgroup", "warn");
    assert_eq!(run.code(), 1);
}

#[test]
#[ignore = "needs root"]
fn doctor_as_root_warns_about_root_but_passes() {
    assert!(is_root(), "needs root");
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["doctor", "--json"])
        .env("HOME", home.path())
        .env("BROKER_URL", broker_url())
        .env_remove("COMPUTE_WORKER_STATE_DIR")
        .env_remove("COMPUTE_WORKER_IMAGE_DIR")
        .env_remove("COMPUTE_WORKER_CGROUP_PARENT")
        .output()
        .unwrap();
    let r = rows(&out);
    assert_status(&r, "user", "warn");
    assert!(r["user"].2.contains("setup-host --user"), "{:?}", r["user"]);
    for name in ["subuid", "overlay in userns", "broker"] {
        assert_status(&r, name, "ok");
    }
    assert_eq!(out.status.code(), Some(0));
}

/// `doctor --json` as the test user, with these image, state and host
/// directories.
fn doctor_with_dirs(
    images: &Path,
    state: &Path,
    host: &Path,
) -> HashMap<String, (String, String, String)> {
    let mut cmd = env().command(&["doctor", "--json"]);
    cmd.env("COMPUTE_WORKER_IMAGE_DIR", images)
        .env("COMPUTE_WORKER_STATE_DIR", state)
        .env("HOST_DIRECTORY", host)
        .env("BROKER_URL", broker_url())
        .env_remove("BROKER_USE_SSL");
    rows(&cmd.output().unwrap())
}

/// Image root is the worker's user on the host: whatever an image or a
/// program leaves in the store, the state directory or HOST_DIRECTORY (a
/// setuid file too) belongs to the worker. `doctor` says when another
/// account can get in, and how to close it.
#[test]
fn doctor_warns_when_the_store_state_or_host_directory_is_open_to_others() {
    use std::os::unix::fs::PermissionsExt;
    const ROW: &str = "private dirs";
    let e = env();
    let base = e
        .work
        .join(format!("private-dirs-{}", uuid::Uuid::new_v4()));
    let [images, state, host] = ["images", "state", "codabench"].map(|d| base.join(d));
    let make = |p: &Path, mode: u32, owner: u32| {
        fs::create_dir_all(p).unwrap();
        std::os::unix::fs::chown(p, Some(owner), Some(e.gid)).unwrap();
        fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
    };
    make(&base, 0o755, e.uid);
    let mode = |p: &Path| fs::metadata(p).unwrap().mode() & 0o7777;

    // A fresh account: nothing made yet. What doctor makes is 0700.
    let r = doctor_with_dirs(&images, &state, &host);
    assert_status(&r, ROW, "ok");
    assert!(
        r[ROW].1.contains(&images.display().to_string()),
        "{:?}",
        r[ROW]
    );
    assert!(
        r[ROW].1.contains(&host.display().to_string()),
        "{:?}",
        r[ROW]
    );
    assert_eq!(mode(&state), 0o700, "the state dir doctor made");

    // A store made by hand (or by an older version), a group-readable
    // HOST_DIRECTORY: a warning naming both, and the command that fixes it.
    make(&images, 0o755, e.uid);
    make(&host, 0o750, e.uid);
    let r = doctor_with_dirs(&images, &state, &host);
    assert_status(&r, ROW, "warn");
    let (_, detail, fix) = &r[ROW];
    assert!(
        detail.contains(&format!("{} has mode 0755", images.display())),
        "{detail}"
    );
    assert!(
        detail.contains(&format!("{} has mode 0750", host.display())),
        "{detail}"
    );
    assert!(!detail.contains(&state.display().to_string()), "{detail}");
    assert_eq!(
        fix,
        &format!("`chmod 700 {} {}`", images.display(), host.display())
    );
    // The fix works.
    for d in [&images, &host] {
        fs::set_permissions(d, fs::Permissions::from_mode(0o700)).unwrap();
    }
    assert_status(&doctor_with_dirs(&images, &state, &host), ROW, "ok");

    // A directory another account owns: its owner and the fix as root.
    if e.as_root {
        make(&host, 0o700, 0);
        let r = doctor_with_dirs(&images, &state, &host);
        assert_status(&r, ROW, "warn");
        let (_, detail, fix) = &r[ROW];
        assert!(
            detail.contains(&format!(
                "{} is owned by root, not {}",
                host.display(),
                e.user
            )),
            "{detail}"
        );
        assert!(
            fix.contains(&format!("as root: `chown {} {}", e.user, host.display())),
            "{fix}"
        );
    }
    let _ = fs::remove_dir_all(&base);
}

/// Held by tests that add users or ranges: shadow's tools refuse to edit
/// /etc/passwd or /etc/subuid while another one holds its lock.
static ACCOUNTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Create `name` afresh, with no subordinate ids.
fn ensure_user(name: &str) -> (u32, u32) {
    if Command::new("id")
        .arg(name)
        .output()
        .unwrap()
        .status
        .success()
    {
        remove_user(name);
    }
    let out = Command::new("useradd")
        .args(["--create-home", "--shell", "/bin/sh", name])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    drop_subids(name);
    let id = |flag: &str| -> u32 {
        let o = Command::new("id").args([flag, name]).output().unwrap();
        String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
    };
    (id("-u"), id("-g"))
}

/// Remove every subordinate range of `name` (Debian's useradd gives one).
fn drop_subids(name: &str) {
    for (file, flag) in [
        ("/etc/subuid", "--del-subuids"),
        ("/etc/subgid", "--del-subgids"),
    ] {
        for line in subid_lines(file, name) {
            let f: Vec<u64> = line
                .split(':')
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            let range = format!("{}-{}", f[0], f[0] + f[1] - 1);
            let out = Command::new("usermod")
                .args([flag, &range, name])
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
        }
    }
}

fn remove_user(name: &str) {
    drop_subids(name);
    let _ = Command::new("userdel").args(["-r", name]).output();
}

/// Lines of /etc/subuid or /etc/subgid for `user`.
fn subid_lines(file: &str, user: &str) -> Vec<String> {
    fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.split(':').next() == Some(user))
        .map(str::to_string)
        .collect()
}

#[test]
#[ignore = "needs root to create a user"]
fn doctor_names_the_fix_for_a_user_without_subordinate_ids() {
    assert!(is_root(), "needs root to create a user");
    let _accounts = ACCOUNTS.lock().unwrap_or_else(|e| e.into_inner());
    let name = "cwnosub";
    let (uid, gid) = ensure_user(name);
    assert!(
        subid_lines("/etc/subuid", name).is_empty(),
        "useradd gave {name} subordinate ids"
    );
    let home = format!("/home/{name}");
    // Subordinate ids required: without them, `auto` runs in single-id
    // mode instead (tests/single_id.rs).
    let out = doctor_as(uid, gid, &home)
        .env("COMPUTE_WORKER_ID_MODE", "subids")
        .output()
        .unwrap();
    remove_user(name);
    let r = rows(&out);
    assert_status(&r, "id mode", "skip");
    assert_status(&r, "subuid", "fail");
    assert_status(&r, "subgid", "fail");
    let (_, detail, fix) = &r["subuid"];
    assert!(
        detail.contains("/etc/subuid has no range for cwnosub"),
        "{detail}"
    );
    assert!(
        fix.contains("compute-worker setup-host --user cwnosub"),
        "{fix}"
    );
    assert!(fix.contains("usermod --add-subuids"), "{fix}");
    // The overlay probe needs the ids: it waits for that fix.
    assert_status(&r, "overlay in userns", "skip");
    assert_eq!(out.status.code(), Some(1));
}

/// A fake host root for `setup-host --root`: subordinate id files with
/// other users' ranges, cgroup v1 hierarchies (or a v2 root), the user's
/// home.
fn fake_root(v2: bool) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let p = root.path();
    fs::create_dir_all(p.join("etc")).unwrap();
    fs::write(
        p.join("etc/subuid"),
        "alice:100000:65536\nbob:165536:1000\n# a comment\n",
    )
    .unwrap();
    fs::write(
        p.join("etc/subgid"),
        "alice:100000:65536\ncarol:170000:65536\n",
    )
    .unwrap();
    let cg = p.join("sys/fs/cgroup");
    if v2 {
        fs::create_dir_all(&cg).unwrap();
        fs::write(cg.join("cgroup.controllers"), "cpuset cpu io memory pids\n").unwrap();
    } else {
        for c in ["memory", "pids", "cpuset", "cpu,cpuacct", "devices"] {
            fs::create_dir_all(cg.join(c)).unwrap();
        }
        fs::write(cg.join("cpuset/cpuset.cpus"), "0-1\n").unwrap();
        fs::write(cg.join("cpuset/cpuset.mems"), "0\n").unwrap();
    }
    let e = env();
    let home = nix::unistd::User::from_name(&e.user).unwrap().unwrap().dir;
    fs::create_dir_all(p.join(home.strip_prefix("/").unwrap())).unwrap();
    root
}

fn setup_host(root: &Path, extra: &[&str]) -> Run {
    let mut args = vec![
        "setup-host",
        "--user",
        &env().user,
        "--root",
        root.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    Run(Command::new(BIN).args(&args).output().unwrap())
}

/// Every `(start, end)` range of a subordinate id file.
fn ranges(file: &Path) -> Vec<(String, u64, u64)> {
    fs::read_to_string(file)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let mut it = l.split(':');
            let owner = it.next()?.to_string();
            let s: u64 = it.next()?.parse().ok()?;
            let c: u64 = it.next()?.parse().ok()?;
            Some((owner, s, s + c))
        })
        .collect()
}

fn snapshot(root: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for f in ["etc/subuid", "etc/subgid"] {
        out.push((f.to_string(), fs::read_to_string(root.join(f)).unwrap()));
    }
    out
}

#[test]
#[ignore = "needs root"]
fn setup_host_gives_a_free_range_delegates_cgroups_and_is_idempotent() {
    assert!(is_root(), "needs root");
    let e = env();
    let root = fake_root(false);
    let p = root.path();
    let before = snapshot(p);

    // --dry-run prints the plan and changes nothing.
    let dry = setup_host(p, &["--dry-run"]);
    let out = dry.ok();
    assert!(
        out.contains(&format!("would append `{}:235536:65536` to", e.user)),
        "{out}"
    );
    assert!(out.contains("would mkdir -p"), "{out}");
    assert_eq!(snapshot(p), before);
    assert!(!p.join("sys/fs/cgroup/memory/compute-worker").exists());

    let first = setup_host(p, &[]);
    let out = first.ok();
    assert!(
        out.contains("COMPUTE_WORKER_CGROUP_PARENT=/compute-worker"),
        "{out}"
    );
    // The first 65536 ids free in both files: past alice, bob and carol.
    for f in ["etc/subuid", "etc/subgid"] {
        let r = ranges(&p.join(f));
        let mine: Vec<_> = r.iter().filter(|x| x.0 == e.user).collect();
        assert_eq!(mine.len(), 1, "{f}: {r:?}");
        assert_eq!((mine[0].1, mine[0].2), (235536, 235536 + 65536));
        for a in &r {
            for b in &r {
                if a != b {
                    assert!(a.2 <= b.1 || b.2 <= a.1, "{f}: {a:?} overlaps {b:?}");
                }
            }
        }
        assert!(
            !p.join(format!("{f}.lock")).exists(),
            "the lock is released"
        );
    }
    assert!(fs::read_to_string(p.join("etc/subuid"))
        .unwrap()
        .contains("# a comment"));
    // Each v1 hierarchy has the subtree, owned by the user; cpuset has
    // the parent's cpus and mems.
    for c in ["memory", "pids", "cpuset", "cpu,cpuacct", "devices"] {
        let d = p.join("sys/fs/cgroup").join(c).join("compute-worker");
        assert_eq!(fs::metadata(&d).unwrap().uid(), e.uid, "{}", d.display());
    }
    let cs = p.join("sys/fs/cgroup/cpuset/compute-worker");
    assert_eq!(fs::read_to_string(cs.join("cpuset.cpus")).unwrap(), "0-1\n");
    assert_eq!(fs::read_to_string(cs.join("cpuset.mems")).unwrap(), "0\n");
    assert_eq!(fs::metadata(cs.join("cpuset.cpus")).unwrap().uid(), e.uid);
    // The user's cache directories.
    let home = nix::unistd::User::from_name(&e.user).unwrap().unwrap().dir;
    let state = p
        .join(home.strip_prefix("/").unwrap())
        .join(".local/state/compute-worker");
    assert_eq!(fs::metadata(&state).unwrap().uid(), e.uid);
    assert!(
        out.contains("--root given"),
        "linger is not touched under --root: {out}"
    );

    // A second run changes nothing and says so.
    let after = snapshot(p);
    let second = setup_host(p, &[]);
    let out = second.ok();
    assert!(out.contains("nothing to change"), "{out}");
    assert!(!out.contains("   did "), "{out}");
    assert_eq!(snapshot(p), after);
}

#[test]
#[ignore = "needs root"]
fn setup_host_on_cgroup_v2_writes_the_systemd_delegation_drop_in() {
    assert!(is_root(), "needs root");
    let root = fake_root(true);
    let p = root.path();
    let out = setup_host(p, &[]).ok();
    let drop_in = p.join("etc/systemd/system/user@.service.d/delegate.conf");
    let text = fs::read_to_string(&drop_in).unwrap_or_else(|_| panic!("no drop-in: {out}"));
    assert!(
        text.contains("[Service]\nDelegate=cpu cpuset io memory pids\n"),
        "{text}"
    );
    // No chowned subtree on v2: the worker uses its service's delegated
    // cgroup, and the drop-in needs the user's manager restarted.
    assert!(!out.contains("COMPUTE_WORKER_CGROUP_PARENT="), "{out}");
    assert!(
        out.contains("leave COMPUTE_WORKER_CGROUP_PARENT unset"),
        "{out}"
    );
    assert!(out.contains("install-service"), "{out}");
    assert!(out.contains("Delegate=yes"), "{out}");
    assert!(out.contains("systemctl restart user@"), "{out}");
    let again = setup_host(p, &[]).ok();
    assert!(again.contains("nothing to change"), "{again}");
}

#[test]
fn setup_host_refuses_to_run_as_an_ordinary_user_except_dry_run() {
    let e = env();
    let refused = Run(e
        .command(&["setup-host", "--user", &e.user])
        .output()
        .unwrap());
    assert_eq!(refused.code(), 1);
    assert!(
        refused.stderr().contains("must run as root"),
        "{}",
        refused.stderr()
    );
    assert!(
        refused.stderr().contains("--dry-run"),
        "{}",
        refused.stderr()
    );
    let dry = Run(e
        .command(&[
            "setup-host",
            "--user",
            &e.user,
            "--cgroup-parent",
            &e.cgroup_parent,
            "--dry-run",
        ])
        .output()
        .unwrap());
    let out = dry.ok();
    assert!(out.contains("(unchanged)"), "{out}");
}

#[test]
#[ignore = "needs root"]
fn setup_host_for_real_on_a_fresh_user_then_doctor_passes_and_bench_startup_runs() {
    assert!(is_root(), "needs root");
    let _accounts = ACCOUNTS.lock().unwrap_or_else(|e| e.into_inner());
    let name = "cwsetup";
    let (uid, gid) = ensure_user(name);
    let parent = "/cw-setup-test";
    let run = |extra: &[&str]| {
        let mut args = vec!["setup-host", "--user", name, "--cgroup-parent", parent];
        args.extend_from_slice(extra);
        Run(Command::new(BIN).args(&args).output().unwrap())
    };
    let first = run(&[]);
    let second = run(&[]);
    let home = format!("/home/{name}");
    let doctor = doctor_as(uid, gid, &home)
        .env("COMPUTE_WORKER_CGROUP_PARENT", parent)
        .output()
        .unwrap();
    // Issue 15: the startup benchmark as that ordinary user, nothing else
    // (without podman, whose rootless pause process would outlive it and
    // keep the account from being removed).
    let bench = Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .arg("--init-groups")
        .arg(&env().bin)
        .args([
            "bench",
            "startup",
            "--runs",
            "2",
            "--phase-runs",
            "1",
            "--json",
            "-",
        ])
        .args([
            "--runtimes",
            "floor,compute-worker,compute-worker-serve-path,runc",
        ])
        .current_dir(&home)
        .env("HOME", &home)
        .env("COMPUTE_WORKER_CGROUP_PARENT", parent)
        .env_remove("COMPUTE_WORKER_STATE_DIR")
        .output()
        .unwrap();
    let uids = subid_lines("/etc/subuid", name);
    let gids = subid_lines("/etc/subgid", name);
    // Clean up before asserting: the cgroups (empty), the ranges, the user.
    for m in fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let _ = fs::remove_dir(m.path().join(parent.trim_start_matches('/')));
    }
    remove_user(name);

    let out = first.ok();
    assert!(out.contains("did run: usermod --add-subuids"), "{out}");
    assert_eq!(uids.len(), 1, "{uids:?}");
    assert_eq!(gids.len(), 1, "{gids:?}");
    assert!(subid_lines("/etc/subuid", name).is_empty(), "test cleanup");
    let out2 = second.ok();
    assert!(out2.contains("nothing to change"), "{out2}");
    let r = rows(&doctor);
    for n in ["subuid", "subgid", "overlay in userns", "cgroup"] {
        assert_status(&r, n, "ok");
    }
    assert_writable_dirs(&r);
    assert_eq!(doctor.status.code(), Some(0));
    let bench = Run(bench);
    let report: serde_json::Value = serde_json::from_str(&bench.ok()).unwrap();
    let measured: Vec<&str> = report["runtimes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    for name in ["floor", "compute-worker", "compute-worker-serve-path"] {
        assert!(measured.contains(&name), "{name}: {report:#}");
    }
    assert_eq!(report["leftovers"]["processes"], 0, "{report:#}");
}

/// `compute-worker [--env-file F] install-service ARGS` with its config in
/// `config` and no systemd user manager.
fn install_service(config: &Path, env_file: Option<&Path>, args: &[&str]) -> Run {
    let mut cmd = Command::new(BIN);
    if let Some(f) = env_file {
        cmd.arg("--env-file").arg(f);
    }
    cmd.arg("install-service")
        .args(args)
        .env("XDG_CONFIG_HOME", config)
        .env("XDG_RUNTIME_DIR", config.join("no-runtime"))
        .env_remove("COMPUTE_WORKER_DRAIN_TIMEOUT")
        .current_dir(config);
    Run(cmd.output().unwrap())
}

#[test]
fn install_service_writes_a_unit_that_drains_before_systemd_kills() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path();
    let env_file = config.join("worker.env");
    fs::write(&env_file, "BROKER_URL=pyamqp://u:p@broker:5672/q\n").unwrap();
    let unit = config.join("systemd/user/compute-worker.service");

    // --dry-run prints the unit and writes nothing.
    let dry = install_service(config, Some(&env_file), &["--dry-run"]).ok();
    assert!(dry.contains("[Service]"), "{dry}");
    assert!(!unit.exists());

    let out = install_service(config, Some(&env_file), &[]).ok();
    assert!(out.contains(&format!("wrote {}", unit.display())), "{out}");
    assert!(
        out.contains("loginctl enable-linger"),
        "no user manager here: {out}"
    );
    assert!(
        out.contains("systemctl --user enable --now compute-worker.service"),
        "{out}"
    );
    let text = fs::read_to_string(&unit).unwrap();
    let bin = fs::canonicalize(BIN).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    for want in [
        format!(
            "ExecStart={} serve --drain-timeout 300s --env-file {}",
            bin.display(),
            env_file.display()
        ),
        "Restart=on-failure".into(),
        "KillMode=mixed".into(),
        "TimeoutStopSec=360s".into(),
        "Delegate=yes".into(),
        "WantedBy=default.target".into(),
    ] {
        assert!(
            lines.contains(&want.as_str()),
            "missing `{want}` in:\n{text}"
        );
    }
    assert_eq!(
        dry.lines().skip(1).take(lines.len()).collect::<Vec<_>>(),
        lines
    );

    // A longer drain gives systemd a longer stop timeout.
    let again = install_service(config, Some(&env_file), &[]).ok();
    assert!(again.contains("unchanged"), "{again}");
    install_service(config, Some(&env_file), &["--drain-timeout", "10m"]).ok();
    let text = fs::read_to_string(&unit).unwrap();
    assert!(text.contains("TimeoutStopSec=660s"), "{text}");
    assert!(text.contains("--drain-timeout 600s"), "{text}");

    verify_unit(&unit);
}

/// `systemd-analyze verify --user` (systemd, which dev-setup.sh installs).
fn verify_unit(unit: &Path) {
    let runtime = tempfile::tempdir().unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--user"])
        .arg(unit)
        .env("XDG_RUNTIME_DIR", runtime.path())
        .output()
        .expect("systemd-analyze (apt-get install systemd; scripts/dev-setup.sh does)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {stderr}"
    );
}

#[test]
fn install_service_refuses_a_missing_env_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.env");
    let mut cmd = Command::new(BIN);
    cmd.arg("install-service")
        .env("XDG_CONFIG_HOME", dir.path())
        .current_dir(dir.path());
    // main reads --env-file first and names it.
    let run = Run(cmd
        .args(["--env-file", missing.to_str().unwrap()])
        .output()
        .unwrap());
    assert_ne!(run.code(), 0);
    assert!(run.stderr().contains("nope.env"), "{}", run.stderr());
    assert!(!dir
        .path()
        .join("systemd/user/compute-worker.service")
        .exists());
}
