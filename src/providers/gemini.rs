//! The Google Gemini provider (the Gemini API of `generativelanguage.googleapis.com`).
//!
//! Chat goes to `{api_base}/models/{model}:generateContent`, streams to
//! `:streamGenerateContent?alt=sse` (each SSE `data:` is a whole `GenerateContentResponse`
//! fragment; the stream has no end marker), embeddings to `:batchEmbedContents`. `api_base`
//! includes the API version (default `https://generativelanguage.googleapis.com/v1beta`); the key
//! travels in the `x-goog-api-key` header, never in the URL.
//!
//! What is lossy, and how (see also `docs/providers/gemini.md`):
//! - Gemini's function calls carry no id: each tool call gets a synthesized, stable id
//!   (`call_` + a hash of candidate index, call ordinal, name and arguments), the same for the
//!   same answer, streamed or not. A tool result finds its function name through the earlier
//!   assistant tool call with its `tool_call_id`.
//! - Tool and `json_schema` schemas are reduced to the OpenAPI subset Gemini's `Schema` takes
//!   (`reduce_schema`).
//! - http(s) image URLs are sent as `fileData` with a MIME type guessed from the extension.
//! - Thought parts (`thought: true`) are not returned; their tokens count as completion and
//!   reasoning tokens.
//! - Embeddings: Gemini reports no usage; prompt tokens are estimated (characters / 4).

use std::collections::{BTreeMap, VecDeque};

use eventsource_stream::Event;
use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::http::{
    FixedHeaders, Target, Upstream, UpstreamRequest, parse_uri, sse_events, stream_cut,
    upstream_error,
};
use super::{ChunkStream, ProviderApi};
use crate::core::error::{Error, ErrorKind};
use crate::core::types::{
    ChatChunk, ChatRequest, ChatResponse, Choice, ChunkChoice, Content, ContentPart, Delta,
    EmbeddingInput, EmbeddingRequest, EmbeddingResponse, FinishReason, ImageRequest, ImageResponse,
    Message, ResponseFormat, Role, ToolCall, ToolCallDelta, ToolChoice, Usage, unix_now,
};

/// Gemini API's public base, version included.
const DEFAULT_API_BASE: &str = "https://generativelanguage.googleapis.com/v1beta";

#[derive(Debug)]
pub struct GeminiProvider {
    upstream: Upstream,
    /// The model's resource name, `models/{model}` (or the configured `tunedModels/...`).
    resource: String,
    /// `{api_base}/{resource}:{method}` for the three methods used, parsed once.
    generate_url: Result<Target, String>,
    stream_url: Result<Target, String>,
    embed_url: Result<Target, String>,
    /// Built once: the key.
    headers: Result<FixedHeaders, Error>,
}

impl GeminiProvider {
    pub fn new(upstream: Upstream) -> Self {
        let base = upstream.base(DEFAULT_API_BASE).trim_end_matches('/');
        let model = upstream.deployment.upstream_model.trim_matches('/');
        // A bare name is a base model; `models/x` or `tunedModels/x` is already a resource name.
        let resource = if model.contains('/') {
            model.to_string()
        } else {
            format!("models/{model}")
        };
        let model_url = format!("{base}/{resource}");
        let method = |m: &str| parse_uri(format!("{model_url}:{m}"));
        let headers = upstream.key().and_then(|key| match key {
            Some(key) => FixedHeaders::json().key_header("x-goog-api-key", key.expose()),
            None => Ok(FixedHeaders::json()),
        });
        GeminiProvider {
            headers,
            generate_url: method("generateContent"),
            stream_url: method("streamGenerateContent?alt=sse"),
            embed_url: method("batchEmbedContents"),
            upstream,
            resource,
        }
    }

    fn unsupported(&self, what: &str) -> Error {
        Error::new(
            ErrorKind::BadRequest,
            format!(
                "{what} is not supported by provider {}",
                self.upstream.deployment.provider.name()
            ),
        )
    }

    fn post(&self, url: &Result<Target, String>) -> Result<UpstreamRequest, Error> {
        UpstreamRequest::post(url, &self.headers)
    }

    fn fallback_model(&self) -> &str {
        &self.upstream.deployment.upstream_model
    }
}

impl ProviderApi for GeminiProvider {
    async fn chat(&self, req: &ChatRequest) -> Result<ChatResponse, Error> {
        let body = build_request(req)?;
        let resp = self
            .upstream
            .send_json(self.post(&self.generate_url)?, &body)
            .await?;
        let wire: GenerateContentResponse = self.upstream.read_json(resp).await?;
        response_from_wire(wire, self.fallback_model())
    }

    async fn chat_stream(&self, req: &ChatRequest) -> Result<ChunkStream, Error> {
        let body = build_request(req)?;
        let resp = self
            .upstream
            .send_json(self.post(&self.stream_url)?, &body)
            .await?;
        Ok(translate_stream(
            sse_events(resp),
            self.fallback_model().to_string(),
            self.upstream.log_raw,
        ))
    }

    async fn embed(&self, req: &EmbeddingRequest) -> Result<EmbeddingResponse, Error> {
        let body = build_embed_request(req, &self.resource)?;
        let resp = self
            .upstream
            .send_json(self.post(&self.embed_url)?, &body)
            .await?;
        let wire: BatchEmbedResponse = self.upstream.read_json(resp).await?;
        embeddings_from_wire(wire, req, self.fallback_model())
    }

    async fn generate_image(&self, _req: &ImageRequest) -> Result<ImageResponse, Error> {
        Err(self.unsupported("image generation"))
    }
}

// ------------------------------------------------------------------------------------------
// Wire format (Gemini API reference: GenerateContentRequest / GenerateContentResponse)
// ------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireContent {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    role: Option<String>,
    #[serde(default)]
    parts: Vec<Part>,
}

