//! The TOML config file: where it is, and how its keys become settings.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::{Kind, Setting, Source};

/// The config file to read: the one given (it must exist), else the user's
/// (`$XDG_CONFIG_HOME/compute-worker/config.toml`), else the host's
/// (`/etc/compute-worker/config.toml`), else none.
pub fn find(given: Option<PathBuf>) -> Result<Option<PathBuf>> {
    if let Some(p) = given {
        if !p.is_file() {
            bail!("config file {} does not exist", p.display());
        }
        return Ok(Some(p));
    }
    Ok(candidates().into_iter().find(|p| p.is_file()))
}

fn candidates() -> Vec<PathBuf> {
    dirs::config_dir()
        .map(|d| d.join("compute-worker/config.toml"))
        .into_iter()
        .chain([PathBuf::from("/etc/compute-worker/config.toml")])
        .collect()
}

/// Read `path` and set each of its settings the environment (or `.env`)
/// does not already set.
pub fn apply(
    path: &Path,
    settings: &[Setting],
    sources: &mut BTreeMap<String, Source>,
) -> Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("{} is not valid TOML", path.display()))?;
    for (key, value) in table {
        let Some(setting) = settings.iter().find(|s| s.key == key) else {
            bail!(
                "{}: unknown key `{key}`{}",
                path.display(),
                hint(&key, settings)
            );
        };
        let text = match (&value, &setting.kind) {
            (toml::Value::String(s), _) => Some(s.clone()),
            (toml::Value::Integer(i), _) => Some(i.to_string()),
            (toml::Value::Float(f), _) => Some(f.to_string()),
            (toml::Value::Boolean(b), Kind::Codabench(kind, _)) => kind.from_toml_bool(*b),
            (toml::Value::Boolean(b), Kind::Option(_)) => Some(b.to_string()),
            (toml::Value::Array(items), Kind::Option(arg))
                if arg.get_value_delimiter().is_some() =>
            {
                let delimiter = arg.get_value_delimiter().unwrap_or(':');
                match list_text(items, delimiter) {
                    Ok(text) => Some(text),
                    Err(why) => bail!("{}: bad value for `{key}`: {why}", path.display()),
                }
            }
            _ => bail!(
                "{}: `{key}` must be a string, a number or a boolean",
                path.display()
            ),
        };
        let Some(text) = text else { continue };
        if let Err(why) = setting.check(&text) {
            bail!("{}: bad value for `{key}`: {why}", path.display());
        }
        if let std::collections::btree_map::Entry::Vacant(slot) = sources.entry(setting.env.clone())
        {
            std::env::set_var(&setting.env, text);
            slot.insert(Source::File(path.to_path_buf()));
        }
    }
    Ok(())
}

/// A list setting's array as its variable holds it: the strings joined by
/// `delimiter` (which none of them may contain).
fn list_text(items: &[toml::Value], delimiter: char) -> Result<String, String> {
    let mut parts = Vec::with_capacity(items.len());
    for item in items {
        match item {
            toml::Value::String(s) if !s.contains(delimiter) => parts.push(s.as_str()),
            toml::Value::String(s) => {
                return Err(format!(
                    "{s:?} contains `{delimiter}`, which separates the items"
                ))
            }
            _ => return Err("the items must be strings".into()),
        }
    }
    Ok(parts.join(&delimiter.to_string()))
}

/// `; did you mean x?` for a key written as its variable, or in capitals.
fn hint(key: &str, settings: &[Setting]) -> String {
    let lower = key.to_ascii_lowercase();
    match settings
        .iter()
        .find(|s| s.key == lower || s.env.eq_ignore_ascii_case(key))
    {
        Some(s) => format!("; did you mean `{}`?", s.key),
        None => "; `compute-worker config` lists the keys".into(),
    }
}
