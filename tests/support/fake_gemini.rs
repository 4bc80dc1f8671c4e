//! An in-process fake of the Gemini API (`v1beta`): `POST /v1beta/models/{model}:generateContent`,
//! `:streamGenerateContent?alt=sse` and `:batchEmbedContents`. It checks what it receives as the
//! real API does (the key in `x-goog-api-key`; roles `user`/`model` only; known fields only, in
//! the documented lowerCamelCase; non-empty parts with one data field each; function-call and
//! function-response turns in order and in equal number; schemas in Gemini's OpenAPI subset)
//! and answers with the fixtures of `tests/fixtures/gemini/` (from Google's API reference):
//! whole JSON, or SSE fragments whose last one carries `finishReason` and `usageMetadata`.
//!
//! Two checks are stricter than Google: the key must not travel as `?key=` (the gateway must
//! keep it out of URLs, which end up in logs), and snake_case proto names (`system_instruction`),
//! which Google's proto-JSON parser would also take, are refused like any unknown field, so the
//! gateway keeps to the one documented spelling.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use axum::routing::post;
use parking_lot::Mutex;
use serde_json::{Map, Value, json};

/// The key the fake accepts in `x-goog-api-key`.
pub const GEMINI_KEY: &str = "AIzaSyFakeTestKey0123456789abcdefghij";

pub const TEXT_JSON: &str = include_str!("../fixtures/gemini/text.json");
pub const FUNCTION_CALL_JSON: &str = include_str!("../fixtures/gemini/function_call.json");
pub const STREAM_TEXT: &str = include_str!("../fixtures/gemini/stream_text.sse");
pub const STREAM_FUNCTION_CALL: &str = include_str!("../fixtures/gemini/stream_function_call.sse");
pub const STREAM_CUT: &str = include_str!("../fixtures/gemini/stream_cut.sse");
pub const BLOCKED_JSON: &str = include_str!("../fixtures/gemini/blocked_prompt.json");
pub const SAFETY_JSON: &str = include_str!("../fixtures/gemini/safety_finish.json");
pub const BATCH_EMBED_JSON: &str = include_str!("../fixtures/gemini/batch_embed.json");
pub const ERROR_429_JSON: &str = include_str!("../fixtures/gemini/error_429.json");

/// The text of [`TEXT_JSON`] / [`STREAM_TEXT`], and its usage.
pub const TEXT: &str =
    "The capital of France is Paris. It has been the country's capital since the 10th century.";
pub const TEXT_USAGE: (u32, u32, u32) = (9, 21, 30);
/// The text before the function calls of [`FUNCTION_CALL_JSON`], and its usage.
pub const CALL_TEXT: &str = "I'll look up the weather and the local time.";
pub const CALL_USAGE: (u32, u32, u32) = (74, 26, 100);
pub const RATE_LIMIT_MESSAGE: &str = "Resource has been exhausted (e.g. check quota).";

/// What the fake answers.
#[derive(Clone, Debug)]
pub enum Answer {
    /// The text answer (whole, or three SSE fragments).
    Text,
    /// Text, then `get_weather` and `get_time` function calls, `finishReason: STOP`.
    FunctionCall,
    /// `promptFeedback.blockReason: SAFETY` and no candidates (streamed: one such fragment).
    Blocked,
    /// A candidate stopped with `finishReason: SAFETY` and no content.
    SafetyFinish,
    /// Streams: two text fragments, then the end without any `finishReason`. Whole: `Text`.
    CutStream,
    /// Fail with this status and Google's error body. `retry_after` (seconds) travels as
    /// Gemini sends it: a `google.rpc.RetryInfo` detail with `retryDelay` in the body, no header.
    Fail {
        status: u16,
        retry_after: Option<u32>,
    },
}

