//! The admin listener (loopback by default). Every endpoint:
//!
//! | method path                          | does                                              |
//! |--------------------------------------|---------------------------------------------------|
//! | GET `/`, `/status.js`, `/status.css` | the live status page ([`crate::admin::page`])     |
//! | GET `/healthz`                       | 200 while the process serves                      |
//! | GET `/readyz`                        | 200 once config is loaded and listeners bound; 503 while shutting down |
//! | GET `/metrics`                       | Prometheus text                                   |
//! | GET `/api/status`                    | JSON: generation, last reload, routes, live stats |
//! | POST `/api/routes/{name}/kill`       | kill switch for one route (body: optional `{"reason": "...", "source": "cli"}`) |
//! | POST `/api/routes/{name}/resume`     | undo a runtime kill                               |
//! | POST `/api/kill`, `/api/resume`      | every route at once                               |
//! | POST `/api/flags/{key}/kill`, `/resume` | flag kill switch: everyone gets the default     |
//! | POST `/api/reload`                   | reload now: 200 with the generation, or 422 with every error |
//! | GET `/api/routes/{name}/diffs`       | shadow counts and the last mismatches ([`diffs`]) |
//! | POST `/api/routes/{name}/ramp/{pause,resume,promote,abort}` | drive a ramp by hand (body: optional `{"reason": "...", "kill": true, "source": "cli"}`) |
//! | POST `/api/flags/{key}/ramp/{pause,resume,promote,abort}` | likewise, a flag's ramp       |
//!
//! Every POST is authenticated before anything else is looked at: `Authorization: Bearer
//! <token>`, 401 without, 403 wrong (compared in constant time). The token is never logged.

pub mod client;
pub mod diffs;
pub mod page;
pub mod ramp;
pub mod status;

use std::borrow::Cow;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, CONNECTION, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::server::graceful::GracefulShutdown;
use metrics_exporter_prometheus::PrometheusHandle;
use percent_encoding::percent_decode_str;
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin::diffs::Diffs;
use crate::admin::status::Status;
use crate::bearer::{self, Bearer};
use crate::control::overrides::{Kill, KillSource};
use crate::control::{
    Control, ControlError, OverrideOutcome, RampAction, RampOutcome, ReloadOutcome, Switch,
};
use crate::listener::{Connection, Limits};

const MAX_BODY: usize = 64 * 1024;

pub struct Admin {
    pub control: Arc<Control>,
    pub metrics: PrometheusHandle,
    /// The bearer token every POST must carry; `None` refuses every POST.
    pub token: Option<String>,
    /// Set once listeners are bound; cleared when shutdown begins so load balancers drain.
    pub ready: AtomicBool,
}

type AdminResponse = Response<Full<Bytes>>;

/// Optional body of a ramp call.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RampRequest {
    reason: Option<String>,
    /// Abort only: kill the route too.
    #[serde(default)]
    kill: bool,
    source: Option<String>,
}

/// Optional body of a kill call.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct KillRequest {
    reason: Option<String>,
    /// `api` (default) or `cli`: who to record as having pulled the switch.
    source: Option<String>,
}

