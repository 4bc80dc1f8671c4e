//! HTTP handlers: extract (key, request id, body), convert wire → core, call the core, convert
//! core → wire. Nothing else: auth, routing, limits and cost live in the core.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::error::{Body, HttpError, parse_json};
use super::sse;
use crate::core::error::Error;
use crate::core::types::{ChatRequest, EmbeddingRequest, ImageRequest};
use crate::core::{Door, Gateway, RequestContext, ServedBy, X_REQUEST_ID};
use crate::openai::{
    self as wire, ChatCompletion, ChatCompletionRequest, EmbeddingRequest as WireEmbeddingRequest,
    ImageGenerationRequest, ImagesResponse, ModelList,
};

/// The request's context: its id (set by the request-id layer) and the key it presents
/// (`Authorization: Bearer <key>` or `x-api-key: <key>`).
pub(crate) fn context(headers: &HeaderMap) -> RequestContext {
    // The id is echoed as the client sent it; the log and the spend record get its text, with
    // any byte that is not UTF-8 replaced (`to_str` would refuse non-ASCII ids outright).
    let request_id = headers
        .get(X_REQUEST_ID)
        .map(|v| std::sync::Arc::from(String::from_utf8_lossy(v.as_bytes())))
        .unwrap_or_default();
    let key = crate::core::auth::presented_key(headers);
    RequestContext::new(Door::Http, request_id, key)
}

/// The caller's `context`, extracted without cloning the request's headers (axum's
/// `HeaderMap` extractor copies them all).
#[derive(Debug)]
pub struct Caller(pub RequestContext);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Caller(context(&parts.headers)))
    }
}

/// A response with where the answer came from, as LiteLLM's `x-litellm-*` headers: the
/// deployment's prebuilt map with this answer's values (`ServedBy::headers`).
fn served_response(
    by: &ServedBy,
    cost: Option<f64>,
    content_type: &'static str,
    body: axum::body::Body,
) -> Response {
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    *h = by.headers(cost);
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// [`served_response`] with a JSON body, serialized into a buffer sized for a typical answer
/// (axum's `Json` starts at 128 bytes and grows).
fn served_json(
    by: &ServedBy,
    cost: Option<f64>,
    body: &impl serde::Serialize,
) -> Result<Response, HttpError> {
    let mut buf = Vec::with_capacity(1024);
    serde_json::to_writer(&mut buf, body)
        .map_err(|e| Error::internal(format!("cannot encode the answer: {e}")))?;
    Ok(served_response(
        by,
        cost,
        "application/json",
        axum::body::Body::from(buf),
    ))
}

pub async fn chat_completions(
    State(gw): State<Gateway>,
    Caller(ctx): Caller,
    Body(body): Body,
) -> Result<Response, HttpError> {
    chat(gw, ctx, body).await
}

/// `POST /chat/completions` as the [`super::Door`] serves it: without the router, its layers
/// and extractors (boxed futures, cloned services and request extensions on every call, about
/// a sixth of a plain request's instructions), doing what they do for this route — the request
/// id (the client's `x-request-id`, else a new UUID, echoed on the answer), the body limit
/// (413), the caller — and then the same handler.
pub(crate) async fn chat_direct(
    gw: Gateway,
    req: axum::extract::Request,
    limit: usize,
) -> Response {
    let (parts, body) = req.into_parts();
    let mut ctx = context(&parts.headers);
    let id = match parts.headers.get(X_REQUEST_ID) {
        Some(v) => v.clone(),
        None => {
            let id = super::new_request_id_header();
            ctx.request_id = id.to_str().unwrap_or_default().into();
            id
        }
    };
    let answer = match super::error::read_body(body, limit).await {
        Ok(body) => chat(gw, ctx, body).await,
        Err(e) => Err(e),
    };
    let mut resp = answer.into_response();
    resp.headers_mut().entry(X_REQUEST_ID).or_insert(id);
    resp
}

async fn chat(
    gw: Gateway,
    mut ctx: RequestContext,
    body: bytes::Bytes,
) -> Result<Response, HttpError> {
    ctx.principal = Some(gw.authorize(&ctx)?);
    let wire: ChatCompletionRequest = parse_json(&body)?;
    let stream = wire.stream.unwrap_or(false);
    let req = ChatRequest::try_from(wire)?;
    if stream {
        let served = gw.chat_stream(&ctx, req).await?;
        let mut resp = served_response(
            &served.by,
            None,
            "text/event-stream",
            sse::body(served.value),
        );
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        Ok(resp)
    } else {
        let served = gw.chat(&ctx, req).await?;
        let body = ChatCompletion::from(served.value);
        served_json(&served.by, Some(served.by.cost_usd), &body)
    }
}

pub async fn embeddings(
    State(gw): State<Gateway>,
    Caller(mut ctx): Caller,
    Body(body): Body,
) -> Result<Response, HttpError> {
    ctx.principal = Some(gw.authorize(&ctx)?);
    let wire: WireEmbeddingRequest = parse_json(&body)?;
    let base64 = match wire.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(Error::bad_request(format!(
                "encoding_format {other:?} is not one of float, base64"
            ))
            .with_param("encoding_format")
            .into());
        }
    };
    let served = gw.embed(&ctx, EmbeddingRequest::from(wire)).await?;
    let body = wire::convert::embedding_response_to_wire(&served.value, base64);
    served_json(&served.by, Some(served.by.cost_usd), &body)
}

