//! Issue 13, hole 1: a job with network allowed (Codabench's default) gets
//! a network namespace of its own, connected by pasta: it reaches a host
//! on the network, never the worker host's loopback, its abstract unix
//! sockets or its ports, and pasta ends with the run.
//!
//! The "network" is a test host in a network namespace the test makes
//! itself (`ip netns add` + a veth pair, as root), so no packet leaves the
//! machine. Needs root (as every sandbox test here: they switch to the
//! test user), iproute2, passt and a /dev/net/tun the test user may open
//! (scripts/dev-setup.sh).

mod sandbox_env;

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sandbox_env::{env, user_dir, user_files, wait_for_process, Run};

/// What each listener answers, so that a job's report says who it reached.
const TEST_HOST_TOKEN: &str = "reached-the-test-host-7d41";
const LOOPBACK_TOKEN: &str = "reached-the-worker-loopback-92c3";

/// The test host: a network namespace with one end of a veth pair.
struct TestHost {
    name: String,
    host_if: String,
    /// The test host's address, and the port its listener is on.
    addr: String,
    port: u16,
}

impl Drop for TestHost {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Answer every connection to `listener` with `token`.
fn serve_token(listener: TcpListener, token: &'static str) {
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            let mut s = s;
            let _ = s.write_all(format!("{token}\n").as_bytes());
        }
    });
}

/// The test host (removed when dropped; its names carry our pid).
fn test_host() -> TestHost {
    {
        assert!(
            nix::unistd::geteuid().is_root(),
            "these tests make a network namespace with `ip netns add`: run them as root"
        );
        let id = std::process::id() % 100_000;
        let host = TestHost {
            name: format!("cw-net-test-{id}"),
            host_if: format!("cwn{id}a"),
            addr: "198.18.77.2".into(),
            port: 18_777,
        };
        let peer = format!("cwn{id}b");
        // Left by an earlier run of the same pid: start clean.
        let _ = Command::new("ip")
            .args(["netns", "del", &host.name])
            .stderr(Stdio::null())
            .status();
        ip(&["netns", "add", &host.name]);
        ip(&[
            "link",
            "add",
            &host.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
        ]);
        ip(&["link", "set", &peer, "netns", &host.name]);
        ip(&["addr", "add", "198.18.77.1/30", "dev", &host.host_if]);
        ip(&["link", "set", &host.host_if, "up"]);
        let n = &host.name;
        ip(&["-n", n, "addr", "add", "198.18.77.2/30", "dev", &peer]);
        ip(&["-n", n, "link", "set", &peer, "up"]);
        ip(&["-n", n, "link", "set", "lo", "up"]);
        // The listener's socket is made in the test host's namespace by a
        // thread that enters it (a socket keeps the namespace it was made in).
        let ns = fs::File::open(format!("/run/netns/{n}")).unwrap();
        let addr: SocketAddr = format!("{}:{}", host.addr, host.port).parse().unwrap();
        let listener = std::thread::spawn(move || {
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            TcpListener::bind(addr).unwrap()
        })
        .join()
        .unwrap();
        serve_token(listener, TEST_HOST_TOKEN);
        host
    }
}

/// A listener on the worker host's 127.0.0.1.
fn loopback_listener() -> u16 {
    static PORT: OnceLock<u16> = OnceLock::new();
    *PORT.get_or_init(|| {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        serve_token(l, LOOPBACK_TOKEN);
        port
    })
}

/// `compute-worker run` of a submission running `script`, with the
/// network settings of a default job (network allowed, no --network).
fn run_job(name: &str, script: &str) -> (Run, PathBuf) {
    let dir = user_dir(name, 0o755);
    let submission = user_files(
        &format!("{name}-submission"),
        &[
            (
                "metadata.yaml",
                "command: sh /app/program/probe.sh\n".into(),
            ),
            ("probe.sh", script.into()),
        ],
    );
    let results = dir.join("results");
    let rootfs = env().rootfs.to_string_lossy().into_owned();
    let r = Run(env()
        .command(&[
            "run",
            "--rootfs",
            &rootfs,
            "--submission",
            &submission.to_string_lossy(),
            "--results",
            &results.to_string_lossy(),
            "--time-limit",
            "60",
        ])
        .env_remove("COMPUTE_WORKER_NETWORK")
        .output()
        .unwrap());
    (r, results)
}

