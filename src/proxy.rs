//! The request path, top to bottom: check the head → match a route → pick a backend →
//! forward → record. It loads the live snapshot once per request and takes no lock.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, CONNECTION, CONTENT_TYPE, HOST};
use http::{Request, Response, StatusCode, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::forward::{ProxyBody, ProxyError};
use crate::headers::{self, Peer};
use crate::hygiene::{self, Addressed, Rejection};
use crate::routing::RequestHead;
use crate::snapshot::{LiveSnapshot, Snapshot};

static X_CUTOVER_ERROR: http::HeaderName = http::HeaderName::from_static("x-cutover-error");

pub struct Proxy {
    live: Arc<LiveSnapshot>,
}

/// What the request path decided, carried from pick to record.
struct Decision {
    route: usize,
    target: usize,
    /// Bytes of the path the route's prefix covers, removed before forwarding.
    strip: usize,
}

impl Proxy {
    pub fn new(live: Arc<LiveSnapshot>) -> Proxy {
        Proxy { live }
    }

    /// Serves one request from `peer`. `ambiguous_framing`: the raw head had conflicting
    /// length fields that hyper resolved on its own (see `framing`).
    pub async fn handle(
        &self,
        mut req: Request<Incoming>,
        peer: Peer,
        ambiguous_framing: bool,
    ) -> Response<ProxyBody> {
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

        let host = addressed.as_ref().and_then(Addressed::host);
        let Some(decision) = decide(&snapshot, &req, host, client_ip) else {
            return plain(
                StatusCode::NOT_FOUND,
                "no-route",
                "cutover: no route\n".to_owned(),
            );
        };
        let route = &snapshot.routes.routes[decision.route];
        let backend = route.targets[decision.target].backend;
        let upstream = &snapshot.upstreams[backend];
        let telemetry = &snapshot.telemetry[decision.route][decision.target];

        // Forward.
        let upgrade = if req.version() == Version::HTTP_11 {
            headers::websocket_upgrade(req.headers())
        } else {
            None
        };
        let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        let uri = match upstream.uri_for(&parts.uri, decision.strip) {
            Ok(uri) => uri,
            Err(_) => {
                return plain(
                    StatusCode::BAD_REQUEST,
                    "bad-target",
                    "cutover: invalid request target\n".to_owned(),
                )
            }
        };
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
        parts.uri = uri;
        parts.version = upstream.version();
        let outbound = Request::from_parts(parts, Either::Left(body));

        // Record.
        match upstream.send(outbound).await {
            Ok(mut response) => {
                let status = response.status();
                if has_ambiguous_framing(response.headers()) {
                    let err = ProxyError::Protocol("Content-Length with Transfer-Encoding".into());
                    return upstream_error(telemetry, &route.name, &upstream.name, err);
                }
                if status == StatusCode::SWITCHING_PROTOCOLS {
                    let Some(client_upgrade) = client_upgrade else {
                        let err =
                            ProxyError::Protocol("101 to a request that asked no upgrade".into());
                        return upstream_error(telemetry, &route.name, &upstream.name, err);
                    };
                    let response_upgrade = response.headers().get(http::header::UPGRADE).cloned();
                    let backend_upgrade = hyper::upgrade::on(&mut response);
                    tokio::spawn(tunnel(client_upgrade, backend_upgrade));
                    headers::strip_hop_by_hop(response.headers_mut());
                    if let Some(value) = response_upgrade.or(upgrade) {
                        headers::restore_upgrade(response.headers_mut(), value);
                    }
                } else {
                    headers::strip_hop_by_hop(response.headers_mut());
                }
                telemetry.response(status);
                response.map(Either::Left)
            }
            Err(err) => upstream_error(telemetry, &route.name, &upstream.name, err),
        }
    }
}

/// A response that could be read two ways must not be relayed in either.
fn has_ambiguous_framing(headers: &http::HeaderMap) -> bool {
    headers.contains_key(http::header::TRANSFER_ENCODING)
        && headers.contains_key(http::header::CONTENT_LENGTH)
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
        (Some(crate::routing::PathMatch::Prefix(prefix)), true) if prefix != "/" => prefix.len(),
        _ => 0,
    };
    Some(Decision {
        route: route_index,
        target: route.pick(&head),
        strip,
    })
}

/// Relays bytes both ways once client and backend have both switched protocols.
async fn tunnel(client: hyper::upgrade::OnUpgrade, backend: hyper::upgrade::OnUpgrade) {
    let (client, backend) = match tokio::try_join!(client, backend) {
        Ok(pair) => pair,
        Err(err) => {
            tracing::debug!(error = %err, "upgrade failed");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut backend = TokioIo::new(backend);
    if let Err(err) = tokio::io::copy_bidirectional(&mut client, &mut backend).await {
        tracing::debug!(error = %err, "tunnel closed with an error");
    }
}

fn upstream_error(
    telemetry: &crate::telemetry::TargetTelemetry,
    route: &str,
    backend: &str,
    err: ProxyError,
) -> Response<ProxyBody> {
    match err.reason() {
        Some(reason) => telemetry.failure(reason),
        None => telemetry.response(err.status()),
    }
    tracing::debug!(route, backend, error = ?err, "upstream failure");
    plain(
        err.status(),
        err.kind(),
        format!(
            "cutover: route {route}: backend {backend}: {}\n",
            err.describe()
        ),
    )
}

fn reject(rejection: Rejection) -> Response<ProxyBody> {
    let mut response = plain(
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
pub fn plain(status: StatusCode, kind: &'static str, body: String) -> Response<ProxyBody> {
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(X_CUTOVER_ERROR.clone(), HeaderValue::from_static(kind));
    response
}
