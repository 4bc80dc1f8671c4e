//! The router: which deployment serves a request, and what happens when it fails.
//!
//! Several deployments under one `model_name` are one group. A request goes to a deployment of
//! its group chosen by the routing strategy among those not cooling down and under their
//! rpm/tpm/parallel limits; a retryable failure (connect error, timeout, 408/409/429/5xx/529) is
//! retried (`num_retries`, exponential backoff with jitter, never sooner than `retry_after` or
//! the provider's `retry-after`), preferring another deployment; a group that is exhausted falls
//! back to the groups its fallbacks name (context-window errors to `context_window_fallbacks`,
//! content-policy errors to `content_policy_fallbacks`). A deployment failing more than
//! `allowed_fails` times in a minute cools down for `cooldown_time` — unless it is the last one
//! of a group with no fallback. Time comes from a [`Clock`], so tests control it.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use tokio::time::Instant;

use super::cost::TokenPrice;
use super::error::{Error, ErrorKind};
use super::limiter::{Limited, Limits, RateLimiter, Slot};
use crate::config::{DeploymentConfig, RouterSettings, RoutingStrategy};
use crate::metrics::{DeploymentLabels, DoorMetrics, Metrics};
use crate::providers::Provider;

/// The router's source of "now" for cooldowns and limits.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Monotonic time, for cooldowns and rate windows.
    fn now(&self) -> Instant;
    /// Wall-clock time, for budget windows and key expiry.
    fn wall(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// Real time.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock a test moves by hand (both its monotonic and its wall time).
#[derive(Debug)]
pub struct ManualClock {
    base: Instant,
    wall_base: SystemTime,
    offset: Mutex<Duration>,
}

impl Default for ManualClock {
    fn default() -> Self {
        ManualClock {
            base: Instant::now(),
            wall_base: SystemTime::now(),
            offset: Mutex::new(Duration::ZERO),
        }
    }
}

impl ManualClock {
    pub fn advance(&self, by: Duration) {
        *self.offset.lock() += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.base + *self.offset.lock()
    }

    fn wall(&self) -> SystemTime {
        self.wall_base + *self.offset.lock()
    }
}

/// A deployment's recent failures and cooldown.
#[derive(Debug, Default)]
struct Health {
    failures: VecDeque<Instant>,
    cooldown_until: Option<Instant>,
}

/// A deployment ready to serve, with its live state.
#[derive(Debug)]
pub struct Deployment {
    pub config: DeploymentConfig,
    pub(crate) provider: Provider,
    pub(crate) index: usize,
    /// Token prices, resolved once at startup (`None`: free or unknown).
    pub price: Option<TokenPrice>,
    /// Metric handles of this deployment, per door (labels resolved once, not per request).
    pub(crate) metrics: Option<Arc<[DoorMetrics; 2]>>,
    /// The `x-litellm-*` headers of its answers, built once.
    pub(crate) headers: super::ResponseHeaders,
    /// Its names as every spend record carries them (shared, not copied per request).
    pub(crate) spend_names: SpendNames,
    in_flight: Arc<AtomicU32>,
    health: Mutex<Health>,
    /// Set with a cooldown and cleared under `health`'s lock once it has passed: every request
    /// reads it, and reading a flag that does not change costs nothing, where locking
    /// `health` moved that lock between the cores on every request.
    cooling: AtomicBool,
    /// Exponentially weighted latency of successful calls, in milliseconds.
    latency_ms: Mutex<Option<f64>>,
}

/// A deployment's model group, id and provider model, for spend records.
#[derive(Debug)]
pub(crate) struct SpendNames {
    pub(crate) model_group: Arc<str>,
    pub(crate) deployment_id: Arc<str>,
    pub(crate) provider_model: Arc<str>,
}

impl Deployment {
    pub fn new(config: DeploymentConfig, provider: Provider, index: usize) -> Self {
        let headers = super::ResponseHeaders::new(&[
            ("x-litellm-model-group", Some(config.model_name.as_str())),
            ("x-litellm-model-id", Some(config.id.as_str())),
            ("x-litellm-model-api-base", config.api_base.as_deref()),
        ]);
        let spend_names = SpendNames {
            model_group: config.model_name.as_str().into(),
            deployment_id: config.id.as_str().into(),
            provider_model: config.upstream_model.as_str().into(),
        };
        Deployment {
            headers,
            spend_names,
            config,
            provider,
            index,
            price: None,
            metrics: None,
            in_flight: Arc::new(AtomicU32::new(0)),
            health: Mutex::new(Health::default()),
            cooling: AtomicBool::new(false),
            latency_ms: Mutex::new(None),
        }
    }

    fn limits(&self) -> Limits {
        Limits {
            rpm: self.config.rpm,
            tpm: self.config.tpm,
            max_parallel: self.config.max_parallel_requests,
        }
    }

    /// The time its cooldown ends, if it is cooling down at `now`.
    pub fn cooling_until(&self, now: Instant) -> Option<Instant> {
        if !self.cooling.load(Ordering::Acquire) {
            return None;
        }
        let h = self.health.lock();
        let until = h.cooldown_until.filter(|u| *u > now);
        if until.is_none() {
            self.cooling.store(false, Ordering::Release);
        }
        until
    }

    /// USD for `usage` on this deployment.
    pub fn cost(&self, usage: &super::types::Usage) -> f64 {
        self.price.map_or(0.0, |p| p.cost(usage))
    }

    /// The metric handles for requests through `door`.
    pub(crate) fn door_metrics(&self, door: super::Door) -> Option<&DoorMetrics> {
        let m = self.metrics.as_ref()?;
        Some(match door {
            super::Door::Http => &m[0],
            super::Door::Grpc => &m[1],
        })
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }

    fn record_latency(&self, d: Duration) {
        let ms = d.as_secs_f64() * 1000.0;
        let mut l = self.latency_ms.lock();
        *l = Some(match *l {
            None => ms,
            Some(prev) => prev * 0.7 + ms * 0.3,
        });
    }

    /// Counts a failure; returns true if the deployment now cools down.
    fn record_failure(&self, now: Instant, s: &RouterSettings, may_cool: bool) -> bool {
        let mut h = self.health.lock();
        h.failures.push_back(now);
        while h
            .failures
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= Duration::from_secs(60))
        {
            h.failures.pop_front();
        }
        if h.failures.len() as u32 > s.allowed_fails && may_cool {
            h.cooldown_until = Some(now + s.cooldown_time);
            self.cooling.store(true, Ordering::Release);
            h.failures.clear();
            return true;
        }
        false
    }
}

