//! Load driver for the ai-api benchmark.
//!
//! Modes:
//! - `grpc-chat`: unary `ai_api.v1.AiApiService/Chat` (over the `h2` crate with the message
//!   encoded once, or through the tonic stub: `--unary-client`)
//! - `grpc-stream`: server-streamed `StreamChat`
//! - `http-chat`: `POST .../chat/completions` (plain JSON), any OpenAI-compatible URL
//! - `http-stream`: the same with `"stream": true` (Server-Sent Events)
//!
//! `--concurrency` workers each send one request after the other until `--duration` seconds have
//! passed or `--requests` requests were started (whichever comes first; every run is bounded
//! in time). Prints one JSON object: requests/s, latency percentiles, errors and, for streams,
//! the time to the first token (first non-empty `content` delta) and the gap between
//! consecutive content messages.
//!
//! `--ready-at N` prints `READY` on stderr once N streams are open at the same time (all past
//! their first token), so a caller can measure the server while they are held open.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

#[allow(clippy::all, missing_docs)]
mod pb {
    tonic::include_proto!("ai_api.v1");
}

use pb::ai_api_service_client::AiApiServiceClient;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    GrpcChat,
    GrpcStream,
    HttpChat,
    HttpStream,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum UnaryClient {
    H2,
    Tonic,
}

impl Mode {
    fn is_stream(self) -> bool {
        matches!(self, Mode::GrpcStream | Mode::HttpStream)
    }
    fn is_grpc(self) -> bool {
        matches!(self, Mode::GrpcChat | Mode::GrpcStream)
    }
}

#[derive(Parser, Debug, Clone)]
#[command(about = "gRPC and HTTP load driver for the ai-api benchmark")]
struct Args {
    /// What to send.
    #[arg(long, value_enum)]
    mode: Mode,
    /// gRPC: `http://127.0.0.1:PORT`; HTTP: the full chat-completions URL.
    #[arg(long)]
    target: String,
    /// The model to ask for.
    #[arg(long, default_value = "bench-model")]
    model: String,
    /// Bearer key.
    #[arg(long, default_value = "sk-bench-master")]
    key: String,
    /// Concurrent workers (each with at most one request in flight).
    #[arg(long, short = 'c', default_value_t = 1)]
    concurrency: usize,
    /// Measurement length in seconds (a hard bound; requests in flight at the end finish).
    #[arg(long, short = 'z', default_value_t = 10.0)]
    duration: f64,
    /// Stop after starting this many requests (0: no count limit; the duration still bounds).
    #[arg(long, short = 'n', default_value_t = 0)]
    requests: u64,
    /// Seconds of load before measuring, not counted.
    #[arg(long, default_value_t = 0.0)]
    warmup: f64,
    /// gRPC channels (HTTP/2 connections) shared round-robin by the workers.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Unary gRPC client: `h2` (default) sends the request message encoded once over the `h2`
    /// crate directly and checks every answer's status, trailers and message; `tonic` is the
    /// generated stub (its channel adds a buffer task and a codec per call, which on a 2-core
    /// machine takes CPU from the server being measured).
    #[arg(long, value_enum, default_value_t = UnaryClient::H2)]
    unary_client: UnaryClient,
    /// Per-request time limit in seconds (a request over it counts as an error).
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
    /// Streams: content messages each stream must carry (0: at least one).
    #[arg(long, default_value_t = 0)]
    expect_chunks: u64,
    /// Print `READY` on stderr once this many streams are open at once.
    #[arg(long, default_value_t = 0)]
    ready_at: u64,
    /// A label copied into the JSON.
    #[arg(long, default_value = "")]
    label: String,
    /// Also write the JSON here.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

/// Histograms in microseconds.
fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).unwrap_or_else(|_| Histogram::new(3).unwrap())
}

struct Stats {
    latency: Histogram<u64>,
    ttft: Histogram<u64>,
    gap: Histogram<u64>,
    ok: u64,
    errors: u64,
    error_kinds: BTreeMap<String, u64>,
    error_samples: Vec<String>,
    content_chunks: u64,
}

