//! Configuration layers, lowest to highest: built-in defaults, a TOML
//! config file, a `.env` file (Codabench's names), the environment, the
//! command line.
//!
//! Every setting has one environment variable (Codabench's name, or a
//! `COMPUTE_WORKER_*` one declared on the clap option). The `.env` and file
//! layers fill variables the environment lacks, in that order, before clap
//! parses, so clap's own flag > environment > default order completes the
//! layering and each option is parsed by one parser whatever its layer.
//! Where each value came from is remembered for `compute-worker config`.

mod aliases;
pub mod codabench;
mod file;
mod show;
pub mod template;

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Arg, ArgAction, Command};

pub use show::show;

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Default,
    File(PathBuf),
    DotEnv(PathBuf),
    Env,
    Flag,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File(p) => write!(f, "config file {}", p.display()),
            Source::DotEnv(p) => write!(f, ".env {}", p.display()),
            Source::Env => f.write_str("environment"),
            Source::Flag => f.write_str("command line"),
        }
    }
}

/// One setting: a config-file key and its environment variable.
pub struct Setting {
    /// The TOML key (`image_dir`, `broker_url`).
    pub key: String,
    pub env: String,
    pub help: String,
    pub kind: Kind,
}

pub enum Kind {
    /// An option of the command line, parsed by clap's parser for it.
    Option(Box<Arg>),
    /// One of Codabench's variables.
    Codabench(codabench::Kind, Option<&'static str>),
}

impl Setting {
    /// Check `value` with the parser the setting is read with.
    fn check(&self, value: &str) -> Result<(), String> {
        match &self.kind {
            Kind::Option(arg) => check_with_parser(arg, value),
            Kind::Codabench(kind, _) => kind.check(value),
        }
    }

    /// A value as printed: passwords and secrets replaced.
    pub fn redact(&self, value: &str) -> String {
        let secret_name = ["PASSWORD", "SECRET", "TOKEN"]
            .iter()
            .any(|s| self.env.contains(s));
        if secret_name {
            return "***".into();
        }
        match url::Url::parse(value) {
            Ok(mut u) if u.password().is_some() => {
                let _ = u.set_password(Some("***"));
                u.to_string()
            }
            _ => value.to_string(),
        }
    }
}

/// Every setting: the options of `cmd` (any subcommand) that have an
/// environment variable, then Codabench's variables.
pub fn settings(cmd: &Command) -> Vec<Setting> {
    // Built, options carry their implicit defaults (`false` for flags).
    let mut cmd = cmd.clone();
    cmd.build();
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut stack = vec![&cmd];
    while let Some(c) = stack.pop() {
        for arg in c.get_arguments() {
            let Some(env) = arg.get_env() else { continue };
            let key = arg.get_id().as_str().to_string();
            if !seen.insert(key.clone()) {
                continue;
            }
            out.push(Setting {
                key,
                env: env.to_string_lossy().into_owned(),
                help: arg
                    .get_help()
                    .map(|h| h.to_string())
                    .unwrap_or_default()
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_string(),
                kind: Kind::Option(Box::new(arg.clone())),
            });
        }
        stack.extend(c.get_subcommands().collect::<Vec<_>>().into_iter().rev());
    }
    for v in codabench::VARS {
        out.push(Setting {
            key: v.name.to_ascii_lowercase(),
            env: v.name.to_string(),
            help: v.help.to_string(),
            kind: Kind::Codabench(v.kind, v.default),
        });
    }
    out
}

/// The variable of every setting, read off `cmd` as declared (no copy, no
/// build): the same names as [`settings`] gives.
fn setting_vars(cmd: &Command) -> impl Iterator<Item = &str> {
    fn walk<'a>(c: &'a Command, out: &mut Vec<&'a str>) {
        out.extend(
            c.get_arguments()
                .filter_map(|a| a.get_env().and_then(|e| e.to_str())),
        );
        for sub in c.get_subcommands() {
            walk(sub, out);
        }
    }
    let mut out = Vec::new();
    walk(cmd, &mut out);
    out.into_iter()
        .chain(codabench::VARS.iter().map(|v| v.name))
}

/// Run `value` through a copy of `arg`'s own value parser.
fn check_with_parser(arg: &Arg, value: &str) -> Result<(), String> {
    let probe = Arg::new("value")
        .value_parser(arg.get_value_parser().clone())
        .action(ArgAction::Set)
        .allow_hyphen_values(true)
        .required(true);
    let cmd = Command::new("check").no_binary_name(true).arg(probe);
    match cmd.try_get_matches_from([value]) {
        Ok(_) => Ok(()),
        Err(e) => {
            use clap::error::{ContextKind, ContextValue};
            if let Some(source) = std::error::Error::source(&e) {
                let why = source.to_string();
                return Err(if why.contains(value) {
                    why
                } else {
                    format!("`{value}`: {why}")
                });
            }
            match e.get(ContextKind::ValidValue) {
                Some(ContextValue::Strings(valid)) => {
                    Err(format!("`{value}` is not one of: {}", valid.join(", ")))
                }
                _ => Err(format!("`{value}` is not valid")),
            }
        }
    }
}

