//! Conversions between OpenAI's wire structs and the core types, both directions:
//! wire → core for what the HTTP door reads and the OpenAI provider receives, core → wire for
//! what the door writes and the provider sends. Wire structs are destructured without `..`, so
//! a new field does not compile until someone decides what it means.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super as w;
use crate::core::error::Error;
use crate::core::types as c;

fn extra_map(extra: Map<String, Value>) -> BTreeMap<String, Value> {
    extra.into_iter().collect()
}

fn extra_json(extra: &BTreeMap<String, Value>) -> Map<String, Value> {
    extra.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

// ------------------------------------------------------------------------------------------
// wire → core (requests the door reads)
// ------------------------------------------------------------------------------------------

impl TryFrom<w::ChatCompletionRequest> for c::ChatRequest {
    type Error = Error;

    fn try_from(r: w::ChatCompletionRequest) -> Result<Self, Error> {
        let w::ChatCompletionRequest {
            model,
            messages,
            temperature,
            top_p,
            max_tokens,
            max_completion_tokens,
            stop,
            seed,
            user,
            tools,
            tool_choice,
            response_format,
            n,
            presence_penalty,
            frequency_penalty,
            parallel_tool_calls,
            stream: _,
            stream_options,
            extra,
        } = r;
        let messages = messages
            .into_iter()
            .enumerate()
            .map(|(i, m)| message_from_wire(i, m))
            .collect::<Result<Vec<_>, _>>()?;
        let tools = tools
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(i, t)| {
                let w::Tool { kind, function } = t;
                if kind != "function" {
                    return Err(Error::bad_request(format!(
                        "tools[{i}].type {kind:?} is not supported; use \"function\""
                    ))
                    .with_param(format!("tools[{i}].type")));
                }
                let w::FunctionDef {
                    name,
                    description,
                    parameters,
                    strict,
                } = function;
                Ok(c::Tool {
                    name,
                    description,
                    parameters,
                    strict,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let tool_choice = tool_choice.map(tool_choice_from_wire).transpose()?;
        let response_format = response_format.map(response_format_from_wire).transpose()?;
        Ok(c::ChatRequest {
            model,
            messages,
            temperature,
            top_p,
            max_tokens: max_completion_tokens.or(max_tokens),
            stop: match stop {
                None => Vec::new(),
                Some(w::Stop::One(s)) => vec![s],
                Some(w::Stop::Many(v)) => v,
            },
            seed,
            user,
            tools,
            tool_choice,
            response_format,
            n,
            presence_penalty,
            frequency_penalty,
            parallel_tool_calls,
            include_usage: stream_options
                .and_then(|o| o.include_usage)
                .unwrap_or(false),
            extra: extra_map(extra),
        })
    }
}

fn message_from_wire(i: usize, m: w::ChatMessage) -> Result<c::Message, Error> {
    let w::ChatMessage {
        role,
        content,
        name,
        tool_calls,
        tool_call_id,
        refusal,
    } = m;
    let role: c::Role = role.parse().map_err(|e: Error| {
        let param = format!("messages[{i}].role");
        e.with_param(param)
    })?;
    let content = match content {
        None => None,
        Some(w::MessageContent::Text(t)) => Some(c::Content::Text(t)),
        Some(w::MessageContent::Parts(parts)) => {
            let parts = parts
                .into_iter()
                .enumerate()
                .map(|(j, p)| part_from_wire(i, j, p))
                .collect::<Result<Vec<_>, _>>()?;
            Some(c::Content::Parts(parts))
        }
    };
    let tool_calls = tool_calls
        .unwrap_or_default()
        .into_iter()
        .map(|t| {
            let w::ToolCall {
                id,
                kind: _,
                function: w::FunctionCall { name, arguments },
            } = t;
            c::ToolCall {
                id,
                name,
                arguments,
            }
        })
        .collect();
    Ok(c::Message {
        role,
        content,
        name,
        tool_calls,
        tool_call_id,
        refusal,
    })
}

fn part_from_wire(i: usize, j: usize, p: w::ContentPart) -> Result<c::ContentPart, Error> {
    let w::ContentPart {
        kind,
        text,
        image_url,
    } = p;
    let param = || format!("messages[{i}].content[{j}]");
    match (kind.as_str(), text, image_url) {
        ("text", Some(text), _) => Ok(c::ContentPart::Text(text)),
        ("image_url", _, Some(w::ImageUrlField::Object { url, detail })) => {
            Ok(c::ContentPart::Image(c::ImageUrl { url, detail }))
        }
        ("image_url", _, Some(w::ImageUrlField::Url(url))) => {
            Ok(c::ContentPart::Image(c::ImageUrl { url, detail: None }))
        }
        ("text", None, _) => {
            Err(Error::bad_request("a text content part needs \"text\"").with_param(param()))
        }
        ("image_url", _, None) => Err(Error::bad_request(
            "an image_url content part needs \"image_url\"",
        )
        .with_param(param())),
        (other, _, _) => Err(Error::bad_request(format!(
            "content part type {other:?} is not supported; use \"text\" or \"image_url\""
        ))
        .with_param(param())),
    }
}

fn tool_choice_from_wire(t: w::ToolChoice) -> Result<c::ToolChoice, Error> {
    match t {
        w::ToolChoice::Mode(m) => match m.as_str() {
            "none" => Ok(c::ToolChoice::None),
            "auto" => Ok(c::ToolChoice::Auto),
            "required" => Ok(c::ToolChoice::Required),
            other => Err(Error::bad_request(format!(
                "tool_choice {other:?} is not one of none, auto, required"
            ))
            .with_param("tool_choice")),
        },
        w::ToolChoice::Named { kind: _, function } => Ok(c::ToolChoice::Function(function.name)),
    }
}

fn response_format_from_wire(r: w::ResponseFormat) -> Result<c::ResponseFormat, Error> {
    let w::ResponseFormat { kind, json_schema } = r;
    match (kind.as_str(), json_schema) {
        ("text", _) => Ok(c::ResponseFormat::Text),
        ("json_object", _) => Ok(c::ResponseFormat::JsonObject),
        ("json_schema", Some(s)) => {
            let w::JsonSchema {
                name,
                description,
                schema,
                strict,
            } = s;
            Ok(c::ResponseFormat::JsonSchema {
                name,
                description,
                schema,
                strict,
            })
        }
        ("json_schema", None) => Err(Error::bad_request(
            "response_format json_schema needs a \"json_schema\" object",
        )
        .with_param("response_format.json_schema")),
        (other, _) => Err(Error::bad_request(format!(
            "response_format.type {other:?} is not one of text, json_object, json_schema"
        ))
        .with_param("response_format.type")),
    }
}

impl From<w::EmbeddingRequest> for c::EmbeddingRequest {
    fn from(r: w::EmbeddingRequest) -> Self {
        let w::EmbeddingRequest {
            model,
            input,
            dimensions,
            encoding_format,
            user,
            extra,
        } = r;
        c::EmbeddingRequest {
            model,
            input: match input {
                w::EmbeddingInput::One(s) => c::EmbeddingInput::Texts(vec![s]),
                w::EmbeddingInput::Many(v) => c::EmbeddingInput::Texts(v),
                w::EmbeddingInput::Tokens(t) => c::EmbeddingInput::Tokens(vec![t]),
                w::EmbeddingInput::TokenLists(t) => c::EmbeddingInput::Tokens(t),
            },
            dimensions,
            encoding_format,
            user,
            extra: extra_map(extra),
        }
    }
}

impl From<w::ImageGenerationRequest> for c::ImageRequest {
    fn from(r: w::ImageGenerationRequest) -> Self {
        let w::ImageGenerationRequest {
            model,
            prompt,
            n,
            size,
            quality,
            style,
            response_format,
            user,
            extra,
        } = r;
        c::ImageRequest {
            model,
            prompt,
            n,
            size,
            quality,
            style,
            response_format,
            user,
            extra: extra_map(extra),
        }
    }
}

// ------------------------------------------------------------------------------------------
// core → wire (requests the OpenAI provider sends)
// ------------------------------------------------------------------------------------------

/// Which field carries the token limit upstream: OpenAI's current `max_completion_tokens`, or
/// the older `max_tokens` that OpenAI-compatible servers know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxTokensField {
    MaxCompletionTokens,
    MaxTokens,
}

/// The upstream request for `req`, addressed to `upstream_model`.
pub fn chat_request_to_wire(
    req: &c::ChatRequest,
    upstream_model: &str,
    stream: bool,
    max_field: MaxTokensField,
) -> w::ChatCompletionRequest {
    let c::ChatRequest {
        model: _,
        messages,
        temperature,
        top_p,
        max_tokens,
        stop,
        seed,
        user,
        tools,
        tool_choice,
        response_format,
        n,
        presence_penalty,
        frequency_penalty,
        parallel_tool_calls,
        include_usage: _,
        extra,
    } = req;
    w::ChatCompletionRequest {
        model: upstream_model.to_string(),
        messages: messages.iter().map(message_to_wire).collect(),
        temperature: *temperature,
        top_p: *top_p,
        max_tokens: max_tokens.filter(|_| max_field == MaxTokensField::MaxTokens),
        max_completion_tokens: max_tokens
            .filter(|_| max_field == MaxTokensField::MaxCompletionTokens),
        stop: match stop.len() {
            0 => None,
            _ => Some(w::Stop::Many(stop.clone())),
        },
        seed: *seed,
        user: user.clone(),
        tools: (!tools.is_empty()).then(|| {
            tools
                .iter()
                .map(|t| w::Tool {
                    kind: "function".into(),
                    function: w::FunctionDef {
                        name: t.name.clone(),
                        description: t.description.clone(),
                        parameters: t.parameters.clone(),
                        strict: t.strict,
                    },
                })
                .collect()
        }),
        tool_choice: tool_choice.as_ref().map(|t| match t {
            c::ToolChoice::None => w::ToolChoice::Mode("none".into()),
            c::ToolChoice::Auto => w::ToolChoice::Mode("auto".into()),
            c::ToolChoice::Required => w::ToolChoice::Mode("required".into()),
            c::ToolChoice::Function(name) => w::ToolChoice::Named {
                kind: "function".into(),
                function: w::NamedFunction { name: name.clone() },
            },
        }),
        response_format: response_format.as_ref().map(|r| match r {
            c::ResponseFormat::Text => w::ResponseFormat {
                kind: "text".into(),
                json_schema: None,
            },
            c::ResponseFormat::JsonObject => w::ResponseFormat {
                kind: "json_object".into(),
                json_schema: None,
            },
            c::ResponseFormat::JsonSchema {
                name,
                description,
                schema,
                strict,
            } => w::ResponseFormat {
                kind: "json_schema".into(),
                json_schema: Some(w::JsonSchema {
                    name: name.clone(),
                    description: description.clone(),
                    schema: schema.clone(),
                    strict: *strict,
                }),
            },
        }),
        n: *n,
        presence_penalty: *presence_penalty,
        frequency_penalty: *frequency_penalty,
        parallel_tool_calls: *parallel_tool_calls,
        stream: stream.then_some(true),
        // Always ask for usage on streams: the gateway needs it for cost, whatever the client
        // asked; the core shows the client only what it asked for.
        stream_options: stream.then_some(w::StreamOptions {
            include_usage: Some(true),
        }),
        extra: extra_json(extra),
    }
}

fn message_to_wire(m: &c::Message) -> w::ChatMessage {
    let c::Message {
        role,
        content,
        name,
        tool_calls,
        tool_call_id,
        refusal,
    } = m;
    w::ChatMessage {
        role: role.as_str().into(),
        content: content.as_ref().map(|c| match c {
            c::Content::Text(t) => w::MessageContent::Text(t.clone()),
            c::Content::Parts(parts) => w::MessageContent::Parts(
                parts
                    .iter()
                    .map(|p| match p {
                        c::ContentPart::Text(t) => w::ContentPart {
                            kind: "text".into(),
                            text: Some(t.clone()),
                            image_url: None,
                        },
                        c::ContentPart::Image(img) => w::ContentPart {
                            kind: "image_url".into(),
                            text: None,
                            image_url: Some(w::ImageUrlField::Object {
                                url: img.url.clone(),
                                detail: img.detail.clone(),
                            }),
                        },
                    })
                    .collect(),
            ),
        }),
        name: name.clone(),
        tool_calls: (!tool_calls.is_empty())
            .then(|| tool_calls.iter().map(tool_call_to_wire).collect()),
        tool_call_id: tool_call_id.clone(),
        refusal: refusal.clone(),
    }
}

fn tool_call_to_wire(t: &c::ToolCall) -> w::ToolCall {
    w::ToolCall {
        id: t.id.clone(),
        kind: "function".into(),
        function: w::FunctionCall {
            name: t.name.clone(),
            arguments: t.arguments.clone(),
        },
    }
}

pub fn embedding_request_to_wire(
    req: &c::EmbeddingRequest,
    upstream_model: &str,
) -> w::EmbeddingRequest {
    let c::EmbeddingRequest {
        model: _,
        input,
        dimensions,
        encoding_format: _,
        user,
        extra,
    } = req;
    w::EmbeddingRequest {
        model: upstream_model.to_string(),
        input: match input {
            c::EmbeddingInput::Texts(t) => w::EmbeddingInput::Many(t.clone()),
            c::EmbeddingInput::Tokens(t) => w::EmbeddingInput::TokenLists(t.clone()),
        },
        dimensions: *dimensions,
        // The core works in floats; the door encodes base64 itself when the client asks.
        encoding_format: Some("float".into()),
        user: user.clone(),
        extra: extra_json(extra),
    }
}

pub fn image_request_to_wire(
    req: &c::ImageRequest,
    upstream_model: &str,
) -> w::ImageGenerationRequest {
    let c::ImageRequest {
        model: _,
        prompt,
        n,
        size,
        quality,
        style,
        response_format,
        user,
        extra,
    } = req;
    w::ImageGenerationRequest {
        model: upstream_model.to_string(),
        prompt: prompt.clone(),
        n: *n,
        size: size.clone(),
        quality: quality.clone(),
        style: style.clone(),
        response_format: response_format.clone(),
        user: user.clone(),
        extra: extra_json(extra),
    }
}

// ------------------------------------------------------------------------------------------
// wire → core (answers the OpenAI provider receives)
// ------------------------------------------------------------------------------------------

impl From<w::Usage> for c::Usage {
    fn from(u: w::Usage) -> Self {
        let w::Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens,
            prompt_tokens_details,
            completion_tokens_details,
        } = u;
        c::Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: if total_tokens == 0 {
                prompt_tokens.saturating_add(completion_tokens)
            } else {
                total_tokens
            },
            cached_prompt_tokens: prompt_tokens_details
                .and_then(|d| d.cached_tokens)
                .unwrap_or(0),
            cache_creation_tokens: 0,
            reasoning_tokens: completion_tokens_details
                .and_then(|d| d.reasoning_tokens)
                .unwrap_or(0),
            cost_usd: 0.0,
        }
    }
}

impl From<w::ChatCompletion> for c::ChatResponse {
    fn from(r: w::ChatCompletion) -> Self {
        let w::ChatCompletion {
            id,
            object: _,
            created,
            model,
            choices,
            usage,
            system_fingerprint,
        } = r;
        c::ChatResponse {
            id,
            model,
            created,
            choices: choices
                .into_iter()
                .map(|ch| {
                    let w::Choice {
                        index,
                        message,
                        logprobs,
                        finish_reason,
                    } = ch;
                    let w::ResponseMessage {
                        role: _,
                        content,
                        refusal,
                        tool_calls,
                    } = message;
                    let tool_calls: Vec<c::ToolCall> = tool_calls
                        .unwrap_or_default()
                        .into_iter()
                        .map(|t| c::ToolCall {
                            id: t.id,
                            name: t.function.name,
                            arguments: t.function.arguments,
                        })
                        .collect();
                    let finish = if tool_calls.is_empty() {
                        finish_reason
                            .as_deref()
                            .map(c::FinishReason::from_openai)
                            .unwrap_or(c::FinishReason::Stop)
                    } else {
                        c::FinishReason::ToolCalls
                    };
                    c::Choice {
                        index,
                        message: c::Message {
                            role: c::Role::Assistant,
                            content: content.map(c::Content::Text),
                            name: None,
                            tool_calls,
                            tool_call_id: None,
                            refusal,
                        },
                        finish_reason: finish,
                        logprobs: logprobs.filter(|v| !v.is_null()),
                    }
                })
                .collect(),
            usage: usage.map(c::Usage::from),
            system_fingerprint,
        }
    }
}

impl From<w::ChatCompletionChunk> for c::ChatChunk {
    fn from(r: w::ChatCompletionChunk) -> Self {
        let w::ChatCompletionChunk {
            id,
            object: _,
            created,
            model,
            system_fingerprint,
            choices,
            usage,
        } = r;
        c::ChatChunk {
            id,
            model,
            created,
            choices: choices
                .into_iter()
                .map(|ch| {
                    let w::ChunkChoice {
                        index,
                        delta,
                        logprobs,
                        finish_reason,
                    } = ch;
                    let w::Delta {
                        role,
                        content,
                        tool_calls,
                        refusal,
                    } = delta;
                    c::ChunkChoice {
                        index,
                        delta: c::Delta {
                            role: role.and_then(|r| r.parse().ok()),
                            content,
                            tool_calls: tool_calls
                                .unwrap_or_default()
                                .into_iter()
                                .map(|t| {
                                    let f = t.function.unwrap_or_default();
                                    c::ToolCallDelta {
                                        index: t.index,
                                        id: t.id,
                                        name: f.name,
                                        arguments: f.arguments,
                                    }
                                })
                                .collect(),
                            refusal,
                        },
                        finish_reason: finish_reason.as_deref().map(c::FinishReason::from_openai),
                        logprobs: logprobs.filter(|v| !v.is_null()),
                    }
                })
                .collect(),
            usage: usage.map(c::Usage::from),
            system_fingerprint,
        }
    }
}

impl TryFrom<w::EmbeddingResponse> for c::EmbeddingResponse {
    type Error = Error;

    fn try_from(r: w::EmbeddingResponse) -> Result<Self, Error> {
        let w::EmbeddingResponse {
            object: _,
            mut data,
            model,
            usage,
        } = r;
        data.sort_by_key(|d| d.index);
        let data = data
            .into_iter()
            .map(|d| match d.embedding {
                w::EmbeddingVector::Floats(v) => Ok(v),
                w::EmbeddingVector::Base64(_) => Err(Error::bad_gateway(
                    "the provider answered base64 embeddings where floats were asked for",
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(c::EmbeddingResponse {
            model,
            data,
            usage: c::Usage::new(usage.prompt_tokens, 0),
        })
    }
}

impl From<w::ImagesResponse> for c::ImageResponse {
    fn from(r: w::ImagesResponse) -> Self {
        let w::ImagesResponse { created, data } = r;
        c::ImageResponse {
            created,
            data: data
                .into_iter()
                .map(|d| {
                    let w::ImageData {
                        url,
                        b64_json,
                        revised_prompt,
                    } = d;
                    c::GeneratedImage {
                        url,
                        b64_json,
                        revised_prompt,
                    }
                })
                .collect(),
            usage: c::Usage::default(),
        }
    }
}

// ------------------------------------------------------------------------------------------
// core → wire (answers the door writes)
// ------------------------------------------------------------------------------------------

impl From<&c::Usage> for w::Usage {
    fn from(u: &c::Usage) -> Self {
        w::Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.total_tokens,
            prompt_tokens_details: Some(w::PromptTokensDetails {
                cached_tokens: Some(u.cached_prompt_tokens),
            }),
            completion_tokens_details: Some(w::CompletionTokensDetails {
                reasoning_tokens: Some(u.reasoning_tokens),
            }),
        }
    }
}

impl From<c::ChatResponse> for w::ChatCompletion {
    /// By value: the answer's strings move into the wire struct, no copies.
    fn from(r: c::ChatResponse) -> Self {
        w::ChatCompletion {
            id: r.id,
            object: w::chat_completion_object(),
            created: r.created,
            model: r.model,
            choices: r
                .choices
                .into_iter()
                .map(|ch| w::Choice {
                    index: ch.index,
                    message: w::ResponseMessage {
                        role: "assistant".into(),
                        content: ch.message.content.map(c::Content::into_text),
                        refusal: ch.message.refusal,
                        tool_calls: (!ch.message.tool_calls.is_empty()).then(|| {
                            ch.message
                                .tool_calls
                                .iter()
                                .map(tool_call_to_wire)
                                .collect()
                        }),
                    },
                    logprobs: ch.logprobs,
                    finish_reason: Some(ch.finish_reason.as_str().into()),
                })
                .collect(),
            usage: r.usage.as_ref().map(w::Usage::from),
            system_fingerprint: r.system_fingerprint,
        }
    }
}

impl From<c::ChatChunk> for w::ChatCompletionChunk {
    /// By value: the chunk's strings move into the wire struct, no copies.
    fn from(r: c::ChatChunk) -> Self {
        w::ChatCompletionChunk {
            id: r.id,
            object: w::chunk_object(),
            created: r.created,
            model: r.model,
            system_fingerprint: r.system_fingerprint,
            choices: r
                .choices
                .into_iter()
                .map(|ch| w::ChunkChoice {
                    index: ch.index,
                    delta: w::Delta {
                        role: ch.delta.role.map(|r| r.as_str().into()),
                        content: ch.delta.content,
                        tool_calls: (!ch.delta.tool_calls.is_empty()).then(|| {
                            ch.delta
                                .tool_calls
                                .into_iter()
                                .map(|t| w::ToolCallChunk {
                                    index: t.index,
                                    kind: t.id.as_ref().map(|_| "function".into()),
                                    id: t.id,
                                    function: Some(w::FunctionChunk {
                                        name: t.name,
                                        arguments: t.arguments,
                                    }),
                                })
                                .collect()
                        }),
                        refusal: ch.delta.refusal,
                    },
                    logprobs: ch.logprobs,
                    finish_reason: ch.finish_reason.map(|f| f.as_str().into()),
                })
                .collect(),
            usage: r.usage.as_ref().map(w::Usage::from),
        }
    }
}

/// The door's embeddings answer; `base64` encodes each vector as OpenAI does.
pub fn embedding_response_to_wire(r: &c::EmbeddingResponse, base64: bool) -> w::EmbeddingResponse {
    use base64::Engine as _;
    w::EmbeddingResponse {
        object: "list".into(),
        data: r
            .data
            .iter()
            .enumerate()
            .map(|(i, v)| w::EmbeddingData {
                object: "embedding".into(),
                index: i as u32,
                embedding: if base64 {
                    let bytes: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
                    w::EmbeddingVector::Base64(
                        base64::engine::general_purpose::STANDARD.encode(bytes),
                    )
                } else {
                    w::EmbeddingVector::Floats(v.clone())
                },
            })
            .collect(),
        model: r.model.clone(),
        usage: w::EmbeddingUsage {
            prompt_tokens: r.usage.prompt_tokens,
            total_tokens: r.usage.total_tokens,
        },
    }
}

impl From<&c::ImageResponse> for w::ImagesResponse {
    fn from(r: &c::ImageResponse) -> Self {
        w::ImagesResponse {
            created: r.created,
            data: r
                .data
                .iter()
                .map(|d| w::ImageData {
                    url: d.url.clone(),
                    b64_json: d.b64_json.clone(),
                    revised_prompt: d.revised_prompt.clone(),
                })
                .collect(),
        }
    }
}

impl From<&c::ModelInfo> for w::Model {
    fn from(m: &c::ModelInfo) -> Self {
        w::Model {
            id: m.id.clone(),
            object: "model".into(),
            created: m.created,
            owned_by: m.owned_by.clone(),
        }
    }
}

impl From<&Error> for w::ErrorBody {
    fn from(e: &Error) -> Self {
        w::ErrorBody {
            error: w::ErrorDetail {
                message: e.message.clone(),
                kind: e.kind.openai_type().into(),
                param: e.param.clone(),
                code: Some(e.code_str()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_with_every_feature_survives_wire_core_wire() {
        let json = serde_json::json!({
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}}
                ]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "look", "arguments": "{\"x\":1}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "a cat"}
            ],
            "temperature": 0.5, "top_p": 0.9, "max_tokens": 50, "stop": "END", "seed": 7,
            "user": "u1", "n": 1,
            "tools": [{"type": "function", "function": {"name": "look", "parameters": {"type": "object"}}}],
            "tool_choice": {"type": "function", "function": {"name": "look"}},
            "response_format": {"type": "json_object"},
            "reasoning_effort": "low",
            "stream": true, "stream_options": {"include_usage": true}
        });
        let wire: w::ChatCompletionRequest = serde_json::from_value(json).unwrap();
        let core = c::ChatRequest::try_from(wire).unwrap();
        core.validate().unwrap();
        assert!(core.include_usage);
        assert_eq!(core.stop, vec!["END"]);
        assert_eq!(
            core.extra.get("reasoning_effort"),
            Some(&Value::from("low"))
        );
        let out = chat_request_to_wire(
            &core,
            "gpt-4o-mini-2024",
            true,
            MaxTokensField::MaxCompletionTokens,
        );
        let out = serde_json::to_value(&out).unwrap();
        assert_eq!(out["model"], "gpt-4o-mini-2024");
        assert_eq!(out["max_completion_tokens"], 50);
        assert!(out.get("max_tokens").is_none());
        assert_eq!(
            out["messages"][1]["content"][1]["image_url"]["detail"],
            "low"
        );
        assert_eq!(
            out["messages"][2]["tool_calls"][0]["function"]["arguments"],
            "{\"x\":1}"
        );
        assert_eq!(out["messages"][3]["tool_call_id"], "call_1");
        assert_eq!(out["tool_choice"]["function"]["name"], "look");
        assert_eq!(out["reasoning_effort"], "low");
        assert_eq!(out["stream_options"]["include_usage"], true);
    }

    #[test]
    fn unsupported_parts_and_roles_are_named() {
        let json = serde_json::json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "input_audio"}]}]});
        let wire: w::ChatCompletionRequest = serde_json::from_value(json).unwrap();
        let e = c::ChatRequest::try_from(wire).unwrap_err();
        assert!(e.message.contains("input_audio"));
        assert_eq!(e.param.as_deref(), Some("messages[0].content[0]"));

        let json =
            serde_json::json!({"model": "m", "messages": [{"role": "robot", "content": "x"}]});
        let wire: w::ChatCompletionRequest = serde_json::from_value(json).unwrap();
        let e = c::ChatRequest::try_from(wire).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].role"));
    }

    #[test]
    fn base64_embeddings_are_little_endian_f32() {
        let r = c::EmbeddingResponse {
            model: "m".into(),
            data: vec![vec![1.0, -2.5]],
            usage: c::Usage::new(3, 0),
        };
        let wire = embedding_response_to_wire(&r, true);
        let w::EmbeddingVector::Base64(s) = &wire.data[0].embedding else {
            panic!("not base64")
        };
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD.decode(s).unwrap();
        let back: Vec<f32> = bytes
            .chunks(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(back, vec![1.0, -2.5]);
    }
}
