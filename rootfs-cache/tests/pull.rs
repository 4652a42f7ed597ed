//! Pulls from a real registry (distribution 2.8 on 127.0.0.1). Run as root
//! (CI does): checks owners with lchown and mounts overlayfs.

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use common::*;
use rootfs_cache::{Error, NoProgress, Store};

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn stacked_image() -> TestImage {
    let base = busybox_layer(Comp::Gzip);
    let l1 = layer(
        &[
            E::Dir("etc", 0),
            file("etc/gone", b"deleted above"),
            E::Dir("opt", 0),
            E::Dir("opt/old", 0),
            file("opt/old/a", b"a"),
            file("opt/old/b", b"b"),
            E::Dir("var", 0),
            E::Dir("var/www", 33),
            E::File("var/www/index.html".into(), b"hello".to_vec(), 0o640, 33),
            E::Dir("dev", 0),
            E::CharDev("dev/null"),
            E::Symlink("link-to-etc", "/etc/passwd"),
        ],
        Comp::Zstd,
    );
    let l2 = layer(
        &[
            E::Dir("etc", 0),
            file("etc/.wh.gone", b""),
            E::Dir("opt/old", 0),
            file("opt/old/.wh..wh..opq", b""),
            file("opt/old/c", b"c"),
            E::Dir("work", 0),
        ],
        Comp::None,
    );
    TestImage::new(vec![base, l1, l2])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_stacks_gzip_zstd_and_plain_layers_in_overlay_form() {
    let reg = Registry::start();
    let img = stacked_image();
    let digest = push(&reg.host(), "test/stacked:1", &img).await;

    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store"), opts(dir.path())).unwrap();
    let progress = counter();
    let image = store
        .pull(&format!("{}/test/stacked:1", reg.host()), &*progress)
        .await
        .unwrap();
    assert_eq!(image.name, format!("{}/test/stacked:1", reg.host()));
    assert_eq!(image.manifest_digest, digest);
    assert_eq!(image.layers.len(), 3);
    assert_eq!(
        image.config.env.as_deref().unwrap(),
        ["PATH=/bin", "HELLO=world"]
    );
    assert_eq!(
        image.config.entrypoint.as_deref().unwrap(),
        ["/bin/sh", "-c"]
    );
    assert_eq!(image.config.cmd.as_deref().unwrap(), ["echo hi"]);
    assert_eq!(image.config.working_dir.as_deref(), Some("/work"));
    assert_eq!(image.config.user.as_deref(), Some("33:33"));
    assert_eq!(
        progress.unpacked.load(std::sync::atomic::Ordering::SeqCst),
        3
    );

    // Top-most first; short names.
    let (top, mid, base) = (&image.layers[0], &image.layers[1], &image.layers[2]);
    for l in &image.layers {
        let rel = l.strip_prefix(store.root()).unwrap().display().to_string();
        assert!(rel.starts_with("l/") && rel.len() == 18, "{rel}");
    }
    assert!(base.join("bin/busybox").is_file());
    assert_eq!(
        std::fs::read_link(base.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    assert_eq!(
        base.join("bin/ls").metadata().unwrap().ino(),
        base.join("bin/busybox").metadata().unwrap().ino()
    );
    assert_eq!(
        base.join("bin/busybox").metadata().unwrap().mode() & 0o7777,
        0o755
    );
    // Whiteout -> 0:0 char device; opaque -> xattr.
    let wh = top.join("etc/gone").symlink_metadata().unwrap();
    assert!(wh.file_type().is_char_device());
    assert_eq!(wh.rdev(), 0);
    assert_eq!(
        xattr::get(top.join("opt/old"), "user.overlay.opaque")
            .unwrap()
            .as_deref(),
        Some(&b"y"[..])
    );
    assert!(!top.join("opt/old/.wh..wh..opq").exists());
    // Devices skipped; symlinks kept verbatim (never followed).
    assert!(!mid.join("dev/null").exists());
    assert_eq!(
        std::fs::read_link(mid.join("link-to-etc")).unwrap(),
        Path::new("/etc/passwd")
    );
    // mtimes preserved.
    assert_eq!(
        mid.join("opt/old/a").metadata().unwrap().mtime(),
        1_600_000_000
    );
    if is_root() {
        // Owners preserved: uid 33 stays 33.
        let m = mid.join("var/www/index.html").metadata().unwrap();
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o777), (33, 33, 0o640));
        assert_eq!(mid.join("var/www").metadata().unwrap().uid(), 33);
        assert_eq!(
            xattr::get(top.join("opt/old"), "trusted.overlay.opaque")
                .unwrap()
                .as_deref(),
            Some(&b"y"[..])
        );

        // The real test: stack them with overlayfs and look at the result.
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(format!("lowerdir={}", image.lowerdir()))
            .arg(&mnt)
            .status()
            .unwrap();
        assert!(st.success(), "mount overlay");
        let res = std::panic::catch_unwind(|| {
            assert!(!mnt.join("etc/gone").exists(), "whiteout hides etc/gone");
            assert!(mnt.join("etc/passwd").exists());
            assert!(!mnt.join("opt/old/a").exists(), "opaque dir hides a");
            assert!(!mnt.join("opt/old/b").exists(), "opaque dir hides b");
            assert_eq!(std::fs::read(mnt.join("opt/old/c")).unwrap(), b"c");
            let out = std::process::Command::new(mnt.join("bin/busybox"))
                .args(["echo", "from-overlay"])
                .output()
                .unwrap();
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "from-overlay");
        });
        let _ = std::process::Command::new("umount").arg(&mnt).status();
        res.unwrap();
    }

    // The production shape: overlay mounted with `userxattr` inside a user
    // namespace (works unprivileged on Linux >= 5.11), reading user.overlay.opaque.
    let mnt = dir.path().join("mnt-userns");
    std::fs::create_dir(&mnt).unwrap();
    let script = format!(
        "mount -t overlay overlay -o userxattr,lowerdir={} {m} && test ! -e {m}/etc/gone && test -e {m}/etc/passwd && test ! -e {m}/opt/old/a && test -e {m}/opt/old/c && echo merged-ok",
        image.lowerdir(),
        m = mnt.display()
    );
    let out = std::process::Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "sh", "-c", &script])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "merged-ok",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // No layer blobs kept, no scratch left; config + manifest kept.
    let blobs = tree(&store.root().join("blobs/sha256"));
    assert_eq!(blobs.len(), 2, "{blobs:?}");

    // A second pull downloads nothing but the manifest.
    let p2 = counter();
    let again = store
        .pull(&format!("{}/test/stacked:1", reg.host()), &*p2)
        .await
        .unwrap();
    assert_eq!(again, image);
    assert!(p2.started.lock().unwrap().is_empty());
    assert_eq!(
        store
            .get(&format!("{}/test/stacked:1", reg.host()))
            .unwrap(),
        image
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_schema2_manifest_list_picks_amd64_and_digest_pins() {
    let reg = Registry::start();
    let amd = TestImage::for_arch(vec![busybox_layer(Comp::Gzip)], "amd64");
    let arm = TestImage::for_arch(
        vec![layer(&[file("arm-only", b"arm")], Comp::Gzip)],
        "arm64",
    );
    let d_amd = push_with(
        &reg.host(),
        "multi/app:amd",
        &amd,
        true,
        &oci_client::secrets::RegistryAuth::Anonymous,
    )
    .await;
    let d_arm = push(&reg.host(), "multi/app:arm", &arm).await;
    let idx = push_index(
        &reg.host(),
        "multi/app:latest",
        &[
            (d_arm.clone(), arm.manifest(false).len(), "arm64"),
            (d_amd.clone(), amd.manifest(true).len(), "amd64"),
        ],
    )
    .await;

    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("s"), opts(dir.path())).unwrap();
    let img = store
        .pull(&format!("{}/multi/app", reg.host()), &NoProgress)
        .await
        .unwrap();
    assert_eq!(img.manifest_digest, d_amd, "amd64 entry chosen");
    assert!(img.layers[0].join("bin/busybox").exists());

    // name@digest pins: the index digest resolves to amd64 as well...
    let pinned = store
        .pull(&format!("{}/multi/app@{idx}", reg.host()), &NoProgress)
        .await
        .unwrap();
    assert_eq!(pinned.manifest_digest, d_amd);
    // ...and a pinned manifest digest gets exactly that manifest.
    let arm_img = store
        .pull(&format!("{}/multi/app@{d_arm}", reg.host()), &NoProgress)
        .await
        .unwrap();
    assert!(arm_img.layers[0].join("arm-only").exists());

    // An index without our platform is a clear error.
    let only_arm = push_index(
        &reg.host(),
        "multi/app:armonly",
        &[(d_arm, arm.manifest(false).len(), "arm64")],
    )
    .await;
    let _ = only_arm;
    let err = store
        .pull(&format!("{}/multi/app:armonly", reg.host()), &NoProgress)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NoMatchingPlatform { .. }), "{err}");
    assert!(err.to_string().contains("linux/amd64") && err.to_string().contains("linux/arm64"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_blob_fails_and_nothing_is_kept() {
    let reg = Registry::start();
    let img = TestImage::new(vec![
        busybox_layer(Comp::Gzip),
        layer(&[file("x", b"x")], Comp::Gzip),
    ]);
    push(&reg.host(), "t/tamper:1", &img).await;
    // Corrupt the second layer in the registry's storage, keeping its size.
    let p = reg.blob_data_path(&img.layers[1].digest());
    let mut data = std::fs::read(&p).unwrap();
    let n = data.len();
    data[n - 5] ^= 0xff;
    std::fs::write(&p, data).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("s"), opts(dir.path())).unwrap();
    let err = store
        .pull(&format!("{}/t/tamper:1", reg.host()), &NoProgress)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
    assert!(err.to_string().contains(&img.layers[1].digest()), "{err}");
    assert!(store.images().unwrap().is_empty());
    assert!(store.get(&format!("{}/t/tamper:1", reg.host())).is_err());
    // The tampered layer was neither kept as a blob nor unpacked, and the
    // scratch area is empty.
    let l = tree(&store.root().join("l"));
    assert!(
        !l.iter().any(|p| p.contains(&img.layers[1].diff_id[7..23])),
        "{l:?}"
    );
    let tmp: Vec<String> = tree(&store.root().join("tmp"))
        .into_iter()
        .filter(|p| p.contains('/'))
        .collect();
    assert!(tmp.is_empty(), "scratch left: {tmp:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swapped_blob_that_unpacks_cleanly_is_still_not_trusted() {
    // Layers are unpacked while they download, before their digest is
    // known. Here the registry serves another gzip stream of the very same
    // tar (one header byte differs: same size, same diff id), so the
    // unpacking itself succeeds; only the blob digest, checked at the end,
    // tells, and nothing of it may stay.
    let reg = Registry::start();
    let img = TestImage::new(vec![layer(
        &[file("x", b"x"), file("big", &vec![1u8; 2 << 20])],
        Comp::Gzip,
    )]);
    push(&reg.host(), "t/swap:1", &img).await;
    let p = reg.blob_data_path(&img.layers[0].digest());
    let mut data = std::fs::read(&p).unwrap();
    data[9] ^= 0x01; // the gzip header's OS byte
    std::fs::write(&p, data).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("s"), opts(dir.path())).unwrap();
    let name = format!("{}/t/swap:1", reg.host());
    let err = store.pull(&name, &NoProgress).await.unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
    assert!(err.to_string().contains(&img.layers[0].digest()), "{err}");
    assert!(store.get(&name).is_err());
    assert!(tree(&store.root().join("l")).is_empty());
    let tmp: Vec<String> = tree(&store.root().join("tmp"))
        .into_iter()
        .filter(|p| p.contains('/'))
        .collect();
    assert!(tmp.is_empty(), "scratch left: {tmp:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_layers_are_refused_and_nothing_is_written_outside() {
    let reg = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let store_root = dir.path().join("s");
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let cases: Vec<(&str, Vec<E>)> = vec![
        ("dotdot", vec![file("../../outside/pwned", b"x")]),
        (
            "abs",
            vec![E::File(
                format!("{}/pwned", outside.display()),
                b"x".to_vec(),
                0o644,
                0,
            )],
        ),
        (
            "symlink",
            vec![
                E::Symlink("esc", "../../../outside"),
                file("esc/pwned", b"x"),
            ],
        ),
        (
            "symlink-abs",
            vec![E::Symlink("esc", "/"), file("esc/tmp/pwned", b"x")],
        ),
        ("hardlink", vec![E::Hardlink("h", "../../outside/target")]),
    ];
    std::fs::write(outside.join("target"), b"t").unwrap();
    let store = Store::open(&store_root, opts(dir.path())).unwrap();
    for (name, entries) in cases {
        let img = TestImage::new(vec![layer(&entries, Comp::Gzip)]);
        push(&reg.host(), &format!("evil/{name}:1"), &img).await;
        let err = store
            .pull(&format!("{}/evil/{name}:1", reg.host()), &NoProgress)
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::UnsafeEntry { .. }), "{name}: {msg}");
        assert!(
            msg.contains(&format!("evil/{name}:1")),
            "names the image: {msg}"
        );
        assert!(
            msg.contains("esc/") || msg.contains("pwned") || msg.contains("\"h\""),
            "names the entry: {msg}"
        );
    }
    assert!(!outside.join("pwned").exists());
    assert!(!Path::new("/tmp/pwned").exists());
    assert_eq!(std::fs::read(outside.join("target")).unwrap(), b"t");
    assert!(store.images().unwrap().is_empty());
    assert!(tree(&store_root.join("l")).is_empty());
}

