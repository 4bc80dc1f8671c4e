//! The gateway's one upstream HTTP client, shared by every deployment.
//!
//! - `http://` upstreams (local and in-network hosts: vLLM, Ollama, LM Studio, an internal
//!   OpenAI-compatible service) go through [`Plain`]: HTTP/1.1 keep-alive connections on
//!   hyper's connection API, kept idle per worker thread and per host in a plain list. A call
//!   takes the most recently used connection that is still open, no hashing, no shared lock,
//!   and gives it back when its answer has been read to the end ([`UpstreamBody`]).
//! - `https://` upstreams go through hyper-util's pooled client over rustls with the webpki
//!   roots (HTTP/1.1, or HTTP/2 where TLS negotiates it), one pool per worker thread.
//!
//! Neither goes through `reqwest`: the gateway needs none of its redirect following, URL
//! handling or request cloning, and on a proxied call those showed up as about a tenth of the
//! gateway's own instructions per request. hyper-util's pool, in turn, hashes the host and
//! takes a lock twice per call and spawns a task per call to hand the connection back: about
//! a tenth of a plain request's instructions, which the plain-HTTP path does without.
//!
//! The doors run one single-threaded runtime per core (`crate::server`), and each calls
//! providers over its own connections, so a request and the connection task that carries it
//! stay on one thread (the worker is [`Workers::current`]).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HOST, USER_AGENT};
use http::uri::{Authority, Scheme};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use parking_lot::Mutex;
use tokio::time::Instant;
use tower::Service;

use crate::core::error::{Error, ErrorKind};
use crate::workers::Workers;

/// An answer whose body has not been read yet.
pub type UpstreamResponse = http::Response<UpstreamBody>;

type Pool = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Idle connections are closed after this long unused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Connecting may take this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// At most this many idle connections are kept per worker and host.
const MAX_IDLE_PER_HOST: usize = 512;

/// The client (cheap to clone: clones share the pools).
#[derive(Debug, Clone)]
pub struct HttpClient {
    /// Pool 0 serves every thread that is not a worker; pool `i + 1` serves worker `i`.
    shards: Arc<[Pool]>,
    plain: Arc<Plain>,
}

const AGENT: &str = concat!("ai-api/", env!("CARGO_PKG_VERSION"));

impl HttpClient {
    /// One pool for the shared runtime (shard 0) and one per worker thread (shards
    /// `1..=workers`), for each kind of upstream. No Nagle delay.
    pub fn new(workers: usize) -> Result<Self, String> {
        let shards = (0..=workers)
            .map(|_| Self::pool())
            .collect::<Result<Vec<_>, _>>()?;
        Ok(HttpClient {
            shards: shards.into(),
            plain: Arc::new(Plain {
                connector: connector(),
                workers: (0..=workers).map(|_| Mutex::new(Vec::new())).collect(),
            }),
        })
    }

