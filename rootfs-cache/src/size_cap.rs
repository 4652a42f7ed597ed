//! The cap on an image's size checked before pulling it: the sum of the
//! compressed layer sizes its (platform) manifest lists, known before any
//! blob is fetched. What the layers unpack to is bounded separately, while
//! they unpack (see `bounds`).

use crate::error::{Error, Result};
use crate::manifest::Descriptor;

/// Refuse `image` when its `layers` add up to more than `cap` bytes.
pub(crate) fn check(image: &str, layers: &[Descriptor], cap: Option<u64>) -> Result<()> {
    let Some(cap) = cap else { return Ok(()) };
    let size = layers
        .iter()
        .fold(0u64, |sum, l| sum.saturating_add(l.size));
    if size > cap {
        return Err(Error::OverSizeCap {
            image: image.to_string(),
            size,
            layers: layers.len(),
            cap,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(size: u64) -> Descriptor {
        Descriptor {
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            digest: format!("sha256:{}", "0".repeat(64)),
            size,
            platform: None,
            annotations: None,
        }
    }

    #[test]
    fn the_cap_counts_every_layer_and_is_not_transient() {
        let layers = [layer(600), layer(500)];
        assert!(check("img", &layers, None).is_ok());
        assert!(check("img", &layers, Some(1100)).is_ok());
        let e = check("img", &layers, Some(1099)).unwrap_err();
        assert!(!e.is_transient());
        let msg = e.to_string();
        assert!(
            msg.starts_with("img: the image is 1.1 KiB (1100 bytes)"),
            "{msg}"
        );
        assert!(msg.contains("cap of 1.1 KiB (1099 bytes)"), "{msg}");
        assert_eq!(crate::size::exact_size(5), "5 bytes");
        assert_eq!(
            crate::size::exact_size(3 << 30),
            "3.0 GiB (3221225472 bytes)"
        );
    }
}
