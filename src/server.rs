//! Running both doors over one core: takes already-bound listeners and a shutdown future (so
//! tests run the real server on port 0), stops accepting on shutdown, lets in-flight requests
//! and streams finish within the grace period, then returns.
//!
//! Both doors run on one single-threaded Tokio runtime per core ("workers"), each accepting on
//! the same listening sockets, as nginx runs one worker process per core: a request, its
//! upstream call and the connection task carrying it stay on one thread, with no
//! work-stealing hand-offs or cross-thread wake-ups (in front of the same upstream: 7.3-7.9k
//! req/s on one multi-threaded runtime, 10.6-11.4k this way). A connection stays with the
//! worker that accepted it, so one gRPC client multiplexing everything over one HTTP/2
//! connection is served by one core. The shared multi-threaded runtime keeps the background
//! work (spend writer, database, health watch). `AI_API_HTTP_WORKERS` sets the number of
//! workers.

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

/// How many single-threaded runtimes serve the doors: `AI_API_HTTP_WORKERS`, else one per
/// core.
fn workers() -> usize {
    std::env::var("AI_API_HTTP_WORKERS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// What every worker serves.
struct Doors {
    http: std::net::TcpListener,
    grpc: std::net::TcpListener,
    app: axum::Router,
    routes: tonic::service::Routes,
}

/// Starts `workers` threads, each a single-threaded runtime serving both doors on (duplicates
/// of) the two listening sockets, until `stop`. The task ends when all have drained, or with
/// the first error.
fn serve_doors(
    doors: Doors,
    workers: usize,
    stop: &watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<Result<(), ServeError>>, ServeError> {
    let mut done = Vec::with_capacity(workers);
    for i in 0..workers {
        let http = doors.http.try_clone().map_err(ServeError::Http)?;
        let grpc = doors.grpc.try_clone().map_err(ServeError::Http)?;
        let (app, routes, stop) = (doors.app.clone(), doors.routes.clone(), stop.clone());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ServeError::Http)?;
        std::thread::Builder::new()
            .name(format!("ai-api-worker-{i}"))
            .spawn(move || {
                // Shard 0 is the shared runtime's; each worker has its own upstream pool.
                crate::providers::client::set_shard(i + 1);
                let served = runtime.block_on(async move {
                    let http = TcpListener::from_std(http).map_err(ServeError::Http)?;
                    let grpc = TcpListener::from_std(grpc).map_err(ServeError::Http)?;
                    // No Nagle delay: every SSE chunk goes out as soon as it is written.
                    let http = http.tap_io(|tcp| {
                        if let Err(e) = tcp.set_nodelay(true) {
                            tracing::debug!("cannot set TCP_NODELAY: {e}");
                        }
                    });
                    let http = async {
                        axum::serve(http, app)
                            .with_graceful_shutdown(until_true(stop.clone()))
                            .await
                            .map_err(ServeError::Http)
                    };
                    let incoming =
                        tonic::transport::server::TcpIncoming::from(grpc).with_nodelay(Some(true));
                    let grpc = async {
                        tonic::transport::Server::builder()
                            .add_routes(routes)
                            .serve_with_incoming_shutdown(incoming, until_true(stop.clone()))
                            .await
                            .map_err(ServeError::Grpc)
                    };
                    tokio::try_join!(http, grpc).map(|_| ())
                });
                let _ = tx.send(served);
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
                Err(_) => return Err(ServeError::Start("a worker thread died".into())),
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

    let doors = Doors {
        http: http.into_std().map_err(ServeError::Http)?,
        grpc: grpc.into_std().map_err(ServeError::Http)?,
        app,
        routes,
    };
    let mut doors_task = serve_doors(doors, workers(), &stop_rx)?;

    let joined = |r: Result<Result<(), ServeError>, tokio::task::JoinError>| match r {
        Ok(r) => r,
        Err(e) => Err(ServeError::Start(format!("a server task failed: {e}"))),
    };
    tokio::select! {
        () = shutdown => {}
        r = &mut doors_task => return joined(r).and(Err(ServeError::Start("the servers stopped".into()))),
    }
    tracing::info!(
        grace_s = opts.grace.as_secs(),
        "shutting down: no new connections; letting in-flight requests finish"
    );
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(opts.grace, async { joined(doors_task.await) }).await;
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
