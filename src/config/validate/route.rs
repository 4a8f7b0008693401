//! Backends and routes: each backend's URL and timeouts, each route's matcher, split,
//! sticky source and guard, and which routes an earlier one shadows.

use std::collections::HashMap;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{HeaderName, HeaderValue, Method, Uri};

use super::Validator;
use crate::bucket::{basis_points, format_percent, BUCKETS};
use crate::config::model::{BackendSpec, GuardSpec, RouteSpec};
use crate::config::raw::{RawBackend, RawGuard, RawMatch, RawRoute, RawSticky};
use crate::proxy::routing::{HostMatch, Matcher, PathMatch, StickySource};

const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_GUARD_MIN_REQUESTS: u64 = 20;
const DEFAULT_GUARD_WINDOW: Duration = Duration::from_secs(30);

impl Validator<'_> {
    pub(super) fn backend(&mut self, name: &str, raw: &RawBackend) -> Option<BackendSpec> {
        let path = format!("backends.{name}");
        let name_ok = self.name(&path, "backend", name);
        let url_path = format!("{path}.url");
        let connect_timeout = self.duration(
            &format!("{path}.connect_timeout"),
            raw.connect_timeout.as_deref(),
            DEFAULT_CONNECT_TIMEOUT,
        );
        let request_timeout = self.duration(
            &format!("{path}.request_timeout"),
            raw.request_timeout.as_deref(),
            DEFAULT_REQUEST_TIMEOUT,
        );
        let read_timeout = self.duration(
            &format!("{path}.read_timeout"),
            raw.read_timeout.as_deref(),
            DEFAULT_READ_TIMEOUT,
        );
        let uri: Uri = match raw.url.parse() {
            Ok(uri) => uri,
            Err(_) => {
                self.error(&url_path, format!("{:?} is not a URL", raw.url));
                return None;
            }
        };
        if uri.scheme() != Some(&Scheme::HTTP) {
            self.error(
                &url_path,
                format!("{:?}: only http:// backends are supported", raw.url),
            );
            return None;
        }
        let authority = match uri.authority() {
            Some(a) if !a.as_str().contains('@') && !a.host().is_empty() => a.clone(),
            _ => {
                self.error(
                    &url_path,
                    format!("{:?} needs a host and no user info", raw.url),
                );
                return None;
            }
        };
        if uri.query().is_some() || raw.url.contains('#') {
            self.error(
                &url_path,
                format!("{:?}: a backend URL takes no query or fragment", raw.url),
            );
            return None;
        }
        let base_path = uri.path().trim_end_matches('/').to_owned();
        name_ok.then(|| BackendSpec {
            name: name.to_owned(),
            url: raw.url.clone(),
            authority,
            base_path,
            connect_timeout,
            request_timeout,
            read_timeout,
            http2: raw.http2,
        })
    }

    pub(super) fn route(
        &mut self,
        path: &str,
        raw: &RawRoute,
        declared: &[&str],
        backends: &[BackendSpec],
    ) -> Option<RouteSpec> {
        let errors_before = self.errors.len();
        self.name(&format!("{path}.name"), "route", &raw.name);
        let matcher = self.matcher(&format!("{path}.match"), &raw.matcher);
        let (split, stable) = self.split(path, raw, declared, backends);
        let sticky = raw
            .sticky
            .as_ref()
            .and_then(|s| self.sticky(&format!("{path}.sticky"), s));
        let guard = raw
            .guard
            .as_ref()
            .map(|g| self.guard(&format!("{path}.guard"), g));
        let shadow = raw.shadow.as_ref().and_then(|s| {
            let stable = split.first().map_or(stable, |&(index, _)| index);
            self.shadow(&format!("{path}.shadow"), s, stable, declared, backends)
        });
        let ramp = raw.ramp.as_ref().and_then(|r| {
            self.ramp(
                &format!("{path}.ramp"),
                r,
                &split,
                shadow.as_ref(),
                backends,
            )
        });
        if self.errors.len() > errors_before {
            return None;
        }
        Some(RouteSpec {
            name: raw.name.clone(),
            matcher,
            split,
            stable,
            sticky,
            strip_prefix: raw.strip_prefix,
            kill: raw.kill,
            guard,
            fallback: raw.fallback,
            shadow,
            ramp,
        })
    }

    fn matcher(&mut self, path: &str, raw: &RawMatch) -> Matcher {
        let mut matcher = Matcher::default();
        if raw.path_prefix.is_some() && raw.path_exact.is_some() {
            self.error(
                path,
                "path_prefix and path_exact cannot both be set".to_owned(),
            );
        }
        if let Some(prefix) = &raw.path_prefix {
            let at = format!("{path}.path_prefix");
            if !prefix.starts_with('/') || prefix.contains(['?', '#']) {
                self.error(&at, format!("{prefix:?} must be a path starting with '/'"));
            } else if prefix.len() > 1 && prefix.ends_with('/') {
                self.error(
                    &at,
                    format!(
                        "{prefix:?} must not end with '/': prefixes match whole segments, so {:?} already matches {prefix:?}",
                        prefix.trim_end_matches('/')
                    ),
                );
            } else {
                matcher.path = Some(PathMatch::Prefix(prefix.clone()));
            }
        }
        if let Some(exact) = &raw.path_exact {
            if !exact.starts_with('/') || exact.contains(['?', '#']) {
                self.error(
                    &format!("{path}.path_exact"),
                    format!("{exact:?} must be a path starting with '/'"),
                );
            } else {
                matcher.path = Some(PathMatch::Exact(exact.clone()));
            }
        }
        if let Some(host) = &raw.host {
            matcher.host = self.host(&format!("{path}.host"), host);
        }
        if let Some(methods) = &raw.methods {
            let at = format!("{path}.methods");
            if methods.is_empty() {
                self.error(
                    &at,
                    "an empty list matches nothing; leave it out to match any method".to_owned(),
                );
            }
            for (i, method) in methods.iter().enumerate() {
                match Method::from_bytes(method.to_ascii_uppercase().as_bytes()) {
                    Ok(m) => matcher.methods.push(m),
                    Err(_) => self.error(
                        &format!("{at}[{i}]"),
                        format!("{method:?} is not an HTTP method"),
                    ),
                }
            }
        }
        if let Some(headers) = &raw.headers {
            for (name, value) in &headers.0 {
                let at = format!("{path}.headers.{name}");
                match (
                    HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_str(value),
                ) {
                    (Ok(n), Ok(v)) => matcher.headers.push((n, v)),
                    (Err(_), _) => self.error(&at, format!("{name:?} is not a header name")),
                    (_, Err(_)) => self.error(&at, format!("{value:?} is not a header value")),
                }
            }
        }
        let has_condition = raw.path_prefix.is_some()
            || raw.path_exact.is_some()
            || raw.host.is_some()
            || raw.methods.is_some()
            || raw.headers.as_ref().is_some_and(|h| !h.0.is_empty());
        if !has_condition {
            self.error(
                path,
                "needs at least one of path_prefix, path_exact, host, methods, headers (path_prefix: / matches everything)".to_owned(),
            );
        }
        matcher
    }

    fn host(&mut self, path: &str, host: &str) -> Option<HostMatch> {
        let lower = host.to_ascii_lowercase();
        let (wildcard, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        let valid = !name.is_empty()
            && !name.contains('*')
            && name
                .parse::<Authority>()
                .is_ok_and(|a| a.port().is_none() && a.as_str() == name);
        if !valid {
            self.error(
                path,
                format!("{host:?} must be a host name without port, like shop.example.com or *.example.com"),
            );
            return None;
        }
        Some(if wildcard {
            HostMatch::Suffix(format!(".{name}"))
        } else {
            HostMatch::Exact(name.to_owned())
        })
    }

    fn split(
        &mut self,
        path: &str,
        raw: &RawRoute,
        declared: &[&str],
        backends: &[BackendSpec],
    ) -> (Vec<(usize, u32)>, usize) {
        let split_path = format!("{path}.split");
        if raw.split.0.is_empty() {
            self.error(&split_path, "needs at least one backend".to_owned());
            return (Vec::new(), 0);
        }
        let mut shares: Vec<(usize, u32)> = Vec::new();
        let mut total = 0u32;
        for (name, percent) in &raw.split.0 {
            let at = format!("{split_path}.{name}");
            let share = self.percent(&at, *percent);
            total += share.unwrap_or(0);
            if !declared.contains(&name.as_str()) {
                self.error_at(&split_path, &at, format!("unknown backend {name:?}"));
                continue;
            }
            // Declared but invalid backends were reported where they are declared.
            if let (Some(index), Some(share)) =
                (backends.iter().position(|b| &b.name == name), share)
            {
                shares.push((index, share));
            }
        }
        if total != BUCKETS && self.errors.iter().all(|e| !e.path.starts_with(&split_path)) {
            self.error(
                &split_path,
                format!("shares sum to {}%, must be 100", format_percent(total)),
            );
        }
        let stable_name = raw.stable.as_deref().unwrap_or(&raw.split.0[0].0);
        let stable = match backends.iter().position(|b| b.name == stable_name) {
            Some(index) if raw.split.0.iter().any(|(n, _)| n == stable_name) => index,
            _ => {
                if raw.split.0.iter().all(|(n, _)| n != stable_name) {
                    self.error(
                        &format!("{path}.stable"),
                        format!("{stable_name:?} is not in this route's split"),
                    );
                }
                0
            }
        };
        // The stable backend owns the low buckets; the others follow in file order.
        shares.sort_by_key(|&(index, _)| index != stable);
        (shares, stable)
    }

    /// A percentage as basis points.
    fn percent(&mut self, path: &str, value: f64) -> Option<u32> {
        basis_points(value)
            .map_err(|message| self.error(path, message))
            .ok()
    }

    fn sticky(&mut self, path: &str, raw: &RawSticky) -> Option<StickySource> {
        let mut sources = Vec::new();
        if let Some(header) = &raw.header {
            match HeaderName::from_bytes(header.as_bytes()) {
                Ok(name) => sources.push(StickySource::Header(name)),
                Err(_) => self.error(
                    &format!("{path}.header"),
                    format!("{header:?} is not a header name"),
                ),
            }
        }
        for (kind, value) in [("cookie", &raw.cookie), ("query", &raw.query)] {
            if let Some(name) = value {
                if name.is_empty() || name.contains(['=', ';', '&', ' ']) {
                    self.error(
                        &format!("{path}.{kind}"),
                        format!("{name:?} is not a {kind} name"),
                    );
                } else if kind == "cookie" {
                    sources.push(StickySource::Cookie(name.clone()));
                } else {
                    sources.push(StickySource::Query(name.clone()));
                }
            }
        }
        if raw.client_ip {
            sources.push(StickySource::ClientIp);
        }
        let set = usize::from(raw.header.is_some())
            + usize::from(raw.cookie.is_some())
            + usize::from(raw.query.is_some())
            + usize::from(raw.client_ip);
        match set {
            0 => {
                self.error(
                    path,
                    "needs one of header, cookie, query or client_ip: true".to_owned(),
                );
                None
            }
            1 => sources.pop(),
            _ => {
                self.error(
                    path,
                    "at most one sticky source (header, cookie, query or client_ip)".to_owned(),
                );
                None
            }
        }
    }

    fn guard(&mut self, path: &str, raw: &RawGuard) -> GuardSpec {
        let at = format!("{path}.max_error_rate");
        if !raw.max_error_rate.is_finite() || !(0.0..=100.0).contains(&raw.max_error_rate) {
            self.error(
                &at,
                format!("{} is not a percentage from 0 to 100", raw.max_error_rate),
            );
        }
        let window = self.duration(
            &format!("{path}.window"),
            raw.window.as_deref(),
            DEFAULT_GUARD_WINDOW,
        );
        if window < Duration::from_secs(1) || window > Duration::from_secs(3600) {
            self.error(
                &format!("{path}.window"),
                "must be between 1s and 1h".to_owned(),
            );
        }
        let min_requests = raw.min_requests.unwrap_or(DEFAULT_GUARD_MIN_REQUESTS);
        if min_requests == 0 {
            self.error(
                &format!("{path}.min_requests"),
                "must be at least 1".to_owned(),
            );
        }
        GuardSpec {
            max_error_rate: raw.max_error_rate,
            min_requests,
            window,
        }
    }
}

