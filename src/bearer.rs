//! `Authorization: Bearer <token>` checks for the admin and flags APIs, in constant time.

use http::header::AUTHORIZATION;
use http::HeaderMap;
use subtle::ConstantTimeEq;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bearer {
    /// No bearer token: answer 401.
    Missing,
    /// A token that is not the expected one: answer 403.
    Wrong,
    Valid,
}

pub fn check(headers: &HeaderMap, expected: &str) -> Bearer {
    let presented = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        None => Bearer::Missing,
        Some(token) if bool::from(token.trim().as_bytes().ct_eq(expected.as_bytes())) => {
            Bearer::Valid
        }
        Some(_) => Bearer::Wrong,
    }
}
