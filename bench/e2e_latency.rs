//! End-to-end latency of a trivial submission through `compute-worker
//! serve`: a result submission and a shell scoring program on a cached
//! busybox image, from the publish of the prediction task to `Scoring`, and
//! from the publish of the scoring task to `Finished`, with the real
//! RabbitMQ and the fake Codabench site of the tests. Run as root on a host
//! prepared by scripts/dev-setup.sh (the worker runs as the test user):
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
use support::site::FakeSite;

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

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64()
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
    let (mut prediction, mut scoring_t, mut total) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs + 1 {
        let site = FakeSite::start(900 + i as u64, 7).await;
        site.add_bundle("submission.zip", zip_of(&result));
        site.add_bundle("scoring_program.zip", zip_of(&scoring));
        site.add_bundle("reference_data.zip", demo_zip("reference_data"));
        let mut args = prediction_args(&site, IMAGE, 60);
        for k in ["ingestion_program", "input_data"] {
            args.as_object_mut().unwrap().remove(k);
        }
        let t = Instant::now();
        publish_fast(&conn, &queue, &args).await;
        until(&site, &serve, "Scoring").await;
        let p = t.elapsed();
        let t2 = Instant::now();
        publish_fast(&conn, &queue, &scoring_args(&site, IMAGE)).await;
        until(&site, &serve, "Finished").await;
        let s = t2.elapsed();
        if i > 0 {
            // The first round warms the caches.
            prediction.push(p);
            scoring_t.push(s);
            total.push(p + s);
        }
    }
    println!("| step | median (s) |");
    println!("|---|---|");
    println!(
        "| prediction: publish → Scoring | {:.3} |",
        median(prediction)
    );
    println!("| scoring: publish → Finished | {:.3} |", median(scoring_t));
    println!("| both steps | {:.3} |", median(total));
    println!("({runs} runs)");
    serve.stop();
}
