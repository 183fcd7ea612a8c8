//! Reads a response body up to a size limit: a body that fits is stored; a bigger one (or
//! one with trailers) streams on to the client untouched, the part already read first.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

/// Boxed body errors, as axum uses them.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The outcome of [`read_limited`].
pub(crate) enum Read<B> {
    /// The whole body, within the limit.
    Whole(Bytes),
    /// Too big (or with trailers): the body to pass on as it is.
    Stream(Prefixed<B>),
}

/// Reads `body` whole if it is at most `max` bytes (and does not fail).
pub(crate) async fn read_limited<B>(mut body: B, max: usize) -> Read<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    if body.size_hint().lower() > max as u64 {
        return Read::Stream(Prefixed { prefix: VecDeque::new(), error: None, failed: false, rest: body });
    }
    let mut buf = BytesMut::new();
    let mut prefix = VecDeque::new();
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                prefix.push_back(Frame::data(buf.freeze()));
                return Read::Stream(Prefixed { prefix, error: Some(e.into()), failed: false, rest: body });
            }
        };
        match frame.into_data() {
            Ok(data) if buf.len() + data.len() <= max => buf.extend_from_slice(&data),
            Ok(data) => {
                prefix.push_back(Frame::data(buf.freeze()));
                prefix.push_back(Frame::data(data));
                return Read::Stream(Prefixed { prefix, error: None, failed: false, rest: body });
            }
            Err(trailers) => {
                prefix.push_back(Frame::data(buf.freeze()));
                prefix.push_back(trailers);
                return Read::Stream(Prefixed { prefix, error: None, failed: false, rest: body });
            }
        }
    }
    Read::Whole(buf.freeze())
}

/// Frames already read, then the error that stopped the reading or the rest of the body.
pub(crate) struct Prefixed<B> {
    prefix: VecDeque<Frame<Bytes>>,
    error: Option<BoxError>,
    /// The error was sent: the body ends there.
    failed: bool,
    rest: B,
}

impl<B> Body for Prefixed<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(f) = self.prefix.pop_front() {
            return Poll::Ready(Some(Ok(f)));
        }
        if let Some(e) = self.error.take() {
            self.failed = true;
            return Poll::Ready(Some(Err(e)));
        }
        if self.failed {
            return Poll::Ready(None);
        }
        Pin::new(&mut self.rest).poll_frame(cx).map(|o| o.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.failed || (self.prefix.is_empty() && self.error.is_none() && self.rest.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let pre: u64 = self.prefix.iter().filter_map(|f| f.data_ref()).map(|d| d.len() as u64).sum();
        let r = self.rest.size_hint();
        let mut h = SizeHint::new();
        h.set_lower(r.lower() + pre);
        if let Some(u) = r.upper() {
            h.set_upper(u + pre);
        }
        h
    }
}