    fn pool() -> Result<Pool, String> {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
            .map_err(|e| format!("cannot set up TLS: {e}"))?
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(connector());
        Ok(Client::builder(TokioExecutor::new())
            .pool_idle_timeout(IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .build(https))
    }

    /// Sends `body` (JSON: the headers carry its content type). The status is not judged
    /// here.
    pub async fn send_json(
        &self,
        mut call: UpstreamRequest,
        body: Vec<u8>,
    ) -> Result<UpstreamResponse, Error> {
        // Written into its place (see `FixedHeaders::json`); hyper keeps a length it is given.
        call.headers
            .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        let shard = Workers::current().map_or(0, |i| i + 1) % self.shards.len();
        if call.target.0.uri.scheme() == Some(&Scheme::HTTP) {
            // Boxed, as hyper-util's client boxes its own: the call's states would otherwise
            // add about a kilobyte to every request's future, copied on every move.
            return Box::pin(Plain::send(&self.plain, shard, call, body)).await;
        }
        let mut req = Request::new(Full::new(Bytes::from(body)));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = call.target.0.uri.clone();
        *req.headers_mut() = call.headers;
        let resp = self.shards[shard]
            .request(req)
            .await
            .map_err(legacy_error)?;
        Ok(resp.map(|inner| UpstreamBody {
            inner,
            checkin: None,
        }))
    }
}

fn connector() -> HttpConnector {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    http
}

/// Idle HTTP/1.1 connections to `http://` upstreams, per worker (indexed as
/// `HttpClient::shards`) and per host. Each worker's lock is only ever taken by that worker
/// (shard 0 excepted), so it is never contended.
#[derive(Debug)]
struct Plain {
    connector: HttpConnector,
    workers: Box<[Mutex<Vec<Host>>]>,
}

/// One host's idle connections, the most recently used last.
#[derive(Debug)]
struct Host {
    authority: Authority,
    idle: Vec<Idle>,
}

#[derive(Debug)]
struct Idle {
    sender: http1::SendRequest<Full<Bytes>>,
    since: Instant,
}

/// What gives a connection back once its answer has been read to the end.
#[derive(Debug)]
struct Checkin {
    plain: Arc<Plain>,
    shard: usize,
    authority: Authority,
    sender: http1::SendRequest<Full<Bytes>>,
}

impl Plain {
    async fn send(
        plain: &Arc<Plain>,
        shard: usize,
        call: UpstreamRequest,
        body: Vec<u8>,
    ) -> Result<UpstreamResponse, Error> {
        let UpstreamRequest { target, headers } = call;
        let target = &target.0;
        let authority = target.authority.clone();
        let mut req = Request::new(Full::new(Bytes::from(body)));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = target.origin.clone();
        *req.headers_mut() = headers;

        // An idle connection first; one that turns out closed is dropped, and the request,
        // never sent on it, goes on the next.
        while let Some(mut sender) = plain.checkout(shard, &authority) {
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(plain.answer(shard, authority, sender, resp)),
                Err(mut e) => match e.take_message() {
                    Some(back) => req = back,
                    None => return Err(call_error(&e.into_error())),
                },
            }
        }

        // A new connection; its futures are boxed, so that the usual call (an idle
        // connection) does not carry their size through every state of the request.
        Box::pin(plain.connect_and_send(shard, target.uri.clone(), authority, req)).await
    }

    async fn connect_and_send(
        self: &Arc<Self>,
        shard: usize,
        uri: Uri,
        authority: Authority,
        req: Request<Full<Bytes>>,
    ) -> Result<UpstreamResponse, Error> {
        let io = self
            .connector
            .clone()
            .call(uri)
            .await
            .map_err(|e| connect_error(&e))?;
        // Flat writes: a request's head and JSON body leave in one `write` from one buffer,
        // cheaper for a small body than hyper's queue of buffers for `writev`.
        let (mut sender, conn) = http1::Builder::new()
            .writev(false)
            .handshake(io)
            .await
            .map_err(|e| connect_error(&e))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection closed with an error");
            }
        });
        let resp = sender.send_request(req).await.map_err(|e| call_error(&e))?;
        Ok(self.answer(shard, authority, sender, resp))
    }

    fn answer(
        self: &Arc<Self>,
        shard: usize,
        authority: Authority,
        sender: http1::SendRequest<Full<Bytes>>,
        resp: http::Response<Incoming>,
    ) -> UpstreamResponse {
        resp.map(|inner| UpstreamBody {
            inner,
            checkin: Some(Checkin {
                plain: Arc::clone(self),
                shard,
                authority,
                sender,
            }),
        })
    }

    /// The most recently used idle connection to `authority` that is not known to be closed
    /// or too old.
    fn checkout(
        &self,
        shard: usize,
        authority: &Authority,
    ) -> Option<http1::SendRequest<Full<Bytes>>> {
        let mut hosts = self.workers[shard].lock();
        let host = hosts.iter_mut().find(|h| h.authority == *authority)?;
        while let Some(idle) = host.idle.pop() {
            if idle.since.elapsed() >= IDLE_TIMEOUT {
                // The rest are older still.
                host.idle.clear();
                return None;
            }
            if !idle.sender.is_closed() {
                return Some(idle.sender);
            }
        }
        None
    }

    /// Keeps a connection whose answer has been read to the end, dropping the oldest idle one
    /// if it has been unused too long (or the host has too many).
    fn checkin(&self, shard: usize, authority: Authority, sender: http1::SendRequest<Full<Bytes>>) {
        if sender.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut hosts = self.workers[shard].lock();
        let host = match hosts.iter().position(|h| h.authority == authority) {
            Some(i) => &mut hosts[i],
            None => {
                hosts.push(Host {
                    authority,
                    idle: Vec::new(),
                });
                let last = hosts.len() - 1;
                &mut hosts[last]
            }
        };
        if host
            .idle
            .first()
            .is_some_and(|i| now - i.since >= IDLE_TIMEOUT)
            || host.idle.len() >= MAX_IDLE_PER_HOST
        {
            host.idle.remove(0);
        }
        host.idle.push(Idle { sender, since: now });
    }
}

