//! An in-process fake of Anthropic's Messages API (`POST /v1/messages`) that checks what it
//! receives as the real API does (`x-api-key`, `anthropic-version`, required `max_tokens`,
//! user/assistant alternation starting with user, no `system` role inside `messages`, no
//! top-level fields the API does not know, well-formed content blocks, tool_use / tool_result
//! pairing) and answers in Anthropic's wire format: whole JSON, or the SSE event sequence
//! (`message_start` … `ping` … `message_stop`) with tool input streamed as `input_json_delta`.
//! The answers are the fixtures of `tests/fixtures/anthropic/` (from Anthropic's API reference).
//! Each test gets its own on port 0; what it received is recorded.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use parking_lot::Mutex;
use serde_json::{Value, json};

/// The key the fake accepts in `x-api-key`.
pub const ANTHROPIC_KEY: &str = "sk-ant-api03-fake-test-key";

pub const TEXT_RESPONSE: &str = include_str!("../fixtures/anthropic/text_response.json");
pub const TEXT_STREAM: &str = include_str!("../fixtures/anthropic/text_stream.sse");
pub const TOOL_USE_RESPONSE: &str = include_str!("../fixtures/anthropic/tool_use_response.json");
pub const TOOL_USE_STREAM: &str = include_str!("../fixtures/anthropic/tool_use_stream.sse");
pub const ERROR_MIDSTREAM: &str = include_str!("../fixtures/anthropic/error_midstream.sse");
pub const CUT_STREAM: &str = include_str!("../fixtures/anthropic/cut_stream.sse");

/// The text of [`TEXT_RESPONSE`] / [`TEXT_STREAM`].
pub const TEXT: &str = "Hello!";
/// Usage of the text answer as OpenAI counts it: input 25 + cache read 1800 + cache write 200.
pub const TEXT_USAGE: (u32, u32, u32) = (2025, 15, 2040);
pub const TEXT_CACHED: u32 = 1800;
/// The tool answer: its text, its one call, and usage.
pub const TOOL_TEXT: &str = "Okay, let's check the weather for San Francisco, CA:";
pub const TOOL_ID: &str = "toolu_01T1x1fJ34qAmk2tNTrN7Up6";
pub const TOOL_USAGE: (u32, u32, u32) = (472, 89, 561);
/// The text sent before the `error` event of [`ERROR_MIDSTREAM`].
pub const MIDSTREAM_TEXT: &str = "Once upon";

pub const RATE_LIMIT_MESSAGE: &str = "Number of request tokens has exceeded your per-minute rate limit (https://docs.anthropic.com/en/api/rate-limits); see the response headers for current usage. Please reduce the prompt length or the maximum tokens requested, or try again later. You may also contact sales at https://www.anthropic.com/contact-sales to discuss your options for a rate limit increase.";

/// What the fake answers.
#[derive(Clone, Debug)]
pub enum Answer {
    /// "Hello!" (whole, or streamed with a `ping`).
    Text,
    /// Text, then a `get_weather` tool_use (streamed as `input_json_delta` pieces).
    ToolUse,
    /// Fail with this status and Anthropic's error body (`retry-after` in seconds, if any).
    Fail {
        status: u16,
        retry_after: Option<u32>,
    },
    /// Streams: some text, then an `error` event (`overloaded_error`). Whole: like `Text`.
    ErrorMidStream,
    /// Streams: some text, then the stream ends before `message_stop`. Whole: like `Text`.
    CutStream,
}

#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Value,
}

#[derive(Default)]
struct Shared {
    answer: Mutex<Option<Answer>>,
    received: Mutex<Vec<Received>>,
    hits: AtomicUsize,
}

#[derive(Clone)]
pub struct FakeAnthropic {
    shared: Arc<Shared>,
    /// `http://127.0.0.1:PORT` (the gateway appends `/v1/messages`).
    pub base: String,
}

impl FakeAnthropic {
    pub async fn start() -> Self {
        let shared = Arc::new(Shared::default());
        let app = Router::new().fallback(messages).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeAnthropic {
            shared,
            base: format!("http://{addr}"),
        }
    }

