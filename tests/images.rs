//! The image verbs (`pull`, `images`, `prune`, `import`, `exec --image`)
//! driven as the unprivileged test user, against a real registry
//! (Debian's docker-registry) on 127.0.0.1.

mod sandbox_env;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{SystemTime, UNIX_EPOCH};

use sandbox_env::{chown_tree, env, user_dir, wait_for_process, Run};
use test_support::{
    busybox_rootfs_layer, file, layer, push, tar_dir, write_oci_layout, Comp, Registry, TestImage,
    E,
};

/// The test image: the busybox rootfs, then a layer with a file owned by
/// uid 33 and a file the third layer deletes with a whiteout.
struct Pushed {
    reference: String,
    digest: String,
    /// The diff id of the layer holding /srv/www-owned.
    owned_layer: String,
}

const CMD_OUTPUT: &str = "hello from the image\n/srv/app\n33\n";

fn image() -> TestImage {
    TestImage::with_config(
        vec![
            busybox_rootfs_layer(Comp::Gzip),
            layer(
                &[
                    E::Dir("srv", 0),
                    E::Dir("srv/app", 33),
                    E::File("srv/www-owned".into(), b"www".to_vec(), 0o640, 33),
                    file("etc/doomed", b"deleted by the next layer"),
                    file("etc/kept", b"kept"),
                ],
                Comp::Zstd,
            ),
            layer(&[file("etc/.wh.doomed", b"")], Comp::Gzip),
        ],
        "amd64",
        serde_json::json!({
            "Env": ["PATH=/bin", "GREETING=hello from the image"],
            "Cmd": ["sh", "-c", "echo $GREETING; pwd; id -u"],
            "WorkingDir": "/srv/app",
            "User": "33:33"
        }),
    )
}

fn push_image(reg: &Registry, repo_tag: &str) -> Pushed {
    let img = image();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let digest = rt.block_on(push(&reg.host(), repo_tag, &img));
    Pushed {
        reference: format!("{}/{repo_tag}", reg.host()),
        digest,
        owned_layer: img.layers[1].diff_id.clone(),
    }
}

/// A fresh image cache directory owned by the test user.
fn image_dir(name: &str) -> PathBuf {
    let d = user_dir(name, 0o755);
    d.join("images")
}

/// `compute-worker exec --image REFERENCE [-- CMD...]` with the cache in `dir`.
fn exec_image(dir: &Path, reference: &str, cmd: &[&str]) -> Run {
    let mut args = vec!["exec", "--image", reference];
    if !cmd.is_empty() {
        args.push("--");
        args.extend_from_slice(cmd);
    }
    env().images_run(dir, &args)
}

