//! The core's request and response types: what every door converts into and out of, and what
//! every provider translates. They know no wire format (neither OpenAI's JSON nor protobuf);
//! `serde_json::Value` appears only where the data itself is JSON (schemas, pass-through params).
//!
//! They derive `Serialize` for the raw-body logs (`log_raw_request_response`); that is a log
//! format, not a wire contract.
//!
//! Validation of a request's shape lives here once (`validate`), so both doors answer the same
//! 400 for the same mistake.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::Serialize;
use serde_json::Value;

use super::error::Error;

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    Developer,
    User,
    Assistant,
    Tool,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::System,
        Role::Developer,
        Role::User,
        Role::Assistant,
        Role::Tool,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::Developer => "developer",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                Error::bad_request(format!(
                    "invalid role {s:?}: expected one of {}",
                    Role::ALL.map(Role::as_str).join(", ")
                ))
                .with_param("messages.role")
            })
    }
}

/// A piece of message content.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ContentPart {
    Text(String),
    Image(ImageUrl),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImageUrl {
    /// https URL or `data:` URL.
    pub url: String,
    pub detail: Option<String>,
}

/// Message content: plain text or a list of parts (OpenAI accepts both).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

impl Content {
    /// [`Content::text`], taking the content: plain text moves out without a copy.
    pub fn into_text(self) -> String {
        match self {
            Content::Text(t) => t,
            parts => parts.text(),
        }
    }