    pub fn set(&self, a: Answer) {
        *self.shared.answer.lock() = Some(a);
    }

    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().clone()
    }

    pub fn last(&self) -> Received {
        self.received()
            .pop()
            .expect("the fake Anthropic received nothing")
    }

    pub fn hits(&self) -> usize {
        self.shared.hits.load(Ordering::SeqCst)
    }
}

/// Anthropic's error answer.
pub fn error(status: u16, kind: &str, message: &str) -> Response {
    let body = json!({"type": "error", "error": {"type": kind, "message": message}});
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap())
        .header("content-type", "application/json")
        .header("request-id", "req_011CFakeErr")
        .body(Body::from(body.to_string()))
        .unwrap()
}

fn invalid(message: impl AsRef<str>) -> Response {
    error(400, "invalid_request_error", message.as_ref())
}

/// The error type Anthropic uses for an HTTP status.
fn error_kind(status: u16) -> (&'static str, &'static str) {
    match status {
        400 => ("invalid_request_error", "invalid request"),
        401 => ("authentication_error", "invalid x-api-key"),
        403 => (
            "permission_error",
            "Your API key does not have permission to use the specified resource.",
        ),
        404 => (
            "not_found_error",
            "The requested resource could not be found.",
        ),
        413 => (
            "request_too_large",
            "Request exceeds the maximum allowed number of bytes.",
        ),
        429 => ("rate_limit_error", RATE_LIMIT_MESSAGE),
        529 => ("overloaded_error", "Overloaded"),
        _ => ("api_error", "Internal server error"),
    }
}

/// The top-level fields the Messages API accepts; it rejects any other with
/// "<field>: Extra inputs are not permitted".
const TOP_LEVEL: [&str; 16] = [
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
    "mcp_servers",
];

const IMAGE_TYPES: [&str; 4] = ["image/jpeg", "image/png", "image/gif", "image/webp"];

fn extra_keys(obj: &serde_json::Map<String, Value>, allowed: &[&str], at: &str) -> Option<String> {
    obj.keys()
        .find(|k| !allowed.contains(&k.as_str()))
        .map(|k| format!("{at}{k}: Extra inputs are not permitted"))
}

/// The content blocks of a message (a string is one text block). `Err` is the message of
/// Anthropic's 400.
fn blocks(content: &Value, at: &str) -> Result<Vec<Value>, String> {
    match content {
        Value::String(s) if s.is_empty() => Err(format!(
            "{at}.content: text content blocks must be non-empty"
        )),
        Value::String(s) => Ok(vec![json!({"type": "text", "text": s})]),
        Value::Array(a) if a.is_empty() => Err(format!(
            "{at}.content: all messages must have non-empty content except for the optional final assistant message"
        )),
        Value::Array(a) => Ok(a.clone()),
        _ => Err(format!("{at}.content: Input should be a valid list")),
    }
}

