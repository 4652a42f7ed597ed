//! Registry credentials from podman/docker auth files.

use std::collections::BTreeMap;
use std::path::PathBuf;

use base64::Engine;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::reference::ImageRef;

/// Credentials for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

#[derive(Debug, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

#[derive(Debug, Deserialize)]
struct AuthFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
}

/// The auth files consulted by default, in order: `$REGISTRY_AUTH_FILE`,
/// `$XDG_RUNTIME_DIR/containers/auth.json` (when absolute: [`dirs::runtime_dir`]),
/// `$DOCKER_CONFIG/config.json` (else `~/.docker/config.json`).
pub fn default_auth_files() -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(p) = std::env::var_os("REGISTRY_AUTH_FILE").filter(|x| !x.is_empty()) {
        v.push(PathBuf::from(p));
    }
    if let Some(d) = dirs::runtime_dir() {
        v.push(d.join("containers/auth.json"));
    }
    if let Some(p) = std::env::var_os("DOCKER_CONFIG").filter(|x| !x.is_empty()) {
        v.push(PathBuf::from(p).join("config.json"));
    } else if let Some(h) = dirs::home_dir() {
        v.push(h.join(".docker/config.json"));
    }
    v
}

fn normalise_key(k: &str) -> String {
    let k = k
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/');
    let k = k
        .strip_suffix("/v1")
        .or_else(|| k.strip_suffix("/v2"))
        .unwrap_or(k);
    match k {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".to_string(),
        _ => {
            if let Some(rest) = k
                .strip_prefix("index.docker.io/")
                .or_else(|| k.strip_prefix("registry-1.docker.io/"))
            {
                format!("docker.io/{rest}")
            } else {
                k.to_string()
            }
        }
    }
}

fn decode(path: &std::path::Path, key: &str, e: &AuthEntry) -> Result<Option<Credentials>> {
    if let Some(a) = e.auth.as_deref().filter(|a| !a.is_empty()) {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(a.trim())
            .map_err(|err| Error::Config {
                path: path.to_path_buf(),
                reason: format!("the \"auth\" of {key} is not base64: {err}"),
            })?;
        let s = String::from_utf8(raw).map_err(|_| Error::Config {
            path: path.to_path_buf(),
            reason: format!("the \"auth\" of {key} is not UTF-8"),
        })?;
        let (u, p) = s.split_once(':').ok_or_else(|| Error::Config {
            path: path.to_path_buf(),
            reason: format!("the \"auth\" of {key} is not base64(user:password)"),
        })?;
        return Ok(Some(Credentials {
            username: u.to_string(),
            password: p.to_string(),
        }));
    }
    if let (Some(u), Some(p)) = (&e.username, &e.password) {
        return Ok(Some(Credentials {
            username: u.clone(),
            password: p.clone(),
        }));
    }
    Ok(None)
}

/// Find credentials for `image` in the first of `files` that has an entry
/// for it. Within a file the most specific key wins
/// (`host/ns/repo` before `host/ns` before `host`). Missing files are skipped.
pub fn lookup(files: &[PathBuf], image: &ImageRef) -> Result<Option<Credentials>> {
    let mut wanted = vec![image.registry.clone()];
    let mut acc = image.registry.clone();
    for c in image.repository.split('/') {
        acc = format!("{acc}/{c}");
        wanted.push(acc.clone());
    }
    wanted.reverse();
    for path in files {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(Error::Config {
                    path: path.clone(),
                    reason: e.to_string(),
                })
            }
        };
        let f: AuthFile = serde_json::from_str(&text).map_err(|e| Error::Config {
            path: path.clone(),
            reason: format!("not a valid auth file: {e}"),
        })?;
        let entries: BTreeMap<String, (&String, &AuthEntry)> = f
            .auths
            .iter()
            .map(|(k, v)| (normalise_key(k), (k, v)))
            .collect();
        for w in &wanted {
            if let Some((k, e)) = entries.get(w) {
                if let Some(c) = decode(path, k, e)? {
                    return Ok(Some(c));
                }
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::RegistriesConf;

    #[test]
    fn finds_most_specific_and_docker_hub_keys() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("auth.json");
        let enc = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        std::fs::write(
            &a,
            format!(
                r#"{{"auths": {{
                "reg.example:5000": {{"auth": "{}"}},
                "reg.example:5000/team": {{"auth": "{}"}},
                "https://index.docker.io/v1/": {{"auth": "{}"}}
            }}}}"#,
                enc("u1:p1"),
                enc("u2:p:2"),
                enc("hub:pw")
            ),
        )
        .unwrap();
        let conf = RegistriesConf::default();
        let files = vec![d.path().join("missing.json"), a];
        let r = &conf.resolve("reg.example:5000/other/x").unwrap()[0];
        assert_eq!(lookup(&files, r).unwrap().unwrap().username, "u1");
        let r = &conf.resolve("reg.example:5000/team/x").unwrap()[0];
        let c = lookup(&files, r).unwrap().unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("u2", "p:2"));
        let r = &conf.resolve("busybox").unwrap()[0];
        assert_eq!(lookup(&files, r).unwrap().unwrap().username, "hub");
        let r = &conf.resolve("quay.io/x").unwrap()[0];
        assert!(lookup(&files, r).unwrap().is_none());
    }
}
