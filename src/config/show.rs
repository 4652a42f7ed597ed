//! `compute-worker config`: the effective configuration, each value with
//! the layer it came from, secrets redacted.

use clap::parser::ValueSource;
use clap::{ArgMatches, Command};
use serde::Serialize;

use super::{settings, Kind, Layers, Setting, Source};

#[derive(Debug, Serialize)]
struct Row {
    key: String,
    env: String,
    /// `None`: not set, and no default.
    value: Option<String>,
    source: String,
}

/// Print the configuration `matches` (the `config` subcommand, which takes
/// `serve`'s options) and `layers` give.
pub fn show(cmd: &Command, layers: &Layers, matches: &ArgMatches, json: bool) -> i32 {
    let rows: Vec<Row> = settings(cmd)
        .iter()
        .map(|s| {
            let (value, source) = effective(s, layers, matches);
            Row {
                key: s.key.clone(),
                env: s.env.clone(),
                value: value.map(|v| s.redact(&v)),
                source: source.to_string(),
            }
        })
        .collect();
    if json {
        let doc = serde_json::json!({
            "config_file": layers.file,
            "env_file": layers.dotenv,
            "settings": rows,
        });
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
        return 0;
    }
    let none = "none".to_string();
    let shown = |p: &Option<std::path::PathBuf>| {
        p.as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| none.clone())
    };
    println!("config file: {}", shown(&layers.file));
    println!(".env file:   {}", shown(&layers.dotenv));
    let width = |f: fn(&Row) -> usize| rows.iter().map(f).max().unwrap_or(0);
    let (kw, ew) = (width(|r| r.key.len()), width(|r| r.env.len()));
    let vw = width(|r| r.value.as_deref().unwrap_or("-").len()).min(60);
    println!("{:kw$}  {:ew$}  {:vw$}  SOURCE", "KEY", "VARIABLE", "VALUE");
    for r in &rows {
        let value = r.value.as_deref().unwrap_or("-");
        println!("{:kw$}  {:ew$}  {value:vw$}  {}", r.key, r.env, r.source);
    }
    0
}

/// The value in force and its layer.
fn effective(s: &Setting, layers: &Layers, matches: &ArgMatches) -> (Option<String>, Source) {
    let from_flag = matches.ids().any(|id| id.as_str() == s.key)
        && matches.value_source(&s.key) == Some(ValueSource::CommandLine);
    if from_flag {
        let raw = matches.get_raw(&s.key).map(|vals| {
            vals.map(|v| v.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(",")
        });
        return (raw.map(|v| expanded(s, v)), Source::Flag);
    }
    if let (Ok(v), Some(source)) = (std::env::var(&s.env), layers.source_of(&s.env)) {
        return (Some(expanded(s, v)), source.clone());
    }
    let default = match &s.kind {
        Kind::Option(arg) => arg
            .get_default_values()
            .first()
            .map(|v| v.to_string_lossy().into_owned()),
        Kind::Codabench(_, default) => default.map(str::to_string),
    };
    (default, Source::Default)
}

/// Path values as they will be used: templates expanded.
fn expanded(s: &Setting, value: String) -> String {
    let is_path = match &s.kind {
        Kind::Option(arg) => {
            arg.get_value_parser().type_id() == clap::builder::ValueParser::path_buf().type_id()
        }
        Kind::Codabench(kind, _) => *kind == super::codabench::Kind::Path,
    };
    match is_path.then(|| super::template::expand(&value)) {
        Some(Ok(v)) if v != value => format!("{v} ({value})"),
        _ => value,
    }
}
