//! Entry points for the cargo-fuzz targets in `fuzz/`: thin wrappers over the parsers of
//! untrusted bytes, some of them private to their modules. Not an API; nothing in the crate
//! calls them.

use std::path::Path;
use std::sync::Arc;

use http::header::{HeaderValue, HOST};
use http::{Method, Request, Uri, Version};

use crate::listener::framing::{FramingWatch, Sniffed};
use crate::proxy::hygiene;

/// What the framing sniffer made of a connection's bytes.
#[derive(Debug, PartialEq, Eq)]
pub struct Sniff {
    /// Request heads it followed to their end.
    pub heads: u32,
    /// 1-based numbers of the heads it flagged as ambiguous.
    pub ambiguous: Vec<u32>,
}

/// Feeds `chunks` to the sniffer as successive reads of one connection.
pub fn sniff(chunks: &[&[u8]]) -> Sniff {
    let watch = Arc::new(FramingWatch::default());
    let mut sniffed = Sniffed::new((), watch.clone());
    for chunk in chunks {
        sniffed.observe(chunk);
    }
    let heads = sniffed.heads();
    // The handler asks once per request, in order; so does this.
    let ambiguous = (1..=heads)
        .filter(|_| watch.next_request_is_ambiguous())
        .collect();
    Sniff { heads, ambiguous }
}

/// Runs `hygiene::inspect` on a request built from raw parts; parts `http` rejects are
/// skipped, as hyper would never produce them. Returns whether the request was accepted.
pub fn inspect_head(method: &[u8], uri: &[u8], version: u8, hosts: &[&[u8]]) -> bool {
    let Ok(method) = Method::from_bytes(method) else {
        return false;
    };
    let Ok(uri) = Uri::try_from(uri) else {
        return false;
    };
    let version = match version % 4 {
        0 => Version::HTTP_10,
        1 => Version::HTTP_11,
        2 => Version::HTTP_2,
        _ => Version::HTTP_09,
    };
    let mut req = Request::new(());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = version;
    for host in hosts {
        let Ok(value) = HeaderValue::from_bytes(host) else {
            return false;
        };
        req.headers_mut().append(HOST, value);
    }
    match hygiene::inspect(&req) {
        Ok(Some(addressed)) => {
            // The host a route matches on is the validated authority's own prefix.
            let authority = addressed.as_str();
            assert!(authority.starts_with(addressed.host()));
            assert_eq!(
                hygiene::host_without_port(authority),
                Some(addressed.host())
            );
            true
        }
        Ok(None) => true,
        Err(_) => false,
    }
}

/// `hygiene::host_without_port` on any text; the host it returns must be a prefix.
pub fn host_without_port(authority: &str) -> Option<&str> {
    let host = hygiene::host_without_port(authority);
    if let Some(host) = host {
        assert!(authority.starts_with(host));
    }
    host
}

/// Parses and validates a config text. The path's directory does not exist, so a relative
/// `flags_file` is a read error rather than whatever lies next to the fuzzer.
pub fn compile_config(text: &str) -> bool {
    crate::config::compile_text(Path::new("/nonexistent/cutover-fuzz/cutover.yaml"), text).is_ok()
}

/// Both OFREP request body readers (the JSON tree for bulk evaluations, in place for a single
/// flag); true when the body holds a usable context. Panics when they disagree.
pub fn ofrep_context(body: &[u8]) -> bool {
    crate::flags_api::context::assert_readers_agree(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniff_counts_heads_and_flags_the_ambiguous_one() {
        let stream: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\
            POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let expected = Sniff {
            heads: 2,
            ambiguous: vec![2],
        };
        assert_eq!(sniff(&[stream]), expected);
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(sniff(&bytes), expected);
    }

    /// Found by reading, not by the fuzzer: hyper (httparse) accepts a bare LF as a line end,
    /// and the sniffer once ended a head only at CRLF CRLF. A bare-LF request merged into the
    /// next head, so an ambiguous second request was recorded as head 1 and forwarded.
    #[test]
    fn a_bare_lf_head_is_counted() {
        let stream: &[u8] = b"GET / HTTP/1.1\nHost: x\n\n\
            POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        let expected = Sniff {
            heads: 2,
            ambiguous: vec![2],
        };
        assert_eq!(sniff(&[stream]), expected);
    }

    #[test]
    fn wrappers_reach_their_parsers() {
        assert!(inspect_head(b"GET", b"/", 1, &[b"example.com:80"]));
        assert!(!inspect_head(b"GET", b"/", 1, &[]));
        assert_eq!(host_without_port("example.com:80"), Some("example.com"));
        assert!(!compile_config("routes: ["));
        assert!(ofrep_context(br#"{"context": {"targetingKey": "u1"}}"#));
        assert!(!ofrep_context(b"[]"));
    }
}
