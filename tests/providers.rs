//! Every provider, end to end, through both doors: the real server on port 0 in front of an
//! in-process fake of each provider's API (OpenAI, Anthropic, Gemini, and the OpenAI-compatible
//! presets behind a front that checks each host's path and key header). Each test is one
//! behaviour, run over the table of providers ([`ROWS`]) through the HTTP door (reqwest,
//! OpenAI JSON) and the gRPC door (the generated tonic client); it checks both what the client
//! got and what the provider received.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;

use ai_api::grpc::pb;
use ai_api::grpc::pb::ai_api_service_client::AiApiServiceClient;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::response::Response;
use futures_util::StreamExt;
use parking_lot::Mutex;
use serde_json::{Value, json};
use support::fake_anthropic::{self as fa, FakeAnthropic};
use support::fake_gemini::{self as fg, FakeGemini};
use support::fake_openai::{self as fo, Behavior, FakeOpenAi};
use support::{MASTER_KEY, TestGateway, client, sse_data, start};
use tonic::Code;
use tonic::transport::Channel;

// ------------------------------------------------------------------------------------------
// The table
// ------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    OpenAi,
    Anthropic,
    Gemini,
}

/// How an OpenAI-compatible host takes its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyHeader {
    Bearer,
    /// Azure's `api-key` header.
    AzureApiKey,
    /// No key configured: none may be sent.
    NoKey,
}

#[derive(Clone, Copy, Debug)]
struct Row {
    /// The provider prefix of `litellm_params.model`.
    provider: &'static str,
    family: Family,
    chat_model: &'static str,
    embed_model: Option<&'static str>,
    /// OpenAI-compatible hosts: the path the host's API lives under (the public URL's path,
    /// e.g. Groq's `https://api.groq.com/openai/v1`); `api_base` is the fake's root plus this.
    base_path: &'static str,
    key: Option<&'static str>,
    key_header: KeyHeader,
    /// The field `max_tokens` travels as upstream (OpenAI-compatible hosts).
    max_field: &'static str,
    /// The cost of the text answer from the built-in price table, where the test pins it.
    text_cost: Option<f64>,
}

const fn compat(
    provider: &'static str,
    chat_model: &'static str,
    embed_model: Option<&'static str>,
    base_path: &'static str,
    key: Option<&'static str>,
) -> Row {
    Row {
        provider,
        family: Family::OpenAi,
        chat_model,
        embed_model,
        base_path,
        key,
        key_header: if key.is_some() {
            KeyHeader::Bearer
        } else {
            KeyHeader::NoKey
        },
        max_field: "max_tokens",
        text_cost: None,
    }
}

/// Not the gateway's default (2024-10-21), so the test shows the configured one is used.
const AZURE_API_VERSION: &str = "2025-03-01-preview";

const ROWS: [Row; 14] = [
    Row {
        provider: "openai",
        family: Family::OpenAi,
        chat_model: "gpt-4o-mini",
        embed_model: Some("text-embedding-3-small"),
        base_path: "/v1",
        key: Some(fo::UPSTREAM_KEY),
        key_header: KeyHeader::Bearer,
        max_field: "max_completion_tokens",
        // 12 prompt tokens at 1.5e-7, 5 completion tokens at 6e-7.
        text_cost: Some(12.0 * 1.5e-7 + 5.0 * 6e-7),
    },
    Row {
        provider: "azure",
        family: Family::OpenAi,
        chat_model: "gpt4o-prod",
        embed_model: Some("embed-prod"),
        base_path: "",
        key: Some("azure-fake-key-0123456789"),
        key_header: KeyHeader::AzureApiKey,
        max_field: "max_completion_tokens",
        text_cost: None,
    },
    compat(
        "groq",
        "llama-3.3-70b-versatile",
        None,
        "/openai/v1",
        Some("gsk_fake_groq_key"),
    ),
    compat(
        "mistral",
        "mistral-small-latest",
        Some("mistral-embed"),
        "/v1",
        Some("fake-mistral-key"),
    ),
    compat(
        "deepseek",
        "deepseek-chat",
        None,
        "/v1",
        Some("sk-fake-deepseek"),
    ),
    compat(
        "openrouter",
        "anthropic/claude-3.5-sonnet",
        None,
        "/api/v1",
        Some("sk-or-v1-fake"),
    ),
    compat("xai", "grok-3-mini", None, "/v1", Some("xai-fake-key")),
    compat(
        "together_ai",
        "meta-llama/Llama-3.3-70B-Instruct-Turbo",
        None,
        "/v1",
        Some("fake-together-key"),
    ),
    compat(
        "fireworks_ai",
        "accounts/fireworks/models/llama-v3p1-8b-instruct",
        None,
        "/inference/v1",
        Some("fw_fake_key"),
    ),
    // Ollama's api_base is the server's root; the gateway adds /v1.
    compat("ollama", "llama3.2", Some("nomic-embed-text"), "", None),
    compat(
        "hosted_vllm",
        "meta-llama/Llama-3.1-8B-Instruct",
        None,
        "/v1",
        Some("vllm-fake-token"),
    ),
    compat("lm_studio", "qwen2.5-7b-instruct", None, "/v1", None),
    Row {
        provider: "anthropic",
        family: Family::Anthropic,
        chat_model: "claude-sonnet-4-20250514",
        // Anthropic has no embeddings: the group exists to show the refusal.
        embed_model: Some("claude-sonnet-4-20250514"),
        base_path: "",
        key: Some(fa::ANTHROPIC_KEY),
        key_header: KeyHeader::Bearer,
        max_field: "max_tokens",
        // 25 input at 3e-6, 1800 cache reads at 3e-7, 200 cache writes at 3.75e-6, 15 output
        // at 1.5e-5.
        text_cost: Some(25.0 * 3e-6 + 1800.0 * 3e-7 + 200.0 * 3.75e-6 + 15.0 * 1.5e-5),
    },
    Row {
        provider: "gemini",
        family: Family::Gemini,
        chat_model: "gemini-2.0-flash",
        embed_model: Some("gemini-embedding-001"),
        base_path: "",
        key: Some(fg::GEMINI_KEY),
        key_header: KeyHeader::Bearer,
        max_field: "maxOutputTokens",
        // 9 prompt tokens at 1e-7, 21 completion tokens at 4e-7.
        text_cost: Some(9.0 * 1e-7 + 21.0 * 4e-7),
    },
];

fn row(provider: &str) -> Row {
    *ROWS.iter().find(|r| r.provider == provider).unwrap()
}

/// Where an OpenAI-compatible host's requests for `model` must land (before `/chat/completions`
/// or `/embeddings`).
fn request_prefix(row: &Row, model: &str) -> String {
    match row.provider {
        "azure" => format!("/openai/deployments/{model}"),
        "ollama" => "/v1".into(),
        _ => row.base_path.into(),
    }
}

fn expected_query(row: &Row) -> Option<String> {
    (row.provider == "azure").then(|| format!("api-version={AZURE_API_VERSION}"))
}

// ------------------------------------------------------------------------------------------
// A front for the OpenAI-compatible presets: it checks each host's URL and key header, records
// the request, and passes it on to the fake OpenAI.
// ------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Sent {
    path: String,
    query: Option<String>,
    headers: HeaderMap,
    body: Value,
}

