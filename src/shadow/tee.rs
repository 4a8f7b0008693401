//! The request body as it streams to the primary, with a copy of its bytes kept for the shadow
//! request: the client's body is read once, at the primary's pace, and the copy costs at most
//! `max_body` bytes. A larger body, or one the client does not finish, is not copied.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use tokio::sync::oneshot;

pin_project_lite::pin_project! {
    /// Wraps the body sent to the primary. Once it ends, the copy goes to the [`TeeCopy`].
    pub struct Teed<B> {
        #[pin]
        inner: B,
        // `None` once there is nothing (more) to copy.
        copy: Option<Box<Copying>>,
    }
}

/// The bytes so far and where they go.
struct Copying {
    kept: BytesMut,
    max_body: usize,
    to_shadow: oneshot::Sender<Bytes>,
}

/// The shadow side, a future: resolves to the whole body once the primary's has been read to
/// its end, or to `None` when there is nothing to send (too large, cut short, or an error).
pub struct TeeCopy(oneshot::Receiver<Bytes>);

impl std::future::Future for TeeCopy {
    type Output = Option<Bytes>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        Pin::new(&mut self.0).poll(cx).map(Result::ok)
    }
}

/// Splits `body` into what the primary reads and the copy for the shadow request.
pub fn tee<B: Body>(body: B, max_body: usize) -> (Teed<B>, TeeCopy) {
    let (to_shadow, copied) = oneshot::channel();
    // A body that is already over is never polled (hyper checks first): copied now.
    let copy = if body.is_end_stream() {
        let _ = to_shadow.send(Bytes::new());
        None
    } else {
        Some(Box::new(Copying {
            kept: BytesMut::new(),
            max_body,
            to_shadow,
        }))
    };
    let teed = Teed { inner: body, copy };
    (teed, TeeCopy(copied))
}

impl<B: Body<Data = Bytes>> Body for Teed<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        if this.copy.is_none() {
            return this.inner.poll_frame(cx);
        }
        let frame = std::task::ready!(this.inner.as_mut().poll_frame(cx));
        // Whoever reads the body may stop at its last frame without asking for the end.
        let ended = frame.is_none() || this.inner.is_end_stream();
        match &frame {
            Some(Ok(frame)) => {
                if let (Some(data), Some(copy)) = (frame.data_ref(), this.copy.as_mut()) {
                    if copy.to_shadow.is_closed() {
                        // The copy gave up (its time ran out): keep nothing more.
                        *this.copy = None;
                    } else if copy.kept.len() + data.len() > copy.max_body {
                        // Too large to copy: the shadow side gets nothing.
                        *this.copy = None;
                    } else {
                        copy.kept.extend_from_slice(data);
                    }
                }
            }
            // The primary gets the error; there is no whole body to copy.
            Some(Err(_)) => *this.copy = None,
            None => {}
        }
        if ended {
            if let Some(copy) = this.copy.take() {
                let _ = copy.to_shadow.send(copy.kept.freeze());
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};

    type Frames = std::vec::IntoIter<Result<Frame<Bytes>, std::convert::Infallible>>;

    /// A body that arrives in `parts`, one frame each.
    fn chunks(parts: &[&'static str]) -> StreamBody<futures_util::stream::Iter<Frames>> {
        let frames: Vec<_> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn the_primary_reads_every_byte_and_the_copy_gets_them_once_it_ends() {
        let (teed, copy) = tee(chunks(&["hel", "lo ", "world"]), 64);
        let primary = teed.collect().await.unwrap().to_bytes();
        assert_eq!(primary, "hello world");
        assert_eq!(copy.await.as_deref(), Some(&b"hello world"[..]));
        // An empty body is copied as empty, not as nothing.
        let (teed, copy) = tee(Full::new(Bytes::new()), 64);
        teed.collect().await.unwrap();
        assert_eq!(copy.await.as_deref(), Some(&b""[..]));
    }

    #[tokio::test]
    async fn a_body_over_max_body_goes_to_the_primary_whole_and_is_not_copied() {
        let (teed, copy) = tee(chunks(&["12345", "67890", "x"]), 10);
        let primary = teed.collect().await.unwrap().to_bytes();
        assert_eq!(primary, "1234567890x");
        assert_eq!(copy.await, None);
        // Exactly max_body is copied.
        let (teed, copy) = tee(chunks(&["12345", "67890"]), 10);
        teed.collect().await.unwrap();
        assert_eq!(copy.await.as_deref(), Some(&b"1234567890"[..]));
    }

    /// Reads as hyper's client does: frames only while the body does not say it has ended.
    async fn read_like_hyper<B: Body<Data = Bytes> + Unpin>(mut body: B) -> Vec<u8>
    where
        B::Error: std::fmt::Debug,
    {
        let mut read = Vec::new();
        while !body.is_end_stream() {
            match body.frame().await {
                Some(frame) => read.extend_from_slice(&frame.unwrap().into_data().unwrap()),
                None => break,
            }
        }
        read
    }

    #[tokio::test]
    async fn a_reader_that_stops_at_the_last_frame_still_completes_the_copy() {
        let (teed, copy) = tee(Full::new(Bytes::from_static(b"sized")), 64);
        assert_eq!(read_like_hyper(teed).await, b"sized");
        assert_eq!(copy.await.as_deref(), Some(&b"sized"[..]));
        // Empty from the start: never polled at all.
        let (teed, copy) = tee(Full::new(Bytes::new()), 64);
        assert!(read_like_hyper(teed).await.is_empty());
        assert_eq!(copy.await.as_deref(), Some(&b""[..]));
    }

    #[tokio::test]
    async fn a_body_the_primary_never_finishes_is_not_copied() {
        let (mut teed, copy) = tee(chunks(&["part", "rest"]), 64);
        let first = teed.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "part");
        drop(teed);
        assert_eq!(copy.await, None);
    }
}
