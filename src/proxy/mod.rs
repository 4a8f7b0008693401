//! The request path, top to bottom: check the head → match a route → pick a backend →
//! forward (with one fallback replay on stable) → record. It loads the live snapshot once per
//! request and takes no lock; only a guard trip, once, goes to [`Control`].

pub mod body;
pub mod headers;
pub mod hygiene;
pub mod pool;
pub mod routing;
pub mod upstream;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderValue, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HOST, UPGRADE};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::control::Control;
use crate::error::ProxyError;
use crate::proxy::body::ResponseBody;
use crate::proxy::routing::{PathMatch, RequestHead};
use crate::proxy::upstream::{Upstream, UpstreamBody};
use crate::snapshot::{LiveSnapshot, RouteRuntime, Snapshot, Target};
use headers::Peer;
use hygiene::{Addressed, Rejection};

static X_CUTOVER_ERROR: http::HeaderName = http::HeaderName::from_static("x-cutover-error");
static X_CUTOVER_FALLBACK: http::HeaderName = http::HeaderName::from_static("x-cutover-fallback");

/// Largest request body buffered so it can be replayed on the stable backend.
const MAX_REPLAY_BODY: u64 = 64 * 1024;

pub struct Proxy {
    live: Arc<LiveSnapshot>,
    control: Arc<Control>,
}

/// What the request path decided, carried from pick to record.
struct Decision {
    route: usize,
    target: usize,
    /// Bytes of the path the route's prefix covers, removed before forwarding.
    strip: usize,
}

impl Proxy {
    pub fn new(control: Arc<Control>) -> Proxy {
        Proxy {
            live: control.live(),
            control,
        }
    }

    /// Serves one request from `peer`. `ambiguous_framing`: the raw head had conflicting
    /// length fields that hyper resolved on its own (see `framing`).
    pub async fn handle(
        &self,
        mut req: Request<Incoming>,
        peer: Peer,
        ambiguous_framing: bool,
    ) -> Response<ResponseBody> {
        let started = Instant::now();
        if ambiguous_framing {
            return reject(Rejection::AmbiguousFraming);
        }
        let snapshot = self.live.load_full();
        let addressed = match hygiene::inspect(&req) {
            Ok(addressed) => addressed,
            Err(rejection) => return reject(rejection),
        };
        let trusted = &snapshot.config.trusted_proxies;
        let peer_ip = peer.addr.ip();
        let client_ip = headers::client_ip(peer_ip, req.headers(), trusted);

        // Match and pick.
        let host = addressed.as_ref().map(Addressed::host);
        let Some(decision) = decide(&snapshot, &req, host, client_ip) else {
            return local(
                StatusCode::NOT_FOUND,
                "no-route",
                "cutover: no route\n".to_owned(),
            );
        };
        let route = &snapshot.routes.routes[decision.route];
        let spec = &snapshot.config.routes[decision.route];
        let upstream = &snapshot.upstreams[route.targets[decision.target].backend];
        let stable = decision.target == 0;

        // Forward.
        let upgrade = if req.version() == Version::HTTP_11 {
            headers::websocket_upgrade(req.headers())
        } else {
            None
        };
        let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        if let Some(upgrade) = upgrade.clone() {
            headers::restore_upgrade(&mut parts.headers, upgrade);
        }
        if let Some(addressed) = addressed.as_ref().filter(|a| a.from_target) {
            // Absolute-form and HTTP/2 requests name their host in the target, not `Host`.
            parts.headers.insert(HOST, addressed.value.clone());
        }
        headers::set_forwarded(
            &mut parts.headers,
            &peer,
            addressed.as_ref().map(|a| &a.value),
            headers::is_trusted(peer_ip, trusted),
        );
        headers::ensure_request_id(&mut parts.headers);

        let replayable = spec.fallback && !stable && upgrade.is_none() && is_replayable(&parts);
        let result = if replayable {
            let body = match Limited::new(body, MAX_REPLAY_BODY as usize).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(_) => {
                    return local(
                        StatusCode::BAD_REQUEST,
                        "client-body",
                        "cutover: request body failed\n".to_owned(),
                    )
                }
            };
            self.send_with_fallback(&snapshot, &decision, parts, body, started)
                .await
        } else {
            match outbound(upstream, parts, decision.strip, Either::Left(body)) {
                Ok(request) => upstream
                    .send(request)
                    .await
                    .map(|r| (r, decision.target, false))
                    .map_err(|err| (err, decision.target)),
                Err(response) => return response,
            }
        };