impl Admin {
    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        ambiguous_framing: bool,
    ) -> AdminResponse {
        if ambiguous_framing {
            let mut response = error(StatusCode::BAD_REQUEST, "ambiguous message framing");
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
            return response;
        }
        let path = req.uri().path().to_owned();
        let method = req.method().clone();
        if method == Method::POST {
            if let Some(refusal) = self.authenticate(&req) {
                return refusal;
            }
            let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(body) => body.to_bytes(),
                Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, "body over 64 KiB"),
            };
            return self.mutate(&path, &body).await;
        }
        if method != Method::GET && method != Method::HEAD {
            return match self.allowed(&path) {
                Some(allow) => {
                    let mut response = error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
                    response
                        .headers_mut()
                        .insert(ALLOW, HeaderValue::from_static(allow));
                    response
                }
                None => error(StatusCode::NOT_FOUND, "not found"),
            };
        }
        if let Some(asset) = page::find(&path) {
            return page::respond(asset);
        }
        match path.as_str() {
            "/healthz" => text(StatusCode::OK, "text/plain; charset=utf-8", "ok\n".into()),
            "/readyz" if self.ready.load(Ordering::Acquire) => text(
                StatusCode::OK,
                "text/plain; charset=utf-8",
                "ready\n".into(),
            ),
            "/readyz" => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain; charset=utf-8",
                "not ready\n".into(),
            ),
            "/metrics" => text(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                self.metrics.render(),
            ),
            "/api/status" => {
                let snapshot = self.control.live().load_full();
                let status = Status::of(
                    &snapshot,
                    self.control.path(),
                    &self.control.last_reload(),
                    self.control.persist_failure().as_deref(),
                    &self.control.ramps_live(),
                );
                json_response(StatusCode::OK, &status)
            }
            _ if diffs_route(&path).is_some() => self.diffs(&path),
            _ if self.allowed(&path).is_some() => {
                let mut response = error(StatusCode::METHOD_NOT_ALLOWED, "use POST");
                response
                    .headers_mut()
                    .insert(ALLOW, HeaderValue::from_static("POST"));
                response
            }
            _ => error(StatusCode::NOT_FOUND, "not found"),
        }
    }

    /// The methods a known path takes, for 405 answers.
    fn allowed(&self, path: &str) -> Option<&'static str> {
        match path {
            "/healthz" | "/readyz" | "/metrics" | "/api/status" => Some("GET, HEAD"),
            "/api/kill" | "/api/resume" | "/api/reload" => Some("POST"),
            _ if page::find(path).is_some() => Some("GET, HEAD"),
            _ if diffs_route(path).is_some() => Some("GET, HEAD"),
            _ if switch_action(path).is_some() || ramp_action(path).is_some() => Some("POST"),
            _ => None,
        }
    }

    fn diffs(&self, path: &str) -> AdminResponse {
        let Some(name) = diffs_route(path) else {
            return error(StatusCode::NOT_FOUND, "not found");
        };
        let snapshot = self.control.live().load_full();
        let Some(route) = snapshot.route(&name) else {
            return error(StatusCode::NOT_FOUND, &format!("no route named {name:?}"));
        };
        match Diffs::of(route) {
            Some(diffs) => json_response(StatusCode::OK, &diffs),
            None => error(
                StatusCode::NOT_FOUND,
                &format!("route {name:?} has no shadow: in the config"),
            ),
        }
    }

    fn authenticate(&self, req: &Request<Incoming>) -> Option<AdminResponse> {
        let Some(expected) = self.token.as_deref() else {
            return Some(error(
                StatusCode::FORBIDDEN,
                "no admin token is configured: set the variable named by admin.token_env and restart",
            ));
        };
        match bearer::check(req.headers(), expected) {
            Bearer::Missing => {
                let mut response = error(StatusCode::UNAUTHORIZED, "missing bearer token");
                response
                    .headers_mut()
                    .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                Some(response)
            }
            Bearer::Wrong => Some(error(StatusCode::FORBIDDEN, "wrong bearer token")),
            Bearer::Valid => None,
        }
    }

    async fn mutate(&self, path: &str, body: &[u8]) -> AdminResponse {
        if path == "/api/reload" {
            let control = self.control.clone();
            let outcome = tokio::task::spawn_blocking(move || control.reload("api")).await;
            return match outcome {
                Ok(ReloadOutcome::Applied { generation, diff }) => json_response(
                    StatusCode::OK,
                    &json!({"result": "applied", "generation": generation, "changes": diff}),
                ),
                Ok(ReloadOutcome::Unchanged { generation }) => json_response(
                    StatusCode::OK,
                    &json!({"result": "unchanged", "generation": generation}),
                ),
                Ok(ReloadOutcome::Rejected { errors }) => {
                    let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
                    json_response(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        &json!({"result": "rejected", "errors": errors}),
                    )
                }
                Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "reload failed"),
            };
        }
        if let Some((switch, name, action)) = ramp_action(path) {
            return self.ramp(switch, name.into_owned(), action, body).await;
        }
        let (switch, target, action) = match (path, switch_action(path)) {
            ("/api/kill", _) => (Switch::Route, None, "kill"),
            ("/api/resume", _) => (Switch::Route, None, "resume"),
            (_, Some((switch, name, action))) => (switch, Some(name), action),
            _ => return error(StatusCode::NOT_FOUND, "not found"),
        };
        let request: KillRequest = match parse_body(body) {
            Ok(request) => request,
            Err(message) => return error(StatusCode::BAD_REQUEST, &message),
        };
        let source = match source(request.source.as_deref()) {
            Ok(source) => source,
            Err(message) => return error(StatusCode::BAD_REQUEST, &message),
        };
        let target = target.map(Cow::into_owned);
        let control = self.control.clone();
        let kill = (action == "kill").then(|| {
            let reason = request
                .reason
                .unwrap_or_else(|| format!("killed via {}", source.as_str()));
            Kill::now(source, reason)
        });
        // The switch is published at once; writing `state_file` is left to a blocking thread.
        let outcome = tokio::task::spawn_blocking(move || {
            let names = target.as_deref().map(|name| [name]);
            let names = names.as_ref().map(|n| &n[..]);
            match kill {
                Some(kill) => control.kill(switch, names, kill),
                None => control.resume(switch, names),
            }
        })
        .await;
        let Ok(outcome) = outcome else {
            return error(StatusCode::INTERNAL_SERVER_ERROR, "kill switch failed");
        };
        match outcome {
            Ok(OverrideOutcome { changed, persisted }) => {
                tracing::warn!(action, kind = switch.noun(), names = ?changed, by = source.as_str(), "kill switch");
                json_response(
                    StatusCode::OK,
                    &json!({
                        "action": action,
                        "changed": changed,
                        "persisted": persisted.is_ok(),
                        "persist_error": persisted.err(),
                    }),
                )
            }
            Err(err @ ControlError::Unknown(..)) => error(StatusCode::NOT_FOUND, &err.to_string()),
            Err(err @ ControlError::KilledInConfig(..)) => {
                error(StatusCode::CONFLICT, &err.to_string())
            }
            Err(err) => error(StatusCode::INTERNAL_SERVER_ERROR, &err.to_string()),
        }
    }
}

