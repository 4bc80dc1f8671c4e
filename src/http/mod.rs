//! The OpenAI REST door (axum): routes under the root path, request ids, the body limit, and
//! OpenAI-shaped errors for everything, unknown paths included. Handlers only extract, convert,
//! call the core and convert back; no provider code lives here.

pub mod admin;
pub mod deadline;
pub mod error;
pub mod handlers;
pub mod sse;

use std::convert::Infallible;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::HeaderValue;
use axum::response::Response;
use axum::routing::{get, post};
use futures_util::future::{BoxFuture, Either};
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};

use crate::core::Gateway;

/// What the HTTP door needs besides the core.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// `/ai-api` by default; `""` or `/` serves at the root.
    pub root_path: String,
    pub max_body_bytes: usize,
}

/// Normalises a root path: `""`/`"/"` → `""`, else one leading and no trailing slash.
pub fn normalize_root(root: &str) -> String {
    let trimmed = root.trim().trim_matches('/');
    if trimmed.is_empty() {
        String::new()
    } else {
        format!("/{trimmed}")
    }
}

/// The door's router. Routes carry the root path themselves (no `nest`): a nested router
/// costs a prefix strip, a second route lookup and boxed service clones on every request.
pub fn router(gateway: Gateway, opts: &HttpOptions) -> Router {
    use handlers as h;
    let root = normalize_root(&opts.root_path);
    let at = |path: &str| format!("{root}{path}");
    // The OpenAI routes answer with and without the `/v1` prefix, as LiteLLM's do.
    let both = |path: &str| [at(path), at(&format!("/v1{path}"))];
    let mut api = Router::new();
    for p in both("/chat/completions") {
        api = api.route(&p, post(h::chat_completions));
    }
    for p in both("/models") {
        api = api.route(&p, get(h::list_models));
    }
    for p in both("/models/{*id}") {
        api = api.route(&p, get(h::get_model));
    }
    for p in both("/images/generations") {
        api = api.route(&p, post(h::generate_image));
    }
    for p in both("/embeddings") {
        api = api.route(&p, post(h::embeddings));
    }
    api.route(&at("/health/liveliness"), get(h::liveliness))
        .route(&at("/health/liveness"), get(h::liveliness))
        .route(&at("/health/readiness"), get(h::readiness))
        .route(&at("/metrics"), get(h::metrics))
        .route(&at("/key/generate"), post(admin::generate))
        .route(&at("/key/update"), post(admin::update))
        .route(&at("/key/delete"), post(admin::delete))
        .route(&at("/key/info"), get(admin::info))
        .route(&at("/key/list"), get(admin::list))
        .route(&at("/spend/logs"), get(admin::spend_logs))
        .route(&at("/spend/report"), get(admin::spend_report))
        .route(&at("/global/spend/report"), get(admin::spend_report))
        .with_state(gateway)
        .fallback(h::not_found)
        .method_not_allowed_fallback(h::method_not_allowed)
        .layer(DefaultBodyLimit::max(opts.max_body_bytes))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(NewRequestId))
}

/// A new request id ([`crate::core::with_new_request_id`]) as the header value both HTTP paths
/// (the router's layer and the direct chat route) answer with.
pub(crate) fn new_request_id_header() -> HeaderValue {
    crate::core::with_new_request_id(|text| {
        HeaderValue::from_str(text).unwrap_or(HeaderValue::from_static(""))
    })
}

/// Request ids for requests that come without one, on the router's routes.
#[derive(Debug, Clone, Copy)]
struct NewRequestId;

impl MakeRequestId for NewRequestId {
    fn make_request_id<B>(&mut self, _: &http::Request<B>) -> Option<RequestId> {
        Some(RequestId::new(new_request_id_header()))
    }
}

/// The HTTP door as served: `POST` to the chat-completions paths goes straight to its handler
/// (`handlers::chat_direct`), every other request through the [`router`]. The hot route
/// skips the router's per-request machinery; what the router's layers do for it (request id,
/// body limit, errors in OpenAI's shape) the direct path does too.
#[derive(Clone)]
pub struct Door {
    router: Router,
    direct: Arc<Direct>,
}

struct Direct {
    gateway: Gateway,
    /// `{root}/chat/completions` and `{root}/v1/chat/completions`.
    chat: [String; 2],
    max_body_bytes: usize,
}

impl std::fmt::Debug for Door {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Door")
            .field("chat", &self.direct.chat)
            .finish_non_exhaustive()
    }
}

impl Door {
    pub fn new(gateway: Gateway, opts: &HttpOptions) -> Self {
        let root = normalize_root(&opts.root_path);
        Door {
            router: router(gateway.clone(), opts),
            direct: Arc::new(Direct {
                gateway,
                chat: [
                    format!("{root}/chat/completions"),
                    format!("{root}/v1/chat/completions"),
                ],
                max_body_bytes: opts.max_body_bytes,
            }),
        }
    }
}

/// The door's answer: the direct chat route's, or the router's.
pub type DoorFuture = Either<
    BoxFuture<'static, Result<Response, Infallible>>,
    axum::routing::future::RouteFuture<Infallible>,
>;

/// hyper calls its services by reference, once per request: the direct route needs nothing
/// from the door but its shared state, and only the router's requests clone the router (an
/// `Arc`) to call it. (hyper-util's adapter for tower services cloned the whole door on
/// every request and drove a readiness step the door does not need.)
impl hyper::service::Service<Request> for Door {
    type Response = Response;
    type Error = Infallible;
    type Future = DoorFuture;

    fn call(&self, req: Request) -> DoorFuture {
        let d = &self.direct;
        if req.method() == http::Method::POST && d.chat.iter().any(|p| p == req.uri().path()) {
            let (gw, limit) = (d.gateway.clone(), d.max_body_bytes);
            Either::Left(Box::pin(async move {
                Ok(handlers::chat_direct(gw, req, limit).await)
            }))
        } else {
            Either::Right(tower::Service::call(&mut self.router.clone(), req))
        }
    }
}
