//! The core: one [`Gateway`] that both doors call. It owns auth, model-group lookup, deployment
//! choice, timeouts and the client's deadline, cost, and the one log line per request. It knows
//! no wire format: doors convert to [`types`] and back.

pub mod cost;
pub mod error;
pub mod types;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use tokio::time::Instant;

use crate::config::{Config, DeploymentConfig, Secret};
use crate::providers::{ChunkStream, Provider};
use cost::PriceTable;
use error::{Error, ErrorKind};
use types::{
    ChatChunk, ChatRequest, ChatResponse, EmbeddingRequest, EmbeddingResponse, ImageRequest,
    ImageResponse, ModelInfo, Usage,
};

/// LiteLLM's default whole-call timeout when neither the deployment nor the router sets one.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// Which door a request came through (for logs and metrics only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    Http,
    Grpc,
}

impl Door {
    pub fn as_str(self) -> &'static str {
        match self {
            Door::Http => "http",
            Door::Grpc => "grpc",
        }
    }
}

/// What a door knows about a request besides its body.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub request_id: String,
    pub door: Door,
    /// The key the client presented (`Authorization: Bearer`, `x-api-key`, gRPC metadata).
    pub api_key: Option<String>,
    /// The client's deadline (gRPC `grpc-timeout`).
    pub deadline: Option<Instant>,
}

impl RequestContext {
    pub fn new(door: Door, request_id: String, api_key: Option<String>) -> Self {
        RequestContext {
            request_id,
            door,
            api_key,
            deadline: None,
        }
    }
}

/// Where an answer came from: what the doors put in response headers / metadata.
#[derive(Debug, Clone)]
pub struct ServedBy {
    pub model_group: String,
    pub deployment_id: String,
    pub api_base: Option<String>,
    pub cost_usd: f64,
    pub attempted_retries: u32,
    pub attempted_fallbacks: u32,
    pub started: Instant,
}

/// An answer and where it came from.
#[derive(Debug)]
pub struct Served<T> {
    pub value: T,
    pub by: ServedBy,
}

/// A deployment ready to serve.
#[derive(Debug)]
pub struct Deployment {
    pub config: DeploymentConfig,
    provider: Provider,
}

#[derive(Debug)]
struct Group {
    deployments: Vec<Arc<Deployment>>,
    next: AtomicUsize,
}

#[derive(Debug)]
struct Inner {
    groups: HashMap<String, Group>,
    models: Vec<ModelInfo>,
    master_key: Option<Secret>,
    log_raw: bool,
    prices: PriceTable,
}

/// The gateway core. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

