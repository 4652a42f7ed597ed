//! `compute-worker bench startup` as the unprivileged test user: the JSON
//! document keeps its schema, the SVG names every measured runtime, every
//! known runtime is either measured or skipped with a reason, and nothing
//! of compute-worker's is left behind.

mod sandbox_env;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use serde_json::Value;

use sandbox_env::{env, Run};

const KNOWN: [&str; 7] = [
    "floor",
    "compute-worker",
    "compute-worker-serve-path",
    "runc",
    "crun",
    "youki",
    "podman",
];

/// `bench startup ARGS --json FILE` as the test user with `path` as its
/// $PATH: the process's output and the document.
fn bench(name: &str, path: &str, args: &[&str]) -> (Run, Option<Value>) {
    let e = env();
    let dir = e.dir(name, 0o755);
    let json = dir.join("report.json");
    let json_arg = json.display().to_string();
    let dir_arg = dir.display().to_string();
    let mut all = vec!["bench", "startup", "--json", &json_arg, "--dir", &dir_arg];
    all.extend_from_slice(args);
    let mut cmd = e.command(&all);
    cmd.env("PATH", path);
    let run = Run(cmd.output().unwrap());
    let doc = fs::read(&json)
        .ok()
        .map(|b| serde_json::from_slice(&b).unwrap());
    (run, doc)
}

fn names_of(list: &[Value], key: &str) -> Vec<String> {
    list.iter()
        .map(|r| r[key].as_str().unwrap().to_string())
        .collect()
}

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect()
}

/// Every known runtime exactly once, measured or skipped with a reason.
#[track_caller]
fn assert_all_accounted_for(doc: &Value) {
    let mut seen = names(&doc["runtimes"]);
    seen.extend(names(&doc["skipped"]));
    let set: BTreeSet<&str> = seen.iter().map(String::as_str).collect();
    assert_eq!(seen.len(), set.len(), "twice: {seen:?}");
    assert_eq!(set, KNOWN.into_iter().collect(), "{doc:#}");
    for s in doc["skipped"].as_array().unwrap() {
        assert!(
            !s["reason"].as_str().unwrap().is_empty(),
            "no reason for {s}"
        );
    }
}