fn images_json(dir: &Path) -> Vec<serde_json::Value> {
    let out = env().images_run(dir, &["images", "--json"]).ok();
    serde_json::from_str::<serde_json::Value>(&out)
        .unwrap_or_else(|e| panic!("images --json: {e}: {out}"))
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn pull_list_run_and_prune() {
    let e = env();
    let reg = Registry::start();
    let p = push_image(&reg, "test/busybox:1");
    let dir = image_dir("pull-run");

    let out = e.images_run(&dir, &["pull", &p.reference]).ok();
    assert!(
        out.contains(&p.reference) && out.contains(&p.digest),
        "pull prints the name and the digest: {out}"
    );

    let table = e.images_run(&dir, &["images"]).ok();
    let row = table
        .lines()
        .find(|l| l.starts_with(&p.reference))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(row.contains("MiB") || row.contains("KiB"), "size: {row}");
    assert!(row.contains("s ago"), "last use: {row}");
    let rows = images_json(&dir);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["name"], p.reference.as_str());
    assert_eq!(rows[0]["digest"], p.digest.as_str());
    let busybox = fs::metadata("/bin/busybox").unwrap().len();
    assert!(rows[0]["size"].as_u64().unwrap() > busybox, "{rows:?}");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let last_used = rows[0]["last_used"].as_u64().unwrap();
    assert!(now.abs_diff(last_used) < 600, "{last_used} vs now {now}");
    assert_eq!(rows[0]["in_use"], false);

    // Owners: uid 33 in the sandbox, subordinate uid on the host.
    let out = exec_image(&dir, &p.reference, &["stat", "-c", "%u", "/srv/www-owned"]).ok();
    assert_eq!(out, "33\n");
    let on_host = dir
        .join("l")
        .join(&p.owned_layer[7..23])
        .join("srv/www-owned");
    assert_eq!(
        fs::symlink_metadata(&on_host).unwrap().uid(),
        e.subuid_start + 33 - 1,
        "{}",
        on_host.display()
    );

    // No command: the image's Cmd, with its Env, WorkingDir and User.
    let out = exec_image(&dir, &p.reference, &[]).ok();
    assert_eq!(out, CMD_OUTPUT);

    // The whiteout deletes /etc/doomed; its neighbour stays.
    let script = "test -e /etc/doomed && echo doomed-present; cat /etc/kept";
    let out = exec_image(&dir, &p.reference, &["sh", "-c", script]).ok();
    assert_eq!(out, "kept");

    let out = e.images_run(&dir, &["prune", "--all"]).ok();
    assert!(out.contains(&format!("removed {}", p.reference)), "{out}");
    assert!(images_json(&dir).is_empty());
    let table = e.images_run(&dir, &["images"]).ok();
    assert_eq!(table.lines().count(), 1, "only the header: {table}");
    let layers: Vec<_> = fs::read_dir(dir.join("l")).unwrap().flatten().collect();
    assert!(layers.is_empty(), "layers left: {layers:?}");
    // Commands that exited normally leave no scratch for the next one to
    // report as left by a crash.
    let scratch: Vec<_> = fs::read_dir(dir.join("tmp")).unwrap().flatten().collect();
    assert!(scratch.is_empty(), "scratch left: {scratch:?}");
    let r = e.images_run(&dir, &["images"]);
    assert!(!r.stderr().contains("crashed"), "{}", r.stderr());
}

