//! The floor of any Rust proxy on this machine: hyper's HTTP/1.1 server in front of hyper's
//! pooled client, the request and answer bodies passed through untouched (streams included),
//! one single-threaded runtime per core as ai-api's HTTP door runs. No JSON, no routing, no
//! auth, no logs, no metrics: whatever ai-api costs above this is ai-api's own; whatever this
//! costs above nginx is the price of hyper and Tokio themselves.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, Uri};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo};

#[derive(Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:18100")]
    listen: SocketAddr,
    /// The upstream, `http://host:port` (the request's path and query are appended).
    #[arg(long, default_value = "http://127.0.0.1:18000")]
    upstream: String,
    /// Single-threaded runtimes (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
}

type Out = BoxBody<Bytes, hyper::Error>;

async fn proxy(
    client: Client<HttpConnector, Incoming>,
    upstream: String,
    mut req: Request<Incoming>,
) -> Result<Response<Out>, Infallible> {
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let target: Result<Uri, _> = format!("{upstream}{path}").parse();
    let answer = match target {
        Ok(uri) => {
            *req.uri_mut() = uri;
            req.headers_mut().remove(hyper::header::HOST);
            client.request(req).await.map_err(|e| e.to_string())
        }
        Err(e) => Err(e.to_string()),
    };
    Ok(match answer {
        Ok(resp) => resp.map(BodyExt::boxed),
        Err(e) => {
            let body = http_body_util::Full::new(Bytes::from(e))
                .map_err(|never: Infallible| match never {})
                .boxed();
            let mut resp = Response::new(body);
            *resp.status_mut() = hyper::StatusCode::BAD_GATEWAY;
            resp
        }
    })
}

async fn serve(listener: std::net::TcpListener, upstream: String) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    let client: Client<HttpConnector, Incoming> = Client::builder(TokioExecutor::new()).build(http);
    loop {
        let (tcp, _) = listener.accept().await?;
        tcp.set_nodelay(true)?;
        let (client, upstream) = (client.clone(), upstream.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req| proxy(client.clone(), upstream.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let listener = std::net::TcpListener::bind(args.listen)?;
    listener.set_nonblocking(true)?;
    let mut handles = Vec::new();
    for _ in 0..threads {
        let (listener, upstream) = (listener.try_clone()?, args.upstream.clone());
        handles.push(std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(serve(listener, upstream))
        }));
    }
    for h in handles {
        h.join()
            .map_err(|_| std::io::Error::other("a worker thread panicked"))??;
    }
    Ok(())
}