/// Checks one content block as the API does.
fn check_block(b: &Value, role: &str, at: &str) -> Result<(), String> {
    let Some(obj) = b.as_object() else {
        return Err(format!("{at}: Input should be a valid dictionary"));
    };
    let kind = obj.get("type").and_then(Value::as_str).unwrap_or_default();
    let allowed: &[&str] = match kind {
        "text" => &["type", "text", "cache_control", "citations"],
        "image" => &["type", "source", "cache_control"],
        "tool_use" => &["type", "id", "name", "input", "cache_control"],
        "tool_result" => &[
            "type",
            "tool_use_id",
            "content",
            "is_error",
            "cache_control",
        ],
        other => {
            return Err(format!(
                "{at}: Input tag '{other}' found using 'type' does not match any of the expected tags"
            ));
        }
    };
    if let Some(e) = extra_keys(obj, allowed, &format!("{at}.")) {
        return Err(e);
    }
    match kind {
        "text"
            if obj
                .get("text")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty) =>
        {
            return Err(format!("{at}: text content blocks must be non-empty"));
        }
        "text" => {}
        "image" => {
            let source = &obj["source"];
            match source["type"].as_str() {
                Some("base64") => {
                    let media = source["media_type"].as_str().unwrap_or_default();
                    if !IMAGE_TYPES.contains(&media) {
                        return Err(format!(
                            "{at}.source.base64.media_type: Input should be 'image/jpeg', 'image/png', 'image/gif' or 'image/webp'"
                        ));
                    }
                    let data = source["data"].as_str().unwrap_or_default();
                    use base64::Engine;
                    let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(data) else {
                        return Err(format!("{at}.source.base64.data: invalid base64 data"));
                    };
                    let actual = if bytes.starts_with(b"\x89PNG") {
                        "image/png"
                    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
                        "image/jpeg"
                    } else if bytes.starts_with(b"GIF8") {
                        "image/gif"
                    } else if bytes.len() > 12 && &bytes[8..12] == b"WEBP" {
                        "image/webp"
                    } else {
                        return Err(format!("{at}.source.base64: Could not process image"));
                    };
                    if actual != media {
                        return Err(format!(
                            "{at}.image.source.base64.data: The image was specified using the {media} media type, but the image appears to be a {actual} image"
                        ));
                    }
                }
                Some("url") => {
                    if !source["url"].is_string() {
                        return Err(format!("{at}.source.url.url: Field required"));
                    }
                }
                _ => return Err(format!("{at}.source: invalid image source")),
            }
        }
        "tool_use" => {
            if role != "assistant" {
                return Err(format!(
                    "{at}: tool_use blocks are only allowed in assistant messages"
                ));
            }
            if !obj.get("id").is_some_and(Value::is_string)
                || !obj.get("name").is_some_and(Value::is_string)
                || !obj.get("input").is_some_and(Value::is_object)
            {
                return Err(format!(
                    "{at}: tool_use needs a string id and name and an object input"
                ));
            }
        }
        "tool_result" => {
            if role != "user" {
                return Err(format!(
                    "{at}: tool_result blocks are only allowed in user messages"
                ));
            }
            if !obj.get("tool_use_id").is_some_and(Value::is_string) {
                return Err(format!("{at}.tool_use_id: Field required"));
            }
        }
        _ => {}
    }
    Ok(())
}