#[test]
fn pull_of_a_missing_tag_fails_clearly() {
    let e = env();
    let reg = Registry::start();
    push_image(&reg, "test/busybox:1");
    let dir = image_dir("pull-missing");
    let missing = format!("{}/test/busybox:nope", reg.host());
    let r = e.images_run(&dir, &["pull", &missing]);
    assert_ne!(r.code(), 0, "{}", r.stdout());
    let err = r.stderr();
    assert!(err.contains(&missing), "names the image: {err}");
    assert!(
        err.contains("image not found") && err.contains("check the name and the tag"),
        "says why and what to do: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(images_json(&dir).is_empty());
}

#[test]
fn a_swapped_layer_unpacked_as_it_downloads_is_never_kept() {
    // Layers are unpacked in the user namespace while they download. The
    // registry serves another gzip stream of the same tar (one header byte
    // differs: same size, same diff id), so the unpacking of its uid-33
    // files succeeds; the blob digest, known at the end, refuses it, and the
    // sub-uid-owned scratch is removed.
    let e = env();
    let reg = Registry::start();
    let img = TestImage::new(vec![
        busybox_rootfs_layer(Comp::Gzip),
        layer(
            &[
                E::Dir("srv", 33),
                E::File("srv/www-owned".into(), vec![5u8; 1 << 20], 0o640, 33),
            ],
            Comp::Gzip,
        ),
    ]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(push(&reg.host(), "test/swapped:1", &img));
    let blob = reg.blob_data_path(&img.layers[1].digest());
    let mut data = fs::read(&blob).unwrap();
    data[9] ^= 0x01; // the gzip header's OS byte
    fs::write(&blob, data).unwrap();

    let dir = image_dir("pull-swapped");
    let reference = format!("{}/test/swapped:1", reg.host());
    let r = e.images_run(&dir, &["pull", &reference]);
    assert_ne!(r.code(), 0, "{}", r.stdout());
    let err = r.stderr();
    assert!(
        err.contains("digest") && err.contains(&img.layers[1].digest()),
        "names the layer and the digest: {err}"
    );
    assert!(images_json(&dir).is_empty());
    let swapped = dir.join("l").join(&img.layers[1].diff_id[7..23]);
    assert!(!swapped.exists(), "{} kept", swapped.display());
    let scratch: Vec<_> = fs::read_dir(dir.join("tmp")).unwrap().flatten().collect();
    assert!(scratch.is_empty(), "scratch left: {scratch:?}");
}

#[test]
fn import_of_an_oci_layout_runs_offline() {
    let e = env();
    let dir = image_dir("import");
    let layout = user_dir("import-layout", 0o755).join("layout");
    write_oci_layout(&layout, &image(), "localhost/imported/busybox:1");
    let archive = layout.with_file_name("busybox-archive.tar");
    tar_dir(&layout, &archive);
    if e.as_root {
        chown_tree(layout.parent().unwrap(), e.uid, e.gid);
    }

    let out = e
        .images_run(&dir, &["import", layout.to_str().unwrap()])
        .ok();
    assert!(
        out.starts_with("localhost/imported/busybox:1 sha256:"),
        "{out}"
    );
    let out = exec_image(&dir, "localhost/imported/busybox:1", &[]).ok();
    assert_eq!(out, CMD_OUTPUT);

    // An oci-archive, named on the command line.
    let out = e
        .images_run(
            &dir,
            &[
                "import",
                archive.to_str().unwrap(),
                "--name",
                "localhost/archived:2",
            ],
        )
        .ok();
    assert!(out.starts_with("localhost/archived:2 sha256:"), "{out}");
    let out = exec_image(&dir, "localhost/archived:2", &["cat", "/etc/kept"]).ok();
    assert_eq!(out, "kept");
    let names: Vec<String> = images_json(&dir)
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");

    e.images_run(&dir, &["prune", "--all"]).ok();
    assert!(images_json(&dir).is_empty());
}

#[test]
fn image_in_use_survives_a_concurrent_prune() {
    let e = env();
    let reg = Registry::start();
    let p = push_image(&reg, "test/busybox:lease");
    let dir = image_dir("lease");

    // `exec --image` pulls the image and holds a lease while it runs.
    let mut running = e
        .images_command(
            &dir,
            &["exec", "--image", &p.reference, "--", "sleep", "4290"],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = wait_for_process("sleep 4290");

    let out = e.images_run(&dir, &["prune", "--all"]).ok();
    assert!(
        out.contains(&format!("kept {} (in use", p.reference)),
        "{out}"
    );
    let rows = images_json(&dir);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["in_use"], true);
    let out = exec_image(&dir, &p.reference, &[]).ok();
    assert_eq!(out, CMD_OUTPUT, "the image still runs");

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL).unwrap();
    let status = running.wait().unwrap();
    assert_eq!(status.code(), Some(128 + 9));
    // The lease ends with the run: now it goes.
    let out = e.images_run(&dir, &["prune", "--all"]).ok();
    assert!(out.contains(&format!("removed {}", p.reference)), "{out}");
    assert!(images_json(&dir).is_empty());
}

/// An image whose User is `user`, with a top layer of `extra` entries.
fn user_image(user: &str, extra: &[E]) -> TestImage {
    let mut layers = vec![busybox_rootfs_layer(Comp::Gzip)];
    if !extra.is_empty() {
        layers.push(layer(extra, Comp::Gzip));
    }
    TestImage::with_config(
        layers,
        "amd64",
        serde_json::json!({"Env": ["PATH=/bin"], "Cmd": ["sh", "-c", "id -u; id -g"], "User": user}),
    )
}

fn push_test_image(reg: &Registry, repo_tag: &str, img: &TestImage) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(push(&reg.host(), repo_tag, img));
    format!("{}/{repo_tag}", reg.host())
}

#[test]
fn a_named_user_runs_as_the_ids_in_the_images_passwd() {
    let reg = Registry::start();
    let named = push_test_image(&reg, "test/named:1", &user_image("user", &[]));
    let with_group = push_test_image(
        &reg,
        "test/named:2",
        &user_image(
            "app:staff",
            &[
                E::Dir("etc", 0),
                file(
                    "etc/passwd",
                    b"root:x:0:0::/:/bin/sh\napp:x:1234:1234::/:/bin/sh\n",
                ),
                file("etc/group", b"root:x:0:\nstaff:x:50:\n"),
            ],
        ),
    );
    let dir = image_dir("named-user");
    assert_eq!(exec_image(&dir, &named, &[]).ok(), "1000\n1000\n");
    assert_eq!(exec_image(&dir, &with_group, &[]).ok(), "1234\n50\n");
}

