//! Running both doors over one core: takes already-bound listeners and a shutdown future (so
//! tests run the real server on port 0), stops accepting on shutdown, lets in-flight requests
//! and streams finish within the grace period, then returns.
//!
//! Both doors run on one single-threaded Tokio runtime per core ("workers"), as nginx runs one
//! worker process per core: a request, its upstream call and the connection task carrying it
//! stay on one thread, with no work-stealing hand-offs or cross-thread wake-ups (in front of
//! the same upstream: 7.3-7.9k req/s on one multi-threaded runtime, 10.6-11.4k this way).
//! Connections are accepted on the shared runtime and handed to the workers in turn, so
//! long-lived client connections spread evenly (a worker keeps a connection for its life; a
//! gRPC call may still run on another worker when its own is saturated, `crate::workers`). The
//! shared multi-threaded runtime also keeps the background work (spend writer, database,
//! health watch). `AI_API_HTTP_WORKERS` sets the number of workers.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::config::Config;
use crate::core::router::{Clock, SystemClock};
use crate::core::{Deps, Gateway};
use crate::http::deadline::{Connections, Deadlines, Tracked, Watched};
use crate::http::{Door, HttpOptions};
use crate::store::{SpendWriter, SpendWriterOptions, Store};
use crate::workers::Workers;

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
    /// How long the HTTP door waits for a request head, for a paused request body, on an
    /// idle keep-alive connection and for a client to read its answer; on the gRPC door, for
    /// the HTTP/2 preface (the head's) and for a client to read.
    pub http_deadlines: Deadlines,
}

impl ServeOptions {
    pub fn new(root_path: impl Into<String>, grace: Duration) -> Self {
        ServeOptions {
            root_path: root_path.into(),
            grace,
            clock: Arc::new(SystemClock),
            database_url: None,
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            http_deadlines: Deadlines::default(),
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

/// How long a quiet worker spins after a request starts or ends (`AI_API_SPIN_US`, default
/// 100 µs, or 0 under a CPU quota; 0 turns spinning off): see [`crate::workers::spin`].
fn spin_window() -> Option<Duration> {
    let quota = || {
        let read = |p: &str| std::fs::read_to_string(p).ok();
        under_cpu_quota(
            read("/sys/fs/cgroup/cpu.max").as_deref(),
            read("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").as_deref(),
        )
    };
    let us = std::env::var("AI_API_SPIN_US")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or_else(|| if quota() { 0 } else { DEFAULT_SPIN_US });
    (us > 0).then(|| Duration::from_micros(us))
}

/// Whether the container's cgroup caps its CPU time (v2 `cpu.max` other than `max ...`, or a
/// positive v1 `cpu.cfs_quota_us`): spinning would spend the quota waiting, and a spent quota
/// stalls every request until the next period.
fn under_cpu_quota(cpu_max: Option<&str>, cfs_quota_us: Option<&str>) -> bool {
    if let Some(max) = cpu_max {
        return max.split_whitespace().next().is_some_and(|q| q != "max");
    }
    cfs_quota_us.is_some_and(|q| q.trim().parse::<i64>().is_ok_and(|q| q > 0))
}

/// The default of `AI_API_SPIN_US`.
pub const DEFAULT_SPIN_US: u64 = 100;

/// Connections handed to one worker, which its two servers take them from.
struct Handoff {
    rx: mpsc::UnboundedReceiver<std::net::TcpStream>,
}

impl Handoff {
    /// The next connection, registered with this worker's runtime; pending forever once the
    /// acceptor has stopped (the servers then stop on the shutdown signal).
    async fn next(&mut self) -> TcpStream {
        loop {
            let Some(tcp) = self.rx.recv().await else {
                return std::future::pending().await;
            };
            match TcpStream::from_std(tcp) {
                Ok(tcp) => return tcp,
                Err(e) => tracing::debug!("cannot take over a connection: {e}"),
            }
        }
    }
}

/// Accepts on `listener` until `stop` and hands each connection to the next worker in turn.
async fn hand_out(
    listener: TcpListener,
    workers: Vec<mpsc::UnboundedSender<std::net::TcpStream>>,
    stop: watch::Receiver<bool>,
) {
    let mut next = 0usize;
    let stopped = until_true(stop);
    tokio::pin!(stopped);
    loop {
        let accepted = tokio::select! {
            () = &mut stopped => return,
            r = listener.accept() => r,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // Out of file descriptors, say: wait a little rather than spin.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // No Nagle delay: every SSE chunk goes out as soon as it is written.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY: {e}");
        }
        let Ok(tcp) = tcp.into_std() else { continue };
        if let Some(worker) = workers.get(next % workers.len().max(1)) {
            let _ = worker.send(tcp);
        }
        next = next.wrapping_add(1);
    }
}

/// Serves the HTTP door on the connections handed to this worker until `stop`, then lets the
/// open connections finish their requests: what `axum::serve` does, on hyper's builder so the
/// HTTP/1 server writes flat — an answer's head and body leave in one `write` from one buffer,
/// which for a small JSON answer costs less than hyper's queue of buffers for `writev`. The
/// worker also closes its connections that keep it waiting for a request ([`Deadlines`]),
/// while it serves and while it drains.
async fn serve_http(
    mut conns: Handoff,
    door: Door,
    deadlines: Deadlines,
    stop: watch::Receiver<bool>,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto;

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().writev(false);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut watched = Connections::default();
    let mut sweep = deadlines.sweep_timer();
    let stopped = until_true(stop);
    tokio::pin!(stopped);
    loop {
        let tcp = tokio::select! {
            () = &mut stopped => break,
            _ = sweep.tick(), if !watched.is_empty() => {
                watched.sweep(&deadlines);
                continue;
            }
            tcp = conns.next() => tcp,
        };
        let watch = watched.add();
        let service = Tracked::new(door.clone(), Arc::clone(&watch));
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(Watched::new(tcp, watch)), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::trace!("HTTP connection ended with an error: {e}");
            }
        });
    }
    let drained = graceful.shutdown();
    tokio::pin!(drained);
    loop {
        tokio::select! {
            () = &mut drained => break,
            _ = sweep.tick() => watched.sweep(&deadlines),
        }
    }
}

