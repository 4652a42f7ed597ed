//! In-process cost of starting one sandbox through the library API, with
//! the rootfs ready: `Sandbox::start` until the program runs, and the full
//! start → exit → teardown of `true`. Run by bench/startup.sh as the
//! unprivileged user:
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
    let mut cfg = SandboxConfig::for_current_user(PathBuf::from(&args[3]), None).expect("config");
    cfg.binary = PathBuf::from(&args[1]);
    let run = RunSpec::new(&args[2], vec!["true".into()]);
    let (mut start, mut total) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let t = Instant::now();
        let sb = Sandbox::start(&cfg, &run, Output::Null, Output::Null).expect("start");
        start.push(t.elapsed());
        assert!(sb.wait(&cfg).expect("wait").success());
        total.push(t.elapsed());
    }
    println!(
        "library start (until the program runs): median {:.1} ms over {runs} runs",
        median(start).as_secs_f64() * 1e3
    );
    println!(
        "library start → exit → teardown of `true`: median {:.1} ms",
        median(total).as_secs_f64() * 1e3
    );
}