#[test]
fn a_named_user_is_never_looked_up_through_a_symlink_or_unknown() {
    let reg = Registry::start();
    // The image's /etc/passwd points at a host file: never followed.
    let link = push_test_image(
        &reg,
        "test/named:link",
        &user_image(
            "root",
            &[E::Dir("etc", 0), E::Symlink("etc/passwd", "/etc/passwd")],
        ),
    );
    let unknown = push_test_image(&reg, "test/named:unknown", &user_image("nobody-here", &[]));
    let dir = image_dir("named-user-bad");
    let r = exec_image(&dir, &link, &[]);
    assert_ne!(r.code(), 0, "{}", r.stdout());
    assert!(
        r.stderr().contains("/etc/passwd cannot be read safely") && r.stderr().contains("symlink"),
        "{}",
        r.stderr()
    );
    let r = exec_image(&dir, &unknown, &[]);
    assert_ne!(r.code(), 0, "{}", r.stdout());
    assert!(
        r.stderr().contains("User `nobody-here`")
            && r.stderr().contains("is not in the image's /etc/passwd"),
        "{}",
        r.stderr()
    );
}

/// `compute-worker run` of a trivial submission on `reference`, the cache
/// in `dir`, with extra environment `vars`; and how long it took.
fn run_on_image(name: &str, reference: &str, vars: &[(&str, &str)]) -> (Run, std::time::Duration) {
    let e = env();
    let work = user_dir(name, 0o755);
    let submission = work.join("submission");
    fs::create_dir_all(&submission).unwrap();
    fs::write(submission.join("metadata.yaml"), "command: true\n").unwrap();
    chown_tree(&work, e.uid, e.gid);
    let (sub, results) = (
        submission.to_string_lossy().into_owned(),
        work.join("results").to_string_lossy().into_owned(),
    );
    let mut cmd = e.images_command(
        &work.join("images"),
        &[
            "run",
            "--image",
            reference,
            "--submission",
            &sub,
            "--results",
            &results,
        ],
    );
    cmd.envs(vars.iter().copied()).env("NO_COLOR", "1");
    let started = std::time::Instant::now();
    let r = Run(cmd.output().unwrap());
    (r, started.elapsed())
}

/// The log without terminal colours.
fn plain(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Issue 12 item 4: a registry that refuses connections is a transient
/// failure: the pull is tried 4 times in all (3 retries, here 1 s apart
/// instead of 5), then the job fails with Codabench's text.
#[test]
fn a_refused_registry_is_tried_four_times() {
    let reference = format!("127.0.0.1:{}/nothing/here:1", test_support::free_port());
    let (r, took) = run_on_image(
        "pull-refused",
        &reference,
        &[("COMPUTE_WORKER_PULL_RETRY_DELAY", "1s")],
    );
    let err = plain(&r.stderr());
    assert_eq!(r.code(), 1, "{err}");
    assert!(
        err.contains(&format!(
            "Docker image pull failed: Pull for {reference} failed! Check the logs for more information"
        )),
        "{err}"
    );
    assert_eq!(err.matches("retrying in").count(), 3, "{err}");
    assert!(
        err.contains("attempt=4") && err.contains("giving up"),
        "{err}"
    );
    assert!(took >= std::time::Duration::from_secs(3), "{took:?}");
}

/// Issue 12 item 4: "manifest unknown" is permanent: the registry is
/// asked once, and the job fails at once with Codabench's text.
#[test]
fn an_unknown_manifest_is_tried_once() {
    let reg = Registry::start();
    push_image(&reg, "test/busybox:1");
    let reference = format!("{}/test/busybox:nope", reg.host());
    let (r, took) = run_on_image("pull-unknown", &reference, &[]);
    let err = plain(&r.stderr());
    assert_eq!(r.code(), 1, "{err}");
    assert!(
        err.contains(&format!(
            "Docker image pull failed: Pull for {reference} failed! Check the logs for more information"
        )),
        "{err}"
    );
    assert_eq!(reg.manifest_gets("test/busybox", "nope"), 1, "{err}");
    assert!(!err.contains("retrying"), "{err}");
    assert!(took < std::time::Duration::from_secs(5), "{took:?}");
}
