//! The status page's HTTP contract on the admin listener: the document and its assets, each
//! with its content type and the headers that keep it safe. What it shows is tested in a real
//! browser by tests/browser/run.sh.

mod common;

use bytes::Bytes;
use common::{client, get, send, split_config, Backend, Cutover};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_and_its_assets_are_served_with_strict_headers() {
    let legacy = Backend::start("legacy").await;
    let cutover = Cutover::start(&split_config(&[("legacy", &legacy.url(), 100.0)], ""));

    for (path, content_type, marker) in [
        (
            "/",
            "text/html; charset=utf-8",
            "<script src=\"/status.js\"",
        ),
        (
            "/status.js",
            "text/javascript; charset=utf-8",
            "/api/status",
        ),
        ("/status.css", "text/css; charset=utf-8", "--bad"),
    ] {
        let (status, headers, body) = get(cutover.admin, path, &[]).await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(headers["content-type"], content_type, "{path}");
        let csp = headers["content-security-policy"].to_str().unwrap();
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(directive), "{path}: {csp}");
        }
        assert!(!csp.contains("unsafe"), "{path}: {csp}");
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(headers["referrer-policy"], "no-referrer", "{path}");
        assert_eq!(headers["cache-control"], "no-store", "{path}");
        assert!(body.contains(marker), "{path}");
    }

    // No inline script or style anywhere: the CSP would block it.
    let (_, _, html) = get(cutover.admin, "/", &[]).await;
    assert!(!html.contains("<script>") && !html.contains("<style") && !html.contains("style="));

    let (status, headers, body) =
        send(&client(), cutover.admin, "HEAD", "/", &[], Bytes::new()).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert!(body.is_empty());

    let (status, headers, _) = send(
        &client(),
        cutover.admin,
        "DELETE",
        "/status.js",
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(status, 405);
    assert_eq!(headers["allow"], "GET, HEAD");
}