/// Checks a Messages API body as Anthropic does; `Err` is the message of its 400.
fn check_body(body: &Value) -> Result<(), String> {
    let Some(obj) = body.as_object() else {
        return Err("Input should be a valid dictionary".into());
    };
    if let Some(e) = extra_keys(obj, &TOP_LEVEL, "") {
        return Err(e);
    }
    if !obj.get("model").is_some_and(Value::is_string) {
        return Err("model: Field required".into());
    }
    match obj.get("max_tokens") {
        None => return Err("max_tokens: Field required".into()),
        Some(v) if v.as_u64().is_none_or(|n| n == 0) => {
            return Err("max_tokens: Input should be a valid positive integer".into());
        }
        _ => {}
    }
    if let Some(t) = obj.get("temperature")
        && t.as_f64().is_none_or(|t| !(0.0..=1.0).contains(&t))
    {
        return Err("temperature: range: 0..1".into());
    }
    if let Some(stops) = obj.get("stop_sequences") {
        let Some(stops) = stops.as_array() else {
            return Err("stop_sequences: Input should be a valid list".into());
        };
        if stops
            .iter()
            .any(|s| s.as_str().is_none_or(|s| s.trim().is_empty()))
        {
            return Err("stop_sequences: each stop sequence must contain non-whitespace".into());
        }
    }
    if let Some(s) = obj.get("stream")
        && !s.is_boolean()
    {
        return Err("stream: Input should be a valid boolean".into());
    }
    match obj.get("system") {
        None | Some(Value::String(_)) => {}
        Some(Value::Array(a))
            if a.iter()
                .all(|b| b["type"] == "text" && b["text"].is_string()) => {}
        Some(_) => return Err("system: Input should be a valid string".into()),
    }
    let Some(messages) = obj.get("messages").and_then(Value::as_array) else {
        return Err("messages: Field required".into());
    };
    if messages.is_empty() {
        return Err("messages: at least one message is required".into());
    }
    let mut previous_tool_uses: HashSet<String> = HashSet::new();
    for (i, m) in messages.iter().enumerate() {
        let at = format!("messages.{i}");
        let Some(mo) = m.as_object() else {
            return Err(format!("{at}: Input should be a valid dictionary"));
        };
        if let Some(e) = extra_keys(mo, &["role", "content"], &format!("{at}.")) {
            return Err(e);
        }
        let role = mo.get("role").and_then(Value::as_str).unwrap_or_default();
        match role {
            "user" | "assistant" => {}
            "system" => {
                return Err(format!(
                    "{at}: Unexpected role \"system\". The Messages API accepts a top-level `system` parameter, not \"system\" as an input message role."
                ));
            }
            other => {
                return Err(format!(
                    "{at}.role: Input should be 'user' or 'assistant', got {other:?}"
                ));
            }
        }
        if i == 0 && role != "user" {
            return Err("messages: first message must use the \"user\" role".into());
        }
        if i > 0 && messages[i - 1]["role"] == role {
            return Err(format!(
                "messages: roles must alternate between \"user\" and \"assistant\", but found multiple \"{role}\" roles in a row"
            ));
        }
        let content = blocks(mo.get("content").unwrap_or(&Value::Null), &at)?;
        for (j, b) in content.iter().enumerate() {
            check_block(b, role, &format!("{at}.content.{j}"))?;
        }
        // tool_result blocks answer the previous assistant turn's tool_use blocks, come first
        // in their turn, and every tool_use gets its result in the very next message.
        let results: Vec<&str> = content
            .iter()
            .filter(|b| b["type"] == "tool_result")
            .filter_map(|b| b["tool_use_id"].as_str())
            .collect();
        if role == "user" {
            let first_other = content.iter().position(|b| b["type"] != "tool_result");
            let last_result = content.iter().rposition(|b| b["type"] == "tool_result");
            if let (Some(o), Some(r)) = (first_other, last_result)
                && o < r
            {
                return Err(format!(
                    "{at}: tool_result blocks must come first in the content of a user message"
                ));
            }
            for id in &results {
                if !previous_tool_uses.contains(*id) {
                    return Err(format!(
                        "{at}.content: unexpected `tool_use_id` found in `tool_result` blocks: {id}. Each `tool_result` block must have a corresponding `tool_use` block in the previous message."
                    ));
                }
            }
            let missing: Vec<&String> = previous_tool_uses
                .iter()
                .filter(|id| !results.contains(&id.as_str()))
                .collect();
            if !missing.is_empty() {
                return Err(format!(
                    "messages.{}: `tool_use` ids were found without `tool_result` blocks immediately after: {missing:?}. Each `tool_use` block must have a corresponding `tool_result` block in the next message.",
                    i - 1
                ));
            }
            previous_tool_uses.clear();
        } else {
            previous_tool_uses = content
                .iter()
                .filter(|b| b["type"] == "tool_use")
                .filter_map(|b| b["id"].as_str().map(String::from))
                .collect();
        }
    }
    let tool_names: Vec<&str> = match obj.get("tools") {
        None => Vec::new(),
        Some(Value::Array(tools)) => {
            let mut names = Vec::new();
            for (i, t) in tools.iter().enumerate() {
                let at = format!("tools.{i}");
                let Some(to) = t.as_object() else {
                    return Err(format!("{at}: Input should be a valid dictionary"));
                };
                if let Some(e) = extra_keys(
                    to,
                    &[
                        "name",
                        "description",
                        "input_schema",
                        "cache_control",
                        "type",
                    ],
                    &format!("{at}.custom."),
                ) {
                    return Err(e);
                }
                let name = to.get("name").and_then(Value::as_str).unwrap_or_default();
                let valid_name = !name.is_empty()
                    && name.len() <= 64
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                if !valid_name {
                    return Err(format!(
                        "{at}.custom.name: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'"
                    ));
                }
                if to.get("input_schema").map(|s| &s["type"]) != Some(&json!("object")) {
                    return Err(format!(
                        "{at}.custom.input_schema: JSON schema is invalid - it must be an object with type \"object\""
                    ));
                }
                names.push(name);
            }
            names
        }
        Some(_) => return Err("tools: Input should be a valid list".into()),
    };
    if let Some(choice) = obj.get("tool_choice") {
        let Some(co) = choice.as_object() else {
            return Err("tool_choice: Input should be a valid dictionary".into());
        };
        match co.get("type").and_then(Value::as_str) {
            Some("auto" | "any" | "none") => {}
            Some("tool") => {
                let name = co.get("name").and_then(Value::as_str).unwrap_or_default();
                if !tool_names.contains(&name) {
                    return Err(format!(
                        "tool_choice.tool.name: tool {name:?} is not among the provided tools"
                    ));
                }
            }
            _ => {
                return Err(
                    "tool_choice: Input tag found using 'type' does not match any of the expected tags: 'auto', 'any', 'tool', 'none'"
                        .into(),
                );
            }
        }
        if let Some(e) = extra_keys(
            co,
            &["type", "name", "disable_parallel_tool_use"],
            "tool_choice.",
        ) {
            return Err(e);
        }
    }
    Ok(())
}