struct FrontState {
    /// (path the host serves, the fake OpenAI's path it maps to)
    routes: Vec<(String, &'static str)>,
    query: Option<String>,
    key: Option<&'static str>,
    key_header: KeyHeader,
    upstream: String,
    hits: Mutex<Vec<Sent>>,
    http: reqwest::Client,
}

#[derive(Clone)]
struct Front {
    state: Arc<FrontState>,
    /// `http://127.0.0.1:PORT`
    root: String,
}

fn openai_error(status: u16, message: &str, code: &str) -> Response {
    let body = json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": code}});
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

async fn front_handler(
    State(st): State<Arc<FrontState>>,
    uri: Uri,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    st.hits.lock().push(Sent {
        path: uri.path().to_string(),
        query: uri.query().map(String::from),
        headers: headers.clone(),
        body: serde_json::from_slice(&raw).unwrap_or(Value::Null),
    });
    let Some(op) = st
        .routes
        .iter()
        .find(|(p, _)| p == uri.path())
        .map(|(_, op)| *op)
    else {
        return openai_error(
            404,
            &format!("Unknown request URL: POST {}", uri.path()),
            "unknown_url",
        );
    };
    if uri.query() != st.query.as_deref() {
        // Azure without (or with a wrong) api-version.
        return openai_error(404, "Resource not found", "404");
    }
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    let authorized = match st.key_header {
        KeyHeader::Bearer => {
            h("authorization") == Some(&format!("Bearer {}", st.key.unwrap()))
                && h("api-key").is_none()
        }
        KeyHeader::AzureApiKey => h("api-key") == st.key && h("authorization").is_none(),
        KeyHeader::NoKey => h("authorization").is_none() && h("api-key").is_none(),
    };
    if !authorized {
        return openai_error(401, "Incorrect API key provided", "invalid_api_key");
    }
    let resp = st
        .http
        .post(format!("{}{op}", st.upstream))
        .bearer_auth(fo::UPSTREAM_KEY)
        .header("content-type", "application/json")
        .body(raw)
        .send()
        .await
        .unwrap();
    let mut b = Response::builder().status(resp.status().as_u16());
    for name in ["content-type", "retry-after"] {
        if let Some(v) = resp.headers().get(name) {
            b = b.header(name, v.clone());
        }
    }
    b.body(Body::from_stream(resp.bytes_stream())).unwrap()
}

impl Front {
    async fn start(row: &Row, fake: &FakeOpenAi) -> Self {
        let mut routes = vec![(
            format!("{}/chat/completions", request_prefix(row, row.chat_model)),
            "/chat/completions",
        )];
        if let Some(m) = row.embed_model {
            routes.push((
                format!("{}/embeddings", request_prefix(row, m)),
                "/embeddings",
            ));
        }
        let state = Arc::new(FrontState {
            routes,
            query: expected_query(row),
            key: row.key,
            key_header: row.key_header,
            upstream: fake.base.clone(),
            hits: Mutex::new(Vec::new()),
            http: reqwest::Client::new(),
        });
        let app = axum::Router::new()
            .fallback(front_handler)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Front {
            state,
            root: format!("http://{addr}"),
        }
    }
}

// ------------------------------------------------------------------------------------------
// The rig: one provider's fake(s), the gateway in front of it, and a gRPC client
// ------------------------------------------------------------------------------------------

enum Upstream {
    OpenAi {
        fake: FakeOpenAi,
        front: Option<Front>,
    },
    Anthropic(FakeAnthropic),
    Gemini(FakeGemini),
}

/// What the providers are told to answer, in each one's terms.
#[derive(Clone, Copy, Debug)]
enum Ans {
    Text,
    Tools,
    RateLimited,
}

/// What a provider's fixture answers, as the client should see it.
struct Expect {
    text: &'static str,
    usage: (u32, u32, u32),
    tool_text: Option<&'static str>,
    /// (name, arguments)
    calls: Vec<(&'static str, Value)>,
    tool_usage: (u32, u32, u32),
    rate_limit_message: &'static str,
    retry_after: Option<&'static str>,
}

const OPENAI_RATE_LIMIT: &str = "Rate limit reached for gpt-4o-mini in organization org-fake on requests per min (RPM): Limit 3, Used 3, Requested 1.";

struct Rig {
    row: Row,
    up: Upstream,
    gw: TestGateway,
    grpc: AiApiServiceClient<Channel>,
}

impl Rig {
    async fn start(row: Row) -> Rig {
        let (up, api_base) = match row.family {
            Family::OpenAi => {
                let fake = FakeOpenAi::start().await;
                if row.provider == "openai" {
                    let base = fake.base.clone();
                    (Upstream::OpenAi { fake, front: None }, base)
                } else {
                    let front = Front::start(&row, &fake).await;
                    let base = format!("{}{}", front.root, row.base_path);
                    (
                        Upstream::OpenAi {
                            fake,
                            front: Some(front),
                        },
                        base,
                    )
                }
            }
            Family::Anthropic => {
                let fake = FakeAnthropic::start().await;
                let base = fake.base.clone();
                (Upstream::Anthropic(fake), base)
            }
            Family::Gemini => {
                let fake = FakeGemini::start().await;
                let base = fake.base.clone();
                (Upstream::Gemini(fake), base)
            }
        };
        let mut yaml = String::from("model_list:\n");
        let models = [("chat", Some(row.chat_model)), ("embed", row.embed_model)];
        for (group, model) in models {
            let Some(model) = model else { continue };
            yaml.push_str(&format!(
                "  - model_name: {group}\n    litellm_params:\n      model: {}/{model}\n      api_base: {api_base}\n",
                row.provider
            ));
            if let Some(key) = row.key {
                yaml.push_str(&format!("      api_key: {key}\n"));
            }
            if row.provider == "azure" {
                yaml.push_str(&format!("      api_version: \"{AZURE_API_VERSION}\"\n"));
            }
        }
        yaml.push_str(&format!("general_settings:\n  master_key: {MASTER_KEY}\n"));
        let gw = start(&yaml, &[]).await;
        let grpc = AiApiServiceClient::connect(gw.grpc_url()).await.unwrap();
        Rig { row, up, gw, grpc }
    }

    fn name(&self) -> &'static str {
        self.row.provider
    }

    fn answer(&self, a: Ans) {
        match (&self.up, a) {
            (Upstream::OpenAi { fake, .. }, Ans::Text) => fake.set(Behavior::Normal),
            (Upstream::OpenAi { fake, .. }, Ans::Tools) => fake.set(Behavior::ToolCalls),
            (Upstream::OpenAi { fake, .. }, Ans::RateLimited) => fake.set(Behavior::Status(
                429,
                json!({"error": {"message": OPENAI_RATE_LIMIT, "type": "requests", "param": null, "code": "rate_limit_exceeded"}})
                    .to_string(),
            )),
            (Upstream::Anthropic(f), Ans::Text) => f.set(fa::Answer::Text),
            (Upstream::Anthropic(f), Ans::Tools) => f.set(fa::Answer::ToolUse),
            (Upstream::Anthropic(f), Ans::RateLimited) => f.set(fa::Answer::Fail {
                status: 429,
                retry_after: Some(7),
            }),
            (Upstream::Gemini(f), Ans::Text) => f.set(fg::Answer::Text),
            (Upstream::Gemini(f), Ans::Tools) => f.set(fg::Answer::FunctionCall),
            (Upstream::Gemini(f), Ans::RateLimited) => f.set(fg::Answer::Fail {
                status: 429,
                retry_after: None,
            }),
        }
    }

    fn expect(&self) -> Expect {
        match self.row.family {
            Family::OpenAi => Expect {
                text: "Hello there, friend!",
                usage: (12, 5, 17),
                tool_text: None,
                calls: vec![("get_weather", json!({"city": "Paris"}))],
                tool_usage: (12, 5, 17),
                rate_limit_message: OPENAI_RATE_LIMIT,
                retry_after: Some("3"),
            },
            Family::Anthropic => Expect {
                text: fa::TEXT,
                usage: fa::TEXT_USAGE,
                tool_text: Some(fa::TOOL_TEXT),
                calls: vec![(
                    "get_weather",
                    json!({"location": "San Francisco, CA", "unit": "fahrenheit"}),
                )],
                tool_usage: fa::TOOL_USAGE,
                rate_limit_message: fa::RATE_LIMIT_MESSAGE,
                retry_after: Some("7"),
            },
            Family::Gemini => Expect {
                text: fg::TEXT,
                usage: fg::TEXT_USAGE,
                tool_text: Some(fg::CALL_TEXT),
                calls: vec![
                    (
                        "get_weather",
                        json!({"unit": "celsius", "location": "Paris"}),
                    ),
                    ("get_time", json!({"timezone": "Europe/Paris"})),
                ],
                tool_usage: fg::CALL_USAGE,
                rate_limit_message: fg::RATE_LIMIT_MESSAGE,
                retry_after: None,
            },
        }
    }

    /// Every request the provider received, oldest first.
    fn all_sent(&self) -> Vec<Sent> {
        match &self.up {
            Upstream::OpenAi {
                front: Some(front), ..
            } => front.state.hits.lock().clone(),
            Upstream::OpenAi { fake, front: None } => fake
                .received()
                .into_iter()
                .map(|r| Sent {
                    path: r.path,
                    query: None,
                    headers: r.headers,
                    body: r.body,
                })
                .collect(),
            Upstream::Anthropic(f) => f
                .received()
                .into_iter()
                .map(|r| Sent {
                    path: r.path,
                    query: None,
                    headers: r.headers,
                    body: r.body,
                })
                .collect(),
            Upstream::Gemini(f) => f
                .received()
                .into_iter()
                .map(|r| Sent {
                    path: r.path,
                    query: r.query,
                    headers: r.headers,
                    body: r.body,
                })
                .collect(),
        }
    }

    fn sent(&self) -> Sent {
        self.all_sent()
            .pop()
            .unwrap_or_else(|| panic!("{}: the provider received nothing", self.name()))
    }

    fn hits(&self) -> usize {
        self.all_sent().len()
    }

    async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        client()
            .post(self.gw.url(path))
            .bearer_auth(MASTER_KEY)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// A chat completion through the HTTP door that must succeed.
    async fn http_chat(&self, body: &Value) -> Value {
        let resp = self.post("/v1/chat/completions", body).await;
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert_eq!(status, 200, "{}: {text}", self.name());
        serde_json::from_str(&text).unwrap()
    }

    /// A streamed chat completion through the HTTP door: its SSE `data:` payloads.
    async fn http_stream(&self, body: &Value) -> Vec<String> {
        let resp = self.post("/v1/chat/completions", body).await;
        let status = resp.status();
        let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
        let text = resp.text().await.unwrap();
        assert_eq!(status, 200, "{}: {text}", self.name());
        assert_eq!(ct, "text/event-stream", "{}", self.name());
        sse_data(&text)
    }

    async fn grpc_chat(&self, req: pb::ChatRequest) -> pb::ChatResponse {
        self.grpc
            .clone()
            .chat(authed(req))
            .await
            .unwrap_or_else(|e| panic!("{}: {e:?}", self.name()))
            .into_inner()
    }

    /// A streamed chat through the gRPC door: its messages, and the status it ended with.
    async fn grpc_stream(
        &self,
        req: pb::ChatRequest,
    ) -> (Vec<pb::StreamChatResponse>, Option<tonic::Status>) {
        let mut stream = self
            .grpc
            .clone()
            .stream_chat(authed(streamed(req)))
            .await
            .unwrap_or_else(|e| panic!("{}: {e:?}", self.name()))
            .into_inner();
        let mut msgs = Vec::new();
        while let Some(m) = stream.next().await {
            match m {
                Ok(m) => msgs.push(m),
                Err(e) => return (msgs, Some(e)),
            }
        }
        (msgs, None)
    }
}

// ------------------------------------------------------------------------------------------
// Requests and their reassembly
// ------------------------------------------------------------------------------------------

fn authed<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {MASTER_KEY}").parse().unwrap(),
    );
    r
}

