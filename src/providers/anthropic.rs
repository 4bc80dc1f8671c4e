//! The Anthropic provider: chat requests translated to Anthropic's Messages API
//! (`POST {api_base}/v1/messages`, `x-api-key`, `anthropic-version: 2023-06-01`) and its
//! answers, whole or streamed, translated back. Anthropic has no embeddings or image
//! generation; those are refused as bad requests naming the provider.
//!
//! What is lossy, and how (also in `docs/providers/anthropic.md`):
//! - system and developer messages become the top-level `system`, joined with blank lines
//!   (their position in the conversation is lost); consecutive turns of the same role are
//!   merged (Anthropic requires alternation); `name` on messages is dropped.
//! - `max_tokens` is required upstream: absent, it defaults per model ([`default_max_tokens`]),
//!   plus the thinking budget when extended thinking is on.
//! - `temperature` above 1 is clamped to 1 (Anthropic's range is 0..=1); `seed`,
//!   `presence_penalty`, `frequency_penalty`, a tool's `strict` and an image's `detail` are
//!   dropped; `n > 1` is refused.
//! - `response_format` (json_schema / json_object) becomes a forced tool, [`JSON_TOOL_NAME`],
//!   whose input comes back as the message's text with finish reason `stop` (LiteLLM's way).
//! - thinking blocks are not returned (the core has no field for them).

use std::collections::{BTreeMap, VecDeque};
use std::pin::Pin;

use eventsource_stream::Event;
use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::http::{
    FixedHeaders, Target, Upstream, UpstreamRequest, parse_uri, sse_events, stream_cut,
    upstream_error,
};
use super::{ChunkStream, ProviderApi};
use crate::core::error::Error;
use crate::core::types::{
    ChatChunk, ChatRequest, ChatResponse, Choice, ChunkChoice, Content, ContentPart, Delta,
    EmbeddingRequest, EmbeddingResponse, FinishReason, ImageRequest, ImageResponse, Message,
    ResponseFormat, Role, Tool, ToolCall, ToolCallDelta, ToolChoice, Usage, unix_now,
};

/// Anthropic's public API root, used when the deployment names no `api_base`.
const DEFAULT_API_BASE: &str = "https://api.anthropic.com";
/// The API version every request names.
const API_VERSION: &str = "2023-06-01";
/// The tool a `response_format` becomes; its input is the JSON answer (LiteLLM's name).
pub const JSON_TOOL_NAME: &str = "json_tool_call";

/// OpenAI request parameters with no Anthropic counterpart, dropped rather than forwarded into
/// Anthropic's "extra inputs are not permitted" 400.
const OPENAI_ONLY_PARAMS: [&str; 9] = [
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "store",
    "stream_options",
    "modalities",
    "verbosity",
    "prompt_cache_key",
    "safety_identifier",
];

#[derive(Debug)]
pub struct AnthropicProvider {
    up: Upstream,
    /// Parsed once, at startup.
    url: Result<Target, String>,
    /// Built once: API version and key.
    headers: Result<FixedHeaders, Error>,
}

impl AnthropicProvider {
    pub fn new(up: Upstream) -> Self {
        let url = parse_uri(messages_url(up.base(DEFAULT_API_BASE)));
        let headers = (|| {
            let mut h = FixedHeaders::json().header("anthropic-version", API_VERSION)?;
            if let Some(key) = up.key()? {
                h = h.key_header("x-api-key", key.expose())?;
            }
            Ok(h)
        })();
        AnthropicProvider { up, url, headers }
    }

    fn post(&self) -> Result<UpstreamRequest, Error> {
        UpstreamRequest::post(&self.url, &self.headers)
    }

    fn unsupported(&self, what: &str) -> Error {
        Error::bad_request(format!(
            "{what} is not supported by provider {}",
            self.up.deployment.provider.name()
        ))
    }
}

/// `{base}/v1/messages`; a base that already ends in `/v1` or `/v1/messages` is not doubled.
fn messages_url(base: &str) -> String {
    let base = base.trim_end_matches('/');
    if base.ends_with("/v1/messages") {
        base.to_string()
    } else if base.ends_with("/v1") {
        format!("{base}/messages")
    } else {
        format!("{base}/v1/messages")
    }
}

impl ProviderApi for AnthropicProvider {
    async fn chat(&self, req: &ChatRequest) -> Result<ChatResponse, Error> {
        let prepared = build_request(req, &self.up.deployment.upstream_model, false)?;
        let resp = self.up.send_json(self.post()?, &prepared.body).await?;
        let wire: MessagesResponse = self.up.read_json(resp).await?;
        Ok(response_from_wire(wire, prepared.json_mode))
    }

    async fn chat_stream(&self, req: &ChatRequest) -> Result<ChunkStream, Error> {
        let prepared = build_request(req, &self.up.deployment.upstream_model, true)?;
        let resp = self.up.send_json(self.post()?, &prepared.body).await?;
        Ok(translate_stream(
            sse_events(resp),
            StreamState::new(prepared.json_mode),
            self.up.log_raw,
        ))
    }

    async fn embed(&self, _req: &EmbeddingRequest) -> Result<EmbeddingResponse, Error> {
        Err(self.unsupported("embeddings"))
    }

    async fn generate_image(&self, _req: &ImageRequest) -> Result<ImageResponse, Error> {
        Err(self.unsupported("image generation"))
    }
}

// ------------------------------------------------------------------------------------------
// Request: core → Anthropic
// ------------------------------------------------------------------------------------------

#[derive(Debug, Serialize)]
struct MessagesRequest {
    model: String,
    messages: Vec<WireMessage>,
    max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    stop_sequences: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<WireTool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<WireToolChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<Metadata>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
}

