//! The variables of Codabench's compute worker `.env`, read with the
//! meaning Codabench gives them. They are settings like the others: a TOML
//! key (the lower-case name), a `.env` line or the environment.

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::broker::url::{use_ssl_from_env, BrokerUrl};
use crate::job::bundle_cache::max_bytes_from_gb;
use crate::site::UrlRewrite;

/// How Codabench reads a variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Free text.
    Text,
    /// A URL whose password is never printed.
    SecretUrl,
    /// On when set to any non-empty value (`BROKER_USE_SSL`).
    AnyValue,
    /// A boolean as [`to_bool`] reads it (`USE_GPU`, ...).
    Bool,
    /// A path; templates allowed.
    Path,
    /// A number of gigabytes.
    Gigabytes,
    /// `FROM|TO`.
    Rewrite,
    /// Accepted and not needed (Docker's settings).
    Ignored,
}

/// One Codabench variable.
pub struct Var {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
    /// What applies when it is not set.
    pub default: Option<&'static str>,
}

pub const VARS: &[Var] = &[
    Var {
        name: "BROKER_URL",
        kind: Kind::SecretUrl,
        help: "the site's RabbitMQ (pyamqp://user:pass@host:port/vhost)",
        default: None,
    },
    Var {
        name: "BROKER_USE_SSL",
        kind: Kind::AnyValue,
        help: "TLS to the broker, not verified unless --verify-broker-tls",
        default: None,
    },
    Var {
        name: "HOST_DIRECTORY",
        kind: Kind::Path,
        help: "job directories, data/ (read-only /app/data) and the bundle cache",
        default: Some("$XDG_DATA_HOME/compute-worker/codabench"),
    },
    Var {
        name: "USE_GPU",
        kind: Kind::Bool,
        help: "give jobs GPUs",
        default: None,
    },
    Var {
        name: "GPU_DEVICE",
        kind: Kind::Text,
        help: "which GPUs (all, an index, GPU-<uuid>, a CDI name)",
        default: None,
    },
    Var {
        name: "COMPUTE_WORKER_NO_CLEANUP",
        kind: Kind::Bool,
        help: "keep job directories",
        default: Some("False"),
    },
    Var {
        name: "CODALAB_IGNORE_CLEANUP_STEP",
        kind: Kind::Bool,
        help: "old name of COMPUTE_WORKER_NO_CLEANUP (either keeps them)",
        default: None,
    },
    Var {
        name: "HUMAN_IN_THE_LOOP",
        kind: Kind::Bool,
        help: "scoring waits for an operator's `compute-worker hitl approve|reject`",
        default: Some("False"),
    },
    Var {
        name: "COMPETITION_ALLOW_IMAGE_PULL",
        kind: Kind::Bool,
        help: "False: cached or imported images only, never pull",
        default: Some("True"),
    },
    Var {
        name: "COMPUTE_WORKER_DISABLE_LOG_UPLOAD",
        kind: Kind::Bool,
        help: "no live program output, no log uploads: logs stay in the job directory",
        default: Some("False"),
    },
    Var {
        name: "COMPUTE_WORKER_DISABLE_PREDICTION_UPLOAD",
        kind: Kind::Bool,
        help: "v1.27 tasks: no prediction upload; scoring takes it from this host (both steps must run here); keeps job directories",
        default: Some("False"),
    },
    Var {
        name: "MAX_CACHE_DIR_SIZE_GB",
        kind: Kind::Gigabytes,
        help: "bound of the input/reference data cache",
        default: Some("10"),
    },
    Var {
        name: "COMPETITION_CONTAINER_NETWORK_DISABLED",
        kind: Kind::Bool,
        help: "programs get no network",
        default: None,
    },
    Var {
        name: "COMPETITION_CONTAINER_HTTP_PROXY",
        kind: Kind::SecretUrl,
        help: "http_proxy inside the programs",
        default: None,
    },
    Var {
        name: "COMPETITION_CONTAINER_HTTPS_PROXY",
        kind: Kind::SecretUrl,
        help: "https_proxy inside the programs",
        default: None,
    },
    Var {
        name: "WORKER_BUNDLE_URL_REWRITE",
        kind: Kind::Rewrite,
        help: "FROM|TO prefix rewrite of bundle URLs",
        default: None,
    },
    Var {
        name: "LOG_LEVEL",
        kind: Kind::Text,
        help: "alias of COMPUTE_WORKER_LOG (which wins when both are set)",
        default: None,
    },
    Var {
        name: "SERIALIZED",
        kind: Kind::Bool,
        help: "alias of COMPUTE_WORKER_LOG_FORMAT: True is json, False human",
        default: None,
    },
    Var {
        name: "BROKER_SSL_CA_CERTS",
        kind: Kind::Path,
        help: "alias of COMPUTE_WORKER_BROKER_CA_FILE",
        default: None,
    },
    Var {
        name: "CONTAINER_ENGINE_EXECUTABLE",
        kind: Kind::Ignored,
        help: "not needed: no container engine",
        default: None,
    },
    Var {
        name: "CONTAINER_SOCKET",
        kind: Kind::Ignored,
        help: "not needed: no container engine",
        default: None,
    },
];