fn streamed(r: pb::ChatRequest) -> pb::StreamChatRequest {
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
    pb::StreamChatRequest {
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

fn to_struct(v: &Value) -> prost_types::Struct {
    ai_api::grpc::convert::json_to_struct(v).unwrap_or_else(|| panic!("not an object: {v}"))
}

fn pb_msg(role: &str, content: &str) -> pb::ChatMessage {
    pb::ChatMessage {
        role: role.into(),
        content: content.into(),
        ..Default::default()
    }
}

const SYSTEM: &str = "You are terse.";
const USER: &str = "Say hello.";
const WEATHER_QUESTION: &str = "What's the weather in Paris, and what time is it there?";
/// A 1x1 PNG.
const PNG_B64: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==";

fn weather_params() -> Value {
    json!({
        "type": "object",
        "properties": {
            "location": {"type": "string", "description": "City and country"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}
        },
        "required": ["location"]
    })
}

fn time_params() -> Value {
    json!({"type": "object", "properties": {"timezone": {"type": "string"}}, "required": ["timezone"]})
}

fn http_tools() -> Value {
    json!([
        {"type": "function", "function": {"name": "get_weather", "description": "Current weather of a city", "parameters": weather_params()}},
        {"type": "function", "function": {"name": "get_time", "description": "Local time in a timezone", "parameters": time_params()}}
    ])
}

fn pb_tools() -> Vec<pb::Tool> {
    [
        ("get_weather", "Current weather of a city", weather_params()),
        ("get_time", "Local time in a timezone", time_params()),
    ]
    .into_iter()
    .map(|(name, description, params)| pb::Tool {
        r#type: "function".into(),
        function: Some(pb::FunctionDefinition {
            name: name.into(),
            description: description.into(),
            parameters: Some(to_struct(&params)),
            strict: None,
        }),
    })
    .collect()
}

/// The tool result the client sends back for a call.
fn tool_result(name: &str) -> Value {
    match name {
        "get_time" => json!({"time": "14:05"}),
        _ => json!({"temperature_c": 21}),
    }
}

#[derive(Clone, Debug, PartialEq)]
struct Call {
    id: String,
    name: String,
    arguments: Value,
}

/// A reassembled answer (whole or streamed).
#[derive(Clone, Debug, Default, PartialEq)]
struct Assembled {
    role: Option<String>,
    text: String,
    calls: Vec<Call>,
    finish: Option<String>,
    usage: Option<(u32, u32, u32)>,
}

fn parse_args(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("arguments {s:?} are not JSON: {e}"))
}

fn assemble_http(body: &Value) -> Assembled {
    let msg = &body["choices"][0]["message"];
    let calls = msg["tool_calls"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| {
                    assert_eq!(c["type"], "function");
                    Call {
                        id: c["id"].as_str().unwrap().into(),
                        name: c["function"]["name"].as_str().unwrap().into(),
                        arguments: parse_args(c["function"]["arguments"].as_str().unwrap()),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    let u = &body["usage"];
    Assembled {
        role: msg["role"].as_str().map(String::from),
        text: msg["content"].as_str().unwrap_or_default().into(),
        calls,
        finish: body["choices"][0]["finish_reason"]
            .as_str()
            .map(String::from),
        usage: Some((
            u["prompt_tokens"].as_u64().unwrap() as u32,
            u["completion_tokens"].as_u64().unwrap() as u32,
            u["total_tokens"].as_u64().unwrap() as u32,
        )),
    }
}

/// Reassembles OpenAI chunks: text appended, tool calls by index (id and name from their first
/// fragment, arguments appended), the finish reason, and the usage chunk's usage.
fn assemble_chunks(chunks: &[Value]) -> Assembled {
    let mut a = Assembled::default();
    let mut args: Vec<String> = Vec::new();
    for c in chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        if let Some(u) = c.get("usage").filter(|u| !u.is_null()) {
            a.usage = Some((
                u["prompt_tokens"].as_u64().unwrap() as u32,
                u["completion_tokens"].as_u64().unwrap() as u32,
                u["total_tokens"].as_u64().unwrap() as u32,
            ));
        }
        for ch in c["choices"].as_array().unwrap() {
            let d = &ch["delta"];
            if let Some(r) = d["role"].as_str() {
                a.role.get_or_insert_with(|| r.to_string());
            }
            if let Some(t) = d["content"].as_str() {
                a.text.push_str(t);
            }
            for t in d["tool_calls"].as_array().into_iter().flatten() {
                let i = t["index"].as_u64().unwrap() as usize;
                while a.calls.len() <= i {
                    a.calls.push(Call {
                        id: String::new(),
                        name: String::new(),
                        arguments: Value::Null,
                    });
                    args.push(String::new());
                }
                if let Some(id) = t["id"].as_str().filter(|s| !s.is_empty()) {
                    a.calls[i].id = id.into();
                }
                if let Some(n) = t["function"]["name"].as_str().filter(|s| !s.is_empty()) {
                    a.calls[i].name = n.into();
                }
                if let Some(p) = t["function"]["arguments"].as_str() {
                    args[i].push_str(p);
                }
            }
            if let Some(f) = ch["finish_reason"].as_str() {
                assert!(a.finish.is_none(), "two finish reasons: {chunks:?}");
                a.finish = Some(f.into());
            }
        }
    }
    for (c, s) in a.calls.iter_mut().zip(args) {
        c.arguments = parse_args(&s);
    }
    a
}

fn pb_finish(f: i32) -> Option<String> {
    match pb::FinishReason::try_from(f).unwrap() {
        pb::FinishReason::Unspecified => None,
        pb::FinishReason::Stop => Some("stop".into()),
        pb::FinishReason::Length => Some("length".into()),
        pb::FinishReason::ToolCalls => Some("tool_calls".into()),
        pb::FinishReason::ContentFilter => Some("content_filter".into()),
    }
}

fn pb_usage(u: &pb::Usage) -> (u32, u32, u32) {
    (u.prompt_tokens, u.completion_tokens, u.total_tokens)
}

fn assemble_pb(r: &pb::ChatResponse) -> Assembled {
    let msg = r.choices[0].message.as_ref().unwrap();
    Assembled {
        role: Some(msg.role.clone()),
        text: msg.content.clone(),
        calls: msg
            .tool_calls
            .iter()
            .map(|c| {
                let f = c.function.as_ref().unwrap();
                Call {
                    id: c.id.clone(),
                    name: f.name.clone(),
                    arguments: parse_args(&f.arguments),
                }
            })
            .collect(),
        finish: pb_finish(r.choices[0].finish_reason),
        usage: r.usage.as_ref().map(pb_usage),
    }
}

fn assemble_pb_stream(msgs: &[pb::StreamChatResponse]) -> Assembled {
    let mut a = Assembled::default();
    let mut args: Vec<String> = Vec::new();
    for m in msgs {
        if let Some(u) = &m.usage {
            assert!(a.usage.is_none(), "usage twice");
            a.usage = Some(pb_usage(u));
        }
        for ch in &m.choices {
            let d = ch.delta.clone().unwrap_or_default();
            if !d.role.is_empty() {
                a.role.get_or_insert(d.role.clone());
            }
            a.text.push_str(&d.content);
            for t in &d.tool_calls {
                let i = t.index as usize;
                while a.calls.len() <= i {
                    a.calls.push(Call {
                        id: String::new(),
                        name: String::new(),
                        arguments: Value::Null,
                    });
                    args.push(String::new());
                }
                if !t.id.is_empty() {
                    a.calls[i].id.clone_from(&t.id);
                }
                if !t.name.is_empty() {
                    a.calls[i].name.clone_from(&t.name);
                }
                args[i].push_str(&t.arguments);
            }
            if let Some(f) = pb_finish(ch.finish_reason) {
                assert!(a.finish.is_none(), "two finish reasons");
                a.finish = Some(f);
            }
        }
    }
    for (c, s) in a.calls.iter_mut().zip(args) {
        c.arguments = parse_args(&s);
    }
    a
}

/// Splits an HTTP stream's events into its chunks and what ended it.
fn split_events(events: &[String]) -> (Vec<Value>, bool, Option<Value>) {
    let mut chunks = Vec::new();
    let mut done = false;
    let mut error = None;
    for (i, e) in events.iter().enumerate() {
        if e == "[DONE]" {
            assert_eq!(i, events.len() - 1, "[DONE] is not the last event");
            done = true;
            continue;
        }
        let v: Value = serde_json::from_str(e).unwrap();
        if v.get("error").is_some() {
            assert_eq!(i, events.len() - 1, "an error event is not the last event");
            error = Some(v);
        } else {
            chunks.push(v);
        }
    }
    (chunks, done, error)
}

// ------------------------------------------------------------------------------------------
// What each provider must have received
// ------------------------------------------------------------------------------------------

fn header<'a>(s: &'a Sent, name: &str) -> Option<&'a str> {
    s.headers.get(name).and_then(|v| v.to_str().ok())
}

/// The URL and key header of a chat (`op` "chat/completions") or embeddings call.
fn assert_endpoint(rig: &Rig, s: &Sent, op: &str, stream: bool) {
    let name = rig.name();
    let row = &rig.row;
    match row.family {
        Family::OpenAi => {
            let model = if op == "embeddings" {
                row.embed_model.unwrap()
            } else {
                row.chat_model
            };
            assert_eq!(
                s.path,
                format!("{}/{op}", request_prefix(row, model)),
                "{name}"
            );
            assert_eq!(s.query, expected_query(row), "{name}");
            match row.key_header {
                KeyHeader::Bearer => {
                    assert_eq!(
                        header(s, "authorization"),
                        Some(format!("Bearer {}", row.key.unwrap()).as_str()),
                        "{name}"
                    );
                }
                KeyHeader::AzureApiKey => {
                    assert_eq!(header(s, "api-key"), row.key, "{name}");
                    assert_eq!(header(s, "authorization"), None, "{name}");
                }
                KeyHeader::NoKey => {
                    assert_eq!(header(s, "authorization"), None, "{name}");
                    assert_eq!(header(s, "api-key"), None, "{name}");
                }
            }
        }
        Family::Anthropic => {
            assert_eq!(s.path, "/v1/messages");
            assert_eq!(header(s, "x-api-key"), Some(fa::ANTHROPIC_KEY));
            assert_eq!(header(s, "anthropic-version"), Some("2023-06-01"));
            assert_eq!(header(s, "authorization"), None);
        }
        Family::Gemini => {
            let (model, method) = match (op, stream) {
                ("embeddings", _) => (row.embed_model.unwrap(), "batchEmbedContents"),
                (_, false) => (row.chat_model, "generateContent"),
                (_, true) => (row.chat_model, "streamGenerateContent"),
            };
            assert_eq!(s.path, format!("/v1beta/models/{model}:{method}"));
            assert_eq!(s.query.as_deref(), stream.then_some("alt=sse"));
            assert_eq!(header(s, "x-goog-api-key"), Some(fg::GEMINI_KEY));
        }
    }
}

/// The system + user conversation, with max_tokens 100 and temperature 0.5, as each provider
/// wants it: OpenAI keeps the system message first in `messages`, Anthropic moves it to the
/// top-level `system`, Gemini to `systemInstruction`.
fn assert_plain_sent(rig: &Rig, s: &Sent, stream: bool) {
    let name = rig.name();
    let b = &s.body;
    assert_endpoint(rig, s, "chat/completions", stream);
    match rig.row.family {
        Family::OpenAi => {
            assert_eq!(b["model"], rig.row.chat_model, "{name}");
            let msgs: Vec<(&str, &str)> = b["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| (m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
                .collect();
            assert_eq!(msgs, [("system", SYSTEM), ("user", USER)], "{name}");
            assert_eq!(b[rig.row.max_field], 100, "{name}: {b}");
            let other = if rig.row.max_field == "max_tokens" {
                "max_completion_tokens"
            } else {
                "max_tokens"
            };
            assert!(b.get(other).is_none(), "{name}: {other} sent too: {b}");
            assert_eq!(b["temperature"], 0.5, "{name}");
            if stream {
                assert_eq!(b["stream"], true, "{name}");
                assert_eq!(b["stream_options"]["include_usage"], true, "{name}");
            } else {
                assert!(b.get("stream").is_none_or(|v| v == false), "{name}");
            }
        }
        Family::Anthropic => {
            assert_eq!(b["model"], "claude-sonnet-4-20250514");
            assert_eq!(b["system"], SYSTEM);
            assert_eq!(b["messages"], json!([{"role": "user", "content": USER}]));
            assert_eq!(b["max_tokens"], 100);
            assert_eq!(b["temperature"], 0.5);
            if stream {
                assert_eq!(b["stream"], true);
            } else {
                assert!(b.get("stream").is_none_or(|v| v == false));
            }
        }
        Family::Gemini => {
            assert_eq!(b["systemInstruction"], json!({"parts": [{"text": SYSTEM}]}));
            assert_eq!(
                b["contents"],
                json!([{"role": "user", "parts": [{"text": USER}]}])
            );
            assert_eq!(b["generationConfig"]["maxOutputTokens"], 100);
            assert_eq!(b["generationConfig"]["temperature"], 0.5);
        }
    }
}

fn plain_http(stream: bool) -> Value {
    let mut b = json!({"model": "chat", "messages": [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": USER}
    ], "max_tokens": 100, "temperature": 0.5});
    if stream {
        b["stream"] = json!(true);
        b["stream_options"] = json!({"include_usage": true});
    }
    b
}

fn plain_pb() -> pb::ChatRequest {
    pb::ChatRequest {
        model: "chat".into(),
        messages: vec![pb_msg("system", SYSTEM), pb_msg("user", USER)],
        max_tokens: Some(100),
        temperature: Some(0.5),
        ..Default::default()
    }
}

/// The expected calls of the rig's tool answer, with ids where the provider gives them
/// (Gemini's are made by the gateway: checked for shape instead).
fn assert_calls(rig: &Rig, got: &[Call]) {
    let name = rig.name();
    let want = rig.expect().calls;
    let names: Vec<(&str, &Value)> = got
        .iter()
        .map(|c| (c.name.as_str(), &c.arguments))
        .collect();
    let want_names: Vec<(&str, &Value)> = want.iter().map(|(n, a)| (*n, a)).collect();
    assert_eq!(names, want_names, "{name}");
    match rig.row.family {
        Family::OpenAi => assert_eq!(got[0].id, "call_abc", "{name}"),
        Family::Anthropic => assert_eq!(got[0].id, fa::TOOL_ID),
        Family::Gemini => {
            for c in got {
                assert!(
                    c.id.starts_with("call_") && c.id.len() == 21,
                    "synthesized id {:?}",
                    c.id
                );
            }
            assert_ne!(got[0].id, got[1].id);
        }
    }
}

/// The tools, and the tool choice (`"required"` from the HTTP door, the named `get_weather`
/// from the gRPC door), in the provider's format.
fn assert_tools_sent(rig: &Rig, s: &Sent, named: bool) {
    let name = rig.name();
    let b = &s.body;
    match rig.row.family {
        Family::OpenAi => {
            assert_eq!(b["tools"][0]["type"], "function", "{name}");
            assert_eq!(b["tools"][0]["function"]["name"], "get_weather", "{name}");
            assert_eq!(
                b["tools"][0]["function"]["parameters"],
                weather_params(),
                "{name}"
            );
            assert_eq!(b["tools"][1]["function"]["name"], "get_time", "{name}");
            let choice = if named {
                json!({"type": "function", "function": {"name": "get_weather"}})
            } else {
                json!("required")
            };
            assert_eq!(b["tool_choice"], choice, "{name}");
        }
        Family::Anthropic => {
            assert_eq!(
                b["tools"],
                json!([
                    {"name": "get_weather", "description": "Current weather of a city", "input_schema": weather_params()},
                    {"name": "get_time", "description": "Local time in a timezone", "input_schema": time_params()}
                ])
            );
            let choice = if named {
                json!({"type": "tool", "name": "get_weather"})
            } else {
                json!({"type": "any"})
            };
            assert_eq!(b["tool_choice"], choice);
        }
        Family::Gemini => {
            let decls = &b["tools"][0]["functionDeclarations"];
            assert_eq!(decls[0]["name"], "get_weather");
            assert_eq!(decls[0]["description"], "Current weather of a city");
            let p = &decls[0]["parameters"];
            assert_eq!(p["type"].as_str().unwrap().to_uppercase(), "OBJECT");
            assert_eq!(
                p["properties"]["location"]["type"]
                    .as_str()
                    .unwrap()
                    .to_uppercase(),
                "STRING"
            );
            assert_eq!(
                p["properties"]["unit"]["enum"],
                json!(["celsius", "fahrenheit"])
            );
            assert_eq!(p["required"], json!(["location"]));
            assert_eq!(decls[1]["name"], "get_time");
            let config = if named {
                json!({"mode": "ANY", "allowedFunctionNames": ["get_weather"]})
            } else {
                json!({"mode": "ANY"})
            };
            assert_eq!(b["toolConfig"]["functionCallingConfig"], config);
        }
    }
}

/// The follow-up after the tool calls: the assistant's calls and the tool results, as the
/// provider wants them (Anthropic: tool_use + tool_result blocks; Gemini: functionCall +
/// functionResponse parts, the function's name recovered from the call's id).
fn assert_follow_up_sent(rig: &Rig, s: &Sent, calls: &[Call]) {
    let name = rig.name();
    let b = &s.body;
    let tool_text = rig.expect().tool_text;
    match rig.row.family {
        Family::OpenAi => {
            let msgs = b["messages"].as_array().unwrap();
            assert_eq!(msgs.len(), 2 + calls.len(), "{name}: {b}");
            assert_eq!(msgs[0]["role"], "user", "{name}");
            assert_eq!(msgs[1]["role"], "assistant", "{name}");
            for (i, c) in calls.iter().enumerate() {
                let tc = &msgs[1]["tool_calls"][i];
                assert_eq!(tc["id"], c.id.as_str(), "{name}");
                assert_eq!(tc["type"], "function", "{name}");
                assert_eq!(tc["function"]["name"], c.name.as_str(), "{name}");
                assert_eq!(
                    parse_args(tc["function"]["arguments"].as_str().unwrap()),
                    c.arguments,
                    "{name}"
                );
                let t = &msgs[2 + i];
                assert_eq!(t["role"], "tool", "{name}");
                assert_eq!(t["tool_call_id"], c.id.as_str(), "{name}");
                assert_eq!(
                    parse_args(t["content"].as_str().unwrap()),
                    tool_result(&c.name),
                    "{name}"
                );
            }
        }
        Family::Anthropic => {
            let mut assistant = vec![json!({"type": "text", "text": tool_text.unwrap()})];
            let mut results = Vec::new();
            for c in calls {
                assistant.push(
                    json!({"type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments}),
                );
                results.push(json!({"type": "tool_result", "tool_use_id": c.id, "content": tool_result(&c.name).to_string()}));
            }
            assert_eq!(
                b["messages"],
                json!([
                    {"role": "user", "content": WEATHER_QUESTION},
                    {"role": "assistant", "content": assistant},
                    {"role": "user", "content": results}
                ])
            );
        }
        Family::Gemini => {
            let mut model = vec![json!({"text": tool_text.unwrap()})];
            let mut results = Vec::new();
            for c in calls {
                model.push(json!({"functionCall": {"name": c.name, "args": c.arguments}}));
                results.push(
                    json!({"functionResponse": {"name": c.name, "response": tool_result(&c.name)}}),
                );
            }
            assert_eq!(
                b["contents"],
                json!([
                    {"role": "user", "parts": [{"text": WEATHER_QUESTION}]},
                    {"role": "model", "parts": model},
                    {"role": "user", "parts": results}
                ])
            );
        }
    }
}

/// The vision message's image as the provider wants it.
fn assert_image_sent(rig: &Rig, s: &Sent) {
    let name = rig.name();
    let b = &s.body;
    let data_url = format!("data:image/png;base64,{PNG_B64}");
    match rig.row.family {
        Family::OpenAi => {
            let parts = &b["messages"][0]["content"];
            assert_eq!(parts[0]["type"], "text", "{name}");
            assert_eq!(parts[0]["text"], "What is in this image?", "{name}");
            assert_eq!(parts[1]["type"], "image_url", "{name}");
            assert_eq!(parts[1]["image_url"]["url"], data_url.as_str(), "{name}");
        }
        Family::Anthropic => {
            assert_eq!(
                b["messages"],
                json!([{"role": "user", "content": [
                    {"type": "text", "text": "What is in this image?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64}}
                ]}])
            );
        }
        Family::Gemini => {
            assert_eq!(
                b["contents"],
                json!([{"role": "user", "parts": [
                    {"text": "What is in this image?"},
                    {"inlineData": {"mimeType": "image/png", "data": PNG_B64}}
                ]}])
            );
        }
    }
}

// ------------------------------------------------------------------------------------------
// 1. Plain chat
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn plain_chat_puts_the_system_prompt_where_each_provider_wants_it_and_answers_through_both_doors()
 {
    for row in ROWS {
        let rig = Rig::start(row).await;
        let name = rig.name();
        let want = rig.expect();

        let resp = rig.post("/v1/chat/completions", &plain_http(false)).await;
        assert_eq!(resp.status(), 200, "{name}");
        let cost: f64 = resp.headers()["x-litellm-response-cost"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        if let Some(want) = row.text_cost {
            assert!((cost - want).abs() < 1e-12, "{name}: cost {cost} vs {want}");
        }
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["object"], "chat.completion", "{name}");
        let got = assemble_http(&body);
        assert_eq!(got.role.as_deref(), Some("assistant"), "{name}");
        assert_eq!(got.text, want.text, "{name}");
        assert_eq!(got.finish.as_deref(), Some("stop"), "{name}");
        assert_eq!(got.usage, Some(want.usage), "{name}");
        assert!(got.calls.is_empty(), "{name}");
        if row.family == Family::Anthropic {
            // Anthropic's cache read counts as cached prompt tokens, as OpenAI reports them.
            assert_eq!(
                body["usage"]["prompt_tokens_details"]["cached_tokens"],
                fa::TEXT_CACHED
            );
        }
        assert_plain_sent(&rig, &rig.sent(), false);

        let r = rig.grpc_chat(plain_pb()).await;
        let got_pb = assemble_pb(&r);
        assert_eq!(got_pb, got, "{name}: the doors disagree");
        let grpc_cost = r.usage.as_ref().unwrap().cost_usd;
        assert!(
            (grpc_cost - cost).abs() < 1e-12,
            "{name}: the doors' costs differ"
        );
        if row.family == Family::Anthropic {
            assert_eq!(
                r.usage.as_ref().unwrap().cached_prompt_tokens,
                fa::TEXT_CACHED
            );
        }
        assert_plain_sent(&rig, &rig.sent(), false);
        assert_eq!(rig.hits(), 2, "{name}");
    }
}

// ------------------------------------------------------------------------------------------
// 2. Streamed chat
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn streamed_chat_reassembles_to_the_whole_answer_and_ends_with_usage_through_both_doors() {
    for row in ROWS {
        let rig = Rig::start(row).await;
        let name = rig.name();
        let want = rig.expect();
        let whole = assemble_http(&rig.http_chat(&plain_http(false)).await);

        // HTTP, with include_usage: chunks, a usage chunk, then [DONE].
        let events = rig.http_stream(&plain_http(true)).await;
        let (chunks, done, error) = split_events(&events);
        assert!(done, "{name}: no [DONE]: {events:?}");
        assert!(error.is_none(), "{name}: {error:?}");
        let usage_chunk = chunks.last().unwrap();
        assert_eq!(usage_chunk["choices"], json!([]), "{name}: {usage_chunk}");
        assert!(
            chunks[..chunks.len() - 1]
                .iter()
                .all(|c| c.get("usage").is_none_or(Value::is_null)),
            "{name}: usage before the last chunk"
        );
        let streamed = assemble_chunks(&chunks);
        assert_eq!(streamed.role.as_deref(), Some("assistant"), "{name}");
        assert_eq!(
            chunks[0]["choices"][0]["delta"]["role"], "assistant",
            "{name}: the first chunk names the role"
        );
        assert_eq!(streamed.text, want.text, "{name}");
        assert_eq!(streamed, whole, "{name}: streamed and whole answers differ");
        let ids: Vec<&str> = chunks.iter().map(|c| c["id"].as_str().unwrap()).collect();
        assert!(
            ids.iter().all(|i| *i == ids[0]),
            "{name}: chunk ids differ: {ids:?}"
        );
        assert_plain_sent(&rig, &rig.sent(), true);

        // Without include_usage: no usage chunk, still [DONE].
        let mut no_usage = plain_http(true);
        no_usage.as_object_mut().unwrap().remove("stream_options");
        let events = rig.http_stream(&no_usage).await;
        let (chunks, done, _) = split_events(&events);
        assert!(done, "{name}");
        assert!(
            chunks
                .iter()
                .all(|c| c.get("usage").is_none_or(Value::is_null)),
            "{name}: usage was not asked for"
        );
        assert_eq!(assemble_chunks(&chunks).text, want.text, "{name}");

        // gRPC: deltas, then a last message with the finish reason and the usage.
        let (msgs, status) = rig.grpc_stream(plain_pb()).await;
        assert!(status.is_none(), "{name}: {status:?}");
        let last = msgs.last().unwrap();
        assert_eq!(
            pb_finish(last.choices[0].finish_reason).as_deref(),
            Some("stop"),
            "{name}"
        );
        assert_eq!(
            last.usage.as_ref().map(pb_usage),
            Some(want.usage),
            "{name}"
        );
        if let Some(want) = row.text_cost {
            let cost = last.usage.as_ref().unwrap().cost_usd;
            assert!((cost - want).abs() < 1e-12, "{name}: cost {cost} vs {want}");
        }
        assert_eq!(assemble_pb_stream(&msgs), whole, "{name}");
        assert_plain_sent(&rig, &rig.sent(), true);
    }
}

// ------------------------------------------------------------------------------------------
// 3. Tool calls
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn tool_calls_go_up_in_each_providers_format_and_come_back_as_openai_tool_calls() {
    for row in ROWS {
        let rig = Rig::start(row).await;
        let name = rig.name();
        let want = rig.expect();
        rig.answer(Ans::Tools);

        // HTTP, whole.
        let req = json!({"model": "chat", "messages": [{"role": "user", "content": WEATHER_QUESTION}],
            "tools": http_tools(), "tool_choice": "required"});
        let body = rig.http_chat(&req).await;
        let whole = assemble_http(&body);
        assert_eq!(whole.finish.as_deref(), Some("tool_calls"), "{name}");
        assert_calls(&rig, &whole.calls);
        assert_eq!(whole.text, want.tool_text.unwrap_or_default(), "{name}");
        assert_eq!(whole.usage, Some(want.tool_usage), "{name}");
        if want.tool_text.is_none() {
            assert!(body["choices"][0]["message"]["content"].is_null(), "{name}");
        }
        assert_tools_sent(&rig, &rig.sent(), false);

        // HTTP, streamed: the same calls (ids included) and finish reason.
        let mut sreq = req.clone();
        sreq["stream"] = json!(true);
        sreq["stream_options"] = json!({"include_usage": true});
        let events = rig.http_stream(&sreq).await;
        let (chunks, done, error) = split_events(&events);
        assert!(done && error.is_none(), "{name}: {events:?}");
        assert_eq!(assemble_chunks(&chunks), whole, "{name}");

        // gRPC, whole and streamed, with a named tool choice.
        let pb_req = pb::ChatRequest {
            model: "chat".into(),
            messages: vec![pb_msg("user", WEATHER_QUESTION)],
            tools: pb_tools(),
            tool_choice: Some(pb::ToolChoice {
                choice: Some(pb::tool_choice::Choice::FunctionName("get_weather".into())),
            }),
            ..Default::default()
        };
        let r = rig.grpc_chat(pb_req.clone()).await;
        assert_eq!(assemble_pb(&r), whole, "{name}: the doors disagree");
        assert_tools_sent(&rig, &rig.sent(), true);
        let (msgs, status) = rig.grpc_stream(pb_req).await;
        assert!(status.is_none(), "{name}: {status:?}");
        assert_eq!(assemble_pb_stream(&msgs), whole, "{name}");
        assert!(msgs.last().unwrap().usage.is_some(), "{name}");

        // The follow-up: the assistant's calls and the tool results go back up.
        rig.answer(Ans::Text);
        let calls = whole.calls.clone();
        let tool_calls: Vec<Value> = calls
            .iter()
            .map(|c| json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments.to_string()}}))
            .collect();
        let mut messages = vec![
            json!({"role": "user", "content": WEATHER_QUESTION}),
            json!({"role": "assistant", "content": want.tool_text, "tool_calls": tool_calls}),
        ];
        for c in &calls {
            messages.push(json!({"role": "tool", "tool_call_id": c.id, "content": tool_result(&c.name).to_string()}));
        }
        let follow = json!({"model": "chat", "messages": messages, "tools": http_tools()});
        let answer = assemble_http(&rig.http_chat(&follow).await);
        assert_eq!(answer.text, want.text, "{name}");
        assert_eq!(answer.finish.as_deref(), Some("stop"), "{name}");
        assert_follow_up_sent(&rig, &rig.sent(), &calls);

        let mut pb_messages = vec![
            pb_msg("user", WEATHER_QUESTION),
            pb::ChatMessage {
                role: "assistant".into(),
                content: want.tool_text.unwrap_or_default().into(),
                tool_calls: calls
                    .iter()
                    .map(|c| pb::ToolCall {
                        id: c.id.clone(),
                        r#type: "function".into(),
                        function: Some(pb::FunctionCall {
                            name: c.name.clone(),
                            arguments: c.arguments.to_string(),
                        }),
                    })
                    .collect(),
                ..Default::default()
            },
        ];
        for c in &calls {
            pb_messages.push(pb::ChatMessage {
                role: "tool".into(),
                content: tool_result(&c.name).to_string(),
                tool_call_id: c.id.clone(),
                ..Default::default()
            });
        }
        let r = rig
            .grpc_chat(pb::ChatRequest {
                model: "chat".into(),
                messages: pb_messages,
                tools: pb_tools(),
                ..Default::default()
            })
            .await;
        assert_eq!(assemble_pb(&r).text, want.text, "{name}");
        assert_follow_up_sent(&rig, &rig.sent(), &calls);
    }
}

// ------------------------------------------------------------------------------------------
// 4. Vision
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_image_data_url_reaches_each_provider_in_its_own_format_through_both_doors() {
    for row in ROWS {
        let rig = Rig::start(row).await;
        let name = rig.name();
        let data_url = format!("data:image/png;base64,{PNG_B64}");
        let req = json!({"model": "chat", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is in this image?"},
            {"type": "image_url", "image_url": {"url": data_url, "detail": "low"}}
        ]}]});
        let answer = assemble_http(&rig.http_chat(&req).await);
        assert_eq!(answer.text, rig.expect().text, "{name}");
        assert_image_sent(&rig, &rig.sent());

        let r = rig
            .grpc_chat(pb::ChatRequest {
                model: "chat".into(),
                messages: vec![pb::ChatMessage {
                    role: "user".into(),
                    parts: vec![
                        pb::ContentPart {
                            part: Some(pb::content_part::Part::Text(
                                "What is in this image?".into(),
                            )),
                        },
                        pb::ContentPart {
                            part: Some(pb::content_part::Part::ImageUrl(pb::ImageUrl {
                                url: data_url.clone(),
                                detail: "low".into(),
                            })),
                        },
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            })
            .await;
        assert_eq!(assemble_pb(&r).text, rig.expect().text, "{name}");
        assert_image_sent(&rig, &rig.sent());
    }
}

// ------------------------------------------------------------------------------------------
// 5. Provider errors
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_providers_429_keeps_its_status_message_and_retry_after_through_both_doors() {
    for row in ROWS {
        let rig = Rig::start(row).await;
        let name = rig.name();
        let want = rig.expect();
        rig.answer(Ans::RateLimited);

        for stream in [false, true] {
            let resp = rig.post("/v1/chat/completions", &plain_http(stream)).await;
            assert_eq!(resp.status(), 429, "{name} (stream {stream})");
            assert_eq!(
                resp.headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap()),
                want.retry_after,
                "{name}"
            );
            assert!(
                resp.headers()["content-type"]
                    .to_str()
                    .unwrap()
                    .starts_with("application/json"),
                "{name}: an error before the first chunk is a plain JSON answer"
            );
            let body: Value = resp.json().await.unwrap();
            assert_eq!(
                body["error"]["message"], want.rate_limit_message,
                "{name}: {body}"
            );
            assert_eq!(body["error"]["type"], "rate_limit_error", "{name}");
        }

        let e = rig.grpc.clone().chat(authed(plain_pb())).await.unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted, "{name}: {e:?}");
        assert_eq!(e.message(), want.rate_limit_message, "{name}");
        assert_eq!(
            e.metadata().get("retry-after").map(|v| v.to_str().unwrap()),
            want.retry_after,
            "{name}"
        );
        let e = rig
            .grpc
            .clone()
            .stream_chat(authed(streamed(plain_pb())))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted, "{name}: {e:?}");
        assert_eq!(e.message(), want.rate_limit_message, "{name}");
        // Nothing was retried (num_retries defaults to 0): one upstream call per request.
        assert_eq!(rig.hits(), 4, "{name}");
    }
}

