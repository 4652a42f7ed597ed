//! In-process cost of starting one sandbox through the library API, with
//! the rootfs ready: `Sandbox::start` until the program runs, and the full
//! start → exit → teardown of `true`; with a new user namespace per
//! sandbox and with one held for all, from a single-threaded caller and
//! from one with threads (which execs the launcher, or asks the fork
//! server for one, as `serve` does). The configurations alternate run by
//! run. Run by bench/startup.sh as the unprivileged user:
//!
//!     sandbox_start <compute-worker binary> <rootfs> <state dir> [runs]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use compute_worker::sandbox::{Output, RunSpec, Sandbox, SandboxConfig};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: sandbox_start <compute-worker> <rootfs> <state dir> [runs]");
        std::process::exit(2);
    }
    let runs: usize = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(50);
    // A config that maps a new user namespace for every sandbox (as
    // `exec` does), one that holds a mapped namespace for all of them (as
    // `serve`, `run` and pulls do), and that one with a fork server.
    let mut fresh =
        SandboxConfig::for_current_user(PathBuf::from(&args[3]), None, Default::default())
            .expect("config");
    fresh.binary = PathBuf::from(&args[1]);
    let mut held = fresh.clone();
    held.hold_user_namespace()
        .expect("holding a user namespace");
    let mut served = held.clone();
    served
        .start_fork_server()
        .expect("starting the fork server");
    let run = RunSpec::new(&args[2], vec!["true".into()]);
    let round = |label: &str, configs: &[(&str, &SandboxConfig)]| {
        let mut times: Vec<(Vec<Duration>, Vec<Duration>)> =
            configs.iter().map(|_| Default::default()).collect();
        for _ in 0..runs {
            for ((_, cfg), (start, total)) in configs.iter().zip(times.iter_mut()) {
                let t = Instant::now();
                let sb = Sandbox::start(cfg, &run, Output::Null, Output::Null).expect("start");
                start.push(t.elapsed());
                assert!(sb.wait(cfg).expect("wait").success());
                total.push(t.elapsed());
            }
        }
        let ms = |v: Vec<Duration>| median(v).as_secs_f64() * 1e3;
        for ((name, _), (start, total)) in configs.iter().zip(times) {
            println!(
                "library start, {name}, {label} (until the program runs): median {:.2} ms over {runs} runs",
                ms(start)
            );
            println!(
                "library start → exit → teardown of `true`, {name}, {label}: median {:.2} ms",
                ms(total)
            );
        }
    };
    // A single-threaded caller clones the sandbox process (or, with a held
    // namespace, its launcher) from itself.
    round(
        "one-thread caller",
        &[
            ("new user namespace", &fresh),
            ("held user namespace", &held),
        ],
    );
    // A caller with threads (`serve`, `run`: tokio) execs the launcher, or
    // has the fork server clone it.
    std::thread::spawn(|| loop {
        std::thread::park();
    });
    round(
        "caller with threads",
        &[
            ("new user namespace", &fresh),
            ("held user namespace, exec'd launcher", &held),
            ("held user namespace, fork server", &served),
        ],
    );
}
