//! What programs leave behind, read by the real worker (`compute-worker
//! run` as the unprivileged test user, programs in real rootless
//! sandboxes): links are never followed out of the job, and every file or
//! bundle the worker parses or unpacks is bounded, and so are the
//! processes and the bytes a job's programs may make.

mod sandbox_env;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use sandbox_env::{chown_tree, env, user_dir, user_files, Run};

/// The job failed (exit 1) and its stderr names `what` (the cap's setting).
#[track_caller]
fn assert_fails_naming(r: &Run, what: &str) {
    assert_eq!(
        r.code(),
        1,
        "stdout: {}\nstderr: {}",
        r.stdout(),
        r.stderr()
    );
    assert!(r.stderr().contains(what), "{}", r.stderr());
}

/// `compute-worker run` with the busybox rootfs, the submission, and a
/// scoring program if given, with extra environment `vars`.
fn run_job(dir: &Path, submission: &Path, scoring: Option<&Path>, vars: &[(&str, &str)]) -> Run {
    run_job_with(dir, submission, scoring, vars, &[])
}

/// [`run_job`] with more arguments to `compute-worker run`.
fn run_job_with(
    dir: &Path,
    submission: &Path,
    scoring: Option<&Path>,
    vars: &[(&str, &str)],
    more: &[&str],
) -> Run {
    let e = env();
    let rootfs = e.rootfs.to_string_lossy().into_owned();
    let s = |p: &Path| p.to_string_lossy().into_owned();
    let results = s(&dir.join("results"));
    let mut args = vec![
        "run".to_string(),
        "--rootfs".into(),
        rootfs,
        "--submission".into(),
        s(submission),
        "--results".into(),
        results,
        "--network".into(),
        "none".into(),
    ];
    if let Some(p) = scoring {
        args.extend(["--scoring-program".into(), s(p)]);
    }
    args.extend(more.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cmd = e.command(&args);
    cmd.envs(vars.iter().copied());
    Run(cmd.output().unwrap())
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return found;
    };
    for e in entries.flatten() {
        let p = e.path();
        let t = e.file_type().unwrap();
        if t.is_dir() {
            found.extend(files_containing(&p, needle));
        } else if t.is_file() {
            let data = fs::read(&p).unwrap_or_default();
            let text = String::from_utf8_lossy(&data);
            if text.contains(needle) {
                found.push(p);
            } else if p.extension().is_some_and(|x| x == "zip") {
                let mut z = zip::ZipArchive::new(fs::File::open(&p).unwrap()).unwrap();
                for i in 0..z.len() {
                    let mut f = z.by_index(i).unwrap();
                    let mut s = Vec::new();
                    std::io::Read::read_to_end(&mut f, &mut s).unwrap();
                    if String::from_utf8_lossy(&s).contains(needle) {
                        found.push(p.join(f.name()));
                    }
                }
            }
        }
    }
    found
}

/// A result submission: its files are the predictions.
fn result_submission(name: &str) -> PathBuf {
    user_files(name, &[("predictions.txt", "1\n".into())])
}

/// Hole 0: a scoring program links `scores.txt` to the worker's `.env`,
/// `detailed_results.html` to `/proc/self/environ` and a file of the output
/// to the secret. None of it reaches the scores, the uploads or the result
/// zip; the job fails saying a link was refused.
#[test]
fn links_in_the_output_are_not_followed() {
    let dir = user_dir("links-not-followed", 0o755);
    let secret = dir.join(".env");
    fs::write(&secret, "BROKER_PASSWORD=hunter2-secret\n").unwrap();
    chown_tree(&secret, env().uid, env().gid);
    let submission = result_submission("links-not-followed-submission");
    let script = format!(
        "ln -s {secret} /app/output/scores.txt\n\
         ln -s /proc/self/environ /app/output/detailed_results.html\n\
         ln -s {secret} /app/output/copy.txt\n\
         ln -s / /app/output/root\n",
        secret = secret.display()
    );
    let scoring = user_files(
        "links-not-followed-scoring",
        &[
            (
                "metadata.yaml",
                "command: sh /app/program/score.sh\n".into(),
            ),
            ("score.sh", script),
        ],
    );
    let r = run_job(
        &dir,
        &submission,
        Some(&scoring),
        &[("CW_TEST_CANARY", "canary-of-the-environment")],
    );
    assert_eq!(
        r.code(),
        1,
        "stdout: {}\nstderr: {}",
        r.stdout(),
        r.stderr()
    );
    assert!(
        r.stderr().contains("symbolic link"),
        "the failure names the link: {}",
        r.stderr()
    );
    assert!(!r.stdout().contains("hunter2"), "{}", r.stdout());
    let results = dir.join("results");
    assert_eq!(
        files_containing(&results, "hunter2-secret"),
        Vec::<PathBuf>::new()
    );
    assert_eq!(
        files_containing(&results, "canary-of-the-environment"),
        Vec::<PathBuf>::new()
    );
}