#[tokio::test]
async fn anthropic_overload_529_is_service_unavailable_and_its_500_stays_a_500() {
    let rig = Rig::start(row("anthropic")).await;
    let fake = anthropic(&rig);
    for (status, http, code, message) in [
        (529, 503, Code::Unavailable, "Overloaded"),
        (500, 500, Code::Unavailable, "Internal server error"),
    ] {
        fake.set(fa::Answer::Fail {
            status,
            retry_after: None,
        });
        let resp = rig.post("/v1/chat/completions", &plain_http(false)).await;
        assert_eq!(resp.status(), http, "{status}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["message"], message);
        assert_eq!(body["error"]["type"], "api_error");
        let e = rig.grpc.clone().chat(authed(plain_pb())).await.unwrap_err();
        assert_eq!(e.code(), code, "{status}: {e:?}");
        assert_eq!(e.message(), message);
    }
}

fn anthropic(rig: &Rig) -> &FakeAnthropic {
    match &rig.up {
        Upstream::Anthropic(f) => f,
        _ => panic!("not an Anthropic rig"),
    }
}

fn gemini(rig: &Rig) -> &FakeGemini {
    match &rig.up {
        Upstream::Gemini(f) => f,
        _ => panic!("not a Gemini rig"),
    }
}

#[tokio::test]
async fn an_anthropic_error_event_mid_stream_ends_the_sse_with_an_error_event_and_no_done() {
    let rig = Rig::start(row("anthropic")).await;
    anthropic(&rig).set(fa::Answer::ErrorMidStream);

    let events = rig.http_stream(&plain_http(true)).await;
    let (chunks, done, error) = split_events(&events);
    assert!(
        !done,
        "a failed stream must not end with [DONE]: {events:?}"
    );
    let error = error.expect("no error event");
    assert_eq!(error["error"]["message"], "Overloaded", "{error}");
    assert_eq!(error["error"]["type"], "api_error", "{error}");
    assert_eq!(assemble_chunks(&chunks).text, fa::MIDSTREAM_TEXT);
    assert!(
        chunks.iter().all(|c| c["choices"]
            .as_array()
            .unwrap()
            .iter()
            .all(|ch| ch["finish_reason"].is_null())),
        "a failed stream has no finish reason: {chunks:?}"
    );

    let (msgs, status) = rig.grpc_stream(plain_pb()).await;
    let status = status.expect("the gRPC stream must end with an error status");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(status.message(), "Overloaded");
    assert_eq!(assemble_pb_stream(&msgs).text, fa::MIDSTREAM_TEXT);
    assert!(msgs.iter().all(|m| m.usage.is_none()));
}

#[tokio::test]
async fn a_provider_stream_cut_before_its_end_ends_with_an_error_not_a_clean_finish() {
    for provider in ["openai", "anthropic", "gemini"] {
        let rig = Rig::start(row(provider)).await;
        let expected_text = match &rig.up {
            Upstream::OpenAi { fake, .. } => {
                fake.set(Behavior::CutStream);
                "Hello"
            }
            Upstream::Anthropic(f) => {
                f.set(fa::Answer::CutStream);
                "Hello there"
            }
            Upstream::Gemini(f) => {
                f.set(fg::Answer::CutStream);
                "Once upon a time, in a land far away,"
            }
        };
        let events = rig.http_stream(&plain_http(true)).await;
        let (chunks, done, error) = split_events(&events);
        assert!(!done, "{provider}: a cut stream must not end with [DONE]");
        let error = error.unwrap_or_else(|| panic!("{provider}: no error event: {events:?}"));
        assert_eq!(error["error"]["type"], "api_error", "{provider}: {error}");
        assert_eq!(assemble_chunks(&chunks).text, expected_text, "{provider}");
        assert_eq!(assemble_chunks(&chunks).finish, None, "{provider}");

        let (msgs, status) = rig.grpc_stream(plain_pb()).await;
        let status = status.unwrap_or_else(|| panic!("{provider}: the gRPC stream ended cleanly"));
        assert_eq!(status.code(), Code::Unavailable, "{provider}: {status:?}");
        assert_eq!(assemble_pb_stream(&msgs).text, expected_text, "{provider}");
    }
}

#[tokio::test]
async fn a_prompt_gemini_blocks_is_a_400_content_filter_error_through_both_doors() {
    let rig = Rig::start(row("gemini")).await;
    gemini(&rig).set(fg::Answer::Blocked);
    for stream in [false, true] {
        let resp = rig.post("/v1/chat/completions", &plain_http(stream)).await;
        assert_eq!(resp.status(), 400, "stream {stream}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "content_filter", "{body}");
        assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("blocked") && message.contains("SAFETY"),
            "{message}"
        );
        assert!(
            message.contains("HARM_CATEGORY_DANGEROUS_CONTENT"),
            "{message}"
        );
    }
    let e = rig.grpc.clone().chat(authed(plain_pb())).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("SAFETY"), "{e:?}");
    assert_eq!(e.metadata().get("x-error-code").unwrap(), "content_filter");
    let e = rig
        .grpc
        .clone()
        .stream_chat(authed(streamed(plain_pb())))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
}

