//! Bounds on what one image may unpack to: bytes of file content and
//! entries (inodes), checked entry by entry while a layer unpacks, and the
//! sparse-aware copy that keeps holes (GNU sparse entries, runs of zeros)
//! from being written as real blocks.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};

/// Default bound on the file bytes of one image: 20 GiB. The largest
/// competition images seen (CUDA + PyTorch stacks) unpack to 10-15 GiB; a
/// worker with a 100 GB disk keeps room for the store's other images, the
/// bundles and the runs' output.
pub const DEFAULT_MAX_IMAGE_BYTES: u64 = 20 * 1024 * 1024 * 1024;

/// Default bound on the entries (inodes) of one image: 1,000,000. Large
/// Python/CUDA images hold 200,000-400,000 files; an ext4 file system of
/// 100 GB has about 6 million inodes.
pub const DEFAULT_MAX_IMAGE_ENTRIES: u64 = 1_000_000;

/// How much one image may unpack to (all its layers together).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UnpackBounds {
    /// Bytes of regular file content (a sparse file counts with its
    /// apparent size).
    pub max_bytes: u64,
    /// Entries: files, directories, links, whiteouts.
    pub max_entries: u64,
}

impl Default for UnpackBounds {
    fn default() -> Self {
        Self {
            max_bytes: DEFAULT_MAX_IMAGE_BYTES,
            max_entries: DEFAULT_MAX_IMAGE_ENTRIES,
        }
    }
}

impl UnpackBounds {
    /// Why `bytes` and `entries` break the bound, or `None` within it.
    pub(crate) fn exceeded(&self, bytes: u64, entries: u64) -> Option<String> {
        if bytes > self.max_bytes {
            Some(format!(
                "the image unpacks to more than its bound of {} bytes of files (at least {} so far); \
                 raise COMPUTE_WORKER_IMAGE_MAX_BYTES if the image is legitimate",
                self.max_bytes, bytes
            ))
        } else if entries > self.max_entries {
            Some(format!(
                "the image unpacks to more than its bound of {} files and directories (at least {} so far); \
                 raise COMPUTE_WORKER_IMAGE_MAX_ENTRIES if the image is legitimate",
                self.max_entries, entries
            ))
        } else {
            None
        }
    }
}

/// Copy `r` into the new file `f`, leaving holes where whole reads are
/// zeros (the tar reader fills a sparse entry's holes with zeros), and
/// setting the file's length at the end so that a trailing hole is kept.
pub(crate) fn copy_sparse(r: &mut impl Read, f: &mut File, buf: &mut [u8]) -> io::Result<u64> {
    let mut total = 0u64;
    let mut pending_hole = false;
    loop {
        let n = match r.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let chunk = &buf[..n];
        if is_zero(chunk) {
            f.seek(SeekFrom::Current(n as i64))?;
            pending_hole = true;
        } else {
            f.write_all(chunk)?;
            pending_hole = false;
        }
        total += n as u64;
    }
    if pending_hole {
        f.set_len(total)?;
    }
    Ok(total)
}

fn is_zero(b: &[u8]) -> bool {
    let (head, words, tail) = {
        // SAFETY: u64 has no invalid bit patterns; align_to only reinterprets
        // the aligned middle of the byte slice.
        unsafe { b.align_to::<u64>() }
    };
    head.iter().all(|&x| x == 0) && words.iter().all(|&x| x == 0) && tail.iter().all(|&x| x == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[0; 4099]));
        let mut v = vec![0u8; 4099];
        v[4098] = 1;
        assert!(!is_zero(&v));
        v[4098] = 0;
        v[3] = 1;
        assert!(!is_zero(&v));
    }

    #[test]
    fn bound_messages_name_the_setting() {
        let b = UnpackBounds {
            max_bytes: 10,
            max_entries: 2,
        };
        assert!(b.exceeded(10, 2).is_none());
        assert!(b.exceeded(11, 0).unwrap().contains("IMAGE_MAX_BYTES"));
        assert!(b.exceeded(0, 3).unwrap().contains("IMAGE_MAX_ENTRIES"));
    }
}
