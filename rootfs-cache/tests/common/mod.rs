//! Test support: a real `docker-registry` (distribution 2.8) on 127.0.0.1, and
//! builders for test images made from /bin/busybox.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rootfs_cache::{Progress, ProgressEvent, StoreOptions};
use sha2::{Digest, Sha256};

pub fn sha(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

/// A registry process; killed on drop.
pub struct Registry {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET `path` on 127.0.0.1:port; returns the status code.
pub fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    let line = String::from_utf8_lossy(&buf[..n]).to_string();
    line.split_whitespace().nth(1)?.parse().ok()
}

impl Registry {
    /// Start an anonymous registry.
    pub fn start() -> Registry {
        Self::start_with_auth(None)
    }

    /// Start a registry; with `Some((user, password))`, htpasswd (basic) auth.
    pub fn start_with_auth(auth: Option<(&str, &str)>) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let mut last_err = String::new();
        for _ in 0..5 {
            let port = free_port();
            let mut cfg = format!(
                "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: test-secret\n",
                dir.path().join("data").display()
            );
            if let Some((u, p)) = auth {
                let hash = bcrypt::hash(p, 4).unwrap();
                std::fs::write(dir.path().join("htpasswd"), format!("{u}:{hash}\n")).unwrap();
                cfg.push_str(&format!(
                    "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
                    dir.path().join("htpasswd").display()
                ));
            }
            std::fs::write(dir.path().join("config.yml"), cfg).unwrap();
            let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
            let mut child = Command::new("/usr/bin/docker-registry")
                .arg("serve")
                .arg(dir.path().join("config.yml"))
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .stdin(Stdio::null())
                .spawn()
                .expect("start /usr/bin/docker-registry (apt-get install docker-registry)");
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(20) {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if matches!(http_status(port, "/v2/"), Some(200) | Some(401)) {
                    return Registry { child, port, dir };
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
            last_err = std::fs::read_to_string(dir.path().join("registry.log")).unwrap_or_default();
        }
        panic!("registry did not start: {last_err}");
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The registry's own file for a blob (to tamper with it).
    pub fn blob_data_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Number of blob GETs for `digest` in the access log.
    pub fn blob_gets(&self, digest: &str) -> usize {
        let log = std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default();
        log.lines()
            .filter(|l| l.contains("\"GET /v2/") && l.contains(&format!("/blobs/{digest} ")))
            .count()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ------------------------------------------------------------------ layers

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
    let tar = tar_of(entries);
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
        let diff_ids: Vec<&str> = layers.iter().map(|l| l.diff_id.as_str()).collect();
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": arch,
            "os": "linux",
            "config": {
                "Env": ["PATH=/bin", "HELLO=world"],
                "Entrypoint": ["/bin/sh", "-c"],
                "Cmd": ["echo hi"],
                "WorkingDir": "/work",
                "User": "33:33"
            },
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

/// Store options isolated from the host's configuration files.
pub fn opts(dir: &Path) -> StoreOptions {
    StoreOptions {
        registries_conf_files: vec![dir.join("registries.conf")],
        auth_files: vec![dir.join("auth.json")],
        ..Default::default()
    }
}

/// Counts progress events.
#[derive(Default)]
pub struct Counter {
    pub started: std::sync::Mutex<Vec<String>>,
    pub cached: AtomicUsize,
    pub unpacked: AtomicUsize,
}

impl Progress for Counter {
    fn event(&self, ev: &ProgressEvent) {
        match ev {
            ProgressEvent::DownloadStarted { digest, .. } => {
                self.started.lock().unwrap().push(digest.clone())
            }
            ProgressEvent::LayerCached { .. } => {
                self.cached.fetch_add(1, Ordering::SeqCst);
            }
            ProgressEvent::LayerUnpacked { .. } => {
                self.unpacked.fetch_add(1, Ordering::SeqCst);
            }
            _ => {}
        }
    }
}

pub fn counter() -> Arc<Counter> {
    Arc::new(Counter::default())
}

/// All paths below `root` (relative), to check nothing unexpected was kept.
pub fn tree(root: &Path) -> Vec<String> {
    let mut v = Vec::new();
    fn walk(root: &Path, p: &Path, v: &mut Vec<String>) {
        if let Ok(rd) = std::fs::read_dir(p) {
            for e in rd.flatten() {
                let path = e.path();
                v.push(path.strip_prefix(root).unwrap().display().to_string());
                if e.file_type().unwrap().is_dir() {
                    walk(root, &path, v);
                }
            }
        }
    }
    walk(root, root, &mut v);
    v.sort();
    v
}

// ------------------------------------------------------- token auth double

/// A test double for a token-authenticated registry: it demands a bearer
/// token (Docker registry token flow), issues one from `/token` against
/// basic credentials, and forwards authorised requests to a real registry.
pub struct TokenProxy {
    pub port: u16,
    pub tokens_issued: Arc<AtomicUsize>,
}

impl TokenProxy {
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// Request line, lower-cased headers, body.
type Request = (String, Vec<(String, String)>, Vec<u8>);

fn read_head(s: &mut TcpStream) -> Option<Request> {
    let mut buf = Vec::new();
    let mut b = [0u8; 4096];
    let end = loop {
        let n = s.read(&mut b).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&b[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let mut body = buf[end + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let request_line = lines.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    while body.len() < len {
        let n = s.read(&mut b).ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&b[..n]);
    }
    Some((request_line, headers, body))
}

pub fn start_token_proxy(upstream: u16, user: &str, pass: &str) -> TokenProxy {
    use base64::Engine;
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let tokens_issued = Arc::new(AtomicUsize::new(0));
    let issued = tokens_issued.clone();
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    );
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut s) = conn else { continue };
            let (basic, issued) = (basic.clone(), issued.clone());
            std::thread::spawn(move || {
                let Some((rl, headers, body)) = read_head(&mut s) else {
                    return;
                };
                let auth = headers
                    .iter()
                    .find(|(k, _)| k == "authorization")
                    .map(|(_, v)| v.as_str())
                    .unwrap_or("");
                let path = rl.split_whitespace().nth(1).unwrap_or("");
                if path.starts_with("/token") {
                    if auth == basic {
                        issued.fetch_add(1, Ordering::SeqCst);
                        let b = r#"{"token":"tkn-42","access_token":"tkn-42","expires_in":300}"#;
                        let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{b}", b.len());
                    } else {
                        let _ = write!(s, "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                    }
                } else if auth == "Bearer tkn-42" {
                    let Ok(mut up) = TcpStream::connect(("127.0.0.1", upstream)) else {
                        return;
                    };
                    let mut req = format!("{rl}\r\n");
                    for (k, v) in &headers {
                        if k != "authorization" && k != "connection" {
                            req.push_str(&format!("{k}: {v}\r\n"));
                        }
                    }
                    req.push_str("connection: close\r\n\r\n");
                    let _ = up.write_all(req.as_bytes());
                    let _ = up.write_all(&body);
                    let _ = std::io::copy(&mut up, &mut s);
                } else {
                    let b = r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#;
                    let _ = write!(
                        s,
                        "HTTP/1.1 401 Unauthorized\r\nWww-Authenticate: Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"test-registry\"\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{b}",
                        b.len()
                    );
                }
            });
        }
    });
    TokenProxy {
        port,
        tokens_issued,
    }
}
