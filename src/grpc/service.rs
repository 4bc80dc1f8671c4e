//! `ai_api.v1.AiApiService`: each RPC extracts (key, request id, deadline), converts, calls the
//! core and converts back. Dropping a call's future (client cancel or deadline) drops the
//! provider call with it, on whichever worker it runs.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures_util::{Stream, StreamExt, stream};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use super::pb;
use super::pb::ai_api_service_server::AiApiService;
use crate::core::types::{ChatRequest, EmbeddingRequest, ImageRequest};
use crate::core::{ChatStream, Door, Gateway, RequestContext, Served, ServedBy, X_REQUEST_ID};
use crate::workers::Workers;

/// The service over the core.
#[derive(Debug, Clone)]
pub struct AiApi {
    gateway: Gateway,
    workers: Workers,
}

impl AiApi {
    /// `workers`: where unary calls may be moved when the connection's worker is busier (one
    /// client's calls usually share one HTTP/2 connection; see [`Workers`]).
    pub fn new(gateway: Gateway, workers: Workers) -> Self {
        AiApi { gateway, workers }
    }

    /// Runs a unary call's work on the least busy worker ([`Workers::run`]).
    async fn unary<T: Send + 'static>(
        &self,
        work: impl Future<Output = Result<Response<T>, Status>> + Send + 'static,
    ) -> Result<Response<T>, Status> {
        self.workers.run(work).await.unwrap_or_else(|e| {
            tracing::error!("a gRPC call failed on its worker: {e}");
            Err(Status::internal("the call failed unexpectedly"))
        })
    }
}

/// Parses gRPC's `grpc-timeout` (`<digits><unit>`, unit one of H M S m u n).
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

pub(crate) fn context(md: &MetadataMap) -> RequestContext {
    const GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");
    // The metadata's own headers, read by constant names (a `&str` key is parsed on every
    // lookup).
    let headers = md.as_ref();
    let request_id =
        match crate::core::header_text(headers, &X_REQUEST_ID).filter(|s| !s.is_empty()) {
            Some(id) => std::sync::Arc::from(id),
            None => crate::core::with_new_request_id(|id| std::sync::Arc::from(id)),
        };
    let key = crate::core::auth::presented_key(headers);
    let mut ctx = RequestContext::new(Door::Grpc, request_id, key);
    ctx.deadline = crate::core::header_text(headers, &GRPC_TIMEOUT)
        .and_then(parse_grpc_timeout)
        .map(|d| tokio::time::Instant::now() + d);
    ctx
}

/// The call's request id in its answer's metadata, a value unique per call like the core's
/// other per-answer values (an HPACK literal, not a table entry).
fn set_request_id(headers: &mut http::HeaderMap, request_id: &str) {
    if let Some(v) = crate::core::per_answer(request_id) {
        headers.insert(X_REQUEST_ID, v);
    }
}

/// Response metadata: the request id, and where the answer came from (the HTTP door's
/// `x-litellm-*` headers, from the same core function).
fn respond<T>(msg: T, request_id: &str, by: Option<&ServedBy>) -> Response<T> {
    let mut headers = by.map_or_else(http::HeaderMap::new, |by| by.headers(Some(by.cost_usd)));
    set_request_id(&mut headers, request_id);
    let mut resp = Response::new(msg);
    *resp.metadata_mut() = MetadataMap::from_headers(headers);
    resp
}

/// A unary call's answer: the core's value as the message, with [`respond`]'s metadata, or
/// its error as a status; both carry the request id.
fn answer<V, M>(
    request_id: &str,
    served: Result<Served<V>, crate::core::error::Error>,
) -> Result<Response<M>, Status>
where
    M: for<'a> From<&'a V>,
{
    let served = served.map_err(|e| status(e, request_id))?;
    Ok(respond(
        M::from(&served.value),
        request_id,
        Some(&served.by),
    ))
}

fn status(e: crate::core::error::Error, request_id: &str) -> Status {
    let mut s = Status::from(e);
    set_request_id(s.metadata_mut().as_mut(), request_id);
    s
}

type ChatStreamOut = Pin<Box<dyn Stream<Item = Result<pb::StreamChatResponse, Status>> + Send>>;

