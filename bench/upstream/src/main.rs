//! A fake OpenAI upstream for the benchmark: `POST /v1/chat/completions`, plain and streamed,
//! answered as fast as possible so that it is never the bottleneck.
//!
//! - Plain: a small fixed chat completion with usage.
//! - Streamed (`"stream": true`): `--chunks` content chunks (`delta.content`), a finish chunk, a
//!   usage chunk (`choices: []`), then `data: [DONE]`, with `--delay-ms` between content chunks.
//!
//! The model name can override the stream's shape per request, so one upstream serves several
//! shapes through one gateway config: a `-n<count>` and/or `-d<ms>` segment in the model name
//! (`bench-n50-d5`: 50 chunks 5 ms apart; `bench-n20-d1000`: a stream held open for 20 s).
//! Any bearer key is accepted.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use clap::Parser;
use serde::Deserialize;

#[derive(Parser, Debug, Clone)]
#[command(about = "Fake OpenAI chat-completions upstream for the ai-api benchmark")]
struct Args {
    /// Address to listen on (loopback only by default).
    #[arg(long, default_value = "127.0.0.1:18000")]
    listen: SocketAddr,
    /// Content chunks per streamed answer (unless the model name says `-n<count>`).
    #[arg(long, default_value_t = 50)]
    chunks: u32,
    /// Milliseconds between streamed content chunks (unless the model name says `-d<ms>`).
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Tokio worker threads (default: the number of cores).
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Clone, Copy, Debug)]
struct Shape {
    chunks: u32,
    delay_ms: u64,
}

#[derive(Deserialize)]
struct ChatBody {
    #[serde(default)]
    model: String,
    #[serde(default)]
    stream: bool,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(n) = args.threads {
        rt.worker_threads(n.max(1));
    }
    rt.build()?.block_on(serve(args))
}

async fn serve(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let shape = Shape {
        chunks: args.chunks,
        delay_ms: args.delay_ms,
    };
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/chat/completions", post(chat))
        .route("/v1/models", get(models))
        .route("/health", get(|| async { "ok" }))
        .with_state(shape);
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let addr = listener.local_addr()?;
    // Small SSE writes must not wait for Nagle's algorithm (40 ms stalls against delayed ACKs).
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    eprintln!(
        "bench-upstream listening on {} (chunks {}, delay {} ms)",
        addr, shape.chunks, shape.delay_ms
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

/// `-n<count>` / `-d<ms>` segments of the model name override the default shape.
fn shape_for(model: &str, default: Shape) -> Shape {
    let mut s = default;
    for seg in model.split('-') {
        let (head, rest) = seg.split_at(seg.len().min(1));
        if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        match head {
            "n" => s.chunks = rest.parse().unwrap_or(s.chunks),
            "d" => s.delay_ms = rest.parse().unwrap_or(s.delay_ms),
            _ => {}
        }
    }
    s
}

fn bad_request(msg: &str) -> Response {
    let body = serde_json::json!({"error": {"message": msg, "type": "invalid_request_error",
        "param": null, "code": null}});
    let mut r = json_response(body.to_string());
    *r.status_mut() = StatusCode::BAD_REQUEST;
    r
}

async fn models() -> Response {
    json_response(
        r#"{"object":"list","data":[{"id":"bench-model","object":"model","created":1700000000,"owned_by":"bench"}]}"#
            .to_string(),
    )
}

fn json_response(body: String) -> Response {
    let mut r = Response::new(Body::from(body));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// JSON-escapes a model name (they are plain in practice; this keeps the output valid anyway).
fn quoted(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"bench-model\"".to_string())
}

async fn chat(State(default): State<Shape>, body: Bytes) -> Response {
    let req: ChatBody = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(_) => return bad_request("We could not parse the JSON body of your request."),
    };
    let model = if req.model.is_empty() {
        "bench-model".to_string()
    } else {
        req.model
    };
    let m = quoted(&model);
    if !req.stream {
        return json_response(format!(
            concat!(
                r#"{{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":{m},"#,
                r#""system_fingerprint":"fp_bench","choices":[{{"index":0,"message":{{"role":"assistant","#,
                r#""content":"Hello from the bench upstream.","refusal":null}},"logprobs":null,"#,
                r#""finish_reason":"stop"}}],"usage":{{"prompt_tokens":9,"completion_tokens":6,"total_tokens":15}}}}"#
            ),
            m = m
        ));
    }
    let shape = shape_for(&model, default);
    let stream = futures_util::stream::unfold(0u32, move |i| {
        let m = m.clone();
        async move {
            let n = shape.chunks;
            // i in 0..n: content chunks; n: finish; n+1: usage; n+2: [DONE]; then end.
            if i > n + 2 {
                return None;
            }
            if i < n && i > 0 && shape.delay_ms > 0 {
                tokio::time::sleep(Duration::from_millis(shape.delay_ms)).await;
            }
            let head = r#"data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,"model":"#;
            let text = if i < n {
                let role = if i == 0 { r#""role":"assistant","# } else { "" };
                format!(
                    r#"{head}{m},"choices":[{{"index":0,"delta":{{{role}"content":"tok{i} "}},"logprobs":null,"finish_reason":null}}]}}{sep}"#,
                    sep = "\n\n"
                )
            } else if i == n {
                format!(
                    r#"{head}{m},"choices":[{{"index":0,"delta":{{}},"logprobs":null,"finish_reason":"stop"}}]}}{sep}"#,
                    sep = "\n\n"
                )
            } else if i == n + 1 {
                format!(
                    r#"{head}{m},"choices":[],"usage":{{"prompt_tokens":9,"completion_tokens":{n},"total_tokens":{t}}}}}{sep}"#,
                    t = n + 9,
                    sep = "\n\n"
                )
            } else {
                "data: [DONE]\n\n".to_string()
            };
            Some((Ok::<_, Infallible>(Bytes::from(text)), i + 1))
        }
    });
    let mut r = Response::new(Body::from_stream(stream));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_name_overrides_shape() {
        let d = Shape {
            chunks: 50,
            delay_ms: 0,
        };
        let s = shape_for("bench-n20-d1000", d);
        assert_eq!((s.chunks, s.delay_ms), (20, 1000));
        let s = shape_for("bench-model", d);
        assert_eq!((s.chunks, s.delay_ms), (50, 0));
        let s = shape_for("bench-d5", d);
        assert_eq!((s.chunks, s.delay_ms), (50, 5));
    }
}
