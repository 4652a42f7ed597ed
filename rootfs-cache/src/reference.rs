//! Image references, normalised the way docker and podman do it, and
//! podman's `registries.conf` (search registries, insecure registries).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};

/// The registry Docker Hub images live on, in its canonical short form.
pub const DOCKER_HUB: &str = "docker.io";

/// A fully qualified image reference: `registry/repository(:tag|@digest)`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    /// Registry host (and port), e.g. `docker.io`, `127.0.0.1:5000`.
    pub registry: String,
    /// Repository path, e.g. `library/busybox`.
    pub repository: String,
    /// Tag; `latest` when neither tag nor digest was given.
    pub tag: Option<String>,
    /// Pinned manifest digest `sha256:<hex>`.
    pub digest: Option<String>,
}

impl ImageRef {
    /// The canonical string, e.g. `docker.io/library/busybox:latest`.
    pub fn canonical(&self) -> String {
        let mut s = format!("{}/{}", self.registry, self.repository);
        if let Some(t) = &self.tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(d);
        }
        s
    }

    /// True when the registry is on the loopback interface (always plain HTTP).
    pub fn is_loopback_registry(&self) -> bool {
        is_loopback_host(&self.registry)
    }

    pub(crate) fn to_oci(&self) -> oci_client::Reference {
        match (&self.tag, &self.digest) {
            (Some(t), Some(d)) => oci_client::Reference::with_tag_and_digest(
                self.registry.clone(),
                self.repository.clone(),
                t.clone(),
                d.clone(),
            ),
            (_, Some(d)) => oci_client::Reference::with_digest(
                self.registry.clone(),
                self.repository.clone(),
                d.clone(),
            ),
            (t, None) => oci_client::Reference::with_tag(
                self.registry.clone(),
                self.repository.clone(),
                t.clone().unwrap_or_else(|| "latest".into()),
            ),
        }
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.canonical())
    }
}

/// A reference as the user typed it, before search registries are applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedRef {
    /// Registry if the name was qualified (`quay.io/x`, `localhost/x`, `host:5000/x`).
    pub registry: Option<String>,
    /// Repository path without the registry.
    pub repository: String,
    /// Tag, if one was given.
    pub tag: Option<String>,
    /// Digest, if one was given.
    pub digest: Option<String>,
}

fn invalid(reference: &str, reason: impl Into<String>) -> Error {
    Error::InvalidReference {
        reference: reference.to_string(),
        reason: reason.into(),
    }
}

fn valid_component(c: &str) -> bool {
    // docker's path-component grammar: [a-z0-9]+ with separators ._- (and __).
    !c.is_empty()
        && c.chars()
            .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || "._-".contains(ch))
        && c.chars()
            .next()
            .is_some_and(|ch| ch.is_ascii_alphanumeric())
        && c.chars()
            .last()
            .is_some_and(|ch| ch.is_ascii_alphanumeric())
}

/// Check a `sha256:<64 hex>` digest.
pub fn validate_digest(d: &str) -> bool {
    d.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    })
}

/// Parse a reference string the way docker does, without picking a registry
/// for unqualified names.
pub fn parse(reference: &str) -> Result<ParsedRef> {
    let s = reference.trim();
    if s.is_empty() {
        return Err(invalid(reference, "empty"));
    }
    if s.contains("://") {
        return Err(invalid(
            reference,
            "no URL scheme allowed (write host/name:tag)",
        ));
    }
    let (rest, digest) = match s.split_once('@') {
        Some((r, d)) => {
            if !validate_digest(d) {
                return Err(invalid(
                    reference,
                    "the digest must be sha256: followed by 64 lowercase hex digits",
                ));
            }
            (r, Some(d.to_string()))
        }
        None => (s, None),
    };
    // A tag is after the last ':' that follows the last '/'.
    let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => {
            let t = &rest[last_slash + i + 1..];
            let ok = !t.is_empty()
                && t.len() <= 128
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
                && !t.starts_with(['.', '-']);
            if !ok {
                return Err(invalid(reference, format!("invalid tag {t:?}")));
            }
            (&rest[..last_slash + i], Some(t.to_string()))
        }
        None => (rest, None),
    };
    let (registry, repo) = match name.split_once('/') {
        Some((first, r))
            if first.contains('.')
                || first.contains(':')
                || first == "localhost"
                || first.starts_with('[') =>
        {
            (Some(first.to_string()), r.to_string())
        }
        _ => (None, name.to_string()),
    };
    if repo.is_empty() || !repo.split('/').all(valid_component) {
        return Err(invalid(
            reference,
            "the repository must be lowercase letters, digits and . _ - separated by /",
        ));
    }
    let registry = registry.map(|r| match r.as_str() {
        "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_string(),
        _ => r,
    });
    Ok(ParsedRef {
        registry,
        repository: repo,
        tag,
        digest,
    })
}

