//! HTTP hygiene at the byte level (RFC 9110/9112, as the strictest of Envoy, nginx and HAProxy
//! do it): raw bytes on raw sockets to the real binary, so nothing in a client library can
//! tidy up a malformed request or hide a malformed response.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::raw::{self, find, RawBackend};
use common::{split_config, Backend, Cutover};

/// How long any single exchange may take before the test gives up on it.
const WAIT: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Runs cutover with one catch-all route to `backend_url`; `top_level` is prepended YAML.
fn proxy_to(backend_url: &str, top_level: &str) -> Cutover {
    let yaml = split_config(&[("legacy", backend_url, 100.0)], "");
    Cutover::start(&format!("{top_level}{yaml}"))
}

/// What a client read back on one connection.
#[derive(Debug)]
struct Reply {
    /// Status of the first final (non-1xx, or 101) response; 0 if none could be parsed.
    status: u16,
    /// Its header fields, names lower-cased, in order.
    headers: Vec<(String, String)>,
    /// Its body, de-chunked.
    body: String,
    /// Statuses of the 1xx responses that came before it.
    interim: Vec<u16>,
    /// Every byte read, for counting responses and for failure messages.
    raw: String,
    /// The proxy closed the connection (EOF or reset) before the wait ran out.
    closed: bool,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn has_header(&self, name: &str) -> bool {
        self.header(name).is_some()
    }

    /// How many response status lines the client received (lines starting `HTTP/1.`).
    fn responses(&self) -> usize {
        self.raw
            .split('\n')
            .filter(|l| l.starts_with("HTTP/1."))
            .count()
    }

    /// The values the `/headers` backend echoed for `name` (one `name: value` per line).
    fn echoed(&self, name: &str) -> Vec<&str> {
        let prefix = format!("{name}: ");
        self.body
            .lines()
            .filter_map(|l| l.strip_prefix(prefix.as_str()))
            .collect()
    }

    /// The echoed request line, e.g. `GET /headers HTTP/1.1`.
    fn echoed_request_line(&self) -> &str {
        self.body.lines().next().unwrap_or("")
    }
}

/// Sends `request` on a fresh connection and returns as soon as one final response is
/// complete (the connection may stay open), or when the proxy closes, or after `WAIT`.
async fn exchange(addr: SocketAddr, request: &[u8]) -> Reply {
    talk(addr, request, false).await
}

/// Like `exchange`, but keeps reading until the proxy closes the connection or `WAIT`
/// passes, so the caller can see whether it closed and whether anything else was sent.
async fn exchange_until_close(addr: SocketAddr, request: &[u8]) -> Reply {
    talk(addr, request, true).await
}

async fn talk(addr: SocketAddr, request: &[u8], until_close: bool) -> Reply {
    let conn = raw::exchange(addr, request, WAIT, |buf| {
        !until_close && parse(buf, false).is_some()
    })
    .await;
    let (status, headers, body, interim) =
        parse(&conn.received, true).unwrap_or((0, Vec::new(), Vec::new(), Vec::new()));
    Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        interim,
        raw: conn.text(),
        closed: conn.closed,
    }
}

type Parsed = (u16, Vec<(String, String)>, Vec<u8>, Vec<u16>);

/// Parses the first final response in `buf`. `None` until it is complete; with `eof` a
/// truncated body is returned as far as it got.
fn parse(buf: &[u8], eof: bool) -> Option<Parsed> {
    let mut rest = buf;
    let mut interim = Vec::new();
    loop {
        let end = find(rest, b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&rest[..end]).into_owned();
        let body = &rest[end + 4..];
        let mut lines = head.split("\r\n");
        let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        if (100..200).contains(&status) && status != 101 {
            interim.push(status);
            rest = body;
            continue;
        }
        let get = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v);
        if status == 101 || status == 204 || status == 304 {
            return Some((status, headers, Vec::new(), interim));
        }
        let chunked = get("transfer-encoding").is_some_and(|v| v.contains("chunked"));
        let (body, complete) = if chunked {
            dechunk(body)
        } else if let Some(len) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
            (body[..len.min(body.len())].to_vec(), body.len() >= len)
        } else {
            (body.to_vec(), false) // close-delimited: complete only at EOF
        };
        return (complete || eof).then_some((status, headers, body, interim));
    }
}