/// What the layers below the command line set, and where from.
#[derive(Debug, Default)]
pub struct Layers {
    /// Variable name → the layer that set it (absent: not set).
    sources: BTreeMap<String, Source>,
    /// The config file read, if any.
    pub file: Option<PathBuf>,
    /// The `.env` file read, if any.
    pub dotenv: Option<PathBuf>,
    /// An alias (`LOG_LEVEL`, ...) set its setting's variable.
    aliased: bool,
}

impl Layers {
    pub fn source_of(&self, env: &str) -> Option<&Source> {
        self.sources.get(env)
    }

    /// True when a config file or `.env` set a variable of this process
    /// (clap reads each option's variable when the option is declared, so a
    /// command declared before [`load`] does not see it).
    pub fn set_variables(&self) -> bool {
        self.aliased
            || self
                .sources
                .values()
                .any(|s| matches!(s, Source::File(_) | Source::DotEnv(_)))
    }
}

/// The file options, found on the command line before clap runs (they
/// decide what clap sees in the environment).
#[derive(Debug, Default)]
pub struct Early {
    pub config: Option<PathBuf>,
    pub env_file: Option<PathBuf>,
}

impl Early {
    /// `--config`/`--env-file`, as `--x PATH` or `--x=PATH`, before `--`.
    pub fn from_args(args: impl IntoIterator<Item = OsString>) -> Self {
        let mut early = Early::default();
        let mut args = args.into_iter().skip(1);
        while let Some(a) = args.next() {
            let a = a.to_string_lossy().into_owned();
            if a == "--" {
                break;
            }
            for (name, slot) in [
                ("--config", &mut early.config),
                ("--env-file", &mut early.env_file),
            ] {
                if a == name {
                    *slot = args.next().map(Into::into);
                } else if let Some(p) = a.strip_prefix(name).and_then(|r| r.strip_prefix('=')) {
                    *slot = Some(p.into());
                }
            }
        }
        early
    }
}

/// Apply the `.env` and config-file layers to this process's environment,
/// checking every value of every layer below the command line (an error
/// names the key or variable and the file it came from). Call it before
/// any thread starts.
pub fn load(cmd: &Command, early: &Early) -> Result<Layers> {
    let mut layers = Layers::default();
    for (name, _) in std::env::vars_os() {
        layers
            .sources
            .insert(name.to_string_lossy().into_owned(), Source::Env);
    }
    layers.dotenv = load_dotenv(early.env_file.as_deref(), &mut layers.sources)?;
    let config = early
        .config
        .clone()
        .or_else(|| std::env::var_os("COMPUTE_WORKER_CONFIG").map(PathBuf::from));
    let file = file::find(config)?;
    // Every setting means a copy of the whole command line, built: most of
    // a short command's start (`exec`). Only a file or a set variable needs
    // them.
    if file.is_none() && !setting_vars(cmd).any(|v| layers.sources.contains_key(v)) {
        return Ok(layers);
    }
    let settings = settings(cmd);
    if let Some(path) = file {
        file::apply(&path, &settings, &mut layers.sources)?;
        layers.file = Some(path);
    }
    for s in &settings {
        // The file's values were checked as they were read.
        let source = match layers.sources.get(&s.env) {
            Some(Source::File(_)) | None => continue,
            Some(source) => source,
        };
        if let Ok(value) = std::env::var(&s.env) {
            if let Err(why) = s.check(&value) {
                bail!("{} (from the {source}): {why}", s.env);
            }
        }
    }
    layers.aliased = aliases::apply(&mut layers.sources)?;
    Ok(layers)
}

/// Read `.env` (the given file, else `./.env` or a parent's if there is
/// one): its variables fill what the environment lacks.
fn load_dotenv(
    given: Option<&std::path::Path>,
    sources: &mut BTreeMap<String, Source>,
) -> Result<Option<PathBuf>> {
    let path = match given {
        Some(p) => p.to_path_buf(),
        None => match find_dotenv() {
            Some(p) => p,
            None => return Ok(None),
        },
    };
    let iter = dotenvy::from_path_iter(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    for item in iter {
        let (k, v) = item.with_context(|| format!("{}: bad line", path.display()))?;
        if let std::collections::btree_map::Entry::Vacant(slot) = sources.entry(k) {
            std::env::set_var(slot.key(), v);
            slot.insert(Source::DotEnv(path.clone()));
        }
    }
    Ok(Some(path))
}

/// `.env` in the current directory or its nearest parent holding one (as
/// dotenvy looks).
fn find_dotenv() -> Option<PathBuf> {
    let cwd = std::env::current_dir().ok()?;
    cwd.ancestors()
        .map(|d| d.join(".env"))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn early_flags() {
        let args = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        let e = Early::from_args(args(&[
            "cw",
            "--config",
            "/a.toml",
            "serve",
            "--env-file=/b",
        ]));
        assert_eq!(e.config.unwrap(), PathBuf::from("/a.toml"));
        assert_eq!(e.env_file.unwrap(), PathBuf::from("/b"));
        let e = Early::from_args(args(&["cw", "exec", "--", "x", "--config", "/c"]));
        assert!(e.config.is_none());
    }
}
