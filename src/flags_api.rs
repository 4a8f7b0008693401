//! The flags API listener: OFREP evaluation for OpenFeature SDKs, plus a GET form for curl.
//!
//! | method path                          | does                                              |
//! |--------------------------------------|---------------------------------------------------|
//! | POST `/ofrep/v1/evaluate/flags/{key}` | one flag for `{"context": {...}}`                |
//! | POST `/ofrep/v1/evaluate/flags`       | every flag, with an `ETag`; `If-None-Match` → 304 |
//! | GET `/flags/{key}?targetingKey=u1&…`  | one flag, query parameters as the context         |
//! | GET `/flags/events`                   | Server-Sent Events: one per change to any flag    |
//!
//! With `flags_api.token_env` set, every call needs `Authorization: Bearer <token>`.
//!
//! Handlers stay thin: parse the context, load the snapshot once, call [`evaluate`].

pub(crate) mod context;

use std::borrow::Cow;
use std::convert::Infallible;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, CONNECTION, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use http::{Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::Incoming;
use hyper_util::server::graceful::GracefulShutdown;
use serde::Serialize;
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::bearer::{self, Bearer};
use crate::control::FlagChange;
use crate::flags::{evaluate, Context};
use crate::listener::{Connection, Limits};
use crate::snapshot::{LiveSnapshot, Snapshot};

const MAX_BODY: usize = 64 * 1024;

/// Idle event streams get a comment this often, so proxies in between keep them open.
const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(15);

type FlagsBody = BoxBody<Bytes, Infallible>;
type FlagsResponse = Response<FlagsBody>;

pub struct FlagsApi {
    pub live: Arc<LiveSnapshot>,
    pub changes: watch::Receiver<FlagChange>,
    /// Required bearer token, when `flags_api.token_env` names a set variable.
    pub token: Option<String>,
    /// One permit per open event stream, `max_connections` in all: HTTP/2 carries many
    /// streams on one connection, and each costs memory until the client leaves.
    pub subscribers: Arc<Semaphore>,
}

impl FlagsApi {
    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        ambiguous_framing: bool,
    ) -> FlagsResponse {
        if ambiguous_framing {
            let mut response = error(
                StatusCode::BAD_REQUEST,
                json!({"errorDetails": "ambiguous message framing"}),
            );
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
            return response;
        }
        if let Some(refusal) = self.authenticate(&req) {
            return refusal;
        }
        // Split once, so the path and key stay borrowed from the head while the body is read.
        let (parts, body) = req.into_parts();
        let path = parts.uri.path();
        if path == "/flags/events" {
            let last_seen = parts
                .headers
                .get("last-event-id")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            return self.events(last_seen);
        }
        if let Some(key) = path.strip_prefix("/flags/").filter(|k| !k.is_empty()) {
            let key = decode_key(key);
            if parts.method != Method::GET {
                return error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    json!({"errorDetails": "use GET"}),
                );
            }
            let query: Vec<(String, String)> = parts
                .uri
                .query()
                .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
                .unwrap_or_default();
            return self.single(&key, &query);
        }
        let bulk = path == "/ofrep/v1/evaluate/flags";
        let single = path
            .strip_prefix("/ofrep/v1/evaluate/flags/")
            .filter(|k| !k.is_empty());
        if !bulk && single.is_none() {
            return error(StatusCode::NOT_FOUND, json!({"errorDetails": "not found"}));
        }
        if parts.method != Method::POST {
            return error(
                StatusCode::METHOD_NOT_ALLOWED,
                json!({"errorDetails": "use POST"}),
            );
        }
        let if_none_match = parts.headers.get(IF_NONE_MATCH);
        let key = single.map(decode_key);
        let body = match Limited::new(body, MAX_BODY).collect().await {
            Ok(body) => body.to_bytes(),
            Err(_) => {
                return failure(
                    StatusCode::BAD_REQUEST,
                    key.as_deref(),
                    "PARSE_ERROR",
                    "body over 64 KiB",
                )
            }
        };
        let parsed = match &key {
            Some(key) => context::parse(&body).map(|context| self.single(key, &context)),
            None => context::parse_tree(&body).map(|context| self.bulk(&context, if_none_match)),
        };
        parsed.unwrap_or_else(|(code, details)| {
            failure(StatusCode::BAD_REQUEST, key.as_deref(), code, &details)
        })
    }

    fn authenticate(&self, req: &Request<Incoming>) -> Option<FlagsResponse> {
        let expected = self.token.as_deref()?;
        match bearer::check(req.headers(), expected) {
            Bearer::Missing => Some(error(
                StatusCode::UNAUTHORIZED,
                json!({"errorDetails": "missing bearer token"}),
            )),
            Bearer::Wrong => Some(error(
                StatusCode::FORBIDDEN,
                json!({"errorDetails": "wrong bearer token"}),
            )),
            Bearer::Valid => None,
        }
    }

    /// `text/event-stream`: the current change at once if the client missed it
    /// (`Last-Event-ID`), then one event per change and a heartbeat comment when idle.
    fn events(&self, last_seen: Option<u64>) -> FlagsResponse {
        let Ok(subscriber) = self.subscribers.clone().try_acquire_owned() else {
            let mut response = error(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"errorDetails": "too many event subscribers (max_connections)"}),
            );
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from_static("5"));
            return response;
        };
        let mut changes = self.changes.clone();
        let current = changes.borrow_and_update().clone();
        let missed = last_seen.is_some_and(|seen| seen < current.id);
        let first = missed.then(|| event(&current));
        let stream = futures_util::stream::unfold(
            (changes, first, subscriber),
            |(mut changes, pending, subscriber)| async move {
                if let Some(frame) = pending {
                    return Some((Ok(Frame::data(frame)), (changes, None, subscriber)));
                }
                let frame = tokio::select! {
                    changed = changes.changed() => match changed {
                        Ok(()) => event(&changes.borrow_and_update().clone()),
                        Err(_) => return None,
                    },
                    () = tokio::time::sleep(HEARTBEAT) => Bytes::from_static(b": heartbeat\n\n"),
                };
                Some((Ok(Frame::data(frame)), (changes, None, subscriber)))
            },
        );
        let mut response = Response::new(StreamBody::new(stream).boxed());
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        headers.insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-cache"),
        );
        response
    }

    fn single(&self, key: &str, context: &(impl Context + ?Sized)) -> FlagsResponse {
        let snapshot = self.live.load();
        match snapshot.config.flags.iter().position(|(k, _)| k == key) {
            Some(index) => json_response(StatusCode::OK, &evaluation(&snapshot, index, context)),
            None => failure(
                StatusCode::NOT_FOUND,
                Some(key),
                "FLAG_NOT_FOUND",
                &format!("flag {key:?} is not defined"),
            ),
        }
    }

    fn bulk(
        &self,
        context: &Map<String, Value>,
        if_none_match: Option<&HeaderValue>,
    ) -> FlagsResponse {
        let snapshot = self.live.load();
        let etag = etag(&snapshot, context);
        if if_none_match.is_some_and(|v| matches_etag(v, &etag)) {
            let mut response = Response::new(Full::new(Bytes::new()).boxed());
            *response.status_mut() = StatusCode::NOT_MODIFIED;
            if let Ok(value) = HeaderValue::from_str(&etag) {
                response.headers_mut().insert(ETAG, value);
            }
            return response;
        }
        let flags: Vec<Evaluated<'_>> = (0..snapshot.config.flags.len())
            .map(|index| evaluation(&snapshot, index, context))
            .collect();
        let mut response = json_response(
            StatusCode::OK,
            &BulkEvaluation {
                flags,
                metadata: Empty {},
                event_streams: [json!({
                    "type": "sse",
                    "endpoint": {"requestUri": "/flags/events"},
                    "inactivityDelaySec": 120,
                })],
            },
        );
        if let Ok(value) = HeaderValue::from_str(&etag) {
            response.headers_mut().insert(ETAG, value);
        }
        response
    }
}