fn json_response(text: &str) -> Response {
    Response::builder()
        .header("content-type", "application/json")
        .header("request-id", "req_011CFakeOk")
        .body(Body::from(text.to_string()))
        .unwrap()
}

/// An SSE transcript sent one event per body frame.
fn sse(transcript: &'static str) -> Response {
    let events: Vec<Result<Bytes, std::io::Error>> = transcript
        .split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| Ok(Bytes::from(format!("{e}\n\n"))))
        .collect();
    Response::builder()
        .header("content-type", "text/event-stream; charset=utf-8")
        .header("cache-control", "no-cache")
        .header("request-id", "req_011CFakeSse")
        .body(Body::from_stream(futures_util::stream::iter(events)))
        .unwrap()
}

async fn messages(
    State(shared): State<Arc<Shared>>,
    method: axum::http::Method,
    uri: Uri,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    shared.hits.fetch_add(1, Ordering::SeqCst);
    shared.received.lock().push(Received {
        path: uri.path().to_string(),
        headers: headers.clone(),
        body: body.clone(),
    });
    if uri.path() != "/v1/messages" || method != axum::http::Method::POST {
        return error(404, "not_found_error", "Not Found");
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    match header("x-api-key") {
        None => return error(401, "authentication_error", "x-api-key header is required"),
        Some(k) if k != ANTHROPIC_KEY => {
            return error(401, "authentication_error", "invalid x-api-key");
        }
        _ => {}
    }
    if headers.contains_key("authorization") {
        // The real API would try the bearer token as an OAuth token; the gateway must not
        // send one.
        return invalid("test fake: an Authorization header was sent to Anthropic");
    }
    match header("anthropic-version") {
        None => return invalid("anthropic-version: header is required"),
        Some("2023-06-01" | "2023-01-01") => {}
        Some(v) => return invalid(format!("anthropic-version: unknown version {v:?}")),
    }
    if !header("content-type").is_some_and(|c| c.starts_with("application/json")) {
        return invalid("content-type: must be application/json");
    }
    if body.is_null() {
        return invalid("There was an error parsing the body of your request as JSON");
    }
    if let Err(message) = check_body(&body) {
        return invalid(message);
    }
    let answer = shared.answer.lock().clone().unwrap_or(Answer::Text);
    let stream = body["stream"] == json!(true);
    match answer {
        Answer::Fail {
            status,
            retry_after,
        } => {
            let (kind, message) = error_kind(status);
            let mut r = error(status, kind, message);
            if let Some(s) = retry_after {
                r.headers_mut()
                    .insert("retry-after", s.to_string().parse().unwrap());
            }
            r
        }
        Answer::ToolUse if stream => sse(TOOL_USE_STREAM),
        Answer::ToolUse => json_response(TOOL_USE_RESPONSE),
        Answer::ErrorMidStream if stream => sse(ERROR_MIDSTREAM),
        Answer::CutStream if stream => sse(CUT_STREAM),
        _ if stream => sse(TEXT_STREAM),
        _ => json_response(TEXT_RESPONSE),
    }
}
