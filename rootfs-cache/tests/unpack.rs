//! `unpack_layer` on its own (no registry): the function the worker's
//! user-namespace helper calls in another process.

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt};

use common::*;
use rootfs_cache::{unpack_layer, unpack_layer_from, Error, Ownership, UnpackOptions};

fn opts() -> UnpackOptions {
    UnpackOptions {
        image: "test/image:1".into(),
        layer: "sha256:layer".into(),
        ..Default::default()
    }
}

fn write(dir: &std::path::Path, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join(format!("blob-{}", &sha(bytes)[7..19]));
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn pax_xattrs_fifos_big_uids_and_report() {
    let d = tempfile::tempdir().unwrap();
    let mut b = tar::Builder::new(Vec::new());
    // PAX records: an xattr to keep, a forged overlay xattr to drop, a big uid.
    b.append_pax_extensions([
        ("SCHILY.xattr.user.keep", &b"yes"[..]),
        ("SCHILY.xattr.user.overlay.opaque", &b"y"[..]),
        ("uid", &b"100000"[..]),
        ("gid", &b"100001"[..]),
    ])
    .unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_path("dir/file").unwrap();
    h.set_size(3);
    h.set_mode(0o4755);
    h.set_mtime(1_500_000_000);
    h.set_cksum();
    b.append(&h, &b"abc"[..]).unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_path("pipe").unwrap();
    h.set_entry_type(tar::EntryType::Fifo);
    h.set_size(0);
    h.set_mode(0o600);
    h.set_cksum();
    b.append(&h, &[][..]).unwrap();
    let tar = b.into_inner().unwrap();
    let blob = write(d.path(), &tar);
    let dest = d.path().join("out");
    let o = UnpackOptions {
        expected_diff_id: Some(sha(&tar)),
        ..opts()
    };
    let r = unpack_layer(&blob, "application/vnd.oci.image.layer.v1.tar", &dest, &o).unwrap();
    assert_eq!(r.diff_id, sha(&tar));
    assert_eq!((r.files, r.bytes), (1, 3));
    let f = dest.join("dir/file");
    assert_eq!(
        xattr::get(&f, "user.keep").unwrap().as_deref(),
        Some(&b"yes"[..])
    );
    assert_eq!(
        xattr::get(&f, "user.overlay.opaque").unwrap(),
        None,
        "forged overlay xattr dropped"
    );
    assert!(dest
        .join("pipe")
        .symlink_metadata()
        .unwrap()
        .file_type()
        .is_fifo());
    let m = f.metadata().unwrap();
    assert_eq!(m.mtime(), 1_500_000_000);
    if nix::unistd::geteuid().is_root() {
        assert_eq!((m.uid(), m.gid()), (100000, 100001));
        assert_eq!(m.mode() & 0o7777, 0o755, "setuid dropped, the rest kept");
    }
}

#[test]
fn whiteout_replaces_what_an_earlier_entry_wrote_and_owners_can_be_skipped() {
    let d = tempfile::tempdir().unwrap();
    let tar = tar_of(&[
        E::Dir("a", 33),
        E::File("a/x".into(), b"x".to_vec(), 0o644, 33),
        file(".wh.a", b""),
    ]);
    let blob = write(d.path(), &tar);
    let dest = d.path().join("out");
    let o = UnpackOptions {
        ownership: Ownership::Skip,
        ..opts()
    };
    let r = unpack_layer(&blob, "", &dest, &o).unwrap();
    assert_eq!(r.whiteouts, 1);
    let m = dest.join("a").symlink_metadata().unwrap();
    assert!(m.file_type().is_char_device() && m.rdev() == 0);
    let own = dest.metadata().unwrap();
    assert_eq!(
        own.uid(),
        nix::unistd::geteuid().as_raw(),
        "Ownership::Skip"
    );
}

#[test]
fn diff_id_mismatch_and_bad_media_types_are_errors() {
    let d = tempfile::tempdir().unwrap();
    let tar = tar_of(&[file("f", b"1")]);
    let blob = write(d.path(), &tar);
    let o = UnpackOptions {
        expected_diff_id: Some(sha(b"something else")),
        ..opts()
    };
    let e = unpack_layer(&blob, "", &d.path().join("o1"), &o).unwrap_err();
    assert!(matches!(e, Error::DigestMismatch { .. }), "{e}");
    let e = unpack_layer(
        &blob,
        "application/vnd.oci.image.layer.v1.tar+gzip+encrypted",
        &d.path().join("o2"),
        &opts(),
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("unsupported layer media type"),
        "{e}"
    );
    let e = unpack_layer(&d.path().join("missing"), "", &d.path().join("o3"), &opts()).unwrap_err();
    assert!(e.to_string().contains("missing"), "{e}");
}

#[test]
fn symlinked_parents_are_refused_even_inside_the_layer() {
    // Conservative rule: no entry is written through any symlink.
    let d = tempfile::tempdir().unwrap();
    let tar = tar_of(&[
        E::Dir("usr", 0),
        E::Dir("usr/lib", 0),
        E::Symlink("lib", "usr/lib"),
        file("lib/libc.so", b"elf"),
    ]);
    let blob = write(d.path(), &tar);
    let e = unpack_layer(&blob, "", &d.path().join("o"), &opts()).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, Error::UnsafeEntry { .. }), "{msg}");
    assert!(
        msg.contains("test/image:1") && msg.contains("lib/libc.so") && msg.contains("symlink"),
        "{msg}"
    );
    assert!(!d.path().join("o/usr/lib/libc.so").exists());
}

