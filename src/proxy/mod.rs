//! The request path, as phases over one per-request `Exchange`:
//!
//! 1. **check**: the head is well-formed enough to route ([`hygiene`], framing from the listener);
//! 2. **match**: the first route whose conditions hold (one snapshot load per request);
//! 3. **pick**: a backend by bucket, stable when killed or tripped;
//! 4. **forward**: rewrite the head ([`headers`]) and send it, replaying once on stable when a
//!    non-stable backend cannot be reached;
//! 5. **respond**: hop-by-hop removal, WebSocket tunnel, a body the kill switch can cut;
//! 6. **record** ([`exchange`]): status, latency and window for the backend that served, then
//!    the guard; when the response body ends ([`body`]), so a body cut short or stalled past
//!    `read_timeout` counts as the failure it is.
//!
//! A new capability attaches to one phase: a shadow copy to *forward*, an access-log line to
//! *record*. Nothing here takes a lock, touches a disk or waits for the control plane: a guard
//! trip is a message to it.

pub mod body;
mod exchange;
pub mod headers;
pub mod hygiene;
pub mod pool;
pub mod routing;
pub mod tunnel;
pub mod upstream;
pub mod upstream_body;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{HeaderValue, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HOST, UPGRADE};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;

use crate::access_log::{AccessLog, Entry};
use crate::control::guard::TripSender;
use crate::error::ProxyError;
use crate::listener::Peer;
use crate::shadow::copy::{self, PrimaryTap};
use crate::shadow::LiveShadow;
use crate::snapshot::{LiveSnapshot, Snapshot};
use body::{Relayed, ResponseBody};
use exchange::{Exchange, Outcome};
use hygiene::{Addressed, Rejection};
use routing::RequestHead;
use upstream::{Upstream, UpstreamBody};

static X_CUTOVER_ERROR: http::HeaderName = http::HeaderName::from_static("x-cutover-error");
static X_CUTOVER_FALLBACK: http::HeaderName = http::HeaderName::from_static("x-cutover-fallback");

/// Largest request body buffered so it can be replayed on the stable backend.
const MAX_REPLAY_BODY: u64 = 64 * 1024;

pub struct Proxy {
    live: Arc<LiveSnapshot>,
    /// Guard trips go to the control plane, which publishes the kill and persists it.
    trips: TripSender,
    access_log: Option<AccessLog>,
}

/// Why the forward phase has no response to relay.
enum Unanswered {
    /// Nothing reached a backend (the client's body or target failed first): cutover answers
    /// for itself, and no backend is counted.
    Unsent(ProxyError),
    /// A backend was tried and gave no usable response.
    Failed(ProxyError),
}

impl Proxy {
    pub fn new(live: Arc<LiveSnapshot>, trips: TripSender, access_log: Option<AccessLog>) -> Proxy {
        Proxy {
            live,
            trips,
            access_log,
        }
    }

