//! TEMPORARY: replaced by the real redaction engine before commit.
use serde::Deserialize;
use std::sync::LazyLock;
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedactConfig {
    #[serde(default)]
    pub rules: Vec<toml::Value>,
    #[serde(default)]
    pub allow: Vec<String>,
}
#[derive(Debug, thiserror::Error)]
pub enum RedactError {
    #[error("x")]
    X,
}
#[derive(Debug, Clone, Default)]
pub struct Redactor;
static B: LazyLock<Redactor> = LazyLock::new(|| Redactor);
impl Redactor {
    pub fn new(_c: &RedactConfig) -> Result<Self, RedactError> {
        Ok(Redactor)
    }
    pub fn builtin() -> &'static Redactor {
        &B
    }
    pub fn redact_string(&self, t: &mut String) -> bool {
        if t.contains("AKIA") {
            *t = t.replace("AKIAIOSFODNN7EXAMPLE", "[REDACTED:aws]");
            true
        } else {
            false
        }
    }
}
