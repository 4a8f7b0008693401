//! The body of a request to a backend: streamed from the client, streamed with a shadow copy
//! taken on the way, or buffered. One enum rather than nested `Either`s, so that the common
//! case, a body streamed as it came, is polled as directly as before shadows existed.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::shadow::tee::Teed;

/// Body of a request to a backend.
pub enum UpstreamBody {
    /// Streamed from the client.
    Streamed(Incoming),
    /// Streamed from the client, a shadow copy taken on the way.
    Teed(Teed<Incoming>),
    /// Buffered for a replay, or a shadow copy.
    Buffered(Full<Bytes>),
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            UpstreamBody::Streamed(body) => Pin::new(body).poll_frame(cx),
            UpstreamBody::Teed(body) => Pin::new(body).poll_frame(cx),
            UpstreamBody::Buffered(body) => Pin::new(body)
                .poll_frame(cx)
                .map_err(|never| match never {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Streamed(body) => body.is_end_stream(),
            UpstreamBody::Teed(body) => body.is_end_stream(),
            UpstreamBody::Buffered(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Streamed(body) => body.size_hint(),
            UpstreamBody::Teed(body) => body.size_hint(),
            UpstreamBody::Buffered(body) => body.size_hint(),
        }
    }
}