    /// Serves one request from `peer`. `ambiguous_framing`: the raw head had conflicting
    /// length fields that hyper resolved on its own (see `listener::framing`).
    ///
    /// Not an `async fn`: one keeps a copy of each argument beside the locals made from it, and
    /// hyper moves every request's future whole a few times (measured with callgrind).
    #[allow(clippy::manual_async_fn)] // on purpose, see above
    pub fn handle(
        self: Arc<Self>,
        mut req: Request<Incoming>,
        peer: Peer,
        ambiguous_framing: bool,
    ) -> impl Future<Output = Response<ResponseBody>> + Send + 'static {
        async move {
            let started = Instant::now();

            // Check.
            let addressed = match check(&req, ambiguous_framing) {
                Ok(addressed) => addressed,
                Err(rejection) => return reject(rejection),
            };

            // Match and pick.
            let snapshot = self.live.load_full();
            let trusted = &snapshot.config.trusted_proxies;
            let peer_trusted = headers::is_trusted(peer.addr.ip(), trusted);
            let client_ip = headers::client_ip(peer.addr.ip(), req.headers(), trusted);
            let Some((mut exchange, copy)) =
                pick(snapshot, &req, addressed.as_ref(), client_ip, started)
            else {
                return local(
                    StatusCode::NOT_FOUND,
                    "no-route",
                    "cutover: no route\n".to_owned(),
                );
            };

            if let Some(log) = &self.access_log {
                exchange.access = Some((
                    start_entry(&req, addressed.as_ref(), client_ip, started),
                    log.clone(),
                ));
            }

            // Forward.
            let upgrade = if req.version() == Version::HTTP_11 {
                headers::websocket_upgrade(req.headers())
            } else {
                None
            };
            let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
            let slot = match copy {
                Some(shadow) if upgrade.is_none() => {
                    shadow.admit(started, fits(&req, shadow.max_body))
                }
                _ => None,
            };
            let (mut head, body) = req.into_parts();
            rewrite_head(
                &mut head,
                upgrade.clone(),
                addressed.as_ref(),
                &peer,
                peer_trusted,
            );
            if let Some((entry, _)) = &mut exchange.access {
                if let Some(id) = head.headers.get(&headers::X_REQUEST_ID) {
                    entry.set_request_id(id);
                }
                entry.shadow = slot.is_some();
            }
            let (body, tap) = match slot {
                Some(slot) => {
                    let (teed, tap) = copy::start(slot, &head, exchange.route().strip, body);
                    (UpstreamBody::Teed(teed), Some(tap))
                }
                None => (UpstreamBody::Streamed(body), None),
            };
            let forwarded = self
                .forward(&mut exchange, head, body, upgrade.is_some())
                .await;
            let response = match forwarded {
                Ok(response) => match valid_response(&response, client_upgrade.is_some()) {
                    Ok(()) => response,
                    Err(err) => return self.fail(exchange, &err),
                },
                Err(Unanswered::Failed(err)) => return self.fail(exchange, &err),
                Err(Unanswered::Unsent(err)) => {
                    exchange::log(&mut exchange, err.status(), Some(err.kind()), 0, false);
                    return local(
                        err.status(),
                        err.kind(),
                        format!("cutover: {}\n", err.describe()),
                    );
                }
            };

            // Respond; the body records the outcome when it ends.
            let trips = exchange.guarded().then(|| self.trips.clone());
            respond(exchange, response, upgrade, client_upgrade, trips, tap)
        }
    }

    /// Sends the request to the picked backend. A non-stable backend that cannot be reached
    /// gets an idempotent, small request replayed once on stable (`fallback: true`).
    /// Not an `async fn`, for the reason `handle` gives.
    #[allow(clippy::manual_async_fn)]
    fn forward<'a>(
        &'a self,
        exchange: &'a mut Exchange,
        head: Parts,
        body: UpstreamBody,
        upgrade: bool,
    ) -> impl Future<Output = Result<Response<Incoming>, Unanswered>> + Send + 'a {
        async move {
            let route = exchange.route();
            let strip = route.strip;
            let replayable =
                route.fallback && exchange.target != 0 && !upgrade && is_replayable(&head);
            if !replayable {
                let upstream = &exchange.target().backend;
                let request = outbound(upstream, head, strip, body)?;
                let sent = exchange.access.is_some().then(Instant::now);
                let answered = upstream.send(request).await;
                exchange.note_upstream(sent);
                return answered.map_err(Unanswered::Failed);
            }
            let body = Limited::new(body, MAX_REPLAY_BODY as usize)
                .collect()
                .await
                .map_err(|_| Unanswered::Unsent(ProxyError::ClientBody))?
                .to_bytes();
            let upstream = &exchange.target().backend;
            let first = outbound(
                upstream,
                headers::copy_head(&head),
                strip,
                UpstreamBody::Buffered(Full::new(body.clone())),
            )?;
            let sent = exchange.access.is_some().then(Instant::now);
            let first_answer = upstream.send(first).await;
            exchange.note_upstream(sent);
            let upstream = &exchange.target().backend;
            let err = match first_answer {
                Ok(response) => return Ok(response),
                Err(err) if err.allows_fallback() => err,
                Err(err) => return Err(Unanswered::Failed(err)),
            };
            // Count the failure where it happened, then replay on stable.
            self.observe(exchange, exchange.target, Outcome::Failed(&err));
            exchange.route().telemetry.fallbacks.increment(1);
            tracing::debug!(route = %exchange.route().name, backend = %upstream.name, error = ?err, "falling back to stable");
            exchange.target = 0;
            exchange.fell_back = true;
            let stable = &exchange.target().backend;
            let replay = outbound(stable, head, strip, UpstreamBody::Buffered(Full::new(body)))?;
            let sent = exchange.access.is_some().then(Instant::now);
            let answered = stable.send(replay).await;
            exchange.note_upstream(sent);
            answered.map_err(Unanswered::Failed)
        }
    }

    /// Answers a failed exchange with cutover's own error, and records it.
    fn fail(&self, mut exchange: Exchange, err: &ProxyError) -> Response<ResponseBody> {
        let response = upstream_error(&exchange.route().name, &exchange.target().backend.name, err);
        exchange::log(&mut exchange, err.status(), Some(err.kind()), 0, true);
        self.record(exchange, Outcome::Failed(err));
        response
    }

    /// The last phase when there is no body to relay: the failure is counted for the backend.
    #[inline]
    fn record(&self, exchange: Exchange, outcome: Outcome<'_>) {
        self.observe(&exchange, exchange.target, outcome);
    }

    #[inline]
    fn observe(&self, exchange: &Exchange, target: usize, outcome: Outcome<'_>) {
        exchange::observe(Some(&self.trips), exchange, target, outcome);
    }
}

