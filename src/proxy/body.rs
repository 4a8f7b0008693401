//! The body of every response cutover sends to a client: relayed from a backend (possibly
//! cut off when its route is killed), or written by cutover itself.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub enum ResponseBody {
    Relayed(Incoming),
    /// Relayed until `cut` resolves (the route was killed and `kill_grace` passed).
    Cuttable {
        inner: Incoming,
        cut: Pin<Box<dyn Future<Output = ()> + Send>>,
    },
    Local(Full<Bytes>),
}

#[derive(Debug, thiserror::Error)]
#[error("route killed: stream to a non-stable backend closed after kill_grace")]
pub struct KilledStream;

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ResponseBody::Relayed(inner) => Pin::new(inner).poll_frame(cx).map_err(Into::into),
            ResponseBody::Cuttable { inner, cut } => {
                if cut.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Some(Err(KilledStream.into())));
                }
                Pin::new(inner).poll_frame(cx).map_err(Into::into)
            }
            ResponseBody::Local(full) => Pin::new(full)
                .poll_frame(cx)
                .map_err(|never| match never {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Relayed(inner) | ResponseBody::Cuttable { inner, .. } => {
                inner.is_end_stream()
            }
            ResponseBody::Local(full) => full.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Relayed(inner) | ResponseBody::Cuttable { inner, .. } => {
                inner.size_hint()
            }
            ResponseBody::Local(full) => full.size_hint(),
        }
    }
}