/// Hole 0: a dangling `output/metadata` link left by the submission does
/// not make the worker create the file it points to.
#[test]
fn a_dangling_metadata_link_creates_nothing() {
    let dir = user_dir("dangling-metadata", 0o777);
    let target = dir.join("created-by-the-worker");
    let submission = user_files(
        "dangling-metadata-submission",
        &[
            ("metadata.yaml", "command: sh /app/program/p.sh\n".into()),
            (
                "p.sh",
                format!("ln -s {} /app/output/metadata\n", target.display()),
            ),
        ],
    );
    let r = run_job(&dir, &submission, None, &[]);
    assert_fails_naming(&r, "already contains a metadata file");
    assert!(
        fs::symlink_metadata(&target).is_err(),
        "the worker created {}",
        target.display()
    );
}

fn zip_file(path: &Path, build: impl FnOnce(&mut zip::ZipWriter<fs::File>)) {
    let mut w = zip::ZipWriter::new(fs::File::create(path).unwrap());
    build(&mut w);
    w.finish().unwrap();
    chown_tree(path, env().uid, env().gid);
}

fn deflated() -> zip::write::SimpleFileOptions {
    zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .large_file(true)
}

/// Hole 0: a chain of links in a bundle is resolved: `s -> .` and
/// `x -> s/s/../..` climbs out of the bundle and is refused.
#[test]
fn a_chain_of_links_in_a_bundle_cannot_climb_out() {
    let dir = user_dir("zip-link-chain", 0o755);
    let z = dir.join("submission.zip");
    zip_file(&z, |w| {
        w.start_file("predictions.txt", deflated()).unwrap();
        w.write_all(b"1\n").unwrap();
        w.add_symlink("s", ".", deflated()).unwrap();
        w.add_symlink("x", "s/s/../..", deflated()).unwrap();
    });
    let r = run_job(&dir, &z, None, &[]);
    assert_fails_naming(&r, "zip symlink `x` points outside");
}

/// Hole 8: a small zip holding a huge `metadata.yaml` fails the job with
/// a message naming the cap; the worker does not read it all.
#[test]
fn a_huge_metadata_file_fails_the_job_naming_the_cap() {
    let dir = user_dir("huge-metadata", 0o755);
    let z = dir.join("submission.zip");
    zip_file(&z, |w| {
        w.start_file("metadata.yaml", deflated()).unwrap();
        w.write_all(b"command: ").unwrap();
        let line = vec![b'a'; 1 << 20];
        for _ in 0..64 {
            w.write_all(&line).unwrap();
        }
    });
    assert!(fs::metadata(&z).unwrap().len() < 1 << 20);
    let r = run_job(&dir, &z, None, &[]);
    assert_fails_naming(&r, "COMPUTE_WORKER_PARSED_FILE_MAX");
}

/// Hole 8: a bundle that unpacks past the size cap, or holds more entries
/// than the entry cap, fails the job naming the cap.
#[test]
fn bundles_are_bounded_in_size_and_entries() {
    let dir = user_dir("bundle-bounds", 0o755);
    let z = dir.join("big.zip");
    zip_file(&z, |w| {
        w.start_file("data.bin", deflated()).unwrap();
        w.write_all(&vec![0u8; 3 << 20]).unwrap();
    });
    let r = run_job(&dir, &z, None, &[("COMPUTE_WORKER_BUNDLE_MAX", "1m")]);
    assert_fails_naming(&r, "COMPUTE_WORKER_BUNDLE_MAX");
    let z = dir.join("many.zip");
    zip_file(&z, |w| {
        for i in 0..20 {
            w.start_file(format!("f{i}"), deflated()).unwrap();
        }
    });
    let r = run_job(
        &dir,
        &z,
        None,
        &[("COMPUTE_WORKER_BUNDLE_MAX_ENTRIES", "10")],
    );
    assert_fails_naming(&r, "COMPUTE_WORKER_BUNDLE_MAX_ENTRIES");
}

