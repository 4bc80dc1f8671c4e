//! The OpenAI REST door (axum): routes under the root path, request ids, the body limit, and
//! OpenAI-shaped errors for everything, unknown paths included. Handlers only extract, convert,
//! call the core and convert back; no provider code lives here.

pub mod admin;
pub mod error;
pub mod handlers;
pub mod sse;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};

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
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
}