/// An answer's body. On a plain-HTTP connection, reading it to the end gives the connection
/// back for the next call; dropping it earlier closes the connection (HTTP/1.1 cannot skip
/// the rest of an answer).
#[derive(Debug)]
pub struct UpstreamBody {
    inner: Incoming,
    checkin: Option<Checkin>,
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        let ended = match &polled {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => this.inner.is_end_stream(),
            _ => false,
        };
        if ended && let Some(c) = this.checkin.take() {
            c.plain.checkin(c.shard, c.authority, c.sender);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The headers a deployment sends on every call (content type, user agent, its key, API
/// version, organization), built once when the deployment is set up rather than per call.
#[derive(Debug, Clone)]
pub struct FixedHeaders(HeaderMap);

impl FixedHeaders {
    /// `Content-Type: application/json` and ai-api's user agent, after places for the `Host`
    /// header that [`UpstreamRequest::post`] fills and the `Content-Length` that
    /// [`HttpClient::send_json`] does: a copy of a map has no room to spare, so adding a
    /// header to it (as hyper adds the length) moves every entry to a larger allocation.
    pub fn json() -> Self {
        let mut h = HeaderMap::with_capacity(8);
        h.insert(HOST, HeaderValue::from_static(""));
        h.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(USER_AGENT, HeaderValue::from_static(AGENT));
        FixedHeaders(h)
    }

    /// Adds a header; a value that cannot be a header (a key with a line break, say) is a
    /// configuration error that names the header, never its value.
    pub fn header(self, name: &'static str, value: &str) -> Result<Self, Error> {
        self.insert(HeaderName::from_static(name), value, false)
    }

    /// `Authorization: Bearer <key>`, marked sensitive.
    pub fn bearer_auth(self, key: &str) -> Result<Self, Error> {
        self.insert(AUTHORIZATION, &format!("Bearer {key}"), true)
    }

    /// A key header (`x-api-key`, `api-key`, `x-goog-api-key`), marked sensitive.
    pub fn key_header(self, name: &'static str, key: &str) -> Result<Self, Error> {
        self.insert(HeaderName::from_static(name), key, true)
    }

    fn insert(mut self, name: HeaderName, value: &str, sensitive: bool) -> Result<Self, Error> {
        let mut v = HeaderValue::from_str(value).map_err(|_| invalid_header(name.as_str()))?;
        v.set_sensitive(sensitive);
        self.0.insert(name, v);
        Ok(self)
    }
}

/// A call being prepared: where it goes and its headers.
#[derive(Debug, Clone)]
pub struct UpstreamRequest {
    target: Target,
    headers: HeaderMap,
}

impl UpstreamRequest {
    /// A POST to `target` with `headers`, both prepared once per deployment (see [`parse_uri`],
    /// [`FixedHeaders`]); either one's error is the call's.
    pub fn post(
        target: &Result<Target, String>,
        headers: &Result<FixedHeaders, Error>,
    ) -> Result<Self, Error> {
        let target = target.as_ref().map_err(|e| {
            Error::new(
                ErrorKind::Config,
                format!("the provider URL is not valid: {e}"),
            )
        })?;
        let mut headers = headers.as_ref().map_err(Clone::clone)?.0.clone();
        // Over TLS hyper-util's client writes the host itself (without any user info the URL
        // may carry); plain calls send the one prepared with the target.
        if target.0.uri.scheme() == Some(&Scheme::HTTP) {
            headers.insert(HOST, target.0.host.clone());
        } else {
            headers.remove(HOST);
        }
        Ok(UpstreamRequest {
            target: target.clone(),
            headers,
        })
    }
}

fn invalid_header(name: &str) -> Error {
    Error::new(
        ErrorKind::Config,
        format!("the provider's {name} header would not be a valid HTTP header value"),
    )
}

/// A provider URL, parsed once at startup with what a plain-HTTP call sends of it (its
/// `Host` header and its path and query) made ready, so no call rebuilds them; a call takes a
/// reference count, not copies of the parts.
#[derive(Debug, Clone)]
pub struct Target(Arc<TargetParts>);

#[derive(Debug)]
struct TargetParts {
    uri: Uri,
    /// What idle connections are kept by.
    authority: Authority,
    host: HeaderValue,
    origin: Uri,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.uri.fmt(f)
    }
}

/// Parses a provider URL once, at startup; the error keeps the URL for the log.
pub fn parse_uri(url: String) -> Result<Target, String> {
    let uri = match url.parse::<Uri>() {
        Ok(u) if u.scheme().is_some() && u.host().is_some() => u,
        Ok(_) => return Err(format!("{url}: not an absolute http(s) URL")),
        Err(e) => return Err(format!("{url}: {e}")),
    };
    let Some(authority) = uri.authority().cloned() else {
        return Err(format!("{url}: not an absolute http(s) URL"));
    };
    let host = HeaderValue::from_str(authority.as_str())
        .map_err(|_| format!("{url}: its host is not a valid Host header"))?;
    let origin = uri
        .path_and_query()
        .map_or_else(|| Uri::from_static("/"), |p| Uri::from(p.clone()));
    Ok(Target(Arc::new(TargetParts {
        uri,
        authority,
        host,
        origin,
    })))
}

/// An error and its causes, as one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut detail = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        detail = format!("{detail}: {s}");
        source = s.source();
    }
    detail
}