#[test]
fn bench_startup_writes_the_documented_schema_and_a_plot() {
    let e = env();
    let svg = e.dir("bench-schema-plot", 0o755).join("startup.svg");
    let svg_arg = svg.display().to_string();
    let (run, doc) = bench(
        "bench-schema",
        &std::env::var("PATH").unwrap(),
        &["--runs", "3", "--phase-runs", "2", "--svg", &svg_arg],
    );
    let out = run.ok();
    let doc = doc.expect("no JSON written");
    assert_eq!(doc["schema"], "compute-worker/bench-startup/1");
    assert_eq!(doc["runs"], 3);
    assert_eq!(doc["parallel"], 1);
    assert!(doc["program"].as_str().unwrap().starts_with("/true"));
    assert_eq!(doc["host"]["uid"], e.uid);
    assert!(doc["host"]["cpus"].as_u64().unwrap() >= 1);
    for k in ["before", "after"] {
        assert_eq!(doc["load"][k].as_array().unwrap().len(), 3, "{doc:#}");
    }
    assert!(doc["load"]["round_spread"].as_f64().unwrap() >= 0.0);
    assert!(doc["load"]["moved"].is_boolean());
    assert_all_accounted_for(&doc);
    let measured = names(&doc["runtimes"]);
    assert!(measured.contains(&"floor".to_string()), "{doc:#}");
    assert!(measured.contains(&"compute-worker".to_string()), "{doc:#}");
    let has_runc = measured.contains(&"runc".to_string());
    for m in doc["runtimes"].as_array().unwrap() {
        let samples = m["samples_ms"].as_array().unwrap();
        assert_eq!(
            samples.len() + m["failures"].as_u64().unwrap() as usize,
            3,
            "{m}"
        );
        let f = |k: &str| m[k].as_f64().unwrap_or_else(|| panic!("{k} in {m}"));
        assert!(f("p25_ms") <= f("median_ms"), "{m}");
        assert!(f("median_ms") <= f("p75_ms"), "{m}");
        assert!(f("p75_ms") <= f("p99_ms"), "{m}");
        assert!(f("starts_per_second") > 0.0, "{m}");
        assert!(
            m["command"].as_array().is_some_and(|c| !c.is_empty()),
            "{m}"
        );
        for k in ["ratio_of_medians", "median_round_ratio"] {
            assert_eq!(m[k].is_f64(), has_runc, "{k} in {m}");
        }
        // The table shows every measured runtime.
        assert!(
            out.contains(&format!("| {}", m["name"].as_str().unwrap())),
            "{out}"
        );
    }
    // One breakdown per compute-worker runtime: exec, and the serve path
    // (in this process, through the fork server).
    assert!(
        measured.contains(&"compute-worker-serve-path".to_string()),
        "{doc:#}"
    );
    let serve_path = doc["runtimes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "compute-worker-serve-path")
        .unwrap();
    assert!(
        serve_path["note"].as_str().unwrap().contains("fork server"),
        "{serve_path}"
    );
    let breakdowns = doc["phases"].as_array().unwrap();
    assert_eq!(
        names_of(breakdowns, "runtime"),
        ["compute-worker", "compute-worker-serve-path"]
    );
    for b in breakdowns {
        assert_eq!(b["runs"], 2);
        let phases = b["median_ms"].as_array().unwrap();
        assert_eq!(
            names_of(phases, "name"),
            [
                "process start and exit",
                "configuration",
                "user namespace",
                "keeper",
                "mounts",
                "libcontainer init",
                "program",
                "teardown",
                "other"
            ]
        );
        let ms = |name: &str| {
            phases.iter().find(|p| p["name"] == name).unwrap()["ms"]
                .as_f64()
                .unwrap()
        };
        for p in phases {
            assert!(p["ms"].as_f64().unwrap() >= 0.0, "{p}");
        }
        // Where a start goes: each phase the sandbox has took some time.
        for name in ["user namespace", "mounts", "libcontainer init", "program"] {
            assert!(ms(name) > 0.0, "{name}: {b:#}");
        }
    }
    assert_eq!(doc["leftovers"]["run_dirs"], 0, "{doc:#}");
    assert_eq!(doc["leftovers"]["processes"], 0, "{doc:#}");
    let picture = fs::read_to_string(&svg).expect("no SVG written");
    assert!(picture.contains("<svg"), "{picture}");
    for name in &measured {
        assert!(picture.contains(name.as_str()), "{name} not in the plot");
    }
}

/// A $PATH with only what compute-worker itself needs, and a runc that
/// fails as a broken installation does.
fn path_without_runtimes(dir: &Path) -> String {
    for tool in ["newuidmap", "newgidmap"] {
        let real = which::which(tool).unwrap();
        let _ = symlink(real, dir.join(tool));
    }
    let runc = dir.join("runc");
    fs::write(
        &runc,
        "#!/bin/sh\necho 'runc run failed: no such file or directory: /run/runc' >&2\nexit 1\n",
    )
    .unwrap();
    fs::set_permissions(&runc, fs::Permissions::from_mode(0o755)).unwrap();
    dir.display().to_string()
}

#[test]
fn bench_startup_says_why_it_skipped_each_runtime() {
    let path = path_without_runtimes(&env().dir("bench-path", 0o755));
    let (run, doc) = bench(
        "bench-skips",
        &path,
        &["--runs", "2", "--phase-runs", "0", "--parallel", "2"],
    );
    let out = run.ok();
    let doc = doc.expect("no JSON written");
    assert_all_accounted_for(&doc);
    assert_eq!(
        names(&doc["runtimes"]),
        ["floor", "compute-worker", "compute-worker-serve-path"]
    );
    let reason = |name: &str| {
        doc["skipped"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .map(|s| s["reason"].as_str().unwrap().to_string())
            .unwrap_or_else(|| panic!("{name} not skipped: {doc:#}"))
    };
    for name in ["crun", "youki", "podman"] {
        assert_eq!(reason(name), "not found on $PATH");
    }
    let runc = reason("runc");
    assert!(runc.starts_with("a trial start failed"), "{runc}");
    assert!(
        runc.contains("no such file or directory: /run/runc"),
        "{runc}"
    );
    // No runc, no ratio to it.
    for m in doc["runtimes"].as_array().unwrap() {
        assert!(m["ratio_of_medians"].is_null(), "{m}");
        assert_eq!(m["samples_ms"].as_array().unwrap().len(), 4, "{m}");
    }
    assert_eq!(doc["phases"], serde_json::json!([]));
    assert!(out.contains("skipped runc: a trial start failed"), "{out}");
    assert_eq!(doc["leftovers"]["processes"], 0, "{doc:#}");
}

#[test]
fn bench_startup_refuses_an_unknown_runtime_by_name() {
    let (run, doc) = bench(
        "bench-unknown",
        &std::env::var("PATH").unwrap(),
        &["--runs", "1", "--runtimes", "floor,dockerd"],
    );
    assert_ne!(run.code(), 0);
    assert!(
        run.stderr().contains("unknown runtime `dockerd`"),
        "{}",
        run.stderr()
    );
    assert!(doc.is_none());
}

#[test]
#[ignore = "needs root"]
fn bench_startup_refuses_to_run_as_root() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_compute-worker"))
        .args(["bench", "startup", "--runs", "1"])
        .output()
        .unwrap();
    assert!(nix::unistd::geteuid().is_root(), "run this test as root");
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not as root"), "{err}");
}