#[tokio::test]
async fn a_gemini_answer_stopped_for_safety_is_a_content_filter_finish() {
    let rig = Rig::start(row("gemini")).await;
    gemini(&rig).set(fg::Answer::SafetyFinish);
    let body = rig.http_chat(&plain_http(false)).await;
    assert_eq!(body["choices"][0]["finish_reason"], "content_filter");
    assert!(body["choices"][0]["message"]["content"].is_null(), "{body}");
    let (msgs, status) = rig.grpc_stream(plain_pb()).await;
    assert!(status.is_none(), "{status:?}");
    assert_eq!(
        assemble_pb_stream(&msgs).finish.as_deref(),
        Some("content_filter")
    );
}

// ------------------------------------------------------------------------------------------
// 6. Embeddings
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn embeddings_reach_gemini_and_the_openai_compatible_providers_through_both_doors() {
    let inputs = ["hello world", "goodbye"];
    for row in ROWS
        .into_iter()
        .filter(|r| r.embed_model.is_some() && r.family != Family::Anthropic)
    {
        let rig = Rig::start(row).await;
        let name = rig.name();
        let embed_model = row.embed_model.unwrap();
        let (vectors, prompt_tokens): (Vec<Vec<f64>>, u64) = match row.family {
            Family::Gemini => {
                let f: Value = serde_json::from_str(fg::BATCH_EMBED_JSON).unwrap();
                let v = f["embeddings"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| {
                        e["values"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|x| x.as_f64().unwrap())
                            .collect()
                    })
                    .collect();
                // Gemini reports no usage: ⌈chars / 4⌉ per input (11 → 3, 7 → 2).
                (v, 5)
            }
            _ => (vec![vec![0.5, -0.25, 0.0], vec![0.5, -0.25, 1.0]], 8),
        };
        let close = |got: &[f64], want: &[f64]| {
            got.len() == want.len()
                && got
                    .iter()
                    .zip(want)
                    .all(|(g, w)| (g - w).abs() < 1e-6 * w.abs().max(1.0))
        };

        let resp = rig
            .post(
                "/v1/embeddings",
                &json!({"model": "embed", "input": inputs, "dimensions": 4}),
            )
            .await;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap();
        assert_eq!(status, 200, "{name}: {body}");
        assert_eq!(body["object"], "list", "{name}");
        let data = body["data"].as_array().unwrap();
        assert_eq!(data.len(), 2, "{name}");
        for (i, d) in data.iter().enumerate() {
            assert_eq!(d["index"], i, "{name}");
            assert_eq!(d["object"], "embedding", "{name}");
            let got: Vec<f64> = d["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect();
            assert!(
                close(&got, &vectors[i]),
                "{name}: {got:?} vs {:?}",
                vectors[i]
            );
        }
        assert_eq!(body["usage"]["prompt_tokens"], prompt_tokens, "{name}");

        let s = rig.sent();
        assert_endpoint(&rig, &s, "embeddings", false);
        match row.family {
            Family::Gemini => {
                let requests: Vec<Value> = inputs
                    .iter()
                    .map(|t| json!({"model": format!("models/{embed_model}"), "content": {"parts": [{"text": t}]}, "outputDimensionality": 4}))
                    .collect();
                assert_eq!(s.body, json!({"requests": requests}));
            }
            _ => {
                assert_eq!(s.body["model"], embed_model, "{name}");
                assert_eq!(s.body["input"], json!(inputs), "{name}");
                assert_eq!(s.body["dimensions"], 4, "{name}");
            }
        }

        let r = rig
            .grpc
            .clone()
            .embed(authed(pb::EmbedRequest {
                model: "embed".into(),
                input: inputs.iter().map(|s| s.to_string()).collect(),
                dimensions: Some(4),
                ..Default::default()
            }))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:?}"))
            .into_inner();
        assert_eq!(r.embeddings.len(), 2, "{name}");
        for (i, e) in r.embeddings.iter().enumerate() {
            assert_eq!(e.index, i as u32, "{name}");
            let got: Vec<f64> = e.values.iter().map(|v| f64::from(*v)).collect();
            assert!(close(&got, &vectors[i]), "{name}: {got:?}");
        }
        assert_eq!(
            u64::from(r.usage.as_ref().unwrap().prompt_tokens),
            prompt_tokens,
            "{name}"
        );
        assert_endpoint(&rig, &rig.sent(), "embeddings", false);
    }
}

