//! An image of many tiny layers: each layer is unpacked by its own sandbox
//! process in the worker's held user namespace, and a fast unpack answers
//! right after its launcher's `Cloned`. Every answer must be taken as the
//! answer to its own request (this failed now and then with "the sandbox
//! process stopped talking: unexpected Ok(Unpacked { … })").

mod sandbox_env;

use sandbox_env::{chown_tree, env, user_dir};
use test_support::{file, layer, write_oci_layout, Comp, TestImage};

const LAYERS: usize = 1500;
const ROUNDS: usize = 10;

#[test]
fn an_image_of_1500_one_file_layers_imports_ten_times_in_a_row() {
    let e = env();
    let base = user_dir("many-layers", 0o755);
    let layers = (0..LAYERS)
        .map(|i| {
            layer(
                &[file(&format!("f{i}"), format!("{i}").as_bytes())],
                Comp::None,
            )
        })
        .collect();
    let layout = base.join("layout");
    write_oci_layout(&layout, &TestImage::new(layers), "localhost/many/layers:1");
    chown_tree(&base, e.uid, e.gid);
    let layout = layout.to_string_lossy().into_owned();
    for round in 0..ROUNDS {
        // A fresh cache each round: every layer is unpacked again.
        let images = base.join(format!("images-{round}"));
        let r = e.images_run(&images, &["import", &layout]);
        assert_eq!(r.code(), 0, "round {round}: {}\n{}", r.stdout(), r.stderr());
        assert!(
            r.stdout().starts_with("localhost/many/layers:1 sha256:"),
            "{}",
            r.stdout()
        );
        let _ = std::fs::remove_dir_all(&images);
    }
}