/// The text of every file under `dir`.
fn all_text(dir: &Path) -> String {
    let mut s = String::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return s;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            s += &all_text(&p);
        } else if let Ok(t) = fs::read(&p) {
            s += &String::from_utf8_lossy(&t);
        }
    }
    s
}

/// A job reaches the test host through pasta, and not the listener on the
/// worker host's 127.0.0.1; its DNS goes to pasta's forwarder.
#[test]
#[ignore = "needs root (makes network namespaces with ip netns)"]
fn a_job_reaches_the_network_but_not_the_worker_hosts_loopback() {
    let host = test_host();
    let port = loopback_listener();
    // `sleep 1 |`: nc must not half-close before the answer comes (the
    // pasta of Debian 12, 2023-03, then loses the peer's FIN and nc waits
    // for it until the time limit).
    let script = format!(
        "echo \"test host: $(sleep 1 | nc -w 5 {addr} {tport})\"\n\
         echo \"loopback: $(sleep 1 | nc -w 3 127.0.0.1 {port})\"\n\
         echo \"resolv: $(cat /etc/resolv.conf)\"\n",
        addr = host.addr,
        tport = host.port,
    );
    let (r, results) = run_job("net-reach", &script);
    let report = all_text(&results) + &r.stdout() + &r.stderr();
    assert!(
        report.contains(&format!("test host: {TEST_HOST_TOKEN}")),
        "the job must reach the test host at {}: {report}",
        host.addr
    );
    assert!(
        !report.contains(LOOPBACK_TOKEN),
        "the job reached a listener on the worker host's 127.0.0.1:{port}: {report}"
    );
    assert!(
        report.contains("resolv: nameserver 169.254.1.1"),
        "the run's resolv.conf names pasta's DNS forwarder: {report}"
    );
}

/// The worker host's abstract unix sockets live in its network namespace:
/// a job must not see them (nor, with them, reach them).
#[test]
fn a_job_cannot_see_the_worker_hosts_abstract_unix_sockets() {
    let name = format!("cw-net-test-abstract-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let _listener = UnixListener::bind_addr(&addr).unwrap();
    assert!(fs::read_to_string("/proc/net/unix")
        .unwrap()
        .contains(&name));
    let (r, results) = run_job(
        "net-abstract",
        "echo \"unix sockets: $(grep -c cw-net-test-abstract /proc/net/unix)\"\n",
    );
    let report = all_text(&results) + &r.stdout();
    assert!(
        report.contains("unix sockets: 0"),
        "the job sees the worker host's abstract unix socket @{name}: {report}"
    );
}

/// A job's listener is not reachable from the worker host's loopback: no
/// port of the host is the job's.
#[test]
fn a_job_cannot_bind_a_port_of_the_worker_host() {
    let port = 18_000 + std::process::id() % 1000;
    let marker = "sleep 4.6127";
    let script = format!("nc -l -p {port} -e echo job-listener &\n{marker}\n");
    let h = std::thread::spawn(move || run_job("net-bind", &script));
    let pid = wait_for_process(marker);
    let ns = fs::read_link(format!("/proc/{pid}/ns/net"))
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut reached = None;
    while Instant::now() < deadline && reached.is_none() {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port as u16)) {
            let mut got = String::new();
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = s.read_to_string(&mut got);
            if got.contains("job-listener") {
                reached = Some(got);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (r, _) = h.join().unwrap();
    assert!(
        reached.is_none(),
        "the host's 127.0.0.1:{port} reached the job's listener: {reached:?}"
    );
    r.ok();
    // `run` starts sandboxes from a launcher in a held user namespace:
    // pasta ends with its job there too.
    assert_nothing_holds(&ns, "the end of a `run` job");
}

/// Processes (on the whole host) that hold the network namespace `ns`
/// (`net:[INODE]`) open: pasta does while it runs.
fn holders_of(ns: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let pid = e.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        let holds = fds
            .flatten()
            .any(|fd| fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy() == ns));
        let own =
            fs::read_link(format!("/proc/{pid}/ns/net")).is_ok_and(|l| l.to_string_lossy() == ns);
        if holds || own {
            let cmd = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            found.push(format!(
                "{pid}: {}",
                String::from_utf8_lossy(&cmd).replace('\0', " ")
            ));
        }
    }
    found
}

