//! The body of every response cutover sends to a client: relayed from a backend, or written by
//! cutover itself.
//!
//! A relayed body is where an exchange ends, so it records the outcome when it is done: a
//! complete body (or one the client stopped reading) counts by its status; a backend that
//! closes mid-body, or stalls past `read_timeout` between two reads, counts as a failure and
//! feeds the guard. The body then fails, so hyper closes the client's connection (or resets
//! the stream) and the client sees the truncation. A body from a non-stable backend is also cut
//! when its route is killed and `kill_grace` has passed.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use super::exchange::{log, observe, Exchange, Outcome};
use crate::control::guard::TripSender;
use crate::error::ProxyError;
use crate::shadow::copy::PrimaryCapture;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub enum ResponseBody {
    Relayed(Relayed),
    Local(Full<Bytes>),
}

#[derive(Debug, thiserror::Error)]
#[error("route killed: stream to a non-stable backend closed after kill_grace")]
pub struct KilledStream;

#[derive(Debug, thiserror::Error)]
#[error("backend response body stalled past read_timeout")]
pub struct StalledBody;

/// Largest data frame handed to hyper. Hyper copies each frame into the connection's write
/// buffer, which keeps its largest size for as long as the connection lives: a 1 MB chunk from
/// a backend would leave every idle keep-alive connection that relayed one holding ~1 MB.
const MAX_FRAME: usize = 16 * 1024;

/// A backend's response body on its way to the client.
pub struct Relayed {
    inner: Incoming,
    /// What is left of a data frame larger than [`MAX_FRAME`].
    rest: Bytes,
    /// Resolves when the route is killed and `kill_grace` passed (non-stable backends only).
    cut: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    /// Made on the first wait for the backend, then reused: most bodies never wait.
    stall: Option<Pin<Box<Sleep>>>,
    /// Whether `stall` runs from the current wait (it is reset after each frame).
    waiting: bool,
    /// Taken when the outcome is recorded: once, however the body ends.
    record: Option<Record>,
    /// Stable's answer kept for a shadow copy, until the body is complete.
    capture: Option<Box<PrimaryCapture>>,
}

struct Record {
    exchange: Exchange,
    status: StatusCode,
    /// Data bytes relayed so far, for the access log.
    bytes_out: u64,
    /// Only when a failure here could trip the route's guard.
    trips: Option<TripSender>,
}

impl Relayed {
    pub fn new(
        inner: Incoming,
        exchange: Exchange,
        status: StatusCode,
        trips: Option<TripSender>,
        cut: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
        capture: Option<Box<PrimaryCapture>>,
    ) -> Relayed {
        Relayed {
            inner,
            rest: Bytes::new(),
            cut,
            stall: None,
            waiting: false,
            record: Some(Record {
                exchange,
                status,
                bytes_out: 0,
                trips,
            }),
            capture,
        }
    }

    /// The backend's `read_timeout` (none is left to wait for once the exchange is recorded).
    fn read_timeout(&self) -> Duration {
        self.record
            .as_ref()
            .map_or(Duration::ZERO, |r| r.exchange.target().backend.read_timeout)
    }