#[derive(Clone, Debug)]
pub struct Received {
    /// e.g. `/v1beta/models/gemini-2.0-flash:generateContent`
    pub path: String,
    pub query: Option<String>,
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
pub struct FakeGemini {
    shared: Arc<Shared>,
    /// `http://127.0.0.1:PORT/v1beta` (the gateway's `api_base`, version included).
    pub base: String,
}

impl FakeGemini {
    pub async fn start() -> Self {
        let shared = Arc::new(Shared::default());
        let app = Router::new()
            .route("/v1beta/models/{*rest}", post(models))
            .fallback(|uri: Uri| async move {
                google_error(
                    404,
                    &format!("The requested URL {} was not found.", uri.path()),
                )
            })
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeGemini {
            shared,
            base: format!("http://{addr}/v1beta"),
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
            .expect("the fake Gemini received nothing")
    }

    pub fn hits(&self) -> usize {
        self.shared.hits.load(Ordering::SeqCst)
    }
}

fn status_name(status: u16) -> &'static str {
    match status {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "INTERNAL",
    }
}

/// Google's error answer: `{"error": {"code", "message", "status"}}`.
pub fn google_error(status: u16, message: &str) -> Response {
    let body =
        json!({"error": {"code": status, "message": message, "status": status_name(status)}});
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap())
        .header("content-type", "application/json; charset=UTF-8")
        .body(Body::from(body.to_string()))
        .unwrap()
}

fn invalid(message: impl AsRef<str>) -> Response {
    google_error(400, message.as_ref())
}

fn fail_message(status: u16) -> String {
    match status {
        429 => serde_json::from_str::<Value>(ERROR_429_JSON).unwrap()["error"]["message"]
            .as_str()
            .unwrap()
            .to_string(),
        503 => "The model is overloaded. Please try again later.".into(),
        500 => "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting".into(),
        400 => "Request contains an invalid argument.".into(),
        _ => format!("fake failure {status}"),
    }
}

// ------------------------------------------------------------------------------------------
// Request checks
// ------------------------------------------------------------------------------------------

const REQUEST: &[&str] = &[
    "contents",
    "systemInstruction",
    "tools",
    "toolConfig",
    "generationConfig",
    "safetySettings",
    "cachedContent",
];
const CONTENT: &[&str] = &["role", "parts"];
const PART: &[&str] = &[
    "text",
    "inlineData",
    "fileData",
    "functionCall",
    "functionResponse",
    "executableCode",
    "codeExecutionResult",
    "thought",
    "thoughtSignature",
    "videoMetadata",
];
/// A part's `data` oneof.
const PART_DATA: &[&str] = &[
    "text",
    "inlineData",
    "fileData",
    "functionCall",
    "functionResponse",
    "executableCode",
    "codeExecutionResult",
];
const BLOB: &[&str] = &["mimeType", "data"];
const FILE_DATA: &[&str] = &["mimeType", "fileUri"];
const FUNCTION_CALL: &[&str] = &["id", "name", "args"];
const FUNCTION_RESPONSE: &[&str] = &["id", "name", "response", "willContinue", "scheduling"];
const TOOL: &[&str] = &[
    "functionDeclarations",
    "googleSearch",
    "googleSearchRetrieval",
    "codeExecution",
    "urlContext",
];
const DECLARATION: &[&str] = &[
    "name",
    "description",
    "parameters",
    "parametersJsonSchema",
    "response",
    "behavior",
];
const TOOL_CONFIG: &[&str] = &["functionCallingConfig"];
const CALLING_CONFIG: &[&str] = &["mode", "allowedFunctionNames"];
const GENERATION_CONFIG: &[&str] = &[
    "stopSequences",
    "responseMimeType",
    "responseSchema",
    "responseJsonSchema",
    "responseModalities",
    "candidateCount",
    "maxOutputTokens",
    "temperature",
    "topP",
    "topK",
    "seed",
    "presencePenalty",
    "frequencyPenalty",
    "responseLogprobs",
    "logprobs",
    "thinkingConfig",
    "mediaResolution",
];
const SCHEMA: &[&str] = &[
    "type",
    "format",
    "title",
    "description",
    "nullable",
    "enum",
    "maxItems",
    "minItems",
    "properties",
    "required",
    "minProperties",
    "maxProperties",
    "minLength",
    "maxLength",
    "pattern",
    "example",
    "anyOf",
    "propertyOrdering",
    "default",
    "items",
    "minimum",
    "maximum",
];
const SCHEMA_TYPES: &[&str] = &[
    "TYPE_UNSPECIFIED",
    "STRING",
    "NUMBER",
    "INTEGER",
    "BOOLEAN",
    "ARRAY",
    "OBJECT",
    "NULL",
];
const EMBED_BATCH: &[&str] = &["requests"];
const EMBED_REQUEST: &[&str] = &[
    "model",
    "content",
    "taskType",
    "title",
    "outputDimensionality",
];