/// Start `exec --network pasta` running `marker` (a sleep), and return it
/// with the run's network namespace once pasta holds it.
fn pasta_exec(marker: &str, opts: &[&str]) -> (std::process::Child, String) {
    let secs = marker.trim_start_matches("sleep ");
    let mut all = vec!["--network", "pasta"];
    all.extend_from_slice(opts);
    let child = env()
        .exec_cmd(&all, &["sleep", secs])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = wait_for_process(marker);
    let ns = fs::read_link(format!("/proc/{pid}/ns/net"))
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let pasta = holders_of(&ns)
        .into_iter()
        .any(|h| h.contains("pasta") || h.contains("passt"));
    assert!(
        pasta,
        "pasta holds the run's namespace {ns}: {:?}",
        holders_of(&ns)
    );
    (child, ns)
}

fn assert_nothing_holds(ns: &str, after: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = holders_of(ns);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "after {after}, processes still hold the run's network namespace {ns}: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// pasta ends with the run: after the program's end, after a time limit,
/// after a kill on request (SIGTERM of exec, as a revoke kills), and after
/// the worker itself is killed.
#[test]
fn pasta_ends_with_the_run() {
    let (child, ns) = pasta_exec("sleep 1.7311", &[]);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_nothing_holds(&ns, "the program's end");

    let (child, ns) = pasta_exec("sleep 31.7312", &["--timeout", "2"]);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(124));
    assert_nothing_holds(&ns, "the time limit");

    let (child, ns) = pasta_exec("sleep 31.7313", &[]);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(137),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_nothing_holds(&ns, "a kill on request");

    let (mut child, ns) = pasta_exec("sleep 31.7314", &[]);
    child.kill().unwrap();
    child.wait().unwrap();
    assert_nothing_holds(&ns, "SIGKILL of the worker");
}

/// `doctor --json` as the test user with `COMPUTE_WORKER_NETWORK` = `mode`
/// (unset: the default): its network row.
fn doctor_network_row(mode: Option<&str>) -> (String, String, String) {
    let mut cmd = env().command(&["doctor", "--json"]);
    cmd.env_remove("COMPUTE_WORKER_NETWORK")
        .env_remove("COMPETITION_CONTAINER_NETWORK_DISABLED")
        // No broker to ask: its row fails, the network row is what counts.
        .env("BROKER_URL", "pyamqp://nobody:nothing@127.0.0.1:1//");
    if let Some(m) = mode {
        cmd.env("COMPUTE_WORKER_NETWORK", m);
    }
    let out = cmd.output().unwrap();
    sandbox_env::doctor_rows(&out)
        .remove("network")
        .unwrap_or_else(|| panic!("no network row: {}", String::from_utf8_lossy(&out.stdout)))
}

/// `doctor` reports the network mode: pasta by default (ready on this
/// host), a warning for the host's namespace.
#[test]
fn doctor_reports_the_network_mode_and_warns_about_host() {
    let (status, detail, _) = doctor_network_row(None);
    assert_eq!(status, "ok", "{detail}");
    assert!(detail.starts_with("pasta"), "{detail}");
    let (status, detail, fix) = doctor_network_row(Some("host"));
    assert_eq!(status, "warn", "{detail}");
    assert!(detail.contains("127.0.0.1"), "{detail}");
    assert!(fix.contains("COMPUTE_WORKER_NETWORK"), "{fix}");
}

/// A worker run by root: pasta, started as root, switches to `nobody`
/// unless told otherwise, and `nobody` may not enter the run's user
/// namespace (root owns it), so every job with network failed ("pasta
/// could not connect the run's network"). The embedded demo job (whose
/// programs get network, Codabench's default) runs as root too.
#[test]
#[ignore = "needs root"]
fn a_worker_run_by_root_connects_its_runs() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "needs root: it checks a worker run by root"
    );
    let dir = std::env::temp_dir().join(format!("cw-root-demo-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_compute-worker"))
        .arg("run")
        .current_dir(&dir)
        .env("HOME", &dir)
        .env_remove("COMPUTE_WORKER_STATE_DIR")
        .env_remove("COMPUTE_WORKER_NETWORK")
        .env_remove("COMPETITION_CONTAINER_NETWORK_DISABLED")
        .output()
        .unwrap();
    let _ = fs::remove_dir_all(&dir);
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("\"accuracy\": 1.0"), "{text}");
}
