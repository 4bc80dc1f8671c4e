//! What every HTTP provider shares: the deployment's call context over the gateway's one pooled
//! client ([`HttpClient`]), mapping transport failures and provider error bodies to core errors (status
//! and message kept, `retry-after` passed on), JSON decoding that calls garbage garbage, and SSE
//! decoding (`eventsource-stream`) that reports a cut stream as an error.

use std::time::Duration;

use bytes::Bytes;
use eventsource_stream::{Event, Eventsource};
use futures_util::{Stream, StreamExt};
use http_body_util::BodyDataStream;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::client::body_error;
pub use super::client::{
    FixedHeaders, HttpClient, Target, UpstreamRequest, UpstreamResponse, parse_uri,
};

use crate::config::{DeploymentConfig, Secret};
use crate::core::error::{Error, ErrorKind};

/// One deployment's upstream: its config and the shared client.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub deployment: DeploymentConfig,
    pub client: HttpClient,
    pub log_raw: bool,
}

impl Upstream {
    pub fn new(deployment: &DeploymentConfig, client: HttpClient, log_raw: bool) -> Self {
        Upstream {
            deployment: deployment.clone(),
            client,
            log_raw,
        }
    }

    /// The deployment's key; a missing variable is a configuration error naming it.
    pub fn key(&self) -> Result<Option<&Secret>, Error> {
        super::require_key(&self.deployment)
    }

    /// `api_base` if configured, else `default`.
    pub fn base<'a>(&'a self, default: &'a str) -> &'a str {
        self.deployment.api_base.as_deref().unwrap_or(default)
    }

    /// Sends a JSON body; a non-2xx answer becomes the provider's error (status and message
    /// kept). Transport failures become timeouts, unavailability or bad-gateway errors.
    pub async fn send_json(
        &self,
        call: UpstreamRequest,
        body: &impl serde::Serialize,
    ) -> Result<UpstreamResponse, Error> {
        let bytes = serde_json::to_vec(body)
            .map_err(|e| Error::internal(format!("cannot encode the provider request: {e}")))?;
        if self.log_raw {
            tracing::info!(
                target: "ai_api::raw",
                deployment = %self.deployment.id,
                body = %String::from_utf8_lossy(&bytes),
                "upstream request"
            );
        }
        let resp = self.client.send_json(call, bytes).await?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let retry_after = retry_after(resp.headers());
        let body = read_body(resp).await.unwrap_or_default();
        if self.log_raw {
            tracing::info!(
                target: "ai_api::raw",
                deployment = %self.deployment.id,
                status = status.as_u16(),
                body = %String::from_utf8_lossy(&body),
                "upstream error response"
            );
        }
        let e = upstream_error(status.as_u16(), &body);
        // A header wins over a delay in the body.
        let from_body = e.retry_after;
        Err(e.with_retry_after(retry_after.or(from_body)))
    }

    /// Reads a whole JSON answer.
    pub async fn read_json<T: DeserializeOwned>(&self, resp: UpstreamResponse) -> Result<T, Error> {
        let body = read_body(resp).await?;
        if self.log_raw {
            tracing::info!(
                target: "ai_api::raw",
                deployment = %self.deployment.id,
                body = %String::from_utf8_lossy(&body),
                "upstream response"
            );
        }
        decode_json(&body)
    }
}

/// Reads a whole answer body.
async fn read_body(resp: UpstreamResponse) -> Result<Bytes, Error> {
    crate::body::collect(resp.into_body())
        .await
        .map_err(body_error)
}

/// Decodes a provider's JSON, calling anything else a bad gateway.
pub fn decode_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, Error> {
    // UTF-8 checked once for the whole body: `from_slice` checks every string on its own,
    // a call per string (~3k instructions of a plain chat request).
    let text = std::str::from_utf8(body).map_err(|e| {
        Error::bad_gateway(format!(
            "the provider answered something that is not UTF-8 JSON: {e}"
        ))
    })?;
    serde_json::from_str(text).map_err(|e| {
        Error::bad_gateway(format!(
            "the provider answered something that is not the expected JSON: {e}"
        ))
    })
}

/// The events of an SSE answer. A transport failure mid-stream is a bad-gateway error.
pub fn sse_events(resp: UpstreamResponse) -> impl Stream<Item = Result<Event, Error>> + Send {
    BodyDataStream::new(resp.into_body())
        .eventsource()
        .map(|r| r.map_err(|e| Error::bad_gateway(format!("the provider's stream broke: {e}"))))
}