impl Admin {
    async fn ramp(
        &self,
        switch: Switch,
        name: String,
        action: &'static str,
        body: &[u8],
    ) -> AdminResponse {
        let request: RampRequest = match parse_body(body) {
            Ok(request) => request,
            Err(message) => return error(StatusCode::BAD_REQUEST, &message),
        };
        let by = match source(request.source.as_deref()) {
            Ok(source) => source,
            Err(message) => return error(StatusCode::BAD_REQUEST, &message),
        };
        if request.kill && action != "abort" {
            return error(StatusCode::BAD_REQUEST, "\"kill\" goes with abort only");
        }
        let reason = request
            .reason
            .unwrap_or_else(|| format!("{action} via {}", by.as_str()));
        let ramp_action = match action {
            "pause" => RampAction::Pause,
            "resume" => RampAction::Resume,
            "promote" => RampAction::Promote { reason },
            _ => RampAction::Abort {
                reason,
                kill: request.kill,
            },
        };
        let control = self.control.clone();
        let target = name.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            control.ramp_action(switch, &target, ramp_action, by)
        })
        .await;
        let Ok(outcome) = outcome else {
            return error(StatusCode::INTERNAL_SERVER_ERROR, "ramp action failed");
        };
        match outcome {
            Ok(RampOutcome {
                changed,
                progress,
                percent,
                persisted,
                still_killed,
            }) => json_response(
                StatusCode::OK,
                &json!({
                    "action": action,
                    switch.noun(): name,
                    "changed": changed,
                    "state": progress.state.as_str(),
                    "step": progress.step + 1,
                    "percent": percent,
                    "still_killed": still_killed,
                    "persisted": persisted.is_ok(),
                    "persist_error": persisted.err(),
                }),
            ),
            Err(err @ (ControlError::Unknown(..) | ControlError::NoRamp(..))) => {
                error(StatusCode::NOT_FOUND, &err.to_string())
            }
            Err(err @ ControlError::Refused(_)) => error(StatusCode::CONFLICT, &err.to_string()),
            Err(err) => error(StatusCode::INTERNAL_SERVER_ERROR, &err.to_string()),
        }
    }
}