/// Decodes a chunked body; `complete` once the last chunk and the final CRLF arrived.
fn dechunk(mut data: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    loop {
        let Some(line_end) = find(data, b"\r\n") else {
            return (out, false);
        };
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let Ok(size) = usize::from_str_radix(size_text, 16) else {
            return (out, false);
        };
        data = &data[line_end + 2..];
        if size == 0 {
            return (out, find(data, b"\r\n").is_some());
        }
        if data.len() < size + 2 {
            out.extend_from_slice(&data[..size.min(data.len())]);
            return (out, false);
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// A backend that records every byte it receives and answers each request head with a
/// fixed 200. Used where the point is whether anything reached the backend at all.
async fn recording_backend() -> RawBackend {
    RawBackend::start(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\nConnection: close\r\n\r\nrecorded")
        .await
}

/// Asserts a request was refused with 400, on a closed connection, and never forwarded.
/// Sends `request` through a proxy in front of a recording backend and asserts that it is
/// answered 400, the connection closed, and nothing forwarded.
async fn assert_proxy_rejects(request: &[u8], what: &str) {
    let recorder = recording_backend().await;
    let cutover = proxy_to(&recorder.url(), "");
    let reply = exchange_until_close(cutover.proxy, request).await;
    assert_rejected_unforwarded(&reply, &recorder, what);
}

fn assert_rejected_unforwarded(reply: &Reply, recorder: &RawBackend, what: &str) {
    let seen = recorder.seen();
    assert_eq!(
        reply.status, 400,
        "{what}: expected 400, got {reply:#?}\nbackend received: {seen:?}"
    );
    assert_eq!(seen, "", "{what}: the backend received bytes");
    assert!(
        reply.closed,
        "{what}: connection left open after a 400: {reply:#?}"
    );
    assert_eq!(
        reply.responses(),
        1,
        "{what}: more than one response: {reply:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 1. Request smuggling: ambiguous framing is refused, never forwarded, and ends the connection
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_transfer_encoding_is_400_and_never_forwarded() {
    let recorder = recording_backend().await;
    let cutover = proxy_to(&recorder.url(), "");
    // The classic CL.TE / TE.CL pair, both header orders, each followed by a pipelined
    // request that a front end and a back end would disagree about.
    let orders: [&[u8]; 2] = [
        b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
    ];
    for framing in orders {
        let mut request = b"POST /headers HTTP/1.1\r\nHost: a.example\r\n".to_vec();
        request.extend_from_slice(framing);
        request
            .extend_from_slice(b"\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a.example\r\n\r\n");
        let reply = exchange_until_close(cutover.proxy, &request).await;
        let what = String::from_utf8_lossy(framing).replace("\r\n", " ");
        assert_rejected_unforwarded(&reply, &recorder, &what);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differing_content_lengths_are_400_and_never_forwarded() {
    let recorder = recording_backend().await;
    let cutover = proxy_to(&recorder.url(), "");
    let variants: [&[u8]; 2] = [
        b"Content-Length: 3\r\nContent-Length: 4\r\n",
        b"Content-Length: 3, 4\r\n",
    ];
    for lengths in variants {
        let mut request = b"POST /headers HTTP/1.1\r\nHost: a.example\r\n".to_vec();
        request.extend_from_slice(lengths);
        request.extend_from_slice(b"\r\nabcd");
        let reply = exchange_until_close(cutover.proxy, &request).await;
        let what = String::from_utf8_lossy(lengths).replace("\r\n", " ");
        assert_rejected_unforwarded(&reply, &recorder, &what);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_encoding_not_ending_in_chunked_is_400() {
    // RFC 9112 §6.3: a request whose final coding is not chunked cannot be framed → 400.
    assert_proxy_rejects(b"POST /headers HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n", "Transfer-Encoding: chunked, gzip").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_request_after_a_smuggling_400_is_not_answered() {
    // The bytes after a rejected head cannot be trusted to be a request: the proxy must
    // close rather than parse them. Here the second request is a well-formed GET.
    let backend = Backend::start("legacy").await;
    let cutover = proxy_to(&backend.url(), "");
    let request = b"POST /headers HTTP/1.1\r\nHost: a.example\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcd\
GET /headers HTTP/1.1\r\nHost: a.example\r\n\r\n";
    let reply = exchange_until_close(cutover.proxy, request).await;
    assert_eq!(reply.status, 400, "{reply:#?}");
    assert!(reply.closed, "connection left open: {reply:#?}");
    assert_eq!(
        reply.responses(),
        1,
        "pipelined request answered: {reply:#?}"
    );
    assert!(!reply.raw.contains("x-backend"), "{reply:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ambiguous_request_after_a_bare_lf_request_is_still_400() {
    // Hyper accepts bare LF line ends; the framing check must count that head too, or the
    // ambiguous request after it is matched with the wrong head and forwarded.
    let backend = Backend::start("legacy").await;
    let cutover = proxy_to(&backend.url(), "");
    let mut conn = raw::connect(cutover.proxy).await;
    conn.send(b"GET / HTTP/1.1\nHost: a.example\n\n")
        .await
        .unwrap();
    conn.read_until(Duration::from_secs(5), |b| b.ends_with(b"legacy\n"))
        .await;
    assert!(conn.text().starts_with("HTTP/1.1 200"), "{:?}", conn.text());
    conn.received.clear();
    conn.send(
        b"POST /upload HTTP/1.1\r\nHost: a.example\r\nContent-Length: 5\r\n\
          Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    conn.read_until(Duration::from_secs(5), raw::until_close)
        .await;
    let text = conn.text();
    assert!(text.starts_with("HTTP/1.1 400"), "{text:?}");
    assert!(!text.contains("len="), "forwarded to the backend: {text:?}");
    assert!(conn.closed);
}

// ---------------------------------------------------------------------------------------------
// 2. Host
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http11_request_without_host_is_400() {
    let recorder = recording_backend().await;
    let cutover = proxy_to(&recorder.url(), "");
    let reply = exchange_until_close(cutover.proxy, b"GET /headers HTTP/1.1\r\n\r\n").await;
    assert_rejected_unforwarded(&reply, &recorder, "no Host");
    assert!(reply.has_header("x-cutover-error"), "{reply:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_host_fields_are_400() {
    let recorder = recording_backend().await;
    let cutover = proxy_to(&recorder.url(), "");
    // Same value twice is still two fields (RFC 9112 §3.2: "more than one Host header field line").
    let requests: [&[u8]; 2] = [
        b"GET /headers HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
        b"GET /headers HTTP/1.1\r\nHost: a.example\r\nHost: a.example\r\n\r\n",
    ];
    for request in requests {
        let reply = exchange_until_close(cutover.proxy, request).await;
        assert_rejected_unforwarded(&reply, &recorder, &String::from_utf8_lossy(request));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_host_values_are_400() {
    let recorder = recording_backend().await;
    let cutover = proxy_to(&recorder.url(), "");
    let hosts: [&[u8]; 6] = [
        b"a b",
        b"user@x",
        b"a/b",
        b"example.com:port",
        b"example.com:80:80",
        b"ex\xe4mple.com",
    ];
    for host in hosts {
        let mut request = b"GET /headers HTTP/1.1\r\nHost: ".to_vec();
        request.extend_from_slice(host);
        request.extend_from_slice(b"\r\n\r\n");
        let reply = exchange_until_close(cutover.proxy, &request).await;
        let what = format!("Host: {}", String::from_utf8_lossy(host));
        assert_rejected_unforwarded(&reply, &recorder, &what);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_host_with_origin_form_is_400() {
    // An http URI with an empty host is invalid (RFC 9110 §4.2.1); nginx rejects `Host:`.
    let recorder = recording_backend().await;
    let cutover = proxy_to(&recorder.url(), "");
    let reply =
        exchange_until_close(cutover.proxy, b"GET /headers HTTP/1.1\r\nHost:\r\n\r\n").await;
    assert_rejected_unforwarded(&reply, &recorder, "Host: (empty)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_host_forms_are_accepted_and_kept() {
    // The other side of the Host checks: ordinary names, ports and IP literals pass untouched.
    let backend = Backend::start("legacy").await;
    let cutover = proxy_to(&backend.url(), "");
    for host in [
        "example.com",
        "example.com:8080",
        "127.0.0.1:80",
        "[::1]:8080",
        "xn--bcher-kva.example",
    ] {
        let request = format!("GET /headers HTTP/1.1\r\nHost: {host}\r\n\r\n");
        let reply = exchange(cutover.proxy, request.as_bytes()).await;
        assert_eq!(reply.status, 200, "Host: {host}: {reply:#?}");
        assert_eq!(reply.echoed("host"), [host], "Host: {host}: {reply:#?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_target_authority_is_the_forwarded_host() {
    // RFC 9112 §3.2.2: with an absolute-form target the Host field is ignored.
    let backend = Backend::start("legacy").await;
    let cutover = proxy_to(&backend.url(), "");
    let reply = exchange(
        cutover.proxy,
        b"GET http://other.example/headers HTTP/1.1\r\nHost: ignored.example\r\n\r\n",
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:#?}");
    assert_eq!(reply.echoed("host"), ["other.example"], "{reply:#?}");
    assert_eq!(
        reply.echoed("x-forwarded-host"),
        ["other.example"],
        "{reply:#?}"
    );
    // The backend gets origin-form, as to any origin server.
    assert!(
        reply.echoed_request_line().starts_with("GET /headers "),
        "{reply:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_target_with_userinfo_is_400() {
    // RFC 9110 §4.2.4: userinfo in an http URI is to be treated as an error; the authority
    // becomes the forwarded Host, so it must pass the same checks as a Host field.
    let recorder = recording_backend().await;
    let cutover = proxy_to(&recorder.url(), "");
    let reply = exchange_until_close(
        cutover.proxy,
        b"GET http://user@other.example/headers HTTP/1.1\r\nHost: other.example\r\n\r\n",
    )
    .await;
    assert_rejected_unforwarded(&reply, &recorder, "absolute-form with userinfo");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_request_without_host_is_accepted() {
    let backend = Backend::start("legacy").await;
    let cutover = proxy_to(&backend.url(), "");
    let reply = exchange(cutover.proxy, b"GET /headers HTTP/1.0\r\n\r\n").await;
    assert_eq!(reply.status, 200, "{reply:#?}");
    assert_eq!(reply.header("x-backend"), Some("legacy"), "{reply:#?}");
    assert!(
        reply.echoed_request_line().starts_with("GET /headers "),
        "{reply:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Field syntax
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_in_a_field_value_is_400() {
    assert_proxy_rejects(
        b"GET /headers HTTP/1.1\r\nHost: a.example\r\nX-Test: a\0b\r\n\r\n",
        "NUL in a value",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_cr_in_a_field_value_is_400() {
    assert_proxy_rejects(
        b"GET /headers HTTP/1.1\r\nHost: a.example\r\nX-Test: a\rb\r\n\r\n",
        "bare CR in a value",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whitespace_between_field_name_and_colon_is_400() {
    // RFC 9112 §5.1: a server MUST reject this with 400 (a known smuggling vector).
    assert_proxy_rejects(
        b"GET /headers HTTP/1.1\r\nHost: a.example\r\nContent-Length : 4\r\n\r\nabcd",
        "space before colon",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn obsolete_line_folding_in_a_request_is_400() {
    // RFC 9112 §5.2: a server rejects obs-fold with 400 (or unfolds it; rejecting is strictest).
    assert_proxy_rejects(
        b"GET /headers HTTP/1.1\r\nHost: a.example\r\nX-Test: a\r\n folded\r\n\r\n",
        "obs-fold",
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// 4. Size limits
// ---------------------------------------------------------------------------------------------

/// A request head with `Host` plus `extra` headers named `x-h-N`.
fn request_with_headers(extra: usize) -> Vec<u8> {
    let mut request = String::from("GET /headers HTTP/1.1\r\nHost: a.example\r\n");
    for i in 0..extra {
        request.push_str(&format!("X-H-{i}: {i}\r\n"));
    }
    request.push_str("\r\n");
    request.into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_100_headers_is_431() {
    // A recorder as backend: it has no header limit of its own, so 100 fields pass end to end.
    let recorder = recording_backend().await;
    let cutover = proxy_to(&recorder.url(), "");
    let at_limit = exchange(cutover.proxy, &request_with_headers(99)).await;
    assert_eq!(at_limit.status, 200, "100 headers must pass: {at_limit:#?}");
    let over = exchange_until_close(cutover.proxy, &request_with_headers(100)).await;
    assert_eq!(over.status, 431, "101 headers: {over:#?}");
    assert!(over.closed, "{over:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_head_over_64_kib_is_431() {
    let backend = Backend::start("legacy").await;
    let cutover = proxy_to(&backend.url(), "");
    let head = |value_len: usize| {
        format!(
            "GET /headers HTTP/1.1\r\nHost: a.example\r\nX-Big: {}\r\n\r\n",
            "a".repeat(value_len)
        )
    };
    // Just under the limit passes; just over does not.
    let under = exchange(cutover.proxy, head(60 * 1024).as_bytes()).await;
    assert_eq!(
        under.status,
        200,
        "60 KiB head: {}",
        &under.raw[..under.raw.len().min(300)]
    );
    let over = exchange_until_close(cutover.proxy, head(65 * 1024).as_bytes()).await;
    assert_eq!(
        over.status,
        431,
        "65 KiB head: {}",
        &over.raw[..over.raw.len().min(300)]
    );
    assert!(over.closed);
}

// ---------------------------------------------------------------------------------------------
// 5. Hop-by-hop fields on requests
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_request_fields_are_not_forwarded() {
    let backend = Backend::start("legacy").await;
    let cutover = proxy_to(&backend.url(), "");
    let request = b"GET /headers HTTP/1.1\r\nHost: a.example\r\n\
Connection: keep-alive, x-drop-me\r\nX-Drop-Me: 1\r\nKeep-Alive: timeout=5\r\n\
Proxy-Connection: keep-alive\r\nTE: gzip\r\nX-Kept: 1\r\n\r\n";
    let reply = exchange(cutover.proxy, request).await;
    assert_eq!(reply.status, 200, "{reply:#?}");
    for name in [
        "connection",
        "x-drop-me",
        "keep-alive",
        "proxy-connection",
        "te",
    ] {
        assert!(
            reply.echoed(name).is_empty(),
            "backend saw {name}: {}",
            reply.body
        );
    }
    // An end-to-end field next to them is untouched.
    assert_eq!(reply.echoed("x-kept"), ["1"], "{}", reply.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_upgrade_request_is_answered_as_plain_http11() {
    // Upgrade: h2c would bypass routing and the kill switch: dropped, never a 101.
    let backend = Backend::start("legacy").await;
    let cutover = proxy_to(&backend.url(), "");
    let request =
        b"GET /headers HTTP/1.1\r\nHost: a.example\r\nConnection: Upgrade, HTTP2-Settings\r\n\
Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n";
    let reply = exchange(cutover.proxy, request).await;
    assert_eq!(reply.status, 200, "{reply:#?}");
    assert!(reply.interim.is_empty(), "{reply:#?}");
    assert_eq!(reply.header("x-backend"), Some("legacy"), "{reply:#?}");
    assert!(!reply.has_header("upgrade"), "{reply:#?}");
    for name in ["connection", "upgrade", "http2-settings"] {
        assert!(
            reply.echoed(name).is_empty(),
            "backend saw {name}: {}",
            reply.body
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn te_trailers_is_forwarded() {
    // gRPC needs `TE: trailers` end to end; other TE values are hop-by-hop.
    let backend = Backend::start("legacy").await;
    let cutover = proxy_to(&backend.url(), "");
    let request = b"GET /headers HTTP/1.1\r\nHost: a.example\r\nTE: trailers\r\n\r\n";
    let reply = exchange(cutover.proxy, request).await;
    assert_eq!(reply.status, 200, "{reply:#?}");
    assert_eq!(reply.echoed("te"), ["trailers"], "{}", reply.body);
    // As a compliant client sends it, TE named in `Connection` (RFC 9110 §10.1.4).
    let request =
        b"GET /headers HTTP/1.1\r\nHost: a.example\r\nConnection: TE\r\nTE: trailers, gzip\r\n\r\n";
    let reply = exchange(cutover.proxy, request).await;
    assert_eq!(reply.status, 200, "{reply:#?}");
    assert_eq!(reply.echoed("te"), ["trailers"], "{}", reply.body);
}

// ---------------------------------------------------------------------------------------------
// 6. Hop-by-hop fields on responses
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_response_fields_are_not_relayed() {
    let backend = RawBackend::start(
        b"HTTP/1.1 200 OK\r\nConnection: x-secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\nX-Kept: 1\r\nContent-Length: 2\r\n\r\nok",
    )
    .await;
    let cutover = proxy_to(&backend.url(), "");
    let reply = exchange(cutover.proxy, b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n").await;
    assert_eq!(reply.status, 200, "{reply:#?}");
    assert_eq!(reply.body, "ok", "{reply:#?}");
    assert!(!reply.has_header("x-secret"), "{reply:#?}");
    assert!(!reply.has_header("keep-alive"), "{reply:#?}");
    assert!(
        !reply
            .header("connection")
            .unwrap_or("")
            .contains("x-secret"),
        "{reply:#?}"
    );
    assert_eq!(reply.header("x-kept"), Some("1"), "{reply:#?}");
}

// ---------------------------------------------------------------------------------------------
// 7. Forwarding fields
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_for_is_the_peer_address() {
    let backend = Backend::start("legacy").await;
    let cutover = proxy_to(&backend.url(), "");
    let reply = exchange(
        cutover.proxy,
        b"GET /headers HTTP/1.1\r\nHost: a.example\r\n\r\n",
    )
    .await;
    assert_eq!(
        reply.echoed("x-forwarded-for"),
        ["127.0.0.1"],
        "{}",
        reply.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_for_is_appended_to_an_existing_chain() {
    let backend = Backend::start("legacy").await;
    let cutover = proxy_to(&backend.url(), "");
    let request = b"GET /headers HTTP/1.1\r\nHost: a.example\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n";
    let reply = exchange(cutover.proxy, request).await;
    assert_eq!(
        reply.echoed("x-forwarded-for"),
        ["1.2.3.4, 127.0.0.1"],
        "{}",
        reply.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_proto_and_host_are_set_and_host_is_kept() {
    let backend = Backend::start("legacy").await;
    let cutover = proxy_to(&backend.url(), "");
    let reply = exchange(
        cutover.proxy,
        b"GET /headers HTTP/1.1\r\nHost: shop.example:8443\r\n\r\n",
    )
    .await;
    assert_eq!(
        reply.echoed("host"),
        ["shop.example:8443"],
        "{}",
        reply.body
    );
    assert_eq!(
        reply.echoed("x-forwarded-proto"),
        ["http"],
        "{}",
        reply.body
    );
    assert_eq!(
        reply.echoed("x-forwarded-host"),
        ["shop.example:8443"],
        "{}",
        reply.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_proto_and_host_from_an_untrusted_client_are_replaced() {
    // Without trusted_proxies nobody's X-Forwarded-Proto/-Host is believed.
    let backend = Backend::start("legacy").await;
    let cutover = proxy_to(&backend.url(), "");
    let request = b"GET /headers HTTP/1.1\r\nHost: shop.example\r\n\
X-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\n\r\n";
    let reply = exchange(cutover.proxy, request).await;
    assert_eq!(
        reply.echoed("x-forwarded-proto"),
        ["http"],
        "{}",
        reply.body
    );
    assert_eq!(
        reply.echoed("x-forwarded-host"),
        ["shop.example"],
        "{}",
        reply.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_request_id_is_added_when_absent() {
    let backend = Backend::start("legacy").await;
    let cutover = proxy_to(&backend.url(), "");
    let mut ids = Vec::new();
    for _ in 0..2 {
        let reply = exchange(
            cutover.proxy,
            b"GET /headers HTTP/1.1\r\nHost: a.example\r\n\r\n",
        )
        .await;
        let echoed = reply.echoed("x-request-id");
        assert_eq!(echoed.len(), 1, "{}", reply.body);
        assert!(!echoed[0].is_empty(), "{}", reply.body);
        ids.push(echoed[0].to_owned());
    }
    assert_ne!(ids[0], ids[1], "two requests got the same id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_request_id_is_kept_when_present() {
    let backend = Backend::start("legacy").await;
    let cutover = proxy_to(&backend.url(), "");
    let request =
        b"GET /headers HTTP/1.1\r\nHost: a.example\r\nX-Request-Id: client-chosen-42\r\n\r\n";
    let reply = exchange(cutover.proxy, request).await;
    assert_eq!(
        reply.echoed("x-request-id"),
        ["client-chosen-42"],
        "{}",
        reply.body
    );
}

// ---------------------------------------------------------------------------------------------
// 8. Bad backend responses: 502, never relayed raw
// ---------------------------------------------------------------------------------------------

/// Runs one GET through cutover to a raw backend sending `reply` and returns what the
/// client got.
async fn through_raw_backend(reply: &'static [u8]) -> Reply {
    let backend = RawBackend::start(reply).await;
    let cutover = proxy_to(&backend.url(), "");
    let got = exchange(cutover.proxy, b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n").await;
    drop(backend);
    got
}

/// The client got a 502 written by cutover, not the backend's bytes.
fn assert_proxy_502(reply: &Reply, what: &str) {
    assert_eq!(reply.status, 502, "{what}: {reply:#?}");
    assert!(reply.has_header("x-cutover-error"), "{what}: {reply:#?}");
    assert!(
        reply.body.contains("main"),
        "{what}: body should name the route: {reply:#?}"
    );
    assert_eq!(reply.responses(), 1, "{what}: {reply:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_backend_status_line_is_502() {
    let reply = through_raw_backend(b"HTTP/1.1 abc\r\n\r\n").await;
    assert_proxy_502(&reply, "HTTP/1.1 abc");
    assert!(!reply.raw.contains("abc\r\n"), "{reply:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_response_with_content_length_and_transfer_encoding_is_502() {
    // RFC 9112 §6.1: "ought to be handled as an error" (response splitting). The body is
    // valid chunked but the Content-Length disagrees, as in a real desync.
    let reply = through_raw_backend(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    )
    .await;
    assert_proxy_502(&reply, "response with Content-Length and Transfer-Encoding");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_response_with_differing_content_lengths_is_502() {
    let reply = through_raw_backend(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!",
    )
    .await;
    assert_proxy_502(&reply, "response with two Content-Lengths");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_garbage_is_502() {
    let reply = through_raw_backend(b"\x00\x01\x02 this is not HTTP at all\r\n\r\n").await;
    assert_proxy_502(&reply, "garbage");
    assert!(!reply.raw.contains("not HTTP"), "{reply:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_closing_without_a_byte_is_502() {
    let reply = through_raw_backend(b"").await;
    assert_proxy_502(&reply, "empty reply");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_100_continue_then_200_gives_the_client_the_200() {
    let reply = through_raw_backend(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await;
    // A proxy may relay the 100 (RFC 9110 §15.2) but the final response must be the 200.
    assert_eq!(reply.status, 200, "{reply:#?}");
    assert_eq!(reply.body, "hello", "{reply:#?}");
    assert!(reply.interim.iter().all(|s| *s == 100), "{reply:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_sending_only_a_1xx_is_502() {
    // A 1xx is never the final response, even when nothing follows it.
    let reply = through_raw_backend(b"HTTP/1.1 100 Continue\r\n\r\n").await;
    assert_proxy_502(&reply, "only 100 Continue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_101_to_a_request_without_upgrade_is_502() {
    let reply = through_raw_backend(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
    )
    .await;
    assert_proxy_502(&reply, "unsolicited 101");
}

// ---------------------------------------------------------------------------------------------
// 9. Slow clients
// ---------------------------------------------------------------------------------------------

/// Connects, sends `partial`, then stalls; returns how long until the proxy closed.
/// Sends `partial` to a proxy with `client_header_timeout: 1s` and checks that the connection
/// is closed about a second later, not before.
async fn assert_cut_off_after_header_timeout(partial: &[u8]) {
    let backend = Backend::start("legacy").await;
    let cutover = proxy_to(&backend.url(), "client_header_timeout: 1s\n");
    let elapsed = raw::time_until_closed(cutover.proxy, partial).await;
    assert!(
        elapsed >= Duration::from_millis(800),
        "closed too early: {elapsed:?}"
    );
    assert!(
        elapsed <= Duration::from_secs(3),
        "closed too late: {elapsed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_a_request_head_is_cut_off_after_client_header_timeout() {
    assert_cut_off_after_header_timeout(b"GET /headers HTTP/1.1\r\nHost: a.exa").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_http2_preface_is_cut_off_after_client_header_timeout() {
    // The first bytes of the h2c prior-knowledge preface, then nothing: still a slow client.
    assert_cut_off_after_header_timeout(b"PRI * HTTP/2.0\r\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connection_is_cut_off_after_client_header_timeout() {
    // A client that connects and sends nothing holds a connection just the same.
    assert_cut_off_after_header_timeout(b"").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_and_flags_listeners_cut_off_slow_heads_too() {
    let backend = Backend::start("legacy").await;
    let cutover = proxy_to(
        &backend.url(),
        "client_header_timeout: 1s\nflags_api: { listen: 127.0.0.1:0 }\n",
    );
    let flags = cutover.flags.expect("a flags listener");
    let partial: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: a.exa";
    let stalls = [
        (cutover.admin, partial),
        (cutover.admin, &b""[..]),
        (flags, partial),
        (flags, &b""[..]),
    ];
    let elapsed = futures_util::future::join_all(
        stalls.map(|(addr, sent)| raw::time_until_closed(addr, sent)),
    )
    .await;
    for (elapsed, (addr, sent)) in elapsed.into_iter().zip(stalls) {
        let what = format!("{addr} after {:?}", String::from_utf8_lossy(sent));
        assert!(
            elapsed >= Duration::from_millis(800),
            "{what}: closed too early: {elapsed:?}"
        );
        assert!(
            elapsed <= Duration::from_secs(3),
            "{what}: closed too late: {elapsed:?}"
        );
    }
}