impl Gateway {
    pub fn new(config: &Config) -> Result<Self, Error> {
        let client = reqwest::Client::builder()
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("ai-api/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::internal(format!("cannot build the HTTP client: {e}")))?;
        let created = types::unix_now();
        let mut groups: HashMap<String, Group> = HashMap::new();
        let mut models = Vec::new();
        for d in &config.deployments {
            let dep = Arc::new(Deployment {
                config: d.clone(),
                provider: Provider::new(d, client.clone(), config.log_raw_request_response),
            });
            let group = groups.entry(d.model_name.clone()).or_insert_with(|| {
                models.push(ModelInfo {
                    id: d.model_name.clone(),
                    owned_by: d.provider.name().to_string(),
                    created,
                });
                Group {
                    deployments: Vec::new(),
                    next: AtomicUsize::new(0),
                }
            });
            group.deployments.push(dep);
        }
        Ok(Gateway {
            inner: Arc::new(Inner {
                groups,
                models,
                master_key: config.master_key.clone(),
                log_raw: config.log_raw_request_response,
                prices: PriceTable::builtin(),
            }),
        })
    }

    /// How many model groups are served.
    pub fn model_count(&self) -> usize {
        self.inner.models.len()
    }

    /// Whether a master key guards the gateway.
    pub fn auth_required(&self) -> bool {
        self.inner.master_key.is_some()
    }

    /// Checks the client's key. Without a configured master key everything is open.
    pub fn authorize(&self, ctx: &RequestContext) -> Result<(), Error> {
        let Some(master) = &self.inner.master_key else {
            return Ok(());
        };
        match ctx.api_key.as_deref() {
            None | Some("") => Err(Error::unauthenticated(
                "no API key: send it as \"Authorization: Bearer <key>\"",
            )
            .with_code("missing_api_key")),
            Some(k) if constant_time_eq(k.as_bytes(), master.expose().as_bytes()) => Ok(()),
            Some(_) => Err(Error::unauthenticated("invalid API key").with_code("invalid_api_key")),
        }
    }

    /// The model groups, in config order.
    pub fn list_models(&self, ctx: &RequestContext) -> Result<Vec<ModelInfo>, Error> {
        self.authorize(ctx)?;
        Ok(self.inner.models.clone())
    }

    /// One model group.
    pub fn model(&self, ctx: &RequestContext, id: &str) -> Result<ModelInfo, Error> {
        self.authorize(ctx)?;
        self.inner
            .models
            .iter()
            .find(|m| m.id == id)
            .cloned()
            .ok_or_else(|| self.unknown_model(id))
    }

    fn unknown_model(&self, name: &str) -> Error {
        let names: Vec<&str> = self.inner.models.iter().map(|m| m.id.as_str()).collect();
        Error::not_found(format!(
            "model {name:?} does not exist; available models: {}",
            names.join(", ")
        ))
        .with_param("model")
        .with_code("model_not_found")
    }

    /// Picks the deployment for a request to `model`.
    fn pick(&self, model: &str) -> Result<(&str, Arc<Deployment>), Error> {
        let (name, group) = self
            .inner
            .groups
            .get_key_value(model)
            .ok_or_else(|| self.unknown_model(model))?;
        let n = group.deployments.len();
        let i = group.next.fetch_add(1, Ordering::Relaxed) % n.max(1);
        let dep =
            group.deployments.get(i).cloned().ok_or_else(|| {
                Error::internal(format!("model group {model:?} has no deployment"))
            })?;
        Ok((name.as_str(), dep))
    }

    fn served_by(&self, group: &str, dep: &Deployment, started: Instant, cost: f64) -> ServedBy {
        ServedBy {
            model_group: group.to_string(),
            deployment_id: dep.config.id.clone(),
            api_base: dep.config.api_base.clone(),
            cost_usd: cost,
            attempted_retries: 0,
            attempted_fallbacks: 0,
            started,
        }
    }

    /// Runs `fut` within the deployment's timeout and the client's deadline.
    async fn bounded<T>(
        &self,
        ctx: &RequestContext,
        timeout: Duration,
        fut: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        let own = Instant::now() + timeout;
        let (deadline, theirs) = match ctx.deadline {
            Some(d) if d < own => (d, true),
            _ => (own, false),
        };
        match tokio::time::timeout_at(deadline, fut).await {
            Ok(r) => r,
            Err(_) if theirs => {
                Err(Error::timeout("the client's deadline passed").with_code("deadline_exceeded"))
            }
            Err(_) => Err(Error::timeout(format!(
                "the provider did not answer within {:.1}s",
                timeout.as_secs_f64()
            ))
            .with_code("timeout")),
        }
    }

    pub async fn chat(
        &self,
        ctx: &RequestContext,
        req: ChatRequest,
    ) -> Result<Served<ChatResponse>, Error> {
        let started = Instant::now();
        let log = RequestLog::start(ctx, &req.model, started);
        let result = self.chat_inner(ctx, req, started).await;
        match &result {
            Ok(s) => log.finish_ok(&s.by, s.value.usage.as_ref()),
            Err(e) => log.finish_err(e),
        }
        result
    }

    async fn chat_inner(
        &self,
        ctx: &RequestContext,
        req: ChatRequest,
        started: Instant,
    ) -> Result<Served<ChatResponse>, Error> {
        self.authorize(ctx)?;
        req.validate()?;
        let (group, dep) = self.pick(&req.model)?;
        self.log_raw_request(ctx, &req);
        let timeout = dep.config.timeout.unwrap_or(DEFAULT_TIMEOUT);
        let mut resp = self.bounded(ctx, timeout, dep.provider.chat(&req)).await?;
        let mut cost = 0.0;
        if let Some(u) = resp.usage.as_mut() {
            u.cost_usd = self.inner.prices.token_cost(&dep.config, u);
            cost = u.cost_usd;
        }
        if self.inner.log_raw {
            tracing::info!(target: "ai_api::raw", request_id = %ctx.request_id, response = ?resp, "response");
        }
        Ok(Served {
            value: resp,
            by: self.served_by(group, &dep, started, cost),
        })
    }

    /// Starts a streamed chat. The first chunk is awaited here, so a provider that fails
    /// before its first token is an error of the call (a proper status), not of the stream.
    pub async fn chat_stream(
        &self,
        ctx: &RequestContext,
        req: ChatRequest,
    ) -> Result<Served<ChatStream>, Error> {
        let started = Instant::now();
        let log = RequestLog::start(ctx, &req.model, started);
        match self.chat_stream_inner(ctx, req, started).await {
            Ok((by, first, rest, dep, include_usage)) => {
                let stream = ChatStream {
                    first: Some(first),
                    rest,
                    deployment: dep,
                    gateway: self.clone(),
                    include_usage,
                    stream_timeout: None,
                    sleep: None,
                    log: Some((log, by.clone())),
                    usage: None,
                    done: false,
                };
                Ok(Served { value: stream, by })
            }
            Err(e) => {
                log.finish_err(&e);
                Err(e)
            }
        }
    }

    #[allow(clippy::type_complexity)]
    async fn chat_stream_inner(
        &self,
        ctx: &RequestContext,
        req: ChatRequest,
        started: Instant,
    ) -> Result<(ServedBy, ChatChunk, ChunkStream, Arc<Deployment>, bool), Error> {
        self.authorize(ctx)?;
        req.validate()?;
        let (group, dep) = self.pick(&req.model)?;
        self.log_raw_request(ctx, &req);
        let include_usage = req.include_usage;
        let timeout = dep
            .config
            .stream_timeout
            .or(dep.config.timeout)
            .unwrap_or(DEFAULT_TIMEOUT);
        let (first, rest) = self
            .bounded(ctx, timeout, async {
                let mut s = dep.provider.chat_stream(&req).await?;
                match s.next().await {
                    Some(Ok(first)) => Ok((first, s)),
                    Some(Err(e)) => Err(e),
                    None => Err(crate::providers::http::stream_cut()),
                }
            })
            .await?;
        let by = self.served_by(group, &dep, started, 0.0);
        Ok((by, first, rest, dep, include_usage))
    }

    pub async fn embed(
        &self,
        ctx: &RequestContext,
        req: EmbeddingRequest,
    ) -> Result<Served<EmbeddingResponse>, Error> {
        let started = Instant::now();
        let log = RequestLog::start(ctx, &req.model, started);
        let result = async {
            self.authorize(ctx)?;
            req.validate()?;
            let (group, dep) = self.pick(&req.model)?;
            let timeout = dep.config.timeout.unwrap_or(DEFAULT_TIMEOUT);
            let mut resp = self.bounded(ctx, timeout, dep.provider.embed(&req)).await?;
            if resp.data.len() != req.input.len() {
                return Err(Error::bad_gateway(format!(
                    "the provider answered {} embeddings for {} inputs",
                    resp.data.len(),
                    req.input.len()
                )));
            }
            resp.usage.cost_usd = self.inner.prices.token_cost(&dep.config, &resp.usage);
            let cost = resp.usage.cost_usd;
            Ok(Served {
                value: resp,
                by: self.served_by(group, &dep, started, cost),
            })
        }
        .await;
        match &result {
            Ok(s) => log.finish_ok(&s.by, Some(&s.value.usage)),
            Err(e) => log.finish_err(e),
        }
        result
    }

    pub async fn generate_image(
        &self,
        ctx: &RequestContext,
        req: ImageRequest,
    ) -> Result<Served<ImageResponse>, Error> {
        let started = Instant::now();
        let log = RequestLog::start(ctx, &req.model, started);
        let result = async {
            self.authorize(ctx)?;
            req.validate()?;
            let (group, dep) = self.pick(&req.model)?;
            let timeout = dep.config.timeout.unwrap_or(DEFAULT_TIMEOUT);
            let mut resp = self
                .bounded(ctx, timeout, dep.provider.generate_image(&req))
                .await?;
            resp.usage.cost_usd = self
                .inner
                .prices
                .image_cost(&dep.config, &req, resp.data.len());
            let cost = resp.usage.cost_usd;
            Ok(Served {
                value: resp,
                by: self.served_by(group, &dep, started, cost),
            })
        }
        .await;
        match &result {
            Ok(s) => log.finish_ok(&s.by, Some(&s.value.usage)),
            Err(e) => log.finish_err(e),
        }
        result
    }

    fn log_raw_request(&self, ctx: &RequestContext, req: &ChatRequest) {
        if self.inner.log_raw {
            tracing::info!(target: "ai_api::raw", request_id = %ctx.request_id, request = ?req, "request");
        }
    }
}

/// Compares keys without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The one structured log line of a request, written when it ends (for streams: when the
/// stream ends or the client goes away).
#[derive(Debug)]
struct RequestLog {
    request_id: String,
    door: Door,
    model: String,
    started: Instant,
}

impl RequestLog {
    fn start(ctx: &RequestContext, model: &str, started: Instant) -> Self {
        RequestLog {
            request_id: ctx.request_id.clone(),
            door: ctx.door,
            model: model.to_string(),
            started,
        }
    }

