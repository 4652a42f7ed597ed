//! The write limit of a run: how many bytes it may add to the disk, in
//! its overlay upper layer and in the directories bound writable into it.
//!
//! Rootless, there are no quotas. The keeper measures instead: the blocks
//! allocated (`st_blocks * 512`, so sparse files count what they really
//! take) of everything under those directories, walked without following
//! a link, once before the program starts (the baseline: bundles the
//! worker unpacked there are not the run's) and then every few seconds
//! while it runs, and once more after it ended. When the growth passes
//! the cap, the whole sandbox is killed. `RLIMIT_FSIZE` (cap + 1 byte)
//! stops a single file at once between two measures; the measure after
//! the end then sees it past the cap.
//!
//! A walk costs time in proportion to the files there: the interval
//! after a walk is at least [`MIN_INTERVAL`] and at least
//! [`COST_FACTOR`] times the walk's own duration, so the keeper spends at
//! most about 5% of a core on it.

use std::collections::HashSet;
use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::dir::{Dir, Type};
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{fstatat, Mode, SFlag};

use super::types::RunSpec;

/// Shortest time between two measures.
pub const MIN_INTERVAL: Duration = Duration::from_secs(2);
/// The interval is at least this many times the last walk's duration.
const COST_FACTOR: u32 = 20;
/// Deepest directory nesting walked (each level holds a file descriptor).
const MAX_DEPTH: usize = 1024;

/// The directories a run writes into: its upper layer and its writable
/// binds, none inside another (it would count twice).
pub fn roots(upper: &Path, run: &RunSpec) -> Vec<PathBuf> {
    let mut all: Vec<PathBuf> = std::iter::once(upper.to_path_buf())
        .chain(
            run.binds
                .iter()
                .filter(|b| !b.read_only)
                .map(|b| b.source.clone()),
        )
        .collect();
    all.sort();
    all.dedup();
    let keep: Vec<PathBuf> = all
        .iter()
        .filter(|p| !all.iter().any(|q| q != *p && p.starts_with(q)))
        .cloned()
        .collect();
    keep
}

/// Bytes allocated under `roots`: every entry's blocks, a file with
/// several links once, no link followed, no other filesystem entered.
pub fn allocated(roots: &[PathBuf]) -> u64 {
    let mut seen = HashSet::new();
    roots.iter().map(|r| allocated_under(r, &mut seen)).sum()
}

fn allocated_under(root: &Path, seen: &mut HashSet<(u64, u64)>) -> u64 {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let Ok(dir) = Dir::open(root, flags, Mode::empty()) else {
        return 0;
    };
    let Ok(top) = nix::sys::stat::fstat(dir.as_raw_fd()) else {
        return 0;
    };
    let mut total = 0u64;
    // Each level: the open directory and the subdirectories still to walk.
    let mut stack = vec![(dir, Vec::new())];
    let first = scan(&mut stack[0].0, top.st_dev, seen, &mut total);
    stack[0].1 = first;
    while let Some((parent, pending)) = stack.last_mut() {
        let Some(name) = pending.pop() else {
            stack.pop();
            continue;
        };
        let parent = parent.as_raw_fd();
        if stack.len() >= MAX_DEPTH {
            continue;
        }
        let Ok(mut sub) = Dir::openat(Some(parent), name.as_c_str(), flags, Mode::empty()) else {
            continue;
        };
        let subdirs = scan(&mut sub, top.st_dev, seen, &mut total);
        stack.push((sub, subdirs));
    }
    total
}

/// Add the blocks of every entry of `dir` to `total`; return the names of
/// its subdirectories on the same filesystem.
fn scan(dir: &mut Dir, dev: u64, seen: &mut HashSet<(u64, u64)>, total: &mut u64) -> Vec<CString> {
    let fd = dir.as_raw_fd();
    let mut subdirs = Vec::new();
    for entry in dir.iter().flatten() {
        let name = entry.file_name();
        if name.to_bytes() == b"." || name.to_bytes() == b".." {
            continue;
        }
        let Ok(st) = fstatat(Some(fd), name, AtFlags::AT_SYMLINK_NOFOLLOW) else {
            continue;
        };
        let is_dir = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR;
        if !is_dir && st.st_nlink > 1 && !seen.insert((st.st_dev, st.st_ino)) {
            continue;
        }
        *total = total.saturating_add((st.st_blocks as u64).saturating_mul(512));
        if is_dir && st.st_dev == dev && entry.file_type() != Some(Type::Symlink) {
            subdirs.push(name.to_owned());
        }
    }
    subdirs
}

