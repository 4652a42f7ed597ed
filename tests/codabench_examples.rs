//! The two real Codabench competitions of ../shared/codabench-examples run
//! through both steps with `compute-worker run`, and through `serve` with
//! tasks published by the real Celery as sites before and after v1.27
//! send them, as the unprivileged test user, on a Debian image with python3, numpy, scipy, scikit-learn,
//! pandas, psutil and yaml (built by scripts/build-python-image.sh with
//! debootstrap and cached; imported into the worker's image cache).

mod e2e;
mod sandbox_env;
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;

use sandbox_env::{env, env_noids, user_dir, Env};
use support::amqp::unique_queue;
use support::site::{FakeSite, SiteVersion};

const IMAGE: &str = "localhost/codabench-python:test";

fn examples() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/codabench-examples");
    assert!(
        p.is_dir(),
        "{} is missing (CI lays shared/ beside the repository)",
        p.display()
    );
    p
}

/// The image cache holding the Python image (built once per test run).
fn image_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| python_images(env()))
}

/// The same, for the user without subordinate ids (single-id mode).
fn image_dir_noids() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| python_images(env_noids()))
}

/// An image cache of `e`'s user with the Python image imported.
fn python_images(e: &Env) -> PathBuf {
    {
        assert!(
            e.as_root,
            "building the Python image needs root (debootstrap)"
        );
        let dir = e.dir("python-images", 0o755);
        let tar = dir.join("python.tar");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-python-image.sh");
        let out = Command::new("bash").arg(script).arg(&tar).output().unwrap();
        assert!(
            out.status.success(),
            "building the Python image: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        sandbox_env::chown_tree(&tar, e.uid, e.gid);
        let images = dir.join("images");
        let tar_s = tar.to_string_lossy().into_owned();
        e.images_run(&images, &["import", &tar_s]).ok();
        let _ = std::fs::remove_file(&tar);
        images
    }
}

/// `compute-worker run --image IMAGE ARGS` with results in a fresh folder;
/// returns the scores printed and the results folder.
fn run(name: &str, args: &[&str]) -> (Value, PathBuf) {
    let e = env();
    let results = user_dir(name, 0o755).join("results");
    let results_s = results.to_string_lossy().into_owned();
    let mut all = vec![
        "run",
        "--image",
        IMAGE,
        "--results",
        &results_s,
        "--network",
        "none",
    ];
    all.extend_from_slice(args);
    let r = e.images_run(image_dir(), &all);
    let out = r.ok();
    let scores = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("scores JSON ({e}): {out}\n{}", r.stderr()));
    (scores, results)
}

fn p(rel: &str) -> String {
    examples().join(rel).to_string_lossy().into_owned()
}

#[test]
fn wheat_code_submission_with_ingestion_and_sklearn_scoring() {
    let (scores, results) = run(
        "wheat",
        &[
            "--submission",
            &p("wheat/submission"),
            "--ingestion-program",
            &p("wheat/ingestion_program"),
            "--input-data",
            &p("wheat/input_data"),
            "--reference-data",
            &p("wheat/reference_data"),
            "--scoring-program",
            &p("wheat/scoring_program"),
        ],
    );
    // The example's model is an unseeded KMeans whose cluster labels fall in
    // any order: its accuracy is any number in [0, 1]. What matters is that
    // scoring read the ingestion's predictions and its metadata.json.
    let accuracy = scores["accuracy"]
        .as_f64()
        .unwrap_or_else(|| panic!("{scores}"));
    assert!((0.0..=1.0).contains(&accuracy), "{scores}");
    let duration = scores["duration"]
        .as_f64()
        .unwrap_or_else(|| panic!("{scores}"));
    assert!(duration >= 0.0, "the ingestion's duration: {scores}");
    assert!(results.join("prediction/prediction_result.zip").is_file());
    assert!(results.join("scoring/scoring_result.zip").is_file());
}

#[test]
fn iris_legacy_code_submission_with_dollar_tokens() {
    let (scores, results) = run(
        "iris-code",
        &[
            "--submission",
            &p("iris/submission_code"),
            "--ingestion-program",
            &p("iris/ingestion_program"),
            "--input-data",
            &p("iris/input_data"),
            "--reference-data",
            &p("iris/reference_data"),
            "--scoring-program",
            &p("iris/scoring_program"),
        ],
    );
    assert!(
        scores.as_object().is_some_and(|m| !m.is_empty()),
        "{scores}"
    );
    assert!(results.join("scoring/scores.json").is_file());
    // The scoring program's html page is the detailed results (v1.5 style).
    assert!(results.join("scoring/detailed_results.html").is_file());
}

#[test]
fn iris_result_submission_is_scored_directly() {
    let (scores, _) = run(
        "iris-result",
        &[
            "--submission",
            &p("iris/submission_result"),
            "--reference-data",
            &p("iris/reference_data"),
            "--scoring-program",
            &p("iris/scoring_program"),
        ],
    );
    assert!(
        scores.as_object().is_some_and(|m| !m.is_empty()),
        "{scores}"
    );
}

#[test]
fn iris_result_submission_run_as_codabench_1_27_reaches_scoring_through_input_res() {
    // No ingestion program: nothing runs in prediction, and the result
    // files reach the scoring program by the copy into input/res.
    let (scores, results) = run(
        "iris-result-127",
        &[
            "--codabench",
            "1.27",
            "--submission",
            &p("iris/submission_result"),
            "--reference-data",
            &p("iris/reference_data"),
            "--scoring-program",
            &p("iris/scoring_program"),
        ],
    );
    assert!(
        scores.as_object().is_some_and(|m| !m.is_empty()),
        "{scores}"
    );
    let prediction = std::fs::read(results.join("prediction/prediction_result.zip")).unwrap();
    assert_eq!(e2e::zip_names(&prediction), ["metadata"]);
}