/// Hole 8: a scoring program that writes a huge `scores.json` fails the
/// job naming the cap.
#[test]
fn huge_scores_fail_the_job_naming_the_cap() {
    let dir = user_dir("huge-scores", 0o755);
    let submission = result_submission("huge-scores-submission");
    let scoring = user_files(
        "huge-scores-scoring",
        &[
            (
                "metadata.yaml",
                "command: sh /app/program/score.sh\n".into(),
            ),
            (
                "score.sh",
                "head -c 2000000 /dev/zero | tr '\\0' ' ' > /app/output/scores.json\n".into(),
            ),
        ],
    );
    let r = run_job(
        &dir,
        &submission,
        Some(&scoring),
        &[("COMPUTE_WORKER_PARSED_FILE_MAX", "1m")],
    );
    assert_fails_naming(&r, "COMPUTE_WORKER_PARSED_FILE_MAX");
}

/// A submission that runs `script` (busybox sh).
fn script_submission(name: &str, script: &str) -> PathBuf {
    user_files(
        name,
        &[
            (
                "metadata.yaml",
                format!("command: sh /app/program/{name}.sh\n"),
            ),
            (&format!("{name}.sh"), script.into()),
        ],
    )
}

/// The text of `name` in the prediction's result zip, if there.
fn prediction_file(dir: &Path, name: &str) -> Option<String> {
    let zip = dir.join("results/prediction/prediction_result.zip");
    let mut z = zip::ZipArchive::new(fs::File::open(zip).ok()?).ok()?;
    let mut f = z.by_name(name).ok()?;
    let mut s = String::new();
    std::io::Read::read_to_string(&mut f, &mut s).ok()?;
    Some(s)
}

/// Processes whose command line contains `needle` (other tests run as
/// the test user at the same time: look for this test's own).
fn processes_matching(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let cmd = fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(needle) {
            found.push(format!("{name}: {cmd}"));
        }
    }
    found
}

/// Hole 9: with no setting, a job's programs cannot have more than 4096
/// processes: a program that starts sleepers until fork fails (or 5000)
/// stops short of 4096, and the job's log says what bounds it, here
/// `RLIMIT_NPROC` (no delegated cgroup). (Bounded at 5000 so that the
/// code without the limit does not take the host down.)
#[test]
fn a_job_has_at_most_4096_processes_by_default() {
    at_most_4096_processes("pids-default", &[], "RLIMIT_NPROC", "sleep 4201");
}

/// Hole 9: the same in a delegated cgroup, by its pids controller.
#[test]
fn a_job_in_a_delegated_cgroup_has_at_most_4096_processes() {
    let parent = env().cgroup_parent.clone();
    at_most_4096_processes(
        "pids-cgroup",
        &[("COMPUTE_WORKER_CGROUP_PARENT", &parent)],
        "cgroup pids controller",
        "sleep 4203",
    );
}

fn at_most_4096_processes(name: &str, vars: &[(&str, &str)], mechanism: &str, sleeper: &str) {
    let dir = user_dir(name, 0o755);
    let submission = script_submission(
        &format!("{name}-submission"),
        &format!(
            "i=0\nwhile [ $i -lt 5000 ]; do\n  {sleeper} &\n  i=$((i+1))\n  \
             echo $i > /app/output/count\ndone\n"
        ),
    );
    let r = run_job_with(&dir, &submission, None, vars, &["--time-limit", "120"]);
    let count: u32 = prediction_file(&dir, "count")
        .unwrap_or_else(|| panic!("no count; stderr: {}", r.stderr()))
        .trim()
        .parse()
        .unwrap();
    assert!(
        count < 4096,
        "the program started {count} processes; stderr: {}",
        r.stderr()
    );
    assert!(
        r.stderr().contains("processes: at most 4096") && r.stderr().contains(mechanism),
        "the job log says what bounds the processes: {}",
        r.stderr()
    );
    assert_eq!(processes_matching(sleeper), Vec::<String>::new());
}

