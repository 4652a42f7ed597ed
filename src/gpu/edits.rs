//! The edits that give a sandbox its GPUs, shaped like CDI container edits:
//! device nodes bound read-write, driver files bound read-only, and
//! environment changes. No hooks, no device cgroup rules, no extra groups:
//! all three break or mean nothing in a rootless sandbox.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::sandbox::{Bind, RunSpec};

use super::discovery::{Gpu, Inventory};
use super::{ldcache, GpuError};

/// Where driver libraries and binaries go inside the sandbox: official CUDA
/// images already list these in `ld.so.conf.d`, `LD_LIBRARY_PATH` and `PATH`.
pub const LIB_DIR: &str = "/usr/local/nvidia/lib64";
pub const BIN_DIR: &str = "/usr/local/nvidia/bin";

/// What one sandbox gets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Edits {
    /// Device nodes, bound read-write and without `nodev`.
    pub devices: Vec<Bind>,
    /// Driver libraries, binaries and firmware, bound read-only.
    pub files: Vec<Bind>,
    /// Variables to set (`K=V`), from a CDI spec.
    pub env: Vec<String>,
    /// Prepended to `LD_LIBRARY_PATH`.
    pub library_path: Vec<String>,
    /// Appended to `PATH`.
    pub path: Vec<String>,
    /// The GPUs, as job logs name them.
    pub described: Vec<String>,
}

impl Edits {
    /// Apply to a run: binds, devices and environment. The image's
    /// `LD_LIBRARY_PATH` is kept after ours, its `PATH` before ours.
    pub fn apply(&self, run: &mut RunSpec) {
        run.devices.extend(self.devices.iter().cloned());
        run.binds.extend(self.files.iter().cloned());
        for kv in &self.env {
            if let Some((k, v)) = kv.split_once('=') {
                if k == "LD_LIBRARY_PATH" {
                    merge_path(&mut run.env, k, &[v.to_string()], true);
                } else {
                    run.env
                        .retain(|e| e.split_once('=').map(|(ek, _)| ek) != Some(k));
                    run.env.push(kv.clone());
                }
            }
        }
        merge_path(&mut run.env, "LD_LIBRARY_PATH", &self.library_path, true);
        merge_path(&mut run.env, "PATH", &self.path, false);
    }

    fn add_device(&mut self, host: PathBuf, container: &str) {
        let destination = PathBuf::from(container);
        if !self.devices.iter().any(|d| d.destination == destination) {
            self.devices.push(Bind {
                source: host,
                destination,
                read_only: false,
            });
        }
    }

    fn add_file(&mut self, host: &Path, container: PathBuf) {
        if !self.files.iter().any(|f| f.destination == container) {
            self.files.push(Bind {
                source: host.to_path_buf(),
                destination: container,
                read_only: true,
            });
        }
    }

    /// Bind a library into [`LIB_DIR`] under its file name and each SONAME
    /// (plus `libcuda.so`, which many programs open), and put the directory
    /// on the loader's path. The same host file is bound several times:
    /// the rootfs is never modified, so no symlinks.
    pub fn add_library(&mut self, real: &Path, sonames: &[String]) {
        let Some(file) = real.file_name().map(|f| f.to_string_lossy().into_owned()) else {
            return;
        };
        let mut names = vec![file.clone()];
        names.extend(sonames.iter().cloned());
        if file.starts_with("libcuda.so.") {
            names.push("libcuda.so".into());
        }
        for n in names {
            self.add_file(real, Path::new(LIB_DIR).join(n));
        }
        if !self.library_path.iter().any(|p| p == LIB_DIR) {
            self.library_path.push(LIB_DIR.into());
        }
    }
}

/// Prepend (or append) `parts` to the `key` variable of `env`.
fn merge_path(env: &mut Vec<String>, key: &str, parts: &[String], prepend: bool) {
    if parts.is_empty() {
        return;
    }
    let prefix = format!("{key}=");
    let pos = env.iter().position(|e| e.starts_with(&prefix));
    let old: Vec<String> = pos
        .map(|i| env[i][prefix.len()..].to_string())
        .filter(|v| !v.is_empty())
        .map(|v| v.split(':').map(str::to_string).collect())
        .unwrap_or_default();
    let new: Vec<&String> = parts.iter().filter(|p| !old.contains(p)).collect();
    let mut all: Vec<&String> = Vec::new();
    if prepend {
        all.extend(new);
        all.extend(old.iter());
    } else {
        all.extend(old.iter());
        all.extend(new);
    }
    let joined = all.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(":");
    let value = format!("{prefix}{joined}");
    match pos {
        Some(i) => env[i] = value,
        None => env.push(value),
    }
}

