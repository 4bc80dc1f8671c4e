//! Reading a whole HTTP body (a request's in the door, a provider's answer) into one buffer.

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;

/// The whole body as one `Bytes`. The usual body, one data frame, is handed back as it came,
/// with no copy and no allocation; `http_body_util`'s `collect` puts the frames in a queue
/// it allocates for every body (two per plain chat request, one each way). Bodies of several
/// frames are copied into one buffer; trailers are ignored.
pub(crate) async fn collect<B>(body: B) -> Result<Bytes, B::Error>
where
    B: hyper::body::Body<Data = Bytes>,
{
    let mut body = std::pin::pin!(body);
    let mut first = Bytes::new();
    let mut joined: Option<BytesMut> = None;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        match joined.as_mut() {
            Some(buf) => buf.extend_from_slice(&data),
            None if first.is_empty() => first = data,
            None => {
                let mut buf = BytesMut::with_capacity(first.len() + data.len());
                buf.extend_from_slice(&first);
                buf.extend_from_slice(&data);
                joined = Some(buf);
            }
        }
    }
    Ok(joined.map_or(first, BytesMut::freeze))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Full, StreamBody};

    fn frames(
        parts: &[&'static str],
    ) -> impl hyper::body::Body<Data = Bytes, Error = std::io::Error> {
        let frames = parts
            .iter()
            .map(|p| {
                Ok::<_, std::io::Error>(hyper::body::Frame::data(Bytes::from_static(p.as_bytes())))
            })
            .collect::<Vec<_>>();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn one_frame_is_kept_as_it_came_and_several_are_joined_in_order() {
        let one = Bytes::from_static(b"{\"a\":1}");
        let got = collect(Full::new(one.clone())).await.unwrap();
        assert_eq!(got, one);
        assert_eq!(got.as_ptr(), one.as_ptr(), "a single frame is not copied");

        let got = collect(frames(&["{\"a\"", "", ":", "12}"])).await.unwrap();
        assert_eq!(&got[..], b"{\"a\":12}");
        assert_eq!(collect(frames(&[])).await.unwrap(), Bytes::new());
        assert_eq!(&collect(frames(&["", "x"])).await.unwrap()[..], b"x");
    }

    #[tokio::test]
    async fn a_failing_frame_is_the_error() {
        let body = StreamBody::new(futures_util::stream::iter(vec![
            Ok(hyper::body::Frame::data(Bytes::from_static(b"ab"))),
            Err(std::io::Error::other("cut")),
        ]));
        let e = collect(body).await.unwrap_err();
        assert_eq!(e.to_string(), "cut");
    }
}