impl Stats {
    fn new() -> Self {
        Stats {
            latency: hist(),
            ttft: hist(),
            gap: hist(),
            ok: 0,
            errors: 0,
            error_kinds: BTreeMap::new(),
            error_samples: Vec::new(),
            content_chunks: 0,
        }
    }

    fn merge(&mut self, o: Stats) {
        let _ = self.latency.add(&o.latency);
        let _ = self.ttft.add(&o.ttft);
        let _ = self.gap.add(&o.gap);
        self.ok += o.ok;
        self.errors += o.errors;
        for (k, v) in o.error_kinds {
            *self.error_kinds.entry(k).or_default() += v;
        }
        for s in o.error_samples {
            if self.error_samples.len() < 5 {
                self.error_samples.push(s);
            }
        }
        self.content_chunks += o.content_chunks;
    }

    fn error(&mut self, kind: &str, detail: String) {
        self.errors += 1;
        *self.error_kinds.entry(kind.to_string()).or_default() += 1;
        if self.error_samples.len() < 5 {
            let mut d = detail;
            d.truncate(300);
            self.error_samples.push(format!("{kind}: {d}"));
        }
    }
}

fn us(d: Duration) -> u64 {
    (d.as_micros() as u64).max(1)
}

fn summary(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return Value::Null;
    }
    let ms = |v: u64| (v as f64) / 1000.0;
    json!({
        "count": h.len(),
        "min": ms(h.min()),
        "mean": h.mean() / 1000.0,
        "p50": ms(h.value_at_quantile(0.50)),
        "p90": ms(h.value_at_quantile(0.90)),
        "p99": ms(h.value_at_quantile(0.99)),
        "p999": ms(h.value_at_quantile(0.999)),
        "max": ms(h.max()),
    })
}

/// Whether an SSE data payload carries a non-empty `"content"` string.
fn has_content(payload: &[u8]) -> bool {
    const KEY: &[u8] = b"\"content\"";
    let mut i = 0;
    while i + KEY.len() <= payload.len() {
        if &payload[i..i + KEY.len()] == KEY {
            let mut j = i + KEY.len();
            while j < payload.len() && (payload[j] == b' ' || payload[j] == b':') {
                j += 1;
            }
            if j + 1 < payload.len() && payload[j] == b'"' && payload[j + 1] != b'"' {
                return true;
            }
            i = j;
        } else {
            i += 1;
        }
    }
    false
}

/// The end of the first SSE event in `buf` and the separator's length.
fn event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let a = buf.windows(2).position(|w| w == b"\n\n").map(|p| (p, 2));
    let b = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| (p, 4));
    match (a, b) {
        (Some(x), Some(y)) => Some(if x.0 <= y.0 { x } else { y }),
        (x, y) => x.or(y),
    }
}

struct Shared {
    args: Args,
    http: reqwest::Client,
    grpc: Vec<AiApiServiceClient<Channel>>,
    lean: Vec<lean::Conn>,
    http_body: bytes::Bytes,
    open_streams: AtomicU64,
    peak_open: AtomicU64,
    ready_said: AtomicBool,
}

impl Shared {
    fn stream_opened(&self) {
        let now = self.open_streams.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak_open.fetch_max(now, Ordering::SeqCst);
        let r = self.args.ready_at;
        if r > 0 && now >= r && !self.ready_said.swap(true, Ordering::SeqCst) {
            eprintln!("READY open={now}");
        }
    }
    fn stream_closed(&self) {
        self.open_streams.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Decrements the open-stream count when a stream that had opened ends, however it ends.
struct OpenGuard<'a>(&'a Shared, bool);

impl OpenGuard<'_> {
    fn open(&mut self) {
        if !self.1 {
            self.1 = true;
            self.0.stream_opened();
        }
    }
}

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        if self.1 {
            self.0.stream_closed();
        }
    }
}

/// Per-stream timings, recorded only if the stream ends well.
struct StreamTimes {
    ttft: Option<Duration>,
    gaps: Vec<u64>,
    chunks: u64,
    last: Option<Instant>,
}