#[test]
fn concurrent_pulls_of_one_image_download_each_blob_once() {
    let reg = Registry::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let img = TestImage::new(vec![
        busybox_layer(Comp::Gzip),
        layer(&[file("big", &vec![7u8; 3 << 20])], Comp::Zstd),
    ]);
    rt.block_on(push(&reg.host(), "c/one:1", &img));
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("s");
    let name = format!("{}/c/one:1", reg.host());
    let progress = counter();
    // Two independent Store instances (as two processes would have), each on
    // its own thread and runtime.
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let (root, name, progress, o) = (
                root.clone(),
                name.clone(),
                progress.clone(),
                opts(dir.path()),
            );
            std::thread::spawn(move || {
                let store = Store::open(root, o).unwrap();
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(store.pull(&name, &*progress))
                    .unwrap()
            })
        })
        .collect();
    let images: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(images[0], images[1]);
    let started = progress.started.lock().unwrap().clone();
    for l in &img.layers {
        assert_eq!(
            started.iter().filter(|d| **d == l.digest()).count(),
            1,
            "{started:?}"
        );
        assert_eq!(reg.blob_gets(&l.digest()), 1, "registry served layer once");
    }
    assert_eq!(
        started.iter().filter(|d| **d == sha(&img.config)).count(),
        1
    );
    assert_eq!(
        progress.unpacked.load(std::sync::atomic::Ordering::SeqCst),
        2
    );
    assert_eq!(progress.cached.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_from_auth_file_and_search_registries() {
    let reg = Registry::start_with_auth(Some(("alice", "s3cret")));
    let img = TestImage::new(vec![busybox_layer(Comp::Gzip)]);
    let auth = oci_client::secrets::RegistryAuth::Basic("alice".into(), "s3cret".into());
    push_with(&reg.host(), "team/tool:2", &img, false, &auth).await;

    let dir = tempfile::tempdir().unwrap();
    // Unqualified names go through registries.conf's search list: a registry that
    // does not exist first (skipped), then ours.
    std::fs::write(
        dir.path().join("registries.conf"),
        format!(
            "unqualified-search-registries = [\"127.0.0.1:1\", \"{}\"]\n",
            reg.host()
        ),
    )
    .unwrap();
    let store = Store::open(dir.path().join("s"), opts(dir.path())).unwrap();
    // Without credentials: refused.
    let err = store.pull("team/tool:2", &NoProgress).await.unwrap_err();
    assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
    assert!(err.to_string().contains("needs credentials"), "{err}");
    assert!(store.images().unwrap().is_empty());

    use base64::Engine;
    std::fs::write(
        dir.path().join("auth.json"),
        format!(
            "{{\"auths\":{{\"{}\":{{\"auth\":\"{}\"}}}}}}",
            reg.host(),
            base64::engine::general_purpose::STANDARD.encode("alice:s3cret")
        ),
    )
    .unwrap();
    let img = store.pull("team/tool:2", &NoProgress).await.unwrap();
    assert_eq!(img.name, format!("{}/team/tool:2", reg.host()));
    assert_eq!(store.get("team/tool:2").unwrap(), img);
}

/// A registry double that serves a Docker schema 1 manifest (distribution 2.8
/// no longer accepts schema 1 pushes, so the real one cannot serve it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema1_is_refused_with_a_clear_message() {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming().take(8) {
            let Ok(mut s) = s else { continue };
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            let body = if req.starts_with("GET /v2/old/app/manifests/") {
                r#"{"schemaVersion":1,"name":"old/app","tag":"latest","architecture":"amd64","fsLayers":[],"history":[]}"#
            } else {
                "{}"
            };
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.docker.distribution.manifest.v1+prettyjws\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("s"), opts(dir.path())).unwrap();
    let err = store
        .pull(&format!("127.0.0.1:{port}/old/app"), &NoProgress)
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("schema 1") && msg.contains("not supported"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_auth_with_credentials_from_docker_config() {
    let reg = Registry::start();
    let img = TestImage::new(vec![busybox_layer(Comp::Zstd)]);
    push(&reg.host(), "private/app:1", &img).await;
    let proxy = start_token_proxy(reg.port, "bob", "hunter2");

    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("s"), opts(dir.path())).unwrap();
    let name = format!("{}/private/app:1", proxy.host());
    let err = store.pull(&name, &NoProgress).await.unwrap_err();
    assert!(matches!(err, Error::Registry { .. }), "{err}");
    assert!(err.to_string().contains("needs credentials"), "{err}");
    assert_eq!(
        proxy
            .tokens_issued
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );

    // ~/.docker/config.json style: base64 "auth" under the registry key.
    use base64::Engine;
    std::fs::write(
        dir.path().join("auth.json"),
        format!(
            "{{\"auths\":{{\"http://{}\":{{\"auth\":\"{}\"}}}}}}",
            proxy.host(),
            base64::engine::general_purpose::STANDARD.encode("bob:hunter2")
        ),
    )
    .unwrap();
    let got = store.pull(&name, &NoProgress).await.unwrap();
    assert!(got.layers[0].join("bin/busybox").is_file());
    assert!(
        proxy
            .tokens_issued
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_tag_and_repository_say_so() {
    let reg = Registry::start();
    push(
        &reg.host(),
        "there/app:1",
        &TestImage::new(vec![busybox_layer(Comp::Gzip)]),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("s"), opts(dir.path())).unwrap();
    let tag = format!("{}/there/app:nope", reg.host());
    let err = store.pull(&tag, &NoProgress).await.unwrap_err().to_string();
    assert!(
        err.contains(&tag) && err.contains("image not found") && err.contains("there/app:nope"),
        "{err}"
    );
    let repo = format!("{}/nowhere/app:1", reg.host());
    let err = store
        .pull(&repo, &NoProgress)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(&repo) && err.contains("not found"), "{err}");
    let down = format!("127.0.0.1:{}/x/y:1", free_port());
    let err = store
        .pull(&down, &NoProgress)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot reach 127.0.0.1:"), "{err}");
}
