//! Prometheus metrics (the `prometheus-client` crate, OpenMetrics text): requests by door,
//! model group, deployment and status; latency, time to first token and the gateway's own
//! overhead; tokens and cost; retries, fallbacks, cooldowns, rate-limited requests; requests
//! in flight and open streams. Label values are bounded: model groups and deployments come from
//! the config, statuses are HTTP codes, key aliases are the admin's names — never request ids
//! or raw keys.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub door: &'static str,
    pub model_group: String,
    pub deployment: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupLabels {
    pub door: &'static str,
    pub model_group: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub model_group: String,
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CostLabels {
    pub model_group: String,
    pub key_alias: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeploymentLabels {
    pub model_group: String,
    pub deployment: String,
}

fn latency_histogram() -> Histogram {
    // 1 ms .. ~65 s
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

fn overhead_histogram() -> Histogram {
    // 10 µs .. ~80 ms
    Histogram::new(exponential_buckets(0.000_01, 2.0, 14))
}

/// One deployment's handles for one door, resolved once so the hot path increments them
/// without building labels or looking them up.
#[derive(Debug, Clone)]
pub struct DoorMetrics {
    pub requests_ok: Counter,
    pub latency: Histogram,
    pub time_to_first_token: Histogram,
    pub overhead: Histogram,
    pub tokens_in: Counter,
    pub tokens_out: Counter,
    pub cost_master: Counter<f64, AtomicU64>,
    pub retries: Counter,
    pub fallbacks: Counter,
}

/// Every metric of the gateway.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub latency: Family<GroupLabels, Histogram>,
    pub time_to_first_token: Family<GroupLabels, Histogram>,
    pub overhead: Family<GroupLabels, Histogram>,
    pub tokens: Family<TokenLabels, Counter>,
    pub cost: Family<CostLabels, Counter<f64, AtomicU64>>,
    pub retries: Family<GroupLabels, Counter>,
    pub fallbacks: Family<GroupLabels, Counter>,
    pub cooldowns: Family<DeploymentLabels, Counter>,
    pub rate_limited: Family<GroupLabels, Counter>,
    pub in_flight: Gauge,
    pub open_streams: Gauge,
    pub spend_pending: Gauge,
    pub spend_dropped: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ai_api");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<GroupLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let time_to_first_token = Family::<GroupLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let overhead = Family::<GroupLabels, Histogram>::new_with_constructor(
            overhead_histogram as fn() -> Histogram,
        );
        let tokens = Family::<TokenLabels, Counter>::default();
        let cost = Family::<CostLabels, Counter<f64, AtomicU64>>::default();
        let retries = Family::<GroupLabels, Counter>::default();
        let fallbacks = Family::<GroupLabels, Counter>::default();
        let cooldowns = Family::<DeploymentLabels, Counter>::default();
        let rate_limited = Family::<GroupLabels, Counter>::default();
        let in_flight = Gauge::default();
        let open_streams = Gauge::default();
        let spend_pending = Gauge::default();
        let spend_dropped = Gauge::default();
        registry.register(
            "requests",
            "Requests answered, by door, model group, deployment and HTTP status",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Whole request latency",
            latency.clone(),
        );
        registry.register(
            "time_to_first_token_seconds",
            "Streams: time until the first chunk",
            time_to_first_token.clone(),
        );
        registry.register(
            "overhead_seconds",
            "The gateway's own time per request (all but the providers')",
            overhead.clone(),
        );
        registry.register(
            "tokens",
            "Tokens in (prompt) and out (completion)",
            tokens.clone(),
        );
        registry.register(
            "spend_usd",
            "Cost in USD by model group and key alias",
            cost.clone(),
        );
        registry.register("retries", "Retried upstream attempts", retries.clone());
        registry.register(
            "fallbacks",
            "Requests answered by a fallback group",
            fallbacks.clone(),
        );
        registry.register(
            "cooldowns",
            "Times a deployment entered cooldown",
            cooldowns.clone(),
        );
        registry.register(
            "rate_limited",
            "Requests refused by a rate limit",
            rate_limited.clone(),
        );
        registry.register(
            "in_flight_requests",
            "Requests being served",
            in_flight.clone(),
        );
        registry.register(
            "open_streams",
            "Streams open to clients",
            open_streams.clone(),
        );
        registry.register(
            "spend_records_pending",
            "Spend records waiting to be written",
            spend_pending.clone(),
        );
        registry.register(
            "spend_records_dropped",
            "Spend records dropped because the buffer was full",
            spend_dropped.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            time_to_first_token,
            overhead,
            tokens,
            cost,
            retries,
            fallbacks,
            cooldowns,
            rate_limited,
            in_flight,
            open_streams,
            spend_pending,
            spend_dropped,
        }
    }

    /// The handles of `deployment` (of `model_group`) for `door`. Each handle is taken in its
    /// own statement: a family's read guard must be dropped before the next lookup, which may
    /// need that family's write lock.
    pub fn for_deployment(
        &self,
        door: &'static str,
        model_group: &str,
        deployment: &str,
    ) -> DoorMetrics {
        let group = GroupLabels {
            door,
            model_group: model_group.to_string(),
        };
        let tokens = |direction| TokenLabels {
            model_group: model_group.to_string(),
            direction,
        };
        let requests_ok = self
            .requests
            .get_or_create(&RequestLabels {
                door,
                model_group: model_group.to_string(),
                deployment: deployment.to_string(),
                status: 200,
            })
            .clone();
        let latency = self.latency.get_or_create(&group).clone();
        let time_to_first_token = self.time_to_first_token.get_or_create(&group).clone();
        let overhead = self.overhead.get_or_create(&group).clone();
        let tokens_in = self.tokens.get_or_create(&tokens("in")).clone();
        let tokens_out = self.tokens.get_or_create(&tokens("out")).clone();
        let cost_master = self
            .cost
            .get_or_create(&CostLabels {
                model_group: model_group.to_string(),
                key_alias: "master".into(),
            })
            .clone();
        let retries = self.retries.get_or_create(&group).clone();
        let fallbacks = self.fallbacks.get_or_create(&group).clone();
        DoorMetrics {
            requests_ok,
            latency,
            time_to_first_token,
            overhead,
            tokens_in,
            tokens_out,
            cost_master,
            retries,
            fallbacks,
        }
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
