//! The core: one [`Gateway`] that both doors call. It owns auth, model-group lookup, deployment
//! choice, timeouts and the client's deadline, cost, and the one log line per request. It knows
//! no wire format: doors convert to [`types`] and back.

pub mod admin;
pub mod auth;
pub mod cost;
pub mod error;
pub mod limiter;
pub mod record;
pub mod router;
pub mod types;

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use serde_json::Value;
use tokio::time::Instant;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::providers::{ChunkStream, Provider};
use crate::store::{SpendWriter, Store};
use auth::{Auth, Principal};
use cost::PriceTable;
use error::{Error, ErrorKind};
use limiter::MemoryLimiter;
use record::RequestRecord;
use router::{Clock, Deployment, Lease, RouteOverrides, Routed, Router, SystemClock};
use types::{
    ChatChunk, ChatRequest, ChatResponse, EmbeddingRequest, EmbeddingResponse, ImageRequest,
    ImageResponse, ModelInfo, Usage,
};

/// LiteLLM's default whole-call timeout when neither the deployment nor the router sets one.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// Body parameters that steer the gateway (LiteLLM's) and are never sent to a provider.
const GATEWAY_PARAMS: [&str; 16] = [
    "fallbacks",
    "num_retries",
    "timeout",
    "stream_timeout",
    "context_window_fallbacks",
    "content_policy_fallbacks",
    "mock_response",
    "mock_testing_fallbacks",
    "metadata",
    "litellm_metadata",
    "tags",
    "caching",
    "api_key",
    "api_base",
    "base_url",
    "api_version",
];

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

/// A new request id, for a request whose client sent none: a UUIDv7, which starts with the
/// time, so ids made one after another sort (near enough) in order and the spend ledger's
/// index on them grows at its end instead of at random places.
pub fn new_request_id() -> uuid::Uuid {
    uuid::Uuid::new_v7(uuid::Timestamp::now(uuid::NoContext))
}

/// The header (HTTP) and metadata key (gRPC) that carries a request's id, both ways.
pub const X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// A header's value as trimmed text, if it is visible ASCII (HTTP headers, gRPC metadata).
pub(crate) fn header_text<'a>(
    headers: &'a http::HeaderMap,
    name: &http::HeaderName,
) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// A [`new_request_id`] as text, written on the stack and handed to `f` (each door keeps it
/// in its own form: a header value, an `Arc<str>`), not through the formatter into a string.
pub fn with_new_request_id<R>(f: impl FnOnce(&str) -> R) -> R {
    let mut buf = uuid::Uuid::encode_buffer();
    f(new_request_id().hyphenated().encode_lower(&mut buf))
}

/// What a door knows about a request besides its body.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// Shared, not copied, with the request's record and its spend record.
    pub request_id: Arc<str>,
    pub door: Door,
    /// The key the client presented (`Authorization: Bearer`, `x-api-key`, gRPC metadata).
    pub api_key: Option<String>,
    /// The client's deadline (gRPC `grpc-timeout`).
    pub deadline: Option<Instant>,
    /// Who the caller is, once [`Gateway::authorize`] has said.
    pub principal: Option<Principal>,
}

impl RequestContext {
    pub fn new(door: Door, request_id: Arc<str>, api_key: Option<String>) -> Self {
        RequestContext {
            request_id,
            door,
            api_key,
            deadline: None,
            principal: None,
        }
    }
}

/// What the gateway needs besides its config.
#[derive(Debug, Default)]
pub struct Deps {
    /// The router's clock (default: real time).
    pub clock: Option<Arc<dyn Clock>>,
    /// Keys and spend storage.
    pub store: Option<Store>,
    /// Where spend records go.
    pub spend: Option<SpendWriter>,
    /// Worker threads that each call providers over their own connection pool
    /// (`crate::workers`); 0 = only the calling runtime's.
    pub workers: usize,
}

/// A request admitted for its caller: held until the request (or stream) ends.
#[derive(Debug)]
pub(crate) struct Admission {
    pub(crate) principal: Principal,
    /// Held for its `Drop`: the key's in-flight count for the budget projection.
    _reservation: Option<auth::Reservation>,
    /// Held for its `Drop`: the key's rate-limiter slot.
    _slot: Option<limiter::Slot>,
}

