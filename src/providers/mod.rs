//! Providers: the closed set of upstream APIs and the one place that dispatches to them.
//!
//! [`ProviderKind`] is parsed once from `litellm_params.model` (`openai/gpt-4o` → OpenAI,
//! `gpt-4o`). [`Provider`] is built once per deployment (URLs and headers prepared) and
//! dispatches each operation with one `match`. Each provider module keeps its wire structs
//! private and translates to and from the core types; nothing here knows about the doors.

pub mod anthropic;
pub mod client;
pub mod gemini;
pub mod http;
pub mod mock;
pub mod openai;

use std::future::Future;
use std::pin::Pin;

use futures_util::Stream;

use crate::config::{Credential, DeploymentConfig, Secret};
use crate::core::error::{Error, ErrorKind};
use crate::core::types::{
    ChatChunk, ChatRequest, ChatResponse, EmbeddingRequest, EmbeddingResponse, ImageRequest,
    ImageResponse,
};

/// A stream of chat chunks from a provider. A provider ends it with a chunk that has no
/// choices and carries `usage` when the upstream reports usage; a cut or failed upstream stream
/// ends with an `Err` item, never silently.
pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<ChatChunk, Error>> + Send>>;

/// Which upstream API family a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProviderKind {
    OpenAi,
    Azure,
    Groq,
    Mistral,
    Deepseek,
    OpenRouter,
    Xai,
    TogetherAi,
    FireworksAi,
    Ollama,
    HostedVllm,
    LmStudio,
    Anthropic,
    Gemini,
}

impl ProviderKind {
    pub const ALL: [ProviderKind; 14] = [
        ProviderKind::OpenAi,
        ProviderKind::Azure,
        ProviderKind::Groq,
        ProviderKind::Mistral,
        ProviderKind::Deepseek,
        ProviderKind::OpenRouter,
        ProviderKind::Xai,
        ProviderKind::TogetherAi,
        ProviderKind::FireworksAi,
        ProviderKind::Ollama,
        ProviderKind::HostedVllm,
        ProviderKind::LmStudio,
        ProviderKind::Anthropic,
        ProviderKind::Gemini,
    ];

