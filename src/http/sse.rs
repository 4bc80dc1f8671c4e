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

fn event(json: Vec<u8>) -> Bytes {
    let mut out = Vec::with_capacity(json.len() + 8);
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(&json);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

fn error_event(e: &Error) -> Bytes {
    event(serde_json::to_vec(&ErrorBody::from(e)).unwrap_or_default())
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
                let wire = ChatCompletionChunk::from(&chunk);
                let bytes = match serde_json::to_vec(&wire) {
                    Ok(json) => event(json),
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
