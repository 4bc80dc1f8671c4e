//! Test support: the real server on port 0 (both doors) over a config given as YAML, and an
//! in-process fake OpenAI. No sleeps: listeners are bound before the server task starts.

#![allow(dead_code)]

pub mod fake_anthropic;
pub mod fake_gemini;
pub mod fake_openai;
pub mod pg;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use std::sync::Arc;

use ai_api::config::load_str;
use ai_api::core::router::{Clock, SystemClock};
use ai_api::server::{ServeOptions, serve};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub const MASTER_KEY: &str = "sk-test-master";

/// A running gateway.
pub struct TestGateway {
    /// `http://127.0.0.1:PORT` + root path, e.g. `http://127.0.0.1:4242/ai-api`.
    pub base: String,
    pub http_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), ai_api::server::ServeError>>>,
    /// The SQLite data directory made for this gateway (removed when it is dropped).
    pub data: Option<tempfile::TempDir>,
}

impl TestGateway {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    /// Sends the shutdown signal and waits for the server to drain and return.
    pub async fn shutdown(mut self) -> Result<(), ai_api::server::ServeError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(t) => t.await.expect("server task panicked"),
            None => Ok(()),
        }
    }

    /// Signals shutdown without waiting.
    pub fn begin_shutdown(
        &mut self,
    ) -> tokio::task::JoinHandle<Result<(), ai_api::server::ServeError>> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.take().expect("already shut down")
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// Starts the gateway on `yaml`, with `env` as the only environment, at root path `/ai-api`.
pub async fn start(yaml: &str, env: &[(&str, &str)]) -> TestGateway {
    start_at(yaml, env, "/ai-api").await
}

pub async fn start_at(yaml: &str, env: &[(&str, &str)], root: &str) -> TestGateway {
    start_with(yaml, env, root, Arc::new(SystemClock)).await
}

/// Starts the gateway with the router reading time from `clock`.
pub async fn start_with(
    yaml: &str,
    env: &[(&str, &str)],
    root: &str,
    clock: Arc<dyn Clock>,
) -> TestGateway {
    start_full(yaml, env, root, clock, None).await
}

/// Starts the gateway with every option: `database_url` `None` is SQLite in a temp dir.
pub async fn start_full(
    yaml: &str,
    env: &[(&str, &str)],
    root: &str,
    clock: Arc<dyn Clock>,
    database_url: Option<String>,
) -> TestGateway {
    start_on(yaml, env, root, clock, database_url, None).await
}

/// As [`start_full`], with the SQLite data directory given (to restart on the same data).
pub async fn start_on(
    yaml: &str,
    env: &[(&str, &str)],
    root: &str,
    clock: Arc<dyn Clock>,
    database_url: Option<String>,
    data_dir: Option<std::path::PathBuf>,
) -> TestGateway {
    start_tuned(yaml, env, root, (clock, database_url, data_dir), |_| {}).await
}

/// Starts the gateway on `yaml` at `/ai-api` with the server's options changed by `tune`.
pub async fn start_tuned_with(yaml: &str, tune: impl FnOnce(&mut ServeOptions)) -> TestGateway {
    start_tuned(
        yaml,
        &[],
        "/ai-api",
        (Arc::new(SystemClock), None, None),
        tune,
    )
    .await
}

async fn start_tuned(
    yaml: &str,
    env: &[(&str, &str)],
    root: &str,
    (clock, database_url, data_dir): (Arc<dyn Clock>, Option<String>, Option<std::path::PathBuf>),
    tune: impl FnOnce(&mut ServeOptions),
) -> TestGateway {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let loaded = load_str(yaml, "test config", &|k| env.get(k).cloned())
        .unwrap_or_else(|e| panic!("test config does not load: {e}"));
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_addr = http.local_addr().unwrap();
    let grpc_addr = grpc.local_addr().unwrap();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let data = match data_dir {
        Some(_) => None,
        None => Some(tempfile::tempdir().unwrap()),
    };
    let mut opts = ServeOptions::new(root, Duration::from_secs(5));
    opts.clock = clock;
    opts.data_dir = match (&data, data_dir) {
        (Some(t), _) => t.path().to_path_buf(),
        (None, Some(d)) => d,
        (None, None) => unreachable!(),
    };
    opts.database_url = database_url;
    tune(&mut opts);
    let config = loaded.config;
    let task = tokio::spawn(async move {
        serve(&config, http, grpc, opts, async {
            let _ = stop_rx.await;
        })
        .await
    });
    let root = ai_api::http::normalize_root(root);
    TestGateway {
        base: format!("http://{http_addr}{root}"),
        http_addr,
        grpc_addr,
        stop: Some(stop_tx),
        task: Some(task),
        data,
    }
}

/// A config with one OpenAI deployment per `(model_name, upstream_model)`, all on `api_base`,
/// guarded by [`MASTER_KEY`].
pub fn openai_config(api_base: &str, models: &[(&str, &str)], extra_params: &str) -> String {
    let mut y = String::from("model_list:\n");
    for (name, upstream) in models {
        y.push_str(&format!(
            "  - model_name: {name}\n    litellm_params:\n      model: openai/{upstream}\n      api_key: sk-upstream-secret\n      api_base: {api_base}\n{extra_params}"
        ));
    }
    y.push_str(&format!("general_settings:\n  master_key: {MASTER_KEY}\n"));
    y
}

pub fn client() -> reqwest::Client {
    reqwest::Client::new()
}

/// Parses an SSE body into its `data:` payloads.
pub fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            e.strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not an SSE data event: {e:?}"))
                .to_string()
        })
        .collect()
}