#[test]
fn gzip_and_zstd_detected_from_content_whatever_the_media_type_says() {
    let d = tempfile::tempdir().unwrap();
    for comp in [Comp::Gzip, Comp::Zstd, Comp::None] {
        let l = layer(&[file("hello", b"hi")], comp);
        let blob = write(d.path(), &l.blob);
        let dest = d.path().join(format!("{comp:?}"));
        let o = UnpackOptions {
            expected_diff_id: Some(l.diff_id.clone()),
            ..opts()
        };
        let r = unpack_layer(
            &blob,
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
            &dest,
            &o,
        )
        .unwrap();
        assert_eq!(r.diff_id, l.diff_id);
        assert_eq!(std::fs::read(dest.join("hello")).unwrap(), b"hi");
    }
}

#[test]
fn a_directory_replaced_by_a_symlink_or_a_file_is_not_written_through() {
    // The unpacker remembers the directories it has made; an entry that
    // replaces one must make it forget them, or a later entry would be
    // written through the new symlink.
    let d = tempfile::tempdir().unwrap();
    let outside = d.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    for (name, replacement, reason) in [
        // From <dest>/a/b, ../../outside is the directory next to <dest>.
        ("symlink", E::Symlink("a/b", "../../outside"), "symlink"),
        ("file", file("a/b", b"now a file"), "not a directory"),
    ] {
        let tar = tar_of(&[
            E::Dir("a", 0),
            E::Dir("a/b", 0),
            file("a/b/first", b"1"),
            replacement,
            file("a/b/evil", b"escaped"),
        ]);
        let blob = write(d.path(), &tar);
        let e = unpack_layer(&blob, "", &d.path().join(name), &opts()).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, Error::UnsafeEntry { .. }), "{name}: {msg}");
        assert!(
            msg.contains("a/b/evil") && msg.contains(reason),
            "{name}: {msg}"
        );
        assert!(!outside.join("evil").exists(), "{name}: written outside");
    }
}

#[test]
fn a_layer_streamed_from_a_pipe_unpacks_like_a_file() {
    // The store feeds the unpacker from the download through a pipe.
    let l = layer(
        &[
            E::Dir("big", 0),
            file("big/data", &vec![7u8; 3 << 20]),
            file("big/small", b"s"),
        ],
        Comp::Gzip,
    );
    let d = tempfile::tempdir().unwrap();
    let (rx, tx) = nix::unistd::pipe().unwrap();
    let blob = l.blob.clone();
    let feeder = std::thread::spawn(move || {
        let mut tx = std::fs::File::from(tx);
        for piece in blob.chunks(1000) {
            std::io::Write::write_all(&mut tx, piece).unwrap();
        }
    });
    let o = UnpackOptions {
        expected_diff_id: Some(l.diff_id.clone()),
        ..opts()
    };
    let r = unpack_layer_from(std::fs::File::from(rx), "", &d.path().join("o"), &o).unwrap();
    feeder.join().unwrap();
    assert_eq!(r.diff_id, l.diff_id);
    assert_eq!(r.files, 2);
    assert_eq!(r.bytes, (3 << 20) + 1);
    assert_eq!(
        std::fs::read(d.path().join("o/big/data")).unwrap(),
        vec![7u8; 3 << 20]
    );
}

#[test]
fn file_modes_are_exact_whatever_the_umask() {
    // Files are created with their final mode when the umask allows it, and
    // chmod-ed otherwise: both must end with the layer's mode.
    let d = tempfile::tempdir().unwrap();
    let modes = [
        0o644, 0o755, 0o666, 0o777, 0o600, 0o000, 0o444, 0o2755, 0o1777,
    ];
    let entries: Vec<E> = modes
        .iter()
        .map(|m| E::File(format!("f{m:o}"), b"x".to_vec(), *m, 0))
        .collect();
    let blob = write(d.path(), &tar_of(&entries));
    let dest = d.path().join("o");
    unpack_layer(&blob, "", &dest, &opts()).unwrap();
    for m in modes {
        let got = dest.join(format!("f{m:o}")).metadata().unwrap().mode() & 0o7777;
        // No setuid or setgid file leaves a layer; the sticky bit stays.
        assert_eq!(got, m & !0o6000, "mode of f{m:o}");
    }
}