impl StreamTimes {
    fn new() -> Self {
        StreamTimes {
            ttft: None,
            gaps: Vec::with_capacity(64),
            chunks: 0,
            last: None,
        }
    }
    fn content(&mut self, start: Instant) {
        let now = Instant::now();
        if self.ttft.is_none() {
            self.ttft = Some(now - start);
        }
        if let Some(prev) = self.last {
            self.gaps.push(us(now - prev));
        }
        self.last = Some(now);
        self.chunks += 1;
    }
}

async fn http_chat(sh: &Shared, st: &mut Stats) -> Result<(), (&'static str, String)> {
    let start = Instant::now();
    let resp = sh
        .http
        .post(&sh.args.target)
        .bearer_auth(&sh.args.key)
        .header("content-type", "application/json")
        .body(sh.http_body.clone())
        .send()
        .await
        .map_err(|e| ("connect", format!("{e:?}")))?;
    let status = resp.status();
    let body = resp.bytes().await.map_err(|e| ("body", e.to_string()))?;
    if !status.is_success() {
        return Err((
            "status",
            format!("{status}: {}", String::from_utf8_lossy(&body)),
        ));
    }
    if !body.windows(9).any(|w| w == b"\"choices\"") {
        return Err(("bad_body", String::from_utf8_lossy(&body).into_owned()));
    }
    let _ = st.latency.record(us(start.elapsed()));
    Ok(())
}

async fn http_stream(sh: &Shared, st: &mut Stats) -> Result<(), (&'static str, String)> {
    let start = Instant::now();
    let mut guard = OpenGuard(sh, false);
    let resp = sh
        .http
        .post(&sh.args.target)
        .bearer_auth(&sh.args.key)
        .header("content-type", "application/json")
        .header("accept", "text/event-stream")
        .body(sh.http_body.clone())
        .send()
        .await
        .map_err(|e| ("connect", format!("{e:?}")))?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp.text().await.unwrap_or_default();
        return Err(("status", format!("{status}: {body}")));
    }
    let mut times = StreamTimes::new();
    let mut done = false;
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut body = resp.bytes_stream();
    while let Some(piece) = body.next().await {
        let piece = piece.map_err(|e| ("stream_cut", e.to_string()))?;
        buf.extend_from_slice(&piece);
        while let Some((end, sep)) = event_end(&buf) {
            for line in buf[..end].split(|b| *b == b'\n') {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                let Some(data) = line.strip_prefix(b"data:") else {
                    continue;
                };
                let data = data.strip_prefix(b" ").unwrap_or(data);
                if data == b"[DONE]" {
                    done = true;
                } else if has_content(data) {
                    times.content(start);
                    guard.open();
                }
            }
            buf.drain(..end + sep);
        }
    }
    if !done {
        return Err(("no_done", format!("{} content chunks", times.chunks)));
    }
    finish_stream(sh, st, start, times)
}

fn finish_stream(
    sh: &Shared,
    st: &mut Stats,
    start: Instant,
    times: StreamTimes,
) -> Result<(), (&'static str, String)> {
    let want = sh.args.expect_chunks;
    if times.chunks == 0 || (want > 0 && times.chunks != want) {
        return Err((
            "chunk_count",
            format!("{} content chunks, expected {want}", times.chunks),
        ));
    }
    let _ = st.latency.record(us(start.elapsed()));
    if let Some(t) = times.ttft {
        let _ = st.ttft.record(us(t));
    }
    for g in times.gaps {
        let _ = st.gap.record(g);
    }
    st.content_chunks += times.chunks;
    Ok(())
}

fn grpc_request<T>(sh: &Shared, msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Ok(v) = MetadataValue::try_from(format!("Bearer {}", sh.args.key)) {
        req.metadata_mut().insert("authorization", v);
    }
    req
}

fn user_message() -> Vec<pb::ChatMessage> {
    vec![pb::ChatMessage {
        role: "user".into(),
        content: "Hello".into(),
        ..Default::default()
    }]
}

async fn grpc_chat(
    sh: &Shared,
    worker: usize,
    st: &mut Stats,
) -> Result<(), (&'static str, String)> {
    let mut client = sh.grpc[worker % sh.grpc.len()].clone();
    let start = Instant::now();
    let req = pb::ChatRequest {
        model: sh.args.model.clone(),
        messages: user_message(),
        ..Default::default()
    };
    let resp = client
        .chat(grpc_request(sh, req))
        .await
        .map_err(|s| ("grpc_status", format!("{:?}: {}", s.code(), s.message())))?;
    if resp.get_ref().choices.is_empty() {
        return Err(("bad_body", "no choices".into()));
    }
    let _ = st.latency.record(us(start.elapsed()));
    Ok(())
}

