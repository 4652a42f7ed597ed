//! Templates in path values, as podman-hpc has them: `{{uid}}`, `{{user}}`
//! and `{{env.NAME}}`, so one config file serves every user of a host.

use std::path::PathBuf;

/// Expand every `{{...}}` in `value`. An unknown template, an unset
/// variable or an unclosed `{{` is an error naming it.
pub fn expand(value: &str) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| format!("`{value}`: `{{{{` without a closing `}}}}`"))?;
        out.push_str(&substitute(after[..end].trim(), value)?);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

fn substitute(name: &str, value: &str) -> Result<String, String> {
    let uid = nix::unistd::getuid();
    match name {
        "uid" => Ok(uid.to_string()),
        "user" => match nix::unistd::User::from_uid(uid) {
            Ok(Some(u)) => Ok(u.name),
            _ => std::env::var("USER")
                .map_err(|_| format!("`{value}`: uid {uid} has no user name for {{{{user}}}}")),
        },
        _ => match name.strip_prefix("env.") {
            Some(var) if !var.is_empty() => std::env::var(var).map_err(|_| {
                format!("`{value}`: {{{{env.{var}}}}} names a variable that is not set")
            }),
            _ => Err(format!(
                "`{value}`: unknown template {{{{{name}}}}} (known: {{{{uid}}}}, {{{{user}}}}, {{{{env.NAME}}}})"
            )),
        },
    }
}

/// A clap value parser for path options: templates expanded.
pub fn parse_path(value: &str) -> Result<PathBuf, String> {
    expand(value).map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_and_refuses() {
        let uid = nix::unistd::getuid().to_string();
        assert_eq!(expand("/run/{{uid}}/x").unwrap(), format!("/run/{uid}/x"));
        assert_eq!(expand("/plain").unwrap(), "/plain");
        std::env::set_var("CW_TEMPLATE_TEST", "abc");
        assert_eq!(
            expand("{{ env.CW_TEMPLATE_TEST }}/{{uid}}").unwrap(),
            format!("abc/{uid}")
        );
        assert!(expand("{{env.CW_TEMPLATE_UNSET_X}}")
            .unwrap_err()
            .contains("CW_TEMPLATE_UNSET_X"));
        assert!(expand("{{home}}").unwrap_err().contains("unknown template"));
        assert!(expand("/a/{{uid").unwrap_err().contains("closing"));
        assert!(!expand("{{user}}").unwrap().is_empty());
    }
}