/// OFREP's evaluation success body, serialized straight from the snapshot.
#[derive(Serialize)]
struct Evaluated<'a> {
    key: &'a str,
    reason: &'static str,
    variant: &'a str,
    value: &'a Value,
    metadata: Empty,
}

#[derive(Serialize)]
struct Empty {}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BulkEvaluation<'a> {
    flags: Vec<Evaluated<'a>>,
    metadata: Empty,
    event_streams: [Value; 1],
}

/// Evaluates flag `index` of the snapshot and counts the answer.
fn evaluation<'a>(
    snapshot: &'a Snapshot,
    index: usize,
    context: &(impl Context + ?Sized),
) -> Evaluated<'a> {
    let key = &snapshot.config.flags[index].0;
    let flag = snapshot.flag_in_force(index);
    let killed = snapshot.overrides.flags.contains_key(key);
    let result = evaluate(flag, key, context, killed);
    snapshot.flag_telemetry[index].record(result.index, result.reason);
    Evaluated {
        key,
        reason: result.reason.as_str(),
        variant: result.variant,
        value: result.value,
        metadata: Empty {},
    }
}

/// Flag keys may hold any printable character, so the path segment is percent-decoded.
fn decode_key(segment: &str) -> Cow<'_, str> {
    percent_encoding::percent_decode_str(segment).decode_utf8_lossy()
}

