//! Test images: tar layers (from entry lists, from /bin/busybox or from a
//! directory), gzip/zstd compression, image configs and manifests, and OCI
//! image layout directories and archives.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use sha2::{Digest, Sha256};

pub fn sha(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

/// One entry of a test layer.
pub enum E {
    Dir(&'static str, u32),
    File(String, Vec<u8>, u32, u64),
    Symlink(&'static str, &'static str),
    Hardlink(&'static str, &'static str),
    CharDev(&'static str),
}

pub fn file(path: &str, data: &[u8]) -> E {
    E::File(path.to_string(), data.to_vec(), 0o644, 0)
}

fn set_raw_name(h: &mut tar::Header, name: &str) {
    // Bypass the tar crate's path checks so that hostile names can be written.
    let n = &mut h.as_old_mut().name;
    n.fill(0);
    n[..name.len()].copy_from_slice(name.as_bytes());
}

fn set_raw_link(h: &mut tar::Header, target: &str) {
    let n = &mut h.as_old_mut().linkname;
    n.fill(0);
    n[..target.len()].copy_from_slice(target.as_bytes());
}

/// An uncompressed tar with these entries (names written verbatim).
pub fn tar_of(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_600_000_000);
        h.set_uid(0);
        h.set_gid(0);
        match e {
            E::Dir(p, uid) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_uid(*uid as u64);
                h.set_gid(*uid as u64);
                h.set_size(0);
                set_raw_name(&mut h, p);
                h.set_cksum();
                b.append(&h, &[][..]).unwrap();
            }
            E::File(p, data, mode, uid) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_uid(*uid);
                h.set_gid(*uid);
                h.set_size(data.len() as u64);
                set_raw_name(&mut h, p);
                h.set_cksum();
                b.append(&h, &data[..]).unwrap();
            }
            E::Symlink(p, t) | E::Hardlink(p, t) => {
                h.set_entry_type(if matches!(e, E::Symlink(..)) {
                    tar::EntryType::Symlink
                } else {
                    tar::EntryType::Link
                });
                h.set_mode(0o777);
                h.set_size(0);
                set_raw_name(&mut h, p);
                set_raw_link(&mut h, t);
                h.set_cksum();
                b.append(&h, &[][..]).unwrap();
            }
            E::CharDev(p) => {
                h.set_entry_type(tar::EntryType::Char);
                h.set_mode(0o666);
                h.set_size(0);
                h.set_device_major(1).unwrap();
                h.set_device_minor(3).unwrap();
                set_raw_name(&mut h, p);
                h.set_cksum();
                b.append(&h, &[][..]).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

#[derive(Clone, Copy, Debug)]
pub enum Comp {
    None,
    Gzip,
    Zstd,
}

/// A layer blob: (compressed bytes, media type, diff id).
pub struct Layer {
    pub blob: Vec<u8>,
    pub media_type: String,
    pub diff_id: String,
}

impl Layer {
    pub fn digest(&self) -> String {
        sha(&self.blob)
    }
}

pub fn layer(entries: &[E], comp: Comp) -> Layer {
    layer_from_tar(tar_of(entries), comp)
}

/// A layer blob from an uncompressed tar.
pub fn layer_from_tar(tar: Vec<u8>, comp: Comp) -> Layer {
    let diff_id = sha(&tar);
    let (blob, mt) = match comp {
        Comp::None => (tar, "application/vnd.oci.image.layer.v1.tar"),
        Comp::Gzip => {
            let mut g = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            g.write_all(&tar).unwrap();
            (
                g.finish().unwrap(),
                "application/vnd.oci.image.layer.v1.tar+gzip",
            )
        }
        Comp::Zstd => (
            zstd::encode_all(&tar[..], 3).unwrap(),
            "application/vnd.oci.image.layer.v1.tar+zstd",
        ),
    };
    Layer {
        blob,
        media_type: mt.to_string(),
        diff_id,
    }
}

/// A base layer with busybox and a few applets.
pub fn busybox_layer(comp: Comp) -> Layer {
    let bb = std::fs::read("/bin/busybox").expect("/bin/busybox (apt-get install busybox-static)");
    layer(
        &[
            E::Dir("bin", 0),
            E::File("bin/busybox".into(), bb, 0o755, 0),
            E::Symlink("bin/sh", "busybox"),
            E::Hardlink("bin/ls", "bin/busybox"),
            E::Dir("etc", 0),
            file(
                "etc/passwd",
                b"root:x:0:0:root:/root:/bin/sh\nwww-data:x:33:33::/var/www:/bin/sh\n",
            ),
        ],
        comp,
    )
}

/// A built image ready to push.
pub struct TestImage {
    pub config: Vec<u8>,
    pub layers: Vec<Layer>,
    pub arch: String,
}

impl TestImage {
    pub fn new(layers: Vec<Layer>) -> TestImage {
        Self::for_arch(layers, "amd64")
    }

    pub fn for_arch(layers: Vec<Layer>, arch: &str) -> TestImage {
        Self::with_config(
            layers,
            arch,
            serde_json::json!({
                "Env": ["PATH=/bin", "HELLO=world"],
                "Entrypoint": ["/bin/sh", "-c"],
                "Cmd": ["echo hi"],
                "WorkingDir": "/work",
                "User": "33:33"
            }),
        )
    }

    /// An image whose config's `config` section (Env, Cmd, ...) is `config`.
    pub fn with_config(layers: Vec<Layer>, arch: &str, config: serde_json::Value) -> TestImage {
        let diff_ids: Vec<&str> = layers.iter().map(|l| l.diff_id.as_str()).collect();
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": arch,
            "os": "linux",
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": diff_ids}
        }))
        .unwrap();
        TestImage {
            config,
            layers,
            arch: arch.into(),
        }
    }

    /// The manifest JSON in OCI (or Docker schema 2) form.
    pub fn manifest(&self, docker: bool) -> Vec<u8> {
        let (mt, cmt) = if docker {
            (
                "application/vnd.docker.distribution.manifest.v2+json",
                "application/vnd.docker.container.image.v1+json",
            )
        } else {
            (
                "application/vnd.oci.image.manifest.v1+json",
                "application/vnd.oci.image.config.v1+json",
            )
        };
        let layers: Vec<_> = self
            .layers
            .iter()
            .map(|l| {
                let lmt = if docker {
                    match l.media_type.rsplit('.').next() {
                        Some("tar+gzip") => {
                            "application/vnd.docker.image.rootfs.diff.tar.gzip".to_string()
                        }
                        _ => l.media_type.clone(),
                    }
                } else {
                    l.media_type.clone()
                };
                serde_json::json!({"mediaType": lmt, "digest": l.digest(), "size": l.blob.len()})
            })
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": mt,
            "config": {"mediaType": cmt, "digest": sha(&self.config), "size": self.config.len()},
            "layers": layers
        }))
        .unwrap()
    }
}

