//! CDI (Container Device Interface) specs from `/etc/cdi` and
//! `/var/run/cdi`, as `nvidia-ctk cdi generate` writes them, turned into
//! rootless [`Edits`].
//!
//! Cleaning for a rootless sandbox: device nodes are bound from their
//! `hostPath` (never created; `type`/`major`/`minor` are not needed),
//! `additionalGids` are dropped (the worker's own groups are inherited),
//! hooks are dropped (libraries are reached through their SONAMEs in
//! [`super::edits::LIB_DIR`] instead of `update-ldcache`/`create-symlinks`),
//! and no device cgroup rule is ever emitted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::edits::{under, Edits};
use super::GpuError;

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    pub cdi_version: String,
    pub kind: String,
    #[serde(default)]
    pub devices: Vec<Device>,
    #[serde(default)]
    pub container_edits: ContainerEdits,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    pub name: String,
    #[serde(default)]
    pub container_edits: ContainerEdits,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerEdits {
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub device_nodes: Vec<DeviceNode>,
    #[serde(default)]
    pub mounts: Vec<Mount>,
    #[serde(default)]
    pub hooks: Vec<serde_yaml::Value>,
    #[serde(default)]
    pub additional_gids: Vec<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceNode {
    pub path: String,
    pub host_path: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mount {
    pub host_path: String,
    pub container_path: String,
    #[serde(default)]
    pub options: Vec<String>,
}

/// The specs found under a root, and the files that could not be read.
#[derive(Debug, Default)]
pub struct Registry {
    /// Later entries override earlier ones (`/var/run/cdi` over `/etc/cdi`).
    pub specs: Vec<(PathBuf, Spec)>,
    pub problems: Vec<String>,
}

pub const SPEC_DIRS: &[&str] = &["etc/cdi", "var/run/cdi"];

impl Registry {
    /// Read every `*.json`/`*.yaml` spec under `<root>/etc/cdi` and
    /// `<root>/var/run/cdi`.
    pub fn load(root: &Path) -> Registry {
        let mut reg = Registry::default();
        for dir in SPEC_DIRS {
            let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
                continue;
            };
            let mut files: Vec<PathBuf> = entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    matches!(
                        p.extension().and_then(|e| e.to_str()),
                        Some("json" | "yaml" | "yml")
                    )
                })
                .collect();
            files.sort();
            for f in files {
                match std::fs::read_to_string(&f) {
                    // YAML is a superset of JSON: one parser reads both.
                    Ok(text) => match serde_yaml::from_str::<Spec>(&text) {
                        Ok(spec) => reg.specs.push((f, spec)),
                        Err(e) => reg
                            .problems
                            .push(format!("{}: not a CDI spec: {e}", f.display())),
                    },
                    Err(e) => reg.problems.push(format!(
                        "{}: {e} (a rootless worker needs it readable: chmod 644)",
                        f.display()
                    )),
                }
            }
        }
        reg
    }

    /// The spec and device for `kind=name`, the last definition winning.
    fn find(&self, kind: &str, name: &str) -> Option<(&Path, &Spec, &Device)> {
        self.specs.iter().rev().find_map(|(p, s)| {
            (s.kind == kind)
                .then(|| s.devices.iter().find(|d| d.name == name))
                .flatten()
                .map(|d| (p.as_path(), s, d))
        })
    }

    /// Whether any spec offers devices of `kind`.
    pub fn has_kind(&self, kind: &str) -> bool {
        self.specs.iter().any(|(_, s)| s.kind == kind)
    }

    /// The device names offered for `kind`.
    pub fn names(&self, kind: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .specs
            .iter()
            .filter(|(_, s)| s.kind == kind)
            .flat_map(|(_, s)| s.devices.iter().map(|d| d.name.clone()))
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Rootless edits for the devices `names` of `kind`. `root` is the host
    /// root whose ld.so.cache gives the libraries' SONAMEs.
    pub fn edits(&self, root: &Path, kind: &str, names: &[String]) -> Result<Edits, GpuError> {
        let mut e = Edits::default();
        let mut spec_edits_done: Vec<&Path> = Vec::new();
        let mut libraries: Vec<PathBuf> = Vec::new();
        for name in names {
            let (file, spec, dev) = self.find(kind, name).ok_or_else(|| GpuError::NotInCdi {
                name: format!("{kind}={name}"),
                offered: self.names(kind),
                problems: self.problems.clone(),
            })?;
            // Spec-wide edits apply once, whichever of its devices is asked for.
            if !spec_edits_done.contains(&file) {
                spec_edits_done.push(file);
                add(&mut e, &mut libraries, file, &spec.container_edits)?;
            }
            add(&mut e, &mut libraries, file, &dev.container_edits)?;
            e.described
                .push(format!("{kind}={name} (CDI spec {})", file.display()));
        }
        // SONAME names for the spec's libraries: nvidia-ctk leaves them to
        // hooks, which do not run here.
        if !libraries.is_empty() {
            let sonames: BTreeMap<PathBuf, Vec<String>> =
                super::edits::cached_libraries(root).unwrap_or_default();
            for lib in libraries {
                let real = std::fs::canonicalize(&lib).unwrap_or(lib);
                let names = sonames.get(&real).cloned().unwrap_or_default();
                e.add_library(&real, &names);
            }
        }
        Ok(e)
    }
}