/// The object at `at`, with only `allowed` fields (Google's "Unknown name" 400 otherwise).
fn object<'a>(v: &'a Value, allowed: &[&str], at: &str) -> Result<&'a Map<String, Value>, String> {
    let obj = v
        .as_object()
        .ok_or_else(|| format!("Invalid JSON payload received. Expected an object at '{at}'."))?;
    if let Some(k) = obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(format!(
            "Invalid JSON payload received. Unknown name \"{k}\" at '{at}': Cannot find field."
        ));
    }
    Ok(obj)
}

fn array<'a>(v: Option<&'a Value>, at: &str) -> Result<&'a [Value], String> {
    match v {
        None => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err(format!(
            "Invalid JSON payload received. Expected a list at '{at}'."
        )),
    }
}

fn check_schema(v: &Value, at: &str) -> Result<(), String> {
    let s = object(v, SCHEMA, at)?;
    if let Some(t) = s.get("type") {
        let t = t.as_str().unwrap_or_default().to_ascii_uppercase();
        if !SCHEMA_TYPES.contains(&t.as_str()) {
            return Err(format!(
                "Invalid value at '{at}.type' (type.googleapis.com/google.ai.generativelanguage.v1beta.Type), {:?}",
                s["type"]
            ));
        }
        if t == "OBJECT"
            && s.get("properties")
                .and_then(Value::as_object)
                .is_none_or(Map::is_empty)
        {
            return Err(format!(
                "* {at}.properties: should be non-empty for OBJECT type"
            ));
        }
    }
    if let Some(props) = s.get("properties") {
        let props = props.as_object().ok_or_else(|| {
            format!("Invalid JSON payload received. Expected an object at '{at}.properties'.")
        })?;
        for (name, p) in props {
            check_schema(p, &format!("{at}.properties[{name}]"))?;
        }
        for r in array(s.get("required"), &format!("{at}.required"))? {
            let r = r.as_str().unwrap_or_default();
            if !props.contains_key(r) {
                return Err(format!("* {at}.required[{r}]: property is not defined"));
            }
        }
    }
    if let Some(items) = s.get("items") {
        check_schema(items, &format!("{at}.items"))?;
    }
    for (i, a) in array(s.get("anyOf"), &format!("{at}.anyOf"))?
        .iter()
        .enumerate()
    {
        check_schema(a, &format!("{at}.anyOf[{i}]"))?;
    }
    Ok(())
}

/// A `Content`; returns its role and its parts.
fn check_content<'a>(v: &'a Value, at: &str) -> Result<(Option<&'a str>, &'a [Value]), String> {
    let c = object(v, CONTENT, at)?;
    let role = match c.get("role") {
        None => None,
        Some(Value::String(r)) => Some(r.as_str()),
        Some(_) => return Err(format!("Invalid value at '{at}.role'")),
    };
    let parts = array(c.get("parts"), &format!("{at}.parts"))?;
    if parts.is_empty() {
        return Err(format!("* {at}.parts: contents.parts must not be empty."));
    }
    for (j, p) in parts.iter().enumerate() {
        let pat = format!("{at}.parts[{j}]");
        let po = object(p, PART, &pat)?;
        let data: Vec<&String> = po
            .keys()
            .filter(|k| PART_DATA.contains(&k.as_str()))
            .collect();
        match data.len() {
            0 => {
                return Err(format!(
                    "* {pat}.data: required oneof field 'data' must have one initialized field"
                ));
            }
            1 => {}
            _ => {
                return Err(format!(
                    "Invalid JSON payload received. Oneof field 'data' is already set. Cannot set '{}' at '{pat}'",
                    data[1]
                ));
            }
        }
        if let Some(t) = po.get("text")
            && !t.is_string()
        {
            return Err(format!("Invalid value at '{pat}.text'"));
        }
        if let Some(b) = po.get("inlineData") {
            let bo = object(b, BLOB, &format!("{pat}.inlineData"))?;
            let mime = bo
                .get("mimeType")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let data = bo.get("data").and_then(Value::as_str).unwrap_or_default();
            use base64::Engine;
            if mime.is_empty()
                || data.is_empty()
                || base64::engine::general_purpose::STANDARD
                    .decode(data)
                    .is_err()
            {
                return Err(format!(
                    "Invalid value at '{pat}.inline_data.data' (TYPE_BYTES), Base64 decoding failed"
                ));
            }
        }
        if let Some(f) = po.get("fileData") {
            object(f, FILE_DATA, &format!("{pat}.fileData"))?;
        }
        if let Some(f) = po.get("functionCall") {
            let fo = object(f, FUNCTION_CALL, &format!("{pat}.functionCall"))?;
            if fo
                .get("name")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                return Err(format!("* {pat}.function_call.name: Name cannot be empty."));
            }
            if fo.get("args").is_some_and(|a| !a.is_object()) {
                return Err(format!(
                    "Invalid value at '{pat}.function_call.args' (type.googleapis.com/google.protobuf.Struct)"
                ));
            }
        }
        if let Some(f) = po.get("functionResponse") {
            let fo = object(f, FUNCTION_RESPONSE, &format!("{pat}.functionResponse"))?;
            if fo
                .get("name")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                return Err(format!(
                    "* {pat}.function_response.name: Name cannot be empty."
                ));
            }
            if !fo.get("response").is_some_and(Value::is_object) {
                return Err(format!(
                    "Invalid value at '{pat}.function_response.response' (type.googleapis.com/google.protobuf.Struct)"
                ));
            }
        }
    }
    Ok((role, parts))
}