/// An optional JSON body: empty means the defaults.
fn parse_body<T: Default + serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|err| format!("invalid JSON body: {err}"))
}

/// Who to record for a change: `api` (the default) or `cli`.
fn source(source: Option<&str>) -> Result<KillSource, String> {
    match source {
        None | Some("api") => Ok(KillSource::Api),
        Some("cli") => Ok(KillSource::Cli),
        Some(other) => Err(format!("source {other:?}: use \"api\" or \"cli\"")),
    }
}

/// `/api/routes/{name}/ramp/{action}` → `(Route, name, action)`, the name percent-decoded;
/// likewise `/api/flags/{key}/ramp/{action}`.
fn ramp_action(path: &str) -> Option<(Switch, Cow<'_, str>, &'static str)> {
    let (switch, rest) = if let Some(rest) = path.strip_prefix("/api/routes/") {
        (Switch::Route, rest)
    } else {
        (Switch::Flag, path.strip_prefix("/api/flags/")?)
    };
    let (name, action) = rest.rsplit_once("/ramp/")?;
    let action = ["pause", "resume", "promote", "abort"]
        .into_iter()
        .find(|&a| a == action)?;
    if name.is_empty() || name.contains('/') {
        return None;
    }
    Some((switch, percent_decode_str(name).decode_utf8().ok()?, action))
}

/// `/api/routes/{name}/diffs` → the route's name, percent-decoded.
fn diffs_route(path: &str) -> Option<Cow<'_, str>> {
    let name = path.strip_prefix("/api/routes/")?.strip_suffix("/diffs")?;
    if name.is_empty() || name.contains('/') {
        return None;
    }
    percent_decode_str(name).decode_utf8().ok()
}

/// `/api/routes/{name}/kill` → `(Route, name, "kill")`; likewise `/api/flags/{key}/…`.
/// The name is percent-decoded: names may hold any printable character, `/` included.
fn switch_action(path: &str) -> Option<(Switch, Cow<'_, str>, &'static str)> {
    let (switch, rest) = if let Some(rest) = path.strip_prefix("/api/routes/") {
        (Switch::Route, rest)
    } else {
        (Switch::Flag, path.strip_prefix("/api/flags/")?)
    };
    let (name, action) = rest.rsplit_once('/')?;
    let action = match action {
        "kill" => "kill",
        "resume" => "resume",
        _ => return None,
    };
    if name.is_empty() || name.contains('/') {
        return None;
    }
    let name = percent_decode_str(name).decode_utf8().ok()?;
    Some((switch, name, action))
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> AdminResponse {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn json_response(status: StatusCode, value: &impl serde::Serialize) -> AdminResponse {
    let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
    body.push(b'\n');
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn error(status: StatusCode, message: &str) -> AdminResponse {
    json_response(status, &json!({ "error": message }))
}

/// Serves the admin API until `shutdown` flips.
pub async fn serve(
    listener: TcpListener,
    limits: Limits,
    admin: Arc<Admin>,
    shutdown: watch::Receiver<bool>,
) -> GracefulShutdown {
    crate::listener::serve(
        listener,
        "admin API",
        limits,
        shutdown,
        move |conn: Connection| {
            let admin = admin.clone();
            move |req| {
                let admin = admin.clone();
                let ambiguous = conn.next_request_is_ambiguous();
                async move { Ok::<_, Infallible>(admin.handle(req, ambiguous).await) }
            }
        },
    )
    .await
}