/// The gRPC stream: deltas as they come; the finish-reason message is held back one step so
/// the usage that follows it travels in the same, last message.
fn stream_out(chunks: ChatStream) -> ChatStreamOut {
    struct State {
        chunks: ChatStream,
        held: Option<pb::StreamChatResponse>,
        out: VecDeque<pb::StreamChatResponse>,
        ended: bool,
    }
    let init = Some(State {
        chunks,
        held: None,
        out: VecDeque::new(),
        ended: false,
    });
    Box::pin(stream::unfold(init, |state| async move {
        let mut st = state?;
        loop {
            if let Some(msg) = st.out.pop_front() {
                return Some((Ok(msg), Some(st)));
            }
            if st.ended {
                return None;
            }
            match st.chunks.next().await {
                Some(Ok(chunk)) => {
                    let msg = pb::StreamChatResponse::from(&chunk);
                    if msg.choices.is_empty() && msg.usage.is_some() {
                        match st.held.take() {
                            Some(mut held) => {
                                held.usage = msg.usage;
                                st.out.push_back(held);
                            }
                            None => st.out.push_back(msg),
                        }
                        continue;
                    }
                    st.out.extend(st.held.take());
                    let finishing = msg
                        .choices
                        .iter()
                        .any(|c| c.finish_reason != pb::FinishReason::Unspecified as i32);
                    if finishing {
                        st.held = Some(msg);
                    } else {
                        st.out.push_back(msg);
                    }
                }
                // The stream failed: the error is its last message.
                Some(Err(e)) => return Some((Err(Status::from(e)), None)),
                None => {
                    st.ended = true;
                    st.out.extend(st.held.take());
                }
            }
        }
    }))
}

#[tonic::async_trait]
impl AiApiService for AiApi {
    async fn chat(
        &self,
        request: Request<pb::ChatRequest>,
    ) -> Result<Response<pb::ChatResponse>, Status> {
        let ctx = context(request.metadata());
        let gateway = self.gateway.clone();
        self.unary(Box::pin(async move {
            let id = &*ctx.request_id;
            let req = ChatRequest::try_from(request.into_inner()).map_err(|e| status(e, id))?;
            answer(id, gateway.chat(&ctx, req).await)
        }))
        .await
    }

    type StreamChatStream = ChatStreamOut;

    async fn stream_chat(
        &self,
        request: Request<pb::StreamChatRequest>,
    ) -> Result<Response<Self::StreamChatStream>, Status> {
        let ctx = context(request.metadata());
        let id = ctx.request_id.clone();
        let req = pb::ChatRequest::from(request.into_inner());
        let req = ChatRequest::try_from(req).map_err(|e| status(e, &id))?;
        let served = self
            .gateway
            .chat_stream(&ctx, req)
            .await
            .map_err(|e| status(e, &id))?;
        Ok(respond(stream_out(served.value), &id, Some(&served.by)))
    }

    async fn generate_image(
        &self,
        request: Request<pb::GenerateImageRequest>,
    ) -> Result<Response<pb::GenerateImageResponse>, Status> {
        let ctx = context(request.metadata());
        let gateway = self.gateway.clone();
        self.unary(Box::pin(async move {
            let req = ImageRequest::from(request.into_inner());
            let served = gateway.generate_image(&ctx, req).await;
            answer(&ctx.request_id, served)
        }))
        .await
    }

    async fn list_models(
        &self,
        request: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        let ctx = context(request.metadata());
        let id = ctx.request_id.clone();
        let models = self.gateway.list_models(&ctx).map_err(|e| status(e, &id))?;
        Ok(respond(
            pb::ListModelsResponse {
                models: models.iter().map(pb::Model::from).collect(),
            },
            &id,
            None,
        ))
    }

    async fn embed(
        &self,
        request: Request<pb::EmbedRequest>,
    ) -> Result<Response<pb::EmbedResponse>, Status> {
        let ctx = context(request.metadata());
        let gateway = self.gateway.clone();
        self.unary(Box::pin(async move {
            let req = EmbeddingRequest::from(request.into_inner());
            let served = gateway.embed(&ctx, req).await;
            answer(&ctx.request_id, served)
        }))
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_in_every_unit() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout("x"), None);
        assert_eq!(parse_grpc_timeout(""), None);
    }
}