/// Hole 9: a real fork bomb ends with its job (on the time limit), the
/// host goes on starting processes, and nothing of it is left running.
#[test]
fn a_fork_bomb_stops_at_the_job() {
    let dir = user_dir("fork-bomb", 0o755);
    let submission = script_submission("fork-bomb-submission", "b() { b | b & }\nb\nsleep 1000\n");
    let started = std::time::Instant::now();
    let r = run_job_with(&dir, &submission, None, &[], &["--time-limit", "10"]);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(90),
        "the job took {:?}",
        started.elapsed()
    );
    assert_fails_naming(&r, "Execution Time Limit exceeded");
    // The host still starts processes, as the test user too.
    let again = env().sh("echo alive");
    again.ok();
    assert!(again.stdout().contains("alive"));
    assert_eq!(
        processes_matching("fork-bomb-submission.sh"),
        Vec::<String>::new()
    );
}

/// Run `script` as the submission under a 200 MiB write cap: the job
/// fails naming the cap and its setting, not the time limit.
fn assert_write_cap_fails_the_job(name: &str, script: &str) {
    let dir = user_dir(name, 0o755);
    let submission = script_submission(&format!("{name}-submission"), script);
    let r = run_job_with(
        &dir,
        &submission,
        None,
        &[("COMPUTE_WORKER_WRITE_MAX", "200m")],
        &["--time-limit", "120"],
    );
    assert_eq!(
        r.code(),
        1,
        "stdout: {}\nstderr: {}",
        r.stdout(),
        r.stderr()
    );
    let err = r.stderr();
    assert!(
        err.contains("200 MiB") && err.contains("COMPUTE_WORKER_WRITE_MAX"),
        "the failure names the cap and its setting: {err}"
    );
    assert!(!err.contains("Execution Time Limit"), "{err}");
}

/// Hole 9: a disk filler writing into the output fails the job with a
/// message naming the cap and its setting.
#[test]
fn a_disk_filler_fails_the_job_naming_the_cap() {
    assert_write_cap_fails_the_job(
        "disk-filler",
        "dd if=/dev/zero of=/app/output/x bs=1M count=2000\nsleep 1000\n",
    );
}

/// Hole 9: what a program writes into its image (the run's upper layer)
/// counts too, in files each smaller than the cap.
#[test]
fn writes_in_the_image_count_toward_the_cap() {
    assert_write_cap_fails_the_job(
        "upper-filler",
        "for i in 1 2 3 4 5 6 7 8; do dd if=/dev/zero of=/tmp/f$i bs=1M count=50; done\nsleep 1000\n",
    );
}

/// The resource report at the end of the prediction's stderr log (the
/// file the site receives) for the submission; panics when missing.
fn resource_report(dir: &Path, r: &Run) -> String {
    let log = fs::read_to_string(dir.join("results/prediction/stderr.txt")).unwrap_or_default();
    let last = log.lines().last().unwrap_or_default().to_string();
    assert!(
        last.starts_with("[compute-worker] resources of the submission"),
        "the log ends with the resource report: {log}\nstderr: {}",
        r.stderr()
    );
    assert!(
        r.stderr().contains(&format!(
            "[prediction] {}",
            &last["[compute-worker] ".len()..]
        )),
        "run's summary has the report: {}",
        r.stderr()
    );
    last
}

/// The bytes after `label ` in `report` (`312.4 MiB`).
fn bytes_after(report: &str, label: &str) -> u64 {
    let rest = &report[report
        .find(label)
        .unwrap_or_else(|| panic!("{label}: {report}"))
        + label.len()..];
    let mut words = rest.split_whitespace();
    let n: f64 = words.next().unwrap().parse().unwrap();
    let unit = words.next().unwrap().trim_end_matches([';', ',']);
    let scale = match unit {
        "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1048576.0,
        "GiB" => 1073741824.0,
        other => panic!("unit {other}: {report}"),
    };
    (n * scale) as u64
}

