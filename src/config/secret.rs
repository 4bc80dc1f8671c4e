//! Values that may come from the environment (`os.environ/NAME`), and secrets that never show
//! in `Debug`, logs or errors: an error names the variable, never its value.

use std::fmt;

const ENV_PREFIX: &str = "os.environ/";

/// A secret string (a provider key, the master key). `Debug` and `Display` redact it; it has no
/// `Serialize`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The plain value, for the one place that must send it (an upstream header).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A provider credential as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// A key, literal or read from the environment.
    Key(Secret),
    /// The config names an environment variable that is unset: an error only when called.
    Missing { var: String },
    /// No key configured and none needed (e.g. a local Ollama).
    None,
}

/// Resolves `os.environ/NAME` through `lookup`; returns `Err(NAME)` when it is unset or empty.
/// Plain strings are returned as they are.
pub fn resolve_env(raw: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    match raw.strip_prefix(ENV_PREFIX) {
        Some(var) => match lookup(var) {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(var.to_string()),
        },
        None => Ok(raw.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_in_debug() {
        let s = Secret::new("sk-very-secret");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        let c = Credential::Key(s);
        assert!(!format!("{c:?}").contains("very-secret"));
    }

    #[test]
    fn env_references_resolve_or_name_the_variable() {
        let lookup = |k: &str| (k == "SET").then(|| "value".to_string());
        assert_eq!(resolve_env("os.environ/SET", &lookup), Ok("value".into()));
        assert_eq!(
            resolve_env("os.environ/UNSET", &lookup),
            Err("UNSET".into())
        );
        assert_eq!(resolve_env("literal", &lookup), Ok("literal".into()));
    }
}
