//! A reader for glibc's `/etc/ld.so.cache` (format `glibc-ld.so.cache1.1`,
//! optionally after the legacy `ld.so-1.7.0` table).
//!
//! The keys of the cache are SONAMEs and the values the paths that resolve
//! to them, so one pass yields the `(SONAME, file)` pairs the driver
//! libraries need, with no ELF parsing.

use std::path::{Path, PathBuf};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum LdCacheError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a glibc ld.so.cache (format 1.1): {why}")]
    Format { path: PathBuf, why: &'static str },
}

/// One entry: a SONAME and the path the loader uses for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub soname: String,
    pub path: PathBuf,
    pub flags: i32,
}

impl Entry {
    /// An ELF library of a 64-bit ABI (x86-64, aarch64, ppc64le).
    pub fn is_64bit(&self) -> bool {
        (self.flags & 0xff) & 1 != 0 && matches!(self.flags & 0xff00, 0x0300 | 0x0a00 | 0x0500)
    }
}

const OLD_MAGIC: &[u8] = b"ld.so-1.7.0";
const NEW_MAGIC: &[u8] = b"glibc-ld.so.cache1.1";
const NEW_HEADER: usize = 48;
const NEW_ENTRY: usize = 24;

fn u32_at(d: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(d.get(o..o + 4)?.try_into().ok()?))
}

fn cstr_at(d: &[u8], o: usize) -> Option<String> {
    let rest = d.get(o..)?;
    let end = rest.iter().position(|&c| c == 0)?;
    String::from_utf8(rest[..end].to_vec()).ok()
}

/// Parse the bytes of a cache file.
pub fn parse(data: &[u8]) -> Result<Vec<Entry>, &'static str> {
    let mut off = 0;
    if data.starts_with(OLD_MAGIC) {
        // Legacy table: 12-byte magic, count, 12-byte entries, 8-aligned.
        let n = u32_at(data, 12).ok_or("truncated legacy header")? as usize;
        off = (16 + n * 12 + 7) & !7;
    }
    let header = data
        .get(off..off + NEW_HEADER)
        .ok_or("no glibc-ld.so.cache1.1 header")?;
    if !header.starts_with(NEW_MAGIC) {
        return Err("no glibc-ld.so.cache1.1 header");
    }
    let n = u32_at(data, off + 20).ok_or("truncated header")? as usize;
    // String offsets are relative to the start of the new header.
    let strings = &data[off..];
    let mut entries = Vec::with_capacity(n);
    for i in 0..n {
        let e = off + NEW_HEADER + i * NEW_ENTRY;
        let (Some(flags), Some(key), Some(value)) =
            (u32_at(data, e), u32_at(data, e + 4), u32_at(data, e + 8))
        else {
            return Err("truncated entry table");
        };
        if let (Some(soname), Some(path)) = (
            cstr_at(strings, key as usize),
            cstr_at(strings, value as usize),
        ) {
            entries.push(Entry {
                soname,
                path: path.into(),
                flags: flags as i32,
            });
        }
    }
    Ok(entries)
}

/// The 64-bit entries of `<root>/etc/ld.so.cache`.
pub fn read(root: &Path) -> Result<Vec<Entry>, LdCacheError> {
    let path = root.join("etc/ld.so.cache");
    let data = std::fs::read(&path).map_err(|source| LdCacheError::Read {
        path: path.clone(),
        source,
    })?;
    let entries = parse(&data).map_err(|why| LdCacheError::Format { path, why })?;
    Ok(entries.into_iter().filter(Entry::is_64bit).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_cache_has_a_64bit_libc() {
        let entries = read(Path::new("/")).unwrap();
        assert!(
            entries.iter().any(|e| e.soname == "libc.so.6"),
            "{entries:?}"
        );
    }

    #[test]
    fn garbage_is_refused_with_the_reason() {
        assert!(parse(b"not a cache").is_err());
        let mut short = NEW_MAGIC.to_vec();
        short.resize(NEW_HEADER, 0);
        short[20] = 3; // three entries, none present
        assert_eq!(parse(&short), Err("truncated entry table"));
    }
}