/// One submission through both steps of `serve`, the tasks published by
/// the real Celery as a site of `version` builds them, with the bundles
/// zipped from the example's directories (site key, directory). Returns
/// the scores the site received.
async fn through_serve(
    name: &str,
    id: u64,
    version: SiteVersion,
    bundles: &[(&str, &str)],
) -> Value {
    through_serve_as(env(), image_dir(), name, id, version, bundles).await
}

/// [`through_serve`] as the user of `e`, with its image cache `images`.
async fn through_serve_as(
    e: &'static Env,
    images: &Path,
    name: &str,
    id: u64,
    version: SiteVersion,
    bundles: &[(&str, &str)],
) -> Value {
    let queue = unique_queue(name);
    let serve = e2e::Serve::start_on_as(e, name, &queue, images, &[]);
    let site = FakeSite::start(id, 7).await;
    for (key, dir) in bundles {
        site.add_bundle(key, e2e::zip_of(&examples().join(dir)));
    }
    e2e::publish(&queue, &site.task(version, false, IMAGE, 600));
    let st = e2e::wait_for_status(&site, &serve, "Scoring", 600).await;
    assert_eq!(
        st.last().map(String::as_str),
        Some("Scoring"),
        "{}\n{}",
        site.last_details(),
        serve.log()
    );
    e2e::publish(&queue, &site.task(version, true, IMAGE, 600));
    let st = e2e::wait_for_status(&site, &serve, "Finished", 600).await;
    let stderr = site
        .upload("scoring_stderr.txt")
        .map(|u| String::from_utf8_lossy(&u.body).into_owned());
    assert_eq!(
        st.last().map(String::as_str),
        Some("Finished"),
        "{}\nscoring stderr: {stderr:?}\n{}",
        site.last_details(),
        serve.log()
    );
    assert!(site.upload("scoring_result.zip").is_some());
    serve.stop();
    site.scores().pop().expect("scores posted")
}

const WHEAT: &[(&str, &str)] = &[
    ("submission.zip", "wheat/submission"),
    ("ingestion_program.zip", "wheat/ingestion_program"),
    ("input_data.zip", "wheat/input_data"),
    ("reference_data.zip", "wheat/reference_data"),
    ("scoring_program.zip", "wheat/scoring_program"),
];

const IRIS: &[(&str, &str)] = &[
    ("submission.zip", "iris/submission_code"),
    ("ingestion_program.zip", "iris/ingestion_program"),
    ("input_data.zip", "iris/input_data"),
    ("reference_data.zip", "iris/reference_data"),
    ("scoring_program.zip", "iris/scoring_program"),
];

fn accuracy_in_range(scores: &Value) {
    let accuracy = scores["accuracy"]
        .as_f64()
        .unwrap_or_else(|| panic!("{scores}"));
    assert!((0.0..=1.0).contains(&accuracy), "{scores}");
}

fn some_scores(scores: &Value) {
    assert!(
        scores.as_object().is_some_and(|m| !m.is_empty()),
        "{scores}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wheat_through_serve_as_a_v126_site_sends_it() {
    accuracy_in_range(&through_serve("serve-wheat-126", 801, SiteVersion::V126, WHEAT).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wheat_through_serve_as_a_v127_site_sends_it() {
    accuracy_in_range(&through_serve("serve-wheat-127", 802, SiteVersion::V127, WHEAT).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iris_through_serve_as_a_v126_site_sends_it() {
    some_scores(&through_serve("serve-iris-126", 803, SiteVersion::V126, IRIS).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iris_through_serve_as_a_v127_site_sends_it() {
    some_scores(&through_serve("serve-iris-127", 804, SiteVersion::V127, IRIS).await);
}

// Single-id mode: a user with no /etc/subuid or /etc/subgid range.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wheat_through_serve_without_subordinate_ids() {
    let images = image_dir_noids();
    let e = env_noids();
    accuracy_in_range(
        &through_serve_as(
            e,
            images,
            "serve-wheat-noids",
            805,
            SiteVersion::V127,
            WHEAT,
        )
        .await,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iris_through_serve_without_subordinate_ids() {
    let images = image_dir_noids();
    let e = env_noids();
    some_scores(
        &through_serve_as(e, images, "serve-iris-noids", 806, SiteVersion::V126, IRIS).await,
    );
}

#[test]
fn python_chowns_and_drops_privileges_without_subordinate_ids() {
    let e = env_noids();
    let script = "import os\n\
open('/tmp/f', 'w').close()\n\
os.chown('/tmp/f', 1000, 1000)\n\
os.setgroups([1000])\n\
os.setresgid(1000, 1000, 1000)\n\
os.setresuid(1000, 1000, 1000)\n\
st = os.stat('/tmp/f')\n\
print(st.st_uid, st.st_gid, os.getuid(), os.getgid())\n";
    let r = e.images_run(
        image_dir_noids(),
        &["exec", "--image", IMAGE, "--", "python3", "-c", script],
    );
    // Every call succeeded, and nothing changed: one owner, one uid.
    assert_eq!(r.ok().trim(), "0 0 0 0", "{}", r.stderr());
}
