//! What routing reads in a request: whether a route's match conditions hold, and which bucket
//! the request falls in (its sticky key's, see [`crate::bucket`], or a uniform random one).
//! A route's compiled form, which maps buckets to backends, is the snapshot's `LiveRoute`.
//!
//! Nothing here allocates or locks.

use std::cell::RefCell;
use std::io::Write;
use std::net::IpAddr;

use http::header::{HeaderName, COOKIE};
use http::{HeaderMap, HeaderValue, Method};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::bucket::{bucket, BUCKETS};

/// What routing looks at in a request, borrowed from it.
pub struct RequestHead<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// Lower- or mixed-case host without port, from the target's authority or `Host`.
    pub host: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub client_ip: IpAddr,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathMatch {
    /// Whole segments: `/api` matches `/api` and `/api/x`, not `/apix`. `/` matches all.
    Prefix(String),
    Exact(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostMatch {
    /// Lower case.
    Exact(String),
    /// `*.example.com` stored as `.example.com`; matches `a.example.com`, not `example.com`.
    Suffix(String),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Matcher {
    pub path: Option<PathMatch>,
    pub host: Option<HostMatch>,
    /// Empty: any method.
    pub methods: Vec<Method>,
    /// Every one must be present with exactly this value.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StickySource {
    Header(HeaderName),
    Cookie(String),
    Query(String),
    ClientIp,
}

impl PathMatch {
    fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(exact) => path == exact,
            PathMatch::Prefix(prefix) => segment_prefix(prefix, path),
        }
    }
}

fn segment_prefix(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || (path.starts_with(prefix)
            && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/')))
}

impl HostMatch {
    fn matches(&self, host: &str) -> bool {
        match self {
            HostMatch::Exact(exact) => host.eq_ignore_ascii_case(exact),
            HostMatch::Suffix(suffix) => {
                host.len() > suffix.len()
                    && host.is_char_boundary(host.len() - suffix.len())
                    && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            }
        }
    }
}

impl Matcher {
    pub fn matches(&self, req: &RequestHead<'_>) -> bool {
        if let Some(path) = &self.path {
            if !path.matches(req.path) {
                return false;
            }
        }
        if let Some(host) = &self.host {
            match req.host {
                Some(h) if host.matches(h) => {}
                _ => return false,
            }
        }
        if !self.methods.is_empty() && !self.methods.contains(req.method) {
            return false;
        }
        self.headers
            .iter()
            .all(|(name, value)| req.headers.get_all(name).iter().any(|v| v == value))
    }

    /// True when every request `other` matches is also matched by `self`, so a route with
    /// `other` placed after one with `self` can never be reached.
    pub fn covers(&self, other: &Matcher) -> bool {
        let path = || match (&self.path, &other.path) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(PathMatch::Prefix(a)), Some(PathMatch::Prefix(b) | PathMatch::Exact(b))) => {
                segment_prefix(a, b)
            }
            (Some(PathMatch::Exact(a)), Some(PathMatch::Exact(b))) => a == b,
            (Some(PathMatch::Exact(_)), Some(PathMatch::Prefix(_))) => false,
        };
        let host = || match (&self.host, &other.host) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(a), Some(HostMatch::Exact(b))) => a.matches(b),
            (Some(HostMatch::Suffix(a)), Some(HostMatch::Suffix(b))) => {
                b.len() >= a.len() && b.ends_with(a.as_str())
            }
            (Some(HostMatch::Exact(_)), Some(HostMatch::Suffix(_))) => false,
        };
        let methods = || {
            self.methods.is_empty()
                || (!other.methods.is_empty()
                    && other.methods.iter().all(|m| self.methods.contains(m)))
        };
        let headers = || self.headers.iter().all(|h| other.headers.contains(h));
        // Cheapest and most selective first: a reload checks every pair of routes.
        path() && host() && methods() && headers()
    }
}

/// The bucket a request falls in on route `name`: from its sticky key when it has one,
/// otherwise uniformly random.
pub fn request_bucket(name: &str, sticky: Option<&StickySource>, req: &RequestHead<'_>) -> u16 {
    sticky
        .and_then(|source| sticky_bucket(name, source, req))
        .unwrap_or_else(random_bucket)
}

