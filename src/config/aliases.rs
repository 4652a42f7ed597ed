//! Codabench's names for settings this worker names otherwise: `LOG_LEVEL`,
//! `SERIALIZED`, `BROKER_SSL_CA_CERTS`. An alias fills its setting's own
//! variable when that one is unset, so the setting is parsed once, by its
//! own parser; the own name wins when both are set.

use std::collections::BTreeMap;

use anyhow::{anyhow, Result};

use super::codabench::to_bool;
use super::Source;

/// (alias, the variable it stands for).
pub const ALIASES: &[(&str, &str)] = &[
    ("LOG_LEVEL", "COMPUTE_WORKER_LOG"),
    ("SERIALIZED", "COMPUTE_WORKER_LOG_FORMAT"),
    ("BROKER_SSL_CA_CERTS", "COMPUTE_WORKER_BROKER_CA_FILE"),
];

/// The value of `target` that alias `name` set to `value` gives.
fn translate(name: &str, value: &str) -> Result<String> {
    match name {
        "SERIALIZED" => {
            let json = to_bool(value).map_err(|why| anyhow!("{name}: {why}"))?;
            Ok(if json { "json" } else { "human" }.to_string())
        }
        // Codabench lower-cases it; tracing's filter wants lower case.
        "LOG_LEVEL" => Ok(value.trim().to_ascii_lowercase()),
        _ => Ok(value.to_string()),
    }
}

/// Fill each unset target from its alias. Returns true when a variable was
/// set. Call it before any thread starts (it sets variables).
pub fn apply(sources: &mut BTreeMap<String, Source>) -> Result<bool> {
    let mut set = false;
    for (alias, target) in ALIASES {
        let Some(value) = std::env::var(alias).ok().filter(|v| !v.is_empty()) else {
            continue;
        };
        if std::env::var_os(target).is_some_and(|v| !v.is_empty()) {
            tracing::debug!("{alias} ignored: {target} is set");
            continue;
        }
        let translated = translate(alias, &value)?;
        std::env::set_var(target, translated);
        let source = sources.get(*alias).cloned().unwrap_or(Source::Env);
        sources.insert(target.to_string(), source);
        set = true;
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::translate;

    #[test]
    fn serialized_and_log_level_translate() {
        assert_eq!(translate("SERIALIZED", "True").unwrap(), "json");
        assert_eq!(translate("SERIALIZED", "0").unwrap(), "human");
        assert!(translate("SERIALIZED", "yes")
            .unwrap_err()
            .to_string()
            .contains("SERIALIZED"));
        assert_eq!(translate("LOG_LEVEL", " DEBUG").unwrap(), "debug");
    }
}
