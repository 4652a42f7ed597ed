//! Registry pushes with oci-client (plain HTTP, as for a loopback registry).

use crate::image::{sha, TestImage};

pub fn client() -> oci_client::Client {
    oci_client::Client::new(oci_client::client::ClientConfig {
        protocol: oci_client::client::ClientProtocol::Http,
        ..Default::default()
    })
}

fn oref(host: &str, repo_tag: &str) -> oci_client::Reference {
    format!("{host}/{repo_tag}").parse().unwrap()
}

/// Push blobs + manifest; returns the manifest digest.
pub async fn push_with(
    host: &str,
    repo_tag: &str,
    img: &TestImage,
    docker: bool,
    auth: &oci_client::secrets::RegistryAuth,
) -> String {
    let c = client();
    let r = oref(host, repo_tag);
    c.store_auth_if_needed(r.resolve_registry(), auth).await;
    for l in &img.layers {
        c.push_blob(&r, l.blob.clone(), &l.digest()).await.unwrap();
    }
    c.push_blob(&r, img.config.clone(), &sha(&img.config))
        .await
        .unwrap();
    let m = img.manifest(docker);
    let ct = if docker {
        "application/vnd.docker.distribution.manifest.v2+json"
    } else {
        "application/vnd.oci.image.manifest.v1+json"
    };
    c.push_manifest_raw(&r, m.clone(), ct.parse().unwrap())
        .await
        .unwrap();
    sha(&m)
}

pub async fn push(host: &str, repo_tag: &str, img: &TestImage) -> String {
    push_with(
        host,
        repo_tag,
        img,
        false,
        &oci_client::secrets::RegistryAuth::Anonymous,
    )
    .await
}

/// Push an OCI index over already pushed manifests (by digest, with arch).
pub async fn push_index(host: &str, repo_tag: &str, entries: &[(String, usize, &str)]) -> String {
    let c = client();
    let r = oref(host, repo_tag);
    let manifests: Vec<_> = entries
        .iter()
        .map(|(d, size, arch)| {
            serde_json::json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": d, "size": size,
                "platform": {"architecture": arch, "os": "linux"}
            })
        })
        .collect();
    let idx = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests
    }))
    .unwrap();
    c.push_manifest_raw(
        &r,
        idx.clone(),
        "application/vnd.oci.image.index.v1+json".parse().unwrap(),
    )
    .await
    .unwrap();
    sha(&idx)
}
