//! Secrets: read from the environment or a file, never printed.
//!
//! A [`Secret`] has no way to show its value except [`Secret::expose`]. Every secret read is
//! also registered so that [`redact`] can scrub it from any text that leaves the process
//! (log lines, journal records, error messages) even if a driver echoed it back.

use std::path::{Path, PathBuf};
use std::sync::RwLock;

use serde::{Deserialize, Serialize};

use crate::error::usage;

static KNOWN: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// What redacted text shows in place of a secret.
pub const MASK: &str = "***";

/// A secret value. `Debug` and `Display` show `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value and registers it for redaction.
    pub fn new(value: String) -> Self {
        if !value.is_empty() {
            let mut known = KNOWN.write().unwrap_or_else(|p| p.into_inner());
            if !known.contains(&value) {
                known.push(value.clone());
            }
        }
        Secret(value)
    }

    /// The value itself, for handing to a driver. Never format it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(MASK)
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(MASK)
    }
}

/// Replaces every registered secret value in `text` with `***`.
pub fn redact(text: &str) -> String {
    let known = KNOWN.read().unwrap_or_else(|p| p.into_inner());
    let mut out = text.to_string();
    for s in known.iter() {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), MASK);
        }
    }
    out
}

/// Where a secret comes from, as written in a config section: the name of an environment
/// variable or the path of a file (its content, without a trailing newline).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSource {
    /// Environment variable holding the secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    /// File holding the secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
}

impl SecretSource {
    /// Builds a source from the two optional config keys (`*_env`, `*_file`).
    pub fn from_keys(env: Option<String>, file: Option<PathBuf>) -> Self {
        SecretSource { env, file }
    }

    /// Reads the secret. `None` when no source is configured; an error naming the variable or
    /// file (never the value) when the configured source is missing or empty.
    pub fn resolve(&self, what: &str) -> anyhow::Result<Option<Secret>> {
        match (&self.env, &self.file) {
            (Some(_), Some(_)) => Err(usage(format!(
                "{what}: both an environment variable and a file are configured for the secret; keep one"
            ))),
            (Some(var), None) => match std::env::var(var) {
                Ok(v) if !v.is_empty() => Ok(Some(Secret::new(v))),
                Ok(_) => Err(usage(format!(
                    "{what}: environment variable {var} is empty; set it to the secret or remove the setting"
                ))),
                Err(_) => Err(usage(format!(
                    "{what}: environment variable {var} is not set; export it or configure a secret file instead"
                ))),
            },
            (None, Some(path)) => read_secret_file(path, what).map(Some),
            (None, None) => Ok(None),
        }
    }
}

fn read_secret_file(path: &Path, what: &str) -> anyhow::Result<Secret> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        usage(format!(
            "{what}: cannot read secret file {}: {e}; create it or fix the path",
            path.display()
        ))
    })?;
    let value = text.trim_end_matches(['\n', '\r']).to_string();
    if value.is_empty() {
        return Err(usage(format!(
            "{what}: secret file {} is empty; write the secret into it",
            path.display()
        )));
    }
    Ok(Secret::new(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_formats_and_is_redacted() {
        let s = Secret::new("hunter2-unique-xyz".into());
        assert_eq!(format!("{s} {s:?}"), "*** ***");
        assert_eq!(
            redact("login failed for hunter2-unique-xyz!"),
            "login failed for ***!"
        );
    }

    #[test]
    fn file_source_trims_newline_and_names_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "abc-secret-file\n").unwrap();
        let got = SecretSource::from_keys(None, Some(p.clone()))
            .resolve("postgres")
            .unwrap()
            .unwrap();
        assert_eq!(got.expose(), "abc-secret-file");
        let err = SecretSource::from_keys(None, Some(dir.path().join("nope")))
            .resolve("postgres")
            .unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
        assert_eq!(crate::error::exit_code(&err), 2);
    }
}
