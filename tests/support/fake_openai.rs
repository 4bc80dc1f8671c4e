//! An in-process fake of OpenAI's API that checks what it receives as the real API would
//! (bearer key, model, messages, stream options) and answers in OpenAI's real wire format,
//! SSE included. Each test gets its own on port 0; what it received is recorded.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::Notify;

pub const UPSTREAM_KEY: &str = "sk-upstream-secret";

/// What the fake does with the next requests.
#[derive(Clone, Debug)]
pub enum Behavior {
    /// Answer normally (text "Hello there, friend!" split into chunks when streaming).
    Normal,
    /// Answer with tool calls.
    ToolCalls,
    /// Answer this status and body.
    Status(u16, String),
    /// Answer 200 with a body that is not JSON.
    Garbage,
    /// Wait this long, then answer normally.
    Delay(Duration),
    /// Stream chunks every 20 ms, forever (until the client goes away).
    EndlessStream,
    /// Stream chunks of 16 KB of text as fast as they are taken, forever (until the client
    /// goes away).
    FloodStream,
    /// Stream two chunks, then cut the connection without [DONE].
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
    behavior: Mutex<Option<Behavior>>,
    received: Mutex<Vec<Received>>,
    stream_dropped: AtomicBool,
    dropped: Notify,
    hits: AtomicUsize,
    /// Fail this many of the next requests with `fail_status`, then behave.
    fail_next: AtomicUsize,
    fail_status: AtomicUsize,
}

#[derive(Clone)]
pub struct FakeOpenAi {
    shared: Arc<Shared>,
    /// `http://127.0.0.1:PORT/v1`
    pub base: String,
}

impl FakeOpenAi {
    pub async fn start() -> Self {
        let shared = Arc::new(Shared::default());
        let app = Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/v1/embeddings", post(embeddings))
            .route("/v1/images/generations", post(images))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeOpenAi {
            shared,
            base: format!("http://{addr}/v1"),
        }
    }

    pub fn set(&self, b: Behavior) {
        *self.shared.behavior.lock() = Some(b);
    }

    /// Fails the next `n` requests with `status` (OpenAI's error body), then behaves.
    pub fn fail_next(&self, n: usize, status: u16) {
        self.shared
            .fail_status
            .store(status as usize, Ordering::SeqCst);
        self.shared.fail_next.store(n, Ordering::SeqCst);
    }

    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().clone()
    }

    pub fn last(&self) -> Received {
        self.received().pop().expect("the fake received nothing")
    }

    pub fn hits(&self) -> usize {
        self.shared.hits.load(Ordering::SeqCst)
    }

    /// Waits until a streamed body the fake was sending has been dropped (the connection to
    /// the gateway closed), up to `limit`.
    pub async fn stream_closed_within(&self, limit: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.shared.dropped.notified();
                if self.shared.stream_dropped.load(Ordering::SeqCst) {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(limit, wait).await.is_ok()
    }
}

fn error(status: u16, message: &str, kind: &str, code: &str) -> Response {
    let body = json!({"error": {"message": message, "type": kind, "param": null, "code": code}});
    (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response()
}

/// Checks a request as OpenAI would; `Err` is OpenAI's answer.
#[allow(clippy::result_large_err)]
fn check(headers: &HeaderMap, body: &Bytes) -> Result<Value, Response> {
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
    if auth != Some(&format!("Bearer {UPSTREAM_KEY}")) {
        return Err(error(
            401,
            "Incorrect API key provided",
            "invalid_request_error",
            "invalid_api_key",
        ));
    }
    let v: Value = serde_json::from_slice(body).map_err(|_| {
        error(
            400,
            "We could not parse the JSON body of your request.",
            "invalid_request_error",
            "",
        )
    })?;
    if !v.get("model").is_some_and(Value::is_string) {
        return Err(error(
            400,
            "you must provide a model parameter",
            "invalid_request_error",
            "",
        ));
    }
    Ok(v)
}

fn record(shared: &Shared, path: &str, headers: &HeaderMap, body: &Value) -> Option<Behavior> {
    shared.hits.fetch_add(1, Ordering::SeqCst);
    shared.received.lock().push(Received {
        path: path.to_string(),
        headers: headers.clone(),
        body: body.clone(),
    });
    shared.behavior.lock().clone()
}

struct DropFlag(Arc<Shared>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.stream_dropped.store(true, Ordering::SeqCst);
        self.0.dropped.notify_waiters();
    }
}

fn chunk(model: &str, delta: Value, finish: Option<&str>) -> String {
    let c = json!({
        "id": "chatcmpl-fake1", "object": "chat.completion.chunk", "created": 1700000000,
        "model": model, "system_fingerprint": "fp_fake",
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]
    });
    format!("data: {c}\n\n")
}

fn sse(body: Body) -> Response {
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(body)
        .unwrap()
}

