//! An image's config as a sandbox run, shared by `exec` and job steps:
//! layers, Entrypoint + command (or Cmd), Env (with a default PATH),
//! WorkingDir, and User resolved to ids from the image itself.

use std::path::PathBuf;

use super::image_user::{self, UserError};
use crate::sandbox::RunSpec;

/// Why an image cannot be run as asked.
#[derive(Debug, thiserror::Error)]
pub enum ImageRunError {
    #[error("{image} has no Entrypoint or Cmd: give a command")]
    NoCommand { image: String },
    #[error("{image}: User `{user}`: {error}")]
    User {
        image: String,
        user: String,
        error: UserError,
    },
}

/// A run of `command` on the image `name` (`layers` top-most first):
/// `command` replaces the Cmd and follows the Entrypoint, as with
/// `docker run`; empty means the image's Cmd.
pub fn image_run(
    name: &str,
    layers: &[PathBuf],
    cfg: &rootfs_cache::ImageConfig,
    command: Vec<String>,
) -> Result<RunSpec, ImageRunError> {
    let mut argv: Vec<String> = cfg.entrypoint.clone().unwrap_or_default();
    argv.extend(if command.is_empty() {
        cfg.cmd.clone().unwrap_or_default()
    } else {
        command
    });
    if argv.is_empty() {
        return Err(ImageRunError::NoCommand { image: name.into() });
    }
    let mut run = RunSpec::new(PathBuf::new(), argv);
    run.layers = layers.to_vec();
    if let Some(env) = cfg.env.as_ref().filter(|e| !e.is_empty()) {
        run.env.clear();
        for kv in env {
            set_env_default(&mut run.env, kv);
        }
        set_env_default(&mut run.env, crate::sandbox::types::DEFAULT_PATH);
    }
    if let Some(w) = cfg.working_dir.as_ref().filter(|w| !w.is_empty()) {
        run.cwd = w.clone();
    }
    if let Some(user) = cfg.user.as_ref().filter(|u| !u.is_empty()) {
        (run.uid, run.gid) =
            image_user::resolve(user, layers).map_err(|error| ImageRunError::User {
                image: name.into(),
                user: user.clone(),
                error,
            })?;
    }
    Ok(run)
}

/// Add `KEY=value` unless `KEY` is set already (the first one wins).
fn set_env_default(env: &mut Vec<String>, kv: &str) {
    let Some((key, _)) = kv.split_once('=') else {
        return;
    };
    let prefix = format!("{key}=");
    if !env.iter().any(|e| e.starts_with(&prefix)) {
        env.push(kv.to_string());
    }
}

/// Set `KEY=value`, replacing any earlier value of `KEY`.
pub fn set_env(env: &mut Vec<String>, key: &str, value: &str) {
    let prefix = format!("{key}=");
    env.retain(|e| !e.starts_with(&prefix));
    env.push(format!("{key}={value}"));
}
