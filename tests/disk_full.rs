//! A full disk (issue 16 item 7): the image store on a small file system
//! made for the test (a 40 MiB tmpfs). A pull that does not fit evicts the
//! least recently used images no job holds and is tried once more; one that
//! cannot fit fails naming the store and the space it needed, and leaves
//! the space as it found it. A bundle download that finds the disk full
//! evicts the cached bundles no job holds and is fetched once more.
//! Through `serve`, a real registry and RabbitMQ.

mod e2e;
mod sandbox_env;
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use e2e::*;
use sandbox_env::{env, user_dir};
use support::amqp::unique_queue;
use test_support::{busybox_rootfs_layer, layer_from_tar, push, Comp, Registry, TestImage};

const MIB: usize = 1 << 20;

/// A tmpfs of `mib` MiB at `dir`, owned by the test user, unmounted on drop.
struct SmallFs(PathBuf);

impl SmallFs {
    fn mount(dir: &Path, mib: usize) -> SmallFs {
        let e = env();
        std::fs::create_dir_all(dir).unwrap();
        let opts = format!("size={mib}m,mode=0700,uid={},gid={}", e.uid, e.gid);
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &opts, "tmpfs"])
            .arg(dir)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mounting a tmpfs at {}", dir.display());
        SmallFs(dir.to_path_buf())
    }

    fn free_mib(&self) -> u64 {
        let s = nix::sys::statvfs::statvfs(&self.0).unwrap();
        s.blocks_available() * s.fragment_size() / MIB as u64
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// `mib` MiB that do not compress (seeded).
fn incompressible(seed: u64, mib: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..mib * MIB)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A layer of `mib` MiB that does not compress (seeded, so each seed is
/// its own layer).
fn incompressible_layer(seed: u64, mib: usize) -> test_support::Layer {
    let data = incompressible(seed, mib);
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    tar.append_data(&mut h, format!("data-{seed}"), &data[..])
        .unwrap();
    layer_from_tar(tar.into_inner().unwrap(), Comp::None)
}

/// Push busybox plus `mib` MiB of incompressible data as `repo_tag`.
async fn push_image(reg: &Registry, repo_tag: &str, seed: u64, mib: usize) -> String {
    let img = TestImage::with_config(
        vec![
            busybox_rootfs_layer(Comp::Gzip),
            incompressible_layer(seed, mib),
        ],
        "amd64",
        serde_json::json!({"Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]}),
    );
    push(&reg.host(), repo_tag, &img).await;
    format!("{}/{repo_tag}", reg.host())
}

fn stored_images(images: &Path) -> Vec<String> {
    let out = env().images_run(images, &["images", "--json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root (mounts a small file system)"]
async fn a_pull_that_finds_the_disk_full_evicts_unused_images_and_passes() {
    let reg = Registry::start();
    let old = push_image(&reg, "full/old:1", 1, 14).await;
    let newer = push_image(&reg, "full/newer:1", 2, 14).await;
    let wanted = push_image(&reg, "full/wanted:1", 3, 14).await;
    let images = user_dir("disk-full-evict", 0o755).join("images");
    let fs = SmallFs::mount(&images, 40);
    // Two images fill most of it, the older first.
    for r in [&old, &newer] {
        env().images_run(&images, &["pull", r]).ok();
    }
    assert!(fs.free_mib() < 14, "{} MiB free", fs.free_mib());

    let queue = unique_queue("disk-full-evict");
    let serve = Serve::start_on("disk-full-evict", &queue, &images, &[]);
    let site = demo_site(761).await;
    publish(&queue, &prediction_args(&site, &wanted, 60));
    let st = wait_for_status(&site, &serve, "Scoring", 120).await;
    assert_eq!(
        st.last().map(String::as_str),
        Some("Scoring"),
        "{}",
        serve.log()
    );
    let log = serve.log();
    assert!(
        log.contains("is full while pulling") && log.contains("evicted"),
        "the job's log says what was evicted:\n{log}"
    );
    let kept = stored_images(&images);
    assert!(kept.iter().any(|n| n.contains("full/wanted")), "{kept:?}");
    assert!(
        !kept.iter().any(|n| n.contains("full/old")),
        "the least recently used image goes first: {kept:?}"
    );
    serve.stop();
    drop(fs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root (mounts a small file system)"]
async fn an_image_larger_than_the_disk_fails_naming_the_store_and_the_space() {
    let reg = Registry::start();
    let huge = push_image(&reg, "full/huge:1", 4, 48).await;
    let images = user_dir("disk-full-huge", 0o755).join("images");
    let fs = SmallFs::mount(&images, 40);
    let free_before = fs.free_mib();

    let queue = unique_queue("disk-full-huge");
    let serve = Serve::start_on("disk-full-huge", &queue, &images, &[]);
    let site = demo_site(762).await;
    publish(&queue, &prediction_args(&site, &huge, 60));
    let st = wait_for_status(&site, &serve, "Failed", 120).await;
    assert_eq!(st.last().map(String::as_str), Some("Failed"));
    let details = site.failed_details();
    let store = images.display().to_string();
    assert!(
        details.contains(&format!("no space left in the image store {store}"))
            && details.contains("needs about"),
        "{details}"
    );
    // Tried once more after making room, not four times as a network
    // failure would be.
    let log = serve.log();
    assert_eq!(log.matches("is full while pulling").count(), 1, "{log}");
    // What the failed pull unpacked is gone again.
    assert!(
        fs.free_mib() + 2 >= free_before,
        "{} MiB free after, {free_before} before",
        fs.free_mib()
    );
    serve.stop();
    drop(fs);
}

/// The demo competition whose `input_data` also holds `mib` MiB that do
/// not compress.
async fn site_with_big_input(id: u64, mib: usize) -> support::site::FakeSite {
    let site = demo_site(id).await;
    let dir = tempfile::tempdir().unwrap();
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("demo/input_data");
    for f in std::fs::read_dir(&demo).unwrap().flatten() {
        std::fs::copy(f.path(), dir.path().join(f.file_name())).unwrap();
    }
    std::fs::write(dir.path().join("big.bin"), incompressible(id, mib)).unwrap();
    site.add_bundle("input_data.zip", zip_of(dir.path()));
    site
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root (mounts a small file system)"]
async fn a_bundle_download_that_finds_the_disk_full_evicts_cached_bundles_and_passes() {
    // HOST_DIRECTORY (job directories and the dataset cache) on 30 MiB.
    let host = user_dir("disk-full-bundle", 0o755).join("host");
    let fs = SmallFs::mount(&host, 30);
    let host_s = host.display().to_string();
    let queue = unique_queue("disk-full-bundle");
    let serve = Serve::start_with("disk-full-bundle", &queue, &[("HOST_DIRECTORY", &host_s)]);

    // The first submission leaves its 11 MiB input_data in the cache.
    let first = site_with_big_input(771, 11).await;
    publish(&queue, &prediction_args(&first, IMAGE, 60));
    let st = wait_for_status(&first, &serve, "Scoring", 120).await;
    assert_eq!(
        st.last().map(String::as_str),
        Some("Scoring"),
        "{}",
        serve.log()
    );
    assert!(fs.free_mib() < 22, "{} MiB free", fs.free_mib());

    // The second one's input_data (cached, then extracted) does not fit
    // beside it.
    let second = site_with_big_input(772, 11).await;
    publish(&queue, &prediction_args(&second, IMAGE, 60));
    let st = wait_for_status(&second, &serve, "Scoring", 120).await;
    let log = serve.log();
    assert_eq!(st.last().map(String::as_str), Some("Scoring"), "{log}");
    assert!(
        log.contains("is full while fetching input_data") && log.contains("evicted"),
        "the job's log says what was evicted:\n{log}"
    );
    serve.stop();
    drop(fs);
}