fn sticky_bucket(route: &str, source: &StickySource, req: &RequestHead<'_>) -> Option<u16> {
    match source {
        StickySource::Header(name) => req
            .headers
            .get(name)
            .map(HeaderValue::as_bytes)
            .filter(|v| !v.is_empty())
            .map(|key| bucket(route, key)),
        StickySource::Cookie(name) => cookie_value(req.headers, name).map(|key| bucket(route, key)),
        StickySource::Query(name) => req
            .query
            .and_then(|q| query_value(q, name))
            .map(|key| bucket(route, key)),
        StickySource::ClientIp => {
            let mut buf = [0u8; 48];
            let mut cursor = std::io::Cursor::new(&mut buf[..]);
            // An IPv6 address is at most 45 characters, so this cannot overflow.
            write!(cursor, "{}", req.client_ip).ok()?;
            let len = cursor.position() as usize;
            Some(bucket(route, &buf[..len]))
        }
    }
}

fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers.get_all(COOKIE).iter().find_map(|header| {
        header.as_bytes().split(|&b| b == b';').find_map(|pair| {
            let pair = pair.trim_ascii();
            let value = pair.strip_prefix(name.as_bytes())?.strip_prefix(b"=")?;
            (!value.is_empty()).then_some(value)
        })
    })
}

fn query_value<'a>(query: &'a str, name: &str) -> Option<&'a [u8]> {
    query.split('&').find_map(|pair| {
        let value = pair.strip_prefix(name)?.strip_prefix('=')?;
        (!value.is_empty()).then_some(value.as_bytes())
    })
}

thread_local! {
    static RNG: RefCell<SmallRng> = RefCell::new(SmallRng::from_rng(&mut rand::rng()));
}

fn random_bucket() -> u16 {
    RNG.with(|rng| rng.borrow_mut().random_range(0..BUCKETS as u16))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head<'a>(method: &'a Method, path: &'a str, headers: &'a HeaderMap) -> RequestHead<'a> {
        RequestHead {
            method,
            path,
            query: None,
            host: Some("shop.example.com"),
            headers,
            client_ip: IpAddr::from([127, 0, 0, 1]),
        }
    }

    #[test]
    fn prefix_matches_whole_segments() {
        let m = Matcher {
            path: Some(PathMatch::Prefix("/api/payments".into())),
            ..Matcher::default()
        };
        let headers = HeaderMap::new();
        for (path, expected) in [
            ("/api/payments", true),
            ("/api/payments/", true),
            ("/api/payments/x", true),
            ("/api/paymentsX", false),
            ("/api/pay", false),
            ("/", false),
        ] {
            assert_eq!(
                m.matches(&head(&Method::GET, path, &headers)),
                expected,
                "{path}"
            );
        }
    }

    #[test]
    fn host_wildcard_matches_subdomains_only() {
        let m = HostMatch::Suffix(".example.com".into());
        assert!(m.matches("shop.example.com"));
        assert!(m.matches("A.EXAMPLE.COM"));
        assert!(!m.matches("example.com"));
        assert!(!m.matches("badexample.com"));
    }

    #[test]
    fn methods_and_headers_must_all_hold() {
        let m = Matcher {
            methods: vec![Method::POST],
            headers: vec![(
                HeaderName::from_static("x-tenant"),
                HeaderValue::from_static("acme"),
            )],
            ..Matcher::default()
        };
        let mut headers = HeaderMap::new();
        assert!(!m.matches(&head(&Method::POST, "/", &headers)));
        headers.insert("x-tenant", HeaderValue::from_static("acme"));
        assert!(m.matches(&head(&Method::POST, "/", &headers)));
        assert!(!m.matches(&head(&Method::GET, "/", &headers)));
    }

    #[test]
    fn covers_detects_shadowed_routes() {
        let all = Matcher {
            path: Some(PathMatch::Prefix("/".into())),
            ..Matcher::default()
        };
        let api = Matcher {
            path: Some(PathMatch::Prefix("/api".into())),
            ..Matcher::default()
        };
        let api_get = Matcher {
            methods: vec![Method::GET],
            ..api.clone()
        };
        assert!(all.covers(&api));
        assert!(api.covers(&api_get));
        assert!(!api_get.covers(&api));
        assert!(!api.covers(&all));
    }

    #[test]
    fn sticky_keys_come_from_cookie_and_query() {
        let mut headers = HeaderMap::new();
        headers.insert(COOKIE, HeaderValue::from_static("a=1; uid=u42; b=2"));
        assert_eq!(cookie_value(&headers, "uid"), Some(&b"u42"[..]));
        assert_eq!(cookie_value(&headers, "u"), None);
        assert_eq!(query_value("x=1&uid=u42", "uid"), Some(&b"u42"[..]));
        assert_eq!(query_value("uidx=1&uid=", "uid"), None);
    }
}