#[tokio::test]
async fn anthropic_embeddings_are_a_clear_400_and_never_reach_anthropic() {
    let rig = Rig::start(row("anthropic")).await;
    let resp = rig
        .post(
            "/v1/embeddings",
            &json!({"model": "embed", "input": ["hello"]}),
        )
        .await;
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("embeddings") && message.contains("anthropic"),
        "{message}"
    );
    let e = rig
        .grpc
        .clone()
        .embed(authed(pb::EmbedRequest {
            model: "embed".into(),
            input: vec!["hello".into()],
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("anthropic"), "{e:?}");
    assert_eq!(rig.hits(), 0);
}

#[tokio::test]
async fn provider_error_statuses_map_to_the_same_http_status_and_grpc_code_in_both_doors() {
    // (provider, upstream status, HTTP status, gRPC code)
    let cases = [
        ("openai", 400, 400, Code::InvalidArgument),
        ("openai", 500, 500, Code::Unavailable),
        ("openai", 503, 503, Code::Unavailable),
        ("anthropic", 400, 400, Code::InvalidArgument),
        ("anthropic", 403, 403, Code::PermissionDenied),
        ("gemini", 400, 400, Code::InvalidArgument),
        ("gemini", 500, 500, Code::Unavailable),
        ("gemini", 503, 503, Code::Unavailable),
    ];
    for (provider, upstream, http, code) in cases {
        let rig = Rig::start(row(provider)).await;
        let message = match &rig.up {
            Upstream::OpenAi { fake, .. } => {
                let m = format!("fake failure {upstream}");
                fake.set(Behavior::Status(
                    upstream,
                    json!({"error": {"message": m, "type": "server_error", "param": null, "code": null}}).to_string(),
                ));
                m
            }
            Upstream::Anthropic(f) => {
                f.set(fa::Answer::Fail {
                    status: upstream,
                    retry_after: None,
                });
                match upstream {
                    400 => "invalid request".to_string(),
                    _ => "Your API key does not have permission to use the specified resource."
                        .to_string(),
                }
            }
            Upstream::Gemini(f) => {
                f.set(fg::Answer::Fail {
                    status: upstream,
                    retry_after: None,
                });
                match upstream {
                    400 => "Request contains an invalid argument.".to_string(),
                    503 => "The model is overloaded. Please try again later.".to_string(),
                    _ => "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting".to_string(),
                }
            }
        };
        let resp = rig.post("/v1/chat/completions", &plain_http(false)).await;
        assert_eq!(resp.status(), http, "{provider} {upstream}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(
            body["error"]["message"],
            message.as_str(),
            "{provider} {upstream}"
        );
        let e = rig.grpc.clone().chat(authed(plain_pb())).await.unwrap_err();
        assert_eq!(e.code(), code, "{provider} {upstream}: {e:?}");
        assert_eq!(e.message(), message, "{provider} {upstream}");
    }
}

// ------------------------------------------------------------------------------------------
// The fakes themselves refuse what the real APIs refuse (so the tests above mean something)
// ------------------------------------------------------------------------------------------

async fn raw_post(url: &str, headers: &[(&str, &str)], body: &Value) -> (u16, Value) {
    let mut b = client().post(url).json(body);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = b.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_fake_anthropic_refuses_what_anthropic_refuses() {
    let fake = FakeAnthropic::start().await;
    let url = format!("{}/v1/messages", fake.base);
    let auth = [
        ("x-api-key", fa::ANTHROPIC_KEY),
        ("anthropic-version", "2023-06-01"),
    ];
    let ok = json!({"model": "claude-sonnet-4-20250514", "max_tokens": 10,
        "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(raw_post(&url, &auth, &ok).await.0, 200);

    let edit = |f: &dyn Fn(&mut Value)| {
        let mut b = ok.clone();
        f(&mut b);
        b
    };
    let jpeg_as_png = json!([{"type": "image", "source": {"type": "base64", "media_type": "image/png",
        "data": "/9j/4AAQSkZJRgABAQEASABIAAD/2wBDAP//////////////////////////////////////////////////////////////////////////////////////wgALCAABAAEBAREA/8QAFBABAAAAAAAAAAAAAAAAAAAAAP/aAAgBAQABPxA="}}]);
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "no max_tokens",
            edit(&|b| {
                b.as_object_mut().unwrap().remove("max_tokens");
            }),
            "max_tokens: Field required",
        ),
        (
            "system role",
            edit(&|b| {
                b["messages"] =
                    json!([{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}])
            }),
            "Unexpected role \"system\"",
        ),
        (
            "assistant first",
            edit(&|b| {
                b["messages"] = json!([{"role": "assistant", "content": "a"}, {"role": "user", "content": "hi"}])
            }),
            "first message must use the \"user\" role",
        ),
        (
            "not alternating",
            edit(&|b| {
                b["messages"] =
                    json!([{"role": "user", "content": "a"}, {"role": "user", "content": "hi"}])
            }),
            "roles must alternate",
        ),
        (
            "unknown field",
            edit(&|b| b["stream_options"] = json!({"include_usage": true})),
            "stream_options: Extra inputs are not permitted",
        ),
        (
            "OpenAI tool format",
            edit(&|b| b["tools"] = json!([{"type": "function", "function": {"name": "f"}}])),
            "Extra inputs are not permitted",
        ),
        (
            "orphan tool_result",
            edit(
                &|b| b["messages"] = json!([{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "x", "content": "r"}]}]),
            ),
            "unexpected `tool_use_id`",
        ),
        (
            "tool_use without result",
            edit(&|b| {
                b["messages"] = json!([
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]},
            {"role": "user", "content": "no result"}])
            }),
            "without `tool_result` blocks",
        ),
        (
            "whitespace stop",
            edit(&|b| b["stop_sequences"] = json!(["\n"])),
            "non-whitespace",
        ),
        (
            "wrong media type",
            edit(&|b| b["messages"][0]["content"] = jpeg_as_png.clone()),
            "appears to be a image/jpeg image",
        ),
        (
            "temperature above 1",
            edit(&|b| b["temperature"] = json!(1.5)),
            "temperature",
        ),
    ];
    for (label, body, message) in cases {
        let (status, answer) = raw_post(&url, &auth, &body).await;
        assert_eq!(status, 400, "{label}: {answer}");
        assert_eq!(answer["type"], "error", "{label}");
        assert_eq!(answer["error"]["type"], "invalid_request_error", "{label}");
        let got = answer["error"]["message"].as_str().unwrap();
        assert!(got.contains(message), "{label}: {got}");
    }
    let (status, answer) = raw_post(&url, &[("anthropic-version", "2023-06-01")], &ok).await;
    assert_eq!(
        (status, &answer["error"]["type"]),
        (401, &json!("authentication_error"))
    );
    let (status, _) = raw_post(&url, &[("x-api-key", fa::ANTHROPIC_KEY)], &ok).await;
    assert_eq!(status, 400, "anthropic-version is required");
}