/// Changes with the config generation, runtime flag kills and the context, so a different
/// context is never answered 304.
fn etag(snapshot: &Snapshot, context: &Map<String, Value>) -> String {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    // serde_json's map is ordered by key, so this is canonical.
    serde_json::to_string(context)
        .unwrap_or_default()
        .hash(&mut hasher);
    for key in snapshot.overrides.flags.keys() {
        key.hash(&mut hasher);
    }
    format!("\"{:x}-{:016x}\"", snapshot.generation, hasher.finish())
}

fn matches_etag(header: &HeaderValue, etag: &str) -> bool {
    header.to_str().is_ok_and(|v| {
        v.split(',')
            .map(|t| t.trim().trim_start_matches("W/"))
            .any(|t| t == etag || t == "*" || t.trim_matches('"') == etag.trim_matches('"'))
    })
}

fn failure(status: StatusCode, key: Option<&str>, code: &str, details: &str) -> FlagsResponse {
    let mut body = json!({"errorCode": code, "errorDetails": details});
    if let Some(key) = key {
        body["key"] = json!(key);
    }
    error(status, body)
}

fn error(status: StatusCode, body: Value) -> FlagsResponse {
    json_response(status, &body)
}

fn json_response(status: StatusCode, value: &impl Serialize) -> FlagsResponse {
    // Serializing plain data with string keys cannot fail.
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(body)).boxed());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// One SSE event telling clients to fetch their flags again.
fn event(change: &FlagChange) -> Bytes {
    let data = json!({"type": "refetchEvaluation", "etag": change.etag});
    Bytes::from(format!(
        "id: {}\nevent: message\ndata: {data}\n\n",
        change.id
    ))
}

/// Serves the flags API until `shutdown` flips.
pub async fn serve(
    listener: TcpListener,
    limits: Limits,
    api: Arc<FlagsApi>,
    shutdown: watch::Receiver<bool>,
) -> GracefulShutdown {
    crate::listener::serve(
        listener,
        "flags API",
        limits,
        shutdown,
        move |conn: Connection| {
            let api = api.clone();
            move |req| {
                let api = api.clone();
                let ambiguous = conn.next_request_is_ambiguous();
                async move { Ok::<_, Infallible>(api.handle(req, ambiguous).await) }
            }
        },
    )
    .await
}