    fn finish_ok(&self, by: &ServedBy, usage: Option<&Usage>) {
        let u = usage.copied().unwrap_or_default();
        tracing::info!(
            target: "ai_api::request",
            request_id = %self.request_id,
            door = self.door.as_str(),
            model = %self.model,
            deployment = %by.deployment_id,
            status = 200u16,
            latency_ms = self.started.elapsed().as_millis() as u64,
            prompt_tokens = u.prompt_tokens,
            completion_tokens = u.completion_tokens,
            cost_usd = u.cost_usd,
            "request served"
        );
    }

    fn finish_err(&self, e: &Error) {
        self.finish_err_at(e, None);
    }

    fn finish_err_at(&self, e: &Error, deployment: Option<&str>) {
        tracing::info!(
            target: "ai_api::request",
            request_id = %self.request_id,
            door = self.door.as_str(),
            model = %self.model,
            deployment = deployment.unwrap_or(""),
            status = e.http_status().as_u16(),
            latency_ms = self.started.elapsed().as_millis() as u64,
            error = %e.message,
            "request failed"
        );
    }
}

/// A chat stream as the doors see it: chunks with cost filled in, the usage chunk only when the
/// client asked for it, the deployment's `stream_timeout` between chunks, and the request's log
/// line when it ends. Dropping it drops the upstream body, which closes that connection.
pub struct ChatStream {
    first: Option<ChatChunk>,
    rest: ChunkStream,
    deployment: Arc<Deployment>,
    gateway: Gateway,
    include_usage: bool,
    stream_timeout: Option<Duration>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    log: Option<(RequestLog, ServedBy)>,
    usage: Option<Usage>,
    done: bool,
}

impl std::fmt::Debug for ChatStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatStream")
            .field("deployment", &self.deployment.config.id)
            .finish()
    }
}