/// Pairs `(later, earlier)` where route `earlier` matches every request route `later` would.
/// Only routes whose path could cover the later one's are compared, so a reload of a large
/// file stays linear instead of comparing every pair.
pub(super) fn unreachable_routes(routes: &[RouteSpec]) -> Vec<(usize, usize)> {
    let mut pathless: Vec<usize> = Vec::new();
    let mut by_path: HashMap<(&str, bool), Vec<usize>> = HashMap::new();
    let mut shadowed = Vec::new();
    for (i, route) in routes.iter().enumerate() {
        let mut candidates: Vec<usize> = pathless.clone();
        if let Some(path) = &route.matcher.path {
            let (text, exact) = match path {
                PathMatch::Prefix(p) => (p.as_str(), false),
                PathMatch::Exact(p) => (p.as_str(), true),
            };
            // Every prefix that covers `text` by whole segments, and `text` itself.
            let cuts = text
                .match_indices('/')
                .map(|(at, _)| at)
                .filter(|&at| at > 0)
                .chain([text.len()]);
            for prefix in std::iter::once("/").chain(cuts.map(|at| &text[..at])) {
                candidates.extend(by_path.get(&(prefix, false)).into_iter().flatten());
            }
            if exact {
                candidates.extend(by_path.get(&(text, true)).into_iter().flatten());
            }
            by_path.entry((text, exact)).or_default().push(i);
        } else {
            pathless.push(i);
        }
        candidates.sort_unstable();
        if let Some(&earlier) = candidates
            .iter()
            .find(|&&j| routes[j].matcher.covers(&route.matcher))
        {
            shadowed.push((i, earlier));
        }
    }
    shadowed
}