        // Record.
        let (mut response, served_by, fell_back) = match result {
            Ok(served) => served,
            Err((err, failed)) => {
                let failed_decision = Decision {
                    target: failed,
                    ..decision
                };
                self.record_failure(&snapshot, &failed_decision, started, &err);
                let backend = &snapshot.upstreams[route.targets[failed].backend].name;
                return upstream_error(&route.name, backend, &err);
            }
        };
        let status = response.status();
        let served = &snapshot.targets[decision.route][served_by];
        let served_upstream = &snapshot.upstreams[route.targets[served_by].backend];
        if has_ambiguous_framing(response.headers())
            || (status == StatusCode::SWITCHING_PROTOCOLS && client_upgrade.is_none())
        {
            let err = ProxyError::Protocol(if status == StatusCode::SWITCHING_PROTOCOLS {
                "101 to a request that asked for no upgrade".into()
            } else {
                "response with ambiguous framing".into()
            });
            self.record_failure(
                &snapshot,
                &Decision {
                    target: served_by,
                    ..decision
                },
                started,
                &err,
            );
            return upstream_error(&route.name, &served_upstream.name, &err);
        }
        let now = Instant::now();
        let elapsed = now - started;
        served.telemetry.response(status, elapsed);
        served
            .window
            .record_at(now, elapsed, status.is_server_error());
        if status.is_server_error() {
            self.check_guard(&snapshot, decision.route, served_by);
        }

        let runtime = &snapshot.runtime[decision.route];
        let grace = snapshot.config.kill_grace;
        // Only a 101 needs its Upgrade value, and stripping hop-by-hop headers removes it.
        let response_upgrade = (status == StatusCode::SWITCHING_PROTOCOLS)
            .then(|| response.headers().get(UPGRADE).cloned())
            .flatten();
        headers::strip_hop_by_hop(response.headers_mut());
        if status == StatusCode::SWITCHING_PROTOCOLS {
            if let (Some(client_upgrade), Some(value)) =
                (client_upgrade, response_upgrade.or(upgrade))
            {
                let backend_upgrade = hyper::upgrade::on(&mut response);
                let cut = (served_by != 0).then(|| cut_on_kill(runtime, grace));
                tokio::spawn(tunnel(client_upgrade, backend_upgrade, cut));
                headers::restore_upgrade(response.headers_mut(), value);
            }
        }
        if fell_back {
            response
                .headers_mut()
                .insert(X_CUTOVER_FALLBACK.clone(), HeaderValue::from_static("1"));
        }
        response.map(|body| {
            if served_by == 0 {
                ResponseBody::Relayed(body)
            } else {
                ResponseBody::Cuttable {
                    inner: body,
                    cut: Box::pin(cut_on_kill(runtime, grace)),
                }
            }
        })
    }

    /// Sends a buffered request to its non-stable backend and, if that backend was never
    /// reached, once more to stable. Returns the response and the target that served it, or
    /// the error and the target that failed.
    async fn send_with_fallback(
        &self,
        snapshot: &Snapshot,
        decision: &Decision,
        parts: Parts,
        body: Bytes,
        started: Instant,
    ) -> Result<(Response<Incoming>, usize, bool), (ProxyError, usize)> {
        let route = &snapshot.routes.routes[decision.route];
        let upstream = &snapshot.upstreams[route.targets[decision.target].backend];
        let invalid = |_| {
            (
                ProxyError::Protocol("invalid target".into()),
                decision.target,
            )
        };
        let first = outbound(
            upstream,
            copy_head(&parts),
            decision.strip,
            Either::Right(Full::new(body.clone())),
        )
        .map_err(invalid)?;
        let err = match upstream.send(first).await {
            Ok(response) => return Ok((response, decision.target, false)),
            Err(err) if err.allows_fallback() => err,
            Err(err) => return Err((err, decision.target)),
        };
        // Count the failure where it happened, then replay on stable.
        self.record_failure(snapshot, decision, started, &err);
        snapshot.route_telemetry[decision.route]
            .fallbacks
            .increment(1);
        tracing::debug!(route = %route.name, backend = %upstream.name, error = ?err, "falling back to stable");
        let stable = &snapshot.upstreams[route.targets[0].backend];
        let replay = outbound(
            stable,
            parts,
            decision.strip,
            Either::Right(Full::new(body)),
        )
        .map_err(invalid)?;
        match stable.send(replay).await {
            Ok(response) => Ok((response, 0, true)),
            Err(err) => Err((err, 0)),
        }
    }

    fn record_failure(
        &self,
        snapshot: &Snapshot,
        decision: &Decision,
        started: Instant,
        err: &ProxyError,
    ) {
        let target: &Target = &snapshot.targets[decision.route][decision.target];
        let now = Instant::now();
        let elapsed = now - started;
        match err.reason() {
            Some(reason) => {
                target.telemetry.failure(reason, elapsed);
                target.window.record_at(now, elapsed, true);
                self.check_guard(snapshot, decision.route, decision.target);
            }
            None => target.telemetry.response(err.status(), elapsed),
        }
    }

    /// After an error from a non-stable backend: kill the route if its guard says so.
    fn check_guard(&self, snapshot: &Snapshot, route: usize, target: usize) {
        let spec = &snapshot.config.routes[route];
        let Some(guard) = &spec.guard else { return };
        if target == 0 || snapshot.kills[route].is_some() {
            return;
        }
        let (requests, errors) = snapshot.targets[route][target].window.counts();
        if requests < guard.min_requests
            || (errors as f64) * 100.0 <= guard.max_error_rate * requests as f64
        {
            return;
        }
        let backend = &snapshot.config.backends[spec.split[target].0].name;
        let reason = format!(
            "guard: {backend} {:.1}% errors > {}% over {} ({errors} of {requests} requests)",
            errors as f64 * 100.0 / requests as f64,
            guard.max_error_rate,
            humantime::format_duration(guard.window),
        );
        if self.control.guard_trip(&spec.name, reason) {
            snapshot.route_telemetry[route].guard_trips.increment(1);
        }
    }
}