impl ChatStream {
    /// Fills in cost on the usage chunk; returns `None` for a usage chunk the client did not
    /// ask for.
    fn prepare(&mut self, mut chunk: ChatChunk) -> Option<ChatChunk> {
        if let Some(u) = chunk.usage.as_mut() {
            u.cost_usd = self
                .gateway
                .inner
                .prices
                .token_cost(&self.deployment.config, u);
            self.usage = Some(*u);
            if !self.include_usage {
                if chunk.choices.is_empty() {
                    return None;
                }
                chunk.usage = None;
            }
        }
        Some(chunk)
    }

    fn end(&mut self, err: Option<&Error>) {
        self.done = true;
        if let Some((log, by)) = self.log.take() {
            match err {
                None => log.finish_ok(&by, self.usage.as_ref()),
                Some(e) => log.finish_err_at(e, Some(&by.deployment_id)),
            }
        }
    }

    /// The usage of the stream so far (complete once it has ended).
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }
}

impl Stream for ChatStream {
    type Item = Result<ChatChunk, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(first) = this.first.take()
            && let Some(chunk) = this.prepare(first)
        {
            return Poll::Ready(Some(Ok(chunk)));
        }
        if this.stream_timeout.is_none() {
            this.stream_timeout = Some(
                this.deployment
                    .config
                    .stream_timeout
                    .unwrap_or(DEFAULT_TIMEOUT),
            );
        }
        loop {
            match this.rest.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    this.sleep = None;
                    if let Some(chunk) = this.prepare(chunk) {
                        return Poll::Ready(Some(Ok(chunk)));
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    this.end(Some(&e));
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => {
                    this.end(None);
                    return Poll::Ready(None);
                }
                Poll::Pending => {
                    let wait = this.stream_timeout.unwrap_or(DEFAULT_TIMEOUT);
                    let sleep = this
                        .sleep
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(wait)));
                    if sleep.as_mut().poll(cx).is_ready() {
                        let e = Error::timeout(format!(
                            "the provider sent nothing for {:.1}s mid-stream",
                            wait.as_secs_f64()
                        ))
                        .with_code("stream_timeout");
                        this.end(Some(&e));
                        return Poll::Ready(Some(Err(e)));
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

impl Drop for ChatStream {
    fn drop(&mut self) {
        if !self.done {
            let e = Error::new(ErrorKind::Cancelled, "the client went away mid-stream");
            self.end(Some(&e));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_comparison_is_exact() {
        assert!(constant_time_eq(b"sk-1", b"sk-1"));
        assert!(!constant_time_eq(b"sk-1", b"sk-2"));
        assert!(!constant_time_eq(b"sk-1", b"sk-12"));
    }
}
