//! Two real processes sharing one store, and a process that dies mid-pull.
//! The children are this test binary re-executed on an ignored test.

mod common;

use std::process::Command;

use common::*;
use rootfs_cache::{Progress, ProgressEvent, Store};

const ROOT: &str = "RC_CHILD_ROOT";
const NAME: &str = "RC_CHILD_NAME";
const CRASH: &str = "RC_CHILD_CRASH";

/// Kills the process (SIGKILL: no cleanup, no core dump) halfway through
/// the download of a layer, once the unpacker (which reads the layer as it
/// downloads) has started writing its file `big` in the scratch area.
struct CrashMidDownload(std::path::PathBuf);

impl Progress for CrashMidDownload {
    fn event(&self, ev: &ProgressEvent) {
        if let ProgressEvent::Downloaded { done, total, .. } = ev {
            if *done >= total / 2 && done < total {
                for _ in 0..1000 {
                    if tree(&self.0.join("tmp"))
                        .iter()
                        .any(|p| p.ends_with("/big"))
                    {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
}

#[test]
#[ignore = "child process of the tests in this file"]
fn child_process_pull() {
    let (Ok(root), Ok(name)) = (std::env::var(ROOT), std::env::var(NAME)) else {
        return;
    };
    let o = opts(std::path::Path::new(&root).parent().unwrap());
    let store = Store::open(&root, o).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    if std::env::var(CRASH).is_ok() {
        let _ = rt.block_on(store.pull(&name, &CrashMidDownload(root.into())));
        panic!("should have crashed");
    }
    let img = rt.block_on(store.pull(&name, &NoProgress)).unwrap();
    println!("CHILD-DIGEST {}", img.manifest_digest);
}

fn child(root: &std::path::Path, name: &str, crash: bool) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args(["--ignored", "--exact", "child_process_pull", "--nocapture"])
        .env(ROOT, root)
        .env(NAME, name);
    if crash {
        c.env(CRASH, "1");
    }
    c
}

use rootfs_cache::NoProgress;

#[test]
fn two_processes_pulling_one_image_download_it_once() {
    let reg = Registry::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let img = TestImage::new(vec![
        busybox_layer(Comp::Gzip),
        layer(&[file("big", &vec![3u8; 4 << 20])], Comp::Gzip),
    ]);
    let digest = rt.block_on(push(&reg.host(), "proc/one:1", &img));
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("s");
    let name = format!("{}/proc/one:1", reg.host());
    let kids: Vec<_> = (0..2)
        .map(|_| child(&root, &name, false).output_async())
        .collect();
    for k in kids {
        let out = k.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains(&format!("CHILD-DIGEST {digest}")),
            "{stdout}"
        );
    }
    for l in &img.layers {
        assert_eq!(
            reg.blob_gets(&l.digest()),
            1,
            "layer fetched once across processes"
        );
    }
    let store = Store::open(&root, opts(dir.path())).unwrap();
    assert_eq!(store.get(&name).unwrap().manifest_digest, digest);
}

#[test]
fn a_crash_mid_pull_leaves_only_scratch_which_the_next_open_cleans() {
    let reg = Registry::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let img = TestImage::new(vec![layer(&[file("big", &vec![5u8; 8 << 20])], Comp::None)]);
    rt.block_on(push(&reg.host(), "proc/crash:1", &img));
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("s");
    let name = format!("{}/proc/crash:1", reg.host());
    let out = child(&root, &name, true).output().unwrap();
    assert!(!out.status.success(), "child must have died");

    // Junk is there: a half-unpacked layer in the dead process's scratch,
    // and nothing of it is trusted.
    let junk: Vec<String> = tree(&root.join("tmp"))
        .into_iter()
        .filter(|p| p.contains("unpack-") && p.ends_with("/big"))
        .collect();
    assert_eq!(junk.len(), 1, "{:?}", tree(&root.join("tmp")));
    let partial = std::fs::metadata(root.join("tmp").join(&junk[0])).unwrap();
    assert!(partial.len() < 8 << 20, "the layer was cut short");
    assert!(
        tree(&root.join("l")).is_empty(),
        "nothing half-unpacked is in l/"
    );
    assert!(tree(&root.join("images")).is_empty());

    // The next open removes it, and a pull then works.
    let store = Store::open(&root, opts(dir.path())).unwrap();
    let left: Vec<String> = tree(&root.join("tmp"))
        .into_iter()
        .filter(|p| p.contains("unpack-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let got = rt.block_on(store.pull(&name, &NoProgress)).unwrap();
    assert_eq!(
        std::fs::metadata(got.layers[0].join("big")).unwrap().len(),
        8 << 20
    );
}

trait OutputAsync {
    fn output_async(&mut self) -> std::process::Child;
}

impl OutputAsync for Command {
    fn output_async(&mut self) -> std::process::Child {
        self.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }
}