fn add(
    e: &mut Edits,
    libraries: &mut Vec<PathBuf>,
    file: &Path,
    edits: &ContainerEdits,
) -> Result<(), GpuError> {
    let stale = |path: &str| GpuError::StaleCdi {
        spec: file.to_path_buf(),
        path: PathBuf::from(path),
    };
    for node in &edits.device_nodes {
        let host = node.host_path.as_deref().unwrap_or(&node.path);
        if !Path::new(host).exists() {
            return Err(stale(host));
        }
        let destination = PathBuf::from(&node.path);
        if !e.devices.iter().any(|d| d.destination == destination) {
            e.devices.push(crate::sandbox::Bind {
                source: host.into(),
                destination,
                read_only: false,
            });
        }
    }
    for m in &edits.mounts {
        if !Path::new(&m.host_path).exists() {
            return Err(stale(&m.host_path));
        }
        let destination = PathBuf::from(&m.container_path);
        if !e.files.iter().any(|f| f.destination == destination) {
            e.files.push(crate::sandbox::Bind {
                source: m.host_path.clone().into(),
                destination,
                read_only: !m.options.iter().any(|o| o == "rw"),
            });
        }
        let file_name = Path::new(&m.host_path)
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        if file_name.starts_with("lib") && file_name.contains(".so.") {
            libraries.push(m.host_path.clone().into());
        }
    }
    for kv in &edits.env {
        // NVIDIA_VISIBLE_DEVICES=void only tells a legacy hook to stay out.
        if !kv.starts_with("NVIDIA_VISIBLE_DEVICES=") && !e.env.contains(kv) {
            e.env.push(kv.clone());
        }
    }
    if !edits.hooks.is_empty() {
        tracing::debug!(spec = %file.display(), hooks = edits.hooks.len(), "CDI hooks are not run in rootless sandboxes; libraries are found by SONAME instead");
    }
    if !edits.additional_gids.is_empty() {
        tracing::debug!(spec = %file.display(), gids = ?edits.additional_gids, "CDI additionalGids dropped: a rootless sandbox keeps the worker's own groups");
    }
    Ok(())
}

/// `<root>/etc/cdi` and `<root>/var/run/cdi`, for messages.
pub fn spec_dirs(root: &Path) -> String {
    SPEC_DIRS
        .iter()
        .map(|d| under(root, d).display().to_string())
        .collect::<Vec<_>>()
        .join(" and ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const NVIDIA_CTK: &str = r#"
cdiVersion: 0.5.0
kind: nvidia.com/gpu
devices:
  - name: "0"
    containerEdits:
      deviceNodes:
        - path: /dev/nvidia0
          hostPath: /dev/null
containerEdits:
  env: [NVIDIA_VISIBLE_DEVICES=void]
  deviceNodes:
    - {path: /dev/nvidiactl, hostPath: /dev/zero}
  hooks:
    - {hookName: createContainer, path: /usr/bin/nvidia-cdi-hook, args: [nvidia-cdi-hook, update-ldcache]}
  additionalGids: [44]
  mounts:
    - {hostPath: /etc/hostname, containerPath: /etc/hostname, options: [ro, nosuid, nodev, rbind, rprivate]}
"#;

    fn registry(text: &str) -> Registry {
        Registry {
            specs: vec![(
                "/etc/cdi/nvidia.yaml".into(),
                serde_yaml::from_str(text).unwrap(),
            )],
            problems: vec![],
        }
    }

    #[test]
    fn an_nvidia_ctk_spec_becomes_rootless_binds() {
        let r = registry(NVIDIA_CTK);
        let e = r
            .edits(Path::new("/"), "nvidia.com/gpu", &["0".into()])
            .unwrap();
        let devs: Vec<(String, String)> = e
            .devices
            .iter()
            .map(|d| {
                (
                    d.source.display().to_string(),
                    d.destination.display().to_string(),
                )
            })
            .collect();
        assert_eq!(
            devs,
            [
                ("/dev/zero".into(), "/dev/nvidiactl".into()),
                ("/dev/null".into(), "/dev/nvidia0".into())
            ]
        );
        assert!(e.devices.iter().all(|d| !d.read_only));
        assert!(e.files.iter().all(|f| f.read_only));
        assert!(e.env.is_empty(), "{:?}", e.env);
    }

    #[test]
    fn unknown_names_and_stale_specs_are_clear_errors() {
        let r = registry(NVIDIA_CTK);
        let err = r
            .edits(Path::new("/"), "nvidia.com/gpu", &["3".into()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("nvidia.com/gpu=3") && err.contains("0"),
            "{err}"
        );
        let stale = NVIDIA_CTK.replace("/dev/null", "/dev/nvidia-gone");
        let err = registry(&stale)
            .edits(Path::new("/"), "nvidia.com/gpu", &["0".into()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/dev/nvidia-gone") && err.contains("nvidia-ctk cdi generate"),
            "{err}"
        );
    }
}