    /// All the text of the content, parts joined without separator.
    pub fn text(&self) -> String {
        match self {
            Content::Text(t) => t.clone(),
            Content::Parts(parts) => parts
                .iter()
                .filter_map(|p| match p {
                    ContentPart::Text(t) => Some(t.as_str()),
                    ContentPart::Image(_) => None,
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Message {
    pub role: Role,
    pub content: Option<Content>,
    pub name: Option<String>,
    /// Assistant messages: calls the model made.
    pub tool_calls: Vec<ToolCall>,
    /// Tool messages: the call this answers.
    pub tool_call_id: Option<String>,
    /// Assistant answers: the model's refusal.
    pub refusal: Option<String>,
}

impl Message {
    pub fn text(role: Role, text: impl Into<String>) -> Self {
        Message {
            role,
            content: Some(Content::Text(text.into())),
            name: None,
            tool_calls: Vec::new(),
            tool_call_id: None,
            refusal: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// JSON-encoded arguments, as OpenAI carries them.
    pub arguments: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tool {
    pub name: String,
    pub description: Option<String>,
    /// JSON Schema of the arguments.
    pub parameters: Option<Value>,
    pub strict: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolChoice {
    None,
    Auto,
    Required,
    Function(String),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ResponseFormat {
    Text,
    JsonObject,
    JsonSchema {
        name: String,
        description: Option<String>,
        schema: Option<Value>,
        strict: Option<bool>,
    },
}

/// A chat completion request, as the core sees it.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct ChatRequest {
    /// The model group (`model_name`).
    pub model: String,
    pub messages: Vec<Message>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub max_tokens: Option<u32>,
    pub stop: Vec<String>,
    pub seed: Option<i64>,
    pub user: Option<String>,
    pub tools: Vec<Tool>,
    pub tool_choice: Option<ToolChoice>,
    pub response_format: Option<ResponseFormat>,
    pub n: Option<u32>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub parallel_tool_calls: Option<bool>,
    /// For streams: whether the client asked for the final usage chunk.
    pub include_usage: bool,
    /// Parameters the core does not model, passed to the provider unchanged.
    pub extra: BTreeMap<String, Value>,
}

fn check_range(name: &str, v: Option<f64>, lo: f64, hi: f64) -> Result<(), Error> {
    match v {
        Some(x) if !(lo..=hi).contains(&x) || x.is_nan() => Err(Error::bad_request(format!(
            "{name} must be between {lo} and {hi}, got {x}"
        ))
        .with_param(name)),
        _ => Ok(()),
    }
}

impl ChatRequest {
    /// Checks the request's shape; the gateway never forwards a request it can tell is malformed.
    pub fn validate(&self) -> Result<(), Error> {
        if self.model.is_empty() {
            return Err(Error::bad_request("model is required").with_param("model"));
        }
        if self.messages.is_empty() {
            return Err(
                Error::bad_request("messages must hold at least one message")
                    .with_param("messages"),
            );
        }
        check_range("temperature", self.temperature, 0.0, 2.0)?;
        check_range("top_p", self.top_p, 0.0, 1.0)?;
        check_range("presence_penalty", self.presence_penalty, -2.0, 2.0)?;
        check_range("frequency_penalty", self.frequency_penalty, -2.0, 2.0)?;
        if self.max_tokens == Some(0) {
            return Err(
                Error::bad_request("max_tokens must be at least 1").with_param("max_tokens")
            );
        }
        if let Some(n) = self.n
            && !(1..=128).contains(&n)
        {
            return Err(Error::bad_request("n must be between 1 and 128").with_param("n"));
        }
        if self.stop.len() > 4 {
            return Err(Error::bad_request("stop may hold at most 4 sequences").with_param("stop"));
        }
        for (i, m) in self.messages.iter().enumerate() {
            match m.role {
                Role::Tool if m.tool_call_id.as_deref().is_none_or(str::is_empty) => {
                    return Err(Error::bad_request(format!(
                        "messages[{i}]: a tool message needs tool_call_id"
                    ))
                    .with_param(format!("messages[{i}].tool_call_id")));
                }
                Role::Assistant => {}
                Role::System | Role::Developer | Role::User | Role::Tool if m.content.is_none() => {
                    return Err(Error::bad_request(format!(
                        "messages[{i}]: a {} message needs content",
                        m.role
                    ))
                    .with_param(format!("messages[{i}].content")));
                }
                Role::System | Role::Developer | Role::User | Role::Tool => {}
            }
            if !m.tool_calls.is_empty() && m.role != Role::Assistant {
                return Err(Error::bad_request(format!(
                    "messages[{i}]: only assistant messages carry tool_calls"
                ))
                .with_param(format!("messages[{i}].tool_calls")));
            }
            if let Some(Content::Parts(parts)) = &m.content {
                for p in parts {
                    if let ContentPart::Image(img) = p
                        && img.url.is_empty()
                    {
                        return Err(Error::bad_request(format!(
                            "messages[{i}]: image_url.url is empty"
                        ))
                        .with_param(format!("messages[{i}].content")));
                    }
                }
            }
        }
        for (i, t) in self.tools.iter().enumerate() {
            if t.name.is_empty() {
                return Err(
                    Error::bad_request(format!("tools[{i}].function.name is required"))
                        .with_param(format!("tools[{i}].function.name")),
                );
            }
        }
        if let Some(ToolChoice::Function(name)) = &self.tool_choice
            && !self.tools.iter().any(|t| &t.name == name)
        {
            return Err(Error::bad_request(format!(
                "tool_choice names function {name:?}, which is not among tools"
            ))
            .with_param("tool_choice"));
        }
        Ok(())
    }
}

/// Why the model stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    Stop,
    Length,
    ToolCalls,
    ContentFilter,
}

impl FinishReason {
    pub const ALL: [FinishReason; 4] = [
        FinishReason::Stop,
        FinishReason::Length,
        FinishReason::ToolCalls,
        FinishReason::ContentFilter,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ToolCalls => "tool_calls",
            FinishReason::ContentFilter => "content_filter",
        }
    }

    /// OpenAI's names (and the legacy `function_call`); unknown names read as `stop`.
    pub fn from_openai(s: &str) -> Self {
        match s {
            "length" => FinishReason::Length,
            "tool_calls" | "function_call" => FinishReason::ToolCalls,
            "content_filter" => FinishReason::ContentFilter,
            _ => FinishReason::Stop,
        }
    }
}

/// Tokens used, and their cost.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
    pub cached_prompt_tokens: u32,
    pub cache_creation_tokens: u32,
    pub reasoning_tokens: u32,
    /// USD, filled by the core from its price table.
    pub cost_usd: f64,
}

impl Usage {
    pub fn new(prompt_tokens: u32, completion_tokens: u32) -> Self {
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens.saturating_add(completion_tokens),
            ..Usage::default()
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Choice {
    pub index: u32,
    pub message: Message,
    pub finish_reason: FinishReason,
    /// Provider log-probabilities, passed through as they came.
    pub logprobs: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatResponse {
    pub id: String,
    /// The provider's model that answered.
    pub model: String,
    pub created: i64,
    pub choices: Vec<Choice>,
    pub usage: Option<Usage>,
    pub system_fingerprint: Option<String>,
}

/// A fragment of a tool call in a stream.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct ToolCallDelta {
    pub index: u32,
    pub id: Option<String>,
    pub name: Option<String>,
    pub arguments: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Delta {
    pub role: Option<Role>,
    pub content: Option<String>,
    pub tool_calls: Vec<ToolCallDelta>,
    pub refusal: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChunkChoice {
    pub index: u32,
    pub delta: Delta,
    pub finish_reason: Option<FinishReason>,
    pub logprobs: Option<Value>,
}

/// One streamed chunk. A chunk with no choices and `usage` set is the final usage chunk.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatChunk {
    pub id: String,
    pub model: String,
    pub created: i64,
    pub choices: Vec<ChunkChoice>,
    pub usage: Option<Usage>,
    pub system_fingerprint: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum EmbeddingInput {
    Texts(Vec<String>),
    Tokens(Vec<Vec<u32>>),
}

impl EmbeddingInput {
    pub fn len(&self) -> usize {
        match self {
            EmbeddingInput::Texts(t) => t.len(),
            EmbeddingInput::Tokens(t) => t.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EmbeddingRequest {
    pub model: String,
    pub input: EmbeddingInput,
    pub dimensions: Option<u32>,
    pub encoding_format: Option<String>,
    pub user: Option<String>,
    pub extra: BTreeMap<String, Value>,
}

impl EmbeddingRequest {
    pub fn validate(&self) -> Result<(), Error> {
        if self.model.is_empty() {
            return Err(Error::bad_request("model is required").with_param("model"));
        }
        if self.input.is_empty() {
            return Err(Error::bad_request("input must not be empty").with_param("input"));
        }
        if self.dimensions == Some(0) {
            return Err(
                Error::bad_request("dimensions must be at least 1").with_param("dimensions")
            );
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EmbeddingResponse {
    pub model: String,
    /// One vector per input, in input order.
    pub data: Vec<Vec<f32>>,
    pub usage: Usage,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImageRequest {
    pub model: String,
    pub prompt: String,
    pub n: Option<u32>,
    pub size: Option<String>,
    pub quality: Option<String>,
    pub style: Option<String>,
    pub response_format: Option<String>,
    pub user: Option<String>,
    pub extra: BTreeMap<String, Value>,
}

impl ImageRequest {
    pub fn validate(&self) -> Result<(), Error> {
        if self.model.is_empty() {
            return Err(Error::bad_request("model is required").with_param("model"));
        }
        if self.prompt.trim().is_empty() {
            return Err(Error::bad_request("prompt is required").with_param("prompt"));
        }
        if let Some(n) = self.n
            && !(1..=10).contains(&n)
        {
            return Err(Error::bad_request("n must be between 1 and 10").with_param("n"));
        }
        if let Some(f) = &self.response_format
            && f != "url"
            && f != "b64_json"
        {
            return Err(
                Error::bad_request("response_format must be \"url\" or \"b64_json\"")
                    .with_param("response_format"),
            );
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct GeneratedImage {
    pub url: Option<String>,
    pub b64_json: Option<String>,
    pub revised_prompt: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImageResponse {
    pub created: i64,
    pub data: Vec<GeneratedImage>,
    pub usage: Usage,
}

/// A model group, as listed to clients.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelInfo {
    pub id: String,
    pub owned_by: String,
    pub created: i64,
}

/// Seconds since the Unix epoch, for `created` fields.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