/// Driver capabilities (`NVIDIA_DRIVER_CAPABILITIES`): which library groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities(Vec<String>);

const ALL_CAPS: &[&str] = &["compute", "utility", "video", "graphics", "ngx"];

impl Capabilities {
    /// From a run's environment; unset or empty means `compute,utility`.
    pub fn from_env(env: &[String]) -> Capabilities {
        let value = env
            .iter()
            .rev()
            .find_map(|e| e.strip_prefix("NVIDIA_DRIVER_CAPABILITIES="))
            .unwrap_or("")
            .trim();
        if value.is_empty() {
            return Capabilities(vec!["compute".into(), "utility".into()]);
        }
        let list: Vec<String> = value.split(',').map(|c| c.trim().to_string()).collect();
        if list.iter().any(|c| c == "all") {
            return Capabilities(ALL_CAPS.iter().map(|c| c.to_string()).collect());
        }
        Capabilities(list)
    }

    pub fn has(&self, cap: &str) -> bool {
        self.0.iter().any(|c| c == cap)
    }

    /// Library base names of these capabilities (libnvidia-container's list).
    fn libraries(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        for (cap, libs) in LIBRARIES {
            if self.has(cap) {
                out.extend_from_slice(libs);
            }
        }
        out
    }

    fn binaries(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.has("utility") {
            out.extend(["nvidia-smi", "nvidia-debugdump", "nvidia-persistenced"]);
        }
        if self.has("compute") {
            out.extend(["nvidia-cuda-mps-control", "nvidia-cuda-mps-server"]);
        }
        out
    }
}

const LIBRARIES: &[(&str, &[&str])] = &[
    (
        "utility",
        &["libnvidia-ml.so", "libnvidia-cfg.so", "libnvidia-nscq.so"],
    ),
    (
        "compute",
        &[
            "libcuda.so",
            "libcudadebugger.so",
            "libnvidia-opencl.so",
            "libnvidia-gpucomp.so",
            "libnvidia-ptxjitcompiler.so",
            "libnvidia-fatbinaryloader.so",
            "libnvidia-allocator.so",
            "libnvidia-compiler.so",
            "libnvidia-pkcs11.so",
            "libnvidia-pkcs11-openssl3.so",
            "libnvidia-nvvm.so",
            "libnvidia-tileiras.so",
        ],
    ),
    (
        "video",
        &[
            "libvdpau_nvidia.so",
            "libnvidia-encode.so",
            "libnvidia-opticalflow.so",
            "libnvcuvid.so",
        ],
    ),
    (
        "graphics",
        &[
            "libnvidia-eglcore.so",
            "libnvidia-glcore.so",
            "libnvidia-tls.so",
            "libnvidia-glsi.so",
            "libnvidia-fbc.so",
            "libnvidia-ifr.so",
            "libnvidia-rtcore.so",
            "libnvoptix.so",
            "libGLX_nvidia.so",
            "libEGL_nvidia.so",
            "libGLESv2_nvidia.so",
            "libGLESv1_CM_nvidia.so",
            "libnvidia-glvkspirv.so",
            "libnvidia-cbl.so",
        ],
    ),
    ("ngx", &["libnvidia-ngx.so"]),
];

/// `/x/y` under `root`.
pub fn under(root: &Path, path: impl AsRef<Path>) -> PathBuf {
    let p = path.as_ref();
    root.join(p.strip_prefix("/").unwrap_or(p))
}

/// Real library files in `<root>/etc/ld.so.cache` and their SONAMEs,
/// keyed by the canonical host path.
pub fn cached_libraries(root: &Path) -> Result<BTreeMap<PathBuf, Vec<String>>, GpuError> {
    let mut libs: BTreeMap<PathBuf, Vec<String>> = BTreeMap::new();
    for e in ldcache::read(root)? {
        if let Ok(real) = std::fs::canonicalize(under(root, &e.path)) {
            let sonames = libs.entry(real).or_default();
            if !sonames.contains(&e.soname) {
                sonames.push(e.soname);
            }
        }
    }
    Ok(libs)
}