/// The limiter subject of a key.
fn key_subject(token_hash: &str) -> String {
    format!("key:{token_hash}")
}

/// Where an answer came from: what the doors put in response headers / metadata.
#[derive(Debug, Clone)]
pub struct ServedBy {
    pub cost_usd: f64,
    pub attempted_retries: u32,
    pub attempted_fallbacks: u32,
    pub started: Instant,
    /// Time spent waiting on providers up to the answer (or the first chunk).
    pub upstream: Duration,
    /// The deployment that answered; its group is the one that served the answer (after a
    /// fallback, the fallback's).
    pub deployment: Arc<Deployment>,
}

impl ServedBy {
    /// The model group that served the answer.
    pub fn model_group(&self) -> &str {
        &self.deployment.config.model_name
    }

    /// The deployment's id (`model_info.id`).
    pub fn deployment_id(&self) -> &str {
        &self.deployment.config.id
    }

    /// The provider's model name.
    pub fn provider_model(&self) -> &str {
        &self.deployment.config.upstream_model
    }

    /// The gateway's own time when `elapsed` has passed since the request started:
    /// everything but the providers'. The caller reads the clock once for both numbers (in
    /// a VM a read costs about 50 ns, and an answer needs both twice).
    pub fn overhead_at(&self, elapsed: Duration) -> Duration {
        elapsed.saturating_sub(self.upstream)
    }

    /// LiteLLM's `x-litellm-*` response headers (HTTP headers, gRPC metadata), so existing
    /// dashboards keep working; the cost only where it is known when the headers leave. A
    /// copy of the deployment's [`ResponseHeaders`] with this answer's values written in
    /// place: inserting eight headers one by one hashed every name on every answer.
    pub fn headers(&self, cost: Option<f64>) -> http::HeaderMap {
        let template = &self.deployment.headers;
        let mut h = match cost {
            Some(_) => template.with_cost.clone(),
            None => template.without_cost.clone(),
        };
        let elapsed = self.started.elapsed();
        let duration = millis(elapsed);
        let overhead = millis(self.overhead_at(elapsed));
        let mut values = [
            (self.attempted_retries != 0).then(|| count(self.attempted_retries)),
            (self.attempted_fallbacks != 0).then(|| count(self.attempted_fallbacks)),
            per_answer(duration),
            per_answer(overhead),
            cost.and_then(cost_value),
        ];
        for (at, (_, value)) in h.iter_mut().enumerate() {
            let slot = template.slots.iter().position(|&s| s == Some(at));
            if let Some(new) = slot.and_then(|i| values.get_mut(i)).and_then(Option::take) {
                *value = new;
            }
        }
        h
    }
}

/// A deployment's answer headers, built once: its identity (`x-litellm-model-group`,
/// `-model-id`, `-model-api-base`), then the retries, fallbacks, durations and (in one of the
/// two) the cost, holding placeholders that [`ServedBy::headers`] overwrites by position.
#[derive(Debug)]
pub(crate) struct ResponseHeaders {
    with_cost: http::HeaderMap,
    without_cost: http::HeaderMap,
    /// Where retries, fallbacks, duration, overhead and cost sit in the maps' iteration order
    /// (the same in both: the cost comes last), read off the built map itself.
    slots: [Option<usize>; 5],
}