fn count(parts: &[Value], field: &str) -> usize {
    parts.iter().filter(|p| p.get(field).is_some()).count()
}

/// Checks a `GenerateContentRequest`; `Err` is the message of Google's 400.
fn check_generate(body: &Value) -> Result<(), String> {
    let req = object(body, REQUEST, "")?;
    let contents = array(req.get("contents"), "contents")?;
    if contents.is_empty() {
        return Err("* GenerateContentRequest.contents: contents is not specified".into());
    }
    let mut previous: Option<(&str, &[Value])> = None;
    for (i, c) in contents.iter().enumerate() {
        let at = format!("contents[{i}]");
        let (role, parts) = check_content(c, &at)?;
        let role = role.unwrap_or("user");
        if role != "user" && role != "model" {
            return Err(format!(
                "* GenerateContentRequest.{at}.role: Please use a valid role: user, model."
            ));
        }
        let calls = count(parts, "functionCall");
        let responses = count(parts, "functionResponse");
        if calls > 0 {
            if role != "model" {
                return Err(format!(
                    "* GenerateContentRequest.{at}: function calls can only come from the model"
                ));
            }
            if previous.is_none_or(|(r, _)| r != "user") {
                return Err("Please ensure that function call turn comes immediately after a user turn or after a function response turn.".into());
            }
        }
        if responses > 0 {
            if role != "user" {
                return Err(format!(
                    "* GenerateContentRequest.{at}: function responses must be in a user turn"
                ));
            }
            let asked = previous.map_or(0, |(_, p)| count(p, "functionCall"));
            if asked == 0 {
                return Err("Please ensure that function response turn comes immediately after a function call turn.".into());
            }
            if asked != responses {
                return Err("Please ensure that the number of function response parts is equal to the number of function call parts of the function call turn.".into());
            }
        }
        previous = Some((role, parts));
    }
    if let Some(s) = req.get("systemInstruction") {
        let (role, parts) = check_content(s, "system_instruction")?;
        if role.is_some_and(|r| r != "user" && r != "system") {
            return Err("* GenerateContentRequest.system_instruction.role: invalid role".into());
        }
        if parts.iter().any(|p| p.get("text").is_none()) {
            return Err(
                "* GenerateContentRequest.system_instruction: only text parts are supported".into(),
            );
        }
    }
    let mut declared: Vec<&str> = Vec::new();
    for (i, t) in array(req.get("tools"), "tools")?.iter().enumerate() {
        let at = format!("tools[{i}]");
        let to = object(t, TOOL, &at)?;
        for (j, d) in array(
            to.get("functionDeclarations"),
            &format!("{at}.functionDeclarations"),
        )?
        .iter()
        .enumerate()
        {
            let dat = format!("{at}.function_declarations[{j}]");
            let dobj = object(d, DECLARATION, &dat)?;
            let name = dobj.get("name").and_then(Value::as_str).unwrap_or_default();
            let valid = !name.is_empty()
                && name.len() <= 64
                && name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
            if !valid {
                return Err(format!(
                    "* GenerateContentRequest.{dat}.name: Invalid function name. Must start with a letter or an underscore. Must be alphameric (a-z, A-Z, 0-9), underscores (_), dots (.) or dashes (-), with a maximum length of 64."
                ));
            }
            declared.push(name);
            if let Some(p) = dobj.get("parameters") {
                check_schema(p, &format!("GenerateContentRequest.{dat}.parameters"))?;
            }
        }
    }
    if let Some(tc) = req.get("toolConfig") {
        let tco = object(tc, TOOL_CONFIG, "tool_config")?;
        if let Some(fc) = tco.get("functionCallingConfig") {
            let fco = object(fc, CALLING_CONFIG, "tool_config.function_calling_config")?;
            let mode = fco
                .get("mode")
                .and_then(Value::as_str)
                .unwrap_or("MODE_UNSPECIFIED");
            if !["MODE_UNSPECIFIED", "AUTO", "ANY", "NONE", "VALIDATED"].contains(&mode) {
                return Err(format!(
                    "Invalid value at 'tool_config.function_calling_config.mode' (type.googleapis.com/google.ai.generativelanguage.v1beta.FunctionCallingConfig.Mode), \"{mode}\""
                ));
            }
            let allowed = array(fco.get("allowedFunctionNames"), "allowed_function_names")?;
            if !allowed.is_empty() && mode != "ANY" {
                return Err("* GenerateContentRequest.tool_config.function_calling_config.allowed_function_names: only allowed when mode is ANY".into());
            }
            for a in allowed {
                let a = a.as_str().unwrap_or_default();
                if !declared.contains(&a) {
                    return Err(format!(
                        "* GenerateContentRequest.tool_config.function_calling_config.allowed_function_names: {a} is not a declared function"
                    ));
                }
            }
        }
    }
    if let Some(g) = req.get("generationConfig") {
        let go = object(g, GENERATION_CONFIG, "generation_config")?;
        if let Some(t) = go.get("temperature")
            && t.as_f64().is_none_or(|t| !(0.0..=2.0).contains(&t))
        {
            return Err(
                "* GenerateContentRequest.generation_config.temperature: must be in [0.0, 2.0]"
                    .into(),
            );
        }
        if let Some(s) = go.get("responseSchema") {
            check_schema(
                s,
                "GenerateContentRequest.generation_config.response_schema",
            )?;
        }
    }
    Ok(())
}