fn qualify(p: &ParsedRef, registry: &str) -> ImageRef {
    let mut repository = p.repository.clone();
    if registry == DOCKER_HUB && !repository.contains('/') {
        repository = format!("library/{repository}");
    }
    let tag = match (&p.tag, &p.digest) {
        (None, None) => Some("latest".to_string()),
        (t, _) => t.clone(),
    };
    ImageRef {
        registry: registry.to_string(),
        repository,
        tag,
        digest: p.digest.clone(),
    }
}

/// True for `localhost`, `127.0.0.0/8`, `::1` (with or without a port).
pub fn is_loopback_host(registry: &str) -> bool {
    if registry.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback()) {
        return true;
    }
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        registry
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(registry)
    };
    if host == "localhost" {
        return true;
    }
    host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// One `[[registry]]` table of registries.conf (the fields we use).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct RegistryEntry {
    /// `host[:port][/namespace]`.
    #[serde(default)]
    pub location: String,
    /// Which references this entry applies to; defaults to `location`.
    #[serde(default)]
    pub prefix: Option<String>,
    /// Reach it over plain HTTP (and skip TLS verification).
    #[serde(default)]
    pub insecure: bool,
    /// Refuse to pull from it.
    #[serde(default)]
    pub blocked: bool,
}

#[derive(Debug, Default, Deserialize)]
struct ConfV1List {
    #[serde(default)]
    registries: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
struct ConfV1 {
    #[serde(default)]
    search: ConfV1List,
    #[serde(default)]
    insecure: ConfV1List,
    #[serde(default)]
    block: ConfV1List,
}

#[derive(Debug, Default, Deserialize)]
struct ConfFile {
    #[serde(default, rename = "unqualified-search-registries")]
    unqualified_search_registries: Option<Vec<String>>,
    #[serde(default)]
    registry: Vec<RegistryEntry>,
    /// The old (v1) format.
    #[serde(default)]
    registries: Option<ConfV1>,
}

/// The parts of podman's `registries.conf` this crate honours.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistriesConf {
    /// File it came from, if any.
    pub source: Option<PathBuf>,
    /// Registries tried, in order, for unqualified names. Empty means `docker.io`.
    pub unqualified_search_registries: Vec<String>,
    /// `[[registry]]` entries.
    pub registries: Vec<RegistryEntry>,
}

impl RegistriesConf {
    /// The files looked at by default, in order: the user's
    /// (`$XDG_CONFIG_HOME/containers/registries.conf`, else
    /// `~/.config/containers/registries.conf`; [`dirs::config_dir`], which
    /// takes `$XDG_CONFIG_HOME` only when absolute, as the XDG rules say),
    /// then `/etc/containers/registries.conf`.
    pub fn default_paths() -> Vec<PathBuf> {
        let mut v = Vec::new();
        if let Some(d) = dirs::config_dir() {
            v.push(d.join("containers/registries.conf"));
        }
        v.push(PathBuf::from("/etc/containers/registries.conf"));
        v
    }

    /// Load the first existing file of `paths`, like podman (the user file,
    /// when present, replaces the system one rather than merging with it).
    /// No file at all gives the defaults (search `docker.io`).
    pub fn load(paths: &[PathBuf]) -> Result<Self> {
        for p in paths {
            match std::fs::read_to_string(p) {
                Ok(text) => return Self::parse(&text, Some(p)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(Error::Config {
                        path: p.clone(),
                        reason: e.to_string(),
                    })
                }
            }
        }
        Ok(Self::default())
    }

    /// Parse registries.conf text (v2 format, plus the v1 `[registries.*]` tables).
    pub fn parse(text: &str, path: Option<&Path>) -> Result<Self> {
        let f: ConfFile = toml::from_str(text).map_err(|e| Error::Config {
            path: path.map(Path::to_path_buf).unwrap_or_default(),
            reason: format!("not a valid registries.conf: {e}"),
        })?;
        let mut conf = RegistriesConf {
            source: path.map(Path::to_path_buf),
            unqualified_search_registries: f.unqualified_search_registries.unwrap_or_default(),
            registries: f.registry,
        };
        if let Some(v1) = f.registries {
            conf.unqualified_search_registries
                .extend(v1.search.registries);
            for r in v1.insecure.registries {
                conf.registries.push(RegistryEntry {
                    location: r,
                    insecure: true,
                    ..Default::default()
                });
            }
            for r in v1.block.registries {
                conf.registries.push(RegistryEntry {
                    location: r,
                    blocked: true,
                    ..Default::default()
                });
            }
        }
        Ok(conf)
    }

