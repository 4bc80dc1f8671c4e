//! The gateway's one upstream HTTP client: hyper's pooled client (HTTP/1.1, or HTTP/2 where
//! TLS negotiates it) over rustls with the webpki roots, shared by every deployment.
//!
//! It is hyper-util's client used directly rather than through `reqwest`: the gateway needs
//! none of reqwest's redirect following, URL handling or request cloning, and on a proxied
//! call those showed up as about a tenth of the gateway's own instructions per request.
//!
//! The pool is sharded by runtime: the doors run one single-threaded runtime per core
//! (`crate::server`), and each calls providers over its own connections, so a request and
//! the connection task that carries it stay on one thread (the pool is picked by
//! [`Workers::current`]).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::core::error::{Error, ErrorKind};
use crate::workers::Workers;

/// An answer whose body has not been read yet.
pub type UpstreamResponse = http::Response<hyper::body::Incoming>;

type Pool = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The pooled client (cheap to clone: clones share the pools).
#[derive(Debug, Clone)]
pub struct HttpClient {
    /// Pool 0 serves every thread that is not a worker; pool `i + 1` serves worker `i`.
    shards: Arc<[Pool]>,
}

const AGENT: &str = concat!("ai-api/", env!("CARGO_PKG_VERSION"));

impl HttpClient {
    /// One pool for the shared runtime (shard 0) and one per worker thread (shards
    /// `1..=workers`). Idle connections are kept 90 s; connecting may take 10 s; no Nagle delay.
    pub fn new(workers: usize) -> Result<Self, String> {
        let shards = (0..=workers)
            .map(|_| Self::pool())
            .collect::<Result<Vec<_>, _>>()?;
        Ok(HttpClient {
            shards: shards.into(),
        })
    }

    fn pool() -> Result<Pool, String> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_secs(10)));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
            .map_err(|e| format!("cannot set up TLS: {e}"))?
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(http);
        Ok(Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_timer(TokioTimer::new())
            .build(https))
    }

    /// Sends `body` (JSON: the headers carry its content type). The status is not judged
    /// here.
    pub async fn send_json(
        &self,
        call: UpstreamRequest,
        body: Vec<u8>,
    ) -> Result<UpstreamResponse, Error> {
        let mut req = Request::new(Full::new(Bytes::from(body)));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = call.uri;
        *req.headers_mut() = call.headers;
        let shard = Workers::current().map_or(0, |i| i + 1) % self.shards.len();
        self.shards[shard]
            .request(req)
            .await
            .map_err(transport_error)
    }
}

/// The headers a deployment sends on every call (content type, user agent, its key, API
/// version, organization), built once when the deployment is set up rather than per call.
#[derive(Debug, Clone)]
pub struct FixedHeaders(HeaderMap);

impl FixedHeaders {
    /// `Content-Type: application/json` and ai-api's user agent.
    pub fn json() -> Self {
        let mut h = HeaderMap::with_capacity(6);
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
    uri: Uri,
    headers: HeaderMap,
}

impl UpstreamRequest {
    /// A POST to `uri` with `headers`, both prepared once per deployment (see [`parse_uri`],
    /// [`FixedHeaders`]); either one's error is the call's.
    pub fn post(
        uri: &Result<Uri, String>,
        headers: &Result<FixedHeaders, Error>,
    ) -> Result<Self, Error> {
        let uri = uri.as_ref().map_err(|e| {
            Error::new(
                ErrorKind::Config,
                format!("the provider URL is not valid: {e}"),
            )
        })?;
        let headers = headers.as_ref().map_err(Clone::clone)?;
        Ok(UpstreamRequest {
            uri: uri.clone(),
            headers: headers.0.clone(),
        })
    }
}

fn invalid_header(name: &str) -> Error {
    Error::new(
        ErrorKind::Config,
        format!("the provider's {name} header would not be a valid HTTP header value"),
    )
}

/// Parses a provider URL once, at startup; the error keeps the URL for the log.
pub fn parse_uri(url: String) -> Result<Uri, String> {
    match url.parse::<Uri>() {
        Ok(u) if u.scheme().is_some() && u.host().is_some() => Ok(u),
        Ok(_) => Err(format!("{url}: not an absolute http(s) URL")),
        Err(e) => Err(format!("{url}: {e}")),
    }
}

/// Maps a failure to reach the provider (never echoing the URL).
fn transport_error(e: hyper_util::client::legacy::Error) -> Error {
    use std::error::Error as _;
    let mut detail = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        detail = format!("{detail}: {s}");
        source = s.source();
    }
    if e.is_connect() {
        Error::new(
            ErrorKind::Unavailable,
            format!("cannot connect to the provider: {detail}"),
        )
    } else {
        Error::bad_gateway(format!("the provider call failed: {detail}"))
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
    }
}