/// Checks a `BatchEmbedContentsRequest` for the model of the URL.
fn check_embed(body: &Value, model: &str) -> Result<usize, String> {
    let b = object(body, EMBED_BATCH, "")?;
    let requests = array(b.get("requests"), "requests")?;
    if requests.is_empty() {
        return Err("* BatchEmbedContentsRequest.requests: must not be empty".into());
    }
    for (i, r) in requests.iter().enumerate() {
        let at = format!("requests[{i}]");
        let ro = object(r, EMBED_REQUEST, &at)?;
        let want = format!("models/{model}");
        if ro.get("model").and_then(Value::as_str) != Some(want.as_str()) {
            return Err(format!(
                "* BatchEmbedContentsRequest.{at}.model: the model of each request must be the model of the batch ({want})"
            ));
        }
        let (_, parts) = check_content(
            ro.get("content").unwrap_or(&Value::Null),
            &format!("{at}.content"),
        )?;
        if parts.iter().any(|p| p.get("text").is_none()) {
            return Err(format!(
                "* BatchEmbedContentsRequest.{at}.content: only text can be embedded"
            ));
        }
    }
    Ok(requests.len())
}

// ------------------------------------------------------------------------------------------
// Answers
// ------------------------------------------------------------------------------------------

fn json_response(text: String) -> Response {
    Response::builder()
        .header("content-type", "application/json; charset=UTF-8")
        .body(Body::from(text))
        .unwrap()
}