    /// Records how the exchange ended: `failure`, or its status. `cut` names, for the access
    /// log, an end that is not the backend's failure (`killed`, `client-closed`).
    fn finish(&mut self, failure: Option<&ProxyError>, cut: Option<&'static str>) {
        if let Some(mut record) = self.record.take() {
            let outcome = match failure {
                Some(err) => Outcome::Failed(err),
                None => Outcome::Answered(record.status),
            };
            let exchange = &record.exchange;
            observe(record.trips.as_ref(), exchange, exchange.target, outcome);
            let error = failure.map(ProxyError::kind).or(cut);
            log(
                &mut record.exchange,
                record.status,
                error,
                record.bytes_out,
                true,
            );
        }
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(cut) = &mut self.cut {
            if cut.as_mut().poll(cx).is_ready() {
                // Cutover's decision, not the backend's failure.
                self.finish(None, Some("killed"));
                return Poll::Ready(Some(Err(KilledStream.into())));
            }
        }
        if !self.rest.is_empty() {
            let piece = self.rest.split_to(self.rest.len().min(MAX_FRAME));
            return Poll::Ready(Some(Ok(Frame::data(piece))));
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                self.waiting = false;
                if let (Some(record), Some(data)) = (&mut self.record, frame.data_ref()) {
                    record.bytes_out += data.len() as u64;
                }
                if self.capture.is_some() {
                    self.capture_frame(&frame);
                }
                match frame.into_data() {
                    Ok(mut data) if data.len() > MAX_FRAME => {
                        self.rest = data.split_off(MAX_FRAME);
                        Poll::Ready(Some(Ok(Frame::data(data))))
                    }
                    Ok(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
                    Err(frame) => Poll::Ready(Some(Ok(frame))),
                }
            }
            Poll::Ready(None) => {
                if let Some(capture) = self.capture.take() {
                    capture.finish();
                }
                self.finish(None, None);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(err))) => {
                // Stable's answer is incomplete: the copy compares nothing.
                self.capture = None;
                self.finish(Some(&ProxyError::from_body(&err)), None);
                Poll::Ready(Some(Err(err.into())))
            }
            Poll::Pending => {
                // The clock is read only when a wait begins, not on every wakeup within it.
                if !self.waiting {
                    self.waiting = true;
                    let at = Instant::now() + self.read_timeout();
                    match &mut self.stall {
                        Some(stall) => stall.as_mut().reset(at),
                        None => self.stall = Some(Box::pin(tokio::time::sleep_until(at))),
                    }
                }
                let Some(stall) = &mut self.stall else {
                    return Poll::Pending;
                };
                if stall.as_mut().poll(cx).is_ready() {
                    self.finish(Some(&ProxyError::BodyTimeout), None);
                    return Poll::Ready(Some(Err(StalledBody.into())));
                }
                Poll::Pending
            }
        }
    }
}

impl Relayed {
    /// Keeps a frame of stable's answer for the shadow copy, and hands the answer over as
    /// soon as the body says it is complete (hyper may not ask for the end after that).
    fn capture_frame(&mut self, frame: &Frame<Bytes>) {
        let Some(capture) = &mut self.capture else {
            return;
        };
        if let Some(data) = frame.data_ref() {
            if !capture.frame(data) {
                self.capture = None;
                return;
            }
        }
        if self.inner.is_end_stream() {
            if let Some(capture) = self.capture.take() {
                capture.finish();
            }
        }
    }
}

impl Drop for Relayed {
    /// Complete, or the client went away first: either way the backend answered.
    fn drop(&mut self) {
        // A body that was over before it was read (a HEAD, a 204) is never polled.
        if let Some(capture) = self.capture.take() {
            if self.inner.is_end_stream() {
                capture.finish();
            }
        }
        // Not ended yet: the client stopped reading (a body over before it was read, as for
        // a HEAD or a 204, is complete).
        let cut = (!self.inner.is_end_stream()).then_some("client-closed");
        self.finish(None, cut);
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ResponseBody::Relayed(relayed) => relayed.poll_frame(cx),
            ResponseBody::Local(full) => Pin::new(full)
                .poll_frame(cx)
                .map_err(|never| match never {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Relayed(relayed) => {
                relayed.rest.is_empty() && relayed.inner.is_end_stream()
            }
            ResponseBody::Local(full) => full.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Relayed(relayed) => {
                let mut hint = relayed.inner.size_hint();
                let rest = relayed.rest.len() as u64;
                hint.set_lower(hint.lower() + rest);
                if let Some(upper) = hint.upper() {
                    hint.set_upper(upper + rest);
                }
                hint
            }
            ResponseBody::Local(full) => full.size_hint(),
        }
    }
}
