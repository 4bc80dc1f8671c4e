//! Conversions between the protobuf messages and the core types. Requests are destructured
//! without `..`, so a new proto field does not compile until someone decides what it means.
//! proto3 has no null: an empty string means "not set" for optional text fields.

use std::collections::BTreeMap;

use prost_types::value::Kind;
use serde_json::Value;

use super::pb;
use crate::core::error::Error;
use crate::core::types as c;

fn opt(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// `google.protobuf.Struct` → JSON object.
pub fn struct_to_json(s: prost_types::Struct) -> Value {
    Value::Object(
        s.fields
            .into_iter()
            .map(|(k, v)| (k, value_to_json(v)))
            .collect(),
    )
}

fn value_to_json(v: prost_types::Value) -> Value {
    match v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::NumberValue(n)) => {
            // Integers travel as doubles in Struct; give them back as integers.
            if n.fract() == 0.0 && n.abs() < 9.0e15 {
                Value::from(n as i64)
            } else {
                serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number)
            }
        }
        Some(Kind::StringValue(s)) => Value::String(s),
        Some(Kind::BoolValue(b)) => Value::Bool(b),
        Some(Kind::StructValue(s)) => struct_to_json(s),
        Some(Kind::ListValue(l)) => Value::Array(l.values.into_iter().map(value_to_json).collect()),
    }
}

