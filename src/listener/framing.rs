//! Finds request heads whose framing is ambiguous before hyper normalizes them away.
//!
//! Hyper resolves `Content-Length` + `Transfer-Encoding` as RFC 9112 permits (it drops the
//! length, decodes chunked, then closes), so the handler can no longer see that both were
//! sent. cutover's contract is stricter, like nginx: such a request is a smuggling attempt,
//! answered 400 and never forwarded. [`Sniffed`] wraps an HTTP/1 connection, follows message
//! boundaries in the bytes hyper reads (head, then a sized or chunked body), and records the
//! sequence number of every ambiguous head; the handler compares it with its own count.
//! It never changes a byte, and gives up (tracks nothing more) on anything it cannot follow,
//! such as an upgrade, leaving hyper's own checks in charge.
//!
//! Knowing where requests begin also tells the connection task when a keep-alive connection
//! waits for its next request with nothing half-read, so it can take the socket back from
//! hyper and hold it without hyper's buffers (see [`super::h1`]).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::timeouts::HeadTimer;

/// Heads larger than this are hyper's to reject (431); we stop following the connection.
const MAX_HEAD: usize = 64 * 1024;

/// Shared between the connection's reader and its request handler.
#[derive(Default)]
pub struct FramingWatch {
    /// 1-based number of the first ambiguous request head; 0 while there is none.
    ambiguous_head: AtomicU32,
    /// Requests the handler has taken from this connection.
    requests: AtomicU32,
    /// The last read is waiting for a new request head, with every byte so far part of a
    /// complete request.
    waiting_for_head: AtomicBool,
    /// The last write could not complete (hyper still holds bytes to send).
    write_blocked: AtomicBool,
    /// Set while the connection task takes the socket back from hyper: the shutdown hyper asks
    /// for on its way out must not reach the socket.
    parking: AtomicBool,
}

impl FramingWatch {
    /// Called once per request, in order: true when this request's head was ambiguous.
    pub fn next_request_is_ambiguous(&self) -> bool {
        let number = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        self.ambiguous_head.load(Ordering::Acquire) == number
    }

    /// True when the connection's reader waits for a new request and its writer has nothing
    /// stuck: hyper is between requests, holding only empty buffers.
    pub fn between_requests(&self) -> bool {
        self.waiting_for_head.load(Ordering::Relaxed) && !self.write_blocked.load(Ordering::Relaxed)
    }

    pub fn set_parking(&self, parking: bool) {
        self.parking.store(parking, Ordering::Relaxed);
    }
}

enum State {
    /// Reading a head; the bytes seen so far when it spans reads.
    Head,
    /// Skipping a sized body.
    Body(u64),
    Chunked(Chunk),
    /// Not following this connection any more.
    Off,
}

#[derive(Clone, Copy)]
enum Chunk {
    /// Reading the hex size; extensions up to LF are skipped.
    Size {
        size: u64,
        digits_done: bool,
    },
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// Trailer lines until an empty one; `line_len` counts non-CR bytes in the current line.
    Trailers {
        line_len: usize,
    },
}

pub struct Sniffed<S> {
    inner: S,
    state: State,
    partial_head: Vec<u8>,
    heads: u32,
    watch: Arc<FramingWatch>,
    /// Told after each read whether a head is on its way; ends a late one.
    head_timer: Option<HeadTimer>,
    /// Bytes already read (and observed) once, handed out again before the socket's.
    replay: Bytes,
}

impl<S> Sniffed<S> {
    pub fn new(inner: S, watch: Arc<FramingWatch>) -> Sniffed<S> {
        Sniffed {
            inner,
            state: State::Head,
            partial_head: Vec::new(),
            heads: 0,
            watch,
            head_timer: None,
            replay: Bytes::new(),
        }
    }