/// Reads what is left of a stream's body after the provider's end marker, in the background
/// and for a second at most, so that its connection can carry the next call: an HTTP/1.1
/// connection is only reused once its answer has been read to the end, and the body's own end
/// usually follows the marker at once. The caller's stream ends without waiting for it.
pub fn finish_in_background<S>(mut rest: S)
where
    S: Stream + Unpin + Send + 'static,
{
    // Always on a runtime when serving; without one (a unit test), nothing to reuse.
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move {
            let drain = async { while rest.next().await.is_some() {} };
            let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
        });
    }
}

/// The error for a stream that ended before its end marker.
pub fn stream_cut() -> Error {
    Error::bad_gateway("the provider's stream ended before it finished")
}

/// A provider's error answer: its status, and its message where the body has one in any of the
/// shapes OpenAI, Anthropic and Gemini use (`{"error": {"message", "type"|"code"|"status"}}`).
pub fn upstream_error(status: u16, body: &Bytes) -> Error {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let err = parsed.as_ref().and_then(|v| v.get("error"));
    let message = err
        .and_then(|e| e.get("message").and_then(Value::as_str).or(e.as_str()))
        .or_else(|| parsed.as_ref()?.get("message")?.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            if text.is_empty() {
                format!("the provider answered HTTP {status}")
            } else {
                format!(
                    "the provider answered HTTP {status}: {}",
                    text.chars().take(500).collect::<String>()
                )
            }
        });
    let code = err.and_then(|e| {
        ["code", "type", "status"]
            .iter()
            .find_map(|k| match e.get(*k)? {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
    });
    // Anthropic's 529 "overloaded" is an outage, not a client error.
    let kind = match status {
        529 => ErrorKind::Unavailable,
        s => ErrorKind::Upstream(s),
    };
    let mut e = Error::new(kind, message);
    e.code = code;
    e.retry_after = err.and_then(google_retry_delay);
    e
}

/// Gemini puts its retry delay in the body: `error.details[]` of type
/// `google.rpc.RetryInfo` with `retryDelay: "37s"`.
fn google_retry_delay(err: &Value) -> Option<Duration> {
    err.get("details")?.as_array()?.iter().find_map(|d| {
        let delay = d.get("retryDelay")?.as_str()?;
        let secs: f64 = delay.strip_suffix('s')?.parse().ok()?;
        Duration::try_from_secs_f64(secs).ok()
    })
}

/// `retry-after-ms` or `retry-after` (seconds) from a provider's answer.
pub fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    let get = |name: &str| headers.get(name)?.to_str().ok()?.trim().parse::<f64>().ok();
    if let Some(ms) = get("retry-after-ms").filter(|v| *v >= 0.0) {
        return Duration::try_from_secs_f64(ms / 1000.0).ok();
    }
    get("retry-after")
        .filter(|v| *v >= 0.0)
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_error_bodies_keep_status_message_and_code() {
        let openai = Bytes::from_static(
            br#"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#,
        );
        let e = upstream_error(429, &openai);
        assert_eq!(e.kind, ErrorKind::Upstream(429));
        assert_eq!(e.message, "Rate limit reached");
        assert_eq!(e.code.as_deref(), Some("rate_limit_exceeded"));

        let anthropic = Bytes::from_static(
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        );
        let e = upstream_error(529, &anthropic);
        assert_eq!(e.kind, ErrorKind::Unavailable);
        assert_eq!(e.message, "Overloaded");

        let garbage = Bytes::from_static(b"<html>bad gateway</html>");
        let e = upstream_error(502, &garbage);
        assert!(e.message.contains("HTTP 502"), "{}", e.message);
    }

    #[test]
    fn geminis_retry_delay_in_the_body_is_read() {
        let body = Bytes::from_static(
            br#"{"error":{"code":429,"message":"Quota exceeded","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"37s"}]}}"#,
        );
        let e = upstream_error(429, &body);
        assert_eq!(e.retry_after, Some(Duration::from_secs(37)));
        assert_eq!(e.code.as_deref(), Some("429"));
    }

    #[test]
    fn retry_after_reads_seconds_and_milliseconds() {
        let mut h = http::HeaderMap::new();
        h.insert("retry-after", "7".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert("retry-after-ms", "1500".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_millis(1500)));
    }
}