/// Generate the edits for `gpus` from the driver's inventory and the files
/// under `root` (the host's `/`), as `nvidia-ctk cdi generate` would, but
/// laid out for a rootless sandbox.
pub fn generate(
    root: &Path,
    inventory: &Inventory,
    gpus: &[Gpu],
    caps: &Capabilities,
) -> Result<Edits, GpuError> {
    let mut e = Edits::default();
    let node = |name: &str| under(root, format!("dev/{name}"));
    let required = |name: &str, fix: &str| {
        let p = node(name);
        if p.exists() {
            Ok(p)
        } else {
            Err(GpuError::MissingNode {
                path: p,
                fix: fix.to_string(),
            })
        }
    };
    e.add_device(
        required(
            "nvidiactl",
            "load the driver (`nvidia-modprobe -c0` or `nvidia-smi` as root)",
        )?,
        "/dev/nvidiactl",
    );
    if caps.has("compute") {
        e.add_device(required("nvidia-uvm", UVM_FIX)?, "/dev/nvidia-uvm");
    }
    if node("nvidia-uvm-tools").exists() {
        e.add_device(node("nvidia-uvm-tools"), "/dev/nvidia-uvm-tools");
    }
    if (caps.has("graphics") || caps.has("display")) && node("nvidia-modeset").exists() {
        e.add_device(node("nvidia-modeset"), "/dev/nvidia-modeset");
    }
    for g in gpus {
        let name = format!("nvidia{}", g.minor);
        e.add_device(
            required(&name, "run `nvidia-smi` once as root to create the node")?,
            &format!("/dev/{name}"),
        );
        e.described.push(g.describe());
    }

    // Libraries of exactly this driver version: leftovers of another
    // version are never mounted.
    let suffix = format!(".so.{}", inventory.driver_version);
    let allowed = caps.libraries();
    let mut found_cuda = false;
    for (real, sonames) in cached_libraries(root)? {
        let file = real
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Some(base) = file.strip_suffix(&suffix) else {
            continue;
        };
        if !allowed.iter().any(|a| *a == format!("{base}.so")) {
            continue;
        }
        found_cuda |= base == "libcuda";
        e.add_library(&real, &sonames);
    }
    if caps.has("compute") && !found_cuda {
        return Err(GpuError::NoLibcuda {
            version: inventory.driver_version.clone(),
            cache: under(root, "etc/ld.so.cache"),
        });
    }

    for bin in caps.binaries() {
        let found = ["usr/bin", "usr/sbin", "bin", "sbin", "usr/local/bin"]
            .iter()
            .map(|d| root.join(d).join(bin))
            .find(|p| p.is_file());
        if let Some(p) = found {
            e.add_file(&p, Path::new(BIN_DIR).join(bin));
            if !e.path.iter().any(|p| p == BIN_DIR) {
                e.path.push(BIN_DIR.into());
            }
        }
    }

    // GSP firmware, when the driver has some.
    let fw = format!("lib/firmware/nvidia/{}", inventory.driver_version);
    if let Ok(entries) = std::fs::read_dir(root.join(&fw)) {
        for f in entries.flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            if name.ends_with(".bin") {
                e.add_file(&f.path(), Path::new("/").join(&fw).join(name));
            }
        }
    }
    Ok(e)
}

pub const UVM_FIX: &str = "it is created on demand by a privileged program: run \
`nvidia-modprobe -u -c0` as root (or enable nvidia-persistenced) after each boot";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_path_is_prepended_and_path_appended() {
        let mut run = RunSpec::new("/r", vec!["true".into()]);
        run.env = vec![
            "PATH=/usr/bin".into(),
            "LD_LIBRARY_PATH=/usr/local/cuda/lib64".into(),
        ];
        let mut e = Edits::default();
        e.add_library(Path::new("/h/libcuda.so.1.2"), &["libcuda.so.1".into()]);
        e.path.push(BIN_DIR.into());
        e.apply(&mut run);
        assert!(run
            .env
            .contains(&"LD_LIBRARY_PATH=/usr/local/nvidia/lib64:/usr/local/cuda/lib64".into()));
        assert!(run
            .env
            .contains(&"PATH=/usr/bin:/usr/local/nvidia/bin".into()));
        let dests: Vec<_> = run.binds.iter().map(|b| b.destination.clone()).collect();
        for d in ["libcuda.so.1.2", "libcuda.so.1", "libcuda.so"] {
            assert!(dests.contains(&Path::new(LIB_DIR).join(d)), "{dests:?}");
        }
        assert!(run.binds.iter().all(|b| b.read_only));
    }

    #[test]
    fn capabilities_default_to_compute_and_utility() {
        let c = Capabilities::from_env(&[]);
        assert!(c.has("compute") && c.has("utility") && !c.has("graphics"));
        let c = Capabilities::from_env(&["NVIDIA_DRIVER_CAPABILITIES=utility".into()]);
        assert!(!c.has("compute"));
        let c = Capabilities::from_env(&["NVIDIA_DRIVER_CAPABILITIES=all".into()]);
        assert!(c.has("graphics") && c.has("video"));
    }
}
