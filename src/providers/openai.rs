//! The OpenAI provider, and every OpenAI-compatible host as a preset of it (base URL, auth
//! header, key variable): azure, groq, mistral, deepseek, openrouter, xai, together_ai,
//! fireworks_ai, ollama, hosted_vllm, lm_studio. Adding the next host is one row in
//! `preset`. The wire format itself lives in `crate::openai`, shared with the HTTP door.

use futures_util::StreamExt;

use super::http::{
    FixedHeaders, Target, Upstream, UpstreamRequest, finish_in_background, parse_uri, sse_events,
    stream_cut, upstream_error,
};
use super::{ChunkStream, ProviderApi, ProviderKind};
use crate::core::error::Error;
use crate::core::types::{
    ChatChunk, ChatRequest, ChatResponse, EmbeddingRequest, EmbeddingResponse, ImageRequest,
    ImageResponse,
};
use crate::openai::convert::{self, MaxTokensField};
use crate::openai::{
    ChatCompletion, ChatCompletionChunk, EmbeddingResponse as WireEmbeddings, ImagesResponse,
};

/// How a host is reached: its default base URL (`None`: `api_base` is required) and how the
/// key is sent.
struct Preset {
    base: Option<&'static str>,
    auth: Auth,
    max_field: MaxTokensField,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Auth {
    Bearer,
    /// Azure's `api-key` header.
    ApiKeyHeader,
}

fn preset(kind: ProviderKind) -> Preset {
    use MaxTokensField::{MaxCompletionTokens as Mct, MaxTokens as Mt};
    let (base, auth, max_field) = match kind {
        ProviderKind::OpenAi => (Some("https://api.openai.com/v1"), Auth::Bearer, Mct),
        ProviderKind::Azure => (None, Auth::ApiKeyHeader, Mct),
        ProviderKind::Groq => (Some("https://api.groq.com/openai/v1"), Auth::Bearer, Mt),
        ProviderKind::Mistral => (Some("https://api.mistral.ai/v1"), Auth::Bearer, Mt),
        ProviderKind::Deepseek => (Some("https://api.deepseek.com/v1"), Auth::Bearer, Mt),
        ProviderKind::OpenRouter => (Some("https://openrouter.ai/api/v1"), Auth::Bearer, Mt),
        ProviderKind::Xai => (Some("https://api.x.ai/v1"), Auth::Bearer, Mt),
        ProviderKind::TogetherAi => (Some("https://api.together.xyz/v1"), Auth::Bearer, Mt),
        ProviderKind::FireworksAi => (
            Some("https://api.fireworks.ai/inference/v1"),
            Auth::Bearer,
            Mt,
        ),
        ProviderKind::Ollama => (Some("http://localhost:11434/v1"), Auth::Bearer, Mt),
        ProviderKind::HostedVllm => (None, Auth::Bearer, Mt),
        ProviderKind::LmStudio => (Some("http://localhost:1234/v1"), Auth::Bearer, Mt),
        // Not OpenAI-compatible; never routed here (see `Provider::new`).
        ProviderKind::Anthropic | ProviderKind::Gemini => (None, Auth::Bearer, Mt),
    };
    Preset {
        base,
        auth,
        max_field,
    }
}

/// The default Azure `api-version` when neither the config nor `AZURE_API_VERSION` names one.
const AZURE_API_VERSION: &str = "2024-10-21";

#[derive(Debug)]
pub struct OpenAiProvider {
    up: Upstream,
    /// Parsed once: parsing (IDNA included) on every request shows in profiles.
    chat_url: Result<Target, String>,
    embeddings_url: Result<Target, String>,
    images_url: Result<Target, String>,
    /// Built once: key, organization.
    headers: Result<FixedHeaders, Error>,
    max_field: MaxTokensField,
}

impl OpenAiProvider {
    pub fn new(up: Upstream) -> Self {
        let d = &up.deployment;
        let p = preset(d.provider);
        let base = d
            .api_base
            .clone()
            .or(p.base.map(str::to_string))
            .unwrap_or_default();
        let (chat_url, embeddings_url, images_url) = match d.provider {
            ProviderKind::Azure => {
                let version = d
                    .api_version
                    .clone()
                    .or_else(|| std::env::var("AZURE_API_VERSION").ok())
                    .unwrap_or_else(|| AZURE_API_VERSION.to_string());
                let root = format!("{base}/openai/deployments/{}", d.upstream_model);
                (
                    format!("{root}/chat/completions?api-version={version}"),
                    format!("{root}/embeddings?api-version={version}"),
                    format!("{root}/images/generations?api-version={version}"),
                )
            }
            ProviderKind::Ollama if !base.ends_with("/v1") => (
                format!("{base}/v1/chat/completions"),
                format!("{base}/v1/embeddings"),
                format!("{base}/v1/images/generations"),
            ),
            _ => (
                format!("{base}/chat/completions"),
                format!("{base}/embeddings"),
                format!("{base}/images/generations"),
            ),
        };
        OpenAiProvider {
            chat_url: parse_uri(chat_url),
            embeddings_url: parse_uri(embeddings_url),
            images_url: parse_uri(images_url),
            headers: fixed_headers(&up, p.auth),
            max_field: p.max_field,
            up,
        }
    }

