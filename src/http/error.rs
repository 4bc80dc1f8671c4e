//! The HTTP door's error answer: every failure, ours or a provider's, as OpenAI's error JSON
//! with the status from the core's one table (and `retry-after` when known). Also the body
//! extractor, so a too-large or unreadable body gets the same shape, and JSON parsing that
//! names the field at fault.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use crate::core::error::{Error, ErrorKind};
use crate::openai::ErrorBody;

/// A core error on its way out of the HTTP door.
#[derive(Debug)]
pub struct HttpError(pub Error);

impl From<Error> for HttpError {
    fn from(e: Error) -> Self {
        HttpError(e)
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let e = self.0;
        let body = serde_json::to_vec(&ErrorBody::from(&e)).unwrap_or_default();
        let mut resp = (e.http_status(), body).into_response();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(after) = e.retry_after {
            let secs = after.as_secs_f64().ceil().max(1.0) as u64;
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                h.insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

/// The raw request body, within the configured size limit (413 in OpenAI's shape beyond it).
#[derive(Debug)]
pub struct Body(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = HttpError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Bytes::from_request(req, state).await {
            Ok(b) => Ok(Body(b)),
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(too_large())
            }
            Err(rejection) => Err(unreadable(rejection.body_text())),
        }
    }
}

/// The body within `limit` bytes, with [`Body`]'s errors (for a route served without the
/// router, whose `DefaultBodyLimit` layer is what [`Body`] reads its limit from).
pub(crate) async fn read_body(body: axum::body::Body, limit: usize) -> Result<Bytes, HttpError> {
    use http_body_util::{LengthLimitError, Limited};
    crate::body::collect(Limited::new(body, limit))
        .await
        .map_err(|e| match e.downcast_ref::<LengthLimitError>() {
            Some(_) => too_large(),
            None => unreadable(e),
        })
}

fn too_large() -> HttpError {
    HttpError(
        Error::new(
            ErrorKind::PayloadTooLarge,
            "the request body is larger than the gateway accepts (general_settings.max_request_size_mb)",
        )
        .with_code("request_too_large"),
    )
}

fn unreadable(why: impl std::fmt::Display) -> HttpError {
    HttpError(Error::bad_request(format!(
        "cannot read the request body: {why}"
    )))
}

/// Parses a JSON body; the error names the path of the field at fault.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, Error> {
    if body.is_empty() {
        return Err(
            Error::bad_request("the request body is empty; send a JSON object")
                .with_code("invalid_json"),
        );
    }
    // Tracking the path costs on every field; it is only needed to explain a failure, so a
    // body that parses is parsed once, without it.
    // UTF-8 checked once for the whole body rather than string by string (`from_slice`).
    match std::str::from_utf8(body).map(serde_json::from_str) {
        Ok(Ok(v)) => Ok(v),
        _ => parse_json_explained(body),
    }
}

/// The slow path of [`parse_json`]: parses again, tracking the path, for the error message.
fn parse_json_explained<T: DeserializeOwned>(body: &[u8]) -> Result<T, Error> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            // Not JSON at all: there is no field to name (the path would read `?`).
            return not_json(&inner);
        }
        let err = Error::bad_request(format!("invalid request: {path}: {inner}"));
        if path != "." && !path.is_empty() {
            err.with_param(path)
        } else {
            err
        }
    })?;
    // Text after the object (`{...} xyz`) is not JSON either.
    de.end().map_err(|e| not_json(&e))?;
    Ok(value)
}

fn not_json(e: &serde_json::Error) -> Error {
    Error::bad_request(format!("the request body is not valid JSON: {e}")).with_code("invalid_json")
}

#[cfg(test)]
mod tests {
    use super::parse_json;
    use crate::openai::ChatCompletionRequest;

    /// What `parse_json` takes, on its fast path or its explaining one, is exactly what
    /// serde_json takes, read the same.
    #[test]
    fn a_body_parses_as_serde_json_would_parse_it() {
        let head = r#"{"model":"m","messages":[{"role":"user","content":"#;
        let bodies = [
            format!(r#"{head}"a"}}]}}"#),
            format!(r#"{head}"a"}}]}}   "#),
            format!(r#"{head}"a"}}]}} xyz"#),
            format!(r#"{head}"a"}}],}}"#),
            format!("{head}\"a\\tb \u{e9} \\u00e9\\ud83d\\ude00 \\\" \\\\ \\/\"}}]}}"),
            format!("{head}\"a\tb\"}}]}}"),
            format!(r#"{head}"\ud800"}}]}}"#),
            format!(r#"{head}"\x"}}]}}"#),
            format!(r#"{head}"a"}}],"temperature":1e400}}"#),
            format!(r#"{head}"a"}}],"temperature":NaN}}"#),
            format!(r#"{head}"a"}}],"temperature":0.30000000000000004}}"#),
            format!(r#"{head}"a"}}],"n":01}}"#),
            format!(r#"{head}"a"}}],"max_tokens":1.0}}"#),
            format!(r#"{head}"a"}}],"max_tokens":99999999999}}"#),
            format!(
                r#"{head}"a"}}],"x":{{"big":123456789012345678901234567890,"neg":-0,"e":1E-7}}}}"#
            ),
            format!(r#"{head}"a"}}],"model":"again"}}"#),
            format!(r#"{head}[{{"type":"text","text":"hi"}}]}}],"stop":"x","tools":[]}}"#),
            r#"{"model":"m","messages":"no"}"#.to_string(),
            "[]".to_string(),
            "{".to_string(),
        ];
        for body in &bodies {
            let ours = parse_json::<ChatCompletionRequest>(body.as_bytes());
            let theirs = serde_json::from_str::<ChatCompletionRequest>(body);
            match (ours, theirs) {
                (Ok(a), Ok(b)) => assert_eq!(
                    serde_json::to_value(a).unwrap(),
                    serde_json::to_value(b).unwrap(),
                    "{body}"
                ),
                (Err(_), Err(_)) => {}
                (a, b) => panic!("{body}: ours {:?}, serde_json {:?}", a.is_ok(), b.is_ok()),
            }
        }
    }
}