impl ResponseHeaders {
    pub(crate) fn new(identity: &[(&'static str, Option<&str>)]) -> Self {
        use http::{HeaderName, HeaderValue};
        const NAMES: [&str; 5] = [
            "x-litellm-attempted-retries",
            "x-litellm-attempted-fallbacks",
            "x-litellm-response-duration-ms",
            "x-litellm-overhead-duration-ms",
            "x-litellm-response-cost",
        ];
        // Room in the index table for the doors' own headers (content type, request id, cache
        // control): a copy keeps the table's size, so adding them does not rehash.
        let mut with_cost = http::HeaderMap::with_capacity(12);
        for (name, value) in identity {
            // A value that is not a valid header (control characters) is left out.
            if let Some(v) = value.and_then(|v| HeaderValue::from_str(v).ok()) {
                with_cost.insert(HeaderName::from_static(name), v);
            }
        }
        for name in NAMES {
            with_cost.insert(HeaderName::from_static(name), HeaderValue::from_static("0"));
        }
        let mut without_cost = with_cost.clone();
        without_cost.remove(NAMES[4]);
        let mut slots = [None; 5];
        for (at, name) in with_cost.keys().enumerate() {
            if let Some(i) = NAMES.iter().position(|n| name == n) {
                slots[i] = Some(at);
            }
        }
        ResponseHeaders {
            with_cost,
            without_cost,
            slots,
        }
    }
}

/// A value that differs on every answer, marked so HTTP/2 (the gRPC door) sends it as a
/// literal instead of churning its HPACK table with values that never repeat. A formatted
/// string becomes the value as it is (no second copy); bytes are copied once.
pub(crate) fn per_answer<V: TryInto<http::HeaderValue>>(value: V) -> Option<http::HeaderValue> {
    let mut v = value.try_into().ok()?;
    v.set_sensitive(true);
    Some(v)
}

/// A retry or fallback count as a header value (zero is the template's own placeholder), the
/// usual ones without an allocation.
fn count(n: u32) -> http::HeaderValue {
    use http::HeaderValue;
    match n {
        1 => HeaderValue::from_static("1"),
        2 => HeaderValue::from_static("2"),
        _ => HeaderValue::from(n),
    }
}

/// Milliseconds with three decimals (`12.045`), from integer microseconds: float formatting
/// showed in profiles.
fn millis(d: Duration) -> String {
    let us = d.as_micros();
    let mut digits = itoa::Buffer::new();
    let whole = digits.format(us / 1000);
    let frac = (us % 1000) as u16;
    let mut s = String::with_capacity(whole.len() + 4);
    s.push_str(whole);
    s.push('.');
    for d in [frac / 100, frac / 10 % 10, frac % 10] {
        s.push(char::from(b'0' + d as u8));
    }
    s
}

/// The cost header's value, as `format!("{cost}")` writes it, formatted on the stack and
/// copied once into the value: `to_string` grew its string twice on the way (three
/// allocations per answer where one does).
fn cost_value(cost: f64) -> Option<http::HeaderValue> {
    use std::io::Write as _;
    let mut buf = [0u8; 48];
    let mut out = std::io::Cursor::new(&mut buf[..]);
    match write!(out, "{cost}") {
        Ok(()) => {
            let len = usize::try_from(out.position()).unwrap_or(0);
            per_answer(buf.get(..len)?)
        }
        // Longer than the buffer (tiny or huge values written without an exponent).
        Err(_) => per_answer(cost.to_string()),
    }
}

/// An answer and where it came from.
#[derive(Debug)]
pub struct Served<T> {
    pub value: T,
    pub by: ServedBy,
}

#[derive(Debug)]
struct Inner {
    router: Router,
    models: Vec<ModelInfo>,
    auth: Auth,
    spend: Option<SpendWriter>,
    log_raw: bool,
    prices: PriceTable,
    metrics: Arc<Metrics>,
    require_auth_for_metrics: bool,
}

/// The gateway core. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

/// Takes the gateway's own parameters out of a request's pass-through map.
fn take_overrides(extra: &mut BTreeMap<String, Value>) -> Result<RouteOverrides, Error> {
    let mut o = RouteOverrides::default();
    // Most requests carry nothing beyond OpenAI's own fields: no lookups, no removals.
    if extra.is_empty() {
        return Ok(o);
    }
    if let Some(v) = extra.get("fallbacks").filter(|v| !v.is_null()) {
        let list = v
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|x| x.as_str().map(str::to_string))
                    .collect::<Option<Vec<_>>>()
            })
            .unwrap_or(None)
            .ok_or_else(|| {
                Error::bad_request("fallbacks must be a list of model names")
                    .with_param("fallbacks")
            })?;
        o.fallbacks = Some(list);
    }
    if let Some(v) = extra.get("num_retries").filter(|v| !v.is_null()) {
        let n = v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| {
                Error::bad_request("num_retries must be a non-negative integer")
                    .with_param("num_retries")
            })?;
        o.num_retries = Some(n);
    }
    if let Some(v) = extra.get("timeout").filter(|v| !v.is_null()) {
        let t = v
            .as_f64()
            .filter(|t| *t > 0.0)
            .and_then(|t| Duration::try_from_secs_f64(t).ok())
            .ok_or_else(|| {
                Error::bad_request("timeout must be a positive number of seconds")
                    .with_param("timeout")
            })?;
        o.timeout = Some(t);
    }
    for k in GATEWAY_PARAMS {
        extra.remove(k);
    }
    Ok(o)
}