async fn chat(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let v = match check(&headers, &body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    if v.get("messages")
        .and_then(Value::as_array)
        .is_none_or(|m| m.is_empty())
    {
        return error(
            400,
            "messages must be a non-empty array",
            "invalid_request_error",
            "",
        );
    }
    let behavior =
        record(&shared, "/v1/chat/completions", &headers, &v).unwrap_or(Behavior::Normal);
    let failing = shared
        .fail_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if failing {
        let status = shared.fail_status.load(Ordering::SeqCst) as u16;
        return error(
            status,
            &format!("fake failure {status}"),
            "server_error",
            "fake",
        );
    }
    let model = v["model"].as_str().unwrap_or_default().to_string();
    let stream = v.get("stream") == Some(&Value::Bool(true));
    if stream && v.pointer("/stream_options/include_usage") != Some(&Value::Bool(true)) {
        // The gateway must always ask for usage; make a missing ask visible in tests.
        return error(
            400,
            "test fake: stream_options.include_usage was not requested",
            "invalid_request_error",
            "",
        );
    }
    match behavior {
        Behavior::Status(code, body) => {
            let mut r = Response::builder()
                .status(code)
                .header("content-type", "application/json");
            if code == 429 {
                r = r.header("retry-after", "3");
            }
            return r.body(Body::from(body)).unwrap();
        }
        Behavior::Garbage => return (StatusCode::OK, "<html>surprise</html>").into_response(),
        Behavior::Delay(d) => tokio::time::sleep(d).await,
        _ => {}
    }
    let tools = matches!(behavior, Behavior::ToolCalls);
    if !stream {
        let message = if tools {
            json!({"role": "assistant", "content": null, "refusal": null, "tool_calls": [
                {"id": "call_abc", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}
            ]})
        } else {
            json!({"role": "assistant", "content": "Hello there, friend!", "refusal": null})
        };
        let body = json!({
            "id": "chatcmpl-fake1", "object": "chat.completion", "created": 1700000000, "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": if tools {"tool_calls"} else {"stop"}}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17,
                      "prompt_tokens_details": {"cached_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 0}},
            "system_fingerprint": "fp_fake"
        });
        return axum::Json(body).into_response();
    }
    let usage = json!({"id": "chatcmpl-fake1", "object": "chat.completion.chunk", "created": 1700000000, "model": model,
        "choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}});
    match behavior {
        Behavior::EndlessStream | Behavior::FloodStream => {
            let flood = matches!(behavior, Behavior::FloodStream);
            let guard = DropFlag(shared.clone());
            let s = futures_util::stream::unfold((guard, 0u64), move |(g, i)| {
                let model = model.clone();
                async move {
                    let text = if flood {
                        tokio::task::yield_now().await;
                        format!("tick{i} {}", "x".repeat(16 * 1024))
                    } else {
                        if i > 0 {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        format!("tick{i} ")
                    };
                    let c = chunk(&model, json!({"content": text}), None);
                    Some((Ok::<_, Infallible>(c), (g, i + 1)))
                }
            });
            sse(Body::from_stream(s))
        }
        Behavior::CutStream => {
            let parts = vec![
                chunk(&model, json!({"role": "assistant", "content": ""}), None),
                chunk(&model, json!({"content": "Hello"}), None),
            ];
            // Send the chunks, give them time to reach the gateway, then fail the body.
            let s = futures_util::stream::unfold(parts.into_iter(), |mut parts| async move {
                match parts.next() {
                    Some(p) => Some((Ok::<_, std::io::Error>(p), parts)),
                    None => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Some((Err(std::io::Error::other("connection reset")), parts))
                    }
                }
            });
            sse(Body::from_stream(s))
        }
        _ => {
            let mut out = vec![chunk(
                &model,
                json!({"role": "assistant", "content": "", "refusal": null}),
                None,
            )];
            if tools {
                out.push(chunk(&model, json!({"tool_calls": [{"index": 0, "id": "call_abc", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}), None));
                out.push(chunk(
                    &model,
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\":"}}]}),
                    None,
                ));
                out.push(chunk(
                    &model,
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": "\"Paris\"}"}}]}),
                    None,
                ));
                out.push(chunk(&model, json!({}), Some("tool_calls")));
            } else {
                for piece in ["Hello", " there", ",", " friend", "!"] {
                    out.push(chunk(&model, json!({"content": piece}), None));
                }
                out.push(chunk(&model, json!({}), Some("stop")));
            }
            out.push(format!("data: {usage}\n\n"));
            out.push("data: [DONE]\n\n".to_string());
            sse(Body::from(out.concat()))
        }
    }
}

async fn embeddings(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let v = match check(&headers, &body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let behavior = record(&shared, "/v1/embeddings", &headers, &v);
    if let Some(Behavior::Status(code, body)) = behavior {
        return Response::builder()
            .status(code)
            .body(Body::from(body))
            .unwrap();
    }
    let inputs: Vec<Value> = match &v["input"] {
        Value::String(s) => vec![Value::String(s.clone())],
        Value::Array(a) => a.clone(),
        _ => {
            return error(
                400,
                "'input' is a required property",
                "invalid_request_error",
                "",
            );
        }
    };
    if v.get("encoding_format").and_then(Value::as_str) == Some("base64") {
        return error(
            400,
            "test fake: the gateway should ask for floats",
            "invalid_request_error",
            "",
        );
    }
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, _)| json!({"object": "embedding", "index": i, "embedding": [0.5, -0.25, i as f64]}))
        .collect();
    axum::Json(json!({"object": "list", "data": data, "model": v["model"],
        "usage": {"prompt_tokens": 4 * inputs.len(), "total_tokens": 4 * inputs.len()}}))
    .into_response()
}

async fn images(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let v = match check(&headers, &body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    record(&shared, "/v1/images/generations", &headers, &v);
    if !v.get("prompt").is_some_and(Value::is_string) {
        return error(
            400,
            "'prompt' is a required property",
            "invalid_request_error",
            "",
        );
    }
    axum::Json(json!({"created": 1700000000, "data": [
        {"url": "https://images.example/cat.png", "revised_prompt": "a cute cat"}
    ]}))
    .into_response()
}