/// What a request holds while a deployment works on it: its limiter slot and its place in the
/// deployment's in-flight count. Dropping it releases both.
#[derive(Debug)]
pub struct Lease {
    _slot: Slot,
    in_flight: Arc<AtomicU32>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Debug)]
pub struct Group {
    pub name: String,
    pub deployments: Vec<Arc<Deployment>>,
}

/// Per-request routing overrides LiteLLM accepts in the body (`fallbacks`, `num_retries`,
/// `timeout`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteOverrides {
    pub fallbacks: Option<Vec<String>>,
    pub num_retries: Option<u32>,
    pub timeout: Option<Duration>,
}

/// What a routed call produced.
#[derive(Debug)]
pub struct Routed<T> {
    pub value: T,
    pub group: String,
    pub deployment: Arc<Deployment>,
    pub lease: Lease,
    pub attempted_retries: u32,
    pub attempted_fallbacks: u32,
    /// Time spent waiting on providers (the rest is the gateway's own).
    pub upstream: Duration,
}

/// Why no deployment could be picked.
enum NoPick {
    Cooling,
    Limited(Limited),
}

/// Retryable-or-not is the error's business; these decide fallbacks and cooldowns.
fn counts_against_deployment(e: &Error) -> bool {
    e.kind.is_retryable()
        || matches!(
            e.kind,
            ErrorKind::Config | ErrorKind::Upstream(401 | 403 | 404)
        )
}

/// A provider error that says the prompt is too long for the model.
pub fn is_context_window_error(e: &Error) -> bool {
    let code = e.code.as_deref().unwrap_or_default();
    let m = e.message.to_ascii_lowercase();
    code == "context_length_exceeded"
        || m.contains("maximum context length")
        || m.contains("context window")
        || m.contains("prompt is too long")
        || m.contains("input is too long")
        || m.contains("exceeds the maximum number of tokens")
        || m.contains("too many tokens")
}