/// An SSE transcript (CRLF line endings, as Gemini sends them) one fragment per body frame.
fn sse(transcript: &str) -> Response {
    let events: Vec<Result<Bytes, std::io::Error>> = transcript
        .split("\r\n\r\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| Ok(Bytes::from(format!("{}\r\n\r\n", e.trim_start()))))
        .collect();
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(futures_util::stream::iter(events)))
        .unwrap()
}

fn minified(json_text: &str) -> String {
    serde_json::from_str::<Value>(json_text)
        .unwrap()
        .to_string()
}

async fn models(
    State(shared): State<Arc<Shared>>,
    Path(rest): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    shared.hits.fetch_add(1, Ordering::SeqCst);
    shared.received.lock().push(Received {
        path: uri.path().to_string(),
        query: uri.query().map(String::from),
        headers: headers.clone(),
        body: body.clone(),
    });
    let query: Vec<(&str, &str)> = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .collect();
    if query.iter().any(|(k, _)| *k == "key") {
        return invalid("test fake: the API key must travel in x-goog-api-key, never in the URL");
    }
    if headers.contains_key("authorization") {
        return google_error(
            401,
            "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.",
        );
    }
    match headers.get("x-goog-api-key").and_then(|v| v.to_str().ok()) {
        None => {
            return google_error(
                403,
                "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.",
            );
        }
        Some(k) if k != GEMINI_KEY => {
            return invalid("API key not valid. Please pass a valid API key.");
        }
        _ => {}
    }
    if !headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/json"))
    {
        return invalid(
            "Invalid JSON payload received: the content type must be application/json.",
        );
    }
    let Some((model, method)) = rest.split_once(':') else {
        return google_error(
            404,
            &format!("models/{rest} is not found for API version v1beta"),
        );
    };
    if body.is_null() {
        return invalid("Invalid JSON payload received. Unexpected end of string.");
    }
    let answer = shared.answer.lock().clone().unwrap_or(Answer::Text);
    if let Answer::Fail {
        status,
        retry_after,
    } = answer
    {
        let mut body = json!({"error": {"code": status, "message": fail_message(status), "status": status_name(status)}});
        if let Some(s) = retry_after {
            body["error"]["details"] = json!([
                {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{
                    "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                    "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"}]},
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": format!("{s}s")}
            ]);
        }
        return Response::builder()
            .status(StatusCode::from_u16(status).unwrap())
            .header("content-type", "application/json; charset=UTF-8")
            .body(Body::from(body.to_string()))
            .unwrap();
    }
    match method {
        "generateContent" | "streamGenerateContent" => {
            let stream = method == "streamGenerateContent";
            if stream && !query.contains(&("alt", "sse")) {
                return invalid(
                    "test fake: streamGenerateContent without alt=sse answers a JSON array, not server-sent events",
                );
            }
            if let Err(m) = check_generate(&body) {
                return invalid(m);
            }
            match (answer, stream) {
                (Answer::FunctionCall, false) => json_response(FUNCTION_CALL_JSON.into()),
                (Answer::FunctionCall, true) => sse(STREAM_FUNCTION_CALL),
                (Answer::Blocked, false) => json_response(BLOCKED_JSON.into()),
                (Answer::Blocked, true) => {
                    sse(&format!("data: {}\r\n\r\n", minified(BLOCKED_JSON)))
                }
                (Answer::SafetyFinish, false) => json_response(SAFETY_JSON.into()),
                (Answer::SafetyFinish, true) => {
                    sse(&format!("data: {}\r\n\r\n", minified(SAFETY_JSON)))
                }
                (Answer::CutStream, true) => sse(STREAM_CUT),
                (_, false) => json_response(TEXT_JSON.into()),
                (_, true) => sse(STREAM_TEXT),
            }
        }
        "batchEmbedContents" => {
            let n = match check_embed(&body, model) {
                Ok(n) => n,
                Err(m) => return invalid(m),
            };
            let fixture: Value = serde_json::from_str(BATCH_EMBED_JSON).unwrap();
            let vectors = fixture["embeddings"].as_array().unwrap();
            let out: Vec<Value> = (0..n).map(|i| vectors[i % vectors.len()].clone()).collect();
            json_response(json!({"embeddings": out}).to_string())
        }
        other => google_error(404, &format!("Method {other} not found on models/{model}")),
    }
}
