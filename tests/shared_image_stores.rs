//! Shared read-only image stores through `compute-worker serve`: an
//! administrator fills one with `pull --store` (as the workers' user), two
//! workers with private stores of their own run jobs from it, the second
//! with the registry stopped and the store on a read-only mount; a layer
//! changed in it is refused. Real RabbitMQ, real registry, the fake site.

mod e2e;
mod sandbox_env;
mod support;

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::json;

use e2e::*;
use sandbox_env::{env, user_dir};
use support::amqp::unique_queue;
use test_support::{busybox_rootfs_layer, push, Comp, ReadOnlyMount, Registry, TestImage};

/// A worker with an empty private store reading the shared store `shared`.
fn worker(name: &str, queue: &str, shared: &Path) -> (Serve, PathBuf) {
    let images = user_dir(&format!("{name}-images"), 0o755).join("images");
    let vars = [(
        "COMPUTE_WORKER_ADDITIONAL_IMAGE_STORES",
        shared.to_str().unwrap(),
    )];
    (Serve::start_on(name, queue, &images, &vars), images)
}

/// Layer directories a private store holds.
fn private_layers(images: &Path) -> Vec<PathBuf> {
    fs::read_dir(images.join("l"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// The first regular file below `dir`.
fn a_file_in(dir: &Path) -> PathBuf {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let t = e.file_type().unwrap();
            if t.is_file() {
                return e.path();
            }
            if t.is_dir() {
                stack.push(e.path());
            }
        }
    }
    panic!("no file in {}", dir.display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root"]
async fn workers_run_jobs_from_a_shared_read_only_store_and_refuse_a_changed_layer() {
    let reg = Registry::start();
    let image = TestImage::with_config(
        vec![busybox_rootfs_layer(Comp::Gzip)],
        "amd64",
        json!({"Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"], "User": "33:33"}),
    );
    push(&reg.host(), "cw-e2e/shared:1", &image).await;
    let reference = format!("{}/cw-e2e/shared:1", reg.host());
    let layer = image.layers[0].digest();

    // The administrator fills the shared store, as the workers' user.
    let shared = user_dir("shared-store", 0o755).join("store");
    let out = env()
        .command(&["pull", "--store", shared.to_str().unwrap(), &reference])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(reg.blob_gets(&layer), 1);

    // A first worker runs a job from it, pulling nothing.
    let queue = unique_queue("e2e-shared-a");
    let (a, a_images) = worker("shared-a", &queue, &shared);
    let site = demo_site(521).await;
    publish(&queue, &prediction_args(&site, &reference, 60));
    let st = wait_for_status(&site, &a, "Scoring", 120).await;
    assert_eq!(
        st.last().map(String::as_str),
        Some("Scoring"),
        "{}",
        a.log()
    );
    assert_eq!(reg.blob_gets(&layer), 1, "the worker pulled the layer");
    a.stop();

    // The registry stops; a second worker reads the store through a
    // read-only mount.
    drop(reg);
    let ro = ReadOnlyMount::new(&shared, user_dir("shared-ro", 0o755).join("store"));
    assert!(
        fs::write(ro.0.join("probe"), b"").is_err(),
        "the mount is writable"
    );
    let queue = unique_queue("e2e-shared-b");
    let (b, b_images) = worker("shared-b", &queue, &ro.0);
    let site = demo_site(522).await;
    publish(&queue, &prediction_args(&site, &reference, 60));
    let st = wait_for_status(&site, &b, "Scoring", 120).await;
    assert_eq!(
        st.last().map(String::as_str),
        Some("Scoring"),
        "{}",
        b.log()
    );
    b.stop();
    // Its layers were used in place: neither private store holds one.
    assert_eq!(private_layers(&a_images), Vec::<PathBuf>::new());
    assert_eq!(private_layers(&b_images), Vec::<PathBuf>::new());

    // A file of the shared layer changes: a new worker refuses the image.
    let layer_dir = fs::read_dir(shared.join("l"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.is_dir())
        .unwrap();
    let victim = a_file_in(&layer_dir);
    let mut bytes = fs::read(&victim).unwrap();
    bytes.push(b'\n');
    fs::write(&victim, bytes).unwrap();
    let queue = unique_queue("e2e-shared-c");
    let (c, _) = worker("shared-c", &queue, &ro.0);
    let site = demo_site(523).await;
    publish(&queue, &prediction_args(&site, &reference, 60));
    let st = wait_for_status(&site, &c, "Failed", 120).await;
    assert_eq!(st.last().map(String::as_str), Some("Failed"));
    let patches = site.patches();
    let report = site.failure_report();
    assert_eq!(report.get("type"), Some("Docker_Image_Pull_Fail"));
    let all = format!("{patches:?}");
    assert!(
        all.contains(&format!("shared image store {}", ro.0.display()))
            && all.contains("fails its digest check"),
        "{all}\n{}",
        c.log()
    );
    c.stop();
    drop(ro);
}