async fn grpc_stream(
    sh: &Shared,
    worker: usize,
    st: &mut Stats,
) -> Result<(), (&'static str, String)> {
    let mut client = sh.grpc[worker % sh.grpc.len()].clone();
    let start = Instant::now();
    let mut guard = OpenGuard(sh, false);
    let req = pb::StreamChatRequest {
        model: sh.args.model.clone(),
        messages: user_message(),
        ..Default::default()
    };
    let mut stream = client
        .stream_chat(grpc_request(sh, req))
        .await
        .map_err(|s| ("grpc_status", format!("{:?}: {}", s.code(), s.message())))?
        .into_inner();
    let mut times = StreamTimes::new();
    loop {
        match stream.message().await {
            Ok(Some(m)) => {
                if m.choices
                    .iter()
                    .any(|c| c.delta.as_ref().is_some_and(|d| !d.content.is_empty()))
                {
                    times.content(start);
                    guard.open();
                }
            }
            Ok(None) => break,
            Err(s) => {
                return Err(("stream_cut", format!("{:?}: {}", s.code(), s.message())));
            }
        }
    }
    finish_stream(sh, st, start, times)
}

async fn worker(
    sh: Arc<Shared>,
    idx: usize,
    deadline: Instant,
    issued: Arc<AtomicU64>,
    max: u64,
) -> Stats {
    let mut st = Stats::new();
    let limit = Duration::from_secs_f64(sh.args.timeout);
    while Instant::now() < deadline {
        if max > 0 && issued.fetch_add(1, Ordering::Relaxed) >= max {
            break;
        }
        let fut = async {
            match sh.args.mode {
                Mode::HttpChat => http_chat(&sh, &mut st).await,
                Mode::HttpStream => http_stream(&sh, &mut st).await,
                Mode::GrpcChat if !sh.lean.is_empty() => {
                    let conn = &sh.lean[idx % sh.lean.len()];
                    let start = Instant::now();
                    match conn.chat().await {
                        Ok(()) => {
                            let _ = st.latency.record(us(start.elapsed()));
                            Ok(())
                        }
                        Err(e) => Err(e),
                    }
                }
                Mode::GrpcChat => grpc_chat(&sh, idx, &mut st).await,
                Mode::GrpcStream => grpc_stream(&sh, idx, &mut st).await,
            }
        };
        let r = tokio::time::timeout(limit, fut).await;
        match r {
            Ok(Ok(())) => st.ok += 1,
            Ok(Err((kind, detail))) => {
                st.error(kind, detail);
                // do not spin on a refused connection
                if kind == "connect" {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            Err(_) => st.error("timeout", format!("over {:.1} s", sh.args.timeout)),
        }
    }
    st
}

async fn phase(sh: &Arc<Shared>, seconds: f64, max: u64) -> (Stats, Duration) {
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(seconds);
    let issued = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..sh.args.concurrency)
        .map(|i| tokio::spawn(worker(sh.clone(), i, deadline, issued.clone(), max)))
        .collect();
    let mut all = Stats::new();
    for h in handles {
        match h.await {
            Ok(s) => all.merge(s),
            Err(e) => all.error("worker_panic", e.to_string()),
        }
    }
    (all, start.elapsed())
}

async fn run(args: Args) -> Result<Value, Box<dyn std::error::Error>> {
    let http = reqwest::Client::builder()
        .http1_only()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(usize::MAX)
        .pool_idle_timeout(Duration::from_secs(60))
        .no_proxy()
        .build()?;
    let mut grpc = Vec::new();
    let mut lean = Vec::new();
    if args.mode == Mode::GrpcChat && args.unary_client == UnaryClient::H2 {
        let req = pb::ChatRequest {
            model: args.model.clone(),
            messages: user_message(),
            ..Default::default()
        };
        for _ in 0..args.connections.max(1) {
            lean.push(lean::Conn::connect(&args.target, &args.key, &req).await?);
        }
    } else if args.mode.is_grpc() {
        for _ in 0..args.connections.max(1) {
            let ch = Endpoint::from_shared(args.target.clone())?
                .tcp_nodelay(true)
                .connect_timeout(Duration::from_secs(5))
                .connect()
                .await?;
            grpc.push(AiApiServiceClient::new(ch).max_decoding_message_size(16 << 20));
        }
    }
    let mut body = json!({
        "model": args.model,
        "messages": [{"role": "user", "content": "Hello"}],
    });
    if args.mode == Mode::HttpStream {
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
    }
    let sh = Arc::new(Shared {
        http_body: bytes::Bytes::from(serde_json::to_vec(&body)?),
        args: args.clone(),
        http,
        grpc,
        lean,
        open_streams: AtomicU64::new(0),
        peak_open: AtomicU64::new(0),
        ready_said: AtomicBool::new(false),
    });
    if args.warmup > 0.0 {
        let _ = phase(&sh, args.warmup, 0).await;
    }
    sh.peak_open.store(0, Ordering::SeqCst);
    let (st, elapsed) = phase(&sh, args.duration, args.requests).await;
    let secs = elapsed.as_secs_f64();
    let mut out = json!({
        "tool": "grpc-load",
        "mode": format!("{:?}", args.mode),
        "label": args.label,
        "target": args.target,
        "model": args.model,
        "concurrency": args.concurrency,
        "unary_client": if args.mode == Mode::GrpcChat { format!("{:?}", args.unary_client) } else { String::new() },
        "connections": if args.mode.is_grpc() { args.connections.max(1) } else { args.concurrency },
        "duration_s": secs,
        "requests": st.ok + st.errors,
        "ok": st.ok,
        "errors": st.errors,
        "error_kinds": st.error_kinds,
        "error_samples": st.error_samples,
        "valid": st.errors == 0 && st.ok > 0,
        "rps": if secs > 0.0 { st.ok as f64 / secs } else { 0.0 },
        "latency_ms": summary(&st.latency),
    });
    if args.mode.is_stream() {
        out["ttft_ms"] = summary(&st.ttft);
        out["gap_ms"] = summary(&st.gap);
        out["chunks_per_stream"] = json!(if st.ok > 0 {
            st.content_chunks as f64 / st.ok as f64
        } else {
            0.0
        });
        out["peak_open_streams"] = json!(sh.peak_open.load(Ordering::SeqCst));
    }
    Ok(out)
}

/// A unary gRPC client over the `h2` crate: one HTTP/2 connection, the request message encoded
/// once, and per call only what gRPC requires of a client — the headers, the length-prefixed
/// message, then the answer's HTTP status, `grpc-status` (in the trailers, or in the headers of a
/// trailers-only answer) and the decoded `ChatResponse`.
mod lean {
    use bytes::{Buf, BufMut, Bytes, BytesMut};
    use prost::Message;

    use super::pb;

    pub struct Conn {
        send: h2::client::SendRequest<Bytes>,
        uri: http::Uri,
        auth: http::HeaderValue,
        body: Bytes,
    }

    type Failure = (&'static str, String);

    fn status_of(h: &http::HeaderMap) -> Option<(String, String)> {
        let code = h.get("grpc-status")?.to_str().unwrap_or("?").to_string();
        let msg = h
            .get("grpc-message")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        Some((code, msg))
    }

    impl Conn {
        pub async fn connect(
            target: &str,
            key: &str,
            req: &pb::ChatRequest,
        ) -> Result<Self, Box<dyn std::error::Error>> {
            let base: http::Uri = target.parse()?;
            let authority = base
                .authority()
                .ok_or("the target has no host:port")?
                .clone();
            let tcp = tokio::net::TcpStream::connect(authority.as_str()).await?;
            tcp.set_nodelay(true)?;
            let (send, conn) = h2::client::Builder::new()
                .initial_window_size(1 << 20)
                .initial_connection_window_size(16 << 20)
                .handshake(tcp)
                .await?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    eprintln!("grpc-load: connection ended: {e}");
                }
            });
            let uri = http::Uri::builder()
                .scheme("http")
                .authority(authority)
                .path_and_query("/ai_api.v1.AiApiService/Chat")
                .build()?;
            let msg = req.encode_to_vec();
            let mut body = BytesMut::with_capacity(5 + msg.len());
            body.put_u8(0);
            body.put_u32(u32::try_from(msg.len())?);
            body.put_slice(&msg);
            Ok(Conn {
                send,
                uri,
                auth: http::HeaderValue::try_from(format!("Bearer {key}"))?,
                body: body.freeze(),
            })
        }

        pub async fn chat(&self) -> Result<(), Failure> {
            let req = http::Request::post(self.uri.clone())
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .header("authorization", self.auth.clone())
                .body(())
                .map_err(|e| ("request", e.to_string()))?;
            let mut send = self
                .send
                .clone()
                .ready()
                .await
                .map_err(|e| ("connect", e.to_string()))?;
            let (answer, mut out) = send
                .send_request(req, false)
                .map_err(|e| ("connect", e.to_string()))?;
            out.send_data(self.body.clone(), true)
                .map_err(|e| ("send", e.to_string()))?;
            let answer = answer.await.map_err(|e| ("h2", e.to_string()))?;
            if answer.status() != http::StatusCode::OK {
                return Err(("http_status", answer.status().to_string()));
            }
            if let Some((code, msg)) = status_of(answer.headers()) {
                // Trailers-only: an error (or an empty answer, which is one too here).
                return Err(("grpc_status", format!("{code}: {msg}")));
            }
            let mut body = answer.into_body();
            let mut buf = BytesMut::new();
            while let Some(piece) = body.data().await {
                let piece = piece.map_err(|e| ("body", e.to_string()))?;
                let _ = body.flow_control().release_capacity(piece.len());
                buf.extend_from_slice(&piece);
            }
            let trailers = body
                .trailers()
                .await
                .map_err(|e| ("trailers", e.to_string()))?
                .ok_or(("trailers", "no trailers".to_string()))?;
            match status_of(&trailers) {
                Some((code, _)) if code == "0" => {}
                Some((code, msg)) => return Err(("grpc_status", format!("{code}: {msg}"))),
                None => return Err(("trailers", "no grpc-status".into())),
            }
            if buf.len() < 5 || buf[0] != 0 {
                return Err(("bad_body", format!("{} bytes, not one message", buf.len())));
            }
            let mut b = buf.freeze();
            b.advance(1);
            let len = b.get_u32() as usize;
            if b.len() != len {
                return Err(("bad_body", format!("length {len}, {} bytes", b.len())));
            }
            let resp = pb::ChatResponse::decode(b).map_err(|e| ("bad_body", e.to_string()))?;
            if resp.choices.is_empty() {
                return Err(("bad_body", "no choices".into()));
            }
            Ok(())
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    // One HTTP/2 connection is one ordered byte stream, driven by one task: with the lean
    // client, calls over a single connection run on one thread, next to that task, instead of
    // waking it across threads for every call (which cost the driver ~30 % more CPU per call,
    // taken from the server it measures on a 2-core machine).
    let one_thread = args.mode == Mode::GrpcChat
        && args.unary_client == UnaryClient::H2
        && args.connections <= 1;
    let rt = if one_thread {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
    };
    let out = rt.block_on(run(args.clone()))?;
    let text = serde_json::to_string_pretty(&out)?;
    if let Some(p) = &args.out {
        std::fs::write(p, &text)?;
    }
    println!("{text}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_detection() {
        assert!(has_content(br#"{"delta":{"content":"hi"}}"#));
        assert!(has_content(br#"{"delta":{"content": "hi"}}"#));
        assert!(!has_content(br#"{"delta":{"content":""}}"#));
        assert!(!has_content(br#"{"delta":{"content":null}}"#));
        assert!(!has_content(br#"{"delta":{}}"#));
    }

    #[test]
    fn events_split() {
        assert_eq!(event_end(b"data: a\n\ndata: b"), Some((7, 2)));
        assert_eq!(event_end(b"data: a\r\n\r\n"), Some((7, 4)));
        assert_eq!(event_end(b"data: a\n"), None);
    }
}