impl Kind {
    /// Check a value as Codabench would read it, for a clear error early.
    pub fn check(self, value: &str) -> Result<(), String> {
        match self {
            Kind::Text | Kind::AnyValue | Kind::Ignored => Ok(()),
            // Empty is unset, as for every variable here.
            Kind::Bool if value.is_empty() => Ok(()),
            Kind::Bool => to_bool(value).map(drop),
            Kind::SecretUrl if value.is_empty() => Ok(()),
            Kind::SecretUrl => url::Url::parse(value)
                .map(drop)
                .map_err(|e| format!("not a URL ({e})")),
            Kind::Path => super::template::expand(value).map(drop),
            Kind::Gigabytes => match value.trim().parse::<f64>() {
                Ok(g) if g.is_finite() && g >= 0.0 => Ok(()),
                _ => Err(format!("`{value}` is not a number of gigabytes")),
            },
            Kind::Rewrite if value.is_empty() || UrlRewrite::parse(value).is_some() => Ok(()),
            Kind::Rewrite => Err(format!("`{value}` is not FROM|TO")),
        }
    }

    /// A TOML value as the variable's text; `None` leaves it unset (a TOML
    /// `false` for a variable that any value turns on).
    pub fn from_toml_bool(self, b: bool) -> Option<String> {
        match (self, b) {
            (Kind::AnyValue, false) => None,
            (_, b) => Some(b.to_string()),
        }
    }
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// A boolean as Codabench's `Settings.to_bool` reads it: `true`, `True`,
/// `TRUE`, `1` or `false`, `False`, `FALSE`, `0`, surrounding whitespace
/// stripped. Unlike Codabench, any other value is an error, not a silent
/// "truthy" string.
pub fn to_bool(value: &str) -> Result<bool, String> {
    match value.trim() {
        "true" | "True" | "TRUE" | "1" => Ok(true),
        "false" | "False" | "FALSE" | "0" => Ok(false),
        other => Err(format!(
            "`{other}` is not a boolean: use true/True/TRUE/1 or false/False/FALSE/0"
        )),
    }
}

/// Variable `name` as a boolean; `default` when unset or empty.
pub fn bool_var(name: &str, default: bool) -> Result<bool> {
    match var(name) {
        None => Ok(default),
        Some(v) => to_bool(&v).map_err(|why| anyhow::anyhow!("{name}: {why}")),
    }
}

/// The Codabench settings `serve` runs with.
#[derive(Debug, Clone)]
pub struct Codabench {
    pub broker_url: Option<String>,
    pub broker_use_ssl: bool,
    pub host_directory: PathBuf,
    pub use_gpu: bool,
    pub gpu_device: Option<String>,
    /// `COMPUTE_WORKER_NO_CLEANUP` or `CODALAB_IGNORE_CLEANUP_STEP`.
    pub keep_job_dirs: bool,
    pub human_in_the_loop: bool,
    pub allow_image_pull: bool,
    pub disable_log_upload: bool,
    pub disable_prediction_upload: bool,
    pub max_cache_bytes: u64,
    pub network_disabled: bool,
    pub http_proxy: String,
    pub https_proxy: String,
    pub bundle_url_rewrite: Option<UrlRewrite>,
}

impl Codabench {
    /// Read from the environment (where the file and `.env` layers put
    /// their values too).
    pub fn from_env() -> Result<Self> {
        for ignored in ["CONTAINER_ENGINE_EXECUTABLE", "CONTAINER_SOCKET"] {
            if var(ignored).is_some() {
                tracing::info!("{ignored} is set but not needed: this worker runs sandboxes itself, with no container engine");
            }
        }
        let host_directory = match var("HOST_DIRECTORY") {
            Some(d) => super::template::parse_path(&d)
                .map_err(anyhow::Error::msg)
                .context("HOST_DIRECTORY")?,
            None => default_host_directory(),
        };
        Ok(Codabench {
            broker_url: var("BROKER_URL"),
            broker_use_ssl: use_ssl_from_env(var("BROKER_USE_SSL").as_deref()),
            host_directory,
            use_gpu: bool_var("USE_GPU", false)?,
            gpu_device: var("GPU_DEVICE"),
            keep_job_dirs: bool_var("COMPUTE_WORKER_NO_CLEANUP", false)?
                || bool_var("CODALAB_IGNORE_CLEANUP_STEP", false)?,
            human_in_the_loop: bool_var("HUMAN_IN_THE_LOOP", false)?,
            allow_image_pull: bool_var("COMPETITION_ALLOW_IMAGE_PULL", true)?,
            disable_log_upload: bool_var("COMPUTE_WORKER_DISABLE_LOG_UPLOAD", false)?,
            disable_prediction_upload: bool_var("COMPUTE_WORKER_DISABLE_PREDICTION_UPLOAD", false)?,
            max_cache_bytes: max_bytes_from_gb(var("MAX_CACHE_DIR_SIZE_GB").as_deref()),
            network_disabled: bool_var("COMPETITION_CONTAINER_NETWORK_DISABLED", false)?,
            http_proxy: var("COMPETITION_CONTAINER_HTTP_PROXY").unwrap_or_default(),
            https_proxy: var("COMPETITION_CONTAINER_HTTPS_PROXY").unwrap_or_default(),
            bundle_url_rewrite: var("WORKER_BUNDLE_URL_REWRITE")
                .and_then(|v| UrlRewrite::parse(&v)),
        })
    }