/// The check phase: a request whose framing or addressing is ambiguous is never routed.
#[inline]
fn check<B>(req: &Request<B>, ambiguous_framing: bool) -> Result<Option<Addressed>, Rejection> {
    if ambiguous_framing {
        return Err(Rejection::AmbiguousFraming);
    }
    hygiene::inspect(req)
}

/// The match and pick phases, and whether the route's shadow wants a copy of the request.
/// Allocates nothing.
#[inline]
fn pick<B>(
    snapshot: Arc<Snapshot>,
    req: &Request<B>,
    addressed: Option<&Addressed>,
    client_ip: std::net::IpAddr,
    started: Instant,
) -> Option<(Exchange, Option<Arc<LiveShadow>>)> {
    let head = RequestHead {
        method: req.method(),
        path: req.uri().path(),
        query: req.uri().query(),
        host: addressed.map(Addressed::host),
        headers: req.headers(),
        client_ip,
    };
    let index = snapshot.find_route(&head)?;
    let route = &snapshot.routes[index];
    let bucket = route.bucket(&head);
    let target = bucket.map_or(0, |bucket| route.target_for_bucket(bucket));
    // Only what stable serves is copied: the candidate's answer is compared with stable's.
    let copy = match (&route.shadow, bucket) {
        (Some(shadow), Some(bucket))
            if target == 0 && shadow.wants(bucket, route.stable().upper_bucket, req.method()) =>
        {
            Some(shadow.clone())
        }
        _ => None,
    };
    let exchange = Exchange {
        started,
        snapshot,
        route: index,
        target,
        fell_back: false,
        bucket,
        access: None,
    };
    Some((exchange, copy))
}

/// The access log line as far as the request head tells it; the rest comes as the exchange
/// runs and ends.
fn start_entry<B: http_body::Body>(
    req: &Request<B>,
    addressed: Option<&Addressed>,
    client_ip: std::net::IpAddr,
    started: Instant,
) -> Box<Entry> {
    // Known when the head declares a length or there is no body at all (hyper's reading of
    // the head); `None` for a body of unknown length.
    let bytes_in = http_body::Body::size_hint(req.body()).exact();
    let mut entry = Entry::new(
        started,
        client_ip,
        req.method().clone(),
        req.uri().path(),
        addressed.map(|a| a.value.as_bytes()),
    );
    entry.bytes_in = bytes_in;
    Box::new(entry)
}

/// Whether a request body is small enough to copy, as far as its head says.
fn fits<B>(req: &Request<B>, max_body: usize) -> bool {
    declared_at_most(req.headers(), max_body as u64).unwrap_or(true)
}

/// Whether the `Content-Length` is at most `limit` (an unreadable one is not), or `None`
/// without one.
fn declared_at_most(headers: &http::HeaderMap, limit: u64) -> Option<bool> {
    headers.get(CONTENT_LENGTH).map(|length| {
        length
            .to_str()
            .ok()
            .and_then(|l| l.parse::<u64>().ok())
            .is_some_and(|l| l <= limit)
    })
}

/// The head as the backend must see it: hop-by-hop fields removed (a WebSocket `Upgrade`
/// kept), `Host` from the target when the client named it there, `X-Forwarded-*`, a request id.
#[inline]
fn rewrite_head(
    head: &mut Parts,
    upgrade: Option<HeaderValue>,
    addressed: Option<&Addressed>,
    peer: &Peer,
    peer_trusted: bool,
) {
    headers::strip_hop_by_hop(&mut head.headers);
    if let Some(upgrade) = upgrade {
        headers::restore_upgrade(&mut head.headers, upgrade);
    }
    if let Some(addressed) = addressed.filter(|a| a.from_target) {
        // Absolute-form and HTTP/2 requests name their host in the target, not `Host`.
        head.headers.insert(HOST, addressed.value.clone());
    }
    headers::set_forwarded(
        &mut head.headers,
        peer,
        addressed.map(|a| &a.value),
        peer_trusted,
    );
    headers::ensure_request_id(&mut head.headers);
}