    /// The `[[registry]]` entry with the longest prefix matching `r`.
    pub fn entry_for(&self, r: &ImageRef) -> Option<&RegistryEntry> {
        let full = format!("{}/{}", r.registry, r.repository);
        self.registries
            .iter()
            .filter(|e| {
                let p = e.prefix.as_deref().unwrap_or(&e.location);
                let p = p.trim_end_matches('/');
                !p.is_empty()
                    && (full == p || full.starts_with(&format!("{p}/")) || r.registry == p)
            })
            .max_by_key(|e| e.prefix.as_deref().unwrap_or(&e.location).len())
    }

    /// Whether `r` is reached over plain HTTP: loopback, or `insecure = true`.
    pub fn is_insecure(&self, r: &ImageRef) -> bool {
        r.is_loopback_registry() || self.entry_for(r).is_some_and(|e| e.insecure)
    }

    /// Whether `r` is blocked by configuration.
    pub fn is_blocked(&self, r: &ImageRef) -> bool {
        self.entry_for(r).is_some_and(|e| e.blocked)
    }

    /// The fully qualified candidates for `reference`, in the order to try:
    /// one for a qualified name, one per search registry otherwise.
    pub fn resolve(&self, reference: &str) -> Result<Vec<ImageRef>> {
        let p = parse(reference)?;
        if let Some(reg) = &p.registry {
            return Ok(vec![qualify(&p, reg)]);
        }
        let search: Vec<&str> = if self.unqualified_search_registries.is_empty() {
            vec![DOCKER_HUB]
        } else {
            self.unqualified_search_registries
                .iter()
                .map(String::as_str)
                .collect()
        };
        Ok(search.into_iter().map(|r| qualify(&p, r)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(s: &str) -> String {
        RegistriesConf::default().resolve(s).unwrap()[0].canonical()
    }

    #[test]
    fn docker_normalisation() {
        assert_eq!(one("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(one("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(one("user/app"), "docker.io/user/app:latest");
        assert_eq!(one("index.docker.io/user/app"), "docker.io/user/app:latest");
        assert_eq!(one("quay.io/a/b:c"), "quay.io/a/b:c");
        assert_eq!(one("localhost/x"), "localhost/x:latest");
        assert_eq!(one("127.0.0.1:5000/x/y:1"), "127.0.0.1:5000/x/y:1");
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            one(&format!("busybox@{d}")),
            format!("docker.io/library/busybox@{d}")
        );
        assert_eq!(
            one(&format!("busybox:1@{d}")),
            format!("docker.io/library/busybox:1@{d}")
        );
        assert!(parse("Busybox").is_err());
        assert!(parse("busybox@sha256:abc").is_err());
        assert!(parse("http://x/y").is_err());
        assert!(parse("").is_err());
    }

    #[test]
    fn loopback() {
        for h in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:5000",
            "127.3.2.1",
            "[::1]:5000",
            "::1",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in [
            "docker.io",
            "10.0.0.1:5000",
            "quay.io:443",
            "localhost.example.com",
        ] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }

    #[test]
    fn registries_conf() {
        let c = RegistriesConf::parse(
            r#"
unqualified-search-registries = ["reg.example:5000", "docker.io"]
[[registry]]
location = "reg.example:5000"
insecure = true
[[registry]]
location = "bad.example"
blocked = true
"#,
            None,
        )
        .unwrap();
        let r = c.resolve("tool:1").unwrap();
        assert_eq!(r[0].canonical(), "reg.example:5000/tool:1");
        assert_eq!(r[1].canonical(), "docker.io/library/tool:1");
        assert!(c.is_insecure(&r[0]));
        assert!(!c.is_insecure(&r[1]));
        assert!(c.is_blocked(&c.resolve("bad.example/x").unwrap()[0]));

        let v1 = RegistriesConf::parse(
            "[registries.search]\nregistries = ['a.example']\n[registries.insecure]\nregistries = ['a.example']\n",
            None,
        )
        .unwrap();
        let r = v1.resolve("x").unwrap();
        assert_eq!(r[0].canonical(), "a.example/x:latest");
        assert!(v1.is_insecure(&r[0]));
    }

    #[test]
    fn first_existing_file_wins() {
        let d = tempfile::tempdir().unwrap();
        let user = d.path().join("user.conf");
        let sys = d.path().join("sys.conf");
        std::fs::write(&sys, "unqualified-search-registries = ['sys.example']").unwrap();
        let c = RegistriesConf::load(&[user.clone(), sys.clone()]).unwrap();
        assert_eq!(c.unqualified_search_registries, vec!["sys.example"]);
        std::fs::write(&user, "unqualified-search-registries = ['user.example']").unwrap();
        let c = RegistriesConf::load(&[user, sys]).unwrap();
        assert_eq!(c.unqualified_search_registries, vec!["user.example"]);
        let none = RegistriesConf::load(&[d.path().join("nope")]).unwrap();
        assert_eq!(none.resolve("busybox").unwrap()[0].registry, "docker.io");
    }
}