/// Starts `workers` threads, each a single-threaded runtime serving both doors on the
/// connections handed to it, and the two acceptors on the shared runtime, until `stop`. The
/// task ends when all workers have drained, or with the first error.
fn serve_doors(
    http: TcpListener,
    grpc: TcpListener,
    (app, deadlines): (Door, Deadlines),
    services: crate::grpc::Services,
    (workers, pool): (usize, &Workers),
    stop: &watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<Result<(), ServeError>>, ServeError> {
    let mut done = Vec::with_capacity(workers);
    let (mut to_http, mut to_grpc) = (Vec::new(), Vec::new());
    let runtimes = pool.build(workers).map_err(ServeError::Http)?;
    // A worker whose own connections have drained keeps running until all have: calls moved
    // to it from another worker's connection finish there.
    let all_drained = Arc::new(tokio::sync::Barrier::new(workers));
    let spin = spin_window();
    for (i, runtime) in runtimes.into_iter().enumerate() {
        let (http_tx, http_rx) = mpsc::unbounded_channel();
        let (grpc_tx, grpc_rx) = mpsc::unbounded_channel();
        to_http.push(http_tx);
        to_grpc.push(grpc_tx);
        let http = Handoff { rx: http_rx };
        let grpc = Handoff { rx: grpc_rx };
        let (app, services, stop) = (app.clone(), services.clone(), stop.clone());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let all_drained = Arc::clone(&all_drained);
        std::thread::Builder::new()
            .name(format!("ai-api-worker-{i}"))
            .spawn(move || {
                // Also picks this worker's own upstream pool (pool 0 is the shared runtime's).
                Workers::enter(i);
                runtime.block_on(async move {
                    if let Some(window) = spin {
                        tokio::spawn(crate::workers::spin::spinner(window));
                    }
                    let http = async {
                        serve_http(http, app, deadlines, stop.clone()).await;
                        Ok::<(), ServeError>(())
                    };
                    let watched = Arc::new(parking_lot::Mutex::new(Connections::default()));
                    let incoming = futures_util::stream::unfold(grpc, |mut g| {
                        let watched = Arc::clone(&watched);
                        async move {
                            let tcp = g.next().await;
                            let watch = watched.lock().add_h2();
                            Some((Ok::<_, std::io::Error>(Watched::new(tcp, watch)), g))
                        }
                    });
                    let grpc = async {
                        let serve = tonic::transport::Server::builder()
                            .layer(services.api_first)
                            .add_routes(services.routes)
                            .serve_with_incoming_shutdown(incoming, until_true(stop.clone()));
                        // Sweeps the gRPC connections until they have drained.
                        let sweeping = async {
                            let mut sweep = deadlines.sweep_timer();
                            loop {
                                sweep.tick().await;
                                watched.lock().sweep(&deadlines);
                            }
                        };
                        tokio::select! {
                            served = serve => served.map_err(ServeError::Grpc),
                            () = sweeping => Ok(()),
                        }
                    };
                    let _ = tx.send(tokio::try_join!(http, grpc).map(|_| ()));
                    all_drained.wait().await;
                });
            })
            .map_err(ServeError::Http)?;
        done.push(rx);
    }
    tokio::spawn(hand_out(http, to_http, stop.clone()));
    tokio::spawn(hand_out(grpc, to_grpc, stop.clone()));
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
    let workers = workers();
    let deps = Deps {
        clock: Some(opts.clock.clone()),
        store: Some(store.clone()),
        spend: Some(spend.clone()),
        workers,
    };
    let gateway = Gateway::start(config, deps)
        .await
        .map_err(|e| ServeError::Start(e.message))?;
    let app = Door::new(
        gateway.clone(),
        &HttpOptions {
            root_path: opts.root_path.clone(),
            max_body_bytes: config.max_request_size_bytes,
        },
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let pool = Workers::default();
    let (services, health_task) = crate::grpc::routes(
        gateway,
        pool.clone(),
        config.max_request_size_bytes,
        stop_rx.clone(),
    )
    .await
    .map_err(|e| ServeError::Start(e.to_string()))?;

    let mut doors_task = serve_doors(
        http,
        grpc,
        (app, opts.http_deadlines),
        services,
        (workers, &pool),
        &stop_rx,
    )?;

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

#[cfg(test)]
mod tests {
    use super::under_cpu_quota;

    #[test]
    fn a_cpu_quota_is_read_from_cgroup_v2_or_v1() {
        assert!(!under_cpu_quota(Some("max 100000\n"), None));
        assert!(under_cpu_quota(Some("50000 100000\n"), None));
        assert!(!under_cpu_quota(None, Some("-1\n")));
        assert!(under_cpu_quota(None, Some("150000\n")));
        assert!(!under_cpu_quota(None, None));
        // v2 wins where both are mounted.
        assert!(!under_cpu_quota(Some("max 100000"), Some("150000")));
    }
}