impl Gateway {
    /// A gateway with no store (no generated keys, no spend records) on real time.
    pub async fn new(config: &Config) -> Result<Self, Error> {
        Self::start(config, Deps::default()).await
    }

    /// Builds the gateway: providers, router, and the key cache loaded from the store.
    pub async fn start(config: &Config, deps: Deps) -> Result<Self, Error> {
        let clock = deps.clock.clone().unwrap_or_else(|| Arc::new(SystemClock));
        let auth = Auth::load(config.master_key.clone(), deps.store.clone())
            .await
            .map_err(|e| Error::internal(format!("cannot load the keys from the database: {e}")))?;
        let client = crate::providers::http::HttpClient::new(deps.workers)
            .map_err(|e| Error::internal(format!("cannot build the HTTP client: {e}")))?;
        let created = types::unix_now();
        let metrics = Arc::new(Metrics::new());
        let prices = PriceTable::builtin();
        let mut models: Vec<ModelInfo> = Vec::new();
        let mut deployments = Vec::with_capacity(config.deployments.len());
        for (i, d) in config.deployments.iter().enumerate() {
            if !models.iter().any(|m| m.id == d.model_name) {
                models.push(ModelInfo {
                    id: d.model_name.clone(),
                    owned_by: d.provider.name().to_string(),
                    created,
                });
            }
            let provider = Provider::new(d, client.clone(), config.log_raw_request_response);
            let mut dep = Deployment::new(d.clone(), provider, i);
            dep.price = prices.token_price(d);
            dep.metrics =
                Some(Arc::new([Door::Http, Door::Grpc].map(|door| {
                    metrics.for_deployment(door.as_str(), &d.model_name, &d.id)
                })));
            deployments.push(Arc::new(dep));
        }
        let router = Router::new(
            config.router.clone(),
            deployments,
            Arc::new(MemoryLimiter::new()),
            clock,
            metrics.clone(),
        );
        Ok(Gateway {
            inner: Arc::new(Inner {
                router,
                models,
                auth,
                spend: deps.spend,
                log_raw: config.log_raw_request_response,
                prices,
                metrics,
                require_auth_for_metrics: config.require_auth_for_metrics,
            }),
        })
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// The metrics in Prometheus' text format; behind the key only with
    /// `require_auth_for_metrics_endpoint: true`.
    pub fn metrics_text(&self, ctx: &RequestContext) -> Result<String, Error> {
        if self.inner.require_auth_for_metrics {
            self.authorize(ctx)?;
        }
        if let Some(w) = &self.inner.spend {
            self.inner.metrics.spend_pending.set(w.pending() as i64);
            self.inner.metrics.spend_dropped.set(w.dropped() as i64);
        }
        Ok(self.inner.metrics.encode())
    }

    /// How many model groups are served.
    pub fn model_count(&self) -> usize {
        self.inner.models.len()
    }

    /// Deployments cooling down now: (group, deployment id, time left).
    pub fn cooldowns(&self) -> Vec<(String, String, Duration)> {
        self.inner.router.cooldowns()
    }

    /// Each model group: (name, deployments, deployments cooling down now).
    pub fn group_health(&self) -> Vec<(String, usize, usize)> {
        self.inner.router.group_health()
    }

    /// Who the client is (the master key, a generated key, or anyone when no master key is
    /// configured). Doors call it first, so a bad key is a 401 before a bad body is a 400;
    /// they keep the answer in `ctx.principal` so it is not checked twice.
    pub fn authorize(&self, ctx: &RequestContext) -> Result<Principal, Error> {
        match &ctx.principal {
            Some(p) => Ok(p.clone()),
            None => self
                .inner
                .auth
                .authenticate(ctx.api_key.as_deref(), self.inner.router.clock().wall()),
        }
    }

    /// Admits a request of `principal` to `model`: the key's model list (403), budget (400
    /// `budget_exceeded`) and rate limits (429). Held for the request's life.
    fn admit(&self, principal: Principal, model: &str) -> Result<Admission, Error> {
        let Principal::Key(key) = &principal else {
            return Ok(Admission {
                principal,
                _reservation: None,
                _slot: None,
            });
        };
        let reservation = key.admit(model, self.inner.router.clock().wall())?;
        let limits = limiter::Limits {
            rpm: key.record.rpm_limit,
            tpm: key.record.tpm_limit,
            max_parallel: key
                .record
                .max_parallel_requests
                .map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
        };
        let now = self.inner.router.clock().now();
        let slot = self
            .inner
            .router
            .limiter()
            .admit(&key_subject(&key.record.token_hash), &limits, now)
            .map_err(|l| {
                Error::new(
                    ErrorKind::RateLimited,
                    format!(
                        "this key is over its {} limit; retry in {}s",
                        l.what,
                        l.retry_after.as_secs_f64().ceil()
                    ),
                )
                .with_code("key_rate_limited")
                .with_retry_after(Some(l.retry_after))
            })?;
        Ok(Admission {
            principal,
            _reservation: Some(reservation),
            _slot: Some(slot),
        })
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

    /// Checks the model group exists before anything is routed.
    fn require_group(&self, model: &str) -> Result<(), Error> {
        match self.inner.router.group(model) {
            Some(_) => Ok(()),
            None => Err(self.unknown_model(model)),
        }
    }

    fn served_by<T>(&self, r: &Routed<T>, started: Instant, cost: f64) -> ServedBy {
        ServedBy {
            cost_usd: cost,
            attempted_retries: r.attempted_retries,
            attempted_fallbacks: r.attempted_fallbacks,
            started,
            upstream: r.upstream,
            deployment: r.deployment.clone(),
        }
    }

    /// The whole-call timeout of an attempt on `d`.
    fn call_timeout(d: &Deployment, requested: Option<Duration>) -> Duration {
        requested.or(d.config.timeout).unwrap_or(DEFAULT_TIMEOUT)
    }

    /// Runs `fut` within `timeout` and the client's deadline. The attempt comes boxed by its
    /// caller, built in place there: the provider's call is the largest part of a request's
    /// future (~1.4 KB), which was copied three times on its way into the timeout, and inline
    /// it made every future above it that much larger, up to the door's, which is copied
    /// whole into its box on every request (`perf`: that copy alone was ~1 % of ai-api's CPU).
    fn bounded<T, F: Future<Output = Result<T, Error>>>(
        deadline: Option<Instant>,
        timeout: Duration,
        fut: Pin<Box<F>>,
    ) -> impl Future<Output = Result<T, Error>> {
        use futures_util::FutureExt;
        let own = Instant::now() + timeout;
        let (at, theirs) = match deadline {
            Some(d) if d < own => (d, true),
            _ => (own, false),
        };
        // Not an `async fn`: its state would hold `fut` twice (the argument, and the timeout
        // it is moved into).
        tokio::time::timeout_at(at, fut).map(move |r| match r {
            Ok(r) => r,
            // The client's deadline is not the provider's fault: nothing to retry.
            Err(_) if theirs => Err(Error::new(
                ErrorKind::Cancelled,
                "the client's deadline passed",
            )
            .with_code("deadline_exceeded")),
            Err(_) => Err(Error::timeout(format!(
                "the provider did not answer within {:.1}s",
                timeout.as_secs_f64()
            ))
            .with_code("timeout")),
        })
    }

    pub async fn chat(
        &self,
        ctx: &RequestContext,
        req: ChatRequest,
    ) -> Result<Served<ChatResponse>, Error> {
        let started = Instant::now();
        let mut record = RequestRecord::start(ctx, &req.model, started, self);
        let result = self.chat_inner(ctx, req, started, &mut record).await;
        match &result {
            Ok(s) => {
                record.response_body(&s.value);
                record.finish_ok(&s.by, s.value.usage.as_ref())
            }
            Err(e) => record.finish_err(e),
        }
        result
    }

    /// Auth first (401 before 400), then the gateway's own parameters, then the shape.
    fn open_call(
        &self,
        ctx: &RequestContext,
        extra: &mut BTreeMap<String, Value>,
    ) -> Result<(Principal, RouteOverrides), Error> {
        let principal = self.authorize(ctx)?;
        let overrides = take_overrides(extra)?;
        Ok((principal, overrides))
    }

    /// The model group exists and the caller may use it now; the admission stays with the
    /// request's record until it ends.
    fn admit_to(
        &self,
        principal: Principal,
        model: &str,
        record: &mut RequestRecord,
    ) -> Result<(), Error> {
        self.require_group(model)?;
        record.admit(self.admit(principal, model)?);
        Ok(())
    }

    async fn chat_inner(
        &self,
        ctx: &RequestContext,
        mut req: ChatRequest,
        started: Instant,
        record: &mut RequestRecord,
    ) -> Result<Served<ChatResponse>, Error> {
        let (principal, overrides) = self.open_call(ctx, &mut req.extra)?;
        let requested_timeout = overrides.timeout;
        req.validate()?;
        self.admit_to(principal, &req.model, record)?;
        record.request_body(&req);
        self.log_raw_request(ctx, &req);
        let req = &req;
        let routed = self
            .inner
            .router
            .route(&req.model, &overrides, ctx.deadline, move |d| async move {
                let timeout = Self::call_timeout(&d, requested_timeout);
                Self::bounded(ctx.deadline, timeout, Box::pin(d.provider.chat(req))).await
            })
            .await?;
        let mut by = self.served_by(&routed, started, 0.0);
        let mut resp = routed.value;
        if let Some(u) = resp.usage.as_mut() {
            u.cost_usd = routed.deployment.cost(u);
            by.cost_usd = u.cost_usd;
            self.inner
                .router
                .add_tokens(&routed.deployment, u64::from(u.total_tokens));
        }
        if self.inner.log_raw {
            tracing::info!(target: "ai_api::raw", request_id = %ctx.request_id, response = ?resp, "response");
        }
        Ok(Served { value: resp, by })
    }

    /// Starts a streamed chat. The first chunk is awaited inside the routed attempt, so a
    /// provider that fails before its first token is retried or falls back like any call;
    /// once the first byte has gone to the client, nothing is retried.
    pub async fn chat_stream(
        &self,
        ctx: &RequestContext,
        req: ChatRequest,
    ) -> Result<Served<ChatStream>, Error> {
        let started = Instant::now();
        let mut log = RequestRecord::start(ctx, &req.model, started, self);
        match self.chat_stream_inner(ctx, req, started, &mut log).await {
            Ok((by, routed, include_usage)) => {
                log.first_token(&by);
                let Routed {
                    value: (first, rest),
                    deployment,
                    lease,
                    ..
                } = routed;
                let stream = ChatStream {
                    first: Some(first),
                    rest,
                    deployment,
                    gateway: self.clone(),
                    include_usage,
                    sleep: None,
                    log: Some((log, by.clone())),
                    usage: None,
                    done: false,
                    _lease: lease,
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
        mut req: ChatRequest,
        started: Instant,
        record: &mut RequestRecord,
    ) -> Result<(ServedBy, Routed<(ChatChunk, ChunkStream)>, bool), Error> {
        let (principal, overrides) = self.open_call(ctx, &mut req.extra)?;
        let requested_timeout = overrides.timeout;
        req.validate()?;
        self.admit_to(principal, &req.model, record)?;
        record.request_body(&req);
        self.log_raw_request(ctx, &req);
        let include_usage = req.include_usage;
        let req = &req;
        let routed = self
            .inner
            .router
            .route(&req.model, &overrides, ctx.deadline, move |d| async move {
                let timeout = requested_timeout
                    .or(d.config.stream_timeout)
                    .or(d.config.timeout)
                    .unwrap_or(DEFAULT_TIMEOUT);
                Self::bounded(
                    ctx.deadline,
                    timeout,
                    Box::pin(async {
                        let mut s = d.provider.chat_stream(req).await?;
                        match s.next().await {
                            Some(Ok(first)) => Ok((first, s)),
                            Some(Err(e)) => Err(e),
                            None => Err(crate::providers::http::stream_cut()),
                        }
                    }),
                )
                .await
            })
            .await?;
        let by = self.served_by(&routed, started, 0.0);
        Ok((by, routed, include_usage))
    }

    pub async fn embed(
        &self,
        ctx: &RequestContext,
        mut req: EmbeddingRequest,
    ) -> Result<Served<EmbeddingResponse>, Error> {
        let started = Instant::now();
        let mut record = RequestRecord::start(ctx, &req.model, started, self);
        let result = async {
            let (principal, overrides) = self.open_call(ctx, &mut req.extra)?;
            let requested_timeout = overrides.timeout;
            req.validate()?;
            self.admit_to(principal, &req.model, &mut record)?;
            let req = &req;
            let routed = self
                .inner
                .router
                .route(&req.model, &overrides, ctx.deadline, move |d| async move {
                    let timeout = Self::call_timeout(&d, requested_timeout);
                    let resp =
                        Self::bounded(ctx.deadline, timeout, Box::pin(d.provider.embed(req)))
                            .await?;
                    if resp.data.len() != req.input.len() {
                        return Err(Error::bad_gateway(format!(
                            "the provider answered {} embeddings for {} inputs",
                            resp.data.len(),
                            req.input.len()
                        )));
                    }
                    Ok(resp)
                })
                .await?;
            let mut by = self.served_by(&routed, started, 0.0);
            let mut resp = routed.value;
            resp.usage.cost_usd = routed.deployment.cost(&resp.usage);
            by.cost_usd = resp.usage.cost_usd;
            self.inner
                .router
                .add_tokens(&routed.deployment, u64::from(resp.usage.total_tokens));
            Ok(Served { value: resp, by })
        }
        .await;
        match &result {
            Ok(s) => record.finish_ok(&s.by, Some(&s.value.usage)),
            Err(e) => record.finish_err(e),
        }
        result
    }

    pub async fn generate_image(
        &self,
        ctx: &RequestContext,
        mut req: ImageRequest,
    ) -> Result<Served<ImageResponse>, Error> {
        let started = Instant::now();
        let mut record = RequestRecord::start(ctx, &req.model, started, self);
        let result = async {
            let (principal, overrides) = self.open_call(ctx, &mut req.extra)?;
            let requested_timeout = overrides.timeout;
            req.validate()?;
            self.admit_to(principal, &req.model, &mut record)?;
            let req = &req;
            let routed = self
                .inner
                .router
                .route(&req.model, &overrides, ctx.deadline, move |d| async move {
                    let timeout = Self::call_timeout(&d, requested_timeout);
                    Self::bounded(
                        ctx.deadline,
                        timeout,
                        Box::pin(d.provider.generate_image(req)),
                    )
                    .await
                })
                .await?;
            let mut by = self.served_by(&routed, started, 0.0);
            let mut resp = routed.value;
            resp.usage.cost_usd =
                self.inner
                    .prices
                    .image_cost(&routed.deployment.config, req, resp.data.len());
            by.cost_usd = resp.usage.cost_usd;
            Ok(Served { value: resp, by })
        }
        .await;
        match &result {
            Ok(s) => record.finish_ok(&s.by, Some(&s.value.usage)),
            Err(e) => record.finish_err(e),
        }
        result
    }

    fn log_raw_request(&self, ctx: &RequestContext, req: &ChatRequest) {
        if self.inner.log_raw {
            tracing::info!(target: "ai_api::raw", request_id = %ctx.request_id, request = ?req, "request");
        }
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
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    log: Option<(RequestRecord, ServedBy)>,
    usage: Option<Usage>,
    done: bool,
    /// Holds the deployment's limiter slot and in-flight count for the stream's life.
    _lease: Lease,
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
            u.cost_usd = self.deployment.cost(u);
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
        if let Some(u) = &self.usage {
            self.gateway
                .inner
                .router
                .add_tokens(&self.deployment, u64::from(u.total_tokens));
        }
        if let Some((log, by)) = self.log.take() {
            match err {
                None => log.finish_ok(&by, self.usage.as_ref()),
                Some(e) => log.finish_err_at(e, Some(&by)),
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
                    let wait = this
                        .deployment
                        .config
                        .stream_timeout
                        .unwrap_or(DEFAULT_TIMEOUT);
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
    use super::{Deployment, ServedBy, cost_value, millis, new_request_id};
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::time::Instant;

    #[test]
    fn costs_are_written_as_rust_writes_floats() {
        let mut rng = fastrand::Rng::with_seed(7);
        let values = [
            0.0,
            1.0,
            4.95e-6,
            1e-7,
            123.456,
            0.1 + 0.2,
            1e-300,
            f64::MAX,
        ]
        .into_iter()
        .chain((0..2_000).map(|_| f64::from_bits(rng.u64(..)).abs()));
        for v in values {
            let Some(got) = cost_value(v) else {
                assert!(v.is_nan(), "{v:e} has a value");
                continue;
            };
            assert_eq!(got, format!("{v}").as_str(), "{v:e}");
            assert!(got.is_sensitive());
        }
    }

    #[test]
    fn new_request_ids_are_uuid_v7_in_time_order() {
        let a = new_request_id();
        std::thread::sleep(Duration::from_millis(2));
        let b = new_request_id();
        assert_eq!((a.get_version_num(), b.get_version_num()), (7, 7));
        assert!(a.to_string() < b.to_string(), "{a} then {b}");
    }

    fn served_by(api_base: &str, retries: u32, fallbacks: u32) -> ServedBy {
        let yaml = format!(
            "model_list:\n  - model_name: m\n    litellm_params: {{model: openai/x, api_key: k, api_base: \"{api_base}\"}}\n"
        );
        let config = crate::config::load_str(&yaml, "t", &|_| None)
            .unwrap()
            .config
            .deployments[0]
            .clone();
        let provider =
            crate::providers::Provider::Mock(crate::providers::mock::MockProvider::for_tests());
        ServedBy {
            cost_usd: 0.0,
            attempted_retries: retries,
            attempted_fallbacks: fallbacks,
            started: Instant::now() - Duration::from_millis(12),
            upstream: Duration::from_millis(10),
            deployment: Arc::new(Deployment::new(config, provider, 0)),
        }
    }

    #[test]
    fn answer_headers_carry_this_answers_values_under_their_names() {
        let by = served_by("http://up.example/v1", 2, 1);
        let h = by.headers(Some(0.25));
        assert_eq!(h.len(), 8, "{h:?}");
        assert_eq!(h["x-litellm-model-group"], "m");
        assert_eq!(h["x-litellm-model-api-base"], "http://up.example/v1");
        assert_eq!(h["x-litellm-attempted-retries"], "2");
        assert_eq!(h["x-litellm-attempted-fallbacks"], "1");
        assert_eq!(h["x-litellm-response-cost"], "0.25");
        let ms = |name: &str| h[name].to_str().unwrap().parse::<f64>().unwrap();
        let duration = ms("x-litellm-response-duration-ms");
        assert!(duration >= 12.0, "{h:?}");
        // The overhead is the duration less the 10 ms spent upstream.
        let upstream = duration - ms("x-litellm-overhead-duration-ms");
        assert!((upstream - 10.0).abs() < 0.5, "{h:?}");
        assert!(h["x-litellm-response-duration-ms"].is_sensitive());

        // Without a cost (streams): no cost header; the rest as before, placeholders
        // replaced; a second answer does not see the first one's values.
        let h = served_by("http://up.example/v1", 0, 0).headers(None);
        assert_eq!(h.len(), 7, "{h:?}");
        assert!(h.get("x-litellm-response-cost").is_none());
        assert_eq!(h["x-litellm-attempted-retries"], "0");
        assert_eq!(h["x-litellm-attempted-fallbacks"], "0");
        assert_ne!(h["x-litellm-response-duration-ms"], "0");
        assert_eq!(by.headers(None)["x-litellm-attempted-retries"], "2");

        // An identity value that cannot be a header is left out; the rest keep their places.
        let h = served_by("http://up.example/\\u0001", 3, 0).headers(Some(1.5));
        assert!(h.get("x-litellm-model-api-base").is_none(), "{h:?}");
        assert_eq!(h["x-litellm-attempted-retries"], "3");
        assert_eq!(h["x-litellm-response-cost"], "1.5");
    }

    #[test]
    fn durations_read_as_milliseconds_with_three_decimals() {
        assert_eq!(millis(Duration::from_micros(0)), "0.000");
        assert_eq!(millis(Duration::from_micros(7)), "0.007");
        assert_eq!(millis(Duration::from_micros(80)), "0.080");
        assert_eq!(millis(Duration::from_micros(1_393)), "1.393");
        assert_eq!(millis(Duration::from_micros(12_045_100)), "12045.100");
        assert_eq!(millis(Duration::from_nanos(999_999)), "0.999");
    }
}