    /// The broker to consume from.
    pub fn broker(&self, verify_tls: bool) -> Result<BrokerUrl> {
        let raw = self.broker_url.as_deref().context(
            "BROKER_URL is not set: give it in the environment, in .env or as broker_url in the config file \
             (pyamqp://user:pass@host:5672/vhost)",
        )?;
        BrokerUrl::parse(raw, self.broker_use_ssl, verify_tls)
            .context("BROKER_URL is not a valid broker URL")
    }
}

/// `$XDG_DATA_HOME/compute-worker/codabench` (beside the image cache).
pub fn default_host_directory() -> PathBuf {
    crate::host::default_image_dir()
        .parent()
        .map(|p| p.join("codabench"))
        .unwrap_or_else(|| PathBuf::from("/tmp/codabench"))
}

#[cfg(test)]
mod tests {
    use super::to_bool;

    #[test]
    fn to_bool_reads_codabench_spellings() {
        for t in ["true", "True", "TRUE", "1", " true ", "\t1\n"] {
            assert_eq!(to_bool(t), Ok(true), "{t:?}");
        }
        for f in ["false", "False", "FALSE", "0", " False "] {
            assert_eq!(to_bool(f), Ok(false), "{f:?}");
        }
    }

    #[test]
    fn to_bool_refuses_everything_else() {
        // Codabench reads these as a truthy string; here they are errors.
        for bad in [
            "", "yes", "no", "on", "off", "tRuE", "2", "t", "true1", "\"true\"",
        ] {
            let err = to_bool(bad).unwrap_err();
            assert!(err.contains("not a boolean"), "{bad:?}: {err}");
        }
    }
}