/// One `Part`; exactly one of the data fields is set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Part {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    inline_data: Option<Blob>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    file_data: Option<FileData>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    function_call: Option<FunctionCall>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    function_response: Option<FunctionResponse>,
    /// Set on the model's thought summaries (thinking models with `includeThoughts`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    thought: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Blob {
    mime_type: String,
    /// Base64.
    data: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FileData {
    mime_type: String,
    file_uri: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FunctionCall {
    name: String,
    /// A JSON object; absent for a call without arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    args: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FunctionResponse {
    name: String,
    /// A JSON object.
    response: Value,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct GenerateContentRequest {
    contents: Vec<WireContent>,
    #[serde(skip_serializing_if = "Option::is_none")]
    system_instruction: Option<WireContent>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<WireTool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_config: Option<ToolConfig>,
    /// [`GenerationConfig`] merged with `extra`'s generation fields.
    #[serde(skip_serializing_if = "Option::is_none")]
    generation_config: Option<Map<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    safety_settings: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cached_content: Option<Value>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct WireTool {
    function_declarations: Vec<FunctionDeclaration>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct FunctionDeclaration {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<Value>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolConfig {
    function_calling_config: FunctionCallingConfig,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct FunctionCallingConfig {
    mode: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    allowed_function_names: Vec<String>,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
struct GenerationConfig {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    stop_sequences: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_mime_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_schema: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    candidate_count: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_output_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    presence_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    frequency_penalty: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GenerateContentResponse {
    #[serde(default)]
    candidates: Vec<Candidate>,
    #[serde(default)]
    prompt_feedback: Option<PromptFeedback>,
    #[serde(default)]
    usage_metadata: Option<UsageMetadata>,
    #[serde(default)]
    model_version: Option<String>,
    #[serde(default)]
    response_id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Candidate {
    #[serde(default)]
    content: Option<WireContent>,
    #[serde(default)]
    finish_reason: Option<String>,
    /// Left out for candidate 0 (proto3 JSON omits zeros); see [`candidate_indices`].
    #[serde(default)]
    index: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromptFeedback {
    #[serde(default)]
    block_reason: Option<String>,
    #[serde(default)]
    safety_ratings: Vec<SafetyRating>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SafetyRating {
    #[serde(default)]
    category: String,
    #[serde(default)]
    probability: Option<String>,
    #[serde(default)]
    blocked: bool,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(rename_all = "camelCase")]
struct UsageMetadata {
    #[serde(default)]
    prompt_token_count: u32,
    #[serde(default)]
    cached_content_token_count: u32,
    #[serde(default)]
    candidates_token_count: u32,
    #[serde(default)]
    tool_use_prompt_token_count: u32,
    #[serde(default)]
    thoughts_token_count: u32,
    #[serde(default)]
    total_token_count: Option<u32>,
}

impl From<UsageMetadata> for Usage {
    /// Tool-use prompt tokens (results of Gemini's own tools) count as prompt, thoughts as
    /// completion (and reasoning), so prompt + completion = Gemini's total.
    fn from(u: UsageMetadata) -> Self {
        let prompt = u
            .prompt_token_count
            .saturating_add(u.tool_use_prompt_token_count);
        let completion = u
            .candidates_token_count
            .saturating_add(u.thoughts_token_count);
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: u
                .total_token_count
                .unwrap_or_else(|| prompt.saturating_add(completion)),
            cached_prompt_tokens: u.cached_content_token_count,
            reasoning_tokens: u.thoughts_token_count,
            ..Usage::default()
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct BatchEmbedRequest {
    requests: Vec<EmbedContentRequest>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct EmbedContentRequest {
    model: String,
    content: WireContent,
    #[serde(skip_serializing_if = "Option::is_none")]
    task_type: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_dimensionality: Option<u32>,
}

#[derive(Debug, Deserialize)]
struct BatchEmbedResponse {
    #[serde(default)]
    embeddings: Vec<ContentEmbedding>,
}

#[derive(Debug, Deserialize)]
struct ContentEmbedding {
    #[serde(default)]
    values: Vec<f32>,
}

// ------------------------------------------------------------------------------------------
// core → Gemini (requests)
// ------------------------------------------------------------------------------------------

fn message_error(i: usize, field: &str, what: impl std::fmt::Display) -> Error {
    let param = if field.is_empty() {
        format!("messages[{i}]")
    } else {
        format!("messages[{i}].{field}")
    };
    Error::bad_request(format!("{param}: {what}")).with_param(param)
}

fn text_part(text: impl Into<String>) -> Part {
    Part {
        text: Some(text.into()),
        ..Part::default()
    }
}

/// Builds the `generateContent` body of a chat request.
fn build_request(req: &ChatRequest) -> Result<GenerateContentRequest, Error> {
    let mut system: Vec<String> = Vec::new();
    let mut contents: Vec<WireContent> = Vec::new();
    for (i, m) in req.messages.iter().enumerate() {
        let (role, parts) = match m.role {
            Role::System | Role::Developer => {
                let text = m.content.as_ref().map(Content::text).unwrap_or_default();
                if !text.is_empty() {
                    system.push(text);
                }
                continue;
            }
            Role::User => ("user", user_parts(m.content.as_ref(), i)?),
            Role::Assistant => ("model", assistant_parts(m, i)?),
            // Function results go back as a user turn (Gemini's convention).
            Role::Tool => ("user", vec![function_response_part(req, i, m)?]),
        };
        if parts.is_empty() {
            continue;
        }
        match contents.last_mut() {
            Some(last) if last.role.as_deref() == Some(role) => last.parts.extend(parts),
            _ => contents.push(WireContent {
                role: Some(role.to_string()),
                parts,
            }),
        }
    }
    let mut system_instruction = (!system.is_empty()).then(|| WireContent {
        role: None,
        parts: vec![text_part(system.join("\n\n"))],
    });
    if contents.is_empty() {
        // Gemini needs at least one turn: a system-only conversation becomes a user turn.
        match system_instruction.take() {
            Some(sys) => contents.push(WireContent {
                role: Some("user".into()),
                parts: sys.parts,
            }),
            None => {
                return Err(Error::bad_request(
                    "messages must hold at least one user or assistant message with content",
                )
                .with_param("messages"));
            }
        }
    }

    let tools = if req.tools.is_empty() {
        Vec::new()
    } else {
        vec![WireTool {
            function_declarations: req
                .tools
                .iter()
                .map(|t| FunctionDeclaration {
                    name: t.name.clone(),
                    description: t.description.clone().filter(|d| !d.is_empty()),
                    parameters: t.parameters.as_ref().and_then(reduce_object_schema),
                })
                .collect(),
        }]
    };
    let tool_config = match (&req.tool_choice, tools.is_empty()) {
        (Some(choice), false) => {
            let (mode, allowed) = match choice {
                ToolChoice::Auto => ("AUTO", Vec::new()),
                ToolChoice::None => ("NONE", Vec::new()),
                ToolChoice::Required => ("ANY", Vec::new()),
                ToolChoice::Function(name) => ("ANY", vec![name.clone()]),
            };
            Some(ToolConfig {
                function_calling_config: FunctionCallingConfig {
                    mode,
                    allowed_function_names: allowed,
                },
            })
        }
        _ => None,
    };

    let mut config = GenerationConfig {
        stop_sequences: req.stop.clone(),
        candidate_count: req.n,
        max_output_tokens: req.max_tokens,
        temperature: req.temperature,
        top_p: req.top_p,
        seed: req.seed,
        presence_penalty: req.presence_penalty,
        frequency_penalty: req.frequency_penalty,
        ..GenerationConfig::default()
    };
    match &req.response_format {
        None | Some(ResponseFormat::Text) => {}
        Some(ResponseFormat::JsonObject) => config.response_mime_type = Some("application/json"),
        Some(ResponseFormat::JsonSchema { schema, .. }) => {
            config.response_mime_type = Some("application/json");
            config.response_schema = schema.as_ref().and_then(reduce_object_schema);
        }
    }

    let mut body = GenerateContentRequest {
        contents,
        system_instruction,
        tools,
        tool_config,
        generation_config: None,
        safety_settings: None,
        cached_content: None,
    };
    let extra_generation = apply_extra(req, &mut body);
    let mut generation = match serde_json::to_value(&config) {
        Ok(Value::Object(map)) => map,
        Ok(_) | Err(_) => {
            return Err(Error::internal("cannot encode Gemini's generationConfig"));
        }
    };
    // The request's own fields win over the same field passed in `extra`.
    for (k, v) in extra_generation {
        generation.entry(k).or_insert(v);
    }
    body.generation_config = (!generation.is_empty()).then_some(generation);
    Ok(body)
}

/// Applies the `extra` parameters Gemini understands and returns the generation fields among
/// them. Taken: `safetySettings`/`safety_settings` and `cachedContent`/`cached_content` (passed
/// as they are), `generationConfig`/`generation_config` (an object whose fields join
/// `generationConfig`), `topK`/`top_k`, `thinkingConfig`/`thinking_config`. Anything else
/// (OpenAI-only parameters such as `logit_bias`) is ignored: Gemini would reject unknown fields.
fn apply_extra(req: &ChatRequest, body: &mut GenerateContentRequest) -> Map<String, Value> {
    let mut generation = Map::new();
    for (key, value) in &req.extra {
        match key.as_str() {
            "safetySettings" | "safety_settings" => body.safety_settings = Some(value.clone()),
            "cachedContent" | "cached_content" => body.cached_content = Some(value.clone()),
            "generationConfig" | "generation_config" => {
                if let Value::Object(fields) = value {
                    for (k, v) in fields {
                        generation.insert(k.clone(), v.clone());
                    }
                }
            }
            "topK" | "top_k" => {
                generation.insert("topK".into(), value.clone());
            }
            "thinkingConfig" | "thinking_config" => {
                generation.insert("thinkingConfig".into(), value.clone());
            }
            other => {
                tracing::debug!(param = other, "parameter not supported by Gemini, ignored");
            }
        }
    }
    generation
}

fn user_parts(content: Option<&Content>, i: usize) -> Result<Vec<Part>, Error> {
    match content {
        None => Ok(Vec::new()),
        Some(Content::Text(t)) => Ok(vec![text_part(t.clone())]),
        Some(Content::Parts(parts)) => parts
            .iter()
            .map(|p| match p {
                ContentPart::Text(t) => Ok(text_part(t.clone())),
                ContentPart::Image(img) => image_part(&img.url, i),
            })
            .collect(),
    }
}

fn assistant_parts(m: &Message, i: usize) -> Result<Vec<Part>, Error> {
    // An assistant's empty text (common next to tool calls) is no part at all.
    let mut parts: Vec<Part> = user_parts(m.content.as_ref(), i)?
        .into_iter()
        .filter(|p| p.text.as_deref() != Some(""))
        .collect();
    for (j, call) in m.tool_calls.iter().enumerate() {
        let args = parse_arguments(&call.arguments).map_err(|what| {
            message_error(i, &format!("tool_calls[{j}].function.arguments"), what)
        })?;
        parts.push(Part {
            function_call: Some(FunctionCall {
                name: call.name.clone(),
                args: Some(args),
            }),
            ..Part::default()
        });
    }
    Ok(parts)
}

/// A tool call's arguments as the JSON object Gemini's `functionCall.args` is; empty arguments
/// are `{}`.
fn parse_arguments(arguments: &str) -> Result<Value, String> {
    if arguments.trim().is_empty() {
        return Ok(Value::Object(Map::new()));
    }
    match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err("must be a JSON object".into()),
        Err(e) => Err(format!("is not valid JSON: {e}")),
    }
}

/// A `role: tool` message as a `functionResponse` part. OpenAI's tool message does not name the
/// function; its name comes from the latest earlier assistant tool call with this id (else the
/// message's `name`).
fn function_response_part(req: &ChatRequest, i: usize, m: &Message) -> Result<Part, Error> {
    let id = m.tool_call_id.as_deref().unwrap_or_default();
    let name = req
        .messages
        .iter()
        .take(i)
        .rev()
        .filter(|p| p.role == Role::Assistant)
        .find_map(|p| p.tool_calls.iter().find(|c| c.id == id))
        .map(|c| c.name.clone())
        .or_else(|| m.name.clone().filter(|n| !n.is_empty()))
        .ok_or_else(|| {
            message_error(
                i,
                "tool_call_id",
                format!(
                    "{id:?} matches no tool call of an earlier assistant message (Gemini needs the function's name)"
                ),
            )
        })?;
    let text = m.content.as_ref().map(Content::text).unwrap_or_default();
    let response = match serde_json::from_str::<Value>(&text) {
        Ok(v @ Value::Object(_)) => v,
        _ => json!({ "content": text }),
    };
    Ok(Part {
        function_response: Some(FunctionResponse { name, response }),
        ..Part::default()
    })
}

/// An `image_url` as a part: `data:` URLs inline (`inlineData`), http(s) and `gs://` URLs by
/// reference (`fileData`, MIME type guessed from the extension).
fn image_part(url: &str, i: usize) -> Result<Part, Error> {
    if let Some(rest) = url.strip_prefix("data:") {
        let (meta, data) = rest.split_once(',').ok_or_else(|| {
            message_error(i, "content", "image data URL has no ',' before its data")
        })?;
        if !meta.ends_with(";base64") {
            return Err(message_error(
                i,
                "content",
                "image data URLs must be base64 (data:<mime type>;base64,<data>)",
            ));
        }
        let mime = meta.split(';').next().unwrap_or_default();
        return Ok(Part {
            inline_data: Some(Blob {
                mime_type: if mime.is_empty() { "image/jpeg" } else { mime }.to_string(),
                data: data.to_string(),
            }),
            ..Part::default()
        });
    }
    let lower = url.to_ascii_lowercase();
    if ["http://", "https://", "gs://"]
        .iter()
        .any(|s| lower.starts_with(s))
    {
        return Ok(Part {
            file_data: Some(FileData {
                mime_type: guess_mime_type(url).to_string(),
                file_uri: url.to_string(),
            }),
            ..Part::default()
        });
    }
    Err(message_error(
        i,
        "content",
        "image_url.url must be an http(s) URL or a base64 data: URL",
    ))
}

/// The MIME type of a file URL from its extension (query and fragment ignored); `image/jpeg`
/// when there is none or it is unknown.
fn guess_mime_type(url: &str) -> &'static str {
    let path = url.split(['?', '#']).next().unwrap_or_default();
    let file = path.rsplit('/').next().unwrap_or_default();
    let ext = match file.rsplit_once('.') {
        Some((_, ext)) => ext.to_ascii_lowercase(),
        None => return "image/jpeg",
    };
    match ext.as_str() {
        "png" => "image/png",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "heic" => "image/heic",
        "heif" => "image/heif",
        "pdf" => "application/pdf",
        _ => "image/jpeg",
    }
}

// ------------------------------------------------------------------------------------------
// JSON Schema → Gemini's Schema
// ------------------------------------------------------------------------------------------

/// The `Schema` fields (Gemini API reference, v1beta) copied as they are.
const SCHEMA_COPIED: [&str; 14] = [
    "title",
    "description",
    "pattern",
    "minimum",
    "maximum",
    "minItems",
    "maxItems",
    "minLength",
    "maxLength",
    "minProperties",
    "maxProperties",
    "default",
    "example",
    "propertyOrdering",
];

/// How deep `$ref`s are inlined; deeper (or recursive) references are cut.
const MAX_REF_DEPTH: usize = 8;

/// A JSON Schema reduced to Gemini's `Schema` (a subset of OpenAPI 3.0):
/// - kept: `type` (upper-cased: `STRING`, `NUMBER`, `INTEGER`, `BOOLEAN`, `ARRAY`, `OBJECT`),
///   `properties`, `required` (only names in `properties`), `items`, `enum`, `anyOf`,
///   `nullable` and the fields of [`SCHEMA_COPIED`]; `format` only where Gemini takes it
///   (`enum`/`date-time` for strings, `float`/`double`, `int32`/`int64`);
/// - translated: `"type": [T, "null"]` and `anyOf`/`oneOf` with a `null` branch → `nullable`;
///   `oneOf` → `anyOf`; a one-branch `anyOf` and every `allOf` branch merged into the schema;
///   `const` → an `enum` of one; `examples` → `example` (the first); local `$ref`s
///   (`#/$defs/..`, `#/definitions/..`, any `#/` pointer) inlined, a recursive one cut to the
///   target's `type` and `description`; an `enum` of non-strings (Gemini's enums are strings)
///   → the values listed in `description`;
/// - dropped: everything else, e.g. `$schema`, `$id`, `$defs`, `definitions`,
///   `additionalProperties`, `patternProperties`, `not`, `if`/`then`/`else`, `uniqueItems`,
///   `multipleOf`, `exclusiveMinimum`/`exclusiveMaximum`, `prefixItems` and tuple `items`,
///   `readOnly`/`writeOnly`, `deprecated`, and empty `properties`.
fn reduce_schema(schema: &Value) -> Value {
    let mut r = SchemaReducer {
        root: schema,
        expanding: Vec::new(),
    };
    Value::Object(r.reduce(schema))
}

/// [`reduce_schema`], or `None` for an object schema with no properties: Gemini rejects an
/// `OBJECT` whose `properties` are empty, so a function without parameters declares none.
fn reduce_object_schema(schema: &Value) -> Option<Value> {
    let reduced = reduce_schema(schema);
    let is_empty_object = reduced.get("properties").is_none()
        && reduced.get("anyOf").is_none()
        && matches!(
            reduced.get("type").and_then(Value::as_str),
            None | Some("OBJECT")
        );
    (!is_empty_object).then_some(reduced)
}

struct SchemaReducer<'a> {
    root: &'a Value,
    /// The `$ref`s being inlined, outermost first.
    expanding: Vec<String>,
}

impl<'a> SchemaReducer<'a> {
    fn reduce(&mut self, schema: &'a Value) -> Map<String, Value> {
        let mut out = Map::new();
        let Some(obj) = schema.as_object() else {
            // `true`/`false` schemas: nothing Gemini can express.
            return out;
        };
        let mut nullable = obj.get("nullable").and_then(Value::as_bool) == Some(true);

        match obj.get("type") {
            Some(Value::String(t)) if t == "null" => nullable = true,
            Some(Value::String(t)) => {
                if let Some(t) = gemini_type(t) {
                    out.insert("type".into(), t.into());
                }
            }
            Some(Value::Array(types)) => {
                let mut kept = Vec::new();
                for t in types.iter().filter_map(Value::as_str) {
                    if t == "null" {
                        nullable = true;
                    } else if let Some(t) = gemini_type(t) {
                        kept.push(t);
                    }
                }
                match kept.as_slice() {
                    [] => {}
                    [one] => {
                        out.insert("type".into(), (*one).into());
                    }
                    many => {
                        let branches = many.iter().map(|t| json!({ "type": t })).collect();
                        out.insert("anyOf".into(), Value::Array(branches));
                    }
                }
            }
            _ => {}
        }

        for key in SCHEMA_COPIED {
            if let Some(v) = obj.get(key) {
                out.insert(key.into(), v.clone());
            }
        }
        if !out.contains_key("example")
            && let Some(first) = obj
                .get("examples")
                .and_then(Value::as_array)
                .and_then(|e| e.first())
        {
            out.insert("example".into(), first.clone());
        }

        if let Some(Value::Object(props)) = obj.get("properties") {
            let reduced: Map<String, Value> = props
                .iter()
                .map(|(name, s)| (name.clone(), Value::Object(self.reduce(s))))
                .collect();
            if !reduced.is_empty() {
                out.insert("properties".into(), Value::Object(reduced));
            }
        }
        if let Some(Value::Array(required)) = obj.get("required") {
            out.insert(
                "required".into(),
                Value::Array(required.iter().filter(|r| r.is_string()).cloned().collect()),
            );
        }
        if let Some(items @ Value::Object(_)) = obj.get("items") {
            out.insert("items".into(), Value::Object(self.reduce(items)));
        }

        // anyOf / oneOf: null branches make the schema nullable; one branch left is merged.
        let mut branches = Vec::new();
        for key in ["anyOf", "oneOf"] {
            for b in obj.get(key).and_then(Value::as_array).into_iter().flatten() {
                let r = self.reduce(b);
                if is_null_only(&r) {
                    nullable = true;
                } else {
                    branches.push(r);
                }
            }
        }
        match branches.len() {
            0 => {}
            1 => {
                for b in branches {
                    merge_schema(&mut out, b);
                }
            }
            _ if !out.contains_key("anyOf") => {
                let branches = branches.into_iter().map(Value::Object).collect();
                out.insert("anyOf".into(), Value::Array(branches));
            }
            // Both a type list and anyOf: the type list is kept, the branches dropped.
            _ => {}
        }
        for b in obj
            .get("allOf")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let r = self.reduce(b);
            merge_schema(&mut out, r);
        }
        if let Some(reference) = obj.get("$ref").and_then(Value::as_str) {
            let r = self.inline_ref(reference);
            merge_schema(&mut out, r);
        }

        // enum / const (after the type is known).
        let values: Option<Vec<Value>> = match (obj.get("enum"), obj.get("const")) {
            (Some(Value::Array(values)), _) => Some(values.clone()),
            (_, Some(c)) => Some(vec![c.clone()]),
            _ => None,
        };
        if let Some(values) = values {
            if values.iter().any(Value::is_null) {
                nullable = true;
            }
            let values: Vec<Value> = values.into_iter().filter(|v| !v.is_null()).collect();
            let ty = out.get("type").and_then(Value::as_str);
            if values.iter().all(Value::is_string) && matches!(ty, None | Some("STRING")) {
                if !values.is_empty() {
                    out.insert("type".into(), "STRING".into());
                    out.insert("enum".into(), Value::Array(values));
                }
            } else if !values.is_empty() {
                let listed: Vec<String> = values.iter().map(Value::to_string).collect();
                let note = format!("Allowed values: {}.", listed.join(", "));
                let description = match out.get("description").and_then(Value::as_str) {
                    Some(d) if !d.is_empty() => format!("{d} {note}"),
                    _ => note,
                };
                out.insert("description".into(), description.into());
            }
        }

        if let Some(format) = obj.get("format").and_then(Value::as_str) {
            let ok = match out.get("type").and_then(Value::as_str) {
                Some("STRING") => matches!(format, "enum" | "date-time"),
                Some("NUMBER") => matches!(format, "float" | "double"),
                Some("INTEGER") => matches!(format, "int32" | "int64"),
                _ => false,
            };
            if ok {
                out.insert("format".into(), format.into());
            }
        }

        // `required` may only name declared properties.
        let declared: Vec<String> = out
            .get("properties")
            .and_then(Value::as_object)
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default();
        if let Some(Value::Array(required)) = out.get_mut("required") {
            required.retain(|r| r.as_str().is_some_and(|r| declared.iter().any(|d| d == r)));
            if required.is_empty() {
                out.remove("required");
            }
        }
        if nullable {
            out.insert("nullable".into(), true.into());
        }
        out
    }

    /// The reduced target of a local `$ref`; a recursive (or too deep) one is cut to the
    /// target's `type` and `description`, an unresolvable one to nothing.
    fn inline_ref(&mut self, reference: &str) -> Map<String, Value> {
        let Some(target) = resolve_ref(self.root, reference) else {
            return Map::new();
        };
        if self.expanding.iter().any(|r| r == reference) || self.expanding.len() >= MAX_REF_DEPTH {
            let mut cut = Map::new();
            if let Some(t) = target
                .get("type")
                .and_then(Value::as_str)
                .and_then(gemini_type)
            {
                cut.insert("type".into(), t.into());
            }
            if let Some(d) = target.get("description") {
                cut.insert("description".into(), d.clone());
            }
            return cut;
        }
        self.expanding.push(reference.to_string());
        let reduced = self.reduce(target);
        self.expanding.pop();
        reduced
    }
}

fn resolve_ref<'a>(root: &'a Value, reference: &str) -> Option<&'a Value> {
    if reference == "#" {
        return Some(root);
    }
    let pointer = reference.strip_prefix('#')?;
    root.pointer(pointer)
}

fn gemini_type(t: &str) -> Option<&'static str> {
    match t.to_ascii_lowercase().as_str() {
        "string" => Some("STRING"),
        "number" => Some("NUMBER"),
        "integer" => Some("INTEGER"),
        "boolean" => Some("BOOLEAN"),
        "array" => Some("ARRAY"),
        "object" => Some("OBJECT"),
        _ => None,
    }
}

/// A reduced schema that only says "null".
fn is_null_only(s: &Map<String, Value>) -> bool {
    s.get("nullable") == Some(&Value::Bool(true))
        && !["type", "anyOf", "properties", "items", "enum"]
            .iter()
            .any(|k| s.contains_key(*k))
}

/// Merges `from` into `into`: properties joined, required united, other fields kept where
/// `into` already has them.
fn merge_schema(into: &mut Map<String, Value>, from: Map<String, Value>) {
    for (k, v) in from {
        match (k.as_str(), into.get_mut(&k), v) {
            ("properties", Some(Value::Object(mine)), Value::Object(theirs)) => {
                for (name, s) in theirs {
                    mine.entry(name).or_insert(s);
                }
            }
            ("required", Some(Value::Array(mine)), Value::Array(theirs)) => {
                for r in theirs {
                    if !mine.contains(&r) {
                        mine.push(r);
                    }
                }
            }
            (_, Some(_), _) => {}
            (_, None, v) => {
                into.insert(k, v);
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// Gemini → core (responses)
// ------------------------------------------------------------------------------------------

fn completion_id() -> String {
    format!("chatcmpl-{}", uuid::Uuid::new_v4().simple())
}

/// A stable id for a function call Gemini made: the same answer always gets the same ids,
/// streamed or not. FNV-1a (64 bit) over candidate index, call ordinal, name and arguments.
fn tool_call_id(candidate: u32, ordinal: u32, name: &str, arguments: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            hash ^= u64::from(*b);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    feed(&candidate.to_le_bytes());
    feed(&ordinal.to_le_bytes());
    feed(name.as_bytes());
    feed(&[0]);
    feed(arguments.as_bytes());
    format!("call_{hash:016x}")
}

/// Gemini's finish reason; a message holding tool calls always finishes with `tool_calls`.
fn finish_reason(reason: &str, has_tool_calls: bool) -> FinishReason {
    if has_tool_calls {
        return FinishReason::ToolCalls;
    }
    match reason {
        "MAX_TOKENS" => FinishReason::Length,
        "SAFETY"
        | "RECITATION"
        | "BLOCKLIST"
        | "PROHIBITED_CONTENT"
        | "SPII"
        | "IMAGE_SAFETY"
        | "IMAGE_PROHIBITED_CONTENT"
        | "IMAGE_RECITATION" => FinishReason::ContentFilter,
        // STOP, and LANGUAGE, OTHER, MALFORMED_FUNCTION_CALL, ... (no closer OpenAI reason).
        _ => FinishReason::Stop,
    }
}

/// The text (thought parts skipped) and function calls (`(name, JSON arguments)`) of a
/// candidate's content. Other parts (e.g. executable code, inline images) are not carried.
fn read_parts(content: Option<&WireContent>) -> (String, Vec<(String, String)>) {
    let mut text = String::new();
    let mut calls = Vec::new();
    for part in content.map(|c| c.parts.as_slice()).unwrap_or_default() {
        if part.thought != Some(true)
            && let Some(t) = &part.text
        {
            text.push_str(t);
        }
        if let Some(call) = &part.function_call {
            let args = call
                .args
                .clone()
                .unwrap_or_else(|| Value::Object(Map::new()));
            calls.push((call.name.clone(), args.to_string()));
        }
    }
    (text, calls)
}

/// The index of each candidate: its `index`, or, where it is left out (proto3 JSON omits a
/// zero), the smallest index no other candidate of the response claims.
fn candidate_indices(candidates: &[Candidate]) -> Vec<u32> {
    let claimed: Vec<u32> = candidates.iter().filter_map(|c| c.index).collect();
    let mut next = 0;
    candidates
        .iter()
        .map(|c| {
            c.index.unwrap_or_else(|| {
                while claimed.contains(&next) {
                    next += 1;
                }
                next += 1;
                next - 1
            })
        })
        .collect()
}

/// The content-filter error of a prompt Gemini blocked (`promptFeedback.blockReason`, no
/// candidates).
fn blocked_error(feedback: &PromptFeedback) -> Error {
    let reason = feedback
        .block_reason
        .as_deref()
        .unwrap_or("BLOCK_REASON_UNSPECIFIED");
    let flagged: Vec<&str> = feedback
        .safety_ratings
        .iter()
        .filter(|r| r.blocked || matches!(r.probability.as_deref(), Some("MEDIUM" | "HIGH")))
        .map(|r| r.category.as_str())
        .collect();
    let mut message = format!("Gemini blocked the prompt (blockReason {reason})");
    if !flagged.is_empty() {
        message.push_str(&format!("; flagged: {}", flagged.join(", ")));
    }
    Error::bad_request(message).with_code("content_filter")
}

fn prompt_blocked(wire: &GenerateContentResponse) -> Option<&PromptFeedback> {
    if !wire.candidates.is_empty() {
        return None;
    }
    wire.prompt_feedback
        .as_ref()
        .filter(|f| f.block_reason.is_some())
}

fn response_from_wire(
    wire: GenerateContentResponse,
    fallback_model: &str,
) -> Result<ChatResponse, Error> {
    if let Some(feedback) = prompt_blocked(&wire) {
        return Err(blocked_error(feedback));
    }
    if wire.candidates.is_empty() {
        return Err(Error::bad_gateway("Gemini answered no candidates"));
    }
    let indices = candidate_indices(&wire.candidates);
    let mut choices: Vec<Choice> = wire
        .candidates
        .iter()
        .zip(indices)
        .map(|(cand, index)| {
            let (text, calls) = read_parts(cand.content.as_ref());
            let tool_calls: Vec<ToolCall> = calls
                .into_iter()
                .enumerate()
                .map(|(ordinal, (name, arguments))| ToolCall {
                    id: tool_call_id(index, ordinal as u32, &name, &arguments),
                    name,
                    arguments,
                })
                .collect();
            let finish = finish_reason(
                cand.finish_reason.as_deref().unwrap_or("STOP"),
                !tool_calls.is_empty(),
            );
            Choice {
                index,
                message: Message {
                    role: Role::Assistant,
                    content: (!text.is_empty()).then_some(Content::Text(text)),
                    name: None,
                    tool_calls,
                    tool_call_id: None,
                    refusal: None,
                },
                finish_reason: finish,
                logprobs: None,
            }
        })
        .collect();
    choices.sort_by_key(|c| c.index);
    Ok(ChatResponse {
        id: wire.response_id.unwrap_or_else(completion_id),
        model: wire
            .model_version
            .unwrap_or_else(|| fallback_model.to_string()),
        created: unix_now(),
        choices,
        usage: wire.usage_metadata.map(Usage::from),
        system_fingerprint: None,
    })
}

// ------------------------------------------------------------------------------------------
// Streams
// ------------------------------------------------------------------------------------------

#[derive(Debug, Default)]
struct CandidateState {
    role_sent: bool,
    tool_calls: u32,
    finished: bool,
}

/// Turns Gemini's stream fragments into chunks. Gemini's stream has no end marker: it ended
/// cleanly when every candidate it started has a finish reason.
struct StreamState {
    id: Option<String>,
    model: String,
    created: i64,
    candidates: BTreeMap<u32, CandidateState>,
    usage: Option<Usage>,
    pending: VecDeque<Result<ChatChunk, Error>>,
    done: bool,
}

impl StreamState {
    fn new(fallback_model: String) -> Self {
        StreamState {
            id: None,
            model: fallback_model,
            created: unix_now(),
            candidates: BTreeMap::new(),
            usage: None,
            pending: VecDeque::new(),
            done: false,
        }
    }

    fn chunk(&self, choices: Vec<ChunkChoice>, usage: Option<Usage>) -> ChatChunk {
        ChatChunk {
            id: self.id.clone().unwrap_or_default(),
            model: self.model.clone(),
            created: self.created,
            choices,
            usage,
            system_fingerprint: None,
        }
    }

    /// Ends the stream with an error.
    fn fail(&mut self, e: Error) {
        self.pending.clear();
        self.pending.push_back(Err(e));
        self.done = true;
    }

    /// One `data:` payload: a content chunk (role on a candidate's first, text, tool calls)
    /// and a finish chunk, as the fragment has them.
    fn on_fragment(&mut self, data: &str) -> Result<Vec<ChatChunk>, Error> {
        let value: Value = serde_json::from_str(data).map_err(|e| {
            Error::bad_gateway(format!(
                "Gemini's stream held something that is not JSON: {e}"
            ))
        })?;
        if value.get("error").is_some() {
            let status = value
                .pointer("/error/code")
                .and_then(Value::as_u64)
                .and_then(|c| u16::try_from(c).ok())
                .filter(|c| (400..600).contains(c))
                .unwrap_or(502);
            return Err(upstream_error(
                status,
                &bytes::Bytes::from(data.to_string()),
            ));
        }
        let wire: GenerateContentResponse = serde_json::from_value(value).map_err(|e| {
            Error::bad_gateway(format!("Gemini's stream held an unexpected fragment: {e}"))
        })?;
        if let Some(feedback) = prompt_blocked(&wire) {
            return Err(blocked_error(feedback));
        }
        if self.id.is_none() {
            self.id = Some(wire.response_id.clone().unwrap_or_else(completion_id));
        }
        if let Some(model) = &wire.model_version {
            self.model.clone_from(model);
        }
        if let Some(usage) = wire.usage_metadata {
            self.usage = Some(usage.into());
        }
        let mut deltas = Vec::new();
        let mut finishes = Vec::new();
        let indices = candidate_indices(&wire.candidates);
        for (cand, index) in wire.candidates.iter().zip(indices) {
            let state = self.candidates.entry(index).or_default();
            let (text, calls) = read_parts(cand.content.as_ref());
            let mut delta = Delta::default();
            if !state.role_sent {
                state.role_sent = true;
                delta.role = Some(Role::Assistant);
            }
            if !text.is_empty() {
                delta.content = Some(text);
            }
            for (name, arguments) in calls {
                let ordinal = state.tool_calls;
                state.tool_calls += 1;
                delta.tool_calls.push(ToolCallDelta {
                    index: ordinal,
                    id: Some(tool_call_id(index, ordinal, &name, &arguments)),
                    name: Some(name),
                    arguments: Some(arguments),
                });
            }
            if delta != Delta::default() {
                deltas.push(ChunkChoice {
                    index,
                    delta,
                    finish_reason: None,
                    logprobs: None,
                });
            }
            if let Some(reason) = &cand.finish_reason
                && !state.finished
            {
                state.finished = true;
                finishes.push(ChunkChoice {
                    index,
                    delta: Delta::default(),
                    finish_reason: Some(finish_reason(reason, state.tool_calls > 0)),
                    logprobs: None,
                });
            }
        }
        let mut chunks = Vec::new();
        if !deltas.is_empty() {
            chunks.push(self.chunk(deltas, None));
        }
        if !finishes.is_empty() {
            chunks.push(self.chunk(finishes, None));
        }
        Ok(chunks)
    }

    /// The upstream stream ended: the usage chunk if it ended cleanly, else the cut error.
    fn on_end(&mut self) {
        self.done = true;
        let clean = !self.candidates.is_empty() && self.candidates.values().all(|c| c.finished);
        if !clean {
            self.fail(stream_cut());
        } else if let Some(usage) = self.usage {
            let chunk = self.chunk(Vec::new(), Some(usage));
            self.pending.push_back(Ok(chunk));
        }
    }
}

/// The chunk stream of Gemini's SSE events.
fn translate_stream<S>(events: S, fallback_model: String, log_raw: bool) -> ChunkStream
where
    S: Stream<Item = Result<Event, Error>> + Send + 'static,
{
    let state = StreamState::new(fallback_model);
    let stream = futures_util::stream::unfold(
        (Box::pin(events), state),
        move |(mut events, mut st)| async move {
            loop {
                if let Some(item) = st.pending.pop_front() {
                    return Some((item, (events, st)));
                }
                if st.done {
                    return None;
                }
                match events.next().await {
                    None => st.on_end(),
                    Some(Err(e)) => st.fail(e),
                    Some(Ok(event)) => {
                        let data = event.data.trim();
                        if log_raw {
                            tracing::info!(target: "ai_api::raw", data, "upstream stream event");
                        }
                        if data.is_empty() {
                            continue;
                        }
                        match st.on_fragment(data) {
                            Ok(chunks) => st.pending.extend(chunks.into_iter().map(Ok)),
                            Err(e) => st.fail(e),
                        }
                    }
                }
            }
        },
    );
    Box::pin(stream)
}

// ------------------------------------------------------------------------------------------
// Embeddings
// ------------------------------------------------------------------------------------------

/// The `batchEmbedContents` body: one request per input text. `extra.task_type` (or
/// `taskType`) is passed as each request's `taskType`.
fn build_embed_request(req: &EmbeddingRequest, resource: &str) -> Result<BatchEmbedRequest, Error> {
    let texts = match &req.input {
        EmbeddingInput::Texts(texts) => texts,
        EmbeddingInput::Tokens(_) => {
            return Err(Error::bad_request(
                "provider gemini embeds text only; token-id inputs are not supported",
            )
            .with_param("input"));
        }
    };
    let task_type = req
        .extra
        .get("task_type")
        .or_else(|| req.extra.get("taskType"))
        .cloned();
    Ok(BatchEmbedRequest {
        requests: texts
            .iter()
            .map(|t| EmbedContentRequest {
                model: resource.to_string(),
                content: WireContent {
                    role: None,
                    parts: vec![text_part(t.clone())],
                },
                task_type: task_type.clone(),
                output_dimensionality: req.dimensions,
            })
            .collect(),
    })
}

/// Gemini reports no usage for embeddings: prompt tokens are estimated as characters / 4
/// (rounded up) per input.
fn estimate_tokens(texts: &[String]) -> u32 {
    texts
        .iter()
        .map(|t| t.chars().count().div_ceil(4))
        .sum::<usize>()
        .try_into()
        .unwrap_or(u32::MAX)
}

fn embeddings_from_wire(
    wire: BatchEmbedResponse,
    req: &EmbeddingRequest,
    model: &str,
) -> Result<EmbeddingResponse, Error> {
    if wire.embeddings.len() != req.input.len() {
        return Err(Error::bad_gateway(format!(
            "Gemini answered {} embeddings for {} inputs",
            wire.embeddings.len(),
            req.input.len()
        )));
    }
    let prompt = match &req.input {
        EmbeddingInput::Texts(texts) => estimate_tokens(texts),
        EmbeddingInput::Tokens(_) => 0,
    };
    Ok(EmbeddingResponse {
        model: model.to_string(),
        data: wire.embeddings.into_iter().map(|e| e.values).collect(),
        usage: Usage::new(prompt, 0),
    })
}

#[cfg(test)]
mod tests {
    use eventsource_stream::Eventsource;
    use futures_util::Stream;

    use super::*;
    use crate::core::types::{ImageUrl, Tool};
    use crate::providers::ProviderKind;
    use crate::providers::http::HttpClient;

    const TEXT: &str = include_str!("../../tests/fixtures/gemini/text.json");
    const FUNCTION_CALL: &str = include_str!("../../tests/fixtures/gemini/function_call.json");
    const STREAM_TEXT: &str = include_str!("../../tests/fixtures/gemini/stream_text.sse");
    const STREAM_FUNCTION_CALL: &str =
        include_str!("../../tests/fixtures/gemini/stream_function_call.sse");
    const STREAM_CUT: &str = include_str!("../../tests/fixtures/gemini/stream_cut.sse");
    const BLOCKED: &str = include_str!("../../tests/fixtures/gemini/blocked_prompt.json");
    const SAFETY: &str = include_str!("../../tests/fixtures/gemini/safety_finish.json");
    const EMBED: &str = include_str!("../../tests/fixtures/gemini/batch_embed.json");
    const ERROR_429: &str = include_str!("../../tests/fixtures/gemini/error_429.json");

    fn msg(role: Role, text: &str) -> Message {
        Message::text(role, text)
    }

    fn assistant_calls(calls: &[(&str, &str, &str)]) -> Message {
        Message {
            role: Role::Assistant,
            content: None,
            name: None,
            tool_calls: calls
                .iter()
                .map(|(id, name, args)| ToolCall {
                    id: (*id).into(),
                    name: (*name).into(),
                    arguments: (*args).into(),
                })
                .collect(),
            tool_call_id: None,
            refusal: None,
        }
    }

    fn tool_result(id: &str, content: &str) -> Message {
        Message {
            tool_call_id: Some(id.into()),
            ..msg(Role::Tool, content)
        }
    }

    fn chat(messages: Vec<Message>) -> ChatRequest {
        ChatRequest {
            model: "gem".into(),
            messages,
            ..ChatRequest::default()
        }
    }

    fn body(req: &ChatRequest) -> Value {
        serde_json::to_value(build_request(req).unwrap()).unwrap()
    }

    fn parse(json: &str) -> GenerateContentResponse {
        serde_json::from_str(json).unwrap()
    }

    fn tool(name: &str, parameters: Value) -> Tool {
        Tool {
            name: name.into(),
            description: Some(format!("{name} tool")),
            parameters: Some(parameters),
            strict: None,
        }
    }

    /// The SSE events of a transcript, delivered in small pieces as a network would.
    fn sse(text: &'static str) -> impl Stream<Item = Result<Event, Error>> + Send + 'static {
        let pieces: Vec<Result<bytes::Bytes, std::convert::Infallible>> = text
            .as_bytes()
            .chunks(7)
            .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
            .collect();
        futures_util::stream::iter(pieces)
            .eventsource()
            .map(|r| r.map_err(|e| Error::bad_gateway(e.to_string())))
    }

    async fn run_stream(text: &'static str) -> Vec<Result<ChatChunk, Error>> {
        translate_stream(sse(text), "fallback-model".into(), false)
            .collect()
            .await
    }

    fn ok_chunks(items: Vec<Result<ChatChunk, Error>>) -> Vec<ChatChunk> {
        items.into_iter().map(|r| r.unwrap()).collect()
    }

    /// Reassembles a stream's chunks into messages (as a client would) and its usage.
    fn reassemble(chunks: &[ChatChunk]) -> (Vec<Choice>, Option<Usage>) {
        #[derive(Default)]
        struct Acc {
            role: Option<Role>,
            text: Option<String>,
            calls: BTreeMap<u32, ToolCall>,
            finish: Option<FinishReason>,
        }
        let mut accs: BTreeMap<u32, Acc> = BTreeMap::new();
        let mut usage = None;
        for chunk in chunks {
            if chunk.choices.is_empty() {
                usage = chunk.usage;
            }
            for c in &chunk.choices {
                let acc = accs.entry(c.index).or_default();
                if let Some(role) = c.delta.role {
                    assert!(acc.role.is_none(), "role sent twice");
                    acc.role = Some(role);
                }
                assert!(acc.role.is_some(), "a delta before the role");
                if let Some(t) = &c.delta.content {
                    acc.text.get_or_insert_default().push_str(t);
                }
                for d in &c.delta.tool_calls {
                    let call = acc.calls.entry(d.index).or_insert_with(|| ToolCall {
                        id: String::new(),
                        name: String::new(),
                        arguments: String::new(),
                    });
                    if let Some(id) = &d.id {
                        call.id.clone_from(id);
                    }
                    if let Some(name) = &d.name {
                        call.name.clone_from(name);
                    }
                    if let Some(args) = &d.arguments {
                        call.arguments.push_str(args);
                    }
                }
                if let Some(f) = c.finish_reason {
                    assert!(acc.finish.is_none(), "finish reason sent twice");
                    acc.finish = Some(f);
                }
            }
        }
        let choices = accs
            .into_iter()
            .map(|(index, acc)| Choice {
                index,
                message: Message {
                    role: acc.role.unwrap(),
                    content: acc.text.map(Content::Text),
                    name: None,
                    tool_calls: acc.calls.into_values().collect(),
                    tool_call_id: None,
                    refusal: None,
                },
                finish_reason: acc.finish.unwrap(),
                logprobs: None,
            })
            .collect();
        (choices, usage)
    }

    // ---------------------------------------------------------------- requests

    #[test]
    fn roles_map_system_joins_and_same_role_turns_merge() {
        let req = chat(vec![
            msg(Role::System, "Be brief."),
            msg(Role::User, "Hi"),
            msg(Role::Developer, "Answer in French."),
            msg(Role::User, "What is the capital of France?"),
            msg(Role::Assistant, "Paris."),
            msg(Role::Assistant, "Anything else?"),
            msg(Role::User, "No."),
        ]);
        let b = body(&req);
        assert_eq!(
            b["systemInstruction"],
            json!({"parts": [{"text": "Be brief.\n\nAnswer in French."}]})
        );
        assert_eq!(
            b["contents"],
            json!([
                {"role": "user", "parts": [{"text": "Hi"}, {"text": "What is the capital of France?"}]},
                {"role": "model", "parts": [{"text": "Paris."}, {"text": "Anything else?"}]},
                {"role": "user", "parts": [{"text": "No."}]}
            ])
        );
        assert!(
            b.get("tools").is_none() && b.get("generationConfig").is_none(),
            "{b}"
        );
    }

    #[test]
    fn a_system_only_conversation_becomes_a_user_turn() {
        let b = body(&chat(vec![msg(Role::System, "Say hi.")]));
        assert_eq!(
            b["contents"],
            json!([{"role": "user", "parts": [{"text": "Say hi."}]}])
        );
        assert!(b.get("systemInstruction").is_none());
    }

    #[test]
    fn images_go_inline_or_by_reference() {
        let image = |url: &str| {
            ContentPart::Image(ImageUrl {
                url: url.into(),
                detail: Some("high".into()),
            })
        };
        let req = chat(vec![Message {
            content: Some(Content::Parts(vec![
                ContentPart::Text("Compare these:".into()),
                image("data:image/png;base64,iVBORw0KGgo="),
                image("https://example.com/photos/cat.WEBP?size=large#top"),
                image("https://example.com/render?id=7"),
                image("gs://bucket/scan.pdf"),
            ])),
            ..msg(Role::User, "")
        }]);
        assert_eq!(
            body(&req)["contents"][0]["parts"],
            json!([
                {"text": "Compare these:"},
                {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
                {"fileData": {"mimeType": "image/webp", "fileUri": "https://example.com/photos/cat.WEBP?size=large#top"}},
                {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.com/render?id=7"}},
                {"fileData": {"mimeType": "application/pdf", "fileUri": "gs://bucket/scan.pdf"}}
            ])
        );
    }

    #[test]
    fn unusable_image_urls_are_bad_requests() {
        for url in [
            "data:image/svg+xml,%3Csvg%3E",
            "ftp://example.com/a.png",
            "data:image/png;base64",
        ] {
            let req = chat(vec![
                msg(Role::User, "first"),
                Message {
                    content: Some(Content::Parts(vec![ContentPart::Image(ImageUrl {
                        url: url.into(),
                        detail: None,
                    })])),
                    ..msg(Role::User, "")
                },
            ]);
            let e = build_request(&req).unwrap_err();
            assert_eq!(e.kind, ErrorKind::BadRequest, "{url}");
            assert!(
                e.message.starts_with("messages[1].content"),
                "{url}: {}",
                e.message
            );
        }
    }

    #[test]
    fn tool_calls_and_results_translate_with_the_function_name_recovered() {
        let req = chat(vec![
            msg(Role::User, "Weather and time in Paris?"),
            Message {
                content: Some(Content::Text(String::new())),
                ..assistant_calls(&[
                    (
                        "call_a",
                        "get_weather",
                        r#"{"location":"Paris","unit":"celsius"}"#,
                    ),
                    ("call_b", "get_time", ""),
                ])
            },
            tool_result("call_b", "14:05"),
            tool_result("call_a", r#"{"temperature": 21, "sky": "clear"}"#),
            msg(Role::User, "Thanks, and tomorrow?"),
            assistant_calls(&[("call_c", "get_weather", r#"{"location":"Paris","day":1}"#)]),
            tool_result("call_c", "[1, 2]"),
        ]);
        assert_eq!(
            body(&req)["contents"],
            json!([
                {"role": "user", "parts": [{"text": "Weather and time in Paris?"}]},
                {"role": "model", "parts": [
                    {"functionCall": {"name": "get_weather", "args": {"location": "Paris", "unit": "celsius"}}},
                    {"functionCall": {"name": "get_time", "args": {}}}
                ]},
                {"role": "user", "parts": [
                    {"functionResponse": {"name": "get_time", "response": {"content": "14:05"}}},
                    {"functionResponse": {"name": "get_weather", "response": {"temperature": 21, "sky": "clear"}}},
                    {"text": "Thanks, and tomorrow?"}
                ]},
                {"role": "model", "parts": [
                    {"functionCall": {"name": "get_weather", "args": {"location": "Paris", "day": 1}}}
                ]},
                {"role": "user", "parts": [
                    {"functionResponse": {"name": "get_weather", "response": {"content": "[1, 2]"}}}
                ]}
            ])
        );
    }

    #[test]
    fn a_reused_tool_call_id_names_the_latest_call() {
        let req = chat(vec![
            msg(Role::User, "go"),
            assistant_calls(&[("call_1", "first_fn", "{}")]),
            tool_result("call_1", "ok"),
            assistant_calls(&[("call_1", "second_fn", "{}")]),
            tool_result("call_1", "ok"),
        ]);
        let b = body(&req);
        assert_eq!(
            b["contents"][2]["parts"][0]["functionResponse"]["name"],
            "first_fn"
        );
        assert_eq!(
            b["contents"][4]["parts"][0]["functionResponse"]["name"],
            "second_fn"
        );
    }

    #[test]
    fn unknown_tool_call_ids_and_bad_arguments_are_bad_requests_naming_the_message() {
        let e = build_request(&chat(vec![
            msg(Role::User, "go"),
            assistant_calls(&[("call_1", "f", "{}")]),
            tool_result("call_2", "ok"),
        ]))
        .unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadRequest);
        assert_eq!(e.param.as_deref(), Some("messages[2].tool_call_id"));
        assert!(e.message.contains("call_2"), "{}", e.message);

        // A tool message's own name is the fallback.
        let mut named = tool_result("call_2", "ok");
        named.name = Some("f".into());
        let b = body(&chat(vec![msg(Role::User, "go"), named]));
        assert_eq!(
            b["contents"][0]["parts"][1]["functionResponse"]["name"],
            "f"
        );

        for args in ["{not json", "[1, 2]"] {
            let e = build_request(&chat(vec![
                msg(Role::User, "go"),
                assistant_calls(&[("call_1", "f", "{}"), ("call_2", "g", args)]),
            ]))
            .unwrap_err();
            assert_eq!(e.kind, ErrorKind::BadRequest, "{args}");
            assert_eq!(
                e.param.as_deref(),
                Some("messages[1].tool_calls[1].function.arguments"),
                "{args}"
            );
        }
    }

    #[test]
    fn tool_choice_maps_to_function_calling_modes() {
        let with = |choice: Option<ToolChoice>| {
            let mut req = chat(vec![msg(Role::User, "hi")]);
            req.tools = vec![
                tool(
                    "get_weather",
                    json!({"type": "object", "properties": {"city": {"type": "string"}}}),
                ),
                tool(
                    "get_time",
                    json!({"type": "object", "properties": {"tz": {"type": "string"}}}),
                ),
            ];
            req.tool_choice = choice;
            body(&req)
        };
        let b = with(None);
        assert!(b.get("toolConfig").is_none());
        assert_eq!(
            b["tools"][0]["functionDeclarations"][0],
            json!({
                "name": "get_weather",
                "description": "get_weather tool",
                "parameters": {"type": "OBJECT", "properties": {"city": {"type": "STRING"}}}
            })
        );
        assert_eq!(
            b["tools"][0]["functionDeclarations"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        let mode = |c| with(Some(c))["toolConfig"]["functionCallingConfig"].clone();
        assert_eq!(mode(ToolChoice::Auto), json!({"mode": "AUTO"}));
        assert_eq!(mode(ToolChoice::None), json!({"mode": "NONE"}));
        assert_eq!(mode(ToolChoice::Required), json!({"mode": "ANY"}));
        assert_eq!(
            mode(ToolChoice::Function("get_time".into())),
            json!({"mode": "ANY", "allowedFunctionNames": ["get_time"]})
        );
        // No tools: no tool config either.
        let mut req = chat(vec![msg(Role::User, "hi")]);
        req.tool_choice = Some(ToolChoice::Required);
        assert!(body(&req).get("toolConfig").is_none());
    }

    #[test]
    fn a_tool_without_parameters_declares_none() {
        let mut req = chat(vec![msg(Role::User, "hi")]);
        req.tools = vec![
            tool(
                "now",
                json!({"type": "object", "properties": {}, "additionalProperties": false}),
            ),
            Tool {
                parameters: None,
                description: None,
                ..tool("ping", json!({}))
            },
        ];
        assert_eq!(
            body(&req)["tools"][0]["functionDeclarations"],
            json!([{"name": "now", "description": "now tool"}, {"name": "ping"}])
        );
    }

    #[test]
    fn generation_config_carries_the_sampling_fields() {
        let mut req = chat(vec![msg(Role::User, "hi")]);
        req.temperature = Some(0.4);
        req.top_p = Some(0.9);
        req.max_tokens = Some(256);
        req.stop = vec!["END".into(), "\n\n".into()];
        req.n = Some(2);
        req.seed = Some(42);
        req.presence_penalty = Some(0.5);
        req.frequency_penalty = Some(-0.25);
        req.response_format = Some(ResponseFormat::JsonObject);
        req.user = Some("u-1".into());
        req.parallel_tool_calls = Some(false);
        let b = body(&req);
        assert_eq!(
            b["generationConfig"],
            json!({
                "stopSequences": ["END", "\n\n"],
                "responseMimeType": "application/json",
                "candidateCount": 2,
                "maxOutputTokens": 256,
                "temperature": 0.4,
                "topP": 0.9,
                "seed": 42,
                "presencePenalty": 0.5,
                "frequencyPenalty": -0.25
            })
        );
        assert_eq!(
            b.as_object().unwrap().len(),
            2,
            "only contents and generationConfig: {b}"
        );

        req.response_format = Some(ResponseFormat::JsonSchema {
            name: "answer".into(),
            description: None,
            schema: Some(json!({
                "type": "object",
                "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
                "required": ["city", "population"],
                "additionalProperties": false
            })),
            strict: Some(true),
        });
        let gc = &body(&req)["generationConfig"];
        assert_eq!(gc["responseMimeType"], "application/json");
        assert_eq!(
            gc["responseSchema"],
            json!({
                "type": "OBJECT",
                "properties": {"city": {"type": "STRING"}, "population": {"type": "INTEGER"}},
                "required": ["city", "population"]
            })
        );
    }

    #[test]
    fn extra_parameters_gemini_knows_pass_through_and_others_are_ignored() {
        let mut req = chat(vec![msg(Role::User, "hi")]);
        req.temperature = Some(0.2);
        let safety = json!([{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}]);
        req.extra = BTreeMap::from([
            ("safety_settings".to_string(), safety.clone()),
            ("top_k".to_string(), json!(40)),
            (
                "thinking_config".to_string(),
                json!({"thinkingBudget": 1024}),
            ),
            (
                "generationConfig".to_string(),
                json!({"temperature": 1.5, "responseModalities": ["TEXT"]}),
            ),
            ("cached_content".to_string(), json!("cachedContents/abc")),
            ("logit_bias".to_string(), json!({"50256": -100})),
        ]);
        let b = body(&req);
        assert_eq!(b["safetySettings"], safety);
        assert_eq!(b["cachedContent"], "cachedContents/abc");
        assert_eq!(
            b["generationConfig"],
            json!({
                "temperature": 0.2,
                "topK": 40,
                "thinkingConfig": {"thinkingBudget": 1024},
                "responseModalities": ["TEXT"]
            })
        );
        assert!(!b.to_string().contains("logit"), "{b}");
    }

    #[test]
    fn schemas_are_reduced_to_what_gemini_accepts() {
        let schema = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": "https://example.com/order",
            "title": "Order",
            "type": "object",
            "additionalProperties": false,
            "properties": {
                "id": {"type": "string", "format": "uuid", "description": "Order id"},
                "placed": {"type": "string", "format": "date-time"},
                "kind": {"const": "order"},
                "status": {"type": "string", "enum": ["open", "shipped"], "default": "open"},
                "priority": {"type": "integer", "enum": [1, 2, 3], "description": "Priority."},
                "note": {"type": ["string", "null"], "maxLength": 200},
                "coupon": {"anyOf": [{"type": "string", "pattern": "^[A-Z]+$"}, {"type": "null"}]},
                "amount": {"oneOf": [{"type": "number", "format": "double"}, {"type": "string"}], "exclusiveMinimum": 0},
                "tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": true, "minItems": 1},
                "pair": {"type": "array", "prefixItems": [{"type": "string"}], "items": [{"type": "integer"}]},
                "meta": {"type": "object", "properties": {}, "patternProperties": {"^x-": {}}},
                "merged": {"allOf": [
                    {"type": "object", "properties": {"a": {"type": "boolean"}}, "required": ["a"]},
                    {"properties": {"b": {"type": "number"}}, "required": ["b"]}
                ]},
                "example_field": {"type": "string", "examples": ["first", "second"], "readOnly": true}
            },
            "required": ["id", "status", "ghost"]
        });
        assert_eq!(
            reduce_schema(&schema),
            json!({
                "title": "Order",
                "type": "OBJECT",
                "properties": {
                    "id": {"type": "STRING", "description": "Order id"},
                    "placed": {"type": "STRING", "format": "date-time"},
                    "kind": {"type": "STRING", "enum": ["order"]},
                    "status": {"type": "STRING", "enum": ["open", "shipped"], "default": "open"},
                    "priority": {"type": "INTEGER", "description": "Priority. Allowed values: 1, 2, 3."},
                    "note": {"type": "STRING", "maxLength": 200, "nullable": true},
                    "coupon": {"type": "STRING", "pattern": "^[A-Z]+$", "nullable": true},
                    "amount": {"anyOf": [{"type": "NUMBER", "format": "double"}, {"type": "STRING"}]},
                    "tags": {"type": "ARRAY", "items": {"type": "STRING"}, "minItems": 1},
                    "pair": {"type": "ARRAY"},
                    "meta": {"type": "OBJECT"},
                    "merged": {
                        "type": "OBJECT",
                        "properties": {"a": {"type": "BOOLEAN"}, "b": {"type": "NUMBER"}},
                        "required": ["a", "b"]
                    },
                    "example_field": {"type": "STRING", "example": "first"}
                },
                "required": ["id", "status"]
            })
        );
    }

    #[test]
    fn local_refs_are_inlined_and_recursive_ones_cut() {
        let schema = json!({
            "type": "object",
            "$defs": {
                "Address": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
                "Node": {
                    "type": "object",
                    "description": "A tree node",
                    "properties": {
                        "name": {"type": "string"},
                        "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}}
                    }
                }
            },
            "definitions": {"Color": {"type": "string", "enum": ["red", "blue"]}},
            "properties": {
                "home": {"$ref": "#/$defs/Address", "description": "Where they live"},
                "color": {"$ref": "#/definitions/Color"},
                "tree": {"$ref": "#/$defs/Node"},
                "remote": {"$ref": "https://example.com/schema.json"}
            }
        });
        assert_eq!(
            reduce_schema(&schema),
            json!({
                "type": "OBJECT",
                "properties": {
                    "home": {
                        "description": "Where they live",
                        "type": "OBJECT",
                        "properties": {"city": {"type": "STRING"}},
                        "required": ["city"]
                    },
                    "color": {"type": "STRING", "enum": ["red", "blue"]},
                    "tree": {
                        "type": "OBJECT",
                        "description": "A tree node",
                        "properties": {
                            "name": {"type": "STRING"},
                            "children": {
                                "type": "ARRAY",
                                "items": {"type": "OBJECT", "description": "A tree node"}
                            }
                        }
                    },
                    "remote": {}
                }
            })
        );
    }

    // ---------------------------------------------------------------- responses

    #[test]
    fn a_text_answer_becomes_a_choice_with_usage() {
        let r = response_from_wire(parse(TEXT), "fallback").unwrap();
        assert_eq!(r.id, "3sY9aK-lJ8SWz7IP8sahqAg");
        assert_eq!(r.model, "gemini-2.0-flash");
        assert_eq!(r.choices.len(), 1);
        let c = &r.choices[0];
        assert_eq!(c.index, 0);
        assert_eq!(c.finish_reason, FinishReason::Stop);
        assert_eq!(
            c.message.content,
            Some(Content::Text(
                "The capital of France is Paris. It has been the country's capital since the 10th century.".into()
            ))
        );
        assert!(c.message.tool_calls.is_empty());
        let u = r.usage.unwrap();
        assert_eq!(
            (u.prompt_tokens, u.completion_tokens, u.total_tokens),
            (9, 21, 30)
        );
        assert_eq!((u.cached_prompt_tokens, u.reasoning_tokens), (0, 0));
    }

    #[test]
    fn an_answer_without_id_or_model_gets_synthesized_ones() {
        let r = response_from_wire(
            parse(r#"{"candidates":[{"content":{"parts":[{"text":"hi"}],"role":"model"},"finishReason":"STOP"}]}"#),
            "gemini-2.0-flash",
        )
        .unwrap();
        assert!(r.id.starts_with("chatcmpl-") && r.id.len() > 20, "{}", r.id);
        assert_eq!(r.model, "gemini-2.0-flash");
        assert!(r.usage.is_none());
    }

    #[test]
    fn function_calls_become_tool_calls_with_stable_ids() {
        let r = response_from_wire(parse(FUNCTION_CALL), "fallback").unwrap();
        let c = &r.choices[0];
        // STOP with function calls is tool_calls.
        assert_eq!(c.finish_reason, FinishReason::ToolCalls);
        assert_eq!(
            c.message.content,
            Some(Content::Text(
                "I'll look up the weather and the local time.".into()
            ))
        );
        let calls = &c.message.tool_calls;
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].name, "get_weather");
        assert_eq!(
            serde_json::from_str::<Value>(&calls[0].arguments).unwrap(),
            json!({"location": "Paris", "unit": "celsius"})
        );
        assert_eq!(calls[1].name, "get_time");
        assert_eq!(calls[1].arguments, r#"{"timezone":"Europe/Paris"}"#);
        for call in calls {
            assert!(
                call.id.starts_with("call_") && call.id.len() == 21,
                "{}",
                call.id
            );
        }
        assert_ne!(calls[0].id, calls[1].id);

        // The same answer always gets the same ids.
        let again = response_from_wire(parse(FUNCTION_CALL), "fallback").unwrap();
        assert_eq!(again.choices[0].message.tool_calls, *calls);
        // Other arguments, another id.
        let other = FUNCTION_CALL.replace("Europe/Paris", "Europe/Rome");
        let other = response_from_wire(parse(&other), "fallback").unwrap();
        assert_eq!(other.choices[0].message.tool_calls[0].id, calls[0].id);
        assert_ne!(other.choices[0].message.tool_calls[1].id, calls[1].id);
        assert_eq!(
            tool_call_id(0, 0, "get_weather", "{}"),
            tool_call_id(0, 0, "get_weather", "{}")
        );
        assert_ne!(
            tool_call_id(0, 0, "get_weather", "{}"),
            tool_call_id(1, 0, "get_weather", "{}")
        );
        assert_ne!(
            tool_call_id(0, 0, "get_weather", "{}"),
            tool_call_id(0, 1, "get_weather", "{}")
        );
    }

    #[test]
    fn candidates_keep_their_index_and_a_call_without_args_has_empty_arguments() {
        let json = r#"{"candidates":[
            {"content":{"parts":[{"functionCall":{"name":"ping"}}],"role":"model"},"finishReason":"STOP","index":1},
            {"content":{"parts":[{"functionCall":{"name":"ping"}}],"role":"model"},"finishReason":"MAX_TOKENS","index":0}
        ]}"#;
        let r = response_from_wire(parse(json), "m").unwrap();
        assert_eq!(
            r.choices.iter().map(|c| c.index).collect::<Vec<_>>(),
            [0, 1]
        );
        assert_eq!(
            r.choices[1].message.tool_calls[0].id,
            tool_call_id(1, 0, "ping", "{}")
        );
        // proto3 JSON leaves index 0 out.
        let r = response_from_wire(parse(&json.replace(r#","index":0"#, "")), "m").unwrap();
        assert_eq!(
            r.choices.iter().map(|c| c.index).collect::<Vec<_>>(),
            [0, 1]
        );
        let cands = |indices: &[Option<u32>]| -> Vec<Candidate> {
            indices
                .iter()
                .map(|&index| Candidate {
                    index,
                    ..Candidate::default()
                })
                .collect()
        };
        assert_eq!(candidate_indices(&cands(&[None, None])), [0, 1]);
        assert_eq!(candidate_indices(&cands(&[Some(1), None])), [1, 0]);
        assert_eq!(candidate_indices(&cands(&[None, Some(0), None])), [1, 0, 2]);
        let (a, b) = (
            &r.choices[0].message.tool_calls[0],
            &r.choices[1].message.tool_calls[0],
        );
        assert_eq!((a.arguments.as_str(), b.arguments.as_str()), ("{}", "{}"));
        assert_ne!(a.id, b.id, "same call in two candidates");
        assert!(
            r.choices
                .iter()
                .all(|c| c.finish_reason == FinishReason::ToolCalls)
        );
    }

    #[test]
    fn finish_reasons_map_to_openai_names() {
        let rows = [
            ("STOP", FinishReason::Stop),
            ("MAX_TOKENS", FinishReason::Length),
            ("SAFETY", FinishReason::ContentFilter),
            ("RECITATION", FinishReason::ContentFilter),
            ("BLOCKLIST", FinishReason::ContentFilter),
            ("PROHIBITED_CONTENT", FinishReason::ContentFilter),
            ("SPII", FinishReason::ContentFilter),
            ("IMAGE_SAFETY", FinishReason::ContentFilter),
            ("LANGUAGE", FinishReason::Stop),
            ("OTHER", FinishReason::Stop),
            ("MALFORMED_FUNCTION_CALL", FinishReason::Stop),
            ("FINISH_REASON_UNSPECIFIED", FinishReason::Stop),
        ];
        for (gemini, ours) in rows {
            assert_eq!(finish_reason(gemini, false), ours, "{gemini}");
            assert_eq!(
                finish_reason(gemini, true),
                FinishReason::ToolCalls,
                "{gemini}"
            );
        }
    }

    #[test]
    fn a_safety_finish_is_a_content_filter_choice_without_content() {
        let r = response_from_wire(parse(SAFETY), "m").unwrap();
        assert_eq!(r.choices[0].finish_reason, FinishReason::ContentFilter);
        assert_eq!(r.choices[0].message.content, None);
        assert_eq!(r.usage.unwrap().prompt_tokens, 11);
    }

    #[test]
    fn a_blocked_prompt_is_a_content_filter_error() {
        let e = response_from_wire(parse(BLOCKED), "m").unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadRequest);
        assert_eq!(e.code.as_deref(), Some("content_filter"));
        assert!(e.message.contains("SAFETY"), "{}", e.message);
        assert!(
            e.message.contains("HARM_CATEGORY_DANGEROUS_CONTENT"),
            "{}",
            e.message
        );
        assert!(
            !e.message.contains("HARASSMENT"),
            "LOW is not flagged: {}",
            e.message
        );

        let e = response_from_wire(parse(r#"{"usageMetadata":{"promptTokenCount":3}}"#), "m")
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadGateway);
    }

    #[test]
    fn thoughts_are_skipped_and_counted_as_reasoning() {
        let json = r#"{
            "candidates": [{"content": {"role": "model", "parts": [
                {"text": "Let me think about rivers...", "thought": true},
                {"text": "The Nile.", "thoughtSignature": "c2ln"}
            ]}, "finishReason": "STOP"}],
            "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 3,
                "thoughtsTokenCount": 40, "cachedContentTokenCount": 4,
                "toolUsePromptTokenCount": 2, "totalTokenCount": 55},
            "modelVersion": "gemini-2.5-flash"
        }"#;
        let r = response_from_wire(parse(json), "m").unwrap();
        assert_eq!(
            r.choices[0].message.content,
            Some(Content::Text("The Nile.".into()))
        );
        assert_eq!(
            r.usage.unwrap(),
            Usage {
                prompt_tokens: 12,
                completion_tokens: 43,
                total_tokens: 55,
                cached_prompt_tokens: 4,
                reasoning_tokens: 40,
                ..Usage::default()
            }
        );
    }

    // ---------------------------------------------------------------- streams

    #[tokio::test]
    async fn a_streamed_text_answer_reassembles_to_the_non_streamed_one() {
        let chunks = ok_chunks(run_stream(STREAM_TEXT).await);
        let first = &chunks[0];
        assert_eq!(first.choices[0].delta.role, Some(Role::Assistant));
        assert_eq!(first.choices[0].delta.content.as_deref(), Some("The"));
        assert_eq!(first.id, "3sY9aK-lJ8SWz7IP8sahqAg");
        assert!(
            chunks
                .iter()
                .all(|c| c.id == first.id && c.model == "gemini-2.0-flash")
        );
        // The finish comes in its own chunk, the usage in a last one without choices.
        let n = chunks.len();
        assert_eq!(
            chunks[n - 2].choices[0].finish_reason,
            Some(FinishReason::Stop)
        );
        assert_eq!(chunks[n - 2].choices[0].delta, Delta::default());
        assert!(chunks[n - 1].choices.is_empty());
        assert!(chunks[..n - 1].iter().all(|c| c.usage.is_none()));

        let (choices, usage) = reassemble(&chunks);
        let whole = response_from_wire(parse(TEXT), "m").unwrap();
        assert_eq!(choices, whole.choices);
        assert_eq!(usage, whole.usage);
    }

    #[tokio::test]
    async fn a_streamed_function_call_reassembles_to_the_non_streamed_one_with_the_same_ids() {
        let chunks = ok_chunks(run_stream(STREAM_FUNCTION_CALL).await);
        let (choices, usage) = reassemble(&chunks);
        let whole = response_from_wire(parse(FUNCTION_CALL), "m").unwrap();
        assert_eq!(choices, whole.choices);
        assert_eq!(choices[0].finish_reason, FinishReason::ToolCalls);
        assert_eq!(choices[0].message.tool_calls.len(), 2);
        assert_eq!(usage, whole.usage);
        // Each call arrives whole, with its ordinal as index.
        let deltas: Vec<&ToolCallDelta> = chunks
            .iter()
            .flat_map(|c| &c.choices)
            .flat_map(|c| &c.delta.tool_calls)
            .collect();
        assert_eq!(deltas.iter().map(|d| d.index).collect::<Vec<_>>(), [0, 1]);
        assert_eq!(deltas[1].name.as_deref(), Some("get_time"));
        assert_eq!(
            deltas[1].arguments.as_deref(),
            Some(r#"{"timezone":"Europe/Paris"}"#)
        );
    }

    #[tokio::test]
    async fn a_stream_without_a_finish_reason_ends_with_a_cut_error() {
        let items = run_stream(STREAM_CUT).await;
        assert_eq!(items.len(), 3, "two text chunks, then the error");
        assert_eq!(
            items[1].as_ref().unwrap().choices[0]
                .delta
                .content
                .as_deref(),
            Some(", in a land far away,")
        );
        let e = items[2].as_ref().unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadGateway);
        assert_eq!(e.message, stream_cut().message);

        let empty = run_stream("").await;
        assert_eq!(empty.len(), 1);
        assert_eq!(empty[0].as_ref().unwrap_err().kind, ErrorKind::BadGateway);
    }

    #[tokio::test]
    async fn an_error_fragment_ends_the_stream_with_the_providers_error() {
        let items = run_stream(
            "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Hel\"}],\"role\":\"model\"}}]}\r\n\r\n\
             data: {\"error\":{\"code\":429,\"message\":\"Resource has been exhausted (e.g. check quota).\",\"status\":\"RESOURCE_EXHAUSTED\"}}\r\n\r\n\
             data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"lo\"}],\"role\":\"model\"},\"finishReason\":\"STOP\"}]}\r\n\r\n",
        )
        .await;
        assert_eq!(items.len(), 2);
        assert!(items[0].is_ok());
        let e = items[1].as_ref().unwrap_err();
        assert_eq!(e.kind, ErrorKind::Upstream(429));
        assert_eq!(e.message, "Resource has been exhausted (e.g. check quota).");
    }

    #[tokio::test]
    async fn a_prompt_blocked_in_the_first_fragment_is_the_content_filter_error() {
        static BLOCKED_SSE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
            let compact: Value = serde_json::from_str(BLOCKED).unwrap();
            format!("data: {compact}\r\n\r\n")
        });
        let items = run_stream(BLOCKED_SSE.as_str()).await;
        assert_eq!(items.len(), 1);
        let e = items[0].as_ref().unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadRequest);
        assert_eq!(e.code.as_deref(), Some("content_filter"));
    }

    #[tokio::test]
    async fn a_streamed_safety_finish_is_a_content_filter_finish() {
        static SAFETY_SSE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
            let compact: Value = serde_json::from_str(SAFETY).unwrap();
            format!(
                "data: {{\"candidates\":[{{\"content\":{{\"parts\":[{{\"text\":\"Sure, \"}}],\"role\":\"model\"}}}}]}}\n\ndata: {compact}\n\n"
            )
        });
        let chunks = ok_chunks(run_stream(SAFETY_SSE.as_str()).await);
        let (choices, usage) = reassemble(&chunks);
        assert_eq!(choices[0].finish_reason, FinishReason::ContentFilter);
        assert_eq!(
            choices[0].message.content,
            Some(Content::Text("Sure, ".into()))
        );
        assert_eq!(usage.unwrap().prompt_tokens, 11);
    }

    // ---------------------------------------------------------------- embeddings

    fn embedding_request(input: EmbeddingInput) -> EmbeddingRequest {
        EmbeddingRequest {
            model: "emb".into(),
            input,
            dimensions: Some(4),
            encoding_format: None,
            user: None,
            extra: BTreeMap::from([("task_type".to_string(), json!("RETRIEVAL_DOCUMENT"))]),
        }
    }

    #[test]
    fn embedding_requests_batch_each_text_and_reject_token_ids() {
        let req = embedding_request(EmbeddingInput::Texts(vec![
            "alpha".into(),
            "beta gamma".into(),
        ]));
        let b =
            serde_json::to_value(build_embed_request(&req, "models/text-embedding-004").unwrap())
                .unwrap();
        assert_eq!(
            b,
            json!({"requests": [
                {"model": "models/text-embedding-004", "content": {"parts": [{"text": "alpha"}]},
                 "taskType": "RETRIEVAL_DOCUMENT", "outputDimensionality": 4},
                {"model": "models/text-embedding-004", "content": {"parts": [{"text": "beta gamma"}]},
                 "taskType": "RETRIEVAL_DOCUMENT", "outputDimensionality": 4}
            ]})
        );
        let e = build_embed_request(
            &embedding_request(EmbeddingInput::Tokens(vec![vec![1, 2]])),
            "m",
        )
        .unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadRequest);
        assert_eq!(e.param.as_deref(), Some("input"));
    }

    #[test]
    fn embeddings_keep_input_order_and_estimate_usage() {
        let req = embedding_request(EmbeddingInput::Texts(vec![
            "alpha".into(),
            "beta gamma".into(),
        ]));
        let r =
            embeddings_from_wire(serde_json::from_str(EMBED).unwrap(), &req, "emb-model").unwrap();
        assert_eq!(r.model, "emb-model");
        assert_eq!(r.data.len(), 2);
        assert_eq!(
            r.data[0],
            [-0.0024781185, 0.011862618, 0.0062418985, -0.07459153]
        );
        assert_eq!(r.data[1][0], 0.019253502);
        // ceil(5/4) + ceil(10/4)
        assert_eq!(r.usage, Usage::new(5, 0));

        let short = embedding_request(EmbeddingInput::Texts(vec!["a".into()]));
        let e =
            embeddings_from_wire(serde_json::from_str(EMBED).unwrap(), &short, "m").unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadGateway);
    }

    // ---------------------------------------------------------------- end to end

    mod fake {
        use std::sync::Arc;

        use axum::Router;
        use axum::body::{Body, Bytes};
        use axum::extract::State;
        use axum::http::{HeaderMap, Method, Uri};
        use axum::response::Response;
        use parking_lot::Mutex;
        use serde_json::Value;

        /// What the fake answers for a path: status, content type, body.
        pub type Answer = fn(&str) -> (u16, &'static str, &'static str);

        #[derive(Debug, Clone)]
        pub struct Received {
            pub method: Method,
            pub path: String,
            pub query: Option<String>,
            pub headers: HeaderMap,
            pub body: Value,
        }

        struct Shared {
            answer: Answer,
            received: Mutex<Vec<Received>>,
        }

        /// An in-process Gemini API on 127.0.0.1:0 that records what it receives.
        pub struct FakeGemini {
            shared: Arc<Shared>,
            pub port: u16,
        }

        impl FakeGemini {
            pub async fn start(answer: Answer) -> Self {
                let shared = Arc::new(Shared {
                    answer,
                    received: Mutex::new(Vec::new()),
                });
                let app = Router::new().fallback(handle).with_state(shared.clone());
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let port = listener.local_addr().unwrap().port();
                tokio::spawn(async move { axum::serve(listener, app).await });
                FakeGemini { shared, port }
            }

            pub fn received(&self) -> Vec<Received> {
                self.shared.received.lock().clone()
            }
        }

        async fn handle(
            State(shared): State<Arc<Shared>>,
            method: Method,
            uri: Uri,
            headers: HeaderMap,
            body: Bytes,
        ) -> Response {
            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            shared.received.lock().push(Received {
                method,
                path: uri.path().to_string(),
                query: uri.query().map(str::to_string),
                headers,
                body,
            });
            let (status, content_type, text) = (shared.answer)(uri.path());
            Response::builder()
                .status(status)
                .header("content-type", content_type)
                .body(Body::from(text))
                .unwrap()
        }
    }

    fn answers(path: &str) -> (u16, &'static str, &'static str) {
        if path.ends_with(":generateContent") {
            (200, "application/json", TEXT)
        } else if path.ends_with(":streamGenerateContent") {
            (200, "text/event-stream", STREAM_TEXT)
        } else if path.ends_with(":batchEmbedContents") {
            (200, "application/json", EMBED)
        } else {
            (
                404,
                "application/json",
                r#"{"error":{"code":404,"message":"Not found.","status":"NOT_FOUND"}}"#,
            )
        }
    }

    fn rate_limited(_path: &str) -> (u16, &'static str, &'static str) {
        (429, "application/json", ERROR_429)
    }

    fn provider(port: u16) -> GeminiProvider {
        let yaml = format!(
            "model_list:\n  - model_name: gem\n    litellm_params:\n      model: gemini/gemini-2.0-flash\n      api_key: test-key\n      api_base: http://127.0.0.1:{port}/v1beta\n"
        );
        let loaded = crate::config::load_str(&yaml, "t", &|_| None).unwrap();
        let d = &loaded.config.deployments[0];
        assert_eq!(d.provider, ProviderKind::Gemini);
        GeminiProvider::new(Upstream::new(d, HttpClient::new(0).unwrap(), false))
    }

    /// Keys of a request body that are not camelCase (property names of schemas excepted).
    fn snake_keys(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                for (k, child) in map {
                    if k.contains('_') {
                        out.push(k.clone());
                    }
                    if k == "properties" {
                        for s in child.as_object().into_iter().flat_map(|m| m.values()) {
                            snake_keys(s, out);
                        }
                    } else {
                        snake_keys(child, out);
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|i| snake_keys(i, out)),
            _ => {}
        }
    }

    fn assert_sent_as_gemini_expects(r: &fake::Received, method: &str, query: Option<&str>) {
        assert_eq!(r.method, http::Method::POST);
        assert_eq!(r.path, format!("/v1beta/models/gemini-2.0-flash:{method}"));
        assert_eq!(r.query.as_deref(), query);
        assert_eq!(r.headers["x-goog-api-key"], "test-key");
        assert!(r.headers.get("authorization").is_none());
        assert_eq!(r.headers["content-type"], "application/json");
        let mut snake = Vec::new();
        snake_keys(&r.body, &mut snake);
        assert!(snake.is_empty(), "snake_case keys {snake:?} in {}", r.body);
    }

    fn e2e_chat_request() -> ChatRequest {
        let mut req = chat(vec![
            msg(Role::System, "You are terse."),
            msg(Role::User, "What is the capital of France?"),
        ]);
        req.max_tokens = Some(100);
        req.temperature = Some(0.3);
        req.tools = vec![tool(
            "get_weather",
            json!({"type": "object", "properties": {"city_name": {"type": "string"}}, "required": ["city_name"]}),
        )];
        req.tool_choice = Some(ToolChoice::Auto);
        req.extra = BTreeMap::from([("top_k".to_string(), json!(20))]);
        req
    }

    #[tokio::test]
    async fn end_to_end_chat_sends_gemini_json_and_reads_the_answer() {
        let fake = fake::FakeGemini::start(answers).await;
        let p = provider(fake.port);
        let r = p.chat(&e2e_chat_request()).await.unwrap();
        assert_eq!(r.id, "3sY9aK-lJ8SWz7IP8sahqAg");
        assert_eq!(r.choices[0].finish_reason, FinishReason::Stop);
        assert!(
            matches!(&r.choices[0].message.content, Some(Content::Text(t)) if t.starts_with("The capital of France is Paris."))
        );
        assert_eq!(r.usage.unwrap().total_tokens, 30);

        let received = fake.received();
        assert_eq!(received.len(), 1);
        let sent = &received[0];
        assert_sent_as_gemini_expects(sent, "generateContent", None);
        assert_eq!(
            sent.body,
            json!({
                "contents": [{"role": "user", "parts": [{"text": "What is the capital of France?"}]}],
                "systemInstruction": {"parts": [{"text": "You are terse."}]},
                "tools": [{"functionDeclarations": [{
                    "name": "get_weather",
                    "description": "get_weather tool",
                    "parameters": {"type": "OBJECT", "properties": {"city_name": {"type": "STRING"}}, "required": ["city_name"]}
                }]}],
                "toolConfig": {"functionCallingConfig": {"mode": "AUTO"}},
                "generationConfig": {"maxOutputTokens": 100, "temperature": 0.3, "topK": 20}
            })
        );
    }

    #[tokio::test]
    async fn end_to_end_stream_reads_server_sent_events() {
        let fake = fake::FakeGemini::start(answers).await;
        let p = provider(fake.port);
        let stream = p.chat_stream(&e2e_chat_request()).await.unwrap();
        let chunks = ok_chunks(stream.collect().await);
        let (choices, usage) = reassemble(&chunks);
        let whole = response_from_wire(parse(TEXT), "m").unwrap();
        assert_eq!(choices, whole.choices);
        assert_eq!(usage.unwrap().total_tokens, 30);

        let received = fake.received();
        assert_eq!(received.len(), 1);
        assert_sent_as_gemini_expects(&received[0], "streamGenerateContent", Some("alt=sse"));
        assert_eq!(
            received[0].body["contents"][0]["parts"][0]["text"],
            "What is the capital of France?"
        );
    }

    #[tokio::test]
    async fn end_to_end_embeddings_batch_the_inputs() {
        let fake = fake::FakeGemini::start(answers).await;
        let p = provider(fake.port);
        let req = embedding_request(EmbeddingInput::Texts(vec![
            "alpha".into(),
            "beta gamma".into(),
        ]));
        let r = p.embed(&req).await.unwrap();
        assert_eq!(r.data.len(), 2);
        assert_eq!(
            r.data[1],
            [0.019253502, -0.0066134613, -0.016405724, -0.058732413]
        );
        assert_eq!(r.model, "gemini-2.0-flash");

        let received = fake.received();
        assert_sent_as_gemini_expects(&received[0], "batchEmbedContents", None);
        let requests = received[0].body["requests"].as_array().unwrap();
        assert_eq!(requests.len(), 2);
        assert_eq!(requests[0]["model"], "models/gemini-2.0-flash");
        assert_eq!(requests[1]["content"]["parts"][0]["text"], "beta gamma");
        assert_eq!(requests[1]["outputDimensionality"], 4);
    }

    #[tokio::test]
    async fn end_to_end_upstream_errors_keep_status_and_message() {
        let fake = fake::FakeGemini::start(rate_limited).await;
        let p = provider(fake.port);
        let req = chat(vec![msg(Role::User, "hi")]);
        let e = p.chat(&req).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Upstream(429));
        assert_eq!(e.message, "Resource has been exhausted (e.g. check quota).");
        let e = match p.chat_stream(&req).await {
            Ok(_) => panic!("a 429 is an error of the call"),
            Err(e) => e,
        };
        assert_eq!(e.kind, ErrorKind::Upstream(429));
        assert_eq!(fake.received().len(), 2);
    }

    #[tokio::test]
    async fn image_generation_is_not_supported() {
        let p = provider(1);
        let e = p
            .generate_image(&ImageRequest {
                model: "gem".into(),
                prompt: "a cat".into(),
                n: None,
                size: None,
                quality: None,
                style: None,
                response_format: None,
                user: None,
                extra: BTreeMap::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadRequest);
        assert!(e.message.contains("gemini"), "{}", e.message);
    }

    #[test]
    fn the_model_url_is_built_from_api_base_and_model() {
        let p = provider(8080);
        assert_eq!(
            p.generate_url.as_ref().unwrap().to_string(),
            "http://127.0.0.1:8080/v1beta/models/gemini-2.0-flash:generateContent"
        );
        assert_eq!(
            p.stream_url.as_ref().unwrap().to_string(),
            "http://127.0.0.1:8080/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse"
        );
        assert_eq!(p.resource, "models/gemini-2.0-flash");
    }
}