/// The peak number of processes in `report` (`; peak N processes`).
fn peak_processes(report: &str) -> u64 {
    report
        .split("; peak ")
        .find_map(|part| {
            let (n, rest) = part.split_once(' ')?;
            rest.starts_with("processes").then(|| n.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no peak of processes: {report}"))
}

/// A script that holds 300 MiB in one shell variable.
const TOUCH_300_MIB: &str =
    "x=$(head -c 314572800 /dev/zero | tr '\\0' a)\necho ${#x} > /app/output/length\n";

/// Issue 16, item 1: a program that touches 300 MiB reports a peak of at
/// least 300 MiB, here from its cgroup (v1 on this host).
#[test]
fn a_program_touching_300_mib_reports_its_peak_from_the_cgroup() {
    let parent = env().cgroup_parent.clone();
    let dir = user_dir("usage-300-cgroup", 0o755);
    let submission = script_submission("usage-300-cgroup-submission", TOUCH_300_MIB);
    let r = run_job(
        &dir,
        &submission,
        None,
        &[("COMPUTE_WORKER_CGROUP_PARENT", &parent)],
    );
    let report = resource_report(&dir, &r);
    assert!(report.contains("(cgroup v1): exit code 0"), "{report}");
    assert!(
        bytes_after(&report, "peak memory ") >= 300 << 20,
        "{report}"
    );
    assert!(report.contains("no OOM kill"), "{report}");
    assert!(report.contains("CPU "), "{report}");
    // The output it wrote (a few bytes, a block or more on disk).
    assert!(bytes_after(&report, "wrote ") > 0, "{report}");
}

/// The same without a delegated cgroup: `getrusage` of the sandbox's
/// reaper, which says so, and what it cannot count.
#[test]
fn a_program_touching_300_mib_reports_its_peak_from_getrusage() {
    let dir = user_dir("usage-300-rusage", 0o755);
    let submission = script_submission("usage-300-rusage-submission", TOUCH_300_MIB);
    let r = run_job(&dir, &submission, None, &[]);
    let report = resource_report(&dir, &r);
    assert!(report.contains("(getrusage): exit code 0"), "{report}");
    assert!(
        bytes_after(&report, "peak memory ") >= 300 << 20,
        "{report}"
    );
    assert!(report.contains("(its largest process)"), "{report}");
    assert!(report.contains("peak processes not counted"), "{report}");
}

/// Issue 16, item 1: a program over its memory limit is reported as out
/// of memory with the limit, not as an exit code.
#[test]
fn a_program_over_its_memory_limit_is_reported_out_of_memory() {
    let parent = env().cgroup_parent.clone();
    let dir = user_dir("usage-oom", 0o755);
    let submission = script_submission("usage-oom-submission", TOUCH_300_MIB);
    let r = run_job_with(
        &dir,
        &submission,
        None,
        &[("COMPUTE_WORKER_CGROUP_PARENT", &parent)],
        &["--memory", "64m"],
    );
    let report = resource_report(&dir, &r);
    assert!(report.contains("out of memory (limit 64 MiB)"), "{report}");
    assert!(report.contains("the OOM killer acted"), "{report}");
    assert!(!report.contains("exit code"), "{report}");
    // As a number of its own: the test directory's name carries a pid.
    let says_137 = r
        .stderr()
        .split(|c: char| !c.is_ascii_digit())
        .any(|n| n == "137");
    assert!(!says_137, "{}", r.stderr());
}

/// Issue 16, item 1: a fork of 50 processes reports a peak of at least
/// 50 (cgroup v1 keeps no peak: sampled, and the report says so).
#[test]
fn a_fork_of_50_processes_reports_its_peak() {
    let parent = env().cgroup_parent.clone();
    let dir = user_dir("usage-fork50", 0o755);
    let submission = script_submission(
        "usage-fork50-submission",
        "for i in $(seq 50); do sleep 2 & done\nwait\n",
    );
    let r = run_job(
        &dir,
        &submission,
        None,
        &[("COMPUTE_WORKER_CGROUP_PARENT", &parent)],
    );
    let report = resource_report(&dir, &r);
    assert!(peak_processes(&report) >= 50, "{report}");
    assert!(report.contains("(sampled every"), "{report}");
}

/// Issue 16, item 2: `run`'s summary says where each step's time went.
#[test]
fn run_says_where_the_time_went() {
    let dir = user_dir("usage-stages", 0o755);
    let submission = script_submission("usage-stages-submission", "sleep 1\n");
    let r = run_job(&dir, &submission, None, &[]);
    let line = r
        .stderr()
        .lines()
        .find(|l| l.starts_with("[prediction] stage timings:"))
        .unwrap_or_else(|| panic!("no stage timings: {}", r.stderr()))
        .to_string();
    for stage in [
        "task received",
        "bundles downloaded",
        "image ready",
        "(rootfs, 0 B fetched)",
        "sandbox up",
        "program done 1.",
        "outputs uploaded",
        "final status",
        "; total ",
    ] {
        assert!(line.contains(stage), "{stage}: {line}");
    }
}