/// JSON → `google.protobuf.Value`.
pub fn json_to_value(v: &Value) -> prost_types::Value {
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.iter().map(json_to_value).collect(),
        }),
        Value::Object(o) => Kind::StructValue(prost_types::Struct {
            fields: o
                .iter()
                .map(|(k, v)| (k.clone(), json_to_value(v)))
                .collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

/// JSON object → `google.protobuf.Struct` (`None` for anything else).
pub fn json_to_struct(v: &Value) -> Option<prost_types::Struct> {
    match json_to_value(v).kind {
        Some(Kind::StructValue(s)) => Some(s),
        _ => None,
    }
}

impl From<pb::StreamChatRequest> for pb::ChatRequest {
    fn from(r: pb::StreamChatRequest) -> Self {
        let pb::StreamChatRequest {
            model,
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
            extra_params,
        } = r;
        pb::ChatRequest {
            model,
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
            extra_params,
        }
    }
}

impl TryFrom<pb::ChatRequest> for c::ChatRequest {
    type Error = Error;

    fn try_from(r: pb::ChatRequest) -> Result<Self, Error> {
        let pb::ChatRequest {
            model,
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
            extra_params,
        } = r;
        let messages = messages
            .into_iter()
            .enumerate()
            .map(|(i, m)| message_from_pb(i, m))
            .collect::<Result<Vec<_>, _>>()?;
        let tools = tools
            .into_iter()
            .enumerate()
            .map(|(i, t)| {
                let pb::Tool { r#type, function } = t;
                if !r#type.is_empty() && r#type != "function" {
                    return Err(Error::bad_request(format!(
                        "tools[{i}].type {type:?} is not supported; use \"function\"",
                        type = r#type
                    ))
                    .with_param(format!("tools[{i}].type")));
                }
                let pb::FunctionDefinition {
                    name,
                    description,
                    parameters,
                    strict,
                } = function.unwrap_or_default();
                Ok(c::Tool {
                    name,
                    description: opt(description),
                    parameters: parameters.map(struct_to_json),
                    strict,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let tool_choice = match tool_choice.and_then(|t| t.choice) {
            None => None,
            Some(pb::tool_choice::Choice::Mode(m)) => Some(match m.as_str() {
                "none" => c::ToolChoice::None,
                "auto" => c::ToolChoice::Auto,
                "required" => c::ToolChoice::Required,
                other => {
                    return Err(Error::bad_request(format!(
                        "tool_choice.mode {other:?} is not one of none, auto, required"
                    ))
                    .with_param("tool_choice.mode"));
                }
            }),
            Some(pb::tool_choice::Choice::FunctionName(name)) => {
                Some(c::ToolChoice::Function(name))
            }
        };
        let response_format = match response_format {
            None => None,
            Some(pb::ResponseFormat {
                r#type,
                json_schema,
            }) => Some(match (r#type.as_str(), json_schema) {
                ("" | "text", _) => c::ResponseFormat::Text,
                ("json_object", _) => c::ResponseFormat::JsonObject,
                ("json_schema", Some(s)) => {
                    let pb::JsonSchemaFormat {
                        name,
                        description,
                        schema,
                        strict,
                    } = s;
                    c::ResponseFormat::JsonSchema {
                        name,
                        description: opt(description),
                        schema: schema.map(struct_to_json),
                        strict,
                    }
                }
                ("json_schema", None) => {
                    return Err(Error::bad_request(
                        "response_format json_schema needs json_schema",
                    )
                    .with_param("response_format.json_schema"));
                }
                (other, _) => {
                    return Err(Error::bad_request(format!(
                        "response_format.type {other:?} is not one of text, json_object, json_schema"
                    ))
                    .with_param("response_format.type"));
                }
            }),
        };
        let extra: BTreeMap<String, Value> = match extra_params.map(struct_to_json) {
            Some(Value::Object(m)) => m.into_iter().collect(),
            _ => BTreeMap::new(),
        };
        Ok(c::ChatRequest {
            model,
            messages,
            temperature,
            top_p,
            max_tokens,
            stop,
            seed,
            user: opt(user),
            tools,
            tool_choice,
            response_format,
            n,
            presence_penalty,
            frequency_penalty,
            parallel_tool_calls,
            // The gRPC stream always ends with usage (see `ai_api.proto`).
            include_usage: true,
            extra,
        })
    }
}

fn message_from_pb(i: usize, m: pb::ChatMessage) -> Result<c::Message, Error> {
    let pb::ChatMessage {
        role,
        content,
        parts,
        name,
        tool_calls,
        tool_call_id,
        refusal,
    } = m;
    let role: c::Role = role
        .parse()
        .map_err(|e: Error| e.with_param(format!("messages[{i}].role")))?;
    let tool_calls: Vec<c::ToolCall> = tool_calls
        .into_iter()
        .map(|t| {
            let pb::ToolCall {
                id,
                r#type: _,
                function,
            } = t;
            let pb::FunctionCall { name, arguments } = function.unwrap_or_default();
            c::ToolCall {
                id,
                name,
                arguments,
            }
        })
        .collect();
    let content = if parts.is_empty() {
        if content.is_empty() && role == c::Role::Assistant && !tool_calls.is_empty() {
            None
        } else {
            Some(c::Content::Text(content))
        }
    } else {
        let mut out = Vec::with_capacity(parts.len() + 1);
        if !content.is_empty() {
            out.push(c::ContentPart::Text(content));
        }
        for (j, p) in parts.into_iter().enumerate() {
            out.push(match p.part {
                Some(pb::content_part::Part::Text(t)) => c::ContentPart::Text(t),
                Some(pb::content_part::Part::ImageUrl(pb::ImageUrl { url, detail })) => {
                    c::ContentPart::Image(c::ImageUrl {
                        url,
                        detail: opt(detail),
                    })
                }
                None => {
                    return Err(Error::bad_request(
                        "a content part has neither text nor image_url",
                    )
                    .with_param(format!("messages[{i}].parts[{j}]")));
                }
            });
        }
        Some(c::Content::Parts(out))
    };
    Ok(c::Message {
        role,
        content,
        name: opt(name),
        tool_calls,
        tool_call_id: opt(tool_call_id),
        refusal: opt(refusal),
    })
}

fn finish_reason(f: c::FinishReason) -> pb::FinishReason {
    match f {
        c::FinishReason::Stop => pb::FinishReason::Stop,
        c::FinishReason::Length => pb::FinishReason::Length,
        c::FinishReason::ToolCalls => pb::FinishReason::ToolCalls,
        c::FinishReason::ContentFilter => pb::FinishReason::ContentFilter,
    }
}

impl From<&c::Usage> for pb::Usage {
    fn from(u: &c::Usage) -> Self {
        pb::Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.total_tokens,
            cost_usd: u.cost_usd,
            cached_prompt_tokens: u.cached_prompt_tokens,
            reasoning_tokens: u.reasoning_tokens,
        }
    }
}

impl From<&c::ChatResponse> for pb::ChatResponse {
    fn from(r: &c::ChatResponse) -> Self {
        pb::ChatResponse {
            id: r.id.clone(),
            model: r.model.clone(),
            created: r.created,
            choices: r
                .choices
                .iter()
                .map(|ch| pb::ChatChoice {
                    index: ch.index,
                    message: Some(pb::ChatMessage {
                        role: ch.message.role.as_str().to_string(),
                        content: ch
                            .message
                            .content
                            .as_ref()
                            .map(c::Content::text)
                            .unwrap_or_default(),
                        parts: Vec::new(),
                        name: String::new(),
                        tool_calls: ch
                            .message
                            .tool_calls
                            .iter()
                            .map(|t| pb::ToolCall {
                                id: t.id.clone(),
                                r#type: "function".into(),
                                function: Some(pb::FunctionCall {
                                    name: t.name.clone(),
                                    arguments: t.arguments.clone(),
                                }),
                            })
                            .collect(),
                        tool_call_id: String::new(),
                        refusal: ch.message.refusal.clone().unwrap_or_default(),
                    }),
                    finish_reason: finish_reason(ch.finish_reason).into(),
                })
                .collect(),
            usage: r.usage.as_ref().map(pb::Usage::from),
            system_fingerprint: r.system_fingerprint.clone().unwrap_or_default(),
        }
    }
}

impl From<&c::ChatChunk> for pb::StreamChatResponse {
    fn from(r: &c::ChatChunk) -> Self {
        pb::StreamChatResponse {
            id: r.id.clone(),
            model: r.model.clone(),
            created: r.created,
            choices: r
                .choices
                .iter()
                .map(|ch| pb::StreamChoice {
                    index: ch.index,
                    delta: Some(pb::ChatDelta {
                        role: ch
                            .delta
                            .role
                            .map(|r| r.as_str().to_string())
                            .unwrap_or_default(),
                        content: ch.delta.content.clone().unwrap_or_default(),
                        tool_calls: ch
                            .delta
                            .tool_calls
                            .iter()
                            .map(|t| pb::ToolCallDelta {
                                index: t.index,
                                id: t.id.clone().unwrap_or_default(),
                                name: t.name.clone().unwrap_or_default(),
                                arguments: t.arguments.clone().unwrap_or_default(),
                            })
                            .collect(),
                        refusal: ch.delta.refusal.clone().unwrap_or_default(),
                    }),
                    finish_reason: ch
                        .finish_reason
                        .map_or(pb::FinishReason::Unspecified, finish_reason)
                        .into(),
                })
                .collect(),
            usage: r.usage.as_ref().map(pb::Usage::from),
        }
    }
}

impl From<pb::EmbedRequest> for c::EmbeddingRequest {
    fn from(r: pb::EmbedRequest) -> Self {
        let pb::EmbedRequest {
            model,
            input,
            dimensions,
            user,
        } = r;
        c::EmbeddingRequest {
            model,
            input: c::EmbeddingInput::Texts(input),
            dimensions,
            encoding_format: None,
            user: opt(user),
            extra: BTreeMap::new(),
        }
    }
}

impl From<&c::EmbeddingResponse> for pb::EmbedResponse {
    fn from(r: &c::EmbeddingResponse) -> Self {
        pb::EmbedResponse {
            model: r.model.clone(),
            embeddings: r
                .data
                .iter()
                .enumerate()
                .map(|(i, v)| pb::Embedding {
                    index: i as u32,
                    values: v.clone(),
                })
                .collect(),
            usage: Some(pb::Usage::from(&r.usage)),
        }
    }
}

impl From<pb::GenerateImageRequest> for c::ImageRequest {
    fn from(r: pb::GenerateImageRequest) -> Self {
        let pb::GenerateImageRequest {
            model,
            prompt,
            n,
            size,
            quality,
            style,
            response_format,
            user,
        } = r;
        c::ImageRequest {
            model,
            prompt,
            n,
            size: opt(size),
            quality: opt(quality),
            style: opt(style),
            response_format: opt(response_format),
            user: opt(user),
            extra: BTreeMap::new(),
        }
    }
}

impl From<&c::ImageResponse> for pb::GenerateImageResponse {
    fn from(r: &c::ImageResponse) -> Self {
        pb::GenerateImageResponse {
            created: r.created,
            images: r
                .data
                .iter()
                .map(|d| pb::Image {
                    url: d.url.clone().unwrap_or_default(),
                    b64_json: d.b64_json.clone().unwrap_or_default(),
                    revised_prompt: d.revised_prompt.clone().unwrap_or_default(),
                })
                .collect(),
            usage: Some(pb::Usage::from(&r.usage)),
        }
    }
}

impl From<&c::ModelInfo> for pb::Model {
    fn from(m: &c::ModelInfo) -> Self {
        pb::Model {
            id: m.id.clone(),
            owned_by: m.owned_by.clone(),
            created: m.created,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    /// `StreamChatRequest` must carry exactly `ChatRequest`'s fields (names, numbers, types),
    /// so one JSON body works for both RPCs.
    #[test]
    fn stream_chat_request_mirrors_chat_request() {
        let set = prost_types::FileDescriptorSet::decode(pb::FILE_DESCRIPTOR_SET).unwrap();
        let file = set
            .file
            .iter()
            .find(|f| f.package() == "ai_api.v1")
            .unwrap();
        let fields = |name: &str| {
            let m = file.message_type.iter().find(|m| m.name() == name).unwrap();
            m.field
                .iter()
                .map(|f| {
                    (
                        f.name().to_string(),
                        f.number(),
                        f.r#type(),
                        f.type_name().to_string(),
                        f.label(),
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(fields("ChatRequest"), fields("StreamChatRequest"));
    }

    #[test]
    fn struct_round_trips_to_json() {
        let json = serde_json::json!({"type": "object", "properties": {"n": {"type": "integer", "minimum": 1}}, "required": ["n"], "x": 1.5, "y": null, "z": true});
        let s: prost_types::Struct = match json_to_struct(&json) {
            Some(s) => s,
            None => panic!("not an object"),
        };
        assert_eq!(struct_to_json(s), json);
    }

    #[test]
    fn assistant_tool_call_messages_have_no_content() {
        let m = pb::ChatMessage {
            role: "assistant".into(),
            tool_calls: vec![pb::ToolCall {
                id: "c1".into(),
                r#type: "function".into(),
                function: Some(pb::FunctionCall {
                    name: "f".into(),
                    arguments: "{}".into(),
                }),
            }],
            ..Default::default()
        };
        let core = message_from_pb(0, m).unwrap();
        assert_eq!(core.content, None);
        assert_eq!(core.tool_calls[0].name, "f");
    }
}