pub async fn generate_image(
    State(gw): State<Gateway>,
    Caller(mut ctx): Caller,
    Body(body): Body,
) -> Result<Response, HttpError> {
    ctx.principal = Some(gw.authorize(&ctx)?);
    let wire: ImageGenerationRequest = parse_json(&body)?;
    let served = gw.generate_image(&ctx, ImageRequest::from(wire)).await?;
    let body = ImagesResponse::from(&served.value);
    served_json(&served.by, Some(served.by.cost_usd), &body)
}

pub async fn list_models(
    State(gw): State<Gateway>,
    Caller(ctx): Caller,
) -> Result<Json<ModelList>, HttpError> {
    let models = gw.list_models(&ctx)?;
    Ok(Json(ModelList {
        object: "list".into(),
        data: models.iter().map(wire::Model::from).collect(),
    }))
}

pub async fn get_model(
    State(gw): State<Gateway>,
    Caller(ctx): Caller,
    Path(id): Path<String>,
) -> Result<Json<wire::Model>, HttpError> {
    let model = gw.model(&ctx, &id)?;
    Ok(Json(wire::Model::from(&model)))
}

pub async fn liveliness() -> Json<&'static str> {
    Json("I'm alive!")
}

pub async fn readiness(State(gw): State<Gateway>) -> Json<serde_json::Value> {
    let cooling: Vec<serde_json::Value> = gw
        .cooldowns()
        .into_iter()
        .map(|(group, id, left)| {
            serde_json::json!({"model_group": group, "model_id": id, "cooldown_remaining_s": left.as_secs_f64()})
        })
        .collect();
    Json(serde_json::json!({
        "status": if cooling.is_empty() { "healthy" } else { "degraded" },
        "models": gw.model_count(),
        "deployments_in_cooldown": cooling,
        "version": env!("CARGO_PKG_VERSION"),
    }))
}

pub async fn metrics(
    State(gw): State<Gateway>,
    Caller(ctx): Caller,
) -> Result<Response, HttpError> {
    let text = gw.metrics_text(&ctx)?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

pub async fn not_found(uri: axum::http::Uri) -> HttpError {
    HttpError(Error::not_found(format!("no route for {}", uri.path())).with_code("route_not_found"))
}

pub async fn method_not_allowed() -> Response {
    let mut e = Error::bad_request("method not allowed on this path");
    e.code = Some("method_not_allowed".into());
    let mut resp = HttpError(e).into_response();
    *resp.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_request_id_reaches_the_record_even_when_not_ascii() {
        let mut h = HeaderMap::new();
        h.insert(
            X_REQUEST_ID,
            HeaderValue::from_bytes("t\tab\"q é".as_bytes()).unwrap(),
        );
        assert_eq!(&*context(&h).request_id, "t\tab\"q é");
        h.insert(X_REQUEST_ID, HeaderValue::from_bytes(b"id-\xe9").unwrap());
        assert_eq!(&*context(&h).request_id, "id-\u{fffd}");
        assert_eq!(&*context(&HeaderMap::new()).request_id, "");
    }
}
