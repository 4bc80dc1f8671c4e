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
    /// LiteLLM's name for the provider client's retries; both spellings are read.
    pub num_retries: Option<u32>,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub weight: Option<f64>,
    pub max_parallel_requests: Option<u32>,
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

/// Declares a settings struct with its own fields plus the routing keys LiteLLM accepts in both
/// `router_settings` and `litellm_settings` (written once here, so the two cannot drift), and
/// `routing()` to take those keys out as a [`RawRouting`].
macro_rules! with_routing_keys {
    ($(#[$m:meta])* pub struct $name:ident { $($(#[$fm:meta])* pub $f:ident: $t:ty,)* }) => {
        $(#[$m])*
        #[derive(Debug, Default, Deserialize)]
        pub struct $name {
            $($(#[$fm])* pub $f: $t,)*
            pub num_retries: Option<u32>,
            /// Minimum seconds to wait before a retry.
            pub retry_after: Option<f64>,
            pub allowed_fails: Option<u32>,
            /// Seconds a failing deployment is skipped.
            pub cooldown_time: Option<f64>,
            /// `[{"group": ["fallback", ...]}, ...]`
            pub fallbacks: Option<Vec<BTreeMap<String, Vec<String>>>>,
            pub context_window_fallbacks: Option<Vec<BTreeMap<String, Vec<String>>>>,
            pub content_policy_fallbacks: Option<Vec<BTreeMap<String, Vec<String>>>>,
            pub default_fallbacks: Option<Vec<String>>,
        }

        impl $name {
            /// The routing keys of this section.
            pub fn routing(&mut self) -> RawRouting {
                RawRouting {
                    num_retries: self.num_retries.take(),
                    retry_after: self.retry_after.take(),
                    allowed_fails: self.allowed_fails.take(),
                    cooldown_time: self.cooldown_time.take(),
                    fallbacks: self.fallbacks.take(),
                    context_window_fallbacks: self.context_window_fallbacks.take(),
                    content_policy_fallbacks: self.content_policy_fallbacks.take(),
                    default_fallbacks: self.default_fallbacks.take(),
                }
            }
        }
    };
}

/// The routing keys, taken out of either section.
#[derive(Debug, Default)]
pub struct RawRouting {
    pub num_retries: Option<u32>,
    pub retry_after: Option<f64>,
    pub allowed_fails: Option<u32>,
    pub cooldown_time: Option<f64>,
    pub fallbacks: Option<Vec<BTreeMap<String, Vec<String>>>>,
    pub context_window_fallbacks: Option<Vec<BTreeMap<String, Vec<String>>>>,
    pub content_policy_fallbacks: Option<Vec<BTreeMap<String, Vec<String>>>>,
    pub default_fallbacks: Option<Vec<String>>,
}

impl RawRouting {
    /// `self`'s keys where set, else `other`'s.
    pub fn or(self, other: RawRouting) -> RawRouting {
        RawRouting {
            num_retries: self.num_retries.or(other.num_retries),
            retry_after: self.retry_after.or(other.retry_after),
            allowed_fails: self.allowed_fails.or(other.allowed_fails),
            cooldown_time: self.cooldown_time.or(other.cooldown_time),
            fallbacks: self.fallbacks.or(other.fallbacks),
            context_window_fallbacks: self
                .context_window_fallbacks
                .or(other.context_window_fallbacks),
            content_policy_fallbacks: self
                .content_policy_fallbacks
                .or(other.content_policy_fallbacks),
            default_fallbacks: self.default_fallbacks.or(other.default_fallbacks),
        }
    }
}

with_routing_keys! {
    pub struct RawLitellmSettings {
        #[serde(default, deserialize_with = "lenient_bool")]
        pub log_raw_request_response: Option<bool>,
        /// LiteLLM's global request timeout (seconds).
        pub request_timeout: Option<f64>,
    }
}

with_routing_keys! {
    pub struct RawRouterSettings {
        /// Whole-call timeout for every deployment without its own (seconds).
        pub timeout: Option<f64>,
        /// Next-chunk timeout for streams (seconds).
        pub stream_timeout: Option<f64>,
        pub routing_strategy: Option<String>,
    }
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