/// The provider could not be reached (never echoing the URL).
fn connect_error(e: &dyn std::error::Error) -> Error {
    Error::new(
        ErrorKind::Unavailable,
        format!("cannot connect to the provider: {}", chain(e)),
    )
}

/// A call that failed after the connection was made.
fn call_error(e: &dyn std::error::Error) -> Error {
    Error::bad_gateway(format!("the provider call failed: {}", chain(e)))
}

/// Maps a failure of hyper-util's client.
fn legacy_error(e: hyper_util::client::legacy::Error) -> Error {
    if e.is_connect() {
        connect_error(&e)
    } else {
        call_error(&e)
    }
}

/// Maps a failure while reading an answer's body.
pub fn body_error(e: hyper::Error) -> Error {
    if e.is_timeout() {
        Error::timeout(format!("the provider did not answer in time: {e}"))
    } else {
        Error::bad_gateway(format!("the provider's answer broke off: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_urls_must_be_absolute() {
        assert!(parse_uri("https://api.openai.com/v1/chat/completions".into()).is_ok());
        assert!(parse_uri("http://127.0.0.1:9/x?alt=sse".into()).is_ok());
        assert!(parse_uri("/v1/chat/completions".into()).is_err());
        assert!(parse_uri("not a url".into()).is_err());
    }

    #[test]
    fn a_parsed_url_keeps_its_host_header_and_request_target_ready() {
        let t = parse_uri("http://127.0.0.1:9/x?alt=sse".into()).unwrap();
        assert_eq!(t.0.host, "127.0.0.1:9");
        assert_eq!(t.0.authority, "127.0.0.1:9");
        assert_eq!(t.0.origin, "/x?alt=sse");
        assert_eq!(t.to_string(), "http://127.0.0.1:9/x?alt=sse");
        let t = parse_uri("http://ollama.internal".into()).unwrap();
        assert_eq!(t.0.host, "ollama.internal");
        assert_eq!(t.0.origin, "/");
    }

    #[test]
    fn header_values_are_checked_and_keys_marked_sensitive() {
        let uri = parse_uri("http://127.0.0.1:9/v1".into());
        let h = FixedHeaders::json();
        assert!(h.clone().header("anthropic-version", "bad\nvalue").is_err());
        let h = h
            .bearer_auth("sk-x")
            .unwrap()
            .key_header("x-api-key", "k")
            .unwrap();
        let r = UpstreamRequest::post(&uri, &Ok(h)).unwrap();
        assert!(r.headers[AUTHORIZATION].is_sensitive());
        assert!(r.headers["x-api-key"].is_sensitive());
        assert_eq!(r.headers[AUTHORIZATION], "Bearer sk-x");
        assert_eq!(r.headers[HOST], "127.0.0.1:9");
        let tls = parse_uri("https://api.example.com/v1".into());
        let r = UpstreamRequest::post(&tls, &Ok(FixedHeaders::json())).unwrap();
        assert!(
            !r.headers.contains_key(HOST),
            "over TLS the client writes the host"
        );
    }
}
