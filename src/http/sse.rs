//! Server-Sent Events exactly as OpenAI sends them: `data: {chunk}` and a blank line per chunk,
//! then `data: [DONE]`. An error after the stream has started is a final `data: {"error": …}`
//! event and no `[DONE]`, so a client never mistakes it for a clean end. Each event is written
//! as soon as its chunk arrives.

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use futures_util::{Stream, StreamExt, stream};

use crate::core::ChatStream;
use crate::core::error::Error;
use crate::openai::{ChatCompletionChunk, ErrorBody};

/// `data: <json>` and a blank line, serialized straight into the event's buffer.
fn event(value: &impl serde::Serialize) -> Result<Bytes, serde_json::Error> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"data: ");
    serde_json::to_writer(&mut out, value)?;
    out.extend_from_slice(b"\n\n");
    Ok(Bytes::from(out))
}

fn error_event(e: &Error) -> Bytes {
    event(&ErrorBody::from(e)).unwrap_or_else(|_| Bytes::from_static(b"data: {}\n\n"))
}

/// The SSE body of a chat stream.
pub fn body(chunks: ChatStream) -> Body {
    Body::from_stream(events(chunks))
}

fn events(chunks: ChatStream) -> impl Stream<Item = Result<Bytes, Infallible>> + Send {
    // State: the chunk stream while it runs; `None` once the last event is out.
    stream::unfold(Some(chunks), |state| async move {
        let mut chunks = state?;
        match chunks.next().await {
            Some(Ok(chunk)) => {
                let bytes = match event(&ChatCompletionChunk::from(chunk)) {
                    Ok(bytes) => bytes,
                    Err(e) => {
                        let err = Error::internal(format!("cannot encode a chunk: {e}"));
                        return Some((Ok(error_event(&err)), None));
                    }
                };
                Some((Ok(bytes), Some(chunks)))
            }
            Some(Err(e)) => Some((Ok(error_event(&e)), None)),
            None => {
                drop(chunks);
                Some((Ok(Bytes::from_static(b"data: [DONE]\n\n")), None))
            }
        }
    })
}
