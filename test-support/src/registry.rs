//! A real `docker-registry` (distribution 2.8) on 127.0.0.1 with its own
//! config and storage, and a bearer-token double in front of one.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A registry process; killed on drop.
pub struct Registry {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

/// A TCP port on 127.0.0.1 that nothing listens on (right now).
pub fn free_port() -> u16 {
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

    /// Number of manifest GETs of `repository` at `reference` (a tag or a
    /// digest) in the access log.
    pub fn manifest_gets(&self, repository: &str, reference: &str) -> usize {
        let log = std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default();
        let path = format!("\"GET /v2/{repository}/manifests/{reference} ");
        log.lines().filter(|l| l.contains(&path)).count()
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