/// A provider error that says the content was refused by a safety policy.
pub fn is_content_policy_error(e: &Error) -> bool {
    let code = e.code.as_deref().unwrap_or_default();
    let m = e.message.to_ascii_lowercase();
    code == "content_policy_violation"
        || code == "content_filter"
        || m.contains("content management policy")
        || m.contains("content policy")
        || m.contains("safety system")
}

/// The router over all groups.
#[derive(Debug)]
pub struct Router {
    pub settings: RouterSettings,
    groups: HashMap<String, Group>,
    limiter: Arc<dyn RateLimiter>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
}

impl Router {
    pub fn new(
        settings: RouterSettings,
        deployments: Vec<Arc<Deployment>>,
        limiter: Arc<dyn RateLimiter>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let mut groups: HashMap<String, Group> = HashMap::new();
        for d in deployments {
            groups
                .entry(d.config.model_name.clone())
                .or_insert_with(|| Group {
                    name: d.config.model_name.clone(),
                    deployments: Vec::new(),
                })
                .deployments
                .push(d);
        }
        Router {
            settings,
            groups,
            limiter,
            clock,
            metrics,
        }
    }

    pub fn group(&self, name: &str) -> Option<&Group> {
        self.groups.get(name)
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    pub fn limiter(&self) -> &Arc<dyn RateLimiter> {
        &self.limiter
    }

    /// Every deployment with the end of its cooldown, if cooling now.
    pub fn cooldowns(&self) -> Vec<(String, String, Duration)> {
        let now = self.clock.now();
        let mut out: Vec<_> = self
            .groups
            .values()
            .flat_map(|g| g.deployments.iter())
            .filter_map(|d| {
                d.cooling_until(now).map(|u| {
                    (
                        d.config.model_name.clone(),
                        d.config.id.clone(),
                        u.saturating_duration_since(now),
                    )
                })
            })
            .collect();
        out.sort();
        out
    }

    /// Each group with how many deployments it has and how many are cooling down now.
    pub fn group_health(&self) -> Vec<(String, usize, usize)> {
        let now = self.clock.now();
        let mut out: Vec<_> = self
            .groups
            .values()
            .map(|g| {
                let cooling = g
                    .deployments
                    .iter()
                    .filter(|d| d.cooling_until(now).is_some())
                    .count();
                (g.name.clone(), g.deployments.len(), cooling)
            })
            .collect();
        out.sort();
        out
    }

    fn has_fallback(&self, group: &str) -> bool {
        self.settings
            .fallbacks
            .get(group)
            .is_some_and(|f| !f.is_empty())
            || !self.settings.default_fallbacks.is_empty()
    }

    /// Counts tokens against a deployment's tpm (once the usage is known).
    pub fn add_tokens(&self, d: &Deployment, tokens: u64) {
        self.limiter
            .add_tokens(&d.config.id, tokens, self.clock.now());
    }

    /// Picks a deployment of `group` and admits the request on it. Deployments in `avoid`
    /// (failed earlier in this request) are taken only when nothing else is left.
    fn pick(&self, group: &Group, avoid: &[usize]) -> Result<(Arc<Deployment>, Lease), NoPick> {
        let now = self.clock.now();
        // Most groups have one deployment: no lists to build for it.
        if let [d] = group.deployments.as_slice() {
            if d.cooling_until(now).is_some() {
                return Err(NoPick::Cooling);
            }
            return self.lease(d, now).map_err(NoPick::Limited);
        }
        let healthy: Vec<&Arc<Deployment>> = group
            .deployments
            .iter()
            .filter(|d| d.cooling_until(now).is_none())
            .collect();
        if healthy.is_empty() {
            return Err(NoPick::Cooling);
        }
        let fresh: Vec<&Arc<Deployment>> = healthy
            .iter()
            .copied()
            .filter(|d| !avoid.contains(&d.index))
            .collect();
        let mut candidates = if fresh.is_empty() { healthy } else { fresh };
        let mut soonest: Option<Limited> = None;
        while !candidates.is_empty() {
            let i = self.choose(&candidates, now);
            let d = candidates.swap_remove(i);
            match self.lease(d, now) {
                Ok(picked) => return Ok(picked),
                Err(l) => {
                    if soonest.is_none_or(|s| l.retry_after < s.retry_after) {
                        soonest = Some(l);
                    }
                }
            }
        }
        Err(soonest.map_or(NoPick::Cooling, NoPick::Limited))
    }

    /// Admits the request on `d` (its rpm, tpm and parallel limits) and counts it in flight.
    fn lease(
        &self,
        d: &Arc<Deployment>,
        now: Instant,
    ) -> Result<(Arc<Deployment>, Lease), Limited> {
        let slot = self.limiter.admit(&d.config.id, &d.limits(), now)?;
        d.in_flight.fetch_add(1, Ordering::AcqRel);
        let lease = Lease {
            _slot: slot,
            in_flight: d.in_flight.clone(),
        };
        Ok((d.clone(), lease))
    }

    /// The index in `candidates` the strategy picks.
    fn choose(&self, candidates: &[&Arc<Deployment>], now: Instant) -> usize {
        if candidates.len() <= 1 {
            return 0;
        }
        match self.settings.strategy {
            RoutingStrategy::SimpleShuffle => {
                let weights: Vec<f64> = candidates.iter().map(|d| weight(&d.config)).collect();
                weighted_pick(&weights, fastrand::f64())
            }
            RoutingStrategy::LeastBusy => {
                min_index(candidates, |d| (d.in_flight() as f64, fastrand::f64()))
            }
            RoutingStrategy::LatencyBased => min_index(candidates, |d| {
                // Untried deployments first, so every one gets measured.
                (d.latency_ms.lock().unwrap_or(-1.0), fastrand::f64())
            }),
            RoutingStrategy::UsageBased => min_index(candidates, |d| {
                (
                    self.limiter.tokens_last_minute(&d.config.id, now) as f64,
                    fastrand::f64(),
                )
            }),
        }
    }

    /// The fallback groups for a request to `group` that failed with `e`.
    fn fallbacks_for(&self, group: &str, e: &Error, overrides: &RouteOverrides) -> Vec<String> {
        if is_context_window_error(e) {
            return self
                .settings
                .context_window_fallbacks
                .get(group)
                .cloned()
                .unwrap_or_default();
        }
        if is_content_policy_error(e) {
            return self
                .settings
                .content_policy_fallbacks
                .get(group)
                .cloned()
                .unwrap_or_default();
        }
        let falls_back = counts_against_deployment(e)
            || matches!(e.kind, ErrorKind::RateLimited | ErrorKind::Unavailable);
        if !falls_back {
            return Vec::new();
        }
        if let Some(f) = &overrides.fallbacks {
            return f.clone();
        }
        match self.settings.fallbacks.get(group) {
            Some(f) if !f.is_empty() => f.clone(),
            _ => self
                .settings
                .default_fallbacks
                .iter()
                .filter(|g| g.as_str() != group)
                .cloned()
                .collect(),
        }
    }

    /// Runs `call` on deployments of `model`'s group, with retries and fallbacks.
    /// `deadline` bounds the waits between retries.
    pub async fn route<T, F, Fut>(
        &self,
        model: &str,
        overrides: &RouteOverrides,
        deadline: Option<Instant>,
        mut call: F,
    ) -> Result<Routed<T>, Error>
    where
        F: FnMut(Arc<Deployment>) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let mut upstream = Duration::ZERO;
        let mut retries = 0;
        let first = self
            .try_group(
                model,
                overrides,
                deadline,
                &mut call,
                &mut upstream,
                &mut retries,
            )
            .await;
        let err = match first {
            Ok((value, deployment, lease)) => {
                return Ok(Routed {
                    value,
                    group: model.to_string(),
                    deployment,
                    lease,
                    attempted_retries: retries,
                    attempted_fallbacks: 0,
                    upstream,
                });
            }
            Err(e) => e,
        };
        let chain = self.fallbacks_for(model, &err, overrides);
        let mut last = err;
        let mut fallbacks = 0;
        for group in chain {
            if !self.groups.contains_key(&group) {
                continue;
            }
            fallbacks += 1;
            tracing::info!(from = %model, to = %group, error = %last.message, "falling back");
            match self
                .try_group(
                    &group,
                    overrides,
                    deadline,
                    &mut call,
                    &mut upstream,
                    &mut retries,
                )
                .await
            {
                Ok((value, deployment, lease)) => {
                    return Ok(Routed {
                        value,
                        group,
                        deployment,
                        lease,
                        attempted_retries: retries,
                        attempted_fallbacks: fallbacks,
                        upstream,
                    });
                }
                Err(e) => {
                    // A client error from a fallback ends the chain; keep the most telling one.
                    let stop = !counts_against_deployment(&e)
                        && !matches!(e.kind, ErrorKind::RateLimited | ErrorKind::Unavailable);
                    last = e;
                    if stop {
                        break;
                    }
                }
            }
        }
        Err(last)
    }