/// A backend's response that could be read two ways, or a 101 nobody asked for, must not be
/// relayed in either reading.
fn valid_response<B>(response: &Response<B>, asked_upgrade: bool) -> Result<(), ProxyError> {
    let headers = response.headers();
    if headers.contains_key(http::header::TRANSFER_ENCODING) && headers.contains_key(CONTENT_LENGTH)
    {
        return Err(ProxyError::Protocol(
            "response with ambiguous framing".into(),
        ));
    }
    if response.status() == StatusCode::SWITCHING_PROTOCOLS && !asked_upgrade {
        return Err(ProxyError::Protocol(
            "101 to a request that asked for no upgrade".into(),
        ));
    }
    Ok(())
}

/// The respond phase: the backend's response as the client gets it. A 101 starts the tunnel;
/// anything from a non-stable backend can be cut by a kill after `kill_grace`. The body ends
/// the exchange (see [`body`]).
#[inline]
fn respond(
    exchange: Exchange,
    mut response: Response<Incoming>,
    upgrade: Option<HeaderValue>,
    client_upgrade: Option<OnUpgrade>,
    trips: Option<TripSender>,
    tap: Option<PrimaryTap>,
) -> Response<ResponseBody> {
    let route = exchange.route();
    let stable = exchange.target == 0;
    let grace = exchange.snapshot.config.kill_grace;
    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    // Only a 101 needs its Upgrade value, and stripping hop-by-hop headers removes it.
    let response_upgrade = switching
        .then(|| response.headers().get(UPGRADE).cloned())
        .flatten();
    headers::strip_hop_by_hop(response.headers_mut());
    if switching {
        if let (Some(client_upgrade), Some(value)) = (client_upgrade, response_upgrade.or(upgrade))
        {
            let backend_upgrade = hyper::upgrade::on(&mut response);
            let cut = (!stable).then(|| tunnel::cut_on_kill(&route.runtime.kill_signal, grace));
            tokio::spawn(tunnel::tunnel(client_upgrade, backend_upgrade, cut));
            headers::restore_upgrade(response.headers_mut(), value);
        }
    }
    if exchange.fell_back {
        response
            .headers_mut()
            .insert(X_CUTOVER_FALLBACK.clone(), HeaderValue::from_static("1"));
    }
    let cut = (!stable).then(|| {
        Box::pin(tunnel::cut_on_kill(&route.runtime.kill_signal, grace))
            as Pin<Box<dyn Future<Output = ()> + Send>>
    });
    let status = response.status();
    let capture = tap.and_then(|tap| {
        let length = http_body::Body::size_hint(response.body()).exact();
        tap.capture(status, response.headers(), length)
    });
    response.map(|body| {
        ResponseBody::Relayed(Relayed::new(body, exchange, status, trips, cut, capture))
    })
}

/// Idempotent, not an upgrade, and a body small enough to keep for a replay.
fn is_replayable(parts: &Parts) -> bool {
    let idempotent = matches!(
        parts.method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    );
    // Chunked bodies have no size up front; they are streamed, never replayed.
    let small = declared_at_most(&parts.headers, MAX_REPLAY_BODY)
        .unwrap_or_else(|| !parts.headers.contains_key(http::header::TRANSFER_ENCODING));
    idempotent && small
}

/// The request to send to `upstream`: the client's head, rewritten, with `body`.
fn outbound(
    upstream: &Upstream,
    mut head: Parts,
    strip: usize,
    body: UpstreamBody,
) -> Result<Request<UpstreamBody>, Unanswered> {
    head.uri = upstream
        .uri_for(&head.uri, strip)
        .map_err(|_| Unanswered::Unsent(ProxyError::BadTarget))?;
    head.version = upstream.version();
    Ok(Request::from_parts(head, body))
}

fn upstream_error(route: &str, backend: &str, err: &ProxyError) -> Response<ResponseBody> {
    tracing::debug!(route, backend, error = ?err, "upstream failure");
    local(
        err.status(),
        err.kind(),
        format!(
            "cutover: route {route}: backend {backend}: {}\n",
            err.describe()
        ),
    )
}

fn reject(rejection: Rejection) -> Response<ResponseBody> {
    let mut response = local(
        StatusCode::BAD_REQUEST,
        "bad-request",
        format!("cutover: {}\n", rejection.message()),
    );
    // The rest of the connection cannot be trusted to be framed the way we think.
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    response
}

/// A response cutover writes itself: short plain text and an `x-cutover-error` reason.
pub fn local(status: StatusCode, kind: &'static str, body: String) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::Local(Full::new(Bytes::from(body))));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(X_CUTOVER_ERROR.clone(), HeaderValue::from_static(kind));
    response
}

#[cfg(test)]
mod tests;