/// Idempotent, not an upgrade, and a body small enough to keep for a replay.
fn is_replayable(parts: &Parts) -> bool {
    let idempotent = matches!(
        parts.method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    );
    let small = match parts.headers.get(CONTENT_LENGTH) {
        Some(length) => length
            .to_str()
            .ok()
            .and_then(|l| l.parse::<u64>().ok())
            .is_some_and(|l| l <= MAX_REPLAY_BODY),
        // Chunked bodies have no size up front; they are streamed, never replayed.
        None => !parts.headers.contains_key(http::header::TRANSFER_ENCODING),
    };
    idempotent && small
}

/// The request to send to `upstream`: the client's head, rewritten, with `body`.
#[allow(clippy::result_large_err)]
fn outbound(
    upstream: &Upstream,
    mut head: Parts,
    strip: usize,
    body: UpstreamBody,
) -> Result<Request<UpstreamBody>, Response<ResponseBody>> {
    head.uri = upstream.uri_for(&head.uri, strip).map_err(|_| {
        local(
            StatusCode::BAD_REQUEST,
            "bad-target",
            "cutover: invalid request target\n".to_owned(),
        )
    })?;
    head.version = upstream.version();
    Ok(Request::from_parts(head, body))
}

/// A copy of a request head for a second attempt (extensions are not carried over).
fn copy_head(parts: &Parts) -> Parts {
    let (mut copy, ()) = Request::new(()).into_parts();
    copy.method = parts.method.clone();
    copy.uri = parts.uri.clone();
    copy.version = parts.version;
    copy.headers = parts.headers.clone();
    copy
}

/// A response that could be read two ways must not be relayed in either.
fn has_ambiguous_framing(headers: &http::HeaderMap) -> bool {
    headers.contains_key(http::header::TRANSFER_ENCODING) && headers.contains_key(CONTENT_LENGTH)
}

/// Match a route and pick a backend. Allocates nothing.
fn decide(
    snapshot: &Snapshot,
    req: &Request<Incoming>,
    host: Option<&str>,
    client_ip: std::net::IpAddr,
) -> Option<Decision> {
    let head = RequestHead {
        method: req.method(),
        path: req.uri().path(),
        query: req.uri().query(),
        host,
        headers: req.headers(),
        client_ip,
    };
    let route_index = snapshot.routes.find(&head)?;
    let route = &snapshot.routes.routes[route_index];
    let strip = match (&route.matcher.path, route.strip_prefix) {
        (Some(PathMatch::Prefix(prefix)), true) if prefix != "/" => prefix.len(),
        _ => 0,
    };
    Some(Decision {
        route: route_index,
        target: route.pick(&head, snapshot.kills[route_index].is_some()),
        strip,
    })
}

/// Resolves `grace` after the route's next kill; never, if it is not killed.
fn cut_on_kill(
    runtime: &RouteRuntime,
    grace: Duration,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let mut kills = runtime.kill_signal.subscribe();
    async move {
        if kills.changed().await.is_ok() {
            tokio::time::sleep(grace).await;
        } else {
            std::future::pending::<()>().await;
        }
    }
}

/// Relays bytes both ways once client and backend have both switched protocols, until
/// either side closes or `cut` resolves.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    backend: hyper::upgrade::OnUpgrade,
    cut: Option<impl std::future::Future<Output = ()>>,
) {
    let (client, backend) = match tokio::try_join!(client, backend) {
        Ok(pair) => pair,
        Err(err) => {
            tracing::debug!(error = %err, "upgrade failed");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut backend = TokioIo::new(backend);
    let relay = tokio::io::copy_bidirectional(&mut client, &mut backend);
    let cut = async {
        match cut {
            Some(cut) => cut.await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        result = relay => {
            if let Err(err) = result {
                tracing::debug!(error = %err, "tunnel closed with an error");
            }
        }
        () = cut => tracing::info!("closing a tunnel to a killed route's backend after kill_grace"),
    }
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
