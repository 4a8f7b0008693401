//! The live status page on the admin listener: one HTML document, its script and its
//! stylesheet, embedded in the binary so the page needs no CDN, no build step and no files on
//! disk. The page polls `/api/status` and calls the admin API with a bearer token it keeps in
//! `sessionStorage`; nothing here ever sees that token.
//!
//! Every answer carries a strict `Content-Security-Policy` (own scripts and styles only, no
//! inline code, no framing), so a route or flag name that slipped markup into the page could
//! still not run script.

use bytes::Bytes;
use http::header::{
    HeaderValue, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY,
    X_CONTENT_TYPE_OPTIONS,
};
use http::Response;
use http_body_util::Full;

pub struct Asset {
    pub path: &'static str,
    pub content_type: &'static str,
    pub body: &'static str,
}

pub const ASSETS: [Asset; 3] = [
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_str!("page/index.html"),
    },
    Asset {
        path: "/status.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("page/status.js"),
    },
    Asset {
        path: "/status.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("page/status.css"),
    },
];

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub fn find(path: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|asset| asset.path == path)
}

pub fn respond(asset: &'static Asset) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(asset.body.as_bytes())));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    // The page is small and changes with the binary: never serve a stale one after an upgrade.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
