//! # ai-api
//!
//! A self-hosted AI gateway: services call one endpoint with one key, over gRPC
//! (`ai_api.v1.AiApiService`) or the OpenAI REST API, and ai-api translates each request into
//! the provider's own API (OpenAI, Anthropic, Gemini, OpenAI-compatible hosts) and back.
//!
//! # Layout
//!
//! - [`core`]: the one core both doors call — [`core::Gateway`] (auth, model groups, deployment
//!   choice, timeouts, cost, the request log line), the core [`core::types`], and
//!   [`core::error`] with the single table of HTTP status and gRPC code per error kind.
//! - [`providers`]: the closed set of upstream APIs behind one dispatch `match`
//!   ([`providers::Provider`]); each module keeps its wire format private.
//! - [`openai`]: OpenAI's JSON wire format, spoken by the HTTP door and the OpenAI provider.
//! - [`http`]: the OpenAI REST door (axum). [`grpc`]: the gRPC door (tonic), with health and
//!   reflection. Doors only extract, convert, call the core and convert back.
//! - [`config`]: LiteLLM's `config.yaml`, checked and resolved into a runtime config.
//! - [`server`]: runs both doors on bound listeners until shutdown, on per-core workers
//!   ([`workers`]: which worker a thread is, moving a gRPC call off a saturated one);
//!   [`cli`]: the command line; [`telemetry`]: logging.

mod body;
pub mod cli;
pub mod config;
pub mod core;
pub mod grpc;
pub mod http;
pub mod metrics;
pub mod openai;
pub mod providers;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod workers;