    /// The name used in `litellm_params.model` (`name/model`).
    pub fn name(self) -> &'static str {
        match self {
            ProviderKind::OpenAi => "openai",
            ProviderKind::Azure => "azure",
            ProviderKind::Groq => "groq",
            ProviderKind::Mistral => "mistral",
            ProviderKind::Deepseek => "deepseek",
            ProviderKind::OpenRouter => "openrouter",
            ProviderKind::Xai => "xai",
            ProviderKind::TogetherAi => "together_ai",
            ProviderKind::FireworksAi => "fireworks_ai",
            ProviderKind::Ollama => "ollama",
            ProviderKind::HostedVllm => "hosted_vllm",
            ProviderKind::LmStudio => "lm_studio",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::Gemini => "gemini",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        // `ollama_chat/` is LiteLLM's other spelling for Ollama.
        if name == "ollama_chat" {
            return Some(ProviderKind::Ollama);
        }
        ProviderKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Splits `provider/model` (or infers the provider of a bare OpenAI, Claude or Gemini
    /// model name, as LiteLLM does). The error is a message with a suggestion where one is
    /// obvious.
    pub fn parse_model(model: &str) -> Result<(ProviderKind, String), String> {
        let model = model.trim();
        if let Some((prefix, rest)) = model.split_once('/') {
            if rest.is_empty() {
                return Err(format!("{model:?} names no model after the provider"));
            }
            return match ProviderKind::from_name(prefix) {
                Some(kind) => Ok((kind, rest.to_string())),
                None => {
                    let best = ProviderKind::ALL
                        .iter()
                        .map(|k| (strsim::levenshtein(prefix, k.name()), k.name()))
                        .min();
                    match best {
                        Some((d, name)) if d <= 3 => Err(format!(
                            "unknown provider {prefix:?}; did you mean {name:?}?"
                        )),
                        _ => Err(format!(
                            "unknown provider {prefix:?}; supported: {}",
                            ProviderKind::ALL.map(|k| k.name()).join(", ")
                        )),
                    }
                }
            };
        }
        let inferred = if [
            "gpt-",
            "o1",
            "o3",
            "o4",
            "chatgpt-",
            "dall-e",
            "text-embedding-",
            "gpt-image",
        ]
        .iter()
        .any(|p| model.starts_with(p))
        {
            Some(ProviderKind::OpenAi)
        } else if model.starts_with("claude") {
            Some(ProviderKind::Anthropic)
        } else if model.starts_with("gemini") {
            Some(ProviderKind::Gemini)
        } else {
            None
        };
        match inferred {
            Some(kind) => Ok((kind, model.to_string())),
            None if model.is_empty() => {
                Err("must name a model, e.g. \"openai/gpt-4o-mini\"".into())
            }
            None => Err(format!(
                "cannot tell the provider of {model:?}; write it as \"provider/{model}\", e.g. \"openai/{model}\""
            )),
        }
    }

    /// The environment variables LiteLLM reads for this provider's key, in order.
    pub fn key_env_vars(self) -> &'static [&'static str] {
        match self {
            ProviderKind::OpenAi => &["OPENAI_API_KEY"],
            ProviderKind::Azure => &["AZURE_API_KEY", "AZURE_OPENAI_API_KEY"],
            ProviderKind::Groq => &["GROQ_API_KEY"],
            ProviderKind::Mistral => &["MISTRAL_API_KEY"],
            ProviderKind::Deepseek => &["DEEPSEEK_API_KEY"],
            ProviderKind::OpenRouter => &["OPENROUTER_API_KEY", "OR_API_KEY"],
            ProviderKind::Xai => &["XAI_API_KEY"],
            ProviderKind::TogetherAi => &[
                "TOGETHERAI_API_KEY",
                "TOGETHER_API_KEY",
                "TOGETHER_AI_TOKEN",
            ],
            ProviderKind::FireworksAi => &["FIREWORKS_AI_API_KEY", "FIREWORKS_API_KEY"],
            ProviderKind::Ollama => &["OLLAMA_API_KEY"],
            ProviderKind::HostedVllm => &["HOSTED_VLLM_API_KEY"],
            ProviderKind::LmStudio => &["LM_STUDIO_API_KEY"],
            ProviderKind::Anthropic => &["ANTHROPIC_API_KEY"],
            ProviderKind::Gemini => &["GEMINI_API_KEY", "GOOGLE_API_KEY"],
        }
    }

    /// Local servers run without a key.
    pub fn key_optional(self) -> bool {
        matches!(
            self,
            ProviderKind::Ollama | ProviderKind::HostedVllm | ProviderKind::LmStudio
        )
    }

    /// Providers with no public default URL.
    pub fn requires_api_base(self) -> bool {
        matches!(self, ProviderKind::Azure | ProviderKind::HostedVllm)
    }

    /// The credential of a deployment that names no `api_key`: the provider's standard
    /// variable, as LiteLLM reads it.
    pub fn default_credential(self, env: &dyn Fn(&str) -> Option<String>) -> Credential {
        let vars = self.key_env_vars();
        for var in vars {
            if let Some(v) = env(var).filter(|v| !v.is_empty()) {
                return Credential::Key(Secret::new(v));
            }
        }
        match vars.first() {
            Some(var) if !self.key_optional() => Credential::Missing {
                var: (*var).to_string(),
            },
            _ => Credential::None,
        }
    }
}

/// The key of a call, checked: a missing variable is a configuration error naming it.
pub(crate) fn require_key(d: &DeploymentConfig) -> Result<Option<&Secret>, Error> {
    match &d.api_key {
        Credential::Key(k) => Ok(Some(k)),
        Credential::None => Ok(None),
        Credential::Missing { var } => Err(Error::new(
            ErrorKind::Config,
            format!(
                "model {:?} is not usable: environment variable {var} (its {} API key) is not set",
                d.model_name,
                d.provider.name()
            ),
        )
        .with_code("missing_provider_key")),
    }
}

/// The contract each provider fulfils. Return-position `impl Future` (no boxing, no
/// `async_trait`); dispatch happens once, in [`Provider`].
pub(crate) trait ProviderApi {
    fn chat(&self, req: &ChatRequest) -> impl Future<Output = Result<ChatResponse, Error>> + Send;
    fn chat_stream(
        &self,
        req: &ChatRequest,
    ) -> impl Future<Output = Result<ChunkStream, Error>> + Send;
    fn embed(
        &self,
        req: &EmbeddingRequest,
    ) -> impl Future<Output = Result<EmbeddingResponse, Error>> + Send;
    fn generate_image(
        &self,
        req: &ImageRequest,
    ) -> impl Future<Output = Result<ImageResponse, Error>> + Send;
}

/// A deployment's provider, ready to call.
#[derive(Debug)]
pub enum Provider {
    /// Boxed: its prepared URLs make it much larger than the other variants.
    OpenAi(Box<openai::OpenAiProvider>),
    Anthropic(anthropic::AnthropicProvider),
    Gemini(gemini::GeminiProvider),
    Mock(mock::MockProvider),
}

impl Provider {
    /// Prepares the provider of one deployment; `client` is the gateway's one pooled client.
    pub fn new(d: &DeploymentConfig, client: http::HttpClient, log_raw: bool) -> Self {
        if let Some(text) = &d.mock_response {
            return Provider::Mock(mock::MockProvider::new(d, text.clone()));
        }
        let ctx = http::Upstream::new(d, client, log_raw);
        match d.provider {
            ProviderKind::Anthropic => Provider::Anthropic(anthropic::AnthropicProvider::new(ctx)),
            ProviderKind::Gemini => Provider::Gemini(gemini::GeminiProvider::new(ctx)),
            ProviderKind::OpenAi
            | ProviderKind::Azure
            | ProviderKind::Groq
            | ProviderKind::Mistral
            | ProviderKind::Deepseek
            | ProviderKind::OpenRouter
            | ProviderKind::Xai
            | ProviderKind::TogetherAi
            | ProviderKind::FireworksAi
            | ProviderKind::Ollama
            | ProviderKind::HostedVllm
            | ProviderKind::LmStudio => {
                Provider::OpenAi(Box::new(openai::OpenAiProvider::new(ctx)))
            }
        }
    }