    pub fn watch(&self) -> &Arc<FramingWatch> {
        &self.watch
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Reads return `bytes` first: bytes hyper had read but not used when it let go of the
    /// connection. They were observed when first read, so they are not observed again.
    pub fn replay(&mut self, bytes: Bytes) {
        self.replay = bytes;
    }

    /// Frees what a long head or a replay left behind, for a connection about to sit idle.
    pub fn release_buffers(&mut self) {
        if self.partial_head.is_empty() {
            self.partial_head = Vec::new();
        }
        // An empty `Bytes` can still hold all of hyper's old read buffer.
        if self.replay.is_empty() {
            self.replay = Bytes::new();
        }
    }

    /// Records whether a write could complete, for [`FramingWatch::between_requests`].
    fn wrote<T>(&self, polled: Poll<T>) -> Poll<T> {
        self.watch
            .write_blocked
            .store(polled.is_pending(), Ordering::Relaxed);
        polled
    }

    /// Every byte read so far belongs to a complete request, and at least one came.
    fn at_request_boundary(&self) -> bool {
        matches!(self.state, State::Head)
            && self.heads > 0
            && self.partial_head.is_empty()
            && self.replay.is_empty()
    }

    /// Holds every request head on this connection to `timer` (see [`HeadTimer`]).
    pub fn with_head_timer(mut self, timer: HeadTimer) -> Sniffed<S> {
        self.head_timer = Some(timer);
        self
    }

    /// True while a request head is on its way: the first one until it is complete, a later
    /// one from its first byte. False between requests, in a body, or once not following.
    pub fn reading_head(&self) -> bool {
        matches!(self.state, State::Head) && (self.heads == 0 || !self.partial_head.is_empty())
    }

    pub(crate) fn observe(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            bytes = match self.state {
                State::Off => return,
                State::Head => self.observe_head(bytes),
                State::Body(remaining) => {
                    let take = remaining.min(bytes.len() as u64);
                    self.state = if take == remaining {
                        State::Head
                    } else {
                        State::Body(remaining - take)
                    };
                    &bytes[take as usize..]
                }
                State::Chunked(chunk) => self.observe_chunk(chunk, bytes),
            };
        }
    }

    /// Request heads completed so far, for the fuzz harness to ask about each.
    pub(crate) fn heads(&self) -> u32 {
        self.heads
    }

