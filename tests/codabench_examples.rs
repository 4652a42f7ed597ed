//! The two real Codabench competitions of ../shared/codabench-examples run
//! through both steps with `compute-worker run`, as the unprivileged test
//! user, on a Debian image with python3, numpy, scipy, scikit-learn,
//! pandas, psutil and yaml (built by scripts/build-python-image.sh with
//! debootstrap and cached; imported into the worker's image cache).

mod sandbox_env;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;

use sandbox_env::{env, user_dir};

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
    DIR.get_or_init(|| {
        let e = env();
        assert!(
            e.as_root,
            "building the Python image needs root (debootstrap)"
        );
        let dir = user_dir("python-images", 0o755);
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
    })
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
