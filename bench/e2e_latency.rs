//! End-to-end latency of a trivial submission through `compute-worker
//! serve`: a result submission and a shell scoring program on a cached
//! busybox image, from the publish of the prediction task to `Scoring`, and
//! from the publish of the scoring task to `Finished` (scores posted), with
//! the real RabbitMQ and the fake Codabench site of the tests. Each round
//! runs the submission as a v1.26 site and as a v1.27 site sends it, in
//! alternating order, so that both formats share the machine's load. The
//! phases come from when the site received each request. Run as root on a
//! host prepared by scripts/dev-setup.sh (the worker runs as the test
//! user):
//!
//!     cargo bench --bench e2e_latency [-- RUNS]

#[path = "../tests/e2e/mod.rs"]
mod e2e;
#[path = "../tests/sandbox_env/mod.rs"]
mod sandbox_env;
#[path = "../tests/support/mod.rs"]
mod support;

use std::fs;
use std::time::{Duration, Instant};

use e2e::*;
use support::site::{FakeSite, SiteVersion};

async fn until(site: &FakeSite, serve: &Serve, status: &str) {
    let t = Instant::now();
    while !site.statuses().iter().any(|s| s == status) {
        assert!(
            !site.statuses().iter().any(|s| s == "Failed"),
            "{:?}\n{}",
            site.patches(),
            serve.log()
        );
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no {status}:\n{}",
            serve.log()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn median(v: &[Duration]) -> f64 {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1000.0
}

/// When the site received the `n`-th PATCH (from `from`) matching `f`.
fn patch_at(site: &FakeSite, from: usize, f: impl Fn(&support::site::Patch) -> bool) -> Instant {
    site.patches()[from..]
        .iter()
        .find(|p| f(p))
        .map(|p| p.at)
        .expect("a PATCH")
}

/// One submission through both steps; the phases' durations, in order.
async fn round(
    conn: &lapin::Connection,
    queue: &str,
    serve: &Serve,
    site: &FakeSite,
    version: SiteVersion,
) -> Vec<(&'static str, Duration)> {
    let status = |s: &'static str| move |p: &support::site::Patch| p.get("status") == Some(s);
    let t0 = Instant::now();
    publish_fast(conn, queue, &site.task(version, false, IMAGE, 60)).await;
    until(site, serve, "Scoring").await;
    let first = site.patches()[0].at;
    let md5 = patch_at(site, 0, |p| p.get("md5").is_some());
    let upload = site.upload("prediction_result.zip").expect("prediction").at;
    let scoring = patch_at(site, 0, status("Scoring"));
    let n = site.patches().len();
    let t1 = Instant::now();
    publish_fast(conn, queue, &site.task(version, true, IMAGE, 60)).await;
    until(site, serve, "Finished").await;
    let s_first = site.patches()[n].at;
    let s_upload = site
        .upload("scoring_result.zip")
        .expect("scoring result")
        .at;
    let finished = patch_at(site, n, status("Finished"));
    vec![
        (
            "prediction: publish → first status (delivery, job directory)",
            first - t0,
        ),
        (
            "prediction: → md5 (submission downloaded and unzipped)",
            md5 - first,
        ),
        (
            "prediction: → result uploaded (image, nothing to run, zip)",
            upload - md5,
        ),
        ("prediction: → `Scoring`", scoring - upload),
        ("scoring: publish → first status", s_first - t1),
        (
            "scoring: → result uploaded (4 bundles, image, scoring program, zip)",
            s_upload - s_first,
        ),
        ("scoring: → `Finished` (scores posted)", finished - s_upload),
        ("prediction: publish → `Scoring`", scoring - t0),
        ("scoring: publish → `Finished`", finished - t1),
        ("both steps", (scoring - t0) + (finished - t1)),
    ]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let runs: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(10);
    let queue = support::amqp::unique_queue("bench-e2e");
    let serve = Serve::start("bench-e2e", &queue);
    let conn = support::amqp::connect().await;
    let result = sandbox_env::user_dir("bench-result", 0o755);
    fs::write(result.join("predictions.txt"), "odd\neven\n").unwrap();
    let scoring = sandbox_env::user_dir("bench-scoring", 0o755);
    fs::write(
        scoring.join("metadata"),
        "command: sh /app/program/score.sh\n",
    )
    .unwrap();
    fs::write(
        scoring.join("score.sh"),
        "echo '{\"accuracy\": 1.0}' > /app/output/scores.json\n",
    )
    .unwrap();
    let versions = [SiteVersion::V126, SiteVersion::V127];
    let mut phases: Vec<Vec<(&str, Vec<Duration>)>> = vec![Vec::new(), Vec::new()];
    let mut id = 900;
    for i in 0..runs + 1 {
        // Alternate which format goes first in a round.
        for k in [i % 2, 1 - i % 2] {
            id += 1;
            let site = FakeSite::start(id, 7).await;
            site.add_bundle("submission.zip", zip_of(&result));
            site.add_bundle("scoring_program.zip", zip_of(&scoring));
            site.add_bundle("reference_data.zip", demo_zip("reference_data"));
            let got = round(&conn, &queue, &serve, &site, versions[k]).await;
            if i == 0 {
                continue; // the first round warms the caches
            }
            if phases[k].is_empty() {
                phases[k] = got.iter().map(|(n, _)| (*n, Vec::new())).collect();
            }
            for (slot, (_, d)) in phases[k].iter_mut().zip(got) {
                slot.1.push(d);
            }
        }
    }
    println!("| phase | v1.26 task, median (ms) | v1.27 task, median (ms) |");
    println!("|---|---|---|");
    for (a, b) in phases[0].iter().zip(&phases[1]) {
        println!("| {} | {:.1} | {:.1} |", a.0, median(&a.1), median(&b.1));
    }
    println!("({runs} rounds, each format once per round, alternating order)");
    serve.stop();
}
