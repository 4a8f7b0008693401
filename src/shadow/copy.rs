//! One shadow copy, from the request path to its verdict.
//!
//! [`start`] is all the request path does: it tees the request body, spawns the copy's task
//! and returns a [`PrimaryTap`] that the primary's response body feeds as it streams to the
//! client ([`PrimaryCapture`]). The task waits for the body copy, sends it to the candidate
//! (and to the noise instance), reads the answer within `timeout`, waits for the primary's
//! answer, then compares, counts and keeps a sample. Nothing the candidate does reaches the
//! client: the task only ever reads from the primary's side.

use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::sync::oneshot;

use super::compare::Differences;
use super::live::{LiveShadow, Sample, ShadowResult, Slot};
use super::tee::{tee, TeeCopy, Teed};
use super::verdict::{self, Answer, BodyDigest};
use crate::error::ProxyError;
use crate::proxy::upstream::{Upstream, UpstreamBody};

static X_CUTOVER_SHADOW: HeaderName = HeaderName::from_static("x-cutover-shadow");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Methods that do not write (RFC 9110, 9.2.1): the only ones a noise instance gets.
fn is_safe(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// Differences kept per sample; all are counted.
const DIFFERENCES_PER_SAMPLE: usize = 20;
/// Bodies up to this much, together, are compared on the copy's task (tens of microseconds);
/// larger ones on the blocking pool.
const INLINE_COMPARE_BYTES: usize = 16 * 1024;

/// Starts a copy of the request whose rewritten `head` is about to go to stable with `body`.
/// Returns the body to send to stable and the tap for stable's answer.
pub fn start(
    slot: Slot,
    head: &Parts,
    strip: usize,
    body: Incoming,
) -> (Teed<Incoming>, PrimaryTap) {
    let max_body = slot.shadow().max_body;
    // The request body must be whole within `timeout` of the request's arrival; the copy's
    // own `timeout` starts when it is sent.
    let body_deadline = tokio::time::Instant::now() + slot.shadow().timeout;
    let (teed, body_copy) = tee(body, max_body);
    let (to_copy, primary) = oneshot::channel();
    let mut copy_head = crate::proxy::headers::copy_head(head);
    copy_head
        .headers
        .insert(X_CUTOVER_SHADOW.clone(), HeaderValue::from_static("1"));
    let copy = Copy {
        sample: SampleHead {
            method: head.method.clone(),
            path: head.uri.path().to_owned(),
            request_id: head
                .headers
                .get(&X_REQUEST_ID)
                .and_then(|id| id.to_str().ok())
                .map(str::to_owned),
        },
        head: copy_head,
        strip,
        body: body_copy,
        primary,
        body_deadline,
        slot,
    };
    tokio::spawn(copy.run());
    let tap = PrimaryTap {
        to_copy,
        max_body,
        head_request: head.method == Method::HEAD,
    };
    (teed, tap)
}

/// Where stable's answer goes once its body has streamed to the client.
pub struct PrimaryTap {
    to_copy: oneshot::Sender<Kept>,
    max_body: usize,
    head_request: bool,
}

impl PrimaryTap {
    /// Starts keeping stable's answer, whose head is `status` and `headers`, and whose body
    /// is `length` bytes when the head says so. An answer that has no body by definition (to
    /// a HEAD, a 204, a 304) is handed over at once: over HTTP/2 its body does not say it has
    /// ended before it is read, and nobody reads it.
    pub fn capture(
        self,
        status: StatusCode,
        headers: &HeaderMap,
        length: Option<u64>,
    ) -> Option<Box<PrimaryCapture>> {
        let bodiless = self.head_request
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        let mut body = BodyCapture::new(self.max_body);
        if bodiless {
            let _ = self.to_copy.send(Kept {
                status,
                headers: headers.clone(),
                body,
            });
            return None;
        }
        if length.is_some_and(|length| length > self.max_body as u64) {
            // Hashed frame by frame from the first: no burst when the limit is passed.
            body.digest = Some(BodyDigest::default());
        }
        Some(Box::new(PrimaryCapture {
            kept: Kept {
                status,
                headers: headers.clone(),
                body,
            },
            to_copy: self.to_copy,
        }))
    }
}

/// Stable's answer, kept frame by frame as it is relayed. Only what must happen as the frames
/// pass happens here; the rest (joining the frames) is left to the copy's task.
pub struct PrimaryCapture {
    kept: Kept,
    to_copy: oneshot::Sender<Kept>,
}

/// Stable's answer as kept, before it is made an [`Answer`].
struct Kept {
    status: StatusCode,
    headers: HeaderMap,
    body: BodyCapture,
}

impl Kept {
    fn answer(self) -> Answer {
        Answer {
            status: self.status,
            headers: self.headers,
            body: self.body.finish(),
        }
    }
}

impl PrimaryCapture {
    /// Keeps one data frame; false when the copy no longer waits for it (stop capturing).
    pub fn frame(&mut self, data: &Bytes) -> bool {
        if self.to_copy.is_closed() {
            return false;
        }
        self.kept.body.push(data);
        true
    }

    /// The body is complete: the answer goes to the copy.
    pub fn finish(self: Box<Self>) {
        let PrimaryCapture { kept, to_copy } = *self;
        let _ = to_copy.send(kept);
    }
}

/// A body as the comparison keeps it: whole up to `max_body`, else its length and SHA-256.
/// The whole body is kept as the frames it came in, so keeping it copies nothing.
struct BodyCapture {
    max_body: usize,
    kept: Vec<Bytes>,
    len: usize,
    digest: Option<BodyDigest>,
}

impl BodyCapture {
    fn new(max_body: usize) -> BodyCapture {
        BodyCapture {
            max_body,
            kept: Vec::new(),
            len: 0,
            digest: None,
        }
    }

    /// Bytes a comparison may have to parse (none for a digest).
    fn compared_bytes(&self) -> usize {
        match self.digest {
            Some(_) => 0,
            None => self.len,
        }
    }

    fn push(&mut self, data: &Bytes) {
        if let Some(digest) = &mut self.digest {
            digest.update(data);
            return;
        }
        self.len += data.len();
        if self.len <= self.max_body {
            self.kept.push(data.clone());
            return;
        }
        let mut digest = BodyDigest::default();
        for kept in self.kept.drain(..) {
            digest.update(&kept);
        }
        digest.update(data);
        self.digest = Some(digest);
    }

    fn finish(self) -> verdict::Body {
        if let Some(digest) = self.digest {
            return digest.finish();
        }
        match <[Bytes; 1]>::try_from(self.kept) {
            Ok([one]) => verdict::Body::Full(one),
            Err(kept) => {
                let mut whole = BytesMut::with_capacity(self.len);
                for part in kept {
                    whole.extend_from_slice(&part);
                }
                verdict::Body::Full(whole.freeze())
            }
        }
    }
}

/// What a sample says of the request.
struct SampleHead {
    method: Method,
    path: String,
    request_id: Option<String>,
}

struct Copy {
    slot: Slot,
    head: Parts,
    strip: usize,
    body: TeeCopy,
    primary: oneshot::Receiver<Kept>,
    body_deadline: tokio::time::Instant,
    sample: SampleHead,
}

impl Copy {
    async fn run(mut self) {
        let result = self.compare().await;
        self.slot.shadow().state.record(result);
    }

    async fn compare(&mut self) -> ShadowResult {
        let shadow = self.slot.shadow();
        let Ok(Some(body)) = tokio::time::timeout_at(self.body_deadline, &mut self.body).await
        else {
            // Larger than max_body, the client's body failed, was not read to its end, or did
            // not arrive within `timeout`: a slow client is not the candidate's fault.
            return ShadowResult::Dropped;
        };
        let deadline = tokio::time::Instant::now() + shadow.timeout;
        // Boxed: an exchange with a backend is a future of kilobytes, and without the boxes
        // spawning a copy moved three of them several times (measured with callgrind).
        let candidate = tokio::time::timeout_at(
            deadline,
            Box::pin(self.fetch(&shadow.candidate, body.clone(), shadow.max_body)),
        );
        // A noise instance is a stable one: it gets no writes, and a slow or failing one only
        // means nothing is learned from this request.
        let noise = async {
            match &shadow.noise {
                Some(noise) if is_safe(&self.sample.method) => {
                    let fetch = Box::pin(self.fetch(noise, body.clone(), shadow.max_body));
                    tokio::time::timeout_at(deadline, fetch).await.ok()?.ok()
                }
                _ => None,
            }
        };
        let (candidate, noise) = tokio::join!(candidate, noise);
        let candidate = match candidate {
            Ok(Ok(answer)) => answer,
            Err(_) => return ShadowResult::Timeout,
            Ok(Err(err)) => {
                tracing::debug!(backend = %shadow.candidate.name, error = ?err, "shadow copy failed");
                if matches!(err, ProxyError::Connect(_) | ProxyError::ConnectTimeout) {
                    shadow.state.candidate_down();
                }
                return match err {
                    ProxyError::Timeout | ProxyError::BodyTimeout | ProxyError::ConnectTimeout => {
                        ShadowResult::Timeout
                    }
                    _ => ShadowResult::Error,
                };
            }
        };
        let Ok(Ok(primary)) = tokio::time::timeout_at(deadline, &mut self.primary).await else {
            return ShadowResult::Dropped;
        };
        let statuses = (primary.status.as_u16(), candidate.status.as_u16());
        let weight = primary.body.compared_bytes()
            + candidate.body.compared_bytes()
            + noise.as_ref().map_or(0, |n| n.body.compared_bytes());
        let found = if weight <= INLINE_COMPARE_BYTES {
            judge(shadow, &primary.answer(), &candidate, noise.as_ref())
        } else {
            // Joining, parsing and walking large bodies takes milliseconds: off the workers
            // that serve requests.
            let shadow = self.slot.shared();
            let judged = tokio::task::spawn_blocking(move || {
                judge(&shadow, &primary.answer(), &candidate, noise.as_ref())
            });
            match judged.await {
                Ok(found) => found,
                Err(_) => return ShadowResult::Error,
            }
        };
        if found.is_empty() {
            return ShadowResult::Match;
        }
        if shadow.samples > 0 {
            shadow.state.keep_sample(
                Sample {
                    time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
                    method: self.sample.method.to_string(),
                    path: self.sample.path.clone(),
                    request_id: self.sample.request_id.clone(),
                    primary_status: statuses.0,
                    candidate_status: statuses.1,
                    differences_total: found.count,
                    differences: found.kept,
                },
                shadow.samples,
            );
        }
        ShadowResult::Mismatch
    }
}

/// The differences between stable's and the candidate's answers, after learning from the noise
/// instance's answer (learned noise applies while a noise instance teaches it).
fn judge(
    shadow: &LiveShadow,
    primary: &Answer,
    candidate: &Answer,
    noise: Option<&Answer>,
) -> Differences {
    let learned = match (&shadow.noise, noise) {
        (Some(_), Some(other)) => {
            let known = shadow.state.learned();
            // The documents are built and walked outside the lock.
            let places = verdict::noise_places(primary, other, &shadow.compare, &known);
            if places.is_empty() {
                known
            } else {
                shadow.state.learn(places)
            }
        }
        (Some(_), None) => shadow.state.learned(),
        (None, _) => Vec::new(),
    };
    verdict::differences(
        primary,
        candidate,
        &shadow.compare,
        &learned,
        DIFFERENCES_PER_SAMPLE,
    )
}

impl Copy {
    /// Sends the copy to `upstream` and reads its whole answer.
    async fn fetch(
        &self,
        upstream: &Upstream,
        body: Bytes,
        max_body: usize,
    ) -> Result<Answer, ProxyError> {
        let mut head = crate::proxy::headers::copy_head(&self.head);
        head.uri = upstream
            .uri_for(&self.head.uri, self.strip)
            .map_err(|_| ProxyError::BadTarget)?;
        head.version = upstream.version();
        let request = Request::from_parts(head, UpstreamBody::Buffered(Full::new(body)));
        let response = upstream.send(request).await?;
        let (parts, mut incoming) = response.into_parts();
        let mut captured = BodyCapture::new(max_body);
        while let Some(frame) = incoming.frame().await {
            let frame = frame.map_err(|err| ProxyError::from_body(&err))?;
            if let Some(data) = frame.data_ref() {
                captured.push(data);
            }
        }
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body: captured.finish(),
        })
    }
}
