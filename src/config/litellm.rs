//! Serde structs mirroring LiteLLM proxy's `config.yaml`: only the keys ai-api honours. Every
//! other key is collected by `serde_ignored` and reported once, by its YAML path, as a warning.
//! Strings stay raw here (`os.environ/NAME` is resolved in `config::load`).

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

#[derive(Debug, Default, Deserialize)]
pub struct RawConfig {
    #[serde(default)]
    pub model_list: Vec<RawModel>,
    #[serde(default)]
    pub general_settings: RawGeneralSettings,
    #[serde(default)]
    pub litellm_settings: RawLitellmSettings,
    #[serde(default)]
    pub router_settings: RawRouterSettings,
    /// LiteLLM sets these in its environment at startup; so do we, for `os.environ/` lookups.
    #[serde(default)]
    pub environment_variables: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
pub struct RawModel {
    pub model_name: String,
    pub litellm_params: RawLitellmParams,
    #[serde(default)]
    pub model_info: Option<RawModelInfo>,
}

#[derive(Debug, Deserialize)]
pub struct RawLitellmParams {
    pub model: String,
    pub api_key: Option<String>,
    pub api_base: Option<String>,
    pub api_version: Option<String>,
    pub organization: Option<String>,
    pub mock_response: Option<String>,
    pub timeout: Option<f64>,
    pub stream_timeout: Option<f64>,
    pub max_retries: Option<u32>,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub weight: Option<f64>,
    pub input_cost_per_token: Option<f64>,
    pub output_cost_per_token: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawModelInfo {
    pub id: Option<String>,
    pub input_cost_per_token: Option<f64>,
    pub output_cost_per_token: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawGeneralSettings {
    pub master_key: Option<String>,
    #[serde(default, deserialize_with = "lenient_bool")]
    pub disable_spend_logs: Option<bool>,
    #[serde(default, deserialize_with = "lenient_bool")]
    pub disable_error_logs: Option<bool>,
    pub server_root_path: Option<String>,
    pub max_request_size_mb: Option<f64>,
    #[serde(default, deserialize_with = "lenient_bool")]
    pub require_auth_for_metrics_endpoint: Option<bool>,
    pub database_url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawLitellmSettings {
    #[serde(default, deserialize_with = "lenient_bool")]
    pub log_raw_request_response: Option<bool>,
    /// LiteLLM's global request timeout (seconds).
    pub request_timeout: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawRouterSettings {
    /// Whole-call timeout for every deployment without its own (seconds).
    pub timeout: Option<f64>,
    /// Next-chunk timeout for streams (seconds).
    pub stream_timeout: Option<f64>,
}

/// YAML 1.1 booleans as PyYAML (and so LiteLLM) reads them: true/false, yes/no, on/off, any case.
fn lenient_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum B {
        Bool(bool),
        Str(String),
    }
    match Option::<B>::deserialize(d)? {
        None => Ok(None),
        Some(B::Bool(b)) => Ok(Some(b)),
        Some(B::Str(s)) => match s.to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "y" => Ok(Some(true)),
            "false" | "no" | "off" | "n" => Ok(Some(false)),
            _ => Err(serde::de::Error::custom(format!(
                "expected a boolean (true/false), got {s:?}"
            ))),
        },
    }
}
