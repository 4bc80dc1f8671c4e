//! The one record of each request, written when it ends (for streams: when the stream ends or
//! the client goes away): the structured log line and the metrics. Both doors get it from the
//! core, so they can never count differently.

use std::sync::Arc;

use tokio::time::Instant;

use super::error::{Error, ErrorKind};
use super::types::Usage;
use super::{Door, RequestContext, ServedBy};
use crate::metrics::{CostLabels, GroupLabels, Metrics, RequestLabels, TokenLabels};

#[derive(Debug)]
pub(crate) struct RequestRecord {
    request_id: String,
    door: Door,
    model: String,
    started: Instant,
    metrics: Arc<Metrics>,
    stream: bool,
}

impl RequestRecord {
    pub(crate) fn start(
        ctx: &RequestContext,
        model: &str,
        started: Instant,
        metrics: &Arc<Metrics>,
    ) -> Self {
        metrics.in_flight.inc();
        RequestRecord {
            request_id: ctx.request_id.clone(),
            door: ctx.door,
            model: model.to_string(),
            started,
            metrics: metrics.clone(),
            stream: false,
        }
    }

    fn group(&self, group: &str) -> GroupLabels {
        GroupLabels {
            door: self.door.as_str(),
            model_group: group.to_string(),
        }
    }

    /// A stream's first chunk is ready: time to first token, and one more open stream.
    pub(crate) fn first_token(&mut self, by: &ServedBy) {
        self.stream = true;
        self.metrics.open_streams.inc();
        self.metrics
            .time_to_first_token
            .get_or_create(&self.group(&by.model_group))
            .observe(self.started.elapsed().as_secs_f64());
    }

    pub(crate) fn finish_ok(&self, by: &ServedBy, usage: Option<&Usage>) {
        let u = usage.copied().unwrap_or_default();
        let latency = self.started.elapsed();
        tracing::info!(
            target: "ai_api::request",
            request_id = %self.request_id,
            door = self.door.as_str(),
            model = %self.model,
            model_group = %by.model_group,
            deployment = %by.deployment_id,
            status = 200u16,
            latency_ms = latency.as_millis() as u64,
            overhead_us = by.overhead().as_micros() as u64,
            retries = by.attempted_retries,
            fallbacks = by.attempted_fallbacks,
            prompt_tokens = u.prompt_tokens,
            completion_tokens = u.completion_tokens,
            cost_usd = u.cost_usd,
            "request served"
        );
        let m = &self.metrics;
        m.requests
            .get_or_create(&RequestLabels {
                door: self.door.as_str(),
                model_group: by.model_group.clone(),
                deployment: by.deployment_id.clone(),
                status: 200,
            })
            .inc();
        let group = self.group(&by.model_group);
        m.latency
            .get_or_create(&group)
            .observe(latency.as_secs_f64());
        m.overhead
            .get_or_create(&group)
            .observe(by.overhead().as_secs_f64());
        if by.attempted_retries > 0 {
            m.retries
                .get_or_create(&group)
                .inc_by(u64::from(by.attempted_retries));
        }
        if by.attempted_fallbacks > 0 {
            m.fallbacks.get_or_create(&group).inc();
        }
        for (direction, n) in [("in", u.prompt_tokens), ("out", u.completion_tokens)] {
            m.tokens
                .get_or_create(&TokenLabels {
                    model_group: by.model_group.clone(),
                    direction,
                })
                .inc_by(u64::from(n));
        }
        m.cost
            .get_or_create(&CostLabels {
                model_group: by.model_group.clone(),
                key_alias: "master".into(),
            })
            .inc_by(u.cost_usd);
    }

    pub(crate) fn finish_err(&self, e: &Error) {
        self.finish_err_at(e, None);
    }

    pub(crate) fn finish_err_at(&self, e: &Error, by: Option<&ServedBy>) {
        let status = e.http_status().as_u16();
        let (group, deployment) = match by {
            Some(b) => (b.model_group.as_str(), b.deployment_id.as_str()),
            None => (self.model.as_str(), ""),
        };
        tracing::info!(
            target: "ai_api::request",
            request_id = %self.request_id,
            door = self.door.as_str(),
            model = %self.model,
            deployment,
            status,
            latency_ms = self.started.elapsed().as_millis() as u64,
            error = %e.message,
            "request failed"
        );
        // Unknown model names are client input: keep them out of the labels.
        let model_group = if e.kind == ErrorKind::NotFound {
            "unknown".to_string()
        } else {
            group.to_string()
        };
        let m = &self.metrics;
        m.requests
            .get_or_create(&RequestLabels {
                door: self.door.as_str(),
                model_group: model_group.clone(),
                deployment: deployment.to_string(),
                status,
            })
            .inc();
        if e.kind == ErrorKind::RateLimited {
            m.rate_limited
                .get_or_create(&GroupLabels {
                    door: self.door.as_str(),
                    model_group,
                })
                .inc();
        }
    }
}

impl Drop for RequestRecord {
    fn drop(&mut self) {
        self.metrics.in_flight.dec();
        if self.stream {
            self.metrics.open_streams.dec();
        }
    }
}