    fn observe_head<'a>(&mut self, bytes: &'a [u8]) -> &'a [u8] {
        // Blank lines before a request line are allowed (RFC 9112 §2.2).
        let bytes = if self.partial_head.is_empty() {
            let start = bytes.iter().position(|&b| b != b'\r' && b != b'\n');
            match start {
                Some(start) => &bytes[start..],
                None => return &[],
            }
        } else {
            bytes
        };
        if self.partial_head.is_empty() {
            if let Some(head_len) = head_end(bytes, 0) {
                self.head_complete(&bytes[..head_len]);
                return &bytes[head_len..];
            }
        } else {
            // Only a line end among the new bytes can complete the head.
            let searched = self.partial_head.len();
            self.partial_head.extend_from_slice(bytes);
            if let Some(head_len) = head_end(&self.partial_head, searched) {
                let rest = self.partial_head.len() - head_len;
                let head = std::mem::take(&mut self.partial_head);
                self.head_complete(&head[..head_len]);
                self.partial_head = head;
                self.partial_head.clear();
                return &bytes[bytes.len() - rest..];
            }
            if self.partial_head.len() > MAX_HEAD {
                self.state = State::Off;
            }
            return &[];
        }
        if bytes.len() > MAX_HEAD {
            self.state = State::Off;
        } else {
            self.partial_head.extend_from_slice(bytes);
        }
        &[]
    }

    fn head_complete(&mut self, head: &[u8]) {
        self.heads += 1;
        // Only the framing fields matter here, and hyper validates the rest; so a line scan,
        // not a full parse. memchr finds line ends faster than a byte-by-byte split.
        let mut start = 0;
        let mut lines = memchr::memchr_iter(b'\n', head).map(|end| {
            let line = &head[start..end];
            start = end + 1;
            line
        });
        let request_line = lines.next().unwrap_or_default();
        let mut content_length: Option<&[u8]> = None;
        let mut lengths_differ = false;
        let mut transfer_encoding = false;
        let mut chunked = false;
        let mut upgrade =
            request_line.starts_with(b"CONNECT ") || request_line.starts_with(b"PRI ");
        for line in lines {
            let Some(colon) = memchr::memchr(b':', line) else {
                continue;
            };
            let (name, value) = (&line[..colon], || line[colon + 1..].trim_ascii());
            // The name's length rules out most lines before any comparison.
            match name.len() {
                14 if name.eq_ignore_ascii_case(b"content-length") => {
                    let value = value();
                    lengths_differ |= content_length.is_some_and(|first| first != value);
                    content_length = Some(value);
                }
                17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                    transfer_encoding = true;
                    let last_coding = value().rsplit(|&b| b == b',').next().unwrap_or_default();
                    chunked = last_coding.trim_ascii().eq_ignore_ascii_case(b"chunked");
                }
                7 if name.eq_ignore_ascii_case(b"upgrade") => upgrade = true,
                _ => {}
            }
        }
        if (content_length.is_some() && transfer_encoding) || lengths_differ {
            let _ = self.watch.ambiguous_head.compare_exchange(
                0,
                self.heads,
                Ordering::Release,
                Ordering::Relaxed,
            );
            // Hyper closes the connection after this request; nothing after it matters.
            self.state = State::Off;
            return;
        }
        self.state = if upgrade || (transfer_encoding && !chunked) {
            // An upgrade leaves HTTP; a non-chunked coding is rejected by hyper.
            State::Off
        } else if transfer_encoding {
            State::Chunked(Chunk::Size {
                size: 0,
                digits_done: false,
            })
        } else if let Some(length) = content_length {
            match std::str::from_utf8(length)
                .ok()
                .and_then(|l| l.parse::<u64>().ok())
            {
                Some(0) => State::Head,
                Some(n) => State::Body(n),
                None => State::Off,
            }
        } else {
            State::Head
        };
    }

    fn observe_chunk<'a>(&mut self, chunk: Chunk, bytes: &'a [u8]) -> &'a [u8] {
        let mut chunk = chunk;
        let mut consumed = 0;
        for (i, &b) in bytes.iter().enumerate() {
            match chunk {
                Chunk::Size { size, digits_done } => {
                    if b == b'\n' {
                        chunk = if size == 0 {
                            Chunk::Trailers { line_len: 0 }
                        } else {
                            Chunk::Data(size)
                        };
                    } else if !digits_done && b.is_ascii_hexdigit() {
                        let digit = u64::from((b as char).to_digit(16).unwrap_or(0));
                        match size.checked_mul(16).and_then(|s| s.checked_add(digit)) {
                            Some(size) => chunk = Chunk::Size { size, digits_done },
                            None => {
                                self.state = State::Off;
                                return &[];
                            }
                        }
                    } else {
                        chunk = Chunk::Size {
                            size,
                            digits_done: true,
                        };
                    }
                }
                Chunk::Data(remaining) => {
                    let available = (bytes.len() - i) as u64;
                    let take = remaining.min(available);
                    self.state = State::Chunked(if take == remaining {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(remaining - take)
                    });
                    return &bytes[i + take as usize..];
                }
                Chunk::DataEnd => {
                    if b == b'\n' {
                        chunk = Chunk::Size {
                            size: 0,
                            digits_done: false,
                        };
                    }
                }
                Chunk::Trailers { line_len } => {
                    if b == b'\n' {
                        if line_len == 0 {
                            self.state = State::Head;
                            return &bytes[i + 1..];
                        }
                        chunk = Chunk::Trailers { line_len: 0 };
                    } else if b != b'\r' {
                        chunk = Chunk::Trailers {
                            line_len: line_len + 1,
                        };
                    }
                }
            }
            consumed = i + 1;
        }
        self.state = State::Chunked(chunk);
        &bytes[consumed..]
    }
}

/// The length of the head at the start of `bytes`: up to and including its empty line, found
/// among the line ends at `from` or later. A line ends in CRLF or, as hyper also accepts, a
/// bare LF; missing one would merge two heads and misnumber every head after them. Stepping
/// from one line end to the next is cheaper on a short head than a substring search.
fn head_end(bytes: &[u8], from: usize) -> Option<usize> {
    memchr::memchr_iter(b'\n', &bytes[from..])
        .map(|i| from + i)
        .find(|&end| match end {
            0 => false,
            1 => bytes[0] == b'\n',
            _ => bytes[end - 1] == b'\n' || bytes[end - 2..end] == *b"\n\r",
        })
        .map(|end| end + 1)
}

