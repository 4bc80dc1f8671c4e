//! The one record of each request, written when it ends (for streams: when the stream ends or
//! the client goes away): the structured log line, the metrics, the charge to the caller's key
//! and the spend record (handed to the spend writer, off the request path). Both doors get it
//! from the core, so they can never count differently.

use std::sync::Arc;
use std::time::SystemTime;

use tokio::time::Instant;

use super::error::{Error, ErrorKind};
use super::types::Usage;
use super::{Admission, Door, Gateway, RequestContext, ServedBy, key_subject};
use crate::metrics::{CostLabels, DoorMetrics, GroupLabels, Metrics, RequestLabels};
use crate::store::SpendRecord;

#[derive(Debug)]
pub(crate) struct RequestRecord {
    request_id: Arc<str>,
    door: Door,
    model: String,
    started: Instant,
    metrics: Arc<Metrics>,
    stream: bool,
    gateway: Gateway,
    time: SystemTime,
    admission: Option<Admission>,
    /// Bodies for the spend record, only with `log_raw_request_response: true`.
    request_body: Option<String>,
    response_body: Option<String>,
    /// Counts the request on its worker, for the worker's spinner (`crate::workers::spin`).
    _in_flight: crate::workers::spin::InFlight,
}

impl RequestRecord {
    pub(crate) fn start(
        ctx: &RequestContext,
        model: &str,
        started: Instant,
        gateway: &Gateway,
    ) -> Self {
        let metrics = gateway.inner.metrics.clone();
        metrics.in_flight.inc();
        RequestRecord {
            request_id: ctx.request_id.clone(),
            door: ctx.door,
            model: model.to_string(),
            started,
            metrics,
            stream: false,
            gateway: gateway.clone(),
            time: SystemTime::now(),
            admission: None,
            request_body: None,
            response_body: None,
            _in_flight: crate::workers::spin::InFlight::start(),
        }
    }

    /// Keeps the request body for the spend record (only with `log_raw_request_response`).
    pub(crate) fn request_body(&mut self, body: &impl serde::Serialize) {
        if self.gateway.inner.log_raw {
            self.request_body = serde_json::to_string(body).ok();
        }
    }

    /// Keeps the response body for the spend record (only with `log_raw_request_response`).
    pub(crate) fn response_body(&mut self, body: &impl serde::Serialize) {
        if self.gateway.inner.log_raw {
            self.response_body = serde_json::to_string(body).ok();
        }
    }

    /// The caller was admitted; its admission (budget reservation, key rate-limit slot) is held
    /// until this record ends.
    pub(crate) fn admit(&mut self, admission: Admission) {
        self.admission = Some(admission);
    }

    fn key_alias_label(&self) -> String {
        self.admission
            .as_ref()
            .map_or_else(|| "none".to_string(), |a| a.principal.metrics_label())
    }

    /// Hands the spend record to the writer (never blocks, never fails the request).
    fn spend(
        &self,
        by: Option<&ServedBy>,
        usage: &Usage,
        status: u16,
        latency: std::time::Duration,
        error: Option<&Error>,
    ) {
        let Some(writer) = &self.gateway.inner.spend else {
            return;
        };
        let principal = self.admission.as_ref().map(|a| &a.principal);
        writer.record(SpendRecord {
            request_id: self.request_id.clone(),
            time: self.time,
            key_hash: principal.and_then(|p| p.key_hash()).map(str::to_string),
            key_alias: principal.and_then(|p| p.key_alias()).map(str::to_string),
            model_group: by.map_or_else(
                || self.model.as_str().into(),
                |b| b.deployment.spend_names.model_group.clone(),
            ),
            deployment_id: by
                .map(|b| b.deployment.spend_names.deployment_id.clone())
                .unwrap_or_default(),
            provider_model: by
                .map(|b| b.deployment.spend_names.provider_model.clone())
                .unwrap_or_default(),
            prompt_tokens: u64::from(usage.prompt_tokens),
            completion_tokens: u64::from(usage.completion_tokens),
            cost_usd: usage.cost_usd,
            latency_ms: latency.as_millis() as u64,
            status,
            error_kind: error.map(|e| e.kind.openai_type().to_string()),
            request_body: self.request_body.clone(),
            response_body: self.response_body.clone(),
        });
    }