/// What a run added to the disk since its start: the baseline taken
/// before the program starts, and the roots measured again at will.
pub struct Growth {
    roots: Vec<PathBuf>,
    baseline: u64,
}

impl Growth {
    /// Take the baseline of `run` (writing into `upper`).
    pub fn start(upper: &Path, run: &RunSpec) -> Growth {
        let roots = roots(upper, run);
        let baseline = allocated(&roots);
        Growth { roots, baseline }
    }

    /// Bytes added since the baseline (measured now).
    pub fn now(&self) -> u64 {
        allocated(&self.roots).saturating_sub(self.baseline)
    }
}

/// The watch of one run: what it wrote, and its write limit if it has one.
pub struct Watch {
    growth: Growth,
    cap: Option<u64>,
    next: Instant,
}

impl Watch {
    /// Take the baseline of `run` (writing into `upper`) before it starts.
    pub fn start(upper: &Path, run: &RunSpec) -> Watch {
        let began = Instant::now();
        let growth = Growth::start(upper, run);
        let cap = run.limits.write_max.filter(|c| *c > 0);
        let mut w = Watch {
            growth,
            cap,
            next: began,
        };
        w.schedule(began);
        tracing::debug!(baseline = w.growth.baseline, ?cap, took = ?began.elapsed(), "write baseline");
        w
    }

    /// When the next measure for the limit is due (`None`: no limit).
    pub fn due(&self) -> Option<Instant> {
        self.cap.map(|_| self.next)
    }

    fn schedule(&mut self, began: Instant) {
        let took = began.elapsed();
        self.next = Instant::now() + MIN_INTERVAL.max(took * COST_FACTOR);
    }

    /// Measure now: true when the run has written more than its cap
    /// (never without one).
    pub fn over(&mut self) -> bool {
        let Some(cap) = self.cap else {
            return false;
        };
        let began = Instant::now();
        let grown = self.growth.now();
        self.schedule(began);
        grown > cap
    }

    /// Bytes the run added to the disk so far (measured now).
    pub fn written(&self) -> u64 {
        self.growth.now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::types::Bind;
    use std::io::Write;

    #[test]
    fn blocks_count_once_and_links_are_not_followed() {
        let t = std::env::temp_dir().join(format!("cw-write-limit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&t);
        std::fs::create_dir_all(t.join("a/b/c")).unwrap();
        let mut f = std::fs::File::create(t.join("a/b/c/data")).unwrap();
        f.write_all(&vec![1u8; 1 << 20]).unwrap();
        f.sync_all().unwrap();
        std::fs::hard_link(t.join("a/b/c/data"), t.join("a/again")).unwrap();
        std::os::unix::fs::symlink("/usr", t.join("a/usr")).unwrap();
        // A sparse file takes (almost) nothing.
        std::fs::File::create(t.join("sparse"))
            .unwrap()
            .set_len(1 << 30)
            .unwrap();
        let n = allocated(std::slice::from_ref(&t));
        assert!((1 << 20..(1 << 20) + (64 << 10)).contains(&n), "{n}");
        // A root inside another counts once.
        let mut run = RunSpec::new("/img", vec![]);
        run.binds.push(Bind {
            source: t.join("a"),
            destination: "/x".into(),
            read_only: false,
        });
        run.binds.push(Bind {
            source: "/usr".into(),
            destination: "/usr".into(),
            read_only: true,
        });
        assert_eq!(roots(&t, &run), vec![t.clone()]);
        std::fs::remove_dir_all(&t).unwrap();
    }
}
