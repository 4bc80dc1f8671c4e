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

/// The door's router.
pub fn router(gateway: Gateway, opts: &HttpOptions) -> Router {
    use handlers as h;
    let api = Router::new()
        .route("/chat/completions", post(h::chat_completions))
        .route("/v1/chat/completions", post(h::chat_completions))
        .route("/models", get(h::list_models))
        .route("/v1/models", get(h::list_models))
        .route("/models/{*id}", get(h::get_model))
        .route("/v1/models/{*id}", get(h::get_model))
        .route("/images/generations", post(h::generate_image))
        .route("/v1/images/generations", post(h::generate_image))
        .route("/embeddings", post(h::embeddings))
        .route("/v1/embeddings", post(h::embeddings))
        .route("/health/liveliness", get(h::liveliness))
        .route("/health/liveness", get(h::liveliness))
        .route("/health/readiness", get(h::readiness))
        .route("/metrics", get(h::metrics))
        .route("/key/generate", post(admin::generate))
        .route("/key/update", post(admin::update))
        .route("/key/delete", post(admin::delete))
        .route("/key/info", get(admin::info))
        .route("/key/list", get(admin::list))
        .route("/spend/logs", get(admin::spend_logs))
        .route("/spend/report", get(admin::spend_report))
        .route("/global/spend/report", get(admin::spend_report))
        .with_state(gateway);
    let root = normalize_root(&opts.root_path);
    let app = if root.is_empty() {
        api
    } else {
        Router::new().nest(&root, api)
    };
    app.fallback(h::not_found)
        .method_not_allowed_fallback(h::method_not_allowed)
        .layer(DefaultBodyLimit::max(opts.max_body_bytes))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
}
