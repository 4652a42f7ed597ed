//! Program commands: `metadata.yaml` / `metadata` lookup, the legacy
//! `$token` substitution table, and argv splitting.

use std::path::Path;

use super::beneath::{BeneathError, Cap};

/// Which program a command belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgramKind {
    /// `program/`: the submission (prediction) or scoring program.
    Program,
    /// `ingestion_program/`.
    Ingestion,
}

/// What a program directory's metadata says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Metadata {
    /// Neither `metadata.yaml` nor `metadata` exists. For
    /// [`ProgramKind::Program`] this is a result submission: copy the
    /// directory to the output. For ingestion it is an error.
    Missing,
    /// The file exists but has no usable `command` (not a mapping, YAML
    /// error, empty command).
    NoCommand,
    Command(String),
}

/// Read `dir/metadata.yaml`, else `dir/metadata`, and take its `command`:
/// a regular file of at most `cap`, never through a link.
pub fn read_metadata(dir: &Path, cap: Cap) -> Result<Metadata, BeneathError> {
    for name in ["metadata.yaml", "metadata"] {
        if let Some(data) = super::beneath::read(dir, Path::new(name), cap)? {
            let text = String::from_utf8_lossy(&data);
            let v: Result<serde_yaml::Value, _> = serde_yaml::from_str(&text);
            return Ok(match v {
                Ok(serde_yaml::Value::Mapping(m)) => match m.get("command") {
                    Some(serde_yaml::Value::String(c)) if !c.trim().is_empty() => {
                        Metadata::Command(c.clone())
                    }
                    _ => Metadata::NoCommand,
                },
                _ => Metadata::NoCommand,
            });
        }
    }
    Ok(Metadata::Missing)
}

/// The participant's message for a program directory without metadata
/// (`name`: "ingestion program", "scoring program").
pub fn missing_metadata(name: &str) -> String {
    format!("The {name} directory is missing 'metadata.yaml/metadata'")
}

/// ... and for metadata without a usable `command`.
pub fn missing_command(name: &str) -> String {
    format!("The {name} directory is missing 'command' in its metadata (or the metadata is not valid YAML)")
}

/// The legacy substitution table, in the Python worker's order, as
/// (token, replacement) pairs for this program.
pub fn substitutions(
    kind: ProgramKind,
    is_scoring: bool,
    ingestion_only_during_scoring: bool,
) -> [(&'static str, &'static str); 9] {
    [
        (
            "$input",
            if kind == ProgramKind::Ingestion {
                "/app/input_data"
            } else {
                "/app/input"
            },
        ),
        ("$output", "/app/output"),
        (
            "$program",
            if ingestion_only_during_scoring && is_scoring {
                "/app/ingestion_program"
            } else {
                "/app/program"
            },
        ),
        ("$ingestion_program", "/app/program"),
        ("$hidden", "/app/input/ref"),
        ("$shared", "/app/shared"),
        ("$submission_program", "/app/ingested_program"),
        ("$tmp", "/app/output"),
        (
            "$predictions",
            if is_scoring {
                "/app/input/res"
            } else {
                "/app/output"
            },
        ),
    ]
}

/// Apply [`substitutions`] by plain sequential substring replacement.
pub fn substitute(
    command: &str,
    kind: ProgramKind,
    is_scoring: bool,
    ingestion_only_during_scoring: bool,
) -> String {
    substitutions(kind, is_scoring, ingestion_only_during_scoring)
        .iter()
        .fold(command.to_string(), |c, (tok, rep)| c.replace(tok, rep))
}

/// Split a command into argv with POSIX shell quoting (as docker-py's
/// `shlex.split`); no shell is involved.
pub fn split_argv(command: &str) -> Result<Vec<String>, String> {
    match shlex::split(command) {
        Some(v) if !v.is_empty() => Ok(v),
        Some(_) => Err("the command in metadata is empty".into()),
        None => Err(format!(
            "cannot split the command `{command}`: unbalanced quotes or a trailing backslash"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAP: Cap = Cap {
        bytes: 1 << 20,
        setting: "TEST",
    };

    #[test]
    fn metadata_lookup_order_and_command() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(read_metadata(d.path(), CAP).unwrap(), Metadata::Missing);
        std::fs::write(d.path().join("metadata"), "command: python b.py\n").unwrap();
        assert_eq!(
            read_metadata(d.path(), CAP).unwrap(),
            Metadata::Command("python b.py".into())
        );
        std::fs::write(d.path().join("metadata.yaml"), "command: python a.py\n").unwrap();
        assert_eq!(
            read_metadata(d.path(), CAP).unwrap(),
            Metadata::Command("python a.py".into())
        );
        std::fs::write(d.path().join("metadata.yaml"), "description: x\n").unwrap();
        assert_eq!(read_metadata(d.path(), CAP).unwrap(), Metadata::NoCommand);
        std::fs::write(d.path().join("metadata.yaml"), ": : [\n").unwrap();
        assert_eq!(read_metadata(d.path(), CAP).unwrap(), Metadata::NoCommand);
    }

    #[test]
    fn legacy_tokens_in_order() {
        let c = "python $ingestion_program/ingestion.py $input $output $ingestion_program $submission_program";
        assert_eq!(
            substitute(c, ProgramKind::Ingestion, false, false),
            "python /app/program/ingestion.py /app/input_data /app/output /app/program /app/ingested_program"
        );
        assert_eq!(
            substitute(
                "python $program/score.py $input $output",
                ProgramKind::Program,
                true,
                false
            ),
            "python /app/program/score.py /app/input /app/output"
        );
        assert_eq!(
            substitute(
                "$program/x $hidden $shared $tmp $predictions",
                ProgramKind::Program,
                true,
                true
            ),
            "/app/ingestion_program/x /app/input/ref /app/shared /app/output /app/input/res"
        );
        assert_eq!(
            substitute("$predictions", ProgramKind::Program, false, false),
            "/app/output"
        );
    }

    #[test]
    fn argv_honours_quotes() {
        assert_eq!(
            split_argv("python  -c 'print(1 + 1)' \"a b\"").unwrap(),
            vec!["python", "-c", "print(1 + 1)", "a b"]
        );
        assert!(split_argv("python 'oops").is_err());
        assert!(split_argv("   ").is_err());
    }
}
