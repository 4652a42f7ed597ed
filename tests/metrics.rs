//! `serve --metrics-addr`: the Prometheus endpoint scraped while a real job
//! runs (real RabbitMQ, real sandbox as the test user, the fake site) and
//! after it.

mod e2e;
mod sandbox_env;
mod support;

use std::time::{Duration, Instant};

use e2e::*;
use support::amqp::unique_queue;
use support::site::FakeSite;

/// A port on the loopback interface nobody listens on now.
fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

async fn scrape(addr: &str) -> Option<String> {
    let resp = reqwest::get(format!("http://{addr}/metrics")).await.ok()?;
    assert!(resp.status().is_success(), "{}", resp.status());
    resp.text().await.ok()
}

/// The value of the sample `series` (name and labels, as printed).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let value = l.strip_prefix(series)?.strip_prefix(' ')?;
        value.split(' ').next()?.parse().ok()
    })
}

/// Scrape until `ready` holds for the text, failing with the worker's log
/// (and the last scrape) after 60 s.
async fn scrape_until(addr: &str, serve: &Serve, ready: impl Fn(&str) -> bool) -> String {
    let t = Instant::now();
    let mut last = None;
    loop {
        if let Some(text) = scrape(addr).await {
            if ready(&text) {
                return text;
            }
            last = Some(text);
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "metrics never got there; last scrape:\n{last:?}\nworker log:\n{}",
            serve.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_a_running_job_then_its_outcome_and_phase_times() {
    let queue = unique_queue("e2e-metrics");
    let addr = free_addr();
    let serve = Serve::start_with(
        "serve-metrics",
        &queue,
        &[("COMPUTE_WORKER_METRICS_ADDR", &addr)],
    );
    let idle = scrape_until(&addr, &serve, |t| t.contains("compute_worker_slots ")).await;
    assert_eq!(sample(&idle, "compute_worker_slots"), Some(1.0), "{idle}");
    assert_eq!(
        sample(&idle, "compute_worker_slots_busy"),
        Some(0.0),
        "{idle}"
    );
    let cached = sample(&idle, "compute_worker_image_cache_bytes");
    assert!(
        cached.is_some_and(|b| b > 0.0),
        "the imported image: {idle}"
    );

    let site = FakeSite::start(520, 7).await;
    publish_sleeper(&serve, &queue, &site, "metrics-submission", "3.777").await;
    let busy = scrape(&addr).await.expect("scrape during the job");
    assert_eq!(
        sample(&busy, "compute_worker_slots_busy"),
        Some(1.0),
        "{busy}"
    );

    let st = wait_for_status(&site, &serve, "Scoring", 60).await;
    assert_eq!(st.last().map(String::as_str), Some("Scoring"), "{st:?}");
    let finished = r#"compute_worker_jobs_total{step="prediction",outcome="finished"}"#;
    let done = scrape_until(&addr, &serve, |t| sample(t, finished).is_some()).await;
    assert_eq!(sample(&done, finished), Some(1.0), "{done}");
    assert!(!done.contains(r#"outcome="failed""#), "{done}");
    assert_eq!(
        sample(&done, "compute_worker_slots_busy"),
        Some(0.0),
        "{done}"
    );
    for phase in ["download", "pull", "run", "upload"] {
        let count = format!(r#"compute_worker_phase_seconds_count{{phase="{phase}"}}"#);
        assert_eq!(sample(&done, &count), Some(1.0), "{phase}: {done}");
    }
    let run = sample(&done, r#"compute_worker_phase_seconds_sum{phase="run"}"#);
    assert!(
        run.is_some_and(|s| s >= 3.7),
        "the program slept 3.777 s: {done}"
    );
    // Issue 16: each stage's time, and what the program used.
    for stage in [
        "received",
        "bundles_downloaded",
        "image_ready",
        "sandbox_up",
        "program_done",
        "outputs_uploaded",
        "final_status",
        "cleanup",
    ] {
        let count = format!(r#"compute_worker_job_stage_seconds_count{{stage="{stage}"}}"#);
        assert_eq!(sample(&done, &count), Some(1.0), "{stage}: {done}");
    }
    let program_done = sample(
        &done,
        r#"compute_worker_job_stage_seconds_sum{stage="program_done"}"#,
    );
    assert!(program_done.is_some_and(|s| s >= 3.7), "{done}");
    let wall = sample(
        &done,
        r#"compute_worker_program_wall_seconds_sum{program="program"}"#,
    );
    assert!(wall.is_some_and(|s| s >= 3.7), "{done}");
    for series in [
        r#"compute_worker_program_cpu_seconds_count{program="program",mode="user"}"#,
        r#"compute_worker_program_cpu_seconds_count{program="program",mode="system"}"#,
        r#"compute_worker_program_peak_memory_bytes_count{program="program"}"#,
        r#"compute_worker_program_written_bytes_count{program="program"}"#,
    ] {
        assert_eq!(sample(&done, series), Some(1.0), "{series}: {done}");
    }
    let peak = sample(
        &done,
        r#"compute_worker_program_peak_memory_bytes_sum{program="program"}"#,
    );
    assert!(peak.is_some_and(|b| b > 0.0), "{done}");
    assert_eq!(
        sample(&done, "compute_worker_image_cache_hits_total"),
        Some(1.0),
        "{done}"
    );
    assert_eq!(
        sample(&done, "compute_worker_image_cache_misses_total"),
        Some(0.0),
        "{done}"
    );
    serve.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_metrics_address_stops_serve_with_the_flag_named() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let queue = unique_queue("e2e-metrics-taken");
    let mut serve = Serve::start_with(
        "serve-metrics-taken",
        &queue,
        &[("COMPUTE_WORKER_METRICS_ADDR", &addr)],
    );
    let t = Instant::now();
    let status = loop {
        if let Some(s) = serve.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "serve kept running:\n{}",
            serve.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!status.success());
    assert!(
        serve.log().contains(&format!("--metrics-addr {addr}")),
        "{}",
        serve.log()
    );
}