    /// The deployment's metric handles for this door (resolved at startup; built here only
    /// for a deployment made without them).
    fn handles<'a>(&self, by: &'a ServedBy) -> std::borrow::Cow<'a, DoorMetrics> {
        match by.deployment.door_metrics(self.door) {
            // Borrowed: a clone is nine reference counts up and down per request.
            Some(m) => std::borrow::Cow::Borrowed(m),
            None => std::borrow::Cow::Owned(self.metrics.for_deployment(
                self.door.as_str(),
                by.model_group(),
                by.deployment_id(),
            )),
        }
    }

    /// A stream's first chunk is ready: time to first token, and one more open stream.
    pub(crate) fn first_token(&mut self, by: &ServedBy) {
        self.stream = true;
        self.metrics.open_streams.inc();
        self.handles(by)
            .time_to_first_token
            .observe(self.started.elapsed().as_secs_f64());
    }

    pub(crate) fn finish_ok(&self, by: &ServedBy, usage: Option<&Usage>) {
        let u = usage.copied().unwrap_or_default();
        let latency = self.started.elapsed();
        let overhead = by.overhead_at(latency);
        crate::telemetry::Served {
            request_id: &self.request_id,
            door: self.door.as_str(),
            model: &self.model,
            model_group: by.model_group(),
            deployment: by.deployment_id(),
            latency_ms: latency.as_millis() as u64,
            overhead_us: overhead.as_micros() as u64,
            retries: by.attempted_retries,
            fallbacks: by.attempted_fallbacks,
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            cost_usd: u.cost_usd,
        }
        .log();
        let m = self.handles(by);
        m.requests_ok.inc();
        m.latency.observe(latency.as_secs_f64());
        m.overhead.observe(overhead.as_secs_f64());
        if by.attempted_retries > 0 {
            m.retries.inc_by(u64::from(by.attempted_retries));
        }
        if by.attempted_fallbacks > 0 {
            m.fallbacks.inc();
        }
        m.tokens_in.inc_by(u64::from(u.prompt_tokens));
        m.tokens_out.inc_by(u64::from(u.completion_tokens));
        let principal = self.admission.as_ref().map(|a| &a.principal);
        match principal {
            Some(super::auth::Principal::Key(k)) => {
                self.metrics
                    .cost
                    .get_or_create(&CostLabels {
                        model_group: by.model_group().to_string(),
                        key_alias: self.key_alias_label(),
                    })
                    .inc_by(u.cost_usd);
                k.charge(u.cost_usd, self.gateway.inner.router.clock().wall());
                self.gateway.inner.router.limiter().add_tokens(
                    &key_subject(&k.record.token_hash),
                    u64::from(u.total_tokens),
                    self.gateway.inner.router.clock().now(),
                );
            }
            _ => {
                m.cost_master.inc_by(u.cost_usd);
            }
        }
        self.spend(Some(by), &u, 200, latency, None);
    }

    pub(crate) fn finish_err(&self, e: &Error) {
        self.finish_err_at(e, None);
    }

    pub(crate) fn finish_err_at(&self, e: &Error, by: Option<&ServedBy>) {
        let status = e.http_status().as_u16();
        let latency = self.started.elapsed();
        let (group, deployment) = match by {
            Some(b) => (b.model_group(), b.deployment_id()),
            None => (self.model.as_str(), ""),
        };
        tracing::info!(
            target: crate::telemetry::REQUEST_TARGET,
            request_id = %self.request_id,
            door = self.door.as_str(),
            model = %self.model,
            deployment,
            status,
            latency_ms = latency.as_millis() as u64,
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
        // Requests refused before routing (bad key, bad body, unknown model) leave no record:
        // there is nothing to charge and nothing a provider saw.
        if self.admission.is_some() {
            let usage = by.map(|_| Usage::default()).unwrap_or_default();
            self.spend(by, &usage, status, latency, Some(e));
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
