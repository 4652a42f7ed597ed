//! `COMPETITION_ALLOW_IMAGE_PULL=False` (Codabench #2486): jobs use images
//! already in the cache (pulled or imported earlier) and never pull.

use super::image::Images;

/// The failure text of Codabench's worker (protocol v1.27 §8), exactly.
pub fn not_local_message(image: &str) -> String {
    format!(
        "Docker image pull failed: Pull for {image} failed! COMPETITION_ALLOW_IMAGE_PULL is set \
         to False, make sure the image is available locally"
    )
}

/// `Ok` when `reference` can run without a pull.
pub fn check_local(images: &Images, reference: &str) -> Result<(), String> {
    match images {
        Images::Rootfs(_) => Ok(()),
        Images::Store(store) => match store.get(reference) {
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::error!(
                    image = reference,
                    error = %e,
                    "COMPETITION_ALLOW_IMAGE_PULL is False and the image is not in the cache: \
                     `compute-worker pull` or `compute-worker import` it first"
                );
                Err(not_local_message(reference))
            }
        },
    }
}