/// Which owners a layer made from a directory records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owners {
    /// The files' uids and gids on disk.
    AsOnDisk,
    /// 0:0 for everything (a rootfs built by an unprivileged user).
    Root,
}

/// An uncompressed tar of the tree below `dir` (names relative to it, in
/// sorted order): directories, regular files, symlinks, with modes and
/// mtimes. Hard links become copies; other file types are left out.
pub fn tar_of_dir(dir: &Path, owners: Owners) -> Vec<u8> {
    fn walk(b: &mut tar::Builder<Vec<u8>>, root: &Path, p: &Path, owners: Owners) {
        let mut entries: Vec<_> = std::fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let name = path.strip_prefix(root).unwrap();
            let mut h = tar::Header::new_gnu();
            h.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
            if owners == Owners::Root {
                h.set_uid(0);
                h.set_gid(0);
            } else {
                h.set_uid(meta.uid() as u64);
                h.set_gid(meta.gid() as u64);
            }
            let ft = meta.file_type();
            if ft.is_symlink() {
                let target = std::fs::read_link(&path).unwrap();
                b.append_link(&mut h, name, target).unwrap();
            } else if ft.is_dir() {
                b.append_data(&mut h, name, &[][..]).unwrap();
                walk(b, root, &path, owners);
            } else if ft.is_file() {
                let f = std::fs::File::open(&path).unwrap();
                b.append_data(&mut h, name, f).unwrap();
            }
        }
    }
    let mut b = tar::Builder::new(Vec::new());
    walk(&mut b, dir, dir, owners);
    b.into_inner().unwrap()
}

/// A layer holding the tree below `dir` (see [`tar_of_dir`]).
pub fn layer_from_dir(dir: &Path, comp: Comp, owners: Owners) -> Layer {
    layer_from_tar(tar_of_dir(dir, owners), comp)
}

/// A layer with the full busybox rootfs of [`crate::build_busybox_rootfs`]
/// (every applet linked in /bin), owned by root.
pub fn busybox_rootfs_layer(comp: Comp) -> Layer {
    let dir = tempfile::tempdir().unwrap();
    crate::build_busybox_rootfs(dir.path());
    layer_from_dir(dir.path(), comp, Owners::Root)
}

fn write_blob(layout: &Path, data: &[u8]) -> String {
    let d = sha(data);
    let p = layout.join("blobs/sha256");
    std::fs::create_dir_all(&p).unwrap();
    std::fs::write(p.join(&d[7..]), data).unwrap();
    d
}

/// Write `img` as an OCI image layout directory at `layout`, its manifest
/// named `ref_name` (`org.opencontainers.image.ref.name`: a full reference
/// or a bare tag).
pub fn write_oci_layout(layout: &Path, img: &TestImage, ref_name: &str) {
    std::fs::create_dir_all(layout).unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    for l in &img.layers {
        write_blob(layout, &l.blob);
    }
    write_blob(layout, &img.config);
    let m = img.manifest(false);
    let md = write_blob(layout, &m);
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": md, "size": m.len(),
                "annotations": {"org.opencontainers.image.ref.name": ref_name}
            }]
        }))
        .unwrap(),
    )
    .unwrap();
}

/// Tar the directory `src` into the file `out` (an oci-archive from a
/// layout, or a `docker save` archive from its directory).
pub fn tar_dir(src: &Path, out: &Path) {
    let mut b = tar::Builder::new(std::fs::File::create(out).unwrap());
    b.append_dir_all(".", src).unwrap();
    b.finish().unwrap();
}
