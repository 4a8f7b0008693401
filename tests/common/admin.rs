//! The admin API's write side: the one bearer token the tests configure, and POSTs to it.

use std::net::SocketAddr;

use bytes::Bytes;
use http::StatusCode;

use super::{client, get, send, Cutover};

/// The admin token every test that writes to the admin API configures.
pub const TOKEN: &str = "s3cret-token";

/// The environment that configures `TOKEN`, for `Cutover::start_with_env` and `restart`.
pub const ADMIN_ENV: &[(&str, &str)] = &[("CUTOVER_ADMIN_TOKEN", TOKEN)];

/// POSTs `body` to `path` on the admin listener, with `Authorization: Bearer TOKEN` when a
/// token is given: (status, body).
pub async fn admin_post(
    cutover: &Cutover,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (StatusCode, String) {
    post_to(cutover.admin, path, token, body).await
}

/// [`admin_post`] to an admin listener's address, for a task that outlives the borrow.
pub async fn post_to(
    admin: SocketAddr,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (StatusCode, String) {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer
        .as_deref()
        .map(|b| vec![("authorization", b)])
        .unwrap_or_default();
    let (status, _, body) = send(
        &client(),
        admin,
        "POST",
        path,
        &headers,
        Bytes::from(body.to_owned()),
    )
    .await;
    (status, body)
}

/// An admin API answer read as JSON; `Null` when it is not JSON.
pub fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or(serde_json::Value::Null)
}

/// `GET /api/status`, parsed.
pub async fn status_json(cutover: &Cutover) -> serde_json::Value {
    let (status, _, body) = get(cutover.admin, "/api/status", &[]).await;
    assert_eq!(status, StatusCode::OK);
    serde_json::from_str(&body).unwrap()
}