    pub async fn chat(&self, req: &ChatRequest) -> Result<ChatResponse, Error> {
        match self {
            Provider::OpenAi(p) => p.chat(req).await,
            Provider::Anthropic(p) => p.chat(req).await,
            Provider::Gemini(p) => p.chat(req).await,
            Provider::Mock(p) => p.chat(req).await,
        }
    }

    pub async fn chat_stream(&self, req: &ChatRequest) -> Result<ChunkStream, Error> {
        match self {
            Provider::OpenAi(p) => p.chat_stream(req).await,
            Provider::Anthropic(p) => p.chat_stream(req).await,
            Provider::Gemini(p) => p.chat_stream(req).await,
            Provider::Mock(p) => p.chat_stream(req).await,
        }
    }

    pub async fn embed(&self, req: &EmbeddingRequest) -> Result<EmbeddingResponse, Error> {
        match self {
            Provider::OpenAi(p) => p.embed(req).await,
            Provider::Anthropic(p) => p.embed(req).await,
            Provider::Gemini(p) => p.embed(req).await,
            Provider::Mock(p) => p.embed(req).await,
        }
    }

    pub async fn generate_image(&self, req: &ImageRequest) -> Result<ImageResponse, Error> {
        match self {
            Provider::OpenAi(p) => p.generate_image(req).await,
            Provider::Anthropic(p) => p.generate_image(req).await,
            Provider::Gemini(p) => p.generate_image(req).await,
            Provider::Mock(p) => p.generate_image(req).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_parse_into_provider_and_upstream_name() {
        assert_eq!(
            ProviderKind::parse_model("openai/gpt-4o-mini"),
            Ok((ProviderKind::OpenAi, "gpt-4o-mini".into()))
        );
        assert_eq!(
            ProviderKind::parse_model("openrouter/anthropic/claude-3.5"),
            Ok((ProviderKind::OpenRouter, "anthropic/claude-3.5".into()))
        );
        assert_eq!(
            ProviderKind::parse_model("claude-3-5-haiku-20241022"),
            Ok((ProviderKind::Anthropic, "claude-3-5-haiku-20241022".into()))
        );
        assert!(ProviderKind::parse_model("llama3").is_err());
    }
}
