//! Running both doors over one core: takes already-bound listeners and a shutdown future (so
//! tests run the real server on port 0), stops accepting on shutdown, lets in-flight requests
//! and streams finish within the grace period, then returns.
//!
//! The HTTP door runs one single-threaded Tokio runtime per core, each accepting on the same
//! listening socket, as nginx runs one worker process per core: a request, its upstream call
//! and the connection task carrying it stay on one thread, with no work-stealing hand-offs
//! or cross-thread wake-ups (about a fifth more requests per second than one multi-threaded
//! runtime in front of the same upstream). The gRPC door stays on the shared multi-threaded
//! runtime: its clients multiplex many calls over one HTTP/2 connection, which one thread
//! could not spread. `AI_API_HTTP_WORKERS` sets the number of HTTP runtimes.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Config;
use crate::core::router::{Clock, SystemClock};
use crate::core::{Deps, Gateway};
use crate::http::{HttpOptions, router};
use crate::store::{SpendWriter, SpendWriterOptions, Store};

/// How the server runs, beside its config.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The HTTP root path (already resolved from `SERVER_ROOT_PATH` and the config).
    pub root_path: String,
    /// How long in-flight requests may run on after shutdown begins.
    pub grace: Duration,
    /// The router's clock (tests pass a manual one).
    pub clock: Arc<dyn Clock>,
    /// `postgres://...` for PostgreSQL; otherwise SQLite at `data_dir/ai-api.db`.
    pub database_url: Option<String>,
    /// Where the SQLite database lives (`AI_API_DATA_DIR`, default `./data`).
    pub data_dir: PathBuf,
}

impl ServeOptions {
    pub fn new(root_path: impl Into<String>, grace: Duration) -> Self {
        ServeOptions {
            root_path: root_path.into(),
            grace,
            clock: Arc::new(SystemClock),
            database_url: None,
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
        }
    }
}

/// The default data directory.
pub const DEFAULT_DATA_DIR: &str = "./data";

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot start the gateway: {0}")]
    Start(String),
    #[error("the HTTP server failed: {0}")]
    Http(std::io::Error),
    #[error("the gRPC server failed: {0}")]
    Grpc(tonic::transport::Error),
}

async fn until_true(mut rx: watch::Receiver<bool>) {
    // An error means the sender is gone: shut down too.
    let _ = rx.wait_for(|stop| *stop).await;
}

/// How many single-threaded runtimes serve the HTTP door: `AI_API_HTTP_WORKERS`, else one
/// per core.
fn http_workers() -> usize {
    std::env::var("AI_API_HTTP_WORKERS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Starts `workers` threads, each a single-threaded runtime serving `app` on (a duplicate of)
/// the one listening socket, until `stop`. The task ends when all have drained, or with the
/// first one's error.
fn serve_http(
    listener: TcpListener,
    app: axum::Router,
    workers: usize,
    stop: &watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<Result<(), ServeError>>, ServeError> {
    let listener = listener.into_std().map_err(ServeError::Http)?;
    let mut done = Vec::with_capacity(workers);
    for i in 0..workers {
        let socket = listener.try_clone().map_err(ServeError::Http)?;
        let (app, stop) = (app.clone(), stop.clone());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ServeError::Http)?;
        std::thread::Builder::new()
            .name(format!("ai-api-http-{i}"))
            .spawn(move || {
                // Shard 0 is the shared runtime's; each HTTP runtime has its own upstream pool.
                crate::providers::client::set_shard(i + 1);
                let served = runtime.block_on(async move {
                    let listener = TcpListener::from_std(socket)?;
                    // No Nagle delay: every SSE chunk goes out as soon as it is written.
                    let listener = listener.tap_io(|tcp| {
                        if let Err(e) = tcp.set_nodelay(true) {
                            tracing::debug!("cannot set TCP_NODELAY: {e}");
                        }
                    });
                    axum::serve(listener, app)
                        .with_graceful_shutdown(until_true(stop))
                        .await
                });
                let _ = tx.send(served.map_err(ServeError::Http));
            })
            .map_err(ServeError::Http)?;
        done.push(rx);
    }
    Ok(tokio::spawn(async move {
        let mut pending: futures_util::stream::FuturesUnordered<_> = done.into_iter().collect();
        while let Some(r) = futures_util::StreamExt::next(&mut pending).await {
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(ServeError::Start("an HTTP worker thread died".into())),
            }
        }
        Ok(())
    }))
}

/// Serves HTTP on `http` and gRPC on `grpc` until `shutdown` completes, then drains.
pub async fn serve(
    config: &Config,
    http: TcpListener,
    grpc: TcpListener,
    opts: ServeOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let store = Store::open(opts.database_url.as_deref(), &opts.data_dir)
        .await
        .map_err(|e| ServeError::Start(format!("cannot open the database: {e}")))?;
    tracing::info!(backend = ?store.backend(), "database ready");
    let (spend, spend_task) = SpendWriter::start(
        store.clone(),
        SpendWriterOptions {
            disable_spend_logs: config.disable_spend_logs,
            disable_error_logs: config.disable_error_logs,
            ..SpendWriterOptions::default()
        },
    );
    let deps = Deps {
        clock: Some(opts.clock.clone()),
        store: Some(store.clone()),
        spend: Some(spend.clone()),
    };
    let gateway = Gateway::start(config, deps)
        .await
        .map_err(|e| ServeError::Start(e.message))?;
    let app = router(
        gateway.clone(),
        &HttpOptions {
            root_path: opts.root_path.clone(),
            max_body_bytes: config.max_request_size_bytes,
        },
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let (routes, health_task) =
        crate::grpc::routes(gateway, config.max_request_size_bytes, stop_rx.clone())
            .await
            .map_err(|e| ServeError::Start(e.to_string()))?;

    let mut http_task = serve_http(http, app, http_workers(), &stop_rx)?;

    let incoming = tonic::transport::server::TcpIncoming::from(grpc).with_nodelay(Some(true));
    let grpc_server = tonic::transport::Server::builder()
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, until_true(stop_rx));
    let mut grpc_task = tokio::spawn(async move { grpc_server.await.map_err(ServeError::Grpc) });

    let joined = |r: Result<Result<(), ServeError>, tokio::task::JoinError>| match r {
        Ok(r) => r,
        Err(e) => Err(ServeError::Start(format!("a server task failed: {e}"))),
    };
    tokio::select! {
        () = shutdown => {}
        r = &mut http_task => return joined(r).and(Err(ServeError::Start("the HTTP server stopped".into()))),
        r = &mut grpc_task => return joined(r).and(Err(ServeError::Start("the gRPC server stopped".into()))),
    }
    tracing::info!(
        grace_s = opts.grace.as_secs(),
        "shutting down: no new connections; letting in-flight requests finish"
    );
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(opts.grace, async {
        let h = joined(http_task.await);
        let g = joined(grpc_task.await);
        h.and(g)
    })
    .await;
    let result = match drained {
        Ok(r) => r,
        Err(_) => {
            tracing::warn!("grace period over: cutting the requests still running");
            Ok(())
        }
    };
    // Every finished request's spend record is written before we exit.
    match spend.flush_and_close().await {
        Ok(()) => tracing::info!(written = spend.written(), "spend records flushed"),
        Err(e) => tracing::error!("spend records not all written at shutdown: {e}"),
    }
    let _ = spend_task.await;
    let _ = health_task.await;
    store.close().await;
    result
}