#[tokio::test]
async fn the_fake_gemini_refuses_what_gemini_refuses() {
    let fake = FakeGemini::start().await;
    let url = |method: &str| format!("{}/models/gemini-2.0-flash:{method}", fake.base);
    let auth = [("x-goog-api-key", fg::GEMINI_KEY)];
    let ok = json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]});
    assert_eq!(raw_post(&url("generateContent"), &auth, &ok).await.0, 200);

    let edit = |f: &dyn Fn(&mut Value)| {
        let mut b = ok.clone();
        f(&mut b);
        b
    };
    let cases: Vec<(&str, String, Value, &str)> = vec![
        (
            "snake_case field",
            url("generateContent"),
            edit(&|b| b["system_instruction"] = json!({"parts": [{"text": "s"}]})),
            "Unknown name \"system_instruction\"",
        ),
        (
            "snake_case config",
            url("generateContent"),
            edit(&|b| b["generationConfig"] = json!({"max_output_tokens": 5})),
            "Unknown name \"max_output_tokens\"",
        ),
        (
            "system role",
            url("generateContent"),
            edit(
                &|b| b["contents"] = json!([{"role": "system", "parts": [{"text": "s"}]}, {"role": "user", "parts": [{"text": "hi"}]}]),
            ),
            "valid role: user, model",
        ),
        (
            "assistant role",
            url("generateContent"),
            edit(&|b| b["contents"][0]["role"] = json!("assistant")),
            "valid role: user, model",
        ),
        (
            "empty parts",
            url("generateContent"),
            edit(&|b| b["contents"][0]["parts"] = json!([])),
            "must not be empty",
        ),
        (
            "OpenAI schema keyword",
            url("generateContent"),
            edit(
                &|b| b["tools"] = json!([{"functionDeclarations": [{"name": "f", "parameters": {"type": "OBJECT", "properties": {"a": {"type": "STRING"}}, "additionalProperties": false}}]}]),
            ),
            "Unknown name \"additionalProperties\"",
        ),
        (
            "orphan function response",
            url("generateContent"),
            edit(
                &|b| b["contents"] = json!([{"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {}}}]}]),
            ),
            "function response turn comes immediately after a function call turn",
        ),
        (
            "response count",
            url("generateContent"),
            edit(&|b| {
                b["contents"] = json!([
            {"role": "user", "parts": [{"text": "q"}]},
            {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {}}}, {"functionCall": {"name": "g", "args": {}}}]},
            {"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {}}}]}])
            }),
            "number of function response parts",
        ),
        (
            "stream without alt=sse",
            url("streamGenerateContent"),
            ok.clone(),
            "alt=sse",
        ),
        (
            "key in the URL",
            format!("{}?key={}", url("generateContent"), fg::GEMINI_KEY),
            ok.clone(),
            "x-goog-api-key",
        ),
        (
            "embed model mismatch",
            url("batchEmbedContents"),
            json!({"requests": [{"model": "models/other", "content": {"parts": [{"text": "a"}]}}]}),
            "model of each request",
        ),
    ];
    for (label, url, body, message) in cases {
        let (status, answer) = raw_post(&url, &auth, &body).await;
        assert_eq!(status, 400, "{label}: {answer}");
        assert_eq!(answer["error"]["code"], 400, "{label}");
        assert_eq!(answer["error"]["status"], "INVALID_ARGUMENT", "{label}");
        let got = answer["error"]["message"].as_str().unwrap();
        assert!(got.contains(message), "{label}: {got}");
    }
    let (status, answer) = raw_post(&url("generateContent"), &[], &ok).await;
    assert_eq!(
        (status, &answer["error"]["status"]),
        (403, &json!("PERMISSION_DENIED"))
    );
}

// ------------------------------------------------------------------------------------------
// Bugs found by these tests, fixed in src/ (kept as regression tests)
// ------------------------------------------------------------------------------------------

const JPEG_B64: &str = "/9j/4AAQSkZJRgABAQEASABIAAD/2wBDAP//////////////////////////////////////////////////////////////////////////////////////wgALCAABAAEBAREA/8QAFBABAAAAAAAAAAAAAAAAAAAAAP/aAAgBAQABPxA=";

#[tokio::test]
async fn a_conversation_opening_with_an_assistant_greeting_reaches_anthropic_in_a_valid_turn_order()
{
    let rig = Rig::start(row("anthropic")).await;
    let greeting = "Hi! How can I help?";
    let body = json!({"model": "chat", "messages": [
        {"role": "system", "content": SYSTEM},
        {"role": "assistant", "content": greeting},
        {"role": "user", "content": USER}
    ]});
    let answer = assemble_http(&rig.http_chat(&body).await);
    assert_eq!(answer.text, fa::TEXT);
    let sent = rig.sent().body;
    let msgs = sent["messages"].as_array().unwrap();
    assert_eq!(msgs[0]["role"], "user", "{sent}");
    assert!(
        msgs.iter()
            .any(|m| m["role"] == "assistant" && m.to_string().contains(greeting)),
        "{sent}"
    );
    let r = rig
        .grpc_chat(pb::ChatRequest {
            model: "chat".into(),
            messages: vec![
                pb_msg("system", SYSTEM),
                pb_msg("assistant", greeting),
                pb_msg("user", USER),
            ],
            ..Default::default()
        })
        .await;
    assert_eq!(assemble_pb(&r).text, fa::TEXT);
}

#[tokio::test]
async fn whitespace_only_stop_sequences_are_dropped_for_anthropic() {
    let rig = Rig::start(row("anthropic")).await;
    let mut body = plain_http(false);
    body["stop"] = json!(["\n", "END"]);
    let answer = assemble_http(&rig.http_chat(&body).await);
    assert_eq!(answer.text, fa::TEXT);
    assert_eq!(rig.sent().body["stop_sequences"], json!(["END"]));
    let mut req = plain_pb();
    req.stop = vec!["\n\n".into(), "END".into()];
    rig.grpc_chat(req).await;
    assert_eq!(rig.sent().body["stop_sequences"], json!(["END"]));
}

#[tokio::test]
async fn a_jpg_data_url_reaches_anthropic_as_image_jpeg() {
    let rig = Rig::start(row("anthropic")).await;
    let body = json!({"model": "chat", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is in this image?"},
        {"type": "image_url", "image_url": {"url": format!("data:image/jpg;base64,{JPEG_B64}")}}
    ]}]});
    let answer = assemble_http(&rig.http_chat(&body).await);
    assert_eq!(answer.text, fa::TEXT);
    assert_eq!(
        rig.sent().body["messages"][0]["content"][1]["source"],
        json!({"type": "base64", "media_type": "image/jpeg", "data": JPEG_B64})
    );
}

