//! The image store and run directories against hostile images and
//! programs, with the real binary as the unprivileged test user: setuid
//! files (from an image, or made by a run) that no other local account can
//! reach, the bounds on what an image unpacks to, and a layer whose root
//! entry belongs to another user.

mod sandbox_env;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sandbox_env::{chown_tree, env, user_dir};
use test_support::{
    busybox_rootfs_layer, file, layer, layer_from_tar, tar_of, write_oci_layout, Comp, Layer,
    TestImage, E,
};

/// `PATH ARGS` as `nobody`: another local account, with no group of the
/// worker's user.
fn as_nobody(path: &Path, args: &[&str]) -> std::process::Output {
    assert!(
        env().as_root,
        "run as root: the test switches to nobody to try the worker's files"
    );
    // Through a shell: setpriv resolves its program before it changes
    // ids, so `setpriv … PATH` would reach PATH as root.
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(["/bin/sh", "-c", "exec \"$0\" \"$@\""])
        .arg(path)
        .args(args)
        .output()
        .unwrap()
}

/// An OCI layout of `img` (named `name`) owned by the test user.
fn layout_of(dir: &str, img: &TestImage, name: &str) -> PathBuf {
    let e = env();
    let layout = user_dir(dir, 0o755).join("layout");
    write_oci_layout(&layout, img, name);
    if e.as_root {
        chown_tree(layout.parent().unwrap(), e.uid, e.gid);
    }
    layout
}

/// An image of `layers` that runs commands as root, with no entrypoint.
fn plain(layers: Vec<Layer>) -> TestImage {
    TestImage::with_config(layers, "amd64", serde_json::json!({"Env": ["PATH=/bin"]}))
}

fn busybox() -> Vec<u8> {
    std::fs::read("/bin/busybox").unwrap()
}

/// Files named `name` below the store's layer directories.
fn in_layers(images: &Path, name: &str) -> Vec<PathBuf> {
    std::fs::read_dir(images.join("l"))
        .unwrap()
        .map(|e| e.unwrap().path().join(name))
        .filter(|p| p.symlink_metadata().is_ok())
        .collect()
}