    fn post(&self, url: &Result<Target, String>) -> Result<UpstreamRequest, Error> {
        UpstreamRequest::post(url, &self.headers)
    }
}

/// The headers of every call: the key as the host expects it, and the organization.
fn fixed_headers(up: &Upstream, auth: Auth) -> Result<FixedHeaders, Error> {
    let mut h = FixedHeaders::json();
    if let Some(key) = up.key()? {
        h = match auth {
            Auth::Bearer => h.bearer_auth(key.expose())?,
            Auth::ApiKeyHeader => h.key_header("api-key", key.expose())?,
        };
    }
    if let Some(org) = &up.deployment.organization {
        h = h.header("openai-organization", org)?;
    }
    Ok(h)
}

impl ProviderApi for OpenAiProvider {
    async fn chat(&self, req: &ChatRequest) -> Result<ChatResponse, Error> {
        let body = convert::chat_request_to_wire(
            req,
            &self.up.deployment.upstream_model,
            false,
            self.max_field,
        );
        let resp = self.up.send_json(self.post(&self.chat_url)?, &body).await?;
        let wire: ChatCompletion = self.up.read_json(resp).await?;
        Ok(wire.into())
    }

    async fn chat_stream(&self, req: &ChatRequest) -> Result<ChunkStream, Error> {
        let body = convert::chat_request_to_wire(
            req,
            &self.up.deployment.upstream_model,
            true,
            self.max_field,
        );
        let resp = self.up.send_json(self.post(&self.chat_url)?, &body).await?;
        let log_raw = self.up.log_raw;
        let events = Box::pin(sse_events(resp));
        let stream = futures_util::stream::unfold(Some(events), move |state| async move {
            let mut events = state?;
            loop {
                let event = match events.next().await {
                    None => return Some((Err(stream_cut()), None)),
                    Some(Err(e)) => return Some((Err(e), None)),
                    Some(Ok(ev)) => ev,
                };
                let data = event.data.trim();
                if log_raw {
                    tracing::info!(target: "ai_api::raw", data, "upstream stream event");
                }
                if data.is_empty() {
                    continue;
                }
                if data == "[DONE]" {
                    finish_in_background(events);
                    return None;
                }
                return match parse_chunk(data) {
                    Ok(chunk) => Some((Ok(chunk), Some(events))),
                    Err(e) => Some((Err(e), None)),
                };
            }
        });
        Ok(Box::pin(stream))
    }

    async fn embed(&self, req: &EmbeddingRequest) -> Result<EmbeddingResponse, Error> {
        let body = convert::embedding_request_to_wire(req, &self.up.deployment.upstream_model);
        let resp = self
            .up
            .send_json(self.post(&self.embeddings_url)?, &body)
            .await?;
        let wire: WireEmbeddings = self.up.read_json(resp).await?;
        wire.try_into()
    }

    async fn generate_image(&self, req: &ImageRequest) -> Result<ImageResponse, Error> {
        let body = convert::image_request_to_wire(req, &self.up.deployment.upstream_model);
        let resp = self
            .up
            .send_json(self.post(&self.images_url)?, &body)
            .await?;
        let wire: ImagesResponse = self.up.read_json(resp).await?;
        Ok(wire.into())
    }
}

/// One SSE `data:` payload: a chunk, or an error event the provider sent mid-stream.
fn parse_chunk(data: &str) -> Result<ChatChunk, Error> {
    // An error event has an `"error"` key; text that merely mentions the word is escaped
    // inside a JSON string (`\"error\"`) or unquoted. Without one, parse the chunk directly
    // (going through a `Value` first costs a second parse per chunk).
    if !data.contains("\"error\"") {
        let wire: ChatCompletionChunk = serde_json::from_str(data).map_err(|e| {
            Error::bad_gateway(format!(
                "the provider's stream held an unexpected chunk: {e}"
            ))
        })?;
        return Ok(wire.into());
    }
    let value: serde_json::Value = serde_json::from_str(data).map_err(|e| {
        Error::bad_gateway(format!(
            "the provider's stream held something that is not JSON: {e}"
        ))
    })?;
    if value.get("error").is_some() {
        let status = value
            .pointer("/error/code")
            .and_then(serde_json::Value::as_u64)
            .and_then(|c| u16::try_from(c).ok())
            .filter(|c| (400..600).contains(c))
            .unwrap_or(502);
        return Err(upstream_error(
            status,
            &bytes::Bytes::from(data.to_string()),
        ));
    }
    let wire: ChatCompletionChunk = serde_json::from_value(value).map_err(|e| {
        Error::bad_gateway(format!(
            "the provider's stream held an unexpected chunk: {e}"
        ))
    })?;
    Ok(wire.into())
}

#[cfg(test)]
mod tests {
    use super::parse_chunk;

    #[test]
    fn chunks_parse_and_error_events_become_errors() {
        let chunk = parse_chunk(
            r#"{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"say \"error\" twice"},"finish_reason":null}]}"#,
        )
        .unwrap();
        assert_eq!(chunk.id, "c1");
        assert_eq!(
            chunk.choices[0].delta.content.as_deref(),
            Some(r#"say "error" twice"#)
        );

        let e =
            parse_chunk(r#"{"error":{"message":"overloaded","type":"server_error","code":503}}"#)
                .unwrap_err();
        assert_eq!(e.http_status().as_u16(), 503);
        assert!(e.message.contains("overloaded"), "{}", e.message);

        let e = parse_chunk("not json").unwrap_err();
        assert_eq!(e.http_status().as_u16(), 502);
    }
}