    async fn try_group<T, F, Fut>(
        &self,
        name: &str,
        overrides: &RouteOverrides,
        deadline: Option<Instant>,
        call: &mut F,
        upstream: &mut Duration,
        retries: &mut u32,
    ) -> Result<(T, Arc<Deployment>, Lease), Error>
    where
        F: FnMut(Arc<Deployment>) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let group = self.groups.get(name).ok_or_else(|| {
            Error::not_found(format!("model {name:?} does not exist"))
                .with_param("model")
                .with_code("model_not_found")
        })?;
        let max_retries = overrides
            .num_retries
            .or_else(|| group.deployments.iter().find_map(|d| d.config.max_retries))
            .unwrap_or(self.settings.num_retries);
        let mut avoid: Vec<usize> = Vec::new();
        let mut attempt = 0u32;
        loop {
            let (d, lease) = match self.pick(group, &avoid) {
                Ok(p) => p,
                Err(NoPick::Cooling) => {
                    return Err(Error::new(
                        ErrorKind::Unavailable,
                        format!(
                            "no healthy deployment for model {name:?}: every deployment is cooling down after failures"
                        ),
                    )
                    .with_code("no_healthy_deployment"));
                }
                Err(NoPick::Limited(l)) => {
                    return Err(Error::new(
                        ErrorKind::RateLimited,
                        format!(
                            "every deployment of model {name:?} is at its {} limit; retry in {}s",
                            l.what,
                            l.retry_after.as_secs_f64().ceil()
                        ),
                    )
                    .with_code("rate_limited")
                    .with_retry_after(Some(l.retry_after)));
                }
            };
            let started = Instant::now();
            let result = call(d.clone()).await;
            let took = started.elapsed();
            *upstream += took;
            match result {
                Ok(v) => {
                    // Only latency-based routing reads it (and the lock is shared by the cores).
                    if self.settings.strategy == RoutingStrategy::LatencyBased {
                        d.record_latency(took);
                    }
                    return Ok((v, d, lease));
                }
                Err(e) => {
                    drop(lease);
                    if counts_against_deployment(&e) {
                        let now = self.clock.now();
                        let others_healthy = group
                            .deployments
                            .iter()
                            .any(|o| o.index != d.index && o.cooling_until(now).is_none());
                        let may_cool = others_healthy || self.has_fallback(name);
                        if d.record_failure(now, &self.settings, may_cool) {
                            self.metrics
                                .cooldowns
                                .get_or_create(&DeploymentLabels {
                                    model_group: name.to_string(),
                                    deployment: d.config.id.clone(),
                                })
                                .inc();
                            tracing::warn!(
                                deployment = %d.config.id,
                                cooldown_s = self.settings.cooldown_time.as_secs_f64(),
                                error = %e.message,
                                "deployment cooling down"
                            );
                        }
                    }
                    if !e.kind.is_retryable() || attempt >= max_retries {
                        return Err(e);
                    }
                    let wait = self.backoff(attempt, e.retry_after);
                    if deadline.is_some_and(|dl| Instant::now() + wait >= dl) {
                        return Err(e);
                    }
                    attempt += 1;
                    *retries += 1;
                    avoid.push(d.index);
                    tracing::info!(
                        deployment = %d.config.id,
                        attempt,
                        wait_ms = wait.as_millis() as u64,
                        error = %e.message,
                        "retrying"
                    );
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// Exponential backoff with jitter (0.25 s doubling, at most 8 s), never below the
    /// configured `retry_after` nor the provider's `retry-after` (capped at 60 s).
    fn backoff(&self, attempt: u32, provider: Option<Duration>) -> Duration {
        let exp = Duration::from_millis(250)
            .saturating_mul(1 << attempt.min(5))
            .min(Duration::from_secs(8));
        let jittered = exp.mul_f64(0.5 + fastrand::f64() * 0.5);
        let floor = provider
            .map(|p| p.min(Duration::from_secs(60)))
            .unwrap_or(Duration::ZERO)
            .max(self.settings.retry_after);
        jittered.max(floor)
    }
}

/// A deployment's share in simple-shuffle: `weight`, else `rpm`, else `tpm`, else 1.
fn weight(d: &DeploymentConfig) -> f64 {
    d.weight
        .or(d.rpm.map(|r| r as f64))
        .or(d.tpm.map(|t| t as f64))
        .unwrap_or(1.0)
}

/// The index a uniform `r` in [0, 1) lands on, in proportion to `weights`.
fn weighted_pick(weights: &[f64], r: f64) -> usize {
    let total: f64 = weights.iter().sum();
    if total <= 0.0 {
        return ((r * weights.len() as f64) as usize).min(weights.len().saturating_sub(1));
    }
    let mut x = r * total;
    for (i, w) in weights.iter().enumerate() {
        if x < *w {
            return i;
        }
        x -= w;
    }
    weights.len().saturating_sub(1)
}

fn min_index<K: PartialOrd>(items: &[&Arc<Deployment>], key: impl Fn(&Deployment) -> K) -> usize {
    let mut best = 0;
    let mut best_key: Option<K> = None;
    for (i, d) in items.iter().enumerate() {
        let k = key(d);
        if best_key.as_ref().is_none_or(|b| k < *b) {
            best = i;
            best_key = Some(k);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_shuffle_follows_the_weights_within_two_percent() {
        fastrand::seed(7);
        let weights = [1.0, 3.0, 6.0];
        let mut counts = [0usize; 3];
        for _ in 0..10_000 {
            counts[weighted_pick(&weights, fastrand::f64())] += 1;
        }
        for (c, w) in counts.iter().zip(weights) {
            let share = *c as f64 / 10_000.0;
            assert!((share - w / 10.0).abs() < 0.02, "{counts:?}");
        }
    }

    #[test]
    fn failures_over_allowed_fails_within_a_minute_cool_a_deployment() {
        let s = RouterSettings {
            allowed_fails: 1,
            cooldown_time: Duration::from_secs(30),
            ..RouterSettings::default()
        };
        let d = Deployment::new(
            crate::config::load_str(
                "model_list:\n  - model_name: m\n    litellm_params: {model: openai/x, api_key: k}\n",
                "t",
                &|_| None,
            )
            .unwrap()
            .config
            .deployments[0]
                .clone(),
            crate::providers::Provider::Mock(crate::providers::mock::MockProvider::for_tests()),
            0,
        );
        let t0 = Instant::now();
        assert!(!d.record_failure(t0, &s, true));
        // A failure more than a minute later starts a new count.
        assert!(!d.record_failure(t0 + Duration::from_secs(61), &s, true));
        assert!(d.record_failure(t0 + Duration::from_secs(62), &s, true));
        assert!(d.cooling_until(t0 + Duration::from_secs(70)).is_some());
        assert!(d.cooling_until(t0 + Duration::from_secs(93)).is_none());
        // The last deployment without a fallback never cools.
        assert!(!d.record_failure(t0 + Duration::from_secs(100), &s, false));
        assert!(!d.record_failure(t0 + Duration::from_secs(101), &s, false));
    }

    #[test]
    fn context_window_and_content_policy_errors_are_recognised() {
        let e = Error::new(
            ErrorKind::Upstream(400),
            "This model's maximum context length is 8192 tokens",
        );
        assert!(is_context_window_error(&e));
        let e = Error::new(
            ErrorKind::Upstream(400),
            "prompt is too long: 250000 tokens > 200000 maximum",
        );
        assert!(is_context_window_error(&e));
        let e = Error::new(ErrorKind::Upstream(400), "x").with_code("content_policy_violation");
        assert!(is_content_policy_error(&e));
        assert!(!is_context_window_error(&Error::bad_request("temperature")));
    }
}