impl<S: AsyncRead + Unpin> AsyncRead for Sniffed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.replay.is_empty() {
            let n = this.replay.len().min(buf.remaining());
            buf.put_slice(&this.replay[..n]);
            this.replay.advance(n);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        let waiting_for_head = polled.is_pending() && this.at_request_boundary();
        this.watch
            .waiting_for_head
            .store(waiting_for_head, Ordering::Relaxed);
        match polled {
            Poll::Ready(Ok(())) => {
                if !matches!(this.state, State::Off) {
                    let fresh = &buf.filled()[before..];
                    this.observe(fresh);
                }
                let reading_head = this.reading_head();
                if let Some(timer) = &mut this.head_timer {
                    timer.after_read(reading_head);
                }
            }
            Poll::Pending => {
                if let Some(late) = this.head_timer.as_mut().and_then(|t| t.poll_expired(cx)) {
                    return Poll::Ready(Err(late));
                }
            }
            Poll::Ready(Err(_)) => {}
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Sniffed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.wrote(polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.wrote(polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.watch.parking.load(Ordering::Relaxed) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heads_flagged(chunks: &[&[u8]]) -> (u32, Vec<bool>) {
        let watch = Arc::new(FramingWatch::default());
        let mut sniffed = Sniffed::new((), watch.clone());
        for chunk in chunks {
            sniffed.observe(chunk);
        }
        let flagged = (0..sniffed.heads)
            .map(|_| watch.next_request_is_ambiguous())
            .collect();
        (sniffed.heads, flagged)
    }

    #[test]
    fn follows_sized_and_chunked_bodies_to_the_next_head() {
        let stream: &[u8] = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
            POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\n\
            GET /c HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(heads_flagged(&[stream]), (3, vec![false, false, true]));
        // The same bytes one at a time.
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(heads_flagged(&bytes), (3, vec![false, false, true]));
    }

    #[test]
    fn differing_lengths_are_ambiguous() {
        let head: &[u8] =
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(heads_flagged(&[head]), (1, vec![true]));
    }

    #[test]
    fn a_head_ends_at_its_first_empty_line_whatever_its_line_ends() {
        let cases: [(&[u8], Option<usize>); 10] = [
            (b"", None),
            (b"a\r\n\r", None),
            (b"a\r\n\r\n", Some(5)),
            (b"a\n\n", Some(3)),
            (b"a\r\n\n", Some(4)),
            (b"a\n\r\nb", Some(4)),
            (b"a\r\r\nb\r\n\r\n", Some(9)),
            (b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET", Some(27)),
            (b"GET / HTTP/1.1\nHost: x\n\nGET", Some(24)),
            (b"a\r\nb: c\r\r\n", None),
        ];
        for (bytes, expected) in cases {
            assert_eq!(
                head_end(bytes, 0),
                expected,
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        // Split reads: the empty line completes in the new bytes.
        assert_eq!(head_end(b"a\r\n\r\n", 3), Some(5));
        assert_eq!(head_end(b"a\n\n", 2), Some(3));
    }

    #[test]
    fn framing_names_match_in_any_case_and_only_whole() {
        let head: &[u8] =
            b"POST / HTTP/1.1\r\nHost: x\r\nCONTENT-LENGTH: 1\r\nTransfer-encoding: chunked\r\n\r\n";
        assert_eq!(heads_flagged(&[head]), (1, vec![true]));
        // Lookalike names of the same or other lengths frame nothing.
        let head: &[u8] = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Lengtx: 1\r\n\
            Transfer-Encodings: chunked\r\nUpgrades: x\r\nContent-Length : 2\r\n\r\n";
        assert_eq!(heads_flagged(&[head, head]), (2, vec![false, false]));
    }

    #[test]
    fn a_body_that_looks_like_a_head_is_not_a_head() {
        let body = b"GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let head = format!(
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        assert_eq!(heads_flagged(&[head.as_bytes(), body]), (1, vec![false]));
    }
}