#[tokio::test]
async fn a_gemini_429_passes_on_the_retry_delay_from_its_body() {
    let rig = Rig::start(row("gemini")).await;
    gemini(&rig).set(fg::Answer::Fail {
        status: 429,
        retry_after: Some(37),
    });
    let resp = rig.post("/v1/chat/completions", &plain_http(false)).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(
        resp.headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap()),
        Some("37")
    );
    let e = rig.grpc.clone().chat(authed(plain_pb())).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert_eq!(
        e.metadata().get("retry-after").map(|v| v.to_str().unwrap()),
        Some("37")
    );
}

// ------------------------------------------------------------------------------------------
// Upstream connections (plain HTTP: the gateway's own per-worker keep-alive pool)
// ------------------------------------------------------------------------------------------

/// How the counting upstream treats a connection after an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeepAlive {
    /// Keeps it open for the next request.
    Keep,
    /// Answers with `Connection: close` and closes it.
    CloseEach,
    /// Keeps it open, then drops it 100 ms after accepting it without a word (as a server
    /// with a short keep-alive timeout does).
    DropAfter100Ms,
}

/// A count shared with the counting upstream's tasks.
type Count = Arc<std::sync::atomic::AtomicUsize>;

/// An OpenAI-compatible upstream on plain HTTP/1.1 that counts the connections it accepted
/// and the requests it answered.
async fn counting_upstream(mode: KeepAlive) -> (String, Count, Count) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let authority = listener.local_addr().unwrap().to_string();
    let base = format!("http://{authority}/v1");
    let (accepted, answered) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (acc, ans) = (accepted.clone(), answered.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            acc.fetch_add(1, Ordering::SeqCst);
            let (ans, authority) = (ans.clone(), authority.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let (ans, authority) = (ans.clone(), authority.clone());
                        async move {
                            use http_body_util::BodyExt;
                            // As a real server: the request target in origin form, and the
                            // URL's host and port in `Host`.
                            let host = req.headers().get("host").map(|h| h.to_str().unwrap());
                            if host != Some(authority.as_str()) || req.uri().authority().is_some() {
                                let said = format!("Host {host:?}, target {}", req.uri());
                                let mut resp = hyper::Response::new(BodyExt::boxed(
                                    http_body_util::Full::new(Bytes::from(said)),
                                ));
                                *resp.status_mut() = hyper::StatusCode::BAD_REQUEST;
                                return Ok(resp);
                            }
                            let anthropic = req.uri().path().ends_with("/messages");
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let sent: Value = serde_json::from_slice(&body).unwrap();
                            ans.fetch_add(1, Ordering::SeqCst);
                            let (answer, events) = if anthropic {
                                anthropic_answer(&sent)
                            } else {
                                openai_answer(&sent)
                            };
                            // A stream is sent chunked, its end after the last event.
                            let (body, content_type) = if sent["stream"] == true {
                                let frames = events.into_iter().map(|e| {
                                    Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(
                                        Bytes::from(e),
                                    ))
                                });
                                let body = http_body_util::StreamBody::new(
                                    futures_util::stream::iter(frames),
                                );
                                (BodyExt::boxed(body), "text/event-stream")
                            } else {
                                let body =
                                    http_body_util::Full::new(Bytes::from(answer.to_string()));
                                (BodyExt::boxed(body), "application/json")
                            };
                            let mut resp = hyper::Response::new(body);
                            resp.headers_mut()
                                .insert("content-type", content_type.parse().unwrap());
                            if mode == KeepAlive::CloseEach {
                                resp.headers_mut()
                                    .insert("connection", "close".parse().unwrap());
                            }
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    },
                );
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
                if mode == KeepAlive::DropAfter100Ms {
                    let _ = tokio::time::timeout(std::time::Duration::from_millis(100), conn).await;
                } else {
                    let _ = conn.await;
                }
            });
        }
    });
    (base, accepted, answered)
}

/// The counting upstream's answer to an OpenAI chat request: the JSON, and the SSE events of
/// the same answer streamed (ending in `[DONE]`).
fn openai_answer(sent: &Value) -> (Value, Vec<String>) {
    let answer = json!({        "id": "chatcmpl-count", "object": "chat.completion", "created": 1,
        "model": sent["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "counted"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
    });
    let chunk = json!({
        "id": "chatcmpl-count", "object": "chat.completion.chunk",
        "created": 1, "model": sent["model"],
        "choices": [{"index": 0, "delta": {"content": "counted"}, "finish_reason": "stop"}]
    });
    let events = vec![format!("data: {chunk}\n\n"), "data: [DONE]\n\n".into()];
    (answer, events)
}

/// The counting upstream's answer to an Anthropic Messages request, as
/// [`openai_answer`]: the stream is Anthropic's event sequence, ending in `message_stop`.
fn anthropic_answer(sent: &Value) -> (Value, Vec<String>) {
    let usage = json!({"input_tokens": 3, "output_tokens": 1});
    let answer = json!({
        "id": "msg_count", "type": "message", "role": "assistant", "model": sent["model"],
        "content": [{"type": "text", "text": "counted"}],
        "stop_reason": "end_turn", "stop_sequence": null, "usage": usage
    });
    let events = [
        json!({"type": "message_start", "message": {
            "id": "msg_count", "type": "message", "role": "assistant", "model": sent["model"],
            "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 3, "output_tokens": 0}}}),
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "counted"}}),
        json!({"type": "content_block_stop", "index": 0}),
        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": 1}}),
        json!({"type": "message_stop"}),
    ];
    let events = events
        .iter()
        .map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap()))
        .collect();
    (answer, events)
}

/// The gateway with one model, `chat`, on a fresh [`counting_upstream`].
async fn counting_gateway(mode: KeepAlive) -> (TestGateway, Count, Count) {
    let (base, accepted, answered) = counting_upstream(mode).await;
    let yaml = support::openai_config(&base, &[("chat", "gpt-count")], "");
    (start(&yaml, &[]).await, accepted, answered)
}

/// A chat through the HTTP door on `http` that must succeed, with the counting upstream's answer.
async fn counted_chat(http: &reqwest::Client, gw: &TestGateway) -> Value {
    let resp = http
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(MASTER_KEY)
        .json(&json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).unwrap()
}

#[tokio::test]
async fn plain_http_upstream_connections_are_kept_and_reused_through_both_doors() {
    use std::sync::atomic::Ordering;
    let (gw, accepted, answered) = counting_gateway(KeepAlive::Keep).await;
    let http = client();
    for _ in 0..5 {
        let v = counted_chat(&http, &gw).await;
        assert_eq!(v["choices"][0]["message"]["content"], "counted");
    }
    // One client connection is served by one worker, which keeps one upstream connection.
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    let mut grpc = AiApiServiceClient::connect(gw.grpc_url()).await.unwrap();
    for _ in 0..5 {
        let answer = grpc
            .chat(authed(pb::ChatRequest {
                model: "chat".into(),
                messages: vec![pb_msg("user", "hi")],
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            answer.choices[0].message.as_ref().unwrap().content,
            "counted"
        );
    }
    assert_eq!(answered.load(Ordering::SeqCst), 10);
    // The gRPC connection may sit on the other worker, with its own upstream connection.
    assert!(accepted.load(Ordering::SeqCst) <= 2, "{accepted:?}");

    // Eight at a time, three times: the connections of one round serve the next.
    for _ in 0..3 {
        let clients: Vec<_> = (0..8).map(|_| client()).collect();
        let calls: Vec<_> = clients.iter().map(|c| counted_chat(c, &gw)).collect();
        futures_util::future::join_all(calls).await;
    }
    assert_eq!(answered.load(Ordering::SeqCst), 34);
    let n = accepted.load(Ordering::SeqCst);
    assert!(n <= 2 + 16, "{n} connections for 24 calls in rounds of 8");
}

/// Four streams and then a chat for `model` through the HTTP door, each checked: every
/// stream ends in `[DONE]` and carries the counting upstream's text, and so does the chat.
async fn four_streams_then_a_chat(gw: &TestGateway, model: &str) {
    let http = client();
    let ask = |stream: bool| {
        http.post(gw.url("/v1/chat/completions"))
            .bearer_auth(MASTER_KEY)
            .json(&json!({"model": model, "stream": stream, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
    };
    for _ in 0..4 {
        let resp = ask(true).await.unwrap();
        assert_eq!(resp.status(), 200);
        let events = sse_data(&resp.text().await.unwrap());
        assert!(events.iter().any(|e| e.contains("counted")), "{events:?}");
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
        // The rest of the upstream body is read in the background.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let resp = ask(false).await.unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "counted");
}

#[tokio::test]
async fn a_streamed_answer_read_to_its_end_marker_leaves_its_connection_for_the_next_call() {
    use std::sync::atomic::Ordering;
    let (gw, accepted, answered) = counting_gateway(KeepAlive::Keep).await;
    four_streams_then_a_chat(&gw, "chat").await;
    assert_eq!(answered.load(Ordering::SeqCst), 5);
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

/// As above, for Anthropic's stream: it ends the gateway's stream at `message_stop`, before the
/// upstream body's chunked end, which is then read in the background.
#[tokio::test]
async fn an_anthropic_stream_read_to_message_stop_leaves_its_connection_for_the_next_call() {
    use std::sync::atomic::Ordering;
    let (base, accepted, answered) = counting_upstream(KeepAlive::Keep).await;
    let yaml = format!(
        "model_list:\n  - model_name: claude\n    litellm_params:\n      model: anthropic/claude-count\n      api_key: sk-ant-secret\n      api_base: {base}\ngeneral_settings:\n  master_key: {MASTER_KEY}\n"
    );
    let gw = start(&yaml, &[]).await;
    four_streams_then_a_chat(&gw, "claude").await;
    assert_eq!(answered.load(Ordering::SeqCst), 5);
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_upstream_that_closes_its_connections_costs_no_request() {
    use std::sync::atomic::Ordering;
    // `Connection: close` on every answer: each call needs a new connection, none fails.
    let (gw, accepted, answered) = counting_gateway(KeepAlive::CloseEach).await;
    for _ in 0..5 {
        counted_chat(&client(), &gw).await;
    }
    assert_eq!(answered.load(Ordering::SeqCst), 5);
    assert_eq!(accepted.load(Ordering::SeqCst), 5);

    // A kept-alive connection the upstream drops while idle is not used again.
    let (gw, accepted, answered) = counting_gateway(KeepAlive::DropAfter100Ms).await;
    for _ in 0..3 {
        counted_chat(&client(), &gw).await;
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    assert_eq!(answered.load(Ordering::SeqCst), 3);
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}