#[derive(Debug, Serialize)]
struct Metadata {
    user_id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum WireRole {
    User,
    Assistant,
}

#[derive(Debug, Serialize)]
struct WireMessage {
    role: WireRole,
    content: WireContent,
}

/// A plain string, or content blocks.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum WireContent {
    Text(String),
    Blocks(Vec<Block>),
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block {
    Text {
        text: String,
    },
    Image {
        source: ImageSource,
    },
    ToolUse {
        id: String,
        name: String,
        input: Value,
    },
    ToolResult {
        tool_use_id: String,
        content: WireContent,
    },
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ImageSource {
    Base64 { media_type: String, data: String },
    Url { url: String },
}

#[derive(Debug, Serialize)]
struct WireTool {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    input_schema: Value,
}

#[derive(Debug, Serialize)]
struct WireToolChoice {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    disable_parallel_tool_use: Option<bool>,
}

impl WireToolChoice {
    fn of(kind: &'static str) -> Self {
        WireToolChoice {
            kind,
            name: None,
            disable_parallel_tool_use: None,
        }
    }

    fn tool(name: &str) -> Self {
        WireToolChoice {
            kind: "tool",
            name: Some(name.to_string()),
            disable_parallel_tool_use: None,
        }
    }
}

/// A request ready to send, and whether its answer comes back through [`JSON_TOOL_NAME`].
#[derive(Debug)]
struct Prepared {
    body: Map<String, Value>,
    json_mode: bool,
}

/// The default `max_tokens` when the request names none (Anthropic requires it): 4096 for the
/// legacy models whose output limit is 4096 (claude-2, claude-instant, claude-3 haiku / sonnet
/// / opus), 8192 for everything else (claude-3-5, claude-3-7, the claude-4 family and later;
/// all allow at least that).
pub fn default_max_tokens(model: &str) -> u32 {
    let m = model.to_ascii_lowercase();
    let claude_3_legacy =
        m.starts_with("claude-3-") && !m.starts_with("claude-3-5") && !m.starts_with("claude-3-7");
    if claude_3_legacy || m.starts_with("claude-2") || m.starts_with("claude-instant") {
        4096
    } else {
        8192
    }
}

/// Builds the Messages API body for `req` against the upstream `model`.
fn build_request(req: &ChatRequest, model: &str, stream: bool) -> Result<Prepared, Error> {
    let ChatRequest {
        model: _,
        messages,
        temperature,
        top_p,
        max_tokens,
        stop,
        seed: _,
        user,
        tools,
        tool_choice,
        response_format,
        n,
        presence_penalty: _,
        frequency_penalty: _,
        parallel_tool_calls,
        include_usage: _,
        extra,
    } = req;
    if n.is_some_and(|n| n > 1) {
        return Err(Error::bad_request(
            "n > 1 is not supported by provider anthropic: it answers one choice per request",
        )
        .with_param("n"));
    }
    let extra = passthrough_params(extra);
    let thinking_budget = thinking_budget(&extra);
    let (system, messages) = convert_messages(messages)?;
    let (tools, tool_choice, json_mode) = convert_tools(
        tools,
        tool_choice.as_ref(),
        response_format.as_ref(),
        *parallel_tool_calls,
        thinking_budget.is_some(),
    );
    let max_tokens = max_tokens.unwrap_or_else(|| {
        let budget = thinking_budget
            .and_then(|b| u32::try_from(b).ok())
            .unwrap_or(0);
        default_max_tokens(model).saturating_add(budget)
    });
    let wire = MessagesRequest {
        model: model.to_string(),
        messages,
        max_tokens,
        system,
        // Anthropic refuses whitespace-only stop sequences (OpenAI clients often send "\n").
        stop_sequences: stop
            .iter()
            .filter(|s| !s.trim().is_empty())
            .cloned()
            .collect(),
        temperature: temperature.map(|t| t.min(1.0)),
        top_p: *top_p,
        tools,
        tool_choice,
        metadata: user.clone().map(|user_id| Metadata { user_id }),
        stream,
    };
    let mut body = match serde_json::to_value(&wire) {
        Ok(Value::Object(map)) => map,
        Ok(_) => {
            return Err(Error::internal(
                "the Anthropic request did not encode as an object",
            ));
        }
        Err(e) => {
            return Err(Error::internal(format!(
                "cannot encode the Anthropic request: {e}"
            )));
        }
    };
    // Pass-through parameters never override what the translation set.
    for (k, v) in extra {
        body.entry(k).or_insert(v);
    }
    Ok(Prepared { body, json_mode })
}

/// The request's pass-through parameters as Anthropic should see them: OpenAI-only ones
/// dropped, `reasoning_effort` mapped to a thinking budget (unless `thinking` is given),
/// `metadata` reduced to the `user_id` Anthropic accepts, `service_tier` kept only with a value
/// Anthropic knows. Everything else (`thinking`, `top_k`, ...) goes through unchanged.
fn passthrough_params(extra: &BTreeMap<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    for (k, v) in extra {
        match k.as_str() {
            k if OPENAI_ONLY_PARAMS.contains(&k) => {}
            "reasoning_effort" => {
                let budget = match v.as_str() {
                    Some("minimal" | "low") => Some(1024),
                    Some("medium") => Some(2048),
                    Some("high") => Some(4096),
                    _ => None,
                };
                if let Some(budget) = budget
                    && !extra.contains_key("thinking")
                {
                    out.insert(
                        "thinking".into(),
                        json!({"type": "enabled", "budget_tokens": budget}),
                    );
                }
            }
            "metadata" => {
                if let Some(user_id) = v.get("user_id") {
                    out.insert("metadata".into(), json!({ "user_id": user_id }));
                }
            }
            "service_tier" => {
                if matches!(v.as_str(), Some("auto" | "standard_only")) {
                    out.insert(k.clone(), v.clone());
                }
            }
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    out
}

/// The thinking budget when extended thinking is on (`thinking: {"type": "enabled", ...}`).
fn thinking_budget(extra: &Map<String, Value>) -> Option<u64> {
    let thinking = extra.get("thinking")?;
    if thinking.get("type").and_then(Value::as_str) == Some("disabled") {
        return None;
    }
    Some(
        thinking
            .get("budget_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(0),
    )
}

/// One Anthropic turn being assembled, and the first core message it came from.
struct Turn {
    role: WireRole,
    blocks: Vec<Block>,
    first_message: usize,
}

fn push_turn(turns: &mut Vec<Turn>, role: WireRole, message: usize, blocks: Vec<Block>) {
    match turns.last_mut() {
        Some(turn) if turn.role == role => turn.blocks.extend(blocks),
        _ => turns.push(Turn {
            role,
            blocks,
            first_message: message,
        }),
    }
}

/// The system prompt and the alternating turns of a conversation.
fn convert_messages(messages: &[Message]) -> Result<(Option<String>, Vec<WireMessage>), Error> {
    let mut system: Vec<String> = Vec::new();
    let mut turns: Vec<Turn> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let Message {
            role,
            content,
            name: _,
            tool_calls,
            tool_call_id,
            refusal,
        } = m;
        match role {
            Role::System | Role::Developer => {
                let text = content.as_ref().map(Content::text).unwrap_or_default();
                if !text.is_empty() {
                    system.push(text);
                }
            }
            Role::User => {
                let blocks = match content {
                    Some(c) => content_blocks(i, c)?,
                    None => Vec::new(),
                };
                push_turn(&mut turns, WireRole::User, i, blocks);
            }
            Role::Assistant => {
                let mut blocks = Vec::new();
                let text = content.as_ref().map(Content::text).unwrap_or_default();
                let text = if text.is_empty() {
                    refusal.clone().unwrap_or_default()
                } else {
                    text
                };
                if !text.is_empty() {
                    blocks.push(Block::Text { text });
                }
                for call in tool_calls {
                    let ToolCall {
                        id,
                        name,
                        arguments,
                    } = call;
                    blocks.push(Block::ToolUse {
                        id: id.clone(),
                        name: name.clone(),
                        input: tool_input(i, name, arguments)?,
                    });
                }
                // An assistant message with nothing to say (e.g. empty content) is dropped:
                // Anthropic rejects empty content.
                if !blocks.is_empty() {
                    push_turn(&mut turns, WireRole::Assistant, i, blocks);
                }
            }
            Role::Tool => {
                let result = match content {
                    None => WireContent::Text(String::new()),
                    Some(Content::Text(t)) => WireContent::Text(t.clone()),
                    Some(c @ Content::Parts(parts)) => {
                        if parts.iter().all(|p| matches!(p, ContentPart::Text(_))) {
                            WireContent::Text(c.text())
                        } else {
                            WireContent::Blocks(content_blocks(i, c)?)
                        }
                    }
                };
                let block = Block::ToolResult {
                    tool_use_id: tool_call_id.clone().unwrap_or_default(),
                    content: result,
                };
                push_turn(&mut turns, WireRole::User, i, vec![block]);
            }
        }
    }
    // Anthropic's conversation must open with a user turn; a conversation that opens with the
    // assistant (a greeting) gets a placeholder user turn first, as LiteLLM does.
    if turns.first().is_some_and(|t| t.role == WireRole::Assistant) {
        turns.insert(
            0,
            Turn {
                role: WireRole::User,
                blocks: vec![Block::Text { text: ".".into() }],
                first_message: 0,
            },
        );
    }
    let mut out = Vec::with_capacity(turns.len());
    for mut turn in turns {
        if turn.blocks.is_empty() {
            return Err(Error::bad_request(format!(
                "messages[{}]: provider anthropic needs non-empty content in user messages",
                turn.first_message
            ))
            .with_param(format!("messages[{}].content", turn.first_message)));
        }
        // Anthropic wants a turn's tool results before anything else in it (stable order).
        if turn.role == WireRole::User {
            turn.blocks
                .sort_by_key(|b| !matches!(b, Block::ToolResult { .. }));
        }
        let content = match turn.blocks.as_mut_slice() {
            [Block::Text { text }] => WireContent::Text(std::mem::take(text)),
            _ => WireContent::Blocks(turn.blocks),
        };
        out.push(WireMessage {
            role: turn.role,
            content,
        });
    }
    let system = (!system.is_empty()).then(|| system.join("\n\n"));
    Ok((system, out))
}

/// Text and image blocks of user (or tool result) content; empty text is left out.
fn content_blocks(i: usize, content: &Content) -> Result<Vec<Block>, Error> {
    match content {
        Content::Text(t) if t.is_empty() => Ok(Vec::new()),
        Content::Text(t) => Ok(vec![Block::Text { text: t.clone() }]),
        Content::Parts(parts) => {
            let mut blocks = Vec::with_capacity(parts.len());
            for p in parts {
                match p {
                    ContentPart::Text(t) if t.is_empty() => {}
                    ContentPart::Text(t) => blocks.push(Block::Text { text: t.clone() }),
                    ContentPart::Image(img) => blocks.push(Block::Image {
                        source: image_source(i, &img.url)?,
                    }),
                }
            }
            Ok(blocks)
        }
    }
}

/// `data:<media type>;base64,<data>` → a base64 source; `http(s)://` → a URL source.
fn image_source(i: usize, url: &str) -> Result<ImageSource, Error> {
    let invalid = |why: &str| {
        Error::bad_request(format!("messages[{i}]: {why}"))
            .with_param(format!("messages[{i}].content"))
    };
    if let Some(rest) = url.strip_prefix("data:") {
        let Some((meta, data)) = rest.split_once(',') else {
            return Err(invalid("the image data: URL has no data"));
        };
        let mut meta = meta.split(';');
        let media_type = meta.next().unwrap_or_default().trim();
        if !meta.any(|p| p.trim().eq_ignore_ascii_case("base64")) {
            return Err(invalid(
                "provider anthropic takes image data: URLs only base64-encoded (data:<type>;base64,...)",
            ));
        }
        if media_type.is_empty() {
            return Err(invalid("the image data: URL names no media type"));
        }
        // `image/jpg` is a common label that Anthropic does not take.
        let media_type = if media_type.eq_ignore_ascii_case("image/jpg") {
            "image/jpeg".to_string()
        } else {
            media_type.to_ascii_lowercase()
        };
        return Ok(ImageSource::Base64 {
            media_type,
            data: data.to_string(),
        });
    }
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    if lower.starts_with("https://") || lower.starts_with("http://") {
        return Ok(ImageSource::Url {
            url: url.to_string(),
        });
    }
    Err(invalid(
        "image_url.url must be an http(s) URL or a base64 data: URL",
    ))
}

/// A tool call's JSON-encoded arguments as the `input` object Anthropic wants.
fn tool_input(i: usize, name: &str, arguments: &str) -> Result<Value, Error> {
    if arguments.trim().is_empty() {
        return Ok(json!({}));
    }
    let invalid = |why: String| {
        Error::bad_request(format!(
            "messages[{i}]: the arguments of tool call {name:?} {why}"
        ))
        .with_param(format!("messages[{i}].tool_calls"))
    };
    match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(invalid("must be a JSON object".into())),
        Err(e) => Err(invalid(format!("are not valid JSON: {e}"))),
    }
}

/// Tools, the tool choice, and whether the answer comes back through [`JSON_TOOL_NAME`].
fn convert_tools(
    tools: &[Tool],
    choice: Option<&ToolChoice>,
    response_format: Option<&ResponseFormat>,
    parallel_tool_calls: Option<bool>,
    thinking: bool,
) -> (Vec<WireTool>, Option<WireToolChoice>, bool) {
    let mut wire: Vec<WireTool> = tools
        .iter()
        .map(|t| {
            let Tool {
                name,
                description,
                parameters,
                strict: _,
            } = t;
            WireTool {
                name: name.clone(),
                description: description.clone(),
                input_schema: parameters
                    .clone()
                    .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
            }
        })
        .collect();
    let json_tool = match response_format {
        None | Some(ResponseFormat::Text) => None,
        Some(ResponseFormat::JsonObject) => Some(WireTool {
            name: JSON_TOOL_NAME.into(),
            description: Some("Respond with a JSON object as this tool's input.".into()),
            input_schema: json!({"type": "object", "additionalProperties": true, "properties": {}}),
        }),
        Some(ResponseFormat::JsonSchema {
            name,
            description,
            schema,
            strict: _,
        }) => Some(WireTool {
            name: JSON_TOOL_NAME.into(),
            description: Some(description.clone().unwrap_or_else(|| {
                format!("Respond with the {name} JSON object as this tool's input.")
            })),
            input_schema: schema.clone().unwrap_or_else(
                || json!({"type": "object", "additionalProperties": true, "properties": {}}),
            ),
        }),
    };
    let json_mode = json_tool.is_some();
    let mut choice = match json_tool {
        Some(json_tool) => {
            let only_json = wire.is_empty();
            wire.push(json_tool);
            Some(if thinking {
                // Extended thinking refuses forced tool use.
                WireToolChoice::of("auto")
            } else {
                match choice {
                    Some(ToolChoice::Function(name)) => WireToolChoice::tool(name),
                    Some(ToolChoice::None) => WireToolChoice::tool(JSON_TOOL_NAME),
                    _ if only_json => WireToolChoice::tool(JSON_TOOL_NAME),
                    // Call one of the client's tools, or answer through the JSON tool.
                    _ => WireToolChoice::of("any"),
                }
            })
        }
        None if wire.is_empty() => None,
        None => match choice {
            None if parallel_tool_calls == Some(false) => Some(WireToolChoice::of("auto")),
            None => None,
            Some(ToolChoice::Auto) => Some(WireToolChoice::of("auto")),
            Some(ToolChoice::Required) => Some(WireToolChoice::of("any")),
            Some(ToolChoice::None) => Some(WireToolChoice::of("none")),
            Some(ToolChoice::Function(name)) => Some(WireToolChoice::tool(name)),
        },
    };
    if parallel_tool_calls == Some(false)
        && let Some(c) = choice.as_mut()
        && c.kind != "none"
    {
        c.disable_parallel_tool_use = Some(true);
    }
    (wire, choice, json_mode)
}

// ------------------------------------------------------------------------------------------
// Response: Anthropic → core
// ------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
struct MessagesResponse {
    #[serde(default)]
    id: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    content: Vec<ResponseBlock>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: WireUsage,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ResponseBlock {
    Text {
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        #[serde(default)]
        input: Value,
    },
    /// thinking, redacted_thinking, server tool blocks, and whatever comes next.
    #[serde(other)]
    Other,
}

/// Anthropic's token counts (each may be absent or null).
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
struct WireUsage {
    #[serde(default)]
    input_tokens: Option<u32>,
    #[serde(default)]
    output_tokens: Option<u32>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u32>,
    #[serde(default)]
    cache_read_input_tokens: Option<u32>,
}

impl WireUsage {
    /// Counts in `later` replace ours (`message_delta` counts are cumulative).
    fn update(&mut self, later: WireUsage) {
        let WireUsage {
            input_tokens,
            output_tokens,
            cache_creation_input_tokens,
            cache_read_input_tokens,
        } = later;
        self.input_tokens = input_tokens.or(self.input_tokens);
        self.output_tokens = output_tokens.or(self.output_tokens);
        self.cache_creation_input_tokens =
            cache_creation_input_tokens.or(self.cache_creation_input_tokens);
        self.cache_read_input_tokens = cache_read_input_tokens.or(self.cache_read_input_tokens);
    }
}

/// OpenAI counts cached tokens inside `prompt_tokens`; Anthropic's `input_tokens` excludes them.
impl From<WireUsage> for Usage {
    fn from(u: WireUsage) -> Self {
        let WireUsage {
            input_tokens,
            output_tokens,
            cache_creation_input_tokens,
            cache_read_input_tokens,
        } = u;
        let cache_read = cache_read_input_tokens.unwrap_or(0);
        let cache_creation = cache_creation_input_tokens.unwrap_or(0);
        let prompt = input_tokens
            .unwrap_or(0)
            .saturating_add(cache_read)
            .saturating_add(cache_creation);
        Usage {
            cached_prompt_tokens: cache_read,
            cache_creation_tokens: cache_creation,
            ..Usage::new(prompt, output_tokens.unwrap_or(0))
        }
    }
}

/// Anthropic's `stop_reason` as OpenAI's finish reason. `tool_use` is `tool_calls` only when
/// client tools were called (the JSON tool of `response_format` answers with `stop`).
fn finish_reason(stop_reason: Option<&str>, has_tool_calls: bool) -> FinishReason {
    match stop_reason {
        Some("end_turn" | "stop_sequence" | "pause_turn") => FinishReason::Stop,
        Some("max_tokens" | "model_context_window_exceeded") => FinishReason::Length,
        Some("refusal") => FinishReason::ContentFilter,
        _ if has_tool_calls => FinishReason::ToolCalls,
        _ => FinishReason::Stop,
    }
}

fn response_from_wire(wire: MessagesResponse, json_mode: bool) -> ChatResponse {
    let MessagesResponse {
        id,
        model,
        content,
        stop_reason,
        usage,
    } = wire;
    let mut text: Option<String> = None;
    let mut json_answer: Option<String> = None;
    let mut tool_calls = Vec::new();
    for block in content {
        match block {
            ResponseBlock::Text { text: t } => text.get_or_insert_default().push_str(&t),
            ResponseBlock::ToolUse { id, name, input } => {
                let arguments = tool_arguments(&input);
                if json_mode && name == JSON_TOOL_NAME && json_answer.is_none() {
                    json_answer = Some(arguments);
                } else {
                    tool_calls.push(ToolCall {
                        id,
                        name,
                        arguments,
                    });
                }
            }
            ResponseBlock::Other => {}
        }
    }
    let finish_reason = finish_reason(stop_reason.as_deref(), !tool_calls.is_empty());
    // The JSON answer is the whole content (text around it would break the client's parse).
    let content = json_answer.or(text).map(Content::Text);
    ChatResponse {
        id,
        model,
        created: unix_now(),
        choices: vec![Choice {
            index: 0,
            message: Message {
                role: Role::Assistant,
                content,
                name: None,
                tool_calls,
                tool_call_id: None,
                refusal: None,
            },
            finish_reason,
            logprobs: None,
        }],
        usage: Some(usage.into()),
        system_fingerprint: None,
    }
}

/// A tool_use input as OpenAI's JSON-encoded arguments (`{}` when absent).
fn tool_arguments(input: &Value) -> String {
    match input {
        Value::Null => "{}".to_string(),
        v => v.to_string(),
    }
}

// ------------------------------------------------------------------------------------------
// Streaming: Anthropic's events → core chunks
// ------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum StreamEvent {
    MessageStart {
        message: StartMessage,
    },
    ContentBlockStart {
        index: u32,
        content_block: StartBlock,
    },
    ContentBlockDelta {
        index: u32,
        delta: BlockDelta,
    },
    ContentBlockStop {
        index: u32,
    },
    MessageDelta {
        #[serde(default)]
        delta: MessageDeltaBody,
        #[serde(default)]
        usage: Option<WireUsage>,
    },
    MessageStop,
    Ping,
    Error {
        error: StreamError,
    },
    /// Anthropic may add event types; they are skipped.
    #[serde(other)]
    Unknown,
}

#[derive(Debug, Deserialize)]
struct StartMessage {
    #[serde(default)]
    id: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    usage: WireUsage,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum StartBlock {
    Text {
        #[serde(default)]
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        #[serde(default)]
        input: Value,
    },
    #[serde(other)]
    Other,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum BlockDelta {
    TextDelta {
        text: String,
    },
    InputJsonDelta {
        partial_json: String,
    },
    /// thinking_delta, signature_delta, citations_delta, ...
    #[serde(other)]
    Other,
}

#[derive(Debug, Default, Deserialize)]
struct MessageDeltaBody {
    #[serde(default)]
    stop_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct StreamError {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    message: String,
}

/// What a content block of the stream is, by Anthropic's block index.
#[derive(Debug, Clone, Copy)]
enum BlockKind {
    Text,
    /// A client tool call: its ordinal among the tool calls, and whether any arguments went out.
    Tool {
        ordinal: u32,
        sent: bool,
    },
    /// The `response_format` tool: its input is the answer's text.
    JsonAnswer {
        sent: bool,
    },
    Ignored,
}

/// The translation state of one stream.
#[derive(Debug)]
struct StreamState {
    id: String,
    model: String,
    created: i64,
    json_mode: bool,
    blocks: BTreeMap<u32, BlockKind>,
    next_tool: u32,
    json_answered: bool,
    /// In JSON mode, text held back until it is known whether the JSON tool answers.
    held_text: String,
    usage: WireUsage,
    finished: bool,
}

/// The chunks one event yields, and whether the stream is complete.
struct Step {
    chunks: Vec<ChatChunk>,
    done: bool,
}

impl StreamState {
    fn new(json_mode: bool) -> Self {
        StreamState {
            id: String::new(),
            model: String::new(),
            created: unix_now(),
            json_mode,
            blocks: BTreeMap::new(),
            next_tool: 0,
            json_answered: false,
            held_text: String::new(),
            usage: WireUsage::default(),
            finished: false,
        }
    }

    fn chunk(&self, delta: Delta, finish_reason: Option<FinishReason>) -> ChatChunk {
        ChatChunk {
            id: self.id.clone(),
            model: self.model.clone(),
            created: self.created,
            choices: vec![ChunkChoice {
                index: 0,
                delta,
                finish_reason,
                logprobs: None,
            }],
            usage: None,
            system_fingerprint: None,
        }
    }

    fn content(&self, text: String) -> ChatChunk {
        self.chunk(
            Delta {
                content: Some(text),
                ..Delta::default()
            },
            None,
        )
    }

    fn tool_delta(&self, call: ToolCallDelta) -> ChatChunk {
        self.chunk(
            Delta {
                tool_calls: vec![call],
                ..Delta::default()
            },
            None,
        )
    }

    /// Text of a text block: out at once, except in JSON mode (held, or dropped once the JSON
    /// tool answered, as in a whole answer).
    fn text(&mut self, text: String, out: &mut Vec<ChatChunk>) {
        if text.is_empty() || (self.json_mode && self.json_answered) {
            return;
        }
        if self.json_mode {
            self.held_text.push_str(&text);
        } else {
            out.push(self.content(text));
        }
    }

    /// The chunk with the finish reason (and any text JSON mode held back).
    fn finish(&mut self, stop_reason: Option<&str>) -> ChatChunk {
        self.finished = true;
        let reason = finish_reason(stop_reason, self.next_tool > 0);
        let held = std::mem::take(&mut self.held_text);
        let delta = Delta {
            content: (!held.is_empty()).then_some(held),
            ..Delta::default()
        };
        self.chunk(delta, Some(reason))
    }

    /// Translates one event's `data`.
    fn on_event(&mut self, data: &str) -> Result<Step, Error> {
        let event: StreamEvent = serde_json::from_str(data).map_err(|e| {
            Error::bad_gateway(format!(
                "the provider's stream held an unexpected event: {e}"
            ))
        })?;
        let mut out = Vec::new();
        let mut done = false;
        match event {
            StreamEvent::MessageStart { message } => {
                let StartMessage { id, model, usage } = message;
                self.id = id;
                self.model = model;
                self.usage.update(usage);
                out.push(self.chunk(
                    Delta {
                        role: Some(Role::Assistant),
                        ..Delta::default()
                    },
                    None,
                ));
            }
            StreamEvent::ContentBlockStart {
                index,
                content_block,
            } => match content_block {
                StartBlock::Text { text } => {
                    self.blocks.insert(index, BlockKind::Text);
                    self.text(text, &mut out);
                }
                StartBlock::ToolUse { id, name, input } => {
                    let given = match &input {
                        Value::Object(m) if !m.is_empty() => Some(input.to_string()),
                        _ => None,
                    };
                    if self.json_mode && name == JSON_TOOL_NAME && !self.json_answered {
                        self.json_answered = true;
                        self.held_text.clear();
                        let sent = given.is_some();
                        if let Some(args) = given {
                            out.push(self.content(args));
                        }
                        self.blocks.insert(index, BlockKind::JsonAnswer { sent });
                    } else {
                        let ordinal = self.next_tool;
                        self.next_tool += 1;
                        let sent = given.is_some();
                        self.blocks.insert(index, BlockKind::Tool { ordinal, sent });
                        out.push(self.tool_delta(ToolCallDelta {
                            index: ordinal,
                            id: Some(id),
                            name: Some(name),
                            arguments: Some(given.unwrap_or_default()),
                        }));
                    }
                }
                StartBlock::Other => {
                    self.blocks.insert(index, BlockKind::Ignored);
                }
            },
            StreamEvent::ContentBlockDelta { index, delta } => {
                let kind = self.blocks.get(&index).copied();
                match (kind, delta) {
                    (Some(BlockKind::Text), BlockDelta::TextDelta { text }) => {
                        self.text(text, &mut out);
                    }
                    (
                        Some(BlockKind::Tool { ordinal, .. }),
                        BlockDelta::InputJsonDelta { partial_json },
                    ) if !partial_json.is_empty() => {
                        self.blocks.insert(
                            index,
                            BlockKind::Tool {
                                ordinal,
                                sent: true,
                            },
                        );
                        out.push(self.tool_delta(ToolCallDelta {
                            index: ordinal,
                            arguments: Some(partial_json),
                            ..ToolCallDelta::default()
                        }));
                    }
                    (
                        Some(BlockKind::JsonAnswer { .. }),
                        BlockDelta::InputJsonDelta { partial_json },
                    ) if !partial_json.is_empty() => {
                        self.blocks
                            .insert(index, BlockKind::JsonAnswer { sent: true });
                        out.push(self.content(partial_json));
                    }
                    _ => {}
                }
            }
            StreamEvent::ContentBlockStop { index } => match self.blocks.get(&index).copied() {
                // A call with no input at all still gets `{}`, as in a whole answer.
                Some(BlockKind::Tool {
                    ordinal,
                    sent: false,
                }) => {
                    self.blocks.insert(
                        index,
                        BlockKind::Tool {
                            ordinal,
                            sent: true,
                        },
                    );
                    out.push(self.tool_delta(ToolCallDelta {
                        index: ordinal,
                        arguments: Some("{}".into()),
                        ..ToolCallDelta::default()
                    }));
                }
                Some(BlockKind::JsonAnswer { sent: false }) => {
                    self.blocks
                        .insert(index, BlockKind::JsonAnswer { sent: true });
                    out.push(self.content("{}".into()));
                }
                _ => {}
            },
            StreamEvent::MessageDelta { delta, usage } => {
                if let Some(usage) = usage {
                    self.usage.update(usage);
                }
                // There may be several; the one with the stop reason finishes the choice.
                if let Some(reason) = delta.stop_reason.as_deref()
                    && !self.finished
                {
                    out.push(self.finish(Some(reason)));
                }
            }
            StreamEvent::MessageStop => {
                if !self.finished {
                    out.push(self.finish(None));
                }
                out.push(ChatChunk {
                    id: self.id.clone(),
                    model: self.model.clone(),
                    created: self.created,
                    choices: Vec::new(),
                    usage: Some(self.usage.into()),
                    system_fingerprint: None,
                });
                done = true;
            }
            StreamEvent::Ping | StreamEvent::Unknown => {}
            StreamEvent::Error { error } => return Err(stream_error(&error, data)),
        }
        Ok(Step { chunks: out, done })
    }
}

/// An `error` event as the error it would have been before the stream began: its type's HTTP
/// status (an `overloaded_error` is 529, i.e. unavailable), message and type kept.
fn stream_error(error: &StreamError, data: &str) -> Error {
    let status = match error.kind.as_str() {
        "invalid_request_error" => 400,
        "authentication_error" => 401,
        "billing_error" => 402,
        "permission_error" => 403,
        "not_found_error" => 404,
        "request_too_large" => 413,
        "rate_limit_error" => 429,
        "api_error" => 500,
        "timeout_error" => 504,
        "overloaded_error" => 529,
        _ => {
            let message = if error.message.is_empty() {
                "the provider's stream reported an error".to_string()
            } else {
                format!("the provider's stream reported an error: {}", error.message)
            };
            let e = Error::bad_gateway(message);
            return if error.kind.is_empty() {
                e
            } else {
                e.with_code(error.kind.clone())
            };
        }
    };
    upstream_error(status, &bytes::Bytes::from(data.to_string()))
}

type EventStream = Pin<Box<dyn Stream<Item = Result<Event, Error>> + Send>>;

struct Pump {
    events: EventStream,
    state: StreamState,
    pending: VecDeque<ChatChunk>,
    done: bool,
}

/// Chunks from Anthropic's SSE events. The stream ends after `message_stop`; an `error` event,
/// a broken connection or an end before `message_stop` ends it with an `Err` item.
fn translate_stream<S>(events: S, state: StreamState, log_raw: bool) -> ChunkStream
where
    S: Stream<Item = Result<Event, Error>> + Send + 'static,
{
    let pump = Pump {
        events: Box::pin(events),
        state,
        pending: VecDeque::new(),
        done: false,
    };
    let stream = futures_util::stream::unfold(Some(pump), move |pump| async move {
        let mut pump = pump?;
        loop {
            if let Some(chunk) = pump.pending.pop_front() {
                return Some((Ok(chunk), Some(pump)));
            }
            if pump.done {
                super::http::finish_in_background(pump.events);
                return None;
            }
            let event = match pump.events.next().await {
                None => return Some((Err(stream_cut()), None)),
                Some(Err(e)) => return Some((Err(e), None)),
                Some(Ok(ev)) => ev,
            };
            let data = event.data.trim();
            if log_raw {
                tracing::info!(target: "ai_api::raw", event = %event.event, data, "upstream stream event");
            }
            if data.is_empty() {
                continue;
            }
            match pump.state.on_event(data) {
                Ok(Step { chunks, done }) => {
                    pump.pending.extend(chunks);
                    pump.done = done;
                }
                Err(e) => return Some((Err(e), None)),
            }
        }
    });
    Box::pin(stream)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::providers::http::HttpClient;
    use axum::Router;
    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode, Uri};
    use axum::response::{IntoResponse, Response};
    use eventsource_stream::Eventsource;
    use parking_lot::Mutex;

    use super::*;
    use crate::core::error::ErrorKind;
    use crate::core::types::{EmbeddingInput, ImageUrl};

    const TEXT_RESPONSE: &str = include_str!("../../tests/fixtures/anthropic/text_response.json");
    const TEXT_STREAM: &str = include_str!("../../tests/fixtures/anthropic/text_stream.sse");
    const TOOL_RESPONSE: &str =
        include_str!("../../tests/fixtures/anthropic/tool_use_response.json");
    const TOOL_STREAM: &str = include_str!("../../tests/fixtures/anthropic/tool_use_stream.sse");
    const THINKING_STREAM: &str =
        include_str!("../../tests/fixtures/anthropic/thinking_stream.sse");
    const ERROR_MIDSTREAM: &str =
        include_str!("../../tests/fixtures/anthropic/error_midstream.sse");
    const CUT_STREAM: &str = include_str!("../../tests/fixtures/anthropic/cut_stream.sse");
    const ERROR_OVERLOADED: &str =
        include_str!("../../tests/fixtures/anthropic/error_overloaded.json");
    const ERROR_INVALID: &str =
        include_str!("../../tests/fixtures/anthropic/error_invalid_request.json");

    const MODEL: &str = "claude-sonnet-4-20250514";

    // --- helpers ------------------------------------------------------------------------

    fn request(messages: Vec<Message>) -> ChatRequest {
        ChatRequest {
            model: "claude".into(),
            messages,
            ..ChatRequest::default()
        }
    }

    fn user(text: &str) -> Message {
        Message::text(Role::User, text)
    }

    fn tool_result(id: &str, text: &str) -> Message {
        Message {
            tool_call_id: Some(id.into()),
            ..Message::text(Role::Tool, text)
        }
    }

    fn assistant_calls(text: Option<&str>, calls: &[(&str, &str, &str)]) -> Message {
        Message {
            role: Role::Assistant,
            content: text.map(|t| Content::Text(t.into())),
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

    fn weather_tool() -> Tool {
        Tool {
            name: "get_weather".into(),
            description: Some("Get the current weather in a given location".into()),
            parameters: Some(json!({
                "type": "object",
                "properties": {"location": {"type": "string"}},
                "required": ["location"]
            })),
            strict: Some(true),
        }
    }

    fn body_for(req: &ChatRequest, model: &str) -> Value {
        Value::Object(build_request(req, model, false).unwrap().body)
    }

    fn body(req: &ChatRequest) -> Value {
        body_for(req, MODEL)
    }

    /// An SSE transcript as the event stream `sse_events` yields, delivered in small pieces so
    /// events straddle reads as they do over a network.
    fn events(transcript: &str) -> impl Stream<Item = Result<Event, Error>> + Send + 'static {
        let pieces: Vec<Result<Bytes, std::io::Error>> = transcript
            .as_bytes()
            .chunks(37)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        futures_util::stream::iter(pieces)
            .eventsource()
            .map(|r| r.map_err(|e| Error::bad_gateway(e.to_string())))
    }

    async fn run_stream(transcript: &str, json_mode: bool) -> Vec<Result<ChatChunk, Error>> {
        translate_stream(events(transcript), StreamState::new(json_mode), false)
            .collect()
            .await
    }

    async fn ok_chunks(transcript: &str, json_mode: bool) -> Vec<ChatChunk> {
        run_stream(transcript, json_mode)
            .await
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
    }

    /// A whole answer, with tool call arguments normalized (whitespace may differ between a
    /// streamed input and a re-encoded one).
    #[derive(Debug, PartialEq)]
    struct Assembled {
        id: String,
        model: String,
        content: Option<String>,
        tool_calls: Vec<(String, String, Value)>,
        finish: Option<FinishReason>,
        usage: Option<Usage>,
    }

    fn reassemble(chunks: &[ChatChunk]) -> Assembled {
        let mut content: Option<String> = None;
        let mut calls: BTreeMap<u32, (String, String, String)> = BTreeMap::new();
        let mut finish = None;
        let mut usage = None;
        for c in chunks {
            if c.choices.is_empty() {
                assert!(c.usage.is_some(), "a chunk without choices carries usage");
                usage = c.usage;
            }
            for choice in &c.choices {
                if let Some(t) = &choice.delta.content {
                    content.get_or_insert_default().push_str(t);
                }
                for d in &choice.delta.tool_calls {
                    let e = calls.entry(d.index).or_default();
                    if let Some(id) = &d.id {
                        e.0 = id.clone();
                    }
                    if let Some(name) = &d.name {
                        e.1 = name.clone();
                    }
                    if let Some(args) = &d.arguments {
                        e.2.push_str(args);
                    }
                }
                if choice.finish_reason.is_some() {
                    assert!(finish.is_none(), "one finish reason per stream");
                    finish = choice.finish_reason;
                }
            }
        }
        let indices: Vec<u32> = calls.keys().copied().collect();
        assert_eq!(indices, (0..calls.len() as u32).collect::<Vec<_>>());
        Assembled {
            id: chunks[0].id.clone(),
            model: chunks[0].model.clone(),
            content,
            tool_calls: calls
                .into_values()
                .map(|(id, name, args)| (id, name, serde_json::from_str(&args).unwrap()))
                .collect(),
            finish,
            usage,
        }
    }

    fn assembled_response(r: &ChatResponse) -> Assembled {
        let choice = &r.choices[0];
        Assembled {
            id: r.id.clone(),
            model: r.model.clone(),
            content: choice.message.content.as_ref().map(Content::text),
            tool_calls: choice
                .message
                .tool_calls
                .iter()
                .map(|t| {
                    (
                        t.id.clone(),
                        t.name.clone(),
                        serde_json::from_str(&t.arguments).unwrap(),
                    )
                })
                .collect(),
            finish: Some(choice.finish_reason),
            usage: r.usage,
        }
    }

    fn parse_response(json: &str, json_mode: bool) -> ChatResponse {
        response_from_wire(serde_json::from_str(json).unwrap(), json_mode)
    }

    // --- request translation ------------------------------------------------------------

    #[test]
    fn system_and_developer_messages_become_one_system_prompt() {
        let req = request(vec![
            Message::text(Role::System, "You are terse."),
            user("Hi"),
            Message::text(Role::Developer, "Answer in French."),
            user("Bonjour?"),
        ]);
        let b = body(&req);
        assert_eq!(b["system"], "You are terse.\n\nAnswer in French.");
        // With the developer message hoisted, the two user turns are one.
        assert_eq!(
            b["messages"],
            json!([{"role": "user", "content": [
                {"type": "text", "text": "Hi"},
                {"type": "text", "text": "Bonjour?"}
            ]}])
        );
        assert_eq!(b["model"], MODEL);
        assert!(b.get("stream").is_none());

        let no_system = body(&request(vec![user("Hi")]));
        assert!(no_system.get("system").is_none());
        assert_eq!(
            no_system["messages"],
            json!([{"role": "user", "content": "Hi"}])
        );
    }

    #[test]
    fn tool_calls_and_results_become_tool_use_and_merged_tool_result_turns() {
        let req = request(vec![
            user("Weather in Paris and Rome?"),
            assistant_calls(
                Some(""),
                &[
                    ("call_1", "get_weather", r#"{"location":"Paris"}"#),
                    ("call_2", "get_weather", r#"{"location":"Rome"}"#),
                ],
            ),
            tool_result("call_1", "18C"),
            tool_result("call_2", "21C"),
            user("And tomorrow?"),
            Message::text(Role::Assistant, "Let me check."),
            Message::text(Role::Assistant, "Sunny."),
        ]);
        let b = body(&req);
        assert_eq!(
            b["messages"],
            json!([
                {"role": "user", "content": "Weather in Paris and Rome?"},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"location": "Paris"}},
                    {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {"location": "Rome"}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
                    {"type": "tool_result", "tool_use_id": "call_2", "content": "21C"},
                    {"type": "text", "text": "And tomorrow?"}
                ]},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Let me check."},
                    {"type": "text", "text": "Sunny."}
                ]}
            ])
        );
    }

    #[test]
    fn tool_results_go_first_in_their_turn_and_empty_arguments_are_an_empty_object() {
        let req = request(vec![
            user("Ping it"),
            assistant_calls(Some("Pinging."), &[("call_9", "ping", "")]),
            user("(note: the host is slow)"),
            tool_result("call_9", "pong"),
        ]);
        let b = body(&req);
        assert_eq!(
            b["messages"][1]["content"],
            json!([
                {"type": "text", "text": "Pinging."},
                {"type": "tool_use", "id": "call_9", "name": "ping", "input": {}}
            ])
        );
        assert_eq!(
            b["messages"][2]["content"],
            json!([
                {"type": "tool_result", "tool_use_id": "call_9", "content": "pong"},
                {"type": "text", "text": "(note: the host is slow)"}
            ])
        );
    }

    #[test]
    fn invalid_tool_arguments_are_a_bad_request_naming_the_message() {
        let req = request(vec![
            user("Hi"),
            assistant_calls(None, &[("call_1", "get_weather", "{\"location\": ")]),
            tool_result("call_1", "?"),
        ]);
        let e = build_request(&req, MODEL, false).unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadRequest);
        assert!(e.message.contains("messages[1]"), "{}", e.message);
        assert!(e.message.contains("get_weather"), "{}", e.message);
        assert_eq!(e.param.as_deref(), Some("messages[1].tool_calls"));

        let not_object = request(vec![
            user("Hi"),
            assistant_calls(None, &[("call_1", "f", "[1, 2]")]),
        ]);
        let e = build_request(&not_object, MODEL, false).unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadRequest);
        assert!(e.message.contains("JSON object"), "{}", e.message);
    }

    #[test]
    fn images_become_base64_or_url_sources() {
        let image = |url: &str| {
            ContentPart::Image(ImageUrl {
                url: url.into(),
                detail: Some("high".into()),
            })
        };
        let req = request(vec![Message {
            content: Some(Content::Parts(vec![
                ContentPart::Text("What is in these?".into()),
                image("data:image/png;base64,iVBORw0KGgo="),
                image("https://example.com/cat.jpg"),
            ])),
            ..user("")
        }]);
        assert_eq!(
            body(&req)["messages"][0]["content"],
            json!([
                {"type": "text", "text": "What is in these?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}
            ])
        );

        for bad in [
            "ftp://example.com/cat.jpg",
            "data:image/png,notbase64",
            "data:;base64,AAAA",
        ] {
            let req = request(vec![Message {
                content: Some(Content::Parts(vec![image(bad)])),
                ..user("")
            }]);
            let e = build_request(&req, MODEL, false).unwrap_err();
            assert_eq!(e.kind, ErrorKind::BadRequest, "{bad}");
            assert!(e.message.starts_with("messages[0]"), "{bad}: {}", e.message);
        }
    }

    #[test]
    fn an_empty_user_turn_is_refused_before_calling_anthropic() {
        let e = build_request(&request(vec![user("")]), MODEL, false).unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadRequest);
        assert!(e.message.contains("messages[0]"), "{}", e.message);
        // Merged with a non-empty neighbour, an empty message is harmless.
        let b = body(&request(vec![user(""), user("Hi")]));
        assert_eq!(b["messages"], json!([{"role": "user", "content": "Hi"}]));
    }

    #[test]
    fn tools_and_tool_choice_translate() {
        let ping = Tool {
            name: "ping".into(),
            description: None,
            parameters: None,
            strict: None,
        };
        let base = ChatRequest {
            tools: vec![weather_tool(), ping],
            ..request(vec![user("Hi")])
        };
        let b = body(&base);
        assert_eq!(
            b["tools"],
            json!([
                {"name": "get_weather", "description": "Get the current weather in a given location",
                 "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}},
                {"name": "ping", "input_schema": {"type": "object", "properties": {}}}
            ])
        );
        assert!(b.get("tool_choice").is_none());

        let cases = [
            (Some(ToolChoice::Auto), None, json!({"type": "auto"})),
            (Some(ToolChoice::Required), None, json!({"type": "any"})),
            (
                Some(ToolChoice::Function("get_weather".into())),
                None,
                json!({"type": "tool", "name": "get_weather"}),
            ),
            (Some(ToolChoice::None), None, json!({"type": "none"})),
            (
                None,
                Some(false),
                json!({"type": "auto", "disable_parallel_tool_use": true}),
            ),
            (
                Some(ToolChoice::Required),
                Some(false),
                json!({"type": "any", "disable_parallel_tool_use": true}),
            ),
            (Some(ToolChoice::None), Some(false), json!({"type": "none"})),
            (Some(ToolChoice::Auto), Some(true), json!({"type": "auto"})),
        ];
        for (choice, parallel, expected) in cases {
            let req = ChatRequest {
                tool_choice: choice.clone(),
                parallel_tool_calls: parallel,
                ..base.clone()
            };
            assert_eq!(
                body(&req)["tool_choice"],
                expected,
                "{choice:?} {parallel:?}"
            );
        }

        // No tools: no tools and no tool_choice, whatever the choice says.
        let req = ChatRequest {
            tool_choice: Some(ToolChoice::Auto),
            ..request(vec![user("Hi")])
        };
        let b = body(&req);
        assert!(b.get("tools").is_none() && b.get("tool_choice").is_none());
    }

    #[test]
    fn max_tokens_defaults_per_model_and_is_kept_when_given() {
        assert_eq!(default_max_tokens("claude-3-haiku-20240307"), 4096);
        assert_eq!(default_max_tokens("claude-3-opus-latest"), 4096);
        assert_eq!(default_max_tokens("claude-2.1"), 4096);
        assert_eq!(default_max_tokens("claude-3-5-haiku-20241022"), 8192);
        assert_eq!(default_max_tokens("claude-3-7-sonnet-20250219"), 8192);
        assert_eq!(default_max_tokens("claude-sonnet-4-20250514"), 8192);
        assert_eq!(default_max_tokens("claude-opus-4-1-20250805"), 8192);

        let req = request(vec![user("Hi")]);
        assert_eq!(
            body_for(&req, "claude-3-haiku-20240307")["max_tokens"],
            4096
        );
        assert_eq!(body_for(&req, MODEL)["max_tokens"], 8192);
        let given = ChatRequest {
            max_tokens: Some(100),
            ..req.clone()
        };
        assert_eq!(body(&given)["max_tokens"], 100);

        // Extended thinking: the default leaves room for the budget.
        let mut thinking = req.clone();
        thinking.extra.insert(
            "thinking".into(),
            json!({"type": "enabled", "budget_tokens": 2000}),
        );
        let b = body(&thinking);
        assert_eq!(b["max_tokens"], 10192);
        assert_eq!(
            b["thinking"],
            json!({"type": "enabled", "budget_tokens": 2000})
        );

        let mut effort = req.clone();
        effort
            .extra
            .insert("reasoning_effort".into(), json!("medium"));
        let b = body(&effort);
        assert_eq!(
            b["thinking"],
            json!({"type": "enabled", "budget_tokens": 2048})
        );
        assert_eq!(b["max_tokens"], 8192 + 2048);
        assert!(b.get("reasoning_effort").is_none());
    }

    #[test]
    fn sampling_parameters_translate_and_unsupported_ones_are_dropped() {
        let mut req = ChatRequest {
            stop: vec!["END".into(), "STOP".into()],
            temperature: Some(1.7),
            top_p: Some(0.9),
            user: Some("user-42".into()),
            seed: Some(7),
            presence_penalty: Some(0.5),
            frequency_penalty: Some(-0.5),
            n: Some(1),
            ..request(vec![user("Hi")])
        };
        req.extra.insert("top_k".into(), json!(5));
        req.extra.insert("logprobs".into(), json!(true));
        req.extra.insert("model".into(), json!("someone-else"));
        req.extra.insert("service_tier".into(), json!("flex"));
        let b = body(&req);
        assert_eq!(b["stop_sequences"], json!(["END", "STOP"]));
        assert_eq!(b["temperature"], 1.0);
        assert_eq!(b["top_p"], 0.9);
        assert_eq!(b["metadata"], json!({"user_id": "user-42"}));
        assert_eq!(b["top_k"], 5);
        assert_eq!(
            b["model"], MODEL,
            "pass-through never overrides the translation"
        );
        for absent in [
            "seed",
            "presence_penalty",
            "frequency_penalty",
            "n",
            "logprobs",
            "stop",
            "user",
            "service_tier",
        ] {
            assert!(b.get(absent).is_none(), "{absent} should not be sent: {b}");
        }

        let low = ChatRequest {
            temperature: Some(0.3),
            ..request(vec![user("Hi")])
        };
        assert_eq!(body(&low)["temperature"], 0.3);

        // OpenAI-style metadata is reduced to what Anthropic accepts.
        let mut meta = request(vec![user("Hi")]);
        meta.extra.insert(
            "metadata".into(),
            json!({"user_id": "u-1", "purpose": "test"}),
        );
        assert_eq!(body(&meta)["metadata"], json!({"user_id": "u-1"}));
    }

    #[test]
    fn more_than_one_choice_is_refused() {
        let req = ChatRequest {
            n: Some(2),
            ..request(vec![user("Hi")])
        };
        let e = build_request(&req, MODEL, false).unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadRequest);
        assert_eq!(e.param.as_deref(), Some("n"));
        assert!(e.message.contains("anthropic"), "{}", e.message);
    }

    #[test]
    fn json_schema_becomes_a_forced_tool() {
        let schema = json!({
            "type": "object",
            "properties": {"temperature": {"type": "number"}},
            "required": ["temperature"]
        });
        let req = ChatRequest {
            response_format: Some(ResponseFormat::JsonSchema {
                name: "weather".into(),
                description: None,
                schema: Some(schema.clone()),
                strict: Some(true),
            }),
            ..request(vec![user("Weather in Paris as JSON")])
        };
        let prepared = build_request(&req, MODEL, false).unwrap();
        assert!(prepared.json_mode);
        let b = Value::Object(prepared.body);
        assert_eq!(b["tools"].as_array().unwrap().len(), 1);
        assert_eq!(b["tools"][0]["name"], JSON_TOOL_NAME);
        assert_eq!(b["tools"][0]["input_schema"], schema);
        assert_eq!(
            b["tool_choice"],
            json!({"type": "tool", "name": JSON_TOOL_NAME})
        );
        assert!(b.get("response_format").is_none());

        // json_object: a permissive object schema.
        let obj = ChatRequest {
            response_format: Some(ResponseFormat::JsonObject),
            ..req.clone()
        };
        let b = body(&obj);
        assert_eq!(
            b["tools"][0]["input_schema"],
            json!({"type": "object", "additionalProperties": true, "properties": {}})
        );
        assert_eq!(b["tool_choice"]["name"], JSON_TOOL_NAME);

        // With the client's own tools: call one of them or answer through the JSON tool.
        let with_tools = ChatRequest {
            tools: vec![weather_tool()],
            ..req.clone()
        };
        let b = body(&with_tools);
        assert_eq!(b["tools"][0]["name"], "get_weather");
        assert_eq!(b["tools"][1]["name"], JSON_TOOL_NAME);
        assert_eq!(b["tool_choice"], json!({"type": "any"}));

        // tool_choice none with the client's tools: only the JSON tool may answer.
        let none = ChatRequest {
            tool_choice: Some(ToolChoice::None),
            ..with_tools.clone()
        };
        assert_eq!(
            body(&none)["tool_choice"],
            json!({"type": "tool", "name": JSON_TOOL_NAME})
        );

        // Extended thinking refuses forced tools: auto.
        let mut thinking = req.clone();
        thinking.extra.insert(
            "thinking".into(),
            json!({"type": "enabled", "budget_tokens": 1024}),
        );
        assert_eq!(body(&thinking)["tool_choice"], json!({"type": "auto"}));

        // Text is no format at all.
        let text = ChatRequest {
            response_format: Some(ResponseFormat::Text),
            ..request(vec![user("Hi")])
        };
        let prepared = build_request(&text, MODEL, false).unwrap();
        assert!(!prepared.json_mode);
        assert!(!prepared.body.contains_key("tools"));
    }

    #[test]
    fn messages_url_appends_the_path_once() {
        assert_eq!(
            messages_url(DEFAULT_API_BASE),
            "https://api.anthropic.com/v1/messages"
        );
        assert_eq!(
            messages_url("http://proxy:8080/"),
            "http://proxy:8080/v1/messages"
        );
        assert_eq!(
            messages_url("https://api.anthropic.com/v1"),
            "https://api.anthropic.com/v1/messages"
        );
        assert_eq!(
            messages_url("https://gw.example/anthropic/v1/messages"),
            "https://gw.example/anthropic/v1/messages"
        );
    }

    // --- response translation -----------------------------------------------------------

    #[test]
    fn a_text_answer_translates_with_cache_usage() {
        let r = parse_response(TEXT_RESPONSE, false);
        assert_eq!(r.id, "msg_01XFDUDYJgAACzvnptvVoYEL");
        assert_eq!(r.model, MODEL);
        assert!(r.created > 0);
        assert_eq!(r.choices.len(), 1);
        let c = &r.choices[0];
        assert_eq!(c.message.role, Role::Assistant);
        assert_eq!(c.message.content, Some(Content::Text("Hello!".into())));
        assert!(c.message.tool_calls.is_empty());
        assert_eq!(c.finish_reason, FinishReason::Stop);
        let u = r.usage.unwrap();
        // 25 uncached + 1800 read from cache + 200 written to cache.
        assert_eq!(u.prompt_tokens, 2025);
        assert_eq!(u.completion_tokens, 15);
        assert_eq!(u.total_tokens, 2040);
        assert_eq!(u.cached_prompt_tokens, 1800);
        assert_eq!(u.cache_creation_tokens, 200);
    }

    #[test]
    fn a_tool_use_answer_translates_to_tool_calls() {
        let r = parse_response(TOOL_RESPONSE, false);
        let c = &r.choices[0];
        assert_eq!(
            c.message.content,
            Some(Content::Text(
                "Okay, let's check the weather for San Francisco, CA:".into()
            ))
        );
        assert_eq!(c.message.tool_calls.len(), 1);
        let call = &c.message.tool_calls[0];
        assert_eq!(call.id, "toolu_01T1x1fJ34qAmk2tNTrN7Up6");
        assert_eq!(call.name, "get_weather");
        let args: Value = serde_json::from_str(&call.arguments).unwrap();
        assert_eq!(
            args,
            json!({"location": "San Francisco, CA", "unit": "fahrenheit"})
        );
        assert_eq!(c.finish_reason, FinishReason::ToolCalls);
        let u = r.usage.unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens), (472, 89));
        assert_eq!((u.cached_prompt_tokens, u.cache_creation_tokens), (0, 0));
    }

    #[test]
    fn stop_reasons_map_to_finish_reasons() {
        let rows = [
            (Some("end_turn"), false, FinishReason::Stop),
            (Some("stop_sequence"), false, FinishReason::Stop),
            (Some("max_tokens"), false, FinishReason::Length),
            (Some("max_tokens"), true, FinishReason::Length),
            (
                Some("model_context_window_exceeded"),
                false,
                FinishReason::Length,
            ),
            (Some("tool_use"), true, FinishReason::ToolCalls),
            (Some("tool_use"), false, FinishReason::Stop),
            (Some("refusal"), false, FinishReason::ContentFilter),
            (Some("pause_turn"), false, FinishReason::Stop),
            (None, false, FinishReason::Stop),
        ];
        for (reason, calls, expected) in rows {
            assert_eq!(finish_reason(reason, calls), expected, "{reason:?} {calls}");
        }
        let refusal = parse_response(
            r#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-20250514",
                "content":[],"stop_reason":"refusal","stop_sequence":null,
                "usage":{"input_tokens":10,"output_tokens":0}}"#,
            false,
        );
        assert_eq!(
            refusal.choices[0].finish_reason,
            FinishReason::ContentFilter
        );
        assert_eq!(refusal.choices[0].message.content, None);
    }

    #[test]
    fn usage_tolerates_absent_and_null_cache_counts() {
        let u: Usage = serde_json::from_value::<WireUsage>(json!({
            "input_tokens": 10, "output_tokens": 5, "cache_creation_input_tokens": null
        }))
        .unwrap()
        .into();
        assert_eq!(
            (u.prompt_tokens, u.completion_tokens, u.total_tokens),
            (10, 5, 15)
        );
        assert_eq!((u.cached_prompt_tokens, u.cache_creation_tokens), (0, 0));
    }

    #[test]
    fn the_json_tool_answers_as_text_with_finish_stop() {
        let json = r#"{"id":"msg_01JsonAnswer","type":"message","role":"assistant",
            "model":"claude-sonnet-4-20250514",
            "content":[{"type":"tool_use","id":"toolu_01Json","name":"json_tool_call",
                        "input":{"temperature":21.5}}],
            "stop_reason":"tool_use","stop_sequence":null,
            "usage":{"input_tokens":380,"output_tokens":40}}"#;
        let r = parse_response(json, true);
        let c = &r.choices[0];
        assert!(c.message.tool_calls.is_empty());
        assert_eq!(c.finish_reason, FinishReason::Stop);
        let text = c.message.content.as_ref().unwrap().text();
        assert_eq!(
            serde_json::from_str::<Value>(&text).unwrap(),
            json!({"temperature": 21.5})
        );
        // Outside JSON mode the same block is an ordinary tool call.
        let r = parse_response(json, false);
        assert_eq!(r.choices[0].message.tool_calls[0].name, JSON_TOOL_NAME);
        assert_eq!(r.choices[0].finish_reason, FinishReason::ToolCalls);
    }

    // --- streaming ----------------------------------------------------------------------

    #[tokio::test]
    async fn a_streamed_text_answer_translates_event_by_event() {
        let chunks = ok_chunks(TEXT_STREAM, false).await;
        assert_eq!(chunks.len(), 5, "{chunks:#?}");
        for c in &chunks {
            assert_eq!(c.id, "msg_01XFDUDYJgAACzvnptvVoYEL");
            assert_eq!(c.model, MODEL);
            assert_eq!(c.created, chunks[0].created);
            assert!(c.created > 0);
        }
        assert_eq!(chunks[0].choices[0].delta.role, Some(Role::Assistant));
        assert_eq!(chunks[1].choices[0].delta.content.as_deref(), Some("Hello"));
        assert_eq!(chunks[2].choices[0].delta.content.as_deref(), Some("!"));
        assert_eq!(chunks[3].choices[0].finish_reason, Some(FinishReason::Stop));
        assert!(chunks[4].choices.is_empty());
        let u = chunks[4].usage.unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens), (2025, 15));
        assert_eq!(
            (u.cached_prompt_tokens, u.cache_creation_tokens),
            (1800, 200)
        );
    }

    #[tokio::test]
    async fn a_streamed_tool_call_carries_id_name_and_argument_pieces() {
        let chunks = ok_chunks(TOOL_STREAM, false).await;
        let deltas: Vec<&ToolCallDelta> = chunks
            .iter()
            .flat_map(|c| &c.choices)
            .flat_map(|c| &c.delta.tool_calls)
            .collect();
        assert_eq!(deltas[0].index, 0);
        assert_eq!(
            deltas[0].id.as_deref(),
            Some("toolu_01T1x1fJ34qAmk2tNTrN7Up6")
        );
        assert_eq!(deltas[0].name.as_deref(), Some("get_weather"));
        assert!(deltas[1..].iter().all(|d| d.index == 0 && d.id.is_none()));
        // Eight non-empty input_json_delta pieces (the empty first one is not sent).
        assert_eq!(deltas.len(), 1 + 8);
        let args: String = deltas
            .iter()
            .filter_map(|d| d.arguments.as_deref())
            .collect();
        assert_eq!(
            serde_json::from_str::<Value>(&args).unwrap(),
            json!({"location": "San Francisco, CA", "unit": "fahrenheit"})
        );
        let a = reassemble(&chunks);
        assert_eq!(a.finish, Some(FinishReason::ToolCalls));
    }

    #[tokio::test]
    async fn streamed_and_whole_answers_reassemble_alike() {
        for (stream, whole) in [(TEXT_STREAM, TEXT_RESPONSE), (TOOL_STREAM, TOOL_RESPONSE)] {
            let streamed = reassemble(&ok_chunks(stream, false).await);
            let whole = assembled_response(&parse_response(whole, false));
            assert_eq!(streamed, whole);
        }
    }

    #[tokio::test]
    async fn thinking_is_not_passed_on() {
        let chunks = ok_chunks(THINKING_STREAM, false).await;
        let a = reassemble(&chunks);
        assert_eq!(a.content.as_deref(), Some("27 * 453 = 12,231"));
        assert!(a.tool_calls.is_empty());
        assert_eq!(a.finish, Some(FinishReason::Stop));
        // This transcript reports no usage; the usage chunk still ends the stream.
        assert_eq!(a.usage, Some(Usage::default()));
        assert!(chunks.iter().flat_map(|c| &c.choices).all(|c| {
            c.delta
                .content
                .as_deref()
                .is_none_or(|t| !t.contains("step by step"))
        }));
        // role, text, finish, usage: nothing for the thinking block or its signature.
        assert_eq!(chunks.len(), 4, "{chunks:#?}");
    }

    #[tokio::test]
    async fn an_error_event_ends_the_stream_with_its_error() {
        let items = run_stream(ERROR_MIDSTREAM, false).await;
        assert_eq!(items.len(), 3, "{items:#?}");
        assert_eq!(
            items[0].as_ref().unwrap().choices[0].delta.role,
            Some(Role::Assistant)
        );
        assert_eq!(
            items[1].as_ref().unwrap().choices[0]
                .delta
                .content
                .as_deref(),
            Some("Once upon")
        );
        let e = items[2].as_ref().unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unavailable);
        assert_eq!(e.message, "Overloaded");
        assert_eq!(e.code.as_deref(), Some("overloaded_error"));
    }

    #[test]
    fn stream_error_events_keep_their_kind() {
        let err = |kind: &str| {
            let data =
                json!({"type": "error", "error": {"type": kind, "message": "boom"}}).to_string();
            let mut s = StreamState::new(false);
            match s.on_event(&data) {
                Err(e) => e,
                Ok(_) => panic!("an error event must be an error"),
            }
        };
        assert_eq!(err("overloaded_error").kind, ErrorKind::Unavailable);
        assert_eq!(err("rate_limit_error").kind, ErrorKind::Upstream(429));
        assert_eq!(err("api_error").kind, ErrorKind::Upstream(500));
        assert_eq!(err("invalid_request_error").kind, ErrorKind::Upstream(400));
        let unknown = err("brand_new_error");
        assert_eq!(unknown.kind, ErrorKind::BadGateway);
        assert!(unknown.message.contains("boom"), "{}", unknown.message);
        assert_eq!(unknown.code.as_deref(), Some("brand_new_error"));
    }

    #[tokio::test]
    async fn a_stream_cut_before_message_stop_ends_with_an_error() {
        let items = run_stream(CUT_STREAM, false).await;
        let (last, rest) = items.split_last().unwrap();
        let e = last.as_ref().unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadGateway);
        assert_eq!(e.message, stream_cut().message);
        let text: String = rest
            .iter()
            .map(|r| r.as_ref().unwrap())
            .flat_map(|c| &c.choices)
            .filter_map(|c| c.delta.content.as_deref())
            .collect();
        assert_eq!(text, "Hello there");
        assert!(
            rest.iter()
                .all(|r| r.as_ref().unwrap().choices[0].finish_reason.is_none())
        );
    }

    #[tokio::test]
    async fn garbage_and_unknown_events() {
        let unknown = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"model\":\"m\",\"usage\":{\"input_tokens\":3}}}\n\n\
                       event: brand_new\ndata: {\"type\":\"brand_new\",\"x\":1}\n\n\
                       event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"max_tokens\"},\"usage\":{\"output_tokens\":7}}\n\n\
                       event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
        let a = reassemble(&ok_chunks(unknown, false).await);
        assert_eq!(a.finish, Some(FinishReason::Length));
        assert_eq!(a.usage, Some(Usage::new(3, 7)));

        let garbage = "event: message_start\ndata: not json\n\n";
        let items = run_stream(garbage, false).await;
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].as_ref().unwrap_err().kind, ErrorKind::BadGateway);
    }

    #[tokio::test]
    async fn message_stop_without_message_delta_still_finishes() {
        let t = "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_4\",\"model\":\"m\",\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n\n\
                 data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"Hi\"}}\n\n\
                 data: {\"type\":\"content_block_stop\",\"index\":0}\n\n\
                 data: {\"type\":\"message_stop\"}\n\n";
        let chunks = ok_chunks(t, false).await;
        let a = reassemble(&chunks);
        assert_eq!(a.content.as_deref(), Some("Hi"));
        assert_eq!(a.finish, Some(FinishReason::Stop));
        assert_eq!(a.usage, Some(Usage::new(3, 1)));
        assert!(chunks.last().unwrap().choices.is_empty());

        // A message_delta without a stop reason does not finish; the next one does.
        let t = "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_5\",\"model\":\"m\",\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n\n\
                 data: {\"type\":\"message_delta\",\"delta\":{},\"usage\":{\"output_tokens\":4}}\n\n\
                 data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"max_tokens\"},\"usage\":{\"output_tokens\":9}}\n\n\
                 data: {\"type\":\"message_stop\"}\n\n";
        let a = reassemble(&ok_chunks(t, false).await);
        assert_eq!(a.finish, Some(FinishReason::Length));
        assert_eq!(a.usage, Some(Usage::new(3, 9)));
    }

    #[tokio::test]
    async fn a_tool_call_without_input_streams_empty_object_arguments() {
        let t = "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_2\",\"model\":\"m\",\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n\n\
                 data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"ping\",\"input\":{}}}\n\n\
                 data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\"}}\n\n\
                 data: {\"type\":\"content_block_stop\",\"index\":0}\n\n\
                 data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_2\",\"name\":\"get_weather\",\"input\":{}}}\n\n\
                 data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"location\\\":\\\"Oslo\\\"}\"}}\n\n\
                 data: {\"type\":\"content_block_stop\",\"index\":1}\n\n\
                 data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\"},\"usage\":{\"output_tokens\":30}}\n\n\
                 data: {\"type\":\"message_stop\"}\n\n";
        let a = reassemble(&ok_chunks(t, false).await);
        assert_eq!(
            a.tool_calls,
            vec![
                ("toolu_1".into(), "ping".into(), json!({})),
                (
                    "toolu_2".into(),
                    "get_weather".into(),
                    json!({"location": "Oslo"})
                ),
            ]
        );
        assert_eq!(a.finish, Some(FinishReason::ToolCalls));
    }

    #[tokio::test]
    async fn a_streamed_json_tool_answer_is_content_with_finish_stop() {
        let t = "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_3\",\"model\":\"m\",\"usage\":{\"input_tokens\":380,\"output_tokens\":1}}}\n\n\
                 data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_j\",\"name\":\"json_tool_call\",\"input\":{}}}\n\n\
                 data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"temperature\\\"\"}}\n\n\
                 data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\": 21.5}\"}}\n\n\
                 data: {\"type\":\"content_block_stop\",\"index\":0}\n\n\
                 data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\"},\"usage\":{\"output_tokens\":40}}\n\n\
                 data: {\"type\":\"message_stop\"}\n\n";
        let a = reassemble(&ok_chunks(t, true).await);
        assert_eq!(a.content.as_deref(), Some("{\"temperature\": 21.5}"));
        assert!(a.tool_calls.is_empty());
        assert_eq!(a.finish, Some(FinishReason::Stop));

        // JSON mode without the JSON tool (e.g. thinking made the choice auto): the text,
        // held back, comes out with the finish reason.
        let plain = reassemble(&ok_chunks(TEXT_STREAM, true).await);
        assert_eq!(plain.content.as_deref(), Some("Hello!"));
        assert_eq!(plain.finish, Some(FinishReason::Stop));
    }

    // --- end to end against a fake Anthropic ----------------------------------------------

    #[derive(Debug, Clone)]
    struct Received {
        path: String,
        headers: HeaderMap,
        body: Value,
    }

    #[derive(Clone)]
    struct Fake {
        status: u16,
        content_type: &'static str,
        answer: Arc<String>,
        received: Arc<Mutex<Vec<Received>>>,
    }

    /// The top-level fields the Messages API accepts (it rejects any other).
    const ANTHROPIC_FIELDS: [&str; 15] = [
        "model",
        "messages",
        "max_tokens",
        "system",
        "stop_sequences",
        "temperature",
        "top_p",
        "top_k",
        "tools",
        "tool_choice",
        "metadata",
        "stream",
        "thinking",
        "service_tier",
        "container",
    ];

    fn anthropic_error(status: u16, kind: &str, message: &str) -> Response {
        (
            StatusCode::from_u16(status).unwrap(),
            [("content-type", "application/json")],
            json!({"type": "error", "error": {"type": kind, "message": message}}).to_string(),
        )
            .into_response()
    }

    /// Checks a request as Anthropic would, then answers the configured status and body.
    async fn fake_messages(
        State(fake): State<Fake>,
        uri: Uri,
        headers: HeaderMap,
        raw: Bytes,
    ) -> Response {
        let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
        fake.received.lock().push(Received {
            path: uri.path().to_string(),
            headers: headers.clone(),
            body: body.clone(),
        });
        if uri.path() != "/v1/messages" {
            return anthropic_error(404, "not_found_error", "Not found");
        }
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        if header("x-api-key") != Some("test-key") {
            return anthropic_error(401, "authentication_error", "invalid x-api-key");
        }
        if header("anthropic-version").is_none() {
            return anthropic_error(
                400,
                "invalid_request_error",
                "anthropic-version: header is required",
            );
        }
        if header("content-type") != Some("application/json") {
            return anthropic_error(400, "invalid_request_error", "content-type must be JSON");
        }
        let Some(obj) = body.as_object() else {
            return anthropic_error(400, "invalid_request_error", "body is not JSON");
        };
        if let Some(extra) = obj.keys().find(|k| !ANTHROPIC_FIELDS.contains(&k.as_str())) {
            return anthropic_error(
                400,
                "invalid_request_error",
                &format!("{extra}: Extra inputs are not permitted"),
            );
        }
        if body["max_tokens"].as_u64().is_none_or(|n| n == 0) || !body["model"].is_string() {
            return anthropic_error(400, "invalid_request_error", "max_tokens: Field required");
        }
        let roles: Vec<&str> = body["messages"]
            .as_array()
            .map(|m| m.iter().filter_map(|m| m["role"].as_str()).collect())
            .unwrap_or_default();
        let alternating = roles.first() == Some(&"user")
            && roles.windows(2).all(|w| w[0] != w[1])
            && roles.iter().all(|r| *r == "user" || *r == "assistant");
        if !alternating {
            return anthropic_error(
                400,
                "invalid_request_error",
                "messages: roles must alternate between \"user\" and \"assistant\"",
            );
        }
        (
            StatusCode::from_u16(fake.status).unwrap(),
            [("content-type", fake.content_type)],
            fake.answer.as_str().to_string(),
        )
            .into_response()
    }

    /// A fake Anthropic on 127.0.0.1:0 answering `status` with `answer`; its URL and record.
    async fn start_fake(
        status: u16,
        content_type: &'static str,
        answer: &str,
    ) -> (String, Arc<Mutex<Vec<Received>>>) {
        let fake = Fake {
            status,
            content_type,
            answer: Arc::new(answer.to_string()),
            received: Arc::default(),
        };
        let received = fake.received.clone();
        let app = Router::new().fallback(fake_messages).with_state(fake);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}"), received)
    }

    fn provider(api_base: &str, with_key: bool) -> AnthropicProvider {
        let key = if with_key {
            "      api_key: test-key\n"
        } else {
            ""
        };
        let yaml = format!(
            "model_list:\n  - model_name: claude\n    litellm_params:\n      model: anthropic/claude-sonnet-4-20250514\n{key}      api_base: {api_base}\n"
        );
        let loaded = crate::config::load_str(&yaml, "t", &|_| None).unwrap();
        let d = &loaded.config.deployments[0];
        AnthropicProvider::new(Upstream::new(d, HttpClient::new(0).unwrap(), false))
    }

    fn conversation() -> ChatRequest {
        ChatRequest {
            temperature: Some(1.5),
            seed: Some(42),
            stop: vec!["\n\nHuman:".into()],
            ..request(vec![
                Message::text(Role::System, "Be brief."),
                user("Hello"),
            ])
        }
    }

    #[tokio::test]
    async fn chat_end_to_end() {
        let (base, received) = start_fake(200, "application/json", TEXT_RESPONSE).await;
        let r = provider(&base, true).chat(&conversation()).await.unwrap();
        assert_eq!(
            r.choices[0].message.content,
            Some(Content::Text("Hello!".into()))
        );
        assert_eq!(r.choices[0].finish_reason, FinishReason::Stop);
        assert_eq!(r.usage.unwrap().prompt_tokens, 2025);

        let got = received.lock().clone();
        assert_eq!(got.len(), 1);
        let got = &got[0];
        assert_eq!(got.path, "/v1/messages");
        assert_eq!(got.headers["x-api-key"], "test-key");
        assert_eq!(got.headers["anthropic-version"], API_VERSION);
        assert!(got.headers.get("authorization").is_none());
        assert_eq!(
            got.body,
            json!({
                "model": MODEL,
                "max_tokens": 8192,
                "system": "Be brief.",
                "messages": [{"role": "user", "content": "Hello"}],
                "stop_sequences": ["\n\nHuman:"],
                "temperature": 1.0
            })
        );
    }

    #[tokio::test]
    async fn chat_stream_end_to_end() {
        let (base, received) = start_fake(200, "text/event-stream", TOOL_STREAM).await;
        let req = ChatRequest {
            tools: vec![weather_tool()],
            tool_choice: Some(ToolChoice::Required),
            ..request(vec![user("What is the weather like in San Francisco?")])
        };
        let stream = provider(&base, true).chat_stream(&req).await.unwrap();
        let chunks: Vec<ChatChunk> = stream
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()
            .unwrap();
        let a = reassemble(&chunks);
        assert_eq!(a, assembled_response(&parse_response(TOOL_RESPONSE, false)));

        let got = received.lock().clone();
        assert_eq!(got[0].path, "/v1/messages");
        assert_eq!(got[0].body["stream"], true);
        assert_eq!(got[0].body["tool_choice"], json!({"type": "any"}));
        assert_eq!(got[0].body["tools"][0]["name"], "get_weather");
        assert_eq!(got[0].headers["x-api-key"], "test-key");
    }

    #[tokio::test]
    async fn a_midstream_error_reaches_the_client_end_to_end() {
        let (base, _) = start_fake(200, "text/event-stream", ERROR_MIDSTREAM).await;
        let stream = provider(&base, true)
            .chat_stream(&request(vec![user("Tell me a story")]))
            .await
            .unwrap();
        let items: Vec<_> = stream.collect().await;
        let e = items.last().unwrap().as_ref().unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unavailable);
    }

    #[tokio::test]
    async fn upstream_errors_keep_their_status_and_message() {
        let rows = [
            (400, "invalid_request_error", ErrorKind::Upstream(400)),
            (401, "authentication_error", ErrorKind::Upstream(401)),
            (403, "permission_error", ErrorKind::Upstream(403)),
            (404, "not_found_error", ErrorKind::Upstream(404)),
            (413, "request_too_large", ErrorKind::Upstream(413)),
            (429, "rate_limit_error", ErrorKind::Upstream(429)),
            (500, "api_error", ErrorKind::Upstream(500)),
            (529, "overloaded_error", ErrorKind::Unavailable),
        ];
        for (status, kind, expected) in rows {
            let body = json!({"type": "error", "error": {"type": kind, "message": format!("{kind} happened")}})
                .to_string();
            let (base, _) = start_fake(status, "application/json", &body).await;
            let e = provider(&base, true)
                .chat(&request(vec![user("Hi")]))
                .await
                .unwrap_err();
            assert_eq!(e.kind, expected, "{status}");
            assert_eq!(e.message, format!("{kind} happened"));
            assert_eq!(e.code.as_deref(), Some(kind));
        }

        let (base, _) = start_fake(529, "application/json", ERROR_OVERLOADED).await;
        let e = provider(&base, true)
            .chat_stream(&request(vec![user("Hi")]))
            .await
            .err()
            .unwrap();
        assert_eq!(e.kind, ErrorKind::Unavailable);
        assert_eq!(e.message, "Overloaded");

        let (base, _) = start_fake(400, "application/json", ERROR_INVALID).await;
        let e = provider(&base, true)
            .chat(&request(vec![user("Hi")]))
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Upstream(400));
        assert!(
            e.message.starts_with("messages: roles must alternate"),
            "{}",
            e.message
        );
    }

    #[tokio::test]
    async fn a_missing_key_is_a_config_error_naming_its_variable() {
        let (base, received) = start_fake(200, "application/json", TEXT_RESPONSE).await;
        let e = provider(&base, false)
            .chat(&request(vec![user("Hi")]))
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Config);
        assert!(e.message.contains("ANTHROPIC_API_KEY"), "{}", e.message);
        assert!(received.lock().is_empty());
    }

    #[tokio::test]
    async fn embeddings_and_images_are_refused_naming_the_provider() {
        let p = provider("http://127.0.0.1:9", true);
        let e = p
            .embed(&EmbeddingRequest {
                model: "claude".into(),
                input: EmbeddingInput::Texts(vec!["hi".into()]),
                dimensions: None,
                encoding_format: None,
                user: None,
                extra: BTreeMap::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadRequest);
        assert!(e.message.contains("anthropic"), "{}", e.message);
        let e = p
            .generate_image(&ImageRequest {
                model: "claude".into(),
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
        assert!(e.message.contains("anthropic"), "{}", e.message);
    }
}