#[test]
fn a_setuid_file_of_an_image_is_neither_kept_nor_reachable() {
    let e = env();
    let images = user_dir("suid-image", 0o755).join("images");
    let img = plain(vec![
        busybox_rootfs_layer(Comp::Gzip),
        layer(
            &[E::File("usr/local/bin/id".into(), busybox(), 0o4755, 0)],
            Comp::Gzip,
        ),
    ]);
    let layout = layout_of("suid-layout", &img, "localhost/suid:1");
    e.images_run(&images, &["import", layout.to_str().unwrap()])
        .ok();

    let found = in_layers(&images, "usr/local/bin/id");
    assert_eq!(found.len(), 1, "{found:?}");
    let out = as_nobody(&found[0], &["-u"]);
    assert!(
        !out.status.success(),
        "nobody ran the image's file: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let mode = std::fs::metadata(&found[0]).unwrap().mode();
    assert_eq!(mode & 0o7777, 0o755, "setuid bit kept: {mode:o}");
    let root = std::fs::metadata(images.join("l")).unwrap().mode();
    assert_eq!(root & 0o077, 0, "l/ is {root:o}");
}

#[test]
fn a_setuid_file_made_by_a_run_is_unreachable() {
    let e = env();
    let images = user_dir("suid-run", 0o755).join("images");
    let img = plain(vec![busybox_rootfs_layer(Comp::Gzip)]);
    let layout = layout_of("suid-run-layout", &img, "localhost/suid-run:1");
    e.images_run(&images, &["import", layout.to_str().unwrap()])
        .ok();
    // A state directory made before by an older version: world-searchable.
    let runs = e.state_dir.join("runs");
    std::fs::create_dir_all(&runs).unwrap();
    std::fs::set_permissions(&runs, std::fs::Permissions::from_mode(0o755)).unwrap();
    if e.as_root {
        chown_tree(&runs, e.uid, e.gid);
    }

    let mut child = e
        .images_command(
            &images,
            &[
                "exec",
                "--image",
                "localhost/suid-run:1",
                "--",
                "sh",
                "-c",
                "cp /bin/busybox /id && chmod 4755 /id && sleep 6",
            ],
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let made = loop {
        let hit = std::fs::read_dir(&runs).ok().and_then(|rd| {
            rd.flatten().map(|d| d.path().join("upper/id")).find(|p| {
                p.metadata()
                    .map(|m| m.mode() & 0o4000 != 0)
                    .unwrap_or(false)
            })
        });
        if let Some(p) = hit {
            break p;
        }
        if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "the run made no setuid file in {}: {}{}",
                runs.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = as_nobody(&made, &["-u"]);
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        !out.status.success(),
        "nobody ran the run's setuid file: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let mode = std::fs::metadata(&runs).unwrap().mode();
    assert_eq!(mode & 0o077, 0, "runs/ is {mode:o}");
}

#[test]
fn the_image_bounds_are_settings_and_images_lists_inodes() {
    let e = env();
    let images = user_dir("bounds", 0o755).join("images");
    let entries: Vec<E> = (0..300).map(|i| file(&format!("f{i}"), b"")).collect();
    let img = plain(vec![
        busybox_rootfs_layer(Comp::Gzip),
        layer(&entries, Comp::Gzip),
    ]);
    let layout = layout_of("bounds-layout", &img, "localhost/many:1");
    let mut cmd = e.images_command(&images, &["import", layout.to_str().unwrap()]);
    cmd.env("COMPUTE_WORKER_IMAGE_MAX_ENTRIES", "200");
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("bound of 200 files") && err.contains("COMPUTE_WORKER_IMAGE_MAX_ENTRIES"),
        "{err}"
    );
    assert!(e
        .images_run(&images, &["images", "--json"])
        .ok()
        .contains("[]"));

    e.images_run(&images, &["import", layout.to_str().unwrap()])
        .ok();
    let out = e.images_run(&images, &["images"]).ok();
    assert!(out.lines().next().unwrap().contains("INODES"), "{out}");
    let json: serde_json::Value =
        serde_json::from_str(&e.images_run(&images, &["images", "--json"]).ok()).unwrap();
    let n = json[0]["entries"].as_u64().unwrap();
    assert!(n > 300, "{json}");
    assert!(out.contains(&format!(" {n} ")), "{out}");
}

#[test]
fn a_layer_root_owned_by_another_user_imports_and_runs() {
    let e = env();
    let images = user_dir("root-owner", 0o755).join("images");
    // What `tar -C ~/dir .` of a user's directory gives: a `./` entry of
    // uid 1002 (then one with mode 0555).
    let tar = tar_of(&[E::Dir("./", 1002), file("hello", b"from a user's tree")]);
    let img = plain(vec![
        busybox_rootfs_layer(Comp::Gzip),
        layer_from_tar(tar, Comp::Gzip),
    ]);
    let layout = layout_of("root-owner-layout", &img, "localhost/user-tree:1");
    e.images_run(&images, &["import", layout.to_str().unwrap()])
        .ok();
    let out = e.images_run(
        &images,
        &[
            "exec",
            "--image",
            "localhost/user-tree:1",
            "--",
            "cat",
            "/hello",
        ],
    );
    assert_eq!(out.ok(), "from a user's tree", "{}", out.stderr());

    // The same with mode 0555 on the root entry.
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_path("./").unwrap();
    h.set_mode(0o555);
    h.set_uid(1002);
    h.set_gid(1002);
    h.set_size(0);
    h.set_cksum();
    let tar = {
        let mut b = tar::Builder::new(Vec::new());
        b.append(&h, &[][..]).unwrap();
        let mut f = tar::Header::new_gnu();
        f.set_path("hello2").unwrap();
        f.set_mode(0o644);
        f.set_size(2);
        f.set_cksum();
        b.append(&f, &b"ok"[..]).unwrap();
        b.into_inner().unwrap()
    };
    let img = plain(vec![
        busybox_rootfs_layer(Comp::Gzip),
        layer_from_tar(tar, Comp::Gzip),
    ]);
    let layout = layout_of("root-owner-layout2", &img, "localhost/user-tree:2");
    e.images_run(&images, &["import", layout.to_str().unwrap()])
        .ok();
    let out = e.images_run(
        &images,
        &[
            "exec",
            "--image",
            "localhost/user-tree:2",
            "--",
            "cat",
            "/hello2",
        ],
    );
    assert_eq!(out.ok(), "ok", "{}", out.stderr());
}

/// A tree whose group is root (after `sudo debootstrap` and `chown -R user
/// DIR`): programs can write in /tmp, and `exec` warns up front that they
/// cannot write elsewhere, naming the directories, their owner and the fix;
/// once the fix is applied, no warning and writes work everywhere.
#[test]
fn a_rootfs_tree_whose_group_is_root_takes_files_in_tmp_and_warns_with_the_fix() {
    let e = env();
    assert!(
        e.as_root,
        "run as root: the test makes a tree of group root"
    );
    let tree = user_dir("root-group-tmp", 0o755).join("rootfs");
    test_support::build_busybox_rootfs(&tree);
    chown_tree(&tree, e.uid, 0);
    let exec = |script: &str| {
        e.command(&[
            "exec",
            "--rootfs",
            tree.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            script,
        ])
        .output()
        .unwrap()
    };
    let out = exec("echo kept > /tmp/f && cat /tmp/f");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "kept\n", "{stderr}");
    for part in [
        format!("the rootfs {} holds directories", tree.display()),
        format!("/etc ({}:root)", e.user),
        format!(
            "Fix: as root, `chown -R {u}:{u} {}`",
            tree.display(),
            u = e.user
        ),
    ] {
        assert!(stderr.contains(&part), "no {part:?} in: {stderr}");
    }

    chown_tree(&tree, e.uid, e.gid);
    let out = exec("mkdir /usr/new && echo made");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "made\n");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A `--rootfs` tree with a directory of another account that the
/// sandbox cannot search (its owner is not mapped): no mount point can be
/// made below it. `run` fails naming the directory, its owner and the fix.
#[test]
fn a_rootfs_tree_with_a_directory_of_another_account_fails_naming_it_and_the_fix() {
    let e = env();
    assert!(
        e.as_root,
        "run as root: the test makes a directory of another account"
    );
    let base = user_dir("foreign-dir", 0o755);
    let tree = base.join("rootfs");
    test_support::build_busybox_rootfs(&tree);
    chown_tree(&tree, e.uid, e.gid);
    let app = tree.join("app");
    std::fs::create_dir_all(app.join("old")).unwrap();
    chown_tree(&app, 5000, 5000);
    std::fs::set_permissions(&app, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let results = base.join("results");
    let out = e
        .command(&[
            "run",
            "--rootfs",
            tree.to_str().unwrap(),
            "--network",
            "none",
            "--results",
            results.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let failed = all
        .lines()
        .find(|l| l.starts_with("failed: "))
        .unwrap_or_else(|| panic!("the run did not fail:\n{all}"));
    for part in [
        format!(
            "/app ({}) belongs to uid 5000:gid 5000 (mode 0700)",
            app.display()
        ),
        "the mount point /app/".to_string(),
        format!(
            "Fix: as root, `chown -R {u}:{u} {}`",
            tree.display(),
            u = e.user
        ),
    ] {
        assert!(failed.contains(&part), "no {part:?} in: {failed}");
    }
}

#[test]
fn a_rootfs_tree_whose_group_is_root_takes_new_mount_points() {
    // As after `sudo debootstrap` and `chown -R user DIR`: the user owns
    // every file, the group is still root (not mapped in the sandbox).
    let e = env();
    let tree = user_dir("root-group", 0o755).join("rootfs");
    test_support::build_busybox_rootfs(&tree);
    std::fs::create_dir_all(tree.join("usr/share")).unwrap();
    let data = user_dir("root-group-data", 0o755);
    std::fs::write(data.join("seen"), "bound").unwrap();
    assert!(
        e.as_root,
        "run as root: the test makes a tree of group root"
    );
    chown_tree(&tree, e.uid, 0);
    chown_tree(&data, e.uid, e.gid);
    let bind = format!("{}:/usr/share/new/data:ro", data.display());
    let out = e
        .command(&[
            "exec",
            "--rootfs",
            tree.to_str().unwrap(),
            "--bind",
            &bind,
            "--",
            "cat",
            "/usr/share/new/data/seen",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "bound");
}
