//! A read-only bind mount made by a test (as root), undone on drop.

use std::path::{Path, PathBuf};
use std::process::Command;

/// `src` bind-mounted read-only at `at` (created if needed).
pub struct ReadOnlyMount(pub PathBuf);

impl ReadOnlyMount {
    pub fn new(src: &Path, at: PathBuf) -> ReadOnlyMount {
        std::fs::create_dir_all(&at).unwrap();
        let run = |args: &[&std::ffi::OsStr]| {
            let st = Command::new("mount").args(args).status().unwrap();
            assert!(st.success(), "mount {args:?}");
        };
        run(&["--bind".as_ref(), src.as_os_str(), at.as_os_str()]);
        let m = ReadOnlyMount(at);
        run(&["-o".as_ref(), "remount,bind,ro".as_ref(), m.0.as_os_str()]);
        m
    }
}

impl Drop for ReadOnlyMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}
